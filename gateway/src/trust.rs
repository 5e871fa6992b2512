//! What the node does with a message on the bus that the cluster did not
//! send (an unsigned, forged or stale history event or revocation): count
//! it, and say so once.

use tracing::warn;

/// Counts a message refused on the bus; the first of each kind per subject
/// is logged as a warning, the rest at debug level (a flood of forgeries
/// must not flood the log).
pub fn reject(subject: &'static str, why: &dyn std::fmt::Display, kind: &'static str) {
    use std::collections::HashSet;
    use std::sync::{LazyLock, Mutex};
    static LOGGED: LazyLock<Mutex<HashSet<(&'static str, &'static str)>>> =
        LazyLock::new(Default::default);
    metrics::counter!("otako_bus_rejected_total", "subject" => subject, "kind" => kind)
        .increment(1);
    let first = LOGGED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((subject, kind));
    if first {
        warn!(subject, kind, reason = %why, "dropped a message on the bus that the cluster did not send");
    } else {
        tracing::debug!(subject, kind, reason = %why, "dropped a message on the bus");
    }
}
