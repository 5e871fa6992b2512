//! The gateway's decision on a client text frame: heartbeat or refused.
//!
//! Invariants: never panics, and says yes only to a JSON object whose keys
//! are `op` (the integer 1) and optionally `d` (an integer that fits a u64,
//! or null), each once; the frame's canonical JSON form is then a heartbeat
//! too. The time per frame is bounded by libFuzzer's `-timeout`, with inputs
//! up to the gateway's frame limit (`-max_len=1024` in deploy/scripts/fuzz.sh).

#![no_main]

use libfuzzer_sys::fuzz_target;
use otako_common::client_frame::is_heartbeat;
use serde_json::Value;

/// The heartbeat shape, decided on the generic JSON value rather than on
/// the typed frame the gateway uses, so the two are checked against each
/// other. Duplicate keys collapse in a `Value`, so this alone cannot prove a
/// frame is a heartbeat, only that a heartbeat has the shape.
fn heartbeat_shape(v: &Value) -> bool {
    let Some(obj) = v.as_object() else {
        return false;
    };
    let op_ok = obj.get("op").and_then(Value::as_u64) == Some(1);
    let d_ok = match obj.get("d") {
        None | Some(Value::Null) => true,
        Some(d) => d.as_u64().is_some(),
    };
    let keys_ok = obj.keys().all(|k| k == "op" || k == "d");
    op_ok && d_ok && keys_ok
}

fuzz_target!(|data: &[u8]| {
    // tungstenite hands the session only valid UTF-8 as a text frame.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let beat = is_heartbeat(text);
    let value = serde_json::from_str::<Value>(text);
    if beat {
        let v = value
            .as_ref()
            .unwrap_or_else(|e| panic!("a heartbeat that is not JSON: {text:?}: {e}"));
        assert!(heartbeat_shape(v), "not a heartbeat's shape: {text:?}");
    }
    if let Ok(v) = &value {
        if heartbeat_shape(v) {
            let canonical = v.to_string();
            assert!(
                is_heartbeat(&canonical),
                "a heartbeat's shape refused: {canonical:?} (from {text:?})"
            );
        }
    }
});
