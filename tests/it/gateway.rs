//! The gateway end to end: the real server on 127.0.0.1 (port 0) against the
//! mock upstream (a real HTTP server speaking the OpenAI wire format), called
//! with a real HTTP client.

use std::{sync::Arc, time::Duration};

use crate::support::{Running, now_ms, validated};
use futures_util::StreamExt;
use modelfleet::{
    Fleet, ReportQuery,
    budget::{Period, Scope},
    config::Config,
    metrics::Category,
    registry::Money,
};
use modelfleet_gateway::Gateway;
use modelfleet_mock_upstream::{Behavior, Fault, MockUpstream, prompt_tokens};
use serde_json::{Value, json};

const MOCK_KEY: &str = "sk-mock-upstream-secret";
const CLIENT_KEY: &str = "mf-client-secret-1";
const ADMIN_KEY: &str = "mf-admin-secret-2";
const METRICS_KEY: &str = "mf-metrics-secret-3";
const TIGHT_KEY: &str = "mf-tight-secret-4";
/// A provider key of a shape no sanitizer pattern knows.
const ODD_KEY: &str = "AIzaSyD-odd-provider-key-0000";

fn env(var: &str) -> Option<String> {
    match var {
        "MOCK_KEY" => Some(MOCK_KEY.into()),
        "KEY_CLIENT" => Some(CLIENT_KEY.into()),
        "KEY_ADMIN" => Some(ADMIN_KEY.into()),
        "KEY_METRICS" => Some(METRICS_KEY.into()),
        "KEY_TIGHT" => Some(TIGHT_KEY.into()),
        "ODD_KEY" => Some(ODD_KEY.into()),
        _ => None,
    }
}

/// A `[[models]]` entry on the mock provider; the upstream name is the id.
fn model(id: &str, window: u32, fallbacks: &[&str]) -> String {
    let fallbacks: Vec<String> = fallbacks.iter().map(|f| format!("{f:?}")).collect();
    format!(
        "\n[[models]]\nid = \"{id}\"\nprovider = \"mock\"\ncontext_window = {window}\ninput_price_per_mtok = \
         \"0.50\"\noutput_price_per_mtok = \"1.50\"\nquality = 0.7\nlanguages = [\"en\"]\ncategories = \
         [\"general\"]\nfallbacks = [{}]\n",
        fallbacks.join(", ")
    )
}

fn config(mock: &MockUpstream, dir: &tempfile::TempDir, body: &str) -> Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\nmax_body_bytes = 65536\n{body}\n[store]\npath = \"{}\"\nbatch_wait_ms = \
         5\n\n[[providers]]\nname = \"mock\"\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \
         \"MOCK_KEY\"\nconnect_timeout_ms = 500\nrequest_timeout_ms = 1500\n\n[retry]\nmax_attempts = \
         2\ninitial_backoff_ms = 1\nmax_backoff_ms = 5\ndeadline_ms = 5000\n",
        dir.path().join("fleet.db").display(),
        mock.base_url()
    );
    validated(&text, dir.path(), env)
}

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

async fn post(client: &reqwest::Client, url: &str, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = client.post(url).json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

fn header<'r>(response: &'r reqwest::Response, name: &str) -> &'r str {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The `data` of every SSE event in a body.
fn events(body: &str) -> Vec<String> {
    body.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_class_falls_back_and_a_bad_request_is_not_retried() {
    let mock = MockUpstream::start().await.unwrap();
    mock.require_key(MOCK_KEY);
    let dir = tempfile::tempdir().unwrap();
    let primaries = ["p500", "p429", "phang", "preset", "pctx", "p400", "p401"];
    let mut models: String = primaries.iter().map(|p| model(p, 8_192, &["backup"])).collect();
    models.push_str(&model("backup", 128_000, &[]));
    let gateway = Running::start(&config(&mock, &dir, &models), env).await;
    let faults = [
        ("p500", Fault::ServerError),
        ("p429", Fault::RateLimited { retry_after_secs: 30 }),
        ("phang", Fault::Hang(Duration::from_secs(3))),
        ("preset", Fault::Reset),
        ("pctx", Fault::ContextWindow),
        ("p401", Fault::Unauthorized),
    ];
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", gateway.url);
    for (primary, fault) in faults {
        mock.fail_next(primary, fault, 1);
        let before = mock.hits("backup");
        let response = post(&client, &url, None, &chat(primary, "hello")).await;
        assert_eq!(response.status(), 200, "{primary}");
        assert_eq!(header(&response, "x-modelfleet-model"), "backup", "{primary}");
        assert_eq!(header(&response, "x-modelfleet-fallback"), "true", "{primary}");
        assert_eq!(header(&response, "x-modelfleet-attempts"), "2", "{primary}");
        assert_eq!(mock.hits(primary), 1, "{primary} tried once");
        assert_eq!(mock.hits("backup"), before + 1, "{primary}");
        let body: Value = response.json().await.unwrap();
        assert!(body["choices"][0]["message"]["content"].as_str().unwrap().starts_with("mock answer from backup"));
    }

    // A 400 is the request's fault: no retry, no fallback, OpenAI's error shape.
    mock.fail_next("p400", Fault::BadRequest, 1);
    let before = mock.hits("backup");
    let response = post(&client, &url, None, &chat("p400", "hello")).await;
    assert_eq!(response.status(), 400);
    assert_eq!(header(&response, "x-modelfleet-attempts"), "1");
    let body: Value = response.json().await.unwrap();
    // The upstream's own code and param, relayed: they say what to fix.
    assert_eq!(body["error"]["code"], "invalid_value", "{body}");
    assert_eq!(body["error"]["param"], "messages", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("p400 (bad_request"), "{body}");
    assert_eq!((mock.hits("p400"), mock.hits("backup")), (1, before));

    // Everything failing: 502, the message lists what was tried, no key leaks.
    mock.set("backup", Behavior { fault: Some(Fault::ServerError), fault_rate: 1.0, ..Behavior::default() });
    mock.fail_next("p500", Fault::ServerError, 5);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let response = post(&client, &url, None, &chat("p500", "hello")).await;
    assert_eq!(response.status(), 502);
    let text = response.text().await.unwrap();
    assert!(text.contains("p500 (server_error") && text.contains("backup (server_error"), "{text}");
    assert!(!text.contains(MOCK_KEY));

    // Unknown model: 404 naming it.
    let response = post(&client, &url, None, &chat("no-such-model", "hello")).await;
    assert_eq!(response.status(), 404);
    assert!(response.text().await.unwrap().contains("\\\"no-such-model\\\" is neither a catalog model"));
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_pass_through_and_a_cut_ends_with_an_error_event() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let models = model("s1", 8_192, &[]) + &model("s2", 8_192, &[]);
    let gateway = Running::start(&config(&mock, &dir, &models), env).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", gateway.url);

    let mut request = chat("s1", "tell me");
    request["stream"] = json!(true);
    let response = post(&client, &url, None, &request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), "text/event-stream");
    assert_eq!(header(&response, "x-modelfleet-model"), "s1");
    let body = response.text().await.unwrap();
    let data = events(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let text: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "mock answer from s1: lorem ipsum lorem ipsum lorem ipsum lorem ipsum");
    // The gateway asked for usage; this client did not, so it got no usage chunk.
    assert_eq!(mock.last_request("s1").unwrap()["stream_options"]["include_usage"], true);
    assert!(!body.contains("\"usage\""));

    request["stream_options"] = json!({"include_usage": true});
    let body = post(&client, &url, None, &request).await.text().await.unwrap();
    assert!(events(&body).iter().any(|d| d.contains("\"completion_tokens\":12")), "{body}");

    // A failure before the first event falls back; one after it ends the stream with an error event.
    mock.fail_next("s1", Fault::ServerError, 1);
    let response = post(&client, &url, None, &request).await;
    assert_eq!(header(&response, "x-modelfleet-model"), "s2", "{:?}", response.headers());
    assert!(response.text().await.unwrap().ends_with("data: [DONE]\n\n"));

    mock.fail_next("s2", Fault::CutAfter(2), 1);
    let mut cut = chat("s2", "tell me");
    cut["stream"] = json!(true);
    let response = post(&client, &url, None, &cut).await;
    assert_eq!(response.status(), 200);
    let data = events(&response.text().await.unwrap());
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap_or_else(|e| panic!("{e}: {data:?}"));
    assert_eq!(last["error"]["code"], "stream_interrupted", "{data:?}");
    assert!(!data.iter().any(|d| d == "[DONE]"));
    // Counted as the model's failure, and its tokens so far were still recorded.
    let stats = gateway.fleet.monitor().model_stats("s2");
    assert_eq!(stats.totals.failures, 1, "{stats:?}");
    let metrics: Value = client.get(format!("{}/v1/metrics", gateway.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(metrics["gauges"]["modelfleet_gateway_stream_failures_total"], 1.0, "{metrics}");
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_priced_exactly_budgets_refuse_and_identical_requests_hit_the_cache() {
    let mock = MockUpstream::start().await.unwrap();
    // A provider that answers 12 tokens whatever max_tokens says.
    mock.set("m", Behavior { ignore_max_tokens: true, ..Behavior::default() });
    let dir = tempfile::tempdir().unwrap();
    let body = model("m", 8_192, &[])
        + "\n[[server.api_keys]]\nname = \"app\"\nkey_env = \"KEY_CLIENT\"\nrole = \"client\"\n\
           \n[[server.api_keys]]\nname = \"tight\"\nkey_env = \"KEY_TIGHT\"\nrole = \"client\"\nmonthly_budget = \"0.00002\"\n\
           \n[cache]\nenabled = true\nttl_secs = 60\n";
    let gateway = Running::start(&config(&mock, &dir, &body), env).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", gateway.url);
    let request = chat("m", "what does this cost exactly?");

    let response = post(&client, &url, Some(CLIENT_KEY), &request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-modelfleet-cache"), "miss");
    let upstream = prompt_tokens(&mock.last_request("m").unwrap());
    let expected = Money::from_nanos(i64::from(upstream) * 500 + 12 * 1_500);
    let report = gateway.fleet.report(&ReportQuery::last(Duration::from_hours(1), now_ms())).await.unwrap();
    let line = report.groups.iter().find(|l| l.name == "m").unwrap();
    assert_eq!((line.requests, line.cost), (1, expected));
    assert_eq!(gateway.fleet.store().usage().unwrap().iter().find(|h| h.model == "m").unwrap().cost, expected);

    // The same request again: answered from the cache, the upstream not called.
    gateway.fleet.store().flush().unwrap();
    let response = post(&client, &url, Some(CLIENT_KEY), &request).await;
    assert_eq!(header(&response, "x-modelfleet-cache"), "hit");
    assert_eq!(header(&response, "x-modelfleet-model"), "m");
    let cached: Value = response.json().await.unwrap();
    assert!(cached["choices"][0]["message"]["content"].as_str().unwrap().starts_with("mock answer from m"));
    assert_eq!(mock.hits("m"), 1);
    // Another key never shares the answer, and this one's $0.00002 monthly
    // budget cannot hold the request's worst case (8,000-odd output tokens
    // the model may answer): refused before any call, nothing spent, nothing
    // served from the other key's cache.
    let response = post(&client, &url, Some(TIGHT_KEY), &request).await;
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "x-modelfleet-cache"), "");
    let metrics: Value = client
        .get(format!("{}/v1/metrics?category=cache", gateway.url))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // A client key may not read metrics.
    assert_eq!(metrics["error"]["code"], "insufficient_role");

    // A one-token answer fits (about $0.000014 at worst: the prompt
    // estimate is of the whole body), but the upstream ignores
    // max_tokens and answers 12 tokens: charged in full ($0.000021), the
    // overshoot counted, and the key refuses every paid request after it.
    let hits = mock.hits("m");
    let mut other = chat("m", "a different question");
    other["max_tokens"] = json!(1);
    let response = post(&client, &url, Some(TIGHT_KEY), &other).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-modelfleet-cost"), "0.000021");
    assert_eq!(header(&response, "x-modelfleet-budget-remaining"), "0");
    let tight = gateway.fleet.budgets().status(&Scope::Key("tight".into()), Period::Monthly).unwrap();
    assert_eq!((tight.spent, tight.reserved), (Money::from_nanos(21_000), Money::ZERO));
    let metrics = gateway.fleet.metrics_json(&[Category::Budget]);
    assert_eq!(metrics["budget_overshoot"], json!({"count": 1, "amount": "0.000001"}), "{metrics}");
    // A new question (the same one may be answered from the cache, free,
    // once the cache entry is written: that write is queued, so a repeat
    // would race it).
    let mut third = chat("m", "a third question");
    third["max_tokens"] = json!(1);
    let response = post(&client, &url, Some(TIGHT_KEY), &third).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("key:tight monthly"), "{body}");
    assert_eq!(mock.hits("m"), hits + 1);
    gateway.stop().await;
    mock.shutdown().await;
}

/// Revisions and a history are the shared catalog's (`[cluster]`): a
/// conditional edit (of disabled `m2`) is refused, saying so.
async fn no_revisions_without_a_cluster(client: &reqwest::Client, url: &str) {
    let response = client
        .post(format!("{url}/v1/admin/models/m2/enable"))
        .bearer_auth(ADMIN_KEY)
        .header("if-match", "\"3\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("[cluster]"));
    let response = client.get(format!("{url}/v1/admin/catalog/history")).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_guard_every_endpoint_and_the_admin_api_edits_the_catalog() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let body = model("m", 8_192, &[])
        + "\n[[server.api_keys]]\nname = \"app\"\nkey_env = \"KEY_CLIENT\"\nrole = \"client\"\n\
           \n[[server.api_keys]]\nname = \"ops\"\nkey_env = \"KEY_ADMIN\"\nrole = \"admin\"\n\
           \n[[server.api_keys]]\nname = \"prom\"\nkey_env = \"KEY_METRICS\"\nrole = \"metrics\"\n";
    let gateway = Running::start(&config(&mock, &dir, &body), env).await;
    let client = reqwest::Client::new();
    let get = |path: &str, key: Option<&str>| {
        let mut request = client.get(format!("{}{path}", gateway.url));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    // The refused probes come from an address of their own.
    let stranger = reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, 3])).build().unwrap();
    for path in ["/v1/models", "/v1/metrics", "/metrics", "/health/ready", "/v1/admin/models"] {
        let url = format!("{}{path}", gateway.url);
        assert_eq!(stranger.get(&url).send().await.unwrap().status(), 401, "{path}");
        assert_eq!(stranger.get(&url).bearer_auth("wrong").send().await.unwrap().status(), 401, "{path}");
        assert_eq!(get(path, Some(ADMIN_KEY)).await.unwrap().status(), 200, "{path}");
    }
    // Liveness needs no key, and so says nothing but "ok".
    let live = get("/health/live", None).await.unwrap();
    assert_eq!(live.status(), 200);
    assert_eq!(live.text().await.unwrap(), "ok");
    // The Anthropic SDKs' header and Azure clients' header carry keys too.
    let models = format!("{}/v1/models", gateway.url);
    // Ten failures from a loopback peer lock nothing out by default
    // (auth_lockout = "remote"): every local client shares that address.
    assert_eq!(stranger.get(&models).bearer_auth(CLIENT_KEY).send().await.unwrap().status(), 200);
    let guesser = reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, 4])).build().unwrap();
    for name in ["x-api-key", "api-key"] {
        let response = client.get(&models).header(name, CLIENT_KEY).send().await.unwrap();
        assert_eq!(response.status(), 200, "{name}");
        let response = guesser.get(&models).header(name, "wrong").send().await.unwrap();
        assert_eq!(response.status(), 401, "{name}");
    }
    assert_eq!(get("/v1/models", Some(CLIENT_KEY)).await.unwrap().status(), 200);
    // Another key's value echoed back (here as the model asked for) never
    // leaves the process: every configured key is redacted by value,
    // whatever its shape.
    let echoed = client
        .post(format!("{}/v1/chat/completions", gateway.url))
        .bearer_auth(CLIENT_KEY)
        .json(&chat(ADMIN_KEY, "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.status(), 404);
    let text = echoed.text().await.unwrap();
    assert!(!text.contains(ADMIN_KEY) && text.contains("[REDACTED"), "{text}");
    assert_eq!(get("/v1/admin/models", Some(CLIENT_KEY)).await.unwrap().status(), 403);
    assert_eq!(get("/metrics", Some(CLIENT_KEY)).await.unwrap().status(), 403);
    assert_eq!(get("/metrics", Some(METRICS_KEY)).await.unwrap().status(), 200);
    assert_eq!(get("/v1/models", Some(METRICS_KEY)).await.unwrap().status(), 403);
    let completions = format!("{}/v1/chat/completions", gateway.url);
    assert_eq!(post(&client, &completions, Some(METRICS_KEY), &chat("m", "x")).await.status(), 403);
    assert_eq!(post(&client, &completions, Some(CLIENT_KEY), &chat("m", "x")).await.status(), 200);

    // Admin: add a model, disable it, see it leave /v1/models.
    let added: Value = json!({"id": "m2", "provider": "mock", "upstream": "m2", "context_window": 8192,
        "quality": 0.6, "languages": ["en"], "categories": ["general"]});
    let admin_models = format!("{}/v1/admin/models", gateway.url);
    let response = client.post(&admin_models).bearer_auth(ADMIN_KEY).json(&added).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let response = client.post(&admin_models).bearer_auth(ADMIN_KEY).json(&added).send().await.unwrap();
    assert_eq!(response.status(), 409);
    let bad = json!({"id": "m3", "provider": "nowhere"});
    let response = client.post(&admin_models).bearer_auth(ADMIN_KEY).json(&bad).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("\\\"nowhere\\\" is not configured"));
    let listed = |v: &Value, id: &str| v["data"].as_array().unwrap().iter().any(|m| m["id"] == id);
    let models: Value = get("/v1/models", Some(CLIENT_KEY)).await.unwrap().json().await.unwrap();
    assert!(listed(&models, "m2") && listed(&models, "auto"));
    let response = client.post(format!("{admin_models}/m2/disable")).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let models: Value = get("/v1/models", Some(CLIENT_KEY)).await.unwrap().json().await.unwrap();
    assert!(!listed(&models, "m2"));
    no_revisions_without_a_cluster(&client, &gateway.url).await;
    let models: Value = get("/v1/models", Some(CLIENT_KEY)).await.unwrap().json().await.unwrap();
    assert!(!listed(&models, "m2"), "a refused edit changed the catalog");
    let budgets = get("/v1/admin/budgets", Some(ADMIN_KEY)).await.unwrap();
    assert_eq!(budgets.status(), 200);
    let report: Value = get("/v1/admin/report", Some(ADMIN_KEY)).await.unwrap().json().await.unwrap();
    assert_eq!(report["groups"][0]["name"], "m", "{report}");

    // Explain: ranked candidates with scores, rejected ones with reasons.
    let explain = format!("{}/v1/route/explain", gateway.url);
    let body = json!({"modelfleet": {"min_quality": 0.65}});
    let explained: Value =
        client.post(&explain).bearer_auth(CLIENT_KEY).json(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(explained["ranked"][0]["model"], "m", "{explained}");
    assert!(explained["text"].as_str().unwrap().contains("m2"), "{explained}");
    // Each ranked model's terms, the weights they were scored with, and the
    // same in the text.
    assert_eq!(explained["weights"]["quality"], 3.0, "{explained}");
    let score = &explained["ranked"][0]["score"];
    for term in ["quality", "reliability", "language", "cost", "speed", "load", "category", "priority", "rate_limit"] {
        assert!(score[term].as_f64().is_some_and(|t| (0.0..=1.0).contains(&t)), "{term}: {explained}");
    }
    assert!(explained["text"].as_str().unwrap().contains(" + reliability "), "{explained}");
    // Requirements no model can be judged against: 400, naming the field.
    let negative = json!({"modelfleet": {"max_cost": "-1"}});
    let refused = client.post(&explain).bearer_auth(CLIENT_KEY).json(&negative).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "invalid_requirements", "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("max_cost must be >= 0"), "{refused}");
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_validates_updates_in_real_time_and_leaks_nothing() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Running::start(&config(&mock, &dir, &model("m", 8_192, &[])), env).await;
    let client = reqwest::Client::new();
    let metrics = |query: &str| client.get(format!("{}/v1/metrics{query}", gateway.url)).send();

    let first: Value = metrics("").await.unwrap().json().await.unwrap();
    let secret_prompt = "my secret prompt text";
    post(&client, &format!("{}/v1/chat/completions", gateway.url), None, &chat("m", secret_prompt)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let response = metrics("?format=json").await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let second: Value = serde_json::from_str(&text).unwrap();
    let total = |v: &Value| v["throughput"]["total_requests"].as_u64().unwrap();
    assert_eq!(total(&second) - total(&first), 1, "{second}");
    assert!(second["uptime_seconds"].as_f64() > first["uptime_seconds"].as_f64(), "{first} {second}");
    for leak in [secret_prompt, MOCK_KEY, &dir.path().display().to_string(), "fleet.db"] {
        assert!(!text.contains(leak), "{leak} leaked");
    }

    let only: Value = metrics("?category=cache,latency").await.unwrap().json().await.unwrap();
    assert!(only.get("cache").is_some() && only.get("latency").is_some() && only.get("models").is_none(), "{only}");
    let response = metrics("?category=cache,bogus").await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("bogus"));
    let response = metrics("?format=xml").await.unwrap();
    assert_eq!(response.status(), 400);
    for method in [reqwest::Method::POST, reqwest::Method::PUT, reqwest::Method::DELETE] {
        let response = client.request(method.clone(), format!("{}/v1/metrics", gateway.url)).send().await.unwrap();
        assert_eq!(response.status(), 405, "{method}");
        assert_eq!(header(&response, "allow"), "GET, HEAD", "only what the endpoint takes");
    }
    for (method, path, allow) in [
        (reqwest::Method::GET, "/v1/chat/completions", "POST"),
        (reqwest::Method::DELETE, "/v1/admin/models", "GET, HEAD, POST"),
        (reqwest::Method::POST, "/v1/admin/models/m", "GET, HEAD, PUT, DELETE"),
    ] {
        let response = client.request(method.clone(), format!("{}{path}", gateway.url)).send().await.unwrap();
        assert_eq!((response.status().as_u16(), header(&response, "allow")), (405, allow), "{method} {path}");
    }
    let response = client
        .get(format!("{}/v1/metrics", gateway.url))
        .header("origin", "https://dashboard.example")
        .send()
        .await
        .unwrap();
    // Keyless: a page of another origin reads nothing (no CORS without
    // cors_origins, and a foreign Origin is refused).
    assert_eq!(response.status(), 403);
    assert!(response.headers().get("access-control-allow-origin").is_none());

    let prometheus = metrics("?format=prometheus").await.unwrap();
    assert!(header(&prometheus, "content-type").starts_with("text/plain; version=0.0.4"));
    let scraped = client.get(format!("{}/metrics", gateway.url)).send().await.unwrap().text().await.unwrap();
    let lines = scraped.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).unwrap();
    assert!(parsed.samples.iter().any(|s| s.metric == "modelfleet_requests_total"), "{scraped}");
    assert!(!scraped.contains(secret_prompt));

    let live = client.get(format!("{}/health/live", gateway.url)).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let ready: Value = client.get(format!("{}/health/ready", gateway.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    let services: Vec<&str> = ready["services"].as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
    assert!(services.contains(&"store") && services.contains(&"router"), "{ready}");
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_a_stream_in_flight_and_flushes_the_store() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("slow", Behavior { chunk_interval: Duration::from_millis(40), chunks: 6, ..Behavior::default() });
    let dir = tempfile::tempdir().unwrap();
    let config = config(&mock, &dir, &model("slow", 8_192, &[]));
    let gateway = Running::start(&config, env).await;
    let client = reqwest::Client::new();
    let mut request = chat("slow", "stream slowly");
    request["stream"] = json!(true);
    let response = post(&client, &format!("{}/v1/chat/completions", gateway.url), None, &request).await;
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    let url = gateway.url.clone();
    let gateway_fleet = Arc::clone(&gateway.fleet);
    let stopping = tokio::spawn(gateway.stop());
    let mut rest = Vec::new();
    while let Some(piece) = body.next().await {
        rest.extend_from_slice(&piece.unwrap());
    }
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.ends_with("data: [DONE]\n\n"), "{first:?} then {rest}");
    assert_eq!(gateway_fleet.monitor().model_stats("slow").totals.successes, 1);
    stopping.await.unwrap();
    assert!(client.get(format!("{url}/health/live")).send().await.is_err(), "still accepting after shutdown");
    // Flushed: a new fleet on the same file sees the streamed request.
    let store =
        modelfleet::store::Store::open(dir.path().join("fleet.db"), modelfleet::store::StoreConfig::default()).unwrap();
    let usage = store.usage().unwrap();
    assert_eq!(usage.iter().find(|u| u.model == "slow").map(|u| u.requests), Some(1), "{usage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_database_is_refused_untouched_and_serves_once_moved_aside() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    let garbage = b"this is not a database, but it is someone's data".repeat(100);
    std::fs::write(&path, &garbage).unwrap();
    let config = config(&mock, &dir, &model("m", 8_192, &[]));
    let err = Gateway::bind(&config, &env).await.unwrap_err().to_string();
    assert!(err.contains("is not an SQLite database") && err.contains("fleet.db"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), garbage, "the refused file was changed");
    let kept = modelfleet::store::quarantine(&path, 1).unwrap();
    let gateway = Running::start(&config, env).await;
    let response =
        post(&reqwest::Client::new(), &format!("{}/v1/chat/completions", gateway.url), None, &chat("m", "hi")).await;
    assert_eq!(response.status(), 200);
    gateway.stop().await;
    assert_eq!(std::fs::read(kept).unwrap(), garbage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_failures_and_concurrency_never_lose_a_request() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("flaky", Behavior { fault: Some(Fault::ServerError), fault_rate: 0.2, ..Behavior::default() });
    let dir = tempfile::tempdir().unwrap();
    let models = model("flaky", 8_192, &["steady"]) + &model("steady", 8_192, &[]);
    let gateway = Running::start(&config(&mock, &dir, &models), env).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", gateway.url);
    let mut ok = 0;
    for i in 0..1_000 {
        let response = post(&client, &url, None, &chat("flaky", &format!("request {i}"))).await;
        if response.status() == 200 {
            ok += 1;
        }
    }
    assert!(ok >= 999, "{ok} of 1000 succeeded");
    assert!(mock.hits("steady") > 0, "the fallback was never used");

    let mut tasks = Vec::new();
    for i in 0..100 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(
            async move { post(&client, &url, None, &chat("steady", &format!("c{i}"))).await.status() },
        ));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_stream_is_still_charged_and_limits_hold() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("slow", Behavior { chunk_interval: Duration::from_millis(30), chunks: 8, ..Behavior::default() });
    let dir = tempfile::tempdir().unwrap();
    let body =
        model("slow", 8_192, &[]) + "\n[[routes]]\nname = \"any-en\"\n[routes.requirements]\nlanguage = \"en\"\n";
    let gateway = Running::start(&config(&mock, &dir, &body), env).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", gateway.url);

    let mut request = chat("slow", "stream, then I leave");
    request["stream"] = json!(true);
    let response = post(&client, &url, None, &request).await;
    let mut body = response.bytes_stream();
    assert!(body.next().await.unwrap().unwrap().starts_with(b"data: "));
    drop(body);
    // The relay notices, stops reading upstream and settles: one request, tokens estimated, cost charged.
    let mut stats = gateway.fleet.monitor().model_stats("slow");
    for _ in 0..100 {
        if stats.totals.requests == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        stats = gateway.fleet.monitor().model_stats("slow");
    }
    assert_eq!((stats.totals.requests, stats.totals.failures), (1, 0), "{stats:?}");
    assert!(stats.totals.tokens.input > 0 && stats.totals.cost > Money::ZERO, "{stats:?}");
    let metrics: Value =
        client.get(format!("{}/v1/metrics?category=gauges", gateway.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(metrics["gauges"]["modelfleet_gateway_client_disconnects_total"], 1.0, "{metrics}");

    // A route name as the model.
    let response = post(&client, &url, None, &chat("any-en", "hi")).await;
    assert_eq!((response.status().as_u16(), header(&response, "x-modelfleet-model")), (200, "slow"));
    // A route carries its own requirements: an extension with it is refused, naming why.
    let mut both = chat("any-en", "hi");
    both["modelfleet"] = json!({"min_quality": 0.9});
    let response = post(&client, &url, None, &both).await;
    assert_eq!(response.status(), 400);
    // Bodies over server.max_body_bytes (64 KiB here) are refused with 413.
    let huge = chat("slow", &"x".repeat(70_000));
    let response = post(&client, &url, None, &huge).await;
    assert_eq!(response.status(), 413);
    assert!(response.text().await.unwrap().contains("server.max_body_bytes"));
    // Broken JSON: 400 naming the problem.
    let response =
        client.post(&url).header("content-type", "application/json").body("{\"model\": ").send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("not valid JSON"));
    // A body that does not say it is JSON: 415, whatever it holds.
    let response = client.post(&url).header("content-type", "text/plain").body("{}").send().await.unwrap();
    assert_eq!(response.status(), 415);
    assert!(response.text().await.unwrap().contains("content-type: application/json"));

    // The admin API updates a model in place (no keys configured: open on loopback).
    let mut spec: Value =
        client.get(format!("{}/v1/admin/models/slow", gateway.url)).send().await.unwrap().json().await.unwrap();
    spec["quality"] = json!(0.9);
    let response = client.put(format!("{}/v1/admin/models/slow", gateway.url)).json(&spec).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(gateway.fleet.catalog().get("slow").unwrap().quality, Some(0.9));
    spec["id"] = json!("other");
    let response = client.put(format!("{}/v1/admin/models/slow", gateway.url)).json(&spec).send().await.unwrap();
    assert_eq!(response.status(), 400);
    gateway.stop().await;
    mock.shutdown().await;
}

/// A model whose every answer costs exactly $0.10 at most: prompt tokens at
/// `input` per million, and 100 output tokens (its `max_output_tokens`) at
/// $1,000 per million.
fn dear_model(id: &str, input: &str) -> String {
    format!(
        "\n[[models]]\nid = \"{id}\"\nprovider = \"mock\"\ncontext_window = 8192\nmax_output_tokens = 100\n\
         input_price_per_mtok = \"{input}\"\noutput_price_per_mtok = \"1000\"\nquality = 0.7\nlanguages = [\"en\"]\n\
         categories = [\"general\"]\n"
    )
}

const HARD_DOLLAR: &str =
    "\n[[budgets]]\nscope = \"global\"\nperiod = \"monthly\"\nlimit = \"1.00\"\nenforcement = \"hard\"\n";

/// What a burst of concurrent requests came to: how many were served, and
/// every refusal's status, code, `Retry-After` and cost headers checked.
async fn burst(url: &str, body: &Value, n: usize) -> (usize, usize) {
    let client = reqwest::Client::new();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.to_owned(), body.clone());
            tokio::spawn(async move {
                let response = post(&client, &url, None, &body).await;
                let status = response.status().as_u16();
                let retry_after = header(&response, "retry-after").to_owned();
                let cost = header(&response, "x-modelfleet-cost").to_owned();
                let json: Value = response.json().await.unwrap_or(Value::Null);
                (status, retry_after, cost, json)
            })
        })
        .collect();
    let (mut served, mut refused) = (0, 0);
    for task in tasks {
        let (status, retry_after, cost, json) = task.await.unwrap();
        match status {
            200 => {
                served += 1;
                assert!(cost.parse::<Money>().is_ok_and(|c| c > Money::ZERO), "a paid answer says its cost: {cost:?}");
            }
            429 => {
                refused += 1;
                assert_eq!(json["error"]["code"], "budget_exceeded", "{json}");
                assert_eq!(json["error"]["type"], "budget_exceeded", "{json}");
                assert!(json["error"]["message"].as_str().unwrap().contains("global monthly"), "{json}");
                let seconds: u64 = retry_after.parse().unwrap_or_else(|_| panic!("Retry-After: {retry_after:?}"));
                assert!((1..=31 * 24 * 3_600).contains(&seconds), "seconds to the month's end: {seconds}");
                assert_eq!(cost, "0", "a refusal costs nothing");
            }
            other => panic!("unexpected status {other}: {json}"),
        }
    }
    (served, refused)
}

/// Spent in the ledger and in the database, both for the global monthly budget.
async fn spent_everywhere(fleet: &Fleet) -> (Money, Money) {
    let ledger = fleet.budgets().status(&Scope::Global, Period::Monthly).unwrap().spent;
    fleet.store().flush_async().await.unwrap();
    let stored: Money = fleet
        .store()
        .spend()
        .unwrap()
        .iter()
        .filter(|r| r.scope == Scope::Global && r.period == Period::Monthly)
        .map(|r| r.spent)
        .sum();
    (ledger, stored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_without_max_tokens_never_pass_a_hard_budget() {
    let limit = Money::from_dollars(1);
    // (what is sent, how many may be served at most, exactly when every hold is the actual cost)
    let long = "y".repeat(1_600); // the gateway counts 408 prompt tokens (the messages as JSON), the mock 401
    let route = chat("short", "no max_tokens, through a route that caps answers at 50 tokens");
    let mut two = chat("dear", "two answers each");
    two["n"] = json!(2);
    let mut liar = chat("priced", &long);
    liar["modelfleet"] = json!({"prompt_tokens": 1});
    let cases: [(&str, Value, usize, bool); 4] = [
        ("no max_tokens", chat("dear", "as most clients send it"), 10, true),
        // The route's cap holds $0.05 per answer and goes upstream, so each
        // answer is 50 tokens: exactly 20 fit.
        ("a route", route, 20, true),
        // n = 2: a hold of $0.20 each; each answer then costs $0.20.
        ("n = 2", two, 5, true),
        // $0.04 of prompt plus $0.10 of output: 7 fit; a hold trusting the
        // client's 1 prompt token would let 9 in and spend $1.26.
        ("a client claiming prompt_tokens 1", liar, 7, false),
    ];
    for (what, request, most, exact) in cases {
        let mock = MockUpstream::start().await.unwrap();
        mock.set(
            "dear",
            Behavior { completion_tokens: 100, latency: Duration::from_millis(50), ..Behavior::default() },
        );
        mock.set(
            "priced",
            Behavior { completion_tokens: 100, latency: Duration::from_millis(50), ..Behavior::default() },
        );
        let dir = tempfile::tempdir().unwrap();
        let body = dear_model("dear", "0")
            + &dear_model("priced", "100")
            + "\n[[routes]]\nname = \"short\"\nfallbacks = [\"dear\"]\n[routes.requirements]\nlanguage = \"en\"\n\
               max_output_tokens = 50\n"
            + HARD_DOLLAR;
        let gateway = Running::start(&config(&mock, &dir, &body), env).await;
        let url = format!("{}/v1/chat/completions", gateway.url);
        let (served, refused) = burst(&url, &request, 40).await;
        assert_eq!(served + refused, 40, "{what}");
        assert!(served <= most, "{what}: {served} served, at most {most} fit");
        if exact {
            assert_eq!(served, most, "{what}: every hold is exactly an answer's cost");
        }
        let upstream = mock.hits("dear") + mock.hits("priced");
        assert_eq!(upstream, served as u64, "{what}: a refusal never reaches the upstream");
        if what == "a route" {
            assert_eq!(mock.last_request("dear").unwrap()["max_tokens"], 50, "the route's cap went upstream");
        }
        let (ledger, stored) = spent_everywhere(&gateway.fleet).await;
        assert!(ledger <= limit, "{what}: the ledger spent {ledger}");
        assert_eq!(stored, ledger, "{what}: the database holds exactly the ledger's spend");
        let reserved = gateway.fleet.budgets().statuses()[0].reserved;
        assert_eq!(reserved, Money::ZERO, "{what}: nothing stays held");
        gateway.stop().await;
        mock.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_refusal_names_the_budget_and_what_the_request_could_cost() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("dear", Behavior { completion_tokens: 100, ..Behavior::default() });
    let dir = tempfile::tempdir().unwrap();
    let body = dear_model("dear", "0")
        + "\n[[budgets]]\nscope = \"global\"\nperiod = \"none\"\nlimit = \"0.25\"\nenforcement = \"hard\"\n";
    let gateway = Running::start(&config(&mock, &dir, &body), env).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", gateway.url);
    for left in ["0.15", "0.05"] {
        let response = post(&client, &url, None, &chat("dear", "fits")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-modelfleet-cost"), "0.1");
        assert_eq!(header(&response, "x-modelfleet-budget-remaining"), left);
        let _ = response.bytes().await;
    }
    // $0.05 left, the request could cost $0.10 on "dear": refused before any
    // call, naming the budget, what is left and the cost; a lifetime budget
    // never resets, so no Retry-After.
    let response = post(&client, &url, None, &chat("dear", "does not fit")).await;
    assert_eq!(response.status(), 429);
    assert_eq!(header(&response, "retry-after"), "");
    assert_eq!(header(&response, "x-modelfleet-budget-remaining"), "0.05");
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "budget exceeded: hard budget global lifetime has $0.05 left, and this request could cost $0.1 on dear"
        ),
        "{message}"
    );
    assert!(message.ends_with("it never resets"), "{message}");
    // `auto` too: no model fits.
    let response = post(&client, &url, None, &chat("auto", "anything that fits")).await;
    assert_eq!(response.status(), 429);
    assert_eq!(mock.hits("dear"), 2);
    // explain shows the same worst case and the budget's rejection.
    let explained: Value = client
        .post(format!("{}/v1/route/explain", gateway.url))
        .json(&json!({"model": "auto"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rejected = explained["rejected"].as_array().unwrap();
    let dear = rejected.iter().find(|r| r["model"] == "dear").unwrap_or_else(|| panic!("{explained}"));
    assert_eq!(dear["reasons"][0]["constraint"], "over_budget", "{explained}");
    assert_eq!(dear["reasons"][0]["worst_case"], "0.1", "{explained}");
    assert_eq!(dear["reasons"][0]["remaining"], "0.05", "{explained}");
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_before_the_answer_is_still_charged_what_the_upstream_billed() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("dear", Behavior { completion_tokens: 40, latency: Duration::from_millis(400), ..Behavior::default() });
    let dir = tempfile::tempdir().unwrap();
    let gateway = Running::start(&config(&mock, &dir, &(dear_model("dear", "0") + HARD_DOLLAR)), env).await;
    let client = reqwest::Client::builder().timeout(Duration::from_millis(100)).build().unwrap();
    let url = format!("{}/v1/chat/completions", gateway.url);
    let gone = client.post(&url).json(&chat("dear", "I will not wait")).send().await;
    assert!(gone.is_err_and(|e| e.is_timeout()), "the client gave up first");
    // The call runs to its end and is charged the usage the upstream reported:
    // 40 output tokens at $1,000 per million.
    let expected = Money::from_nanos(40_000_000);
    // Polled with a generous bound: the call finishes in the background.
    let waited = std::time::Instant::now();
    let mut spent = spent_everywhere(&gateway.fleet).await;
    while spent != (expected, expected) && waited.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        spent = spent_everywhere(&gateway.fleet).await;
    }
    assert_eq!(spent, (expected, expected), "the ledger and the database");
    assert_eq!(mock.hits("dear"), 1);
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_are_administered_through_the_api_and_config_budgets_are_read_only() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("dear", Behavior { completion_tokens: 100, ..Behavior::default() });
    let dir = tempfile::tempdir().unwrap();
    let body = dear_model("dear", "0")
        + "\n[[server.api_keys]]\nname = \"ops\"\nkey_env = \"KEY_ADMIN\"\nrole = \"admin\"\n\
           \n[[server.api_keys]]\nname = \"app\"\nkey_env = \"KEY_CLIENT\"\nrole = \"client\"\n"
        + HARD_DOLLAR;
    let gateway = Running::start(&config(&mock, &dir, &body), env).await;
    let client = reqwest::Client::new();
    let admin = |path: &str| format!("{}/v1/admin/budgets{path}", gateway.url);
    // A daily budget for the client key, beside the config's global monthly one.
    let added = client
        .post(admin(""))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"scope": {"kind": "key", "name": "app"}, "period": "daily", "limit": "0.15"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    let listed: Value = client.get(admin("")).bearer_auth(ADMIN_KEY).send().await.unwrap().json().await.unwrap();
    let sources: Vec<(String, String)> = listed["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (format!("{} {}", b["scope"]["kind"], b["period"]), b["source"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        sources,
        [("\"global\" \"monthly\"".into(), "config".into()), ("\"key\" \"daily\"".into(), "api".into())]
    );
    // It applies at once: one $0.10 answer fits, a second does not.
    let url = format!("{}/v1/chat/completions", gateway.url);
    assert_eq!(post(&client, &url, Some(CLIENT_KEY), &chat("dear", "one")).await.status(), 200);
    let refused = post(&client, &url, Some(CLIENT_KEY), &chat("dear", "two")).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.text().await.unwrap().contains("key:app daily"));
    // Raising the limit applies without a restart.
    let set = client
        .put(admin("/key:app/daily"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"limit": "0.30"}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    assert_eq!(post(&client, &url, Some(CLIENT_KEY), &chat("dear", "three")).await.status(), 200);
    // A reset starts the period over and is audited with who did it.
    let reset = client.post(admin("/key:app/daily/reset")).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(reset.status(), 200);
    assert_eq!(header(&reset, "x-modelfleet-spent-before-reset"), "0.2");
    let after: Value = reset.json().await.unwrap();
    assert_eq!(after["spent"], "0");
    let audit = gateway.fleet.store().budget_audit().unwrap();
    assert!(audit.iter().any(|row| row.action == "reset" && row.who == "ops"), "{audit:?}");
    // The config's budget is read-only here; clients may not administer.
    let read_only =
        client.put(admin("/global/monthly")).bearer_auth(ADMIN_KEY).json(&json!({"limit": "9"})).send().await.unwrap();
    assert_eq!(read_only.status(), 409);
    assert!(read_only.text().await.unwrap().contains("source: config"));
    assert_eq!(client.delete(admin("/key:app/daily")).bearer_auth(CLIENT_KEY).send().await.unwrap().status(), 403);
    assert_eq!(client.get(admin("/key:nobody/daily")).bearer_auth(ADMIN_KEY).send().await.unwrap().status(), 404);
    assert_eq!(client.get(admin("/team:x/daily")).bearer_auth(ADMIN_KEY).send().await.unwrap().status(), 400);
    assert_eq!(client.delete(admin("/key:app/daily")).bearer_auth(ADMIN_KEY).send().await.unwrap().status(), 200);
    gateway.stop().await;

    // After a restart: the API's budget is gone (removed), the config's is
    // back with its spend restored from the database.
    let gateway = Running::start(&config(&mock, &dir, &body), env).await;
    let views = gateway.fleet.budget_views();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].status.spent, Money::from_nanos(200_000_000));
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_spend_cannot_be_written_hard_budgeted_requests_fail_closed_and_others_continue() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("dear", Behavior { completion_tokens: 10, ..Behavior::default() });
    let dir = tempfile::tempdir().unwrap();
    let body = dear_model("dear", "0")
        + "\n[[server.api_keys]]\nname = \"app\"\nkey_env = \"KEY_CLIENT\"\nrole = \"client\"\nmonthly_budget = \"1.00\"\n\
           \n[[server.api_keys]]\nname = \"other\"\nkey_env = \"KEY_TIGHT\"\nrole = \"client\"\n";
    let gateway = Running::start(&config(&mock, &dir, &body), env).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", gateway.url);
    let ready = || async {
        let response =
            client.get(format!("{}/health/ready", gateway.url)).bearer_auth(CLIENT_KEY).send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(post(&client, &url, Some(CLIENT_KEY), &chat("dear", "one")).await.status(), 200);

    // The disk refuses writes: the answer in flight is still given (its spend
    // is kept and retried), then the budgeted key is refused, fail closed.
    gateway.fleet.store().fail_writes(true);
    assert_eq!(post(&client, &url, Some(CLIENT_KEY), &chat("dear", "two")).await.status(), 200);
    assert!(gateway.fleet.store().spend_backlog().is_some());
    let refused = post(&client, &url, Some(CLIENT_KEY), &chat("dear", "three")).await;
    assert_eq!(refused.status(), 503);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "budget_store_unavailable", "{error}");
    // A key no hard budget covers is served; readiness stays 200 and says why.
    assert_eq!(post(&client, &url, Some(TIGHT_KEY), &chat("dear", "four")).await.status(), 200);
    let (status, text) = ready().await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("spend cannot be persisted"), "{text}");

    // The disk recovers: the kept spend is committed, the budget serves again.
    gateway.fleet.store().fail_writes(false);
    let waited = std::time::Instant::now();
    while gateway.fleet.store().spend_backlog().is_some() && waited.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gateway.fleet.store().spend_backlog(), None);
    assert_eq!(post(&client, &url, Some(CLIENT_KEY), &chat("dear", "five")).await.status(), 200);
    let (status, text) = ready().await;
    assert!(status == 200 && !text.contains("spend cannot be persisted"), "{text}");
    let ledger = gateway.fleet.budgets().status(&Scope::Key("app".into()), Period::Monthly).unwrap().spent;
    gateway.fleet.store().flush_async().await.unwrap();
    let stored: Money = gateway.fleet.store().spend().unwrap().iter().map(|r| r.spent).sum();
    assert_eq!(ledger, Money::from_nanos(3 * 10_000_000), "three answers of 10 tokens at $1,000 per million");
    assert_eq!(stored, ledger, "the spend written during the failure was kept, not lost");
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_left_before_its_first_event_pays_its_prompt_and_one_past_its_cap_is_cut() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Running::start(&config(&mock, &dir, &(dear_model("priced", "100") + HARD_DOLLAR)), env).await;
    let url = format!("{}/v1/chat/completions", gateway.url);
    let mut request = chat("priced", "stream to me, slowly");
    request["stream"] = json!(true);
    // The gateway's prompt estimate, over the messages.
    let prompt = modelfleet_translate::estimate_json(&request["messages"]);
    let prompt_cost = Money::from_nanos(i64::try_from(prompt).unwrap() * 100_000); // $100 per million

    // The client leaves before the first event: nothing was relayed, the
    // prompt was sent: the prompt is charged, not the $0.10 worst case.
    mock.set("priced", Behavior { latency: Duration::from_millis(400), ..Behavior::default() });
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(100)).build().unwrap();
    assert!(impatient.post(&url).json(&request).send().await.is_err());
    let waited = std::time::Instant::now();
    let mut spent = spent_everywhere(&gateway.fleet).await;
    while spent != (prompt_cost, prompt_cost) && waited.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        spent = spent_everywhere(&gateway.fleet).await;
    }
    assert_eq!(spent, (prompt_cost, prompt_cost));

    // An upstream that ignores the cap streams on past the model's 100
    // tokens: the relay ends the stream with an error event instead.
    mock.set(
        "priced",
        Behavior { completion_tokens: 2_000, chunks: 200, ignore_max_tokens: true, ..Behavior::default() },
    );
    let body = reqwest::Client::new().post(&url).json(&request).send().await.unwrap().text().await.unwrap();
    let events = events(&body);
    assert!(!events.iter().any(|e| e == "[DONE]"), "{body}");
    assert!(events.last().is_some_and(|e| e.contains("stream_interrupted") && e.contains("output limit")), "{body}");
    let (charged, _) = spent_everywhere(&gateway.fleet).await;
    let hold = Money::from_nanos(100_000_000) + prompt_cost;
    assert!(charged.saturating_sub(prompt_cost) <= hold + Money::from_nanos(20_000_000), "charged {charged}");
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test]
async fn a_keyless_gateway_refuses_foreign_hosts_and_web_pages_and_sends_cors_only_to_listed_origins() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut keyless = config(&mock, &dir, &model("m", 8_192, &[]));
    // A separate scrape port, guarded the same way.
    let metrics_port =
        modelfleet::config::find_free_port(std::net::IpAddr::from([127, 0, 0, 1]), 20_000..=40_000).unwrap();
    keyless.metrics.port = Some(metrics_port);
    let gateway = Running::start(&keyless, env).await;
    let client = reqwest::Client::new();
    let completions = format!("{}/v1/chat/completions", gateway.url);
    let body = serde_json::to_string(&chat("m", "hi")).unwrap();
    // A web page's "simple" cross-site POST: text/plain, its own Origin.
    let page = client
        .post(&completions)
        .header("content-type", "text/plain")
        .header("origin", "http://evil.example")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 403);
    assert!(page.headers().get("access-control-allow-origin").is_none());
    let refused: Value = page.json().await.unwrap();
    assert_eq!(refused["error"]["code"], "foreign_origin", "{refused}");
    // A DNS-rebinding page reaches 127.0.0.1 under its own name.
    let rebound = client.get(format!("{}/v1/models", gateway.url)).header("host", "evil.example:8080").send().await;
    let rebound = rebound.unwrap();
    assert_eq!(rebound.status(), 403);
    assert_eq!(rebound.json::<Value>().await.unwrap()["error"]["code"], "foreign_host");
    let scrape = format!("http://127.0.0.1:{metrics_port}/metrics");
    assert_eq!(client.get(&scrape).send().await.unwrap().status(), 200, "this machine scrapes");
    let rebound = client.get(&scrape).header("host", "evil.example").send().await.unwrap();
    assert_eq!(rebound.status(), 403, "the scrape port is guarded too");
    // The admin API is as closed to them.
    let edit = client
        .delete(format!("{}/v1/admin/models/m", gateway.url))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(edit.status(), 403);
    assert_eq!(mock.total_hits(), 0, "nothing reached the upstream");
    assert!(gateway.fleet.catalog().get("m").is_some(), "the catalog is untouched");
    // A page on another port of this machine is a page too (a dev server
    // or a notebook may show untrusted HTML): refused unless listed.
    let page = client.post(&completions).header("origin", "http://localhost:3000").json(&chat("m", "hi")).send().await;
    assert_eq!(page.unwrap().status(), 403);
    // This machine's clients (no Origin) are served, without CORS headers.
    let local = client.post(&completions).json(&chat("m", "hi")).send().await.unwrap();
    assert_eq!(local.status(), 200);
    assert!(local.headers().get("access-control-allow-origin").is_none(), "no cors_origins: no CORS");
    gateway.stop().await;

    // With keys, the keys decide; CORS answers the listed origin alone.
    let dir = tempfile::tempdir().unwrap();
    let body = "cors_origins = [\"https://app.example.com\"]\n".to_owned()
        + &model("m", 8_192, &[])
        + "\n[[server.api_keys]]\nname = \"app\"\nkey_env = \"KEY_CLIENT\"\nrole = \"client\"\n";
    let gateway = Running::start(&config(&mock, &dir, &body), env).await;
    let completions = format!("{}/v1/chat/completions", gateway.url);
    let from = |origin: &'static str| {
        client.post(&completions).bearer_auth(CLIENT_KEY).header("origin", origin).json(&chat("m", "hi")).send()
    };
    let listed = from("https://app.example.com").await.unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(header(&listed, "access-control-allow-origin"), "https://app.example.com");
    let other = from("http://evil.example").await.unwrap();
    assert_eq!(other.status(), 200, "a caller with a key is served");
    assert!(other.headers().get("access-control-allow-origin").is_none(), "but its page may not read the answer");
    let preflight = client
        .request(reqwest::Method::OPTIONS, &completions)
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&preflight, "access-control-allow-origin"), "https://app.example.com");
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test]
async fn failed_authentications_lock_an_address_out_and_are_counted() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let body = model("m", 8_192, &[])
        + "\n[[server.api_keys]]\nname = \"app\"\nkey_env = \"KEY_CLIENT\"\nrole = \"client\"\n\
           \n[[server.api_keys]]\nname = \"ops\"\nkey_env = \"KEY_ADMIN\"\nrole = \"admin\"\n";
    // "all": loopback peers count too (every test client is one).
    let mut config = config(&mock, &dir, &body);
    config.server.auth_lockout = modelfleet::config::AuthLockout::All;
    let gateway = Running::start(&config, env).await;
    let client = reqwest::Client::new();
    let models = format!("{}/v1/models", gateway.url);
    // A wrong role is no failed authentication: 403s lock nothing out.
    for _ in 0..12 {
        let response = client.get(format!("{}/v1/admin/models", gateway.url)).bearer_auth(CLIENT_KEY).send().await;
        assert_eq!(response.unwrap().status(), 403);
    }
    for attempt in 0..10 {
        let response = client.get(&models).bearer_auth(format!("guess-{attempt}")).send().await.unwrap();
        assert_eq!(response.status(), 401, "attempt {attempt}");
    }
    // The eleventh request from this address is refused, even with the right key.
    let refused = client.get(&models).bearer_auth(CLIENT_KEY).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = header(&refused, "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_auth_failures", "{body}");
    assert!(!body.to_string().contains(CLIENT_KEY), "{body}");
    // Health is never locked out: an orchestrator's probe must get through.
    assert_eq!(client.get(format!("{}/health/live", gateway.url)).send().await.unwrap().status(), 200);
    // Another address is not locked out, and sees the failures counted.
    let other = reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, 2])).build().unwrap();
    let scraped = other.get(format!("{}/metrics", gateway.url)).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(scraped.status(), 200);
    let text = scraped.text().await.unwrap();
    assert!(text.contains("# TYPE modelfleet_gateway_auth_failures_total counter\n"), "{text}");
    assert!(text.contains("\nmodelfleet_gateway_auth_failures_total 10\n"), "{text}");
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test]
async fn a_provider_key_an_upstream_echoes_never_reaches_the_client_whatever_its_shape() {
    let mock = MockUpstream::start().await.unwrap();
    // The mock wants another key and, as OpenAI does, repeats the one it got.
    mock.require_key("the-right-upstream-key");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&mock, &dir, &model("m", 8_192, &[]));
    config.providers[0].api_key_envs = vec!["ODD_KEY".into()];
    let gateway = Running::start(&config, env).await;
    let client = reqwest::Client::new();
    let response = post(&client, &format!("{}/v1/chat/completions", gateway.url), None, &chat("m", "hi")).await;
    assert_eq!(response.status(), 502, "every attempt failed authenticating upstream");
    let text = response.text().await.unwrap();
    assert!(text.contains("Incorrect API key provided: [REDACTED]"), "{text}");
    assert!(!text.contains(ODD_KEY) && !text.contains("AIzaSy"), "{text}");
    let metrics = client.get(format!("{}/metrics", gateway.url)).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains(ODD_KEY), "metrics");
    gateway.stop().await;
    mock.shutdown().await;
}

/// Waits until the mock has received `n` calls (a bound for a slow
/// machine, not a timing assertion).
async fn until_hits(mock: &MockUpstream, n: u64) {
    let started = std::time::Instant::now();
    while mock.total_hits() < n {
        assert!(started.elapsed() < Duration::from_secs(10), "the mock got {} calls, not {n}", mock.total_hits());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn beyond_max_in_flight_the_gateway_sheds_load_with_503_and_a_stream_holds_its_slot_to_its_end() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("m", Behavior { latency: Duration::from_millis(1_500), ..Behavior::default() });
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&mock, &dir, &model("m", 8_192, &[]));
    config.server.max_in_flight = 2;
    // Room for the slow answers and streams below (the file's 1.5 s would cut them).
    config.providers[0].request_timeout_ms = 20_000;
    let gateway = Running::start(&config, env).await;
    let client = reqwest::Client::new();
    let completions = format!("{}/v1/chat/completions", gateway.url);
    let slow = || {
        let (client, url) = (client.clone(), completions.clone());
        tokio::spawn(async move { client.post(url).json(&chat("m", "hi")).send().await.unwrap().status() })
    };
    let (first, second) = (slow(), slow());
    until_hits(&mock, 2).await;
    let shed = client.post(&completions).json(&chat("m", "hi")).send().await.unwrap();
    assert_eq!(shed.status(), 503);
    assert_eq!(header(&shed, "retry-after"), "1");
    assert_eq!(shed.json::<Value>().await.unwrap()["error"]["code"], "overloaded");
    assert_eq!(mock.total_hits(), 2, "the shed request reached no upstream");
    // Health and metrics are never shed.
    assert_eq!(client.get(format!("{}/health/live", gateway.url)).send().await.unwrap().status(), 200);
    assert_eq!(client.get(format!("{}/metrics", gateway.url)).send().await.unwrap().status(), 200);
    assert_eq!((first.await.unwrap().as_u16(), second.await.unwrap().as_u16()), (200, 200));
    assert_eq!(client.post(&completions).json(&chat("m", "hi")).send().await.unwrap().status(), 200, "slots back");

    // A stream keeps its slot until it ends, not until its headers are sent.
    mock.set("m", Behavior { chunk_interval: Duration::from_millis(300), chunks: 5, ..Behavior::default() });
    let mut body = chat("m", "hi");
    body["stream"] = json!(true);
    let streams: Vec<reqwest::Response> =
        futures_util::future::join_all((0..2).map(|_| client.post(&completions).json(&body).send()))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    assert!(streams.iter().all(|s| s.status() == 200));
    assert_eq!(client.post(&completions).json(&chat("m", "hi")).send().await.unwrap().status(), 503);
    for stream in streams {
        let text = stream.text().await.unwrap();
        assert!(text.contains("[DONE]"), "{text}");
    }
    let started = std::time::Instant::now();
    loop {
        let status = client.post(&completions).json(&chat("m", "hi")).send().await.unwrap().status();
        if status == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the streams' slots never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Streams whose clients leave mid-way give their slots back too.
    let left: Vec<reqwest::Response> =
        futures_util::future::join_all((0..2).map(|_| client.post(&completions).json(&body).send()))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    assert_eq!(client.post(&completions).json(&chat("m", "hi")).send().await.unwrap().status(), 503);
    drop(left);
    let started = std::time::Instant::now();
    while client.post(&completions).json(&chat("m", "hi")).send().await.unwrap().status() != 200 {
        assert!(started.elapsed() < Duration::from_secs(10), "the abandoned streams' slots never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test]
async fn an_oversized_answer_or_event_fails_that_attempt_and_falls_back_never_buffered_whole() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let models = model("big", 8_192, &["backup"]) + &model("backup", 128_000, &[]);
    let mut config = config(&mock, &dir, &models);
    config.providers[0].max_upstream_body_bytes = 64 * 1024;
    let gateway = Running::start(&config, env).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", gateway.url);
    // A completion body over the provider's bound (1 MiB against 64 KiB).
    mock.fail_next("big", Fault::Huge(1 << 20), 1);
    let response = post(&client, &url, None, &chat("big", "hello")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-modelfleet-model"), "backup");
    assert_eq!(header(&response, "x-modelfleet-attempts"), "2");
    // A stream whose first event is over 1 MiB.
    mock.fail_next("big", Fault::Huge(3 << 20), 1);
    let mut streamed = chat("big", "hello");
    streamed["stream"] = json!(true);
    let response = post(&client, &url, None, &streamed).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-modelfleet-model"), "backup");
    assert!(response.text().await.unwrap().contains("[DONE]"));
    assert_eq!(mock.hits("big"), 2);
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test]
async fn an_upstream_redirect_is_not_followed_and_the_request_falls_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = MockUpstream::start().await.unwrap();
    // Where the redirect points: counts the connections it gets.
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere_addr = elsewhere.local_addr().unwrap();
    let reached = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = Arc::clone(&reached);
    let collector = tokio::spawn(async move {
        while let Ok((_socket, _)) = elsewhere.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    // A provider that answers every request with a 307 to `elsewhere`.
    let redirector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirector_addr = redirector.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Ok((mut socket, _)) = redirector.accept().await {
            let mut request = vec![0; 64 * 1024];
            let _ = socket.read(&mut request).await;
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{elsewhere_addr}/v1/chat/completions\r\n\
                 content-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let models = model("m", 8_192, &["backup"]) + &model("backup", 128_000, &[]);
    let mut config = config(&mock, &dir, &models);
    let mut redirecting = config.providers[0].clone();
    redirecting.name = "redirecting".into();
    redirecting.base_url = Some(format!("http://{redirector_addr}/v1"));
    config.providers.push(redirecting);
    config.models.iter_mut().filter(|m| m.id == "m").for_each(|m| m.provider = "redirecting".into());
    let gateway = Running::start(&config, env).await;
    let client = reqwest::Client::new();
    let response = post(&client, &format!("{}/v1/chat/completions", gateway.url), None, &chat("m", "hi")).await;
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["x-modelfleet-model"], "backup");
    assert_eq!(reached.load(std::sync::atomic::Ordering::Relaxed), 0, "the redirect was followed");
    gateway.stop().await;
    server.abort();
    collector.abort();
    mock.shutdown().await;
}

/// A raw connection to the gateway, for clients no HTTP library would be.
async fn raw(url: &str) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(url.trim_start_matches("http://")).await.unwrap()
}

/// Reads until the peer closes (`Ok(bytes read)`) or `bound` passes (`Err`).
async fn read_to_close(stream: &mut tokio::net::TcpStream, bound: Duration) -> Result<Vec<u8>, Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return Err(got),
        }
    }
}

async fn gauge(client: &reqwest::Client, url: &str, name: &str) -> f64 {
    let metrics: Value = client.get(format!("{url}/v1/metrics")).send().await.unwrap().json().await.unwrap();
    metrics["gauges"][name].as_f64().unwrap_or_else(|| panic!("no {name} in {metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_silent_clients_are_disconnected_and_cannot_take_every_connection() {
    use tokio::io::AsyncWriteExt;
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&mock, &dir, &model("m", 8_192, &[]));
    config.server.header_read_timeout_ms = 300;
    config.server.idle_timeout_ms = 600;
    config.server.body_read_timeout_ms = 300;
    let gateway = Running::start(&config, env).await;
    // A new connection per call: a pooled one may meet the idle limit below
    // just as it is reused (a race every keep-alive client handles by retrying).
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let bound = Duration::from_secs(20);

    // Half a request head: the connection is closed, with nothing sent back.
    let mut half = raw(&gateway.url).await;
    half.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
    assert_eq!(read_to_close(&mut half, bound).await, Ok(Vec::new()), "a half-sent head held its connection");
    // A connection that never says anything is closed too.
    let mut silent = raw(&gateway.url).await;
    assert_eq!(read_to_close(&mut silent, bound).await, Ok(Vec::new()));
    assert!(gauge(&client, &gateway.url, "modelfleet_gateway_header_timeouts_total").await >= 2.0);

    // A kept-alive connection is served, then closed once idle.
    let mut idle = raw(&gateway.url).await;
    idle.write_all(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let answer = read_to_close(&mut idle, bound).await.expect("an idle keep-alive connection stayed open");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
    assert!(gauge(&client, &gateway.url, "modelfleet_gateway_idle_closed_total").await >= 1.0);

    // A body that trickles: 408, naming the setting.
    let mut trickle = raw(&gateway.url).await;
    trickle
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"mo",
        )
        .await
        .unwrap();
    let answer = read_to_close(&mut trickle, bound).await.expect("a trickled body held its connection");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("server.body_read_timeout_ms"), "{answer}");
    assert_eq!(mock.total_hits(), 0);
    gateway.stop().await;

    // At most max_connections: one more is closed at once; served again once one leaves.
    let mut config = config.clone();
    config.server.header_read_timeout_ms = 60_000;
    config.server.max_connections = 2;
    let metrics_port =
        modelfleet::config::find_free_port(std::net::IpAddr::from([127, 0, 0, 1]), 20_000..=40_000).unwrap();
    config.metrics.port = Some(metrics_port);
    let gateway = Running::start(&config, env).await;
    let (first, _second) = (raw(&gateway.url).await, raw(&gateway.url).await);
    let mut third = raw(&gateway.url).await;
    assert_eq!(read_to_close(&mut third, bound).await, Ok(Vec::new()), "a third connection was kept");
    // The API port full, the scrape port still answers: it has slots of its own.
    let scraped = client.get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().await.unwrap();
    assert_eq!(scraped.status(), 200, "a full API port blinded the scrape port");
    drop(first);
    let started = std::time::Instant::now();
    let fresh = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    // One request, on the freed slot: a second one right after could find
    // the slot of the first not yet given back (the server frees it when
    // it sees the close) and be refused, as it should.
    let metrics: Value = loop {
        if let Ok(response) = fresh.get(format!("{}/v1/metrics", gateway.url)).send().await {
            assert_eq!(response.status(), 200);
            break response.json().await.unwrap();
        }
        assert!(started.elapsed() < bound, "a freed connection slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let refused = metrics["gauges"]["modelfleet_gateway_connections_refused_total"].as_f64();
    assert!(refused >= Some(1.0), "{metrics}");
    drop(fresh);
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_gets_504_at_the_whole_request_limit() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("m", Behavior { latency: Duration::from_secs(3), ..Behavior::default() });
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&mock, &dir, &model("m", 8_192, &[]));
    config.providers[0].request_timeout_ms = 20_000;
    config.server.request_timeout_ms = 300;
    let gateway = Running::start(&config, env).await;
    let client = reqwest::Client::new();
    let response = post(&client, &format!("{}/v1/chat/completions", gateway.url), None, &chat("m", "hi")).await;
    assert_eq!(response.status(), 504);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("server.request_timeout_ms"), "{body}");
    gateway.stop().await;
    // The call the provider bills ran to its end and was charged all the same.
    let store =
        modelfleet::store::Store::open(dir.path().join("fleet.db"), modelfleet::store::StoreConfig::default()).unwrap();
    let usage = store.usage().unwrap();
    assert!(
        usage.iter().any(|u| u.model == "m" && u.cost > Money::ZERO),
        "the abandoned call was not charged: {usage:?}"
    );
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_stream_is_dropped_and_charged() {
    use tokio::io::AsyncWriteExt;
    let mock = MockUpstream::start().await.unwrap();
    // An answer far larger than every buffer between the gateway and a client.
    mock.set(
        "m",
        Behavior { chunks: 200_000, completion_tokens: 200_000, chunk_interval: Duration::ZERO, ..Behavior::default() },
    );
    let dir = tempfile::tempdir().unwrap();
    // A window wide enough that the answer stays within the output it was held to.
    let mut config = config(&mock, &dir, &model("m", 1_000_000, &[]));
    config.server.stream_send_timeout_ms = 300;
    // One slot: the stalled stream must give it back for anyone to be served.
    config.server.max_in_flight = 1;
    let gateway = Running::start(&config, env).await;
    let client = reqwest::Client::new();
    let body = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let mut stalled = raw(&gateway.url).await;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stalled.write_all(head.as_bytes()).await.unwrap();
    // The client reads nothing; the gateway gives up on it and settles.
    let started = std::time::Instant::now();
    while gauge(&client, &gateway.url, "modelfleet_gateway_client_disconnects_total").await < 1.0 {
        if started.elapsed() > Duration::from_secs(30) {
            let metrics = client.get(format!("{}/v1/metrics", gateway.url)).send().await.unwrap().text().await.unwrap();
            panic!("a client that stopped reading held its stream: {metrics}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gauge(&client, &gateway.url, "modelfleet_gateway_streams_open").await < 0.5, "the stream is still open");
    assert!(gauge(&client, &gateway.url, "modelfleet_gateway_stream_failures_total").await < 0.5, "counted as failed");
    gateway.fleet.store().flush_async().await.unwrap();
    let usage = gateway.fleet.store().usage().unwrap();
    assert!(usage.iter().any(|u| u.model == "m" && u.cost > Money::ZERO), "the stream was not charged: {usage:?}");
    // Its connection is closed, though the client never read (what was
    // buffered, then the end), and its slot is free: the next request is
    // served, not shed.
    while gauge(&client, &gateway.url, "modelfleet_gateway_write_stalls_total").await < 1.0 {
        assert!(started.elapsed() < Duration::from_mins(1), "the stalled client's connection stayed open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    read_to_close(&mut stalled, Duration::from_secs(30)).await.expect("the stalled client's connection stayed open");
    mock.set("m", Behavior::default());
    let started = std::time::Instant::now();
    while post(&client, &format!("{}/v1/chat/completions", gateway.url), None, &chat("m", "next")).await.status() != 200
    {
        assert!(started.elapsed() < Duration::from_secs(30), "the stalled stream kept its slot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_says_not_ready_first_then_ends_a_stalled_stream_at_the_deadline_and_charges_it() {
    let mock = MockUpstream::start().await.unwrap();
    // A stream that would run for minutes.
    mock.set(
        "m",
        Behavior {
            chunks: 10_000,
            completion_tokens: 10_000,
            chunk_interval: Duration::from_millis(20),
            ..Behavior::default()
        },
    );
    mock.set("quick", Behavior::default());
    // An answer far larger than every buffer between the gateway and a
    // client that reads nothing of it (the stalled stream).
    mock.set(
        "big",
        Behavior { chunks: 200_000, completion_tokens: 200_000, chunk_interval: Duration::ZERO, ..Behavior::default() },
    );
    let dir = tempfile::tempdir().unwrap();
    let models = model("m", 8_192, &[]) + &model("quick", 8_192, &[]) + &model("big", 1_000_000, &[]);
    let mut config = config(&mock, &dir, &models);
    // A grace long enough to be seen on a loaded machine (the test waits
    // on it anyway).
    config.server.drain_grace_ms = 5_000;
    config.server.drain_timeout_ms = 300;
    // Only the drain deadline can end the stalled stream within the test's bounds.
    config.server.stream_send_timeout_ms = 600_000;
    // The mock takes a while to start an answer that large on a loaded machine.
    config.providers[0].first_token_timeout_ms = 60_000;
    config.retry.deadline = Some(Duration::from_mins(1));
    let gateway = Running::start(&config, env).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", gateway.url);
    let mut request = chat("m", "go on");
    request["stream"] = json!(true);
    let response = post(&client, &url, None, &request).await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    assert!(stream.next().await.unwrap().unwrap().starts_with(b"data: "));
    // A client that stopped reading: it must not hold the shutdown.
    let mut stalled = raw(&gateway.url).await;
    {
        use tokio::io::AsyncWriteExt;
        let body = json!({"model": "big", "stream": true, "messages": [{"role": "user", "content": "hi"}]}).to_string();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stalled.write_all(head.as_bytes()).await.unwrap();
    }
    let started = std::time::Instant::now();
    while gauge(&client, &gateway.url, "modelfleet_gateway_streams_open").await < 1.5 {
        if started.elapsed() > Duration::from_secs(30) {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 4000];
            let n = stalled.read(&mut buf).await.unwrap();
            panic!("the stalled stream never opened: {}", String::from_utf8_lossy(&buf[..n]));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let fleet = Arc::clone(&gateway.fleet);
    let gateway_url = gateway.url.clone();
    let stopped = tokio::spawn(gateway.stop());
    // During the grace: not ready, and still serving (a load balancer moves away).
    let started = std::time::Instant::now();
    loop {
        let ready = client.get(format!("{gateway_url}/health/ready")).send().await.unwrap();
        if ready.status() == 503 {
            assert!(ready.text().await.unwrap().contains("shutting down"));
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "readiness never said 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // On a new connection (a fresh client has no pooled one): the listener
    // still accepts during the grace.
    let served = post(&reqwest::Client::new(), &url, None, &chat("quick", "still there?")).await;
    assert_eq!(served.status(), 200, "a request during the grace was refused");

    // The deadline ends the stream with an error event; the gateway exits cleanly.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(piece)) = stream.next().await {
            rest.extend_from_slice(&piece);
        }
    });
    read.await.expect("the stream outlived the drain deadline");
    let data = events(&String::from_utf8_lossy(&rest));
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap_or_else(|e| panic!("{e}: {data:?}"));
    assert_eq!(last["error"]["code"], "shutting_down", "{data:?}");
    // The stalled reader did not hold the shutdown (it held it for good
    // before the drain had a deadline).
    tokio::time::timeout(Duration::from_secs(30), stopped).await.expect("serve did not return").unwrap();
    drop(stalled);
    // Charged, and flushed: every request is in the reopened file.
    assert_eq!(fleet.monitor().model_stats("m").totals.failures, 0, "the shutdown is not the model's failure");
    drop(fleet);
    let store =
        modelfleet::store::Store::open(dir.path().join("fleet.db"), modelfleet::store::StoreConfig::default()).unwrap();
    let usage = store.usage().unwrap();
    let of = |id: &str| usage.iter().find(|u| u.model == id).map(|u| (u.requests, u.cost > Money::ZERO));
    assert_eq!((of("m"), of("quick"), of("big")), (Some((1, true)), Some((1, true)), Some((1, true))), "{usage:?}");
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_has_first_event_and_silence_limits_but_no_total_limit() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let models = model("late", 8_192, &["steady"]) + &model("steady", 8_192, &[]) + &model("stalls", 8_192, &[]);
    let mut config = config(&mock, &dir, &models);
    config.providers[0].request_timeout_ms = 300;
    config.providers[0].first_token_timeout_ms = 1_000;
    config.providers[0].stream_idle_timeout_ms = 1_000;
    let gateway = Running::start(&config, env).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", gateway.url);
    let stream = |model: &str| {
        let mut request = chat(model, "go");
        request["stream"] = json!(true);
        request
    };

    // Events every 100 ms for 2 s, far past request_timeout_ms: a long answer that keeps coming is whole.
    mock.set("steady", Behavior { chunks: 20, chunk_interval: Duration::from_millis(100), ..Behavior::default() });
    let response = post(&client, &url, None, &stream("steady")).await;
    let data = events(&response.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");

    // No first event in time: a timeout of that attempt, which falls back.
    mock.set("late", Behavior { latency: Duration::from_secs(5), ..Behavior::default() });
    mock.set("steady", Behavior::default());
    let response = post(&client, &url, None, &stream("late")).await;
    assert_eq!(header(&response, "x-modelfleet-model"), "steady");
    assert_eq!(header(&response, "x-modelfleet-fallback"), "true");
    assert!(response.text().await.unwrap().ends_with("data: [DONE]\n\n"));

    // Silent too long between events: the stream ends with an error event, the model's failure.
    mock.set("stalls", Behavior { chunks: 3, chunk_interval: Duration::from_secs(5), ..Behavior::default() });
    let response = post(&client, &url, None, &stream("stalls")).await;
    let data = events(&response.text().await.unwrap());
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap_or_else(|e| panic!("{e}: {data:?}"));
    assert_eq!(last["error"]["code"], "stream_interrupted", "{data:?}");
    assert!(last["error"]["message"].as_str().unwrap().contains("stream_idle_timeout_ms"), "{last}");
    assert_eq!(gateway.fleet.monitor().model_stats("stalls").totals.failures, 1);

    // A provider that refuses stream_options gets none unless its client sent them.
    gateway.stop().await;
    let mut config = config.clone();
    config.providers[0].include_usage = false;
    let gateway = Running::start(&config, env).await;
    let response = post(&client, &format!("{}/v1/chat/completions", gateway.url), None, &stream("steady")).await;
    assert!(response.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    assert_eq!(mock.last_request("steady").unwrap().get("stream_options"), None);
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_keeps_real_answers_only_obeys_no_cache_and_forgets_a_changed_model() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let body = model("m", 8_192, &[])
        + "\n[cache]\nenabled = true\nttl_secs = 60\n\n[[providers]]\nname = \"sim\"\nkind = \"simulated\"\n\
           \n[[models]]\nid = \"s\"\nprovider = \"sim\"\ncontext_window = 8192\nquality = 0.5\n";
    let gateway = Running::start(&config(&mock, &dir, &body), env).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", gateway.url);
    let cached = |response: &reqwest::Response| header(response, "x-modelfleet-cache").to_owned();
    let request = chat("m", "cache me, or not");

    // `cache-control: no-cache`: neither read nor filled.
    let response = client.post(&url).header("cache-control", "no-cache").json(&request).send().await.unwrap();
    assert_eq!((response.status().as_u16(), cached(&response)), (200, String::new()));
    gateway.fleet.store().flush_async().await.unwrap();
    assert_eq!(cached(&post(&client, &url, None, &request).await), "miss", "the no-cache answer was kept");
    gateway.fleet.store().flush_async().await.unwrap();
    assert_eq!(cached(&post(&client, &url, None, &request).await), "hit");
    // `modelfleet.cache = false`: bypassed, though an entry is there.
    let mut opted_out = request.clone();
    opted_out["modelfleet"] = json!({"cache": false});
    let hits = mock.hits("m");
    let response = post(&client, &url, None, &opted_out).await;
    assert_eq!((response.status().as_u16(), cached(&response)), (200, String::new()));
    assert_eq!(mock.hits("m"), hits + 1, "modelfleet.cache = false was served from the cache");

    // A changed spec: the model's answers are forgotten.
    let admin = format!("{}/v1/admin/models/m", gateway.url);
    let mut spec: Value = client.get(&admin).send().await.unwrap().json().await.unwrap();
    spec["quality"] = json!(0.9);
    assert_eq!(client.put(&admin).json(&spec).send().await.unwrap().status(), 200);
    gateway.fleet.store().flush_async().await.unwrap();
    assert_eq!(cached(&post(&client, &url, None, &request).await), "miss", "a changed model's answer was served");

    // An answer made while its model's spec changes is not kept either.
    mock.set("m", Behavior { latency: Duration::from_millis(500), ..Behavior::default() });
    let racing = chat("m", "answered across a change");
    let hits = mock.hits("m");
    let call = tokio::spawn({
        let (client, url, racing) = (client.clone(), url.clone(), racing.clone());
        async move { client.post(&url).json(&racing).send().await.unwrap() }
    });
    until_hits(&mock, hits + 1).await;
    spec["quality"] = json!(0.8);
    assert_eq!(client.put(&admin).json(&spec).send().await.unwrap().status(), 200);
    assert_eq!(cached(&call.await.unwrap()), "miss");
    gateway.fleet.store().flush_async().await.unwrap();
    mock.set("m", Behavior::default());
    assert_eq!(cached(&post(&client, &url, None, &racing).await), "miss", "an answer from before the change was kept");

    // A simulated answer is a stand-in: never kept.
    let simulated = chat("s", "simulate me");
    assert_eq!(cached(&post(&client, &url, None, &simulated).await), "miss");
    gateway.fleet.store().flush_async().await.unwrap();
    assert_eq!(cached(&post(&client, &url, None, &simulated).await), "miss", "a simulated answer was cached");
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_cache_entry_is_a_miss_and_is_counted_in_the_metrics() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let body = model("m", 8_192, &[]) + "\n[cache]\nenabled = true\nttl_secs = 600\n";
    let config = config(&mock, &dir, &body);
    let gateway = Running::start(&config, env).await;
    let client = reqwest::Client::new();
    let request = chat("m", "keep me, then rot");
    let url = format!("{}/v1/chat/completions", gateway.url);
    assert_eq!(header(&post(&client, &url, None, &request).await, "x-modelfleet-cache"), "miss");
    gateway.stop().await;
    // Stopped: the gateway folded the WAL into the file. Rot one byte of the stored answer.
    let db = dir.path().join("fleet.db");
    let mut bytes = std::fs::read(&db).unwrap();
    let marker = b"mock answer from m";
    let at = bytes.windows(marker.len()).position(|w| w == marker).expect("the cached answer is in the file");
    bytes[at] = b'M';
    std::fs::write(&db, &bytes).unwrap();

    let gateway = Running::start(&config, env).await;
    let url = format!("{}/v1/chat/completions", gateway.url);
    let response = post(&client, &url, None, &request).await;
    assert_eq!((response.status().as_u16(), header(&response, "x-modelfleet-cache")), (200, "miss"));
    assert!(
        gauge(&client, &gateway.url, "modelfleet_cache_corrupted_total").await >= 1.0,
        "the rotten entry went uncounted"
    );
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_model_is_listed_by_id_and_an_unknown_or_disabled_one_is_a_404() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let body = model("m", 8_192, &[]) + &model("org/slashed", 8_192, &[]) + &model("off", 8_192, &[]);
    let gateway = Running::start(&config(&mock, &dir, &body), env).await;
    gateway
        .fleet
        .catalog()
        .update("off", modelfleet::registry::ModelUpdate { enabled: Some(false), ..Default::default() })
        .unwrap();
    let client = reqwest::Client::new();
    let get = |id: &str| client.get(format!("{}/v1/models/{id}", gateway.url)).send();
    for (id, owner) in [("m", "mock"), ("org/slashed", "mock"), ("auto", "modelfleet")] {
        let response = get(id).await.unwrap();
        assert_eq!(response.status(), 200, "{id}");
        let object: Value = response.json().await.unwrap();
        assert_eq!(
            (&object["id"], &object["object"], &object["owned_by"]),
            (&json!(id), &json!("model"), &json!(owner))
        );
    }
    // The list and the single lookups agree.
    let list: Value = client.get(format!("{}/v1/models", gateway.url)).send().await.unwrap().json().await.unwrap();
    let m = list["data"].as_array().unwrap().iter().find(|o| o["id"] == "m").unwrap().clone();
    assert_eq!(get("m").await.unwrap().json::<Value>().await.unwrap(), m);
    for id in ["nope", "off"] {
        let response = get(id).await.unwrap();
        assert_eq!(response.status(), 404, "{id}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "model_not_found", "{error}");
    }
    let response = client.post(format!("{}/v1/models/m", gateway.url)).send().await.unwrap();
    assert_eq!((response.status().as_u16(), header(&response, "allow")), (405, "GET, HEAD"));
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trace_context_goes_upstream_only_when_well_formed() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Running::start(&config(&mock, &dir, &model("m", 8_192, &[])), env).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", gateway.url);
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let send = |traceparent: &'static str, tracestate: Option<&'static str>| {
        let mut request = client.post(&url).json(&chat("m", "trace me")).header("traceparent", traceparent);
        if let Some(state) = tracestate {
            request = request.header("tracestate", state);
        }
        request.send()
    };
    let response = send(parent, Some("vendor=abc")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers().get("x-modelfleet-simulated"), None, "a real upstream answered");
    let upstream = mock.last_headers("m").unwrap();
    let got = |name: &str| upstream.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!((got("traceparent"), got("tracestate")), (Some(parent.to_owned()), Some("vendor=abc".to_owned())));
    // A malformed one (all-zero trace id) is dropped, and its tracestate with it.
    let zeros = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    assert_eq!(send(zeros, Some("vendor=abc")).await.unwrap().status(), 200);
    let upstream = mock.last_headers("m").unwrap();
    assert_eq!((upstream.get("traceparent"), upstream.get("tracestate")), (None, None));
    gateway.stop().await;
    mock.shutdown().await;
}
