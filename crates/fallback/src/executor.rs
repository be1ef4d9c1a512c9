//! The async executor: walk the chain, retry where it pays, record everything.

use std::{borrow::Borrow, fmt, future::Future, time::Duration};

use modelfleet_errors::{AttemptCtx, Classify, ErrorClass, RetryPolicy, Timer, sanitize};
use modelfleet_registry::ModelSpec;
use modelfleet_selector::{LiveSignals, Requirements, Weights};
use serde::Serialize;

use crate::{Availability, FallbackStrategy, Tracker, chain::larger_window};

/// The executor's settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExecutorConfig {
    /// Attempts per model, backoff, jitter and the total deadline.
    pub retry: RetryPolicy,
    /// How candidates are ordered.
    pub strategy: FallbackStrategy,
    /// Score weights for the performance strategy.
    pub weights: Weights,
}

/// One call to one model, as it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    /// The model called.
    pub model: String,
    /// `None` when the call succeeded.
    pub error: Option<ErrorClass>,
    /// The sanitized error message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How long the call took.
    pub latency: Duration,
    /// Whether it was a half-open circuit's probe.
    pub probe: bool,
}

/// A request served.
#[derive(Debug, Clone)]
pub struct Executed<'a, T> {
    /// The model's answer.
    pub value: T,
    /// The model that served.
    pub model: &'a ModelSpec,
    /// Every attempt, the successful last one included.
    pub attempts: Vec<Attempt>,
    /// Whether a model other than the first choice served.
    pub fell_back: bool,
}

/// Why the executor stopped without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The last error may not be retried or fall back (bad request, cancelled…).
    NotRecoverable,
    /// Every candidate was tried as often as the policy allows.
    Exhausted,
    /// The deadline came first.
    DeadlineExceeded,
}

/// The request was not served.
#[derive(Debug)]
#[non_exhaustive]
pub enum ExecuteError<E> {
    /// No model was eligible or available to begin with.
    NoCandidates {
        /// Why (the selector's answer, or the models that were unavailable).
        reason: String,
    },
    /// Every attempt failed.
    Failed {
        /// The last attempt's error.
        last: E,
        /// Why no further attempt was made.
        reason: StopReason,
        /// Every attempt, in order.
        attempts: Vec<Attempt>,
    },
}

impl<E> ExecuteError<E> {
    /// Every attempt made (none when there were no candidates).
    #[must_use]
    pub fn attempts(&self) -> &[Attempt] {
        match self {
            ExecuteError::NoCandidates { .. } => &[],
            ExecuteError::Failed { attempts, .. } => attempts,
        }
    }
}

impl<E> fmt::Display for ExecuteError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecuteError::NoCandidates { reason } => write!(f, "no model can take the request: {reason}"),
            ExecuteError::Failed { reason, attempts, .. } => {
                let why = match reason {
                    StopReason::NotRecoverable => "the error cannot be retried or fall back",
                    StopReason::Exhausted => "every candidate failed",
                    StopReason::DeadlineExceeded => "the deadline passed",
                };
                write!(f, "{why} after {} attempt(s): ", attempts.len())?;
                let tried: Vec<String> = attempts
                    .iter()
                    .map(|a| match (&a.error, &a.message) {
                        (Some(class), Some(msg)) if !msg.is_empty() => format!("{} ({class}: {msg})", a.model),
                        (Some(class), _) => format!("{} ({class})", a.model),
                        (None, _) => format!("{} (ok)", a.model),
                    })
                    .collect();
                f.write_str(&tried.join(", "))
            }
        }
    }
}

impl<E: fmt::Debug> std::error::Error for ExecuteError<E> {}

/// The order [`execute`] tries the eligible models in. Models that do not
/// meet the requirements are never tried, whatever the order names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order<'a> {
    /// The selector's ranking.
    #[default]
    Ranked,
    /// Exactly these models, in this order (a route's or a model's fallbacks).
    Explicit(&'a [String]),
    /// This model first, then the rest of the ranking (a request naming a model).
    Preferred(&'a str),
}

/// What [`execute`] needs besides the call.
#[derive(Debug)]
pub struct Fleet<'r, M, S, Tm> {
    /// The catalog's models.
    pub models: &'r [M],
    /// Live signals for scoring.
    pub signals: &'r S,
    /// Failure tracking shared by all requests.
    pub tracker: &'r Tracker,
    /// The clock and sleep (the tracker's `now` is this timer's `now`).
    pub timer: &'r Tm,
}

/// Serves a request: ranks the eligible models (in the given [`Order`]),
/// calls them through `call`, and on failure moves down the chain.
///
/// - A non-retryable error is never retried on the same model; a class that
///   may not fall back (bad request, cancelled, internal) ends the request.
/// - It never sleeps for backoff while another available model can take the
///   request: a transient failure sends the request to the next model at
///   once, and the failed model is retried (per the retry policy, after its
///   backoff and any cooldown) only when nobody else is left.
/// - A context-window failure keeps only models with a larger window.
/// - One total deadline covers everything; each call is told the time left.
/// - Every outcome is recorded in the tracker; every attempt is reported.
pub async fn execute<'a, M, S, Tm, T, E, F, Fut>(
    fleet: Fleet<'a, M, S, Tm>,
    requirements: &Requirements,
    order: Order<'_>,
    config: &ExecutorConfig,
    rng: &mut fastrand::Rng,
    mut call: F,
) -> Result<Executed<'a, T>, ExecuteError<E>>
where
    M: Borrow<ModelSpec>,
    S: LiveSignals,
    Tm: Timer,
    E: Classify + fmt::Display,
    F: FnMut(&'a ModelSpec, AttemptCtx) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let Fleet { models, signals, tracker, timer } = fleet;
    let start = timer.now();
    let deadline = config.retry.config().deadline;
    let remaining = |now: Duration| deadline.map(|d| d.saturating_sub(now.saturating_sub(start)));

    let selector = config.strategy.selector_config(config.weights);
    let ranked = modelfleet_selector::rank(models, requirements, signals, &selector);
    let queue: Vec<&'a ModelSpec> = match order {
        Order::Explicit(ids) => {
            ids.iter().filter_map(|id| ranked.iter().find(|r| r.model.id == *id)).map(|r| r.model).collect()
        }
        Order::Ranked => ranked.iter().map(|r| r.model).collect(),
        Order::Preferred(id) => {
            let first = ranked.iter().find(|r| r.model.id == id).map(|r| r.model);
            first.into_iter().chain(ranked.iter().map(|r| r.model).filter(|m| m.id != id)).collect()
        }
    };
    if queue.is_empty() {
        let reason = match modelfleet_selector::select(models, requirements, signals, &selector) {
            Err(err) => err.to_string(),
            Ok(_) => "no model of the explicit fallback list is eligible".to_owned(),
        };
        return Err(ExecuteError::NoCandidates { reason });
    }
    let mut walk = Walk {
        first_choice: queue[0].id.as_str(),
        queue,
        waiting: Vec::new(),
        attempts: Vec::new(),
        tries: Vec::new(),
    };
    let mut last: Option<E> = None;

    loop {
        let now = timer.now();
        if remaining(now) == Some(Duration::ZERO) {
            return Err(stop(last, StopReason::DeadlineExceeded, walk.attempts, walk.queue.len()));
        }
        let (model, probe) = match walk.next(tracker, now) {
            Next::Ready(model, probe) => (model, probe),
            Next::Wait(model, ready) => {
                let wait = ready.saturating_sub(now);
                if remaining(now).is_some_and(|left| wait >= left) {
                    return Err(stop(last, StopReason::DeadlineExceeded, walk.attempts, walk.queue.len()));
                }
                if !wait.is_zero() {
                    timer.sleep(wait).await;
                }
                walk.queue.insert(0, model);
                continue;
            }
            Next::Nobody(unavailable) if walk.attempts.is_empty() => {
                let reason = format!("every eligible model is unavailable: {}", unavailable.join(", "));
                return Err(ExecuteError::NoCandidates { reason });
            }
            Next::Nobody(_) => return Err(stop(last, StopReason::Exhausted, walk.attempts, 0)),
        };

        let began = timer.now();
        let ctx = AttemptCtx { attempt: walk.count_try(&model.id), remaining: remaining(began) };
        let result = call(model, ctx).await;
        let ended = timer.now();
        let latency = ended.saturating_sub(began);
        match result {
            Ok(value) => {
                tracker.record_success(&model.id, ended);
                walk.attempts.push(Attempt { model: model.id.clone(), error: None, message: None, latency, probe });
                let fell_back = model.id != walk.first_choice;
                return Ok(Executed { value, model, attempts: walk.attempts, fell_back });
            }
            Err(error) => {
                let class = error.class();
                tracker.record_failure(&model.id, class, error.retry_after(), ended);
                let message = Some(sanitize(&error.to_string()).into_owned());
                walk.attempts.push(Attempt { model: model.id.clone(), error: Some(class), message, latency, probe });
                if !class.fallback() && !class.retry_same_model() {
                    return Err(stop(Some(error), StopReason::NotRecoverable, walk.attempts, walk.queue.len()));
                }
                walk.after_failure(model, class, error.retry_after(), ended, tracker, &config.retry, rng);
                last = Some(error);
            }
        }
    }
}

/// The state of one request's walk down the chain.
struct Walk<'a> {
    first_choice: &'a str,
    /// Models not tried yet (or due for their retry), in chain order.
    queue: Vec<&'a ModelSpec>,
    /// Models waiting for a retry: (model, ready at).
    waiting: Vec<(&'a ModelSpec, Duration)>,
    attempts: Vec<Attempt>,
    /// Attempts made per model.
    tries: Vec<(&'a str, u32)>,
}

enum Next<'a> {
    /// Call this model now (the flag: as a half-open probe).
    Ready(&'a ModelSpec, bool),
    /// Nobody is available; this model's retry is due at the given time.
    Wait(&'a ModelSpec, Duration),
    /// Nobody is available and no retry is pending (why, per model).
    Nobody(Vec<String>),
}

impl<'a> Walk<'a> {
    /// The next model available now, in chain order; else the retry due first.
    fn next(&mut self, tracker: &Tracker, now: Duration) -> Next<'a> {
        let mut unavailable = Vec::new();
        while !self.queue.is_empty() {
            let model = self.queue.remove(0);
            let availability = tracker.acquire(&model.id, now);
            if availability.is_available() {
                return Next::Ready(model, availability == Availability::Probe);
            }
            unavailable.push(format!("{} ({})", model.id, describe(availability)));
        }
        self.waiting.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.id.cmp(&b.0.id)));
        if self.waiting.is_empty() {
            return Next::Nobody(unavailable);
        }
        let (model, ready) = self.waiting.remove(0);
        Next::Wait(model, ready)
    }

    /// Counts one more attempt on `id`; returns its number (1 for the first).
    fn count_try(&mut self, id: &'a str) -> u32 {
        if let Some((_, n)) = self.tries.iter_mut().find(|(m, _)| *m == id) {
            *n += 1;
            return *n;
        }
        self.tries.push((id, 1));
        1
    }

    /// After `model` failed with `class`: narrow the chain after a
    /// context-window failure, and schedule a retry when the class and the
    /// policy allow one (after the backoff, and not before the cooldown ends).
    #[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
    fn after_failure(
        &mut self,
        model: &'a ModelSpec,
        class: ErrorClass,
        retry_after: Option<Duration>,
        now: Duration,
        tracker: &Tracker,
        policy: &RetryPolicy,
        rng: &mut fastrand::Rng,
    ) {
        if class == ErrorClass::ContextWindowExceeded {
            self.queue.retain(|m| larger_window(m, model));
            self.waiting.retain(|(m, _)| larger_window(m, model));
        }
        if !class.retry_same_model() {
            return;
        }
        let made = self.tries.iter().find(|(id, _)| *id == model.id).map_or(1, |(_, n)| *n);
        if let Ok(delay) = policy.next_delay(made, class, retry_after, rng) {
            let cooldown_end = match tracker.availability(&model.id, now) {
                Availability::CoolingDown { until, .. } | Availability::CircuitOpen { until } => until,
                _ => now,
            };
            self.waiting.push((model, now.saturating_add(delay).max(cooldown_end)));
        }
    }
}

fn stop<E>(last: Option<E>, reason: StopReason, attempts: Vec<Attempt>, left: usize) -> ExecuteError<E> {
    match last {
        Some(last) => ExecuteError::Failed { last, reason, attempts },
        None => ExecuteError::NoCandidates {
            reason: format!("the deadline passed before any attempt ({left} candidate(s) left)"),
        },
    }
}

fn describe(availability: Availability) -> String {
    match availability {
        Availability::CoolingDown { class, .. } => format!("cooling down after {class}"),
        Availability::CircuitOpen { .. } => "circuit open".to_owned(),
        Availability::ProbesBusy => "circuit half-open, probes busy".to_owned(),
        Availability::Available | Availability::Probe => "available".to_owned(),
    }
}
