//! The gateway when its database goes away: dispatches fail with a database
//! error (logged once) while open sessions live on, retries succeed once the
//! database is back, and connections the pool kept from before the outage do
//! not fail the first request after it.
//!
//! The PostgreSQL server is shared by every test, so it is never stopped: the
//! gateway reaches its database through a [`Proxy`] that the tests cut and
//! restore. The backend is not started; the tests write rows directly and
//! play the backend on `otako.dispatch`.

use otako_e2e::{
    event_body, fresh_event_id, Auth, CloseCode, DispatchClient, Proxy, Stack, WsClient, ARRIVE,
    QUIET,
};
use serde_json::{json, Value};
use std::time::Duration;

/// The gateway pings a pooled connection before reusing it only after it sat
/// idle this long (1 s in `otako_common::db`), with some margin.
const PAST_PING_THRESHOLD: Duration = Duration::from_millis(1500);
/// No traffic for this long: the pool is done with its connections (it tests
/// each one it gets back), yet none has been idle long enough to be pinged.
const SETTLED: Duration = Duration::from_millis(100);

/// A gateway whose database goes through `proxy`, no backend, and alice in
/// channel "general" with a session open on the node.
struct Setup {
    stack: Stack,
    alice: i64,
    channel: i64,
    client: WsClient,
    sender: DispatchClient,
}

async fn setup(proxy: &Proxy) -> Setup {
    let stack = Stack::builder()
        .backend(false)
        .gateway_database_port(proxy.port())
        .build()
        .await;
    let alice = stack.db.insert_user("alice").await;
    let channel = stack.db.insert_channel(alice, "general").await;
    let client = stack
        .gateway(0)
        .connect(&stack.token_for(alice, "alice"), "alice")
        .await;
    assert_eq!(client.ready_channels(), vec![channel.to_string()]);
    assert!(
        proxy.open_connections() >= 1,
        "the gateway must reach its database through the proxy"
    );
    let sender = stack.dispatcher(0).await;
    Setup {
        stack,
        alice,
        channel,
        client,
        sender,
    }
}

/// EVENT_MESSAGE_CREATE for `message` in `channel`.
fn message_create(message: i64, channel: i64, event_id: &str) -> Vec<u8> {
    event_body(
        "EVENT_MESSAGE_CREATE",
        json!({"id": message.to_string(), "channel_id": channel.to_string()}),
        json!("1"),
        json!(event_id),
    )
}

/// Sends a fresh event for a new message and checks that it succeeds and
/// that `client` receives it next (callers check for duplicates at the end).
async fn dispatch_ok(s: &mut Setup, content: &str, what: &str, proxy: &Proxy) {
    let message = s.stack.db.insert_message(s.channel, s.alice, content).await;
    let reply = s
        .sender
        .send(message_create(message, s.channel, &fresh_event_id()))
        .await;
    assert!(
        reply.success(),
        "{what}: the dispatch must succeed on its first attempt \
         ({} connection(s) through the proxy now): {}",
        proxy.open_connections(),
        reply.raw
    );
    let d = s.client.expect_dispatch("EVENT_MESSAGE_CREATE").await;
    assert_eq!(d["id"], message.to_string(), "{what}");
    assert_eq!(d["content"], content, "{what}");
}

/// Makes the gateway's pool open several connections: bursts of concurrent
/// dispatches (for a channel without sessions) until the proxy counts at
/// least `n`. Returns how many it holds.
async fn fill_pool(s: &Setup, proxy: &Proxy, n: usize) -> usize {
    let bob = s.stack.db.insert_user("bob").await;
    let quiet_channel = s.stack.db.insert_channel(bob, "nobody listens").await;
    let message = s
        .stack
        .db
        .insert_message(quiet_channel, bob, "warming up")
        .await;
    let sender = &s.sender;
    otako_e2e::wait::until(
        &format!("the gateway's pool to hold {n} connections"),
        ARRIVE,
        || async move {
            let replies =
                futures_util::future::join_all((0..12).map(|_| {
                    sender.send(message_create(message, quiet_channel, &fresh_event_id()))
                }))
                .await;
            for r in &replies {
                assert!(r.success(), "warm-up dispatch failed: {}", r.raw);
            }
            let open = proxy.open_connections();
            Ok::<_, std::convert::Infallible>((open >= n).then_some(open))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_fails_while_the_database_is_cut_and_a_retry_delivers_once() {
    let proxy = Proxy::to_postgres().await;
    let mut s = setup(&proxy).await;
    let message = s
        .stack
        .db
        .insert_message(s.channel, s.alice, "written before the outage")
        .await;
    let event_id = fresh_event_id();
    let body = message_create(message, s.channel, &event_id);
    assert_eq!(s.sender.error_count().await, 0);

    proxy.cut().await;

    // The row exists; the gateway cannot read it: a database error, not a
    // missing row.
    let reply = s.sender.send(body.clone()).await;
    assert!(!reply.success(), "the database is cut: {}", reply.raw);
    assert_eq!(reply.raw["event_id"], json!(event_id), "{}", reply.raw);
    assert_eq!(reply.raw["s"], json!("1"), "{}", reply.raw);
    let error = reply
        .roundtrip
        .error
        .clone()
        .unwrap_or_else(|| panic!("a failure says why: {}", reply.raw));
    assert!(
        error.contains("database error") && !error.contains("does not exist"),
        "the error must name the database: {error:?}"
    );

    // Recorded in OTAKO_ERRORS, with the same text as the reply.
    let records = s.sender.error_records_for(&json!(event_id)).await;
    assert_eq!(records.len(), 1, "{records:#?}");
    let record = &records[0];
    assert_eq!(record["error"], json!(error), "{record}");
    assert_eq!(record["node"], "gw-1", "{record}");
    let sent: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(record["event"], sent, "{record}");

    // The sender retries while the database is still cut: failed again, not
    // logged again.
    let again = s.sender.send(body.clone()).await;
    assert!(!again.success(), "still cut: {}", again.raw);
    assert!(
        again
            .roundtrip
            .error
            .as_deref()
            .is_some_and(|e| e.contains("database error")),
        "{}",
        again.raw
    );
    assert_eq!(
        s.sender.error_count().await,
        1,
        "one record per event id: {:#?}",
        s.sender.error_records().await
    );

    // The session opened before the outage lives on: nothing was delivered,
    // and heartbeats are answered (the ack would not be the next frame if
    // the failed event had been delivered).
    s.client.heartbeat_acked().await;
    assert!(
        s.stack.gateways[0].proc().is_running(),
        "the gateway exited while its database was cut"
    );

    proxy.restore();

    // The same event again: delivered now, exactly once.
    let reply = s.sender.send(body.clone()).await;
    assert!(
        reply.success(),
        "the database is back: the retry succeeds: {}",
        reply.raw
    );
    assert_eq!(reply.raw["event_id"], json!(event_id), "{}", reply.raw);
    let d = s.client.expect_dispatch("EVENT_MESSAGE_CREATE").await;
    assert_eq!(d["id"], message.to_string());
    assert_eq!(d["channel_id"], s.channel.to_string());
    assert_eq!(d["content"], "written before the outage");
    assert_eq!(
        d["author"],
        json!({"id": s.alice.to_string(), "username": "alice"})
    );
    s.client.expect_no_dispatch(QUIET).await;
    // A success adds no record.
    assert_eq!(s.sender.error_count().await, 1);
    s.client.heartbeat_acked().await;
    assert!(s.stack.gateways[0].proc().is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_broken_by_a_database_restart_does_not_fail_the_next_dispatch() {
    // Requests one at a time: the connection that loads their rows is
    // broken right after its last use, so reusing it fails and the load must
    // be retried on a new one.
    let proxy = Proxy::to_postgres().await;
    let mut s = setup(&proxy).await;
    for i in 0..3 {
        proxy.wait_quiet(SETTLED).await;
        dispatch_ok(&mut s, &format!("before {i}"), "before the restart", &proxy).await;
    }
    // Let the traffic settle (a cut during a connection's test would remove
    // it before anyone reuses it), but cut well before it counts as idle.
    proxy.wait_quiet(SETTLED).await;
    let pooled = proxy.open_connections();
    assert!(pooled >= 1, "the gateway keeps its connections open");

    // A database restart, as the gateway sees it: every connection it had is
    // gone, and new ones work.
    proxy.cut().await;
    proxy.restore();

    dispatch_ok(
        &mut s,
        "after the restart",
        &format!("right after a restart that broke {pooled} pooled connection(s)"),
        &proxy,
    )
    .await;
    s.client.expect_no_dispatch(QUIET).await;
    assert_eq!(s.sender.error_count().await, 0, "no failure was recorded");
}

/// Several pooled connections, all broken by one database restart, must not
/// fail the dispatches after it, whether they were used just before the
/// restart or sat idle long enough to be pinged before reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_broken_by_a_database_restart_do_not_fail_dispatches() {
    struct Case {
        what: &'static str,
        /// How long the pool sits without traffic before the restart.
        idle: Duration,
    }
    let cases = [
        // Recently used, so none is pinged before reuse: a single retry may
        // pick another dead one.
        Case {
            what: "recently used",
            idle: SETTLED,
        },
        // Idle past the ping threshold: each is found dead before use and
        // replaced.
        Case {
            what: "idle",
            idle: PAST_PING_THRESHOLD,
        },
    ];
    for case in cases {
        let proxy = Proxy::to_postgres().await;
        let mut s = setup(&proxy).await;
        let pooled = fill_pool(&s, &proxy, 3).await;
        proxy.wait_quiet(case.idle).await;

        proxy.cut().await;
        proxy.restore();

        for i in 0..3 {
            dispatch_ok(
                &mut s,
                &format!("after the restart {i}"),
                &format!(
                    "request {i} after a restart that broke {pooled} {} pooled connections",
                    case.what
                ),
                &proxy,
            )
            .await;
        }
        s.client.expect_no_dispatch(QUIET).await;
        assert_eq!(
            s.sender.error_count().await,
            0,
            "{}: no failure was recorded",
            case.what
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_started_while_the_database_is_cut_is_refused_with_1011() {
    let proxy = Proxy::to_postgres().await;
    let mut s = setup(&proxy).await;
    let token = s.stack.token_for(s.alice, "alice");

    proxy.cut().await;
    // docs/protocol.md: 1011, the node could not start the session (e.g.
    // database unavailable): reconnect with backoff.
    let mut refused = s
        .stack
        .gateway(0)
        .connect_raw(Auth::Header(&token), "alice, during the outage")
        .await;
    let reason = refused.expect_refused(CloseCode::Internal).await;
    assert!(
        reason.contains("database"),
        "the close reason names the database: {reason:?}"
    );
    // The session opened before is not affected.
    s.client.heartbeat_acked().await;
    assert!(s.stack.gateways[0].proc().is_running());

    proxy.restore();
    let mut again = s.stack.gateway(0).connect(&token, "alice, after").await;
    assert_eq!(again.ready_channels(), vec![s.channel.to_string()]);
    // Both sessions get the channel's events.
    dispatch_ok(&mut s, "after the outage", "after restore", &proxy).await;
    let d = again.expect_dispatch("EVENT_MESSAGE_CREATE").await;
    assert_eq!(d["content"], "after the outage");
    again.expect_no_dispatch(QUIET).await;
}
