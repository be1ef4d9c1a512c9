//! A mock of the OpenAI chat-completions API for modelfleet's end-to-end
//! tests, load benchmark and README walkthrough: a real HTTP server on
//! loopback speaking the wire format (JSON and SSE streaming), whose
//! behaviour per upstream model is scripted at run time.
//!
//! Each model (the `model` field of the request) follows a [`Behavior`]:
//! latency, the completion's length in tokens and stream chunks, a context
//! window, and a [`Fault`] injected on the next N calls or at a rate — HTTP
//! 500, 429 with `retry-after`, a hang (the client's timeout fires), headers
//! held back before a normal answer, a connection reset, a stream cut after
//! some chunks, a stream ended by an error event, an endless stream (or a
//! body dripped a byte at a time), a context-window 400, a plain 400, a huge
//! body. A model may also report [`RateLimits`] on every answer
//! (OpenAI's `x-ratelimit-*` headers). The mock counts calls per model and
//! keeps the last request body, so tests can assert what the gateway sent
//! (and that it did not retry a 400).
//!
//! ```
//! use modelfleet_mock_upstream::{Behavior, Fault, MockUpstream};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let mock = MockUpstream::start().await?;
//! mock.fail_next("tiny", Fault::ServerError, 1);
//! let url = format!("{}/chat/completions", mock.base_url());
//! let body = r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}]}"#;
//! let client = reqwest::Client::new();
//! let first = client.post(&url).body(body).send().await?;
//! assert_eq!(first.status(), 500);
//! let second = client.post(&url).body(body).send().await?;
//! assert_eq!(second.status(), 200);
//! assert_eq!(mock.hits("tiny"), 2);
//! mock.shutdown().await;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
    serve::ListenerExt,
};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// A failure the mock injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 500 with an OpenAI error body.
    ServerError,
    /// HTTP 429 with `retry-after` (seconds).
    RateLimited {
        /// The `retry-after` value, seconds.
        retry_after_secs: u64,
    },
    /// No answer for this long, then a 504 (the client's timeout should
    /// fire first).
    Hang(Duration),
    /// The status line and headers are held back this long, then the
    /// answer is the normal one (unlike [`Fault::Hang`], which then fails).
    SlowHeaders(Duration),
    /// An upstream that never finishes. Streaming: an event every
    /// `interval` without end (no `[DONE]`, whatever `max_tokens` says).
    /// Otherwise: the normal JSON body, one byte every `interval`. Either
    /// way the body stops (and is dropped) when the client disconnects.
    SlowDrip {
        /// The wait before each event (streaming) or byte.
        interval: Duration,
    },
    /// A stream sends this many content chunks, then an SSE error event in
    /// OpenAI's shape (`data: {"error": {…, "type": "server_error"}}`) and
    /// ends cleanly, without `[DONE]` (a non-streaming call gets a 500).
    MidStreamError(u32),
    /// The connection is dropped without an answer.
    Reset,
    /// A stream sends this many content chunks, then the connection drops
    /// (a non-streaming call is reset).
    CutAfter(u32),
    /// HTTP 400 `context_length_exceeded`.
    ContextWindow,
    /// HTTP 400 `invalid_request_error` (must not be retried).
    BadRequest,
    /// HTTP 401 (a wrong key).
    Unauthorized,
    /// A 200 whose body (or, streaming, whose first event) is this many
    /// bytes: a hostile or broken upstream the gateway must not buffer.
    Huge(usize),
}

/// How one model answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Behavior {
    /// Wait before answering (before the first chunk when streaming).
    pub latency: Duration,
    /// Wait between stream chunks.
    pub chunk_interval: Duration,
    /// Completion tokens reported in `usage` per answer (times the request's `n`).
    pub completion_tokens: u32,
    /// Content chunks in a stream.
    pub chunks: u32,
    /// Prompt plus `max_tokens` beyond this gets a context-window 400.
    pub context_window: Option<u32>,
    /// The fault injected, if any.
    pub fault: Option<Fault>,
    /// Share of calls that get the fault (0..=1), after `fail_next` ran out.
    pub fault_rate: f64,
    /// Calls left that get the fault for sure.
    pub fail_next: u32,
    /// Prompt tokens reported as cached.
    pub cached_tokens: u32,
    /// Answer `completion_tokens` whatever `max_tokens` says (a provider
    /// that ignores the cap); by default the cap is honoured.
    pub ignore_max_tokens: bool,
    /// Rate-limit headers sent with every answer (errors included), if any.
    pub rate_limits: Option<RateLimits>,
}

/// What a model's answers say of its provider's request rate limit, as
/// OpenAI's headers do: `x-ratelimit-limit-requests`,
/// `x-ratelimit-remaining-requests` and `x-ratelimit-reset-requests`
/// (written in milliseconds, e.g. `1500ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Requests allowed per period.
    pub limit_requests: u64,
    /// Requests left in the period.
    pub remaining_requests: u64,
    /// When the period resets.
    pub reset_requests: Duration,
}

impl RateLimits {
    fn apply(self, headers: &mut HeaderMap) {
        let values = [
            ("x-ratelimit-limit-requests", self.limit_requests.to_string()),
            ("x-ratelimit-remaining-requests", self.remaining_requests.to_string()),
            ("x-ratelimit-reset-requests", format!("{}ms", self.reset_requests.as_millis())),
        ];
        for (name, value) in values {
            if let Ok(value) = header::HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
    }
}

impl Default for Behavior {
    /// Healthy and instant: 12 completion tokens in 4 chunks.
    fn default() -> Self {
        Behavior {
            latency: Duration::ZERO,
            chunk_interval: Duration::ZERO,
            completion_tokens: 12,
            chunks: 4,
            context_window: None,
            fault: None,
            fault_rate: 0.0,
            fail_next: 0,
            cached_tokens: 0,
            ignore_max_tokens: false,
            rate_limits: None,
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    behaviors: Mutex<HashMap<String, Behavior>>,
    hits: Mutex<HashMap<String, u64>>,
    last: Mutex<HashMap<String, Value>>,
    last_headers: Mutex<HashMap<String, HeaderMap>>,
    require_key: Mutex<Option<String>>,
    total: AtomicU64,
    seed: AtomicU64,
    /// Streamed or dripped bodies not yet finished or dropped.
    sending: Arc<AtomicU64>,
}

/// Counts one body being sent while it lives: it is moved into the body's
/// stream, so a body hyper drops (its client gone) is no longer counted.
#[derive(Debug)]
struct Sending(Arc<AtomicU64>);

impl Sending {
    fn new(count: &Arc<AtomicU64>) -> Sending {
        count.fetch_add(1, Ordering::Relaxed);
        Sending(Arc::clone(count))
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running mock upstream. Dropping it stops the server.
#[derive(Debug)]
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl MockUpstream {
    /// Starts on `127.0.0.1` on a free port.
    pub async fn start() -> io::Result<MockUpstream> {
        MockUpstream::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr) -> io::Result<MockUpstream> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared { seed: AtomicU64::new(0x5eed), ..Shared::default() });
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .route("/chat/completions", post(complete))
            .with_state(Arc::clone(&shared));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(err) = serve.await {
                eprintln!("mock upstream stopped: {err}");
            }
        });
        Ok(MockUpstream { addr, shared, stop: Some(stop), task: Some(task) })
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL a provider config points at: `http://127.0.0.1:PORT/v1`.
    #[must_use]
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Sets how `model` answers from now on.
    pub fn set(&self, model: &str, behavior: Behavior) {
        lock(&self.shared.behaviors).insert(model.to_owned(), behavior);
    }

    /// How `model` answers now.
    #[must_use]
    pub fn behavior(&self, model: &str) -> Behavior {
        lock(&self.shared.behaviors).get(model).cloned().unwrap_or_default()
    }

    /// The next `n` calls to `model` get `fault`.
    pub fn fail_next(&self, model: &str, fault: Fault, n: u32) {
        let mut behaviors = lock(&self.shared.behaviors);
        let behavior = behaviors.entry(model.to_owned()).or_default();
        behavior.fault = Some(fault);
        behavior.fail_next = n;
    }

    /// Requires `Authorization: Bearer <key>` (401 otherwise).
    pub fn require_key(&self, key: &str) {
        *lock(&self.shared.require_key) = Some(key.to_owned());
    }

    /// Calls received for `model`.
    #[must_use]
    pub fn hits(&self, model: &str) -> u64 {
        lock(&self.shared.hits).get(model).copied().unwrap_or(0)
    }

    /// Calls received in all.
    #[must_use]
    pub fn total_hits(&self) -> u64 {
        self.shared.total.load(Ordering::Relaxed)
    }

    /// Streamed or dripped bodies being sent now: each ends when its last
    /// byte is out or when its client disconnects (then within one chunk
    /// interval), so a test can check that none is left spinning.
    #[must_use]
    pub fn bodies_in_flight(&self) -> u64 {
        self.shared.sending.load(Ordering::Relaxed)
    }

    /// The last request body received for `model`.
    #[must_use]
    pub fn last_request(&self, model: &str) -> Option<Value> {
        lock(&self.shared.last).get(model).cloned()
    }

    /// The headers of the last request received for `model`.
    #[must_use]
    pub fn last_headers(&self, model: &str) -> Option<HeaderMap> {
        lock(&self.shared.last_headers).get(model).cloned()
    }

    /// Stops accepting, finishes what is in flight, and returns.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Prompt tokens as the mock counts them: a quarter of the characters of
/// every message's content, plus one per message.
#[must_use]
pub fn prompt_tokens(request: &Value) -> u32 {
    let messages = request.get("messages").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let chars: usize = messages.iter().filter_map(|m| m.get("content").and_then(Value::as_str)).map(str::len).sum();
    u32::try_from(chars.div_ceil(4) + messages.len()).unwrap_or(u32::MAX)
}

fn error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    error_at(status, kind, code, None, message)
}

/// An error naming the request field at fault (`param`), as OpenAI's do.
fn error_at(status: StatusCode, kind: &str, code: &str, param: Option<&str>, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// A connection dropped mid-answer: the body fails before its first byte.
fn reset() -> Response {
    let failing = futures_util::stream::once(async { Err::<Bytes, io::Error>(io::Error::other("reset by mock")) });
    Response::new(Body::from_stream(failing))
}

async fn complete(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.total.fetch_add(1, Ordering::Relaxed);
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_json", "the body is not JSON");
    };
    let model = request.get("model").and_then(Value::as_str).unwrap_or_default().to_owned();
    lock(&shared.last_headers).insert(model.clone(), headers.clone());
    // As the call starts: a behaviour set while it runs applies to the next one.
    let rate_limits = lock(&shared.behaviors).get(&model).and_then(|b| b.rate_limits);
    let mut response = answer(&shared, &headers, request, model).await;
    if let Some(limits) = rate_limits {
        limits.apply(response.headers_mut());
    }
    response
}

/// `model`'s behaviour for one call, and the fault this call gets, if any.
fn draw(shared: &Shared, model: &str) -> (Behavior, Option<Fault>) {
    let mut behaviors = lock(&shared.behaviors);
    let behavior = behaviors.entry(model.to_owned()).or_default();
    let fault = match behavior.fault {
        Some(fault) if behavior.fail_next > 0 => {
            behavior.fail_next -= 1;
            Some(fault)
        }
        Some(fault) if behavior.fault_rate > 0.0 => {
            let n = shared.seed.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
            (fastrand::Rng::with_seed(n).f64() < behavior.fault_rate).then_some(fault)
        }
        _ => None,
    };
    (behavior.clone(), fault)
}

/// The answer to one call for `model` (the request's `model` field).
async fn answer(shared: &Shared, headers: &HeaderMap, request: Value, model: String) -> Response {
    *lock(&shared.hits).entry(model.clone()).or_default() += 1;
    lock(&shared.last).insert(model.clone(), request.clone());
    if let Some(key) = lock(&shared.require_key).clone() {
        let sent = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if sent != format!("Bearer {key}") {
            return unauthorized(headers);
        }
    }
    let (behavior, fault) = draw(shared, &model);
    if !behavior.latency.is_zero() {
        tokio::time::sleep(behavior.latency).await;
    }
    if let Some(Fault::SlowHeaders(d)) = fault {
        // Nothing is sent before the handler returns: the headers wait too.
        tokio::time::sleep(d).await;
    }
    let prompt = prompt_tokens(&request);
    let wanted = request
        .get("max_completion_tokens")
        .or_else(|| request.get("max_tokens"))
        .and_then(Value::as_u64)
        .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
    let too_long = behavior.context_window.is_some_and(|w| u64::from(prompt) + u64::from(wanted) > u64::from(w));
    let streaming = request.get("stream") == Some(&Value::Bool(true));
    match fault {
        Some(Fault::ServerError) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "server_error", "The server had an error");
        }
        Some(Fault::RateLimited { retry_after_secs }) => {
            let mut response =
                error(StatusCode::TOO_MANY_REQUESTS, "requests", "rate_limit_exceeded", "Rate limit reached");
            if let Ok(value) = retry_after_secs.to_string().parse() {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return response;
        }
        Some(Fault::Hang(d)) => {
            tokio::time::sleep(d).await;
            return error(StatusCode::GATEWAY_TIMEOUT, "server_error", "timeout", "The mock hung");
        }
        Some(Fault::MidStreamError(_)) if !streaming => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "server_error", "The server had an error");
        }
        Some(Fault::Reset) => return reset(),
        Some(Fault::CutAfter(_)) if !streaming => return reset(),
        Some(Fault::BadRequest) => {
            return error_at(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_value",
                Some("messages"),
                "messages: invalid role",
            );
        }
        Some(Fault::Huge(bytes)) => return huge(&request, bytes),
        Some(Fault::Unauthorized) => return unauthorized(headers),
        Some(Fault::ContextWindow) => return context_error(behavior.context_window.unwrap_or(4096), prompt + wanted),
        Some(Fault::CutAfter(_) | Fault::SlowHeaders(_) | Fault::SlowDrip { .. } | Fault::MidStreamError(_)) | None
            if too_long =>
        {
            return context_error(behavior.context_window.unwrap_or(0), prompt + wanted);
        }
        Some(Fault::CutAfter(_) | Fault::SlowHeaders(_) | Fault::SlowDrip { .. } | Fault::MidStreamError(_)) | None => {
        }
    }
    let (each, usage) = billed(&request, &behavior, prompt, wanted);
    let id = format!("chatcmpl-mock{}", shared.total.load(Ordering::Relaxed));
    if streaming {
        let sending = Sending::new(&shared.sending);
        if let Some(Fault::SlowDrip { interval }) = fault {
            return endless(&id, &model, interval, sending);
        }
        let include_usage = request.pointer("/stream_options/include_usage") == Some(&Value::Bool(true));
        let end = match fault {
            Some(Fault::CutAfter(n)) => End::Cut(n),
            Some(Fault::MidStreamError(n)) => End::Error(n),
            _ => End::Done(include_usage.then_some(usage)),
        };
        let capped = Behavior { completion_tokens: each, ..behavior };
        return stream(&id, &model, &capped, end, sending);
    }
    let content = words(&model, each);
    let body = json!({
        "id": id,
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": usage,
    });
    if let Some(Fault::SlowDrip { interval }) = fault {
        return drip(body.to_string().into_bytes(), interval, Sending::new(&shared.sending));
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// A 401 that, as OpenAI's does, repeats the key it was sent.
fn unauthorized(headers: &HeaderMap) -> Response {
    let sent = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let shown = sent.strip_prefix("Bearer ").unwrap_or(sent);
    error(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        "invalid_api_key",
        &format!("Incorrect API key provided: {shown}."),
    )
}

/// A 200 of about `bytes`: a JSON completion with that much content, or an
/// SSE stream whose one event is that large.
fn huge(request: &Value, bytes: usize) -> Response {
    let content = "x".repeat(bytes);
    if request.get("stream") == Some(&Value::Bool(true)) {
        let event = format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}}}}]}}\n\n");
        return (StatusCode::OK, [(header::CONTENT_TYPE, "text/event-stream")], event).into_response();
    }
    let body = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]});
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// What one answer takes and the usage billed for the request: `n` answers,
/// each of `completion_tokens` (at most `max_tokens`, unless the behaviour
/// ignores it).
fn billed(request: &Value, behavior: &Behavior, prompt: u32, wanted: u32) -> (u32, Value) {
    let answers = request.get("n").and_then(Value::as_u64).map_or(1, |n| u32::try_from(n).unwrap_or(1).max(1));
    let each = if wanted > 0 && !behavior.ignore_max_tokens {
        behavior.completion_tokens.min(wanted)
    } else {
        behavior.completion_tokens
    };
    let completion = each.saturating_mul(answers);
    let usage = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": behavior.cached_tokens},
    });
    (each, usage)
}

fn context_error(window: u32, needed: u32) -> Response {
    let message = format!(
        "This model's maximum context length is {window} tokens. However, you requested {needed} tokens. Please \
         reduce the length of the messages."
    );
    error(StatusCode::BAD_REQUEST, "invalid_request_error", "context_length_exceeded", &message)
}

/// The mock's answer: `n` words naming the model.
fn words(model: &str, n: u32) -> String {
    let mut out = format!("mock answer from {model}:");
    for i in 0..n.saturating_sub(4) {
        out.push_str(if i % 2 == 0 { " lorem" } else { " ipsum" });
    }
    out
}

/// How a stream ends.
enum End {
    /// Finish reason, usage (when asked for) and `[DONE]`.
    Done(Option<Value>),
    /// The connection drops after this many content chunks.
    Cut(u32),
    /// An error event after this many content chunks, then a clean end.
    Error(u32),
}

/// One `chat.completion.chunk` event's data.
fn chunk(id: &str, model: &str, delta: &Value, finish: &Value) -> Value {
    json!({
        "id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })
}

fn event_stream(body: Body) -> Response {
    let mut response = Response::new(body);
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/event-stream"));
    response
}

fn stream(id: &str, model: &str, behavior: &Behavior, end: End, sending: Sending) -> Response {
    let chunks = behavior.chunks.max(1);
    let content = words(model, behavior.completion_tokens);
    let per = content.len().div_ceil(chunks as usize).max(1);
    let pieces: Vec<String> = content.as_bytes().chunks(per).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    let mut events: Vec<Result<String, io::Error>> =
        vec![Ok(chunk(id, model, &json!({"role": "assistant", "content": ""}), &Value::Null).to_string())];
    let stop_after = match end {
        End::Cut(n) | End::Error(n) => Some(n),
        End::Done(_) => None,
    };
    for (i, piece) in pieces.iter().enumerate() {
        if stop_after.is_some_and(|n| i as u64 >= u64::from(n)) {
            break;
        }
        events.push(Ok(chunk(id, model, &json!({"content": piece}), &Value::Null).to_string()));
    }
    match end {
        End::Cut(_) => events.push(Err(io::Error::other("stream cut by mock"))),
        End::Error(_) => {
            let error = json!({"error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
                "param": null,
                "code": "server_error",
            }});
            events.push(Ok(error.to_string()));
        }
        End::Done(usage) => {
            events.push(Ok(chunk(id, model, &json!({}), &json!("stop")).to_string()));
            if let Some(usage) = usage {
                let last = json!({
                    "id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
                    "choices": [], "usage": usage,
                });
                events.push(Ok(last.to_string()));
            }
            events.push(Ok("[DONE]".to_owned()));
        }
    }
    let interval = behavior.chunk_interval;
    let body = futures_util::stream::iter(events.into_iter().enumerate()).then(move |(i, event)| async move {
        if i > 0 && !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        if event.is_err() {
            // Let the chunks before the cut reach the client first.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        event.map(|data| Bytes::from(format!("data: {data}\n\n")))
    });
    event_stream(Body::from_stream(guarded(body, sending)))
}

/// `stream`, holding `sending` until it ends or is dropped (hyper drops a
/// body when its client goes away).
fn guarded<S>(stream: S, sending: Sending) -> impl futures_util::Stream<Item = S::Item> + Send + 'static
where
    S: futures_util::Stream + Send + 'static,
{
    futures_util::stream::unfold((Box::pin(stream), sending), |(mut stream, sending)| async move {
        let item = stream.next().await?;
        Some((item, (stream, sending)))
    })
}

/// [`Fault::SlowDrip`] streaming: a role chunk, then a content chunk every
/// `interval`, forever: only the client's disconnect (hyper then drops the
/// body) ends it.
fn endless(id: &str, model: &str, interval: Duration, sending: Sending) -> Response {
    let first = chunk(id, model, &json!({"role": "assistant", "content": ""}), &Value::Null);
    let next = chunk(id, model, &json!({"content": " lorem"}), &Value::Null);
    let (first, next) = (Bytes::from(format!("data: {first}\n\n")), Bytes::from(format!("data: {next}\n\n")));
    let body = futures_util::stream::unfold((true, sending), move |(start, sending)| {
        let event = if start { first.clone() } else { next.clone() };
        async move {
            if !start {
                tokio::time::sleep(interval).await;
            }
            Some((Ok::<Bytes, io::Error>(event), (false, sending)))
        }
    });
    event_stream(Body::from_stream(body))
}

/// [`Fault::SlowDrip`] without streaming: `body`, one byte every `interval`.
fn drip(body: Vec<u8>, interval: Duration, sending: Sending) -> Response {
    let bytes = futures_util::stream::unfold((body, 0_usize, sending), move |(body, at, sending)| async move {
        let byte = *body.get(at)?;
        tokio::time::sleep(interval).await;
        Some((Ok::<Bytes, io::Error>(Bytes::copy_from_slice(&[byte])), (body, at + 1, sending)))
    });
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], Body::from_stream(bytes)).into_response()
}

/// Parses a fault spec as the binary takes it: `500`, `429:SECS`, `hang:MS`,
/// `slow_headers:MS`, `drip:MS`, `reset`, `cut:N`, `midstream_error:N`,
/// `context`, `400`, `401`, `huge:BYTES`.
pub fn parse_fault(spec: &str) -> Result<Fault, String> {
    let (name, arg) = spec.split_once(':').map_or((spec, None), |(n, a)| (n, Some(a)));
    let number = |what: &str| -> Result<u64, String> {
        arg.ok_or_else(|| format!("{name} needs :{what}"))?
            .parse::<u64>()
            .map_err(|_| format!("{name}: {what} must be a whole number"))
    };
    Ok(match name {
        "500" => Fault::ServerError,
        "429" => Fault::RateLimited { retry_after_secs: if arg.is_some() { number("seconds")? } else { 1 } },
        "hang" => Fault::Hang(Duration::from_millis(number("ms")?)),
        "slow_headers" => Fault::SlowHeaders(Duration::from_millis(number("ms")?)),
        "drip" => Fault::SlowDrip { interval: Duration::from_millis(number("ms")?) },
        "reset" => Fault::Reset,
        "cut" => Fault::CutAfter(u32::try_from(number("chunks")?).map_err(|_| "cut: too many chunks".to_owned())?),
        "midstream_error" => Fault::MidStreamError(
            u32::try_from(number("chunks")?).map_err(|_| "midstream_error: too many chunks".to_owned())?,
        ),
        "context" => Fault::ContextWindow,
        "400" => Fault::BadRequest,
        "401" => Fault::Unauthorized,
        "huge" => Fault::Huge(usize::try_from(number("bytes")?).map_err(|_| "huge: too many bytes".to_owned())?),
        other => {
            return Err(format!(
                "unknown fault {other:?}: expected 500, 429[:secs], hang:ms, slow_headers:ms, drip:ms, reset, cut:n, \
                 midstream_error:n, context, 400, 401 or huge:bytes"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_and_bad_specs_say_why() {
        let check = |spec: &str, expect: Fault| assert_eq!(parse_fault(spec), Ok(expect), "{spec}");
        check("429:3", Fault::RateLimited { retry_after_secs: 3 });
        check("cut:2", Fault::CutAfter(2));
        check("hang:50", Fault::Hang(Duration::from_millis(50)));
        check("slow_headers:250", Fault::SlowHeaders(Duration::from_millis(250)));
        check("drip:20", Fault::SlowDrip { interval: Duration::from_millis(20) });
        check("midstream_error:3", Fault::MidStreamError(3));
        check("huge:1024", Fault::Huge(1024));
        let refused = |spec: &str, says: &str| {
            let err = parse_fault(spec).unwrap_err();
            assert!(err.contains(says), "{spec}: {err}");
        };
        refused("hang", "hang needs :ms");
        refused("drip", "drip needs :ms");
        refused("slow_headers:soon", "slow_headers: ms must be a whole number");
        refused("midstream_error:99999999999", "midstream_error: too many chunks");
        refused("teapot", "unknown fault \"teapot\"");
    }

    #[tokio::test]
    async fn rate_limits_are_reported_on_every_answer_of_their_model_only() {
        let mock = MockUpstream::start().await.unwrap();
        let limits = RateLimits { limit_requests: 100, remaining_requests: 1, reset_requests: Duration::from_secs(30) };
        mock.set("near", Behavior { rate_limits: Some(limits), ..Behavior::default() });
        mock.fail_next("near", Fault::ServerError, 1);
        let client = reqwest::Client::new();
        let url = format!("{}/chat/completions", mock.base_url());
        let call = |model: &str| {
            let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string();
            client.post(&url).body(body).send()
        };
        let header = |r: &reqwest::Response, name: &str| {
            r.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
        };
        for status in [500, 200] {
            let answer = call("near").await.unwrap();
            assert_eq!(answer.status(), status);
            let got = ["limit", "remaining", "reset"].map(|h| header(&answer, &format!("x-ratelimit-{h}-requests")));
            assert_eq!(got, ["100", "1", "30000ms"], "on a {status}");
        }
        let other = call("far").await.unwrap();
        assert_eq!(other.status(), 200);
        assert!(!other.headers().contains_key("x-ratelimit-remaining-requests"));
        mock.shutdown().await;
    }

    #[test]
    fn prompt_tokens_count_a_quarter_of_the_characters_plus_one_per_message() {
        let request = json!({"messages": [{"role": "user", "content": "12345678"}, {"role": "user", "content": "1"}]});
        assert_eq!(prompt_tokens(&request), 2 + 1 + 2);
    }

    // Slow headers, drips and mid-stream errors, on a real socket.

    fn chat_body(model: &str, stream: bool) -> String {
        json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}).to_string()
    }

    async fn post(mock: &MockUpstream, model: &str, stream: bool) -> reqwest::Response {
        let url = format!("{}/chat/completions", mock.base_url());
        reqwest::Client::new().post(url).body(chat_body(model, stream)).send().await.unwrap()
    }

    /// The data of each SSE event in `text`.
    fn events(text: &str) -> Vec<String> {
        text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_owned).collect()
    }

    /// Waits (bounded) until the mock sends no body any more.
    async fn no_body_left(mock: &MockUpstream) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while mock.bodies_in_flight() > 0 {
            assert!(std::time::Instant::now() < deadline, "a body is still being sent after its client left");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn slow_headers_accept_the_connection_then_hold_the_head_back_and_answer_normally() {
        let mock = MockUpstream::start().await.unwrap();
        let delay = Duration::from_millis(600);
        mock.fail_next("slow", Fault::SlowHeaders(delay), 2);
        let (addr, body) = (mock.addr(), chat_body("slow", false));
        let raw = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut socket = std::net::TcpStream::connect(addr).unwrap();
            let head = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            socket.write_all(head.as_bytes()).unwrap();
            socket.write_all(body.as_bytes()).unwrap();
            // Accepted and read, but not a byte back before the delay.
            socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let mut byte = [0_u8; 1];
            let early = socket.read(&mut byte);
            assert!(early.is_err(), "an answer came before the delay: {early:?}");
            socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut answer = String::new();
            socket.read_to_string(&mut answer).unwrap();
            answer
        })
        .await
        .unwrap();
        assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
        assert!(raw.contains("\"object\":\"chat.completion\""), "{raw}");
        // Streaming: the head waits as long, then the whole stream comes.
        let started = std::time::Instant::now();
        let answer = post(&mock, "slow", true).await;
        assert!(started.elapsed() >= delay);
        assert_eq!(answer.status(), 200);
        let events = events(&answer.text().await.unwrap());
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
        // Unlike a hang, which ends in a 504.
        mock.fail_next("hung", Fault::Hang(Duration::from_millis(10)), 1);
        assert_eq!(post(&mock, "hung", false).await.status(), 504);
        mock.shutdown().await;
    }

    #[tokio::test]
    async fn a_drip_stream_never_ends_and_stops_when_its_client_leaves() {
        let mock = MockUpstream::start().await.unwrap();
        let interval = Duration::from_millis(20);
        mock.fail_next("drip", Fault::SlowDrip { interval }, 1);
        let started = std::time::Instant::now();
        let answer = post(&mock, "drip", true).await;
        assert_eq!(answer.status(), 200);
        let mut body = answer.bytes_stream();
        let mut text = String::new();
        // Past the normal stream's length (4 chunks): it goes on and on.
        while events(&text).len() < 12 {
            let piece = body.next().await.unwrap().unwrap();
            text.push_str(std::str::from_utf8(&piece).unwrap());
        }
        let got = events(&text);
        assert!(started.elapsed() >= interval * 10, "12 events came in {:?}", started.elapsed());
        assert!(got[0].contains("\"role\":\"assistant\""), "{got:?}");
        assert!(got[1..].iter().all(|e| e.contains("\"content\":\" lorem\"")), "{got:?}");
        assert_eq!(mock.bodies_in_flight(), 1);
        drop(body);
        no_body_left(&mock).await;
        mock.shutdown().await;
    }

    #[tokio::test]
    async fn a_drip_body_comes_a_byte_at_a_time_and_stops_when_its_client_leaves() {
        let mock = MockUpstream::start().await.unwrap();
        let interval = Duration::from_millis(2);
        mock.fail_next("drip", Fault::SlowDrip { interval }, 1);
        let started = std::time::Instant::now();
        let answer = post(&mock, "drip", false).await;
        assert_eq!(answer.status(), 200);
        let mut body = answer.bytes_stream();
        let (mut bytes, mut pieces) = (Vec::new(), 0_u32);
        while let Some(piece) = body.next().await {
            bytes.extend_from_slice(&piece.unwrap());
            pieces += 1;
        }
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["object"], "chat.completion");
        // Each byte waited its interval (a timer never fires early), so the
        // body took at least that long, and came in pieces.
        let bytes_sent = u32::try_from(bytes.len()).unwrap();
        assert!(started.elapsed() >= interval * bytes_sent, "{} bytes in {:?}", bytes.len(), started.elapsed());
        assert!(pieces > 1, "{pieces} pieces");
        no_body_left(&mock).await;
        // Abandoned half way, it stops.
        mock.fail_next("drip", Fault::SlowDrip { interval: Duration::from_millis(20) }, 1);
        let mut body = post(&mock, "drip", false).await.bytes_stream();
        body.next().await.unwrap().unwrap();
        assert_eq!(mock.bodies_in_flight(), 1);
        drop(body);
        no_body_left(&mock).await;
        mock.shutdown().await;
    }

    #[tokio::test]
    async fn a_midstream_error_is_an_openai_error_event_after_n_chunks_then_a_clean_end() {
        let mock = MockUpstream::start().await.unwrap();
        mock.fail_next("mid", Fault::MidStreamError(2), 2);
        let answer = post(&mock, "mid", true).await;
        assert_eq!(answer.status(), 200);
        // `text` fails if the connection broke: the body ends cleanly.
        let got = events(&answer.text().await.unwrap());
        assert_eq!(got.len(), 1 + 2 + 1, "{got:?}");
        assert!(got[0].contains("\"role\":\"assistant\""), "{got:?}");
        assert!(got[1..3].iter().all(|e| e.contains("\"content\"")), "{got:?}");
        let error: Value = serde_json::from_str(&got[3]).unwrap();
        assert_eq!(error["error"]["type"], "server_error", "{error}");
        assert_eq!(error["error"]["code"], "server_error", "{error}");
        assert!(error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
        // Not streaming: the same failure before any answer, a 500.
        assert_eq!(post(&mock, "mid", false).await.status(), 500);
        // The fault is spent: the next stream ends normally.
        let got = events(&post(&mock, "mid", true).await.text().await.unwrap());
        assert_eq!(got.last().map(String::as_str), Some("[DONE]"), "{got:?}");
        no_body_left(&mock).await;
        mock.shutdown().await;
    }
}
