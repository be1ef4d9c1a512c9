//! What several gateway replicas share: the ledger of hard budgets and
//! the catalog in PostgreSQL, so N replicas together never let more through than one
//! budget allows, and their ejections through Redis, so a model failing on
//! one replica is not retried by every other in turn.
//!
//! One `modelfleet serve` on SQLite needs none of this; replicas behind a
//! load balancer point `[cluster] postgres_url` at one database, and
//! `redis_url` at one Redis. The facade (`modelfleet`) glues these to the
//! budget and fallback crates; this crate depends on neither.
//!
//! # The shared ledger ([`SharedLedger`])
//!
//! A budget's period is one row (`budget_periods`: its limit, the money
//! spent and the money held), and every hold is a row of its own
//! (`budget_holds`: how much, on which budgets, by which replica, until
//! when). [`SharedLedger::hold`] is one transaction that raises `held` on
//! every budget that pays for a request, each by a single conditional
//! update (`… SET held = held + $amount WHERE spent + held + $amount <=
//! limit`), in one order (so two replicas never deadlock), and records the
//! hold: either every budget holds the amount or none does. The check and
//! the raise are one statement under the row's lock, so no interleaving of
//! replicas can pass a limit. [`SharedLedger::settle`] deletes the hold
//! and moves its budgets' money from held to spent, the actual cost in
//! full (spent money is spent, even above the hold); settling twice, or
//! after the hold expired, never counts twice.
//!
//! **A replica that dies** leaves its holds behind: each has an expiry
//! (the database's clock, so replicas' clocks do not matter;
//! [`SharedLedger::renew`] keeps a long call's), and
//! [`SharedLedger::sweep`] (run by every replica now and then) ends the
//! expired ones by charging them in full, since the provider may have
//! billed the calls they covered; a settlement that arrives after all
//! corrects the charge to the actual cost. A hold whose commit's reply was
//! lost (a timeout, a dropped future) stays held until it expires: bounded
//! by its time to live.
//!
//! **When PostgreSQL is unreachable**, every call fails within its timeout
//! with [`ClusterError::Unavailable`]: a hard budget then refuses (fails
//! closed) instead of guessing. The server bounds each session too
//! (statements, lock waits, idle transactions), so a replica cut off
//! mid-transaction cannot keep a budget's row locked.

//!
//! # The shared catalog ([`SharedCatalog`])
//!
//! Every replica serves the models of one table (`catalog_models`: a spec
//! as JSON, the revision of its last change, `config` or `api`), and every
//! change is a row of `catalog_changes` (who, when, which replica, before
//! and after) whose sequence number is the revision it gave. Writes take
//! one advisory lock, so revisions commit in order, and an edit that names
//! the revision it expects ([`SharedCatalog::edit`], the admin API's
//! `If-Match`) is refused with the current one when another came first.
//! Models from the configuration are written at each start and are
//! read-only to edits. A write notifies at commit; replicas listen
//! ([`SharedCatalog::listen`]) and re-read every second anyway.
//!
//! # Records of every replica ([`SharedLedger::ship`])
//!
//! Each replica ships what its store added to its hourly aggregates
//! (requests by verdict, tokens, exact cost, fallbacks, ratings, latency
//! histograms as bytes the caller encodes and merges) per grouping, value
//! and hour, in batches of one transaction each, into rows of its own
//! (`perf_hourly`, keyed by replica: no replica waits on another's
//! locks). A batch carries its replica's run and a sequence number, and is
//! applied once however often it is sent. [`SharedLedger::records`] sums
//! every replica's rows for a report.
//!
//! # Shared ejections ([`SharedEjections`])
//!
//! Only the fact "model X is ejected until T (reason)" is shared; each
//! replica keeps its own circuits' windows, streaks and multipliers. A
//! replica that ejects a model (a cooldown, a circuit opening)
//! [publishes](SharedEjections::publish) it: a key
//! `{prefix}:ejected:{model}` whose time to live is what is left of the
//! ejection (a Lua script never shortens a longer one already there), and
//! a message on `{prefix}:ejections`. Every replica
//! [watches](SharedEjections::watch): a subscriber hears the messages at
//! once, and a re-read of the keys every second (SCAN with a bounded
//! COUNT) heals a missed one, so an ejection reaches every replica within
//! about a second. A replica ignores its own. What is read is checked
//! (names, sizes, times) and skipped with a warning when corrupt: a value
//! in Redis can never panic a replica or eject a model for longer than
//! [`MAX_EJECTION`].
//!
//! **When Redis is unreachable**, every call fails within its timeout,
//! the first failure is logged (never the URL), and sharing is local-only:
//! each replica still ejects on its own evidence, and serving never waits
//! for Redis. The connection and the subscriber come back by themselves.
//! Lossy is fine here: a missed ejection costs a few failed calls on
//! another replica, never money.

mod catalog;
mod ejections;
mod lease;
mod ledger;
mod records;
mod schema;

pub use catalog::{
    CATALOG_CHANNEL, CatalogChange, CatalogState, Current, EditRefused, Edited, ModelSource, SharedCatalog, SharedModel,
};
pub use ejections::{
    EjectionNotice, EjectionWatch, EjectionsConfig, MAX_EJECTION, MAX_MODEL_LEN, PUBLISH_SCRIPT, REREAD_EVERY,
    SharedEjections,
};
pub use lease::{Checkpoint, Report, Slice};
pub use ledger::{
    BudgetKey, Hold, HoldRefused, HoldRow, LedgerStats, PeriodRow, ReplicaRow, SWEEP_BATCH, SharedLedger,
};
pub use records::{HourRow, MergeHist, RecordBatch};

/// What went wrong talking to the shared stores.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The store did not answer in time, or the connection failed: a hard
    /// budget must refuse; shared ejections stay local.
    #[error("the cluster store is unavailable: {0}")]
    Unavailable(String),
    /// A setting is invalid (a schema name that is not an identifier, a
    /// URL that does not parse).
    #[error("invalid cluster setting: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod catalog_tests;
#[cfg(test)]
mod records_tests;
#[cfg(test)]
mod tests;
