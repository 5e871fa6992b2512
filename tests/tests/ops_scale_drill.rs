//! A local scale drill: two gateway nodes under a steady message load, two
//! more added (new clients connect to them), then the first two drained away
//! (SIGTERM: their clients get op 7 and 1012 and reconnect to the remaining
//! nodes). It reports, and asserts, that
//!
//! - no dispatch request failed: every outbox row of the drill was delivered
//!   at the first attempt;
//! - every member session received every message of its channels that was
//!   committed while it was open, once each and in commit order per channel.
//!
//! What "while open" means, with its fixed in-flight grace, and the other
//! rules are `otako_e2e::drill`'s verdict; this file sets the drill up and
//! runs its phases. Size from `OTAKO_DRILL_SCALE`: `small` (default, the
//! test suite, ~15 s), `medium` or `large`. Run by hand with
//! `deploy/scripts/drill.sh [scale]`.

use chrono::{DateTime, Utc};
use otako_e2e::drill::{
    self, ms, percentile, Evidence, Sent, SessionLog, Verdict, IN_FLIGHT_GRACE,
};
use otako_e2e::{Api, Auth, CloseCode, Incoming, Metrics, Stack, User, WsClient, ARRIVE};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How often clients heartbeat; the nodes' interval is twice that.
const HEARTBEAT: Duration = Duration::from_millis(2_500);

#[derive(Debug, Clone)]
struct Scale {
    name: String,
    /// Clients connected to each node when it joins.
    clients_per_node: usize,
    channels: usize,
    /// Messages per second, over all channels.
    rate: f64,
    /// How long each phase (2 nodes, 4 nodes, 2 nodes) runs under load.
    phase: Duration,
    drain_window_ms: u64,
}

impl Scale {
    fn from_env() -> Scale {
        let name = std::env::var("OTAKO_DRILL_SCALE").unwrap_or_else(|_| "small".into());
        let (clients_per_node, channels, rate, phase_s, drain_window_ms) = match name.as_str() {
            "small" => (3, 3, 30.0, 3, 1_000),
            "medium" => (10, 6, 60.0, 8, 3_000),
            "large" => (50, 10, 100.0, 15, 5_000),
            other => panic!("OTAKO_DRILL_SCALE must be small, medium or large, not {other:?}"),
        };
        Scale {
            name,
            clients_per_node,
            channels,
            rate,
            phase: Duration::from_secs(phase_s),
            drain_window_ms,
        }
    }
}

/// Where clients (re)connect: the nodes a load balancer would send them to.
struct Router {
    live: Mutex<Vec<(String, String)>>,
    next: AtomicUsize,
}

impl Router {
    fn set(&self, nodes: Vec<(String, String)>) {
        *self.live.lock().unwrap() = nodes;
    }

    fn pick(&self) -> (String, String) {
        let live = self.live.lock().unwrap();
        assert!(!live.is_empty(), "no node to connect to");
        live[self.next.fetch_add(1, Ordering::Relaxed) % live.len()].clone()
    }
}

/// What the clients and posters record while the drill runs.
struct Shared {
    router: Router,
    sessions: Mutex<Vec<SessionLog>>,
    anomalies: Mutex<Vec<String>>,
    stop_clients: AtomicBool,
    stop_load: AtomicBool,
    sent: Mutex<Vec<Sent>>,
    post_errors: Mutex<Vec<String>>,
}

impl Shared {
    fn anomaly(&self, text: String) {
        self.anomalies.lock().unwrap().push(text);
    }
}

/// One client: connects (to `first`, then wherever the router says), reads
/// every frame, heartbeats, and reconnects after op 7 + 1012 until stopped.
async fn client_task(
    client: usize,
    token: String,
    first: (String, String),
    shared: Arc<Shared>,
    ready: tokio::sync::mpsc::UnboundedSender<usize>,
) {
    let mut target = Some(first);
    let mut first_session = true;
    'sessions: loop {
        if shared.stop_clients.load(Ordering::Acquire) {
            return;
        }
        let (node, url) = target.take().unwrap_or_else(|| shared.router.pick());
        let label = format!("client {client}@{node}");
        let mut ws = match WsClient::try_connect(&url, Auth::Header(&token), &label).await {
            Ok(ws) => ws,
            Err(e) => {
                shared.anomaly(format!("{label}: could not connect: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // HELLO, then READY.
        let mut hello = false;
        let ready_d = loop {
            match ws.next_incoming(ARRIVE).await {
                Some(Incoming::Json(v)) if v["op"] == 10 && !hello => hello = true,
                Some(Incoming::Json(v)) if hello && v["t"] == "READY" => break v["d"].clone(),
                other => {
                    shared.anomaly(format!("{label}: expected HELLO and READY, got {other:?}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue 'sessions;
                }
            }
        };
        let channels: HashSet<i64> = ready_d["channels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str()?.parse().ok())
            .collect();
        let index = {
            let mut sessions = shared.sessions.lock().unwrap();
            sessions.push(SessionLog {
                client,
                node: node.clone(),
                ready_at: Utc::now(),
                channels,
                received: Vec::new(),
                op7_at: None,
                ended: None,
            });
            sessions.len() - 1
        };
        if first_session {
            first_session = false;
            let _ = ready.send(client);
        }
        let mut next_beat = Instant::now() + HEARTBEAT;
        loop {
            if shared.stop_clients.load(Ordering::Acquire) {
                ws.close().await;
                shared.sessions.lock().unwrap()[index].ended =
                    Some((Utc::now(), Some(CloseCode::Normal.code())));
                return;
            }
            let wait = next_beat
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            match ws.next_incoming(wait).await {
                None => {
                    if Instant::now() >= next_beat {
                        ws.heartbeat().await;
                        next_beat = Instant::now() + HEARTBEAT;
                    }
                }
                Some(Incoming::Json(v)) if v["op"] == 0 && v["t"] == "EVENT_MESSAGE_CREATE" => {
                    let id = v["d"]["id"].as_str().and_then(|s| s.parse().ok());
                    let ch = v["d"]["channel_id"].as_str().and_then(|s| s.parse().ok());
                    match (ch, id) {
                        (Some(ch), Some(id)) => shared.sessions.lock().unwrap()[index]
                            .received
                            .push((ch, id, Utc::now())),
                        _ => shared.anomaly(format!("{label}: a malformed message event: {v}")),
                    }
                }
                Some(Incoming::Json(v)) if v["op"] == 7 => {
                    shared.sessions.lock().unwrap()[index].op7_at = Some(Utc::now());
                }
                Some(Incoming::Json(v)) if v["op"] == 11 => {}
                Some(Incoming::Json(v)) => {
                    shared.anomaly(format!("{label}: an unexpected frame: {v}"));
                }
                Some(Incoming::Close(code, reason)) => {
                    let mut sessions = shared.sessions.lock().unwrap();
                    let s = &mut sessions[index];
                    s.ended = Some((Utc::now(), code));
                    if !(code == Some(CloseCode::Restart.code()) && s.op7_at.is_some()) {
                        drop(sessions);
                        shared.anomaly(format!(
                            "{label}: closed with {code:?} ({reason}) without op 7 + 1012"
                        ));
                    }
                    continue 'sessions;
                }
                Some(other) => {
                    shared.sessions.lock().unwrap()[index].ended = Some((Utc::now(), None));
                    shared.anomaly(format!("{label}: the connection ended: {other:?}"));
                    continue 'sessions;
                }
            }
        }
    }
}

/// Posts into one channel at a fixed pace, one request at a time (so the
/// channel's messages are committed in the order they are sent).
async fn poster(api: Api, token: String, channel: i64, every: Duration, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while !shared.stop_load.load(Ordering::Acquire) {
        tick.tick().await;
        n += 1;
        let sent_at = Utc::now();
        let r = api
            .try_post_message(
                &token,
                &channel.to_string(),
                &format!("drill {channel}/{n}"),
                None,
            )
            .await;
        let acked_at = Utc::now();
        match r.body["id"].as_str().and_then(|s| s.parse().ok()) {
            Some(id) if r.status == 200 => shared.sent.lock().unwrap().push(Sent {
                id,
                channel,
                sent_at,
                acked_at,
                dispatched_at: None,
            }),
            _ => shared
                .post_errors
                .lock()
                .unwrap()
                .push(format!("POST into {channel}: {} {}", r.status, r.body)),
        }
    }
}

/// `otako_sessions_open` of each node, for the timeline.
async fn session_counts(stack: &Stack, live: &[usize]) -> String {
    let mut out = Vec::new();
    for &i in live {
        let gw = stack.gateway(i);
        let m = Metrics::fetch(&gw.admin_url("/metrics")).await;
        out.push(format!(
            "{}: {} sessions",
            gw.node_id,
            m.sum("otako_sessions_open", &[])
        ));
    }
    out.join(", ")
}

/// A running drill: the stack, the clients and posters, and what happened
/// when, for the report.
struct Drill {
    scale: Scale,
    stack: Stack,
    api: Api,
    shared: Arc<Shared>,
    users: Vec<User>,
    channels: Vec<i64>,
    poster: User,
    /// The last outbox row written before the drill: its rows come after.
    first_outbox_id: i64,
    clients: Vec<JoinHandle<()>>,
    ready_tx: UnboundedSender<usize>,
    ready_rx: UnboundedReceiver<usize>,
    posters: Vec<JoinHandle<()>>,
    /// How the drained nodes exited.
    exits: Vec<Option<ExitStatus>>,
    started: Instant,
    timeline: Vec<String>,
}

/// A node as a client finds it: its id and WebSocket URL.
fn node(stack: &Stack, i: usize) -> (String, String) {
    (stack.gateway(i).node_id.clone(), stack.gateway(i).ws_url())
}

impl Drill {
    /// Clients in all waves: two nodes' worth at first, two more later.
    fn clients(&self) -> usize {
        4 * self.scale.clients_per_node
    }

    /// The channels client `i`'s user is a member of: two of them.
    fn expected_channels(&self, i: usize) -> HashSet<i64> {
        let n = self.channels.len();
        HashSet::from([self.channels[i % n], self.channels[(i + 1) % n]])
    }

    fn stamp(&mut self, what: String) {
        self.timeline.push(format!(
            "t={:>6.1}s  {what}",
            self.started.elapsed().as_secs_f64()
        ));
    }

    /// Two gateway nodes, a poster user with its channels, and a user per
    /// client in two channels each; nothing connected yet.
    async fn set_up(scale: Scale) -> Drill {
        let stack = Stack::builder()
            .gateways(2)
            .heartbeat_ms(HEARTBEAT.as_millis() as u64 * 2)
            .drain_window_ms(scale.drain_window_ms)
            .max_sessions_per_user(10)
            .build()
            .await;
        let api = stack.api().clone();
        let started = Instant::now();
        let poster = api.create_user("poster").await;
        let mut channels = Vec::new();
        for c in 0..scale.channels {
            let id = api
                .create_channel(&poster.token, &format!("drill-{c}"))
                .await;
            channels.push(id.parse::<i64>().unwrap());
        }
        let clients = 4 * scale.clients_per_node;
        let mut users = Vec::new();
        for chunk in (0..clients).collect::<Vec<_>>().chunks(20) {
            let made = futures_util::future::join_all(chunk.iter().map(|i| {
                let (api, name) = (api.clone(), format!("member{i}"));
                async move { api.create_user(&name).await }
            }))
            .await;
            users.extend(made);
        }
        let shared = Arc::new(Shared {
            router: Router {
                live: Mutex::new(vec![node(&stack, 0), node(&stack, 1)]),
                next: AtomicUsize::new(0),
            },
            sessions: Mutex::new(Vec::new()),
            anomalies: Mutex::new(Vec::new()),
            stop_clients: AtomicBool::new(false),
            stop_load: AtomicBool::new(false),
            sent: Mutex::new(Vec::new()),
            post_errors: Mutex::new(Vec::new()),
        });
        let (ready_tx, ready_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut drill = Drill {
            scale,
            stack,
            api,
            shared,
            users,
            channels,
            poster,
            first_outbox_id: 0,
            clients: Vec::new(),
            ready_tx,
            ready_rx,
            posters: Vec::new(),
            exits: Vec::new(),
            started,
            timeline: Vec::new(),
        };
        for chunk in (0..clients).collect::<Vec<_>>().chunks(20) {
            let adds = chunk.iter().flat_map(|&i| {
                let (api, token) = (&drill.api, &drill.poster.token);
                let user = drill.users[i].id.clone();
                drill.expected_channels(i).into_iter().map(move |c| {
                    let user = user.clone();
                    async move { api.add_member(token, &c.to_string(), &user).await }
                })
            });
            futures_util::future::join_all(adds.collect::<Vec<_>>()).await;
        }
        drill
            .stack
            .db
            .wait_outbox_settled(Duration::from_secs(60))
            .await;
        drill.first_outbox_id = sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM outbox")
            .fetch_one(drill.stack.db.pool())
            .await
            .unwrap();
        drill
    }

    /// Starts clients `range`, alternating between the two nodes `nodes`,
    /// and waits for each one's first READY.
    async fn connect_wave(&mut self, range: std::ops::Range<usize>, nodes: [usize; 2]) {
        let n = range.len();
        for i in range {
            self.clients.push(tokio::spawn(client_task(
                i,
                self.users[i].token.clone(),
                node(&self.stack, nodes[i % 2]),
                self.shared.clone(),
                self.ready_tx.clone(),
            )));
        }
        for _ in 0..n {
            tokio::time::timeout(Duration::from_secs(30), self.ready_rx.recv())
                .await
                .expect("clients get READY in time")
                .expect("a client task");
        }
    }

    /// Phase 1: two nodes, the first wave of clients, load on.
    async fn two_nodes_under_load(&mut self) {
        let per_node = self.scale.clients_per_node;
        self.connect_wave(0..2 * per_node, [0, 1]).await;
        let counts = session_counts(&self.stack, &[0, 1]).await;
        self.stamp(format!(
            "2 nodes [gw-1, gw-2], {} clients connected ({counts})",
            2 * per_node
        ));
        let every = Duration::from_secs_f64(self.scale.channels as f64 / self.scale.rate);
        for &c in &self.channels {
            self.posters.push(tokio::spawn(poster(
                self.api.clone(),
                self.poster.token.clone(),
                c,
                every,
                self.shared.clone(),
            )));
        }
        self.stamp(format!(
            "load on: {} msg/s into {} channels",
            self.scale.rate, self.scale.channels
        ));
        tokio::time::sleep(self.scale.phase).await;
    }

    /// Phase 2: two more nodes; new clients connect to them. Returns the
    /// new nodes' indices.
    async fn scale_out(&mut self) -> [usize; 2] {
        let a = self.stack.start_gateway().await;
        let b = self.stack.start_gateway().await;
        let live = [0, 1, a, b].map(|i| node(&self.stack, i)).to_vec();
        self.shared.router.set(live);
        let per_node = self.scale.clients_per_node;
        self.connect_wave(2 * per_node..4 * per_node, [a, b]).await;
        let counts = session_counts(&self.stack, &[0, 1, a, b]).await;
        self.stamp(format!(
            "4 nodes: added gw-3, gw-4; {} new clients on them ({counts})",
            2 * per_node
        ));
        tokio::time::sleep(self.scale.phase).await;
        [a, b]
    }

    /// Phase 3: drain gw-1 and gw-2 away; their clients reconnect to the
    /// nodes left.
    async fn drain_first_two(&mut self, left: [usize; 2]) {
        self.shared
            .router
            .set(left.map(|i| node(&self.stack, i)).to_vec());
        let sessions_before = self.shared.sessions.lock().unwrap().len();
        self.stack.gateways[0].proc().sigterm();
        self.stack.gateways[1].proc().sigterm();
        self.stamp(format!(
            "SIGTERM to gw-1 and gw-2 (drain window {} ms)",
            self.scale.drain_window_ms
        ));
        let exit_deadline =
            Duration::from_millis(self.scale.drain_window_ms) + Duration::from_secs(20);
        for i in 0..2 {
            let status = self.stack.gateways[i].proc().wait_exit(exit_deadline).await;
            self.stamp(format!("gw-{} exited: {status:?}", i + 1));
            self.exits.push(status);
        }
        // Every client of the drained nodes has a new session.
        let drained = 2 * self.scale.clients_per_node;
        let shared = self.shared.clone();
        otako_e2e::wait::until_true(
            &format!("the {drained} clients of the drained nodes to reconnect"),
            Duration::from_secs(30),
            || {
                let shared = shared.clone();
                async move { shared.sessions.lock().unwrap().len() - sessions_before >= drained }
            },
        )
        .await;
        let counts = session_counts(&self.stack, &left).await;
        self.stamp(format!(
            "2 nodes [gw-3, gw-4]: the drained nodes' clients reconnected ({counts})"
        ));
        tokio::time::sleep(self.scale.phase).await;
    }

    /// Load off; waits (bounded) until every session has what it must,
    /// closes the clients and gathers the evidence.
    async fn finish(&mut self) -> Evidence {
        self.shared.stop_load.store(true, Ordering::Release);
        for p in self.posters.drain(..) {
            p.await.expect("a poster task");
        }
        self.stamp("load off".into());
        self.stack
            .db
            .wait_outbox_settled(Duration::from_secs(60))
            .await;
        let dispatched: HashMap<i64, DateTime<Utc>> = sqlx::query_as::<_, (i64, DateTime<Utc>)>(
            "SELECT (data->>'id')::bigint, finished_at FROM outbox \
             WHERE id > $1 AND event_type = 'EVENT_MESSAGE_CREATE' AND finished_at IS NOT NULL",
        )
        .bind(self.first_outbox_id)
        .fetch_all(self.stack.db.pool())
        .await
        .unwrap()
        .into_iter()
        .collect();
        for m in self.shared.sent.lock().unwrap().iter_mut() {
            m.dispatched_at = dispatched.get(&m.id).copied();
        }
        let settle_deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < settle_deadline {
            let sent = self.shared.sent.lock().unwrap().clone();
            let sessions = self.shared.sessions.lock().unwrap().clone();
            if drill::missing_now(&sent, &sessions) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.shared.stop_clients.store(true, Ordering::Release);
        let mut incidents = Vec::new();
        for (i, t) in self.clients.drain(..).enumerate() {
            if let Err(e) = t.await {
                incidents.push(format!("client {i}: {e}"));
            }
        }
        self.stamp("clients closed".into());
        incidents.extend(self.shared.anomalies.lock().unwrap().iter().cloned());
        incidents.extend(self.shared.post_errors.lock().unwrap().iter().cloned());
        for (i, s) in self.exits.iter().enumerate() {
            if !s.is_some_and(|s| s.success()) {
                incidents.push(format!("gw-{} did not exit cleanly: {s:?}", i + 1));
            }
        }
        let outbox =
            sqlx::query_as("SELECT id, status, attempts FROM outbox WHERE id > $1 ORDER BY id")
                .bind(self.first_outbox_id)
                .fetch_all(self.stack.db.pool())
                .await
                .unwrap();
        Evidence {
            sent: self.shared.sent.lock().unwrap().clone(),
            sessions: self.shared.sessions.lock().unwrap().clone(),
            expected_channels: (0..self.clients())
                .map(|i| self.expected_channels(i))
                .collect(),
            outbox,
            incidents,
        }
    }

    /// The drill's report: size, timeline, counts, latencies and failures.
    fn report(&self, e: &Evidence, v: &Verdict) -> String {
        let scale = &self.scale;
        let clients = self.clients();
        let mut r = String::new();
        let _ = writeln!(r, "\n===== Otako scale drill: {} =====", scale.name);
        let _ = writeln!(
            r,
            "size: {} clients per node wave ({clients} clients), {} channels, {} msg/s, \
             phases of {:?}, drain window {} ms",
            scale.clients_per_node, scale.channels, scale.rate, scale.phase, scale.drain_window_ms
        );
        let _ = writeln!(r, "-- nodes over time --");
        for line in &self.timeline {
            let _ = writeln!(r, "  {line}");
        }
        let first = e.sent.iter().map(|m| m.sent_at).min();
        let last = e.sent.iter().map(|m| m.sent_at).max();
        let load_secs = match (first, last) {
            (Some(f), Some(l)) => (l - f).num_milliseconds().max(1) as f64 / 1000.0,
            _ => 0.0,
        };
        let post_errors = self.shared.post_errors.lock().unwrap().len();
        let _ = writeln!(r, "-- messages --");
        let _ = writeln!(
            r,
            "  posted: {} ({:.1}/s over {load_secs:.1} s), post errors: {post_errors}",
            e.sent.len(),
            e.sent.len() as f64 / load_secs.max(0.001),
        );
        let _ = writeln!(
            r,
            "  outbox: {} rows {:?}, not delivered at the first attempt: {}",
            e.outbox.len(),
            v.outbox_by_status,
            v.retried
        );
        let _ = writeln!(r, "-- sessions --");
        let _ = writeln!(
            r,
            "  {} sessions ({clients} clients, {} reconnects); ends by close code: {:?}",
            e.sessions.len(),
            e.sessions.len().saturating_sub(clients),
            v.closes
        );
        let _ = writeln!(r, "-- deliveries --");
        let _ = writeln!(
            r,
            "  required {}, received {} in all, missing {}, duplicates {}, out of order {}, \
             outside membership {}",
            v.required, v.received, v.missing, v.duplicates, v.out_of_order, v.foreign
        );
        let _ = writeln!(
            r,
            "  absent but allowed: published to the nodes less than {} ms (the stated \
             in-flight grace) before the session's op 7: {}",
            IN_FLIGHT_GRACE.num_milliseconds(),
            v.in_flight_missing
        );
        if let Some(max) = v.in_flight_margin_max_ms {
            let _ = writeln!(
                r,
                "    (published at most {max} ms before the session's op 7 or close)"
            );
        }
        let summary = |what: &str, sorted: &[f64]| {
            format!(
                "  {what}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                percentile(sorted, 0.5),
                percentile(sorted, 0.99),
                sorted.last().copied().unwrap_or(0.0)
            )
        };
        let _ = writeln!(r, "{}", summary("post-to-socket latency", &v.latencies_ms));
        let mut lags: Vec<f64> = e
            .sent
            .iter()
            .filter_map(|m| Some(ms(m.dispatched_at? - m.acked_at)))
            .collect();
        lags.sort_by(f64::total_cmp);
        let _ = writeln!(
            r,
            "{}",
            summary("HTTP answer to dispatch acknowledged", &lags)
        );
        let published: HashMap<i64, DateTime<Utc>> = e
            .sent
            .iter()
            .filter_map(|m| Some((m.id, m.dispatched_at?)))
            .collect();
        let mut hops: Vec<f64> = e
            .sessions
            .iter()
            .flat_map(|s| s.received.iter())
            .filter_map(|(_, id, at)| Some(ms(*at - *published.get(id)?)))
            .collect();
        hops.sort_by(f64::total_cmp);
        let _ = writeln!(
            r,
            "{}",
            summary("last hop, dispatch acknowledged to frame read", &hops)
        );
        let _ = writeln!(r, "-- failures: {} --", v.failures.len());
        for f in v.failures.iter().take(40) {
            let _ = writeln!(r, "  {f}");
        }
        let _ = writeln!(
            r,
            "result: {} ({:.1} s)",
            if v.passed() { "PASS" } else { "FAIL" },
            self.started.elapsed().as_secs_f64()
        );
        r
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_and_drain_under_load_loses_nothing() {
    let mut drill = Drill::set_up(Scale::from_env()).await;
    drill.two_nodes_under_load().await;
    let added = drill.scale_out().await;
    drill.drain_first_two(added).await;
    let evidence = drill.finish().await;
    let verdict = drill::verdict(&evidence);
    let report = drill.report(&evidence, &verdict);
    println!("{report}");
    assert!(
        !evidence.sent.is_empty() && verdict.required > 0,
        "the drill sent nothing:\n{report}"
    );
    assert!(verdict.passed(), "the drill failed:\n{report}");
}
