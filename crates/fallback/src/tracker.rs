//! Per-model failure tracking: cooldowns and a circuit breaker, on time
//! the caller passes in.

use std::time::Duration;

use dashmap::DashMap;
use modelfleet_errors::{CooldownHint, ErrorClass};
use rustc_hash::FxBuildHasher;
use serde::Serialize;

/// How long each kind of failure takes a model out of rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CooldownConfig {
    /// A rate limit without a retry-after.
    pub short: Duration,
    /// The longest retry-after honoured as a cooldown.
    pub max_retry_after: Duration,
    /// The first escalating cooldown (server errors, connection failures).
    pub escalating_base: Duration,
    /// The longest escalating cooldown.
    pub escalating_max: Duration,
    /// Consecutive escalating failures before the first cooldown.
    pub escalate_after: u32,
    /// Authentication, not-found and quota failures.
    pub long: Duration,
}

impl Default for CooldownConfig {
    /// 5 s short, retry-after up to 60 s, escalating 2 s doubling to 60 s
    /// from the 2nd consecutive failure, 5 min long.
    fn default() -> Self {
        CooldownConfig {
            short: Duration::from_secs(5),
            max_retry_after: Duration::from_mins(1),
            escalating_base: Duration::from_secs(2),
            escalating_max: Duration::from_mins(1),
            escalate_after: 2,
            long: Duration::from_mins(5),
        }
    }
}

/// When a model's circuit opens and how it closes again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitConfig {
    /// The sliding window the failure ratio is measured over.
    pub window: Duration,
    /// Requests in the window before the ratio counts.
    pub min_requests: u32,
    /// The failure share (0 to 1) that opens the circuit.
    pub failure_ratio: f64,
    /// How long it stays open before letting probes through.
    pub open_for: Duration,
    /// Probe requests allowed at once while half-open; that many successes close it.
    pub half_open_probes: u32,
}

impl Default for CircuitConfig {
    /// Opens at 50% failures over at least 10 requests in 30 s; open 30 s; 3 probes.
    fn default() -> Self {
        CircuitConfig {
            window: Duration::from_secs(30),
            min_requests: 10,
            failure_ratio: 0.5,
            open_for: Duration::from_secs(30),
            half_open_probes: 3,
        }
    }
}

/// The [`Tracker`]'s settings.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TrackerConfig {
    /// Cooldowns.
    pub cooldown: CooldownConfig,
    /// The circuit breaker.
    pub circuit: CircuitConfig,
}

/// A circuit breaker's state, for metrics and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Traffic flows.
    Closed,
    /// No traffic until the open period ends.
    Open,
    /// A few probe requests test the model.
    HalfOpen,
}

impl CircuitState {
    /// The snake-case name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }
}

/// Whether a model may take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Yes.
    Available,
    /// Yes, as one of the half-open circuit's probes.
    Probe,
    /// No: cooling down after a failure of `class`, until `until`.
    CoolingDown {
        /// The failure that caused it.
        class: ErrorClass,
        /// When it ends (on the caller's clock).
        until: Duration,
    },
    /// No: the circuit is open until `until`.
    CircuitOpen {
        /// When probes may start (on the caller's clock).
        until: Duration,
    },
    /// No: the half-open circuit's probes are all in flight.
    ProbesBusy,
}

impl Availability {
    /// Whether the model may take the request.
    #[must_use]
    pub const fn is_available(self) -> bool {
        matches!(self, Availability::Available | Availability::Probe)
    }
}

/// A model's tracked state, as reports show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ModelHealth {
    /// The circuit.
    pub circuit: CircuitState,
    /// Failures in a row (of any class that counts against the model).
    pub consecutive_failures: u32,
    /// The cooldown in force, if any: its class and end.
    pub cooldown: Option<(ErrorClass, Duration)>,
    /// Failures recorded in all.
    pub failures: u64,
    /// Successes recorded in all.
    pub successes: u64,
    /// When the last failure happened.
    pub last_failure_at: Option<Duration>,
}

const BUCKETS: usize = 10;
/// [`BUCKETS`] as the `u32` that `Duration` divides by.
const BUCKETS_U32: u32 = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    epoch: u64,
    ok: u32,
    failed: u32,
}

#[derive(Debug, Clone, Copy)]
enum Circuit {
    Closed,
    Open { until: Duration },
    HalfOpen { in_flight: u32, successes: u32 },
}

#[derive(Debug, Clone)]
struct State {
    buckets: [Bucket; BUCKETS],
    circuit: Circuit,
    consecutive: u32,
    cooldown: Option<(ErrorClass, Duration)>,
    failures: u64,
    successes: u64,
    last_failure_at: Option<Duration>,
}

impl Default for State {
    fn default() -> Self {
        State {
            buckets: [Bucket::default(); BUCKETS],
            circuit: Circuit::Closed,
            consecutive: 0,
            cooldown: None,
            failures: 0,
            successes: 0,
            last_failure_at: None,
        }
    }
}

/// Whether a failure of `class` says the model itself is unwell (and so
/// counts in the circuit's window and the escalation).
#[must_use]
pub const fn counts_against_model(class: ErrorClass) -> bool {
    matches!(class, ErrorClass::Timeout | ErrorClass::ServerError | ErrorClass::Connection)
}

impl State {
    fn bucket_width(config: &CircuitConfig) -> Duration {
        (config.window / BUCKETS_U32).max(Duration::from_millis(1))
    }

    fn bucket(&mut self, config: &CircuitConfig, now: Duration) -> &mut Bucket {
        let epoch = u64::try_from(now.as_nanos() / Self::bucket_width(config).as_nanos()).unwrap_or(u64::MAX);
        let slot = &mut self.buckets[usize::try_from(epoch % BUCKETS as u64).unwrap_or(0)];
        if slot.epoch != epoch {
            *slot = Bucket { epoch, ok: 0, failed: 0 };
        }
        slot
    }

    /// Successes and failures in the window ending at `now`.
    fn window(&self, config: &CircuitConfig, now: Duration) -> (u32, u32) {
        let epoch = u64::try_from(now.as_nanos() / Self::bucket_width(config).as_nanos()).unwrap_or(u64::MAX);
        let oldest = epoch.saturating_sub(BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| b.epoch >= oldest && b.epoch <= epoch)
            .fold((0, 0), |(ok, failed), b| (ok + b.ok, failed + b.failed))
    }

    /// Moves an open circuit whose time is up to half-open.
    fn refresh(&mut self, now: Duration) {
        if let Circuit::Open { until } = self.circuit
            && now >= until
        {
            self.circuit = Circuit::HalfOpen { in_flight: 0, successes: 0 };
        }
        if self.cooldown.is_some_and(|(_, until)| now >= until) {
            self.cooldown = None;
        }
    }

    fn availability(&self, config: &CircuitConfig, now: Duration) -> Availability {
        if let Some((class, until)) = self.cooldown
            && now < until
        {
            return Availability::CoolingDown { class, until };
        }
        match self.circuit {
            Circuit::Closed => Availability::Available,
            Circuit::Open { until } if now < until => Availability::CircuitOpen { until },
            Circuit::Open { .. } => Availability::Probe,
            Circuit::HalfOpen { in_flight, .. } if in_flight < config.half_open_probes => Availability::Probe,
            Circuit::HalfOpen { .. } => Availability::ProbesBusy,
        }
    }

    fn health(&self) -> ModelHealth {
        ModelHealth {
            circuit: match self.circuit {
                Circuit::Closed => CircuitState::Closed,
                Circuit::Open { .. } => CircuitState::Open,
                Circuit::HalfOpen { .. } => CircuitState::HalfOpen,
            },
            consecutive_failures: self.consecutive,
            cooldown: self.cooldown,
            failures: self.failures,
            successes: self.successes,
            last_failure_at: self.last_failure_at,
        }
    }
}

/// Tracks every model's failures, cooldowns and circuit, shared by all
/// requests (thread-safe; one model's update locks only its shard).
///
/// Time is always an argument (`now`, a `Duration` since any fixed origin
/// the caller keeps), so tests step it exactly and nothing here sleeps.
///
/// ```
/// use std::time::Duration;
/// use modelfleet_errors::ErrorClass;
/// use modelfleet_fallback::{Availability, Tracker, TrackerConfig};
///
/// let tracker = Tracker::new(TrackerConfig::default());
/// let t = Duration::from_secs(100);
/// tracker.record_failure("gpt-4o", ErrorClass::RateLimited, Some(Duration::from_secs(2)), t);
/// assert!(!tracker.availability("gpt-4o", t).is_available());
/// assert_eq!(tracker.availability("gpt-4o", t + Duration::from_secs(2)), Availability::Available);
/// ```
#[derive(Debug)]
pub struct Tracker {
    config: TrackerConfig,
    models: DashMap<String, State, FxBuildHasher>,
}

impl Tracker {
    /// A tracker that knows no failures yet.
    #[must_use]
    pub fn new(config: TrackerConfig) -> Tracker {
        Tracker { config, models: DashMap::with_hasher(FxBuildHasher) }
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    fn with_state<R>(&self, model: &str, f: impl FnOnce(&mut State) -> R) -> R {
        if let Some(mut state) = self.models.get_mut(model) {
            return f(&mut state);
        }
        f(&mut self.models.entry(model.to_owned()).or_default())
    }

    /// Whether `model` may take a request at `now` (read-only: does not
    /// reserve a half-open probe; see [`Tracker::acquire`]).
    #[must_use]
    pub fn availability(&self, model: &str, now: Duration) -> Availability {
        self.models.get(model).map_or(Availability::Available, |s| s.availability(&self.config.circuit, now))
    }

    /// Like [`Tracker::availability`], and when the answer is
    /// [`Availability::Probe`] it takes one of the half-open probe slots,
    /// which the next `record_*` for the model gives back.
    #[must_use = "a probe slot taken must be used and its outcome recorded"]
    pub fn acquire(&self, model: &str, now: Duration) -> Availability {
        if !self.models.contains_key(model) {
            return Availability::Available;
        }
        let config = self.config.circuit;
        self.with_state(model, |state| {
            state.refresh(now);
            let availability = state.availability(&config, now);
            if availability == Availability::Probe
                && let Circuit::HalfOpen { in_flight, .. } = &mut state.circuit
            {
                *in_flight += 1;
            }
            availability
        })
    }

    /// Records a success of `model` at `now`.
    pub fn record_success(&self, model: &str, now: Duration) {
        let config = self.config.circuit;
        self.with_state(model, |state| {
            state.refresh(now);
            state.successes += 1;
            state.consecutive = 0;
            state.bucket(&config, now).ok += 1;
            if let Circuit::HalfOpen { in_flight, successes } = &mut state.circuit {
                *in_flight = in_flight.saturating_sub(1);
                *successes += 1;
                if *successes >= config.half_open_probes {
                    state.circuit = Circuit::Closed;
                    state.buckets = [Bucket::default(); BUCKETS];
                }
            }
        });
    }

    /// Records a failure of `model` at `now`: sets the cooldown its class
    /// calls for (a rate limit honours `retry_after`), counts it in the
    /// circuit's window when it [counts against the model](counts_against_model),
    /// and opens the circuit when the window's failure ratio crosses the
    /// threshold (or a half-open probe failed).
    pub fn record_failure(&self, model: &str, class: ErrorClass, retry_after: Option<Duration>, now: Duration) {
        let TrackerConfig { cooldown, circuit } = self.config;
        self.with_state(model, |state| {
            state.refresh(now);
            let probe = matches!(state.circuit, Circuit::HalfOpen { .. });
            if let Circuit::HalfOpen { in_flight, .. } = &mut state.circuit {
                *in_flight = in_flight.saturating_sub(1);
            }
            if class == ErrorClass::Cancelled {
                return; // the caller gave up: says nothing about the model
            }
            state.failures += 1;
            state.last_failure_at = Some(now);
            let against = counts_against_model(class);
            if against {
                state.consecutive = state.consecutive.saturating_add(1);
                state.bucket(&circuit, now).failed += 1;
            }
            let pause = match class.cooldown() {
                CooldownHint::Short => Some(retry_after.map_or(cooldown.short, |r| r.min(cooldown.max_retry_after))),
                CooldownHint::Long => Some(cooldown.long),
                CooldownHint::Escalating if state.consecutive >= cooldown.escalate_after => {
                    let steps = state.consecutive - cooldown.escalate_after;
                    let pause = cooldown.escalating_base.saturating_mul(1 << steps.min(20));
                    Some(pause.min(cooldown.escalating_max))
                }
                // Below the escalation threshold, or a class without cooldown.
                CooldownHint::Escalating | CooldownHint::None => None,
            };
            if let Some(pause) = pause {
                let until = now.saturating_add(pause);
                // A longer cooldown already in force stays.
                if state.cooldown.is_none_or(|(_, current)| current < until) {
                    state.cooldown = Some((class, until));
                }
            }
            if against {
                let (ok, failed) = state.window(&circuit, now);
                let total = ok + failed;
                let tripped =
                    total >= circuit.min_requests && f64::from(failed) >= circuit.failure_ratio * f64::from(total);
                if probe || (tripped && matches!(state.circuit, Circuit::Closed)) {
                    state.circuit = Circuit::Open { until: now.saturating_add(circuit.open_for) };
                }
            }
        });
    }

    /// `model`'s circuit state at `now`.
    #[must_use]
    pub fn circuit(&self, model: &str, now: Duration) -> CircuitState {
        self.health(model, now).circuit
    }

    /// `model`'s tracked state at `now` (a model never seen is healthy).
    #[must_use]
    pub fn health(&self, model: &str, now: Duration) -> ModelHealth {
        self.models.get(model).map_or_else(
            || State::default().health(),
            |state| {
                let mut state = state.clone();
                state.refresh(now);
                state.health()
            },
        )
    }

    /// Every tracked model's state at `now`, sorted by id.
    #[must_use]
    pub fn all(&self, now: Duration) -> Vec<(String, ModelHealth)> {
        let mut out: Vec<(String, ModelHealth)> = self
            .models
            .iter()
            .map(|entry| {
                let mut state = entry.value().clone();
                state.refresh(now);
                (entry.key().clone(), state.health())
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}
