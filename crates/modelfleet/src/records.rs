//! Records of every replica (`[cluster]`): what this replica's store adds
//! to its hourly aggregates is shipped to PostgreSQL, so a report from any
//! replica shows the whole fleet (`modelfleet-cluster`'s `records.rs`).
//!
//! - **Off the request path.** The store's writer thread hands each
//!   committed transaction's [`HourDelta`]s to a list behind a short
//!   mutex (no I/O, no waiting: [`Store::export_history`]); requests never
//!   see the shipping. A task folds the list every [`SHIP_EVERY`] into
//!   pending hourly groups and ships them as one batch, one transaction.
//! - **Rows per second** are the groups a batch touches (grouping × value
//!   × hour), not the requests: at 1,000 requests a second over ten
//!   models, four providers, five categories, three languages and twenty
//!   keys, some 42 rows a second per replica, whatever the request rate.
//! - **Counted once.** A batch keeps its number until the store takes it:
//!   one whose reply was lost is sent again as it was and applied once.
//! - **PostgreSQL down:** serving goes on; the batch is retried every tick
//!   while new records fold into the pending groups (their memory grows with
//!   the groups, not the requests). Past [`MAX_GROUPS`] groups the oldest
//!   hour pending is dropped and its requests counted
//!   ([`ClusterStatus::records_dropped`](crate::ClusterStatus)). A batch the
//!   store refuses for its data is dropped and counted the same way.
//! - **Reports** read every replica's rows of the whole hours covering the
//!   range ([`History`] says which), after this replica's own records were
//!   shipped; PostgreSQL unreachable, the report fails saying so (a report
//!   of this replica alone would pass for the fleet's).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use modelfleet_cluster::{ClusterError, HourRow, RecordBatch, SharedLedger};
use modelfleet_registry::{Clock as _, SystemClock};
use modelfleet_store::{Aggregate, Dim, HOUR_MS, Hist, History, HourDelta, Store, hour_of};

/// How often pending records are shipped (and a failed batch retried).
pub(crate) const SHIP_EVERY: Duration = Duration::from_secs(1);

/// Groups (grouping × value × hour) pending at most; past it the oldest
/// hour goes. A group holds two histograms of some kilobytes at most.
pub(crate) const MAX_GROUPS: usize = 4_096;

/// How often records older than the aggregates' retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_hours(1);

/// This replica's shipping of its records, and the task doing it.
pub(crate) struct SharedRecords {
    ledger: SharedLedger,
    /// What the store's writer handed over since the last fold.
    incoming: Arc<Mutex<Vec<HourDelta>>>,
    /// Pending groups and the batch being shipped; one shipping at a time.
    state: tokio::sync::Mutex<Outbox>,
    counters: Counters,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Records (requests) shipped, dropped, and pending now.
#[derive(Debug, Default)]
struct Counters {
    shipped: AtomicU64,
    dropped: AtomicU64,
    pending: AtomicU64,
}

/// A pending group: what its rows added, and its ratings' changes.
type Pending = BTreeMap<(u64, Dim, String), (Aggregate, (i64, i64))>;

struct Outbox {
    /// This run's number: batches are counted once per (replica, run, seq).
    run: i64,
    next_seq: i64,
    pending: Pending,
    /// The batch sent and not yet taken, with its requests: sent again as it is.
    in_flight: Option<(RecordBatch, u64)>,
}

impl Outbox {
    fn fold(&mut self, deltas: Vec<HourDelta>) {
        for delta in deltas {
            let key = (delta.hour_ms, delta.dim, delta.added.value.clone());
            match self.pending.get_mut(&key) {
                Some((group, rerated)) => {
                    group.merge(&delta.added);
                    rerated.0 = rerated.0.saturating_add(delta.rerated.0);
                    rerated.1 = rerated.1.saturating_add(delta.rerated.1);
                }
                None => {
                    self.pending.insert(key, (delta.added, delta.rerated));
                }
            }
        }
    }

    /// Drops the oldest hours pending while past [`MAX_GROUPS`]; the
    /// requests dropped.
    fn bound(&mut self) -> u64 {
        let in_flight = self.in_flight.as_ref().map_or(0, |(batch, _)| batch.rows.len());
        let mut dropped = 0;
        while self.pending.len() + in_flight > MAX_GROUPS {
            let Some(&(oldest, _, _)) = self.pending.keys().next() else { break };
            let gone = self.pending.split_off(&(oldest + 1, Dim::Model, String::new()));
            let old = std::mem::replace(&mut self.pending, gone);
            dropped += requests(old.iter().map(|((_, dim, _), (group, _))| (*dim, group)));
        }
        dropped
    }

    /// The requests pending and in flight.
    fn backlog(&self) -> u64 {
        let pending = requests(self.pending.iter().map(|((_, dim, _), (group, _))| (*dim, group)));
        pending + self.in_flight.as_ref().map_or(0, |(_, n)| *n)
    }

    /// The pending groups as the next batch, if any.
    fn take_batch(&mut self) {
        if self.in_flight.is_some() || self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let n = requests(pending.iter().map(|((_, dim, _), (group, _))| (*dim, group)));
        let rows = pending.into_iter().map(|((hour, dim, _), (group, rerated))| row_of(dim, hour, &group, rerated));
        let batch = RecordBatch { run: self.run, seq: self.next_seq, rows: rows.collect() };
        self.next_seq += 1;
        self.in_flight = Some((batch, n));
    }
}

/// Requests among groups: each request is in one group per grouping, so
/// the model groups count them.
fn requests<'a>(groups: impl Iterator<Item = (Dim, &'a Aggregate)>) -> u64 {
    groups.filter(|(dim, _)| *dim == Dim::Model).map(|(_, group)| group.requests).sum()
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn row_of(dim: Dim, hour_ms: u64, group: &Aggregate, (ratings, rating_sum): (i64, i64)) -> HourRow {
    HourRow {
        dim: dim.as_str().to_owned(),
        value: group.value.clone(),
        hour_ms,
        provider: group.provider.clone(),
        requests: to_i64(group.requests),
        successes: to_i64(group.successes),
        failures: to_i64(group.failures),
        client_faults: to_i64(group.client_faults),
        aborted: to_i64(group.aborted),
        input_tokens: to_i64(group.input_tokens),
        output_tokens: to_i64(group.output_tokens),
        cached_tokens: to_i64(group.cached_tokens),
        cost: group.cost,
        fallbacks: to_i64(group.fallbacks),
        ratings: to_i64(group.ratings).saturating_add(ratings),
        rating_sum: to_i64(group.rating_sum).saturating_add(rating_sum),
        first_ms: to_i64(group.first_ms),
        last_ms: to_i64(group.last_ms),
        latency: vec![group.latency.encode()],
        ttft: vec![group.ttft.encode()],
    }
}

/// Merges a batch's histogram into the stored one; a stored one that does
/// not decode is replaced (its hour loses its percentiles, never a batch).
fn merge_hist(stored: &[u8], added: &[u8]) -> Vec<u8> {
    let mut hist = Hist::decode(stored).unwrap_or_else(|_| Hist::new());
    let _ = hist.merge_encoded(added);
    hist.encode()
}

impl SharedRecords {
    /// Under `[cluster]` (`shared`), ships what `store` commits from now
    /// on to the shared store, every [`SHIP_EVERY`]; prunes records older
    /// than `retain_days` (0 keeps them) every hour.
    pub(crate) fn start(
        shared: Option<&Arc<crate::shared::SharedBudgets>>,
        store: &Store,
        retain_days: u32,
    ) -> Option<Arc<SharedRecords>> {
        let ledger = shared?.ledger().clone();
        let incoming = Arc::new(Mutex::new(Vec::new()));
        let handed = Arc::clone(&incoming);
        // On the writer thread, after each COMMIT: a push under a short lock.
        let exported = store.export_history(move |deltas| {
            handed.lock().unwrap_or_else(PoisonError::into_inner).extend(deltas);
        });
        if !exported {
            tracing::warn!("the store's history is exported already: this replica's records are not shared");
        }
        let records = Arc::new(SharedRecords {
            ledger,
            incoming,
            state: tokio::sync::Mutex::new(Outbox {
                run: fastrand::i64(1..),
                next_seq: 1,
                pending: BTreeMap::new(),
                in_flight: None,
            }),
            counters: Counters::default(),
            task: Mutex::new(None),
        });
        let weak = Arc::downgrade(&records);
        let task = tokio::spawn(async move {
            let mut last_prune: Option<tokio::time::Instant> = None;
            loop {
                tokio::time::sleep(SHIP_EVERY).await;
                let Some(records) = weak.upgrade() else { return };
                if let Err(err) = records.ship().await {
                    tracing::debug!(%err, "this replica's records wait for the shared store");
                }
                if retain_days > 0 && last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                    last_prune = Some(tokio::time::Instant::now());
                    let before = SystemClock.now_ms().saturating_sub(u64::from(retain_days) * 24 * HOUR_MS);
                    if let Err(err) = records.ledger.prune_records(before).await {
                        tracing::debug!(%err, "could not prune the shared records");
                    }
                }
            }
        });
        *records.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        Some(records)
    }

    /// Ships what the writer handed over so far: the batch in flight (if
    /// one waits) and then everything pending. `Ok` once all of it is in
    /// PostgreSQL.
    pub(crate) async fn ship(&self) -> Result<(), ClusterError> {
        let mut outbox = self.state.lock().await;
        let outcome = self.ship_locked(&mut outbox).await;
        self.counters.pending.store(outbox.backlog(), Ordering::Relaxed);
        outcome
    }

    async fn ship_locked(&self, outbox: &mut Outbox) -> Result<(), ClusterError> {
        // A batch left from a failure first, then what is pending.
        for _ in 0..2 {
            let incoming = std::mem::take(&mut *self.incoming.lock().unwrap_or_else(PoisonError::into_inner));
            outbox.fold(incoming);
            let dropped = outbox.bound();
            if dropped > 0 {
                self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
                tracing::warn!(
                    dropped,
                    "the shared store is unreachable for long: the oldest pending records are dropped"
                );
            }
            outbox.take_batch();
            let Some((batch, n)) = &outbox.in_flight else { return Ok(()) };
            match self.ledger.ship(batch, merge_hist).await {
                Ok(_) => self.counters.shipped.fetch_add(*n, Ordering::Relaxed),
                Err(err @ ClusterError::Invalid(_)) => {
                    // Refused for its data: sending it again cannot help.
                    self.counters.dropped.fetch_add(*n, Ordering::Relaxed);
                    outbox.in_flight = None;
                    tracing::error!(%err, "the shared store refused a batch of records: dropped");
                    return Err(err);
                }
                Err(err) => return Err(err),
            };
            outbox.in_flight = None;
        }
        Ok(())
    }

    /// Records shipped, dropped, and pending (requests).
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        let c = &self.counters;
        (c.shipped.load(Ordering::Relaxed), c.dropped.load(Ordering::Relaxed), c.pending.load(Ordering::Relaxed))
    }

    /// Every replica's history over the whole hours covering
    /// `[from_ms, to_ms)`.
    pub(crate) async fn history(&self, from_ms: u64, to_ms: u64, dims: &[Dim]) -> Result<History, ClusterError> {
        history(&self.ledger, from_ms, to_ms, dims).await
    }
}

impl Drop for SharedRecords {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(PoisonError::into_inner).take() {
            task.abort();
        }
    }
}

/// Every replica's history in `ledger` over the whole hours covering
/// `[from_ms, to_ms)`, grouped by each of `dims`.
pub(crate) async fn history(
    ledger: &SharedLedger,
    from_ms: u64,
    to_ms: u64,
    dims: &[Dim],
) -> Result<History, ClusterError> {
    let (from, to) = (hour_of(from_ms), to_ms.div_ceil(HOUR_MS).saturating_mul(HOUR_MS));
    let names: Vec<&str> = dims.iter().map(|d| d.as_str()).collect();
    let rows = ledger.records(&names, from, to).await?;
    let mut groups: BTreeMap<Dim, Vec<Aggregate>> = dims.iter().map(|&d| (d, Vec::new())).collect();
    for row in rows {
        let Some(dim) = Dim::ALL.into_iter().find(|d| d.as_str() == row.dim) else { continue };
        let Some(into) = groups.get_mut(&dim) else { continue };
        let mut group = Aggregate {
            provider: if dim == Dim::Model { row.provider } else { String::new() },
            value: row.value,
            requests: to_u64(row.requests),
            successes: to_u64(row.successes),
            failures: to_u64(row.failures),
            client_faults: to_u64(row.client_faults),
            aborted: to_u64(row.aborted),
            input_tokens: to_u64(row.input_tokens),
            output_tokens: to_u64(row.output_tokens),
            cached_tokens: to_u64(row.cached_tokens),
            cost: row.cost,
            fallbacks: to_u64(row.fallbacks),
            ratings: to_u64(row.ratings),
            rating_sum: to_u64(row.rating_sum),
            first_ms: u64::try_from(row.first_ms).unwrap_or(u64::MAX),
            last_ms: to_u64(row.last_ms),
            latency: Hist::new(),
            ttft: Hist::new(),
        };
        // A histogram that does not decode adds nothing: that hour's
        // percentiles are lost, not its counts.
        for blob in &row.latency {
            let _ = group.latency.merge_encoded(blob);
        }
        for blob in &row.ttft {
            let _ = group.ttft.merge_encoded(blob);
        }
        into.push(group);
    }
    Ok(History { from_ms: from, to_ms: to, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `requests` answers of `value` under `dim` in the hour `hour`.
    fn delta(dim: Dim, hour: u64, value: &str, requests: u64) -> HourDelta {
        let added = Aggregate { value: value.to_owned(), requests, first_ms: hour * HOUR_MS, ..Aggregate::default() };
        HourDelta { dim, hour_ms: hour * HOUR_MS, added, rerated: (0, 0) }
    }

    fn outbox() -> Outbox {
        Outbox { run: 1, next_seq: 1, pending: BTreeMap::new(), in_flight: None }
    }

    #[test]
    fn past_the_bound_the_oldest_hour_goes_and_its_requests_are_counted() {
        let mut outbox = outbox();
        // Hour 1: 3 requests of one model, in one group per grouping.
        outbox.fold(vec![delta(Dim::Model, 1, "m", 3), delta(Dim::Key, 1, "", 3)]);
        // Hour 2: as many key groups as the bound allows with hour 1 (and a model group).
        let keys = (0..MAX_GROUPS - 2).map(|i| delta(Dim::Key, 2, &format!("k{i}"), 1));
        outbox.fold(keys.chain([delta(Dim::Model, 2, "m", 4094)]).collect());
        assert_eq!((outbox.pending.len(), outbox.bound()), (MAX_GROUPS + 1, 3), "hour 1 went");
        assert_eq!(outbox.backlog(), 4_094);
        assert!(outbox.pending.keys().all(|(hour, _, _)| *hour == 2 * HOUR_MS));
        assert_eq!(outbox.bound(), 0, "within the bound now");
        // A batch keeps its number until it is taken; folds go to the next.
        outbox.take_batch();
        outbox.fold(vec![delta(Dim::Model, 3, "m", 1)]);
        outbox.take_batch();
        let (batch, requests) = outbox.in_flight.as_ref().unwrap();
        assert_eq!((batch.seq, *requests, batch.rows.len()), (1, 4_094, MAX_GROUPS - 1));
        assert_eq!((outbox.pending.len(), outbox.backlog()), (1, 4_095));
    }

    #[test]
    fn deltas_of_one_group_and_hour_fold_into_one_row_with_their_ratings() {
        let mut outbox = outbox();
        let mut rated = delta(Dim::Model, 1, "m", 0);
        rated.rerated = (1, -2);
        outbox.fold(vec![delta(Dim::Model, 1, "m", 2), rated, delta(Dim::Model, 1, "m", 1)]);
        outbox.take_batch();
        let (batch, requests) = outbox.in_flight.as_ref().unwrap();
        assert_eq!(*requests, 3);
        let [row] = batch.rows.as_slice() else { panic!("{:?}", batch.rows) };
        assert_eq!((row.dim.as_str(), row.requests, row.ratings, row.rating_sum), ("model", 3, 1, -2));
    }
}
