//! Gemini's shapes on a real socket: answers, SSE and JSON-array streams,
//! function calls, safety blocks, faults, keys, embeddings.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{Api, Behavior, Fault, KeyPolicy, MockUpstream, embedding, serve::words, test_support};

const KEY: &[(&str, &str)] = &[("x-goog-api-key", "AIza-mock")];

fn url(mock: &MockUpstream, model: &str, action: &str) -> String {
    format!("{}/v1beta/models/{model}:{action}", mock.root_url())
}

fn request() -> Value {
    json!({
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "contents": [{"role": "user", "parts": [{"text": "hello there"}]}],
        "generationConfig": {"maxOutputTokens": 1000},
    })
}

fn weather() -> Value {
    json!([{"functionDeclarations": [
        {"name": "get_weather", "parameters": {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}}},
        {"name": "get_time", "parametersJsonSchema": {"type": "object", "properties": {"zone": {"type": "string"}}}},
    ]}])
}

/// The data of each event of a raw SSE body, checking Google's CRLF ends.
fn sse(raw: &str) -> Vec<Value> {
    assert!(raw.ends_with("\r\n\r\n"), "{raw:?}");
    assert!(!raw.contains("[DONE]"), "{raw}");
    test_support::events(raw).iter().map(test_support::Event::json).collect()
}

async fn stream(mock: &MockUpstream, model: &str, body: &Value) -> Vec<Value> {
    let answer = test_support::post(&url(mock, model, "streamGenerateContent?alt=sse"), KEY, body).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["content-type"], "text/event-stream");
    sse(&answer.text().await.unwrap())
}

#[tokio::test]
async fn generate_content_answers_candidates_and_usage_metadata_on_every_base_path() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("gem", Behavior { cached_tokens: 2, reasoning_tokens: 5, ..Behavior::default() });
    let root = mock.root_url();
    for prefix in ["/v1beta", "/v1", ""] {
        let url = format!("{root}{prefix}/models/gem:generateContent");
        let (status, body) = test_support::call(&url, KEY, &request()).await;
        assert_eq!(status, 200, "{url}: {body}");
        let text = words("gem", 12);
        let candidate = json!({
            "content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": 0,
        });
        assert_eq!(body["candidates"], json!([candidate]));
        // "be brief" and "hello there": 19 characters, 5 tokens, plus one content.
        let usage = json!({
            "promptTokenCount": 6, "candidatesTokenCount": 12, "totalTokenCount": 6 + 12 + 5,
            "cachedContentTokenCount": 2, "thoughtsTokenCount": 5,
        });
        assert_eq!(body["usageMetadata"], usage);
        assert_eq!(body["modelVersion"], "gem");
        assert!(body["responseId"].is_string());
        assert_eq!(mock.last_recorded("gem").unwrap().api, Api::GeminiGenerate);
    }
    // Several candidates; a cap that cuts the answer says MAX_TOKENS.
    let mut body = request();
    body["generationConfig"] = json!({"candidateCount": 2, "maxOutputTokens": 6});
    let (_, answer) = test_support::call(&url(&mock, "plain", "generateContent"), KEY, &body).await;
    let candidates = answer["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 2);
    assert_eq!(
        (candidates[1]["index"].clone(), candidates[1]["finishReason"].clone()),
        (json!(1), json!("MAX_TOKENS"))
    );
    assert_eq!(answer["usageMetadata"]["candidatesTokenCount"], 12);
    assert_eq!(answer["usageMetadata"].get("thoughtsTokenCount"), None);
    mock.shutdown().await;
}

#[tokio::test]
async fn a_stream_is_crlf_ended_data_events_with_cumulative_usage_and_the_finish_last() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("gem", Behavior { chunks: 5, ..Behavior::default() });
    let events = stream(&mock, "gem", &request()).await;
    assert_eq!(events.len(), 5);
    let mut text = String::new();
    let mut seen = 0;
    for (i, event) in events.iter().enumerate() {
        let candidate = &event["candidates"][0];
        text.push_str(candidate["content"]["parts"][0]["text"].as_str().unwrap());
        assert_eq!(candidate["content"]["role"], "model");
        assert_eq!(candidate.get("finishReason").is_some(), i == 4, "{event}");
        let so_far = event["usageMetadata"]["candidatesTokenCount"].as_u64().unwrap();
        assert!(so_far >= seen, "{event}");
        seen = so_far;
        assert_eq!(event["usageMetadata"]["promptTokenCount"], 6);
    }
    assert_eq!(text, words("gem", 12));
    assert_eq!(events[4]["candidates"][0]["finishReason"], "STOP");
    assert_eq!(events[4]["usageMetadata"]["totalTokenCount"], 18);
    // Without `alt=sse`: Google's default, one JSON array.
    let answer = test_support::post(&url(&mock, "gem", "streamGenerateContent"), KEY, &request()).await;
    assert_eq!(answer.headers()["content-type"], "application/json");
    let array: Vec<Value> = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
    let unnamed = |events: &[Value]| {
        let mut events = events.to_vec();
        for event in &mut events {
            event["responseId"] = Value::Null;
        }
        events
    };
    assert_eq!(unnamed(&array), unnamed(&events));
    mock.shutdown().await;
}

#[tokio::test]
async fn a_function_call_is_a_function_call_part_whole_in_one_event() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("gem", Behavior { call_tools: true, ..Behavior::default() });
    let mut body = request();
    body["tools"] = weather();
    let (_, answer) = test_support::call(&url(&mock, "gem", "generateContent"), KEY, &body).await;
    let call = json!({"functionCall": {"name": "get_weather", "args": {"city": "mock"}}});
    assert_eq!(answer["candidates"][0]["content"]["parts"], json!([call]));
    assert_eq!(answer["candidates"][0]["finishReason"], "STOP");
    let events = stream(&mock, "gem", &body).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["candidates"][0]["content"]["parts"], json!([call]));
    // Only some functions allowed; or none.
    body["toolConfig"] = json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_time"]}});
    let (_, answer) = test_support::call(&url(&mock, "gem", "generateContent"), KEY, &body).await;
    let part = &answer["candidates"][0]["content"]["parts"][0];
    assert_eq!(part["functionCall"], json!({"name": "get_time", "args": {"zone": "mock"}}));
    body["toolConfig"] = json!({"functionCallingConfig": {"mode": "NONE"}});
    let (_, answer) = test_support::call(&url(&mock, "gem", "generateContent"), KEY, &body).await;
    assert!(answer["candidates"][0]["content"]["parts"][0]["text"].is_string(), "{answer}");
    mock.shutdown().await;
}

#[tokio::test]
async fn a_blocked_prompt_has_prompt_feedback_and_no_candidates_a_filtered_answer_a_safety_finish() {
    let mock = MockUpstream::start().await.unwrap();
    mock.fail_next("gem", Fault::PromptBlocked, 2);
    let (status, body) = test_support::call(&url(&mock, "gem", "generateContent"), KEY, &request()).await;
    assert_eq!(status, 200);
    assert_eq!(body["promptFeedback"]["blockReason"], "SAFETY");
    assert_eq!(body.get("candidates"), None);
    assert_eq!(body["usageMetadata"]["promptTokenCount"], 6);
    let events = stream(&mock, "gem", &request()).await;
    assert_eq!((events.len(), events[0]["promptFeedback"]["blockReason"].as_str()), (1, Some("SAFETY")));
    mock.fail_next("gem", Fault::AnswerFiltered, 2);
    let (status, body) = test_support::call(&url(&mock, "gem", "generateContent"), KEY, &request()).await;
    assert_eq!(status, 200);
    let candidate = &body["candidates"][0];
    assert_eq!(candidate["finishReason"], "SAFETY");
    assert_eq!(candidate.get("content"), None);
    assert!(candidate["safetyRatings"].as_array().unwrap().iter().any(|r| r["blocked"] == true), "{candidate}");
    let events = stream(&mock, "gem", &request()).await;
    assert_eq!(events[0]["candidates"][0]["finishReason"], "SAFETY");
    mock.shutdown().await;
}

#[tokio::test]
async fn faults_take_googles_error_shape() {
    let mock = MockUpstream::start().await.unwrap();
    let check = async |fault: Fault, code: u16, status: &str, says: &str| {
        mock.fail_next("gem", fault, 1);
        let answer = test_support::post(&url(&mock, "gem", "generateContent"), KEY, &request()).await;
        assert_eq!(answer.status(), code, "{fault:?}");
        assert!(!answer.headers().contains_key("retry-after"), "{fault:?}");
        let body: Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
        assert_eq!(
            (body["error"]["code"].as_u64(), body["error"]["status"].as_str()),
            (Some(code.into()), Some(status))
        );
        assert!(body["error"]["message"].as_str().unwrap().contains(says), "{body}");
        body
    };
    let limited = check(Fault::RateLimited { retry_after_secs: 7 }, 429, "RESOURCE_EXHAUSTED", "quota").await;
    let retry = &limited["error"]["details"][0];
    assert_eq!(
        (retry["@type"].as_str(), retry["retryDelay"].as_str()),
        (Some("type.googleapis.com/google.rpc.RetryInfo"), Some("7s"))
    );
    check(Fault::Overloaded, 503, "UNAVAILABLE", "overloaded").await;
    check(Fault::ServerError, 500, "INTERNAL", "internal error").await;
    check(Fault::BadRequest, 400, "INVALID_ARGUMENT", "invalid argument").await;
    check(Fault::Hang(Duration::from_millis(5)), 504, "DEADLINE_EXCEEDED", "Deadline").await;
    mock.set("small", Behavior { context_window: Some(100), ..Behavior::default() });
    let (status, body) = test_support::call(&url(&mock, "small", "generateContent"), KEY, &request()).await;
    assert_eq!(status, 400);
    let expect = "The input token count (1006) exceeds the maximum number of tokens allowed (100).";
    assert_eq!(body["error"]["message"], expect);
    // Mid-stream: an error object after the content so far, and the end.
    mock.fail_next("gem", Fault::MidStreamError(2), 1);
    let events = stream(&mock, "gem", &request()).await;
    assert_eq!(events.len(), 3);
    assert!(events[..2].iter().all(|e| e["candidates"].is_array()));
    assert_eq!(events[2]["error"]["status"], "INTERNAL");
    assert_eq!(events[2]["error"]["code"], 500);
    mock.shutdown().await;
}

#[tokio::test]
async fn keys_come_in_the_header_or_the_query_and_bad_ones_get_googles_answers() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_keys(KeyPolicy { accepted: vec!["good".into()], revoked: vec!["old".into()], ..KeyPolicy::default() });
    let check = async |url: String, headers: &[(&str, &str)], code: u16, status: Option<&str>, says: &str| {
        let (got, body) = test_support::call(&url, headers, &request()).await;
        assert_eq!(got, code, "{url} {headers:?}: {body}");
        assert_eq!(body["error"]["status"].as_str(), status, "{body}");
        assert!(body["error"]["message"].as_str().unwrap_or_default().contains(says), "{body}");
        body
    };
    let plain = url(&mock, "gem", "generateContent");
    check(plain.clone(), &[("x-goog-api-key", "good")], 200, None, "").await;
    check(format!("{plain}?key=good"), &[], 200, None, "").await;
    check(plain.clone(), &[], 403, Some("PERMISSION_DENIED"), "unregistered callers").await;
    let wrong = check(format!("{plain}?key=nope"), &[], 400, Some("INVALID_ARGUMENT"), "API key not valid").await;
    assert_eq!(wrong["error"]["details"][0]["reason"], "API_KEY_INVALID");
    let old = check(plain, &[("x-goog-api-key", "old")], 400, Some("INVALID_ARGUMENT"), "API key expired").await;
    assert_eq!(old["error"]["details"][0]["reason"], "API_KEY_INVALID");
    mock.shutdown().await;
}

#[tokio::test]
async fn malformed_requests_get_a_400_or_404_in_googles_shape() {
    let mock = MockUpstream::start().await.unwrap();
    let check = async |url: String, body: &str, code: u16, status: &str| {
        let answer = reqwest::Client::new().post(&url).body(body.to_owned()).send().await.unwrap();
        assert_eq!(answer.status(), code, "{url} {body}");
        let error: Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
        assert_eq!(error["error"]["status"], status, "{error}");
    };
    check(url(&mock, "gem", "generateContent"), "{not json", 400, "INVALID_ARGUMENT").await;
    check(url(&mock, "gem", "generateContent"), "{}", 400, "INVALID_ARGUMENT").await;
    check(url(&mock, "gem", "generateContent"), r#"{"contents": []}"#, 400, "INVALID_ARGUMENT").await;
    let many = r#"{"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"candidateCount": 99}}"#;
    check(url(&mock, "gem", "generateContent"), many, 400, "INVALID_ARGUMENT").await;
    check(url(&mock, "gem", "countTokens"), "{}", 404, "NOT_FOUND").await;
    check(format!("{}/v1beta/models/gem", mock.root_url()), "{}", 404, "NOT_FOUND").await;
    check(url(&mock, "gem", "batchEmbedContents"), r#"{"requests": []}"#, 400, "INVALID_ARGUMENT").await;
    check(url(&mock, "gem", "embedContent"), r#"{"content": "text"}"#, 400, "INVALID_ARGUMENT").await;
    mock.shutdown().await;
}

#[tokio::test]
async fn embeddings_are_deterministic_unit_vectors_of_the_asked_length() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("emb", Behavior { embedding_dimensions: 32, ..Behavior::default() });
    let content = |text: &str| json!({"parts": [{"text": text}]});
    let batch = json!({"requests": [
        {"model": "models/emb", "content": content("alpha")},
        {"model": "models/emb", "content": content("beta"), "outputDimensionality": 8},
        {"model": "models/emb", "content": content("alpha")},
    ]});
    let (status, body) = test_support::call(&url(&mock, "emb", "batchEmbedContents"), KEY, &batch).await;
    assert_eq!(status, 200, "{body}");
    let vectors: Vec<Vec<f32>> =
        body["embeddings"].as_array().unwrap().iter().map(|e| test_support::floats(&e["values"])).collect();
    assert_eq!(vectors.iter().map(Vec::len).collect::<Vec<_>>(), [32, 8, 32]);
    assert_eq!(vectors[0], vectors[2]);
    assert_ne!(vectors[0][..8], vectors[1][..]);
    assert_eq!(vectors[0], embedding("emb", "alpha", 32));
    for vector in &vectors {
        let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
    let single = json!({"content": content("alpha"), "outputDimensionality": 4});
    let (_, body) = test_support::call(&url(&mock, "emb", "embedContent"), KEY, &single).await;
    assert_eq!(body["embedding"]["values"].as_array().unwrap().len(), 4);
    assert_eq!(mock.last_recorded("emb").unwrap().api, Api::GeminiEmbed);
    // More than the model has: refused.
    let single = json!({"content": content("alpha"), "outputDimensionality": 33});
    let (status, body) = test_support::call(&url(&mock, "emb", "embedContent"), KEY, &single).await;
    assert_eq!((status, body["error"]["status"].as_str()), (400, Some("INVALID_ARGUMENT")));
    // The faults apply to embeddings too.
    mock.fail_next("emb", Fault::RateLimited { retry_after_secs: 1 }, 1);
    let (status, _) = test_support::call(&url(&mock, "emb", "batchEmbedContents"), KEY, &batch).await;
    assert_eq!(status, 429);
    mock.shutdown().await;
}
