//! The stack's parts as services of the service registry, started in
//! dependency order: store → catalog → monitor, budgets, metrics → router.

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock},
};

use modelfleet_budget::{BudgetSpec, Budgets, Status};
use modelfleet_metrics::Metrics;
use modelfleet_monitor::Monitor;
use modelfleet_registry::{Catalog, Clock, ModelSpec, SystemClock};
use modelfleet_service_registry::{BoxError, BoxFuture, Health, Service};
use modelfleet_store::{SpendRow, Store, StoreConfig};

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
            if let Some(store) = self.store.get().cloned() {
                // Blocking: on the blocking pool (which also holds a paused
                // clock still). The WAL is folded into the file, so the file
                // alone holds everything once the process has stopped.
                tokio::task::spawn_blocking(move || store.flush_and_checkpoint()).await??;
            }
            Ok(())
        })
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async move {
            let Some(store) = self.store.get() else { return Health::Unhealthy("not started".into()) };
            // Degraded while writing fails, healthy again once a write
            // commits: rows dropped earlier are a counter (the gateway's
            // modelfleet_store_writes_dropped_total), not a lasting state.
            // Serving goes on meanwhile (spend is kept and retried; hard
            // budgets fail closed).
            if let Some(why) = store.write_failing() {
                let (_, dropped) = store.write_counts();
                return Health::Degraded(format!(
                    "writes are failing ({why}); {dropped} performance rows, alerts or cache entries dropped so far"
                ));
            }
            // A large file is checked in the background: a failed check
            // is worth an operator's look, not a stop.
            if let modelfleet_store::Integrity::Failed(why) = store.integrity() {
                return Health::Degraded(format!(
                    "the database's integrity check failed ({why}); run modelfleet db check"
                ));
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
            // SQLite: on the blocking pool, as every catalog write.
            let (models, catalog, saving) = (self.models.clone(), Arc::clone(&self.catalog), Arc::clone(&store));
            tokio::task::spawn_blocking(move || -> Result<(), BoxError> {
                let models = if let Some(models) = models {
                    models
                } else {
                    let saved = saving.load_catalog()?;
                    if saved.is_empty() { modelfleet_registry::default_catalog()? } else { saved }
                };
                catalog.replace(models)?;
                saving.save_catalog(catalog.snapshot().models())?;
                Ok(())
            })
            .await??;
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

/// Budgets: the configuration's (re-applied at every start, and winning
/// over a stored budget of the same scope and period) and the API's (kept in
/// the store), with each one's spend, breakdown and alert history restored,
/// and alerts persisted as they fire.
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
            let reader = Arc::clone(&store);
            let (stored, saved, alerts) = tokio::task::spawn_blocking(move || -> Result<_, modelfleet_store::Error> {
                Ok((reader.budgets()?, reader.spend()?, reader.alerts()?))
            })
            .await??;
            for spec in stored {
                let configured = self.specs.iter().any(|c| c.scope == spec.scope && c.period == spec.period);
                if !configured {
                    self.budgets.add(spec)?;
                }
            }
            let now = SystemClock.now_ms();
            for status in self.budgets.statuses() {
                if let Some(row) = current_row(&saved, &status, now) {
                    self.budgets.restore(
                        &status.spec.scope,
                        status.spec.period,
                        row.spent,
                        row.by_provider.clone(),
                        row.by_model.clone(),
                    )?;
                }
            }
            self.budgets.restore_alerts(alerts);
            let persist = Arc::clone(&store);
            self.budgets.subscribe(move |alert| {
                tracing::warn!(scope = %alert.scope, period = %alert.period, threshold = alert.threshold, spent = %alert.spent, "budget threshold reached");
                // Queued to the writer: never blocks the request that crossed it.
                if let Err(err) = persist.save_alert(alert) {
                    tracing::error!(%err, "could not queue a budget alert");
                }
            });
            Ok(())
        })
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async move {
            let Some(store) = self.store.store.get() else { return Health::Unhealthy("not started".into()) };
            match store.spend_backlog() {
                Some(reason) => Health::Degraded(format!(
                    "spend cannot be persisted ({reason}): requests under a hard budget are refused until it can"
                )),
                None => Health::Healthy,
            }
        })
    }
}

/// The stored spend of `status`'s budget for the period containing `now`.
///
/// Matched by the stored period's own bounds, not by its start alone, so a
/// change of `utc_offset_minutes` between runs loses nothing: the spend of
/// the period that contains now (as it was computed when written) counts
/// towards the current one. A row written before periods kept their end
/// matches by its start.
fn current_row<'r>(saved: &'r [SpendRow], status: &Status, now: u64) -> Option<&'r SpendRow> {
    saved.iter().filter(|r| r.scope == status.spec.scope && r.period == status.spec.period).find(|r| {
        match r.period_end_ms {
            Some(end) => r.period_start_ms <= now && now < end,
            None => r.period_start_ms == status.period_start_ms,
        }
    })
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
