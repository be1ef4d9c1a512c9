//! Spend and performance records of every replica, so a report from any
//! one shows the whole fleet.
//!
//! A replica ships what its own store added to its hourly aggregates
//! (per grouping — `model`, `provider`, `category`, `language`, `key` —
//! value and hour: counts, tokens, exact cost, and mergeable latency
//! histograms as opaque bytes) in batches, each one transaction:
//!
//! - **its own rows**: `perf_hourly` is keyed by replica too, so a
//!   replica's upserts never wait on another's row locks; a report sums
//!   the replicas' rows (and merges their histograms) on read;
//! - **counted once**: a batch carries the replica's run (a random number
//!   drawn at start) and a sequence number; the transaction first raises
//!   `perf_batches.last_seq` for (replica, run), and a batch whose number
//!   is not above it (sent again after a lost reply) changes nothing;
//! - **histograms** are merged in the caller's code (this crate does not
//!   know their encoding): the batch's rows are locked (`FOR UPDATE`), the
//!   stored bytes merged with the batch's, and written back with the sums.

use std::collections::HashMap;

use modelfleet_registry::Money;

use crate::{ClusterError, SharedLedger, ledger::unavailable};

/// One group's figures over one hour: a batch's share (shipped) or every
/// replica's sum (read for a report). Counts are `i64` as stored; a
/// batch's `ratings` and `rating_sum` may be negative (a rating replaced
/// by a lower one).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HourRow {
    /// The grouping: `model`, `provider`, `category`, `language` or `key`.
    pub dim: String,
    /// The group (`""` for requests without a language or a key).
    pub value: String,
    /// The hour's start (Unix ms); for a report's row, the first hour read.
    pub hour_ms: u64,
    /// For a model, its provider (the latest seen); else `""`.
    pub provider: String,
    /// Attempts.
    pub requests: i64,
    /// Answered.
    pub successes: i64,
    /// Failed for the model's reasons.
    pub failures: i64,
    /// Refused for the request's reasons.
    pub client_faults: i64,
    /// Ended by the client or a budget.
    pub aborted: i64,
    /// Prompt tokens.
    pub input_tokens: i64,
    /// Completion tokens.
    pub output_tokens: i64,
    /// Cached prompt tokens.
    pub cached_tokens: i64,
    /// Exact cost.
    pub cost: Money,
    /// Answers given by a fallback.
    pub fallbacks: i64,
    /// User ratings.
    pub ratings: i64,
    /// Their sum.
    pub rating_sum: i64,
    /// The first row's time (Unix ms; `i64::MAX` when none).
    pub first_ms: i64,
    /// The last row's time (Unix ms; 0 when none).
    pub last_ms: i64,
    /// Latencies, encoded by the caller (a batch: one; a report: one per
    /// replica and hour, to merge).
    pub latency: Vec<Vec<u8>>,
    /// Times to first token, likewise.
    pub ttft: Vec<Vec<u8>>,
}

/// A batch of one replica's records: counted once however often it is
/// sent ([`SharedLedger::ship`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordBatch {
    /// The replica's run: drawn at random when it starts, so a restarted
    /// replica's numbers start over without colliding.
    pub run: i64,
    /// The batch's number in its run, from 1, increasing.
    pub seq: i64,
    /// What it adds, one row per group and hour (each with one histogram
    /// of each kind, possibly empty bytes).
    pub rows: Vec<HourRow>,
}

/// Merges two encoded histograms (the stored one, the batch's) into one.
pub type MergeHist = fn(stored: &[u8], added: &[u8]) -> Vec<u8>;

/// How long a report's read may take at least, whatever the timeout of
/// the ledger's calls (a year over a hundred replicas is many rows).
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Rows one prune statement deletes at most.
const PRUNE_BATCH: i64 = 10_000;

impl SharedLedger {
    /// Adds `batch` to this replica's records, once: `Ok(false)` when this
    /// run's batch `seq` (or a later one) was applied before, which then
    /// changes nothing. Histograms are merged with `merge`.
    pub async fn ship(&self, batch: &RecordBatch, merge: MergeHist) -> Result<bool, ClusterError> {
        let s = &self.schema;
        let rows = folded(&batch.rows, merge);
        self.within(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| unavailable(&e))?;
            let fresh = tx
                .query_opt(
                    &format!(
                        "INSERT INTO {s}.perf_batches (replica, run, last_seq) VALUES ($1, $2, $3)
                         ON CONFLICT (replica, run) DO UPDATE SET last_seq = EXCLUDED.last_seq, shipped_at = now()
                         WHERE {s}.perf_batches.last_seq < EXCLUDED.last_seq
                         RETURNING 1"
                    ),
                    &[&self.replica, &batch.run, &batch.seq],
                )
                .await
                .map_err(|e| unavailable(&e))?;
            if fresh.is_none() {
                // Applied before: dropping the transaction changes nothing.
                return Ok(false);
            }
            let (latency, ttft) = self.merged_hists(&tx, &rows, merge).await?;
            self.add_rows(&tx, &rows, &latency, &ttft).await?;
            tx.commit().await.map_err(|e| unavailable(&e))?;
            Ok(true)
        })
        .await
    }

    /// Every replica's records of the hours starting in `[from_ms, to_ms)`
    /// under each grouping of `dims`, one row per group: the counts summed,
    /// the provider of the latest row, and every stored histogram (one per
    /// replica and hour) for the caller to merge. Sorted by grouping and
    /// value.
    pub async fn records(&self, dims: &[&str], from_ms: u64, to_ms: u64) -> Result<Vec<HourRow>, ClusterError> {
        let s = &self.schema;
        let limit = self.timeout.max(READ_TIMEOUT);
        self.within_for(limit, async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| unavailable(&e))?;
            tx.batch_execute(&format!("SET LOCAL statement_timeout = {}", limit.as_millis()))
                .await
                .map_err(|e| unavailable(&e))?;
            let rows = tx
                .query(
                    &format!(
                        "SELECT dim, value, min(hour_ms),
                                coalesce((array_agg(provider ORDER BY last_ms DESC) FILTER (WHERE provider <> ''))[1], ''),
                                sum(requests)::bigint, sum(successes)::bigint, sum(failures)::bigint,
                                sum(client_faults)::bigint, sum(aborted)::bigint, sum(input_tokens)::bigint,
                                sum(output_tokens)::bigint, sum(cached_tokens)::bigint, sum(cost_nanos)::bigint,
                                sum(fallbacks)::bigint, sum(ratings)::bigint, sum(rating_sum)::bigint,
                                min(first_ms), max(last_ms), array_agg(latency), array_agg(ttft)
                         FROM {s}.perf_hourly
                         WHERE dim = ANY($1) AND hour_ms >= $2 AND hour_ms < $3
                         GROUP BY dim, value ORDER BY dim, value"
                    ),
                    &[&dims, &ms(from_ms), &ms(to_ms)],
                )
                .await
                .map_err(|e| unavailable(&e))?;
            Ok(rows
                .iter()
                .map(|row| HourRow {
                    dim: row.get(0),
                    value: row.get(1),
                    hour_ms: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
                    provider: row.get(3),
                    requests: row.get(4),
                    successes: row.get(5),
                    failures: row.get(6),
                    client_faults: row.get(7),
                    aborted: row.get(8),
                    input_tokens: row.get(9),
                    output_tokens: row.get(10),
                    cached_tokens: row.get(11),
                    cost: Money::from_nanos(row.get(12)),
                    fallbacks: row.get(13),
                    ratings: row.get(14),
                    rating_sum: row.get(15),
                    first_ms: row.get(16),
                    last_ms: row.get(17),
                    latency: row.get(18),
                    ttft: row.get(19),
                })
                .collect())
        })
        .await
    }

    /// Deletes every replica's records of hours before `before_ms`, and
    /// the batch numbers of runs silent for a week; returns the rows of
    /// records deleted. In statements of at most 10,000 rows.
    pub async fn prune_records(&self, before_ms: u64) -> Result<u64, ClusterError> {
        let s = &self.schema;
        let mut total = 0;
        loop {
            let deleted = self
                .execute(
                    &format!(
                        "DELETE FROM {s}.perf_hourly WHERE ctid IN (
                             SELECT ctid FROM {s}.perf_hourly WHERE hour_ms < $1 LIMIT $2)"
                    ),
                    &[&ms(before_ms), &PRUNE_BATCH],
                )
                .await?;
            total += deleted;
            if deleted < u64::try_from(PRUNE_BATCH).unwrap_or(u64::MAX) {
                break;
            }
        }
        self.execute(&format!("DELETE FROM {s}.perf_batches WHERE shipped_at < now() - interval '7 days'"), &[])
            .await?;
        Ok(total)
    }
}

/// A stored row's key: grouping, value, hour.
type RowKey = (String, String, i64);

impl SharedLedger {
    /// The histograms `rows` leave in their stored rows (locked until the
    /// commit): the stored ones merged with the batch's, or the batch's.
    async fn merged_hists(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        rows: &[HourRow],
        merge: MergeHist,
    ) -> Result<(Vec<Vec<u8>>, Vec<Vec<u8>>), ClusterError> {
        let s = &self.schema;
        let dims: Vec<&str> = rows.iter().map(|r| r.dim.as_str()).collect();
        let values: Vec<&str> = rows.iter().map(|r| r.value.as_str()).collect();
        let hours: Vec<i64> = rows.iter().map(|r| ms(r.hour_ms)).collect();
        let stored = tx
            .query(
                &format!(
                    "SELECT h.dim, h.value, h.hour_ms, h.latency, h.ttft FROM {s}.perf_hourly h
                     JOIN unnest($2::text[], $3::text[], $4::bigint[]) AS k(dim, value, hour_ms)
                       ON h.dim = k.dim AND h.value = k.value AND h.hour_ms = k.hour_ms
                     WHERE h.replica = $1
                     ORDER BY h.dim, h.value, h.hour_ms FOR UPDATE OF h"
                ),
                &[&self.replica, &dims, &values, &hours],
            )
            .await
            .map_err(|e| unavailable(&e))?;
        let mut hists: HashMap<RowKey, [Vec<u8>; 2]> =
            stored.iter().map(|row| ((row.get(0), row.get(1), row.get(2)), [row.get(3), row.get(4)])).collect();
        let first = |hists: &[Vec<u8>]| hists.first().cloned().unwrap_or_default();
        let (mut latency, mut ttft) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
        for row in rows {
            let key = (row.dim.clone(), row.value.clone(), ms(row.hour_ms));
            let (lat, tt) = match hists.remove(&key) {
                Some([lat, tt]) => (merge(&lat, &first(&row.latency)), merge(&tt, &first(&row.ttft))),
                None => (first(&row.latency), first(&row.ttft)),
            };
            latency.push(lat);
            ttft.push(tt);
        }
        Ok((latency, ttft))
    }

    /// Adds `rows` to this replica's stored ones (one statement), their
    /// histograms replaced by the merged `latency` and `ttft`.
    async fn add_rows(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        rows: &[HourRow],
        latency: &[Vec<u8>],
        ttft: &[Vec<u8>],
    ) -> Result<(), ClusterError> {
        let s = &self.schema;
        let dims: Vec<&str> = rows.iter().map(|r| r.dim.as_str()).collect();
        let values: Vec<&str> = rows.iter().map(|r| r.value.as_str()).collect();
        let hours: Vec<i64> = rows.iter().map(|r| ms(r.hour_ms)).collect();
        let column = |f: fn(&HourRow) -> i64| rows.iter().map(f).collect::<Vec<i64>>();
        let providers: Vec<&str> = rows.iter().map(|r| r.provider.as_str()).collect();
        let counts = [
            column(|r| r.requests),
            column(|r| r.successes),
            column(|r| r.failures),
            column(|r| r.client_faults),
            column(|r| r.aborted),
            column(|r| r.input_tokens),
            column(|r| r.output_tokens),
            column(|r| r.cached_tokens),
            column(|r| r.cost.nanos()),
            column(|r| r.fallbacks),
            column(|r| r.ratings),
            column(|r| r.rating_sum),
            column(|r| r.first_ms),
            column(|r| r.last_ms),
        ];
        let added = |c: &str| format!("{c} = {s}.perf_hourly.{c} + EXCLUDED.{c}");
        let sums = [
            "requests",
            "successes",
            "failures",
            "client_faults",
            "aborted",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "cost_nanos",
            "fallbacks",
            "ratings",
            "rating_sum",
        ]
        .map(added)
        .join(", ");
        let upsert = format!(
            "INSERT INTO {s}.perf_hourly (replica, dim, value, hour_ms, provider, requests, successes, failures,
                 client_faults, aborted, input_tokens, output_tokens, cached_tokens, cost_nanos, fallbacks,
                 ratings, rating_sum, first_ms, last_ms, latency, ttft)
             SELECT $1, * FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[], $6::bigint[],
                 $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[],
                 $13::bigint[], $14::bigint[], $15::bigint[], $16::bigint[], $17::bigint[], $18::bigint[],
                 $19::bigint[], $20::bytea[], $21::bytea[])
             ON CONFLICT (replica, dim, value, hour_ms) DO UPDATE SET {sums},
                 provider = CASE WHEN EXCLUDED.provider <> '' AND EXCLUDED.last_ms >= {s}.perf_hourly.last_ms
                                 THEN EXCLUDED.provider ELSE {s}.perf_hourly.provider END,
                 first_ms = least({s}.perf_hourly.first_ms, EXCLUDED.first_ms),
                 last_ms = greatest({s}.perf_hourly.last_ms, EXCLUDED.last_ms),
                 latency = EXCLUDED.latency, ttft = EXCLUDED.ttft"
        );
        let [c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13] = &counts;
        tx.execute(
            &upsert,
            &[
                &self.replica,
                &dims,
                &values,
                &hours,
                &providers,
                c0,
                c1,
                c2,
                c3,
                c4,
                c5,
                c6,
                c7,
                c8,
                c9,
                c10,
                c11,
                c12,
                c13,
                &latency,
                &ttft,
            ],
        )
        .await
        .map_err(|e| unavailable(&e))?;
        Ok(())
    }
}

/// `rows` with one row per group and hour (an upsert takes each key once),
/// sorted, so rows are locked in one order (only this replica writes its
/// rows, but two processes misconfigured with one name must not deadlock).
fn folded(rows: &[HourRow], merge: MergeHist) -> Vec<HourRow> {
    let mut sorted: Vec<&HourRow> = rows.iter().collect();
    sorted.sort_by(|a, b| (&a.dim, &a.value, a.hour_ms).cmp(&(&b.dim, &b.value, b.hour_ms)));
    let mut out: Vec<HourRow> = Vec::with_capacity(sorted.len());
    for row in sorted {
        match out.last_mut() {
            Some(last) if (&last.dim, &last.value, last.hour_ms) == (&row.dim, &row.value, row.hour_ms) => {
                if !row.provider.is_empty() && row.last_ms >= last.last_ms {
                    last.provider.clone_from(&row.provider);
                }
                for (sum, add) in [
                    (&mut last.requests, row.requests),
                    (&mut last.successes, row.successes),
                    (&mut last.failures, row.failures),
                    (&mut last.client_faults, row.client_faults),
                    (&mut last.aborted, row.aborted),
                    (&mut last.input_tokens, row.input_tokens),
                    (&mut last.output_tokens, row.output_tokens),
                    (&mut last.cached_tokens, row.cached_tokens),
                    (&mut last.fallbacks, row.fallbacks),
                    (&mut last.ratings, row.ratings),
                    (&mut last.rating_sum, row.rating_sum),
                ] {
                    *sum = sum.saturating_add(add);
                }
                last.cost = last.cost.saturating_add(row.cost);
                last.first_ms = last.first_ms.min(row.first_ms);
                last.last_ms = last.last_ms.max(row.last_ms);
                let one = |hists: &[Vec<u8>]| hists.first().cloned().unwrap_or_default();
                last.latency = vec![merge(&one(&last.latency), &one(&row.latency))];
                last.ttft = vec![merge(&one(&last.ttft), &one(&row.ttft))];
            }
            _ => out.push(row.clone()),
        }
    }
    out
}

fn ms(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
