//! Fallback chains: who takes the request after a model failed.

use std::{borrow::Borrow, time::Duration};

use modelfleet_errors::ErrorClass;
use modelfleet_registry::ModelSpec;
use modelfleet_selector::{LiveSignals, Requirements, SelectorConfig, Strategy, Weights, rank};
use serde::{Deserialize, Serialize};

use crate::Tracker;

/// How fallback candidates are ordered (seed 000's three strategies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackStrategy {
    /// Best weighted score first: quality, live reliability, speed, load…
    #[default]
    Performance,
    /// Lowest estimated cost first.
    Cost,
    /// Highest catalog priority first.
    Priority,
}

impl FallbackStrategy {
    /// The selector configuration that orders candidates this way.
    #[must_use]
    pub fn selector_config(self, weights: Weights) -> SelectorConfig {
        let strategy = match self {
            FallbackStrategy::Performance => Strategy::WeightedScore,
            FallbackStrategy::Cost => Strategy::Cheapest,
            FallbackStrategy::Priority => Strategy::PriorityOrder,
        };
        SelectorConfig { weights, strategy }
    }
}

/// The failure a fallback answers.
#[derive(Debug, Clone, Copy)]
pub struct Failed<'a> {
    /// The model that failed.
    pub model: &'a ModelSpec,
    /// How it failed.
    pub class: ErrorClass,
}

/// What a chain is built from, besides the models.
#[derive(Debug, Clone, Copy)]
pub struct ChainInput<'r, S> {
    /// The original request's requirements: every fallback meets them.
    pub requirements: &'r Requirements,
    /// Live signals for scoring.
    pub signals: &'r S,
    /// The order.
    pub strategy: FallbackStrategy,
    /// Score weights for the performance strategy.
    pub weights: Weights,
    /// An explicit fallback list (per model or route): when given, it
    /// replaces the ranking's order (ids not eligible are skipped).
    pub explicit: Option<&'r [String]>,
    /// Now, on the tracker's clock.
    pub now: Duration,
}

/// The fallback chain after `failed`: models meeting the original
/// requirements, best first by the strategy (or in the explicit list's
/// order), without the failed model, without models in cooldown or with an
/// open circuit, and — after a context-window failure — only models with a
/// larger known window than the failed one.
pub fn chain<'a, M: Borrow<ModelSpec>, S: LiveSignals>(
    models: &'a [M],
    failed: Failed<'_>,
    input: &ChainInput<'_, S>,
    tracker: &Tracker,
) -> Vec<&'a ModelSpec> {
    let config = input.strategy.selector_config(input.weights);
    let ranked = rank(models, input.requirements, input.signals, &config);
    let usable = |m: &ModelSpec| may_take_over(m, failed, tracker, input.now);
    match input.explicit {
        Some(order) => order
            .iter()
            .filter_map(|id| ranked.iter().find(|r| r.model.id == *id))
            .map(|r| r.model)
            .filter(|m| usable(m))
            .collect(),
        None => ranked.into_iter().map(|r| r.model).filter(|m| usable(m)).collect(),
    }
}

/// The first model of [`chain`], found without building the whole chain.
pub fn next_fallback<'a, M: Borrow<ModelSpec>, S: LiveSignals>(
    models: &'a [M],
    failed: Failed<'_>,
    input: &ChainInput<'_, S>,
    tracker: &Tracker,
) -> Option<&'a ModelSpec> {
    if input.explicit.is_some() {
        return chain(models, failed, input, tracker).into_iter().next();
    }
    let config = input.strategy.selector_config(input.weights);
    let keep = |m: &ModelSpec| may_take_over(m, failed, tracker, input.now);
    modelfleet_selector::select_where(models, input.requirements, input.signals, &config, keep).ok().map(|r| r.model)
}

/// Whether `m` may take the request over after `failed` at `now`: another
/// model, available, and after a context-window failure one with a larger window.
fn may_take_over(m: &ModelSpec, failed: Failed<'_>, tracker: &Tracker, now: Duration) -> bool {
    m.id != failed.model.id
        && (failed.class != ErrorClass::ContextWindowExceeded || larger_window(m, failed.model))
        && tracker.availability(&m.id, now).is_available()
}

/// Whether `candidate`'s known window is larger than `failed`'s (an unknown
/// window is never larger; any known one beats an unknown failed one).
pub(crate) fn larger_window(candidate: &ModelSpec, failed: &ModelSpec) -> bool {
    match (candidate.context_window, failed.context_window) {
        (Some(c), Some(f)) => c > f,
        (Some(_), None) => true,
        (None, _) => false,
    }
}
