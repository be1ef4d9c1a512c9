//! Load shedding: at most `[server] max_in_flight` requests are served at
//! once; one more is answered 503 with `Retry-After: 1` at once, instead of
//! queueing without bound (memory, and latency for everyone). A slot is an
//! owned semaphore permit: it is given back when the answer has been sent,
//! and for a stream when the stream ends (the permit travels inside its
//! body), whether the client read it all or went away.
//!
//! Liveness, readiness and metrics are never shed: an overloaded gateway
//! must still say so.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures_util::StreamExt;
use tokio::sync::Semaphore;

use crate::wire::ApiError;

/// The slots, and how many there are.
#[derive(Debug)]
pub(crate) struct Shed {
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) max: u32,
}

impl Shed {
    pub(crate) fn new(max_in_flight: u32) -> Shed {
        let permits = usize::try_from(max_in_flight).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        Shed { slots: Arc::new(Semaphore::new(permits)), max: max_in_flight }
    }
}

/// Paths that are never shed.
fn exempt(path: &str) -> bool {
    path.starts_with("/health/") || path == "/metrics" || path == "/v1/metrics"
}

/// The middleware.
pub(crate) async fn check(State(shed): State<Arc<Shed>>, request: Request, next: Next) -> Response {
    if exempt(request.uri().path()) {
        return next.run(request).await;
    }
    let Ok(permit) = Arc::clone(&shed.slots).try_acquire_owned() else {
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "overloaded",
            format!(
                "{} requests are in flight, the most this gateway serves at once (server.max_in_flight): retry shortly",
                shed.max
            ),
        )
        .into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let response = next.run(request).await;
    let streamed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !streamed {
        // The answer is complete in memory: the slot is free once it is.
        return response;
    }
    // A stream holds its slot until its body is dropped (ended or abandoned).
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _held = &permit;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}
