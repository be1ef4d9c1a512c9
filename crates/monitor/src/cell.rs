//! One model's accumulated statistics: all-time totals and histograms, window
//! rings, the recent-events buffer and the live signals (EWMAs, p95, rate
//! limit headroom).

use std::{
    collections::VecDeque,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use modelfleet_errors::ErrorClass;
use modelfleet_registry::{Category, Money};
use modelfleet_selector::Signals;

use crate::{Outcome, RecentEvent, stats::Verdict};

/// Latencies are kept in microseconds from 1 µs to 1 hour (longer saturates).
pub(crate) const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Window latencies are kept in milliseconds from 1 ms to 1 hour.
const MAX_WINDOW_MS: u64 = 3_600_000;

/// The all-time latency histogram: µs, 2 significant figures (≈1% error), ~25 KiB.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    // Constant, valid bounds: this cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 2).unwrap_or_else(|_| unreachable!("constant histogram bounds"))
}

/// A window slot's histogram: ms, 1 significant figure (≈6% error), ~1.2 KiB.
fn window_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, MAX_WINDOW_MS, 1).unwrap_or_else(|_| unreachable!("constant histogram bounds"))
}

/// Counters shared by the all-time totals and the window slots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) requests: u64,
    pub(crate) successes: u64,
    pub(crate) failures: u64,
    pub(crate) client_faults: u64,
    pub(crate) aborted: u64,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cached_tokens: u64,
    pub(crate) cost: Money,
    pub(crate) latency_sum_us: u64,
}

impl Counts {
    /// Counts `o`; its latency only when it judges the model.
    fn add(&mut self, o: &Outcome<'_>, verdict: Verdict, latency_us: u64) {
        self.requests += 1;
        match verdict {
            Verdict::Success => self.successes += 1,
            Verdict::Failure => self.failures += 1,
            Verdict::ClientFault => self.client_faults += 1,
            Verdict::Aborted => self.aborted += 1,
        }
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(o.cached_tokens);
        self.cost = self.cost.saturating_add(o.cost);
        if verdict.judges() {
            self.latency_sum_us = self.latency_sum_us.saturating_add(latency_us);
        }
    }

    pub(crate) fn merge(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.successes += other.successes;
        self.failures += other.failures;
        self.client_faults += other.client_faults;
        self.aborted += other.aborted;
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(other.cached_tokens);
        self.cost = self.cost.saturating_add(other.cost);
        self.latency_sum_us = self.latency_sum_us.saturating_add(other.latency_sum_us);
    }
}

/// A time window: a ring of fixed slots, so memory is the same whatever the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Window {
    /// The last minute (4 slots of 15 s).
    Minute,
    /// The last 15 minutes (5 slots of 3 min).
    Quarter,
    /// The last hour (4 slots of 15 min).
    Hour,
    /// The last day (6 slots of 4 h).
    Day,
}

impl Window {
    /// Every window, shortest first.
    pub const ALL: [Window; 4] = [Window::Minute, Window::Quarter, Window::Hour, Window::Day];

    /// Its length in milliseconds.
    #[must_use]
    pub const fn span_ms(self) -> u64 {
        match self {
            Window::Minute => 60_000,
            Window::Quarter => 900_000,
            Window::Hour => 3_600_000,
            Window::Day => 86_400_000,
        }
    }

    const fn slots(self) -> u64 {
        match self {
            Window::Minute | Window::Hour => 4,
            Window::Quarter => 5,
            Window::Day => 6,
        }
    }

    const fn index(self) -> usize {
        match self {
            Window::Minute => 0,
            Window::Quarter => 1,
            Window::Hour => 2,
            Window::Day => 3,
        }
    }

    /// Its short name (`1m`, `15m`, `1h`, `1d`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Window::Minute => "1m",
            Window::Quarter => "15m",
            Window::Hour => "1h",
            Window::Day => "1d",
        }
    }
}

#[derive(Debug, Clone)]
struct Slot {
    epoch: u64,
    counts: Counts,
    latency_ms: Histogram<u32>,
}

#[derive(Debug, Clone)]
pub(crate) struct Ring {
    window: Window,
    slots: Vec<Slot>,
}

impl Ring {
    fn new(window: Window) -> Ring {
        let slot = Slot { epoch: u64::MAX, counts: Counts::default(), latency_ms: window_histogram() };
        Ring { window, slots: vec![slot; usize::try_from(window.slots()).unwrap_or(1)] }
    }

    fn width_ms(&self) -> u64 {
        self.window.span_ms() / self.window.slots()
    }

    fn record(&mut self, now_ms: u64, o: &Outcome<'_>, verdict: Verdict, latency_us: u64) {
        let epoch = now_ms / self.width_ms();
        let index = usize::try_from(epoch % self.window.slots()).unwrap_or(0);
        let slot = &mut self.slots[index];
        if slot.epoch != u64::MAX && epoch < slot.epoch {
            // Older than what a used slot holds (a replayed past event): out
            // of this window, and never a reason to wipe newer counts.
            return;
        }
        if slot.epoch != epoch {
            slot.epoch = epoch;
            slot.counts = Counts::default();
            slot.latency_ms.reset();
        }
        slot.counts.add(o, verdict, latency_us);
        if verdict.judges() {
            slot.latency_ms.saturating_record((latency_us / 1_000).max(1));
        }
    }

    /// The counts and latency histogram (ms) of the slots inside the window
    /// ending at `now_ms` (the current slot included, so the window covers
    /// between `span - width` and `span` of history).
    pub(crate) fn view(&self, now_ms: u64) -> (Counts, Histogram<u32>) {
        let mut hist = window_histogram();
        let counts = self.view_into(now_ms, &mut hist);
        (counts, hist)
    }

    /// [`Ring::view`], adding the latencies to `hist` (a window histogram).
    fn view_into(&self, now_ms: u64, hist: &mut Histogram<u32>) -> Counts {
        let epoch = now_ms / self.width_ms();
        let oldest = epoch.saturating_sub(self.window.slots() - 1);
        let mut counts = Counts::default();
        for slot in self.slots.iter().filter(|s| s.epoch != u64::MAX && s.epoch >= oldest && s.epoch <= epoch) {
            counts.merge(&slot.counts);
            // Same bounds on both sides: adding cannot fail.
            let _ = hist.add(&slot.latency_ms);
        }
        counts
    }
}

/// What one model has accumulated. Guarded by [`Cell::inner`].
#[derive(Debug, Clone)]
pub(crate) struct Inner {
    pub(crate) provider: String,
    pub(crate) counts: Counts,
    pub(crate) latency_us: Histogram<u64>,
    pub(crate) ttft_us: Histogram<u64>,
    pub(crate) errors: [u64; ErrorClass::ALL.len()],
    pub(crate) by_kind: [u64; Category::ALL.len()],
    pub(crate) quality_sum: f64,
    pub(crate) quality_count: u64,
    pub(crate) first_ms: Option<u64>,
    pub(crate) last_ms: Option<u64>,
    pub(crate) rings: [Ring; 4],
    pub(crate) recent: VecDeque<RecentEvent>,
    /// Reused to merge the 15-minute window for the p95, so refreshing it allocates nothing.
    scratch: Histogram<u32>,
    /// When the published p95 was last computed.
    p95_at_ms: Option<u64>,
}

impl Inner {
    /// The p95 latency in ms over the last 15 minutes (1 significant
    /// figure), else over all time; `None` without a judged outcome.
    fn recent_p95_ms(&mut self, now_ms: u64) -> Option<f64> {
        let Inner { rings, scratch, latency_us, .. } = self;
        scratch.reset();
        rings[Window::Quarter.index()].view_into(now_ms, scratch);
        if !scratch.is_empty() {
            return Some(scratch.value_at_quantile(0.95) as f64);
        }
        (!latency_us.is_empty()).then(|| latency_us.value_at_quantile(0.95) as f64 * 0.001)
    }
}

/// One model's statistics, behind its own lock, plus lock-free live signals.
///
/// The statistics are boxed so a cell (a map entry) stays a few cache lines:
/// the selector reads only the atomics, for every model, on every request.
#[derive(Debug)]
pub(crate) struct Cell {
    pub(crate) inner: Mutex<Box<Inner>>,
    pub(crate) in_flight: AtomicU32,
    pub(crate) samples: AtomicU64,
    /// f64 bits: time-decayed success share.
    pub(crate) ewma_success: AtomicU64,
    /// f64 bits: time-decayed latency in ms.
    pub(crate) ewma_latency_ms: AtomicU64,
    /// When the live signals last took an outcome (Unix ms): idle time is measured from it.
    signals_at_ms: AtomicU64,
    /// f64 bits: the p95 latency in ms published to the selector; NaN when none.
    p95_ms: AtomicU64,
    /// f64 bits: the provider's rate-limit headroom, 0 to 1...
    rate_headroom: AtomicU64,
    /// ...valid before this time (Unix ms); 0 when none was reported.
    rate_until_ms: AtomicU64,
}

/// The live signals forget with this time constant: a model that starts
/// failing loses its reliability within seconds, not hours.
const EWMA_TAU_MS: f64 = 5_000.0;
/// Each sample moves the averages at least this much, even in a burst.
const EWMA_MIN_WEIGHT: f64 = 0.05;
/// The success rate an idle model's live signals decay toward: an idle
/// model is presumed to work, so it gets traffic again and proves itself.
pub(crate) const IDLE_PRIOR_SUCCESS: f64 = 1.0;
/// The published p95 is recomputed on every one of a model's first outcomes...
const P95_EVERY_OUTCOME_UNTIL: u64 = 100;
/// ...then at most once per this many ms (each refresh merges five window slots).
const P95_REFRESH_MS: u64 = 1_000;

/// The share of the evidence an idle model's live signals keep after
/// `idle_ms` without an outcome: `0.5^(idle / half_life)`, 1 when the
/// half-life is zero (no decay).
pub(crate) fn idle_kept(idle_ms: u64, half_life: Duration) -> f64 {
    if idle_ms == 0 || half_life.is_zero() {
        return 1.0;
    }
    // 0.5^x as 2^-x: exp2 is several times cheaper than powf, and this runs
    // once per model per ranking.
    (-(idle_ms as f64 / (half_life.as_secs_f64() * 1_000.0))).exp2()
}

impl Cell {
    pub(crate) fn new(provider: &str, recent_capacity: usize) -> Cell {
        let inner = Inner {
            provider: provider.to_owned(),
            counts: Counts::default(),
            latency_us: latency_histogram(),
            ttft_us: latency_histogram(),
            errors: [0; ErrorClass::ALL.len()],
            by_kind: [0; Category::ALL.len()],
            quality_sum: 0.0,
            quality_count: 0,
            first_ms: None,
            last_ms: None,
            rings: Window::ALL.map(Ring::new),
            recent: VecDeque::with_capacity(recent_capacity.min(1_024)),
            scratch: window_histogram(),
            p95_at_ms: None,
        };
        Cell {
            inner: Mutex::new(Box::new(inner)),
            in_flight: AtomicU32::new(0),
            samples: AtomicU64::new(0),
            ewma_success: AtomicU64::new(1.0f64.to_bits()),
            ewma_latency_ms: AtomicU64::new(0f64.to_bits()),
            signals_at_ms: AtomicU64::new(0),
            p95_ms: AtomicU64::new(f64::NAN.to_bits()),
            rate_headroom: AtomicU64::new(1.0f64.to_bits()),
            rate_until_ms: AtomicU64::new(0),
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Box<Inner>> {
        // Plain counters: consistent after any panic mid-update.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the model's rated quality: the sum of its answers' qualities
    /// (0 to 1 each) and how many, as the store holds them.
    pub(crate) fn set_quality(&self, sum: f64, count: u64) {
        let mut inner = self.lock();
        inner.quality_sum = if sum.is_finite() { sum.max(0.0) } else { 0.0 };
        inner.quality_count = count;
    }

    pub(crate) fn record(&self, o: &Outcome<'_>, now_ms: u64, recent_capacity: usize) {
        let verdict = o.verdict();
        let latency_us = u64::try_from(o.latency.as_micros()).unwrap_or(u64::MAX).min(MAX_LATENCY_US);
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.counts.add(o, verdict, latency_us);
        if verdict.judges() {
            inner.latency_us.saturating_record(latency_us.max(1));
        }
        if let Some(ttft) = o.time_to_first_token {
            inner.ttft_us.saturating_record(u64::try_from(ttft.as_micros()).unwrap_or(u64::MAX).max(1));
        }
        if let Some(class) = o.error {
            inner.errors[class.index()] += 1;
        }
        inner.by_kind[o.kind.index()] += 1;
        if let Some(q) = o.quality.filter(|q| q.is_finite()) {
            inner.quality_sum += q.clamp(0.0, 1.0);
            inner.quality_count += 1;
        }
        inner.first_ms = Some(inner.first_ms.map_or(now_ms, |f| f.min(now_ms)));
        inner.last_ms = Some(inner.last_ms.map_or(now_ms, |l| l.max(now_ms)));
        for ring in &mut inner.rings {
            ring.record(now_ms, o, verdict, latency_us);
        }
        if recent_capacity > 0 {
            if inner.recent.len() >= recent_capacity {
                inner.recent.pop_front();
            }
            inner.recent.push_back(RecentEvent::new(o, now_ms));
        }

        // Live signals: time-decayed averages, published for lock-free
        // readers. Only outcomes that judge the model move them.
        if !verdict.judges() {
            return;
        }
        let samples = self.samples.fetch_add(1, Ordering::Relaxed) + 1;
        let success = if verdict == Verdict::Success { 1.0 } else { 0.0 };
        let sample_ms = latency_us as f64 / 1_000.0;
        let at_ms = self.signals_at_ms.load(Ordering::Relaxed);
        let (s, l) = if samples == 1 {
            (success, sample_ms)
        } else {
            let dt = now_ms.saturating_sub(at_ms);
            // Within one millisecond (a burst) the decay is nil: skip exp().
            let w =
                if dt == 0 { EWMA_MIN_WEIGHT } else { (1.0 - (-(dt as f64) / EWMA_TAU_MS).exp()).max(EWMA_MIN_WEIGHT) };
            let s0 = f64::from_bits(self.ewma_success.load(Ordering::Relaxed));
            let l0 = f64::from_bits(self.ewma_latency_ms.load(Ordering::Relaxed));
            (s0 + w * (success - s0), l0 + w * (sample_ms - l0))
        };
        self.signals_at_ms.store(at_ms.max(now_ms), Ordering::Relaxed);
        self.ewma_success.store(s.to_bits(), Ordering::Relaxed);
        self.ewma_latency_ms.store(l.to_bits(), Ordering::Relaxed);

        let stale = inner.p95_at_ms.is_none_or(|at| now_ms.abs_diff(at) >= P95_REFRESH_MS);
        if stale || samples <= P95_EVERY_OUTCOME_UNTIL {
            let p95 = inner.recent_p95_ms(now_ms).unwrap_or(f64::NAN);
            inner.p95_at_ms = Some(now_ms);
            self.p95_ms.store(p95.to_bits(), Ordering::Relaxed);
        }
    }

    /// The provider's rate-limit headroom (already clamped to 0..=1), valid before `until_ms`.
    pub(crate) fn set_rate_limit(&self, headroom: f64, until_ms: u64) {
        self.rate_headroom.store(headroom.to_bits(), Ordering::Relaxed);
        self.rate_until_ms.store(until_ms, Ordering::Release);
    }

    /// The live signals at `now_ms`: the success rate and sample count decay
    /// toward the prior while the model is idle (see [`idle_kept`]).
    pub(crate) fn signals(&self, now_ms: u64, idle_half_life: Duration) -> Signals {
        let samples = self.samples.load(Ordering::Relaxed);
        let idle_ms = now_ms.saturating_sub(self.signals_at_ms.load(Ordering::Relaxed));
        let kept = if samples == 0 { 1.0 } else { idle_kept(idle_ms, idle_half_life) };
        let success = f64::from_bits(self.ewma_success.load(Ordering::Relaxed));
        let p95 = f64::from_bits(self.p95_ms.load(Ordering::Relaxed));
        let until = self.rate_until_ms.load(Ordering::Acquire);
        Signals {
            samples: if kept >= 1.0 {
                samples
            } else {
                // 0 <= samples × kept <= samples: no truncation, no sign loss.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let decayed = (samples as f64 * kept).round() as u64;
                decayed
            },
            success_rate: IDLE_PRIOR_SUCCESS - (IDLE_PRIOR_SUCCESS - success) * kept,
            latency_ms: (samples > 0).then(|| f64::from_bits(self.ewma_latency_ms.load(Ordering::Relaxed))),
            latency_p95_ms: (samples > 0 && p95.is_finite()).then_some(p95),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            rate_limit_headroom: (now_ms < until).then(|| f64::from_bits(self.rate_headroom.load(Ordering::Relaxed))),
        }
    }

    pub(crate) fn window(&self, window: Window, now_ms: u64) -> (Counts, Histogram<u32>) {
        self.lock().rings[window.index()].view(now_ms)
    }
}
