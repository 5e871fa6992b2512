//! Trust on the bus: what the cluster publishes for itself (the event
//! history, revocations, roundtrip replies) carries an HMAC that only holders
//! of the cluster's key can make, so a NATS client that is not part of the
//! cluster can neither forge nor alter those messages, even on a server with
//! no authorization configured.
//!
//! The key is derived from the token secret both binaries already share
//! (`OTAKO_TOKEN_SECRET`), under a label of its own, so a bus signature is
//! never also a valid token signature and no new secret has to be deployed.
//!
//! A signature covers the subject, a timestamp and the payload, so a signed
//! message cannot be moved to another subject (a roundtrip reply to another
//! request's inbox), and a copy replayed long after the fact is refused by
//! its age. Within the allowed age, each consumer drops copies by its own
//! means (the history by message id and stream sequence, revocations by
//! signature).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header that carries `<unix ms>.<base64url HMAC>`.
pub const SIGNATURE_HEADER: &str = "Otako-Sig";

const KEY_LABEL: &[u8] = b"otako bus key v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("unsigned")]
    Unsigned,
    #[error("malformed signature")]
    Malformed,
    #[error("bad signature")]
    BadSignature,
    #[error("signed {age_ms} ms away from the time it is checked at")]
    Stale { age_ms: i64 },
}

impl BusError {
    /// A short label for metrics: `unsigned`, `forged` or `stale`.
    pub fn kind(&self) -> &'static str {
        match self {
            BusError::Unsigned => "unsigned",
            BusError::Malformed | BusError::BadSignature => "forged",
            BusError::Stale { .. } => "replayed",
        }
    }
}

/// The cluster's key for signing bus messages.
#[derive(Clone)]
pub struct BusKey {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for BusKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusKey(..)")
    }
}

impl BusKey {
    /// Derives the bus key from the shared token secret.
    pub fn from_secret(secret: &str) -> BusKey {
        let mut derive = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .expect("HMAC takes keys of any length");
        derive.update(KEY_LABEL);
        let key = derive.finalize().into_bytes();
        BusKey {
            mac: Hmac::new_from_slice(&key).expect("HMAC takes keys of any length"),
        }
    }

    fn digest(&self, subject: &str, at_ms: i64, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(subject.as_bytes());
        mac.update(b"\n");
        mac.update(at_ms.to_string().as_bytes());
        mac.update(b"\n");
        mac.update(payload);
        mac
    }

    /// The header value for `payload` published on `subject` at `at_ms`.
    pub fn sign(&self, subject: &str, at_ms: i64, payload: &[u8]) -> String {
        let sig = self.digest(subject, at_ms, payload).finalize().into_bytes();
        format!("{at_ms}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// Checks a header value; `now_ms` is the time the message is judged at
    /// (the stream's timestamp for a stored message, the clock otherwise) and
    /// `max_age_ms` how far from it the signing time may be.
    pub fn verify(
        &self,
        subject: &str,
        header: Option<&str>,
        payload: &[u8],
        now_ms: i64,
        max_age_ms: i64,
    ) -> Result<i64, BusError> {
        let header = header.ok_or(BusError::Unsigned)?;
        let (at, sig) = header.split_once('.').ok_or(BusError::Malformed)?;
        let at_ms: i64 = at.parse().map_err(|_| BusError::Malformed)?;
        if sig.len() > 64 {
            return Err(BusError::Malformed);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| BusError::Malformed)?;
        self.digest(subject, at_ms, payload)
            .verify_slice(&sig)
            .map_err(|_| BusError::BadSignature)?;
        let age_ms = now_ms - at_ms;
        if age_ms.abs() > max_age_ms {
            return Err(BusError::Stale { age_ms });
        }
        Ok(at_ms)
    }

    /// A keyed digest of `text` as 32 hex digits: an id that only the
    /// cluster can compute (the history's `Nats-Msg-Id`), so nobody outside
    /// it can take an id a real event will use.
    pub fn keyed_id(&self, text: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(b"id\n");
        mac.update(text.as_bytes());
        crate::event::hex(&mac.finalize().into_bytes()[..16])
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_binds_subject_time_and_payload() {
        let key = BusKey::from_secret("otako-e2e-test-secret-0123456789");
        let h = key.sign("otako.revoke", 1_000, b"{}");
        assert_eq!(
            key.verify("otako.revoke", Some(&h), b"{}", 1_500, 60_000),
            Ok(1_000)
        );
        assert_eq!(
            key.verify("otako.revoke", Some(&h), b"{ }", 1_500, 60_000),
            Err(BusError::BadSignature)
        );
        assert_eq!(
            key.verify("otako.other", Some(&h), b"{}", 1_500, 60_000),
            Err(BusError::BadSignature)
        );
        let moved_in_time = h.replacen("1000", "2000", 1);
        assert_eq!(
            key.verify("otako.revoke", Some(&moved_in_time), b"{}", 1_500, 60_000),
            Err(BusError::BadSignature)
        );
        assert_eq!(
            key.verify("otako.revoke", Some(&h), b"{}", 100_000, 60_000),
            Err(BusError::Stale { age_ms: 99_000 })
        );
        assert_eq!(
            key.verify("otako.revoke", None, b"{}", 1_500, 60_000),
            Err(BusError::Unsigned)
        );
        assert_eq!(
            key.verify("otako.revoke", Some("x"), b"{}", 1_500, 60_000),
            Err(BusError::Malformed)
        );
    }

    #[test]
    fn another_secret_cannot_sign_and_ids_are_keyed() {
        let key = BusKey::from_secret("otako-e2e-test-secret-0123456789");
        let other = BusKey::from_secret("some-other-secret-0123456789abcd");
        let h = other.sign("s", 1, b"x");
        assert_eq!(
            key.verify("s", Some(&h), b"x", 1, 10),
            Err(BusError::BadSignature)
        );
        assert_ne!(key.keyed_id("e1"), other.keyed_id("e1"));
        assert_eq!(key.keyed_id("e1"), key.keyed_id("e1"));
        assert_eq!(key.keyed_id("e1").len(), 32);
    }
}
