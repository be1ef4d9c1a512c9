//! OpenAI's legacy completions: `POST /v1/completions` (and Azure's
//! deployment route, through the same endpoint). The `prompt` is a string,
//! a list of strings, a list of token ids or a list of those; the answer
//! has one `text_completion` choice per prompt and `n`, streamed as
//! `data:` chunks ending in `[DONE]`.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, Uri},
    response::Response,
};
use serde_json::{Value, json};

use crate::{
    azure,
    behavior::{Behavior, RateLimits},
    openai::{self, CREATED, Flavor},
    serve::{self, Ask, Call, Endpoint, Failure, Finish, Refused, Reply, serve},
    server::{Api, Shared},
    transport::{Script, sse},
};

/// The most choices one request may ask for (prompts times `n`).
const MAX_CHOICES: usize = 128;

/// `max_tokens` when the request sets none, as OpenAI's legacy API does.
const DEFAULT_MAX_TOKENS: u32 = 16;

/// `POST /v1/completions`.
pub(crate) async fn openai(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    match openai::call(&shared, Api::OpenAiCompletions, uri, headers, &body) {
        Ok(call) => serve(&shared, &Completions { flavor: Flavor::OpenAi }, call).await,
        Err(refused) => *refused,
    }
}

/// The legacy completions endpoint, OpenAI's or Azure's.
pub(crate) struct Completions {
    pub(crate) flavor: Flavor,
}

/// Tokens in each prompt: a quarter of a text's characters (at least
/// one), or a token list's length. `None` when `prompt` is none of the
/// accepted shapes.
fn prompts(prompt: Option<&Value>) -> Option<Vec<u32>> {
    let text = |t: &str| serve::count(t.len().div_ceil(4).max(1));
    let tokens = |list: &[Value]| list.iter().all(Value::is_u64).then(|| serve::count(list.len()));
    match prompt {
        None => Some(vec![1]),
        Some(Value::String(t)) => Some(vec![text(t)]),
        Some(Value::Array(list)) if list.is_empty() => None,
        Some(Value::Array(list)) if list.iter().all(Value::is_u64) => tokens(list).map(|n| vec![n]),
        Some(Value::Array(list)) => list
            .iter()
            .map(|p| match p {
                Value::String(t) => Some(text(t)),
                Value::Array(ids) if !ids.is_empty() => tokens(ids),
                _ => None,
            })
            .collect(),
        Some(_) => None,
    }
}

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop | Finish::ToolUse => "stop",
        Finish::Length => "length",
        Finish::Filtered | Finish::Blocked => "content_filter",
    }
}

fn choice(text: &str, index: u32, finish: Option<&str>) -> Value {
    json!({"text": text, "index": index, "logprobs": null, "finish_reason": finish})
}

impl Endpoint for Completions {
    fn read(&self, call: &Call, _: &Behavior) -> Result<Ask, Refused> {
        if self.flavor == Flavor::Azure {
            azure::require_version(call)?;
        }
        let request = &call.request;
        let Some(prompts) = prompts(request.get("prompt")) else {
            return Err(Box::new(openai::invalid(
                "prompt",
                "prompt must be a string, a list of strings, a list of token ids or a list of those",
            )));
        };
        let n = request.get("n").and_then(Value::as_u64).unwrap_or(1);
        let choices = usize::try_from(n).ok().and_then(|n| n.checked_mul(prompts.len())).unwrap_or(usize::MAX);
        if n == 0 || choices > MAX_CHOICES {
            return Err(Box::new(openai::invalid("n", &format!("n times the prompts must be 1 to {MAX_CHOICES}"))));
        }
        Ok(Ask {
            prompt: prompts.iter().fold(0_u32, |sum, n| sum.saturating_add(*n)),
            wanted: serve::number(request, "/max_tokens", DEFAULT_MAX_TOKENS),
            answers: serve::count(choices),
            streaming: request.get("stream") == Some(&Value::Bool(true)),
            tool: None,
        })
    }

    fn failure(&self, failure: &Failure) -> Response {
        openai::failure(self.flavor, failure)
    }

    fn rate_limits(&self, limits: RateLimits, headers: &mut axum::http::HeaderMap) {
        openai::rate_limits(limits, headers);
    }

    fn body(&self, call: &Call, ask: &Ask, reply: &Reply) -> Value {
        let finish = finish_reason(reply.finish);
        let choices: Vec<Value> = (0..ask.answers.max(1)).map(|i| choice(&reply.text, i, Some(finish))).collect();
        let mut body = json!({
            "id": format!("cmpl-mock{}", call.serial),
            "object": "text_completion",
            "created": CREATED,
            "model": call.model,
            "choices": choices,
            "usage": openai::usage(&reply.tokens),
        });
        if self.flavor == Flavor::Azure {
            azure::annotate(&mut body, reply.finish);
        }
        body
    }

    fn script(&self, call: &Call, ask: &Ask, reply: &Reply) -> Script {
        let id = format!("cmpl-mock{}", call.serial);
        let event = |choices: Vec<Value>| {
            let chunk = json!({
                "id": id, "object": "text_completion", "created": CREATED, "model": call.model, "choices": choices,
            });
            sse(None, &chunk)
        };
        let pieces = reply.text_pieces();
        let answers = ask.answers.max(1);
        let content = (0..answers)
            .flat_map(|i| pieces.iter().map(move |piece| (i, piece)))
            .map(|(i, piece)| event(vec![choice(piece, i, None)]))
            .collect();
        let finish = finish_reason(reply.finish);
        let mut tail: Vec<Bytes> = (0..answers).map(|i| event(vec![choice("", i, Some(finish))])).collect();
        if openai::include_usage(&call.request) {
            let last = json!({
                "id": id, "object": "text_completion", "created": CREATED, "model": call.model,
                "choices": [], "usage": openai::usage(&reply.tokens),
            });
            tail.push(sse(None, &last));
        }
        tail.push(sse(None, &"[DONE]"));
        Script {
            content_type: "text/event-stream",
            head: Vec::new(),
            content,
            tail,
            filler: event(vec![choice(" lorem", 0, None)]),
            error: Box::new(|_| openai::stream_error()),
        }
    }
}

#[cfg(test)]
mod tests;
