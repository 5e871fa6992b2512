//! Resume end to end: a client that comes back with the last cursor it
//! received gets every event it missed exactly once, in per-channel order,
//! on any node, that node dead or alive; a bad cursor starts a fresh session
//! (`resumed:false`) and never closes it.

use otako_common::close::CloseCode;
use otako_e2e::{Auth, Stack, WsClient, ARRIVE, QUIET};
use serde_json::Value;
use std::time::Duration;

/// Opens a session on `url` that resumes from `cursor` (query parameter)
/// and reads hello and READY.
async fn resume(url: &str, token: &str, cursor: &str, label: &str) -> WsClient {
    let url = format!("{url}?resume={cursor}");
    let mut c = WsClient::connect(&url, Auth::Header(token), label).await;
    c.handshake().await;
    c
}

fn resumed(c: &WsClient) -> bool {
    let ready = c.ready.as_ref().expect("READY was read");
    ready["resumed"]
        .as_bool()
        .unwrap_or_else(|| panic!("READY without a boolean resumed: {ready}"))
}

/// Reads dispatches until `n` have arrived; returns `(t, d)` of each.
async fn next_events(c: &mut WsClient, n: usize) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = c.next_dispatch(ARRIVE).await;
        out.push((v["t"].as_str().unwrap().to_owned(), v["d"].clone()));
    }
    out
}

fn contents(events: &[(String, Value)]) -> Vec<String> {
    events
        .iter()
        .map(|(t, d)| match t.as_str() {
            "EVENT_MESSAGE_CREATE" => d["content"].as_str().unwrap().to_owned(),
            other => format!("{other}:{}:{}", d["channel_id"], d["user_id"]),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_node_with_every_missed_event_once() {
    let stack = Stack::builder().gateways(2).build().await;
    let api = stack.api();
    let (alice, bob, channel) = stack.alice_and_bob("general").await;

    let mut bob1 = stack.gateway(0).connect(&bob.token, "bob@gw-1").await;
    assert!(!resumed(&bob1), "a session without a cursor is fresh");
    api.post_message(&alice.token, &channel, "m1", None).await;
    assert_eq!(contents(&next_events(&mut bob1, 1).await), ["m1"]);
    let cursor = bob1.last_cursor.clone().expect("m1 carried a cursor");
    bob1.close().await;

    for m in ["m2", "m3", "m4"] {
        api.post_message(&alice.token, &channel, m, None).await;
    }
    stack.db.wait_outbox_settled(ARRIVE).await;

    let mut bob2 = resume(&stack.gateway(1).ws_url(), &bob.token, &cursor, "bob@gw-2").await;
    assert!(resumed(&bob2), "a fresh cursor resumes: {:?}", bob2.ready);
    assert_eq!(bob2.ready.as_ref().unwrap()["cursor"], cursor.as_str());
    assert_eq!(
        contents(&next_events(&mut bob2, 3).await),
        ["m2", "m3", "m4"]
    );
    bob2.expect_no_dispatch(QUIET).await;
    // Live events follow the replay with no gap and no repeat.
    api.post_message(&alice.token, &channel, "m5", None).await;
    assert_eq!(contents(&next_events(&mut bob2, 1).await), ["m5"]);
    bob2.expect_no_dispatch(QUIET).await;

    // The header form works the same, from the same cursor.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        stack.gateway(0).ws_url(),
    )
    .unwrap();
    req.headers_mut()
        .insert("authorization", bob.token.parse().unwrap());
    req.headers_mut()
        .insert("otako-resume", cursor.parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut raw = ws;
    use futures_util::StreamExt;
    let mut texts = Vec::new();
    while texts.len() < 6 {
        let msg = tokio::time::timeout(ARRIVE, raw.next())
            .await
            .expect("frames arrive")
            .unwrap()
            .unwrap();
        texts.push(serde_json::from_str::<Value>(msg.to_text().unwrap()).unwrap());
    }
    assert_eq!(texts[1]["d"]["resumed"], true, "{}", texts[1]);
    let got: Vec<&str> = texts[2..]
        .iter()
        .map(|v| v["d"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["m2", "m3", "m4", "m5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_nodes_sessions_resume_elsewhere_without_loss() {
    let mut stack = Stack::builder().gateways(2).build().await;
    let api = stack.api().clone();
    let (alice, bob, channel) = stack.alice_and_bob("general").await;

    let mut bob1 = stack.gateway(0).connect(&bob.token, "bob@gw-1").await;
    api.post_message(&alice.token, &channel, "before", None)
        .await;
    next_events(&mut bob1, 1).await;
    let cursor = bob1.last_cursor.clone().unwrap();
    // Killed before its answer to "before", the node would leave it to the
    // dispatch timeout (10 s) and a retry, outlasting the wait below.
    stack.db.wait_outbox_settled(ARRIVE).await;

    stack.gateways[0].proc().kill();
    for i in 0..5 {
        api.post_message(&alice.token, &channel, &format!("while-dead-{i}"), None)
            .await;
    }
    stack.db.wait_outbox_settled(ARRIVE).await;
    let mut bob2 = resume(&stack.gateway(1).ws_url(), &bob.token, &cursor, "bob@gw-2").await;
    assert!(resumed(&bob2));
    let want: Vec<String> = (0..5).map(|i| format!("while-dead-{i}")).collect();
    assert_eq!(contents(&next_events(&mut bob2, 5).await), want);
    bob2.expect_no_dispatch(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_session_resumes_from_its_last_cursor() {
    let mut stack = Stack::builder().gateways(2).build().await;
    let api = stack.api().clone();
    let (alice, bob, channel) = stack.alice_and_bob("general").await;

    let mut bob1 = stack.gateway(0).connect(&bob.token, "bob@gw-1").await;
    api.post_message(&alice.token, &channel, "m1", None).await;
    next_events(&mut bob1, 1).await;
    stack.gateways[0].proc().sigterm();
    // op 7, then 1012: everything queued before the close came first.
    let op7 = bob1.next_json(ARRIVE).await;
    assert_eq!(op7["op"], 7, "{op7}");
    bob1.expect_close(CloseCode::Restart, ARRIVE).await;
    let cursor = bob1.last_cursor.clone().unwrap();
    api.post_message(&alice.token, &channel, "m2", None).await;
    let mut bob2 = resume(&stack.gateway(1).ws_url(), &bob.token, &cursor, "bob@gw-2").await;
    assert!(resumed(&bob2));
    assert_eq!(contents(&next_events(&mut bob2, 1).await), ["m2"]);
    bob2.expect_no_dispatch(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_in_the_gap_apply_at_the_event_they_happened() {
    let stack = Stack::builder().gateways(2).build().await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let bob = api.create_user("bob").await;
    let a = api.create_channel(&alice.token, "a").await;
    let b = api.create_channel(&alice.token, "b").await;
    api.add_member(&alice.token, &a, &bob.id).await;
    stack.db.wait_outbox_settled(ARRIVE).await;

    let mut bob1 = stack.gateway(0).connect(&bob.token, "bob@gw-1").await;
    api.post_message(&alice.token, &a, "a0", None).await;
    next_events(&mut bob1, 1).await;
    let cursor = bob1.last_cursor.clone().unwrap();
    bob1.close().await;

    // While bob is away: a message he may see, his removal from a, a message
    // he may not see, messages of b before and after he is added to it.
    api.post_message(&alice.token, &a, "a1", None).await;
    api.remove_member(&alice.token, &a, &bob.id).await;
    api.post_message(&alice.token, &a, "a2-not-for-bob", None)
        .await;
    api.post_message(&alice.token, &b, "b0-not-for-bob", None)
        .await;
    api.add_member(&alice.token, &b, &bob.id).await;
    api.post_message(&alice.token, &b, "b1", None).await;
    stack.db.wait_outbox_settled(ARRIVE).await;

    let mut bob2 = resume(&stack.gateway(1).ws_url(), &bob.token, &cursor, "bob@gw-2").await;
    assert!(resumed(&bob2));
    assert_eq!(
        bob2.ready_channels(),
        vec![b.clone()],
        "live: channel b only"
    );
    let got = contents(&next_events(&mut bob2, 4).await);
    assert_eq!(
        got,
        [
            "a1".to_owned(),
            format!("EVENT_CHANNEL_MEMBER_REMOVE:\"{a}\":\"{}\"", bob.id),
            format!("EVENT_CHANNEL_MEMBER_ADD:\"{b}\":\"{}\"", bob.id),
            "b1".to_owned(),
        ]
    );
    bob2.expect_no_dispatch(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_and_expired_cursors_start_fresh_sessions() {
    let stack = Stack::builder()
        .gateway_env("OTAKO_RESUME_WINDOW_S", "1")
        .build()
        .await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let channel = api.create_channel(&alice.token, "general").await;
    stack.db.wait_outbox_settled(ARRIVE).await;
    let gw = stack.gateway(0);
    let mut first = gw.connect(&alice.token, "alice").await;
    let cursor = first.ready.as_ref().unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    api.post_message(&alice.token, &channel, "m1", None).await;
    next_events(&mut first, 1).await;
    let epoch = cursor.split('.').next().unwrap().to_owned();
    let aged = first.last_cursor.clone().unwrap();
    first.close().await;

    let ahead = format!("{epoch}.999999999");
    let other_epoch = "zz9.1".to_owned();
    let malformed = "not-a-cursor".to_owned();
    // The window is one second: this cursor's event is older by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for bad in [malformed, other_epoch, ahead, aged] {
        let mut c = resume(&gw.ws_url(), &alice.token, &bad, &format!("alice@{bad}")).await;
        assert!(!resumed(&c), "{bad}: {:?}", c.ready);
        assert_eq!(c.ready_channels(), vec![channel.clone()]);
        // A fresh session: no replay, live events, no close.
        c.expect_no_dispatch(QUIET).await;
        let m = format!("live-after-{bad}");
        api.post_message(&alice.token, &channel, &m, None).await;
        assert_eq!(contents(&next_events(&mut c, 1).await), [m]);
        c.close().await;
    }
}
