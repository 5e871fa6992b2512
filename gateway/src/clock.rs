//! One process-wide millisecond clock for deadlines kept in atomics: a u64
//! in each session's handle is cheaper than a timer per session.

use std::sync::LazyLock;
use std::time::Instant;

/// Milliseconds since the process first asked.
pub fn now_ms() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    EPOCH.elapsed().as_millis() as u64
}
