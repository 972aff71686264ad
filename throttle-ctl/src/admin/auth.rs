//! Bearer-token check for the TCP listener (the unix socket relies on its file mode).

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{header, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use subtle::ConstantTimeEq;

use super::problem::Problem;

/// The token every TCP request must present as `Authorization: Bearer <token>`.
#[derive(Clone)]
pub(super) struct Token(pub Arc<str>);

pub(super) async fn require_bearer(
    State(Token(token)): State<Token>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    let (detail, challenge) = match presented {
        // Constant time: the comparison must not tell how much of a guess was right.
        Some(given) if bool::from(given.as_bytes().ct_eq(token.as_bytes())) => {
            return next.run(request).await
        }
        Some(_) => (
            "wrong bearer token",
            r#"Bearer realm="throttle", error="invalid_token""#,
        ),
        None => (
            "this listener needs `Authorization: Bearer <token>`",
            r#"Bearer realm="throttle""#,
        ),
    };
    tracing::warn!(
        category = "auth",
        method = %request.method(),
        path = %request.uri().path(),
        "admin request refused: {detail}"
    );
    (
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        )],
        Problem::new(StatusCode::UNAUTHORIZED, detail),
    )
        .into_response()
}

/// The credentials of a `Bearer` authorization (the scheme is case-insensitive, RFC 9110).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
}
