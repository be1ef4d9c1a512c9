//! Tests of the Anthropic translation: wire bodies pinned by snapshots,
//! round trips, streams event by event, the parameter table, refusals, and
//! a property that no input makes any public function panic.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;

fn map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn to_anthropic(chat: Value) -> Value {
    chat_to_anthropic(&map(chat), "claude-sonnet-4-5", 4096, Unsupported::Error).unwrap()
}

#[track_caller]
fn refused(chat: Value, policy: Unsupported) -> Refusal {
    chat_to_anthropic(&map(chat), "claude-sonnet-4-5", 4096, policy).unwrap_err()
}

/// A chat request with tools, tool calls, tool results and both kinds of image.
fn tool_conversation() -> Value {
    json!({
        "model": "my-route",
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is the weather where these were taken?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/paris.jpg"}},
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Lyon\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18°C, sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "21°C, cloudy"},
            {"role": "user", "content": "Which one is warmer?"},
        ],
        "tools": [{"type": "function", "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "stop": ["END"],
        "max_tokens": 300,
        "temperature": 0.5,
        "top_p": 0.9,
        "user": "user-42",
        "stream": true,
    })
}

#[test]
fn a_typical_request() {
    let body = to_anthropic(json!({
        "model": "claude",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello!"},
        ],
        "max_completion_tokens": 512,
        "max_tokens": 256,
        "temperature": 0.2,
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "alice",
    }));
    insta::assert_json_snapshot!("typical_request", body);
}

#[test]
fn a_request_with_tools_tool_results_and_images() {
    let mut chat = tool_conversation();
    chat["parallel_tool_calls"] = json!(false);
    let body = to_anthropic(chat);
    insta::assert_json_snapshot!("tool_request", body);
    // Both tool results sit in one user turn, ahead of the question.
    let turn = &body["messages"][2]["content"];
    assert_eq!(turn[0]["type"], "tool_result");
    assert_eq!(turn[1]["type"], "tool_result");
    assert_eq!(turn[2]["type"], "text");
}

#[test]
fn defaults_and_merges() {
    let body = to_anthropic(json!({"messages": [
        {"role": "developer", "content": [{"type": "text", "text": "A"}]},
        {"role": "user", "content": "one"},
        {"role": "user", "content": [{"type": "text", "text": "two", "cache_control": {"type": "ephemeral"}}]},
        {"role": "system", "content": "B"},
        {"role": "assistant", "content": ""},
        {"role": "assistant", "content": "three"},
    ]}));
    assert_eq!(body["max_tokens"], 4096, "the default");
    assert_eq!(body["system"], json!([{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]));
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": [
                {"type": "text", "text": "one"},
                {"type": "text", "text": "two", "cache_control": {"type": "ephemeral"}},
            ]},
            {"role": "assistant", "content": [{"type": "text", "text": "three"}]},
        ])
    );
    assert!(body.get("stream").is_none() && body.get("tools").is_none() && body.get("tool_choice").is_none());
    // A tool result that comes after a user's text still goes first.
    let body = to_anthropic(json!({"messages": [
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"role": "user", "content": "hm"},
        {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "ok"}]},
    ]}));
    assert_eq!(body["messages"][0]["content"][0]["input"], json!({}), "empty arguments are no arguments");
    assert_eq!(
        body["messages"][1]["content"],
        json!([
            {"type": "tool_result", "tool_use_id": "c", "content": [{"type": "text", "text": "ok"}]},
            {"type": "text", "text": "hm"},
        ])
    );
}

#[test]
fn tool_choices() {
    let tools = json!([{"type": "function", "function": {"name": "f"}}]);
    let table = [
        (json!("auto"), json!({"type": "auto"})),
        (json!("none"), json!({"type": "none"})),
        (json!("required"), json!({"type": "any"})),
        (json!({"type": "function", "function": {"name": "f"}}), json!({"type": "tool", "name": "f"})),
    ];
    for (choice, expect) in table {
        let body = to_anthropic(json!({"messages": [], "tools": tools, "tool_choice": choice}));
        assert_eq!(body["tool_choice"], expect, "{choice}");
        assert_eq!(body["tools"], json!([{"name": "f", "input_schema": {"type": "object", "properties": {}}}]));
    }
    let body = to_anthropic(json!({"messages": [], "tools": tools, "parallel_tool_calls": false}));
    assert_eq!(body["tool_choice"], json!({"type": "auto", "disable_parallel_tool_use": true}));
    let body =
        to_anthropic(json!({"messages": [], "tools": tools, "tool_choice": "none", "parallel_tool_calls": false}));
    assert_eq!(body["tool_choice"], json!({"type": "none"}));
    let body = to_anthropic(json!({"messages": [], "tool_choice": "auto"}));
    assert!(body.get("tool_choice").is_none(), "Anthropic refuses a tool choice without tools");
    assert_eq!(refused(json!({"messages": [], "tool_choice": "sometimes"}), Unsupported::Drop).field, "tool_choice");
}

/// Parameters Anthropic has no place for, each with a value that asks for something.
const UNSUPPORTED: [(&str, &str); 12] = [
    ("frequency_penalty", "0.5"),
    ("logit_bias", r#"{"50256": -100}"#),
    ("logprobs", "true"),
    ("metadata", r#"{"k": "v"}"#),
    ("n", "3"),
    ("presence_penalty", "1"),
    ("reasoning_effort", r#""high""#),
    ("response_format", r#"{"type": "json_object"}"#),
    ("seed", "7"),
    ("store", "true"),
    ("top_logprobs", "2"),
    ("made_up_field", "1"),
];

#[test]
fn unsupported_parameters_are_dropped_or_refused() {
    let mut chat = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10});
    for (key, value) in UNSUPPORTED {
        chat[key] = serde_json::from_str(value).unwrap();
    }
    let body = chat_to_anthropic(&map(chat.clone()), "claude", 4096, Unsupported::Drop).unwrap();
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["max_tokens", "messages", "model"]);
    // Error names the first (fields are visited in name order).
    let refusal = refused(chat, Unsupported::Error);
    assert_eq!(refusal.field, "frequency_penalty");
    assert_eq!(refusal.to_string(), "frequency_penalty: Anthropic's Messages API has no equivalent");
    for (key, value) in UNSUPPORTED {
        let mut chat = json!({"messages": []});
        chat[key] = serde_json::from_str(value).unwrap();
        assert_eq!(refused(chat.clone(), Unsupported::Error).field, key);
        let body = chat_to_anthropic(&map(chat), "claude", 4096, Unsupported::Drop).unwrap();
        assert!(body.get(key).is_none(), "{key}");
    }
    // Values that ask for nothing are no reason to refuse.
    let harmless = json!({
        "messages": [], "n": 1, "logprobs": false, "presence_penalty": 0, "frequency_penalty": 0.0,
        "response_format": {"type": "text"}, "seed": null, "logit_bias": null,
    });
    let body = to_anthropic(harmless);
    assert_eq!(body.as_object().unwrap().len(), 3, "{body}");
}

#[test]
fn values_anthropic_refuses_follow_the_policy() {
    let chat = json!({"messages": [], "temperature": 1.5, "stop": ["\n", "END"], "tools": [
        {"type": "custom", "custom": {"name": "grammar"}},
    ]});
    let body = chat_to_anthropic(&map(chat.clone()), "claude", 4096, Unsupported::Drop).unwrap();
    assert!(body.get("temperature").is_none());
    assert_eq!(body["stop_sequences"], json!(["END"]));
    assert!(body.get("tools").is_none());
    assert_eq!(refused(chat, Unsupported::Error).field, "stop", "fields are visited in name order");
    assert_eq!(refused(json!({"messages": [], "temperature": 1.01}), Unsupported::Error).field, "temperature");
    assert_eq!(
        refused(json!({"messages": [], "tools": [{"type": "custom"}]}), Unsupported::Error).field,
        "tools[0].type"
    );
    assert_eq!(to_anthropic(json!({"messages": [], "temperature": 1, "stop": "x"}))["stop_sequences"], json!(["x"]));
}

#[test]
fn malformed_requests_are_refused_naming_the_field() {
    let user = |content: Value| json!({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": content}]});
    let table = [
        (json!({}), "messages"),
        (json!({"messages": {}}), "messages"),
        (json!({"messages": [{"content": "x"}]}), "messages[0].role"),
        (json!({"messages": [{"role": "robot", "content": "x"}]}), "messages[0].role"),
        (user(json!([{"text": "no type"}])), "messages[1].content[0].type"),
        (user(json!([{"type": "hologram"}])), "messages[1].content[0].type"),
        (user(json!([{"type": "text"}])), "messages[1].content[0].text"),
        (
            user(json!([{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}])),
            "messages[1].content[0]",
        ),
        (
            user(json!([{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}])),
            "messages[1].content[0].image_url.url",
        ),
        (
            user(json!([{"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}}])),
            "messages[1].content[0].image_url.url",
        ),
        (user(json!([{"type": "file", "file": {"file_id": "file-1"}}])), "messages[1].content[0].file"),
        (user(json!(7)), "messages[1].content"),
        (
            json!({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x"}}]}]}),
            "messages[0].content[0]",
        ),
        (
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}]}]}),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}]}]}),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            json!({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]}),
            "messages[0].tool_calls[0].id",
        ),
        (json!({"messages": [{"role": "tool", "content": "x"}]}), "messages[0].tool_call_id"),
        (json!({"messages": [], "max_tokens": -1}), "max_tokens"),
        (json!({"messages": [], "temperature": "hot"}), "temperature"),
        (json!({"messages": [], "stop": [1]}), "stop"),
        (json!({"messages": [], "tools": [{"type": "function"}]}), "tools[0].function"),
        (
            json!({"messages": [], "tools": [{"type": "function", "function": {"name": "f", "parameters": 1}}]}),
            "tools[0].function.parameters",
        ),
    ];
    for (chat, field) in table {
        // Malformed input is refused whatever the policy.
        assert_eq!(refused(chat.clone(), Unsupported::Drop).field, field, "{chat}");
    }
}

fn anthropic_message(content: &Value, stop_reason: &str, usage: &Value) -> Value {
    json!({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": usage,
    })
}

#[test]
fn an_answer_with_text() {
    let answer = anthropic_message(
        &json!([{"type": "text", "text": "Hello"}, {"type": "text", "text": ", world."}]),
        "end_turn",
        &json!({"input_tokens": 12, "output_tokens": 6}),
    );
    insta::assert_json_snapshot!("answer_text", anthropic_to_chat(&answer).unwrap());
}

#[test]
fn an_answer_with_tool_use() {
    let answer = anthropic_message(
        &json!([{"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris", "days": 2}}]),
        "tool_use",
        &json!({"input_tokens": 400, "output_tokens": 40}),
    );
    let chat = anthropic_to_chat(&answer).unwrap();
    insta::assert_json_snapshot!("answer_tool_use", chat);
    let arguments = chat["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"].as_str().unwrap();
    assert_eq!(serde_json::from_str::<Value>(arguments).unwrap(), json!({"city": "Paris", "days": 2}));
}

#[test]
fn an_answer_with_thinking_and_cache_usage() {
    let answer = anthropic_message(
        &json!([
            {"type": "thinking", "thinking": "The user wants a haiku.", "signature": "EqQBCgIYAhIM"},
            {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va"},
            {"type": "text", "text": "Autumn moonlight—"},
        ]),
        "max_tokens",
        &json!({"input_tokens": 50, "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 8000, "output_tokens": 300}),
    );
    let chat = anthropic_to_chat(&answer).unwrap();
    insta::assert_json_snapshot!("answer_thinking_cache", chat);
    let usage = crate::usage_of(&chat["usage"]).unwrap();
    assert_eq!(
        usage,
        Usage {
            input_tokens: 9050,
            output_tokens: 300,
            cached_tokens: 8000,
            cache_write_tokens: 1000,
            reasoning_tokens: 0
        }
    );
}

#[test]
fn stop_reasons_become_finish_reasons() {
    let table = [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ];
    for (stop, finish) in table {
        let answer = anthropic_message(&json!([]), stop, &json!({"input_tokens": 1, "output_tokens": 1}));
        assert_eq!(anthropic_to_chat(&answer).unwrap()["choices"][0]["finish_reason"], finish, "{stop}");
    }
}

#[test]
fn answers_that_are_not_messages() {
    let overloaded = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
    let AnswerError::Reported { status, body } = anthropic_to_chat(&overloaded).unwrap_err() else { panic!() };
    assert_eq!(status, 529);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"error": {"message": "Overloaded", "type": "overloaded_error", "code": "overloaded_error"}})
    );
    let table = [
        (json!([1]), "not a JSON object"),
        (json!({"content": []}), "no `type`"),
        (json!({"type": "completion", "completion": "sk-secret-1234"}), "not \"message\""),
        (json!({"type": "message", "content": "sk-secret-1234"}), "no `content` array"),
        (json!({"type": "message", "content": [{"type": "tool_use", "input": "sk-secret-1234"}]}), "content[0]"),
    ];
    for (answer, what) in table {
        let AnswerError::Malformed(message) = anthropic_to_chat(&answer).unwrap_err() else { panic!("{answer}") };
        assert!(message.contains(what), "{message}");
        assert!(!message.contains("sk-secret"), "the body is never echoed: {message}");
    }
    let no_usage = anthropic_to_chat(&json!({"type": "message", "content": []})).unwrap();
    assert!(no_usage.get("usage").is_none(), "unknown usage is no usage");
}

#[test]
fn chat_to_anthropic_to_chat_keeps_the_conversation() {
    let chat = tool_conversation();
    let anthropic = to_anthropic(chat.clone());
    let back = anthropic_request_to_chat(&anthropic).unwrap();
    assert_eq!(back["model"], "claude-sonnet-4-5");
    for key in ["messages", "tools", "tool_choice", "stop", "max_tokens", "temperature", "top_p", "user", "stream"] {
        assert_eq!(back[key], chat[key], "{key}");
    }
    assert_eq!(back["stream_options"], json!({"include_usage": true}), "a stream asks for its usage");
    assert!(back.get("parallel_tool_calls").is_none());
}

#[test]
fn anthropic_requests_become_chat() {
    let request = json!({
        "model": "claude-opus-4-1",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}},
                {"type": "text", "text": "Describe these."},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "zoom", "input": {"factor": 2}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": false, "content": [
                    {"type": "text", "text": "zoomed"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}},
                ]},
                {"type": "text", "text": "And now?"},
            ]},
        ],
        "tools": [{"name": "zoom", "description": "Zooms", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "stop_sequences": ["STOP"],
        "temperature": 0.3,
        "top_k": 40,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "metadata": {"user_id": "u-9"},
        "stream": false,
    });
    let chat = Value::Object(anthropic_request_to_chat(&request).unwrap());
    insta::assert_json_snapshot!("anthropic_request_as_chat", chat);
    assert!(chat.get("top_k").is_none() && chat.get("thinking").is_none());
}

#[test]
fn anthropic_requests_that_are_refused() {
    let base = || json!({"model": "m", "max_tokens": 10, "messages": []});
    let with = |key: &str, value: Value| {
        let mut body = base();
        body[key] = value;
        body
    };
    let user = |content: Value| with("messages", json!([{"role": "user", "content": content}]));
    let mut no_max = base();
    no_max.as_object_mut().unwrap().remove("max_tokens");
    assert_eq!(anthropic_request_to_chat(&no_max).unwrap_err().to_string(), "max_tokens: required");
    let table = [
        (json!("text"), "body"),
        (with("max_tokens", json!("many")), "max_tokens"),
        (with("messages", json!(null)), "messages"),
        (with("messages", json!([{"role": "system", "content": "x"}])), "messages[0].role"),
        (user(json!([{"text": "untyped"}])), "messages[0].content[0].type"),
        (
            user(json!([{"type": "image", "source": {"type": "file", "file_id": "f"}}])),
            "messages[0].content[0].source.type",
        ),
        (
            user(json!([{"type": "image", "source": {"type": "base64", "data": "x"}}])),
            "messages[0].content[0].source.media_type",
        ),
        (
            user(json!([{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image"}]}])),
            "messages[0].content[0].content[0].source",
        ),
        (
            user(json!([{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document"}]}])),
            "messages[0].content[0].content[0].type",
        ),
        (user(json!([{"type": "tool_result"}])), "messages[0].content[0].tool_use_id"),
        (user(json!([{"type": "search_result"}])), "messages[0].content[0].type"),
        (user(json!(5)), "messages[0].content"),
        (with("system", json!([{"type": "image"}])), "system[0].type"),
        (with("tools", json!([{"type": "web_search_20250305", "name": "web_search"}])), "tools[0].type"),
        (with("tools", json!([{"input_schema": {}}])), "tools[0].name"),
        (with("tool_choice", json!({"type": "maybe"})), "tool_choice.type"),
        (with("tool_choice", json!({"type": "tool"})), "tool_choice.name"),
        (with("stop_sequences", json!("STOP")), "stop_sequences"),
        (with("temperature", json!("warm")), "temperature"),
    ];
    for (body, field) in table {
        assert_eq!(anthropic_request_to_chat(&body).unwrap_err().field, field, "{body}");
    }
}

#[test]
fn chat_completions_become_anthropic_messages() {
    let completion = json!({
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant",
            "reasoning_content": "They want weather.",
            "content": "Checking.",
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{not json"}},
            ],
        }}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 50, "prompt_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 100}},
    });
    insta::assert_json_snapshot!("completion_as_anthropic", chat_to_anthropic_message(&completion, "claude-route"));
    let table =
        [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal"), ("tool_calls", "tool_use")];
    for (finish, stop) in table {
        let completion = json!({"choices": [{"message": {"content": "x"}, "finish_reason": finish}]});
        assert_eq!(chat_to_anthropic_message(&completion, "m")["stop_reason"], stop);
    }
    let refusal =
        json!({"choices": [{"message": {"content": null, "refusal": "I can't."}, "finish_reason": "content_filter"}]});
    let message = chat_to_anthropic_message(&refusal, "m");
    assert_eq!(message["content"], json!([{"type": "text", "text": "I can't."}]));
    assert_eq!(message["usage"]["input_tokens"], 0, "no usage is zero usage");
}

#[test]
fn anthropic_errors_by_status() {
    let table = [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ];
    for (status, kind) in table {
        let error = anthropic_error(status, "went wrong");
        assert_eq!(error, json!({"type": "error", "error": {"type": kind, "message": "went wrong"}}), "{status}");
        // And back: the type stands for the status (any 4xx without its own type is a 400).
        let AnswerError::Reported { status: back, .. } = anthropic_to_chat(&error).unwrap_err() else { panic!() };
        let expect = match status {
            422 => 400,
            502 => 500,
            503 => 529,
            _ => status,
        };
        assert_eq!(back, expect, "{kind}");
    }
}

// Streams, upstream direction.

fn event(data: &Value) -> String {
    data.to_string()
}

fn message_start(usage: &Value) -> String {
    event(&json!({"type": "message_start", "message": {
        "id": "msg_014p7gG3wDgGV9EUtLvnow3U", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5-20250929", "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": usage,
    }}))
}

/// A recorded-looking stream: text, then a tool call whose input arrives in three pieces.
fn tool_stream() -> Vec<String> {
    let delta =
        |index: u64, delta: Value| event(&json!({"type": "content_block_delta", "index": index, "delta": delta}));
    vec![
        message_start(
            &json!({"input_tokens": 472, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 2}),
        ),
        event(&json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
        event(&json!({"type": "ping"})),
        delta(0, json!({"type": "text_delta", "text": "Okay, let me check"})),
        delta(0, json!({"type": "text_delta", "text": " the weather."})),
        event(&json!({"type": "content_block_stop", "index": 0})),
        event(&json!({"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "input": {},
        }})),
        delta(1, json!({"type": "input_json_delta", "partial_json": ""})),
        delta(1, json!({"type": "input_json_delta", "partial_json": "{\"location\": \"San Fra"})),
        delta(1, json!({"type": "input_json_delta", "partial_json": "ncisco, CA\", \"unit\": \"fah"})),
        delta(1, json!({"type": "input_json_delta", "partial_json": "renheit\"}"})),
        event(&json!({"type": "content_block_stop", "index": 1})),
        event(
            &json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 89}}),
        ),
        event(&json!({"type": "message_stop"})),
    ]
}

fn run(events: &[String]) -> Result<Vec<String>, AnswerError> {
    let mut stream = AnthropicToChat::new();
    let mut chunks = Vec::new();
    for data in events {
        chunks.extend(stream.push(data)?);
    }
    chunks.extend(stream.finish()?);
    Ok(chunks)
}

#[test]
fn a_stream_with_text_and_a_tool_call() {
    let chunks = run(&tool_stream()).unwrap();
    insta::assert_snapshot!("stream_text_tool", chunks.join("\n"));
    let (done, json_chunks) = chunks.split_last().unwrap();
    assert_eq!(done, "[DONE]");
    let parsed: Vec<Value> = json_chunks.iter().map(|c| serde_json::from_str(c).unwrap()).collect();
    let arguments: String = parsed
        .iter()
        .filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0/function/arguments").and_then(Value::as_str))
        .collect();
    let arguments: Value = serde_json::from_str(&arguments).unwrap();
    assert_eq!(arguments, json!({"location": "San Francisco, CA", "unit": "fahrenheit"}));
    let text: String =
        parsed.iter().filter_map(|c| c.pointer("/choices/0/delta/content").and_then(Value::as_str)).collect();
    assert_eq!(text, "Okay, let me check the weather.");
    let finish: Vec<&Value> =
        parsed.iter().filter_map(|c| c.pointer("/choices/0/finish_reason")).filter(|f| !f.is_null()).collect();
    assert_eq!(finish, [&json!("tool_calls")]);
    let usage = parsed.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(crate::usage_of(&usage["usage"]), Some(Usage::new(472, 89)));
}

#[test]
fn stream_usage_is_normalised() {
    let events = [
        message_start(
            &json!({"input_tokens": 12, "cache_creation_input_tokens": 300, "cache_read_input_tokens": 2000, "output_tokens": 1}),
        ),
        event(
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
        ),
        event(
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me think."}}),
        ),
        event(
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQB"}}),
        ),
        event(&json!({"type": "content_block_stop", "index": 0})),
        event(&json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 50}})),
        event(&json!({"type": "a_future_event", "what": "ever"})),
        event(&json!({"type": "message_stop"})),
    ];
    let chunks = run(&events).unwrap();
    let reasoning: Value = serde_json::from_str(&chunks[1]).unwrap();
    assert_eq!(reasoning["choices"][0]["delta"], json!({"reasoning_content": "Let me think."}));
    let usage: Value = serde_json::from_str(&chunks[chunks.len() - 2]).unwrap();
    assert_eq!(
        usage["usage"],
        json!({
            "prompt_tokens": 2312,
            "completion_tokens": 50,
            "total_tokens": 2362,
            "prompt_tokens_details": {"cached_tokens": 2000, "cache_write_tokens": 300},
            "completion_tokens_details": {"reasoning_tokens": 0},
        })
    );
}

#[test]
fn an_error_event_mid_stream_is_reported() {
    let mut events = tool_stream();
    events.insert(4, event(&json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})));
    let AnswerError::Reported { status, body } = run(&events).unwrap_err() else { panic!() };
    assert_eq!(status, 529);
    assert_eq!(body, r#"{"error":{"code":"overloaded_error","message":"Overloaded","type":"overloaded_error"}}"#);
    let rate = event(&json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}));
    assert!(matches!(run(&[rate]), Err(AnswerError::Reported { status: 429, .. })));
}

#[test]
fn a_cut_stream_is_malformed() {
    let events = tool_stream();
    let cut = &events[..events.len() - 1];
    assert_eq!(run(cut).unwrap_err(), AnswerError::Malformed("the stream ended before message_stop".into()));
    assert!(matches!(run(&[]), Err(AnswerError::Malformed(_))));
    // After message_stop, nothing more comes out.
    let mut stream = AnthropicToChat::new();
    for data in &events {
        stream.push(data).unwrap();
    }
    assert_eq!(stream.push(&events[3]), Ok(vec![]));
    assert_eq!(stream.finish(), Ok(vec![]));
}

#[test]
fn garbage_in_a_stream_is_malformed() {
    let start = message_start(&json!({"input_tokens": 1, "output_tokens": 1}));
    let table: [&[&str]; 8] = [
        &["not json"],
        &[""],
        &["{\"no\": \"type\"}"],
        &[r#"{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "early"}}"#],
        &[r#"{"type": "message_start"}"#],
        &[&start, &start],
        &[&start, r#"{"type": "content_block_start", "content_block": {"type": "text"}}"#],
        &[&start, r#"{"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use"}}"#],
    ];
    for events in table {
        let events: Vec<String> = events.iter().map(|e| (*e).to_owned()).collect();
        assert!(matches!(run(&events), Err(AnswerError::Malformed(_))), "{events:?}");
    }
}

// Streams, client direction.

fn replay(chunks: &[Value]) -> Vec<SseEvent> {
    let mut stream = ChatToAnthropicEvents::new("claude-route", 120);
    let mut events: Vec<SseEvent> = chunks.iter().flat_map(|c| stream.push(c)).collect();
    events.extend(stream.finish());
    assert!(stream.finish().is_empty(), "finish twice sends nothing more");
    events
}

fn wire(events: &[SseEvent]) -> String {
    events.iter().map(|e| format!("event: {}\ndata: {}\n", e.event, e.data)).collect::<Vec<_>>().join("\n")
}

fn chunk(delta: &Value, finish: Option<&str>) -> Value {
    json!({"id": "chatcmpl-9x", "object": "chat.completion.chunk", "created": 0, "model": "gpt-4o",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

#[test]
fn chat_chunks_become_anthropic_events() {
    let chunks = [
        chunk(&json!({"role": "assistant", "content": ""}), None),
        chunk(&json!({"reasoning_content": "Weather, then."}), None),
        chunk(&json!({"content": "Let me "}), None),
        chunk(&json!({"content": "check."}), None),
        chunk(
            &json!({"tool_calls": [{"index": 0, "id": "call_A", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
            None,
        ),
        chunk(&json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}), None),
        chunk(&json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}), None),
        chunk(
            &json!({"tool_calls": [{"index": 1, "id": "call_B", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]}),
            None,
        ),
        chunk(&json!({}), Some("tool_calls")),
        json!({"id": "chatcmpl-9x", "object": "chat.completion.chunk", "choices": [],
            "usage": {"prompt_tokens": 130, "completion_tokens": 25, "prompt_tokens_details": {"cached_tokens": 100}}}),
    ];
    let events = replay(&chunks);
    insta::assert_snapshot!("chat_chunks_as_anthropic_events", wire(&events));
    // Every block that starts stops, in order, before the message ends.
    let mut open = None;
    for e in &events {
        match e.event {
            "content_block_start" => assert_eq!(open.replace(e.data["index"].clone()), None),
            "content_block_delta" if e.data["delta"]["type"] == "input_json_delta" => {}
            "content_block_delta" => assert_eq!(Some(&e.data["index"]), open.as_ref()),
            "content_block_stop" => assert_eq!(open.take().as_ref(), Some(&e.data["index"])),
            _ => assert_eq!(open, None, "{}", e.event),
        }
    }
}

#[test]
fn a_chat_stream_without_content_still_makes_a_message() {
    let names = |events: &[SseEvent]| events.iter().map(|e| e.event).collect::<Vec<_>>();
    let events = replay(&[]);
    assert_eq!(names(&events), ["message_start", "message_delta", "message_stop"]);
    assert_eq!(events[0].data["message"]["usage"]["input_tokens"], 120, "the estimate");
    assert_eq!(events[1].data["delta"]["stop_reason"], "end_turn");
    assert_eq!(events[1].data["usage"], json!({"output_tokens": 0}));
    let events = replay(&[chunk(&json!({"role": "assistant", "content": ""}), Some("length"))]);
    assert_eq!(names(&events), ["message_start", "message_delta", "message_stop"]);
    assert_eq!(events[0].data["message"]["id"], "msg_9x");
    assert_eq!(events[1].data["delta"]["stop_reason"], "max_tokens");
}

// No input makes any public function panic.

const KEYS: [&str; 30] = [
    "type",
    "role",
    "content",
    "messages",
    "text",
    "tool_calls",
    "function",
    "arguments",
    "name",
    "id",
    "image_url",
    "url",
    "source",
    "media_type",
    "data",
    "tool_call_id",
    "tool_use_id",
    "tools",
    "tool_choice",
    "max_tokens",
    "stop",
    "system",
    "input",
    "index",
    "delta",
    "usage",
    "message",
    "choices",
    "content_block",
    "partial_json",
];

const WORDS: [&str; 30] = [
    "user",
    "assistant",
    "system",
    "tool",
    "text",
    "tool_use",
    "tool_result",
    "image",
    "image_url",
    "message",
    "message_start",
    "content_block_start",
    "content_block_delta",
    "message_delta",
    "message_stop",
    "text_delta",
    "input_json_delta",
    "thinking_delta",
    "error",
    "function",
    "auto",
    "any",
    "none",
    "required",
    "base64",
    "url",
    "data:image/png;base64,AAAA",
    "https://x/y.png",
    "{\"a\":1}",
    "",
];

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-3.0..3.0f64).prop_map(Value::from),
        "[ -~]{0,6}".prop_map(Value::String),
        proptest::sample::select(&WORDS[..]).prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 96, 6, |inner| {
        let key = prop_oneof![proptest::sample::select(&KEYS[..]).prop_map(str::to_owned), "[a-z]{1,3}"];
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec((key, inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn no_value_makes_a_public_function_panic(value in any_json(), events in proptest::collection::vec(any_json(), 0..6)) {
        if let Value::Object(chat) = &value {
            for policy in [Unsupported::Drop, Unsupported::Error] {
                let _ = chat_to_anthropic(chat, "m", 16, policy);
            }
        }
        let _ = anthropic_to_chat(&value);
        let _ = anthropic_request_to_chat(&value);
        let _ = chat_to_anthropic_message(&value, "m");
        let mut to_chat = AnthropicToChat::new();
        let mut to_events = ChatToAnthropicEvents::new("m", 1);
        for data in events.iter().chain([&value]) {
            let _ = to_chat.push(&data.to_string());
            let _ = to_events.push(data);
        }
        let _ = to_chat.finish();
        let _ = to_events.finish();
    }

    #[test]
    fn no_bytes_make_the_stream_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut stream = AnthropicToChat::new();
        let start = message_start(&json!({"input_tokens": 1, "output_tokens": 1}));
        stream.push(&start).unwrap();
        let data = String::from_utf8_lossy(&data);
        let _ = stream.push(&data);
        let _ = stream.finish();
    }

    #[test]
    fn wellformed_chat_requests_survive_a_round_trip(
        texts in proptest::collection::vec("[ -~]{1,12}", 1..6),
        temperature in 0.0..=1.0f64,
    ) {
        let messages: Vec<Value> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": text}))
            .collect();
        let chat = json!({"messages": messages, "max_tokens": 64, "temperature": temperature});
        let back = anthropic_request_to_chat(&to_anthropic(chat.clone())).unwrap();
        prop_assert_eq!(&back["messages"], &chat["messages"]);
        prop_assert_eq!(&back["temperature"], &chat["temperature"]);
    }
}
