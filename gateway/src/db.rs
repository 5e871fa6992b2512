//! The gateway's reads. It never writes: the backend owns every row.

use chrono::{DateTime, Utc};
use otako_common::db::{drop_dead_connections, is_connection_error};
pub use otako_common::proto::rfc3339;
use otako_common::proto::{Author, MessageObject};
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

/// A message row with what the dispatcher needs to check before sending it.
#[derive(Clone)]
pub struct LoadedMessage {
    pub channel_id: i64,
    pub deleted: bool,
    pub object: MessageObject,
}

type MessageRow = (
    i64,
    i64,
    String,
    Option<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    i64,
    String,
);

const LOAD_MESSAGES: &str =
    "SELECT m.id, m.channel_id, m.content, m.nonce, m.created_at, m.edited_at, m.deleted_at, \
            u.id, u.username \
     FROM messages m JOIN users u ON u.id = m.author_id WHERE m.id = ANY($1)";

fn loaded(
    (id, channel_id, content, nonce, created, edited, deleted, author_id, username): MessageRow,
) -> LoadedMessage {
    LoadedMessage {
        channel_id,
        deleted: deleted.is_some(),
        object: MessageObject {
            id: id.to_string(),
            channel_id: channel_id.to_string(),
            author: Author {
                id: author_id.to_string(),
                username,
            },
            content,
            nonce,
            timestamp: rfc3339(created),
            edited_timestamp: edited.map(rfc3339),
        },
    }
}

/// At most this many rows in one query.
const MAX_BATCH: usize = 64;

struct LoadRequest {
    id: i64,
    reply: oneshot::Sender<Result<Option<LoadedMessage>, DbError>>,
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

    pub async fn load(&self, id: i64) -> Result<Option<LoadedMessage>, DbError> {
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
) -> Result<HashMap<i64, LoadedMessage>, DbError> {
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
        let rows: Result<Vec<MessageRow>, sqlx::Error> = sqlx::query_as(LOAD_MESSAGES)
            .bind(ids)
            .fetch_all(&mut **c)
            .await;
        match rows {
            Ok(rows) => return Ok(rows.into_iter().map(|r| (r.0, loaded(r))).collect()),
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
/// revoked tokens) and its channels, in one round trip.
pub struct SessionStart {
    pub token_generation: i32,
    pub channels: Vec<i64>,
}

pub async fn session_start(pool: &PgPool, user_id: i64) -> Result<Option<SessionStart>, DbError> {
    let row: Option<(i32, Vec<i64>)> = read(pool, || {
        sqlx::query_as(
            "SELECT u.token_generation, \
                    COALESCE(ARRAY(SELECT channel_id FROM channel_members WHERE user_id = u.id ORDER BY channel_id), '{}') \
             FROM users u WHERE u.id = $1",
        )
        .bind(user_id)
        .fetch_optional(pool)
    })
    .await?;
    Ok(row.map(|(token_generation, channels)| SessionStart {
        token_generation,
        channels,
    }))
}
