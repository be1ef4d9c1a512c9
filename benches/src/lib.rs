//! Shared fixtures of the criterion benchmarks under `benches/benches/`.
//!
//! The benchmarks live in their own package so that criterion is compiled
//! once for all of them and no library crate carries it as a dependency.
//! `cargo xtask bench` runs them and compares each median with the targets
//! table in `xtask/src/bench.rs`; CI compiles them (clippy `--all-targets`)
//! but never runs them.

use modelfleet_service_registry::{BoxError, BoxFuture, Service};

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
