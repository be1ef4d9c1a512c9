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
    let (m, clock) = monitor(MonitorConfig { recent_events: 10, max_models: 5 });
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
fn ranking_recommendations_and_health() {
    let (m, clock) = monitor(MonitorConfig::default());
    for i in 0..40u64 {
        m.record(&outcome("good", "anthropic", 300));
        m.record(&outcome("fine", "openai", 350));
        let flaky = outcome("flaky", "openai", 320);
        m.record(&if i % 3 == 0 { flaky.failed(ErrorClass::ServerError) } else { flaky });
        m.record(&outcome("slow", "mistral", 3_000));
        clock.advance_ms(500);
    }
    let ranking: Vec<String> = m.ranking().into_iter().map(|r| r.model).collect();
    assert_eq!(ranking[0], "good");
    assert_eq!(ranking.last().map(String::as_str), Some("flaky"));

    let recs = m.recommendations(&ReportConfig::default());
    let messages: Vec<&str> = recs.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            // In ranking order; latencies carry the histogram's 2-digit quantisation.
            "slow: p95 latency 3015 ms is 9.4x its peers' median 322 ms; consider good",
            "flaky: success rate 65.0% is under 90% over 40 requests; consider good",
        ],
        "{recs:#?}"
    );

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

    let overview = m.overview(&ReportConfig::default());
    assert_eq!(overview.requests, 165);
    assert_eq!(overview.providers.len(), 3);
    assert_eq!(overview.categories.len(), 1);
    assert_eq!(overview.categories[0].category, Category::Conversation);
    assert_eq!(overview.categories[0].top, ["good", "fine", "slow"]);
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
