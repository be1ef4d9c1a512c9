//! The running mock: [`MockUpstream`] binds the port, mounts every
//! provider's routes, and holds the state the tests script and read (the
//! behaviours, the key policy, the call counts and the recorded requests).

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{Router, http::HeaderMap, routing::post, serve::ListenerExt};
use serde_json::Value;

use crate::{
    anthropic, azure,
    behavior::{Behavior, Fault, KeyPolicy, RateLimits},
    completions, embeddings, gemini, openai, responses,
};

/// The requests kept per model: the latest.
const KEPT: usize = 100;

/// Which API a recorded request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Api {
    /// `POST /v1/chat/completions`.
    OpenAiChat,
    /// `POST /v1/completions` (legacy).
    OpenAiCompletions,
    /// `POST /v1/embeddings`.
    OpenAiEmbeddings,
    /// `POST /v1/responses`.
    OpenAiResponses,
    /// `POST /v1/messages`.
    AnthropicMessages,
    /// `POST /v1beta/models/{model}:generateContent` or `:streamGenerateContent`.
    GeminiGenerate,
    /// `POST /v1beta/models/{model}:batchEmbedContents` or `:embedContent`.
    GeminiEmbed,
    /// `POST /openai/deployments/{deployment}/chat/completions`.
    AzureChat,
    /// `POST /openai/deployments/{deployment}/completions`.
    AzureCompletions,
    /// `POST /openai/deployments/{deployment}/embeddings`.
    AzureEmbeddings,
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Recorded {
    /// The route it came in on.
    pub api: Api,
    /// Its path and query (`/openai/deployments/d/chat/completions?api-version=…`).
    pub uri: String,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Value,
}

#[derive(Debug, Default)]
pub(crate) struct Shared {
    behaviors: Mutex<HashMap<String, Behavior>>,
    hits: Mutex<HashMap<String, u64>>,
    log: Mutex<HashMap<String, VecDeque<Recorded>>>,
    keys: Mutex<KeyPolicy>,
    key_hits: Mutex<HashMap<String, u64>>,
    total: AtomicU64,
    seed: AtomicU64,
    /// Streamed or dripped bodies not yet finished or dropped.
    pub(crate) sending: Arc<AtomicU64>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Counts one call in, and returns its serial number (for ids).
    pub(crate) fn begin(&self) -> u64 {
        self.total.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts and records a call for `model` that presented `key`.
    pub(crate) fn record(&self, model: &str, recorded: Recorded, key: Option<&str>) {
        *lock(&self.hits).entry(model.to_owned()).or_default() += 1;
        {
            let mut log = lock(&self.log);
            let calls = log.entry(model.to_owned()).or_default();
            if calls.len() >= KEPT {
                calls.pop_front();
            }
            calls.push_back(recorded);
        }
        if let Some(key) = key {
            *lock(&self.key_hits).entry(key.to_owned()).or_default() += 1;
        }
    }

    pub(crate) fn keys(&self) -> KeyPolicy {
        lock(&self.keys).clone()
    }

    /// `model`'s behaviour now, without drawing a fault.
    pub(crate) fn behavior(&self, model: &str) -> Behavior {
        lock(&self.behaviors).get(model).cloned().unwrap_or_default()
    }

    pub(crate) fn rate_limits(&self, model: &str) -> Option<RateLimits> {
        lock(&self.behaviors).get(model).and_then(|b| b.rate_limits)
    }

    /// `model`'s behaviour for one call, and the fault this call gets, if any.
    pub(crate) fn draw(&self, model: &str) -> (Behavior, Option<Fault>) {
        let mut behaviors = lock(&self.behaviors);
        let behavior = behaviors.entry(model.to_owned()).or_default();
        let fault = match behavior.fault {
            Some(fault) if behavior.fail_next > 0 => {
                behavior.fail_next -= 1;
                Some(fault)
            }
            Some(fault) if behavior.fault_rate > 0.0 => {
                let n = self.seed.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
                (fastrand::Rng::with_seed(n).f64() < behavior.fault_rate).then_some(fault)
            }
            _ => None,
        };
        (behavior.clone(), fault)
    }
}

/// A running mock upstream. Dropping it stops the server.
#[derive(Debug)]
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat))
        .route("/chat/completions", post(openai::chat))
        .route("/v1/completions", post(completions::openai))
        .route("/completions", post(completions::openai))
        .route("/v1/embeddings", post(embeddings::openai))
        .route("/embeddings", post(embeddings::openai))
        .route("/v1/responses", post(responses::openai))
        .route("/responses", post(responses::openai))
        .route("/v1/messages", post(anthropic::messages))
        .route("/messages", post(anthropic::messages))
        .route("/v1beta/models/{model_action}", post(gemini::models))
        .route("/v1/models/{model_action}", post(gemini::models))
        .route("/models/{model_action}", post(gemini::models))
        .route("/openai/deployments/{deployment}/chat/completions", post(azure::chat))
        .route("/openai/deployments/{deployment}/completions", post(azure::completions))
        .route("/openai/deployments/{deployment}/embeddings", post(azure::embeddings))
        .with_state(shared)
}

impl MockUpstream {
    /// Starts on `127.0.0.1` on a free port.
    pub async fn start() -> io::Result<MockUpstream> {
        MockUpstream::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr) -> io::Result<MockUpstream> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared { seed: AtomicU64::new(0x5eed), ..Shared::default() });
        let app = router(Arc::clone(&shared));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(err) = serve.await {
                eprintln!("mock upstream stopped: {err}");
            }
        });
        Ok(MockUpstream { addr, shared, stop: Some(stop), task: Some(task) })
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL an OpenAI-compatible provider config points at:
    /// `http://127.0.0.1:PORT/v1` (Anthropic's `/v1/messages` and the
    /// Gemini routes under `/v1` answer there too).
    #[must_use]
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The server's root, `http://127.0.0.1:PORT`: the base URL of an
    /// Anthropic provider (which adds `/v1/messages`), a Gemini provider
    /// (which adds `/v1beta/models/…`) or an Azure resource (which adds
    /// `/openai/deployments/…`).
    #[must_use]
    pub fn root_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets how `model` answers from now on.
    pub fn set(&self, model: &str, behavior: Behavior) {
        lock(&self.shared.behaviors).insert(model.to_owned(), behavior);
    }

    /// How `model` answers now.
    #[must_use]
    pub fn behavior(&self, model: &str) -> Behavior {
        self.shared.behavior(model)
    }

    /// The next `n` calls to `model` get `fault`.
    pub fn fail_next(&self, model: &str, fault: Fault, n: u32) {
        let mut behaviors = lock(&self.shared.behaviors);
        let behavior = behaviors.entry(model.to_owned()).or_default();
        behavior.fault = Some(fault);
        behavior.fail_next = n;
    }

    /// Requires `key` (and no other key) on every route, in the
    /// provider's key header (401 otherwise); the rate-limited and revoked
    /// keys stay as they were.
    pub fn require_key(&self, key: &str) {
        lock(&self.shared.keys).accepted = vec![key.to_owned()];
    }

    /// Sets the keys accepted, rate limited and revoked from now on.
    pub fn set_keys(&self, keys: KeyPolicy) {
        *lock(&self.shared.keys) = keys;
    }

    /// The key policy now.
    #[must_use]
    pub fn keys(&self) -> KeyPolicy {
        self.shared.keys()
    }

    /// Calls received for `model` (an Azure deployment counts as a model).
    #[must_use]
    pub fn hits(&self, model: &str) -> u64 {
        lock(&self.shared.hits).get(model).copied().unwrap_or(0)
    }

    /// Calls received that presented `key`, whatever their answer.
    #[must_use]
    pub fn key_hits(&self, key: &str) -> u64 {
        lock(&self.shared.key_hits).get(key).copied().unwrap_or(0)
    }

    /// Calls received in all.
    #[must_use]
    pub fn total_hits(&self) -> u64 {
        self.shared.total.load(Ordering::Relaxed)
    }

    /// Streamed or dripped bodies being sent now: each ends when its last
    /// byte is out or when its client disconnects (then within one chunk
    /// interval), so a test can check that none is left spinning.
    #[must_use]
    pub fn bodies_in_flight(&self) -> u64 {
        self.shared.sending.load(Ordering::Relaxed)
    }

    /// The last request body received for `model`.
    #[must_use]
    pub fn last_request(&self, model: &str) -> Option<Value> {
        self.last_recorded(model).map(|r| r.body)
    }

    /// The headers of the last request received for `model`.
    #[must_use]
    pub fn last_headers(&self, model: &str) -> Option<HeaderMap> {
        self.last_recorded(model).map(|r| r.headers)
    }

    /// The last request received for `model`, whole.
    #[must_use]
    pub fn last_recorded(&self, model: &str) -> Option<Recorded> {
        lock(&self.shared.log).get(model).and_then(|calls| calls.back().cloned())
    }

    /// The requests received for `model`, oldest first (the latest 100).
    #[must_use]
    pub fn recorded(&self, model: &str) -> Vec<Recorded> {
        lock(&self.shared.log).get(model).map(|calls| calls.iter().cloned().collect()).unwrap_or_default()
    }

    /// Stops accepting, finishes what is in flight, and returns.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
