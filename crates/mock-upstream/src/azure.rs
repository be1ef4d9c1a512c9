//! Azure OpenAI's routes: `POST /openai/deployments/{deployment}/chat/completions`,
//! `…/completions` and `…/embeddings`, each requiring `?api-version=`
//! (404 without, as Azure answers) and taking the key in `api-key`. They
//! answer as the OpenAI routes do (the same endpoints, Azure's flavour),
//! the deployment playing the model's part; what is Azure's own lives
//! here: its 401, 404 and 429 bodies, its 400 for a filtered prompt, and
//! the content-filter annotations (`prompt_filter_results`, which opens a
//! stream with a chunk whose `choices` is empty).

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::{
    behavior::KeyProblem,
    completions::Completions,
    embeddings::Embeddings,
    openai::{self, Chat, Flavor},
    serve::{self, Call, Failure, Finish, Refused, serve},
    server::{Api, Shared},
};

/// `POST /openai/deployments/{deployment}/chat/completions`.
pub(crate) async fn chat(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    match call(&shared, Api::AzureChat, uri, headers, &body) {
        Ok(call) => serve(&shared, &Chat { flavor: Flavor::Azure }, call).await,
        Err(refused) => *refused,
    }
}

/// `POST /openai/deployments/{deployment}/completions`.
pub(crate) async fn completions(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match call(&shared, Api::AzureCompletions, uri, headers, &body) {
        Ok(call) => serve(&shared, &Completions { flavor: Flavor::Azure }, call).await,
        Err(refused) => *refused,
    }
}

/// `POST /openai/deployments/{deployment}/embeddings`.
pub(crate) async fn embeddings(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match call(&shared, Api::AzureEmbeddings, uri, headers, &body) {
        Ok(call) => serve(&shared, &Embeddings { flavor: Flavor::Azure }, call).await,
        Err(refused) => *refused,
    }
}

/// An Azure call: the deployment from the path, the key from `api-key`.
fn call(shared: &Shared, api: Api, uri: Uri, headers: HeaderMap, body: &[u8]) -> Result<Call, Refused> {
    let serial = shared.begin();
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return Err(Box::new(openai::error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_json",
            "the body is not JSON",
        )));
    };
    let deployment = uri.path().strip_prefix("/openai/deployments/").and_then(|rest| rest.split('/').next());
    let model = serve::decode(deployment.unwrap_or_default());
    let key = serve::header(&headers, "api-key").map(str::to_owned);
    let shown_key = key.clone().unwrap_or_default();
    Ok(Call { api, model, uri, headers, request, key, shown_key, serial })
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message}});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Azure's 404 when `api-version` is missing.
pub(crate) fn require_version(call: &Call) -> Result<(), Refused> {
    match serve::query(&call.uri, "api-version") {
        Some(version) if !version.is_empty() => Ok(()),
        _ => Err(Box::new(error(StatusCode::NOT_FOUND, "404", "Resource not found"))),
    }
}

/// The failures Azure answers in its own shape: 401 and 429.
pub(crate) fn failure(failure: &Failure) -> Option<Response> {
    match failure {
        Failure::Unauthorized { problem: KeyProblem::Missing, .. } => Some(error(
            StatusCode::UNAUTHORIZED,
            "401",
            "Access denied due to missing subscription key. Make sure to include subscription key when making \
             requests to an API.",
        )),
        Failure::Unauthorized { .. } => Some(error(
            StatusCode::UNAUTHORIZED,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key \
             for an active subscription and use a correct regional API endpoint for your resource.",
        )),
        Failure::RateLimited { retry_after_secs } => {
            let message = format!(
                "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have \
                 exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after \
                 {retry_after_secs} seconds."
            );
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, "429", &message);
            openai::retry_after(&mut response, *retry_after_secs);
            if let Ok(value) = (retry_after_secs.saturating_mul(1000)).to_string().parse() {
                response.headers_mut().insert("retry-after-ms", value);
            }
            Some(response)
        }
        _ => None,
    }
}

/// The content-filter results of a text: `filtered` in one category.
fn filter_results(filtered: bool) -> Value {
    let safe = json!({"filtered": false, "severity": "safe"});
    let violence = if filtered { json!({"filtered": true, "severity": "high"}) } else { safe.clone() };
    json!({"hate": safe, "self_harm": safe, "sexual": safe, "violence": violence})
}

/// Azure's 400 for a prompt its content filter refuses.
pub(crate) fn prompt_filtered() -> Response {
    let body = json!({"error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management \
                    policy. Please modify your prompt and retry.",
        "type": null,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": filter_results(true)},
    }});
    (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Adds Azure's content-filter results to a chat or completions body.
pub(crate) fn annotate(body: &mut Value, finish: Finish) {
    body["prompt_filter_results"] = json!([{"prompt_index": 0, "content_filter_results": filter_results(false)}]);
    if let Some(choices) = body.get_mut("choices").and_then(Value::as_array_mut) {
        for choice in choices {
            choice["content_filter_results"] = filter_results(finish == Finish::Filtered);
        }
    }
}

/// The chunk an Azure stream opens with: the prompt's filter results and
/// no choices.
pub(crate) fn prompt_filter_chunk() -> Value {
    json!({
        "choices": [], "created": 0, "id": "", "model": "", "object": "",
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": filter_results(false)}],
    })
}

#[cfg(test)]
mod tests;
