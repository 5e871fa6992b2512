//! An impostor in the gateways' queue group: a plain NATS client that joins
//! `otako-gateway` on `otako.dispatch` and answers every request
//! `success:true`, unsigned or signed with a key that is not the cluster's.
//! The backend accepts only replies a genuine gateway signed, so every
//! message posted meanwhile still reaches its members' sessions, no attempt
//! is spent on the impostor's answers, and each is counted in
//! `otako_bus_rejected_total`.

use futures_util::StreamExt;
use otako_common::bus::{BusKey, SIGNATURE_HEADER};
use otako_common::proto::{DISPATCH_QUEUE, DISPATCH_SUBJECT};
use otako_e2e::Metrics;
use otako_e2e::{Stack, ARRIVE};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const MESSAGES: usize = 24;

#[derive(Default)]
struct Impostor {
    unsigned: AtomicU64,
    forged: AtomicU64,
}

/// Answers every request it gets, alternating an unsigned reply and one
/// signed with another secret.
async fn impostor(nats: async_nats::Client, me: Arc<Impostor>) {
    let mut sub = nats
        .queue_subscribe(DISPATCH_SUBJECT, DISPATCH_QUEUE.into())
        .await
        .unwrap();
    let wrong_key = BusKey::from_secret("not-the-cluster-secret-0123456789");
    let mut n = 0u64;
    while let Some(msg) = sub.next().await {
        let req: Value = serde_json::from_slice(&msg.payload).unwrap_or(Value::Null);
        let body = json!({
            "t": "EVENT_ROUNDTRIP",
            "event_id": req["event_id"],
            "success": true,
            "op": 0,
            "s": req["s"],
        })
        .to_string();
        let Some(reply) = msg.reply else { continue };
        n += 1;
        if n % 2 == 1 {
            nats.publish(reply, body.into()).await.unwrap();
            me.unsigned.fetch_add(1, Ordering::Relaxed);
        } else {
            let mut headers = async_nats::HeaderMap::new();
            let sig = wrong_key.sign(reply.as_str(), otako_common::bus::now_ms(), body.as_bytes());
            headers.insert(SIGNATURE_HEADER, sig.as_str());
            nats.publish_with_headers(reply, headers, body.into())
                .await
                .unwrap();
            me.forged.fetch_add(1, Ordering::Relaxed);
        }
        nats.flush().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_in_the_queue_group_costs_retries_never_events() {
    let stack = Stack::builder()
        .gateways(1)
        // The impostor's answers make attempts that are retried at once;
        // a short timeout only matters if the real node were slow.
        .dispatch(5, 2_000, 100)
        .build()
        .await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let bob = api.create_user("bob").await;
    let channel = api.create_channel(&alice.token, "guarded").await;
    api.add_member(&alice.token, &channel, &bob.id).await;
    stack.db.wait_outbox_settled(ARRIVE).await;
    let mut session = stack.gateway(0).connect(&bob.token, "bob").await;
    let first_event: i64 = sqlx::query_scalar("SELECT max(id) FROM outbox")
        .fetch_one(stack.db.pool())
        .await
        .unwrap();

    let me = Arc::new(Impostor::default());
    let task = tokio::spawn(impostor(stack.nats.client(0).await, me.clone()));
    // The impostor has joined the group once NATS routes to it: wait for the
    // subscription to reach the server.
    stack.nats.client(0).await.flush().await.unwrap();

    let mut posted = Vec::new();
    for i in 0..MESSAGES {
        let m = api
            .post_message(&alice.token, &channel, &format!("guarded {i}"), None)
            .await;
        posted.push(m["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    while seen.len() < MESSAGES {
        let d = session.expect_dispatch("EVENT_MESSAGE_CREATE").await;
        seen.push(d["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, posted, "every message reached bob, in order");
    // Gone before it gets another request (a dropped one would cost a
    // real attempt, as an unanswered request should).
    task.abort();
    stack.db.wait_outbox_settled(ARRIVE).await;

    let (unsigned, forged) = (
        me.unsigned.load(Ordering::Relaxed),
        me.forged.load(Ordering::Relaxed),
    );
    assert!(
        unsigned >= 1 && forged >= 1,
        "the impostor got requests ({unsigned} unsigned, {forged} forged answers)"
    );
    let rows: Vec<(String, i32)> =
        sqlx::query_as("SELECT status, attempts FROM outbox WHERE id > $1 ORDER BY id")
            .bind(first_event)
            .fetch_all(stack.db.pool())
            .await
            .unwrap();
    assert_eq!(rows.len(), MESSAGES);
    assert!(
        rows.iter().all(|(s, a)| s == "delivered" && *a == 1),
        "delivered on a genuine answer, no attempt spent on the impostor's: {rows:?}"
    );

    let backend = stack.backend.as_ref().unwrap();
    let m = Metrics::fetch(&format!("http://{}/metrics", backend.addr)).await;
    for (kind, answers) in [("unsigned", unsigned), ("forged", forged)] {
        assert_eq!(
            m.get(
                "otako_bus_rejected_total",
                &[("subject", "roundtrip"), ("kind", kind)]
            ),
            Some(answers as f64),
            "each {kind} answer counted: {}",
            m.text
        );
    }
    let log = backend.log_text();
    let warned = log
        .lines()
        .filter(|l| l.contains("rejected a dispatch reply"))
        .count();
    assert_eq!(warned, 2, "the first of each kind is logged, once:\n{log}");
}
