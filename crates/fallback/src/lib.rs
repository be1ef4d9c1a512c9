//! What happens when a model fails: failure tracking, cooldowns, circuit
//! breaking, retry budgets, hedging and the retry/fallback executor.
//!
//! - [`Tracker`] keeps each model's state on time the caller passes in and
//!   hands out RAII [`Permit`]s: a permit is consumed by recording the call's
//!   outcome, and released (neither success nor failure) when dropped, so a
//!   caller future dropped mid-call leaks nothing. A failure's [`ErrorClass`]
//!   decides its cooldown (rate limits honour retry-after; quota ejects at
//!   once; server, connection and timeout streaks eject for base ×
//!   multiplier, Envoy-style; 401/403/404 only when they repeat); a circuit
//!   per model opens on a failure or slow-call ratio over a sliding window,
//!   admits a few probes when half-open (waiting for each, however slow),
//!   and closes after they succeed. Client faults never count against a model. The module
//!   docs of `tracker.rs` list every rule. Replicas share ejections through
//!   it: [`Tracker::with_observer`] tells of each local ejection, and
//!   [`Tracker::eject_remote`] takes another replica's (never told again).
//! - [`RetryBudget`]: retries per provider limited to a share of requests
//!   over a window plus a small floor (Finagle/Envoy), so retries cannot storm.
//! - [`execute`]: serves one request through an async closure, walking the
//!   candidates of a [`Plan`] ([`Order`]: the ranking, an explicit list, or a
//!   named model then its [`implied_fallback`]s; any selector
//!   [`Strategy`](modelfleet_selector::Strategy)), under one deadline, never
//!   sleeping for backoff while another model can take the request, never
//!   retrying a non-retryable error, never trying a model twice except by a
//!   retry, bounded by [`ExecutorConfig::max_attempts_per_request`]. When more
//!   than [`ExecutorConfig::max_ejected_percent`] of the candidates are
//!   ejected, the least recently ejected are tried anyway (the panic
//!   threshold); when every candidate is out but one is back within the
//!   deadline, it waits (jittered). Opt-in [`HedgeAfter`] starts the next
//!   candidate when the first is slow; the first good answer wins.
//!
//! Invariants: no clock is read here (the tracker takes `now`, the executor a
//! [`Timer`](modelfleet_errors::Timer)); a failed model is never its own
//! fallback; every fallback meets the request's requirements.
//!
//! ```
//! use std::time::Duration;
//! use modelfleet_errors::{ErrorClass, Failure, ManualTimer};
//! use modelfleet_fallback::{execute, ExecutorConfig, Order, Plan, Pool, Tracker, TrackerConfig};
//! use modelfleet_registry::default_catalog;
//! use modelfleet_selector::{NoSignals, Requirements};
//!
//! let models = default_catalog()?;
//! let tracker = Tracker::new(TrackerConfig::default());
//! let timer = ManualTimer::new();
//! let pool = Pool {
//!     models: &models,
//!     signals: &NoSignals,
//!     tracker: &tracker,
//!     retry_budget: None,
//!     simulated_providers: &[],
//!     timer: &timer,
//! };
//! let req = Requirements { language: Some("en".into()), ..Requirements::default() };
//! let plan = Plan { order: Order::Ranked, ..Plan::default() };
//! let mut rng = fastrand::Rng::with_seed(1);
//! let runtime = tokio::runtime::Builder::new_current_thread().build()?;
//! // The first choice is down; the executor moves on at once.
//! let mut first = None;
//! let served = runtime.block_on(execute(pool, &req, &plan, &ExecutorConfig::default(), &mut rng, |model, _| {
//!     let down = *first.get_or_insert(model.id.clone()) == model.id;
//!     async move { if down { Err(Failure::new(ErrorClass::ServerError, "503")) } else { Ok("hello") } }
//! }))?;
//! assert_eq!(served.value, "hello");
//! assert!(served.fell_back);
//! assert_eq!(served.attempts.len(), 2);
//! assert!(timer.slept().is_empty(), "no backoff while another model was available");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`ErrorClass`]: modelfleet_errors::ErrorClass

mod executor;
mod retry_budget;
mod tracker;

pub use crate::{
    executor::{
        Attempt, ExecuteError, Executed, ExecutorConfig, HedgeAfter, Order, Plan, Pool, StopReason, describe, execute,
        implied_fallback,
    },
    retry_budget::{RetryBudget, RetryBudgetConfig},
    tracker::{
        Availability, CircuitConfig, CircuitSettings, CircuitState, CooldownConfig, EjectionObserver, EjectionReason,
        InvalidConfig, LocalEjection, ModelHealth, Permit, RemoteEjection, Tracker, TrackerConfig, client_fault,
        counts_against_model,
    },
};

#[cfg(test)]
mod tests;
