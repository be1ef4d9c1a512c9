//! The admin API's models: `GET/POST /v1/admin/models`, `GET/PUT/DELETE
//! /v1/admin/models/{id}`, `…/enable`, `…/disable`, and the change
//! history (`…/{id}/history`, `/v1/admin/catalog/history`).
//!
//! Under `[cluster]` every model shows its `revision` and `source` (also
//! as `ETag`), edits reach every replica, and an edit may name the
//! revision it was made on (`If-Match: "12"`, or `revision` in a PUT's
//! body): another edit first, and it gets `409 revision_conflict` with the
//! current revision as `ETag`. `source: config` models are read-only
//! (`409 model_read_only`). A PUT's body may be what a GET gave: its
//! `revision` and `source` are not part of the spec.

use axum::{
    body::Body,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
};
use modelfleet::{ModelRevision, cluster::EditRefused, registry::ModelSpec};
use serde_json::{Value, json};

use crate::{
    app::{App, AppState, read_body, who},
    auth::Need,
    wire::{ApiError, json_response},
};

/// The most changes one history read gives.
const MAX_HISTORY: u32 = 1_000;

/// A model as the admin API shows it: its spec, with its revision and
/// source under `[cluster]`.
fn shown(spec: &ModelSpec, revision: Option<ModelRevision>) -> Value {
    let mut value = serde_json::to_value(spec).unwrap_or(Value::Null);
    if let (Some(revision), Some(fields)) = (revision, value.as_object_mut()) {
        fields.insert("revision".into(), json!(revision.revision));
        fields.insert("source".into(), json!(revision.source));
    }
    value
}

fn etag(revision: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// `id` as it stands in this replica's catalog now.
fn model_response(app: &AppState, id: &str, status: StatusCode) -> Result<Response, ApiError> {
    let model = app.fleet.catalog().get(id).ok_or_else(|| refusal(&EditRefused::NotFound(id.to_owned())))?;
    let revision = app.fleet.model_revision(id);
    let mut response = json_response(status, &shown(&model, revision));
    if let Some(revision) = revision {
        response.headers_mut().insert(header::ETAG, etag(revision.revision));
    }
    Ok(response)
}

/// A refused edit as the client sees it.
pub(crate) fn refusal(err: &EditRefused) -> ApiError {
    let (status, code) = match err {
        EditRefused::NotFound(_) => (StatusCode::NOT_FOUND, "model_not_found"),
        EditRefused::Exists(_) => (StatusCode::CONFLICT, "model_exists"),
        EditRefused::FromConfig(_) => (StatusCode::CONFLICT, "model_read_only"),
        EditRefused::Conflict { .. } => (StatusCode::CONFLICT, "revision_conflict"),
        EditRefused::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_model"),
        EditRefused::Store(modelfleet::cluster::ClusterError::Unavailable(_)) => {
            // The driver's words (a host) go to the log, not to clients.
            tracing::warn!(%err, "the shared catalog is unreachable");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "catalog_store_unavailable",
                "the shared catalog is unreachable: the edit was not made, try again",
            );
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    let kind = if status.is_server_error() { "server_error" } else { "invalid_request_error" };
    let mut error = ApiError::new(status, kind, code, err.to_string());
    if let EditRefused::Conflict { current, .. } = err {
        error.headers.etag = Some(*current);
    }
    error
}

fn catalog_error(err: modelfleet::FleetError) -> ApiError {
    match err {
        modelfleet::FleetError::Catalog(refused) => refusal(&refused),
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal", other.to_string()),
    }
}

/// The revision an edit names: `If-Match` (`"12"`, `W/"12"` or `12`; `*`
/// names none), else `body` (a PUT's `revision`).
fn expected(headers: &HeaderMap, body: Option<u64>) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else { return Ok(body) };
    let invalid =
        || ApiError::invalid("invalid_if_match", "If-Match: a model's revision, as its ETag gives it (\"12\"), or *");
    let text = value.to_str().map_err(|_| invalid())?.trim();
    if text == "*" {
        return Ok(None);
    }
    let text = text.strip_prefix("W/").unwrap_or(text);
    let text = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
    text.parse().map(Some).map_err(|_| invalid())
}

/// A model spec from a body, and the `revision` it names (a GET's output
/// put back: its `revision` and `source` are not part of the spec).
fn parse_spec(app: &AppState, bytes: &[u8]) -> Result<(ModelSpec, Option<u64>), ApiError> {
    let bad = |e: serde_json::Error| ApiError::invalid("invalid_model", format!("the body is not a model spec: {e}"));
    let mut value: Value = serde_json::from_slice(bytes).map_err(bad)?;
    let mut revision = None;
    if let Some(fields) = value.as_object_mut() {
        fields.remove("source");
        if let Some(given) = fields.remove("revision") {
            revision = Some(given.as_u64().ok_or_else(|| {
                ApiError::invalid("invalid_model", "revision: the model's revision, a whole number (as a GET gives it)")
            })?);
        }
    }
    let spec: ModelSpec = serde_json::from_value(value).map_err(bad)?;
    if !app.upstreams.knows(&spec.provider) {
        return Err(ApiError::invalid(
            "unknown_provider",
            format!("provider: {:?} is not configured ([[providers]] in the config)", spec.provider),
        ));
    }
    Ok((spec, revision))
}

pub(crate) async fn list(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiError> {
    app.auth.check(&headers, Need::Admin)?;
    let models: Vec<Value> =
        app.fleet.catalog().list().iter().map(|m| shown(m, app.fleet.model_revision(&m.id))).collect();
    Ok(json_response(StatusCode::OK, &json!({ "models": models })))
}

pub(crate) async fn get(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    app.auth.check(&headers, Need::Admin)?;
    model_response(&app, &id, StatusCode::OK)
}

pub(crate) async fn add(State(app): State<App>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let caller = app.auth.check(&headers, Need::Admin)?;
    let (spec, _) = parse_spec(&app, &read_body(&app, body).await?)?;
    let id = spec.id.clone();
    app.fleet.add_model(spec, &who(&caller)).await.map_err(catalog_error)?;
    model_response(&app, &id, StatusCode::CREATED)
}

pub(crate) async fn update(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = app.auth.check(&headers, Need::Admin)?;
    let (spec, revision) = parse_spec(&app, &read_body(&app, body).await?)?;
    if spec.id != id {
        return Err(ApiError::invalid("invalid_model", format!("id: the body names {:?}, the path {id:?}", spec.id)));
    }
    let expected = expected(&headers, revision)?;
    app.fleet.replace_model(spec, expected, &who(&caller)).await.map_err(catalog_error)?;
    model_response(&app, &id, StatusCode::OK)
}

pub(crate) async fn remove(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = app.auth.check(&headers, Need::Admin)?;
    let expected = expected(&headers, None)?;
    app.fleet.remove_model(&id, expected, &who(&caller)).await.map_err(catalog_error)?;
    Ok(json_response(StatusCode::OK, &json!({"removed": id})))
}

async fn set_enabled(app: &App, headers: &HeaderMap, id: &str, enabled: bool) -> Result<Response, ApiError> {
    let caller = app.auth.check(headers, Need::Admin)?;
    let expected = expected(headers, None)?;
    app.fleet.set_model_enabled(id, enabled, expected, &who(&caller)).await.map_err(catalog_error)?;
    model_response(app, id, StatusCode::OK)
}

pub(crate) async fn disable(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_enabled(&app, &headers, &id, false).await
}

pub(crate) async fn enable(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_enabled(&app, &headers, &id, true).await
}

/// `?limit=N` (1 to [`MAX_HISTORY`], default 100), nothing else.
fn limit(query: Option<&str>) -> Result<u32, ApiError> {
    let invalid =
        || ApiError::invalid("invalid_history_query", format!("the only parameter is limit=1..{MAX_HISTORY}"));
    let mut limit = 100;
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let value = pair.strip_prefix("limit=").ok_or_else(invalid)?;
        limit = value.parse().ok().filter(|n| (1..=MAX_HISTORY).contains(n)).ok_or_else(invalid)?;
    }
    Ok(limit)
}

async fn history_of(
    app: &App,
    headers: &HeaderMap,
    model: Option<&str>,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    app.auth.check(headers, Need::Admin)?;
    let limit = limit(query)?;
    let changes = app.fleet.catalog_history(model, limit).await.map_err(catalog_error)?;
    Ok(json_response(StatusCode::OK, &json!({ "changes": changes })))
}

/// `GET /v1/admin/models/{id}/history`: the model's changes, newest first.
pub(crate) async fn model_history(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    history_of(&app, &headers, Some(&id), query.as_deref()).await
}

/// `GET /v1/admin/catalog/history`: every model's changes, newest first.
pub(crate) async fn history(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    history_of(&app, &headers, None, query.as_deref()).await
}
