//! `Fleet`: the whole stack wired together, and the one call that does the job.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    future::Future,
    path::PathBuf,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use modelfleet_budget::{BudgetSpec, Budgets, Charge, Headroom, LedgerConfig, Period, Reservation, Scope, Status};
use modelfleet_errors::{AttemptCtx, Classify, ErrorClass, Failure, RetryConfig, RetryPolicy, Timer, TokioTimer};
use modelfleet_fallback::{
    Attempt, CircuitConfig, CircuitSettings, CircuitState, CooldownConfig, ExecuteError, ExecutorConfig, HedgeAfter,
    Order, Permit, Plan, RetryBudget, RetryBudgetConfig, Tracker, TrackerConfig,
};
use modelfleet_metrics::{Category as MetricsCategory, Metrics, MetricsConfig};
use modelfleet_monitor::{InFlightShared, LiveAt, Monitor, MonitorConfig};
use modelfleet_registry::{Catalog, Category, Clock, ModelSpec, Money, SystemClock, Usage};
use modelfleet_selector::{
    BudgetRoom, Explanation, LiveSignals, Ranked, Rejection, Requirements, SelectorConfig, Signals, Strategy, Weights,
    worst_case_cost,
};
use modelfleet_service_registry::{HealthReport, RegistryConfig, Running, ServiceRegistry};
use modelfleet_store::{Store, StoreConfig};
use serde::Serialize;

use crate::{
    books::{Books, Entry, Pending, RequestInfo, Tag, price_of},
    services::{BudgetService, CatalogService, MetricsService, MonitorService, RouterService, StoreService, started},
};

/// Where [`Fleet::open_default`] keeps its database:
/// `$MODELFLEET_DB`, else `$XDG_DATA_HOME/modelfleet/fleet.db`, else
/// `~/.local/share/modelfleet/fleet.db`, else `./modelfleet.db`.
#[must_use]
pub fn default_db_path() -> PathBuf {
    if let Some(path) = std::env::var_os("MODELFLEET_DB") {
        return PathBuf::from(path);
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(data).join("modelfleet").join("fleet.db");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/modelfleet/fleet.db"),
        None => PathBuf::from("modelfleet.db"),
    }
}

/// A named set of requirements with its own order and fallbacks.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    /// The name requests use.
    pub name: String,
    /// What the route needs.
    pub requirements: Requirements,
    /// How its candidates are ranked.
    pub strategy: Strategy,
    /// An explicit fallback order, overriding the ranking.
    pub fallbacks: Vec<String>,
    /// Hedge its non-streamed requests after this (opt-in).
    pub hedge: Option<HedgeAfter>,
}

/// Everything a [`Fleet`] is built from. `Default` is the embedded default:
/// the default catalog (or the one already in the database), no budgets.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// The database (`None`: [`default_db_path`]).
    pub db_path: Option<PathBuf>,
    /// The catalog; `None` keeps the stored one (or seeds the default).
    pub models: Option<Vec<ModelSpec>>,
    /// Routes by name.
    pub routes: Vec<RouteSpec>,
    /// Explicit fallbacks per model id, for requests that name a model.
    pub model_fallbacks: BTreeMap<String, Vec<String>>,
    /// Hedging per model id, for requests that name a model (opt-in).
    pub model_hedges: BTreeMap<String, HedgeAfter>,
    /// Providers that only simulate: never an implied fallback for a
    /// real provider's model.
    pub simulated_providers: Vec<String>,
    /// Budgets.
    pub budgets: Vec<BudgetSpec>,
    /// The budgets' calendar.
    pub ledger: LedgerConfig,
    /// Retries and the deadline.
    pub retry: RetryConfig,
    /// Cooldowns and circuits.
    pub tracker: TrackerConfig,
    /// Retries per provider, shared by all requests.
    pub retry_budget: RetryBudgetConfig,
    /// The most attempts one request makes (retries and hedges included).
    pub max_attempts_per_request: u32,
    /// The most of a request's candidates ejections may take out, percent.
    pub max_ejected_percent: u8,
    /// Score weights.
    pub weights: Weights,
    /// How requests without a route rank their candidates.
    pub strategy: Strategy,
    /// The store.
    pub store: StoreConfig,
    /// The monitor.
    pub monitor: MonitorConfig,
    /// The metrics.
    pub metrics: MetricsConfig,
    /// The fleet runs on tokio's paused clock (a simulation, like the demo,
    /// or a test): waits for the store's commits run on the blocking pool,
    /// which holds a paused clock still, so simulated time does not jump
    /// while SQLite commits. Off in production, where they are awaited.
    pub virtual_time: bool,
    /// `[cluster]`: hard budgets shared with other replicas in PostgreSQL.
    pub cluster: Option<modelfleet_config_validate::ClusterSettings>,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            db_path: None,
            models: None,
            routes: Vec::new(),
            model_fallbacks: BTreeMap::new(),
            model_hedges: BTreeMap::new(),
            simulated_providers: Vec::new(),
            budgets: Vec::new(),
            ledger: LedgerConfig::default(),
            retry: RetryConfig::default(),
            tracker: TrackerConfig::default(),
            retry_budget: RetryBudgetConfig::default(),
            max_attempts_per_request: ExecutorConfig::default().max_attempts_per_request,
            max_ejected_percent: ExecutorConfig::default().max_ejected_percent,
            weights: Weights::default(),
            strategy: Strategy::WeightedScore,
            store: StoreConfig::default(),
            monitor: MonitorConfig::default(),
            metrics: MetricsConfig::default(),
            virtual_time: false,
            cluster: None,
        }
    }
}

impl FleetOptions {
    /// The options a validated configuration describes (refused only when
    /// a setting the validator let through is still unusable).
    pub fn from_config(config: &modelfleet_config_validate::Config) -> Result<FleetOptions, FleetError> {
        let r = &config.resilience;
        let ms = Duration::from_millis;
        let circuit = CircuitConfig::new(CircuitSettings {
            window: ms(r.circuit_window_ms),
            min_requests: r.circuit_min_requests,
            failure_ratio: r.circuit_failure_ratio,
            open_for: ms(r.circuit_open_ms),
            half_open_probes: r.circuit_half_open_probes,
            slow_call_duration: ms(r.circuit_slow_call_ms),
            slow_call_ratio: r.circuit_slow_call_ratio,
        })
        .map_err(|e| FleetError::Start(format!("[circuit]: {e}")))?;
        let retry_budget = RetryBudgetConfig {
            ratio: r.retry_budget_percent / 100.0,
            min_per_sec: r.retry_budget_min_per_sec,
            window: ms(r.retry_budget_window_ms),
        };
        retry_budget.check().map_err(|e| FleetError::Start(format!("[fallback]: {e}")))?;
        Ok(FleetOptions {
            db_path: config.store.path.clone(),
            // A configuration without models keeps the stored (or default) catalog.
            models: (!config.models.is_empty()).then(|| config.models.clone()),
            routes: config
                .routes
                .iter()
                .map(|route| RouteSpec {
                    name: route.name.clone(),
                    requirements: route.requirements.clone(),
                    strategy: route.strategy,
                    fallbacks: route.fallbacks.clone(),
                    hedge: route.hedge,
                })
                .collect(),
            model_fallbacks: config.model_fallbacks.clone(),
            model_hedges: config.model_hedges.clone(),
            simulated_providers: config.simulated_providers(),
            budgets: config
                .budgets
                .iter()
                .cloned()
                .chain(config.server.api_keys.iter().filter_map(|key| {
                    key.monthly_budget
                        .map(|limit| BudgetSpec::hard(Scope::Key(key.name.clone()), Period::Monthly, limit))
                }))
                .collect(),
            ledger: LedgerConfig { utc_offset_minutes: config.utc_offset_minutes, ..LedgerConfig::default() },
            retry: config.retry.clone(),
            tracker: TrackerConfig {
                cooldown: CooldownConfig {
                    short: ms(r.cooldown_short_ms),
                    long: ms(r.cooldown_long_ms),
                    escalating_base: ms(r.cooldown_escalating_base_ms),
                    escalating_max: ms(r.cooldown_escalating_max_ms),
                    timeouts_to_eject: r.cooldown_timeouts_to_eject,
                    request_specific_to_eject: r.cooldown_request_specific_to_eject,
                    multiplier_decay: ms(r.cooldown_multiplier_decay_ms),
                    streak_decay: ms(r.cooldown_streak_decay_ms),
                    ..CooldownConfig::default()
                },
                circuit,
            },
            retry_budget,
            max_attempts_per_request: r.max_attempts_per_request,
            max_ejected_percent: r.max_ejected_percent,
            weights: config.weights,
            strategy: Strategy::WeightedScore,
            store: StoreConfig {
                batch_rows: config.store.batch_rows,
                batch_wait: ms(config.store.batch_wait_ms),
                durability: if config.store.sync_full {
                    modelfleet_store::Durability::PowerLoss
                } else {
                    modelfleet_store::Durability::Process
                },
                cache_max_entries: config.cache.max_entries,
                cache_max_bytes: config.cache.max_bytes,
                retain_days: config.store.retain_days,
                aggregate_retain_days: config.store.aggregate_retain_days,
                ..StoreConfig::default()
            },
            monitor: MonitorConfig::default(),
            metrics: MetricsConfig { window_secs: config.metrics.window_secs, ..MetricsConfig::default() },
            virtual_time: false,
            cluster: config.cluster.clone(),
        })
    }
}

/// What a model call returns: its answer and its usage.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelResponse<T> {
    /// The answer.
    pub value: T,
    /// The tokens it took (priced exactly at the model's prices); `None`
    /// when the provider did not say (or said it in a shape that cannot be
    /// trusted): the attempt is then charged its hold, the worst case.
    pub usage: Option<Usage>,
}

/// One request to the fleet.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// What it needs (ignored when `route` is set).
    pub requirements: Requirements,
    /// A configured route to use instead.
    pub route: Option<String>,
    /// A catalog model to try first: it must meet the requirements (else
    /// the request is refused saying why); then its configured fallbacks,
    /// or else the models that can do its job (see
    /// [`implied_fallback`](modelfleet_fallback::implied_fallback)).
    pub model: Option<String>,
    /// The API key or tenant, for per-key budgets.
    pub key: Option<String>,
    /// The request's id (`x-request-id`), written with every attempt's
    /// performance row: what a rating ([`Fleet::rate`]) names.
    pub request_id: Option<String>,
    /// The request's language as detected from its text (ISO 639-1), for
    /// the records and reports when the requirements name none. Never a
    /// selection constraint (`requirements.language` is).
    pub language_hint: Option<String>,
}

/// A request served.
#[derive(Debug, Clone)]
pub struct Served<T> {
    /// The answer.
    pub value: T,
    /// The model that served.
    pub model: String,
    /// Every attempt.
    pub attempts: Vec<Attempt>,
    /// Whether another model served because the first choice failed or was
    /// skipped (cooling down, ejected, busy); not when the first choice was
    /// merely outrun by a hedge, or did not meet the requirements.
    pub fell_back: bool,
    /// Its exact cost, failed attempts the provider bills included. For a
    /// stream, what the attempts that failed before it opened cost: the
    /// stream's own cost is known when its [`Settlement`] finishes.
    pub cost: Money,
    /// Its tokens.
    pub usage: Usage,
    /// What is left of the tightest hard budget that paid for it (after
    /// this request's charge, or with a stream's hold still counted), when
    /// a hard budget covers it.
    pub budget_remaining: Option<Money>,
}

/// What can go wrong with the fleet.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The stack could not start (the message names the service and cause).
    #[error("modelfleet could not start: {0}")]
    Start(String),
    /// No configured route has this name.
    #[error("unknown route {0:?}")]
    UnknownRoute(String),
    /// No catalog model has this id.
    #[error("unknown model {0:?}")]
    UnknownModel(String),
    /// The request's requirements cannot be judged against any model (a
    /// negative `max_cost`, a `min_quality` outside 0..=1); the message
    /// names the field.
    #[error("invalid requirements: {0}")]
    InvalidRequirements(String),
    /// No model could serve the request; the message lists what was tried.
    /// A request no model can serve within the hard budgets that would pay
    /// for it has the class [`ErrorClass::BudgetExceeded`], a message naming
    /// the budget, what is left and what the request could cost, and
    /// `retry_after` the time to the budget's next period.
    #[error("{message}")]
    NotServed {
        /// Sanitized, listing every attempt and why it failed.
        message: String,
        /// Every attempt.
        attempts: Vec<Attempt>,
        /// The last failure's class (the budget refusal's when no model fit;
        /// [`ErrorClass::BadRequest`] when no model meets the requirements, or
        /// a named model does not; `None` when models meet them but all are
        /// out of rotation, `retry_after` then saying when the first is back).
        class: Option<ErrorClass>,
        /// When asking again may succeed (a budget's next period).
        retry_after: Option<Duration>,
        /// What the failed attempts cost (the provider bills some failures).
        cost: Money,
        /// What is left of the hard budget that refused, for a budget refusal.
        budget_remaining: Option<Money>,
        /// The last upstream's own `code` and `param`, when its error said
        /// them (a gateway relays them with a bad request).
        upstream: Option<Box<modelfleet_errors::UpstreamFields>>,
    },
    /// Spend cannot be persisted right now, and every model that could serve
    /// this request is a paid one a hard budget would pay for: refused (fail
    /// closed) until the store commits again. Free models and models no hard
    /// budget covers keep serving.
    #[error(
        "budget store unavailable: spend cannot be persisted ({0}); requests under a hard budget are refused until it can"
    )]
    BudgetStoreUnavailable(String),
    /// A budget administration request was refused (the message says why).
    #[error("{0}")]
    Budget(BudgetAdminError),
    /// Stopping failed (the store could not flush).
    #[error("modelfleet could not stop cleanly: {0}")]
    Stop(String),
    /// The database refused a read or a write (a report, a rating), or an
    /// argument it cannot take ([`modelfleet_store::Error::Invalid`]).
    #[error("{0}")]
    Store(modelfleet_store::Error),
    /// A catalog edit was refused (no such model, a conflicting revision,
    /// a configured model, an invalid spec, the shared store unreachable);
    /// nothing changed.
    #[error("{0}")]
    Catalog(modelfleet_cluster::EditRefused),
    /// The shared store (`[cluster]`) could not be read or written: a
    /// report of the whole fleet cannot be made (the message never holds
    /// its URL).
    #[error("the fleet's records are in the shared store, which failed: {0}")]
    Cluster(String),
}

/// Why a budget administration request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BudgetAdminError {
    /// No budget has this scope and period.
    #[error("no {period} budget for {scope}")]
    NotFound {
        /// The scope asked for.
        scope: Scope,
        /// The period asked for.
        period: Period,
    },
    /// The budget comes from the configuration: change it there.
    #[error(
        "the {period} budget for {scope} comes from the configuration (source: config) and is read-only here; change it in the config file"
    )]
    ReadOnly {
        /// Its scope.
        scope: Scope,
        /// Its period.
        period: Period,
    },
    /// The budget is invalid or exists already.
    #[error("{0}")]
    Invalid(String),
    /// Replicas share their hard budgets (`[cluster]`): a change through
    /// one replica's API would reach only that one; change the budgets in
    /// every replica's configuration.
    #[error(
        "budgets are shared by every replica ([cluster]): a change through one replica's API would reach only that replica; change them in the configuration of every replica"
    )]
    Shared,
    /// The change could not be persisted (nothing changed).
    #[error("the budget change could not be persisted: {0}")]
    Store(String),
}

/// Where a budget was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetSource {
    /// The configuration file: re-applied at every start, read-only through the API.
    Config,
    /// The admin API or the CLI: kept in the database.
    Api,
}

/// A budget's status and where it was defined.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetView {
    /// Its status now.
    #[serde(flatten)]
    pub status: Status,
    /// Where it was defined.
    pub source: BudgetSource,
}

/// The whole stack: catalog, selector, fallback, monitor, budgets, metrics and
/// store, started through the service registry in dependency order.
///
/// ```
/// use modelfleet::{Fleet, FleetOptions, ModelResponse, Request, Usage};
///
/// let dir = tempfile::tempdir()?;
/// let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
/// runtime.block_on(async {
///     let fleet = Fleet::open(FleetOptions { db_path: Some(dir.path().join("fleet.db")), ..FleetOptions::default() }).await?;
///     let served = fleet
///         .call(&Request::default(), |model, _ctx| {
///             let id = model.id.clone();
///             async move {
///                 Ok(ModelResponse { value: format!("hello from {id}"), usage: Some(Usage::new(10, 5)) })
///             }
///         })
///         .await?;
///     assert!(served.value.starts_with("hello from"));
///     fleet.shutdown().await?;
///     Ok::<(), Box<dyn std::error::Error>>(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Fleet {
    running: Arc<Running>,
    pub(crate) store: Arc<Store>,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) monitor: Arc<Monitor>,
    budgets: Arc<Budgets>,
    /// The budgets the configuration defines (read-only through the API).
    config_budgets: Vec<(Scope, Period)>,
    metrics: Arc<Metrics>,
    books: Books,
    pub(crate) tracker: Tracker,
    retry_budget: RetryBudget,
    pub(crate) timer: TokioTimer,
    pub(crate) clock: SystemClock,
    executor: ExecutorConfig,
    /// How requests without a route rank their candidates.
    strategy: Strategy,
    routes: Vec<RouteSpec>,
    /// Per model with configured fallbacks: them, in order.
    model_fallbacks: BTreeMap<String, Vec<String>>,
    model_hedges: BTreeMap<String, HedgeAfter>,
    pub(crate) simulated_providers: Vec<String>,
    rng: Mutex<fastrand::Rng>,
    /// Budget administration, one change at a time (check, persist, apply).
    admin: tokio::sync::Mutex<()>,
    pub(crate) fallbacks_served: DashMap<String, AtomicU64>,
    memory: Arc<MemoryProbe>,
    /// `[cluster]`: this replica's copy of the shared catalog.
    pub(crate) catalog_sync: Option<Arc<crate::catalog::CatalogSync>>,
    /// `[cluster]`: the hard budgets shared with other replicas.
    shared: Option<Arc<crate::shared::SharedBudgets>>,
    /// `[cluster] redis_url`: ejections shared with other replicas, while it lives.
    ejections: Option<crate::ejections::EjectionSharing>,
    /// `[cluster]`: this replica's records shipped to every replica's history.
    pub(crate) records: Option<Arc<crate::records::SharedRecords>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("store", &self.store.path()).finish_non_exhaustive()
    }
}

/// Available memory for local models, from sysinfo, refreshed every 5 s
/// on the blocking pool (reading `/proc` is file I/O): a request reads the
/// last value and never waits for a refresh.
struct MemoryProbe {
    system: Mutex<Option<sysinfo::System>>,
    available_mb: AtomicU64,
    read_at_ms: AtomicU64,
    refreshing: std::sync::atomic::AtomicBool,
}

impl MemoryProbe {
    fn new() -> MemoryProbe {
        let probe = MemoryProbe {
            system: Mutex::new(sysinfo::System::new().ok()),
            available_mb: AtomicU64::new(0),
            read_at_ms: AtomicU64::new(0),
            refreshing: std::sync::atomic::AtomicBool::new(false),
        };
        probe.refresh(SystemClock.now_ms());
        probe
    }

    fn refresh(&self, now_ms: u64) {
        let mut guard = self.system.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(system) = guard.as_mut() {
            system.refresh_memory();
            self.available_mb.store(system.available_memory() / (1024 * 1024), Ordering::Relaxed);
        }
        self.read_at_ms.store(now_ms, Ordering::Relaxed);
    }

    /// MiB available, or `None` where the platform does not say; starts a
    /// refresh in the background when the value is older than 5 s.
    fn available_mb(self: &Arc<Self>, now_ms: u64) -> Option<u64> {
        if now_ms.saturating_sub(self.read_at_ms.load(Ordering::Relaxed)) >= 5_000
            && !self.refreshing.swap(true, Ordering::AcqRel)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let probe = Arc::clone(self);
            runtime.spawn_blocking(move || {
                probe.refresh(SystemClock.now_ms());
                probe.refreshing.store(false, Ordering::Release);
            });
        }
        match self.available_mb.load(Ordering::Relaxed) {
            0 => None,
            mb => Some(mb),
        }
    }
}

/// Drops a model's response-cache entries whenever the catalog changes its
/// spec or removes it, whichever path wrote the catalog (admin API, CLI, a
/// reload): a cached answer holds for the spec that produced it.
///
/// Each version is compared with the one before (a `replace` names no
/// model), timestamps aside. The subscriber runs on the thread that wrote
/// the catalog, and [`Store::cache_drop_model`] waits there for its commit:
/// catalog writes are off the async runtime already (the catalog is
/// persisted on the same thread the same way).
fn drop_cache_on_catalog_changes(catalog: &Arc<Catalog>, store: &Arc<Store>) {
    let seen = Mutex::new(catalog.snapshot());
    let (catalog_ref, store_ref) = (Arc::downgrade(catalog), Arc::downgrade(store));
    catalog.subscribe(move |_| {
        let (Some(catalog), Some(store)) = (catalog_ref.upgrade(), store_ref.upgrade()) else { return };
        let now = catalog.snapshot();
        let before = std::mem::replace(&mut *seen.lock().unwrap_or_else(PoisonError::into_inner), Arc::clone(&now));
        for old in before.models() {
            let changed = now.get(&old.id).is_none_or(|new| !old.same_but_timestamps(new));
            if changed && let Err(err) = store.cache_drop_model(&old.id) {
                tracing::warn!(model = %old.id, %err, "could not drop the model's cached responses");
            }
        }
    });
}

/// Each model's configured fallbacks without itself (a model is never
/// its own fallback), and only models left with some.
fn never_its_own(fallbacks: BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    fallbacks
        .into_iter()
        .map(|(id, fallbacks)| {
            let fallbacks: Vec<String> = fallbacks.into_iter().filter(|f| *f != id).collect();
            (id, fallbacks)
        })
        .filter(|(_, fallbacks)| !fallbacks.is_empty())
        .collect()
}

impl Fleet {
    /// The embedded default: the default database location and catalog.
    pub async fn open_default() -> Result<Fleet, FleetError> {
        Fleet::open(FleetOptions::default()).await
    }

    /// Starts the stack: store → catalog → monitor, budgets, metrics →
    /// router, through the service registry; a failure stops what started.
    pub async fn open(options: FleetOptions) -> Result<Fleet, FleetError> {
        let retry = RetryPolicy::new(options.retry.clone()).map_err(|e| FleetError::Start(e.to_string()))?;
        let store_service = Arc::new(StoreService {
            path: options.db_path.clone().unwrap_or_else(default_db_path),
            config: options.store,
            store: OnceLock::new(),
        });
        let catalog = Arc::new(Catalog::new());
        let monitor = Arc::new(Monitor::new(options.monitor));
        let budgets = Arc::new(Budgets::new(options.ledger));
        let metrics = Arc::new(Metrics::new(options.metrics));
        let mut registry = ServiceRegistry::new(RegistryConfig::default());
        let start_err = |e: modelfleet_service_registry::Error| FleetError::Start(e.to_string());
        registry.register_arc(Arc::clone(&store_service)).map_err(start_err)?;
        registry
            .register(CatalogService {
                store: Arc::clone(&store_service),
                catalog: Arc::clone(&catalog),
                models: options.models.clone(),
            })
            .map_err(start_err)?;
        registry.register(MonitorService { monitor: Arc::clone(&monitor) }).map_err(start_err)?;
        registry
            .register(BudgetService {
                store: Arc::clone(&store_service),
                budgets: Arc::clone(&budgets),
                specs: options.budgets.clone(),
            })
            .map_err(start_err)?;
        registry
            .register(MetricsService { metrics: Arc::clone(&metrics), catalog: Arc::clone(&catalog) })
            .map_err(start_err)?;
        registry.register(RouterService).map_err(start_err)?;
        // Not sanitized: this error is for the operator, and the file it names is the point.
        let running = registry.start().await.map_err(|e| FleetError::Start(e.to_string()))?;
        let store = started(&store_service.store, "store").map_err(|e| FleetError::Start(e.to_string()))?;
        drop_cache_on_catalog_changes(&catalog, &store);
        let books = Books {
            store: Arc::clone(&store),
            monitor: Arc::clone(&monitor),
            metrics: Arc::clone(&metrics),
            virtual_time: options.virtual_time,
        };
        let retry_budget =
            RetryBudget::new(options.retry_budget).map_err(|e| FleetError::Start(format!("[fallback]: {e}")))?;
        let shared = crate::shared::SharedBudgets::start(options.cluster.as_ref(), &budgets)
            .await
            .map_err(|e| FleetError::Start(format!("[cluster]: {e}")))?;
        let catalog_sync =
            crate::catalog::CatalogSync::start_with(shared.as_deref(), &catalog, options.models.as_deref())
                .await
                .map_err(|e| FleetError::Start(format!("[cluster] the shared catalog: {e}")))?;
        let timer = TokioTimer::new();
        let (tracker, ejections) = crate::ejections::start(options.tracker, options.cluster.as_ref(), &catalog, timer)
            .await
            .map_err(|e| FleetError::Start(format!("[cluster]: {e}")))?;
        let fleet = Fleet {
            // First: it borrows the store and the shared ledger moved below.
            records: crate::records::SharedRecords::start(shared.as_ref(), &store, options.store.aggregate_retain_days),
            running: Arc::new(running),
            store,
            catalog,
            monitor,
            budgets,
            config_budgets: options.budgets.iter().map(|b| (b.scope.clone(), b.period)).collect(),
            metrics,
            books,
            tracker,
            retry_budget,
            timer,
            clock: SystemClock,
            executor: ExecutorConfig {
                retry,
                weights: options.weights,
                max_attempts_per_request: options.max_attempts_per_request.max(1),
                max_ejected_percent: options.max_ejected_percent.min(100),
            },
            strategy: options.strategy,
            routes: options.routes,
            model_hedges: options.model_hedges,
            simulated_providers: options.simulated_providers,
            model_fallbacks: never_its_own(options.model_fallbacks),
            rng: Mutex::new(fastrand::Rng::with_seed(0x6d66)),
            admin: tokio::sync::Mutex::new(()),
            fallbacks_served: DashMap::new(),
            memory: Arc::new(MemoryProbe::new()),
            shared,
            catalog_sync,
            ejections,
        };
        // Simulated time has no past to warm from: its clock starts now.
        let warmed = if options.virtual_time { 0 } else { fleet.warm_start().await };
        tracing::info!(
            db = %fleet.store.path().display(),
            models = fleet.catalog.snapshot().len(),
            warmed,
            "modelfleet started"
        );
        Ok(fleet)
    }

    /// The catalog.
    #[must_use]
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The monitor.
    #[must_use]
    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// The budgets.
    #[must_use]
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// The metrics.
    #[must_use]
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The shared budget store, with `[cluster]`.
    #[must_use]
    pub fn cluster_status(&self) -> Option<crate::shared::ClusterStatus> {
        let (records_shipped, records_dropped, records_pending) =
            self.records.as_ref().map_or((0, 0, 0), |records| records.counts());
        self.shared.as_ref().map(|shared| crate::shared::ClusterStatus {
            redis_reachable: self.ejections.as_ref().map(crate::ejections::EjectionSharing::reachable),
            records_shipped,
            records_dropped,
            records_pending,
            catalog_revision: self.catalog_sync.as_ref().map_or(0, |sync| sync.applied()),
            ..shared.status()
        })
    }

    /// `model`'s circuit now (on the fleet's own clock).
    #[must_use]
    pub fn circuit(&self, model: &str) -> CircuitState {
        self.tracker.circuit(model, self.timer.now())
    }

    /// Failure tracking (cooldowns, circuits).
    #[must_use]
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Retries per provider.
    #[must_use]
    pub fn retry_budget(&self) -> &RetryBudget {
        &self.retry_budget
    }

    /// Notes what an answer from `model` said of its provider's rate
    /// limits: `headroom` (0 to 1) left, valid for `valid_for`. A model
    /// near its limit ranks lower until then.
    pub fn observe_rate_limit(&self, model: &ModelSpec, headroom: f64, valid_for: Duration) {
        let until = self.monitor.now_ms().saturating_add(u64::try_from(valid_for.as_millis()).unwrap_or(u64::MAX));
        self.monitor.record_rate_limit(&model.id, &model.provider, headroom, until);
    }

    /// The requirements `request` stands for, with the free memory filled
    /// in, and how to serve it (order, strategy, hedging).
    fn resolve<'s>(&'s self, request: &'s Request) -> Result<(Requirements, Plan<'s>), FleetError> {
        let (mut requirements, strategy, mut order, mut hedge) = match &request.route {
            Some(name) => {
                let route = self
                    .routes
                    .iter()
                    .find(|r| r.name == *name)
                    .ok_or_else(|| FleetError::UnknownRoute(name.clone()))?;
                let order = if route.fallbacks.is_empty() { Order::Ranked } else { Order::Explicit(&route.fallbacks) };
                // The route says what the work needs; the request says how
                // big it is: its token estimates bound the hold and the
                // context check on a route as anywhere else.
                let mut requirements = route.requirements.clone();
                let asked = &request.requirements;
                requirements.prompt_tokens = requirements.prompt_tokens.max(asked.prompt_tokens);
                requirements.max_output_tokens = requirements.max_output_tokens.max(asked.max_output_tokens);
                requirements.n = requirements.n.max(asked.n);
                // What the request's body uses (tools, images…) is needed on a route too.
                for capability in &asked.capabilities {
                    if !requirements.capabilities.contains(capability) {
                        requirements.capabilities.push(*capability);
                    }
                }
                // A request whose cost cannot be measured stays so on a route.
                requirements.unmeasured |= asked.unmeasured;
                // Providers the request cannot go to (the gateway's: one
                // without the endpoint asked for) are excluded on a route too.
                for provider in &asked.exclude_providers {
                    if !requirements.exclude_providers.contains(provider) {
                        requirements.exclude_providers.push(provider.clone());
                    }
                }
                (requirements, route.strategy, order, route.hedge)
            }
            None => (request.requirements.clone(), self.strategy, Order::Ranked, None),
        };
        requirements.check().map_err(|e| FleetError::InvalidRequirements(e.to_string()))?;
        if requirements.available_memory_mb.is_none() {
            requirements.available_memory_mb = self.memory.available_mb(self.clock.now_ms());
        }
        if let Some(id) = &request.model {
            if self.catalog.get(id).is_none() {
                return Err(FleetError::UnknownModel(id.clone()));
            }
            order = Order::Named { model: id, fallbacks: self.model_fallbacks.get(id).map(Vec::as_slice) };
            hedge = self.model_hedges.get(id).copied().or(hedge);
        }
        Ok((requirements, Plan { order, strategy, hedge, settle_by_caller: false }))
    }

    /// The requirements `request` is served under: its own, or its route's
    /// with the request's token estimates and `n` (a route's
    /// `max_output_tokens` caps each answer: a caller that sends the request
    /// on must send that cap too, or the answer may outgrow its hold).
    pub fn requirements(&self, request: &Request) -> Result<Requirements, FleetError> {
        Ok(self.resolve(request)?.0)
    }

    fn selector_config(&self, strategy: Strategy) -> SelectorConfig {
        SelectorConfig { weights: self.executor.weights, strategy }
    }

    /// Every eligible model for `request`, best first, with scores.
    pub fn rank(&self, request: &Request) -> Result<Vec<(String, f64)>, FleetError> {
        let (requirements, plan) = self.resolve(request)?;
        let snapshot = self.catalog.snapshot();
        let config = self.selector_config(plan.strategy);
        let headroom = self.budgets.headroom(request.key.as_deref());
        let live = Live { monitor: self.monitor.live(), headroom: &headroom, closed: false };
        Ok(modelfleet_selector::rank(snapshot.models(), &requirements, &live, &config)
            .into_iter()
            .map(|r: Ranked<'_>| (r.model.id.clone(), r.score.total))
            .collect())
    }

    /// The ranking and every rejected model with its reasons, as text and
    /// JSON: the same worst case and budget room as a request sees.
    pub fn explain(&self, request: &Request) -> Result<(String, serde_json::Value), FleetError> {
        let (requirements, plan) = self.resolve(request)?;
        let snapshot = self.catalog.snapshot();
        let config = self.selector_config(plan.strategy);
        let headroom = self.budgets.headroom(request.key.as_deref());
        let live = Live { monitor: self.monitor.live(), headroom: &headroom, closed: false };
        let explanation: Explanation<'_> =
            modelfleet_selector::explain(snapshot.models(), &requirements, &live, &config);
        let mut text = explanation.to_string();
        let mut json = serde_json::to_value(&explanation).unwrap_or(serde_json::Value::Null);
        // Eligible, but out of rotation now: why, and for how long.
        let now = self.timer.now();
        let out: Vec<serde_json::Value> = explanation
            .ranked
            .iter()
            .filter_map(|r| {
                let health = self.tracker.health(&r.model.id, now);
                let availability = self.tracker.availability(&r.model.id, now);
                (!availability.is_available()).then(|| {
                    let why = crate::ejections::describe(availability, &health, now);
                    let _ = write!(text, "\nout of rotation now: {} ({why})", r.model.id);
                    serde_json::json!({
                        "model": r.model.id,
                        "why": why,
                        "circuit": health.circuit,
                        "ejections": health.ejections,
                        "multiplier": health.multiplier,
                        "remote": health.remote,
                    })
                })
            })
            .collect();
        if let serde_json::Value::Object(map) = &mut json {
            map.insert("unavailable".to_owned(), serde_json::Value::Array(out));
        }
        Ok((text, json))
    }

    /// Serves one request: selects, reserves budget, calls `call` on the
    /// chosen model (falling back and retrying per policy, under the
    /// deadline), records every attempt in the monitor, metrics and store,
    /// reconciles the budget with the exact cost, and returns the answer
    /// with the attempt history.
    ///
    /// `call` gets the model as an `Arc` so its future may own it.
    pub async fn call<T, F, Fut>(&self, request: &Request, mut call: F) -> Result<Served<T>, FleetError>
    where
        F: FnMut(Arc<ModelSpec>, AttemptCtx) -> Fut,
        Fut: Future<Output = Result<ModelResponse<T>, Failure>>,
    {
        let (served, _) = self
            .run(request, false, |model, ctx, of| {
                let call = call(Arc::clone(&model), ctx);
                self.attempt(model, of, ctx, call)
            })
            .await?;
        Ok(served)
    }

    /// Serves one streamed request. Like [`Fleet::call`], but `call` returns
    /// once the stream is open (its first event arrived): retries and
    /// fallback happen only until then. The returned [`Opened`] carries the
    /// stream and a [`Settlement`], which records the outcome, the tokens and
    /// the exact cost when the stream ends ([`Settlement::finish`]); the
    /// budget stays reserved until then. A settlement dropped unfinished is
    /// accounted as a client gone with no tokens reported.
    pub async fn call_stream<T, F, Fut>(&self, request: &Request, mut call: F) -> Result<Served<Opened<T>>, FleetError>
    where
        F: FnMut(Arc<ModelSpec>, AttemptCtx) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let (mut served, permit) = self
            .run(request, true, |model, ctx, of| {
                let call = call(Arc::clone(&model), ctx);
                self.attempt_open(model, of, ctx, call)
            })
            .await?;
        // The stream is one outcome: the circuit hears of it when it ends.
        if let Some(parts) = served.value.settlement.parts.as_mut() {
            parts.permit = permit;
        }
        Ok(served)
    }

    /// The walk shared by [`Fleet::call`] and [`Fleet::call_stream`]: each
    /// attempt is `attempt(model, ctx, what)`, returning the value, its
    /// usage and its cost. For a stream (`settle_by_caller`), the attempt
    /// that opened it comes back with its permit, for the settlement.
    async fn run<'r, V, A, Fut>(
        &self,
        request: &'r Request,
        settle_by_caller: bool,
        mut attempt: A,
    ) -> Result<(Served<V>, Option<Permit>), FleetError>
    where
        A: FnMut(Arc<ModelSpec>, AttemptCtx, AttemptOf<'r>) -> Fut,
        Fut: Future<Output = Result<(V, Usage, Money), Failure>>,
    {
        let (requirements, mut plan) = self.resolve(request)?;
        plan.settle_by_caller = settle_by_caller;
        // One look at the hard budgets per request: the selector rejects
        // models whose worst case does not fit what is left.
        let headroom = self.budgets.headroom(request.key.as_deref());
        // Spend that cannot be persisted fails hard budgets closed: no paid
        // model they cover may serve until it is written (others may).
        // Hard budgets refuse at once while the local store cannot persist
        // spend, or the shared one just failed.
        let unpersisted = if headroom.is_empty() {
            None
        } else {
            self.store.spend_backlog().or_else(|| self.shared.as_ref().and_then(|shared| shared.down()))
        };
        let snapshot = self.catalog.snapshot();
        let live = Live { monitor: self.monitor.live(), headroom: &headroom, closed: unpersisted.is_some() };
        let pool = modelfleet_fallback::Pool {
            models: snapshot.models(),
            signals: &live,
            tracker: &self.tracker,
            retry_budget: Some(&self.retry_budget),
            simulated_providers: &self.simulated_providers,
            timer: &self.timer,
        };
        let mut rng = {
            let mut shared = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            fastrand::Rng::with_seed(shared.u64(..))
        };
        // A weighted random route spreads load: each request draws its own
        // order (the route's seed mixed with the request's, itself drawn
        // from the fleet's seeded generator, so a run is reproducible).
        if let Strategy::WeightedRandom { seed } = plan.strategy {
            plan.strategy = Strategy::WeightedRandom { seed: seed ^ rng.u64(..) };
        }
        let requirements = Arc::new(requirements);
        let spent = Arc::new(AtomicI64::new(0));
        let of = AttemptOf {
            key: request.key.as_deref(),
            request: Arc::new(RequestInfo::new(
                requirements.category.unwrap_or(Category::General),
                requirements.language.clone().or_else(|| request.language_hint.clone()),
                request.request_id.clone(),
                request.key.clone(),
                request.route.clone(),
            )),
            requirements: Arc::clone(&requirements),
            spent: Arc::clone(&spent),
        };
        let result =
            modelfleet_fallback::execute(pool, &requirements, &plan, &self.executor, &mut rng, |model, ctx| {
                // The executor hands out the snapshot's own specs: this lookup finds the Arc.
                let owned = snapshot.get(&model.id).cloned().unwrap_or_else(|| Arc::new(model.clone()));
                attempt(owned, ctx, of.clone())
            })
            .await;
        let spent = Money::from_nanos(spent.load(Ordering::Relaxed));
        match result {
            Ok(executed) => {
                self.metrics_of_attempts(snapshot.models(), &executed.attempts);
                if executed.fell_back {
                    self.fallbacks_served.entry(executed.model.id.clone()).or_default().fetch_add(1, Ordering::Relaxed);
                }
                let (value, usage, _) = executed.value;
                let budget_remaining =
                    if headroom.is_empty() { None } else { self.remaining(request.key.as_deref(), executed.model) };
                let served = Served {
                    value,
                    model: executed.model.id.clone(),
                    attempts: executed.attempts,
                    fell_back: executed.fell_back,
                    cost: spent,
                    usage,
                    budget_remaining,
                };
                Ok((served, executed.permit))
            }
            Err(err @ (ExecuteError::NoneEligible { .. } | ExecuteError::Unavailable { .. })) => {
                if matches!(err, ExecuteError::NoneEligible { .. })
                    && let Some(refusal) = self.budget_refusal(snapshot.models(), &requirements, &live, plan.strategy)
                {
                    return Err(unpersisted.map_or(refusal, FleetError::BudgetStoreUnavailable));
                }
                // No model meets the requirements: the request as asked
                // cannot be served (a bad request, not worth retrying);
                // models meet them but are out: come back later.
                let (class, retry_after) = match &err {
                    ExecuteError::Unavailable { retry_after, .. } => (None, *retry_after),
                    _ => (Some(ErrorClass::BadRequest), None),
                };
                Err(FleetError::NotServed {
                    message: modelfleet_errors::sanitize(&err.to_string()).into_owned(),
                    attempts: Vec::new(),
                    class,
                    retry_after,
                    cost: spent,
                    budget_remaining: None,
                    upstream: None,
                })
            }
            Err(err) => {
                self.metrics_of_attempts(snapshot.models(), err.attempts());
                Err(self.failed(&err, spent, &snapshot, request.key.as_deref()))
            }
        }
    }

    /// Every attempt failed (or the plan stopped): the refusal, with the
    /// last failure's class, the upstream's own code and param, and, for a
    /// budget that refused at its hold, what it has left now.
    fn failed(
        &self,
        err: &ExecuteError<Failure>,
        spent: Money,
        snapshot: &modelfleet_registry::Snapshot,
        key: Option<&str>,
    ) -> FleetError {
        let (class, retry_after, upstream) = match err {
            ExecuteError::Failed { last, .. } => (Some(last.class()), last.retry_after(), last.upstream()),
            _ => (None, None, None),
        };
        let attempts = err.attempts().to_vec();
        let budget = class == Some(ErrorClass::BudgetExceeded);
        let budget_remaining = attempts
            .last()
            .filter(|_| budget)
            .and_then(|last| snapshot.get(&last.model))
            .and_then(|model| self.remaining(key, model));
        FleetError::NotServed {
            message: modelfleet_errors::sanitize(&err.to_string()).into_owned(),
            attempts,
            class,
            retry_after: retry_after.filter(|_| budget),
            cost: spent,
            budget_remaining,
            upstream: upstream.cloned().map(Box::new),
        }
    }

    /// When no model could be tried because every model meeting the
    /// requirements costs more (at worst) than a hard budget has left, or
    /// cannot be bounded under one: the refusal naming the budget, what is
    /// left and what the request could cost on the cheapest such model.
    fn budget_refusal(
        &self,
        models: &[Arc<ModelSpec>],
        requirements: &Requirements,
        live: &Live<'_>,
        strategy: Strategy,
    ) -> Option<FleetError> {
        if live.headroom.is_empty() {
            return None;
        }
        let config = self.selector_config(strategy);
        let explanation = modelfleet_selector::explain(models, requirements, live, &config);
        // Models refused by a budget alone: every other constraint was met.
        let mut blocked: Vec<(&ModelSpec, &Rejection)> = explanation
            .rejected
            .iter()
            .filter(|r| !r.reasons.is_empty() && r.reasons.iter().all(|why| why.constraint() == "budget"))
            .filter_map(|r| r.reasons.first().map(|why| (r.model, why)))
            .collect();
        if blocked.is_empty() {
            return None;
        }
        let worst = |why: &Rejection| match why {
            Rejection::OverBudget { worst_case, .. } => Some(*worst_case),
            _ => None,
        };
        // The cheapest worst case first; unbounded models last.
        blocked.sort_by(|a, b| match (worst(a.1), worst(b.1)) {
            (Some(x), Some(y)) => x.cmp(&y).then_with(|| a.0.id.cmp(&b.0.id)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.0.id.cmp(&b.0.id),
        });
        let (model, why) = blocked[0];
        let room = live.headroom.tightest(&model.provider, &model.id)?;
        let now = self.clock.now_ms();
        let resets = room.resets_at_ms.map(|at| Duration::from_millis(at.saturating_sub(now)));
        let when = match room.resets_at_ms {
            Some(at) => format!("it resets at {}", modelfleet_budget::rfc3339(at)),
            None => "it never resets".to_owned(),
        };
        let message = match why {
            Rejection::OverBudget { budget, remaining, worst_case } => format!(
                "budget exceeded: hard budget {budget} has ${remaining} left, and this request could cost \
                 ${worst_case} on {} (the cheapest model that meets its requirements); {when}",
                model.id
            ),
            _ if requirements.unmeasured => format!(
                "budget exceeded: hard budget {} covers every model that meets the requirements, and this \
                 request's cost cannot be measured to hold against it (a conversation stored at the provider, or \
                 its built-in tools); {when}",
                room.label
            ),
            _ => format!(
                "budget exceeded: hard budget {} covers every model that meets the requirements, and none of them \
                 has a price and an output bound to hold against it; {when}",
                room.label
            ),
        };
        Some(FleetError::NotServed {
            message,
            attempts: Vec::new(),
            class: Some(ErrorClass::BudgetExceeded),
            retry_after: resets,
            cost: Money::ZERO,
            budget_remaining: Some(room.remaining),
            upstream: None,
        })
    }

    /// What is left now of the tightest hard budget that would pay for a
    /// request of `key` on `model`, if one would.
    fn remaining(&self, key: Option<&str>, model: &ModelSpec) -> Option<Money> {
        self.budgets.headroom(key).tightest(&model.provider, &model.id).map(|room| room.remaining)
    }

    /// Holds the request's worst case on `model` on every budget that
    /// covers it; a refusal is a budget failure with the time to the
    /// budget's next period.
    fn reserve(&self, model: &ModelSpec, of: &AttemptOf<'_>) -> Result<Reservation, Failure> {
        let charge = Charge { provider: &model.provider, model: &model.id, key: of.key };
        // A model whose cost cannot be bounded is never eligible under a
        // hard budget (the selector's rule); soft budgets get its actual cost.
        let worst = worst_case_cost(model, &of.requirements).unwrap_or(Money::ZERO);
        self.budgets.reserve(&charge, worst).map_err(|e| {
            let failure = Failure::new(ErrorClass::BudgetExceeded, &e.to_string());
            match e.resets_at_ms {
                Some(at) => failure.with_retry_after(Duration::from_millis(at.saturating_sub(self.clock.now_ms()))),
                None => failure,
            }
        })
    }

    /// One attempt on `model`: budget, in-flight count, the call, and the
    /// books. The call's usage is charged at the model's prices; a failure
    /// the provider bills (see [`Failure::billed`]) is charged the hold's
    /// worst case; a future dropped mid-call too (see [`Pending`]).
    async fn attempt<T>(
        &self,
        model: Arc<ModelSpec>,
        of: AttemptOf<'_>,
        ctx: AttemptCtx,
        call: impl Future<Output = Result<ModelResponse<T>, Failure>>,
    ) -> Result<(T, Usage, Money), Failure> {
        let remaining = ctx.remaining;
        let reservation = self.reserve(&model, &of)?;
        // Boxed (the shared ledger's future is large), and only with `[cluster]`.
        let shared = if self.shared.is_some() {
            Box::pin(self.hold_shared(&model, &of, reservation.amount())).await?
        } else {
            None
        };
        let tag = of.request.next(ctx.fallback);
        let in_flight = self.monitor.begin(&model.id, &model.provider);
        let began = self.timer.now();
        let if_dropped = reservation.amount();
        let mut pending = Pending {
            books: &self.books,
            reservation: Some(reservation),
            model: &model,
            tag: &tag,
            if_dropped,
            spent: &of.spent,
            shared,
        };
        let result = call.await;
        let latency = self.timer.now().saturating_sub(began);
        drop(in_flight);
        let Some(reservation) = pending.disarm() else {
            return Err(Failure::new(ErrorClass::Internal, "the budget hold was settled twice"));
        };
        let (usage, cost, error) = match &result {
            Ok(ModelResponse { usage: Some(usage), .. }) => (*usage, price_of(&model, *usage), None),
            // Answered, but nobody says what it used: the worst case.
            Ok(ModelResponse { usage: None, .. }) => (Usage::default(), reservation.amount(), None),
            Err(failure) if failure.is_billed() => {
                (Usage::default(), reservation.amount(), Some(judged(failure, latency, remaining)))
            }
            Err(failure) => (Usage::default(), Money::ZERO, Some(judged(failure, latency, remaining))),
        };
        of.spent.fetch_add(cost.nanos(), Ordering::Relaxed);
        let mut shared = pending.take_shared();
        if let Some(shared) = &mut shared {
            // Known before anything is awaited: a drop from here settles with it.
            shared.cost(cost);
        }
        self.books
            .settle(reservation, Entry { model: &model, tag: &tag, latency, usage, cost, error, ttft: None })
            .await;
        // Before the answer goes out: what is acknowledged is settled.
        if let Some(shared) = shared {
            Box::pin(shared.settle(cost)).await;
        }
        result.map(|response| (response.value, usage, cost))
    }

    /// One attempt to open a stream on `model`: on success the budget stays
    /// held and the in-flight count stays up until the settlement finishes.
    async fn attempt_open<T>(
        &self,
        model: Arc<ModelSpec>,
        of: AttemptOf<'_>,
        ctx: AttemptCtx,
        call: impl Future<Output = Result<T, Failure>>,
    ) -> Result<(Opened<T>, Usage, Money), Failure> {
        let remaining = ctx.remaining;
        let reservation = self.reserve(&model, &of)?;
        // Boxed (the shared ledger's future is large), and only with `[cluster]`.
        let shared = if self.shared.is_some() {
            Box::pin(self.hold_shared(&model, &of, reservation.amount())).await?
        } else {
            None
        };
        let tag = of.request.next(ctx.fallback);
        let in_flight = self.monitor.begin_shared(&model.id, &model.provider);
        let began = self.timer.now();
        // Dropped before its first event: nothing was relayed; the prompt was sent.
        let prompt = Usage { input_tokens: u64::from(of.requirements.prompt_tokens), ..Usage::default() };
        let if_dropped = price_of(&model, prompt);
        let mut pending = Pending {
            books: &self.books,
            reservation: Some(reservation),
            model: &model,
            tag: &tag,
            if_dropped,
            spent: &of.spent,
            shared,
        };
        let result = call.await;
        let Some(reservation) = pending.disarm() else {
            return Err(Failure::new(ErrorClass::Internal, "the budget hold was settled twice"));
        };
        let mut shared = pending.take_shared();
        match result {
            Ok(stream) => {
                let settlement = Settlement {
                    output_bound: modelfleet_selector::worst_case_output(&model, &of.requirements),
                    parts: Some(Parts {
                        books: self.books.clone(),
                        permit: None,
                        timer: self.timer,
                        model: Arc::clone(&model),
                        tag: tag.clone(),
                        began,
                        ttft: self.timer.now().saturating_sub(began),
                        reservation,
                        shared,
                        _in_flight: in_flight,
                    }),
                };
                Ok((Opened { stream, settlement }, Usage::default(), Money::ZERO))
            }
            Err(failure) => {
                let latency = self.timer.now().saturating_sub(began);
                drop(in_flight);
                let cost = if failure.is_billed() { reservation.amount() } else { Money::ZERO };
                of.spent.fetch_add(cost.nanos(), Ordering::Relaxed);
                if let Some(shared) = &mut shared {
                    shared.cost(cost);
                }
                let entry = Entry {
                    model: &model,
                    tag: &tag,
                    latency,
                    usage: Usage::default(),
                    cost,
                    error: Some(judged(&failure, latency, remaining)),
                    ttft: None,
                };
                self.books.settle(reservation, entry).await;
                if let Some(shared) = shared {
                    Box::pin(shared.settle(cost)).await;
                }
                Err(failure)
            }
        }
    }

    /// The attempt's hold in the ledger replicas share, when `[cluster]`
    /// is set and a hard budget pays: refused, or the shared store
    /// unreachable, the attempt fails as over budget (the local hold is
    /// released as the caller drops it).
    async fn hold_shared(
        &self,
        model: &ModelSpec,
        of: &AttemptOf<'_>,
        amount: Money,
    ) -> Result<Option<crate::shared::SharedHold>, Failure> {
        let Some(shared) = &self.shared else { return Ok(None) };
        let charge = Charge { provider: &model.provider, model: &model.id, key: of.key };
        shared.hold(&self.budgets, &charge, amount).await
    }

    /// Every budget's status, with where it was defined.
    #[must_use]
    pub fn budget_views(&self) -> Vec<BudgetView> {
        self.budgets
            .statuses()
            .into_iter()
            .map(|status| {
                let source = if self.is_config_budget(&status.spec.scope, status.spec.period) {
                    BudgetSource::Config
                } else {
                    BudgetSource::Api
                };
                BudgetView { status, source }
            })
            .collect()
    }

    fn is_config_budget(&self, scope: &Scope, period: Period) -> bool {
        self.config_budgets.iter().any(|(s, p)| s == scope && *p == period)
    }

    /// The budget `scope`/`period`, unless the configuration defines it.
    fn api_budget(&self, scope: &Scope, period: Period) -> Result<Status, FleetError> {
        let status = self
            .budgets
            .status(scope, period)
            .ok_or_else(|| FleetError::Budget(BudgetAdminError::NotFound { scope: scope.clone(), period }))?;
        if self.is_config_budget(scope, period) {
            return Err(FleetError::Budget(BudgetAdminError::ReadOnly { scope: scope.clone(), period }));
        }
        Ok(status)
    }

    /// Adds a budget (kept in the database; it applies at once).
    pub async fn add_budget(&self, spec: BudgetSpec, who: &str) -> Result<(), FleetError> {
        self.not_shared()?;
        let _one_at_a_time = self.admin.lock().await;
        if self.budgets.status(&spec.scope, spec.period).is_some() {
            return Err(FleetError::Budget(BudgetAdminError::Invalid(format!(
                "a {} budget for {} exists already",
                spec.period, spec.scope
            ))));
        }
        // Checked by a scratch ledger first, so nothing invalid is stored.
        Budgets::new(LedgerConfig::default())
            .add(spec.clone())
            .map_err(|e| FleetError::Budget(BudgetAdminError::Invalid(e.to_string())))?;
        self.store
            .save_budget(&spec, who, self.clock.now_ms())
            .await
            .map_err(|e| FleetError::Budget(BudgetAdminError::Store(e.to_string())))?;
        self.budgets.add(spec).map_err(|e| FleetError::Budget(BudgetAdminError::Invalid(e.to_string())))
    }

    /// Changes a budget's limit; requests in flight keep their holds, and
    /// the next reservation sees the new limit.
    pub async fn set_budget_limit(
        &self,
        scope: &Scope,
        period: Period,
        limit: Money,
        who: &str,
    ) -> Result<(), FleetError> {
        self.not_shared()?;
        let _one_at_a_time = self.admin.lock().await;
        let status = self.api_budget(scope, period)?;
        if limit < Money::ZERO {
            return Err(FleetError::Budget(BudgetAdminError::Invalid(format!("limit ${limit} is negative"))));
        }
        let spec = BudgetSpec { limit, ..status.spec };
        self.store
            .save_budget(&spec, who, self.clock.now_ms())
            .await
            .map_err(|e| FleetError::Budget(BudgetAdminError::Store(e.to_string())))?;
        self.budgets
            .set_limit(scope, period, limit)
            .map_err(|e| FleetError::Budget(BudgetAdminError::Invalid(e.to_string())))?;
        Ok(())
    }

    /// Starts a budget's current period over at zero (audited with who and
    /// when); returns what it had spent.
    pub async fn reset_budget(&self, scope: &Scope, period: Period, who: &str) -> Result<Money, FleetError> {
        self.not_shared()?;
        let _one_at_a_time = self.admin.lock().await;
        let status = self.api_budget(scope, period)?;
        self.store
            .reset_spend(scope, period, status.period_start_ms, status.spent, who, self.clock.now_ms())
            .await
            .map_err(|e| FleetError::Budget(BudgetAdminError::Store(e.to_string())))?;
        self.budgets.reset(scope, period).map_err(|e| FleetError::Budget(BudgetAdminError::Invalid(e.to_string())))
    }

    /// Budgets change only through the configuration when replicas share
    /// them: an API change would reach one replica.
    fn not_shared(&self) -> Result<(), FleetError> {
        if self.shared.is_some() { Err(FleetError::Budget(BudgetAdminError::Shared)) } else { Ok(()) }
    }

    /// Removes a budget (its spend history stays in the database).
    pub async fn remove_budget(&self, scope: &Scope, period: Period, who: &str) -> Result<(), FleetError> {
        self.not_shared()?;
        let _one_at_a_time = self.admin.lock().await;
        self.api_budget(scope, period)?;
        self.store
            .remove_budget(scope, period, who, self.clock.now_ms())
            .await
            .map_err(|e| FleetError::Budget(BudgetAdminError::Store(e.to_string())))?;
        self.budgets.remove(scope, period).map_err(|e| FleetError::Budget(BudgetAdminError::Invalid(e.to_string())))?;
        let period_name = period.to_string();
        let scope_name = scope.to_string();
        self.metrics.retain_budgets(|s, p| !(s == scope_name && p == period_name));
        Ok(())
    }

    /// Every service's health.
    pub async fn health(&self) -> HealthReport {
        self.running.health().await
    }

    /// Metrics as JSON (the budgets' current spend included).
    #[must_use]
    pub fn metrics_json(&self, categories: &[MetricsCategory]) -> serde_json::Value {
        self.refresh_budget_metrics();
        self.metrics.to_json(categories)
    }

    /// Metrics as Prometheus text.
    #[must_use]
    pub fn metrics_prometheus(&self, categories: &[MetricsCategory]) -> String {
        self.refresh_budget_metrics();
        self.metrics.to_prometheus(categories)
    }

    /// Counts a request's hedges per provider (started, and won when the
    /// hedge is the attempt that answered).
    fn metrics_of_attempts(&self, models: &[Arc<ModelSpec>], attempts: &[Attempt]) {
        for attempt in attempts.iter().filter(|a| a.hedge) {
            if let Some(model) = models.iter().find(|m| m.id == attempt.model) {
                self.metrics.record_hedge(&model.provider, attempt.error.is_none());
            }
        }
    }

    /// The circuits, ejections and retry budgets as they are now.
    fn refresh_resilience_metrics(&self) {
        let now = self.timer.now();
        for (model, health) in self.tracker.all(now) {
            let state = modelfleet_metrics::ModelResilience {
                circuit: health.circuit.gauge(),
                ejections: health.ejections,
                multiplier: health.multiplier,
                cooldown_remaining_secs: health
                    .cooldown
                    .map_or(0.0, |(_, until)| until.saturating_sub(now).as_secs_f64()),
            };
            let _ = self.metrics.set_model_resilience(&model, state);
        }
        for provider in self.retry_budget.providers() {
            let _ = self.metrics.set_retry_budget(&provider, self.retry_budget.remaining(&provider, now));
        }
    }

    fn refresh_budget_metrics(&self) {
        self.refresh_resilience_metrics();
        for status in self.budgets.statuses() {
            let (scope, period) = (status.spec.scope.to_string(), status.spec.period.to_string());
            let _ = self.metrics.set_budget(&scope, &period, status.spent, status.spec.limit);
        }
    }

    /// Stops every service in reverse order; the store flushes last.
    pub async fn shutdown(&self) -> Result<(), FleetError> {
        if let Some(sync) = &self.catalog_sync {
            // No copy of the shared catalog is applied past this point (its
            // subscribers write the store, which stops below).
            sync.stop().await;
        }
        if let Some(shared) = &self.shared {
            // Leases return what they did not use, now rather than when they expire.
            Box::pin(shared.close_leases()).await;
        }
        let stopped = self
            .running
            .stop()
            .await
            .map_err(|e| FleetError::Stop(modelfleet_errors::sanitize(&e.to_string()).into_owned()));
        if let Some(records) = &self.records {
            // The store flushed as it stopped: its last records go out now,
            // or are counted pending (lost to the fleet's reports, kept in
            // this replica's file).
            let timeout = self.shared.as_ref().map_or(Duration::from_secs(5), |shared| shared.timeout());
            if !matches!(tokio::time::timeout(timeout * 2, Box::pin(records.ship())).await, Ok(Ok(()))) {
                tracing::warn!(
                    pending = records.counts().2,
                    "this replica's last records did not reach the shared store: the fleet's reports miss them"
                );
            }
        }
        stopped
    }
}

/// The class an attempt's failure is recorded under in the monitor and the
/// store: a timeout that took all the time the request had left was the
/// request's deadline, not the model (the executor does not hold it against
/// the model either), and is recorded as cancelled.
fn judged(failure: &Failure, latency: Duration, remaining: Option<Duration>) -> ErrorClass {
    match failure.class() {
        ErrorClass::Timeout if remaining.is_some_and(|left| latency >= left) => ErrorClass::Cancelled,
        class => class,
    }
}

/// What every attempt of one request shares.
#[derive(Debug, Clone)]
struct AttemptOf<'r> {
    key: Option<&'r str>,
    /// Who sent the request and the walk so far, for the books.
    request: Arc<RequestInfo>,
    /// The request's requirements: the worst case is computed from them.
    requirements: Arc<Requirements>,
    /// What the attempts charged so far, nano-dollars.
    spent: Arc<AtomicI64>,
}

/// The signals a request is selected by: the monitor's, and the room left
/// in the hard budgets that would pay for it (looked up once per request).
struct Live<'a> {
    /// The monitor's signals, its clock read once for the request.
    monitor: LiveAt<'a>,
    headroom: &'a Headroom,
    /// Spend cannot be persisted: the hard budgets have no room at all.
    closed: bool,
}

impl LiveSignals for Live<'_> {
    fn signals(&self, id: &str) -> Signals {
        self.monitor.signals(id)
    }

    fn budget_room(&self, model: &ModelSpec) -> Option<BudgetRoom<'_>> {
        self.headroom.tightest(&model.provider, &model.id).map(|room| BudgetRoom {
            budget: room.label,
            remaining: if self.closed { Money::ZERO } else { room.remaining },
        })
    }
}

/// A stream opened by [`Fleet::call_stream`], with its pending accounting.
#[derive(Debug)]
pub struct Opened<T> {
    /// The stream (whatever the call returned).
    pub stream: T,
    /// Finish it when the stream ends.
    pub settlement: Settlement,
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEnd {
    /// The model finished its answer.
    Completed,
    /// The upstream failed mid-stream: counted as the model's failure.
    Failed(Failure),
    /// The client went away first: the tokens so far are still charged.
    ClientGone,
}

/// The accounting of a stream in flight: the budget hold, the in-flight
/// count and the start time. [`Settlement::finish`] records the outcome,
/// spends the exact cost and releases the rest of the hold.
pub struct Settlement {
    parts: Option<Parts>,
    output_bound: Option<u64>,
}

struct Parts {
    books: Books,
    /// The circuit's permit for this attempt: the stream's outcome is
    /// recorded once, when it ends (dropped unrecorded: neither).
    permit: Option<Permit>,
    timer: TokioTimer,
    model: Arc<ModelSpec>,
    tag: Tag,
    began: Duration,
    /// Time to the first event (the stream opened on it).
    ttft: Duration,
    reservation: Reservation,
    /// The same hold in the shared ledger, if one pays.
    shared: Option<crate::shared::SharedHold>,
    _in_flight: InFlightShared,
}

impl std::fmt::Debug for Settlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settlement").field("model", &self.parts.as_ref().map(|p| &p.model.id)).finish_non_exhaustive()
    }
}

impl Settlement {
    /// Records how the stream ended with the tokens it used (from the
    /// upstream's usage, or counted by the caller when the stream was cut:
    /// the prompt plus the tokens relayed), charges their exact cost
    /// however the stream ended (the provider bills them), and returns once
    /// the spend is committed, with the cost.
    #[allow(clippy::must_use_candidate)] // finishing is the point; the cost is extra
    pub async fn finish(mut self, usage: Usage, end: &StreamEnd) -> Money {
        let Some(mut parts) = self.parts.take() else { return Money::ZERO };
        let mut shared = parts.shared.take();
        let (reservation, entry_parts) = parts.split(end);
        let cost = price_of(&entry_parts.model, usage);
        if let Some(shared) = &mut shared {
            shared.cost(cost);
        }
        let entry = entry_parts.entry(usage, cost);
        entry_parts.books.settle(reservation, entry).await;
        if let Some(shared) = shared {
            Box::pin(shared.settle(cost)).await;
        }
        cost
    }

    /// The most output tokens the hold allows the stream (all answers
    /// together), when known: a relay should end a stream that passes it
    /// (an upstream ignoring the cap) rather than let it run on.
    #[must_use]
    pub fn output_bound(&self) -> Option<u64> {
        self.output_bound
    }
}

/// A settlement's parts once the hold is taken out of them.
struct Ended {
    books: Books,
    model: Arc<ModelSpec>,
    tag: Tag,
    latency: Duration,
    ttft: Duration,
    error: Option<ErrorClass>,
    _in_flight: InFlightShared,
}

impl Ended {
    fn entry(&self, usage: Usage, cost: Money) -> Entry<'_> {
        Entry {
            model: &self.model,
            tag: &self.tag,
            latency: self.latency,
            usage,
            cost,
            error: self.error,
            ttft: Some(self.ttft),
        }
    }
}

impl Parts {
    /// Records the stream's one outcome in the circuit (a success when it
    /// finished, a failure when it broke, neither when the client left);
    /// splits off the hold.
    fn split(self, end: &StreamEnd) -> (Reservation, Ended) {
        let Parts { books, permit, timer, model, tag, began, ttft, reservation, shared: _, _in_flight: in_flight } =
            self;
        let now = timer.now();
        let error = match end {
            StreamEnd::Failed(failure) => {
                if let Some(permit) = permit {
                    permit.failure(failure.class(), failure.retry_after(), now);
                }
                Some(failure.class())
            }
            StreamEnd::Completed => {
                // A stream is slow by its first token, not by its length.
                if let Some(permit) = permit {
                    permit.success_with_latency(now, ttft);
                }
                None
            }
            StreamEnd::ClientGone => Some(ErrorClass::Cancelled), // the permit drops: neither; the monitor: aborted
        };
        let latency = now.saturating_sub(began);
        (reservation, Ended { books, model, tag, latency, ttft, error, _in_flight: in_flight })
    }
}

impl Drop for Settlement {
    /// Dropped unfinished: how many tokens the stream used will never be
    /// known, so its hold (the worst case) is charged, without waiting.
    fn drop(&mut self) {
        if let Some(parts) = self.parts.take() {
            let (reservation, ended) = parts.split(&StreamEnd::ClientGone);
            let cost = reservation.amount();
            let entry = ended.entry(Usage::default(), cost);
            ended.books.settle_detached(reservation, entry);
        }
    }
}

#[cfg(test)]
mod catalog_cache_tests {
    //! The response cache follows the catalog: a model whose spec changes,
    //! or that is removed, loses its cached answers; the others keep theirs.

    use modelfleet_registry::ModelUpdate;

    use super::*;

    #[test]
    fn changing_or_removing_a_models_spec_drops_its_cached_answers() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
        let options = FleetOptions { db_path: Some(dir.path().join("fleet.db")), ..FleetOptions::default() };
        let fleet = runtime.block_on(Fleet::open(options))?;
        // Catalog writes and cache reads block: here, outside the runtime.
        let ids: Vec<String> = fleet.catalog().list().iter().take(4).map(|m| m.id.clone()).collect();
        let [changed, touched, removed, replaced] = &ids[..] else { return Err("four models".into()) };
        let key = |i: usize| [u8::try_from(i).unwrap_or(u8::MAX); 32];
        for (i, id) in ids.iter().enumerate() {
            fleet.store().cache_put(key(i), id, &serde_json::json!({"model": id}), Duration::from_mins(10))?;
        }
        fleet.store().flush()?;
        let cached = |fleet: &Fleet| -> Result<Vec<bool>, modelfleet_store::Error> {
            (0..ids.len()).map(|i| fleet.store().cache_get(&key(i)).map(|hit| hit.is_some())).collect()
        };
        assert_eq!(cached(&fleet)?, [true; 4]);

        let priority = fleet.catalog().get(changed).map_or(0, |m| m.priority);
        fleet.catalog().update(changed, ModelUpdate { priority: Some(priority ^ 1), ..ModelUpdate::default() })?;
        assert_eq!(cached(&fleet)?, [false, true, true, true], "a changed spec");

        // Only the update time changes: the spec answers the same.
        let enabled = fleet.catalog().get(touched).is_some_and(|m| m.enabled);
        fleet.catalog().update(touched, ModelUpdate { enabled: Some(enabled), ..ModelUpdate::default() })?;
        assert_eq!(cached(&fleet)?, [false, true, true, true], "an unchanged spec");

        fleet.catalog().remove(removed)?;
        assert_eq!(cached(&fleet)?, [false, true, false, true], "a removed model");

        // The admin API's PUT replaces the whole catalog with one spec changed.
        let mut models: Vec<ModelSpec> = fleet.catalog().list().iter().map(|m| (**m).clone()).collect();
        for spec in models.iter_mut().filter(|m| m.id == *replaced) {
            spec.display_name = "renamed".into();
        }
        fleet.catalog().replace(models)?;
        assert_eq!(cached(&fleet)?, [false, true, false, false], "a spec changed by a replace");

        runtime.block_on(fleet.shutdown())?;
        Ok(())
    }
}
