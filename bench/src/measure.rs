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

/// A KiB figure of `/proc/<pid>/status` (`field` with its colon).
fn status_kib(pid: u32, field: &'static str) -> Result<u64, ProcError> {
    let (text, path) = read(PathBuf::from(format!("/proc/{pid}/status")))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or(ProcError::Missing { path, field })
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

/// User plus system CPU time of a whole process (all its threads).
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

/// Summed CPU time of several processes; a process that is gone counts zero.
pub fn cpu_time_sum(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|&p| cpu_time(p).ok()).sum()
}

/// The machine's CPU time so far, summed over its cores: busy (user, nice,
/// system, interrupts) and stolen by the hypervisor; the rest was idle.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    pub busy: Duration,
    pub steal: Duration,
}

pub fn machine_cpu() -> MachineCpu {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return MachineCpu::default();
    };
    // user nice system idle iowait irq softirq steal guest guest_nice
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    let hz = clock_ticks_per_second();
    let time = |ticks: u64| Duration::from_micros(ticks * 1_000_000 / hz);
    MachineCpu {
        busy: time(at(0) + at(1) + at(2) + at(5) + at(6)),
        steal: time(at(7)),
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
            broker: broker.map_or(Duration::ZERO, |p| cpu_time_sum(&[p])),
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
        assert!(peak_rss_kib(me).unwrap() >= rss_kib(me).unwrap() / 2);
        let m = machine_cpu();
        assert!(m.busy > Duration::ZERO);
        let snap = CpuSnapshot::take(&[me], None, &[]);
        assert_eq!(snap.broker, Duration::ZERO);
    }

    #[test]
    fn cost_per_delivery() {
        assert_eq!(per_delivery(Duration::from_secs(1), 0), None);
        assert_eq!(per_delivery(Duration::from_millis(2), 1000), Some(2.0));
    }
}
