//! Routing events to this node's sessions: the hub and its index.
//!
//! Every node follows the event history once (see `history.rs`) and hands
//! each event to [`Hub::deliver`] in history order; the hub looks up the
//! recipients in memory. There is no broker subscription per session or per
//! channel, so a membership change is a local index update that takes
//! effect in history order, with no race against a subscription still
//! travelling to the server.
//!
//! The hub also remembers the last history position it routed: a session
//! that joins its channels at position P receives every later event live,
//! and what came before P is the resume's to replay (`resume.rs`).

use crate::frame::Frame;
use crate::handle::{Offered, SessionHandle};
use otako_common::close::CloseCode;
use otako_common::event::EventType;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Notify;

/// Who an event goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routing {
    pub t: EventType,
    pub channel_id: i64,
    /// The user concerned, for member events.
    pub user_id: Option<i64>,
}

/// One session in the index.
struct Member {
    handle: Arc<SessionHandle>,
    /// The channels it receives, sorted. A user is in few channels, and a
    /// small sorted `Vec` costs a fraction of a `HashSet`.
    channels: Vec<i64>,
}

#[derive(Default)]
struct Index {
    sessions: HashMap<u64, Member>,
    by_channel: HashMap<i64, HashMap<u64, Arc<SessionHandle>>>,
    /// A user has a handful of sessions at most: a `Vec` each.
    by_user: HashMap<i64, Vec<Arc<SessionHandle>>>,
    /// Sessions still loading their channel list, with the membership changes
    /// that reached them meanwhile: these win over the (possibly older) list.
    loading: HashMap<u64, HashMap<i64, bool>>,
}

impl Index {
    fn join(&mut self, s: &Arc<SessionHandle>, channel_id: i64) {
        let Some(member) = self.sessions.get_mut(&s.id) else {
            return; // already unregistered
        };
        if let Err(at) = member.channels.binary_search(&channel_id) {
            member.channels.insert(at, channel_id);
            self.by_channel
                .entry(channel_id)
                .or_default()
                .insert(s.id, s.clone());
        }
    }

    fn leave(&mut self, session_id: u64, channel_id: i64) {
        if let Some(member) = self.sessions.get_mut(&session_id) {
            if let Ok(at) = member.channels.binary_search(&channel_id) {
                member.channels.remove(at);
            }
        }
        if let Some(members) = self.by_channel.get_mut(&channel_id) {
            members.remove(&session_id);
            if members.is_empty() {
                self.by_channel.remove(&channel_id);
            }
        }
    }

    fn user_sessions(&self, user_id: i64) -> Vec<Arc<SessionHandle>> {
        self.by_user.get(&user_id).cloned().unwrap_or_default()
    }
}

/// Sessions of this node, indexed by channel and by user.
pub struct Hub {
    index: RwLock<Index>,
    /// The history position of the last event routed (or skipped). Written
    /// only while the index lock is held, so a session that joins under the
    /// write lock reads an exact seam.
    last_seq: AtomicU64,
    /// Sessions waiting in [`Hub::caught_up`], and how they are woken when
    /// `last_seq` moves; routing touches `advanced` only while one waits.
    waiting: AtomicUsize,
    advanced: Notify,
    queue_capacity: usize,
    /// Backend commit to the frame's write, per frame (see
    /// [`Hub::record_written`]). Resolved once: looking a metric up per
    /// frame costs more than recording.
    commit_to_socket: metrics::Histogram,
    /// Per routed event, resolved once for the same reason.
    deliveries: metrics::Counter,
    queue_seconds: metrics::Histogram,
}

/// Events with at most this many recipients on the node are written by the
/// routing path itself (see `SessionHandle::offer`); a bigger fan-out is
/// queued to the session tasks, so its writes spread over the worker
/// threads instead of all running on the history follower's.
const DIRECT_MAX: usize = 64;

/// Held by a session's task; unregisters the session when dropped, so no exit
/// path can leave a dead session in the index.
pub struct Registration {
    hub: Arc<Hub>,
    pub handle: Arc<SessionHandle>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(&self.handle);
        self.handle.close();
    }
}

impl Hub {
    /// A hub whose history starts after position `start_seq`.
    pub fn new(queue_capacity: usize, start_seq: u64) -> Arc<Hub> {
        Arc::new(Hub {
            index: RwLock::new(Index::default()),
            last_seq: AtomicU64::new(start_seq),
            waiting: AtomicUsize::new(0),
            advanced: Notify::new(),
            queue_capacity: queue_capacity.max(1),
            commit_to_socket: metrics::histogram!("otako_commit_to_socket_seconds"),
            deliveries: metrics::counter!("otako_fanout_deliveries_total"),
            queue_seconds: metrics::histogram!("otako_fanout_queue_seconds"),
        })
    }

    /// The history position of the last event routed.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Waits until the hub has routed every history position up to `seq`.
    pub async fn caught_up(&self, seq: u64) {
        /// Counts a waiter for as long as it waits, timeouts included.
        struct Waiter<'a>(&'a AtomicUsize);
        impl Drop for Waiter<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        if self.last_seq() >= seq {
            return;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiter = Waiter(&self.waiting);
        loop {
            let notified = self.advanced.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.last_seq.load(Ordering::SeqCst) >= seq {
                return;
            }
            notified.await;
        }
    }

    /// Wakes the sessions waiting in [`Hub::caught_up`], if any. The fence
    /// pairs with the waiter's count and load: either it sees the waiter,
    /// or the waiter sees the new position.
    fn advanced(&self) {
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.advanced.notify_waiters();
        }
    }

    /// Adds a session that will receive the events of the user concerned at
    /// once, and its channels' events once [`Hub::join_channels`] is called.
    pub fn register(self: &Arc<Hub>, handle: SessionHandle) -> Registration {
        let handle = Arc::new(handle);
        let (id, user_id) = (handle.id, handle.user_id);
        let mut idx = self.index.write();
        idx.by_user
            .entry(user_id)
            .or_insert_with(|| Vec::with_capacity(1))
            .push(handle.clone());
        idx.sessions.insert(
            id,
            Member {
                handle: handle.clone(),
                channels: Vec::new(),
            },
        );
        idx.loading.insert(id, HashMap::new());
        drop(idx);
        Registration {
            hub: self.clone(),
            handle,
        }
    }

    /// Joins the channels the session's user was a member of when its list
    /// was read, except where a membership event since says otherwise, and
    /// returns the history position the session's live events follow with
    /// the channels it receives there.
    pub fn join_channels(&self, session: &Arc<SessionHandle>, channels: &[i64]) -> (u64, Vec<i64>) {
        let mut idx = self.index.write();
        let changed = idx.loading.remove(&session.id).unwrap_or_default();
        for &c in channels {
            if changed.get(&c) != Some(&false) {
                idx.join(session, c);
            }
        }
        let joined = match idx.sessions.get_mut(&session.id) {
            Some(member) => {
                member.channels.shrink_to_fit();
                member.channels.clone()
            }
            None => Vec::new(),
        };
        (self.last_seq.load(Ordering::Acquire), joined)
    }

    /// The channels a session currently receives, sorted.
    pub fn channels_of(&self, session_id: u64) -> Vec<i64> {
        let idx = self.index.read();
        idx.sessions
            .get(&session_id)
            .map(|m| m.channels.clone())
            .unwrap_or_default()
    }

    fn unregister(&self, s: &SessionHandle) {
        let mut idx = self.index.write();
        idx.loading.remove(&s.id);
        if let Some(member) = idx.sessions.remove(&s.id) {
            for c in member.channels {
                if let Some(members) = idx.by_channel.get_mut(&c) {
                    members.remove(&s.id);
                    if members.is_empty() {
                        idx.by_channel.remove(&c);
                    }
                }
            }
        }
        if let Some(sessions) = idx.by_user.get_mut(&s.user_id) {
            sessions.retain(|h| h.id != s.id);
            if sessions.is_empty() {
                idx.by_user.remove(&s.user_id);
            }
        }
        drop(idx);
    }

    pub fn session_count(&self) -> usize {
        self.index.read().sessions.len()
    }

    /// Every session of this node, for draining.
    pub fn all_sessions(&self) -> Vec<Arc<SessionHandle>> {
        let idx = self.index.read();
        idx.sessions.values().map(|m| m.handle.clone()).collect()
    }

    /// The users with a session on this node.
    pub fn users(&self) -> Vec<i64> {
        self.index.read().by_user.keys().copied().collect()
    }

    /// Sessions of one user on this node.
    pub fn sessions_of_user(&self, user_id: i64) -> Vec<Arc<SessionHandle>> {
        self.index.read().user_sessions(user_id)
    }

    /// Kicks every session whose heartbeat deadline has passed (4009) or
    /// whose token has expired (4004), and that nothing else kicked yet;
    /// returns how many. One sweep of the index stands in for a timer per
    /// session (a tokio `Sleep` is 112 bytes in every idle task, and re-armed
    /// on every wake-up); two loads per session are all a sweep costs.
    pub fn kick_overdue(&self, now_ms: u64, now_unix: i64) -> usize {
        let idx = self.index.read();
        let mut kicked = 0;
        for m in idx.sessions.values() {
            let h = &m.handle;
            if h.kicked().is_some() {
                continue;
            }
            if h.token_expires_at <= now_unix {
                h.kick(CloseCode::AuthFailed);
                kicked += 1;
            } else if h.heartbeat_overdue(now_ms) && !h.has_queued() {
                // A session with frames waiting is stuck writing to a client
                // that does not read (its heartbeats wait unread behind the
                // write): that is 4011's, from the write timeout or the
                // queue's limit, not a heartbeat timeout.
                h.kick(CloseCode::HeartbeatTimeout);
                kicked += 1;
            }
        }
        kicked
    }

    /// Kicks every session with `code` (the node lost events it cannot
    /// recover: its sessions resume elsewhere).
    pub fn kick_all(&self, code: CloseCode) -> usize {
        let idx = self.index.read();
        for m in idx.sessions.values() {
            m.handle.kick(code);
        }
        idx.sessions.len()
    }

    /// Records that the history position `seq` holds nothing to route (a
    /// forged message, or one already routed).
    pub fn skip(&self, seq: u64) {
        let _idx = self.index.read();
        self.last_seq.fetch_max(seq, Ordering::AcqRel);
        self.advanced();
    }

    /// Routes one event of the history to the sessions that may see it and
    /// returns how many it was queued for. Events arrive in history order;
    /// one at or before the last routed position is a repeat and is dropped.
    pub fn deliver(&self, to: Routing, frame: Frame) -> usize {
        let seq = frame.seq;
        if seq <= self.last_seq() {
            return 0;
        }
        let frame = Arc::new(frame);
        let started = Instant::now();
        let delivered = match (to.t, to.user_id) {
            (EventType::ChannelMemberAdd, Some(user)) => {
                // Join first, so the new member sees its own add event too.
                let mut idx = self.index.write();
                let sessions = idx.user_sessions(user);
                for s in &sessions {
                    idx.join(s, to.channel_id);
                    if let Some(changed) = idx.loading.get_mut(&s.id) {
                        changed.insert(to.channel_id, true);
                    }
                }
                let n = self.offer_channel(&idx, to.channel_id, &frame, None);
                self.last_seq.store(seq, Ordering::Release);
                n
            }
            (EventType::ChannelMemberRemove, Some(user)) => {
                // The removed user hears of it even if none of its sessions
                // was in the channel's index; then it stops receiving.
                let mut idx = self.index.write();
                let user_sessions = idx.user_sessions(user);
                let n = self.offer_channel(&idx, to.channel_id, &frame, Some(user))
                    + self.offer_all(user_sessions.iter(), user_sessions.len(), &frame);
                for s in &user_sessions {
                    idx.leave(s.id, to.channel_id);
                    if let Some(changed) = idx.loading.get_mut(&s.id) {
                        changed.insert(to.channel_id, false);
                    }
                }
                self.last_seq.store(seq, Ordering::Release);
                n
            }
            _ => {
                let idx = self.index.read();
                let n = self.offer_channel(&idx, to.channel_id, &frame, None);
                self.last_seq.store(seq, Ordering::Release);
                n
            }
        };
        self.advanced();
        self.deliveries.increment(delivered as u64);
        self.queue_seconds.record(started.elapsed().as_secs_f64());
        delivered
    }

    fn offer_channel(
        &self,
        idx: &Index,
        channel_id: i64,
        frame: &Arc<Frame>,
        except_user: Option<i64>,
    ) -> usize {
        let Some(members) = idx.by_channel.get(&channel_id) else {
            return 0;
        };
        let to = members.values().filter(|s| Some(s.user_id) != except_user);
        self.offer_all(to, members.len(), frame)
    }

    /// Offers `frame` to `sessions` (about `count` of them); returns how
    /// many took it.
    fn offer_all<'a>(
        &self,
        sessions: impl Iterator<Item = &'a Arc<SessionHandle>>,
        count: usize,
        frame: &Arc<Frame>,
    ) -> usize {
        let direct = count <= DIRECT_MAX;
        let (mut taken, mut written) = (0, 0);
        for s in sessions {
            match s.offer(frame, self.queue_capacity, direct) {
                Offered::Written => written += 1,
                Offered::Queued => taken += 1,
                Offered::Refused => {}
            }
        }
        if written > 0 {
            self.record_written(frame, written, chrono::Utc::now().timestamp_micros());
        }
        taken + written
    }

    /// Records that `frame` reached `sessions` sockets at `now_us`, whoever
    /// wrote it (the routing path, or a session's task).
    pub fn record_written(&self, frame: &Frame, sessions: usize, now_us: i64) {
        if let Some(at) = frame.committed_at_us {
            let seconds = (now_us - at).max(0) as f64 / 1e6;
            for _ in 0..sessions {
                self.commit_to_socket.record(seconds);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otako_common::history::Cursor;
    use serde_json::value::RawValue;
    use std::time::Duration;

    fn to(t: EventType, channel_id: i64, user_id: Option<i64>) -> Routing {
        Routing {
            t,
            channel_id,
            user_id,
        }
    }

    fn frame(seq: u64) -> Frame {
        let d = RawValue::from_string("{}".to_owned()).unwrap();
        Frame::new("X", &d, &Cursor::new("e", seq))
    }

    fn session(hub: &Arc<Hub>, id: u64, user: i64) -> Registration {
        hub.register(SessionHandle::new(id, user, 0, i64::MAX))
    }

    /// Takes everything queued for a session and returns how many frames.
    fn taken(r: &Registration) -> usize {
        let mut frames = Vec::new();
        r.handle.take(usize::MAX, &mut frames);
        frames.len()
    }

    #[test]
    fn only_channel_sessions_receive_and_repeats_are_dropped() {
        let hub = Hub::new(8, 0);
        let a = session(&hub, 1, 10);
        let b = session(&hub, 2, 20);
        assert_eq!(hub.join_channels(&a.handle, &[5]), (0, vec![5]));
        let msg = to(EventType::MessageCreate, 5, None);
        assert_eq!(hub.deliver(msg, frame(1)), 1);
        assert_eq!(
            hub.deliver(msg, frame(1)),
            0,
            "a repeat is not delivered again"
        );
        assert_eq!(hub.last_seq(), 1);
        assert_eq!(taken(&a), 1);
        assert_eq!(taken(&b), 0);
    }

    #[tokio::test]
    async fn a_session_joins_once_the_hub_has_routed_up_to_the_history_end() {
        // The database lists no channel yet for user 10, but its add to
        // channel 6 is in the history at 11, ahead of what the hub routed.
        let hub = Hub::new(8, 10);
        let a = session(&hub, 1, 10);
        let waiter = tokio::spawn({
            let hub = hub.clone();
            async move { hub.caught_up(12).await }
        });
        hub.deliver(to(EventType::ChannelMemberAdd, 6, Some(10)), frame(11));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "position 12 is not routed yet");
        hub.deliver(to(EventType::MessageCreate, 6, None), frame(12));
        waiter.await.unwrap();
        assert_eq!(hub.join_channels(&a.handle, &[]), (12, vec![6]));
        assert_eq!(taken(&a), 2, "the add and the message after it");
    }

    #[test]
    fn joining_returns_the_seam() {
        let hub = Hub::new(8, 41);
        let a = session(&hub, 1, 10);
        hub.deliver(to(EventType::MessageCreate, 5, None), frame(42));
        hub.skip(43);
        assert_eq!(hub.join_channels(&a.handle, &[5]).0, 43);
        assert_eq!(taken(&a), 0, "events before the seam are the replay's");
        hub.deliver(to(EventType::MessageCreate, 5, None), frame(44));
        assert_eq!(taken(&a), 1);
    }

    #[test]
    fn membership_events_move_sessions() {
        let hub = Hub::new(8, 0);
        let a = session(&hub, 1, 10);
        let b = session(&hub, 2, 20);
        hub.join_channels(&a.handle, &[5]);
        hub.join_channels(&b.handle, &[]);
        let add = to(EventType::ChannelMemberAdd, 5, Some(20));
        assert_eq!(hub.deliver(add, frame(1)), 2);
        assert_eq!(hub.channels_of(2), vec![5]);
        let rm = to(EventType::ChannelMemberRemove, 5, Some(20));
        assert_eq!(hub.deliver(rm, frame(2)), 2);
        assert!(hub.channels_of(2).is_empty());
        let msg = to(EventType::MessageCreate, 5, None);
        assert_eq!(hub.deliver(msg, frame(3)), 1);
        assert_eq!(taken(&a), 3);
        assert_eq!(taken(&b), 2);
    }

    #[test]
    fn a_remove_during_loading_beats_the_older_channel_list() {
        let hub = Hub::new(8, 0);
        let a = session(&hub, 1, 10);
        hub.deliver(to(EventType::ChannelMemberRemove, 5, Some(10)), frame(1));
        hub.deliver(to(EventType::ChannelMemberAdd, 7, Some(10)), frame(2));
        // The list was read before both events were committed.
        hub.join_channels(&a.handle, &[5, 6]);
        assert_eq!(hub.channels_of(1), vec![6, 7]);
        // Once loaded, events apply directly again.
        hub.deliver(to(EventType::ChannelMemberRemove, 6, Some(10)), frame(3));
        assert_eq!(hub.channels_of(1), vec![7]);
    }

    #[test]
    fn overflow_kicks_only_the_slow_session() {
        let hub = Hub::new(2, 0);
        let slow = session(&hub, 1, 10);
        let fast = session(&hub, 2, 20);
        hub.join_channels(&slow.handle, &[5]);
        hub.join_channels(&fast.handle, &[5]);
        for i in 1..=3 {
            hub.deliver(to(EventType::MessageCreate, 5, None), frame(i));
            taken(&fast);
        }
        assert_eq!(slow.handle.kicked(), Some(CloseCode::TooSlow));
        assert_eq!(fast.handle.kicked(), None);
    }

    #[test]
    fn dropping_a_registration_unregisters() {
        let hub = Hub::new(2, 0);
        let a = session(&hub, 1, 10);
        hub.join_channels(&a.handle, &[5, 6]);
        assert_eq!(hub.session_count(), 1);
        drop(a);
        assert_eq!(hub.session_count(), 0);
        assert!(hub.sessions_of_user(10).is_empty());
    }

    #[test]
    fn the_sweep_kicks_late_heartbeats_and_expired_tokens_only() {
        let hub = Hub::new(8, 0);
        let loading = session(&hub, 1, 10);
        let late = session(&hub, 2, 20);
        let on_time = session(&hub, 3, 30);
        let expired = hub.register(SessionHandle::new(4, 40, 0, 1_000));
        late.handle.heartbeat_due_within(Duration::ZERO);
        on_time.handle.heartbeat_due_within(Duration::from_secs(60));
        expired.handle.heartbeat_due_within(Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(5));
        let now_ms = crate::clock::now_ms();
        assert_eq!(hub.kick_overdue(now_ms, 999), 1);
        assert_eq!(late.handle.kicked(), Some(CloseCode::HeartbeatTimeout));
        assert_eq!(hub.kick_overdue(now_ms, 1_000), 1);
        assert_eq!(expired.handle.kicked(), Some(CloseCode::AuthFailed));
        assert_eq!(on_time.handle.kicked(), None);
        assert_eq!(loading.handle.kicked(), None, "not ready yet: no deadline");
    }

    #[test]
    fn the_sweep_leaves_a_session_stuck_writing_to_the_write_timeout() {
        // Its client's heartbeats wait unread behind the write: the session
        // is too slow (4011, from the write timeout or the queue's limit),
        // not silent (4009).
        let hub = Hub::new(8, 0);
        let stuck = session(&hub, 1, 10);
        hub.join_channels(&stuck.handle, &[5]);
        stuck.handle.heartbeat_due_within(Duration::ZERO);
        hub.deliver(to(EventType::MessageCreate, 5, None), frame(1));
        std::thread::sleep(Duration::from_millis(5));
        let now_ms = crate::clock::now_ms();
        assert_eq!(hub.kick_overdue(now_ms, 0), 0);
        assert_eq!(stuck.handle.kicked(), None);
        // Once its queue is written out, a late heartbeat is late again.
        taken(&stuck);
        assert_eq!(hub.kick_overdue(now_ms, 0), 1);
        assert_eq!(stuck.handle.kicked(), Some(CloseCode::HeartbeatTimeout));
    }
}
