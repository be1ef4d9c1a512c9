//! The async executor: walk the candidates, retry where it pays, hedge
//! when asked, record everything.

use std::{borrow::Borrow, fmt, future::Future, pin::pin, task::Poll, time::Duration};

use modelfleet_errors::{AttemptCtx, Classify, ErrorClass, RetryPolicy, Timer};
use modelfleet_registry::{Capability, ModelSpec};
use modelfleet_selector::{LiveSignals, Locality, Ranked, Requirements, SelectorConfig, Strategy, Weights};
use serde::Serialize;

use crate::{Availability, Permit, RetryBudget, Tracker};

/// The executor's settings (the same for every request).
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutorConfig {
    /// Attempts per model, backoff, jitter and the total deadline.
    pub retry: RetryPolicy,
    /// Score weights for the weighted strategies.
    pub weights: Weights,
    /// The most attempts one request makes, retries and hedges included.
    pub max_attempts_per_request: u32,
    /// The most of a request's candidates that ejections may take out at
    /// once, in percent: beyond it, the least recently ejected candidates
    /// are tried anyway (Envoy's panic threshold).
    pub max_ejected_percent: u8,
}

impl Default for ExecutorConfig {
    /// The default retry policy, default weights, 6 attempts, 50%.
    fn default() -> Self {
        ExecutorConfig {
            retry: RetryPolicy::default(),
            weights: Weights::default(),
            max_attempts_per_request: 6,
            max_ejected_percent: 50,
        }
    }
}

/// When to start a second attempt while the first has not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HedgeAfter {
    /// After this long.
    Fixed(Duration),
    /// After the first model's p95 latency (no hedge while it is unknown).
    P95,
}

impl HedgeAfter {
    /// How long to wait on `model` before hedging, if at all.
    fn delay<S: LiveSignals>(self, signals: &S, model: &ModelSpec) -> Option<Duration> {
        match self {
            HedgeAfter::Fixed(delay) => Some(delay),
            HedgeAfter::P95 => signals
                .signals(&model.id)
                .latency_p95_ms
                .filter(|ms| ms.is_finite() && *ms > 0.0)
                .and_then(|ms| Duration::try_from_secs_f64(ms / 1_000.0).ok()),
        }
    }
}

/// How one request is served: the order, the strategy, hedging, and who
/// records a success.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Plan<'a> {
    /// The order candidates are tried in.
    pub order: Order<'a>,
    /// How eligible models are ranked.
    pub strategy: Strategy,
    /// Hedging (non-streamed requests only; ignored when
    /// `settle_by_caller`).
    pub hedge: Option<HedgeAfter>,
    /// The caller records the outcome of the attempt that succeeded (a
    /// stream settles when it ends, not when it opens): the executor then
    /// hands the attempt's [`Permit`] back in [`Executed::permit`] instead
    /// of recording a success.
    pub settle_by_caller: bool,
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
    /// Whether it was a hedge (started while an earlier attempt was still running).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hedge: bool,
    /// Whether an ejected model was tried anyway (too many of the
    /// request's candidates were ejected).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
}

/// A request served.
#[derive(Debug)]
pub struct Executed<'a, T> {
    /// The model's answer.
    pub value: T,
    /// The model that served.
    pub model: &'a ModelSpec,
    /// Every attempt, the successful one included (a hedge race's loser
    /// is listed as cancelled).
    pub attempts: Vec<Attempt>,
    /// Whether the first choice failed or was skipped (cooling down,
    /// ejected, busy) and another model served. A model absent from the
    /// ranking (not eligible) is not a first choice.
    pub fell_back: bool,
    /// The successful attempt's permit, when the plan lets the caller
    /// settle it ([`Plan::settle_by_caller`]).
    pub permit: Option<Permit>,
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
    /// The request made as many attempts as one request may.
    AttemptLimit,
}

/// The request was not served.
#[derive(Debug)]
#[non_exhaustive]
pub enum ExecuteError<E> {
    /// No model meets the requirements (or the named model does not).
    NoneEligible {
        /// Why (the selector's answer, or the named model's rejections).
        reason: String,
    },
    /// Models meet the requirements, but none could take the request
    /// within its deadline (cooling down, circuits open, probes busy).
    Unavailable {
        /// Every candidate and why it is out.
        reason: String,
        /// When the earliest of them is back, from now.
        retry_after: Option<Duration>,
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
    /// Every attempt made (none when no model could be tried).
    #[must_use]
    pub fn attempts(&self) -> &[Attempt] {
        match self {
            ExecuteError::NoneEligible { .. } | ExecuteError::Unavailable { .. } => &[],
            ExecuteError::Failed { attempts, .. } => attempts,
        }
    }
}

impl<E> fmt::Display for ExecuteError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecuteError::NoneEligible { reason } => write!(f, "no model can take the request: {reason}"),
            ExecuteError::Unavailable { reason, .. } => {
                write!(f, "no model can take the request within its deadline: {reason}")
            }
            ExecuteError::Failed { reason, attempts, .. } => {
                let why = match reason {
                    StopReason::NotRecoverable => "the error cannot be retried or fall back",
                    StopReason::Exhausted => "every candidate failed",
                    StopReason::DeadlineExceeded => "the deadline passed",
                    StopReason::AttemptLimit => "the request made as many attempts as one request may",
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
    /// Exactly these models, in this order (a route's fallbacks); those
    /// that do not meet the requirements are skipped.
    Explicit(&'a [String]),
    /// A model the request names first: it must meet the requirements, or
    /// the request is refused saying why (never a silent substitute). Then
    /// its configured `fallbacks` in order when it has some, else its
    /// implied fallbacks by rank: the models that can do what it does (see
    /// [`implied_fallback`]).
    Named {
        /// The model named.
        model: &'a str,
        /// Its configured fallbacks, if any.
        fallbacks: Option<&'a [String]>,
    },
}

/// What [`execute`] serves a request from, besides the call.
#[derive(Debug)]
pub struct Pool<'r, M, S, Tm> {
    /// The catalog's models.
    pub models: &'r [M],
    /// Live signals for scoring.
    pub signals: &'r S,
    /// Failure tracking shared by all requests.
    pub tracker: &'r Tracker,
    /// Retries per provider, shared by all requests (`None`: unlimited
    /// within the retry policy).
    pub retry_budget: Option<&'r RetryBudget>,
    /// Providers that only simulate: never an implied fallback for a
    /// model of another provider.
    pub simulated_providers: &'r [String],
    /// The clock and sleep (the tracker's `now` is this timer's `now`).
    pub timer: &'r Tm,
}

/// Why `candidate` may not stand in for `named` when a request names
/// `named` without explicit fallbacks, or `None` when it may: it must share
/// one of `named`'s categories and (when `named` lists any) one of its
/// languages, run where `named` runs (local or cloud) unless the request
/// says `locality = "any"` explicitly, and not be simulated unless `named`
/// is. An embedding model's stand-in must be the same model served
/// elsewhere (the same upstream name and a known, equal vector length):
/// vectors of another model, even of the same length, do not match an
/// index built with the named one. (A configured `fallbacks` list may name
/// other models of the same length: the operator's choice.)
/// The requirements' own rules (capabilities the request uses, a
/// window that fits, price…) apply on top, as for every candidate.
#[must_use]
pub fn implied_fallback(
    named: &ModelSpec,
    candidate: &ModelSpec,
    requirements: &Requirements,
    simulated_providers: &[String],
) -> Option<&'static str> {
    if candidate.id == named.id {
        return Some("it is the named model");
    }
    if !named.categories.is_empty() && !candidate.categories.iter().any(|c| named.categories.contains(c)) {
        return Some("shares none of the named model's categories");
    }
    if !named.languages.is_empty() && !candidate.languages.iter().any(|l| named.languages.contains(l)) {
        return Some("speaks none of the named model's languages");
    }
    if requirements.locality != Some(Locality::Any) && candidate.local != named.local {
        return Some(if named.local {
            "not local like the named model"
        } else {
            "not a cloud model like the named model"
        });
    }
    if named.capabilities.embeddings {
        match named.embedding_dimensions {
            None => return Some("the named model's vector length is unknown"),
            Some(d) if candidate.embedding_dimensions != Some(d) => {
                return Some("its vectors are not the named model's length");
            }
            Some(_) if candidate.upstream_name() != named.upstream_name() => {
                return Some("another embedding model: its vectors would not match the named model's");
            }
            Some(_) => {}
        }
    }
    let simulated = |m: &ModelSpec| simulated_providers.contains(&m.provider);
    if simulated(candidate) && !simulated(named) {
        return Some("simulated, and the named model is not");
    }
    None
}

/// Serves a request: ranks the eligible models (in the [`Plan`]'s order
/// and strategy), calls them through `call`, and on failure moves on.
///
/// - A non-retryable error is never retried on the same model; a class that
///   may not fall back (bad request, cancelled, internal) ends the request.
/// - It never sleeps for backoff while another available model can take the
///   request; the failed model is retried (per the retry policy, after its
///   backoff and any cooldown, and when its provider's [`RetryBudget`]
///   allows) only when nobody else is left. No model is tried twice
///   except by such a retry, and a request makes at most
///   [`ExecutorConfig::max_attempts_per_request`] attempts.
/// - Ejections never take out more than
///   [`ExecutorConfig::max_ejected_percent`] of the candidates: beyond it
///   the least recently ejected are tried anyway. When every candidate is
///   out and the first is back within the deadline, it waits for it
///   (jittered) rather than giving up.
/// - A context-window failure keeps only models with a larger window.
/// - One total deadline covers everything; each call is told the time left,
///   and a timeout the deadline caused is not held against the model.
/// - A hedge (non-streamed, when the plan asks) starts the next candidate
///   when the first has not answered in time; the first good answer wins
///   and the other call is dropped (cancelled). Hedges spend the retry budget.
/// - Every outcome is recorded in the tracker through its [`Permit`];
///   every attempt is reported.
pub async fn execute<'a, M, S, Tm, T, E, F, Fut>(
    pool: Pool<'a, M, S, Tm>,
    requirements: &Requirements,
    plan: &Plan<'_>,
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
    let Pool { models, signals, tracker, retry_budget, simulated_providers, timer } = pool;
    let start = timer.now();
    let deadline = config.retry.config().deadline;
    let remaining = |now: Duration| deadline.map(|d| d.saturating_sub(now.saturating_sub(start)));

    let selector = SelectorConfig { weights: config.weights, strategy: plan.strategy };
    let ranked = modelfleet_selector::rank(models, requirements, signals, &selector);
    let queue = candidates(models, &ranked, requirements, plan.order, signals, &selector, simulated_providers)?;
    let mut walk = Walk {
        first_choice: queue[0].id.as_str(),
        candidates: queue.clone(),
        queue,
        waiting: Vec::new(),
        attempts: Vec::new(),
        max_ejected_percent: config.max_ejected_percent,
        panic: None,
        forced: false,
    };
    let mut last: Option<E> = None;
    let hedge = plan.hedge.filter(|_| !plan.settle_by_caller);
    // Every turn makes an attempt or waits for a model to be back; the
    // attempts are bounded, and so are the waits between them: a walk that
    // turned this often is stuck, whatever the reason, and stops.
    // Probes-busy polls are bounded by the deadline (a quarter second each).
    let max_attempts = config.max_attempts_per_request.max(1) as usize;
    let polls = deadline.map_or(0, |d| usize::try_from(d.as_millis() / PROBE_POLL.as_millis()).unwrap_or(usize::MAX));
    let turns = (max_attempts + 1) * (walk.candidates.len() + 2) + polls.min(100_000);

    for _ in 0..turns {
        let now = timer.now();
        if remaining(now) == Some(Duration::ZERO) {
            return Err(walk.stop(last, StopReason::DeadlineExceeded));
        }
        if walk.attempts.len() >= max_attempts {
            return Err(walk.stop(last, StopReason::AttemptLimit));
        }
        let (model, permit) = match walk.next(tracker, now) {
            Next::Ready(model, permit) => (model, permit),
            Next::Wait(ready, readmission) => {
                let mut wait = ready.saturating_sub(now);
                if readmission {
                    // Jittered, so requests waiting on the same model do not all
                    // come back at the same instant: up to a tenth more, at most 1 s.
                    let spread = (wait / 10).min(Duration::from_secs(1));
                    wait += spread.mul_f64(rng.f64());
                }
                // Without a deadline, a scheduled retry is still waited for,
                // but not a cooldown (nothing bounds how long it may be).
                if remaining(now).map_or(readmission, |left| wait >= left) {
                    return Err(match last {
                        Some(_) if deadline.is_some() => walk.stop(last, StopReason::DeadlineExceeded),
                        _ => walk.unavailable(last, tracker, now),
                    });
                }
                timer.sleep(wait).await;
                walk.requeue_due(timer.now());
                continue;
            }
            Next::Nobody => return Err(walk.unavailable(last, tracker, now)),
        };
        if let Some(budget) = retry_budget {
            if walk.tries_of(&model.id) == 0 {
                budget.record_request(&model.provider, now);
            } else if !budget.try_retry(&model.provider, now) {
                // The provider's retries are spent: this retry is dropped,
                // and the request falls back or fails instead.
                permit.release();
                continue;
            }
        }

        let primary = walk.begin(model, permit, remaining(now));
        let delay = hedge.and_then(|h| h.delay(signals, model));
        let outcome = match delay {
            None => {
                let result = call(model, primary.ctx).await;
                walk.settle(primary, result, timer.now(), plan, config, tracker, rng)
            }
            Some(delay) => {
                let mut ctx = Hedging { walk: &mut walk, tracker, retry_budget, plan, config, rng, remaining };
                ctx.race(primary, delay, timer, &mut call).await
            }
        };
        match outcome {
            Step::Served(model, value, permit) => {
                // A fallback: the first choice failed or was skipped (not
                // merely outrun by a hedge).
                let first = walk.first_choice;
                let outrun =
                    walk.attempts.iter().filter(|a| a.model == first).all(|a| a.error == Some(ErrorClass::Cancelled));
                let tried = walk.attempts.iter().any(|a| a.model == first);
                let fell_back = model.id != first && !(tried && outrun);
                return Ok(Executed { value, model, attempts: walk.attempts, fell_back, permit });
            }
            Step::Stop(error, reason) => return Err(walk.stop(Some(error), reason)),
            Step::Continue(error) => last = Some(error),
        }
    }
    Err(match last {
        Some(_) => walk.stop(last, StopReason::Exhausted),
        None => walk.unavailable(last, tracker, timer.now()),
    })
}

/// The request's candidates in the order they are tried.
fn candidates<'a, M: Borrow<ModelSpec>, S: LiveSignals, E>(
    models: &'a [M],
    ranked: &[Ranked<'a>],
    requirements: &Requirements,
    order: Order<'_>,
    signals: &S,
    selector: &SelectorConfig,
    simulated_providers: &[String],
) -> Result<Vec<&'a ModelSpec>, ExecuteError<E>> {
    let queue: Vec<&'a ModelSpec> = match order {
        Order::Ranked => ranked.iter().map(|r| r.model).collect(),
        Order::Explicit(ids) => {
            let queue = listed(ids, ranked, None);
            if queue.is_empty() {
                let why: Vec<String> =
                    ids.iter().map(|id| named_rejected(models, id, requirements, signals, selector)).collect();
                let reason = format!("no model of the route's list meets the requirements: {}", why.join("; "));
                return Err(ExecuteError::NoneEligible { reason });
            }
            queue
        }
        Order::Named { model: id, fallbacks } => {
            let Some(named) = ranked.iter().find(|r| r.model.id == id).map(|r| r.model) else {
                return Err(ExecuteError::NoneEligible {
                    reason: named_rejected(models, id, requirements, signals, selector),
                });
            };
            let rest: Vec<&'a ModelSpec> = match fallbacks {
                Some(ids) => listed(ids, ranked, Some(named)),
                None => ranked
                    .iter()
                    .map(|r| r.model)
                    .filter(|m| implied_fallback(named, m, requirements, simulated_providers).is_none())
                    .collect(),
            };
            std::iter::once(named).chain(rest).collect()
        }
    };
    if queue.is_empty() {
        // Only a ranking can be empty here: say what rejected every model.
        let reason = match modelfleet_selector::select(models, requirements, signals, selector) {
            Err(err) => err.to_string(),
            Ok(best) => format!("model {:?} is eligible, yet the ranking was empty", best.model.id),
        };
        return Err(ExecuteError::NoneEligible { reason });
    }
    Ok(same_vectors(queue, requirements))
}

/// An embeddings request's candidates, kept to those whose vectors have
/// the first's length (a caller's index cannot take vectors of another):
/// whatever the order (a ranking, a route's list, a named model's
/// fallbacks), the first choice decides, and a first choice of unknown
/// length has no stand-in. Any other request's, unchanged.
fn same_vectors<'a>(mut queue: Vec<&'a ModelSpec>, requirements: &Requirements) -> Vec<&'a ModelSpec> {
    if !requirements.capabilities.contains(&Capability::Embeddings) {
        return queue;
    }
    let first = queue.first().and_then(|m| m.embedding_dimensions);
    let mut index = 0;
    queue.retain(|m| {
        index += 1;
        index == 1 || (first.is_some() && m.embedding_dimensions == first)
    });
    queue
}

/// The eligible models of a list, in its order, each once (a repeated id
/// or the named model itself is not tried again).
fn listed<'a>(ids: &[String], ranked: &[Ranked<'a>], named: Option<&ModelSpec>) -> Vec<&'a ModelSpec> {
    let mut out: Vec<&'a ModelSpec> = Vec::with_capacity(ids.len());
    for id in ids {
        if named.is_some_and(|n| n.id == *id) || out.iter().any(|m| m.id == *id) {
            continue;
        }
        if let Some(r) = ranked.iter().find(|r| r.model.id == *id) {
            out.push(r.model);
        }
    }
    out
}

/// Why the named model `id` does not meet the requirements.
fn named_rejected<M: Borrow<ModelSpec>, S: LiveSignals>(
    models: &[M],
    id: &str,
    requirements: &Requirements,
    signals: &S,
    selector: &SelectorConfig,
) -> String {
    let Some(named) = models.iter().map(Borrow::borrow).find(|m| m.id == id) else {
        return format!("model {id:?} is not in the catalog");
    };
    let explanation = modelfleet_selector::explain(std::slice::from_ref(named), requirements, signals, selector);
    let reasons: Vec<String> =
        explanation.rejected.iter().flat_map(|r| r.reasons.iter().map(ToString::to_string)).collect();
    if reasons.is_empty() {
        format!("model {id:?} does not meet the requirements")
    } else {
        format!("model {id:?} does not meet the requirements: {}", reasons.join(", "))
    }
}

/// The state of one request's walk down its candidates.
struct Walk<'a> {
    first_choice: &'a str,
    /// Every candidate, in order (the panic threshold's denominator).
    candidates: Vec<&'a ModelSpec>,
    /// Candidates not tried yet (or due for their retry), in order.
    queue: Vec<&'a ModelSpec>,
    /// Models waiting for a retry: (model, ready at).
    waiting: Vec<(&'a ModelSpec, Duration)>,
    attempts: Vec<Attempt>,
    /// [`ExecutorConfig::max_ejected_percent`].
    max_ejected_percent: u8,
    /// Ejected candidates the panic threshold puts back (worked out when
    /// the walk first meets an ejected candidate).
    panic: Option<Vec<&'a str>>,
    /// Whether the walk already tried an ejected model anyway (once per
    /// request: in a full outage, ejection must still shed load).
    forced: bool,
}

/// How often a walk looks again when every candidate's probes are busy.
const PROBE_POLL: Duration = Duration::from_millis(250);

enum Next<'a> {
    /// Call this model now, under this permit.
    Ready(&'a ModelSpec, Permit),
    /// Nobody is available; the first is back at this time (the flag: it
    /// is a model's re-admission after a cooldown, not a scheduled retry).
    Wait(Duration, bool),
    /// Nobody is available and nobody is coming back.
    Nobody,
}

/// An attempt under way.
struct Began<'a> {
    model: &'a ModelSpec,
    permit: Permit,
    ctx: AttemptCtx,
    hedge: bool,
}

/// What one attempt's outcome means for the request.
enum Step<'a, T, E> {
    Served(&'a ModelSpec, T, Option<Permit>),
    Stop(E, StopReason),
    Continue(E),
}

/// Whether an ejection (not a rate limit, not a long cooldown for a bad
/// key or an empty quota) takes the model out: only those may be
/// overridden by the panic threshold.
const fn health_ejection(availability: Availability) -> bool {
    matches!(
        availability,
        Availability::CircuitOpen { .. }
            | Availability::CoolingDown {
                class: ErrorClass::ServerError | ErrorClass::Connection | ErrorClass::Timeout,
                ..
            }
    )
}

impl<'a> Walk<'a> {
    /// The next model available now, in order, or an ejected one the panic
    /// threshold puts back (at its place in the order; one per request);
    /// else when the first is back (or, with probes busy, when to look again).
    fn next(&mut self, tracker: &Tracker, now: Duration) -> Next<'a> {
        let mut back_at: Option<Duration> = None;
        let mut busy = false;
        let mut ejected: Vec<(usize, Duration, Duration)> = Vec::new();
        let mut ready = None;
        for i in 0..self.queue.len() {
            let model = self.queue[i];
            match tracker.acquire(&model.id, now) {
                Ok(permit) => {
                    ready = Some((i, permit));
                    break;
                }
                // Out until a known time (acquire refuses only before it).
                Err(availability @ (Availability::CoolingDown { until, .. } | Availability::CircuitOpen { until })) => {
                    back_at = Some(back_at.map_or(until, |b| b.min(until)));
                    if health_ejection(availability) && !self.forced {
                        // Worked out once, when the walk first meets an ejection.
                        if self.panic.is_none() {
                            self.panic = Some(self.panic_set(tracker, now));
                        }
                        if self.panic.as_ref().is_some_and(|set| set.contains(&model.id.as_str())) {
                            // Put back by the panic threshold: tried at its place.
                            ready = Some((i, tracker.acquire_forced(&model.id, now)));
                            self.forced = true;
                            break;
                        }
                        let since = tracker.ejected_since(&model.id, now).unwrap_or(now);
                        ejected.push((i, since, until));
                    }
                }
                // Probes busy: free again when a probe answers, at no known time.
                Err(_) => busy = true,
            }
        }
        if let Some((i, permit)) = ready {
            return Next::Ready(self.queue.remove(i), permit);
        }
        // Ejections that happened during this request can push it over too.
        if !ejected.is_empty() && self.excess_ejected(tracker, now) > 0 {
            // The least recently ejected first; among equals, the one back soonest.
            ejected.sort_by(|a, b| a.1.cmp(&b.1).then(a.2.cmp(&b.2)).then(a.0.cmp(&b.0)));
            let model = self.queue.remove(ejected[0].0);
            self.forced = true;
            return Next::Ready(model, tracker.acquire_forced(&model.id, now));
        }
        if busy {
            back_at = Some(back_at.map_or(now + PROBE_POLL, |b| b.min(now + PROBE_POLL)));
        }
        let retry_at = self.waiting.iter().map(|&(_, ready)| ready).min();
        match (back_at, retry_at) {
            (Some(back), Some(retry)) if retry <= back => Next::Wait(retry.max(now), false),
            (Some(back), _) => Next::Wait(back.max(now), true),
            (None, Some(retry)) => Next::Wait(retry.max(now), false),
            (None, None) => Next::Nobody,
        }
    }

    /// How many more of the candidates are ejected now than the threshold
    /// allows (`max_ejected_percent` of them, rounded down).
    fn excess_ejected(&self, tracker: &Tracker, now: Duration) -> usize {
        let ejected = self.candidates.iter().filter(|m| health_ejection(tracker.availability(&m.id, now))).count();
        let allowed = self.candidates.len() * usize::from(self.max_ejected_percent) / 100;
        ejected.saturating_sub(allowed)
    }

    /// The candidates the panic threshold puts back at the start: as many
    /// of the least recently ejected as there are ejected beyond it.
    fn panic_set(&self, tracker: &Tracker, now: Duration) -> Vec<&'a str> {
        let excess = self.excess_ejected(tracker, now);
        if excess == 0 {
            return Vec::new();
        }
        let mut ejected: Vec<(Duration, &'a str)> = self
            .candidates
            .iter()
            .filter(|m| health_ejection(tracker.availability(&m.id, now)))
            .map(|m| (tracker.ejected_since(&m.id, now).unwrap_or(now), m.id.as_str()))
            .collect();
        ejected.sort();
        ejected.into_iter().take(excess).map(|(_, id)| id).collect()
    }

    /// Moves retries that are due (and models whose cooldown ended) back to the queue.
    fn requeue_due(&mut self, now: Duration) {
        let mut due: Vec<(&'a ModelSpec, Duration)> = Vec::new();
        self.waiting.retain(|&(m, ready)| {
            if ready <= now {
                due.push((m, ready));
                false
            } else {
                true
            }
        });
        due.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.id.cmp(&b.0.id)));
        for (i, (m, _)) in due.into_iter().enumerate() {
            self.queue.insert(i, m);
        }
    }

    /// Attempts settled on `id` so far (one is in flight at most, and only
    /// between `begin` and its settling).
    fn tries_of(&self, id: &str) -> u32 {
        u32::try_from(self.attempts.iter().filter(|a| a.model == id).count()).unwrap_or(u32::MAX)
    }

    /// Builds the context of the next attempt on `model` (its number: 1 for the first).
    fn begin(&self, model: &'a ModelSpec, permit: Permit, remaining: Option<Duration>) -> Began<'a> {
        let attempt = self.tries_of(&model.id).saturating_add(1);
        let fallback = model.id != self.first_choice;
        Began { model, permit, ctx: AttemptCtx { attempt, remaining, fallback }, hedge: false }
    }

    /// Records an attempt's outcome and decides what comes next.
    #[allow(clippy::too_many_arguments)] // the walk's whole context; two call sites
    fn settle<T, E: Classify + fmt::Display>(
        &mut self,
        began: Began<'a>,
        result: Result<T, E>,
        ended: Duration,
        plan: &Plan<'_>,
        config: &ExecutorConfig,
        tracker: &Tracker,
        rng: &mut fastrand::Rng,
    ) -> Step<'a, T, E> {
        let Began { model, permit, ctx, hedge } = began;
        let latency = ended.saturating_sub(permit.started());
        let (probe, forced) = (permit.is_probe(), permit.is_forced());
        let attempt = |error: Option<ErrorClass>, message: Option<String>| Attempt {
            model: model.id.clone(),
            error,
            message,
            latency,
            probe,
            hedge,
            forced,
        };
        match result {
            Ok(value) => {
                self.attempts.push(attempt(None, None));
                let permit = if plan.settle_by_caller {
                    Some(permit)
                } else {
                    permit.success(ended);
                    None
                };
                Step::Served(model, value, permit)
            }
            Err(error) => {
                let class = error.class();
                let message = Some(error.sanitized());
                self.attempts.push(attempt(Some(class), message));
                // A timeout the request's own deadline caused (the call used
                // all the time it was given) says nothing of the model.
                if class == ErrorClass::Timeout && ctx.remaining.is_some_and(|r| latency >= r) {
                    permit.release();
                    return Step::Stop(error, StopReason::DeadlineExceeded);
                }
                // Budget refusals, cancellations and internal errors are
                // recorded as nothing by the tracker (a release).
                permit.failure(class, error.retry_after(), ended);
                if !class.fallback() && !class.retry_same_model() {
                    return Step::Stop(error, StopReason::NotRecoverable);
                }
                self.after_failure(model, class, error.retry_after(), ended, tracker, &config.retry, rng);
                Step::Continue(error)
            }
        }
    }

    /// After `model` failed with `class`: narrow the candidates after a
    /// context-window failure, and schedule a retry when the class, the
    /// policy and the provider's retry budget allow one (after the backoff,
    /// and not before the cooldown ends).
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
        let made = self.tries_of(&model.id).max(1);
        let Ok(delay) = policy.next_delay(made, class, retry_after, rng) else { return };
        let cooldown_end = match tracker.availability(&model.id, now) {
            Availability::CoolingDown { until, .. } | Availability::CircuitOpen { until } => until,
            _ => now,
        };
        self.waiting.push((model, now.saturating_add(delay).max(cooldown_end)));
    }

    fn stop<E>(&self, last: Option<E>, reason: StopReason) -> ExecuteError<E> {
        match last {
            Some(last) => ExecuteError::Failed { last, reason, attempts: self.attempts.clone() },
            None => ExecuteError::Unavailable {
                reason: format!("the deadline passed before any attempt ({} candidate(s) left)", self.queue.len()),
                retry_after: None,
            },
        }
    }

    /// Nothing can take the request within its deadline.
    fn unavailable<E>(&self, last: Option<E>, tracker: &Tracker, now: Duration) -> ExecuteError<E> {
        if let Some(last) = last {
            return ExecuteError::Failed { last, reason: StopReason::Exhausted, attempts: self.attempts.clone() };
        }
        let mut back: Option<Duration> = None;
        let out: Vec<String> = self
            .candidates
            .iter()
            .map(|m| {
                let availability = tracker.availability(&m.id, now);
                if let Availability::CoolingDown { until, .. } | Availability::CircuitOpen { until } = availability {
                    let wait = until.saturating_sub(now);
                    back = Some(back.map_or(wait, |b| b.min(wait)));
                }
                format!("{} ({})", m.id, describe(availability, now))
            })
            .collect();
        ExecuteError::Unavailable { reason: format!("every candidate is out: {}", out.join(", ")), retry_after: back }
    }
}

/// A hedged attempt in progress: the walk and everything settling needs.
struct Hedging<'w, 'a, 'p, 'r, R> {
    walk: &'w mut Walk<'a>,
    tracker: &'r Tracker,
    retry_budget: Option<&'r RetryBudget>,
    plan: &'p Plan<'p>,
    config: &'p ExecutorConfig,
    rng: &'w mut fastrand::Rng,
    remaining: R,
}

impl<'a, R: Fn(Duration) -> Option<Duration> + Copy> Hedging<'_, 'a, '_, '_, R> {
    /// Runs `primary`; if it has not answered after `delay`, starts the
    /// next available candidate too (when the retry budget allows) and
    /// takes the first good answer. The loser is dropped (cancelled): its
    /// permit is released, and its caller charges what it cost.
    async fn race<Tm, T, E, F, Fut>(
        &mut self,
        primary: Began<'a>,
        delay: Duration,
        timer: &Tm,
        call: &mut F,
    ) -> Step<'a, T, E>
    where
        Tm: Timer,
        E: Classify + fmt::Display,
        F: FnMut(&'a ModelSpec, AttemptCtx) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut first = pin!(call(primary.model, primary.ctx));
        let timeout = {
            let mut sleep = pin!(timer.sleep(delay));
            std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = first.as_mut().poll(cx) {
                    return Poll::Ready(Some(result));
                }
                sleep.as_mut().poll(cx).map(|()| None)
            })
            .await
        };
        if let Some(result) = timeout {
            return self.settle(primary, result, timer.now());
        }
        let now = timer.now();
        // The hedge is an attempt too: only when the request has one left.
        let room = self.config.max_attempts_per_request.max(1) as usize;
        let hedge = if self.walk.attempts.len() + 2 <= room { self.hedge_target(now) } else { None };
        let Some((model, permit)) = hedge else {
            let result = first.await;
            return self.settle(primary, result, timer.now());
        };
        let mut second = self.walk.begin(model, permit, (self.remaining)(now));
        second.hedge = true;
        second.ctx.fallback = false;
        let mut other = pin!(call(second.model, second.ctx));
        let (first_done, result) = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = first.as_mut().poll(cx) {
                return Poll::Ready((true, result));
            }
            other.as_mut().poll(cx).map(|result| (false, result))
        })
        .await;
        let (done, running) = if first_done { (primary, second) } else { (second, primary) };
        match self.settle(done, result, timer.now()) {
            // It failed, and the other may still answer: its outcome decides.
            Step::Continue(_) => {
                let result = if first_done { other.await } else { first.await };
                self.settle(running, result, timer.now())
            }
            step => {
                self.cancel(running, timer.now());
                step
            }
        }
    }

    /// The attempt that lost a hedge race (or was cut short by a request-level
    /// stop): listed as cancelled, its permit released (neither success nor
    /// failure); its future is dropped by the caller, which charges it.
    fn cancel(&mut self, loser: Began<'a>, now: Duration) {
        self.walk.attempts.push(Attempt {
            model: loser.model.id.clone(),
            error: Some(ErrorClass::Cancelled),
            message: Some("cancelled: the other attempt of the hedge decided the request".to_owned()),
            latency: now.saturating_sub(loser.permit.started()),
            probe: loser.permit.is_probe(),
            hedge: loser.hedge,
            forced: loser.permit.is_forced(),
        });
        loser.permit.release();
    }

    /// The next candidate available now for a hedge, if the retry budget allows one.
    fn hedge_target(&mut self, now: Duration) -> Option<(&'a ModelSpec, Permit)> {
        let index = self.walk.queue.iter().position(|m| self.tracker.availability(&m.id, now).is_available())?;
        let model = self.walk.queue[index];
        if self.retry_budget.is_some_and(|budget| !budget.try_retry(&model.provider, now)) {
            return None;
        }
        let permit = self.tracker.acquire(&model.id, now).ok()?;
        self.walk.queue.remove(index);
        Some((model, permit))
    }

    fn settle<T, E: Classify + fmt::Display>(
        &mut self,
        began: Began<'a>,
        result: Result<T, E>,
        ended: Duration,
    ) -> Step<'a, T, E> {
        self.walk.settle(began, result, ended, self.plan, self.config, self.tracker, self.rng)
    }
}

/// Whether `candidate`'s known window is larger than `failed`'s (an unknown
/// window is never larger; any known one beats an unknown failed one).
pub(crate) fn larger_window(candidate: &ModelSpec, failed: &ModelSpec) -> bool {
    match (candidate.context_window, failed.context_window) {
        (Some(c), Some(f)) => c > f,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Why a model is out of rotation at `now`, for messages and explanations.
#[must_use]
pub fn describe(availability: Availability, now: Duration) -> String {
    match availability {
        Availability::CoolingDown { class, until } => {
            format!("cooling down after {class} for {} ms more", until.saturating_sub(now).as_millis())
        }
        Availability::CircuitOpen { until } => {
            format!("circuit open for {} ms more", until.saturating_sub(now).as_millis())
        }
        Availability::ProbesBusy => "probes busy (circuit half-open, or re-admitted after an ejection)".to_owned(),
        Availability::Available | Availability::Probe => "available".to_owned(),
    }
}
