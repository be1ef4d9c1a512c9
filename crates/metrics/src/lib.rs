//! What the monitoring system sees: counters, latency histograms, memory and
//! throughput, exported as JSON and as Prometheus text exposition 0.0.4.
//!
//! [`Metrics`] records from any thread with atomics (the overall latency's
//! percentile histogram behind one short lock):
//!
//! - requests, errors per class, response-cache hits and misses (hit rate);
//! - request latency: P50/P95/P99 from an HdrHistogram and fixed Prometheus
//!   buckets ([`LATENCY_BUCKETS`]); a negative latency is refused;
//! - per model: requests per outcome, a latency histogram, tokens and exact
//!   cost. Only ids made known with [`Metrics::set_known_models`] (the
//!   catalog's) become labels; any other id is counted as [`OTHER_MODEL`],
//!   so a hostile client cannot explode label cardinality;
//! - process memory (current, peak, growth) from a [`MemorySource`]
//!   (sysinfo's [`ProcessMemory`] by default); when unavailable, that
//!   section says so and every other export works;
//! - throughput: total, per second since start, and over a sliding window;
//! - failure handling ([`Category::Resilience`]), set by the fallback
//!   tracker and executor: per model its circuit state
//!   (`modelfleet_model_circuit_state`, 0 closed, 1 half-open, 2 open),
//!   ejections (`modelfleet_model_ejections_total`), ejection multiplier
//!   (`modelfleet_model_ejection_multiplier`) and cooldown left
//!   (`modelfleet_model_cooldown_remaining_seconds`), from
//!   [`Metrics::set_model_resilience`]; per provider its retry budget left
//!   (`modelfleet_provider_retry_budget_remaining`, from
//!   [`Metrics::set_retry_budget`]) and hedges started and won
//!   (`modelfleet_provider_hedges_started_total`,
//!   `modelfleet_provider_hedges_won_total`, from [`Metrics::record_hedge`]).
//!   At most [`MetricsConfig::max_series`] models and providers each: a new
//!   state or retry budget beyond is refused, hedges beyond are counted
//!   under [`OTHER_PROVIDER`];
//! - budgets and application gauges set by the stack (a gauge is exported
//!   as `modelfleet_<name>`, never with the prefix doubled; one named
//!   `…_total` is a counter the caller keeps, typed `counter`).
//!
//! [`Metrics::to_json`] and [`Metrics::to_prometheus`] export any subset of
//! [`Category`]s ([`Category::parse_list`] reads `cache,latency`; an
//! unknown name is an error listing the valid ones). [`Metrics::reset`]
//! zeroes categories.
//!
//! The JSON schema (`"schema": "modelfleet.metrics.v1"`) is the
//! serialization of [`Snapshot`]: `timestamp_ms`, `uptime_seconds`, then one
//! object per requested category (`cache`, `latency`, `memory`,
//! `throughput`, `errors`, `models`, `resilience`, `budget`, `gauges`);
//! money is a decimal string of dollars.
//!
//! ```
//! use modelfleet_metrics::{Category, Metrics, MetricsConfig, NoMemory};
//! use modelfleet_registry::ManualClock;
//!
//! let metrics = Metrics::with_sources(MetricsConfig::default(), ManualClock::new(0), NoMemory::default());
//! for _ in 0..7 { metrics.record_cache_hit(); }
//! for _ in 0..3 { metrics.record_cache_miss(); }
//! assert!(metrics.record_latency(-0.1).is_err());
//! let json = metrics.to_json(&Category::parse_list("cache,memory")?);
//! assert_eq!(json["cache"]["hit_rate"], 0.7);
//! assert_eq!(json["memory"]["available"], false);
//! let text = metrics.to_prometheus(&[Category::Cache]);
//! assert!(text.contains("# TYPE modelfleet_cache_hits_total counter\nmodelfleet_cache_hits_total 7\n"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod category;
mod collector;
mod export;
mod memory;

pub use crate::{
    category::Category,
    collector::{LATENCY_BUCKETS, Metrics, MetricsConfig, ModelResilience, OTHER_MODEL, OTHER_PROVIDER, RequestSample},
    export::{
        BudgetMetrics, CacheStats, ErrorStats, HedgeStats, LatencyStats, MemoryStats, ModelMetrics, OvershootStats,
        ResilienceStats, SCHEMA, Snapshot, ThroughputStats,
    },
    memory::{MemorySource, NoMemory, ProcessMemory},
};

/// What can go wrong recording or exporting metrics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A latency that is negative, infinite or not a number.
    #[error("latency must be a finite number of seconds >= 0, got {0}")]
    InvalidLatency(f64),
    /// Unknown export categories.
    #[error("unknown metrics categor{} {}; valid: {}", if .0.len() == 1 { "y" } else { "ies" }, .0.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(", "), Category::ALL.map(Category::as_str).join(", "))]
    UnknownCategory(Vec<String>),
    /// A gauge name Prometheus would not accept.
    #[error("invalid metric name {0:?}: use letters, digits, '_' and ':', not starting with a digit")]
    InvalidName(String),
    /// A bounded set of series is full.
    #[error("too many {kind}: at most {max}")]
    TooManySeries {
        /// Which set.
        kind: &'static str,
        /// Its bound.
        max: usize,
    },
}

#[cfg(test)]
mod tests;
