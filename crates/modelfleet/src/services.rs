//! The stack's parts as services of the service registry, started in
//! dependency order: store → catalog → monitor, budgets, metrics → router.

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock},
};

use modelfleet_budget::{BudgetSpec, Budgets};
use modelfleet_metrics::Metrics;
use modelfleet_monitor::Monitor;
use modelfleet_registry::{Catalog, ModelSpec};
use modelfleet_service_registry::{BoxError, BoxFuture, Health, Service};
use modelfleet_store::{Store, StoreConfig};

/// Gives the started component, or says which service never started.
pub(crate) fn started<T>(cell: &OnceLock<Arc<T>>, name: &str) -> Result<Arc<T>, BoxError> {
    cell.get().cloned().ok_or_else(|| format!("service {name} has not started").into())
}

/// The SQLite store.
pub(crate) struct StoreService {
    pub(crate) path: PathBuf,
    pub(crate) config: StoreConfig,
    pub(crate) store: OnceLock<Arc<Store>>,
}

impl Service for StoreService {
    fn name(&self) -> &'static str {
        "store"
    }

    fn start(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            let store = Store::open(&self.path, self.config)?;
            let _ = self.store.set(Arc::new(store));
            Ok(())
        })
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            if let Some(store) = self.store.get() {
                store.flush()?;
            }
            Ok(())
        })
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async move {
            let Some(store) = self.store.get() else { return Health::Unhealthy("not started".into()) };
            let (_, dropped) = store.write_counts();
            if dropped > 0 {
                return Health::Unhealthy(format!("{dropped} queued rows could not be written"));
            }
            if store.cache_stats().degraded {
                return Health::Degraded("response cache degraded (bypassed)".into());
            }
            Health::Healthy
        })
    }
}

/// The catalog: restored from the store, or seeded (and saved) on first use.
pub(crate) struct CatalogService {
    pub(crate) store: Arc<StoreService>,
    pub(crate) catalog: Arc<Catalog>,
    /// Models given in code or config: they replace the stored catalog.
    pub(crate) models: Option<Vec<ModelSpec>>,
}

impl Service for CatalogService {
    fn name(&self) -> &'static str {
        "catalog"
    }

    fn dependencies(&self) -> Vec<&str> {
        vec!["store"]
    }

    fn start(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            let store = started(&self.store.store, "store")?;
            let models = if let Some(models) = &self.models {
                models.clone()
            } else {
                let saved = store.load_catalog()?;
                if saved.is_empty() { modelfleet_registry::default_catalog()? } else { saved }
            };
            self.catalog.replace(models)?;
            store.save_catalog(self.catalog.snapshot().models())?;
            // Later changes (CLI, admin API) are persisted as they happen.
            let persist = Arc::clone(&store);
            let catalog = Arc::downgrade(&self.catalog);
            self.catalog.subscribe(move |_| {
                if let Some(catalog) = catalog.upgrade()
                    && let Err(err) = persist.save_catalog(catalog.snapshot().models())
                {
                    tracing::error!(%err, "could not persist the catalog");
                }
            });
            Ok(())
        })
    }
}

/// The monitor (in memory; the store keeps the history).
pub(crate) struct MonitorService {
    pub(crate) monitor: Arc<Monitor>,
}

impl Service for MonitorService {
    fn name(&self) -> &'static str {
        "monitor"
    }

    fn dependencies(&self) -> Vec<&str> {
        vec!["catalog"]
    }

    fn start(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async { Ok(()) })
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async move {
            let report = self.monitor.health(&modelfleet_monitor::ReportConfig::default());
            match report.overall {
                modelfleet_monitor::Health::Healthy => Health::Healthy,
                modelfleet_monitor::Health::Degraded => Health::Degraded("some models are degraded".into()),
                modelfleet_monitor::Health::Down => {
                    let down: Vec<&String> = report
                        .models
                        .iter()
                        .filter(|(_, h)| **h == modelfleet_monitor::Health::Down)
                        .map(|(m, _)| m)
                        .collect();
                    Health::Degraded(format!("models down: {down:?}"))
                }
            }
        })
    }
}

/// Budgets, with spend restored from the store and alerts persisted to it.
pub(crate) struct BudgetService {
    pub(crate) store: Arc<StoreService>,
    pub(crate) budgets: Arc<Budgets>,
    pub(crate) specs: Vec<BudgetSpec>,
}

impl Service for BudgetService {
    fn name(&self) -> &'static str {
        "budgets"
    }

    fn dependencies(&self) -> Vec<&str> {
        vec!["store"]
    }

    fn start(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            let store = started(&self.store.store, "store")?;
            for spec in &self.specs {
                self.budgets.add(spec.clone())?;
            }
            let saved = store.spend()?;
            for status in self.budgets.statuses() {
                let spent = saved
                    .iter()
                    .find(|r| {
                        r.scope == status.spec.scope
                            && r.period == status.spec.period
                            && r.period_start_ms == status.period_start_ms
                    })
                    .map(|r| r.spent);
                if let Some(spent) = spent {
                    self.budgets.restore_spent(&status.spec.scope, status.spec.period, spent)?;
                }
            }
            let persist = Arc::clone(&store);
            self.budgets.subscribe(move |alert| {
                tracing::warn!(scope = %alert.scope, threshold = alert.threshold, spent = %alert.spent, "budget threshold reached");
                if let Err(err) = persist.save_alert(alert) {
                    tracing::error!(%err, "could not persist a budget alert");
                }
            });
            Ok(())
        })
    }
}

/// Metrics, whose model labels follow the catalog.
pub(crate) struct MetricsService {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) catalog: Arc<Catalog>,
}

impl Service for MetricsService {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn dependencies(&self) -> Vec<&str> {
        vec!["catalog"]
    }

    fn start(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            let known = |catalog: &Catalog, metrics: &Metrics| {
                let snapshot = catalog.snapshot();
                metrics.set_known_models(snapshot.models().iter().map(|m| m.id.as_str()));
            };
            known(&self.catalog, &self.metrics);
            let metrics = Arc::clone(&self.metrics);
            let catalog = Arc::downgrade(&self.catalog);
            self.catalog.subscribe(move |_| {
                if let Some(catalog) = catalog.upgrade() {
                    known(&catalog, &metrics);
                }
            });
            Ok(())
        })
    }
}

/// Selection and fallback: ready once the catalog and its live signals are.
pub(crate) struct RouterService;

impl Service for RouterService {
    fn name(&self) -> &'static str {
        "router"
    }

    fn dependencies(&self) -> Vec<&str> {
        vec!["catalog", "monitor", "budgets", "metrics"]
    }

    fn start(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async { Ok(()) })
    }
}
