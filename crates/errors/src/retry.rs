//! Retry with exponential backoff, jitter, Retry-After and a total deadline.

use std::{
    fmt,
    future::Future,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use crate::{Classify, Error, ErrorClass};

/// How random the backoff delays are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Jitter {
    /// No randomness: exactly the exponential schedule.
    None,
    /// Uniform in `[0, backoff]` (spreads retries the most; AWS's "full jitter").
    #[default]
    Full,
    /// `backoff / 2` plus uniform in `[0, backoff / 2]` (never shorter than half).
    Equal,
}

/// The settings of a [`RetryPolicy`]; checked by [`RetryPolicy::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Attempts in total, the first included; at least 1 (1 means no retry).
    pub max_attempts: u32,
    /// The backoff before the first retry; zero is allowed.
    pub initial_backoff: Duration,
    /// How much each backoff grows over the previous one; finite and at least 1.
    pub multiplier: f64,
    /// The longest backoff; at least `initial_backoff`.
    pub max_backoff: Duration,
    /// The randomness applied to each backoff.
    pub jitter: Jitter,
    /// The time the whole operation may take, all attempts and waits included.
    pub deadline: Option<Duration>,
    /// The longest `Retry-After` honoured; a provider asking for more ends the
    /// retries on that model (waiting less would only earn another 429).
    pub max_retry_after: Duration,
}

impl Default for RetryConfig {
    /// 3 attempts, 100 ms doubling up to 10 s, full jitter, a 120 s
    /// deadline, Retry-After honoured up to 30 s.
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(10),
            jitter: Jitter::Full,
            deadline: Some(Duration::from_mins(2)),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

/// A checked retry configuration.
///
/// ```
/// use std::time::Duration;
/// use modelfleet_errors::{Jitter, RetryConfig, RetryPolicy};
///
/// let policy = RetryPolicy::new(RetryConfig { jitter: Jitter::None, ..RetryConfig::default() })?;
/// let mut rng = fastrand::Rng::with_seed(7);
/// assert_eq!(policy.backoff(1, &mut rng), Duration::from_millis(100));
/// assert_eq!(policy.backoff(2, &mut rng), Duration::from_millis(200));
/// assert_eq!(policy.backoff(3, &mut rng), Duration::from_millis(400));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RetryPolicy {
    // Invariant: checked by `new` (see `RetryConfig`'s field docs).
    config: RetryConfig,
}

impl RetryPolicy {
    /// Checks `config`; the error names the field at fault.
    pub fn new(config: RetryConfig) -> Result<RetryPolicy, Error> {
        let invalid = |field: &'static str, reason: String| Err(Error::InvalidRetryConfig { field, reason });
        if config.max_attempts == 0 {
            return invalid("max_attempts", "must be at least 1 (1 means no retry)".into());
        }
        if !config.multiplier.is_finite() || config.multiplier < 1.0 {
            return invalid("multiplier", format!("must be a finite number >= 1, got {}", config.multiplier));
        }
        if config.max_backoff < config.initial_backoff {
            return invalid(
                "max_backoff",
                format!("{:?} is shorter than initial_backoff {:?}", config.max_backoff, config.initial_backoff),
            );
        }
        if config.deadline == Some(Duration::ZERO) {
            return invalid("deadline", "must be longer than zero (leave it out for no deadline)".into());
        }
        Ok(RetryPolicy { config })
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &RetryConfig {
        &self.config
    }

    /// The wait before retry number `retry` (1 is the first retry), with jitter
    /// drawn from `rng`: `min(initial × multiplier^(retry-1), max)`.
    #[must_use]
    pub fn backoff(&self, retry: u32, rng: &mut fastrand::Rng) -> Duration {
        let config = &self.config;
        let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let grown = config.initial_backoff.as_secs_f64() * config.multiplier.powi(exponent);
        let base = if grown.is_finite() && grown < config.max_backoff.as_secs_f64() {
            Duration::from_secs_f64(grown)
        } else {
            config.max_backoff
        };
        match config.jitter {
            Jitter::None => base,
            Jitter::Full => base.mul_f64(rng.f64()),
            Jitter::Equal => base / 2 + (base / 2).mul_f64(rng.f64()),
        }
    }

    /// The wait before retry number `retry` after a failure of `class` that
    /// asked for `retry_after`, or why there is no retry on this model.
    ///
    /// A Retry-After within the cap is honoured (the wait is the longer of it
    /// and the backoff); one above the cap stops the retries.
    pub fn next_delay(
        &self,
        retry: u32,
        class: ErrorClass,
        retry_after: Option<Duration>,
        rng: &mut fastrand::Rng,
    ) -> Result<Duration, GiveUp> {
        if !class.retry_same_model() {
            return Err(GiveUp::NotRetryable);
        }
        if retry >= self.config.max_attempts {
            return Err(GiveUp::AttemptsExhausted);
        }
        let backoff = self.backoff(retry, rng);
        match retry_after {
            Some(asked) if asked > self.config.max_retry_after => Err(GiveUp::RetryAfterTooLong(asked)),
            Some(asked) => Ok(asked.max(backoff)),
            None => Ok(backoff),
        }
    }
}

/// Why the retries on one model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The last error's class is not retried on the same model.
    NotRetryable,
    /// `max_attempts` were made.
    AttemptsExhausted,
    /// The next wait would end past the deadline.
    DeadlineExceeded,
    /// The provider asked to wait longer than `max_retry_after`.
    RetryAfterTooLong(Duration),
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GiveUp::NotRetryable => f.write_str("the error is not retryable"),
            GiveUp::AttemptsExhausted => f.write_str("no attempts left"),
            GiveUp::DeadlineExceeded => f.write_str("the deadline would be exceeded"),
            GiveUp::RetryAfterTooLong(asked) => write!(f, "the provider asked to wait {asked:?}, longer than allowed"),
        }
    }
}

/// A source of time for the retry helper: the present, and waiting.
///
/// [`ManualTimer`] makes tests instant and exact; `TokioTimer` (feature
/// `tokio`) is the production one.
pub trait Timer {
    /// Time elapsed since an origin of the timer's choosing (monotonic).
    fn now(&self) -> Duration;
    /// Waits for `duration`.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send;
}

/// A [`Timer`] whose sleeps return at once and move its clock forward, and
/// which remembers every sleep. For tests: nothing is really slept.
#[derive(Debug, Default)]
pub struct ManualTimer {
    state: Mutex<ManualState>,
}

#[derive(Debug, Default)]
struct ManualState {
    now: Duration,
    slept: Vec<Duration>,
}

impl ManualTimer {
    /// A timer at time zero that has slept never.
    #[must_use]
    pub fn new() -> ManualTimer {
        ManualTimer::default()
    }

    /// Moves the clock forward by `by` (as if an operation took that long).
    pub fn advance(&self, by: Duration) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).now += by;
    }

    /// Every sleep asked of this timer, in order.
    #[must_use]
    pub fn slept(&self) -> Vec<Duration> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).slept.clone()
    }
}

impl Timer for ManualTimer {
    fn now(&self) -> Duration {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).now
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.now += duration;
        state.slept.push(duration);
        std::future::ready(())
    }
}

/// The production [`Timer`]: tokio's clock and sleep (so tokio's paused
/// test time works too).
#[cfg(feature = "tokio")]
#[derive(Debug, Clone, Copy)]
pub struct TokioTimer {
    origin: tokio::time::Instant,
}

#[cfg(feature = "tokio")]
impl TokioTimer {
    /// A timer whose origin is now.
    #[must_use]
    pub fn new() -> TokioTimer {
        TokioTimer { origin: tokio::time::Instant::now() }
    }
}

#[cfg(feature = "tokio")]
impl Default for TokioTimer {
    fn default() -> Self {
        TokioTimer::new()
    }
}

#[cfg(feature = "tokio")]
impl Timer for TokioTimer {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }
}

/// What an operation is told about the attempt it is making.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptCtx {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The time left before the deadline, if there is one: the operation
    /// should use it as its own timeout so the deadline holds.
    pub remaining: Option<Duration>,
    /// Whether the attempt stands in for the request's first choice: it is
    /// on another model because the first choice failed or was skipped
    /// (set by the fallback executor; never for a hedge, nor for retries of
    /// one operation).
    pub fallback: bool,
}

/// One attempt as it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptRecord {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// `None` when the attempt succeeded.
    pub error: Option<ErrorClass>,
    /// How long the attempt took.
    pub elapsed: Duration,
    /// The wait that followed it, when there was a retry.
    pub delay: Option<Duration>,
}

/// A success, with every attempt it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retried<T> {
    /// The operation's result.
    pub value: T,
    /// Every attempt, the successful last one included.
    pub attempts: Vec<AttemptRecord>,
}

/// The retries ended without success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryError<E> {
    /// The last attempt's error.
    pub last: E,
    /// Why no further attempt was made.
    pub reason: GiveUp,
    /// Every attempt, in order.
    pub attempts: Vec<AttemptRecord>,
}

impl<E: fmt::Display> fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gave up after {} attempt(s) because {}: {}", self.attempts.len(), self.reason, self.last)
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RetryError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.last)
    }
}

/// Runs `op` until it succeeds or `policy` says stop, retrying only errors
/// whose class is retryable on the same model, waiting on `timer` between
/// attempts and drawing jitter from `rng`.
///
/// The deadline holds over all attempts and waits: no wait is started that
/// would end past it, and each attempt is told the time it has left
/// ([`AttemptCtx::remaining`]) to use as its own timeout. Every attempt is
/// reported, in the success and in the error.
///
/// ```
/// use modelfleet_errors::{retry, ErrorClass, ManualTimer, RetryPolicy};
///
/// let timer = ManualTimer::new();
/// let mut rng = fastrand::Rng::with_seed(1);
/// let runtime = tokio::runtime::Builder::new_current_thread().build()?;
/// let outcome = runtime.block_on(retry(&RetryPolicy::default(), &timer, &mut rng, |ctx| async move {
///     if ctx.attempt < 3 { Err(ErrorClass::ServerError) } else { Ok("answer") }
/// }))?;
/// assert_eq!(outcome.value, "answer");
/// assert_eq!(outcome.attempts.len(), 3);
/// assert_eq!(timer.slept().len(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub async fn retry<T, E, F, Fut, Tm>(
    policy: &RetryPolicy,
    timer: &Tm,
    rng: &mut fastrand::Rng,
    mut op: F,
) -> Result<Retried<T>, RetryError<E>>
where
    E: Classify,
    F: FnMut(AttemptCtx) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    Tm: Timer,
{
    let start = timer.now();
    let deadline = policy.config.deadline;
    let remaining = |now: Duration| deadline.map(|d| d.saturating_sub(now.saturating_sub(start)));
    let mut attempts = Vec::new();
    let mut attempt = 1;
    loop {
        let began = timer.now();
        let result = op(AttemptCtx { attempt, remaining: remaining(began), fallback: false }).await;
        let ended = timer.now();
        let elapsed = ended.saturating_sub(began);
        let error = match result {
            Ok(value) => {
                attempts.push(AttemptRecord { attempt, error: None, elapsed, delay: None });
                return Ok(Retried { value, attempts });
            }
            Err(error) => error,
        };
        let class = error.class();
        let decision =
            policy.next_delay(attempt, class, error.retry_after(), rng).and_then(|delay| match remaining(ended) {
                Some(left) if delay >= left => Err(GiveUp::DeadlineExceeded),
                _ => Ok(delay),
            });
        match decision {
            Ok(delay) => {
                attempts.push(AttemptRecord { attempt, error: Some(class), elapsed, delay: Some(delay) });
                timer.sleep(delay).await;
                attempt += 1;
            }
            Err(reason) => {
                attempts.push(AttemptRecord { attempt, error: Some(class), elapsed, delay: None });
                return Err(RetryError { last: error, reason, attempts });
            }
        }
    }
}

#[cfg(test)]
mod tests;
