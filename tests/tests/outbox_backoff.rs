//! A backoff survives a restart: an event whose attempt failed before a
//! backend went down is not sent again before its `next_attempt_at`, and the
//! events of its channel behind it wait with it, in order. And a backoff
//! after an unanswered attempt ends as soon as a gateway answers again.

use futures_util::StreamExt;
use otako_common::proto::{DISPATCH_QUEUE, DISPATCH_SUBJECT};
use otako_e2e::{wait, Stack, ARRIVE};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_backing_off_at_a_restart_waits_for_its_next_attempt() {
    let stack = Stack::builder().gateways(1).build().await;
    let db = &stack.db;
    let alice = db.insert_user("alice").await;
    let channel = db.insert_channel(alice, "held").await;
    let first = db.insert_message(channel, alice, "backing off").await;
    let second = db.insert_message(channel, alice, "behind it").await;
    let mut session = stack
        .gateway(0)
        .connect(&stack.token_for(alice, "alice"), "alice")
        .await;

    // What a backend that died left in the outbox: an event with 3 s of its
    // backoff left after its first attempt, and a newer event of the channel
    // behind it. The running backend did not write them; it finds them by
    // its poll, as it would after a restart (and a slow start cannot eat
    // into the backoff this way).
    let event = |id: i64| json!({"id": id.to_string(), "channel_id": channel.to_string()});
    sqlx::query(
        "INSERT INTO outbox (event_type, channel_id, data, attempts, last_error, next_attempt_at) \
         VALUES ('EVENT_MESSAGE_CREATE', $1, $2, 1, 'no answer in time', now() + interval '3 seconds'), \
                ('EVENT_MESSAGE_CREATE', $1, $3, 0, NULL, now())",
    )
    .bind(channel)
    .bind(event(first))
    .bind(event(second))
    .execute(db.pool())
    .await
    .unwrap();

    let d = session.next_dispatch(ARRIVE + Duration::from_secs(3)).await;
    assert_eq!(d["t"], "EVENT_MESSAGE_CREATE", "{d}");
    assert_eq!(
        d["d"]["id"],
        first.to_string(),
        "the older event first: {d}"
    );
    let d = session.expect_dispatch("EVENT_MESSAGE_CREATE").await;
    assert_eq!(d["id"], second.to_string(), "{d}");

    // The second event's answer reaches the backend about when its frame
    // reaches the session: wait for the outcome to be recorded.
    wait::until_true("both outcomes recorded", ARRIVE, || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox WHERE finished_at IS NULL")
            .fetch_one(stack.db.pool())
            .await
            .is_ok_and(|n| n == 0)
    })
    .await;
    // By the database's clock, which wrote next_attempt_at: neither was sent
    // before it, and the wait spent no attempt.
    let rows: Vec<(String, i32, bool)> = sqlx::query_as(
        "SELECT status, attempts, \
                finished_at >= (SELECT next_attempt_at FROM outbox ORDER BY id LIMIT 1) \
         FROM outbox ORDER BY id",
    )
    .fetch_all(stack.db.pool())
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("delivered".to_owned(), 2, true),
            ("delivered".to_owned(), 1, true)
        ],
        "(status, attempts, finished after the backoff) of each event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_unanswered_while_the_cluster_recovers_is_retried_once_a_gateway_answers() {
    // A 30 s first backoff and short attempts: an event whose attempt went
    // unanswered would wait 30 s without the wake-up.
    let stack = Stack::builder()
        .gateways(1)
        .dispatch(5, 300, 30_000)
        .build()
        .await;
    let api = stack.api();
    let (alice, bob, channel) = stack.alice_and_bob("general").await;
    let other = api.create_channel(&alice.token, "other").await;
    stack.db.wait_outbox_settled(ARRIVE).await;
    let mut bob_session = stack.gateway(0).connect(&bob.token, "bob").await;

    // A member of the gateways' queue group that answers nothing (a node
    // stuck or gone without unsubscribing): messages are posted until NATS
    // hands one of their requests to it.
    let nats = stack.nats.client(0).await;
    let mut swallower = nats
        .queue_subscribe(DISPATCH_SUBJECT, DISPATCH_QUEUE.into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let mut sent = 0;
    let swallowed = loop {
        sent += 1;
        api.post_message(&alice.token, &channel, &format!("m{sent}"), None)
            .await;
        if let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(500), swallower.next()).await
        {
            break sent;
        }
        assert!(sent < 50, "NATS never routed a request to the swallower");
    };
    swallower.unsubscribe().await.unwrap();
    nats.flush().await.unwrap();
    // The swallowed event's attempt has timed out and its backoff began.
    otako_e2e::wait::until_true("an attempt recorded as unanswered", ARRIVE, || async {
        let backing_off: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE status = 'pending' AND attempts >= 1",
        )
        .fetch_one(stack.db.pool())
        .await
        .unwrap();
        backing_off >= 1
    })
    .await;
    // Another channel's event is answered: the backing-off event is retried
    // then, well inside its 30 s backoff.
    api.post_message(&alice.token, &other, "wake", None).await;
    stack.db.wait_outbox_settled(Duration::from_secs(10)).await;
    let mut got = Vec::new();
    while got.len() < sent {
        let d = bob_session.expect_dispatch("EVENT_MESSAGE_CREATE").await;
        got.push(d["content"].as_str().unwrap().to_owned());
    }
    let want: Vec<String> = (1..=sent).map(|i| format!("m{i}")).collect();
    assert_eq!(
        got, want,
        "every message once, in order (m{swallowed} was swallowed)"
    );
}
