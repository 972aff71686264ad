//! Per-request observability: a span (method, path, request id), one log line with status
//! and duration, and the `throttle_admin_requests_total` count.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::HeaderValue,
    middleware::Next,
    response::Response,
};
use tracing::Instrument;

use super::problem::LoggedDetail;
use crate::metrics::{Metrics, UNMATCHED_ROUTE};

/// Answered in `x-request-id`, so a client can find its request in the daemon's log.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

static NEXT_REQUEST_ID: AtomicU64 = AtomicU64::new(1);

pub(super) async fn observe(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let id = NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed);
    // The route template, not the path: the metric's label set stays bounded.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, |p| p.as_str())
        .to_owned();
    let span = tracing::info_span!(
        "admin_request",
        method = %request.method(),
        path = %request.uri().path(),
        request_id = id,
    );
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let duration_ms = started.elapsed().as_secs_f64() * 1e3;

    let status = response.status();
    metrics.admin_request(&route, status.as_u16());
    let detail = response
        .extensions()
        .get::<LoggedDetail>()
        .map(|d| d.0.as_str());
    span.in_scope(|| {
        let code = status.as_u16();
        if status.is_server_error() {
            tracing::error!(
                category = "admin",
                status = code,
                duration_ms,
                detail,
                "request failed"
            );
        } else if status.is_client_error() {
            tracing::warn!(
                category = "admin",
                status = code,
                duration_ms,
                detail,
                "request refused"
            );
        } else {
            tracing::info!(category = "admin", status = code, duration_ms, "request");
        }
    });
    response
        .headers_mut()
        .insert(REQUEST_ID_HEADER, HeaderValue::from(id));
    response
}
