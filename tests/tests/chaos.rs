//! The chaos run as a test: a 60 s `otako-chaos` run (one cycle of the six
//! faults: a gateway SIGKILLed and started again, one drained and
//! replaced, clients that stop reading, a node's NATS link cut, the NATS
//! server leading the history killed and restarted, PostgreSQL restarted)
//! must count every accepted message received by
//! every member's client exactly once and in per-channel order.

use otako_e2e::env::state_dir;
use otako_e2e::process::{fresh_dir, Proc};
use otako_e2e::{Auth, Incoming, Stack, WsClient, ARRIVE, QUIET};
use serde_json::Value;
use std::time::Duration;

/// The run's own bound: setup, 60 s of writing, the settle period.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chaos_run_loses_duplicates_and_reorders_nothing() {
    let out = fresh_dir(&state_dir().join("chaos-e2e"));
    let log = state_dir().join("logs").join("chaos").join("e2e-run.log");
    let _ = std::fs::remove_file(&log);
    let out_arg = out.to_str().expect("utf-8 path").to_owned();
    let mut run = Proc::spawn(
        "otako-chaos",
        env!("CARGO_BIN_EXE_otako-chaos"),
        &[
            "--duration",
            "60",
            "--out",
            &out_arg,
            "--name",
            "chaos/e2e",
            "--settle",
            "60",
        ],
        &[],
        &log,
    );
    let status = run.wait_exit(RUN_TIMEOUT).await;
    let output = run.log_text();
    assert!(
        status.is_some_and(|s| s.success()),
        "otako-chaos ended with {status:?}:\n{output}"
    );
    let report: Value = serde_json::from_slice(
        &std::fs::read(out.join("report.json")).expect("the run wrote report.json"),
    )
    .expect("report.json is JSON");
    assert!(out.join("chaos.png").is_file(), "the run drew its chart");
    let t = &report["totals"];
    for key in [
        "lost",
        "duplicated",
        "out_of_order",
        "foreign",
        "protocol_errors",
    ] {
        assert_eq!(t[key], 0, "{key}:\n{output}");
    }
    assert_eq!(t["received"], t["expected"], "{output}");
    // About 50 messages a second for 60 s, fewer while PostgreSQL is down.
    let accepted = t["accepted"].as_u64().unwrap();
    assert!(
        accepted > 1_500,
        "only {accepted} messages accepted:\n{output}"
    );
    let faults = report["faults"].as_array().expect("faults");
    let kinds: Vec<&str> = faults.iter().filter_map(|f| f["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "gateway_kill",
            "gateway_drain",
            "slow_clients",
            "nats_link_cut",
            "nats_server_kill",
            "postgres_restart"
        ],
        "{output}"
    );
    // The gateway faults really closed sessions, which resumed. (Whether a
    // slow client's session is closed depends on socket buffers: not checked.)
    for f in &faults[..2] {
        assert!(
            f["sessions_closed"].as_u64().unwrap() > 0,
            "{} closed no session:\n{output}",
            f["kind"]
        );
    }
    assert!(t["resumes"].as_u64().unwrap() > 0, "{output}");
}

/// What the chaos run found, pinned down (RELIABILITY.md, finding 1): a
/// member add and remove that are both committed before the add is
/// dispatched (the gateways were down, or dispatch was held up by a NATS
/// server's death) must still let the user resume with the add, the
/// channel's messages written between them and the remove, and nothing
/// written before the add: the user was a member then and only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_and_remove_dispatched_late_still_deliver_the_messages_between_them() {
    let mut stack = Stack::builder().build().await;
    let api = stack.api().clone();
    let alice = api.create_user("alice").await;
    let bob = api.create_user("bob").await;
    let general = api.create_channel(&alice.token, "general").await;
    let other = api.create_channel(&alice.token, "other").await;
    api.add_member(&alice.token, &other, &bob.id).await;
    stack.db.wait_outbox_settled(ARRIVE).await;

    let mut first = stack.gateway(0).connect(&bob.token, "bob").await;
    api.post_message(&alice.token, &other, "before", None).await;
    assert_eq!(
        first.expect_dispatch("EVENT_MESSAGE_CREATE").await["content"],
        "before"
    );
    let cursor = first.last_cursor.clone().expect("a cursor");
    // The node answers after it has fanned out: killed before its answer,
    // it would leave "before" to the dispatch timeout (10 s) and a retry.
    stack.db.wait_outbox_settled(ARRIVE).await;
    // No gateway answers: the events wait in the outbox, in commit order.
    stack.gateways[0].proc().kill();
    api.post_message(&alice.token, &general, "before-the-add", None)
        .await;
    api.add_member(&alice.token, &general, &bob.id).await;
    api.post_message(&alice.token, &general, "while-a-member", None)
        .await;
    api.remove_member(&alice.token, &general, &bob.id).await;
    api.post_message(&alice.token, &general, "after-the-removal", None)
        .await;
    stack.start_gateway().await;
    stack.db.wait_outbox_settled(ARRIVE).await;

    let url = format!("{}?resume={cursor}", stack.gateway(1).ws_url());
    let mut bob2 = WsClient::connect(&url, Auth::Header(&bob.token), "bob resumed").await;
    let ready = bob2.handshake().await;
    assert_eq!(ready["resumed"], true, "{ready}");
    let mut got = Vec::new();
    while let Some(Incoming::Json(v)) = bob2.next_incoming(QUIET * 3).await {
        let d = &v["d"];
        got.push(match v["t"].as_str().unwrap_or_default() {
            "EVENT_MESSAGE_CREATE" => d["content"].as_str().unwrap_or_default().to_owned(),
            t => format!("{t}:{}", d["channel_id"].as_str().unwrap_or_default()),
        });
    }
    assert_eq!(
        got,
        [
            format!("EVENT_CHANNEL_MEMBER_ADD:{general}"),
            "while-a-member".to_owned(),
            format!("EVENT_CHANNEL_MEMBER_REMOVE:{general}"),
        ],
        "bob was a member of general when while-a-member was written, and only then"
    );
}

/// The chaos run's second finding, pinned down (RELIABILITY.md, finding 2):
/// a session that starts while the history lags behind the database must
/// still get a channel's events committed before the user's removal from
/// it, though the database no longer lists the user in the channel. The
/// backend is stopped so the message and the removal wait in the outbox,
/// as they do behind any dispatch backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_started_before_a_removal_reaches_the_history_gets_what_came_before_it() {
    let mut stack = Stack::builder().build().await;
    let api = stack.api().clone();
    let alice = api.create_user("alice").await;
    let bob = api.create_user("bob").await;
    let general = api.create_channel(&alice.token, "general").await;
    api.add_member(&alice.token, &general, &bob.id).await;
    stack.db.wait_outbox_settled(ARRIVE).await;
    let mut first = stack.gateway(0).connect(&bob.token, "bob").await;
    api.post_message(&alice.token, &general, "seen", None).await;
    assert_eq!(
        first.expect_dispatch("EVENT_MESSAGE_CREATE").await["content"],
        "seen"
    );
    let cursor = first.last_cursor.clone().expect("a cursor");
    first.close().await;

    // What the backend commits for a message and then for bob's removal,
    // while no dispatcher runs.
    stack.kill_backend();
    let (channel, bob_id, alice_id): (i64, i64, i64) = (
        general.parse().unwrap(),
        bob.id.parse().unwrap(),
        alice.id.parse().unwrap(),
    );
    let pool = stack.db.pool();
    let message = stack
        .db
        .insert_message(channel, alice_id, "before-the-removal")
        .await;
    sqlx::query(
        "INSERT INTO outbox (event_type, channel_id, data) VALUES ('EVENT_MESSAGE_CREATE', $1, \
         jsonb_build_object('id', $2::text, 'channel_id', $1::text))",
    )
    .bind(channel)
    .bind(message)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM channel_members WHERE channel_id = $1 AND user_id = $2")
        .bind(channel)
        .bind(bob_id)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO outbox (event_type, channel_id, data) VALUES ('EVENT_CHANNEL_MEMBER_REMOVE', $1, \
         jsonb_build_object('channel_id', $1::text, 'user_id', $2::text))",
    )
    .bind(channel)
    .bind(bob_id)
    .execute(pool)
    .await
    .unwrap();

    // Bob comes back now; the events reach the history after his READY.
    let url = format!("{}?resume={cursor}", stack.gateway(0).ws_url());
    let mut bob2 = WsClient::connect(&url, Auth::Header(&bob.token), "bob resumed").await;
    let ready = bob2.handshake().await;
    assert_eq!(ready["resumed"], true, "{ready}");
    stack.start_backend().await;
    stack.db.wait_outbox_settled(ARRIVE).await;
    let mut got = Vec::new();
    while let Some(Incoming::Json(v)) = bob2.next_incoming(QUIET * 3).await {
        let d = &v["d"];
        got.push(match v["t"].as_str().unwrap_or_default() {
            "EVENT_MESSAGE_CREATE" => d["content"].as_str().unwrap_or_default().to_owned(),
            t => format!("{t}:{}", d["channel_id"].as_str().unwrap_or_default()),
        });
    }
    assert_eq!(
        got,
        [
            "before-the-removal".to_owned(),
            format!("EVENT_CHANNEL_MEMBER_REMOVE:{general}"),
        ],
        "bob was a member of general when before-the-removal was written"
    );
}
