//! Replicas sharing hard budgets (`[cluster]`): three fleets, each with its
//! own SQLite file, on one PostgreSQL schema, against one hard budget. The
//! server is the machine's (`MODELFLEET_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/test`); without it the test skips,
//! saying so, except under `CI=true`, where it fails.

use std::{sync::Arc, time::Duration};

use modelfleet::{
    Fleet, FleetOptions, ModelResponse, Request, Usage,
    budget::{Period, Scope},
    errors::Failure,
    registry::Money,
    selector::Requirements,
};
use modelfleet_cluster::{BudgetKey, SharedLedger};

use modelfleet_test_support::{Proxy, Schema, redis_url, unique};

use crate::support::validated;

/// The config's environment: the test server's URL.
pub(crate) fn env(name: &str) -> Option<String> {
    (name == "MODELFLEET_TEST_POSTGRES_URL").then(test_url)
}

fn test_url() -> String {
    std::env::var("MODELFLEET_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub(crate) use modelfleet_test_support::postgres_url;

/// One model whose every answer costs exactly its worst case ($0.002: 1,000
/// output tokens at $2 per million), under a hard global budget of $0.10:
/// room for exactly 50 answers, whichever replica serves them. `leases`:
/// whether replicas draw from leases or hold each request in the store.
fn config_text(schema: &str, leases: bool) -> String {
    format!(
        "[[providers]]\nname = \"p\"\nkind = \"simulated\"\n\n\
         [[models]]\nid = \"m\"\nprovider = \"p\"\ncontext_window = 100000\nmax_output_tokens = 1000\n\
         input_price_per_mtok = \"1\"\noutput_price_per_mtok = \"2\"\ncategories = [\"general\"]\n\n\
         [[budgets]]\nscope = \"global\"\nperiod = \"monthly\"\nlimit = \"0.10\"\nenforcement = \"hard\"\n\n\
         [cluster]\npostgres_url_env = \"MODELFLEET_TEST_POSTGRES_URL\"\nschema = \"{schema}\"\ntimeout_ms = 30000\n\
         leases = {leases}\nlease_ttl_ms = 120000\n"
    )
}

/// An answer of 500 output tokens: half the worst case.
async fn half_answer(
    _: Arc<modelfleet::registry::ModelSpec>,
    _: modelfleet::errors::AttemptCtx,
) -> Result<ModelResponse<()>, Failure> {
    Ok(ModelResponse { value: (), usage: Some(Usage::new(0, 500)) })
}

/// A failure the provider does not bill.
async fn unbilled_failure(
    _: Arc<modelfleet::registry::ModelSpec>,
    _: modelfleet::errors::AttemptCtx,
) -> Result<ModelResponse<()>, Failure> {
    Err(Failure::new(modelfleet::errors::ErrorClass::BadRequest, "refused"))
}

/// The model's answer: 1,000 output tokens, exactly the worst case.
async fn one_answer(
    _: Arc<modelfleet::registry::ModelSpec>,
    _: modelfleet::errors::AttemptCtx,
) -> Result<ModelResponse<()>, Failure> {
    Ok(ModelResponse { value: (), usage: Some(Usage::new(0, 1_000)) })
}

/// The shared ledger's (spent, held) once every lease has been returned
/// (an idle lease closes after a second; polled for up to ten).
async fn settled(ledger: &SharedLedger, key: &BudgetKey) -> (Money, Money) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let row = ledger.status(key).await.unwrap().expect("defined by the first hold");
        if row.held == Money::ZERO || std::time::Instant::now() > deadline {
            return (row.spent, row.held);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_holding_each_request_never_pass_one_hard_budget() {
    three_replicas_never_pass_one_hard_budget(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_drawing_from_leases_never_pass_one_hard_budget() {
    three_replicas_never_pass_one_hard_budget(true).await;
}

async fn three_replicas_never_pass_one_hard_budget(leases: bool) {
    let Some(url) = postgres_url() else { return };
    let guard = Schema::new(&url, "replicas");
    let schema = guard.name.clone();
    let mut fleets = Vec::new();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    for dir in &dirs {
        let mut config = validated(&config_text(&schema, leases), dir.path(), env);
        config.store.path = Some(dir.path().join("fleet.db"));
        let options = FleetOptions::from_config(&config).unwrap();
        fleets.push(Arc::new(Fleet::open(options).await.expect("a replica starts")));
    }
    let request = Request {
        requirements: Requirements { max_output_tokens: 1_000, ..Requirements::default() },
        ..Request::default()
    };
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..300 {
        let (fleet, request) = (Arc::clone(&fleets[i % 3]), request.clone());
        calls.spawn(async move { fleet.call(&request, one_answer).await.map(|served| served.cost) });
    }
    let mut served = Vec::new();
    while let Some(outcome) = calls.join_next().await {
        if let Ok(cost) = outcome.unwrap() {
            served.push(cost);
        }
    }
    assert_eq!(served.len(), 50, "exactly what the budget allows, across three replicas");
    // The shared ledger is the sum of the charges, exactly, and holds nothing.
    let start = fleets[0].budgets().status(&Scope::Global, Period::Monthly).unwrap().period_start_ms;
    let key = BudgetKey { scope: "global".into(), period: "monthly".into(), period_start_ms: start };
    let ledger = SharedLedger::connect(&url, &schema, "test", Duration::from_secs(30)).await.unwrap();
    let total = served.iter().fold(Money::ZERO, |sum, cost| sum + *cost);
    // Holding each request, every answer was charged before it went out.
    // Drawing from leases, it is charged by its lease's next checkpoint,
    // and covered meanwhile: were every replica to die now, the sweep
    // would charge at least every answer. Leases return what they did not
    // use once idle.
    let row = ledger.status(&key).await.unwrap().expect("defined by the first hold");
    if leases {
        let covered = row.spent + ledger.outstanding().await.unwrap();
        assert!(covered >= total, "answers out that the store does not cover: {covered} < {total}");
    } else {
        assert_eq!(row.spent, total, "charged before the answers went out");
    }
    assert_eq!(settled(&ledger, &key).await, (total, Money::ZERO));
    assert_eq!(total, "0.1".parse::<Money>().unwrap());
    // A replica started with a higher limit gives it to every replica's
    // shared budget (the configuration is re-applied at start).
    let dir = tempfile::tempdir().unwrap();
    let raised_text = config_text(&schema, leases).replace("limit = \"0.10\"", "limit = \"0.11\"");
    let mut config = validated(&raised_text, dir.path(), env);
    config.store.path = Some(dir.path().join("fleet.db"));
    let raised = Fleet::open(FleetOptions::from_config(&config).unwrap()).await.unwrap();
    // An answer under its worst case is charged its cost, not its hold; an
    // unbilled failure nothing; and nothing stays held.
    let cheap = fleets[1].call(&request, half_answer).await.expect("the raised limit has room");
    assert_eq!(cheap.cost, "0.001".parse::<Money>().unwrap());
    assert_eq!(settled(&ledger, &key).await.0, "0.101".parse().unwrap());
    assert!(raised.call(&request, unbilled_failure).await.is_err());
    // Budgets change only through every replica's configuration.
    let added = fleets[0]
        .add_budget(
            modelfleet::budget::BudgetSpec::hard(Scope::Provider("p".into()), Period::Daily, Money::ZERO),
            "admin",
        )
        .await;
    assert!(matches!(added, Err(modelfleet::FleetError::Budget(modelfleet::BudgetAdminError::Shared))), "{added:?}");
    raised.shutdown().await.unwrap();
    for fleet in &fleets {
        fleet.shutdown().await.unwrap();
    }
    // Shut down, replicas close their leases at once: nothing stays held.
    let row = ledger.status(&key).await.unwrap().unwrap();
    assert_eq!((row.spent, row.held), ("0.101".parse().unwrap(), Money::ZERO));
}

/// Polls `check` every 100 ms for up to 20 s: whether it came true.
pub(crate) async fn eventually<F: std::future::Future<Output = bool>>(check: impl FnMut() -> F) -> bool {
    within(Duration::from_secs(20), check).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_store_fails_hard_budgets_closed_serves_the_rest_and_recovers() {
    let Some(url) = postgres_url() else { return };
    let (proxy, proxied) = Proxy::to_postgres(&url).await;
    let guard = Schema::new(&url, "cut");
    let schema = guard.name.clone();
    // Model `m` is paid by a hard budget on provider `p`; model `n`, on
    // provider `q`, by none (and of another category: never `m`'s stand-in).
    let text = config_text(&schema, true)
        .replace("scope = \"global\"", "scope = \"provider:p\"")
        .replace("timeout_ms = 30000", "timeout_ms = 1000")
        .replace("lease_ttl_ms = 120000", "lease_ttl_ms = 4000")
        + "\n[[providers]]\nname = \"q\"\nkind = \"simulated\"\n\n\
           [[models]]\nid = \"n\"\nprovider = \"q\"\ncontext_window = 100000\nmax_output_tokens = 1000\n\
           input_price_per_mtok = \"1\"\noutput_price_per_mtok = \"2\"\ncategories = [\"code\"]\n";
    let dir = tempfile::tempdir().unwrap();
    let mut config = validated(&text, dir.path(), env);
    config.store.path = Some(dir.path().join("fleet.db"));
    config.cluster.as_mut().unwrap().postgres_url = proxied;
    let gateway = crate::support::Running::start(&config, env).await;
    let client = reqwest::Client::new();
    let chat = |model: &'static str| {
        let request = client.post(format!("{}/v1/chat/completions", gateway.url)).json(&serde_json::json!({
            "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10
        }));
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let ready = || async {
        let response = client.get(format!("{}/health/ready", gateway.url)).send().await.unwrap();
        response.json::<serde_json::Value>().await.unwrap()
    };
    let metrics_url = format!("{}/metrics", gateway.url);
    let metric = |name: &'static str| {
        let url = metrics_url.clone();
        async move {
            let text = reqwest::get(url).await.unwrap().text().await.unwrap();
            text.lines().find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
        }
    };
    assert_eq!(chat("m").await.0, 200, "served while the store answers");
    assert_eq!(metric("modelfleet_cluster_store_up").await, Some(1.0));
    assert_eq!(ready().await["cluster"]["reachable"], true);
    proxy.cut();
    // The lease's room may still serve the request that finds the store
    // gone (its checkpoint fails as it answers); from then on, requests
    // under the hard budget refuse, saying why, though the lease had room
    // for hundreds more.
    let mut served_after_cut = 0;
    for _ in 0..10 {
        match chat("m").await {
            (200, _) => served_after_cut += 1,
            (status, body) => {
                assert!(matches!(status, 429 | 503), "{status} {body}");
                assert!(body.to_string().contains("unreachable"), "{body}");
                break;
            }
        }
    }
    assert!(served_after_cut <= 2, "{served_after_cut} requests drew on a lease the store could not confirm");
    for _ in 0..5 {
        let (status, body) = chat("m").await;
        assert!(matches!(status, 429 | 503) && body.to_string().contains("unreachable"), "{status} {body}");
        assert_eq!(chat("n").await.0, 200, "requests no hard budget pays are served");
    }
    // Readiness says so (degraded, still serving), and so do the metrics.
    let (status, body) = chat("m").await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("budget_store_unavailable")), "{body}");
    let degraded = ready().await;
    assert_eq!((degraded["status"].as_str(), degraded["overall"].as_str()), (Some("ready"), Some("degraded")));
    assert!(degraded["reason"].as_str().unwrap_or_default().contains("shared budget store"), "{degraded}");
    assert_eq!(metric("modelfleet_cluster_store_up").await, Some(0.0));
    assert!(metric("modelfleet_cluster_ledger_failures_total").await.unwrap_or_default() >= 1.0);
    // A catalog edit is refused, saying so (and nothing else: no host, no
    // user); the replica goes on serving its copy of the catalog.
    let edit = client
        .post(format!("{}/v1/admin/models", gateway.url))
        .json(&serde_json::json!({"id": "late", "provider": "p", "context_window": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(edit.status(), 503);
    let refusal = edit.text().await.unwrap();
    assert!(refusal.contains("catalog_store_unavailable") && !refusal.contains("127.0.0.1"), "{refusal}");
    assert_eq!(chat("n").await.0, 200);
    proxy.restore().await;
    assert!(eventually(|| async { chat("m").await.0 == 200 }).await, "hard budgets serve again once the store is back");
    assert_eq!(ready().await["cluster"]["reachable"], true);
    gateway.stop().await;
    drop(proxy);
}

// ---- Ejections shared through Redis -----------------------------------------------------------

/// A key prefix no other test (or run) uses.
fn fresh_prefix(test: &str) -> String {
    unique("t:it", test)
}

/// Two models, `flaky` first and `steady` its fallback; two server errors
/// in a row eject a model for a minute (long enough for any machine to
/// see it shared), on one PostgreSQL schema and one Redis.
fn ejections_config(schema: &str, redis: &str, prefix: &str) -> String {
    format!(
        "[[providers]]\nname = \"p\"\nkind = \"simulated\"\n\n\
         [[models]]\nid = \"flaky\"\nprovider = \"p\"\ncontext_window = 100000\nmax_output_tokens = 1000\n\
         input_price_per_mtok = \"1\"\noutput_price_per_mtok = \"2\"\ncategories = [\"general\"]\nfallbacks = [\"steady\"]\n\n\
         [[models]]\nid = \"steady\"\nprovider = \"p\"\ncontext_window = 100000\nmax_output_tokens = 1000\n\
         input_price_per_mtok = \"1\"\noutput_price_per_mtok = \"2\"\ncategories = [\"general\"]\n\n\
         [cooldown]\nescalating_base_ms = 60000\nescalating_max_ms = 120000\n\n\
         [cluster]\npostgres_url_env = \"MODELFLEET_TEST_POSTGRES_URL\"\nschema = \"{schema}\"\ntimeout_ms = 2000\n\
         redis_url = \"{redis}\"\nredis_prefix = \"{prefix}\"\n"
    )
}

async fn open_replica(text: &str) -> (Fleet, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = validated(text, dir.path(), env);
    config.store.path = Some(dir.path().join("fleet.db"));
    let fleet = Fleet::open(FleetOptions::from_config(&config).unwrap()).await.expect("a replica starts");
    (fleet, dir)
}

/// A provider where `flaky` answers 503 and `steady` answers; counts the
/// calls `flaky` got.
fn provider(
    flaky_calls: &Arc<std::sync::atomic::AtomicUsize>,
) -> impl FnMut(
    Arc<modelfleet::registry::ModelSpec>,
    modelfleet::errors::AttemptCtx,
) -> std::future::Ready<Result<ModelResponse<()>, Failure>> {
    let calls = Arc::clone(flaky_calls);
    move |model, _| {
        std::future::ready(if model.id == "flaky" {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(Failure::new(modelfleet::errors::ErrorClass::ServerError, "503 from the upstream"))
        } else {
            Ok(ModelResponse { value: (), usage: Some(Usage::new(10, 10)) })
        })
    }
}

/// The models `fleet` has out of rotation now, as its explanation says:
/// (model, why, whether another replica's ejection keeps it out).
fn out_of_rotation(fleet: &Fleet) -> Vec<(String, String, bool)> {
    let (_, json) = fleet.explain(&modelfleet::Request::default()).unwrap();
    json["unavailable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (m["model"].as_str().unwrap().to_owned(), m["why"].as_str().unwrap().to_owned(), !m["remote"].is_null())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_ejected_on_one_replica_is_skipped_by_the_other() {
    let Some(url) = postgres_url() else { return };
    let Some(redis) = redis_url() else { return };
    let guard = Schema::new(&url, "ejections");
    let schema = guard.name.clone();
    let text = ejections_config(&schema, &redis, &fresh_prefix("eject"));
    let ((a, _a_dir), (b, _b_dir)) = (open_replica(&text).await, open_replica(&text).await);
    let request = modelfleet::Request { model: Some("flaky".into()), ..modelfleet::Request::default() };
    // On A, `flaky` fails until A ejects it; `steady` serves meanwhile.
    let a_calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..10 {
        let served = a.call(&request, provider(&a_calls)).await.expect("the fallback serves");
        assert_eq!(served.model, "steady");
        if !out_of_rotation(&a).is_empty() {
            break;
        }
    }
    let on_a = out_of_rotation(&a);
    assert!(matches!(on_a.as_slice(), [(model, _, false)] if model == "flaky"), "A's own ejection: {on_a:?}");
    // B hears of it: within a second or so; the test allows 10 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let on_b = loop {
        let out = out_of_rotation(&b);
        if !out.is_empty() || tokio::time::Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let [(model, why, remote)] = on_b.as_slice() else { panic!("B never heard of flaky's ejection: {on_b:?}") };
    assert_eq!((model.as_str(), *remote), ("flaky", true));
    assert!(why.contains("server_error") && why.ends_with("ejected by another replica"), "{why}");
    let health = b.tracker().all(Duration::ZERO);
    assert_eq!(
        health.iter().map(|(m, h)| (m.as_str(), h.ejections)).collect::<Vec<_>>(),
        [("flaky", 0)],
        "not B's own"
    );
    // B's calls go to `steady`, without trying `flaky` once.
    let b_calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..5 {
        let served = b.call(&request, provider(&b_calls)).await.expect("served");
        assert_eq!(served.model, "steady");
        assert!(served.attempts.iter().all(|attempt| attempt.model == "steady"), "{:?}", served.attempts);
    }
    assert_eq!(b_calls.load(std::sync::atomic::Ordering::SeqCst), 0, "B never retried the ejected model");
    // No echo: A does not take its own ejection back from B.
    let on_a = out_of_rotation(&a);
    assert!(matches!(on_a.as_slice(), [(_, _, false)]), "{on_a:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// What the fleet logs, kept.
#[derive(Clone, Default)]
struct Log(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// One thread: the log's subscriber sees the fleet's tasks too.
#[tokio::test]
async fn a_replica_serves_while_redis_is_unreachable_and_says_so() {
    let Some(url) = postgres_url() else { return };
    let log = Log::default();
    let writer = log.clone();
    let _logging = tracing_subscriber::util::SubscriberInitExt::set_default(
        tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish(),
    );
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let guard = Schema::new(&url, "ejections_down");
    let schema = guard.name.clone();
    let text = ejections_config(&schema, &format!("redis://127.0.0.1:{port}"), &fresh_prefix("down"));
    let (fleet, _dir) = open_replica(&text).await;
    // It serves, ejects on its own evidence, and serves from the fallback.
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let request = modelfleet::Request { model: Some("flaky".into()), ..modelfleet::Request::default() };
    for _ in 0..3 {
        assert_eq!(fleet.call(&request, provider(&calls)).await.expect("served").model, "steady");
    }
    assert!(matches!(out_of_rotation(&fleet).as_slice(), [(model, _, false)] if model == "flaky"));
    let logged = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    assert!(logged.contains("Redis is unreachable: ejections stay local to this replica"), "{logged}");
    assert_eq!(fleet.cluster_status().and_then(|s| s.redis_reachable), Some(false), "readiness says so");
    assert!(!logged.contains(&format!("127.0.0.1:{port}")), "the URL is never logged: {logged}");
    fleet.shutdown().await.unwrap();
}

// ---- The shared catalog -----------------------------------------------------------------------

/// Polls `check` for up to `bound`.
pub(crate) async fn within<F: std::future::Future<Output = bool>>(
    bound: Duration,
    mut check: impl FnMut() -> F,
) -> bool {
    let deadline = std::time::Instant::now() + bound;
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A model spec the admin API takes: `m`'s provider, `priority` to tell
/// edits apart.
fn api_model(id: &str, priority: u8) -> serde_json::Value {
    serde_json::json!({
        "id": id, "provider": "p", "context_window": 100_000, "max_output_tokens": 1_000,
        "pricing": {"input_per_mtok": "1", "output_per_mtok": "2"}, "categories": ["general"], "priority": priority
    })
}

/// Adds API model `id` as a hand edit would: no notification.
async fn add_unannounced(url: &str, schema: &str, id: &str) {
    let (sql, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let spec = api_model(id, 1).to_string();
    let seq: i64 = sql
        .query_one(
            &format!(
                "INSERT INTO {schema}.catalog_changes (model, action, who, replica, after)
                 VALUES ($1, 'add', 'sql', 'none', $2) RETURNING seq"
            ),
            &[&id, &spec],
        )
        .await
        .unwrap()
        .get(0);
    sql.execute(
        &format!("INSERT INTO {schema}.catalog_models (id, spec, revision, source) VALUES ($1, $2, $3, 'api')"),
        &[&id, &spec, &seq],
    )
    .await
    .unwrap();
}

/// `added`'s history: added on replica 0 at priority 1, then `winner`'s edit.
fn check_history(history: &serde_json::Value, winner: &serde_json::Value) {
    let changes = history["changes"].as_array().unwrap();
    let actions: Vec<(&str, &str)> =
        changes.iter().map(|c| (c["action"].as_str().unwrap(), c["who"].as_str().unwrap())).collect();
    assert_eq!(actions, [("update", "local"), ("add", "local")]);
    assert_eq!(changes[0]["after"]["priority"], winner["priority"]);
    assert_eq!(changes[0]["before"]["priority"], 1);
    assert_eq!(changes[1]["replica"], "replica-0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_edit_on_one_replica_is_served_by_the_other_and_concurrent_edits_conflict() {
    let Some(url) = postgres_url() else { return };
    let guard = Schema::new(&url, "catalog");
    let schema = guard.name.clone();
    // No budget: this test is about the catalog.
    let text = config_text(&schema, true).replace("enforcement = \"hard\"", "enforcement = \"soft\"");
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let mut config = validated(&text, dir.path(), env);
        config.store.path = Some(dir.path().join("fleet.db"));
        config.cluster.as_mut().unwrap().replica = Some(format!("replica-{i}"));
        replicas.push(crate::support::Running::start(&config, env).await);
    }
    let (a, b) = (&replicas[0].url, &replicas[1].url);
    let client = reqwest::Client::new();
    let chat = |base: &str, model: &str| {
        let request = client.post(format!("{base}/v1/chat/completions")).json(&serde_json::json!({
            "model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10
        }));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let model_at = |base: &str, id: &str| {
        let request = client.get(format!("{base}/v1/admin/models/{id}"));
        async move {
            let response = request.send().await.unwrap();
            let (status, etag) = (response.status().as_u16(), response.headers().get("etag").cloned());
            (status, etag, response.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };

    // The configured model is shared, marked, and read-only.
    let (status, etag, m) = model_at(b, "m").await;
    assert_eq!((status, m["source"].as_str()), (200, Some("config")), "{m}");
    assert_eq!(etag.unwrap().to_str().unwrap(), format!("\"{}\"", m["revision"]));
    let mut edited = m.clone();
    edited["priority"] = serde_json::json!(9);
    let response = client.put(format!("{a}/v1/admin/models/m")).json(&edited).send().await.unwrap();
    assert_eq!(response.status(), 409);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_read_only", "{body}");

    // A model added on A is served by B.
    assert_eq!(chat(b, "added").await, 404, "not in the catalog yet");
    let response = client.post(format!("{a}/v1/admin/models")).json(&api_model("added", 1)).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let added: serde_json::Value = response.json().await.unwrap();
    assert_eq!(added["source"], "api", "{added}");
    let revision = added["revision"].as_u64().expect("a revision");
    assert!(within(Duration::from_secs(10), || async { chat(b, "added").await == 200 }).await, "B serves A's model");

    // Two edits made on one revision, on two replicas at once: one wins,
    // the other is told the winner's revision.
    let put = |base: &str, priority: u8| {
        client
            .put(format!("{base}/v1/admin/models/added"))
            .header("if-match", format!("\"{revision}\""))
            .json(&api_model("added", priority))
            .send()
    };
    let (first, second) = tokio::join!(put(a, 2), put(b, 3));
    let (first, second) = (first.unwrap(), second.unwrap());
    let mut statuses = [first.status().as_u16(), second.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409]);
    let (won, lost) = if first.status() == 200 { (first, second) } else { (second, first) };
    let winner: serde_json::Value = won.json().await.unwrap();
    let lost_etag = lost.headers().get("etag").unwrap().to_str().unwrap().to_owned();
    let refusal: serde_json::Value = lost.json().await.unwrap();
    assert_eq!(refusal["error"]["code"], "revision_conflict", "{refusal}");
    assert_eq!(lost_etag, format!("\"{}\"", winner["revision"]));
    assert!(refusal["error"]["message"].as_str().unwrap().contains(&winner["revision"].to_string()), "{refusal}");
    for base in [a, b] {
        let converged = within(Duration::from_secs(10), || async {
            model_at(base, "added").await.2["priority"] == winner["priority"]
        })
        .await;
        assert!(converged, "every replica shows the winning edit");
    }

    // The history says who changed what, on which replica.
    let history: serde_json::Value =
        client.get(format!("{b}/v1/admin/models/added/history")).send().await.unwrap().json().await.unwrap();
    check_history(&history, &winner);

    // A removal on a stale revision is refused; without one it is made,
    // and A stops serving the model.
    let stale = client
        .delete(format!("{b}/v1/admin/models/added"))
        .header("if-match", format!("\"{revision}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 409);
    assert_eq!(client.delete(format!("{b}/v1/admin/models/added")).send().await.unwrap().status(), 200);
    assert!(within(Duration::from_secs(10), || async { chat(a, "added").await == 404 }).await, "A drops B's removal");

    // A change that notified nobody (written by hand here; a notification
    // lost while a listener reconnects) reaches the replicas by their re-read.
    add_unannounced(&url, &schema, "quiet").await;
    for base in [a, b] {
        assert!(within(Duration::from_secs(10), || async { chat(base, "quiet").await == 200 }).await, "re-read");
    }
    // Both now serve the same revision, and say so.
    let revision = |i: usize| replicas[i].fleet.cluster_status().map_or(0, |c| c.catalog_revision);
    assert!(revision(0) > 0 && revision(0) == revision(1), "{} vs {}", revision(0), revision(1));
    let text = client.get(format!("{b}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(&format!("modelfleet_cluster_catalog_revision {}", revision(1))), "{text}");

    for replica in replicas {
        replica.stop().await;
    }
}
