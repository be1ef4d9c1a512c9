//! What the store keeps, as owned rows.

use std::collections::BTreeMap;

use modelfleet_budget::{Alert, Period, Scope};
use modelfleet_errors::ErrorClass;
use modelfleet_monitor::Outcome;
use modelfleet_registry::{Category, Money};
use serde::{Deserialize, Serialize};

/// One request outcome: a row of the performance log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerfRecord {
    /// When (Unix ms).
    pub at_ms: u64,
    /// The model.
    pub model: String,
    /// Its provider.
    pub provider: String,
    /// The kind of request.
    pub kind: Category,
    /// The request's language.
    pub language: Option<String>,
    /// The whole call, µs.
    pub latency_us: u64,
    /// Time to first token, µs, for streamed calls.
    pub ttft_us: Option<u64>,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Cached prompt tokens.
    pub cached_tokens: u64,
    /// Exact cost.
    pub cost: Money,
    /// `None` for a success.
    pub error: Option<ErrorClass>,
    /// A user's rating, 0 to 1 (a rating of 1 to 5 is `(rating - 1) / 4`).
    pub quality: Option<f64>,
    /// The request's id (`x-request-id`), shared by all its attempts.
    #[serde(default)]
    pub request_id: Option<String>,
    /// The API key's name (or tenant) the request came with.
    #[serde(default)]
    pub key_name: Option<String>,
    /// The configured route the request asked for.
    #[serde(default)]
    pub route: Option<String>,
    /// Which attempt of its request this row is, from 1.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// Whether this attempt was on another model than the request's first
    /// choice (a fallback).
    #[serde(default)]
    pub fallback: bool,
    /// The user's rating of the answer, 1 to 5 (`POST /v1/feedback`).
    #[serde(default)]
    pub rating: Option<u8>,
}

fn first_attempt() -> u32 {
    1
}

/// Who sent a request and how it went beyond its outcome: what the facade
/// knows and the monitor does not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestFacts<'a> {
    /// Its id (`x-request-id`).
    pub request_id: Option<&'a str>,
    /// The API key's name.
    pub key_name: Option<&'a str>,
    /// The route it asked for.
    pub route: Option<&'a str>,
    /// Which attempt, from 1.
    pub attempt: u32,
    /// Whether the attempt was on a fallback model.
    pub fallback: bool,
}

impl PerfRecord {
    /// The row for `outcome`, which happened at `at_ms`, of a request
    /// nothing more is known about (its first attempt).
    #[must_use]
    pub fn from_outcome(outcome: &Outcome<'_>, at_ms: u64) -> PerfRecord {
        PerfRecord::of_request(outcome, &RequestFacts { attempt: 1, ..RequestFacts::default() }, at_ms)
    }

    /// The row for `outcome` of the request `facts` describe, at `at_ms`.
    #[must_use]
    pub fn of_request(outcome: &Outcome<'_>, facts: &RequestFacts<'_>, at_ms: u64) -> PerfRecord {
        let us = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        PerfRecord {
            at_ms,
            model: outcome.model.to_owned(),
            provider: outcome.provider.to_owned(),
            kind: outcome.kind,
            language: outcome.language.map(str::to_owned),
            latency_us: us(outcome.latency),
            ttft_us: outcome.time_to_first_token.map(us),
            input_tokens: outcome.input_tokens,
            output_tokens: outcome.output_tokens,
            cached_tokens: outcome.cached_tokens,
            cost: outcome.cost,
            error: outcome.error,
            quality: outcome.quality.filter(|q| q.is_finite()),
            request_id: facts.request_id.map(str::to_owned),
            key_name: facts.key_name.map(str::to_owned),
            route: facts.route.map(str::to_owned),
            attempt: facts.attempt.max(1),
            fallback: facts.fallback,
            rating: None,
        }
    }
}

/// A model's accumulated usage, kept up to date with every performance row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// The model.
    pub model: String,
    /// Its provider.
    pub provider: String,
    /// Requests.
    pub requests: u64,
    /// Of which succeeded.
    pub successes: u64,
    /// Of which failed.
    pub failures: u64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Cached prompt tokens.
    pub cached_tokens: u64,
    /// Exact cost.
    pub cost: Money,
    /// Sum of latencies, µs.
    pub latency_us_sum: u64,
    /// The mean user rating (quality, 0 to 1), when any.
    pub avg_quality: Option<f64>,
    /// How many answers were rated.
    pub rated: u64,
    /// First use (Unix ms).
    pub first_ms: u64,
    /// Last use (Unix ms).
    pub last_ms: u64,
}

/// One budget's share of a settled request: what [`Store::commit`] adds to
/// the ledger. A settlement carries one entry per budget that covers it.
///
/// [`Store::commit`]: crate::Store::commit
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendEntry {
    /// The budget's scope.
    pub scope: Scope,
    /// Its period kind.
    pub period: Period,
    /// The period's start (Unix ms).
    pub period_start_ms: u64,
    /// The period's end (Unix ms); `None` for a lifetime budget.
    pub period_end_ms: Option<u64>,
    /// The provider that served the request.
    pub provider: String,
    /// The model that served it.
    pub model: String,
    /// What it cost.
    pub amount: Money,
}

/// A budget's spend in one period, summed over providers and models.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendRow {
    /// The budget's scope.
    pub scope: Scope,
    /// Its period kind.
    pub period: Period,
    /// The period's start (Unix ms).
    pub period_start_ms: u64,
    /// The period's end (Unix ms), when known (`None` for a lifetime budget
    /// and for spend recorded before schema version 2).
    pub period_end_ms: Option<u64>,
    /// Spent in it: exactly the sum of `by_provider` (and of `by_model`).
    pub spent: Money,
    /// Spent per provider. Spend recorded before schema version 2 has no
    /// breakdown and is listed under the empty name `""`.
    pub by_provider: BTreeMap<String, Money>,
    /// Spent per model (same convention for older spend).
    pub by_model: BTreeMap<String, Money>,
}

/// One change to the stored budgets, as kept in the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRow {
    /// When (Unix ms).
    pub at_ms: u64,
    /// Who made it (an API key's name, `cli`, …).
    pub who: String,
    /// `set`, `remove` or `reset`.
    pub action: String,
    /// The budget's scope.
    pub scope: Scope,
    /// Its period kind.
    pub period: Period,
    /// What changed, for people (the new limit, the amount reset…).
    pub detail: String,
}

/// A fired budget alert, as kept in the alert history.
pub type AlertRecord = Alert;

pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A value's stable text form in a column (`"daily"`, `{"kind":"global"}`…).
pub(crate) fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}
