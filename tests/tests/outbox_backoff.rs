//! A backoff survives a restart: an event whose attempt failed before a
//! backend went down is not sent again before its `next_attempt_at`, and the
//! events of its channel behind it wait with it, in order.

use otako_e2e::{Stack, ARRIVE};
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
