//! The coordinator's side of the client processes: spawning them (the bench
//! binary itself, `clients` role), sending commands and collecting replies.

use crate::control::{Command, Reply, ResumeOutcome, ShardReport, System};
use crate::process::die_with_parent;
use futures_util::future::join_all;
use std::path::Path;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("starting client process {index}: {source}")]
    Spawn {
        index: usize,
        source: std::io::Error,
    },
    #[error("client process {index}: {source}")]
    Io {
        index: usize,
        source: std::io::Error,
    },
    #[error("client process {index} exited (see {log})")]
    Exited { index: usize, log: String },
    #[error("client process {index} answered {line:?}: {reason}")]
    BadReply {
        index: usize,
        line: String,
        reason: String,
    },
    #[error("client process {index} failed: {message}")]
    Failed { index: usize, message: String },
}

struct Shard {
    index: usize,
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    log: String,
}

impl Shard {
    async fn call(&mut self, cmd: &Command) -> Result<Reply, FleetError> {
        let index = self.index;
        let io = |source| FleetError::Io { index, source };
        let mut line = serde_json::to_string(cmd).expect("commands serialize");
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.map_err(io)?;
        self.stdin.flush().await.map_err(io)?;
        let Some(answer) = self.stdout.next_line().await.map_err(io)? else {
            return Err(FleetError::Exited {
                index,
                log: self.log.clone(),
            });
        };
        match serde_json::from_str(&answer) {
            Ok(Reply::Error { message }) => Err(FleetError::Failed { index, message }),
            Ok(r) => Ok(r),
            Err(e) => Err(FleetError::BadReply {
                index,
                line: answer,
                reason: e.to_string(),
            }),
        }
    }
}

/// The client processes of a run. Each has its own lock, so the
/// closed-loop driver can poll progress while the run talks to them too.
pub struct Fleet {
    shards: Vec<Mutex<Shard>>,
    pids: Vec<u32>,
}

/// Totals of [`Command::Progress`] over all processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub received: u64,
    pub held: u64,
}

/// Totals of [`Command::Open`] over all processes.
#[derive(Debug, Clone, Default)]
pub struct Opened {
    pub opened: usize,
    pub failed: usize,
    pub held: u64,
    pub errors: std::collections::BTreeMap<String, u64>,
}

impl Fleet {
    /// Starts `n` client processes of `exe`; their stderr goes to `log_dir`.
    pub async fn spawn(exe: &Path, n: usize, log_dir: &Path) -> Result<Fleet, FleetError> {
        let mut shards = Vec::with_capacity(n);
        let mut pids = Vec::with_capacity(n);
        for index in 0..n {
            let log = log_dir.join(format!("clients-{index}.log"));
            let file = std::fs::File::create(&log)
                .map_err(|source| FleetError::Spawn { index, source })?;
            let mut cmd = tokio::process::Command::new(exe);
            cmd.arg("clients")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(file)
                .kill_on_drop(true);
            die_with_parent(cmd.as_std_mut());
            let mut child = cmd
                .spawn()
                .map_err(|source| FleetError::Spawn { index, source })?;
            let stdin = child.stdin.take().expect("piped");
            let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
            pids.push(child.id().unwrap_or(0));
            shards.push(Mutex::new(Shard {
                index,
                child,
                stdin,
                stdout,
                log: log.display().to_string(),
            }));
        }
        Ok(Fleet { shards, pids })
    }

    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// Sends each process its own command (`make(i)`), all at once.
    pub async fn call_each(
        &self,
        make: impl Fn(usize) -> Command,
    ) -> Result<Vec<Reply>, FleetError> {
        let calls = self.shards.iter().enumerate().map(|(i, s)| {
            let cmd = make(i);
            async move { s.lock().await.call(&cmd).await }
        });
        join_all(calls).await.into_iter().collect()
    }

    pub async fn progress(&self) -> Result<Progress, FleetError> {
        let mut p = Progress::default();
        for r in self.call_each(|_| Command::Progress).await? {
            if let Reply::Progress { received, held } = r {
                p.received += received;
                p.held += held;
            }
        }
        Ok(p)
    }

    /// Opens `counts[i]` more sessions in process `i`.
    pub async fn open(
        &self,
        system: System,
        counts: &[usize],
        concurrency: usize,
        timeout_ms: u64,
    ) -> Result<Opened, FleetError> {
        let replies = self
            .call_each(|i| Command::Open {
                system,
                count: counts[i],
                concurrency,
                timeout_ms,
            })
            .await?;
        let mut total = Opened::default();
        for r in replies {
            if let Reply::Opened {
                opened,
                failed,
                held,
                errors,
            } = r
            {
                total.opened += opened;
                total.failed += failed;
                total.held += held;
                for (k, v) in errors {
                    *total.errors.entry(k).or_default() += v;
                }
            }
        }
        Ok(total)
    }

    pub async fn reset(&self) -> Result<(), FleetError> {
        self.call_each(|_| Command::Reset).await.map(|_| ())
    }

    pub async fn reports(&self) -> Result<Vec<ShardReport>, FleetError> {
        Ok(self
            .call_each(|_| Command::Report)
            .await?
            .into_iter()
            .filter_map(|r| match r {
                Reply::Report(r) => Some(r),
                _ => None,
            })
            .collect())
    }

    pub async fn close_sessions(&self) -> Result<(), FleetError> {
        self.call_each(|_| Command::Close).await.map(|_| ())
    }

    /// Drops every session without a close frame (see [`Command::Drop`]).
    pub async fn drop_sessions(&self) -> Result<(), FleetError> {
        self.call_each(|_| Command::Drop).await.map(|_| ())
    }

    /// Brings every dropped session back at once (see [`Command::Storm`]);
    /// the outcomes of all processes together.
    pub async fn storm(
        &self,
        start_us: i64,
        since_us: i64,
        gap_events: u32,
        timeout_ms: u64,
    ) -> Result<Vec<ResumeOutcome>, FleetError> {
        let replies = self
            .call_each(|_| Command::Storm {
                start_us,
                since_us,
                gap_events,
                timeout_ms,
            })
            .await?;
        Ok(replies
            .into_iter()
            .flat_map(|r| match r {
                Reply::Stormed { sessions } => sessions,
                _ => Vec::new(),
            })
            .collect())
    }

    /// Asks every process to exit, and waits a little for it.
    pub async fn shutdown(self) {
        for s in self.shards {
            let mut s = s.into_inner();
            let _ = s.stdin.write_all(b"{\"cmd\":\"quit\"}\n").await;
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.child.wait()).await;
        }
    }
}
