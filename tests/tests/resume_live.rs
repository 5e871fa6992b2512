//! Connected sessions lose nothing either: when a node's own NATS link is
//! cut and comes back, or the NATS server it uses dies and it moves to
//! another server of the cluster, its open sessions still receive every
//! event exactly once, in order (caught up from the history), and stay open.

use otako_e2e::{Proxy, Stack, WsClient, ARRIVE};
use std::time::Duration;

/// How long a fault lasts: the fault itself, not a wait for a condition.
const FAULT: Duration = Duration::from_secs(3);

/// Reads message creates until `want` have arrived, asserting the session
/// stays open; returns their contents in arrival order.
async fn read_messages(c: &mut WsClient, want: usize, within: Duration) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < want {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = match c.next_incoming(left).await {
            Some(otako_e2e::Incoming::Json(v)) => v,
            Some(other) => panic!("{}: the session ended or misbehaved: {other:?}", c.label()),
            None => panic!(
                "{}: {} of {want} messages within {within:?}: {got:?}",
                c.label(),
                got.len()
            ),
        };
        if v["t"] == "EVENT_MESSAGE_CREATE" {
            got.push(v["d"]["content"].as_str().unwrap().to_owned());
        }
    }
    got
}

/// Posts `n` messages, one every `every`, while `during` runs (a fault).
async fn post_while<F: std::future::Future<Output = ()>>(
    api: &otako_e2e::Api,
    token: &str,
    channel: &str,
    n: usize,
    every: Duration,
    during: F,
) -> Vec<String> {
    let writer = async {
        let mut sent = Vec::new();
        for i in 0..n {
            let m = format!("m{i:03}");
            api.post_message(token, channel, &m, None).await;
            sent.push(m);
            tokio::time::sleep(every).await;
        }
        sent
    };
    let (sent, ()) = tokio::join!(writer, during);
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_cut_nats_link_loses_no_event_for_its_open_sessions() {
    // Short dispatch timeouts: requests the cut node took are retried on the
    // other one soon.
    let mut stack = Stack::builder()
        .gateways(0)
        // The test reads without heartbeating, for as long as a loaded
        // machine takes.
        .heartbeat_ms(300_000)
        .dispatch(20, 1_000, 100)
        .build()
        .await;
    let nats_addr = stack
        .nats
        .url(0)
        .trim_start_matches("nats://")
        .parse()
        .unwrap();
    let proxy = Proxy::start(nats_addr).await;
    stack.gateway_config.extra_env.push((
        "OTAKO_NATS_URL".into(),
        format!("nats://127.0.0.1:{}", proxy.port()),
    ));
    stack.start_gateway().await;
    stack.gateway_config.extra_env.pop();
    stack.start_gateway().await;
    let api = stack.api().clone();
    let (alice, bob, channel) = stack.alice_and_bob("general").await;

    let mut cut_side = stack.gateway(0).connect(&bob.token, "bob@gw-1(cut)").await;
    let mut other_side = stack.gateway(1).connect(&bob.token, "bob@gw-2").await;
    let sent = post_while(
        &api,
        &alice.token,
        &channel,
        30,
        Duration::from_millis(100),
        async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            proxy.cut().await;
            tokio::time::sleep(FAULT).await;
            proxy.restore();
        },
    )
    .await;
    stack.db.wait_outbox_settled(Duration::from_secs(60)).await;
    let within = Duration::from_secs(40);
    assert_eq!(read_messages(&mut cut_side, sent.len(), within).await, sent);
    assert_eq!(
        read_messages(&mut other_side, sent.len(), within).await,
        sent
    );
    for c in [&mut cut_side, &mut other_side] {
        c.heartbeat_acked().await;
        c.expect_no_dispatch(otako_e2e::QUIET).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_killed_while_events_flow_loses_nothing() {
    // The backend's default five attempts: the history's leader dies, and
    // its election (seconds) must cost no event its attempts.
    let mut stack = Stack::builder()
        .nats_cluster(3)
        .gateways(2)
        .heartbeat_ms(300_000)
        .dispatch(5, 1_000, 100)
        .build()
        .await;
    let api = stack.api().clone();
    let (alice, bob, channel) = stack.alice_and_bob("general").await;

    // The server that leads the history dies; whichever gateway it served
    // moves to a server it learned from the cluster.
    let js = async_nats::jetstream::new(stack.nats.client(0).await);
    let mut history = js
        .get_stream(otako_common::history::HISTORY_STREAM)
        .await
        .unwrap();
    let leader = history
        .info()
        .await
        .unwrap()
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("the replicated history has a leader");
    let victim: usize = leader
        .trim_start_matches("nats-")
        .parse::<usize>()
        .expect("servers are named nats-<n>")
        - 1;
    let mut on_killed = stack.gateway(0).connect(&bob.token, "bob@gw-1").await;
    let mut elsewhere = stack.gateway(1).connect(&bob.token, "bob@gw-2").await;
    let nats = &mut stack.nats;
    let sent = post_while(
        &api,
        &alice.token,
        &channel,
        40,
        Duration::from_millis(100),
        async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            nats.kill(victim);
            tokio::time::sleep(FAULT).await;
        },
    )
    .await;
    stack.db.wait_outbox_settled(Duration::from_secs(60)).await;
    let within = Duration::from_secs(40);
    assert_eq!(
        read_messages(&mut on_killed, sent.len(), within).await,
        sent
    );
    assert_eq!(
        read_messages(&mut elsewhere, sent.len(), within).await,
        sent
    );
    let dropped: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE status = 'dropped'")
        .fetch_one(stack.db.pool())
        .await
        .unwrap();
    assert_eq!(
        dropped, 0,
        "no event ran out of attempts while the history had no leader"
    );
    // The server comes back; later events still flow to both.
    stack.nats.restart(victim).await;
    api.post_message(&alice.token, &channel, "after", None)
        .await;
    for c in [&mut on_killed, &mut elsewhere] {
        assert_eq!(read_messages(c, 1, ARRIVE).await, ["after"]);
        c.expect_no_dispatch(otako_e2e::QUIET).await;
    }
}
