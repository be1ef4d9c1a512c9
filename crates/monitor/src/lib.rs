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
//! - time-decayed success and latency averages and an in-flight count,
//!   which it serves to the selector as [`LiveSignals`](modelfleet_selector::LiveSignals).
//!
//! Reports: [`Monitor::ranking`] by a performance score,
//! [`Monitor::recommendations`] with their reasons and a better alternative,
//! [`Monitor::overview`] per provider and category, [`Monitor::health`] per
//! model and provider.
//!
//! Invariants: memory per model is fixed (about 64 KiB) and the number of
//! models is capped ([`MonitorConfig::max_models`], beyond which outcomes
//! count under [`OVERFLOW_MODEL`]), so memory stays flat under any traffic;
//! an unknown model gives empty statistics, never an error; recording takes
//! only that model's lock.
//!
//! ```
//! use std::time::Duration;
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
//! assert_eq!(monitor.window_stats("haiku", Window::Minute).totals.requests, 30);
//! assert!(monitor.signals("haiku").success_rate > 0.99);
//! assert!(monitor.recommendations(&ReportConfig::default()).is_empty());
//! # use modelfleet_registry::Clock;
//! ```

mod cell;
mod monitor;
mod report;
mod stats;

pub use crate::{
    cell::Window,
    monitor::{InFlight, InFlightShared, Monitor, MonitorConfig, OVERFLOW_MODEL},
    report::{
        CategorySummary, Finding, Health, HealthReport, Overview, ProviderSummary, Ranked, Recommendation, ReportConfig,
    },
    stats::{Latency, ModelStats, Outcome, ProviderStats, RecentEvent, Tokens, Totals, WindowStats},
};

#[cfg(test)]
mod tests;
