//! The store: one SQLite file, a writer thread, a strict path and a reader.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use modelfleet_budget::{Alert, BudgetSpec, Period, Scope};
use modelfleet_errors::{DegradationConfig, DegradationTracker, ErrorClass};
use modelfleet_registry::{Category, Clock, ModelSpec, Money, SystemClock};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use tokio::sync::{
    mpsc::{self, error::TrySendError},
    oneshot,
};

use crate::{
    Error,
    history::{Dim, History, HourDelta, Rated},
    records::{AuditRow, PerfRecord, SpendEntry, SpendRow, UsageRow, to_i64, to_u64},
    schema::{self, CHECK_ON_OPEN_MAX_BYTES, Durability, Integrity},
    writer::{self, Ack, BudgetChange, Op, Outcome, Queued, lock},
};

/// The store's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreConfig {
    /// Ops the writer takes from the queue per transaction at most (a batch
    /// can exceed it by what it takes from the overflow).
    pub batch_rows: usize,
    /// How long the writer waits to fill a batch of performance rows. A
    /// batch holding an op somebody waits for (a commit, a flush, a budget
    /// change) is committed as soon as the queue is drained.
    pub batch_wait: Duration,
    /// Writes queued at most; beyond, the `async` writers wait without
    /// blocking a thread (back-pressure) and the non-waiting ones
    /// (`*_detached`, alerts, cache entries, flush) go to an overflow list.
    pub queue_capacity: usize,
    /// Commit durability.
    pub durability: Durability,
    /// Response-cache entries at most.
    pub cache_max_entries: u64,
    /// Response-cache bytes at most.
    pub cache_max_bytes: u64,
    /// Degraded-mode thresholds of the response cache.
    pub cache_degradation: DegradationConfig,
    /// Days performance-log rows are kept (by their timestamp and the
    /// store's clock); older ones are pruned when the store opens and then
    /// hourly. 0 keeps them all. Only raw performance rows are pruned: spend,
    /// usage totals, budgets, alerts, the catalog and the cache are not.
    pub retain_days: u32,
    /// Days hourly aggregates of the performance log are kept (reports over
    /// ranges older than `retain_days` read them); 0 keeps them all. Never
    /// less than `retain_days` (all, when that is 0).
    pub aggregate_retain_days: u32,
    /// Files up to this size are integrity-checked before they are opened
    /// read-write; larger ones in the background after ([`Store::integrity`]).
    pub check_on_open_max_bytes: u64,
}

impl Default for StoreConfig {
    /// Batches of 512 rows or 50 ms, a queue of 8,192 writes, process-kill
    /// durability, a cache of 10,000 entries and 64 MiB, performance rows
    /// kept 30 days and their hourly aggregates 400, files up to 256 MiB
    /// checked before they are opened.
    fn default() -> Self {
        StoreConfig {
            batch_rows: 512,
            batch_wait: Duration::from_millis(50),
            queue_capacity: 8_192,
            durability: Durability::Process,
            cache_max_entries: 10_000,
            cache_max_bytes: 64 * 1024 * 1024,
            cache_degradation: DegradationConfig::default(),
            retain_days: 30,
            aggregate_retain_days: 400,
            check_on_open_max_bytes: CHECK_ON_OPEN_MAX_BYTES,
        }
    }
}

/// The columns [`perf_row`] reads, in its order.
const PERF_COLUMNS: &str = "at_ms, model, provider, kind, language, latency_us, ttft_us, input_tokens, output_tokens, \
                            cached_tokens, cost_nanos, error, quality, request_id, key_name, route, attempt, fallback, \
                            rating";

/// A performance row with its kind and error class still text.
fn perf_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, Option<String>, PerfRecord)> {
    let kind: String = r.get(3)?;
    let error: Option<String> = r.get(11)?;
    let rating: Option<i64> = r.get(18)?;
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
            request_id: r.get(13)?,
            key_name: r.get(14)?,
            route: r.get(15)?,
            attempt: u32::try_from(r.get::<_, i64>(16)?).unwrap_or(1).max(1),
            fallback: r.get::<_, i64>(17)? != 0,
            rating: rating.and_then(|r| u8::try_from(r).ok()).filter(|r| (1..=5).contains(r)),
        },
    ))
}

/// Parses the kind and error class of [`perf_row`]'s row: a value this
/// build does not know is an error naming the row.
fn parse_perf_row((kind, error, mut record): (String, Option<String>, PerfRecord)) -> Result<PerfRecord, Error> {
    let bad = |message: String| Error::BadRow {
        table: "perf_log",
        key: format!("{}@{}", record.model, record.at_ms),
        message,
    };
    record.kind =
        Category::ALL.into_iter().find(|c| c.as_str() == kind).ok_or_else(|| bad(format!("unknown kind {kind:?}")))?;
    record.error = match error {
        None => None,
        Some(name) => Some(name.parse::<ErrorClass>().map_err(|e| bad(e.to_string()))?),
    };
    Ok(record)
}

/// A day in milliseconds.
const DAY_MS: u64 = 24 * 60 * 60 * 1_000;

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
    /// The budgets created through the API.
    pub budgets: Vec<BudgetSpec>,
}

/// The modelfleet database: catalog, usage, performance log, budget ledger,
/// budgets and their audit trail, alert history and response cache in one
/// SQLite file.
///
/// # Writes go through one writer thread
///
/// Spend, the performance log, usage, alerts, budget changes and the cache
/// are queued (a bounded queue of `queue_capacity` ops) to one writer thread
/// that owns the write connection and commits many ops per transaction:
///
/// - [`Store::commit`] (a settled request: its spend on every covering
///   budget plus its performance row and usage update, atomic in one
///   transaction) returns **after the COMMIT** of the transaction holding
///   it. Concurrent commits share transactions (group commit): the writer
///   does not wait to fill a batch when a caller waits, it commits as soon
///   as the queue is drained. So "committed before the call returns" holds,
///   and with [`Durability::PowerLoss`] the spend survives power failure.
/// - **Spend is never lost.** When a transaction fails twice, the commits in
///   it return [`Error::Write`], but their spend rows stay with the writer
///   and are re-applied in every later transaction (at least one a second)
///   until one commits; [`Store::spend_backlog`] says why while they wait.
///   Performance rows, cache entries and alerts of a failed transaction are
///   dropped and counted ([`Store::write_counts`]). Spend still waiting when
///   the store is closed is lost with the process: `close` reports it.
/// - Performance rows on their own ([`Store::record`]) are batched: a
///   transaction per `batch_rows` rows or `batch_wait`.
/// - [`Store::flush`] returns once everything queued before it is
///   committed; **a committed write survives the process being killed**.
///   Dropping the store flushes.
///
/// # What blocks
///
/// Nothing on the request path blocks a tokio worker: the `async` methods
/// wait for room in the queue and for their acknowledgement without
/// blocking a thread, and the `*_detached` methods, [`Store::save_alert`]
/// and [`Store::cache_put`] never wait (when the queue is full the op goes
/// to an overflow list the writer drains on every loop; for `Drop` paths
/// that cannot await). A dropped `commit` future still commits its spend.
///
/// These block the calling thread and belong off the async runtime
/// (`spawn_blocking`) or outside it: [`Store::flush`], [`Store::close`],
/// dropping the store, the catalog writes (`save_model`,
/// `save_catalog`, `remove_model`, committed on their own connection before
/// they return), [`Store::cache_drop_model`] (which waits for its commit),
/// [`Store::shrink_memory`], and every read (`spend`, `usage`, `cache_get`,
/// …) which runs SQLite on the calling thread.
pub struct Store {
    path: PathBuf,
    clock: Arc<dyn Clock>,
    queue: Option<mpsc::Sender<Queued>>,
    writer: Option<JoinHandle<()>>,
    /// Dropping the sender stops the checkpointer.
    checkpointer: Option<(std::sync::mpsc::Sender<()>, JoinHandle<()>)>,
    shared: Arc<writer::Shared>,
    strict: Mutex<Connection>,
    reader: Mutex<Connection>,
    cache: CacheCounters,
    cache_health: DegradationTracker,
    /// Where the file's integrity check stands.
    integrity: Arc<Mutex<Integrity>>,
    /// The background integrity check of a large file, while it may run.
    integrity_check: Mutex<Option<(rusqlite::InterruptHandle, JoinHandle<()>)>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish_non_exhaustive()
    }
}

/// An op waiting for room in the queue. If its future is dropped first, the
/// op still goes (to the overflow): a cancelled request's spend is written.
struct Unsent<'s> {
    store: &'s Store,
    queued: Option<Queued>,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if let Some(queued) = self.queued.take() {
            let _ = self.store.push(queued);
        }
    }
}

fn outcome(outcome: Option<Outcome>) -> Result<(), Error> {
    match outcome {
        Some(Ok(())) => Ok(()),
        Some(Err(message)) => Err(Error::Write(message)),
        None => Err(Error::Closed),
    }
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
    /// Opens (creating, integrity-checking, migrating) the database at
    /// `path`. An existing file is looked at read-only first; a file that is
    /// not SQLite, not a modelfleet database, corrupted or written by a
    /// newer modelfleet is refused and left untouched (see the crate docs).
    pub fn open(path: impl AsRef<Path>, config: StoreConfig) -> Result<Store, Error> {
        Store::open_with_clock(path, config, SystemClock)
    }

    /// Like [`Store::open`], timestamps (cache expiry, the retention window
    /// of the performance log) from `clock`.
    pub fn open_with_clock(
        path: impl AsRef<Path>,
        config: StoreConfig,
        clock: impl Clock + 'static,
    ) -> Result<Store, Error> {
        let path = path.as_ref().to_owned();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, &e))?;
        }
        let (writer_conn, unchecked) = schema::open(&path, config.durability, config.check_on_open_max_bytes)?;
        let strict = schema::connect(&path, config.durability)?;
        let reader = schema::connect(&path, config.durability)?;
        let integrity = Arc::new(Mutex::new(if unchecked { Integrity::Checking } else { Integrity::Sound }));
        let integrity_check =
            if unchecked { Some(schema::background_check(&path, Arc::clone(&integrity))?) } else { None };
        let clock: Arc<dyn Clock> = Arc::new(clock);
        let shared = Arc::new(writer::Shared {
            batch_rows: config.batch_rows.max(1),
            batch_wait: config.batch_wait,
            capacity: config.queue_capacity.max(1),
            cache_max_entries: config.cache_max_entries,
            cache_max_bytes: config.cache_max_bytes,
            retain_ms: u64::from(config.retain_days).saturating_mul(DAY_MS),
            // Reports read whole hours from the aggregates: never pruned
            // before the raw rows (kept for ever when those are).
            aggregate_retain_ms: match (config.retain_days, config.aggregate_retain_days) {
                (0, _) | (_, 0) => 0,
                (raw, aggregates) => u64::from(aggregates.max(raw)).saturating_mul(DAY_MS),
            },
            pruned: AtomicU64::new(0),
            seq: AtomicU64::new(1),
            committed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            last_error: Mutex::new(None),
            backlog: Mutex::new(None),
            overflow: Mutex::new(Vec::new()),
            export: std::sync::OnceLock::new(),
            #[cfg(feature = "fault-injection")]
            fail_writes: std::sync::atomic::AtomicBool::new(false),
        });
        let (queue, rx) = mpsc::channel(shared.capacity);
        let thread_shared = Arc::clone(&shared);
        let writer_clock = Arc::clone(&clock);
        let writer = std::thread::Builder::new()
            .name("modelfleet-store-writer".into())
            .spawn(move || writer::run(writer_conn, rx, &thread_shared, writer_clock))
            .map_err(|e| Error::io(&path, &e))?;
        let checkpointer = schema::checkpointer(&path, config.durability)?;
        Ok(Store {
            path,
            clock,
            queue: Some(queue),
            writer: Some(writer),
            checkpointer: Some(checkpointer),
            shared,
            strict: Mutex::new(strict),
            reader: Mutex::new(reader),
            cache: CacheCounters::default(),
            cache_health: DegradationTracker::new(config.cache_degradation),
            integrity,
            integrity_check: Mutex::new(integrity_check),
        })
    }

    /// Where the file's integrity check stands. [`Integrity::Sound`] for a
    /// file checked before it was opened (up to `check_on_open_max_bytes`)
    /// or created; a larger file is [`Integrity::Checking`] until the
    /// background check ends, then `Sound` or [`Integrity::Failed`] (also
    /// logged). A failed check does not stop the store: it says the file
    /// wants `modelfleet db check`.
    #[must_use]
    pub fn integrity(&self) -> Integrity {
        lock(&self.integrity).clone()
    }

    /// Waits for the background integrity check, if one runs.
    #[cfg(test)]
    pub(crate) fn wait_for_integrity_check(&self) {
        if let Some((_, thread)) = lock(&self.integrity_check).take() {
            let _ = thread.join();
        }
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// From now on, hands `export` what each committed write transaction
    /// added to the hourly aggregates ([`HourDelta`]s: new rows' counts,
    /// tokens, cost and histograms per group and hour, and ratings), on
    /// the writer thread right after the COMMIT, so another store can keep
    /// the same aggregates (replicas sharing their history). A transaction
    /// that fails exports nothing. `export` must return at once: it holds
    /// up the writer. False, and nothing changes, when an export is set
    /// already.
    pub fn export_history(&self, export: impl Fn(Vec<HourDelta>) + Send + Sync + 'static) -> bool {
        self.shared.export.set(Box::new(export)).is_ok()
    }

    // ---- The queue -----------------------------------------------------------

    /// `op` with its place in the order of enqueueing.
    fn queued(&self, op: Op) -> Queued {
        Queued { seq: self.shared.seq.fetch_add(1, Ordering::Relaxed), op }
    }

    /// Queues without waiting: in the queue when it has room, else in the overflow.
    fn push(&self, queued: Queued) -> Result<(), Error> {
        let queue = self.queue.as_ref().ok_or(Error::Closed)?;
        match queue.try_send(queued) {
            Ok(()) => Ok(()),
            Err(TrySendError::Closed(_)) => Err(Error::Closed),
            Err(TrySendError::Full(queued)) => {
                lock(&self.shared.overflow).push(queued);
                // An idle writer parks on the queue: wake it. When the queue
                // is full the wake-up is not needed: the writer has ops to
                // take, and looks at the overflow right after them.
                let _ = queue.try_send(Queued { seq: 0, op: Op::Wake });
                Ok(())
            }
        }
    }

    /// Queues `op`, waiting (without blocking a thread) while the queue is full.
    async fn send(&self, op: Op) -> Result<(), Error> {
        let queue = self.queue.as_ref().ok_or(Error::Closed)?;
        let mut unsent = Unsent { store: self, queued: Some(self.queued(op)) };
        let permit = queue.reserve().await.map_err(|_| Error::Closed)?;
        if let Some(queued) = unsent.queued.take() {
            permit.send(queued);
        }
        Ok(())
    }

    /// Queues the op made by `op` and waits for its transaction's outcome.
    async fn send_acked(&self, op: impl FnOnce(Ack) -> Op) -> Result<(), Error> {
        let (ack, done) = oneshot::channel();
        self.send(op(Ack::Async(ack))).await?;
        outcome(done.await.ok())
    }

    /// Like [`Store::send_acked`], blocking the thread; works inside and
    /// outside an async runtime.
    fn send_acked_blocking(&self, op: impl FnOnce(Ack) -> Op) -> Result<(), Error> {
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        self.push(self.queued(op(Ack::Blocking(ack))))?;
        outcome(done.recv().ok())
    }

    /// Commits a settled request: `spend` (one entry per budget covering it)
    /// and its performance row with its usage update, atomically in one
    /// transaction. Returns after that transaction's COMMIT (many concurrent
    /// commits share one: group commit). Waits, without blocking a thread,
    /// while the queue is full.
    ///
    /// # Errors
    ///
    /// [`Error::Write`] when the transaction failed twice: the performance
    /// row is dropped, but **the spend is kept** and re-applied in every
    /// later transaction until one commits ([`Store::spend_backlog`] is
    /// `Some` meanwhile). [`Error::Closed`] when the store is closed.
    pub async fn commit(&self, spend: Vec<SpendEntry>, perf: Option<PerfRecord>) -> Result<(), Error> {
        self.send_acked(|ack| Op::Settle { spend, perf: perf.map(Box::new), ack: Some(ack) }).await
    }

    /// Queues a settled request like [`Store::commit`] without waiting for
    /// anything: never blocks, never loses the spend (when the queue is full
    /// the op goes to an overflow list the writer drains on every loop). For
    /// `Drop` paths that cannot await; [`Store::flush`] waits for it.
    pub fn commit_detached(&self, spend: Vec<SpendEntry>, perf: Option<PerfRecord>) {
        // Closed only while the store is being dropped: no caller is left.
        let _ = self.push(self.queued(Op::Settle { spend, perf: perf.map(Box::new), ack: None }));
    }

    /// Queues one performance-log row (and its usage update), waiting
    /// without blocking a thread while the queue is full. Committed in a
    /// batch (`batch_rows` rows or `batch_wait`); [`Store::flush`] waits for it.
    pub async fn record(&self, record: PerfRecord) -> Result<(), Error> {
        self.send(Op::Perf(Box::new(record))).await
    }

    /// Queues one performance-log row without waiting: never blocks, never
    /// loses the row to a full queue (see [`Store::commit_detached`]).
    pub fn record_detached(&self, record: PerfRecord) {
        // Closed only while the store is being dropped: no caller is left.
        let _ = self.push(self.queued(Op::Perf(Box::new(record))));
    }

    /// Returns once every write queued before it is committed.
    ///
    /// **Blocks the calling thread** until then: on an async runtime call
    /// [`Store::flush_async`] or run it in `spawn_blocking`. It works both
    /// inside and outside a runtime (it never waits for room in the queue:
    /// a full queue sends it to the overflow; then it waits on a std channel).
    pub fn flush(&self) -> Result<(), Error> {
        self.send_acked_blocking(Op::Flush)
    }

    /// As [`Store::flush`], and then moves the write-ahead log whole into the
    /// database file and truncates it, so the file alone holds everything
    /// (a copy or a backup taken after a shutdown needs nothing beside it).
    /// Best effort for the second part: a WAL that stays busy for half a
    /// second keeps the rest, which SQLite replays at the next open.
    ///
    /// **Blocks the calling thread**, as [`Store::flush`] does.
    pub fn flush_and_checkpoint(&self) -> Result<(), Error> {
        self.send_acked_blocking(Op::Checkpoint)
    }

    /// Returns once every write queued before it is committed, without
    /// blocking a thread.
    pub async fn flush_async(&self) -> Result<(), Error> {
        self.send_acked(Op::Flush).await
    }

    /// Why spend waits for a successful commit (sanitized), while it does:
    /// a transaction holding spend failed twice and no transaction has
    /// committed since. `None` when every acknowledged spend is on disk.
    #[must_use]
    pub fn spend_backlog(&self) -> Option<String> {
        lock(&self.shared.backlog).clone()
    }

    /// Makes every write transaction fail while `on` (as a full disk or an
    /// I/O error would), so tests can see what the stack does about it.
    /// Only with the `fault-injection` feature, which tests turn on.
    #[cfg(feature = "fault-injection")]
    pub fn fail_writes(&self, on: bool) {
        self.shared.fail_writes.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Why writing fails now: the error of the last write transaction, while
    /// no later one has succeeded. `None` once a transaction commits again:
    /// a passing failure is history (counted in [`Store::write_counts`]),
    /// not a lasting state.
    #[must_use]
    pub fn write_failing(&self) -> Option<String> {
        self.shared.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Writes committed and writes dropped (refused twice by the database) so
    /// far. A write is one queued op: a performance row, a settlement, an
    /// alert, a cache entry, a cache drop or a budget change. Dropped writes
    /// are performance rows, alerts and cache entries (spend is kept, budget
    /// changes and cache drops are refused to their caller). Pruned
    /// performance rows are counted apart ([`Store::perf_rows_pruned`]).
    #[must_use]
    pub fn write_counts(&self) -> (u64, u64) {
        (self.shared.committed.load(Ordering::Relaxed), self.shared.dropped.load(Ordering::Relaxed))
    }

    /// Write transactions committed so far by the writer thread.
    #[must_use]
    pub fn transactions(&self) -> u64 {
        self.shared.transactions.load(Ordering::Relaxed)
    }

    /// Performance-log rows pruned so far (older than `retain_days`).
    #[must_use]
    pub fn perf_rows_pruned(&self) -> u64 {
        self.shared.pruned.load(Ordering::Relaxed)
    }

    /// Releases the memory SQLite can give back (`PRAGMA shrink_memory`) on
    /// the store's read and catalog connections now, and on the writer's
    /// after its next transaction (queued, not waited for): for a memory
    /// guard. **Blocks the calling thread** briefly (it waits for those
    /// connections' locks): call it on the blocking pool.
    pub fn shrink_memory(&self) -> Result<(), Error> {
        for conn in [&self.strict, &self.reader] {
            lock(conn).execute_batch("PRAGMA shrink_memory").map_err(|e| Error::sqlite("releasing memory", &e))?;
        }
        self.push(self.queued(Op::ShrinkMemory))
    }

    /// Flushes and stops the writer (what dropping the store does, with the
    /// error reported). Blocks the calling thread.
    pub fn close(mut self) -> Result<(), Error> {
        let flushed = self.flush();
        self.stop();
        match (flushed, self.spend_backlog()) {
            (Ok(()), Some(reason)) => Err(Error::Write(reason)),
            (flushed, _) => flushed,
        }
    }

    fn stop(&mut self) {
        self.queue = None; // the writer drains the queue and the overflow, then ends
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        if let Some((stop, checkpointer)) = self.checkpointer.take() {
            drop(stop);
            let _ = checkpointer.join();
        }
        if let Some((interrupt, check)) = lock(&self.integrity_check).take() {
            // Unfinished, it stays `Checking`: the next open checks again.
            interrupt.interrupt();
            let _ = check.join();
        }
    }

    // ---- Alerts and budgets: through the writer ------------------------------

    /// Appends a fired alert to the history. Queued, never blocks: committed
    /// with the next transaction ([`Store::flush`] waits for it).
    pub fn save_alert(&self, alert: &Alert) -> Result<(), Error> {
        self.push(self.queued(Op::Alert(Box::new(alert.clone()))))
    }

    /// Saves (inserts or replaces) a budget created through the API, with an
    /// audit row `set` by `who`. Returns after COMMIT, ordered with spend
    /// commits. Budgets from the configuration file are not stored here.
    pub async fn save_budget(&self, spec: &BudgetSpec, who: &str, at_ms: u64) -> Result<(), Error> {
        let change = BudgetChange::Save { spec: spec.clone(), who: who.to_owned(), at_ms };
        self.send_acked(|ack| Op::Budget(Box::new(change), ack)).await
    }

    /// Removes a stored budget, with an audit row `remove` by `who`. Returns
    /// after COMMIT; its spend stays (history).
    pub async fn remove_budget(&self, scope: &Scope, period: Period, who: &str, at_ms: u64) -> Result<(), Error> {
        let change = BudgetChange::Remove { scope: scope.clone(), period, who: who.to_owned(), at_ms };
        self.send_acked(|ack| Op::Budget(Box::new(change), ack)).await
    }

    /// Deletes a budget's spend in the period starting at `period_start_ms`
    /// (every provider and model), with an audit row `reset` by `who` that
    /// names `spent_before`. Returns after COMMIT; spend committed before it
    /// is deleted, spend queued after it stays.
    pub async fn reset_spend(
        &self,
        scope: &Scope,
        period: Period,
        period_start_ms: u64,
        spent_before: Money,
        who: &str,
        at_ms: u64,
    ) -> Result<(), Error> {
        let change = BudgetChange::Reset {
            scope: scope.clone(),
            period,
            period_start_ms,
            spent_before,
            who: who.to_owned(),
            at_ms,
        };
        self.send_acked(|ack| Op::Budget(Box::new(change), ack)).await
    }

    // ---- Catalog: committed on its own connection before returning -----------

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
                rated: to_u64(quality_count),
                first_ms: to_u64(r.get(12)?),
                last_ms: to_u64(r.get(13)?),
            })
        })
        .and_then(Iterator::collect)
        .map_err(|e| Error::sqlite("reading usage", &e))
    }

    /// Performance-log rows of `model` (all models when `None`) with
    /// `from_ms <= at_ms < to_ms`, oldest first, at most `limit`. Blocks (SQLite).
    pub fn perf_log(
        &self,
        model: Option<&str>,
        from_ms: u64,
        to_ms: u64,
        limit: usize,
    ) -> Result<Vec<PerfRecord>, Error> {
        let conn = lock(&self.reader);
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {PERF_COLUMNS} FROM perf_log \
                 WHERE (?1 IS NULL OR model = ?1) AND at_ms >= ?2 AND at_ms < ?3 ORDER BY at_ms, id LIMIT ?4"
            ))
            .map_err(|e| Error::sqlite("reading the performance log", &e))?;
        let rows = stmt
            .query_map(params![model, to_i64(from_ms), to_i64(to_ms), to_i64(limit as u64)], perf_row)
            .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
            .map_err(|e| Error::sqlite("reading the performance log", &e))?;
        rows.into_iter().map(parse_perf_row).collect()
    }

    /// The newest `limit` performance rows with `at_ms >= from_ms`, oldest
    /// first: what a restarted monitor is warmed with. Blocks (SQLite).
    pub fn perf_log_tail(&self, from_ms: u64, limit: usize) -> Result<Vec<PerfRecord>, Error> {
        let conn = lock(&self.reader);
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {PERF_COLUMNS} FROM perf_log WHERE at_ms >= ?1 ORDER BY at_ms DESC, id DESC LIMIT ?2"
            ))
            .map_err(|e| Error::sqlite("reading the performance log", &e))?;
        let rows = stmt
            .query_map(params![to_i64(from_ms), to_i64(limit as u64)], perf_row)
            .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
            .map_err(|e| Error::sqlite("reading the performance log", &e))?;
        rows.into_iter().rev().map(parse_perf_row).collect()
    }

    /// What the performance history says over `[from_ms, to_ms)`, grouped
    /// by each of `dims`: whole hours from the hourly aggregates, the edges
    /// from the raw rows (or, where those may be pruned, from their whole
    /// hours: [`History`] says what it covers). Reads what is committed
    /// (flush first for what is queued), on a read-only connection of its
    /// own, so a long report never holds up the response cache's reads.
    /// Blocks (SQLite).
    pub fn history(&self, from_ms: u64, to_ms: u64, dims: &[Dim]) -> Result<History, Error> {
        let kept_from = match self.shared.retain_ms {
            0 => 0,
            retain => self.clock.now_ms().saturating_sub(retain),
        };
        // A connection of its own: a year-long report must not hold the
        // shared reader (the response cache's) for its whole length.
        let failed = |e: rusqlite::Error| Error::sqlite("reading the history", &e);
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = rusqlite::Connection::open_with_flags(&self.path, flags).map_err(failed)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(failed)?;
        // One read transaction: every grouping sees the same commits (WAL
        // readers hold a snapshot), so the totals agree while rows arrive.
        let snapshot = conn.unchecked_transaction().map_err(failed)?;
        let history = crate::history::read(&snapshot, from_ms, to_ms, dims, kept_from).map_err(failed)?;
        snapshot.finish().map_err(failed)?;
        Ok(history)
    }

    /// Rates the answer to the request `request_id` (its successful
    /// attempt): `rating` from 1 to 5, with an optional comment, by `who`
    /// at `at_ms`. Stored on the request's performance row (its quality
    /// becomes `(rating - 1) / 4`), in the ratings table with the comment,
    /// and in the model's totals and hourly aggregates; a second rating of
    /// the same request replaces the first. With `key`, only a request sent
    /// with that API key may be rated. `Ok(None)` when no answered request
    /// has that id (unknown, failed, answered from the response cache,
    /// another key's, or pruned). Blocks (SQLite, then the commit).
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a rating outside 1 to 5; [`Error::Write`]
    /// when the commit failed.
    pub fn rate(
        &self,
        request_id: &str,
        rating: u8,
        comment: Option<&str>,
        (who, key): (&str, Option<&str>),
        at_ms: u64,
    ) -> Result<Option<Rated>, Error> {
        if !(1..=5).contains(&rating) {
            return Err(Error::Invalid(format!("a rating is an integer from 1 to 5, not {rating}")));
        }
        let find = || {
            let conn = lock(&self.reader);
            crate::history::rated_row(&conn, request_id, key)
                .map_err(|e| Error::sqlite("finding the rated request", &e))
        };
        // Its row may still be queued: once more after a flush.
        let row = if let Some(row) = find()? {
            row
        } else {
            self.flush()?;
            let Some(row) = find()? else { return Ok(None) };
            row
        };
        let op = crate::history::Rating {
            request_id: request_id.to_owned(),
            row_id: row.id,
            score: rating,
            comment: comment.map(str::to_owned),
            who: who.to_owned(),
            at_ms,
        };
        self.send_acked_blocking(|ack| Op::Rate(Box::new(op), ack))?;
        let model_quality = {
            let conn = lock(&self.reader);
            conn.prepare_cached("SELECT quality_sum, quality_count FROM usage WHERE model = ?1")
                .and_then(|mut s| s.query_row(params![row.model], |r| Ok((r.get::<_, f64>(0)?, r.get::<_, i64>(1)?))))
                .optional()
                .map_err(|e| Error::sqlite("reading the model's ratings", &e))?
                .map_or((0.0, 0), |(sum, count)| (sum, to_u64(count)))
        };
        Ok(Some(Rated {
            request_id: request_id.to_owned(),
            model: row.model,
            provider: row.provider,
            rating,
            model_quality,
        }))
    }

    /// Budget spend per scope, period and period start (one row each, summed
    /// over providers and models), newest period first. Blocks (SQLite).
    pub fn spend(&self) -> Result<Vec<SpendRow>, Error> {
        type Raw = (String, String, i64, Option<i64>, String, String, i64);
        let conn = lock(&self.reader);
        let mut stmt = conn
            .prepare_cached(
                "SELECT scope, period, period_start_ms, period_end_ms, provider, model, spent_nanos FROM budget_spend \
                 ORDER BY period_start_ms DESC, scope, period, provider, model",
            )
            .map_err(|e| Error::sqlite("reading budget spend", &e))?;
        let rows: Vec<Raw> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
            .and_then(Iterator::collect)
            .map_err(|e| Error::sqlite("reading budget spend", &e))?;
        let mut out: Vec<SpendRow> = Vec::new();
        // Rows of one (scope, period, start) are adjacent: ordered by them.
        let mut current: Option<(String, String, i64)> = None;
        for (scope, period, start, end, provider, model, spent) in rows {
            let key = (scope, period, start);
            if current.as_ref() != Some(&key) {
                let bad = |e: serde_json::Error| Error::BadRow {
                    table: "budget_spend",
                    key: key.0.clone(),
                    message: e.to_string(),
                };
                out.push(SpendRow {
                    scope: serde_json::from_str(&key.0).map_err(bad)?,
                    period: serde_json::from_str(&key.1).map_err(bad)?,
                    period_start_ms: to_u64(start),
                    period_end_ms: None,
                    spent: Money::ZERO,
                    by_provider: BTreeMap::new(),
                    by_model: BTreeMap::new(),
                });
                current = Some(key);
            }
            let Some(row) = out.last_mut() else { continue };
            let amount = Money::from_nanos(spent);
            row.period_end_ms = row.period_end_ms.or(end.map(to_u64));
            row.spent = row.spent.saturating_add(amount);
            let by_provider = row.by_provider.entry(provider).or_insert(Money::ZERO);
            *by_provider = by_provider.saturating_add(amount);
            let by_model = row.by_model.entry(model).or_insert(Money::ZERO);
            *by_model = by_model.saturating_add(amount);
        }
        Ok(out)
    }

    /// The alert history, oldest first. Blocks (SQLite).
    ///
    /// An alert saved before schema version 2 whose period could not be
    /// recovered reads as `Period::None` with its original (non-zero) period
    /// start: it is listed, and since a lifetime budget's period starts at
    /// 0 it never matches a current period when fired thresholds are restored.
    pub fn alerts(&self) -> Result<Vec<Alert>, Error> {
        type Raw = (i64, String, Option<String>, u8, i64, i64, i64);
        let conn = lock(&self.reader);
        let mut stmt = conn
            .prepare_cached(
                "SELECT at_ms, scope, period, threshold, spent_nanos, limit_nanos, period_start_ms FROM alerts ORDER BY id",
            )
            .map_err(|e| Error::sqlite("reading alerts", &e))?;
        let rows: Vec<Raw> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
            .and_then(Iterator::collect)
            .map_err(|e| Error::sqlite("reading alerts", &e))?;
        rows.into_iter()
            .map(|(at, scope, period, threshold, spent, limit, start)| {
                let bad = |e: serde_json::Error| Error::BadRow {
                    table: "alerts",
                    key: scope.clone(),
                    message: e.to_string(),
                };
                let period = match period {
                    Some(period) => serde_json::from_str(&period).map_err(bad)?,
                    None => Period::None,
                };
                Ok(Alert {
                    scope: serde_json::from_str(&scope).map_err(bad)?,
                    period,
                    threshold,
                    spent: Money::from_nanos(spent),
                    limit: Money::from_nanos(limit),
                    period_start_ms: to_u64(start),
                    at_ms: to_u64(at),
                })
            })
            .collect()
    }

    /// The budgets created through the API, sorted by scope and period.
    /// Blocks (SQLite). A row that no longer parses is an error naming it.
    pub fn budgets(&self) -> Result<Vec<BudgetSpec>, Error> {
        let conn = lock(&self.reader);
        let mut stmt = conn
            .prepare_cached("SELECT scope, period, spec FROM budgets ORDER BY scope, period")
            .map_err(|e| Error::sqlite("reading budgets", &e))?;
        let rows: Vec<(String, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(Iterator::collect)
            .map_err(|e| Error::sqlite("reading budgets", &e))?;
        rows.into_iter()
            .map(|(scope, period, spec)| {
                serde_json::from_str(&spec).map_err(|e| Error::BadRow {
                    table: "budgets",
                    key: format!("{scope} {period}"),
                    message: e.to_string(),
                })
            })
            .collect()
    }

    /// The budgets' audit trail, oldest first. Blocks (SQLite).
    pub fn budget_audit(&self) -> Result<Vec<AuditRow>, Error> {
        type Raw = (i64, i64, String, String, String, String, String);
        let conn = lock(&self.reader);
        let mut stmt = conn
            .prepare_cached("SELECT id, at_ms, who, action, scope, period, detail FROM budget_audit ORDER BY id")
            .map_err(|e| Error::sqlite("reading the budget audit trail", &e))?;
        let rows: Vec<Raw> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
            .and_then(Iterator::collect)
            .map_err(|e| Error::sqlite("reading the budget audit trail", &e))?;
        rows.into_iter()
            .map(|(id, at, who, action, scope, period, detail)| {
                let bad = |e: serde_json::Error| Error::BadRow {
                    table: "budget_audit",
                    key: id.to_string(),
                    message: e.to_string(),
                };
                Ok(AuditRow {
                    at_ms: to_u64(at),
                    who,
                    action,
                    scope: serde_json::from_str(&scope).map_err(bad)?,
                    period: serde_json::from_str(&period).map_err(bad)?,
                    detail,
                })
            })
            .collect()
    }

    /// Everything a restarted stack needs: catalog, usage, spend and the
    /// stored budgets. Blocks (SQLite).
    pub fn restore(&self) -> Result<Restored, Error> {
        Ok(Restored {
            models: self.load_catalog()?,
            usage: self.usage()?,
            spend: self.spend()?,
            budgets: self.budgets()?,
        })
    }

    // ---- Response cache -----------------------------------------------------

    /// Queues `value`, the answer of `model`, under `key` for `ttl`; never
    /// blocks (a full queue sends it to the overflow). The model is kept
    /// with the entry so [`Store::cache_drop_model`] finds it.
    pub fn cache_put(&self, key: [u8; 32], model: &str, value: &serde_json::Value, ttl: Duration) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Write(e.to_string()))?;
        let now = self.clock.now_ms();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let checksum: [u8; 32] = Sha256::digest(&bytes).into();
        self.push(self.queued(Op::CachePut {
            key,
            model: model.to_owned(),
            value: bytes,
            checksum,
            created_ms: now,
            expires_ms: now.saturating_add(ttl_ms),
        }))?;
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
        if let Some(reason) = corruption(&value, &checksum) {
            // The value is not logged: it is somebody's answer.
            tracing::warn!(reason, "removed a corrupted response-cache entry");
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

    /// Deletes every cache entry `model` answered (those queued before the
    /// call included), for when its spec changes or it is removed.
    ///
    /// Queued to the writer thread, so it is ordered after every
    /// [`Store::cache_put`] that returned before it, and waits for its
    /// commit: **blocks the calling thread** (it works inside and outside
    /// an async runtime, but belongs on the blocking pool, never on an
    /// async worker). After it returns no entry of `model` is served.
    pub fn cache_drop_model(&self, model: &str) -> Result<(), Error> {
        let model = model.to_owned();
        self.send_acked_blocking(|ack| Op::CacheDrop { model, ack })
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
        if removed > 0 {
            tracing::warn!(removed, "removed corrupted response-cache entries");
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
