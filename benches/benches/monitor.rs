//! Monitor: record one outcome, two threads recording together, read stats.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use modelfleet_monitor::{Monitor, MonitorConfig, Outcome};
use modelfleet_registry::{Category, Money};

const MODELS: [&str; 10] = ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "m9"];

fn outcome(i: usize) -> Outcome<'static> {
    Outcome {
        kind: Category::Conversation,
        language: Some("en"),
        input_tokens: 800,
        output_tokens: 200,
        cost: Money::from_nanos(1_250),
        ..Outcome::success(MODELS[i % MODELS.len()], "openai", Duration::from_micros(200_000 + (i as u64 % 9_973) * 37))
    }
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("monitor");
    let monitor = Monitor::new(MonitorConfig::default());
    for i in 0..10_000 {
        monitor.record(&outcome(i));
    }
    let mut i = 0usize;
    group.bench_function("record", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            monitor.record(black_box(&outcome(i)));
        });
    });

    group.bench_function("record_two_threads", |b| {
        b.iter_custom(|iters| {
            let half = iters / 2 + 1;
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..2usize {
                    let monitor = &monitor;
                    s.spawn(move || {
                        for i in 0..half {
                            monitor.record(black_box(&outcome(usize::try_from(i).unwrap_or(0) * 2 + t)));
                        }
                    });
                }
            });
            start.elapsed()
        });
    });

    group.bench_function("model_stats", |b| b.iter(|| monitor.model_stats(black_box("m3")).latency.p99_ms));
    group.finish();
}

criterion_group!(monitor, benches);
criterion_main!(monitor);
