//! OpenAI's Responses API (`POST /v1/responses`) for clients, over the
//! gateway's chat format.
//!
//! A Responses request becomes a chat request ([`responses_request_to_chat`]),
//! and the chat answer becomes a Responses response object
//! ([`chat_to_response`]) or, streamed, Responses events
//! ([`ChatToResponseEvents`]).
//!
//! Invariants:
//! - modelfleet stores no responses: whatever needs a stored one
//!   (`previous_response_id`, `conversation`, stored `prompt`s,
//!   `background` runs, `item_reference` inputs) is refused by name, never
//!   silently answered without its context.
//! - Every request field is in one table, `FIELDS`: translated, kept as
//!   chat has it, dropped (and why), or refused. An unknown field is
//!   refused, as OpenAI does.
//! - Ids are derived from the chat completion's id (`chatcmpl-X` gives
//!   `resp_X`, `msg_X`, `fc_X_<n>`), so one answer always gives the same
//!   response; stream events are numbered from 0 without gaps.

use serde_json::{Map, Value, json};

use crate::{Refusal, SseEvent, Usage, usage_of};

type Object = Map<String, Value>;

/// What [`responses_request_to_chat`] does with a request field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// Translated into chat's own fields.
    Translated,
    /// Copied: chat has the same field.
    Kept,
    /// Left out: chat has no place for it and leaving it out changes no
    /// answer (`store` and `metadata`: nothing is stored; `reasoning` and
    /// `include`: reasoning is not carried into Responses output;
    /// `truncation`: `auto` is read as `disabled`, so an input too long
    /// fails instead of being cut; `stream_options`, `max_tool_calls`,
    /// `top_logprobs`: no answer here carries them).
    Dropped,
    /// Needs a stored response or prompt.
    Stored,
}

const FIELDS: &[(&str, Field)] = &[
    ("input", Field::Translated),
    ("instructions", Field::Translated),
    ("tools", Field::Translated),
    ("tool_choice", Field::Translated),
    ("max_output_tokens", Field::Translated),
    ("text", Field::Translated),
    ("stream", Field::Translated),
    ("background", Field::Translated),
    ("model", Field::Kept),
    ("temperature", Field::Kept),
    ("top_p", Field::Kept),
    ("user", Field::Kept),
    ("parallel_tool_calls", Field::Kept),
    ("service_tier", Field::Kept),
    ("prompt_cache_key", Field::Kept),
    ("safety_identifier", Field::Kept),
    ("store", Field::Dropped),
    ("metadata", Field::Dropped),
    ("reasoning", Field::Dropped),
    ("include", Field::Dropped),
    ("truncation", Field::Dropped),
    ("stream_options", Field::Dropped),
    ("max_tool_calls", Field::Dropped),
    ("top_logprobs", Field::Dropped),
    ("previous_response_id", Field::Stored),
    ("conversation", Field::Stored),
    ("prompt", Field::Stored),
];

const NOT_STORED: &str = "not supported: modelfleet stores no responses; send the whole conversation in input";

/// A Responses API request as a chat request body.
///
/// `instructions` becomes a first system message; an `input` string one
/// user message. Input items: messages (`input_text` as text parts,
/// `input_image` as `image_url` parts, `input_file` with `file_data` as a
/// `file` part, an assistant's `output_text` as its text), `function_call`
/// items as an assistant message's `tool_calls` (consecutive ones, and the
/// assistant message before them, merged into one message),
/// `function_call_output` items as tool messages; `reasoning` items are
/// skipped. Function tools become chat tools; hosted tools (`web_search`,
/// `file_search`, `computer_use_preview`, `code_interpreter`, `mcp`, …) are
/// refused: modelfleet runs none. `max_output_tokens` becomes `max_tokens`,
/// `text.format` `response_format` (and `text.verbosity` `verbosity`); a
/// streamed request asks for the usage chunk
/// (`stream_options.include_usage`). What needs a stored response
/// (`previous_response_id`, `conversation`, `prompt`, `background: true`,
/// `item_reference` items, `file_id`s) is refused naming the field. See the
/// module's table for the rest.
pub fn responses_request_to_chat(body: &Value) -> Result<Map<String, Value>, Refusal> {
    let body = body.as_object().ok_or_else(|| Refusal::new("body", "must be a JSON object"))?;
    let mut chat = Object::new();
    for (key, value) in body {
        if value.is_null() {
            continue;
        }
        match FIELDS.iter().find(|(name, _)| name == key).map(|(_, field)| *field) {
            Some(Field::Translated | Field::Dropped) => {}
            Some(Field::Kept) => {
                chat.insert(key.clone(), value.clone());
            }
            Some(Field::Stored) => return Err(Refusal::new(key.as_str(), NOT_STORED)),
            None => return Err(Refusal::new(key.as_str(), "unknown parameter")),
        }
    }
    let get = |key: &str| body.get(key).filter(|v| !v.is_null());
    let mut messages = Vec::new();
    match get("instructions") {
        None => {}
        Some(Value::String(instructions)) => messages.push(json!({"role": "system", "content": instructions})),
        Some(_) => return Err(Refusal::new("instructions", "must be a string")),
    }
    match get("input") {
        None => return Err(Refusal::new("input", "required")),
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(item, &format!("input[{i}]"), &mut messages)?;
            }
        }
        Some(_) => return Err(Refusal::new("input", "must be a string or a list of items")),
    }
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = get("tools") {
        chat.insert("tools".into(), chat_tools(tools)?);
    }
    if let Some(choice) = get("tool_choice") {
        chat.insert("tool_choice".into(), tool_choice(choice)?);
    }
    if let Some(max) = get("max_output_tokens") {
        let max = max.as_u64().ok_or_else(|| Refusal::new("max_output_tokens", "must be a whole number"))?;
        chat.insert("max_tokens".into(), max.into());
    }
    if let Some(text) = get("text") {
        text_options(text, &mut chat)?;
    }
    match get("stream") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            chat.insert("stream".into(), true.into());
            chat.insert("stream_options".into(), json!({"include_usage": true}));
        }
        Some(_) => return Err(Refusal::new("stream", "must be true or false")),
    }
    match get("background") {
        None | Some(Value::Bool(false)) => {}
        Some(_) => return Err(Refusal::new("background", NOT_STORED)),
    }
    Ok(chat)
}

fn input_item(item: &Value, at: &str, messages: &mut Vec<Value>) -> Result<(), Refusal> {
    let item = item.as_object().ok_or_else(|| Refusal::new(at, "must be an object"))?;
    let kind = match item.get("type") {
        None if item.contains_key("role") => "message",
        Some(Value::String(kind)) => kind.as_str(),
        _ => return Err(Refusal::new(format!("{at}.type"), "required, a string")),
    };
    let text = |key: &str| {
        item.get(key).and_then(Value::as_str).ok_or_else(|| Refusal::new(format!("{at}.{key}"), "required, a string"))
    };
    match kind {
        "message" => messages.push(message(item, at)?),
        "function_call" => {
            let call = json!({
                "id": text("call_id")?,
                "type": "function",
                "function": {"name": text("name")?, "arguments": text("arguments")?},
            });
            match messages.last_mut() {
                Some(last) if last["role"] == "assistant" => match last.get_mut("tool_calls") {
                    Some(Value::Array(calls)) => calls.push(call),
                    _ => last["tool_calls"] = json!([call]),
                },
                _ => messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let content = match item.get("output") {
                Some(Value::String(output)) => Value::from(output.as_str()),
                Some(Value::Array(parts)) => {
                    let mut texts = Vec::with_capacity(parts.len());
                    for (j, part) in parts.iter().enumerate() {
                        match (part.get("type").and_then(Value::as_str), part.get("text")) {
                            (Some("input_text" | "output_text"), Some(Value::String(text))) => {
                                texts.push(json!({"type": "text", "text": text}));
                            }
                            _ => {
                                return Err(Refusal::new(format!("{at}.output[{j}]"), "only text parts are supported"));
                            }
                        }
                    }
                    Value::Array(texts)
                }
                _ => return Err(Refusal::new(format!("{at}.output"), "required, a string or a list of text parts")),
            };
            messages.push(json!({"role": "tool", "tool_call_id": text("call_id")?, "content": content}));
        }
        "reasoning" => {}
        "item_reference" => return Err(Refusal::new(at, NOT_STORED)),
        _ => return Err(Refusal::new(format!("{at}.type"), "not supported: only messages and function calls")),
    }
    Ok(())
}

fn message(item: &Object, at: &str) -> Result<Value, Refusal> {
    let Some(role @ ("user" | "assistant" | "system" | "developer")) = item.get("role").and_then(Value::as_str) else {
        return Err(Refusal::new(format!("{at}.role"), "must be user, assistant, system or developer"));
    };
    let content = match item.get("content") {
        Some(Value::String(text)) => Value::from(text.as_str()),
        Some(Value::Array(parts)) if role == "assistant" => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let field = match part.get("type").and_then(Value::as_str) {
                    Some("output_text" | "input_text") => "text",
                    Some("refusal") => "refusal",
                    _ => return Err(Refusal::new(format!("{at}.content[{j}].type"), "must be output_text or refusal")),
                };
                let piece = part.get(field).and_then(Value::as_str);
                text.push_str(piece.ok_or_else(|| Refusal::new(format!("{at}.content[{j}].{field}"), "required"))?);
            }
            Value::from(text)
        }
        Some(Value::Array(parts)) => {
            let mut chat_parts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                chat_parts.push(content_part(part, &format!("{at}.content[{j}]"))?);
            }
            Value::Array(chat_parts)
        }
        _ => return Err(Refusal::new(format!("{at}.content"), "required, a string or a list of parts")),
    };
    Ok(json!({"role": role, "content": content}))
}

fn content_part(part: &Value, at: &str) -> Result<Value, Refusal> {
    let text = |key: &str| part.get(key).and_then(Value::as_str);
    let stored = |key: &str| {
        if part.get(key).is_some_and(|v| !v.is_null()) {
            Err(Refusal::new(format!("{at}.{key}"), NOT_STORED))
        } else {
            Ok(())
        }
    };
    match part.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text") => {
            let text = text("text").ok_or_else(|| Refusal::new(format!("{at}.text"), "required, a string"))?;
            Ok(json!({"type": "text", "text": text}))
        }
        Some("input_image") => {
            stored("file_id")?;
            let url = text("image_url").ok_or_else(|| Refusal::new(format!("{at}.image_url"), "required, a string"))?;
            let mut image = json!({ "url": url });
            if let Some(detail) = part.get("detail").filter(|d| d.is_string()) {
                image["detail"] = detail.clone();
            }
            Ok(json!({"type": "image_url", "image_url": image}))
        }
        Some("input_file") => {
            stored("file_id")?;
            if part.get("file_url").is_some_and(|v| !v.is_null()) {
                return Err(Refusal::new(format!("{at}.file_url"), "not supported: send the file as file_data"));
            }
            let data =
                text("file_data").ok_or_else(|| Refusal::new(format!("{at}.file_data"), "required, a string"))?;
            let mut file = json!({ "file_data": data });
            if let Some(name) = part.get("filename").filter(|n| n.is_string()) {
                file["filename"] = name.clone();
            }
            Ok(json!({"type": "file", "file": file}))
        }
        _ => Err(Refusal::new(format!("{at}.type"), "must be input_text, input_image or input_file")),
    }
}

fn chat_tools(tools: &Value) -> Result<Value, Refusal> {
    let tools = tools.as_array().ok_or_else(|| Refusal::new("tools", "must be a list"))?;
    let mut chat = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(Refusal::new(
                format!("tools[{i}].type"),
                "not supported: only function tools (modelfleet runs no hosted tools)",
            ));
        }
        let name = tool
            .get("name")
            .filter(|n| n.is_string())
            .ok_or_else(|| Refusal::new(format!("tools[{i}].name"), "required, a string"))?;
        let mut function = json!({ "name": name });
        for key in ["description", "parameters", "strict"] {
            if let Some(value) = tool.get(key).filter(|v| !v.is_null()) {
                function[key] = value.clone();
            }
        }
        chat.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::Array(chat))
}

fn tool_choice(choice: &Value) -> Result<Value, Refusal> {
    let function = |name: &Value| json!({"type": "function", "function": {"name": name}});
    match choice {
        Value::String(mode) if matches!(mode.as_str(), "auto" | "none" | "required") => Ok(choice.clone()),
        _ => match (choice.get("type").and_then(Value::as_str), choice.get("name").filter(|n| n.is_string())) {
            (Some("function"), Some(name)) => Ok(function(name)),
            (Some("allowed_tools"), _) => {
                let mode = choice.get("mode").filter(|m| matches!(m.as_str(), Some("auto" | "required")));
                let tools = choice.get("tools").and_then(Value::as_array);
                let (Some(mode), Some(tools)) = (mode, tools) else {
                    return Err(Refusal::new("tool_choice", "allowed_tools needs a mode and a list of tools"));
                };
                let mut allowed = Vec::with_capacity(tools.len());
                for (i, tool) in tools.iter().enumerate() {
                    match (tool.get("type").and_then(Value::as_str), tool.get("name").filter(|n| n.is_string())) {
                        (Some("function"), Some(name)) => allowed.push(function(name)),
                        _ => return Err(Refusal::new(format!("tool_choice.tools[{i}]"), "only function tools")),
                    }
                }
                Ok(json!({"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": allowed}}))
            }
            _ => Err(Refusal::new(
                "tool_choice",
                "must be \"auto\", \"none\", \"required\", a function or allowed function tools",
            )),
        },
    }
}

fn text_options(text: &Value, chat: &mut Object) -> Result<(), Refusal> {
    if let Some(verbosity) = text.get("verbosity").filter(|v| !v.is_null()) {
        chat.insert("verbosity".into(), verbosity.clone());
    }
    let Some(format) = text.get("format").filter(|f| !f.is_null()) else { return Ok(()) };
    let format = match format.get("type").and_then(Value::as_str) {
        Some("text") => return Ok(()),
        Some("json_object") => json!({"type": "json_object"}),
        Some("json_schema") => {
            let mut schema = Object::new();
            for key in ["name", "schema", "description", "strict"] {
                if let Some(value) = format.get(key).filter(|v| !v.is_null()) {
                    schema.insert(key.into(), value.clone());
                }
            }
            json!({"type": "json_schema", "json_schema": schema})
        }
        _ => return Err(Refusal::new("text.format.type", "must be text, json_object or json_schema")),
    };
    chat.insert("response_format".into(), format);
    Ok(())
}

// ---------------------------------------------------------------------------
// Answers

/// The ids of one response, from the chat completion's id.
#[derive(Debug, Clone)]
struct Ids {
    /// The completion id without its `chatcmpl-` prefix.
    stem: String,
    created_at: u64,
}

impl Ids {
    fn of(completion: &Value) -> Ids {
        let id = completion.get("id").and_then(Value::as_str).filter(|id| !id.is_empty());
        let stem = id.map_or("modelfleet", |id| id.strip_prefix("chatcmpl-").unwrap_or(id));
        Ids { stem: stem.to_owned(), created_at: completion.get("created").and_then(Value::as_u64).unwrap_or(0) }
    }

    fn response(&self) -> String {
        format!("resp_{}", self.stem)
    }

    fn message(&self) -> String {
        format!("msg_{}", self.stem)
    }

    fn call(&self, n: usize) -> String {
        format!("fc_{}_{n}", self.stem)
    }
}

/// A response object in the given state. The request's settings are not
/// echoed (this translation sees only the answer): `tools`, `tool_choice`,
/// `temperature` and the like hold neutral values.
fn response_object(ids: &Ids, model: &str, status: &str, output: Vec<Value>, usage: Option<&Usage>) -> Value {
    let mut response = json!({
        "id": ids.response(),
        "object": "response",
        "created_at": ids.created_at,
        "status": status,
        "error": null,
        "incomplete_details": null,
        "instructions": null,
        "metadata": {},
        "model": model,
        "output": [],
        "parallel_tool_calls": true,
        "temperature": null,
        "tool_choice": "auto",
        "tools": [],
        "top_p": null,
        "usage": usage.map(responses_usage),
    });
    response["output"] = Value::Array(output);
    response
}

/// Status and incomplete reason from a chat `finish_reason`.
fn status_of(finish_reason: Option<&str>) -> (&'static str, Option<&'static str>) {
    match finish_reason {
        Some("length") => ("incomplete", Some("max_output_tokens")),
        Some("content_filter") => ("incomplete", Some("content_filter")),
        _ => ("completed", None),
    }
}

fn finished_response(
    ids: &Ids,
    model: &str,
    finish_reason: Option<&str>,
    output: Vec<Value>,
    usage: Option<&Usage>,
) -> Value {
    let (status, reason) = status_of(finish_reason);
    let mut response = response_object(ids, model, status, output, usage);
    if let Some(reason) = reason {
        response["incomplete_details"] = json!({ "reason": reason });
    }
    response
}

fn responses_usage(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.input_tokens.saturating_add(usage.output_tokens),
    })
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn message_item(id: &str, status: &str, content: Vec<Value>) -> Value {
    let mut item = json!({"id": id, "type": "message", "status": status, "role": "assistant"});
    item["content"] = Value::Array(content);
    item
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "call_id": call_id, "name": name, "arguments": arguments})
}

/// A chat completion as a Responses API response object for `model`.
///
/// The first choice is the output: its text (and refusal) as a `message`
/// item, its tool calls as `function_call` items (`call_id` the tool
/// call's id). A `length` finish is status `incomplete` with
/// `incomplete_details.reason` `max_output_tokens` (`content_filter` gives
/// reason `content_filter`); usage is mapped to `input_tokens`,
/// `input_tokens_details.cached_tokens`, `output_tokens`,
/// `output_tokens_details.reasoning_tokens`, `total_tokens` (`null` when
/// the completion has none). `reasoning_content` is not carried over. Ids
/// come from the completion's id, so the same completion gives the same
/// response.
#[must_use]
pub fn chat_to_response(completion: &Value, model: &str) -> Value {
    let ids = Ids::of(completion);
    let choice = completion.pointer("/choices/0");
    let message = choice.and_then(|c| c.get("message"));
    let mut output = Vec::new();
    let mut content = Vec::new();
    match message.and_then(|m| m.get("content")) {
        Some(Value::String(text)) if !text.is_empty() => content.push(text_part(text)),
        Some(Value::Array(parts)) => {
            let text: String = parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect();
            if !text.is_empty() {
                content.push(text_part(&text));
            }
        }
        _ => {}
    }
    if let Some(refusal) = message.and_then(|m| m.get("refusal")).and_then(Value::as_str).filter(|r| !r.is_empty()) {
        content.push(json!({"type": "refusal", "refusal": refusal}));
    }
    if !content.is_empty() {
        output.push(message_item(&ids.message(), "completed", content));
    }
    let calls = message.and_then(|m| m.get("tool_calls")).and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    for (n, call) in calls.iter().enumerate() {
        let text = |pointer: &str| call.pointer(pointer).and_then(Value::as_str).unwrap_or_default();
        output.push(call_item(
            &ids.call(n),
            text("/id"),
            text("/function/name"),
            text("/function/arguments"),
            "completed",
        ));
    }
    let usage = completion.get("usage").and_then(usage_of);
    let finish_reason = choice.and_then(|c| c.get("finish_reason")).and_then(Value::as_str);
    finished_response(&ids, model, finish_reason, output, usage.as_ref())
}

// ---------------------------------------------------------------------------
// Streams

/// One output item being streamed.
#[derive(Debug)]
enum Item {
    Message { id: String, text: String },
    Call { id: String, call_id: String, name: String, arguments: String, chat_index: u64 },
}

impl Item {
    fn done(&self) -> Value {
        match self {
            Item::Message { id, text } => message_item(id, "completed", vec![text_part(text)]),
            Item::Call { id, call_id, name, arguments, .. } => call_item(id, call_id, name, arguments, "completed"),
        }
    }
}

/// Chat completion chunks turned into Responses API stream events.
///
/// The first chunk (or [`finish`](Self::finish), for an empty stream)
/// sends `response.created` and `response.in_progress`. Text opens a
/// `message` item (`response.output_item.added`,
/// `response.content_part.added`) and streams as
/// `response.output_text.delta`; each tool call is a `function_call` item
/// (`response.output_item.added`, `response.function_call_arguments.delta`
/// …). Items are streamed one after another: a new one closes the open one
/// (`response.output_text.done`, `response.content_part.done`,
/// `response.function_call_arguments.done`, `response.output_item.done`).
/// [`finish`](Self::finish) closes what is open and sends
/// `response.completed`, or `response.incomplete` after a `length` or
/// `content_filter` finish, whose `response` holds the whole output and the
/// usage of the usage chunk. Every event's `sequence_number` is one more
/// than the last, from 0. Only the first choice is streamed.
#[derive(Debug)]
pub struct ChatToResponseEvents {
    model: String,
    /// From the first chunk (or, for an empty stream, the default ones).
    ids: Ids,
    started: bool,
    sequence: u64,
    items: Vec<Item>,
    /// The index in `items` of the item still streaming.
    open: Option<usize>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    finished: bool,
}

impl ChatToResponseEvents {
    /// Events for a response from `model`.
    #[must_use]
    pub fn new(model: &str) -> Self {
        ChatToResponseEvents {
            model: model.to_owned(),
            ids: Ids::of(&Value::Null),
            started: false,
            sequence: 0,
            items: Vec::new(),
            open: None,
            finish_reason: None,
            usage: None,
            finished: false,
        }
    }

    /// The events one chat chunk becomes (none after [`finish`](Self::finish)).
    pub fn push(&mut self, chunk: &Value) -> Vec<SseEvent> {
        let mut events = Vec::new();
        if self.finished {
            return events;
        }
        self.start(chunk, &mut events);
        if let Some(usage) = chunk.get("usage").and_then(usage_of) {
            self.usage = Some(usage);
        }
        let choices = chunk.get("choices").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
        for choice in choices.iter().filter(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0) {
            let delta = choice.get("delta");
            if let Some(text) = delta.and_then(|d| d.get("content")).and_then(Value::as_str).filter(|t| !t.is_empty()) {
                self.text(text, &mut events);
            }
            let calls =
                delta.and_then(|d| d.get("tool_calls")).and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
            for (position, call) in calls.iter().enumerate() {
                self.tool_call(call, position, &mut events);
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish_reason = Some(reason.to_owned());
            }
        }
        events
    }

    /// The chat stream ended: closes what is open and sends the final
    /// `response.completed` (or `response.incomplete`); nothing after the
    /// first call.
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        if self.finished {
            return events;
        }
        self.start(&Value::Null, &mut events);
        self.close(&mut events);
        self.finished = true;
        let output = self.items.iter().map(Item::done).collect();
        let response =
            finished_response(&self.ids, &self.model, self.finish_reason.as_deref(), output, self.usage.as_ref());
        let event = if response["status"] == "completed" { "response.completed" } else { "response.incomplete" };
        self.emit(&mut events, event, json!({ "response": response }));
        events
    }

    /// The first time: the ids from `chunk`, `response.created` and
    /// `response.in_progress`.
    fn start(&mut self, chunk: &Value, events: &mut Vec<SseEvent>) {
        if self.started {
            return;
        }
        self.started = true;
        self.ids = Ids::of(chunk);
        let response = response_object(&self.ids, &self.model, "in_progress", Vec::new(), None);
        self.emit(events, "response.created", json!({ "response": response }));
        self.emit(events, "response.in_progress", json!({ "response": response }));
    }

    fn emit(&mut self, events: &mut Vec<SseEvent>, event: &'static str, mut data: Value) {
        data["type"] = event.into();
        data["sequence_number"] = self.sequence.into();
        self.sequence += 1;
        events.push(SseEvent { event, data });
    }

    fn text(&mut self, text: &str, events: &mut Vec<SseEvent>) {
        let open = self.open.filter(|&i| matches!(self.items[i], Item::Message { .. }));
        let index = if let Some(index) = open {
            index
        } else {
            self.close(events);
            let id = self.ids.message();
            let index = self.items.len();
            self.items.push(Item::Message { id: id.clone(), text: String::new() });
            self.open = Some(index);
            let item = message_item(&id, "in_progress", Vec::new());
            self.emit(events, "response.output_item.added", json!({"output_index": index, "item": item}));
            let part = json!({"item_id": id, "output_index": index, "content_index": 0, "part": text_part("")});
            self.emit(events, "response.content_part.added", part);
            index
        };
        let Item::Message { id, text: so_far } = &mut self.items[index] else { return };
        so_far.push_str(text);
        let data = json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []});
        self.emit(events, "response.output_text.delta", data);
    }

    fn tool_call(&mut self, call: &Value, position: usize, events: &mut Vec<SseEvent>) {
        let chat_index = call.get("index").and_then(Value::as_u64).unwrap_or(position as u64);
        let text = |pointer: &str| call.pointer(pointer).and_then(Value::as_str).unwrap_or_default();
        let known =
            self.items.iter().position(|item| matches!(item, Item::Call { chat_index: c, .. } if *c == chat_index));
        let index = if let Some(index) = known {
            index
        } else {
            self.close(events);
            let n = self.items.iter().filter(|item| matches!(item, Item::Call { .. })).count();
            let index = self.items.len();
            let call_id = match text("/id") {
                "" => format!("call_{n}"),
                id => id.to_owned(),
            };
            let item = Item::Call {
                id: self.ids.call(n),
                call_id,
                name: text("/function/name").to_owned(),
                arguments: String::new(),
                chat_index,
            };
            let added = json!({"output_index": index, "item": call_item_of(&item, "in_progress")});
            self.items.push(item);
            self.open = Some(index);
            self.emit(events, "response.output_item.added", added);
            index
        };
        let delta = text("/function/arguments");
        let is_open = self.open == Some(index);
        let Item::Call { id, arguments, .. } = &mut self.items[index] else { return };
        if delta.is_empty() {
            return;
        }
        arguments.push_str(delta);
        // A late piece of an item already closed joins the final output only.
        if is_open {
            let data = json!({"item_id": id, "output_index": index, "delta": delta});
            self.emit(events, "response.function_call_arguments.delta", data);
        }
    }

    /// Closes the open item, if any.
    fn close(&mut self, events: &mut Vec<SseEvent>) {
        let Some(index) = self.open.take() else { return };
        let done = self.items[index].done();
        match &self.items[index] {
            Item::Message { id, text } => {
                let (id, text) = (id.clone(), text.clone());
                let data =
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []});
                self.emit(events, "response.output_text.done", data);
                let data = json!({"item_id": id, "output_index": index, "content_index": 0, "part": text_part(&text)});
                self.emit(events, "response.content_part.done", data);
            }
            Item::Call { id, name, arguments, .. } => {
                let data = json!({"item_id": id, "output_index": index, "name": name, "arguments": arguments});
                self.emit(events, "response.function_call_arguments.done", data);
            }
        }
        self.emit(events, "response.output_item.done", json!({"output_index": index, "item": done}));
    }
}

fn call_item_of(item: &Item, status: &str) -> Value {
    match item {
        Item::Call { id, call_id, name, arguments, .. } => call_item(id, call_id, name, arguments, status),
        Item::Message { id, .. } => message_item(id, status, Vec::new()),
    }
}

#[cfg(test)]
#[path = "responses_tests.rs"]
mod tests;
