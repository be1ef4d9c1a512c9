//! Tracker, chain and executor tests, and seed 000's fallback properties.

use std::{cell::RefCell, sync::Arc, time::Duration};

use modelfleet_errors::{ErrorClass, Failure, Jitter, ManualTimer, RetryConfig, RetryPolicy, Timer};
use modelfleet_registry::{Category, ModelSpec, Money, Pricing};
use modelfleet_selector::{NoSignals, Requirements, Weights};
use proptest::prelude::*;

use super::*;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn model(id: &str, window: u32, quality: f64, price: &str, priority: u8) -> ModelSpec {
    let mut m = ModelSpec::new(id, "prov");
    m.categories = vec![Category::General];
    m.context_window = Some(window);
    m.quality = Some(quality);
    m.pricing = Some(Pricing {
        input_per_mtok: price.parse().unwrap(),
        output_per_mtok: price.parse().unwrap(),
        cached_input_per_mtok: None,
    });
    m.priority = priority;
    m.languages = vec!["en".into()];
    m
}

fn fleet() -> Vec<ModelSpec> {
    vec![
        model("alpha", 8_000, 0.9, "5", 90),
        model("bravo", 32_000, 0.7, "1", 50),
        model("charlie", 128_000, 0.5, "0.1", 10),
    ]
}

// ---- Tracker ------------------------------------------------------------

#[test]
fn rate_limits_honour_retry_after_within_the_cap() {
    let tracker = Tracker::new(TrackerConfig::default());
    tracker.record_failure("m", ErrorClass::RateLimited, Some(secs(3)), secs(10));
    assert_eq!(
        tracker.availability("m", secs(12)),
        Availability::CoolingDown { class: ErrorClass::RateLimited, until: secs(13) }
    );
    assert_eq!(tracker.availability("m", secs(13)), Availability::Available);
    tracker.record_failure("n", ErrorClass::RateLimited, None, secs(0));
    assert!(!tracker.availability("n", secs(4)).is_available(), "5 s default");
    assert!(tracker.availability("n", secs(5)).is_available());
    tracker.record_failure("o", ErrorClass::RateLimited, Some(secs(3_600)), secs(0));
    assert!(tracker.availability("o", secs(60)).is_available(), "retry-after capped at 60 s");
}

#[test]
fn authentication_cools_down_long_and_bad_requests_not_at_all() {
    let tracker = Tracker::new(TrackerConfig::default());
    tracker.record_failure("m", ErrorClass::Authentication, None, secs(0));
    assert!(!tracker.availability("m", secs(299)).is_available());
    assert!(tracker.availability("m", secs(300)).is_available());
    for class in
        [ErrorClass::BadRequest, ErrorClass::ContextWindowExceeded, ErrorClass::ContentPolicy, ErrorClass::Cancelled]
    {
        tracker.record_failure("x", class, None, secs(0));
        assert!(tracker.availability("x", secs(0)).is_available(), "{class}");
    }
    assert_eq!(tracker.health("x", secs(0)).consecutive_failures, 0, "none of these count against the model");
}

#[test]
fn server_errors_escalate_and_a_success_resets() {
    let tracker = Tracker::new(TrackerConfig::default());
    let cooldown = |t: Duration| match tracker.availability("m", t) {
        Availability::CoolingDown { until, .. } => until.saturating_sub(t),
        _ => Duration::ZERO,
    };
    tracker.record_failure("m", ErrorClass::ServerError, None, secs(0));
    assert_eq!(cooldown(secs(0)), Duration::ZERO, "one server error: no cooldown");
    let mut expected = vec![];
    for (i, t) in [100u64, 200, 300, 400, 500, 600, 700].into_iter().enumerate() {
        tracker.record_failure("m", ErrorClass::ServerError, None, secs(t));
        expected.push(cooldown(secs(t)));
        let _ = i;
    }
    assert_eq!(expected, vec![secs(2), secs(4), secs(8), secs(16), secs(32), secs(60), secs(60)]);
    tracker.record_success("m", secs(800));
    tracker.record_failure("m", ErrorClass::ServerError, None, secs(900));
    assert_eq!(cooldown(secs(900)), Duration::ZERO, "the escalation starts over");
}

fn circuit_tracker() -> Tracker {
    // No cooldowns, so the circuit alone decides.
    let cooldown = CooldownConfig { escalate_after: u32::MAX, ..CooldownConfig::default() };
    Tracker::new(TrackerConfig { cooldown, circuit: CircuitConfig::default() })
}

#[test]
fn the_circuit_opens_on_the_failure_ratio_then_probes_then_closes() {
    let tracker = circuit_tracker();
    let t = secs(1_000);
    for _ in 0..5 {
        tracker.record_success("m", t);
    }
    for _ in 0..4 {
        tracker.record_failure("m", ErrorClass::Timeout, None, t);
    }
    assert_eq!(tracker.circuit("m", t), CircuitState::Closed, "9 requests: below the minimum of 10");
    tracker.record_failure("m", ErrorClass::Timeout, None, t);
    assert_eq!(tracker.circuit("m", t), CircuitState::Open, "5 of 10 failed: 50%");
    assert_eq!(tracker.acquire("m", t + secs(29)), Availability::CircuitOpen { until: t + secs(30) });

    let later = t + secs(30);
    assert_eq!(tracker.circuit("m", later), CircuitState::HalfOpen);
    assert_eq!(tracker.acquire("m", later), Availability::Probe);
    assert_eq!(tracker.acquire("m", later), Availability::Probe);
    assert_eq!(tracker.acquire("m", later), Availability::Probe);
    assert_eq!(tracker.acquire("m", later), Availability::ProbesBusy, "3 probes at once");
    tracker.record_success("m", later);
    tracker.record_success("m", later);
    assert_eq!(tracker.circuit("m", later), CircuitState::HalfOpen);
    tracker.record_success("m", later);
    assert_eq!(tracker.circuit("m", later), CircuitState::Closed);
    assert_eq!(tracker.acquire("m", later), Availability::Available);
}

#[test]
fn a_failed_probe_reopens_the_circuit() {
    let tracker = circuit_tracker();
    for _ in 0..10 {
        tracker.record_failure("m", ErrorClass::ServerError, None, secs(0));
    }
    assert_eq!(tracker.acquire("m", secs(30)), Availability::Probe);
    tracker.record_failure("m", ErrorClass::ServerError, None, secs(31));
    assert_eq!(tracker.availability("m", secs(31)), Availability::CircuitOpen { until: secs(61) });
}

#[test]
fn failures_outside_the_window_do_not_count() {
    let tracker = circuit_tracker();
    for _ in 0..9 {
        tracker.record_failure("m", ErrorClass::Timeout, None, secs(0));
    }
    for _ in 0..10 {
        tracker.record_success("m", secs(40));
    }
    tracker.record_failure("m", ErrorClass::Timeout, None, secs(40));
    assert_eq!(tracker.circuit("m", secs(40)), CircuitState::Closed, "1 of 11 in the last 30 s");
}

#[test]
fn concurrent_records_count_exactly() {
    let tracker = Arc::new(Tracker::new(TrackerConfig::default()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let tracker = Arc::clone(&tracker);
            std::thread::spawn(move || {
                for i in 0..1_000u64 {
                    let model = format!("m{}", i % 4);
                    if (i + t) % 2 == 0 {
                        tracker.record_success(&model, secs(i));
                    } else {
                        tracker.record_failure(&model, ErrorClass::ServerError, None, secs(i));
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let all = tracker.all(secs(5_000));
    assert_eq!(all.len(), 4);
    let (failures, successes) = all.iter().fold((0, 0), |(f, s), (_, h)| (f + h.failures, s + h.successes));
    assert_eq!((failures, successes), (4_000, 4_000));
}

// ---- Chains --------------------------------------------------------------

fn input(req: &Requirements, strategy: FallbackStrategy, now: Duration) -> ChainInput<'_, NoSignals> {
    ChainInput { requirements: req, signals: &NoSignals, strategy, weights: Weights::default(), explicit: None, now }
}

fn names(chain: &[&ModelSpec]) -> Vec<String> {
    chain.iter().map(|m| m.id.clone()).collect()
}

#[test]
fn chains_follow_the_strategy_without_the_failed_model() {
    let models = fleet();
    let tracker = Tracker::new(TrackerConfig::default());
    let req = Requirements::default();
    let failed = Failed { model: &models[1], class: ErrorClass::ServerError };
    let by = |s| names(&chain(&models, failed, &input(&req, s, secs(0)), &tracker));
    assert_eq!(by(FallbackStrategy::Performance), ["alpha", "charlie"]);
    assert_eq!(by(FallbackStrategy::Cost), ["charlie", "alpha"]);
    assert_eq!(by(FallbackStrategy::Priority), ["alpha", "charlie"]);
}

#[test]
fn chains_skip_cooling_and_open_models_and_honour_explicit_lists() {
    let models = fleet();
    let tracker = Tracker::new(TrackerConfig::default());
    tracker.record_failure("charlie", ErrorClass::Authentication, None, secs(0));
    let req = Requirements::default();
    let failed = Failed { model: &models[0], class: ErrorClass::Timeout };
    assert_eq!(names(&chain(&models, failed, &input(&req, FallbackStrategy::Cost, secs(1)), &tracker)), ["bravo"]);
    let explicit = vec!["charlie".to_owned(), "ghost".to_owned(), "bravo".to_owned()];
    let mut with_list = input(&req, FallbackStrategy::Performance, secs(301));
    with_list.explicit = Some(&explicit);
    assert_eq!(
        names(&chain(&models, failed, &with_list, &tracker)),
        ["charlie", "bravo"],
        "list order, unknown ids skipped"
    );
}

#[test]
fn a_context_window_failure_only_falls_back_to_larger_windows() {
    let models = fleet();
    let tracker = Tracker::new(TrackerConfig::default());
    let req = Requirements::default();
    let failed = Failed { model: &models[1], class: ErrorClass::ContextWindowExceeded };
    assert_eq!(
        names(&chain(&models, failed, &input(&req, FallbackStrategy::Performance, secs(0)), &tracker)),
        ["charlie"]
    );
}

// ---- Executor --------------------------------------------------------------

fn policy(max_attempts: u32, deadline: Option<Duration>) -> ExecutorConfig {
    ExecutorConfig {
        retry: RetryPolicy::new(RetryConfig { jitter: Jitter::None, max_attempts, deadline, ..RetryConfig::default() })
            .unwrap(),
        // The fixtures' priorities give the order alpha, bravo, charlie.
        strategy: FallbackStrategy::Priority,
        ..ExecutorConfig::default()
    }
}

/// The served model, whether it fell back and the attempts; or the error text.
type Outcome = Result<(String, bool, Vec<Attempt>), String>;

/// Runs the executor over `models` where `script(model, attempt)` decides each call.
fn run(
    models: &[ModelSpec],
    tracker: &Tracker,
    timer: &ManualTimer,
    config: &ExecutorConfig,
    req: &Requirements,
    script: impl Fn(&str, u32) -> Result<&'static str, Failure>,
) -> (Outcome, Vec<String>) {
    run_in(Order::Ranked, models, tracker, timer, config, req, script)
}

/// [`run`] in a given order.
fn run_in(
    order: Order<'_>,
    models: &[ModelSpec],
    tracker: &Tracker,
    timer: &ManualTimer,
    config: &ExecutorConfig,
    req: &Requirements,
    script: impl Fn(&str, u32) -> Result<&'static str, Failure>,
) -> (Outcome, Vec<String>) {
    let calls = RefCell::new(Vec::new());
    let mut rng = fastrand::Rng::with_seed(3);
    let fleet = Fleet { models, signals: &NoSignals, tracker, timer };
    let outcome = tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(execute(
        fleet,
        req,
        order,
        config,
        &mut rng,
        |model, ctx| {
            calls.borrow_mut().push(model.id.clone());
            timer.advance(ms(10));
            let result = script(&model.id, ctx.attempt);
            async move { result }
        },
    ));
    let outcome = outcome.map(|e| (e.model.id.clone(), e.fell_back, e.attempts)).map_err(|e| e.to_string());
    (outcome, calls.into_inner())
}

#[test]
fn a_failure_falls_back_at_once_without_sleeping() {
    let models = fleet();
    let (tracker, timer) = (Tracker::new(TrackerConfig::default()), ManualTimer::new());
    let (outcome, calls) = run(&models, &tracker, &timer, &policy(3, None), &Requirements::default(), |id, _| {
        if id == "alpha" { Err(Failure::new(ErrorClass::ServerError, "boom").with_status(500)) } else { Ok("ok") }
    });
    let (served, fell_back, attempts) = outcome.unwrap();
    assert_eq!(calls, ["alpha", "bravo"]);
    assert_eq!((served.as_str(), fell_back), ("bravo", true));
    assert_eq!(attempts[0].error, Some(ErrorClass::ServerError));
    assert_eq!(attempts[0].latency, ms(10));
    assert!(timer.slept().is_empty());
    assert_eq!(tracker.health("alpha", timer.now()).failures, 1, "the failure is recorded");
    assert_eq!(tracker.health("bravo", timer.now()).successes, 1);
}

#[test]
fn a_preferred_model_goes_first_and_an_explicit_list_is_all_that_is_tried() {
    let models = fleet();
    let fail_all = |_: &str, _: u32| Err(Failure::new(ErrorClass::ServerError, "boom").with_status(500));
    let config = policy(1, None);
    let (tracker, timer) = (Tracker::new(TrackerConfig::default()), ManualTimer::new());
    let (_, calls) =
        run_in(Order::Preferred("charlie"), &models, &tracker, &timer, &config, &Requirements::default(), fail_all);
    assert_eq!(calls, ["charlie", "alpha", "bravo"], "charlie first, then the ranking");

    let (tracker, timer) = (Tracker::new(TrackerConfig::default()), ManualTimer::new());
    let list = ["bravo".to_owned(), "alpha".to_owned()];
    let (_, calls) =
        run_in(Order::Explicit(&list), &models, &tracker, &timer, &config, &Requirements::default(), fail_all);
    assert_eq!(calls, ["bravo", "alpha"]);

    // A preferred model that does not meet the requirements is not tried.
    let (tracker, timer) = (Tracker::new(TrackerConfig::default()), ManualTimer::new());
    let big = Requirements { prompt_tokens: 20_000, ..Requirements::default() };
    let (_, calls) = run_in(Order::Preferred("alpha"), &models, &tracker, &timer, &config, &big, fail_all);
    assert_eq!(calls, ["bravo", "charlie"]);
}

#[test]
fn a_bad_request_is_neither_retried_nor_sent_elsewhere() {
    let models = fleet();
    let (tracker, timer) = (Tracker::new(TrackerConfig::default()), ManualTimer::new());
    let (outcome, calls) = run(&models, &tracker, &timer, &policy(3, None), &Requirements::default(), |_, _| {
        Err(Failure::new(ErrorClass::BadRequest, "temperature must be <= 2").with_status(400))
    });
    assert_eq!(calls, ["alpha"]);
    assert_eq!(
        outcome.unwrap_err(),
        "the error cannot be retried or fall back after 1 attempt(s): alpha (bad_request: bad_request (HTTP 400): temperature must be <= 2)"
    );
}

#[test]
fn the_last_model_standing_is_retried_after_its_backoff() {
    let models = vec![model("solo", 8_000, 0.9, "1", 1)];
    let (tracker, timer) = (Tracker::new(TrackerConfig::default()), ManualTimer::new());
    let (outcome, calls) = run(&models, &tracker, &timer, &policy(3, None), &Requirements::default(), |_, attempt| {
        if attempt < 3 { Err(Failure::new(ErrorClass::Timeout, "slow")) } else { Ok("finally") }
    });
    assert_eq!(outcome.unwrap().0, "solo");
    assert_eq!(calls, ["solo", "solo", "solo"]);
    assert_eq!(timer.slept(), vec![ms(100), ms(200)]);
}

#[test]
fn everything_failing_lists_what_was_tried() {
    let models = fleet();
    let (tracker, timer) = (Tracker::new(TrackerConfig::default()), ManualTimer::new());
    let (outcome, calls) = run(&models, &tracker, &timer, &policy(2, None), &Requirements::default(), |id, _| {
        Err(Failure::new(if id == "bravo" { ErrorClass::Authentication } else { ErrorClass::ServerError }, "down"))
    });
    // Each model once; then alpha and charlie (retryable) once more; bravo (auth) never again.
    assert_eq!(calls, ["alpha", "bravo", "charlie", "alpha", "charlie"]);
    let message = outcome.unwrap_err();
    assert!(
        message.starts_with(
            "every candidate failed after 5 attempt(s): alpha (server_error: server_error: down), bravo (authentication"
        ),
        "{message}"
    );
}

#[test]
fn the_deadline_stops_the_walk() {
    let models = vec![model("solo", 8_000, 0.9, "1", 1)];
    let (tracker, timer) = (Tracker::new(TrackerConfig::default()), ManualTimer::new());
    let (outcome, calls) =
        run(&models, &tracker, &timer, &policy(10, Some(ms(250))), &Requirements::default(), |_, _| {
            Err(Failure::new(ErrorClass::ServerError, "x"))
        });
    assert_eq!(calls.len(), 2, "10 ms, wait 100 ms, 10 ms: the 200 ms wait would pass 250 ms");
    assert!(outcome.unwrap_err().starts_with("the deadline passed after 2 attempt(s)"));
}

#[test]
fn a_context_window_failure_jumps_to_a_larger_window() {
    let models = fleet();
    let (tracker, timer) = (Tracker::new(TrackerConfig::default()), ManualTimer::new());
    let (outcome, calls) = run(&models, &tracker, &timer, &policy(3, None), &Requirements::default(), |id, _| {
        if id == "alpha" { Err(Failure::new(ErrorClass::ContextWindowExceeded, "too long")) } else { Ok("ok") }
    });
    assert_eq!(calls, ["alpha", "bravo"], "bravo's 32k beats alpha's 8k");
    assert!(outcome.is_ok());
}

#[test]
fn no_candidates_says_why() {
    let models = fleet();
    let (tracker, timer) = (Tracker::new(TrackerConfig::default()), ManualTimer::new());
    let req = Requirements { prompt_tokens: 1_000_000, ..Requirements::default() };
    let (outcome, calls) = run(&models, &tracker, &timer, &policy(3, None), &req, |_, _| Ok("never"));
    assert!(calls.is_empty());
    assert_eq!(
        outcome.unwrap_err(),
        "no model can take the request: none of the 3 models satisfies the requirements; rejected by context_window (3)"
    );
    for m in &models {
        tracker.record_failure(&m.id, ErrorClass::QuotaExhausted, None, Duration::ZERO);
    }
    let (outcome, _) = run(&models, &tracker, &timer, &policy(3, None), &Requirements::default(), |_, _| Ok("never"));
    assert_eq!(
        outcome.unwrap_err(),
        "no model can take the request: every eligible model is unavailable: alpha (cooling down after quota_exhausted), \
         bravo (cooling down after quota_exhausted), charlie (cooling down after quota_exhausted)"
    );
}

#[test]
fn an_open_circuit_takes_a_model_out_and_a_probe_brings_it_back() {
    let models = fleet();
    let cooldown = CooldownConfig { escalate_after: u32::MAX, ..CooldownConfig::default() };
    let tracker = Tracker::new(TrackerConfig { cooldown, circuit: CircuitConfig::default() });
    let timer = ManualTimer::new();
    let failing = |id: &str, _| if id == "alpha" { Err(Failure::new(ErrorClass::ServerError, "x")) } else { Ok("ok") };
    for _ in 0..10 {
        run(&models, &tracker, &timer, &policy(1, None), &Requirements::default(), failing).0.unwrap();
    }
    assert_eq!(tracker.circuit("alpha", timer.now()), CircuitState::Open);
    let (_, calls) = run(&models, &tracker, &timer, &policy(1, None), &Requirements::default(), failing);
    assert_eq!(calls, ["bravo"], "alpha is skipped while open");
    timer.advance(secs(30));
    let (outcome, calls) = run(&models, &tracker, &timer, &policy(1, None), &Requirements::default(), |_, _| Ok("ok"));
    assert_eq!(calls, ["alpha"]);
    assert!(outcome.unwrap().2[0].probe, "the first call after the open period is a probe");
}

// ---- Seed 000's properties --------------------------------------------------

fn arb_models() -> impl Strategy<Value = Vec<ModelSpec>> {
    proptest::collection::vec((1_000u32..200_000, 0.0f64..=1.0, 0i64..10_000_000_000, 0u8..=100), 1..10).prop_map(
        |specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (window, quality, price, priority))| {
                    let mut m = model(&format!("m{i}"), window, quality, "0", priority);
                    m.pricing = Some(Pricing { input_per_mtok: Money::from_nanos(price), ..Pricing::FREE });
                    m
                })
                .collect()
        },
    )
}

fn arb_class() -> impl Strategy<Value = ErrorClass> {
    proptest::sample::select(ErrorClass::ALL.to_vec())
}

fn arb_strategy() -> impl Strategy<Value = FallbackStrategy> {
    proptest::sample::select(vec![FallbackStrategy::Performance, FallbackStrategy::Cost, FallbackStrategy::Priority])
}

proptest! {
    #[test]
    fn fallbacks_never_return_the_failed_model_and_meet_the_requirements(
        models in arb_models(),
        pick in any::<proptest::sample::Index>(),
        class in arb_class(),
        strategy in arb_strategy(),
        prompt in 0u32..150_000,
    ) {
        let tracker = Tracker::new(TrackerConfig::default());
        let failed = Failed { model: pick.get(&models), class };
        let req = Requirements { prompt_tokens: prompt, ..Requirements::default() };
        let input = input(&req, strategy, secs(0));
        let eligible = modelfleet_selector::rank(&models, &req, &NoSignals, &strategy.selector_config(Weights::default()));
        let full = chain(&models, failed, &input, &tracker);
        for m in &full {
            prop_assert_ne!(&m.id, &failed.model.id);
            prop_assert!(eligible.iter().any(|r| r.model.id == m.id), "{} does not meet the requirements", m.id);
        }
        let next = next_fallback(&models, failed, &input, &tracker);
        prop_assert_eq!(next.map(|m| m.id.clone()), full.first().map(|m| m.id.clone()), "next is the chain's head");
        // Deterministic.
        prop_assert_eq!(names(&chain(&models, failed, &input, &tracker)), names(&full));
    }

    #[test]
    fn performance_prefers_higher_scores_and_cost_lower_costs(models in arb_models(), pick in any::<proptest::sample::Index>()) {
        let tracker = Tracker::new(TrackerConfig::default());
        let failed = Failed { model: pick.get(&models), class: ErrorClass::ServerError };
        let req = Requirements::default();
        let others: Vec<&ModelSpec> = models.iter().filter(|m| m.id != failed.model.id).collect();
        if let Some(best) = next_fallback(&models, failed, &input(&req, FallbackStrategy::Performance, secs(0)), &tracker) {
            let ranked = modelfleet_selector::rank(&others, &req, &NoSignals, &FallbackStrategy::Performance.selector_config(Weights::default()));
            let top = ranked.iter().map(|r| r.score.total).fold(f64::MIN, f64::max);
            let chosen = ranked.iter().find(|r| r.model.id == best.id).unwrap();
            prop_assert!((chosen.score.total - top).abs() < 1e-12);
        }
        if let Some(cheapest) = next_fallback(&models, failed, &input(&req, FallbackStrategy::Cost, secs(0)), &tracker) {
            let cost = |m: &ModelSpec| m.price().map(|p| p.cost(0, 0, 0));
            let chosen = cheapest.pricing.unwrap().input_per_mtok;
            prop_assert!(others.iter().all(|m| m.pricing.unwrap().input_per_mtok >= chosen), "{:?}", cost(cheapest));
        }
    }

    #[test]
    fn failed_models_stay_out_until_their_cooldown_ends(
        models in arb_models(),
        pick in any::<proptest::sample::Index>(),
        class in proptest::sample::select(vec![ErrorClass::Authentication, ErrorClass::NotFound, ErrorClass::QuotaExhausted, ErrorClass::RateLimited]),
    ) {
        let tracker = Tracker::new(TrackerConfig::default());
        let victim = pick.get(&models);
        tracker.record_failure(&victim.id, class, None, secs(100));
        prop_assert_eq!(tracker.health(&victim.id, secs(100)).failures, 1, "recorded");
        let until = match tracker.availability(&victim.id, secs(100)) {
            Availability::CoolingDown { until, .. } => until,
            other => return Err(TestCaseError::fail(format!("not cooling down: {other:?}"))),
        };
        let req = Requirements::default();
        let other_failed = Failed { model: &models[0], class: ErrorClass::Timeout };
        for (now, present) in [(until.saturating_sub(ms(1)), false), (until, true)] {
            let ids = names(&chain(&models, other_failed, &input(&req, FallbackStrategy::Performance, now), &tracker));
            let expected = present && victim.id != models[0].id;
            prop_assert_eq!(ids.contains(&victim.id), expected, "at {:?}", now);
        }
    }

    #[test]
    fn an_empty_compatible_set_gives_none(models in arb_models(), pick in any::<proptest::sample::Index>()) {
        let tracker = Tracker::new(TrackerConfig::default());
        let req = Requirements { prompt_tokens: 500_000, ..Requirements::default() };
        let failed = Failed { model: pick.get(&models), class: ErrorClass::Timeout };
        prop_assert!(next_fallback(&models, failed, &input(&req, FallbackStrategy::Cost, secs(0)), &tracker).is_none());
        prop_assert!(chain(&models, failed, &input(&req, FallbackStrategy::Cost, secs(0)), &tracker).is_empty());
    }
}
