//! The OpenAI-compatible HTTP gateway of modelfleet (`modelfleet serve`).
//!
//! Any application that speaks the OpenAI API points its base URL at the
//! gateway and gets requirement-based selection, fallback, budgets, the
//! response cache and metrics without changing code.
//!
//! | Endpoint | Role | What |
//! |---|---|---|
//! | `POST /v1/chat/completions` | client | `model` is a catalog id (tried first, then its fallbacks or the ranking), a route name, or `auto`; requirements in a `modelfleet` object; `stream: true` relays SSE |
//! | `GET /v1/models` | client | the catalog, the routes and `auto`, in OpenAI's list shape |
//! | `POST /v1/route/explain` | client | the ranking with score breakdowns, rejected models with reasons |
//! | `GET /v1/metrics` | metrics | `?format=json` (default) or `prometheus`, `?category=cache,latency,…` |
//! | `GET /metrics` | metrics | Prometheus 0.0.4 text for scrapers |
//! | `GET /health/live` | none | liveness: `ok`, nothing more |
//! | `GET /health/ready` | any | readiness with every service's health |
//! | `/v1/admin/models[/{id}[/disable,/enable,/history]]`, `/v1/admin/catalog/history`, `/v1/admin/budgets`, `/v1/admin/report` | admin | catalog changes (revisions, `If-Match` and history under `[cluster]`), budget status, reports |
//!
//! **Answers** carry `x-modelfleet-model` (the model that served),
//! `x-modelfleet-attempts` and `x-modelfleet-fallback`, and
//! `x-modelfleet-simulated: true` when a simulated provider gave them;
//! every response but a CORS preflight carries `x-request-id`. Errors use OpenAI's
//! shape, `{"error": {"message", "type", "code"}}`, with sanitized messages;
//! when every candidate failed, the message lists each attempt and why.
//!
//! **Streams**: retries and fallback happen before the first byte reaches
//! the client. Once a stream has started, an upstream failure ends it with an
//! SSE `error` event (`code: stream_interrupted`) and counts as the model's
//! failure — never a silent clean end. The gateway always asks the upstream
//! for usage (`stream_options.include_usage`) and forwards the usage chunk
//! only to clients that asked. A client that disconnects is still charged
//! for the tokens used (the upstream's usage, else an estimate from the text
//! relayed).
//!
//! **Auth**: with `[[server.api_keys]]`, every endpoint but `/health/live`
//! needs a key (`Authorization: Bearer <key>`, `x-api-key` or `api-key`);
//! roles are `client`, `admin` (everything) and `metrics`; ten failed
//! authentications from one address within a minute lock it out with 429
//! (`lockout.rs`; `[server] auth_lockout`). Without keys the gateway binds
//! to loopback only, unless `allow_unauthenticated_remote = true`, and
//! answers this machine only: a foreign `Host` or an `Origin` not in
//! `[server] cors_origins` gets 403 (`guard.rs`). Bodies must be
//! `application/json` (415). Beyond `[server] max_in_flight` requests the
//! gateway sheds load with 503 (`shed.rs`).
//!
//! **Connections** (`serve.rs`, hyper with a timer under the router): a
//! request head must arrive within `header_read_timeout_ms`, a keep-alive
//! connection idle for `idle_timeout_ms` is closed, at most
//! `max_connections` are open. A body must arrive within
//! `body_read_timeout_ms` (408), a non-streamed request is answered within
//! `request_timeout_ms` (504), a stream's client must take each event
//! within `stream_send_timeout_ms` (else it is dropped and charged).
//!
//! **Memory** (`memguard.rs`): every 500 ms the gateway compares its memory
//! with `[server] memory_limit_bytes` (its resident memory), else its
//! cgroup's limit, else physical memory. At `memory_high_percent` (90) of
//! it, the response cache's memory is dropped, new completions get 503
//! `memory_pressure` with `Retry-After: 5`, and `/health/ready` says
//! `degraded` (still 200) — health, metrics, `GET /v1/models` and the
//! admin API are still served — until usage is five points below the mark.
//!
//! **Shutdown**: the future given to [`Gateway::serve`] ends it:
//! `/health/ready` answers 503 for `drain_grace_ms` while requests are
//! still served, then the listener closes and in-flight requests and
//! streams get `drain_timeout_ms`; streams still open then end with an
//! error event and are charged, calls still running are cancelled and
//! charged; the store is flushed, and `serve` returns.
//!
//! ```no_run
//! use modelfleet_gateway::Gateway;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let env = |var: &str| std::env::var(var).ok();
//! let options = modelfleet::config::Options {
//!     env: &env, check_files: false, check_ports: false, check_tools: false, base_dir: ".".into(),
//! };
//! let report = modelfleet::config::validate_file("modelfleet.toml".as_ref(), &options);
//! let config = report.config.ok_or("invalid configuration")?;
//! let gateway = Gateway::bind(&config, &env).await?;
//! println!("listening on {}", gateway.local_addr());
//! gateway.serve(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```

mod app;
mod auth;
mod edge;
#[cfg(test)]
mod fuzz_tests;
mod guard;
mod lang;
mod lockout;
mod memguard;
mod models_admin;
mod request_id;
mod serve;
mod shed;
mod traceparent;
mod upstream;
mod wire;

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use modelfleet::{Fleet, FleetOptions, config::Config};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{app::AppState, auth::Auth, upstream::Upstreams};

/// Why the gateway could not start or stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The configuration cannot be served (the message names the key).
    #[error("{0}")]
    Config(String),
    /// The stack did not start (the store refused its file, …).
    #[error(transparent)]
    Fleet(#[from] modelfleet::FleetError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
}

/// A gateway bound to its address, ready to serve.
pub struct Gateway {
    app: Arc<AppState>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    limits: serve::Limits,
    /// `[server] max_connections` (the API port's).
    max_connections: u32,
    /// `[server] drain_grace_ms`: readiness says 503 while still serving.
    drain_grace: Duration,
    /// `[server] drain_timeout_ms`: what is in flight may take this long.
    drain_timeout: Duration,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("addr", &self.listener.local_addr().ok()).finish_non_exhaustive()
    }
}

/// Where to listen: `listen`, or its loopback twin when no key protects a
/// public address and the config did not allow it.
fn effective_listen(config: &Config) -> SocketAddr {
    let listen = config.server.listen;
    if config.server.api_keys.is_empty() && !listen.ip().is_loopback() && !config.server.allow_unauthenticated_remote {
        let loopback = match listen.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        tracing::warn!(
            configured = %listen,
            "no [[server.api_keys]]: binding loopback only; set allow_unauthenticated_remote = true to expose it anyway"
        );
        return SocketAddr::new(loopback, listen.port());
    }
    listen
}

/// Connections the separate scrape port (`[metrics] port`) holds at once,
/// apart from the API port's `max_connections`: scrapers are few.
const SCRAPE_CONNECTIONS: usize = 64;

/// The file beside database `db` that says, while a gateway serves it,
/// where: `{"url": "http://ADDR", "pid": N}`. The CLI reads it.
#[must_use]
pub fn serving_file(db: &std::path::Path) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".serving");
    std::path::PathBuf::from(name)
}

impl Gateway {
    /// Starts the fleet the configuration describes, connects its providers
    /// (keys read through `env`) and binds the listener (and the separate
    /// metrics port, if set).
    pub async fn bind(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> Result<Gateway, GatewayError> {
        let auth = Auth::from_config(&config.server.api_keys, env).map_err(GatewayError::Config)?;
        let upstreams = Upstreams::from_config(config, env).map_err(GatewayError::Config)?;
        let addr = effective_listen(config);
        let listener = TcpListener::bind(addr).await.map_err(|source| GatewayError::Bind { addr, source })?;
        let metrics_listener = match config.metrics.port.filter(|_| config.metrics.enabled) {
            Some(port) => {
                let addr = SocketAddr::new(addr.ip(), port);
                Some(TcpListener::bind(addr).await.map_err(|source| GatewayError::Bind { addr, source })?)
            }
            None => None,
        };
        let fleet = Fleet::open(FleetOptions::from_config(config)?).await?;
        let app = Arc::new(AppState {
            fleet: Arc::new(fleet),
            upstreams,
            auth,
            routes: config.routes.clone(),
            cache_ttl: config.cache.enabled.then(|| Duration::from_secs(config.cache.ttl_secs)),
            metrics_enabled: config.metrics.enabled,
            max_body: usize::try_from(config.server.max_body_bytes).unwrap_or(usize::MAX),
            draining: AtomicBool::new(false),
            streams: TaskTracker::new(),
            calls: TaskTracker::new(),
            stream_failures: AtomicU64::new(0),
            client_disconnects: AtomicU64::new(0),
            guard: Arc::new(guard::Guard {
                local_only: config.server.api_keys.is_empty() && !config.server.allow_unauthenticated_remote,
                cors_origins: config.server.cors_origins.clone(),
            }),
            lockout: Arc::new(lockout::Lockout::new(config.server.auth_lockout)),
            shed: Arc::new(shed::Shed::new(config.server.max_in_flight)),
            memory: Arc::new(memguard::MemoryGuard::new(
                config.server.memory_high_percent,
                config.server.memory_limit_bytes,
            )),
            deadline: CancellationToken::new(),
            body_read_timeout: Duration::from_millis(config.server.body_read_timeout_ms),
            request_timeout: Duration::from_millis(config.server.request_timeout_ms),
            stream_send_timeout: Duration::from_millis(config.server.stream_send_timeout_ms),
            connections: Arc::new(serve::Counters::default()),
        });
        // Beside the database: where this gateway serves it, so the CLI
        // edits budgets through its admin API instead of behind its back.
        // Written once bound, before anyone is told the address (the
        // listener queues connections until `serve` accepts them); `serve`
        // removes it as it returns, and the CLI takes a marker whose
        // gateway does not answer as stale.
        let bound = listener.local_addr().map_err(GatewayError::Serve)?;
        let marker = serde_json::json!({"url": format!("http://{bound}"), "pid": std::process::id()}).to_string();
        let path = serving_file(app.fleet.store().path());
        let written = tokio::task::spawn_blocking(move || std::fs::write(path, marker)).await;
        if let Err(err) = written.map_err(std::io::Error::other).and_then(|w| w) {
            tracing::warn!(%err, "could not say where this gateway serves its database; the CLI will not find it");
        }
        let limits = serve::Limits {
            header_read: Duration::from_millis(config.server.header_read_timeout_ms),
            idle: Duration::from_millis(config.server.idle_timeout_ms),
            write_stall: Duration::from_millis(config.server.stream_send_timeout_ms),
        };
        Ok(Gateway {
            app,
            listener,
            metrics_listener,
            limits,
            max_connections: config.server.max_connections,
            drain_grace: Duration::from_millis(config.server.drain_grace_ms),
            drain_timeout: Duration::from_millis(config.server.drain_timeout_ms),
        })
    }

    /// The address it listens on (with the real port when 0 was asked).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The fleet behind it (catalog, budgets, monitor, store).
    #[must_use]
    pub fn fleet(&self) -> Arc<Fleet> {
        Arc::clone(&self.app.fleet)
    }

    /// Serves until `shutdown` completes, then drains: `/health/ready`
    /// answers 503 for `drain_grace_ms` while requests are still served (a
    /// load balancer sees it), the listener closes and connections shut
    /// down gracefully, and what is in flight gets `drain_timeout_ms`;
    /// streams still open then end with an error event and are charged,
    /// calls still running are cancelled (and charged as the fleet charges
    /// an abandoned call). The store is flushed before it returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), GatewayError> {
        let Gateway { app, listener, metrics_listener, limits, max_connections, drain_grace, drain_timeout } = self;
        // Watches memory until `serve` returns.
        let _memory = memguard::watch(&app);
        let addr = listener.local_addr().map_err(GatewayError::Serve)?;
        let auth = if app.auth.enabled() { "bearer keys required" } else { "no keys: open to this machine only" };
        tracing::info!(%addr, auth, models = app.fleet.catalog().snapshot().len(), "modelfleet gateway listening on http://{addr}");
        let serving = serving_file(app.fleet.store().path());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let kill = CancellationToken::new();
        // Dropping `serve` (a caller that gives up on it) drops every
        // connection too, not only the accept loops.
        let _kill_on_drop = kill.clone().drop_guard();
        let connections = TaskTracker::new();
        let slots = |n: usize| Arc::new(tokio::sync::Semaphore::new(n.min(tokio::sync::Semaphore::MAX_PERMITS)));
        let shared = serve::Shared {
            slots: slots(usize::try_from(max_connections).unwrap_or(usize::MAX)),
            counters: Arc::clone(&app.connections),
            connections: connections.clone(),
            stop: stop_rx,
            kill: kill.clone(),
        };
        // The scrape port has slots of its own: a flood of connections on
        // the API port must not blind the monitoring that would show it.
        let scrape = serve::Shared { slots: slots(SCRAPE_CONNECTIONS), ..shared.clone() };
        // Aborted if `serve` itself is dropped: nothing keeps listening.
        let accept = |listener, router, shared| {
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(serve::accept(listener, router, limits, shared)))
        };
        let main = accept(listener, app::router(Arc::clone(&app), app.max_body), shared);
        let metrics = metrics_listener.map(|listener| accept(listener, app::metrics_router(Arc::clone(&app)), scrape));
        shutdown.await;
        app.draining.store(true, Ordering::Relaxed);
        tracing::info!(
            grace_ms = drain_grace.as_millis(),
            "shutting down: /health/ready answers 503 while requests are still served"
        );
        tokio::time::sleep(drain_grace).await;
        tracing::info!(
            deadline_ms = drain_timeout.as_millis(),
            "no new connections; finishing requests and streams in flight"
        );
        let _ = stop_tx.send(true);
        let _ = main.await;
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        connections.close();
        app.streams.close();
        app.calls.close();
        let drained = async {
            connections.wait().await;
            app.streams.wait().await;
            app.calls.wait().await;
        };
        if tokio::time::timeout(drain_timeout, drained).await.is_err() {
            tracing::warn!(
                streams = app.streams.len(),
                calls = app.calls.len(),
                connections = connections.len(),
                "the drain deadline passed: ending streams with an error event and cancelling calls (both charged)"
            );
            app.deadline.cancel();
            // Streams and calls settle their books at once on the deadline;
            // then the connections still open are dropped.
            let settled = async {
                app.streams.wait().await;
                app.calls.wait().await;
            };
            if tokio::time::timeout(Duration::from_secs(5), settled).await.is_err() {
                tracing::warn!("streams or calls did not settle within 5 s of the deadline");
            }
            // A moment for clients that read to get their last events (the
            // error event included); then the rest are dropped.
            let _ = tokio::time::timeout(Duration::from_secs(1), connections.wait()).await;
            kill.cancel();
            connections.wait().await;
        }
        let stopped = app.fleet.shutdown().await;
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(serving)).await;
        stopped?;
        tracing::info!("modelfleet gateway stopped; the store is flushed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(server: &str) -> Config {
        let text = format!("[server]\n{server}\n[[providers]]\nname = \"sim\"\nkind = \"simulated\"\n");
        let env = |name: &str| (name == "K").then(|| "secret-0123456789".to_owned());
        let options = modelfleet::config::Options {
            env: &env,
            check_files: false,
            check_ports: false,
            check_tools: false,
            base_dir: ".".into(),
        };
        let report = modelfleet::config::validate(&text, &options);
        let problems = report.to_string();
        report.config.unwrap_or_else(|| panic!("{problems}"))
    }

    #[test]
    fn without_keys_a_public_address_becomes_loopback_unless_allowed() {
        let open = config("listen = \"0.0.0.0:8080\"");
        assert_eq!(effective_listen(&open), SocketAddr::from(([127, 0, 0, 1], 8080)));
        let allowed = config("listen = \"0.0.0.0:8080\"\nallow_unauthenticated_remote = true");
        assert_eq!(effective_listen(&allowed), SocketAddr::from(([0, 0, 0, 0], 8080)));
        let keyed =
            config("listen = \"0.0.0.0:8080\"\n[[server.api_keys]]\nname = \"a\"\nkey_env = \"K\"\nrole = \"client\"");
        assert_eq!(effective_listen(&keyed), SocketAddr::from(([0, 0, 0, 0], 8080)));
        let v6 = config("listen = \"[::]:8080\"");
        assert!(effective_listen(&v6).ip().is_loopback());
    }
}
