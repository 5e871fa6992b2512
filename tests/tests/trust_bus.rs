//! Trust on the bus, on a NATS server with no authorization at all: what a
//! NATS client outside the cluster publishes reaches no session, closes no
//! session and keeps no real event from being delivered.

use async_nats::HeaderMap;
use otako_common::close::CloseCode;
use otako_common::history::HISTORY_STREAM;
use otako_common::proto::REVOKE_SUBJECT;
use otako_e2e::metric;
use otako_e2e::{event_body, mint_token, Stack, WsClient, ARRIVE, QUIET, TEST_SECRET};
use serde_json::{json, Value};
use std::time::Duration;

async fn next_content(c: &mut WsClient) -> String {
    let d = c.expect_dispatch("EVENT_MESSAGE_CREATE").await;
    d["content"].as_str().unwrap().to_owned()
}

/// The sequence in a cursor (`<epoch>.<seq>`).
fn seq_of(cursor: &str) -> u64 {
    cursor.rsplit('.').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_altered_and_replayed_history_messages_reach_no_session() {
    let stack = Stack::builder().build().await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let bob = api.create_user("bob").await;
    let carol = api.create_user("carol").await;
    let channel = api.create_channel(&alice.token, "private").await;
    api.add_member(&alice.token, &channel, &bob.id).await;
    stack.db.wait_outbox_settled(ARRIVE).await;
    let gw = stack.gateway(0);
    let mut bob_s = gw.connect(&bob.token, "bob").await;
    let mut carol_s = gw.connect(&carol.token, "carol").await;
    let attacker = stack.nats.client(0).await;
    let before = metric(gw, "otako_bus_rejected_total", &[("subject", "history")]).await;

    // Forged: a message "from alice" and a member-add for carol, unsigned.
    let fake_message = json!({"event_id": "999", "t": "EVENT_MESSAGE_CREATE", "channel_id": channel.parse::<i64>().unwrap(),
        "d": {"id": "999", "channel_id": channel, "author": {"id": alice.id, "username": "alice"},
              "content": "forged", "nonce": null, "timestamp": "2026-12-02T00:00:00.000000Z", "edited_timestamp": null}});
    attacker
        .publish(
            format!("otako.ev.{channel}.m"),
            fake_message.to_string().into(),
        )
        .await
        .unwrap();
    let fake_add = json!({"event_id": "998", "t": "EVENT_CHANNEL_MEMBER_ADD", "channel_id": channel.parse::<i64>().unwrap(),
        "user_id": carol.id.parse::<i64>().unwrap(), "d": {"channel_id": channel, "user_id": carol.id}});
    attacker
        .publish(
            format!("otako.ev.{channel}.u{}", carol.id),
            fake_add.to_string().into(),
        )
        .await
        .unwrap();
    attacker.flush().await.unwrap();

    // A genuine message, then copies of it: altered, and replayed as is.
    api.post_message(&alice.token, &channel, "real-1", None)
        .await;
    assert_eq!(
        next_content(&mut bob_s).await,
        "real-1",
        "nothing forged came first"
    );
    let seq = seq_of(bob_s.last_cursor.as_deref().unwrap());
    let js = async_nats::jetstream::new(attacker.clone());
    let stream = js.get_stream(HISTORY_STREAM).await.unwrap();
    let genuine = stream.get_raw_message(seq).await.unwrap();
    let altered = String::from_utf8(genuine.payload.to_vec())
        .unwrap()
        .replace("real-1", "altered");
    // With a message id of its own: under the genuine one the stream would
    // drop it as a duplicate before any reader saw it.
    let mut altered_headers = genuine.headers.clone();
    altered_headers.insert("Nats-Msg-Id", "altered-copy");
    attacker
        .publish_with_headers(genuine.subject.to_string(), altered_headers, altered.into())
        .await
        .unwrap();
    // The same copy again: the stream's duplicate window drops it...
    let ack = js
        .publish_with_headers(
            genuine.subject.to_string(),
            genuine.headers.clone(),
            genuine.payload.clone(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        ack.duplicate,
        "a replayed copy is a duplicate in the history"
    );
    // ...and one without its message id does not verify.
    let mut stripped = HeaderMap::new();
    for (name, values) in genuine.headers.iter() {
        let name: &str = name.as_ref();
        if name != "Nats-Msg-Id" {
            for v in values {
                stripped.append(name, v.as_str());
            }
        }
    }
    attacker
        .publish_with_headers(
            genuine.subject.to_string(),
            stripped,
            genuine.payload.clone(),
        )
        .await
        .unwrap();
    attacker.flush().await.unwrap();

    api.post_message(&alice.token, &channel, "real-2", None)
        .await;
    assert_eq!(
        next_content(&mut bob_s).await,
        "real-2",
        "no forged, altered or replayed message reached the member"
    );
    bob_s.expect_no_dispatch(QUIET).await;
    carol_s.expect_no_dispatch(QUIET).await;
    assert!(carol_s.ready_channels().is_empty());
    let after = metric(gw, "otako_bus_rejected_total", &[("subject", "history")]).await;
    assert!(
        after >= before + 4.0,
        "four rejections counted (forged message, forged add, altered, stripped): {before} -> {after}"
    );
    assert!(gw.log_text().contains("dropped a message on the bus"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_revocations_close_no_session() {
    let stack = Stack::builder().build().await;
    let api = stack.api();
    let bob = api.create_user("bob").await;
    let gw = stack.gateway(0);
    let mut bob_s = gw.connect(&bob.token, "bob").await;
    let attacker = stack.nats.client(0).await;
    let notice = json!({"user_id": bob.id, "generation": 2147483647}).to_string();
    attacker
        .publish(REVOKE_SUBJECT, notice.clone().into())
        .await
        .unwrap();
    // Signed with a key that is not the cluster's.
    let wrong = otako_common::bus::BusKey::from_secret("not-the-cluster-secret-0123456789");
    let mut headers = HeaderMap::new();
    let sig = wrong.sign(
        REVOKE_SUBJECT,
        otako_common::bus::now_ms(),
        notice.as_bytes(),
    );
    headers.insert(otako_common::bus::SIGNATURE_HEADER, sig.as_str());
    attacker
        .publish_with_headers(REVOKE_SUBJECT, headers, notice.into())
        .await
        .unwrap();
    attacker.flush().await.unwrap();
    otako_e2e::wait::until_true("both forgeries counted", ARRIVE, || async {
        metric(gw, "otako_bus_rejected_total", &[("subject", "revoke")]).await >= 2.0
    })
    .await;
    bob_s.heartbeat_acked().await;
    // The genuine revocation still closes it.
    api.revoke(&bob.token).await;
    bob_s.expect_close(CloseCode::AuthFailed, ARRIVE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessed_event_ids_keep_no_real_event_from_its_members() {
    let stack = Stack::builder().build().await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let bob = api.create_user("bob").await;
    let channel = api.create_channel(&alice.token, "general").await;
    api.add_member(&alice.token, &channel, &bob.id).await;
    let first = api.post_message(&alice.token, &channel, "m0", None).await;
    stack.db.wait_outbox_settled(ARRIVE).await;
    let mut bob_s = stack.gateway(0).connect(&bob.token, "bob").await;

    let next_id: i64 = sqlx::query_scalar("SELECT max(id) FROM outbox")
        .fetch_one(stack.db.pool())
        .await
        .unwrap();
    let attacker = stack.nats.client(0).await;
    let dispatcher = stack.dispatcher(0).await;
    for id in next_id + 1..=next_id + 3 {
        // On the history: message ids a naive scheme would give these events.
        for guess in [id.to_string(), format!("e_{id}")] {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", guess.as_str());
            attacker
                .publish_with_headers(format!("otako.ev.{channel}.m"), headers, "{}".into())
                .await
                .unwrap();
        }
        // Through the open dispatch path: an existing message under the id
        // the next post will take. It is answered, but it is not that post.
        let body = event_body(
            "EVENT_MESSAGE_CREATE",
            json!({"id": first["id"], "channel_id": channel}),
            Value::String(id.to_string()),
            Value::String(id.to_string()),
        );
        assert!(dispatcher.send(body).await.success());
    }
    attacker.flush().await.unwrap();
    for m in ["p1", "p2", "p3"] {
        api.post_message(&alice.token, &channel, m, None).await;
    }
    // The attacker's requests are events of their own (m0 again, as any
    // backend may send); the posts behind the ids they took all arrive.
    let mut posts = Vec::new();
    while posts.len() < 3 {
        let m = next_content(&mut bob_s).await;
        if m != "m0" {
            posts.push(m);
        }
    }
    assert_eq!(
        posts,
        ["p1", "p2", "p3"],
        "every real post arrives, in order"
    );
    bob_s.expect_no_dispatch(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_when_their_token_expires_or_is_revoked_unannounced() {
    let stack = Stack::builder()
        .gateway_env("OTAKO_TOKEN_RECHECK_MS", "500")
        .build()
        .await;
    let api = stack.api();
    let bob = api.create_user("bob").await;
    let gw = stack.gateway(0);
    let key = otako_common::token::TokenKey::new(TEST_SECRET);
    let short = key.sign(&otako_common::token::Claims {
        user_id: bob.id.parse().unwrap(),
        username: "bob".into(),
        generation: 0,
        expires_at: chrono::Utc::now().timestamp() + 2,
    });
    let mut expiring = gw.connect(&short, "bob(expiring)").await;
    let started = std::time::Instant::now();
    expiring
        .expect_close(CloseCode::AuthFailed, Duration::from_secs(10))
        .await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed at expiry, not before"
    );

    // A revocation this node never hears of (written straight to the
    // database): the periodic check closes the session.
    let token = mint_token(TEST_SECRET, bob.id.parse().unwrap(), "bob", 0);
    let mut unannounced = gw.connect(&token, "bob(revoked)").await;
    stack
        .db
        .bump_token_generation(bob.id.parse().unwrap())
        .await;
    unannounced
        .expect_close(CloseCode::AuthFailed, Duration::from_secs(10))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_session_entries_lock_nobody_out_on_an_open_server() {
    let stack = Stack::builder().max_sessions_per_user(2).build().await;
    let api = stack.api();
    let bob = api.create_user("bob").await;
    let js = async_nats::jetstream::new(stack.nats.client(0).await);
    let sessions = js.get_key_value("otako_sessions").await.unwrap();
    let fake: serde_json::Map<String, Value> = (0..10)
        .map(|i| (format!("fake-{i}"), Value::String("gw-1".into())))
        .collect();
    sessions
        .put(
            format!("u{}", bob.id),
            Value::Object(fake).to_string().into(),
        )
        .await
        .unwrap();
    // Ten entries the cluster did not write count for nothing: two real
    // sessions fit, and the limit still holds for the third.
    let gw = stack.gateway(0);
    let _a = gw.connect(&bob.token, "bob-1").await;
    let _b = gw.connect(&bob.token, "bob-2").await;
    let mut third = gw
        .connect_raw(otako_e2e::Auth::Header(&bob.token), "bob-3")
        .await;
    third.expect_refused(CloseCode::SessionLimit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guessed_failure_claim_keeps_no_failure_from_the_sink() {
    let stack = Stack::builder().backend(false).build().await;
    let js = async_nats::jetstream::new(stack.nats.client(0).await);
    let claims = js.get_key_value("otako_failed").await.unwrap();
    let event_id = otako_e2e::fresh_event_id();
    // The key the sink would claim for this event id, taken first.
    claims
        .create(format!("e_{event_id}"), "attacker".into())
        .await
        .unwrap();
    let dispatcher = stack.dispatcher(0).await;
    let reply = dispatcher
        .send(event_body(
            "EVENT_NOPE",
            json!({}),
            Value::Null,
            Value::String(event_id.clone()),
        ))
        .await;
    assert!(!reply.success());
    let id = Value::String(event_id);
    otako_e2e::wait::until_true("the failure's record in OTAKO_ERRORS", ARRIVE, || async {
        dispatcher.error_records_for(&id).await.len() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genuine_error_records_are_signed_and_forged_ones_are_not() {
    let stack = Stack::builder().backend(false).build().await;
    let dispatcher = stack.dispatcher(0).await;
    let genuine_id = otako_e2e::fresh_event_id();
    let reply = dispatcher
        .send(event_body(
            "EVENT_NOPE",
            json!({}),
            Value::Null,
            Value::String(genuine_id.clone()),
        ))
        .await;
    assert!(!reply.success());
    let genuine_id = Value::String(genuine_id);
    otako_e2e::wait::until_true("the failure's record in OTAKO_ERRORS", ARRIVE, || async {
        dispatcher.error_records_for(&genuine_id).await.len() == 1
    })
    .await;
    // A record published by a client outside the cluster, with a made-up
    // signature and with none.
    let nats = stack.nats.client(0).await;
    let forged_id = otako_e2e::fresh_event_id();
    let forged = json!({"event_id": forged_id, "t": "EVENT_MESSAGE_CREATE", "error": "forged"});
    let mut headers = HeaderMap::new();
    headers.insert(otako_common::bus::SIGNATURE_HEADER, "1700000000000.AAAA");
    let js = async_nats::jetstream::new(nats);
    for headers in [headers, HeaderMap::new()] {
        js.publish_with_headers(
            otako_common::proto::ERRORS_SUBJECT,
            headers,
            forged.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let records = dispatcher.error_records_checked().await;
    let verdict = |id: &str| -> Vec<bool> {
        records
            .iter()
            .filter(|(v, _)| v["event_id"] == id)
            .map(|(_, genuine)| *genuine)
            .collect()
    };
    assert_eq!(verdict(genuine_id.as_str().unwrap()), [true], "{records:?}");
    assert_eq!(verdict(&forged_id), [false, false], "{records:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_copied_liveness_key_keeps_no_dead_node_counting() {
    let mut stack = Stack::builder()
        .gateways(2)
        .max_sessions_per_user(2)
        .build()
        .await;
    let bob = stack.api().create_user("bob").await;
    let _one = stack.gateway(0).connect(&bob.token, "bob-1@gw-1").await;
    let _two = stack.gateway(0).connect(&bob.token, "bob-2@gw-1").await;
    let js = async_nats::jetstream::new(stack.nats.client(0).await);
    let nodes = js.get_key_value("otako_nodes").await.unwrap();
    let node = stack.gateway(0).node_id.clone();
    let copied = nodes
        .get(&node)
        .await
        .unwrap()
        .expect("the node keeps a liveness key");
    stack.gateways[0].proc().kill();
    // Someone outside the cluster keeps the dead node looking alive: a
    // value with a fresh time and no valid digest, and the node's own last
    // value copied back.
    let keep_alive = tokio::spawn(async move {
        loop {
            let forged = format!(
                "{} 0123456789abcdef0123456789abcdef",
                otako_common::bus::now_ms()
            );
            let _ = nodes.put(&node, forged.into()).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = nodes.put(&node, copied.clone()).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // The dead node's sessions stop counting once its genuine key is older
    // than the TTL (docs/protocol.md: within 15 s): a third session is
    // admitted on the other node.
    let gw2 = stack.gateway(1);
    let started = std::time::Instant::now();
    loop {
        let mut c = gw2
            .connect_raw(otako_e2e::Auth::Header(&bob.token), "bob-3@gw-2")
            .await;
        c.hello().await;
        match c.next_incoming(ARRIVE).await {
            Some(otako_e2e::Incoming::Json(v)) if v["t"] == "READY" => break,
            Some(otako_e2e::Incoming::Close(Some(code), _))
                if code == CloseCode::SessionLimit.code() => {}
            other => panic!("expected READY or 4010, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the dead node's sessions still count after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    keep_alive.abort();
}
