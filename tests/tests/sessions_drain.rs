//! Graceful drain: on SIGTERM a node reports not-ready (/readyz 503), stops
//! taking dispatch requests after finishing those in flight, tells its sessions
//! to reconnect (op 7) spread over OTAKO_DRAIN_WINDOW_MS, and closes them with
//! 1012. A rolling restart of three nodes while messages flow loses no dispatch
//! request, and clients that reconnect elsewhere keep receiving.

use otako_e2e::{Auth, CloseCode, Incoming, Stack, WsClient, ARRIVE};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const DRAIN_WINDOW: Duration = Duration::from_millis(2000);
const HEARTBEAT_MS: u64 = 5000;
/// The gap between two posts of the steady flow.
const POST_EVERY: Duration = Duration::from_millis(25);

/// One session of a roaming client.
#[derive(Debug, Default, Clone)]
struct Segment {
    node: String,
    /// Message ids of the EVENT_MESSAGE_CREATE frames, in arrival order.
    ids: Vec<i64>,
    op7_at: Option<Instant>,
    /// The close code, once the session ended with a close frame.
    closed_with: Option<Option<u16>>,
    /// Anything else that ended the session, or a frame that should not be.
    trouble: Option<String>,
}

/// Nodes a client may connect to (what a load balancer would offer).
type Live = Arc<Mutex<Vec<(String, String)>>>;

/// A client that, like a good one, reconnects at once after op 7 and 1012,
/// to another node. Sends heartbeats; records what each session saw.
async fn roam(
    label: String,
    token: String,
    pick: usize,
    live: Live,
    log: Arc<Mutex<Vec<Segment>>>,
    stop: Arc<AtomicBool>,
) {
    let mut avoid: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let (node, url) = {
            let live = live.lock().unwrap();
            let options: Vec<_> = live
                .iter()
                .filter(|(n, _)| Some(n) != avoid.as_ref())
                .cloned()
                .collect();
            assert!(!options.is_empty(), "{label}: no node to connect to");
            options[pick % options.len()].clone()
        };
        let seg_label = format!("{label}@{node}");
        let mut c = match WsClient::try_connect(&url, Auth::Header(&token), &seg_label).await {
            Ok(c) => c,
            Err(e) => {
                log.lock().unwrap().push(Segment {
                    node,
                    trouble: Some(format!("could not connect: {e}")),
                    ..Default::default()
                });
                return;
            }
        };
        c.handshake().await;
        let seg = {
            let mut log = log.lock().unwrap();
            log.push(Segment {
                node: node.clone(),
                ..Default::default()
            });
            log.len() - 1
        };
        let mut next_beat = Instant::now() + Duration::from_secs(2);
        let reconnect = loop {
            if stop.load(Ordering::Relaxed) {
                c.close().await;
                return;
            }
            let wait = next_beat
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            match c.next_incoming(wait).await {
                None => {
                    if Instant::now() >= next_beat {
                        c.heartbeat().await;
                        next_beat = Instant::now() + Duration::from_secs(2);
                    }
                }
                Some(Incoming::Json(v)) if v["op"] == 0 && v["t"] == "EVENT_MESSAGE_CREATE" => {
                    let id = v["d"]["id"].as_str().and_then(|s| s.parse().ok()).unwrap();
                    log.lock().unwrap()[seg].ids.push(id);
                }
                Some(Incoming::Json(v)) if v["op"] == 11 => {}
                Some(Incoming::Json(v)) if v["op"] == 7 => {
                    log.lock().unwrap()[seg].op7_at = Some(Instant::now());
                }
                Some(Incoming::Close(code, _)) => {
                    log.lock().unwrap()[seg].closed_with = Some(code);
                    break code == Some(CloseCode::Restart.code());
                }
                Some(other) => {
                    log.lock().unwrap()[seg].trouble = Some(format!("{other:?}"));
                    break false;
                }
            }
        };
        if !reconnect {
            return;
        }
        avoid = Some(node);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_no_dispatch_and_clients_keep_receiving() {
    let mut stack = Stack::builder()
        .gateways(3)
        .drain_window_ms(DRAIN_WINDOW.as_millis() as u64)
        .heartbeat_ms(HEARTBEAT_MS)
        .max_sessions_per_user(20)
        .build()
        .await;
    let api = stack.api().clone();
    let alice = api.create_user("alice").await;
    let bob = api.create_user("bob").await;
    let channel = api.create_channel(&alice.token, "rolling").await;
    api.add_member(&alice.token, &channel, &bob.id).await;
    // Three more channels with flows of their own (carol's, no sessions), so
    // several dispatch requests are in flight when a node is told to stop.
    let carol = api.create_user("carol").await;
    let mut side_channels = Vec::new();
    for i in 0..3 {
        side_channels.push(api.create_channel(&carol.token, &format!("side-{i}")).await);
    }
    stack.db.wait_outbox_settled(ARRIVE).await;

    let live: Live = Arc::new(Mutex::new(
        stack
            .gateways
            .iter()
            .map(|g| (g.node_id.clone(), g.ws_url()))
            .collect(),
    ));
    let stop = Arc::new(AtomicBool::new(false));

    // Twelve clients: alice and bob, two each on each node.
    let mut clients = Vec::new();
    for k in 0..12 {
        let user = if k % 2 == 0 { &alice } else { &bob };
        let label = format!("{}#{k}", user.username);
        let log = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(roam(
            label.clone(),
            user.token.clone(),
            k / 2 % 3,
            live.clone(),
            log.clone(),
            stop.clone(),
        ));
        clients.push((label, log, task));
    }
    // All twelve are in.
    otako_e2e::wait::until_true("every client to have a session", ARRIVE, || {
        let clients = &clients;
        async move {
            clients
                .iter()
                .all(|(_, log, _)| log.lock().unwrap().len() == 1)
        }
    })
    .await;

    // The steady flow: one message every 25 ms, each posted after the
    // previous one was answered, so message ids grow in posting order.
    let posted: Arc<Mutex<Vec<i64>>> = Arc::default();
    let stop_posting = Arc::new(AtomicBool::new(false));
    let poster = tokio::spawn({
        let (api, channel, token) = (api.clone(), channel.clone(), alice.token.clone());
        let (posted, stop_posting) = (posted.clone(), stop_posting.clone());
        async move {
            let mut k = 0;
            while !stop_posting.load(Ordering::Relaxed) {
                let m = api
                    .post_message(&token, &channel, &format!("tick {k}"), None)
                    .await;
                posted
                    .lock()
                    .unwrap()
                    .push(m["id"].as_str().unwrap().parse().unwrap());
                k += 1;
                tokio::time::sleep(POST_EVERY).await;
            }
        }
    });
    let side_posters: Vec<_> = side_channels
        .iter()
        .map(|ch| {
            let (api, channel, token) = (api.clone(), ch.clone(), carol.token.clone());
            let stop_posting = stop_posting.clone();
            tokio::spawn(async move {
                let mut k = 0;
                while !stop_posting.load(Ordering::Relaxed) {
                    api.post_message(&token, &channel, &format!("side {k}"), None)
                        .await;
                    k += 1;
                    tokio::time::sleep(POST_EVERY).await;
                }
                k
            })
        })
        .collect();
    let flow_started = Instant::now();
    otako_e2e::wait::until_true("the flow to start", ARRIVE, || {
        let posted = posted.clone();
        async move { posted.lock().unwrap().len() >= 10 }
    })
    .await;

    // The rolling restart: start a replacement, take the old node out of
    // the load balancer, SIGTERM it, watch it drain.
    let http = reqwest::Client::new();
    let mut drains = Vec::new();
    for old in 0..3 {
        let new = stack.start_gateway().await;
        let (new_id, new_url) = (
            stack.gateway(new).node_id.clone(),
            stack.gateway(new).ws_url(),
        );
        let old_id = stack.gateway(old).node_id.clone();
        {
            let mut live = live.lock().unwrap();
            live.retain(|(n, _)| n != &old_id);
            live.push((new_id, new_url));
        }
        // Every client is (re)connected before the count.
        otako_e2e::wait::until_true("every client to be connected", ARRIVE, || {
            let clients = &clients;
            async move {
                clients.iter().all(|(_, log, _)| {
                    log.lock()
                        .unwrap()
                        .last()
                        .is_some_and(|s| s.closed_with.is_none() && s.trouble.is_none())
                })
            }
        })
        .await;
        let on_old: usize = clients
            .iter()
            .map(|(_, log, _)| {
                let log = log.lock().unwrap();
                log.iter()
                    .filter(|s| s.node == old_id && s.closed_with.is_none())
                    .count()
            })
            .sum();
        let readyz = stack.gateway(old).admin_url("/readyz");
        assert_eq!(
            http.get(&readyz).send().await.unwrap().status(),
            200,
            "{old_id} is ready before the SIGTERM"
        );
        let signalled = Instant::now();
        stack.gateways[old].proc().sigterm();
        // Not ready while it drains, before it exits.
        let deadline = Instant::now() + Duration::from_secs(5);
        let not_ready_after = loop {
            match http
                .get(&readyz)
                .timeout(Duration::from_secs(1))
                .send()
                .await
            {
                Ok(r) if r.status() == 503 => break signalled.elapsed(),
                Ok(r) => assert_eq!(r.status(), 200, "{old_id} /readyz"),
                Err(e) => panic!("{old_id} stopped answering /readyz before reporting 503: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "{old_id} still ready 5 s after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let status = stack.gateways[old]
            .proc()
            .wait_exit(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("{old_id} did not exit within 30 s of SIGTERM"));
        assert!(
            status.success(),
            "{old_id} exits cleanly after draining: {status:?}"
        );
        drains.push((old_id, on_old, not_ready_after, signalled.elapsed()));
    }

    // Let the flow run on the new nodes for a moment, then stop it.
    let more = posted.lock().unwrap().len() + 20;
    otako_e2e::wait::until_true("more messages after the restart", ARRIVE, || {
        let posted = posted.clone();
        async move { posted.lock().unwrap().len() >= more }
    })
    .await;
    stop_posting.store(true, Ordering::Relaxed);
    poster.await.expect("every post was answered 200");
    let mut side_posts = 0;
    for p in side_posters {
        side_posts += p.await.expect("every side post was answered 200");
    }
    let flow_took = flow_started.elapsed();
    let posted = posted.lock().unwrap().clone();
    let last = *posted.last().unwrap();
    assert!(
        posted.windows(2).all(|w| w[0] < w[1]),
        "sequential posts have growing ids"
    );

    // Every client, reconnected, receives to the end.
    otako_e2e::wait::until_true("every client to receive the last message", ARRIVE, || {
        let clients = &clients;
        async move {
            clients.iter().all(|(_, log, _)| {
                log.lock()
                    .unwrap()
                    .last()
                    .is_some_and(|s| s.ids.contains(&last))
            })
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for (label, _, task) in clients.iter_mut() {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap_or_else(|_| panic!("{label}'s task did not stop"))
            .unwrap_or_else(|e| panic!("{label}'s task failed: {e}"));
    }

    // Every dispatch request got success:true on its first attempt.
    stack.db.wait_outbox_settled(ARRIVE).await;
    let outbox = stack.db.outbox().await;
    let bad: Vec<_> = outbox
        .iter()
        .filter(|r| r.status != "delivered" || r.attempts != 1)
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} outbox rows were not delivered on the first attempt: {bad:#?}",
        bad.len(),
        outbox.len()
    );

    let index: std::collections::HashMap<i64, usize> =
        posted.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let mut problems = Vec::new();
    let mut op7: std::collections::HashMap<String, Vec<Instant>> = Default::default();
    for (label, log, _) in &clients {
        let log = log.lock().unwrap().clone();
        if log.len() < 2 {
            problems.push(format!("{label}: never reconnected: {log:?}"));
        }
        for (i, seg) in log.iter().enumerate() {
            let last_seg = i == log.len() - 1;
            if let Some(t) = &seg.trouble {
                problems.push(format!("{label}@{}: {t}", seg.node));
            }
            if !last_seg {
                // Drained: op 7 first, then 1012.
                if seg.op7_at.is_none() || seg.closed_with != Some(Some(CloseCode::Restart.code()))
                {
                    problems.push(format!(
                        "{label}@{}: ended without op 7 then 1012 (op 7: {}, close {:?})",
                        seg.node,
                        seg.op7_at.is_some(),
                        seg.closed_with
                    ));
                }
                if let Some(t) = seg.op7_at {
                    op7.entry(seg.node.clone()).or_default().push(t);
                }
            }
            // Within one session: no message lost, none out of order.
            let positions: Vec<usize> = seg.ids.iter().map(|id| index[id]).collect();
            if let Some(w) = positions.windows(2).find(|w| w[1] != w[0] + 1) {
                problems.push(format!(
                    "{label}@{}: after message {} came {} (posted {} apart)",
                    seg.node,
                    posted[w[0]],
                    posted[w[1]],
                    w[1] as i64 - w[0] as i64
                ));
            }
            if seg.ids.is_empty() {
                problems.push(format!("{label}@{}: received nothing", seg.node));
            }
        }
    }
    // op 7 went out spread over the drain window.
    let mut spreads = Vec::new();
    for (node, on_old, not_ready, drained) in &drains {
        let times = op7.get(node).cloned().unwrap_or_default();
        if times.len() != *on_old {
            problems.push(format!(
                "{node}: {} of its {on_old} sessions got op 7",
                times.len()
            ));
        }
        if times.len() >= 2 {
            let spread = *times.iter().max().unwrap() - *times.iter().min().unwrap();
            let n = times.len() as u32;
            let least = DRAIN_WINDOW * (n - 1) / n - Duration::from_millis(300);
            if spread < least || spread > DRAIN_WINDOW + Duration::from_secs(1) {
                problems.push(format!(
                    "{node}: op 7 to {n} sessions spread over {spread:?}, expected about {:?}",
                    DRAIN_WINDOW * (n - 1) / n
                ));
            }
            spreads.push(format!(
                "{node}: {n} sessions, op 7 spread {:.0} ms, /readyz 503 after {:.0} ms, exited after {:.0} ms",
                spread.as_secs_f64() * 1e3,
                not_ready.as_secs_f64() * 1e3,
                drained.as_secs_f64() * 1e3
            ));
        }
    }
    println!(
        "rolling restart: {} + {side_posts} messages posted over {:.1} s, {} outbox rows all \
         delivered on the first attempt; {}",
        posted.len(),
        flow_took.as_secs_f64(),
        outbox.len(),
        spreads.join("; ")
    );
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
