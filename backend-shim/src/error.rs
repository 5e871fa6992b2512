//! HTTP errors in the contract's shape: `{"code": "...", "message": "..."}`.

use crate::limits::RateLimited;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(&'static str),
    #[error("request body too large")]
    TooLarge,
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("too many requests; retry in {} ms", .0.retry_after.as_millis())]
    RateLimited(#[from] RateLimited),
    #[error("internal error")]
    Internal(#[from] sqlx::Error),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = %e, "request failed");
        }
        let mut body = serde_json::json!({"code": code, "message": self.to_string()});
        if let ApiError::RateLimited(limited) = &self {
            let ms = u64::try_from(limited.retry_after.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            body["retry_after_ms"] = ms.into();
            // Retry-After is in whole seconds: round up, never tell a
            // client to come back before the limit allows it.
            let secs = ms.div_ceil(1000).to_string();
            return (status, [(header::RETRY_AFTER, secs)], Json(body)).into_response();
        }
        (status, Json(body)).into_response()
    }
}
