//! OpenAI's wire format: the chat-completions route (`POST
//! /v1/chat/completions`, JSON and SSE, tool calls), the error bodies and
//! rate-limit headers every OpenAI-shaped route shares (Azure's own are in
//! `azure`), and the prompt count.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::{
    azure,
    behavior::{Behavior, RateLimits},
    serve::{self, Ask, Call, Endpoint, Failure, Finish, Refused, Reply, Tokens, serve},
    server::{Api, Shared},
    tools::{self, ToolSpec},
    transport::{Script, sse},
};

/// The `created` time of every answer.
pub(crate) const CREATED: u64 = 1_700_000_000;

/// Which OpenAI-shaped API a route speaks: OpenAI's, or Azure's (its
/// deployments, `api-version`, `api-key`, and its own 401, 404 and 429).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    OpenAi,
    Azure,
}

/// Prompt tokens as the mock counts them: a quarter of the characters of
/// every message's content, plus one per message.
#[must_use]
pub fn prompt_tokens(request: &Value) -> u32 {
    let messages = request.get("messages").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let chars: usize = messages.iter().filter_map(|m| m.get("content").and_then(Value::as_str)).map(str::len).sum();
    u32::try_from(chars.div_ceil(4) + messages.len()).unwrap_or(u32::MAX)
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    match call(&shared, Api::OpenAiChat, uri, headers, &body) {
        Ok(call) => serve(&shared, &Chat { flavor: Flavor::OpenAi }, call).await,
        Err(refused) => *refused,
    }
}

/// An OpenAI call: the model from the body, the key from
/// `Authorization: Bearer`.
pub(crate) fn call(shared: &Shared, api: Api, uri: Uri, headers: HeaderMap, body: &[u8]) -> Result<Call, Refused> {
    let serial = shared.begin();
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_json",
            "the body is not JSON",
        )));
    };
    let model = request.get("model").and_then(Value::as_str).unwrap_or_default().to_owned();
    let sent = serve::header(&headers, header::AUTHORIZATION.as_str()).unwrap_or_default();
    let key = sent.strip_prefix("Bearer ").map(str::to_owned);
    let shown_key = key.clone().unwrap_or_else(|| sent.to_owned());
    Ok(Call { api, model, uri, headers, request, key, shown_key, serial })
}

/// An OpenAI error body.
pub(crate) fn error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    error_at(status, kind, Some(code), None, message)
}

/// An error naming the request field at fault (`param`), as OpenAI's do.
pub(crate) fn error_at(
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    param: Option<&str>,
    message: &str,
) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// A 400 for a request field the mock cannot read.
pub(crate) fn invalid(param: &str, message: &str) -> Response {
    error_at(StatusCode::BAD_REQUEST, "invalid_request_error", Some("invalid_value"), Some(param), message)
}

/// `failure` as OpenAI (or Azure) answers it.
pub(crate) fn failure(flavor: Flavor, failure: &Failure) -> Response {
    if flavor == Flavor::Azure
        && let Some(response) = azure::failure(failure)
    {
        return response;
    }
    match failure {
        Failure::ServerError => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "server_error", "The server had an error")
        }
        Failure::Overloaded => error_at(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            None,
            None,
            "The engine is currently overloaded, please try again later",
        ),
        Failure::RateLimited { retry_after_secs } => {
            let mut response =
                error(StatusCode::TOO_MANY_REQUESTS, "requests", "rate_limit_exceeded", "Rate limit reached");
            retry_after(&mut response, *retry_after_secs);
            response
        }
        Failure::Timeout => error(StatusCode::GATEWAY_TIMEOUT, "server_error", "timeout", "The mock hung"),
        Failure::ContextWindow { window, needed, .. } => {
            let message = format!(
                "This model's maximum context length is {window} tokens. However, you requested {needed} tokens. \
                 Please reduce the length of the messages."
            );
            error(StatusCode::BAD_REQUEST, "invalid_request_error", "context_length_exceeded", &message)
        }
        Failure::BadRequest => error_at(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("invalid_value"),
            Some("messages"),
            "messages: invalid role",
        ),
        Failure::PromptBlocked => azure::prompt_filtered(),
        // As OpenAI's does, the 401 repeats the key it was sent.
        Failure::Unauthorized { shown, .. } => error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            &format!("Incorrect API key provided: {shown}."),
        ),
    }
}

/// Sets `retry-after` (seconds).
pub(crate) fn retry_after(response: &mut Response, secs: u64) {
    if let Ok(value) = secs.to_string().parse() {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
}

/// OpenAI's (and Azure's) rate-limit headers.
pub(crate) fn rate_limits(limits: RateLimits, headers: &mut HeaderMap) {
    let values = [
        ("x-ratelimit-limit-requests", limits.limit_requests.to_string()),
        ("x-ratelimit-remaining-requests", limits.remaining_requests.to_string()),
        ("x-ratelimit-reset-requests", format!("{}ms", limits.reset_requests.as_millis())),
    ];
    for (name, value) in values {
        if let Ok(value) = header::HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

/// The `usage` object: completion tokens count the reasoning ones, which
/// are detailed when there are any.
pub(crate) fn usage(tokens: &Tokens) -> Value {
    let completion = tokens.completion.saturating_add(tokens.reasoning);
    let mut usage = json!({
        "prompt_tokens": tokens.prompt,
        "completion_tokens": completion,
        "total_tokens": tokens.prompt.saturating_add(completion),
        "prompt_tokens_details": {"cached_tokens": tokens.cached},
    });
    if tokens.reasoning > 0 {
        usage["completion_tokens_details"] = json!({"reasoning_tokens": tokens.reasoning});
    }
    usage
}

/// The error event a broken OpenAI stream ends with.
pub(crate) fn stream_error() -> Bytes {
    let error = json!({"error": {
        "message": "The server had an error while processing your request.",
        "type": "server_error",
        "param": null,
        "code": "server_error",
    }});
    sse(None, &error)
}

/// `stream_options.include_usage`.
pub(crate) fn include_usage(request: &Value) -> bool {
    request.pointer("/stream_options/include_usage") == Some(&Value::Bool(true))
}

/// The chat-completions endpoint, OpenAI's or Azure's.
pub(crate) struct Chat {
    pub(crate) flavor: Flavor,
}

/// A chat request's tool to call: `tools[].function`, `tool_choice`
/// forcing one or `"none"`.
fn chat_tool(request: &Value) -> Option<ToolSpec> {
    let declared = request.get("tools").and_then(Value::as_array)?;
    let choice = request.get("tool_choice");
    let forced = choice.and_then(|c| c.pointer("/function/name")).and_then(Value::as_str);
    let forbidden = choice.and_then(Value::as_str) == Some("none");
    let null = &Value::Null;
    let tools = declared
        .iter()
        .map(|t| (t.pointer("/function/name").unwrap_or(null), t.pointer("/function/parameters").unwrap_or(null)));
    tools::pick(tools, tools::Choice::of(forced, forbidden))
}

fn chat_finish(finish: Finish) -> &'static str {
    match finish {
        // The route has always said `stop` when `max_tokens` cut the answer.
        Finish::Stop | Finish::Length => "stop",
        Finish::ToolUse => "tool_calls",
        Finish::Filtered | Finish::Blocked => "content_filter",
    }
}

/// One `chat.completion.chunk` event's data.
fn chunk(id: &str, model: &str, delta: &Value, finish: &Value) -> Value {
    json!({
        "id": id, "object": "chat.completion.chunk", "created": CREATED, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })
}

impl Endpoint for Chat {
    fn read(&self, call: &Call, _: &Behavior) -> Result<Ask, Refused> {
        if self.flavor == Flavor::Azure {
            azure::require_version(call)?;
        }
        let request = &call.request;
        let wanted = request
            .get("max_completion_tokens")
            .or_else(|| request.get("max_tokens"))
            .and_then(Value::as_u64)
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
        Ok(Ask {
            prompt: prompt_tokens(request),
            wanted,
            answers: request.get("n").and_then(Value::as_u64).map_or(1, |n| u32::try_from(n).unwrap_or(1).max(1)),
            streaming: request.get("stream") == Some(&Value::Bool(true)),
            tool: chat_tool(request),
        })
    }

    fn failure(&self, failure: &Failure) -> Response {
        self::failure(self.flavor, failure)
    }

    fn rate_limits(&self, limits: RateLimits, headers: &mut HeaderMap) {
        self::rate_limits(limits, headers);
    }

    fn body(&self, call: &Call, _: &Ask, reply: &Reply) -> Value {
        let message = match &reply.tool_call {
            Some(tool) => json!({"role": "assistant", "content": null, "tool_calls": [{
                "id": format!("call_{}", tool.id),
                "type": "function",
                "function": {"name": tool.name, "arguments": tool.arguments_text()},
            }]}),
            None => json!({"role": "assistant", "content": reply.text}),
        };
        let mut body = json!({
            "id": format!("chatcmpl-mock{}", call.serial),
            "object": "chat.completion",
            "created": CREATED,
            "model": call.model,
            "choices": [{"index": 0, "message": message, "finish_reason": chat_finish(reply.finish)}],
            "usage": usage(&reply.tokens),
        });
        if self.flavor == Flavor::Azure {
            azure::annotate(&mut body, reply.finish);
        }
        body
    }

    fn script(&self, call: &Call, _: &Ask, reply: &Reply) -> Script {
        let id = format!("chatcmpl-mock{}", call.serial);
        let event = |delta: &Value, finish: &Value| sse(None, &chunk(&id, &call.model, delta, finish));
        let null = &Value::Null;
        let mut head = Vec::new();
        if self.flavor == Flavor::Azure {
            head.push(sse(None, &azure::prompt_filter_chunk()));
        }
        let content = if let Some(tool) = &reply.tool_call {
            {
                let opening = json!({"role": "assistant", "content": null, "tool_calls": [{
                    "index": 0,
                    "id": format!("call_{}", tool.id),
                    "type": "function",
                    "function": {"name": tool.name, "arguments": ""},
                }]});
                head.push(event(&opening, null));
                let pieces = serve::split(&tool.arguments_text(), reply.pieces);
                let delta = |piece: &String| json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]});
                pieces.iter().map(|piece| event(&delta(piece), null)).collect()
            }
        } else {
            {
                head.push(event(&json!({"role": "assistant", "content": ""}), null));
                reply.text_pieces().iter().map(|piece| event(&json!({"content": piece}), null)).collect()
            }
        };
        let mut tail = vec![event(&json!({}), &json!(chat_finish(reply.finish)))];
        if include_usage(&call.request) {
            let last = json!({
                "id": id, "object": "chat.completion.chunk", "created": CREATED, "model": call.model,
                "choices": [], "usage": usage(&reply.tokens),
            });
            tail.push(sse(None, &last));
        }
        tail.push(sse(None, &"[DONE]"));
        Script {
            content_type: "text/event-stream",
            head,
            content,
            tail,
            filler: event(&json!({"content": " lorem"}), null),
            error: Box::new(|_| stream_error()),
        }
    }
}

#[cfg(test)]
mod tests;
