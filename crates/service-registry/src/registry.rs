//! Registration, dependency-ordered start with rollback, lookup and stop.

use std::{any::Any, any::TypeId, fmt, future::Future, sync::Arc, time::Duration};

use futures_util::future::join_all;
use rustc_hash::FxHashMap;

use crate::{BoxError, Error, Health, HealthReport, HealthStatus, ResolveError, Service, ServiceHealth, graph};

/// Timeouts of a [`ServiceRegistry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryConfig {
    /// How long one service's `start` may take before it counts as failed.
    pub start_timeout: Duration,
    /// How long one service's `stop` may take before it counts as failed.
    pub stop_timeout: Duration,
    /// How long one health check may take before it counts as unhealthy.
    pub health_timeout: Duration,
}

impl Default for RegistryConfig {
    /// 30 s to start, 30 s to stop, 2 s per health check.
    fn default() -> Self {
        RegistryConfig {
            start_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(30),
            health_timeout: Duration::from_secs(2),
        }
    }
}

struct Entry {
    name: String,
    service: Arc<dyn Service>,
    any: Arc<dyn Any + Send + Sync>,
}

/// A set of services waiting to be started.
///
/// ```
/// use modelfleet_service_registry::{BoxError, BoxFuture, RegistryConfig, Service, ServiceRegistry};
///
/// struct Store;
/// impl Service for Store {
///     fn name(&self) -> &str { "store" }
///     fn start(&self) -> BoxFuture<'_, Result<(), BoxError>> { Box::pin(async { Ok(()) }) }
/// }
/// struct Monitor;
/// impl Service for Monitor {
///     fn name(&self) -> &str { "monitor" }
///     fn dependencies(&self) -> Vec<&str> { vec!["store"] }
///     fn start(&self) -> BoxFuture<'_, Result<(), BoxError>> { Box::pin(async { Ok(()) }) }
/// }
///
/// let mut registry = ServiceRegistry::new(RegistryConfig::default());
/// registry.register(Monitor)?;
/// registry.register(Store)?;
/// assert_eq!(registry.plan()?, vec![vec!["store".to_owned()], vec!["monitor".to_owned()]]);
///
/// let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
/// runtime.block_on(async {
///     let running = registry.start().await?;
///     assert!(running.get::<Monitor>().is_some());
///     running.shutdown().await
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ServiceRegistry {
    config: RegistryConfig,
    entries: Vec<Entry>,
}

impl fmt::Debug for ServiceRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceRegistry")
            .field("config", &self.config)
            .field("services", &self.entries.iter().map(|e| &e.name).collect::<Vec<_>>())
            .finish()
    }
}

impl ServiceRegistry {
    /// An empty registry.
    #[must_use]
    pub fn new(config: RegistryConfig) -> ServiceRegistry {
        ServiceRegistry { config, entries: Vec::new() }
    }

    /// Adds a service. Its name must be non-empty and not taken.
    pub fn register<S: Service>(&mut self, service: S) -> Result<(), Error> {
        self.register_arc(Arc::new(service))
    }

    /// Adds a service the caller keeps a handle to.
    pub fn register_arc<S: Service>(&mut self, service: Arc<S>) -> Result<(), Error> {
        let name = service.name().to_owned();
        if name.trim().is_empty() {
            return Err(Error::EmptyName);
        }
        if self.entries.iter().any(|e| e.name == name) {
            return Err(Error::Duplicate(name));
        }
        let any: Arc<dyn Any + Send + Sync> = service.clone();
        self.entries.push(Entry { name, service, any });
        Ok(())
    }

    /// The number of registered services.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is registered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The start order: layers of names, each sorted by name, every service
    /// after all of its dependencies. Reports every missing dependency and
    /// every cycle at once.
    pub fn plan(&self) -> Result<Vec<Vec<String>>, ResolveError> {
        let layers = self.layers()?;
        Ok(layers.iter().map(|layer| layer.iter().map(|&i| self.entries[i].name.clone()).collect()).collect())
    }

    fn layers(&self) -> Result<Vec<Vec<usize>>, ResolveError> {
        let nodes: Vec<(&str, Vec<&str>)> =
            self.entries.iter().map(|e| (e.name.as_str(), e.service.dependencies())).collect();
        graph::layers(&nodes)
    }

    /// Starts every service, layer by layer, the services of one layer
    /// concurrently.
    ///
    /// When a service fails (or exceeds the start timeout), the rest of its
    /// layer is awaited, everything that started is stopped in reverse
    /// order, and the error names the service that failed and why.
    pub async fn start(self) -> Result<Running, Error> {
        let layers = self.layers().map_err(Error::Resolve)?;
        let config = self.config;
        let entries = self.entries;
        let mut started: Vec<Vec<usize>> = Vec::with_capacity(layers.len());
        for layer in &layers {
            let results = join_all(layer.iter().map(|&i| {
                let entry = &entries[i];
                with_timeout(config.start_timeout, entry.service.start(), "start")
            }))
            .await;
            let mut ok = Vec::with_capacity(layer.len());
            let mut failed = Vec::new();
            for (&i, result) in layer.iter().zip(results) {
                match result {
                    Ok(()) => ok.push(i),
                    Err(cause) => failed.push((i, cause)),
                }
            }
            started.push(ok);
            if let Some((first, cause)) = failed.into_iter().next() {
                let rollback = stop_layers(&entries, &started, config.stop_timeout).await;
                return Err(Error::StartFailed { service: entries[first].name.clone(), cause, rollback });
            }
        }
        Ok(Running::new(config, entries, layers))
    }
}

async fn with_timeout(
    limit: Duration,
    fut: impl Future<Output = Result<(), BoxError>>,
    what: &str,
) -> Result<(), BoxError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => Err(format!("{what} timed out after {limit:?}").into()),
    }
}

/// A service that failed to stop, and why.
#[derive(Debug)]
pub struct StopFailure {
    /// The service.
    pub service: String,
    /// The error its `stop` returned (or the timeout).
    pub cause: BoxError,
}

impl fmt::Display for StopFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.service, self.cause)
    }
}

/// Stops `layers` last layer first, each layer concurrently; every service is
/// stopped even when another fails.
async fn stop_layers(entries: &[Entry], layers: &[Vec<usize>], limit: Duration) -> Vec<StopFailure> {
    let mut failures = Vec::new();
    for layer in layers.iter().rev() {
        let results = join_all(layer.iter().map(|&i| with_timeout(limit, entries[i].service.stop(), "stop"))).await;
        for (&i, result) in layer.iter().zip(results) {
            if let Err(cause) = result {
                failures.push(StopFailure { service: entries[i].name.clone(), cause });
            }
        }
    }
    failures
}

/// Lookup slot for a concrete type: registered once, or more than once.
enum Slot {
    One(Arc<dyn Any + Send + Sync>),
    Ambiguous,
}

/// The started services: lookup without locks, health, and shutdown.
///
/// Share it behind an `Arc`; lookups take `&self` and touch no lock.
/// Call [`Running::shutdown`] to stop the services: dropping it does not.
pub struct Running {
    config: RegistryConfig,
    entries: Vec<Entry>,
    layers: Vec<Vec<usize>>,
    by_type: FxHashMap<TypeId, Slot>,
    by_name: FxHashMap<String, usize>,
    stopped: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("config", &self.config)
            .field("layers", &self.start_order())
            .finish_non_exhaustive()
    }
}

impl Running {
    fn new(config: RegistryConfig, entries: Vec<Entry>, layers: Vec<Vec<usize>>) -> Running {
        let mut by_type: FxHashMap<TypeId, Slot> = FxHashMap::default();
        let mut by_name = FxHashMap::default();
        for (i, entry) in entries.iter().enumerate() {
            by_name.insert(entry.name.clone(), i);
            let type_id = (*entry.any).type_id();
            by_type
                .entry(type_id)
                .and_modify(|slot| *slot = Slot::Ambiguous)
                .or_insert_with(|| Slot::One(Arc::clone(&entry.any)));
        }
        Running { config, entries, layers, by_type, by_name, stopped: std::sync::atomic::AtomicBool::new(false) }
    }

    /// The running service of type `S`, when exactly one was registered
    /// (with several, use [`Running::get_named`]).
    #[must_use]
    pub fn get<S: Service>(&self) -> Option<&S> {
        match self.by_type.get(&TypeId::of::<S>())? {
            Slot::One(any) => any.downcast_ref::<S>(),
            Slot::Ambiguous => None,
        }
    }

    /// Like [`Running::get`], as a handle the caller may keep.
    #[must_use]
    pub fn get_arc<S: Service>(&self) -> Option<Arc<S>> {
        match self.by_type.get(&TypeId::of::<S>())? {
            Slot::One(any) => Arc::clone(any).downcast::<S>().ok(),
            Slot::Ambiguous => None,
        }
    }

    /// The running service called `name`, if it is of type `S`.
    #[must_use]
    pub fn get_named<S: Service>(&self, name: &str) -> Option<&S> {
        self.entries[*self.by_name.get(name)?].any.downcast_ref::<S>()
    }

    /// The running service called `name`, whatever its type.
    #[must_use]
    pub fn get_dyn(&self, name: &str) -> Option<&Arc<dyn Service>> {
        Some(&self.entries[*self.by_name.get(name)?].service)
    }

    /// The layers the services were started in.
    #[must_use]
    pub fn start_order(&self) -> Vec<Vec<&str>> {
        self.layers.iter().map(|layer| layer.iter().map(|&i| self.entries[i].name.as_str()).collect()).collect()
    }

    /// Checks every service concurrently, each under the health timeout.
    pub async fn health(&self) -> HealthReport {
        let limit = self.config.health_timeout;
        let order: Vec<usize> = self.layers.iter().flatten().copied().collect();
        let answers = join_all(order.iter().map(|&i| async move {
            match tokio::time::timeout(limit, self.entries[i].service.health()).await {
                Ok(health) => health,
                Err(_) => Health::Unhealthy(format!("health check timed out after {limit:?}")),
            }
        }))
        .await;
        let services: Vec<ServiceHealth> = order
            .iter()
            .zip(answers)
            .map(|(&i, health)| ServiceHealth { name: self.entries[i].name.clone(), health })
            .collect();
        let overall = services.iter().map(|s| s.health.status()).max().unwrap_or(HealthStatus::Healthy);
        HealthReport { overall, services }
    }

    /// Stops every service in reverse start order (each layer concurrently,
    /// dependents before their dependencies). Every service is asked to stop
    /// even when another fails; the error lists each failure.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.stop().await
    }

    /// Like [`Running::shutdown`], through a shared reference: the first call
    /// stops the services, later calls do nothing and return `Ok`.
    pub async fn stop(&self) -> Result<(), Error> {
        if self.stopped.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Ok(());
        }
        let failures = stop_layers(&self.entries, &self.layers, self.config.stop_timeout).await;
        if failures.is_empty() { Ok(()) } else { Err(Error::StopFailed(failures)) }
    }
}
