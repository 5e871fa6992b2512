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

/// The handshake callback: only `/gateway` upgrades; the token is handed out
/// through `token` and checked after the upgrade, so a bad one gets a proper
/// 4004 close instead of an opaque HTTP error.
// The error type is tungstenite's, fixed by its `Callback` trait.
#[allow(clippy::result_large_err)]
pub fn handshake<'a>(
    token: &'a mut Option<String>,
) -> impl FnOnce(&Request, Response) -> Result<Response, ErrorResponse> + 'a {
    move |req, mut resp| {
        if req.uri().path() != "/gateway" {
            let mut not_found =
                ErrorResponse::new(Some("not found: the gateway is at /gateway".into()));
            *not_found.status_mut() = StatusCode::NOT_FOUND;
            return Err(not_found);
        }
        let (found, select) = token_from_request(req);
        *token = found;
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
    fn missing_token_is_an_error() {
        let key = TokenKey::new("0123456789abcdef");
        assert_eq!(verify(&key, None), Err(AuthError::Missing));
        assert_eq!(
            verify(&key, Some("x.y")),
            Err(AuthError::Token(TokenError::Malformed))
        );
    }
}
