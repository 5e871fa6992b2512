//! The per-user session limit: `OTAKO_MAX_SESSIONS_PER_USER` holds across the
//! whole cluster, the session over it is closed with 4010, and the sessions of
//! a node that dies stop counting within a stated bound. Users are created in
//! the database directly; no backend runs.

use async_nats::jetstream;
use futures_util::StreamExt;
use otako_e2e::{Auth, CloseCode, Gateway, Incoming, Stack, WsClient, ARRIVE};
use std::time::{Duration, Instant};

const SESSION_LIMIT: CloseCode = CloseCode::SessionLimit;

/// The gateway's stated bound (`docs/protocol.md`):
/// a killed node's sessions stop counting at most 15 s after it died (its
/// liveness key's TTL in `otako_nodes`). One second of slack for the test's
/// own polling and a loaded machine.
const KILLED_NODE_BOUND: Duration = Duration::from_secs(16);

/// Opens a session and reads up to READY: `Ok` with the open session, or
/// `Err` with the close code the gateway refused it with (after HELLO).
async fn try_session(gw: &Gateway, token: &str, label: &str) -> Result<WsClient, CloseCode> {
    let mut c = gw.connect_raw(Auth::Header(token), label).await;
    c.hello().await;
    match c.next_incoming(ARRIVE).await {
        Some(Incoming::Json(v)) if v["t"] == "READY" => {
            c.ready = Some(v["d"].clone());
            Ok(c)
        }
        Some(Incoming::Close(Some(code), reason)) => Err(CloseCode::from_code(code)
            .unwrap_or_else(|| {
                panic!("{label}: closed with {code} ({reason}), not a contract code")
            })),
        other => panic!("{label}: expected READY or a close after HELLO, got {other:?}"),
    }
}

/// Tries to open a session every 100 ms until one is admitted; returns it
/// and when it was admitted. Panics after `timeout`. Every refusal must be
/// 4010.
async fn admitted_eventually(
    gw: &Gateway,
    token: &str,
    label: &str,
    timeout: Duration,
) -> (WsClient, Instant) {
    let deadline = Instant::now() + timeout;
    let mut tries = 0;
    loop {
        tries += 1;
        match try_session(gw, token, label).await {
            Ok(c) => return (c, Instant::now()),
            Err(SESSION_LIMIT) => {}
            Err(code) => panic!("{label}: refused with {code}, not {SESSION_LIMIT}"),
        }
        assert!(
            Instant::now() < deadline,
            "{label}: still refused with {SESSION_LIMIT} after {timeout:?} ({tries} tries)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_holds_across_the_cluster_and_4010_closes_the_session_over_it() {
    let stack = Stack::builder()
        .backend(false)
        .gateways(3)
        .max_sessions_per_user(2)
        .build()
        .await;
    let alice = stack.db.insert_user("alice").await;
    let bob = stack.db.insert_user("bob").await;
    let carol = stack.db.insert_user("carol").await;
    let (ta, tb, tc) = (
        stack.token_for(alice, "alice"),
        stack.token_for(bob, "bob"),
        stack.token_for(carol, "carol"),
    );

    // alice spreads her two places over two nodes.
    let mut a1 = stack.gateway(0).connect(&ta, "alice#1@gw-1").await;
    let mut a2 = stack.gateway(1).connect(&ta, "alice#2@gw-2").await;
    // A third session is refused on every node, including the node that
    // holds none of hers: HELLO, then close 4010.
    for i in 0..3 {
        let label = format!("alice#3@gw-{}", i + 1);
        match try_session(stack.gateway(i), &ta, &label).await {
            Err(SESSION_LIMIT) => {}
            Err(code) => panic!("{label}: refused with {code}, expected {SESSION_LIMIT}"),
            Ok(_) => panic!("{label}: admitted over the limit of 2 (spread over nodes)"),
        }
    }
    // The refusals took nothing from the sessions that hold the places.
    a1.heartbeat_acked().await;
    a2.heartbeat_acked().await;
    // Another user has places of their own.
    let c1 = stack.gateway(2).connect(&tc, "carol#1@gw-3").await;
    let c2 = stack.gateway(2).connect(&tc, "carol#2@gw-3").await;

    // Nine of bob's sessions race for his two places, three on each node:
    // exactly two are admitted, and the other seven closed with 4010.
    let attempts = (0..9).map(|i| {
        let gw = stack.gateway(i % 3);
        let token = tb.clone();
        async move { try_session(gw, &token, &format!("bob race #{i}@gw-{}", i % 3 + 1)).await }
    });
    let results = futures_util::future::join_all(attempts).await;
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for r in results {
        match r {
            Ok(c) => admitted.push(c),
            Err(code) => refused.push(code),
        }
    }
    assert_eq!(
        admitted.len(),
        2,
        "of 9 racing sessions, exactly the limit (2) may be admitted; refused with {refused:?}"
    );
    assert!(
        refused.iter().all(|&c| c == SESSION_LIMIT),
        "the sessions over the limit are closed with {SESSION_LIMIT}: {refused:?}"
    );
    for c in &mut admitted {
        c.heartbeat_acked().await;
    }

    // A session that ends frees its place, on whichever node it was.
    let freed = Instant::now();
    a1.close().await;
    let (mut a3, at) = admitted_eventually(stack.gateway(2), &ta, "alice#3@gw-3", ARRIVE).await;
    println!(
        "a closed session's place was free again after {:?}",
        at - freed
    );
    a3.heartbeat_acked().await;
    // …and only that one place.
    match try_session(stack.gateway(0), &ta, "alice#4@gw-1").await {
        Err(SESSION_LIMIT) => {}
        other => panic!(
            "alice#4@gw-1: expected {SESSION_LIMIT}, got {:?}",
            other.map(|_| "READY")
        ),
    }
    drop((c1, c2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_killed_node_stop_counting_within_the_stated_bound() {
    let mut stack = Stack::builder()
        .backend(false)
        .gateways(2)
        .max_sessions_per_user(2)
        .build()
        .await;
    let alice = stack.db.insert_user("alice").await;
    let token = stack.token_for(alice, "alice");
    let doomed = stack.gateway(1).node_id.clone();

    // Both places on the node that will die.
    let mut a1 = stack.gateway(1).connect(&token, "alice#1@gw-2").await;
    let mut a2 = stack.gateway(1).connect(&token, "alice#2@gw-2").await;
    assert_eq!(
        try_session(stack.gateway(0), &token, "alice#3@gw-1")
            .await
            .err(),
        Some(SESSION_LIMIT),
        "the limit holds before the node dies"
    );

    // Kill the node right after it refreshed its liveness key: the worst
    // case, in which the key lives its whole TTL after the death.
    let js = jetstream::new(stack.nats.client(0).await);
    let nodes = js
        .get_key_value("otako_nodes")
        .await
        .expect("the gateway keeps node liveness in the KV bucket otako_nodes");
    let mut watch = nodes
        .watch(&doomed)
        .await
        .expect("watching the node's liveness key");
    let refresh = tokio::time::timeout(Duration::from_secs(15), watch.next())
        .await
        .unwrap_or_else(|_| panic!("{doomed} did not refresh its liveness key within 15 s"))
        .expect("the watch ended")
        .expect("a watch entry");
    assert_eq!(
        refresh.operation,
        jetstream::kv::Operation::Put,
        "{refresh:?}"
    );
    stack.gateways[1].proc().kill();
    let killed = Instant::now();
    drop(watch);
    // For the report: when the liveness key itself disappears.
    let key_gone = tokio::spawn({
        let (nodes, doomed) = (nodes.clone(), doomed.clone());
        async move {
            loop {
                if let Ok(None) = nodes.get(&doomed).await {
                    return killed.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    // Its sessions are gone with it…
    for c in [&mut a1, &mut a2] {
        match c.next_incoming(ARRIVE).await {
            Some(Incoming::Ended(_)) | Some(Incoming::Close(..)) => {}
            other => panic!(
                "{}: expected the connection to end, got {other:?}",
                c.label()
            ),
        }
    }
    // …and stop counting within the bound: a session over the former limit
    // is admitted on the surviving node.
    let (mut a3, admitted) = admitted_eventually(
        stack.gateway(0),
        &token,
        "alice#3@gw-1",
        Duration::from_secs(40),
    )
    .await;
    let took = admitted - killed;
    let key_gone = tokio::time::timeout(Duration::from_secs(5), key_gone)
        .await
        .ok()
        .and_then(Result::ok);
    println!(
        "MEASURED: a SIGKILLed node's sessions stopped counting {:.2} s after the kill \
         (killed just after a liveness refresh; its liveness key was gone after {}; \
         stated bound 15 s, asserted <= {} s)",
        took.as_secs_f64(),
        key_gone.map_or("(not seen)".to_owned(), |d| format!(
            "{:.2} s",
            d.as_secs_f64()
        )),
        KILLED_NODE_BOUND.as_secs()
    );
    a3.heartbeat_acked().await;
    // The limit itself still holds: one more place, then 4010.
    let _a4 = stack.gateway(0).connect(&token, "alice#4@gw-1").await;
    assert_eq!(
        try_session(stack.gateway(0), &token, "alice#5@gw-1")
            .await
            .err(),
        Some(SESSION_LIMIT),
        "the limit holds after the dead node's sessions stopped counting"
    );
    assert!(
        took <= KILLED_NODE_BOUND,
        "a killed node's sessions counted for {took:?} after it died (bound {KILLED_NODE_BOUND:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_node_that_exits_cleanly_stop_counting_at_once() {
    let mut stack = Stack::builder()
        .backend(false)
        .gateways(2)
        .max_sessions_per_user(2)
        .build()
        .await;
    let alice = stack.db.insert_user("alice").await;
    let token = stack.token_for(alice, "alice");
    let mut a1 = stack.gateway(1).connect(&token, "alice#1@gw-2").await;
    let mut a2 = stack.gateway(1).connect(&token, "alice#2@gw-2").await;
    assert_eq!(
        try_session(stack.gateway(0), &token, "alice#3@gw-1")
            .await
            .err(),
        Some(SESSION_LIMIT)
    );

    stack.gateways[1].proc().sigterm();
    for c in [&mut a1, &mut a2] {
        assert_eq!(c.next_json(ARRIVE).await, serde_json::json!({"op": 7}));
        c.expect_close(CloseCode::Restart, ARRIVE).await;
    }
    let status = stack.gateways[1]
        .proc()
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the node exits after draining");
    assert!(status.success(), "a drained node exits cleanly: {status:?}");
    let exited = Instant::now();
    let (_a3, admitted) =
        admitted_eventually(stack.gateway(0), &token, "alice#3@gw-1", ARRIVE).await;
    let took = admitted - exited;
    println!(
        "MEASURED: a cleanly exited node's sessions stopped counting {:.2} s after it exited",
        took.as_secs_f64()
    );
    // "At once": allow for the liveness answers a node caches for 2 s.
    assert!(
        took <= Duration::from_secs(3),
        "a cleanly exited node's sessions still counted {took:?} after it exited"
    );
    let _a4 = stack.gateway(0).connect(&token, "alice#4@gw-1").await;
}
