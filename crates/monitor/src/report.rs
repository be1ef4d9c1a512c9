//! What reports share: their thresholds, the performance score, the
//! findings a recommendation names, and health (live, from the windows).
//!
//! The reports themselves (ranking, recommendations with alternatives, the
//! overview) are built over the stored history by the `modelfleet`
//! facade, one implementation for the demo, the CLI and the gateway.

use std::{collections::BTreeMap, fmt};

use modelfleet_registry::Money;
use serde::Serialize;

use crate::{Monitor, Totals, Window, stats::Verdict};

/// Thresholds of the reports.
///
/// Every count here is of the outcomes that judge a model ([`Totals::judged`]):
/// client faults and aborted calls neither count toward the minimums nor
/// lower a success rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReportConfig {
    /// Requests a model needs before it is judged.
    pub min_requests: u64,
    /// A success rate under this is worth a recommendation.
    pub low_success_rate: f64,
    /// A p95 above this many times the peers' median p95 is worth one.
    pub slow_factor: f64,
    /// Over the last minute, a success rate under this is "down"...
    pub down_success_rate: f64,
    /// ...and under this (or over 15 minutes, under `degraded_success_rate`) "degraded".
    pub degraded_success_rate: f64,
    /// Requests a window needs before health judges it.
    pub health_min_requests: u64,
    /// A mean user rating (1 to 5) under this is worth a recommendation...
    pub low_rating: f64,
    /// ...once the model has this many ratings.
    pub min_ratings: u64,
}

impl Default for ReportConfig {
    /// Judged after 20 requests; low success under 90%; slow at 2× the peers'
    /// p95; down under 50% over the last minute, degraded under 90% (1 min)
    /// or 95% (15 min), with at least 5 requests in the window; low rated
    /// under a mean of 3 out of 5 over at least 5 ratings.
    fn default() -> Self {
        ReportConfig {
            min_requests: 20,
            low_success_rate: 0.9,
            slow_factor: 2.0,
            down_success_rate: 0.5,
            degraded_success_rate: 0.95,
            health_min_requests: 5,
            low_rating: 3.0,
            min_ratings: 5,
        }
    }
}

/// A model's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Working (or no recent data to say otherwise).
    Healthy,
    /// Failing more than it should.
    Degraded,
    /// Failing most calls.
    Down,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Down => "down",
        })
    }
}

/// What a recommendation is about.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Finding {
    /// Too many failures.
    LowSuccessRate {
        /// Its success rate.
        success_rate: f64,
        /// The threshold.
        threshold: f64,
    },
    /// Much slower than its peers.
    Slow {
        /// Its p95.
        p95_ms: f64,
        /// The median p95 of the other judged models.
        peers_p95_ms: f64,
    },
    /// Its users rate its answers low.
    LowRating {
        /// The mean rating, 1 to 5.
        mean_rating: f64,
        /// How many ratings.
        ratings: u64,
        /// The threshold.
        threshold: f64,
    },
    /// A budget is forecast to pass its limit this period, and this model
    /// spent the most of it.
    OverBudgetForecast {
        /// The budget (`global/monthly`…).
        budget: String,
        /// What it is forecast to reach by the period's end.
        forecast: Money,
        /// Its limit.
        limit: Money,
        /// What this model spent of it so far.
        spent: Money,
    },
}

/// A recommendation with its reason and, when there is one, a better model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    /// The model concerned.
    pub model: String,
    /// Why.
    pub finding: Finding,
    /// A better-performing model that serves the same kinds of request.
    pub alternative: Option<String>,
    /// The whole of it in one sentence.
    pub message: String,
}

/// Health of every model and provider.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    /// The worst of all.
    pub overall: Health,
    /// Per model, sorted by id.
    pub models: BTreeMap<String, Health>,
    /// Per provider.
    pub providers: BTreeMap<String, Health>,
}

/// The performance score of the rankings, 0 to 1: 60% success rate (1, the
/// live signals' prior, when nothing judged the model), 25% speed
/// (`1 / (1 + p95 / 1 s)`), 15% rated quality (0 to 1; 0.5 when unrated).
/// The live ranking and the reports over the stored history both use it.
#[must_use]
pub fn performance_score(success_rate: Option<f64>, p95_ms: f64, quality: Option<f64>) -> f64 {
    let speed = 1.0 / (1.0 + p95_ms / 1_000.0);
    let success_rate = success_rate.unwrap_or(crate::cell::IDLE_PRIOR_SUCCESS);
    let score = 0.6 * success_rate + 0.25 * speed + 0.15 * quality.unwrap_or(0.5);
    if score.is_finite() { score.clamp(0.0, 1.0) } else { 0.0 }
}

impl Monitor {
    /// `model`'s health: down when its last minute is mostly failures or its
    /// last five calls all failed; degraded when it fails more than it should
    /// over the last minute or 15 minutes; else healthy. Only outcomes that
    /// judge the model count: client faults and aborted calls are skipped.
    #[must_use]
    pub fn model_health(&self, model: &str, config: &ReportConfig) -> Health {
        let minute = self.window_stats(model, Window::Minute).totals;
        let quarter = self.window_stats(model, Window::Quarter).totals;
        let recent = self.recent(model);
        let last_judged = recent.iter().rev().map(|e| Verdict::of(e.error)).filter(|v| v.judges()).take(5);
        let last_five_failed = last_judged.filter(|v| *v == Verdict::Failure).count() == 5;
        let judged = |t: &Totals| t.judged() >= config.health_min_requests;
        if last_five_failed || (judged(&minute) && minute.success_rate < config.down_success_rate) {
            Health::Down
        } else if (judged(&minute) && minute.success_rate < config.low_success_rate)
            || (judged(&quarter) && quarter.success_rate < config.degraded_success_rate)
        {
            Health::Degraded
        } else {
            Health::Healthy
        }
    }

    /// The health of every model and provider: a provider is down when all
    /// its models are, degraded when any of them is degraded or down.
    #[must_use]
    pub fn health(&self, config: &ReportConfig) -> HealthReport {
        let mut models = BTreeMap::new();
        let mut by_provider: BTreeMap<String, Vec<Health>> = BTreeMap::new();
        for stats in self.provider_stats() {
            for model in &stats.models {
                let health = self.model_health(model, config);
                models.insert(model.clone(), health);
                by_provider.entry(stats.provider.clone()).or_default().push(health);
            }
        }
        let providers: BTreeMap<String, Health> = by_provider
            .into_iter()
            .map(|(provider, healths)| {
                let health = if healths.iter().all(|h| *h == Health::Down) {
                    Health::Down
                } else if healths.iter().any(|h| *h != Health::Healthy) {
                    Health::Degraded
                } else {
                    Health::Healthy
                };
                (provider, health)
            })
            .collect();
        let overall = providers.values().copied().max().unwrap_or(Health::Healthy);
        HealthReport { overall, models, providers }
    }
}
