//! Tracker tests: one per rule in the module docs, at its boundary and one
//! step either side, plus properties of probe slots (the half-open circuit's
//! and re-admission's) and dropped permits.

use std::time::Duration;

use modelfleet_errors::ErrorClass;
use proptest::prelude::*;

use super::*;

const NS: Duration = Duration::from_nanos(1);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The last instant before `t`.
fn before(t: Duration) -> Duration {
    t.saturating_sub(NS)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Cooldowns that never eject (for circuit tests).
fn no_ejections() -> CooldownConfig {
    CooldownConfig {
        escalate_after: u32::MAX,
        timeouts_to_eject: u32::MAX,
        request_specific_to_eject: u32::MAX,
        ..CooldownConfig::default()
    }
}

/// A circuit that never trips (for cooldown tests).
fn no_trips() -> CircuitSettings {
    CircuitSettings { min_requests: u32::MAX, ..CircuitSettings::default() }
}

fn tracker(cooldown: CooldownConfig, circuit: CircuitSettings) -> Tracker {
    Tracker::new(TrackerConfig { cooldown, circuit: CircuitConfig::new(circuit).unwrap() })
}

/// A tracker for circuit tests (no cooldowns) with `circuit`.
fn breaker(circuit: CircuitSettings) -> Tracker {
    tracker(no_ejections(), circuit)
}

/// A tracker for cooldown tests (the circuit never trips) with `cooldown`.
fn cooler(cooldown: CooldownConfig) -> Tracker {
    tracker(cooldown, no_trips())
}

fn ok(t: &Tracker, at: Duration) {
    t.acquire("m", at).unwrap().success(at);
}

fn fail(t: &Tracker, class: ErrorClass, at: Duration) {
    t.acquire("m", at).unwrap().failure(class, None, at);
}

/// `n` permits for "m" taken at `at` (calls in flight together).
fn held(t: &Tracker, n: usize, at: Duration) -> Vec<Permit> {
    (0..n).map(|_| t.acquire("m", at).unwrap()).collect()
}

/// Trips "m"'s circuit at `at` with `min_requests` server errors.
fn trip(t: &Tracker, at: Duration) {
    for permit in held(t, t.config().circuit.settings().min_requests as usize, at) {
        permit.failure(ErrorClass::ServerError, None, at);
    }
    assert_eq!(t.circuit("m", at), CircuitState::Open);
}

/// (successes, slow successes, failures) in "m"'s window at `now`.
fn window(t: &Tracker, now: Duration) -> (u32, u32, u32) {
    let state = t.inner.models.get("m").map(|s| *s).unwrap_or_default();
    let width = bucket_width(t.config().circuit.settings().window);
    state.window.live(width, now).fold((0, 0, 0), |(ok, slow, failed), c| (ok + c.ok, slow + c.slow, failed + c.failed))
}

fn cooldown(t: &Tracker, now: Duration) -> Option<(ErrorClass, Duration)> {
    t.health("m", now).cooldown
}

fn is_probe(result: &Result<Permit, Availability>) -> bool {
    result.as_ref().is_ok_and(Permit::is_probe)
}

// ---- Configuration -------------------------------------------------------------

#[test]
fn defaults() {
    let c = CooldownConfig::default();
    assert_eq!(
        (c.short, c.max_retry_after, c.escalating_base, c.escalating_max, c.escalate_after, c.long),
        (secs(5), secs(60), secs(2), secs(60), 2, secs(300))
    );
    assert_eq!(
        (c.timeouts_to_eject, c.request_specific_to_eject, c.multiplier_decay, c.streak_decay),
        (3, 3, secs(30), secs(30))
    );
    let s = CircuitSettings::default();
    assert_eq!((s.window, s.min_requests, s.open_for, s.half_open_probes), (secs(30), 10, secs(30), 3));
    assert_eq!(s.slow_call_duration, secs(60));
    assert!(s.failure_ratio.to_bits() == 0.5f64.to_bits() && s.slow_call_ratio.to_bits() == 1.0f64.to_bits());
    assert_eq!(CircuitConfig::new(s), Ok(CircuitConfig::default()));
    assert_eq!(CircuitConfig::default().settings(), &s);
    let config = TrackerConfig { cooldown: CooldownConfig { short: secs(7), ..c }, circuit: CircuitConfig::default() };
    assert_eq!(Tracker::new(config).config(), &config);
}

#[test]
fn circuit_config_rejects_each_unusable_field() {
    fn check(change: impl FnOnce(&mut CircuitSettings), expect: &str) {
        let mut s = CircuitSettings::default();
        change(&mut s);
        assert_eq!(CircuitConfig::new(s), Err(InvalidConfig(expect.to_owned())));
        assert_eq!(CircuitConfig::new(s).unwrap_err().to_string(), expect);
    }
    check(|s| s.window = Duration::ZERO, "circuit window must be greater than zero (got 0ns)");
    check(|s| s.open_for = Duration::ZERO, "circuit open_for must be greater than zero (got 0ns)");
    check(|s| s.slow_call_duration = Duration::ZERO, "circuit slow_call_duration must be greater than zero (got 0ns)");
    check(|s| s.min_requests = 0, "circuit min_requests must be at least 1 (got 0)");
    check(|s| s.half_open_probes = 0, "circuit half_open_probes must be at least 1 (got 0)");
    for (bad, shown) in [(0.0, "0"), (-0.5, "-0.5"), (1.5, "1.5"), (f64::NAN, "NaN"), (f64::INFINITY, "inf")] {
        check(|s| s.failure_ratio = bad, &format!("circuit failure_ratio must be in (0, 1] (got {shown})"));
        check(|s| s.slow_call_ratio = bad, &format!("circuit slow_call_ratio must be in (0, 1] (got {shown})"));
    }
    // The edges that are fine.
    let edges = CircuitSettings {
        window: NS,
        min_requests: 1,
        failure_ratio: 1.0,
        open_for: NS,
        half_open_probes: 1,
        slow_call_duration: NS,
        slow_call_ratio: f64::MIN_POSITIVE,
    };
    assert_eq!(CircuitConfig::new(edges).map(|c| *c.settings()), Ok(edges));
    let edges = CircuitSettings { failure_ratio: f64::MIN_POSITIVE, slow_call_ratio: 1.0, ..edges };
    assert_eq!(CircuitConfig::new(edges).map(|c| *c.settings()), Ok(edges));
}

#[test]
fn cooldown_config_check_rejects_each_unusable_field() {
    fn check(change: impl FnOnce(&mut CooldownConfig)) -> Result<(), String> {
        let mut c = CooldownConfig::default();
        change(&mut c);
        let checked = c.check().map_err(|e| e.to_string());
        let built = TrackerConfig::new(c, CircuitConfig::default());
        assert_eq!(built.map(|config| config.cooldown).map_err(|e| e.to_string()), checked.clone().map(|()| c));
        checked
    }
    assert_eq!(check(|_| {}), Ok(()));
    let one = |field: &str| Err(format!("cooldown {field} must be at least 1 (got 0)"));
    assert_eq!(check(|c| c.escalate_after = 0), one("escalate_after"));
    assert_eq!(check(|c| c.timeouts_to_eject = 0), one("timeouts_to_eject"));
    assert_eq!(check(|c| c.request_specific_to_eject = 0), one("request_specific_to_eject"));
    let zero = |field: &str| Err(format!("cooldown {field} must be greater than zero (got 0ns)"));
    assert_eq!(check(|c| c.escalating_base = Duration::ZERO), zero("escalating_base"));
    assert_eq!(check(|c| c.multiplier_decay = Duration::ZERO), zero("multiplier_decay"));
    assert_eq!(check(|c| c.streak_decay = Duration::ZERO), zero("streak_decay"));
    // escalating_max against escalating_base (2 s): one step below, at, above.
    assert_eq!(
        check(|c| c.escalating_max = before(secs(2))),
        Err("cooldown escalating_max must be at least escalating_base (2s) (got 1.999999999s)".to_owned())
    );
    assert_eq!(check(|c| c.escalating_max = secs(2)), Ok(()));
    assert_eq!(check(|c| c.escalating_max = secs(2) + NS), Ok(()));
    // The edges that are fine: thresholds of 1, the smallest durations, and
    // zero where it means "no cooldown of that kind".
    let edges = CooldownConfig {
        short: Duration::ZERO,
        max_retry_after: Duration::ZERO,
        escalating_base: NS,
        escalating_max: NS,
        escalate_after: 1,
        long: Duration::ZERO,
        timeouts_to_eject: 1,
        request_specific_to_eject: 1,
        multiplier_decay: NS,
        streak_decay: NS,
    };
    assert_eq!(edges.check(), Ok(()));
    let config = TrackerConfig::new(edges, CircuitConfig::default());
    assert_eq!(config, Ok(TrackerConfig { cooldown: edges, circuit: CircuitConfig::default() }));
}

#[test]
fn names_gauges_and_classes() {
    let states = [CircuitState::Closed, CircuitState::HalfOpen, CircuitState::Open];
    assert_eq!(states.map(CircuitState::as_str), ["closed", "half_open", "open"]);
    assert_eq!(states.map(CircuitState::gauge), [0, 1, 2]);
    let until = secs(1);
    let answers = [
        (Availability::Available, true),
        (Availability::Probe, true),
        (Availability::CoolingDown { class: ErrorClass::RateLimited, until }, false),
        (Availability::CircuitOpen { until }, false),
        (Availability::ProbesBusy, false),
    ];
    for (availability, expect) in answers {
        assert_eq!(availability.is_available(), expect, "{availability:?}");
    }
    let against: Vec<_> = ErrorClass::ALL.into_iter().filter(|&c| counts_against_model(c)).collect();
    assert_eq!(against, [ErrorClass::Timeout, ErrorClass::ServerError, ErrorClass::Connection]);
    let faults: Vec<_> = ErrorClass::ALL.into_iter().filter(|&c| client_fault(c)).collect();
    assert_eq!(faults, [ErrorClass::BadRequest, ErrorClass::ContextWindowExceeded, ErrorClass::ContentPolicy]);
}

// ---- Sliding window -------------------------------------------------------------

#[test]
fn window_buckets_age_out_after_ten_widths() {
    assert_eq!(bucket_width(secs(30)), secs(3));
    assert_eq!(bucket_width(Duration::from_nanos(25)), Duration::from_nanos(2));
    assert_eq!(bucket_width(Duration::from_nanos(5)), NS, "at least 1 ns");
    let width = secs(3);
    let sum = |ring: &Ring<u32>, now: Duration| ring.live(width, now).sum::<u32>();
    let mut ring = Ring::<u32>::default();
    *ring.at(width, secs(1)) += 1; // epoch 0
    *ring.at(width, secs(15)) += 10; // epoch 5
    assert_eq!(sum(&ring, secs(15)), 11);
    assert_eq!(sum(&ring, before(secs(30))), 11, "epoch 9: epoch 0 still in");
    assert_eq!(sum(&ring, secs(30)), 10, "epoch 10: epoch 0 out");
    assert_eq!(sum(&ring, secs(33)), 10);
    assert_eq!(sum(&ring, before(secs(45))), 10, "epoch 14: epoch 5 still in");
    assert_eq!(sum(&ring, secs(45)), 0);
    assert_eq!(sum(&ring, secs(12)), 1, "a bucket after now is not live");
    // Reusing a slot starts it from zero.
    *ring.at(width, secs(300)) += 100; // epoch 100, slot 0
    assert_eq!(sum(&ring, secs(300)), 100);
    *ring.at(width, secs(301)) += 1;
    assert_eq!(sum(&ring, secs(302)), 101, "same bucket");
    *ring.at(width, secs(333)) += 5; // epoch 111, slot 1
    assert_eq!(sum(&ring, secs(333)), 5);
}

// ---- Permits ----------------------------------------------------------------------

#[test]
fn unknown_model_is_available_and_healthy() {
    let t = Tracker::new(TrackerConfig::default());
    assert_eq!(t.availability("m", secs(1)), Availability::Available);
    assert_eq!(t.ejected_since("m", secs(1)), None);
    let fresh = t.health("m", secs(1));
    assert_eq!(fresh.circuit, CircuitState::Closed);
    assert_eq!(
        (fresh.failures, fresh.successes, fresh.client_faults, fresh.ejections, fresh.multiplier),
        (0, 0, 0, 0, 0)
    );
    assert!(!fresh.readmitting);
    let permit = t.acquire("m", secs(3)).unwrap();
    assert_eq!((permit.model(), permit.is_probe(), permit.is_forced(), permit.started()), ("m", false, false, secs(3)));
    let debug = format!("{permit:?}");
    assert!(
        debug.starts_with("Permit { model: \"m\", admission: Ordinary, forced: false, generation: 0, spell: 0,"),
        "{debug}"
    );
    drop(permit);
    assert_eq!(t.health("m", secs(3)), fresh);
    let forced = t.acquire_forced("n", secs(4));
    assert_eq!((forced.model(), forced.is_probe(), forced.is_forced(), forced.started()), ("n", false, true, secs(4)));
    forced.success(secs(5));
    assert_eq!(t.health("n", secs(5)).successes, 1);
}

#[test]
fn trackers_and_permits_are_shared_and_sendable() {
    fn sendable<T: Send + Sync + 'static>() {}
    sendable::<Permit>();
    sendable::<Tracker>();
    let t = Tracker::new(TrackerConfig::default());
    let clone = t.clone();
    fail(&clone, ErrorClass::QuotaExhausted, secs(0));
    assert!(!t.availability("m", secs(1)).is_available(), "one state behind both handles");
}

#[test]
fn release_drop_and_neutral_classes_record_nothing() {
    let t = tracker(CooldownConfig::default(), CircuitSettings { min_requests: 3, ..CircuitSettings::default() });
    ok(&t, secs(0));
    fail(&t, ErrorClass::ServerError, secs(0));
    let before = t.health("m", secs(1));
    let window_before = window(&t, secs(1));
    t.acquire("m", secs(1)).unwrap().release();
    drop(t.acquire("m", secs(1)).unwrap());
    for class in [ErrorClass::Cancelled, ErrorClass::BudgetExceeded, ErrorClass::Internal] {
        t.acquire("m", secs(1)).unwrap().failure(class, Some(secs(9)), secs(1));
        t.acquire_forced("m", secs(1)).failure(class, Some(secs(9)), secs(1));
    }
    assert_eq!(t.health("m", secs(1)), before);
    assert_eq!(window(&t, secs(1)), window_before);
    // The server-error streak is still 1: one more ejects (escalate_after 2).
    fail(&t, ErrorClass::ServerError, secs(1));
    assert_eq!(cooldown(&t, secs(1)), Some((ErrorClass::ServerError, secs(3))));
}

// ---- Circuit: closed → open ---------------------------------------------------------

/// The circuit after `outcomes` (true: success, false: server error) at t = 0
/// with the default settings (10 calls, 50%).
fn after(outcomes: &[bool]) -> CircuitState {
    let t = breaker(CircuitSettings::default());
    for (permit, &success) in held(&t, outcomes.len(), secs(0)).into_iter().zip(outcomes) {
        if success {
            permit.success(secs(0));
        } else {
            permit.failure(ErrorClass::ServerError, None, secs(0));
        }
    }
    t.circuit("m", secs(0))
}

#[test]
fn circuit_opens_at_the_failure_ratio_over_min_requests() {
    let (y, n) = (true, false);
    assert_eq!(after(&[n; 9]), CircuitState::Closed, "9 calls: below min_requests");
    assert_eq!(after(&[n; 10]), CircuitState::Open);
    assert_eq!(after(&[y, y, y, y, y, n, n, n, n, n]), CircuitState::Open, "5 of 10: at the ratio");
    assert_eq!(after(&[y, y, y, y, y, y, n, n, n, n]), CircuitState::Closed, "4 of 10");
    assert_eq!(after(&[n, n, n, n, n, y, y, y, y, y]), CircuitState::Open, "judged after a success too");
    assert_eq!(after(&[y, y, y, y, y, y, y, y, y, y, n, n, n, n, n, n, n, n, n]), CircuitState::Closed, "9 of 19");
    assert_eq!(after(&[y, y, y, y, y, y, y, y, y, n, n, n, n, n, n, n, n, n, n]), CircuitState::Open, "9 of 18");
}

#[test]
fn only_classes_against_the_model_enter_the_window() {
    let t = breaker(CircuitSettings { min_requests: 1, ..CircuitSettings::default() });
    let others = [
        ErrorClass::RateLimited,
        ErrorClass::QuotaExhausted,
        ErrorClass::Authentication,
        ErrorClass::NotFound,
        ErrorClass::BadRequest,
        ErrorClass::ContentPolicy,
        ErrorClass::ContextWindowExceeded,
        ErrorClass::Cancelled,
        ErrorClass::BudgetExceeded,
        ErrorClass::Internal,
    ];
    for (permit, class) in held(&t, others.len(), secs(0)).into_iter().zip(others) {
        permit.failure(class, None, secs(0));
    }
    assert_eq!(window(&t, secs(0)), (0, 0, 0));
    assert_eq!(t.circuit("m", secs(0)), CircuitState::Closed);
    for (i, class) in [ErrorClass::Timeout, ErrorClass::ServerError, ErrorClass::Connection].into_iter().enumerate() {
        let t = breaker(CircuitSettings { min_requests: 1, ..CircuitSettings::default() });
        fail(&t, class, secs(0));
        assert_eq!((window(&t, secs(0)), t.circuit("m", secs(0))), ((0, 0, 1), CircuitState::Open), "{i}: {class}");
    }
}

#[test]
fn client_faults_are_counted_apart_and_never_open_the_circuit() {
    let t = breaker(CircuitSettings { min_requests: 1, ..CircuitSettings::default() });
    for class in [ErrorClass::BadRequest, ErrorClass::ContentPolicy, ErrorClass::ContextWindowExceeded] {
        fail(&t, class, secs(1));
        fail(&t, class, secs(2));
    }
    let health = t.health("m", secs(2));
    assert_eq!((health.client_faults, health.failures, health.successes, health.consecutive_failures), (6, 0, 0, 0));
    assert_eq!((health.circuit, health.cooldown, health.last_failure_at), (CircuitState::Closed, None, None));
    assert_eq!(window(&t, secs(2)), (0, 0, 0));
}

#[test]
fn the_window_forgets_outcomes_ten_buckets_old() {
    // 30 s window in 3 s buckets: an outcome at 0 counts until 30 s (epoch 10).
    for (last, expect) in [(before(secs(30)), CircuitState::Open), (secs(30), CircuitState::Closed)] {
        let t = breaker(CircuitSettings::default());
        let permits = held(&t, 10, secs(0));
        for (i, permit) in permits.into_iter().enumerate() {
            let at = if i < 9 { secs(0) } else { last };
            permit.failure(ErrorClass::Timeout, None, at);
        }
        assert_eq!(t.circuit("m", last), expect, "{last:?}");
    }
}

#[test]
fn slow_successes_open_the_circuit() {
    // Default: slow from 60 s, ratio 1.0, over 10 calls.
    let run = |slow_call_ratio: f64, latencies: &[Duration]| {
        let t = breaker(CircuitSettings { slow_call_ratio, ..CircuitSettings::default() });
        for (permit, &latency) in held(&t, latencies.len(), secs(0)).into_iter().zip(latencies) {
            permit.success(latency);
        }
        (t.circuit("m", secs(60)), window(&t, secs(60)))
    };
    let (slow, fast) = (secs(60), before(secs(60)));
    assert_eq!(run(1.0, &[slow; 10]), (CircuitState::Open, (10, 10, 0)));
    assert_eq!(
        run(1.0, &[fast, slow, slow, slow, slow, slow, slow, slow, slow, slow]),
        (CircuitState::Closed, (10, 9, 0))
    );
    assert_eq!(run(1.0, &[slow; 9]), (CircuitState::Closed, (9, 9, 0)), "below min_requests");
    assert_eq!(run(0.5, &[fast, fast, fast, fast, fast, slow, slow, slow, slow, slow]).0, CircuitState::Open);
    assert_eq!(run(0.5, &[fast, fast, fast, fast, fast, fast, slow, slow, slow, slow]).0, CircuitState::Closed);
}

#[test]
fn a_success_is_slow_by_the_latency_it_is_given() {
    // One call is enough (min_requests 1); one slow success of one opens.
    let settings = CircuitSettings { min_requests: 1, ..CircuitSettings::default() };
    // A stream started at 0 ends at 200 s: its time to first token decides.
    for (latency, expect) in [
        (before(secs(60)), (CircuitState::Closed, (1, 0, 0))),
        (secs(60), (CircuitState::Open, (1, 1, 0))),
        (secs(60) + NS, (CircuitState::Open, (1, 1, 0))),
    ] {
        let t = breaker(settings);
        t.acquire("m", secs(0)).unwrap().success_with_latency(secs(200), latency);
        assert_eq!((t.circuit("m", secs(200)), window(&t, secs(200))), expect, "{latency:?}");
        assert_eq!(t.health("m", secs(200)).successes, 1);
    }
    // `success` judges `now - started`, from whenever it started.
    for (end, expect) in [(before(secs(160)), CircuitState::Closed), (secs(160), CircuitState::Open)] {
        let t = breaker(settings);
        t.acquire("m", secs(100)).unwrap().success(end);
        assert_eq!(t.circuit("m", end), expect, "{end:?}");
    }
    // A probe's success counts for the spell whatever its latency.
    let t = breaker(CircuitSettings { half_open_probes: 1, ..settings });
    trip(&t, secs(0));
    t.acquire("m", secs(30)).unwrap().success_with_latency(secs(300), secs(299));
    assert_eq!(t.circuit("m", secs(300)), CircuitState::Closed);
}

// ---- Circuit: open → half-open → closed or open ---------------------------------------------

#[test]
fn open_circuit_turns_half_open_at_until() {
    let t = breaker(CircuitSettings::default());
    trip(&t, secs(10));
    assert_eq!(t.acquire("m", before(secs(40))).unwrap_err(), Availability::CircuitOpen { until: secs(40) });
    assert_eq!(t.availability("m", before(secs(40))), Availability::CircuitOpen { until: secs(40) });
    assert_eq!(t.circuit("m", before(secs(40))), CircuitState::Open);
    assert_eq!(t.availability("m", secs(40)), Availability::Probe);
    assert_eq!(t.circuit("m", secs(40)), CircuitState::HalfOpen);
}

#[test]
fn half_open_admits_probes_and_closes_after_that_many_successes() {
    // A 60 s window keeps the trip's failures in it while half-open.
    let t = breaker(CircuitSettings { window: secs(60), ..CircuitSettings::default() });
    trip(&t, secs(0));
    for _ in 0..5 {
        assert_eq!(t.availability("m", secs(30)), Availability::Probe, "read-only: reserves nothing");
    }
    let [first, second, third] = [(); 3].map(|()| t.acquire("m", secs(30)).unwrap());
    assert!(first.is_probe() && second.is_probe() && third.is_probe());
    assert_eq!(t.acquire("m", secs(30)).unwrap_err(), Availability::ProbesBusy);
    assert_eq!(t.availability("m", secs(30)), Availability::ProbesBusy);
    first.success(secs(31));
    assert_eq!(t.circuit("m", secs(31)), CircuitState::HalfOpen, "1 of 3");
    let fourth = t.acquire("m", secs(31)).unwrap();
    assert!(fourth.is_probe(), "the answered probe's slot is free again");
    assert_eq!(t.acquire("m", secs(31)).unwrap_err(), Availability::ProbesBusy, "and only that one");
    second.success(secs(32));
    assert_eq!(t.circuit("m", secs(32)), CircuitState::HalfOpen, "2 of 3");
    assert_eq!(window(&t, secs(32)), (0, 0, 10), "the trip's failures are still in the window");
    third.success(secs(32));
    assert_eq!(t.circuit("m", secs(32)), CircuitState::Closed, "3 of 3");
    assert_eq!(window(&t, secs(32)), (0, 0, 0), "cleared on closing");
    fourth.success(secs(33));
    assert_eq!(window(&t, secs(33)), (1, 0, 0), "a probe answering after the close is an ordinary call");
    assert_eq!(t.circuit("m", secs(33)), CircuitState::Closed);
    assert_eq!(t.health("m", secs(33)).successes, 4);
}

#[test]
fn a_probe_failure_against_the_model_reopens_for_open_for() {
    for class in [ErrorClass::ServerError, ErrorClass::Timeout, ErrorClass::Connection] {
        let t = breaker(CircuitSettings::default());
        trip(&t, secs(0));
        let probe = t.acquire("m", secs(40)).unwrap();
        probe.failure(class, None, secs(45));
        assert_eq!(t.availability("m", before(secs(75))), Availability::CircuitOpen { until: secs(75) }, "{class}");
        assert_eq!(t.availability("m", secs(75)), Availability::Probe, "{class}");
    }
}

#[test]
fn other_probe_answers_free_the_slot_and_keep_half_open() {
    for class in [ErrorClass::BadRequest, ErrorClass::RateLimited, ErrorClass::Authentication, ErrorClass::Cancelled] {
        let t = breaker(CircuitSettings::default());
        trip(&t, secs(0));
        let [a, _b, _c] = [(); 3].map(|()| t.acquire("m", secs(30)).unwrap());
        a.failure(class, None, secs(31));
        // A rate limit cools down 5 s; then the slot is there.
        assert_eq!(t.circuit("m", secs(36)), CircuitState::HalfOpen, "{class}");
        assert!(is_probe(&t.acquire("m", secs(36))), "{class}");
    }
}

#[test]
fn a_dropped_or_released_probe_frees_its_slot() {
    let t = breaker(CircuitSettings::default());
    trip(&t, secs(0));
    let [a, b, _c] = [(); 3].map(|()| t.acquire("m", secs(30)).unwrap());
    assert_eq!(t.acquire("m", secs(30)).unwrap_err(), Availability::ProbesBusy);
    drop(a);
    let d = t.acquire("m", secs(30)).unwrap();
    assert!(d.is_probe());
    b.release();
    assert!(is_probe(&t.acquire("m", secs(30))));
    assert_eq!(t.health("m", secs(30)).failures, 10, "neither counted");
    assert_eq!(t.health("m", secs(30)).successes, 0);
}

/// A default tracker whose "m" tripped at 0 (one ejection) and turned
/// half-open at 30 s.
fn half_open() -> Tracker {
    let t = breaker(CircuitSettings::default());
    trip(&t, secs(0));
    assert_eq!(t.circuit("m", secs(30)), CircuitState::HalfOpen);
    t
}

/// Takes the remaining probes of "m"'s spell at `at` and has them succeed.
fn close_with_probes(t: &Tracker, n: usize, at: Duration) {
    for probe in held(t, n, at) {
        assert!(probe.is_probe());
        probe.success(at);
    }
}

#[test]
fn a_slow_probe_is_waited_for_however_long_it_takes() {
    // The probe is admitted at 30; 30 s (where a half-open timeout would have fired)
    // would have run out at 60. Its answer, at any time, is the spell's.
    for (answer_at, success) in [(before(secs(60)), true), (secs(60), true), (secs(60) + NS, true), (secs(150), false)]
    {
        let t = half_open();
        let slow = t.acquire("m", secs(30)).unwrap();
        for at in [before(secs(60)), secs(60), secs(60) + NS, secs(150)] {
            let health = t.health("m", at);
            assert_eq!((health.circuit, health.ejections), (CircuitState::HalfOpen, 1), "{at:?}");
        }
        if success {
            slow.success(answer_at);
            assert_eq!(t.circuit("m", answer_at), CircuitState::HalfOpen, "1 of 3");
            close_with_probes(&t, 2, answer_at);
            assert_eq!(t.circuit("m", answer_at), CircuitState::Closed, "{answer_at:?}: the slow probe counted");
            assert_eq!(t.health("m", answer_at).ejections, 1);
        } else {
            // Its failure is the spell's too: one more ejection, open for open_for.
            slow.failure(ErrorClass::Timeout, None, answer_at);
            assert_eq!(t.availability("m", answer_at), Availability::CircuitOpen { until: secs(180) });
            assert_eq!(t.health("m", answer_at).ejections, 2);
        }
    }
}

#[test]
fn a_probe_in_flight_is_waited_for_while_the_others_come_and_go() {
    let t = half_open();
    let [long, quick, dropped] = [(); 3].map(|()| t.acquire("m", secs(30)).unwrap());
    quick.success(secs(31));
    drop(dropped);
    quick_probe_answers(&t, secs(100));
    t.acquire("m", secs(500)).unwrap().success(secs(500));
    assert_eq!(t.circuit("m", secs(1_000)), CircuitState::HalfOpen, "2 of 3, the long one still in flight");
    assert_eq!(t.health("m", secs(1_000)).ejections, 1);
    long.success(secs(1_000));
    assert_eq!(t.circuit("m", secs(1_000)), CircuitState::Closed);
}

/// One probe taken at `at` answers with a client fault: its slot is free
/// again, nothing opened.
fn quick_probe_answers(t: &Tracker, at: Duration) {
    let probe = t.acquire("m", at).unwrap();
    assert!(probe.is_probe());
    probe.failure(ErrorClass::BadRequest, None, at);
}

#[test]
fn a_dropped_or_released_lone_probe_is_no_answer_and_no_ejection() {
    // With 30 s (where a half-open timeout would have fired) from the probe's admission
    // at 30: the state at 60 and either side, and long after, is the one of
    // a twin that never took the probe.
    let give_back = [(|p: Permit| drop(p)) as fn(Permit), Permit::release];
    for (i, give_back) in give_back.into_iter().enumerate() {
        let (t, twin) = (half_open(), half_open());
        give_back(t.acquire("m", secs(30)).unwrap());
        for at in [secs(30), before(secs(60)), secs(60), secs(60) + NS, secs(1_000)] {
            let health = t.health("m", at);
            assert_eq!(health, twin.health("m", at), "{i}: {at:?}");
            assert_eq!((health.circuit, health.ejections), (CircuitState::HalfOpen, 1), "{i}: {at:?}");
            assert_eq!(t.availability("m", at), Availability::Probe, "{i}: {at:?}");
        }
        // The next probes close it.
        close_with_probes(&t, 3, secs(1_000));
        let health = t.health("m", secs(1_000));
        assert_eq!((health.circuit, health.ejections, health.multiplier), (CircuitState::Closed, 1, 0), "{i}");
    }
}

#[test]
fn an_idle_half_open_circuit_waits_for_traffic_and_keeps_its_successes() {
    let t = half_open();
    assert_eq!(t.circuit("m", secs(10_000)), CircuitState::HalfOpen, "no probe ever: no timeout");
    // Probes far apart (each gap longer than any timeout would allow) still add up: a
    // model with little traffic closes its circuit.
    for (n, at) in [(1, secs(10_000)), (2, secs(10_100)), (3, secs(20_000))] {
        assert_eq!(t.health("m", before(at)).circuit, CircuitState::HalfOpen, "{n}");
        t.acquire("m", at).unwrap().success(at);
        let expect = if n < 3 { CircuitState::HalfOpen } else { CircuitState::Closed };
        assert_eq!(t.circuit("m", at), expect, "{n} of 3");
    }
    assert_eq!(t.health("m", secs(20_000)).ejections, 1, "time alone ejected nothing");
}

// ---- Generations ------------------------------------------------------------------------

#[test]
fn outcomes_from_before_the_opening_move_no_circuit() {
    let one_probe = CircuitSettings { half_open_probes: 1, ..CircuitSettings::default() };
    // A success of a call started before the opening is no probe success.
    let t = breaker(one_probe);
    let early = t.acquire("m", secs(0)).unwrap();
    trip(&t, secs(1));
    early.success(secs(31));
    assert_eq!(t.circuit("m", secs(31)), CircuitState::HalfOpen);
    assert_eq!(t.health("m", secs(31)).successes, 1, "but it is counted");
    assert!(is_probe(&t.acquire("m", secs(31))), "and took no slot");
    // Nor is its failure a probe failure, nor does it free the probe's slot.
    let t = breaker(one_probe);
    let early = t.acquire("m", secs(0)).unwrap();
    trip(&t, secs(1));
    let probe = t.acquire("m", secs(31)).unwrap();
    early.failure(ErrorClass::ServerError, None, secs(31));
    assert_eq!(t.circuit("m", secs(31)), CircuitState::HalfOpen);
    assert_eq!(t.health("m", secs(31)).failures, 11);
    assert_eq!(t.acquire("m", secs(31)).unwrap_err(), Availability::ProbesBusy);
    probe.success(secs(32));
    assert_eq!(t.circuit("m", secs(32)), CircuitState::Closed);
}

#[test]
fn a_probe_from_an_earlier_spell_frees_no_slot_of_the_next() {
    let t = breaker(CircuitSettings { half_open_probes: 2, ..CircuitSettings::default() });
    trip(&t, secs(0));
    let [old, failing] = [(); 2].map(|()| t.acquire("m", secs(30)).unwrap());
    failing.failure(ErrorClass::ServerError, None, secs(30));
    assert_eq!(t.availability("m", secs(30)), Availability::CircuitOpen { until: secs(60) }, "a new generation");
    let new = held(&t, 2, secs(60));
    assert!(new.iter().all(Permit::is_probe));
    drop(old);
    assert_eq!(t.acquire("m", secs(60)).unwrap_err(), Availability::ProbesBusy);
    drop(new);
    assert_eq!(held(&t, 2, secs(60)).len(), 2);
}

#[test]
fn outcomes_from_before_the_opening_enter_no_window() {
    let t = breaker(CircuitSettings { half_open_probes: 1, ..CircuitSettings::default() });
    let [early_failure, early_success] = [(); 2].map(|()| t.acquire("m", secs(0)).unwrap());
    trip(&t, secs(1));
    t.acquire("m", secs(31)).unwrap().success(secs(31));
    assert_eq!(t.circuit("m", secs(31)), CircuitState::Closed);
    early_failure.failure(ErrorClass::ServerError, None, secs(32));
    early_success.success(secs(32));
    assert_eq!(window(&t, secs(32)), (0, 0, 0));
    assert_eq!(t.health("m", secs(32)).failures, 11);
    ok(&t, secs(32));
    assert_eq!(window(&t, secs(32)), (1, 0, 0));
}

// ---- Cooldowns and ejections ----------------------------------------------------------------

#[test]
fn rate_limits_cool_down_without_ejecting() {
    let t = Tracker::new(TrackerConfig::default());
    let rate_limit = |model: &str, retry_after: Option<Duration>, at: Duration| {
        t.acquire(model, at).unwrap().failure(ErrorClass::RateLimited, retry_after, at);
    };
    rate_limit("a", Some(secs(3)), secs(10));
    let until = secs(13);
    assert_eq!(
        t.acquire("a", before(until)).unwrap_err(),
        Availability::CoolingDown { class: ErrorClass::RateLimited, until }
    );
    assert_eq!(t.availability("a", until), Availability::Available);
    rate_limit("b", None, secs(10));
    assert_eq!(t.health("b", secs(10)).cooldown, Some((ErrorClass::RateLimited, secs(15))), "short");
    rate_limit("c", Some(secs(60)), secs(10));
    assert_eq!(t.health("c", secs(10)).cooldown, Some((ErrorClass::RateLimited, secs(70))));
    rate_limit("d", Some(secs(61)), secs(10));
    assert_eq!(t.health("d", secs(10)).cooldown, Some((ErrorClass::RateLimited, secs(70))), "capped");
    let health = t.health("d", secs(10));
    assert_eq!((health.ejections, health.multiplier, health.failures), (0, 0, 1));
    // A zero cooldown is none.
    let t = cooler(CooldownConfig { short: Duration::ZERO, ..CooldownConfig::default() });
    fail(&t, ErrorClass::RateLimited, secs(10));
    assert_eq!((cooldown(&t, secs(10)), t.ejected_since("m", secs(10))), (None, None));
}

#[test]
fn quota_ejects_long_at_once() {
    let t = cooler(CooldownConfig::default());
    fail(&t, ErrorClass::QuotaExhausted, secs(10));
    assert_eq!(
        t.availability("m", before(secs(310))),
        Availability::CoolingDown { class: ErrorClass::QuotaExhausted, until: secs(310) }
    );
    assert_eq!(t.availability("m", secs(310)), Availability::Probe, "re-admitted");
    let health = t.health("m", secs(10));
    assert_eq!((health.ejections, health.multiplier, health.ejected_since), (1, 1, Some(secs(10))));
}

#[test]
fn server_errors_eject_for_base_times_multiplier_capped() {
    let t = cooler(CooldownConfig::default());
    let classes = [ErrorClass::ServerError, ErrorClass::Connection];
    for (i, permit) in (1..=33u32).zip(held(&t, 33, secs(0))) {
        permit.failure(classes[i as usize % 2], None, secs(0));
        let health = t.health("m", secs(0));
        assert_eq!(health.consecutive_failures, i);
        if i < 2 {
            assert_eq!((health.cooldown, health.ejections, health.multiplier), (None, 0, 0), "{i}");
            continue;
        }
        let multiplier = i - 1;
        let until = (secs(2) * multiplier).min(secs(60));
        // From the 31st on the cap makes the new ejection equal, so the class stays.
        assert_eq!(health.cooldown, Some((classes[i.min(31) as usize % 2], until)), "{i}");
        assert_eq!((health.ejections, health.multiplier), (u64::from(multiplier), multiplier), "{i}");
    }
    assert_eq!(cooldown(&t, secs(0)).map(|c| c.1), Some(secs(60)));
}

#[test]
fn escalate_after_is_the_first_failure_that_ejects() {
    let t = cooler(CooldownConfig { escalate_after: 3, ..CooldownConfig::default() });
    fail(&t, ErrorClass::ServerError, secs(0));
    fail(&t, ErrorClass::Connection, secs(0));
    assert_eq!(cooldown(&t, secs(0)), None);
    fail(&t, ErrorClass::ServerError, secs(0));
    assert_eq!(cooldown(&t, secs(0)), Some((ErrorClass::ServerError, secs(2))));
}

#[test]
fn timeouts_eject_from_the_third_in_a_row() {
    let t = cooler(CooldownConfig::default());
    fail(&t, ErrorClass::Timeout, secs(0));
    fail(&t, ErrorClass::Timeout, secs(0));
    assert_eq!(cooldown(&t, secs(0)), None);
    fail(&t, ErrorClass::Timeout, secs(0));
    assert_eq!(cooldown(&t, secs(0)), Some((ErrorClass::Timeout, secs(2))));
    assert_eq!(t.health("m", secs(0)).ejections, 1);
    // Separate streaks: neither reaches its threshold.
    let t = cooler(CooldownConfig::default());
    fail(&t, ErrorClass::Timeout, secs(0));
    fail(&t, ErrorClass::Timeout, secs(0));
    fail(&t, ErrorClass::ServerError, secs(0));
    assert_eq!(cooldown(&t, secs(0)), None);
    assert_eq!(t.health("m", secs(0)).consecutive_failures, 3);
}

#[test]
fn authentication_and_not_found_eject_long_from_the_third() {
    let t = cooler(CooldownConfig::default());
    fail(&t, ErrorClass::Authentication, secs(0));
    fail(&t, ErrorClass::Authentication, secs(0));
    let health = t.health("m", secs(0));
    assert_eq!((health.cooldown, health.failures, health.ejections), (None, 2, 0));
    assert_eq!(health.consecutive_failures, 0, "not a failure of the model");
    fail(&t, ErrorClass::NotFound, secs(0));
    assert_eq!(cooldown(&t, secs(0)), Some((ErrorClass::NotFound, secs(300))));
    assert_eq!(t.health("m", secs(0)).ejections, 1);
}

#[test]
fn a_success_resets_every_streak() {
    let t = cooler(CooldownConfig::default());
    let round = |at: Duration| {
        fail(&t, ErrorClass::ServerError, at);
        for class in [ErrorClass::Timeout, ErrorClass::Timeout, ErrorClass::Authentication, ErrorClass::NotFound] {
            fail(&t, class, at);
        }
    };
    round(secs(0));
    assert_eq!(t.health("m", secs(0)).consecutive_failures, 3);
    ok(&t, secs(1));
    assert_eq!(t.health("m", secs(1)).consecutive_failures, 0);
    round(secs(2));
    let health = t.health("m", secs(2));
    assert_eq!((health.cooldown, health.ejections, health.consecutive_failures), (None, 0, 3));
}

#[test]
fn streaks_are_forgotten_after_streak_decay() {
    for (second, expect) in [(secs(30), Some((ErrorClass::ServerError, secs(32)))), (secs(30) + NS, None)] {
        let t = cooler(CooldownConfig::default());
        fail(&t, ErrorClass::ServerError, secs(0));
        assert_eq!(t.health("m", secs(30)).consecutive_failures, 1);
        assert_eq!(t.health("m", secs(30) + NS).consecutive_failures, 0);
        fail(&t, ErrorClass::ServerError, second);
        assert_eq!(cooldown(&t, second), expect, "{second:?}");
    }
}

/// Three server errors at 0 (`escalate_after` 1): multiplier 3, cooldown 6 s.
fn thrice_ejected(multiplier_decay: Duration) -> Tracker {
    let t = cooler(CooldownConfig { escalate_after: 1, multiplier_decay, ..CooldownConfig::default() });
    for permit in held(&t, 3, secs(0)) {
        permit.failure(ErrorClass::ServerError, None, secs(0));
    }
    assert_eq!(cooldown(&t, secs(0)), Some((ErrorClass::ServerError, secs(6))));
    t
}

#[test]
fn the_multiplier_decays_one_per_interval_after_the_ejection_ends() {
    let t = thrice_ejected(secs(30));
    let multiplier = |at: Duration| t.health("m", at).multiplier;
    assert_eq!(multiplier(secs(5)), 3, "no decay while ejected");
    assert_eq!(multiplier(before(secs(36))), 3);
    assert_eq!(multiplier(secs(36)), 2);
    assert_eq!(multiplier(before(secs(66))), 2);
    assert_eq!(multiplier(secs(66)), 1);
    assert_eq!(multiplier(secs(96)), 0);
    assert_eq!(multiplier(secs(10_000)), 0);
    // The next ejection builds on the decayed multiplier: 1 + 1.
    let t = thrice_ejected(secs(30));
    fail(&t, ErrorClass::Connection, secs(66));
    assert_eq!(cooldown(&t, secs(66)), Some((ErrorClass::Connection, secs(70))));
    assert_eq!((t.health("m", secs(66)).multiplier, t.health("m", secs(66)).ejections), (2, 4));
    // A zero interval: gone as soon as the ejection ends.
    let t = thrice_ejected(Duration::ZERO);
    assert_eq!((t.health("m", before(secs(6))).multiplier, t.health("m", secs(6)).multiplier), (3, 0));
}

#[test]
fn a_longer_or_equal_cooldown_stays() {
    // Longer: quota, then a rate limit.
    let t = cooler(CooldownConfig::default());
    let late = t.acquire("m", secs(0)).unwrap();
    fail(&t, ErrorClass::QuotaExhausted, secs(0));
    late.failure(ErrorClass::RateLimited, None, secs(1));
    assert_eq!(cooldown(&t, secs(1)), Some((ErrorClass::QuotaExhausted, secs(300))));
    // Equal: a 2 s rate limit, then a 2 s ejection.
    let t = cooler(CooldownConfig { escalate_after: 1, ..CooldownConfig::default() });
    let late = t.acquire("m", secs(0)).unwrap();
    t.acquire("m", secs(0)).unwrap().failure(ErrorClass::RateLimited, Some(secs(2)), secs(0));
    late.failure(ErrorClass::ServerError, None, secs(0));
    assert_eq!(cooldown(&t, secs(0)), Some((ErrorClass::RateLimited, secs(2))));
    // Shorter: replaced, and the ejection still began with the first.
    let t = cooler(CooldownConfig::default());
    let late = t.acquire("m", secs(0)).unwrap();
    fail(&t, ErrorClass::RateLimited, secs(0));
    late.failure(ErrorClass::QuotaExhausted, None, secs(1));
    assert_eq!(cooldown(&t, secs(1)), Some((ErrorClass::QuotaExhausted, secs(301))));
    assert_eq!(t.ejected_since("m", secs(6)), Some(secs(0)));
}

#[test]
fn only_a_forced_success_ends_an_ejection() {
    let t = cooler(CooldownConfig::default());
    let in_flight = t.acquire("m", secs(0)).unwrap();
    fail(&t, ErrorClass::QuotaExhausted, secs(0));
    in_flight.success(secs(1));
    assert_eq!(cooldown(&t, secs(1)), Some((ErrorClass::QuotaExhausted, secs(300))));
}

#[test]
fn circuit_openings_are_ejections() {
    let t = breaker(CircuitSettings::default());
    trip(&t, secs(0));
    let health = t.health("m", secs(0));
    assert_eq!((health.ejections, health.multiplier, health.ejected_since), (1, 1, Some(secs(0))));
    t.acquire("m", secs(30)).unwrap().failure(ErrorClass::ServerError, None, secs(30));
    let health = t.health("m", secs(30));
    assert_eq!((health.ejections, health.multiplier, health.ejected_since), (2, 2, Some(secs(0))));
    // The open period ends at 60; 60 to 90 is a full decay interval, so
    // the probe failure at 90 finds 1 and makes it 2.
    let probe = t.acquire("m", secs(60)).unwrap();
    probe.failure(ErrorClass::Connection, None, secs(90));
    let health = t.health("m", secs(90));
    assert_eq!((health.circuit, health.ejections, health.multiplier), (CircuitState::Open, 3, 2));
}

#[test]
fn one_failure_counts_one_ejection() {
    let t = tracker(
        CooldownConfig { escalate_after: 1, ..CooldownConfig::default() },
        CircuitSettings { min_requests: 1, ..CircuitSettings::default() },
    );
    fail(&t, ErrorClass::ServerError, secs(0));
    let health = t.health("m", secs(0));
    assert_eq!((health.circuit, health.cooldown), (CircuitState::Open, Some((ErrorClass::ServerError, secs(2)))));
    assert_eq!((health.ejections, health.multiplier), (1, 1));
}

#[test]
fn ejected_since_is_the_earliest_start_in_force() {
    // A cooldown alone, rate limits included.
    let t = cooler(CooldownConfig::default());
    fail(&t, ErrorClass::RateLimited, secs(5));
    assert_eq!(t.ejected_since("m", before(secs(10))), Some(secs(5)));
    assert_eq!(t.ejected_since("m", secs(10)), None);
    // A circuit, then a cooldown.
    let t = breaker(CircuitSettings::default());
    let late = t.acquire("m", secs(0)).unwrap();
    trip(&t, secs(0));
    late.failure(ErrorClass::RateLimited, None, secs(3));
    assert_eq!(t.ejected_since("m", secs(3)), Some(secs(0)));
    assert_eq!(t.ejected_since("m", secs(30)), Some(secs(0)), "half-open is still ejected");
    assert_eq!(t.health("m", secs(30)).ejected_since, Some(secs(0)));
    // A cooldown, then a circuit.
    let t = breaker(CircuitSettings::default());
    let early = held(&t, 10, secs(0));
    fail(&t, ErrorClass::RateLimited, secs(1));
    for permit in early {
        permit.failure(ErrorClass::ServerError, None, secs(2));
    }
    assert_eq!(t.ejected_since("m", secs(2)), Some(secs(1)));
    assert_eq!(t.ejected_since("m", secs(6)), Some(secs(2)), "the cooldown ended");
}

// ---- Re-admission ----------------------------------------------------------------------------

/// A cooldown-only tracker with `cooldown` and `half_open_probes` probes.
fn readmitter(cooldown: CooldownConfig, half_open_probes: u32) -> Tracker {
    tracker(cooldown, CircuitSettings { half_open_probes, ..no_trips() })
}

/// Ejects "m" at 0 with two server errors (`escalate_after` 2): cooled down
/// until 2 s, multiplier 1.
fn eject(t: &Tracker) {
    fail(t, ErrorClass::ServerError, secs(0));
    fail(t, ErrorClass::ServerError, secs(0));
    assert_eq!(cooldown(t, secs(0)), Some((ErrorClass::ServerError, secs(2))));
}

/// Whether `n` permits for "m" taken together at `at` are all ordinary.
fn unlimited(t: &Tracker, n: usize, at: Duration) -> bool {
    let permits: Vec<_> = (0..n).map(|_| t.acquire("m", at)).collect();
    permits.iter().all(|p| p.as_ref().is_ok_and(|p| !p.is_probe()))
}

#[test]
fn every_ejection_cooldown_ends_in_readmission_of_half_open_probes() {
    fn check(probes: u32, ejection: impl Fn(&Tracker), until: Duration) {
        let t = readmitter(CooldownConfig::default(), probes);
        ejection(&t);
        assert!(t.acquire("m", before(until)).is_err());
        assert!(!t.health("m", before(until)).readmitting, "not while cooling down");
        assert_eq!(t.availability("m", until), Availability::Probe);
        let health = t.health("m", until);
        assert!(health.readmitting);
        assert_eq!((health.cooldown, health.ejected_since), (None, None), "no longer ejected");
        let permits = held(&t, probes as usize, until);
        assert!(permits.iter().all(Permit::is_probe), "{permits:?}");
        assert_eq!(t.acquire("m", until).unwrap_err(), Availability::ProbesBusy);
        assert_eq!(t.availability("m", until), Availability::ProbesBusy);
        assert_eq!(t.acquire("m", secs(10_000)).unwrap_err(), Availability::ProbesBusy, "no timeout");
    }
    let repeat = |class: ErrorClass, n: usize| move |t: &Tracker| (0..n).for_each(|_| fail(t, class, secs(0)));
    for probes in [1, 3] {
        check(probes, eject, secs(2));
        check(probes, repeat(ErrorClass::Timeout, 3), secs(2));
        check(probes, repeat(ErrorClass::QuotaExhausted, 1), secs(300));
        check(probes, repeat(ErrorClass::Authentication, 3), secs(300));
        check(probes, repeat(ErrorClass::NotFound, 3), secs(300));
    }
}

#[test]
fn a_rate_limit_ends_in_full_traffic() {
    let t = readmitter(CooldownConfig::default(), 1);
    t.acquire("m", secs(0)).unwrap().failure(ErrorClass::RateLimited, Some(secs(2)), secs(0));
    assert_eq!(t.availability("m", secs(2)), Availability::Available);
    assert!(!t.health("m", secs(2)).readmitting);
    assert!(unlimited(&t, 5, secs(2)));
    // An ejection a longer rate limit took over ends as a rate limit ...
    let t = readmitter(CooldownConfig::default(), 1);
    let late = t.acquire("m", secs(0)).unwrap();
    eject(&t);
    late.failure(ErrorClass::RateLimited, Some(secs(10)), secs(1));
    assert!(unlimited(&t, 5, secs(11)));
    // ... and a rate limit an ejection lengthened as an ejection.
    let t = readmitter(CooldownConfig::default(), 1);
    let late = t.acquire("m", secs(0)).unwrap();
    t.acquire("m", secs(0)).unwrap().failure(ErrorClass::RateLimited, Some(secs(2)), secs(0));
    late.failure(ErrorClass::QuotaExhausted, None, secs(1));
    assert_eq!(t.availability("m", secs(301)), Availability::Probe);
}

#[test]
fn the_first_success_ends_readmission() {
    let t = readmitter(CooldownConfig::default(), 3);
    eject(&t);
    let [a, b, c] = [(); 3].map(|()| t.acquire("m", secs(2)).unwrap());
    a.success(secs(3));
    let health = t.health("m", secs(3));
    assert_eq!((health.readmitting, health.successes), (false, 1));
    assert_eq!(t.availability("m", secs(3)), Availability::Available);
    assert!(unlimited(&t, 10, secs(3)));
    // The others answer as ordinary calls: the success reset the streak, so
    // a server error no longer ejects at once.
    b.failure(ErrorClass::ServerError, None, secs(4));
    assert_eq!((cooldown(&t, secs(4)), t.availability("m", secs(4))), (None, Availability::Available));
    c.release();
    assert!(unlimited(&t, 10, secs(4)));
    // A success of a call started before the ejection ends it too, and so
    // does a forced one.
    let t = readmitter(CooldownConfig::default(), 1);
    let early = t.acquire("m", secs(0)).unwrap();
    eject(&t);
    let _probe = t.acquire("m", secs(2)).unwrap();
    early.success(secs(3));
    assert!(unlimited(&t, 5, secs(3)));
    let t = readmitter(CooldownConfig::default(), 1);
    eject(&t);
    let _probe = t.acquire("m", secs(2)).unwrap();
    let forced = t.acquire_forced("m", secs(2));
    assert!(!forced.is_probe());
    forced.success(secs(3));
    assert!(unlimited(&t, 5, secs(3)));
    // A forced success ends a cooldown with no re-admission after it.
    let t = readmitter(CooldownConfig::default(), 1);
    eject(&t);
    t.acquire_forced("m", secs(1)).success(secs(1));
    assert!(!t.health("m", secs(2)).readmitting);
    assert!(unlimited(&t, 5, secs(2)));
}

#[test]
fn a_released_or_dropped_readmission_permit_frees_its_slot() {
    let t = readmitter(CooldownConfig::default(), 2);
    eject(&t);
    let [a, b] = [(); 2].map(|()| t.acquire("m", secs(2)).unwrap());
    let before = t.health("m", secs(2));
    drop(a);
    assert_eq!(t.health("m", secs(2)), before, "recorded nothing");
    let c = t.acquire("m", secs(2)).unwrap();
    assert!(c.is_probe(), "the dropped permit's slot");
    assert_eq!(t.acquire("m", secs(2)).unwrap_err(), Availability::ProbesBusy, "and only that one");
    b.release();
    assert_eq!(t.health("m", secs(2)), before);
    assert!(is_probe(&t.acquire("m", secs(2))));
    assert_eq!((before.successes, before.failures, before.readmitting), (0, 2, true));
}

#[test]
fn answers_not_against_the_model_free_the_slot_and_keep_readmitting() {
    for class in [ErrorClass::BadRequest, ErrorClass::Cancelled, ErrorClass::Authentication, ErrorClass::RateLimited] {
        let t = readmitter(CooldownConfig::default(), 1);
        eject(&t);
        t.acquire("m", secs(2)).unwrap().failure(class, None, secs(3));
        // A rate limit cools down 5 s (no re-admission then), then it resumes.
        let after = if class == ErrorClass::RateLimited {
            let cooling = t.health("m", before(secs(8)));
            assert_eq!((cooling.cooldown, cooling.readmitting), (Some((class, secs(8))), false));
            secs(8)
        } else {
            secs(3)
        };
        assert!(t.health("m", after).readmitting, "{class}");
        let probe = t.acquire("m", after);
        assert!(is_probe(&probe), "{class}: the slot is free");
        assert_eq!(t.acquire("m", after).unwrap_err(), Availability::ProbesBusy, "{class}: one slot");
        assert_eq!(t.health("m", after).ejections, 1, "{class}");
    }
}

#[test]
fn a_readmission_permit_from_an_earlier_readmission_frees_no_slot_of_the_next() {
    let t = readmitter(CooldownConfig::default(), 1);
    let early = t.acquire("m", secs(0)).unwrap();
    eject(&t);
    let old = t.acquire("m", secs(2)).unwrap();
    // The streak (2) is still there: the early call's failure ejects again.
    early.failure(ErrorClass::ServerError, None, secs(2));
    assert_eq!(cooldown(&t, secs(2)), Some((ErrorClass::ServerError, secs(6))));
    let new = t.acquire("m", secs(6)).unwrap();
    assert!(new.is_probe());
    drop(old);
    assert_eq!(t.acquire("m", secs(6)).unwrap_err(), Availability::ProbesBusy);
    drop(new);
    assert!(is_probe(&t.acquire("m", secs(6))));
}

#[test]
fn a_readmission_failure_against_the_model_ejects_again_at_once() {
    // Streaks decay after 1 s, so the ejection's streak is gone at 2 s.
    let quick = CooldownConfig { streak_decay: secs(1), ..CooldownConfig::default() };
    for class in [ErrorClass::ServerError, ErrorClass::Connection, ErrorClass::Timeout] {
        let t = readmitter(quick, 3);
        eject(&t);
        assert_eq!(t.health("m", secs(2)).consecutive_failures, 0, "{class}");
        let [trial, other] = [(); 2].map(|()| t.acquire("m", secs(2)).unwrap());
        trial.failure(class, None, secs(3));
        let health = t.health("m", secs(3));
        assert_eq!(health.cooldown, Some((class, secs(7))), "{class}: 2 s × 2");
        assert_eq!((health.ejections, health.multiplier, health.readmitting), (2, 2, false), "{class}");
        // Its end starts a new re-admission.
        drop(other);
        assert_eq!(t.availability("m", secs(7)), Availability::Probe, "{class}");
        let probes = held(&t, 3, secs(7));
        assert!(probes.iter().all(Permit::is_probe), "{class}");
        assert_eq!(t.acquire("m", secs(7)).unwrap_err(), Availability::ProbesBusy, "{class}");
    }
    // A forced permit is no re-admission permit: its failure follows the
    // streak, and it holds no slot.
    let t = readmitter(quick, 1);
    eject(&t);
    let _probe = t.acquire("m", secs(2)).unwrap();
    t.acquire_forced("m", secs(2)).failure(ErrorClass::ServerError, None, secs(3));
    let health = t.health("m", secs(3));
    assert_eq!((health.cooldown, health.ejections, health.readmitting), (None, 1, true));
    assert_eq!(t.acquire("m", secs(3)).unwrap_err(), Availability::ProbesBusy);
}

#[test]
fn readmission_limits_only_a_closed_circuit() {
    // One server error at 0 both cools down (until 2) and opens the circuit (until 30).
    let t = tracker(
        CooldownConfig { escalate_after: 1, ..CooldownConfig::default() },
        CircuitSettings { min_requests: 1, half_open_probes: 2, ..CircuitSettings::default() },
    );
    fail(&t, ErrorClass::ServerError, secs(0));
    assert_eq!(t.availability("m", secs(2)), Availability::CircuitOpen { until: secs(30) });
    assert!(!t.health("m", secs(2)).readmitting, "the circuit rules");
    // Half-open: the circuit's probes, its slots only.
    let [a, b] = [(); 2].map(|()| t.acquire("m", secs(30)).unwrap());
    assert_eq!(t.acquire("m", secs(30)).unwrap_err(), Availability::ProbesBusy);
    assert!(!t.health("m", secs(30)).readmitting);
    a.success(secs(31));
    assert_eq!(t.circuit("m", secs(31)), CircuitState::HalfOpen, "1 of 2");
    b.success(secs(31));
    assert_eq!(t.circuit("m", secs(31)), CircuitState::Closed);
    assert!(!t.health("m", secs(31)).readmitting, "ended by the probes' successes");
    assert!(unlimited(&t, 5, secs(31)));
}

// ---- Forced permits ------------------------------------------------------------------------

#[test]
fn a_forced_success_ends_a_cooldown() {
    let t = cooler(CooldownConfig::default());
    fail(&t, ErrorClass::QuotaExhausted, secs(0));
    assert!(t.acquire("m", secs(10)).is_err());
    let forced = t.acquire_forced("m", secs(10));
    assert!(forced.is_forced() && !forced.is_probe());
    forced.success(secs(11));
    assert_eq!(t.availability("m", secs(11)), Availability::Available);
    assert_eq!((cooldown(&t, secs(11)), t.ejected_since("m", secs(11))), (None, None));
    // The ejection ended at 11: the multiplier decays from there.
    assert_eq!(t.health("m", before(secs(41))).multiplier, 1);
    assert_eq!(t.health("m", secs(41)).multiplier, 0);
}

#[test]
fn a_forced_success_closes_an_open_or_half_open_circuit() {
    let t = breaker(CircuitSettings::default());
    trip(&t, secs(0));
    t.acquire_forced("m", secs(5)).success(secs(6));
    assert_eq!((t.circuit("m", secs(6)), t.ejected_since("m", secs(6))), (CircuitState::Closed, None));
    assert_eq!(window(&t, secs(6)), (0, 0, 0));
    let t = breaker(CircuitSettings::default());
    trip(&t, secs(0));
    let probes = held(&t, 3, secs(30));
    assert_eq!(t.acquire("m", secs(30)).unwrap_err(), Availability::ProbesBusy);
    t.acquire_forced("m", secs(30)).success(secs(31));
    assert_eq!(t.circuit("m", secs(31)), CircuitState::Closed);
    drop(probes);
    assert_eq!(t.circuit("m", secs(31)), CircuitState::Closed);
}

#[test]
fn a_forced_permit_on_a_healthy_model_counts_as_usual() {
    let t = tracker(CooldownConfig::default(), CircuitSettings { min_requests: 3, ..CircuitSettings::default() });
    t.acquire_forced("m", secs(0)).success(secs(0));
    assert_eq!(window(&t, secs(0)), (1, 0, 0));
    t.acquire_forced("m", secs(0)).failure(ErrorClass::ServerError, None, secs(0));
    t.acquire_forced("m", secs(0)).failure(ErrorClass::ServerError, None, secs(0));
    let health = t.health("m", secs(0));
    assert_eq!(health.circuit, CircuitState::Open, "2 of 3 calls failed");
    assert_eq!(
        (health.ejections, health.cooldown),
        (1, Some((ErrorClass::ServerError, secs(2)))),
        "one failure, one ejection"
    );
    assert_eq!(window(&t, secs(0)), (1, 0, 2));
}

#[test]
fn a_forced_failure_while_ejected_is_no_new_ejection() {
    let t = cooler(CooldownConfig::default());
    fail(&t, ErrorClass::QuotaExhausted, secs(0));
    for _ in 0..3 {
        t.acquire_forced("m", secs(1)).failure(ErrorClass::ServerError, None, secs(1));
    }
    let health = t.health("m", secs(1));
    assert_eq!((health.failures, health.consecutive_failures), (4, 3), "counted");
    assert_eq!((health.ejections, health.multiplier), (1, 1), "not ejected again");
    assert_eq!(health.cooldown, Some((ErrorClass::QuotaExhausted, secs(300))), "not extended");
    assert_eq!(window(&t, secs(1)), (0, 0, 0));
    // Its own cooldown replaces a shorter one, at the current multiplier (at least 1).
    let t = cooler(CooldownConfig { escalate_after: 1, escalating_base: secs(10), ..CooldownConfig::default() });
    fail(&t, ErrorClass::RateLimited, secs(0));
    t.acquire_forced("m", secs(1)).failure(ErrorClass::ServerError, None, secs(1));
    let health = t.health("m", secs(1));
    assert_eq!(
        (health.cooldown, health.ejections, health.multiplier),
        (Some((ErrorClass::ServerError, secs(11))), 0, 0)
    );
    assert_eq!(health.ejected_since, Some(secs(0)));
    let t = cooler(CooldownConfig { escalate_after: 1, ..CooldownConfig::default() });
    for permit in held(&t, 2, secs(0)) {
        permit.failure(ErrorClass::ServerError, None, secs(0));
    }
    assert_eq!(cooldown(&t, secs(0)), Some((ErrorClass::ServerError, secs(4))));
    t.acquire_forced("m", secs(1)).failure(ErrorClass::Connection, None, secs(1));
    let health = t.health("m", secs(1));
    assert_eq!((health.cooldown, health.ejections, health.multiplier), (Some((ErrorClass::Connection, secs(5))), 2, 2));
    // The multiplier's decay still counts from the end of the last counted ejection (4 s).
    assert_eq!(t.health("m", secs(34)).multiplier, 1);
}

// ---- Reports ---------------------------------------------------------------------------------

#[test]
fn health_and_all_report_every_field_as_of_now() {
    let t = Tracker::new(TrackerConfig::default());
    t.acquire("b", secs(0)).unwrap().success(secs(0));
    t.acquire("a", secs(0)).unwrap().failure(ErrorClass::ServerError, None, secs(1));
    t.acquire("a", secs(1)).unwrap().failure(ErrorClass::Timeout, None, secs(1));
    t.acquire("a", secs(1)).unwrap().failure(ErrorClass::BadRequest, None, secs(1));
    let forced = t.acquire_forced("a", secs(1));
    forced.failure(ErrorClass::ServerError, None, secs(2)); // streak 2: ejected until 4
    let a = t.health("a", secs(3));
    assert_eq!(
        a,
        ModelHealth {
            circuit: CircuitState::Closed,
            consecutive_failures: 3,
            cooldown: Some((ErrorClass::ServerError, secs(4))),
            failures: 3,
            successes: 0,
            last_failure_at: Some(secs(2)),
            client_faults: 1,
            ejections: 1,
            multiplier: 1,
            ejected_since: Some(secs(2)),
            readmitting: false,
            remote: None,
        }
    );
    let all = t.all(secs(4));
    assert_eq!(all, vec![("a".to_owned(), t.health("a", secs(4))), ("b".to_owned(), t.health("b", secs(4)))]);
    assert_eq!((all[0].1.cooldown, all[0].1.readmitting), (None, true), "ended by now, re-admitting");
    assert!(!all[1].1.readmitting);
    assert_eq!(all[1].1.successes, 1);
}

// ---- Ejections shared between replicas --------------------------------------------------------

const SERVER: EjectionReason = EjectionReason::Cooldown(ErrorClass::ServerError);

/// The local ejections an observer was told of: (model, reason, until, at).
type Told = Arc<std::sync::Mutex<Vec<(String, EjectionReason, Duration, Duration)>>>;

/// A tracker whose observer writes down every local ejection it is told of.
fn observed(config: TrackerConfig) -> (Tracker, Told) {
    let told = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&told);
    let observer: EjectionObserver = Arc::new(move |e: LocalEjection<'_>| {
        sink.lock().unwrap().push((e.model.to_owned(), e.reason, e.until, e.at));
    });
    (Tracker::with_observer(config, observer), told)
}

#[test]
fn a_remote_ejection_is_skipped_until_it_ends_and_is_no_local_ejection() {
    let t = Tracker::new(TrackerConfig::default());
    assert!(t.eject_remote("m", SERVER, secs(10), secs(2)));
    let out = Availability::CoolingDown { class: ErrorClass::ServerError, until: secs(10) };
    for at in [secs(2), secs(5), before(secs(10))] {
        assert_eq!(t.availability("m", at), out);
        assert_eq!(t.acquire("m", at).map(|p| p.model().to_owned()), Err(out));
    }
    let h = t.health("m", secs(5));
    assert_eq!(h.remote, Some(RemoteEjection { reason: SERVER, since: secs(2), until: secs(10) }));
    assert_eq!((h.ejections, h.multiplier, h.cooldown, h.circuit), (0, 0, None, CircuitState::Closed));
    assert_eq!(h.ejected_since, Some(secs(2)));
    assert_eq!(t.all(secs(5)), vec![("m".to_owned(), h)]);
    // It ends at its time, with full traffic (no re-admission: it was not ours).
    assert_eq!(t.availability("m", secs(10)), Availability::Available);
    let after = t.health("m", secs(10));
    assert_eq!((after.remote, after.readmitting, after.ejected_since), (None, false, None));
    assert!(!t.acquire("m", secs(10)).unwrap().is_probe());
    // An opened circuit elsewhere reads as an open circuit here.
    assert!(t.eject_remote("n", EjectionReason::CircuitOpen, secs(30), secs(10)));
    assert_eq!(t.availability("n", secs(10)), Availability::CircuitOpen { until: secs(30) });
    assert_eq!(t.circuit("n", secs(10)), CircuitState::Closed, "its own circuit is untouched");
    // One that already ended is not taken.
    assert!(!t.eject_remote("o", SERVER, secs(10), secs(10)));
    assert_eq!(t.availability("o", secs(10)), Availability::Available);
}

#[test]
fn a_remote_ejection_only_grows_and_a_longer_local_one_says_more() {
    let t = cooler(CooldownConfig::default());
    assert!(t.eject_remote("m", SERVER, secs(10), secs(0)));
    assert!(!t.eject_remote("m", EjectionReason::Cooldown(ErrorClass::Timeout), secs(5), secs(1)), "shorter");
    assert!(!t.eject_remote("m", SERVER, secs(10), secs(1)), "the same");
    assert!(t.eject_remote("m", EjectionReason::CircuitOpen, secs(20), secs(1)), "longer");
    assert_eq!(t.availability("m", secs(1)), Availability::CircuitOpen { until: secs(20) });
    assert_eq!(t.health("m", secs(1)).remote.map(|r| r.since), Some(secs(0)), "it keeps its start");
    // A shorter local ejection does not hide a longer remote one…
    let forced = t.acquire_forced("m", secs(2));
    forced.failure(ErrorClass::QuotaExhausted, None, secs(2)); // local: until 2 + 300
    // …and a longer local one is what it answers.
    assert_eq!(
        t.availability("m", secs(3)),
        Availability::CoolingDown { class: ErrorClass::QuotaExhausted, until: secs(302) }
    );
    assert!(!t.eject_remote("m", SERVER, secs(100), secs(3)), "the local one ends later");
    let u = cooler(CooldownConfig::default());
    fail(&u, ErrorClass::RateLimited, secs(0)); // local: until 5
    assert!(u.eject_remote("m", SERVER, secs(8), secs(1)));
    assert_eq!(
        u.availability("m", secs(1)),
        Availability::CoolingDown { class: ErrorClass::ServerError, until: secs(8) }
    );
    assert_eq!(u.health("m", secs(1)).ejected_since, Some(secs(0)), "the earliest start in force");
}

#[test]
fn local_ejections_are_told_and_successes_and_releases_never() {
    let (t, told) =
        observed(TrackerConfig { circuit: CircuitConfig::new(no_trips()).unwrap(), ..TrackerConfig::default() });
    ok(&t, secs(0));
    drop(t.acquire("m", secs(0)));
    t.acquire("m", secs(0)).unwrap().release();
    fail(&t, ErrorClass::ServerError, secs(1)); // a streak of 1: no ejection yet
    fail(&t, ErrorClass::BadRequest, secs(1)); // the client's fault
    assert!(told.lock().unwrap().is_empty(), "{:?}", told.lock().unwrap());
    fail(&t, ErrorClass::ServerError, secs(1)); // ejected until 1 + 2
    assert_eq!(*told.lock().unwrap(), vec![("m".to_owned(), SERVER, secs(3), secs(1))]);
    // A forced failure that keeps the longer cooldown in force tells nothing…
    let forced = t.acquire_forced("m", secs(2));
    forced.failure(ErrorClass::RateLimited, Some(ms(500)), secs(2));
    assert_eq!(told.lock().unwrap().len(), 1);
    // …one that lengthens it does.
    t.acquire_forced("m", secs(2)).failure(ErrorClass::RateLimited, Some(secs(9)), secs(2));
    assert_eq!(
        told.lock().unwrap()[1],
        ("m".to_owned(), EjectionReason::Cooldown(ErrorClass::RateLimited), secs(11), secs(2))
    );
    // A circuit opening is told as one.
    let (b, opened) = observed(TrackerConfig { cooldown: no_ejections(), ..TrackerConfig::default() });
    trip(&b, secs(0));
    assert_eq!(*opened.lock().unwrap(), vec![("m".to_owned(), EjectionReason::CircuitOpen, secs(30), secs(0))]);
    // Half-open, probes that succeed, a close: nothing more.
    for permit in held(&b, 3, secs(30)) {
        permit.success(secs(31));
    }
    assert_eq!(b.circuit("m", secs(31)), CircuitState::Closed);
    assert_eq!(opened.lock().unwrap().len(), 1);
}

#[test]
fn a_remote_ejection_is_never_told_again() {
    let (t, told) = observed(TrackerConfig::default());
    assert!(t.eject_remote("m", SERVER, secs(10), secs(0)));
    assert!(t.eject_remote("m", EjectionReason::CircuitOpen, secs(20), secs(1)));
    // Served anyway (panic mode) and failing: its own evidence, told as usual.
    t.acquire_forced("m", secs(2)).failure(ErrorClass::ServerError, None, secs(2));
    assert!(told.lock().unwrap().is_empty(), "one server error ejects nobody");
    t.acquire_forced("m", secs(2)).failure(ErrorClass::ServerError, None, secs(2));
    assert_eq!(*told.lock().unwrap(), vec![("m".to_owned(), SERVER, secs(4), secs(2))], "not the remote one");
}

#[test]
fn a_forced_success_dismisses_a_remote_ejection_until_a_later_one() {
    let t = Tracker::new(TrackerConfig::default());
    assert!(t.eject_remote("m", SERVER, secs(10), secs(0)));
    t.acquire_forced("m", secs(1)).success(secs(1));
    assert_eq!(t.availability("m", secs(1)), Availability::Available);
    assert_eq!(t.health("m", secs(1)).remote, None);
    // The shared store still has it: re-read, it is not taken again…
    assert!(!t.eject_remote("m", SERVER, secs(10), secs(2)));
    assert_eq!(t.availability("m", secs(2)), Availability::Available);
    // …but a later one (a new failure elsewhere) is.
    assert!(t.eject_remote("m", SERVER, secs(12), secs(2)));
    assert!(!t.availability("m", secs(2)).is_available());
    // An ordinary success (a call that started before) dismisses nothing.
    let u = Tracker::new(TrackerConfig::default());
    let early = u.acquire("m", secs(0)).unwrap();
    assert!(u.eject_remote("m", SERVER, secs(10), secs(1)));
    early.success(secs(2));
    assert!(!u.availability("m", secs(2)).is_available());
}

#[test]
fn reasons_are_named_as_replicas_tell_them() {
    for reason in [SERVER, EjectionReason::CircuitOpen, EjectionReason::Cooldown(ErrorClass::RateLimited)] {
        assert_eq!(EjectionReason::from_name(reason.as_str()), Some(reason));
    }
    assert_eq!(EjectionReason::CircuitOpen.as_str(), "circuit_open");
    assert_eq!(EjectionReason::from_name("Server Error"), None);
}

// ---- Properties ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    Forced,
    Succeed(usize),
    /// A success given its latency (a stream's time to first token), in ms.
    SucceedWithLatency(usize, u64),
    Fail(usize, ErrorClass),
    Drop(usize),
    Release(usize),
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let class = prop::sample::select(vec![
        ErrorClass::ServerError,
        ErrorClass::ServerError,
        ErrorClass::Timeout,
        ErrorClass::Connection,
        ErrorClass::RateLimited,
        ErrorClass::BadRequest,
        ErrorClass::Cancelled,
        ErrorClass::Authentication,
        ErrorClass::QuotaExhausted,
    ]);
    prop_oneof![
        5 => Just(Op::Acquire),
        1 => Just(Op::Forced),
        2 => any::<usize>().prop_map(Op::Succeed),
        1 => (any::<usize>(), 0..120_000u64).prop_map(|(i, l)| Op::SucceedWithLatency(i, l)),
        4 => (any::<usize>(), class).prop_map(|(i, c)| Op::Fail(i, c)),
        1 => any::<usize>().prop_map(Op::Drop),
        1 => any::<usize>().prop_map(Op::Release),
        2 => (0..12_000u64).prop_map(Op::Wait),
    ]
}

/// The slots of "m" taken and not given back, as (kind, spell, count): the
/// half-open circuit's (its spell: the generation) and re-admission's while
/// in force (its spell: the re-admission count).
fn in_flight(t: &Tracker) -> Vec<(Admission, u64, u32)> {
    let Some(state) = t.inner.models.get("m").map(|s| *s) else {
        return Vec::new();
    };
    let mut slots = Vec::new();
    if let Circuit::HalfOpen { in_flight, .. } = state.circuit {
        slots.push((Admission::Probe, state.generation, in_flight));
    }
    if let Some(in_flight) = state.readmitting {
        slots.push((Admission::Readmission, state.readmissions, in_flight));
    }
    slots
}

/// Whether `permit` holds a slot of kind `admission` taken in `spell`.
fn holds(permit: &Permit, admission: Admission, spell: u64) -> bool {
    let taken_in = match admission {
        Admission::Probe => permit.ticket.generation,
        _ => permit.ticket.spell,
    };
    permit.ticket.admission == admission && taken_in == spell
}

proptest! {
    /// Under any interleaving, the half-open circuit's slots in use are
    /// exactly the probe permits of its spell still held, and re-admission's
    /// exactly its permits of its spell still held (so neither is ever more
    /// than `half_open_probes`), a permit dropped or released changes no
    /// report, and time alone never opens a circuit, starts a cooldown,
    /// counts an ejection or raises the multiplier (so a probe in flight, or
    /// one dropped, never times the circuit out).
    #[test]
    fn probe_slots_match_the_probes_held(ops in prop::collection::vec(op(), 1..80)) {
        let t = tracker(
            // Quota and authentication ejections end within a run too.
            CooldownConfig { long: secs(8), ..CooldownConfig::default() },
            CircuitSettings {
                window: secs(10),
                min_requests: 2,
                open_for: secs(5),
                half_open_probes: 2,
                ..CircuitSettings::default()
            },
        );
        let mut now = secs(1);
        let mut permits: Vec<Permit> = Vec::new();
        for op in ops {
            let take = |permits: &mut Vec<Permit>, i: usize| {
                (!permits.is_empty()).then(|| permits.swap_remove(i % permits.len()))
            };
            match op {
                Op::Acquire => permits.extend(t.acquire("m", now).ok()),
                Op::Forced => permits.push(t.acquire_forced("m", now)),
                Op::Succeed(i) => if let Some(p) = take(&mut permits, i) { p.success(now) },
                Op::SucceedWithLatency(i, latency) => if let Some(p) = take(&mut permits, i) {
                    p.success_with_latency(now, ms(latency));
                },
                Op::Fail(i, class) => if let Some(p) = take(&mut permits, i) { p.failure(class, None, now) },
                Op::Drop(i) | Op::Release(i) => if let Some(p) = take(&mut permits, i) {
                    let before = t.health("m", now);
                    if matches!(op, Op::Drop(_)) { drop(p) } else { p.release() }
                    prop_assert_eq!(t.health("m", now), before);
                },
                Op::Wait(millis) => {
                    let before = t.health("m", now);
                    now += ms(millis);
                    let after = t.health("m", now);
                    prop_assert_eq!(
                        (after.ejections, after.failures, after.successes),
                        (before.ejections, before.failures, before.successes)
                    );
                    prop_assert!(after.multiplier <= before.multiplier);
                    prop_assert!(after.circuit != CircuitState::Open || before.circuit == CircuitState::Open);
                    prop_assert!(after.cooldown.is_none() || after.cooldown == before.cooldown);
                }
            }
            for (admission, spell, slots) in in_flight(&t) {
                let held = permits.iter().filter(|p| holds(p, admission, spell)).count();
                prop_assert_eq!(slots as usize, held, "{:?}", admission);
                prop_assert!(slots <= 2);
            }
        }
    }
}
