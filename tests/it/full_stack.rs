//! The full stack through the facade, with simulated or scripted providers:
//! fallback under failures, a circuit opening and closing, budget refusal at
//! the hard limit, and a restart that restores catalog, statistics and spend.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use modelfleet::{
    Fleet, FleetError, FleetOptions, ModelResponse, Request, SimProfile, Simulator, Usage,
    budget::{BudgetSpec, Period, Scope},
    errors::{ErrorClass, Failure},
    fallback::CircuitState,
    registry::{Category, ModelSpec, Money, Pricing},
    selector::{Locality, Requirements},
};

fn options(dir: &tempfile::TempDir) -> FleetOptions {
    FleetOptions { db_path: Some(dir.path().join("fleet.db")), ..FleetOptions::default() }
}

fn model(id: &str, price: &str, priority: u8) -> ModelSpec {
    let mut m = ModelSpec::new(id, "sim");
    m.categories = vec![Category::General];
    m.context_window = Some(32_000);
    m.max_output_tokens = Some(4_000);
    m.quality = Some(0.8);
    m.priority = priority;
    m.languages = vec!["en".into()];
    m.pricing = Some(Pricing {
        input_per_mtok: price.parse().unwrap(),
        output_per_mtok: price.parse().unwrap(),
        cached_input_per_mtok: None,
    });
    m
}

#[allow(clippy::unnecessary_wraps)] // the type a model call returns
fn ok(tokens: u64) -> Result<ModelResponse<&'static str>, Failure> {
    Ok(ModelResponse { value: "ok", usage: Usage { input_tokens: tokens, output_tokens: tokens, cached_tokens: 0 } })
}

#[tokio::test(start_paused = true)]
async fn a_failing_model_is_replaced_by_a_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let models = modelfleet::registry::default_catalog().unwrap();
    // The first choice for this request always fails with a 500.
    let fleet = Fleet::open(FleetOptions { models: Some(models.clone()), ..options(&dir) }).await.unwrap();
    let request = Request {
        requirements: Requirements {
            category: Some(Category::Code),
            language: Some("en".into()),
            prompt_tokens: 500,
            max_output_tokens: 200,
            ..Requirements::default()
        },
        ..Request::default()
    };
    let first = fleet.rank(&request).unwrap()[0].0.clone();
    let broken = SimProfile { server_error: 1.0, ..SimProfile::default() };
    let simulator = Simulator::mirroring(&models, 7).with_profile(&first, broken);
    let simulator = &simulator;
    let served =
        fleet.call(&request, |m, ctx| async move { simulator.complete(&m, 500, 200, ctx).await }).await.unwrap();
    assert_ne!(served.model, first);
    assert!(served.fell_back);
    assert_eq!(served.attempts[0].model, first);
    assert_eq!(served.attempts[0].error, Some(ErrorClass::ServerError));
    assert!(served.cost > Money::ZERO, "priced exactly from the reported usage");
    assert_eq!(fleet.monitor().model_stats(&first).totals.failures, 1, "the failed attempt is recorded");
    fleet.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_circuit_opens_under_failures_and_closes_after_probes() {
    let dir = tempfile::tempdir().unwrap();
    let models = vec![model("primary", "1", 90), model("backup", "2", 10)];
    // Escalating cooldowns would take the failing model out after two
    // failures, before the circuit sees ten requests: off here, to test the circuit.
    let tracker = modelfleet::fallback::TrackerConfig {
        cooldown: modelfleet::fallback::CooldownConfig { escalate_after: u32::MAX, ..Default::default() },
        ..Default::default()
    };
    let fleet = Fleet::open(FleetOptions {
        models: Some(models),
        strategy: modelfleet::fallback::FallbackStrategy::Priority,
        tracker,
        ..options(&dir)
    })
    .await
    .unwrap();
    let failing = AtomicBool::new(true);
    let primary_calls = AtomicU32::new(0);
    let request = Request::default();
    for _ in 0..15 {
        let served = fleet
            .call(&request, |m, _| {
                if m.id == "primary" {
                    primary_calls.fetch_add(1, Ordering::Relaxed);
                }
                let fail = m.id == "primary" && failing.load(Ordering::Relaxed);
                async move { if fail { Err(Failure::new(ErrorClass::ServerError, "down")) } else { ok(10) } }
            })
            .await
            .unwrap();
        assert_eq!(served.model, "backup");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fleet.circuit("primary"), CircuitState::Open);
    // Tried until its tenth failure opened the circuit (min_requests), then skipped.
    assert_eq!(primary_calls.load(Ordering::Relaxed), 10);
    // While open, the primary is not called at all.
    primary_calls.store(0, Ordering::Relaxed);
    let served = fleet
        .call(&request, |m, _| {
            if m.id == "primary" {
                primary_calls.fetch_add(1, Ordering::Relaxed);
            }
            async { ok(10) }
        })
        .await
        .unwrap();
    assert_eq!((served.model.as_str(), primary_calls.load(Ordering::Relaxed)), ("backup", 0));
    // It recovers; after the open period, probes succeed and close the circuit.
    failing.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(61)).await;
    for _ in 0..3 {
        let served = fleet.call(&request, |_, _| async { ok(10) }).await.unwrap();
        assert_eq!(served.model, "primary");
    }
    assert_eq!(fleet.circuit("primary"), CircuitState::Closed);
    fleet.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_hard_budget_refuses_at_its_limit_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::open(FleetOptions {
        models: Some(vec![model("paid", "1000", 50)]), // $1,000 per Mtok: 1,000 tokens = $1
        budgets: vec![BudgetSpec::hard(Scope::Global, Period::Monthly, Money::from_dollars(2))],
        ..options(&dir)
    })
    .await
    .unwrap();
    let request = Request {
        requirements: Requirements {
            prompt_tokens: 500,
            max_output_tokens: 500,
            locality: Locality::CloudOnly,
            ..Requirements::default()
        },
        ..Request::default()
    };
    for _ in 0..2 {
        fleet.call(&request, |_, _| async { ok(500) }).await.unwrap();
    }
    let status = fleet.budgets().status(&Scope::Global).unwrap();
    assert_eq!(status.spent, Money::from_dollars(2), "spend reached the limit exactly");
    let err = fleet.call(&request, |_, _| async { ok(500) }).await.unwrap_err();
    match err {
        FleetError::NotServed { class, message, .. } => {
            assert_eq!(class, Some(ErrorClass::BudgetExceeded));
            assert!(message.contains("budget exceeded for global: limit $2, spent $2"), "{message}");
        }
        other => panic!("expected a budget refusal, got {other}"),
    }
    fleet.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_restart_restores_catalog_statistics_and_spend() {
    let dir = tempfile::tempdir().unwrap();
    let budget = BudgetSpec::hard(Scope::Global, Period::Monthly, Money::from_dollars(100));
    {
        let fleet = Fleet::open(FleetOptions { budgets: vec![budget.clone()], ..options(&dir) }).await.unwrap();
        fleet.catalog().add(model("custom", "3", 100)).unwrap();
        let request = Request {
            requirements: Requirements { providers: vec!["sim".into()], ..Requirements::default() },
            ..Request::default()
        };
        for _ in 0..5 {
            assert_eq!(fleet.call(&request, |_, _| async { ok(1_000) }).await.unwrap().model, "custom");
        }
        fleet.shutdown().await.unwrap();
    }
    let fleet = Fleet::open(FleetOptions { budgets: vec![budget], ..options(&dir) }).await.unwrap();
    assert!(fleet.catalog().get("custom").is_some(), "the added model survived the restart");
    assert!(fleet.catalog().get("claude-3-haiku").is_some(), "with the default catalog");
    let history = fleet.report().unwrap().history;
    let custom = history.iter().find(|u| u.model == "custom").unwrap();
    assert_eq!(custom.requests, 5);
    // 5 calls × 2,000 tokens at $3/Mtok = $0.03.
    assert_eq!(custom.cost, "0.03".parse().unwrap());
    assert_eq!(fleet.budgets().status(&Scope::Global).unwrap().spent, "0.03".parse().unwrap(), "spend restored");
    fleet.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn health_and_exports_cover_the_stack() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Arc::new(Fleet::open(options(&dir)).await.unwrap());
    let health = fleet.health().await;
    let names: Vec<&str> = health.services.iter().map(|s| s.name.as_str()).collect();
    // Layers in dependency order, each sorted by name.
    assert_eq!(names, ["store", "budgets", "catalog", "metrics", "monitor", "router"], "start order");
    assert_eq!(health.overall, modelfleet::service_registry::HealthStatus::Healthy);
    fleet.call(&Request::default(), |_, _| async { ok(10) }).await.unwrap();
    let json = fleet.metrics_json(&modelfleet::metrics::Category::ALL);
    assert_eq!(json["throughput"]["total_requests"], 1);
    let text = fleet.metrics_prometheus(&modelfleet::metrics::Category::ALL);
    assert!(text.contains("modelfleet_requests_total 1\n"));
    fleet.shutdown().await.unwrap();
    fleet.shutdown().await.unwrap(); // twice is fine
}
