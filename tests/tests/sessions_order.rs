//! Order and duplicates: a burst of 1,000 messages into one channel over three
//! gateway nodes reaches every session complete and in order; a retried event
//! id is answered success:true and not delivered again.

use otako_e2e::{event_body, expect_all_quiet, fresh_event_id, Stack, WsClient, ARRIVE, QUIET};
use otako_e2e::{metric, Reader};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const BURST: usize = 1000;
const POSTERS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_1000_messages_reaches_every_session_complete_and_in_order() {
    let stack = Stack::builder()
        .spread_over_nodes()
        .gateways(3)
        .build()
        .await;
    let api = stack.api().clone();
    let alice = api.create_user("alice").await;
    let bob = api.create_user("bob").await;
    let channel = api.create_channel(&alice.token, "burst").await;
    api.add_member(&alice.token, &channel, &bob.id).await;
    stack.db.wait_outbox_settled(ARRIVE).await;

    let mut readers = Vec::new();
    for gw in &stack.gateways {
        for user in [&alice, &bob] {
            let label = format!("{}@{}", user.username, gw.node_id);
            readers.push(Reader::open(gw, &user.token, &label, Duration::from_secs(10)).await);
        }
    }

    // 1,000 posts from eight concurrent tasks, alice and bob alike.
    let started = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..POSTERS)
        .map(|p| {
            let (api, channel) = (api.clone(), channel.clone());
            let token = if p % 2 == 0 {
                alice.token.clone()
            } else {
                bob.token.clone()
            };
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for k in (p..BURST).step_by(POSTERS) {
                    let m = api
                        .post_message(&token, &channel, &format!("burst #{k}"), None)
                        .await;
                    ids.push(m["id"].as_str().unwrap().parse::<i64>().unwrap());
                }
                ids
            })
        })
        .collect();
    let mut posted: Vec<i64> = Vec::new();
    for t in tasks {
        posted.extend(t.await.expect("a posting task"));
    }
    posted.sort_unstable();
    let posting_took = started.elapsed();
    let posted_set: HashSet<i64> = posted.iter().copied().collect();
    assert_eq!(posted_set.len(), BURST);

    // Wait (bounded) for every session to have every message.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut complete = false;
    while tokio::time::Instant::now() < deadline {
        let mut all = true;
        for r in &readers {
            if r.seen().await.count_of("EVENT_MESSAGE_CREATE") < BURST {
                all = false;
                break;
            }
        }
        if all {
            complete = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered_after = started.elapsed();
    if complete {
        // Anything extra would come now.
        tokio::time::sleep(QUIET).await;
    }

    // The order the sender sent them in: the backend sends the events of one
    // channel in outbox order.
    let outbox = stack.db.outbox().await;
    let sent_order: Vec<i64> = outbox
        .iter()
        .filter(|r| r.event_type == "EVENT_MESSAGE_CREATE")
        .map(|r| {
            let d: Value = serde_json::from_str(&r.data).unwrap();
            d["id"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    let undelivered: Vec<String> = outbox
        .iter()
        .filter(|r| r.status != "delivered" || r.attempts != 1)
        .map(|r| {
            format!(
                "outbox #{} {} {} {}: {} after {} attempts",
                r.id, r.event_type, r.channel_id, r.data, r.status, r.attempts
            )
        })
        .collect();
    let outbox_inversions = sent_order.windows(2).filter(|w| w[0] > w[1]).count();

    let mut problems = Vec::new();
    for r in &readers {
        let seen = r.seen().await;
        assert!(
            r.is_open(),
            "{}: the session ended: {:?}",
            r.label,
            seen.end
        );
        let ids = seen.ids_of("EVENT_MESSAGE_CREATE");
        let got: HashSet<i64> = ids.iter().copied().collect();
        let mut missing: Vec<i64> = posted_set.difference(&got).copied().collect();
        missing.sort_unstable();
        let extra: Vec<i64> = got.difference(&posted_set).copied().collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{}: {} missing: {missing:?}",
                r.label,
                missing.len()
            ));
        }
        if !extra.is_empty() {
            problems.push(format!("{}: messages never posted: {extra:?}", r.label));
        }
        if got.len() != ids.len() {
            let mut counts: HashMap<i64, usize> = HashMap::new();
            for id in &ids {
                *counts.entry(*id).or_default() += 1;
            }
            let dup: Vec<_> = counts.into_iter().filter(|(_, n)| *n > 1).collect();
            problems.push(format!("{}: duplicates: {dup:?}", r.label));
        }
        // In the order the sender sent them (its outbox order).
        let sent_of_seen: Vec<i64> = sent_order
            .iter()
            .copied()
            .filter(|i| got.contains(i))
            .collect();
        if ids != sent_of_seen {
            let first = ids.iter().zip(&sent_of_seen).position(|(a, b)| a != b);
            problems.push(format!(
                "{}: not in the order sent; first difference at position {first:?}",
                r.label
            ));
        }
        // And message ids strictly increasing.
        let inversions: Vec<(i64, i64)> = ids
            .windows(2)
            .filter(|w| w[0] >= w[1])
            .map(|w| (w[0], w[1]))
            .collect();
        if !inversions.is_empty() {
            problems.push(format!(
                "{}: message ids not strictly increasing at {} places, e.g. {:?}",
                r.label,
                inversions.len(),
                &inversions[..inversions.len().min(5)]
            ));
        }
    }
    let mut handled = Vec::new();
    for gw in &stack.gateways {
        handled.push(metric(gw, "otako_dispatch_requests_total", &[]).await);
    }
    println!(
        "posted {BURST} messages in {posting_took:?}; all sessions complete: {complete} after \
         {delivered_after:?}; dispatch requests per node {handled:?}; outbox order has \
         {outbox_inversions} message-id inversions; {} outbox rows not delivered on the \
         first attempt",
        undelivered.len()
    );
    if !undelivered.is_empty() {
        problems.push(format!(
            "{} outbox rows not delivered on the first attempt (e.g. {:?})",
            undelivered.len(),
            &undelivered[..undelivered.len().min(5)]
        ));
    }
    if outbox_inversions > 0 {
        problems.push(format!(
            "the backend sent the channel's messages out of id order ({outbox_inversions} inversions in the outbox)"
        ));
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_event_id_is_answered_success_and_delivered_once() {
    // No backend: the test sends the dispatch requests itself, each gateway
    // node on its own NATS server and a sender on each server, so the copies
    // of one event come in on every server and reach different nodes.
    let stack = Stack::builder()
        .backend(false)
        .nats_cluster(3)
        .gateways(3)
        .build()
        .await;
    let alice = stack.db.insert_user("alice").await;
    let bob = stack.db.insert_user("bob").await;
    let channel = stack.db.insert_channel(alice, "general").await;
    stack.db.insert_member(channel, bob).await;
    let message = stack.db.insert_message(channel, alice, "once only").await;
    let (ta, tb) = (stack.token_for(alice, "alice"), stack.token_for(bob, "bob"));
    let mut sessions: Vec<WsClient> = Vec::new();
    for gw in &stack.gateways {
        sessions.push(gw.connect(&ta, &format!("alice@{}", gw.node_id)).await);
        sessions.push(gw.connect(&tb, &format!("bob@{}", gw.node_id)).await);
    }
    let mut senders = Vec::new();
    for i in 0..3 {
        senders.push(stack.dispatcher(i).await);
    }

    for round in 0..3 {
        let event_id = fresh_event_id();
        let body = event_body(
            "EVENT_MESSAGE_CREATE",
            json!({"id": message.to_string(), "channel_id": channel.to_string()}),
            json!(format!("{round}")),
            json!(event_id),
        );
        // Three copies at once, one from each server…
        let replies =
            futures_util::future::join_all(senders.iter().map(|s| s.send(body.clone()))).await;
        // …then three more, one after the other.
        let mut later = Vec::new();
        for s in &senders {
            later.push(s.send(body.clone()).await);
        }
        let nodes: Vec<&str> = replies.iter().chain(&later).map(|r| r.node()).collect();
        println!("round {round}: the six copies were handled by {nodes:?}");
        for r in replies.iter().chain(&later) {
            assert!(
                r.success(),
                "every copy is answered success:true: {}",
                r.raw
            );
            assert_eq!(r.raw["event_id"], json!(event_id), "{}", r.raw);
            assert_eq!(r.raw["s"], json!(format!("{round}")), "{}", r.raw);
        }
        // Every session gets it exactly once.
        for c in &mut sessions {
            let d = c.expect_dispatch("EVENT_MESSAGE_CREATE").await;
            assert_eq!(d["id"], json!(message.to_string()), "{}", c.label());
        }
        expect_all_quiet(&mut sessions).await;
    }
}

/// Two writes whose commits finish in the other order than their outbox ids
/// were drawn (any two concurrent HTTP writes can do that): the event of the
/// write that committed last must still be dispatched. The test plays the
/// slower write itself: a transaction like the backend's, holding its
/// message and outbox row uncommitted while a later write goes through the
/// API and is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_commit_lands_after_a_later_events_is_still_dispatched() {
    let stack = Stack::builder().build().await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let channel = api.create_channel(&alice.token, "general").await;
    let other = api.create_channel(&alice.token, "other").await;
    stack.db.wait_outbox_settled(ARRIVE).await;
    let mut session = stack.gateway(0).connect(&alice.token, "alice").await;

    // The slow write: its outbox id is drawn now, its commit comes last.
    let mut slow = stack.db.pool().begin().await.expect("a transaction");
    let slow_id: i64 = sqlx::query_scalar(
        "INSERT INTO messages (channel_id, author_id, content) VALUES ($1, $2, 'slow') RETURNING id",
    )
    .bind(channel.parse::<i64>().unwrap())
    .bind(alice.id.parse::<i64>().unwrap())
    .fetch_one(&mut *slow)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO outbox (event_type, channel_id, data) VALUES ('EVENT_MESSAGE_CREATE', $1, $2)",
    )
    .bind(channel.parse::<i64>().unwrap())
    .bind(json!({"id": slow_id.to_string(), "channel_id": channel}))
    .execute(&mut *slow)
    .await
    .unwrap();

    // A later write, in another channel, goes through and is delivered.
    let fast = api.post_message(&alice.token, &other, "fast", None).await;
    assert_eq!(session.expect_dispatch("EVENT_MESSAGE_CREATE").await, fast);

    // Now the slow write commits: its event must follow.
    slow.commit().await.unwrap();
    match session.next_incoming(Duration::from_secs(5)).await {
        Some(otako_e2e::Incoming::Json(v)) if v["t"] == "EVENT_MESSAGE_CREATE" => {
            assert_eq!(v["d"]["id"], json!(slow_id.to_string()), "{v}");
        }
        other => {
            let outbox = stack.db.outbox().await;
            panic!(
                "the event committed after a later one was not dispatched within 5 s (got {other:?}); \
                 outbox: {outbox:#?}"
            );
        }
    }
}
