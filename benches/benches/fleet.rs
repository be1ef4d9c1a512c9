//! The facade: full-stack startup to ready, and the overhead of one call
//! around a model call that does nothing.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use modelfleet::{Fleet, FleetOptions, ModelResponse, Request, Usage, errors::Failure};

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("fleet");
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");

    let mut n = 0u32;
    group.bench_function("startup", |b| {
        b.iter_batched(
            || {
                n += 1;
                dir.path().join(format!("start-{n}.db"))
            },
            |path| {
                rt.block_on(async {
                    let fleet = Fleet::open(FleetOptions { db_path: Some(path), ..FleetOptions::default() })
                        .await
                        .expect("started");
                    fleet.shutdown().await.expect("stopped");
                });
            },
            BatchSize::PerIteration,
        );
    });

    let fleet = rt
        .block_on(Fleet::open(FleetOptions { db_path: Some(dir.path().join("calls.db")), ..FleetOptions::default() }))
        .expect("started");
    let request = Request::default();
    // Selection over the default catalog, budget, in-flight count, monitor,
    // metrics and the store's queue: everything but the model itself.
    group.bench_function("call_overhead", |b| {
        b.iter(|| {
            rt.block_on(fleet.call(black_box(&request), |_, _| async {
                Ok::<_, Failure>(ModelResponse {
                    value: (),
                    usage: Usage { input_tokens: 100, output_tokens: 20, cached_tokens: 0 },
                })
            }))
            .expect("served")
            .cost
        });
    });
    rt.block_on(fleet.shutdown()).expect("stopped");
    group.finish();
}

criterion_group!(fleet, benches);
criterion_main!(fleet);
