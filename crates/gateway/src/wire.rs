//! The OpenAI wire format: parsing requests, usage, SSE events, and errors
//! in OpenAI's shape.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use modelfleet::{Usage, registry::Capability, selector::Requirements};
use modelfleet_translate::estimate_json;
use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::{Map, Value};

/// An error answered in OpenAI's shape: `{"error": {"message", "type", "code"}}`.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    /// Headers some errors carry (boxed: errors travel in `Result`s).
    pub(crate) headers: Box<ErrorHeaders>,
    /// The upstream's `code` and `param`, relayed.
    pub(crate) upstream: Option<Box<modelfleet::errors::UpstreamFields>>,
}

/// What an error answer may say besides its body.
#[derive(Debug, Clone, Default)]
pub(crate) struct ErrorHeaders {
    /// `x-modelfleet-attempts`.
    pub(crate) attempts: Option<usize>,
    /// `Retry-After`, in whole seconds rounded up.
    pub(crate) retry_after: Option<std::time::Duration>,
    /// `x-modelfleet-cost`: what the request was charged.
    pub(crate) cost: Option<modelfleet::registry::Money>,
    /// `x-modelfleet-budget-remaining`, for a budget refusal.
    pub(crate) budget_remaining: Option<modelfleet::registry::Money>,
    /// `ETag`: a model's current revision, for a conflicting edit.
    pub(crate) etag: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, kind, code, message: message.into(), headers: Box::default(), upstream: None }
    }

    /// The same error with the upstream's own `code` (instead of the
    /// gateway's) and `param`, for an error the client must act on.
    pub(crate) fn with_upstream(mut self, upstream: Option<Box<modelfleet::errors::UpstreamFields>>) -> Self {
        self.upstream = upstream;
        self
    }

    pub(crate) fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", code, message)
    }

    /// The JSON body, message sanitized.
    pub(crate) fn body(&self) -> Value {
        let upstream = self.upstream.as_deref();
        serde_json::json!({"error": {
            "message": modelfleet::errors::sanitize(&self.message),
            "type": self.kind,
            "param": upstream.and_then(|u| u.param.as_deref()),
            "code": upstream.and_then(|u| u.code.as_deref()).unwrap_or(self.code),
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, json_bytes(&self.body())).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let extra = &self.headers;
        if let Some(n) = extra.attempts {
            headers.insert("x-modelfleet-attempts", HeaderValue::from(n));
        }
        if let Some(wait) = extra.retry_after {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        if let Some(value) = extra.cost.and_then(|c| HeaderValue::from_str(&c.to_string()).ok()) {
            headers.insert("x-modelfleet-cost", value);
        }
        if let Some(value) = extra.budget_remaining.and_then(|r| HeaderValue::from_str(&r.to_string()).ok()) {
            headers.insert("x-modelfleet-budget-remaining", value);
        }
        if let Some(value) = extra.etag.and_then(|r| HeaderValue::from_str(&format!("\"{r}\"")).ok()) {
            headers.insert(header::ETAG, value);
        }
        response
    }
}

pub(crate) fn json_bytes(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

/// A JSON response.
pub(crate) fn json_response(status: StatusCode, value: &impl Serialize) -> Response {
    let mut response = (status, json_bytes(value)).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// What a request asks a model to do: OpenAI's endpoint for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    /// `/v1/chat/completions` (and the formats translated to it).
    Chat,
    /// `/v1/completions`: legacy text completions, OpenAI-compatible providers only.
    Completions,
    /// `/v1/embeddings`: embedding models only.
    Embeddings,
    /// `/v1/responses` passed through as sent, to providers that serve
    /// OpenAI's Responses API (`responses = true`).
    Responses,
}

impl Op {
    /// The endpoint's path after `/v1`, as each OpenAI-compatible provider has it.
    pub(crate) const fn path(self) -> &'static [&'static str] {
        match self {
            Op::Chat => &["chat", "completions"],
            Op::Completions => &["completions"],
            Op::Embeddings => &["embeddings"],
            Op::Responses => &["responses"],
        }
    }

    /// The endpoint as a client calls it.
    pub(crate) const fn endpoint(self) -> &'static str {
        match self {
            Op::Chat => "/v1/chat/completions",
            Op::Completions => "/v1/completions",
            Op::Embeddings => "/v1/embeddings",
            Op::Responses => "/v1/responses",
        }
    }

    /// What it is, in words (messages name it so: a path would be
    /// sanitized out of them).
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Op::Chat => "chat completions",
            Op::Completions => "legacy completions",
            Op::Embeddings => "embeddings",
            Op::Responses => "native responses",
        }
    }
}

/// A request for a model, checked: a chat completion, a text completion or
/// embeddings ([`Op`]); the gateway serves the three the same way.
// Four independent facts of the request, each a yes or no.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone)]
pub(crate) struct ChatRequest {
    /// What it asks for.
    pub(crate) op: Op,
    /// The body as sent, minus the `modelfleet` extension.
    pub(crate) body: Map<String, Value>,
    /// What `model` named.
    pub(crate) model: String,
    pub(crate) stream: bool,
    /// The client asked for the usage chunk (`stream_options.include_usage`).
    pub(crate) include_usage: bool,
    /// From the extension, with the prompt estimate, `max_tokens` and `n`
    /// filled in (the client's counts only ever raise the gateway's).
    pub(crate) requirements: Requirements,
    /// Whether the extension was present.
    pub(crate) extended: bool,
    /// A cap on each answer the client did not send but the budget hold
    /// assumed (a route's `max_output_tokens`): sent upstream as
    /// `max_tokens`, so the answer cannot outgrow its hold.
    pub(crate) cap: Option<u32>,
    /// False when `modelfleet.cache = false`: the response cache is
    /// bypassed (as with `cache-control: no-cache`).
    pub(crate) use_cache: bool,
    /// The client's W3C trace context, forwarded upstream with each attempt.
    pub(crate) trace: Option<crate::traceparent::Trace>,
}

/// Tokens per image part at most: a high-detail 2048×2048 image is 2,805
/// tokens at OpenAI's prices per tile. (Audio and files have no such bound:
/// their tokens grow with their length, which only the provider measures;
/// a request with them is [`Requirements::unmeasured`].)
const TOKENS_PER_MEDIA_PART: usize = 3_000;

/// Content parts whose tokens the gateway cannot bound (audio, files: a
/// 50-page document is tens of thousands of tokens).
const UNMEASURED_PARTS: [&str; 4] = ["input_audio", "file", "input_file", "audio"];

/// The fields of a request that the provider counts as prompt tokens.
const PROMPT_FIELDS: [&str; 5] = ["messages", "tools", "functions", "response_format", "tool_choice"];

/// Tokens a prompt may take before the provider counts them, for the
/// context check and the budget hold: `modelfleet-translate`'s
/// [`estimate_json`] over everything the provider reads as prompt — the
/// messages (text, names, tool calls and their arguments), the tool and
/// function definitions, the response format — the larger of a calibrated
/// estimate (never more than 5% under OpenAI's tokenizers on English, code,
/// CJK and mixed text) and a quarter of the text's bytes, a token per JSON
/// value for the structure; media payloads left out, and
/// [`TOKENS_PER_MEDIA_PART`] per image part instead.
fn estimate_prompt(body: &Map<String, Value>) -> u32 {
    let text: u64 = PROMPT_FIELDS.iter().filter_map(|field| body.get(*field)).map(estimate_json).sum();
    let media: usize = body.get("messages").and_then(Value::as_array).map_or(0, |messages| {
        messages
            .iter()
            .filter_map(|m| m.get("content").and_then(Value::as_array))
            .flatten()
            .filter(|part| matches!(part.get("type").and_then(Value::as_str), Some("image_url" | "image")))
            .count()
    });
    let media = u64::try_from(media.saturating_mul(TOKENS_PER_MEDIA_PART)).unwrap_or(u64::MAX);
    u32::try_from(text.saturating_add(media)).unwrap_or(u32::MAX)
}

/// The capabilities the body uses, which the model serving it must have:
/// tools (`tools`, `functions`), JSON mode (`response_format` of type
/// `json_object` or `json_schema`), vision (an image content part), and
/// streaming (`stream: true`).
fn used_capabilities(body: &Map<String, Value>, stream: bool) -> Vec<Capability> {
    let mut used = Vec::new();
    let listed = |field: &str| body.get(field).and_then(Value::as_array).is_some_and(|list| !list.is_empty());
    if listed("tools") || listed("functions") {
        used.push(Capability::Tools);
    }
    let format = body.get("response_format").and_then(|f| f.get("type")).and_then(Value::as_str);
    if matches!(format, Some("json_object" | "json_schema")) {
        used.push(Capability::JsonMode);
    }
    let image =
        body.get("messages").and_then(Value::as_array).is_some_and(|messages| {
            messages.iter().filter_map(|m| m.get("content").and_then(Value::as_array)).flatten().any(|part| {
                matches!(part.get("type").and_then(Value::as_str), Some("image_url" | "image" | "input_image"))
            })
        });
    if image {
        used.push(Capability::Vision);
    }
    if stream {
        used.push(Capability::Streaming);
    }
    used
}

fn content_chars(content: Option<&Value>) -> usize {
    match content {
        Some(Value::String(s)) => s.len(),
        // Content parts: count the text ones.
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).map(str::len).sum()
        }
        _ => 0,
    }
}

/// Output tokens estimated from the characters received (for a stream cut
/// before the provider reported usage).
pub(crate) fn estimate_output(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

/// The body as a JSON object and the `model` it names.
fn object_and_model(bytes: &[u8]) -> Result<(Map<String, Value>, String), ApiError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid("invalid_json", format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(body) = value else {
        return Err(ApiError::invalid("invalid_json", "the request body must be a JSON object"));
    };
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
        Some(Value::String(_)) | None => {
            return Err(ApiError::invalid("missing_model", "model: required (a model id, a route name, or \"auto\")"));
        }
        Some(_) => return Err(ApiError::invalid("invalid_model", "model: must be a string")),
    };
    Ok((body, model))
}

/// `stream`: absent, null, true or false.
fn stream_of(body: &Map<String, Value>) -> Result<bool, ApiError> {
    match body.get("stream") {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid("invalid_stream", "stream: must be true or false")),
    }
}

/// A count field such as `n`: absent or null is 1, else a whole number >= 1.
fn count_of(body: &Map<String, Value>, field: &str) -> Result<u32, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(1),
        Some(v) => v.as_u64().and_then(|n| u32::try_from(n).ok()).filter(|n| *n >= 1).ok_or_else(|| {
            ApiError::invalid("invalid_n", format!("{field}: must be a whole number of answers, at least 1"))
        }),
    }
}

/// The larger of the output caps the body sends (`fields`), 0 for none.
fn max_output_of(body: &Map<String, Value>, fields: &[&str]) -> Result<u32, ApiError> {
    // Both fields may be sent; an upstream may honour either: the larger caps.
    let mut max_output = 0;
    for field in fields {
        match body.get(*field) {
            None | Some(Value::Null) => {}
            Some(v) => {
                let cap = v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
                    ApiError::invalid("invalid_max_tokens", format!("{field}: must be a whole number of tokens"))
                })?;
                max_output = max_output.max(cap.max(1));
            }
        }
    }
    Ok(max_output)
}

/// What the gateway measured of a request's body, before the extension.
struct Measured {
    op: Op,
    model: String,
    stream: bool,
    prompt_tokens: u32,
    /// The cap on each answer, 0 for none.
    max_output: u32,
    /// Answers asked for, all prompts together.
    n: u32,
    /// Capabilities the body uses.
    used: Vec<Capability>,
    /// The body's cost cannot be measured ([`Requirements::unmeasured`]).
    unmeasured: bool,
}

/// The request: the `modelfleet` extension taken out of `body` and read as
/// requirements, which the gateway's own counts then bound.
fn with_requirements(mut body: Map<String, Value>, measured: Measured) -> Result<ChatRequest, ApiError> {
    let Measured { op, model, stream, prompt_tokens, max_output, n, used, unmeasured } = measured;
    let include_usage = body.get("stream_options").and_then(|o| o.get("include_usage")) == Some(&Value::Bool(true));
    let mut extension = body.remove("modelfleet");
    // `modelfleet.cache = false`: this request neither reads nor fills the
    // response cache. Not a requirement: alone, it extends nothing.
    let mut use_cache = true;
    if let Some(Value::Object(fields)) = &mut extension
        && let Some(cache) = fields.remove("cache")
    {
        use_cache = cache
            .as_bool()
            .ok_or_else(|| ApiError::invalid("invalid_requirements", "modelfleet: cache must be true or false"))?;
        if fields.is_empty() {
            extension = None;
        }
    }
    let extended = extension.is_some();
    let mut requirements = match extension {
        None | Some(Value::Null) => Requirements::default(),
        Some(v @ Value::Object(_)) => serde_json::from_value::<Requirements>(v)
            .map_err(|e| ApiError::invalid("invalid_requirements", format!("modelfleet: {e}")))?,
        Some(_) => return Err(ApiError::invalid("invalid_requirements", "modelfleet: must be an object")),
    };
    requirements.check().map_err(|e| ApiError::invalid("invalid_requirements", format!("modelfleet: {e}")))?;
    // The gateway's own counts bound the budget hold: a client's counts may
    // raise them, never lower them. Without `max_tokens` nothing caps the
    // answer but each model's own limit, so a client's output count cannot
    // stand in for one.
    requirements.prompt_tokens = requirements.prompt_tokens.max(prompt_tokens);
    requirements.max_output_tokens = if max_output == 0 { 0 } else { requirements.max_output_tokens.max(max_output) };
    requirements.n = requirements.n.max(n);
    requirements.unmeasured |= unmeasured;
    // What the body uses, the model must be able to do (a client cannot
    // waive it); an embeddings request asks for embeddings, and only an
    // embeddings request may.
    let embeddings = op == Op::Embeddings;
    if !embeddings && requirements.capabilities.contains(&Capability::Embeddings) {
        return Err(ApiError::invalid(
            "invalid_requirements",
            format!("modelfleet: capability \"embeddings\" is for embeddings requests, not {}", op.name()),
        ));
    }
    if !embeddings && requirements.embedding_dimensions.is_some() {
        return Err(ApiError::invalid(
            "invalid_requirements",
            format!("modelfleet: embedding_dimensions is for embeddings requests, not {}", op.name()),
        ));
    }
    for capability in used {
        if !requirements.capabilities.contains(&capability) {
            requirements.capabilities.push(capability);
        }
    }
    // The caller cannot claim memory for local models: the gateway measures it.
    requirements.available_memory_mb = None;
    Ok(ChatRequest {
        op,
        body,
        model,
        stream,
        include_usage,
        requirements,
        extended,
        cap: None,
        use_cache,
        trace: None,
    })
}

/// Parses and checks a `/v1/chat/completions` body; every refusal names the field.
pub(crate) fn parse_chat(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
    let (body, model) = object_and_model(bytes)?;
    let messages = match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => return Err(ApiError::invalid("invalid_messages", "messages: must not be empty")),
        None => return Err(ApiError::invalid("invalid_messages", "messages: required")),
        Some(_) => return Err(ApiError::invalid("invalid_messages", "messages: must be an array")),
    };
    for (i, message) in messages.iter().enumerate() {
        if !message.get("role").is_some_and(Value::is_string) {
            return Err(ApiError::invalid("invalid_messages", format!("messages[{i}].role: required, a string")));
        }
    }
    let prompt_tokens = estimate_prompt(&body);
    let stream = stream_of(&body)?;
    let n = count_of(&body, "n")?;
    let max_output = max_output_of(&body, &["max_completion_tokens", "max_tokens"])?;
    let used = used_capabilities(&body, stream);
    let unmeasured = messages
        .iter()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten()
        .any(|part| part.get("type").and_then(Value::as_str).is_some_and(|t| UNMEASURED_PARTS.contains(&t)));
    let measured = Measured { op: Op::Chat, model, stream, prompt_tokens, max_output, n, used, unmeasured };
    with_requirements(body, measured)
}

/// What a legacy completion answers when the client sends no `max_tokens`
/// (OpenAI's documented default): sent upstream explicitly, so every
/// compatible server stops there and the hold is exact.
pub(crate) const COMPLETIONS_DEFAULT_MAX_TOKENS: u32 = 16;

/// The most inputs an embeddings request may carry (OpenAI's limit).
pub(crate) const MAX_EMBEDDING_INPUTS: usize = 2_048;

/// The prompts of a `prompt` or `input` field: a string, a list of strings,
/// a list of token ids, or a list of such lists. Returns how many prompts
/// it holds; every refusal names the field and the item.
fn prompts(value: Option<&Value>, field: &str, max: usize) -> Result<usize, ApiError> {
    let code = if field == "input" { "invalid_input" } else { "invalid_prompt" };
    let bad = |what: String| ApiError::invalid(code, what);
    let token = |v: &Value| v.as_u64().is_some_and(|t| u32::try_from(t).is_ok());
    let items = match value {
        None | Some(Value::Null) => return Err(bad(format!("{field}: required"))),
        Some(Value::String(_)) => return Ok(1),
        Some(Value::Array(items)) if items.is_empty() => return Err(bad(format!("{field}: must not be empty"))),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(bad(format!(
                "{field}: must be a string, a list of strings, a list of token ids, or a list of such lists"
            )));
        }
    };
    if items.iter().all(token) {
        return Ok(1);
    }
    if items.len() > max {
        return Err(bad(format!("{field}: {} items, at most {max}", items.len())));
    }
    for (i, item) in items.iter().enumerate() {
        let ok = match item {
            Value::String(_) => true,
            Value::Array(tokens) => !tokens.is_empty() && tokens.iter().all(token),
            _ => false,
        };
        if !ok {
            return Err(bad(format!("{field}[{i}]: must be a string or a non-empty list of token ids")));
        }
    }
    Ok(items.len())
}

/// Parses and checks a `/v1/completions` body (legacy text completions):
/// `prompt` (and `suffix`) are the prompt; every prompt gets `best_of`
/// answers when that is larger than `n` (the provider bills them all).
pub(crate) fn parse_completions(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
    let (body, model) = object_and_model(bytes)?;
    let count = prompts(body.get("prompt"), "prompt", usize::MAX)?;
    if body.get("suffix").is_some_and(|s| !s.is_null() && !s.is_string()) {
        return Err(ApiError::invalid("invalid_prompt", "suffix: must be a string"));
    }
    let text: u64 = ["prompt", "suffix"].iter().filter_map(|f| body.get(*f)).map(estimate_json).sum();
    let prompt_tokens = u32::try_from(text).unwrap_or(u32::MAX);
    let stream = stream_of(&body)?;
    let n = count_of(&body, "n")?.max(count_of(&body, "best_of")?);
    let n = n.saturating_mul(u32::try_from(count).unwrap_or(u32::MAX));
    let max_output = match max_output_of(&body, &["max_tokens"])? {
        0 => COMPLETIONS_DEFAULT_MAX_TOKENS,
        cap => cap,
    };
    let used = if stream { vec![Capability::Streaming] } else { Vec::new() };
    let measured =
        Measured { op: Op::Completions, model, stream, prompt_tokens, max_output, n, used, unmeasured: false };
    let mut request = with_requirements(body, measured)?;
    if request.body.get("max_tokens").is_none_or(Value::is_null) {
        request.cap = Some(COMPLETIONS_DEFAULT_MAX_TOKENS);
    }
    Ok(request)
}

/// Parses and checks a `/v1/embeddings` body: `input` (at most
/// [`MAX_EMBEDDING_INPUTS`] items), `dimensions` a whole number when sent.
pub(crate) fn parse_embeddings(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
    let (body, model) = object_and_model(bytes)?;
    prompts(body.get("input"), "input", MAX_EMBEDDING_INPUTS)?;
    if body.get("dimensions").is_some_and(|d| !d.is_null() && d.as_u64().is_none_or(|d| d == 0)) {
        return Err(ApiError::invalid("invalid_dimensions", "dimensions: must be a whole number, at least 1"));
    }
    if body.get("stream").is_some_and(|s| !s.is_null() && *s != Value::Bool(false)) {
        return Err(ApiError::invalid("invalid_stream", "stream: embeddings are not streamed"));
    }
    let prompt_tokens = body.get("input").map_or(0, estimate_json);
    let prompt_tokens = u32::try_from(prompt_tokens).unwrap_or(u32::MAX);
    let measured = Measured {
        op: Op::Embeddings,
        model,
        stream: false,
        prompt_tokens,
        max_output: 0,
        n: 1,
        used: vec![Capability::Embeddings],
        unmeasured: false,
    };
    with_requirements(body, measured)
}

/// The fields of a Responses request the provider counts as prompt tokens.
const RESPONSES_PROMPT_FIELDS: [&str; 5] = ["input", "instructions", "tools", "text", "tool_choice"];

/// Parses a `/v1/responses` body that goes to a provider as sent
/// ([`Op::Responses`]): the prompt estimated as a chat's is, `max_output_tokens`
/// the cap. A body that refers to what the provider keeps (a
/// `previous_response_id`, a `conversation`, a stored `prompt`) or uses
/// its built-in tools (priced per call) cannot be measured. Never cached:
/// the API is stateful.
pub(crate) fn parse_responses(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
    let (body, model) = object_and_model(bytes)?;
    if body.get("background").is_some_and(|b| *b != Value::Bool(false) && !b.is_null()) {
        return Err(ApiError::invalid(
            "invalid_request",
            "background: a background response is answered, and billed, after the gateway's reply, so it could \
             not be charged: not supported",
        ));
    }
    let text: u64 = RESPONSES_PROMPT_FIELDS.iter().filter_map(|field| body.get(*field)).map(estimate_json).sum();
    let items: &[Value] = body.get("input").and_then(Value::as_array).map_or(&[], Vec::as_slice);
    let parts: Vec<&str> = items
        .iter()
        .filter_map(|item| item.get("content").and_then(Value::as_array))
        .flatten()
        .filter_map(|part| part.get("type").and_then(Value::as_str))
        .collect();
    let images = parts.iter().filter(|t| **t == "input_image").count();
    let media = u64::try_from(images.saturating_mul(TOKENS_PER_MEDIA_PART)).unwrap_or(u64::MAX);
    let prompt_tokens = u32::try_from(text.saturating_add(media)).unwrap_or(u32::MAX);
    let stream = stream_of(&body)?;
    let max_output = max_output_of(&body, &["max_output_tokens"])?;
    let tools: Vec<&str> = body
        .get("tools")
        .and_then(Value::as_array)
        .map(|tools| tools.iter().map(|t| t.get("type").and_then(Value::as_str).unwrap_or("")).collect())
        .unwrap_or_default();
    let mut used = Vec::new();
    if stream {
        used.push(Capability::Streaming);
    }
    if tools.contains(&"function") {
        used.push(Capability::Tools);
    }
    if images > 0 {
        used.push(Capability::Vision);
    }
    // What the provider keeps (a conversation, a stored prompt, a
    // referenced item), prices per call (built-in tools) or counts by
    // length (audio, files).
    let stored =
        ["previous_response_id", "conversation", "prompt"].iter().any(|f| body.get(*f).is_some_and(|v| !v.is_null()))
            || items.iter().any(|item| item.get("type").and_then(Value::as_str) == Some("item_reference"));
    let unmeasured =
        stored || tools.iter().any(|t| *t != "function") || parts.iter().any(|t| UNMEASURED_PARTS.contains(t));
    let measured = Measured { op: Op::Responses, model, stream, prompt_tokens, max_output, n: 1, used, unmeasured };
    let mut request = with_requirements(body, measured)?;
    request.use_cache = false;
    Ok(request)
}

/// A Responses API `usage` object (`input_tokens` with
/// `input_tokens_details.cached_tokens`, `output_tokens` with
/// `output_tokens_details.reasoning_tokens`) as [`Usage`]; `None` unless
/// both totals are whole numbers.
pub(crate) fn responses_usage(usage: &Value) -> Option<Usage> {
    let count = |pointer: &str| usage.pointer(pointer).and_then(Value::as_u64);
    let mut out = Usage::new(count("/input_tokens")?, count("/output_tokens")?);
    out.cached_tokens = count("/input_tokens_details/cached_tokens").unwrap_or(0);
    out.reasoning_tokens = count("/output_tokens_details/reasoning_tokens").unwrap_or(0);
    Some(out)
}

/// The usage of an embeddings answer: its `prompt_tokens` (there is no
/// output). `None` when the answer says none; `Err` when it is not a JSON
/// object with a `data` list.
pub(crate) fn embeddings_usage(bytes: &[u8]) -> Result<Option<Usage>, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if !value.get("data").is_some_and(Value::is_array) {
        return Err("the answer has no \"data\" list".to_owned());
    }
    Ok(value.pointer("/usage/prompt_tokens").and_then(Value::as_u64).map(|prompt| Usage::new(prompt, 0)))
}

/// The body sent upstream: the client's, with `model` replaced and, for
/// streams, usage asked for (the gateway needs it to price the answer).
pub(crate) struct Outgoing<'a> {
    pub(crate) body: &'a Map<String, Value>,
    pub(crate) model: &'a str,
    pub(crate) stream: bool,
    /// `max_tokens` to add (the client sent no cap).
    pub(crate) cap: Option<u32>,
    /// The provider accepts `stream_options.include_usage` (its setting):
    /// a stream asks for it. Else the client's `stream_options` go as sent.
    pub(crate) include_usage: bool,
    /// The field `cap` goes in (`max_tokens`; the Responses API's
    /// `max_output_tokens`).
    pub(crate) cap_field: &'static str,
}

impl Serialize for Outgoing<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.body.len() + 2))?;
        map.serialize_entry("model", self.model)?;
        if let Some(cap) = self.cap {
            map.serialize_entry(self.cap_field, &cap)?;
        }
        for (key, value) in self.body {
            match key.as_str() {
                "model" => {}
                // The cap the hold assumed replaces the client's (a `null`
                // there would lift it: a key twice, the last one wins).
                field if self.cap.is_some() && field == self.cap_field => {}
                "stream_options" if self.stream && self.include_usage => {}
                _ => map.serialize_entry(key, value)?,
            }
        }
        if self.stream && self.include_usage {
            let mut options = self.body.get("stream_options").and_then(Value::as_object).cloned().unwrap_or_default();
            options.insert("include_usage".to_owned(), Value::Bool(true));
            map.serialize_entry("stream_options", &options)?;
        }
        map.end()
    }
}

/// `usage` of a completion or chunk, if it carries one in OpenAI's shape:
/// `prompt_tokens` and `completion_tokens` both present. Anything else
/// (another provider's shape, a field missing) is no usage: the call is
/// charged its hold rather than \$0.
pub(crate) fn usage_of(value: &Value) -> Option<Usage> {
    usage_in(value.get("usage")?)
}

/// A `usage` object in OpenAI's shape, read as [`usage_of`] does (the
/// translators' one reading, split counts included).
fn usage_in(usage: &Value) -> Option<Usage> {
    modelfleet_translate::usage_of(usage)
}

/// Only what the gateway reads of a completion: its `usage` value; every
/// other field is skipped without building a tree. Only an object is one.
struct UsageOnly(Option<Value>);

impl<'de> serde::Deserialize<'de> for UsageOnly {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = UsageOnly;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UsageOnly, A::Error> {
                let mut usage = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "usage" {
                        usage = Some(map.next_value::<Value>()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(UsageOnly(usage))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// The usage of a completion body, read as a stream's is ([`usage_of`]):
/// `None` unless it has OpenAI's `prompt_tokens` and `completion_tokens`
/// as whole numbers (any other shape is usage unknown, never an error);
/// `Err` when the body is not a JSON object in valid UTF-8.
pub(crate) fn completion_usage(bytes: &[u8]) -> Result<Option<Usage>, String> {
    // Skipped strings are not checked by the parser: the whole body is.
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let UsageOnly(usage) = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(usage.as_ref().and_then(usage_in))
}

/// The text a chunk adds, in bytes: `choices[].delta` content, reasoning,
/// refusal and tool-call arguments (all of them are billed output), or a
/// legacy completion's `choices[].text`.
pub(crate) fn delta_chars(value: &Value) -> usize {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map_or(0, str::len);
    let one = |choice: &Value| {
        let Some(delta) = choice.get("delta") else { return 0 };
        let calls = delta.get("tool_calls").and_then(Value::as_array).map_or(0, |calls| {
            calls.iter().map(|c| text(c.pointer("/function/arguments")) + text(c.pointer("/function/name"))).sum()
        });
        content_chars(delta.get("content")) + text(delta.get("reasoning_content")) + text(delta.get("refusal")) + calls
    };
    // A legacy completion's chunk carries `choices[].text`.
    let one = |choice: &Value| one(choice) + text(choice.get("text"));
    value.get("choices").and_then(Value::as_array).map_or(0, |choices| choices.iter().map(one).sum())
}

/// The text a Responses API stream event adds, in bytes: the `delta` of
/// its text, refusal, reasoning and function-argument deltas.
pub(crate) fn native_delta_chars(value: &Value) -> usize {
    let delta = matches!(
        value.get("type").and_then(Value::as_str),
        Some(
            "response.output_text.delta"
                | "response.refusal.delta"
                | "response.function_call_arguments.delta"
                | "response.reasoning_text.delta"
                | "response.reasoning_summary_text.delta"
        )
    );
    if delta { value.get("delta").and_then(Value::as_str).map_or(0, str::len) } else { 0 }
}

/// Splits a byte stream into SSE events, yielding each event's `data`.
///
/// Linear in the stream's length: events are read from an offset into the
/// buffer (the consumed part is dropped once per `push`, not once per
/// event), and the search for an event's end resumes where the last one
/// stopped (less the two bytes a separator could straddle), so an event
/// arriving a byte at a time is not rescanned from its start on every byte.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buffer: Vec<u8>,
    /// Where the unread part of `buffer` starts.
    start: usize,
    /// Bytes after `start` already searched without finding an event's end.
    scanned: usize,
}

impl SseParser {
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes buffered that are not yet a complete event.
    pub(crate) fn pending(&self) -> usize {
        self.buffer.len() - self.start
    }

    /// The next complete event's data (its `data:` lines joined), if one is buffered.
    pub(crate) fn next_event(&mut self) -> Option<String> {
        loop {
            let from = self.start + self.scanned.saturating_sub(2);
            let Some((end, sep)) = find_boundary(&self.buffer[from..]).map(|(end, sep)| (from + end, sep)) else {
                self.scanned = self.buffer.len() - self.start;
                return None;
            };
            let block = &self.buffer[self.start..end];
            self.start = end + sep;
            self.scanned = 0;
            let text = String::from_utf8_lossy(block);
            let mut data: Option<String> = None;
            for line in text.lines() {
                let line = line.strip_suffix('\r').unwrap_or(line);
                if let Some(rest) = line.strip_prefix("data:") {
                    let rest = rest.strip_prefix(' ').unwrap_or(rest);
                    match &mut data {
                        Some(d) => {
                            d.push('\n');
                            d.push_str(rest);
                        }
                        None => data = Some(rest.to_owned()),
                    }
                }
            }
            // Comments and events without data (keep-alives) are skipped.
            if let Some(data) = data {
                return Some(data);
            }
        }
    }
}

/// Where the first blank line is: (end of the event, separator length).
fn find_boundary(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' && buf[i + 1] == b'\n' {
            return Some((i, 2));
        }
        if buf[i] == b'\n' && buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
            return Some((i, 3));
        }
        if buf[i] == b'\r' && buf[i + 1] == b'\r' {
            return Some((i, 2));
        }
        i += 1;
    }
    None
}

/// One SSE event as sent to the client.
pub(crate) fn sse(data: &str) -> bytes::Bytes {
    sse_named(None, data)
}

/// One SSE event: `event: NAME` when named, then `data` (a line of `data:`
/// for each of its lines, so an event the upstream split over several
/// lines stays one event).
pub(crate) fn sse_named(name: Option<&str>, data: &str) -> bytes::Bytes {
    let mut out = String::with_capacity(data.len() + name.map_or(0, str::len) + 16);
    if let Some(name) = name {
        out.push_str("event: ");
        out.push_str(name);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    bytes::Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn completions_and_embeddings_are_held_for_everything_they_ask() {
        let req = |body: &str| parse_completions(body.as_bytes()).unwrap();
        let one = req(r#"{"model":"m","prompt":"Say hi"}"#);
        assert_eq!((one.requirements.n, one.requirements.max_output_tokens, one.cap), (1, 16, Some(16)));
        // Every prompt gets max(n, best_of) answers, each up to max_tokens.
        let many = req(r#"{"model":"m","prompt":["a","b","c"],"n":2,"best_of":5,"max_tokens":40}"#);
        assert_eq!((many.requirements.n, many.requirements.max_output_tokens, many.cap), (15, 40, None));
        let tokens = req(r#"{"model":"m","prompt":[1,2,3,4]}"#);
        assert_eq!(tokens.requirements.n, 1, "a list of token ids is one prompt");
        let batch = req(r#"{"model":"m","prompt":[[1,2],[3]],"suffix":"end"}"#);
        assert_eq!(batch.requirements.n, 2);
        assert!(batch.requirements.prompt_tokens >= 4, "the suffix is prompt too");
        for (body, message) in [
            (r#"{"model":"m"}"#, "prompt: required"),
            (r#"{"model":"m","prompt":[]}"#, "prompt: must not be empty"),
            (r#"{"model":"m","prompt":["a",[]]}"#, "prompt[1]: must be a string or a non-empty list of token ids"),
            (r#"{"model":"m","prompt":"a","best_of":0}"#, "best_of: must be a whole number of answers, at least 1"),
            (r#"{"model":"m","prompt":"a","suffix":3}"#, "suffix: must be a string"),
        ] {
            assert_eq!(parse_completions(body.as_bytes()).unwrap_err().message, message, "{body}");
        }

        let embed = |body: &str| parse_embeddings(body.as_bytes());
        let text = "the passage to index ".repeat(50);
        let long = embed(&format!(r#"{{"model":"m","input":["{text}","{text}"]}}"#)).unwrap().requirements;
        let short = embed(&format!(r#"{{"model":"m","input":"{text}"}}"#)).unwrap().requirements;
        assert!(long.prompt_tokens >= 2 * short.prompt_tokens - 2, "every input is held: {long:?} {short:?}");
        assert_eq!((long.capabilities.as_slice(), long.max_output_tokens), (&[Capability::Embeddings][..], 0));
        let too_many = format!(r#"{{"model":"m","input":[{}]}}"#, vec!["\"a\""; MAX_EMBEDDING_INPUTS + 1].join(","));
        assert_eq!(embed(&too_many).unwrap_err().message, "input: 2049 items, at most 2048");
        assert_eq!(
            embed(r#"{"model":"m","input":"a","stream":true}"#).unwrap_err().message,
            "stream: embeddings are not streamed"
        );
        assert_eq!(embed(r#"{"model":"m","input":"a","dimensions":0}"#).unwrap_err().code, "invalid_dimensions");
        // A chat request cannot ask for embeddings.
        let err = parse_chat(br#"{"model":"m","modelfleet":{"capabilities":["embeddings"]},"messages":[{"role":"user","content":"hi"}]}"#)
            .unwrap_err();
        assert_eq!(
            err.message,
            "modelfleet: capability \"embeddings\" is for embeddings requests, not chat completions"
        );
    }

    #[test]
    fn what_the_gateway_cannot_measure_is_marked_so() {
        let chat = |part: &str| {
            let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":[{part}]}}]}}"#);
            parse_chat(body.as_bytes()).unwrap().requirements
        };
        let image = chat(r#"{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}"#);
        assert!(!image.unmeasured, "an image is bounded");
        assert!(image.prompt_tokens >= 3_000);
        assert!(chat(r#"{"type":"input_audio","input_audio":{"data":"AAAA","format":"wav"}}"#).unmeasured);
        assert!(chat(r#"{"type":"file","file":{"file_data":"data:application/pdf;base64,AAAA"}}"#).unmeasured);
        // A client cannot waive it.
        let waived = br#"{"model":"m","modelfleet":{"unmeasured":false},"messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"f"}}]}]}"#;
        assert!(parse_chat(waived).unwrap().requirements.unmeasured);

        let responses = |extra: &str| {
            let body = format!(r#"{{"model":"m","input":"hi"{extra}}}"#);
            parse_responses(body.as_bytes()).unwrap().requirements.unmeasured
        };
        assert!(!responses(""));
        assert!(!responses(r#","tools":[{"type":"function","name":"f","parameters":{}}]"#));
        assert!(!responses(r#","store":true,"previous_response_id":null"#));
        for stored in [
            r#","previous_response_id":"resp_1""#,
            r#","conversation":"conv_1""#,
            r#","prompt":{"id":"pmpt_1"}"#,
            r#","tools":[{"type":"web_search"}]"#,
        ] {
            assert!(responses(stored), "{stored}");
        }
        let reference = br#"{"model":"m","input":[{"type":"item_reference","id":"msg_1"}]}"#;
        assert!(parse_responses(reference).unwrap().requirements.unmeasured);
        assert!(!parse_responses(reference).unwrap().use_cache, "a stateful API is never cached");
        let background = parse_responses(br#"{"model":"m","input":"hi","background":true}"#).unwrap_err();
        assert!(background.message.starts_with("background: "), "{}", background.message);
    }

    #[test]
    fn chat_requests_are_checked_field_by_field() {
        let err = |body: &str| parse_chat(body.as_bytes()).unwrap_err().message;
        assert!(err("{").starts_with("the request body is not valid JSON"));
        assert_eq!(err("[]"), "the request body must be a JSON object");
        assert!(err(r#"{"messages":[{"role":"user","content":"x"}]}"#).starts_with("model: required"));
        assert_eq!(err(r#"{"model":"auto","messages":[]}"#), "messages: must not be empty");
        assert_eq!(err(r#"{"model":"auto","messages":[{"content":"x"}]}"#), "messages[0].role: required, a string");
        assert_eq!(
            err(r#"{"model":"auto","messages":[{"role":"user"}],"stream":"yes"}"#),
            "stream: must be true or false"
        );
        assert_eq!(
            err(r#"{"model":"auto","messages":[{"role":"user"}],"max_tokens":-1}"#),
            "max_tokens: must be a whole number of tokens"
        );
        assert!(
            err(r#"{"model":"auto","messages":[{"role":"user"}],"modelfleet":{"categry":"code"}}"#)
                .starts_with("modelfleet: unknown field `categry`")
        );
    }

    #[test]
    fn the_prompt_estimate_reads_text_as_the_provider_does_and_leaves_media_to_their_rule() {
        let tokens = |body: &str| u64::from(parse_chat(body.as_bytes()).unwrap().requirements.prompt_tokens);
        let body = |content: &str| json!({"model": "auto", "messages": [{"role": "user", "content": content}]});
        // CJK: far over a quarter of the bytes (0.75 a character), and the
        // same whether the client escaped it (Python's json.dumps does) or not.
        let cjk = "模型选择与预算控制在生产环境中非常重要。".repeat(20);
        let plain = body(&cjk).to_string();
        let escaped = plain.chars().fold(String::new(), |mut out, c| {
            if c.is_ascii() {
                out.push(c);
            } else {
                let _ = std::fmt::Write::write_fmt(&mut out, format_args!("\\u{:04x}", u32::from(c)));
            }
            out
        });
        assert!(escaped.len() > plain.len() * 3 / 2, "escaped: {escaped}");
        assert!(tokens(&plain) > (cjk.len() as u64).div_ceil(4) + 20, "{}", tokens(&plain));
        assert_eq!(tokens(&escaped), tokens(&plain));
        // A long run of one letter: the quarter of the bytes is larger.
        let run = "x".repeat(4_000);
        assert!(tokens(&body(&run).to_string()) >= 1_000);
        // A 300 KB screenshot is one media part, not 300,000 tokens of text.
        let image = json!({"model": "auto", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", "iVBORw0K".repeat(40_000))}}]}]});
        let estimated = tokens(&image.to_string());
        assert!((3_000..3_100).contains(&estimated), "{estimated}");
    }

    #[test]
    fn requirements_come_from_the_extension_with_the_prompt_estimated() {
        let body = r#"{"model":"auto","max_tokens":100,"messages":[{"role":"user","content":"12345678"}],
            "modelfleet":{"category":"code","min_quality":0.5,"max_cost":"0.01"}}"#;
        let chat = parse_chat(body.as_bytes()).unwrap();
        assert!(chat.extended && !chat.body.contains_key("modelfleet"));
        // The body as received, by the conservative estimate.
        let messages: Value = serde_json::from_str(r#"[{"role":"user","content":"12345678"}]"#).unwrap();
        assert_eq!(u64::from(chat.requirements.prompt_tokens), estimate_json(&messages));
        assert_eq!(chat.requirements.max_output_tokens, 100);
        assert_eq!(chat.requirements.min_quality, Some(0.5));
        assert_eq!(chat.requirements.max_cost.map(|m| m.to_string()), Some("0.01".into()));
    }

    #[test]
    fn a_client_can_raise_the_estimates_the_hold_rests_on_but_never_lower_them() {
        let long = "x".repeat(4_000);
        let body = |extra: &str| {
            format!(r#"{{"model":"auto","messages":[{{"role":"user","content":"{long}"}}]{extra}}}"#).into_bytes()
        };
        let req = |extra: &str| parse_chat(&body(extra)).unwrap().requirements;
        let own = req("").prompt_tokens;
        let messages = json!([{"role": "user", "content": long}]);
        assert_eq!(u64::from(own), estimate_json(&messages), "the messages, by the conservative estimate");
        assert_eq!(req(r#","modelfleet":{"prompt_tokens":1}"#).prompt_tokens, own, "a lower claim is ignored");
        assert_eq!(req(r#","modelfleet":{"prompt_tokens":5000}"#).prompt_tokens, 5_000, "a higher one counts");
        assert_eq!(req("").max_output_tokens, 0, "no max_tokens: uncapped, each model's own limit holds");
        assert_eq!(req(r#","modelfleet":{"max_output_tokens":10}"#).max_output_tokens, 0, "a claim is no cap");
        assert_eq!(req(r#","max_tokens":100,"modelfleet":{"max_output_tokens":10}"#).max_output_tokens, 100);
        assert_eq!(req(r#","max_tokens":100,"modelfleet":{"max_output_tokens":300}"#).max_output_tokens, 300);
        assert_eq!(req(r#","max_completion_tokens":70"#).max_output_tokens, 70);
        // Both fields: an upstream may honour either, so the larger one.
        assert_eq!(req(r#","max_completion_tokens":1,"max_tokens":900"#).max_output_tokens, 900);
        assert_eq!(req(r#","max_completion_tokens":900,"max_tokens":1"#).max_output_tokens, 900);
        assert_eq!((req("").n, req(r#","n":3"#).n, req(r#","n":2,"modelfleet":{"n":1}"#).n), (1, 3, 2));
        let err = |extra: &str| parse_chat(&body(extra)).unwrap_err().message;
        assert_eq!(err(r#","n":0"#), "n: must be a whole number of answers, at least 1");
        assert_eq!(err(r#","n":"2""#), "n: must be a whole number of answers, at least 1");
        // Requirements no model can be judged against are refused, not
        // turned into "no model meets them".
        assert_eq!(err(r#","modelfleet":{"max_cost":"-0.5"}"#), "modelfleet: max_cost must be >= 0, got $-0.5");
        assert_eq!(err(r#","modelfleet":{"min_quality":1.5}"#), "modelfleet: min_quality must be from 0 to 1, got 1.5");
        assert_eq!(req(r#","modelfleet":{"max_cost":"0","min_quality":1}"#).min_quality, Some(1.0), "the bounds pass");
    }

    #[test]
    fn the_outgoing_body_names_the_upstream_model_and_asks_for_stream_usage() {
        let chat =
            parse_chat(br#"{"model":"auto","stream":true,"messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        let out: Value = serde_json::to_value(Outgoing {
            body: &chat.body,
            model: "tiny",
            stream: true,
            cap: None,
            include_usage: true,
            cap_field: "max_tokens",
        })
        .unwrap();
        assert_eq!(out["model"], "tiny");
        assert_eq!(out.get("max_tokens"), None);
        let capped: Value = serde_json::to_value(Outgoing {
            body: &chat.body,
            model: "tiny",
            stream: true,
            cap: Some(10),
            include_usage: true,
            cap_field: "max_tokens",
        })
        .unwrap();
        assert_eq!(capped["max_tokens"], 10, "the cap a hold assumed goes upstream");
        // The client's null cap does not follow it (JSON keeps the last of a key twice).
        let completions = parse_completions(br#"{"model":"m","prompt":"hi","max_tokens":null}"#).unwrap();
        assert_eq!(completions.cap, Some(COMPLETIONS_DEFAULT_MAX_TOKENS));
        let text = String::from_utf8(json_bytes(&Outgoing {
            body: &completions.body,
            model: "m",
            stream: false,
            cap: completions.cap,
            include_usage: false,
            cap_field: "max_tokens",
        }))
        .unwrap();
        assert_eq!(text.matches("max_tokens").count(), 1, "{text}");
        assert!(text.contains(r#""max_tokens":16"#), "{text}");
        assert_eq!(out["stream_options"]["include_usage"], true);
        assert_eq!(out["messages"][0]["content"], "hi");
    }

    #[test]
    fn modelfleet_cache_false_bypasses_the_cache_and_alone_extends_nothing() {
        let chat = |extra: &str| {
            parse_chat(format!(r#"{{"model":"auto","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#).as_bytes())
        };
        let plain = chat("").unwrap();
        assert!(plain.use_cache && !plain.extended);
        let off = chat(r#","modelfleet":{"cache":false}"#).unwrap();
        assert!(!off.use_cache && !off.extended, "cache alone is no requirement");
        let both = chat(r#","modelfleet":{"cache":false,"category":"code"}"#).unwrap();
        assert!(!both.use_cache && both.extended && !both.body.contains_key("modelfleet"));
        let err = chat(r#","modelfleet":{"cache":"no"}"#).unwrap_err();
        assert_eq!(err.message, "modelfleet: cache must be true or false");
    }

    #[test]
    fn a_provider_without_include_usage_gets_the_clients_stream_options_as_sent() {
        let out = |body: &[u8], include_usage: bool| -> Value {
            let chat = parse_chat(body).unwrap();
            serde_json::to_value(Outgoing {
                body: &chat.body,
                model: "m",
                stream: true,
                cap: None,
                include_usage,
                cap_field: "max_tokens",
            })
            .unwrap()
        };
        let plain = br#"{"model":"auto","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(out(plain, false).get("stream_options"), None, "not added for a provider that refuses it");
        assert_eq!(out(plain, true)["stream_options"]["include_usage"], true);
        let asked = br#"{"model":"auto","stream":true,"stream_options":{"include_usage":false,"x":1},"messages":[{"role":"user","content":"hi"}]}"#;
        assert_eq!(out(asked, false)["stream_options"], json!({"include_usage": false, "x": 1}), "passed as sent");
        assert_eq!(out(asked, true)["stream_options"], json!({"include_usage": true, "x": 1}), "forced, rest kept");
    }

    #[test]
    fn the_prompt_estimate_counts_tools_tool_calls_and_images() {
        let tokens = |body: Value| parse_chat(&serde_json::to_vec(&body).unwrap()).unwrap().requirements.prompt_tokens;
        let plain = json!({"model": "auto", "messages": [{"role": "user", "content": "x"}]});
        let base = tokens(plain.clone());
        let mut tooled = plain.clone();
        tooled["tools"] =
            json!([{"type": "function", "function": {"name": "f", "parameters": {"d": "y".repeat(4_000)}}}]);
        let long = |c: &str| u32::try_from(modelfleet_translate::estimate_tokens(&c.repeat(4_000))).unwrap();
        assert!(tokens(tooled) >= base + long("y"), "a tools array is prompt too");
        let call = json!({"model": "auto", "messages": [
            {"role": "assistant", "tool_calls": [{"id": "1", "type": "function",
                "function": {"name": "f", "arguments": "z".repeat(4_000)}}]},
            {"role": "tool", "tool_call_id": "1", "content": "ok"}]});
        assert!(tokens(call) >= long("z"), "tool-call arguments are prompt too");
        let image = json!({"model": "auto", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "https://e.x/a.png"}}]}]});
        assert!(tokens(image) >= 3_000, "an image counts as its largest size");
    }

    #[test]
    fn every_kind_of_streamed_output_is_counted() {
        let chunk = json!({"choices": [{"delta": {
            "content": "abcd",
            "reasoning_content": "ef",
            "refusal": "g",
            "tool_calls": [{"function": {"name": "hi", "arguments": "{\"x\":1}"}}],
        }}]});
        assert_eq!(delta_chars(&chunk), 4 + 2 + 1 + 2 + 7);
        assert_eq!(delta_chars(&json!({"choices": []})), 0);
    }

    #[test]
    fn sse_events_split_on_blank_lines_whatever_the_chunking() {
        // Every separator, so each can straddle a chunk's end (the resumed
        // search backs up over the two bytes one could start in).
        let text = "data: {\"a\":1}\n\n: keep-alive\n\ndata: b\n\r\ndata: c\r\rdata: [DONE]\r\n\r\n";
        for split in 1..text.len() {
            let mut parser = SseParser::default();
            let mut events = Vec::new();
            for piece in text.as_bytes().chunks(split) {
                parser.push(piece);
                while let Some(e) = parser.next_event() {
                    events.push(e);
                }
            }
            assert_eq!(events, ["{\"a\":1}", "b", "c", "[DONE]"], "chunks of {split}");
            assert_eq!(parser.pending(), 0, "chunks of {split}");
        }
        // An unfinished event is pending, whatever its size so far.
        let mut parser = SseParser::default();
        for _ in 0..1_000 {
            parser.push(b"data: xxxxxxxxxx");
            assert_eq!(parser.next_event(), None);
        }
        assert_eq!(parser.pending(), 16_000);
        parser.push(b"\n\n");
        assert_eq!(parser.next_event().map(|e| e.len()), Some(15_994));
        assert_eq!(parser.pending(), 0);
        // Many events in one chunk: each read from the offset, none moved.
        let chunk: Vec<u8> = (0..100_000).flat_map(|i| format!("data: {i}\n\n").into_bytes()).collect();
        parser.push(&chunk);
        let mut count = 0;
        while let Some(event) = parser.next_event() {
            assert_eq!(event, count.to_string());
            count += 1;
        }
        assert_eq!((count, parser.pending()), (100_000, 0));
    }

    #[test]
    fn usage_is_read_from_completions_and_chunks() {
        let body = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":2}}}"#;
        let usage = completion_usage(body).unwrap().unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens, usage.cached_tokens), (7, 3, 2));
        assert_eq!(usage_of(&serde_json::from_slice(body).unwrap()), Some(usage));
        assert!(completion_usage(b"not json").is_err());
        assert_eq!(completion_usage(b"{}").unwrap(), None);
        // Another provider's shape, or a field missing: unknown, never $0.
        let anthropic = br#"{"usage":{"input_tokens":7,"output_tokens":3}}"#;
        assert_eq!(completion_usage(anthropic).unwrap(), None);
        assert_eq!(usage_of(&serde_json::from_slice(anthropic).unwrap()), None);
        let half = br#"{"usage":{"prompt_tokens":7}}"#;
        assert_eq!(completion_usage(half).unwrap(), None);
        assert_eq!(usage_of(&serde_json::from_slice(half).unwrap()), None);
    }
}
