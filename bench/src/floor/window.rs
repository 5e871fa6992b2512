//! What a floor run reads over its measuring window: the processes' CPU
//! and sleeps, the machine's busy, stolen and late-waking cores, and the
//! pacing that fills the window.

use super::FloorArgs;
use super::FloorError;
use crate::latency::{now_us, LatencySummary};
use crate::measure;
use std::time::Duration;

/// CPU time and sleeps of a set of processes at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub cpu: Duration,
    pub sleeps: u64,
}

impl Usage {
    pub fn of(pids: &[u32]) -> Usage {
        Usage {
            cpu: measure::cpu_time_sum(pids),
            sleeps: measure::sleeps_sum(pids),
        }
    }

    /// CPU µs and sleeps per message since `earlier`.
    pub fn per_message_since(&self, earlier: &Usage, messages: u64) -> (f64, f64) {
        let n = messages.max(1) as f64;
        (
            (self.cpu - earlier.cpu).as_secs_f64() * 1e6 / n,
            (self.sleeps - earlier.sleeps) as f64 / n,
        )
    }
}

/// The machine over a window: busy and stolen cores, how late a 1 ms
/// sleep woke, and the load before.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct MachineWindow {
    pub busy_cores: f64,
    pub stolen_cores: f64,
    pub wakeup_late_us: Option<LatencySummary>,
    pub loadavg_at_start: f64,
}

impl MachineWindow {
    pub fn between(
        a: &measure::MachineCpu,
        b: &measure::MachineCpu,
        wakeup_late_us: Option<LatencySummary>,
        load: f64,
    ) -> Self {
        let wall =
            b.at.zip(a.at)
                .map_or(0.0, |(b, a)| b.duration_since(a).as_secs_f64());
        let cores = |d: Duration| d.as_secs_f64() / wall.max(1e-9);
        MachineWindow {
            busy_cores: cores(b.busy_since(a)),
            stolen_cores: cores(b.stolen_since(a)),
            wakeup_late_us,
            loadavg_at_start: load,
        }
    }

    pub fn line(&self) -> String {
        let late = self.wakeup_late_us.map_or("-".into(), |w| {
            format!("{:.2} / {:.2} ms", w.p99 as f64 / 1e3, w.max as f64 / 1e3)
        });
        format!(
            "machine: {:.2} busy / {:.2} stolen cores, wake-up late p99 / max {late}, load {:.2} at start",
            self.busy_cores, self.stolen_cores, self.loadavg_at_start
        )
    }
}

/// Paces messages as the latency scenario does: `warmup` seconds' worth,
/// then the window's, each at its due time.
pub struct Pacer {
    /// Message k's due time, from the workload's own pacing thread
    /// (`workload::pace`): tokio's timer counts whole milliseconds, which
    /// would send a dm run's 2,000 msg/s two at a time.
    due: tokio::sync::mpsc::UnboundedReceiver<u64>,
    stop: tokio_util::sync::CancellationToken,
    pub warmup: u64,
    pub window: u64,
}

impl Pacer {
    pub fn new(args: &FloorArgs) -> Pacer {
        let (tx, due) = tokio::sync::mpsc::unbounded_channel();
        let stop = tokio_util::sync::CancellationToken::new();
        let (start, rate, until) = (std::time::Instant::now(), args.rate, stop.clone());
        std::thread::spawn(move || crate::workload::pace(start, rate, tx, until));
        Pacer {
            due,
            stop,
            warmup: (args.warmup * args.rate) as u64,
            window: (args.seconds * args.rate) as u64,
        }
    }

    /// Waits until the next message is due; false once the pacing stopped.
    pub async fn tick(&mut self) -> bool {
        self.due.recv().await.is_some()
    }

    /// Sends `count` messages, each when it is due, given its send stamp.
    pub async fn send(
        &mut self,
        count: u64,
        mut send: impl FnMut(i64) -> Result<(), FloorError>,
    ) -> Result<(), FloorError> {
        for _ in 0..count {
            if !self.tick().await {
                break;
            }
            send(now_us())?;
        }
        Ok(())
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
