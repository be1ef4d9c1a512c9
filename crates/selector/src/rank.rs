//! Ranking strategies, and `rank`, `explain` and `select`.

use std::{borrow::Borrow, cmp::Ordering, fmt, ops::ControlFlow};

use modelfleet_registry::{ModelSpec, Money};
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};

use crate::{
    Breakdown, Error, LiveSignals, Rejection, Requirements, WeightValues, Weights,
    filter::{check, estimate, latency_ms, worst_case_cost},
    score::{Known, score, sized},
};

/// How eligible models are ordered. Whatever the strategy, a model matching
/// `prefer_free`/`prefer_local` ranks above every model that does not; then a
/// model whose provider reported less than a fifth of its rate limit left
/// ([`Signals::rate_limit_headroom`](crate::Signals::rate_limit_headroom))
/// ranks below every model that did not, so it loses traffic before it
/// starts answering 429; ties end on the model id, so a ranking is
/// deterministic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Strategy {
    /// By weighted score, highest first.
    #[default]
    WeightedScore,
    /// By estimated cost, lowest first (unknown price last), then score. A
    /// request without token counts is priced as 1,000 prompt and 500 output tokens.
    Cheapest,
    /// By latency, lowest first (unknown last), then score.
    Fastest,
    /// By quality, highest first (unknown last), then score.
    HighestQuality,
    /// By catalog priority, highest first, then score.
    PriorityOrder,
    /// A random order weighted by score, reproducible from `seed`: spreads
    /// load over good models instead of sending everything to the best.
    WeightedRandom {
        /// The seed; the same seed and inputs give the same order.
        seed: u64,
    },
}

/// The selector's settings.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelectorConfig {
    /// Score weights.
    pub weights: Weights,
    /// The order.
    pub strategy: Strategy,
}

/// An eligible model with its score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ranked<'a> {
    /// The model.
    #[serde(serialize_with = "id_only")]
    pub model: &'a ModelSpec,
    /// Whether it matches `prefer_free` / `prefer_local` (preferred models rank first).
    pub preferred: bool,
    /// The score and its components.
    pub score: Breakdown,
    /// The typical cost of the request on it (prompt plus the request's
    /// own output cap), when its price is known: what the score's cost term
    /// prices, except for a request giving no sizes at all, which the term
    /// prices as the reference request (1,000 prompt and 500 output
    /// tokens) while this stays the request's own ($0).
    pub estimated_cost: Option<Money>,
    /// The most the request can cost on it ([`worst_case_cost`]): what a
    /// budget holds and `max_cost` limits. `None` when it cannot be bounded.
    pub worst_case_cost: Option<Money>,
    /// The latency it is judged by, when known.
    pub latency_ms: Option<f64>,
    // The strategy's sort key (higher first); not part of the public view.
    #[serde(skip)]
    key: f64,
}

// serde's `serialize_with` hands us a reference to the field.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn id_only<S: serde::Serializer>(model: &&ModelSpec, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&model.id)
}

/// A model that cannot serve the request, with every constraint it failed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejected<'a> {
    /// The model.
    #[serde(serialize_with = "id_only")]
    pub model: &'a ModelSpec,
    /// Each failed constraint.
    pub reasons: Vec<Rejection>,
}

/// [`explain`]'s answer: the ranking, and every rejected model with why.
///
/// Shown as text, each ranked model has its score's terms with their
/// weights under it (`term value×weight`, summed, times the rate-limit
/// factor when it is below 1); each rejected model, every constraint it
/// failed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation<'a> {
    /// Eligible models, best first.
    pub ranked: Vec<Ranked<'a>>,
    /// Ineligible models, in input order.
    pub rejected: Vec<Rejected<'a>>,
    /// The weights the scores were computed with.
    pub weights: WeightValues,
}

impl fmt::Display for Explanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let weights = self.weights.named();
        for (i, r) in self.ranked.iter().enumerate() {
            writeln!(
                f,
                "{:>3}. {:<24} score {:.3}{}",
                i + 1,
                r.model.id,
                r.score.total,
                if r.preferred { " (preferred)" } else { "" }
            )?;
            // Two lines of four terms each: `name value×weight`, summed.
            for (line, terms) in r.score.terms().chunks(4).enumerate() {
                f.write_str(if line == 0 { "       " } else { "       + " })?;
                for (j, ((name, value), (_, weight))) in terms.iter().zip(&weights[line * 4..]).enumerate() {
                    if j > 0 {
                        f.write_str(" + ")?;
                    }
                    write!(f, "{name} {value:.3}×{weight}")?;
                }
                f.write_str("\n")?;
            }
            if r.score.rate_limit < 1.0 {
                writeln!(f, "       × rate limit {:.3}", r.score.rate_limit)?;
            }
        }
        for r in &self.rejected {
            let reasons: Vec<String> = r.reasons.iter().map(ToString::to_string).collect();
            writeln!(f, "  -  {:<24} rejected: {}", r.model.id, reasons.join("; "))?;
        }
        Ok(())
    }
}

/// Whether `model` matches the request's free/local preferences.
fn preferred(model: &ModelSpec, req: &Requirements) -> bool {
    (req.prefer_free && model.price().is_some_and(|p| p.is_free())) || (req.prefer_local && model.local)
}

fn evaluate<'a>(
    model: &'a ModelSpec,
    req: &Requirements,
    signals: &impl LiveSignals,
    config: &SelectorConfig,
    rng: &mut Option<fastrand::Rng>,
) -> Option<Ranked<'a>> {
    let live = signals.signals(&model.id);
    if !check(model, req, &live, signals.budget_room(model), |_| ControlFlow::Break(())) {
        return None;
    }
    let known = Known { estimate: estimate(model, req), latency_ms: latency_ms(model, &live) };
    let breakdown = score(model, req, &live, &config.weights, &known);
    let Known { estimate: estimated_cost, latency_ms: latency } = known;
    let key = match config.strategy {
        Strategy::WeightedScore => breakdown.total,
        Strategy::Cheapest => {
            // Unrounded femto-dollars for the request (or the reference one
            // when it gives no sizes), so tiny price differences still order.
            let (prompt, output) = sized(req);
            model.price().map_or(f64::NEG_INFINITY, |p| {
                -(p.input_per_mtok.nanos() as f64 * f64::from(prompt)
                    + p.output_per_mtok.nanos() as f64 * f64::from(output))
            })
        }
        Strategy::Fastest => latency.map_or(f64::NEG_INFINITY, |ms| -ms),
        Strategy::HighestQuality => model.quality.unwrap_or(f64::NEG_INFINITY),
        Strategy::PriorityOrder => f64::from(model.priority),
        Strategy::WeightedRandom { .. } => {
            // Efraimidis–Spirakis: key = u^(1/w), highest first, is a weighted
            // sample without replacement.
            let u = rng.as_mut().map_or(0.5, fastrand::Rng::f64).max(f64::MIN_POSITIVE);
            let w = breakdown.total.max(1e-9);
            u.powf(1.0 / w)
        }
    };
    Some(Ranked {
        model,
        preferred: preferred(model, req),
        score: breakdown,
        estimated_cost,
        // Filled by the caller: `rank` for every eligible model, `select` for
        // the winner alone (an i128 division per price term, 12% of a select).
        worst_case_cost: None,
        latency_ms: latency,
        key,
    })
}

/// Best first: preferred, then models with rate-limit room before those
/// near their provider's limit (whatever the strategy), then the strategy's
/// key, then the score, then the id.
fn better(a: &Ranked<'_>, b: &Ranked<'_>) -> Ordering {
    let near_limit = |r: &Ranked<'_>| r.score.rate_limit < 1.0;
    b.preferred
        .cmp(&a.preferred)
        .then_with(|| near_limit(a).cmp(&near_limit(b)))
        .then_with(|| b.key.total_cmp(&a.key))
        .then_with(|| b.score.total.total_cmp(&a.score.total))
        .then_with(|| a.model.id.cmp(&b.model.id))
}

fn rng_for(config: &SelectorConfig) -> Option<fastrand::Rng> {
    match config.strategy {
        Strategy::WeightedRandom { seed } => Some(fastrand::Rng::with_seed(seed)),
        _ => None,
    }
}

/// Remembers ids seen so far. A catalog snapshot is sorted by id, so when
/// the input's ids are strictly ascending they are unique and nothing needs
/// remembering; otherwise a linear scan for a handful, a hash set beyond.
enum Seen<'a> {
    Unique,
    Few(Vec<&'a str>),
    Many(FxHashSet<&'a str>),
}

impl<'a> Seen<'a> {
    fn for_input<M: Borrow<ModelSpec>>(models: &[M]) -> Seen<'a> {
        let ascending = models.windows(2).all(|w| w[0].borrow().id < w[1].borrow().id);
        match models.len() {
            _ if ascending => Seen::Unique,
            n if n <= 32 => Seen::Few(Vec::with_capacity(n)),
            n => Seen::Many(FxHashSet::with_capacity_and_hasher(n, rustc_hash::FxBuildHasher)),
        }
    }

    /// Whether `id` is new (and remembers it).
    fn first(&mut self, id: &'a str) -> bool {
        match self {
            Seen::Unique => true,
            Seen::Few(ids) => {
                if ids.contains(&id) {
                    return false;
                }
                ids.push(id);
                true
            }
            Seen::Many(ids) => ids.insert(id),
        }
    }
}

/// Every eligible model, best first, each with its score breakdown.
///
/// An id seen twice counts once (the first occurrence); an empty input gives
/// an empty ranking.
pub fn rank<'a, M: Borrow<ModelSpec>>(
    models: &'a [M],
    req: &Requirements,
    signals: &impl LiveSignals,
    config: &SelectorConfig,
) -> Vec<Ranked<'a>> {
    let mut rng = rng_for(config);
    let mut seen = Seen::for_input(models);
    let ranked: Vec<Ranked<'a>> = models
        .iter()
        .map(Borrow::borrow)
        .filter(|m| seen.first(&m.id))
        .filter_map(|m| {
            let mut ranked = evaluate(m, req, signals, config, &mut rng)?;
            ranked.worst_case_cost = worst_case_cost(m, req);
            Some(ranked)
        })
        .collect();
    // Sort small keys, not the entries: far less memory moves per swap.
    // The same order as `better`: preferred, rate-limit room, key, score, id.
    let mut order: Vec<(bool, bool, f64, f64, usize)> = ranked
        .iter()
        .enumerate()
        .map(|(i, r)| (r.preferred, r.score.rate_limit >= 1.0, r.key, r.score.total, i))
        .collect();
    order.sort_unstable_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| b.1.cmp(&a.1))
            .then_with(|| b.2.total_cmp(&a.2))
            .then_with(|| b.3.total_cmp(&a.3))
            .then_with(|| ranked[a.4].model.id.cmp(&ranked[b.4].model.id))
    });
    order.into_iter().map(|(.., i)| ranked[i]).collect()
}

/// [`rank`], plus every rejected model with each constraint it failed.
pub fn explain<'a, M: Borrow<ModelSpec>>(
    models: &'a [M],
    req: &Requirements,
    signals: &impl LiveSignals,
    config: &SelectorConfig,
) -> Explanation<'a> {
    let mut seen = Seen::for_input(models);
    let mut rejected = Vec::new();
    for model in models.iter().map(Borrow::borrow) {
        if !seen.first(&model.id) {
            rejected.push(Rejected { model, reasons: vec![Rejection::DuplicateId] });
            continue;
        }
        let mut reasons = Vec::new();
        let live = signals.signals(&model.id);
        if !check(model, req, &live, signals.budget_room(model), |r| {
            reasons.push(r);
            ControlFlow::Continue(())
        }) {
            rejected.push(Rejected { model, reasons });
        }
    }
    Explanation { ranked: rank(models, req, signals, config), rejected, weights: config.weights.values() }
}

/// The best eligible model: always the head of [`rank`], found without
/// sorting or allocating (beyond a small seen-id list).
///
/// With no eligible model, the error counts, per constraint, how many models
/// it rejected.
pub fn select<'a, M: Borrow<ModelSpec>>(
    models: &'a [M],
    req: &Requirements,
    signals: &impl LiveSignals,
    config: &SelectorConfig,
) -> Result<Ranked<'a>, Error> {
    let mut rng = rng_for(config);
    let mut seen = Seen::for_input(models);
    let mut best: Option<Ranked<'a>> = None;
    for model in models.iter().map(Borrow::borrow) {
        if !seen.first(&model.id) {
            continue;
        }
        if let Some(candidate) = evaluate(model, req, signals, config, &mut rng)
            && best.as_ref().is_none_or(|b| better(&candidate, b) == Ordering::Less)
        {
            best = Some(candidate);
        }
    }
    let mut best = best.ok_or_else(|| no_match(models, req, signals, config))?;
    best.worst_case_cost = worst_case_cost(best.model, req);
    Ok(best)
}

fn no_match<M: Borrow<ModelSpec>>(
    models: &[M],
    req: &Requirements,
    signals: &impl LiveSignals,
    config: &SelectorConfig,
) -> Error {
    if models.is_empty() {
        return Error::EmptyCatalog;
    }
    let explanation = explain(models, req, signals, config);
    let mut counts: Vec<(&'static str, usize)> = Vec::new();
    for rejected in &explanation.rejected {
        let mut constraints: Vec<&'static str> = rejected.reasons.iter().map(Rejection::constraint).collect();
        constraints.sort_unstable();
        constraints.dedup();
        for constraint in constraints {
            match counts.iter_mut().find(|(c, _)| *c == constraint) {
                Some((_, n)) => *n += 1,
                None => counts.push((constraint, 1)),
            }
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    Error::NoMatch { models: models.len(), rejected_by: counts }
}
