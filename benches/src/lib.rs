//! Shared fixtures of the criterion benchmarks under `benches/benches/`.
//!
//! The benchmarks live in their own package so that criterion is compiled
//! once for all of them and no library crate carries it as a dependency.
//! `cargo xtask bench` runs them and compares each median with the targets
//! table in `xtask/src/bench.rs`; CI compiles them (clippy `--all-targets`)
//! but never runs them.

use std::{collections::HashMap, time::Duration};

use modelfleet_errors::ErrorClass;
use modelfleet_monitor::{Monitor, MonitorConfig, Outcome};
use modelfleet_registry::{Capabilities, Category, ModelSpec, Money, Pricing};
use modelfleet_selector::Signals;
use modelfleet_service_registry::{BoxError, BoxFuture, Service};

pub mod load;

/// A service that does nothing, with a name and dependencies.
#[derive(Debug)]
pub struct Noop {
    name: String,
    deps: Vec<String>,
}

impl Noop {
    /// A no-op service called `name` depending on `deps`.
    #[must_use]
    pub fn new(name: String, deps: Vec<String>) -> Noop {
        Noop { name, deps }
    }
}

impl Service for Noop {
    fn name(&self) -> &str {
        &self.name
    }

    fn dependencies(&self) -> Vec<&str> {
        self.deps.iter().map(String::as_str).collect()
    }

    fn start(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async { Ok(()) })
    }
}

/// `n` no-op services in a layered DAG: service `i` depends on up to three of
/// the services before it (`i/2`, `i/3`, `i-1`), so the plan has many layers.
#[must_use]
pub fn layered(n: usize) -> Vec<Noop> {
    (0..n)
        .map(|i| {
            let mut deps: Vec<String> = [i / 2, i / 3, i.wrapping_sub(1)]
                .into_iter()
                .filter(|&d| d < i)
                .map(|d| format!("svc{d:04}"))
                .collect();
            deps.dedup();
            Noop::new(format!("svc{i:04}"), deps)
        })
        .collect()
}

/// `n` varied models (prices, windows, qualities, languages, local or not),
/// deterministic for a given `n`.
#[must_use]
pub fn models(n: usize) -> Vec<ModelSpec> {
    let mut rng = fastrand_like(n as u64);
    (0..n)
        .map(|i| {
            let mut m = ModelSpec::new(format!("model-{i:05}"), ["openai", "anthropic", "mistral", "ollama"][i % 4]);
            m.local = i % 4 == 3;
            m.categories = vec![Category::General, Category::ALL[i % Category::ALL.len()]];
            m.context_window = Some([4_096, 32_000, 128_000, 200_000][(rng() % 4) as usize]);
            m.max_output_tokens = Some(4_096);
            m.quality = Some((rng() % 100) as f64 / 100.0);
            m.typical_latency_ms = Some(200 + (rng() % 3_000) as u32);
            m.priority = (rng() % 100) as u8;
            m.primary_language = Some("en".into());
            m.languages = vec!["en".into(), "fr".into(), "de".into()];
            m.capabilities = Capabilities {
                streaming: true,
                tools: i % 2 == 0,
                json_mode: true,
                vision: i % 3 == 0,
                embeddings: false,
            };
            m.memory_mb = m.local.then_some(4_096);
            if !m.local {
                let cents = i64::try_from(rng() % 1_500).unwrap_or(0);
                m.pricing = Some(Pricing {
                    input_per_mtok: Money::from_nanos(cents * 10_000_000),
                    output_per_mtok: Money::from_nanos(cents * 40_000_000),
                    cached_input_per_mtok: None,
                    cache_write_per_mtok: None,
                    reasoning_per_mtok: None,
                });
            }
            m
        })
        .collect()
}

/// Live signals from the production source: a monitor with its default
/// configuration that has recorded traffic for each model (some failures).
/// By default it tracks 1,024 models (~64 KiB each); beyond that, outcomes
/// pool under `_other` and the remaining models have no live signals.
#[must_use]
pub fn monitor_signals(models: &[ModelSpec]) -> Monitor {
    let monitor = Monitor::new(MonitorConfig::default());
    for (i, m) in models.iter().enumerate() {
        for n in 0..20u64 {
            let outcome = Outcome::success(&m.id, &m.provider, Duration::from_millis(300 + (i as u64 % 50) * 20 + n));
            monitor.record(&if (n + i as u64).is_multiple_of(10) {
                outcome.failed(ErrorClass::ServerError)
            } else {
                outcome
            });
        }
    }
    monitor
}

/// Live signals for every model of `models` in a plain `HashMap`, the
/// simplest source a user might plug in.
#[must_use]
pub fn signals(models: &[ModelSpec]) -> HashMap<String, Signals> {
    models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let signals = Signals {
                samples: 100 + i as u64,
                success_rate: 0.9 + (i % 10) as f64 / 100.0,
                latency_ms: Some(300.0 + (i % 50) as f64 * 20.0),
                in_flight: u32::try_from(i % 7).unwrap_or(0),
                ..Signals::default()
            };
            (m.id.clone(), signals)
        })
        .collect()
}

/// A tiny deterministic generator (`SplitMix64`) so fixtures need no RNG crate.
fn fastrand_like(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
