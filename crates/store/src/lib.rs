//! SQLite persistence for modelfleet, the only crate that touches rusqlite.
//!
//! One database file holds the model catalog, usage per model, the
//! performance log (one row per request outcome), the budget ledger, the
//! alert history and the response cache. SQLite is bundled: nothing needs
//! to be installed.
//!
//! - **Opening** checks the file is SQLite, runs `PRAGMA quick_check`,
//!   refuses a schema newer than this build, then applies migrations
//!   (`PRAGMA user_version`) in one transaction. A refused file is never
//!   touched: the error names it and [`quarantine`] moves it aside on request.
//! - **Writing**: WAL mode, `synchronous=NORMAL`, a busy timeout, foreign
//!   keys on. One writer thread commits queued writes in batches (N rows or
//!   T ms) with cached statements; the queue is bounded (writers wait when
//!   it is full). [`Store::flush`] returns once everything queued before it
//!   is committed. Budget spend, catalog changes and alerts are committed
//!   before their call returns.
//! - **Durability contract**: once `flush` (or a strict write) has returned,
//!   the data survives the process being killed (tested with SIGKILL); with
//!   [`Durability::PowerLoss`], power failure too.
//! - **Response cache**: keys are SHA-256 of the canonical request
//!   ([`cache_key`]); entries carry a TTL and a checksum; the cache is held
//!   under an entry and a byte limit (oldest evicted first). Corrupted entries
//!   are removed one by one as they are found, counted, and reported to a
//!   degradation tracker: repeated corruption bypasses the cache until
//!   writes succeed again.
//!
//! ```
//! use modelfleet_store::{PerfRecord, Store, StoreConfig};
//! use modelfleet_registry::{Category, Money};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path().join("fleet.db"), StoreConfig::default())?;
//! store.record(PerfRecord {
//!     at_ms: 1_700_000_000_000, model: "gpt-4o".into(), provider: "openai".into(),
//!     kind: Category::Code, language: Some("en".into()), latency_us: 850_000, ttft_us: None,
//!     input_tokens: 1_200, output_tokens: 300, cached_tokens: 0,
//!     cost: Money::from_nanos(6_000_000), error: None, quality: None,
//! })?;
//! store.flush()?;
//! assert_eq!(store.usage()?[0].requests, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod records;
mod schema;
mod store;
mod writer;

use std::path::{Path, PathBuf};

pub use crate::{
    records::{AlertRecord, PerfRecord, SpendRow, UsageRow},
    schema::{CheckReport, Durability, SCHEMA_VERSION, check, quarantine},
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
        match err.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => Error::NotSqlite { path: path.to_owned() },
            Some(rusqlite::ErrorCode::DatabaseCorrupt) => Error::Corrupt {
                path: path.to_owned(),
                detail: modelfleet_errors::sanitize(&err.to_string()).into_owned(),
            },
            _ => Error::Sqlite {
                context: "opening the database",
                message: modelfleet_errors::sanitize(&err.to_string()).into_owned(),
            },
        }
    }
}

#[cfg(test)]
mod tests;
