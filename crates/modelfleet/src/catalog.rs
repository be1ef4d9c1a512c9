//! Catalog administration (the admin API's models), and under `[cluster]`
//! the catalog every replica shares: the shared catalog in PostgreSQL
//! (`modelfleet_cluster::SharedCatalog`) is the truth, and each replica's
//! in-memory [`Catalog`] is its copy, re-read at each notification and
//! every [`REREAD`] anyway.
//!
//! An edit is written to the shared catalog first (refused there, changing
//! nothing, when it conflicts), then this replica re-reads before it
//! answers, so an admin sees their edit on the replica they asked. Copies
//! are applied one at a time, latest revision only, on the blocking pool
//! (the catalog's subscribers write SQLite).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, RwLock, Weak},
    time::Duration,
};

use modelfleet_cluster::{CatalogChange, ClusterError, Current, EditRefused, ModelSource, SharedCatalog, SharedLedger};
use modelfleet_registry::{Catalog, Clock, ModelSpec, ModelUpdate};

use crate::{Fleet, FleetError};

/// How often a replica asks the shared catalog for its latest revision,
/// notified or not: a notification missed (its listener reconnecting)
/// delays an edit by at most this.
pub(crate) const REREAD: Duration = Duration::from_secs(1);

/// A model as the admin API shows it: its spec, and under `[cluster]` its
/// place in the shared catalog (read together, so an `ETag` always goes
/// with the spec it names).
#[derive(Debug, Clone, PartialEq)]
pub struct AdminModel {
    /// Its spec.
    pub spec: Arc<ModelSpec>,
    /// Its revision and source (`None` without `[cluster]`).
    pub revision: Option<ModelRevision>,
}

/// A model's place in the shared catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ModelRevision {
    /// The revision of its last change (the admin API's `ETag`).
    pub revision: u64,
    /// Where it comes from (`config` models are read-only).
    pub source: ModelSource,
}

/// This replica's copy of the shared catalog.
pub(crate) struct CatalogSync {
    shared: SharedCatalog,
    catalog: Arc<Catalog>,
    /// Each model with its revision and source, as last applied: swapped
    /// whole, so a spec and its revision are always read together.
    models: RwLock<Arc<HashMap<String, AdminModel>>>,
    /// The revision applied last (`None`: none yet); held while applying,
    /// so copies are applied in order.
    applied: Arc<tokio::sync::Mutex<Option<u64>>>,
    /// Stopped with the fleet: nothing is applied any more.
    stopped: std::sync::atomic::AtomicBool,
    /// The revision applied last, for status (0: none yet).
    revision: std::sync::atomic::AtomicU64,
    /// The listener and the re-reader, stopped with this.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for CatalogSync {
    fn drop(&mut self) {
        self.abort();
    }
}

impl CatalogSync {
    /// Writes this replica's configured models (`config`; `None`: it has
    /// none, and an empty shared catalog is seeded with `catalog`'s), makes
    /// `catalog` the shared one, and keeps it so.
    pub(crate) async fn start(
        ledger: &SharedLedger,
        catalog: &Arc<Catalog>,
        config: Option<&[ModelSpec]>,
    ) -> Result<Arc<CatalogSync>, ClusterError> {
        let shared = ledger.catalog();
        let seed: Vec<ModelSpec> = catalog.list().iter().map(|m| (**m).clone()).collect();
        shared.publish_config(config, &seed).await?;
        let sync = Arc::new(CatalogSync {
            shared,
            catalog: Arc::clone(catalog),
            models: RwLock::default(),
            applied: Arc::new(tokio::sync::Mutex::new(None)),
            revision: std::sync::atomic::AtomicU64::new(0),
            stopped: std::sync::atomic::AtomicBool::new(false),
            tasks: Mutex::default(),
        });
        sync.refresh().await?;
        let woken = Arc::new(tokio::sync::Notify::new());
        let listener = sync.shared.listen(Arc::clone(&woken));
        let rereader = tokio::spawn(reread(Arc::downgrade(&sync), woken));
        sync.tasks.lock().unwrap_or_else(PoisonError::into_inner).extend([listener, rereader]);
        Ok(sync)
    }

    /// [`CatalogSync::start`] under `[cluster]` (`shared`), else nothing.
    pub(crate) async fn start_with(
        shared: Option<&crate::shared::SharedBudgets>,
        catalog: &Arc<Catalog>,
        config: Option<&[ModelSpec]>,
    ) -> Result<Option<Arc<CatalogSync>>, ClusterError> {
        match shared {
            Some(shared) => Ok(Some(CatalogSync::start(shared.ledger(), catalog, config).await?)),
            None => Ok(None),
        }
    }

    /// Applies the shared catalog's latest revision, unless it is applied.
    pub(crate) async fn refresh(&self) -> Result<(), ClusterError> {
        // Owned: an apply on the blocking pool keeps it until it ends,
        // even if this future is dropped meanwhile.
        let mut applied = Arc::clone(&self.applied).lock_owned().await;
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            // The store this copy writes to has stopped.
            return Ok(());
        }
        let latest = self.shared.latest().await?;
        if *applied == Some(latest) {
            return Ok(());
        }
        let state = self.shared.load().await?;
        for (id, why) in &state.unreadable {
            tracing::warn!(model = %id, %why, "a model of the shared catalog is left out: its row does not read");
        }
        let mut shown = HashMap::with_capacity(state.models.len());
        let mut models = Vec::with_capacity(state.models.len());
        for model in state.models {
            if let Err(why) = validate(&model.spec) {
                tracing::warn!(model = %model.spec.id, %why, "a model of the shared catalog is left out");
                continue;
            }
            let revision = Some(ModelRevision { revision: model.revision, source: model.source });
            shown.insert(model.spec.id.clone(), AdminModel { spec: Arc::new(model.spec.clone()), revision });
            models.push(model.spec);
        }
        let catalog = Arc::clone(&self.catalog);
        let now = catalog.snapshot();
        let same =
            now.len() == models.len() && models.iter().all(|m| now.get(&m.id).is_some_and(|current| **current == *m));
        if !same {
            applied = tokio::task::spawn_blocking(move || catalog.replace(models).map(|_| applied))
                .await
                .map_err(|e| ClusterError::Unavailable(format!("applying the catalog: {e}")))?
                .map_err(|e| ClusterError::Invalid(e.to_string()))?;
        }
        *self.models.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(shown);
        *applied = Some(state.revision);
        self.revision.store(state.revision, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The shared catalog's revision this copy is at.
    pub(crate) fn applied(&self) -> u64 {
        self.revision.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn shown(&self) -> Arc<HashMap<String, AdminModel>> {
        Arc::clone(&self.models.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Stops listening and re-reading, and waits for an apply under way
    /// to end (the fleet is shutting down: its store stops next).
    pub(crate) async fn stop(&self) {
        self.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        // An apply under way (on the blocking pool too) ends before this
        // lock is had; a later one finds the copy stopped.
        drop(self.applied.lock().await);
        self.abort();
    }

    fn abort(&self) {
        for task in self.tasks.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            task.abort();
        }
    }
}

/// Re-reads at each notification, and every [`REREAD`] anyway, until the
/// copy is dropped.
async fn reread(sync: Weak<CatalogSync>, woken: Arc<tokio::sync::Notify>) {
    let mut failing = false;
    loop {
        // Woken, or the time is up: either way, read.
        let _ = tokio::time::timeout(REREAD, woken.notified()).await;
        let Some(sync) = sync.upgrade() else { return };
        let outcome = sync.refresh().await;
        match outcome {
            Ok(()) if failing => tracing::info!("the shared catalog is read again"),
            Err(ref err) if !failing => {
                tracing::warn!(%err, "could not read the shared catalog: serving the last copy");
            }
            _ => {}
        }
        failing = outcome.is_err();
    }
}

/// `spec`'s problems, as the registry words them.
fn validate(spec: &ModelSpec) -> Result<(), String> {
    let problems = spec.problems();
    if problems.is_empty() {
        return Ok(());
    }
    let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
    Err(format!("model {:?} is invalid: {}", spec.id, problems.join("; ")))
}

fn refused(err: EditRefused) -> FleetError {
    FleetError::Catalog(err)
}

fn local(err: modelfleet_registry::Error) -> FleetError {
    refused(match err {
        modelfleet_registry::Error::NotFound(id) => EditRefused::NotFound(id),
        modelfleet_registry::Error::Duplicate(id) => EditRefused::Exists(id),
        other => EditRefused::Invalid(other.to_string()),
    })
}

/// A conditional edit needs revisions, which only the shared catalog keeps.
fn unconditional(expected: Option<u64>) -> Result<(), FleetError> {
    match expected {
        None => Ok(()),
        Some(_) => Err(refused(EditRefused::Invalid(
            "If-Match: model revisions are kept by the shared catalog ([cluster]); this gateway has none".into(),
        ))),
    }
}

impl Fleet {
    /// Whether the catalog is shared with other replicas (`[cluster]`).
    #[must_use]
    pub fn shares_catalog(&self) -> bool {
        self.catalog_sync.is_some()
    }

    /// Every model as the admin API shows it, by id.
    #[must_use]
    pub fn admin_models(&self) -> Vec<AdminModel> {
        let Some(sync) = &self.catalog_sync else {
            return self.catalog.list().into_iter().map(|spec| AdminModel { spec, revision: None }).collect();
        };
        let mut models: Vec<AdminModel> = sync.shown().values().cloned().collect();
        models.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        models
    }

    /// Model `id` as the admin API shows it.
    #[must_use]
    pub fn admin_model(&self, id: &str) -> Option<AdminModel> {
        match &self.catalog_sync {
            Some(sync) => sync.shown().get(id).cloned(),
            None => self.catalog.get(id).map(|spec| AdminModel { spec, revision: None }),
        }
    }

    /// Applies the shared catalog's latest revision now (a no-op without
    /// `[cluster]`): what every replica does within a second by itself.
    pub async fn refresh_catalog(&self) -> Result<(), FleetError> {
        let Some(sync) = &self.catalog_sync else { return Ok(()) };
        sync.refresh().await.map_err(|e| refused(EditRefused::Store(e)))
    }

    /// One edit through the shared catalog (then applied here), or of the
    /// local catalog (on the blocking pool: its subscribers write SQLite).
    /// Gives the model as written (`None`: removed).
    async fn edit_model(
        &self,
        id: &str,
        expected: Option<u64>,
        who: &str,
        shared: impl FnOnce(Current) -> Result<Option<ModelSpec>, EditRefused>,
        local: impl FnOnce(&Catalog) -> Result<u64, modelfleet_registry::Error> + Send + 'static,
    ) -> Result<Option<AdminModel>, FleetError> {
        let Some(sync) = &self.catalog_sync else {
            unconditional(expected)?;
            let catalog = Arc::clone(&self.catalog);
            tokio::task::spawn_blocking(move || local(&catalog))
                .await
                .map_err(|e| refused(EditRefused::Invalid(format!("the catalog's write failed: {e}"))))?
                .map_err(self::local)?;
            return Ok(self.admin_model(id));
        };
        let edited = sync.shared.edit(id, expected, who, shared).await.map_err(refused)?;
        // The edit committed: it stands, and is answered as written, even
        // if this copy's re-read fails now (the re-reader applies it
        // within a second).
        if let Err(err) = sync.refresh().await {
            tracing::warn!(%err, "an edit of the shared catalog committed; this replica applies it at its next re-read");
        }
        Ok(edited.model.map(|model| AdminModel {
            spec: Arc::new(model.spec),
            revision: Some(ModelRevision { revision: model.revision, source: model.source }),
        }))
    }

    /// Adds `spec` (refused if its id is taken); under `[cluster]`, to
    /// every replica, recorded as `who`'s.
    pub async fn add_model(&self, mut spec: ModelSpec, who: &str) -> Result<Option<AdminModel>, FleetError> {
        validate(&spec).map_err(|why| refused(EditRefused::Invalid(why)))?;
        let id = spec.id.clone();
        let now = self.clock.now_ms();
        let local = spec.clone();
        self.edit_model(
            &id,
            None,
            who,
            move |current| {
                if current.is_some() {
                    return Err(EditRefused::Exists(spec.id));
                }
                (spec.created_at_ms, spec.updated_at_ms) = (now, now);
                Ok(Some(spec))
            },
            move |catalog| catalog.add(local),
        )
        .await
    }

    /// Replaces model `spec.id`'s spec (its creation time stays); with
    /// `expected`, only if the model is at that revision (`[cluster]`).
    pub async fn replace_model(
        &self,
        mut spec: ModelSpec,
        expected: Option<u64>,
        who: &str,
    ) -> Result<Option<AdminModel>, FleetError> {
        validate(&spec).map_err(|why| refused(EditRefused::Invalid(why)))?;
        let id = spec.id.clone();
        let now = self.clock.now_ms();
        let local = spec.clone();
        self.edit_model(
            &id,
            expected,
            who,
            move |current| match current {
                None => Err(EditRefused::NotFound(spec.id)),
                Some(current) => {
                    spec.created_at_ms = current.map_or(now, |c| c.created_at_ms);
                    spec.updated_at_ms = now;
                    Ok(Some(spec))
                }
            },
            move |catalog| {
                let mut models: Vec<ModelSpec> = catalog.list().iter().map(|m| (**m).clone()).collect();
                let slot = models
                    .iter_mut()
                    .find(|m| m.id == local.id)
                    .ok_or_else(|| modelfleet_registry::Error::NotFound(local.id.clone()))?;
                *slot = local;
                catalog.replace(models)
            },
        )
        .await
    }

    /// Removes model `id`; with `expected`, only if it is at that revision.
    pub async fn remove_model(&self, id: &str, expected: Option<u64>, who: &str) -> Result<(), FleetError> {
        let owned = id.to_owned();
        self.edit_model(
            id,
            expected,
            who,
            |current| match current {
                None => Err(EditRefused::NotFound(owned)),
                Some(_) => Ok(None),
            },
            {
                let id = id.to_owned();
                move |catalog| catalog.remove(&id)
            },
        )
        .await
        .map(|_| ())
    }

    /// Puts model `id` in rotation or takes it out; with `expected`, only
    /// if it is at that revision.
    pub async fn set_model_enabled(
        &self,
        id: &str,
        enabled: bool,
        expected: Option<u64>,
        who: &str,
    ) -> Result<Option<AdminModel>, FleetError> {
        let owned = id.to_owned();
        let now = self.clock.now_ms();
        self.edit_model(
            id,
            expected,
            who,
            move |current| match current {
                None => Err(EditRefused::NotFound(owned)),
                Some(Err(why)) => Err(EditRefused::Invalid(format!(
                    "model {owned:?} cannot be changed in place ({why}): replace its whole spec"
                ))),
                Some(Ok(mut spec)) => {
                    spec.enabled = enabled;
                    spec.updated_at_ms = now;
                    Ok(Some(spec))
                }
            },
            {
                let id = id.to_owned();
                move |catalog| catalog.update(&id, ModelUpdate { enabled: Some(enabled), ..ModelUpdate::default() })
            },
        )
        .await
    }

    /// The shared catalog's latest `limit` changes, newest first (of model
    /// `model`, or of all); refused without `[cluster]`, which keeps no
    /// history.
    pub async fn catalog_history(&self, model: Option<&str>, limit: u32) -> Result<Vec<CatalogChange>, FleetError> {
        let Some(sync) = &self.catalog_sync else {
            return Err(refused(EditRefused::Invalid(
                "the catalog's history is kept by the shared catalog ([cluster]); this gateway has none".into(),
            )));
        };
        sync.shared.history(model, limit).await.map_err(|e| refused(EditRefused::Store(e)))
    }
}
