//! The simulated provider: per-model latency and failure behaviour, seeded,
//! for demos, tests and benchmarks. No network.

use std::{
    borrow::Borrow,
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use modelfleet_errors::{AttemptCtx, ErrorClass, Failure};
use modelfleet_registry::ModelSpec;

use crate::{ModelResponse, Usage};

/// How one simulated model behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimProfile {
    /// Typical latency before the first token, ms.
    pub latency_ms: f64,
    /// Output speed, tokens per second.
    pub tokens_per_second: f64,
    /// Relative spread of the latency (0: always the same).
    pub spread: f64,
    /// Share of calls three times slower (a tail).
    pub tail: f64,
    /// Share of calls refused with 429 and a retry-after.
    pub rate_limited: f64,
    /// The retry-after those carry, ms.
    pub retry_after_ms: u64,
    /// Share of calls failing with HTTP 500.
    pub server_error: f64,
    /// Share of calls that time out.
    pub timeout: f64,
    /// Share of connections reset.
    pub connection_reset: f64,
}

impl Default for SimProfile {
    /// A healthy cloud model: 400 ms, 80 tokens/s, 0.5% server errors.
    fn default() -> Self {
        SimProfile {
            latency_ms: 400.0,
            tokens_per_second: 80.0,
            spread: 0.3,
            tail: 0.02,
            rate_limited: 0.0,
            retry_after_ms: 1_000,
            server_error: 0.005,
            timeout: 0.0,
            connection_reset: 0.0,
        }
    }
}

/// Simulated models answering in-process, reproducibly from a seed.
///
/// Token counts follow the prompt (output ≈ a quarter of it, capped by the
/// request); a prompt that does not fit the model's context window fails
/// with `context_window_exceeded`, as a real provider would.
#[derive(Debug)]
pub struct Simulator {
    seed: u64,
    calls: AtomicU64,
    default: SimProfile,
    profiles: HashMap<String, SimProfile>,
}

impl Simulator {
    /// Every model behaves as `SimProfile::default()`.
    #[must_use]
    pub fn new(seed: u64) -> Simulator {
        Simulator { seed, calls: AtomicU64::new(0), default: SimProfile::default(), profiles: HashMap::new() }
    }

    /// `model` behaves as `profile`.
    #[must_use]
    pub fn with_profile(mut self, model: &str, profile: SimProfile) -> Simulator {
        self.profiles.insert(model.to_owned(), profile);
        self
    }

    /// Profiles that mirror `models`: local models are slow and never
    /// rate-limited; `deepseek-chat` is flaky (15% server errors, some
    /// resets); `claude-3-haiku` is rate-limited (20% 429s); the cheap small
    /// models are fast; the large ones slower.
    #[must_use]
    pub fn mirroring<M: Borrow<ModelSpec>>(models: &[M], seed: u64) -> Simulator {
        let mut sim = Simulator::new(seed);
        for model in models.iter().map(Borrow::borrow) {
            let base = model.typical_latency_ms.map_or(500.0, f64::from);
            let mut profile = SimProfile { latency_ms: base * 0.6, ..SimProfile::default() };
            if model.local {
                profile = SimProfile {
                    latency_ms: base,
                    tokens_per_second: 18.0,
                    spread: 0.4,
                    server_error: 0.002,
                    ..profile
                };
            }
            match model.id.as_str() {
                "deepseek-chat" => {
                    profile.server_error = 0.15;
                    profile.connection_reset = 0.03;
                    profile.timeout = 0.01;
                }
                "claude-3-haiku" => {
                    profile.rate_limited = 0.2;
                    profile.retry_after_ms = 2_000;
                }
                _ => {}
            }
            sim = sim.with_profile(&model.id, profile);
        }
        sim
    }

    /// The profile `model` follows.
    #[must_use]
    pub fn profile(&self, model: &str) -> SimProfile {
        self.profiles.get(model).copied().unwrap_or(self.default)
    }

    /// One call to `model` with a prompt of `prompt_tokens`, asking for at
    /// most `max_output_tokens` (0: up to 512). Waits the simulated latency
    /// on tokio's clock (pause it to run a simulation in no time).
    pub async fn complete(
        &self,
        model: &ModelSpec,
        prompt_tokens: u32,
        max_output_tokens: u32,
        ctx: AttemptCtx,
    ) -> Result<ModelResponse<String>, Failure> {
        let profile = self.profile(&model.id);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        model.id.hash(&mut hasher);
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let mut rng = fastrand::Rng::with_seed(self.seed ^ hasher.finish() ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let wanted = if max_output_tokens == 0 { 512 } else { max_output_tokens };
        if let Some(window) = model.context_window
            && u64::from(prompt_tokens) + u64::from(wanted) > u64::from(window)
        {
            return Err(Failure::new(
                ErrorClass::ContextWindowExceeded,
                &format!(
                    "This model's maximum context length is {window} tokens; the request needs {}",
                    prompt_tokens + wanted
                ),
            )
            .with_status(400));
        }
        let output = (u64::from(prompt_tokens) / 4 + rng.u64(16..256)).min(u64::from(wanted));
        let mut latency = profile.latency_ms * (1.0 + profile.spread * (rng.f64() - 0.5) * 2.0)
            + output as f64 * 1_000.0 / profile.tokens_per_second.max(1.0);
        if rng.f64() < profile.tail {
            latency *= 3.0;
        }
        let wait = |ms: f64| tokio::time::sleep(Duration::from_secs_f64(ms.max(0.0) / 1_000.0));
        let roll = rng.f64();
        let mut edge = profile.rate_limited;
        if roll < edge {
            wait(30.0).await;
            return Err(Failure::new(ErrorClass::RateLimited, "Rate limit reached for requests")
                .with_status(429)
                .with_retry_after(Duration::from_millis(profile.retry_after_ms)));
        }
        edge += profile.server_error;
        if roll < edge {
            wait(latency * 0.3).await;
            return Err(Failure::new(ErrorClass::ServerError, "The server had an error while processing your request")
                .with_status(500));
        }
        edge += profile.connection_reset;
        if roll < edge {
            wait(5.0).await;
            return Err(Failure::new(ErrorClass::Connection, "connection reset by peer"));
        }
        edge += profile.timeout;
        if roll < edge {
            let limit = ctx.remaining.unwrap_or(Duration::from_secs(30)).min(Duration::from_secs(30));
            tokio::time::sleep(limit).await;
            return Err(Failure::new(ErrorClass::Timeout, "the request timed out"));
        }
        wait(latency).await;
        let usage = Usage::new(u64::from(prompt_tokens), output);
        Ok(ModelResponse { value: format!("[{}] simulated answer, {output} tokens", model.id), usage: Some(usage) })
    }
}
