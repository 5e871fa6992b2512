//! The fault schedule: six faults per cycle, spaced evenly over the run and
//! never overlapping, each logged with when it began and when what it broke
//! was back (the node ready again, the link restored, the server up).

use super::{Clock, LiveNodes};
use crate::env::{start_postgres, stop_postgres};
use crate::proxy::Proxy;
use crate::stack::Stack;
use otako_common::history::HISTORY_STREAM;
use serde::Serialize;
use std::time::Duration;
use tokio::sync::watch;

/// How long a SIGKILLed gateway stays down before it starts again.
const GATEWAY_DOWN: Duration = Duration::from_secs(1);
/// How long the cut node's NATS link stays cut.
const CUT_FOR: Duration = Duration::from_secs(4);
/// How long the killed NATS server stays down.
const NATS_DOWN: Duration = Duration::from_secs(3);
/// How long PostgreSQL stays stopped.
const POSTGRES_DOWN: Duration = Duration::from_secs(2);
/// How long the slow clients stop reading.
const STALL_FOR: Duration = Duration::from_secs(12);
/// How long a draining node may take to exit.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGKILL a gateway node, then start it again as the same node.
    GatewayKill,
    /// SIGTERM a gateway node (op 7, 1012, exit) and start a replacement.
    GatewayDrain,
    /// Cut one node's only NATS link for a few seconds.
    NatsLinkCut,
    /// SIGKILL one server of the 3-server NATS cluster and restart it.
    NatsServerKill,
    /// Stop PostgreSQL (fast shutdown) and start it again.
    PostgresRestart,
    /// Some clients stop reading for a while (their sessions' queues
    /// overflow: 4011).
    SlowClients,
}

impl FaultKind {
    /// The order of a cycle: the slow clients early, as their stall is the
    /// longest fault and needs traffic to overflow the queues.
    pub const CYCLE: [FaultKind; 6] = [
        FaultKind::GatewayKill,
        FaultKind::GatewayDrain,
        FaultKind::SlowClients,
        FaultKind::NatsLinkCut,
        FaultKind::NatsServerKill,
        FaultKind::PostgresRestart,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FaultKind::GatewayKill => "gateway SIGKILL",
            FaultKind::GatewayDrain => "gateway drain",
            FaultKind::NatsLinkCut => "NATS link cut",
            FaultKind::NatsServerKill => "NATS server kill",
            FaultKind::PostgresRestart => "PostgreSQL restart",
            FaultKind::SlowClients => "slow clients",
        }
    }

    /// A short name for charts.
    pub fn short(self) -> &'static str {
        match self {
            FaultKind::GatewayKill => "kill",
            FaultKind::GatewayDrain => "drain",
            FaultKind::NatsLinkCut => "cut",
            FaultKind::NatsServerKill => "nats",
            FaultKind::PostgresRestart => "pg",
            FaultKind::SlowClients => "slow",
        }
    }
}

/// When each fault starts (run seconds).
#[derive(Debug, Clone)]
pub struct FaultPlan {
    pub faults: Vec<(f64, FaultKind, usize)>,
}

impl FaultPlan {
    /// `cycles` times the six faults, evenly spaced over the `duration_s`
    /// seconds that begin at `started`: half a gap before the first, a
    /// whole one after the last, so the clients' recovery from the last
    /// fault happens while the writers still write.
    pub fn new(cycles: usize, duration_s: f64, started: f64) -> FaultPlan {
        let n = cycles * FaultKind::CYCLE.len();
        let spacing = duration_s / (n as f64 + 0.5);
        let faults = (0..n)
            .map(|k| {
                let kind = FaultKind::CYCLE[k % FaultKind::CYCLE.len()];
                (
                    started + spacing * (k as f64 + 0.5),
                    kind,
                    k / FaultKind::CYCLE.len(),
                )
            })
            .collect();
        FaultPlan { faults }
    }
}

/// One fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub label: String,
    /// The node or server it hit.
    pub target: String,
    pub start: f64,
    /// When what it broke was back.
    pub end: f64,
    pub detail: String,
}

/// Which gateway (index into the stack's) each kind of fault hits.
#[derive(Debug, Clone, Copy)]
pub struct Slots {
    /// The node behind the NATS proxy.
    pub cut: usize,
    /// The node SIGKILLed and started again.
    pub kill: usize,
    /// The node drained; its replacement takes the slot.
    pub drain: usize,
}

/// Plays `plan`; returns the stack and the proxy (still needed by the run)
/// and what happened. `stall` stops the slow clients' reading while true;
/// `slow_clients` says how many there are.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    plan: FaultPlan,
    mut stack: Stack,
    link: Proxy,
    nodes: LiveNodes,
    clock: Clock,
    mut slots: Slots,
    stall: watch::Sender<bool>,
    slow_clients: usize,
) -> (Stack, Proxy, Vec<FaultRecord>) {
    let mut records = Vec::new();
    for (at, kind, cycle) in plan.faults {
        let wait = at - clock.now();
        if wait > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
        let start = clock.now();
        let (target, detail) = match kind {
            FaultKind::GatewayKill => {
                let i = slots.kill;
                let id = stack.gateways[i].node_id.clone();
                nodes.remove(&id);
                stack.gateways[i].proc().kill();
                tokio::time::sleep(GATEWAY_DOWN).await;
                stack.restart_gateway(i).await;
                nodes.add(&id, &stack.gateways[i].ws_url());
                (id, "started again as the same node".to_owned())
            }
            FaultKind::GatewayDrain => {
                let old = slots.drain;
                let id = stack.gateways[old].node_id.clone();
                nodes.remove(&id);
                stack.gateways[old].proc().sigterm();
                let new = stack.start_gateway().await;
                let new_id = stack.gateways[new].node_id.clone();
                nodes.add(&new_id, &stack.gateways[new].ws_url());
                let exit = stack.gateways[old].proc().wait_exit(DRAIN_TIMEOUT).await;
                slots.drain = new;
                let exit = match exit {
                    Some(s) => format!("exited {s}"),
                    None => {
                        stack.gateways[old].proc().kill();
                        format!("still running after {DRAIN_TIMEOUT:?}: killed")
                    }
                };
                (id, format!("replaced by {new_id}; {exit}"))
            }
            FaultKind::NatsLinkCut => {
                let id = stack.gateways[slots.cut].node_id.clone();
                link.cut().await;
                tokio::time::sleep(CUT_FOR).await;
                link.restore();
                (id, format!("cut for {CUT_FOR:?}"))
            }
            FaultKind::NatsServerKill => {
                // Every other cycle the leader of the history stream, the
                // worst server to lose; else a different one each time.
                let leader = history_leader(&stack).await;
                let i = match leader {
                    Some(l) if cycle % 2 == 0 => l,
                    _ => [1, 2, 0][cycle % 3],
                };
                let role = if leader == Some(i) {
                    "the history stream's leader"
                } else {
                    "not the history stream's leader"
                };
                stack.nats.kill(i);
                tokio::time::sleep(NATS_DOWN).await;
                stack.nats.restart(i).await;
                (
                    format!("nats-{}", i + 1),
                    format!("{role}; down for {NATS_DOWN:?}, then restarted with its store"),
                )
            }
            FaultKind::SlowClients => {
                stall.send_replace(true);
                tokio::time::sleep(STALL_FOR).await;
                stall.send_replace(false);
                (
                    format!("{slow_clients} clients"),
                    format!("stopped reading for {STALL_FOR:?}"),
                )
            }
            FaultKind::PostgresRestart => {
                stop_postgres().await;
                tokio::time::sleep(POSTGRES_DOWN).await;
                start_postgres().await;
                (
                    "postgresql".to_owned(),
                    format!("fast shutdown, down for {POSTGRES_DOWN:?}"),
                )
            }
        };
        let end = clock.now();
        eprintln!(
            "[chaos] {} {target}: {start:.1} s to {end:.1} s ({detail})",
            kind.label()
        );
        records.push(FaultRecord {
            kind,
            label: kind.label().to_owned(),
            target,
            start,
            end,
            detail,
        });
    }
    (stack, link, records)
}

/// The index of the NATS server leading the history stream, if it can be
/// told.
async fn history_leader(stack: &Stack) -> Option<usize> {
    let js = async_nats::jetstream::new(stack.nats.client(0).await);
    let mut stream = js.get_stream(HISTORY_STREAM).await.ok()?;
    let info = stream.info().await.ok()?;
    let leader = info.cluster.as_ref()?.leader.as_deref()?;
    let n: usize = leader.strip_prefix("nats-")?.parse().ok()?;
    n.checked_sub(1).filter(|i| *i < stack.nats.len())
}
