//! The full stack through the facade, with simulated or scripted providers:
//! fallback under failures, a circuit opening and closing, budget refusal at
//! the hard limit, and a restart that restores catalog, statistics and spend.
//! Then what the facade promises of failure handling: a stream is one
//! outcome, its time to first event reaches the monitor, routes rank by their
//! own strategy, a named model's fallbacks keep its promises, explain, the
//! report and the metrics say why a model is out, a budget refusal is not the
//! model's failure, the default deadline, and hedging with its charges.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use crate::support::now_ms;
use modelfleet::{
    Fleet, FleetError, FleetOptions, ModelResponse, ReportQuery, Request, SimProfile, Simulator, Usage,
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
        cache_write_per_mtok: None,
        reasoning_per_mtok: None,
    });
    m
}

#[allow(clippy::unnecessary_wraps)] // the type a model call returns
fn ok(tokens: u64) -> Result<ModelResponse<&'static str>, Failure> {
    Ok(ModelResponse { value: "ok", usage: Some(Usage::new(tokens, tokens)) })
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
    let history = fleet.store().usage().unwrap();
    let custom = history.iter().find(|u| u.model == "custom").unwrap();
    assert_eq!(custom.requests, 5);
    let report = fleet.report(&ReportQuery::last(Duration::from_hours(1), now_ms())).await.unwrap();
    let line = report.groups.iter().find(|g| g.name == "custom").unwrap();
    assert_eq!((line.requests, line.cost), (5, "0.03".parse().unwrap()), "the report reads the history too");
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
    let usage = Usage::new(100, 50);
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
        .call(&sized(100), |_, _| async { Ok(ModelResponse { value: "ok", usage: Some(Usage::new(100, 4_000)) }) })
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

/// The store service's health as the readiness check reports it.
async fn store_health(fleet: &Fleet) -> Option<modelfleet::service_registry::Health> {
    fleet.health().await.services.into_iter().find(|s| s.name == "store").map(|s| s.health)
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
    let failing = store_health(&fleet).await;
    assert!(
        matches!(&failing, Some(modelfleet::service_registry::Health::Degraded(why)) if why.contains("writes are failing")),
        "{failing:?}"
    );
    fleet.store().fail_writes(false);
    let waited = std::time::Instant::now();
    while fleet.store().spend_backlog().is_some() && waited.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Writing works again: healthy, the drops only counted.
    assert_eq!(store_health(&fleet).await, Some(modelfleet::service_registry::Health::Healthy));
    assert_eq!(fleet.call(&only_sim, |_, _| async { ok(100) }).await.unwrap().model, "a");
    let spent = fleet.budgets().status(&Scope::Provider("sim".into()), Period::Monthly).unwrap().spent;
    let stored: Money = tokio::task::block_in_place(|| {
        fleet.store().flush().unwrap();
        fleet.store().spend().unwrap().iter().map(|r| r.spent).sum()
    });
    assert_eq!((spent, stored), (Money::from_nanos(600_000_000), Money::from_nanos(600_000_000)));
    fleet.shutdown().await.unwrap();
}

// ---- Failure handling through the facade (issue 12) ----------------------------

/// Opens a fleet of `models` on the paused clock, as `tweak` says. Returns
/// the fleet with an origin taken before it opened: `origin.elapsed()` is
/// never behind the fleet's own clock (the tracker's `now`).
async fn open_fleet(
    dir: &tempfile::TempDir,
    models: Vec<ModelSpec>,
    tweak: impl FnOnce(FleetOptions) -> FleetOptions,
) -> (Fleet, tokio::time::Instant) {
    let origin = tokio::time::Instant::now();
    let options = tweak(FleetOptions {
        models: Some(models),
        strategy: modelfleet::selector::Strategy::PriorityOrder,
        ..options(dir)
    });
    (Fleet::open(options).await.unwrap(), origin)
}

/// `model`'s tracked health now.
fn health(fleet: &Fleet, origin: tokio::time::Instant, model: &str) -> modelfleet::fallback::ModelHealth {
    fleet.tracker().health(model, origin.elapsed())
}

/// A scripted model call: the models in `failing` answer a 500, the others 10 tokens.
fn scripted(model: &ModelSpec, failing: &[&str]) -> std::future::Ready<Result<ModelResponse<&'static str>, Failure>> {
    std::future::ready(if failing.contains(&model.id.as_str()) {
        Err(Failure::new(ErrorClass::ServerError, "scripted 500"))
    } else {
        ok(10)
    })
}

fn named(id: &str) -> Request {
    Request { model: Some(id.into()), ..Request::default() }
}

/// The models attempts were made on, with their errors, in order.
fn tried(attempts: &[modelfleet::fallback::Attempt]) -> Vec<(&str, Option<ErrorClass>)> {
    attempts.iter().map(|a| (a.model.as_str(), a.error)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_stream_is_one_outcome_in_the_tracker_recorded_when_it_settles() {
    let dir = tempfile::tempdir().unwrap();
    let ids = ["completed", "failed", "client-gone", "dropped"];
    let (fleet, origin) = open_fleet(&dir, ids.iter().map(|id| model(id, "1", 50)).collect(), |o| o).await;
    let open = async |id: &str| fleet.call_stream(&named(id), |_, _| async { Ok::<_, Failure>("events") }).await;
    let usage = Usage::new(10, 5);
    let untouched = |id: &str| {
        let h = health(&fleet, origin, id);
        (h.successes, h.failures, h.consecutive_failures, h.cooldown)
    };

    // Opening is not an outcome: nothing in the tracker, nothing finished in the monitor.
    let completed = open("completed").await.unwrap();
    assert_eq!(completed.model, "completed");
    assert_eq!(untouched("completed"), (0, 0, 0, None), "opening records nothing");
    let stats = fleet.monitor().model_stats("completed");
    assert_eq!((stats.totals.requests, stats.in_flight), (0, 1), "in flight, not yet an outcome");
    completed.value.settlement.finish(usage, &modelfleet::StreamEnd::Completed).await;
    assert_eq!(untouched("completed"), (1, 0, 0, None), "one success when it finished");
    let stats = fleet.monitor().model_stats("completed");
    assert_eq!((stats.totals.requests, stats.totals.successes, stats.in_flight), (1, 1, 0));

    // Broken mid-way: exactly one failure, no success, and the monitor has one request with that error.
    let failed = open("failed").await.unwrap();
    assert_eq!(untouched("failed"), (0, 0, 0, None), "opening is no probe success");
    let cut = Failure::new(ErrorClass::ServerError, "upstream reset mid-stream");
    failed.value.settlement.finish(usage, &modelfleet::StreamEnd::Failed(cut)).await;
    let h = health(&fleet, origin, "failed");
    assert_eq!((h.successes, h.failures, h.consecutive_failures), (0, 1, 1), "{h:?}");
    let stats = fleet.monitor().model_stats("failed");
    assert_eq!((stats.totals.requests, stats.totals.successes, stats.totals.failures), (1, 0, 1));
    assert_eq!(stats.errors.get(&ErrorClass::ServerError), Some(&1));
    assert_eq!(stats.errors.values().sum::<u64>(), 1, "one error, recorded once: {:?}", stats.errors);

    // The client went away, or the settlement was dropped unfinished: neither outcome.
    let gone = open("client-gone").await.unwrap();
    gone.value.settlement.finish(usage, &modelfleet::StreamEnd::ClientGone).await;
    assert_eq!(untouched("client-gone"), (0, 0, 0, None), "a client gone says nothing of the model");
    let dropped = open("dropped").await.unwrap();
    drop(dropped);
    assert_eq!(untouched("dropped"), (0, 0, 0, None), "a settlement dropped says nothing of the model");
    assert_eq!(fleet.monitor().model_stats("dropped").in_flight, 0, "its in-flight count is given back");
    fleet.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_stream_whose_client_left_is_aborted_in_the_monitor_not_a_model_success() {
    // ErrorClass::Cancelled is "the caller gave up (client disconnected…)",
    // and the monitor counts it as aborted: neither the model's success nor
    // its failure, and not its latency. A call dropped mid-way is booked that
    // way (books.rs, `Pending`); a stream whose client left must be too.
    let dir = tempfile::tempdir().unwrap();
    let (fleet, _) = open_fleet(&dir, vec![model("client-gone", "1", 50), model("dropped", "1", 50)], |o| o).await;
    let usage = Usage::new(10, 5);
    let gone = fleet.call_stream(&named("client-gone"), |_, _| async { Ok::<_, Failure>("events") }).await.unwrap();
    gone.value.settlement.finish(usage, &modelfleet::StreamEnd::ClientGone).await;
    let dropped = fleet.call_stream(&named("dropped"), |_, _| async { Ok::<_, Failure>("events") }).await.unwrap();
    drop(dropped);
    for id in ["client-gone", "dropped"] {
        let totals = fleet.monitor().model_stats(id).totals;
        assert_eq!(
            (totals.requests, totals.successes, totals.failures, totals.aborted),
            (1, 0, 0, 1),
            "{id}: a stream whose client left is aborted, not a success of the model"
        );
    }
    fleet.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_streams_time_to_first_event_reaches_the_monitor_and_calls_add_none() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, _) = open_fleet(&dir, vec![model("a", "1", 50)], |o| o).await;
    let ttft = |fleet: &Fleet| fleet.monitor().model_stats("a").time_to_first_token;
    assert_eq!(ttft(&fleet), modelfleet::monitor::Latency::default(), "empty before any stream");

    // The first event after 300 ms; the stream ends a second later.
    let opened = fleet
        .call_stream(&Request::default(), |_, _| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, Failure>("events")
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    opened.value.settlement.finish(Usage::default(), &modelfleet::StreamEnd::Completed).await;
    let stats = fleet.monitor().model_stats("a");
    let first = stats.time_to_first_token;
    assert!((first.p50_ms - 300.0).abs() < 5.0 && (first.max_ms - 300.0).abs() < 5.0, "{first:?}");
    assert!(stats.latency.p50_ms > 1_250.0, "the whole stream is the latency, apart from TTFT: {:?}", stats.latency);

    // A call takes 5 s: its duration is latency, never a time to first token.
    fleet
        .call(&Request::default(), |_, _| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            ok(10)
        })
        .await
        .unwrap();
    let stats = fleet.monitor().model_stats("a");
    assert_eq!(stats.totals.requests, 2);
    assert_eq!(stats.time_to_first_token, first, "a call adds nothing to the TTFT histogram");
    assert!(stats.latency.max_ms > 4_900.0, "{:?}", stats.latency);
    fleet.shutdown().await.unwrap();
}

/// Three models that each lead under another strategy.
fn contrasting_models() -> Vec<ModelSpec> {
    let mut fast = model("fast", "5", 10);
    (fast.typical_latency_ms, fast.quality) = (Some(100), Some(0.5));
    let mut smart = model("smart", "10", 20);
    (smart.typical_latency_ms, smart.quality) = (Some(2_000), Some(0.95));
    let mut cheap = model("cheap", "0.1", 90);
    (cheap.typical_latency_ms, cheap.quality) = (Some(1_000), Some(0.6));
    vec![fast, smart, cheap]
}

fn route(name: &str, strategy: modelfleet::selector::Strategy) -> modelfleet::RouteSpec {
    modelfleet::RouteSpec {
        name: name.into(),
        requirements: Requirements::default(),
        strategy,
        fallbacks: Vec::new(),
        hedge: None,
    }
}

#[tokio::test(start_paused = true)]
async fn each_route_ranks_by_its_own_strategy() {
    use modelfleet::selector::Strategy;
    let dir = tempfile::tempdir().unwrap();
    let strategies = [
        ("fastest", Strategy::Fastest),
        ("highest_quality", Strategy::HighestQuality),
        ("cheapest", Strategy::Cheapest),
        ("priority_order", Strategy::PriorityOrder),
        ("weighted_score", Strategy::WeightedScore),
    ];
    let mut routes: Vec<_> = strategies.iter().map(|(name, s)| route(name, *s)).collect();
    routes.extend((0..64).map(|seed| route(&format!("random-{seed}"), Strategy::WeightedRandom { seed })));
    let (fleet, _) = open_fleet(&dir, contrasting_models(), |o| FleetOptions { routes, ..o }).await;
    let order = |name: &str| -> Vec<String> {
        let request = Request { route: Some(name.into()), ..Request::default() };
        fleet.rank(&request).unwrap().into_iter().map(|(id, _)| id).collect()
    };
    assert_eq!(order("fastest"), ["fast", "cheap", "smart"], "lowest typical latency first");
    assert_eq!(order("highest_quality"), ["smart", "cheap", "fast"], "highest quality first");
    assert_eq!(order("cheapest"), ["cheap", "fast", "smart"], "lowest price first");
    assert_eq!(order("priority_order"), ["cheap", "smart", "fast"], "highest priority first");
    // Weighted random is reproducible from its seed, and is not the weighted score's order.
    let scored = order("weighted_score");
    for seed in 0..64 {
        assert_eq!(order(&format!("random-{seed}")), order(&format!("random-{seed}")), "seed {seed}");
    }
    assert!((0..64).any(|seed| order(&format!("random-{seed}")) != scored), "always {scored:?}");
    // A request served through a route takes the route's first choice.
    for (name, first) in [("fastest", "fast"), ("highest_quality", "smart"), ("cheapest", "cheap")] {
        let request = Request { route: Some(name.into()), ..Request::default() };
        let served = fleet.call(&request, |m, _| scripted(&m, &[])).await.unwrap();
        assert_eq!((served.model.as_str(), served.attempts.len()), (first, 1), "route {name}");
    }
    // Served through a weighted random route, requests spread over the models
    // (each draws its own order), where the weighted score sends all to one.
    let mut first_choices = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let request = Request { route: Some("random-0".into()), ..Request::default() };
        first_choices.insert(fleet.call(&request, |m, _| scripted(&m, &[])).await.unwrap().model);
    }
    assert!(first_choices.len() >= 2, "one model took every request: {first_choices:?}");
    fleet.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_named_model_that_does_not_qualify_is_refused_saying_why_without_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let mut french = model("french", "1", 10);
    french.languages = vec!["fr".into()];
    let (fleet, _) = open_fleet(&dir, vec![model("english", "1", 90), french], |o| o).await;
    let request = Request {
        requirements: Requirements { language: Some("fr".into()), ..Requirements::default() },
        ..named("english")
    };
    let calls = AtomicU32::new(0);
    let err = fleet
        .call(&request, |m, _| {
            calls.fetch_add(1, Ordering::Relaxed);
            scripted(&m, &[])
        })
        .await
        .unwrap_err();
    match err {
        FleetError::NotServed { message, attempts, class, .. } => {
            assert!(message.contains("\"english\"") && message.contains("does not speak \"fr\""), "{message}");
            assert!(attempts.is_empty(), "{attempts:?}");
            assert_eq!(
                class,
                Some(ErrorClass::BadRequest),
                "a request no model can serve as asked is a bad request (400), not worth retrying"
            );
        }
        other => panic!("expected a refusal, got {other}"),
    }
    assert_eq!(calls.load(Ordering::Relaxed), 0, "no silent substitute: the French model was not called");
    fleet.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_local_models_implied_fallbacks_are_local_unless_the_request_says_any() {
    let local = |id: &str, priority: u8| {
        let mut m = model(id, "0", priority);
        (m.local, m.memory_mb) = (true, Some(1));
        m
    };
    // The cloud model outranks the second local one.
    let models = vec![local("local-a", 90), model("cloud", "1", 80), local("local-b", 10)];
    for (locality, served_by) in [(None, "local-b"), (Some(Locality::Any), "cloud")] {
        let dir = tempfile::tempdir().unwrap();
        let (fleet, _) = open_fleet(&dir, models.clone(), |o| o).await;
        let request =
            Request { requirements: Requirements { locality, ..Requirements::default() }, ..named("local-a") };
        let served = fleet.call(&request, |m, _| scripted(&m, &["local-a"])).await.unwrap();
        assert_eq!(
            tried(&served.attempts),
            [("local-a", Some(ErrorClass::ServerError)), (served_by, None)],
            "locality {locality:?}"
        );
        assert!(served.fell_back);
        fleet.shutdown().await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_simulated_provider_is_never_an_implied_fallback_but_an_explicit_one_works() {
    let on = |id: &str, provider: &str, priority: u8| {
        let mut m = model(id, "1", priority);
        m.provider = provider.into();
        m
    };
    let models = vec![on("real-a", "real", 90), on("sim-b", "simulator", 80), on("real-c", "other", 10)];
    let explicit = BTreeMap::from([("real-a".to_owned(), vec!["sim-b".to_owned()])]);
    for (fallbacks, served_by) in [(BTreeMap::new(), "real-c"), (explicit, "sim-b")] {
        let dir = tempfile::tempdir().unwrap();
        let (fleet, _) = open_fleet(&dir, models.clone(), |o| FleetOptions {
            simulated_providers: vec!["simulator".into()],
            model_fallbacks: fallbacks,
            ..o
        })
        .await;
        let served = fleet.call(&named("real-a"), |m, _| scripted(&m, &["real-a"])).await.unwrap();
        assert_eq!(tried(&served.attempts), [("real-a", Some(ErrorClass::ServerError)), (served_by, None)]);
        fleet.shutdown().await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_fallbacks_own_fallbacks_are_not_tried_so_mutual_lists_cannot_loop() {
    // a lists b, b lists c and a: a request for a tries a then b, never c
    // (b's list is b's, not a's), and never a twice.
    let models = vec![model("a", "1", 90), model("b", "1", 80), model("c", "1", 10)];
    let fallbacks = BTreeMap::from([
        ("a".to_owned(), vec!["b".to_owned()]),
        ("b".to_owned(), vec!["c".to_owned(), "a".to_owned()]),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let (fleet, _) = open_fleet(&dir, models, |o| FleetOptions { model_fallbacks: fallbacks, ..o }).await;
    let Err(FleetError::NotServed { attempts, .. }) = fleet.call(&named("a"), |m, _| scripted(&m, &["a", "b"])).await
    else {
        panic!("a and b failed: the request should fail")
    };
    // Retries may try a and b again; c never.
    let models: std::collections::BTreeSet<&str> = attempts.iter().map(|a| a.model.as_str()).collect();
    assert_eq!(models, ["a", "b"].into(), "{:?}", tried(&attempts));
    assert_eq!(tried(&attempts)[..2], [("a", Some(ErrorClass::ServerError)), ("b", Some(ErrorClass::ServerError))]);
    // Named directly, b's own list is followed.
    let served = fleet.call(&named("b"), |m, _| scripted(&m, &["b"])).await.unwrap();
    assert_eq!(served.model, "c", "{:?}", tried(&served.attempts));
    fleet.shutdown().await.unwrap();
}

/// A fleet of "a" (first by priority) and "b", where "a" has failed twice
/// in a row with a 500: ejected (escalating cooldown), "b" served both.
async fn with_a_ejected(dir: &tempfile::TempDir) -> (Fleet, tokio::time::Instant) {
    let (fleet, origin) = open_fleet(dir, vec![model("a", "1", 90), model("b", "1", 10)], |o| o).await;
    for _ in 0..2 {
        let served = fleet.call(&Request::default(), |m, _| scripted(&m, &["a"])).await.unwrap();
        assert_eq!(tried(&served.attempts), [("a", Some(ErrorClass::ServerError)), ("b", None)]);
    }
    let h = health(&fleet, origin, "a");
    assert_eq!((h.ejections, h.cooldown.map(|(class, _)| class)), (1, Some(ErrorClass::ServerError)), "{h:?}");
    (fleet, origin)
}

#[tokio::test(start_paused = true)]
async fn explain_and_the_report_say_why_an_ejected_model_is_out() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, _) = with_a_ejected(&dir).await;
    let (text, json) = fleet.explain(&Request::default()).unwrap();
    let line = text.lines().find(|l| l.starts_with("out of rotation now: a ")).unwrap_or_else(|| panic!("{text}"));
    // The facade refuses requirements no model can be judged against,
    // whoever built them (a NaN quality would otherwise pass every model).
    let nan = Request {
        requirements: Requirements { min_quality: Some(f64::NAN), ..Requirements::default() },
        ..Request::default()
    };
    let refused = fleet.explain(&nan).unwrap_err().to_string();
    assert_eq!(refused, "invalid requirements: min_quality must be from 0 to 1, got NaN");
    assert!(
        line.starts_with("out of rotation now: a (cooling down after server_error for ") && line.ends_with(" ms more)")
    );
    assert!(!text.contains("out of rotation now: b"), "{text}");
    let unavailable = json["unavailable"].as_array().unwrap();
    assert_eq!(unavailable.len(), 1, "{json}");
    assert_eq!(unavailable[0]["model"], "a");
    assert_eq!(unavailable[0]["circuit"], "closed");
    assert_eq!(unavailable[0]["ejections"], 1);
    assert_eq!(unavailable[0]["multiplier"], 1);
    assert!(unavailable[0]["why"].as_str().unwrap().starts_with("cooling down after server_error"), "{json}");

    let report = fleet.report(&ReportQuery::last(Duration::from_hours(1), now_ms())).await.unwrap();
    let line = |id: &str| report.health.models.iter().find(|m| m.model == id).unwrap();
    assert_eq!(line("a").ejections, 1);
    let out = line("a").out_of_rotation.as_deref().unwrap_or_default();
    assert!(out.starts_with("cooling down after server_error for "), "{:?}", line("a"));
    assert_eq!((line("b").ejections, line("b").out_of_rotation.as_deref()), (0, None));
    fleet.shutdown().await.unwrap();
}

/// The value of `metric` with `label`=`value` in Prometheus `text`.
fn prometheus(text: &str, metric: &str, (label, value): (&str, &str)) -> Option<f64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    scrape.samples.iter().find(|s| s.metric == metric && s.labels.get(label) == Some(value)).map(|s| match s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        _ => f64::NAN,
    })
}

#[tokio::test(start_paused = true)]
async fn resilience_metrics_show_circuits_ejections_and_retry_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, _) = with_a_ejected(&dir).await;
    let text = fleet.metrics_prometheus(&[modelfleet::metrics::Category::Resilience]);
    let get = |metric: &str, label: (&str, &str)| prometheus(&text, metric, label);
    assert_eq!(get("modelfleet_model_circuit_state", ("model", "a")), Some(0.0), "{text}");
    assert_eq!(get("modelfleet_model_circuit_state", ("model", "b")), Some(0.0), "{text}");
    assert_eq!(get("modelfleet_model_ejections_total", ("model", "a")), Some(1.0), "{text}");
    assert_eq!(get("modelfleet_model_ejections_total", ("model", "b")), Some(0.0), "{text}");
    assert_eq!(get("modelfleet_model_ejection_multiplier", ("model", "a")), Some(1.0), "{text}");
    assert!(get("modelfleet_model_cooldown_remaining_seconds", ("model", "a")).is_some_and(|s| s > 0.0), "{text}");
    assert!(get("modelfleet_provider_retry_budget_remaining", ("provider", "sim")).is_some_and(|r| r >= 0.0), "{text}");
    fleet.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_budget_refusal_is_not_the_models_failure() {
    let dir = tempfile::tempdir().unwrap();
    // $1,000 per Mtok and 4,000 output tokens: a worst case of $4.10 for 100
    // prompt tokens; $8 holds one at a time.
    let (fleet, origin) = open_fleet(&dir, vec![model("a", "1000", 90), model("b", "1000", 10)], |o| FleetOptions {
        budgets: vec![BudgetSpec::hard(Scope::Global, Period::Monthly, Money::from_dollars(8))],
        ..o
    })
    .await;
    // "a" fails in a way the provider bills (its hold, $4.10, is spent): "b",
    // chosen while $8 were left, is refused at its own hold, and so is any
    // retry of "a".
    let err =
        fleet
            .call(&sized(100), |m, _| {
                let fail = m.id == "a";
                async move {
                    if fail { Err(Failure::new(ErrorClass::ServerError, "unreadable 200").billed()) } else { ok(10) }
                }
            })
            .await
            .unwrap_err();
    let FleetError::NotServed { attempts, class, .. } = err else { panic!("expected a refusal, got {err}") };
    assert_eq!(tried(&attempts[..2]), [("a", Some(ErrorClass::ServerError)), ("b", Some(ErrorClass::BudgetExceeded))]);
    assert!(attempts[2..].iter().all(|a| a.error == Some(ErrorClass::BudgetExceeded)), "{attempts:?}");
    assert_eq!(class, Some(ErrorClass::BudgetExceeded));
    let h = health(&fleet, origin, "b");
    assert_eq!((h.failures, h.consecutive_failures, h.cooldown, h.ejections), (0, 0, None, 0), "{h:?}");
    assert!(fleet.tracker().availability("b", origin.elapsed()).is_available());
    assert_eq!(fleet.monitor().model_stats("b").totals.failures, 0, "not the model's failure in the monitor either");
    assert_eq!(health(&fleet, origin, "a").failures, 1, "only its own 500 counts against \"a\"");

    // $3.90 left: too little for any worst case, refused before any attempt,
    // and still nothing against either model.
    let err = fleet.call(&sized(100), |m, _| scripted(&m, &[])).await.unwrap_err();
    assert!(
        matches!(&err, FleetError::NotServed { class: Some(ErrorClass::BudgetExceeded), attempts, .. } if attempts.is_empty()),
        "{err}"
    );
    for id in ["a", "b"] {
        let h = health(&fleet, origin, id);
        assert_eq!(
            (h.failures, h.consecutive_failures <= 1, h.ejections),
            (u64::from(id == "a"), true, 0),
            "{id}: {h:?}"
        );
    }
    assert_eq!(health(&fleet, origin, "b").cooldown, None);
    fleet.shutdown().await.unwrap();
}

#[test]
fn the_default_deadline_is_two_minutes_in_options_and_config() {
    let two_minutes = Some(Duration::from_mins(2));
    assert_eq!(FleetOptions::default().retry.deadline, two_minutes);
    let dir = tempfile::tempdir().unwrap();
    let env = |_: &str| None;
    let options = modelfleet::config::Options {
        env: &env,
        check_files: false,
        check_ports: false,
        check_tools: false,
        base_dir: dir.path().to_path_buf(),
    };
    let text = "[[routes]]\nname = \"quick\"\nstrategy = \"fastest\"\n\n[[routes]]\nname = \"spread\"\nstrategy = \
                \"weighted_random\"\nseed = 7\n";
    let report = modelfleet::config::validate(text, &options);
    let problems = report.to_string();
    let config = report.config.unwrap_or_else(|| panic!("{problems}"));
    let options = FleetOptions::from_config(&config).unwrap();
    assert_eq!(options.retry.deadline, two_minutes, "a config without [retry]");
    // Route strategies from the config reach the fleet as they were written.
    let strategies: Vec<_> = options.routes.iter().map(|r| (r.name.as_str(), r.strategy)).collect();
    assert_eq!(
        strategies,
        [
            ("quick", modelfleet::selector::Strategy::Fastest),
            ("spread", modelfleet::selector::Strategy::WeightedRandom { seed: 7 })
        ]
    );
}

/// [`spent`] for a current-thread runtime (the paused clock): the flush is awaited.
async fn spent_async(fleet: &Fleet) -> (Money, Money) {
    let ledger = fleet.budgets().status(&Scope::Global, Period::Monthly).unwrap().spent;
    fleet.store().flush_async().await.unwrap();
    let stored = fleet.store().spend().unwrap();
    (ledger, stored.iter().filter(|r| r.scope == Scope::Global).map(|r| r.spent).sum())
}

/// A fleet whose route "hedged" tries "slow" first and hedges after 100 ms,
/// under a hard budget; "slow" takes 2 s, "fast" answers at once.
async fn hedged(dir: &tempfile::TempDir) -> (Fleet, tokio::time::Instant, modelfleet::Served<&'static str>) {
    let hedge = modelfleet::RouteSpec {
        hedge: Some(modelfleet::fallback::HedgeAfter::Fixed(Duration::from_millis(100))),
        ..route("hedged", modelfleet::selector::Strategy::PriorityOrder)
    };
    let models = vec![model("slow", "1000", 90), model("fast", "1000", 10)];
    let (fleet, origin) = open_fleet(dir, models, |o| FleetOptions {
        routes: vec![hedge],
        budgets: vec![BudgetSpec::hard(Scope::Global, Period::Monthly, Money::from_dollars(100))],
        ..o
    })
    .await;
    let request = Request { route: Some("hedged".into()), ..sized(100) };
    let started = tokio::time::Instant::now();
    let served = fleet
        .call(&request, |m, _| async move {
            if m.id == "slow" {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            ok(100)
        })
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "served before the slow model would have answered");
    (fleet, origin, served)
}

#[tokio::test(start_paused = true)]
async fn a_hedged_route_takes_the_first_answer_and_charges_the_cancelled_attempt_its_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, origin, served) = hedged(&dir).await;
    assert_eq!(served.model, "fast");
    // The hedge answered first; then the first attempt was cancelled, 100 ms in.
    assert_eq!(tried(&served.attempts), [("fast", None), ("slow", Some(ErrorClass::Cancelled))]);
    assert!(served.attempts[0].hedge && !served.attempts[1].hedge, "{:?}", served.attempts);
    assert_eq!(served.attempts[1].latency, Duration::from_millis(100));
    // The winner is a success; the loser is neither success nor failure.
    let (fast, slow) = (health(&fleet, origin, "fast"), health(&fleet, origin, "slow"));
    assert_eq!((fast.successes, fast.failures), (1, 0));
    assert_eq!((slow.successes, slow.failures, slow.cooldown), (0, 0, None));
    // The cancelled call is charged its hold (its usage will never be
    // known): $4.10 on top of the winner's 200 tokens at $1,000 per Mtok.
    let hold = Money::from_nanos(4_100_000_000);
    let answer = Money::from_nanos(200_000_000);
    assert_eq!(fleet.monitor().model_stats("slow").totals.cost, hold);
    assert_eq!(fleet.monitor().model_stats("slow").totals.aborted, 1);
    assert_eq!(spent_async(&fleet).await, (hold + answer, hold + answer));
    assert_eq!(fleet.budgets().status(&Scope::Global, Period::Monthly).unwrap().reserved, Money::ZERO);
    // Hedges are counted per provider: started and won.
    let text = fleet.metrics_prometheus(&[modelfleet::metrics::Category::Resilience]);
    assert_eq!(prometheus(&text, "modelfleet_provider_hedges_started_total", ("provider", "sim")), Some(1.0), "{text}");
    assert_eq!(prometheus(&text, "modelfleet_provider_hedges_won_total", ("provider", "sim")), Some(1.0), "{text}");
    fleet.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_hedged_requests_cost_includes_the_cancelled_attempts_charge() {
    // `Served::cost` (the gateway's x-modelfleet-cost) is what the request
    // was charged: the cancelled loser's hold is spent on the budget, so it
    // is part of it, as a billed failure's charge is.
    let dir = tempfile::tempdir().unwrap();
    let (fleet, _, served) = hedged(&dir).await;
    let (ledger, _) = spent_async(&fleet).await;
    assert_eq!(served.cost, ledger, "the request reports everything it was charged");
    fleet.shutdown().await.unwrap();
}
