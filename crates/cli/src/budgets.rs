//! `modelfleet budgets`: list, set, reset and remove budgets, in a stopped
//! gateway's database (`--db`) or through a running gateway's admin API
//! (`--gateway`).
//!
//! A running gateway keeps its budgets in memory: an edit of its database
//! would reach it only at its next start. So while a gateway serves the
//! database (it says where in a file beside it), the commands go through its
//! admin API by themselves; `--gateway` names one explicitly. Budgets from a configuration file are the file's to change;
//! these commands edit the others (`source: api`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use modelfleet::{
    BudgetView, Fleet, FleetOptions,
    budget::{BudgetSpec, Enforcement, Period, Scope},
    registry::Money,
};
use serde_json::{Value, json};

/// Where the budgets live.
#[derive(Args, Debug, Clone)]
pub(crate) struct Target {
    /// The database (a gateway serving it is edited through its admin API).
    #[arg(long, conflicts_with = "gateway")]
    db: Option<PathBuf>,
    /// A running gateway's base URL (e.g. http://127.0.0.1:8080): the change goes through its admin API.
    #[arg(long)]
    gateway: Option<String>,
    /// The environment variable holding an admin key for a gateway with keys.
    #[arg(long, default_value = "MODELFLEET_ADMIN_KEY")]
    key_env: String,
}

#[derive(Subcommand, Debug)]
pub(crate) enum BudgetsAction {
    /// Every budget: spent, held, left, its forecast and where it was defined.
    List {
        #[command(flatten)]
        target: Target,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Adds a budget, or changes an existing one's limit.
    Set {
        /// global, key:NAME, provider:NAME or model:NAME.
        scope: Scope,
        /// daily, weekly, monthly or lifetime.
        period: Period,
        /// The limit in dollars (e.g. 25.00).
        limit: Money,
        /// Only alert at the thresholds, never refuse (for a new budget).
        #[arg(long)]
        soft: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Starts a budget's current period over at zero (recorded with who and when).
    Reset {
        /// The budget's scope.
        scope: Scope,
        /// The budget's period.
        period: Period,
        #[command(flatten)]
        target: Target,
    },
    /// Removes a budget (its spend history stays in the database).
    Remove {
        /// The budget's scope.
        scope: Scope,
        /// The budget's period.
        period: Period,
        #[command(flatten)]
        target: Target,
    },
}

/// Who the audit trail names for a change made here.
fn who() -> String {
    format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned()))
}

pub(crate) async fn run(action: BudgetsAction) -> anyhow::Result<()> {
    let target = match &action {
        BudgetsAction::List { target, .. }
        | BudgetsAction::Set { target, .. }
        | BudgetsAction::Reset { target, .. }
        | BudgetsAction::Remove { target, .. } => target.clone(),
    };
    if let Some(url) = &target.gateway {
        return remote(&action, url, &target.key_env).await;
    }
    // A gateway serving this database keeps its budgets in memory: go
    // through its admin API. A file left by one that died is stale: the
    // database is edited directly.
    let db = target.db.clone().unwrap_or_else(modelfleet::default_db_path);
    if let Some(url) = serving(&db) {
        match remote(&action, &url, &target.key_env).await {
            Err(err) if err.downcast_ref::<Unreachable>().is_some() => {
                eprintln!("no gateway answers at {url} (it left its address behind); editing the database");
            }
            done => return done,
        }
    }
    local(action, Some(db)).await
}

/// Where a running gateway serves `db`, if one says so.
fn serving(db: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(modelfleet_gateway::serving_file(db)).ok()?;
    let marker: Value = serde_json::from_str(&text).ok()?;
    marker.get("url").and_then(Value::as_str).map(str::to_owned)
}

/// The gateway did not answer at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach {0}")]
struct Unreachable(String);

/// Edits the database directly (the gateway must be stopped).
async fn local(action: BudgetsAction, db: Option<PathBuf>) -> anyhow::Result<()> {
    let fleet = Fleet::open(FleetOptions { db_path: db, ..FleetOptions::default() }).await?;
    let result = local_on(&fleet, action).await;
    fleet.shutdown().await?;
    result
}

async fn local_on(fleet: &Fleet, action: BudgetsAction) -> anyhow::Result<()> {
    match action {
        BudgetsAction::List { json, .. } => {
            let views = fleet.budget_views();
            crate::output::print(json, &views, || print_views(&views));
        }
        BudgetsAction::Set { scope, period, limit, soft, .. } => {
            if fleet.budgets().status(&scope, period).is_some() {
                fleet.set_budget_limit(&scope, period, limit, &who()).await?;
                println!("{scope} {period}: limit ${limit}");
            } else {
                let enforcement = if soft { Enforcement::Soft } else { Enforcement::Hard };
                let spec = BudgetSpec { enforcement, ..BudgetSpec::hard(scope.clone(), period, limit) };
                fleet.add_budget(spec, &who()).await?;
                println!("{scope} {period}: added, limit ${limit}");
            }
        }
        BudgetsAction::Reset { scope, period, .. } => {
            let spent = fleet.reset_budget(&scope, period, &who()).await?;
            println!("{scope} {period}: reset (it had spent ${spent})");
        }
        BudgetsAction::Remove { scope, period, .. } => {
            fleet.remove_budget(&scope, period, &who()).await?;
            println!("{scope} {period}: removed");
        }
    }
    Ok(())
}

/// The budget's path in the admin API.
fn path(scope: &Scope, period: Period) -> String {
    format!("/v1/admin/budgets/{scope}/{period}")
}

/// Goes through a running gateway's admin API.
async fn remote(action: &BudgetsAction, url: &str, key_env: &str) -> anyhow::Result<()> {
    // A gateway without keys (loopback only) needs none.
    let key = std::env::var(key_env).unwrap_or_default();
    let base = url.trim_end_matches('/');
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(2))
        .build()
        .context("cannot build an HTTP client")?;
    let (request, json_out) = match action {
        BudgetsAction::List { json, .. } => (client.get(format!("{base}/v1/admin/budgets")), *json),
        BudgetsAction::Set { scope, period, limit, soft, .. } => {
            let existing = client
                .get(format!("{base}{}", path(scope, *period)))
                .bearer_auth(&key)
                .send()
                .await
                .map_err(|_| Unreachable(base.to_owned()))?;
            if existing.status() == reqwest::StatusCode::NOT_FOUND {
                let enforcement = if *soft { "soft" } else { "hard" };
                let body = json!({"scope": scope, "period": period, "limit": limit, "enforcement": enforcement});
                (client.post(format!("{base}/v1/admin/budgets")).json(&body), false)
            } else {
                (client.put(format!("{base}{}", path(scope, *period))).json(&json!({"limit": limit})), false)
            }
        }
        BudgetsAction::Reset { scope, period, .. } => {
            (client.post(format!("{base}{}/reset", path(scope, *period))), false)
        }
        BudgetsAction::Remove { scope, period, .. } => {
            (client.delete(format!("{base}{}", path(scope, *period))), false)
        }
    };
    let response = request.bearer_auth(&key).send().await.map_err(|_| Unreachable(base.to_owned()))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let message = body.pointer("/error/message").and_then(Value::as_str).unwrap_or("no error message");
        anyhow::bail!("the gateway answered {status}: {message}");
    }
    match action {
        BudgetsAction::List { .. } => {
            let views: Vec<Value> = body.get("budgets").and_then(Value::as_array).cloned().unwrap_or_default();
            if json_out {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                for view in &views {
                    println!("{}", remote_line(view));
                }
            }
        }
        _ => println!("{}", remote_line(&body)),
    }
    Ok(())
}

fn remote_line(view: &Value) -> String {
    let text = |pointer: &str| view.pointer(pointer).and_then(Value::as_str).unwrap_or("?").to_owned();
    let scope = match (text("/scope/kind").as_str(), view.pointer("/scope/name").and_then(Value::as_str)) {
        (kind, Some(name)) => format!("{kind}:{name}"),
        (kind, None) => kind.to_owned(),
    };
    match view.get("removed") {
        Some(_) => "removed".to_owned(),
        None => format!(
            "{scope} {}: spent ${} of ${}, ${} held, ${} left ({})",
            text("/period"),
            text("/spent"),
            text("/limit"),
            text("/reserved"),
            text("/remaining"),
            text("/source"),
        ),
    }
}

fn print_views(views: &[BudgetView]) {
    if views.is_empty() {
        println!("no budgets");
    }
    for view in views {
        let s = &view.status;
        println!(
            "{} {}: spent ${} of ${}, ${} held, ${} left ({:?}, {:?})",
            s.spec.scope,
            s.spec.period,
            s.spent,
            s.spec.limit,
            s.reserved,
            s.remaining,
            s.spec.enforcement,
            view.source,
        );
    }
}
