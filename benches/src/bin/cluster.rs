//! Replicas on one hot hard budget (run by `cargo xtask loadtest --cluster N`):
//! real `modelfleet serve` processes sharing a budget through the test
//! PostgreSQL (`MODELFLEET_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/test`, a schema of its own, dropped
//! at the end), the mock upstream in this process.
//!
//! 1. **Kill** (its guarantees fail the run): `N` replicas, 300 concurrent
//!    requests spread over them against a hard budget with room for 50;
//!    the last replica is killed (SIGKILL) mid-burst. Checked: at most 50 served,
//!    the shared ledger never past its limit, every acknowledged charge in
//!    it (spent ≥ the sum of the answers' `x-modelfleet-cost`), at most
//!    what the kill cut on top, and the dead replica's lease returned once
//!    it expired (nothing held).
//! 2. **Load** (figures, not assertions): one replica without `[cluster]`
//!    and `N` replicas with it, each on a hot hard budget; closed-loop
//!    throughput of each and their ratio; then 1,000 requests/s at
//!    constant arrival to each, interleaved second by second, and the p99
//!    the cluster adds; and the ledger's transactions per second.
//! 3. **Catalog** (figures): models added through one replica's admin API,
//!    and the time until every other replica serves each (the issue's 1 s
//!    propagation; a notification, else the re-read every second).
//!
//! `cluster --gateway-bin PATH --out FILE [--replicas N] [--quick]`

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use modelfleet_benches::load::{Gateway, closed_loop, constant_arrival, percentiles, start_gateway};
use modelfleet_mock_upstream::{Behavior, MockUpstream};
use serde_json::json;

struct Args {
    gateway_bin: PathBuf,
    out: PathBuf,
    replicas: usize,
    quick: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut gateway_bin, mut out, mut replicas, mut quick) = (None, None, 3, false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--gateway-bin" => gateway_bin = args.next().map(PathBuf::from),
            "--out" => out = args.next().map(PathBuf::from),
            "--replicas" => {
                replicas = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| (2..=8).contains(n))
                    .ok_or("--replicas takes a number from 2 to 8")?;
            }
            "--quick" => quick = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        gateway_bin: gateway_bin.ok_or("--gateway-bin PATH is required")?,
        out: out.ok_or("--out FILE is required")?,
        replicas,
        quick,
    })
}

/// Each answer: 12 output tokens (the mock's) at $1,000 per million, no
/// input price: $0.012, exactly its hold with `max_tokens` 12.
const COST_NANOS: i64 = 12_000_000;
const BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"a short question"}],"max_tokens":12}"#;

/// A replica's config: the mock's model `m` under a hard global budget of
/// `limit` dollars; with `schema`, in the cluster.
fn config(dir: &Path, name: &str, mock: &str, limit: &str, cluster: Option<(&str, &str)>) -> Result<PathBuf, String> {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n\n[store]\npath = \"{}\"\n\n[[providers]]\nname = \"mock\"\nkind = \
         \"openai\"\nbase_url = \"{mock}\"\n\n[[models]]\nid = \"m\"\nprovider = \"mock\"\ncontext_window = 8192\n\
         max_output_tokens = 16\ninput_price_per_mtok = \"0\"\noutput_price_per_mtok = \"1000\"\nquality = 0.7\n\
         languages = [\"en\"]\ncategories = [\"general\"]\n\n[cache]\nenabled = false\n\n\
         [[budgets]]\nscope = \"global\"\nperiod = \"monthly\"\nlimit = \"{limit}\"\nenforcement = \"hard\"\n",
        dir.join(format!("{name}.db")).display(),
    );
    if let Some((url, schema)) = cluster {
        let _ = write!(
            text,
            "\n[cluster]\npostgres_url = \"{url}\"\nschema = \"{schema}\"\nreplica = \"{name}\"\ntimeout_ms = 2000\n\
             lease_ttl_ms = 8000\n"
        );
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

/// Dollars as `x-modelfleet-cost` writes them, in nanos.
fn nanos(dollars: &str) -> Option<i64> {
    let (whole, fraction) = dollars.split_once('.').unwrap_or((dollars, ""));
    if fraction.len() > 9 {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let fraction: i64 = if fraction.is_empty() { 0 } else { format!("{fraction:0<9}").parse().ok()? };
    whole.checked_mul(1_000_000_000)?.checked_add(fraction)
}

/// The shared ledger's (spent, held) on the global budget, nanos.
async fn ledger(db: &tokio_postgres::Client, schema: &str) -> Result<(i64, i64), String> {
    let row = db
        .query_opt(&format!("SELECT spent_nanos, held_nanos FROM {schema}.budget_periods WHERE scope = 'global'"), &[])
        .await
        .map_err(|e| format!("reading the shared ledger: {e}"))?;
    Ok(row.map_or((0, 0), |row| (row.get(0), row.get(1))))
}

/// How one request of the kill burst ended.
enum Outcome {
    /// Answered, charged this much.
    Served(i64),
    /// Refused with this status (429: the budget).
    Refused(u16),
    /// No answer: cut by the kill.
    Cut,
}

async fn send(client: &reqwest::Client, url: &str) -> Outcome {
    let sent = client.post(url).header("content-type", "application/json").body(BODY).send().await;
    let Ok(response) = sent else { return Outcome::Cut };
    let status = response.status();
    let cost = response.headers().get("x-modelfleet-cost").and_then(|v| v.to_str().ok()).and_then(nanos);
    if response.bytes().await.is_err() {
        return Outcome::Cut;
    }
    match (status.is_success(), cost) {
        (true, Some(cost)) => Outcome::Served(cost),
        (true, None) => Outcome::Served(i64::MAX),
        (false, _) => Outcome::Refused(status.as_u16()),
    }
}

/// Phase 1: the burst, the kill, and what the ledger says after.
async fn kill_phase(
    args: &Args,
    dir: &Path,
    mock: &MockUpstream,
    db: &tokio_postgres::Client,
    url: &str,
) -> Result<(serde_json::Value, Vec<String>), String> {
    let schema = format!("loadtest_kill_{}", std::process::id());
    let limit_nanos = 50 * COST_NANOS;
    let mut replicas: Vec<Option<Gateway>> = Vec::new();
    for i in 0..args.replicas {
        let path = config(dir, &format!("kill{i}"), &mock.base_url(), "0.60", Some((url, &schema)))?;
        replicas.push(Some(start_gateway(&args.gateway_bin, &path, None)?));
    }
    let urls: Vec<String> =
        replicas.iter().flatten().map(|g| format!("http://{}/v1/chat/completions", g.addr)).collect();
    let client = reqwest::Client::builder().pool_max_idle_per_host(512).build().map_err(|e| e.to_string())?;
    let answered = Arc::new(AtomicU64::new(0));
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..300 {
        let (client, url, answered) = (client.clone(), urls[i % urls.len()].clone(), Arc::clone(&answered));
        burst.spawn(async move {
            let outcome = send(&client, &url).await;
            answered.fetch_add(1, Ordering::Relaxed);
            outcome
        });
    }
    // Mid-burst: once a tenth of the answers are in.
    let deadline = Instant::now() + Duration::from_mins(1);
    while answered.load(Ordering::Relaxed) < 30 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let killed_after = answered.load(Ordering::Relaxed);
    if let Some(mut victim) = replicas.last_mut().and_then(Option::take) {
        victim.child.kill().map_err(|e| format!("SIGKILL: {e}"))?;
        let _ = victim.child.wait();
    }
    let (mut served, mut acknowledged, mut refused, mut other, mut cut) = (0_i64, 0_i64, 0, 0, 0_i64);
    while let Some(outcome) = burst.join_next().await {
        match outcome.map_err(|e| e.to_string())? {
            Outcome::Served(cost) => {
                served += 1;
                acknowledged = acknowledged.saturating_add(cost);
            }
            Outcome::Refused(429 | 503) => refused += 1,
            Outcome::Refused(_) => other += 1,
            Outcome::Cut => cut += 1,
        }
    }
    let (spent_now, held_now) = ledger(db, &schema).await?;
    // The dead replica's lease expires (4 s) and is swept by the others.
    let waited = Instant::now();
    let (mut spent, mut held) = (spent_now, held_now);
    while held != 0 && waited.elapsed() < Duration::from_mins(1) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        (spent, held) = ledger(db, &schema).await?;
    }
    let returned_after = waited.elapsed().as_secs_f64();
    drop(replicas);
    let _ = db.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
    let mut failures = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    check(served <= 50, format!("{served} answers served on a budget with room for 50"));
    check(spent <= limit_nanos, format!("the shared ledger spent {spent} nanos, past its limit of {limit_nanos}"));
    check(acknowledged <= spent, format!("acknowledged {acknowledged} nanos, but the shared ledger has {spent}"));
    check(
        spent <= acknowledged + cut * COST_NANOS,
        format!("the ledger's {spent} nanos pass acknowledged {acknowledged} + {cut} cut × {COST_NANOS}"),
    );
    check(
        held == 0,
        format!("{held} nanos still held a minute after the kill: the dead replica's lease never returned"),
    );
    check(other == 0, format!("{other} requests failed otherwise than 429, 503 (the store slow) or cut by the kill"));
    Ok((
        json!({
            "replicas": args.replicas,
            "requests": 300,
            "budget_room": 50,
            "killed_after_answers": killed_after,
            "served": served,
            "refused_429_or_503": refused,
            "cut_by_kill": cut,
            "acknowledged_nanos": acknowledged,
            "ledger_spent_nanos": spent,
            "ledger_held_at_end_of_burst_nanos": held_now,
            "lease_returned_after_secs": returned_after,
            "passed": failures.is_empty(),
        }),
        failures,
    ))
}

/// The replicas' calls to the shared ledger so far and their time in
/// all (seconds), from their `/metrics`.
async fn ledger_calls(client: &reqwest::Client, replicas: &[Gateway]) -> Result<(f64, f64), String> {
    let (mut calls, mut seconds) = (0.0, 0.0);
    for replica in replicas {
        let text = client
            .get(format!("http://{}/metrics", replica.addr))
            .send()
            .await
            .map_err(|e| format!("reading /metrics: {e}"))?
            .text()
            .await
            .map_err(|e| format!("reading /metrics: {e}"))?;
        let value = |name: &str| {
            text.lines().find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok()).unwrap_or(0.0)
        };
        calls += value("modelfleet_cluster_ledger_calls_total");
        seconds += value("modelfleet_cluster_ledger_seconds_total");
    }
    Ok((calls, seconds))
}

/// Phase 2: one replica without the cluster against `N` with it.
async fn load_phase(
    args: &Args,
    dir: &Path,
    mock: &MockUpstream,
    db: &tokio_postgres::Client,
    url: &str,
) -> Result<serde_json::Value, String> {
    let schema = format!("loadtest_hot_{}", std::process::id());
    let single_path = config(dir, "single", &mock.base_url(), "1000000", None)?;
    let single = start_gateway(&args.gateway_bin, &single_path, None)?;
    let mut replicas = Vec::new();
    for i in 0..args.replicas {
        let path = config(dir, &format!("hot{i}"), &mock.base_url(), "1000000", Some((url, &schema)))?;
        replicas.push(start_gateway(&args.gateway_bin, &path, None)?);
    }
    let single_url = vec![format!("http://{}/v1/chat/completions", single.addr)];
    let cluster_urls: Vec<String> = replicas.iter().map(|g| format!("http://{}/v1/chat/completions", g.addr)).collect();
    let client =
        reqwest::Client::builder().pool_max_idle_per_host(256).tcp_nodelay(true).build().map_err(|e| e.to_string())?;
    let (seconds, blocks) = if args.quick { (2, 2) } else { (10, 10) };
    let sent = Arc::new(AtomicU64::new(0));
    closed_loop(&client, &single_url, 16, Duration::from_secs(1), &sent, u64::MAX).await;
    closed_loop(&client, &cluster_urls, 16, Duration::from_secs(1), &sent, u64::MAX).await;
    let duration = Duration::from_secs(seconds);
    let (single_done, single_failed, single_secs) =
        closed_loop(&client, &single_url, 32, duration, &sent, u64::MAX).await;
    let (calls_before, seconds_before) = ledger_calls(&client, &replicas).await?;
    let (cluster_done, cluster_failed, cluster_secs) =
        closed_loop(&client, &cluster_urls, 32, duration, &sent, u64::MAX).await;
    let (calls_after, seconds_after) = ledger_calls(&client, &replicas).await?;
    let ledger_tps = (calls_after - calls_before) / cluster_secs;
    let ledger_mean_ms = (seconds_after - seconds_before) * 1e3 / (calls_after - calls_before).max(1.0);
    let single_rps = single_done as f64 / single_secs;
    let cluster_rps = cluster_done as f64 / cluster_secs;
    let mut single_h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut cluster_h = single_h.clone();
    let (mut single_lat_failed, mut cluster_lat_failed) = (0, 0);
    for _ in 0..blocks {
        let (h, f) = constant_arrival(&client, &single_url, 1_000, Duration::from_secs(1)).await?;
        single_h.add(&h).map_err(|e| e.to_string())?;
        single_lat_failed += f;
        let (h, f) = constant_arrival(&client, &cluster_urls, 1_000, Duration::from_secs(1)).await?;
        cluster_h.add(&h).map_err(|e| e.to_string())?;
        cluster_lat_failed += f;
    }
    let added = |q: f64| cluster_h.value_at_quantile(q) as f64 - single_h.value_at_quantile(q) as f64;
    let catalog = catalog_phase(args, &client, &replicas).await?;
    let (hot_spent, hot_held) = ledger(db, &schema).await?;
    drop(replicas);
    drop(single);
    let _ = db.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await;
    Ok(json!({
        "replicas": args.replicas,
        "single": {"requests": single_done, "failed": single_failed, "requests_per_second": single_rps},
        "cluster": {
            "requests": cluster_done,
            "failed": cluster_failed,
            "requests_per_second": cluster_rps,
            "ledger_transactions_per_second": ledger_tps,
            "ledger_mean_ms": ledger_mean_ms,
        },
        "ratio": cluster_rps / single_rps.max(1.0),
        "target_ratio": 0.7,
        "latency_1000rps": {
            "single": percentiles(&single_h),
            "cluster": percentiles(&cluster_h),
            "single_failed": single_lat_failed,
            "cluster_failed": cluster_lat_failed,
            "added_p50_us": added(0.50),
            "added_p99_us": added(0.99),
            "target_added_p99_us": 2000,
        },
        "ledger_spent_nanos": hot_spent,
        "ledger_held_nanos": hot_held,
        "catalog": catalog,
    }))
}

/// Phase 3: a model added on the first replica, timed from the request
/// until every other replica's admin API shows it (polled every 2 ms).
async fn catalog_phase(
    args: &Args,
    client: &reqwest::Client,
    replicas: &[Gateway],
) -> Result<serde_json::Value, String> {
    let edits = if args.quick { 5 } else { 20 };
    let mut took = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut late = 0;
    for i in 0..edits {
        let id = format!("edit-{}-{i}", std::process::id());
        let spec = json!({"id": id, "provider": "mock", "context_window": 8192, "categories": ["general"]});
        let started = Instant::now();
        let added = client
            .post(format!("http://{}/v1/admin/models", replicas[0].addr))
            .header("content-type", "application/json")
            .body(spec.to_string())
            .send()
            .await
            .map_err(|e| format!("adding a model: {e}"))?;
        if added.status() != 201 {
            return Err(format!("adding a model: {}", added.status()));
        }
        for replica in &replicas[1..] {
            let url = format!("http://{}/v1/admin/models/{id}", replica.addr);
            loop {
                let seen = client.get(&url).send().await.map_err(|e| format!("reading a model: {e}"))?.status();
                if seen == 200 {
                    break;
                }
                if started.elapsed() > Duration::from_secs(10) {
                    late += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            took.record(micros.max(1)).map_err(|e| e.to_string())?;
        }
    }
    Ok(json!({
        "edits": edits,
        "replicas_reached": took.len(),
        "not_within_10_s": late,
        "propagation": percentiles(&took),
        "target_ms": 1000,
    }))
}

async fn run(args: Args) -> Result<(serde_json::Value, Vec<String>), String> {
    let url = std::env::var("MODELFLEET_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("PostgreSQL at MODELFLEET_TEST_POSTGRES is needed: {e}"))?;
    tokio::spawn(connection);
    let mock = MockUpstream::start().await.map_err(|e| format!("mock upstream: {e}"))?;
    // Calls take a while, so the kill finds some in flight.
    mock.set("m", Behavior { latency: Duration::from_millis(20), ..Behavior::default() });
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    eprintln!("kill: {} replicas, 300 requests on room for 50, the last replica SIGKILLed mid-burst…", args.replicas);
    let (kill, failures) = kill_phase(&args, dir.path(), &mock, &db, &url).await?;
    mock.set("m", Behavior::default());
    eprintln!("load: one replica without a cluster, then {} with one, on a hot hard budget…", args.replicas);
    let load = load_phase(&args, dir.path(), &mock, &db, &url).await?;
    mock.shutdown().await;
    Ok((json!({"quick": args.quick, "kill": kill, "load": load}), failures))
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("error: {message}\nusage: cluster --gateway-bin PATH --out FILE [--replicas N] [--quick]");
            return ExitCode::from(2);
        }
    };
    let out = args.out.clone();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok((report, failures)) => {
            if let Err(e) = std::fs::write(&out, report.to_string()) {
                eprintln!("error: writing {}: {e}", out.display());
                return ExitCode::FAILURE;
            }
            for failure in &failures {
                eprintln!("FAILED: {failure}");
            }
            if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
