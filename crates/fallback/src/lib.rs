//! What happens when a model fails: failure tracking, cooldowns, circuit
//! breaking, fallback chains and the retry/fallback executor.
//!
//! - [`Tracker`] records each model's successes and failures on time the
//!   caller passes in. A failure's [`ErrorClass`] decides its cooldown: a
//!   rate limit honours its retry-after, authentication, not-found and quota
//!   failures cool down long, repeated server errors and connection failures
//!   escalate. A per-model circuit breaker opens when the failure ratio over a
//!   sliding window crosses a threshold (after a minimum of requests), lets a
//!   few probes through when half-open, and closes after they succeed. Its
//!   [`CircuitState`] is observable for metrics.
//! - [`chain`] / [`next_fallback`]: the selector's ranking for the original
//!   requirements, without the failed model and models in cooldown or with an
//!   open circuit; an explicit list overrides the order; a context-window
//!   failure keeps only larger windows. Seed 000's three strategies:
//!   [`FallbackStrategy::Performance`], [`Cost`](FallbackStrategy::Cost),
//!   [`Priority`](FallbackStrategy::Priority); deterministic for equal inputs.
//! - [`execute`]: serves one request through an async closure, walking the
//!   chain (in an [`Order`]: ranked, an explicit list, or a preferred model
//!   first) under the [`RetryPolicy`](modelfleet_errors::RetryPolicy)'s total
//!   deadline, never sleeping for backoff while another model can take the
//!   request, never retrying a non-retryable error, and returning every
//!   [`Attempt`].
//!
//! Invariants: no clock is read here (the tracker takes `now`, the executor a
//! [`Timer`](modelfleet_errors::Timer)); a failed model is never its own fallback.
//!
//! ```
//! use std::time::Duration;
//! use modelfleet_errors::{ErrorClass, Failure, ManualTimer};
//! use modelfleet_fallback::{execute, ExecutorConfig, Fleet, Order, Tracker, TrackerConfig};
//! use modelfleet_registry::default_catalog;
//! use modelfleet_selector::{NoSignals, Requirements};
//!
//! let models = default_catalog()?;
//! let tracker = Tracker::new(TrackerConfig::default());
//! let timer = ManualTimer::new();
//! let fleet = Fleet { models: &models, signals: &NoSignals, tracker: &tracker, timer: &timer };
//! let req = Requirements { language: Some("en".into()), ..Requirements::default() };
//! let mut rng = fastrand::Rng::with_seed(1);
//! let runtime = tokio::runtime::Builder::new_current_thread().build()?;
//! // The first choice is down; the executor moves on at once.
//! let mut first = None;
//! let served = runtime.block_on(execute(fleet, &req, Order::Ranked, &ExecutorConfig::default(), &mut rng, |model, _| {
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

mod chain;
mod executor;
mod tracker;

pub use crate::{
    chain::{ChainInput, Failed, FallbackStrategy, chain, next_fallback},
    executor::{Attempt, ExecuteError, Executed, ExecutorConfig, Fleet, Order, StopReason, execute},
    tracker::{
        Availability, CircuitConfig, CircuitState, CooldownConfig, ModelHealth, Tracker, TrackerConfig,
        counts_against_model,
    },
};

#[cfg(test)]
mod tests;
