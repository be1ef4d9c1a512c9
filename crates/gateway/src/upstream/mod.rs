//! Upstream providers: an OpenAI-compatible HTTP API (JSON and SSE), or the
//! in-process simulator.

use std::{collections::HashMap, fmt, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use modelfleet::{
    Fleet, ModelResponse, Simulator, Usage,
    config::{Config, ProviderKind},
    errors::{AttemptCtx, ErrorClass, Failure, classify_response},
    registry::ModelSpec,
};
use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER};
use serde_json::{Value, json};

use crate::wire::{ChatRequest, Outgoing, SseParser, completion_usage, json_bytes};

/// The largest upstream error body read (the rest is dropped).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The providers by name.
pub(crate) struct Upstreams {
    by_provider: HashMap<String, Upstream>,
}

enum Upstream {
    OpenAi(Box<OpenAi>),
    Simulated(Arc<Simulator>),
}

struct OpenAi {
    client: reqwest::Client,
    /// Parsed once: parsing per request (IDNA included) showed in profiles.
    url: reqwest::Url,
    /// `Bearer <key>`, marked sensitive so it never shows in debug output.
    auth: Option<HeaderValue>,
    /// The variable named in the config when it was not set.
    missing_key: Option<String>,
    /// `request_timeout_ms`: the whole of a non-streamed call.
    request_timeout: Duration,
    /// `first_token_timeout_ms`: a stream's first event.
    first_token_timeout: Duration,
    /// `stream_idle_timeout_ms`: the longest silence between two events.
    stream_idle_timeout: Duration,
    /// `include_usage`: streams ask for `stream_options.include_usage`.
    include_usage: bool,
    /// `max_upstream_body_bytes`.
    max_body: usize,
}

impl fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstreams").field("providers", &self.by_provider.keys().collect::<Vec<_>>()).finish()
    }
}

impl Upstreams {
    /// One client per provider; keys read through `env`. A key variable that
    /// is named but not set is reported, and that provider's calls fail as
    /// authentication errors (its models fall back) without a network call.
    pub(crate) fn from_config(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> Result<Upstreams, String> {
        let mut by_provider = HashMap::new();
        for (i, provider) in config.providers.iter().enumerate() {
            let upstream = match provider.kind {
                ProviderKind::Simulated => Upstream::Simulated(Arc::new(Simulator::mirroring(&config.models, 7))),
                ProviderKind::Openai => {
                    let base = provider
                        .base_url
                        .as_deref()
                        .ok_or_else(|| format!("providers[{i}].base_url: required for kind = \"openai\""))?;
                    // Redirects are not followed: a provider that redirects a
                    // POST is misconfigured (or hostile); the 3xx fails the
                    // attempt instead of sending the body and key elsewhere.
                    let client = reqwest::Client::builder()
                        .redirect(reqwest::redirect::Policy::none())
                        .connect_timeout(Duration::from_millis(provider.connect_timeout_ms))
                        .tcp_nodelay(true)
                        .pool_idle_timeout(Duration::from_secs(90))
                        .build()
                        .map_err(|e| format!("providers[{i}]: cannot build the HTTP client: {e}"))?;
                    let (auth, missing_key) = match &provider.api_key_env {
                        None => (None, None),
                        Some(var) => {
                            if let Some(key) = env(var).filter(|k| !k.is_empty()) {
                                // Whatever its shape, the key never leaves the
                                // process in a message (an upstream may echo it).
                                if !modelfleet::errors::redact_everywhere(&key) {
                                    tracing::warn!(
                                        provider = %provider.name,
                                        "{var} holds a key too short to redact from messages by value"
                                    );
                                }
                                let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                                    format!(
                                        "providers[{i}].api_key_env: {var} holds characters not allowed in a header"
                                    )
                                })?;
                                value.set_sensitive(true);
                                (Some(value), None)
                            } else {
                                tracing::warn!(
                                    provider = %provider.name,
                                    "{var} is not set: calls to this provider fail as unauthenticated and fall back"
                                );
                                (None, Some(var.clone()))
                            }
                        }
                    };
                    Upstream::OpenAi(Box::new(OpenAi {
                        client,
                        url: endpoint(base, "chat/completions")
                            .map_err(|e| format!("providers[{i}].base_url: {base:?} is not a URL: {e}"))?,
                        auth,
                        missing_key,
                        request_timeout: Duration::from_millis(provider.request_timeout_ms),
                        first_token_timeout: Duration::from_millis(provider.first_token_timeout_ms),
                        stream_idle_timeout: Duration::from_millis(provider.stream_idle_timeout_ms),
                        include_usage: provider.include_usage,
                        max_body: usize::try_from(provider.max_upstream_body_bytes).unwrap_or(usize::MAX),
                    }))
                }
            };
            by_provider.insert(provider.name.clone(), upstream);
        }
        Ok(Upstreams { by_provider })
    }

    /// Whether `provider` is the in-process simulated one (its answers are
    /// stand-ins, never cached).
    pub(crate) fn is_simulated(&self, provider: &str) -> bool {
        matches!(self.by_provider.get(provider), Some(Upstream::Simulated(_)))
    }

    /// Whether `provider` is configured.
    pub(crate) fn knows(&self, provider: &str) -> bool {
        self.by_provider.contains_key(provider)
    }

    fn get(&self, model: &ModelSpec) -> Result<&Upstream, Failure> {
        self.by_provider.get(&model.provider).ok_or_else(|| {
            Failure::new(
                ErrorClass::NotFound,
                &format!("provider {:?} of model {} is not configured", model.provider, model.id),
            )
        })
    }

    /// A non-streaming completion: the upstream's body as it came, and its usage.
    pub(crate) async fn complete(
        &self,
        model: &ModelSpec,
        chat: &ChatRequest,
        ctx: AttemptCtx,
        fleet: &Fleet,
    ) -> Result<ModelResponse<Bytes>, Failure> {
        match self.get(model)? {
            Upstream::OpenAi(api) => api.complete(model, chat, ctx, fleet).await,
            Upstream::Simulated(sim) => {
                let r = sim
                    .complete(
                        model,
                        chat.requirements.prompt_tokens,
                        chat.cap.unwrap_or(chat.requirements.max_output_tokens),
                        ctx,
                    )
                    .await?;
                let body = json!({
                    "id": "chatcmpl-sim",
                    "object": "chat.completion",
                    "created": 0,
                    "model": model.upstream_name(),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": r.value}, "finish_reason": "stop"}],
                    "usage": usage_json(r.usage.unwrap_or_default()),
                });
                Ok(ModelResponse { value: Bytes::from(json_bytes(&body)), usage: r.usage })
            }
        }
    }

    /// Opens a stream: returns once the first event arrived, so a failure
    /// before it can still fall back.
    pub(crate) async fn open(
        &self,
        model: &ModelSpec,
        chat: &ChatRequest,
        ctx: AttemptCtx,
        fleet: &Fleet,
    ) -> Result<Events, Failure> {
        match self.get(model)? {
            Upstream::OpenAi(api) => api.open(model, chat, ctx, fleet).await,
            Upstream::Simulated(sim) => {
                let r = sim
                    .complete(
                        model,
                        chat.requirements.prompt_tokens,
                        chat.cap.unwrap_or(chat.requirements.max_output_tokens),
                        ctx,
                    )
                    .await?;
                let chunk = |delta: Value, finish: Value| {
                    json!({"id": "chatcmpl-sim", "object": "chat.completion.chunk", "created": 0, "model": model.upstream_name(),
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                };
                let mut text = String::new();
                let mut push = |v: &Value| {
                    text.push_str("data: ");
                    text.push_str(&v.to_string());
                    text.push_str("\n\n");
                };
                push(&chunk(json!({"role": "assistant", "content": ""}), Value::Null));
                for word in r.value.split_inclusive(' ') {
                    push(&chunk(json!({"content": word}), Value::Null));
                }
                push(&chunk(json!({}), json!("stop")));
                push(&json!({"id": "chatcmpl-sim", "object": "chat.completion.chunk", "created": 0,
                             "model": model.upstream_name(), "choices": [], "usage": usage_json(r.usage.unwrap_or_default())}));
                text.push_str("data: [DONE]\n\n");
                let body = futures_util::stream::once(async move { Ok(Bytes::from(text)) });
                Events::open(Box::pin(body), None).await
            }
        }
    }
}

fn usage_json(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    })
}

impl OpenAi {
    /// The time an attempt has: `limit`, or what the request has left.
    fn budget(limit: Duration, ctx: &AttemptCtx) -> Result<Duration, Failure> {
        let timeout = ctx.remaining.map_or(limit, |left| left.min(limit));
        if timeout.is_zero() {
            return Err(Failure::new(ErrorClass::Timeout, "no time left before the deadline"));
        }
        Ok(timeout)
    }

    /// Sends the request; `timeout` bounds the whole exchange, body
    /// included (a stream has none here: `open` bounds it per event).
    async fn send(
        &self,
        model: &ModelSpec,
        chat: &ChatRequest,
        timeout: Option<Duration>,
        fleet: &Fleet,
    ) -> Result<reqwest::Response, Failure> {
        if let Some(var) = &self.missing_key {
            return Err(Failure::new(ErrorClass::Authentication, &format!("no API key: {var} is not set")));
        }
        let body = json_bytes(&Outgoing {
            body: &chat.body,
            model: model.upstream_name(),
            stream: chat.stream,
            cap: chat.cap,
            include_usage: self.include_usage,
        });
        let mut request =
            self.client.post(self.url.clone()).header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        if let Some((parent, state)) = &chat.trace {
            request = request.header(crate::traceparent::TRACEPARENT, parent.clone());
            if let Some(state) = state {
                request = request.header(crate::traceparent::TRACESTATE, state.clone());
            }
        }
        // A timeout once the request is out may still be billed: the
        // provider may be generating the answer we stopped waiting for.
        let response = request.send().await.map_err(|e| {
            let failure = transport(&e);
            if e.is_timeout() && !e.is_connect() { failure.billed() } else { failure }
        })?;
        // Every answer says how close the provider's limits are: a model
        // near them is ranked down before it starts answering 429.
        observe_rate_limits(fleet, model, response.headers());
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(Ok(piece)) = stream.next().await {
            body.extend_from_slice(&piece[..piece.len().min(MAX_ERROR_BODY.saturating_sub(body.len()))]);
            if body.len() >= MAX_ERROR_BODY {
                break;
            }
        }
        Err(classify_response(status.as_u16(), &String::from_utf8_lossy(&body), retry_after.as_deref()))
    }

    async fn complete(
        &self,
        model: &ModelSpec,
        chat: &ChatRequest,
        ctx: AttemptCtx,
        fleet: &Fleet,
    ) -> Result<ModelResponse<Bytes>, Failure> {
        let timeout = Self::budget(self.request_timeout, &ctx)?;
        let response = self.send(model, chat, Some(timeout), fleet).await?;
        // From here on the upstream accepted the request and is answering:
        // a failure is billed, with its usage unknown.
        let body = self.read_bounded(response).await.map_err(Failure::billed)?;
        let usage = completion_usage(&body).map_err(|e| {
            Failure::new(ErrorClass::ServerError, &format!("the upstream answered invalid JSON: {e}")).billed()
        })?;
        // A provider that reports no usage (or not in OpenAI's shape) is
        // charged the hold: the worst case, never $0.
        Ok(ModelResponse { value: body, usage })
    }

    /// The whole body, unless it is over `max_body` (said by its
    /// `Content-Length` or found reading it): that attempt's failure.
    async fn read_bounded(&self, response: reqwest::Response) -> Result<Bytes, Failure> {
        let too_large = || {
            Failure::new(
                ErrorClass::ServerError,
                &format!(
                    "the upstream's answer is over {} bytes (the provider's max_upstream_body_bytes)",
                    self.max_body
                ),
            )
        };
        if response.content_length().is_some_and(|n| n > self.max_body as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| transport(&e))?;
            if body.len() + piece.len() > self.max_body {
                return Err(too_large());
            }
            body.extend_from_slice(&piece);
        }
        Ok(Bytes::from(body))
    }

    async fn open(
        &self,
        model: &ModelSpec,
        chat: &ChatRequest,
        ctx: AttemptCtx,
        fleet: &Fleet,
    ) -> Result<Events, Failure> {
        // No total limit on a stream (a long reasoning answer that keeps
        // coming is fine): its first event within `first_token_timeout`,
        // then each next one within `stream_idle_timeout` of the last.
        let first = Self::budget(self.first_token_timeout, &ctx)?;
        let opened = tokio::time::timeout(first, async {
            let response = self.send(model, chat, None, fleet).await?;
            let body = response.bytes_stream().map(|piece| piece.map_err(|e| transport(&e)));
            // The upstream accepted the request: a failure before the first
            // event may still be billed.
            Events::open(Box::pin(body), Some(self.stream_idle_timeout)).await.map_err(Failure::billed)
        })
        .await;
        opened.unwrap_or_else(|_| {
            Err(Failure::new(
                ErrorClass::Timeout,
                &format!(
                    "the upstream sent no first event within {} ms (the provider's first_token_timeout_ms)",
                    first.as_millis()
                ),
            )
            .billed())
        })
    }
}

/// `path` under `base`, keeping `base`'s query (`?api-version=…`).
fn endpoint(base: &str, path: &str) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(base).map_err(|e| e.to_string())?;
    if url.cannot_be_a_base() {
        return Err("it cannot take a path".to_owned());
    }
    let joined = format!("{}/{path}", url.path().trim_end_matches('/'));
    url.set_path(&joined);
    Ok(url)
}

/// Reads OpenAI-style rate-limit headers (`x-ratelimit-remaining-requests`,
/// `-limit-requests`, `-remaining-tokens`, `-limit-tokens`, and the
/// `-reset-requests`/`-reset-tokens` durations such as `1s` or `6m0s`)
/// and tells the fleet how much headroom the model's provider has left.
fn observe_rate_limits(fleet: &Fleet, model: &ModelSpec, headers: &reqwest::header::HeaderMap) {
    let number =
        |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    let headroom = modelfleet::monitor::rate_limit_headroom(
        number("x-ratelimit-remaining-requests"),
        number("x-ratelimit-limit-requests"),
        number("x-ratelimit-remaining-tokens"),
        number("x-ratelimit-limit-tokens"),
    );
    let Some(headroom) = headroom else { return };
    let reset = ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .iter()
        .filter_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()).and_then(parse_reset))
        .max()
        .unwrap_or(Duration::from_mins(1))
        .min(Duration::from_hours(1));
    fleet.observe_rate_limit(model, headroom, reset);
}

/// A reset duration as OpenAI writes it (`20ms`, `1s`, `6m0s`, `1h2m3.5s`)
/// or a plain number of seconds.
fn parse_reset(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let mut total = 0.0_f64;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3_600.0,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    (total.is_finite() && total <= 86_400.0).then(|| Duration::from_secs_f64(total))
}

/// A transport failure, classified, with the upstream's address left out.
fn transport(err: &reqwest::Error) -> Failure {
    let mut detail = String::new();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        detail = cause.to_string();
        source = cause.source();
    }
    let what = if err.is_timeout() {
        return Failure::new(ErrorClass::Timeout, "the upstream did not answer in time");
    } else if err.is_connect() {
        "cannot connect to the upstream"
    } else if err.is_body() || err.is_decode() {
        "the upstream connection broke while answering"
    } else {
        "the upstream connection failed"
    };
    let message = if detail.is_empty() { what.to_owned() } else { format!("{what}: {detail}") };
    Failure::new(ErrorClass::Connection, &message)
}

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, Failure>> + Send>>;

/// The largest SSE event read from an upstream: beyond, the stream fails.
pub(crate) const MAX_EVENT_BYTES: usize = 1 << 20;

/// An upstream SSE stream, event by event.
pub(crate) struct Events {
    body: Body,
    parser: SseParser,
    first: Option<String>,
    /// The longest wait for the next event (`stream_idle_timeout_ms`).
    idle: Option<Duration>,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Events {
    /// Reads up to the first event: a stream that fails or ends before it,
    /// or whose first event is an error, fails here (and may fall back).
    pub(crate) async fn open(body: Body, idle: Option<Duration>) -> Result<Events, Failure> {
        let mut events = Events { body, parser: SseParser::default(), first: None, idle };
        match events.read().await? {
            Some(first) => {
                if let Some(failure) = error_event(&first) {
                    return Err(failure);
                }
                events.first = Some(first);
                Ok(events)
            }
            None => Err(Failure::new(ErrorClass::ServerError, "the upstream stream ended before its first event")),
        }
    }

    async fn read(&mut self) -> Result<Option<String>, Failure> {
        loop {
            let too_large = || {
                Failure::new(
                    ErrorClass::ServerError,
                    &format!("the upstream sent an SSE event over {MAX_EVENT_BYTES} bytes"),
                )
            };
            // Bounded whichever way the bytes were split: an event that
            // ends in the piece that took it past the limit fails too.
            if let Some(event) = self.parser.next_event() {
                return if event.len() > MAX_EVENT_BYTES { Err(too_large()) } else { Ok(Some(event)) };
            }
            if self.parser.pending() > MAX_EVENT_BYTES {
                return Err(too_large());
            }
            match self.body.next().await {
                Some(Ok(piece)) => self.parser.push(&piece),
                Some(Err(failure)) => return Err(failure),
                None => return Ok(None),
            }
        }
    }

    /// The next event's data; `None` when the body ended.
    pub(crate) async fn next(&mut self) -> Result<Option<String>, Failure> {
        if let Some(first) = self.first.take() {
            return Ok(Some(first));
        }
        let Some(idle) = self.idle else { return self.read().await };
        tokio::time::timeout(idle, self.read()).await.unwrap_or_else(|_| {
            Err(Failure::new(
                ErrorClass::Timeout,
                &format!(
                    "the upstream stream was silent for {} ms (the provider's stream_idle_timeout_ms)",
                    idle.as_millis()
                ),
            ))
        })
    }
}

/// An `{"error": …}` event sent mid-stream, as a failure.
pub(crate) fn error_event(data: &str) -> Option<Failure> {
    if !data.contains("\"error\"") {
        return None;
    }
    let value: Value = serde_json::from_str(data).ok()?;
    value.get("error").filter(|e| !e.is_null())?;
    let failure = classify_response(500, data, None);
    Some(failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_keeps_the_base_path_and_query() {
        let url = |base: &str| endpoint(base, "chat/completions").map(|u| u.to_string());
        assert_eq!(url("https://api.openai.com/v1").unwrap(), "https://api.openai.com/v1/chat/completions");
        assert_eq!(url("https://api.openai.com/v1/").unwrap(), "https://api.openai.com/v1/chat/completions");
        assert_eq!(url("http://127.0.0.1:8080").unwrap(), "http://127.0.0.1:8080/chat/completions");
        assert_eq!(
            url("https://x.openai.azure.com/openai/deployments/d?api-version=2024-10-21").unwrap(),
            "https://x.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-10-21"
        );
        assert!(url("not a url").is_err());
        assert!(url("mailto:a@b.c").is_err());
    }
}
