//! `Fleet`: the whole stack wired together, and the one call that does the job.

use std::{
    collections::BTreeMap,
    future::Future,
    path::PathBuf,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use modelfleet_budget::{BudgetSpec, Budgets, Charge, LedgerConfig, Period, Reservation, Scope, Status};
use modelfleet_errors::{AttemptCtx, Classify, ErrorClass, Failure, RetryConfig, RetryPolicy, Timer, TokioTimer};
use modelfleet_fallback::{
    Attempt, CircuitConfig, CircuitState, CooldownConfig, ExecuteError, ExecutorConfig, FallbackStrategy, Order,
    Tracker, TrackerConfig,
};
use modelfleet_metrics::{Category as MetricsCategory, Metrics, MetricsConfig, RequestSample};
use modelfleet_monitor::{InFlightShared, Monitor, MonitorConfig, Outcome, Recommendation, ReportConfig};
use modelfleet_registry::{Catalog, Category, Clock, ModelSpec, Money, SystemClock};
use modelfleet_selector::{Explanation, Ranked, Requirements, SelectorConfig, Weights};
use modelfleet_service_registry::{HealthReport, RegistryConfig, Running, ServiceRegistry};
use modelfleet_store::{PerfRecord, Store, StoreConfig, UsageRow};
use serde::Serialize;

use crate::services::{
    BudgetService, CatalogService, MetricsService, MonitorService, RouterService, StoreService, started,
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
    /// Its fallback strategy.
    pub strategy: FallbackStrategy,
    /// An explicit fallback order, overriding the ranking.
    pub fallbacks: Vec<String>,
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
    /// Budgets.
    pub budgets: Vec<BudgetSpec>,
    /// The budgets' calendar.
    pub ledger: LedgerConfig,
    /// Retries and the deadline.
    pub retry: RetryConfig,
    /// Cooldowns and circuits.
    pub tracker: TrackerConfig,
    /// Score weights.
    pub weights: Weights,
    /// The default fallback strategy.
    pub strategy: FallbackStrategy,
    /// The store.
    pub store: StoreConfig,
    /// The monitor.
    pub monitor: MonitorConfig,
    /// The metrics.
    pub metrics: MetricsConfig,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            db_path: None,
            models: None,
            routes: Vec::new(),
            model_fallbacks: BTreeMap::new(),
            budgets: Vec::new(),
            ledger: LedgerConfig::default(),
            retry: RetryConfig { deadline: Some(Duration::from_mins(2)), ..RetryConfig::default() },
            tracker: TrackerConfig::default(),
            weights: Weights::default(),
            strategy: FallbackStrategy::Performance,
            store: StoreConfig::default(),
            monitor: MonitorConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl FleetOptions {
    /// The options a validated configuration describes.
    #[must_use]
    pub fn from_config(config: &modelfleet_config_validate::Config) -> FleetOptions {
        let r = &config.resilience;
        let ms = Duration::from_millis;
        FleetOptions {
            db_path: config.store.path.clone(),
            // A configuration without models keeps the stored (or default) catalog.
            models: (!config.models.is_empty()).then(|| config.models.clone()),
            routes: config
                .routes
                .iter()
                .map(|route| RouteSpec {
                    name: route.name.clone(),
                    requirements: route.requirements.clone(),
                    strategy: match route.strategy {
                        modelfleet_selector::Strategy::Cheapest => FallbackStrategy::Cost,
                        modelfleet_selector::Strategy::PriorityOrder => FallbackStrategy::Priority,
                        _ => FallbackStrategy::Performance,
                    },
                    fallbacks: route.fallbacks.clone(),
                })
                .collect(),
            model_fallbacks: config.model_fallbacks.clone(),
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
                    ..CooldownConfig::default()
                },
                circuit: CircuitConfig {
                    window: ms(r.circuit_window_ms),
                    min_requests: r.circuit_min_requests,
                    failure_ratio: r.circuit_failure_ratio,
                    open_for: ms(r.circuit_open_ms),
                    half_open_probes: r.circuit_half_open_probes,
                },
            },
            weights: config.weights,
            strategy: FallbackStrategy::Performance,
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
                ..StoreConfig::default()
            },
            monitor: MonitorConfig::default(),
            metrics: MetricsConfig { window_secs: config.metrics.window_secs, ..MetricsConfig::default() },
        }
    }
}

/// Token counts a model call reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Usage {
    /// Prompt tokens (cached ones included).
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Prompt tokens served from the provider's cache.
    pub cached_tokens: u64,
}

/// What a model call returns: its answer and its usage.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelResponse<T> {
    /// The answer.
    pub value: T,
    /// The tokens it took (priced exactly at the model's prices).
    pub usage: Usage,
}

/// One request to the fleet.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// What it needs (ignored when `route` is set).
    pub requirements: Requirements,
    /// A configured route to use instead.
    pub route: Option<String>,
    /// A catalog model to try first (when it meets the requirements); then
    /// its configured fallbacks, or else every other eligible model by rank.
    pub model: Option<String>,
    /// The API key or tenant, for per-key budgets.
    pub key: Option<String>,
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
    /// Whether another model than the first choice served.
    pub fell_back: bool,
    /// Its exact cost.
    pub cost: Money,
    /// Its tokens.
    pub usage: Usage,
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
    /// No model could serve the request; the message lists what was tried.
    #[error("{message}")]
    NotServed {
        /// Sanitized, listing every attempt and why it failed.
        message: String,
        /// Every attempt.
        attempts: Vec<Attempt>,
        /// The last failure's class, when there was an attempt.
        class: Option<ErrorClass>,
    },
    /// Stopping failed (the store could not flush).
    #[error("modelfleet could not stop cleanly: {0}")]
    Stop(String),
}

/// One model's line in the [`FleetReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelLine {
    /// The model.
    pub model: String,
    /// Its provider.
    pub provider: String,
    /// Requests this run.
    pub requests: u64,
    /// Their success rate.
    pub success_rate: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Prompt plus completion tokens.
    pub tokens: u64,
    /// Exact cost this run.
    pub cost: Money,
    /// Requests it served as a fallback.
    pub fallbacks_served: u64,
    /// Its circuit now.
    pub circuit: CircuitState,
}

/// The fleet at a glance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetReport {
    /// Per model, this process's traffic, busiest first.
    pub models: Vec<ModelLine>,
    /// Per model, everything the database remembers (all runs).
    pub history: Vec<UsageRow>,
    /// Budgets with their forecasts.
    pub budgets: Vec<Status>,
    /// What deserves attention.
    pub recommendations: Vec<Recommendation>,
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
///                 Ok(ModelResponse { value: format!("hello from {id}"), usage: Usage { input_tokens: 10, output_tokens: 5, cached_tokens: 0 } })
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
    store: Arc<Store>,
    catalog: Arc<Catalog>,
    monitor: Arc<Monitor>,
    budgets: Arc<Budgets>,
    metrics: Arc<Metrics>,
    tracker: Arc<Tracker>,
    timer: TokioTimer,
    clock: SystemClock,
    executor: ExecutorConfig,
    routes: Vec<RouteSpec>,
    /// Per model with configured fallbacks: itself, then them.
    model_chains: BTreeMap<String, Vec<String>>,
    rng: Mutex<fastrand::Rng>,
    fallbacks_served: DashMap<String, AtomicU64>,
    memory: MemoryProbe,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").field("store", &self.store.path()).finish_non_exhaustive()
    }
}

/// Available memory for local models, from sysinfo, refreshed every 5 s.
struct MemoryProbe {
    system: Mutex<Option<sysinfo::System>>,
    available_mb: AtomicU64,
    read_at_ms: AtomicU64,
}

impl MemoryProbe {
    fn new() -> MemoryProbe {
        MemoryProbe {
            system: Mutex::new(sysinfo::System::new().ok()),
            available_mb: AtomicU64::new(0),
            read_at_ms: AtomicU64::new(0),
        }
    }

    /// MiB available, or `None` where the platform does not say.
    fn available_mb(&self, now_ms: u64) -> Option<u64> {
        if now_ms.saturating_sub(self.read_at_ms.load(Ordering::Relaxed)) >= 5_000 {
            let mut guard = self.system.lock().unwrap_or_else(PoisonError::into_inner);
            let system = guard.as_mut()?;
            system.refresh_memory();
            self.available_mb.store(system.available_memory() / (1024 * 1024), Ordering::Relaxed);
            self.read_at_ms.store(now_ms, Ordering::Relaxed);
        }
        match self.available_mb.load(Ordering::Relaxed) {
            0 => None,
            mb => Some(mb),
        }
    }
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
        options.weights.check().map_err(|e| FleetError::Start(e.to_string()))?;
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
        let fleet = Fleet {
            running: Arc::new(running),
            store,
            catalog,
            monitor,
            budgets,
            metrics,
            tracker: Arc::new(Tracker::new(options.tracker)),
            timer: TokioTimer::new(),
            clock: SystemClock,
            executor: ExecutorConfig { retry, strategy: options.strategy, weights: options.weights },
            routes: options.routes,
            model_chains: options
                .model_fallbacks
                .into_iter()
                .filter(|(_, fallbacks)| !fallbacks.is_empty())
                .map(|(id, fallbacks)| {
                    let chain = std::iter::once(id.clone()).chain(fallbacks.into_iter().filter(|f| *f != id)).collect();
                    (id, chain)
                })
                .collect(),
            rng: Mutex::new(fastrand::Rng::with_seed(0x6d66)),
            fallbacks_served: DashMap::new(),
            memory: MemoryProbe::new(),
        };
        tracing::info!(db = %fleet.store.path().display(), models = fleet.catalog.snapshot().len(), "modelfleet started");
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

    /// The requirements `request` stands for, with the free memory filled
    /// in, and the order to try models in.
    fn resolve<'s>(&'s self, request: &'s Request) -> Result<(Requirements, FallbackStrategy, Order<'s>), FleetError> {
        let (mut requirements, strategy, mut order) = match &request.route {
            Some(name) => {
                let route = self
                    .routes
                    .iter()
                    .find(|r| r.name == *name)
                    .ok_or_else(|| FleetError::UnknownRoute(name.clone()))?;
                let order = if route.fallbacks.is_empty() { Order::Ranked } else { Order::Explicit(&route.fallbacks) };
                (route.requirements.clone(), route.strategy, order)
            }
            None => (request.requirements.clone(), self.executor.strategy, Order::Ranked),
        };
        if requirements.available_memory_mb.is_none() {
            requirements.available_memory_mb = self.memory.available_mb(self.clock.now_ms());
        }
        if let Some(id) = &request.model {
            if self.catalog.get(id).is_none() {
                return Err(FleetError::UnknownModel(id.clone()));
            }
            order = match self.model_chains.get(id) {
                Some(chain) => Order::Explicit(chain),
                None => Order::Preferred(id),
            };
        }
        Ok((requirements, strategy, order))
    }

    /// Every eligible model for `request`, best first, with scores.
    pub fn rank(&self, request: &Request) -> Result<Vec<(String, f64)>, FleetError> {
        let (requirements, strategy, _) = self.resolve(request)?;
        let snapshot = self.catalog.snapshot();
        let config = strategy.selector_config(self.executor.weights);
        Ok(modelfleet_selector::rank(snapshot.models(), &requirements, &*self.monitor, &config)
            .into_iter()
            .map(|r: Ranked<'_>| (r.model.id.clone(), r.score.total))
            .collect())
    }

    /// The ranking and every rejected model with its reasons, as text and JSON.
    pub fn explain(&self, request: &Request) -> Result<(String, serde_json::Value), FleetError> {
        let (requirements, strategy, _) = self.resolve(request)?;
        let snapshot = self.catalog.snapshot();
        let config: SelectorConfig = strategy.selector_config(self.executor.weights);
        let explanation: Explanation<'_> =
            modelfleet_selector::explain(snapshot.models(), &requirements, &*self.monitor, &config);
        Ok((explanation.to_string(), serde_json::to_value(&explanation).unwrap_or(serde_json::Value::Null)))
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
        self.run(request, |model, ctx, of| {
            let call = call(Arc::clone(&model), ctx);
            self.attempt(model, of, call)
        })
        .await
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
        self.run(request, |model, ctx, of| {
            let call = call(Arc::clone(&model), ctx);
            self.attempt_open(model, of, call)
        })
        .await
    }

    /// The walk shared by [`Fleet::call`] and [`Fleet::call_stream`]: each
    /// attempt is `attempt(fleet, model, ctx, what)`, returning the value, its
    /// usage and its cost.
    async fn run<'r, V, A, Fut>(&self, request: &'r Request, mut attempt: A) -> Result<Served<V>, FleetError>
    where
        A: FnMut(Arc<ModelSpec>, AttemptCtx, AttemptOf<'r>) -> Fut,
        Fut: Future<Output = Result<(V, Usage, Money), Failure>>,
    {
        let (requirements, strategy, order) = self.resolve(request)?;
        let snapshot = self.catalog.snapshot();
        let executor = ExecutorConfig { strategy, ..self.executor.clone() };
        let fleet = modelfleet_fallback::Fleet {
            models: snapshot.models(),
            signals: &*self.monitor,
            tracker: &self.tracker,
            timer: &self.timer,
        };
        let mut rng = {
            let mut shared = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            fastrand::Rng::with_seed(shared.u64(..))
        };
        let of = AttemptOf {
            key: request.key.as_deref(),
            kind: requirements.category.unwrap_or(Category::General),
            prompt: u64::from(requirements.prompt_tokens),
            max_output: u64::from(requirements.max_output_tokens),
        };
        let result = modelfleet_fallback::execute(fleet, &requirements, order, &executor, &mut rng, |model, ctx| {
            // The executor hands out the snapshot's own specs: this lookup finds the Arc.
            let owned = snapshot.get(&model.id).cloned().unwrap_or_else(|| Arc::new(model.clone()));
            attempt(owned, ctx, of)
        })
        .await;
        match result {
            Ok(executed) => {
                if executed.fell_back {
                    self.fallbacks_served.entry(executed.model.id.clone()).or_default().fetch_add(1, Ordering::Relaxed);
                }
                let (value, usage, cost) = executed.value;
                Ok(Served {
                    value,
                    model: executed.model.id.clone(),
                    attempts: executed.attempts,
                    fell_back: executed.fell_back,
                    cost,
                    usage,
                })
            }
            Err(err) => {
                let class = match &err {
                    ExecuteError::Failed { last, .. } => Some(modelfleet_errors::Classify::class(last)),
                    _ => None,
                };
                let attempts = err.attempts().to_vec();
                Err(FleetError::NotServed {
                    message: modelfleet_errors::sanitize(&err.to_string()).into_owned(),
                    attempts,
                    class,
                })
            }
        }
    }

    /// Holds the budget for one attempt on `model`.
    fn reserve(&self, model: &ModelSpec, of: AttemptOf<'_>) -> Result<Reservation, Failure> {
        let charge = Charge { provider: &model.provider, model: &model.id, key: of.key };
        let estimate = model.price().map_or(Money::ZERO, |p| p.cost(of.prompt, 0, of.max_output));
        self.budgets.reserve(&charge, estimate).map_err(|e| Failure::new(ErrorClass::BudgetExceeded, &e.to_string()))
    }

    /// One attempt on `model`: budget, in-flight count, the call, and the records.
    async fn attempt<T>(
        &self,
        model: Arc<ModelSpec>,
        of: AttemptOf<'_>,
        call: impl Future<Output = Result<ModelResponse<T>, Failure>>,
    ) -> Result<(T, Usage, Money), Failure> {
        let reservation = self.reserve(&model, of)?;
        let in_flight = self.monitor.begin(&model.id, &model.provider);
        let began = self.timer.now();
        let result = call.await;
        let latency = self.timer.now().saturating_sub(began);
        drop(in_flight);
        match result {
            Ok(response) => {
                let cost = settle(&self.store, reservation, &model, response.usage);
                self.record(&model, of.kind, latency, response.usage, cost, None);
                Ok((response.value, response.usage, cost))
            }
            Err(failure) => {
                reservation.release();
                self.record(&model, of.kind, latency, Usage::default(), Money::ZERO, Some(failure.class()));
                Err(failure)
            }
        }
    }

    /// One attempt to open a stream on `model`: on success the budget stays
    /// held and the in-flight count stays up until the settlement finishes.
    async fn attempt_open<T>(
        &self,
        model: Arc<ModelSpec>,
        of: AttemptOf<'_>,
        call: impl Future<Output = Result<T, Failure>>,
    ) -> Result<(Opened<T>, Usage, Money), Failure> {
        let reservation = self.reserve(&model, of)?;
        let in_flight = self.monitor.begin_shared(&model.id, &model.provider);
        let began = self.timer.now();
        match call.await {
            Ok(stream) => {
                let settlement = Settlement {
                    parts: Some(Parts {
                        store: Arc::clone(&self.store),
                        monitor: Arc::clone(&self.monitor),
                        metrics: Arc::clone(&self.metrics),
                        tracker: Arc::clone(&self.tracker),
                        timer: self.timer,
                        model: Arc::clone(&model),
                        kind: of.kind,
                        began,
                        reservation,
                        _in_flight: in_flight,
                    }),
                };
                Ok((Opened { stream, settlement }, Usage::default(), Money::ZERO))
            }
            Err(failure) => {
                let latency = self.timer.now().saturating_sub(began);
                drop(in_flight);
                reservation.release();
                self.record(&model, of.kind, latency, Usage::default(), Money::ZERO, Some(failure.class()));
                Err(failure)
            }
        }
    }

    fn record(
        &self,
        model: &ModelSpec,
        kind: Category,
        latency: Duration,
        usage: Usage,
        cost: Money,
        error: Option<ErrorClass>,
    ) {
        record(
            &self.monitor,
            &self.metrics,
            &self.store,
            self.clock.now_ms(),
            model,
            kind,
            latency,
            usage,
            cost,
            error,
        );
    }

    /// The report: per model this run, the stored history, budgets, recommendations.
    pub fn report(&self) -> Result<FleetReport, FleetError> {
        let mut models: Vec<ModelLine> = self
            .monitor
            .models()
            .into_iter()
            .map(|id| {
                let s = self.monitor.model_stats(&id);
                ModelLine {
                    fallbacks_served: self.fallbacks_served.get(&id).map_or(0, |n| n.load(Ordering::Relaxed)),
                    circuit: self.circuit(&id),
                    provider: s.provider.clone(),
                    requests: s.totals.requests,
                    success_rate: s.totals.success_rate,
                    p50_ms: s.latency.p50_ms,
                    p95_ms: s.latency.p95_ms,
                    p99_ms: s.latency.p99_ms,
                    tokens: s.totals.tokens.input + s.totals.tokens.output,
                    cost: s.totals.cost,
                    model: id,
                }
            })
            .collect();
        models.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.model.cmp(&b.model)));
        self.store.flush().map_err(|e| FleetError::Stop(e.to_string()))?;
        Ok(FleetReport {
            models,
            history: self.store.usage().map_err(|e| FleetError::Stop(e.to_string()))?,
            budgets: self.budgets.statuses(),
            recommendations: self.monitor.recommendations(&ReportConfig::default()),
        })
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

    fn refresh_budget_metrics(&self) {
        for status in self.budgets.statuses() {
            let _ = self.metrics.set_budget(&status.spec.scope.to_string(), status.spent, status.spec.limit);
        }
    }

    /// Stops every service in reverse order; the store flushes last.
    pub async fn shutdown(&self) -> Result<(), FleetError> {
        self.running
            .stop()
            .await
            .map_err(|e| FleetError::Stop(modelfleet_errors::sanitize(&e.to_string()).into_owned()))
    }
}

/// What every attempt of one request shares.
#[derive(Debug, Clone, Copy)]
struct AttemptOf<'r> {
    key: Option<&'r str>,
    kind: Category,
    prompt: u64,
    max_output: u64,
}

/// Spends the exact cost of `usage` on `reservation` and persists the spend per period.
fn settle(store: &Store, reservation: Reservation, model: &ModelSpec, usage: Usage) -> Money {
    let cost =
        model.price().map_or(Money::ZERO, |p| p.cost(usage.input_tokens, usage.cached_tokens, usage.output_tokens));
    // reconcile names the budgets it charged: persist the spend per period.
    for (scope, period, start) in reservation.reconcile_charged(cost) {
        if let Err(err) = store.add_spend(&scope, period, start, cost) {
            tracing::error!(%err, "could not persist budget spend");
        }
    }
    cost
}

/// Records one outcome in the monitor, the metrics and the store.
#[allow(clippy::too_many_arguments)] // two call sites; a struct would only rename them
fn record(
    monitor: &Monitor,
    metrics: &Metrics,
    store: &Store,
    now_ms: u64,
    model: &ModelSpec,
    kind: Category,
    latency: Duration,
    usage: Usage,
    cost: Money,
    error: Option<ErrorClass>,
) {
    let outcome = Outcome {
        model: &model.id,
        provider: &model.provider,
        kind,
        language: None,
        latency,
        time_to_first_token: None,
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cached_tokens: usage.cached_tokens,
        cost,
        error,
        quality: None,
    };
    monitor.record(&outcome);
    metrics.record_request(&RequestSample {
        model: &model.id,
        latency,
        error,
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cost,
    });
    if let Err(err) = store.record(PerfRecord::from_outcome(&outcome, now_ms)) {
        tracing::error!(%err, "could not queue a performance record");
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
}

struct Parts {
    store: Arc<Store>,
    monitor: Arc<Monitor>,
    metrics: Arc<Metrics>,
    tracker: Arc<Tracker>,
    timer: TokioTimer,
    model: Arc<ModelSpec>,
    kind: Category,
    began: Duration,
    reservation: Reservation,
    _in_flight: InFlightShared,
}

impl std::fmt::Debug for Settlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settlement").field("model", &self.parts.as_ref().map(|p| &p.model.id)).finish_non_exhaustive()
    }
}

impl Settlement {
    /// Records how the stream ended with the tokens it used (from the
    /// upstream's usage, or counted by the caller when the stream was cut),
    /// and returns the exact cost charged. Tokens are charged however the
    /// stream ended: the provider bills them.
    #[allow(clippy::must_use_candidate)] // finishing is the point; the cost is extra
    pub fn finish(mut self, usage: Usage, end: &StreamEnd) -> Money {
        match self.parts.take() {
            Some(parts) => parts.finish(usage, end),
            None => Money::ZERO,
        }
    }
}

impl Parts {
    fn finish(self, usage: Usage, end: &StreamEnd) -> Money {
        let Parts { store, monitor, metrics, tracker, timer, model, kind, began, reservation, _in_flight } = self;
        let now = timer.now();
        let latency = now.saturating_sub(began);
        let cost = settle(&store, reservation, &model, usage);
        let error = match end {
            StreamEnd::Failed(failure) => {
                tracker.record_failure(&model.id, failure.class(), failure.retry_after(), now);
                Some(failure.class())
            }
            StreamEnd::Completed | StreamEnd::ClientGone => None,
        };
        let now_ms = SystemClock.now_ms();
        record(&monitor, &metrics, &store, now_ms, &model, kind, latency, usage, cost, error);
        cost
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        if let Some(parts) = self.parts.take() {
            parts.finish(Usage::default(), &StreamEnd::ClientGone);
        }
    }
}
