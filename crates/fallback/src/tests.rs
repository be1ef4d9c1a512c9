//! Executor tests: the walk, its bounds, panic threshold, waiting, retry
//! budgets, hedging, compatible fallbacks, and seed 000's properties on
//! `execute` itself with scripted failures.

use std::{
    cell::RefCell,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use modelfleet_errors::{ErrorClass, Failure, Jitter, ManualTimer, RetryConfig, RetryPolicy, Timer};
use modelfleet_registry::{Capabilities, Capability, Category, ModelSpec, Money, Pricing};
use modelfleet_selector::{Locality, NoSignals, Requirements, Signals, Strategy as Rank};
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
        cache_write_per_mtok: None,
        reasoning_per_mtok: None,
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

fn policy(max_attempts: u32, deadline: Option<Duration>) -> ExecutorConfig {
    ExecutorConfig {
        retry: RetryPolicy::new(RetryConfig { jitter: Jitter::None, max_attempts, deadline, ..RetryConfig::default() })
            .unwrap(),
        ..ExecutorConfig::default()
    }
}

/// The fixtures' priorities give the order alpha, bravo, charlie.
fn plan(order: Order<'_>) -> Plan<'_> {
    Plan { order, strategy: Rank::PriorityOrder, ..Plan::default() }
}

/// The served model, whether it fell back and the attempts; or the error text.
type Outcome = Result<(String, bool, Vec<Attempt>), String>;

/// Everything a scripted run needs.
struct Bench<'a> {
    models: &'a [ModelSpec],
    tracker: &'a Tracker,
    timer: &'a ManualTimer,
    budget: Option<&'a RetryBudget>,
    simulated: &'a [String],
}

impl<'a> Bench<'a> {
    fn new(models: &'a [ModelSpec], tracker: &'a Tracker, timer: &'a ManualTimer) -> Bench<'a> {
        Bench { models, tracker, timer, budget: None, simulated: &[] }
    }

    /// Runs the executor where `script(model, attempt)` decides each call
    /// (each takes 10 ms); returns the outcome and the models called.
    fn run(
        &self,
        plan: &Plan<'_>,
        config: &ExecutorConfig,
        req: &Requirements,
        script: impl Fn(&str, u32) -> Result<&'static str, Failure>,
    ) -> (Outcome, Vec<String>) {
        let calls = RefCell::new(Vec::new());
        let mut rng = fastrand::Rng::with_seed(3);
        let pool = self.pool(&NoSignals);
        let outcome = block_on(execute(pool, req, plan, config, &mut rng, |model, ctx| {
            calls.borrow_mut().push(model.id.clone());
            self.timer.advance(ms(10));
            let result = script(&model.id, ctx.attempt);
            async move { result }
        }));
        let outcome = outcome.map(|e| (e.model.id.clone(), e.fell_back, e.attempts)).map_err(|e| e.to_string());
        (outcome, calls.into_inner())
    }

    fn pool<'s, S>(&'s self, signals: &'s S) -> Pool<'s, ModelSpec, S, ManualTimer> {
        Pool {
            models: self.models,
            signals,
            tracker: self.tracker,
            retry_budget: self.budget,
            simulated_providers: self.simulated,
            timer: self.timer,
        }
    }
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
}

fn fresh() -> (Tracker, ManualTimer) {
    (Tracker::new(TrackerConfig::default()), ManualTimer::new())
}

fn server_error(_: &str, _: u32) -> Result<&'static str, Failure> {
    Err(Failure::new(ErrorClass::ServerError, "boom").with_status(500))
}

/// Fails `model` with a server error at `now`, through a permit, as a call would.
fn fail(tracker: &Tracker, model: &str, class: ErrorClass, now: Duration) {
    tracker.acquire_forced(model, now).failure(class, None, now);
}

// ---- The walk --------------------------------------------------------------

#[test]
fn a_failure_falls_back_at_once_without_sleeping() {
    let models = fleet();
    let (tracker, timer) = fresh();
    let (outcome, calls) = Bench::new(&models, &tracker, &timer).run(
        &plan(Order::Ranked),
        &policy(3, None),
        &Requirements::default(),
        |id, _| {
            if id == "alpha" { server_error(id, 0) } else { Ok("ok") }
        },
    );
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
fn an_explicit_list_is_all_that_is_tried_and_its_ineligible_head_is_no_first_choice() {
    let models = fleet();
    let (tracker, timer) = fresh();
    let list = ["bravo".to_owned(), "alpha".to_owned()];
    let bench = Bench::new(&models, &tracker, &timer);
    let (_, calls) = bench.run(&plan(Order::Explicit(&list)), &policy(1, None), &Requirements::default(), server_error);
    assert_eq!(calls, ["bravo", "alpha"]);

    // alpha's 8k window cannot take 20k: absent from the ranking, it is not
    // a first choice, so bravo serving is no fallback.
    let (tracker, timer) = fresh();
    let list = ["alpha".to_owned(), "bravo".to_owned()];
    let big = Requirements { prompt_tokens: 20_000, ..Requirements::default() };
    let (outcome, calls) =
        Bench::new(&models, &tracker, &timer)
            .run(&plan(Order::Explicit(&list)), &policy(1, None), &big, |_, _| Ok("ok"));
    assert_eq!(calls, ["bravo"]);
    assert!(!outcome.unwrap().1, "not a fallback");

    // When the list leaves nothing, each listed model is named with why.
    let (tracker, timer) = fresh();
    let list = ["alpha".to_owned(), "zulu".to_owned(), "bravo".to_owned()];
    let huge = Requirements { prompt_tokens: 64_000, ..Requirements::default() };
    let (outcome, calls) =
        Bench::new(&models, &tracker, &timer)
            .run(&plan(Order::Explicit(&list)), &policy(1, None), &huge, |_, _| Ok("ok"));
    assert!(calls.is_empty());
    assert_eq!(
        outcome.unwrap_err(),
        "no model can take the request: no model of the route's list meets the requirements: \
         model \"alpha\" does not meet the requirements: context window 8000 < 64001 tokens needed; \
         model \"zulu\" is not in the catalog; \
         model \"bravo\" does not meet the requirements: context window 32000 < 64001 tokens needed"
    );
}

#[test]
fn a_skipped_first_choice_is_a_fallback() {
    let models = fleet();
    let (tracker, timer) = fresh();
    tracker.acquire("alpha", secs(0)).unwrap().failure(ErrorClass::RateLimited, Some(secs(5)), secs(0));
    let (outcome, calls) = Bench::new(&models, &tracker, &timer).run(
        &plan(Order::Ranked),
        &policy(1, None),
        &Requirements::default(),
        |_, _| Ok("ok"),
    );
    assert_eq!(calls, ["bravo"]);
    assert!(outcome.unwrap().1, "alpha was skipped (cooling down): bravo served as a fallback");
}

#[test]
fn a_bad_request_is_neither_retried_nor_sent_elsewhere() {
    let models = fleet();
    let (tracker, timer) = fresh();
    let (outcome, calls) = Bench::new(&models, &tracker, &timer).run(
        &plan(Order::Ranked),
        &policy(3, None),
        &Requirements::default(),
        |_, _| Err(Failure::new(ErrorClass::BadRequest, "temperature must be <= 2").with_status(400)),
    );
    assert_eq!(calls, ["alpha"]);
    assert_eq!(
        outcome.unwrap_err(),
        "the error cannot be retried or fall back after 1 attempt(s): alpha (bad_request: bad_request (HTTP 400): temperature must be <= 2)"
    );
    let health = tracker.health("alpha", timer.now());
    assert_eq!((health.failures, health.client_faults), (0, 1), "a client fault is not the model's failure");
}

#[test]
fn the_last_model_standing_is_retried_after_its_backoff() {
    let models = vec![model("solo", 8_000, 0.9, "1", 1)];
    let (tracker, timer) = fresh();
    let (outcome, calls) = Bench::new(&models, &tracker, &timer).run(
        &plan(Order::Ranked),
        &policy(3, None),
        &Requirements::default(),
        |_, attempt| if attempt < 3 { Err(Failure::new(ErrorClass::Connection, "reset")) } else { Ok("finally") },
    );
    assert_eq!(outcome.unwrap().0, "solo");
    assert_eq!(calls, ["solo", "solo", "solo"]);
    // 100 ms, then the escalating cooldown (2 s from the 2nd failure) is longer than the 200 ms backoff.
    assert_eq!(timer.slept(), vec![ms(100), secs(2)]);
}

#[test]
fn everything_failing_lists_what_was_tried() {
    let models = fleet();
    let (tracker, timer) = fresh();
    let (outcome, calls) = Bench::new(&models, &tracker, &timer).run(
        &plan(Order::Ranked),
        &policy(2, None),
        &Requirements::default(),
        |id, _| Err(Failure::new(if id == "bravo" { ErrorClass::Authentication } else { ErrorClass::Timeout }, "down")),
    );
    // Each model once; then alpha and charlie (retryable) once more; bravo (auth) never again.
    assert_eq!(calls, ["alpha", "bravo", "charlie", "alpha", "charlie"]);
    let message = outcome.unwrap_err();
    assert!(
        message.starts_with(
            "every candidate failed after 5 attempt(s): alpha (timeout: timeout: down), bravo (authentication"
        ),
        "{message}"
    );
}

#[test]
fn a_request_makes_at_most_max_attempts() {
    let models: Vec<ModelSpec> = (0..10).map(|i| model(&format!("m{i}"), 8_000, 0.5, "1", 100 - i)).collect();
    let (tracker, timer) = fresh();
    let config = ExecutorConfig { max_attempts_per_request: 4, ..policy(3, None) };
    let (outcome, calls) = Bench::new(&models, &tracker, &timer).run(
        &plan(Order::Ranked),
        &config,
        &Requirements::default(),
        server_error,
    );
    assert_eq!(calls.len(), 4);
    let message = outcome.unwrap_err();
    assert!(
        message.starts_with("the request made as many attempts as one request may after 4 attempt(s)"),
        "{message}"
    );
    let config = ExecutorConfig { max_attempts_per_request: 5, ..policy(3, None) };
    let (tracker, timer) = fresh();
    let (_, calls) = Bench::new(&models, &tracker, &timer).run(
        &plan(Order::Ranked),
        &config,
        &Requirements::default(),
        server_error,
    );
    assert_eq!(calls.len(), 5, "the bound, not a constant");
}

#[test]
fn the_deadline_stops_the_walk() {
    let models = vec![model("solo", 8_000, 0.9, "1", 1)];
    let (tracker, timer) = fresh();
    let (outcome, calls) = Bench::new(&models, &tracker, &timer).run(
        &plan(Order::Ranked),
        &policy(10, Some(ms(250))),
        &Requirements::default(),
        |_, _| Err(Failure::new(ErrorClass::RateLimited, "x").with_retry_after(ms(150))),
    );
    assert_eq!(calls.len(), 2, "10 ms, wait 150 ms, 10 ms: the next 150 ms wait would pass 250 ms");
    assert!(outcome.unwrap_err().starts_with("the deadline passed after 2 attempt(s)"));
}

#[test]
fn a_timeout_the_deadline_caused_is_not_the_models_fault() {
    let models = vec![model("solo", 8_000, 0.9, "1", 1)];
    let (tracker, timer) = fresh();
    let calls = RefCell::new(0);
    let mut rng = fastrand::Rng::with_seed(1);
    let bench = Bench::new(&models, &tracker, &timer);
    let config = policy(3, Some(secs(1)));
    let outcome = block_on(execute(
        bench.pool(&NoSignals),
        &Requirements::default(),
        &plan(Order::Ranked),
        &config,
        &mut rng,
        |_, ctx| {
            *calls.borrow_mut() += 1;
            // The call used all the time it was given, and timed out.
            timer.advance(ctx.remaining.unwrap());
            async { Err::<(), _>(Failure::new(ErrorClass::Timeout, "deadline")) }
        },
    ));
    assert!(matches!(outcome, Err(ExecuteError::Failed { reason: StopReason::DeadlineExceeded, .. })));
    assert_eq!(*calls.borrow(), 1);
    let health = tracker.health("solo", timer.now());
    assert_eq!((health.failures, health.consecutive_failures), (0, 0), "not counted against the model");

    // The same timeout with time left is the model's.
    let (tracker, timer) = fresh();
    let bench = Bench::new(&models, &tracker, &timer);
    let outcome = block_on(execute(
        bench.pool(&NoSignals),
        &Requirements::default(),
        &plan(Order::Ranked),
        &policy(1, Some(secs(10))),
        &mut rng,
        |_, _| {
            timer.advance(secs(1));
            async { Err::<(), _>(Failure::new(ErrorClass::Timeout, "slow")) }
        },
    ));
    assert!(outcome.is_err());
    assert_eq!(tracker.health("solo", timer.now()).failures, 1);
}

#[test]
fn a_budget_refusal_is_not_a_model_failure() {
    let models = fleet();
    let (tracker, timer) = fresh();
    let (outcome, calls) = Bench::new(&models, &tracker, &timer).run(
        &plan(Order::Ranked),
        &policy(1, None),
        &Requirements::default(),
        |id, _| if id == "alpha" { Err(Failure::new(ErrorClass::BudgetExceeded, "over")) } else { Ok("ok") },
    );
    assert_eq!(calls, ["alpha", "bravo"]);
    assert!(outcome.is_ok());
    let health = tracker.health("alpha", timer.now());
    assert_eq!((health.failures, health.cooldown), (0, None));
}

#[test]
fn a_context_window_failure_jumps_to_a_larger_window() {
    let models = fleet();
    let (tracker, timer) = fresh();
    let (outcome, calls) = Bench::new(&models, &tracker, &timer).run(
        &plan(Order::Ranked),
        &policy(3, None),
        &Requirements::default(),
        |id, _| {
            if id == "alpha" { Err(Failure::new(ErrorClass::ContextWindowExceeded, "too long")) } else { Ok("ok") }
        },
    );
    assert_eq!(calls, ["alpha", "bravo"], "bravo's 32k beats alpha's 8k");
    assert!(outcome.is_ok());
}

#[test]
fn no_candidates_says_why() {
    let models = fleet();
    let (tracker, timer) = fresh();
    let req = Requirements { prompt_tokens: 1_000_000, ..Requirements::default() };
    let bench = Bench::new(&models, &tracker, &timer);
    let (outcome, calls) = bench.run(&plan(Order::Ranked), &policy(3, None), &req, |_, _| Ok("never"));
    assert!(calls.is_empty());
    assert_eq!(
        outcome.unwrap_err(),
        "no model can take the request: none of the 3 models satisfies the requirements; rejected by context_window (3)"
    );
    for m in &models {
        fail(&tracker, &m.id, ErrorClass::QuotaExhausted, Duration::ZERO);
    }
    let (outcome, calls) =
        bench.run(&plan(Order::Ranked), &policy(3, Some(secs(120))), &Requirements::default(), |_, _| Ok("never"));
    assert!(calls.is_empty(), "a quota cooldown is no health ejection: the panic threshold does not override it");
    assert_eq!(
        outcome.unwrap_err(),
        "no model can take the request within its deadline: every candidate is out: \
         alpha (cooling down after quota_exhausted for 300000 ms more), \
         bravo (cooling down after quota_exhausted for 300000 ms more), \
         charlie (cooling down after quota_exhausted for 300000 ms more)"
    );
}

// ---- Ejection, the panic threshold and waiting ------------------------------

#[test]
fn a_shared_outage_does_not_eject_the_whole_fleet() {
    // Two models behind one upstream failed together, then it recovered.
    let models = vec![model("f1", 8_000, 0.9, "1", 90), model("f2", 8_000, 0.9, "1", 50)];
    let (tracker, timer) = fresh();
    for m in ["f2", "f1", "f2", "f1"] {
        fail(&tracker, m, ErrorClass::ServerError, timer.now());
        timer.advance(ms(1));
    }
    assert!(!tracker.availability("f1", timer.now()).is_available());
    assert!(!tracker.availability("f2", timer.now()).is_available());
    let bench = Bench::new(&models, &tracker, &timer);
    let (outcome, calls) =
        bench.run(&plan(Order::Ranked), &policy(1, Some(secs(120))), &Requirements::default(), |_, _| Ok("ok"));
    // Both out is 100% > 50%: the least recently ejected (f2, first out) is tried at once.
    assert_eq!(calls, ["f2"]);
    let (_, _, attempts) = outcome.unwrap();
    assert!(attempts[0].forced);
    assert!(timer.slept().is_empty(), "no waiting: the first request after recovery succeeds at once");
    assert!(tracker.availability("f2", timer.now()).is_available(), "its success ends its ejection");
    let (_, calls) =
        bench.run(&plan(Order::Ranked), &policy(1, Some(secs(120))), &Requirements::default(), |_, _| Ok("ok"));
    assert_eq!(calls, ["f2"], "f1 is still ejected (50% is allowed), f2 serves normally");
}

#[test]
fn the_panic_threshold_is_a_percentage_of_the_candidates() {
    // 4 candidates, 2 ejected = 50%: allowed, nobody forced.
    let models: Vec<ModelSpec> = (0..4).map(|i| model(&format!("m{i}"), 8_000, 0.5, "1", 100 - i)).collect();
    let (tracker, timer) = fresh();
    for m in ["m0", "m1", "m0", "m1"] {
        fail(&tracker, m, ErrorClass::ServerError, timer.now());
    }
    let bench = Bench::new(&models, &tracker, &timer);
    let (_, calls) = bench.run(&plan(Order::Ranked), &policy(1, None), &Requirements::default(), |_, _| Ok("ok"));
    assert_eq!(calls, ["m2"]);
    // 3 of 4 ejected = 75% > 50% (2 allowed): the least recently ejected one
    // is put back at its place in the order, ahead of the available m3.
    timer.advance(ms(1));
    for m in ["m2", "m2"] {
        fail(&tracker, m, ErrorClass::ServerError, timer.now());
    }
    let (_, calls) = bench.run(&plan(Order::Ranked), &policy(1, None), &Requirements::default(), |_, _| Ok("ok"));
    assert_eq!(calls, ["m0"], "m0 and m1 were ejected at the same time, before m2: m0 comes first in the order");
    assert!(tracker.availability("m0", timer.now()).is_available(), "its success ends its ejection");
    // Now 2 of 4 are out (m1, m2): allowed again, nobody is forced, m0 serves normally.
    let (outcome, calls) = bench.run(&plan(Order::Ranked), &policy(1, None), &Requirements::default(), |_, _| Ok("ok"));
    assert_eq!(calls, ["m0"]);
    assert!(!outcome.unwrap().2[0].forced);
    // With max_ejected_percent 100 nobody is ever forced.
    let (tracker, timer) = fresh();
    for m in ["m0", "m1", "m2", "m3", "m0", "m1", "m2", "m3"] {
        fail(&tracker, m, ErrorClass::ServerError, timer.now());
    }
    let config = ExecutorConfig { max_ejected_percent: 100, ..policy(1, None) };
    let (outcome, calls) =
        Bench::new(&models, &tracker, &timer)
            .run(&plan(Order::Ranked), &config, &Requirements::default(), |_, _| Ok("ok"));
    assert!(calls.is_empty());
    assert!(outcome.unwrap_err().contains("within its deadline"));
}

#[test]
fn when_every_candidate_is_rate_limited_it_waits_within_the_deadline() {
    let models = fleet();
    let (tracker, timer) = fresh();
    for (m, after) in [("alpha", 3), ("bravo", 2), ("charlie", 4)] {
        tracker.acquire(m, secs(0)).unwrap().failure(ErrorClass::RateLimited, Some(secs(after)), secs(0));
    }
    let bench = Bench::new(&models, &tracker, &timer);
    let (outcome, calls) =
        bench.run(&plan(Order::Ranked), &policy(1, Some(secs(120))), &Requirements::default(), |_, _| Ok("ok"));
    assert_eq!(calls, ["bravo"], "the first back");
    assert!(outcome.is_ok());
    let slept = timer.slept();
    assert_eq!(slept.len(), 1);
    assert!(slept[0] >= secs(2) && slept[0] <= secs(2) + ms(200), "jittered by up to a tenth: {slept:?}");

    // A deadline shorter than the wait: answered at once, with when to come back.
    let (tracker, timer) = fresh();
    for m in ["alpha", "bravo", "charlie"] {
        tracker.acquire(m, secs(0)).unwrap().failure(ErrorClass::RateLimited, Some(secs(30)), secs(0));
    }
    let mut rng = fastrand::Rng::with_seed(1);
    let bench = Bench::new(&models, &tracker, &timer);
    let outcome = block_on(execute(
        bench.pool(&NoSignals),
        &Requirements::default(),
        &plan(Order::Ranked),
        &policy(1, Some(secs(10))),
        &mut rng,
        |_, _| async { Ok::<_, Failure>("never") },
    ));
    match outcome {
        Err(ExecuteError::Unavailable { retry_after, .. }) => assert_eq!(retry_after, Some(secs(30))),
        other => panic!("{other:?}"),
    }
    assert!(timer.slept().is_empty());
}

#[test]
fn an_open_circuit_takes_a_model_out_and_a_probe_brings_it_back() {
    let models = fleet();
    let cooldown = CooldownConfig { escalate_after: u32::MAX, ..CooldownConfig::default() };
    let tracker = Tracker::new(TrackerConfig { cooldown, circuit: CircuitConfig::default() });
    let timer = ManualTimer::new();
    let bench = Bench::new(&models, &tracker, &timer);
    let failing = |id: &str, _| if id == "alpha" { server_error(id, 0) } else { Ok("ok") };
    for _ in 0..10 {
        bench.run(&plan(Order::Ranked), &policy(1, None), &Requirements::default(), failing).0.unwrap();
    }
    assert_eq!(tracker.circuit("alpha", timer.now()), CircuitState::Open);
    let (_, calls) = bench.run(&plan(Order::Ranked), &policy(1, None), &Requirements::default(), failing);
    assert_eq!(calls, ["bravo"], "alpha is skipped while open");
    timer.advance(secs(30));
    let (outcome, calls) = bench.run(&plan(Order::Ranked), &policy(1, None), &Requirements::default(), |_, _| Ok("ok"));
    assert_eq!(calls, ["alpha"]);
    assert!(outcome.unwrap().2[0].probe, "the first call after the open period is a probe");
}

#[test]
fn a_probe_whose_caller_went_away_gives_its_slot_back() {
    let models = vec![model("solo", 8_000, 0.9, "1", 1)];
    let circuit =
        CircuitConfig::new(CircuitSettings { half_open_probes: 1, min_requests: 1, ..CircuitSettings::default() })
            .unwrap();
    let tracker = Tracker::new(TrackerConfig { circuit, ..TrackerConfig::default() });
    let timer = ManualTimer::new();
    fail(&tracker, "solo", ErrorClass::ServerError, secs(0));
    timer.advance(secs(31));
    assert_eq!(tracker.circuit("solo", timer.now()), CircuitState::HalfOpen);
    let bench = Bench::new(&models, &tracker, &timer);
    let mut rng = fastrand::Rng::with_seed(1);
    // The caller's future is dropped mid-call (the client disconnected).
    {
        let (req, order, config) = (Requirements::default(), plan(Order::Ranked), policy(1, None));
        let walk = execute(bench.pool(&NoSignals), &req, &order, &config, &mut rng, |_, _| {
            std::future::pending::<Result<(), Failure>>()
        });
        let mut walk = std::pin::pin!(walk);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(walk.as_mut().poll(&mut cx).is_pending(), "the probe call is in flight");
        assert_eq!(tracker.availability("solo", timer.now()), Availability::ProbesBusy, "its slot is taken");
    }
    // The slot came back: the next request is the probe, and it closes the circuit.
    let (outcome, calls) = bench.run(&plan(Order::Ranked), &policy(1, None), &Requirements::default(), |_, _| Ok("ok"));
    assert_eq!(calls, ["solo"]);
    assert!(outcome.unwrap().2[0].probe);
    assert_eq!(tracker.circuit("solo", timer.now()), CircuitState::Closed);
}

#[test]
fn a_spent_retry_budget_falls_back_instead_of_retrying() {
    let models = vec![model("solo", 8_000, 0.9, "1", 1)];
    let budget = RetryBudget::new(RetryBudgetConfig { ratio: 0.0, min_per_sec: 0.0, window: secs(10) }).unwrap();
    let (tracker, timer) = fresh();
    let bench = Bench { budget: Some(&budget), ..Bench::new(&models, &tracker, &timer) };
    let (outcome, calls) = bench.run(&plan(Order::Ranked), &policy(3, None), &Requirements::default(), |_, _| {
        Err(Failure::new(ErrorClass::Timeout, "slow"))
    });
    assert_eq!(calls, ["solo"], "no retry: the budget allows none");
    assert!(outcome.is_err());

    let budget = RetryBudget::new(RetryBudgetConfig { ratio: 0.0, min_per_sec: 0.1, window: secs(10) }).unwrap();
    let (tracker, timer) = fresh();
    let bench = Bench { budget: Some(&budget), ..Bench::new(&models, &tracker, &timer) };
    let (_, calls) = bench.run(&plan(Order::Ranked), &policy(3, None), &Requirements::default(), |_, _| {
        Err(Failure::new(ErrorClass::Timeout, "slow"))
    });
    assert_eq!(calls, ["solo", "solo"], "one retry: the floor is 0.1/s over 10 s");
}

// ---- Compatible fallbacks ----------------------------------------------------

fn named_fixture() -> Vec<ModelSpec> {
    let mut local_a = model("local-a", 32_000, 0.6, "0", 90);
    local_a.local = true;
    local_a.pricing = None;
    let mut local_b = model("local-b", 32_000, 0.5, "0", 40);
    local_b.local = true;
    local_b.pricing = None;
    let cloud = model("cloud", 128_000, 0.95, "1", 80);
    let mut es = model("es-translate", 32_000, 0.8, "1", 70);
    es.categories = vec![Category::Translation];
    es.languages = vec!["es".into(), "en".into()];
    let mut es2 = model("es-translate-2", 32_000, 0.7, "1", 20);
    es2.categories = vec![Category::Translation];
    es2.languages = vec!["es".into()];
    let mut fr_code = model("fr-code", 16_000, 0.8, "1", 60);
    fr_code.categories = vec![Category::Code];
    fr_code.languages = vec!["fr".into()];
    let mut fr_code_big = model("fr-code-big", 200_000, 0.7, "1", 10);
    fr_code_big.categories = vec![Category::Code];
    fr_code_big.languages = vec!["fr".into()];
    let mut small = model("general-8k", 8_000, 0.9, "1", 100);
    small.languages = vec!["fr".into(), "en".into()];
    let mut sim = model("sim", 1_000_000, 1.0, "0", 100);
    sim.provider = "sim".into();
    sim.categories = vec![Category::General, Category::Translation, Category::Code];
    sim.languages = vec!["en".into(), "es".into(), "fr".into()];
    vec![local_a, local_b, cloud, es, es2, fr_code, fr_code_big, small, sim]
}

#[test]
fn a_named_model_falls_back_only_to_models_that_can_do_its_job() {
    let models = named_fixture();
    let simulated = ["sim".to_owned()];
    let all_fail = |_: &str, _: u32| Err(Failure::new(ErrorClass::RateLimited, "429"));
    let run = |named: &str, req: &Requirements| {
        let (tracker, timer) = fresh();
        let bench = Bench { simulated: &simulated, ..Bench::new(&models, &tracker, &timer) };
        bench.run(&plan(Order::Named { model: named, fallbacks: None }), &policy(1, None), req, all_fail).1
    };
    // A local model falls back to local models only.
    assert_eq!(run("local-a", &Requirements::default()), ["local-a", "local-b"]);
    // ...unless the request says any, explicitly.
    let any = Requirements { locality: Some(Locality::Any), ..Requirements::default() };
    assert!(run("local-a", &any).contains(&"cloud".to_owned()));
    // A Spanish translation model keeps category and language (never the simulator).
    assert_eq!(run("es-translate", &Requirements::default()), ["es-translate", "es-translate-2"]);
    // A context-window failure on a fr/code model goes to the larger fr/code one, not the 8k general.
    let (tracker, timer) = fresh();
    let bench = Bench { simulated: &simulated, ..Bench::new(&models, &tracker, &timer) };
    let (outcome, calls) = bench.run(
        &plan(Order::Named { model: "fr-code", fallbacks: None }),
        &policy(1, None),
        &Requirements::default(),
        |id, _| {
            if id == "fr-code" { Err(Failure::new(ErrorClass::ContextWindowExceeded, "too long")) } else { Ok("ok") }
        },
    );
    assert_eq!(calls, ["fr-code", "fr-code-big"]);
    assert_eq!(outcome.unwrap().0, "fr-code-big");
}

#[test]
fn a_named_model_that_does_not_qualify_is_refused_saying_why() {
    let models = named_fixture();
    let (tracker, timer) = fresh();
    let req = Requirements { prompt_tokens: 20_000, ..Requirements::default() };
    let (outcome, calls) = Bench::new(&models, &tracker, &timer).run(
        &plan(Order::Named { model: "fr-code", fallbacks: None }),
        &policy(1, None),
        &req,
        |_, _| Ok("never"),
    );
    assert!(calls.is_empty(), "no silent substitute");
    assert_eq!(
        outcome.unwrap_err(),
        "no model can take the request: model \"fr-code\" does not meet the requirements: context window 16000 < 20001 tokens needed"
    );
}

#[test]
fn a_named_model_with_configured_fallbacks_must_qualify_then_they_follow_in_order() {
    let models = named_fixture();
    let list = ["sim".to_owned(), "cloud".to_owned(), "fr-code".to_owned()];
    let (tracker, timer) = fresh();
    let bench = Bench { simulated: &["sim".to_owned()], ..Bench::new(&models, &tracker, &timer) };
    let named = plan(Order::Named { model: "fr-code", fallbacks: Some(&list) });
    let (_, calls) = bench.run(&named, &policy(1, None), &Requirements::default(), server_error);
    assert_eq!(calls, ["fr-code", "sim", "cloud"], "an explicit list is honoured as written (itself once)");
    let big = Requirements { prompt_tokens: 20_000, ..Requirements::default() };
    let (outcome, calls) = bench.run(&named, &policy(1, None), &big, server_error);
    assert!(calls.is_empty());
    assert!(outcome.unwrap_err().contains("model \"fr-code\" does not meet the requirements"));
}

#[test]
fn implied_fallback_states_each_rule() {
    let models = named_fixture();
    let by = |id: &str| models.iter().find(|m| m.id == id).unwrap();
    let none = Requirements::default();
    let sim = ["sim".to_owned()];
    assert_eq!(implied_fallback(by("local-a"), by("local-a"), &none, &sim), Some("it is the named model"));
    assert_eq!(implied_fallback(by("local-a"), by("cloud"), &none, &sim), Some("not local like the named model"));
    assert_eq!(
        implied_fallback(by("cloud"), by("local-a"), &none, &sim),
        Some("not a cloud model like the named model")
    );
    assert_eq!(
        implied_fallback(by("es-translate"), by("cloud"), &none, &sim),
        Some("shares none of the named model's categories")
    );
    assert_eq!(
        implied_fallback(by("fr-code"), by("es-translate"), &none, &sim),
        Some("shares none of the named model's categories")
    );
    let mut en_code = by("fr-code").clone();
    en_code.id = "en-code".into();
    en_code.languages = vec!["en".into()];
    assert_eq!(
        implied_fallback(by("fr-code"), &en_code, &none, &sim),
        Some("speaks none of the named model's languages")
    );
    assert_eq!(implied_fallback(by("fr-code"), by("sim"), &none, &sim), Some("simulated, and the named model is not"));
    assert_eq!(implied_fallback(by("fr-code"), by("fr-code-big"), &none, &sim), None);
    assert_eq!(implied_fallback(by("sim"), by("sim"), &none, &sim), Some("it is the named model"));
    let mut sim2 = by("sim").clone();
    sim2.id = "sim2".into();
    assert_eq!(implied_fallback(by("sim"), &sim2, &none, &sim), None, "a simulated model may fall back to another");
    // An embedding model: only itself served elsewhere, its vectors of its (known) length.
    let embedder = |id: &str, dimensions: Option<u32>| {
        let mut m = by("cloud").clone();
        m.id = id.into();
        m.capabilities.embeddings = true;
        m.embedding_dimensions = dimensions;
        m
    };
    let (small, other_small, large, unknown) = (
        embedder("e-1536", Some(1_536)),
        embedder("e2-1536", Some(1_536)),
        embedder("e-3072", Some(3_072)),
        embedder("e-x", None),
    );
    assert_eq!(
        implied_fallback(&small, &other_small, &none, &sim),
        Some("another embedding model: its vectors would not match the named model's")
    );
    let mut elsewhere = embedder("e-1536-azure", Some(1_536));
    elsewhere.upstream = small.id.clone();
    elsewhere.provider = "azure".into();
    assert_eq!(implied_fallback(&small, &elsewhere, &none, &sim), None, "the same model at another provider");
    assert_eq!(implied_fallback(&small, &large, &none, &sim), Some("its vectors are not the named model's length"));
    assert_eq!(implied_fallback(&small, &unknown, &none, &sim), Some("its vectors are not the named model's length"));
    assert_eq!(implied_fallback(&unknown, &small, &none, &sim), Some("the named model's vector length is unknown"));
}

#[test]
fn an_embeddings_request_keeps_to_the_first_choices_vector_length_in_every_order() {
    let embedder = |id: &str, dimensions: Option<u32>, priority: u8| {
        let mut m = model(id, 8_000, 0.9, "1", priority);
        m.capabilities = Capabilities { embeddings: true, ..Capabilities::default() };
        m.embedding_dimensions = dimensions;
        m
    };
    let models = vec![
        embedder("a-1536", Some(1_536), 90),
        embedder("b-3072", Some(3_072), 80),
        embedder("c-1536", Some(1_536), 70),
        embedder("d-unknown", None, 60),
    ];
    let req = Requirements { capabilities: vec![Capability::Embeddings], ..Requirements::default() };
    let run = |order: Order<'_>| {
        let (tracker, timer) = fresh();
        Bench::new(&models, &tracker, &timer).run(&plan(order), &policy(1, None), &req, server_error).1
    };
    // Ranked (`auto`): the best first, then only its length.
    assert_eq!(run(Order::Ranked), ["a-1536", "c-1536"]);
    // A route's list, whatever it says.
    let list = ["b-3072".to_owned(), "a-1536".to_owned(), "d-unknown".to_owned()];
    assert_eq!(run(Order::Explicit(&list)), ["b-3072"]);
    // A named model's configured fallbacks (a catalog edit may have changed them).
    assert_eq!(run(Order::Named { model: "c-1536", fallbacks: Some(&list) }), ["c-1536", "a-1536"]);
    // A first choice of unknown length has no stand-in.
    assert_eq!(run(Order::Named { model: "d-unknown", fallbacks: Some(&list) }), ["d-unknown"]);
}

// ---- Streams: one outcome ------------------------------------------------------

#[test]
fn a_caller_settled_success_is_recorded_only_when_it_settles() {
    let models = vec![model("solo", 8_000, 0.9, "1", 1)];
    let (tracker, timer) = fresh();
    let bench = Bench::new(&models, &tracker, &timer);
    let mut rng = fastrand::Rng::with_seed(1);
    let stream = Plan { settle_by_caller: true, ..plan(Order::Ranked) };
    let served = block_on(execute(
        bench.pool(&NoSignals),
        &Requirements::default(),
        &stream,
        &policy(1, None),
        &mut rng,
        |_, _| async { Ok::<_, Failure>("opened") },
    ))
    .unwrap();
    assert_eq!(tracker.health("solo", timer.now()).successes, 0, "opening is not a success");
    let permit = served.permit.expect("handed back");
    permit.failure(ErrorClass::ServerError, None, timer.now());
    let health = tracker.health("solo", timer.now());
    assert_eq!((health.successes, health.failures), (0, 1), "one outcome: the failure mid-way");
}

// ---- Hedging ------------------------------------------------------------------

/// A call that does not answer (it times out after 10,000 polls, so a
/// test whose hedge never starts fails instead of hanging), and says when
/// it was dropped.
struct Hangs(Arc<AtomicBool>, u32);

impl Future for Hangs {
    type Output = Result<&'static str, Failure>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        self.1 += 1;
        if self.1 > 10_000 {
            return std::task::Poll::Ready(Err(Failure::new(ErrorClass::Timeout, "hung")));
        }
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

impl Drop for Hangs {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

type Call = Pin<Box<dyn Future<Output = Result<&'static str, Failure>>>>;

#[test]
fn a_hedge_starts_at_the_delay_and_the_first_good_answer_wins() {
    let models = fleet();
    let (tracker, timer) = fresh();
    let bench = Bench::new(&models, &tracker, &timer);
    let dropped = Arc::new(AtomicBool::new(false));
    let events = RefCell::new(Vec::new());
    let hedged = Plan { hedge: Some(HedgeAfter::Fixed(ms(300))), ..plan(Order::Ranked) };
    let mut rng = fastrand::Rng::with_seed(1);
    let served = block_on(execute(
        bench.pool(&NoSignals),
        &Requirements::default(),
        &hedged,
        &policy(1, None),
        &mut rng,
        |model, _| {
            events.borrow_mut().push(format!("{} started at {} ms", model.id, timer.now().as_millis()));
            let call: Call = if model.id == "alpha" {
                Box::pin(Hangs(Arc::clone(&dropped), 0))
            } else {
                Box::pin(async { Ok("fast") })
            };
            call
        },
    ))
    .unwrap();
    assert_eq!(*events.borrow(), ["alpha started at 0 ms", "bravo started at 300 ms"]);
    assert_eq!((served.model.id.as_str(), served.value), ("bravo", "fast"));
    assert!(dropped.load(Ordering::SeqCst), "the loser was cancelled");
    assert!(!served.fell_back, "outrun by a hedge, the first choice did not fail: no fallback");
    let attempts: Vec<(String, Option<ErrorClass>, bool)> =
        served.attempts.iter().map(|a| (a.model.clone(), a.error, a.hedge)).collect();
    assert_eq!(
        attempts,
        [("bravo".to_owned(), None, true), ("alpha".to_owned(), Some(ErrorClass::Cancelled), false)],
        "the winner, then the loser listed as cancelled"
    );
    let alpha = tracker.health("alpha", timer.now());
    assert_eq!((alpha.failures, alpha.successes), (0, 0), "the loser's permit is released: neither");
}

/// A call that answers on its second poll (it is still running when the
/// hedge delay passes, then answers).
struct AnswersLater(bool);

impl Future for AnswersLater {
    type Output = Result<&'static str, Failure>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        if self.0 {
            return std::task::Poll::Ready(Ok("later"));
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

#[test]
fn a_hedge_spends_the_retry_budget_and_an_early_answer_needs_none() {
    let models = fleet();
    let hedged = Plan { hedge: Some(HedgeAfter::Fixed(ms(300))), ..plan(Order::Ranked) };
    let mut rng = fastrand::Rng::with_seed(1);
    let calls = RefCell::new(Vec::new());
    let run = |budget: &RetryBudget| {
        let (tracker, timer) = fresh();
        let bench = Bench { budget: Some(budget), ..Bench::new(&models, &tracker, &timer) };
        calls.borrow_mut().clear();
        let mut rng = fastrand::Rng::with_seed(1);
        block_on(execute(
            bench.pool(&NoSignals),
            &Requirements::default(),
            &hedged,
            &policy(1, None),
            &mut rng,
            |model, _| {
                calls.borrow_mut().push(model.id.clone());
                AnswersLater(false)
            },
        ))
        .unwrap()
        .model
        .id
        .clone()
    };
    // No budget: no hedge; alpha answers late and wins alone.
    let none = RetryBudget::new(RetryBudgetConfig { ratio: 0.0, min_per_sec: 0.0, window: secs(10) }).unwrap();
    assert_eq!(run(&none), "alpha");
    assert_eq!(*calls.borrow(), ["alpha"]);
    // With room for one: the hedge starts (and alpha, polled first, still wins).
    let one = RetryBudget::new(RetryBudgetConfig { ratio: 0.0, min_per_sec: 0.1, window: secs(10) }).unwrap();
    assert_eq!(run(&one), "alpha");
    assert_eq!(*calls.borrow(), ["alpha", "bravo"]);

    // A first answer before the delay: no hedge at all.
    let (tracker, timer) = fresh();
    let bench = Bench::new(&models, &tracker, &timer);
    calls.borrow_mut().clear();
    let served = block_on(execute(
        bench.pool(&NoSignals),
        &Requirements::default(),
        &hedged,
        &policy(1, None),
        &mut rng,
        |model, _| {
            calls.borrow_mut().push(model.id.clone());
            async { Ok::<_, Failure>("quick") }
        },
    ))
    .unwrap();
    assert_eq!(*calls.borrow(), ["alpha"]);
    assert_eq!(served.attempts.len(), 1);
}

#[test]
fn a_hedge_after_p95_uses_the_models_signal() {
    let models = fleet();
    let (tracker, timer) = fresh();
    let bench = Bench::new(&models, &tracker, &timer);
    let signals = |id: &str| Signals { latency_p95_ms: (id == "alpha").then_some(250.0), ..Signals::default() };
    let events = RefCell::new(Vec::new());
    let hedged = Plan { hedge: Some(HedgeAfter::P95), ..plan(Order::Ranked) };
    let mut rng = fastrand::Rng::with_seed(1);
    let dropped = Arc::new(AtomicBool::new(false));
    let served = block_on(execute(
        bench.pool(&signals),
        &Requirements::default(),
        &hedged,
        &policy(1, None),
        &mut rng,
        |model, _| {
            events.borrow_mut().push(format!("{} at {} ms", model.id, timer.now().as_millis()));
            let call: Call = if model.id == "alpha" {
                Box::pin(Hangs(Arc::clone(&dropped), 0))
            } else {
                Box::pin(async { Ok("fast") })
            };
            call
        },
    ))
    .unwrap();
    assert_eq!(*events.borrow(), ["alpha at 0 ms", "bravo at 250 ms"]);
    assert_eq!(served.model.id, "bravo");
}

// ---- Seed 000's properties, on `execute` ------------------------------------------

fn arb_models() -> impl Strategy<Value = Vec<ModelSpec>> {
    proptest::collection::vec((1_000u32..200_000, 0.0f64..=1.0, 0i64..10_000_000_000, 0u8..=100), 1..8).prop_map(
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

fn arb_rank() -> impl Strategy<Value = Rank> {
    proptest::sample::select(vec![
        Rank::WeightedScore,
        Rank::Cheapest,
        Rank::Fastest,
        Rank::HighestQuality,
        Rank::PriorityOrder,
        Rank::WeightedRandom { seed: 7 },
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn execute_keeps_its_promises(
        models in arb_models(),
        script in proptest::collection::vec(proptest::option::of(arb_class()), 1..24),
        rank in arb_rank(),
        prompt in 0u32..150_000,
        max_attempts in 1u32..8,
        deadline_ms in 50u64..5_000,
        order_kind in 0u8..3,
        list in proptest::collection::vec(0usize..8, 0..10),
        ejected in proptest::collection::vec((0usize..8, prop_oneof![Just(ErrorClass::ServerError), Just(ErrorClass::RateLimited), Just(ErrorClass::QuotaExhausted)]), 0..8),
    ) {
        let (tracker, timer) = fresh();
        // Some models are out before the request: ejected, rate limited, out of quota.
        for (i, class) in &ejected {
            if let Some(m) = models.get(*i) {
                for _ in 0..2 {
                    fail(&tracker, &m.id, *class, timer.now());
                }
            }
        }
        let req = Requirements { prompt_tokens: prompt, ..Requirements::default() };
        let eligible = modelfleet_selector::rank(&models, &req, &NoSignals, &modelfleet_selector::SelectorConfig { strategy: rank, ..Default::default() });
        let named_first = eligible.iter().any(|r| r.model.id == "m0") && tracker.availability("m0", timer.now()).is_available();
        let config = ExecutorConfig { max_attempts_per_request: max_attempts, ..policy(3, Some(ms(deadline_ms))) };
        // An explicit list, maybe naming models twice or models that do not exist.
        let ids: Vec<String> = list.iter().map(|i| format!("m{i}")).collect();
        let order = match order_kind {
            0 => Order::Ranked,
            1 => Order::Explicit(&ids),
            _ => Order::Named { model: "m0", fallbacks: (!ids.is_empty()).then_some(ids.as_slice()) },
        };
        let step = RefCell::new(0usize);
        let calls = RefCell::new(Vec::new());
        let mut rng = fastrand::Rng::with_seed(3);
        let bench = Bench::new(&models, &tracker, &timer);
        let plan = Plan { order, strategy: rank, ..Plan::default() };
        let outcome = block_on(execute(bench.pool(&NoSignals), &req, &plan, &config, &mut rng, |model, _| {
            calls.borrow_mut().push(model.id.clone());
            timer.advance(ms(10));
            let mut i = step.borrow_mut();
            let result = match script.get(*i).copied().flatten() {
                None => Ok("ok"),
                Some(class) => Err(Failure::new(class, "scripted")),
            };
            *i += 1;
            async move { result }
        }));
        let calls = calls.into_inner();
        let attempts: Vec<Attempt> = match &outcome { Ok(e) => e.attempts.clone(), Err(e) => e.attempts().to_vec() };
        // Every call is reported, and attempts are bounded.
        prop_assert_eq!(attempts.len(), calls.len());
        prop_assert!(calls.len() <= max_attempts as usize);
        // Every model tried meets the requirements.
        for id in &calls {
            prop_assert!(eligible.iter().any(|r| &r.model.id == id), "{} does not meet the requirements", id);
        }
        // A model comes again only as a retry after a retryable failure of its
        // own (a failed model is never its own fallback; a list naming a model
        // twice tries it once).
        for (i, a) in attempts.iter().enumerate() {
            if let Some(earlier) = attempts[..i].iter().rev().find(|b| b.model == a.model) {
                prop_assert!(earlier.error.is_some_and(ErrorClass::retry_same_model), "{} again after {:?}", a.model, earlier.error);
            }
        }
        // Not-recoverable errors end the request.
        if let Some(i) = attempts.iter().position(|a| a.error.is_some_and(|c| !c.fallback() && !c.retry_same_model())) {
            prop_assert_eq!(attempts.len(), i + 1);
        }
        // At most one ejected model is tried anyway per request.
        prop_assert!(attempts.iter().filter(|a| a.forced).count() <= 1);
        // The deadline holds: no attempt starts after it (each takes 10 ms).
        prop_assert!(timer.now() <= ms(deadline_ms) + ms(10), "{:?}", timer.now());
        // A named model that qualifies and is in rotation is tried first.
        if order_kind == 2 && named_first {
            prop_assert_eq!(calls.first().map(String::as_str), Some("m0"));
        }
    }
}

// ---- Edges the mutation run found ---------------------------------------------

#[test]
fn a_p95_that_is_zero_or_not_finite_starts_no_hedge() {
    let models = fleet();
    for p95 in [0.0, f64::INFINITY, f64::NAN, -5.0] {
        let (tracker, timer) = fresh();
        let bench = Bench::new(&models, &tracker, &timer);
        let signals = move |_: &str| Signals { latency_p95_ms: Some(p95), ..Signals::default() };
        let hedged = Plan { hedge: Some(HedgeAfter::P95), ..plan(Order::Ranked) };
        let calls = RefCell::new(Vec::new());
        let mut rng = fastrand::Rng::with_seed(1);
        let served = block_on(execute(
            bench.pool(&signals),
            &Requirements::default(),
            &hedged,
            &policy(1, None),
            &mut rng,
            |model, _| {
                calls.borrow_mut().push(model.id.clone());
                AnswersLater(false)
            },
        ))
        .unwrap();
        assert_eq!(*calls.borrow(), ["alpha"], "p95 {p95}: no hedge");
        assert_eq!(served.model.id, "alpha");
    }
}

#[test]
fn a_failed_request_reports_its_attempts() {
    let models = fleet();
    let (tracker, timer) = fresh();
    let bench = Bench::new(&models, &tracker, &timer);
    let mut rng = fastrand::Rng::with_seed(1);
    let err = block_on(execute(
        bench.pool(&NoSignals),
        &Requirements::default(),
        &plan(Order::Ranked),
        &policy(1, None),
        &mut rng,
        |_, _| async { Err::<(), _>(Failure::new(ErrorClass::ServerError, "down")) },
    ))
    .unwrap_err();
    let tried: Vec<&str> = err.attempts().iter().map(|a| a.model.as_str()).collect();
    assert_eq!(tried, ["alpha", "bravo", "charlie"]);
}

/// An error that says nothing.
#[derive(Debug)]
struct Mute;

impl std::fmt::Display for Mute {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Ok(())
    }
}

impl modelfleet_errors::Classify for Mute {
    fn class(&self) -> ErrorClass {
        ErrorClass::BadRequest
    }
}

#[test]
fn an_error_without_a_message_is_listed_by_its_class_alone() {
    let models = fleet();
    let (tracker, timer) = fresh();
    let bench = Bench::new(&models, &tracker, &timer);
    let mut rng = fastrand::Rng::with_seed(1);
    let err = block_on(execute(
        bench.pool(&NoSignals),
        &Requirements::default(),
        &plan(Order::Ranked),
        &policy(1, None),
        &mut rng,
        |_, _| async { Err::<(), _>(Mute) },
    ))
    .unwrap_err();
    assert_eq!(err.to_string(), "the error cannot be retried or fall back after 1 attempt(s): alpha (bad_request)");
}

#[test]
fn without_a_deadline_a_cooldown_is_not_waited_for_and_the_failures_are_reported() {
    let models = fleet();
    let (tracker, timer) = fresh();
    tracker.acquire("charlie", secs(0)).unwrap().failure(ErrorClass::RateLimited, Some(secs(5)), secs(0));
    let (outcome, calls) = Bench::new(&models, &tracker, &timer).run(
        &plan(Order::Ranked),
        &policy(1, None),
        &Requirements::default(),
        server_error,
    );
    assert_eq!(calls, ["alpha", "bravo"]);
    assert!(timer.slept().is_empty());
    let message = outcome.unwrap_err();
    assert!(message.starts_with("every candidate failed after 2 attempt(s)"), "{message}");
}

#[test]
fn first_attempts_earn_retries_and_retries_do_not() {
    let models = vec![model("solo", 8_000, 0.9, "1", 1)];
    // 100% of requests: the request's first attempt earns exactly one retry.
    let budget = RetryBudget::new(RetryBudgetConfig { ratio: 1.0, min_per_sec: 0.0, window: secs(10) }).unwrap();
    let (tracker, timer) = fresh();
    let bench = Bench { budget: Some(&budget), ..Bench::new(&models, &tracker, &timer) };
    let (_, calls) = bench.run(&plan(Order::Ranked), &policy(5, None), &Requirements::default(), |_, _| {
        Err(Failure::new(ErrorClass::Timeout, "slow"))
    });
    assert_eq!(calls, ["solo", "solo"]);
}

#[test]
fn it_waits_for_whichever_comes_first_a_retry_or_a_model_back() {
    let models = vec![model("alpha", 8_000, 0.9, "1", 90), model("bravo", 8_000, 0.9, "1", 50)];
    // bravo is out for 5 s; alpha times out once, its retry is due 100 ms later: the retry first.
    let (tracker, timer) = fresh();
    tracker.acquire("bravo", secs(0)).unwrap().failure(ErrorClass::RateLimited, Some(secs(5)), secs(0));
    let (outcome, calls) = Bench::new(&models, &tracker, &timer).run(
        &plan(Order::Ranked),
        &policy(2, Some(secs(120))),
        &Requirements::default(),
        |_, attempt| if attempt == 1 { Err(Failure::new(ErrorClass::Timeout, "slow")) } else { Ok("ok") },
    );
    assert_eq!(calls, ["alpha", "alpha"]);
    assert!(outcome.is_ok());
    assert_eq!(timer.slept(), [ms(100)], "the retry's backoff, not bravo's 5 s");

    // bravo is out for 1 s; alpha is rate limited for 3 s: bravo first (jittered by up to a tenth).
    let (tracker, timer) = fresh();
    tracker.acquire("bravo", secs(0)).unwrap().failure(ErrorClass::RateLimited, Some(secs(1)), secs(0));
    let (outcome, calls) = Bench::new(&models, &tracker, &timer).run(
        &plan(Order::Ranked),
        &policy(2, Some(secs(120))),
        &Requirements::default(),
        |id, _| {
            if id == "alpha" {
                Err(Failure::new(ErrorClass::RateLimited, "429").with_retry_after(secs(3)))
            } else {
                Ok("ok")
            }
        },
    );
    assert_eq!(calls, ["alpha", "bravo"]);
    assert_eq!(outcome.unwrap().0, "bravo");
    let slept = timer.slept();
    assert_eq!(slept.len(), 1);
    assert!(slept[0] >= ms(990) && slept[0] <= ms(1_100), "bravo's second, not alpha's 3 s: {slept:?}");
}

/// A call that answers `result` after being polled `polls` more times (it
/// is still running when the hedge delay passes, then answers).
struct Later(u32, Option<Result<&'static str, Failure>>);

impl Future for Later {
    type Output = Result<&'static str, Failure>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        if self.0 == 0 {
            return std::task::Poll::Ready(self.1.take().unwrap_or(Ok("again")));
        }
        self.0 -= 1;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// Runs a hedged request where `script(model)` gives each call's polls and answer.
fn hedged_race(script: impl Fn(&str) -> Later) -> (String, Vec<(String, Option<ErrorClass>, bool)>) {
    let models = fleet();
    let (tracker, timer) = fresh();
    let bench = Bench::new(&models, &tracker, &timer);
    let hedged = Plan { hedge: Some(HedgeAfter::Fixed(ms(300))), ..plan(Order::Ranked) };
    let mut rng = fastrand::Rng::with_seed(1);
    let served = block_on(execute(
        bench.pool(&NoSignals),
        &Requirements::default(),
        &hedged,
        &policy(1, None),
        &mut rng,
        |model, _| script(&model.id),
    ))
    .unwrap();
    let attempts = served.attempts.iter().map(|a| (a.model.clone(), a.error, a.hedge)).collect();
    (served.model.id.clone(), attempts)
}

#[test]
fn in_a_hedge_race_a_failure_waits_for_the_other_attempt() {
    let boom = || Some(Err(Failure::new(ErrorClass::ServerError, "boom")));
    // The first attempt fails after the hedge started; the hedge answers later.
    let (served, attempts) = hedged_race(|id| if id == "alpha" { Later(2, boom()) } else { Later(5, Some(Ok("b"))) });
    assert_eq!(served, "bravo");
    assert_eq!(attempts, [("alpha".into(), Some(ErrorClass::ServerError), false), ("bravo".into(), None, true)]);
    // The hedge fails first; the first attempt answers later.
    let (served, attempts) = hedged_race(|id| if id == "alpha" { Later(5, Some(Ok("a"))) } else { Later(0, boom()) });
    assert_eq!(served, "alpha");
    assert_eq!(attempts, [("bravo".into(), Some(ErrorClass::ServerError), true), ("alpha".into(), None, false)]);
    // Both fail: the walk goes on to the next candidate.
    let (served, attempts) = hedged_race(|id| match id {
        "alpha" => Later(3, boom()),
        "bravo" => Later(1, boom()),
        _ => Later(0, Some(Ok("c"))),
    });
    assert_eq!(served, "charlie");
    assert_eq!(attempts.len(), 3);
}

#[test]
fn a_context_window_failure_skips_a_window_no_larger() {
    let mut models = fleet();
    models.push(model("alpha-twin", 8_000, 0.8, "5", 80));
    let (tracker, timer) = fresh();
    let (outcome, calls) = Bench::new(&models, &tracker, &timer).run(
        &plan(Order::Ranked),
        &policy(1, None),
        &Requirements::default(),
        |id, _| {
            if id == "alpha" { Err(Failure::new(ErrorClass::ContextWindowExceeded, "too long")) } else { Ok("ok") }
        },
    );
    assert_eq!(calls, ["alpha", "bravo"], "alpha-twin's 8k is no larger than alpha's");
    assert_eq!(outcome.unwrap().0, "bravo");
    let mut unknown = model("unknown-window", 8_000, 0.8, "5", 85);
    unknown.context_window = None;
    assert!(!executor::larger_window(&unknown, &models[0]), "an unknown window is never larger");
    assert!(executor::larger_window(&models[1], &unknown), "a known one beats an unknown failed one");
}

#[test]
fn a_retry_spends_the_budget_only_when_it_is_made() {
    let models = fleet();
    let budget = RetryBudget::new(RetryBudgetConfig { ratio: 0.0, min_per_sec: 0.1, window: secs(10) }).unwrap();
    let (tracker, timer) = fresh();
    let bench = Bench { budget: Some(&budget), ..Bench::new(&models, &tracker, &timer) };
    // alpha fails and could be retried, but bravo serves: no retry was made.
    let (outcome, calls) = bench.run(&plan(Order::Ranked), &policy(3, None), &Requirements::default(), |id, _| {
        if id == "alpha" { Err(Failure::new(ErrorClass::Timeout, "slow")) } else { Ok("ok") }
    });
    assert_eq!(calls, ["alpha", "bravo"]);
    assert!(outcome.is_ok());
    assert!((budget.remaining("prov", timer.now()) - 1.0).abs() < 1e-9, "the one retry allowed is still there");
}

#[test]
fn in_a_full_outage_a_request_tries_one_ejected_model_at_most() {
    let models = fleet();
    let (tracker, timer) = fresh();
    for m in ["alpha", "bravo", "charlie", "alpha", "bravo", "charlie"] {
        fail(&tracker, m, ErrorClass::ServerError, timer.now());
        timer.advance(ms(1));
    }
    let bench = Bench::new(&models, &tracker, &timer);
    let (outcome, calls) =
        bench.run(&plan(Order::Ranked), &policy(3, Some(secs(1))), &Requirements::default(), server_error);
    assert_eq!(calls, ["alpha"], "alpha was ejected first; the others stay out: ejection still sheds load");
    assert!(outcome.is_err());
}

#[test]
fn with_every_probe_busy_it_looks_again_within_the_deadline() {
    let models = vec![model("solo", 8_000, 0.9, "1", 1)];
    let circuit =
        CircuitConfig::new(CircuitSettings { half_open_probes: 1, min_requests: 1, ..CircuitSettings::default() })
            .unwrap();
    let tracker = Tracker::new(TrackerConfig { circuit, ..TrackerConfig::default() });
    let timer = ManualTimer::new();
    fail(&tracker, "solo", ErrorClass::ServerError, secs(0));
    timer.advance(secs(31));
    let held = tracker.acquire("solo", timer.now()).unwrap();
    assert!(held.is_probe());
    let bench = Bench::new(&models, &tracker, &timer);
    // With a deadline it polls, a quarter second (jittered up to a tenth)
    // at a time, until the deadline: 10 s is about 36 polls.
    let (outcome, calls) =
        bench.run(&plan(Order::Ranked), &policy(1, Some(secs(10))), &Requirements::default(), |_, _| Ok("ok"));
    assert!(calls.is_empty());
    assert!(outcome.unwrap_err().contains("probes busy"));
    let slept = timer.slept();
    assert!(slept.iter().all(|d| *d >= ms(250) && *d <= ms(275)), "{slept:?}");
    assert!(slept.len() >= 35, "it kept looking until the deadline: {slept:?}");
    assert!(slept.iter().sum::<Duration>() <= secs(10));
    // The probe answers: the next request goes through.
    held.success(timer.now());
    let (outcome, calls) =
        bench.run(&plan(Order::Ranked), &policy(1, Some(secs(1))), &Requirements::default(), |_, _| Ok("ok"));
    assert_eq!(calls, ["solo"]);
    assert!(outcome.is_ok());
}

#[test]
fn a_hedge_is_an_attempt_within_the_bound() {
    let models = fleet();
    let (tracker, timer) = fresh();
    let bench = Bench::new(&models, &tracker, &timer);
    let hedged = Plan { hedge: Some(HedgeAfter::Fixed(ms(300))), ..plan(Order::Ranked) };
    let config = ExecutorConfig { max_attempts_per_request: 1, ..policy(1, None) };
    let calls = RefCell::new(Vec::new());
    let mut rng = fastrand::Rng::with_seed(1);
    let served =
        block_on(execute(bench.pool(&NoSignals), &Requirements::default(), &hedged, &config, &mut rng, |model, _| {
            calls.borrow_mut().push(model.id.clone());
            Later(2, Some(Ok("late")))
        }))
        .unwrap();
    assert_eq!(*calls.borrow(), ["alpha"], "one attempt allowed: no hedge");
    assert_eq!(served.attempts.len(), 1);
}

#[test]
fn a_list_naming_a_model_twice_tries_it_once() {
    let models = fleet();
    let (tracker, timer) = fresh();
    let bench = Bench::new(&models, &tracker, &timer);
    let list = ["bravo".to_owned(), "charlie".to_owned(), "bravo".to_owned()];
    let (_, calls) = bench.run(&plan(Order::Explicit(&list)), &policy(1, None), &Requirements::default(), server_error);
    assert_eq!(calls, ["bravo", "charlie"]);
    let named = plan(Order::Named { model: "alpha", fallbacks: Some(&list) });
    let (tracker, timer) = fresh();
    let (_, calls) =
        Bench::new(&models, &tracker, &timer).run(&named, &policy(1, None), &Requirements::default(), server_error);
    assert_eq!(calls, ["alpha", "bravo", "charlie"]);
}

#[test]
fn a_p95_too_large_for_a_duration_starts_no_hedge_and_no_panic() {
    let models = fleet();
    let (tracker, timer) = fresh();
    let bench = Bench::new(&models, &tracker, &timer);
    let signals = |_: &str| Signals { latency_p95_ms: Some(1e300), ..Signals::default() };
    let hedged = Plan { hedge: Some(HedgeAfter::P95), ..plan(Order::Ranked) };
    let mut rng = fastrand::Rng::with_seed(1);
    let served = block_on(execute(
        bench.pool(&signals),
        &Requirements::default(),
        &hedged,
        &policy(1, None),
        &mut rng,
        |_, _| Later(2, Some(Ok("late"))),
    ))
    .unwrap();
    assert_eq!(served.model.id, "alpha");
}

#[test]
fn an_ejection_during_the_request_can_push_it_over_the_threshold() {
    let models = vec![model("alpha", 8_000, 0.9, "1", 90), model("bravo", 8_000, 0.9, "1", 50)];
    let (tracker, timer) = fresh();
    // alpha is ejected (1 of 2: allowed); bravo has failed once.
    for m in ["alpha", "alpha", "bravo"] {
        fail(&tracker, m, ErrorClass::ServerError, timer.now());
        timer.advance(ms(1));
    }
    let bench = Bench::new(&models, &tracker, &timer);
    let (outcome, calls) =
        bench.run(&plan(Order::Ranked), &policy(1, Some(secs(120))), &Requirements::default(), |id, _| {
            if id == "bravo" { server_error(id, 0) } else { Ok("ok") }
        });
    // bravo's second failure ejects it too: 2 of 2, so alpha is tried anyway.
    assert_eq!(calls, ["bravo", "alpha"]);
    let (_, _, attempts) = outcome.unwrap();
    assert!(attempts[1].forced);
}

#[test]
fn with_probes_busy_and_a_model_cooling_down_it_polls_until_that_model_is_back() {
    let models = vec![model("probing", 8_000, 0.9, "1", 90), model("cooling", 8_000, 0.9, "1", 50)];
    let circuit =
        CircuitConfig::new(CircuitSettings { half_open_probes: 1, min_requests: 1, ..CircuitSettings::default() })
            .unwrap();
    let tracker = Tracker::new(TrackerConfig { circuit, ..TrackerConfig::default() });
    let timer = ManualTimer::new();
    fail(&tracker, "probing", ErrorClass::ServerError, secs(0));
    timer.advance(secs(31));
    let _held = tracker.acquire("probing", timer.now()).unwrap();
    tracker.acquire("cooling", timer.now()).unwrap().failure(ErrorClass::RateLimited, Some(secs(2)), timer.now());
    let bench = Bench::new(&models, &tracker, &timer);
    let (outcome, calls) =
        bench.run(&plan(Order::Ranked), &policy(1, Some(secs(10))), &Requirements::default(), |_, _| Ok("ok"));
    assert_eq!(calls, ["cooling"], "served once the cooling model is back");
    assert!(outcome.is_ok());
    let slept = timer.slept();
    // A quarter second at a time, the last one up to the cooling model's return: none spins.
    assert!(slept.iter().all(|d| *d >= ms(100)) && slept.len() <= 9, "{slept:?}");
    assert!(slept.iter().sum::<Duration>() >= secs(2));
}
