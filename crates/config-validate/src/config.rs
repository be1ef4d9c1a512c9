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
    /// Requests served at once (streams until they end); beyond, the
    /// gateway sheds load with 503 and `Retry-After` instead of queueing.
    pub max_in_flight: u32,
    /// Listen on a non-loopback address without keys (off by default).
    /// Without keys and without this, the gateway also refuses requests
    /// whose `Host` is not a loopback name or whose `Origin` is foreign.
    pub allow_unauthenticated_remote: bool,
    /// Web origins (`scheme://host[:port]`) that may call the gateway from a
    /// browser: CORS answers them alone, and a keyless gateway accepts their
    /// `Origin`. Empty (the default): no CORS at all. Never `*`.
    pub cors_origins: Vec<String>,
    /// Which addresses ten failed authentications within a minute lock out.
    pub auth_lockout: AuthLockout,
    /// A client must send a request's headers within this, ms (default
    /// 10 s); a slower one is disconnected.
    pub header_read_timeout_ms: u64,
    /// A client must send a request's whole body within this, ms (default
    /// 30 s); a slower one gets 408.
    pub body_read_timeout_ms: u64,
    /// A keep-alive connection with no request for this long is closed, ms
    /// (default 60 s).
    pub idle_timeout_ms: u64,
    /// A non-streamed request is answered within this, ms (default 10 min),
    /// or gets 504; streams are bounded per event instead.
    pub request_timeout_ms: u64,
    /// Open client connections at once (default 4,096); beyond, new ones
    /// are closed at once.
    pub max_connections: u32,
    /// A streamed event must be taken by the client within this, ms
    /// (default 30 s): a client that stops reading is dropped, and charged
    /// for what was generated.
    pub stream_send_timeout_ms: u64,
    /// On shutdown, how long readiness answers 503 while the listener still
    /// accepts, ms (default 2 s), so a load balancer sees it.
    pub drain_grace_ms: u64,
    /// Then how long requests and streams in flight may take to finish, ms
    /// (default 30 s); streams still open are ended with an error event
    /// and charged.
    pub drain_timeout_ms: u64,
    /// Above this share of the memory limit (percent, default 90) the
    /// gateway drops its cache's memory, refuses new work with 503 and
    /// reports itself degraded, until it is below again.
    pub memory_high_percent: u8,
    /// The memory limit, bytes (default: the cgroup's limit, else the
    /// machine's physical memory).
    pub memory_limit_bytes: Option<u64>,
}

/// `[server] auth_lockout`: which client addresses failed authentications
/// lock out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthLockout {
    /// Every address but loopback ones (on this machine every client, and a
    /// reverse proxy on the same host, is 127.0.0.1: one misconfigured
    /// script would lock out all of them). The default.
    #[default]
    Remote,
    /// Every address, loopback included (a machine shared with people who
    /// should not guess keys).
    All,
    /// None: behind a reverse proxy on another host, where every client
    /// shares its address (rate limit at the proxy).
    Off,
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
    /// Days of raw performance rows kept (default 30; 0 keeps them all);
    /// the writer prunes older ones.
    pub retain_days: u32,
    /// Days of hourly aggregates kept (0 keeps them all): reports over
    /// ranges older than `retain_days` read them. At least `retain_days`
    /// (0 when that is 0); unset, 400 or `retain_days` when longer.
    pub aggregate_retain_days: u32,
}

/// How a provider is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// An OpenAI-compatible HTTP API.
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// Google's Gemini API (`generateContent`).
    Gemini,
    /// Azure OpenAI deployments (a model's `upstream` names its deployment).
    Azure,
    /// The in-process simulated provider.
    Simulated,
}

impl ProviderKind {
    /// Every kind.
    pub const ALL: [ProviderKind; 5] = [
        ProviderKind::Openai,
        ProviderKind::Anthropic,
        ProviderKind::Gemini,
        ProviderKind::Azure,
        ProviderKind::Simulated,
    ];

    /// The name written in a config file.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Azure => "azure",
            ProviderKind::Simulated => "simulated",
        }
    }

    /// The API base used when `base_url` is left out (the provider's public
    /// endpoint); `None` where one must be given.
    #[must_use]
    pub const fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Anthropic => Some("https://api.anthropic.com/v1"),
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com/v1beta"),
            ProviderKind::Openai | ProviderKind::Azure | ProviderKind::Simulated => None,
        }
    }
}

/// What a provider does with a request parameter its API has no place for
/// (`unsupported_params`): the translators' own type.
pub use modelfleet_translate::Unsupported;

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
    /// The environment variables holding its API keys (`api_key_env` for
    /// one, `api_key_envs` for several): calls rotate over them, and a key
    /// answered 429 or 401 rests while the others serve.
    pub api_key_envs: Vec<String>,
    /// Static headers sent with every call (e.g. an organisation id).
    pub headers: BTreeMap<String, String>,
    /// A request parameter the provider's API does not take: dropped or refused.
    pub unsupported_params: Unsupported,
    /// `azure`: the `api-version` query parameter.
    pub api_version: Option<String>,
    /// `anthropic`: the `anthropic-version` header (default `2023-06-01`).
    pub anthropic_version: String,
    /// Connect timeout, ms.
    pub connect_timeout_ms: u64,
    /// Whole-request timeout of a non-streamed call, ms.
    pub request_timeout_ms: u64,
    /// A stream's time to its first event, ms (default 120 s).
    pub first_token_timeout_ms: u64,
    /// A stream's longest silence between two events, ms (default 60 s). A
    /// stream has no total limit: a long answer that keeps coming is fine.
    pub stream_idle_timeout_ms: u64,
    /// Whether streamed requests ask for `stream_options.include_usage`
    /// (default true for `openai`; turn off for a compatible server that
    /// refuses it: usage is then estimated).
    pub include_usage: bool,
    /// Whether it serves OpenAI's Responses API (`POST {base}/responses`):
    /// a `/v1/responses` request for one of its models goes there as sent,
    /// its stored conversations and built-in tools included (default false:
    /// translated to chat like every other provider's). `openai` kind only.
    pub responses: bool,
    /// The largest completion body read from it, bytes: a larger answer is
    /// that attempt's failure (the request falls back), never a buffer
    /// without bound. Each streamed event is bounded to 1 MiB.
    pub max_upstream_body_bytes: u64,
    /// Tools it needs.
    pub requires: Vec<ToolRequirement>,
}

/// When a second, parallel attempt (a hedge) is sent to the next candidate
/// while the first is still running: `hedge_after` on a `[[routes]]` or a
/// `[[models]]` entry, milliseconds (1..=600000) or `"p95"` (the model's
/// observed 95th-percentile latency; no hedge while none is known). Off
/// unless configured; the first answer wins and the other attempt is
/// cancelled. The fallback crate's type, so config and executor cannot drift.
pub use modelfleet_fallback::HedgeAfter;

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
    /// `hedge_after`: when to send a parallel attempt to the next candidate
    /// (`None`, the default: never).
    pub hedge: Option<HedgeAfter>,
}

/// `[cluster]`: gateway replicas sharing hard budgets through PostgreSQL,
/// and their ejections through Redis when `redis_url` is set.
#[derive(Clone, PartialEq, Serialize)]
pub struct ClusterSettings {
    /// The PostgreSQL URL, read from `postgres_url`, or from the environment
    /// variable `postgres_url_env` names (a URL with a password belongs
    /// there). Never printed.
    #[serde(skip)]
    pub postgres_url: String,
    /// The schema every shared table lives in.
    pub schema: String,
    /// This replica's name on its holds (default: the host's name and the
    /// process id, at start).
    pub replica: Option<String>,
    /// The longest a call to the shared store may take before a hard
    /// budget refuses (fails closed), ms.
    pub timeout_ms: u64,
    /// How long a hold lives unless settled (a dead replica's then ends), ms.
    pub hold_ttl_ms: u64,
    /// Whether a replica leases slices of its hard budgets and draws its
    /// requests from them (`true`, the default: a hot budget is not
    /// limited by the shared store's transactions per second), or holds
    /// each request in the shared store (`false`: replicas share the last
    /// cents of a budget request by request).
    pub leases: bool,
    /// How long a lease lives unless its replica renews it (it does every
    /// third of this): a dead replica's unused slice returns after it, ms.
    pub lease_ttl_ms: u64,
    /// The Redis URL that shares ejections (cooldowns, open circuits)
    /// between replicas, read from `redis_url`, or from the environment
    /// variable `redis_url_env` names (a URL with a password belongs
    /// there); `None`: each replica ejects on its own. Never printed.
    #[serde(skip)]
    pub redis_url: Option<String>,
    /// The start of every Redis key and channel: lower-case letters,
    /// digits, `_`, `:` and `-`, at most 64 (default `modelfleet`).
    pub redis_prefix: String,
}

impl std::fmt::Debug for ClusterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSettings")
            .field("postgres_url", &"<redacted>")
            .field("schema", &self.schema)
            .field("replica", &self.replica)
            .field("timeout_ms", &self.timeout_ms)
            .field("hold_ttl_ms", &self.hold_ttl_ms)
            .field("leases", &self.leases)
            .field("lease_ttl_ms", &self.lease_ttl_ms)
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<redacted>"))
            .field("redis_prefix", &self.redis_prefix)
            .finish()
    }
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

/// `[cooldown]`, `[circuit]` and `[fallback]`: how failures are handled, in
/// milliseconds, counts and ratios. [`Default`] gives the values a file
/// without these tables gets (each field's doc says its default and range).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResilienceSettings {
    /// `cooldown.short_ms`: rate limited without retry-after, ms
    /// (default 5000, 0..=3600000).
    pub cooldown_short_ms: u64,
    /// `cooldown.long_ms`: authentication, quota, model not found, ms
    /// (default 300000, 0..=86400000).
    pub cooldown_long_ms: u64,
    /// `cooldown.escalating_base_ms`: the ejection of repeated server or
    /// connection failures and timeouts is this times the ejection
    /// multiplier, ms (default 2000, 1..=3600000).
    pub cooldown_escalating_base_ms: u64,
    /// `cooldown.escalating_max_ms`: the longest escalating cooldown, ms
    /// (default 60000, 1..=86400000).
    // Invariant: >= cooldown_escalating_base_ms.
    pub cooldown_escalating_max_ms: u64,
    /// `cooldown.timeouts_to_eject`: consecutive timeouts (not caused by the
    /// request's own deadline) from which each ejects the model
    /// (default 3, 1..=1000).
    pub cooldown_timeouts_to_eject: u32,
    /// `cooldown.request_specific_to_eject`: consecutive authentication or
    /// not-found failures from which each ejects the model for
    /// `cooldown_long_ms`; fewer cause no cooldown (default 3, 1..=1000).
    pub cooldown_request_specific_to_eject: u32,
    /// `cooldown.multiplier_decay_ms`: each full interval without an
    /// ejection, counted from the end of the last one, lowers the ejection
    /// multiplier by one, ms (default 30000, 1..=86400000).
    pub cooldown_multiplier_decay_ms: u64,
    /// `cooldown.streak_decay_ms`: a failure streak whose last failure is
    /// older than this is forgotten, ms (default 30000, 1..=86400000).
    pub cooldown_streak_decay_ms: u64,
    /// `circuit.window_ms`: the circuit's sliding window, ms
    /// (default 30000, 100..=3600000).
    pub circuit_window_ms: u64,
    /// `circuit.min_requests`: requests in the window before the ratio
    /// counts (default 10, 1..=100000).
    pub circuit_min_requests: u32,
    /// `circuit.failure_ratio`: the failure share that opens the circuit
    /// (default 0.5, 0.01..=1).
    pub circuit_failure_ratio: f64,
    /// `circuit.open_ms`: how long it stays open before probing, ms
    /// (default 30000, 100..=3600000).
    pub circuit_open_ms: u64,
    /// `circuit.half_open_probes`: probes allowed while half-open
    /// (default 3, 1..=100).
    pub circuit_half_open_probes: u32,
    /// `circuit.slow_call_ms`: a success at least this slow is a slow call,
    /// ms (default 60000, 1..=3600000).
    pub circuit_slow_call_ms: u64,
    /// `circuit.slow_call_ratio`: the slow-success share that opens the
    /// circuit (default 1.0: only when every call is slow; 0.01..=1).
    pub circuit_slow_call_ratio: f64,
    /// `fallback.max_attempts_per_request`: attempts one request may make
    /// over all models, retries and hedges included (default 6, 1..=100).
    pub max_attempts_per_request: u32,
    /// `fallback.max_ejected_percent`: the largest share of a request's
    /// candidates that cooldowns and open circuits may take out at once,
    /// percent; beyond it the least recently ejected are tried anyway
    /// (default 50, 0..=100).
    pub max_ejected_percent: u8,
    /// `fallback.retry_budget_percent`: retries (hedges included) a provider
    /// may get, as a percent of its requests over the window (default 20.0,
    /// 0..=1000; 20 is one retry per five requests).
    pub retry_budget_percent: f64,
    /// `fallback.retry_budget_min_per_sec`: retries per second a provider
    /// always gets, however little traffic it has (default 1.0, 0..=10000).
    pub retry_budget_min_per_sec: f64,
    /// `fallback.retry_budget_window_ms`: the retry budget's window, ms
    /// (default 10000, 1000..=3600000).
    pub retry_budget_window_ms: u64,
}

impl Default for ResilienceSettings {
    fn default() -> Self {
        ResilienceSettings {
            cooldown_short_ms: 5_000,
            cooldown_long_ms: 300_000,
            cooldown_escalating_base_ms: 2_000,
            cooldown_escalating_max_ms: 60_000,
            cooldown_timeouts_to_eject: 3,
            cooldown_request_specific_to_eject: 3,
            cooldown_multiplier_decay_ms: 30_000,
            cooldown_streak_decay_ms: 30_000,
            circuit_window_ms: 30_000,
            circuit_min_requests: 10,
            circuit_failure_ratio: 0.5,
            circuit_open_ms: 30_000,
            circuit_half_open_probes: 3,
            circuit_slow_call_ms: 60_000,
            circuit_slow_call_ratio: 1.0,
            max_attempts_per_request: 6,
            max_ejected_percent: 50,
            retry_budget_percent: 20.0,
            retry_budget_min_per_sec: 1.0,
            retry_budget_window_ms: 10_000,
        }
    }
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
    /// `hedge_after` per model id, for the models that set it.
    pub model_hedges: BTreeMap<String, HedgeAfter>,
    /// `[[routes]]`.
    pub routes: Vec<Route>,
    /// `[retry]`.
    #[serde(skip)]
    pub retry: RetryConfig,
    /// `[cooldown]`, `[circuit]` and `[fallback]`.
    pub resilience: ResilienceSettings,
    /// `[selector.weights]`.
    pub weights: Weights,
    /// `[[budgets]]`.
    pub budgets: Vec<BudgetSpec>,
    /// `[ledger] utc_offset_minutes`.
    pub utc_offset_minutes: i16,
    /// `[cache]`.
    pub cache: CacheSettings,
    /// `[cluster]`, when replicas share hard budgets.
    pub cluster: Option<ClusterSettings>,
    /// `[metrics]`.
    pub metrics: MetricsSettings,
}

impl Config {
    /// The names of the `kind = "simulated"` providers, in file order.
    #[must_use]
    pub fn simulated_providers(&self) -> Vec<String> {
        self.providers.iter().filter(|p| p.kind == ProviderKind::Simulated).map(|p| p.name.clone()).collect()
    }
}
