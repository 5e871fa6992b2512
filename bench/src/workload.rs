//! The message rate: open loop (a fixed number of messages per second,
//! round-robin over the channels) or closed loop (`max`: as fast as the
//! system delivers, keeping a window of messages not yet fully delivered,
//! judged from the client processes' receive counters).
//!
//! In the open-loop dispatch drive the rows are written ahead of time, in
//! batches ([`PREFILL_LEAD`]), each stamped with the time its dispatch request
//! is due; latency then runs from the dispatch request (the benchmark's
//! latency is "from the backend's commit, or the dispatch request"), and the
//! generator's inserts cost the shared machine one round trip per batch
//! instead of one per message. A request sent late still counts from its due
//! time, so a lagging generator shows as latency, never hides it.

use crate::driver::{ChannelTarget, DriveError, Prepared, Sender};
use crate::fleet::Fleet;
use crate::latency::now_us;
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Sends in flight at once, at most; past it the generator falls behind
/// (and says so in `max_lag_ms`).
const MAX_IN_FLIGHT: usize = 2048;
/// A closed loop that sees no delivery for this long stops waiting for the
/// missing ones.
const STALL: Duration = Duration::from_secs(2);
/// How long before its dispatch is due a prefilled row is written.
pub const PREFILL_LEAD: Duration = Duration::from_millis(250);
/// The rows of the messages due within this long go in one insert.
const PREFILL_BATCH: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    PerSecond(f64),
    /// Closed loop with this many messages' worth of deliveries outstanding.
    Max {
        window: u32,
    },
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Rate, String> {
        if s == "max" {
            return Ok(Rate::Max { window: 8 });
        }
        if let Some(w) = s.strip_prefix("max:") {
            return w
                .parse()
                .map(|window| Rate::Max { window })
                .map_err(|_| format!("bad window in {s:?}"));
        }
        match s.parse::<f64>() {
            Ok(r) if r > 0.0 => Ok(Rate::PerSecond(r)),
            _ => Err(format!(
                "rate must be messages per second or max[:window], not {s:?}"
            )),
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rate::PerSecond(r) => write!(f, "{r}/s"),
            Rate::Max { window } => write!(f, "max (window {window})"),
        }
    }
}

#[derive(Debug, Default, Serialize, Clone)]
pub struct SendSummary {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    /// How far the open-loop generator fell behind its schedule at worst.
    pub max_lag_ms: f64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    /// Counts one send and runs it on its own task, holding its in-flight
    /// permit until it is answered.
    fn spawn(
        self: &Arc<Counters>,
        permit: OwnedSemaphorePermit,
        send: impl Future<Output = Result<(), DriveError>> + Send + 'static,
    ) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let counters = self.clone();
        tokio::spawn(async move {
            match send.await {
                Ok(()) => counters.ok.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    *counters.errors.lock().entry(e.label()).or_default() += 1;
                    counters.failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            drop(permit);
        });
    }
}

pub struct Workload {
    pub rate: Rate,
    pub targets: Vec<ChannelTarget>,
    /// Deliveries each target's message should make (closed loop only).
    pub expected: Vec<f64>,
    pub payload_len: usize,
}

/// Sends until `stop`; returns what was sent.
pub async fn run(
    sender: Arc<Sender>,
    w: Workload,
    fleet: Arc<Fleet>,
    stop: CancellationToken,
) -> SendSummary {
    let counters = Arc::new(Counters::default());
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let targets: Arc<Vec<ChannelTarget>> = Arc::new(w.targets);
    let mut next = 0usize;
    let mut max_lag = Duration::ZERO;
    let send_one = |i: usize, permit: OwnedSemaphorePermit| {
        let (sender, targets) = (sender.clone(), targets.clone());
        let len = w.payload_len;
        counters.spawn(permit, async move { sender.send(&targets[i], len).await });
    };
    let start = Instant::now();
    match w.rate {
        Rate::PerSecond(rate) if sender.prefills() => {
            // Message k is due at start + k / rate; its row is written
            // PREFILL_LEAD before that, so the first ones start later.
            let start = Instant::now() + PREFILL_LEAD;
            let start_unix_us = now_us() + PREFILL_LEAD.as_micros() as i64;
            let (tx, mut rx) = mpsc::channel(((rate * 0.5) as usize).max(64));
            let prefill = tokio::spawn(prefill_loop(
                sender.clone(),
                targets.clone(),
                rate,
                (start, start_unix_us),
                w.payload_len,
                tx,
                stop.clone(),
            ));
            // Time is kept on a thread of its own: tokio's timer counts
            // whole milliseconds, which would send each message up to 2 ms
            // after its due time (and show that as latency).
            let (due_tx, mut due_rx) = mpsc::unbounded_channel();
            let pacer = {
                let (start, stop) = (start.into_std(), stop.clone());
                std::thread::spawn(move || pace(start, rate, due_tx, stop))
            };
            loop {
                let k = tokio::select! {
                    _ = stop.cancelled() => break,
                    k = due_rx.recv() => match k { Some(k) => k, None => break },
                };
                let scheduled = start + Duration::from_secs_f64(k as f64 / rate);
                let Some(prepared) = rx.recv().await else {
                    break;
                };
                let permit = permits.clone().acquire_owned().await.expect("open");
                max_lag = max_lag.max(Instant::now().saturating_duration_since(scheduled));
                let (sender, all) = (sender.clone(), targets.clone());
                let i = (k % targets.len() as u64) as usize;
                counters.spawn(permit, async move {
                    match prepared {
                        Ok(p) => sender.dispatch(&p, &all[i]).await,
                        Err(e) => Err(e),
                    }
                });
            }
            // The pacer ends by itself after its current sleep (stop is
            // set, or nobody listens): joining it here could block this
            // runtime thread for a whole gap between messages.
            drop((due_rx, pacer));
            prefill.abort();
        }
        Rate::PerSecond(rate) => {
            let mut sent = 0u64;
            while !stop.is_cancelled() {
                let due = (start.elapsed().as_secs_f64() * rate) as u64;
                while sent < due {
                    let scheduled = start + Duration::from_secs_f64(sent as f64 / rate);
                    let permit = permits.clone().acquire_owned().await.expect("open");
                    max_lag = max_lag.max(Instant::now().saturating_duration_since(scheduled));
                    send_one(next, permit);
                    next = (next + 1) % targets.len();
                    sent += 1;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        Rate::Max { window } => {
            let avg = w.expected.iter().sum::<f64>() / w.expected.len().max(1) as f64;
            let budget = avg * f64::from(window.max(1));
            let base = fleet.progress().await.map_or(0, |p| p.received);
            let mut expected_sent = 0.0f64;
            let mut last_received = 0u64;
            let mut last_progress = Instant::now();
            while !stop.is_cancelled() {
                let Ok(p) = fleet.progress().await else { break };
                let received = p.received.saturating_sub(base);
                if received != last_received {
                    last_received = received;
                    last_progress = Instant::now();
                } else if last_progress.elapsed() > STALL {
                    // Deliveries went missing (sessions closed?): stop waiting for them.
                    expected_sent = received as f64;
                    last_progress = Instant::now();
                }
                let mut inflight = expected_sent - received as f64;
                while inflight < budget && !stop.is_cancelled() {
                    let permit = permits.clone().acquire_owned().await.expect("open");
                    send_one(next, permit);
                    expected_sent += w.expected[next];
                    inflight += w.expected[next];
                    next = (next + 1) % targets.len();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    // Let the sends in flight finish (bounded), so their outcome is counted.
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        permits.acquire_many(MAX_IN_FLIGHT as u32),
    )
    .await;
    let errors = counters.errors.lock().clone();
    SendSummary {
        sent: counters.sent.load(Ordering::Relaxed),
        ok: counters.ok.load(Ordering::Relaxed),
        failed: counters.failed.load(Ordering::Relaxed),
        errors,
        max_lag_ms: max_lag.as_secs_f64() * 1e3,
    }
}

/// Writes the rows of the open-loop dispatch drive ahead of their due times,
/// in schedule order, and hands them to the send loop; a failed batch hands
/// over one error per message, so each counts as a failed send.
async fn prefill_loop(
    sender: Arc<Sender>,
    targets: Arc<Vec<ChannelTarget>>,
    rate: f64,
    (start, start_unix_us): (Instant, i64),
    payload_len: usize,
    tx: mpsc::Sender<Result<Prepared, DriveError>>,
    stop: CancellationToken,
) {
    let per_batch = ((rate * PREFILL_BATCH.as_secs_f64()).ceil() as u64).max(1);
    let mut k = 0u64;
    while !stop.is_cancelled() {
        let first_due = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(first_due.checked_sub(PREFILL_LEAD).unwrap_or(first_due)).await;
        let batch: Vec<(&ChannelTarget, i64)> = (k..k + per_batch)
            .map(|i| {
                let due_us = start_unix_us + (i as f64 * 1e6 / rate) as i64;
                (&targets[(i % targets.len() as u64) as usize], due_us)
            })
            .collect();
        let prepared: Vec<Result<Prepared, DriveError>> =
            match sender.prefill(&batch, payload_len).await {
                Ok(rows) => rows.into_iter().map(Ok).collect(),
                Err(e) => {
                    let why = e.to_string();
                    (0..per_batch)
                        .map(|_| Err(DriveError::Prefill(why.clone())))
                        .collect()
                }
            };
        for p in prepared {
            if tx.send(p).await.is_err() {
                return;
            }
        }
        k += per_batch;
    }
}

/// Hands over the index of each message at its due time (start + k / rate),
/// sleeping on the OS timer in between; late, it catches up at once. Ends
/// when `stop` is cancelled or nobody listens.
pub fn pace(
    start: std::time::Instant,
    rate: f64,
    due: mpsc::UnboundedSender<u64>,
    stop: CancellationToken,
) {
    let mut k = 0u64;
    while !stop.is_cancelled() {
        let at = start + Duration::from_secs_f64(k as f64 / rate);
        let now = std::time::Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        if due.send(k).is_err() {
            return;
        }
        k += 1;
    }
}
