//! What a client may send on its WebSocket: heartbeats only.
//!
//! The decision lives here, apart from the gateway's session loop, so it is
//! a pure function of the frame's text that unit tests and the fuzz targets
//! call directly.

use serde::Deserialize;

/// The one client frame the contract accepts. Unknown fields refuse the
/// frame, so nothing a client adds is silently ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFrame {
    op: u8,
    #[allow(dead_code)]
    d: Option<u64>,
}

/// Whether a text frame is a heartbeat `{"op":1,"d":<s or null>}`.
pub fn is_heartbeat(text: &str) -> bool {
    // serde also reads a struct from an array of its fields (`[1,7]`), a
    // frame the contract does not allow: only an object is a heartbeat.
    let is_object = text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{');
    is_object
        && matches!(
            serde_json::from_str::<ClientFrame>(text),
            Ok(ClientFrame { op: 1, .. })
        )
}

#[cfg(test)]
mod tests {
    use super::is_heartbeat;

    #[test]
    fn only_heartbeats_pass() {
        assert!(is_heartbeat(r#"{"op":1,"d":null}"#));
        assert!(is_heartbeat(r#"{"op":1,"d":42}"#));
        assert!(!is_heartbeat(r#"{"op":2,"d":null}"#));
        assert!(!is_heartbeat(r#"{"op":1,"d":null,"x":1}"#));
        assert!(!is_heartbeat(r#"{"op":1,"d":"s"}"#));
        assert!(!is_heartbeat("hello"));
    }

    #[test]
    fn a_heartbeat_is_an_object_not_an_array() {
        // serde reads a struct from a JSON array of its fields too, which
        // deny_unknown_fields does not stop.
        assert!(!is_heartbeat("[1,7]"));
        assert!(!is_heartbeat(" [1,null]"));
        assert!(is_heartbeat(" \t\r\n{\"op\":1,\"d\":7}"));
    }
}
