//! The typed configuration a valid file produces.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use modelfleet_budget::BudgetSpec;
use modelfleet_errors::RetryConfig;
use modelfleet_registry::{ModelSpec, Money};
use modelfleet_selector::{Requirements, Strategy, Weights};
use serde::Serialize;

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Completions, models, explain.
    Client,
    /// Everything, the admin API included.
    Admin,
    /// Read-only metrics.
    Metrics,
}

/// A key clients present as a bearer token; its value is read from an
/// environment variable, never written in the file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiKey {
    /// A name for logs and budgets.
    pub name: String,
    /// The environment variable holding the key.
    pub key_env: String,
    /// What it may do.
    pub role: Role,
    /// A budget of its own, per month.
    pub monthly_budget: Option<Money>,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerSettings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Keys with roles; none means no authentication (loopback only).
    pub api_keys: Vec<ApiKey>,
    /// Largest request body accepted, bytes.
    pub max_body_bytes: u64,
    /// Listen on a non-loopback address without keys (off by default).
    pub allow_unauthenticated_remote: bool,
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreSettings {
    /// The database file (`None`: the default location).
    pub path: Option<PathBuf>,
    /// Rows per write transaction.
    pub batch_rows: usize,
    /// Milliseconds the writer waits to fill a batch.
    pub batch_wait_ms: u64,
    /// fsync on every commit (survives power loss).
    pub sync_full: bool,
}

/// How a provider is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// An OpenAI-compatible HTTP API.
    Openai,
    /// The in-process simulated provider.
    Simulated,
}

/// A tool a provider needs on the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolRequirement {
    /// The executable.
    pub tool: String,
    /// Its minimum version.
    pub min_version: String,
}

/// `[[providers]]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Provider {
    /// Its name, which models reference.
    pub name: String,
    /// How it is reached.
    pub kind: ProviderKind,
    /// For `openai`: the API base, e.g. `https://api.openai.com/v1`.
    pub base_url: Option<String>,
    /// The environment variable holding its API key.
    pub api_key_env: Option<String>,
    /// Connect timeout, ms.
    pub connect_timeout_ms: u64,
    /// Whole-request timeout, ms.
    pub request_timeout_ms: u64,
    /// Tools it needs.
    pub requires: Vec<ToolRequirement>,
}

/// `[[routes]]`: a named set of requirements clients can ask for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    /// Its name (used as the `model` of a request).
    pub name: String,
    /// What the request needs.
    pub requirements: Requirements,
    /// How candidates are ordered.
    pub strategy: Strategy,
    /// An explicit fallback order (model ids), overriding the ranking.
    pub fallbacks: Vec<String>,
}

/// `[cache]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheSettings {
    /// Whether identical non-streaming requests are answered from the cache.
    pub enabled: bool,
    /// How long an entry lives, seconds.
    pub ttl_secs: u64,
    /// Entries at most.
    pub max_entries: u64,
    /// Bytes at most.
    pub max_bytes: u64,
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsSettings {
    /// Whether `/metrics` is served.
    pub enabled: bool,
    /// The sliding throughput window, seconds.
    pub window_secs: u32,
    /// A separate port for scrapers, if any.
    pub port: Option<u16>,
}

/// `[cooldown]` and `[circuit]`, in milliseconds and ratios.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResilienceSettings {
    /// Rate limit without retry-after, ms.
    pub cooldown_short_ms: u64,
    /// Authentication/quota/not-found, ms.
    pub cooldown_long_ms: u64,
    /// First escalating cooldown, ms.
    pub cooldown_escalating_base_ms: u64,
    /// Longest escalating cooldown, ms.
    pub cooldown_escalating_max_ms: u64,
    /// The circuit's window, ms.
    pub circuit_window_ms: u64,
    /// Requests before the ratio counts.
    pub circuit_min_requests: u32,
    /// Failure share that opens the circuit.
    pub circuit_failure_ratio: f64,
    /// How long it stays open, ms.
    pub circuit_open_ms: u64,
    /// Probes while half-open.
    pub circuit_half_open_probes: u32,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// `[server]`.
    pub server: ServerSettings,
    /// `[store]`.
    pub store: StoreSettings,
    /// `[[providers]]`.
    pub providers: Vec<Provider>,
    /// `[[models]]`, as catalog specs.
    pub models: Vec<ModelSpec>,
    /// Explicit fallbacks per model id.
    pub model_fallbacks: BTreeMap<String, Vec<String>>,
    /// Local model directories per model id.
    pub model_paths: BTreeMap<String, PathBuf>,
    /// `[[routes]]`.
    pub routes: Vec<Route>,
    /// `[retry]`.
    #[serde(skip)]
    pub retry: RetryConfig,
    /// `[cooldown]` and `[circuit]`.
    pub resilience: ResilienceSettings,
    /// `[selector.weights]`.
    pub weights: Weights,
    /// `[[budgets]]`.
    pub budgets: Vec<BudgetSpec>,
    /// `[ledger] utc_offset_minutes`.
    pub utc_offset_minutes: i16,
    /// `[cache]`.
    pub cache: CacheSettings,
    /// `[metrics]`.
    pub metrics: MetricsSettings,
}
