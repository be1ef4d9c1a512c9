//! The request path every route runs, whatever its provider: record the
//! call, check its key, read the request (the provider's own 400s), draw
//! the model's fault, wait, then fail in the provider's shape or answer
//! through [`crate::transport`]. A route only says how its provider reads a
//! request and writes an answer or an error (an [`Endpoint`]); each fault
//! is decided here once.

use std::time::Duration;

use axum::{
    http::{HeaderMap, Uri},
    response::Response,
};
use serde_json::Value;

use crate::{
    behavior::{Behavior, Fault, KeyProblem, RateLimits},
    server::{Api, Recorded, Shared},
    tools::{ToolCall, ToolSpec},
    transport::{self, End, Script, Sending},
};

/// A request refused before it is served: the provider's answer, boxed
/// (a `Response` is large).
pub(crate) type Refused = Box<Response>;

/// One call as a route received it.
pub(crate) struct Call {
    pub(crate) api: Api,
    /// The model, or the Azure deployment: whose behaviour applies, and
    /// under which the call is recorded.
    pub(crate) model: String,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) request: Value,
    /// The key presented in the provider's key header, if any.
    pub(crate) key: Option<String>,
    /// What a 401 repeats of it (OpenAI shows the header's value).
    pub(crate) shown_key: String,
    /// The call's number since the mock started, for ids.
    pub(crate) serial: u64,
}

/// What the mock needs to know of a request, read the provider's way.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ask {
    /// Prompt tokens as the mock counts them.
    pub(crate) prompt: u32,
    /// The cap on completion tokens (`max_tokens` and kin); 0 for none.
    pub(crate) wanted: u32,
    /// Answers asked for (`n`, `candidateCount`; prompts times `n`).
    pub(crate) answers: u32,
    pub(crate) streaming: bool,
    /// The tool the answer would call (the behaviour decides if it does).
    pub(crate) tool: Option<ToolSpec>,
}

/// A failure answered before any content, in the provider's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    ServerError,
    Overloaded,
    RateLimited {
        retry_after_secs: u64,
    },
    /// After a hang: 504.
    Timeout,
    ContextWindow {
        window: u32,
        prompt: u32,
        needed: u32,
    },
    BadRequest,
    /// Only for endpoints whose provider answers a blocked prompt with an
    /// error.
    PromptBlocked,
    /// A bad key: missing, wrong or revoked; `shown` is what came.
    Unauthorized {
        shown: String,
        problem: KeyProblem,
    },
}

/// Why the answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// The answer is whole.
    Stop,
    /// `max_tokens` cut it.
    Length,
    /// It calls a tool.
    ToolUse,
    /// The safety filter stopped it.
    Filtered,
    /// The safety filter refused the prompt: no answer at all.
    Blocked,
}

/// The tokens an answer reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Tokens {
    /// Every prompt token, cached ones included.
    pub(crate) prompt: u32,
    pub(crate) cached: u32,
    pub(crate) cache_write: u32,
    /// Visible completion tokens of one answer.
    pub(crate) each: u32,
    /// Visible completion tokens of all answers.
    pub(crate) completion: u32,
    pub(crate) reasoning: u32,
}

/// What the model answers, before any provider formats it.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    /// The text (empty for a tool call or a filtered answer).
    pub(crate) text: String,
    pub(crate) tool_call: Option<ToolCall>,
    pub(crate) finish: Finish,
    pub(crate) tokens: Tokens,
    /// Content events in a stream.
    pub(crate) pieces: u32,
    /// [`Fault::Huge`]'s size, when the answer is that.
    pub(crate) huge: Option<usize>,
    /// The behaviour's embedding length.
    pub(crate) dimensions: u32,
}

impl Reply {
    /// The text in stream pieces.
    pub(crate) fn text_pieces(&self) -> Vec<String> {
        split(&self.text, self.pieces)
    }
}

/// How one provider reads a request and writes its answers and errors.
pub(crate) trait Endpoint: Sync {
    /// What the mock needs of the request, or the provider's 400 (404).
    fn read(&self, call: &Call, behavior: &Behavior) -> Result<Ask, Refused>;
    /// `failure` in the provider's shape.
    fn failure(&self, failure: &Failure) -> Response;
    /// Writes `limits` in the provider's headers.
    fn rate_limits(&self, limits: RateLimits, headers: &mut HeaderMap);
    /// Whether a blocked prompt is a 200 answer (rendered with
    /// [`Finish::Blocked`]) rather than [`Failure::PromptBlocked`].
    fn blocks_in_answer(&self) -> bool {
        false
    }
    /// The whole answer as one JSON body.
    fn body(&self, call: &Call, ask: &Ask, reply: &Reply) -> Value;
    /// The answer as a stream.
    fn script(&self, call: &Call, ask: &Ask, reply: &Reply) -> Script;
}

/// Runs `call` through `endpoint`: the one request path of every route.
pub(crate) async fn serve<E: Endpoint>(shared: &Shared, endpoint: &E, call: Call) -> Response {
    // As the call starts: a behaviour set while it runs applies to the next one.
    let rate_limits = shared.rate_limits(&call.model);
    let recorded = Recorded {
        api: call.api,
        uri: call.uri.to_string(),
        headers: call.headers.clone(),
        body: call.request.clone(),
    };
    shared.record(&call.model, recorded, call.key.as_deref());
    let mut response = respond(shared, endpoint, &call).await;
    if let Some(limits) = rate_limits {
        endpoint.rate_limits(limits, response.headers_mut());
    }
    response
}

async fn respond<E: Endpoint>(shared: &Shared, endpoint: &E, call: &Call) -> Response {
    let keys = shared.keys();
    if let Err(problem) = keys.admit(call.key.as_deref()) {
        let failure = match problem {
            KeyProblem::RateLimited => Failure::RateLimited { retry_after_secs: keys.retry_after_secs },
            problem => Failure::Unauthorized { shown: call.shown_key.clone(), problem },
        };
        return endpoint.failure(&failure);
    }
    let ask = match endpoint.read(call, &shared.behavior(&call.model)) {
        Ok(ask) => ask,
        Err(refused) => return *refused,
    };
    let (behavior, fault) = shared.draw(&call.model);
    if !behavior.latency.is_zero() {
        tokio::time::sleep(behavior.latency).await;
    }
    if let Some(Fault::SlowHeaders(d)) = fault {
        // Nothing is sent before the handler returns: the headers wait too.
        tokio::time::sleep(d).await;
    }
    match verdict(fault, &behavior, &ask, call, endpoint.blocks_in_answer()) {
        Verdict::Fail(failure) => return endpoint.failure(&failure),
        Verdict::Hang(d) => {
            tokio::time::sleep(d).await;
            return endpoint.failure(&Failure::Timeout);
        }
        Verdict::Reset => return transport::reset(),
        Verdict::Answer => {}
    }
    let reply = reply(call, &ask, &behavior, fault);
    if ask.streaming {
        let sending = Sending::new(&shared.sending);
        let end = match fault {
            Some(Fault::SlowDrip { interval }) => End::Endless(interval),
            Some(Fault::CutAfter(n)) => End::Cut(n),
            Some(Fault::MidStreamError(n)) => End::Error(n),
            Some(Fault::Huge(_)) => End::ContentOnly,
            _ => End::Done,
        };
        return transport::play(endpoint.script(call, &ask, &reply), end, behavior.chunk_interval, sending);
    }
    let body = endpoint.body(call, &ask, &reply);
    if let Some(Fault::SlowDrip { interval }) = fault {
        return transport::drip(body.to_string().into_bytes(), interval, Sending::new(&shared.sending));
    }
    transport::json(&body)
}

/// What a call's fault (or its prompt's length) makes of it.
enum Verdict {
    Fail(Failure),
    /// No answer for this long, then a 504.
    Hang(Duration),
    Reset,
    Answer,
}

fn verdict(fault: Option<Fault>, behavior: &Behavior, ask: &Ask, call: &Call, blocks_in_answer: bool) -> Verdict {
    let needed = ask.prompt.saturating_add(ask.wanted);
    let too_long = behavior.context_window.is_some_and(|w| needed > w);
    let context = |window| Verdict::Fail(Failure::ContextWindow { window, prompt: ask.prompt, needed });
    match fault {
        Some(Fault::ServerError) => Verdict::Fail(Failure::ServerError),
        Some(Fault::Overloaded) => Verdict::Fail(Failure::Overloaded),
        Some(Fault::RateLimited { retry_after_secs }) => Verdict::Fail(Failure::RateLimited { retry_after_secs }),
        Some(Fault::Hang(d)) => Verdict::Hang(d),
        Some(Fault::MidStreamError(_)) if !ask.streaming => Verdict::Fail(Failure::ServerError),
        Some(Fault::Reset) => Verdict::Reset,
        Some(Fault::CutAfter(_)) if !ask.streaming => Verdict::Reset,
        Some(Fault::BadRequest) => Verdict::Fail(Failure::BadRequest),
        Some(Fault::Huge(_)) => Verdict::Answer,
        Some(Fault::Unauthorized) => {
            Verdict::Fail(Failure::Unauthorized { shown: call.shown_key.clone(), problem: KeyProblem::Wrong })
        }
        Some(Fault::ContextWindow) => context(behavior.context_window.unwrap_or(4096)),
        _ if too_long => context(behavior.context_window.unwrap_or(0)),
        Some(Fault::PromptBlocked) if !blocks_in_answer => Verdict::Fail(Failure::PromptBlocked),
        Some(
            Fault::CutAfter(_)
            | Fault::SlowHeaders(_)
            | Fault::SlowDrip { .. }
            | Fault::MidStreamError(_)
            | Fault::PromptBlocked
            | Fault::AnswerFiltered,
        )
        | None => Verdict::Answer,
    }
}

/// What the model says: `completion_tokens` (at most `max_tokens`, unless
/// the behaviour ignores it) of text, or a tool call, or nothing when the
/// filter stepped in.
fn reply(call: &Call, ask: &Ask, behavior: &Behavior, fault: Option<Fault>) -> Reply {
    let each = if ask.wanted > 0 && !behavior.ignore_max_tokens {
        behavior.completion_tokens.min(ask.wanted)
    } else {
        behavior.completion_tokens
    };
    let tokens = Tokens {
        prompt: ask.prompt,
        cached: behavior.cached_tokens,
        cache_write: behavior.cache_write_tokens,
        each,
        completion: each.saturating_mul(ask.answers.max(1)),
        reasoning: behavior.reasoning_tokens,
    };
    let base = Reply {
        text: String::new(),
        tool_call: None,
        finish: Finish::Stop,
        tokens,
        pieces: behavior.chunks.max(1),
        huge: None,
        dimensions: behavior.embedding_dimensions,
    };
    let silent = Tokens { each: 0, completion: 0, ..tokens };
    match fault {
        Some(Fault::Huge(bytes)) => Reply { text: "x".repeat(bytes), pieces: 1, huge: Some(bytes), ..base },
        Some(Fault::AnswerFiltered) => Reply { finish: Finish::Filtered, tokens: silent, ..base },
        Some(Fault::PromptBlocked) => Reply { finish: Finish::Blocked, tokens: silent, ..base },
        _ if behavior.call_tools && ask.tool.is_some() => {
            let tool_call = ask.tool.as_ref().map(|tool| ToolCall::new(tool, call.serial));
            Reply { tool_call, finish: Finish::ToolUse, ..base }
        }
        _ => {
            let finish = if each < behavior.completion_tokens { Finish::Length } else { Finish::Stop };
            Reply { text: words(&call.model, each), finish, ..base }
        }
    }
}

/// The mock's answer: `n` words naming the model.
pub(crate) fn words(model: &str, n: u32) -> String {
    let mut out = format!("mock answer from {model}:");
    for i in 0..n.saturating_sub(4) {
        out.push_str(if i % 2 == 0 { " lorem" } else { " ipsum" });
    }
    out
}

/// `text` in `pieces` parts of (nearly) equal length, split between
/// characters; none when `text` is empty.
pub(crate) fn split(text: &str, pieces: u32) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let per = chars.len().div_ceil(pieces.max(1) as usize).max(1);
    chars.chunks(per).map(|c| c.iter().collect()).collect()
}

/// A count as a `u32`, saturating.
pub(crate) fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A request field as a count: a whole number, else `default`.
pub(crate) fn number(request: &Value, pointer: &str, default: u32) -> u32 {
    request.pointer(pointer).and_then(Value::as_u64).map_or(default, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// Characters of text in a content value: a string, or a list of parts
/// (blocks) whose `text` is a string.
pub(crate) fn text_chars(content: Option<&Value>) -> usize {
    match content {
        Some(Value::String(text)) => text.len(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).map(str::len).sum()
        }
        _ => 0,
    }
}

/// The value of query parameter `name`, percent-decoded.
pub(crate) fn query(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key) == name).then(|| decode(value))
    })
}

/// `text` percent-decoded (`+` is a space); a broken escape stays as it is.
pub(crate) fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (byte, hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A header's value as text.
pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_cuts_between_characters_into_the_pieces_asked() {
        let check = |text: &str, pieces: u32, expect: &[&str]| assert_eq!(split(text, pieces), expect, "{text}");
        check("abcdefgh", 4, &["ab", "cd", "ef", "gh"]);
        check("abcde", 2, &["abc", "de"]);
        check("ab", 5, &["a", "b"]);
        check("", 3, &[]);
        check("ééé", 3, &["é", "é", "é"]);
    }

    #[test]
    fn queries_are_read_percent_decoded() {
        let uri: Uri = "/x?alt=sse&key=a%2Bb+c&bad=%zz&flag".parse().unwrap();
        assert_eq!(query(&uri, "alt").as_deref(), Some("sse"));
        assert_eq!(query(&uri, "key").as_deref(), Some("a+b c"));
        assert_eq!(query(&uri, "bad").as_deref(), Some("%zz"));
        assert_eq!(query(&uri, "flag").as_deref(), Some(""));
        assert_eq!(query(&uri, "none"), None);
        assert_eq!(decode("%E2%9C%93%"), "✓%");
    }
}
