//! The memory guard end to end: a real gateway on 127.0.0.1 (port 0) whose
//! configured limit, 1 MiB, this test process's resident memory is far
//! above. It refuses new work with 503 `memory_pressure` and says why,
//! while health, metrics, the catalog and the admin API stay served.
//! Recovery below the mark is the unit tests' (`memguard.rs`), with
//! made-up readings.

use std::time::Duration;

use modelfleet::config::Config;
use modelfleet_mock_upstream::MockUpstream;
use serde_json::{Value, json};

use crate::support::{Running, validated};

const MOCK_KEY: &str = "sk-mock-upstream-secret";

fn env(var: &str) -> Option<String> {
    (var == "MOCK_KEY").then(|| MOCK_KEY.to_owned())
}

/// One model on the mock provider, no keys (loopback, no auth), `server`
/// lines added to `[server]`.
fn config(mock: &MockUpstream, dir: &tempfile::TempDir, server: &str) -> Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\ndrain_grace_ms = 0\n{server}\n[store]\npath = \"{}\"\nbatch_wait_ms = \
         5\n\n[[providers]]\nname = \"mock\"\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"MOCK_KEY\"\n\n\
         [[models]]\nid = \"m\"\nprovider = \"mock\"\ninput_price_per_mtok = \"0.50\"\noutput_price_per_mtok = \
         \"1.50\"\ncontext_window = 8192\nquality = 0.7\nlanguages = [\"en\"]\ncategories = [\"general\"]\n",
        dir.path().join("fleet.db").display(),
        mock.base_url(),
    );
    validated(&text, dir.path(), env)
}

/// The value of the unlabelled series `metric` in Prometheus `text`.
fn metric(text: &str, metric: &str) -> Option<f64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    scrape.samples.iter().find(|s| s.metric == metric).map(|s| match s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        _ => f64::NAN,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_its_memory_limit_the_gateway_refuses_new_work_and_reports_degraded() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Running::start(&config(&mock, &dir, "memory_limit_bytes = 1048576"), env).await;
    let url = gateway.url.clone();
    let client = reqwest::Client::new();
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hello"}]});
    let complete = || client.post(format!("{url}/v1/chat/completions")).json(&chat).send();

    // The first sample is taken as the gateway starts: wait for readiness to
    // say so (no completion is sent before: it could beat the sample).
    let waited = std::time::Instant::now();
    loop {
        let ready: Value = client.get(format!("{url}/health/ready")).send().await.unwrap().json().await.unwrap();
        if ready["overall"] == "degraded" || waited.elapsed() > Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = loop {
        let response = complete().await.unwrap();
        if response.status() == 503 || waited.elapsed() > Duration::from_secs(20) {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("5"));
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "memory_pressure", "{error}");
    assert_eq!(error["error"]["type"], "memory_pressure", "{error}");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("1.0 MiB limit") && message.contains("memory_high_percent"), "{message}");
    let explain = client.post(format!("{url}/v1/route/explain")).json(&json!({})).send().await.unwrap();
    assert_eq!(explain.status(), 503, "explanations are work too");
    assert_eq!(mock.total_hits(), 0, "no refused request reached a provider");

    // What says how the gateway is, and what an operator needs, is served.
    let get = |path: &str| client.get(format!("{url}{path}")).send();
    let live = get("/health/live").await.unwrap();
    assert_eq!(live.status(), 200);
    assert_eq!(live.text().await.unwrap(), "ok");
    assert_eq!(get("/v1/models").await.unwrap().status(), 200);
    assert_eq!(get("/v1/admin/models").await.unwrap().status(), 200);
    let ready = get("/health/ready").await.unwrap();
    assert_eq!(ready.status(), 200, "degraded, as a degraded service is: still ready");
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["overall"], "degraded", "{ready}");
    assert!(ready["reason"].as_str().is_some_and(|r| r.starts_with("memory pressure")), "{ready}");
    assert_eq!(ready["memory"]["pressure"], true, "{ready}");
    assert_eq!(ready["memory"]["limit_bytes"], 1_048_576, "{ready}");
    assert_eq!(ready["memory"]["limit_source"], "configured", "{ready}");
    let scraped = get("/metrics").await.unwrap();
    assert_eq!(scraped.status(), 200);
    let scraped = scraped.text().await.unwrap();
    assert_eq!(metric(&scraped, "modelfleet_gateway_memory_pressure"), Some(1.0), "{scraped}");
    assert_eq!(metric(&scraped, "modelfleet_gateway_memory_limit_bytes"), Some(1_048_576.0), "{scraped}");
    assert!(metric(&scraped, "modelfleet_gateway_memory_usage_bytes").is_some_and(|u| u > 1_048_576.0), "{scraped}");
    assert_eq!(metric(&scraped, "modelfleet_gateway_memory_cache_drops_total"), Some(1.0), "{scraped}");
    assert!(metric(&scraped, "modelfleet_gateway_memory_refused_total").is_some_and(|n| n >= 2.0), "{scraped}");

    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_its_memory_limit_the_gateway_serves_and_reports_no_pressure() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // 1 PiB: no test process comes near it.
    let gateway = Running::start(&config(&mock, &dir, "memory_limit_bytes = 1125899906842624"), env).await;
    let url = gateway.url.clone();
    let client = reqwest::Client::new();
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hello"}]});
    let answer = client.post(format!("{url}/v1/chat/completions")).json(&chat).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    // Once the first sample is in, readiness shows it and no pressure.
    let waited = std::time::Instant::now();
    let ready = loop {
        let ready: Value = client.get(format!("{url}/health/ready")).send().await.unwrap().json().await.unwrap();
        if !ready["memory"]["usage_bytes"].is_null() || waited.elapsed() > Duration::from_secs(20) {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(ready["memory"]["pressure"], false, "{ready}");
    assert!(ready["memory"]["usage_bytes"].as_u64().is_some_and(|u| u > 0), "{ready}");
    assert!(!ready["reason"].as_str().is_some_and(|r| r.starts_with("memory")), "{ready}");
    let scraped = client.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&scraped, "modelfleet_gateway_memory_pressure"), Some(0.0), "{scraped}");

    gateway.stop().await;
    mock.shutdown().await;
}
