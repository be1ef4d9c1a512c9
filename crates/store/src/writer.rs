//! The writer thread: batches queued writes into one transaction each.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use modelfleet_budget::{Alert, BudgetSpec, Period, Scope};
use modelfleet_registry::{Clock, Money};
use rusqlite::{Connection, Transaction, params};
use tokio::sync::{
    mpsc::{Receiver, error::TryRecvError},
    oneshot,
};

use crate::{
    history::{self, Hourly, Rating, Row},
    records::{PerfRecord, SpendEntry, encode, to_i64},
};

/// The writer's answer to an op that waits: `Err` holds the sanitized reason.
pub(crate) type Outcome = Result<(), String>;

/// Where the writer sends an op's outcome, after COMMIT (or after the
/// transaction failed twice).
pub(crate) enum Ack {
    /// Awaited by an async caller.
    Async(oneshot::Sender<Outcome>),
    /// Waited for by a blocking caller (works inside and outside a runtime).
    Blocking(std::sync::mpsc::SyncSender<Outcome>),
}

impl Ack {
    fn send(self, outcome: Outcome) {
        // A caller that stopped waiting (a dropped future) needs no answer.
        match self {
            Ack::Async(tx) => {
                let _ = tx.send(outcome);
            }
            Ack::Blocking(tx) => {
                let _ = tx.send(outcome);
            }
        }
    }
}

/// A change to the stored budgets.
pub(crate) enum BudgetChange {
    Save { spec: BudgetSpec, who: String, at_ms: u64 },
    Remove { scope: Scope, period: Period, who: String, at_ms: u64 },
    Reset { scope: Scope, period: Period, period_start_ms: u64, spent_before: Money, who: String, at_ms: u64 },
}

/// A queued write.
pub(crate) enum Op {
    Perf(Box<PerfRecord>),
    CachePut {
        key: [u8; 32],
        /// The model that answered.
        model: String,
        value: Vec<u8>,
        checksum: [u8; 32],
        created_ms: u64,
        expires_ms: u64,
    },
    /// A settled request: its spend on every covering budget and its
    /// performance row, in one transaction.
    Settle {
        spend: Vec<SpendEntry>,
        perf: Option<Box<PerfRecord>>,
        ack: Option<Ack>,
    },
    /// Deletes a model's cache entries (those queued before it included).
    CacheDrop {
        model: String,
        ack: Ack,
    },
    Alert(Box<Alert>),
    Budget(Box<BudgetChange>, Ack),
    /// A user's rating of a request's answer.
    Rate(Box<Rating>, Ack),
    /// Everything queued before it is committed when the sender hears back.
    Flush(Ack),
    /// As [`Op::Flush`], and the WAL is then moved whole into the database
    /// file and truncated before the sender hears back (at shutdown: the
    /// file alone then holds everything).
    Checkpoint(Ack),
    /// After its transaction, the writer's connection releases the memory
    /// it can (`PRAGMA shrink_memory`).
    ShrinkMemory,
    /// Nothing to write: wakes an idle writer to look at the overflow.
    Wake,
}

impl Op {
    /// Whether a caller waits for this op's commit.
    fn waits(&self) -> bool {
        match self {
            Op::Settle { ack, .. } => ack.is_some(),
            Op::Budget(..) | Op::Rate(..) | Op::Flush(_) | Op::Checkpoint(_) | Op::CacheDrop { .. } => true,
            Op::Perf(_) | Op::CachePut { .. } | Op::Alert(_) | Op::ShrinkMemory | Op::Wake => false,
        }
    }

    fn into_ack(self) -> Option<Ack> {
        match self {
            Op::Settle { ack, .. } => ack,
            Op::Budget(_, ack)
            | Op::Rate(_, ack)
            | Op::Flush(ack)
            | Op::Checkpoint(ack)
            | Op::CacheDrop { ack, .. } => Some(ack),
            Op::Perf(_) | Op::CachePut { .. } | Op::Alert(_) | Op::ShrinkMemory | Op::Wake => None,
        }
    }

    /// Whether the op is a write (not a flush, a wake-up or housekeeping),
    /// for the counters.
    fn is_write(&self) -> bool {
        !matches!(self, Op::Flush(_) | Op::Checkpoint(_) | Op::ShrinkMemory | Op::Wake)
    }

    /// Whether the op's data is lost when its transaction fails: everything
    /// but spend (kept in the backlog) and the changes refused to their
    /// caller (budget changes, cache drops).
    fn is_lost_on_failure(&self) -> bool {
        match self {
            Op::Perf(_) | Op::CachePut { .. } | Op::Alert(_) => true,
            Op::Settle { perf, .. } => perf.is_some(),
            Op::Budget(..)
            | Op::Rate(..)
            | Op::CacheDrop { .. }
            | Op::Flush(_)
            | Op::Checkpoint(_)
            | Op::ShrinkMemory
            | Op::Wake => false,
        }
    }
}

/// An op and its place in the order of enqueueing (see [`Shared::seq`]).
pub(crate) struct Queued {
    pub(crate) seq: u64,
    pub(crate) op: Op,
}

/// Writer settings, counters and state shared with the store.
pub(crate) struct Shared {
    pub(crate) batch_rows: usize,
    pub(crate) batch_wait: Duration,
    /// The queue's capacity.
    pub(crate) capacity: usize,
    pub(crate) cache_max_entries: u64,
    pub(crate) cache_max_bytes: u64,
    /// How long performance rows are kept, ms; 0 keeps them all.
    pub(crate) retain_ms: u64,
    /// How long hourly aggregates are kept, ms; 0 keeps them all.
    pub(crate) aggregate_retain_ms: u64,
    /// Performance rows pruned so far.
    pub(crate) pruned: AtomicU64,
    /// The next op's sequence number. Ops are applied in this order within a
    /// transaction, so an op always follows the ops whose enqueueing
    /// returned before it was enqueued, whichever path (queue or overflow)
    /// each took.
    pub(crate) seq: AtomicU64,
    /// Writes committed so far.
    pub(crate) committed: AtomicU64,
    /// Writes dropped after the database refused them twice.
    pub(crate) dropped: AtomicU64,
    /// Transactions committed so far.
    pub(crate) transactions: AtomicU64,
    /// The last write error, sanitized.
    /// Why the last write transaction failed, while no later one succeeded.
    pub(crate) last_error: Mutex<Option<String>>,
    /// Why spend waits for a commit, while it does (sanitized).
    pub(crate) backlog: Mutex<Option<String>>,
    /// Ops that found the queue full on a path that must not wait
    /// (`*_detached`, `save_alert`, `flush`); the writer drains it on every
    /// loop.
    pub(crate) overflow: Mutex<Vec<Queued>>,
    /// Where committed changes to the hourly aggregates go, once set
    /// ([`Store::export_history`](crate::Store::export_history)).
    pub(crate) export: std::sync::OnceLock<Export>,
    /// Every transaction fails while set (the `fault-injection` feature's
    /// [`Store::fail_writes`](crate::Store::fail_writes), for tests).
    #[cfg(feature = "fault-injection")]
    pub(crate) fail_writes: std::sync::atomic::AtomicBool,
}

/// Takes what each committed transaction added to the hourly aggregates.
pub(crate) type Export = Box<dyn Fn(Vec<history::HourDelta>) + Send + Sync>;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data stays usable after a panic elsewhere.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How often spend in the backlog is retried when no write comes to carry it.
const BACKLOG_RETRY: Duration = Duration::from_secs(1);

/// Performance rows deleted per transaction when pruning: a write waits for
/// one such transaction at most, never for the whole prune.
pub(crate) const PRUNE_BATCH_ROWS: usize = 10_000;

/// How often old performance rows are pruned at most (by the store's clock).
const PRUNE_EVERY_MS: u64 = 60 * 60 * 1_000;

/// A prune under way: rows before these times go (0: none).
#[derive(Debug, Clone, Copy)]
struct Prune {
    /// Raw performance rows (and ratings).
    raw: u64,
    /// Hourly aggregates.
    aggregates: u64,
}

/// Spend kept from failed transactions, summed per row of `budget_spend`.
type SpendKey = (Scope, Period, u64, String, String);

/// Runs until every sender is gone and the overflow is empty, committing
/// what is queued.
///
/// The writer parks only when idle. While a batch of performance rows fills
/// it takes what is queued without parking and otherwise sleeps in short
/// steps: a parked receiver would cost every producer a wake-up system call
/// per row. A row waits at most `batch_wait` before its commit.
///
/// An op whose caller waits for its commit (a settlement, a flush, a budget
/// change) does not wait for a batch to fill: once the queue and the
/// overflow are drained the batch is committed at once. That is group
/// commit: the callers that queued while the previous transaction was
/// committing share the next one, so the transactions (and, with
/// `Durability::PowerLoss`, the fsyncs) grow with the load far slower than
/// the commits.
///
/// With a retention (`retain_ms`), performance rows older than it (by their
/// `at_ms` and `clock`) are pruned when the writer starts and then at most
/// once an hour: [`PRUNE_BATCH_ROWS`] rows per transaction, one such
/// transaction before each batch (or while the queue is idle) until none is
/// left, so writes interleave with a long prune.
pub(crate) fn run(conn: Connection, rx: Receiver<Queued>, shared: &Shared, clock: Arc<dyn Clock>) {
    let step = shared.batch_wait.min(Duration::from_millis(2)).max(Duration::from_micros(100));
    let mut writer = Writer {
        conn,
        rx,
        shared,
        step,
        batch: Vec::with_capacity(shared.batch_rows),
        waiting: false,
        backlog: HashMap::new(),
        last_attempt: Instant::now(),
        open: true,
        since_checkpoint: 0,
        clock,
        prune: None,
        last_prune_ms: None,
    };
    writer.schedule_prune();
    while writer.wait_for_work() {
        writer.fill();
        writer.commit();
    }
    // All senders gone and the overflow empty: the store was dropped after
    // its final flush.
}

struct Writer<'s> {
    conn: Connection,
    rx: Receiver<Queued>,
    shared: &'s Shared,
    step: Duration,
    batch: Vec<Queued>,
    /// Whether a caller waits for an op of the batch.
    waiting: bool,
    /// Spend of failed transactions, re-applied in every transaction until
    /// one commits. Invariant: non-empty exactly while `shared.backlog` is `Some`.
    backlog: HashMap<SpendKey, (Option<u64>, i64)>,
    /// When a transaction was last attempted.
    last_attempt: Instant,
    /// Whether the queue still has senders.
    open: bool,
    /// Transactions committed since the writer's last checkpoint.
    since_checkpoint: u32,
    /// The store's clock: the retention window is measured on it.
    clock: Arc<dyn Clock>,
    /// While a prune is under way: what goes.
    prune: Option<Prune>,
    /// When the last prune started (by `clock`); `None` before the first.
    last_prune_ms: Option<u64>,
}

impl Writer<'_> {
    fn push(&mut self, queued: Queued) {
        if matches!(queued.op, Op::Wake) {
            return;
        }
        self.waiting |= queued.op.waits();
        self.batch.push(queued);
    }

    /// Takes what is queued, at most `limit` ops.
    fn receive(&mut self, limit: usize) {
        for _ in 0..limit {
            match self.rx.try_recv() {
                Ok(queued) => self.push(queued),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.open = false;
                    return;
                }
            }
        }
    }

    /// Moves the overflow into the batch.
    ///
    /// An op overflowed because the queue was full: the ops queued ahead of
    /// it may still be in the queue, at most `capacity` of them, so those are
    /// taken first; the batch is applied in enqueueing order (`seq`).
    fn take_overflow(&mut self) {
        let overflow = {
            let mut overflow = lock(&self.shared.overflow);
            if overflow.is_empty() {
                return;
            }
            std::mem::take(&mut *overflow)
        };
        self.receive(self.shared.capacity);
        for queued in overflow {
            self.push(queued);
        }
    }

    /// Blocks until there is something to write; false once the store is
    /// closed and everything is written.
    fn wait_for_work(&mut self) -> bool {
        loop {
            if !lock(&self.shared.overflow).is_empty() {
                return true;
            }
            if !self.open {
                return false;
            }
            if self.prune.is_some() {
                // Old rows to delete: a batch of them whenever nothing is queued.
                self.receive(1);
                if !self.batch.is_empty() {
                    return true;
                }
                self.prune_step();
                continue;
            }
            if self.backlog.is_empty() {
                match self.rx.blocking_recv() {
                    Some(queued) => self.push(queued),
                    None => self.open = false,
                }
            } else {
                // Spend waits for a commit: retry it even if no write comes.
                self.receive(1);
                if self.batch.is_empty() && self.last_attempt.elapsed() < BACKLOG_RETRY {
                    std::thread::sleep(self.step.max(Duration::from_millis(10)));
                    continue;
                }
                return true;
            }
            if !self.batch.is_empty() {
                return true;
            }
            // A wake-up: look at the overflow.
        }
    }

    fn fill(&mut self) {
        let started = Instant::now();
        loop {
            let room = self.shared.batch_rows.saturating_sub(self.batch.len());
            self.receive(room);
            self.take_overflow();
            let ready = self.waiting || self.batch.is_empty() || self.batch.len() >= self.shared.batch_rows;
            if ready || !self.open || started.elapsed() >= self.shared.batch_wait {
                return;
            }
            std::thread::sleep(self.step);
        }
    }

    /// Starts a prune when one is due: at the start, then an hour (by the
    /// clock) after the last one started.
    fn schedule_prune(&mut self) {
        if (self.shared.retain_ms == 0 && self.shared.aggregate_retain_ms == 0) || self.prune.is_some() {
            return;
        }
        let now = self.clock.now_ms();
        if self.last_prune_ms.is_some_and(|last| now.saturating_sub(last) < PRUNE_EVERY_MS) {
            return;
        }
        self.last_prune_ms = Some(now);
        let before = |ms: u64| if ms == 0 { 0 } else { now.saturating_sub(ms) };
        self.prune =
            Some(Prune { raw: before(self.shared.retain_ms), aggregates: before(self.shared.aggregate_retain_ms) });
    }

    /// One transaction of the prune under way, if any. A failure ends the
    /// prune; the next one (an hour later) takes what it left.
    fn prune_step(&mut self) {
        let Some(cutoff) = self.prune else { return };
        let raw = if cutoff.raw == 0 { Ok(0) } else { prune_perf(&self.conn, cutoff.raw, PRUNE_BATCH_ROWS) };
        match raw {
            Ok(deleted) => {
                self.shared.pruned.fetch_add(deleted as u64, Ordering::Relaxed);
                if deleted < PRUNE_BATCH_ROWS {
                    // Raw rows done: the aggregates and ratings past theirs
                    // (a few thousand rows at most an hour; best effort).
                    self.prune = None;
                    if history::prune(&self.conn, cutoff.aggregates, cutoff.raw).is_ok_and(|n| n > 0) {
                        self.since_checkpoint += 1;
                    }
                }
                if deleted > 0 {
                    self.since_checkpoint += 1;
                }
            }
            Err(_) => self.prune = None,
        }
    }

    fn commit(&mut self) {
        // A prune due goes first, one bounded transaction per batch.
        self.schedule_prune();
        self.prune_step();
        if self.batch.is_empty() && self.backlog.is_empty() {
            return;
        }
        // Mostly in order already; stable, so equal numbers (none) keep theirs.
        self.batch.sort_by_key(|q| q.seq);
        let shared = self.shared;
        self.last_attempt = Instant::now();
        let mut result = apply(&mut self.conn, &self.batch, &self.backlog, shared);
        if result.is_err() {
            // One retry: a busy database or a transient I/O error.
            std::thread::sleep(Duration::from_millis(50));
            self.last_attempt = Instant::now();
            result = apply(&mut self.conn, &self.batch, &self.backlog, shared);
        }
        let writes = self.batch.iter().filter(|q| q.op.is_write()).count() as u64;
        let outcome = match result {
            Ok(written) => {
                // Handed on after the COMMIT: only what the file holds.
                if let Some(export) = shared.export.get().filter(|_| !written.is_empty()) {
                    export(written);
                }
                shared.committed.fetch_add(writes, Ordering::Relaxed);
                shared.transactions.fetch_add(1, Ordering::Relaxed);
                // Writing works again: whatever failed before is history
                // (still counted in `dropped`).
                *lock(&shared.last_error) = None;
                self.backlog.clear();
                *lock(&shared.backlog) = None;
                Ok(())
            }
            Err(err) => {
                let message = modelfleet_errors::sanitize(&err.to_string()).into_owned();
                let lost = self.batch.iter().filter(|q| q.op.is_lost_on_failure()).count() as u64;
                shared.dropped.fetch_add(lost, Ordering::Relaxed);
                *lock(&shared.last_error) = Some(message.clone());
                // Spend is never dropped: it waits for the next commit.
                for queued in &self.batch {
                    if let Op::Settle { spend, .. } = &queued.op {
                        for entry in spend {
                            let key = (
                                entry.scope.clone(),
                                entry.period,
                                entry.period_start_ms,
                                entry.provider.clone(),
                                entry.model.clone(),
                            );
                            let kept = self.backlog.entry(key).or_insert((entry.period_end_ms, 0));
                            kept.0 = entry.period_end_ms.or(kept.0);
                            kept.1 = kept.1.saturating_add(entry.amount.nanos());
                        }
                    }
                }
                if !self.backlog.is_empty() {
                    *lock(&shared.backlog) = Some(message.clone());
                }
                Err(message)
            }
        };
        self.waiting = false;
        let committed = outcome.is_ok();
        let shrink = self.batch.iter().any(|q| matches!(q.op, Op::ShrinkMemory));
        if committed && self.batch.iter().any(|q| matches!(q.op, Op::Checkpoint(_))) {
            self.checkpoint_whole();
        }
        for queued in self.batch.drain(..) {
            if let Some(ack) = queued.op.into_ack() {
                ack.send(outcome.clone());
            }
        }
        if committed {
            self.since_checkpoint += 1;
            self.checkpoint();
        }
        if shrink {
            // Best effort: memory the page cache can give back now.
            let _ = self.conn.execute_batch("PRAGMA shrink_memory");
        }
    }

    /// Finishes moving the WAL into the database, after the acks went out.
    ///
    /// The checkpointer thread copies the WAL concurrently (`PASSIVE`, never
    /// blocking a commit), but under steady traffic a commit always lands
    /// before it finishes, so the WAL would never start over and would grow
    /// without bound. Here, between transactions, the frames it left are
    /// copied and the next transaction restarts the WAL: after
    /// [`CHECKPOINT_AFTER`] transactions at a moment nothing waits in the
    /// queue, or after [`CHECKPOINT_FORCED`] whatever waits. It syncs the
    /// database, a millisecond or so that a request arriving meanwhile
    /// waits, so it is rare: once a second at 1,000 commits a second.
    fn checkpoint(&mut self) {
        let idle = self.rx.is_empty() && lock(&self.shared.overflow).is_empty();
        let due = (idle && self.since_checkpoint >= CHECKPOINT_AFTER) || self.since_checkpoint >= CHECKPOINT_FORCED;
        if due {
            // (busy, frames in the WAL, frames checkpointed): done only when
            // every frame is in the database, so the next commit restarts
            // the WAL. Busy (the checkpointer thread is at it) or failed,
            // it is tried again after the next transaction.
            let done = self
                .conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                })
                .is_ok_and(|(busy, log, copied)| busy == 0 && log == copied);
            if done {
                self.since_checkpoint = 0;
            }
        }
    }

    /// Moves the whole WAL into the database and truncates it (`TRUNCATE`),
    /// retrying while the checkpointer thread is at it (busy), for at most
    /// half a second; best effort: what is left stays in the WAL, which
    /// SQLite replays at the next open.
    fn checkpoint_whole(&mut self) {
        for _ in 0..50 {
            let done = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0))
                .is_ok_and(|busy| busy == 0);
            if done {
                self.since_checkpoint = 0;
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Transactions between the writer's own checkpoints, at an idle moment.
const CHECKPOINT_AFTER: u32 = 1_000;
/// Transactions after which the writer checkpoints even with work queued.
const CHECKPOINT_FORCED: u32 = 2_000;

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

/// A batch's spend, summed per row of `budget_spend` so each gets one upsert.
type SpendSums<'b> = HashMap<(&'b Scope, Period, u64, &'b str, &'b str), (Option<u64>, i64)>;

fn add_spend<'b>(
    sums: &mut SpendSums<'b>,
    key: (&'b Scope, Period, u64, &'b str, &'b str),
    end: Option<u64>,
    nanos: i64,
) {
    let sum = sums.entry(key).or_insert((end, 0));
    sum.0 = end.or(sum.0);
    sum.1 = sum.1.saturating_add(nanos);
}

fn write_spend(tx: &Transaction<'_>, sums: &mut SpendSums<'_>) -> rusqlite::Result<()> {
    if sums.is_empty() {
        return Ok(());
    }
    let mut upsert = tx.prepare_cached(
        "INSERT INTO budget_spend (scope, period, period_start_ms, period_end_ms, provider, model, spent_nanos) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (scope, period, period_start_ms, provider, model) DO UPDATE SET \
         spent_nanos = spent_nanos + excluded.spent_nanos, period_end_ms = COALESCE(excluded.period_end_ms, period_end_ms)",
    )?;
    for ((scope, period, start, provider, model), (end, nanos)) in sums.drain() {
        upsert.execute(params![
            encode(scope),
            encode(&period),
            to_i64(start),
            end.map(to_i64),
            provider,
            model,
            nanos
        ])?;
    }
    Ok(())
}

fn audit(
    tx: &Transaction<'_>,
    at_ms: u64,
    who: &str,
    action: &str,
    scope: &Scope,
    period: Period,
    detail: &str,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO budget_audit (at_ms, who, action, scope, period, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![to_i64(at_ms), who, action, encode(scope), encode(&period), detail],
    )?;
    Ok(())
}

fn change_budget(tx: &Transaction<'_>, change: &BudgetChange) -> rusqlite::Result<()> {
    match change {
        BudgetChange::Save { spec, who, at_ms } => {
            tx.execute(
                "INSERT OR REPLACE INTO budgets (scope, period, spec, updated_at_ms) VALUES (?1, ?2, ?3, ?4)",
                params![encode(&spec.scope), encode(&spec.period), encode(spec), to_i64(*at_ms)],
            )?;
            let thresholds: Vec<String> = spec.thresholds.iter().map(u8::to_string).collect();
            let detail = format!(
                "limit ${} ({}), alerts at {}%",
                spec.limit,
                encode(&spec.enforcement).trim_matches('"'),
                thresholds.join(", ")
            );
            audit(tx, *at_ms, who, "set", &spec.scope, spec.period, &detail)
        }
        BudgetChange::Remove { scope, period, who, at_ms } => {
            let removed = tx.execute(
                "DELETE FROM budgets WHERE scope = ?1 AND period = ?2",
                params![encode(scope), encode(period)],
            )?;
            let detail = if removed > 0 { "removed" } else { "was not stored" };
            audit(tx, *at_ms, who, "remove", scope, *period, detail)
        }
        BudgetChange::Reset { scope, period, period_start_ms, spent_before, who, at_ms } => {
            tx.execute(
                "DELETE FROM budget_spend WHERE scope = ?1 AND period = ?2 AND period_start_ms = ?3",
                params![encode(scope), encode(period), to_i64(*period_start_ms)],
            )?;
            let detail = format!("spent ${spent_before} in the period starting at {period_start_ms} ms, reset to $0");
            audit(tx, *at_ms, who, "reset", scope, *period, &detail)
        }
    }
}

fn insert_perf(stmt: &mut rusqlite::CachedStatement<'_>, r: &PerfRecord) -> rusqlite::Result<()> {
    stmt.execute(params![
        to_i64(r.at_ms),
        r.model,
        r.provider,
        r.kind.as_str(),
        r.language,
        to_i64(r.latency_us),
        r.ttft_us.map(to_i64),
        to_i64(r.input_tokens),
        to_i64(r.output_tokens),
        to_i64(r.cached_tokens),
        r.cost.nanos(),
        r.error.map(modelfleet_errors::ErrorClass::as_str),
        r.quality,
        r.request_id,
        r.key_name,
        r.route,
        r.attempt,
        r.fallback,
        r.rating,
    ])?;
    Ok(())
}

/// One upsert of `usage` per model of the batch.
fn write_usage(tx: &Transaction<'_>, deltas: &[(&str, UsageDelta)]) -> rusqlite::Result<()> {
    if deltas.is_empty() {
        return Ok(());
    }
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
    for (model, d) in deltas {
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
    Ok(())
}

fn apply(
    conn: &mut Connection,
    batch: &[Queued],
    backlog: &HashMap<SpendKey, (Option<u64>, i64)>,
    shared: &Shared,
) -> rusqlite::Result<Vec<history::HourDelta>> {
    #[cfg(feature = "fault-injection")]
    if shared.fail_writes.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
            Some("write failure injected (fault-injection)".to_owned()),
        ));
    }
    let tx = conn.transaction()?;
    let mut cache_writes = false;
    let mut deltas: Vec<(&str, UsageDelta)> = Vec::new();
    let mut hourly = Hourly::new(shared.export.get().is_some());
    // The backlog was queued before everything in this batch.
    let mut spend: SpendSums<'_> = HashMap::new();
    for ((scope, period, start, provider, model), (end, nanos)) in backlog {
        add_spend(&mut spend, (scope, *period, *start, provider, model), *end, *nanos);
    }
    {
        let mut perf = tx.prepare_cached(
            "INSERT INTO perf_log (at_ms, model, provider, kind, language, latency_us, ttft_us, input_tokens, \
             output_tokens, cached_tokens, cost_nanos, error, quality, request_id, key_name, route, attempt, \
             fallback, rating) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
        )?;
        let mut cache = tx.prepare_cached(
            "INSERT OR REPLACE INTO cache (key, model, value, checksum, created_ms, expires_ms, size) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for Queued { op, .. } in batch {
            match op {
                Op::Perf(r) => {
                    insert_perf(&mut perf, r)?;
                    UsageDelta::of(&mut deltas, r).add(r);
                    hourly.add(&Row::of(r));
                }
                Op::Settle { spend: entries, perf: record, .. } => {
                    for e in entries {
                        let key = (&e.scope, e.period, e.period_start_ms, e.provider.as_str(), e.model.as_str());
                        add_spend(&mut spend, key, e.period_end_ms, e.amount.nanos());
                    }
                    if let Some(r) = record {
                        insert_perf(&mut perf, r)?;
                        UsageDelta::of(&mut deltas, r).add(r);
                        hourly.add(&Row::of(r));
                    }
                }
                Op::CachePut { key, model, value, checksum, created_ms, expires_ms } => {
                    cache_writes = true;
                    cache.execute(params![
                        &key[..],
                        model,
                        value,
                        &checksum[..],
                        to_i64(*created_ms),
                        to_i64(*expires_ms),
                        to_i64(value.len() as u64)
                    ])?;
                }
                Op::Alert(alert) => {
                    tx.prepare_cached(
                        "INSERT INTO alerts (at_ms, scope, period, threshold, spent_nanos, limit_nanos, period_start_ms) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![
                        to_i64(alert.at_ms),
                        encode(&alert.scope),
                        encode(&alert.period),
                        alert.threshold,
                        alert.spent.nanos(),
                        alert.limit.nanos(),
                        to_i64(alert.period_start_ms)
                    ])?;
                }
                Op::Rate(rating, _) => {
                    // The rows queued before it (its own, maybe) reach the
                    // totals and aggregates first, so it finds them there.
                    write_usage(&tx, &deltas)?;
                    deltas.clear();
                    hourly.write(&tx)?;
                    history::write_rating(&tx, rating, &mut hourly)?;
                }
                Op::Budget(change, _) => {
                    // Spend queued before a change (a reset) lands before it.
                    write_spend(&tx, &mut spend)?;
                    change_budget(&tx, change)?;
                }
                Op::CacheDrop { model, .. } => {
                    tx.prepare_cached("DELETE FROM cache WHERE model = ?1")?.execute(params![model])?;
                }
                Op::Flush(_) | Op::Checkpoint(_) | Op::ShrinkMemory | Op::Wake => {}
            }
        }
        write_spend(&tx, &mut spend)?;
    }
    write_usage(&tx, &deltas)?;
    hourly.write(&tx)?;
    if cache_writes {
        evict(&tx, shared)?;
    }
    tx.commit()?;
    Ok(hourly.written.unwrap_or_default())
}

/// Deletes up to `limit` performance rows older than `cutoff_ms` (oldest
/// first), in one transaction of its own; returns how many went.
pub(crate) fn prune_perf(conn: &Connection, cutoff_ms: u64, limit: usize) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "DELETE FROM perf_log WHERE id IN (SELECT id FROM perf_log WHERE at_ms < ?1 ORDER BY at_ms LIMIT ?2)",
    )?
    .execute(params![to_i64(cutoff_ms), to_i64(limit as u64)])
}

/// Keeps the cache within its entry and byte limits, oldest entries first.
fn evict(tx: &Transaction<'_>, shared: &Shared) -> rusqlite::Result<()> {
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
