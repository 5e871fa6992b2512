//! Heartbeat deadlines, in one place: the clock they are counted on, how
//! many beats (and pings) an interval allows, and the node-wide sweep that
//! closes sessions whose client went quiet.

use crate::clock::now_ms;
use crate::fanout::Hub;
use std::sync::Arc;
use std::time::Duration;
use tracing::debug;

/// At most this many heartbeats per interval (the contract's 4); WebSocket
/// pings are held to the same rate.
pub const MAX_BEATS_PER_INTERVAL: u32 = 4;

/// A client that sends no heartbeat for this long is closed with 4009.
pub fn timeout(interval: Duration) -> Duration {
    interval * 3 / 2
}

/// Heartbeats and pings counted per interval, to refuse more than allowed.
/// One window for both keeps the idle session's task small.
pub struct BeatWindow {
    /// When the current interval began ([`now_ms`]).
    start_ms: u64,
    beats: u16,
    pings: u16,
}

/// What a client sent that counts against its rate.
#[derive(Debug, Clone, Copy)]
pub enum Beat {
    Heartbeat,
    Ping,
}

impl BeatWindow {
    pub fn starting_now() -> BeatWindow {
        BeatWindow {
            start_ms: now_ms(),
            beats: 0,
            pings: 0,
        }
    }

    /// Counts one frame; false if it is one too many of its kind for its
    /// interval.
    pub fn allow(&mut self, kind: Beat, interval: Duration) -> bool {
        let now = now_ms();
        if now.saturating_sub(self.start_ms) >= interval.as_millis() as u64 {
            self.start_ms = now;
            self.beats = 0;
            self.pings = 0;
        }
        let n = match kind {
            Beat::Heartbeat => &mut self.beats,
            Beat::Ping => &mut self.pings,
        };
        *n = n.saturating_add(1);
        u32::from(*n) <= MAX_BEATS_PER_INTERVAL
    }
}

/// Closes sessions whose client has not sent a heartbeat for 1.5 intervals
/// (4009), and sessions whose token has expired (4004). One sweep of the hub
/// every tenth of an interval, at most every second, in place of a timer in
/// every session: an idle session then holds no timer at all, and a busy
/// one re-arms none per write. A session is closed between 1.5 intervals
/// and 1.5 intervals plus one sweep period after its last heartbeat.
pub async fn sweep(hub: Arc<Hub>, interval: Duration) {
    let period = (interval / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let kicked = hub.kick_overdue(now_ms(), chrono::Utc::now().timestamp());
        if kicked > 0 {
            debug!(sessions = kicked, "heartbeats missed or tokens expired");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_than_four_in_an_interval_are_refused() {
        let interval = Duration::from_millis(50);
        let mut w = BeatWindow::starting_now();
        assert!((0..4).all(|_| w.allow(Beat::Heartbeat, interval)));
        assert!(!w.allow(Beat::Heartbeat, interval));
        assert!(
            (0..4).all(|_| w.allow(Beat::Ping, interval)),
            "pings count apart"
        );
        assert!(!w.allow(Beat::Ping, interval));
        std::thread::sleep(interval + Duration::from_millis(5));
        assert!(
            w.allow(Beat::Heartbeat, interval),
            "a new interval counts from zero"
        );
    }
}
