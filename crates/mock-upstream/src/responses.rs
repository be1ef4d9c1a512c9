//! OpenAI's Responses API, minimal: `POST /v1/responses` answers a
//! `response` object whose `output` is one `message` (an `output_text`
//! part) or one `function_call`; streamed, the named events
//! `response.created`, `response.in_progress`, `response.output_item.added`,
//! `response.content_part.added`, `response.output_text.delta`… (or
//! `response.function_call_arguments.delta`…), their `.done` events and
//! `response.completed` (`response.incomplete` when `max_output_tokens` or
//! the filter cut it), each with its `sequence_number`.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, Uri},
    response::Response,
};
use serde_json::{Value, json};

use crate::{
    behavior::{Behavior, RateLimits},
    openai::{self, CREATED, Flavor},
    serve::{self, Ask, Call, Endpoint, Failure, Finish, Refused, Reply, serve},
    server::{Api, Shared},
    tools::{self, ToolSpec},
    transport::{Script, sse},
};

/// `POST /v1/responses`.
pub(crate) async fn openai(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    match openai::call(&shared, Api::OpenAiResponses, uri, headers, &body) {
        Ok(call) => serve(&shared, &Responses, call).await,
        Err(refused) => *refused,
    }
}

struct Responses;

/// Prompt tokens: a quarter of the characters of `instructions` and of
/// `input` (a string, or items whose `content` is a string or parts), plus
/// one per item.
fn prompt_tokens(request: &Value) -> u32 {
    let instructions = serve::text_chars(request.get("instructions"));
    let (chars, items) = match request.get("input") {
        Some(Value::Array(items)) => (items.iter().map(|i| serve::text_chars(i.get("content"))).sum(), items.len()),
        input => (serve::text_chars(input), 1),
    };
    serve::count((instructions + chars).div_ceil(4) + items)
}

/// The function to call: `tools[]` of type `function`, `tool_choice`
/// `{"type": "function", "name"}` forcing one or `"none"`.
fn tool(request: &Value) -> Option<ToolSpec> {
    let declared = request.get("tools").and_then(Value::as_array)?;
    let choice = request.get("tool_choice");
    let forced = choice.and_then(|c| c.get("name")).and_then(Value::as_str);
    let forbidden = choice.and_then(Value::as_str) == Some("none");
    let null = &Value::Null;
    let functions = declared.iter().filter(|t| t.get("type").and_then(Value::as_str) == Some("function"));
    tools::pick(
        functions.map(|t| (t.get("name").unwrap_or(null), t.get("parameters").unwrap_or(null))),
        tools::Choice::of(forced, forbidden),
    )
}

/// Where a streamed object is: just opened (empty), or whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Opened,
    Done,
}

/// The output item at `stage`.
fn item(call: &Call, reply: &Reply, stage: Stage) -> Option<Value> {
    let done = stage == Stage::Done;
    let status = if done { "completed" } else { "in_progress" };
    if let Some(tool) = &reply.tool_call {
        let arguments = if done { tool.arguments_text() } else { String::new() };
        return Some(json!({
            "type": "function_call", "id": format!("fc_{}", tool.id), "call_id": format!("call_{}", tool.id),
            "name": tool.name, "arguments": arguments, "status": status,
        }));
    }
    if matches!(reply.finish, Finish::Filtered | Finish::Blocked) {
        return None;
    }
    let content = if done { json!([text_part(&reply.text)]) } else { json!([]) };
    let status = if done && reply.finish == Finish::Length { "incomplete" } else { status };
    Some(json!({
        "type": "message", "id": format!("msg_mock{}", call.serial), "status": status, "role": "assistant",
        "content": content,
    }))
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

/// The response object: in progress (no output yet), or done.
fn response(call: &Call, reply: &Reply, stage: Stage) -> Value {
    let done = stage == Stage::Done;
    let incomplete = match reply.finish {
        Finish::Length => Some("max_output_tokens"),
        Finish::Filtered | Finish::Blocked => Some("content_filter"),
        Finish::Stop | Finish::ToolUse => None,
    };
    let status = match (done, incomplete) {
        (false, _) => "in_progress",
        (true, Some(_)) => "incomplete",
        (true, None) => "completed",
    };
    let tokens = &reply.tokens;
    let output = tokens.completion.saturating_add(tokens.reasoning);
    let usage = done.then(|| {
        json!({
            "input_tokens": tokens.prompt,
            "input_tokens_details": {"cached_tokens": tokens.cached},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": tokens.reasoning},
            "total_tokens": tokens.prompt.saturating_add(output),
        })
    });
    let output: Vec<Value> = if done { item(call, reply, Stage::Done).into_iter().collect() } else { Vec::new() };
    json!({
        "id": format!("resp_mock{}", call.serial),
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "error": null,
        "incomplete_details": incomplete.filter(|_| done).map(|reason| json!({"reason": reason})),
        "model": call.model,
        "output": output,
        "usage": usage,
    })
}

impl Endpoint for Responses {
    fn read(&self, call: &Call, _: &Behavior) -> Result<Ask, Refused> {
        let request = &call.request;
        match request.get("input") {
            None | Some(Value::String(_) | Value::Array(_)) => {}
            Some(_) => return Err(Box::new(openai::invalid("input", "input must be a string or a list of items"))),
        }
        Ok(Ask {
            prompt: prompt_tokens(request),
            wanted: serve::number(request, "/max_output_tokens", 0),
            answers: 1,
            streaming: request.get("stream") == Some(&Value::Bool(true)),
            tool: tool(request),
        })
    }

    fn failure(&self, failure: &Failure) -> Response {
        openai::failure(Flavor::OpenAi, failure)
    }

    fn rate_limits(&self, limits: RateLimits, headers: &mut HeaderMap) {
        openai::rate_limits(limits, headers);
    }

    fn body(&self, call: &Call, _: &Ask, reply: &Reply) -> Value {
        response(call, reply, Stage::Done)
    }

    fn script(&self, call: &Call, _: &Ask, reply: &Reply) -> Script {
        // Events as (type, data without its type and number), numbered at the end.
        let mut head = vec![
            ("response.created", json!({"response": response(call, reply, Stage::Opened)})),
            ("response.in_progress", json!({"response": response(call, reply, Stage::Opened)})),
        ];
        let at = |extra: Value| {
            let mut data = json!({"output_index": 0});
            if let (Some(data), Value::Object(extra)) = (data.as_object_mut(), extra) {
                data.extend(extra);
            }
            data
        };
        let mut content = Vec::new();
        let mut tail = Vec::new();
        if let Some(opened) = item(call, reply, Stage::Opened) {
            let id = opened.get("id").cloned().unwrap_or_default();
            head.push(("response.output_item.added", at(json!({"item": opened}))));
            if let Some(tool) = &reply.tool_call {
                {
                    let arguments = tool.arguments_text();
                    for piece in serve::split(&arguments, reply.pieces) {
                        let delta = at(json!({"item_id": id, "delta": piece}));
                        content.push(("response.function_call_arguments.delta", delta));
                    }
                    tail.push((
                        "response.function_call_arguments.done",
                        at(json!({"item_id": id, "arguments": arguments})),
                    ));
                }
            } else {
                {
                    let part = |text: &str| at(json!({"item_id": id, "content_index": 0, "part": text_part(text)}));
                    head.push(("response.content_part.added", part("")));
                    for piece in reply.text_pieces() {
                        let delta = at(json!({"item_id": id, "content_index": 0, "delta": piece}));
                        content.push(("response.output_text.delta", delta));
                    }
                    let done = at(json!({"item_id": id, "content_index": 0, "text": reply.text}));
                    tail.push(("response.output_text.done", done));
                    tail.push(("response.content_part.done", part(&reply.text)));
                }
            }
            tail.push(("response.output_item.done", at(json!({"item": item(call, reply, Stage::Done)}))));
        }
        let finished = response(call, reply, Stage::Done);
        let last = if finished["status"] == "completed" { "response.completed" } else { "response.incomplete" };
        tail.push((last, json!({"response": finished})));
        let (before, during) = (head.len(), content.len());
        let number = |offset: usize| {
            move |(i, (kind, mut data)): (usize, (&str, Value))| {
                data["type"] = json!(kind);
                data["sequence_number"] = json!(offset + i);
                sse(Some(kind), &data)
            }
        };
        let filler_id = format!("msg_mock{}", call.serial);
        let filler = at(json!({"item_id": filler_id, "content_index": 0, "delta": " lorem"}));
        Script {
            content_type: "text/event-stream",
            head: head.into_iter().enumerate().map(number(0)).collect(),
            content: content.into_iter().enumerate().map(number(before)).collect(),
            tail: tail.into_iter().enumerate().map(number(before + during)).collect(),
            filler: number(before)((0, ("response.output_text.delta", filler))),
            error: Box::new(move |sent| {
                let error = json!({
                    "type": "error", "code": "server_error", "param": null, "sequence_number": before + sent,
                    "message": "The server had an error while processing your request.",
                });
                sse(Some("error"), &error)
            }),
        }
    }
}

#[cfg(test)]
mod tests;
