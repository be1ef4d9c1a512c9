//! How each model is doing: latency percentiles, success rates, tokens and
//! exact cost, over all time and over sliding windows, in bounded memory.
//!
//! [`Monitor::record`] takes one [`Outcome`] (model, provider, kind,
//! language, latency and time to first token, tokens, cost, error class,
//! user rating), timestamped by an injected [`Clock`](modelfleet_registry::Clock).
//! Per model it keeps:
//!
//! - all-time counts, tokens, cost, errors per class, requests per kind,
//!   mean user rating, first and last use;
//! - latency and time-to-first-token histograms (`HdrHistogram`) (1 µs to 1 h, 2
//!   significant figures) for p50/p95/p99;
//! - four [`Window`]s (1 min, 15 min, 1 h, 1 day) as rings of fixed slots;
//! - a bounded buffer of recent events;
//! - time-decayed success and latency averages, a recent p95 latency, an
//!   in-flight count and the provider's rate-limit headroom
//!   ([`Monitor::record_rate_limit`], [`rate_limit_headroom`]), which it
//!   serves to the selector as [`LiveSignals`](modelfleet_selector::LiveSignals).
//!
//! **What counts against a model.** Every outcome counts in `requests`
//! (and in tokens, cost, the per-class error counts and the recent events),
//! but only successes and the model's own failures *judge* it. Client
//! faults ([`ErrorClass::BadRequest`], [`ErrorClass::ContentPolicy`],
//! [`ErrorClass::ContextWindowExceeded`]: any model would have refused the
//! request) count as [`Totals::client_faults`]; calls cancelled by the
//! caller ([`ErrorClass::Cancelled`]) or refused by a modelfleet budget
//! ([`ErrorClass::BudgetExceeded`]) as [`Totals::aborted`]. So
//! `requests = successes + failures + client_faults + aborted`, and
//! `success_rate = successes / (requests − client_faults − aborted)`. Those
//! outcomes never lower a success rate (all-time, windows, reports, live
//! signals), never make a model degraded or down in [`Monitor::health`],
//! and are not part of its latency (its time to first token, when reported,
//! is).
//!
//! **Idle models.** The live signals decay toward the prior (success rate
//! 1, no samples) with [`MonitorConfig::idle_half_life`] while a model has
//! no outcome, computed when read: a model ejected after failures gets
//! traffic again instead of being starved forever.
//!
//! [`ErrorClass::BadRequest`]: modelfleet_errors::ErrorClass::BadRequest
//! [`ErrorClass::ContentPolicy`]: modelfleet_errors::ErrorClass::ContentPolicy
//! [`ErrorClass::ContextWindowExceeded`]: modelfleet_errors::ErrorClass::ContextWindowExceeded
//! [`ErrorClass::Cancelled`]: modelfleet_errors::ErrorClass::Cancelled
//! [`ErrorClass::BudgetExceeded`]: modelfleet_errors::ErrorClass::BudgetExceeded
//!
//! Health: [`Monitor::health`] per model and provider, from the windows;
//! [`performance_score`] is the score every ranking uses (the reports over
//! the stored history are the `modelfleet` facade's).
//!
//! Invariants: memory per model is fixed (about 64 KiB) and the number of
//! models is capped ([`MonitorConfig::max_models`], beyond which outcomes
//! count under [`OVERFLOW_MODEL`]), so memory stays flat under any traffic;
//! an unknown model gives empty statistics, never an error; recording takes
//! only that model's lock.
//!
//! ```
//! use std::time::Duration;
//! use modelfleet_errors::ErrorClass;
//! use modelfleet_monitor::{Monitor, MonitorConfig, Outcome, ReportConfig, Window};
//! use modelfleet_registry::ManualClock;
//! use modelfleet_selector::LiveSignals;
//!
//! let clock = std::sync::Arc::new(ManualClock::new(1_700_000_000_000));
//! let ticking = std::sync::Arc::clone(&clock);
//! let monitor = Monitor::with_clock(MonitorConfig::default(), move || ticking.now_ms());
//! for _ in 0..30 {
//!     monitor.record(&Outcome::success("haiku", "anthropic", Duration::from_millis(400)));
//!     clock.advance_ms(1_000);
//! }
//! // The request was at fault: counted, but not against the model.
//! let bad = Outcome::success("haiku", "anthropic", Duration::from_millis(20));
//! monitor.record(&bad.failed(ErrorClass::BadRequest));
//! let minute = monitor.window_stats("haiku", Window::Minute).totals;
//! assert_eq!((minute.requests, minute.client_faults, minute.success_rate), (31, 1, 1.0));
//! assert!(monitor.signals("haiku").success_rate > 0.99);
//! assert_eq!(monitor.model_health("haiku", &ReportConfig::default()), modelfleet_monitor::Health::Healthy);
//! # use modelfleet_registry::Clock;
//! ```

mod cell;
mod monitor;
mod report;
mod stats;

pub use crate::{
    cell::Window,
    monitor::{InFlight, InFlightShared, LiveAt, Monitor, MonitorConfig, OVERFLOW_MODEL, rate_limit_headroom},
    report::{Finding, Health, HealthReport, Recommendation, ReportConfig, performance_score},
    stats::{Latency, ModelStats, Outcome, ProviderStats, RecentEvent, Tokens, Totals, Verdict, WindowStats},
};

#[cfg(test)]
mod tests;
