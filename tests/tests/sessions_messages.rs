//! EVENT_MESSAGE_UPDATE and EVENT_MESSAGE_DELETE end to end from the HTTP
//! routes: the author's PATCH and DELETE reach every member session on every
//! node; non-authors get 403, unknown ids 404, and a refused write dispatches
//! nothing.

use otako_e2e::{expect_all_quiet, Stack, ARRIVE, QUIET};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletes_reach_every_member_session_and_only_authors_may_make_them() {
    let stack = Stack::builder().gateways(2).build().await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let bob = api.create_user("bob").await;
    let carol = api.create_user("carol").await;
    let channel = api.create_channel(&alice.token, "general").await;
    let elsewhere = api.create_channel(&carol.token, "elsewhere").await;
    api.add_member(&alice.token, &channel, &bob.id).await;
    stack.db.wait_outbox_settled(ARRIVE).await;

    // Members on both nodes; carol (not a member) watches too.
    let (gw1, gw2) = (stack.gateway(0), stack.gateway(1));
    let mut members = vec![
        gw1.connect(&alice.token, "alice@gw-1").await,
        gw2.connect(&alice.token, "alice@gw-2").await,
        gw1.connect(&bob.token, "bob@gw-1").await,
        gw2.connect(&bob.token, "bob@gw-2").await,
    ];
    let mut outsider = vec![gw2.connect(&carol.token, "carol@gw-2").await];

    let created = api
        .post_message(&alice.token, &channel, "frist", Some("n-1"))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    for c in &mut members {
        assert_eq!(c.expect_dispatch("EVENT_MESSAGE_CREATE").await, created);
    }

    // The author edits: the answer is the edited message object, and every
    // member session gets exactly that object in EVENT_MESSAGE_UPDATE.
    let edited = api.edit_message(&alice.token, &channel, &id, "first").await;
    assert_eq!(edited["id"], json!(id));
    assert_eq!(edited["content"], "first");
    assert_eq!(edited["nonce"], "n-1");
    assert_eq!(edited["author"], created["author"]);
    assert_eq!(edited["timestamp"], created["timestamp"]);
    let edited_at = edited["edited_timestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("an edited message has edited_timestamp: {edited}"));
    chrono::DateTime::parse_from_rfc3339(edited_at).expect("edited_timestamp is RFC 3339");
    for c in &mut members {
        let d = c.expect_dispatch("EVENT_MESSAGE_UPDATE").await;
        assert_eq!(
            d,
            edited,
            "{}: the update carries the edited message",
            c.label()
        );
    }
    expect_all_quiet(&mut members).await;
    expect_all_quiet(&mut outsider).await;

    // Refused writes: 403 for a member who is not the author and for a
    // non-member, 404 for unknown messages and channels, and a message
    // addressed under the wrong channel is unknown there. None dispatches.
    let missing = "999999999";
    let cases: Vec<(&str, u16, &str, &str, &str)> = vec![
        ("bob edits alice's message", 403, &bob.token, &channel, &id),
        (
            "carol (not a member) edits",
            403,
            &carol.token,
            &channel,
            &id,
        ),
        ("an unknown message", 404, &alice.token, &channel, missing),
        ("an unknown channel", 404, &alice.token, missing, &id),
        ("the wrong channel", 404, &carol.token, &elsewhere, &id),
    ];
    for (what, status, token, ch, msg) in &cases {
        let r = api.try_edit_message(token, ch, msg, "hijacked").await;
        assert_eq!(r.status, *status, "PATCH, {what}: {}", r.body);
        assert!(
            r.code().is_some(),
            "PATCH, {what}: an error body has a code: {}",
            r.body
        );
        let r = api.try_delete_message(token, ch, msg).await;
        assert_eq!(r.status, *status, "DELETE, {what}: {}", r.body);
        assert!(
            r.code().is_some(),
            "DELETE, {what}: an error body has a code: {}",
            r.body
        );
    }
    // Bad input is 400, not a write either.
    let r = api.try_edit_message(&alice.token, &channel, &id, "").await;
    assert_eq!(r.status, 400, "PATCH with empty content: {}", r.body);
    expect_all_quiet(&mut members).await;
    expect_all_quiet(&mut outsider).await;
    let listed = api.list_messages(&bob.token, &channel, None, None).await;
    assert_eq!(
        listed,
        vec![edited.clone()],
        "the refused writes changed nothing"
    );

    // The author deletes: 204, and every member session gets
    // EVENT_MESSAGE_DELETE with only the ids.
    api.delete_message(&alice.token, &channel, &id).await;
    for c in &mut members {
        let d = c.expect_dispatch("EVENT_MESSAGE_DELETE").await;
        assert_eq!(d, json!({"id": id, "channel_id": channel}), "{}", c.label());
    }
    expect_all_quiet(&mut members).await;
    expect_all_quiet(&mut outsider).await;

    // A deleted message is gone: not listed, and editing or deleting it
    // again is 404 with nothing dispatched.
    assert_eq!(
        api.list_messages(&alice.token, &channel, None, None).await,
        Vec::<Value>::new()
    );
    let r = api
        .try_edit_message(&alice.token, &channel, &id, "back")
        .await;
    assert_eq!(r.status, 404, "PATCH after DELETE: {}", r.body);
    let r = api.try_delete_message(&alice.token, &channel, &id).await;
    assert_eq!(r.status, 404, "DELETE after DELETE: {}", r.body);
    expect_all_quiet(&mut members).await;

    // Every event went out on its first attempt.
    stack.db.wait_outbox_settled(ARRIVE).await;
    for row in stack.db.outbox().await {
        assert_eq!(
            (row.status.as_str(), row.attempts),
            ("delivered", 1),
            "{row:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_arrive_in_order_and_never_go_back_to_an_earlier_version() {
    let stack = Stack::builder().gateways(2).build().await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let channel = api.create_channel(&alice.token, "general").await;
    stack.db.wait_outbox_settled(ARRIVE).await;
    let mut sessions = vec![
        stack.gateway(0).connect(&alice.token, "alice@gw-1").await,
        stack.gateway(1).connect(&alice.token, "alice@gw-2").await,
    ];
    let created = api.post_message(&alice.token, &channel, "v0", None).await;
    let id = created["id"].as_str().unwrap().to_owned();
    // Edits in quick succession, each answered before the next is sent.
    let mut answers = Vec::new();
    for v in 1..=20 {
        answers.push(
            api.edit_message(&alice.token, &channel, &id, &format!("v{v}"))
                .await,
        );
    }
    api.delete_message(&alice.token, &channel, &id).await;
    for c in &mut sessions {
        // The gateway loads the row when it handles each event, so an
        // update may carry a later content than its own edit (and updates
        // handled after the delete deliver nothing); but a session never
        // sees the content go back to an earlier version.
        let mut events = Vec::new();
        loop {
            let f = c.next_dispatch(ARRIVE).await;
            let t = f["t"].as_str().unwrap().to_owned();
            events.push((t.clone(), f["d"].clone()));
            if t == "EVENT_MESSAGE_DELETE" {
                break;
            }
        }
        // The create too: it may already carry an edit (or, handled after
        // the delete, deliver nothing at all).
        if events.len() > 1 {
            assert_eq!(events[0].0, "EVENT_MESSAGE_CREATE", "{}", c.label());
            assert_eq!(events[0].1["id"], created["id"], "{}", c.label());
        }
        let versions: Vec<u32> = events[..events.len() - 1]
            .iter()
            .enumerate()
            .map(|(i, (t, d))| {
                if i > 0 {
                    assert_eq!(t, "EVENT_MESSAGE_UPDATE", "{}: {d}", c.label());
                }
                d["content"].as_str().unwrap()[1..].parse().unwrap()
            })
            .collect();
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "{}: updates went back in time: {versions:?}",
            c.label()
        );
        println!("{}: saw versions {versions:?} before the delete", c.label());
        c.expect_no_dispatch(QUIET).await;
    }
    assert_eq!(answers.last().unwrap()["content"], "v20");
}

/// The routing path writes a small channel's frames to the socket itself,
/// and the session's task writes heartbeat acks and pongs to the same
/// socket (`SessionHandle`): with both going at once, every frame arrives
/// whole (the client parses each; a frame cut into by another would not),
/// dispatches numbered one after the other (the client checks `s`), and
/// every message in post order. A guard for that mechanism: a task that
/// wrote without taking the socket over would interleave bytes here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_acks_and_pongs_among_routed_frames_arrive_whole_and_in_order() {
    const MESSAGES: usize = 300;
    let interval = std::time::Duration::from_millis(600);
    let stack = Stack::builder()
        .heartbeat_ms(interval.as_millis() as u64)
        .build()
        .await;
    let (alice, bob, channel) = stack.alice_and_bob("general").await;
    let mut bob_session = stack.gateway(0).connect(&bob.token, "bob").await;

    let poster = {
        let (api, channel, token) = (stack.api().clone(), channel.clone(), alice.token.clone());
        tokio::spawn(async move {
            for k in 0..MESSAGES {
                api.post_message(&token, &channel, &format!("m{k}"), None)
                    .await;
            }
        })
    };
    let (mut contents, mut acks, mut pongs, mut beats) = (Vec::new(), 0, 0, 0);
    // Three beats per interval (the limit is four), alternately a heartbeat
    // and a ping, until every message has arrived.
    let mut next_beat = tokio::time::Instant::now();
    while contents.len() < MESSAGES {
        if tokio::time::Instant::now() >= next_beat {
            if beats % 2 == 0 {
                bob_session.heartbeat().await;
            } else {
                bob_session.send_ping(b"p".to_vec()).await;
            }
            beats += 1;
            next_beat += interval / 3;
        }
        match bob_session.next_incoming(ARRIVE).await {
            Some(otako_e2e::Incoming::Json(v)) if v == json!({"op": 11}) => acks += 1,
            Some(otako_e2e::Incoming::Json(v)) => {
                assert_eq!(v["t"], "EVENT_MESSAGE_CREATE", "unexpected frame: {v}");
                contents.push(v["d"]["content"].as_str().unwrap().to_owned());
            }
            Some(otako_e2e::Incoming::Pong(_)) => pongs += 1,
            other => panic!("expected frames, got {other:?}"),
        }
    }
    poster.await.expect("the poster");
    let expected: Vec<String> = (0..MESSAGES).map(|k| format!("m{k}")).collect();
    assert_eq!(contents, expected, "every message, in post order");
    assert!(
        acks + pongs + 2 >= beats && acks > 0 && pongs > 0,
        "acks {acks} and pongs {pongs} for {beats} beats"
    );
}
