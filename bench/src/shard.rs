//! A client process (`otako-bench clients`): holds its share of the
//! sessions and answers the coordinator's commands (see [`crate::control`]).
//! One process holds at most what its open-files limit allows, so a large
//! run uses several.

use crate::control::{Command, Reply, ResumeOutcome, SessionSpec, System};
use crate::resuming::{self, Record};
use crate::sessions::{self, CursorSlot, OtakoSession, PeerSession, Tally};
use otako_common::token::{Claims, TokenKey};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("reading commands: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad command {line:?}: {source}")]
    BadCommand {
        line: String,
        source: serde_json::Error,
    },
}

/// Token lifetime: longer than any run.
const TOKEN_TTL_SECS: i64 = 6 * 3600;

struct Setup {
    key: TokenKey,
    username_prefix: String,
    gateways: Vec<SocketAddr>,
    peer: Option<SocketAddr>,
    sessions: Vec<SessionSpec>,
}

struct Shard {
    setup: Option<Setup>,
    tally: Arc<Tally>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    /// Next session of the list to open, per system.
    next: BTreeMap<&'static str, usize>,
    /// Each Otako session opened so far (its place in the list) and its
    /// last cursor, which outlives the session for a resume.
    cursors: Vec<(usize, CursorSlot)>,
}

/// Serves commands from stdin until `quit` or end of input.
pub async fn serve_stdio() -> Result<(), ShardError> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    let mut shard = Shard {
        setup: None,
        tally: Arc::new(Tally::default()),
        stop: CancellationToken::new(),
        tasks: JoinSet::new(),
        next: BTreeMap::new(),
        cursors: Vec::new(),
    };
    while let Some(line) = lines.next_line().await? {
        let cmd: Command =
            serde_json::from_str(&line).map_err(|source| ShardError::BadCommand {
                line: line.clone(),
                source,
            })?;
        if matches!(cmd, Command::Quit) {
            break;
        }
        let reply = shard.handle(cmd).await;
        let mut text = serde_json::to_string(&reply).expect("replies serialize");
        text.push('\n');
        out.write_all(text.as_bytes()).await?;
        out.flush().await?;
    }
    shard.stop.cancel();
    Ok(())
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|e| format!("bad address {s:?}: {e}"))
}

impl Shard {
    async fn handle(&mut self, cmd: Command) -> Reply {
        match cmd {
            Command::Init {
                secret,
                username_prefix,
                gateways,
                peer,
                sessions,
            } => {
                let gateways = match gateways.iter().map(|g| parse_addr(g)).collect() {
                    Ok(g) => g,
                    Err(message) => return Reply::Error { message },
                };
                let peer = match peer.as_deref().map(parse_addr).transpose() {
                    Ok(p) => p,
                    Err(message) => return Reply::Error { message },
                };
                self.setup = Some(Setup {
                    key: TokenKey::new(&secret),
                    username_prefix,
                    gateways,
                    peer,
                    sessions,
                });
                Reply::Ok
            }
            Command::Open {
                system,
                count,
                concurrency,
                timeout_ms,
            } => self
                .open(
                    system,
                    count,
                    concurrency,
                    Duration::from_millis(timeout_ms),
                )
                .await
                .unwrap_or_else(|message| Reply::Error { message }),
            Command::Progress => Reply::Progress {
                received: self.tally.received_total.load(Ordering::Relaxed),
                held: self.tally.held.load(Ordering::Relaxed),
            },
            Command::Reset => {
                self.tally.reset_window();
                Reply::Ok
            }
            Command::Report => match self.tally.report() {
                Ok(r) => Reply::Report(r),
                Err(e) => Reply::Error {
                    message: e.to_string(),
                },
            },
            Command::Close => {
                self.stop.cancel();
                let all_ended = async { while self.tasks.join_next().await.is_some() {} };
                let _ = tokio::time::timeout(Duration::from_secs(10), all_ended).await;
                self.tasks.abort_all();
                self.tally.clear_ended();
                self.stop = CancellationToken::new();
                Reply::Ok
            }
            Command::Drop => {
                // Aborting a task drops its socket unsent-to: the kernel
                // closes it, and the server sees the connection end without
                // a close frame. Aborted tasks do not count themselves out.
                self.tasks.abort_all();
                while self.tasks.join_next().await.is_some() {}
                self.tally.held.store(0, Ordering::Relaxed);
                Reply::Ok
            }
            Command::Storm {
                start_us,
                since_us,
                gap_events,
                timeout_ms,
            } => self
                .storm(
                    resuming::Storm {
                        start_us,
                        since_us,
                        deadline: tokio::time::Instant::now() + Duration::from_millis(timeout_ms),
                    },
                    gap_events,
                )
                .await
                .unwrap_or_else(|message| Reply::Error { message }),
            Command::Quit => Reply::Ok,
        }
    }

    /// Starts every dropped session again at once, each from its cursor,
    /// and waits until each has an outcome (or the storm's deadline).
    async fn storm(&mut self, storm: resuming::Storm, gap_events: u32) -> Result<Reply, String> {
        let setup = self.setup.as_ref().ok_or("init first")?;
        let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
        let expires_at = chrono::Utc::now().timestamp() + TOKEN_TTL_SECS;
        let mut records = Vec::with_capacity(self.cursors.len());
        for (at, cursor) in &self.cursors {
            // A session that never had READY has nothing to resume from.
            if cursor.lock().is_empty() {
                continue;
            }
            let spec = &setup.sessions[*at];
            let expected = gap_events * spec.channels.len() as u32;
            let record = Arc::new(Mutex::new(Record::new(
                spec.index,
                expected,
                done_tx.clone(),
            )));
            records.push(record.clone());
            let s = otako_session(setup, spec, cursor.clone(), expires_at);
            let (tally, stop) = (self.tally.clone(), self.stop.clone());
            self.tasks.spawn(async move {
                resuming::run(s, storm, &tally, stop, record).await;
            });
        }
        drop(done_tx);
        let all_done = async {
            for _ in 0..records.len() {
                if done.recv().await.is_none() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout_at(storm.deadline, all_done).await;
        let sessions: Vec<ResumeOutcome> = records
            .iter()
            .map(|r| {
                let mut o = r.lock().outcome.clone();
                if o.live_us.is_none() && o.resumed != Some(false) && o.failed.is_none() {
                    o.failed = Some("not live by the deadline".into());
                }
                o
            })
            .collect();
        Ok(Reply::Stormed { sessions })
    }

    async fn open(
        &mut self,
        system: System,
        count: usize,
        concurrency: usize,
        ready_timeout: Duration,
    ) -> Result<Reply, String> {
        let setup = self.setup.as_ref().ok_or("init first")?;
        let from = *self.next.get(system.label()).unwrap_or(&0);
        let to = (from + count).min(setup.sessions.len());
        self.next.insert(system.label(), to);
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut waits = Vec::with_capacity(to - from);
        let expires_at = chrono::Utc::now().timestamp() + TOKEN_TTL_SECS;
        for (at, spec) in setup.sessions.iter().enumerate().take(to).skip(from) {
            let permit = permits.clone().acquire_owned().await.expect("never closed");
            let (tx, rx) = oneshot::channel();
            let (tally, stop) = (self.tally.clone(), self.stop.clone());
            let bind = sessions::source_address(spec.index);
            match system {
                System::Otako => {
                    let cursor = CursorSlot::default();
                    self.cursors.push((at, cursor.clone()));
                    let s = otako_session(setup, spec, cursor, expires_at);
                    self.tasks.spawn(async move {
                        sessions::run_otako(s, &tally, stop, tx, ready_timeout).await;
                    });
                }
                System::Peer => {
                    let s = PeerSession {
                        addr: setup.peer.ok_or("no peer address was given")?,
                        bind,
                        subjects: spec.channels.iter().map(|c| peer_subject(*c)).collect(),
                    };
                    self.tasks.spawn(async move {
                        sessions::run_peer(s, &tally, stop, tx, ready_timeout).await;
                    });
                }
            }
            waits.push(tokio::spawn(async move {
                let r = rx.await.unwrap_or_else(|_| Err("task ended".into()));
                drop(permit);
                r
            }));
        }
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let (mut opened, mut failed) = (0, 0);
        for w in waits {
            match w.await.unwrap_or_else(|e| Err(e.to_string())) {
                Ok(()) => opened += 1,
                Err(e) => {
                    failed += 1;
                    *errors.entry(e).or_default() += 1;
                }
            }
        }
        // Reap the tasks of sessions that failed to start.
        while self.tasks.try_join_next().is_some() {}
        Ok(Reply::Opened {
            opened,
            failed,
            held: self.tally.held.load(Ordering::Relaxed),
            errors,
        })
    }
}

/// Session `spec` of the list, with a fresh token.
fn otako_session(
    setup: &Setup,
    spec: &SessionSpec,
    cursor: CursorSlot,
    expires_at: i64,
) -> OtakoSession {
    let username = format!("{}{}", setup.username_prefix, spec.index);
    let token = setup.key.sign(&Claims {
        user_id: spec.user_id,
        username,
        generation: 0,
        expires_at,
    });
    OtakoSession {
        addr: setup.gateways[spec.gateway as usize % setup.gateways.len()],
        bind: sessions::source_address(spec.index),
        token,
        cursor,
    }
}

/// The peer's subject for channel `c`.
pub fn peer_subject(c: u32) -> String {
    format!("bench.c{c}")
}
