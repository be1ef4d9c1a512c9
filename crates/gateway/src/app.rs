//! The routes and their handlers.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, Path, Query, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use modelfleet::{
    BudgetAdminError, Fleet, FleetError, Opened, ReportQuery, Request, StreamEnd, Usage,
    budget::{BudgetSpec, Period, Scope},
    config::Route,
    errors::{ErrorClass, Failure},
    metrics::Category as MetricsCategory,
    registry::{Capability, ModelSpec, Money},
    service_registry::HealthStatus,
};
use serde_json::{Value, json};

use crate::{
    edge::{self, Edge, Format},
    guard::{self, Guard},
    lang,
    lockout::{self, Lockout},
    memguard::{self, MemoryGuard},
    models_admin, request_id,
    shed::{self, Shed},
    traceparent,
};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument as _;

use crate::{
    auth::{Auth, Caller, Need},
    upstream::{Events, Upstreams, error_of},
    wire::{
        ApiError, ChatRequest, Op, delta_chars, estimate_output, json_response, native_delta_chars, parse_chat,
        parse_completions, parse_embeddings, parse_responses, responses_usage, usage_of,
    },
};

/// Everything the handlers share.
pub(crate) struct AppState {
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) upstreams: Upstreams,
    pub(crate) auth: Auth,
    pub(crate) routes: Vec<Route>,
    /// The cache's time to live, when the response cache is on.
    pub(crate) cache_ttl: Option<Duration>,
    pub(crate) metrics_enabled: bool,
    /// `server.max_body_bytes`.
    pub(crate) max_body: usize,
    pub(crate) draining: AtomicBool,
    pub(crate) streams: TaskTracker,
    /// Non-streamed calls, each in a task of its own: a client that leaves
    /// does not cancel a call the provider will bill anyway (it runs to its
    /// end, bounded by the provider's timeouts, and its usage is charged).
    pub(crate) calls: TaskTracker,
    pub(crate) stream_failures: AtomicU64,
    pub(crate) client_disconnects: AtomicU64,
    /// Who may call (keyless: this machine and listed origins) and CORS.
    pub(crate) guard: Arc<Guard>,
    /// Failed authentications per client address.
    pub(crate) lockout: Arc<Lockout>,
    /// `[server] max_in_flight`: requests served at once.
    pub(crate) shed: Arc<Shed>,
    /// `[server] memory_high_percent`: new work refused near the memory limit.
    pub(crate) memory: Arc<MemoryGuard>,
    /// Cancelled when the drain deadline passes: streams end with an error
    /// event, calls are cancelled, both charged.
    pub(crate) deadline: CancellationToken,
    /// `[server] body_read_timeout_ms`.
    pub(crate) body_read_timeout: Duration,
    /// `[server] request_timeout_ms`: the whole of a non-streamed request.
    pub(crate) request_timeout: Duration,
    /// `[server] stream_send_timeout_ms`: a client must take each event
    /// within this.
    pub(crate) stream_send_timeout: Duration,
    /// Connections open, refused, timed out (`serve.rs`).
    pub(crate) connections: Arc<crate::serve::Counters>,
}

pub(crate) type App = Arc<AppState>;

/// The gateway's routes.
pub(crate) fn router(app: App, max_body_bytes: usize) -> Router {
    let guard = Arc::clone(&app.guard);
    // CORS for the configured origins alone: no origin listed, no CORS.
    let origins: Vec<HeaderValue> = guard.cors_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    let cors = (!origins.is_empty()).then(|| {
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("x-api-key"),
                header::HeaderName::from_static("api-key"),
                header::HeaderName::from_static(request_id::HEADER),
                header::HeaderName::from_static(traceparent::TRACEPARENT),
                header::HeaderName::from_static(traceparent::TRACESTATE),
            ])
            .expose_headers([
                header::HeaderName::from_static(request_id::HEADER),
                header::HeaderName::from_static("x-modelfleet-model"),
                header::HeaderName::from_static("x-modelfleet-simulated"),
                header::HeaderName::from_static("x-modelfleet-attempts"),
                header::HeaderName::from_static("x-modelfleet-fallback"),
                header::HeaderName::from_static("x-modelfleet-cost"),
                header::HeaderName::from_static("x-modelfleet-budget-remaining"),
            ])
    });
    let router = Router::new()
        .route("/v1/chat/completions", post(chat).fallback(only("POST")))
        .route("/v1/messages", post(messages).fallback(only("POST")))
        .route("/v1/responses", post(responses).fallback(only("POST")))
        .route("/v1/completions", post(completions).fallback(only("POST")))
        .route("/v1/embeddings", post(embeddings).fallback(only("POST")))
        .route("/v1/models", get(models).fallback(only("GET, HEAD")))
        .route("/v1/models/{*id}", get(model).fallback(only("GET, HEAD")))
        .route("/v1/route/explain", post(explain).fallback(only("POST")))
        .route("/v1/metrics", get(v1_metrics).fallback(only("GET, HEAD")))
        .route("/metrics", get(prometheus).fallback(only("GET, HEAD")))
        .route("/health/live", get(live).fallback(only("GET, HEAD")))
        .route("/health/ready", get(ready).fallback(only("GET, HEAD")))
        .route("/v1/admin/models", get(models_admin::list).post(models_admin::add).fallback(only("GET, HEAD, POST")))
        .route(
            "/v1/admin/models/{id}",
            get(models_admin::get)
                .put(models_admin::update)
                .delete(models_admin::remove)
                .fallback(only("GET, HEAD, PUT, DELETE")),
        )
        .route("/v1/admin/models/{id}/disable", post(models_admin::disable).fallback(only("POST")))
        .route("/v1/admin/models/{id}/enable", post(models_admin::enable).fallback(only("POST")))
        .route("/v1/admin/models/{id}/history", get(models_admin::model_history).fallback(only("GET, HEAD")))
        .route("/v1/admin/catalog/history", get(models_admin::history).fallback(only("GET, HEAD")))
        .route("/v1/admin/budgets", get(admin_budgets).post(admin_budget_add).fallback(only("GET, HEAD, POST")))
        .route(
            "/v1/admin/budgets/{scope}/{period}",
            get(admin_budget)
                .put(admin_budget_set)
                .delete(admin_budget_remove)
                .fallback(only("GET, HEAD, PUT, DELETE")),
        )
        .route("/v1/admin/budgets/{scope}/{period}/reset", post(admin_budget_reset).fallback(only("POST")))
        .route("/v1/admin/report", get(admin_report).fallback(only("GET, HEAD")))
        .route("/v1/feedback", post(feedback).fallback(only("POST")))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&app), whole_request))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&app.shed), shed::check))
        // Refused under memory pressure before taking a slot; after the
        // guard and the lockout, which say nothing to whom they refuse.
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&app.memory), memguard::check))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&app.lockout), lockout::check))
        // Outermost: the request id, then the guard (guard::check).
        .layer(axum::middleware::from_fn_with_state(guard, guard::check))
        // Outside every refusal (the guard's, the lockout's, shedding, the
        // memory guard, the whole-request limit, 405s): Anthropic's
        // endpoint answers every error in Anthropic's shape.
        .layer(axum::middleware::from_fn(edge::anthropic_errors));
    let router = match cors {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.with_state(app)
}

/// The router serving only `/metrics`, for a separate scrape port.
pub(crate) fn metrics_router(app: App) -> Router {
    // The same guard (a keyless gateway answers this machine only) and the
    // same lockout (metrics keys are keys) as the main port.
    Router::new()
        .route("/metrics", get(prometheus).fallback(only("GET, HEAD")))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&app.lockout), lockout::check))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&app.guard), guard::check))
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", "not_found", "no such endpoint")
}

/// The fallback of an endpoint that takes only `allow`: a 405 saying so.
fn only(allow: &'static str) -> impl Fn(Method) -> std::future::Ready<Response> + Clone + Send + Sync + 'static {
    move |method: Method| std::future::ready(not_allowed(&method, allow))
}

/// 405 with `Allow` listing what the endpoint does take.
fn not_allowed(method: &Method, allow: &'static str) -> Response {
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        format!("{method} is not allowed on this endpoint"),
    )
    .into_response();
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        "request_too_large",
        format!("the request body is larger than the {max} bytes allowed (server.max_body_bytes)"),
    )
}

/// Reads the body under the size limit (413 past it) and the time limit
/// (408 past `server.body_read_timeout_ms`: a client that trickles its
/// body does not hold a slot for free).
pub(crate) async fn read_body(app: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let max = app.max_body;
    match tokio::time::timeout(app.body_read_timeout, axum::body::to_bytes(body, max)).await {
        Ok(read) => read.map_err(|_| too_large(max)),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "request_timeout",
            format!(
                "the request body did not arrive within {} ms (server.body_read_timeout_ms)",
                app.body_read_timeout.as_millis()
            ),
        )),
    }
}

/// The whole-request limit of `server.request_timeout_ms`: 504 past it.
/// A stream is bounded by it until its first byte, then per event
/// (`stream_send_timeout_ms`, and the provider's stream timeouts).
pub(crate) async fn whole_request(
    State(app): State<App>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = app.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            "request_timeout",
            format!("the request was not answered within {} ms (server.request_timeout_ms)", limit.as_millis()),
        )
        .into_response(),
    }
}

impl AppState {
    /// Whether a `/v1/responses` body goes to a provider as sent: some
    /// provider serves the API natively, and the body names a model of
    /// one, or names no catalog model and cannot be translated to chat.
    fn native_responses(&self, bytes: &[u8]) -> bool {
        let unable = self.upstreams.not_serving(Op::Responses);
        if self.upstreams.providers().all(|p| unable.contains(&p.to_owned())) {
            return false;
        }
        let Ok(value) = serde_json::from_slice::<Value>(bytes) else { return false };
        match value.get("model").and_then(Value::as_str).and_then(|id| self.fleet.catalog().get(id)) {
            Some(spec) => !unable.contains(&spec.provider),
            None => modelfleet_translate::responses_request_to_chat(&value).is_err(),
        }
    }

    /// The fleet request a chat request stands for: a route, a model, or `auto`.
    /// Its id and language hint go with it, for the records.
    fn fleet_request(&self, chat: &ChatRequest, caller: &Caller, headers: &HeaderMap) -> Result<Request, ApiError> {
        let mut request = Request {
            requirements: chat.requirements.clone(),
            key: caller.name.clone(),
            request_id: request_id::of_request(headers),
            language_hint: lang::of_chat(&chat.body).map(str::to_owned),
            ..Request::default()
        };
        if chat.model == "auto" {
            return Ok(request);
        }
        if self.routes.iter().any(|r| r.name == chat.model) {
            if chat.extended {
                return Err(ApiError::invalid(
                    "invalid_requirements",
                    format!(
                        "modelfleet: route {:?} has its own requirements; use model \"auto\" to give yours",
                        chat.model
                    ),
                ));
            }
            request.route = Some(chat.model.clone());
        } else {
            // The fleet answers an unknown id with UnknownModel (404 below).
            request.model = Some(chat.model.clone());
        }
        Ok(request)
    }
}

/// An error of the fleet as an HTTP answer.
fn fleet_error(err: FleetError) -> ApiError {
    match err {
        FleetError::BudgetStoreUnavailable(_) => {
            let mut error = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "budget_store_unavailable",
                err.to_string(),
            );
            error.headers.cost = Some(Money::ZERO);
            error
        }
        FleetError::UnknownRoute(name) | FleetError::UnknownModel(name) => ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!("model {name:?} is neither a catalog model, a route nor \"auto\" (GET /v1/models lists them)"),
        ),
        FleetError::NotServed { message, attempts, class, retry_after, cost, budget_remaining, upstream } => {
            let (status, kind, code) = match class {
                None => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "no_model_available"),
                Some(ErrorClass::BadRequest) => (StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_request"),
                Some(ErrorClass::ContextWindowExceeded) => {
                    (StatusCode::BAD_REQUEST, "invalid_request_error", "context_length_exceeded")
                }
                Some(ErrorClass::ContentPolicy) => (StatusCode::BAD_REQUEST, "invalid_request_error", "content_policy"),
                Some(ErrorClass::BudgetExceeded) => {
                    (StatusCode::TOO_MANY_REQUESTS, "budget_exceeded", "budget_exceeded")
                }
                Some(ErrorClass::RateLimited) => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "rate_limited"),
                Some(ErrorClass::Timeout) => (StatusCode::GATEWAY_TIMEOUT, "server_error", "upstream_timeout"),
                Some(_) => (StatusCode::BAD_GATEWAY, "server_error", "upstream_error"),
            };
            let mut error = ApiError::new(status, kind, code, message);
            if status == StatusCode::BAD_REQUEST {
                // The client must change its request: the upstream's own
                // `code` and `param` say how.
                error = error.with_upstream(upstream);
            }
            error.headers.attempts = Some(attempts.len());
            error.headers.cost = Some(cost);
            error.headers.budget_remaining = budget_remaining;
            // Budget refusals: the time to the budget's next period (none
            // for a lifetime budget). No model available: when the first
            // is back. A provider's own Retry-After is not the gateway's to
            // pass on once another model was tried.
            if class.is_none_or(|c| c == ErrorClass::BudgetExceeded) {
                error.headers.retry_after = retry_after;
            }
            error
        }
        FleetError::Budget(admin) => budget_admin_error(&admin),
        FleetError::Catalog(refused) => models_admin::refusal(&refused),
        FleetError::InvalidRequirements(why) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_requirements", why)
        }
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal", other.to_string()),
    }
}

fn budget_admin_error(err: &BudgetAdminError) -> ApiError {
    let (status, code) = match err {
        BudgetAdminError::NotFound { .. } => (StatusCode::NOT_FOUND, "budget_not_found"),
        BudgetAdminError::ReadOnly { .. } => (StatusCode::CONFLICT, "budget_read_only"),
        BudgetAdminError::Shared => (StatusCode::CONFLICT, "budget_shared"),
        BudgetAdminError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "budget_store_unavailable"),
        _ => (StatusCode::BAD_REQUEST, "invalid_budget"),
    };
    ApiError::new(status, "invalid_request_error", code, err.to_string())
}

/// The money headers: what the request cost (exact dollars) and, under a
/// hard budget, what is left of the tightest one that paid.
fn money_headers(response: &mut Response, cost: Money, remaining: Option<Money>) {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&cost.to_string()) {
        headers.insert("x-modelfleet-cost", value);
    }
    if let Some(value) = remaining.and_then(|r| HeaderValue::from_str(&r.to_string()).ok()) {
        headers.insert("x-modelfleet-budget-remaining", value);
    }
}

/// Who served: the model, its attempts, whether a fallback did, and
/// `x-modelfleet-simulated: true` when the model is on a simulated
/// provider (its answer is a stand-in, not a model's).
fn served_headers(app: &AppState, response: &mut Response, model: &str, attempts: usize, fell_back: bool) {
    let simulated = app.fleet.catalog().get(model).is_some_and(|spec| app.upstreams.is_simulated(&spec.provider));
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(model) {
        headers.insert("x-modelfleet-model", value);
    }
    if simulated {
        headers.insert("x-modelfleet-simulated", HeaderValue::from_static("true"));
    }
    headers.insert("x-modelfleet-attempts", HeaderValue::from(attempts));
    headers.insert("x-modelfleet-fallback", HeaderValue::from_static(if fell_back { "true" } else { "false" }));
}

async fn chat(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    chat_in(&app, &headers, body, Format::Chat, Op::Chat).await
}

/// `POST /v1/messages`: Anthropic's Messages API over the chat path (any
/// provider behind it), errors in Anthropic's shape.
async fn messages(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    chat_in(&app, &headers, body, Format::Anthropic, Op::Chat).await
}

/// `POST /v1/responses`: OpenAI's Responses API, passed through as sent to
/// the providers that serve it natively (`responses = true`) when the
/// request names one of their models or needs what translation cannot
/// carry (stored state, built-in tools); otherwise over the chat path,
/// translated at the edge.
async fn responses(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    if let Err(error) = app.auth.check(&headers, Need::Client) {
        return error.into_response();
    }
    let bytes = match read_body(&app, body).await {
        Ok(bytes) => bytes,
        Err(error) => return error.into_response(),
    };
    if app.native_responses(&bytes) {
        chat_in(&app, &headers, Body::from(bytes), Format::Chat, Op::Responses).await
    } else {
        chat_in(&app, &headers, Body::from(bytes), Format::Responses, Op::Chat).await
    }
}

/// `POST /v1/completions`: legacy text completions, served by the
/// OpenAI-compatible providers (others are excluded).
async fn completions(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    chat_in(&app, &headers, body, Format::Chat, Op::Completions).await
}

/// `POST /v1/embeddings`: served by embedding models only.
async fn embeddings(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    chat_in(&app, &headers, body, Format::Chat, Op::Embeddings).await
}

/// A request asked for in `format` for `op`: translated to OpenAI's format,
/// served, and the answer translated back (errors: see
/// [`edge::anthropic_errors`]).
async fn chat_in(app: &App, headers: &HeaderMap, body: Body, format: Format, op: Op) -> Response {
    let response = match chat_inner(app, headers, body, format, op).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    format.response(response, MAX_ANSWER_BYTES).await
}

/// The largest chat answer translated into another client format (an
/// upstream's own bound is `max_upstream_body_bytes`, 32 MiB by default).
const MAX_ANSWER_BYTES: usize = 1 << 30;

/// Runs a non-streamed call in a task of its own: if the client leaves,
/// hyper drops the handler (or the whole-request limit answers 504), but
/// the call (which the provider bills) runs to its end, bounded by the
/// provider's timeouts, and is charged what the upstream reports. `None`
/// when the drain deadline cancelled it.
fn spawn_call(
    app: &App,
    chat: &ChatRequest,
    request: &Request,
) -> tokio::task::JoinHandle<Option<Result<modelfleet::Served<Bytes>, FleetError>>> {
    let app = Arc::clone(app);
    let chat = Arc::new(chat.clone());
    let request = request.clone();
    app.calls.clone().spawn(
        async move {
            let upstreams = &app.upstreams;
            let chat = &*chat;
            let fleet = &*app.fleet;
            let call = app
                .fleet
                .call(&request, |model, ctx| async move { upstreams.complete(&model, chat, ctx, fleet).await });
            tokio::select! {
                served = call => Some(served),
                // The drain deadline: the call is dropped, and the fleet
                // charges an abandoned call as it always does.
                () = app.deadline.cancelled() => None,
            }
        }
        // Its logs name the request (x-request-id), as the handler's do.
        .in_current_span(),
    )
}

/// The request `bytes` stand for on `op`'s endpoint, checked, and what the
/// fleet is asked: providers without the endpoint excluded, a route's cap
/// filled in.
fn prepare(
    app: &App,
    headers: &HeaderMap,
    bytes: &[u8],
    caller: &Caller,
    op: Op,
) -> Result<(ChatRequest, Request), ApiError> {
    let mut chat = match op {
        Op::Chat => parse_chat(bytes)?,
        Op::Completions => parse_completions(bytes)?,
        Op::Embeddings => parse_embeddings(bytes)?,
        Op::Responses => parse_responses(bytes)?,
    };
    chat.trace = traceparent::of(headers);
    let mut request = app.fleet_request(&chat, caller, headers)?;
    // Providers whose kind has no such endpoint never get the request; a
    // model named on one is refused saying so.
    let unable = app.upstreams.not_serving(op);
    if let Some(spec) = request.model.as_deref().and_then(|id| app.fleet.catalog().get(id))
        && unable.contains(&spec.provider)
    {
        return Err(ApiError::invalid(
            "unsupported_endpoint",
            format!(
                "model {:?} is served by provider {:?}, which has no {} endpoint",
                spec.id,
                spec.provider,
                op.name()
            ),
        ));
    }
    for provider in unable {
        if !request.requirements.exclude_providers.contains(&provider) {
            request.requirements.exclude_providers.push(provider);
        }
    }
    if let Some(route) = &request.route {
        let resolved = app.fleet.requirements(&request).map_err(fleet_error)?;
        if op != Op::Embeddings && resolved.capabilities.contains(&Capability::Embeddings) {
            return Err(ApiError::invalid(
                "unsupported_endpoint",
                format!("route {route:?} serves embeddings requests only"),
            ));
        }
        if op != Op::Embeddings && chat.requirements.max_output_tokens == 0 {
            // The client sent no cap; the route's caps each answer, and the
            // hold assumes it: it goes upstream with the request.
            let cap = resolved.max_output_tokens;
            chat.cap = (cap > 0).then_some(cap);
        }
    }
    Ok((chat, request))
}

async fn chat_inner(app: &App, headers: &HeaderMap, body: Body, format: Format, op: Op) -> Result<Response, ApiError> {
    let caller = app.auth.check(headers, Need::Client)?;
    let bytes = format.request(read_body(app, body).await?)?;
    let (chat, request) = prepare(app, headers, &bytes, &caller, op)?;
    if chat.stream {
        return stream_chat(app, chat, &request, format).await;
    }
    // The cache serves and keeps only what a client did not opt out of:
    // `cache-control: no-cache` (or `no-store`) or `modelfleet.cache = false`.
    let opted_out = headers.get(header::CACHE_CONTROL).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(',').any(|d| matches!(d.trim().to_ascii_lowercase().as_str(), "no-cache" | "no-store"))
    });
    let cache = app.cache_ttl.filter(|_| chat.use_cache && !opted_out).map(|ttl| (ttl, cache_key(&chat, &caller)));
    if let Some((_, key)) = cache {
        let fleet = Arc::clone(&app.fleet);
        // A SQLite read: on the blocking pool, never on a worker.
        let hit = tokio::task::spawn_blocking(move || fleet.store().cache_get(&key))
            .await
            .unwrap_or_else(|e| Err(modelfleet::store::Error::Write(e.to_string())));
        match hit {
            Ok(Some(hit)) => {
                // Made under the spec the model has now, or it is stale.
                let current = hit
                    .get("model")
                    .and_then(Value::as_str)
                    .and_then(|model| app.fleet.catalog().get(model))
                    .map(|spec| spec_fingerprint(&spec));
                let fresh = current.is_some() && hit.get("spec").and_then(Value::as_str) == current.as_deref();
                if fresh {
                    app.fleet.metrics().record_cache_hit();
                } else {
                    app.fleet.metrics().record_cache_miss();
                }
                if let (true, Some(model), Some(body)) =
                    (fresh, hit.get("model").and_then(Value::as_str), hit.get("body"))
                {
                    let mut response = json_response(StatusCode::OK, body);
                    served_headers(app, &mut response, model, 0, false);
                    money_headers(&mut response, Money::ZERO, None);
                    response.headers_mut().insert("x-modelfleet-cache", HeaderValue::from_static("hit"));
                    return Ok(response);
                }
            }
            Ok(None) => app.fleet.metrics().record_cache_miss(),
            Err(err) => {
                app.fleet.metrics().record_cache_miss();
                tracing::warn!(%err, "response cache read failed; answering without it");
            }
        }
    }
    // The catalog as the call starts: an answer of a model whose spec
    // changes meanwhile is not cached (the change dropped its entries; this
    // answer was made under the old spec).
    let catalog_before = cache.is_some().then(|| app.fleet.catalog().snapshot());
    // The call runs in a task of its own: if the client leaves, hyper drops
    // this handler (or the whole-request limit answers 504), but the call
    // (which the provider bills) runs to its end, bounded by the provider's
    // timeouts, and is charged what the upstream reports.
    let call = spawn_call(app, &chat, &request);
    let served = call
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal", e.to_string()))?
        .ok_or_else(shutting_down)?
        .map_err(fleet_error)?;
    // Only a real answer is kept (a simulated provider's is a stand-in),
    // with the fingerprint of the spec it was made under: a read under
    // another spec is a miss, however the change and this write interleave.
    let made_under = catalog_before
        .as_ref()
        .and_then(|before| before.get(&served.model))
        .filter(|spec| !app.upstreams.is_simulated(&spec.provider))
        .map(|spec| spec_fingerprint(spec));
    if let (Some((ttl, key)), Some(fingerprint)) = (cache, made_under)
        && let Ok(body) = serde_json::from_slice::<Value>(&served.value)
        && let Err(err) = app.fleet.store().cache_put(
            key,
            &served.model,
            &json!({"model": served.model, "spec": fingerprint, "body": body}),
            ttl,
        )
    {
        tracing::warn!(%err, "could not cache a response");
    }
    let mut response = (StatusCode::OK, served.value).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    served_headers(app, &mut response, &served.model, served.attempts.len(), served.fell_back);
    money_headers(&mut response, served.cost, served.budget_remaining);
    if cache.is_some() {
        response.headers_mut().insert("x-modelfleet-cache", HeaderValue::from_static("miss"));
    }
    Ok(response)
}

/// What a cached answer was made under: a digest of its model's spec,
/// timestamps left out (touching a spec without changing it keeps its
/// answers).
fn spec_fingerprint(spec: &ModelSpec) -> String {
    use sha2::Digest;
    let mut bare = spec.clone();
    bare.created_at_ms = 0;
    bare.updated_at_ms = 0;
    let digest = sha2::Sha256::digest(serde_json::to_vec(&bare).unwrap_or_default());
    digest.iter().take(16).fold(String::with_capacity(32), |mut hex, b| {
        use std::fmt::Write;
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// The answer to a request the drain deadline cut.
fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "shutting_down",
        "the gateway is shutting down and its drain deadline passed (server.drain_timeout_ms): retry",
    )
}

/// The cache key: the request as the model sees it, the route or model
/// asked for, the requirements, and the caller (answers are never shared
/// between keys).
fn cache_key(chat: &ChatRequest, caller: &Caller) -> [u8; 32] {
    modelfleet::store::cache_key(&json!({
        "endpoint": chat.op.endpoint(),
        "model": chat.model,
        "body": chat.body,
        "requirements": chat.requirements,
        "key": caller.name,
    }))
}

async fn stream_chat(app: &App, chat: ChatRequest, request: &Request, format: Format) -> Result<Response, ApiError> {
    let upstreams = &app.upstreams;
    let chat_ref = &chat;
    let served = app
        .fleet
        .call_stream(request, |model, ctx| async move { upstreams.open(&model, chat_ref, ctx, &app.fleet).await })
        .await
        .map_err(fleet_error)?;
    let Opened { stream, settlement } = served.value;
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    let native = chat.op == Op::Responses;
    let echoes = chat.op == Op::Completions && chat.body.get("echo") == Some(&Value::Bool(true));
    let prompt_tokens = u64::from(chat.requirements.prompt_tokens);
    let pump = Pump {
        app: Arc::clone(app),
        include_usage: chat.include_usage,
        prompt_tokens,
        native,
        echo: if echoes { prompt_tokens.saturating_mul(u64::from(chat.requirements.choices())) } else { 0 },
        edge: if native {
            Edge::Native
        } else {
            format.stream(&served.model, u64::from(chat.requirements.prompt_tokens))
        },
    };
    app.streams.spawn(pump.run(stream, settlement, tx).in_current_span());
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|bytes| (Ok::<Bytes, Infallible>(bytes), rx))
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    served_headers(app, &mut response, &served.model, served.attempts.len(), served.fell_back);
    // A stream's own cost is known only when it ends: the header says what
    // was charged before it opened (failed attempts the provider bills), and
    // the budget left with the stream's worst case still held.
    money_headers(&mut response, served.cost, served.budget_remaining);
    Ok(response)
}

/// Moves a stream's events to the client and settles its accounting.
struct Pump {
    app: App,
    include_usage: bool,
    prompt_tokens: u64,
    /// A Responses API stream passed through: it ends with
    /// `response.completed` (or `.incomplete`), which carries its usage.
    native: bool,
    /// Output tokens a stream may relay beyond its hold's bound: a legacy
    /// completion with `echo` repeats its prompt(s) in its text.
    echo: u64,
    /// The client's format: chunks become its events.
    edge: Edge,
}

impl Pump {
    /// Sends one event; false when the client is gone, stopped reading for
    /// `stream_send_timeout_ms` (it is dropped, and charged, instead of
    /// holding its budget and the upstream socket), or the drain deadline
    /// came.
    async fn send(&self, tx: &mpsc::Sender<Bytes>, event: Bytes) -> bool {
        tokio::select! {
            sent = tokio::time::timeout(self.app.stream_send_timeout, tx.send(event)) => matches!(sent, Ok(Ok(()))),
            () = self.app.deadline.cancelled() => false,
        }
    }

    /// Sends one chunk's data as the client's events; false as [`Pump::send`].
    async fn relay(&mut self, tx: &mpsc::Sender<Bytes>, data: &str) -> bool {
        for event in self.edge.events(data) {
            if !self.send(tx, event).await {
                return false;
            }
        }
        true
    }

    async fn run(mut self, mut events: Events, settlement: modelfleet::Settlement, tx: mpsc::Sender<Bytes>) {
        let mut usage: Option<Usage> = None;
        let mut chars = 0usize;
        let bound = settlement.output_bound();
        let end = loop {
            let next = tokio::select! {
                next = events.next() => next,
                () = tx.closed() => break StreamEnd::ClientGone,
                () = self.app.deadline.cancelled() => break StreamEnd::ClientGone,
            };
            let data = match next {
                Ok(Some(data)) => data,
                Ok(None) => {
                    break StreamEnd::Failed(Failure::new(
                        ErrorClass::Connection,
                        if self.native {
                            "the upstream stream ended before response.completed"
                        } else {
                            "the upstream stream ended before [DONE]"
                        },
                    ));
                }
                Err(failure) => break StreamEnd::Failed(failure),
            };
            if !self.native && data.trim() == "[DONE]" {
                if !self.relay(&tx, "[DONE]").await {
                    break StreamEnd::ClientGone;
                }
                break StreamEnd::Completed;
            }
            // Each event is parsed once, for everything read from it.
            let value = serde_json::from_str::<Value>(&data).ok();
            if let Some(failure) = value.as_ref().and_then(error_of) {
                break StreamEnd::Failed(failure);
            }
            let mut forward = true;
            let mut last = false;
            let mut name = None;
            if let Some(value) = &value {
                if self.native {
                    let kind = value.get("type").and_then(Value::as_str);
                    chars += native_delta_chars(value);
                    last = matches!(kind, Some("response.completed" | "response.incomplete"));
                    if last {
                        usage = value.pointer("/response/usage").and_then(responses_usage);
                    }
                    name = kind;
                } else {
                    chars += delta_chars(value);
                    if let Some(u) = usage_of(value) {
                        usage = Some(u);
                        // The gateway always asks for usage; the client gets it only if it asked.
                        let usage_only = value.get("choices").and_then(Value::as_array).is_some_and(Vec::is_empty);
                        forward = self.include_usage || !usage_only;
                    }
                }
            }
            if bound.is_some_and(|most| estimate_output(chars) > most.saturating_add(self.echo)) {
                // An upstream that ignores the cap would stream past the hold.
                break StreamEnd::Failed(Failure::new(
                    ErrorClass::ServerError,
                    "the upstream streamed past the output limit the request was held to",
                ));
            }
            let relayed = if self.native {
                self.send(&tx, Edge::native_event(name, &data)).await
            } else {
                !forward || self.relay(&tx, &data).await
            };
            if !relayed {
                break StreamEnd::ClientGone;
            }
            if last {
                break StreamEnd::Completed;
            }
        };
        // The upstream is closed at once, before the books are settled.
        drop(events);
        let cut = self.app.deadline.is_cancelled() && end != StreamEnd::Completed;
        if let StreamEnd::Failed(failure) = &end {
            self.app.stream_failures.fetch_add(1, Ordering::Relaxed);
            let message = format!("the upstream failed mid-stream: {failure}");
            let event = self.edge.error(&modelfleet::errors::sanitize(&message), "stream_interrupted");
            let _ = self.send(&tx, event).await;
        } else if cut {
            // The drain deadline: not the model's failure (settled as a
            // stream its client left, charged what was generated), but the
            // client is told, behind what it has not read yet; one that
            // stopped reading is not waited on for long.
            let message = "the gateway is shutting down and its drain deadline passed (server.drain_timeout_ms)";
            let _ = tokio::time::timeout(LAST_WORD, tx.send(self.edge.error(message, "shutting_down"))).await;
        } else if end == StreamEnd::ClientGone {
            self.app.client_disconnects.fetch_add(1, Ordering::Relaxed);
        }
        // The upstream's usage, else the prompt plus the tokens relayed; a
        // Responses stream may have reasoned unseen, so without its usage
        // it is charged all the output it was held for.
        let output = if self.native { bound.unwrap_or(0).max(estimate_output(chars)) } else { estimate_output(chars) };
        let usage = usage.unwrap_or(Usage::new(self.prompt_tokens, output));
        let cost = settlement.finish(usage, &end).await;
        tracing::debug!(?end, %cost, cut, "stream settled");
    }
}

/// How long a stream ended by the drain deadline waits for its client to
/// take the error event (the connections are dropped after).
const LAST_WORD: Duration = Duration::from_secs(1);

/// What a client may name as `model`: the enabled catalog models, the
/// routes and `auto`, as OpenAI's model objects.
fn model_objects(app: &AppState) -> Vec<Value> {
    let mut data: Vec<Value> = app
        .fleet
        .catalog()
        .list()
        .iter()
        .filter(|m| m.enabled)
        .map(|m| json!({"id": m.id, "object": "model", "created": m.created_at_ms / 1000, "owned_by": m.provider}))
        .collect();
    data.extend(
        app.routes
            .iter()
            .map(|r| json!({"id": r.name, "object": "model", "created": 0, "owned_by": "modelfleet-route"})),
    );
    data.push(json!({"id": "auto", "object": "model", "created": 0, "owned_by": "modelfleet"}));
    data
}

async fn models(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiError> {
    app.auth.check(&headers, Need::Client)?;
    Ok(json_response(StatusCode::OK, &json!({"object": "list", "data": model_objects(&app)})))
}

/// `GET /v1/models/{id}`: one of [`models`]'s objects (an id may hold
/// slashes, as `org/model` does), or 404 in OpenAI's shape.
async fn model(State(app): State<App>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, ApiError> {
    app.auth.check(&headers, Need::Client)?;
    model_objects(&app).into_iter().find(|m| m["id"] == id.as_str()).map_or_else(
        || {
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
                format!(
                    "model {:?} is neither an enabled catalog model, a route nor \"auto\" (GET /v1/models lists them)",
                    modelfleet::errors::sanitize(&id)
                ),
            ))
        },
        |object| Ok(json_response(StatusCode::OK, &object)),
    )
}

async fn explain(State(app): State<App>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let caller = app.auth.check(&headers, Need::Client)?;
    let bytes = read_body(&app, body).await?;
    let mut value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid("invalid_json", format!("the request body is not valid JSON: {e}")))?;
    let Some(object) = value.as_object_mut() else {
        return Err(ApiError::invalid("invalid_json", "the request body must be a JSON object"));
    };
    object.entry("model").or_insert_with(|| json!("auto"));
    object.entry("messages").or_insert_with(|| json!([{"role": "user", "content": ""}]));
    let chat = parse_chat(&serde_json::to_vec(&value).unwrap_or_default())?;
    let request = app.fleet_request(&chat, &caller, &headers)?;
    let (text, explanation) = app.fleet.explain(&request).map_err(fleet_error)?;
    // The explanation's `ranked` (scores and breakdowns) and `rejected` (reasons), plus what was asked.
    let mut body = json!({"model": chat.model, "requirements": request.requirements, "text": text});
    if let (Some(body), Value::Object(parts)) = (body.as_object_mut(), explanation) {
        body.extend(parts);
    }
    Ok(json_response(StatusCode::OK, &body))
}

fn parse_categories(query: &HashMap<String, String>) -> Result<Vec<MetricsCategory>, ApiError> {
    match query.get("category").map(String::as_str) {
        None | Some("") => Ok(MetricsCategory::ALL.to_vec()),
        Some(list) => {
            MetricsCategory::parse_list(list).map_err(|e| ApiError::invalid("invalid_category", e.to_string()))
        }
    }
}

impl AppState {
    fn metrics_now(&self) {
        let metrics = self.fleet.metrics();
        let gauges = [
            ("modelfleet_gateway_streams_open", "Streams being relayed now.", self.streams.len() as f64),
            (
                "modelfleet_gateway_stream_failures_total",
                "Streams ended by an upstream failure after they started (an error event was sent).",
                self.stream_failures.load(Ordering::Relaxed) as f64,
            ),
            (
                "modelfleet_gateway_auth_failures_total",
                "Requests refused for a missing or unknown API key (401), by any address.",
                self.lockout.failures.load(Ordering::Relaxed) as f64,
            ),
            (
                "modelfleet_store_writes_dropped_total",
                "Performance rows, alerts and cache entries the database refused twice (spend is never dropped).",
                self.fleet.store().write_counts().1 as f64,
            ),
            (
                "modelfleet_cache_corrupted_total",
                "Response cache entries found corrupted (checksum, encoding or JSON), removed and answered as misses.",
                self.fleet.store().cache_stats().corrupted as f64,
            ),
            (
                "modelfleet_gateway_client_disconnects_total",
                "Streams whose client went away before the end (the tokens used were still charged).",
                self.client_disconnects.load(Ordering::Relaxed) as f64,
            ),
            (
                "modelfleet_gateway_connections_open",
                "Client connections open now.",
                self.connections.open.load(Ordering::Relaxed) as f64,
            ),
            (
                "modelfleet_gateway_connections_refused_total",
                "Connections closed at once because server.max_connections were open.",
                self.connections.refused.load(Ordering::Relaxed) as f64,
            ),
            (
                "modelfleet_gateway_header_timeouts_total",
                "Connections closed because a request head did not arrive within server.header_read_timeout_ms.",
                self.connections.header_timeouts.load(Ordering::Relaxed) as f64,
            ),
            (
                "modelfleet_gateway_write_stalls_total",
                "Connections closed because the client took nothing for server.stream_send_timeout_ms.",
                self.connections.write_stalls.load(Ordering::Relaxed) as f64,
            ),
            (
                "modelfleet_gateway_idle_closed_total",
                "Keep-alive connections closed after server.idle_timeout_ms without a request.",
                self.connections.idle_closed.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, help, value) in gauges.into_iter().chain(self.memory.gauges()) {
            let _ = metrics.set_gauge(name, help, value);
        }
        self.cluster_metrics(metrics);
    }

    /// The shared stores' gauges (`[cluster]`), as this replica sees them.
    fn cluster_metrics(&self, metrics: &modelfleet::metrics::Metrics) {
        if let Some(cluster) = self.fleet.cluster_status() {
            let cluster_gauges = [
                (
                    "modelfleet_cluster_store_up",
                    "1 when the shared budget store ([cluster]) answers; 0 while it does not and hard budgets refuse.",
                    if cluster.reachable { 1.0 } else { 0.0 },
                ),
                (
                    "modelfleet_cluster_ledger_calls_total",
                    "Calls (transactions) this replica made to the shared budget store.",
                    cluster.ledger_calls as f64,
                ),
                (
                    "modelfleet_cluster_ledger_failures_total",
                    "Calls to the shared budget store that found it unreachable or timed out.",
                    cluster.ledger_failures as f64,
                ),
                (
                    "modelfleet_cluster_ledger_seconds_total",
                    "Time spent in calls to the shared budget store (over calls_total: the mean latency).",
                    cluster.ledger_seconds,
                ),
                ("modelfleet_cluster_leases_open", "Budget leases this replica holds now.", cluster.leases_open as f64),
                (
                    "modelfleet_cluster_records_shipped_total",
                    "Requests whose records this replica shipped to the fleet's history in PostgreSQL.",
                    cluster.records_shipped as f64,
                ),
                (
                    "modelfleet_cluster_records_dropped_total",
                    "Requests whose records were dropped before reaching the fleet's history (kept locally).",
                    cluster.records_dropped as f64,
                ),
                (
                    "modelfleet_cluster_records_pending",
                    "Requests whose records wait to be shipped to the fleet's history.",
                    cluster.records_pending as f64,
                ),
                (
                    "modelfleet_cluster_catalog_revision",
                    "The shared catalog's revision this replica serves (equal on every replica once an edit reached all).",
                    cluster.catalog_revision as f64,
                ),
            ];
            for (name, help, value) in cluster_gauges {
                let _ = metrics.set_gauge(name, help, value);
            }
            if let Some(up) = cluster.redis_reachable {
                let _ = metrics.set_gauge(
                    "modelfleet_cluster_redis_up",
                    "1 when Redis ([cluster] redis_url) answers; 0 while ejections stay local to this replica.",
                    if up { 1.0 } else { 0.0 },
                );
            }
        }
    }
}

fn prometheus_response(text: String) -> Response {
    let mut response = (StatusCode::OK, text).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

async fn v1_metrics(
    State(app): State<App>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    app.auth.check(&headers, Need::Metrics)?;
    if !app.metrics_enabled {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "metrics_disabled",
            "metrics are off ([metrics] enabled = false)",
        ));
    }
    let categories = parse_categories(&query)?;
    app.metrics_now();
    let prometheus = match query.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("prometheus") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "invalid_format",
                format!("format: expected json or prometheus, got {other:?}"),
            ));
        }
    };
    // The memory category reads /proc: on the blocking pool.
    off_worker(&app, move |app| {
        Ok(if prometheus {
            prometheus_response(app.fleet.metrics_prometheus(&categories))
        } else {
            json_response(StatusCode::OK, &app.fleet.metrics_json(&categories))
        })
    })
    .await
}

/// Runs `work` on the blocking pool: what reads `/proc` or writes SQLite
/// (catalog changes are persisted as they happen) never runs on a worker.
async fn off_worker(
    app: &App,
    work: impl FnOnce(&AppState) -> Result<Response, ApiError> + Send + 'static,
) -> Result<Response, ApiError> {
    let app = Arc::clone(app);
    tokio::task::spawn_blocking(move || work(&app))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal", e.to_string()))?
}

async fn prometheus(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiError> {
    app.auth.check(&headers, Need::Metrics)?;
    if !app.metrics_enabled {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "metrics_disabled",
            "metrics are off ([metrics] enabled = false)",
        ));
    }
    app.metrics_now();
    off_worker(&app, |app| Ok(prometheus_response(app.fleet.metrics_prometheus(&MetricsCategory::ALL)))).await
}

/// Liveness: needs no key (an orchestrator's probe has none) and so says
/// nothing but that the process answers.
async fn live() -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "ok").into_response()
}

async fn ready(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiError> {
    app.auth.check(&headers, Need::Any)?;
    let health = app.fleet.health().await;
    let draining = app.draining.load(Ordering::Relaxed);
    let store_ok = health.services.iter().all(|s| s.name != "store" || s.health.status() != HealthStatus::Unhealthy);
    let ready = !draining && store_ok && health.overall != HealthStatus::Unhealthy;
    // Memory pressure degrades (new work is refused), like a degraded service: still 200.
    let pressured = app.memory.pressured();
    // The shared budget store unreachable degrades: hard budgets refuse, the rest is served.
    let cluster = app.fleet.cluster_status();
    let cluster_down = cluster.as_ref().is_some_and(|c| !c.reachable);
    let redis_down = cluster.as_ref().is_some_and(|c| c.redis_reachable == Some(false));
    let overall = if pressured || cluster_down || redis_down {
        health.overall.max(HealthStatus::Degraded)
    } else {
        health.overall
    };
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let reason = if draining {
        Some("shutting down")
    } else if !store_ok {
        Some("the store cannot write")
    } else if health.overall == HealthStatus::Unhealthy {
        Some("a service is unhealthy")
    } else if pressured {
        Some("memory pressure: new completions are refused (503) until memory is below the mark")
    } else if cluster_down {
        Some("the shared budget store is unreachable: requests under hard budgets are refused (503), others served")
    } else if redis_down {
        Some("Redis is unreachable: ejections are not shared with the other replicas (each still ejects on its own)")
    } else {
        None
    };
    Ok(json_response(
        status,
        &json!({
            "status": if ready { "ready" } else { "not_ready" },
            "reason": reason,
            "overall": overall,
            "memory": app.memory.to_json(),
            "cluster": cluster,
            "services": health.services,
        }),
    ))
}

async fn admin_budgets(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiError> {
    app.auth.check(&headers, Need::Admin)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"budgets": app.fleet.budget_views(), "alerts": app.fleet.budgets().alerts()}),
    ))
}

/// Who made an admin change, for the audit trail: the key's name.
pub(crate) fn who(caller: &Caller) -> String {
    caller.name.clone().unwrap_or_else(|| "local".to_owned())
}

/// A budget named in a path: `global`, `key:NAME`, `provider:NAME` or
/// `model:NAME`, and `daily`, `weekly`, `monthly` or `lifetime`.
fn budget_path(scope: &str, period: &str) -> Result<(Scope, Period), ApiError> {
    let invalid = |e: modelfleet::budget::ParseError| ApiError::invalid("invalid_budget", e.to_string());
    Ok((scope.parse().map_err(invalid)?, period.parse().map_err(invalid)?))
}

fn budget_json(app: &AppState, scope: &Scope, period: Period, status: StatusCode) -> Result<Response, ApiError> {
    let view = app
        .fleet
        .budget_views()
        .into_iter()
        .find(|v| v.status.spec.scope == *scope && v.status.spec.period == period)
        .ok_or_else(|| budget_admin_error(&BudgetAdminError::NotFound { scope: scope.clone(), period }))?;
    Ok(json_response(status, &view))
}

async fn admin_budget(
    State(app): State<App>,
    headers: HeaderMap,
    Path((scope, period)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    app.auth.check(&headers, Need::Admin)?;
    let (scope, period) = budget_path(&scope, &period)?;
    budget_json(&app, &scope, period, StatusCode::OK)
}

async fn admin_budget_add(State(app): State<App>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let caller = app.auth.check(&headers, Need::Admin)?;
    let bytes = read_body(&app, body).await?;
    let spec: BudgetSpec = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid("invalid_budget", format!("the body is not a budget: {e}")))?;
    let (scope, period) = (spec.scope.clone(), spec.period);
    app.fleet.add_budget(spec, &who(&caller)).await.map_err(fleet_error)?;
    budget_json(&app, &scope, period, StatusCode::CREATED)
}

/// `PUT /v1/admin/budgets/{scope}/{period}`: `{"limit": "5.00"}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitChange {
    limit: Money,
}

async fn admin_budget_set(
    State(app): State<App>,
    headers: HeaderMap,
    Path((scope, period)): Path<(String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = app.auth.check(&headers, Need::Admin)?;
    let (scope, period) = budget_path(&scope, &period)?;
    let bytes = read_body(&app, body).await?;
    let change: LimitChange = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::invalid("invalid_budget", format!("the body must be {{\"limit\": \"DOLLARS\"}}: {e}"))
    })?;
    app.fleet.set_budget_limit(&scope, period, change.limit, &who(&caller)).await.map_err(fleet_error)?;
    budget_json(&app, &scope, period, StatusCode::OK)
}

async fn admin_budget_reset(
    State(app): State<App>,
    headers: HeaderMap,
    Path((scope, period)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let caller = app.auth.check(&headers, Need::Admin)?;
    let (scope, period) = budget_path(&scope, &period)?;
    let spent = app.fleet.reset_budget(&scope, period, &who(&caller)).await.map_err(fleet_error)?;
    let mut response = budget_json(&app, &scope, period, StatusCode::OK)?;
    if let Ok(value) = HeaderValue::from_str(&spent.to_string()) {
        response.headers_mut().insert("x-modelfleet-spent-before-reset", value);
    }
    Ok(response)
}

async fn admin_budget_remove(
    State(app): State<App>,
    headers: HeaderMap,
    Path((scope, period)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let caller = app.auth.check(&headers, Need::Admin)?;
    let (scope, period) = budget_path(&scope, &period)?;
    app.fleet.remove_budget(&scope, period, &who(&caller)).await.map_err(fleet_error)?;
    Ok(json_response(StatusCode::OK, &json!({"removed": {"scope": scope, "period": period}})))
}

/// `GET /v1/admin/report?from=&to=&last=&by=`: the report over any range
/// of the stored history (see [`ReportQuery::parse`]), as `modelfleet
/// report --json` prints it.
async fn admin_report(
    State(app): State<App>,
    headers: HeaderMap,
    query: Result<Query<ReportParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    app.auth.check(&headers, Need::Admin)?;
    let Query(params) = query.map_err(|e| {
        ApiError::invalid("invalid_report_query", modelfleet::errors::sanitize(&e.body_text()).into_owned())
    })?;
    let now = modelfleet::registry::Clock::now_ms(&modelfleet::registry::SystemClock);
    let query = ReportQuery::parse(
        params.from.as_deref(),
        params.to.as_deref(),
        params.last.as_deref(),
        params.by.as_deref(),
        now,
    )
    .map_err(|e| ApiError::invalid("invalid_report_query", e))?;
    let report =
        app.fleet.report(&query).await.map_err(|e| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "report_failed", e.to_string())
        })?;
    Ok(json_response(StatusCode::OK, &report))
}

/// The parameters of `GET /v1/admin/report`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportParams {
    from: Option<String>,
    to: Option<String>,
    last: Option<String>,
    by: Option<String>,
}

/// The longest comment a rating may carry, in characters.
const MAX_COMMENT_CHARS: usize = 2_000;

/// `POST /v1/feedback` with `{"request_id": "...", "rating": 1..5,
/// "comment": "..."}`: the user's rating of an answer, by its
/// `x-request-id`. 404 when no answered request has that id.
async fn feedback(State(app): State<App>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let caller = app.auth.check(&headers, Need::Client)?;
    let bytes = read_body(&app, body).await?;
    let invalid = |why: String| ApiError::invalid("invalid_feedback", why);
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| invalid(format!("the body is not JSON: {e}")))?;
    let Some(fields) = value.as_object() else {
        return Err(invalid("the body must be a JSON object with request_id and rating".to_owned()));
    };
    if let Some(unknown) = fields.keys().find(|k| !["request_id", "rating", "comment"].contains(&k.as_str())) {
        return Err(invalid(format!(
            "unknown field {:?}: a rating has request_id, rating and comment",
            modelfleet::errors::sanitize(unknown)
        )));
    }
    let request_id = match fields.get("request_id") {
        Some(Value::String(id)) => request_id::accept(id.as_bytes()).ok_or_else(|| {
            invalid("request_id must be 1 to 128 printable ASCII characters (an x-request-id)".to_owned())
        })?,
        Some(_) => return Err(invalid("request_id must be a string (the answer's x-request-id)".to_owned())),
        None => return Err(invalid("request_id is missing: the x-request-id of the answer rated".to_owned())),
    };
    let rating = match fields.get("rating") {
        Some(Value::Number(n)) => n.as_u64().and_then(|r| u8::try_from(r).ok()).filter(|r| (1..=5).contains(r)),
        _ => None,
    }
    .ok_or_else(|| invalid("rating must be an integer from 1 to 5".to_owned()))?;
    let comment = match fields.get("comment") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) if c.chars().count() <= MAX_COMMENT_CHARS => Some(c.as_str()),
        Some(Value::String(_)) => {
            return Err(invalid(format!("comment is longer than {MAX_COMMENT_CHARS} characters")));
        }
        Some(_) => return Err(invalid("comment must be a string".to_owned())),
    };
    // A client key rates the answers to its own requests; an admin any.
    let own = if caller.admin { None } else { caller.name.as_deref() };
    match app.fleet.rate(request_id, rating, comment, (&who(&caller), own)).await {
        Ok(Some(rated)) => Ok(json_response(StatusCode::OK, &rated)),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "request_not_found",
            format!(
                "no answered request has id {request_id:?}{}: unknown, failed, answered from the response cache \
                 (no model answered it), or older than the store's retain_days",
                if own.is_some() { " among this key's requests" } else { "" }
            ),
        )),
        Err(FleetError::Store(modelfleet::store::Error::Invalid(why))) => Err(invalid(why)),
        Err(e) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "feedback_failed", e.to_string())),
    }
}
