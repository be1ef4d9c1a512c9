//! `/v1/embeddings` and `/v1/completions` through the gateway, against the
//! mock speaking each provider's wire format: embeddings served only by
//! embedding models (and chat never by one), priced from the provider's
//! usage, falling back only to the same model served elsewhere; Gemini's
//! embeddings translated; legacy completions only on OpenAI-compatible
//! providers, JSON and streamed, with OpenAI's default cap sent explicitly.

use modelfleet::registry::Money;
use modelfleet_mock_upstream::{Api, Fault, MockUpstream};
use serde_json::{Value, json};

use crate::support::{Running, named_events, validated};

fn env(name: &str) -> Option<String> {
    match name {
        "OAI_KEY" => Some("sk-oai-0123456789abcdef".into()),
        "AZURE_KEY" => Some("azure-0123456789abcdef".into()),
        "CLAUDE_KEY" => Some("sk-ant-0123456789abcdef".into()),
        "GEMINI_KEY" => Some("AIza-gemini-0123456789".into()),
        _ => None,
    }
}

/// An OpenAI, an Azure, an Anthropic and a Gemini provider on the mock.
/// Embedding models: `embed` (OpenAI) and `embed-az` (the same model,
/// `text-embed`, on Azure), `embed-other` (another model of the same
/// length on OpenAI), `gem-embed` (Gemini); chat models `chat` (OpenAI)
/// and `claude` (Anthropic, the better), and `resp` on a provider that
/// serves the Responses API natively, under a hard budget; the route
/// `best` takes the highest quality first.
fn config_text(mock: &MockUpstream) -> String {
    let (root, base) = (mock.root_url(), mock.base_url());
    let embedder = |id: &str, provider: &str, upstream: &str| {
        format!(
            "\n[[models]]\nid = \"{id}\"\nprovider = \"{provider}\"\nupstream = \"{upstream}\"\ncontext_window = \
             8191\ncapabilities = [\"embeddings\"]\nembedding_dimensions = 1536\ninput_price_per_mtok = \"2\"\n\
             output_price_per_mtok = \"0\"\n"
        )
    };
    // `claude` ranks first: only the endpoint it lacks keeps completions off it.
    let chat = |id: &str, provider: &str, quality: &str| {
        format!(
            "\n[[models]]\nid = \"{id}\"\nprovider = \"{provider}\"\ncontext_window = 100000\nmax_output_tokens = \
             4096\ninput_price_per_mtok = \"3\"\noutput_price_per_mtok = \"15\"\nquality = {quality}\ncategories = \
             [\"general\"]\ncapabilities = [\"streaming\", \"tools\"]\n"
        )
    };
    format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n\n[store]\npath = \"fleet.db\"\n\n[retry]\nmax_attempts = 1\n\
         initial_backoff_ms = 1\nmax_backoff_ms = 5\ndeadline_ms = 10000\n\n\
         [[providers]]\nname = \"oai\"\nkind = \"openai\"\nbase_url = \"{base}\"\napi_key_env = \"OAI_KEY\"\n\n\
         [[providers]]\nname = \"azure\"\nkind = \"azure\"\nbase_url = \"{root}\"\napi_version = \"2024-10-21\"\n\
         api_key_env = \"AZURE_KEY\"\n\n\
         [[providers]]\nname = \"claude\"\nkind = \"anthropic\"\nbase_url = \"{base}\"\napi_key_env = \"CLAUDE_KEY\"\n\n\
         [[providers]]\nname = \"google\"\nkind = \"gemini\"\nbase_url = \"{root}/v1beta\"\napi_key_env = \
         \"GEMINI_KEY\"\n\n\
         [[providers]]\nname = \"native\"\nkind = \"openai\"\nbase_url = \"{base}\"\napi_key_env = \"OAI_KEY\"\n\
         responses = true\n\n\
         [[budgets]]\nscope = \"provider:native\"\nperiod = \"monthly\"\nlimit = \"100\"\nenforcement = \"hard\"\n\n\
         [[budgets]]\nscope = \"provider:oai\"\nperiod = \"monthly\"\nlimit = \"100\"\nenforcement = \"hard\"\n\n\
         [[routes]]\nname = \"best\"\nstrategy = \"highest_quality\"\n{}{}{}{}{}{}{}",
        embedder("embed", "oai", "text-embed"),
        embedder("embed-az", "azure", "text-embed"),
        embedder("embed-other", "oai", "other-embed"),
        embedder("gem-embed", "google", "gemini-embed"),
        chat("chat", "oai", "0.6"),
        chat("claude", "claude", "0.95"),
        chat("resp", "native", "0.5"),
    )
}

async fn start(mock: &MockUpstream, dir: &tempfile::TempDir) -> Running {
    Running::start(&validated(&config_text(mock), dir.path(), env), env).await
}

async fn post(gateway: &Running, path: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new().post(format!("{}{path}", gateway.url)).json(body).send().await.unwrap()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// `tokens` at $2 per million, as the cost header writes it.
fn at_two_dollars(tokens: u64) -> String {
    Money::from_nanos(i64::try_from(tokens * 2_000).unwrap()).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_are_served_priced_and_fall_back_only_to_the_same_model() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(&mock, &dir).await;
    let inputs = json!(["the first passage to index", "the second one"]);

    // Served by the model named, one vector per input, priced from the usage.
    let response = post(&gateway, "/v1/embeddings", &json!({"model": "embed", "input": inputs})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        (header(&response, "x-modelfleet-model"), header(&response, "x-modelfleet-fallback")),
        ("embed", "false")
    );
    let cost = header(&response, "x-modelfleet-cost").to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "list", "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert!(data.iter().all(|d| d["embedding"].as_array().is_some_and(|v| v.len() == 1_536)), "{body}");
    let prompt = body["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 0);
    assert_eq!(cost, at_two_dollars(prompt), "the provider's count at the input price, no output");
    let recorded = mock.last_recorded("text-embed").unwrap();
    assert_eq!((recorded.api, recorded.uri.as_str()), (Api::OpenAiEmbeddings, "/v1/embeddings"));
    // Budgets and metrics as for chat: the hard budget that paid holds the charge, the model its count.
    let budgets: Value = reqwest::get(format!("{}/v1/admin/budgets", gateway.url)).await.unwrap().json().await.unwrap();
    let oai = budgets["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["scope"] == json!({"kind": "provider", "name": "oai"}))
        .unwrap();
    assert_eq!(oai["by_model"]["embed"], json!(cost), "{oai}");
    let metrics = reqwest::get(format!("{}/metrics", gateway.url)).await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l.starts_with("modelfleet_model_requests_total{model=\"embed\"")), "{metrics}");
    assert_eq!(recorded.body["model"], "text-embed");
    assert_eq!(recorded.body["input"], inputs, "the inputs as sent");

    // The named model fails once: the same model on Azure serves; never
    // another model, even one whose vectors have the same length.
    mock.fail_next("text-embed", Fault::Overloaded, 1);
    let response = post(&gateway, "/v1/embeddings", &json!({"model": "embed", "input": inputs})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        (header(&response, "x-modelfleet-model"), header(&response, "x-modelfleet-fallback")),
        ("embed-az", "true")
    );
    let recorded = mock.last_recorded("text-embed").unwrap();
    assert_eq!(recorded.api, Api::AzureEmbeddings);
    assert_eq!(recorded.uri, "/openai/deployments/text-embed/embeddings?api-version=2024-10-21");
    mock.fail_next("text-embed", Fault::Overloaded, 2);
    let response = post(&gateway, "/v1/embeddings", &json!({"model": "embed", "input": inputs})).await;
    assert_eq!(response.status(), 502, "served by {:?}", header(&response, "x-modelfleet-model"));
    assert_eq!(mock.hits("other-embed"), 0, "another model's vectors would not match the index");

    // Gemini: its batch API, translated both ways.
    let response = post(&gateway, "/v1/embeddings", &json!({"model": "gem-embed", "input": inputs})).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2), "{body}");
    assert_eq!(body["data"][1]["embedding"].as_array().map(Vec::len), Some(1_536));
    let recorded = mock.last_recorded("gemini-embed").unwrap();
    assert_eq!(recorded.api, Api::GeminiEmbed);
    assert_eq!(recorded.body["requests"][1]["content"]["parts"][0]["text"], "the second one");
    // As the openai SDK asks by default: base64 of little-endian f32s, the same vectors.
    let floats = body["data"][0]["embedding"].as_array().unwrap().clone();
    let asked = json!({"model": "gem-embed", "input": inputs, "encoding_format": "base64"});
    let body: Value = post(&gateway, "/v1/embeddings", &asked).await.json().await.unwrap();
    let encoded = body["data"][0]["embedding"].as_str().unwrap_or_else(|| panic!("{body}"));
    let decoded = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded).unwrap();
    assert_eq!(decoded.len(), 1_536 * 4);
    for (bytes, float) in decoded.chunks_exact(4).zip(&floats) {
        #[allow(clippy::cast_possible_truncation)]
        let expected = float.as_f64().unwrap() as f32;
        // The same bits: the gateway's f32 of Gemini's number.
        assert_eq!(f32::from_le_bytes(bytes.try_into().unwrap()).to_bits(), expected.to_bits());
    }

    // `auto` picks an embedding model; a chat model cannot embed.
    let response = post(&gateway, "/v1/embeddings", &json!({"model": "auto", "input": "one"})).await;
    assert_eq!(response.status(), 200);
    assert!(["embed", "embed-az", "embed-other", "gem-embed"].contains(&header(&response, "x-modelfleet-model")));
    let response = post(&gateway, "/v1/embeddings", &json!({"model": "chat", "input": "one"})).await;
    assert_eq!(response.status(), 400);
    let text = response.text().await.unwrap();
    assert!(text.contains("no embeddings support"), "{text}");
    let response = post(&gateway, "/v1/embeddings", &json!({"model": "embed", "input": [3, "a"]})).await;
    assert_eq!(response.status(), 400);
    let text = response.text().await.unwrap();
    assert!(text.contains("input[0]: must be a string or a non-empty list of token ids"), "{text}");
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_never_goes_to_an_embedding_model() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(&mock, &dir).await;
    let chat = |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hello"}]});
    for _ in 0..6 {
        let response = post(&gateway, "/v1/chat/completions", &chat("auto")).await;
        assert_eq!(response.status(), 200);
        assert!(["chat", "claude", "resp"].contains(&header(&response, "x-modelfleet-model")));
    }
    // Every chat model failing: still never an embedding model.
    for model in ["chat", "claude", "resp"] {
        mock.fail_next(model, Fault::ServerError, 1);
    }
    let response = post(&gateway, "/v1/chat/completions", &chat("chat")).await;
    assert_ne!(response.status(), 200);
    for embedder in ["text-embed", "other-embed", "gemini-embed"] {
        assert_eq!(mock.hits(embedder), 0, "{embedder}");
    }
    // Named: refused, saying why.
    let response = post(&gateway, "/v1/chat/completions", &chat("embed")).await;
    assert_eq!(response.status(), 400);
    let text = response.text().await.unwrap();
    assert!(text.contains("an embedding model (it serves embeddings requests only)"), "{text}");
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_completions_reach_openai_compatible_providers_only() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(&mock, &dir).await;

    // JSON: OpenAI's default cap of 16 sent explicitly, the answer as it came.
    let response = post(&gateway, "/v1/completions", &json!({"model": "chat", "prompt": "Say hi"})).await;
    assert_eq!(response.status(), 200);
    let cost = header(&response, "x-modelfleet-cost").to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "text_completion", "{body}");
    assert!(body["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()), "{body}");
    let usage =
        (body["usage"]["prompt_tokens"].as_u64().unwrap(), body["usage"]["completion_tokens"].as_u64().unwrap());
    let expected = Money::from_nanos(i64::try_from(usage.0 * 3_000 + usage.1 * 15_000).unwrap()).to_string();
    assert_eq!(cost, expected);
    let recorded = mock.last_recorded("chat").unwrap();
    assert_eq!((recorded.api, recorded.uri.as_str()), (Api::OpenAiCompletions, "/v1/completions"));
    assert_eq!(recorded.body["max_tokens"], 16);

    // Streamed: text_completion chunks, usage when asked, then [DONE].
    let request = json!({"model": "chat", "prompt": ["a", "b"], "max_tokens": 40, "stream": true,
                         "stream_options": {"include_usage": true}});
    let response = post(&gateway, "/v1/completions", &request).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let data: Vec<&str> = text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert!(
        chunks
            .iter()
            .filter(|c| c["choices"].as_array().is_some_and(|c| !c.is_empty()))
            .all(|c| c["object"] == "text_completion")
    );
    assert!(chunks.iter().any(|c| c["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty())), "{text}");
    assert!(chunks.iter().any(|c| c["usage"]["completion_tokens"].as_u64().is_some()), "{text}");
    assert_eq!(mock.last_request("chat").unwrap()["max_tokens"], 40, "the client's cap");

    // An Anthropic model has no such endpoint: named, refused; ranked first
    // (the route takes the highest quality), skipped.
    let response = post(&gateway, "/v1/completions", &json!({"model": "claude", "prompt": "hi"})).await;
    assert_eq!(response.status(), 400);
    let text = response.text().await.unwrap();
    assert!(
        text.contains(
            "model \\\"claude\\\" is served by provider \\\"claude\\\", which has no legacy completions endpoint"
        ),
        "{text}"
    );
    for _ in 0..4 {
        let response = post(&gateway, "/v1/completions", &json!({"model": "best", "prompt": "hi"})).await;
        assert_eq!(header(&response, "x-modelfleet-model"), "chat");
    }
    assert_eq!(mock.hits("claude"), 0);
    let response = post(&gateway, "/v1/completions", &json!({"model": "chat", "prompt": {"text": "hi"}})).await;
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("prompt: must be a string"));
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_responses_api_passes_through_to_providers_that_serve_it() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = start(&mock, &dir).await;

    // A model of a native provider: the body goes as sent, the answer comes back as it came.
    let request = json!({"model": "resp", "input": "Say hi", "instructions": "Be brief.", "store": false,
                         "metadata": {"ticket": "42"}, "max_output_tokens": 50});
    let response = post(&gateway, "/v1/responses", &request).await;
    assert_eq!(response.status(), 200);
    let cost = header(&response, "x-modelfleet-cost").to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "response", "{body}");
    assert!(body["id"].as_str().is_some_and(|id| id.starts_with("resp_mock")), "the provider's own id: {body}");
    let usage = (body["usage"]["input_tokens"].as_u64().unwrap(), body["usage"]["output_tokens"].as_u64().unwrap());
    let expected = Money::from_nanos(i64::try_from(usage.0 * 3_000 + usage.1 * 15_000).unwrap()).to_string();
    assert_eq!(cost, expected, "priced from the Responses usage");
    let recorded = mock.last_recorded("resp").unwrap();
    assert_eq!((recorded.api, recorded.uri.as_str()), (Api::OpenAiResponses, "/v1/responses"));
    let mut sent = request.clone();
    sent.as_object_mut().unwrap().remove("model");
    let mut got = recorded.body.clone();
    got.as_object_mut().unwrap().remove("model");
    assert_eq!(got, sent, "passed through untouched");

    // Streamed: the provider's events, named, to response.completed.
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let response = post(&gateway, "/v1/responses", &streamed).await;
    assert_eq!(response.status(), 200);
    let events = named_events(&response.text().await.unwrap());
    assert_eq!(events.first().map(|(n, _)| n.as_str()), Some("response.created"));
    assert_eq!(events.last().map(|(n, _)| n.as_str()), Some("response.completed"));
    assert!(events.iter().all(|(name, data)| data["type"] == *name), "each named by its type");
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .filter_map(|(_, d)| d["delta"].as_str())
        .collect();
    assert!(text.starts_with("mock answer from resp"), "{text}");

    // A model of another provider: translated over chat.
    let response = post(&gateway, "/v1/responses", &json!({"model": "chat", "input": "Say hi"})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(mock.last_recorded("chat").unwrap().api, Api::OpenAiChat);

    // What translation cannot carry goes to the native provider only; its
    // cost cannot be measured (the stored conversation), so the hard
    // budget that would pay refuses it.
    let stored = json!({"model": "auto", "input": "and then?", "previous_response_id": "resp_mock1"});
    let response = post(&gateway, "/v1/responses", &stored).await;
    assert_ne!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("hard budget provider:native monthly"), "{text}");
    assert!(text.contains("cost cannot be measured"), "{text}");
    // Named, the same; a file's length cannot be measured either (a
    // document may be tens of thousands of tokens); measured, it is served.
    let named = json!({"model": "resp", "input": "and then?", "previous_response_id": "resp_mock1"});
    let with_file = json!({"model": "resp", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "summarise"},
        {"type": "input_file", "file_url": "https://example.com/report.pdf"}]}]});
    let through_route = json!({"model": "best", "input": "and then?", "previous_response_id": "resp_mock1"});
    for unmeasured in [&named, &with_file, &through_route] {
        let response = post(&gateway, "/v1/responses", unmeasured).await;
        assert_eq!(response.status(), 429, "{unmeasured}");
    }

    // A stream cut before response.completed: the client gets an error
    // event, and the call is charged all the output it was held for (it
    // may have reasoned unseen), not the deltas it showed.
    let native_spent = || async {
        let budgets: Value =
            reqwest::get(format!("{}/v1/admin/budgets", gateway.url)).await.unwrap().json().await.unwrap();
        let native = budgets["budgets"].as_array().unwrap().iter().find(|b| b["scope"]["name"] == "native").cloned();
        native.and_then(|b| b["spent"].as_str().map(|m| m.parse::<Money>().unwrap())).unwrap_or(Money::ZERO)
    };
    let before = native_spent().await;
    mock.fail_next("resp", Fault::CutAfter(4), 1);
    let response = post(&gateway, "/v1/responses", &streamed).await;
    let events = named_events(&response.text().await.unwrap());
    assert_eq!(events.last().map(|(n, _)| n.as_str()), Some("error"), "{events:?}");
    assert!(events.last().is_some_and(|(_, d)| d["error"]["code"] == "stream_interrupted"), "the SDK's nested shape");
    let (after, held_output) = (native_spent().await, 50 * 15_000);
    assert!(after.nanos() - before.nanos() >= held_output, "{after} - {before} < {held_output} nanos");
    let hits = mock.hits("resp");
    let response = post(&gateway, "/v1/responses", &json!({"model": "resp", "input": "hi", "store": true})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(mock.hits("resp"), hits + 1);
    gateway.stop().await;
    mock.shutdown().await;
}
