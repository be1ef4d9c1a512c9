//! The model catalog of modelfleet: what each model is, costs and can do.
//!
//! - [`ModelSpec`]: provider, upstream name, status, categories, size,
//!   priority, exact [`Pricing`] per million tokens, context window, output
//!   limit, [`Capabilities`], languages, quality, typical latency, local
//!   memory needs, tags, metadata, default [`Sampling`] and timestamps. A
//!   property left `None` is unknown, never assumed.
//! - [`Money`]: exact integer nano-dollars; prices and costs never drift.
//! - [`Catalog`]: concurrent CRUD. Readers take a [`Snapshot`] without a lock
//!   and keep a consistent version; writers validate (every problem named by
//!   field), refuse duplicate ids, bump the version and notify subscribers.
//! - [`Clock`]: injected wall-clock time (Unix ms) shared by every crate that
//!   needs the date; [`ManualClock`] for tests.
//! - [`default_catalog`]: seed 001's five models plus current ones, kept as
//!   TOML data (`catalog/default.toml`) compiled into the crate.
//!
//! Used by the selector (which ranks `&ModelSpec`s), the fallback crate, the
//! store (which persists specs) and the gateway (which lists them).
//!
//! Invariants: a catalog never holds two models with one id nor an invalid
//! spec; a snapshot never changes once taken; versions only grow.
//!
//! ```
//! use modelfleet_registry::{default_catalog, Catalog, Money};
//!
//! let catalog = Catalog::from_models(default_catalog()?)?;
//! let haiku = catalog.get("claude-3-haiku").ok_or("missing")?;
//! let price = haiku.price().ok_or("unknown price")?;
//! assert_eq!(price.input_per_mtok, "0.25".parse::<Money>()?);
//! // 10,000 prompt tokens and 500 completion tokens:
//! assert_eq!(price.cost(10_000, 0, 500).to_string(), "0.003125");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod catalog;
mod clock;
mod money;
mod spec;

use serde::Deserialize;

pub use crate::{
    catalog::{Catalog, Change, ChangeKind, ModelUpdate, Snapshot},
    clock::{Clock, ManualClock, SystemClock},
    money::{Money, ParseMoneyError},
    spec::{
        Capabilities, Capability, Category, FieldError, ModelSpec, ModelStatus, Pricing, Sampling, SizeClass, Usage,
    },
};

/// What can go wrong with the catalog.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A spec is invalid; every problem is listed with its field.
    #[error("model {id:?} is invalid: {}", join(problems))]
    Invalid {
        /// The model's id as given.
        id: String,
        /// Each invalid field.
        problems: Vec<FieldError>,
    },
    /// Several specs of a catalog are invalid.
    #[error("the catalog is invalid: {}", .0.iter().map(|(id, e)| format!("model {id:?}: {e}")).collect::<Vec<_>>().join("; "))]
    InvalidCatalog(Vec<(String, FieldError)>),
    /// The id is taken.
    #[error("a model with id {0:?} is already in the catalog")]
    Duplicate(String),
    /// No model has this id.
    #[error("no model with id {0:?} in the catalog")]
    NotFound(String),
    /// A catalog file could not be read (the message has line and column).
    #[error("cannot parse the catalog: {0}")]
    Parse(String),
}

fn join(problems: &[FieldError]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    models: Vec<ModelSpec>,
}

/// Reads a catalog file: `[[models]]` tables of [`ModelSpec`] fields.
/// Unknown fields are errors, reported with their line and column.
pub fn parse_catalog(toml_text: &str) -> Result<Vec<ModelSpec>, Error> {
    toml::from_str::<CatalogFile>(toml_text).map(|file| file.models).map_err(|err| Error::Parse(err.to_string()))
}

/// The default catalog (`catalog/default.toml`, compiled in).
pub fn default_catalog() -> Result<Vec<ModelSpec>, Error> {
    parse_catalog(include_str!("../catalog/default.toml"))
}

#[cfg(test)]
mod tests;
