//! The instructions benchmark (`--scenario instructions`): what one
//! small-channel event costs the node in instructions, not time.
//!
//! The first (and only) node runs under `valgrind --tool=callgrind`. Its
//! sessions are held first; then every event's row is written, a warm-up
//! of [`WARMUP_EVENTS`] goes through (first-use allocations, lazily
//! resolved metrics, the loaders' connections), the counters are zeroed
//! (`callgrind_control --zero`), `events` go out one at a time, each only
//! once the previous one's reply came back and all its sessions received
//! it, and the counters are dumped. Then the node idles, with its sessions
//! held and nothing sent, for as long as the events took, and that is
//! dumped too: heartbeats, sweeps and pings run by the clock, not by the
//! event, so the idle dump's instructions (scaled to the same time) are
//! taken off. One event at a time keeps the count reproducible (nothing
//! is batched differently from run to run), and it is the per-event path
//! with nothing shared: the worst case of each hop, which is what a cut
//! should be judged against.
//!
//! Callgrind counts user-space instructions only: the kernel's part of
//! each write, read and wake-up is not in the figure (see BENCHMARKS.md,
//! where `perf` measures it).

use crate::driver::{ChannelTarget, DriveError, Prepared, Sender};
use crate::fleet::{Fleet, FleetError};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// Events sent before the counters are zeroed.
pub const WARMUP_EVENTS: usize = 200;
/// Rows written per insert while preparing the events.
const PREFILL_CHUNK: usize = 500;
/// How long one event's deliveries may take before the run moves on
/// (counted in `stalls`).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the client processes' counters are read while waiting.
const POLL: Duration = Duration::from_millis(1);
/// Functions listed by inclusive cost.
pub const TOP_FUNCTIONS: usize = 15;
/// How long the node under callgrind may take to become ready (it runs
/// some fifty times slower than natively, start-up included).
pub const READY_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum CallgrindError {
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error("preparing the events: {0}")]
    Prepare(#[from] DriveError),
    #[error("{tool} failed ({status}): {output}")]
    Tool {
        tool: String,
        status: String,
        output: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("callgrind wrote no new dump in {0}")]
    NoDump(PathBuf),
    #[error("no totals in the dump {0}")]
    NoTotals(PathBuf),
    #[error("no session was held")]
    NothingHeld,
}

/// How the node is started under callgrind, and where its dumps go.
#[derive(Debug, Clone)]
pub struct Wrapper {
    pub out_dir: PathBuf,
}

impl Wrapper {
    /// The command line that runs `binary` under callgrind: the program,
    /// then its arguments.
    pub fn command(&self, binary: &Path) -> (String, Vec<String>) {
        let out = self.out_dir.join("callgrind.out.%p");
        (
            "valgrind".into(),
            vec![
                "--tool=callgrind".into(),
                format!("--callgrind-out-file={}", out.display()),
                // The node's start-up is not measured; the counters are
                // zeroed before the events. Everything after is counted,
                // the runtime's scheduling and wake-ups included.
                "--collect-atstart=yes".into(),
                binary.display().to_string(),
            ],
        )
    }
}

/// What the run needs.
pub struct Setup<'a> {
    pub events: usize,
    pub fleet: &'a Fleet,
    pub targets: &'a [ChannelTarget],
    pub members: &'a [Vec<u32>],
    pub sender: Sender,
    /// The node under callgrind.
    pub pid: u32,
    pub wrapper: &'a Wrapper,
}

/// One function of the dump by inclusive cost.
#[derive(Debug, Clone, Serialize)]
pub struct Function {
    pub inclusive_ir: u64,
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstructionsResult {
    /// Events measured, and those whose reply said success.
    pub events: u64,
    pub events_ok: u64,
    /// Deliveries the clients counted for them, and how many the channels'
    /// members make.
    pub deliveries: u64,
    pub expected_deliveries: u64,
    /// Events whose deliveries did not all arrive in time.
    pub stalls: u64,
    /// Instructions of the node while the events went through, and how long that took.
    pub events_ir: u64,
    pub events_seconds: f64,
    /// Instructions of the node idling (sessions held, no event), and for how long.
    pub idle_ir: u64,
    pub idle_seconds: f64,
    /// events_ir / events.
    pub gross_ir_per_event: f64,
    /// (events_ir − idle_ir scaled to events_seconds) / events: the figure.
    pub ir_per_event: f64,
    /// The events dump, for callgrind_annotate.
    pub events_dump: String,
    pub idle_dump: String,
    /// The top functions of the events dump by inclusive cost.
    pub top: Vec<Function>,
}

/// Runs a tool and returns its standard output.
async fn tool(program: &str, args: &[&str]) -> Result<String, CallgrindError> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|source| CallgrindError::Io {
            what: format!("running {program}"),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(CallgrindError::Tool {
            tool: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            output: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        });
    }
    Ok(stdout)
}

/// The dumps callgrind has written so far.
fn dumps(dir: &Path) -> Result<Vec<PathBuf>, CallgrindError> {
    let entries = std::fs::read_dir(dir).map_err(|source| CallgrindError::Io {
        what: dir.display().to_string(),
        source,
    })?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("callgrind.out."))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Asks the node to dump its counters (which zeroes them) and returns
/// the new dump's path.
async fn dump(pid: u32, hint: &str, dir: &Path) -> Result<PathBuf, CallgrindError> {
    let before = dumps(dir)?;
    tool(
        "callgrind_control",
        &[&format!("--dump={hint}"), &pid.to_string()],
    )
    .await?;
    // vgdb returns once the command ran; the file may land a moment later.
    for _ in 0..100 {
        if let Some(new) = dumps(dir)?.into_iter().find(|p| !before.contains(p)) {
            return Ok(new);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(CallgrindError::NoDump(dir.to_path_buf()))
}

/// The dump's total instructions (its `totals:` or `summary:` line).
fn total_ir(path: &Path) -> Result<u64, CallgrindError> {
    let text = std::fs::read_to_string(path).map_err(|source| CallgrindError::Io {
        what: path.display().to_string(),
        source,
    })?;
    text.lines()
        .filter_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .next_back()
        .ok_or_else(|| CallgrindError::NoTotals(path.to_path_buf()))
}

/// The top functions by inclusive cost, from callgrind_annotate.
async fn top_functions(path: &Path) -> Result<Vec<Function>, CallgrindError> {
    let text = tool(
        "callgrind_annotate",
        &[
            "--inclusive=yes",
            "--threshold=100",
            "--auto=no",
            &path.to_string_lossy(),
        ],
    )
    .await?;
    Ok(parse_annotate(&text, TOP_FUNCTIONS))
}

/// Frames every task's poll passes through (thread start, the runtime's
/// worker loop and task harness): each holds nearly the whole total, so
/// listed they would hide the functions that tell one event's cost apart.
const PLUMBING: &[&str] = &[
    "clone",
    "start_thread",
    "<std::sys::thread::unix::Thread>::new::thread_start",
    "std::sys::backtrace::__rust_begin_short_backtrace",
    "core::ops::function::FnOnce::call_once{{vtable.shim}}",
    "tokio::runtime::context::",
    "tokio::runtime::scheduler::",
    "tokio::runtime::task::",
    "tokio::runtime::blocking::",
    "<tracing::instrument::Instrumented<T> as core::future::future::Future>::poll",
];

/// Lines of callgrind_annotate's table, `1,234,567 (12.3%)  file:function
/// [obj]`, less the runtime's plumbing; a function whose lines come from
/// several files is listed once per file, and only its first (largest)
/// line is kept.
fn parse_annotate(text: &str, n: usize) -> Vec<Function> {
    let mut seen = std::collections::HashSet::new();
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let (count, rest) = l.split_once(' ')?;
            let ir: u64 = count.replace(',', "").parse().ok()?;
            let rest = rest.trim_start();
            let rest = match rest.strip_prefix('(') {
                Some(r) => r.split_once(')')?.1.trim_start(),
                None => rest,
            };
            if rest.starts_with("PROGRAM TOTALS") || rest.is_empty() {
                return None;
            }
            let name = rest.split_once(':').map_or(rest, |(_, f)| f);
            // The object file in brackets says nothing the name does not.
            let name = name.split(" [").next().unwrap_or(name).trim();
            // Callgrind marks a recursive call's frame `'2`.
            let bare = name.split('\'').next().unwrap_or(name);
            let plumbing = PLUMBING
                .iter()
                .any(|p| bare == *p || (p.ends_with("::") && bare.starts_with(p)));
            if plumbing || !seen.insert(name.to_owned()) {
                return None;
            }
            Some(Function {
                inclusive_ir: ir,
                name: name.to_owned(),
            })
        })
        .take(n)
        .collect()
}

/// Sends `events` one at a time and waits for each one's deliveries;
/// returns what happened to them.
async fn send_each(s: &Setup<'_>, events: &[(Prepared, usize)]) -> Result<Sent, CallgrindError> {
    let base = s.fleet.progress().await?.received;
    let mut sent = Sent::default();
    let mut expected = base;
    for (p, i) in events {
        let target = &s.targets[*i];
        if s.sender.dispatch(p, target).await.is_ok() {
            sent.ok += 1;
        }
        let members = s.members[target.index as usize].len() as u64;
        sent.expected += members;
        expected += members;
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        loop {
            let received = s.fleet.progress().await?.received;
            if received >= expected {
                break;
            }
            if Instant::now() > deadline {
                // Resynchronise, so one lost delivery does not stall the rest.
                sent.stalls += 1;
                expected = received;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
    }
    sent.deliveries = s.fleet.progress().await?.received - base;
    Ok(sent)
}

/// What [`send_each`] saw.
#[derive(Debug, Default)]
struct Sent {
    ok: u64,
    deliveries: u64,
    expected: u64,
    stalls: u64,
}

/// Runs the measurement on a node whose sessions are held.
pub async fn run(s: Setup<'_>) -> Result<InstructionsResult, CallgrindError> {
    if s.fleet.progress().await?.held == 0 {
        return Err(CallgrindError::NothingHeld);
    }
    let total = WARMUP_EVENTS + s.events;
    // Every row is written before anything is measured: the inserts are
    // the backend's work, and the node never sees them.
    let mut prepared = Vec::with_capacity(total);
    let mut k = 0;
    while k < total {
        let chunk: Vec<usize> = (k..total.min(k + PREFILL_CHUNK))
            .map(|j| j % s.targets.len())
            .collect();
        let stamp = crate::latency::now_us();
        let due: Vec<(&ChannelTarget, i64)> =
            chunk.iter().map(|&i| (&s.targets[i], stamp)).collect();
        let rows = s.sender.prefill(&due, 300).await?;
        prepared.extend(rows.into_iter().zip(chunk));
        k += PREFILL_CHUNK;
    }
    let (warmup, measured) = prepared.split_at(WARMUP_EVENTS.min(prepared.len()));
    eprintln!(
        "[otako-bench] instructions: {} warm-up events, then {} measured, one at a time",
        warmup.len(),
        measured.len()
    );
    send_each(&s, warmup).await?;
    let pid = s.pid.to_string();
    tool("callgrind_control", &["--zero", &pid]).await?;
    let t0 = Instant::now();
    let sent = send_each(&s, measured).await?;
    let events_dump = dump(s.pid, "events", &s.wrapper.out_dir).await?;
    let events_seconds = t0.elapsed().as_secs_f64();
    eprintln!(
        "[otako-bench] instructions: {} events in {events_seconds:.1} s; idling as long",
        measured.len()
    );
    let t1 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(events_seconds)).await;
    let idle_dump = dump(s.pid, "idle", &s.wrapper.out_dir).await?;
    let idle_seconds = t1.elapsed().as_secs_f64();
    let (events_ir, idle_ir) = (total_ir(&events_dump)?, total_ir(&idle_dump)?);
    let n = measured.len().max(1) as f64;
    let idle_share = idle_ir as f64 * events_seconds / idle_seconds.max(1e-9);
    Ok(InstructionsResult {
        events: measured.len() as u64,
        events_ok: sent.ok,
        deliveries: sent.deliveries,
        expected_deliveries: sent.expected,
        stalls: sent.stalls,
        events_ir,
        events_seconds,
        idle_ir,
        idle_seconds,
        gross_ir_per_event: events_ir as f64 / n,
        ir_per_event: (events_ir as f64 - idle_share) / n,
        top: top_functions(&events_dump).await?,
        events_dump: events_dump.display().to_string(),
        idle_dump: idle_dump.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotate_lines_become_functions() {
        let text = "\
--------------------------------------------------------------------------------
Ir
--------------------------------------------------------------------------------
3,000,000 (100.0%)  PROGRAM TOTALS

--------------------------------------------------------------------------------
Ir                  file:function
--------------------------------------------------------------------------------
2,500,000 (83.33%)  ???:tokio::runtime::task::raw::poll [/x/otako-gateway]
1,000,000 (33.33%)  src/dispatch.rs:otako_gateway::dispatch::Dispatcher::handle [/x/otako-gateway]
  900,000 (30.00%)  src/session.rs:otako_gateway::session::serve::{{closure}} [/x/otako-gateway]
  800,000 (26.67%)  src/server.rs:otako_gateway::session::serve::{{closure}} [/x/otako-gateway]
";
        let top = parse_annotate(text, 15);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].inclusive_ir, 1_000_000);
        assert_eq!(top[0].name, "otako_gateway::dispatch::Dispatcher::handle");
        assert_eq!(top[1].name, "otako_gateway::session::serve::{{closure}}");
    }
}
