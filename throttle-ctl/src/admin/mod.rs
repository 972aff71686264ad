//! The admin API: JSON over HTTP/1.1 on the [`Control`] contract, at the paths of
//! [`crate::control::routes`], documented by `docs/api/openapi.yaml`. Served on a unix socket
//! (mode 0600, no token) and optionally on TCP behind a bearer token ([`serve_unix`],
//! [`serve_tcp`]). Every error is an RFC 9457 problem ([`Problem`]).

mod auth;
mod handlers;
#[cfg(test)]
pub(crate) mod mock;
mod observe;
mod problem;
pub mod server;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::{
    body::Bytes,
    http::Method,
    middleware,
    routing::{on, MethodFilter, MethodRouter},
    Router,
};

pub use handlers::{DEFAULT_TOP_LIMIT, MAX_TOP_LIMIT};
pub use observe::REQUEST_ID_HEADER;
pub use problem::{Problem, PROBLEM_JSON};
pub use server::{
    bind_tcp, bind_unix, serve_tcp, serve_tcp_listener, serve_unix, serve_unix_listener,
};

use crate::{
    control::{routes, Control},
    metrics::Metrics,
};

/// The API's OpenAPI 3.1 document, served as JSON at [`routes::OPENAPI`].
pub const OPENAPI_YAML: &str = include_str!("../../../docs/api/openapi.yaml");

#[derive(Clone)]
struct AppState {
    control: Arc<dyn Control>,
    metrics: Arc<Metrics>,
    /// [`OPENAPI_YAML`] as JSON, converted once.
    openapi: Bytes,
}

/// How an endpoint's handler is routed for its method.
type Routed = fn(MethodFilter) -> MethodRouter<AppState>;

/// The single table of endpoints: it builds the router, and the tests hold it against the
/// OpenAPI document.
fn endpoints() -> Vec<(Method, &'static str, Routed)> {
    use handlers::*;
    vec![
        (Method::GET, routes::HEALTH, |m| on(m, health)),
        (Method::GET, routes::READY, |m| on(m, ready)),
        (Method::GET, routes::STATUS, |m| on(m, status)),
        (Method::GET, routes::RULES, |m| on(m, rules)),
        (Method::GET, routes::TOP, |m| on(m, top)),
        (Method::GET, routes::STATS, |m| on(m, stats)),
        (Method::GET, routes::ACL, |m| on(m, acl)),
        (Method::POST, routes::ACL, |m| on(m, acl_add)),
        (Method::DELETE, routes::ACL_ENTRY, |m| on(m, acl_remove)),
        (Method::POST, routes::RELOAD, |m| on(m, reload)),
        (Method::POST, routes::DETACH, |m| on(m, detach)),
        (Method::GET, routes::METRICS, |m| on(m, metrics)),
        (Method::GET, routes::OPENAPI, |m| on(m, openapi)),
    ]
}

/// The admin API over `control`, counting its requests in `metrics` (which `/metrics` also
/// renders). Serve it with [`serve_unix`] and/or [`serve_tcp`].
pub fn router(control: Arc<dyn Control>, metrics: Arc<Metrics>) -> Router {
    let openapi: serde_json::Value =
        serde_yaml::from_str(OPENAPI_YAML).expect("docs/api/openapi.yaml parses (tested)");
    let state = AppState {
        control,
        metrics: Arc::clone(&metrics),
        openapi: serde_json::to_vec(&openapi)
            .expect("JSON from YAML serializes")
            .into(),
    };
    let mut router = Router::new();
    for (method, path, routed) in endpoints() {
        let filter = MethodFilter::try_from(method).expect("a standard method");
        // Routes of one path (GET and POST /v1/acl) merge into one method router.
        router = router.route(path, routed(filter));
    }
    router
        .fallback(handlers::not_found)
        // After the routes: it applies to the method routers registered so far.
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(middleware::from_fn_with_state(metrics, observe::observe))
        .with_state(state)
}
