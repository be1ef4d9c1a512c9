//! Google's Gemini API (`generateContent`, `streamGenerateContent?alt=sse`,
//! `batchEmbedContents`) behind the gateway's chat format.
//!
//! A chat request becomes a Gemini body ([`chat_to_gemini`]; the model and
//! whether to stream go in the URL), and Gemini's answer, whole
//! ([`gemini_to_chat`]) or streamed ([`GeminiToChat`]), becomes a chat
//! completion. Embeddings go both ways too.
//!
//! Invariants:
//! - Every top-level chat field is in one table, `FIELDS`: translated,
//!   left for the URL, or one Gemini has no place for. Those, and any field
//!   not in the table, are dropped or refused by name as the provider's
//!   [`Unsupported`] policy says; `null` is the same as absent.
//! - Usage is normalised: Gemini counts thoughts outside the candidates, so
//!   `completion_tokens` = `candidatesTokenCount` + `thoughtsTokenCount`;
//!   `promptTokenCount` already includes the cached tokens.
//! - An upstream answer is never echoed back in an error: a malformed one is
//!   named by what is missing.

use serde_json::{Map, Value, json};

use crate::{AnswerError, Refusal, ToChatStream, Unsupported, Usage, usage_json};

type Object = Map<String, Value>;

/// How [`chat_to_gemini`] treats a top-level chat field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// Translated into the body.
    Mapped,
    /// Never in the body: the model and streaming go in the URL.
    Url,
    /// Gemini has no place for it (or none this translation fills back in,
    /// like `logprobs`): dropped or refused by the policy.
    NoPlace,
}

/// Every chat field [`chat_to_gemini`] knows. A field not here is unknown:
/// treated as [`Field::NoPlace`], refused as "unknown" under
/// [`Unsupported::Error`].
const FIELDS: &[(&str, Field)] = &[
    ("messages", Field::Mapped),
    ("tools", Field::Mapped),
    ("tool_choice", Field::Mapped),
    ("temperature", Field::Mapped),
    ("top_p", Field::Mapped),
    ("top_k", Field::Mapped),
    ("max_tokens", Field::Mapped),
    ("max_completion_tokens", Field::Mapped),
    ("stop", Field::Mapped),
    ("n", Field::Mapped),
    ("seed", Field::Mapped),
    ("presence_penalty", Field::Mapped),
    ("frequency_penalty", Field::Mapped),
    ("response_format", Field::Mapped),
    ("model", Field::Url),
    ("stream", Field::Url),
    ("stream_options", Field::Url),
    ("logit_bias", Field::NoPlace),
    ("logprobs", Field::NoPlace),
    ("top_logprobs", Field::NoPlace),
    ("user", Field::NoPlace),
    ("parallel_tool_calls", Field::NoPlace),
    ("metadata", Field::NoPlace),
    ("store", Field::NoPlace),
    ("service_tier", Field::NoPlace),
    ("modalities", Field::NoPlace),
    ("audio", Field::NoPlace),
    ("prediction", Field::NoPlace),
    ("web_search_options", Field::NoPlace),
    ("functions", Field::NoPlace),
    ("function_call", Field::NoPlace),
    ("reasoning_effort", Field::NoPlace),
    ("verbosity", Field::NoPlace),
    ("prompt_cache_key", Field::NoPlace),
    ("safety_identifier", Field::NoPlace),
];

/// Values of fields Gemini has no place for that ask for nothing (what
/// Gemini does anyway), so even [`Unsupported::Error`] lets them through.
fn asks_nothing(key: &str, value: &Value) -> bool {
    matches!((key, value), ("logprobs" | "store", Value::Bool(false)) | ("parallel_tool_calls", Value::Bool(true)))
}

/// Schema keywords Gemini's `Schema` (a subset of `OpenAPI` 3.0) accepts;
/// every other keyword (`additionalProperties`, `$schema`, `$id`, `$defs`,
/// `definitions`, `$comment`, `examples`, `not`, `patternProperties`,
/// `exclusiveMinimum`, `exclusiveMaximum`, `if`/`then`/`else`,
/// `unevaluatedProperties`, `strict`, …) is stripped after `$ref`, `oneOf`,
/// `allOf` and `const` have been rewritten into ones it has.
const SCHEMA_KEYWORDS: &[&str] = &[
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "items",
    "properties",
    "required",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "default",
    "example",
    "anyOf",
    "propertyOrdering",
];

/// How deep `$ref`s may nest: deeper is taken for a recursive schema, which
/// Gemini's schemas cannot express.
const MAX_REF_DEPTH: usize = 8;

/// Image types guessed from an `http(s)` URL's extension.
const EXTENSIONS: &[(&str, &str)] = &[
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("gif", "image/gif"),
    ("webp", "image/webp"),
    ("heic", "image/heic"),
    ("heif", "image/heif"),
    ("pdf", "application/pdf"),
];

/// An OpenAI chat request body as a Gemini `generateContent` body.
///
/// - `system` and `developer` messages, wherever they are, become
///   `systemInstruction`; `user` turns role `user`, `assistant` role
///   `model`, and `tool` results `functionResponse` parts of a `user` turn
///   (named after the earlier tool call with that `tool_call_id`; the
///   content as a JSON object when it is one, else `{"content": text}`).
///   Consecutive turns of one role are merged, as Gemini wants.
/// - Images: `data:` URLs become `inlineData`; `http(s)` URLs `fileData`
///   with the type guessed from the extension (`png`, `jpg`, `gif`, `webp`,
///   `heic`, `pdf`, …). An unknown extension is refused under
///   [`Unsupported::Error`] and sent as `image/jpeg` under
///   [`Unsupported::Drop`]. `input_audio` and `file` parts with `file_data`
///   become `inlineData`.
/// - Assistant `tool_calls` become `functionCall` parts (an
///   `extra_content.google.thought_signature` goes back as the part's
///   `thoughtSignature`, as Gemini's own OpenAI layer does); `tools` become
///   `functionDeclarations` with their parameters reduced to what Gemini's
///   schemas accept: its keywords are kept and every other one
///   (`additionalProperties`, `$schema`, `$defs`, `examples`, `not`,
///   `patternProperties`, `exclusiveMinimum`, …) is stripped, after `$ref`s
///   are inlined, `oneOf` is read as `anyOf`, a `null` alternative or type
///   as `nullable`, several types as `anyOf`, and `const` as `enum`;
///   `string` formats other than `enum` and `date-time` are dropped, and an
///   object without properties is sent without parameters. `tool_choice`
///   becomes `toolConfig`.
/// - Sampling goes to `generationConfig`: `temperature`, `top_p`, `top_k`
///   (an extension some clients send), the larger of `max_tokens` and
///   `max_completion_tokens`, `stop`, `n`, `seed`, the penalties, and
///   `response_format` (`json_object` as JSON output, `json_schema` with
///   its schema).
///
/// Fields Gemini has no place for (`logit_bias`, `logprobs`, `user`,
/// `parallel_tool_calls`, `reasoning_effort`, …: one table in this module)
/// and unknown ones are dropped or refused by name, as `policy` says; so is
/// a function's `strict: true`, which Gemini cannot promise. A malformed
/// request is refused naming the path (`messages[1].content[0]`).
pub fn chat_to_gemini(chat: &Map<String, Value>, policy: Unsupported) -> Result<Value, Refusal> {
    for (key, value) in chat {
        let field = FIELDS.iter().find(|(name, _)| name == key).map(|(_, field)| *field);
        if value.is_null() || policy == Unsupported::Drop || asks_nothing(key, value) {
            continue;
        }
        match field {
            Some(Field::Mapped | Field::Url) => {}
            Some(Field::NoPlace) => return Err(Refusal::new(key.as_str(), "not supported by Gemini")),
            None => return Err(Refusal::new(key.as_str(), "unknown parameter")),
        }
    }
    let get = |key: &str| chat.get(key).filter(|v| !v.is_null());
    let messages = get("messages").ok_or_else(|| Refusal::new("messages", "required"))?;
    let (system, contents) = translate_messages(messages, policy)?;
    let mut body = Object::new();
    body.insert("contents".into(), contents);
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({ "parts": system }));
    }
    if let Some(tools) = get("tools") {
        let declarations = function_declarations(tools, policy)?;
        if !declarations.is_empty() {
            body.insert("tools".into(), json!([{ "functionDeclarations": declarations }]));
        }
    }
    if let Some(choice) = get("tool_choice") {
        body.insert("toolConfig".into(), json!({ "functionCallingConfig": tool_config(choice)? }));
    }
    let config = generation_config(&get)?;
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    Ok(Value::Object(body))
}

fn generation_config<'a>(get: &impl Fn(&str) -> Option<&'a Value>) -> Result<Object, Refusal> {
    let mut config = Object::new();
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(value) = get(from) {
            if !value.is_number() {
                return Err(Refusal::new(from, "must be a number"));
            }
            config.insert(to.into(), value.clone());
        }
    }
    for (from, to) in [("top_k", "topK"), ("n", "candidateCount")] {
        if let Some(value) = get(from) {
            config.insert(to.into(), whole(value, from)?.into());
        }
    }
    if let Some(seed) = get("seed") {
        if seed.as_i64().is_none() {
            return Err(Refusal::new("seed", "must be a whole number"));
        }
        config.insert("seed".into(), seed.clone());
    }
    let mut max_output = None;
    for key in ["max_tokens", "max_completion_tokens"] {
        if let Some(value) = get(key) {
            max_output = max_output.max(Some(whole(value, key)?));
        }
    }
    if let Some(max_output) = max_output {
        config.insert("maxOutputTokens".into(), max_output.into());
    }
    match get("stop") {
        None => {}
        Some(Value::String(stop)) => {
            config.insert("stopSequences".into(), json!([stop]));
        }
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => {
            config.insert("stopSequences".into(), Value::Array(stops.clone()));
        }
        Some(_) => return Err(Refusal::new("stop", "must be a string or a list of strings")),
    }
    if let Some(format) = get("response_format") {
        let kind = format.get("type").and_then(Value::as_str);
        match kind {
            Some("text") => {}
            Some("json_object") => {
                config.insert("responseMimeType".into(), "application/json".into());
            }
            Some("json_schema") => {
                config.insert("responseMimeType".into(), "application/json".into());
                if let Some(schema) = format.pointer("/json_schema/schema") {
                    let schema = gemini_schema(schema, "response_format.json_schema.schema")?;
                    config.insert("responseSchema".into(), schema);
                }
            }
            _ => {
                return Err(Refusal::new(
                    "response_format.type",
                    "must be \"text\", \"json_object\" or \"json_schema\"",
                ));
            }
        }
    }
    Ok(config)
}

fn whole(value: &Value, field: &str) -> Result<u64, Refusal> {
    value.as_u64().ok_or_else(|| Refusal::new(field, "must be a whole number"))
}

/// The turns being built: Gemini's role and its parts.
type Turns = Vec<(&'static str, Vec<Value>)>;

fn push_turn(turns: &mut Turns, role: &'static str, parts: Vec<Value>) {
    if parts.is_empty() {
        return;
    }
    match turns.last_mut() {
        Some((last, existing)) if *last == role => existing.extend(parts),
        _ => turns.push((role, parts)),
    }
}

/// `systemInstruction` parts and `contents`.
fn translate_messages(messages: &Value, policy: Unsupported) -> Result<(Vec<Value>, Value), Refusal> {
    let messages = messages.as_array().ok_or_else(|| Refusal::new("messages", "must be a list"))?;
    let mut system = Vec::new();
    let mut turns = Turns::new();
    // (tool call id, function name), in order: tool results find their name.
    let mut calls: Vec<(&str, &str)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let role = message.get("role").and_then(Value::as_str);
        let content = message.get("content").filter(|c| !c.is_null());
        match role {
            Some("system" | "developer") => system.extend(text_parts(content, &at)?),
            Some("user") => {
                let parts = match content {
                    None => Vec::new(),
                    Some(Value::String(text)) => text_part(text),
                    Some(Value::Array(items)) => {
                        let mut parts = Vec::with_capacity(items.len());
                        for (j, item) in items.iter().enumerate() {
                            parts.push(user_part(item, &format!("{at}.content[{j}]"), policy)?);
                        }
                        parts
                    }
                    Some(_) => {
                        return Err(Refusal::new(format!("{at}.content"), "must be a string or a list of parts"));
                    }
                };
                push_turn(&mut turns, "user", parts);
            }
            Some("assistant") => {
                let mut parts = text_parts(content, &at)?;
                if let Some(tool_calls) = message.get("tool_calls").filter(|c| !c.is_null()) {
                    let tool_calls = tool_calls
                        .as_array()
                        .ok_or_else(|| Refusal::new(format!("{at}.tool_calls"), "must be a list"))?;
                    for (j, call) in tool_calls.iter().enumerate() {
                        let (id, name, part) = function_call_part(call, &format!("{at}.tool_calls[{j}]"))?;
                        calls.push((id, name));
                        parts.push(part);
                    }
                }
                push_turn(&mut turns, "model", parts);
            }
            Some("tool") => {
                let id = message
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Refusal::new(format!("{at}.tool_call_id"), "required, a string"))?;
                let name =
                    calls.iter().rev().find(|(call, _)| *call == id).map(|(_, name)| *name).ok_or_else(|| {
                        Refusal::new(format!("{at}.tool_call_id"), "no earlier assistant tool call has this id")
                    })?;
                let text: String = text_parts(content, &at)?.iter().filter_map(|p| p["text"].as_str()).collect();
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(object @ Value::Object(_)) => object,
                    _ => json!({ "content": text }),
                };
                push_turn(&mut turns, "user", vec![json!({"functionResponse": {"name": name, "response": response}})]);
            }
            Some(_) => {
                return Err(Refusal::new(format!("{at}.role"), "must be system, developer, user, assistant or tool"));
            }
            None => return Err(Refusal::new(format!("{at}.role"), "required, a string")),
        }
    }
    let contents = turns.into_iter().map(|(role, parts)| json!({"role": role, "parts": parts})).collect();
    Ok((system, contents))
}

fn text_part(text: &str) -> Vec<Value> {
    if text.is_empty() { Vec::new() } else { vec![json!({ "text": text })] }
}

/// The text of a system, assistant or tool message: a string or a list of
/// `text` (or `refusal`) parts.
fn text_parts(content: Option<&Value>, at: &str) -> Result<Vec<Value>, Refusal> {
    match content {
        None => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(text_part(text)),
        Some(Value::Array(items)) => {
            let mut parts = Vec::with_capacity(items.len());
            for (j, item) in items.iter().enumerate() {
                let text = match item.get("type").and_then(Value::as_str) {
                    Some("text") => item.get("text"),
                    Some("refusal") => item.get("refusal"),
                    _ => {
                        return Err(Refusal::new(
                            format!("{at}.content[{j}].type"),
                            "only text parts are allowed here",
                        ));
                    }
                };
                let text = text
                    .and_then(Value::as_str)
                    .ok_or_else(|| Refusal::new(format!("{at}.content[{j}]"), "no text"))?;
                parts.extend(text_part(text));
            }
            Ok(parts)
        }
        Some(_) => Err(Refusal::new(format!("{at}.content"), "must be a string or a list of parts")),
    }
}

fn user_part(item: &Value, at: &str, policy: Unsupported) -> Result<Value, Refusal> {
    let str_at = |pointer: &str, field: &str| {
        item.pointer(pointer)
            .and_then(Value::as_str)
            .ok_or_else(|| Refusal::new(format!("{at}.{field}"), "required, a string"))
    };
    match item.get("type").and_then(Value::as_str) {
        Some("text") => Ok(json!({ "text": str_at("/text", "text")? })),
        Some("image_url") => {
            let (url, field) = match item.get("image_url") {
                Some(Value::String(url)) => (url.as_str(), "image_url"),
                _ => (str_at("/image_url/url", "image_url.url")?, "image_url.url"),
            };
            image_part(url, &format!("{at}.{field}"), policy)
        }
        Some("input_audio") => {
            let data = str_at("/input_audio/data", "input_audio.data")?;
            let format = str_at("/input_audio/format", "input_audio.format")?;
            Ok(json!({"inlineData": {"mimeType": format!("audio/{format}"), "data": data}}))
        }
        Some("file") => {
            let data = str_at("/file/file_data", "file.file_data")?;
            let (mime, data) = data_url(data, &format!("{at}.file.file_data"))?;
            Ok(json!({"inlineData": {"mimeType": mime, "data": data}}))
        }
        _ => Err(Refusal::new(format!("{at}.type"), "must be text, image_url, input_audio or file")),
    }
}

fn image_part(url: &str, at: &str, policy: Unsupported) -> Result<Value, Refusal> {
    if url.starts_with("data:") {
        let (mime, data) = data_url(url, at)?;
        return Ok(json!({"inlineData": {"mimeType": mime, "data": data}}));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if !(lower.starts_with("https://") || lower.starts_with("http://")) {
        return Err(Refusal::new(at, "must be a data: URL or an http(s) URL"));
    }
    let mime = match (mime_from_extension(url), policy) {
        (Some(mime), _) => mime,
        (None, Unsupported::Drop) => "image/jpeg",
        (None, Unsupported::Error) => {
            return Err(Refusal::new(
                at,
                "Gemini needs the image's type: the URL has no known extension (send a data: URL)",
            ));
        }
    };
    Ok(json!({"fileData": {"mimeType": mime, "fileUri": url}}))
}

/// `data:<type>;base64,<data>` split into the type and the data.
fn data_url<'a>(url: &'a str, at: &str) -> Result<(&'a str, &'a str), Refusal> {
    let malformed = || Refusal::new(at, "must be a base64 data: URL (data:<type>;base64,<data>)");
    let (header, data) = url.strip_prefix("data:").and_then(|rest| rest.split_once(',')).ok_or_else(malformed)?;
    let header = header.strip_suffix(";base64").ok_or_else(malformed)?;
    let mime = header.split(';').next().unwrap_or_default();
    if mime.is_empty() || data.is_empty() {
        return Err(malformed());
    }
    Ok((mime, data))
}

fn mime_from_extension(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let name = path.rsplit('/').next().unwrap_or_default();
    let (_, extension) = name.rsplit_once('.')?;
    EXTENSIONS.iter().find(|(ext, _)| ext.eq_ignore_ascii_case(extension)).map(|(_, mime)| *mime)
}

/// A chat tool call as a `functionCall` part, with its id and name.
fn function_call_part<'a>(call: &'a Value, at: &str) -> Result<(&'a str, &'a str, Value), Refusal> {
    let id =
        call.get("id").and_then(Value::as_str).ok_or_else(|| Refusal::new(format!("{at}.id"), "required, a string"))?;
    let name = call
        .pointer("/function/name")
        .and_then(Value::as_str)
        .ok_or_else(|| Refusal::new(format!("{at}.function.name"), "required, a string"))?;
    let args = match call.pointer("/function/arguments") {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(text)) if text.trim().is_empty() => json!({}),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(args @ Value::Object(_)) => args,
            _ => return Err(Refusal::new(format!("{at}.function.arguments"), "must be a JSON object as text")),
        },
        Some(_) => return Err(Refusal::new(format!("{at}.function.arguments"), "must be a string")),
    };
    let mut part = json!({"functionCall": {"name": name, "args": args}});
    if let Some(signature) = call.pointer("/extra_content/google/thought_signature").filter(|s| s.is_string()) {
        part["thoughtSignature"] = signature.clone();
    }
    Ok((id, name, part))
}

fn function_declarations(tools: &Value, policy: Unsupported) -> Result<Vec<Value>, Refusal> {
    let tools = tools.as_array().ok_or_else(|| Refusal::new("tools", "must be a list"))?;
    let mut declarations = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        let at = format!("tools[{i}]");
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(Refusal::new(format!("{at}.type"), "only function tools can go to Gemini"));
        }
        let function = tool.get("function").ok_or_else(|| Refusal::new(format!("{at}.function"), "required"))?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| Refusal::new(format!("{at}.function.name"), "required, a string"))?;
        if function.get("strict") == Some(&Value::Bool(true)) && policy == Unsupported::Error {
            return Err(Refusal::new(format!("{at}.function.strict"), "Gemini cannot promise strict arguments"));
        }
        let mut declaration = json!({ "name": name });
        if let Some(description) = function.get("description").filter(|d| d.is_string()) {
            declaration["description"] = description.clone();
        }
        if let Some(parameters) = function.get("parameters").filter(|p| !p.is_null()) {
            let parameters = gemini_schema(parameters, &format!("{at}.function.parameters"))?;
            // Gemini refuses an object schema without properties.
            let empty = parameters.get("properties").and_then(Value::as_object).is_none_or(Map::is_empty);
            if !(empty && parameters.get("type").and_then(Value::as_str) == Some("object")) {
                declaration["parameters"] = parameters;
            }
        }
        declarations.push(declaration);
    }
    Ok(declarations)
}

fn tool_config(choice: &Value) -> Result<Value, Refusal> {
    let mode = |mode: &str| Ok(json!({ "mode": mode }));
    match choice {
        Value::String(choice) if choice == "auto" => mode("AUTO"),
        Value::String(choice) if choice == "none" => mode("NONE"),
        Value::String(choice) if choice == "required" => mode("ANY"),
        _ => match (choice.get("type").and_then(Value::as_str), choice.pointer("/function/name")) {
            (Some("function"), Some(Value::String(name))) => Ok(json!({"mode": "ANY", "allowedFunctionNames": [name]})),
            _ => Err(Refusal::new(
                "tool_choice",
                "must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\"}}",
            )),
        },
    }
}

/// A JSON Schema as Gemini's `Schema`: see `SCHEMA_KEYWORDS`.
fn gemini_schema(schema: &Value, at: &str) -> Result<Value, Refusal> {
    let empty = Object::new();
    let defs = |key: &str| schema.get(key).and_then(Value::as_object).unwrap_or(&empty);
    let defs = Defs { defs: defs("$defs"), definitions: defs("definitions") };
    clean_schema(schema, &defs, 0, at)
}

struct Defs<'a> {
    defs: &'a Object,
    definitions: &'a Object,
}

fn clean_schema(schema: &Value, defs: &Defs<'_>, depth: usize, at: &str) -> Result<Value, Refusal> {
    let Value::Object(schema) = schema else { return Ok(schema.clone()) };
    let mut schema = schema.clone();
    if let Some(reference) = schema.remove("$ref") {
        if depth >= MAX_REF_DEPTH {
            return Err(Refusal::new(
                format!("{at}.$ref"),
                "nested too deep (recursive?): Gemini's schemas cannot refer to themselves",
            ));
        }
        let target = reference.as_str().and_then(|r| {
            r.strip_prefix("#/$defs/")
                .and_then(|name| defs.defs.get(name))
                .or_else(|| r.strip_prefix("#/definitions/").and_then(|name| defs.definitions.get(name)))
        });
        let target = target
            .ok_or_else(|| Refusal::new(format!("{at}.$ref"), "only #/$defs/… and #/definitions/… are understood"))?;
        let Value::Object(resolved) = clean_schema(target, defs, depth + 1, at)? else {
            return Err(Refusal::new(format!("{at}.$ref"), "must refer to a schema object"));
        };
        // The referring schema's own keywords (a description) win.
        for (key, value) in resolved {
            schema.entry(key).or_insert(value);
        }
    }
    if schema.get("type").is_some_and(Value::is_array)
        && let Some(Value::Array(types)) = schema.remove("type")
    {
        let real: Vec<Value> = types.iter().filter(|t| t.as_str() != Some("null")).cloned().collect();
        if real.len() < types.len() {
            schema.insert("nullable".into(), true.into());
        }
        match real.len() {
            0 => {}
            1 => {
                schema.insert("type".into(), real[0].clone());
            }
            // Several types: one alternative each.
            _ => {
                let alternatives = real.into_iter().map(|t| json!({ "type": t })).collect();
                schema.entry("anyOf").or_insert(Value::Array(alternatives));
            }
        }
    }
    if let Some(constant) = schema.remove("const") {
        schema.entry("enum").or_insert_with(|| json!([constant]));
    }
    for combinator in ["allOf", "oneOf", "anyOf"] {
        let Some(Value::Array(members)) = schema.remove(combinator) else { continue };
        let mut kept = Vec::with_capacity(members.len());
        for (k, member) in members.iter().enumerate() {
            if member.get("type").and_then(Value::as_str) == Some("null") {
                schema.insert("nullable".into(), true.into());
                continue;
            }
            kept.push(clean_schema(member, defs, depth, &format!("{at}.{combinator}[{k}]"))?);
        }
        match kept.len() {
            0 => {}
            1 => {
                if let Some(Value::Object(only)) = kept.pop() {
                    for (key, value) in only {
                        schema.entry(key).or_insert(value);
                    }
                }
            }
            _ if combinator == "allOf" => {
                return Err(Refusal::new(format!("{at}.allOf"), "Gemini's schemas have no allOf of several schemas"));
            }
            _ => {
                schema.insert("anyOf".into(), Value::Array(kept));
            }
        }
    }
    if let Some(Value::Object(properties)) = schema.get("properties") {
        let mut cleaned = Object::new();
        for (name, property) in properties {
            cleaned.insert(name.clone(), clean_schema(property, defs, depth, &format!("{at}.properties.{name}"))?);
        }
        schema.insert("properties".into(), Value::Object(cleaned));
    }
    if let Some(items @ Value::Object(_)) = schema.get("items") {
        let items = clean_schema(items, defs, depth, &format!("{at}.items"))?;
        schema.insert("items".into(), items);
    }
    let string_format = schema.get("type").and_then(Value::as_str) == Some("string")
        && !matches!(schema.get("format").and_then(Value::as_str), None | Some("enum" | "date-time"));
    if string_format {
        schema.remove("format");
    }
    schema.retain(|key, _| SCHEMA_KEYWORDS.contains(&key.as_str()));
    Ok(Value::Object(schema))
}

// ---------------------------------------------------------------------------
// Answers

/// A Gemini `generateContent` answer as an OpenAI `chat.completion`.
///
/// The id is `chatcmpl-` + `responseId` (`chatcmpl-gemini` without one) and
/// `created` is 0 (this crate reads no clock). Each candidate is a choice:
/// its text parts joined as `content`, its `thought: true` parts as
/// `reasoning_content`, its `functionCall` parts as `tool_calls` (ids
/// `call_<n>` unless Gemini gave one, arguments as JSON text, a
/// `thoughtSignature` kept in `extra_content.google.thought_signature`).
/// Finish reasons: `STOP` is `stop` (`tool_calls` when it called
/// functions), `MAX_TOKENS` `length`, the safety ones (`SAFETY`,
/// `RECITATION`, `BLOCKLIST`, `PROHIBITED_CONTENT`, `SPII`, `IMAGE_*`)
/// `content_filter`, any other `stop`. Parts chat has no place for (images,
/// executable code) are left out.
///
/// Usage is normalised ([`usage_json`]): `prompt_tokens` is
/// `promptTokenCount` (which counts the cached tokens) plus
/// `toolUsePromptTokenCount`, `completion_tokens` is
/// `candidatesTokenCount` plus `thoughtsTokenCount`. Without
/// `usageMetadata` the answer has no `usage`.
///
/// An `{"error": …}` body, and a prompt Gemini blocked (no candidates, a
/// `promptFeedback.blockReason`, as 400 `content_policy_violation`), are
/// [`AnswerError::Reported`]; anything else that is not a Gemini answer is
/// [`AnswerError::Malformed`].
pub fn gemini_to_chat(response: &Value, model: &str) -> Result<Value, AnswerError> {
    let answer = response.as_object().ok_or_else(|| malformed("the answer is not a JSON object"))?;
    if let Some(error) = answer.get("error") {
        return Err(reported_error(error));
    }
    let candidates = match answer.get("candidates") {
        Some(Value::Array(candidates)) if !candidates.is_empty() => candidates,
        Some(Value::Array(_)) | None => {
            return Err(blocked(answer).unwrap_or_else(|| malformed("the answer has no candidates")));
        }
        Some(_) => return Err(malformed("candidates is not a list")),
    };
    let mut choices = Vec::with_capacity(candidates.len());
    for (position, candidate) in candidates.iter().enumerate() {
        let at = format!("candidates[{position}]");
        let index = candidate_index(candidate, position, &at)?;
        let mut turn = Turn::default();
        for part in parts(candidate, &at)? {
            turn.read(part, &at)?;
        }
        let called = !turn.calls.is_empty();
        let mut message = json!({"role": "assistant", "content": Value::Null});
        if !turn.text.is_empty() || !called {
            message["content"] = turn.text.into();
        }
        if !turn.reasoning.is_empty() {
            message["reasoning_content"] = turn.reasoning.into();
        }
        if called {
            message["tool_calls"] = Value::Array(turn.calls);
        }
        let reason = candidate.get("finishReason").and_then(Value::as_str).unwrap_or("STOP");
        choices.push((
            index,
            json!({"index": index, "message": message, "finish_reason": finish_reason(reason, called), "logprobs": null}),
        ));
    }
    choices.sort_by_key(|(index, _)| *index);
    let mut completion = json!({
        "id": completion_id(answer.get("responseId")),
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": choices.into_iter().map(|(_, choice)| choice).collect::<Vec<_>>(),
    });
    if let Some(usage) = answer.get("usageMetadata").and_then(usage_from) {
        completion["usage"] = usage_json(&usage);
    }
    Ok(completion)
}

fn malformed(what: &str) -> AnswerError {
    AnswerError::Malformed(what.to_owned())
}

fn completion_id(response_id: Option<&Value>) -> String {
    match response_id.and_then(Value::as_str) {
        Some(id) => format!("chatcmpl-{id}"),
        None => "chatcmpl-gemini".to_owned(),
    }
}

fn candidate_index(candidate: &Value, position: usize, at: &str) -> Result<u64, AnswerError> {
    if !candidate.is_object() {
        return Err(AnswerError::Malformed(format!("{at} is not an object")));
    }
    Ok(candidate.get("index").and_then(Value::as_u64).unwrap_or(position as u64))
}

/// A candidate's parts (none when it has no content, as when it was cut
/// for safety).
fn parts<'a>(candidate: &'a Value, at: &str) -> Result<&'a [Value], AnswerError> {
    match candidate.pointer("/content/parts") {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(parts)) => Ok(parts),
        Some(_) => Err(AnswerError::Malformed(format!("{at}.content.parts is not a list"))),
    }
}

/// What a candidate's parts say, in chat's terms.
#[derive(Default)]
struct Turn {
    text: String,
    reasoning: String,
    calls: Vec<Value>,
}

impl Turn {
    fn read(&mut self, part: &Value, at: &str) -> Result<(), AnswerError> {
        if let Some(text) = part.get("text").and_then(Value::as_str) {
            if part.get("thought") == Some(&Value::Bool(true)) {
                self.reasoning.push_str(text);
            } else {
                self.text.push_str(text);
            }
        } else if let Some(call) = part.get("functionCall") {
            let n = self.calls.len();
            self.calls.push(tool_call(part, call, n, at)?);
        }
        Ok(())
    }
}

/// A `functionCall` part as a chat tool call (without the stream's `index`).
fn tool_call(part: &Value, call: &Value, n: usize, at: &str) -> Result<Value, AnswerError> {
    let name = call
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| AnswerError::Malformed(format!("{at}: a functionCall has no name")))?;
    let arguments = match call.get("args") {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(args @ Value::Object(_)) => args.to_string(),
        Some(_) => return Err(AnswerError::Malformed(format!("{at}: a functionCall's args are not an object"))),
    };
    let id = match call.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => format!("call_{n}"),
    };
    let mut tool_call = json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}});
    if let Some(signature) = part.get("thoughtSignature").filter(|s| s.is_string()) {
        tool_call["extra_content"] = json!({"google": {"thought_signature": signature}});
    }
    Ok(tool_call)
}

fn finish_reason(reason: &str, called: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => "content_filter",
        _ if called => "tool_calls",
        _ => "stop",
    }
}

/// `usageMetadata`, normalised.
fn usage_from(meta: &Value) -> Option<Usage> {
    let meta = meta.as_object()?;
    let n = |key: &str| meta.get(key).and_then(Value::as_u64).unwrap_or(0);
    let thoughts = n("thoughtsTokenCount");
    Some(Usage {
        input_tokens: n("promptTokenCount").saturating_add(n("toolUsePromptTokenCount")),
        output_tokens: n("candidatesTokenCount").saturating_add(thoughts),
        cached_tokens: n("cachedContentTokenCount"),
        cache_write_tokens: 0,
        reasoning_tokens: thoughts,
    })
}

/// A prompt Gemini refused to answer, if the answer says so.
fn blocked(answer: &Object) -> Option<AnswerError> {
    let reason = answer.get("promptFeedback")?.get("blockReason")?.as_str()?;
    let reason = if is_enum_name(reason) { reason } else { "unknown" };
    let body = json!({"error": {
        "message": format!("Gemini blocked the prompt ({reason})"),
        "type": "invalid_request_error",
        "code": "content_policy_violation",
        "param": null,
    }});
    Some(AnswerError::Reported { status: 400, body: body.to_string() })
}

fn is_enum_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
}

/// Gemini's `{"code", "status", "message"}` error object, in OpenAI's shape:
/// `code` is Gemini's status (`RESOURCE_EXHAUSTED`), `type` the same in
/// lower case; the HTTP status is Gemini's `code`, or the one its status
/// stands for.
fn reported_error(error: &Value) -> AnswerError {
    let name = error.get("status").and_then(Value::as_str).filter(|s| is_enum_name(s));
    let status = error
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|code| u16::try_from(code).ok())
        .filter(|code| (400..=599).contains(code))
        .unwrap_or(match name {
            Some("INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE") => 400,
            Some("UNAUTHENTICATED") => 401,
            Some("PERMISSION_DENIED") => 403,
            Some("NOT_FOUND") => 404,
            Some("RESOURCE_EXHAUSTED") => 429,
            Some("CANCELLED") => 499,
            Some("INTERNAL" | "UNKNOWN" | "DATA_LOSS") => 500,
            Some("UNIMPLEMENTED") => 501,
            Some("UNAVAILABLE") => 503,
            Some("DEADLINE_EXCEEDED") => 504,
            _ => 502,
        });
    let message = match error {
        Value::String(message) => message.as_str(),
        _ => error.get("message").and_then(Value::as_str).unwrap_or("Gemini reported an error"),
    };
    let body = json!({"error": {
        "message": message,
        "type": name.map_or_else(|| "upstream_error".to_owned(), str::to_ascii_lowercase),
        "code": name,
        "param": null,
    }});
    AnswerError::Reported { status, body: body.to_string() }
}

// ---------------------------------------------------------------------------
// Streams

/// A Gemini `streamGenerateContent?alt=sse` stream turned into chat chunks
/// ([`ToChatStream`]).
///
/// Each event's data is a whole `GenerateContentResponse`. A candidate's
/// first event opens its choice with `{"role": "assistant", "content": ""}`;
/// text parts become `content` deltas, `thought: true` parts
/// `reasoning_content` deltas, and each `functionCall` one `tool_calls`
/// delta with the whole arguments (`index` counting the choice's calls, ids
/// as in [`gemini_to_chat`]). `usageMetadata` is cumulative: the last one
/// counts. When every candidate seen has a `finishReason`, the last chunk
/// of each carries its `finish_reason`, then comes the usage chunk (left out
/// when Gemini sent no `usageMetadata`: usage unknown) and `[DONE]`; events
/// after that are ignored. Gemini has no other end marker, so a body that
/// ends before is [`AnswerError::Malformed`]. An `error` event or a blocked
/// prompt is [`AnswerError::Reported`] as in [`gemini_to_chat`].
#[derive(Debug)]
pub struct GeminiToChat {
    model: String,
    /// `chatcmpl-` + the first `responseId`.
    id: Option<String>,
    choices: Vec<StreamChoice>,
    usage: Option<Usage>,
    done: bool,
}

#[derive(Debug)]
struct StreamChoice {
    index: u64,
    calls: usize,
    finished: bool,
}

impl GeminiToChat {
    /// A translator for a stream from `model` (the name chunks carry).
    #[must_use]
    pub fn new(model: &str) -> Self {
        GeminiToChat { model: model.to_owned(), id: None, choices: Vec::new(), usage: None, done: false }
    }

    fn chunk(&self, choices: &Value) -> Value {
        json!({
            "id": self.id.as_deref().unwrap_or("chatcmpl-gemini"),
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.model,
            "choices": choices,
        })
    }

    fn delta(&self, index: u64, delta: &Value) -> String {
        self.chunk(&json!([{"index": index, "delta": delta, "finish_reason": null}])).to_string()
    }
}

impl ToChatStream for GeminiToChat {
    fn push(&mut self, data: &str) -> Result<Vec<String>, AnswerError> {
        if self.done {
            return Ok(Vec::new());
        }
        let event: Value = serde_json::from_str(data).map_err(|_| malformed("a stream event is not JSON"))?;
        let event = event.as_object().ok_or_else(|| malformed("a stream event is not a JSON object"))?;
        if let Some(error) = event.get("error") {
            return Err(reported_error(error));
        }
        if let Some(usage) = event.get("usageMetadata").and_then(usage_from) {
            self.usage = Some(usage);
        }
        if self.id.is_none() {
            self.id = event.get("responseId").and_then(Value::as_str).map(|id| format!("chatcmpl-{id}"));
        }
        let candidates = match event.get("candidates") {
            Some(Value::Array(candidates)) if !candidates.is_empty() => candidates,
            Some(Value::Array(_)) | None => {
                if let Some(blocked) = blocked(event) {
                    return Err(blocked);
                }
                if event.contains_key("usageMetadata") {
                    return Ok(Vec::new());
                }
                return Err(malformed("a stream event has neither candidates nor usageMetadata"));
            }
            Some(_) => return Err(malformed("candidates is not a list")),
        };
        let mut chunks = Vec::new();
        for (position, candidate) in candidates.iter().enumerate() {
            let at = format!("candidates[{position}]");
            let index = candidate_index(candidate, position, &at)?;
            let slot = if let Some(slot) = self.choices.iter().position(|c| c.index == index) {
                slot
            } else {
                self.choices.push(StreamChoice { index, calls: 0, finished: false });
                chunks.push(self.delta(index, &json!({"role": "assistant", "content": ""})));
                self.choices.len() - 1
            };
            for part in parts(candidate, &at)? {
                if let Some(text) = part.get("text").and_then(Value::as_str) {
                    if text.is_empty() {
                        continue;
                    }
                    let key =
                        if part.get("thought") == Some(&Value::Bool(true)) { "reasoning_content" } else { "content" };
                    chunks.push(self.delta(index, &json!({ key: text })));
                } else if let Some(call) = part.get("functionCall") {
                    let n = self.choices[slot].calls;
                    let mut call = tool_call(part, call, n, &at)?;
                    call["index"] = n.into();
                    self.choices[slot].calls += 1;
                    chunks.push(self.delta(index, &json!({ "tool_calls": [call] })));
                }
            }
            if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
                let choice = &mut self.choices[slot];
                choice.finished = true;
                let reason = finish_reason(reason, choice.calls > 0);
                chunks.push(self.chunk(&json!([{"index": index, "delta": {}, "finish_reason": reason}])).to_string());
            }
        }
        if self.choices.iter().all(|c| c.finished) {
            self.done = true;
            if let Some(usage) = &self.usage {
                let mut chunk = self.chunk(&json!([]));
                chunk["usage"] = usage_json(usage);
                chunks.push(chunk.to_string());
            }
            chunks.push("[DONE]".to_owned());
        }
        Ok(chunks)
    }

    fn finish(&mut self) -> Result<Vec<String>, AnswerError> {
        if self.done { Ok(Vec::new()) } else { Err(malformed("the stream ended before a finishReason")) }
    }
}

// ---------------------------------------------------------------------------
// Embeddings

/// An OpenAI embeddings request as a Gemini `batchEmbedContents` body for
/// `model` (`models/<model>` in each request).
///
/// `input` is a string or a list of strings (token-id arrays are refused:
/// Gemini takes text), `dimensions` becomes `outputDimensionality`,
/// `encoding_format` is `float` or `base64` (Gemini answers floats: the
/// caller encodes them for `base64`, as the openai SDK asks by default),
/// `user` is
/// dropped; any other field is refused as unknown.
pub fn embeddings_to_gemini(body: &Map<String, Value>, model: &str) -> Result<Value, Refusal> {
    let mut dimensions = None;
    for (key, value) in body {
        match (key.as_str(), value) {
            (_, Value::Null) | ("model" | "input" | "user", _) => {}
            ("dimensions", value) => dimensions = Some(whole(value, "dimensions")?),
            ("encoding_format", Value::String(format)) if format == "float" || format == "base64" => {}
            ("encoding_format", _) => {
                return Err(Refusal::new("encoding_format", "must be \"float\" or \"base64\""));
            }
            _ => return Err(Refusal::new(key.as_str(), "unknown parameter")),
        }
    }
    let texts: Vec<&str> = match body.get("input") {
        Some(Value::String(text)) => vec![text],
        Some(Value::Array(items)) if items.is_empty() => return Err(Refusal::new("input", "must not be empty")),
        Some(Value::Array(items)) => {
            if items.iter().any(|item| item.is_number() || item.is_array()) {
                return Err(Refusal::new("input", "token arrays are not supported by Gemini: send text"));
            }
            let mut texts = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                texts.push(item.as_str().ok_or_else(|| Refusal::new(format!("input[{i}]"), "must be a string"))?);
            }
            texts
        }
        None | Some(Value::Null) => return Err(Refusal::new("input", "required")),
        Some(_) => return Err(Refusal::new("input", "must be a string or a list of strings")),
    };
    let name = if model.starts_with("models/") { model.to_owned() } else { format!("models/{model}") };
    let requests: Vec<Value> = texts
        .into_iter()
        .map(|text| {
            let mut request = json!({"model": name, "content": {"parts": [{"text": text}]}});
            if let Some(dimensions) = dimensions {
                request["outputDimensionality"] = dimensions.into();
            }
            request
        })
        .collect();
    Ok(json!({ "requests": requests }))
}

/// A Gemini `batchEmbedContents` answer as an OpenAI embeddings list for
/// `model`.
///
/// Gemini reports no usage: `prompt_tokens` (the caller's estimate) is the
/// usage. An answer without embeddings, with values that are not numbers,
/// or with vectors of different lengths is [`AnswerError::Malformed`]; an
/// `{"error": …}` body is [`AnswerError::Reported`]. (The caller compares
/// the count with its inputs: this answer alone cannot tell.)
pub fn gemini_to_embeddings(response: &Value, model: &str, prompt_tokens: u64) -> Result<Value, AnswerError> {
    if let Some(error) = response.get("error") {
        return Err(reported_error(error));
    }
    let embeddings = match response.get("embeddings") {
        Some(Value::Array(embeddings)) if !embeddings.is_empty() => embeddings,
        _ => return Err(malformed("the answer has no embeddings")),
    };
    let mut data = Vec::with_capacity(embeddings.len());
    let mut dimensions = None;
    for (i, embedding) in embeddings.iter().enumerate() {
        let values = match embedding.get("values") {
            Some(Value::Array(values)) if values.iter().all(Value::is_number) => values,
            _ => return Err(AnswerError::Malformed(format!("embeddings[{i}].values is not a list of numbers"))),
        };
        if *dimensions.get_or_insert(values.len()) != values.len() {
            return Err(AnswerError::Malformed(format!("embeddings[{i}] has another length than embeddings[0]")));
        }
        data.push(json!({"object": "embedding", "index": i, "embedding": values}));
    }
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }))
}

#[cfg(test)]
#[path = "gemini_tests.rs"]
mod tests;
