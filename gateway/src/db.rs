//! The gateway's reads. It never writes: the backend owns every row.

use otako_common::db::{drop_dead_connections, is_connection_error};
use otako_common::message::{MessageRow, MESSAGE_COLUMNS, MESSAGE_FROM};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};

#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    /// As text: one failed batch query fails every request in it.
    #[error("database error: {0}")]
    Sql(String),
    #[error("the message loader stopped")]
    LoaderGone,
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> DbError {
        DbError::Sql(e.to_string())
    }
}

/// Runs a read, and once more when its connection broke under it, after
/// weeding out the pool's other dead connections: a database restart kills
/// them all, and a read is safe to repeat. A second failure is the caller's
/// (the event fails and the sender retries it later).
async fn read<T, F, Fut>(pool: &PgPool, run: F) -> Result<T, DbError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    match run().await {
        Err(e) if is_connection_error(&e) => {
            tracing::debug!(error = %e, "database connection broke; reading again");
            drop_dead_connections(pool).await;
            Ok(run().await?)
        }
        done => Ok(done?),
    }
}

/// The one query on the hot path: every message row asked for at once.
static LOAD_MESSAGES: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM} WHERE m.id = ANY($1)")
});

/// At most this many rows in one query.
const MAX_BATCH: usize = 64;

struct LoadRequest {
    id: i64,
    reply: oneshot::Sender<Result<Option<MessageRow>, DbError>>,
}

/// Loads message rows for the dispatcher: the one query on the hot path.
///
/// A few workers each keep one connection and load every request waiting
/// at the time in one query. Keeping the connection skips what the pool does
/// around each query (sqlx 0.8 pings a connection when it is returned, a
/// second round trip per event); batching makes a burst of events cost one
/// round trip instead of one each, and costs nothing when requests come one
/// by one.
#[derive(Clone)]
pub struct MessageLoader {
    requests: mpsc::Sender<LoadRequest>,
}

impl MessageLoader {
    pub fn spawn(pool: PgPool, workers: usize) -> MessageLoader {
        let (requests, rx) = mpsc::channel(1024);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..workers.max(1) {
            tokio::spawn(load_worker(pool.clone(), rx.clone()));
        }
        MessageLoader { requests }
    }

    pub async fn load(&self, id: i64) -> Result<Option<MessageRow>, DbError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(LoadRequest { id, reply })
            .await
            .map_err(|_| DbError::LoaderGone)?;
        answer.await.map_err(|_| DbError::LoaderGone)?
    }
}

async fn load_worker(pool: PgPool, requests: Arc<Mutex<mpsc::Receiver<LoadRequest>>>) {
    let mut conn: Option<PoolConnection<Postgres>> = None;
    loop {
        let batch = {
            let mut rx = requests.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            batch
        };
        let ids: Vec<i64> = batch.iter().map(|r| r.id).collect();
        match load_batch(&pool, &mut conn, &ids).await {
            Ok(rows) => {
                // An id may be asked for twice at once (a retry racing the
                // first attempt): each asker gets the row.
                for r in batch {
                    let _ = r.reply.send(Ok(rows.get(&r.id).cloned()));
                }
            }
            Err(e) => {
                for r in batch {
                    let _ = r.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One query for `ids` on the worker's connection, taken from the pool when
/// it has none; run once more on a fresh connection when the kept one broke
/// (the database restarted since it was last used).
async fn load_batch(
    pool: &PgPool,
    conn: &mut Option<PoolConnection<Postgres>>,
    ids: &[i64],
) -> Result<HashMap<i64, MessageRow>, DbError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let c = match conn {
            Some(c) => c,
            None => {
                let mut fresh = pool.acquire().await?;
                // `id = ANY($1)` never gets PostgreSQL's cached generic plan
                // on its own (the custom plan's row estimate always looks
                // cheaper), so every load would be planned afresh: a third
                // of the database's CPU per event in the latency benchmark.
                // Every plan of this one query is the same primary-key scan.
                sqlx::query("SET plan_cache_mode = force_generic_plan")
                    .execute(&mut *fresh)
                    .await?;
                conn.insert(fresh)
            }
        };
        let rows: Result<Vec<MessageRow>, sqlx::Error> = sqlx::query_as(LOAD_MESSAGES.as_str())
            .bind(ids)
            .fetch_all(&mut **c)
            .await;
        match rows {
            Ok(rows) => return Ok(rows.into_iter().map(|r| (r.id, r)).collect()),
            Err(e) if is_connection_error(&e) => {
                // Closed, not returned: the pool must not hand it out again.
                if let Some(broken) = conn.take() {
                    drop(broken.detach());
                }
                if tries == 2 {
                    return Err(e.into());
                }
                tracing::debug!(error = %e, "database connection broke; loading again");
                drop_dead_connections(pool).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What the database says about a (channel, user) pair.
pub struct Membership {
    pub channel_exists: bool,
    pub user_exists: bool,
    pub is_member: bool,
}

pub async fn membership(
    pool: &PgPool,
    channel_id: i64,
    user_id: i64,
) -> Result<Membership, DbError> {
    let (channel_exists, user_exists, is_member): (bool, bool, bool) = read(pool, || {
        sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM channels WHERE id = $1), \
                    EXISTS (SELECT 1 FROM users WHERE id = $2), \
                    EXISTS (SELECT 1 FROM channel_members WHERE channel_id = $1 AND user_id = $2)",
        )
        .bind(channel_id)
        .bind(user_id)
        .fetch_one(pool)
    })
    .await?;
    Ok(Membership {
        channel_exists,
        user_exists,
        is_member,
    })
}

/// What a new session needs: the user's current token generation (to refuse
/// revoked tokens), its channels, and the channels whose membership change for the user is committed but
/// not yet dispatched (still pending in the outbox), in one round trip.
///
/// The database runs ahead of the history by what waits to be dispatched: a
/// removal committed but not yet in the history still has the channel's
/// earlier events before it, and an add committed but not yet in the history
/// has events before it that are not the user's. A session takes its
/// channels as the history will have them at its seam: pending removals
/// still joined, pending adds not yet.
pub struct SessionStart {
    pub token_generation: i32,
    pub channels: Vec<i64>,
    /// Channels with a pending add for the user.
    pub pending_adds: Vec<i64>,
    /// Channels with a pending removal of the user.
    pub pending_removes: Vec<i64>,
}

const SESSION_START: &str = "SELECT u.token_generation, \
    COALESCE(ARRAY(SELECT channel_id FROM channel_members WHERE user_id = u.id ORDER BY channel_id), '{}'), \
    COALESCE(ARRAY(SELECT channel_id FROM outbox WHERE status = 'pending' \
        AND event_type = 'EVENT_CHANNEL_MEMBER_ADD' AND data->>'user_id' = u.id::text), '{}'), \
    COALESCE(ARRAY(SELECT channel_id FROM outbox WHERE status = 'pending' \
        AND event_type = 'EVENT_CHANNEL_MEMBER_REMOVE' AND data->>'user_id' = u.id::text), '{}') \
    FROM users u WHERE u.id = $1";

pub async fn session_start(pool: &PgPool, user_id: i64) -> Result<Option<SessionStart>, DbError> {
    type Row = (i32, Vec<i64>, Vec<i64>, Vec<i64>);
    let row: Option<Row> = read(pool, || {
        sqlx::query_as(SESSION_START)
            .bind(user_id)
            .fetch_optional(pool)
    })
    .await?;
    Ok(row.map(
        |(token_generation, channels, pending_adds, pending_removes)| SessionStart {
            token_generation,
            channels,
            pending_adds,
            pending_removes,
        },
    ))
}

impl SessionStart {
    /// The channels as the history has them: the database's, except where
    /// a change for the user is still pending in the outbox and
    /// `in_history` says the history does not have it yet
    /// (`in_history(channel)` is true when the history's last member event
    /// for the user there is the pending change). A pending removal's
    /// channel is still joined; a pending add's channel not yet.
    pub fn channels_at_history(&self, in_history: impl Fn(i64) -> bool) -> Vec<i64> {
        let mut out: Vec<i64> = self
            .channels
            .iter()
            .copied()
            .filter(|c| !self.pending_adds.contains(c) || in_history(*c))
            .collect();
        for &c in &self.pending_removes {
            let member_in_db = self.channels.contains(&c);
            if !member_in_db && !in_history(c) {
                out.push(c);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The channels with a pending change for the user.
    pub fn pending(&self) -> impl Iterator<Item = i64> + '_ {
        self.pending_adds
            .iter()
            .chain(&self.pending_removes)
            .copied()
    }
}

/// Whether a dispatch request is the project's own outbox row: the backend
/// sends `event_id` = the row's id, and the row names the same event. Such
/// an event is a fact of its channel's commit order.
pub async fn is_outbox_event(
    pool: &PgPool,
    event_id: &str,
    t: &str,
    data: &serde_json::Value,
) -> Result<bool, DbError> {
    let Some(id) = otako_common::event::parse_id(event_id) else {
        return Ok(false);
    };
    read(pool, || {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE id = $1 AND event_type = $2 AND data = $3)",
        )
        .bind(id)
        .bind(t)
        .bind(data)
        .fetch_one(pool)
    })
    .await
}

/// The current token generation of each of `users` that exists: sessions
/// holding an older one were revoked, even if this node missed the notice.
pub async fn token_generations(pool: &PgPool, users: &[i64]) -> Result<Vec<(i64, i32)>, DbError> {
    read(pool, || {
        sqlx::query_as("SELECT id, token_generation FROM users WHERE id = ANY($1)")
            .bind(users)
            .fetch_all(pool)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::SessionStart;

    #[test]
    fn channels_at_the_history_undo_what_is_still_pending() {
        let start = SessionStart {
            token_generation: 0,
            channels: vec![1, 2, 3],
            pending_adds: vec![3],
            pending_removes: vec![4],
        };
        // Nothing pending has reached the history yet.
        assert_eq!(start.channels_at_history(|_| false), vec![1, 2, 4]);
        // Both have: the database is right.
        assert_eq!(start.channels_at_history(|_| true), vec![1, 2, 3]);
    }
}
