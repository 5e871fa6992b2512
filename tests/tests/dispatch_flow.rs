//! The dispatch path end to end: an HTTP write commits its event, the backend
//! dispatches it, and every member session on every gateway node receives the
//! full row exactly once.

use otako_e2e::{expect_all_quiet, fresh_event_id, Stack, ARRIVE, QUIET};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_reaches_every_member_session_once_across_nodes() {
    let stack = Stack::builder().gateways(2).build().await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let bob = api.create_user("bob").await;
    let carol = api.create_user("carol").await;
    let channel = api.create_channel(&alice.token, "general").await;
    api.add_member(&alice.token, &channel, &bob.id).await;
    // The writes above dispatch member events of their own; let them go out
    // before any session opens, so the sessions start quiet.
    stack.db.wait_outbox_settled(ARRIVE).await;

    // alice on both nodes, bob on node 2, carol (not a member) on node 1.
    let (gw1, gw2) = (stack.gateway(0), stack.gateway(1));
    let mut alice1 = gw1.connect(&alice.token, "alice@gw-1").await;
    let mut alice2 = gw2.connect(&alice.token, "alice@gw-2").await;
    let mut bob2 = gw2.connect(&bob.token, "bob@gw-2").await;
    let mut carol1 = gw1.connect(&carol.token, "carol@gw-1").await;
    for member in [&alice1, &alice2, &bob2] {
        assert_eq!(
            member.ready_channels(),
            vec![channel.clone()],
            "{}",
            member.label()
        );
    }
    assert!(carol1.ready_channels().is_empty());

    let message = api
        .post_message(&alice.token, &channel, "hello from alice", Some("nonce-1"))
        .await;
    assert!(message["id"].is_string(), "{message}");
    assert_eq!(message["channel_id"], json!(channel));
    assert_eq!(
        message["author"],
        json!({"id": alice.id, "username": "alice"})
    );
    assert_eq!(message["content"], "hello from alice");
    assert_eq!(message["nonce"], "nonce-1");
    assert!(
        message["timestamp"]
            .as_str()
            .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()),
        "{message}"
    );
    assert_eq!(message["edited_timestamp"], Value::Null);

    // Every member session, on both nodes, gets the whole message object.
    for member in [&mut alice1, &mut alice2, &mut bob2] {
        let d = member.expect_dispatch("EVENT_MESSAGE_CREATE").await;
        assert_eq!(
            d,
            message,
            "{}: the event carries the message as the API returned it",
            member.label()
        );
    }
    // Exactly once, and nothing for carol.
    expect_all_quiet([&mut alice1, &mut alice2, &mut bob2, &mut carol1]).await;

    // The seed's request, sent by hand for the same message with a fresh
    // event id: answered with an EVENT_ROUNDTRIP echoing event_id and s.
    let event_id = fresh_event_id();
    let id = message["id"].as_str().unwrap();
    let body = format!(
        r#"{{"t":"EVENT_MESSAGE_CREATE","d":{{"id":"{id}","channel_id":"{channel}"}},"op":0,"s":"14","event_id":"{event_id}"}}"#
    );
    let sender = stack.dispatcher(0).await;
    let reply = sender.send(body.clone()).await;
    let mut contract_fields = reply.raw.as_object().unwrap().clone();
    contract_fields.retain(|k, _| ["t", "event_id", "success", "op", "s"].contains(&k.as_str()));
    assert_eq!(
        Value::Object(contract_fields),
        json!({"t": "EVENT_ROUNDTRIP", "event_id": event_id, "success": true, "op": 0, "s": "14"}),
        "reply {}",
        reply.raw
    );
    // A new event id is a new event: the members get it again.
    for member in [&mut alice1, &mut alice2, &mut bob2] {
        let d = member.expect_dispatch("EVENT_MESSAGE_CREATE").await;
        assert_eq!(d, message, "{}", member.label());
    }
    // The same request again is a retry: answered again, delivered no more.
    let again = sender.send(body).await;
    assert!(again.success(), "{}", again.raw);
    assert_eq!(again.raw["event_id"], json!(event_id));
    assert_eq!(again.raw["s"], "14");
    expect_all_quiet([&mut alice1, &mut alice2, &mut bob2, &mut carol1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_committed_before_a_backend_crash_is_delivered_after_restart() {
    // No gateway yet, so nothing can take the events; the backend keeps
    // them pending (with attempts and patience to spare).
    let mut stack = Stack::builder()
        .gateways(0)
        .dispatch(1000, 500, 50)
        .build()
        .await;
    let api = stack.api().clone();
    let alice = api.create_user("alice").await;
    let channel = api.create_channel(&alice.token, "general").await;
    let message = api
        .post_message(&alice.token, &channel, "written before the crash", None)
        .await;
    let message_id = message["id"].as_str().unwrap().to_owned();

    stack.kill_backend();
    // Committed but not dispatched: the event waits in the outbox.
    let outbox = stack.db.outbox().await;
    let row = outbox
        .iter()
        .find(|r| r.event_type == "EVENT_MESSAGE_CREATE")
        .unwrap_or_else(|| panic!("no outbox row for the message: {outbox:#?}"));
    let data: Value = serde_json::from_str(&row.data).unwrap();
    assert_eq!(data, json!({"id": message_id, "channel_id": channel}));
    assert_eq!(row.status, "pending", "{row:?}");

    let gw = stack.start_gateway().await;
    let mut client = stack.gateway(gw).connect(&alice.token, "alice").await;
    // Alice's add to her new channel is still pending in the outbox: the
    // session takes its channels as the history has them and joins this one
    // live when the add arrives, first.
    assert_eq!(client.ready_channels(), Vec::<String>::new());
    stack.start_backend().await;

    // The channel's earlier event (alice joining her new channel) comes
    // first; then the message, whole.
    let frame = loop {
        let frame = client.next_dispatch(ARRIVE).await;
        if frame["t"] != "EVENT_CHANNEL_MEMBER_ADD" {
            break frame;
        }
        assert_eq!(
            frame["d"],
            json!({"channel_id": channel, "user_id": alice.id})
        );
    };
    assert_eq!(frame["t"], "EVENT_MESSAGE_CREATE", "{frame}");
    assert_eq!(frame["d"], message);
    client.expect_no_dispatch(QUIET).await;

    stack.db.wait_outbox_settled(ARRIVE).await;
    let delivered = stack.db.outbox().await;
    assert!(
        delivered.iter().all(|r| r.status == "delivered"),
        "everything is delivered after the restart: {delivered:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_retries_on_different_nodes_deliver_once() {
    // The sender gave up waiting and retried while the first attempt was
    // still in flight: the same event reaches several nodes at once. No
    // backend: the rows are written directly and the test sends the events.
    let stack = Stack::builder().backend(false).gateways(3).build().await;
    let alice = stack.db.insert_user("alice").await;
    let channel = stack.db.insert_channel(alice, "general").await;
    let token = stack.token_for(alice, "alice");
    let mut clients = Vec::new();
    for (i, gw) in stack.gateways.iter().enumerate() {
        clients.push(gw.connect(&token, &format!("alice@gw-{}", i + 1)).await);
    }
    let sender = stack.dispatcher(0).await;

    for round in 0..3 {
        let message = stack
            .db
            .insert_message(channel, alice, &format!("round {round}"))
            .await;
        let body = otako_e2e::event_body(
            "EVENT_MESSAGE_CREATE",
            json!({"id": message.to_string(), "channel_id": channel.to_string()}),
            json!(round.to_string()),
            json!(fresh_event_id()),
        );
        let replies =
            futures_util::future::join_all((0..12).map(|_| sender.send(body.clone()))).await;
        let nodes: std::collections::BTreeSet<&str> = replies.iter().map(|r| r.node()).collect();
        for r in &replies {
            assert!(r.success(), "{}", r.raw);
        }
        // NATS spreads a queue group's requests at random: twelve never all
        // land on one of three nodes in practice.
        assert!(nodes.len() >= 2, "all copies were handled by {nodes:?}");
        for c in &mut clients {
            let d = c.expect_dispatch("EVENT_MESSAGE_CREATE").await;
            assert_eq!(
                d["id"],
                message.to_string(),
                "{} (handled by {nodes:?})",
                c.label()
            );
        }
        expect_all_quiet(&mut clients).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_naming_the_wrong_channel_is_answered_false_and_delivers_nothing() {
    // The events of a message must name the channel the message is in.
    let stack = Stack::builder().backend(false).build().await;
    let db = &stack.db;
    let alice = db.insert_user("alice").await;
    let bob = db.insert_user("bob").await;
    let home = db.insert_channel(alice, "home").await;
    let elsewhere = db.insert_channel(bob, "elsewhere").await;
    db.insert_member(elsewhere, alice).await;
    let message = db.insert_message(home, alice, "lives in home").await;
    let gw = stack.gateway(0);
    let mut sessions = vec![
        gw.connect(&stack.token_for(alice, "alice"), "alice").await,
        gw.connect(&stack.token_for(bob, "bob"), "bob").await,
    ];
    let sender = stack.dispatcher(0).await;

    for t in ["EVENT_MESSAGE_CREATE", "EVENT_MESSAGE_UPDATE"] {
        let event_id = fresh_event_id();
        let reply = sender
            .send_event(
                t,
                json!({"id": message.to_string(), "channel_id": elsewhere.to_string()}),
                json!("1"),
                json!(event_id),
            )
            .await;
        assert!(
            !reply.success(),
            "{t} naming the wrong channel: {}",
            reply.raw
        );
        assert!(
            reply
                .roundtrip
                .error
                .as_deref()
                .is_some_and(|e| !e.is_empty()),
            "a failure says why: {}",
            reply.raw
        );
        assert_eq!(
            sender.error_records_for(&json!(event_id)).await.len(),
            1,
            "the failure is logged once"
        );
    }
    expect_all_quiet(&mut sessions).await;

    // The right channel goes through, to alice only (bob is not in home).
    let reply = sender
        .send_event(
            "EVENT_MESSAGE_CREATE",
            json!({"id": message.to_string(), "channel_id": home.to_string()}),
            json!("2"),
            json!(fresh_event_id()),
        )
        .await;
    assert!(reply.success(), "{}", reply.raw);
    let d = sessions[0].expect_dispatch("EVENT_MESSAGE_CREATE").await;
    assert_eq!(d["id"], message.to_string());
    assert_eq!(d["channel_id"], home.to_string());
    expect_all_quiet(&mut sessions).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_is_confirmed_by_the_nodes_own_delivery_and_a_retry_by_the_stream() {
    // A first attempt needs no ack from the stream: the node's own consumer
    // delivering the event shows it is stored. A retry the stream drops as a
    // duplicate never comes back that way, so the node asks the stream, and
    // answers success without a second delivery.
    let stack = Stack::builder().backend(false).build().await;
    let alice = stack.db.insert_user("alice").await;
    let channel = stack.db.insert_channel(alice, "general").await;
    let gw = stack.gateway(0);
    let mut client = gw.connect(&stack.token_for(alice, "alice"), "alice").await;
    let sender = stack.dispatcher(0).await;
    let acked = || otako_e2e::metric(gw, "otako_history_acked_appends_total", &[]);

    let message = stack.db.insert_message(channel, alice, "once").await;
    let body = otako_e2e::event_body(
        "EVENT_MESSAGE_CREATE",
        json!({"id": message.to_string(), "channel_id": channel.to_string()}),
        json!("1"),
        json!(fresh_event_id()),
    );
    let first = sender.send(body.clone()).await;
    assert!(first.success(), "{}", first.raw);
    let d = client.expect_dispatch("EVENT_MESSAGE_CREATE").await;
    assert_eq!(d["id"], message.to_string());
    assert_eq!(acked().await, 0.0, "the first attempt asked the stream");

    let retry = sender.send(body).await;
    assert!(retry.success(), "{}", retry.raw);
    assert_eq!(
        acked().await,
        1.0,
        "the retry was not answered by the stream"
    );
    expect_all_quiet(&mut [client]).await;
}
