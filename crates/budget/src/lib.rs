//! Spend limits in exact money: budgets per scope and calendar period,
//! atomic reservations, threshold alerts, status and forecasts.
//!
//! - A [`BudgetSpec`] limits a [`Scope`] (global, a provider, a model, an API
//!   key or tenant) per [`Period`] (daily, weekly from Monday, monthly, or
//!   never resetting), with calendar boundaries in a configured UTC offset.
//!   [`Enforcement::Hard`] refuses; [`Enforcement::Soft`] only alerts.
//! - [`Budgets::reserve`] holds a call's estimated cost on every applicable
//!   budget atomically; [`Reservation::reconcile`] settles the actual cost;
//!   dropping a reservation releases it. A refusal is an [`Exceeded`] naming
//!   the scope, limit, spent, reserved and reset time; it classifies as
//!   `ErrorClass::BudgetExceeded`.
//! - Thresholds (default 50, 75, 90, 100 %) fire an [`Alert`] exactly once
//!   per period each, delivered to subscribers and kept in history.
//! - [`Status`]: spent, reserved, remaining, percent, period bounds, spend
//!   per provider and model, and a linear [`Forecast`] of the period's end.
//!
//! Invariants: money is integer nano-dollars, so totals never drift; spend
//! may reach a hard limit exactly, never pass it (through reservations);
//! each threshold fires at most once per period.
//!
//! ```
//! use modelfleet_budget::{BudgetSpec, Budgets, Charge, LedgerConfig, Period, Scope};
//! use modelfleet_registry::{ManualClock, Money};
//!
//! let budgets = Budgets::with_clock(LedgerConfig::default(), ManualClock::new(1_795_275_000_000));
//! budgets.add(BudgetSpec::hard(Scope::Provider("openai".into()), Period::Daily, Money::from_dollars(1)))?;
//! let charge = Charge { provider: "openai", model: "gpt-4o", key: Some("team-a") };
//! budgets.reserve(&charge, Money::from_dollars(1))?.reconcile(Money::from_dollars(1));
//! let err = budgets.reserve(&charge, Money::from_nanos(1)).unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "budget exceeded for provider:openai: limit $1, spent $1, reserved $0, this request needs $0.000000001; \
//!      resets at 2026-11-22T00:00:00Z"
//! );
//! assert_eq!(budgets.alerts().iter().map(|a| a.threshold).collect::<Vec<_>>(), [50, 75, 90, 100]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod ledger;
mod period;

pub use crate::{
    ledger::{
        Alert, BudgetSpec, Budgets, Charge, Enforcement, Exceeded, Forecast, LedgerConfig, PeriodRecord, Reservation,
        Scope, Status,
    },
    period::Period,
};

use modelfleet_registry::Money;

/// What can go wrong defining budgets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A negative limit.
    #[error("budget for {scope}: limit ${limit} is negative")]
    InvalidLimit {
        /// The scope.
        scope: Scope,
        /// The limit given.
        limit: Money,
    },
    /// A threshold outside 1..=200 percent (or more than 64 of them).
    #[error("budget for {scope}: threshold {threshold}% is outside 1..=200 (at most 64 thresholds)")]
    InvalidThreshold {
        /// The scope.
        scope: Scope,
        /// The threshold given.
        threshold: u8,
    },
    /// A budget for this scope and period exists.
    #[error("a {period:?} budget for {scope} already exists")]
    Duplicate {
        /// The scope.
        scope: Scope,
        /// The period.
        period: Period,
    },
    /// No budget has this scope.
    #[error("no budget for {0}")]
    NoSuchBudget(Scope),
}

#[cfg(test)]
mod tests;
