//! Tests of the Responses translation: requests to chat, chat answers and
//! streams back to Responses objects and events.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn to_chat(body: &Value) -> Value {
    Value::Object(responses_request_to_chat(body).expect("translates"))
}

fn refused(body: &Value) -> Refusal {
    match responses_request_to_chat(body) {
        Err(refusal) => refusal,
        Ok(chat) => panic!("translated: {chat:?}"),
    }
}

#[test]
fn instructions_and_a_string_input() {
    let chat = to_chat(&json!({
        "model": "gpt-5-mini",
        "instructions": "Be brief.",
        "input": "Hello!",
        "max_output_tokens": 64,
        "temperature": 0.3,
        "store": true,
        "metadata": {"team": "a"},
        "reasoning": {"effort": "low"},
        "truncation": "auto",
        "stream": true,
        "text": {"format": {"type": "json_object"}},
    }));
    assert_eq!(
        chat,
        json!({
            "model": "gpt-5-mini",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}],
            "max_tokens": 64,
            "temperature": 0.3,
            "stream": true,
            "stream_options": {"include_usage": true},
            "response_format": {"type": "json_object"},
        })
    );
}

#[test]
fn a_conversation_with_function_calls_and_tools() {
    insta::assert_json_snapshot!(to_chat(&json!({
        "model": "auto",
        "input": [
            {"role": "developer", "content": "Use tools."},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "Weather in Paris and Rome?"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
            ]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Looking.", "annotations": []}]},
            {"type": "function_call", "id": "fc_1", "call_id": "call_p", "name": "weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call", "id": "fc_2", "call_id": "call_r", "name": "weather", "arguments": "{\"city\":\"Rome\"}"},
            {"type": "function_call_output", "call_id": "call_p", "output": "21C"},
            {"type": "function_call_output", "call_id": "call_r", "output": [{"type": "input_text", "text": "25C"}]},
        ],
        "tools": [{"type": "function", "name": "weather", "description": "The weather.", "strict": true,
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
        "tool_choice": {"type": "function", "name": "weather"},
        "parallel_tool_calls": false,
        "text": {"format": {"type": "json_schema", "name": "report", "schema": {"type": "object"}, "strict": true}},
    })));
}

#[test]
fn what_needs_a_stored_response_is_refused_by_name() {
    let cases = [
        (json!({"input": "hi", "previous_response_id": "resp_1"}), "previous_response_id"),
        (json!({"input": "hi", "conversation": "conv_1"}), "conversation"),
        (json!({"input": "hi", "prompt": {"id": "pmpt_1"}}), "prompt"),
        (json!({"input": "hi", "background": true}), "background"),
        (json!({"input": [{"type": "item_reference", "id": "msg_1"}]}), "input[0]"),
        (
            json!({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]}),
            "input[0].content[0].file_id",
        ),
    ];
    for (body, field) in cases {
        let refusal = refused(&body);
        assert_eq!(refusal.field, field);
        assert!(refusal.message.contains("stores no responses"), "{refusal}");
    }
}

#[test]
fn hosted_tools_are_refused_naming_the_tool() {
    let refusal = refused(&json!({"input": "hi", "tools": [
        {"type": "function", "name": "f"},
        {"type": "web_search"},
    ]}));
    assert_eq!(refusal.field, "tools[1].type");
}

#[test]
fn malformed_requests_are_refused_naming_the_path() {
    let cases = [
        (json!([]), "body"),
        (json!({"model": "m"}), "input"),
        (json!({"input": 7}), "input"),
        (json!({"input": "hi", "unheard_of": 1}), "unheard_of"),
        (json!({"input": "hi", "max_output_tokens": "many"}), "max_output_tokens"),
        (json!({"input": "hi", "stream": "yes"}), "stream"),
        (json!({"input": "hi", "tool_choice": {"type": "web_search_preview"}}), "tool_choice"),
        (json!({"input": "hi", "text": {"format": {"type": "xml"}}}), "text.format.type"),
        (json!({"input": [7]}), "input[0]"),
        (json!({"input": [{"role": "robot", "content": "x"}]}), "input[0].role"),
        (json!({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}), "input[0].content[0].type"),
        (json!({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}), "input[0].call_id"),
        (json!({"input": [{"type": "function_call_output", "call_id": "c"}]}), "input[0].output"),
        (json!({"input": [{"type": "web_search_call", "id": "ws_1"}]}), "input[0].type"),
    ];
    for (body, field) in cases {
        assert_eq!(refused(&body).field, field, "{body}");
    }
}

#[test]
fn function_calls_without_a_message_before_them_open_an_assistant_message() {
    let chat = to_chat(&json!({"input": [
        {"role": "user", "content": "go"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
    ]}));
    assert_eq!(
        chat["messages"][1],
        json!({"role": "assistant", "content": null,
               "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
    );
}

// ---------------------------------------------------------------------------
// Answers

fn completion(message: Value, finish_reason: &str) -> Value {
    let mut completion = json!({
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-5-mini-2025-08-07",
        "choices": [{"index": 0, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70,
                  "prompt_tokens_details": {"cached_tokens": 10},
                  "completion_tokens_details": {"reasoning_tokens": 8}},
    });
    completion["choices"][0]["message"] = message;
    completion
}

#[test]
fn a_text_completion_as_a_response() {
    insta::assert_json_snapshot!(chat_to_response(
        &completion(json!({"role": "assistant", "content": "Hi there."}), "stop"),
        "gpt-5-mini"
    ));
}

#[test]
fn a_tool_call_completion_as_a_response() {
    let message = json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": "call_x", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
    ]});
    insta::assert_json_snapshot!(chat_to_response(&completion(message, "tool_calls"), "gpt-5-mini"));
}

#[test]
fn a_length_finish_is_an_incomplete_response() {
    let response = chat_to_response(&completion(json!({"role": "assistant", "content": "Once upon"}), "length"), "m");
    assert_eq!(response["status"], "incomplete");
    assert_eq!(response["incomplete_details"], json!({"reason": "max_output_tokens"}));
    assert_eq!(response["output"][0]["content"][0]["text"], "Once upon");
    let same = chat_to_response(&completion(json!({"role": "assistant", "content": "Once upon"}), "length"), "m");
    assert_eq!(response, same, "deterministic");
}

#[test]
fn a_completion_of_another_shape_still_gives_a_response() {
    let response = chat_to_response(&json!("nonsense"), "m");
    assert_eq!(response["id"], "resp_modelfleet");
    assert_eq!(response["output"], json!([]));
    assert_eq!(response["usage"], Value::Null);
}

// ---------------------------------------------------------------------------
// Streams

fn chunk(delta: Value, finish_reason: Option<&str>) -> Value {
    let mut chunk = json!({"id": "chatcmpl-s1", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "x",
                           "choices": [{"index": 0, "finish_reason": finish_reason}]});
    chunk["choices"][0]["delta"] = delta;
    chunk
}

fn run(chunks: &[Value]) -> Vec<SseEvent> {
    let mut events = ChatToResponseEvents::new("gpt-5-mini");
    let mut out: Vec<SseEvent> = chunks.iter().flat_map(|c| events.push(c)).collect();
    out.extend(events.finish());
    assert_eq!(events.finish(), Vec::new(), "finish closes once");
    assert_eq!(events.push(&chunks.first().cloned().unwrap_or_default()), Vec::new(), "nothing after finish");
    out
}

/// Event names and sequence numbers agree, numbers count from 0, and the
/// first two and the last events are the lifecycle ones.
fn check_order(events: &[SseEvent]) {
    for (n, event) in events.iter().enumerate() {
        assert_eq!(event.data["type"], event.event);
        assert_eq!(event.data["sequence_number"], n, "{}", event.event);
    }
    let names: Vec<&str> = events.iter().map(|e| e.event).collect();
    assert_eq!(names[..2], ["response.created", "response.in_progress"]);
    let last = names.last().copied().unwrap_or_default();
    assert!(last == "response.completed" || last == "response.incomplete", "{last}");
    let added = names.iter().filter(|n| **n == "response.output_item.added").count();
    let done = names.iter().filter(|n| **n == "response.output_item.done").count();
    assert_eq!(added, done, "every item added is done");
}

#[test]
fn a_streamed_text_then_tool_call() {
    let events = run(&[
        chunk(json!({"role": "assistant", "content": ""}), None),
        chunk(json!({"content": "Let me "}), None),
        chunk(json!({"content": "check."}), None),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_w", "type": "function",
                                     "function": {"name": "weather", "arguments": ""}}]}),
            None,
        ),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}), None),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}), None),
        chunk(json!({}), Some("tool_calls")),
        json!({"id": "chatcmpl-s1", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "x", "choices": [],
               "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42,
                         "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}}),
    ]);
    check_order(&events);
    let final_response = &events[events.len() - 1].data["response"];
    assert_eq!(final_response["output"][1]["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(final_response["usage"]["total_tokens"], 42);
    insta::assert_json_snapshot!(events.iter().map(|e| &e.data).collect::<Vec<_>>());
}

#[test]
fn an_empty_stream_is_still_a_valid_response() {
    let events = run(&[]);
    check_order(&events);
    let names: Vec<&str> = events.iter().map(|e| e.event).collect();
    assert_eq!(names, ["response.created", "response.in_progress", "response.completed"]);
    assert_eq!(events[2].data["response"]["output"], json!([]));
}

#[test]
fn a_stream_cut_by_length_is_incomplete_and_closes_its_message() {
    let events = run(&[chunk(json!({"content": "Once"}), None), chunk(json!({}), Some("length"))]);
    check_order(&events);
    let names: Vec<&str> = events.iter().map(|e| e.event).collect();
    assert_eq!(
        names[2..],
        [
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.incomplete",
        ]
    );
    assert_eq!(events[8].data["response"]["incomplete_details"], json!({"reason": "max_output_tokens"}));
}

#[test]
fn parallel_tool_calls_stream_one_item_after_another() {
    let call = |index: u64, id: &str, args: &str| {
        chunk(json!({"tool_calls": [{"index": index, "id": id, "function": {"name": "f", "arguments": args}}]}), None)
    };
    let events = run(&[call(0, "a", "{}"), call(1, "b", "{\"x\":1}"), chunk(json!({}), Some("tool_calls"))]);
    check_order(&events);
    let output = &events[events.len() - 1].data["response"]["output"];
    assert_eq!(output[0]["call_id"], "a");
    assert_eq!(output[1]["call_id"], "b");
    assert_eq!(output[1]["id"], "fc_s1_1");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_json_never_panics_and_streams_stay_in_order(values in prop::collection::vec(arb_json(), 0..6)) {
        let mut events = ChatToResponseEvents::new("m");
        let mut out = Vec::new();
        for value in &values {
            let _ = responses_request_to_chat(value);
            let _ = chat_to_response(value, "m");
            out.extend(events.push(value));
            out.extend(events.push(&json!({"choices": [{"delta": value}]})));
        }
        out.extend(events.finish());
        for (n, event) in out.iter().enumerate() {
            prop_assert_eq!(&event.data["sequence_number"], &json!(n));
        }
        prop_assert!(matches!(out.last().map(|e| e.event), Some("response.completed" | "response.incomplete")));
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(vec![
            "message",
            "function_call",
            "function_call_output",
            "input_text",
            "input_image",
            "user",
            "assistant",
            "function",
            "length",
            "auto",
            "json_schema",
            "",
        ])
        .prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 5, |inner| {
        let keys = prop::sample::select(vec![
            "input",
            "instructions",
            "tools",
            "tool_choice",
            "text",
            "format",
            "type",
            "role",
            "content",
            "call_id",
            "name",
            "arguments",
            "output",
            "choices",
            "delta",
            "tool_calls",
            "index",
            "id",
            "function",
            "finish_reason",
            "usage",
            "prompt_tokens",
            "completion_tokens",
            "message",
            "stream",
            "image_url",
        ]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys.prop_map(str::to_owned), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
