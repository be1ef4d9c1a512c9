//! Per-model failure tracking: cooldowns with Envoy-style escalating
//! ejection, and a circuit breaker, on time the caller passes in.
//!
//! A caller asks [`Tracker::acquire`] before each call to a model and gets a
//! [`Permit`] (or the [`Availability`] that says why not). The permit is
//! consumed by the call's outcome ([`Permit::success`],
//! [`Permit::success_with_latency`], [`Permit::failure`]) or given back
//! unused ([`Permit::release`], or simply dropped). The rules below are the
//! tracker's invariants; `tracker_tests.rs` has a test for each.
//!
//! # Time
//! - No clock is read: every method takes `now`, a `Duration` since an origin
//!   the caller keeps. Time-based transitions (an open circuit turning
//!   half-open, a cooldown ending and re-admission starting, streak and
//!   multiplier decay) are computed lazily from stored timestamps when a
//!   model is next looked at; there is no background task. Read-only calls
//!   ([`Tracker::availability`], [`Tracker::health`], …) apply them to a copy.
//! - Time alone never opens a circuit, starts a cooldown or counts an
//!   ejection: only a recorded failure does.
//!
//! # Permits
//! - A permit is the only way to record an outcome, and recording consumes
//!   it. A permit released or dropped records nothing (no counter, streak,
//!   window or cooldown changes); a probe permit gives its slot back (the
//!   half-open circuit's or re-admission's). So a caller future dropped at
//!   any `.await` leaks nothing. Release (do not fail) a permit when the
//!   request's own deadline ran out, a budget refused it or the client went
//!   away: none of those says anything about the model.
//! - [`Tracker::acquire_forced`] (panic mode) admits a model even while it is
//!   ejected. A forced permit is never a probe. Its success ends the cooldown
//!   (no re-admission follows) and closes an open or half-open circuit
//!   (clearing the window): the model evidently works again. Its failure
//!   while an ejection is in force counts in the totals and streaks but is
//!   not a new ejection: it raises neither the ejection count nor the
//!   multiplier, enters no window, and its cooldown (at the current
//!   multiplier, at least ×1) only replaces a shorter one.
//!
//! # Circuit breaker
//! - **Window.** The sliding window (`window`, kept in 10 buckets of
//!   `window / 10`, so an outcome leaves it between 9 and 10 bucket widths
//!   after it entered) holds successes (slow when their latency is at least
//!   `slow_call_duration`) and failures of the classes that
//!   [count against the model](counts_against_model): timeout, server error,
//!   connection. No other outcome is in its numerator or denominator. A
//!   success's latency is `now` minus the permit's start
//!   ([`Permit::success`]) or the one the caller gives
//!   ([`Permit::success_with_latency`]): a stream gives its time to first
//!   token, so a long answer streamed promptly is not a slow call.
//! - **Closed → open** after an outcome enters the window, when the window
//!   holds at least `min_requests` calls and failures / calls ≥
//!   `failure_ratio` or slow successes / calls ≥ `slow_call_ratio`.
//! - **Open → half-open** once `open_for` has passed since it opened
//!   (`now >= until`). `open_for` is fixed: the ejection multiplier does not
//!   lengthen it.
//! - **Half-open** admits up to `half_open_probes` probes in flight at once.
//!   That many probe successes (of the spell, however far apart) close the
//!   circuit and clear the window; one probe failure of a class that counts
//!   against the model opens it again for `open_for` (an ejection). Other
//!   probe answers (rate limit, client fault, …) only free their slot, and so
//!   does a probe released or dropped: neither answer is a failure, an
//!   ejection or a reason to open.
//! - **No half-open timeout** (resilience4j's default,
//!   `maxWaitDurationInHalfOpenState` 0). While a probe of the current spell
//!   is in flight the circuit waits for it however long it takes (a slow
//!   call, a long stream): every probe slot is owned by a permit, which
//!   answers or is released or dropped, so nothing holds the state forever.
//!   With no probe in flight it waits for traffic, however long. It never
//!   returns to open by time alone: an idle return would refuse traffic
//!   although nothing failed, and a model whose requests come further apart
//!   than the idle limit would never gather its probe successes, flapping
//!   open ↔ half-open forever. (So there is no `half_open_timeout`
//!   setting: it would reopen the circuits of slow but healthy models.)
//! - **Generations.** Every opening (a trip or a probe failure) starts a new
//!   generation. A permit taken in an earlier generation (before the circuit
//!   opened, or in an earlier half-open spell) is not a probe of the current
//!   one: its outcome updates the totals, streaks and cooldowns,
//!   but enters no window, moves no circuit and frees no probe slot.
//!
//! # Cooldowns and ejections
//! - **Rate limited:** cooldown `retry_after` capped at `max_retry_after`, or
//!   `short` without one. Not an ejection.
//! - **Quota exhausted:** `long` cooldown at once, an ejection.
//! - **Server error, connection:** a consecutive streak; from
//!   `escalate_after` on, each failure ejects for `escalating_base` ×
//!   multiplier, capped at `escalating_max` (Envoy outlier detection).
//! - **Timeout:** its own streak; from `timeouts_to_eject` on, each ejects the
//!   same escalating way.
//! - **Authentication, not found:** their own streak; from
//!   `request_specific_to_eject` on, each ejects for `long`; below it nothing
//!   (a 401 may be one bad key among many requests).
//! - **Circuit openings** are ejections too. One failure counts at most one
//!   ejection, even when it both starts a cooldown and opens the circuit.
//! - **Multiplier.** Each ejection raises it by one (after decay); it decays by
//!   one per full `multiplier_decay` since the last ejection ended (a cooldown's
//!   or open period's end, or the forced success that ended it early).
//! - A longer (or equally long) cooldown already in force stays.
//! - **Streaks.** A success resets every streak; a failure streak whose last
//!   failure (of any recorded class) is older than `streak_decay` is forgotten.
//! - **Client faults** (bad request, content policy, context window) count in
//!   `client_faults` only: no failure, streak, window or cooldown.
//! - **Cancelled, budget exceeded, internal** record nothing at all, like a
//!   release.
//! - **Re-admission.** When a cooldown ends whose class (the failure that set
//!   its end) is not a rate limit, that is an ejection's (quota, escalating,
//!   timeout, repeated authentication or not-found, or a forced failure's),
//!   the model is re-admitted gradually: while its circuit is closed, at most
//!   `half_open_probes` permits are in flight at once ([`Tracker::acquire`]
//!   answers [`Availability::Probe`] and the permit is a probe; beyond them
//!   [`Availability::ProbesBusy`]). A rate limit's end is followed by full
//!   traffic: it is the provider's own instruction, not an ejection. (A
//!   cooldown a longer rate limit took over ends as a rate limit; one an
//!   ejection lengthened ends as an ejection.) A half-open circuit keeps its
//!   own probe rules and slots instead: re-admission limits only a closed one.
//!   - The first success recorded ends it, whatever permit it came from
//!     (forced ones and calls started earlier included): the model answers.
//!   - A failure of a re-admission permit of a class that counts against the
//!     model ejects again at once, as if its streak had reached
//!     `escalate_after` or `timeouts_to_eject` (a streak may have decayed
//!     during a long cooldown), so the multiplier grows; the new cooldown's end
//!     starts a new re-admission. Its other answers only free the slot (a rate
//!     limit's cooldown pauses re-admission, which resumes when it ends).
//!   - A re-admission permit released or dropped frees its slot; one from an
//!     earlier re-admission frees no slot of the next.
//!   - No timeout: its slots are owned by permits, so nothing can hold one
//!     forever; it lasts until a success.
//! - **Ejected since.** [`Tracker::ejected_since`] is when the ejection in
//!   force began: the earliest of the start of the cooldown in force (rate
//!   limits included; a cooldown lengthened while in force keeps its start),
//!   the time the circuit left closed (it stays ejected while half-open) and
//!   the time a remote ejection in force was taken.
//!
//! # Ejections shared between replicas
//! - **Local ejections are told.** A tracker made with
//!   [`Tracker::with_observer`] calls its observer after every recorded
//!   outcome that makes the model's local ejection end later: a cooldown
//!   started or lengthened (its class is the reason), a circuit opened. A
//!   success, a release, a cooldown kept because a longer one stays, a
//!   half-open circuit and time passing tell nothing. The observer runs
//!   after the model's state is unlocked, on the caller's thread: it must
//!   not block (hand the ejection to a channel with `try_send`).
//! - **Remote ejections are taken, not told.** [`Tracker::eject_remote`]
//!   takes another replica's ejection: until it ends, [`Tracker::acquire`]
//!   refuses the model ([`Availability::CoolingDown`] with the class, or
//!   [`Availability::CircuitOpen`]), unless a local ejection in force ends
//!   at the same time or later (then it is not kept: the local one says
//!   more). It is not a local ejection: no ejection count, multiplier,
//!   streak, window or circuit changes, no re-admission when it ends, and
//!   the observer never hears of it (so replicas never echo one another).
//!   [`ModelHealth::remote`] shows it. A longer one lengthens it; a shorter
//!   one changes nothing.
//! - A forced permit's success dismisses the remote ejection in force (the
//!   model answers here), and a remote ejection ending no later than the
//!   one dismissed is not taken again (the re-read of the shared store
//!   would otherwise bring it straight back).

use std::{fmt, sync::Arc, time::Duration};

use dashmap::DashMap;
use modelfleet_errors::ErrorClass;
use rustc_hash::FxBuildHasher;
use serde::Serialize;

/// How long each kind of failure takes a model out of rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CooldownConfig {
    /// A rate limit without a retry-after.
    pub short: Duration,
    /// The longest retry-after honoured as a cooldown.
    pub max_retry_after: Duration,
    /// The base ejection time, multiplied by the ejection multiplier.
    pub escalating_base: Duration,
    /// The longest escalating ejection.
    pub escalating_max: Duration,
    /// Consecutive server or connection failures from which each ejects.
    pub escalate_after: u32,
    /// Quota exhaustion, and repeated authentication or not-found failures.
    pub long: Duration,
    /// Consecutive timeouts (not caused by the request's own deadline) from
    /// which each ejects.
    pub timeouts_to_eject: u32,
    /// Consecutive authentication or not-found failures from which each ejects
    /// for `long`; below it they cause no cooldown.
    pub request_specific_to_eject: u32,
    /// Each full interval without an ejection, counted from the end of the last
    /// one, lowers the ejection multiplier by one.
    pub multiplier_decay: Duration,
    /// A failure streak whose last failure is older than this is forgotten.
    pub streak_decay: Duration,
}

impl Default for CooldownConfig {
    /// 5 s short, retry-after up to 60 s, escalating 2 s × multiplier up to
    /// 60 s from the 2nd consecutive server failure or the 3rd timeout, 5 min
    /// long (from the 3rd authentication or not-found failure), decay after
    /// 30 s.
    fn default() -> Self {
        CooldownConfig {
            short: Duration::from_secs(5),
            max_retry_after: Duration::from_mins(1),
            escalating_base: Duration::from_secs(2),
            escalating_max: Duration::from_mins(1),
            escalate_after: 2,
            long: Duration::from_mins(5),
            timeouts_to_eject: 3,
            request_specific_to_eject: 3,
            multiplier_decay: Duration::from_secs(30),
            streak_decay: Duration::from_secs(30),
        }
    }
}

/// A circuit breaker's settings as written; [`CircuitConfig::new`] checks them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitSettings {
    /// The sliding window the ratios are measured over.
    pub window: Duration,
    /// Calls in the window before the ratios count.
    pub min_requests: u32,
    /// The failure share, in (0, 1], that opens the circuit.
    pub failure_ratio: f64,
    /// How long it stays open before letting probes through.
    pub open_for: Duration,
    /// Probes allowed in flight at once while half-open; that many successes close it.
    pub half_open_probes: u32,
    /// A successful call at least this slow is slow.
    pub slow_call_duration: Duration,
    /// The slow-success share, in (0, 1], that opens the circuit.
    pub slow_call_ratio: f64,
}

impl Default for CircuitSettings {
    /// Opens at 50% failures (or 100% slow successes of 60 s or more) over at
    /// least 10 calls in 30 s; open 30 s; then 3 probes in flight at once,
    /// waited for however long they take.
    fn default() -> Self {
        CircuitSettings {
            window: Duration::from_secs(30),
            min_requests: 10,
            failure_ratio: 0.5,
            open_for: Duration::from_secs(30),
            half_open_probes: 3,
            slow_call_duration: Duration::from_mins(1),
            slow_call_ratio: 1.0,
        }
    }
}

/// Validated [`CircuitSettings`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitConfig(
    // Invariant: every duration is non-zero, both counts are at least 1, and
    // both ratios are in (0, 1] (so finite).
    CircuitSettings,
);

impl Default for CircuitConfig {
    /// [`CircuitSettings::default`], which is valid.
    fn default() -> Self {
        CircuitConfig(CircuitSettings::default())
    }
}

/// A setting that cannot work, named with its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidConfig(pub String);

impl CircuitConfig {
    /// Checks `settings`: zero durations, zero counts and ratios outside
    /// (0, 1] (NaN and infinities included) are refused, with a message naming
    /// the field and its value.
    pub fn new(settings: CircuitSettings) -> Result<CircuitConfig, InvalidConfig> {
        let s = settings;
        non_zero("circuit window", s.window)?;
        non_zero("circuit open_for", s.open_for)?;
        non_zero("circuit slow_call_duration", s.slow_call_duration)?;
        at_least_one("circuit min_requests", s.min_requests)?;
        at_least_one("circuit half_open_probes", s.half_open_probes)?;
        ratio("failure_ratio", s.failure_ratio)?;
        ratio("slow_call_ratio", s.slow_call_ratio)?;
        Ok(CircuitConfig(settings))
    }

    /// The settings.
    #[must_use]
    pub fn settings(&self) -> &CircuitSettings {
        &self.0
    }
}

impl CooldownConfig {
    /// Checks the settings: the thresholds (`escalate_after`,
    /// `timeouts_to_eject`, `request_specific_to_eject`) at least 1,
    /// `escalating_base`, `multiplier_decay` and `streak_decay` non-zero, and
    /// `escalating_max` at least `escalating_base`; the message names the
    /// field and its value. Zero is fine for `short`, `long` and
    /// `max_retry_after`: no cooldown of that kind.
    pub fn check(&self) -> Result<(), InvalidConfig> {
        at_least_one("cooldown escalate_after", self.escalate_after)?;
        at_least_one("cooldown timeouts_to_eject", self.timeouts_to_eject)?;
        at_least_one("cooldown request_specific_to_eject", self.request_specific_to_eject)?;
        non_zero("cooldown escalating_base", self.escalating_base)?;
        non_zero("cooldown multiplier_decay", self.multiplier_decay)?;
        non_zero("cooldown streak_decay", self.streak_decay)?;
        if self.escalating_max < self.escalating_base {
            return Err(InvalidConfig(format!(
                "cooldown escalating_max must be at least escalating_base ({:?}) (got {:?})",
                self.escalating_base, self.escalating_max
            )));
        }
        Ok(())
    }
}

fn non_zero(field: &str, value: Duration) -> Result<(), InvalidConfig> {
    if value.is_zero() {
        return Err(InvalidConfig(format!("{field} must be greater than zero (got {value:?})")));
    }
    Ok(())
}

fn at_least_one(field: &str, value: u32) -> Result<(), InvalidConfig> {
    if value == 0 {
        return Err(InvalidConfig(format!("{field} must be at least 1 (got {value})")));
    }
    Ok(())
}

fn ratio(field: &str, value: f64) -> Result<(), InvalidConfig> {
    // NaN fails both comparisons, infinities one of them.
    if value > 0.0 && value <= 1.0 {
        return Ok(());
    }
    Err(InvalidConfig(format!("circuit {field} must be in (0, 1] (got {value})")))
}

/// The [`Tracker`]'s settings.
///
/// [`TrackerConfig::new`] checks the cooldowns (the circuit is checked by
/// its type). The fields stay public: a literal skips the cooldown check,
/// and the tracker then follows the rules as written for any value (a zero
/// `multiplier_decay` forgets the multiplier as soon as an ejection ends,
/// a zero threshold ejects from the first failure, …), which tests use.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TrackerConfig {
    /// Cooldowns and ejections.
    pub cooldown: CooldownConfig,
    /// The circuit breaker.
    pub circuit: CircuitConfig,
}

impl TrackerConfig {
    /// The settings, with `cooldown` checked by [`CooldownConfig::check`].
    pub fn new(cooldown: CooldownConfig, circuit: CircuitConfig) -> Result<TrackerConfig, InvalidConfig> {
        cooldown.check()?;
        Ok(TrackerConfig { cooldown, circuit })
    }
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

    /// The state as a gauge value: 0 closed, 1 half-open, 2 open.
    #[must_use]
    pub const fn gauge(self) -> u8 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        }
    }
}

/// Whether a model may take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Yes.
    Available,
    /// Yes, as a probe: one of the half-open circuit's, or one of the
    /// permits re-admission lets through after an ejection's cooldown.
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
    /// No: the probes (the half-open circuit's, or re-admission's) are all
    /// in flight.
    ProbesBusy,
}

impl Availability {
    /// Whether the model may take the request.
    #[must_use]
    pub const fn is_available(self) -> bool {
        matches!(self, Availability::Available | Availability::Probe)
    }
}

/// Why a model is out of rotation, as replicas tell each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EjectionReason {
    /// A cooldown after a failure of this class.
    Cooldown(ErrorClass),
    /// An opened circuit.
    CircuitOpen,
}

impl EjectionReason {
    /// The class's snake-case name, or `circuit_open`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            EjectionReason::Cooldown(class) => class.as_str(),
            EjectionReason::CircuitOpen => "circuit_open",
        }
    }

    /// The reason [`EjectionReason::as_str`] names; `None` for any other text.
    #[must_use]
    pub fn from_name(name: &str) -> Option<EjectionReason> {
        if name == "circuit_open" {
            return Some(EjectionReason::CircuitOpen);
        }
        name.parse().ok().map(EjectionReason::Cooldown)
    }

    /// What [`Tracker::acquire`] answers while it is in force, until `until`.
    const fn availability(self, until: Duration) -> Availability {
        match self {
            EjectionReason::Cooldown(class) => Availability::CoolingDown { class, until },
            EjectionReason::CircuitOpen => Availability::CircuitOpen { until },
        }
    }
}

/// A local ejection that starts or grows, as a tracker's
/// [observer](Tracker::with_observer) hears of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalEjection<'a> {
    /// The model.
    pub model: &'a str,
    /// Why.
    pub reason: EjectionReason,
    /// When it ends (on the tracker's clock).
    pub until: Duration,
    /// When the outcome that started or lengthened it was recorded.
    pub at: Duration,
}

/// Hears of every [`LocalEjection`]; it must not block.
pub type EjectionObserver = Arc<dyn Fn(LocalEjection<'_>) + Send + Sync>;

/// Another replica's ejection in force on this one (see [`Tracker::eject_remote`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RemoteEjection {
    /// Why the other replica ejected it.
    pub reason: EjectionReason,
    /// When this replica took it.
    pub since: Duration,
    /// When it ends (on this tracker's clock).
    pub until: Duration,
}

/// A model's tracked state, as reports show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ModelHealth {
    /// The circuit.
    pub circuit: CircuitState,
    /// The current server/connection and timeout streaks together (after decay).
    pub consecutive_failures: u32,
    /// The cooldown in force, if any: its class and end.
    pub cooldown: Option<(ErrorClass, Duration)>,
    /// Failures recorded in all (client faults, cancellations, budget
    /// refusals and internal errors excluded).
    pub failures: u64,
    /// Successes recorded in all.
    pub successes: u64,
    /// When the last failure happened.
    pub last_failure_at: Option<Duration>,
    /// Bad requests, content-policy refusals and context-window failures:
    /// counted here only, never against the model.
    pub client_faults: u64,
    /// Times ejected in all (escalating, quota and repeated authentication or
    /// not-found cooldowns, and circuit openings).
    pub ejections: u64,
    /// The ejection multiplier after decay (0 when never ejected or fully decayed).
    pub multiplier: u32,
    /// When the ejection in force (cooldown or a circuit not closed) began.
    pub ejected_since: Option<Duration>,
    /// Whether re-admission limits the permits in flight now: an ejection's
    /// cooldown has ended, the circuit is closed, no cooldown is in force and
    /// no success has been recorded since.
    pub readmitting: bool,
    /// Another replica's ejection in force here, if any (never counted in
    /// `ejections`, `cooldown` or `circuit`, which are this replica's own).
    pub remote: Option<RemoteEjection>,
}

/// Whether a failure of `class` says the model itself is unwell (and so
/// counts in the circuit's window).
#[must_use]
pub const fn counts_against_model(class: ErrorClass) -> bool {
    matches!(class, ErrorClass::Timeout | ErrorClass::ServerError | ErrorClass::Connection)
}

/// Whether a failure of `class` is the request's own fault (counted apart,
/// never against the model).
#[must_use]
pub const fn client_fault(class: ErrorClass) -> bool {
    matches!(class, ErrorClass::BadRequest | ErrorClass::ContentPolicy | ErrorClass::ContextWindowExceeded)
}

// ---- Sliding window ----------------------------------------------------------
// Shared with the retry budget: one implementation of "counters over the last
// `window`, in buckets".

/// Buckets in a sliding window.
const BUCKETS: usize = 10;
/// [`BUCKETS`] as the `u32` that `Duration` divides by.
const BUCKETS_U32: u32 = 10;

/// The width of one of a `window`'s buckets (at least 1 ns).
pub(crate) fn bucket_width(window: Duration) -> Duration {
    (window / BUCKETS_U32).max(Duration::from_nanos(1))
}

/// Counters of type `T` in [`BUCKETS`] buckets of a fixed width; a bucket is
/// live while its epoch is among the last [`BUCKETS`] ones (time going
/// backwards makes later buckets invisible, never negative).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ring<T> {
    /// `(epoch, counters)`; epoch = time / width.
    slots: [(u64, T); BUCKETS],
}

impl<T: Copy + Default> Default for Ring<T> {
    fn default() -> Self {
        Ring { slots: [(0, T::default()); BUCKETS] }
    }
}

impl<T: Copy + Default> Ring<T> {
    fn epoch(width: Duration, now: Duration) -> u64 {
        u64::try_from(now.as_nanos() / width.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The counters of the bucket holding `now`.
    pub(crate) fn at(&mut self, width: Duration, now: Duration) -> &mut T {
        let epoch = Self::epoch(width, now);
        let slot = &mut self.slots[usize::try_from(epoch % BUCKETS as u64).unwrap_or(0)];
        if slot.0 != epoch {
            *slot = (epoch, T::default());
        }
        &mut slot.1
    }

    /// The live buckets' counters at `now`.
    pub(crate) fn live(&self, width: Duration, now: Duration) -> impl Iterator<Item = &T> {
        let epoch = Self::epoch(width, now);
        let oldest = epoch.saturating_sub(BUCKETS as u64 - 1);
        self.slots.iter().filter(move |(e, _)| *e >= oldest && *e <= epoch).map(|(_, counters)| counters)
    }
}

// ---- Per-model state -----------------------------------------------------------

#[derive(Debug, Clone, Copy, Default)]
struct Calls {
    /// Successes, slow ones included.
    ok: u32,
    slow: u32,
    failed: u32,
}

#[derive(Debug, Clone, Copy, Default)]
enum Circuit {
    #[default]
    Closed,
    Open {
        /// When the circuit left closed.
        opened: Duration,
        until: Duration,
    },
    HalfOpen {
        /// When the circuit left closed.
        opened: Duration,
        /// Probe permits of this spell held (not yet answered, released or dropped).
        in_flight: u32,
        /// Probe successes of this spell.
        successes: u32,
    },
}

#[derive(Debug, Clone, Copy)]
struct Cooldown {
    class: ErrorClass,
    since: Duration,
    until: Duration,
}

#[derive(Debug, Clone, Copy, Default)]
struct Streaks {
    /// Server errors and connection failures.
    escalating: u32,
    timeouts: u32,
    /// Authentication and not-found failures.
    request_specific: u32,
}

/// Whether a failure may count an ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tally {
    /// Not yet counted for this failure.
    Pending,
    /// Counted once already.
    Done,
    /// Never (a forced failure while ejected).
    Off,
}

/// What a failure of a class does to the cooldown.
#[derive(Debug, Clone, Copy)]
enum Rule {
    Throttle,
    Quota,
    Escalating,
    Timeout,
    RequestSpecific,
}

impl Rule {
    /// `None` for classes that record nothing (client faults are handled first).
    const fn of(class: ErrorClass) -> Option<Rule> {
        match class {
            ErrorClass::RateLimited => Some(Rule::Throttle),
            ErrorClass::QuotaExhausted => Some(Rule::Quota),
            ErrorClass::ServerError | ErrorClass::Connection => Some(Rule::Escalating),
            ErrorClass::Timeout => Some(Rule::Timeout),
            ErrorClass::Authentication | ErrorClass::NotFound => Some(Rule::RequestSpecific),
            _ => None,
        }
    }
}

/// How long an ejection lasts.
#[derive(Debug, Clone, Copy)]
enum Pause {
    Long,
    Escalating,
}

/// Which slot, if any, a permit holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// None: an ordinary or forced permit.
    Ordinary,
    /// One of the half-open circuit's probe slots.
    Probe,
    /// One of re-admission's slots.
    Readmission,
}

/// The parts of a permit that settling looks at.
#[derive(Debug, Clone, Copy)]
struct Ticket {
    /// The circuit's generation when it was taken.
    generation: u64,
    /// The re-admission count when it was taken.
    spell: u64,
    admission: Admission,
    forced: bool,
    started: Duration,
}

/// A permit's standing when its outcome arrives.
#[derive(Debug, Clone, Copy)]
struct Standing {
    /// Taken in the current generation.
    current: bool,
    /// The slot it holds: a probe slot of the current half-open spell, a slot
    /// of the re-admission in force, or none (`Ordinary`).
    holds: Admission,
    forced: bool,
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// `latency`: the call's, judged against `slow_call_duration`.
    Success {
        latency: Duration,
    },
    Failure {
        class: ErrorClass,
        retry_after: Option<Duration>,
    },
}

#[derive(Debug, Clone, Copy, Default)]
struct State {
    /// Raised at every opening.
    generation: u64,
    circuit: Circuit,
    window: Ring<Calls>,
    // Invariant after `refresh(now)`: `until > now`.
    cooldown: Option<Cooldown>,
    streaks: Streaks,
    last_failure_at: Option<Duration>,
    /// The multiplier as of the last ejection (see `multiplier_at`).
    multiplier: u32,
    /// When the last ejection ended (or will end).
    ejection_end: Duration,
    ejections: u64,
    failures: u64,
    successes: u64,
    client_faults: u64,
    /// While re-admission is in force: its permits in flight.
    readmitting: Option<u32>,
    /// Raised at every start of re-admission.
    readmissions: u64,
    /// Another replica's ejection, taken by `eject_remote`.
    // Invariant after `refresh(now)`: `until > now`.
    remote: Option<RemoteEjection>,
    /// The end of the last remote ejection a forced success dismissed.
    remote_dismissed: Duration,
}

/// Whether one more probe fits beside `in_flight`.
const fn slots(in_flight: u32, probes: u32) -> Availability {
    if in_flight < probes { Availability::Probe } else { Availability::ProbesBusy }
}

impl State {
    /// Applies the time-based transitions due by `now`.
    /// (A half-open circuit has none: it waits for its probes and traffic.)
    fn refresh(&mut self, now: Duration) {
        if let Circuit::Open { opened, until } = self.circuit
            && now >= until
        {
            self.circuit = Circuit::HalfOpen { opened, in_flight: 0, successes: 0 };
        }
        if let Some(c) = self.cooldown
            && now >= c.until
        {
            self.cooldown = None;
            if c.class != ErrorClass::RateLimited {
                self.readmissions += 1;
                self.readmitting = Some(0);
            }
        }
        if self.remote.is_some_and(|r| now >= r.until) {
            self.remote = None;
        }
    }

    /// Needs `refresh(now)` first: the local state's answer, unless a
    /// remote ejection in force ends later.
    fn availability(&self, probes: u32) -> Availability {
        let local = self.local_availability(probes);
        match self.remote {
            Some(remote) if self.local_ejection().is_none_or(|(_, until)| until < remote.until) => {
                remote.reason.availability(remote.until)
            }
            _ => local,
        }
    }

    /// The local ejection in force that ends last: its reason and end
    /// (needs `refresh(now)` first). A half-open circuit is not one: it
    /// lets probes through.
    fn local_ejection(&self) -> Option<(EjectionReason, Duration)> {
        let cooldown = self.cooldown.map(|c| (EjectionReason::Cooldown(c.class), c.until));
        let circuit = match self.circuit {
            Circuit::Open { until, .. } => Some((EjectionReason::CircuitOpen, until)),
            _ => None,
        };
        match (cooldown, circuit) {
            (Some(c), Some(o)) => Some(if o.1 > c.1 { o } else { c }),
            (c, o) => c.or(o),
        }
    }

    /// Takes another replica's ejection (needs `refresh(now)` first);
    /// whether it changed anything.
    fn take_remote(&mut self, reason: EjectionReason, until: Duration, now: Duration) -> bool {
        let longer_here = self.local_ejection().is_some_and(|(_, local)| local >= until);
        if until <= now || until <= self.remote_dismissed || longer_here {
            return false;
        }
        match &mut self.remote {
            Some(remote) if remote.until >= until => false,
            Some(remote) => {
                remote.reason = reason;
                remote.until = until;
                true
            }
            None => {
                self.remote = Some(RemoteEjection { reason, since: now, until });
                true
            }
        }
    }

    /// Needs `refresh(now)` first.
    fn local_availability(&self, probes: u32) -> Availability {
        if let Some(c) = self.cooldown {
            return Availability::CoolingDown { class: c.class, until: c.until };
        }
        match (self.circuit, self.readmitting) {
            (Circuit::Closed, None) => Availability::Available,
            (Circuit::Closed, Some(in_flight)) | (Circuit::HalfOpen { in_flight, .. }, _) => slots(in_flight, probes),
            (Circuit::Open { until, .. }, _) => Availability::CircuitOpen { until },
        }
    }

    /// Admits a call (needs `refresh(now)` first): the slot it takes, or why
    /// not.
    fn admit(&mut self, probes: u32) -> Result<Admission, Availability> {
        match self.availability(probes) {
            Availability::Available => Ok(Admission::Ordinary),
            Availability::Probe => match (&mut self.circuit, &mut self.readmitting) {
                (Circuit::HalfOpen { in_flight, .. }, _) => {
                    *in_flight += 1;
                    Ok(Admission::Probe)
                }
                (_, in_flight) => {
                    *in_flight.get_or_insert(0) += 1;
                    Ok(Admission::Readmission)
                }
            },
            refused => Err(refused),
        }
    }

    /// Whether a re-admission permit taken in `spell` holds a slot of the
    /// re-admission in force.
    fn readmits(&self, spell: u64) -> bool {
        spell == self.readmissions && self.readmitting.is_some()
    }

    /// Gives a slot of the re-admission in force back.
    fn free_readmission(&mut self) {
        if let Some(in_flight) = &mut self.readmitting {
            *in_flight = in_flight.saturating_sub(1);
        }
    }

    /// Gives a probe slot of the current half-open spell back: a probe
    /// released, dropped, or answered without closing or opening the circuit.
    fn free_probe(&mut self) {
        if let Circuit::HalfOpen { in_flight, .. } = &mut self.circuit {
            *in_flight = in_flight.saturating_sub(1);
        }
    }

    /// Needs `refresh(now)` first.
    fn ejected(&self) -> bool {
        self.cooldown.is_some() || !matches!(self.circuit, Circuit::Closed)
    }

    /// Needs `refresh(now)` first.
    fn ejected_since(&self) -> Option<Duration> {
        let circuit = match self.circuit {
            Circuit::Closed => None,
            Circuit::Open { opened, .. } | Circuit::HalfOpen { opened, .. } => Some(opened),
        };
        [circuit, self.cooldown.map(|c| c.since), self.remote.map(|r| r.since)].into_iter().flatten().min()
    }

    fn multiplier_at(&self, c: &CooldownConfig, now: Duration) -> u32 {
        let Some(idle) = now.checked_sub(self.ejection_end) else {
            return self.multiplier;
        };
        let steps = idle.as_nanos().checked_div(c.multiplier_decay.as_nanos()).unwrap_or(u128::MAX);
        self.multiplier.saturating_sub(u32::try_from(steps).unwrap_or(u32::MAX))
    }

    fn streaks_at(&self, c: &CooldownConfig, now: Duration) -> Streaks {
        if self.last_failure_at.is_some_and(|at| now.saturating_sub(at) > c.streak_decay) {
            return Streaks::default();
        }
        self.streaks
    }

    /// The multiplier an ejection at `now` uses, counting the ejection once.
    fn tally(&mut self, c: &CooldownConfig, now: Duration, tally: &mut Tally) -> u32 {
        match *tally {
            Tally::Off => return self.multiplier_at(c, now).max(1),
            Tally::Pending => {
                *tally = Tally::Done;
                self.ejections += 1;
                self.multiplier = self.multiplier_at(c, now).saturating_add(1);
            }
            Tally::Done => {}
        }
        self.multiplier
    }

    fn open(&mut self, config: &TrackerConfig, opened: Duration, at: Duration, tally: &mut Tally) {
        self.tally(&config.cooldown, at, tally);
        let until = at.saturating_add(config.circuit.0.open_for);
        self.ejection_end = self.ejection_end.max(until);
        self.generation += 1;
        self.circuit = Circuit::Open { opened, until };
    }

    fn close(&mut self) {
        self.circuit = Circuit::Closed;
        self.window = Ring::default();
    }

    /// Starts (or lengthens) the cooldown; a longer or equal one stays.
    fn cool(&mut self, class: ErrorClass, until: Duration, now: Duration) {
        match &mut self.cooldown {
            Some(current) => {
                if until > current.until {
                    current.class = class;
                    current.until = until;
                }
            }
            // A zero-length one (`until == now`) is gone at the next refresh,
            // which every read does first.
            None => self.cooldown = Some(Cooldown { class, since: now, until }),
        }
    }

    fn eject(&mut self, c: &CooldownConfig, class: ErrorClass, pause: Pause, now: Duration, tally: &mut Tally) {
        let multiplier = self.tally(c, now, tally);
        let length = match pause {
            Pause::Long => c.long,
            Pause::Escalating => c.escalating_base.saturating_mul(multiplier).min(c.escalating_max),
        };
        let until = now.saturating_add(length);
        if *tally != Tally::Off {
            self.ejection_end = self.ejection_end.max(until);
        }
        self.cool(class, until, now);
    }

    /// Opens a closed circuit when the window says so.
    fn trip(&mut self, config: &TrackerConfig, now: Duration, tally: &mut Tally) {
        let s = &config.circuit.0;
        let calls = self.window.live(bucket_width(s.window), now).fold(Calls::default(), |sum, b| Calls {
            ok: sum.ok.saturating_add(b.ok),
            slow: sum.slow.saturating_add(b.slow),
            failed: sum.failed.saturating_add(b.failed),
        });
        let total = calls.ok.saturating_add(calls.failed);
        if total < s.min_requests {
            return;
        }
        let total = f64::from(total);
        if f64::from(calls.failed) >= s.failure_ratio * total || f64::from(calls.slow) >= s.slow_call_ratio * total {
            self.open(config, now, now, tally);
        }
    }

    /// Records the outcome; the local ejection it started or lengthened, if any.
    fn settle(
        &mut self,
        config: &TrackerConfig,
        ticket: Ticket,
        outcome: Outcome,
        now: Duration,
    ) -> Option<(EjectionReason, Duration)> {
        self.refresh(now);
        let current = ticket.generation == self.generation;
        let standing = Standing {
            current,
            holds: match ticket.admission {
                Admission::Probe if current && matches!(self.circuit, Circuit::HalfOpen { .. }) => Admission::Probe,
                Admission::Readmission if self.readmits(ticket.spell) => Admission::Readmission,
                _ => Admission::Ordinary,
            },
            forced: ticket.forced,
        };
        // Whatever the outcome, a re-admission permit's slot is free again.
        if standing.holds == Admission::Readmission {
            self.free_readmission();
        }
        match outcome {
            // A success never starts or lengthens an ejection.
            Outcome::Success { latency } => {
                self.succeed(config, standing, latency, now);
                None
            }
            Outcome::Failure { class, retry_after } => {
                let before = self.local_ejection().map(|(_, until)| until);
                self.fail(config, standing, class, retry_after, now);
                self.local_ejection().filter(|&(_, until)| before.is_none_or(|before| until > before))
            }
        }
    }

    fn succeed(&mut self, config: &TrackerConfig, standing: Standing, latency: Duration, now: Duration) {
        self.successes += 1;
        if standing.forced
            && let Some(remote) = self.remote.take()
        {
            self.remote_dismissed = self.remote_dismissed.max(remote.until);
        }
        self.streaks = Streaks::default();
        self.readmitting = None;
        if standing.holds == Admission::Probe {
            if let Circuit::HalfOpen { successes, .. } = &mut self.circuit {
                *successes += 1;
                if *successes >= config.circuit.0.half_open_probes {
                    self.close();
                    return;
                }
            }
            self.free_probe();
            return;
        }
        if standing.forced && self.ejected() {
            self.cooldown = None;
            self.ejection_end = self.ejection_end.min(now);
            self.close();
            return;
        }
        // A current permit that is not a probe and not forced-while-ejected
        // was taken while closed, and the circuit has not opened since.
        if standing.current {
            let s = &config.circuit.0;
            let calls = self.window.at(bucket_width(s.window), now);
            calls.ok = calls.ok.saturating_add(1);
            if latency >= s.slow_call_duration {
                calls.slow = calls.slow.saturating_add(1);
            }
            self.trip(config, now, &mut Tally::Pending);
        }
    }

    fn fail(
        &mut self,
        config: &TrackerConfig,
        standing: Standing,
        class: ErrorClass,
        retry_after: Option<Duration>,
        now: Duration,
    ) {
        if client_fault(class) {
            self.client_faults += 1;
            if standing.holds == Admission::Probe {
                self.free_probe();
            }
            return;
        }
        let Some(rule) = Rule::of(class) else {
            // Says nothing about the model: a release.
            if standing.holds == Admission::Probe {
                self.free_probe();
            }
            return;
        };
        let c = &config.cooldown;
        let quiet = standing.forced && self.ejected();
        let readmission = standing.holds == Admission::Readmission;
        let mut tally = if quiet { Tally::Off } else { Tally::Pending };
        self.failures += 1;
        self.streaks = self.streaks_at(c, now);
        self.last_failure_at = Some(now);
        match rule {
            Rule::Throttle => {
                let pause = retry_after.map_or(c.short, |r| r.min(c.max_retry_after));
                self.cool(class, now.saturating_add(pause), now);
            }
            Rule::Quota => self.eject(c, class, Pause::Long, now, &mut tally),
            // A re-admission permit's failure ejects whatever the streak.
            Rule::Escalating => {
                self.streaks.escalating = self.streaks.escalating.saturating_add(1);
                if readmission || self.streaks.escalating >= c.escalate_after {
                    self.eject(c, class, Pause::Escalating, now, &mut tally);
                }
            }
            Rule::Timeout => {
                self.streaks.timeouts = self.streaks.timeouts.saturating_add(1);
                if readmission || self.streaks.timeouts >= c.timeouts_to_eject {
                    self.eject(c, class, Pause::Escalating, now, &mut tally);
                }
            }
            Rule::RequestSpecific => {
                self.streaks.request_specific = self.streaks.request_specific.saturating_add(1);
                if self.streaks.request_specific >= c.request_specific_to_eject {
                    self.eject(c, class, Pause::Long, now, &mut tally);
                }
            }
        }
        let against = counts_against_model(class);
        if standing.holds == Admission::Probe {
            match self.circuit {
                Circuit::HalfOpen { opened, .. } if against => self.open(config, opened, now, &mut tally),
                _ => self.free_probe(),
            }
            return;
        }
        if against && standing.current && !quiet {
            let calls = self.window.at(bucket_width(config.circuit.0.window), now);
            calls.failed = calls.failed.saturating_add(1);
            self.trip(config, now, &mut tally);
        }
    }

    /// Needs `refresh(now)` first.
    fn health(&self, c: &CooldownConfig, now: Duration) -> ModelHealth {
        let streaks = self.streaks_at(c, now);
        ModelHealth {
            circuit: match self.circuit {
                Circuit::Closed => CircuitState::Closed,
                Circuit::Open { .. } => CircuitState::Open,
                Circuit::HalfOpen { .. } => CircuitState::HalfOpen,
            },
            consecutive_failures: streaks.escalating.saturating_add(streaks.timeouts),
            cooldown: self.cooldown.map(|c| (c.class, c.until)),
            failures: self.failures,
            successes: self.successes,
            last_failure_at: self.last_failure_at,
            client_faults: self.client_faults,
            ejections: self.ejections,
            multiplier: self.multiplier_at(c, now),
            ejected_since: self.ejected_since(),
            readmitting: self.readmitting.is_some()
                && self.cooldown.is_none()
                && matches!(self.circuit, Circuit::Closed),
            remote: self.remote,
        }
    }
}

// ---- Tracker -------------------------------------------------------------------

struct Inner {
    config: TrackerConfig,
    models: DashMap<Arc<str>, State, FxBuildHasher>,
    observer: Option<EjectionObserver>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("config", &self.config)
            .field("models", &self.models)
            .field("observed", &self.observer.is_some())
            .finish()
    }
}

/// Tracks every model's failures, cooldowns and circuit, shared by all
/// requests: cheap to clone (one `Arc`), thread-safe, and one model's update
/// locks only its shard. The rules it keeps (circuit breaker, ejections,
/// decay, re-admission after an ejection, forced permits) are stated as
/// invariants in the `tracker` module's source docs.
///
/// When an ejection's cooldown ends (not a rate limit's), the model is
/// re-admitted gradually: until a call on it succeeds, at most the circuit's
/// `half_open_probes` permits are in flight at once, each a
/// [probe](Permit::is_probe), and a failure of one of them against the model
/// ejects it again at once.
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
/// let permit = tracker.acquire("gpt-4o", t).map_err(|why| format!("not admitted: {why:?}"))?;
/// permit.failure(ErrorClass::RateLimited, Some(Duration::from_secs(2)), t);
/// assert!(!tracker.availability("gpt-4o", t).is_available());
/// assert_eq!(tracker.availability("gpt-4o", t + Duration::from_secs(2)), Availability::Available);
/// // A permit dropped unused records nothing.
/// drop(tracker.acquire("gpt-4o", t + Duration::from_secs(2)));
/// assert_eq!(tracker.health("gpt-4o", t + Duration::from_secs(2)).failures, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Tracker {
    inner: Arc<Inner>,
}

impl Tracker {
    /// A tracker that knows no failures yet.
    #[must_use]
    pub fn new(config: TrackerConfig) -> Tracker {
        Tracker { inner: Arc::new(Inner { config, models: DashMap::with_hasher(FxBuildHasher), observer: None }) }
    }

    /// A tracker that tells `observer` of every local ejection that starts
    /// or grows (see the module docs: never of a remote one, never while a
    /// model's state is locked). `observer` must not block.
    #[must_use]
    pub fn with_observer(config: TrackerConfig, observer: EjectionObserver) -> Tracker {
        Tracker {
            inner: Arc::new(Inner { config, models: DashMap::with_hasher(FxBuildHasher), observer: Some(observer) }),
        }
    }

    /// Takes another replica's ejection of `model` at `now`: out of
    /// rotation until `until` (on this tracker's clock) because of
    /// `reason`, unless a local ejection in force ends then or later. Not a
    /// local ejection (no count, multiplier or circuit change) and never
    /// told to the observer. Whether it changed anything: a shorter one
    /// than the remote ejection in force, one that already ended, or one
    /// no later than the one a forced success dismissed changes nothing.
    #[must_use = "whether it changed anything"]
    pub fn eject_remote(&self, model: &str, reason: EjectionReason, until: Duration, now: Duration) -> bool {
        self.with_state(model, now, |state| state.take_remote(reason, until, now)).1
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &TrackerConfig {
        &self.inner.config
    }

    /// `model`'s state as of `now` (read-only: transitions applied to a copy).
    fn view(&self, model: &str, now: Duration) -> State {
        let mut state = self.inner.models.get(model).map(|s| *s).unwrap_or_default();
        state.refresh(now);
        state
    }

    /// Whether `model` may take a request at `now` (read-only: reserves no
    /// probe slot; see [`Tracker::acquire`]).
    #[must_use]
    pub fn availability(&self, model: &str, now: Duration) -> Availability {
        self.view(model, now).availability(self.inner.config.circuit.0.half_open_probes)
    }

    /// Runs `f` on `model`'s state, refreshed to `now` (created when unknown),
    /// with the map's key.
    fn with_state<R>(&self, model: &str, now: Duration, f: impl FnOnce(&mut State) -> R) -> (Arc<str>, R) {
        let models = &self.inner.models;
        let mut entry = match models.get_mut(model) {
            Some(entry) => entry,
            None => models.entry(Arc::from(model)).or_default(),
        };
        let state = entry.value_mut();
        state.refresh(now);
        let out = f(state);
        (Arc::clone(entry.key()), out)
    }

    fn permit(&self, model: Arc<str>, ticket: Ticket) -> Permit {
        Permit { inner: Arc::clone(&self.inner), model, ticket, done: false }
    }

    /// Admits a call to `model` at `now`: `Ok` when it is
    /// [available](Availability::Available) or may take a
    /// [probe](Availability::Probe) (the permit then holds one of the
    /// half-open circuit's probe slots, or one of re-admission's, until it is
    /// consumed, released or dropped); `Err` with the reason otherwise.
    pub fn acquire(&self, model: &str, now: Duration) -> Result<Permit, Availability> {
        let probes = self.inner.config.circuit.0.half_open_probes;
        let (key, admitted) = self.with_state(model, now, |state| {
            let admission = state.admit(probes)?;
            Ok(Ticket {
                generation: state.generation,
                spell: state.readmissions,
                admission,
                forced: false,
                started: now,
            })
        });
        Ok(self.permit(key, admitted?))
    }

    /// Admits a call to `model` at `now` whatever its state (panic mode:
    /// every candidate is ejected). The permit is [forced](Permit::is_forced),
    /// never a probe. Its success ends the cooldown (no re-admission follows),
    /// closes an open or half-open circuit and ends re-admission; its failure
    /// while an ejection is in force counts in the totals and streaks but is
    /// no new ejection (no multiplier or ejection count rise, no window entry,
    /// its cooldown only replaces a shorter one).
    pub fn acquire_forced(&self, model: &str, now: Duration) -> Permit {
        let (key, ticket) = self.with_state(model, now, |state| Ticket {
            generation: state.generation,
            spell: state.readmissions,
            admission: Admission::Ordinary,
            forced: true,
            started: now,
        });
        self.permit(key, ticket)
    }

    /// When the ejection of `model` in force at `now` (a cooldown, or a circuit
    /// not closed) began; `None` when it is not ejected.
    #[must_use]
    pub fn ejected_since(&self, model: &str, now: Duration) -> Option<Duration> {
        self.view(model, now).ejected_since()
    }

    /// `model`'s circuit state at `now`.
    #[must_use]
    pub fn circuit(&self, model: &str, now: Duration) -> CircuitState {
        self.health(model, now).circuit
    }

    /// `model`'s tracked state at `now` (a model never seen is healthy).
    #[must_use]
    pub fn health(&self, model: &str, now: Duration) -> ModelHealth {
        self.view(model, now).health(&self.inner.config.cooldown, now)
    }

    /// Every tracked model's state at `now`, sorted by id.
    #[must_use]
    pub fn all(&self, now: Duration) -> Vec<(String, ModelHealth)> {
        let config = &self.inner.config;
        let mut out: Vec<(String, ModelHealth)> = self
            .inner
            .models
            .iter()
            .map(|entry| {
                let mut state = *entry.value();
                state.refresh(now);
                (entry.key().to_string(), state.health(&config.cooldown, now))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// The right to make one call to a model, from [`Tracker::acquire`] or
/// [`Tracker::acquire_forced`].
///
/// Consumed by recording the call's outcome. Released or dropped, it counts
/// as neither success nor failure and gives its probe slot back (the
/// half-open circuit's or re-admission's), so a caller future dropped at any
/// `.await` leaks nothing. `Send + Sync + 'static`: it can move into a
/// stream's settlement.
#[must_use = "a permit records the call's outcome; dropping it records nothing"]
pub struct Permit {
    inner: Arc<Inner>,
    model: Arc<str>,
    ticket: Ticket,
    done: bool,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("model", &self.model)
            .field("admission", &self.ticket.admission)
            .field("forced", &self.ticket.forced)
            .field("generation", &self.ticket.generation)
            .field("spell", &self.ticket.spell)
            .field("started", &self.ticket.started)
            .finish_non_exhaustive()
    }
}

impl Permit {
    /// The model admitted.
    #[must_use]
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Whether the permit holds a probe slot: one of the half-open
    /// circuit's, or one of re-admission's.
    #[must_use]
    pub fn is_probe(&self) -> bool {
        self.ticket.admission != Admission::Ordinary
    }

    /// Whether it came from [`Tracker::acquire_forced`].
    #[must_use]
    pub fn is_forced(&self) -> bool {
        self.ticket.forced
    }

    /// When it was acquired (the start of the call, for its latency).
    #[must_use]
    pub fn started(&self) -> Duration {
        self.ticket.started
    }

    fn settle(&mut self, outcome: Outcome, now: Duration) {
        self.done = true;
        let inner = &self.inner;
        let grown = {
            let mut state = inner.models.entry(Arc::clone(&self.model)).or_default();
            state.settle(&inner.config, self.ticket, outcome, now)
        };
        // The model's shard is unlocked: the observer may look at the tracker.
        if let (Some(observer), Some((reason, until))) = (&inner.observer, grown) {
            observer(LocalEjection { model: &self.model, reason, until, at: now });
        }
    }

    /// Records a success at `now`; slow when its latency, `now - started()`,
    /// is at least the circuit's `slow_call_duration`.
    pub fn success(mut self, now: Duration) {
        let latency = now.saturating_sub(self.ticket.started);
        self.settle(Outcome::Success { latency }, now);
    }

    /// Records a success at `now` whose latency, judged against the
    /// circuit's `slow_call_duration`, is `latency` rather than
    /// `now - started()`. A stream passes its time to first token: its
    /// permit lasts the whole stream, but a long answer streamed promptly
    /// is not a slow call.
    pub fn success_with_latency(mut self, now: Duration, latency: Duration) {
        self.settle(Outcome::Success { latency }, now);
    }

    /// Records a failure of `class` at `now` (`retry_after`: what the provider
    /// asked for, honoured for rate limits).
    pub fn failure(mut self, class: ErrorClass, retry_after: Option<Duration>, now: Duration) {
        self.settle(Outcome::Failure { class, retry_after }, now);
    }

    /// Gives the permit back unused: neither success nor failure (the
    /// request's own deadline ran out, a budget refused it, the client left).
    pub fn release(self) {
        // Dropping `self` here gives the slot back (see `Drop`).
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.done || self.ticket.admission == Admission::Ordinary {
            return;
        }
        let Some(mut state) = self.inner.models.get_mut(&*self.model) else {
            return;
        };
        if self.ticket.admission == Admission::Probe {
            if state.generation == self.ticket.generation {
                state.free_probe();
            }
        } else if state.readmits(self.ticket.spell) {
            state.free_readmission();
        }
    }
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
