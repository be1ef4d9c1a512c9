//! Metrics: record one latency; render Prometheus text for 100 models.

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use modelfleet_errors::ErrorClass;
use modelfleet_metrics::{Category, Metrics, MetricsConfig, RequestSample};
use modelfleet_registry::Money;

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("metrics");
    let metrics = Metrics::new(MetricsConfig::default());
    let mut i = 0u32;
    group.bench_function("record_latency", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            metrics.record_latency(black_box(f64::from(i % 5_000) / 1_000.0))
        });
    });

    let ids: Vec<String> = (0..100).map(|i| format!("model-{i:03}")).collect();
    metrics.set_known_models(ids.iter().map(String::as_str));
    for (n, id) in ids.iter().cycle().take(50_000).enumerate() {
        let error = (n % 17 == 0).then_some(ErrorClass::ServerError);
        metrics.record_request(&RequestSample {
            model: id,
            latency: Duration::from_millis(20 + (n as u64 % 3_000)),
            error,
            input_tokens: 500,
            output_tokens: 120,
            cost: Money::from_nanos(900),
        });
    }
    for n in 0..20 {
        metrics
            .set_budget(&format!("provider:p{n}"), "monthly", Money::from_dollars(n), Money::from_dollars(100))
            .expect("under the bound");
    }
    group
        .bench_function("prometheus_100_models", |b| b.iter(|| metrics.to_prometheus(black_box(&Category::ALL)).len()));
    group.finish();
}

criterion_group!(metrics, benches);
criterion_main!(metrics);
