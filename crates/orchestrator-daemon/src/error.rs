//! How every failure becomes an HTTP answer: a status and an `ApiError` body
//! that says what was wrong and what to do.

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use orchestrator_core::api::ApiError;
use orchestrator_store::StoreError;
use serde::de::DeserializeOwned;

/// An error answer.
#[derive(Debug)]
pub struct ApiErr(pub StatusCode, pub ApiError);

impl ApiErr {
    pub fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        ApiErr(
            status,
            ApiError {
                error: msg.into(),
                details: None,
            },
        )
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<StoreError> for ApiErr {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
            StoreError::InvalidWorkflow(_)
            | StoreError::InvalidInputs(_)
            | StoreError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            StoreError::StaleLease { .. } | StoreError::Conflict(_) | StoreError::Refused(_) => {
                StatusCode::CONFLICT
            }
            // Another writer held the database: nothing was written, and the
            // same request may succeed in a moment.
            StoreError::Busy(_) | StoreError::Closed => StatusCode::SERVICE_UNAVAILABLE,
            StoreError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
            StoreError::Constraint(_)
            | StoreError::Corrupt { .. }
            | StoreError::Database(_)
            | StoreError::Locked { .. }
            | StoreError::TooNew { .. }
            | StoreError::Open { .. }
            | StoreError::Encode { .. }
            | StoreError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() && !matches!(e, StoreError::Closed) {
            tracing::error!(error = %e, cause = ?std::error::Error::source(&e), "store error");
        }
        let details = match &e {
            StoreError::InvalidWorkflow(errs) => serde_json::to_value(&errs.0).ok(),
            StoreError::InvalidInputs(errs) => Some(serde_json::Value::from(
                errs.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
            )),
            _ => None,
        };
        ApiErr(
            status,
            ApiError {
                error: e.to_string(),
                details,
            },
        )
    }
}

/// A JSON body whose every rejection is an `ApiError` naming the problem.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiErr;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                let status = e.status();
                let msg = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "request body too large; the daemon's limit is set by --max-body-bytes"
                        .to_owned()
                } else {
                    format!("cannot read the request body: {e}")
                };
                ApiErr::new(status, msg)
            })?;
        // Like axum's own `Json`: a body that is not JSON is a 400; JSON that
        // does not fit the request (a missing field, a wrong type) is a 422.
        // serde_json's message already ends with "at line L column C".
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            if e.classify() == serde_json::error::Category::Data {
                ApiErr::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("invalid request: {e}"),
                )
            } else {
                ApiErr::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}"))
            }
        })
    }
}
