//! Fallback: the production executor with one failed attempt among 10
//! models, a permit taken and released (an ordinary one, and a half-open
//! circuit's probe giving its slot back), and recording a failure.

use std::{
    future::Future,
    hint::black_box,
    task::{Context, Poll, Waker},
    time::Duration,
};

use criterion::{Criterion, criterion_group, criterion_main};
use modelfleet_benches::{models, monitor_signals};
use modelfleet_errors::{ErrorClass, Failure, ManualTimer, RetryConfig, RetryPolicy};
use modelfleet_fallback::{
    ExecutorConfig, Order, Plan, Pool, RetryBudget, RetryBudgetConfig, Tracker, TrackerConfig, execute,
};
use modelfleet_selector::{Requirements, Strategy};

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("fallback");
    let ten = models(10);
    let live = monitor_signals(&ten);
    let tracker = Tracker::new(TrackerConfig::default());
    // Two models already cooling down, as after a bad minute.
    tracker.acquire_forced(&ten[3].id, Duration::from_secs(1)).failure(
        ErrorClass::RateLimited,
        None,
        Duration::from_secs(1),
    );
    tracker.acquire_forced(&ten[7].id, Duration::from_secs(1)).failure(
        ErrorClass::QuotaExhausted,
        None,
        Duration::from_secs(1),
    );
    let req = Requirements {
        language: Some("en".into()),
        prompt_tokens: 2_000,
        max_output_tokens: 500,
        ..Requirements::default()
    };
    // The production executor: rank, walk, a server error on the first
    // choice, the next one answers; the tracker, the retry budget and the
    // attempt list as in a request. The clock is a manual one (no sleep
    // happens: nobody waits for backoff while another model can serve).
    let timer = ManualTimer::new();
    let budget = RetryBudget::new(RetryBudgetConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    let config = ExecutorConfig {
        retry: RetryPolicy::new(RetryConfig::default()).unwrap_or_else(|e| panic!("{e}")),
        ..ExecutorConfig::default()
    };
    let plan = Plan { order: Order::Ranked, strategy: Strategy::WeightedScore, ..Plan::default() };
    let mut rng = fastrand::Rng::with_seed(1);
    // Each request's first choice fails once; a minute passes between
    // requests, so that single failure never adds up to an ejection (the
    // streak decays) and every iteration walks the same path.
    group.bench_function("execute_with_one_failure", |b| {
        b.iter(|| {
            timer.advance(Duration::from_secs(61));
            let pool = Pool {
                models: &ten,
                signals: &live.live(),
                tracker: &tracker,
                retry_budget: Some(&budget),
                simulated_providers: &[],
                timer: &timer,
            };
            let mut first = true;
            let walk = execute(pool, black_box(&req), &plan, &config, &mut rng, |model, _| {
                let fail = std::mem::replace(&mut first, false);
                let id = model.id.len();
                async move { if fail { Err(Failure::new(ErrorClass::Connection, "reset")) } else { Ok(id) } }
            });
            // Every call answers at once and nothing sleeps, so one poll
            // finishes the walk: the executor is measured, not a runtime.
            let mut walk = std::pin::pin!(walk);
            let served = match walk.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(served) => served,
                Poll::Pending => return 0,
            };
            served.map_or(0, |s| s.value)
        });
    });

    let mut now = Duration::from_secs(10);
    group.bench_function("acquire_release_permit", |b| {
        b.iter(|| {
            now += Duration::from_nanos(100);
            drop(tracker.acquire(black_box(&ten[0].id), now));
        });
    });

    // A model whose circuit is half-open (it stays so: a dropped probe is
    // no answer, and time alone never reopens it): each permit is a probe
    // whose drop gives the slot back.
    let probing = Tracker::new(TrackerConfig::default());
    let model = &ten[0].id;
    let tripped = Duration::from_secs(1);
    let calls: Vec<_> = (0..probing.config().circuit.settings().min_requests)
        .filter_map(|_| probing.acquire(model, tripped).ok())
        .collect();
    for permit in calls {
        permit.failure(ErrorClass::ServerError, None, tripped);
    }
    let mut probe_now = tripped + probing.config().circuit.settings().open_for;
    assert!(probing.acquire(model, probe_now).is_ok_and(|p| p.is_probe()), "half-open");
    group.bench_function("acquire_release_probe", |b| {
        b.iter(|| {
            probe_now += Duration::from_nanos(100);
            drop(probing.acquire(black_box(model), probe_now));
        });
    });

    let ids: Vec<String> = models(100).into_iter().map(|m| m.id).collect();
    let mut i = 0usize;
    group.bench_function("record_failure", |b| {
        b.iter(|| {
            i = (i + 1) % ids.len();
            now += Duration::from_micros(10);
            tracker.acquire_forced(black_box(&ids[i]), now).failure(ErrorClass::ServerError, None, now);
        });
    });
    group.finish();
}

criterion_group!(fallback, benches);
criterion_main!(fallback);
