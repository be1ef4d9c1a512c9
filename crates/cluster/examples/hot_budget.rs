//! Measures the shared ledger on one hot hard budget: holds and
//! settlements per second as concurrent callers (replicas' requests in
//! flight) grow, once with a hold per request and once with each caller
//! taking a slice (a lease) that covers `LEASE` requests, as the design in
//! `docs/scale-out.md` proposes. A measured model for that document, not a
//! CI check: `cargo run --release -p modelfleet-cluster --example hot_budget`
//! (PostgreSQL at `MODELFLEET_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/test`; it uses a schema of its own
//! and drops it).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use modelfleet_cluster::{BudgetKey, SharedLedger};
use modelfleet_registry::Money;

/// Requests one lease covers.
const LEASE: u64 = 20;
/// How long each measurement runs.
const RUN: Duration = Duration::from_secs(3);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("MODELFLEET_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("hot_budget_{}", std::process::id());
    let ledger = SharedLedger::connect(&url, &schema, "bench", Duration::from_secs(5)).await?;
    let key = BudgetKey { scope: "global".into(), period: "monthly".into(), period_start_ms: 0 };
    // A limit no run reaches: every hold is granted, as on a budget with room.
    ledger.define(&key, Money::from_nanos(i64::MAX / 4)).await?;
    println!(
        "| callers | per request: requests/s | p50 ms | with leases of {LEASE}: requests/s | ledger transactions/s |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for callers in [1_u64, 4, 16, 64] {
        let (per_request, p50) = measure(&ledger, &key, callers, 1).await;
        let (leased, _) = measure(&ledger, &key, callers, LEASE).await;
        println!(
            "| {callers} | {per_request:.0} | {p50:.2} | {leased:.0} | {:.0} |",
            leased / f64::from(u32::try_from(LEASE).unwrap_or(1)) * 2.0
        );
    }
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await?;
    Ok(())
}

/// Requests per second (and the median hold-and-settle time, ms) with
/// `callers` concurrent callers, each hold covering `per_hold` requests.
async fn measure(ledger: &SharedLedger, key: &BudgetKey, callers: u64, per_hold: u64) -> (f64, f64) {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (ledger, key, done) = (ledger.clone(), key.clone(), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            while started.elapsed() < RUN {
                let t = Instant::now();
                let amount = Money::from_nanos(1_000 * i64::try_from(per_hold).unwrap_or(1));
                let Ok(hold) = ledger.hold(std::slice::from_ref(&key), amount, Duration::from_mins(1)).await else {
                    continue;
                };
                if ledger.settle(&hold, amount).await.is_ok() {
                    done.fetch_add(per_hold, Ordering::Relaxed);
                    times.push(t.elapsed());
                }
            }
            times
        }));
    }
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await.unwrap_or_default());
    }
    times.sort();
    let p50 = times.get(times.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1_000.0);
    #[allow(clippy::cast_precision_loss)]
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    (rate, p50)
}
