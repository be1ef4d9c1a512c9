//! `modelfleet cluster status`: what the replicas of a `[cluster]` share,
//! read from its PostgreSQL: the store's round trip, the replicas seen
//! (their heartbeats, with each one's view of the store), every hard
//! budget's money, and the holds and leases open.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use clap::Subcommand;
use modelfleet::cluster::{HoldRow, PeriodRow, ReplicaRow, SharedLedger};
use serde_json::{Value, json};

#[derive(Subcommand, Debug)]
pub(crate) enum ClusterAction {
    /// The shared store's round trip, the replicas seen in the last 30 s,
    /// each hard budget's limit, spent and held, and the open leases.
    Status {
        /// The configuration file with `[cluster]` (its URL may come from the environment).
        #[arg(long)]
        config: std::path::PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Replicas silent longer than this are not listed.
const SEEN_WITHIN: Duration = Duration::from_secs(30);

pub(crate) fn run(action: ClusterAction) -> anyhow::Result<()> {
    let ClusterAction::Status { config, json } = action;
    let settings = cluster_settings(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let status = runtime.block_on(async {
        // Read only: nothing is created or migrated.
        let ledger =
            SharedLedger::inspect(&settings.postgres_url, &settings.schema, Duration::from_millis(settings.timeout_ms))
                .await
                .context("the shared store ([cluster] postgres_url)")?;
        // The round trip: the best of three reads of the replicas.
        let mut best = Duration::MAX;
        let mut replicas = Vec::new();
        for _ in 0..3 {
            let started = std::time::Instant::now();
            replicas = ledger.replicas(SEEN_WITHIN).await?;
            best = best.min(started.elapsed());
        }
        let periods = ledger.periods(50).await?;
        let holds = ledger.holds(100).await?;
        let catalog = ledger.catalog().load().await?;
        let mut status = status_json(&settings.schema, best, &replicas, &periods, &holds);
        status["catalog"] = catalog_json(&catalog);
        anyhow::Ok(status)
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status_text(&status));
    }
    Ok(())
}

/// `[cluster]` of the configuration at `path`, validated.
pub(crate) fn cluster_settings(path: &Path) -> anyhow::Result<modelfleet::config::ClusterSettings> {
    let env = |name: &str| std::env::var(name).ok();
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let options =
        modelfleet::config::Options { env: &env, check_files: false, check_ports: false, check_tools: false, base_dir };
    let report = modelfleet::config::validate_file(path, &options);
    let problems = report.to_string();
    let config = report.config.with_context(|| format!("{}: {problems}", path.display()))?;
    config.cluster.with_context(|| format!("{}: has no [cluster]: replicas share nothing", path.display()))
}

fn dollars(money: modelfleet::registry::Money) -> String {
    format!("${money}")
}

fn status_json(
    schema: &str,
    round_trip: Duration,
    replicas: &[ReplicaRow],
    periods: &[(modelfleet::cluster::BudgetKey, PeriodRow)],
    holds: &[HoldRow],
) -> Value {
    json!({
        "schema": schema,
        "round_trip_ms": round_trip.as_secs_f64() * 1e3,
        "replicas": replicas.iter().map(|r| json!({
            "name": r.name,
            "up_secs": r.up_ms / 1_000,
            "last_seen_ms": r.silent_ms,
            "leases_open": r.leases_open,
            "ledger_calls": r.stats.calls,
            "ledger_failures": r.stats.failures,
            "ledger_mean_ms": if r.stats.calls == 0 { 0.0 } else { r.stats.micros as f64 / r.stats.calls as f64 / 1e3 },
        })).collect::<Vec<_>>(),
        "budgets": periods.iter().map(|(key, row)| json!({
            "scope": key.scope,
            "period": key.period,
            "period_start_ms": key.period_start_ms,
            "limit": dollars(row.limit),
            "spent": dollars(row.spent),
            "held": dollars(row.held),
        })).collect::<Vec<_>>(),
        "holds": holds.iter().map(|h| json!({
            "replica": h.replica,
            "kind": if h.lease { "lease" } else { "hold" },
            "amount": dollars(h.amount),
            "spent": dollars(h.spent),
            "in_flight": dollars(h.in_flight),
            "expires_in_ms": h.expires_in_ms,
            "budgets": h.budgets,
        })).collect::<Vec<_>>(),
    })
}

/// The shared catalog: its revision, and its models by source.
fn catalog_json(catalog: &modelfleet::cluster::CatalogState) -> Value {
    let from = |source| catalog.models.iter().filter(|m| m.source == source).count();
    json!({
        "revision": catalog.revision,
        "models": catalog.models.len(),
        "from_config": from(modelfleet::cluster::ModelSource::Config),
        "from_api": from(modelfleet::cluster::ModelSource::Api),
        "unreadable": catalog.unreadable.iter().map(|(id, why)| json!({"id": id, "why": why})).collect::<Vec<_>>(),
    })
}

fn status_text(status: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "shared store: PostgreSQL, schema {}, round trip {:.2} ms",
        status["schema"].as_str().unwrap_or_default(),
        status["round_trip_ms"].as_f64().unwrap_or_default()
    );
    let rows = |key: &str| status[key].as_array().cloned().unwrap_or_default();
    let catalog = &status["catalog"];
    let _ = writeln!(
        out,
        "catalog: revision {}, {} models ({} from the configuration, {} through the admin API)",
        catalog["revision"], catalog["models"], catalog["from_config"], catalog["from_api"]
    );
    for bad in catalog["unreadable"].as_array().cloned().unwrap_or_default() {
        let _ = writeln!(
            out,
            "  left out: {} ({})",
            bad["id"].as_str().unwrap_or_default(),
            bad["why"].as_str().unwrap_or_default()
        );
    }
    let replicas = rows("replicas");
    let _ = writeln!(out, "\nreplicas seen in the last {} s: {}", SEEN_WITHIN.as_secs(), replicas.len());
    for r in &replicas {
        let _ = writeln!(
            out,
            "  {:<24} up {:>6} s, seen {:>5} ms ago, {:>3} leases, {:>8} ledger calls ({} failed, {:.2} ms each)",
            r["name"].as_str().unwrap_or_default(),
            r["up_secs"],
            r["last_seen_ms"],
            r["leases_open"],
            r["ledger_calls"],
            r["ledger_failures"],
            r["ledger_mean_ms"].as_f64().unwrap_or_default()
        );
    }
    let budgets = rows("budgets");
    let _ = writeln!(out, "\nhard budgets: {}", budgets.len());
    for b in &budgets {
        let _ = writeln!(
            out,
            "  {:<28} {:<8} limit {:>14}  spent {:>14}  held {:>14}",
            b["scope"].as_str().unwrap_or_default(),
            b["period"].as_str().unwrap_or_default(),
            b["limit"].as_str().unwrap_or_default(),
            b["spent"].as_str().unwrap_or_default(),
            b["held"].as_str().unwrap_or_default()
        );
    }
    let holds = rows("holds");
    let _ = writeln!(out, "\nholds and leases open: {}", holds.len());
    for h in &holds {
        let _ = writeln!(
            out,
            "  {:<24} {:<5} {:>14} (spent {}, in flight {}), expires in {} ms, on {}",
            h["replica"].as_str().unwrap_or_default(),
            h["kind"].as_str().unwrap_or_default(),
            h["amount"].as_str().unwrap_or_default(),
            h["spent"].as_str().unwrap_or_default(),
            h["in_flight"].as_str().unwrap_or_default(),
            h["expires_in_ms"],
            h["budgets"]
                .as_array()
                .map(|b| b.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        );
    }
    out
}
