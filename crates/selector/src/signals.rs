//! Live signals: how a model is doing right now, from whoever measures it.

use std::{collections::HashMap, hash::BuildHasher};

use modelfleet_registry::{ModelSpec, Money};
use serde::{Deserialize, Serialize};

/// What is known of a model's recent behaviour.
///
/// The default knows nothing: no samples, nothing in flight, no rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Signals {
    /// How many outcomes the success rate and latencies rest on (the monitor
    /// discounts them while the model is idle). 0: nothing measured, and
    /// `success_rate`, `latency_ms` and `latency_p95_ms` are ignored.
    pub samples: u64,
    /// Share of them that succeeded, 0 to 1.
    pub success_rate: f64,
    /// Their average (or EWMA) latency in milliseconds, when measured.
    pub latency_ms: Option<f64>,
    /// Their 95th-percentile latency in milliseconds, when measured: how
    /// long to wait before hedging a call with a second model.
    pub latency_p95_ms: Option<f64>,
    /// Requests running on the model now.
    pub in_flight: u32,
    /// What the provider says is left of its rate limits for this model, 0
    /// (exhausted) to 1 (untouched), while that report is current; `None`
    /// when unknown. The score ranks a model down below 0.2 (see [`Breakdown::rate_limit`]).
    ///
    /// [`Breakdown::rate_limit`]: crate::Breakdown::rate_limit
    pub rate_limit_headroom: Option<f64>,
}

/// The tightest hard budget that would pay for a request served by a model:
/// its name and what is left of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetRoom<'a> {
    /// The budget, as shown in rejections (e.g. `global monthly`).
    pub budget: &'a str,
    /// What is left of it, spent and held money taken off.
    pub remaining: Money,
}

/// A source of [`Signals`] per model id.
///
/// The selector defines this trait and never depends on who implements it:
/// the monitor does (through an adapter in the facade), tests use a map or a
/// closure, and [`NoSignals`] knows nothing.
pub trait LiveSignals {
    /// The signals of model `id` (the default when nothing is known).
    fn signals(&self, id: &str) -> Signals;

    /// The tightest hard budget that would pay for this request on `model`,
    /// if any: a model whose worst-case cost does not fit what is left (or
    /// cannot be bounded) is rejected. The default knows no budgets.
    fn budget_room(&self, _model: &ModelSpec) -> Option<BudgetRoom<'_>> {
        None
    }
}

/// No live data: every model is judged on its catalog entry alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSignals;

impl LiveSignals for NoSignals {
    fn signals(&self, _: &str) -> Signals {
        Signals::default()
    }
}

impl<S: BuildHasher> LiveSignals for HashMap<String, Signals, S> {
    fn signals(&self, id: &str) -> Signals {
        self.get(id).copied().unwrap_or_default()
    }
}

impl<F: Fn(&str) -> Signals> LiveSignals for F {
    fn signals(&self, id: &str) -> Signals {
        self(id)
    }
}
