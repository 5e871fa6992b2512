//! A process under test: its output goes to a log file, and it never outlives
//! the test (SIGKILL on drop, and when the test process itself dies).

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// Lines of each log printed when a test fails.
const TAIL_LINES: usize = 40;

pub struct Proc {
    name: String,
    child: Option<Child>,
    exit: Option<ExitStatus>,
    log: PathBuf,
}

impl Proc {
    /// Starts `program` with `args` and `env` added to a scrubbed copy of this
    /// process's environment (no inherited OTAKO_*, DATABASE_URL or OTEL_*
    /// variables, so a developer's shell cannot change what is tested).
    /// Output is appended to `log`, so a restarted process keeps one log.
    pub fn spawn(
        name: &str,
        program: impl AsRef<OsStr>,
        args: &[&str],
        env: &[(&str, String)],
        log: &Path,
    ) -> Proc {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).expect("creating the log directory");
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
        let _ = writeln!(
            file,
            "===== e2e: starting {name}: {} {} =====",
            program.as_ref().to_string_lossy(),
            args.join(" ")
        );
        let mut cmd = Command::new(program.as_ref());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("cloning the log handle"))
            .stderr(file);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("OTAKO_") || k.starts_with("OTEL_") || k == "DATABASE_URL" {
                cmd.env_remove(&key);
            }
        }
        // Plain-text logs, without terminal colour codes.
        cmd.env("NO_COLOR", "1");
        cmd.env(
            "RUST_LOG",
            std::env::var("OTAKO_E2E_RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        for (k, v) in env {
            cmd.env(k, v);
        }
        // If the test process dies (a killed `cargo test`), take the child
        // with it instead of leaving servers holding ports.
        // SAFETY: prctl is async-signal-safe; nothing else runs in pre_exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "starting {name} ({}): {e}",
                program.as_ref().to_string_lossy()
            )
        });
        Proc {
            name: name.to_owned(),
            child: Some(child),
            exit: None,
            log: log.to_path_buf(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: plain syscall on our own, not yet reaped, child.
            unsafe {
                libc::kill(pid as libc::pid_t, sig);
            }
        }
    }

    /// Sends `sig` (e.g. `libc::SIGSTOP`); panics if the process is gone.
    pub fn send_signal(&self, sig: libc::c_int) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        // SAFETY: a plain syscall on our own child, not yet reaped.
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// A field of the process's `/proc/<pid>/status` in KiB (`VmRSS`,
    /// `VmHWM`); panics if the process is gone.
    pub fn status_kib(&self, field: &str) -> u64 {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        proc_status_kib(pid, field)
    }

    /// Asks the process to shut down gracefully.
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.exit = child.wait().ok();
        }
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                self.exit = Some(status);
                self.child = None;
                false
            }
            _ => true,
        }
    }

    /// How the process ended, if it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.is_running();
        self.exit
    }

    /// Waits for the process to exit on its own; `None` if it still runs
    /// after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return self.exit;
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the process wrote so far.
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Panics with the log's tail when the process is no longer running;
    /// used while waiting for readiness.
    pub fn assert_running(&mut self) {
        if !self.is_running() {
            panic!(
                "{} exited ({:?}) early; log {}:\n{}",
                self.name,
                self.exit,
                self.log.display(),
                self.log_tail(TAIL_LINES)
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- last lines of {} ({}) -----\n{}\n----- end of {} -----",
                self.name,
                self.log.display(),
                self.log_tail(TAIL_LINES),
                self.name
            );
        }
        self.kill();
    }
}

/// Creates (or empties) a directory.
pub fn fresh_dir(path: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(path);
    std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    path.to_path_buf()
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{path} has no {field}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_its_own_resident_memory() {
        assert!(super::proc_status_kib(std::process::id(), "VmRSS") > 0);
    }
}
