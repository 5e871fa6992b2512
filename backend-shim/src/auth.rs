//! Who is calling: the `Authorization` token, checked by signature, expiry,
//! and the user's current token generation (so revoked tokens fail).

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use otako_common::token::{self, Claims};

pub struct Caller(pub Claims);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthorized("missing Authorization token"))?;
        let claims = state
            .key
            .verify(
                token::from_authorization(header),
                chrono::Utc::now().timestamp(),
            )
            .map_err(|_| ApiError::Unauthorized("invalid or expired token"))?;
        let generation: Option<i32> =
            sqlx::query_scalar("SELECT token_generation FROM users WHERE id = $1")
                .bind(claims.user_id)
                .fetch_optional(&state.pool)
                .await?;
        if generation != Some(claims.generation) {
            return Err(ApiError::Unauthorized("token was revoked"));
        }
        Ok(Caller(claims))
    }
}
