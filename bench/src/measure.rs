//! Snapshots of what a run costs: resident memory and CPU time of the
//! processes under test, of the broker, the clients, the generator and the
//! database, and of the machine as a whole, read from `/proc`.

use crate::procfs::pids_named;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} has no {field}")]
    Missing { path: PathBuf, field: &'static str },
}

fn read(path: PathBuf) -> Result<(String, PathBuf), ProcError> {
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok((s, path)),
        Err(source) => Err(ProcError::Read { path, source }),
    }
}

/// The number that follows `field` (with its colon) in a `status` file's text.
fn status_number(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// A KiB figure of `/proc/<pid>/status` (`field` with its colon).
fn status_kib(pid: u32, field: &'static str) -> Result<u64, ProcError> {
    let (text, path) = read(PathBuf::from(format!("/proc/{pid}/status")))?;
    status_number(&text, field).ok_or(ProcError::Missing { path, field })
}

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, ProcError> {
    status_kib(pid, "VmRSS:")
}

/// The highest `VmRSS` of a process since it started or since
/// [`reset_peak_rss`] (`VmHWM`), in KiB: the kernel keeps it, so no peak
/// between two samples is missed.
pub fn peak_rss_kib(pid: u32) -> Result<u64, ProcError> {
    status_kib(pid, "VmHWM:")
}

/// Sets a process's `VmHWM` back to its current RSS (writing 5 to
/// `/proc/<pid>/clear_refs`, Linux 4.0 and later).
pub fn reset_peak_rss(pid: u32) -> Result<(), ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/clear_refs"));
    std::fs::write(&path, "5").map_err(|source| ProcError::Write { path, source })
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// User plus system CPU time of a whole process (all its threads, those
/// that ended included). The sum is exact: the kernel scales its tick-sampled
/// `utime` and `stime` to the scheduler's runtime in nanoseconds (it matched
/// the threads' `schedstat` within 0.2 % here). The split between the two is
/// not: on this kernel (`TICK_CPU_ACCOUNTING`, 100 Hz) a tick lands at the
/// same point of a 1 ms-paced workload's cycle all run long, and the kernel's
/// share read 24 %, 30 % and 50 % in three runs of the same tree. So the
/// bench reports only the sum.
pub fn cpu_time(pid: u32) -> Result<Duration, ProcError> {
    let (text, path) = read(PathBuf::from(format!("/proc/{pid}/stat")))?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'. Then: state(3) ppid(4) ... utime(14) stime(15).
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    let (Some(utime), Some(stime)) = (tick(11), tick(12)) else {
        return Err(ProcError::Missing {
            path,
            field: "utime/stime",
        });
    };
    let hz = clock_ticks_per_second();
    Ok(Duration::from_micros((utime + stime) * 1_000_000 / hz))
}

/// How often a process's threads went to sleep of their own accord
/// (`voluntary_ctxt_switches`, summed over `/proc/<pid>/task/*`): each is a
/// wake-up later, so per event it counts the wake-ups the event costs.
/// `/proc/<pid>/status` alone counts only the main thread.
pub fn sleeps(pid: u32) -> Result<u64, ProcError> {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    let tasks = std::fs::read_dir(&dir).map_err(|source| ProcError::Read { path: dir, source })?;
    let mut sum = 0;
    for task in tasks.flatten() {
        // A thread that ends between the listing and the read counts zero.
        let Ok(text) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        sum += status_number(&text, "voluntary_ctxt_switches:").unwrap_or(0);
    }
    Ok(sum)
}

/// Summed sleeps of several processes; a process that is gone counts zero.
pub fn sleeps_sum(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| sleeps(p).ok()).sum()
}

/// Summed CPU time of several processes; a process that is gone counts zero.
pub fn cpu_time_sum(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|&p| cpu_time(p).ok()).sum()
}

/// The machine's idle and stolen time so far, summed over its cores, and
/// when they were read. Busy time is what is neither, over the wall clock:
/// the kernel measures idle time exactly (`NO_HZ` keeps it in nanoseconds)
/// but samples the busy columns of `/proc/stat` at each 100 Hz tick, and on a
/// 1 ms-paced workload those aliased: one run read 0.28 cores busy while its
/// gateways alone ran 0.34.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    /// Idle and waiting for I/O.
    pub idle: Duration,
    pub steal: Duration,
    /// Online cores; zero when `/proc/stat` could not be read.
    pub cores: u32,
    pub at: Option<std::time::Instant>,
}

impl MachineCpu {
    /// Whether `/proc/stat` was read.
    pub fn read(&self) -> bool {
        self.cores > 0
    }

    /// CPU time the machine was busy between `earlier` and this reading.
    pub fn busy_since(&self, earlier: &MachineCpu) -> Duration {
        let (Some(now), Some(then)) = (self.at, earlier.at) else {
            return Duration::ZERO;
        };
        (now.duration_since(then) * self.cores)
            .saturating_sub(self.idle.saturating_sub(earlier.idle))
            .saturating_sub(self.steal.saturating_sub(earlier.steal))
    }

    pub fn stolen_since(&self, earlier: &MachineCpu) -> Duration {
        self.steal.saturating_sub(earlier.steal)
    }
}

pub fn machine_cpu() -> MachineCpu {
    let at = std::time::Instant::now();
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return MachineCpu::default();
    };
    let cores = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count() as u32;
    // user nice system idle iowait irq softirq steal guest guest_nice
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let field = |i: usize| f.get(i).copied().unwrap_or(0);
    let hz = clock_ticks_per_second();
    let time = |ticks: u64| Duration::from_micros(ticks * 1_000_000 / hz);
    MachineCpu {
        idle: time(field(3) + field(4)),
        steal: time(field(7)),
        cores,
        at: Some(at),
    }
}

/// Summed `VmRSS` of several processes, in KiB; a process that is gone
/// counts zero.
pub fn rss_sum_kib(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| rss_kib(p).ok()).sum()
}

/// The servers' summed memory once it stops moving (within 0.5 % over half
/// a second; at most five seconds of waiting), in KiB.
pub async fn settled_rss_kib(pids: &[u32]) -> u64 {
    let mut last = rss_sum_kib(pids);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss_sum_kib(pids);
        if now.abs_diff(last) * 200 <= last.max(1) {
            return now;
        }
        last = now;
    }
    last
}

/// CPU time so far of every party to a run, taken at both ends of the
/// measured window.
pub struct CpuSnapshot {
    pub server: Duration,
    /// How often the server's and the broker's threads slept.
    pub server_sleeps: u64,
    pub broker_sleeps: u64,
    pub broker: Duration,
    pub clients: Duration,
    /// This process: the load generator.
    pub generator: Duration,
    pub database: Duration,
    pub machine: MachineCpu,
}

impl CpuSnapshot {
    pub fn take(server: &[u32], broker: Option<u32>, clients: &[u32]) -> CpuSnapshot {
        CpuSnapshot {
            server: cpu_time_sum(server),
            server_sleeps: sleeps_sum(server),
            broker: cpu_time_sum(broker.as_slice()),
            broker_sleeps: sleeps_sum(broker.as_slice()),
            clients: cpu_time_sum(clients),
            generator: cpu_time_sum(&[std::process::id()]),
            // Backends that end inside the window take their time with them;
            // the pools keep theirs open, so that is little.
            database: cpu_time_sum(&pids_named("postgres")),
            machine: machine_cpu(),
        }
    }
}

/// CPU time per delivery in microseconds; `None` when nothing was delivered.
pub fn per_delivery(d: Duration, deliveries: u64) -> Option<f64> {
    (deliveries > 0).then(|| d.as_secs_f64() * 1e6 / deliveries as f64)
}

/// A count per delivery; `None` when nothing was delivered.
pub fn per_count(n: u64, deliveries: u64) -> Option<f64> {
    (deliveries > 0).then(|| n as f64 / deliveries as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        // A process that is gone counts zero; this process's RSS moves while
        // other tests run, so the sum is only checked to be near a read of it.
        let before = rss_kib(me).unwrap();
        let sum = rss_sum_kib(&[me, u32::MAX]);
        assert!(
            sum.abs_diff(before) <= before / 4,
            "{sum} KiB, RSS {before} KiB"
        );
        assert_eq!(rss_sum_kib(&[u32::MAX]), 0);
        let _ = cpu_time(me).unwrap();
        // The test harness's threads have blocked at least once by now.
        assert!(sleeps(me).unwrap() > 0);
        assert_eq!(sleeps_sum(&[u32::MAX]), 0);
        assert!(peak_rss_kib(me).unwrap() >= rss_kib(me).unwrap() / 2);
        let m = machine_cpu();
        assert!(m.read());
        // Busy this test's own work at least, and no more than all cores.
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {}
        let later = machine_cpu();
        let busy = later.busy_since(&m);
        assert!(busy <= later.at.unwrap().duration_since(m.at.unwrap()) * later.cores);
        assert_eq!(MachineCpu::default().busy_since(&m), Duration::ZERO);
        let snap = CpuSnapshot::take(&[me], None, &[]);
        assert_eq!(snap.broker, Duration::ZERO);
    }

    #[test]
    fn cost_per_delivery() {
        assert_eq!(per_delivery(Duration::from_secs(1), 0), None);
        assert_eq!(per_delivery(Duration::from_millis(2), 1000), Some(2.0));
        assert_eq!(per_count(5, 0), None);
        assert_eq!(per_count(5, 10), Some(0.5));
    }
}
