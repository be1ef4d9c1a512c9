//! Monitor tests: accounting, windows, bounds, concurrency, reports, signals.

use std::{sync::Arc, time::Duration};

use modelfleet_errors::ErrorClass;
use modelfleet_registry::{Category, ManualClock, Money};
use modelfleet_selector::LiveSignals;
use proptest::prelude::*;

use super::*;

const T0: u64 = 1_700_000_000_000;

fn monitor(config: MonitorConfig) -> (Monitor, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let shared = Arc::clone(&clock);
    (Monitor::with_clock(config, move || modelfleet_registry::Clock::now_ms(&*shared)), clock)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn outcome<'a>(model: &'a str, provider: &'a str, latency_ms: u64) -> Outcome<'a> {
    Outcome {
        kind: Category::Conversation,
        language: Some("en"),
        input_tokens: 100,
        output_tokens: 50,
        cached_tokens: 10,
        cost: Money::from_nanos(1_234),
        ..Outcome::success(model, provider, ms(latency_ms))
    }
}

#[test]
fn totals_tokens_cost_errors_and_timestamps() {
    let (m, clock) = monitor(MonitorConfig::default());
    m.record(&outcome("a", "p", 100));
    clock.advance_ms(5_000);
    m.record(&Outcome { quality: Some(0.8), ..outcome("a", "p", 300) });
    m.record(&outcome("a", "p", 200).failed(ErrorClass::RateLimited));
    m.record(&Outcome { time_to_first_token: Some(ms(40)), ..outcome("a", "p", 250) });
    let s = m.model_stats("a");
    assert_eq!((s.totals.requests, s.totals.successes, s.totals.failures), (4, 3, 1));
    assert!((s.totals.success_rate - 0.75).abs() < 1e-12);
    assert_eq!(s.totals.tokens, Tokens { input: 400, output: 200, cached: 40 });
    assert_eq!(s.totals.cost, Money::from_nanos(4 * 1_234));
    assert_eq!(s.errors.get(&ErrorClass::RateLimited), Some(&1));
    assert_eq!(s.kinds.get(&Category::Conversation), Some(&4));
    assert_eq!(s.avg_quality, Some(0.8));
    assert_eq!((s.first_used_ms, s.last_used_ms), (Some(T0), Some(T0 + 5_000)));
    assert!((s.latency.mean_ms - 212.5).abs() < 1.0, "{:?}", s.latency);
    assert!((s.time_to_first_token.p50_ms - 40.0).abs() < 0.5);
    assert_eq!(s.provider, "p");
    let recent = m.recent("a");
    assert_eq!(recent.len(), 4);
    assert_eq!(recent[2].error, Some(ErrorClass::RateLimited));
    assert_eq!(recent[0].language(), Some("en"));
}

#[test]
fn an_unknown_model_gives_empty_statistics() {
    let (m, _) = monitor(MonitorConfig::default());
    let s = m.model_stats("nobody");
    assert_eq!(s.model, "nobody");
    assert_eq!(s.totals, Totals::default());
    assert_eq!(s.latency, Latency::default());
    assert_eq!(m.window_stats("nobody", Window::Hour).totals.requests, 0);
    assert!(m.recent("nobody").is_empty());
    assert_eq!(m.signals("nobody"), modelfleet_selector::Signals::default());
}

#[test]
fn windows_slide_over_fixed_slots() {
    let (m, clock) = monitor(MonitorConfig::default());
    m.record(&outcome("a", "p", 100));
    clock.advance_ms(10 * 60_000); // 10 minutes later
    m.record(&outcome("a", "p", 900));
    m.record(&outcome("a", "p", 900).failed(ErrorClass::Timeout));
    let minute = m.window_stats("a", Window::Minute);
    assert_eq!(minute.window, "1m");
    assert_eq!((minute.totals.requests, minute.totals.failures), (2, 1));
    assert!((minute.latency.p50_ms - 900.0).abs() <= 900.0 * 0.07, "{:?}", minute.latency);
    assert_eq!(m.window_stats("a", Window::Quarter).totals.requests, 3);
    clock.advance_ms(2 * 86_400_000);
    assert_eq!(m.window_stats("a", Window::Day).totals.requests, 0, "two days later the day window is empty");
    assert_eq!(m.model_stats("a").totals.requests, 3, "all-time keeps everything");
}

#[test]
fn memory_stays_bounded_under_unbounded_traffic() {
    let (m, clock) = monitor(MonitorConfig { recent_events: 10, max_models: 5, ..MonitorConfig::default() });
    let names: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    for i in 0..20_000usize {
        m.record(&outcome(&names[i % names.len()], "p", 50 + (i % 500) as u64));
        clock.advance_ms(37);
    }
    let models = m.models();
    assert_eq!(models.len(), 6, "5 tracked models plus the overflow entry: {models:?}");
    assert!(models.contains(&OVERFLOW_MODEL.to_owned()));
    for model in &models {
        assert!(m.recent(model).len() <= 10, "{model}: recent buffer bounded");
    }
    let total: u64 = models.iter().map(|id| m.model_stats(id).totals.requests).sum();
    assert_eq!(total, 20_000, "nothing is lost, only pooled");
}

#[test]
fn ten_threads_times_ten_thousand_give_exact_totals() {
    let (m, _) = monitor(MonitorConfig::default());
    let m = Arc::new(m);
    let threads: Vec<_> = (0..10)
        .map(|t| {
            let m = Arc::clone(&m);
            std::thread::spawn(move || {
                for i in 0..10_000u64 {
                    let model = if (i + t) % 2 == 0 { "a" } else { "b" };
                    let mut o = outcome(model, "p", 10 + i % 100);
                    o.cost = Money::from_nanos(i64::try_from(i).unwrap());
                    if i % 10 == 0 {
                        o = o.failed(ErrorClass::ServerError);
                    }
                    m.record(&o);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let (a, b) = (m.model_stats("a"), m.model_stats("b"));
    assert_eq!(a.totals.requests + b.totals.requests, 100_000);
    assert_eq!(a.totals.failures + b.totals.failures, 10_000);
    assert_eq!(a.totals.tokens.input + b.totals.tokens.input, 100_000 * 100);
    let expected_cost: i64 = 10 * (0..10_000i64).sum::<i64>();
    assert_eq!((a.totals.cost + b.totals.cost).nanos(), expected_cost);
    let providers = m.provider_stats();
    assert_eq!(providers.len(), 1);
    assert_eq!(providers[0].totals.requests, 100_000);
    assert_eq!(providers[0].models, ["a", "b"]);
}

#[test]
fn live_signals_turn_within_seconds_and_count_in_flight() {
    let (m, clock) = monitor(MonitorConfig::default());
    for _ in 0..100 {
        m.record(&outcome("a", "p", 200));
        clock.advance_ms(1_000);
    }
    assert!(m.signals("a").success_rate > 0.99);
    for _ in 0..5 {
        m.record(&outcome("a", "p", 2_000).failed(ErrorClass::ServerError));
        clock.advance_ms(1_000);
    }
    let s = m.signals("a");
    assert!(s.success_rate < 0.5, "five seconds of failures: {s:?}");
    assert!(s.latency_ms.unwrap() > 1_000.0, "{s:?}");
    let guard = m.begin("a", "p");
    let second = m.begin("a", "p");
    assert_eq!(m.signals("a").in_flight, 2);
    drop(guard);
    drop(second);
    assert_eq!(m.signals("a").in_flight, 0);
}

#[test]
fn health_by_model_and_provider() {
    let (m, clock) = monitor(MonitorConfig::default());
    for i in 0..40u64 {
        m.record(&outcome("good", "anthropic", 300));
        m.record(&outcome("fine", "openai", 350));
        let flaky = outcome("flaky", "openai", 320);
        m.record(&if i % 3 == 0 { flaky.failed(ErrorClass::ServerError) } else { flaky });
        m.record(&outcome("slow", "mistral", 3_000));
        clock.advance_ms(500);
    }
    let health = m.health(&ReportConfig::default());
    assert_eq!(health.models["good"], Health::Healthy);
    assert_eq!(health.models["flaky"], Health::Degraded);
    assert_eq!(health.providers["openai"], Health::Degraded);
    assert_eq!(health.providers["anthropic"], Health::Healthy);
    for _ in 0..5 {
        m.record(&outcome("slow", "mistral", 3_000).failed(ErrorClass::Timeout));
    }
    let health = m.health(&ReportConfig::default());
    assert_eq!(health.models["slow"], Health::Down, "last five calls failed");
    assert_eq!(health.providers["mistral"], Health::Down, "its only model is down");
    assert_eq!(health.overall, Health::Down);
}

proptest! {
    #[test]
    fn percentiles_agree_with_a_sorted_reference(latencies in proptest::collection::vec(1u64..600_000, 1..400)) {
        let (m, _) = monitor(MonitorConfig::default());
        for &l in &latencies {
            m.record(&Outcome::success("x", "p", Duration::from_micros(l)));
        }
        let mut sorted = latencies.clone();
        sorted.sort_unstable();
        let stats = m.model_stats("x");
        for (q, got) in [(0.50, stats.latency.p50_ms), (0.95, stats.latency.p95_ms), (0.99, stats.latency.p99_ms)] {
            // HdrHistogram's definition: the smallest value with at least q of the samples at or below it.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // 0 <= q*n <= 400
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            let expected_ms = sorted[rank - 1] as f64 / 1_000.0;
            // 2 significant figures: within 1% (plus the 1 µs unit).
            prop_assert!((got - expected_ms).abs() <= expected_ms * 0.01 + 0.001,
                "q{}: got {} ms, reference {} ms", q, got, expected_ms);
        }
        let mean = latencies.iter().sum::<u64>() as f64 / latencies.len() as f64 / 1_000.0;
        prop_assert!((stats.latency.mean_ms - mean).abs() <= mean * 0.01 + 0.001);
    }
}

// ---- Failure handling (issue 12) ----------------------------------------

#[test]
fn client_faults_and_aborted_calls_never_count_against_the_model() {
    let (m, clock) = monitor(MonitorConfig::default());
    for _ in 0..20 {
        m.record(&outcome("a", "p", 300));
        m.record(&outcome("peer", "q", 300));
        clock.advance_ms(500);
    }
    // Thirty requests in a row that no model could have served, or that
    // ended outside the model: far more than any threshold would forgive.
    let not_the_model = [
        ErrorClass::BadRequest,
        ErrorClass::ContentPolicy,
        ErrorClass::ContextWindowExceeded,
        ErrorClass::Cancelled,
        ErrorClass::BudgetExceeded,
    ];
    for class in not_the_model.iter().cycle().take(30) {
        m.record(&outcome("a", "p", 5).failed(*class));
        clock.advance_ms(100);
    }

    let totals = m.model_stats("a").totals;
    assert_eq!(
        (totals.requests, totals.successes, totals.failures, totals.client_faults, totals.aborted),
        (50, 20, 0, 18, 12),
        "every outcome is a request; none is the model's failure"
    );
    assert_eq!(totals.judged(), 20);
    assert!((totals.success_rate - 1.0).abs() < f64::EPSILON, "{totals:?}");
    for window in Window::ALL {
        let w = m.window_stats("a", window).totals;
        assert!((w.success_rate - 1.0).abs() < f64::EPSILON, "{window:?}: {w:?}");
    }
    let errors = m.model_stats("a").errors;
    assert_eq!(errors.get(&ErrorClass::BadRequest), Some(&6), "kept per class: {errors:?}");
    assert_eq!(errors.values().sum::<u64>(), 30);
    let latency = m.model_stats("a").latency;
    assert!(latency.p50_ms > 250.0, "5 ms refusals are not the model's latency: {latency:?}");

    // Live signals ignore them: "a" reads exactly like its twin without them.
    assert_eq!(m.signals("a"), m.signals("peer"));
    assert!(m.signals("a").success_rate > 0.99, "{:?}", m.signals("a"));

    let config = ReportConfig::default();
    assert_eq!(m.model_health("a", &config), Health::Healthy, "thirty non-verdicts in a row are not down");
    assert_eq!(m.health(&config).providers["p"], Health::Healthy);

    // The model's own failures still count.
    for _ in 0..5 {
        m.record(&outcome("a", "p", 300).failed(ErrorClass::ServerError));
    }
    assert_eq!(m.model_health("a", &config), Health::Down);
    let totals = m.model_stats("a").totals;
    assert_eq!((totals.failures, totals.judged()), (5, 25));
    assert!((totals.success_rate - 0.8).abs() < 1e-12);
}

#[test]
fn a_model_judged_by_nothing_but_client_faults_is_healthy_and_ranks_on_the_prior() {
    let (m, _) = monitor(MonitorConfig::default());
    for _ in 0..10 {
        m.record(&outcome("a", "p", 300).failed(ErrorClass::BadRequest));
        m.record(&outcome("b", "p", 300));
    }
    let totals = m.model_stats("a").totals;
    assert_eq!(
        (totals.requests, totals.judged(), totals.success_rate),
        (10, 0, 0.0),
        "no verdict: rate 0 by convention"
    );
    assert_eq!(m.model_health("a", &ReportConfig::default()), Health::Healthy);
    let signals = m.signals("a");
    assert_eq!((signals.samples, signals.success_rate, signals.latency_p95_ms), (0, 1.0, None));
    // The score every ranking uses: no verdict is the prior (success 1).
    let p95 = m.model_stats("b").latency.p95_ms;
    assert!(
        performance_score(None, p95, None) >= performance_score(Some(1.0), p95, None),
        "the prior is a perfect success rate"
    );
    assert!(performance_score(Some(0.5), p95, None) < performance_score(None, p95, None));
}

#[test]
fn an_idle_model_recovers_toward_the_prior() {
    let (m, clock) = monitor(MonitorConfig::default());
    for _ in 0..20 {
        clock.advance_ms(1_000);
        m.record(&outcome("dead", "p", 2_000).failed(ErrorClass::ServerError));
    }
    let at = |idle_ms: u64| {
        clock.set_ms(T0 + 20_000 + idle_ms);
        let s = m.signals("dead");
        (s.samples, s.success_rate)
    };
    assert_eq!(at(0), (20, 0.0));
    assert_eq!(at(60_000), (10, 0.5), "one half-life: halfway to the prior");
    assert_eq!(at(240_000), (1, 0.9375), "four half-lives");
    let (samples, rate) = at(600_000);
    assert_eq!(samples, 0, "ten half-lives: nothing left to weigh");
    assert!(rate > 0.999, "{rate}");
    let s = m.signals("dead");
    assert!(s.latency_ms.is_some() && s.latency_p95_ms.is_some(), "latencies are kept: {s:?}");

    // Its next outcome counts in full: a failure sends it straight back down.
    m.record(&outcome("dead", "p", 2_000).failed(ErrorClass::ServerError));
    assert!(m.signals("dead").success_rate < 0.01);

    // Decay off: the signals stay where the last outcome left them.
    let (still, clock) = monitor(MonitorConfig { idle_half_life: Duration::ZERO, ..MonitorConfig::default() });
    still.record(&outcome("dead", "p", 2_000).failed(ErrorClass::ServerError));
    clock.advance_ms(3_600_000);
    assert_eq!((still.signals("dead").samples, still.signals("dead").success_rate), (1, 0.0));
}

#[test]
fn a_busy_model_is_unaffected_by_the_idle_decay() {
    let (decaying, clock) = monitor(MonitorConfig::default());
    let (reference, reference_clock) =
        monitor(MonitorConfig { idle_half_life: Duration::ZERO, ..MonitorConfig::default() });
    for i in 0..200u64 {
        let o = outcome("busy", "p", 100 + i % 7);
        let o = if i % 4 == 0 { o.failed(ErrorClass::Timeout) } else { o };
        decaying.record(&o);
        reference.record(&o);
        assert_eq!(decaying.signals("busy"), reference.signals("busy"), "read right after an outcome");
        clock.advance_ms(250);
        reference_clock.advance_ms(250);
    }
    // A quarter of a second after its last outcome, the decay is negligible.
    let (now, then) = (decaying.signals("busy"), reference.signals("busy"));
    assert!((now.success_rate - then.success_rate).abs() < 0.002, "{now:?} {then:?}");
    assert!(now.samples.abs_diff(then.samples) <= 1, "{now:?} {then:?}");

    // A model failing all the time stays down however it is read.
    let (m, clock) = monitor(MonitorConfig::default());
    for _ in 0..100 {
        m.record(&outcome("failing", "p", 100).failed(ErrorClass::ServerError));
        clock.advance_ms(1_000);
        assert!(m.signals("failing").success_rate < 0.02, "{:?}", m.signals("failing"));
    }
}

#[test]
fn the_p95_in_the_signals_follows_the_last_fifteen_minutes() {
    let (m, clock) = monitor(MonitorConfig::default());
    assert_eq!(m.signals("a").latency_p95_ms, None, "unknown model");
    for l in 1..=100 {
        m.record(&outcome("a", "p", l * 10));
    }
    let p95 = m.signals("a").latency_p95_ms.unwrap();
    assert!((p95 - 950.0).abs() <= 950.0 * 0.07, "1 significant figure: {p95}");

    // Twenty minutes later the old latencies have left the window.
    clock.advance_ms(20 * 60_000);
    for _ in 0..100 {
        m.record(&outcome("a", "p", 100));
        clock.advance_ms(1_000);
    }
    let p95 = m.signals("a").latency_p95_ms.unwrap();
    assert!((p95 - 100.0).abs() <= 100.0 * 0.07, "recent window, not all time: {p95}");
    assert!(m.model_stats("a").latency.p95_ms > 800.0, "all time still remembers");

    // Client faults only: nothing measured.
    m.record(&outcome("refused", "p", 5).failed(ErrorClass::ContentPolicy));
    assert_eq!(m.signals("refused").latency_p95_ms, None);
}

#[track_caller]
fn check_headroom(
    remaining_requests: Option<u64>,
    limit_requests: Option<u64>,
    tokens: (Option<u64>, Option<u64>),
    expect: Option<f64>,
) {
    assert_eq!(rate_limit_headroom(remaining_requests, limit_requests, tokens.0, tokens.1), expect);
}

#[test]
fn rate_limit_headroom_is_the_lesser_share_left() {
    check_headroom(Some(50), Some(100), (Some(1_000), Some(10_000)), Some(0.1));
    check_headroom(Some(90), Some(100), (Some(9_000), Some(10_000)), Some(0.9));
    check_headroom(Some(50), Some(100), (None, None), Some(0.5));
    check_headroom(None, None, (Some(2_500), Some(10_000)), Some(0.25));
    check_headroom(Some(0), Some(100), (Some(10_000), Some(10_000)), Some(0.0));
    check_headroom(Some(150), Some(100), (None, None), Some(1.0));
    // Incomplete pairs and zero limits say nothing.
    check_headroom(Some(50), None, (None, Some(10_000)), None);
    check_headroom(Some(5), Some(0), (None, None), None);
    check_headroom(Some(5), Some(0), (Some(1_000), Some(4_000)), Some(0.25));
    check_headroom(None, None, (None, None), None);
}

#[test]
fn rate_limit_reports_are_served_until_they_expire() {
    let (m, clock) = monitor(MonitorConfig::default());
    m.record_rate_limit("a", "p", 0.05, T0 + 10_000);
    assert_eq!(m.signals("a").rate_limit_headroom, Some(0.05));
    assert_eq!(m.signals("a").samples, 0, "a report is not an outcome");
    m.record_rate_limit("a", "p", f64::NAN, T0 + 10_000);
    assert_eq!(m.signals("a").rate_limit_headroom, Some(0.05), "NaN is ignored");
    m.record_rate_limit("a", "p", 1.7, T0 + 10_000);
    assert_eq!(m.signals("a").rate_limit_headroom, Some(1.0), "clamped");
    m.record_rate_limit("a", "p", -0.3, T0 + 10_000);
    assert_eq!(m.signals("a").rate_limit_headroom, Some(0.0), "clamped");
    clock.advance_ms(9_999);
    assert_eq!(m.signals("a").rate_limit_headroom, Some(0.0));
    clock.advance_ms(1);
    assert_eq!(m.signals("a").rate_limit_headroom, None, "forgotten at until_ms");
    assert_eq!(m.signals("b").rate_limit_headroom, None);

    // Beyond the model cap a report is dropped, not pinned on the overflow entry.
    let (capped, _) = monitor(MonitorConfig { max_models: 1, ..MonitorConfig::default() });
    capped.record(&outcome("a", "p", 100));
    capped.record_rate_limit("b", "p", 0.0, T0 + 10_000);
    assert_eq!(capped.signals("b").rate_limit_headroom, None);
    assert_eq!(capped.signals(OVERFLOW_MODEL).rate_limit_headroom, None);
}

#[test]
fn a_past_outcome_recorded_late_never_wipes_the_windows_newer_counts() {
    let (m, clock) = monitor(MonitorConfig::default());
    let now = m.now_ms();
    for _ in 0..5 {
        m.record(&outcome("a", "p", 300));
    }
    // Two minutes ago: the minute's slot it maps to holds this minute's counts now.
    m.record_at(&outcome("a", "p", 300).failed(ErrorClass::ServerError), now - 120_000);
    let minute = m.window_stats("a", Window::Minute).totals;
    assert_eq!((minute.requests, minute.failures), (5, 0), "the minute keeps its five answers");
    let quarter = m.window_stats("a", Window::Quarter).totals;
    assert_eq!((quarter.requests, quarter.failures), (6, 1), "the quarter hour counts the past failure");
    assert_eq!(m.model_stats("a").totals.requests, 6, "the totals count it");
    // And in order, as a warm start replays: both kept where they fall.
    clock.advance_ms(60_000);
    m.record(&outcome("a", "p", 300));
    assert_eq!(m.window_stats("a", Window::Minute).totals.requests, 1);
}
