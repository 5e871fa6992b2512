//! The backend's retries: an event that a member of the gateways' queue
//! group leaves unanswered is sent again after the attempt's timeout while a
//! gateway is alive, until one answers. (While no gateway answers pings at
//! all, events wait without spending attempts: `ops_services.rs`.)

use futures_util::StreamExt;
use otako_common::proto::{DISPATCH_QUEUE, DISPATCH_SUBJECT};
use otako_e2e::{metric, Stack, ARRIVE, QUIET};
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

/// Events, each in a channel of its own, so they go out in parallel.
const EVENTS: usize = 16;
/// Plenty: NATS hands each attempt to the silent member or the real node at
/// random, so an event needs two attempts on average.
const MAX_ATTEMPTS: u32 = 20;
/// Long enough that the real node always answers in time, even on a busy
/// machine: an attempt left unanswered is the silent member's.
const TIMEOUT_MS: u64 = 1_000;
/// No backoff between attempts: each unanswered attempt then costs exactly
/// its timeout, so `MAX_ATTEMPTS * TIMEOUT_MS` bounds every event. With a
/// doubling backoff an event that NATS hands to the silent member nine times
/// in a row (1 in 512 per event, 3 % of runs with 16 events) waits 25 s of
/// backoff on top; this test pins the retries, `outbox_backoff.rs` the
/// backoff.
const BACKOFF_MS: u64 = 0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_event_is_retried_while_a_gateway_is_alive() {
    let mut stack = Stack::builder()
        .gateways(1)
        .dispatch(MAX_ATTEMPTS, TIMEOUT_MS, BACKOFF_MS)
        .build()
        .await;
    // A member of the queue group that never answers: a gateway that hangs.
    // The real node answers the backend's pings, so a gateway is alive and
    // every unanswered attempt is spent and retried.
    let silent = stack.nats.client(0).await;
    let mut requests = silent
        .queue_subscribe(DISPATCH_SUBJECT, DISPATCH_QUEUE.to_owned())
        .await
        .expect("subscribing to the dispatch subject");
    silent.flush().await.expect("flushing the subscription");

    // Each channel created writes one event: its creator's member-add.
    let api = stack.api();
    let alice = api.create_user("alice").await;
    for i in 0..EVENTS {
        api.create_channel(&alice.token, &format!("room-{i}")).await;
    }
    stack
        .db
        .wait_outbox_settled(Duration::from_millis(TIMEOUT_MS) * MAX_ATTEMPTS + ARRIVE)
        .await;
    // What the silent member was asked, by event id, once nothing more comes.
    let mut unanswered: HashMap<String, usize> = HashMap::new();
    while let Ok(Some(msg)) = tokio::time::timeout(QUIET, requests.next()).await {
        let r: Value = serde_json::from_slice(&msg.payload).expect("a request is JSON");
        let id = r["event_id"]
            .as_str()
            .expect("a string event_id")
            .to_owned();
        *unanswered.entry(id).or_default() += 1;
    }

    let rows = stack.db.outbox().await;
    assert_eq!(rows.len(), EVENTS, "{rows:#?}");
    let mut problems = Vec::new();
    for row in &rows {
        let left = unanswered.get(&row.id.to_string()).copied().unwrap_or(0);
        // Every attempt but the answered last one went unanswered.
        if row.status != "delivered" || row.attempts as usize != left + 1 {
            problems.push(format!(
                "outbox {}: {} after {} attempts, {left} of them unanswered",
                row.id, row.status, row.attempts
            ));
        }
        if left > 0 && row.last_error.as_deref() != Some("no answer in time") {
            problems.push(format!(
                "outbox {}: last error {:?}",
                row.id, row.last_error
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let retried = unanswered.values().sum::<usize>();
    assert!(
        retried > 0,
        "no attempt of {EVENTS} events went to the silent member: nothing was retried"
    );
    // The node answered each event once, and is alive.
    assert_eq!(
        metric(stack.gateway(0), "otako_dispatch_requests_total", &[]).await,
        EVENTS as f64
    );
    assert!(stack.gateways[0].proc().is_running());
    println!("{retried} unanswered attempts over {EVENTS} events, each retried until answered");
}
