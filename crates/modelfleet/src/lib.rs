//! modelfleet: run a fleet of AI models in production — pick the right model
//! for each request, survive a provider failing, know what each model costs
//! and how it performs, stay inside budgets, and show it all to monitoring.
//!
//! This facade re-exports every modelfleet crate as a module (as ripgrep's
//! `grep` does) and adds only the wiring:
//!
//! - [`errors`], [`registry`], [`selector`], [`fallback`], [`monitor`],
//!   [`budget`], [`metrics`], [`store`], [`config`], [`service_registry`]:
//!   the crates, usable one by one;
//! - [`Fleet`]: the whole stack, started through the service registry (store
//!   → catalog → monitor, budgets, metrics → router), with one call that
//!   serves a request ([`Fleet::call`]): select, reserve budget, call with
//!   fallback and retries under a deadline, record every attempt, reconcile
//!   the exact cost. Plus [`Fleet::rank`], [`Fleet::explain`],
//!   [`Fleet::report`], [`Fleet::health`], the JSON and Prometheus exports
//!   and [`Fleet::shutdown`];
//! - [`Simulator`]: simulated providers (latency, 429s with retry-after,
//!   500s, timeouts, resets, context-window errors), seeded.
//!
//! The monitor feeds the selector's live signals, so a model that starts
//! failing or slowing down loses traffic within seconds. Free memory for
//! local models is read with sysinfo here, never inside the selector.
//!
//! Invariant: nothing depends on this crate but the gateway and the CLI.

mod books;
mod catalog;
mod ejections;
mod fleet;
mod history;
mod leases;
mod records;
mod services;
mod shared;
mod sim;

pub use modelfleet_budget as budget;
pub use modelfleet_cluster as cluster;
pub use modelfleet_config_validate as config;
pub use modelfleet_errors as errors;
pub use modelfleet_fallback as fallback;
pub use modelfleet_metrics as metrics;
pub use modelfleet_monitor as monitor;
pub use modelfleet_registry as registry;
pub use modelfleet_selector as selector;
pub use modelfleet_service_registry as service_registry;
pub use modelfleet_store as store;

/// Token counts a model call reports (the registry's, priced by [`registry::Pricing::cost_of`]).
pub use modelfleet_registry::Usage;

pub use crate::{
    catalog::{AdminModel, ModelRevision},
    fleet::{
        BudgetAdminError, BudgetSource, BudgetView, Fleet, FleetError, FleetOptions, ModelResponse, Opened, Request,
        RouteSpec, Served, Settlement, StreamEnd, default_db_path,
    },
    history::{
        CategoryLine, GroupLine, HealthSection, HistoryReport, ModelHealth, Overview, Percentiles, ProviderLine,
        RankedLine, ReportQuery,
    },
    shared::ClusterStatus,
    sim::{SimProfile, Simulator},
};
