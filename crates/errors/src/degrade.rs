//! Degraded mode after repeated failures, recovery after repeated successes.

use std::sync::{Mutex, PoisonError};

/// The settings of a [`DegradationTracker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DegradationConfig {
    /// Consecutive failures that switch to degraded mode (at least 1).
    pub failure_threshold: u32,
    /// Consecutive successes, while degraded, that switch back (at least 1).
    pub recovery_threshold: u32,
    /// When false the tracker counts but never degrades.
    pub enabled: bool,
}

impl Default for DegradationConfig {
    /// Degraded after 5 consecutive failures, recovered after 10 consecutive successes.
    fn default() -> Self {
        DegradationConfig { failure_threshold: 5, recovery_threshold: 10, enabled: true }
    }
}

/// A change of mode, returned by the call that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Normal → degraded.
    Degraded,
    /// Degraded → normal.
    Recovered,
}

/// A snapshot of a tracker's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DegradationState {
    /// Whether the tracked component is in degraded mode.
    pub degraded: bool,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Successes since the last failure.
    pub consecutive_successes: u32,
    /// How many times the mode has changed.
    pub transitions: u64,
}

/// Tracks a component's recent outcomes and says when to bypass it.
///
/// Thread-safe; each `record_*` call returns the [`Transition`] it caused, so
/// the caller can log it or count it exactly once.
///
/// ```
/// use modelfleet_errors::{DegradationConfig, DegradationTracker, Transition};
///
/// let tracker = DegradationTracker::new(DegradationConfig { failure_threshold: 2, recovery_threshold: 1, enabled: true });
/// assert_eq!(tracker.record_failure(), None);
/// assert_eq!(tracker.record_failure(), Some(Transition::Degraded));
/// assert!(tracker.is_degraded());
/// assert_eq!(tracker.record_success(), Some(Transition::Recovered));
/// assert!(!tracker.is_degraded());
/// ```
#[derive(Debug, Default)]
pub struct DegradationTracker {
    config: DegradationConfig,
    state: Mutex<DegradationState>,
}

impl DegradationTracker {
    /// A tracker in normal mode. Thresholds of 0 are treated as 1.
    #[must_use]
    pub fn new(config: DegradationConfig) -> DegradationTracker {
        let config = DegradationConfig {
            failure_threshold: config.failure_threshold.max(1),
            recovery_threshold: config.recovery_threshold.max(1),
            ..config
        };
        DegradationTracker { config, state: Mutex::default() }
    }

    /// Records a failure; returns `Some(Degraded)` when it crossed the threshold.
    pub fn record_failure(&self) -> Option<Transition> {
        let mut state = self.lock();
        state.consecutive_successes = 0;
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        if self.config.enabled && !state.degraded && state.consecutive_failures >= self.config.failure_threshold {
            state.degraded = true;
            state.transitions += 1;
            return Some(Transition::Degraded);
        }
        None
    }

    /// Records a success; returns `Some(Recovered)` when it ended degraded mode.
    pub fn record_success(&self) -> Option<Transition> {
        let mut state = self.lock();
        state.consecutive_failures = 0;
        state.consecutive_successes = state.consecutive_successes.saturating_add(1);
        if state.degraded && state.consecutive_successes >= self.config.recovery_threshold {
            state.degraded = false;
            state.transitions += 1;
            return Some(Transition::Recovered);
        }
        None
    }

    /// Whether the component should be bypassed now.
    #[must_use]
    pub fn is_degraded(&self) -> bool {
        self.lock().degraded
    }

    /// The counters now.
    #[must_use]
    pub fn state(&self) -> DegradationState {
        *self.lock()
    }

    /// The settings in force (thresholds already raised to at least 1).
    #[must_use]
    pub fn config(&self) -> DegradationConfig {
        self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DegradationState> {
        // The state is plain counters, valid after any panic mid-update.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn degrades_after_five_and_recovers_after_ten_by_default() {
        let tracker = DegradationTracker::new(DegradationConfig::default());
        for _ in 0..4 {
            assert_eq!(tracker.record_failure(), None);
        }
        assert!(!tracker.is_degraded());
        assert_eq!(tracker.record_failure(), Some(Transition::Degraded));
        assert!(tracker.is_degraded());
        // Further failures do not transition again.
        assert_eq!(tracker.record_failure(), None);
        for _ in 0..9 {
            assert_eq!(tracker.record_success(), None);
        }
        assert!(tracker.is_degraded());
        assert_eq!(tracker.record_success(), Some(Transition::Recovered));
        assert!(!tracker.is_degraded());
        assert_eq!(tracker.state().transitions, 2);
    }

    #[test]
    fn a_failure_resets_the_recovery_count() {
        let tracker =
            DegradationTracker::new(DegradationConfig { failure_threshold: 1, recovery_threshold: 3, enabled: true });
        tracker.record_failure();
        tracker.record_success();
        tracker.record_success();
        tracker.record_failure();
        tracker.record_success();
        tracker.record_success();
        assert!(tracker.is_degraded());
        assert_eq!(tracker.record_success(), Some(Transition::Recovered));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let tracker = DegradationTracker::new(DegradationConfig::default());
        for _ in 0..4 {
            tracker.record_failure();
        }
        tracker.record_success();
        for _ in 0..4 {
            assert_eq!(tracker.record_failure(), None);
        }
        assert!(!tracker.is_degraded());
    }

    #[test]
    fn disabled_never_degrades_but_counts() {
        let tracker = DegradationTracker::new(DegradationConfig { enabled: false, ..DegradationConfig::default() });
        for _ in 0..100 {
            assert_eq!(tracker.record_failure(), None);
        }
        assert!(!tracker.is_degraded());
        assert_eq!(tracker.state().consecutive_failures, 100);
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        let tracker =
            DegradationTracker::new(DegradationConfig { failure_threshold: 0, recovery_threshold: 0, enabled: true });
        assert_eq!(tracker.config().failure_threshold, 1);
        assert_eq!(tracker.record_failure(), Some(Transition::Degraded));
        assert_eq!(tracker.record_success(), Some(Transition::Recovered));
    }

    #[test]
    fn concurrent_failures_transition_exactly_once() {
        let tracker = Arc::new(DegradationTracker::new(DegradationConfig::default()));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let tracker = Arc::clone(&tracker);
                std::thread::spawn(move || (0..100).filter(|_| tracker.record_failure().is_some()).count())
            })
            .collect();
        let transitions: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(transitions, 1);
        assert_eq!(tracker.state().consecutive_failures, 800);
        assert!(tracker.is_degraded());
    }
}
