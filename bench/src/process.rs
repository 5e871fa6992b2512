//! Server processes the bench starts: output to a log file, never outliving
//! the bench (SIGKILL on drop, and when the bench itself dies).

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("starting {name} ({program}): {source}")]
    Spawn {
        name: String,
        program: String,
        source: std::io::Error,
    },
    #[error("opening the log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Makes the child receive SIGKILL when the bench dies, so no server keeps
/// holding ports after a killed run.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs in pre_exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program` with `env` added to the bench's environment less any
    /// OTAKO_*, OTEL_* and DATABASE_URL (so the caller's shell does not
    /// change what is measured).
    pub fn spawn(
        name: &str,
        program: impl AsRef<OsStr>,
        args: &[&str],
        env: &[(&str, String)],
        log: &Path,
    ) -> Result<Proc, ProcessError> {
        let file = File::create(log).map_err(|source| ProcessError::Log {
            path: log.to_path_buf(),
            source,
        })?;
        let err_file = file.try_clone().map_err(|source| ProcessError::Log {
            path: log.to_path_buf(),
            source,
        })?;
        let mut cmd = Command::new(program.as_ref());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err_file);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("OTAKO_") || k.starts_with("OTEL_") || k == "DATABASE_URL" {
                cmd.env_remove(&key);
            }
        }
        cmd.env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            name: name.to_owned(),
            program: program.as_ref().to_string_lossy().into_owned(),
            source,
        })?;
        Ok(Proc {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The last lines of the log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free TCP port on loopback (bound, read, released).
pub fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()
        .map(|a| a.port())
}

/// Raises this process's soft open-files limit to the hard one; children
/// (client processes, servers) inherit it.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}
