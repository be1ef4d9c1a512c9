//! Anthropic's shapes on a real socket: answers, streams, tool use,
//! required headers and fields, faults, rate-limit headers.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use super::rfc3339;
use crate::{
    Behavior, Fault, MockUpstream, RateLimits,
    test_support::{self, Event},
};

const HEADERS: &[(&str, &str)] = &[("anthropic-version", "2023-06-01"), ("x-api-key", "sk-ant")];

fn url(mock: &MockUpstream) -> String {
    format!("{}/v1/messages", mock.root_url())
}

fn request(model: &str, stream: bool) -> Value {
    json!({
        "model": model, "max_tokens": 1024, "stream": stream,
        "system": "be brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
    })
}

fn weather_tools() -> Value {
    json!([
        {"type": "web_search_20250305", "name": "web_search"},
        {"name": "get_weather", "description": "Weather", "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city"],
        }},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}}},
    ])
}

fn names(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_deref().unwrap_or("")).collect()
}

#[tokio::test]
async fn a_message_is_text_with_anthropics_usage_on_both_base_paths() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set(
        "claude",
        Behavior { cached_tokens: 2, cache_write_tokens: 1, reasoning_tokens: 3, ..Behavior::default() },
    );
    for url in [url(&mock), format!("{}/messages", mock.base_url())] {
        let (status, body) = test_support::call(&url, HEADERS, &request("claude", false)).await;
        assert_eq!(status, 200, "{url}: {body}");
        assert!(body["id"].as_str().unwrap().starts_with("msg_"), "{body}");
        assert_eq!((body["type"].as_str(), body["role"].as_str()), (Some("message"), Some("assistant")));
        assert_eq!(body["model"], "claude");
        assert_eq!(body["content"], json!([{"type": "text", "text": crate::serve::words("claude", 12)}]));
        assert_eq!((body["stop_reason"].clone(), body["stop_sequence"].clone()), (json!("end_turn"), Value::Null));
        // "be brief" and "hello there": 19 characters, 5 tokens, plus one message.
        let usage = json!({
            "input_tokens": 6 - 2 - 1, "cache_creation_input_tokens": 1, "cache_read_input_tokens": 2,
            "output_tokens": 12 + 3,
        });
        assert_eq!(body["usage"], usage);
    }
    // A cap below the answer's length cuts it.
    let mut capped = request("claude", false);
    capped["max_tokens"] = json!(5);
    let (_, body) = test_support::call(&url(&mock), HEADERS, &capped).await;
    assert_eq!((body["stop_reason"].as_str(), body["usage"]["output_tokens"].as_u64()), (Some("max_tokens"), Some(8)));
    mock.shutdown().await;
}

#[tokio::test]
async fn a_stream_comes_in_anthropics_event_order_and_its_deltas_make_the_text() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("claude", Behavior { chunks: 5, ..Behavior::default() });
    let events = test_support::stream(&url(&mock), HEADERS, &request("claude", true)).await;
    let mut expect = vec!["message_start", "content_block_start", "ping"];
    expect.extend(["content_block_delta"; 5]);
    expect.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names(&events), expect);
    for event in &events {
        assert_eq!(event.json()["type"].as_str(), event.name.as_deref(), "{event:?}");
    }
    let start = events[0].json();
    assert_eq!(start["message"]["content"], json!([]));
    assert_eq!(start["message"]["stop_reason"], Value::Null);
    assert_eq!(start["message"]["usage"]["input_tokens"], 6);
    assert_eq!(events[1].json()["content_block"], json!({"type": "text", "text": ""}));
    let text: String = events[3..8]
        .iter()
        .map(|e| {
            let delta = e.json()["delta"].clone();
            assert_eq!(delta["type"], "text_delta");
            delta["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(text, crate::serve::words("claude", 12));
    let delta = events[9].json();
    assert_eq!(delta["delta"], json!({"stop_reason": "end_turn", "stop_sequence": null}));
    assert_eq!(delta["usage"], json!({"output_tokens": 12}));
    mock.shutdown().await;
}

#[tokio::test]
async fn a_tool_call_is_a_tool_use_block_whose_streamed_json_is_whole() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("claude", Behavior { call_tools: true, chunks: 6, ..Behavior::default() });
    let mut body = request("claude", false);
    body["tools"] = weather_tools();
    let (_, answer) = test_support::call(&url(&mock), HEADERS, &body).await;
    assert_eq!(answer["stop_reason"], "tool_use");
    let block = &answer["content"][0];
    assert_eq!((block["type"].as_str(), block["name"].as_str()), (Some("tool_use"), Some("get_weather")));
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"), "{block}");
    assert_eq!(block["input"], json!({"city": "mock", "unit": "c"}));
    // Streamed: the input comes as JSON text in pieces that parse whole.
    body["stream"] = json!(true);
    let events = test_support::stream(&url(&mock), HEADERS, &body).await;
    let start = events.iter().find(|e| e.name.as_deref() == Some("content_block_start")).unwrap().json();
    assert_eq!(start["content_block"]["type"], "tool_use");
    assert_eq!(start["content_block"]["input"], json!({}));
    let pieces: Vec<String> = events
        .iter()
        .filter(|e| e.name.as_deref() == Some("content_block_delta"))
        .map(|e| {
            let delta = e.json()["delta"].clone();
            assert_eq!(delta["type"], "input_json_delta");
            delta["partial_json"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(pieces.len(), 6);
    let input: Value = serde_json::from_str(&pieces.concat()).unwrap();
    assert_eq!(input, block["input"]);
    let delta = events.iter().find(|e| e.name.as_deref() == Some("message_delta")).unwrap().json();
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    // A forced tool is the one called; `none` forbids calling any.
    body["stream"] = json!(false);
    body["tool_choice"] = json!({"type": "tool", "name": "get_time"});
    let (_, answer) = test_support::call(&url(&mock), HEADERS, &body).await;
    assert_eq!(answer["content"][0]["name"], "get_time");
    body["tool_choice"] = json!({"type": "none"});
    let (_, answer) = test_support::call(&url(&mock), HEADERS, &body).await;
    assert_eq!(
        (answer["content"][0]["type"].as_str(), answer["stop_reason"].as_str()),
        (Some("text"), Some("end_turn"))
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn requests_without_the_version_header_max_tokens_or_messages_are_refused() {
    let mock = MockUpstream::start().await.unwrap();
    let check = async |headers: &[(&str, &str)], body: Value, says: &str| {
        let answer = test_support::post(&url(&mock), headers, &body).await;
        assert_eq!(answer.status(), 400, "{body}");
        let error: Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
        assert_eq!(error["type"], "error");
        assert_eq!(error["error"]["type"], "invalid_request_error");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
    };
    check(&[], request("c", false), "anthropic-version: header is required").await;
    let mut body = request("c", false);
    body.as_object_mut().unwrap().remove("max_tokens");
    check(HEADERS, body, "max_tokens: Field required").await;
    let mut body = request("c", false);
    body["max_tokens"] = json!("lots");
    check(HEADERS, body, "max_tokens").await;
    check(HEADERS, json!({"model": "c", "max_tokens": 8}), "messages: Field required").await;
    check(HEADERS, json!({"model": "c", "max_tokens": 8, "messages": []}), "at least one message").await;
    check(HEADERS, json!({"max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}), "model").await;
    check(HEADERS, json!([1, 2]), "JSON object").await;
    // Not JSON at all.
    let answer = reqwest::Client::new().post(url(&mock)).body("{nope").send().await.unwrap();
    assert_eq!(answer.status(), 400);
    assert!(answer.text().await.unwrap().contains("invalid_request_error"));
    mock.shutdown().await;
}

#[tokio::test]
async fn faults_take_anthropics_shapes() {
    let mock = MockUpstream::start().await.unwrap();
    let check = async |fault: Fault, status: u16, kind: &str, says: &str| {
        mock.fail_next("c", fault, 1);
        let answer = test_support::post(&url(&mock), HEADERS, &request("c", false)).await;
        assert_eq!(answer.status(), status, "{fault:?}");
        assert_eq!(answer.headers()["request-id"], "req_mock");
        let retry = answer.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        let error: Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["error"]["type"], kind, "{error}");
        assert!(error["error"]["message"].as_str().unwrap().contains(says), "{error}");
        retry
    };
    check(Fault::Overloaded, 529, "overloaded_error", "Overloaded").await;
    let retry = check(Fault::RateLimited { retry_after_secs: 9 }, 429, "rate_limit_error", "rate limit").await;
    assert_eq!(retry.as_deref(), Some("9"));
    check(Fault::ServerError, 500, "api_error", "Internal").await;
    check(Fault::BadRequest, 400, "invalid_request_error", "roles must alternate").await;
    check(Fault::Unauthorized, 401, "authentication_error", "invalid x-api-key").await;
    check(Fault::Hang(Duration::from_millis(5)), 504, "timeout_error", "timed out").await;
    // Context: a prompt alone too long, or with max_tokens.
    mock.set("tight", Behavior { context_window: Some(5), ..Behavior::default() });
    let (status, error) = test_support::call(&url(&mock), HEADERS, &request("tight", false)).await;
    assert_eq!((status, error["error"]["message"].as_str()), (400, Some("prompt is too long: 6 tokens > 5 maximum")));
    mock.set("tight", Behavior { context_window: Some(100), ..Behavior::default() });
    let (status, error) = test_support::call(&url(&mock), HEADERS, &request("tight", false)).await;
    assert_eq!(status, 400);
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("input length and `max_tokens` exceed context limit: 6 + 1024 > 100"), "{message}");
    mock.shutdown().await;
}

#[tokio::test]
async fn a_refusal_is_a_message_with_no_content_and_a_midstream_error_an_error_event() {
    let mock = MockUpstream::start().await.unwrap();
    for fault in [Fault::PromptBlocked, Fault::AnswerFiltered] {
        mock.fail_next("c", fault, 2);
        let (status, body) = test_support::call(&url(&mock), HEADERS, &request("c", false)).await;
        assert_eq!((status, body["stop_reason"].as_str()), (200, Some("refusal")), "{fault:?}");
        assert_eq!(body["content"], json!([]));
        let events = test_support::stream(&url(&mock), HEADERS, &request("c", true)).await;
        assert_eq!(names(&events), ["message_start", "message_delta", "message_stop"], "{fault:?}");
        assert_eq!(events[1].json()["delta"]["stop_reason"], "refusal");
    }
    mock.fail_next("c", Fault::MidStreamError(2), 1);
    let events = test_support::stream(&url(&mock), HEADERS, &request("c", true)).await;
    let expect =
        ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta", "error"];
    assert_eq!(names(&events), expect);
    let error = events[5].json();
    assert_eq!(error, json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}));
    // An endless stream: its head, then deltas without end.
    mock.fail_next("c", Fault::SlowDrip { interval: Duration::from_millis(5) }, 1);
    let answer = test_support::post(&url(&mock), HEADERS, &request("c", true)).await;
    let mut body = answer.bytes_stream();
    let mut text = String::new();
    while test_support::events(&text).len() < 8 {
        use futures_util::StreamExt;
        text.push_str(std::str::from_utf8(&body.next().await.unwrap().unwrap()).unwrap());
    }
    let events = test_support::events(&text);
    assert_eq!(names(&events)[..4], ["message_start", "content_block_start", "ping", "content_block_delta"]);
    drop(body);
    test_support::no_body_left(&mock).await;
    mock.shutdown().await;
}

#[tokio::test]
async fn rate_limits_are_reported_in_anthropics_headers() {
    let mock = MockUpstream::start().await.unwrap();
    let limits = RateLimits { limit_requests: 50, remaining_requests: 3, reset_requests: Duration::from_secs(20) };
    mock.set("c", Behavior { rate_limits: Some(limits), ..Behavior::default() });
    let answer = test_support::post(&url(&mock), HEADERS, &request("c", false)).await;
    let header = |name: &str| answer.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(header("anthropic-ratelimit-requests-limit"), "50");
    assert_eq!(header("anthropic-ratelimit-requests-remaining"), "3");
    let reset = header("anthropic-ratelimit-requests-reset");
    assert!(reset.len() == 20 && reset.ends_with('Z') && reset.as_bytes()[10] == b'T', "{reset}");
    assert!(!answer.headers().contains_key("x-ratelimit-remaining-requests"));
    mock.shutdown().await;
}

#[test]
fn rfc3339_writes_utc_calendar_times() {
    let check = |secs: u64, expect: &str| assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(secs)), expect);
    check(0, "1970-01-01T00:00:00Z");
    check(951_782_400, "2000-02-29T00:00:00Z");
    check(1_700_000_000, "2023-11-14T22:13:20Z");
    check(4_102_444_799, "2099-12-31T23:59:59Z");
}
