//! The chaos run: clients that follow the protocol (heartbeats, resume with
//! the last cursor on every close, backoff with full jitter) and HTTP
//! writers, on a whole deployment of real processes (a 3-server NATS
//! cluster, 3 gateway nodes, the backend, a PostgreSQL server of the run's
//! own), while a fault schedule kills, drains, cuts and restarts its parts.
//! At the end every accepted message is counted per client: received, lost,
//! duplicated, out of order.
//!
//! `otako-chaos` (`src/bin/chaos.rs`, `deploy/scripts/chaos.sh`) runs it;
//! RELIABILITY.md reports a long run.

pub mod churn;
pub mod client;
pub mod count;
pub mod faults;
pub mod plot;
pub mod writer;

use crate::api::{Api, User};
use crate::proxy::Proxy;
use crate::stack::Stack;
use client::{ClientLog, ClientSpec};
use count::Report;
use faults::{FaultPlan, FaultRecord};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use writer::WriterLog;

/// The gateways' `OTAKO_SESSION_QUEUE`: frames a session may have queued.
const SESSION_QUEUE: usize = 64;
/// Every this many clients, one is a slow one (see [`ClientSpec::slow`]).
const SLOW_EVERY: usize = 10;

/// What a run does; see `otako-chaos --help`.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// How long the writers write (the faults happen within it).
    pub duration_s: f64,
    pub users: usize,
    pub channels: usize,
    pub channels_per_user: usize,
    /// Messages per second over all channels.
    pub rate: f64,
    /// Membership changes (an add or a remove) per second; 0 for none.
    pub churn_per_s: f64,
    /// How many times the six faults are played.
    pub cycles: usize,
    /// The bound on the settle period after the writers stop.
    pub settle_s: f64,
    pub heartbeat_ms: u64,
    /// Seeds memberships, authors and jitter.
    pub seed: u64,
    /// The backend's dispatch attempts per event (`OTAKO_DISPATCH_MAX_ATTEMPTS`).
    pub dispatch_attempts: u32,
    /// Names the logs' folder under `target/otako-e2e/logs/`.
    pub name: String,
    /// Where to write every delivery and session, one JSON object a line,
    /// for a post-mortem.
    pub dump: Option<std::path::PathBuf>,
}

/// Why a run could not be made; a run that was made but counted a loss is
/// a [`Report`] with violations, not an error.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("bad configuration: {0}")]
    Config(String),
    #[error("setting up the run: {0}")]
    Setup(String),
}

/// Seconds since the run started, on the wall clock, which the backend's
/// message timestamps share (every process runs on this machine).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start_us: i64,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            start_us: chrono::Utc::now().timestamp_micros(),
        }
    }

    pub fn now(&self) -> f64 {
        self.at(chrono::Utc::now())
    }

    pub fn at(&self, t: chrono::DateTime<chrono::Utc>) -> f64 {
        (t.timestamp_micros() - self.start_us) as f64 / 1e6
    }

    /// The run's start in RFC 3339.
    pub fn start_rfc3339(&self) -> String {
        chrono::DateTime::from_timestamp_micros(self.start_us)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default()
    }
}

/// The gateway nodes a load balancer would send a new connection to: a node
/// leaves the list when it is killed or starts draining, and joins it once
/// it is ready.
#[derive(Debug, Clone, Default)]
pub struct LiveNodes(Arc<RwLock<Vec<(String, String)>>>);

impl LiveNodes {
    pub fn add(&self, node_id: &str, ws_url: &str) {
        let mut nodes = self.0.write().unwrap_or_else(|e| e.into_inner());
        nodes.retain(|(id, _)| id != node_id);
        nodes.push((node_id.to_owned(), ws_url.to_owned()));
    }

    pub fn remove(&self, node_id: &str) {
        let mut nodes = self.0.write().unwrap_or_else(|e| e.into_inner());
        nodes.retain(|(id, _)| id != node_id);
    }

    /// A live node at random: `(node id, ws url)`.
    pub fn pick(&self) -> Option<(String, String)> {
        let nodes = self.0.read().unwrap_or_else(|e| e.into_inner());
        nodes.choose(&mut rand::rng()).cloned()
    }
}

/// Runs the whole thing and counts.
pub async fn run(config: Config) -> Result<Report, ChaosError> {
    validate(&config)?;
    let clock = Clock::start();
    let mut rng = StdRng::seed_from_u64(config.seed);
    eprintln!("[chaos] starting the stack ({})", config.name);
    let mut stack = Stack::builder()
        .name(&config.name)
        .nats_cluster(3)
        .nats_no_advertise()
        .gateways(0)
        .heartbeat_ms(config.heartbeat_ms)
        .drain_window_ms(2_000)
        // The contract's per-attempt timeout and the backend's default
        // backoff; the attempts are the run's to choose.
        .dispatch(config.dispatch_attempts, 2_000, 250)
        .build()
        .await;
    // The node whose NATS link is cut reaches one server through a proxy and
    // nothing else, so the cut is a real outage for it.
    let link = Proxy::start(stack.nats.addr(0)).await;
    let nodes = LiveNodes::default();
    // A short session queue, so a client that stops reading for seconds
    // overflows it (at about 15 frames a second per client).
    let queue = ("OTAKO_SESSION_QUEUE".to_owned(), SESSION_QUEUE.to_string());
    stack.gateway_config.extra_env = vec![
        (
            "OTAKO_NATS_URL".to_owned(),
            format!("nats://{}", link.addr()),
        ),
        queue.clone(),
    ];
    let cut_node = stack.start_gateway().await;
    stack.gateway_config.extra_env = vec![("OTAKO_NATS_URL".to_owned(), stack.nats.urls()), queue];
    let kill_node = stack.start_gateway().await;
    let drain_node = stack.start_gateway().await;
    for gw in &stack.gateways {
        nodes.add(&gw.node_id, &gw.ws_url());
    }

    eprintln!(
        "[chaos] {} users, {} channels",
        config.users, config.channels
    );
    let api = stack.api().clone();
    let (owner, specs, members) = populate(&api, &config, &mut rng).await;
    wait_outbox_settled(&stack, Duration::from_secs(60))
        .await
        .map_err(ChaosError::Setup)?;

    // Clients first: every message counted is sent after each client's
    // first session is ready.
    let (stop_clients, stop_rx) = watch::channel(false);
    let (stall, stall_rx) = watch::channel(false);
    let mut clients = Vec::new();
    for spec in &specs {
        let log = Arc::new(Mutex::new(ClientLog::default()));
        let task = tokio::spawn(client::run(
            spec.clone(),
            client::Shared {
                nodes: nodes.clone(),
                clock,
                stop: stop_rx.clone(),
                stall: stall_rx.clone(),
                api_base: api.base().to_owned(),
            },
            log.clone(),
            rng.random(),
        ));
        clients.push((spec.clone(), log, task));
    }
    let logs: Vec<_> = clients.iter().map(|(_, l, _)| l.clone()).collect();
    wait_until(Duration::from_secs(60), || {
        logs.iter()
            .all(|l| l.lock().unwrap_or_else(|e| e.into_inner()).ready_once)
    })
    .await
    .map_err(|_| ChaosError::Setup("not every client got READY within 60 s".into()))?;
    eprintln!(
        "[chaos] every client is ready; writing for {} s",
        config.duration_s
    );

    let started = clock.now();
    let writers = Arc::new(Mutex::new(WriterLog::default()));
    let (stop_writers, stop_w_rx) = watch::channel(false);
    let mut writer_tasks = Vec::new();
    for (channel, authors) in &members {
        writer_tasks.push(tokio::spawn(writer::run(
            *channel,
            authors.clone(),
            config.channels as f64 / config.rate,
            api.base().to_owned(),
            clock,
            writers.clone(),
            stop_w_rx.clone(),
            rng.random(),
        )));
    }
    let churn = Arc::new(Mutex::new(churn::ChurnLog::default()));
    if config.churn_per_s > 0.0 {
        writer_tasks.push(tokio::spawn(churn::run(
            owner.token.clone(),
            specs
                .iter()
                .map(|s| churn::Churned {
                    user_id: s.user_id,
                    fixed: s.channels.iter().copied().collect(),
                })
                .collect(),
            members.iter().map(|(c, _)| *c).collect(),
            1.0 / config.churn_per_s,
            api.base().to_owned(),
            churn.clone(),
            stop_w_rx.clone(),
            rng.random(),
            clock,
        )));
    }
    let plan = FaultPlan::new(config.cycles, config.duration_s, started);
    let faults_task = tokio::spawn(faults::run(
        plan,
        stack,
        link,
        nodes.clone(),
        clock,
        faults::Slots {
            cut: cut_node,
            kill: kill_node,
            drain: drain_node,
        },
        stall,
        specs.iter().filter(|s| s.slow).count(),
    ));
    tokio::time::sleep(Duration::from_secs_f64(config.duration_s)).await;
    let _ = stop_writers.send(true);
    for t in writer_tasks {
        let _ = t.await;
    }
    let stopped = clock.now();
    eprintln!("[chaos] writers stopped; waiting for the last fault to end");
    let (stack, _link, fault_records): (Stack, Proxy, Vec<FaultRecord>) = faults_task
        .await
        .map_err(|e| ChaosError::Setup(format!("the fault schedule failed: {e}")))?;

    // Settle: the outbox drains, then every client catches up, both bounded.
    let settle = Duration::from_secs_f64(config.settle_s);
    let settle_start = clock.now();
    let outbox_settled = wait_outbox_settled(&stack, settle).await.is_ok();
    let accepted = writers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .accepted
        .clone();
    // Who must get what follows from the committed order of messages and
    // member events; read it once the outbox has drained.
    let timeline = count::read_timeline(stack.db.pool())
        .await
        .unwrap_or_default();
    let visible = count::visible(&timeline);
    let nothing = Default::default();
    let expected: Vec<BTreeSet<i64>> = specs
        .iter()
        .map(|s| {
            let mine = visible.get(&s.user_id).unwrap_or(&nothing);
            accepted
                .iter()
                .filter(|m| mine.contains(&m.id))
                .map(|m| m.id)
                .collect()
        })
        .collect();
    let remaining = settle.saturating_sub(Duration::from_secs_f64(clock.now() - settle_start));
    let caught_up = wait_until(remaining, || {
        logs.iter().zip(&expected).all(|(l, want)| {
            let l = l.lock().unwrap_or_else(|e| e.into_inner());
            want.iter().all(|id| l.received.contains(id))
        })
    })
    .await
    .is_ok();
    let settled_after = clock.now() - settle_start;
    eprintln!(
        "[chaos] settled in {settled_after:.1} s (outbox drained: {outbox_settled}, clients caught up: {caught_up})"
    );
    let _ = stop_clients.send(true);
    let mut client_logs = Vec::new();
    for (spec, log, task) in clients {
        let _ = task.await;
        let log = std::mem::take(&mut *log.lock().unwrap_or_else(|e| e.into_inner()));
        client_logs.push((spec, log));
    }
    if let Some(path) = &config.dump {
        if let Err(e) = dump(path, &client_logs) {
            eprintln!("[chaos] could not write {}: {e}", path.display());
        }
    }
    let outbox = count::OutboxCounts::read(stack.db.pool()).await;
    let timeline = count::read_timeline(stack.db.pool())
        .await
        .map_err(|e| ChaosError::Setup(format!("reading the outbox: {e}")))?;
    let memberships = count::read_memberships(stack.db.pool())
        .await
        .map_err(|e| ChaosError::Setup(format!("reading the memberships: {e}")))?;
    let writer_log = std::mem::take(&mut *writers.lock().unwrap_or_else(|e| e.into_inner()));
    let churn_log = std::mem::take(&mut *churn.lock().unwrap_or_else(|e| e.into_inner()));
    let report = count::count(count::Inputs {
        config: config.clone(),
        clock,
        logs_dir: stack.logs.display().to_string(),
        writing: (started, stopped),
        settle_s: settled_after,
        outbox_settled,
        caught_up,
        outbox,
        writers: writer_log,
        churn: churn_log,
        clients: client_logs,
        faults: fault_records,
        timeline,
        memberships,
    });
    drop(stack);
    Ok(report)
}

/// Writes every session and delivery of every client, one JSON object a
/// line.
fn dump(path: &std::path::Path, clients: &[(ClientSpec, ClientLog)]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (spec, log) in clients {
        for (i, s) in log.sessions.iter().enumerate() {
            let line = serde_json::json!({"client": spec.username, "session": i, "record": s});
            writeln!(out, "{line}")?;
        }
        for d in &log.deliveries {
            let node = log.sessions.get(d.session).map(|s| s.node.as_str());
            let line = serde_json::json!({"client": spec.username, "node": node, "delivery": d});
            writeln!(out, "{line}")?;
        }
    }
    out.flush()
}

fn validate(c: &Config) -> Result<(), ChaosError> {
    if c.users == 0 || c.channels == 0 {
        return Err(ChaosError::Config(
            "at least one user and one channel".into(),
        ));
    }
    if c.dispatch_attempts == 0 {
        return Err(ChaosError::Config("at least one dispatch attempt".into()));
    }
    if c.channels_per_user == 0 || c.channels_per_user > c.channels {
        return Err(ChaosError::Config(
            "channels per user must be between 1 and the number of channels".into(),
        ));
    }
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(c.rate) || !positive(c.duration_s) {
        return Err(ChaosError::Config(
            "rate and duration must be positive".into(),
        ));
    }
    Ok(())
}

/// Creates an owner, the channels and the users, and puts each user in
/// `channels_per_user` channels at random (every channel gets at least one
/// user). Returns the owner, the clients and, per channel, the users who
/// may post in it.
async fn populate(
    api: &Api,
    config: &Config,
    rng: &mut StdRng,
) -> (User, Vec<ClientSpec>, Vec<(i64, Vec<User>)>) {
    let owner = api.create_user("chaos_owner").await;
    let mut channels = Vec::new();
    for c in 0..config.channels {
        let id = api.create_channel(&owner.token, &format!("c{c}")).await;
        channels.push(id);
    }
    let mut members: Vec<Vec<User>> = vec![Vec::new(); config.channels];
    let mut specs = Vec::new();
    for u in 0..config.users {
        let user = api.create_user(&format!("chaos_u{u}")).await;
        let mut picks: Vec<usize> = (0..config.channels).collect();
        picks.shuffle(rng);
        picks.truncate(config.channels_per_user);
        // Round-robin first, so no channel is left without a reader.
        let first = u % config.channels;
        if !picks.contains(&first) {
            picks[0] = first;
        }
        picks.sort_unstable();
        for &c in &picks {
            api.add_member(&owner.token, &channels[c], &user.id).await;
            members[c].push(user.clone());
        }
        specs.push(ClientSpec {
            index: u,
            user_id: user.id.parse().expect("ids are decimal"),
            username: user.username.clone(),
            token: user.token.clone(),
            channels: picks
                .iter()
                .map(|&c| channels[c].parse().expect("ids are decimal"))
                .collect(),
            slow: u % SLOW_EVERY == SLOW_EVERY / 2,
        });
    }
    let members = channels
        .iter()
        .zip(members)
        .map(|(id, mut users)| {
            if users.is_empty() {
                users.push(owner.clone());
            }
            (id.parse().expect("ids are decimal"), users)
        })
        .collect();
    (owner, specs, members)
}

/// Waits until no outbox row is pending, at most `timeout`.
async fn wait_outbox_settled(stack: &Stack, timeout: Duration) -> Result<(), String> {
    let pool = stack.db.pool().clone();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM outbox WHERE status = 'pending'",
        )
        .fetch_one(&pool)
        .await
        {
            Ok(0) => return Ok(()),
            Ok(n) => format!("{n} rows pending"),
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the outbox did not drain within {timeout:?}: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `done` until it holds; `Err(())` if `timeout` passes first.
async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> Result<(), ()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if done() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
