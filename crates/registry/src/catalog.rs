//! The concurrent catalog: lock-free snapshots for readers, serialized writers.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

use arc_swap::ArcSwap;

use crate::{
    Capabilities, Category, Clock, Error, ModelSpec, ModelStatus, Pricing, Sampling, SystemClock, spec::FieldError,
};

/// An immutable view of the catalog at one version.
///
/// Readers hold it as long as they like; writers never wait for them.
#[derive(Debug, Default)]
pub struct Snapshot {
    version: u64,
    // Invariant: sorted by id, ids unique; `index` maps each id to its position.
    models: Vec<Arc<ModelSpec>>,
    index: HashMap<String, usize>,
}

impl Snapshot {
    fn new(version: u64, mut models: Vec<Arc<ModelSpec>>) -> Snapshot {
        models.sort_by(|a, b| a.id.cmp(&b.id));
        let index = models.iter().enumerate().map(|(i, m)| (m.id.clone(), i)).collect();
        Snapshot { version, models, index }
    }

    /// The catalog version this snapshot shows (0 for an empty new catalog).
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Every model, sorted by id.
    #[must_use]
    pub fn models(&self) -> &[Arc<ModelSpec>] {
        &self.models
    }

    /// The model with `id`.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<&Arc<ModelSpec>> {
        self.index.get(id).map(|&i| &self.models[i])
    }

    /// The number of models.
    #[must_use]
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether the catalog is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

/// What changed, delivered to subscribers after each write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The version the write produced.
    pub version: u64,
    /// What the write did.
    pub kind: ChangeKind,
}

/// The kind of a [`Change`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// A model was added.
    Added(String),
    /// A model's updatable fields changed.
    Updated(String),
    /// A model was removed.
    Removed(String),
    /// The whole catalog was replaced (a load or restore).
    Replaced,
}

/// The fields of a model that [`Catalog::update`] may change; `None` leaves a
/// field as it is. The id, the provider and the creation time never change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelUpdate {
    /// See [`ModelSpec::display_name`].
    pub display_name: Option<String>,
    /// See [`ModelSpec::status`].
    pub status: Option<ModelStatus>,
    /// See [`ModelSpec::enabled`].
    pub enabled: Option<bool>,
    /// See [`ModelSpec::priority`].
    pub priority: Option<u8>,
    /// See [`ModelSpec::pricing`].
    pub pricing: Option<Pricing>,
    /// See [`ModelSpec::categories`].
    pub categories: Option<Vec<Category>>,
    /// See [`ModelSpec::capabilities`].
    pub capabilities: Option<Capabilities>,
    /// See [`ModelSpec::quality`].
    pub quality: Option<f64>,
    /// See [`ModelSpec::typical_latency_ms`].
    pub typical_latency_ms: Option<u32>,
    /// See [`ModelSpec::tags`].
    pub tags: Option<Vec<String>>,
    /// See [`ModelSpec::metadata`].
    pub metadata: Option<BTreeMap<String, String>>,
    /// See [`ModelSpec::sampling`].
    pub sampling: Option<Sampling>,
}

impl ModelUpdate {
    fn apply(self, spec: &mut ModelSpec) {
        let ModelUpdate {
            display_name,
            status,
            enabled,
            priority,
            pricing,
            categories,
            capabilities,
            quality,
            typical_latency_ms,
            tags,
            metadata,
            sampling,
        } = self;
        set(&mut spec.display_name, display_name);
        set(&mut spec.status, status);
        set(&mut spec.enabled, enabled);
        set(&mut spec.priority, priority);
        set(&mut spec.pricing, pricing.map(Some));
        set(&mut spec.categories, categories);
        set(&mut spec.capabilities, capabilities);
        set(&mut spec.quality, quality.map(Some));
        set(&mut spec.typical_latency_ms, typical_latency_ms.map(Some));
        set(&mut spec.tags, tags);
        set(&mut spec.metadata, metadata);
        set(&mut spec.sampling, sampling);
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

type Subscriber = Box<dyn Fn(&Change) + Send + Sync>;

/// The model catalog: many readers, rare writers.
///
/// Readers take a [`Snapshot`] (an atomic pointer load, no lock) and see one
/// consistent version for as long as they hold it. Writers are serialized,
/// validate, publish a new snapshot with the version bumped, and then notify
/// subscribers. Timestamps come from an injected clock (Unix milliseconds).
///
/// ```
/// use modelfleet_registry::{Catalog, ModelSpec, ModelUpdate};
///
/// let catalog = Catalog::new();
/// let mut spec = ModelSpec::new("fast-small", "local");
/// spec.context_window = Some(8192);
/// catalog.add(spec)?;
/// catalog.update("fast-small", ModelUpdate { priority: Some(10), ..ModelUpdate::default() })?;
/// let snapshot = catalog.snapshot();
/// assert_eq!(snapshot.version(), 2);
/// assert_eq!(snapshot.get("fast-small").map(|m| m.priority), Some(10));
/// assert!(catalog.add(ModelSpec::new("fast-small", "local")).is_err(), "ids are unique");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Catalog {
    current: ArcSwap<Snapshot>,
    // Serializes writers; readers never take it.
    write: Mutex<()>,
    subscribers: Mutex<Vec<Subscriber>>,
    clock: Box<dyn Clock>,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catalog").field("current", &self.current.load()).finish_non_exhaustive()
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog::new()
    }
}

impl Catalog {
    /// An empty catalog on the system clock.
    #[must_use]
    pub fn new() -> Catalog {
        Catalog::with_clock(SystemClock)
    }

    /// An empty catalog whose timestamps come from `clock` (Unix milliseconds).
    #[must_use]
    pub fn with_clock(clock: impl Clock + 'static) -> Catalog {
        Catalog {
            current: ArcSwap::from_pointee(Snapshot::default()),
            write: Mutex::new(()),
            subscribers: Mutex::new(Vec::new()),
            clock: Box::new(clock),
        }
    }

    /// A catalog holding `models`, all validated (every problem reported).
    pub fn from_models(models: Vec<ModelSpec>) -> Result<Catalog, Error> {
        let catalog = Catalog::new();
        catalog.replace(models)?;
        Ok(catalog)
    }

    /// The current version, consistent and lock-free.
    #[must_use]
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The current version number.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.current.load().version
    }

    /// The model with `id` now.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<Arc<ModelSpec>> {
        self.current.load().get(id).cloned()
    }

    /// Every model now, sorted by id.
    #[must_use]
    pub fn list(&self) -> Vec<Arc<ModelSpec>> {
        self.current.load().models.clone()
    }

    /// Calls `subscriber` after every successful write, on the writer's thread.
    pub fn subscribe(&self, subscriber: impl Fn(&Change) + Send + Sync + 'static) {
        self.subscribers.lock().unwrap_or_else(PoisonError::into_inner).push(Box::new(subscriber));
    }

    /// Adds a model. Its timestamps are set to now.
    pub fn add(&self, mut spec: ModelSpec) -> Result<u64, Error> {
        invalid(&spec)?;
        self.write(|models, now| {
            if models.iter().any(|m| m.id == spec.id) {
                return Err(Error::Duplicate(spec.id.clone()));
            }
            spec.created_at_ms = now;
            spec.updated_at_ms = now;
            let id = spec.id.clone();
            models.push(Arc::new(spec));
            Ok(ChangeKind::Added(id))
        })
    }

    /// Changes the updatable fields of model `id`; the result is validated.
    pub fn update(&self, id: &str, update: ModelUpdate) -> Result<u64, Error> {
        self.write(|models, now| {
            let slot = models.iter_mut().find(|m| m.id == id).ok_or_else(|| Error::NotFound(id.to_owned()))?;
            let mut spec = ModelSpec::clone(slot);
            update.apply(&mut spec);
            spec.updated_at_ms = now;
            invalid(&spec)?;
            *slot = Arc::new(spec);
            Ok(ChangeKind::Updated(id.to_owned()))
        })
    }

    /// Removes model `id`.
    pub fn remove(&self, id: &str) -> Result<u64, Error> {
        self.write(|models, _| {
            let before = models.len();
            models.retain(|m| m.id != id);
            if models.len() == before {
                return Err(Error::NotFound(id.to_owned()));
            }
            Ok(ChangeKind::Removed(id.to_owned()))
        })
    }

    /// Replaces every model at once (a restore from the store, a config
    /// reload): all validated first, duplicates refused, nothing changed on error.
    /// Timestamps already set are kept; unset ones become now.
    pub fn replace(&self, models: Vec<ModelSpec>) -> Result<u64, Error> {
        let mut problems = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for spec in &models {
            if let Err(Error::Invalid { id, problems: p }) = invalid(spec) {
                problems.extend(p.into_iter().map(|e| (id.clone(), e)));
            }
            if !seen.insert(spec.id.as_str()) {
                return Err(Error::Duplicate(spec.id.clone()));
            }
        }
        if !problems.is_empty() {
            return Err(Error::InvalidCatalog(problems));
        }
        self.write(|current, now| {
            *current = models
                .into_iter()
                .map(|mut spec| {
                    if spec.created_at_ms == 0 {
                        spec.created_at_ms = now;
                    }
                    if spec.updated_at_ms == 0 {
                        spec.updated_at_ms = now;
                    }
                    Arc::new(spec)
                })
                .collect();
            Ok(ChangeKind::Replaced)
        })
    }

    /// Runs one write under the writer lock and publishes its result.
    fn write(
        &self,
        change: impl FnOnce(&mut Vec<Arc<ModelSpec>>, u64) -> Result<ChangeKind, Error>,
    ) -> Result<u64, Error> {
        let _writer = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.current.load_full();
        let mut models = current.models.clone();
        let kind = change(&mut models, self.clock.now_ms())?;
        let version = current.version + 1;
        self.current.store(Arc::new(Snapshot::new(version, models)));
        let event = Change { version, kind };
        for subscriber in self.subscribers.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            subscriber(&event);
        }
        Ok(version)
    }
}

fn invalid(spec: &ModelSpec) -> Result<(), Error> {
    let problems: Vec<FieldError> = spec.problems();
    if problems.is_empty() { Ok(()) } else { Err(Error::Invalid { id: spec.id.clone(), problems }) }
}
