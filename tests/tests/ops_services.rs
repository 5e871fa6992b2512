//! Both binaries as NATS micro-services: discovery and live figures over
//! `$SRV.PING/INFO/STATS`, events held in the outbox while no gateway answers,
//! an event a live gateway keeps failing dropped after X attempts and logged
//! once, and each side watching the other come and go.

use otako_e2e::http::http_json;
use otako_e2e::services::{collect_answers, srv_answers, srv_stats, stats_data};
use otako_e2e::Metrics;
use otako_e2e::{fresh_event_id, wait, Stack, ARRIVE};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

const GATEWAY: &str = "otako-gateway";
const BACKEND: &str = "otako-backend-shim";
const VERSION: &str = env!("CARGO_PKG_VERSION");
const CREATE: &str = "EVENT_MESSAGE_CREATE";

/// The backend's node id as its `$SRV.PING` answer gives it.
async fn backend_node(client: &async_nats::Client) -> String {
    let answers = collect_answers(client, &format!("$SRV.PING.{BACKEND}"), ARRIVE, |got| {
        !got.is_empty()
    })
    .await;
    assert_eq!(answers.len(), 1, "one backend answers: {answers:?}");
    answers[0]["metadata"]["node_id"]
        .as_str()
        .unwrap_or_else(|| panic!("the backend's ping answer has no node_id: {}", answers[0]))
        .to_owned()
}

fn figure(data: &Value, key: &str) -> u64 {
    data[key]
        .as_u64()
        .unwrap_or_else(|| panic!("stats data without a numeric {key}: {data}"))
}

/// `$SRV.STATS` data of every node of `service`.
async fn stats(
    client: &async_nats::Client,
    service: &str,
    nodes: &[&str],
) -> BTreeMap<String, Value> {
    srv_stats(client, service, nodes, ARRIVE)
        .await
        .into_iter()
        .map(|(node, answer)| {
            assert_eq!(
                answer["type"], "io.nats.micro.v1.stats_response",
                "{answer}"
            );
            assert_eq!(answer["name"], service, "{answer}");
            (node, stats_data(&answer))
        })
        .collect()
}

/// `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` of both services, with live
/// figures that follow real traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_binaries_answer_as_nats_services_with_live_figures() {
    let stack = Stack::builder().gateways(2).build().await;
    let api = stack.api();
    let alice = api.create_user("alice").await;
    let channel = api.create_channel(&alice.token, "served").await;
    stack.db.wait_outbox_settled(ARRIVE).await;
    let client = stack.nats.client(0).await;
    let nodes = ["gw-1", "gw-2"];

    // PING: every node answers, named, versioned, with its node id.
    let pings = srv_answers(&client, "PING", GATEWAY, &nodes, ARRIVE).await;
    for (node, p) in &pings {
        assert_eq!(p["type"], "io.nats.micro.v1.ping_response", "{p}");
        assert_eq!(p["name"], GATEWAY, "{p}");
        assert_eq!(p["version"], VERSION, "{node}: {p}");
        assert!(p["id"].as_str().is_some_and(|s| !s.is_empty()), "{p}");
    }
    assert_ne!(
        pings["gw-1"]["id"], pings["gw-2"]["id"],
        "distinct instances"
    );
    let backend = backend_node(&client).await;
    assert!(backend.starts_with("backend-"), "{backend}");

    // INFO: version, metadata.node_id, a description, the status endpoint.
    let infos = srv_answers(&client, "INFO", GATEWAY, &nodes, ARRIVE).await;
    for (node, info) in &infos {
        assert_eq!(info["type"], "io.nats.micro.v1.info_response", "{info}");
        assert_eq!(info["version"], VERSION, "{info}");
        assert_eq!(info["metadata"]["node_id"], json!(node), "{info}");
        assert!(
            info["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{info}"
        );
        let subjects: Vec<&str> = info["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["subject"].as_str())
            .collect();
        assert!(
            subjects.contains(&format!("otako.status.{node}").as_str()),
            "{node}: {info}"
        );
    }
    let binfo = srv_answers(&client, "INFO", BACKEND, &[&backend], ARRIVE).await;
    assert_eq!(binfo[&backend]["version"], VERSION, "{:?}", binfo);
    assert_eq!(binfo[&backend]["name"], BACKEND, "{:?}", binfo);

    // STATS before and after traffic.
    let before = stats(&client, GATEWAY, &nodes).await;
    let bbefore = stats(&client, BACKEND, &[&backend]).await[&backend].clone();
    for (node, d) in &before {
        assert_eq!(figure(d, "sessions"), 0, "{node}: {d}");
    }
    let sum = |m: &BTreeMap<String, Value>, key: &str| -> u64 {
        m.values().map(|d| figure(d, key)).sum()
    };

    let _s1 = stack.gateway(0).connect(&alice.token, "alice@gw-1").await;
    let _s2 = stack.gateway(0).connect(&alice.token, "alice#2@gw-1").await;
    let mut s3 = stack.gateway(1).connect(&alice.token, "alice@gw-2").await;
    for i in 0..4 {
        api.post_message(&alice.token, &channel, &format!("m{i}"), None)
            .await;
        s3.expect_dispatch(CREATE).await;
    }
    let dispatch = stack.dispatcher(0).await;
    for _ in 0..2 {
        let r = dispatch
            .send_event(
                CREATE,
                json!({"id": "999999", "channel_id": channel}),
                json!("1"),
                json!(fresh_event_id()),
            )
            .await;
        assert!(!r.success());
    }
    stack.db.wait_outbox_settled(ARRIVE).await;

    let after = stats(&client, GATEWAY, &nodes).await;
    assert_eq!(figure(&after["gw-1"], "sessions"), 2, "{after:?}");
    assert_eq!(figure(&after["gw-2"], "sessions"), 1, "{after:?}");
    assert_eq!(
        sum(&after, "events_handled"),
        sum(&before, "events_handled") + 6,
        "4 messages and 2 failed events were handled: {before:?} → {after:?}"
    );
    assert_eq!(
        sum(&after, "events_failed"),
        sum(&before, "events_failed") + 2,
        "{before:?} → {after:?}"
    );
    let bafter = stats(&client, BACKEND, &[&backend]).await[&backend].clone();
    assert_eq!(
        figure(&bafter, "delivered"),
        figure(&bbefore, "delivered") + 4,
        "{bbefore} → {bafter}"
    );
    assert_eq!(figure(&bafter, "dropped"), 0, "{bafter}");
    assert_eq!(figure(&bafter, "failed_attempts"), 0, "{bafter}");

    // The per-node endpoint gives the same figures.
    let direct = client
        .request("otako.status.gw-1", "".into())
        .await
        .expect("otako.status.gw-1 answers");
    let direct: Value = serde_json::from_slice(&direct.payload).unwrap();
    assert_eq!(figure(&direct, "sessions"), 2, "{direct}");
}

/// Every gateway stopped: 100 messages wait in the outbox without spending
/// attempts (however long X attempts would take); one node back, and a member
/// connected to it before dispatch resumes receives all 100 in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_while_no_gateway_answers_and_all_arrive_in_order() {
    let mut stack = Stack::builder()
        .gateways(1)
        .dispatch(3, 300, 100)
        .backend_env("OTAKO_PING_INTERVAL_MS", "300")
        .build()
        .await;
    let api = stack.api().clone();
    let alice = api.create_user("alice").await;
    let channel = api.create_channel(&alice.token, "patient").await;
    stack.db.wait_outbox_settled(ARRIVE).await;
    let backend_url = |path: &str| format!("{}{path}", api.base());

    // The backend must have seen the node before it is stopped: until its
    // first ping round ends, `/healthz` reports no node either, and a wait for
    // "no gateway" would pass before the node was ever counted.
    wait::until_true("the backend to see the gateway", ARRIVE, || async {
        http_json(&backend_url("/healthz")).await.1["gateways"]["nodes"] == 1
    })
    .await;

    // Stop every gateway node.
    stack.gateways[0].proc().sigterm();
    let exit = stack.gateways[0]
        .proc()
        .wait_exit(Duration::from_secs(15))
        .await;
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
    stack.gateways.clear();
    wait::until_true("the backend to see no gateway", ARRIVE, || async {
        http_json(&backend_url("/healthz")).await.1["gateways"]["nodes"] == 0
    })
    .await;

    let first_id: i64 = sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM outbox")
        .fetch_one(stack.db.pool())
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..100 {
        let m = api
            .post_message(&alice.token, &channel, &format!("held {i}"), None)
            .await;
        ids.push(m["id"].as_str().unwrap().to_owned());
    }

    // 3 attempts of 300 ms with 100 ms, 200 ms backoff take about 1.5 s:
    // watch for 3 s that nothing is spent, dropped or delivered.
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        let (pending, spent): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'pending'), \
                    count(*) FILTER (WHERE attempts > 0 OR status <> 'pending') \
             FROM outbox WHERE id > $1",
        )
        .bind(first_id)
        .fetch_one(stack.db.pool())
        .await
        .unwrap();
        assert_eq!((pending, spent), (100, 0), "held, untouched");
        let (status, health) = http_json(&backend_url("/healthz")).await;
        assert_eq!(status, 200, "{health}");
        assert_eq!(health["gateways"]["nodes"], 0, "{health}");
        assert_eq!(health["outbox"]["pending"], 100, "{health}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = Metrics::fetch(&backend_url("/metrics")).await;
    assert_eq!(
        m.get("otako_outbox_pending", &[]),
        Some(100.0),
        "{}",
        m.text
    );
    assert!(
        m.get("otako_outbox_oldest_pending_seconds", &[])
            .is_some_and(|s| s >= 3.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.get("otako_peer_nodes", &[("service", GATEWAY)]),
        Some(0.0),
        "{}",
        m.text
    );

    // Freeze the backend while one node starts and the member connects, so
    // the member is there before the first event goes out.
    let backend_proc = stack.backend.as_mut().unwrap().proc();
    backend_proc.send_signal(libc::SIGSTOP);
    let started = async {
        let i = stack.start_gateway().await;
        let session = stack.gateway(i).connect(&alice.token, "alice").await;
        (i, session)
    };
    let (node, mut session) = started.await;
    stack
        .backend
        .as_mut()
        .unwrap()
        .proc()
        .send_signal(libc::SIGCONT);
    assert_eq!(session.ready_channels(), vec![channel.clone()]);

    for (n, want) in ids.iter().enumerate() {
        let d = session.expect_dispatch(CREATE).await;
        assert_eq!(
            d["id"],
            json!(want),
            "message {n} of 100 arrives in order: {d}"
        );
    }
    session.expect_no_dispatch(Duration::from_millis(300)).await;

    stack.db.wait_outbox_settled(ARRIVE).await;
    let rows: Vec<(String, i32)> =
        sqlx::query_as("SELECT status, attempts FROM outbox WHERE id > $1 ORDER BY id")
            .bind(first_id)
            .fetch_all(stack.db.pool())
            .await
            .unwrap();
    assert_eq!(rows.len(), 100);
    assert!(
        rows.iter().all(|(s, a)| s == "delivered" && *a == 1),
        "every one delivered at the first attempt: {rows:?}"
    );
    let health = http_json(&backend_url("/healthz")).await.1;
    assert!(
        health["gateways"]["nodes"].as_u64().is_some_and(|n| n >= 1),
        "{health}"
    );
    assert_eq!(health["outbox"]["pending"], 0, "{health}");
    let _ = node;
}

/// An event a live gateway keeps failing (its message row is gone) is
/// dropped after X attempts, logged once by the backend, and recorded once
/// in OTAKO_ERRORS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_keeps_failing_is_dropped_after_x_attempts_and_logged_once() {
    // No gateway yet: the event waits in the outbox while its row is deleted.
    let mut stack = Stack::builder()
        .gateways(0)
        .dispatch(3, 300, 100)
        .backend_env("OTAKO_PING_INTERVAL_MS", "300")
        .build()
        .await;
    let api = stack.api().clone();
    let alice = api.create_user("alice").await;
    let channel = api.create_channel(&alice.token, "doomed").await;
    let message = api
        .post_message(&alice.token, &channel, "about to vanish", None)
        .await;
    let message_id: i64 = message["id"].as_str().unwrap().parse().unwrap();
    let event_id: i64 =
        sqlx::query_scalar("SELECT id FROM outbox WHERE event_type = $1 AND data->>'id' = $2")
            .bind(CREATE)
            .bind(message_id.to_string())
            .fetch_one(stack.db.pool())
            .await
            .unwrap();
    let deleted = sqlx::query("DELETE FROM messages WHERE id = $1")
        .bind(message_id)
        .execute(stack.db.pool())
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(deleted, 1);
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM outbox WHERE id = $1")
            .bind(event_id)
            .fetch_one(stack.db.pool())
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), attempts),
        ("pending", 0),
        "held while no gateway answers"
    );

    stack.start_gateway().await;
    stack.start_gateway().await;
    let row: (String, i32, Option<String>) = wait::until(
        "the event to be dropped",
        Duration::from_secs(20),
        || async {
            let row: (String, i32, Option<String>) =
                sqlx::query_as("SELECT status, attempts, last_error FROM outbox WHERE id = $1")
                    .bind(event_id)
                    .fetch_one(stack.db.pool())
                    .await?;
            Ok::<_, sqlx::Error>((row.0 != "pending").then_some(row))
        },
    )
    .await;
    assert_eq!(row.0, "dropped", "{row:?}");
    assert_eq!(row.1, 3, "dropped after exactly X = 3 attempts: {row:?}");
    assert!(
        row.2
            .as_deref()
            .is_some_and(|e| e.contains("does not exist")),
        "{row:?}"
    );
    // The channel's other event (the creator's member-add) went through.
    stack.db.wait_outbox_settled(ARRIVE).await;

    // Logged once by the backend…
    let backend_log = stack.backend.as_ref().unwrap().log_text();
    let drops: Vec<&str> = backend_log
        .lines()
        .filter(|l| l.contains("dropping event"))
        .collect();
    assert_eq!(drops.len(), 1, "one drop line: {drops:#?}");
    assert!(
        drops[0].contains(&format!("event_id={event_id} ")),
        "{}",
        drops[0]
    );
    // …and recorded once in the sink, by the gateway that failed it first.
    let dispatch = stack.dispatcher(0).await;
    let records = dispatch
        .error_records_for(&json!(event_id.to_string()))
        .await;
    assert_eq!(records.len(), 1, "{records:#?}");
    assert!(
        records[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not exist")),
        "{}",
        records[0]
    );
    assert!(
        ["gw-1", "gw-2"].contains(&records[0]["node"].as_str().unwrap_or("")),
        "{}",
        records[0]
    );
    let all = dispatch.error_records().await;
    assert_eq!(all.len(), 1, "nothing else failed: {all:#?}");

    // The figures agree.
    let client = stack.nats.client(0).await;
    let backend = backend_node(&client).await;
    let b = stats(&client, BACKEND, &[&backend]).await[&backend].clone();
    assert_eq!(figure(&b, "dropped"), 1, "{b}");
    assert_eq!(figure(&b, "failed_attempts"), 3, "{b}");
    let g = stats(&client, GATEWAY, &["gw-1", "gw-2"]).await;
    let failed: u64 = g.values().map(|d| figure(d, "events_failed")).sum();
    assert_eq!(failed, 3, "{g:?}");
}

/// Each side watches the other: the gateway logs when the backend goes away
/// and comes back, and both export what they see as metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_side_sees_the_other_go_and_come_back() {
    let mut stack = Stack::builder()
        .gateways(2)
        .gateway_env("OTAKO_PING_INTERVAL_MS", "300")
        .backend_env("OTAKO_PING_INTERVAL_MS", "300")
        .build()
        .await;
    let api = stack.api().clone();
    let peer = |m: &Metrics, service: &str| m.get("otako_peer_nodes", &[("service", service)]);
    let gw_metrics = stack.gateway(0).admin_url("/metrics");
    let backend_metrics = format!("{}/metrics", api.base());

    wait::until_true("the gateway to see the backend", ARRIVE, || async {
        peer(&Metrics::fetch(&gw_metrics).await, BACKEND) == Some(1.0)
    })
    .await;
    let m = wait::until("the backend to see both gateways", ARRIVE, || async {
        let m = Metrics::fetch(&backend_metrics).await;
        Ok::<_, String>((peer(&m, GATEWAY) == Some(2.0)).then_some(m))
    })
    .await;
    assert!(
        m.get("otako_peer_ping_seconds", &[("service", GATEWAY)])
            .is_some_and(|s| s > 0.0 && s < 1.0),
        "{}",
        m.text
    );
    assert_eq!(m.get("otako_outbox_pending", &[]), Some(0.0), "{}", m.text);
    assert!(
        m.get("otako_outbox_oldest_pending_seconds", &[]).is_some(),
        "{}",
        m.text
    );
    let gm = Metrics::fetch(&gw_metrics).await;
    assert!(
        gm.get("otako_peer_ping_seconds", &[("service", BACKEND)])
            .is_some_and(|s| s > 0.0),
        "{}",
        gm.text
    );

    // The backend goes away.
    let log_len = stack.gateway(0).log_text().len();
    stack.kill_backend();
    let gone = wait::until(
        "the gateway to log that the backend is gone",
        ARRIVE,
        || {
            let text = stack.gateway(0).log_text();
            async move {
                Ok::<_, String>(
                    text[log_len..]
                        .lines()
                        .find(|l| l.contains("no instance answers pings") && l.contains(BACKEND))
                        .map(str::to_owned),
                )
            }
        },
    )
    .await;
    assert!(gone.contains("WARN"), "{gone}");
    assert_eq!(peer(&Metrics::fetch(&gw_metrics).await, BACKEND), Some(0.0));

    // And comes back.
    let log_len = stack.gateway(0).log_text().len();
    stack.start_backend().await;
    wait::until_true(
        "the gateway to log that the backend is back",
        ARRIVE,
        || {
            let text = stack.gateway(0).log_text();
            async move {
                text[log_len..]
                    .lines()
                    .any(|l| l.contains("instances answer pings") && l.contains(BACKEND))
            }
        },
    )
    .await;
    wait::until_true(
        "the gateway's metric to show the backend",
        ARRIVE,
        || async { peer(&Metrics::fetch(&gw_metrics).await, BACKEND) == Some(1.0) },
    )
    .await;
    // Said once each way, not on every ping.
    let text = stack.gateway(0).log_text();
    let gone_lines = text
        .lines()
        .filter(|l| l.contains("no instance answers pings any more"))
        .count();
    assert_eq!(gone_lines, 1, "{text}");
}
