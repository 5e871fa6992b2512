//! What `/proc` says about the machine (its size, for the report) and which
//! processes run by name. Memory and CPU figures are `measure`'s.

/// Pids of running processes whose command name is `name`.
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// What the benchmark ran on.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub mem_total_kib: u64,
    pub cpu_model: String,
    pub kernel: String,
    /// 1-minute load average when the run started: other work on the machine.
    pub loadavg_at_start: f64,
}

pub fn machine() -> Machine {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        mem_total_kib: meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|v| v.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into()),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
        loadavg_at_start: loadavg(),
    }
}

/// Counters of the kernel's TCP stack (`TcpExt` of `/proc/net/netstat`)
/// by name; a name the kernel does not have is left out.
pub fn tcp_ext(names: &[&str]) -> std::collections::BTreeMap<String, u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut rows = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(head), Some(values)) = (rows.next(), rows.next()) else {
        return Default::default();
    };
    head.split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
        .filter(|(k, _)| names.contains(k))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

/// The machine's 1-minute load average now.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_machine_and_finds_processes() {
        assert!(machine().nproc >= 1);
        let me = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert!(pids_named(me.trim_end()).contains(&std::process::id()));
        let tcp = tcp_ext(&["ListenOverflows", "NoSuchCounter"]);
        assert!(
            tcp.contains_key("ListenOverflows") && tcp.len() == 1,
            "{tcp:?}"
        );
    }
}
