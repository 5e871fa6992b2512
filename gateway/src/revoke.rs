//! Sessions follow their tokens: a revocation closes the user's older
//! sessions on every node with 4004.
//!
//! The backend announces each revocation on `otako.revoke`, signed with the
//! cluster's bus key: an unsigned, altered or stale notice is dropped and
//! counted, and a replayed copy of a genuine one acts once at most (it can
//! only repeat what it said). A node that misses the notice (its NATS link
//! was down at the time) still closes such sessions: every
//! [`RECHECK_EVERY`] it compares its sessions' token generations with the
//! database, so a revoked session ends within that bound wherever it is.

use crate::fanout::Hub;
use crate::trust::reject;
use futures_util::StreamExt;
use otako_common::bus::BusKey;
use otako_common::close::CloseCode;
use otako_common::proto::REVOKE_SUBJECT;
use serde::Deserialize;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

/// How old a signed revocation may be when it arrives.
const MAX_NOTICE_AGE_MS: i64 = 60_000;
/// Users per generation query.
const RECHECK_BATCH: usize = 1_000;

#[derive(Deserialize)]
struct Revocation {
    user_id: String,
    generation: i32,
}

/// Closes the sessions whose tokens the backend revoked.
pub async fn listen(mut sub: async_nats::Subscriber, hub: Arc<Hub>, key: BusKey) {
    while let Some(msg) = sub.next().await {
        let signature = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(otako_common::bus::SIGNATURE_HEADER))
            .map(|v| v.as_str());
        if let Err(e) = key.verify(
            REVOKE_SUBJECT,
            signature,
            &msg.payload,
            otako_common::bus::now_ms(),
            MAX_NOTICE_AGE_MS,
        ) {
            reject("revoke", &e, e.kind());
            continue;
        }
        let Ok(r) = serde_json::from_slice::<Revocation>(&msg.payload) else {
            warn!("dropping a malformed revocation");
            continue;
        };
        let Some(user_id) = otako_common::event::parse_id(&r.user_id) else {
            continue;
        };
        for s in hub.sessions_of_user(user_id) {
            if s.token_generation < r.generation {
                s.kick(CloseCode::AuthFailed);
            }
        }
    }
}

/// Closes sessions whose token generation is behind the database's.
pub async fn recheck(hub: Arc<Hub>, pool: PgPool, every: Duration) {
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(100)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let users = hub.users();
        for batch in users.chunks(RECHECK_BATCH) {
            let current = match crate::db::token_generations(&pool, batch).await {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, "could not check token generations; next round");
                    break;
                }
            };
            for (user_id, generation) in current {
                for s in hub.sessions_of_user(user_id) {
                    if s.token_generation < generation {
                        s.kick(CloseCode::AuthFailed);
                    }
                }
            }
        }
    }
}
