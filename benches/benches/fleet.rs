//! The facade: full-stack startup to ready, and the overhead of one call
//! around a model call that does nothing.

use std::{hint::black_box, time::Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use modelfleet::{
    Fleet, FleetOptions, ModelResponse, Request, Usage,
    budget::{BudgetSpec, Period, Scope},
    errors::Failure,
    registry::Money,
};

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
                Ok::<_, Failure>(ModelResponse { value: (), usage: Some(Usage::new(100, 20)) })
            }))
            .expect("served")
            .cost
        });
    });
    rt.block_on(fleet.shutdown()).expect("stopped");

    // The same call with a hard global budget: the worst-case hold, the
    // settlement, and the spend committed to SQLite (group commit through
    // the store's writer) before the call returns.
    let fleet = rt
        .block_on(Fleet::open(FleetOptions {
            db_path: Some(dir.path().join("budget.db")),
            budgets: vec![BudgetSpec::hard(Scope::Global, Period::Monthly, Money::from_dollars(1_000_000_000))],
            ..FleetOptions::default()
        }))
        .expect("started");
    // One at a time: the median is a commit's latency.
    group.bench_function("call_overhead_with_budget_serial", |b| {
        b.iter(|| rt.block_on(call(&fleet, black_box(&request))));
    });
    // 32 concurrent calls share each commit: the time per call, amortized.
    group.bench_function("call_overhead_with_budget", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            let mut left = iters;
            while left > 0 {
                let batch = left.min(32);
                rt.block_on(futures_util::future::join_all((0..batch).map(|_| call(&fleet, &request))));
                left -= batch;
            }
            started.elapsed()
        });
    });
    rt.block_on(fleet.shutdown()).expect("stopped");
    group.finish();
}

/// One call around a no-op model; returns its cost.
async fn call(fleet: &Fleet, request: &Request) -> Money {
    fleet
        .call(request, |_, _| async { Ok::<_, Failure>(ModelResponse { value: (), usage: Some(Usage::new(100, 20)) }) })
        .await
        .expect("served")
        .cost
}

criterion_group!(fleet, benches);
criterion_main!(fleet);
