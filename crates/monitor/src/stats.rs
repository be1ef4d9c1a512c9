//! What the monitor reports: outcomes in, statistics out.

use std::{collections::BTreeMap, time::Duration};

use hdrhistogram::{Counter, Histogram};
use modelfleet_errors::ErrorClass;
use modelfleet_registry::{Category, Money};
use serde::Serialize;

use crate::cell::Counts;

/// One request outcome, as the caller saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome<'a> {
    /// The catalog id of the model called.
    pub model: &'a str,
    /// Its provider.
    pub provider: &'a str,
    /// The kind of request.
    pub kind: Category,
    /// The request's language (ISO 639-1), when known.
    pub language: Option<&'a str>,
    /// The whole call.
    pub latency: Duration,
    /// Time to the first token, for a streamed call.
    pub time_to_first_token: Option<Duration>,
    /// Prompt tokens (cached ones included).
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Prompt tokens served from the provider's cache.
    pub cached_tokens: u64,
    /// The exact cost.
    pub cost: Money,
    /// `None` for a success.
    pub error: Option<ErrorClass>,
    /// A user's rating of the answer, 0 to 1.
    pub quality: Option<f64>,
}

impl<'a> Outcome<'a> {
    /// A success of `model` at `provider` taking `latency`, nothing else known.
    #[must_use]
    pub fn success(model: &'a str, provider: &'a str, latency: Duration) -> Outcome<'a> {
        Outcome {
            model,
            provider,
            kind: Category::General,
            language: None,
            latency,
            time_to_first_token: None,
            input_tokens: 0,
            output_tokens: 0,
            cached_tokens: 0,
            cost: Money::ZERO,
            error: None,
            quality: None,
        }
    }

    /// The same outcome as a failure of `class`.
    #[must_use]
    pub fn failed(self, class: ErrorClass) -> Outcome<'a> {
        Outcome { error: Some(class), ..self }
    }

    pub(crate) fn verdict(&self) -> Verdict {
        Verdict::of(self.error)
    }
}

/// What an outcome says about the model that served it: the one rule the
/// monitor, the store's aggregates and the reports judge models by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It answered.
    Success,
    /// It failed: counts against its success rate and health.
    Failure,
    /// The request was at fault ([`ErrorClass::BadRequest`],
    /// [`ErrorClass::ContentPolicy`], [`ErrorClass::ContextWindowExceeded`]):
    /// any model would have refused it.
    ClientFault,
    /// The call ended for reasons outside the model: the caller went away
    /// ([`ErrorClass::Cancelled`]) or a modelfleet budget refused the spend
    /// ([`ErrorClass::BudgetExceeded`]).
    Aborted,
}

impl Verdict {
    /// The verdict of an outcome that ended with `error` (`None`: success).
    #[must_use]
    pub fn of(error: Option<ErrorClass>) -> Verdict {
        match error {
            None => Verdict::Success,
            Some(ErrorClass::BadRequest | ErrorClass::ContentPolicy | ErrorClass::ContextWindowExceeded) => {
                Verdict::ClientFault
            }
            Some(ErrorClass::Cancelled | ErrorClass::BudgetExceeded) => Verdict::Aborted,
            Some(_) => Verdict::Failure,
        }
    }

    /// Whether the outcome judges the model: a success or one of its failures.
    #[must_use]
    pub fn judges(self) -> bool {
        matches!(self, Verdict::Success | Verdict::Failure)
    }
}

/// One entry of a model's bounded recent-events buffer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RecentEvent {
    /// When (Unix ms, from the monitor's clock).
    pub at_ms: u64,
    /// The kind of request.
    pub kind: Category,
    /// The latency in µs.
    pub latency_us: u64,
    /// Prompt plus completion tokens.
    pub tokens: u64,
    /// The cost.
    pub cost: Money,
    /// `None` for a success.
    pub error: Option<ErrorClass>,
    #[serde(skip)]
    language: [u8; 8],
}

impl RecentEvent {
    pub(crate) fn new(o: &Outcome<'_>, at_ms: u64) -> RecentEvent {
        // Languages are short codes: kept inline, no allocation per record.
        let mut language = [0u8; 8];
        if let Some(lang) = o.language {
            let n = lang.len().min(8);
            language[..n].copy_from_slice(&lang.as_bytes()[..n]);
        }
        RecentEvent {
            at_ms,
            kind: o.kind,
            latency_us: u64::try_from(o.latency.as_micros()).unwrap_or(u64::MAX),
            tokens: o.input_tokens.saturating_add(o.output_tokens),
            cost: o.cost,
            error: o.error,
            language,
        }
    }

    /// The request's language code (at most 8 bytes of it), if given.
    #[must_use]
    pub fn language(&self) -> Option<&str> {
        let end = self.language.iter().position(|b| *b == 0).unwrap_or(8);
        (end > 0).then(|| std::str::from_utf8(&self.language[..end]).unwrap_or(""))
    }
}

/// Latency percentiles in milliseconds (0 when there is no data).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Latency {
    /// The mean.
    pub mean_ms: f64,
    /// The median.
    pub p50_ms: f64,
    /// The 95th percentile.
    pub p95_ms: f64,
    /// The 99th percentile.
    pub p99_ms: f64,
    /// The largest.
    pub max_ms: f64,
}

impl Latency {
    /// From a histogram whose unit is `unit_ms` milliseconds.
    pub(crate) fn from_histogram<T: Counter>(hist: &Histogram<T>, unit_ms: f64) -> Latency {
        if hist.is_empty() {
            return Latency::default();
        }
        let at = |q: f64| hist.value_at_quantile(q) as f64 * unit_ms;
        Latency {
            mean_ms: hist.mean() * unit_ms,
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: hist.max() as f64 * unit_ms,
        }
    }
}

/// Token counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Tokens {
    /// Prompt tokens.
    pub input: u64,
    /// Completion tokens.
    pub output: u64,
    /// Prompt tokens served from cache.
    pub cached: u64,
}

/// Request counts, tokens and cost: the part every view shares.
///
/// `requests = successes + failures + client_faults + aborted`: every
/// outcome counts as a request, but only successes and the model's own
/// failures judge it (see the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Totals {
    /// Requests recorded: every outcome, whatever ended it.
    pub requests: u64,
    /// Of which succeeded.
    pub successes: u64,
    /// Of which failed through the model or its provider (timeouts, rate
    /// limits, server errors, …): the failures that count against it.
    pub failures: u64,
    /// Of which the request was at fault ([`ErrorClass::BadRequest`],
    /// [`ErrorClass::ContentPolicy`], [`ErrorClass::ContextWindowExceeded`]):
    /// never counted against the model.
    pub client_faults: u64,
    /// Of which ended for reasons outside the model: the caller cancelled
    /// ([`ErrorClass::Cancelled`]) or a modelfleet budget refused
    /// ([`ErrorClass::BudgetExceeded`]). Never counted against the model.
    pub aborted: u64,
    /// `successes / (requests - client_faults - aborted)`, i.e. over the
    /// outcomes that judge the model ([`Totals::judged`]); 0 when there are none.
    pub success_rate: f64,
    /// Tokens.
    pub tokens: Tokens,
    /// Exact total cost.
    pub cost: Money,
}

impl Totals {
    /// The outcomes that judge the model: its successes and its own failures
    /// (`requests - client_faults - aborted`), the success rate's denominator.
    #[must_use]
    pub fn judged(&self) -> u64 {
        self.successes + self.failures
    }
}

impl From<&Counts> for Totals {
    fn from(c: &Counts) -> Totals {
        let judged = c.successes + c.failures;
        Totals {
            requests: c.requests,
            successes: c.successes,
            failures: c.failures,
            client_faults: c.client_faults,
            aborted: c.aborted,
            success_rate: if judged == 0 { 0.0 } else { c.successes as f64 / judged as f64 },
            tokens: Tokens { input: c.input_tokens, output: c.output_tokens, cached: c.cached_tokens },
            cost: c.cost,
        }
    }
}

/// Everything known of one model. An unknown model gives the empty default.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ModelStats {
    /// The model.
    pub model: String,
    /// Its provider (empty when never seen).
    pub provider: String,
    /// Counts, tokens and cost.
    #[serde(flatten)]
    pub totals: Totals,
    /// Whole-call latency of the outcomes that judge the model (client
    /// faults and aborted calls are not its latency).
    pub latency: Latency,
    /// Time to first token of streamed calls.
    pub time_to_first_token: Latency,
    /// Errors per class, client faults and aborted calls included.
    pub errors: BTreeMap<ErrorClass, u64>,
    /// Requests per kind.
    pub kinds: BTreeMap<Category, u64>,
    /// The mean user rating, when any was given.
    pub avg_quality: Option<f64>,
    /// First use (Unix ms).
    pub first_used_ms: Option<u64>,
    /// Last use (Unix ms).
    pub last_used_ms: Option<u64>,
    /// Calls running now.
    pub in_flight: u32,
}

/// One model's statistics over a [`Window`](crate::Window).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WindowStats {
    /// The window's name (`1m`, `15m`, `1h`, `1d`).
    pub window: &'static str,
    /// Counts, tokens and cost in the window.
    #[serde(flatten)]
    pub totals: Totals,
    /// Latency in the window (1 significant figure), of the outcomes that
    /// judge the model.
    pub latency: Latency,
}

/// The sum over one provider's models.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ProviderStats {
    /// The provider.
    pub provider: String,
    /// Its models that have traffic, sorted.
    pub models: Vec<String>,
    /// Counts, tokens and cost over them.
    #[serde(flatten)]
    pub totals: Totals,
    /// Latency over them.
    pub latency: Latency,
}
