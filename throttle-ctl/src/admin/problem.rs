//! RFC 9457 problem details: the body of every error answer of the admin API.

use axum::{
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};

use crate::control::ControlError;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// `{"type","title","status","detail"}`, plus `problems` for an invalid config (422).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// Always `about:blank`: the status code says what kind of problem it is.
    #[serde(rename = "type")]
    pub kind: String,
    /// The status code's reason phrase.
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Every problem of the config file, for `ControlError::InvalidConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problems: Option<Vec<String>>,
}

/// The detail of a problem answer, left in the response's extensions for the request log.
#[derive(Debug, Clone)]
pub(crate) struct LoggedDetail(pub String);

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: detail.into(),
            problems: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, detail)
    }

    pub fn internal(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, detail)
    }

    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<ControlError> for Problem {
    fn from(error: ControlError) -> Problem {
        match error {
            ControlError::BadRequest(detail) => Problem::bad_request(detail),
            ControlError::InvalidConfig { detail, problems } => Problem {
                problems: Some(problems),
                ..Problem::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
            },
            ControlError::NotFound(detail) => Problem::new(StatusCode::NOT_FOUND, detail),
            ControlError::Internal(detail) => Problem::internal(detail),
        }
    }
}

impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Problem {
        // axum answers 422 for a body that is JSON but not an `AclRequest` (unknown field,
        // wrong type); here 422 means an invalid config file, and a bad request body is a 400
        // like any other bad input.
        let status = match &rejection {
            JsonRejection::JsonDataError(_) => StatusCode::BAD_REQUEST,
            other => other.status(),
        };
        Problem::new(status, rejection.body_text())
    }
}

impl From<QueryRejection> for Problem {
    fn from(rejection: QueryRejection) -> Problem {
        Problem::new(rejection.status(), rejection.body_text())
    }
}

impl From<PathRejection> for Problem {
    fn from(rejection: PathRejection) -> Problem {
        Problem::new(rejection.status(), rejection.body_text())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = serde_json::to_vec(&self).expect("a problem serializes");
        let mut response = (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
            body,
        )
            .into_response();
        response.extensions_mut().insert(LoggedDetail(self.detail));
        response
    }
}
