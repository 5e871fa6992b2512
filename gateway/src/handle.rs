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
use tokio::net::TcpStream;
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
    /// Frames not yet written; `None` once the session ended.
    out: Mutex<Option<Outbox>>,
    wake: Notify,
}

/// The session's outbound side, shared by its task and the routing path.
///
/// Who writes to the socket: once the session is live, the routing path
/// writes a frame itself when the socket takes it whole at once and nothing
/// is ahead of it (no frame queued, no bytes left over, the task not
/// writing); otherwise the frame is queued and the task woken, as before.
/// Measured on the instructions scenario, the task's wake-up, poll and
/// `select!` re-arm were 1,400 instructions per delivery, and one worker
/// thread's runtime ran 10 session polls per event for it.
#[derive(Debug, Default)]
struct Outbox {
    frames: VecDeque<Arc<Frame>>,
    /// The `s` of the last dispatch frame written, while the routing path
    /// may write; the task's own count while it writes.
    s: u64,
    /// Frames at or before this history position are the replay's (see
    /// `Session::floor`); a live write skips them.
    floor: u64,
    /// Set once the session is live: where the routing path writes.
    socket: Option<Arc<TcpStream>>,
    /// The task is writing (frames it took, or its own): the routing path
    /// queues instead, so no two writers interleave on the socket.
    task_writing: bool,
    /// What the socket did not take of a frame the routing path wrote: the
    /// task writes it before anything else.
    rest: Option<Box<[u8]>>,
}

impl Outbox {
    fn has_pending(&self) -> bool {
        !self.frames.is_empty() || self.rest.is_some()
    }

    /// The task writes from here on; see [`SessionHandle::take_over`].
    fn take_over(&mut self) -> Takeover {
        self.task_writing = true;
        Takeover {
            s: self.s,
            rest: self.rest.take(),
        }
    }
}

/// How the hub's offer of a frame went.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    /// On the wire already, written by the routing path.
    Written,
    /// Queued for the session's task.
    Queued,
    /// Not taken: the session ended, or its queue is full (it is kicked).
    Refused,
}

/// What the task must write first when it takes over the socket. An ended
/// session's is empty (its task is closing).
#[derive(Default)]
pub struct Takeover {
    /// The `s` of the last dispatch frame on the wire.
    pub s: u64,
    /// The unwritten end of the routing path's last frame.
    pub rest: Option<Box<[u8]>>,
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
            out: Mutex::new(Some(Outbox::default())),
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

    /// The session is started: from here on the routing path may write to
    /// `socket` itself, numbering frames after `s`, skipping those at or
    /// before `floor`. Frames queued meanwhile stay ahead (the task writes
    /// them first).
    pub fn go_live(&self, socket: Arc<TcpStream>, s: u64, floor: u64) {
        if let Some(out) = self.out.lock().as_mut() {
            out.socket = Some(socket);
            out.s = s;
            out.floor = floor;
        }
    }

    /// Offers a frame without waiting. `direct`: the routing path may write
    /// it itself (the hub allows it for small fan-outs only, so a big
    /// channel's writes stay spread over the session tasks). A full queue
    /// marks the session too slow.
    pub fn offer(&self, frame: &Arc<Frame>, capacity: usize, direct: bool) -> Offered {
        let mut guard = self.out.lock();
        let Some(out) = guard.as_mut() else {
            return Offered::Refused; // the session has ended
        };
        if direct && !out.task_writing && !out.has_pending() {
            if let Some(socket) = &out.socket {
                if frame.seq <= out.floor {
                    return Offered::Written; // the replay had it
                }
                let bytes = frame.render_ws(out.s + 1);
                match socket.try_write(&bytes) {
                    Ok(n) if n == bytes.len() => {
                        out.s += 1;
                        return Offered::Written;
                    }
                    Ok(n) => {
                        // Part of the frame is on the wire: the task must
                        // finish it before anything else is written.
                        out.s += 1;
                        out.rest = Some(bytes[n..].into());
                        drop(guard);
                        self.wake.notify_one();
                        return Offered::Queued;
                    }
                    // A full socket (or a broken one, which the task finds
                    // out about): the task writes it, with its timeout.
                    Err(_) => {}
                }
            }
        }
        if out.frames.len() >= capacity {
            drop(guard);
            if self.kicked().is_none() {
                metrics::counter!("otako_slow_client_closes_total").increment(1);
            }
            self.kick(CloseCode::TooSlow);
            return Offered::Refused;
        }
        let was_idle = !out.has_pending();
        out.frames.push_back(frame.clone());
        drop(guard);
        // The task takes everything it finds when woken (or wakes itself
        // for the rest, see `take`), so only the first frame needs a wake-up.
        if was_idle {
            self.wake.notify_one();
        }
        Offered::Queued
    }

    /// Takes the socket over for the task's own writes, until
    /// [`SessionHandle::hand_back`]: returns the `s` to number after and
    /// what the routing path left unwritten.
    pub fn take_over(&self) -> Takeover {
        self.out
            .lock()
            .as_mut()
            .map(Outbox::take_over)
            .unwrap_or_default()
    }

    /// Gives the socket back to the routing path after the task wrote up to
    /// `s`. Frames queued meanwhile wake the task again.
    pub fn hand_back(&self, s: u64) {
        let mut guard = self.out.lock();
        let Some(out) = guard.as_mut() else { return };
        out.task_writing = false;
        out.s = s;
        if out.has_pending() {
            drop(guard);
            self.wake.notify_one();
        }
    }

    /// Moves up to `max` queued frames into `into`, oldest first, and takes
    /// the socket over (see [`SessionHandle::take_over`]). If more are left,
    /// the task is woken again for them once it hands the socket back.
    pub fn take(&self, max: usize, into: &mut Vec<Arc<Frame>>) -> Takeover {
        let mut guard = self.out.lock();
        let Some(out) = guard.as_mut() else {
            return Takeover::default();
        };
        let n = out.frames.len().min(max);
        into.extend(out.frames.drain(..n));
        if out.frames.is_empty() && out.frames.capacity() > KEEP_QUEUE_SLOTS {
            out.frames = VecDeque::new();
        }
        out.take_over()
    }

    /// Whether frames (or the end of one) are waiting.
    pub fn has_queued(&self) -> bool {
        self.out.lock().as_ref().is_some_and(Outbox::has_pending)
    }

    /// Drops what is queued, lets go of the socket and refuses further frames.
    pub fn close(&self) {
        *self.out.lock() = None;
    }

    #[cfg(test)]
    pub fn queue_capacity(&self) -> Option<usize> {
        self.out.lock().as_ref().map(|o| o.frames.capacity())
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
            assert_eq!(
                h.offer(&frame(i), 100, true),
                Offered::Queued,
                "not live yet"
            );
        }
        assert!(woken_now(&h));
        assert!(!woken_now(&h), "one wake-up for the whole burst");
        let mut frames = Vec::new();
        h.take(32, &mut frames);
        assert_eq!(frames.len(), 32);
        h.hand_back(32);
        assert!(woken_now(&h), "eight frames are left: the task comes back");
        frames.clear();
        h.take(32, &mut frames);
        assert_eq!(frames.len(), 8);
        h.hand_back(40);
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
        assert_eq!(h.offer(&frame(1), 1, false), Offered::Queued);
        assert_eq!(h.offer(&frame(2), 1, false), Offered::Refused);
        assert_eq!(h.kicked(), Some(CloseCode::TooSlow));
        h.close();
        assert_eq!(h.offer(&frame(3), 8, false), Offered::Refused);
        assert!(!h.has_queued());
    }

    /// A connected pair on loopback: the session's socket and the client's.
    async fn pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (Arc::new(accepted.unwrap().0), client.unwrap())
    }

    /// Reads exactly `n` bytes the client received.
    async fn received(client: &mut TcpStream, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0; n];
        client.read_exact(&mut buf).await.unwrap();
        buf
    }

    #[tokio::test]
    async fn a_live_session_gets_its_frame_written_without_waking_its_task() {
        let h = SessionHandle::new(1, 10, 0, i64::MAX);
        let (socket, mut client) = pair().await;
        h.go_live(socket, 1, 0);
        assert_eq!(h.offer(&frame(5), 8, true), Offered::Written);
        assert!(!woken_now(&h), "the task is not needed");
        let want = frame(5).render_ws(2);
        assert_eq!(
            received(&mut client, want.len()).await,
            want,
            "numbered after READY's 1"
        );
        // A big fan-out (not direct) still goes through the task.
        assert_eq!(h.offer(&frame(6), 8, false), Offered::Queued);
        assert!(woken_now(&h));
    }

    #[tokio::test]
    async fn nothing_overtakes_what_the_task_holds_or_has_queued() {
        let h = SessionHandle::new(1, 10, 0, i64::MAX);
        let (socket, _client) = pair().await;
        // Queued while the session started: it stays ahead once live.
        assert_eq!(h.offer(&frame(5), 8, true), Offered::Queued);
        h.go_live(socket, 1, 0);
        assert_eq!(h.offer(&frame(6), 8, true), Offered::Queued);
        let mut frames = Vec::new();
        let took = h.take(64, &mut frames);
        assert_eq!((took.s, frames.len()), (1, 2));
        // The task writes now: a frame that arrives meanwhile waits.
        assert_eq!(h.offer(&frame(7), 8, true), Offered::Queued);
        h.hand_back(3);
        assert!(woken_now(&h), "the task comes back for frame 7");
        frames.clear();
        assert_eq!(h.take(64, &mut frames).s, 3, "numbered after the task's");
        assert_eq!(frames.len(), 1);
        h.hand_back(4);
        // And a frame the replay covered is not written again.
        let (socket, _client) = pair().await;
        let h = SessionHandle::new(2, 10, 0, i64::MAX);
        h.go_live(socket, 1, 9);
        assert_eq!(h.offer(&frame(9), 8, true), Offered::Written);
        assert_eq!(h.take(64, &mut frames).s, 1, "no number was used");
    }

    #[tokio::test]
    async fn a_socket_that_takes_part_of_a_frame_leaves_the_rest_to_the_task() {
        let h = SessionHandle::new(1, 10, 0, i64::MAX);
        let (socket, mut client) = pair().await;
        h.go_live(socket, 1, 0);
        let big = |seq: u64| {
            let d = RawValue::from_string(format!("\"{}\"", "x".repeat(60_000))).unwrap();
            Arc::new(Frame::new("M", &d, &Cursor::new("e", seq)))
        };
        // The client reads nothing: offer until the socket stops taking frames whole.
        let mut written = Vec::new();
        let mut seq = 0;
        let last = loop {
            seq += 1;
            let f = big(seq);
            match h.offer(&f, 8, true) {
                Offered::Written => written.push(f.render_ws(seq + 1)),
                Offered::Queued => break f,
                Offered::Refused => unreachable!("the queue has room"),
            }
        };
        assert!(woken_now(&h), "the task is called for what is left");
        let mut frames = Vec::new();
        let took = h.take(64, &mut frames);
        let mut expected: Vec<u8> = written.concat();
        match took.rest {
            // Short write: the frame has its number, and the client has its
            // start; the task's write of the rest completes it.
            Some(rest) => {
                assert!(frames.is_empty());
                assert_eq!(took.s, seq + 1);
                let whole = last.render_ws(seq + 1);
                assert!(whole.ends_with(&rest) && rest.len() < whole.len());
                expected.extend_from_slice(&whole[..whole.len() - rest.len()]);
            }
            // Nothing taken at all: the frame is queued, unnumbered.
            None => {
                assert_eq!(frames.len(), 1);
                assert_eq!(took.s, seq);
            }
        }
        assert_eq!(received(&mut client, expected.len()).await, expected);
    }
}
