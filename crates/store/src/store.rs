//! The store: one SQLite file, a writer thread, a strict path and a reader.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, SyncSender},
    },
    thread::JoinHandle,
    time::Duration,
};

use modelfleet_budget::{Alert, Period, Scope};
use modelfleet_errors::{DegradationConfig, DegradationTracker, ErrorClass};
use modelfleet_registry::{Category, Clock, ModelSpec, Money, SystemClock};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::{
    Error,
    records::{PerfRecord, SpendRow, UsageRow, encode, to_i64, to_u64},
    schema::{self, Durability},
    writer::{self, Op},
};

/// The store's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// Rows per write transaction at most.
    pub batch_rows: usize,
    /// How long the writer waits to fill a batch.
    pub batch_wait: Duration,
    /// Writes queued at most; beyond, writers wait (back-pressure).
    pub queue_capacity: usize,
    /// Commit durability.
    pub durability: Durability,
    /// Response-cache entries at most.
    pub cache_max_entries: u64,
    /// Response-cache bytes at most.
    pub cache_max_bytes: u64,
    /// Degraded-mode thresholds of the response cache.
    pub cache_degradation: DegradationConfig,
}

impl Default for StoreConfig {
    /// Batches of 512 rows or 50 ms, a queue of 8,192 writes, process-kill
    /// durability, a cache of 10,000 entries and 64 MiB.
    fn default() -> Self {
        StoreConfig {
            batch_rows: 512,
            batch_wait: Duration::from_millis(50),
            queue_capacity: 8_192,
            durability: Durability::Process,
            cache_max_entries: 10_000,
            cache_max_bytes: 64 * 1024 * 1024,
            cache_degradation: DegradationConfig::default(),
        }
    }
}

/// The response cache's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct CacheStats {
    /// Hits.
    pub hits: u64,
    /// Misses (expired and corrupted entries included).
    pub misses: u64,
    /// Corrupted entries found and removed.
    pub corrupted: u64,
    /// Reads skipped because the cache is degraded.
    pub bypassed: u64,
    /// Whether the cache is degraded (bypassed) now.
    pub degraded: bool,
}

#[derive(Default)]
struct CacheCounters {
    hits: AtomicU64,
    misses: AtomicU64,
    corrupted: AtomicU64,
    bypassed: AtomicU64,
}

/// What opening restores, so the stack survives a restart with nothing lost.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Restored {
    /// The catalog.
    pub models: Vec<ModelSpec>,
    /// Usage per model.
    pub usage: Vec<UsageRow>,
    /// Budget spend per scope and period.
    pub spend: Vec<SpendRow>,
}

/// The modelfleet database: catalog, usage, performance log, budget ledger,
/// alert history and response cache in one SQLite file.
///
/// Writes of the performance log and the cache are queued to one writer
/// thread that commits them in batches; [`Store::flush`] returns once
/// everything queued before it is committed, and **a committed write
/// survives the process being killed** (with [`Durability::PowerLoss`],
/// power failure too). Budget spend, the catalog and alerts take the strict
/// path: committed before the call returns. Dropping the store flushes.
pub struct Store {
    path: PathBuf,
    clock: Box<dyn Clock>,
    queue: Option<SyncSender<Op>>,
    writer: Option<JoinHandle<()>>,
    shared: Arc<writer::Shared>,
    strict: Mutex<Connection>,
    reader: Mutex<Connection>,
    cache: CacheCounters,
    cache_health: DegradationTracker,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish_non_exhaustive()
    }
}

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A connection stays usable after a panic elsewhere.
    conn.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The cache key of a request: SHA-256 of its canonical JSON (object keys
/// sorted, no insignificant whitespace), so equal requests share a key
/// however their fields were ordered.
#[must_use]
pub fn cache_key(request: &serde_json::Value) -> [u8; 32] {
    // serde_json's map is ordered by key (no `preserve_order`): canonical.
    let canonical = serde_json::to_vec(request).unwrap_or_default();
    Sha256::digest(&canonical).into()
}

/// Why a cached value was judged corrupted.
fn corruption(value: &[u8], checksum: &[u8]) -> Option<&'static str> {
    if Sha256::digest(value).as_slice() != checksum {
        return Some("checksum mismatch");
    }
    if value.contains(&0) {
        return Some("NUL byte");
    }
    let Ok(text) = std::str::from_utf8(value) else { return Some("invalid UTF-8") };
    if serde_json::from_str::<serde_json::Value>(text).is_err() {
        return Some("invalid or truncated JSON");
    }
    None
}

impl Store {
    /// Opens (creating, migrating and integrity-checking) the database at
    /// `path`. A file that is not SQLite, is corrupted or was written by a
    /// newer modelfleet is refused and left untouched.
    pub fn open(path: impl AsRef<Path>, config: StoreConfig) -> Result<Store, Error> {
        Store::open_with_clock(path, config, SystemClock)
    }

    /// Like [`Store::open`], timestamps (cache expiry) from `clock`.
    pub fn open_with_clock(
        path: impl AsRef<Path>,
        config: StoreConfig,
        clock: impl Clock + 'static,
    ) -> Result<Store, Error> {
        let path = path.as_ref().to_owned();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, &e))?;
        }
        let writer_conn = schema::open(&path, config.durability)?;
        let strict = schema::connect(&path, config.durability)?;
        let reader = schema::connect(&path, config.durability)?;
        let shared = Arc::new(writer::Shared {
            batch_rows: config.batch_rows.max(1),
            batch_wait: config.batch_wait,
            cache_max_entries: config.cache_max_entries,
            cache_max_bytes: config.cache_max_bytes,
            committed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            last_error: Mutex::new(None),
        });
        let (queue, rx) = mpsc::sync_channel(config.queue_capacity.max(1));
        let thread_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("modelfleet-store-writer".into())
            .spawn(move || writer::run(writer_conn, &rx, &thread_shared))
            .map_err(|e| Error::io(&path, &e))?;
        Ok(Store {
            path,
            clock: Box::new(clock),
            queue: Some(queue),
            writer: Some(writer),
            shared,
            strict: Mutex::new(strict),
            reader: Mutex::new(reader),
            cache: CacheCounters::default(),
            cache_health: DegradationTracker::new(config.cache_degradation),
        })
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send(&self, op: Op) -> Result<(), Error> {
        self.queue.as_ref().ok_or(Error::Closed)?.send(op).map_err(|_| Error::Closed)
    }

    /// Queues one performance-log row (and its usage update); waits when the
    /// queue is full.
    pub fn record(&self, record: PerfRecord) -> Result<(), Error> {
        self.send(Op::Perf(Box::new(record)))
    }

    /// Returns once every write queued before it is committed.
    pub fn flush(&self) -> Result<(), Error> {
        let (ack, done) = mpsc::sync_channel(1);
        self.send(Op::Flush(ack))?;
        match done.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(Error::Write(message)),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Rows committed and rows dropped (refused twice by the database) so far.
    #[must_use]
    pub fn write_counts(&self) -> (u64, u64) {
        (self.shared.committed.load(Ordering::Relaxed), self.shared.dropped.load(Ordering::Relaxed))
    }

    /// Flushes and stops the writer (what dropping the store does, with the error reported).
    pub fn close(mut self) -> Result<(), Error> {
        let flushed = self.flush();
        self.stop();
        flushed
    }

    fn stop(&mut self) {
        self.queue = None; // the writer drains the queue, then ends
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }

    // ---- Strict path: committed before returning ---------------------------

    /// Saves (inserts or replaces) a model spec.
    pub fn save_model(&self, spec: &ModelSpec) -> Result<(), Error> {
        let json = serde_json::to_string(spec).map_err(|e| Error::Write(e.to_string()))?;
        lock(&self.strict)
            .execute(
                "INSERT OR REPLACE INTO models (id, spec, updated_at_ms) VALUES (?1, ?2, ?3)",
                params![spec.id, json, to_i64(spec.updated_at_ms)],
            )
            .map_err(|e| Error::sqlite("saving a model", &e))?;
        Ok(())
    }

    /// Replaces the whole catalog in one transaction.
    pub fn save_catalog(&self, specs: &[impl std::borrow::Borrow<ModelSpec>]) -> Result<(), Error> {
        let mut conn = lock(&self.strict);
        let tx = conn.transaction().map_err(|e| Error::sqlite("saving the catalog", &e))?;
        tx.execute("DELETE FROM models", []).map_err(|e| Error::sqlite("saving the catalog", &e))?;
        for spec in specs.iter().map(std::borrow::Borrow::borrow) {
            let json = serde_json::to_string(spec).map_err(|e| Error::Write(e.to_string()))?;
            tx.execute(
                "INSERT INTO models (id, spec, updated_at_ms) VALUES (?1, ?2, ?3)",
                params![spec.id, json, to_i64(spec.updated_at_ms)],
            )
            .map_err(|e| Error::sqlite("saving the catalog", &e))?;
        }
        tx.commit().map_err(|e| Error::sqlite("saving the catalog", &e))
    }

    /// Removes a model spec (its usage and log rows stay: they are history).
    pub fn remove_model(&self, id: &str) -> Result<bool, Error> {
        let n = lock(&self.strict)
            .execute("DELETE FROM models WHERE id = ?1", params![id])
            .map_err(|e| Error::sqlite("removing a model", &e))?;
        Ok(n > 0)
    }

    /// Adds `amount` to a budget's spend for one period; committed before returning.
    pub fn add_spend(&self, scope: &Scope, period: Period, period_start_ms: u64, amount: Money) -> Result<(), Error> {
        // On every paid request: the statement is prepared once per connection.
        lock(&self.strict)
            .prepare_cached(
                "INSERT INTO budget_spend (scope, period, period_start_ms, spent_nanos) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (scope, period, period_start_ms) DO UPDATE SET spent_nanos = spent_nanos + excluded.spent_nanos",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![encode(scope), encode(&period), to_i64(period_start_ms), amount.nanos()])
            })
            .map_err(|e| Error::sqlite("recording budget spend", &e))?;
        Ok(())
    }

    /// Appends a fired alert to the history; committed before returning.
    pub fn save_alert(&self, alert: &Alert) -> Result<(), Error> {
        lock(&self.strict)
            .execute(
                "INSERT INTO alerts (at_ms, scope, threshold, spent_nanos, limit_nanos, period_start_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    to_i64(alert.at_ms),
                    encode(&alert.scope),
                    alert.threshold,
                    alert.spent.nanos(),
                    alert.limit.nanos(),
                    to_i64(alert.period_start_ms)
                ],
            )
            .map_err(|e| Error::sqlite("saving an alert", &e))?;
        Ok(())
    }

    // ---- Reads ----------------------------------------------------------------

    /// The saved catalog, sorted by id. A row that no longer parses is an
    /// error naming it (never silently skipped).
    pub fn load_catalog(&self) -> Result<Vec<ModelSpec>, Error> {
        let conn = lock(&self.reader);
        let mut stmt = conn
            .prepare_cached("SELECT id, spec FROM models ORDER BY id")
            .map_err(|e| Error::sqlite("loading the catalog", &e))?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(Iterator::collect)
            .map_err(|e| Error::sqlite("loading the catalog", &e))?;
        rows.into_iter()
            .map(|(id, json)| {
                serde_json::from_str(&json).map_err(|e| Error::BadRow {
                    table: "models",
                    key: id,
                    message: e.to_string(),
                })
            })
            .collect()
    }

    /// Usage per model, sorted by model.
    pub fn usage(&self) -> Result<Vec<UsageRow>, Error> {
        let conn = lock(&self.reader);
        let mut stmt = conn
            .prepare_cached(
                "SELECT model, provider, requests, successes, failures, input_tokens, output_tokens, cached_tokens, \
                 cost_nanos, latency_us_sum, quality_sum, quality_count, first_ms, last_ms FROM usage ORDER BY model",
            )
            .map_err(|e| Error::sqlite("reading usage", &e))?;
        stmt.query_map([], |r| {
            let quality_count: i64 = r.get(11)?;
            let quality_sum: f64 = r.get(10)?;
            Ok(UsageRow {
                model: r.get(0)?,
                provider: r.get(1)?,
                requests: to_u64(r.get(2)?),
                successes: to_u64(r.get(3)?),
                failures: to_u64(r.get(4)?),
                input_tokens: to_u64(r.get(5)?),
                output_tokens: to_u64(r.get(6)?),
                cached_tokens: to_u64(r.get(7)?),
                cost: Money::from_nanos(r.get(8)?),
                latency_us_sum: to_u64(r.get(9)?),
                avg_quality: (quality_count > 0).then(|| quality_sum / quality_count as f64),
                first_ms: to_u64(r.get(12)?),
                last_ms: to_u64(r.get(13)?),
            })
        })
        .and_then(Iterator::collect)
        .map_err(|e| Error::sqlite("reading usage", &e))
    }

    /// Performance-log rows of `model` (all models when `None`) with
    /// `from_ms <= at_ms < to_ms`, oldest first, at most `limit`.
    pub fn perf_log(
        &self,
        model: Option<&str>,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> Result<Vec<PerfRecord>, Error> {
        let conn = lock(&self.reader);
        let mut stmt = conn
            .prepare_cached(
                "SELECT at_ms, model, provider, kind, language, latency_us, ttft_us, input_tokens, output_tokens, \
                 cached_tokens, cost_nanos, error, quality FROM perf_log \
                 WHERE (?1 IS NULL OR model = ?1) AND at_ms >= ?2 AND at_ms < ?3 ORDER BY at_ms, id LIMIT ?4",
            )
            .map_err(|e| Error::sqlite("reading the performance log", &e))?;
        let rows = stmt
            .query_map(params![model, to_i64(from_ms), to_i64(to_ms), to_i64(limit as u64)], |r| {
                let kind: String = r.get(3)?;
                let error: Option<String> = r.get(11)?;
                Ok((
                    kind,
                    error,
                    PerfRecord {
                        at_ms: to_u64(r.get(0)?),
                        model: r.get(1)?,
                        provider: r.get(2)?,
                        kind: Category::General,
                        language: r.get(4)?,
                        latency_us: to_u64(r.get(5)?),
                        ttft_us: r.get::<_, Option<i64>>(6)?.map(to_u64),
                        input_tokens: to_u64(r.get(7)?),
                        output_tokens: to_u64(r.get(8)?),
                        cached_tokens: to_u64(r.get(9)?),
                        cost: Money::from_nanos(r.get(10)?),
                        error: None,
                        quality: r.get(12)?,
                    },
                ))
            })
            .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
            .map_err(|e| Error::sqlite("reading the performance log", &e))?;
        rows.into_iter()
            .map(|(kind, error, mut record)| {
                let bad = |message: String| Error::BadRow {
                    table: "perf_log",
                    key: format!("{}@{}", record.model, record.at_ms),
                    message,
                };
                record.kind = Category::ALL
                    .into_iter()
                    .find(|c| c.as_str() == kind)
                    .ok_or_else(|| bad(format!("unknown kind {kind:?}")))?;
                record.error = match error {
                    None => None,
                    Some(name) => Some(name.parse::<ErrorClass>().map_err(|e| bad(e.to_string()))?),
                };
                Ok(record)
            })
            .collect()
    }

    /// Budget spend per scope and period, newest period first.
    pub fn spend(&self) -> Result<Vec<SpendRow>, Error> {
        let conn = lock(&self.reader);
        let mut stmt = conn
            .prepare_cached("SELECT scope, period, period_start_ms, spent_nanos FROM budget_spend ORDER BY period_start_ms DESC, scope")
            .map_err(|e| Error::sqlite("reading budget spend", &e))?;
        let rows: Vec<(String, String, i64, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .and_then(Iterator::collect)
            .map_err(|e| Error::sqlite("reading budget spend", &e))?;
        rows.into_iter()
            .map(|(scope, period, start, spent)| {
                let bad = |e: serde_json::Error| Error::BadRow {
                    table: "budget_spend",
                    key: scope.clone(),
                    message: e.to_string(),
                };
                Ok(SpendRow {
                    scope: serde_json::from_str(&scope).map_err(bad)?,
                    period: serde_json::from_str(&period).map_err(bad)?,
                    period_start_ms: to_u64(start),
                    spent: Money::from_nanos(spent),
                })
            })
            .collect()
    }

    /// The alert history, oldest first.
    pub fn alerts(&self) -> Result<Vec<Alert>, Error> {
        let conn = lock(&self.reader);
        let mut stmt = conn
            .prepare_cached(
                "SELECT at_ms, scope, threshold, spent_nanos, limit_nanos, period_start_ms FROM alerts ORDER BY id",
            )
            .map_err(|e| Error::sqlite("reading alerts", &e))?;
        let rows: Vec<(i64, String, u8, i64, i64, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
            .and_then(Iterator::collect)
            .map_err(|e| Error::sqlite("reading alerts", &e))?;
        rows.into_iter()
            .map(|(at, scope, threshold, spent, limit, start)| {
                Ok(Alert {
                    scope: serde_json::from_str(&scope).map_err(|e| Error::BadRow {
                        table: "alerts",
                        key: scope.clone(),
                        message: e.to_string(),
                    })?,
                    threshold,
                    spent: Money::from_nanos(spent),
                    limit: Money::from_nanos(limit),
                    period_start_ms: to_u64(start),
                    at_ms: to_u64(at),
                })
            })
            .collect()
    }

    /// Everything a restarted stack needs: catalog, usage and spend.
    pub fn restore(&self) -> Result<Restored, Error> {
        Ok(Restored { models: self.load_catalog()?, usage: self.usage()?, spend: self.spend()? })
    }

    // ---- Response cache -----------------------------------------------------

    /// Queues `value` under `key` for `ttl`.
    pub fn cache_put(&self, key: [u8; 32], value: &serde_json::Value, ttl: Duration) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Write(e.to_string()))?;
        let now = self.clock.now_ms();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let checksum: [u8; 32] = Sha256::digest(&bytes).into();
        self.send(Op::CachePut {
            key,
            value: bytes,
            checksum,
            created_ms: now,
            expires_ms: now.saturating_add(ttl_ms),
        })?;
        // A write that goes through is a sign of health for a degraded cache.
        self.cache_health.record_success();
        Ok(())
    }

    /// The cached value under `key`, if present, fresh and sound. An expired
    /// entry is removed; a corrupted one (checksum mismatch, NUL bytes,
    /// invalid UTF-8, invalid or truncated JSON) is removed, counted and
    /// reported to the degradation tracker, and reads as a miss. While the
    /// cache is degraded, reads are bypassed.
    pub fn cache_get(&self, key: &[u8; 32]) -> Result<Option<serde_json::Value>, Error> {
        if self.cache_health.is_degraded() {
            self.cache.bypassed.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        let now = self.clock.now_ms();
        let row: Option<(Vec<u8>, Vec<u8>, i64)> = {
            let conn = lock(&self.reader);
            let mut stmt = conn
                .prepare_cached("SELECT value, checksum, expires_ms FROM cache WHERE key = ?1")
                .map_err(|e| Error::sqlite("reading the cache", &e))?;
            stmt.query_row(params![&key[..]], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
                .map_err(|e| Error::sqlite("reading the cache", &e))?
        };
        let Some((value, checksum, expires_ms)) = row else {
            self.cache.misses.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        };
        if to_u64(expires_ms) <= now {
            self.cache_delete(key)?;
            self.cache.misses.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        if corruption(&value, &checksum).is_some() {
            self.cache_delete(key)?;
            self.cache.corrupted.fetch_add(1, Ordering::Relaxed);
            self.cache.misses.fetch_add(1, Ordering::Relaxed);
            self.cache_health.record_failure();
            return Ok(None);
        }
        // Checked above: valid UTF-8 JSON.
        let parsed = serde_json::from_slice(&value).ok();
        self.cache.hits.fetch_add(1, Ordering::Relaxed);
        self.cache_health.record_success();
        Ok(parsed)
    }

    fn cache_delete(&self, key: &[u8; 32]) -> Result<(), Error> {
        lock(&self.strict)
            .execute("DELETE FROM cache WHERE key = ?1", params![&key[..]])
            .map_err(|e| Error::sqlite("removing a cache entry", &e))?;
        Ok(())
    }

    /// Reads every cache entry and removes the corrupted ones, one by one,
    /// keeping the sound; returns how many were removed.
    pub fn cache_scrub(&self) -> Result<u64, Error> {
        let rows: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = {
            let conn = lock(&self.reader);
            let mut stmt = conn
                .prepare("SELECT key, value, checksum FROM cache")
                .map_err(|e| Error::sqlite("scrubbing the cache", &e))?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .and_then(Iterator::collect)
                .map_err(|e| Error::sqlite("scrubbing the cache", &e))?
        };
        let mut removed = 0;
        for (key, value, checksum) in rows {
            if corruption(&value, &checksum).is_some() {
                lock(&self.strict)
                    .execute("DELETE FROM cache WHERE key = ?1", params![key])
                    .map_err(|e| Error::sqlite("scrubbing the cache", &e))?;
                removed += 1;
            }
        }
        self.cache.corrupted.fetch_add(removed, Ordering::Relaxed);
        Ok(removed)
    }

    /// The cache's counters.
    #[must_use]
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            hits: self.cache.hits.load(Ordering::Relaxed),
            misses: self.cache.misses.load(Ordering::Relaxed),
            corrupted: self.cache.corrupted.load(Ordering::Relaxed),
            bypassed: self.cache.bypassed.load(Ordering::Relaxed),
            degraded: self.cache_health.is_degraded(),
        }
    }
}

impl Drop for Store {
    /// Flushes what is queued and stops the writer.
    fn drop(&mut self) {
        if self.queue.is_some() {
            let _ = self.flush();
            self.stop();
        }
    }
}
