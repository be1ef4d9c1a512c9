//! Upstream providers: an HTTP API of one of the provider kinds (OpenAI's
//! and compatible ones, Azure OpenAI, Anthropic, Gemini), or the in-process
//! simulator.
//!
//! What every HTTP provider shares lives here: the client, the keys and
//! their rotation ([`keys`]), static headers, timeouts, bounded reading,
//! rate-limit headers and the trace context. What a kind does its own way
//! (where a call goes, its body, its answer, its stream) is its
//! [`Adapter`], one module per kind: [`openai`] (OpenAI and Azure, whose
//! bodies are the gateway's own), [`anthropic`] and [`gemini`] (translated
//! by `modelfleet-translate`). Inside, every answer is OpenAI's chat format.

mod anthropic;
mod gemini;
mod keys;
mod openai;

use std::{collections::HashMap, collections::VecDeque, fmt, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use modelfleet::{
    Fleet, ModelResponse, Simulator, Usage,
    config::{Config, Provider, ProviderKind},
    errors::{AttemptCtx, Classify, ErrorClass, Failure, classify_response, parse_retry_after},
    registry::ModelSpec,
};
use modelfleet_translate::{AnswerError, Refusal, ToChatStream};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use serde_json::{Value, json};

use crate::wire::{ChatRequest, Op, SseParser, json_bytes};

use self::keys::Keys;

/// The largest upstream error body read (the rest is dropped).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// What one provider kind does its own way; the HTTP exchange around it is
/// shared ([`Http`]).
///
/// A kind serves the [`Op`]s [`serves`] says; the gateway never sends it
/// another (it excludes the provider from such requests), and an adapter
/// asked anyway refuses with [`unsupported_op`].
trait Adapter: Send + Sync {
    /// Where a call for `req` to `model` goes.
    fn url(&self, model: &ModelSpec, req: &ChatRequest) -> Result<reqwest::Url, Failure>;
    /// The body of a call for `req` to `model`: a parameter the provider
    /// cannot take is dropped, or refused (a bad request, never sent) per
    /// the provider's `unsupported_params`.
    fn body(&self, model: &ModelSpec, req: &ChatRequest) -> Result<Vec<u8>, Failure>;
    /// A successful answer's body in OpenAI's shape for `req`'s endpoint (a
    /// `chat.completion`, a `text_completion`, an embeddings list, a
    /// Responses API `response`), with
    /// its usage (`None`: unknown, the call is charged its hold).
    fn answer(&self, model: &ModelSpec, req: &ChatRequest, body: Bytes) -> Result<ModelResponse<Bytes>, Failure>;
    /// What turns a stream of this kind into OpenAI chunks (`None`: it is
    /// OpenAI's already).
    fn translator(&self, model: &ModelSpec) -> Option<Box<dyn ToChatStream>>;
}

/// Whether a provider of `kind` serves `op`: every kind chats; Anthropic
/// has no embeddings API; legacy completions are OpenAI's (and compatible
/// servers', Azure's, the simulator's); the Responses API natively only
/// where the provider says so (`responses`, an OpenAI provider).
pub(crate) fn serves(kind: ProviderKind, responses: bool, op: Op) -> bool {
    match op {
        Op::Chat => true,
        Op::Embeddings => kind != ProviderKind::Anthropic,
        Op::Completions => matches!(kind, ProviderKind::Openai | ProviderKind::Azure | ProviderKind::Simulated),
        Op::Responses => responses && kind == ProviderKind::Openai,
    }
}

/// The refusal of an adapter asked for an [`Op`] its kind does not serve.
fn unsupported_op(kind: &str, op: Op) -> Failure {
    Failure::new(ErrorClass::BadRequest, &format!("a {kind} provider has no {} endpoint", op.name()))
}

/// The providers by name.
pub(crate) struct Upstreams {
    by_provider: HashMap<String, Upstream>,
}

enum Upstream {
    Http(Box<Http>),
    Simulated(Arc<Simulator>),
}

/// An HTTP provider of any kind.
struct Http {
    kind: ProviderKind,
    /// It serves the Responses API natively (`responses = true`).
    responses: bool,
    adapter: Box<dyn Adapter>,
    client: reqwest::Client,
    /// Its keys, in turn.
    keys: Keys,
    /// Key variables named in the config but not set.
    missing_keys: Vec<String>,
    /// Static headers (the config's, and the kind's own such as `anthropic-version`).
    headers: HeaderMap,
    /// `request_timeout_ms`: the whole of a non-streamed call.
    request_timeout: Duration,
    /// `first_token_timeout_ms`: a stream's first event.
    first_token_timeout: Duration,
    /// `stream_idle_timeout_ms`: the longest silence between two events.
    stream_idle_timeout: Duration,
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
    /// is named but not set is reported; a provider with none of its keys
    /// set fails its calls as authentication errors (its models fall back)
    /// without a network call.
    pub(crate) fn from_config(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> Result<Upstreams, String> {
        let mut by_provider = HashMap::new();
        for (i, provider) in config.providers.iter().enumerate() {
            let upstream = match provider.kind {
                ProviderKind::Simulated => Upstream::Simulated(Arc::new(Simulator::mirroring(&config.models, 7))),
                kind => Upstream::Http(Box::new(Http::new(i, provider, kind, env)?)),
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

    /// The configured providers' names.
    pub(crate) fn providers(&self) -> impl Iterator<Item = &str> {
        self.by_provider.keys().map(String::as_str)
    }

    /// The configured providers that cannot serve `op` ([`serves`]).
    pub(crate) fn not_serving(&self, op: Op) -> Vec<String> {
        self.by_provider
            .iter()
            .filter(|(_, upstream)| match upstream {
                Upstream::Http(api) => !serves(api.kind, api.responses, op),
                Upstream::Simulated(_) => !serves(ProviderKind::Simulated, false, op),
            })
            .map(|(name, _)| name.clone())
            .collect()
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
            Upstream::Http(api) => api.complete(model, chat, ctx, fleet).await,
            Upstream::Simulated(sim) => {
                let r = simulate(sim, model, chat, ctx).await?;
                let usage = r.usage.unwrap_or_default();
                let body = match chat.op {
                    Op::Chat => json!({
                        "id": "chatcmpl-sim",
                        "object": "chat.completion",
                        "created": 0,
                        "model": model.upstream_name(),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": r.value}, "finish_reason": "stop"}],
                        "usage": usage_json(usage),
                    }),
                    Op::Completions => json!({
                        "id": "cmpl-sim",
                        "object": "text_completion",
                        "created": 0,
                        "model": model.upstream_name(),
                        "choices": [{"index": 0, "text": r.value, "logprobs": null, "finish_reason": "stop"}],
                        "usage": usage_json(usage),
                    }),
                    Op::Embeddings => {
                        let mut list = sim_embeddings(model, chat, usage.input_tokens);
                        encode_as_asked(chat, &mut list);
                        list
                    }
                    // Never sent here: the simulator is excluded from native Responses requests.
                    Op::Responses => return Err(unsupported_op("simulated", chat.op)),
                };
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
            Upstream::Http(api) => api.open(model, chat, ctx, fleet).await,
            Upstream::Simulated(sim) => {
                let r = simulate(sim, model, chat, ctx).await?;
                let completions = chat.op == Op::Completions;
                let chunk = |delta: Value, finish: Value| {
                    if completions {
                        let text = delta.get("content").cloned().unwrap_or_else(|| json!(""));
                        return json!({"id": "cmpl-sim", "object": "text_completion", "created": 0, "model": model.upstream_name(),
                                      "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}]});
                    }
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
                Events::open(Box::pin(body), None, None).await
            }
        }
    }
}

/// The simulator's answer to `chat` on `model`, sized as the request asks
/// (an embeddings request: its latency and failures, no output).
async fn simulate(
    sim: &Simulator,
    model: &ModelSpec,
    chat: &ChatRequest,
    ctx: AttemptCtx,
) -> Result<ModelResponse<String>, Failure> {
    let output = if chat.op == Op::Embeddings { 0 } else { chat.cap.unwrap_or(chat.requirements.max_output_tokens) };
    let mut answer = sim.complete(model, chat.requirements.prompt_tokens, output, ctx).await?;
    if chat.op == Op::Embeddings {
        answer.usage = answer.usage.map(|u| Usage::new(u.input_tokens, 0));
    }
    Ok(answer)
}

/// An embeddings list of floats as the request asked it: unchanged, or
/// with `encoding_format: "base64"` (the openai SDK's default) each vector
/// as OpenAI sends it, its little-endian `f32`s in standard base64.
pub(crate) fn encode_as_asked(req: &ChatRequest, list: &mut Value) {
    use base64::Engine as _;
    if req.body.get("encoding_format").and_then(Value::as_str) != Some("base64") {
        return;
    }
    let Some(data) = list.get_mut("data").and_then(Value::as_array_mut) else { return };
    for item in data {
        let Some(embedding) = item.get_mut("embedding") else { continue };
        let Some(numbers) = embedding.as_array() else { continue };
        let mut bytes = Vec::with_capacity(numbers.len() * 4);
        for number in numbers {
            // f32 is what OpenAI's base64 carries.
            #[allow(clippy::cast_possible_truncation)]
            let value = number.as_f64().unwrap_or(0.0) as f32;
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        *embedding = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
}

/// A simulated embeddings list: one unit vector per input, of the model's
/// `embedding_dimensions` (8 when unknown), the same for the same text.
fn sim_embeddings(model: &ModelSpec, chat: &ChatRequest, prompt_tokens: u64) -> Value {
    let inputs: Vec<String> = match chat.body.get("input") {
        Some(Value::Array(items)) if !items.iter().all(Value::is_u64) => items.iter().map(Value::to_string).collect(),
        Some(other) => vec![other.to_string()],
        None => Vec::new(),
    };
    let wanted = chat.body.get("dimensions").and_then(Value::as_u64).and_then(|d| usize::try_from(d).ok());
    let dimensions =
        wanted.or(model.embedding_dimensions.and_then(|d| usize::try_from(d).ok())).unwrap_or(8).min(65_536);
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            // SplitMix64 seeded by the text's FNV-1a hash: deterministic,
            // cheap, spread.
            let mut state =
                text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
            let mut next = || {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                // The top 53 bits as a fraction: exact in an f64.
                #[allow(clippy::cast_precision_loss)]
                let fraction = ((z ^ (z >> 31)) >> 11) as f64 / (1_u64 << 53) as f64;
                fraction - 0.5
            };
            let raw: Vec<f64> = (0..dimensions).map(|_| next()).collect();
            let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
            let vector: Vec<f64> = raw.iter().map(|x| x / norm).collect();
            json!({"object": "embedding", "index": index, "embedding": vector})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model.upstream_name(),
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })
}

fn usage_json(usage: Usage) -> Value {
    modelfleet_translate::usage_json(&usage)
}

impl Http {
    fn new(
        i: usize,
        provider: &Provider,
        kind: ProviderKind,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Http, String> {
        let base = provider
            .base_url
            .as_deref()
            .or(kind.default_base_url())
            .ok_or_else(|| format!("providers[{i}].base_url: required for kind = \"{}\"", kind.as_str()))?;
        let base = endpoint(base, &[]).map_err(|e| format!("providers[{i}].base_url: {base:?} is not a URL: {e}"))?;
        // Redirects are not followed: a provider that redirects a POST is
        // misconfigured (or hostile); the 3xx fails the attempt instead of
        // sending the body and key elsewhere.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_millis(provider.connect_timeout_ms))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| format!("providers[{i}]: cannot build the HTTP client: {e}"))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &provider.headers {
            let bad = || format!("providers[{i}].headers.{name}: not a valid header");
            // Marked sensitive: a configured header may hold a secret.
            let mut value = HeaderValue::from_str(value).map_err(|_| bad())?;
            value.set_sensitive(true);
            headers.insert(HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?, value);
        }
        let (adapter, key_header, bearer): (Box<dyn Adapter>, HeaderName, bool) = match kind {
            ProviderKind::Anthropic => {
                let version = HeaderValue::from_str(&provider.anthropic_version)
                    .map_err(|_| format!("providers[{i}].anthropic_version: not a valid header value"))?;
                headers.insert(HeaderName::from_static("anthropic-version"), version);
                (
                    Box::new(anthropic::Anthropic::new(&base, provider.unsupported_params)),
                    HeaderName::from_static("x-api-key"),
                    false,
                )
            }
            ProviderKind::Gemini => (
                Box::new(gemini::Gemini::new(base, provider.unsupported_params)),
                HeaderName::from_static("x-goog-api-key"),
                false,
            ),
            ProviderKind::Azure => {
                let version = provider.api_version.as_deref().ok_or_else(|| {
                    format!("providers[{i}].api_version: required for kind = \"azure\" (e.g. \"2024-10-21\")")
                })?;
                (
                    Box::new(openai::OpenAi::azure(base, version, provider.include_usage)),
                    HeaderName::from_static("api-key"),
                    false,
                )
            }
            ProviderKind::Openai | ProviderKind::Simulated => {
                (Box::new(openai::OpenAi::new(&base, provider.include_usage)), reqwest::header::AUTHORIZATION, true)
            }
        };
        let mut values = Vec::new();
        let mut missing_keys = Vec::new();
        for (j, var) in provider.api_key_envs.iter().enumerate() {
            let Some(key) = env(var).filter(|k| !k.is_empty()) else {
                tracing::warn!(provider = %provider.name, "{var} is not set: its key is left out of the rotation");
                missing_keys.push(var.clone());
                continue;
            };
            // Whatever its shape, the key never leaves the process in a
            // message (an upstream may echo it).
            if !modelfleet::errors::redact_everywhere(&key) {
                tracing::warn!(provider = %provider.name, "{var} holds a key too short to redact from messages by value");
            }
            let text = if bearer { format!("Bearer {key}") } else { key };
            let mut value = HeaderValue::from_str(&text).map_err(|_| {
                format!("providers[{i}].api_key_envs[{j}]: {var} holds characters not allowed in a header")
            })?;
            value.set_sensitive(true);
            values.push(value);
        }
        if values.is_empty() && !missing_keys.is_empty() {
            tracing::warn!(
                provider = %provider.name,
                "none of its key variables is set: calls to this provider fail as unauthenticated and fall back"
            );
        }
        Ok(Http {
            kind,
            responses: provider.responses,
            adapter,
            client,
            keys: Keys::new(key_header, values),
            missing_keys,
            headers,
            request_timeout: Duration::from_millis(provider.request_timeout_ms),
            first_token_timeout: Duration::from_millis(provider.first_token_timeout_ms),
            stream_idle_timeout: Duration::from_millis(provider.stream_idle_timeout_ms),
            max_body: usize::try_from(provider.max_upstream_body_bytes).unwrap_or(usize::MAX),
        })
    }

    /// The time an attempt has: `limit`, or what the request has left.
    fn budget(limit: Duration, ctx: &AttemptCtx) -> Result<Duration, Failure> {
        let timeout = ctx.remaining.map_or(limit, |left| left.min(limit));
        if timeout.is_zero() {
            return Err(Failure::new(ErrorClass::Timeout, "no time left before the deadline"));
        }
        Ok(timeout)
    }

    /// Sends the request; `timeout` bounds the whole exchange, body
    /// included (a stream has none here: `open` bounds it per event). A 429
    /// or a 401/403 answered to one key rests that key and sends again with
    /// the next, within this attempt: a key's limit is neither the model's
    /// failure nor the request's.
    async fn send(
        &self,
        model: &ModelSpec,
        chat: &ChatRequest,
        timeout: Option<Duration>,
        fleet: &Fleet,
    ) -> Result<reqwest::Response, Failure> {
        if self.keys.len() == 0
            && let Some(var) = self.missing_keys.first()
        {
            return Err(Failure::new(ErrorClass::Authentication, &format!("no API key: {var} is not set")));
        }
        if !serves(self.kind, self.responses, chat.op) {
            return Err(unsupported_op(self.kind.as_str(), chat.op));
        }
        let url = self.adapter.url(model, chat)?;
        let body = Bytes::from(self.adapter.body(model, chat)?);
        // One deadline for the attempt, whichever keys it goes through.
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut tried = Vec::new();
        loop {
            let key = self.keys.pick(self.keys.now_ms(), &tried);
            let mut request = self
                .client
                .post(url.clone())
                .headers(self.headers.clone())
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Err(Failure::new(ErrorClass::Timeout, "the upstream did not answer in time").billed());
                }
                request = request.timeout(left);
            }
            if let Some(index) = key
                && let Some(value) = self.keys.value(index)
            {
                request = request.header(self.keys.header(), value.clone());
                tried.push(index);
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
            let failure = classify_response(status.as_u16(), &String::from_utf8_lossy(&body), retry_after.as_deref());
            // By what the provider said, not the status alone: Gemini
            // answers a bad key with a 400 (`API_KEY_INVALID`).
            // A rate limit, a used-up quota or refused credentials are the
            // key's (each key may be another account's).
            let rest = match failure.class() {
                ErrorClass::RateLimited => Some(
                    retry_after
                        .as_deref()
                        .and_then(parse_retry_after)
                        .unwrap_or(keys::RATE_LIMITED_REST)
                        .min(keys::REFUSED_REST),
                ),
                ErrorClass::Authentication | ErrorClass::QuotaExhausted => Some(keys::REFUSED_REST),
                _ => None,
            };
            if let (Some(rest), Some(index)) = (rest, key) {
                self.keys.rest(index, self.keys.now_ms(), rest);
                // Only a key that is not resting is worth another call now:
                // when every key rests (a provider-wide limit), the attempt
                // fails instead of calling once per key.
                if self.keys.awake_untried(self.keys.now_ms(), &tried) {
                    tracing::info!(status = status.as_u16(), key = index, "a key was refused: the next one is tried");
                    continue;
                }
            }
            return Err(failure);
        }
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
        // A provider that reports no usage (or not in its kind's shape) is
        // charged the hold: the worst case, never $0.
        self.adapter.answer(model, chat, body).map_err(Failure::billed)
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
            Events::open(Box::pin(body), Some(self.stream_idle_timeout), self.adapter.translator(model))
                .await
                .map_err(Failure::billed)
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

/// A request the provider's format cannot carry, under `unsupported_params
/// = "error"` (or malformed for it): a bad request, never sent.
fn refused(provider_kind: &str, refusal: &Refusal) -> Failure {
    Failure::new(
        ErrorClass::BadRequest,
        &format!("{}: cannot be sent to a {provider_kind} provider: {}", refusal.field, refusal.message),
    )
}

/// A translated answer that failed: malformed (the upstream's fault), or a
/// failure the provider reported inside it, classified as its status says.
fn answer_failure(err: AnswerError) -> Failure {
    match err {
        AnswerError::Malformed(why) => Failure::new(ErrorClass::ServerError, &why),
        AnswerError::Reported { status, body } => classify_response(status, &body, None),
    }
}

/// An OpenAI `chat.completion` value as the answer's bytes, with its usage.
fn translated_answer(value: &Value) -> ModelResponse<Bytes> {
    let usage = value.get("usage").and_then(modelfleet_translate::usage_of);
    ModelResponse { value: Bytes::from(json_bytes(value)), usage }
}

/// The output tokens a translated request asks for when the client set no
/// cap: the hold's own bound for one answer (the model's output limit, or
/// what its window leaves after the prompt), so the answer cannot outgrow
/// what the budget held; 4,096 when the model states neither.
fn default_max_tokens(model: &ModelSpec, chat: &ChatRequest) -> u32 {
    let n = u64::from(chat.requirements.choices());
    chat.cap.unwrap_or_else(|| {
        modelfleet::selector::worst_case_output(model, &chat.requirements)
            .map_or(4_096, |all| u32::try_from(all / n.max(1)).unwrap_or(u32::MAX).max(1))
    })
}

/// `segments` appended to `base`'s path, keeping `base`'s query
/// (`?api-version=…`); each segment is percent-encoded as a path segment
/// (a deployment or model name cannot break out of it).
fn endpoint(base: &str, segments: &[&str]) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(base).map_err(|e| e.to_string())?;
    join(&url, segments)
}

/// [`endpoint`] on a parsed base.
fn join(base: &reqwest::Url, segments: &[&str]) -> Result<reqwest::Url, String> {
    let mut url = base.clone();
    let mut path = url.path_segments_mut().map_err(|()| "it cannot take a path".to_owned())?;
    path.pop_if_empty();
    path.extend(segments);
    drop(path);
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

/// An upstream SSE stream, event by event, as OpenAI chunks.
pub(crate) struct Events {
    body: Body,
    parser: SseParser,
    first: Option<String>,
    /// The longest wait for the next event (`stream_idle_timeout_ms`).
    idle: Option<Duration>,
    /// A stream in another kind's format: its translator, the chunks it
    /// made that were not read yet, and whether the body ended.
    translator: Option<Box<dyn ToChatStream>>,
    queue: VecDeque<String>,
    ended: bool,
    /// The first event arrived: the idle limit applies from here.
    opened: bool,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Events {
    /// Reads up to the first event: a stream that fails or ends before it,
    /// or whose first event is an error, fails here (and may fall back).
    pub(crate) async fn open(
        body: Body,
        idle: Option<Duration>,
        translator: Option<Box<dyn ToChatStream>>,
    ) -> Result<Events, Failure> {
        let mut events = Events {
            body,
            parser: SseParser::default(),
            first: None,
            idle,
            translator,
            queue: VecDeque::new(),
            ended: false,
            opened: false,
        };
        match events.read().await? {
            Some(first) => {
                if let Some(failure) = error_event(&first) {
                    return Err(failure);
                }
                events.first = Some(first);
                events.opened = true;
                Ok(events)
            }
            None => Err(Failure::new(ErrorClass::ServerError, "the upstream stream ended before its first event")),
        }
    }

    /// The next event, translated when the stream is another kind's.
    async fn read(&mut self) -> Result<Option<String>, Failure> {
        loop {
            if let Some(chunk) = self.queue.pop_front() {
                return Ok(Some(chunk));
            }
            if self.translator.is_none() {
                return self.raw_within().await;
            }
            if self.ended {
                return Ok(None);
            }
            let raw = self.raw_within().await?;
            let Some(translator) = self.translator.as_mut() else { return Ok(None) };
            let chunks = if let Some(data) = raw {
                translator.push(&data)
            } else {
                self.ended = true;
                translator.finish()
            };
            self.queue.extend(chunks.map_err(answer_failure)?);
        }
    }

    /// The next event's data as the upstream sent it.
    async fn raw(&mut self) -> Result<Option<String>, Failure> {
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
        self.read().await
    }

    /// The next upstream event within the idle limit once the stream is
    /// open (before, the provider's first-token limit applies): each event
    /// the provider sends counts, a translated kind's keep-alives (Anthropic's
    /// `ping`) included, though they make no chunk.
    async fn raw_within(&mut self) -> Result<Option<String>, Failure> {
        let Some(idle) = self.idle.filter(|_| self.opened) else { return self.raw().await };
        tokio::time::timeout(idle, self.raw()).await.unwrap_or_else(|_| {
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
///
/// A Responses API stream says it failed its own way: an event of type
/// `error` (its error nested under `error`, or flat beside `type`), or
/// `response.failed` with the response's `error`.
pub(crate) fn error_event(data: &str) -> Option<Failure> {
    if !data.contains("\"error\"") && !data.contains("response.failed") {
        return None;
    }
    error_of(&serde_json::from_str(data).ok()?)
}

/// [`error_event`] on an event already parsed.
pub(crate) fn error_of(value: &Value) -> Option<Failure> {
    let nested = value.get("error").filter(|e| e.is_object());
    let error = match value.get("type").and_then(Value::as_str) {
        Some("error") => nested.cloned().unwrap_or_else(
            || json!({"message": value.get("message"), "code": value.get("code"), "type": value.get("code")}),
        ),
        Some("response.failed") => value
            .pointer("/response/error")
            .filter(|e| e.is_object())
            .cloned()
            .unwrap_or_else(|| json!({"message": "the response failed"})),
        _ => value.get("error").filter(|e| !e.is_null())?.clone(),
    };
    Some(classify_response(500, &json!({ "error": error }).to_string(), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_keeps_the_base_path_and_query() {
        let url = |base: &str| endpoint(base, &["chat", "completions"]).map(|u| u.to_string());
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

    #[test]
    fn error_events_are_read_in_each_shape() {
        let class = |data: &str| error_event(data).map(|f| f.class());
        // Chat: an `error` object.
        assert_eq!(class(r#"{"error":{"message":"overloaded","type":"server_error"}}"#), Some(ErrorClass::ServerError));
        assert_eq!(class(r#"{"choices":[{"delta":{"content":"an error"}}],"error":null}"#), None);
        // The Responses API: nested (as OpenAI sends it) or flat.
        assert_eq!(
            class(
                r#"{"type":"error","sequence_number":3,"error":{"type":"rate_limit_error","code":"rate_limit_exceeded","message":"Rate limit reached"}}"#
            ),
            Some(ErrorClass::RateLimited)
        );
        assert_eq!(
            class(r#"{"type":"error","code":"rate_limit_exceeded","message":"Rate limit reached","param":null}"#),
            Some(ErrorClass::RateLimited)
        );
        assert_eq!(
            class(
                r#"{"type":"response.failed","response":{"id":"r","status":"failed","error":{"code":"server_error","message":"boom"}}}"#
            ),
            Some(ErrorClass::ServerError)
        );
        // Every other Responses event carries `"error": null` in its response: not a failure.
        assert_eq!(class(r#"{"type":"response.created","response":{"id":"r","error":null}}"#), None);
        assert_eq!(class(r#"{"type":"response.output_text.delta","delta":"error"}"#), None);
    }

    #[test]
    fn a_name_in_a_path_cannot_break_out_of_its_segment() {
        let base = endpoint("https://x.openai.azure.com", &[]).unwrap();
        let url = join(&base, &["openai", "deployments", "../../admin?x=1#y", "chat", "completions"]).unwrap();
        assert_eq!(url.path(), "/openai/deployments/..%2F..%2Fadmin%3Fx=1%23y/chat/completions");
        assert_eq!(url.query(), None);
    }
}
