//! The gateway's reads. It never writes: the backend owns every row.

use chrono::{DateTime, Utc};
pub use otako_common::proto::rfc3339;
use otako_common::proto::{Author, MessageObject};
use sqlx::PgPool;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

/// A message row with what the dispatcher needs to check before sending it.
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

pub async fn load_message(pool: &PgPool, id: i64) -> Result<Option<LoadedMessage>, DbError> {
    let row: Option<MessageRow> = sqlx::query_as(
        "SELECT m.id, m.channel_id, m.content, m.nonce, m.created_at, m.edited_at, m.deleted_at, \
                u.id, u.username \
         FROM messages m JOIN users u ON u.id = m.author_id WHERE m.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(
        |(id, channel_id, content, nonce, created, edited, deleted, author_id, username)| {
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
        },
    ))
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
    let (channel_exists, user_exists, is_member): (bool, bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM channels WHERE id = $1), \
                EXISTS (SELECT 1 FROM users WHERE id = $2), \
                EXISTS (SELECT 1 FROM channel_members WHERE channel_id = $1 AND user_id = $2)",
    )
    .bind(channel_id)
    .bind(user_id)
    .fetch_one(pool)
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
    let row: Option<(i32, Vec<i64>)> = sqlx::query_as(
        "SELECT u.token_generation, \
                COALESCE(ARRAY(SELECT channel_id FROM channel_members WHERE user_id = u.id ORDER BY channel_id), '{}') \
         FROM users u WHERE u.id = $1",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(token_generation, channels)| SessionStart {
        token_generation,
        channels,
    }))
}
