//! Routing events to this node's sessions.
//!
//! Every node subscribes once to the firehose subject `otako.fanout`; the node
//! that handled a dispatch request publishes the loaded event there once, and
//! each node looks up its own recipients in memory. There is no broker
//! subscription per session or per channel, so a membership change is a
//! local index update that takes effect in firehose order, with no race
//! against a subscription still travelling to the server.
//!
//! Each event is serialised once per node: a [`Frame`] holds the bytes before
//! and after the per-session sequence number, and a session's writer only
//! splices its own `s` in between.

use otako_common::proto::EventType;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// What the handling node publishes on the firehose.
#[derive(Debug, Serialize, Deserialize)]
pub struct FanoutEvent<'a> {
    pub event_id: &'a str,
    pub t: EventType,
    pub channel_id: i64,
    /// The user concerned, for member events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<i64>,
    #[serde(borrow)]
    pub d: &'a RawValue,
}

/// One event ready to be written to any session of this node.
#[derive(Debug)]
pub struct Frame {
    prefix: Box<str>,
    suffix: Box<str>,
    /// Backend commit time (unix microseconds), for the commit-to-socket histogram.
    pub committed_at_us: Option<i64>,
}

impl Frame {
    pub fn new(t: &str, d: &RawValue) -> Frame {
        Frame {
            prefix: format!(r#"{{"op":0,"t":"{t}","s":"#).into(),
            suffix: format!(r#","d":{}}}"#, d.get()).into(),
            committed_at_us: None,
        }
    }

    /// The frame text for one session.
    pub fn render(&self, seq: u64) -> String {
        let mut buf = itoa::Buffer::new();
        let s = buf.format(seq);
        let mut out = String::with_capacity(self.prefix.len() + s.len() + self.suffix.len());
        out.push_str(&self.prefix);
        out.push_str(s);
        out.push_str(&self.suffix);
        out
    }
}

/// Why the node closes a session from outside the session's own task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// The outbound queue overflowed (4011).
    TooSlow = 4011,
    /// The user's tokens were revoked (4004).
    Revoked = 4004,
    /// The cluster-wide session limit was exceeded (4010).
    OverLimit = 4010,
    /// The node is draining: op 7, then close 1012.
    Reconnect = 1012,
    /// No heartbeat for 1.5 intervals (4009), found by the node's sweep.
    HeartbeatTimeout = 4009,
}

impl Kick {
    pub fn from_code(code: u16) -> Option<Kick> {
        [
            Kick::TooSlow,
            Kick::Revoked,
            Kick::OverLimit,
            Kick::Reconnect,
            Kick::HeartbeatTimeout,
        ]
        .into_iter()
        .find(|k| *k as u16 == code)
    }
}

/// Milliseconds on one process-wide clock, for heartbeat deadlines: a u64
/// in each session's handle is cheaper than a timer per session.
pub fn now_ms() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    EPOCH.elapsed().as_millis() as u64
}

/// A queue that grew past this many slots during a burst is given back once
/// it drains, so a session that was busy once does not keep the memory.
const KEEP_QUEUE_SLOTS: usize = 16;

/// The part of a session the hub holds: its outbound queue, how to wake its
/// task, and how to stop it.
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
    kick_code: AtomicU16,
    /// When the session has missed its heartbeat ([`now_ms`]); never until
    /// the session is ready.
    heartbeat_deadline_ms: AtomicU64,
    /// Frames not yet taken by the session's task; `None` once it ended.
    queue: Mutex<Option<VecDeque<Arc<Frame>>>>,
    wake: Notify,
}

impl SessionHandle {
    pub fn kick(&self, why: Kick) {
        // The first reason wins; later ones change nothing.
        if self
            .kick_code
            .compare_exchange(0, why as u16, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.wake.notify_one();
        }
    }

    pub fn kick_code(&self) -> Option<u16> {
        match self.kick_code.load(Ordering::Acquire) {
            0 => None,
            c => Some(c),
        }
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

    /// Queues a frame without waiting; a full queue marks the session too slow.
    fn offer(&self, frame: &Arc<Frame>, capacity: usize) -> bool {
        let mut queue = self.queue.lock();
        let Some(q) = queue.as_mut() else {
            return false; // the session has ended
        };
        if q.len() >= capacity {
            drop(queue);
            if self.kick_code().is_none() {
                metrics::counter!("otako_slow_client_closes_total").increment(1);
            }
            self.kick(Kick::TooSlow);
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
    fn close(&self) {
        *self.queue.lock() = None;
    }
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
    /// Event ids already fanned out here, so a retried event reaches no
    /// session twice even if two nodes handled it.
    seen: moka::sync::Cache<Box<str>, ()>,
    queue_capacity: usize,
}

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

/// How long retries of one event may arrive and still be recognised.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(15 * 60);

impl Hub {
    pub fn new(queue_capacity: usize) -> Arc<Hub> {
        Arc::new(Hub {
            index: RwLock::new(Index::default()),
            seen: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(DEDUP_WINDOW)
                .build(),
            queue_capacity: queue_capacity.max(1),
        })
    }

    /// Adds a session that will receive the events of the user concerned at
    /// once, and its channels' events once [`Hub::join_channels`] is called.
    pub fn register(self: &Arc<Hub>, id: u64, user_id: i64, token_generation: i32) -> Registration {
        let handle = Arc::new(SessionHandle {
            id,
            user_id,
            token_generation,
            kick_code: AtomicU16::new(0),
            heartbeat_deadline_ms: AtomicU64::new(u64::MAX),
            queue: Mutex::new(Some(VecDeque::new())),
            wake: Notify::new(),
        });
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
    /// was read, except where a membership event since says otherwise.
    pub fn join_channels(&self, session: &Arc<SessionHandle>, channels: &[i64]) {
        let mut idx = self.index.write();
        let changed = idx.loading.remove(&session.id).unwrap_or_default();
        for &c in channels {
            if changed.get(&c) != Some(&false) {
                idx.join(session, c);
            }
        }
        if let Some(member) = idx.sessions.get_mut(&session.id) {
            member.channels.shrink_to_fit();
        }
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

    /// Sessions of one user on this node.
    pub fn sessions_of_user(&self, user_id: i64) -> Vec<Arc<SessionHandle>> {
        self.index.read().user_sessions(user_id)
    }

    /// Kicks every session whose heartbeat deadline has passed (and that
    /// nothing else kicked yet) and returns how many. One sweep of the index stands in for a timer per session
    /// (a tokio `Sleep` is 112 bytes in every idle task, and re-armed on
    /// every wake-up); an atomic load per session is all a sweep costs.
    pub fn kick_missed_heartbeats(&self) -> usize {
        let now = now_ms();
        let idx = self.index.read();
        let mut kicked = 0;
        for m in idx.sessions.values() {
            let h = &m.handle;
            if h.heartbeat_deadline_ms.load(Ordering::Relaxed) < now && h.kick_code().is_none() {
                h.kick(Kick::HeartbeatTimeout);
                kicked += 1;
            }
        }
        kicked
    }

    /// Routes one firehose event to the sessions that may see it and returns
    /// how many it was queued for. Duplicates (retries) are dropped.
    pub fn deliver(&self, ev: &FanoutEvent<'_>, frame: Frame) -> usize {
        if self.seen.contains_key(ev.event_id) {
            return 0;
        }
        self.seen.insert(ev.event_id.into(), ());
        let frame = Arc::new(frame);
        let started = Instant::now();
        let delivered = match (ev.t, ev.user_id) {
            (EventType::ChannelMemberAdd, Some(user)) => {
                // Join first, so the new member sees its own add event too.
                let mut idx = self.index.write();
                let sessions = idx.user_sessions(user);
                for s in &sessions {
                    idx.join(s, ev.channel_id);
                    if let Some(changed) = idx.loading.get_mut(&s.id) {
                        changed.insert(ev.channel_id, true);
                    }
                }
                drop(idx);
                self.offer_channel(ev.channel_id, &frame, None)
            }
            (EventType::ChannelMemberRemove, Some(user)) => {
                // The removed user hears of it even if none of its sessions
                // was in the channel's index; then it stops receiving.
                let user_sessions = self.sessions_of_user(user);
                let n = self.offer_channel(ev.channel_id, &frame, Some(user))
                    + user_sessions
                        .iter()
                        .filter(|s| s.offer(&frame, self.queue_capacity))
                        .count();
                let mut idx = self.index.write();
                for s in &user_sessions {
                    idx.leave(s.id, ev.channel_id);
                    if let Some(changed) = idx.loading.get_mut(&s.id) {
                        changed.insert(ev.channel_id, false);
                    }
                }
                n
            }
            _ => self.offer_channel(ev.channel_id, &frame, None),
        };
        metrics::counter!("otako_fanout_deliveries_total").increment(delivered as u64);
        metrics::histogram!("otako_fanout_queue_seconds").record(started.elapsed().as_secs_f64());
        delivered
    }

    fn offer_channel(
        &self,
        channel_id: i64,
        frame: &Arc<Frame>,
        except_user: Option<i64>,
    ) -> usize {
        let idx = self.index.read();
        let Some(members) = idx.by_channel.get(&channel_id) else {
            return 0;
        };
        members
            .values()
            .filter(|s| Some(s.user_id) != except_user)
            .filter(|s| s.offer(frame, self.queue_capacity))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn event<'a>(
        id: &'a str,
        t: EventType,
        channel: i64,
        user: Option<i64>,
        d: &'a RawValue,
    ) -> FanoutEvent<'a> {
        FanoutEvent {
            event_id: id,
            t,
            channel_id: channel,
            user_id: user,
            d,
        }
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    /// Takes everything queued for a session and returns how many frames.
    fn taken(r: &Registration) -> usize {
        let mut frames = Vec::new();
        r.handle.take(usize::MAX, &mut frames);
        frames.len()
    }

    fn woken_now(r: &Registration) -> bool {
        r.handle.woken().now_or_never().is_some()
    }

    #[test]
    fn frame_splices_sequence() {
        let d = raw(r#"{"id":"1"}"#);
        let f = Frame::new("EVENT_MESSAGE_CREATE", &d);
        let text = f.render(42);
        assert_eq!(
            text,
            r#"{"op":0,"t":"EVENT_MESSAGE_CREATE","s":42,"d":{"id":"1"}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["s"], 42);
    }

    #[test]
    fn only_channel_sessions_receive_and_retries_are_dropped() {
        let hub = Hub::new(8);
        let a = hub.register(1, 10, 0);
        let b = hub.register(2, 20, 0);
        hub.join_channels(&a.handle, &[5]);
        let d = raw("{}");
        let ev = event("e1", EventType::MessageCreate, 5, None, &d);
        assert_eq!(hub.deliver(&ev, Frame::new("X", &d)), 1);
        assert_eq!(
            hub.deliver(&ev, Frame::new("X", &d)),
            0,
            "a retry is not delivered again"
        );
        assert_eq!(taken(&a), 1);
        assert_eq!(taken(&b), 0);
    }

    #[test]
    fn membership_events_move_sessions() {
        let hub = Hub::new(8);
        let a = hub.register(1, 10, 0);
        let b = hub.register(2, 20, 0);
        hub.join_channels(&a.handle, &[5]);
        let d = raw("{}");
        let add = event("add", EventType::ChannelMemberAdd, 5, Some(20), &d);
        assert_eq!(hub.deliver(&add, Frame::new("A", &d)), 2);
        assert_eq!(hub.channels_of(2), vec![5]);
        let rm = event("rm", EventType::ChannelMemberRemove, 5, Some(20), &d);
        assert_eq!(hub.deliver(&rm, Frame::new("R", &d)), 2);
        assert!(hub.channels_of(2).is_empty());
        let msg = event("m", EventType::MessageCreate, 5, None, &d);
        assert_eq!(hub.deliver(&msg, Frame::new("M", &d)), 1);
        assert_eq!(taken(&a), 3);
        assert_eq!(taken(&b), 2);
    }

    #[test]
    fn a_remove_during_loading_beats_the_older_channel_list() {
        let hub = Hub::new(8);
        let a = hub.register(1, 10, 0);
        let d = raw("{}");
        let rm = event("rm", EventType::ChannelMemberRemove, 5, Some(10), &d);
        hub.deliver(&rm, Frame::new("R", &d));
        let add = event("add", EventType::ChannelMemberAdd, 7, Some(10), &d);
        hub.deliver(&add, Frame::new("A", &d));
        // The list was read before both events were committed.
        hub.join_channels(&a.handle, &[5, 6]);
        assert_eq!(hub.channels_of(1), vec![6, 7]);
        // Once loaded, events apply directly again.
        let rm6 = event("rm6", EventType::ChannelMemberRemove, 6, Some(10), &d);
        hub.deliver(&rm6, Frame::new("R", &d));
        assert_eq!(hub.channels_of(1), vec![7]);
    }

    #[test]
    fn overflow_kicks_only_the_slow_session() {
        let hub = Hub::new(2);
        let slow = hub.register(1, 10, 0);
        let fast = hub.register(2, 20, 0);
        hub.join_channels(&slow.handle, &[5]);
        hub.join_channels(&fast.handle, &[5]);
        let d = raw("{}");
        for i in 0..3 {
            let id = format!("e{i}");
            hub.deliver(
                &event(&id, EventType::MessageCreate, 5, None, &d),
                Frame::new("M", &d),
            );
            taken(&fast);
        }
        assert_eq!(slow.handle.kick_code(), Some(4011));
        assert_eq!(fast.handle.kick_code(), None);
    }

    #[test]
    fn dropping_a_registration_unregisters() {
        let hub = Hub::new(2);
        let a = hub.register(1, 10, 0);
        hub.join_channels(&a.handle, &[5, 6]);
        assert_eq!(hub.session_count(), 1);
        drop(a);
        assert_eq!(hub.session_count(), 0);
        assert!(hub.sessions_of_user(10).is_empty());
    }

    #[test]
    fn a_burst_wakes_the_task_once_and_a_partial_take_wakes_it_again() {
        let hub = Hub::new(100);
        let a = hub.register(1, 10, 0);
        hub.join_channels(&a.handle, &[5]);
        assert!(!woken_now(&a), "nothing queued yet");
        let d = raw("{}");
        for i in 0..40 {
            let id = format!("e{i}");
            let ev = event(&id, EventType::MessageCreate, 5, None, &d);
            assert_eq!(hub.deliver(&ev, Frame::new("M", &d)), 1);
        }
        assert!(woken_now(&a));
        assert!(!woken_now(&a), "one wake-up for the whole burst");
        let mut frames = Vec::new();
        a.handle.take(32, &mut frames);
        assert_eq!(frames.len(), 32);
        assert!(woken_now(&a), "eight frames are left: the task comes back");
        frames.clear();
        a.handle.take(32, &mut frames);
        assert_eq!(frames.len(), 8);
        assert!(!woken_now(&a));
        assert!(!a.handle.has_queued());
        // The queue grew to 64 slots for the burst; drained, it lets them go.
        let cap = a.handle.queue.lock().as_ref().map(VecDeque::capacity);
        assert_eq!(cap, Some(0));
    }

    #[test]
    fn kicks_wake_the_task_and_the_first_reason_wins() {
        let hub = Hub::new(8);
        let a = hub.register(1, 10, 0);
        a.handle.kick(Kick::Revoked);
        a.handle.kick(Kick::TooSlow);
        assert!(woken_now(&a));
        assert_eq!(a.handle.kick_code(), Some(4004));
        assert_eq!(Kick::from_code(4009), Some(Kick::HeartbeatTimeout));
    }

    #[test]
    fn the_sweep_kicks_only_sessions_past_their_heartbeat_deadline() {
        let hub = Hub::new(8);
        let loading = hub.register(1, 10, 0);
        let late = hub.register(2, 20, 0);
        let on_time = hub.register(3, 30, 0);
        late.handle.heartbeat_due_within(Duration::ZERO);
        on_time.handle.heartbeat_due_within(Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(hub.kick_missed_heartbeats(), 1);
        assert_eq!(late.handle.kick_code(), Some(4009));
        assert_eq!(on_time.handle.kick_code(), None);
        assert_eq!(
            loading.handle.kick_code(),
            None,
            "not ready yet: no deadline"
        );
    }

    #[test]
    fn an_ended_session_takes_no_more_frames() {
        let hub = Hub::new(8);
        let a = hub.register(1, 10, 0);
        hub.join_channels(&a.handle, &[5]);
        let handle = a.handle.clone();
        drop(a);
        assert!(!handle.offer(&Arc::new(Frame::new("M", &raw("{}"))), 8));
        assert!(!handle.has_queued());
    }
}
