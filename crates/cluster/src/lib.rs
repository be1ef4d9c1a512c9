//! What several gateway replicas share, in PostgreSQL: for now, the ledger
//! of hard budgets, so N replicas together never let more through than one
//! budget allows.
//!
//! One `modelfleet serve` on SQLite needs none of this; replicas behind a
//! load balancer point `[cluster] postgres_url` at one database.
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

mod lease;
mod ledger;
mod schema;

pub use lease::{Checkpoint, Slice};
pub use ledger::{
    BudgetKey, Hold, HoldRefused, HoldRow, LedgerStats, PeriodRow, ReplicaRow, SWEEP_BATCH, SharedLedger,
};

/// What went wrong talking to the shared stores.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The store did not answer in time, or the connection failed: a hard
    /// budget must refuse.
    #[error("the cluster store is unavailable: {0}")]
    Unavailable(String),
    /// A setting is invalid (a schema name that is not an identifier, a
    /// URL that does not parse).
    #[error("invalid cluster setting: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests;
