//! The endpoint handlers: check the input the contract constrains, call the [`Control`] off the
//! async runtime, and answer JSON or a [`Problem`].

use std::sync::Arc;

use axum::{
    extract::{
        rejection::{JsonRejection, PathRejection, QueryRejection},
        Path, Query, State,
    },
    http::{header, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::Span;

use super::{problem::Problem, AppState};
use crate::{
    config::MAX_TTL,
    control::{
        AclEntryView, AclList, AclRequest, Control, ControlError, ReloadOutcome, RuleView, Stats,
        Status, TopEntry, TopOrder,
    },
};

/// `GET /v1/top` without `limit`.
pub const DEFAULT_TOP_LIMIT: usize = 20;
/// Largest `limit` of `GET /v1/top`.
pub const MAX_TOP_LIMIT: usize = 1000;

type Answer<T> = Result<Json<T>, Problem>;

/// Runs a (synchronous, possibly blocking) control call on the blocking pool, inside the
/// request's span so the daemon's own logs carry the request id.
async fn call<T, F>(state: &AppState, f: F) -> Result<T, Problem>
where
    T: Send + 'static,
    F: FnOnce(&dyn Control) -> Result<T, ControlError> + Send + 'static,
{
    let control = Arc::clone(&state.control);
    let span = Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(|| f(&*control)))
        .await
        .map_err(|e| Problem::internal(format!("the control call did not complete: {e}")))?
        .map_err(Problem::from)
}

pub(super) async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub(super) async fn ready(State(state): State<AppState>) -> Result<Json<Value>, Problem> {
    if call(&state, |c| Ok(c.ready())).await? {
        Ok(Json(json!({ "status": "ready" })))
    } else {
        Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the XDP program is not attached or the first rule set is not applied yet",
        ))
    }
}

pub(super) async fn status(State(state): State<AppState>) -> Answer<Status> {
    call(&state, |c| c.status()).await.map(Json)
}

pub(super) async fn rules(State(state): State<AppState>) -> Answer<Vec<RuleView>> {
    call(&state, |c| c.rules()).await.map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TopQuery {
    #[serde(default)]
    by: TopOrder,
    limit: Option<usize>,
}

pub(super) async fn top(
    State(state): State<AppState>,
    query: Result<Query<TopQuery>, QueryRejection>,
) -> Answer<Vec<TopEntry>> {
    let Query(TopQuery { by, limit }) = query?;
    let limit = limit.unwrap_or(DEFAULT_TOP_LIMIT);
    if !(1..=MAX_TOP_LIMIT).contains(&limit) {
        return Err(Problem::bad_request(format!(
            "limit must be between 1 and {MAX_TOP_LIMIT}, got {limit}"
        )));
    }
    call(&state, move |c| c.top(by, limit)).await.map(Json)
}

pub(super) async fn stats(State(state): State<AppState>) -> Answer<Stats> {
    call(&state, |c| c.stats()).await.map(Json)
}

pub(super) async fn acl(State(state): State<AppState>) -> Answer<Vec<AclEntryView>> {
    call(&state, |c| c.acl()).await.map(Json)
}

pub(super) async fn acl_add(
    State(state): State<AppState>,
    body: Result<Json<AclRequest>, JsonRejection>,
) -> Answer<AclEntryView> {
    let Json(request) = body?;
    check_ttl(&request)?;
    call(&state, move |c| c.acl_add(request)).await.map(Json)
}

/// A TTL only makes sense on a deny entry, and within the config file's bounds.
fn check_ttl(request: &AclRequest) -> Result<(), Problem> {
    let max = MAX_TTL.as_secs();
    match (request.list, request.ttl_seconds) {
        (_, None) => Ok(()),
        (AclList::Allow, Some(_)) => Err(Problem::bad_request(
            "ttl_seconds applies to deny entries only",
        )),
        (AclList::Deny, Some(ttl)) if (1..=max).contains(&ttl) => Ok(()),
        (AclList::Deny, Some(ttl)) => Err(Problem::bad_request(format!(
            "ttl_seconds must be between 1 and {max}, got {ttl}"
        ))),
    }
}

pub(super) async fn acl_remove(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let Path((list, cidr)) = path?;
    let list = match list.as_str() {
        "allow" => AclList::Allow,
        "deny" => AclList::Deny,
        other => {
            return Err(Problem::bad_request(format!(
                "unknown list `{other}`: allow or deny"
            )))
        }
    };
    // The CIDR's `/` is written `_` in the path; the control validates the CIDR itself.
    let cidr = cidr.replace('_', "/");
    call(&state, move |c| c.acl_remove(list, &cidr)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn reload(State(state): State<AppState>) -> Answer<ReloadOutcome> {
    call(&state, |c| c.reload()).await.map(Json)
}

pub(super) async fn detach(State(state): State<AppState>) -> Result<StatusCode, Problem> {
    call(&state, |c| c.detach()).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn metrics(State(state): State<AppState>) -> Result<Response, Problem> {
    let metrics = Arc::clone(&state.metrics);
    let text = call(&state, move |c| Ok(metrics.render(c))).await?;
    Ok(([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response())
}

pub(super) async fn openapi(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.clone(),
    )
        .into_response()
}

pub(super) async fn not_found(uri: Uri) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.path()),
    )
}

/// axum adds the `Allow` header to this answer.
pub(super) async fn method_not_allowed(method: Method, uri: Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
