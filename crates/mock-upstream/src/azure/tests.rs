//! Azure's routes on a real socket: `api-version`, `api-key`, the
//! deployment as the model, its own errors and filter annotations.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{Api, Behavior, Fault, KeyPolicy, MockUpstream, RateLimits, test_support};

fn url(mock: &MockUpstream, deployment: &str, path: &str, version: Option<&str>) -> String {
    let query = version.map(|v| format!("?api-version={v}")).unwrap_or_default();
    format!("{}/openai/deployments/{deployment}/{path}{query}", mock.root_url())
}

fn chat(stream: bool) -> Value {
    json!({"stream": stream, "messages": [{"role": "user", "content": "hello there"}]})
}

#[tokio::test]
async fn every_route_needs_api_version_or_answers_azures_404() {
    let mock = MockUpstream::start().await.unwrap();
    let embed = json!({"input": "x"});
    let prompt = json!({"prompt": "x"});
    for (path, body) in [("chat/completions", chat(false)), ("embeddings", embed), ("completions", prompt)] {
        for version in [None, Some("")] {
            let (status, error) = test_support::call(&url(&mock, "d", path, version), &[], &body).await;
            assert_eq!(status, 404, "{path} {version:?}");
            assert_eq!(error, json!({"error": {"code": "404", "message": "Resource not found"}}));
        }
        let (status, answer) = test_support::call(&url(&mock, "d", path, Some("2024-10-21")), &[], &body).await;
        assert_eq!(status, 200, "{path}: {answer}");
    }
    // Recorded under the deployment, with the query the gateway sent.
    let recorded = mock.recorded("d");
    assert_eq!(recorded.len(), 9);
    assert_eq!(recorded[8].api, Api::AzureCompletions);
    assert!(
        recorded[8].uri.ends_with("/openai/deployments/d/completions?api-version=2024-10-21"),
        "{}",
        recorded[8].uri
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn the_deployment_plays_the_model_and_the_answer_is_openais_with_filter_results() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("gpt4o-prod", Behavior { completion_tokens: 20, chunks: 2, ..Behavior::default() });
    let url = url(&mock, "gpt4o-prod", "chat/completions", Some("2024-10-21"));
    let (_, body) = test_support::call(&url, &[], &chat(false)).await;
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt4o-prod");
    assert_eq!(body["usage"]["completion_tokens"], 20);
    assert_eq!(body["prompt_filter_results"][0]["content_filter_results"]["hate"]["filtered"], false);
    assert_eq!(body["choices"][0]["content_filter_results"]["violence"]["severity"], "safe");
    // A stream opens with Azure's chunk of no choices.
    let mut streamed = chat(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let events = test_support::stream(&url, &[], &streamed).await;
    let first = events[0].json();
    assert_eq!(first["choices"], json!([]));
    assert!(first["prompt_filter_results"].is_array());
    assert_eq!(events[1].json()["choices"][0]["delta"]["role"], "assistant");
    let text: String =
        events[2..4].iter().map(|e| e.json()["choices"][0]["delta"]["content"].as_str().unwrap().to_owned()).collect();
    assert_eq!(text, body["choices"][0]["message"]["content"].as_str().unwrap());
    assert_eq!(events[5].json()["usage"]["completion_tokens"], 20);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert_eq!(mock.hits("gpt4o-prod"), 2);
    mock.shutdown().await;
}

#[tokio::test]
async fn the_key_is_api_key_and_azure_answers_bad_keys_rate_limits_and_filters_its_way() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_keys(KeyPolicy { accepted: vec!["az".into()], ..KeyPolicy::default() });
    let url = url(&mock, "d", "chat/completions", Some("2024-10-21"));
    let check = async |headers: &[(&str, &str)], status: u16, says: &str| {
        let (got, body) = test_support::call(&url, headers, &chat(false)).await;
        assert_eq!(got, status, "{headers:?}: {body}");
        if status != 200 {
            assert_eq!(body["error"]["code"], status.to_string(), "{body}");
            assert!(body["error"]["message"].as_str().unwrap().contains(says), "{body}");
        }
    };
    check(&[("api-key", "az")], 200, "").await;
    check(&[], 401, "missing subscription key").await;
    check(&[("api-key", "nope")], 401, "invalid subscription key").await;
    check(&[("authorization", "Bearer az")], 401, "missing subscription key").await;
    mock.set_keys(KeyPolicy::default());
    mock.fail_next("d", Fault::RateLimited { retry_after_secs: 3 }, 1);
    let answer = test_support::post(&url, &[], &chat(false)).await;
    assert_eq!(answer.status(), 429);
    assert_eq!(
        (answer.headers()["retry-after"].to_str().unwrap(), answer.headers()["retry-after-ms"].to_str().unwrap()),
        ("3", "3000")
    );
    let body: Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("Please retry after 3 seconds"), "{body}");
    mock.fail_next("d", Fault::PromptBlocked, 1);
    let (status, body) = test_support::call(&url, &[], &chat(false)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("content_filter")));
    assert_eq!(body["error"]["innererror"]["code"], "ResponsibleAIPolicyViolation");
    mock.fail_next("d", Fault::AnswerFiltered, 1);
    let (_, body) = test_support::call(&url, &[], &chat(false)).await;
    assert_eq!(body["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(body["choices"][0]["content_filter_results"]["violence"]["filtered"], true);
    // The rest is OpenAI's: a context error, rate-limit headers, transport faults.
    mock.fail_next("d", Fault::ContextWindow, 1);
    let (status, body) = test_support::call(&url, &[], &chat(false)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("context_length_exceeded")));
    let limits = RateLimits { limit_requests: 9, remaining_requests: 8, reset_requests: Duration::from_secs(1) };
    mock.set("d", Behavior { rate_limits: Some(limits), ..Behavior::default() });
    let answer = test_support::post(&url, &[], &chat(false)).await;
    assert_eq!(answer.headers()["x-ratelimit-remaining-requests"], "8");
    mock.shutdown().await;
}

#[tokio::test]
async fn azure_embeddings_are_openais_under_the_deployment() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("emb", Behavior { embedding_dimensions: 6, ..Behavior::default() });
    let url = url(&mock, "emb", "embeddings", Some("2024-10-21"));
    let (status, body) = test_support::call(&url, &[("api-key", "k")], &json!({"input": ["a", "b"]})).await;
    assert_eq!(status, 200);
    assert_eq!(body["model"], "emb");
    let first = test_support::floats(&body["data"][0]["embedding"]);
    assert_eq!(first, crate::embedding("emb", "a", 6));
    assert_eq!(mock.last_recorded("emb").unwrap().api, Api::AzureEmbeddings);
    mock.shutdown().await;
}
