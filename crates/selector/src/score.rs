//! Soft preferences: the weighted score of an eligible model.
//!
//! The total is the weighted sum of the components (each in 0..=1) times
//! the rate-limit factor: a model whose provider reports little headroom
//! left (under 20% of its requests or tokens) is ranked down before it
//! starts answering 429. With headroom `h` clamped to 0..=1 (unknown: no
//! effect), the factor is `0.25 + 0.75 × min(h / 0.2, 1)`: 1 from 0.2 up,
//! falling linearly to 0.25 at 0. It never reaches 0, so a model at its
//! limit still ranks when nothing else can serve.

use modelfleet_registry::{Category, ModelSpec, Money};
use serde::{Deserialize, Serialize};

use crate::{Requirements, Signals};

/// How much each component counts in the weighted score.
///
/// Every weight must be finite and non-negative ([`Weights::check`]); the
/// defaults favour quality and reliability, then cost and speed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Weights {
    /// The catalog quality score.
    pub quality: f64,
    /// The live success rate.
    pub reliability: f64,
    /// Speaking the request's language as primary rather than secondary.
    pub language: f64,
    /// A low estimated cost.
    pub cost: f64,
    /// A low latency (live when measured, else typical).
    pub speed: f64,
    /// Few requests queued ahead (PeakEWMA-like: latency × in flight).
    pub load: f64,
    /// The exact category rather than `general`.
    pub category: f64,
    /// The catalog priority.
    pub priority: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            quality: 3.0,
            reliability: 3.0,
            language: 1.0,
            cost: 2.0,
            speed: 1.5,
            load: 1.0,
            category: 1.0,
            priority: 0.5,
        }
    }
}

impl Weights {
    fn all(&self) -> [(&'static str, f64); 8] {
        [
            ("quality", self.quality),
            ("reliability", self.reliability),
            ("language", self.language),
            ("cost", self.cost),
            ("speed", self.speed),
            ("load", self.load),
            ("category", self.category),
            ("priority", self.priority),
        ]
    }

    /// The first weight that is negative or not finite, with its name.
    pub fn check(&self) -> Result<(), crate::Error> {
        match self.all().into_iter().find(|(_, w)| !(w.is_finite() && *w >= 0.0)) {
            Some((name, value)) => Err(crate::Error::InvalidWeight { name, value }),
            None => Ok(()),
        }
    }
}

/// Each component of a model's score, in 0..=1, and their weighted total.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Breakdown {
    /// Quality (unknown counts 0.5).
    pub quality: f64,
    /// Success rate, smoothed toward 0.9 while there are few samples.
    pub reliability: f64,
    /// 1 primary language, 0.8 secondary, 0.5 when no language was asked.
    pub language: f64,
    /// `1 / (1 + cost / $0.001)`; 0 when the price is unknown.
    pub cost: f64,
    /// `1 / (1 + latency / 1 s)`; 0.25 when unknown.
    pub speed: f64,
    /// `1 / (1 + latency × in flight / 1 s)`.
    pub load: f64,
    /// 1 exact category, 0.5 general or no category asked.
    pub category: f64,
    /// Priority / 100.
    pub priority: f64,
    /// The factor the weighted sum is multiplied by for the provider's
    /// rate-limit headroom `h` ([`Signals::rate_limit_headroom`]):
    /// `0.25 + 0.75 × min(h / 0.2, 1)`, 1 when unknown. In 0.25..=1.
    pub rate_limit: f64,
    /// The weighted sum times `rate_limit`. Invariant: finite and >= 0.
    pub total: f64,
}

/// A reference request when none is described: 1,000 prompt and 500 output tokens.
const REFERENCE_PROMPT: u32 = 1_000;
const REFERENCE_OUTPUT: u32 = 500;

/// The request's token counts, or the reference request's when it gives none.
pub(crate) fn sized(req: &Requirements) -> (u32, u32) {
    if req.prompt_tokens == 0 && req.max_output_tokens == 0 {
        (REFERENCE_PROMPT, REFERENCE_OUTPUT)
    } else {
        (req.prompt_tokens, req.max_output_tokens)
    }
}

/// Clamps a component into 0..=1; anything not finite counts 0.
fn unit(x: f64) -> f64 {
    if x.is_finite() { x.clamp(0.0, 1.0) } else { 0.0 }
}

/// Headroom at or above this share leaves the score alone.
const RATE_LIMIT_FULL: f64 = 0.2;
/// The factor at zero headroom.
const RATE_LIMIT_FLOOR: f64 = 0.25;

/// The score factor for rate-limit headroom `h`: 1 at `h >= 0.2`, falling
/// linearly to 0.25 at `h = 0`; 1 when unknown (`None` or not a number).
fn rate_limit_factor(headroom: Option<f64>) -> f64 {
    match headroom {
        Some(h) if !h.is_nan() => {
            let h = h.clamp(0.0, 1.0);
            RATE_LIMIT_FLOOR + (1.0 - RATE_LIMIT_FLOOR) * (h / RATE_LIMIT_FULL).min(1.0)
        }
        _ => 1.0,
    }
}

/// What [`score`] needs that the caller already computed for the filter.
pub(crate) struct Known {
    /// The request's estimated cost on the model.
    pub(crate) estimate: Option<Money>,
    /// The latency the model is judged by.
    pub(crate) latency_ms: Option<f64>,
}

pub(crate) fn score(
    model: &ModelSpec,
    req: &Requirements,
    live: &Signals,
    weights: &Weights,
    known: &Known,
) -> Breakdown {
    let quality = unit(model.quality.unwrap_or(0.5));
    let reliability = if live.samples == 0 {
        0.9
    } else {
        let n = live.samples as f64;
        unit((unit(live.success_rate) * n + 0.9 * 10.0) / (n + 10.0))
    };
    let language = match &req.language {
        None => 0.5,
        Some(lang) if model.primary_language.as_deref().is_some_and(|p| p.eq_ignore_ascii_case(lang)) => 1.0,
        Some(_) => 0.8,
    };
    let estimate = if req.prompt_tokens == 0 && req.max_output_tokens == 0 {
        let (prompt, output) = sized(req);
        model.price().map(|p| p.cost(u64::from(prompt), 0, u64::from(output)))
    } else {
        known.estimate
    };
    let cost = estimate.map_or(0.0, |c| unit(1.0 / (1.0 + c.as_dollars_f64() * 1_000.0)));
    let latency = known.latency_ms;
    let speed = latency.map_or(0.25, |ms| unit(1.0 / (1.0 + ms * 0.001)));
    let queued = latency.unwrap_or(1000.0) * f64::from(live.in_flight);
    let load = unit(1.0 / (1.0 + queued * 0.001));
    let category = match req.category {
        Some(wanted) if model.categories.contains(&wanted) && wanted != Category::General => 1.0,
        _ => 0.5,
    };
    let priority = unit(f64::from(model.priority) * 0.01);
    let rate_limit = rate_limit_factor(live.rate_limit_headroom);
    let sum = quality * weights.quality
        + reliability * weights.reliability
        + language * weights.language
        + cost * weights.cost
        + speed * weights.speed
        + load * weights.load
        + category * weights.category
        + priority * weights.priority;
    // Weights are checked finite and >= 0, components are in 0..=1, the
    // factor in 0.25..=1.
    let total = sum * rate_limit;
    let total = if total.is_finite() { total.max(0.0) } else { 0.0 };
    Breakdown { quality, reliability, language, cost, speed, load, category, priority, rate_limit, total }
}
