//! Native provider kinds through the gateway, against the mock speaking
//! each provider's wire format: the same client-visible answers from an
//! OpenAI, an Azure, an Anthropic and a Gemini model; streams through each;
//! fallback across kinds; what reaches each provider (its headers, the
//! filled `max_tokens`, dropped or refused parameters); key rotation; and
//! exact cost from each kind's usage.

use futures_util::StreamExt;
use modelfleet::registry::Money;
use modelfleet_mock_upstream::{Api, Behavior, Fault, KeyPolicy, MockUpstream};
use serde_json::{Value, json};

use crate::support::{Running, named_events, validated};

const KEYS: [(&str, &str); 5] = [
    ("OAI_KEY", "sk-oai-0123456789abcdef"),
    ("AZURE_KEY", "azure-0123456789abcdef"),
    ("CLAUDE_KEY_1", "sk-ant-first-0123456789"),
    ("CLAUDE_KEY_2", "sk-ant-second-012345678"),
    ("GEMINI_KEY", "AIza-gemini-0123456789"),
];

fn env(name: &str) -> Option<String> {
    KEYS.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
}

/// One provider of each kind on the mock, a model on each (`oai`,
/// `az-deploy`, `claude` and `claude-b`, `gem`), priced alike, in one language and
/// category so each can stand in for another.
fn config_text(mock: &MockUpstream, claude_params: &str) -> String {
    let root = mock.root_url();
    let base = mock.base_url();
    let model = |id: &str, provider: &str| {
        format!(
            "\n[[models]]\nid = \"{id}\"\nprovider = \"{provider}\"\ncontext_window = 200000\nmax_output_tokens = \
             8192\ninput_price_per_mtok = \"3\"\noutput_price_per_mtok = \"15\"\ncached_input_price_per_mtok = \
             \"0.30\"\ncache_write_price_per_mtok = \"3.75\"\nreasoning_price_per_mtok = \"20\"\nquality = 0.8\nlanguages = [\"en\"]\ncategories = \
             [\"general\"]\ncapabilities = [\"streaming\", \"tools\"]\n"
        )
    };
    format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n\n[store]\npath = \"fleet.db\"\n\n[retry]\nmax_attempts = 2\n\
         initial_backoff_ms = 1\nmax_backoff_ms = 5\ndeadline_ms = 10000\n\n\
         [[providers]]\nname = \"oai\"\nkind = \"openai\"\nbase_url = \"{base}\"\napi_key_env = \"OAI_KEY\"\n\n\
         [[providers]]\nname = \"azure\"\nkind = \"azure\"\nbase_url = \"{root}\"\napi_version = \"2024-10-21\"\n\
         api_key_env = \"AZURE_KEY\"\n\n\
         [[providers]]\nname = \"claude\"\nkind = \"anthropic\"\nbase_url = \"{base}\"\n\
         api_key_envs = [\"CLAUDE_KEY_1\", \"CLAUDE_KEY_2\"]\nheaders = {{ \"anthropic-beta\" = \"tests\" }}\n\
         {claude_params}\n\n\
         [[providers]]\nname = \"google\"\nkind = \"gemini\"\nbase_url = \"{root}/v1beta\"\napi_key_env = \
         \"GEMINI_KEY\"\n{}{}{}{}{}",
        model("oai", "oai"),
        model("az-deploy", "azure"),
        model("claude", "claude"),
        model("claude-b", "claude"),
        model("gem", "google"),
    )
}

async fn start(mock: &MockUpstream, dir: &tempfile::TempDir, claude_params: &str) -> Running {
    Running::start(&validated(&config_text(mock, claude_params), dir.path(), env), env).await
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there, ".repeat(40)}
    ]})
}

async fn post(gateway: &Running, body: &Value) -> reqwest::Response {
    reqwest::Client::new().post(format!("{}/v1/chat/completions", gateway.url)).json(body).send().await.unwrap()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The SSE events' data of a body.
fn events(text: &str) -> Vec<String> {
    text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_answers_in_the_same_shape_json_and_streamed() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(&mock, &dir, "").await;
    for (model, api) in [
        ("oai", Api::OpenAiChat),
        ("az-deploy", Api::AzureChat),
        ("claude", Api::AnthropicMessages),
        ("gem", Api::GeminiGenerate),
    ] {
        let response = post(&gateway, &chat(model)).await;
        assert_eq!(response.status(), 200, "{model}");
        assert_eq!(header(&response, "x-modelfleet-model"), model);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["object"], "chat.completion", "{model}: {body}");
        assert_eq!(body["choices"][0]["message"]["role"], "assistant", "{model}: {body}");
        assert_eq!(body["choices"][0]["finish_reason"], "stop", "{model}: {body}");
        let content = body["choices"][0]["message"]["content"].as_str().unwrap_or_else(|| panic!("{model}: {body}"));
        assert!(content.starts_with(&format!("mock answer from {model}")), "{model}: {content}");
        let usage = &body["usage"];
        assert!(usage["prompt_tokens"].as_u64().unwrap() > 0 && usage["completion_tokens"].as_u64().unwrap() > 0);
        let recorded = mock.last_recorded(model).unwrap_or_else(|| panic!("{model}: nothing reached the mock"));
        assert_eq!(recorded.api, api, "{model} went through its kind's API");

        // Streamed: OpenAI chunks whatever the kind, content whole, usage at the end.
        let mut request = chat(model);
        request["stream"] = json!(true);
        request["stream_options"] = json!({"include_usage": true});
        let response = post(&gateway, &request).await;
        assert_eq!(response.status(), 200, "{model} streamed");
        assert_eq!(header(&response, "content-type"), "text/event-stream");
        let text = response.text().await.unwrap();
        let data = events(&text);
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{model}: {text}");
        let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
        // (Azure opens with a chunk of its own: no choices, its prompt filter's results.)
        let answered = chunks.iter().filter(|c| c["choices"].as_array().is_some_and(|c| !c.is_empty()));
        assert!(answered.clone().all(|c| c["object"] == "chat.completion.chunk"), "{model}: {text}");
        let streamed: String =
            chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<String>();
        assert!(streamed.starts_with(&format!("mock answer from {model}")), "{model}: {streamed}");
        let finish = chunks.iter().filter_map(|c| c["choices"][0]["finish_reason"].as_str()).collect::<Vec<_>>();
        assert_eq!(finish, ["stop"], "{model}: {text}");
        let usage = chunks.iter().rev().find(|c| c["usage"].is_object()).unwrap_or_else(|| panic!("{model}: {text}"));
        assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{model}: {text}");
    }
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_provider_gets_its_own_headers_url_and_body() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(&mock, &dir, "").await;
    let mut request = chat("claude");
    // Parameters Anthropic and Gemini have no place for: dropped.
    request["logit_bias"] = json!({"50256": -100});
    request["seed"] = json!(7);
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", gateway.url))
        .header("traceparent", traceparent)
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let sent = mock.last_recorded("claude").unwrap();
    let h = |name: &str| sent.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert!(sent.uri.ends_with("/messages"), "{}", sent.uri);
    assert!(KEYS[2..4].iter().any(|(_, key)| h("x-api-key") == *key), "the key goes in x-api-key");
    assert_eq!(
        (h("anthropic-version"), h("anthropic-beta"), h("authorization")),
        ("2023-06-01".into(), "tests".into(), String::new())
    );
    assert_eq!(h("traceparent"), traceparent, "the trace context goes to every kind");
    assert_eq!(sent.body["system"], "Be brief.", "{}", sent.body);
    assert_eq!(sent.body["model"], "claude");
    // Anthropic requires max_tokens: the bound the budget hold assumed
    // (the model's output limit, the client having set none).
    assert_eq!(sent.body["max_tokens"], 8192, "{}", sent.body);
    assert!(sent.body.get("logit_bias").is_none() && sent.body.get("seed").is_none(), "{}", sent.body);

    let response = post(&gateway, &chat("gem")).await;
    assert_eq!(response.status(), 200);
    let sent = mock.last_recorded("gem").unwrap();
    assert!(sent.uri.ends_with("/v1beta/models/gem:generateContent"), "{}", sent.uri);
    assert_eq!(sent.headers["x-goog-api-key"], KEYS[4].1);
    assert_eq!(sent.body["systemInstruction"]["parts"][0]["text"], "Be brief.", "{}", sent.body);
    assert_eq!(sent.body["generationConfig"]["maxOutputTokens"], 8192, "{}", sent.body);
    let mut streamed = chat("gem");
    streamed["stream"] = json!(true);
    assert_eq!(post(&gateway, &streamed).await.status(), 200);
    let sent = mock.last_recorded("gem").unwrap();
    assert!(sent.uri.ends_with("/v1beta/models/gem:streamGenerateContent?alt=sse"), "{}", sent.uri);

    let response = post(&gateway, &chat("az-deploy")).await;
    assert_eq!(response.status(), 200);
    let sent = mock.last_recorded("az-deploy").unwrap();
    assert_eq!(sent.uri, "/openai/deployments/az-deploy/chat/completions?api-version=2024-10-21");
    assert_eq!(sent.headers["api-key"], KEYS[1].1);
    assert!(sent.headers.get("authorization").is_none());
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_parameter_is_named_and_never_sent() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(&mock, &dir, "unsupported_params = \"error\"").await;
    let mut request = chat("claude");
    request["logit_bias"] = json!({"50256": -100});
    let response = post(&gateway, &request).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("logit_bias") && message.contains("anthropic"), "{message}");
    assert_eq!(mock.hits("claude"), 0, "never sent");
    // Without it, served.
    assert_eq!(post(&gateway, &chat("claude")).await.status(), 200);
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_anthropic_model_falls_back_to_gemini_json_and_streamed() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Claude's configured fallback is the Gemini model.
    let text = config_text(&mock, "").replace(
        "id = \"claude\"\nprovider = \"claude\"\n",
        "id = \"claude\"\nprovider = \"claude\"\nfallbacks = [\"gem\"]\n",
    );
    let gateway = Running::start(&validated(&text, dir.path(), env), env).await;
    mock.fail_next("claude", Fault::Overloaded, 1);
    let response = post(&gateway, &chat("claude")).await;
    assert_eq!(response.status(), 200);
    assert_eq!((header(&response, "x-modelfleet-model"), header(&response, "x-modelfleet-fallback")), ("gem", "true"));
    let body: Value = response.json().await.unwrap();
    assert!(body["choices"][0]["message"]["content"].as_str().unwrap().starts_with("mock answer from gem"));

    // A stream whose Anthropic upstream fails before its first event falls back too.
    mock.fail_next("claude", Fault::Overloaded, 1);
    let mut request = chat("claude");
    request["stream"] = json!(true);
    let response = post(&gateway, &request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-modelfleet-model"), "gem");
    let text = response.text().await.unwrap();
    let content: String = events(&text)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert!(content.starts_with("mock answer from gem"), "{text}");
    assert_eq!(events(&text).last().map(String::as_str), Some("[DONE]"), "{text}");

    // An error event after the first one cannot fall back: the client gets
    // the mid-stream error event, and the model the failure.
    // (On a second Anthropic model: the first one is cooling down now.)
    mock.fail_next("claude-b", Fault::MidStreamError(2), 1);
    request["model"] = json!("claude-b");
    let response = post(&gateway, &request).await;
    assert_eq!((response.status().as_u16(), header(&response, "x-modelfleet-model")), (200, "claude-b"));
    let mut stream = response.bytes_stream();
    let mut text = String::new();
    while let Some(Ok(piece)) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&piece));
    }
    let last: Value = serde_json::from_str(events(&text).last().unwrap()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(last["error"]["code"], "stream_interrupted", "{text}");
    assert!(last["error"]["message"].as_str().unwrap().contains("HTTP 529"), "{last}");
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rate_limited_or_revoked_rests_while_the_next_one_serves() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(&mock, &dir, "").await;
    let (first, second) = (KEYS[2].1, KEYS[3].1);
    mock.set_keys(KeyPolicy { rate_limited: vec![first.into()], retry_after_secs: 600, ..KeyPolicy::default() });
    for _ in 0..4 {
        let response = post(&gateway, &chat("claude")).await;
        assert_eq!(response.status(), 200);
        // Within the one attempt: the key's limit is not the model's failure.
        assert_eq!(header(&response, "x-modelfleet-attempts"), "1");
    }
    assert_eq!(mock.key_hits(first), 1, "the limited key rests after its 429");
    assert_eq!(mock.key_hits(second), 4);
    assert_eq!(gateway.fleet.monitor().model_stats("claude").totals.failures, 0);

    // A revoked key: the same, for Gemini's way of saying it (a 400).
    let mock2 = MockUpstream::start().await.unwrap();
    mock2.set_keys(KeyPolicy { revoked: vec![KEYS[4].1.into()], ..KeyPolicy::default() });
    let dir2 = tempfile::tempdir().unwrap();
    let single = Running::start(&validated(&config_text(&mock2, ""), dir2.path(), env), env).await;
    let response = post(&single, &chat("gem")).await;
    // Its only key refused: the model fails as unauthenticated (and falls
    // back, here to another model that qualifies), the key never shown.
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(!text.contains(KEYS[4].1), "{text}");
    assert_eq!(status, 200, "{text}");
    single.stop().await;
    mock2.shutdown().await;
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_is_priced_from_each_kinds_usage_cache_writes_and_reasoning_included() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(&mock, &dir, "").await;
    // Every kind's mock reports the same underlying counts, each in its
    // own shape: 50 visible output tokens and 20 of reasoning (OpenAI's
    // completion_tokens include them, Anthropic's output_tokens include
    // them unsplit, Gemini counts them outside its candidates), 40 prompt
    // tokens read from the cache and, for Anthropic, 30 written to it
    // (both outside its input_tokens).
    let behavior = Behavior {
        completion_tokens: 50,
        cached_tokens: 40,
        cache_write_tokens: 30,
        reasoning_tokens: 20,
        ..Behavior::default()
    };
    // (model, cache writes it can report, reasoning it reports apart)
    for (model, written, reasoning) in [("oai", 0, 20), ("claude", 30, 0), ("gem", 0, 20)] {
        mock.set(model, behavior.clone());
        let response = post(&gateway, &chat(model)).await;
        assert_eq!(response.status(), 200, "{model}");
        let cost: Money = header(&response, "x-modelfleet-cost").parse().unwrap();
        let body: Value = response.json().await.unwrap();
        let usage = modelfleet_translate::usage_of(&body["usage"]).unwrap_or_else(|| panic!("{model}: {body}"));
        // Normalised: output counts the reasoning once; the prompt counts
        // the cache reads and writes, each split out.
        assert_eq!(usage.output_tokens, 70, "{model}: {body}");
        assert_eq!((usage.cached_tokens, usage.cache_write_tokens, usage.reasoning_tokens), (40, written, reasoning));
        let plain = usage.input_tokens.checked_sub(40 + written).unwrap_or_else(|| panic!("{model}: {body}"));
        assert!(plain > 0, "{model}: the uncached prompt is in the total: {body}");
        // At the model's rates per million ($3 plain, $0.30 cached, $3.75
        // written, $15 output, $20 reasoning), in nanodollars, rounded once.
        let femto = u128::from(plain) * 3_000_000_000
            + 40 * 300_000_000
            + u128::from(written) * 3_750_000_000
            + u128::from(70 - reasoning) * 15_000_000_000
            + u128::from(reasoning) * 20_000_000_000;
        let nanos = i64::try_from((femto + 500_000) / 1_000_000).unwrap();
        assert_eq!(cost, Money::from_nanos(nanos), "{model}: {body}");
    }
    gateway.stop().await;
    mock.shutdown().await;
}

async fn post_to(gateway: &Running, path: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new().post(format!("{}{path}", gateway.url)).json(body).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_messages_endpoint_speaks_anthropic_to_any_provider() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(&mock, &dir, "").await;
    let request = |model: &str| {
        json!({"model": model, "max_tokens": 256, "system": "Be brief.",
               "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]})
    };
    // An Anthropic client, an OpenAI-compatible and a Gemini model behind.
    for model in ["oai", "gem", "claude"] {
        let response = post_to(&gateway, "/v1/messages", &request(model)).await;
        assert_eq!(response.status(), 200, "{model}");
        assert_eq!(header(&response, "x-modelfleet-model"), model);
        let message: Value = response.json().await.unwrap();
        assert_eq!((message["type"].as_str(), message["role"].as_str()), (Some("message"), Some("assistant")));
        assert_eq!(message["content"][0]["type"], "text", "{message}");
        assert!(message["content"][0]["text"].as_str().unwrap().starts_with(&format!("mock answer from {model}")));
        assert_eq!(message["stop_reason"], "end_turn", "{message}");
        assert!(message["usage"]["input_tokens"].as_u64().unwrap() > 0, "{message}");
        assert!(message["usage"]["output_tokens"].as_u64().unwrap() > 0, "{message}");
        // What the chat path sent upstream carries the client's cap.
        let sent = mock.last_recorded(model).unwrap();
        let cap = [&sent.body["max_tokens"], &sent.body["generationConfig"]["maxOutputTokens"]];
        assert!(cap.iter().any(|c| **c == 256), "{model}: {}", sent.body);
    }

    // Streamed, from a Gemini model: Anthropic's events in order.
    let mut streamed = request("gem");
    streamed["stream"] = json!(true);
    let response = post_to(&gateway, "/v1/messages", &streamed).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let events = named_events(&text);
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{text}");
    assert_eq!(names.last(), Some(&"message_stop"), "{text}");
    assert!(names.contains(&"content_block_start") && names.contains(&"message_delta"), "{text}");
    let said: String = events
        .iter()
        .filter(|(e, _)| e == "content_block_delta")
        .filter_map(|(_, d)| d["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert!(said.starts_with("mock answer from gem"), "{text}");
    let delta = events.iter().find(|(e, _)| e == "message_delta").map(|(_, d)| d).unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "end_turn", "{delta}");
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0, "{delta}");

    // Errors in Anthropic's shape: a request without max_tokens, and a
    // model nobody serves.
    let mut missing = request("oai");
    missing.as_object_mut().unwrap().remove("max_tokens");
    let response = post_to(&gateway, "/v1/messages", &missing).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(
        (error["type"].as_str(), error["error"]["type"].as_str()),
        (Some("error"), Some("invalid_request_error"))
    );
    assert!(error["error"]["message"].as_str().unwrap().contains("max_tokens"), "{error}");
    let response = post_to(&gateway, "/v1/messages", &request("nobody")).await;
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["type"], "not_found_error", "{error}");
    // So are the refusals of the layers around the handler: a wrong method,
    // a body that does not say it is JSON.
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", gateway.url);
    let wrong_method = client.get(&url).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(wrong_method.headers()["allow"], "POST");
    let error: Value = wrong_method.json().await.unwrap();
    assert_eq!(
        (error["type"].as_str(), error["error"]["type"].as_str()),
        (Some("error"), Some("invalid_request_error"))
    );
    let text = client.post(&url).header("content-type", "text/plain").body("{}").send().await.unwrap();
    assert_eq!(text.status(), 415);
    let error: Value = text.json().await.unwrap();
    assert_eq!(error["type"], "error", "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("application/json"), "{error}");
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_responses_endpoint_serves_text_and_streams_over_any_provider() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(&mock, &dir, "").await;
    let request = json!({"model": "claude", "instructions": "Be brief.", "input": "hello there",
                         "max_output_tokens": 200});
    let response = post_to(&gateway, "/v1/responses", &request).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!((body["object"].as_str(), body["status"].as_str()), (Some("response"), Some("completed")), "{body}");
    let text = body["output"][0]["content"][0]["text"].as_str().unwrap_or_else(|| panic!("{body}"));
    assert!(text.starts_with("mock answer from claude"), "{body}");
    assert!(body["usage"]["output_tokens"].as_u64().unwrap() > 0, "{body}");
    let sent = mock.last_recorded("claude").unwrap();
    assert_eq!((sent.body["system"].as_str(), sent.body["max_tokens"].as_u64()), (Some("Be brief."), Some(200)));

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["model"] = json!("oai");
    let response = post_to(&gateway, "/v1/responses", &streamed).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let events = named_events(&text);
    assert_eq!(events.first().map(|(e, _)| e.as_str()), Some("response.created"), "{text}");
    assert_eq!(events.last().map(|(e, _)| e.as_str()), Some("response.completed"), "{text}");
    let said: String = events
        .iter()
        .filter(|(e, _)| e == "response.output_text.delta")
        .filter_map(|(_, d)| d["delta"].as_str().map(str::to_owned))
        .collect();
    assert!(said.starts_with("mock answer from oai"), "{text}");
    let completed = &events.last().unwrap().1;
    assert!(completed["response"]["usage"]["output_tokens"].as_u64().unwrap() > 0, "{completed}");

    // What it cannot do is a 400 naming the field.
    let mut stored = request.clone();
    stored["previous_response_id"] = json!("resp_123");
    let response = post_to(&gateway, "/v1/responses", &stored).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("previous_response_id"), "{error}");
    assert_eq!(mock.total_hits(), 2, "nothing sent for the refused request");
    gateway.stop().await;
    mock.shutdown().await;
}
