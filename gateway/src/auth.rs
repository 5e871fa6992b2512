//! Who is connecting: the token from the upgrade request, checked by its
//! signature alone (no database query).

use otako_common::token::{self, Claims, TokenError, TokenKey};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};

pub const SUBPROTOCOL: &str = "otako.v1";
const TOKEN_PROTOCOL_PREFIX: &str = "otako.token.";

/// Reads the token from the `Authorization` header or, for browsers, the
/// subprotocol list `["otako.v1", "otako.token.<token>"]`. Returns the token
/// and whether the `otako.v1` subprotocol must be selected.
pub fn token_from_request(req: &Request) -> (Option<String>, bool) {
    let protocols: Vec<&str> = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let select = protocols.contains(&SUBPROTOCOL);
    if let Some(auth) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(token::from_authorization)
        .filter(|t| !t.is_empty())
    {
        return (Some(auth.to_owned()), select);
    }
    let from_protocol = protocols
        .iter()
        .find_map(|p| p.strip_prefix(TOKEN_PROTOCOL_PREFIX))
        .map(str::to_owned);
    (from_protocol, select)
}

/// The upgrade header that carries a resume cursor (the `resume` query
/// parameter does the same for browsers).
pub const RESUME_HEADER: &str = "otako-resume";

/// What the upgrade request says about the session: who, and where to
/// resume from.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Upgrade {
    pub token: Option<String>,
    pub resume: Option<String>,
}

/// The cursor from `?resume=<cursor>` or the `Otako-Resume` header. Cursors
/// use only characters that need no escaping in a query, so the value is
/// taken as it is; a malformed one is the resume's to refuse.
pub fn resume_from_request(req: &Request) -> Option<String> {
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("resume="))
            .map(str::to_owned)
    });
    from_query.or_else(|| {
        req.headers()
            .get(RESUME_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_owned())
    })
}

/// The handshake callback: only `/gateway` upgrades; the token is handed out
/// through `upgrade` and checked after the upgrade, so a bad one gets a
/// proper 4004 close instead of an opaque HTTP error.
// The error type is tungstenite's, fixed by its `Callback` trait.
#[allow(clippy::result_large_err)]
pub fn handshake<'a>(
    upgrade: &'a mut Upgrade,
) -> impl FnOnce(&Request, Response) -> Result<Response, ErrorResponse> + 'a {
    move |req, mut resp| {
        if req.uri().path() != "/gateway" {
            let mut not_found =
                ErrorResponse::new(Some("not found: the gateway is at /gateway".into()));
            *not_found.status_mut() = StatusCode::NOT_FOUND;
            return Err(not_found);
        }
        let (found, select) = token_from_request(req);
        upgrade.token = found;
        upgrade.resume = resume_from_request(req);
        if select {
            resp.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static(SUBPROTOCOL),
            );
        }
        Ok(resp)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error(
        "no token: send it in the Authorization header or the otako.token.<token> subprotocol"
    )]
    Missing,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("token was revoked")]
    Revoked,
}

pub fn verify(key: &TokenKey, token: Option<&str>) -> Result<Claims, AuthError> {
    let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
    Ok(key.verify(token, chrono::Utc::now().timestamp())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request {
        let mut b = Request::builder().uri("/gateway");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn token_from_header_or_subprotocol() {
        assert_eq!(
            token_from_request(&request(&[("authorization", "Bearer abc")])),
            (Some("abc".into()), false)
        );
        assert_eq!(
            token_from_request(&request(&[(
                "sec-websocket-protocol",
                "otako.v1, otako.token.xyz"
            )])),
            (Some("xyz".into()), true)
        );
        assert_eq!(token_from_request(&request(&[])), (None, false));
        // An empty header does not hide a token in the subprotocol list.
        assert_eq!(
            token_from_request(&request(&[
                ("authorization", ""),
                ("sec-websocket-protocol", "otako.v1, otako.token.xyz")
            ])),
            (Some("xyz".into()), true)
        );
    }

    #[test]
    fn resume_from_query_or_header() {
        let q = Request::builder()
            .uri("/gateway?v=1&resume=ab.12")
            .body(())
            .unwrap();
        assert_eq!(resume_from_request(&q).as_deref(), Some("ab.12"));
        let h = request(&[("otako-resume", " ab.13 ")]);
        assert_eq!(resume_from_request(&h).as_deref(), Some("ab.13"));
        assert_eq!(resume_from_request(&request(&[])), None);
    }

    #[test]
    fn missing_token_is_an_error() {
        let key = TokenKey::new("0123456789abcdef");
        assert_eq!(verify(&key, None), Err(AuthError::Missing));
        assert_eq!(
            verify(&key, Some("x.y")),
            Err(AuthError::Token(TokenError::Malformed))
        );
    }
}
