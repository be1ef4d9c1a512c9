//! Tests of the Gemini translation: request bodies, answers, streams and
//! embeddings, each against Gemini's wire format.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::usage_of;

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn to_gemini(chat: Value, policy: Unsupported) -> Result<Value, Refusal> {
    chat_to_gemini(&object(chat), policy)
}

/// The field a refusal names, under the strict policy.
fn refused_field(chat: Value) -> String {
    match to_gemini(chat, Unsupported::Error) {
        Err(refusal) => refusal.field,
        Ok(body) => panic!("translated: {body}"),
    }
}

fn user(content: Value) -> Value {
    let mut chat = json!({"model": "gemini-2.5-flash", "messages": [{"role": "user"}]});
    chat["messages"][0]["content"] = content;
    chat
}

#[test]
fn a_typical_chat_request() {
    let chat = json!({
        "model": "gemini-2.5-flash",
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Another?"},
            {"role": "user", "content": [{"type": "text", "text": "Just one word."}]},
        ],
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 100,
        "max_completion_tokens": 300,
        "stop": "\n\n",
        "n": 2,
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "response_format": {"type": "json_object"},
        "logprobs": false,
        "parallel_tool_calls": true,
        "user": null,
    });
    insta::assert_json_snapshot!(to_gemini(chat, Unsupported::Error).expect("translates"));
}

#[test]
fn tools_a_tool_round_trip_and_images() {
    let chat = json!({
        "model": "gemini-2.5-pro",
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is in these, and the weather there?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/photos/Paris.JPG?size=large"}},
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"},
                 "extra_content": {"google": {"thought_signature": "c2lnbmF0dXJl"}}},
                {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": ""}},
            ]},
            {"role": "tool", "tool_call_id": "call_a", "content": "{\"celsius\": 21}"},
            {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
        ],
        "tools": [
            {"type": "function", "function": {
                "name": "weather",
                "description": "The weather in a city.",
                "parameters": {
                    "$schema": "http://json-schema.org/draft-07/schema#",
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "city": {"type": "string", "format": "uri", "examples": ["Paris"]},
                        "unit": {"anyOf": [{"$ref": "#/$defs/Unit"}, {"type": "null"}], "description": "Degrees."},
                        "days": {"type": ["integer", "null"], "exclusiveMinimum": 0},
                    },
                    "required": ["city"],
                    "$defs": {"Unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "title": "Unit"}},
                },
            }},
            {"type": "function", "function": {"name": "time", "parameters": {"type": "object", "properties": {}}}},
        ],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "strict": true, "schema": {
            "type": "object",
            "properties": {"summary": {"type": "string", "const": "fixed"}},
            "additionalProperties": false,
        }}},
    });
    insta::assert_json_snapshot!(to_gemini(chat, Unsupported::Error).expect("translates"));
}

#[test]
fn tool_choice_modes() {
    let config = |choice: Value| {
        let mut chat = user(json!("hi"));
        chat["tool_choice"] = choice;
        to_gemini(chat, Unsupported::Error).map(|body| body["toolConfig"]["functionCallingConfig"].clone())
    };
    assert_eq!(config(json!("auto")), Ok(json!({"mode": "AUTO"})));
    assert_eq!(config(json!("none")), Ok(json!({"mode": "NONE"})));
    assert_eq!(config(json!("required")), Ok(json!({"mode": "ANY"})));
    assert_eq!(config(json!("sometimes")).map_err(|r| r.field), Err("tool_choice".to_owned()));
}

#[test]
fn fields_gemini_has_no_place_for_are_dropped_or_refused_by_name() {
    for (field, value) in [
        ("logit_bias", json!({"50256": -100})),
        ("logprobs", json!(true)),
        ("top_logprobs", json!(3)),
        ("user", json!("u-1")),
        ("parallel_tool_calls", json!(false)),
        ("reasoning_effort", json!("low")),
        ("frobnicate", json!(1)),
    ] {
        let mut chat = user(json!("hi"));
        chat[field] = value;
        let dropped = to_gemini(chat.clone(), Unsupported::Drop).expect("dropped");
        assert_eq!(dropped, to_gemini(user(json!("hi")), Unsupported::Drop).expect("plain"), "{field}");
        let refusal = to_gemini(chat, Unsupported::Error).expect_err(field);
        assert_eq!(refusal.field, field);
        let expected = if field == "frobnicate" { "unknown parameter" } else { "not supported by Gemini" };
        assert_eq!(refusal.message, expected);
    }
}

#[test]
fn null_and_values_that_ask_nothing_pass_even_the_strict_policy() {
    let mut chat = user(json!("hi"));
    chat["logit_bias"] = Value::Null;
    chat["logprobs"] = json!(false);
    chat["store"] = json!(false);
    chat["parallel_tool_calls"] = json!(true);
    chat["temperature"] = Value::Null;
    assert_eq!(to_gemini(chat, Unsupported::Error), to_gemini(user(json!("hi")), Unsupported::Error));
}

#[test]
fn a_strict_function_is_refused_only_by_the_strict_policy() {
    let mut chat = user(json!("hi"));
    chat["tools"] = json!([{"type": "function", "function": {"name": "f", "strict": true}}]);
    assert_eq!(refused_field(chat.clone()), "tools[0].function.strict");
    let body = to_gemini(chat, Unsupported::Drop).expect("dropped");
    assert_eq!(body["tools"], json!([{"functionDeclarations": [{"name": "f"}]}]));
}

#[test]
fn an_image_url_without_a_known_extension() {
    let chat = user(json!([{"type": "image_url", "image_url": {"url": "https://cdn.example.com/img/123"}}]));
    assert_eq!(refused_field(chat.clone()), "messages[0].content[0].image_url.url");
    let body = to_gemini(chat, Unsupported::Drop).expect("guessed");
    assert_eq!(
        body["contents"][0]["parts"][0],
        json!({"fileData": {"mimeType": "image/jpeg", "fileUri": "https://cdn.example.com/img/123"}})
    );
}

#[test]
fn malformed_requests_are_refused_naming_the_path() {
    let cases = [
        (json!({"model": "m"}), "messages"),
        (json!({"messages": {}}), "messages"),
        (json!({"messages": [{"content": "hi"}]}), "messages[0].role"),
        (json!({"messages": [{"role": "robot", "content": "hi"}]}), "messages[0].role"),
        (user(json!([{"type": "video", "video": {}}])), "messages[0].content[0].type"),
        (user(json!([{"type": "text"}])), "messages[0].content[0].text"),
        (
            user(json!([{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}])),
            "messages[0].content[0].image_url.url",
        ),
        (
            user(json!([{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}])),
            "messages[0].content[0].image_url.url",
        ),
        (user(json!(7)), "messages[0].content"),
        (
            json!({"messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}]},
            ]}),
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            json!({"messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}]},
            ]}),
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            json!({"messages": [{"role": "tool", "tool_call_id": "nowhere", "content": "x"}]}),
            "messages[0].tool_call_id",
        ),
        (json!({"messages": [{"role": "system", "content": [{"type": "image_url"}]}]}), "messages[0].content[0].type"),
        (json!({"messages": [], "temperature": "hot"}), "temperature"),
        (json!({"messages": [], "max_tokens": -1}), "max_tokens"),
        (json!({"messages": [], "stop": [1]}), "stop"),
        (json!({"messages": [], "response_format": {"type": "yaml"}}), "response_format.type"),
        (json!({"messages": [], "tools": [{"type": "custom", "custom": {}}]}), "tools[0].type"),
        (
            json!({"messages": [], "tools": [{"type": "function", "function": {"name": "f", "parameters": {
                "type": "object", "properties": {"next": {"$ref": "#/$defs/Missing"}}}}}]}),
            "tools[0].function.parameters.properties.next.$ref",
        ),
    ];
    for (chat, field) in cases {
        assert_eq!(refused_field(chat.clone()), field, "{chat}");
    }
}

#[test]
fn a_recursive_schema_is_refused_not_expanded_forever() {
    let mut chat = user(json!("hi"));
    chat["tools"] = json!([{"type": "function", "function": {"name": "tree", "parameters": {
        "$ref": "#/$defs/Node",
        "$defs": {"Node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}}}},
    }}}]);
    let refusal = to_gemini(chat, Unsupported::Drop).expect_err("recursive");
    assert!(refusal.field.starts_with("tools[0].function.parameters"), "{refusal}");
    assert!(refusal.field.ends_with(".$ref"), "{refusal}");
}

#[test]
fn schema_keywords_gemini_lacks_are_rewritten() {
    let parameters = |schema: Value| {
        let mut chat = user(json!("hi"));
        chat["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
        chat["tools"][0]["function"]["parameters"] = json!({"type": "object", "properties": {"x": schema}});
        to_gemini(chat, Unsupported::Error)
            .map(|body| body["tools"][0]["functionDeclarations"][0]["parameters"]["properties"]["x"].clone())
    };
    assert_eq!(
        parameters(json!({"type": ["string", "number", "null"]})),
        Ok(json!({"nullable": true, "anyOf": [{"type": "string"}, {"type": "number"}]}))
    );
    assert_eq!(
        parameters(json!({"oneOf": [{"type": "string"}, {"type": "integer", "format": "int64"}]})),
        Ok(json!({"anyOf": [{"type": "string"}, {"type": "integer", "format": "int64"}]}))
    );
    assert_eq!(
        parameters(json!({"allOf": [{"type": "string", "minLength": 1}], "description": "d", "patternProperties": {}})),
        Ok(json!({"type": "string", "minLength": 1, "description": "d"}))
    );
    assert_eq!(
        parameters(json!({"allOf": [{"type": "string"}, {"minLength": 1}]})).map_err(|r| r.field),
        Err("tools[0].function.parameters.properties.x.allOf".to_owned())
    );
    assert_eq!(
        parameters(json!({"type": "string", "format": "date-time"})),
        Ok(json!({"type": "string", "format": "date-time"}))
    );
}

#[test]
fn tool_results_find_the_latest_call_with_their_id() {
    let chat = json!({"messages": [
        {"role": "assistant", "tool_calls": [{"id": "call_0", "function": {"name": "first", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_0", "content": "[1, 2]"},
        {"role": "assistant", "tool_calls": [{"id": "call_0", "function": {"name": "second", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_0", "content": [{"type": "text", "text": "{\"ok\": true}"}]},
    ]});
    let body = to_gemini(chat, Unsupported::Error).expect("translates");
    assert_eq!(
        body["contents"][1]["parts"][0]["functionResponse"],
        json!({"name": "first", "response": {"content": "[1, 2]"}})
    );
    assert_eq!(
        body["contents"][3]["parts"][0]["functionResponse"],
        json!({"name": "second", "response": {"ok": true}})
    );
}

// ---------------------------------------------------------------------------
// Answers

fn answer(response: &Value) -> Value {
    gemini_to_chat(response, "gemini-2.5-flash").expect("an answer")
}

#[test]
fn a_text_answer() {
    insta::assert_json_snapshot!(answer(&json!({
        "candidates": [{
            "content": {"role": "model", "parts": [{"text": "Bleu"}, {"text": "."}]},
            "finishReason": "STOP",
            "index": 0,
        }],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 2, "totalTokenCount": 14},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "mKzVaJvNOq2ZkdUP",
    })));
}

#[test]
fn a_function_call_answer() {
    insta::assert_json_snapshot!(answer(&json!({
        "candidates": [{
            "content": {"role": "model", "parts": [
                {"text": "Checking both."},
                {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2ln"},
                {"functionCall": {"name": "time"}},
            ]},
            "finishReason": "STOP",
        }],
        "usageMetadata": {"promptTokenCount": 80, "candidatesTokenCount": 20, "totalTokenCount": 100},
        "responseId": "fc1",
    })));
}

#[test]
fn thoughts_and_cached_tokens_are_normalised() {
    let chat = answer(&json!({
        "candidates": [{
            "content": {"role": "model", "parts": [
                {"text": "**Weighing options** the user wants", "thought": true},
                {"text": " a short answer.", "thought": true},
                {"text": "42"},
            ]},
            "finishReason": "MAX_TOKENS",
        }],
        "usageMetadata": {
            "promptTokenCount": 1000,
            "cachedContentTokenCount": 800,
            "candidatesTokenCount": 5,
            "thoughtsTokenCount": 120,
            "totalTokenCount": 1125,
        },
    }));
    let usage = usage_of(&chat["usage"]).expect("usage");
    assert_eq!(
        usage,
        Usage {
            input_tokens: 1000,
            output_tokens: 125,
            cached_tokens: 800,
            cache_write_tokens: 0,
            reasoning_tokens: 120
        }
    );
    insta::assert_json_snapshot!(chat);
}

#[test]
fn safety_finishes_are_content_filter() {
    for (reason, expected) in [
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("MAX_TOKENS", "length"),
        ("OTHER", "stop"),
    ] {
        let chat = answer(&json!({"candidates": [{"finishReason": reason}]}));
        assert_eq!(chat["choices"][0]["finish_reason"], expected, "{reason}");
    }
}

fn reported(result: Result<Value, AnswerError>) -> (u16, Value) {
    match result {
        Err(AnswerError::Reported { status, body }) => (status, serde_json::from_str(&body).expect("JSON body")),
        other => panic!("not reported: {other:?}"),
    }
}

#[test]
fn a_blocked_prompt_is_a_reported_content_policy_failure() {
    let (status, body) = reported(gemini_to_chat(
        &json!({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 9}}),
        "gemini-2.5-flash",
    ));
    assert_eq!(status, 400);
    insta::assert_json_snapshot!(body);
}

#[test]
fn an_error_body_is_reported_with_its_code() {
    let (status, body) = reported(gemini_to_chat(
        &json!({"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT"}}),
        "m",
    ));
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"error": {"message": "API key not valid.", "type": "invalid_argument", "code": "INVALID_ARGUMENT", "param": null}})
    );
    let (status, _) = reported(gemini_to_chat(&json!({"error": {"status": "UNAVAILABLE"}}), "m"));
    assert_eq!(status, 503);
}

#[test]
fn what_is_not_a_gemini_answer_is_malformed_without_echoing_it() {
    for response in [
        json!("secret-looking text"),
        json!({"choices": [{"message": {"content": "secret"}}]}),
        json!({"candidates": "secret"}),
        json!({"candidates": [7]}),
        json!({"candidates": [{"content": {"parts": {"text": "secret"}}}]}),
        json!({"candidates": [{"content": {"parts": [{"functionCall": {"args": {}}}]}}]}),
        json!({"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": "secret"}}]}}]}),
    ] {
        match gemini_to_chat(&response, "m") {
            Err(AnswerError::Malformed(what)) => assert!(!what.contains("secret"), "{what}"),
            other => panic!("{response}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Streams

fn stream(events: &[Value]) -> (GeminiToChat, Vec<String>) {
    let mut translator = GeminiToChat::new("gemini-2.5-flash");
    let mut out = Vec::new();
    for event in events {
        out.extend(translator.push(&event.to_string()).expect("a chunk"));
    }
    (translator, out)
}

/// Chunks as JSON, `[DONE]` as a string.
fn parsed(chunks: &[String]) -> Vec<Value> {
    chunks.iter().map(|c| serde_json::from_str(c).unwrap_or_else(|_| Value::String(c.clone()))).collect()
}

#[test]
fn a_streamed_answer() {
    let usage = |candidates: u64, thoughts: u64| {
        json!({"promptTokenCount": 500, "cachedContentTokenCount": 300, "candidatesTokenCount": candidates,
               "thoughtsTokenCount": thoughts, "totalTokenCount": 500 + candidates + thoughts})
    };
    let events = [
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Planning.", "thought": true}]}, "index": 0}],
               "usageMetadata": usage(0, 40), "modelVersion": "gemini-2.5-flash", "responseId": "r-1"}),
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "The sky"}]}, "index": 0}],
               "usageMetadata": usage(2, 64), "responseId": "r-1"}),
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": " is blue"}]}, "index": 0}],
               "usageMetadata": usage(5, 64), "responseId": "r-1"}),
        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "."}]}, "finishReason": "STOP", "index": 0}],
               "usageMetadata": usage(6, 64), "responseId": "r-1"}),
    ];
    let (mut translator, chunks) = stream(&events);
    let chunks = parsed(&chunks);
    assert_eq!(chunks.last(), Some(&json!("[DONE]")));
    let usage = usage_of(&chunks[chunks.len() - 2]["usage"]).expect("a usage chunk");
    assert_eq!(
        usage,
        Usage { input_tokens: 500, output_tokens: 70, cached_tokens: 300, cache_write_tokens: 0, reasoning_tokens: 64 }
    );
    insta::assert_json_snapshot!(chunks);
    assert_eq!(translator.finish(), Ok(Vec::new()));
    assert_eq!(translator.push(&events[0].to_string()), Ok(Vec::new()), "nothing after [DONE]");
}

#[test]
fn streamed_function_calls_are_whole_deltas_counted_by_index() {
    let (_, chunks) = stream(&[json!({"candidates": [{"content": {"parts": [
            {"functionCall": {"name": "a", "args": {"x": 1}}},
            {"functionCall": {"name": "b", "args": {}}},
        ]}, "finishReason": "STOP"}]})]);
    let chunks = parsed(&chunks);
    let calls: Vec<&Value> = chunks.iter().filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0")).collect();
    assert_eq!(
        calls,
        [
            &json!({"index": 0, "id": "call_0", "type": "function", "function": {"name": "a", "arguments": "{\"x\":1}"}}),
            &json!({"index": 1, "id": "call_1", "type": "function", "function": {"name": "b", "arguments": "{}"}}),
        ]
    );
    assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(chunks.last(), Some(&json!("[DONE]")), "no usageMetadata: no usage chunk, still [DONE]");
}

#[test]
fn a_stream_cut_before_its_finish_reason_is_malformed() {
    let (mut translator, chunks) = stream(&[json!({"candidates": [{"content": {"parts": [{"text": "The sky"}]}}]})]);
    assert_eq!(chunks.len(), 2, "the role chunk and one delta");
    assert_eq!(translator.finish(), Err(AnswerError::Malformed("the stream ended before a finishReason".into())));
    assert!(matches!(GeminiToChat::new("m").finish(), Err(AnswerError::Malformed(_))), "an empty stream too");
}

#[test]
fn an_error_mid_stream_is_reported_with_its_status() {
    let (mut translator, _) = stream(&[json!({"candidates": [{"content": {"parts": [{"text": "Hel"}]}}]})]);
    let error = json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
                                 "status": "RESOURCE_EXHAUSTED"}});
    let (status, body) = reported(translator.push(&error.to_string()).map(|_| Value::Null));
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "RESOURCE_EXHAUSTED");
    let (status, _) =
        reported(GeminiToChat::new("m").push(r#"{"error": {"status": "RESOURCE_EXHAUSTED"}}"#).map(|_| Value::Null));
    assert_eq!(status, 429, "the status alone says 429");
    let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"}});
    let (status, _) = reported(GeminiToChat::new("m").push(&blocked.to_string()).map(|_| Value::Null));
    assert_eq!(status, 400);
}

#[test]
fn garbage_in_a_stream_is_malformed() {
    for data in ["", "not json", "[1,2]", "{\"hello\": 1}", "{\"candidates\": {}}", "{\"candidates\": [1]}"] {
        let result = GeminiToChat::new("m").push(data);
        assert!(matches!(result, Err(AnswerError::Malformed(_))), "{data:?}: {result:?}");
    }
}

// ---------------------------------------------------------------------------
// Embeddings

#[test]
fn embeddings_requests() {
    let body = embeddings_to_gemini(
        &object(json!({"model": "text-embedding-004", "input": ["one", "two"], "dimensions": 256,
                       "encoding_format": "float", "user": "u"})),
        "text-embedding-004",
    );
    insta::assert_json_snapshot!(body.expect("translates"));
    let single = embeddings_to_gemini(&object(json!({"input": "one"})), "models/gemini-embedding-001").expect("one");
    assert_eq!(
        single,
        json!({"requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "one"}]}}]})
    );
}

#[test]
fn embeddings_requests_gemini_cannot_take_are_refused() {
    let refused = |body: Value| embeddings_to_gemini(&object(body), "m").map_err(|r| r.field).expect_err("refused");
    assert_eq!(refused(json!({"input": [1, 2, 3]})), "input");
    assert_eq!(refused(json!({"input": [[1, 2], [3]]})), "input");
    assert_eq!(refused(json!({"input": "x", "encoding_format": "hex"})), "encoding_format");
    assert!(
        embeddings_to_gemini(&object(json!({"input": "x", "encoding_format": "base64"})), "m").is_ok(),
        "the caller encodes Gemini's floats"
    );
    assert_eq!(refused(json!({"input": []})), "input");
    assert_eq!(refused(json!({})), "input");
    assert_eq!(refused(json!({"input": ["a", {}]})), "input[1]");
    assert_eq!(refused(json!({"input": "x", "dimensions": "big"})), "dimensions");
    assert_eq!(refused(json!({"input": "x", "task": "search"})), "task");
}

#[test]
fn embeddings_answers() {
    let answer = json!({"embeddings": [{"values": [0.1, -0.2, 0.3]}, {"values": [0.0, 1.0, -1.0]}]});
    insta::assert_json_snapshot!(gemini_to_embeddings(&answer, "text-embedding-004", 7).expect("translates"));
    for bad in [
        json!({}),
        json!({"embeddings": []}),
        json!({"embeddings": [{"values": ["0.1"]}]}),
        json!({"embeddings": [{"values": [0.1]}, {"values": [0.1, 0.2]}]}),
        json!({"embeddings": [{}]}),
    ] {
        assert!(matches!(gemini_to_embeddings(&bad, "m", 1), Err(AnswerError::Malformed(_))), "{bad}");
    }
    let (status, _) =
        reported(gemini_to_embeddings(&json!({"error": {"code": 403, "status": "PERMISSION_DENIED"}}), "m", 1));
    assert_eq!(status, 403);
}

// ---------------------------------------------------------------------------
// Hostile input

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        prop::sample::select(vec![
            "user",
            "assistant",
            "tool",
            "system",
            "text",
            "image_url",
            "function",
            "STOP",
            "data:image/png;base64,AA",
            "https://x/y.png",
            "{}",
            "{\"a\":1}",
            "call_0",
            "#/$defs/A",
            "",
        ])
        .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        let keys = prop::sample::select(vec![
            "role",
            "content",
            "type",
            "text",
            "messages",
            "tool_calls",
            "tool_call_id",
            "function",
            "name",
            "arguments",
            "tools",
            "parameters",
            "properties",
            "$ref",
            "$defs",
            "anyOf",
            "items",
            "tool_choice",
            "image_url",
            "url",
            "candidates",
            "parts",
            "functionCall",
            "args",
            "thought",
            "finishReason",
            "usageMetadata",
            "error",
            "code",
            "status",
            "promptFeedback",
            "blockReason",
            "index",
            "embeddings",
            "values",
            "input",
            "stop",
            "n",
        ]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys.prop_map(str::to_owned), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_json_never_panics(value in arb_json(), policy in prop_oneof![Just(Unsupported::Drop), Just(Unsupported::Error)]) {
        let body = match &value {
            Value::Object(map) => map.clone(),
            other => object(json!({"messages": [other], "tools": [other], "response_format": other})),
        };
        let _ = chat_to_gemini(&body, policy);
        let _ = gemini_to_chat(&value, "m");
        let _ = embeddings_to_gemini(&body, "m");
        let _ = gemini_to_embeddings(&value, "m", 3);
        let mut translator = GeminiToChat::new("m");
        let _ = translator.push(&value.to_string());
        let _ = translator.push(&json!({"candidates": [value]}).to_string());
        let _ = translator.finish();
    }
}
