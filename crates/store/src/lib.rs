//! SQLite persistence for modelfleet, the only crate that touches rusqlite.
//!
//! One database file holds the model catalog, usage per model, the
//! performance log (one row per request outcome), the budget ledger (spend
//! per budget, period, provider and model), the budgets created through the
//! API with their audit trail, the alert history and the response cache.
//! SQLite is bundled: nothing needs to be installed. The facade `modelfleet`
//! uses it directly; nothing else should.
//!
//! - **Opening reads before it writes.** An existing, non-empty file is
//!   first opened read-only, in a way that creates nothing beside it (a
//!   WAL-mode file without `-wal` is opened `immutable`; a rollback-journal
//!   file read-only gets no side files, and one with an unfinished journal
//!   is refused, not recovered). It must be SQLite, carry modelfleet's
//!   [`APPLICATION_ID`] (`MFLT`) or 0 (what schema versions 1 and 2 wrote),
//!   have a modelfleet schema version and that version's tables (or be an
//!   empty database), not be newer than this build ([`SCHEMA_VERSION`]) and
//!   pass `PRAGMA quick_check`. Only then is it opened read-write (WAL mode,
//!   the pragmas), migrated (`PRAGMA user_version`) and stamped with the
//!   application id, in one transaction; a new file is created that way. A
//!   refused file keeps every byte and nothing is created beside it: the
//!   error names it and says why ([`Error::NotSqlite`], [`Error::Foreign`],
//!   [`Error::Corrupt`], [`Error::TooNew`]); [`quarantine`] moves it aside
//!   on request. [`check`] (`modelfleet db check`) applies the same rules
//!   read-only.
//! - **The integrity check is bounded.** `quick_check` reads the whole
//!   file: on open it runs only for files up to `check_on_open_max_bytes`
//!   ([`CHECK_ON_OPEN_MAX_BYTES`], 256 MiB, by default). A larger file is
//!   opened after the other checks and checked in a background thread;
//!   [`Store::integrity`] says where that stands ([`Integrity::Checking`],
//!   then `Sound` or `Failed`, which is also logged). [`check`] always runs it.
//! - **One writer thread** owns the write connection (WAL mode,
//!   `synchronous=NORMAL`, or `FULL` with [`Durability::PowerLoss`]). Spend,
//!   performance rows, usage, alerts, budget changes and cache entries reach
//!   it through a bounded queue; it commits many of them per transaction.
//! - **Commit returns after COMMIT.** [`Store::commit`] writes a settled
//!   request (its spend on every covering budget, its performance row and
//!   usage update) atomically, and its future resolves once the transaction
//!   holding it has committed: durable against a killed process, and with
//!   [`Durability::PowerLoss`] against power loss.
//! - **Group commit.** A batch holding an op somebody waits for (a commit, a
//!   flush, a budget change) is committed as soon as the queue is drained,
//!   so concurrent commits share one transaction; performance rows alone
//!   are batched (`batch_rows` rows or `batch_wait`).
//! - **Never blocks a tokio worker on the request path.** The `async`
//!   methods wait for room and for their acknowledgement without blocking a
//!   thread; the `*_detached` methods, [`Store::save_alert`] and
//!   [`Store::cache_put`] never wait (a full queue sends the op to an
//!   overflow list the writer drains). Reads, catalog writes,
//!   [`Store::cache_drop_model`], [`Store::shrink_memory`], [`Store::flush`]
//!   and [`Store::close`] block the calling thread: call them off the
//!   runtime (`spawn_blocking`) or outside it.
//! - **Spend is never lost.** When a transaction fails twice its commits
//!   return [`Error::Write`] but their spend stays with the writer and is
//!   re-applied in every later transaction until one commits;
//!   [`Store::spend_backlog`] says why meanwhile (the facade degrades its
//!   budgets and fails hard budgets closed on it). Performance rows, alerts
//!   and cache entries of a failed transaction are dropped and counted.
//! - **Retention.** With `retain_days` (30 by default; 0 keeps everything)
//!   the writer prunes performance-log rows older than that, by their
//!   timestamp and the store's clock, when the store opens and then at most
//!   once an hour, 10,000 rows per transaction interleaved with the other
//!   writes. Nothing else is pruned: spend, usage totals, budgets, alerts,
//!   the catalog and the cache stay.
//! - **Response cache**: keys are SHA-256 of the canonical request
//!   ([`cache_key`]); entries carry the model that answered, a TTL and a
//!   checksum; the cache is held under an entry and a byte limit (oldest
//!   evicted first); [`Store::cache_drop_model`] deletes a model's entries
//!   when its spec changes. Corrupted entries are removed one by one as they
//!   are found, counted, logged (without the value) and reported to a
//!   degradation tracker: repeated corruption bypasses the cache until
//!   writes succeed again. [`Store::shrink_memory`] gives SQLite's spare
//!   memory back, for a memory guard.
//!
//! ```
//! use modelfleet_budget::{Period, Scope};
//! use modelfleet_registry::{Category, Money};
//! use modelfleet_store::{PerfRecord, SpendEntry, Store, StoreConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path().join("fleet.db"), StoreConfig::default())?;
//! let cost = Money::from_nanos(6_000_000);
//! let spend = vec![SpendEntry {
//!     scope: Scope::Global, period: Period::None, period_start_ms: 0, period_end_ms: None,
//!     provider: "openai".into(), model: "gpt-4o".into(), amount: cost,
//! }];
//! let perf = PerfRecord {
//!     at_ms: 1_700_000_000_000, model: "gpt-4o".into(), provider: "openai".into(),
//!     kind: Category::Code, language: Some("en".into()), latency_us: 850_000, ttft_us: None,
//!     input_tokens: 1_200, output_tokens: 300, cached_tokens: 0,
//!     cost, error: None, quality: None, request_id: Some("req-1".into()), key_name: None,
//!     route: None, attempt: 1, fallback: false, rating: None,
//! };
//! let runtime = tokio::runtime::Builder::new_current_thread().build()?;
//! // Resolves after the COMMIT of the transaction holding spend and row.
//! runtime.block_on(store.commit(spend, Some(perf)))?;
//! assert_eq!(store.spend()?[0].spent, cost);
//! assert_eq!(store.usage()?[0].requests, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod hist;
mod history;
mod records;
mod schema;
mod store;
mod writer;

use std::path::{Path, PathBuf};

pub use crate::{
    hist::{Hist, HistError},
    history::{Aggregate, Dim, HOUR_MS, History, HourDelta, Rated, hour_of},
    records::{AlertRecord, AuditRow, PerfRecord, RequestFacts, SpendEntry, SpendRow, UsageRow},
    schema::{
        APPLICATION_ID, CHECK_ON_OPEN_MAX_BYTES, CheckReport, Durability, Integrity, SCHEMA_VERSION, check, quarantine,
    },
    store::{CacheStats, Restored, Store, StoreConfig, cache_key},
};

/// What can go wrong with the database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file exists and is not an SQLite database.
    #[error(
        "{} is not an SQLite database; it was left untouched: move it aside (modelfleet_store::quarantine keeps it as \
         <file>.corrupt-<time>) to start a fresh one",
        path.display()
    )]
    NotSqlite {
        /// The file.
        path: PathBuf,
    },
    /// The file is SQLite but damaged.
    #[error(
        "{} is corrupted ({detail}); it was left untouched: move it aside (modelfleet_store::quarantine keeps it as \
         <file>.corrupt-<time>) to start a fresh one",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the integrity check or SQLite said.
        detail: String,
    },
    /// The file is SQLite but not a modelfleet database: another
    /// application id, a schema that is not modelfleet's, or an unfinished
    /// rollback journal (modelfleet only writes WAL).
    #[error(
        "{} is not a modelfleet database ({reason}); it was left untouched: point modelfleet at another file",
        path.display()
    )]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        reason: String,
    },
    /// The schema is newer than this build understands.
    #[error(
        "{} was written by a newer modelfleet (schema version {found}, this build knows up to {supported}); \
         it was left untouched: upgrade modelfleet or use another file",
        path.display()
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// A file-system error.
    #[error("{}: {message}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        message: String,
    },
    /// SQLite refused an operation.
    #[error("database error while {context}: {message}")]
    Sqlite {
        /// What the store was doing.
        context: &'static str,
        /// What SQLite said (sanitized).
        message: String,
    },
    /// An argument the store cannot take (a rating outside 1 to 5…).
    #[error("{0}")]
    Invalid(String),
    /// A stored row no longer parses.
    #[error("stored {table} row {key:?} cannot be read: {message}")]
    BadRow {
        /// The table.
        table: &'static str,
        /// The row's key.
        key: String,
        /// Why.
        message: String,
    },
    /// Queued writes could not be committed.
    #[error("queued writes failed: {0}")]
    Write(String),
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
}

impl Error {
    fn io(path: &Path, err: &std::io::Error) -> Error {
        Error::Io { path: path.to_owned(), message: err.to_string() }
    }

    fn sqlite(context: &'static str, err: &rusqlite::Error) -> Error {
        Error::Sqlite { context, message: modelfleet_errors::sanitize(&err.to_string()).into_owned() }
    }

    /// An error while opening `path`: "not a database" and corruption codes
    /// become the errors that name the file.
    fn open(path: &Path, err: &rusqlite::Error) -> Error {
        if let rusqlite::Error::SqliteFailure(e, _) = err
            && e.extended_code == rusqlite::ffi::SQLITE_READONLY_ROLLBACK
        {
            return Error::Foreign {
                path: path.to_owned(),
                reason: "it has an unfinished rollback journal (-journal) that only the program that wrote it \
                         should recover"
                    .into(),
            };
        }
        match err.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => Error::NotSqlite { path: path.to_owned() },
            Some(rusqlite::ErrorCode::DatabaseCorrupt) => Error::Corrupt {
                path: path.to_owned(),
                detail: modelfleet_errors::sanitize(&err.to_string()).into_owned(),
            },
            Some(rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::PermissionDenied) => {
                Error::Io { path: path.to_owned(), message: modelfleet_errors::sanitize(&err.to_string()).into_owned() }
            }
            _ => Error::Sqlite {
                context: "opening the database",
                message: modelfleet_errors::sanitize(&err.to_string()).into_owned(),
            },
        }
    }
}

#[cfg(test)]
mod history_tests;
#[cfg(test)]
mod tests;
