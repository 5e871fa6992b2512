//! What a run found: the JSON report, and the table printed at the end.

use crate::callgrind::InstructionsResult;
use crate::latency::{LatencySummary, SecondPoint};
use crate::plan::Plan;
use crate::procfs::Machine;
use crate::storm::{Spread, StormResult};
use crate::workload::SendSummary;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Memory of the servers once `sessions` were open.
#[derive(Debug, Clone, Serialize)]
pub struct RssPoint {
    pub sessions: u64,
    /// Summed over the system's server processes.
    pub rss_kib: u64,
    /// (rss − rss before any session) / sessions. Includes the fixed cost of
    /// starting to serve sessions at all, so it falls as sessions are added.
    pub bytes_per_session: f64,
    /// (rss − rss at the previous step) / (sessions added since then): what
    /// one more session costs, without the fixed cost. None at the first step.
    pub marginal_bytes_per_session: Option<f64>,
}

impl RssPoint {
    /// The point measured after a step; `previous` is the step before, if any.
    pub fn new(
        sessions: u64,
        rss_kib: u64,
        baseline_kib: u64,
        previous: Option<&RssPoint>,
    ) -> RssPoint {
        // Signed: RSS can fall between steps when the allocator hands memory back.
        let bytes = |kib: u64| kib as f64 * 1024.0;
        let marginal = previous
            .filter(|p| sessions > p.sessions)
            .map(|p| (bytes(rss_kib) - bytes(p.rss_kib)) / (sessions - p.sessions) as f64);
        RssPoint {
            sessions,
            rss_kib,
            bytes_per_session: (rss_kib.saturating_sub(baseline_kib) * 1024) as f64
                / sessions.max(1) as f64,
            marginal_bytes_per_session: marginal,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DriveResult {
    /// dispatch, http or nats-publish.
    pub via: String,
    pub rate: String,
    pub window_seconds: f64,
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    /// Messages sent during the whole phase (warm-up included).
    pub send: SendSummary,
    pub latency_us: Option<LatencySummary>,
    /// Deliveries whose content had no send stamp (not in the histogram).
    pub unstamped: u64,
    /// CPU of the system's server processes (gateways, or the peer's nats-server).
    pub server_cpu_seconds: f64,
    pub server_cpu_us_per_delivery: Option<f64>,
    /// How often the server processes' threads went to sleep (and were
    /// woken again), per delivery.
    #[serde(default)]
    pub server_sleeps_per_delivery: Option<f64>,
    /// CPU of the Otako stack's nats-server (the firehose), when known.
    pub broker_cpu_us_per_delivery: Option<f64>,
    #[serde(default)]
    pub broker_sleeps_per_delivery: Option<f64>,
    /// CPU of Otako's backend, when the bench started one (the HTTP drive).
    #[serde(default)]
    pub backend_cpu_us_per_delivery: Option<f64>,
    /// The bench's own cost: the client processes, and the generator.
    pub clients_cpu_us_per_delivery: Option<f64>,
    pub generator_cpu_us_per_delivery: Option<f64>,
    /// Every PostgreSQL process of the machine (the gateways' reads, and the
    /// generator's or the backend's writes).
    pub database_cpu_us_per_delivery: Option<f64>,
    /// The whole machine during the window, in cores: busy, and stolen by
    /// the hypervisor; what is left of `nproc` was idle.
    pub machine_cores_busy: f64,
    pub machine_cores_stolen: f64,
    /// How late a thread sleeping 1 ms woke up during the window
    /// (`latency::wakeup_probe`), in µs.
    pub machine_wakeup_late_us: Option<LatencySummary>,
    pub series: Vec<SecondPoint>,
    /// (quantile, µs) pairs.
    pub distribution: Vec<(f64, u64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SystemResult {
    /// otako or nats-ws.
    pub system: String,
    pub sessions_opened: u64,
    pub sessions_failed: u64,
    pub sessions_held: u64,
    pub open_errors: BTreeMap<String, u64>,
    /// Session starts the node refused with 1011 and the client retried.
    pub start_retries: u64,
    pub connect_seconds: f64,
    pub server_pids: Vec<u32>,
    pub rss_baseline_kib: u64,
    /// Per server process, after the last step (before any message).
    pub rss_kib: Vec<u64>,
    pub rss_bytes_per_session: Option<f64>,
    pub rss_curve: Vec<RssPoint>,
    pub drive: Option<DriveResult>,
    /// How sessions ended, by close code or reason.
    pub sessions_ended: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Ours over theirs (higher is better for us).
    pub deliveries_per_sec_ratio: Option<f64>,
    /// Theirs over ours (higher is better for us).
    pub cpu_per_delivery_ratio: Option<f64>,
    pub rss_per_session_ratio: Option<f64>,
    pub p99_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    pub name: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub started_at: String,
    pub machine: Machine,
    pub plan: Plan,
    /// Otako's headline figures (also under `otako`).
    pub sessions_held: u64,
    pub deliveries: u64,
    pub deliveries_per_sec: Option<f64>,
    pub latency_us: Option<LatencySummary>,
    pub otako: SystemResult,
    pub peer: Option<SystemResult>,
    pub comparison: Option<Comparison>,
    /// The reconnect storm's figures (`storm` scenario only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storm: Option<StormResult>,
    /// Instructions per event under callgrind (`instructions` scenario only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<InstructionsResult>,
    /// The workload's floor, measured after the systems (`crate::floor`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor: Option<crate::floor::FloorResult>,
    pub targets: Vec<TargetCheck>,
    pub json: String,
    pub png: Option<String>,
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

impl Comparison {
    pub fn of(ours: &SystemResult, theirs: &SystemResult) -> Comparison {
        let d = |s: &SystemResult| s.drive.as_ref().map(|d| d.deliveries_per_sec);
        let cpu = |s: &SystemResult| s.drive.as_ref().and_then(|d| d.server_cpu_us_per_delivery);
        let p99 = |s: &SystemResult| {
            s.drive
                .as_ref()
                .and_then(|d| d.latency_us.map(|l| l.p99 as f64))
        };
        Comparison {
            deliveries_per_sec_ratio: ratio(d(ours), d(theirs)),
            cpu_per_delivery_ratio: ratio(cpu(theirs), cpu(ours)),
            rss_per_session_ratio: ratio(theirs.rss_bytes_per_session, ours.rss_bytes_per_session),
            p99_ratio: ratio(p99(theirs), p99(ours)),
        }
    }
}

pub fn write_json(report: &Report, path: &Path) -> Result<(), ReportError> {
    let text = serde_json::to_string_pretty(report).expect("the report serializes");
    std::fs::write(path, text + "\n").map_err(|source| ReportError::Write {
        path: path.display().to_string(),
        source,
    })
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

fn ms(us: Option<u64>) -> String {
    us.map_or_else(|| "-".into(), |v| format!("{:.2} ms", v as f64 / 1000.0))
}

fn spread(s: &Option<Spread>) -> String {
    s.map_or_else(
        || "-".into(),
        |s| {
            format!(
                "p50 {:.0} / p90 {:.0} / p99 {:.0} / max {:.0} ms",
                s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
            )
        },
    )
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The instructions figure and the functions that cost most.
fn instructions_table(out: &mut String, i: &InstructionsResult) {
    let _ = writeln!(
        out,
        "instructions per event: {:.0} ({} events, {} ok, {} deliveries, {} stalled; \
         {} Ir in {:.1} s, less {} Ir idle in {:.1} s; {:.0} before the idle is taken off)",
        i.ir_per_event,
        i.events,
        i.events_ok,
        i.deliveries,
        i.stalls,
        i.events_ir,
        i.events_seconds,
        i.idle_ir,
        i.idle_seconds,
        i.gross_ir_per_event
    );
    let _ = writeln!(
        out,
        "top {} functions by inclusive cost ({}):",
        i.top.len(),
        i.events_dump
    );
    for f in &i.top {
        let _ = writeln!(
            out,
            "  {:>14} Ir  {:>9.0} per event  {:>5.1} %  {}",
            f.inclusive_ir,
            f.inclusive_ir as f64 / i.events.max(1) as f64,
            100.0 * f.inclusive_ir as f64 / i.events_ir.max(1) as f64,
            f.name
        );
    }
}

/// The storm's own rows, under the sessions' table.
fn storm_table(out: &mut String, st: &StormResult) {
    let secs = |v: Option<f64>| v.map_or_else(|| "never".into(), |v| format!("{v:.2} s"));
    let reasons = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rows: Vec<(&str, String)> = vec![
        ("sessions dropped and brought back", st.sessions.to_string()),
        (
            "node's sessions open: held / as the storm started",
            format!(
                "{} / {}",
                st.gateway_sessions_open_held
                    .map_or("-".into(), |v| v.to_string()),
                st.gateway_sessions_open_at_storm
                    .map_or("-".into(), |v| v.to_string())
            ),
        ),
        (
            "missed events posted (per channel)",
            format!(
                "{} ({}), {} failed",
                st.gap_events_posted, st.gap_events_per_channel, st.gap_events_failed
            ),
        ),
        ("until all had READY", secs(st.all_ready_s)),
        ("until all live (resumed, replay in)", secs(st.all_live_s)),
        (
            "live / resumed:false / failed",
            format!("{} / {} / {}", st.live, st.resumed_false, st.failed),
        ),
        ("READY per session", spread(&st.ready)),
        ("live per session", spread(&st.time_to_live)),
        ("  storm start to upgrade answered", spread(&st.upgrade)),
        ("  upgrade to HELLO (start slot)", spread(&st.slot_wait)),
        ("  HELLO to READY (start)", spread(&st.start)),
        ("  READY to last missed event", spread(&st.replay)),
        (
            "attempts / retries / refused 1013",
            format!("{} / {} / {}", st.attempts, st.retries, st.refused_1013),
        ),
        (
            "sessions retried / most attempts",
            format!("{} / {}", st.sessions_retried, st.max_attempts),
        ),
        (
            "replayed / expected / repeated / older",
            format!(
                "{} / {} / {} / {}",
                st.replayed, st.replay_expected, st.repeated, st.older
            ),
        ),
        (
            "gateway RSS held / dropped / peak / after",
            format!(
                "{} / {} / {} / {}",
                mib(st.rss_held_kib),
                mib(st.rss_dropped_kib),
                mib(st.rss_peak_kib),
                mib(st.rss_after_kib)
            ),
        ),
        (
            "broker RSS before / peak",
            format!(
                "{} / {}",
                st.broker_rss_before_kib.map_or("-".into(), mib),
                st.broker_rss_peak_kib.map_or("-".into(), mib)
            ),
        ),
        (
            "gateway CPU (per session)",
            format!(
                "{:.2} s in {:.2} s ({:.2} ms)",
                st.gateway_cpu_seconds, st.window_seconds, st.gateway_cpu_ms_per_session
            ),
        ),
        (
            "broker / database / bench clients CPU",
            format!(
                "{:.2} / {:.2} / {:.2} s",
                st.broker_cpu_seconds, st.database_cpu_seconds, st.clients_cpu_seconds
            ),
        ),
        (
            "machine busy / stolen; load at start",
            format!(
                "{:.2} / {:.2} cores; {:.2}",
                st.machine_cores_busy, st.machine_cores_stolen, st.loadavg_at_storm
            ),
        ),
    ];
    let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(10);
    let _ = writeln!(out, "reconnect storm:");
    for (name, v) in rows {
        let _ = writeln!(out, "  {name:w0$}  {v}");
    }
    if !st.retry_reasons.is_empty() {
        let _ = writeln!(out, "  retried because: {}", reasons(&st.retry_reasons));
    }
    if !st.failures.is_empty() {
        let _ = writeln!(out, "  not live because: {}", reasons(&st.failures));
    }
    if !st.tcp_counters.is_empty() {
        let c: Vec<String> = st
            .tcp_counters
            .iter()
            .map(|(k, v)| format!("{k} +{v}"))
            .collect();
        let _ = writeln!(out, "  kernel TCP: {}", c.join(", "));
    }
    for (index, from, ready) in &st.not_resumed {
        let _ = writeln!(
            out,
            "  session {index} sent cursor {from:?}, READY said resumed:false at {ready:?}"
        );
    }
    if !st.gateway_counters.is_empty() {
        let c: Vec<String> = st
            .gateway_counters
            .iter()
            .map(|(k, v)| format!("{k} +{v}"))
            .collect();
        let _ = writeln!(out, "  the node counted: {}", c.join(", "));
    }
}

/// The table printed at the end of a run.
pub fn table(r: &Report) -> String {
    let systems: Vec<&SystemResult> = std::iter::once(&r.otako).chain(r.peer.as_ref()).collect();
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&SystemResult) -> String| {
        rows.push((name.to_owned(), systems.iter().map(|s| f(s)).collect()));
    };
    row("sessions held", &|s| s.sessions_held.to_string());
    row("sessions failed", &|s| s.sessions_failed.to_string());
    row("starts retried (1011)", &|s| s.start_retries.to_string());
    row("connect time", &|s| format!("{:.1} s", s.connect_seconds));
    row("server RSS", &|s| {
        format!("{:.1} MiB", s.rss_kib.iter().sum::<u64>() as f64 / 1024.0)
    });
    row("RSS per session", &|s| {
        opt(s.rss_bytes_per_session.map(|b| b / 1024.0), 2) + " KiB"
    });
    let d = |s: &SystemResult| s.drive.clone();
    row("deliveries", &|s| {
        d(s).map_or("-".into(), |d| d.deliveries.to_string())
    });
    row("deliveries/s", &|s| {
        d(s).map_or("-".into(), |d| format!("{:.0}", d.deliveries_per_sec))
    });
    row("server CPU µs/delivery", &|s| {
        opt(d(s).and_then(|d| d.server_cpu_us_per_delivery), 2)
    });
    row("server sleeps/delivery", &|s| {
        opt(d(s).and_then(|d| d.server_sleeps_per_delivery), 2)
    });
    row("broker CPU µs/delivery", &|s| {
        opt(d(s).and_then(|d| d.broker_cpu_us_per_delivery), 2)
    });
    row("broker sleeps/delivery", &|s| {
        opt(d(s).and_then(|d| d.broker_sleeps_per_delivery), 2)
    });
    row("backend CPU µs/delivery", &|s| {
        opt(d(s).and_then(|d| d.backend_cpu_us_per_delivery), 2)
    });
    row("bench clients µs/delivery", &|s| {
        opt(d(s).and_then(|d| d.clients_cpu_us_per_delivery), 2)
    });
    row("bench generator µs/delivery", &|s| {
        opt(d(s).and_then(|d| d.generator_cpu_us_per_delivery), 2)
    });
    row("database CPU µs/delivery", &|s| {
        opt(d(s).and_then(|d| d.database_cpu_us_per_delivery), 2)
    });
    row("machine cores busy / stolen", &|s| {
        d(s).map_or("-".into(), |d| {
            format!(
                "{:.2} / {:.2}",
                d.machine_cores_busy, d.machine_cores_stolen
            )
        })
    });
    row("machine wake-up late p99 / max", &|s| {
        d(s).and_then(|d| d.machine_wakeup_late_us)
            .map_or("-".into(), |w| {
                format!("{} / {}", ms(Some(w.p99)), ms(Some(w.max)))
            })
    });
    let lat = |s: &SystemResult| d(s).and_then(|d| d.latency_us);
    row("latency p50", &|s| ms(lat(s).map(|l| l.p50)));
    row("latency p99", &|s| ms(lat(s).map(|l| l.p99)));
    row("latency p99.9", &|s| ms(lat(s).map(|l| l.p999)));
    row("latency max", &|s| ms(lat(s).map(|l| l.max)));
    row("send failures", &|s| {
        d(s).map_or("-".into(), |d| d.send.failed.to_string())
    });

    let mut out = String::new();
    let header: Vec<String> = systems.iter().map(|s| s.system.clone()).collect();
    let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(10);
    let w = 16;
    let _ = writeln!(
        out,
        "\n{} — {} sessions, {} node(s), layout {}, drive {:?}, rate {}",
        r.scenario, r.plan.sessions, r.plan.nodes, r.plan.layout, r.plan.drive, r.plan.rate
    );
    let _ = write!(out, "{:w0$}", "");
    for h in &header {
        let _ = write!(out, "  {h:>w$}");
    }
    let _ = writeln!(out);
    for (name, vals) in &rows {
        let _ = write!(out, "{name:w0$}");
        for v in vals {
            let _ = write!(out, "  {v:>w$}");
        }
        let _ = writeln!(out);
    }
    for (label, s) in systems.iter().map(|s| (s.system.as_str(), s)) {
        for p in &s.rss_curve {
            let _ = write!(
                out,
                "{label} RSS at {} sessions: {:.1} MiB, {:.2} KiB/session",
                p.sessions,
                p.rss_kib as f64 / 1024.0,
                p.bytes_per_session / 1024.0
            );
            if let Some(m) = p.marginal_bytes_per_session {
                let _ = write!(
                    out,
                    ", {:.2} KiB per session added since the last step",
                    m / 1024.0
                );
            }
            let _ = writeln!(out);
        }
    }
    if let Some(st) = &r.storm {
        storm_table(&mut out, st);
    }
    if let Some(i) = &r.instructions {
        instructions_table(&mut out, i);
    }
    if let Some(f) = &r.floor {
        let _ = write!(out, "\n{}", f.table());
    }
    if let Some(c) = &r.comparison {
        let _ = writeln!(
            out,
            "ours vs peer, above 1 in our favour: deliveries/s ×{}, CPU per delivery ×{}, RSS per session ×{}, p99 ×{}",
            opt(c.deliveries_per_sec_ratio, 2),
            opt(c.cpu_per_delivery_ratio, 2),
            opt(c.rss_per_session_ratio, 2),
            opt(c.p99_ratio, 2)
        );
    }
    for t in &r.targets {
        let _ = writeln!(
            out,
            "[{}] {}: target {}, measured {}",
            if t.met { "met" } else { "MISSED" },
            t.name,
            t.target,
            t.measured
        );
    }
    let _ = writeln!(out, "report: {}", r.json);
    if let Some(p) = &r.png {
        let _ = writeln!(out, "chart:  {p}");
    }
    out
}
