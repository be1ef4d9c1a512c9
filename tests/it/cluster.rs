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

use crate::support::validated;

/// The config's environment: the test server's URL.
fn env(name: &str) -> Option<String> {
    (name == "MODELFLEET_TEST_POSTGRES_URL").then(test_url)
}

fn test_url() -> String {
    std::env::var("MODELFLEET_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn postgres_url() -> Option<String> {
    let url = test_url();
    let reachable = std::net::TcpStream::connect_timeout(&"127.0.0.1:5432".parse().unwrap(), Duration::from_secs(2))
        .is_ok()
        || std::env::var("MODELFLEET_TEST_POSTGRES").is_ok();
    if reachable {
        return Some(url);
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "PostgreSQL is not reachable: CI runs this test against it");
    eprintln!("SKIPPED: PostgreSQL is not reachable at 127.0.0.1:5432; set MODELFLEET_TEST_POSTGRES");
    None
}

/// One model whose every answer costs exactly its worst case ($0.002: 1,000
/// output tokens at $2 per million), under a hard global budget of $0.10:
/// room for exactly 50 answers, whichever replica serves them.
fn config_text(schema: &str) -> String {
    format!(
        "[[providers]]\nname = \"p\"\nkind = \"simulated\"\n\n\
         [[models]]\nid = \"m\"\nprovider = \"p\"\ncontext_window = 100000\nmax_output_tokens = 1000\n\
         input_price_per_mtok = \"1\"\noutput_price_per_mtok = \"2\"\ncategories = [\"general\"]\n\n\
         [[budgets]]\nscope = \"global\"\nperiod = \"monthly\"\nlimit = \"0.10\"\nenforcement = \"hard\"\n\n\
         [cluster]\npostgres_url_env = \"MODELFLEET_TEST_POSTGRES_URL\"\nschema = \"{schema}\"\ntimeout_ms = 30000\n"
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_never_pass_one_hard_budget() {
    let Some(url) = postgres_url() else { return };
    let schema = format!("t_replicas_{}", std::process::id());
    let mut fleets = Vec::new();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    for dir in &dirs {
        let mut config = validated(&config_text(&schema), dir.path(), env);
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
    let row = ledger.status(&key).await.unwrap().expect("defined by the first hold");
    let total = served.iter().fold(Money::ZERO, |sum, cost| sum + *cost);
    assert_eq!((row.spent, row.held), (total, Money::ZERO));
    assert_eq!(total, "0.1".parse::<Money>().unwrap());
    // A replica started with a higher limit gives it to every replica's
    // shared budget (the configuration is re-applied at start).
    let dir = tempfile::tempdir().unwrap();
    let mut config = validated(&config_text(&schema).replace("limit = \"0.10\"", "limit = \"0.11\""), dir.path(), env);
    config.store.path = Some(dir.path().join("fleet.db"));
    let raised = Fleet::open(FleetOptions::from_config(&config).unwrap()).await.unwrap();
    // An answer under its worst case is charged its cost, not its hold; an
    // unbilled failure nothing; and nothing stays held.
    let spent = |row: modelfleet_cluster::PeriodRow| (row.spent, row.held);
    let cheap = fleets[1].call(&request, half_answer).await.expect("the raised limit has room");
    assert_eq!(cheap.cost, "0.001".parse::<Money>().unwrap());
    assert_eq!(spent(ledger.status(&key).await.unwrap().unwrap()), ("0.101".parse().unwrap(), Money::ZERO));
    assert!(raised.call(&request, unbilled_failure).await.is_err());
    assert_eq!(spent(ledger.status(&key).await.unwrap().unwrap()), ("0.101".parse().unwrap(), Money::ZERO));
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
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}
