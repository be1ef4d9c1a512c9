//! Store: rows through the batched writer, an acknowledged commit, opening a new database, a cache hit.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use modelfleet_budget::{Period, Scope};
use modelfleet_registry::{Category, Money};
use modelfleet_store::{PerfRecord, SpendEntry, Store, StoreConfig, cache_key};

fn row(i: u64) -> PerfRecord {
    PerfRecord {
        at_ms: 1_700_000_000_000 + i,
        model: ["gpt-4o", "claude-3-haiku", "mistral-small", "deepseek-chat"][usize::try_from(i % 4).unwrap_or(0)]
            .into(),
        provider: "openai".into(),
        kind: Category::Conversation,
        language: Some("en".into()),
        latency_us: 250_000 + i % 10_000,
        ttft_us: None,
        input_tokens: 900,
        output_tokens: 200,
        cached_tokens: 0,
        cost: Money::from_nanos(1_700),
        error: None,
        quality: None,
    }
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    let dir = tempfile::tempdir().expect("a temporary directory");

    let store = Store::open(dir.path().join("write.db"), StoreConfig::default()).expect("a new database");
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    let mut next = 0u64;
    // Wall time per row, the final flush (commit) included: 10 us = 100k rows/s.
    group.bench_function("perf_row_batched", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            runtime.block_on(async {
                for _ in 0..iters {
                    next += 1;
                    store.record(row(next)).await.expect("queued");
                }
                store.flush_async().await.expect("committed");
            });
            start.elapsed()
        });
    });

    // One settlement at a time, acknowledged after its COMMIT: the latency a
    // lone request pays (concurrent ones share transactions).
    group.bench_function("commit_acked", |b| {
        b.iter(|| {
            next += 1;
            let spend = vec![SpendEntry {
                scope: Scope::Global,
                period: Period::Monthly,
                period_start_ms: 1_700_000_000_000,
                period_end_ms: Some(1_702_000_000_000),
                provider: "openai".into(),
                model: "gpt-4o".into(),
                amount: Money::from_nanos(1_700),
            }];
            runtime.block_on(store.commit(spend, Some(row(next)))).expect("committed");
        });
    });

    let mut n = 0u32;
    group.bench_function("open_new_database", |b| {
        b.iter_batched(
            || {
                n += 1;
                dir.path().join(format!("new-{n}.db"))
            },
            |path| Store::open(path, StoreConfig::default()).expect("created").close().expect("closed"),
            BatchSize::PerIteration,
        );
    });

    let request = serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Summarise the quarterly report."}]});
    let answer = serde_json::json!({"choices": [{"message": {"role": "assistant", "content": "x".repeat(2_000)}}]});
    let key = cache_key(&request);
    store.cache_put(key, "gpt-4o", &answer, Duration::from_hours(1)).expect("queued");
    store.flush().expect("committed");
    group.bench_function("cache_hit", |b| b.iter(|| store.cache_get(black_box(&key)).expect("read").is_some()));
    group.finish();
}

criterion_group!(store, benches);
criterion_main!(store);
