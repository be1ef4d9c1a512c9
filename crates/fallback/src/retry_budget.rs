//! A retry budget per provider (Finagle's `RetryBudget`, Envoy's
//! `retry_budget`): retries may add at most a share of the traffic, plus a
//! small floor, so retries cannot multiply the load on a provider that is
//! already failing.
//!
//! Invariants:
//! - Over the sliding `window` (10 buckets of `window / 10`, like the
//!   tracker's circuit window: a count leaves it between 9 and 10 bucket
//!   widths after it entered), a retry is allowed iff
//!   `retries + 1 <= min_per_sec × window_secs + ratio × requests`, where
//!   `requests` counts [`RetryBudget::record_request`] calls (one per
//!   request's first attempt on the provider) and `retries` the retries
//!   allowed. A refused retry is not counted.
//! - The settings passed [`RetryBudgetConfig::check`]: [`RetryBudget::new`]
//!   refuses any other.
//! - Counts decay with time only; no clock is read (`now` is an argument) and
//!   no background task runs.
//! - Providers are independent; each is keyed by its whole name.

use std::{sync::Arc, time::Duration};

use dashmap::DashMap;
use rustc_hash::FxBuildHasher;

use crate::tracker::{InvalidConfig, Ring, bucket_width};

/// How many retries a provider's budget allows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    /// Retries allowed per request in the window, as a share of requests
    /// (0.2 = 20%: one retry per five requests), in [0, 10].
    pub ratio: f64,
    /// Retries allowed per second of the window whatever the traffic, >= 0.
    pub min_per_sec: f64,
    /// The sliding window, > 0.
    pub window: Duration,
}

impl Default for RetryBudgetConfig {
    /// 20% of requests plus 1 retry per second, over 10 s.
    fn default() -> Self {
        RetryBudgetConfig { ratio: 0.2, min_per_sec: 1.0, window: Duration::from_secs(10) }
    }
}

impl RetryBudgetConfig {
    /// Checks the settings: `ratio` finite in [0, 10], `min_per_sec`
    /// finite and >= 0, `window` > 0; the message names the field and value.
    pub fn check(&self) -> Result<(), InvalidConfig> {
        // NaN is in no range.
        if !(0.0..=10.0).contains(&self.ratio) {
            return Err(InvalidConfig(format!("retry budget ratio must be in [0, 10] (got {})", self.ratio)));
        }
        let floor_ok = self.min_per_sec.is_finite() && self.min_per_sec >= 0.0;
        if !floor_ok {
            return Err(InvalidConfig(format!(
                "retry budget min_per_sec must be finite and >= 0 (got {})",
                self.min_per_sec
            )));
        }
        if self.window.is_zero() {
            return Err(InvalidConfig(format!(
                "retry budget window must be greater than zero (got {:?})",
                self.window
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    requests: u32,
    retries: u32,
}

/// Every provider's retry budget, shared by all requests (thread-safe; one
/// provider's update locks only its shard).
///
/// ```
/// use std::time::Duration;
/// use modelfleet_fallback::{RetryBudget, RetryBudgetConfig};
///
/// let config = RetryBudgetConfig { ratio: 0.5, min_per_sec: 0.0, window: Duration::from_secs(10) };
/// let budget = RetryBudget::new(config)?;
/// let t = Duration::from_secs(1);
/// for _ in 0..4 {
///     budget.record_request("openai", t);
/// }
/// assert!(budget.try_retry("openai", t));
/// assert!(budget.try_retry("openai", t));
/// assert!(!budget.try_retry("openai", t), "half of 4 requests");
/// assert_eq!(budget.remaining("openai", t), 0.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    // Invariant: passed `RetryBudgetConfig::check` (so every setting is finite).
    config: RetryBudgetConfig,
    providers: DashMap<Arc<str>, Ring<Tally>, FxBuildHasher>,
}

impl RetryBudget {
    /// A budget with no requests seen, or the first setting
    /// [`RetryBudgetConfig::check`] refuses.
    pub fn new(config: RetryBudgetConfig) -> Result<RetryBudget, InvalidConfig> {
        config.check()?;
        Ok(RetryBudget { config, providers: DashMap::with_hasher(FxBuildHasher) })
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &RetryBudgetConfig {
        &self.config
    }

    fn width(&self) -> Duration {
        bucket_width(self.config.window)
    }

    fn with_ring<R>(&self, provider: &str, f: impl FnOnce(&mut Ring<Tally>) -> R) -> R {
        if let Some(mut ring) = self.providers.get_mut(provider) {
            return f(&mut ring);
        }
        f(&mut self.providers.entry(Arc::from(provider)).or_default())
    }

    /// Requests and retries in the window ending at `now`.
    fn totals(&self, ring: &Ring<Tally>, now: Duration) -> (u64, u64) {
        ring.live(self.width(), now)
            .fold((0, 0), |(requests, retries), t| (requests + u64::from(t.requests), retries + u64::from(t.retries)))
    }

    /// Retries the window allows when it holds `requests` requests.
    fn allowance(&self, requests: u64) -> f64 {
        self.config.min_per_sec * self.config.window.as_secs_f64() + self.config.ratio * requests as f64
    }

    /// Counts a request's first attempt on `provider` at `now`.
    pub fn record_request(&self, provider: &str, now: Duration) {
        let width = self.width();
        self.with_ring(provider, |ring| {
            let tally = ring.at(width, now);
            tally.requests = tally.requests.saturating_add(1);
        });
    }

    /// Whether a retry on `provider` at `now` fits the budget; when it does,
    /// it is counted.
    #[must_use = "a retry allowed is counted: make it"]
    pub fn try_retry(&self, provider: &str, now: Duration) -> bool {
        let width = self.width();
        self.with_ring(provider, |ring| {
            let (requests, retries) = self.totals(ring, now);
            let allowed = (retries + 1) as f64 <= self.allowance(requests);
            if !allowed {
                return false;
            }
            let tally = ring.at(width, now);
            tally.retries = tally.retries.saturating_add(1);
            true
        })
    }

    /// The retries `provider` may still make at `now` (the allowance minus
    /// the retries in the window, never below 0): the gauge.
    #[must_use]
    pub fn remaining(&self, provider: &str, now: Duration) -> f64 {
        let (requests, retries) = self.providers.get(provider).map_or((0, 0), |ring| self.totals(&ring, now));
        (self.allowance(requests) - retries as f64).max(0.0)
    }

    /// Every provider seen, sorted.
    #[must_use]
    pub fn providers(&self) -> Vec<String> {
        let mut out: Vec<String> = self.providers.iter().map(|entry| entry.key().to_string()).collect();
        out.sort();
        out
    }
}

#[cfg(test)]
#[path = "retry_budget_tests.rs"]
mod tests;
