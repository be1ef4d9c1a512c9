//! History: what the performance log says over any range of time.
//!
//! Raw performance rows are kept `retain_days`; the writer also keeps,
//! in the same transaction as the rows, **hourly aggregates** per model,
//! provider, category, language and key (`perf_hourly`: counts by verdict,
//! tokens, exact cost, fallbacks, ratings, and mergeable latency and
//! time-to-first-token histograms, see [`Hist`]) for
//! `aggregate_retain_days`. A report over `[from, to)` reads the whole
//! hours inside it from the aggregates and the partial hours at its edges
//! from the raw rows, folded by the same [`Aggregate::add`], so the figures
//! are those of the rows themselves and a year of history is some 9,000
//! aggregate rows per model, not a year of requests. An edge whose raw rows
//! may already be pruned is read from its whole hour instead, and the
//! [`History`] says which range it covers.
//!
//! Every row is counted once per grouping, so the totals agree whichever
//! way the range is grouped.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    str::FromStr,
};

use modelfleet_errors::ErrorClass;
use modelfleet_monitor::Verdict;
use modelfleet_registry::Money;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;

use crate::{
    hist::Hist,
    records::{to_i64, to_u64},
};

/// An hour in milliseconds: the aggregates' period.
pub const HOUR_MS: u64 = 60 * 60 * 1_000;

/// What a report groups requests by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dim {
    /// The catalog model that served (or failed).
    Model,
    /// Its provider.
    Provider,
    /// The kind of request (`code`, `chat`…).
    Category,
    /// The request's language (`""` when unknown).
    Language,
    /// The API key's name (`""` without one).
    Key,
}

impl Dim {
    /// Every grouping.
    pub const ALL: [Dim; 5] = [Dim::Model, Dim::Provider, Dim::Category, Dim::Language, Dim::Key];

    /// Its name: `model`, `provider`, `category`, `language`, `key`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Dim::Model => "model",
            Dim::Provider => "provider",
            Dim::Category => "category",
            Dim::Language => "language",
            Dim::Key => "key",
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Dim {
    type Err = String;

    fn from_str(s: &str) -> Result<Dim, String> {
        Dim::ALL.into_iter().find(|d| d.as_str() == s).ok_or_else(|| {
            format!(
                "unknown grouping {:?}: one of {}",
                modelfleet_errors::sanitize(s),
                Dim::ALL.map(Dim::as_str).join(", ")
            )
        })
    }
}

/// One group's figures over a range of time.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Aggregate {
    /// The group: a model id, a provider, a category, a language or a key
    /// name (`""` for requests without a language or a key).
    pub value: String,
    /// For a model, its provider (the latest seen); else `""`.
    pub provider: String,
    /// Rows: attempts, each its own row (a fallback's first failure too).
    pub requests: u64,
    /// Answered.
    pub successes: u64,
    /// Failed for the model's own reasons (counted against it).
    pub failures: u64,
    /// Refused for the request's reasons (bad request, content policy,
    /// context window): any model would have.
    pub client_faults: u64,
    /// Ended for reasons outside the model (the client left, a budget).
    pub aborted: u64,
    /// Prompt tokens (cached ones included).
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Cached prompt tokens.
    pub cached_tokens: u64,
    /// Exact cost.
    pub cost: Money,
    /// Answers given by a fallback model (not the request's first choice).
    pub fallbacks: u64,
    /// User ratings.
    pub ratings: u64,
    /// Their sum (each 1 to 5).
    pub rating_sum: u64,
    /// The first row's time (Unix ms).
    pub first_ms: u64,
    /// The last row's time (Unix ms).
    pub last_ms: u64,
    /// Latencies (µs) of the outcomes that judge the model.
    pub latency: Hist,
    /// Times to first token (µs) of streams.
    pub ttft: Hist,
}

impl Aggregate {
    fn empty(value: &str, provider: &str) -> Aggregate {
        Aggregate { value: value.to_owned(), provider: provider.to_owned(), first_ms: u64::MAX, ..Aggregate::default() }
    }

    /// Outcomes that judge the model: successes and its own failures.
    #[must_use]
    pub fn judged(&self) -> u64 {
        self.successes.saturating_add(self.failures)
    }

    /// Successes over judged outcomes; `None` when none judged.
    #[must_use]
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    pub fn success_rate(&self) -> Option<f64> {
        (self.judged() > 0).then(|| self.successes as f64 / self.judged() as f64)
    }

    /// The mean rating, 1 to 5; `None` when unrated.
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn mean_rating(&self) -> Option<f64> {
        (self.ratings > 0).then(|| self.rating_sum as f64 / self.ratings as f64)
    }

    /// Folds one row in: the one rule raw rows and aggregates are built by.
    pub(crate) fn add(&mut self, row: &Row<'_>) {
        self.requests += 1;
        let verdict = Verdict::of(row.error);
        match verdict {
            Verdict::Success => self.successes += 1,
            Verdict::Failure => self.failures += 1,
            Verdict::ClientFault => self.client_faults += 1,
            Verdict::Aborted => self.aborted += 1,
        }
        self.input_tokens = self.input_tokens.saturating_add(row.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(row.output_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(row.cached_tokens);
        self.cost = self.cost.saturating_add(row.cost);
        if verdict.judges() {
            self.latency.record(row.latency_us);
        }
        if let Some(ttft) = row.ttft_us {
            self.ttft.record(ttft);
        }
        self.fallbacks += u64::from(row.fallback && verdict == Verdict::Success);
        if let Some(rating) = row.rating {
            self.ratings += 1;
            self.rating_sum += u64::from(rating);
        }
        self.first_ms = self.first_ms.min(row.at_ms);
        if row.at_ms >= self.last_ms {
            self.last_ms = row.at_ms;
            // Only a model's group names a provider: its latest.
            if !self.provider.is_empty() {
                row.provider.clone_into(&mut self.provider);
            }
        }
    }

    /// Adds `other` (the same group over another period, or another group
    /// into a total).
    pub fn merge(&mut self, other: &Aggregate) {
        // Saturating: counts read from a file are not trusted to be sane.
        self.requests = self.requests.saturating_add(other.requests);
        self.successes = self.successes.saturating_add(other.successes);
        self.failures = self.failures.saturating_add(other.failures);
        self.client_faults = self.client_faults.saturating_add(other.client_faults);
        self.aborted = self.aborted.saturating_add(other.aborted);
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(other.cached_tokens);
        self.cost = self.cost.saturating_add(other.cost);
        self.fallbacks = self.fallbacks.saturating_add(other.fallbacks);
        self.ratings = self.ratings.saturating_add(other.ratings);
        self.rating_sum = self.rating_sum.saturating_add(other.rating_sum);
        self.first_ms = self.first_ms.min(other.first_ms);
        if other.last_ms >= self.last_ms {
            self.last_ms = other.last_ms;
            if !other.provider.is_empty() {
                self.provider.clone_from(&other.provider);
            }
        }
        self.latency.merge(&other.latency);
        self.ttft.merge(&other.ttft);
    }
}

/// One performance row, as the aggregates see it.
#[derive(Debug, Clone)]
pub(crate) struct Row<'a> {
    pub(crate) at_ms: u64,
    pub(crate) model: &'a str,
    pub(crate) provider: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) language: Option<&'a str>,
    pub(crate) key: Option<&'a str>,
    pub(crate) latency_us: u64,
    pub(crate) ttft_us: Option<u64>,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cached_tokens: u64,
    pub(crate) cost: Money,
    pub(crate) error: Option<ErrorClass>,
    pub(crate) fallback: bool,
    pub(crate) rating: Option<u8>,
}

impl<'a> Row<'a> {
    /// The row of `r`.
    pub(crate) fn of(r: &'a crate::PerfRecord) -> Row<'a> {
        Row {
            at_ms: r.at_ms,
            model: &r.model,
            provider: &r.provider,
            kind: r.kind.as_str(),
            language: r.language.as_deref(),
            key: r.key_name.as_deref(),
            latency_us: r.latency_us,
            ttft_us: r.ttft_us,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cached_tokens: r.cached_tokens,
            cost: r.cost,
            error: r.error,
            fallback: r.fallback,
            rating: r.rating.filter(|r| (1..=5).contains(r)),
        }
    }

    /// Its group under `dim`.
    fn value(&self, dim: Dim) -> &str {
        match dim {
            Dim::Model => self.model,
            Dim::Provider => self.provider,
            Dim::Category => self.kind,
            Dim::Language => self.language.unwrap_or(""),
            Dim::Key => self.key.unwrap_or(""),
        }
    }

    /// The provider column of its group under `dim`.
    fn provider_of(&self, dim: Dim) -> &str {
        if dim == Dim::Model { self.provider } else { "" }
    }
}

/// The hour `at_ms` falls in (its start).
#[must_use]
pub fn hour_of(at_ms: u64) -> u64 {
    at_ms / HOUR_MS * HOUR_MS
}

fn hour_after(at_ms: u64) -> u64 {
    at_ms.div_ceil(HOUR_MS).saturating_mul(HOUR_MS)
}

/// What one committed write transaction added to one group's hour of the
/// aggregates: handed to the [export](crate::Store::export_history) after
/// the COMMIT, so another store (replicas sharing their history) can add
/// exactly what this one did.
#[derive(Debug, Clone, PartialEq)]
pub struct HourDelta {
    /// The grouping.
    pub dim: Dim,
    /// The hour (its start, Unix ms).
    pub hour_ms: u64,
    /// What the transaction's rows added: the group's value, for a model
    /// its provider, the counts, tokens, cost and histograms. A delta that
    /// only re-rates earlier rows has no requests, `first_ms` `u64::MAX`
    /// and `last_ms` 0.
    pub added: Aggregate,
    /// Ratings given to earlier rows of the group and hour: how many more
    /// rated rows (0 when a rating replaced another) and how much their
    /// sum moved (negative for a lower rating). Ratings carried by the
    /// rows themselves are in `added`.
    pub rerated: (i64, i64),
}

/// A batch's rows, folded per group and hour: one upsert each.
#[derive(Default)]
pub(crate) struct Hourly {
    /// Per grouping and hour, the groups by value: a row finds its group
    /// without allocating a key.
    groups: HashMap<(Dim, u64), HashMap<String, Aggregate>>,
    /// With an export: what was written, kept for it.
    pub(crate) written: Option<Vec<HourDelta>>,
}

impl Hourly {
    /// Folds that keep what they write for an export when `export`.
    pub(crate) fn new(export: bool) -> Hourly {
        Hourly { groups: HashMap::new(), written: export.then(Vec::new) }
    }

    pub(crate) fn add(&mut self, row: &Row<'_>) {
        let hour = hour_of(row.at_ms);
        for dim in Dim::ALL {
            let value = row.value(dim);
            let groups = self.groups.entry((dim, hour)).or_default();
            if let Some(agg) = groups.get_mut(value) {
                agg.add(row);
            } else {
                let mut agg = Aggregate::empty(value, row.provider_of(dim));
                agg.add(row);
                groups.insert(value.to_owned(), agg);
            }
        }
    }

    /// Adds the batch's groups to the stored ones. A stored histogram that
    /// does not decode is replaced by the batch's (its counts are kept): a
    /// rotten blob costs that hour's percentiles, never the batch.
    pub(crate) fn write(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        if self.groups.is_empty() {
            return Ok(());
        }
        let mut read = tx.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM perf_hourly WHERE dim = ?1 AND value = ?2 AND hour_ms = ?3"
        ))?;
        let mut write = tx.prepare_cached(
            "INSERT OR REPLACE INTO perf_hourly (dim, value, hour_ms, provider, requests, successes, failures, \
             client_faults, aborted, input_tokens, output_tokens, cached_tokens, cost_nanos, fallbacks, ratings, \
             rating_sum, first_ms, last_ms, latency, ttft) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
        )?;
        let groups =
            self.groups.drain().flat_map(|((dim, hour), by)| by.into_iter().map(move |(v, a)| (dim, v, hour, a)));
        for (dim, value, hour, delta) in groups {
            let stored = read.query_row(params![dim.as_str(), value, to_i64(hour)], stored_row).optional()?;
            let merged = stored.map(|mut stored| {
                stored.merge(&delta);
                stored
            });
            let merged = merged.as_ref().unwrap_or(&delta);
            write.execute(params![
                dim.as_str(),
                value,
                to_i64(hour),
                merged.provider,
                to_i64(merged.requests),
                to_i64(merged.successes),
                to_i64(merged.failures),
                to_i64(merged.client_faults),
                to_i64(merged.aborted),
                to_i64(merged.input_tokens),
                to_i64(merged.output_tokens),
                to_i64(merged.cached_tokens),
                merged.cost.nanos(),
                to_i64(merged.fallbacks),
                to_i64(merged.ratings),
                to_i64(merged.rating_sum),
                to_i64(merged.first_ms),
                to_i64(merged.last_ms),
                merged.latency.encode(),
                merged.ttft.encode(),
            ])?;
            if let Some(written) = &mut self.written {
                // Moved, not copied: its histograms may be kilobytes.
                written.push(HourDelta { dim, hour_ms: hour, added: delta, rerated: (0, 0) });
            }
        }
        Ok(())
    }
}

/// The columns [`stored_row`] reads, in its order.
const COLUMNS: &str = "value, provider, requests, successes, failures, client_faults, aborted, input_tokens, \
                       output_tokens, cached_tokens, cost_nanos, fallbacks, ratings, rating_sum, first_ms, last_ms, \
                       latency, ttft";

fn stored_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Aggregate> {
    let mut agg = stored_counts(r)?;
    merge_hists(r, &mut agg)?;
    Ok(agg)
}

/// A stored aggregate's counts, its histograms left empty.
fn stored_counts(r: &rusqlite::Row<'_>) -> rusqlite::Result<Aggregate> {
    Ok(Aggregate {
        value: r.get(0)?,
        provider: r.get(1)?,
        requests: to_u64(r.get(2)?),
        successes: to_u64(r.get(3)?),
        failures: to_u64(r.get(4)?),
        client_faults: to_u64(r.get(5)?),
        aborted: to_u64(r.get(6)?),
        input_tokens: to_u64(r.get(7)?),
        output_tokens: to_u64(r.get(8)?),
        cached_tokens: to_u64(r.get(9)?),
        cost: Money::from_nanos(r.get(10)?),
        fallbacks: to_u64(r.get(11)?),
        ratings: to_u64(r.get(12)?),
        rating_sum: to_u64(r.get(13)?),
        first_ms: to_u64(r.get(14)?),
        last_ms: to_u64(r.get(15)?),
        latency: Hist::new(),
        ttft: Hist::new(),
    })
}

/// Merges a stored aggregate's histograms into `into`, straight from their
/// blobs. A blob that does not decode adds nothing (that hour's
/// percentiles are lost, its counts are not).
fn merge_hists(r: &rusqlite::Row<'_>, into: &mut Aggregate) -> rusqlite::Result<()> {
    // Not a blob at all (a foreign write) is rotten too: no percentiles.
    let latency = r.get_ref(16)?.as_blob().unwrap_or_default();
    let ttft = r.get_ref(17)?.as_blob().unwrap_or_default();
    let _ = into.latency.merge_encoded(latency);
    let _ = into.ttft.merge_encoded(ttft);
    Ok(())
}

/// The raw columns [`raw_rows`] reads, in its order.
const RAW: &str = "at_ms, model, provider, kind, language, key_name, latency_us, ttft_us, input_tokens, output_tokens, \
                   cached_tokens, cost_nanos, error, fallback, rating";

/// Folds every raw row with `from_ms <= at_ms < to_ms` into `fold`, oldest
/// first. A row
/// whose error class this build does not know counts as a failure of the
/// model (`server_error`), its rating outside 1 to 5 as no rating.
fn raw_rows(conn: &Connection, from_ms: u64, to_ms: u64, mut fold: impl FnMut(&Row<'_>)) -> rusqlite::Result<()> {
    // In time order (the index's): a fold may act at each hour's end.
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {RAW} FROM perf_log WHERE at_ms >= ?1 AND at_ms < ?2 ORDER BY at_ms"))?;
    let mut rows = stmt.query(params![to_i64(from_ms), to_i64(to_ms)])?;
    while let Some(r) = rows.next()? {
        let model: String = r.get(1)?;
        let provider: String = r.get(2)?;
        let kind: String = r.get(3)?;
        let language: Option<String> = r.get(4)?;
        let key: Option<String> = r.get(5)?;
        let error: Option<String> = r.get(12)?;
        let rating: Option<i64> = r.get(14)?;
        fold(&Row {
            at_ms: to_u64(r.get(0)?),
            model: &model,
            provider: &provider,
            kind: &kind,
            language: language.as_deref(),
            key: key.as_deref(),
            latency_us: to_u64(r.get(6)?),
            ttft_us: r.get::<_, Option<i64>>(7)?.map(to_u64),
            input_tokens: to_u64(r.get(8)?),
            output_tokens: to_u64(r.get(9)?),
            cached_tokens: to_u64(r.get(10)?),
            cost: Money::from_nanos(r.get(11)?),
            error: error.map(|e| e.parse().unwrap_or(ErrorClass::ServerError)),
            fallback: r.get::<_, i64>(13)? != 0,
            rating: rating.and_then(|r| u8::try_from(r).ok()).filter(|r| (1..=5).contains(r)),
        });
    }
    Ok(())
}

/// What the performance history says over a range, grouped.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct History {
    /// The range covered (Unix ms, `to` excluded): the one asked, widened to
    /// whole hours at an edge whose raw rows may be pruned.
    pub from_ms: u64,
    /// Its end.
    pub to_ms: u64,
    /// Per grouping asked for, its groups sorted by value.
    pub groups: BTreeMap<Dim, Vec<Aggregate>>,
}

impl History {
    /// The groups under `dim` (empty when not asked for).
    #[must_use]
    pub fn by(&self, dim: Dim) -> &[Aggregate] {
        self.groups.get(&dim).map_or(&[], Vec::as_slice)
    }
}

/// Reads the history of `[from_ms, to_ms)` grouped by each of `dims`. Raw
/// rows before `raw_kept_from_ms` may be pruned: an edge before it is read
/// from its whole hour's aggregates.
pub(crate) fn read(
    conn: &Connection,
    from_ms: u64,
    to_ms: u64,
    dims: &[Dim],
    raw_kept_from_ms: u64,
) -> rusqlite::Result<History> {
    let (mut from, mut to) = (from_ms, to_ms.max(from_ms));
    let mut hours: Option<(u64, u64)> = None;
    let mut raw: Vec<(u64, u64)> = Vec::new();
    let (lo, hi) = (hour_after(from), hour_of(to));
    if lo < hi {
        hours = Some((lo, hi));
        raw.extend([(from, lo), (hi, to)].into_iter().filter(|(a, b)| a < b));
    } else if from < to {
        raw.push((from, to));
    }
    raw.retain(|&(a, b)| {
        if a >= raw_kept_from_ms {
            return true;
        }
        let (a, b) = (hour_of(a), hour_after(b));
        hours = Some(hours.map_or((a, b), |(x, y)| (x.min(a), y.max(b))));
        from = from.min(a);
        to = to.max(b);
        false
    });
    let mut groups: BTreeMap<Dim, BTreeMap<String, Aggregate>> = dims.iter().map(|&d| (d, BTreeMap::new())).collect();
    // Each grouping once, however often it was asked for.
    for (&dim, into) in &mut groups {
        if let Some((a, b)) = hours {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM perf_hourly WHERE dim = ?1 AND hour_ms >= ?2 AND hour_ms < ?3"
            ))?;
            let mut rows = stmt.query(params![dim.as_str(), to_i64(a), to_i64(b)])?;
            while let Some(r) = rows.next()? {
                let counts = stored_counts(r)?;
                let have = match into.get_mut(&counts.value) {
                    Some(have) => {
                        have.merge(&counts);
                        have
                    }
                    None => into.entry(counts.value.clone()).or_insert(counts),
                };
                merge_hists(r, have)?;
            }
        }
    }
    for (a, b) in raw {
        raw_rows(conn, a, b, |row| {
            for (&dim, into) in &mut groups {
                let value = row.value(dim);
                if let Some(agg) = into.get_mut(value) {
                    agg.add(row);
                } else {
                    let mut agg = Aggregate::empty(value, row.provider_of(dim));
                    agg.add(row);
                    into.insert(value.to_owned(), agg);
                }
            }
        })?;
    }
    Ok(History {
        from_ms: from,
        to_ms: to,
        groups: groups.into_iter().map(|(dim, by)| (dim, by.into_values().collect())).collect(),
    })
}

/// Builds the aggregates of every raw row already kept (the migration to
/// schema version 4), in the migration's transaction.
///
/// The rows come in time order and each hour's groups are written when the
/// next hour starts, so memory holds one hour's groups, however long the
/// history.
pub(crate) fn backfill(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let mut hourly = Hourly::default();
    let mut current: Option<u64> = None;
    let mut failed: Option<rusqlite::Error> = None;
    raw_rows(tx, 0, u64::MAX >> 1, |row| {
        let hour = hour_of(row.at_ms);
        if current.is_some_and(|h| h != hour)
            && let Err(e) = hourly.write(tx)
        {
            failed.get_or_insert(e);
        }
        current = Some(hour);
        hourly.add(row);
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    hourly.write(tx)
}

/// A rating, as stored (see [`Store::rate`](crate::Store::rate)).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rated {
    /// The request's id.
    pub request_id: String,
    /// The model that answered it.
    pub model: String,
    /// Its provider.
    pub provider: String,
    /// The rating, 1 to 5.
    pub rating: u8,
    /// The model's rated quality after this rating, over all its history:
    /// the sum of its answers' qualities (0 to 1 each) and how many. Read
    /// after the commit: what a live quality signal should show.
    #[serde(skip)]
    pub model_quality: (f64, u64),
}

/// The row a rating applies to: the answer (success) of the request, its
/// last if several (a hedge's loser is never a success).
pub(crate) struct RatedRow {
    pub(crate) id: i64,
    pub(crate) model: String,
    pub(crate) provider: String,
}

/// The answered row of `request_id`, of requests sent with `key` only when
/// one is given.
pub(crate) fn rated_row(conn: &Connection, request_id: &str, key: Option<&str>) -> rusqlite::Result<Option<RatedRow>> {
    conn.prepare_cached(
        "SELECT id, model, provider FROM perf_log \
         WHERE request_id = ?1 AND error IS NULL AND (?2 IS NULL OR key_name = ?2) ORDER BY id DESC LIMIT 1",
    )?
    .query_row(params![request_id, key], |r| Ok(RatedRow { id: r.get(0)?, model: r.get(1)?, provider: r.get(2)? }))
    .optional()
}

/// A rating to write (the writer's op).
#[derive(Debug, Clone)]
pub(crate) struct Rating {
    pub(crate) request_id: String,
    pub(crate) row_id: i64,
    pub(crate) score: u8,
    pub(crate) comment: Option<String>,
    pub(crate) who: String,
    pub(crate) at_ms: u64,
}

/// Writes a rating in `tx`: on its row (and the row's quality, 0 to 1), in
/// `feedback` with its comment, and in the model's usage totals and the
/// row's hourly aggregates, replacing the request's earlier rating if any.
/// A row gone meanwhile (pruned) takes no rating.
pub(crate) fn write_rating(tx: &Transaction<'_>, rating: &Rating, hourly: &mut Hourly) -> rusqlite::Result<()> {
    let row = tx
        .prepare_cached(
            "SELECT at_ms, model, provider, kind, language, key_name, rating, quality FROM perf_log WHERE id = ?1",
        )?
        .query_row(params![rating.row_id], |r| {
            Ok((
                to_u64(r.get(0)?),
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, Option<f64>>(7)?,
            ))
        })
        .optional()?;
    let Some((at_ms, model, provider, kind, language, key, old, old_quality)) = row else { return Ok(()) };
    let old = old.and_then(|r| u8::try_from(r).ok()).filter(|r| (1..=5).contains(r));
    let quality = |r: u8| f64::from(r - 1) / 4.0;
    tx.prepare_cached("UPDATE perf_log SET rating = ?1, quality = ?2 WHERE id = ?3")?.execute(params![
        rating.score,
        quality(rating.score),
        rating.row_id
    ])?;
    tx.prepare_cached(
        "INSERT INTO feedback (request_id, model, rating, comment, who, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (request_id) DO UPDATE SET model = excluded.model, rating = excluded.rating, \
         comment = excluded.comment, who = excluded.who, at_ms = excluded.at_ms",
    )?
    .execute(params![rating.request_id, model, rating.score, rating.comment, rating.who, to_i64(rating.at_ms)])?;
    let added = i64::from(old.is_none());
    let sum_delta = i64::from(rating.score) - old.map_or(0, i64::from);
    // The usage mean counted the row's quality when it had one (a rating
    // before, or a quality the row was written with): replaced, not added.
    let old_quality = old_quality.filter(|q| q.is_finite());
    let quality_delta = quality(rating.score) - old_quality.unwrap_or(0.0);
    tx.prepare_cached(
        "UPDATE usage SET quality_sum = quality_sum + ?1, quality_count = quality_count + ?2 WHERE model = ?3",
    )?
    .execute(params![quality_delta, i64::from(old_quality.is_none()), model])?;
    let mut update = tx.prepare_cached(
        "UPDATE perf_hourly SET ratings = ratings + ?1, rating_sum = rating_sum + ?2 \
         WHERE dim = ?3 AND value = ?4 AND hour_ms = ?5",
    )?;
    let hour = to_i64(hour_of(at_ms));
    for (dim, value) in [
        (Dim::Model, model.as_str()),
        (Dim::Provider, provider.as_str()),
        (Dim::Category, kind.as_str()),
        (Dim::Language, language.as_deref().unwrap_or("")),
        (Dim::Key, key.as_deref().unwrap_or("")),
    ] {
        let rerated = update.execute(params![added, sum_delta, dim.as_str(), value, hour])?;
        if let Some(written) = hourly.written.as_mut().filter(|_| rerated > 0) {
            let empty = Aggregate { value: value.to_owned(), first_ms: u64::MAX, ..Aggregate::default() };
            written.push(HourDelta { dim, hour_ms: hour_of(at_ms), added: empty, rerated: (added, sum_delta) });
        }
    }
    Ok(())
}

/// Deletes aggregates of hours that ended before `cutoff_ms`, and ratings given before
/// `feedback_cutoff_ms` (with the raw rows they rate); returns how many
/// rows went.
pub(crate) fn prune(conn: &Connection, cutoff_ms: u64, feedback_cutoff_ms: u64) -> rusqlite::Result<usize> {
    let hourly = if cutoff_ms == 0 {
        0
    } else {
        // Only hours that ended before the cutoff: the hour holding it
        // still has rows younger than the retention.
        conn.prepare_cached("DELETE FROM perf_hourly WHERE hour_ms < ?1")?
            .execute(params![to_i64(hour_of(cutoff_ms))])?
    };
    let feedback = if feedback_cutoff_ms == 0 {
        0
    } else {
        conn.prepare_cached("DELETE FROM feedback WHERE at_ms < ?1")?.execute(params![to_i64(feedback_cutoff_ms)])?
    };
    Ok(hourly + feedback)
}
