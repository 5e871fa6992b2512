//! Heartbeat policing and the client frame cap, beyond what
//! `client_protocol.rs` covers (the interval from HELLO, 4009, a burst of five
//! heartbeats, an oversized frame): a steady rate within the limit is fine and
//! a steady rate over it is closed with 4008; the 1 KiB cap is exact.

use otako_e2e::{CloseCode, Stack, ARRIVE};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_heartbeat_rate_over_four_per_interval_is_closed_with_4008() {
    let interval = Duration::from_millis(1000);
    let stack = Stack::builder()
        .backend(false)
        .heartbeat_ms(interval.as_millis() as u64)
        .build()
        .await;
    let alice = stack.db.insert_user("alice").await;
    let token = stack.token_for(alice, "alice");
    let gw = stack.gateway(0);

    // Three per interval, for four intervals: within the limit.
    let mut c = gw.connect(&token, "three per interval").await;
    assert_eq!(c.hello.as_ref().unwrap()["heartbeat_interval"], 1000);
    for _ in 0..12 {
        tokio::time::sleep(interval / 3).await;
        c.heartbeat_acked().await;
    }

    // Then six per interval: too frequent, whichever way the intervals are
    // counted. Each is acknowledged until the gateway closes with 4008.
    let started = tokio::time::Instant::now();
    let mut acked = 0;
    loop {
        tokio::time::sleep(interval / 6).await;
        c.heartbeat().await;
        match c.next_incoming(ARRIVE).await {
            Some(otako_e2e::Incoming::Json(v)) if v == json!({"op": 11}) => acked += 1,
            Some(otako_e2e::Incoming::Close(Some(code), _))
                if code == CloseCode::TooFrequent.code() =>
            {
                break
            }
            other => panic!(
                "expected an ack or close {}, got {other:?}",
                CloseCode::TooFrequent
            ),
        }
        assert!(
            started.elapsed() < interval * 3,
            "six heartbeats per interval for {:?} ({acked} acked) and still open",
            started.elapsed()
        );
    }
    println!(
        "closed with 4008 after {acked} acked heartbeats at six per interval ({:?})",
        started.elapsed()
    );
    // More than four got through only if they straddled two intervals.
    assert!(acked <= 8, "{acked} heartbeats acked at six per interval");

    // The node is unharmed.
    let mut c = gw.connect(&token, "after").await;
    c.heartbeat_acked().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_frames_are_capped_at_exactly_one_kib() {
    let stack = Stack::builder().backend(false).build().await;
    let alice = stack.db.insert_user("alice").await;
    let token = stack.token_for(alice, "alice");
    let gw = stack.gateway(0);
    // A heartbeat padded with JSON whitespace to a given size.
    let padded = |size: usize| {
        let beat = r#"{"op":1,"d":null}"#;
        let text = format!("{}{beat}", " ".repeat(size - beat.len()));
        assert_eq!(text.len(), size);
        text
    };

    // 1024 bytes: still a heartbeat.
    let mut c = gw.connect(&token, "1024 bytes").await;
    c.send_text(&padded(1024)).await;
    assert_eq!(
        c.next_json(ARRIVE).await,
        json!({"op": 11}),
        "a 1 KiB heartbeat is acknowledged"
    );
    c.heartbeat_acked().await;
    c.close().await;

    // 1025 bytes: over the cap, though otherwise a valid heartbeat.
    let mut c = gw.connect(&token, "1025 bytes").await;
    c.send_text(&padded(1025)).await;
    c.expect_close(CloseCode::Rejected, ARRIVE).await;

    // Far over the cap (64 KiB): closed the same way, not read to the end.
    let mut c = gw.connect(&token, "64 KiB").await;
    c.send_text(&padded(64 * 1024)).await;
    c.expect_close(CloseCode::Rejected, ARRIVE).await;

    let mut c = gw.connect(&token, "after").await;
    c.heartbeat_acked().await;
}
