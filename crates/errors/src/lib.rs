//! The shared error vocabulary of modelfleet: what kind of failure happened,
//! and what to do about it.
//!
//! Every other modelfleet crate depends on this one and on nothing else for
//! failure handling, so it stays small (no internal dependencies, no I/O, no
//! global state):
//!
//! - [`ErrorClass`]: timeout, rate limited, server error, bad request, … with
//!   the handling of each class: [`ErrorClass::retry_same_model`],
//!   [`ErrorClass::fallback`] and [`ErrorClass::cooldown`].
//!   [`classify_response`] maps an HTTP status and an OpenAI-style error body
//!   to a [`Failure`]; [`Classify`] lets any error type take part.
//! - [`RetryPolicy`] and [`retry`]: exponential backoff with full or equal
//!   jitter from a seeded RNG, Retry-After honoured within a cap, a total
//!   deadline, every attempt reported. Time comes from a [`Timer`], so tests
//!   use [`ManualTimer`] and sleep never.
//! - [`DegradationTracker`]: degraded after N consecutive failures, recovered
//!   after M consecutive successes (the response cache uses it).
//! - [`sanitize`]: strips the exact secrets given to [`redact_everywhere`],
//!   API keys, bearer tokens, `Authorization` headers,
//!   secret query values and file paths from any message. Everything shown to
//!   a user or written to a log goes through it.
//!
//! Invariants: classification is total (every status and body gets a class);
//! a [`Failure`]'s message is always sanitized; nothing here sleeps, spawns
//! or reads the wall clock.
//!
//! ```
//! use modelfleet_errors::{classify_response, Classify, CooldownHint, ErrorClass};
//!
//! let body = r#"{"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}"#;
//! let failure = classify_response(429, body, Some("2"));
//! assert_eq!(failure.class(), ErrorClass::RateLimited);
//! assert_eq!(failure.retry_after(), Some(std::time::Duration::from_secs(2)));
//! assert!(failure.class().retry_same_model());
//! assert_eq!(failure.class().cooldown(), CooldownHint::Short);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Feature `tokio` adds `TokioTimer`, the production [`Timer`].

mod class;
mod degrade;
mod retry;
mod sanitize;

#[cfg(feature = "tokio")]
pub use crate::retry::TokioTimer;
pub use crate::{
    class::{
        Classify, CooldownHint, ErrorClass, Failure, UnknownClass, UpstreamFields, classify_response, parse_retry_after,
    },
    degrade::{DegradationConfig, DegradationState, DegradationTracker, Transition},
    retry::{
        AttemptCtx, AttemptRecord, GiveUp, Jitter, ManualTimer, Retried, RetryConfig, RetryError, RetryPolicy, Timer,
        retry,
    },
    sanitize::{MIN_SECRET_CHARS, PATH, REDACTED, redact_everywhere, sanitize},
};

/// The errors of this crate's own API (its configuration).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A [`RetryConfig`] field is out of range.
    #[error("invalid retry config: {field}: {reason}")]
    InvalidRetryConfig {
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}
