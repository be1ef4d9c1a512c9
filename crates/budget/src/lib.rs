//! Spend limits in exact money: budgets per scope and calendar period,
//! atomic reservations, threshold alerts, status and forecasts.
//!
//! The gateway's request path uses it through the `modelfleet` facade: it
//! asks [`Budgets::headroom`] once per request to route within budget,
//! [`Budgets::reserve`]s a call's estimated cost before calling upstream and
//! [`Reservation::reconcile_charged`]s the actual cost after; the store
//! persists what that returns and gives it back through [`Budgets::restore`]
//! and [`Budgets::restore_alerts`] after a restart.
//!
//! - A [`BudgetSpec`] limits a [`Scope`] (global, a provider, a model, an API
//!   key or tenant) per [`Period`] (daily, weekly from Monday, monthly, or
//!   never resetting), with calendar boundaries in a configured UTC offset.
//!   [`Enforcement::Hard`] refuses; [`Enforcement::Soft`] only alerts.
//! - **Identity:** a budget is its scope *and* its period. Every status,
//!   history, alert, refusal, charge and administrative call names both.
//! - **Boundary:** spend may reach a hard limit exactly and never pass it.
//!   [`Budgets::reserve`] holds a nonzero amount on every covering budget
//!   atomically, only when `spent + reserved + amount <= limit` for every
//!   covering hard budget; otherwise it is an [`Exceeded`] (classified as
//!   `ErrorClass::BudgetExceeded`) naming the scope, period, limit, spent,
//!   reserved and reset time, and nothing is held. Dropping a reservation
//!   releases it.
//! - **Zero holds:** a zero amount always passes, even at or past a limit, so
//!   free models stay servable.
//! - **Overshoot:** the actual cost is always charged in full: the money is
//!   spent. An upstream that ignores `max_tokens` can cost more than was
//!   held; the settlement reports how far that took a hard budget past its
//!   limit ([`Settled::overshoot`]; [`Budgets::spend`], which holds nothing,
//!   returns it too), and the budget then refuses every paid request until
//!   its period ends, it is reset or its limit raised. This is the only way
//!   spend passes a hard limit (besides lowering a limit under requests in
//!   flight).
//! - **Administration:** [`Budgets::set_limit`] (at once, also for requests in
//!   flight, whose holds stay), [`Budgets::reset`] (zeroes the period's spend
//!   and fired thresholds, keeps holds) and [`Budgets::remove`] (reservations
//!   holding a removed budget skip it when they settle).
//! - Thresholds (default 50, 75, 90, 100 %) fire an [`Alert`] exactly once
//!   per period each, delivered to subscribers and kept in history.
//! - [`Status`]: spent, reserved, remaining, percent, period bounds, how much
//!   of the period the numbers rest on, spend per provider and model, and a
//!   [`Forecast`]: the spend extended linearly to the period's end plus the
//!   money reserved, once at least 10% of the period or 24 hours of it have
//!   elapsed.
//!
//! **What the stack charges** (the facade's `books.rs` applies these rules;
//! this crate spends what it is given):
//!
//! - the hold is the request's worst case: its prompt plus `n` answers, each
//!   bounded by the least of the output cap, the model's output limit and
//!   what its context window leaves (`modelfleet_selector::worst_case_cost`);
//! - an answer is charged its usage at the model's prices;
//! - a non-streamed call whose client left runs to its end and is charged
//!   the usage the upstream reports;
//! - a stream is charged its usage, else the prompt plus the tokens relayed
//!   (a stream left before its first event: the prompt);
//! - the hold itself (the worst case) is charged only when the usage can
//!   never be known: a timeout after the request was sent, a 200 that cannot
//!   be read or reports no usage, a call whose caller dropped it mid-way;
//! - a failure the provider does not bill (an error answer, a refused
//!   connection) is charged nothing.
//!
//! Invariants: money is integer nano-dollars, so totals never drift; the sum
//! of the actual costs settled is exactly what each budget spent; for every
//! hard budget, `spent <= limit + the overshoots reported` (while its limit
//! is not lowered); each threshold fires at most once per period.
//!
//! ```
//! use modelfleet_budget::{BudgetSpec, Budgets, Charge, LedgerConfig, Period, Scope};
//! use modelfleet_registry::{ManualClock, Money};
//!
//! let budgets = Budgets::with_clock(LedgerConfig::default(), ManualClock::new(1_795_275_000_000));
//! let openai = Scope::Provider("openai".into());
//! budgets.add(BudgetSpec::hard(openai.clone(), Period::Daily, Money::from_dollars(1)))?;
//! let charge = Charge { provider: "openai", model: "gpt-4o", key: Some("team-a") };
//!
//! // Reaching the limit exactly is allowed; one nano-dollar more is not.
//! budgets.reserve(&charge, Money::from_dollars(1))?.reconcile(Money::from_dollars(1));
//! let err = budgets.reserve(&charge, Money::from_nanos(1)).unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "budget exceeded for provider:openai daily: limit $1, spent $1, reserved $0, \
//!      this request needs $0.000000001; resets at 2026-11-22T00:00:00Z"
//! );
//! assert_eq!(budgets.alerts().iter().map(|a| a.threshold).collect::<Vec<_>>(), [50, 75, 90, 100]);
//!
//! // A free call still passes; if it costs after all, that is an overshoot.
//! let settled = budgets.reserve(&charge, Money::ZERO)?.reconcile_charged("0.01".parse()?);
//! assert_eq!(settled.overshoot.to_string(), "0.01");
//! assert_eq!(budgets.status(&openai, Period::Daily).map(|s| s.spent.to_string()), Some("1.01".into()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod ledger;
mod parse;
mod period;

pub use crate::{
    ledger::{
        Alert, BudgetSpec, Budgets, Charge, Charged, Enforcement, Exceeded, Forecast, HardPeriod, Headroom,
        LedgerConfig, PeriodRecord, Reservation, Room, Scope, Settled, Status,
    },
    parse::ParseError,
    period::{Period, rfc3339},
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
    #[error("a {period} budget for {scope} already exists")]
    Duplicate {
        /// The scope.
        scope: Scope,
        /// The period.
        period: Period,
    },
    /// No budget has this scope and period.
    #[error("no {period} budget for {scope}")]
    NoSuchBudget {
        /// The scope.
        scope: Scope,
        /// The period.
        period: Period,
    },
}

#[cfg(test)]
mod tests;
