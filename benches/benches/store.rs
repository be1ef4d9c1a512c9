//! Store: rows through the batched writer, an acknowledged commit, opening a new database, a cache hit, a
//! month's history report over a million rows.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use modelfleet_budget::{Period, Scope};
use modelfleet_errors::ErrorClass;
use modelfleet_registry::{Category, Money};
use modelfleet_store::{Dim, HOUR_MS, PerfRecord, SpendEntry, Store, StoreConfig, cache_key, hour_of};

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
        request_id: None,
        key_name: None,
        route: None,
        attempt: 1,
        fallback: false,
        rating: None,
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

/// Ten models of three providers, with their price (nano-dollars per prompt
/// and per completion token: $2.50 per million is 2,500) and typical
/// latency (ms).
const MONTH_MODELS: [(&str, &str, i64, i64, u64); 10] = [
    ("gpt-4o", "openai", 2_500, 10_000, 900),
    ("gpt-4o-mini", "openai", 150, 600, 450),
    ("o3-mini", "openai", 1_100, 4_400, 2_400),
    ("claude-sonnet", "anthropic", 3_000, 15_000, 1_100),
    ("claude-haiku", "anthropic", 800, 4_000, 500),
    ("claude-opus", "anthropic", 15_000, 75_000, 2_200),
    ("mistral-large", "mistral", 2_000, 6_000, 800),
    ("mistral-small", "mistral", 200, 600, 350),
    ("codestral", "mistral", 300, 900, 400),
    ("ministral", "mistral", 40, 40, 250),
];
const MONTH_ROWS: u64 = 1_000_000;
const MONTH_MS: u64 = 30 * 24 * HOUR_MS;

/// Row `i` of the month starting at `first_ms`: one every 2.592 s, ~5%
/// failures (and a few client faults and cancellations), streamed answers
/// with a time to first token, latencies spread around each model's own.
fn month_row(rng: &mut fastrand::Rng, first_ms: u64, i: u64) -> PerfRecord {
    let (model, provider, input_price, output_price, typical_ms) = MONTH_MODELS[rng.usize(..MONTH_MODELS.len())];
    let error = match rng.u32(..1_000) {
        0..20 => Some(ErrorClass::Timeout),
        20..35 => Some(ErrorClass::ServerError),
        35..50 => Some(ErrorClass::RateLimited),
        50..58 => Some(ErrorClass::BadRequest),
        58..62 => Some(ErrorClass::Cancelled),
        _ => None,
    };
    // From half to four times the typical latency, skewed low; a timeout waits 30 s.
    let spread = 0.5 + 3.5 * rng.f64().powi(3);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // positive, below 2^53
    let latency_us = match error {
        Some(ErrorClass::Timeout) => 30_000_000,
        _ => (typical_ms as f64 * 1_000.0 * spread) as u64,
    };
    let (input_tokens, output_tokens) = (rng.u64(200..4_000), if error.is_none() { rng.u64(50..1_500) } else { 0 });
    let cached_tokens = if rng.bool() { input_tokens / 2 } else { 0 };
    PerfRecord {
        at_ms: first_ms + i * (MONTH_MS / MONTH_ROWS) + rng.u64(..MONTH_MS / MONTH_ROWS),
        model: model.into(),
        provider: provider.into(),
        kind: [Category::Code, Category::Conversation, Category::Translation, Category::Summarization][rng.usize(..4)],
        language: Some(["en", "fr", "de"][rng.usize(..3)].into()),
        latency_us,
        ttft_us: (error.is_none() && rng.u32(..10) < 6).then(|| latency_us / rng.u64(3..10)),
        input_tokens,
        output_tokens,
        cached_tokens,
        cost: Money::from_nanos(
            i64::try_from(input_tokens).unwrap_or(0) * input_price
                + i64::try_from(output_tokens).unwrap_or(0) * output_price,
        ),
        error,
        quality: None,
        request_id: Some(format!("req-{i}")),
        key_name: Some(["team-a", "team-b"][rng.usize(..2)].into()),
        route: None,
        attempt: 1,
        fallback: rng.u32(..50) == 0,
        rating: None,
    }
}

/// A month of history (1,000,000 rows over 30 days) read as the report by
/// model reads it (grouped by model, provider and category), both edges
/// inside an hour: the whole hours from the hourly aggregates, the
/// edges from the raw rows. The rows go through the writer (`record`, then
/// `flush`), once, before anything is measured.
fn report_month_1m_rows(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    group.sample_size(20);
    let mut month: Option<(tempfile::TempDir, Store, u64, u64)> = None;
    group.bench_function("report_month_1m_rows", |b| {
        let (_dir, store, from, to) = month.get_or_insert_with(|| {
            let started = Instant::now();
            let dir = tempfile::tempdir().expect("a temporary directory");
            // 31 days: the month's first rows stay raw while the bench runs.
            let config = StoreConfig { retain_days: 31, ..StoreConfig::default() };
            let store = Store::open(dir.path().join("month.db"), config).expect("a new database");
            let now_ms = u64::try_from(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis(),
            )
            .expect("ms fit u64");
            // The rows end 20 minutes into the previous hour and start 30 days
            // before: each edge holds some 20 minutes of raw rows.
            let end_ms = hour_of(now_ms) - 40 * 60 * 1_000;
            let first_ms = end_ms - MONTH_MS;
            let (from, to) = (first_ms + 17 * 60 * 1_000, end_ms + 23 * 60 * 1_000);
            let mut rng = fastrand::Rng::with_seed(2026);
            let mut in_range = 0u64;
            let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
            runtime.block_on(async {
                for i in 0..MONTH_ROWS {
                    let row = month_row(&mut rng, first_ms, i);
                    in_range += u64::from(row.at_ms >= from && row.at_ms < to);
                    store.record(row).await.expect("queued");
                }
                store.flush_async().await.expect("committed");
            });
            let report = store.history(from, to, &[Dim::Model]).expect("read");
            let requests: u64 = report.by(Dim::Model).iter().map(|g| g.requests).sum();
            assert_eq!((report.from_ms, report.to_ms, requests), (from, to, in_range), "the report is the rows'");
            eprintln!(
                "store/report_month_1m_rows: {MONTH_ROWS} rows written and flushed in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            (dir, store, from, to)
        });
        // What `Fleet::report` by model reads: the groupings its ranking,
        // overview and health need (the ranking and recommendations built
        // from them take microseconds more).
        let dims = [Dim::Model, Dim::Provider, Dim::Category];
        b.iter(|| store.history(black_box(*from), black_box(*to), black_box(&dims)).expect("read"));
    });
    group.finish();
}

criterion_group!(store, benches, report_month_1m_rows);
criterion_main!(store);
