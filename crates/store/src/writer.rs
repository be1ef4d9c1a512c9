//! The writer thread: batches queued writes into one transaction each.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender},
    },
    time::{Duration, Instant},
};

use rusqlite::{Connection, params};

use crate::records::{PerfRecord, to_i64};

/// A queued write.
pub(crate) enum Op {
    Perf(Box<PerfRecord>),
    CachePut {
        key: [u8; 32],
        value: Vec<u8>,
        checksum: [u8; 32],
        created_ms: u64,
        expires_ms: u64,
    },
    /// Everything queued before it is committed when the sender hears back.
    Flush(SyncSender<Result<(), String>>),
}

/// Writer settings and counters shared with the store.
pub(crate) struct Shared {
    pub(crate) batch_rows: usize,
    pub(crate) batch_wait: Duration,
    pub(crate) cache_max_entries: u64,
    pub(crate) cache_max_bytes: u64,
    /// Rows written (committed) so far.
    pub(crate) committed: AtomicU64,
    /// Rows dropped after the database refused them twice.
    pub(crate) dropped: AtomicU64,
    /// The last write error, sanitized.
    pub(crate) last_error: Mutex<Option<String>>,
}

/// Runs until every sender is gone, committing what is queued.
///
/// The writer parks only when idle. While a batch fills it takes what is
/// queued without parking and otherwise sleeps in short steps: a parked
/// receiver would cost every producer a wake-up system call per row. A row
/// waits at most `batch_wait` before its commit; a flush, at most one step.
pub(crate) fn run(mut conn: Connection, rx: &Receiver<Op>, shared: &Arc<Shared>) {
    let step = shared.batch_wait.min(Duration::from_millis(2)).max(Duration::from_micros(100));
    let mut batch: Vec<Op> = Vec::with_capacity(shared.batch_rows);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        let started = Instant::now();
        loop {
            while batch.len() < shared.batch_rows && !matches!(batch.last(), Some(Op::Flush(_))) {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let ready = batch.len() >= shared.batch_rows || matches!(batch.last(), Some(Op::Flush(_)));
            if ready || started.elapsed() >= shared.batch_wait {
                break;
            }
            std::thread::sleep(step);
        }
        commit(&mut conn, &mut batch, shared);
    }
    // All senders gone: the store was dropped after its final flush.
}

fn commit(conn: &mut Connection, batch: &mut Vec<Op>, shared: &Shared) {
    let mut result = apply(conn, batch, shared);
    if result.is_err() {
        // One retry: a busy database or a transient I/O error.
        std::thread::sleep(Duration::from_millis(50));
        result = apply(conn, batch, shared);
    }
    let rows = batch.iter().filter(|op| !matches!(op, Op::Flush(_))).count() as u64;
    let outcome = match result {
        Ok(()) => {
            shared.committed.fetch_add(rows, Ordering::Relaxed);
            Ok(())
        }
        Err(err) => {
            let message = modelfleet_errors::sanitize(&err.to_string()).into_owned();
            shared.dropped.fetch_add(rows, Ordering::Relaxed);
            *shared.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(message.clone());
            Err(message)
        }
    };
    for op in batch.drain(..) {
        if let Op::Flush(ack) = op {
            let _ = ack.send(outcome.clone());
        }
    }
}

/// A batch's usage for one model, summed so each model gets one upsert per batch.
#[derive(Default)]
struct UsageDelta {
    provider: String,
    requests: i64,
    successes: i64,
    input_tokens: i64,
    output_tokens: i64,
    cached_tokens: i64,
    cost_nanos: i64,
    latency_us: i64,
    quality_sum: f64,
    quality_count: i64,
    first_ms: i64,
    last_ms: i64,
}

impl UsageDelta {
    /// The delta of `r`'s model in `deltas` (added when new).
    fn of<'d, 'r>(deltas: &'d mut Vec<(&'r str, UsageDelta)>, r: &'r PerfRecord) -> &'d mut UsageDelta {
        let at = to_i64(r.at_ms);
        let index = deltas.iter().position(|(m, _)| *m == r.model).unwrap_or_else(|| {
            deltas.push((&r.model, UsageDelta { first_ms: at, last_ms: at, ..UsageDelta::default() }));
            deltas.len() - 1
        });
        &mut deltas[index].1
    }

    fn add(&mut self, r: &PerfRecord) {
        let at = to_i64(r.at_ms);
        self.provider.clone_from(&r.provider);
        self.requests += 1;
        self.successes += i64::from(r.error.is_none());
        self.input_tokens = self.input_tokens.saturating_add(to_i64(r.input_tokens));
        self.output_tokens = self.output_tokens.saturating_add(to_i64(r.output_tokens));
        self.cached_tokens = self.cached_tokens.saturating_add(to_i64(r.cached_tokens));
        self.cost_nanos = self.cost_nanos.saturating_add(r.cost.nanos());
        self.latency_us = self.latency_us.saturating_add(to_i64(r.latency_us));
        self.quality_sum += r.quality.unwrap_or(0.0);
        self.quality_count += i64::from(r.quality.is_some());
        self.first_ms = self.first_ms.min(at);
        self.last_ms = self.last_ms.max(at);
    }
}

fn apply(conn: &mut Connection, batch: &[Op], shared: &Shared) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let mut cache_writes = false;
    let mut deltas: Vec<(&str, UsageDelta)> = Vec::new();
    {
        let mut perf = tx.prepare_cached(
            "INSERT INTO perf_log (at_ms, model, provider, kind, language, latency_us, ttft_us, input_tokens, \
             output_tokens, cached_tokens, cost_nanos, error, quality) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?;
        let mut usage = tx.prepare_cached(
            "INSERT INTO usage (model, provider, requests, successes, failures, input_tokens, output_tokens, \
             cached_tokens, cost_nanos, latency_us_sum, quality_sum, quality_count, first_ms, last_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
             ON CONFLICT (model) DO UPDATE SET provider = excluded.provider, requests = requests + excluded.requests, \
             successes = successes + excluded.successes, failures = failures + excluded.failures, \
             input_tokens = input_tokens + excluded.input_tokens, output_tokens = output_tokens + excluded.output_tokens, \
             cached_tokens = cached_tokens + excluded.cached_tokens, cost_nanos = cost_nanos + excluded.cost_nanos, \
             latency_us_sum = latency_us_sum + excluded.latency_us_sum, quality_sum = quality_sum + excluded.quality_sum, \
             quality_count = quality_count + excluded.quality_count, first_ms = MIN(first_ms, excluded.first_ms), \
             last_ms = MAX(last_ms, excluded.last_ms)",
        )?;
        let mut cache = tx.prepare_cached(
            "INSERT OR REPLACE INTO cache (key, value, checksum, created_ms, expires_ms, size) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for op in batch {
            match op {
                Op::Perf(r) => {
                    let kind = r.kind.as_str();
                    let error = r.error.map(modelfleet_errors::ErrorClass::as_str);
                    perf.execute(params![
                        to_i64(r.at_ms),
                        r.model,
                        r.provider,
                        kind,
                        r.language,
                        to_i64(r.latency_us),
                        r.ttft_us.map(to_i64),
                        to_i64(r.input_tokens),
                        to_i64(r.output_tokens),
                        to_i64(r.cached_tokens),
                        r.cost.nanos(),
                        error,
                        r.quality,
                    ])?;
                    UsageDelta::of(&mut deltas, r).add(r);
                }
                Op::CachePut { key, value, checksum, created_ms, expires_ms } => {
                    cache_writes = true;
                    cache.execute(params![
                        &key[..],
                        value,
                        &checksum[..],
                        to_i64(*created_ms),
                        to_i64(*expires_ms),
                        to_i64(value.len() as u64)
                    ])?;
                }
                Op::Flush(_) => {}
            }
        }
        for (model, d) in &deltas {
            usage.execute(params![
                model,
                d.provider,
                d.requests,
                d.successes,
                d.requests - d.successes,
                d.input_tokens,
                d.output_tokens,
                d.cached_tokens,
                d.cost_nanos,
                d.latency_us,
                d.quality_sum,
                d.quality_count,
                d.first_ms,
                d.last_ms,
            ])?;
        }
    }
    if cache_writes {
        evict(&tx, shared)?;
    }
    tx.commit()
}

/// Keeps the cache within its entry and byte limits, oldest entries first.
fn evict(tx: &rusqlite::Transaction<'_>, shared: &Shared) -> rusqlite::Result<()> {
    let (entries, bytes): (i64, i64) =
        tx.query_row("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM cache", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let over_entries = entries - to_i64(shared.cache_max_entries);
    if over_entries > 0 {
        tx.execute(
            "DELETE FROM cache WHERE key IN (SELECT key FROM cache ORDER BY created_ms, key LIMIT ?1)",
            params![over_entries],
        )?;
    }
    let mut bytes = bytes;
    while bytes > to_i64(shared.cache_max_bytes) {
        let freed: Option<i64> = tx
            .query_row(
                "DELETE FROM cache WHERE key = (SELECT key FROM cache ORDER BY created_ms, key LIMIT 1) RETURNING size",
                [],
                |r| r.get(0),
            )
            .ok();
        match freed {
            Some(size) => bytes -= size,
            None => break,
        }
    }
    Ok(())
}
