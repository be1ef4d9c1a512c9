//! The `Service` abstraction and its health.

use std::{any::Any, fmt, future::Future, pin::Pin};

use serde::Serialize;

/// Any error a service's start or stop may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The boxed future a [`Service`] method returns (the trait is object-safe,
/// so its async methods return boxes).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A part of the stack with a lifecycle: the store, the monitor, a server.
///
/// ```
/// use modelfleet_service_registry::{BoxError, BoxFuture, Service};
///
/// struct Monitor;
///
/// impl Service for Monitor {
///     fn name(&self) -> &str { "monitor" }
///     fn dependencies(&self) -> Vec<&str> { vec!["store"] }
///     fn start(&self) -> BoxFuture<'_, Result<(), BoxError>> {
///         Box::pin(async { Ok(()) })
///     }
/// }
/// ```
pub trait Service: Any + Send + Sync {
    /// The unique name other services depend on.
    fn name(&self) -> &str;

    /// The names of the services that must be running before this one starts.
    fn dependencies(&self) -> Vec<&str> {
        Vec::new()
    }

    /// Brings the service up; called once, after every dependency started.
    fn start(&self) -> BoxFuture<'_, Result<(), BoxError>>;

    /// Brings the service down; called once, before any dependency stops.
    fn stop(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async { Ok(()) })
    }

    /// How the service is doing; run under the registry's health timeout.
    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async { Health::Healthy })
    }
}

/// A service's answer to a health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "snake_case")]
pub enum Health {
    /// Working normally.
    Healthy,
    /// Working, with a problem worth knowing (the detail says which).
    Degraded(String),
    /// Not working (the detail says why).
    Unhealthy(String),
}

impl Health {
    /// The status without its detail.
    #[must_use]
    pub fn status(&self) -> HealthStatus {
        match self {
            Health::Healthy => HealthStatus::Healthy,
            Health::Degraded(_) => HealthStatus::Degraded,
            Health::Unhealthy(_) => HealthStatus::Unhealthy,
        }
    }
}

/// The three levels of health, ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Every service healthy.
    Healthy,
    /// Something degraded, nothing down.
    Degraded,
    /// Something down.
    Unhealthy,
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
        })
    }
}

/// One service's line in a [`HealthReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceHealth {
    /// The service's name.
    pub name: String,
    /// Its answer (a check that timed out is unhealthy).
    pub health: Health,
}

/// The health of every running service, and the worst of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// The worst status among the services (healthy when there are none).
    pub overall: HealthStatus,
    /// Every service, in start order.
    pub services: Vec<ServiceHealth>,
}
