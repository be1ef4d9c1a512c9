//! Failure handling end to end: the real gateway on 127.0.0.1 (port 0)
//! against the mock upstream, called with a real HTTP client. Each test
//! pins one guarantee of the fallback layer as a user meets it: a shared
//! outage, a probe whose client left, fallbacks that keep the request's
//! promises, a hanging model, a stream broken mid-way, hedging, rate-limit
//! headroom and capabilities read from the body.
//!
//! They assert the order of events and the states the gateway reports
//! (`/metrics`, `/v1/route/explain`, the tracker and the monitor), never
//! timings. Where the gateway settles in the background, they poll with a
//! generous bound ([`until`]); cooldowns a test relies on last far longer
//! than the test.

use std::{future::Future, sync::Arc, time::Duration};

use futures_util::StreamExt;
use modelfleet::{
    Fleet, Request,
    budget::{Period, Scope},
    config::Config,
    fallback::CircuitState,
    registry::Money,
};
use modelfleet_gateway::Gateway;
use modelfleet_mock_upstream::{Behavior, Fault, MockUpstream, RateLimits};
use serde_json::{Value, json};
use tokio::sync::oneshot;

const MOCK_KEY: &str = "sk-mock-upstream-secret";

fn env(var: &str) -> Option<String> {
    (var == "MOCK_KEY").then(|| MOCK_KEY.to_owned())
}

/// An English general model with an 8k window: the usual fields of a
/// `[[models]]` entry besides its id, provider and prices.
const EN_GENERAL: &str = "context_window = 8192\nquality = 0.7\nlanguages = [\"en\"]\ncategories = [\"general\"]";

/// A `[[models]]` entry on the mock provider (the upstream name is the id),
/// priced $0.50/$1.50 per million tokens, with `fields` for the rest.
fn model(id: &str, fields: &str) -> String {
    format!(
        "\n[[models]]\nid = \"{id}\"\nprovider = \"mock\"\ninput_price_per_mtok = \"0.50\"\noutput_price_per_mtok = \
         \"1.50\"\n{fields}\n"
    )
}

/// The `[retry]` table most tests use: one retry, short backoffs, 5 s in all.
const RETRY: &str = "max_attempts = 2\ninitial_backoff_ms = 1\nmax_backoff_ms = 5\ndeadline_ms = 5000\n";

/// What a test sets besides its models and resilience tables: the
/// provider's whole-request timeout and the `[retry]` table.
struct Limits<'a> {
    request_timeout_ms: u64,
    retry: &'a str,
}

const LIMITS: Limits<'static> = Limits { request_timeout_ms: 1_500, retry: RETRY };

fn config(mock: &MockUpstream, dir: &tempfile::TempDir, body: &str, limits: &Limits<'_>) -> Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\nmax_body_bytes = 65536\n{body}\n[store]\npath = \"{}\"\nbatch_wait_ms = \
         5\n\n[[providers]]\nname = \"mock\"\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \
         \"MOCK_KEY\"\nconnect_timeout_ms = 500\nrequest_timeout_ms = {}\n\n[retry]\n{}",
        dir.path().join("fleet.db").display(),
        mock.base_url(),
        limits.request_timeout_ms,
        limits.retry,
    );
    crate::support::validated(&text, dir.path(), env)
}

/// A running gateway: its base URL, its fleet, and how to stop it.
struct Running {
    url: String,
    fleet: Arc<Fleet>,
    /// Taken before the gateway (and so the fleet's timer) started.
    started: tokio::time::Instant,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), modelfleet_gateway::GatewayError>>,
}

impl Running {
    async fn start(config: &Config) -> Running {
        let started = tokio::time::Instant::now();
        let gateway = Gateway::bind(config, &env).await.unwrap();
        let url = format!("http://{}", gateway.local_addr());
        let fleet = gateway.fleet();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.serve(async move {
            let _ = stopped.await;
        }));
        Running { url, fleet, started, client: reqwest::Client::new(), stop: Some(stop), task }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }

    /// A time on the tracker's clock no earlier than its own now (its
    /// timer starts inside `Gateway::bind`, after `started`): for reading
    /// counters and ejection starts, which do not depend on it while the
    /// test's long cooldowns run.
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    async fn chat(&self, body: &Value) -> reqwest::Response {
        self.client.post(format!("{}/v1/chat/completions", self.url)).json(body).send().await.unwrap()
    }

    /// `POST /v1/route/explain`: the ranking, the rejections (`text` says
    /// why) and the eligible models out of rotation now (`unavailable`).
    async fn explain(&self, body: &Value) -> Value {
        let response = self.client.post(format!("{}/v1/route/explain", self.url)).json(body).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// One series of `GET /metrics` (Prometheus text), by its one label.
    async fn metric(&self, name: &str, label: (&str, &str)) -> Option<f64> {
        let text = self.client.get(format!("{}/metrics", self.url)).send().await.unwrap().text().await.unwrap();
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        scrape.samples.iter().find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1)).map(|s| {
            match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => panic!("{name} is not a single number"),
            }
        })
    }

    /// Whether `model` is cooling down, per `/metrics` (seconds left in its cooldown).
    async fn cooling_down(&self, model: &str) -> bool {
        self.metric("modelfleet_model_cooldown_remaining_seconds", ("model", model)).await.is_some_and(|s| s > 0.0)
    }

    /// `model`'s circuit per `/metrics`: 0 closed, 1 half-open, 2 open.
    async fn circuit_gauge(&self, model: &str) -> Option<f64> {
        self.metric("modelfleet_model_circuit_state", ("model", model)).await
    }
}

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

fn header<'r>(response: &'r reqwest::Response, name: &str) -> &'r str {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Who served and in how many attempts, per the response headers.
fn served(response: &reqwest::Response) -> (u16, &str, &str) {
    (response.status().as_u16(), header(response, "x-modelfleet-model"), header(response, "x-modelfleet-attempts"))
}

/// The `data` of every SSE event in a body.
fn events(body: &str) -> Vec<String> {
    body.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_owned).collect()
}

/// The models `/v1/route/explain` lists as eligible but out of rotation,
/// with why.
fn unavailable(explained: &Value) -> Vec<(String, String)> {
    explained["unavailable"]
        .as_array()
        .unwrap_or_else(|| panic!("no unavailable list: {explained}"))
        .iter()
        .map(|u| (u["model"].as_str().unwrap().to_owned(), u["why"].as_str().unwrap().to_owned()))
        .collect()
}

/// The ranked model ids of an explanation, best first.
fn ranked(explained: &Value) -> Vec<String> {
    explained["ranked"].as_array().unwrap().iter().map(|r| r["model"].as_str().unwrap().to_owned()).collect()
}

/// Why an explanation rejected `model` (its line of the text), if it did.
fn rejected<'e>(explained: &'e Value, model: &str) -> Option<&'e str> {
    explained["text"].as_str().unwrap().lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix("-")?.trim_start();
        let (id, why) = rest.split_once(" rejected: ")?;
        (id.trim_end() == model).then_some(why)
    })
}

/// Waits until `done` holds, checking every 10 ms: the bound (10 s) is for
/// a slow machine, not a timing assertion. Panics naming `what`.
async fn until<F: Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let started = std::time::Instant::now();
    while !done().await {
        assert!(started.elapsed() < Duration::from_secs(10), "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every call answers 500.
fn failing() -> Behavior {
    Behavior { fault: Some(Fault::ServerError), fault_rate: 1.0, ..Behavior::default() }
}

/// Two models behind one upstream fail until both are ejected; the
/// upstream recovers; the very next request is served at once by the
/// least recently ejected (the panic threshold lets it through) instead of
/// a 503 until the cooldowns run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_shared_outage_the_next_request_is_served_at_once() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Ejections far longer than the test: only the panic threshold can end them.
    let body = model("f1", EN_GENERAL)
        + &model("f2", EN_GENERAL)
        + "\n[cooldown]\nescalating_base_ms = 60000\nescalating_max_ms = 60000\n";
    let gateway = Running::start(&config(&mock, &dir, &body, &LIMITS)).await;
    mock.set("f1", failing());
    mock.set("f2", failing());

    // The outage: requests fail until both models are ejected.
    let mut outage = 0;
    while !(gateway.cooling_down("f1").await && gateway.cooling_down("f2").await) {
        outage += 1;
        assert!(outage <= 10, "10 failing requests did not eject both models");
        let response = gateway.chat(&chat("auto", "during the outage")).await;
        assert_ne!(response.status(), 200, "served during the outage");
    }
    let mut out: Vec<String> = unavailable(&gateway.explain(&json!({"model": "auto"})).await)
        .into_iter()
        .map(|(model, why)| {
            assert!(why.starts_with("cooling down after server_error"), "{model}: {why}");
            model
        })
        .collect();
    out.sort();
    assert_eq!(out, ["f1", "f2"], "both are out of rotation");
    let since = |id: &str| gateway.fleet.tracker().ejected_since(id, gateway.now()).unwrap();
    let (first, second) = if since("f1") <= since("f2") { ("f1", "f2") } else { ("f2", "f1") };

    // The upstream recovers: one attempt, on the least recently ejected, no 503.
    mock.set("f1", Behavior::default());
    mock.set("f2", Behavior::default());
    let hits = (mock.hits(first), mock.hits(second));
    let response = gateway.chat(&chat("auto", "after the outage")).await;
    assert_eq!(served(&response), (200, first, "1"), "{:?}", response.headers());
    assert_eq!((mock.hits(first), mock.hits(second)), (hits.0 + 1, hits.1));
    // Its success ended its ejection; the other stays out until tried.
    assert!(!gateway.cooling_down(first).await);
    assert_eq!(gateway.circuit_gauge(first).await, Some(0.0));
    assert!(gateway.cooling_down(second).await);
    gateway.stop().await;
    mock.shutdown().await;
}

/// A half-open circuit's only probe is a stream whose client leaves
/// before the first event: the probe slot comes back at once (before
/// issue 12 it leaked for good), and the model recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_whose_client_leaves_gives_its_slot_back_and_the_model_recovers() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // One failure opens the circuit for 200 ms; one probe at a time, whose
    // answer is awaited for a minute; escalating cooldowns out of the way.
    let body = model("p", EN_GENERAL)
        + "\n[circuit]\nmin_requests = 1\nopen_ms = 200\nhalf_open_probes = 1\n\
           \n[cooldown]\nescalating_base_ms = 1\nescalating_max_ms = 1\n";
    let no_retry = Limits { retry: "max_attempts = 1\ndeadline_ms = 30000\n", ..LIMITS };
    let gateway = Running::start(&config(&mock, &dir, &body, &no_retry)).await;

    mock.fail_next("p", Fault::ServerError, 1);
    assert_eq!(gateway.chat(&chat("p", "fail once")).await.status(), 502);
    assert_ne!(gateway.fleet.circuit("p"), CircuitState::Closed, "one failure opened the circuit");
    until("the circuit turns half-open", || async { gateway.fleet.circuit("p") == CircuitState::HalfOpen }).await;

    // The probe: a stream the upstream holds; its client gives up mid-call.
    mock.set("p", Behavior { latency: Duration::from_secs(20), ..Behavior::default() });
    let mut request = chat("p", "probe, then leave");
    request["stream"] = json!(true);
    let probe = {
        let (client, url) = (gateway.client.clone(), format!("{}/v1/chat/completions", gateway.url));
        tokio::spawn(async move { client.post(url).json(&request).send().await })
    };
    until("the probe reaches the upstream", || async { mock.hits("p") == 2 }).await;
    let busy = unavailable(&gateway.explain(&json!({"model": "auto"})).await);
    assert!(
        matches!(&busy[..], [(m, why)] if m == "p" && why.contains("probes busy")),
        "the probe holds the slot: {busy:?}"
    );
    probe.abort();
    assert!(probe.await.unwrap_err().is_cancelled());
    until("the dropped probe gives its slot back", || async {
        unavailable(&gateway.explain(&json!({"model": "auto"})).await).is_empty()
    })
    .await;
    assert_eq!(gateway.fleet.circuit("p"), CircuitState::HalfOpen, "a released probe is no answer");

    // The upstream is well again: the next request probes, succeeds, and closes the circuit.
    mock.set("p", Behavior::default());
    let response = gateway.chat(&chat("p", "probe again")).await;
    assert_eq!(served(&response), (200, "p", "1"));
    assert_eq!(gateway.fleet.circuit("p"), CircuitState::Closed);
    assert_eq!(gateway.circuit_gauge("p").await, Some(0.0));
    assert_eq!(mock.hits("p"), 3);
    gateway.stop().await;
    mock.shutdown().await;
}

/// A request naming a model falls back only to models that can do what it
/// does: local to local, the same category and language, a larger window
/// after a context-window error; a named model that cannot take the
/// request is refused saying why, never silently replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_model_falls_back_only_to_models_that_keep_its_promises() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let local = "local = true\nmemory_mb = 1\ncontext_window = 8192\nlanguages = [\"en\"]\ncategories = [\"general\"]";
    let body = [
        model("local-a", &format!("{local}\nquality = 0.6")),
        model("local-b", &format!("{local}\nquality = 0.5")),
        model("cloud", "context_window = 8192\nquality = 0.95\nlanguages = [\"en\"]\ncategories = [\"general\"]"),
        model(
            "general-8k",
            "context_window = 8192\nquality = 0.95\nlanguages = [\"en\", \"fr\", \"es\"]\ncategories = [\"general\"]",
        ),
        model("en-tr", "context_window = 8192\nquality = 0.9\nlanguages = [\"en\"]\ncategories = [\"translation\"]"),
        model("es-a", "context_window = 8192\nquality = 0.6\nlanguages = [\"es\"]\ncategories = [\"translation\"]"),
        model(
            "es-b",
            "context_window = 8192\nquality = 0.5\nlanguages = [\"es\"]\ncategories = [\"translation\"]\n\
             capabilities = [\"streaming\", \"tools\"]",
        ),
        model("fr-code-2k", "context_window = 2048\nquality = 0.7\nlanguages = [\"fr\"]\ncategories = [\"code\"]"),
        model("fr-code-4k", "context_window = 4096\nquality = 0.6\nlanguages = [\"fr\"]\ncategories = [\"code\"]"),
        model("fr-code-200k", "context_window = 200000\nquality = 0.5\nlanguages = [\"fr\"]\ncategories = [\"code\"]"),
    ]
    .concat();
    let gateway = Running::start(&config(&mock, &dir, &body, &LIMITS)).await;
    // By rank alone, the general models and the English translation one come
    // before every fallback below, and the smaller fr/code window before the
    // larger.
    let ranking = ranked(&gateway.explain(&json!({"model": "auto"})).await);
    let place = |id: &str| ranking.iter().position(|m| m == id).unwrap_or_else(|| panic!("{id} unranked: {ranking:?}"));
    for better in ["cloud", "general-8k", "en-tr"] {
        for fallback in ["local-b", "es-b", "fr-code-200k"] {
            assert!(place(better) < place(fallback), "{better} vs {fallback}: {ranking:?}");
        }
    }
    assert!(place("fr-code-2k") < place("fr-code-200k"), "{ranking:?}");

    let cases = [
        ("local-a", Fault::ServerError, "local-b"),
        ("es-a", Fault::RateLimited { retry_after_secs: 30 }, "es-b"),
        ("fr-code-4k", Fault::ContextWindow, "fr-code-200k"),
    ];
    for (named, fault, fallback) in cases {
        mock.fail_next(named, fault, 1);
        let response = gateway.chat(&chat(named, "serve me like the model I named")).await;
        assert_eq!(served(&response), (200, fallback, "2"), "{named}");
        assert_eq!(header(&response, "x-modelfleet-fallback"), "true", "{named}");
        let body: Value = response.json().await.unwrap();
        let content = body["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(content.starts_with(&format!("mock answer from {fallback}")), "{named}: {content}");
        assert_eq!((mock.hits(named), mock.hits(fallback)), (1, 1), "{named}");
    }
    let others = ["cloud", "general-8k", "en-tr", "fr-code-2k"].map(|id| mock.hits(id));
    assert_eq!(others, [0; 4], "a model that does not qualify was tried");

    // A named model that cannot take the request: refused, saying why, nothing called.
    let mut long = chat("fr-code-4k", "a long prompt");
    long["modelfleet"] = json!({"prompt_tokens": 10_000});
    let mut tools = chat("es-a", "call a tool");
    tools["tools"] = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]);
    for (request, why) in [(long, "context window 4096 < 10001 tokens needed"), (tools, "no tools support")] {
        let total = mock.total_hits();
        let response = gateway.chat(&request).await;
        let status = response.status();
        assert_eq!(status, 400, "a request no model can serve as asked is not worth retrying");
        assert_eq!(header(&response, "x-modelfleet-model"), "");
        let body: Value = response.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap_or_else(|| panic!("{body}"));
        let named = request["model"].as_str().unwrap();
        assert!(message.contains(&format!("model \"{named}\" does not meet the requirements")), "{message}");
        assert!(message.contains(why), "{message}");
        assert_eq!(mock.total_hits(), total, "{named}: no upstream call");
    }
    // The same for `auto`: no model can take it, so 400 with the reasons by
    // constraint (a 503 would make SDKs retry a request that cannot succeed).
    let mut huge = chat("auto", "a prompt larger than every window");
    huge["modelfleet"] = json!({"prompt_tokens": 5_000_000});
    let total = mock.total_hits();
    let response = gateway.chat(&huge).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_else(|| panic!("{body}"));
    for reason in ["none of the 10 models satisfies the requirements", "rejected by context_window (10)"] {
        assert!(message.contains(reason), "{reason}: {message}");
    }
    assert_eq!(mock.total_hits(), total, "auto: no upstream call");
    gateway.stop().await;
    mock.shutdown().await;
}

/// A model that hangs past its provider's timeout is tried (and falls
/// back) on each of its first three timeouts, then ejected: the next
/// request goes straight to the other model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_model_is_ejected_after_three_timeouts() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let body = model("h", EN_GENERAL)
        + &model("ok", EN_GENERAL)
        + "\n[cooldown]\ntimeouts_to_eject = 3\nescalating_base_ms = 60000\nescalating_max_ms = 60000\n";
    // Each call may take 300 ms; the request as a whole has 10 s.
    let limits = Limits {
        request_timeout_ms: 300,
        retry: "max_attempts = 2\ninitial_backoff_ms = 1\nmax_backoff_ms = 5\ndeadline_ms = 10000\n",
    };
    let gateway = Running::start(&config(&mock, &dir, &body, &limits)).await;
    mock.set(
        "h",
        Behavior { fault: Some(Fault::Hang(Duration::from_secs(3))), fault_rate: 1.0, ..Behavior::default() },
    );

    for timeouts in 1..=3 {
        assert!(!gateway.cooling_down("h").await, "before timeout {timeouts}: h in rotation");
        let response = gateway.chat(&chat("h", "are you there?")).await;
        assert_eq!(served(&response), (200, "ok", "2"), "timeout {timeouts}: h tried, then ok");
        assert_eq!(mock.hits("h"), timeouts);
        let health = gateway.fleet.tracker().health("h", gateway.now());
        assert_eq!((health.failures, u64::from(health.consecutive_failures)), (timeouts, timeouts), "{health:?}");
    }
    // The third timeout ejected it.
    assert!(gateway.cooling_down("h").await);
    let out = unavailable(&gateway.explain(&json!({"model": "auto"})).await);
    assert!(matches!(&out[..], [(m, why)] if m == "h" && why.starts_with("cooling down after timeout")), "{out:?}");
    let response = gateway.chat(&chat("h", "still there?")).await;
    assert_eq!(served(&response), (200, "ok", "1"), "straight to the other model");
    assert_eq!(header(&response, "x-modelfleet-fallback"), "true", "the first choice was skipped");
    assert_eq!(mock.hits("h"), 3);
    gateway.stop().await;
    mock.shutdown().await;
}

/// A stream is one outcome: broken after some chunks, it is one failure
/// (not a success when it opened plus a failure); finished, one success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_broken_mid_way_counts_as_one_failure() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Running::start(&config(&mock, &dir, &model("s", EN_GENERAL), &LIMITS)).await;
    let mut request = chat("s", "stream to me");
    request["stream"] = json!(true);
    // (requests, successes, failures) in the monitor; (successes, failures) in the tracker.
    let counted = || {
        let totals = gateway.fleet.monitor().model_stats("s").totals;
        let health = gateway.fleet.tracker().health("s", gateway.now());
        ((totals.requests, totals.successes, totals.failures), (health.successes, health.failures))
    };

    mock.fail_next("s", Fault::CutAfter(2), 1);
    let response = gateway.chat(&request).await;
    assert_eq!(served(&response), (200, "s", "1"));
    let data = events(&response.text().await.unwrap());
    let relayed = data.iter().filter(|d| d.contains("\"content\"")).count();
    assert!(relayed >= 2, "chunks came before the cut: {data:?}");
    let last: Value = serde_json::from_str(data.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "stream_interrupted", "{data:?}");
    until("the broken stream is settled", || async { gateway.fleet.monitor().model_stats("s").totals.requests == 1 })
        .await;
    assert_eq!(counted(), ((1, 0, 1), (0, 1)), "one failure, no success at open");

    let response = gateway.chat(&request).await;
    assert!(response.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    until("the finished stream is settled", || async { gateway.fleet.monitor().model_stats("s").totals.requests == 2 })
        .await;
    assert_eq!(counted(), ((2, 1, 1), (1, 1)), "one success when it finished");
    gateway.stop().await;
    mock.shutdown().await;
}

/// A route hedged after 100 ms: its first model is slow, so the second is
/// started too and its answer wins; both attempts are reported and the
/// hedge counted; the cancelled one is charged (its hold) and not held
/// against its model, and `x-modelfleet-cost` says what the request was
/// charged, both attempts included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedged_request_is_answered_by_the_faster_model_and_both_are_charged() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("slow", Behavior { latency: Duration::from_secs(2), ..Behavior::default() });
    let dir = tempfile::tempdir().unwrap();
    let body = model("slow", EN_GENERAL)
        + &model("fast", EN_GENERAL)
        + "\n[[routes]]\nname = \"hedged\"\nhedge_after = 100\nfallbacks = [\"slow\", \"fast\"]\n\
           [routes.requirements]\nlanguage = \"en\"\n\
           \n[[budgets]]\nscope = \"global\"\nperiod = \"monthly\"\nlimit = \"100.00\"\nenforcement = \"hard\"\n";
    let gateway = Running::start(&config(&mock, &dir, &body, &LIMITS)).await;
    let hedges = async || {
        let started = gateway.metric("modelfleet_provider_hedges_started_total", ("provider", "mock")).await;
        let won = gateway.metric("modelfleet_provider_hedges_won_total", ("provider", "mock")).await;
        (started.unwrap_or(0.0), won.unwrap_or(0.0))
    };
    assert_eq!(hedges().await, (0.0, 0.0));

    let response = gateway.chat(&chat("hedged", "whoever is first")).await;
    assert_eq!(served(&response), (200, "fast", "2"), "{:?}", response.headers());
    let cost: Money = header(&response, "x-modelfleet-cost").parse().unwrap();
    let body: Value = response.json().await.unwrap();
    assert!(body["choices"][0]["message"]["content"].as_str().unwrap().starts_with("mock answer from fast"));
    assert_eq!((mock.hits("slow"), mock.hits("fast")), (1, 1), "the slow one was called first, then the hedge");
    assert_eq!(hedges().await, (1.0, 1.0));

    // The slow attempt was cancelled: charged its hold (what it may have
    // cost), counted as aborted, and not held against the model.
    let slow = gateway.fleet.monitor().model_stats("slow").totals;
    let fast = gateway.fleet.monitor().model_stats("fast").totals;
    assert_eq!((slow.requests, slow.aborted, slow.failures), (1, 1, 0), "{slow:?}");
    assert!(slow.cost > Money::ZERO, "{slow:?}");
    assert_eq!((fast.requests, fast.successes), (1, 1), "{fast:?}");
    let health = gateway.fleet.tracker().health("slow", gateway.now());
    assert_eq!((health.failures, health.successes), (0, 0), "{health:?}");
    let ledger = gateway.fleet.budgets().status(&Scope::Global, Period::Monthly).unwrap();
    assert_eq!(ledger.spent, slow.cost + fast.cost, "both attempts are spent");
    assert_eq!(cost, ledger.spent, "x-modelfleet-cost says what the request was charged");
    assert_eq!(ledger.reserved, Money::ZERO, "nothing stays held");
    gateway.fleet.store().flush_async().await.unwrap();
    let stored: Money = gateway.fleet.store().spend().unwrap().iter().map(|r| r.spent).sum();
    assert_eq!(stored, ledger.spent, "and committed");
    gateway.stop().await;
    mock.shutdown().await;
}

/// Two identical models; the first one's provider says it has 1 request of
/// 100 left: after one answer from it, it ranks below the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_near_its_rate_limit_ranks_below_an_identical_one() {
    let mock = MockUpstream::start().await.unwrap();
    let limits = RateLimits { limit_requests: 100, remaining_requests: 1, reset_requests: Duration::from_mins(1) };
    mock.set("r1", Behavior { rate_limits: Some(limits), ..Behavior::default() });
    let dir = tempfile::tempdir().unwrap();
    let body = model("r1", EN_GENERAL) + &model("r2", EN_GENERAL);
    let gateway = Running::start(&config(&mock, &dir, &body, &LIMITS)).await;
    let auto = json!({"model": "auto"});
    // Equal scores: the tie goes to the smaller id.
    assert_eq!(ranked(&gateway.explain(&auto).await), ["r1", "r2"]);

    // One answer from each, so both have the same history; r1's said 1% is left.
    for id in ["r1", "r2"] {
        assert_eq!(served(&gateway.chat(&chat(id, "hello")).await), (200, id, "1"));
    }
    let explained = gateway.explain(&auto).await;
    assert_eq!(ranked(&explained), ["r2", "r1"], "{explained}");
    let factor = |id: &str| {
        let entry = explained["ranked"].as_array().unwrap().iter().find(|r| r["model"] == id).unwrap();
        entry["score"]["rate_limit"].as_f64().unwrap()
    };
    // 0.25 + 0.75 × (0.01 / 0.2): ranked down, never out.
    assert!((factor("r1") - 0.2875).abs() < 1e-9, "{explained}");
    assert!((factor("r2") - 1.0).abs() < 1e-9, "{explained}");
    let ranking = gateway.fleet.rank(&Request::default()).unwrap();
    assert_eq!(ranking.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["r2", "r1"]);
    // And a request for any model goes to r2.
    assert_eq!(served(&gateway.chat(&chat("auto", "anyone")).await), (200, "r2", "1"));
    gateway.stop().await;
    mock.shutdown().await;
}

/// What the body uses decides which models may serve it: `tools` needs
/// tools, a JSON `response_format` `json_mode`, an image vision, `stream`
/// streaming (a model without a `capabilities` key streams; one with a
/// list has exactly what it lists).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_the_body_uses_decide_which_models_may_serve_it() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let with = |capabilities: &str| format!("{EN_GENERAL}\ncapabilities = [{capabilities}]");
    let body = [
        // The best on quality: it would serve everything if capabilities did not count.
        model("plain", "context_window = 8192\nquality = 0.9\nlanguages = [\"en\"]\ncategories = [\"general\"]"),
        model("tooled", &with("\"tools\"")),
        model("jsony", &with("\"json_mode\", \"streaming\"")),
        model("seeing", &with("\"vision\"")),
    ]
    .concat();
    let gateway = Running::start(&config(&mock, &dir, &body, &LIMITS)).await;
    let image = json!([{"type": "text", "text": "what is this?"},
                       {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]);
    let cases: [(&str, Value, &[&str]); 4] = [
        ("tools", json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}), &["tooled"]),
        ("json_mode", json!({"response_format": {"type": "json_object"}}), &["jsony"]),
        ("vision", json!({"messages": [{"role": "user", "content": image}]}), &["seeing"]),
        ("streaming", json!({"stream": true}), &["jsony", "plain"]),
    ];
    let all = ["plain", "tooled", "jsony", "seeing"];
    for (capability, extra, able) in cases {
        let mut request = chat("auto", "use what I send");
        request.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let explained = gateway.explain(&request).await;
        // Which of them ranks first depends on their history; who may serve does not.
        let mut eligible = ranked(&explained);
        eligible.sort();
        assert_eq!(eligible, able, "{capability}: {explained}");
        for id in all.iter().filter(|id| !able.contains(id)) {
            let why =
                rejected(&explained, id).unwrap_or_else(|| panic!("{capability}: {id} not rejected: {explained}"));
            assert_eq!(why, format!("no {capability} support"), "{capability}: {id}");
        }
        let response = gateway.chat(&request).await;
        let (status, model, attempts) = served(&response);
        assert!(status == 200 && able.contains(&model) && attempts == "1", "{capability}: {model} served");
        let _ = response.bytes().await;
    }
    // Nobody both streams and calls tools: refused, saying why, nothing called.
    let mut both = chat("auto", "stream tool calls");
    both["stream"] = json!(true);
    both["tools"] = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    let total = mock.total_hits();
    let response = gateway.chat(&both).await;
    assert_ne!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("rejected by capabilities (4)"), "{text}");
    assert_eq!(mock.total_hits(), total);
    gateway.stop().await;
    mock.shutdown().await;
}

/// A stream opened on a model, then dropped by its client after the first
/// event, is neither a success nor a failure of the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_left_by_its_client_is_not_held_against_the_model() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set("slow", Behavior { chunk_interval: Duration::from_millis(50), chunks: 8, ..Behavior::default() });
    let dir = tempfile::tempdir().unwrap();
    let gateway = Running::start(&config(&mock, &dir, &model("slow", EN_GENERAL), &LIMITS)).await;
    let mut request = chat("slow", "stream, then I leave");
    request["stream"] = json!(true);
    let response = gateway.chat(&request).await;
    let mut body = response.bytes_stream();
    assert!(body.next().await.unwrap().unwrap().starts_with(b"data: "));
    drop(body);
    until("the stream is settled", || async { gateway.fleet.monitor().model_stats("slow").totals.requests == 1 }).await;
    let health = gateway.fleet.tracker().health("slow", gateway.now());
    assert_eq!((health.successes, health.failures), (0, 0), "{health:?}");
    gateway.stop().await;
    mock.shutdown().await;
}
