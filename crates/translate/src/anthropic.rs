//! Anthropic's Messages API and OpenAI's chat completions, both ways.
//!
//! Towards an Anthropic upstream (a chat request in, Anthropic's format on
//! the wire): [`chat_to_anthropic`] builds the request, [`anthropic_to_chat`]
//! reads the answer and [`AnthropicToChat`] reads its stream. For an
//! Anthropic client at the gateway's `POST /v1/messages`, whatever provider
//! serves it: [`anthropic_request_to_chat`] reads the request,
//! [`chat_to_anthropic_message`] and [`ChatToAnthropicEvents`] write the
//! answer, [`anthropic_error`] writes a failure.
//!
//! Anthropic counts `input_tokens` apart from cache reads
//! (`cache_read_input_tokens`) and cache writes
//! (`cache_creation_input_tokens`); chat's `prompt_tokens` counts them all.
//! Each direction converts, so the gateway only ever sees [`Usage`]
//! normalised. Anthropic's `output_tokens` include thinking.
//!
//! Anthropic's wire format: <https://docs.claude.com/en/api/messages> and
//! <https://docs.claude.com/en/docs/build-with-claude/streaming>.

use std::borrow::Cow;

use serde_json::{Map, Value, json};

use crate::{AnswerError, Refusal, SseEvent, ToChatStream, Unsupported, Usage, usage_json, usage_of};

/// Why an OpenAI parameter is refused under [`Unsupported::Error`].
const NO_PLACE: &str = "Anthropic's Messages API has no equivalent";

/// A JSON object of `entries`, moved in (`json!` would copy every value
/// it is given, base64 images included).
fn object<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Object(entries.into_iter().map(|(key, value)| (key.to_owned(), value)).collect())
}

/// An OpenAI chat request body (as a client sent it to the gateway) as an
/// Anthropic Messages request body for the upstream `model`.
///
/// System and developer messages become `system`; the other messages
/// become content blocks, consecutive messages of one role merged (tool
/// results first, as Anthropic requires). `max_tokens` is the larger of
/// `max_tokens` and `max_completion_tokens`, else `default_max_tokens`
/// (Anthropic requires it). `model` and `stream_options` are never sent.
///
/// Which parameter goes where is one table, the `match` in this function:
/// `messages`, `max_tokens`, `max_completion_tokens`, `temperature`,
/// `top_p`, `top_k`, `stop`, `stream`, `tools`, `tool_choice`,
/// `parallel_tool_calls` (`false` is Anthropic's
/// `disable_parallel_tool_use`) and `user` (`metadata.user_id`) are
/// translated. Every other parameter (`n`, `logit_bias`, `logprobs`,
/// `top_logprobs`, `presence_penalty`, `frequency_penalty`, `seed`,
/// `response_format`, `reasoning_effort`, … and any field the table does
/// not know) is dropped under [`Unsupported::Drop`] and refused under
/// [`Unsupported::Error`], unless its value asks for nothing (`null`,
/// `n: 1`, `logprobs: false`, a zero penalty, `response_format` text). So is
/// a `temperature` above Anthropic's maximum of 1, a stop sequence of only
/// whitespace (Anthropic refuses them) and a tool that is not a function.
///
/// Malformed input is refused whatever the policy, naming the field
/// (`messages[2].content[0].type`), as is content Anthropic cannot take
/// (audio, a file given by id).
pub fn chat_to_anthropic(
    chat: &Map<String, Value>,
    model: &str,
    default_max_tokens: u32,
    policy: Unsupported,
) -> Result<Value, Refusal> {
    let mut out = Map::new();
    out.insert("model".into(), model.into());
    let (mut messages, mut tools, mut tool_choice) = (None, None, None);
    let mut max_tokens: Option<u64> = None;
    let mut parallel = true;
    for (key, value) in chat {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "messages" => messages = Some(value),
            // The upstream model is `model`; Anthropic always streams usage.
            "model" | "stream_options" => {}
            "max_tokens" | "max_completion_tokens" => {
                let n = value.as_u64().ok_or_else(|| Refusal::new(key, "must be a whole number"))?;
                max_tokens = Some(max_tokens.map_or(n, |m| m.max(n)));
            }
            "temperature" => {
                let t = value.as_f64().ok_or_else(|| Refusal::new(key, "must be a number"))?;
                if t > 1.0 {
                    unsupported(key, "above Anthropic's maximum of 1", policy)?;
                } else {
                    out.insert("temperature".into(), value.clone());
                }
            }
            "top_p" => {
                value.as_f64().ok_or_else(|| Refusal::new(key, "must be a number"))?;
                out.insert("top_p".into(), value.clone());
            }
            "top_k" => {
                value.as_u64().ok_or_else(|| Refusal::new(key, "must be a whole number"))?;
                out.insert("top_k".into(), value.clone());
            }
            "stop" => {
                if let Some(stops) = stop_sequences(value, policy)? {
                    out.insert("stop_sequences".into(), stops);
                }
            }
            "stream" => {
                if value.as_bool().ok_or_else(|| Refusal::new(key, "must be true or false"))? {
                    out.insert("stream".into(), Value::Bool(true));
                }
            }
            "user" => {
                let user = value.as_str().ok_or_else(|| Refusal::new(key, "must be a string"))?;
                out.insert("metadata".into(), json!({ "user_id": user }));
            }
            "tools" => tools = Some(value),
            "tool_choice" => tool_choice = Some(tool_choice_to_anthropic(value)?),
            "parallel_tool_calls" => {
                parallel = value.as_bool().ok_or_else(|| Refusal::new(key, "must be true or false"))?;
            }
            key if asks_nothing(key, value) => {}
            "audio" | "frequency_penalty" | "function_call" | "functions" | "logit_bias" | "logprobs" | "metadata"
            | "modalities" | "n" | "prediction" | "presence_penalty" | "prompt_cache_key" | "reasoning_effort"
            | "response_format" | "safety_identifier" | "seed" | "service_tier" | "store" | "top_logprobs"
            | "verbosity" | "web_search_options" => unsupported(key, NO_PLACE, policy)?,
            _ => unsupported(key, "unknown parameter; Anthropic's Messages API has no place for it", policy)?,
        }
    }
    let messages = messages.ok_or_else(|| Refusal::new("messages", "required"))?;
    let (system, messages) = messages_to_anthropic(messages)?;
    if let Some(system) = system {
        out.insert("system".into(), system);
    }
    out.insert("messages".into(), Value::Array(messages));
    out.insert("max_tokens".into(), max_tokens.unwrap_or(u64::from(default_max_tokens)).into());
    let tools = match tools {
        Some(tools) => tools_to_anthropic(tools, policy)?,
        None => Vec::new(),
    };
    // Anthropic refuses a tool choice without tools.
    if !tools.is_empty() {
        if !parallel {
            let choice = tool_choice.get_or_insert_with(|| Map::from_iter([("type".into(), "auto".into())]));
            if choice.get("type").and_then(Value::as_str) != Some("none") {
                choice.insert("disable_parallel_tool_use".into(), Value::Bool(true));
            }
        }
        if let Some(choice) = tool_choice {
            out.insert("tool_choice".into(), Value::Object(choice));
        }
        out.insert("tools".into(), Value::Array(tools));
    }
    Ok(Value::Object(out))
}

/// Refuses `field` under [`Unsupported::Error`]; lets the caller drop it under [`Unsupported::Drop`].
fn unsupported(field: &str, why: &str, policy: Unsupported) -> Result<(), Refusal> {
    match policy {
        Unsupported::Drop => Ok(()),
        Unsupported::Error => Err(Refusal::new(field, why)),
    }
}

/// Whether an unsupported parameter's value asks for what Anthropic does anyway.
fn asks_nothing(key: &str, value: &Value) -> bool {
    match key {
        "n" => value.as_u64() == Some(1),
        "logprobs" | "store" => value.as_bool() == Some(false),
        "presence_penalty" | "frequency_penalty" => value.as_f64().is_some_and(|v| v.abs() < f64::EPSILON),
        "response_format" => value.get("type").and_then(Value::as_str) == Some("text"),
        _ => false,
    }
}

/// `stop` (a string or a list of them) as `stop_sequences`, `None` when empty.
fn stop_sequences(stop: &Value, policy: Unsupported) -> Result<Option<Value>, Refusal> {
    let items = match stop {
        Value::String(_) => std::slice::from_ref(stop),
        Value::Array(items) => items.as_slice(),
        _ => return Err(Refusal::new("stop", "must be a string or a list of strings")),
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let text = item.as_str().ok_or_else(|| Refusal::new("stop", "must be a string or a list of strings"))?;
        if text.trim().is_empty() {
            unsupported("stop", "Anthropic refuses a stop sequence of only whitespace", policy)?;
        } else {
            out.push(Value::from(text));
        }
    }
    Ok((!out.is_empty()).then_some(Value::Array(out)))
}

/// `tool_choice` as Anthropic's.
fn tool_choice_to_anthropic(choice: &Value) -> Result<Map<String, Value>, Refusal> {
    let kind = match choice {
        Value::String(s) if s == "auto" => "auto",
        Value::String(s) if s == "none" => "none",
        Value::String(s) if s == "required" => "any",
        Value::Object(_) if choice.get("type").and_then(Value::as_str) == Some("function") => {
            let name = choice
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| Refusal::new("tool_choice.function.name", "required"))?;
            return Ok(Map::from_iter([("type".into(), "tool".into()), ("name".into(), name.into())]));
        }
        _ => return Err(Refusal::new("tool_choice", "must be auto, none, required or a function")),
    };
    Ok(Map::from_iter([("type".into(), kind.into())]))
}

/// Function tools as Anthropic's (`parameters` is the `input_schema`).
fn tools_to_anthropic(tools: &Value, policy: Unsupported) -> Result<Vec<Value>, Refusal> {
    let tools = tools.as_array().ok_or_else(|| Refusal::new("tools", "must be an array"))?;
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            unsupported(&format!("tools[{i}].type"), "only function tools have a place in Anthropic's format", policy)?;
            continue;
        }
        let function = tool
            .get("function")
            .filter(|f| f.is_object())
            .ok_or_else(|| Refusal::new(format!("tools[{i}].function"), "required"))?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| Refusal::new(format!("tools[{i}].function.name"), "required"))?;
        let mut anthropic = Map::new();
        anthropic.insert("name".into(), name.into());
        if let Some(description) = function.get("description").and_then(Value::as_str) {
            anthropic.insert("description".into(), description.into());
        }
        let schema = match function.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(schema @ Value::Object(_)) => schema.clone(),
            Some(_) => return Err(Refusal::new(format!("tools[{i}].function.parameters"), "must be an object")),
        };
        anthropic.insert("input_schema".into(), schema);
        copy_cache_control(tool, &mut anthropic);
        out.push(Value::Object(anthropic));
    }
    Ok(out)
}

/// Copies a part's `cache_control` (Anthropic's prompt caching, which
/// OpenAI-style clients of Anthropic models put on parts and tools).
fn copy_cache_control(from: &Value, to: &mut Map<String, Value>) {
    if let Some(cache) = from.get("cache_control").filter(|c| !c.is_null()) {
        to.insert("cache_control".into(), cache.clone());
    }
}

/// One Anthropic turn: whether it is the user's, and its blocks.
type Turn = (bool, Vec<Value>);

/// The chat messages as Anthropic's `system` and `messages`.
fn messages_to_anthropic(messages: &Value) -> Result<(Option<Value>, Vec<Value>), Refusal> {
    let messages = messages.as_array().ok_or_else(|| Refusal::new("messages", "must be an array"))?;
    let mut system = Vec::new();
    let mut turns: Vec<Turn> = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| Refusal::new(format!("messages[{i}].role"), "required"))?;
        let content = message.get("content").filter(|c| !c.is_null());
        let mut blocks = Vec::new();
        match role {
            "system" | "developer" => content_to_anthropic(content, i, Parts::Text, &mut system)?,
            "user" => content_to_anthropic(content, i, Parts::Media, &mut blocks)?,
            "assistant" => {
                content_to_anthropic(content, i, Parts::Text, &mut blocks)?;
                tool_calls_to_anthropic(message, i, &mut blocks)?;
            }
            "tool" => blocks.push(tool_result_to_anthropic(message, content, i)?),
            _ => {
                return Err(Refusal::new(
                    format!("messages[{i}].role"),
                    "must be system, developer, user, assistant or tool",
                ));
            }
        }
        push_turn(&mut turns, role != "assistant", blocks);
    }
    let system = match system.len() {
        0 => None,
        1 if system[0].as_object().is_some_and(|block| block.len() == 2) => {
            system.pop().and_then(|mut block| block.get_mut("text").map(Value::take))
        }
        _ => Some(Value::Array(system)),
    };
    let messages = turns
        .into_iter()
        .map(|(user, content)| {
            object([("role", (if user { "user" } else { "assistant" }).into()), ("content", content.into())])
        })
        .collect();
    Ok((system, messages))
}

/// Appends one message's blocks to the turns, merging a role's consecutive
/// messages (Anthropic requires turns to alternate) and keeping tool
/// results ahead of the rest of a user turn (Anthropic requires that too).
fn push_turn(turns: &mut Vec<Turn>, user: bool, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some((last_user, content)) if *last_user == user => {
            for block in blocks {
                if is_tool_result(&block) {
                    let at = content.iter().take_while(|b| is_tool_result(b)).count();
                    content.insert(at, block);
                } else {
                    content.push(block);
                }
            }
        }
        _ => turns.push((user, blocks)),
    }
}

fn is_tool_result(block: &Value) -> bool {
    block.get("type").and_then(Value::as_str) == Some("tool_result")
}

/// Which content parts a message may have.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parts {
    /// Text (and an assistant's refusal).
    Text,
    /// Text, images and files (a user's).
    Media,
}

/// A message's `content` (a string or parts) as Anthropic blocks appended to `out`.
fn content_to_anthropic(content: Option<&Value>, i: usize, parts: Parts, out: &mut Vec<Value>) -> Result<(), Refusal> {
    match content {
        None => {}
        Some(Value::String(text)) if text.is_empty() => {}
        Some(Value::String(text)) => out.push(json!({"type": "text", "text": text})),
        Some(Value::Array(items)) => {
            for (j, part) in items.iter().enumerate() {
                if let Some(block) = part_to_anthropic(part, parts, &|| format!("messages[{i}].content[{j}]"))? {
                    out.push(block);
                }
            }
        }
        Some(_) => return Err(Refusal::new(format!("messages[{i}].content"), "must be a string or an array of parts")),
    }
    Ok(())
}

/// One content part as an Anthropic block; `None` for empty text.
fn part_to_anthropic(part: &Value, parts: Parts, path: &dyn Fn() -> String) -> Result<Option<Value>, Refusal> {
    let kind =
        part.get("type").and_then(Value::as_str).ok_or_else(|| Refusal::new(format!("{}.type", path()), "required"))?;
    let mut block = Map::new();
    match (kind, parts) {
        ("text" | "refusal", _) => {
            let text = part
                .get(kind)
                .and_then(Value::as_str)
                .ok_or_else(|| Refusal::new(format!("{}.{kind}", path()), "must be a string"))?;
            if text.is_empty() {
                return Ok(None);
            }
            block.insert("type".into(), "text".into());
            block.insert("text".into(), text.into());
        }
        ("image_url", Parts::Media) => {
            let url = match part.get("image_url") {
                Some(Value::String(url)) => Some(url.as_str()),
                Some(image) => image.get("url").and_then(Value::as_str),
                None => None,
            };
            let url = url.ok_or_else(|| Refusal::new(format!("{}.image_url.url", path()), "required"))?;
            let source = if let Some((media_type, data)) = parse_data_url(url) {
                json!({"type": "base64", "media_type": media_type, "data": data})
            } else if url.starts_with("https://") || url.starts_with("http://") {
                json!({"type": "url", "url": url})
            } else {
                return Err(Refusal::new(
                    format!("{}.image_url.url", path()),
                    "must be a base64 data: URL or an http(s) URL",
                ));
            };
            block.insert("type".into(), "image".into());
            block.insert("source".into(), source);
        }
        ("file", Parts::Media) => {
            let data = part.pointer("/file/file_data").and_then(Value::as_str).and_then(parse_data_url);
            let (media_type, data) = data.ok_or_else(|| {
                Refusal::new(
                    format!("{}.file", path()),
                    "only a base64 data: URL in file_data has a place in Anthropic's format",
                )
            })?;
            block.insert("type".into(), "document".into());
            block.insert("source".into(), json!({"type": "base64", "media_type": media_type, "data": data}));
        }
        ("image_url" | "file" | "input_audio", _) => {
            return Err(Refusal::new(path(), format!("{kind} parts have no place in this message for Anthropic")));
        }
        _ => return Err(Refusal::new(format!("{}.type", path()), format!("unknown content part type {kind:?}"))),
    }
    copy_cache_control(part, &mut block);
    Ok(Some(Value::Object(block)))
}

/// `data:<media type>[;…];base64,<data>` as its media type and data.
fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let (meta, data) = url.strip_prefix("data:")?.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?.split(';').next()?;
    (!media_type.is_empty()).then_some((media_type, data))
}

/// An assistant message's `tool_calls` as `tool_use` blocks appended to `out`.
fn tool_calls_to_anthropic(message: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), Refusal> {
    let Some(calls) = message.get("tool_calls").filter(|c| !c.is_null()) else {
        return Ok(());
    };
    let calls =
        calls.as_array().ok_or_else(|| Refusal::new(format!("messages[{i}].tool_calls"), "must be an array"))?;
    for (j, call) in calls.iter().enumerate() {
        let field = |name: &str| format!("messages[{i}].tool_calls[{j}].{name}");
        let id = call.get("id").and_then(Value::as_str).ok_or_else(|| Refusal::new(field("id"), "required"))?;
        let name = call
            .pointer("/function/name")
            .and_then(Value::as_str)
            .ok_or_else(|| Refusal::new(field("function.name"), "required"))?;
        let input = match call.pointer("/function/arguments") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(Value::String(arguments)) if arguments.trim().is_empty() => Value::Object(Map::new()),
            Some(Value::String(arguments)) => serde_json::from_str(arguments)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| Refusal::new(field("function.arguments"), "must be a JSON object as a string"))?,
            Some(_) => return Err(Refusal::new(field("function.arguments"), "must be a string")),
        };
        out.push(object([("type", "tool_use".into()), ("id", id.into()), ("name", name.into()), ("input", input)]));
    }
    Ok(())
}

/// A tool message as a `tool_result` block.
fn tool_result_to_anthropic(message: &Value, content: Option<&Value>, i: usize) -> Result<Value, Refusal> {
    let id = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::new(format!("messages[{i}].tool_call_id"), "required"))?;
    let mut result = Map::new();
    result.insert("type".into(), "tool_result".into());
    result.insert("tool_use_id".into(), id.into());
    match content {
        Some(Value::String(text)) if !text.is_empty() => {
            result.insert("content".into(), text.as_str().into());
        }
        Some(Value::Array(_)) => {
            let mut blocks = Vec::new();
            content_to_anthropic(content, i, Parts::Text, &mut blocks)?;
            result.insert("content".into(), Value::Array(blocks));
        }
        None | Some(Value::String(_)) => {}
        Some(_) => return Err(Refusal::new(format!("messages[{i}].content"), "must be a string or an array of parts")),
    }
    Ok(Value::Object(result))
}

/// A chat tool call.
fn tool_call(id: &str, name: &str, arguments: String) -> Value {
    let function = object([("name", name.into()), ("arguments", arguments.into())]);
    object([("id", id.into()), ("type", "function".into()), ("function", function)])
}

/// Chat's `finish_reason` for Anthropic's `stop_reason`.
fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn, and whatever Anthropic adds.
        _ => "stop",
    }
}

/// Anthropic's `stop_reason` for chat's `finish_reason`.
fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's error type for an HTTP status (Anthropic's table; another
/// 4xx is an invalid request, anything else an API error).
fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// The HTTP status an Anthropic error type stands for (500 for `api_error`
/// and types Anthropic adds later).
fn error_status(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => 500,
    }
}

/// Anthropic's `error` object as [`AnswerError::Reported`], in OpenAI's error shape.
fn reported(error: Option<&Value>) -> AnswerError {
    let field = |name: &str| error.and_then(|e| e.get(name)).and_then(Value::as_str);
    let kind = field("type").unwrap_or("api_error");
    let body = json!({"error": {"message": field("message").unwrap_or(""), "type": kind, "code": kind}});
    AnswerError::Reported { status: error_status(kind), body: body.to_string() }
}

/// Anthropic's token counts, kept apart as Anthropic gives them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct AnthropicUsage {
    input: u64,
    cache_read: u64,
    cache_write: u64,
    output: u64,
}

impl AnthropicUsage {
    /// Updates the counts `usage` gives (Anthropic's counts are cumulative).
    fn update(&mut self, usage: &Value) {
        let fields = [
            ("input_tokens", &mut self.input),
            ("cache_read_input_tokens", &mut self.cache_read),
            ("cache_creation_input_tokens", &mut self.cache_write),
            ("output_tokens", &mut self.output),
        ];
        for (key, count) in fields {
            if let Some(n) = usage.get(key).and_then(Value::as_u64) {
                *count = n;
            }
        }
    }

    /// Normalised: the prompt counts its cache reads and writes.
    fn normalised(self) -> Usage {
        Usage {
            input_tokens: self.input.saturating_add(self.cache_read).saturating_add(self.cache_write),
            output_tokens: self.output,
            cached_tokens: self.cache_read,
            cache_write_tokens: self.cache_write,
            reasoning_tokens: 0,
        }
    }
}

/// Normalised usage as Anthropic writes it: `input_tokens` without cache reads and writes.
fn usage_to_anthropic(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.input_tokens.saturating_sub(usage.cached_tokens).saturating_sub(usage.cache_write_tokens),
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "output_tokens": usage.output_tokens,
    })
}

/// An Anthropic (non-streamed) answer as an OpenAI `chat.completion`.
///
/// The id is `chatcmpl-` and Anthropic's; `created` is 0 (this crate reads
/// no clock). Text blocks are joined into `content` (`null` when the answer
/// is only tool calls), `tool_use` blocks become `tool_calls`, thinking
/// becomes `reasoning_content`. Usage is normalised (see the module docs);
/// without Anthropic's counts the completion has no `usage`.
///
/// An Anthropic `error` body is [`AnswerError::Reported`] with the status
/// its type stands for (`overloaded_error` is 529); anything else that is
/// not an Anthropic message is [`AnswerError::Malformed`].
pub fn anthropic_to_chat(message: &Value) -> Result<Value, AnswerError> {
    let malformed = |what: &str| AnswerError::Malformed(what.to_owned());
    let body = message.as_object().ok_or_else(|| malformed("the answer is not a JSON object"))?;
    match body.get("type").and_then(Value::as_str) {
        Some("message") => {}
        Some("error") => return Err(reported(body.get("error"))),
        Some(_) => return Err(malformed("`type` is not \"message\"")),
        None => return Err(malformed("no `type`")),
    }
    let blocks = body.get("content").and_then(Value::as_array).ok_or_else(|| malformed("no `content` array"))?;
    let (mut text, mut reasoning, mut has_text) = (String::new(), String::new(), false);
    let mut tool_calls = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let str_field = |name: &str| block.get(name).and_then(Value::as_str);
        match str_field("type") {
            Some("text") => {
                has_text = true;
                text.push_str(str_field("text").unwrap_or(""));
            }
            Some("thinking") => reasoning.push_str(str_field("thinking").unwrap_or("")),
            Some("tool_use") => {
                let (Some(id), Some(name)) = (str_field("id"), str_field("name")) else {
                    return Err(AnswerError::Malformed(format!("content[{i}] is a tool_use without `id` or `name`")));
                };
                let arguments = block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string);
                tool_calls.push(tool_call(id, name, arguments));
            }
            // redacted_thinking, server tools' blocks: chat has no place for them.
            _ => {}
        }
    }
    let mut reply = Map::new();
    reply.insert("role".into(), "assistant".into());
    let content = if has_text || tool_calls.is_empty() { Value::String(text) } else { Value::Null };
    reply.insert("content".into(), content);
    if !tool_calls.is_empty() {
        reply.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    if !reasoning.is_empty() {
        reply.insert("reasoning_content".into(), Value::String(reasoning));
    }
    let id = body.get("id").and_then(Value::as_str).unwrap_or("");
    let stop = body.get("stop_reason").and_then(Value::as_str);
    let choice = object([
        ("index", 0.into()),
        ("message", Value::Object(reply)),
        ("logprobs", Value::Null),
        ("finish_reason", stop.map(finish_reason).into()),
    ]);
    let mut completion = object([
        ("id", format!("chatcmpl-{id}").into()),
        ("object", "chat.completion".into()),
        ("created", 0.into()),
        ("model", body.get("model").and_then(Value::as_str).unwrap_or("").into()),
        ("choices", Value::Array(vec![choice])),
    ]);
    let usage = body.get("usage").filter(|u| u.get("input_tokens").is_some() && u.get("output_tokens").is_some());
    if let (Some(usage), Some(out)) = (usage, completion.as_object_mut()) {
        let mut counts = AnthropicUsage::default();
        counts.update(usage);
        out.insert("usage".into(), usage_json(&counts.normalised()));
    }
    Ok(completion)
}

/// Where an [`AnthropicToChat`] is in Anthropic's stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Phase {
    /// Before `message_start`.
    #[default]
    Waiting,
    /// Between `message_start` and `message_stop`.
    Streaming,
    /// After `message_stop`: everything is sent, `[DONE]` included.
    Done,
}

/// Anthropic's stream (its events' `data`) as OpenAI chat-completion
/// chunks: a [`ToChatStream`].
///
/// `message_start` gives a first chunk with the assistant's role,
/// `text_delta` content, `thinking_delta` `reasoning_content`, a `tool_use`
/// block a tool call (its index counts tool calls, not content blocks) and
/// `input_json_delta` its arguments. `message_stop` gives the last chunk
/// with the finish reason, a usage chunk (input counts from
/// `message_start`, output from `message_delta`, normalised) and `[DONE]`.
/// An `error` event is [`AnswerError::Reported`]; `ping` and event types
/// Anthropic adds later give nothing.
#[derive(Debug, Default)]
pub struct AnthropicToChat {
    /// Every chunk's JSON text up to its choices (`{"id":…,"choices":[`);
    /// empty before `message_start`.
    head: String,
    phase: Phase,
    /// The `tool_use` blocks seen: their content block index, in the order
    /// of their tool call index.
    tools: Vec<u64>,
    stop_reason: Option<String>,
    usage: AnthropicUsage,
}

impl AnthropicToChat {
    /// A translator for one stream.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A chunk with one choice: `delta` (JSON text) and its finish reason.
    fn chunk(&self, delta: &str, finish_reason: Option<&str>) -> String {
        let finish = finish_reason.map_or_else(|| "null".to_owned(), |f| format!("\"{f}\""));
        format!(r#"{}{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]}}"#, self.head)
    }

    fn message_start(&mut self, event: &Value, out: &mut Vec<String>) -> Result<(), AnswerError> {
        if self.phase != Phase::Waiting {
            return Err(AnswerError::Malformed("a second message_start".into()));
        }
        let message = event
            .get("message")
            .filter(|m| m.is_object())
            .ok_or_else(|| AnswerError::Malformed("message_start has no `message`".into()))?;
        let field = |name: &str| message.get(name).and_then(Value::as_str).unwrap_or("");
        let id = Value::String(format!("chatcmpl-{}", field("id")));
        let model = Value::from(field("model"));
        self.head = format!(r#"{{"id":{id},"object":"chat.completion.chunk","created":0,"model":{model},"choices":["#);
        if let Some(usage) = message.get("usage") {
            self.usage.update(usage);
        }
        self.phase = Phase::Streaming;
        out.push(self.chunk(r#"{"role":"assistant","content":""}"#, None));
        Ok(())
    }

    fn block_start(&mut self, event: &Value, out: &mut Vec<String>) -> Result<(), AnswerError> {
        let malformed = |what: &str| AnswerError::Malformed(format!("content_block_start {what}"));
        let index = event.get("index").and_then(Value::as_u64).ok_or_else(|| malformed("has no `index`"))?;
        let block = event.get("content_block").ok_or_else(|| malformed("has no `content_block`"))?;
        let field = |name: &str| block.get(name).and_then(Value::as_str);
        match field("type") {
            Some("text") => self.text(field("text"), "content", out),
            Some("thinking") => self.text(field("thinking"), "reasoning_content", out),
            Some("tool_use") => {
                let (Some(id), Some(name)) = (field("id"), field("name")) else {
                    return Err(malformed("is a tool_use without `id` or `name`"));
                };
                let arguments = match block.get("input") {
                    Some(input @ Value::Object(fields)) if !fields.is_empty() => input.to_string(),
                    _ => String::new(),
                };
                let delta = json!({"tool_calls": [{
                    "index": self.tools.len(),
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }]});
                self.tools.push(index);
                out.push(self.chunk(&delta.to_string(), None));
            }
            // redacted_thinking, server tools' blocks, and whatever Anthropic adds.
            _ => {}
        }
        Ok(())
    }

    fn block_delta(&self, event: &Value, out: &mut Vec<String>) -> Result<(), AnswerError> {
        let malformed = |what: &str| AnswerError::Malformed(format!("content_block_delta {what}"));
        let index = event.get("index").and_then(Value::as_u64).ok_or_else(|| malformed("has no `index`"))?;
        let delta = event.get("delta").ok_or_else(|| malformed("has no `delta`"))?;
        let field = |name: &str| delta.get(name).and_then(Value::as_str);
        match field("type") {
            Some("text_delta") => self.text(field("text"), "content", out),
            Some("thinking_delta") => self.text(field("thinking"), "reasoning_content", out),
            Some("input_json_delta") => {
                let arguments = field("partial_json").unwrap_or("");
                // A server tool's block streams its input too: not a tool call.
                let tool = self.tools.iter().position(|&block| block == index);
                if let (Some(tool), false) = (tool, arguments.is_empty()) {
                    let delta = json!({"tool_calls": [{"index": tool, "function": {"arguments": arguments}}]});
                    out.push(self.chunk(&delta.to_string(), None));
                }
            }
            // signature_delta, citations_delta, and whatever Anthropic adds.
            _ => {}
        }
        Ok(())
    }

    /// A chunk of `text` under `key`, unless there is none.
    fn text(&self, text: Option<&str>, key: &str, out: &mut Vec<String>) {
        if let Some(text) = text.filter(|t| !t.is_empty()) {
            let mut delta = Map::new();
            delta.insert(key.into(), text.into());
            out.push(self.chunk(&Value::Object(delta).to_string(), None));
        }
    }

    fn message_stop(&mut self, out: &mut Vec<String>) {
        let finish = finish_reason(self.stop_reason.as_deref().unwrap_or("end_turn"));
        out.push(self.chunk("{}", Some(finish)));
        out.push(format!(r#"{}],"usage":{}}}"#, self.head, usage_json(&self.usage.normalised())));
        out.push("[DONE]".to_owned());
        self.phase = Phase::Done;
    }
}

impl ToChatStream for AnthropicToChat {
    fn push(&mut self, data: &str) -> Result<Vec<String>, AnswerError> {
        let mut out = Vec::new();
        if self.phase == Phase::Done {
            return Ok(out);
        }
        let event: Value =
            serde_json::from_str(data).map_err(|_| AnswerError::Malformed("an event's data is not JSON".into()))?;
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| AnswerError::Malformed("an event has no `type`".into()))?;
        match kind {
            "error" => return Err(reported(event.get("error"))),
            "message_start" => self.message_start(&event, &mut out)?,
            "content_block_start" | "content_block_delta" | "content_block_stop" | "message_delta" | "message_stop"
                if self.phase == Phase::Waiting =>
            {
                return Err(AnswerError::Malformed(format!("{kind} came before message_start")));
            }
            "content_block_start" => self.block_start(&event, &mut out)?,
            "content_block_delta" => self.block_delta(&event, &mut out)?,
            "message_delta" => {
                if let Some(stop) = event.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop_reason = Some(stop.to_owned());
                }
                if let Some(usage) = event.get("usage") {
                    self.usage.update(usage);
                }
            }
            "message_stop" => self.message_stop(&mut out),
            // ping, content_block_stop, and event types Anthropic adds.
            _ => {}
        }
        Ok(out)
    }

    fn finish(&mut self) -> Result<Vec<String>, AnswerError> {
        match self.phase {
            Phase::Done => Ok(Vec::new()),
            Phase::Waiting | Phase::Streaming => {
                Err(AnswerError::Malformed("the stream ended before message_stop".into()))
            }
        }
    }
}

/// An Anthropic error body for an HTTP `status`:
/// `{"type": "error", "error": {"type", "message"}}`, the type Anthropic
/// uses for that status (`overloaded_error` for 529 and 503,
/// `invalid_request_error` for a 4xx without a type of its own, `api_error`
/// for anything else).
#[must_use]
pub fn anthropic_error(status: u16, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

/// `value`, unless it is missing or `null`.
fn present<'a>(body: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    body.get(key).filter(|v| !v.is_null())
}

/// An Anthropic client's Messages request as an OpenAI chat request body.
///
/// `system` becomes a system message; user content blocks become parts
/// (images as `image_url`, base64 as a data: URL; PDF documents as `file`),
/// `tool_result` blocks tool messages, assistant `tool_use` blocks
/// `tool_calls`; thinking blocks are left out (chat has no place to send
/// them back). `tools`, `tool_choice` (`disable_parallel_tool_use` is
/// `parallel_tool_calls: false`), `stop_sequences` (as `stop`),
/// `max_tokens` (required), `temperature`, `top_p`, `stream` (asking for
/// usage in the stream) and `metadata.user_id` (as `user`) are translated;
/// `model` is kept as given; `top_k`, `thinking` and anything else are
/// dropped. Cache breakpoints (`cache_control`) stay on their parts and tools.
pub fn anthropic_request_to_chat(body: &Value) -> Result<Map<String, Value>, Refusal> {
    let body = body.as_object().ok_or_else(|| Refusal::new("body", "must be a JSON object"))?;
    let mut out = Map::new();
    if let Some(model) = body.get("model") {
        out.insert("model".into(), model.clone());
    }
    let max_tokens = present(body, "max_tokens").ok_or_else(|| Refusal::new("max_tokens", "required"))?;
    let max_tokens = max_tokens.as_u64().ok_or_else(|| Refusal::new("max_tokens", "must be a whole number"))?;
    let list = present(body, "messages").ok_or_else(|| Refusal::new("messages", "required"))?;
    let list = list.as_array().ok_or_else(|| Refusal::new("messages", "must be an array"))?;
    let mut messages = Vec::with_capacity(list.len() + 1);
    if let Some(system) = present(body, "system") {
        messages.extend(system_to_chat(system)?);
    }
    for (i, message) in list.iter().enumerate() {
        message_to_chat(message, i, &mut messages)?;
    }
    out.insert("messages".into(), Value::Array(messages));
    out.insert("max_tokens".into(), max_tokens.into());
    for key in ["temperature", "top_p"] {
        if let Some(value) = present(body, key) {
            value.as_f64().ok_or_else(|| Refusal::new(key, "must be a number"))?;
            out.insert(key.into(), value.clone());
        }
    }
    if let Some(stops) = present(body, "stop_sequences") {
        let valid = stops.as_array().is_some_and(|s| s.iter().all(Value::is_string));
        if !valid {
            return Err(Refusal::new("stop_sequences", "must be a list of strings"));
        }
        out.insert("stop".into(), stops.clone());
    }
    if let Some(stream) = present(body, "stream")
        && stream.as_bool().ok_or_else(|| Refusal::new("stream", "must be true or false"))?
    {
        out.insert("stream".into(), Value::Bool(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(user) = body.get("metadata").and_then(|m| m.get("user_id")).and_then(Value::as_str) {
        out.insert("user".into(), user.into());
    }
    if let Some(tools) = present(body, "tools") {
        out.insert("tools".into(), tools_to_chat(tools)?);
    }
    if let Some(choice) = present(body, "tool_choice") {
        tool_choice_to_chat(choice, &mut out)?;
    }
    Ok(out)
}

/// `system` (a string or text blocks) as a system message; none when empty.
fn system_to_chat(system: &Value) -> Result<Option<Value>, Refusal> {
    let content = match system {
        Value::String(text) if text.is_empty() => return Ok(None),
        Value::String(text) => Value::String(text.clone()),
        Value::Array(blocks) => {
            let mut parts = Vec::with_capacity(blocks.len());
            for (k, block) in blocks.iter().enumerate() {
                if block.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(Refusal::new(format!("system[{k}].type"), "must be text"));
                }
                parts.push(text_part(block));
            }
            if parts.is_empty() {
                return Ok(None);
            }
            parts_content(parts)
        }
        _ => return Err(Refusal::new("system", "must be a string or a list of text blocks")),
    };
    Ok(Some(object([("role", "system".into()), ("content", content)])))
}

/// A text block as a chat text part (its cache breakpoint kept).
fn text_part(block: &Value) -> Value {
    let mut part = Map::new();
    part.insert("type".into(), "text".into());
    part.insert("text".into(), block.get("text").and_then(Value::as_str).unwrap_or("").into());
    copy_cache_control(block, &mut part);
    Value::Object(part)
}

/// Parts as a message's `content`: one plain text part is a string.
fn parts_content(mut parts: Vec<Value>) -> Value {
    if let [Value::Object(part)] = parts.as_mut_slice()
        && part.len() == 2
        && let Some(text @ Value::String(_)) = part.remove("text")
    {
        return text;
    }
    Value::Array(parts)
}

/// One Anthropic message as chat messages appended to `out` (a user
/// message's tool results are tool messages of their own).
fn message_to_chat(message: &Value, i: usize, out: &mut Vec<Value>) -> Result<(), Refusal> {
    let role = message.get("role").and_then(Value::as_str);
    let content = message.get("content").ok_or_else(|| Refusal::new(format!("messages[{i}].content"), "required"))?;
    match (role, content) {
        (Some(role @ ("user" | "assistant")), Value::String(text)) => {
            out.push(json!({"role": role, "content": text}));
        }
        (Some("user"), Value::Array(blocks)) => user_to_chat(blocks, i, out)?,
        (Some("assistant"), Value::Array(blocks)) => out.push(assistant_to_chat(blocks, i)?),
        (Some("user" | "assistant"), _) => {
            return Err(Refusal::new(format!("messages[{i}].content"), "must be a string or a list of blocks"));
        }
        _ => return Err(Refusal::new(format!("messages[{i}].role"), "must be user or assistant")),
    }
    Ok(())
}

fn block_type<'a>(block: &'a Value, path: &dyn Fn() -> String) -> Result<&'a str, Refusal> {
    block.get("type").and_then(Value::as_str).ok_or_else(|| Refusal::new(format!("{}.type", path()), "required"))
}

/// A user message's blocks as chat messages: its tool results as tool
/// messages (chat wants them right after the assistant's calls, as
/// Anthropic wants them first), then one user message with the rest.
/// Images in tool results, which a chat tool message cannot hold, open
/// that user message.
fn user_to_chat(blocks: &[Value], i: usize, out: &mut Vec<Value>) -> Result<(), Refusal> {
    let (mut images, mut parts) = (Vec::new(), Vec::new());
    for (j, block) in blocks.iter().enumerate() {
        let path = || format!("messages[{i}].content[{j}]");
        match block_type(block, &path)? {
            "text" => parts.push(text_part(block)),
            "image" => parts.push(image_to_chat(block, &path)?),
            "document" => parts.push(document_to_chat(block, &path)?),
            "tool_result" => out.push(tool_result_to_chat(block, &path, &mut images)?),
            kind => {
                return Err(Refusal::new(format!("{}.type", path()), format!("{kind} blocks have no place in chat")));
            }
        }
    }
    images.append(&mut parts);
    if !images.is_empty() {
        out.push(object([("role", "user".into()), ("content", parts_content(images))]));
    }
    Ok(())
}

/// A block's `source`, its `type`, and a string field of it.
fn source<'a>(block: &'a Value, path: &dyn Fn() -> String) -> Result<(&'a str, &'a Value), Refusal> {
    let source = block.get("source").ok_or_else(|| Refusal::new(format!("{}.source", path()), "required"))?;
    let kind = source
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::new(format!("{}.source.type", path()), "required"))?;
    Ok((kind, source))
}

/// A base64 source as a data: URL.
fn data_url(source: &Value, path: &dyn Fn() -> String) -> Result<String, Refusal> {
    let field = |name: &str| {
        source
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| Refusal::new(format!("{}.source.{name}", path()), "required"))
    };
    Ok(format!("data:{};base64,{}", field("media_type")?, field("data")?))
}

fn image_to_chat(block: &Value, path: &dyn Fn() -> String) -> Result<Value, Refusal> {
    let url = match source(block, path)? {
        ("base64", source) => data_url(source, path)?,
        ("url", source) => source
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| Refusal::new(format!("{}.source.url", path()), "required"))?
            .to_owned(),
        _ => {
            return Err(Refusal::new(
                format!("{}.source.type", path()),
                "only base64 and url images have a place in chat",
            ));
        }
    };
    let mut part = Map::new();
    part.insert("type".into(), "image_url".into());
    part.insert("image_url".into(), object([("url", url.into())]));
    copy_cache_control(block, &mut part);
    Ok(Value::Object(part))
}

fn document_to_chat(block: &Value, path: &dyn Fn() -> String) -> Result<Value, Refusal> {
    let mut part = match source(block, path)? {
        ("base64", source) => {
            let mut part = Map::new();
            part.insert("type".into(), "file".into());
            part.insert("file".into(), object([("file_data", data_url(source, path)?.into())]));
            part
        }
        ("text", source) => {
            let mut part = Map::new();
            part.insert("type".into(), "text".into());
            part.insert("text".into(), source.get("data").and_then(Value::as_str).unwrap_or("").into());
            part
        }
        _ => {
            return Err(Refusal::new(
                format!("{}.source.type", path()),
                "only base64 and text documents have a place in chat",
            ));
        }
    };
    copy_cache_control(block, &mut part);
    Ok(Value::Object(part))
}

/// A `tool_result` block as a tool message (`is_error` has no place in
/// chat); its images go to `images`.
fn tool_result_to_chat(block: &Value, path: &dyn Fn() -> String, images: &mut Vec<Value>) -> Result<Value, Refusal> {
    let id = block
        .get("tool_use_id")
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::new(format!("{}.tool_use_id", path()), "required"))?;
    let content = match block.get("content") {
        None | Some(Value::Null) => Value::String(String::new()),
        Some(text @ Value::String(_)) => text.clone(),
        Some(Value::Array(items)) => {
            let mut parts = Vec::with_capacity(items.len());
            for (k, item) in items.iter().enumerate() {
                let path = || format!("{}.content[{k}]", path());
                match block_type(item, &path)? {
                    "text" => parts.push(text_part(item)),
                    "image" => images.push(image_to_chat(item, &path)?),
                    kind => {
                        let why = format!("{kind} blocks have no place in a chat tool message");
                        return Err(Refusal::new(format!("{}.type", path()), why));
                    }
                }
            }
            parts_content(parts)
        }
        Some(_) => return Err(Refusal::new(format!("{}.content", path()), "must be a string or a list of blocks")),
    };
    Ok(object([("role", "tool".into()), ("tool_call_id", id.into()), ("content", content)]))
}

/// An assistant message's blocks as one chat assistant message.
fn assistant_to_chat(blocks: &[Value], i: usize) -> Result<Value, Refusal> {
    let mut text = String::new();
    let mut calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let path = || format!("messages[{i}].content[{j}]");
        let field = |name: &str| {
            block
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| Refusal::new(format!("{}.{name}", path()), "required"))
        };
        match block_type(block, &path)? {
            "text" => text.push_str(field("text")?),
            "tool_use" => {
                let arguments = block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string);
                calls.push(tool_call(field("id")?, field("name")?, arguments));
            }
            // Chat has no place to send reasoning back.
            "thinking" | "redacted_thinking" => {}
            kind => {
                return Err(Refusal::new(format!("{}.type", path()), format!("{kind} blocks have no place in chat")));
            }
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    let content = if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) };
    message.insert("content".into(), content);
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    Ok(Value::Object(message))
}

/// Anthropic's tools as chat function tools (`input_schema` is `parameters`).
fn tools_to_chat(tools: &Value) -> Result<Value, Refusal> {
    let tools = tools.as_array().ok_or_else(|| Refusal::new("tools", "must be an array"))?;
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        // A custom tool has no type or "custom"; the others run at Anthropic.
        if let Some(kind) = tool.get("type").and_then(Value::as_str).filter(|&k| k != "custom") {
            return Err(Refusal::new(format!("tools[{i}].type"), format!("{kind} is a server tool: no place in chat")));
        }
        let name = tool
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| Refusal::new(format!("tools[{i}].name"), "required"))?;
        let mut function = Map::new();
        function.insert("name".into(), name.into());
        if let Some(description) = tool.get("description").and_then(Value::as_str) {
            function.insert("description".into(), description.into());
        }
        if let Some(schema) = tool.get("input_schema") {
            function.insert("parameters".into(), schema.clone());
        }
        let mut chat = Map::new();
        chat.insert("type".into(), "function".into());
        chat.insert("function".into(), Value::Object(function));
        copy_cache_control(tool, &mut chat);
        out.push(Value::Object(chat));
    }
    Ok(Value::Array(out))
}

/// Anthropic's `tool_choice` as chat's `tool_choice` and `parallel_tool_calls`.
fn tool_choice_to_chat(choice: &Value, out: &mut Map<String, Value>) -> Result<(), Refusal> {
    let chat = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => Value::from("auto"),
        Some("any") => Value::from("required"),
        Some("none") => Value::from("none"),
        Some("tool") => {
            let name = choice
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| Refusal::new("tool_choice.name", "required"))?;
            json!({"type": "function", "function": {"name": name}})
        }
        _ => return Err(Refusal::new("tool_choice.type", "must be auto, any, tool or none")),
    };
    out.insert("tool_choice".into(), chat);
    if choice.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
        out.insert("parallel_tool_calls".into(), Value::Bool(false));
    }
    Ok(())
}

/// Anthropic's message id for a chat completion's id.
fn message_id(chat_id: &str) -> String {
    let id = chat_id.strip_prefix("chatcmpl-").unwrap_or(chat_id);
    if id.is_empty() { "msg_modelfleet".to_owned() } else { format!("msg_{id}") }
}

/// A chat message's `content` (a string or text parts) as one text.
fn chat_text(content: Option<&Value>) -> Cow<'_, str> {
    match content {
        Some(Value::String(text)) => Cow::Borrowed(text),
        Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect(),
        _ => Cow::Borrowed(""),
    }
}

/// A chat completion as an Anthropic message (non-streamed), answering an
/// Anthropic client that asked for `model`.
///
/// The id is `msg_` and the completion's (without `chatcmpl-`);
/// `reasoning_content` becomes a thinking block (with an empty signature),
/// content a text block (a refusal too), tool calls `tool_use` blocks (their
/// arguments parsed, `{}` when they are not a JSON object). The finish
/// reason maps back (`length` is `max_tokens`, `tool_calls` is `tool_use`,
/// `content_filter` is `refusal`, anything else `end_turn`); usage is
/// Anthropic's (`input_tokens` without cache reads and writes). Never fails:
/// what is missing is left out.
#[must_use]
pub fn chat_to_anthropic_message(completion: &Value, model: &str) -> Value {
    let choice = completion.get("choices").and_then(Value::as_array).and_then(|c| c.first());
    let message = choice.and_then(|c| c.get("message"));
    let mut content = Vec::new();
    if let Some(message) = message {
        let field = |name: &str| message.get(name).and_then(Value::as_str).filter(|t| !t.is_empty());
        if let Some(thinking) = field("reasoning_content") {
            content.push(json!({"type": "thinking", "thinking": thinking, "signature": ""}));
        }
        let text = chat_text(message.get("content"));
        if let Some(text) = Some(text.as_ref()).filter(|t| !t.is_empty()).or_else(|| field("refusal")) {
            content.push(json!({"type": "text", "text": text}));
        }
        let calls = message.get("tool_calls").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
        for (j, call) in calls.iter().enumerate() {
            let function = |name: &str| call.get("function").and_then(|f| f.get(name)).and_then(Value::as_str);
            let input = function("arguments")
                .and_then(|a| serde_json::from_str::<Value>(a).ok())
                .filter(Value::is_object)
                .unwrap_or_else(|| Value::Object(Map::new()));
            let id = call.get("id").and_then(Value::as_str).map_or_else(|| format!("toolu_{j}"), str::to_owned);
            let name = function("name").unwrap_or("").into();
            content.push(object([("type", "tool_use".into()), ("id", id.into()), ("name", name), ("input", input)]));
        }
    }
    let finish = choice.and_then(|c| c.get("finish_reason")).and_then(Value::as_str).unwrap_or("stop");
    let usage = completion.get("usage").and_then(usage_of).unwrap_or(Usage::new(0, 0));
    object([
        ("id", message_id(completion.get("id").and_then(Value::as_str).unwrap_or("")).into()),
        ("type", "message".into()),
        ("role", "assistant".into()),
        ("model", model.into()),
        ("content", Value::Array(content)),
        ("stop_reason", stop_reason(finish).into()),
        ("stop_sequence", Value::Null),
        ("usage", usage_to_anthropic(&usage)),
    ])
}

/// The content block a [`ChatToAnthropicEvents`] has open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    /// A tool call, by its chat index.
    Tool(u64),
}

/// A chat stream (OpenAI chunks) as Anthropic's stream events, for an
/// Anthropic client.
///
/// The first [`push`](Self::push) (or [`finish`](Self::finish), for a
/// stream that gave nothing) sends `message_start` with the estimated
/// input tokens; `reasoning_content`, content and each tool call become a
/// content block (`content_block_start`, its deltas, `content_block_stop`,
/// in order, one open at a time). [`finish`](Self::finish) closes what is
/// open and sends `message_delta` (the stop reason, and the usage: from the
/// stream's usage chunk when one came, corrected input included) and
/// `message_stop`. After that, nothing more is sent.
#[derive(Debug)]
pub struct ChatToAnthropicEvents {
    model: String,
    input_tokens: u64,
    started: bool,
    finished: bool,
    open: Option<Block>,
    /// The index the next content block gets.
    next_block: u64,
    /// Each tool call seen: its chat index and its content block index.
    tools: Vec<(u64, u64)>,
    stop_reason: Option<&'static str>,
    usage: Option<Usage>,
}

impl ChatToAnthropicEvents {
    /// A translator for one stream answering for `model`, whose prompt was
    /// estimated at `input_tokens`.
    #[must_use]
    pub fn new(model: &str, input_tokens: u64) -> Self {
        ChatToAnthropicEvents {
            model: model.to_owned(),
            input_tokens,
            started: false,
            finished: false,
            open: None,
            next_block: 0,
            tools: Vec::new(),
            stop_reason: None,
            usage: None,
        }
    }

    /// One chat chunk's events (maybe none).
    pub fn push(&mut self, chunk: &Value) -> Vec<SseEvent> {
        let mut events = Vec::new();
        if self.finished {
            return events;
        }
        self.start(chunk.get("id").and_then(Value::as_str), &mut events);
        if let Some(usage) = chunk.get("usage").and_then(usage_of) {
            self.usage = Some(usage);
        }
        let Some(choice) = chunk.get("choices").and_then(Value::as_array).and_then(|c| c.first()) else {
            return events;
        };
        if let Some(delta) = choice.get("delta") {
            let text = |name: &str| delta.get(name).and_then(Value::as_str).filter(|t| !t.is_empty());
            if let Some(thinking) = text("reasoning_content") {
                self.open_block(Block::Thinking, &mut events);
                self.delta(json!({"type": "thinking_delta", "thinking": thinking}), &mut events);
            }
            for key in ["content", "refusal"] {
                if let Some(text) = text(key) {
                    self.open_block(Block::Text, &mut events);
                    self.delta(json!({"type": "text_delta", "text": text}), &mut events);
                }
            }
            let calls = delta.get("tool_calls").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
            for (position, call) in (0u64..).zip(calls) {
                self.tool_call(call, position, &mut events);
            }
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop_reason = Some(stop_reason(finish));
        }
        events
    }

    /// The chat stream ended: what closes the message.
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        if self.finished {
            return events;
        }
        self.start(None, &mut events);
        self.close(&mut events);
        self.finished = true;
        let usage = self.usage.as_ref().map_or_else(|| json!({"output_tokens": 0}), usage_to_anthropic);
        let stop = self.stop_reason.unwrap_or("end_turn");
        events.push(SseEvent {
            event: "message_delta",
            data: object([
                ("type", "message_delta".into()),
                ("delta", json!({"stop_reason": stop, "stop_sequence": null})),
                ("usage", usage),
            ]),
        });
        events.push(SseEvent { event: "message_stop", data: json!({"type": "message_stop"}) });
        events
    }

    fn start(&mut self, chat_id: Option<&str>, events: &mut Vec<SseEvent>) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({
            "id": message_id(chat_id.unwrap_or("")),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        });
        events.push(SseEvent {
            event: "message_start",
            data: object([("type", "message_start".into()), ("message", message)]),
        });
    }

    /// Closes the open block, if any.
    fn close(&mut self, events: &mut Vec<SseEvent>) {
        if self.open.take().is_some() {
            let index = self.next_block - 1;
            events.push(SseEvent {
                event: "content_block_stop",
                data: json!({"type": "content_block_stop", "index": index}),
            });
        }
    }

    /// Opens a new block (closing the open one) and returns its index.
    fn open(&mut self, block: Block, content_block: Value, events: &mut Vec<SseEvent>) -> u64 {
        self.close(events);
        let index = self.next_block;
        self.next_block += 1;
        self.open = Some(block);
        events.push(SseEvent {
            event: "content_block_start",
            data: object([
                ("type", "content_block_start".into()),
                ("index", index.into()),
                ("content_block", content_block),
            ]),
        });
        index
    }

    /// Makes a text or thinking block the open one.
    fn open_block(&mut self, block: Block, events: &mut Vec<SseEvent>) {
        if self.open == Some(block) {
            return;
        }
        let content_block = match block {
            Block::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
            Block::Text | Block::Tool(_) => json!({"type": "text", "text": ""}),
        };
        self.open(block, content_block, events);
    }

    /// A delta of the open block.
    fn delta(&self, delta: Value, events: &mut Vec<SseEvent>) {
        events.push(SseEvent {
            event: "content_block_delta",
            data: object([
                ("type", "content_block_delta".into()),
                ("index", (self.next_block - 1).into()),
                ("delta", delta),
            ]),
        });
    }

    /// One tool call delta: a new call opens a `tool_use` block; its
    /// arguments stream as `input_json_delta`. A late delta of a call whose
    /// block was closed goes to that block's index (clients gather deltas
    /// by index).
    fn tool_call(&mut self, call: &Value, position: u64, events: &mut Vec<SseEvent>) {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(position);
        let function = |name: &str| call.get("function").and_then(|f| f.get(name)).and_then(Value::as_str);
        let block = if let Some(&(_, block)) = self.tools.iter().find(|(tool, _)| *tool == index) {
            block
        } else {
            let id = call.get("id").and_then(Value::as_str).map_or_else(|| format!("toolu_{index}"), str::to_owned);
            let content_block =
                json!({"type": "tool_use", "id": id, "name": function("name").unwrap_or(""), "input": {}});
            let block = self.open(Block::Tool(index), content_block, events);
            self.tools.push((index, block));
            block
        };
        if let Some(arguments) = function("arguments").filter(|a| !a.is_empty()) {
            events.push(SseEvent {
                event: "content_block_delta",
                data: json!({
                    "type": "content_block_delta",
                    "index": block,
                    "delta": {"type": "input_json_delta", "partial_json": arguments},
                }),
            });
        }
    }
}

#[cfg(test)]
#[path = "anthropic_tests.rs"]
mod tests;
