//! What the mock is told: how each model answers ([`Behavior`]), the
//! failure it injects ([`Fault`]), the rate limits it reports
//! ([`RateLimits`]) and the API keys it accepts ([`KeyPolicy`]); and
//! [`parse_fault`], the fault syntax of the `mock-upstream` binary.
//!
//! Nothing here knows a wire format: each route answers a fault in its
//! provider's shape (the crate docs hold the table).

use std::time::Duration;

/// A failure the mock injects. The routes answer it in their provider's
/// shape (the crate docs hold the table); the transport-level faults
/// (hang, slow headers, drip, reset, cut) are the same everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 500 with the provider's error body (OpenAI `server_error`,
    /// Anthropic `api_error`, Gemini `INTERNAL`).
    ServerError,
    /// HTTP 429 (Anthropic `rate_limit_error`, Gemini `RESOURCE_EXHAUSTED`)
    /// with `retry-after` (Gemini: a `RetryInfo` detail in the body, as
    /// Google sends no header).
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
    /// An upstream that never finishes. Streaming: the stream's opening
    /// events, then a content event every `interval` without end (no
    /// final event, whatever `max_tokens` says). Otherwise: the normal JSON
    /// body, one byte every `interval`. Either way the body stops (and is
    /// dropped) when the client disconnects.
    SlowDrip {
        /// The wait before each event (streaming) or byte.
        interval: Duration,
    },
    /// A stream sends this many content events, then an error event in the
    /// provider's shape (OpenAI: `data: {"error": {…, "type":
    /// "server_error"}}`; Anthropic: `event: error` with an
    /// `overloaded_error`; Gemini: a `data:` error object; Responses API:
    /// `event: error`) and ends cleanly, without its final events (a
    /// non-streaming call gets a 500).
    MidStreamError(u32),
    /// The connection is dropped without an answer.
    Reset,
    /// A stream sends this many content events, then the connection drops
    /// (a non-streaming call is reset).
    CutAfter(u32),
    /// HTTP 400: OpenAI's `context_length_exceeded`, Anthropic's "prompt
    /// is too long", Gemini's `INVALID_ARGUMENT` token-count message.
    ContextWindow,
    /// HTTP 400 `invalid_request_error` (Gemini `INVALID_ARGUMENT`): must
    /// not be retried.
    BadRequest,
    /// The answer to a wrong key: 401 (Gemini: its 400 `API_KEY_INVALID`).
    Unauthorized,
    /// A 200 whose body (or, streaming, whose first event) is this many
    /// bytes: a hostile or broken upstream the gateway must not buffer.
    Huge(usize),
    /// The provider is overloaded: OpenAI's 503, Anthropic's 529
    /// `overloaded_error`, Gemini's 503 `UNAVAILABLE`.
    Overloaded,
    /// The provider's safety filter refuses the prompt. Gemini: a 200 with
    /// `promptFeedback.blockReason: "SAFETY"` and no candidates; Anthropic:
    /// a 200 with `stop_reason: "refusal"` and no content; OpenAI-shaped
    /// routes: Azure's 400 `content_filter`.
    PromptBlocked,
    /// The provider's safety filter stops the answer: a 200 with no text
    /// whose finish says so (OpenAI `content_filter`, Anthropic `refusal`,
    /// Gemini a candidate with `finishReason: "SAFETY"`, Responses API
    /// `incomplete` for `content_filter`).
    AnswerFiltered,
}

/// How one model (one Azure deployment) answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Behavior {
    /// Wait before answering (before the first event when streaming).
    pub latency: Duration,
    /// Wait between stream events.
    pub chunk_interval: Duration,
    /// Completion tokens reported in `usage` per answer (times the request's `n`).
    pub completion_tokens: u32,
    /// Content events in a stream.
    pub chunks: u32,
    /// Prompt plus `max_tokens` beyond this gets a context-window 400.
    pub context_window: Option<u32>,
    /// The fault injected, if any.
    pub fault: Option<Fault>,
    /// Share of calls that get the fault (0..=1), after `fail_next` ran out.
    pub fault_rate: f64,
    /// Calls left that get the fault for sure.
    pub fail_next: u32,
    /// Prompt tokens reported as read from the provider's cache (OpenAI's
    /// `cached_tokens`, Anthropic's `cache_read_input_tokens`, Gemini's
    /// `cachedContentTokenCount`).
    pub cached_tokens: u32,
    /// Answer `completion_tokens` whatever `max_tokens` says (a provider
    /// that ignores the cap); by default the cap is honoured.
    pub ignore_max_tokens: bool,
    /// Rate-limit headers sent with every answer (errors included), if any.
    pub rate_limits: Option<RateLimits>,
    /// Answer with a call of a declared tool (the one the request forces,
    /// else the first) when the request declares tools and does not forbid
    /// calling them; the arguments fill the tool's JSON schema. Off by
    /// default: the answer is text.
    pub call_tools: bool,
    /// Reasoning tokens spent besides the answer, reported when not zero:
    /// OpenAI's `completion_tokens_details.reasoning_tokens` (counted in
    /// `completion_tokens`), Gemini's `thoughtsTokenCount`, counted in
    /// Anthropic's `output_tokens`.
    pub reasoning_tokens: u32,
    /// Prompt tokens reported as written to the provider's cache
    /// (Anthropic's `cache_creation_input_tokens`).
    pub cache_write_tokens: u32,
    /// The length of embedding vectors; a request's `dimensions`
    /// (`outputDimensionality`) may ask for fewer, not more.
    pub embedding_dimensions: u32,
}

impl Default for Behavior {
    /// Healthy and instant: 12 completion tokens in 4 chunks, text
    /// answers, 1536-long embeddings.
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
            call_tools: false,
            reasoning_tokens: 0,
            cache_write_tokens: 0,
            embedding_dimensions: 1536,
        }
    }
}

/// What a model's answers say of its provider's request rate limit, in the
/// provider's headers: OpenAI's and Azure's
/// `x-ratelimit-{limit,remaining,reset}-requests` (the reset written in
/// milliseconds, e.g. `1500ms`), Anthropic's
/// `anthropic-ratelimit-requests-{limit,remaining,reset}` (the reset an
/// RFC 3339 time). Gemini sends none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Requests allowed per period.
    pub limit_requests: u64,
    /// Requests left in the period.
    pub remaining_requests: u64,
    /// When the period resets.
    pub reset_requests: Duration,
}

/// The API keys the mock accepts, on every route, in the provider's key
/// header (`Authorization: Bearer`, `x-api-key`, `x-goog-api-key` or
/// `?key=`, `api-key`). The default accepts any key, or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Keys answered normally. Empty: any key not listed below, or none,
    /// is.
    pub accepted: Vec<String>,
    /// Known keys whose every call is rate limited: the provider's 429, as
    /// [`Fault::RateLimited`] answers it, whatever the model.
    pub rate_limited: Vec<String>,
    /// The `retry-after` of those 429s, seconds.
    pub retry_after_secs: u64,
    /// Revoked keys: every call gets the provider's answer to a bad key
    /// (401; Gemini's 400 `API_KEY_INVALID` "API key expired").
    pub revoked: Vec<String>,
}

impl Default for KeyPolicy {
    /// Any key, or none; a rate-limited key would be told to wait 1 s.
    fn default() -> Self {
        KeyPolicy { accepted: Vec::new(), rate_limited: Vec::new(), retry_after_secs: 1, revoked: Vec::new() }
    }
}

/// Why a call's key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyProblem {
    /// Keys are required and none came.
    Missing,
    /// Not an accepted key.
    Wrong,
    /// A revoked key.
    Revoked,
    /// A rate-limited key.
    RateLimited,
}

impl KeyPolicy {
    /// Whether a call presenting `key` passes.
    pub(crate) fn admit(&self, key: Option<&str>) -> Result<(), KeyProblem> {
        let listed = |list: &[String], key: &str| list.iter().any(|k| k == key);
        if let Some(key) = key {
            if listed(&self.revoked, key) {
                return Err(KeyProblem::Revoked);
            }
            if listed(&self.rate_limited, key) {
                return Err(KeyProblem::RateLimited);
            }
        }
        if self.accepted.is_empty() {
            return Ok(());
        }
        match key {
            None => Err(KeyProblem::Missing),
            Some(key) if listed(&self.accepted, key) => Ok(()),
            Some(_) => Err(KeyProblem::Wrong),
        }
    }
}

/// Parses a fault spec as the binary takes it: `500`, `429:SECS`, `hang:MS`,
/// `slow_headers:MS`, `drip:MS`, `reset`, `cut:N`, `midstream_error:N`,
/// `context`, `400`, `401`, `huge:BYTES`, `overloaded`, `blocked`,
/// `filtered`.
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
        "overloaded" => Fault::Overloaded,
        "blocked" => Fault::PromptBlocked,
        "filtered" => Fault::AnswerFiltered,
        other => {
            return Err(format!(
                "unknown fault {other:?}: expected 500, 429[:secs], hang:ms, slow_headers:ms, drip:ms, reset, cut:n, \
                 midstream_error:n, context, 400, 401, huge:bytes, overloaded, blocked or filtered"
            ));
        }
    })
}
