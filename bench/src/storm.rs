//! The reconnect storm (`--scenario storm`): once the sessions are held and
//! have real cursors, every one of them drops at once (sockets closed, no
//! close frame), each channel gets events while they are away, and all of
//! them come back at once, resuming from their last cursors. Measured: how
//! long until every session is live again (READY with `resumed: true` and
//! every missed event received), how many starts the node refused (1013)
//! or failed and the clients retried, how many did not resume, and what
//! the storm cost the node: its peak RSS and its CPU.

use crate::control::ResumeOutcome;
use crate::driver::{ChannelTarget, Sender};
use crate::fleet::{Fleet, FleetError};
use crate::latency::{now_us, LatencySummary, WakeupProbe};
use crate::measure::{self, CpuSnapshot};
use crate::plan::Plan;
use crate::procfs;
use futures_util::StreamExt;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long the storm may take before the sessions not back are given up.
const STORM_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the node gets to notice the dropped sockets and end their
/// sessions before the missed events are posted.
const DROP_SETTLE: Duration = Duration::from_secs(2);
/// Deliveries count as finished once none arrived for this long.
const QUIET: Duration = Duration::from_secs(1);
const QUIET_MAX: Duration = Duration::from_secs(15);
/// How often the node's RSS is read for the chart (its peak comes from the
/// kernel's high-water mark, which misses nothing between samples).
const RSS_SAMPLE: Duration = Duration::from_millis(50);
/// Missed events posted at once, at most.
const GAP_SENDS_IN_FLIGHT: usize = 64;
/// Width of a step of the sessions-live curve.
const SERIES_STEP_MS: u64 = 100;
/// The node's own counters of what happened to session starts, read from
/// its `/metrics` before and after the storm.
const COUNTERS: &[&str] = &[
    "otako_sessions_open",
    "otako_sessions_opened_total",
    "otako_sessions_closed_total",
    "otako_session_starts_refused_total",
    "otako_resumes_total",
];
/// The kernel's counters of connections a listener could not take at
/// once: a full accept queue drops the handshake's last ACK (the client
/// retransmits after a second or more), and a full SYN queue answers
/// with cookies.
const TCP_COUNTERS: &[&str] = &["ListenOverflows", "ListenDrops", "SyncookiesSent"];
/// Sessions not resumed that the report lists by cursor, at most.
const NOT_RESUMED_LISTED: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum StormError {
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error("no session was held before the storm")]
    NothingHeld,
}

/// Percentiles over the sessions, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Spread {
    /// Nearest-rank percentiles of `us` (microseconds); None when empty.
    fn of(mut us: Vec<u64>) -> Option<Spread> {
        if us.is_empty() {
            return None;
        }
        us.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * us.len() as f64).ceil() as usize).clamp(1, us.len());
            us[rank - 1] as f64 / 1e3
        };
        Some(Spread {
            count: us.len() as u64,
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        })
    }
}

/// Sessions back at one moment of the storm.
#[derive(Debug, Clone, Serialize)]
pub struct LivePoint {
    /// Seconds after the storm's start.
    pub t: f64,
    /// Sessions that had READY by then.
    pub ready: u64,
    /// Sessions that had READY with `resumed: true` and every missed event.
    pub live: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StormResult {
    /// Sessions dropped and brought back (those that had READY before).
    pub sessions: u64,
    /// Events posted to each channel while the sessions were away.
    pub gap_events_per_channel: usize,
    pub gap_events_posted: u64,
    pub gap_events_failed: u64,
    /// Resumed, and every missed event received.
    pub live: u64,
    /// READY said `resumed: false`: back, but without the replay.
    pub resumed_false: u64,
    /// Not back, or ended before the replay was in, by reason.
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// A few sessions told `resumed: false`: (index, cursor sent, READY's).
    pub not_resumed: Vec<(u32, String, String)>,
    /// What the node counted during the storm (its `/metrics`, increase).
    pub gateway_counters: BTreeMap<String, f64>,
    /// Sessions the node had open before the drop, and as the storm
    /// started (its gauge): 0 once it has noticed every dropped socket.
    pub gateway_sessions_open_held: Option<f64>,
    pub gateway_sessions_open_at_storm: Option<f64>,
    /// How much the kernel's listen-queue counters grew during the storm
    /// (the whole machine's loopback, but nothing else connects then).
    pub tcp_counters: BTreeMap<String, u64>,
    /// Seconds from the first reconnect until every session had READY.
    pub all_ready_s: Option<f64>,
    /// Seconds from the first reconnect until every session was live; None
    /// if some never were.
    pub all_live_s: Option<f64>,
    /// Per session, from the storm's start: READY, and live.
    pub ready: Option<Spread>,
    pub time_to_live: Option<Spread>,
    /// Per session, the steps of the attempt that was let in: from the
    /// storm's start to the upgrade's answer (TCP connect and upgrade, and
    /// the earlier attempts with their backoff, if any), from the
    /// upgrade's answer to HELLO (waiting for one of the node's start
    /// slots), from HELLO to READY (the start: database, session limit,
    /// history reads), and from READY to the last missed event.
    pub upgrade: Option<Spread>,
    pub slot_wait: Option<Spread>,
    pub start: Option<Spread>,
    pub replay: Option<Spread>,
    /// Upgrades tried in all, and the ones that failed and were retried,
    /// by why (close 1013: the node's start slots were all taken for 10 s).
    pub attempts: u64,
    pub retries: u64,
    pub refused_1013: u64,
    pub retry_reasons: BTreeMap<String, u64>,
    pub sessions_retried: u64,
    pub max_attempts: u32,
    /// Missed events expected and received, over all sessions.
    pub replay_expected: u64,
    pub replayed: u64,
    /// Events at or before a position the session already had.
    pub repeated: u64,
    /// Events from before the gap that came in a replay (the dropped
    /// session had not received them).
    pub older: u64,
    /// The node's RSS holding every session before the drop, after the
    /// drop (settled), at its highest during the storm, and after it.
    pub rss_held_kib: u64,
    pub rss_dropped_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_after_kib: u64,
    /// The Otako stack's nats-server (the history, and a consumer per
    /// history read): RSS as the storm started, and its peak.
    pub broker_rss_before_kib: Option<u64>,
    pub broker_rss_peak_kib: Option<u64>,
    /// From the storm's start until every session had an outcome.
    pub window_seconds: f64,
    pub gateway_cpu_seconds: f64,
    pub gateway_cpu_ms_per_session: f64,
    pub broker_cpu_seconds: f64,
    pub database_cpu_seconds: f64,
    pub clients_cpu_seconds: f64,
    pub machine_cores_busy: f64,
    pub machine_cores_stolen: f64,
    /// 1-minute load average as the storm started.
    pub loadavg_at_storm: f64,
    pub machine_wakeup_late_us: Option<LatencySummary>,
    pub live_series: Vec<LivePoint>,
    /// (seconds after the storm's start, summed RSS of the nodes in KiB).
    pub rss_series: Vec<(f64, u64)>,
}

/// What the storm runs on.
pub struct StormSetup<'a> {
    pub plan: &'a Plan,
    pub fleet: &'a Fleet,
    pub targets: &'a [ChannelTarget],
    pub sender: Sender,
    pub server_pids: &'a [u32],
    pub admins: &'a [SocketAddr],
    pub broker_pid: Option<u32>,
}

/// The nodes' session counters, summed over the nodes by series
/// (`name{labels}`); a node that does not answer adds nothing.
async fn gateway_counters(admins: &[SocketAddr]) -> BTreeMap<String, f64> {
    let client = reqwest::Client::new();
    let mut out = BTreeMap::new();
    for a in admins {
        let got = client
            .get(format!("http://{a}/metrics"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let Ok(text) = (match got {
            Ok(r) => r.text().await,
            Err(e) => Err(e),
        }) else {
            continue;
        };
        for line in text
            .lines()
            .filter(|l| COUNTERS.iter().any(|c| l.starts_with(c)))
        {
            if let Some((series, v)) = line.rsplit_once(' ') {
                if let Ok(v) = v.parse::<f64>() {
                    *out.entry(series.to_owned()).or_default() += v;
                }
            }
        }
    }
    out
}

/// How much each counter grew from `before` to `after`.
fn increase(before: &BTreeMap<String, f64>, after: BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .into_iter()
        .map(|(k, v)| {
            let d = v - before.get(&k).copied().unwrap_or(0.0);
            (k, d)
        })
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

/// Waits until the client processes' delivery counter stops moving.
async fn deliveries_settled(fleet: &Fleet) -> Result<(), FleetError> {
    let deadline = Instant::now() + QUIET_MAX;
    let mut last = fleet.progress().await?.received;
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = fleet.progress().await?.received;
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= QUIET {
            break;
        }
    }
    Ok(())
}

/// Posts `per_channel` events to every channel; returns (posted, failed).
async fn post_gap(
    sender: &Sender,
    targets: &[ChannelTarget],
    per_channel: usize,
    payload: usize,
) -> (u64, u64) {
    let sends = (0..per_channel)
        .flat_map(|_| targets.iter())
        .map(|t| sender.send(t, payload));
    let results: Vec<bool> = futures_util::stream::iter(sends)
        .buffer_unordered(GAP_SENDS_IN_FLIGHT)
        .map(|r| r.is_ok())
        .collect()
        .await;
    let ok = results.iter().filter(|&&ok| ok).count() as u64;
    (ok, results.len() as u64 - ok)
}

/// Reads the nodes' summed RSS every [`RSS_SAMPLE`] until stopped.
fn sample_rss(pids: Vec<u32>, stop: CancellationToken) -> tokio::task::JoinHandle<Vec<(f64, u64)>> {
    tokio::spawn(async move {
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut tick = tokio::time::interval(RSS_SAMPLE);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    out.push((t0.elapsed().as_secs_f64(), measure::rss_sum_kib(&pids)));
                }
            }
        }
        out
    })
}

/// Runs the storm on sessions already held; see the module's comment.
pub async fn run(s: StormSetup<'_>) -> Result<StormResult, StormError> {
    let pids = s.server_pids;
    deliveries_settled(s.fleet).await?;
    if s.fleet.progress().await?.held == 0 {
        return Err(StormError::NothingHeld);
    }
    let rss_held_kib = measure::settled_rss_kib(pids).await;
    let held_open = gateway_counters(s.admins)
        .await
        .get("otako_sessions_open")
        .copied();
    s.fleet.drop_sessions().await?;
    tokio::time::sleep(DROP_SETTLE).await;
    let rss_dropped_kib = measure::settled_rss_kib(pids).await;
    let since_us = now_us();
    let gap = s.plan.gap_events;
    let (posted, failed) = post_gap(&s.sender, s.targets, gap, s.plan.payload_bytes).await;
    eprintln!(
        "[otako-bench] storm: sessions dropped; {posted} events posted while they were away ({failed} failed)"
    );

    // The peak is the kernel's high-water mark from here; where it cannot be
    // reset, the samples stand in.
    let hwm_reset = pids.iter().all(|&p| measure::reset_peak_rss(p).is_ok());
    let broker_before = s.broker_pid.and_then(|p| {
        measure::reset_peak_rss(p).ok()?;
        measure::rss_kib(p).ok()
    });
    let stop = CancellationToken::new();
    let sampler = sample_rss(pids.to_vec(), stop.clone());
    let clients = s.fleet.pids().to_vec();
    let loadavg_at_storm = procfs::loadavg();
    let counters_before = gateway_counters(s.admins).await;
    let tcp_before = procfs::tcp_ext(TCP_COUNTERS);
    let c0 = CpuSnapshot::take(pids, s.broker_pid, &clients);
    let probe = WakeupProbe::start();
    let (start_us, t0) = (now_us(), Instant::now());
    let outcomes = s
        .fleet
        .storm(
            start_us,
            since_us,
            gap as u32,
            STORM_TIMEOUT.as_millis() as u64,
        )
        .await?;
    let window = t0.elapsed();
    let c1 = CpuSnapshot::take(pids, s.broker_pid, &clients);
    let tcp_counters: BTreeMap<String, u64> = procfs::tcp_ext(TCP_COUNTERS)
        .into_iter()
        .map(|(k, v)| {
            let d = v.saturating_sub(tcp_before.get(&k).copied().unwrap_or(0));
            (k, d)
        })
        .collect();
    let wakeup = probe.finish();
    stop.cancel();
    let rss_series = sampler.await.unwrap_or_default();
    let sampled_peak = rss_series.iter().map(|p| p.1).max().unwrap_or(0);
    let hwm: u64 = pids
        .iter()
        .filter_map(|&p| measure::peak_rss_kib(p).ok())
        .sum();
    let rss_peak_kib = if hwm_reset {
        hwm.max(sampled_peak)
    } else {
        sampled_peak
    };
    let counters = increase(&counters_before, gateway_counters(s.admins).await);
    let broker_peak = broker_before
        .and(s.broker_pid)
        .and_then(|p| measure::peak_rss_kib(p).ok());
    let rss_after_kib = measure::settled_rss_kib(pids).await;

    let mut r = summarize(&outcomes);
    r.broker_rss_before_kib = broker_before;
    r.broker_rss_peak_kib = broker_peak;
    r.gateway_counters = counters;
    r.gateway_sessions_open_held = held_open;
    r.gateway_sessions_open_at_storm = counters_before.get("otako_sessions_open").copied();
    r.tcp_counters = tcp_counters;
    r.gap_events_per_channel = gap;
    r.gap_events_posted = posted;
    r.gap_events_failed = failed;
    r.rss_held_kib = rss_held_kib;
    r.rss_dropped_kib = rss_dropped_kib;
    r.rss_peak_kib = rss_peak_kib;
    r.rss_after_kib = rss_after_kib;
    let secs = window.as_secs_f64();
    let gw = c1.server.saturating_sub(c0.server).as_secs_f64();
    r.window_seconds = secs;
    r.gateway_cpu_seconds = gw;
    r.gateway_cpu_ms_per_session = gw * 1e3 / r.sessions.max(1) as f64;
    r.broker_cpu_seconds = c1.broker.saturating_sub(c0.broker).as_secs_f64();
    r.database_cpu_seconds = c1.database.saturating_sub(c0.database).as_secs_f64();
    r.clients_cpu_seconds = c1.clients.saturating_sub(c0.clients).as_secs_f64();
    r.machine_cores_busy = c1.machine.busy_since(&c0.machine).as_secs_f64() / secs;
    r.machine_cores_stolen = c1.machine.stolen_since(&c0.machine).as_secs_f64() / secs;
    r.loadavg_at_storm = loadavg_at_storm;
    r.machine_wakeup_late_us = wakeup;
    r.rss_series = rss_series;
    eprintln!(
        "[otako-bench] storm: {} of {} sessions live after {:.1} s ({} retries, {} resumed:false, {} failed)",
        r.live, r.sessions, secs, r.retries, r.resumed_false, r.failed
    );
    Ok(r)
}

/// The sessions' outcomes added up (the node's figures are filled in by
/// the caller).
fn summarize(outcomes: &[ResumeOutcome]) -> StormResult {
    let n = outcomes.len() as u64;
    let count =
        |f: &dyn Fn(&ResumeOutcome) -> bool| outcomes.iter().filter(|o| f(o)).count() as u64;
    let sum =
        |f: &dyn Fn(&ResumeOutcome) -> u32| outcomes.iter().map(|o| u64::from(f(o))).sum::<u64>();
    let mut failures = BTreeMap::new();
    let mut retry_reasons: BTreeMap<String, u64> = BTreeMap::new();
    for o in outcomes {
        if let Some(why) = &o.failed {
            *failures.entry(why.clone()).or_default() += 1;
        }
        for (why, k) in &o.retried {
            *retry_reasons.entry(why.clone()).or_default() += u64::from(*k);
        }
    }
    let step = |from: fn(&ResumeOutcome) -> Option<u64>, to: fn(&ResumeOutcome) -> Option<u64>| {
        Spread::of(
            outcomes
                .iter()
                .filter_map(|o| Some(to(o)?.saturating_sub(from(o)?)))
                .collect(),
        )
    };
    let not_resumed = outcomes
        .iter()
        .filter_map(|o| {
            let (from, ready) = o.not_resumed.clone()?;
            Some((o.index, from, ready))
        })
        .take(NOT_RESUMED_LISTED)
        .collect();
    let ready_us: Vec<u64> = outcomes.iter().filter_map(|o| o.ready_us).collect();
    let live_us: Vec<u64> = outcomes.iter().filter_map(|o| o.live_us).collect();
    let live = live_us.len() as u64;
    let all = |v: &[u64]| {
        (v.len() as u64 == n && n > 0).then(|| v.iter().copied().max().unwrap_or(0) as f64 / 1e6)
    };
    StormResult {
        sessions: n,
        gap_events_per_channel: 0,
        gap_events_posted: 0,
        gap_events_failed: 0,
        live,
        resumed_false: count(&|o| o.resumed == Some(false)),
        failed: count(&|o| o.failed.is_some()),
        failures,
        not_resumed,
        gateway_counters: BTreeMap::new(),
        gateway_sessions_open_held: None,
        gateway_sessions_open_at_storm: None,
        tcp_counters: BTreeMap::new(),
        upgrade: Spread::of(outcomes.iter().filter_map(|o| o.upgraded_us).collect()),
        slot_wait: step(|o| o.upgraded_us, |o| o.hello_us),
        start: step(|o| o.hello_us, |o| o.ready_us),
        replay: step(|o| o.ready_us, |o| o.live_us),
        all_ready_s: all(&ready_us),
        all_live_s: all(&live_us),
        live_series: series(&ready_us, &live_us),
        ready: Spread::of(ready_us),
        time_to_live: Spread::of(live_us),
        attempts: sum(&|o| o.attempts),
        retries: retry_reasons.values().sum(),
        refused_1013: retry_reasons.get("close 1013").copied().unwrap_or(0),
        retry_reasons,
        sessions_retried: count(&|o| o.attempts > 1),
        max_attempts: outcomes.iter().map(|o| o.attempts).max().unwrap_or(0),
        replay_expected: sum(&|o| o.expected),
        replayed: sum(&|o| o.replayed),
        repeated: sum(&|o| o.repeated),
        older: sum(&|o| o.older),
        rss_held_kib: 0,
        rss_dropped_kib: 0,
        rss_peak_kib: 0,
        rss_after_kib: 0,
        broker_rss_before_kib: None,
        broker_rss_peak_kib: None,
        window_seconds: 0.0,
        gateway_cpu_seconds: 0.0,
        gateway_cpu_ms_per_session: 0.0,
        broker_cpu_seconds: 0.0,
        database_cpu_seconds: 0.0,
        clients_cpu_seconds: 0.0,
        machine_cores_busy: 0.0,
        machine_cores_stolen: 0.0,
        loadavg_at_storm: 0.0,
        machine_wakeup_late_us: None,
        rss_series: Vec::new(),
    }
}

/// Sessions ready and live at every [`SERIES_STEP_MS`] of the storm, up to
/// the last one back.
fn series(ready_us: &[u64], live_us: &[u64]) -> Vec<LivePoint> {
    let end = ready_us.iter().chain(live_us).copied().max().unwrap_or(0);
    let step = SERIES_STEP_MS * 1000;
    let by = |v: &[u64], t: u64| v.iter().filter(|&&x| x <= t).count() as u64;
    (0..=end.div_ceil(step))
        .map(|k| {
            let t = k * step;
            LivePoint {
                t: t as f64 / 1e6,
                ready: by(ready_us, t),
                live: by(live_us, t),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(ready_ms: u64, live_ms: Option<u64>, retried: &[(&str, u32)]) -> ResumeOutcome {
        ResumeOutcome {
            attempts: 1 + retried.iter().map(|r| r.1).sum::<u32>(),
            retried: retried.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ready_us: Some(ready_ms * 1000),
            resumed: Some(live_ms.is_some()),
            expected: 1,
            replayed: u32::from(live_ms.is_some()),
            live_us: live_ms.map(|ms| ms * 1000),
            ..ResumeOutcome::default()
        }
    }

    #[test]
    fn adds_up_the_sessions() {
        let r = summarize(&[
            outcome(100, Some(150), &[]),
            outcome(900, Some(1_000), &[("close 1013", 2), ("eof", 1)]),
            outcome(300, None, &[]),
        ]);
        assert_eq!((r.sessions, r.live, r.resumed_false), (3, 2, 1));
        assert_eq!((r.retries, r.refused_1013, r.sessions_retried), (3, 2, 1));
        assert_eq!(r.max_attempts, 4);
        assert_eq!(r.all_ready_s, Some(0.9));
        assert_eq!(r.all_live_s, None, "one session never caught up");
        let l = r.time_to_live.unwrap();
        assert_eq!((l.p50_ms, l.max_ms), (150.0, 1000.0));
        let last = r.live_series.last().unwrap();
        assert_eq!((last.t, last.ready, last.live), (1.0, 3, 2));
        assert_eq!(
            r.live_series[2].ready, 1,
            "at 200 ms only the first was back"
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = Spread::of((1..=100).map(|ms| ms * 1000).collect()).unwrap();
        assert_eq!(
            (s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms),
            (50.0, 90.0, 99.0, 100.0)
        );
        assert!(Spread::of(Vec::new()).is_none());
    }
}
