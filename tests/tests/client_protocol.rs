//! The client side of the gateway: who may connect, and the one frame a client
//! may send. Users are created in the database directly, with tokens signed
//! like the backend signs them; no backend runs.

use otako_common::token::{Claims, TokenKey};
use otako_e2e::{mint_token, Auth, CloseCode, Stack, WsClient, ARRIVE, QUIET, TEST_SECRET};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_client_frame_but_a_heartbeat_is_rejected() {
    let stack = Stack::builder().backend(false).build().await;
    let alice = stack.db.insert_user("alice").await;
    let token = stack.token_for(alice, "alice");
    let gw = stack.gateway(0);

    // The accepted frames first: a heartbeat is acknowledged, a ping ponged,
    // and the session stays open.
    let mut c = gw.connect(&token, "alice").await;
    c.heartbeat_acked().await;
    c.send_ping(b"are you there".to_vec()).await;
    assert_eq!(
        c.next_incoming(ARRIVE).await,
        Some(otako_e2e::Incoming::Pong(b"are you there".to_vec()))
    );
    c.send_text(r#"{"op":1,"d":1}"#).await;
    assert_eq!(c.next_json(ARRIVE).await, serde_json::json!({"op": 11}));
    c.expect_no_dispatch(QUIET).await;
    c.close().await;

    enum Frame {
        Text(String),
        Binary(Vec<u8>),
    }
    let oversized = format!(r#"{{"op":1,"d":null,"pad":"{}"}}"#, "x".repeat(16 * 1024));
    let cases = [
        ("text garbage", Frame::Text("hello gateway".into())),
        ("another opcode", Frame::Text(r#"{"op":2,"d":null}"#.into())),
        ("JSON that is no object", Frame::Text("[1]".into())),
        (
            "a binary frame",
            Frame::Binary(br#"{"op":1,"d":null}"#.to_vec()),
        ),
        ("an oversized frame", Frame::Text(oversized)),
    ];
    for (what, frame) in cases {
        let mut c = gw.connect(&token, what).await;
        match frame {
            Frame::Text(t) => c.send_text(&t).await,
            Frame::Binary(b) => c.send_binary(b).await,
        }
        c.expect_close(CloseCode::Rejected, ARRIVE).await;
    }

    // The node is unharmed.
    let mut c = gw.connect(&token, "alice again").await;
    c.heartbeat_acked().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_session_open_and_are_policed() {
    let interval = Duration::from_millis(500);
    let stack = Stack::builder()
        .backend(false)
        .heartbeat_ms(interval.as_millis() as u64)
        .build()
        .await;
    let alice = stack.db.insert_user("alice").await;
    let token = stack.token_for(alice, "alice");
    let gw = stack.gateway(0);

    let mut c = gw.connect_raw(Auth::Header(&token), "alice").await;
    let hello = c.hello().await;
    assert_eq!(hello["heartbeat_interval"], 500);
    c.ready().await;
    // Beating every half interval for four intervals keeps the session,
    // though that is well past the 1.5 intervals of the timeout.
    let mut last_beat = Instant::now();
    for _ in 0..8 {
        tokio::time::sleep(interval / 2).await;
        // Taken before sending: the server cannot see the beat earlier.
        last_beat = Instant::now();
        c.heartbeat_acked().await;
    }
    c.expect_close(CloseCode::HeartbeatTimeout, ARRIVE).await;
    let silent = last_beat.elapsed();
    assert!(
        silent >= interval * 3 / 2,
        "closed {silent:?} after the last heartbeat, before 1.5 intervals"
    );

    // A session that sends no heartbeat at all times out the same way.
    let mut c = gw.connect(&token, "silent").await;
    c.expect_close(CloseCode::HeartbeatTimeout, ARRIVE).await;

    // More than 4 heartbeats in one interval is too many. Sent back to back,
    // so all five surely land in one interval: four acks, then 4008.
    let mut c = gw.connect(&token, "eager").await;
    for _ in 0..5 {
        c.heartbeat().await;
    }
    for _ in 0..4 {
        assert_eq!(c.next_json(ARRIVE).await, serde_json::json!({"op": 11}));
    }
    c.expect_close(CloseCode::TooFrequent, ARRIVE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_4004() {
    let stack = Stack::builder().backend(false).build().await;
    let alice = stack.db.insert_user("alice").await;
    let bob = stack.db.insert_user("bob").await;
    let token = stack.token_for(alice, "alice");
    let gw = stack.gateway(0);
    let (body, sig) = token.split_once('.').expect("token is body.signature");

    // Claims of another user under alice's signature.
    let bobs_body = stack.token_for(bob, "bob");
    let swapped = format!("{}.{sig}", bobs_body.split_once('.').unwrap().0);
    // One character of the signature changed.
    let mut sig_chars: Vec<char> = sig.chars().collect();
    sig_chars[10] = if sig_chars[10] == 'A' { 'B' } else { 'A' };
    let bad_sig = format!("{body}.{}", sig_chars.iter().collect::<String>());
    let other_secret = mint_token("some-other-secret-0123456789", alice, "alice", 0);
    let expired = TokenKey::new(TEST_SECRET).sign(&Claims {
        user_id: alice,
        username: "alice".into(),
        generation: 0,
        expires_at: chrono::Utc::now().timestamp() - 60,
    });
    let unknown_user = stack.token_for(alice + bob + 1000, "ghost");

    let cases: Vec<(&str, Auth)> = vec![
        ("no token", Auth::None),
        ("empty token", Auth::Header("")),
        ("another user's claims", Auth::Header(&swapped)),
        ("a changed signature", Auth::Header(&bad_sig)),
        (
            "a changed signature, as subprotocol",
            Auth::Subprotocol(&bad_sig),
        ),
        ("another secret", Auth::Bearer(&other_secret)),
        ("not a token", Auth::Header("garbage")),
        ("an expired token", Auth::Header(&expired)),
        ("a user that does not exist", Auth::Header(&unknown_user)),
    ];
    for (what, auth) in cases {
        let mut c = gw.connect_raw(auth, what).await;
        c.expect_refused(CloseCode::AuthFailed).await;
    }

    // The good token works in each of the three forms.
    for (what, auth) in [
        ("header", Auth::Header(&token)),
        ("bearer", Auth::Bearer(&token)),
        ("subprotocol", Auth::Subprotocol(&token)),
    ] {
        let mut c = gw.connect_raw(auth, what).await;
        let ready = c.handshake().await;
        assert_eq!(ready["user"]["id"], alice.to_string(), "{what}");
        assert_eq!(ready["user"]["username"], "alice", "{what}");
        if matches!(auth, Auth::Subprotocol(_)) {
            assert_eq!(
                c.protocol.as_deref(),
                Some("otako.v1"),
                "the server selects otako.v1"
            );
        }
        c.close().await;
    }

    // A revoked token (the user's generation moved on) is refused too.
    stack.db.bump_token_generation(alice).await;
    let mut c = gw.connect_raw(Auth::Header(&token), "revoked").await;
    c.expect_refused(CloseCode::AuthFailed).await;
    let fresh = mint_token(TEST_SECRET, alice, "alice", 1);
    gw.connect(&fresh, "new generation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_path_but_the_gateway_is_answered_404_without_an_upgrade() {
    let stack = Stack::builder().backend(false).build().await;
    let alice = stack.db.insert_user("alice").await;
    let token = stack.token_for(alice, "alice");
    let gw = stack.gateway(0);
    for path in ["/", "/gateway/", "/gateways", "/api/gateway", "/healthz"] {
        let url = format!("ws://{}{path}", gw.ws_addr);
        match WsClient::try_connect(&url, Auth::Header(&token), path).await {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 404, "{path}: {resp:?}")
            }
            Err(e) => panic!("{path}: expected a 404 answer, got {e}"),
            Ok(_) => panic!("{path}: upgraded, but only /gateway is the gateway"),
        }
    }
    // The gateway itself is still there.
    let mut c = gw.connect(&token, "alice").await;
    c.heartbeat_acked().await;
}
