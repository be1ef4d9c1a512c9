//! The collector: atomic counters and histograms, recorded from any thread.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use hdrhistogram::Histogram;
use modelfleet_errors::ErrorClass;
use modelfleet_registry::{Clock, Money, SystemClock};
use rustc_hash::FxBuildHasher;
use serde::Serialize;

use crate::{
    Category, Error,
    memory::{MemorySource, MemoryTrack, ProcessMemory},
};

/// The label value unknown models are counted under.
pub const OTHER_MODEL: &str = "other";

/// The label value hedges are counted under once
/// [`MetricsConfig::max_series`] providers have their own series.
pub const OTHER_PROVIDER: &str = "other";

/// The prefix of every exported metric name.
pub(crate) const PREFIX: &str = "modelfleet_";

/// Prometheus histogram bucket bounds for request latency, in seconds
/// (LLM calls run from milliseconds to minutes).
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

const LATENCY_BUCKETS_US: [u64; 14] = [
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    120_000_000,
];

/// Latencies above one hour are counted as one hour in the percentiles.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// The collector's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsConfig {
    /// The sliding throughput window, in seconds (1 to 3,600).
    pub window_secs: u32,
    /// Known models at most; ids beyond are counted as [`OTHER_MODEL`].
    pub max_models: usize,
    /// Series at most in each bounded set: application gauges, budgets,
    /// models' resilience states, providers' retry budgets, and providers'
    /// hedge counts (beyond which hedges count as [`OTHER_PROVIDER`]).
    pub max_series: usize,
}

impl Default for MetricsConfig {
    /// A 60 s window; 1,000 models; 256 series in each bounded set.
    fn default() -> Self {
        MetricsConfig { window_secs: 60, max_models: 1_000, max_series: 256 }
    }
}

/// Fixed-bucket latency counts (non-cumulative; the last is +Inf).
#[derive(Debug)]
pub(crate) struct Buckets {
    pub(crate) counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    pub(crate) sum_us: AtomicU64,
    pub(crate) count: AtomicU64,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Buckets {
    fn observe(&self, us: u64) {
        let i = LATENCY_BUCKETS_US.partition_point(|bound| *bound < us);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn reset(&self) {
        for c in &self.counts {
            c.store(0, Ordering::Relaxed);
        }
        self.sum_us.store(0, Ordering::Relaxed);
        self.count.store(0, Ordering::Relaxed);
    }

    /// Cumulative counts per bound, the +Inf count, and the sum in seconds.
    pub(crate) fn read(&self) -> (Vec<u64>, u64, f64) {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(LATENCY_BUCKETS.len());
        for c in &self.counts[..LATENCY_BUCKETS.len()] {
            running += c.load(Ordering::Relaxed);
            cumulative.push(running);
        }
        let total = running + self.counts[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        (cumulative, total, self.sum_us.load(Ordering::Relaxed) as f64 / 1e6)
    }
}

/// One model's series.
#[derive(Debug, Default)]
pub(crate) struct ModelSeries {
    /// Index 0: successes; `1 + class.index()`: failures of that class.
    pub(crate) outcomes: [AtomicU64; 1 + ErrorClass::ALL.len()],
    pub(crate) latency: Buckets,
    pub(crate) input_tokens: AtomicU64,
    pub(crate) output_tokens: AtomicU64,
    pub(crate) cost_nanos: AtomicU64,
}

impl ModelSeries {
    fn reset(&self) {
        for o in &self.outcomes {
            o.store(0, Ordering::Relaxed);
        }
        self.latency.reset();
        self.input_tokens.store(0, Ordering::Relaxed);
        self.output_tokens.store(0, Ordering::Relaxed);
        self.cost_nanos.store(0, Ordering::Relaxed);
    }
}

/// One request, as the metrics see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestSample<'a> {
    /// The model that served (or last failed); unknown ids count as [`OTHER_MODEL`].
    pub model: &'a str,
    /// How long it took.
    pub latency: Duration,
    /// `None` for a success.
    pub error: Option<ErrorClass>,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Its cost.
    pub cost: Money,
}

/// One model's resilience state, as the fallback tracker sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct ModelResilience {
    /// The circuit: 0 closed, 1 half-open, 2 open.
    pub circuit: u8,
    /// Ejections in all (monotonic: the tracker's total, exported as a counter).
    pub ejections: u64,
    /// The current ejection multiplier.
    pub multiplier: u32,
    /// Seconds left in the model's cooldown; 0 when not cooling down.
    pub cooldown_remaining_secs: f64,
}

/// One provider's hedge counts.
#[derive(Debug, Default)]
pub(crate) struct HedgeCounts {
    pub(crate) started: AtomicU64,
    pub(crate) won: AtomicU64,
}

impl HedgeCounts {
    fn record(&self, won: bool) {
        self.started.fetch_add(1, Ordering::Relaxed);
        if won {
            // Release after `started`: a reader that loads `won` first
            // (Acquire) never sees more wins than starts.
            self.won.fetch_add(1, Ordering::Release);
        }
    }

    /// (started, won), with won <= started (between resets).
    pub(crate) fn read(&self) -> (u64, u64) {
        let won = self.won.load(Ordering::Acquire);
        (self.started.load(Ordering::Relaxed), won)
    }

    fn reset(&self) {
        self.started.store(0, Ordering::Relaxed);
        self.won.store(0, Ordering::Relaxed);
    }
}

pub(crate) struct Throughput {
    pub(crate) since_ms: AtomicU64,
    pub(crate) total: AtomicU64,
    // Per-second slots: (the second they count, the count).
    pub(crate) slots: Box<[(AtomicU64, AtomicU64)]>,
}

/// Everything the collector holds. Cheap to share: clone the `Arc` you keep it in.
pub struct Metrics {
    pub(crate) config: MetricsConfig,
    pub(crate) clock: Box<dyn Clock>,
    pub(crate) started_ms: u64,
    pub(crate) errors: [AtomicU64; ErrorClass::ALL.len()],
    pub(crate) cache_hits: AtomicU64,
    pub(crate) cache_misses: AtomicU64,
    pub(crate) latency: Mutex<Histogram<u64>>,
    pub(crate) latency_buckets: Buckets,
    pub(crate) throughput: Throughput,
    pub(crate) models: DashMap<Box<str>, Arc<ModelSeries>, FxBuildHasher>,
    pub(crate) other: Arc<ModelSeries>,
    /// Per budget (scope, period): spent and limit.
    pub(crate) budgets: Mutex<BTreeMap<(String, String), (Money, Money)>>,
    /// Settlements that took a hard budget past its limit, and by how much.
    pub(crate) overshoots: AtomicU64,
    pub(crate) overshoot_nanos: AtomicI64,
    pub(crate) gauges: Mutex<BTreeMap<String, (String, f64)>>,
    /// Per model: its resilience state (at most `max_series`).
    pub(crate) resilience: Mutex<BTreeMap<String, ModelResilience>>,
    /// Per provider: its retry budget's remaining retries (at most `max_series`).
    pub(crate) retry_budgets: Mutex<BTreeMap<String, f64>>,
    /// Per provider: hedges started and won (at most `max_series`; the rest
    /// count in `other_hedges`). Only grows between resets.
    pub(crate) hedges: DashMap<Box<str>, HedgeCounts, FxBuildHasher>,
    pub(crate) other_hedges: HedgeCounts,
    /// Taken only to add a provider to `hedges`, so the bound holds exactly.
    hedge_inserts: Mutex<()>,
    pub(crate) memory: Box<dyn MemorySource>,
    pub(crate) memory_track: MemoryTrack,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("config", &self.config).finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Counters and maps of numbers: valid after any panic mid-update.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 2).unwrap_or_else(|_| unreachable!("constant histogram bounds"))
}

/// Whether `name` is a valid Prometheus metric name.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

impl Metrics {
    /// A collector on the system clock reading this process's memory.
    #[must_use]
    pub fn new(config: MetricsConfig) -> Metrics {
        Metrics::with_sources(config, SystemClock, ProcessMemory::new())
    }

    /// A collector on `clock` reading memory from `memory`.
    #[must_use]
    pub fn with_sources(
        config: MetricsConfig,
        clock: impl Clock + 'static,
        memory: impl MemorySource + 'static,
    ) -> Metrics {
        let window = usize::try_from(config.window_secs.clamp(1, 3_600)).unwrap_or(60);
        let started_ms = clock.now_ms();
        Metrics {
            config: MetricsConfig { window_secs: config.window_secs.clamp(1, 3_600), ..config },
            clock: Box::new(clock),
            started_ms,
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            latency: Mutex::new(latency_histogram()),
            latency_buckets: Buckets::default(),
            throughput: Throughput {
                since_ms: AtomicU64::new(started_ms),
                total: AtomicU64::new(0),
                slots: (0..window).map(|_| (AtomicU64::new(u64::MAX), AtomicU64::new(0))).collect(),
            },
            models: DashMap::with_hasher(FxBuildHasher),
            other: Arc::new(ModelSeries::default()),
            budgets: Mutex::new(BTreeMap::new()),
            overshoots: AtomicU64::new(0),
            overshoot_nanos: AtomicI64::new(0),
            gauges: Mutex::new(BTreeMap::new()),
            resilience: Mutex::new(BTreeMap::new()),
            retry_budgets: Mutex::new(BTreeMap::new()),
            hedges: DashMap::with_hasher(FxBuildHasher),
            other_hedges: HedgeCounts::default(),
            hedge_inserts: Mutex::new(()),
            memory: Box::new(memory),
            memory_track: MemoryTrack::default(),
        }
    }

    /// The models whose ids become labels (the catalog's); every other id is
    /// counted as [`OTHER_MODEL`], so label sets stay bounded whatever
    /// clients send. Series of models no longer listed are kept.
    pub fn set_known_models<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        for id in ids {
            if self.models.len() >= self.config.max_models {
                break;
            }
            if !self.models.contains_key(id) && id != OTHER_MODEL {
                self.models.insert(id.into(), Arc::new(ModelSeries::default()));
            }
        }
    }

    /// Counts a response-cache hit.
    pub fn record_cache_hit(&self) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a response-cache miss.
    pub fn record_cache_miss(&self) {
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a latency in seconds. Zero and one hour are fine; a negative
    /// or non-finite value is refused (longer than an hour counts as an hour
    /// in the percentiles and as +Inf in the buckets).
    pub fn record_latency(&self, seconds: f64) -> Result<(), Error> {
        if !seconds.is_finite() || seconds < 0.0 {
            return Err(Error::InvalidLatency(seconds));
        }
        self.observe_latency(Duration::from_secs_f64(seconds.min(1e9)));
        Ok(())
    }

    fn observe_latency(&self, latency: Duration) -> u64 {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        lock(&self.latency).saturating_record(us.clamp(1, MAX_LATENCY_US));
        self.latency_buckets.observe(us);
        us
    }

    /// Records one request: throughput, latency, errors, and the model's series.
    pub fn record_request(&self, sample: &RequestSample<'_>) {
        let us = self.observe_latency(sample.latency);
        self.count_request();
        if let Some(class) = sample.error {
            self.errors[class.index()].fetch_add(1, Ordering::Relaxed);
        }
        let series = self.models.get(sample.model).map_or_else(|| Arc::clone(&self.other), |s| Arc::clone(&s));
        series.outcomes[sample.error.map_or(0, |c| 1 + c.index())].fetch_add(1, Ordering::Relaxed);
        series.latency.observe(us);
        series.input_tokens.fetch_add(sample.input_tokens, Ordering::Relaxed);
        series.output_tokens.fetch_add(sample.output_tokens, Ordering::Relaxed);
        series.cost_nanos.fetch_add(u64::try_from(sample.cost.nanos().max(0)).unwrap_or(0), Ordering::Relaxed);
    }

    /// Counts a request for throughput only (for callers recording latency apart).
    pub fn count_request(&self) {
        let t = &self.throughput;
        t.total.fetch_add(1, Ordering::Relaxed);
        let second = self.clock.now_ms() / 1_000;
        let (epoch, count) = &t.slots[usize::try_from(second % t.slots.len() as u64).unwrap_or(0)];
        let seen = epoch.load(Ordering::Relaxed);
        if seen != second && epoch.compare_exchange(seen, second, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            count.store(0, Ordering::Relaxed);
        }
        count.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets a budget's spend and limit for export (the budget crate's
    /// status). A budget is its scope *and* its period: a daily and a
    /// monthly budget of one scope are two series.
    pub fn set_budget(&self, scope: &str, period: &str, spent: Money, limit: Money) -> Result<(), Error> {
        let mut budgets = lock(&self.budgets);
        let key = (scope.to_owned(), period.to_owned());
        if !budgets.contains_key(&key) && budgets.len() >= self.config.max_series {
            return Err(Error::TooManySeries { kind: "budgets", max: self.config.max_series });
        }
        budgets.insert(key, (spent, limit));
        Ok(())
    }

    /// Forgets budgets that no longer exist (removed through the admin API).
    pub fn retain_budgets(&self, mut keep: impl FnMut(&str, &str) -> bool) {
        lock(&self.budgets).retain(|(scope, period), _| keep(scope, period));
    }

    /// Counts a settlement whose actual cost took a hard budget past its
    /// limit by `amount` (an upstream that ignored the request's output cap).
    pub fn record_budget_overshoot(&self, amount: Money) {
        self.overshoots.fetch_add(1, Ordering::Relaxed);
        self.overshoot_nanos.fetch_add(amount.nanos(), Ordering::Relaxed);
    }

    /// Sets an application gauge (`name` must be a valid Prometheus name).
    /// It is exported as `modelfleet_<name>`, or as `name` when that already
    /// starts with `modelfleet_`: the prefix is never doubled, and `x` and
    /// `modelfleet_x` are one gauge (kept under the spelling first set).
    /// A name ending in `_total` is a counter the caller keeps (it must only
    /// grow): Prometheus text types it `counter`, so `rate()` applies.
    pub fn set_gauge(&self, name: &str, help: &str, value: f64) -> Result<(), Error> {
        if !valid_name(name) {
            return Err(Error::InvalidName(name.to_owned()));
        }
        let bare = name.strip_prefix(PREFIX).unwrap_or(name);
        let prefixed = format!("{PREFIX}{bare}");
        let mut gauges = lock(&self.gauges);
        let key = [bare, prefixed.as_str()].into_iter().find(|k| gauges.contains_key(*k));
        if key.is_none() && gauges.len() >= self.config.max_series {
            return Err(Error::TooManySeries { kind: "gauges", max: self.config.max_series });
        }
        gauges.insert(key.unwrap_or(name).to_owned(), (help.to_owned(), value));
        Ok(())
    }

    /// Sets a model's resilience state for export (the fallback tracker's
    /// view now). At most [`MetricsConfig::max_series`] models have one;
    /// a new model beyond that is refused with [`Error::TooManySeries`].
    pub fn set_model_resilience(&self, model: &str, state: ModelResilience) -> Result<(), Error> {
        let mut models = lock(&self.resilience);
        if let Some(kept) = models.get_mut(model) {
            *kept = state;
            return Ok(());
        }
        if models.len() >= self.config.max_series {
            return Err(Error::TooManySeries { kind: "model resilience states", max: self.config.max_series });
        }
        models.insert(model.to_owned(), state);
        Ok(())
    }

    /// Sets the retries a provider's retry budget has left, for export. At
    /// most [`MetricsConfig::max_series`] providers have one; a new provider
    /// beyond that is refused with [`Error::TooManySeries`].
    pub fn set_retry_budget(&self, provider: &str, remaining: f64) -> Result<(), Error> {
        let mut budgets = lock(&self.retry_budgets);
        if let Some(kept) = budgets.get_mut(provider) {
            *kept = remaining;
            return Ok(());
        }
        if budgets.len() >= self.config.max_series {
            return Err(Error::TooManySeries { kind: "retry budgets", max: self.config.max_series });
        }
        budgets.insert(provider.to_owned(), remaining);
        Ok(())
    }

    /// Counts one hedged request started on `provider`, and one won when
    /// `won` (its answer was the one used). At most
    /// [`MetricsConfig::max_series`] providers get their own series; hedges
    /// of any provider beyond that are counted under [`OTHER_PROVIDER`]
    /// (`"other"`), so nothing is lost and labels stay bounded.
    pub fn record_hedge(&self, provider: &str, won: bool) {
        if let Some(counts) = self.hedges.get(provider) {
            counts.record(won);
            return;
        }
        let max = self.config.max_series;
        if provider == OTHER_PROVIDER || self.hedges.len() >= max {
            self.other_hedges.record(won);
            return;
        }
        let _inserting = lock(&self.hedge_inserts);
        if !self.hedges.contains_key(provider) && self.hedges.len() >= max {
            self.other_hedges.record(won);
            return;
        }
        self.hedges.entry(provider.into()).or_default().record(won);
    }

    /// Zeroes the given categories (counters start over; Prometheus `rate()`
    /// handles the reset).
    pub fn reset(&self, categories: &[Category]) {
        for category in categories {
            match category {
                Category::Cache => {
                    self.cache_hits.store(0, Ordering::Relaxed);
                    self.cache_misses.store(0, Ordering::Relaxed);
                }
                Category::Latency => {
                    lock(&self.latency).reset();
                    self.latency_buckets.reset();
                }
                Category::Memory => self.memory_track.reset(),
                Category::Throughput => {
                    self.throughput.total.store(0, Ordering::Relaxed);
                    self.throughput.since_ms.store(self.clock.now_ms(), Ordering::Relaxed);
                    for (epoch, count) in &self.throughput.slots {
                        epoch.store(u64::MAX, Ordering::Relaxed);
                        count.store(0, Ordering::Relaxed);
                    }
                }
                Category::Errors => self.errors.iter().for_each(|e| e.store(0, Ordering::Relaxed)),
                Category::Models => {
                    self.other.reset();
                    self.models.iter().for_each(|s| s.value().reset());
                }
                Category::Budget => {
                    lock(&self.budgets).clear();
                    self.overshoots.store(0, Ordering::Relaxed);
                    self.overshoot_nanos.store(0, Ordering::Relaxed);
                }
                Category::Resilience => {
                    lock(&self.resilience).clear();
                    lock(&self.retry_budgets).clear();
                    let _inserting = lock(&self.hedge_inserts);
                    self.hedges.clear();
                    self.other_hedges.reset();
                }
                Category::Gauges => lock(&self.gauges).clear(),
            }
        }
    }

    /// Zeroes everything.
    pub fn reset_all(&self) {
        self.reset(&Category::ALL);
    }
}
