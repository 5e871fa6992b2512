//! The token parser: `TokenKey::verify` on whatever a client presents.
//!
//! A fuzzer cannot forge an HMAC, so each input is used twice: as a token
//! (the attacker's view: every path up to the signature check), and as a
//! claims body signed with the fuzz key (the parsing behind the check,
//! reached only by a body the key really signed).
//!
//! Invariants: never panics; a token that verifies yields claims that sign
//! and verify back to the same claims; it re-signs to itself exactly when
//! its body is the canonical JSON of its claims (bodies with other spacing,
//! key order, escapes or extra keys verify too, since the signature covers
//! the body as sent, but only the backend's canonical form is ever issued);
//! every token the backend can issue verifies until it expires.

#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use otako_common::token::{Claims, TokenError, TokenKey};
use sha2::Sha256;
use std::sync::LazyLock;

/// The key the seed tokens in `corpus/token/` are signed with.
const SECRET: &str = "otako-fuzz-secret-0123456789";
/// 2023-11-14, before the seed tokens expire.
const NOW: i64 = 1_700_000_000;

static KEY: LazyLock<TokenKey> = LazyLock::new(|| TokenKey::new(SECRET));

/// `body` signed the way `TokenKey::sign` signs its encoded claims.
fn sign_body(body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(body.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{body}.{sig}")
}

/// What holds of every token that verifies, expired or not.
fn check_verified(token: &str, claims: &Claims) {
    let resigned = KEY.sign(claims);
    assert_eq!(
        KEY.verify(&resigned, claims.expires_at - 1).as_ref(),
        Ok(claims),
        "re-signed claims do not verify: {token:?}"
    );
    let body = token.split_once('.').expect("a verified token has a dot").0;
    let canonical = serde_json::to_vec(claims).expect("claims serialize");
    let canonical_body = URL_SAFE_NO_PAD.decode(body).expect("verified") == canonical;
    assert_eq!(
        resigned == token,
        canonical_body,
        "re-signing and canonical body disagree: {token:?}"
    );
    match KEY.verify(token, NOW) {
        Ok(c) => assert!(c == *claims && claims.expires_at > NOW),
        Err(TokenError::Expired) => assert!(claims.expires_at <= NOW),
        Err(e) => panic!("{token:?} verified once, then: {e}"),
    }
}

/// Claims as the backend issues them: usernames are 2-32 characters of
/// a-z, 0-9 and _.
fn issued_claims(u: &mut Unstructured) -> Result<Claims> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_";
    let len = u.int_in_range(2..=32usize)?;
    let mut username = String::with_capacity(len);
    for _ in 0..len {
        username.push(ALPHABET[u.choose_index(ALPHABET.len())?] as char);
    }
    Ok(Claims {
        user_id: u.int_in_range(1..=i64::MAX)?,
        username,
        generation: u.arbitrary()?,
        expires_at: u.int_in_range(i64::MIN + 1..=i64::MAX)?,
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        if let Ok(claims) = KEY.verify(token, i64::MIN) {
            check_verified(token, &claims);
        }
        let _ = KEY.verify(token, NOW);
    }

    let signed = sign_body(&URL_SAFE_NO_PAD.encode(data));
    if let Ok(claims) = KEY.verify(&signed, i64::MIN) {
        check_verified(&signed, &claims);
    }

    let mut u = Unstructured::new(data);
    if let Ok(claims) = issued_claims(&mut u) {
        let token = KEY.sign(&claims);
        assert_eq!(
            KEY.verify(&token, claims.expires_at - 1).as_ref(),
            Ok(&claims),
            "an issued token does not verify: {token:?}"
        );
        assert_eq!(
            KEY.verify(&token, claims.expires_at),
            Err(TokenError::Expired)
        );
    }
});
