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
    // The tests run on tokio's paused clock.
    FleetOptions { db_path: Some(dir.path().join("fleet.db")), virtual_time: true, ..FleetOptions::default() }
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
    Ok(ModelResponse {
        value: "ok",
        usage: Some(Usage { input_tokens: tokens, output_tokens: tokens, cached_tokens: 0 }),
    })
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
        strategy: modelfleet::selector::Strategy::PriorityOrder,
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
            locality: Some(Locality::CloudOnly),
            ..Requirements::default()
        },
        ..Request::default()
    };
    for _ in 0..2 {
        fleet.call(&request, |_, _| async { ok(500) }).await.unwrap();
    }
    let status = fleet.budgets().status(&Scope::Global, Period::Monthly).unwrap();
    assert_eq!(status.spent, Money::from_dollars(2), "spend reached the limit exactly");
    let err = fleet.call(&request, |_, _| async { ok(500) }).await.unwrap_err();
    match err {
        FleetError::NotServed { class, message, .. } => {
            assert_eq!(class, Some(ErrorClass::BudgetExceeded));
            assert!(
                message.starts_with(
                    "budget exceeded: hard budget global monthly has $0 left, and this request could cost $1 on paid"
                ),
                "{message}"
            );
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
    let history = fleet.report().await.unwrap().history;
    let custom = history.iter().find(|u| u.model == "custom").unwrap();
    assert_eq!(custom.requests, 5);
    // 5 calls × 2,000 tokens at $3/Mtok = $0.03.
    assert_eq!(custom.cost, "0.03".parse().unwrap());
    assert_eq!(
        fleet.budgets().status(&Scope::Global, Period::Monthly).unwrap().spent,
        "0.03".parse().unwrap(),
        "spend restored"
    );
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

/// A fleet of one paid model under a hard global monthly budget.
async fn budgeted(dir: &tempfile::TempDir, models: Vec<ModelSpec>, limit: Money) -> Fleet {
    Fleet::open(FleetOptions {
        models: Some(models),
        budgets: vec![BudgetSpec::hard(Scope::Global, Period::Monthly, limit)],
        ..options(dir)
    })
    .await
    .unwrap()
}

/// The global monthly budget's spend in the ledger and in the database.
fn spent(fleet: &Fleet) -> (Money, Money) {
    let ledger = fleet.budgets().status(&Scope::Global, Period::Monthly).unwrap().spent;
    let store = fleet.store();
    let stored = tokio::task::block_in_place(|| {
        store.flush().unwrap();
        store.spend().unwrap()
    });
    (ledger, stored.iter().filter(|r| r.scope == Scope::Global).map(|r| r.spent).sum())
}

fn sized(prompt: u32) -> Request {
    Request { requirements: Requirements { prompt_tokens: prompt, ..Requirements::default() }, ..Request::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_mid_way_or_billed_in_failure_is_charged_its_worst_case() {
    let dir = tempfile::tempdir().unwrap();
    // $1,000 per Mtok, 4,000 output tokens at most: a worst case of $4 + the prompt.
    let fleet = budgeted(&dir, vec![model("a", "1000", 60), model("b", "1000", 50)], Money::from_dollars(100)).await;
    let worst = Money::from_dollars(4) + Money::from_nanos(100_000_000); // 100 prompt tokens: $0.10

    // The caller goes away while the model is answering: its usage will never
    // be known, and the provider bills it: the hold's worst case is charged.
    let request = sized(100);
    let never = fleet.call(&request, |_, _| std::future::pending::<Result<ModelResponse<&str>, Failure>>());
    assert!(tokio::time::timeout(Duration::from_millis(50), never).await.is_err());
    assert_eq!(spent(&fleet), (worst, worst));
    assert_eq!(fleet.budgets().status(&Scope::Global, Period::Monthly).unwrap().reserved, Money::ZERO);

    // A billed failure (a timeout after the request was sent) is charged the
    // worst case; the fallback that answers is charged its usage; the request
    // reports both.
    let served = fleet
        .call(&sized(100), |model, _| async move {
            if model.id == "a" { Err(Failure::new(ErrorClass::Timeout, "no answer in time").billed()) } else { ok(100) }
        })
        .await
        .unwrap();
    assert_eq!(served.model, "b");
    let answer = Money::from_nanos(200_000_000); // 200 tokens at $1,000 per Mtok
    assert_eq!(served.cost, worst + answer);
    assert_eq!(spent(&fleet), (worst + worst + answer, worst + worst + answer));
    // A failure the provider does not bill (an error answer) costs nothing.
    let err = fleet
        .call(&sized(100), |_, _| async { Err::<ModelResponse<&str>, _>(Failure::new(ErrorClass::BadRequest, "no")) })
        .await
        .unwrap_err();
    assert!(matches!(err, FleetError::NotServed { cost, .. } if cost == Money::ZERO));
    assert_eq!(spent(&fleet).0, worst + worst + answer);
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_held_at_its_worst_case_and_charged_what_it_used_or_the_hold_when_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = budgeted(&dir, vec![model("a", "1000", 60)], Money::from_dollars(100)).await;
    let worst = Money::from_dollars(4) + Money::from_nanos(100_000_000);
    let opened = fleet.call_stream(&sized(100), |_, _| async { Ok::<_, Failure>("events") }).await.unwrap();
    assert_eq!(fleet.budgets().status(&Scope::Global, Period::Monthly).unwrap().reserved, worst, "held while it runs");
    assert_eq!(opened.budget_remaining, Some(Money::from_dollars(100).saturating_sub(worst)));
    let usage = Usage { input_tokens: 100, output_tokens: 50, cached_tokens: 0 };
    let cost = opened.value.settlement.finish(usage, &modelfleet::StreamEnd::ClientGone).await;
    assert_eq!(cost, Money::from_nanos(150_000_000));
    assert_eq!(spent(&fleet), (cost, cost));
    // Dropped unfinished: nobody will say what it used, so the hold is charged.
    let opened = fleet.call_stream(&sized(100), |_, _| async { Ok::<_, Failure>("events") }).await.unwrap();
    drop(opened);
    assert_eq!(spent(&fleet), (cost + worst, cost + worst));
    assert_eq!(fleet.budgets().status(&Scope::Global, Period::Monthly).unwrap().reserved, Money::ZERO);
    fleet.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn at_the_limit_paid_models_are_refused_and_free_ones_still_serve() {
    let dir = tempfile::tempdir().unwrap();
    let mut free = model("free", "0", 10);
    free.quality = Some(0.1);
    let fleet = budgeted(&dir, vec![model("paid", "1000", 90), free], Money::from_nanos(4_100_000_000)).await;
    // The paid model's worst case ($4.10) fits exactly; it costs that much.
    let served = fleet
        .call(&sized(100), |_, _| async {
            Ok(ModelResponse {
                value: "ok",
                usage: Some(Usage { input_tokens: 100, output_tokens: 4_000, cached_tokens: 0 }),
            })
        })
        .await
        .unwrap();
    assert_eq!(
        (served.model.as_str(), served.cost, served.budget_remaining),
        ("paid", Money::from_nanos(4_100_000_000), Some(Money::ZERO))
    );
    // spent == limit: the paid model is out, the free one serves.
    let served = fleet.call(&sized(100), |_, _| async { ok(100) }).await.unwrap();
    assert_eq!((served.model.as_str(), served.cost), ("free", Money::ZERO));
    let explained = fleet.explain(&sized(100)).unwrap().0;
    assert!(explained.contains("paid") && explained.contains("$0 left in hard budget global monthly"), "{explained}");
    fleet.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn spend_survives_a_restart_under_another_utc_offset() {
    let dir = tempfile::tempdir().unwrap();
    let budget = BudgetSpec::hard(Scope::Global, Period::Monthly, Money::from_dollars(100));
    let open = |offset: i16| {
        Fleet::open(FleetOptions {
            models: Some(vec![model("a", "1000", 60)]),
            budgets: vec![budget.clone()],
            ledger: modelfleet::budget::LedgerConfig {
                utc_offset_minutes: offset,
                ..modelfleet::budget::LedgerConfig::default()
            },
            ..options(&dir)
        })
    };
    let fleet = open(0).await.unwrap();
    fleet.call(&sized(100), |_, _| async { ok(100) }).await.unwrap();
    fleet.shutdown().await.unwrap();
    drop(fleet);
    // The month as seen 14 hours east starts at another instant: the spend
    // of the stored month that contains now still counts, with its breakdown.
    let fleet = open(14 * 60).await.unwrap();
    let status = fleet.budgets().status(&Scope::Global, Period::Monthly).unwrap();
    assert_eq!(status.spent, Money::from_nanos(200_000_000));
    assert_eq!(status.by_model.get("a"), Some(&Money::from_nanos(200_000_000)));
    assert_eq!(status.by_provider.get("sim"), Some(&Money::from_nanos(200_000_000)));
    fleet.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_spend_cannot_be_written_only_the_models_a_hard_budget_covers_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut other = model("b", "1000", 10);
    other.provider = "other".into();
    let fleet = Fleet::open(FleetOptions {
        models: Some(vec![model("a", "1000", 90), other]),
        budgets: vec![BudgetSpec::hard(Scope::Provider("sim".into()), Period::Monthly, Money::from_dollars(100))],
        ..options(&dir)
    })
    .await
    .unwrap();
    assert_eq!(fleet.call(&sized(100), |_, _| async { ok(100) }).await.unwrap().model, "a");
    fleet.store().fail_writes(true);
    // Served, its spend kept in memory for a later commit.
    assert_eq!(fleet.call(&sized(100), |_, _| async { ok(100) }).await.unwrap().model, "a");
    assert!(fleet.store().spend_backlog().is_some());
    // The provider's budget has no room now: its model stops, the other serves.
    assert_eq!(fleet.call(&sized(100), |_, _| async { ok(100) }).await.unwrap().model, "b");
    let only_sim = Request {
        requirements: Requirements { prompt_tokens: 100, providers: vec!["sim".into()], ..Requirements::default() },
        ..Request::default()
    };
    let err = fleet.call(&only_sim, |_, _| async { ok(100) }).await.unwrap_err();
    assert!(matches!(err, FleetError::BudgetStoreUnavailable(_)), "{err}");
    fleet.store().fail_writes(false);
    let waited = std::time::Instant::now();
    while fleet.store().spend_backlog().is_some() && waited.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fleet.call(&only_sim, |_, _| async { ok(100) }).await.unwrap().model, "a");
    let spent = fleet.budgets().status(&Scope::Provider("sim".into()), Period::Monthly).unwrap().spent;
    let stored: Money = tokio::task::block_in_place(|| {
        fleet.store().flush().unwrap();
        fleet.store().spend().unwrap().iter().map(|r| r.spent).sum()
    });
    assert_eq!((spent, stored), (Money::from_nanos(600_000_000), Money::from_nanos(600_000_000)));
    fleet.shutdown().await.unwrap();
}
