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
    #[error("OTAKO_TOKEN_SECRET must be at least {MIN_SECRET_BYTES} bytes")]
    TooShort,
    #[error(
        "OTAKO_TOKEN_SECRET must be at least {MIN_PRODUCTION_SECRET_BYTES} bytes outside development \
         mode (e.g. `openssl rand -base64 48`; OTAKO_DEV=1 allows shorter ones)"
    )]
    Weak,
    #[error(
        "OTAKO_TOKEN_SECRET is a published or placeholder value that anyone can sign tokens with; \
         set a random one (e.g. `openssl rand -base64 48`; OTAKO_DEV=1 allows it)"
    )]
    KnownPublic,
}

/// The shortest secret accepted at all.
pub const MIN_SECRET_BYTES: usize = 16;
/// The shortest secret accepted outside development mode: an HMAC-SHA256
/// key of 32 random bytes cannot be guessed.
pub const MIN_PRODUCTION_SECRET_BYTES: usize = 32;

/// Secrets that are in this repository, its history or common templates:
/// anyone can sign tokens with them.
const PUBLIC_SECRETS: &[&str] = &[
    DEV_SECRET,
    // The default deploy/compose.yaml once shipped.
    "compose-dev-token-secret-not-for-production",
    "changeme",
    "change-me",
    "changeit",
    "secret",
    "password",
    "otako",
    "your-secret-here",
    "replace-me",
    "replace-with-a-random-secret",
    "please-change-this-secret-in-production",
];

/// Whether `secret` is one of the published values, or a value built by
/// repeating a few characters (`changemechangeme...`, `0000...`), which no
/// random generator produces.
fn is_public(secret: &str) -> bool {
    let lower = secret.trim().to_ascii_lowercase();
    if PUBLIC_SECRETS.iter().any(|p| lower == *p) {
        return true;
    }
    let mut distinct = [false; 256];
    for b in lower.bytes() {
        distinct[b as usize] = true;
    }
    distinct.iter().filter(|d| **d).count() < 10
}

/// Picks the token secret the contract's way: the configured one, else the
/// fixed development secret only in development mode. Outside development
/// mode a known public or placeholder secret, or one shorter than
/// [`MIN_PRODUCTION_SECRET_BYTES`], is refused: tokens signed with it could
/// be forged by anyone who read it.
pub fn resolve_secret(configured: Option<&str>, dev: bool) -> Result<String, SecretError> {
    match configured.filter(|s| !s.is_empty()) {
        Some(s) if s.len() < MIN_SECRET_BYTES => Err(SecretError::TooShort),
        Some(s) if !dev && is_public(s) => Err(SecretError::KnownPublic),
        Some(s) if !dev && s.len() < MIN_PRODUCTION_SECRET_BYTES => Err(SecretError::Weak),
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
    fn the_fuzz_seed_token_is_what_sign_makes() {
        // fuzz/corpus/token/seed-valid: if the encoding changes, tokens
        // already issued stop verifying, and the seed must be made anew.
        let key = TokenKey::new("otako-fuzz-secret-0123456789");
        let seed = "eyJ1Ijo3LCJuIjoiYWxpY2UiLCJnIjowLCJlIjo0MTAyNDQ0ODAwfQ.rfErVyjAWJO8rHtluu0FeO84G9Ikjzj8q7Uc8OG2jyI";
        let claims = Claims {
            user_id: 7,
            username: "alice".into(),
            generation: 0,
            expires_at: 4_102_444_800,
        };
        assert_eq!(key.sign(&claims), seed);
        assert_eq!(key.verify(seed, 1_700_000_000), Ok(claims));
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
        // Development mode keeps today's 16-byte minimum.
        assert_eq!(
            resolve_secret(Some("0123456789abcdef"), true).unwrap(),
            "0123456789abcdef"
        );
        let random = "Yl3Qh0q8mR2v9XwZb7TnK4sJ1dPfE6uA";
        assert_eq!(resolve_secret(Some(random), false).unwrap(), random);
    }

    #[test]
    fn production_refuses_public_and_short_secrets() {
        assert_eq!(
            resolve_secret(Some("0123456789abcdef"), false),
            Err(SecretError::Weak)
        );
        assert_eq!(
            resolve_secret(Some("short"), false),
            Err(SecretError::TooShort)
        );
        for public in [
            DEV_SECRET,
            "compose-dev-token-secret-not-for-production",
            "Compose-Dev-Token-Secret-Not-For-Production",
            "please-change-this-secret-in-production",
            "changemechangemechangemechangeme",
            "00000000000000000000000000000000000000",
            "abababababababababababababababababab",
        ] {
            assert_eq!(
                resolve_secret(Some(public), false),
                Err(SecretError::KnownPublic),
                "{public}"
            );
            // Development mode takes them, as the contract allows.
            assert_eq!(resolve_secret(Some(public), true).unwrap(), public);
        }
        // The end-to-end tests' secret (32 bytes) is a production-grade one.
        assert!(resolve_secret(Some("otako-e2e-test-secret-0123456789"), false).is_ok());
        // The error never repeats the secret.
        let e = resolve_secret(Some(DEV_SECRET), false)
            .unwrap_err()
            .to_string();
        assert!(!e.contains(DEV_SECRET), "{e}");
    }
}
