//! Resume: what a session that comes back with a cursor missed, read from
//! the history and filtered by what its user could see at each event.
//!
//! The session first joins its channels live at position P (the hub's seam,
//! see `Hub::join_channels`); every event after P reaches it live. The
//! resume replays the events after the cursor C through P:
//!
//! 1. The user's member events in (C, P], read with the server filtering by
//!    subject (`otako.ev.*.u<user>`).
//! 2. The membership at C: a channel whose first member event in the range
//!    is a remove was a member channel at C, one whose first is an add was
//!    not; a channel with no member event in the range was one if the
//!    session joined it at P. That holds because the session joins with the
//!    membership as of P: the node has routed up to the history's end as of
//!    the channel list's read before it joins (`Session::catch_up`), and no
//!    clock is compared (the database's and the history's run apart).
//! 3. The events of every channel the user was in at some point of the
//!    range, read with one subject filter per channel (or all, for a user in
//!    many), applying the member events met on the way: after an add the
//!    channel's events are delivered, after a remove (itself delivered) they
//!    stop.
//!
//! A replay is bounded: at most `max_events` events delivered and a bounded
//! read time (the history's); past the bound the session starts fresh
//! (`resumed:false`) and the client refetches over HTTP.

use crate::fanout::Routing;
use crate::frame::Frame;
use crate::history::{History, HistoryError, Stored};
use otako_common::event::EventType;
use otako_common::history::{channel_filter, user_filter, Cursor};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// A user in more channels than this is replayed from one unfiltered read
/// (filtered here) instead of one subject filter per channel.
const MAX_FILTERS: usize = 256;

/// Why a session does not resume; it starts fresh instead.
#[derive(Debug, thiserror::Error)]
pub enum NotResumed {
    #[error("the cursor is malformed")]
    Malformed,
    #[error("the cursor is from another history")]
    OtherEpoch,
    #[error("the cursor is ahead of the history")]
    Unknown,
    #[error("the cursor is older than the history holds")]
    Gone,
    #[error("the cursor is older than the resume window")]
    TooOld,
    #[error("more than {0} events were missed")]
    TooMany(usize),
    #[error(transparent)]
    History(#[from] HistoryError),
}

impl NotResumed {
    /// A label for the resume metric.
    pub fn label(&self) -> &'static str {
        match self {
            NotResumed::Malformed => "malformed",
            NotResumed::OtherEpoch => "other_epoch",
            NotResumed::Unknown => "unknown",
            NotResumed::Gone => "gone",
            NotResumed::TooOld => "too_old",
            NotResumed::TooMany(_) => "too_many",
            NotResumed::History(_) => "history_error",
        }
    }
}

/// How far back a resume reaches.
#[derive(Debug, Clone, Copy)]
pub struct ResumeLimits {
    pub window: Duration,
    pub max_events: usize,
}

/// Where a session joined the live events, and what held there.
pub struct Seam<'a> {
    /// The history position its live events follow (P).
    pub seq: u64,
    /// The channels it joined at P.
    pub channels: &'a [i64],
    /// The history's first and last positions, read just before it joined.
    pub bounds: (u64, u64),
}

/// What a resuming session is sent after READY, oldest first.
pub struct Replay {
    pub cursor: Cursor,
    pub frames: Vec<Arc<Frame>>,
}

/// Reads what the session missed between `cursor` and `seam`.
pub async fn replay(
    history: &History,
    cursor: &str,
    user_id: i64,
    seam: Seam<'_>,
    limits: ResumeLimits,
) -> Result<Replay, NotResumed> {
    let cursor = Cursor::parse(cursor).map_err(|_| NotResumed::Malformed)?;
    if cursor.epoch != history.epoch {
        return Err(NotResumed::OtherEpoch);
    }
    let (first, last) = seam.bounds;
    let channels_at_seam = seam.channels;
    let seam = seam.seq;
    if cursor.seq > last.max(seam) {
        return Err(NotResumed::Unknown);
    }
    // The events right after the cursor must still be there.
    if cursor.seq + 1 < first {
        return Err(NotResumed::Gone);
    }
    let cursor_ms = if cursor.seq == 0 {
        None
    } else {
        Some(
            history
                .stored_at_ms(cursor.seq)
                .await?
                .ok_or(NotResumed::Gone)?,
        )
    };
    let now_ms = otako_common::bus::now_ms();
    if let Some(at) = cursor_ms {
        if now_ms - at > limits.window.as_millis() as i64 {
            return Err(NotResumed::TooOld);
        }
    }
    if cursor.seq >= seam {
        // Nothing in the range: what follows the seam comes live (and the
        // session skips what it already has up to the cursor).
        return Ok(Replay {
            cursor,
            frames: Vec::new(),
        });
    }
    let member_events = history
        .read(
            vec![user_filter(user_id)],
            cursor.seq,
            seam,
            limits.max_events,
        )
        .await?
        .ok_or(NotResumed::TooMany(limits.max_events))?;
    let plan = Plan::new(user_id, &member_events, channels_at_seam);
    if plan.channels.is_empty() {
        return Ok(Replay {
            cursor,
            frames: Vec::new(),
        });
    }
    let filters = if plan.channels.len() > MAX_FILTERS {
        Vec::new()
    } else {
        plan.channels.iter().map(|&c| channel_filter(c)).collect()
    };
    // Unfiltered reads see other channels too: they count towards the bound
    // only once chosen, so the read itself is bounded by the range.
    let read_bound = if filters.is_empty() {
        usize::MAX
    } else {
        limits.max_events
    };
    let events = history
        .read(filters, cursor.seq, seam, read_bound)
        .await?
        .ok_or(NotResumed::TooMany(limits.max_events))?;
    let frames = plan.select(events);
    if frames.len() > limits.max_events {
        return Err(NotResumed::TooMany(limits.max_events));
    }
    Ok(Replay { cursor, frames })
}

/// Which channels a replay reads, and which of them the user was in at the
/// cursor.
#[derive(Debug, PartialEq)]
struct Plan {
    user_id: i64,
    /// Channels the user was in at some point of the range.
    channels: BTreeSet<i64>,
    /// Of those, the ones the user was in at the cursor.
    member_at_cursor: BTreeSet<i64>,
}

impl Plan {
    fn new(user_id: i64, member_events: &[Stored], channels_at_seam: &[i64]) -> Plan {
        // The first member event of each channel in the range tells what
        // held before it.
        let mut first: HashMap<i64, EventType> = HashMap::new();
        for ev in member_events {
            if ev.routing.user_id == Some(user_id) {
                first.entry(ev.routing.channel_id).or_insert(ev.routing.t);
            }
        }
        let mut member_at_cursor = BTreeSet::new();
        let mut channels = BTreeSet::new();
        for (&c, &t) in &first {
            channels.insert(c);
            if t == EventType::ChannelMemberRemove {
                member_at_cursor.insert(c);
            }
        }
        // No change in the range: what held at the seam held at the cursor.
        for &c in channels_at_seam {
            if !first.contains_key(&c) {
                channels.insert(c);
                member_at_cursor.insert(c);
            }
        }
        Plan {
            user_id,
            channels,
            member_at_cursor,
        }
    }

    /// The frames the user may see, in history order, applying the member
    /// events on the way.
    fn select(&self, events: Vec<Stored>) -> Vec<Arc<Frame>> {
        let mut member = self.member_at_cursor.clone();
        let mut out = Vec::new();
        for ev in events {
            let Routing {
                t,
                channel_id,
                user_id,
            } = ev.routing;
            if !self.channels.contains(&channel_id) {
                continue;
            }
            let concerns_user = user_id == Some(self.user_id);
            let deliver = match t {
                EventType::ChannelMemberAdd if concerns_user => {
                    member.insert(channel_id);
                    true
                }
                EventType::ChannelMemberRemove if concerns_user => {
                    member.remove(&channel_id);
                    true
                }
                _ => member.contains(&channel_id),
            };
            if deliver {
                out.push(Arc::new(ev.frame));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    const USER: i64 = 7;

    fn stored(seq: u64, t: EventType, channel_id: i64, user_id: Option<i64>) -> Stored {
        let d = RawValue::from_string("{}".to_owned()).unwrap();
        Stored {
            routing: Routing {
                t,
                channel_id,
                user_id,
            },
            frame: Frame::new(t.as_str(), &d, &Cursor::new("e", seq)),
        }
    }

    fn msg(seq: u64, channel: i64) -> Stored {
        stored(seq, EventType::MessageCreate, channel, None)
    }

    fn add(seq: u64, channel: i64, user: i64) -> Stored {
        stored(seq, EventType::ChannelMemberAdd, channel, Some(user))
    }

    fn remove(seq: u64, channel: i64, user: i64) -> Stored {
        stored(seq, EventType::ChannelMemberRemove, channel, Some(user))
    }

    fn seqs(frames: &[Arc<Frame>]) -> Vec<u64> {
        frames.iter().map(|f| f.seq).collect()
    }

    #[test]
    fn a_member_removed_while_away_gets_the_channel_up_to_the_removal() {
        // Channel 1: member since long ago, removed at 13. Channel 2: added
        // at 12. The database now lists only channel 2.
        let member_events = [add(12, 2, USER), remove(13, 1, USER)];
        let plan = Plan::new(USER, &member_events, &[2]);
        assert_eq!(plan.channels, BTreeSet::from([1, 2]));
        assert_eq!(plan.member_at_cursor, BTreeSet::from([1]));
        let events = vec![
            msg(11, 1),
            msg(11, 2),
            add(12, 2, USER),
            msg(14, 2),
            remove(13, 1, USER),
            msg(15, 1),
            msg(16, 2),
        ];
        // (seq 11 twice: the test only needs order, not unique positions.)
        let out = plan.select(events);
        assert_eq!(seqs(&out), vec![11, 12, 14, 13, 16]);
    }

    #[test]
    fn a_channel_without_a_change_in_the_range_is_replayed_as_joined_at_the_seam() {
        // Channel 3's add is committed but after the seam: the session did
        // not join it there, and its events before the add are not the user's.
        let plan = Plan::new(USER, &[], &[4]);
        assert_eq!(plan.channels, BTreeSet::from([4]));
        let out = plan.select(vec![msg(2, 3), msg(3, 4)]);
        assert_eq!(seqs(&out), vec![3]);
    }

    #[test]
    fn other_users_member_events_follow_the_channel() {
        let plan = Plan::new(USER, &[], &[1]);
        let out = plan.select(vec![add(2, 1, 99), msg(3, 9), remove(4, 1, 99)]);
        assert_eq!(seqs(&out), vec![2, 4]);
    }

    #[test]
    fn an_add_then_remove_in_the_range_delivers_between_them_only() {
        let member_events = [add(3, 1, USER), remove(6, 1, USER)];
        let plan = Plan::new(USER, &member_events, &[]);
        assert_eq!(plan.member_at_cursor, BTreeSet::new());
        let out = plan.select(vec![
            msg(2, 1),
            add(3, 1, USER),
            msg(4, 1),
            remove(6, 1, USER),
            msg(7, 1),
        ]);
        assert_eq!(seqs(&out), vec![3, 4, 6]);
    }
}
