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
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

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
}

/// The part of a session the hub holds: where to queue its frames and how to
/// stop it.
#[derive(Debug)]
pub struct SessionHandle {
    pub id: u64,
    pub user_id: i64,
    pub token_generation: i32,
    tx: mpsc::Sender<Arc<Frame>>,
    kick_code: AtomicU16,
    pub kicked: Notify,
}

impl Kick {
    pub fn from_code(code: u16) -> Option<Kick> {
        [
            Kick::TooSlow,
            Kick::Revoked,
            Kick::OverLimit,
            Kick::Reconnect,
        ]
        .into_iter()
        .find(|k| *k as u16 == code)
    }
}

impl SessionHandle {
    pub fn kick(&self, why: Kick) {
        // The first reason wins; later ones change nothing.
        if self
            .kick_code
            .compare_exchange(0, why as u16, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.kicked.notify_one();
        }
    }

    pub fn kick_code(&self) -> Option<u16> {
        match self.kick_code.load(Ordering::Acquire) {
            0 => None,
            c => Some(c),
        }
    }

    /// Queues a frame without waiting; a full queue marks the session too slow.
    fn offer(&self, frame: &Arc<Frame>) -> bool {
        match self.tx.try_send(frame.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.kick_code().is_none() {
                    metrics::counter!("otako_slow_client_closes_total").increment(1);
                }
                self.kick(Kick::TooSlow);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

#[derive(Default)]
struct Index {
    by_channel: HashMap<i64, HashMap<u64, Arc<SessionHandle>>>,
    by_user: HashMap<i64, HashMap<u64, Arc<SessionHandle>>>,
    channels_of: HashMap<u64, HashSet<i64>>,
    /// Sessions still loading their channel list, with the membership changes
    /// that reached them meanwhile: these win over the (possibly older) list.
    loading: HashMap<u64, HashMap<i64, bool>>,
}

impl Index {
    fn join(&mut self, s: &Arc<SessionHandle>, channel_id: i64) {
        if self.channels_of.entry(s.id).or_default().insert(channel_id) {
            self.by_channel
                .entry(channel_id)
                .or_default()
                .insert(s.id, s.clone());
        }
    }

    fn leave(&mut self, session_id: u64, channel_id: i64) {
        if let Some(chs) = self.channels_of.get_mut(&session_id) {
            chs.remove(&channel_id);
        }
        if let Some(members) = self.by_channel.get_mut(&channel_id) {
            members.remove(&session_id);
            if members.is_empty() {
                self.by_channel.remove(&channel_id);
            }
        }
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
    pub fn register(
        self: &Arc<Hub>,
        id: u64,
        user_id: i64,
        token_generation: i32,
    ) -> (Registration, mpsc::Receiver<Arc<Frame>>) {
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        let handle = Arc::new(SessionHandle {
            id,
            user_id,
            token_generation,
            tx,
            kick_code: AtomicU16::new(0),
            kicked: Notify::new(),
        });
        let mut idx = self.index.write();
        idx.by_user
            .entry(user_id)
            .or_default()
            .insert(id, handle.clone());
        idx.channels_of.insert(id, HashSet::new());
        idx.loading.insert(id, HashMap::new());
        drop(idx);
        (
            Registration {
                hub: self.clone(),
                handle,
            },
            rx,
        )
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
    }

    /// The channels a session currently receives, sorted.
    pub fn channels_of(&self, session_id: u64) -> Vec<i64> {
        let idx = self.index.read();
        let mut v: Vec<i64> = idx
            .channels_of
            .get(&session_id)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    fn unregister(&self, s: &SessionHandle) {
        let mut idx = self.index.write();
        idx.loading.remove(&s.id);
        if let Some(chs) = idx.channels_of.remove(&s.id) {
            for c in chs {
                if let Some(members) = idx.by_channel.get_mut(&c) {
                    members.remove(&s.id);
                    if members.is_empty() {
                        idx.by_channel.remove(&c);
                    }
                }
            }
        }
        if let Some(sessions) = idx.by_user.get_mut(&s.user_id) {
            sessions.remove(&s.id);
            if sessions.is_empty() {
                idx.by_user.remove(&s.user_id);
            }
        }
        drop(idx);
    }

    pub fn session_count(&self) -> usize {
        self.index.read().channels_of.len()
    }

    /// Every session of this node, for draining.
    pub fn all_sessions(&self) -> Vec<Arc<SessionHandle>> {
        let idx = self.index.read();
        idx.by_user
            .values()
            .flat_map(|m| m.values().cloned())
            .collect()
    }

    /// Sessions of one user on this node.
    pub fn sessions_of_user(&self, user_id: i64) -> Vec<Arc<SessionHandle>> {
        let idx = self.index.read();
        idx.by_user
            .get(&user_id)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
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
                let sessions: Vec<_> = idx
                    .by_user
                    .get(&user)
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default();
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
                let mut idx = self.index.write();
                let user_sessions: Vec<_> = idx
                    .by_user
                    .get(&user)
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default();
                drop(idx);
                let n = self.offer_channel(ev.channel_id, &frame, Some(user))
                    + user_sessions.iter().filter(|s| s.offer(&frame)).count();
                idx = self.index.write();
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
            .filter(|s| s.offer(frame))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (a, mut rx_a) = hub.register(1, 10, 0);
        let (_b, mut rx_b) = hub.register(2, 20, 0);
        hub.join_channels(&a.handle, &[5]);
        let d = raw("{}");
        let ev = event("e1", EventType::MessageCreate, 5, None, &d);
        assert_eq!(hub.deliver(&ev, Frame::new("X", &d)), 1);
        assert_eq!(
            hub.deliver(&ev, Frame::new("X", &d)),
            0,
            "a retry is not delivered again"
        );
        assert!(rx_a.try_recv().is_ok());
        assert!(rx_a.try_recv().is_err());
        assert!(rx_b.try_recv().is_err());
    }

    #[test]
    fn membership_events_move_sessions() {
        let hub = Hub::new(8);
        let (a, mut rx_a) = hub.register(1, 10, 0);
        let (_b, mut rx_b) = hub.register(2, 20, 0);
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
        assert_eq!(std::iter::from_fn(|| rx_a.try_recv().ok()).count(), 3);
        assert_eq!(std::iter::from_fn(|| rx_b.try_recv().ok()).count(), 2);
    }

    #[test]
    fn a_remove_during_loading_beats_the_older_channel_list() {
        let hub = Hub::new(8);
        let (a, _rx) = hub.register(1, 10, 0);
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
        let (slow, _rx_slow) = hub.register(1, 10, 0);
        let (fast, mut rx_fast) = hub.register(2, 20, 0);
        hub.join_channels(&slow.handle, &[5]);
        hub.join_channels(&fast.handle, &[5]);
        let d = raw("{}");
        for i in 0..3 {
            let id = format!("e{i}");
            hub.deliver(
                &event(&id, EventType::MessageCreate, 5, None, &d),
                Frame::new("M", &d),
            );
            while rx_fast.try_recv().is_ok() {}
        }
        assert_eq!(slow.handle.kick_code(), Some(4011));
        assert_eq!(fast.handle.kick_code(), None);
    }

    #[test]
    fn dropping_a_registration_unregisters() {
        let hub = Hub::new(2);
        let (a, _rx) = hub.register(1, 10, 0);
        hub.join_channels(&a.handle, &[5, 6]);
        assert_eq!(hub.session_count(), 1);
        drop(a);
        assert_eq!(hub.session_count(), 0);
        assert!(hub.sessions_of_user(10).is_empty());
    }
}
