//! The client formats besides OpenAI's chat, translated at the edge:
//! Anthropic's Messages API (`POST /v1/messages`, so the anthropic SDK and
//! the tools built on it work unchanged) and OpenAI's Responses API (`POST
//! /v1/responses`). A request is translated to chat on the way in; the
//! answer, its stream and its errors back on the way out. Everything in
//! between (selection, fallback across any provider kind, budgets, the
//! cache, records) is the chat path's, unchanged.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use modelfleet_translate::{
    ChatToAnthropicEvents, ChatToResponseEvents, Refusal, SseEvent, anthropic_error, anthropic_request_to_chat,
    chat_to_anthropic_message, chat_to_response, responses_request_to_chat,
};
use serde_json::{Value, json};

use crate::wire::{ApiError, json_bytes, sse, sse_named};

/// The format a client endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// OpenAI's chat completions: nothing to translate.
    Chat,
    /// Anthropic's Messages API.
    Anthropic,
    /// OpenAI's Responses API.
    Responses,
}

impl Format {
    /// A request body in this format as a chat-completions body (its
    /// bytes, for the chat path's own parser). A field the chat path has no
    /// place for is a 400 naming it.
    pub(crate) fn request(self, bytes: Bytes) -> Result<Bytes, ApiError> {
        if self == Format::Chat {
            return Ok(bytes);
        }
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::invalid("invalid_json", format!("the request body is not valid JSON: {e}")))?;
        let chat = match self {
            Format::Anthropic => anthropic_request_to_chat(&value),
            Format::Responses => responses_request_to_chat(&value),
            Format::Chat => return Ok(bytes),
        }
        .map_err(|r: Refusal| ApiError::invalid("invalid_request", format!("{}: {}", r.field, r.message)))?;
        Ok(Bytes::from(json_bytes(&chat)))
    }

    /// A chat answer (a `chat.completion`) as this format's response,
    /// status and headers kept. Errors are left as they are: the Responses
    /// API's are OpenAI's shape already, and Anthropic's endpoint has every
    /// error translated by [`anthropic_errors`], whichever layer made it.
    pub(crate) async fn response(self, response: Response, max: usize) -> Response {
        if self == Format::Chat || !response.status().is_success() {
            return response;
        }
        let (parts, body) = response.into_parts();
        let is_json = parts.headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == b"application/json");
        if !is_json {
            // A stream: translated event by event by its relay.
            return Response::from_parts(parts, body);
        }
        let Ok(bytes) = axum::body::to_bytes(body, max).await else {
            return ApiError::new(StatusCode::BAD_GATEWAY, "server_error", "internal", "the answer could not be read")
                .into_response();
        };
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let model = value.get("model").and_then(Value::as_str).unwrap_or_default().to_owned();
        let translated = match self {
            Format::Anthropic => chat_to_anthropic_message(&value, &model),
            Format::Responses => chat_to_response(&value, &model),
            Format::Chat => value,
        };
        json_body(parts, &translated)
    }

    /// The relay's translator of a stream for this format.
    pub(crate) fn stream(self, model: &str, prompt_tokens: u64) -> Edge {
        match self {
            Format::Chat => Edge::Chat,
            Format::Anthropic => Edge::Anthropic(Box::new(ChatToAnthropicEvents::new(model, prompt_tokens))),
            Format::Responses => Edge::Responses(Box::new(ChatToResponseEvents::new(model))),
        }
    }
}

/// Every error answered on `/v1/messages`, whichever layer made it (the
/// handler, the guard, the lockout, shedding, the memory guard, the
/// whole-request limit, a 405), in Anthropic's shape: the outermost layer.
pub(crate) async fn anthropic_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let anthropic = request.uri().path() == "/v1/messages";
    let response = next.run(request).await;
    if !anthropic || response.status().is_success() {
        return response;
    }
    let (parts, body) = response.into_parts();
    // An error body is the gateway's own, small (an OpenAI-shaped error).
    let bytes = axum::body::to_bytes(body, MAX_ERROR_BODY).await.unwrap_or_default();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let message = value.pointer("/error/message").and_then(Value::as_str).unwrap_or("the request failed");
    let error = anthropic_error(parts.status.as_u16(), message);
    json_body(parts, &error)
}

/// The largest error body read to translate it.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// `parts` with `value` as their JSON body.
fn json_body(mut parts: axum::http::response::Parts, value: &Value) -> Response {
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, axum::body::Body::from(json_bytes(value)))
}

/// A stream's chunks as the client's events.
pub(crate) enum Edge {
    /// OpenAI's chunks, as they are.
    Chat,
    /// Anthropic's stream events.
    Anthropic(Box<ChatToAnthropicEvents>),
    /// The Responses API's stream events.
    Responses(Box<ChatToResponseEvents>),
    /// A Responses API stream passed through: each event as it came, named
    /// by its `type`.
    Native,
}

impl Edge {
    /// One chunk's data (an OpenAI chunk's JSON, or `[DONE]`) as the
    /// client's events (maybe none).
    pub(crate) fn events(&mut self, data: &str) -> Vec<Bytes> {
        let done = data.trim() == "[DONE]";
        let events = match self {
            Edge::Chat => return vec![sse(data)],
            Edge::Native => {
                let value: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                return vec![Edge::native_event(value.get("type").and_then(Value::as_str), data)];
            }
            Edge::Anthropic(e) if done => e.finish(),
            Edge::Responses(e) if done => e.finish(),
            Edge::Anthropic(e) => serde_json::from_str::<Value>(data).map(|chunk| e.push(&chunk)).unwrap_or_default(),
            Edge::Responses(e) => serde_json::from_str::<Value>(data).map(|chunk| e.push(&chunk)).unwrap_or_default(),
        };
        events.iter().map(named).collect()
    }

    /// A Responses API event as it came, named by its `type` when that is a
    /// plain event name (lower-case letters, digits, `.` and `_`: an
    /// upstream cannot forge another event with a newline in it), else
    /// unnamed.
    pub(crate) fn native_event(kind: Option<&str>, data: &str) -> Bytes {
        let plain = |k: &&str| {
            !k.is_empty()
                && k.len() <= 128
                && k.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_')
        };
        sse_named(kind.filter(plain), data)
    }

    /// A failure after the first byte as the client's error event (OpenAI's
    /// `{"error": …}` chunk for chat).
    pub(crate) fn error(&self, message: &str, code: &str) -> Bytes {
        match self {
            Edge::Chat => {
                let event = json!({"error": {"message": message, "type": "server_error", "param": null, "code": code}});
                sse(&event.to_string())
            }
            Edge::Anthropic(_) => named(&SseEvent { event: "error", data: anthropic_error(500, message) }),
            // Flat, as the Responses API documents it, and nested, as it
            // sends it (the openai SDK raises on the nested `error`).
            Edge::Responses(_) | Edge::Native => named(&SseEvent {
                event: "error",
                data: json!({"type": "error", "code": code, "message": message, "param": null,
                             "error": {"type": "server_error", "code": code, "message": message, "param": null}}),
            }),
        }
    }
}

/// `event: NAME` and `data: JSON`.
fn named(event: &SseEvent) -> Bytes {
    let data = json_bytes(&event.data);
    let mut out = Vec::with_capacity(data.len() + event.event.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}
