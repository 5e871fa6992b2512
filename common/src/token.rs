//! Signed session tokens.
//!
//! A token is `base64url(claims JSON) "." base64url(HMAC-SHA256(claims))`, so a
//! gateway node checks it with the shared secret and no database query.
//! Revocation works through `generation`: the user's row holds the current
//! generation, and bumping it invalidates every token issued before.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Used only when `OTAKO_DEV=1` and no secret is configured.
pub const DEV_SECRET: &str = "otako-dev-secret-do-not-use-in-production";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(rename = "u")]
    pub user_id: i64,
    #[serde(rename = "n")]
    pub username: String,
    #[serde(rename = "g")]
    pub generation: i32,
    /// Expiry, unix seconds.
    #[serde(rename = "e")]
    pub expires_at: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token has expired")]
    Expired,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("OTAKO_TOKEN_SECRET is not set (set OTAKO_DEV=1 to use the development secret)")]
    Missing,
    #[error("OTAKO_TOKEN_SECRET must be at least 16 bytes")]
    TooShort,
}

/// Picks the token secret the contract's way: the configured one, else the
/// fixed development secret only in development mode.
pub fn resolve_secret(configured: Option<&str>, dev: bool) -> Result<String, SecretError> {
    match configured.filter(|s| !s.is_empty()) {
        Some(s) if s.len() < 16 => Err(SecretError::TooShort),
        Some(s) => Ok(s.to_owned()),
        None if dev => Ok(DEV_SECRET.to_owned()),
        None => Err(SecretError::Missing),
    }
}

#[derive(Clone)]
pub struct TokenKey {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    pub fn new(secret: &str) -> TokenKey {
        TokenKey {
            mac: Hmac::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length"),
        }
    }

    pub fn sign(&self, claims: &Claims) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let mut mac = self.mac.clone();
        mac.update(body.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{body}.{sig}")
    }

    /// Checks signature and expiry; `now` is unix seconds.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        // Tokens are small; refuse anything large before doing any work on it.
        if token.len() > 512 {
            return Err(TokenError::Malformed);
        }
        let (body, sig) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac.clone();
        mac.update(body.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.expires_at <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// Takes the token out of an `Authorization` value: bare, or `Bearer <token>`.
pub fn from_authorization(value: &str) -> &str {
    let v = value.trim();
    match v.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            user_id: 7,
            username: "alice".into(),
            generation: 0,
            expires_at: 2_000,
        }
    }

    #[test]
    fn signed_token_verifies() {
        let key = TokenKey::new("0123456789abcdef");
        let token = key.sign(&claims());
        assert_eq!(key.verify(&token, 1_000), Ok(claims()));
    }

    #[test]
    fn tampering_is_detected() {
        let key = TokenKey::new("0123456789abcdef");
        let token = key.sign(&claims());
        let mut other = claims();
        other.user_id = 8;
        let forged_body = key.sign(&other);
        let forged = format!(
            "{}.{}",
            forged_body.split('.').next().unwrap(),
            token.split('.').nth(1).unwrap()
        );
        assert_eq!(key.verify(&forged, 1_000), Err(TokenError::BadSignature));
        let other_key = TokenKey::new("another-secret-0000");
        assert_eq!(
            other_key.verify(&token, 1_000),
            Err(TokenError::BadSignature)
        );
        assert_eq!(key.verify("nodot", 1_000), Err(TokenError::Malformed));
        assert_eq!(
            key.verify(&"a".repeat(600), 1_000),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn expired_tokens_are_refused() {
        let key = TokenKey::new("0123456789abcdef");
        let token = key.sign(&claims());
        assert_eq!(key.verify(&token, 2_000), Err(TokenError::Expired));
    }

    #[test]
    fn authorization_forms() {
        assert_eq!(from_authorization("abc.def"), "abc.def");
        assert_eq!(from_authorization("Bearer abc.def"), "abc.def");
        assert_eq!(from_authorization("bearer  abc.def "), "abc.def");
    }

    #[test]
    fn secret_resolution() {
        assert_eq!(resolve_secret(None, false), Err(SecretError::Missing));
        assert_eq!(resolve_secret(Some(""), true).unwrap(), DEV_SECRET);
        assert_eq!(
            resolve_secret(Some("short"), true),
            Err(SecretError::TooShort)
        );
        assert_eq!(
            resolve_secret(Some("0123456789abcdef"), false).unwrap(),
            "0123456789abcdef"
        );
    }
}
