//! One run from start to end: the servers (started here or already
//! running), the population, the client processes, then for Otako and for
//! the peer in turn: open the sessions (reading memory at each step), send
//! messages and measure, close; then the report, its targets and its chart.

use crate::callgrind::{self, CallgrindError, InstructionsResult, Wrapper};
use crate::config::{Drive, RunArgs, Scenario};
use crate::control::{Command, SessionSpec, System};
use crate::driver::{ChannelTarget, Sender};
use crate::fleet::{Fleet, FleetError, Opened};
use crate::latency::{self, Merged};
use crate::measure::{self, per_count, per_delivery, CpuSnapshot};
use crate::plan::{Plan, PlanError};
use crate::procfs;
use crate::report::{self, Comparison, DriveResult, Report, RssPoint, SystemResult};
use crate::seed::{self, Population};
use crate::stack::{self, Endpoints, OwnStack, Paths, Peer, StackError};
use crate::storm::{self, StormError, StormResult, StormSetup};
use crate::workload::{self, Workload};
use otako_common::token::{Claims, TokenKey, DEV_SECRET};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long one session may take to reach READY (or the peer's PONG).
const READY_TIMEOUT_MS: u64 = 30_000;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Seed(#[from] seed::SeedError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Nats(#[from] otako_common::nats::NatsError),
    #[error(transparent)]
    Histogram(#[from] latency::HistogramError),
    #[error(transparent)]
    Report(#[from] report::ReportError),
    #[error(transparent)]
    Storm(#[from] StormError),
    #[error(transparent)]
    Callgrind(#[from] CallgrindError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

pub(crate) fn default_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs the benchmark `args` describe; returns its report (already written).
pub async fn run(args: &RunArgs) -> Result<Report, RunError> {
    let plan = Plan::resolve(args)?;
    let machine = procfs::machine();
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let run_id = format!("{:08x}", rand::random::<u32>());
    let root = args.root.clone().unwrap_or_else(default_root);
    let exe = std::env::current_exe().map_err(io("finding this executable"))?;
    let bin_dir = args
        .bin_dir
        .clone()
        .or_else(|| exe.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| root.join("target/release"));
    let bench_dir = root.join("target/otako-bench");
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| bench_dir.join(plan.scenario.name()));
    let run_dir = bench_dir
        .join("runs")
        .join(format!("{}-{run_id}", plan.scenario.name()));
    let logs = run_dir.join("logs");
    for d in [&out_dir, &logs] {
        std::fs::create_dir_all(d).map_err(io(d.display().to_string()))?;
    }
    let paths = Paths {
        pg_dir: args
            .pg_dir
            .clone()
            .unwrap_or_else(|| root.join("target/otako-e2e/postgres")),
        pg_port: args.pg_port,
        root,
        bin_dir,
        run_dir,
    };
    warn_if_busy(&plan);
    crate::process::raise_nofile_limit();

    let external = !args.gateways.is_empty();
    if !external && !args.no_install {
        stack::install_deps(&paths.root).await?;
    }
    let wrapper = if plan.scenario == Scenario::Instructions {
        if external {
            return Err(RunError::Usage(
                "the instructions scenario starts its own node under callgrind".into(),
            ));
        }
        let out_dir = paths.run_dir.join("callgrind");
        std::fs::create_dir_all(&out_dir).map_err(io(out_dir.display().to_string()))?;
        Some(Wrapper { out_dir })
    } else {
        None
    };
    let (mut own, endpoints) = if external {
        (None, external_endpoints(args, &plan)?)
    } else {
        let secret = format!("bench-{:032x}", rand::random::<u128>());
        let (s, e) = OwnStack::start(
            &paths,
            (plan.nodes, plan.gateway_threads),
            plan.drive == Drive::Http,
            plan.nats,
            wrapper.as_ref(),
            &secret,
            &run_id,
        )
        .await?;
        (Some(s), e)
    };
    let peer = if plan.peer {
        Some(Peer::start(&paths, plan.nats).await?)
    } else {
        None
    };
    eprintln!(
        "[otako-bench] {} run {run_id}: {} sessions on {} node(s); logs in {}",
        plan.scenario.name(),
        plan.sessions,
        endpoints.gateways.len(),
        logs.display()
    );

    let result = phases(
        &plan,
        &endpoints,
        &mut own,
        (peer.as_ref(), wrapper.as_ref()),
        &exe,
        &logs,
        &run_id,
    )
    .await;
    drop(peer);
    if let Some(own) = own {
        own.teardown().await;
    }
    let (otako, peer, storm, instructions) = result?;
    // On a quiet machine, after both systems are down. A floor that fails
    // leaves it out of the report, not the systems' figures with it.
    let floor = match plan.floor_args().filter(|_| plan.floor) {
        Some(args) => {
            eprintln!("[otako-bench] floor: the same workload by processes that only move bytes, then nats-server on its path");
            crate::floor::FloorResult::measure(&args)
                .await
                .inspect_err(|e| eprintln!("[otako-bench] no floor: {e}"))
                .ok()
        }
        None => None,
    };

    let comparison = peer.as_ref().map(|p| Comparison::of(&otako, p));
    let json = out_dir.join("report.json");
    let png = out_dir.join("report.png");
    let mut report = Report {
        scenario: plan.scenario.name().into(),
        started_at,
        machine,
        sessions_held: otako.sessions_held,
        deliveries: otako.drive.as_ref().map_or(0, |d| d.deliveries),
        deliveries_per_sec: otako.drive.as_ref().map(|d| d.deliveries_per_sec),
        latency_us: otako.drive.as_ref().and_then(|d| d.latency_us),
        plan,
        otako,
        peer,
        comparison,
        storm,
        instructions,
        floor,
        targets: Vec::new(),
        json: json.display().to_string(),
        png: None,
    };
    report.targets = crate::targets::evaluate(&report);
    match crate::plot::draw(&report, &png) {
        Ok(()) => report.png = Some(png.display().to_string()),
        Err(e) => eprintln!("[otako-bench] no chart: {e}"),
    }
    report::write_json(&report, &json)?;
    Ok(report)
}

fn warn_if_busy(plan: &Plan) {
    let load = procfs::machine().loadavg_at_start;
    if load > 1.0 {
        eprintln!(
            "[otako-bench] note: load average is {load:.2} before the {} run; other work on the machine skews the figures",
            plan.scenario.name()
        );
    }
}

fn external_endpoints(args: &RunArgs, plan: &Plan) -> Result<Endpoints, RunError> {
    let gateways = args
        .gateways
        .iter()
        .map(|g| {
            let g = g.trim_start_matches("ws://").trim_end_matches("/gateway");
            g.parse()
                .map_err(|_| RunError::Usage(format!("--gateway {g:?} is not host:port")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let database_url = args.database_url.clone().ok_or_else(|| {
        RunError::Usage("--database-url is needed to measure a running stack".into())
    })?;
    if plan.drive == Drive::Http && args.backend_url.is_none() {
        return Err(RunError::Usage(
            "--backend-url is needed for the HTTP drive".into(),
        ));
    }
    let gateway_pids = if args.gateway_pids.is_empty() {
        procfs::pids_named("otako-gateway")
    } else {
        args.gateway_pids.clone()
    };
    Ok(Endpoints {
        gateways,
        gateway_pids,
        gateway_admins: Vec::new(),
        database_url,
        nats_url: args
            .nats_url
            .clone()
            .unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
        nats_pid: None,
        backend_url: args.backend_url.clone(),
        // A backend already running is not ours to find.
        backend_pid: None,
        secret: args
            .token_secret
            .clone()
            .unwrap_or_else(|| DEV_SECRET.to_owned()),
    })
}

/// The generator's NATS connection, made the way both binaries make theirs
/// (a comma-separated `--nats-url` works too).
async fn nats_client(url: &str) -> Result<async_nats::Client, RunError> {
    let client = otako_common::nats::connect(
        url,
        &otako_common::nats::NatsOptions::default(),
        "otako-bench".into(),
        Some(Duration::from_secs(10)),
    )
    .await?;
    Ok(client)
}

/// Where each channel's messages come from: its first member.
fn channel_targets(pop: &Population, secret: &str) -> Vec<ChannelTarget> {
    let key = TokenKey::new(secret);
    let expires_at = chrono::Utc::now().timestamp() + 6 * 3600;
    pop.members
        .iter()
        .enumerate()
        .filter(|(_, m)| !m.is_empty())
        .map(|(c, m)| {
            let u = m[0] as usize;
            ChannelTarget {
                index: c as u32,
                id: pop.channel_ids[c],
                author_id: pop.user_ids[u],
                author_token: key.sign(&Claims {
                    user_id: pop.user_ids[u],
                    username: format!("{}{u}", pop.username_prefix),
                    generation: 0,
                    expires_at,
                }),
            }
        })
        .collect()
}

/// How messages are sent for `drive` (none for [`Drive::None`]).
async fn sender_for(
    drive: Drive,
    pool: &sqlx::PgPool,
    ep: &Endpoints,
    run_id: &str,
) -> Result<Option<Sender>, RunError> {
    Ok(match drive {
        Drive::None => None,
        Drive::Dispatch => Some(Sender::Dispatch {
            pool: pool.clone(),
            nats: nats_client(&ep.nats_url).await?,
            run_id: run_id.to_owned(),
        }),
        Drive::Http => Some(Sender::Http {
            client: reqwest::Client::new(),
            base_url: ep
                .backend_url
                .clone()
                .ok_or_else(|| RunError::Usage("no backend for the HTTP drive".into()))?,
        }),
    })
}

/// What the phases found: Otako's, the peer's, the storm's and the
/// instructions' figures.
type Phases = (
    SystemResult,
    Option<SystemResult>,
    Option<StormResult>,
    Option<InstructionsResult>,
);

#[allow(clippy::too_many_arguments)]
async fn phases(
    plan: &Plan,
    ep: &Endpoints,
    own: &mut Option<OwnStack>,
    (peer, wrapper): (Option<&Peer>, Option<&Wrapper>),
    exe: &Path,
    logs: &Path,
    run_id: &str,
) -> Result<Phases, RunError> {
    // The generator stands in for the backend: same pool settings (no ping
    // per query), so its cost on the shared machine is the backend's.
    let pool = otako_common::db::lazy_pool(&ep.database_url, 16)?;
    let seeded = Instant::now();
    let pop = seed::seed(&pool, plan.sessions, plan.layout, run_id).await?;
    eprintln!(
        "[otako-bench] seeded {} users in {} channels in {:.1} s",
        plan.sessions,
        pop.channel_ids.len(),
        seeded.elapsed().as_secs_f64()
    );
    let fleet = Arc::new(Fleet::spawn(exe, plan.shards, logs).await?);
    let gateways: Vec<String> = ep.gateways.iter().map(|a| a.to_string()).collect();
    let node_count = ep.gateways.len().max(1);
    fleet
        .call_each(|s| Command::Init {
            secret: ep.secret.clone(),
            username_prefix: pop.username_prefix.clone(),
            gateways: gateways.clone(),
            peer: peer.map(|p| p.ws_addr.to_string()),
            sessions: (s..plan.sessions)
                .step_by(plan.shards)
                .map(|i| SessionSpec {
                    index: i as u32,
                    user_id: pop.user_ids[i],
                    gateway: (i % node_count) as u16,
                    channels: plan.layout.channels_of(i, plan.sessions),
                })
                .collect(),
        })
        .await?;
    let targets = channel_targets(&pop, &ep.secret);

    let sender = sender_for(plan.drive, &pool, ep, run_id).await?;
    // The storm posts the events its sessions miss the way the drive sends
    // (the dispatch drive's when there is none).
    let storm_sender = match (plan.scenario, plan.drive) {
        (Scenario::Storm, Drive::None) => sender_for(Drive::Dispatch, &pool, ep, run_id).await?,
        (Scenario::Storm, drive) => sender_for(drive, &pool, ep, run_id).await?,
        _ => None,
    };
    let ctx = PhaseContext {
        plan,
        fleet: fleet.clone(),
        members: &pop.members,
        targets: &targets,
        backend_pid: ep.backend_pid,
    };
    let otako = ctx
        .system(
            System::Otako,
            &ep.gateway_pids,
            ep.nats_pid,
            sender,
            plan.drive,
        )
        .await?;
    let storm = match storm_sender {
        Some(sender) => Some(
            storm::run(StormSetup {
                plan,
                fleet: &fleet,
                targets: &targets,
                sender,
                server_pids: &ep.gateway_pids,
                admins: &ep.gateway_admins,
                broker_pid: ep.nats_pid,
            })
            .await?,
        ),
        None => None,
    };
    let instructions = match wrapper {
        Some(wrapper) => {
            let sender = sender_for(Drive::Dispatch, &pool, ep, run_id)
                .await?
                .ok_or_else(|| RunError::Usage("the dispatch drive has no sender".into()))?;
            Some(
                callgrind::run(callgrind::Setup {
                    events: plan.events,
                    fleet: &fleet,
                    targets: &targets,
                    members: &pop.members,
                    sender,
                    pid: ep.gateway_pids[0],
                    wrapper,
                })
                .await?,
            )
        }
        None => None,
    };
    fleet.close_sessions().await?;
    if let Some(own) = own {
        // Quiet the machine for the peer's turn.
        own.stop_servers();
    }
    let peer_result = match peer {
        Some(p) => {
            let sender = (plan.drive != Drive::None).then_some(Sender::Peer {
                nats: nats_client(&p.nats_url).await?,
            });
            let r = ctx
                .system(System::Peer, &[p.pid()], None, sender, plan.drive)
                .await?;
            fleet.close_sessions().await?;
            Some(r)
        }
        None => None,
    };
    drop(ctx);
    if let Ok(f) = Arc::try_unwrap(fleet) {
        f.shutdown().await;
    }
    pool.close().await;
    Ok((otako, peer_result, storm, instructions))
}

struct PhaseContext<'a> {
    plan: &'a Plan,
    fleet: Arc<Fleet>,
    members: &'a [Vec<u32>],
    targets: &'a [ChannelTarget],
    /// Otako's backend, when the bench runs one (the HTTP drive).
    backend_pid: Option<u32>,
}

impl PhaseContext<'_> {
    /// Opens the system's sessions step by step, reading memory at each
    /// step, then drives messages if there is a sender.
    async fn system(
        &self,
        system: System,
        server_pids: &[u32],
        broker_pid: Option<u32>,
        sender: Option<Sender>,
        drive: Drive,
    ) -> Result<SystemResult, RunError> {
        let plan = self.plan;
        let baseline = measure::settled_rss_kib(server_pids).await;
        let steps = if plan.rss_steps.is_empty() {
            vec![plan.sessions]
        } else {
            plan.rss_steps.clone()
        };
        let mut opened = Opened::default();
        let mut curve = Vec::new();
        let mut connect = Duration::ZERO;
        let mut prev = 0;
        for step in steps {
            let counts: Vec<usize> = (0..plan.shards)
                .map(|s| plan.shard_share(s, step) - plan.shard_share(s, prev))
                .collect();
            prev = step;
            let t = Instant::now();
            let o = self
                .fleet
                .open(system, &counts, plan.connect_concurrency, READY_TIMEOUT_MS)
                .await?;
            connect += t.elapsed();
            eprintln!(
                "[otako-bench] {}: {} sessions held ({} failed so far) after {:.1} s",
                system.label(),
                o.held,
                opened.failed + o.failed,
                connect.as_secs_f64()
            );
            opened.opened += o.opened;
            opened.failed += o.failed;
            opened.held = o.held;
            for (k, v) in o.errors {
                *opened.errors.entry(k).or_default() += v;
            }
            if !plan.rss_steps.is_empty() {
                let rss = measure::settled_rss_kib(server_pids).await;
                let held = self.fleet.progress().await?.held;
                let point = RssPoint::new(held, rss, baseline, curve.last());
                curve.push(point);
            }
        }
        let rss_total = measure::settled_rss_kib(server_pids).await;
        let held = self.fleet.progress().await?.held;
        let rss_kib: Vec<u64> = server_pids
            .iter()
            .map(|&p| measure::rss_kib(p).unwrap_or(0))
            .collect();
        let drive_result = match sender {
            Some(sender) => Some(
                self.drive(
                    system,
                    sender,
                    drive,
                    server_pids,
                    broker_pid,
                    held as f64 / plan.sessions as f64,
                )
                .await?,
            ),
            None => None,
        };
        let reports = self.fleet.reports().await?;
        let mut ended = BTreeMap::new();
        for r in &reports {
            for (k, v) in &r.ended {
                *ended.entry(k.clone()).or_default() += v;
            }
        }
        Ok(SystemResult {
            system: system.label().into(),
            sessions_opened: opened.opened as u64,
            sessions_failed: opened.failed as u64,
            sessions_held: reports.iter().map(|r| r.held).sum(),
            open_errors: opened.errors,
            start_retries: reports.iter().map(|r| r.start_retries).sum(),
            connect_seconds: connect.as_secs_f64(),
            server_pids: server_pids.to_vec(),
            rss_baseline_kib: baseline,
            rss_kib,
            rss_bytes_per_session: (held > 0)
                .then(|| (rss_total.saturating_sub(baseline) * 1024) as f64 / held as f64),
            rss_curve: curve,
            drive: drive_result,
            sessions_ended: ended,
        })
    }

    async fn drive(
        &self,
        system: System,
        sender: Sender,
        drive: Drive,
        server_pids: &[u32],
        broker_pid: Option<u32>,
        held_ratio: f64,
    ) -> Result<DriveResult, RunError> {
        let plan = self.plan;
        let via = match (system, drive) {
            (System::Peer, _) => "nats-publish",
            (_, Drive::Http) => "http",
            _ => "dispatch",
        };
        let work = Workload {
            rate: plan.rate,
            targets: self.targets.to_vec(),
            expected: self
                .targets
                .iter()
                .map(|t| self.members[t.index as usize].len() as f64 * held_ratio)
                .collect(),
            payload_len: plan.payload_bytes,
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(workload::run(
            Arc::new(sender),
            work,
            self.fleet.clone(),
            stop.clone(),
        ));
        tokio::time::sleep(plan.warmup()).await;
        self.fleet.reset().await?;
        let clients = self.fleet.pids().to_vec();
        let p0 = self.fleet.progress().await?;
        let c0 = CpuSnapshot::take(server_pids, broker_pid, &clients);
        let backend_pid = self.backend_pid.filter(|_| system == System::Otako);
        let b0 = backend_pid.map(|p| measure::cpu_time_sum(&[p]));
        let (start_us, t0) = (latency::now_us(), Instant::now());
        let probe = latency::WakeupProbe::start();
        tokio::time::sleep(plan.duration()).await;
        let wakeup = probe.finish();
        let p1 = self.fleet.progress().await?;
        let c1 = CpuSnapshot::take(server_pids, broker_pid, &clients);
        let b1 = backend_pid.map(|p| measure::cpu_time_sum(&[p]));
        // Out of file descriptors (seen once with the HTTP drive past what
        // the machine serves), every /proc read fails and each CPU figure
        // would read zero: say so and leave them out instead.
        let cpu_read = c1.machine.read();
        if !cpu_read {
            eprintln!(
                "[otako-bench] warning: could not read CPU times at the end of the window \
                 (out of file descriptors?); CPU figures left out"
            );
        }
        let cpu = |v: Option<f64>| v.filter(|_| cpu_read);
        let window = t0.elapsed();
        let reports = self.fleet.reports().await?;
        stop.cancel();
        let send = task.await.unwrap_or_default();
        let mut merged = Merged::default();
        for r in &reports {
            merged.add(&r.latency)?;
        }
        let deliveries = p1.received - p0.received;
        let server = c1.server.saturating_sub(c0.server);
        eprintln!(
            "[otako-bench] {}: {deliveries} deliveries in {:.1} s, {} messages sent, {} failed",
            system.label(),
            window.as_secs_f64(),
            send.sent,
            send.failed
        );
        Ok(DriveResult {
            via: via.into(),
            rate: plan.rate.to_string(),
            window_seconds: window.as_secs_f64(),
            deliveries,
            deliveries_per_sec: deliveries as f64 / window.as_secs_f64(),
            send,
            latency_us: merged.summary(),
            unstamped: reports.iter().map(|r| r.unstamped).sum(),
            server_cpu_seconds: server.as_secs_f64(),
            server_cpu_us_per_delivery: cpu(per_delivery(server, deliveries)),
            server_sleeps_per_delivery: cpu(per_count(
                c1.server_sleeps.saturating_sub(c0.server_sleeps),
                deliveries,
            )),
            broker_cpu_us_per_delivery: cpu(broker_pid
                .and_then(|_| per_delivery(c1.broker.saturating_sub(c0.broker), deliveries))),
            broker_sleeps_per_delivery: cpu(broker_pid.and_then(|_| {
                per_count(
                    c1.broker_sleeps.saturating_sub(c0.broker_sleeps),
                    deliveries,
                )
            })),
            backend_cpu_us_per_delivery: cpu(b0
                .zip(b1)
                .and_then(|(b0, b1)| per_delivery(b1.saturating_sub(b0), deliveries))),
            clients_cpu_us_per_delivery: cpu(per_delivery(
                c1.clients.saturating_sub(c0.clients),
                deliveries,
            )),
            generator_cpu_us_per_delivery: cpu(per_delivery(
                c1.generator.saturating_sub(c0.generator),
                deliveries,
            )),
            database_cpu_us_per_delivery: cpu(per_delivery(
                c1.database.saturating_sub(c0.database),
                deliveries,
            )),
            machine_cores_busy: c1.machine.busy_since(&c0.machine).as_secs_f64()
                / window.as_secs_f64(),
            machine_cores_stolen: c1.machine.stolen_since(&c0.machine).as_secs_f64()
                / window.as_secs_f64(),
            machine_wakeup_late_us: wakeup,
            series: merged.series(start_us),
            distribution: merged.distribution(),
        })
    }
}
