//! The monitor: record outcomes, read statistics, feed the selector.

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use dashmap::DashMap;
use modelfleet_errors::ErrorClass;
use modelfleet_registry::{Category, Clock, SystemClock};
use modelfleet_selector::{LiveSignals, Signals};
use rustc_hash::FxBuildHasher;

use crate::{
    Latency, ModelStats, Outcome, ProviderStats, RecentEvent, Totals, Window, WindowStats,
    cell::{Cell, Counts, latency_histogram},
};

/// The id under which models beyond [`MonitorConfig::max_models`] are counted.
pub const OVERFLOW_MODEL: &str = "_other";

/// The monitor's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorConfig {
    /// Recent events kept per model (0 keeps none).
    pub recent_events: usize,
    /// Distinct models tracked; outcomes of further models are counted under
    /// [`OVERFLOW_MODEL`], so memory stays bounded whatever ids callers send.
    pub max_models: usize,
    /// While a model has no outcome, its live signals move halfway back to
    /// the prior (success rate 1, no samples) every this long, so a model
    /// ejected after failures is tried again. [`Duration::ZERO`] turns the
    /// decay off.
    pub idle_half_life: Duration,
}

impl Default for MonitorConfig {
    /// 100 recent events per model, 1,024 models, live signals halving
    /// their distance to the prior per 60 s idle.
    fn default() -> Self {
        MonitorConfig { recent_events: 100, max_models: 1_024, idle_half_life: Duration::from_mins(1) }
    }
}

/// The share of an upstream's rate limits left, from its
/// `x-ratelimit-remaining-requests` / `x-ratelimit-limit-requests` and
/// `x-ratelimit-remaining-tokens` / `x-ratelimit-limit-tokens` headers:
/// the lesser of `remaining / limit` over the complete pairs, clamped to
/// 0..=1 (more remaining than the limit counts 1).
///
/// A pair missing either half, or whose limit is 0, says nothing; `None`
/// when neither pair says anything.
///
/// ```
/// use modelfleet_monitor::rate_limit_headroom;
///
/// assert_eq!(rate_limit_headroom(Some(50), Some(100), Some(1_000), Some(10_000)), Some(0.1));
/// assert_eq!(rate_limit_headroom(Some(50), Some(100), None, Some(10_000)), Some(0.5));
/// assert_eq!(rate_limit_headroom(Some(5), Some(0), None, None), None);
/// ```
#[must_use]
pub fn rate_limit_headroom(
    remaining_requests: Option<u64>,
    limit_requests: Option<u64>,
    remaining_tokens: Option<u64>,
    limit_tokens: Option<u64>,
) -> Option<f64> {
    let share = |remaining: Option<u64>, limit: Option<u64>| match (remaining, limit) {
        (Some(remaining), Some(limit)) if limit > 0 => Some((remaining as f64 / limit as f64).clamp(0.0, 1.0)),
        _ => None,
    };
    match (share(remaining_requests, limit_requests), share(remaining_tokens, limit_tokens)) {
        (Some(requests), Some(tokens)) => Some(requests.min(tokens)),
        (one, other) => one.or(other),
    }
}

/// Per-model request statistics in bounded memory (about 64 KiB per model:
/// two all-time histograms and four window rings), shared by all threads.
///
/// Recording takes the model's own lock only; reading live signals takes no
/// lock at all.
///
/// ```
/// use std::time::Duration;
/// use modelfleet_errors::ErrorClass;
/// use modelfleet_monitor::{Monitor, MonitorConfig, Outcome};
/// use modelfleet_registry::ManualClock;
///
/// let monitor = Monitor::with_clock(MonitorConfig::default(), ManualClock::new(1_700_000_000_000));
/// for ms in [120, 80, 100] {
///     monitor.record(&Outcome::success("gpt-4o", "openai", Duration::from_millis(ms)));
/// }
/// monitor.record(&Outcome::success("gpt-4o", "openai", Duration::from_millis(900)).failed(ErrorClass::Timeout));
/// let stats = monitor.model_stats("gpt-4o");
/// assert_eq!((stats.totals.requests, stats.totals.failures), (4, 1));
/// assert!((stats.latency.p50_ms - 100.0).abs() < 1.0);
/// assert_eq!(monitor.model_stats("never-seen").totals.requests, 0);
/// ```
pub struct Monitor {
    config: MonitorConfig,
    clock: Arc<dyn Clock>,
    models: DashMap<String, Cell, FxBuildHasher>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("config", &self.config)
            .field("models", &self.models.len())
            .finish_non_exhaustive()
    }
}

/// A call in flight: counted in the model's live signals until dropped.
#[derive(Debug)]
#[must_use = "the call counts as in flight only while this guard lives"]
pub struct InFlight<'a> {
    monitor: &'a Monitor,
    model: &'a str,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(cell) = self.monitor.models.get(self.model) {
            let _ = cell.in_flight.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }
}

/// A call in flight that owns its monitor handle, for calls that outlive
/// the borrow (a streamed answer settled after the request returned).
#[derive(Debug)]
#[must_use = "the call counts as in flight only while this guard lives"]
pub struct InFlightShared {
    monitor: Arc<Monitor>,
    model: String,
}

impl Drop for InFlightShared {
    fn drop(&mut self) {
        if let Some(cell) = self.monitor.models.get(self.model.as_str()) {
            let _ = cell.in_flight.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }
}

impl Monitor {
    /// A monitor on the system clock.
    #[must_use]
    pub fn new(config: MonitorConfig) -> Monitor {
        Monitor::with_clock(config, SystemClock)
    }

    /// A monitor whose timestamps and windows follow `clock`.
    #[must_use]
    pub fn with_clock(config: MonitorConfig, clock: impl Clock + 'static) -> Monitor {
        Monitor { config, clock: Arc::new(clock), models: DashMap::with_hasher(FxBuildHasher) }
    }

    /// The limits.
    #[must_use]
    pub fn config(&self) -> MonitorConfig {
        self.config
    }

    /// Now, on the monitor's clock (Unix ms).
    #[must_use]
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The id an outcome of `model` is counted under (itself, or the overflow id).
    fn slot<'m>(&self, model: &'m str, provider: &str) -> &'m str {
        if self.models.contains_key(model) {
            return model;
        }
        if self.models.len() >= self.config.max_models {
            self.models.entry(OVERFLOW_MODEL.to_owned()).or_insert_with(|| Cell::new("", self.config.recent_events));
            return OVERFLOW_MODEL;
        }
        self.models.entry(model.to_owned()).or_insert_with(|| Cell::new(provider, self.config.recent_events));
        model
    }

    /// Records one outcome, timestamped by the monitor's clock.
    pub fn record(&self, outcome: &Outcome<'_>) {
        let now = self.clock.now_ms();
        if let Some(cell) = self.models.get(outcome.model) {
            cell.record(outcome, now, self.config.recent_events);
            return;
        }
        let id = self.slot(outcome.model, outcome.provider);
        if let Some(cell) = self.models.get(id) {
            cell.record(outcome, now, self.config.recent_events);
        }
    }

    /// Records one outcome that happened at `at_ms` (on the monitor's
    /// clock): how a restarted monitor is warmed from the stored history.
    /// In any order: an outcome older than a window's slots is counted in
    /// the totals only, never over newer counts.
    pub fn record_at(&self, outcome: &Outcome<'_>, at_ms: u64) {
        let id = self.slot(outcome.model, outcome.provider);
        if let Some(cell) = self.models.get(id) {
            cell.record(outcome, at_ms, self.config.recent_events);
        }
    }

    /// Sets `model`'s quality signal from its user ratings as the store
    /// holds them: the sum of its rated answers' qualities (0 to 1 each; a
    /// rating of 1 to 5 is `(rating - 1) / 4`) and how many. Set, not
    /// added: a rating that replaces an earlier one, or one given in
    /// another process, leaves the signal what the history says.
    pub fn set_quality(&self, model: &str, provider: &str, sum: f64, count: u64) {
        let id = self.slot(model, provider);
        if let Some(cell) = self.models.get(id) {
            cell.set_quality(sum, count);
        }
    }

    /// Records what `model`'s provider says is left of its rate limits:
    /// `headroom` (0 exhausted to 1 untouched, see [`rate_limit_headroom`];
    /// clamped, NaN ignored), valid before `until_ms` on the monitor's clock
    /// (e.g. the limit's reset time), after which it is forgotten. The live
    /// signals serve it as [`Signals::rate_limit_headroom`]; the newest report wins.
    ///
    /// A model beyond [`MonitorConfig::max_models`] is not tracked: its report is dropped.
    pub fn record_rate_limit(&self, model: &str, provider: &str, headroom: f64, until_ms: u64) {
        if headroom.is_nan() {
            return;
        }
        let id = self.slot(model, provider);
        if id != model {
            return;
        }
        if let Some(cell) = self.models.get(id) {
            cell.set_rate_limit(headroom.clamp(0.0, 1.0), until_ms);
        }
    }

    /// Marks a call to `model` as started; it counts as in flight (a live
    /// signal the selector uses) until the guard drops.
    pub fn begin<'a>(&'a self, model: &'a str, provider: &str) -> InFlight<'a> {
        let id = self.slot(model, provider);
        if let Some(cell) = self.models.get(id) {
            cell.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        InFlight { monitor: self, model: id }
    }

    /// Like [`Monitor::begin`], with a guard that owns a handle to the
    /// monitor, so it can move into a task that outlives the caller.
    pub fn begin_shared(self: &Arc<Self>, model: &str, provider: &str) -> InFlightShared {
        let id = self.slot(model, provider);
        if let Some(cell) = self.models.get(id) {
            cell.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        InFlightShared { monitor: Arc::clone(self), model: id.to_owned() }
    }

    /// The ids of every model with data, sorted.
    #[must_use]
    pub fn models(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.models.iter().map(|e| e.key().clone()).collect();
        ids.sort();
        ids
    }

    /// Everything known of `model` (empty statistics when unknown).
    #[must_use]
    pub fn model_stats(&self, model: &str) -> ModelStats {
        let Some(cell) = self.models.get(model) else {
            return ModelStats { model: model.to_owned(), ..ModelStats::default() };
        };
        let in_flight = cell.in_flight.load(Ordering::Relaxed);
        let inner = cell.lock();
        let count = |counts: &[u64], names: &mut dyn Iterator<Item = usize>| -> Vec<(usize, u64)> {
            names.filter(|&i| counts[i] > 0).map(|i| (i, counts[i])).collect()
        };
        let errors = count(&inner.errors, &mut (0..ErrorClass::ALL.len()))
            .into_iter()
            .map(|(i, n)| (ErrorClass::ALL[i], n))
            .collect();
        let kinds = count(&inner.by_kind, &mut (0..Category::ALL.len()))
            .into_iter()
            .map(|(i, n)| (Category::ALL[i], n))
            .collect();
        ModelStats {
            model: model.to_owned(),
            provider: inner.provider.clone(),
            totals: Totals::from(&inner.counts),
            latency: Latency::from_histogram(&inner.latency_us, 0.001),
            time_to_first_token: Latency::from_histogram(&inner.ttft_us, 0.001),
            errors,
            kinds,
            avg_quality: (inner.quality_count > 0).then(|| inner.quality_sum / inner.quality_count as f64),
            first_used_ms: inner.first_ms,
            last_used_ms: inner.last_ms,
            in_flight,
        }
    }

    /// `model`'s statistics over `window`, ending now.
    #[must_use]
    pub fn window_stats(&self, model: &str, window: Window) -> WindowStats {
        let Some(cell) = self.models.get(model) else {
            return WindowStats { window: window.as_str(), ..WindowStats::default() };
        };
        let (counts, hist) = cell.window(window, self.clock.now_ms());
        WindowStats {
            window: window.as_str(),
            totals: Totals::from(&counts),
            latency: Latency::from_histogram(&hist, 1.0),
        }
    }

    /// The most recent outcomes of `model`, oldest first (at most
    /// [`MonitorConfig::recent_events`]).
    #[must_use]
    pub fn recent(&self, model: &str) -> Vec<RecentEvent> {
        self.models.get(model).map(|cell| cell.lock().recent.iter().copied().collect()).unwrap_or_default()
    }

    /// Every provider's totals over its models, sorted by provider.
    #[must_use]
    pub fn provider_stats(&self) -> Vec<ProviderStats> {
        let mut by: BTreeMap<String, (Vec<String>, Counts, hdrhistogram::Histogram<u64>)> = BTreeMap::new();
        for entry in &self.models {
            let inner = entry.value().lock();
            let slot = by
                .entry(inner.provider.clone())
                .or_insert_with(|| (Vec::new(), Counts::default(), latency_histogram()));
            slot.0.push(entry.key().clone());
            slot.1.merge(&inner.counts);
            let _ = slot.2.add(&inner.latency_us);
        }
        by.into_iter()
            .map(|(provider, (mut models, counts, hist))| {
                models.sort();
                ProviderStats {
                    provider,
                    models,
                    totals: Totals::from(&counts),
                    latency: Latency::from_histogram(&hist, 0.001),
                }
            })
            .collect()
    }

    /// Forgets everything (tests, or an operator's reset).
    pub fn clear(&self) {
        self.models.clear();
    }
}

/// The monitor feeds the selector directly; reading the signals takes no lock.
///
/// - `success_rate` and `latency_ms` are time-decayed averages (a 5 s time
///   constant) over the outcomes that judge the model, so a model that
///   starts failing or slowing down loses traffic within seconds; `samples`
///   counts those outcomes. Client faults and aborted calls move none of them.
/// - While the model is idle they decay toward the prior: after `t` without
///   an outcome, with `k = 0.5^(t / idle_half_life)`, the success rate is
///   `1 − (1 − ewma) × k` and `samples` is `round(samples × k)`. The prior
///   is 1 (presumed working), so a model ejected for failures gets traffic
///   again and proves itself; its next outcome counts in full again. An
///   outcome just recorded (`t = 0`) leaves them as they are.
/// - `latency_p95_ms` is the p95 over the last 15 minutes (1 significant
///   figure), else over all time, as of the model's last outcome (refreshed
///   on each of its first 100 outcomes, then at most once a second).
/// - `rate_limit_headroom` is the last [`Monitor::record_rate_limit`] report
///   while it is current.
impl LiveSignals for Monitor {
    fn signals(&self, id: &str) -> Signals {
        self.signals_at(id, self.clock.now_ms())
    }
}

impl Monitor {
    /// `id`'s [signals](LiveSignals::signals) as of `now_ms` on the
    /// monitor's clock (for a caller that read the clock once for a whole
    /// ranking: see [`Monitor::live`]).
    #[must_use]
    pub fn signals_at(&self, id: &str, now_ms: u64) -> Signals {
        let Some(cell) = self.models.get(id) else { return Signals::default() };
        cell.signals(now_ms, self.config.idle_half_life)
    }

    /// The live signals as of now, the clock read once: ranking a request
    /// over many models asks for each model's signals, and one clock read
    /// per request is enough (and cheaper than one per model).
    #[must_use]
    pub fn live(&self) -> LiveAt<'_> {
        LiveAt { monitor: self, now_ms: self.clock.now_ms() }
    }
}

/// [`Monitor`]'s live signals at one instant (see [`Monitor::live`]).
#[derive(Clone, Copy)]
pub struct LiveAt<'a> {
    monitor: &'a Monitor,
    now_ms: u64,
}

impl std::fmt::Debug for LiveAt<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveAt").field("now_ms", &self.now_ms).finish_non_exhaustive()
    }
}

impl LiveSignals for LiveAt<'_> {
    fn signals(&self, id: &str) -> Signals {
        self.monitor.signals_at(id, self.now_ms)
    }
}
