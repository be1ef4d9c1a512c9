//! Selector: select the best of 10 models, rank 1,000 and 10,000.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use modelfleet_benches::{models, monitor_signals, signals};
use modelfleet_registry::Category;
use modelfleet_selector::{Requirements, SelectorConfig, rank, select};

fn requirements() -> Requirements {
    Requirements {
        category: Some(Category::Code),
        language: Some("en".into()),
        prompt_tokens: 2_000,
        max_output_tokens: 500,
        ..Requirements::default()
    }
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("selector");
    let config = SelectorConfig::default();
    let req = requirements();

    // Live signals come from the monitor, as in production (its clock read
    // once per request, as the facade does); the `_hashmap` variant uses a
    // plain std HashMap, the simplest source a user might write.
    let ten = models(10);
    let ten_signals = monitor_signals(&ten);
    group.bench_function("select_best_of_10", |b| {
        b.iter(|| select(black_box(&ten), black_box(&req), &ten_signals.live(), &config).map(|r| r.score.total));
    });
    let ten_map = signals(&ten);
    group.bench_function("select_best_of_10_hashmap", |b| {
        b.iter(|| select(black_box(&ten), black_box(&req), &ten_map, &config).map(|r| r.score.total));
    });

    let thousand = models(1_000);
    let thousand_signals = monitor_signals(&thousand);
    group.bench_function("rank_1000", |b| {
        b.iter(|| rank(black_box(&thousand), &req, &thousand_signals.live(), &config).len());
    });

    let big = models(10_000);
    let big_signals = monitor_signals(&big);
    group.bench_function("rank_10000", |b| b.iter(|| rank(black_box(&big), &req, &big_signals.live(), &config).len()));
    group.finish();
}

criterion_group!(selector, benches);
criterion_main!(selector);
