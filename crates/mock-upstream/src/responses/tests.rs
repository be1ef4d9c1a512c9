//! The Responses API on a real socket: the response object, the named
//! events with their numbers, function calls, incomplete answers, errors.

use serde_json::{Value, json};

use crate::{Behavior, Fault, MockUpstream, serve::words, test_support};

fn url(mock: &MockUpstream) -> String {
    format!("{}/responses", mock.base_url())
}

fn request(stream: bool) -> Value {
    json!({"model": "r", "stream": stream, "instructions": "be brief", "input": "hello there"})
}

fn names(events: &[test_support::Event]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_deref().unwrap_or("")).collect()
}

#[tokio::test]
async fn a_response_holds_one_message_of_output_text_and_its_usage() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("r", Behavior { reasoning_tokens: 4, cached_tokens: 1, ..Behavior::default() });
    let (status, body) = test_support::call(&url(&mock), &[], &request(false)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["object"].as_str(), body["status"].as_str()), (Some("response"), Some("completed")));
    assert!(body["id"].as_str().unwrap().starts_with("resp_"));
    let message = &body["output"][0];
    assert_eq!((message["type"].as_str(), message["role"].as_str()), (Some("message"), Some("assistant")));
    assert_eq!(message["content"], json!([{"type": "output_text", "text": words("r", 12), "annotations": []}]));
    // "be brief" and "hello there": 19 characters, 5 tokens, plus one input.
    let usage = json!({
        "input_tokens": 6, "input_tokens_details": {"cached_tokens": 1},
        "output_tokens": 16, "output_tokens_details": {"reasoning_tokens": 4}, "total_tokens": 22,
    });
    assert_eq!(body["usage"], usage);
    // Cut by max_output_tokens: incomplete.
    let mut capped = request(false);
    capped["max_output_tokens"] = json!(5);
    let (_, body) = test_support::call(&url(&mock), &[], &capped).await;
    assert_eq!(
        (body["status"].as_str(), body["incomplete_details"]["reason"].as_str()),
        (Some("incomplete"), Some("max_output_tokens"))
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn a_stream_is_numbered_named_events_whose_deltas_make_the_text() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("r", Behavior { chunks: 3, ..Behavior::default() });
    let events = test_support::stream(&url(&mock), &[], &request(true)).await;
    let mut expect =
        vec!["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"];
    expect.extend(["response.output_text.delta"; 3]);
    expect.extend([
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]);
    assert_eq!(names(&events), expect);
    for (i, event) in events.iter().enumerate() {
        let data = event.json();
        assert_eq!(data["type"].as_str(), event.name.as_deref());
        assert_eq!(data["sequence_number"], i, "{data}");
    }
    assert_eq!(events[0].json()["response"]["status"], "in_progress");
    let text: String = events[4..7].iter().map(|e| e.json()["delta"].as_str().unwrap().to_owned()).collect();
    assert_eq!(text, words("r", 12));
    assert_eq!(events[7].json()["text"], text.as_str());
    let done = events[10].json();
    assert_eq!(done["response"]["status"], "completed");
    assert_eq!(done["response"]["output"][0]["content"][0]["text"], text.as_str());
    // A mid-stream error: an `error` event numbered in turn, then the end.
    mock.fail_next("r", Fault::MidStreamError(1), 1);
    let events = test_support::stream(&url(&mock), &[], &request(true)).await;
    assert_eq!(names(&events).last(), Some(&"error"));
    let error = events.last().unwrap().json();
    assert_eq!((error["code"].as_str(), error["sequence_number"].as_u64()), (Some("server_error"), Some(5)));
    mock.shutdown().await;
}

#[tokio::test]
async fn a_function_call_is_an_output_item_whose_streamed_arguments_parse() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("r", Behavior { call_tools: true, chunks: 4, ..Behavior::default() });
    let mut body = request(false);
    body["tools"] = json!([
        {"type": "web_search"},
        {"type": "function", "name": "lookup", "parameters": {
            "type": "object", "properties": {"q": {"type": "string"}},
        }},
    ]);
    let (_, answer) = test_support::call(&url(&mock), &[], &body).await;
    let item = &answer["output"][0];
    assert_eq!((item["type"].as_str(), item["name"].as_str()), (Some("function_call"), Some("lookup")));
    assert_eq!(item["arguments"], r#"{"q":"mock"}"#);
    assert!(item["call_id"].as_str().unwrap().starts_with("call_"));
    body["stream"] = json!(true);
    let events = test_support::stream(&url(&mock), &[], &body).await;
    let pieces: String = events
        .iter()
        .filter(|e| e.name.as_deref() == Some("response.function_call_arguments.delta"))
        .map(|e| e.json()["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&pieces).unwrap(), json!({"q": "mock"}));
    assert!(names(&events).contains(&"response.function_call_arguments.done"));
    assert_eq!(names(&events).last(), Some(&"response.completed"));
    mock.shutdown().await;
}

#[tokio::test]
async fn a_filtered_answer_is_incomplete_and_a_bad_input_a_400() {
    let mock = MockUpstream::start().await.unwrap();
    mock.fail_next("r", Fault::AnswerFiltered, 2);
    let (_, body) = test_support::call(&url(&mock), &[], &request(false)).await;
    assert_eq!(
        (body["status"].as_str(), body["incomplete_details"]["reason"].as_str()),
        (Some("incomplete"), Some("content_filter"))
    );
    assert_eq!(body["output"], json!([]));
    let events = test_support::stream(&url(&mock), &[], &request(true)).await;
    assert_eq!(names(&events), ["response.created", "response.in_progress", "response.incomplete"]);
    let (status, _) = test_support::call(&url(&mock), &[], &json!({"model": "r", "input": 3})).await;
    assert_eq!(status, 400);
    mock.shutdown().await;
}
