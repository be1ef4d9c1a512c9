//! One model's accumulated statistics: all-time totals and histograms, window
//! rings, the recent-events buffer and the live-signal EWMAs.

use std::{
    collections::VecDeque,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
};

use hdrhistogram::Histogram;
use modelfleet_errors::ErrorClass;
use modelfleet_registry::{Category, Money};

use crate::{Outcome, RecentEvent};

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
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cached_tokens: u64,
    pub(crate) cost: Money,
    pub(crate) latency_sum_us: u64,
}

impl Counts {
    fn add(&mut self, o: &Outcome<'_>, latency_us: u64) {
        self.requests += 1;
        if o.error.is_none() {
            self.successes += 1;
        } else {
            self.failures += 1;
        }
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(o.cached_tokens);
        self.cost = self.cost.saturating_add(o.cost);
        self.latency_sum_us = self.latency_sum_us.saturating_add(latency_us);
    }

    pub(crate) fn merge(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.successes += other.successes;
        self.failures += other.failures;
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

    fn record(&mut self, now_ms: u64, o: &Outcome<'_>, latency_us: u64) {
        let epoch = now_ms / self.width_ms();
        let index = usize::try_from(epoch % self.window.slots()).unwrap_or(0);
        let slot = &mut self.slots[index];
        if slot.epoch != epoch {
            slot.epoch = epoch;
            slot.counts = Counts::default();
            slot.latency_ms.reset();
        }
        slot.counts.add(o, latency_us);
        slot.latency_ms.saturating_record((latency_us / 1_000).max(1));
    }

    /// The counts and latency histogram (ms) of the slots inside the window
    /// ending at `now_ms` (the current slot included, so the window covers
    /// between `span - width` and `span` of history).
    pub(crate) fn view(&self, now_ms: u64) -> (Counts, Histogram<u32>) {
        let epoch = now_ms / self.width_ms();
        let oldest = epoch.saturating_sub(self.window.slots() - 1);
        let mut counts = Counts::default();
        let mut hist = window_histogram();
        for slot in self.slots.iter().filter(|s| s.epoch != u64::MAX && s.epoch >= oldest && s.epoch <= epoch) {
            counts.merge(&slot.counts);
            // Same bounds on both sides: adding cannot fail.
            let _ = hist.add(&slot.latency_ms);
        }
        (counts, hist)
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
    ewma_at_ms: u64,
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
}

/// The live signals forget with this time constant: a model that starts
/// failing loses its reliability within seconds, not hours.
const EWMA_TAU_MS: f64 = 5_000.0;
/// Each sample moves the averages at least this much, even in a burst.
const EWMA_MIN_WEIGHT: f64 = 0.05;

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
            ewma_at_ms: 0,
        };
        Cell {
            inner: Mutex::new(Box::new(inner)),
            in_flight: AtomicU32::new(0),
            samples: AtomicU64::new(0),
            ewma_success: AtomicU64::new(1.0f64.to_bits()),
            ewma_latency_ms: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Box<Inner>> {
        // Plain counters: consistent after any panic mid-update.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn record(&self, o: &Outcome<'_>, now_ms: u64, recent_capacity: usize) {
        let latency_us = u64::try_from(o.latency.as_micros()).unwrap_or(u64::MAX).min(MAX_LATENCY_US);
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.counts.add(o, latency_us);
        inner.latency_us.saturating_record(latency_us.max(1));
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
            ring.record(now_ms, o, latency_us);
        }
        if recent_capacity > 0 {
            if inner.recent.len() >= recent_capacity {
                inner.recent.pop_front();
            }
            inner.recent.push_back(RecentEvent::new(o, now_ms));
        }

        // Live signals: time-decayed averages, published for lock-free readers.
        let samples = self.samples.fetch_add(1, Ordering::Relaxed) + 1;
        let success = if o.error.is_none() { 1.0 } else { 0.0 };
        let sample_ms = latency_us as f64 / 1_000.0;
        let (s, l) = if samples == 1 {
            (success, sample_ms)
        } else {
            let dt = now_ms.saturating_sub(inner.ewma_at_ms);
            // Within one millisecond (a burst) the decay is nil: skip exp().
            let w =
                if dt == 0 { EWMA_MIN_WEIGHT } else { (1.0 - (-(dt as f64) / EWMA_TAU_MS).exp()).max(EWMA_MIN_WEIGHT) };
            let s0 = f64::from_bits(self.ewma_success.load(Ordering::Relaxed));
            let l0 = f64::from_bits(self.ewma_latency_ms.load(Ordering::Relaxed));
            (s0 + w * (success - s0), l0 + w * (sample_ms - l0))
        };
        inner.ewma_at_ms = inner.ewma_at_ms.max(now_ms);
        self.ewma_success.store(s.to_bits(), Ordering::Relaxed);
        self.ewma_latency_ms.store(l.to_bits(), Ordering::Relaxed);
    }

    pub(crate) fn window(&self, window: Window, now_ms: u64) -> (Counts, Histogram<u32>) {
        self.lock().rings[window.index()].view(now_ms)
    }
}
