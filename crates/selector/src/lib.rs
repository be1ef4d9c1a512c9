//! Which model should serve this request? Filter, score, rank and select,
//! with explanations.
//!
//! Given the catalog's models ([`ModelSpec`]s), a request's [`Requirements`]
//! and live [`Signals`] from whoever measures them (the [`LiveSignals`]
//! trait), this crate:
//!
//! - **filters**: a model must be enabled and servable and meet every hard
//!   constraint of the request (the table below). A constraint on a property
//!   the model does not know rejects it (but an unstated output limit is
//!   bounded by the context window instead);
//! - **scores** each eligible model from quality, reliability (live success
//!   rate), language, cost, speed, load, category and priority with
//!   [`Weights`], times a rate-limit factor (the formula below);
//! - **ranks** by a [`Strategy`] (weighted score, cheapest, fastest, highest
//!   quality, priority order, seeded weighted random), preferred models
//!   (`prefer_free`, `prefer_local`) first, models near their provider's
//!   rate limit after the others, ties by id.
//!
//! ## Filter: the rules and their boundaries
//!
//! Every boundary is decided the same way: **a model exactly at a limit
//! passes**. Each rule is tested at the limit and one unit either side.
//!
//! | rule ([`Rejection::constraint`]) | the model is rejected when | exactly at the limit |
//! |---|---|---|
//! | `status` | it is disabled, or its status is not servable (inactive, maintenance) | — |
//! | `providers` | `providers` is not empty and lacks its provider, or `exclude_providers` has it (names compared exactly) | — |
//! | `locality` | `local_only` and it is a cloud model, or `cloud_only` and it is local | — |
//! | `category` | a category is asked and it lists neither that one nor `general` | — |
//! | `language` | a language is asked and it speaks it neither as primary nor as another language (ASCII case ignored) | — |
//! | `context_window` | the request gives sizes and its window is unknown or smaller than prompt + `max_tokens` (prompt + 1 without `max_tokens`: an answer needs a token); never for an embeddings request (the window bounds each input alone, which the provider checks) | window = prompt + output **fits** |
//! | `max_output_tokens` | `max_tokens` is set and its output limit, when stated, is smaller (unstated: the window bounds it) | limit = `max_tokens` **fits** |
//! | `capabilities` | it lacks one asked (each missing one is named); or it is an embedding model and the request does not ask for `embeddings` (chat never goes to one) | — |
//! | `embedding_dimensions` | a vector length is asked and its `embedding_dimensions` is unknown or another | — |
//! | `max_cost` | its [`worst_case_cost`] is unknown (no price, no output bound, or a request that is [`Requirements::unmeasured`] on a model that is not free) or above `max_cost` | worst case = `max_cost` **passes** |
//! | `budget` | a hard budget would pay and its worst case is unknown, or is above 0 and above what is left | worst case = what is left **fits**; a free model fits an exhausted budget |
//! | `min_quality` | its quality is unknown or below | quality = `min_quality` **passes** |
//! | `max_latency_ms` | its latency (live when measured: samples > 0 and a finite latency >= 0; else typical) is unknown or above | latency = `max_latency_ms` **passes** |
//! | `available_memory_mb` | it is local and its memory need is unknown or above the memory free | need = memory free **fits** |
//!
//! ## Score
//!
//! Every term is in 0..=1, and the total is their weighted sum times the
//! rate-limit factor:
//!
//! ```text
//! total = rate_limit × (w.quality × quality + w.reliability × reliability
//!         + w.language × language + w.cost × cost + w.speed × speed
//!         + w.load × load + w.category × category + w.priority × priority)
//! ```
//!
//! | term | formula | when unknown |
//! |---|---|---|
//! | `quality` | the catalog quality, clamped to 0..=1 | 0 |
//! | `reliability` | `(s × n + 0.9 × 10) / (n + 10)`: the live success rate `s` over `n` samples, smoothed toward a prior of 0.9 worth 10 samples | no samples: 0.9, the prior |
//! | `language` | 1 when the request's language is the model's primary one, 0.8 when it is a secondary one; 0.5 when the request names no language | — |
//! | `cost` | `1 / (1 + c / $0.001)`, `c` the request's estimated cost: prompt plus `max_tokens` at the model's prices (a request giving neither is priced as 1,000 prompt and 500 output tokens) | no price: 0; a local model without prices is free (`c = 0`: 1) |
//! | `speed` | `1 / (1 + latency / 1 s)`, latency live when measured, else typical | 0 |
//! | `load` | `1 / (1 + latency × in_flight / 1 s)` (PeakEWMA-like: the wait behind the requests in flight) | 1 with nothing in flight, else 0 |
//! | `category` | 1 when the model lists the category asked (other than `general`); 0.5 otherwise, and for every model when none or `general` is asked | — |
//! | `priority` | catalog priority / 100 | — |
//! | `rate_limit` (factor) | `0.25 + 0.75 × min(h / 0.2, 1)`, `h` the provider's rate-limit headroom clamped to 0..=1 | 1 |
//!
//! **Unknown scores 0.** A property the catalog does not state (quality,
//! price, latency) scores its term 0, the least any known value can score,
//! so not knowing is never an advantage: a model of unknown quality never
//! outranks on quality one whose quality is known, however low. Two
//! deliberate exceptions: a model without live samples has the reliability
//! prior 0.9 (otherwise a new model would never be given the traffic that
//! measures it), and an unknown headroom leaves the score alone.
//!
//! The rate-limit factor ranks a model down before its provider starts
//! answering 429: 1 from 20% headroom up, falling linearly to 0.25 at 0. It
//! never reaches 0, so a model at its limit still ranks when nothing else
//! can serve (and [`rank`] puts it below every model with room,
//! whatever the strategy).
//!
//! Weights are [`Weights`]: each from 0 to [`Weights::MAX`] and not all 0,
//! so every total is finite and >= 0 and the weighted strategies never
//! rank by id alone because every weight was 0. [`Breakdown`] carries every
//! term, the factor and the total; [`explain`]'s text shows them with their
//! weights.
//!
//! ## Worst case
//!
//! What a request can cost on a model is [`worst_case_cost`]: its prompt
//! plus `n` answers, each bounded by the least of the request's
//! `max_tokens`, the model's output limit and what its context window
//! leaves after the prompt. `max_cost`, the budget check (a caller's
//! [`LiveSignals::budget_room`]) and [`Ranked::worst_case_cost`] all use it,
//! and so does the facade's budget hold.
//!
//! ## Rank, explain, select
//!
//! [`rank`] returns every eligible model best first with its [`Breakdown`];
//! [`explain`] adds every rejected model with each constraint it failed;
//! [`select`] returns the head of the ranking without sorting, or an error
//! counting which constraints rejected how many models.
//!
//! Invariants: no I/O, no clock, no global state: the same inputs give the
//! same answer. Inputs are never modified. An id seen twice counts once.
//!
//! ```
//! use modelfleet_registry::{default_catalog, Category};
//! use modelfleet_selector::{explain, select, NoSignals, Requirements, SelectorConfig};
//!
//! let models = default_catalog()?;
//! let req = Requirements {
//!     category: Some(Category::Code),
//!     language: Some("en".into()),
//!     prompt_tokens: 50_000,
//!     max_output_tokens: 2_000,
//!     min_quality: Some(0.75),
//!     ..Requirements::default()
//! };
//! let best = select(&models, &req, &NoSignals, &SelectorConfig::default())?;
//! assert!(best.model.context_window.is_some_and(|w| w >= 52_000));
//!
//! let why = explain(&models, &req, &NoSignals, &SelectorConfig::default());
//! let llama = why.rejected.iter().find(|r| r.model.id == "ollama-llama2").ok_or("not rejected")?;
//! assert!(llama.reasons.iter().any(|r| r.to_string() == "context window 4096 < 52000 tokens needed"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`ModelSpec`]: modelfleet_registry::ModelSpec

mod filter;
mod rank;
mod requirements;
mod score;
mod signals;

pub use crate::{
    filter::{Rejection, worst_case_cost, worst_case_output},
    rank::{Explanation, Ranked, Rejected, SelectorConfig, Strategy, explain, rank, select},
    requirements::{Locality, Requirements},
    score::{Breakdown, WeightValues, Weights},
    signals::{BudgetRoom, LiveSignals, NoSignals, Signals},
};

/// What can go wrong selecting a model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// There are no models to choose from.
    #[error("no models to choose from: the catalog is empty")]
    EmptyCatalog,
    /// Every model was rejected.
    #[error("none of the {models} models satisfies the requirements; rejected by {}", describe(rejected_by))]
    NoMatch {
        /// How many models were considered.
        models: usize,
        /// Each constraint that rejected models, with how many, most first.
        rejected_by: Vec<(&'static str, usize)>,
    },
    /// A score weight is negative, too large or not a number.
    #[error("weight {name} must be a number from 0 to 1000, got {value}")]
    InvalidWeight {
        /// The weight's name.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// A requirement no model can be judged against.
    #[error("{field} {problem}")]
    InvalidRequirement {
        /// The requirement.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// Every score weight is 0: every total would be 0.
    #[error("every score weight is 0: the weighted score could not tell models apart")]
    AllWeightsZero,
}

fn describe(counts: &[(&'static str, usize)]) -> String {
    counts.iter().map(|(c, n)| format!("{c} ({n})")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod filter_tests;
#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod score_tests;
#[cfg(test)]
mod tests;
