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
use modelfleet::{AdminModel, cluster::EditRefused, registry::ModelSpec};
use serde_json::{Value, json};

use crate::{
    app::{App, AppState, read_body, who},
    auth::Need,
    wire::{ApiError, json_response},
};

/// The most changes one history read gives.
const MAX_HISTORY: u32 = 200;

/// The longest model spec the admin API takes: every replica re-reads the
/// catalog, and a history keeps each spec twice.
const MAX_SPEC_BYTES: usize = 64 * 1024;

/// A model as the admin API shows it: its spec, with its revision and
/// source under `[cluster]`.
fn shown(model: &AdminModel) -> Value {
    let mut value = serde_json::to_value(&*model.spec).unwrap_or(Value::Null);
    if let (Some(revision), Some(fields)) = (model.revision, value.as_object_mut()) {
        fields.insert("revision".into(), json!(revision.revision));
        fields.insert("source".into(), json!(revision.source));
    }
    value
}

fn etag(revision: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// `model`, with its revision as `ETag` under `[cluster]`.
fn model_response(model: &AdminModel, status: StatusCode) -> Response {
    let mut response = json_response(status, &shown(model));
    if let Some(revision) = model.revision {
        response.headers_mut().insert(header::ETAG, etag(revision.revision));
    }
    response
}

/// An edit's answer: the model as the edit wrote it.
fn written(id: &str, model: Option<AdminModel>, status: StatusCode) -> Result<Response, ApiError> {
    let model = model.ok_or_else(|| refusal(&EditRefused::NotFound(id.to_owned())))?;
    Ok(model_response(&model, status))
}

/// A path's model id: one with control characters (a NUL) names no model
/// and never reaches the store.
fn path_id(id: &str) -> Result<&str, ApiError> {
    if id.chars().any(char::is_control) {
        return Err(refusal(&EditRefused::NotFound(id.to_owned())));
    }
    Ok(id)
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
            // The server's words (a host, a user) go to the log, not to clients.
            tracing::warn!(%err, "the shared catalog is unreachable");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "catalog_store_unavailable",
                "the shared catalog is unreachable: nothing was changed, try again",
            );
        }
        _ => {
            tracing::error!(%err, "the shared catalog refused a request");
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal",
                "the shared catalog refused the request (the gateway's log says why)",
            );
        }
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
/// names none) and a PUT body's `revision`; both given, they must agree.
fn expected(headers: &HeaderMap, body: Option<u64>) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else { return Ok(body) };
    let invalid =
        || ApiError::invalid("invalid_if_match", "If-Match: a model's revision, as its ETag gives it (\"12\"), or *");
    let text = value.to_str().map_err(|_| invalid())?.trim();
    if text == "*" {
        return Ok(body);
    }
    let text = text.strip_prefix("W/").unwrap_or(text);
    let text = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
    let header: u64 = text.parse().map_err(|_| invalid())?;
    match body {
        Some(body) if body != header => Err(ApiError::invalid(
            "invalid_if_match",
            format!("If-Match names revision {header}, the body's revision {body}: send one of them, or the same"),
        )),
        _ => Ok(Some(header)),
    }
}

/// A model spec from a body, and the `revision` it names (a GET's output
/// put back: its `revision` and `source` are not part of the spec).
fn parse_spec(app: &AppState, bytes: &[u8]) -> Result<(ModelSpec, Option<u64>), ApiError> {
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(ApiError::invalid(
            "invalid_model",
            format!("the body is {} bytes: a model spec is at most {MAX_SPEC_BYTES}", bytes.len()),
        ));
    }
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
    let models: Vec<Value> = app.fleet.admin_models().iter().map(shown).collect();
    Ok(json_response(StatusCode::OK, &json!({ "models": models })))
}

pub(crate) async fn get(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    app.auth.check(&headers, Need::Admin)?;
    let id = path_id(&id)?;
    let model = app.fleet.admin_model(id).ok_or_else(|| refusal(&EditRefused::NotFound(id.to_owned())))?;
    Ok(model_response(&model, StatusCode::OK))
}

pub(crate) async fn add(State(app): State<App>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let caller = app.auth.check(&headers, Need::Admin)?;
    let (spec, _) = parse_spec(&app, &read_body(&app, body).await?)?;
    let id = spec.id.clone();
    let added = app.fleet.add_model(spec, &who(&caller)).await.map_err(catalog_error)?;
    written(&id, added, StatusCode::CREATED)
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
    let replaced = app.fleet.replace_model(spec, expected, &who(&caller)).await.map_err(catalog_error)?;
    written(&id, replaced, StatusCode::OK)
}

pub(crate) async fn remove(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = app.auth.check(&headers, Need::Admin)?;
    let expected = expected(&headers, None)?;
    app.fleet.remove_model(path_id(&id)?, expected, &who(&caller)).await.map_err(catalog_error)?;
    Ok(json_response(StatusCode::OK, &json!({"removed": id})))
}

async fn set_enabled(app: &App, headers: &HeaderMap, id: &str, enabled: bool) -> Result<Response, ApiError> {
    let caller = app.auth.check(headers, Need::Admin)?;
    let expected = expected(headers, None)?;
    let id = path_id(id)?;
    let changed = app.fleet.set_model_enabled(id, enabled, expected, &who(&caller)).await.map_err(catalog_error)?;
    written(id, changed, StatusCode::OK)
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

/// `?limit=N` (1 to [`MAX_HISTORY`], default 50), nothing else.
fn limit(query: Option<&str>) -> Result<u32, ApiError> {
    let invalid =
        || ApiError::invalid("invalid_history_query", format!("the only parameter is limit=1..{MAX_HISTORY}"));
    let mut limit = 50;
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
    history_of(&app, &headers, Some(path_id(&id)?), query.as_deref()).await
}

/// `GET /v1/admin/catalog/history`: every model's changes, newest first.
pub(crate) async fn history(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    history_of(&app, &headers, None, query.as_deref()).await
}

#[cfg(test)]
mod tests {
    //! The admin API's parsing of what names a revision and a history's length.

    use axum::http::{HeaderMap, HeaderValue, header};

    use super::{MAX_HISTORY, expected, limit};

    fn if_match(value: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = value {
            headers.insert(header::IF_MATCH, HeaderValue::from_str(value).expect("a header value"));
        }
        headers
    }

    fn check(header: Option<&str>, body: Option<u64>, expect: Result<Option<u64>, &str>) {
        let got = expected(&if_match(header), body).map_err(|e| e.code);
        assert_eq!(got, expect, "If-Match {header:?}, body revision {body:?}");
    }

    #[test]
    fn if_match_and_the_body_name_one_revision() {
        check(None, None, Ok(None));
        check(None, Some(7), Ok(Some(7)));
        for value in ["\"12\"", "W/\"12\"", "12", " \"12\" "] {
            check(Some(value), None, Ok(Some(12)));
        }
        check(Some("\"12\""), Some(12), Ok(Some(12)));
        // Both given, they must agree.
        check(Some("\"12\""), Some(11), Err("invalid_if_match"));
        // `*` names none: the body's (if any) stands.
        check(Some("*"), None, Ok(None));
        check(Some("*"), Some(5), Ok(Some(5)));
        for garbage in ["\"twelve\"", "\"-1\"", "\"\"", "\"12", "1.5", "\"99999999999999999999999\""] {
            check(Some(garbage), None, Err("invalid_if_match"));
        }
    }

    #[test]
    fn a_history_takes_a_bounded_limit_and_nothing_else() {
        assert_eq!(limit(None).map_err(|e| e.code), Ok(50));
        assert_eq!(limit(Some("")).map_err(|e| e.code), Ok(50));
        assert_eq!(limit(Some("limit=3")).map_err(|e| e.code), Ok(3));
        assert_eq!(limit(Some(&format!("limit={MAX_HISTORY}"))).map_err(|e| e.code), Ok(MAX_HISTORY));
        let over = format!("limit={}", MAX_HISTORY + 1);
        for bad in ["limit=0", "limit=-1", "limit=x", "from=1", "limit=3&by=model", over.as_str()] {
            assert_eq!(limit(Some(bad)).map_err(|e| e.code), Err("invalid_history_query"), "{bad}");
        }
    }
}
