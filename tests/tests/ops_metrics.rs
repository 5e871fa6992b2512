//! Metrics, health and logs of a gateway node: the Prometheus text on the admin
//! port moves with real traffic; `/healthz` and `/readyz` tell a load balancer
//! what it needs (draining, NATS lost and back); with `OTAKO_LOG_JSON=1` every
//! log line is JSON and lines inside a dispatch carry its trace id.

use futures_util::StreamExt;
use otako_common::proto::{DISPATCH_SUBJECT, TRACEPARENT_HEADER};
use otako_e2e::http::http_status;
use otako_e2e::logs::json_lines;
use otako_e2e::traceparent::fresh_traceparent;
use otako_e2e::{fresh_event_id, wait, CloseCode, Metrics, Stack, StalledClient, ARRIVE};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CREATE: &str = "EVENT_MESSAGE_CREATE";

/// Every metric family the gateway documents moves as real traffic flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_follow_real_traffic() {
    let stack = Stack::builder()
        .gateways(1)
        .gateway_env("OTAKO_SESSION_QUEUE", "8")
        .build()
        .await;
    let gw = stack.gateway(0);
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let bob = api.create_user("bob").await;
    let carol = api.create_user("carol").await;
    let channel = api.create_channel(&alice.token, "metered").await;
    api.add_member(&alice.token, &channel, &bob.id).await;
    stack.db.wait_outbox_settled(ARRIVE).await;

    let m0 = Metrics::of(gw).await;
    for family in [
        "otako_sessions_open",
        "otako_dispatch_requests_total",
        "otako_dispatch_duration_seconds_bucket",
    ] {
        assert!(m0.has(family), "{family} missing:\n{}", m0.text);
    }
    assert!(
        m0.has_type("otako_dispatch_duration_seconds", "histogram"),
        "{}",
        m0.text
    );
    let base = |name: &str, labels: &[(&str, &str)]| m0.sum(name, labels);
    assert_eq!(m0.sum("otako_sessions_open", &[]), 0.0);
    // The two member-add events of the set-up were handled here.
    assert_eq!(
        base(
            "otako_dispatch_requests_total",
            &[("t", "EVENT_CHANNEL_MEMBER_ADD")]
        ),
        2.0
    );

    // Sessions: a member and a non-member.
    let mut alice1 = gw.connect(&alice.token, "alice").await;
    let mut carol1 = gw.connect(&carol.token, "carol").await;
    let m1 = Metrics::until(gw, "two open sessions", |m| {
        m.sum("otako_sessions_open", &[]) == 2.0
    })
    .await;
    assert_eq!(
        m1.sum("otako_sessions_opened_total", &[]),
        base("otako_sessions_opened_total", &[]) + 2.0
    );

    // Three messages: three requests handled, three deliveries, three
    // commit-to-socket samples.
    for i in 0..3 {
        api.post_message(&alice.token, &channel, &format!("m{i}"), None)
            .await;
        alice1.expect_dispatch(CREATE).await;
    }
    let t = [("t", CREATE)];
    let m2 = Metrics::until(gw, "three commit-to-socket samples", |m| {
        m.sum("otako_commit_to_socket_seconds_count", &[])
            == base("otako_commit_to_socket_seconds_count", &[]) + 3.0
    })
    .await;
    assert_eq!(
        m2.sum("otako_dispatch_requests_total", &t),
        base("otako_dispatch_requests_total", &t) + 3.0
    );
    assert_eq!(m2.sum("otako_dispatch_failed_total", &t), 0.0);
    assert_eq!(
        m2.sum("otako_dispatch_duration_seconds_count", &t),
        base("otako_dispatch_duration_seconds_count", &t) + 3.0
    );
    assert_eq!(
        m2.sum(
            "otako_dispatch_duration_seconds_bucket",
            &[("t", CREATE), ("le", "+Inf")]
        ),
        m2.sum("otako_dispatch_duration_seconds_count", &t),
        "the +Inf bucket counts every sample"
    );
    assert_eq!(
        m2.sum("otako_fanout_deliveries_total", &[]),
        base("otako_fanout_deliveries_total", &[]) + 3.0,
        "one delivery per member session and event (carol is no member)"
    );
    assert!(m2.has_type("otako_commit_to_socket_seconds", "histogram"));
    assert!(m2.sum("otako_commit_to_socket_seconds_sum", &[]) > 0.0);

    // Failures, by type: a row that does not exist, an unknown type.
    let dispatch = stack.dispatcher(0).await;
    let r = dispatch
        .send_event(
            CREATE,
            json!({"id": "999999", "channel_id": channel}),
            json!("1"),
            json!(fresh_event_id()),
        )
        .await;
    assert!(!r.success());
    let r = dispatch
        .send_event(
            "EVENT_NOT_A_THING",
            json!({}),
            json!("2"),
            json!(fresh_event_id()),
        )
        .await;
    assert!(!r.success());
    let m3 = Metrics::of(gw).await;
    assert_eq!(m3.sum("otako_dispatch_failed_total", &t), 1.0);
    assert_eq!(
        m3.sum("otako_dispatch_requests_total", &t),
        base("otako_dispatch_requests_total", &t) + 4.0
    );
    assert_eq!(
        m3.sum("otako_dispatch_failed_total", &[("t", "unknown")]),
        1.0,
        "an unknown t is counted as t=\"unknown\":\n{}",
        m3.text
    );

    // Closes by code: the client's own, and a client that sent something
    // other than a heartbeat.
    let closed = |m: &Metrics, code: CloseCode| {
        m.sum(
            "otako_sessions_closed_total",
            &[("code", &code.code().to_string())],
        )
    };
    alice1.close().await;
    carol1.send_text("not a heartbeat").await;
    carol1.expect_close(CloseCode::Rejected, ARRIVE).await;
    let m4 = Metrics::until(gw, "two closed sessions", |m| {
        closed(m, CloseCode::Normal) == 1.0 && closed(m, CloseCode::Rejected) == 1.0
    })
    .await;
    assert_eq!(m4.sum("otako_sessions_open", &[]), 0.0);

    // A slow client: a full queue closes it (too slow) and counts once.
    let stalled = StalledClient::connect(gw, &bob.token, "bob (stalled)").await;
    // 2000 characters of 4 bytes: 8 KB a frame. The node may buffer about
    // 1 MiB per socket (tungstenite's write buffer) besides the kernel's.
    let content = "\u{1F600}".repeat(2000);
    let mut posted = 0;
    while Metrics::of(gw)
        .await
        .sum("otako_slow_client_closes_total", &[])
        == 0.0
    {
        assert!(
            posted < 1000,
            "posted {posted} messages of 8 KB to a client that reads nothing, \
             and no slow-client close was counted"
        );
        let batch = (0..10).map(|_| api.post_message(&alice.token, &channel, &content, None));
        futures_util::future::join_all(batch).await;
        posted += 10;
    }
    let (_, code, _) = stalled.drain(Duration::from_secs(20)).await;
    assert_eq!(code, Some(CloseCode::TooSlow.code()));
    let m5 = Metrics::until(gw, "the too-slow close", |m| {
        closed(m, CloseCode::TooSlow) == 1.0
    })
    .await;
    assert_eq!(m5.sum("otako_slow_client_closes_total", &[]), 1.0);
    assert_eq!(m5.sum("otako_sessions_open", &[]), 0.0);
    assert_eq!(
        m5.sum("otako_sessions_opened_total", &[]),
        base("otako_sessions_opened_total", &[]) + 3.0
    );
}

/// SIGTERM: not ready at once and for as long as the drain lasts, alive all
/// along; every session gets op 7 and 1012.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_draining_and_healthz_stays_200() {
    let mut stack = Stack::builder()
        .gateways(1)
        .backend(false)
        .drain_window_ms(6_000)
        .build()
        .await;
    let mut sessions = Vec::new();
    for i in 0..3 {
        let name = format!("user{i}");
        let id = stack.db.insert_user(&name).await;
        let token = stack.token_for(id, &name);
        sessions.push(stack.gateway(0).connect(&token, &name).await);
    }
    let gw = stack.gateway(0);
    let (readyz, healthz) = (gw.admin_url("/readyz"), gw.admin_url("/healthz"));
    assert_eq!(http_status(&readyz).await, Some(200));
    assert_eq!(http_status(&healthz).await, Some(200));

    stack.gateways[0].proc().sigterm();
    wait::until_true("/readyz to answer 503 after SIGTERM", ARRIVE, || async {
        http_status(&readyz).await == Some(503)
    })
    .await;
    // The three sessions are asked to reconnect spread over 6 s: the node
    // stays not-ready but alive at least until the last one is asked.
    let asked = Arc::new(AtomicUsize::new(0));
    let mut reconnects = futures_util::stream::FuturesUnordered::new();
    for mut s in sessions {
        let asked = asked.clone();
        reconnects.push(async move {
            let v = s.next_json(Duration::from_secs(15)).await;
            assert_eq!(v, json!({"op": 7}), "{}", s.label());
            asked.fetch_add(1, Ordering::SeqCst);
            s.expect_close(CloseCode::Restart, ARRIVE).await;
        });
    }
    let mut gone = 0;
    let mut checks = 0;
    while gone < 3 {
        tokio::select! {
            done = reconnects.next() => {
                done.expect("three sessions");
                gone += 1;
            }
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let (ready, alive) = (http_status(&readyz).await, http_status(&healthz).await);
        // Only meaningful if a session was still waiting for its op 7 after
        // both answers came: the node may exit once the last one is asked.
        let waiting = 3 - asked.load(Ordering::SeqCst);
        if waiting > 0 {
            checks += 1;
            assert_eq!(
                ready,
                Some(503),
                "not ready while draining ({waiting} sessions left)"
            );
            assert_eq!(
                alive,
                Some(200),
                "alive while draining ({waiting} sessions left)"
            );
        }
    }
    assert!(
        checks >= 8,
        "the drain lasted long enough to check it: {checks} checks"
    );
    let status = stack.gateways[0]
        .proc()
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the node exits after draining");
    assert!(status.success(), "exit status {status:?}");
}

/// NATS lost: not ready (alive); NATS back on the same port: ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_nats_connection() {
    let mut stack = Stack::builder().gateways(1).backend(false).build().await;
    let readyz = stack.gateway(0).admin_url("/readyz");
    let healthz = stack.gateway(0).admin_url("/healthz");
    assert_eq!(http_status(&readyz).await, Some(200));

    stack.nats.kill(0);
    wait::until_true("/readyz to answer 503 with NATS gone", ARRIVE, || async {
        http_status(&readyz).await == Some(503)
    })
    .await;
    assert_eq!(http_status(&healthz).await, Some(200), "alive without NATS");

    stack.nats.restart(0).await;
    wait::until_true(
        "/readyz to answer 200 with NATS back",
        Duration::from_secs(30),
        || async { http_status(&readyz).await == Some(200) },
    )
    .await;
    // And it works again: a dispatch request is answered.
    let dispatch = stack.dispatcher(0).await;
    let user = stack.db.insert_user("dora").await;
    let channel = stack.db.insert_channel(user, "back").await;
    let msg = stack.db.insert_message(channel, user, "hi").await;
    let mut session = stack
        .gateway(0)
        .connect(&stack.token_for(user, "dora"), "dora")
        .await;
    let reply = dispatch
        .send_event(
            CREATE,
            json!({"id": msg.to_string(), "channel_id": channel.to_string()}),
            json!("1"),
            json!(fresh_event_id()),
        )
        .await;
    assert!(reply.success(), "{}", reply.raw);
    let d = session.expect_dispatch(CREATE).await;
    assert_eq!(d["id"], json!(msg.to_string()));
}

/// `OTAKO_LOG_JSON=1`: every line both binaries write is a JSON object, and
/// the warning of a failed event carries the trace id of its traceparent
/// (here without any exporter: the id comes from the header).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_trace_id_inside_a_dispatch() {
    let stack = Stack::builder()
        .gateways(1)
        .gateway_env("OTAKO_LOG_JSON", "1")
        .backend_env("OTAKO_LOG_JSON", "1")
        .build()
        .await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let channel = api.create_channel(&alice.token, "logged").await;
    stack.db.wait_outbox_settled(ARRIVE).await;
    let mut session = stack.gateway(0).connect(&alice.token, "alice").await;
    api.post_message(&alice.token, &channel, "hello", None)
        .await;
    session.expect_dispatch(CREATE).await;
    session.close().await;

    let (tp, trace_id, _) = fresh_traceparent();
    let event_id = fresh_event_id();
    let client = stack.nats.client(0).await;
    let body = otako_e2e::event_body(
        CREATE,
        json!({"id": "424242", "channel_id": channel}),
        json!("9"),
        json!(event_id),
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(TRACEPARENT_HEADER, tp.as_str());
    let reply = client
        .request_with_headers(DISPATCH_SUBJECT, headers, body.into())
        .await
        .expect("a reply");
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["success"], false, "{reply}");

    let gw = stack.gateway(0);
    let line = wait::until("the gateway's warning of the failed event", ARRIVE, || {
        let text = gw.log_text();
        let event_id = event_id.clone();
        async move {
            let lines = json_lines(&text)?;
            Ok::<_, String>(lines.into_iter().find(|l| {
                l["level"] == "WARN"
                    && l["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("event failed"))
                    && l.to_string().contains(&event_id)
            }))
        }
    })
    .await;
    let carried: Vec<&Value> = std::iter::once(&line["span"])
        .chain(line["spans"].as_array().into_iter().flatten())
        .filter_map(|s| s.get("trace_id"))
        .collect();
    assert!(
        !carried.is_empty() && carried.iter().all(|t| **t == json!(trace_id)),
        "the line inside the dispatch carries the trace id {trace_id}: {line}"
    );
    assert!(
        line["timestamp"].is_string() && line["target"].is_string(),
        "{line}"
    );

    // Every line of both processes is JSON (the harness's own markers aside).
    for (name, text) in [
        ("gateway", gw.log_text()),
        ("backend", stack.backend.as_ref().unwrap().log_text()),
    ] {
        let lines = json_lines(&text)
            .unwrap_or_else(|bad| panic!("{name} wrote a line that is not a JSON object: {bad}"));
        assert!(!lines.is_empty(), "{name} logged nothing");
        for l in &lines {
            assert!(
                l["level"].is_string() && l["fields"].is_object(),
                "{name}: {l}"
            );
        }
    }
}
