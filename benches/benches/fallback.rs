//! Fallback: the next model after a failure among 10, and recording a failure.

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use modelfleet_benches::{models, monitor_signals};
use modelfleet_errors::ErrorClass;
use modelfleet_fallback::{ChainInput, Failed, FallbackStrategy, Tracker, TrackerConfig, next_fallback};
use modelfleet_selector::{Requirements, Weights};

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("fallback");
    let ten = models(10);
    let live = monitor_signals(&ten);
    let tracker = Tracker::new(TrackerConfig::default());
    // Two models already cooling down, as after a bad minute.
    tracker.record_failure(&ten[3].id, ErrorClass::RateLimited, None, Duration::from_secs(1));
    tracker.record_failure(&ten[7].id, ErrorClass::Authentication, None, Duration::from_secs(1));
    let req = Requirements {
        language: Some("en".into()),
        prompt_tokens: 2_000,
        max_output_tokens: 500,
        ..Requirements::default()
    };
    let input = ChainInput {
        requirements: &req,
        signals: &live,
        strategy: FallbackStrategy::Performance,
        weights: Weights::default(),
        explicit: None,
        now: Duration::from_secs(2),
    };
    let failed = Failed { model: &ten[0], class: ErrorClass::ServerError };
    group.bench_function("next_fallback_of_10", |b| {
        b.iter(|| next_fallback(black_box(&ten), failed, &input, &tracker).map(|m| m.id.len()));
    });

    let ids: Vec<String> = models(100).into_iter().map(|m| m.id).collect();
    let mut i = 0usize;
    let mut now = Duration::from_secs(10);
    group.bench_function("record_failure", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            now += Duration::from_micros(10);
            tracker.record_failure(black_box(&ids[i]), ErrorClass::ServerError, None, now);
        });
    });
    group.finish();
}

criterion_group!(fallback, benches);
criterion_main!(fallback);
