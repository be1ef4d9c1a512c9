//! Soft preferences: the weighted score of an eligible model. The formula,
//! term by term, is in the crate docs ("Score"); `score` computes it, and
//! `score_tests` pins each term.

use modelfleet_registry::{Category, ModelSpec, Money};
use serde::{Deserialize, Serialize};

use crate::{Requirements, Signals};

/// How much each component counts in the weighted score, as given: not yet
/// checked. [`Weights::new`] turns them into [`Weights`], the only form the
/// selector takes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WeightValues {
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

impl Default for WeightValues {
    /// The defaults favour quality and reliability, then cost and speed.
    fn default() -> Self {
        WeightValues {
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

impl WeightValues {
    /// Each weight with its name, in the order of the score's terms.
    #[must_use]
    pub fn named(&self) -> [(&'static str, f64); 8] {
        let values = [
            self.quality,
            self.reliability,
            self.language,
            self.cost,
            self.speed,
            self.load,
            self.category,
            self.priority,
        ];
        std::array::from_fn(|i| (TERMS[i], values[i]))
    }
}

/// The score's terms, in the order weights and breakdowns list them.
const TERMS: [&str; 8] = ["quality", "reliability", "language", "cost", "speed", "load", "category", "priority"];

/// Checked score weights: every weight from 0 to [`Weights::MAX`] (1,000)
/// and at least one above 0. All zero would make every total 0, so a
/// weighted ranking would fall to model ids whatever the models are; a NaN
/// would make every total NaN. (Models that tie on every weighted term
/// still tie, and the tie still ends on the id.)
///
/// ```
/// use modelfleet_selector::{WeightValues, Weights};
///
/// let weights = Weights::new(WeightValues { cost: 10.0, ..WeightValues::default() })?;
/// assert_eq!(weights.values().cost, 10.0);
/// let zero = WeightValues { quality: 0.0, reliability: 0.0, language: 0.0, cost: 0.0, speed: 0.0, load: 0.0, category: 0.0, priority: 0.0 };
/// assert_eq!(Weights::new(zero).unwrap_err().to_string(), "every score weight is 0: the weighted score could not tell models apart");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "WeightValues", into = "WeightValues")]
pub struct Weights(
    // Invariant: every weight in 0..=Weights::MAX, at least one > 0.
    WeightValues,
);

impl Weights {
    /// The largest weight: with terms in 0..=1, eight of these sum to a
    /// finite total. Config validation takes the same bound.
    pub const MAX: f64 = 1_000.0;

    /// Checks `values`: the first weight that is negative, above
    /// [`Weights::MAX`] or not a number is named; all of them 0 is refused
    /// too.
    pub fn new(values: WeightValues) -> Result<Weights, crate::Error> {
        let named = values.named();
        if let Some((name, value)) = named.into_iter().find(|(_, w)| !(0.0..=Weights::MAX).contains(w)) {
            return Err(crate::Error::InvalidWeight { name, value });
        }
        if named.iter().all(|(_, w)| *w == 0.0) {
            return Err(crate::Error::AllWeightsZero);
        }
        Ok(Weights(values))
    }

    /// The weights.
    #[must_use]
    pub fn values(&self) -> WeightValues {
        self.0
    }
}

impl TryFrom<WeightValues> for Weights {
    type Error = crate::Error;

    fn try_from(values: WeightValues) -> Result<Self, Self::Error> {
        Weights::new(values)
    }
}

impl From<Weights> for WeightValues {
    fn from(weights: Weights) -> Self {
        weights.0
    }
}

/// Each term of a model's score, in 0..=1, the rate-limit factor and the
/// total (the formulas are in the [crate docs](crate)).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Breakdown {
    /// The catalog quality; 0 when unknown.
    pub quality: f64,
    /// The live success rate over `n` samples, smoothed toward 0.9 as if 10
    /// more had that rate: `(s × n + 9) / (n + 10)`; 0.9 without samples.
    pub reliability: f64,
    /// 1 primary language, 0.8 secondary, 0.5 when no language was asked.
    pub language: f64,
    /// `1 / (1 + cost / $0.001)` of the estimated cost; 0 when the price is
    /// unknown.
    pub cost: f64,
    /// `1 / (1 + latency / 1 s)`; 0 when the latency is unknown.
    pub speed: f64,
    /// `1 / (1 + latency × in flight / 1 s)`: 1 with nothing in flight; 0
    /// with requests in flight and an unknown latency.
    pub load: f64,
    /// 1 for the exact category asked (other than `general`), else 0.5.
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
impl Breakdown {
    /// Each term with its name, in the order of [`WeightValues::named`]
    /// (the factor and the total apart).
    #[must_use]
    pub fn terms(&self) -> [(&'static str, f64); 8] {
        let values = [
            self.quality,
            self.reliability,
            self.language,
            self.cost,
            self.speed,
            self.load,
            self.category,
            self.priority,
        ];
        std::array::from_fn(|i| (TERMS[i], values[i]))
    }
}

/// A reference request when none is described: 1,000 prompt and 500 output tokens.
const REFERENCE_PROMPT: u32 = 1_000;
const REFERENCE_OUTPUT: u32 = 500;

/// The reference request's token counts when `req` gives none.
fn unsized_reference(req: &Requirements) -> Option<(u32, u32)> {
    (req.prompt_tokens == 0 && req.max_output_tokens == 0).then_some((REFERENCE_PROMPT, REFERENCE_OUTPUT))
}

/// The request's token counts, or the reference request's when it gives none.
pub(crate) fn sized(req: &Requirements) -> (u32, u32) {
    unsized_reference(req).unwrap_or((req.prompt_tokens, req.max_output_tokens))
}

/// The success rate a model without samples is given, and how many samples
/// that prior is worth while there are few.
const RELIABILITY_PRIOR: f64 = 0.9;
const PRIOR_SAMPLES: f64 = 10.0;
/// The cost at which the cost term is 0.5 is $0.001: a multiplier by its
/// inverse (a multiplication, not a division, on the ranking's hot path).
const PER_COST_UNIT: f64 = 1_000.0;
/// Seconds per millisecond, likewise.
const PER_MS: f64 = 0.001;

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

/// The score of `model` for `req`: each term, the factor and the total, as
/// the module docs give them.
pub(crate) fn score(
    model: &ModelSpec,
    req: &Requirements,
    live: &Signals,
    weights: &Weights,
    known: &Known,
) -> Breakdown {
    let quality = model.quality.map_or(0.0, unit);
    let reliability = if live.samples == 0 {
        RELIABILITY_PRIOR
    } else {
        let n = live.samples as f64;
        unit((unit(live.success_rate) * n + RELIABILITY_PRIOR * PRIOR_SAMPLES) / (n + PRIOR_SAMPLES))
    };
    let language = match &req.language {
        None => 0.5,
        Some(lang) if model.primary_language.as_deref().is_some_and(|p| p.eq_ignore_ascii_case(lang)) => 1.0,
        Some(_) => 0.8,
    };
    // The filter's estimate is of the request as sized; an unsized one is
    // priced as the reference request.
    let estimate = match unsized_reference(req) {
        Some((prompt, output)) => model.price().map(|p| p.cost(u64::from(prompt), 0, u64::from(output))),
        None => known.estimate,
    };
    let cost = estimate.map_or(0.0, |c| unit(1.0 / (1.0 + c.as_dollars_f64() * PER_COST_UNIT)));
    let latency = known.latency_ms;
    let speed = latency.map_or(0.0, |ms| unit(1.0 / (1.0 + ms * PER_MS)));
    let load = match (latency, live.in_flight) {
        (_, 0) => 1.0,
        (None, _) => 0.0,
        (Some(ms), in_flight) => unit(1.0 / (1.0 + ms * f64::from(in_flight) * PER_MS)),
    };
    let category = match req.category {
        Some(wanted) if wanted != Category::General && model.categories.contains(&wanted) => 1.0,
        _ => 0.5,
    };
    let priority = unit(f64::from(model.priority) * 0.01);
    let rate_limit = rate_limit_factor(live.rate_limit_headroom);
    let w = weights.values();
    let sum = quality * w.quality
        + reliability * w.reliability
        + language * w.language
        + cost * w.cost
        + speed * w.speed
        + load * w.load
        + category * w.category
        + priority * w.priority;
    // Weights are in 0..=Weights::MAX, terms in 0..=1, the factor in
    // 0.25..=1: the total is finite and >= 0 without a clamp.
    let total = sum * rate_limit;
    Breakdown { quality, reliability, language, cost, speed, load, category, priority, rate_limit, total }
}
