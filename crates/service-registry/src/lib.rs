//! Starts the parts of a modelfleet stack in dependency order and stops them
//! in reverse.
//!
//! Register [`Service`]s in a [`ServiceRegistry`], then [`ServiceRegistry::start`]
//! them: the registry resolves a deterministic order (layers of services whose
//! dependencies are all in earlier layers, each layer sorted by name), reports
//! *every* missing dependency and every cycle with its whole path
//! (`a → b → c → a`) before starting anything, starts the services of a
//! layer concurrently, and on a failure stops what already started in reverse
//! order. The [`Running`] set it returns looks services up by type or name
//! without a lock, aggregates their health under a timeout, and shuts them
//! down dependents first.
//!
//! The modelfleet facade wires store → registry → monitor, budget, metrics →
//! selector and fallback through it; any application can use it alone.
//!
//! Invariants: no service starts before all its dependencies started; no
//! service stops before all its dependents stopped; a failed start leaves
//! nothing running; the plan for a given set of services is the same on
//! every run.
//!
//! ```
//! use modelfleet_service_registry::{BoxError, BoxFuture, Error, RegistryConfig, Service, ServiceRegistry};
//!
//! struct Named(&'static str, Vec<&'static str>);
//! impl Service for Named {
//!     fn name(&self) -> &str { self.0 }
//!     fn dependencies(&self) -> Vec<&str> { self.1.clone() }
//!     fn start(&self) -> BoxFuture<'_, Result<(), BoxError>> { Box::pin(async { Ok(()) }) }
//! }
//!
//! let mut registry = ServiceRegistry::new(RegistryConfig::default());
//! registry.register(Named("a", vec!["b"]))?;
//! registry.register(Named("b", vec!["c"]))?;
//! registry.register(Named("c", vec!["a", "cache"]))?;
//! let err = registry.plan().unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     r#"service "c" depends on "cache", which is not registered; dependency cycle: a → b → c → a"#
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod graph;
mod registry;
mod service;

pub use crate::{
    graph::{Missing, ResolveError},
    registry::{RegistryConfig, Running, ServiceRegistry, StopFailure},
    service::{BoxError, BoxFuture, Health, HealthReport, HealthStatus, Service, ServiceHealth},
};

/// What can go wrong registering, starting or stopping services.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A service's name is empty or only whitespace.
    #[error("a service name must not be empty")]
    EmptyName,
    /// Two services have the same name.
    #[error("service {0:?} is registered twice")]
    Duplicate(String),
    /// No start order exists.
    #[error("cannot resolve the start order: {0}")]
    Resolve(ResolveError),
    /// A service failed to start; everything started before it was stopped.
    #[error("service {service:?} failed to start: {cause}{}", rollback_note(rollback))]
    StartFailed {
        /// The service that failed (the first by name when several in one layer did).
        service: String,
        /// Why.
        cause: BoxError,
        /// Services that then also failed to stop during the rollback.
        rollback: Vec<StopFailure>,
    },
    /// Some services failed to stop; all the others were stopped.
    #[error("{} service(s) failed to stop: {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    StopFailed(Vec<StopFailure>),
}

fn rollback_note(rollback: &[StopFailure]) -> String {
    if rollback.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = rollback.iter().map(ToString::to_string).collect();
        format!(" (and while rolling back, failed to stop: {})", list.join("; "))
    }
}

#[cfg(test)]
mod tests;
