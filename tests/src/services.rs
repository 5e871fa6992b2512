//! Both binaries as NATS micro-services: one request on `$SRV.<verb>.<name>`
//! and every instance's answer, matched to the node that gave it.

use futures_util::StreamExt;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

/// Sends one request to `subject` and collects the answers, until `enough`
/// says the answers so far suffice or `timeout` passes; returns them all.
pub async fn collect_answers(
    client: &async_nats::Client,
    subject: &str,
    timeout: Duration,
    enough: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .unwrap_or_else(|e| panic!("subscribing to {inbox}: {e}"));
    client
        .publish_with_reply(subject.to_owned(), inbox, "".into())
        .await
        .unwrap_or_else(|e| panic!("publishing to {subject}: {e}"));
    client
        .flush()
        .await
        .unwrap_or_else(|e| panic!("flushing: {e}"));
    let deadline = Instant::now() + timeout;
    let mut out: Vec<Value> = Vec::new();
    while !enough(&out) {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(msg)) => {
                let v: Value = serde_json::from_slice(&msg.payload).unwrap_or_else(|e| {
                    panic!(
                        "an answer on {subject} is not JSON ({e}): {:?}",
                        String::from_utf8_lossy(&msg.payload)
                    )
                });
                out.push(v);
            }
            _ => break,
        }
    }
    let _ = sub.unsubscribe().await;
    out
}

/// Asks `$SRV.<verb>.<service>` until every node in `nodes` (by
/// `metadata.node_id`) has answered; panics after `timeout`. Returns the
/// answers by node id.
pub async fn srv_answers(
    client: &async_nats::Client,
    verb: &str,
    service: &str,
    nodes: &[&str],
    timeout: Duration,
) -> BTreeMap<String, Value> {
    let subject = format!("$SRV.{verb}.{service}");
    let want: HashSet<String> = nodes.iter().map(|s| s.to_string()).collect();
    let answers = collect_answers(client, &subject, timeout, |got| {
        let seen: HashSet<String> = got.iter().filter_map(node_of).collect();
        want.is_subset(&seen)
    })
    .await;
    let mut by_node = BTreeMap::new();
    for a in answers {
        if let Some(n) = node_of(&a) {
            by_node.insert(n, a);
        }
    }
    let seen: HashSet<String> = by_node.keys().cloned().collect();
    assert!(
        want.is_subset(&seen),
        "{subject}: expected answers from {want:?} within {timeout:?}, got {by_node:?}"
    );
    by_node
}

fn node_of(v: &Value) -> Option<String> {
    v["metadata"]["node_id"].as_str().map(str::to_owned)
}

/// `$SRV.STATS.<service>` answers of every node in `nodes`, by node id.
/// async-nats leaves `metadata` out of STATS answers, so instances are
/// matched to nodes by their `id`, learnt from `$SRV.PING` first.
pub async fn srv_stats(
    client: &async_nats::Client,
    service: &str,
    nodes: &[&str],
    timeout: Duration,
) -> BTreeMap<String, Value> {
    let pings = srv_answers(client, "PING", service, nodes, timeout).await;
    let ids: BTreeMap<String, String> = pings
        .iter()
        .map(|(node, p)| {
            let id = p["id"]
                .as_str()
                .unwrap_or_else(|| panic!("a ping answer without id: {p}"));
            (id.to_owned(), node.clone())
        })
        .collect();
    let subject = format!("$SRV.STATS.{service}");
    let answers = collect_answers(client, &subject, timeout, |got| {
        let seen: HashSet<&str> = got.iter().filter_map(|a| a["id"].as_str()).collect();
        ids.keys().all(|id| seen.contains(id.as_str()))
    })
    .await;
    let mut by_node = BTreeMap::new();
    for a in answers {
        if let Some(node) = a["id"].as_str().and_then(|id| ids.get(id)) {
            by_node.insert(node.clone(), a);
        }
    }
    assert_eq!(
        by_node.len(),
        nodes.len(),
        "{subject}: expected answers from {nodes:?} within {timeout:?}, got {by_node:?}"
    );
    by_node
}

/// The custom `data` of a `$SRV.STATS` answer (of its first endpoint that
/// has one).
pub fn stats_data(answer: &Value) -> Value {
    answer["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["data"].is_object()))
        .map(|e| e["data"].clone())
        .unwrap_or_else(|| panic!("a $SRV.STATS answer without endpoint data: {answer}"))
}
