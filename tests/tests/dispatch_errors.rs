//! Events the gateway cannot handle: each is answered `success:false`, logged
//! to `OTAKO_ERRORS` exactly once per event id across the cluster, and the node
//! keeps serving. The tests play the backend themselves, sending raw requests
//! on `otako.dispatch`.

use otako_e2e::{event_body, fresh_event_id, Stack, QUIET};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Checks the fields every `OTAKO_ERRORS` record must have.
fn check_record_shape(record: &Value) {
    for key in ["event_id", "event", "error", "trace_id", "node", "at"] {
        assert!(record.get(key).is_some(), "record lacks {key}: {record}");
    }
    assert!(
        record["error"].as_str().is_some_and(|e| !e.is_empty()),
        "record's error must be text: {record}"
    );
    match &record["trace_id"] {
        Value::Null => {}
        Value::String(t) => assert!(
            t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()),
            "trace_id must be 32 hex digits or null: {record}"
        ),
        other => panic!("trace_id must be a string or null, not {other}"),
    }
    let at = record["at"].as_str().expect("at is a string");
    let at = chrono::DateTime::parse_from_rfc3339(at)
        .unwrap_or_else(|e| panic!("at is not RFC 3339 ({e}): {record}"));
    let age = chrono::Utc::now().signed_duration_since(at);
    assert!(
        age < chrono::Duration::minutes(5) && age > chrono::Duration::seconds(-5),
        "at is not the time of the failure: {record}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_row_fails_on_every_node_and_is_logged_once() {
    // Three NATS servers, each gateway node on its own one, and a requester on
    // each server, so retries come in on every server and spread over the
    // nodes quickly.
    let stack = Stack::builder()
        .backend(false)
        .nats_cluster(3)
        .gateways(3)
        .build()
        .await;
    let mut senders = Vec::new();
    for i in 0..3 {
        senders.push(stack.dispatcher(i).await);
    }
    let event_id = fresh_event_id();
    // Neither the message nor the channel exists.
    let body = event_body(
        "EVENT_MESSAGE_CREATE",
        json!({"id": "987654321", "channel_id": "123456789"}),
        json!("7"),
        json!(event_id),
    );

    // The same event, retried until three replies came and every node
    // handled it at least once (bounded).
    let mut nodes_in_order = Vec::new();
    for attempt in 0..100 {
        let distinct: BTreeSet<&String> = nodes_in_order.iter().collect();
        if nodes_in_order.len() >= 3 && distinct.len() == 3 {
            break;
        }
        let reply = senders[attempt % 3].send(body.clone()).await;
        assert!(!reply.success(), "a missing row must fail: {}", reply.raw);
        assert_eq!(
            reply.raw["event_id"],
            json!(event_id),
            "event_id echoed: {}",
            reply.raw
        );
        assert_eq!(reply.raw["s"], json!("7"), "s echoed: {}", reply.raw);
        nodes_in_order.push(reply.node().to_owned());
    }
    let distinct: BTreeSet<&String> = nodes_in_order.iter().collect();
    assert!(
        distinct.len() >= 2,
        "retries were all handled by {distinct:?}; wanted them spread over the nodes"
    );

    // Exactly one record, written by the node that failed the event first.
    // (Each node writes before it replies, so nothing needs awaiting here.)
    let records = senders[0].error_records().await;
    assert_eq!(
        records.len(),
        1,
        "one record for {} failures: {records:#?}",
        nodes_in_order.len()
    );
    let record = &records[0];
    check_record_shape(record);
    assert_eq!(record["event_id"], json!(event_id));
    let sent: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        record["event"], sent,
        "the record holds the request as received"
    );
    assert_eq!(
        record["node"],
        json!(nodes_in_order[0]),
        "the first node to fail it writes it"
    );

    // Another failing event is another record.
    let other_id = fresh_event_id();
    let reply = senders[1]
        .send(event_body(
            "EVENT_CHANNEL_MEMBER_ADD",
            json!({"channel_id": "123456789", "user_id": "1"}),
            json!("8"),
            json!(other_id),
        ))
        .await;
    assert!(!reply.success());
    let records = senders[2].error_records().await;
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_eq!(records[1]["event_id"], json!(other_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_events_fail_and_the_node_keeps_serving() {
    let stack = Stack::builder().backend(false).build().await;
    let sender = stack.dispatcher(0).await;

    // Not JSON at all: nothing to echo, so event_id and s are null.
    let garbage = "this is { not json";
    let reply = sender.send(garbage).await;
    assert!(!reply.success(), "{}", reply.raw);
    let obj = reply.raw.as_object().unwrap();
    assert_eq!(obj.get("event_id"), Some(&Value::Null), "{}", reply.raw);
    assert_eq!(obj.get("s"), Some(&Value::Null), "{}", reply.raw);

    // An unknown t; event_id and s are echoed with their types.
    let unknown_id = fresh_event_id();
    let reply = sender
        .send_event(
            "EVENT_NOPE",
            json!({"id": "1", "channel_id": "1"}),
            json!("3"),
            json!(unknown_id),
        )
        .await;
    assert!(!reply.success(), "{}", reply.raw);
    assert_eq!(reply.raw["event_id"], json!(unknown_id));
    assert_eq!(reply.raw["s"], json!("3"));
    let reply = sender
        .send_event("EVENT_NOPE", json!({}), json!(14), json!(41))
        .await;
    assert!(!reply.success(), "{}", reply.raw);
    assert_eq!(
        reply.raw["event_id"],
        json!(41),
        "a numeric event_id stays a number"
    );
    assert_eq!(reply.raw["s"], json!(14), "a numeric s stays a number");

    // A known t with a bad d, sent inside a trace: its record names the trace.
    let bad_d_id = fresh_event_id();
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let reply = sender
        .send_traced(
            event_body(
                "EVENT_MESSAGE_CREATE",
                json!({"id": 3, "channel_id": "1"}),
                json!("4"),
                json!(bad_d_id),
            ),
            &format!("00-{trace_id}-00f067aa0ba902b7-01"),
        )
        .await;
    assert!(!reply.success(), "{}", reply.raw);
    assert_eq!(reply.raw["event_id"], json!(bad_d_id));

    // Each failure is in the sink, the not-JSON one with its body as a string.
    let records = sender.error_records().await;
    assert_eq!(records.len(), 4, "{records:#?}");
    for r in &records {
        check_record_shape(r);
        assert_eq!(r["node"], "gw-1");
    }
    assert_eq!(records[0]["event_id"], Value::Null);
    assert_eq!(records[0]["event"], json!(garbage));
    assert_eq!(records[1]["event_id"], json!(unknown_id));
    assert_eq!(records[1]["event"]["t"], "EVENT_NOPE");
    assert_eq!(records[3]["event_id"], json!(bad_d_id));
    assert_eq!(records[3]["trace_id"], json!(trace_id));

    // The node still serves: a valid event succeeds and reaches the member.
    let db = &stack.db;
    let alice = db.insert_user("alice").await;
    let channel = db.insert_channel(alice, "general").await;
    let message = db.insert_message(channel, alice, "still here").await;
    let mut client = stack
        .gateway(0)
        .connect(&stack.token_for(alice, "alice"), "alice")
        .await;
    assert_eq!(client.ready_channels(), vec![channel.to_string()]);
    let event_id = fresh_event_id();
    let reply = sender
        .send_event(
            "EVENT_MESSAGE_CREATE",
            json!({"id": message.to_string(), "channel_id": channel.to_string()}),
            json!("5"),
            json!(event_id),
        )
        .await;
    assert!(reply.success(), "{}", reply.raw);
    assert_eq!(reply.raw["event_id"], json!(event_id));
    let d = client.expect_dispatch("EVENT_MESSAGE_CREATE").await;
    assert_eq!(d["id"], message.to_string());
    assert_eq!(d["channel_id"], channel.to_string());
    assert_eq!(
        d["author"],
        json!({"id": alice.to_string(), "username": "alice"})
    );
    assert_eq!(d["content"], "still here");
    assert_eq!(d["nonce"], Value::Null);
    assert_eq!(d["edited_timestamp"], Value::Null);
    assert!(
        d["timestamp"]
            .as_str()
            .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_ok()),
        "{d}"
    );
    client.expect_no_dispatch(QUIET).await;
    // No new record for a success.
    assert_eq!(sender.error_count().await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_nodes_failing_the_same_event_at_once_log_one_record() {
    // Every node given all three servers' URLs, as a deployment would, and a
    // sender on each server, all copies sent at the same moment: several
    // nodes fail the event concurrently and race to claim its record.
    let stack = Stack::builder()
        .backend(false)
        .nats_cluster(3)
        .gateways_get_every_nats_url()
        .gateways(3)
        .build()
        .await;
    let mut senders = Vec::new();
    for i in 0..3 {
        senders.push(stack.dispatcher(i).await);
    }
    const ROUNDS: usize = 5;
    const COPIES_PER_SENDER: usize = 4;
    let mut failing_nodes = BTreeSet::new();
    let mut event_ids = Vec::new();
    for round in 0..ROUNDS {
        let event_id = fresh_event_id();
        let body = event_body(
            "EVENT_MESSAGE_CREATE",
            json!({"id": "987654321", "channel_id": "123456789"}),
            json!(round.to_string()),
            json!(event_id),
        );
        let copies = senders.iter().flat_map(|s| {
            let body = &body;
            (0..COPIES_PER_SENDER).map(move |_| s.send(body.clone()))
        });
        let replies = futures_util::future::join_all(copies).await;
        let nodes: BTreeSet<String> = replies.iter().map(|r| r.node().to_owned()).collect();
        for r in &replies {
            assert!(!r.success(), "a missing row must fail: {}", r.raw);
            assert_eq!(r.raw["event_id"], json!(event_id), "{}", r.raw);
        }
        assert!(
            nodes.len() >= 2,
            "round {round}: every copy was failed by {nodes:?}; wanted several nodes at once"
        );
        failing_nodes.extend(nodes);
        event_ids.push(event_id);
    }
    // One record per event id, however many nodes failed it at once.
    let records = senders[0].error_records().await;
    for id in &event_ids {
        let of_id: Vec<&Value> = records
            .iter()
            .filter(|r| r["event_id"] == json!(id))
            .collect();
        assert_eq!(
            of_id.len(),
            1,
            "event {id} failed {} times on {failing_nodes:?}: {of_id:#?}",
            3 * COPIES_PER_SENDER
        );
        check_record_shape(of_id[0]);
    }
    assert_eq!(records.len(), ROUNDS, "{records:#?}");
}
