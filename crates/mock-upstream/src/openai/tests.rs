//! OpenAI's chat route on a real socket: the answer it always gave, tool
//! calls, reasoning tokens, and the new faults' shapes.

use serde_json::{Value, json};

use crate::{Behavior, Fault, MockUpstream, test_support};

fn url(mock: &MockUpstream) -> String {
    format!("{}/chat/completions", mock.base_url())
}

fn request(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hello there"}]})
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        }}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
    ])
}

#[tokio::test]
async fn a_plain_answer_is_the_one_the_route_always_gave() {
    let mock = MockUpstream::start().await.unwrap();
    let (status, body) = test_support::call(&url(&mock), &[], &request("m", false)).await;
    assert_eq!(status, 200);
    let expect = json!({
        "id": "chatcmpl-mock1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "m",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": crate::serve::words("m", 12)},
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": 4, "completion_tokens": 12, "total_tokens": 16,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    });
    assert_eq!(body, expect);
    let events = test_support::stream(&url(&mock), &[], &request("m", true)).await;
    let data: Vec<Value> = events[..events.len() - 1].iter().map(test_support::Event::json).collect();
    assert_eq!(data.len(), 1 + 4 + 1);
    assert_eq!(data[0]["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
    assert_eq!(data[5]["choices"][0]["finish_reason"], "stop");
    assert_eq!(events.last().unwrap().data, "[DONE]");
    mock.shutdown().await;
}

#[tokio::test]
async fn a_tool_call_comes_whole_or_as_argument_deltas_that_parse() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("m", Behavior { call_tools: true, chunks: 5, ..Behavior::default() });
    let mut body = request("m", false);
    body["tools"] = tools();
    let (_, answer) = test_support::call(&url(&mock), &[], &body).await;
    let choice = &answer["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!((call["type"].as_str(), call["function"]["name"].as_str()), (Some("function"), Some("get_weather")));
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"city": "mock", "days": 1}));
    // Streamed: the name first, then the arguments in pieces.
    body["stream"] = json!(true);
    let events = test_support::stream(&url(&mock), &[], &body).await;
    let data: Vec<Value> = events[..events.len() - 1].iter().map(test_support::Event::json).collect();
    let opening = &data[0]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(opening["function"]["name"], "get_weather");
    assert!(opening["id"].as_str().unwrap().starts_with("call_"), "{opening}");
    let pieces: String = data[1..6]
        .iter()
        .map(|d| d["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&pieces).unwrap(), arguments);
    assert_eq!(data[6]["choices"][0]["finish_reason"], "tool_calls");
    // Forced, or forbidden.
    body["stream"] = json!(false);
    body["tool_choice"] = json!({"type": "function", "function": {"name": "get_time"}});
    let (_, answer) = test_support::call(&url(&mock), &[], &body).await;
    assert_eq!(answer["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], "{}");
    body["tool_choice"] = json!("none");
    let (_, answer) = test_support::call(&url(&mock), &[], &body).await;
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    // Without tools, a tool-calling model answers text.
    let (_, answer) = test_support::call(&url(&mock), &[], &request("m", false)).await;
    assert!(answer["choices"][0]["message"]["content"].is_string());
    mock.shutdown().await;
}

#[tokio::test]
async fn reasoning_tokens_count_in_the_completion_and_are_detailed() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("o", Behavior { reasoning_tokens: 30, ..Behavior::default() });
    let (_, answer) = test_support::call(&url(&mock), &[], &request("o", false)).await;
    assert_eq!(answer["usage"]["completion_tokens"], 42);
    assert_eq!(answer["usage"]["completion_tokens_details"], json!({"reasoning_tokens": 30}));
    mock.shutdown().await;
}

#[tokio::test]
async fn overload_and_the_content_filter_take_openais_shapes() {
    let mock = MockUpstream::start().await.unwrap();
    mock.fail_next("m", Fault::Overloaded, 1);
    let (status, body) = test_support::call(&url(&mock), &[], &request("m", false)).await;
    assert_eq!((status, body["error"]["type"].as_str()), (503, Some("server_error")));
    mock.fail_next("m", Fault::PromptBlocked, 1);
    let (status, body) = test_support::call(&url(&mock), &[], &request("m", false)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("content_filter")));
    mock.fail_next("m", Fault::AnswerFiltered, 2);
    let (status, body) = test_support::call(&url(&mock), &[], &request("m", false)).await;
    assert_eq!((status, body["choices"][0]["finish_reason"].as_str()), (200, Some("content_filter")));
    assert_eq!(body["usage"]["completion_tokens"], 0);
    let events = test_support::stream(&url(&mock), &[], &request("m", true)).await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[1].json()["choices"][0]["finish_reason"], "content_filter");
    mock.shutdown().await;
}
