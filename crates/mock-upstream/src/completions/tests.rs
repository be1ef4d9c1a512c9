//! Legacy completions on a real socket: prompt shapes, choices, the
//! default cap, streams, refusals.

use serde_json::{Value, json};

use crate::{Behavior, Fault, MockUpstream, serve::words, test_support};

fn url(mock: &MockUpstream) -> String {
    format!("{}/completions", mock.base_url())
}

#[tokio::test]
async fn a_text_completion_has_one_choice_per_prompt_and_n() {
    let mock = MockUpstream::start().await.unwrap();
    let (status, body) =
        test_support::call(&url(&mock), &[], &json!({"model": "old", "prompt": "Say this is a test"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    let choice = json!({"text": words("old", 12), "index": 0, "finish_reason": "stop", "logprobs": null});
    assert_eq!(body["choices"], json!([choice]));
    // 18 characters: 5 tokens.
    assert_eq!(
        (body["usage"]["prompt_tokens"].as_u64(), body["usage"]["completion_tokens"].as_u64()),
        (Some(5), Some(12))
    );
    let check = async |prompt: Value, n: u32, choices: usize, prompt_tokens: u64| {
        let (status, body) =
            test_support::call(&url(&mock), &[], &json!({"model": "old", "prompt": prompt, "n": n})).await;
        assert_eq!(status, 200, "{prompt}");
        let got = body["choices"].as_array().unwrap();
        assert_eq!(got.len(), choices, "{prompt}");
        assert!(got.iter().enumerate().all(|(i, c)| c["index"] == i), "{body}");
        assert_eq!(body["usage"]["prompt_tokens"], prompt_tokens, "{prompt}");
        assert_eq!(body["usage"]["completion_tokens"].as_u64(), Some(12 * choices as u64));
    };
    check(json!(["one", "two", "three"]), 1, 3, 1 + 1 + 2).await;
    check(json!("one"), 2, 2, 1).await;
    check(json!([1, 2, 3, 4, 5]), 1, 1, 5).await;
    check(json!([[1, 2], [3]]), 2, 4, 3).await;
    mock.shutdown().await;
}

#[tokio::test]
async fn the_legacy_default_cap_of_16_tokens_cuts_with_length() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("old", Behavior { completion_tokens: 40, ..Behavior::default() });
    let (_, body) = test_support::call(&url(&mock), &[], &json!({"model": "old", "prompt": "x"})).await;
    assert_eq!(
        (body["choices"][0]["finish_reason"].as_str(), body["usage"]["completion_tokens"].as_u64()),
        (Some("length"), Some(16))
    );
    let (_, body) =
        test_support::call(&url(&mock), &[], &json!({"model": "old", "prompt": "x", "max_tokens": 100})).await;
    assert_eq!(
        (body["choices"][0]["finish_reason"].as_str(), body["usage"]["completion_tokens"].as_u64()),
        (Some("stop"), Some(40))
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn a_stream_is_text_chunks_then_the_finish_usage_and_done() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("old", Behavior { chunks: 3, ..Behavior::default() });
    let body = json!({"model": "old", "prompt": ["a", "b"], "stream": true, "stream_options": {"include_usage": true}});
    let events = test_support::stream(&url(&mock), &[], &body).await;
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let data: Vec<Value> = events[..events.len() - 1].iter().map(test_support::Event::json).collect();
    assert_eq!(data.len(), 2 * 3 + 2 + 1);
    for index in 0..2 {
        let text: String = data[..6]
            .iter()
            .map(|d| &d["choices"][0])
            .filter(|c| c["index"] == index)
            .map(|c| c["text"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(text, words("old", 12));
    }
    assert!(data.iter().all(|d| d["object"] == "text_completion"));
    assert_eq!(data[6]["choices"][0]["finish_reason"], "stop");
    assert_eq!(data[8]["usage"]["completion_tokens"], 24);
    // A mid-stream error is OpenAI's error event.
    mock.fail_next("old", Fault::MidStreamError(1), 1);
    let events = test_support::stream(&url(&mock), &[], &json!({"model": "old", "prompt": "a", "stream": true})).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1].json()["error"]["type"], "server_error");
    mock.shutdown().await;
}

#[tokio::test]
async fn a_prompt_it_cannot_read_or_too_many_choices_get_a_400() {
    let mock = MockUpstream::start().await.unwrap();
    for body in [
        json!({"model": "old", "prompt": 7}),
        json!({"model": "old", "prompt": []}),
        json!({"model": "old", "prompt": [{"text": "x"}]}),
        json!({"model": "old", "prompt": [[]]}),
        json!({"model": "old", "prompt": "x", "n": 0}),
        json!({"model": "old", "prompt": "x", "n": 129}),
        json!({"model": "old", "prompt": ["x", "y"], "n": 100}),
    ] {
        let (status, error) = test_support::call(&url(&mock), &[], &body).await;
        assert_eq!((status, error["error"]["type"].as_str()), (400, Some("invalid_request_error")), "{body}");
    }
    mock.shutdown().await;
}
