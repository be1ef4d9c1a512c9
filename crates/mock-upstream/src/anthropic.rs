//! Anthropic's Messages API: `POST /v1/messages` (also `/messages`, for a
//! base URL ending in `/v1`). The key comes in `x-api-key`; the
//! `anthropic-version` header and `max_tokens` are required, as Anthropic
//! requires them. Answers are `message` objects (a `text` or `tool_use`
//! block) or the event stream `message_start`, `content_block_start`,
//! `ping`, `content_block_delta`…, `content_block_stop`, `message_delta`,
//! `message_stop`; errors are `{"type": "error", "error": {"type", "message"}}`
//! with Anthropic's statuses (529 when overloaded).

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::{
    behavior::{Behavior, KeyProblem, RateLimits},
    openai,
    serve::{self, Ask, Call, Endpoint, Failure, Finish, Refused, Reply, Tokens, serve},
    server::{Api, Shared},
    tools::{self, ToolSpec},
    transport::{Script, sse},
};

/// `POST /v1/messages`.
pub(crate) async fn messages(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let serial = shared.begin();
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "There was an error parsing the body as JSON");
    };
    let model = request.get("model").and_then(Value::as_str).unwrap_or_default().to_owned();
    let key = serve::header(&headers, "x-api-key").map(str::to_owned);
    let shown_key = key.clone().unwrap_or_default();
    let call = Call { api: Api::AnthropicMessages, model, uri, headers, request, key, shown_key, serial };
    serve(&shared, &Messages, call).await
}

/// An Anthropic error body, with the `request-id` header Anthropic sends.
fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_mock"});
    (
        status,
        [(header::CONTENT_TYPE, "application/json"), (header::HeaderName::from_static("request-id"), "req_mock")],
        body.to_string(),
    )
        .into_response()
}

fn invalid(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

/// The Messages endpoint.
struct Messages;

/// Characters of a `system` prompt or a message's `content`: a string, or
/// blocks whose `text` counts.
fn prompt_tokens(request: &Value) -> u32 {
    let messages = request.get("messages").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let chars = serve::text_chars(request.get("system"))
        + messages.iter().map(|m| serve::text_chars(m.get("content"))).sum::<usize>();
    serve::count(chars.div_ceil(4) + messages.len())
}

/// The tool to call: `tools[]` with an `input_schema` (server tools have
/// none), `tool_choice` `{"type": "tool", "name"}` forcing one or
/// `{"type": "none"}`.
fn tool(request: &Value) -> Option<ToolSpec> {
    let declared = request.get("tools").and_then(Value::as_array)?;
    let choice = request.get("tool_choice");
    let kind = choice.and_then(|c| c.get("type")).and_then(Value::as_str);
    let forced = if kind == Some("tool") { choice.and_then(|c| c.get("name")).and_then(Value::as_str) } else { None };
    let null = &Value::Null;
    let usable = declared.iter().filter(|t| t.get("input_schema").is_some());
    let declared = usable.map(|t| (t.get("name").unwrap_or(null), t.get("input_schema").unwrap_or(null)));
    tools::pick(declared, tools::Choice::of(forced, kind == Some("none")))
}

fn stop_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
        Finish::ToolUse => "tool_use",
        Finish::Filtered | Finish::Blocked => "refusal",
    }
}

/// `usage`: `input_tokens` leaves out the cache's reads and writes, which
/// are counted apart; `output_tokens` counts the thinking.
fn usage(tokens: &Tokens, output: u32) -> Value {
    json!({
        "input_tokens": tokens.prompt.saturating_sub(tokens.cached.saturating_add(tokens.cache_write)),
        "cache_creation_input_tokens": tokens.cache_write,
        "cache_read_input_tokens": tokens.cached,
        "output_tokens": output,
    })
}

fn output_tokens(tokens: &Tokens) -> u32 {
    tokens.completion.saturating_add(tokens.reasoning)
}

/// The message object, its `content` and `stop_reason` as given.
fn message(call: &Call, content: &Value, stop: &Value, usage: &Value) -> Value {
    json!({
        "id": format!("msg_mock{}", call.serial),
        "type": "message",
        "role": "assistant",
        "model": call.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": null,
        "usage": usage,
    })
}

impl Endpoint for Messages {
    fn read(&self, call: &Call, _: &Behavior) -> Result<Ask, Refused> {
        if serve::header(&call.headers, "anthropic-version").is_none_or(str::is_empty) {
            return Err(Box::new(invalid("anthropic-version: header is required")));
        }
        let request = &call.request;
        if !request.is_object() {
            return Err(Box::new(invalid("The request body must be a JSON object")));
        }
        if !request.get("model").is_some_and(Value::is_string) {
            return Err(Box::new(invalid("model: Field required")));
        }
        let Some(wanted) = request.get("max_tokens").and_then(Value::as_u64) else {
            return Err(Box::new(invalid("max_tokens: Field required")));
        };
        if wanted == 0 {
            return Err(Box::new(invalid("max_tokens: Input should be greater than or equal to 1")));
        }
        match request.get("messages").and_then(Value::as_array) {
            None => return Err(Box::new(invalid("messages: Field required"))),
            Some(messages) if messages.is_empty() => {
                return Err(Box::new(invalid("messages: at least one message is required")));
            }
            Some(_) => {}
        }
        Ok(Ask {
            prompt: prompt_tokens(request),
            wanted: u32::try_from(wanted).unwrap_or(u32::MAX),
            answers: 1,
            streaming: request.get("stream") == Some(&Value::Bool(true)),
            tool: tool(request),
        })
    }

    fn failure(&self, failure: &Failure) -> Response {
        match failure {
            Failure::ServerError => error(StatusCode::INTERNAL_SERVER_ERROR, "api_error", "Internal server error"),
            Failure::Overloaded => error(
                StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "overloaded_error",
                "Overloaded",
            ),
            Failure::RateLimited { retry_after_secs } => {
                let mut response = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "This request would exceed your organization's rate limit. Please try again later.",
                );
                openai::retry_after(&mut response, *retry_after_secs);
                response
            }
            Failure::Timeout => error(StatusCode::GATEWAY_TIMEOUT, "timeout_error", "Request timed out"),
            Failure::ContextWindow { window, prompt, .. } if prompt > window => {
                invalid(&format!("prompt is too long: {prompt} tokens > {window} maximum"))
            }
            Failure::ContextWindow { window, prompt, needed } => invalid(&format!(
                "input length and `max_tokens` exceed context limit: {prompt} + {} > {window}, decrease input \
                 length or `max_tokens` and try again",
                needed.saturating_sub(*prompt)
            )),
            Failure::BadRequest => invalid("messages: roles must alternate between \"user\" and \"assistant\""),
            // Anthropic answers a refused prompt in the message itself.
            Failure::PromptBlocked => invalid("The prompt was refused"),
            Failure::Unauthorized { problem: KeyProblem::Missing, .. } => {
                error(StatusCode::UNAUTHORIZED, "authentication_error", "x-api-key header is required")
            }
            Failure::Unauthorized { .. } => {
                error(StatusCode::UNAUTHORIZED, "authentication_error", "invalid x-api-key")
            }
        }
    }

    fn rate_limits(&self, limits: RateLimits, headers: &mut HeaderMap) {
        let reset = rfc3339(SystemTime::now() + limits.reset_requests);
        let values = [
            ("anthropic-ratelimit-requests-limit", limits.limit_requests.to_string()),
            ("anthropic-ratelimit-requests-remaining", limits.remaining_requests.to_string()),
            ("anthropic-ratelimit-requests-reset", reset),
        ];
        for (name, value) in values {
            if let Ok(value) = header::HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
    }

    fn blocks_in_answer(&self) -> bool {
        true
    }

    fn body(&self, call: &Call, _: &Ask, reply: &Reply) -> Value {
        let content = match (&reply.tool_call, reply.finish) {
            (Some(tool), _) => json!([{
                "type": "tool_use", "id": format!("toolu_{}", tool.id), "name": tool.name, "input": tool.arguments,
            }]),
            (None, Finish::Filtered | Finish::Blocked) => json!([]),
            (None, _) => json!([{"type": "text", "text": reply.text}]),
        };
        message(call, &content, &json!(stop_reason(reply.finish)), &usage(&reply.tokens, output_tokens(&reply.tokens)))
    }

    fn script(&self, call: &Call, _: &Ask, reply: &Reply) -> Script {
        let event = |kind: &str, data: Value| sse(Some(kind), &data);
        let start = message(call, &json!([]), &Value::Null, &usage(&reply.tokens, 1));
        let mut head = vec![event("message_start", json!({"type": "message_start", "message": start}))];
        let delta = |delta: Value| {
            event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": delta}))
        };
        let (block, content) = match &reply.tool_call {
            Some(tool) => {
                let block =
                    json!({"type": "tool_use", "id": format!("toolu_{}", tool.id), "name": tool.name, "input": {}});
                let pieces = serve::split(&tool.arguments_text(), reply.pieces);
                (
                    Some(block),
                    pieces.into_iter().map(|p| delta(json!({"type": "input_json_delta", "partial_json": p}))).collect(),
                )
            }
            None if reply.text.is_empty() => (None, Vec::new()),
            None => {
                let pieces = reply.text_pieces();
                (
                    Some(json!({"type": "text", "text": ""})),
                    pieces.into_iter().map(|p| delta(json!({"type": "text_delta", "text": p}))).collect(),
                )
            }
        };
        let mut tail = Vec::new();
        if let Some(block) = block {
            head.push(event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": block}),
            ));
            head.push(event("ping", json!({"type": "ping"})));
            tail.push(event("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
        }
        tail.push(event(
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason(reply.finish), "stop_sequence": null},
                "usage": {"output_tokens": output_tokens(&reply.tokens)},
            }),
        ));
        tail.push(event("message_stop", json!({"type": "message_stop"})));
        Script {
            content_type: "text/event-stream",
            head,
            content,
            tail,
            filler: delta(json!({"type": "text_delta", "text": " lorem"})),
            error: Box::new(|_| {
                let error = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
                sse(Some("error"), &error)
            }),
        }
    }
}

/// `at` as an RFC 3339 UTC time, to the second (`2025-01-02T03:04:05Z`).
fn rfc3339(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil, for days since 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rest / 3_600, rest % 3_600 / 60, rest % 60)
}

#[cfg(test)]
mod tests;
