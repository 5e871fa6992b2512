//! Connected sessions lose nothing either: when a node's own NATS link is
//! cut and comes back, or the NATS server it uses dies and it moves to
//! another server of the cluster, its open sessions still receive every
//! event exactly once, in order (caught up from the history), and stay open.

use otako_common::close::CloseCode;
use otako_e2e::{Auth, Proxy, Stack, WsClient, ARRIVE};
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

/// Two gateways: gw-1 reaches NATS through a cuttable proxy, gw-2 directly.
/// Short dispatch timeouts: requests the cut node took are retried on the
/// other one soon.
async fn stack_with_a_cuttable_node(gw1_env: &[(&str, &str)]) -> (Stack, Proxy) {
    let mut stack = Stack::builder()
        .gateways(0)
        // The tests read without heartbeating, for as long as a loaded
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
    let shared = stack.gateway_config.extra_env.clone();
    stack.gateway_config.extra_env.push((
        "OTAKO_NATS_URL".into(),
        format!("nats://127.0.0.1:{}", proxy.port()),
    ));
    for (k, v) in gw1_env {
        stack
            .gateway_config
            .extra_env
            .push(((*k).into(), (*v).into()));
    }
    stack.start_gateway().await;
    stack.gateway_config.extra_env = shared;
    stack.start_gateway().await;
    (stack, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_cut_nats_link_loses_no_event_for_its_open_sessions() {
    let (stack, proxy) = stack_with_a_cuttable_node(&[]).await;
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

/// Opens sessions on `url` until one gets READY, as a client does on 1013
/// (the node is catching up); returns it and how many were refused.
async fn connect_when_ready(url: &str, token: &str, label: &str) -> (WsClient, usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut refused = 0;
    loop {
        let mut c = WsClient::connect(url, Auth::Header(token), label).await;
        c.hello().await;
        match c.next_incoming(ARRIVE).await {
            Some(otako_e2e::Incoming::Json(v)) if v["t"] == "READY" => {
                c.ready = Some(v["d"].clone());
                return (c, refused);
            }
            Some(otako_e2e::Incoming::Close(Some(code), _))
                if code == CloseCode::TryAgainLater.code() =>
            {
                refused += 1;
            }
            other => panic!("{label}: expected READY or 1013, got {other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{label}: no READY within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_its_history_starts_no_session_with_a_membership_ahead_of_it() {
    let (stack, proxy) = stack_with_a_cuttable_node(&[]).await;
    let api = stack.api().clone();
    let (alice, bob, _general) = stack.alice_and_bob("general").await;
    let private = api.create_channel(&alice.token, "private").await;
    stack.db.wait_outbox_settled(ARRIVE).await;
    let before = stack.gateway(1).connect(&bob.token, "bob@gw-2").await;
    let cursor = before.last_cursor.clone().expect("READY carries a cursor");
    before.close().await;

    // While gw-1 cannot read the history, bob is added to a channel between
    // two messages; gw-2 dispatches all three.
    proxy.cut().await;
    api.post_message(&alice.token, &private, "before-the-add", None)
        .await;
    api.add_member(&alice.token, &private, &bob.id).await;
    api.post_message(&alice.token, &private, "after-the-add", None)
        .await;
    stack.db.wait_outbox_settled(Duration::from_secs(30)).await;

    // A session asked of gw-1 now has the database's membership (bob is in
    // `private`) but gw-1's history position is before the add: it is told
    // to come back rather than started at that position.
    let url = stack.gateway(0).ws_url();
    let mut early = WsClient::connect(&url, Auth::Header(&bob.token), "bob@gw-1(cut)").await;
    early.hello().await;
    let reason = early
        .expect_close(CloseCode::TryAgainLater, Duration::from_secs(30))
        .await;
    assert!(reason.contains("history"), "{reason}");

    proxy.restore();
    let (mut fresh, _) = connect_when_ready(&url, &bob.token, "bob@gw-1").await;
    assert!(
        fresh.ready_channels().contains(&private),
        "{:?}",
        fresh.ready
    );
    let resume_url = format!("{url}?resume={cursor}");
    let (mut resumed, _) = connect_when_ready(&resume_url, &bob.token, "bob@gw-1(resumed)").await;
    assert_eq!(resumed.ready.as_ref().unwrap()["resumed"], true);
    let replayed: Vec<String> = [
        resumed.next_dispatch(ARRIVE).await,
        resumed.next_dispatch(ARRIVE).await,
    ]
    .iter()
    .map(|v| match v["t"].as_str().unwrap() {
        "EVENT_MESSAGE_CREATE" => v["d"]["content"].as_str().unwrap().to_owned(),
        t => t.to_owned(),
    })
    .collect();
    assert_eq!(
        replayed,
        ["EVENT_CHANNEL_MEMBER_ADD", "after-the-add"],
        "the replay starts at the add, never before it"
    );
    api.post_message(&alice.token, &private, "live", None).await;
    for c in [&mut fresh, &mut resumed] {
        assert_eq!(read_messages(c, 1, ARRIVE).await, ["live"]);
        c.expect_no_dispatch(otako_e2e::QUIET).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_starts_past_the_nodes_cap_are_told_to_come_back_with_1013() {
    let (stack, proxy) = stack_with_a_cuttable_node(&[
        ("OTAKO_MAX_CONCURRENT_STARTS", "1"),
        ("OTAKO_START_QUEUE_MS", "300"),
    ])
    .await;
    let bob = stack.api().create_user("bob").await;
    let url = stack.gateway(0).ws_url();
    // One start holds gw-1's only start slot: with its NATS link cut it
    // waits (5 s) for the history's end.
    proxy.cut().await;
    let mut holder = WsClient::connect(&url, Auth::Header(&bob.token), "bob-1").await;
    holder.hello().await;
    let mut queued = WsClient::connect(&url, Auth::Header(&bob.token), "bob-2").await;
    let reason = queued.expect_refused(CloseCode::TryAgainLater).await;
    assert!(reason.contains("too many sessions starting"), "{reason}");
    let reason = holder
        .expect_close(CloseCode::TryAgainLater, Duration::from_secs(30))
        .await;
    assert!(reason.contains("history"), "{reason}");
    // Both come back, as the close code says, and start.
    proxy.restore();
    for label in ["bob-1 again", "bob-2 again"] {
        let (c, _) = connect_when_ready(&url, &bob.token, label).await;
        assert_eq!(c.ready.as_ref().unwrap()["user"]["id"], bob.id.as_str());
    }
    let refused =
        otako_e2e::metric(stack.gateway(0), "otako_session_starts_refused_total", &[]).await;
    assert!(refused >= 2.0, "{refused}");
}

/// A history consumer that stops delivering while the node's link stays up
/// (here: paused on the server, as an operator or a server-side fault can
/// do) must not hold the node's sessions: the follower sees the stream ahead
/// of what it routed and follows it anew within seconds, losing nothing and
/// doubling nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_consumer_that_stops_delivering_is_made_again() {
    use futures_util::StreamExt;
    let stack = Stack::builder().heartbeat_ms(300_000).build().await;
    let api = stack.api().clone();
    let (alice, bob, channel) = stack.alice_and_bob("general").await;
    let mut c = stack.gateway(0).connect(&bob.token, "bob").await;
    api.post_message(&alice.token, &channel, "before", None)
        .await;
    assert_eq!(read_messages(&mut c, 1, ARRIVE).await, ["before"]);

    // Pause every consumer of the history: the follower's among them.
    let js = async_nats::jetstream::new(stack.nats.client(0).await);
    let stream = js
        .get_stream(otako_common::history::HISTORY_STREAM)
        .await
        .unwrap();
    let names: Vec<String> = stream.consumer_names().map(|n| n.unwrap()).collect().await;
    assert!(!names.is_empty(), "the node follows the history");
    let until = async_nats::datetime::add_std_duration(
        async_nats::datetime::now(),
        Duration::from_secs(3_600),
    )
    .unwrap();
    for name in &names {
        let paused = stream.pause_consumer(name, until).await.unwrap();
        assert!(paused.paused, "{name} did not pause");
    }

    // The consumer's own recovery (a missed heartbeat, 10 s) would come
    // later than this, or never while a paused consumer still beats.
    api.post_message(&alice.token, &channel, "while paused", None)
        .await;
    assert_eq!(
        read_messages(&mut c, 1, Duration::from_secs(7)).await,
        ["while paused"]
    );
    let restarts = otako_e2e::metric(
        stack.gateway(0),
        "otako_history_follower_restarts_total",
        &[],
    )
    .await;
    assert!(restarts >= 1.0, "{restarts}");
    api.post_message(&alice.token, &channel, "after", None)
        .await;
    assert_eq!(read_messages(&mut c, 1, ARRIVE).await, ["after"]);
    c.expect_no_dispatch(otako_e2e::QUIET).await;
}
