//! Which model should serve this request? Filter, score, rank and select,
//! with explanations.
//!
//! Given the catalog's models ([`ModelSpec`]s), a request's [`Requirements`]
//! and live [`Signals`] from whoever measures them (the [`LiveSignals`]
//! trait), this crate:
//!
//! - **filters**: a model must be enabled and servable and meet every hard
//!   constraint (category, language, context window, output limit,
//!   capabilities, worst-case cost, quality, latency, providers, locality,
//!   memory, and room in the hard budgets that would pay). A constraint on a
//!   property the model does not know rejects it;
//! - **scores** each eligible model from quality, reliability (live success
//!   rate), language, cost, speed, load (latency × requests in flight, in
//!   the spirit of PeakEWMA), category and priority, with configurable
//!   [`Weights`]; every score is finite and ≥ 0;
//! - **ranks** by a [`Strategy`] (weighted score, cheapest, fastest, highest
//!   quality, priority order, seeded weighted random), preferred models
//!   (`prefer_free`, `prefer_local`) first, ties by id.
//!
//! **Worst case.** What a request can cost on a model is
//! [`worst_case_cost`]: its prompt plus `n` answers, each bounded by the least
//! of the request's `max_tokens`, the model's output limit and what its
//! context window leaves after the prompt. `max_cost`, the budget check (a
//! caller's [`LiveSignals::budget_room`]) and [`Ranked::worst_case_cost`] all
//! use it, and so does the facade's budget hold.
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
    score::{Breakdown, Weights},
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
    /// A score weight is negative or not finite.
    #[error("weight {name} must be a finite number >= 0, got {value}")]
    InvalidWeight {
        /// The weight's name.
        name: &'static str,
        /// Its value.
        value: f64,
    },
}

fn describe(counts: &[(&'static str, usize)]) -> String {
    counts.iter().map(|(c, n)| format!("{c} ({n})")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests;
