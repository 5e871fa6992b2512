//! One session of a reconnect storm, in a client process: it comes back
//! with the last cursor its dropped session received, as a real client
//! does (retrying a refused start after a jittered backoff), and counts the
//! events it missed as the replay brings them, then stays connected.
//!
//! Its record says when it had READY, whether it resumed, and when the
//! last missed event arrived (times from the storm's start), so that the
//! coordinator can tell how long the storm took to be over.

use crate::control::ResumeOutcome;
use crate::latency::now_us;
use crate::sessions::{self, OtakoSession, Seen, SessionError, Tally};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

/// How long one attempt may take to reach READY. A start that waits for a
/// slot on the node is refused after 10 s, so this only ends attempts the
/// node lost track of.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// The protocol's reconnect backoff: full jitter over base × 2^failures,
/// capped (docs/protocol.md, "Close codes"; clients/js does the same).
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Closes after which a real client does not simply reconnect: a bad
/// token, a rejected frame, the user's session limit.
fn gives_up(e: &SessionError) -> bool {
    matches!(e, SessionError::Closed(4001 | 4004 | 4010))
}

/// One resuming session's record, shared by its task and its client
/// process; `done` tells the process once the session is live, not
/// resumed, or given up.
pub struct Record {
    pub outcome: ResumeOutcome,
    done: Option<UnboundedSender<()>>,
}

impl Record {
    pub fn new(index: u32, expected: u32, done: UnboundedSender<()>) -> Record {
        Record {
            outcome: ResumeOutcome {
                index,
                expected,
                ..ResumeOutcome::default()
            },
            done: Some(done),
        }
    }

    fn finish(&mut self) {
        if let Some(d) = self.done.take() {
            let _ = d.send(());
        }
    }
}

/// Counts a resumed session's missed events as they arrive. Missed events
/// are told apart by their send stamp (the gap's messages were all sent at
/// or after `since_us`), and a repeat by its history position: today's
/// cursors are `<epoch>.<seq>`, and every event a session gets must come
/// after the cursor it resumed from and after the one before it.
pub struct CatchUp {
    since_us: i64,
    start_us: i64,
    last_seq: Option<u64>,
    record: Arc<Mutex<Record>>,
}

fn seq_of(cursor: &str) -> Option<u64> {
    cursor.rsplit_once('.')?.1.parse().ok()
}

impl CatchUp {
    /// An event frame with its cursor and send stamp.
    pub fn event(&mut self, cursor: Option<&str>, stamp: Option<i64>) {
        let mut r = self.record.lock();
        if let Some(seq) = cursor.and_then(seq_of) {
            if self.last_seq.is_some_and(|last| seq <= last) {
                r.outcome.repeated += 1;
            }
            self.last_seq = Some(seq);
        }
        if stamp.is_some_and(|s| s >= self.since_us) {
            r.outcome.replayed += 1;
        } else {
            r.outcome.older += 1;
        }
        if r.outcome.live_us.is_none() && r.outcome.replayed >= r.outcome.expected {
            r.outcome.live_us = Some(since(self.start_us));
            r.finish();
        }
    }
}

/// Microseconds from `start_us` to `at_us` (both unix µs).
fn between(start_us: i64, at_us: i64) -> u64 {
    (at_us - start_us).max(0) as u64
}

fn since(start_us: i64) -> u64 {
    between(start_us, now_us())
}

/// What a resuming session needs besides its connection details.
#[derive(Debug, Clone, Copy)]
pub struct Storm {
    /// When the storm started (unix µs): its times count from here.
    pub start_us: i64,
    /// The missed events were sent at or after this (unix µs).
    pub since_us: i64,
    /// Past this, a session that is not back is given up.
    pub deadline: Instant,
}

/// Comes back from the cursor in `s.cursor`, then holds the session until
/// `stop`.
pub async fn run(
    s: OtakoSession,
    storm: Storm,
    tally: &Tally,
    stop: CancellationToken,
    record: Arc<Mutex<Record>>,
) {
    let from = s.cursor.lock().clone();
    let mut failures = 0u32;
    let (mut conn, ready) = loop {
        record.lock().outcome.attempts += 1;
        let left = storm.deadline.saturating_duration_since(Instant::now());
        let why = match timeout(
            ATTEMPT_TIMEOUT.min(left),
            sessions::otako_start(&s, Some(&from)),
        )
        .await
        {
            Ok(Ok(x)) => break x,
            Ok(Err(e)) if gives_up(&e) => {
                let mut r = record.lock();
                r.outcome.failed = Some(e.label());
                r.finish();
                return;
            }
            Ok(Err(e)) => e.label(),
            Err(_) => SessionError::Timeout.label(),
        };
        let ceiling = BACKOFF_MAX.min(BACKOFF_BASE * 2u32.pow(failures.min(6)));
        failures += 1;
        let wait = ceiling.mul_f64(rand::random::<f64>());
        {
            let mut r = record.lock();
            *r.outcome.retried.entry(why.clone()).or_default() += 1;
            if Instant::now() + wait >= storm.deadline {
                r.outcome.failed = Some(why);
                r.finish();
                return;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => {
                let mut r = record.lock();
                r.outcome.failed = Some("closed by the bench".into());
                r.finish();
                return;
            }
            _ = tokio::time::sleep(wait) => {}
        }
    };
    tally
        .held
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let catch_up = {
        let mut r = record.lock();
        let o = &mut r.outcome;
        o.upgraded_us = Some(between(storm.start_us, ready.upgraded_us));
        o.hello_us = Some(between(storm.start_us, ready.hello_us));
        o.ready_us = Some(between(storm.start_us, ready.ready_us));
        o.resumed = Some(ready.resumed);
        if !ready.resumed {
            o.not_resumed = Some((from.clone(), ready.cursor.clone()));
        }
        *s.cursor.lock() = ready.cursor;
        if !ready.resumed {
            // A fresh session gets no replay: the client would refetch over
            // HTTP instead. It is back, but not caught up.
            r.finish();
            None
        } else if r.outcome.expected == 0 {
            r.outcome.live_us = r.outcome.ready_us;
            r.finish();
            None
        } else {
            Some(CatchUp {
                since_us: storm.since_us,
                start_us: storm.start_us,
                last_seq: seq_of(&from),
                record: record.clone(),
            })
        }
    };
    let mut seen = Seen::new(s.cursor, catch_up);
    let why = sessions::hold(&mut conn, ready.interval, tally, &stop, &mut seen).await;
    let mut r = record.lock();
    if r.done.is_some() {
        r.outcome.failed = Some(format!("ended before the replay was in: {why}"));
        r.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_missed_events_and_repeats() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let record = Arc::new(Mutex::new(Record::new(0, 2, tx)));
        let mut c = CatchUp {
            since_us: 1_000,
            start_us: 0,
            last_seq: seq_of("ep.10"),
            record: record.clone(),
        };
        // An event sent before the gap that the old session never got.
        c.event(Some("ep.11"), Some(900));
        c.event(Some("ep.12"), Some(1_000));
        assert!(rx.try_recv().is_err(), "one of two missed events so far");
        // The same position again: a repeat, though it is counted in.
        c.event(Some("ep.12"), Some(1_000));
        assert!(rx.try_recv().is_ok());
        let r = record.lock();
        assert_eq!(
            (r.outcome.replayed, r.outcome.older, r.outcome.repeated),
            (2, 1, 1)
        );
        assert!(r.outcome.live_us.is_some());
        assert_eq!(seq_of("opaque"), None);
    }
}
