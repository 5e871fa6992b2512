//! The part of a session the hub holds: its outbound queue, how to wake its
//! task, and how to stop it.

use crate::clock::now_ms;
use crate::frame::Frame;
use otako_common::close::CloseCode;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// A queue that grew past this many slots during a burst is given back once
/// it drains, so a session that was busy once does not keep the memory.
const KEEP_QUEUE_SLOTS: usize = 16;

/// What the hub knows of one session.
///
/// The queue is a `VecDeque` under a lock rather than a tokio `mpsc`
/// channel: a channel costs about 800 bytes per session before the first
/// frame (its cache-padded shared state plus a first block of 32 slots),
/// and most sessions are idle; an empty `VecDeque` allocates nothing. One
/// `Notify` wakes the task for frames, kicks and missed heartbeats alike,
/// so the idle task waits on it and on its socket only.
#[derive(Debug)]
pub struct SessionHandle {
    pub id: u64,
    pub user_id: i64,
    pub token_generation: i32,
    /// When the session's token expires (unix seconds).
    pub token_expires_at: i64,
    /// Why the node closes the session, once it decided to (0: not yet).
    kick_code: AtomicU16,
    /// When the session has missed its heartbeat ([`now_ms`]); never until
    /// the session is ready.
    heartbeat_deadline_ms: AtomicU64,
    /// Frames not yet taken by the session's task; `None` once it ended.
    queue: Mutex<Option<VecDeque<Arc<Frame>>>>,
    wake: Notify,
}

impl SessionHandle {
    pub fn new(id: u64, user_id: i64, token_generation: i32, token_expires_at: i64) -> Self {
        SessionHandle {
            id,
            user_id,
            token_generation,
            token_expires_at,
            kick_code: AtomicU16::new(0),
            heartbeat_deadline_ms: AtomicU64::new(u64::MAX),
            queue: Mutex::new(Some(VecDeque::new())),
            wake: Notify::new(),
        }
    }

    /// Asks the session's task to close with `code`. The first reason wins;
    /// later ones change nothing. `Restart` makes the task send op 7 first.
    pub fn kick(&self, code: CloseCode) {
        if self
            .kick_code
            .compare_exchange(0, code.code(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.wake.notify_one();
        }
    }

    /// Why the session was kicked, if it was.
    pub fn kicked(&self) -> Option<CloseCode> {
        CloseCode::from_code(self.kick_code.load(Ordering::Acquire))
    }

    /// Resolves when there may be something for the session's task to do:
    /// frames queued, or a kick. A wake-up can find nothing (frames already
    /// taken), so callers check.
    pub fn woken(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// Moves the heartbeat deadline to `within` from now.
    pub fn heartbeat_due_within(&self, within: Duration) {
        let at = now_ms().saturating_add(within.as_millis() as u64);
        self.heartbeat_deadline_ms.store(at, Ordering::Relaxed);
    }

    pub fn heartbeat_overdue(&self, now_ms: u64) -> bool {
        self.heartbeat_deadline_ms.load(Ordering::Relaxed) < now_ms
    }

    /// Queues a frame without waiting; a full queue marks the session too slow.
    pub fn offer(&self, frame: &Arc<Frame>, capacity: usize) -> bool {
        let mut queue = self.queue.lock();
        let Some(q) = queue.as_mut() else {
            return false; // the session has ended
        };
        if q.len() >= capacity {
            drop(queue);
            if self.kicked().is_none() {
                metrics::counter!("otako_slow_client_closes_total").increment(1);
            }
            self.kick(CloseCode::TooSlow);
            return false;
        }
        let was_empty = q.is_empty();
        q.push_back(frame.clone());
        drop(queue);
        // The task takes everything it finds when woken (or wakes itself
        // for the rest, see `take`), so only the first frame needs a wake-up.
        if was_empty {
            self.wake.notify_one();
        }
        true
    }

    /// Moves up to `max` queued frames into `into`, oldest first. If more
    /// are left, the task is woken again for them.
    pub fn take(&self, max: usize, into: &mut Vec<Arc<Frame>>) {
        let mut queue = self.queue.lock();
        let Some(q) = queue.as_mut() else { return };
        let n = q.len().min(max);
        into.extend(q.drain(..n));
        if !q.is_empty() {
            drop(queue);
            self.wake.notify_one();
        } else if q.capacity() > KEEP_QUEUE_SLOTS {
            *q = VecDeque::new();
        }
    }

    /// Whether frames are waiting.
    pub fn has_queued(&self) -> bool {
        self.queue.lock().as_ref().is_some_and(|q| !q.is_empty())
    }

    /// Drops what is queued and refuses further frames.
    pub fn close(&self) {
        *self.queue.lock() = None;
    }

    #[cfg(test)]
    pub fn queue_capacity(&self) -> Option<usize> {
        self.queue.lock().as_ref().map(VecDeque::capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use otako_common::history::Cursor;
    use serde_json::value::RawValue;

    fn frame(seq: u64) -> Arc<Frame> {
        let d = RawValue::from_string("{}".to_owned()).unwrap();
        Arc::new(Frame::new("M", &d, &Cursor::new("e", seq)))
    }

    fn woken_now(h: &SessionHandle) -> bool {
        h.woken().now_or_never().is_some()
    }

    #[test]
    fn a_burst_wakes_the_task_once_and_a_partial_take_wakes_it_again() {
        let h = SessionHandle::new(1, 10, 0, i64::MAX);
        assert!(!woken_now(&h), "nothing queued yet");
        for i in 0..40 {
            assert!(h.offer(&frame(i), 100));
        }
        assert!(woken_now(&h));
        assert!(!woken_now(&h), "one wake-up for the whole burst");
        let mut frames = Vec::new();
        h.take(32, &mut frames);
        assert_eq!(frames.len(), 32);
        assert!(woken_now(&h), "eight frames are left: the task comes back");
        frames.clear();
        h.take(32, &mut frames);
        assert_eq!(frames.len(), 8);
        assert!(!woken_now(&h));
        assert!(!h.has_queued());
        // The queue grew to 64 slots for the burst; drained, it lets them go.
        assert_eq!(h.queue_capacity(), Some(0));
    }

    #[test]
    fn kicks_wake_the_task_and_the_first_reason_wins() {
        let h = SessionHandle::new(1, 10, 0, i64::MAX);
        h.kick(CloseCode::AuthFailed);
        h.kick(CloseCode::TooSlow);
        assert!(woken_now(&h));
        assert_eq!(h.kicked(), Some(CloseCode::AuthFailed));
    }

    #[test]
    fn overflow_kicks_and_an_ended_session_takes_no_more_frames() {
        let h = SessionHandle::new(1, 10, 0, i64::MAX);
        assert!(h.offer(&frame(1), 1));
        assert!(!h.offer(&frame(2), 1));
        assert_eq!(h.kicked(), Some(CloseCode::TooSlow));
        h.close();
        assert!(!h.offer(&frame(3), 8));
        assert!(!h.has_queued());
    }
}
