//! The HTTP API of the contract. Every write commits its event to the outbox
//! in the same transaction, then wakes the dispatcher.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::outbox;
use crate::state::AppState;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::routing::{post, put};
use axum::{Json, Router};
use chrono::Utc;
use otako_common::bus::{self, SIGNATURE_HEADER};
use otako_common::event::{parse_id, Event, MemberRef, MessageRef};
use otako_common::message::{MessageObject, MessageRow, MESSAGE_COLUMNS, MESSAGE_FROM};
use otako_common::proto;
use otako_common::token::Claims;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::{PgPool, Postgres, Transaction};
use std::net::SocketAddr;

const MAX_BODY: usize = 64 * 1024;
const MAX_CONTENT_CHARS: usize = 2000;
const MAX_NONCE_CHARS: usize = 64;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/users", post(create_user))
        .route("/users/@me/revoke", post(revoke_tokens))
        .route("/channels", post(create_channel))
        .route(
            "/channels/{channel_id}/members/{user_id}",
            put(add_member).delete(remove_member),
        )
        .route(
            "/channels/{channel_id}/messages",
            post(create_message).get(list_messages),
        )
        .route(
            "/channels/{channel_id}/messages/{message_id}",
            axum::routing::patch(edit_message).delete(delete_message),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// A JSON body whose every rejection answers in the contract's error shape.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::TooLarge),
            Err(JsonRejection::BytesRejection(r))
                if std::error::Error::source(&r)
                    .is_some_and(otako_common::http::is_body_timeout) =>
            {
                Err(ApiError::BodyTimeout)
            }
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::BadRequest(
                "Content-Type must be application/json".into(),
            )),
            Err(r) => Err(ApiError::BadRequest(r.body_text())),
        }
    }
}

/// PostgreSQL text cannot hold NUL, so it is refused as input rather than
/// failing the insert.
fn no_nul(text: &str, what: &str) -> Result<(), ApiError> {
    if text.contains('\0') {
        return Err(ApiError::BadRequest(format!(
            "{what} must not contain NUL characters"
        )));
    }
    Ok(())
}

fn id(s: &str, what: &'static str) -> Result<i64, ApiError> {
    parse_id(s).ok_or_else(|| ApiError::BadRequest(format!("{what} must be a decimal id")))
}

fn issue_token(state: &AppState, user_id: i64, username: &str, generation: i32) -> String {
    state.key.sign(&Claims {
        user_id,
        username: username.to_owned(),
        generation,
        expires_at: Utc::now().timestamp() + state.token_ttl_secs,
    })
}

fn valid_username(u: &str) -> bool {
    (2..=32).contains(&u.len())
        && u.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[derive(Deserialize)]
struct NewUser {
    username: String,
}

/// Account creation is limited per source address: one address cannot mint
/// accounts (and with them fresh per-user limits) by the hundred.
async fn create_user(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Body(body): Body<NewUser>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !valid_username(&body.username) {
        return Err(ApiError::BadRequest(
            "username must be 2-32 characters of a-z, 0-9 and _".into(),
        ));
    }
    state.limits.signups.take(peer.ip())?;
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO users (username) VALUES ($1) ON CONFLICT (username) DO NOTHING RETURNING id",
    )
    .bind(&body.username)
    .fetch_optional(&state.pool)
    .await?;
    let id = id.ok_or(ApiError::Conflict("username is taken"))?;
    let token = issue_token(&state, id, &body.username, 0);
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id.to_string(), "username": body.username, "token": token})),
    ))
}

/// Revokes every token of the caller and returns a fresh one. Open gateway
/// sessions holding an older token are closed with 4004.
async fn revoke_tokens(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<Value>, ApiError> {
    let generation: i32 = sqlx::query_scalar(
        "UPDATE users SET token_generation = token_generation + 1 WHERE id = $1 RETURNING token_generation",
    )
    .bind(me.user_id)
    .fetch_one(&state.pool)
    .await?;
    let notice = json!({"user_id": me.user_id.to_string(), "generation": generation}).to_string();
    // Signed, so that gateways act only on revocations the cluster made.
    let mut headers = async_nats::HeaderMap::new();
    let signature = state
        .bus_key
        .sign(proto::REVOKE_SUBJECT, bus::now_ms(), notice.as_bytes());
    headers.insert(SIGNATURE_HEADER, signature.as_str());
    if let Err(e) = state
        .nats
        .publish_with_headers(proto::REVOKE_SUBJECT, headers, notice.into())
        .await
    {
        tracing::warn!(error = %e, "could not announce a revocation to the gateways");
    }
    Ok(Json(
        json!({"token": issue_token(&state, me.user_id, &me.username, generation)}),
    ))
}

#[derive(Deserialize)]
struct NewChannel {
    name: String,
}

async fn create_channel(
    State(state): State<AppState>,
    Caller(me): Caller,
    Body(body): Body<NewChannel>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::BadRequest("name must be 1-100 characters".into()));
    }
    no_nul(name, "name")?;
    // Creating a channel adds its creator as a member.
    state.limits.members.take(me.user_id)?;
    let mut tx = state.pool.begin().await?;
    // A new channel has no other writers yet: no lock needed.
    let channel_id: i64 =
        sqlx::query_scalar("INSERT INTO channels (name, created_by) VALUES ($1, $2) RETURNING id")
            .bind(name)
            .bind(me.user_id)
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query("INSERT INTO channel_members (channel_id, user_id) VALUES ($1, $2)")
        .bind(channel_id)
        .bind(me.user_id)
        .execute(&mut *tx)
        .await?;
    // The creator's open sessions start receiving the new channel too.
    let member = MemberRef {
        channel_id,
        user_id: me.user_id,
    };
    commit_with_event(&state, tx, Event::MemberAdd(member)).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": channel_id.to_string(), "name": name})),
    ))
}

/// Starts a write to a channel the caller is a member of, holding the
/// channel's write lock (see [`outbox::lock_channel`]).
async fn begin_channel_write(
    state: &AppState,
    channel_id: i64,
    caller: i64,
) -> Result<Transaction<'static, Postgres>, ApiError> {
    require_member(&state.pool, channel_id, caller).await?;
    let mut tx = state.pool.begin().await?;
    outbox::lock_channel(&mut tx, channel_id).await?;
    Ok(tx)
}

/// Records the write's event, commits both, and wakes the dispatcher.
async fn commit_with_event(
    state: &AppState,
    mut tx: Transaction<'static, Postgres>,
    event: Event,
) -> Result<(), ApiError> {
    outbox::enqueue(&mut tx, &event).await?;
    tx.commit().await?;
    state.outbox_wake.committed(event.channel_id());
    Ok(())
}

/// 404 if the channel does not exist, 403 if the caller is not a member.
async fn require_member(pool: &PgPool, channel_id: i64, user_id: i64) -> Result<(), ApiError> {
    let (exists, member): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM channels WHERE id = $1), \
                EXISTS (SELECT 1 FROM channel_members WHERE channel_id = $1 AND user_id = $2)",
    )
    .bind(channel_id)
    .bind(user_id)
    .fetch_one(pool)
    .await?;
    match (exists, member) {
        (false, _) => Err(ApiError::NotFound("unknown channel")),
        (true, false) => Err(ApiError::Forbidden("not a member of this channel".into())),
        (true, true) => Ok(()),
    }
}

async fn add_member(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path((channel_id, user_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (channel_id, user_id) = (id(&channel_id, "channel_id")?, id(&user_id, "user_id")?);
    state.limits.members.take(me.user_id)?;
    let mut tx = begin_channel_write(&state, channel_id, me.user_id).await?;
    let user_exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)")
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await?;
    if !user_exists {
        return Err(ApiError::NotFound("unknown user"));
    }
    let added = sqlx::query(
        "INSERT INTO channel_members (channel_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(channel_id)
    .bind(user_id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if added {
        let member = MemberRef {
            channel_id,
            user_id,
        };
        commit_with_event(&state, tx, Event::MemberAdd(member)).await?;
    }
    // Already a member: nothing was written, nothing to announce.
    Ok(StatusCode::NO_CONTENT)
}

/// A member may remove themselves; the channel's owner (its creator) may
/// remove anyone; nobody else may remove anyone, so the owner is never
/// removed but by their own leave.
async fn remove_member(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path((channel_id, user_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (channel_id, user_id) = (id(&channel_id, "channel_id")?, id(&user_id, "user_id")?);
    state.limits.members.take(me.user_id)?;
    let mut tx = begin_channel_write(&state, channel_id, me.user_id).await?;
    if user_id != me.user_id {
        let owner: i64 = sqlx::query_scalar("SELECT created_by FROM channels WHERE id = $1")
            .bind(channel_id)
            .fetch_one(&mut *tx)
            .await?;
        if owner != me.user_id {
            return Err(ApiError::Forbidden(
                "only the channel's owner may remove other members".into(),
            ));
        }
    }
    let removed = sqlx::query("DELETE FROM channel_members WHERE channel_id = $1 AND user_id = $2")
        .bind(channel_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    if !removed {
        return Err(ApiError::NotFound("not a member of this channel"));
    }
    let member = MemberRef {
        channel_id,
        user_id,
    };
    commit_with_event(&state, tx, Event::MemberRemove(member)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A live (not deleted) message of a channel.
async fn load_message(
    tx: &mut Transaction<'static, Postgres>,
    channel_id: i64,
    message_id: i64,
) -> Result<MessageRow, ApiError> {
    sqlx::query_as(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM} \
         WHERE m.id = $1 AND m.channel_id = $2 AND m.deleted_at IS NULL FOR UPDATE OF m"
    ))
    .bind(message_id)
    .bind(channel_id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(ApiError::NotFound("unknown message"))
}

/// A live message of the channel that the caller wrote: 404 if there is
/// none, 403 if someone else wrote it.
async fn load_own_message(
    tx: &mut Transaction<'static, Postgres>,
    channel_id: i64,
    message_id: i64,
    caller: i64,
    verb: &str,
) -> Result<MessageRow, ApiError> {
    let row = load_message(tx, channel_id, message_id).await?;
    if row.author_id != caller {
        return Err(ApiError::Forbidden(format!(
            "only the author may {verb} a message"
        )));
    }
    Ok(row)
}

fn check_content(content: &str) -> Result<(), ApiError> {
    let n = content.chars().count();
    if n == 0 || n > MAX_CONTENT_CHARS {
        return Err(ApiError::BadRequest(format!(
            "content must be 1-{MAX_CONTENT_CHARS} characters"
        )));
    }
    no_nul(content, "content")
}

#[derive(Deserialize)]
struct NewMessage {
    content: String,
    #[serde(default)]
    nonce: Option<String>,
}

async fn create_message(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(channel_id): Path<String>,
    Body(body): Body<NewMessage>,
) -> Result<Json<MessageObject>, ApiError> {
    let channel_id = id(&channel_id, "channel_id")?;
    check_content(&body.content)?;
    if let Some(nonce) = &body.nonce {
        if nonce.chars().count() > MAX_NONCE_CHARS {
            return Err(ApiError::BadRequest(format!(
                "nonce must be at most {MAX_NONCE_CHARS} characters"
            )));
        }
        no_nul(nonce, "nonce")?;
    }
    // Before anything is read or written: a refused post costs nothing.
    state.limits.messages.take(me.user_id)?;
    let mut tx = begin_channel_write(&state, channel_id, me.user_id).await?;
    let inserted: Option<MessageRow> = sqlx::query_as(&format!(
        "WITH m AS (INSERT INTO messages (channel_id, author_id, content, nonce) \
                    VALUES ($1, $2, $3, $4) \
                    ON CONFLICT (author_id, channel_id, nonce) WHERE nonce IS NOT NULL DO NOTHING \
                    RETURNING *) \
         SELECT {MESSAGE_COLUMNS} FROM m JOIN users u ON u.id = m.author_id"
    ))
    .bind(channel_id)
    .bind(me.user_id)
    .bind(&body.content)
    .bind(&body.nonce)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = inserted else {
        // The same nonce again in this channel: the first message, and no
        // second event.
        let row: MessageRow = sqlx::query_as(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM} \
             WHERE m.author_id = $1 AND m.channel_id = $2 AND m.nonce = $3"
        ))
        .bind(me.user_id)
        .bind(channel_id)
        .bind(&body.nonce)
        .fetch_one(&mut *tx)
        .await?;
        return Ok(Json(row.to_object()));
    };
    let event = MessageRef {
        id: row.id,
        channel_id,
    };
    commit_with_event(&state, tx, Event::MessageCreate(event)).await?;
    Ok(Json(row.to_object()))
}

#[derive(Deserialize)]
struct EditMessage {
    content: String,
}

async fn edit_message(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path((channel_id, message_id)): Path<(String, String)>,
    Body(body): Body<EditMessage>,
) -> Result<Json<MessageObject>, ApiError> {
    let (channel_id, message_id) = (
        id(&channel_id, "channel_id")?,
        id(&message_id, "message_id")?,
    );
    check_content(&body.content)?;
    let mut tx = begin_channel_write(&state, channel_id, me.user_id).await?;
    load_own_message(&mut tx, channel_id, message_id, me.user_id, "edit").await?;
    let row: MessageRow = sqlx::query_as(&format!(
        "WITH m AS (UPDATE messages SET content = $2, edited_at = now() WHERE id = $1 RETURNING *) \
         SELECT {MESSAGE_COLUMNS} FROM m JOIN users u ON u.id = m.author_id"
    ))
    .bind(message_id)
    .bind(&body.content)
    .fetch_one(&mut *tx)
    .await?;
    let event = MessageRef {
        id: message_id,
        channel_id,
    };
    commit_with_event(&state, tx, Event::MessageUpdate(event)).await?;
    Ok(Json(row.to_object()))
}

async fn delete_message(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path((channel_id, message_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (channel_id, message_id) = (
        id(&channel_id, "channel_id")?,
        id(&message_id, "message_id")?,
    );
    let mut tx = begin_channel_write(&state, channel_id, me.user_id).await?;
    load_own_message(&mut tx, channel_id, message_id, me.user_id, "delete").await?;
    sqlx::query("UPDATE messages SET deleted_at = now() WHERE id = $1")
        .bind(message_id)
        .execute(&mut *tx)
        .await?;
    let event = MessageRef {
        id: message_id,
        channel_id,
    };
    commit_with_event(&state, tx, Event::MessageDelete(event)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct Page {
    limit: Option<i64>,
    before: Option<String>,
}

async fn list_messages(
    State(state): State<AppState>,
    Caller(me): Caller,
    Path(channel_id): Path<String>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<MessageObject>>, ApiError> {
    let channel_id = id(&channel_id, "channel_id")?;
    let Query(page) = page.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = page.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be 1-100".into()));
    }
    let before = match page.before.as_deref() {
        Some(b) => id(b, "before")?,
        None => i64::MAX,
    };
    require_member(&state.pool, channel_id, me.user_id).await?;
    let rows: Vec<MessageRow> = sqlx::query_as(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM} \
         WHERE m.channel_id = $1 AND m.id < $2 AND m.deleted_at IS NULL \
         ORDER BY m.id DESC LIMIT $3"
    ))
    .bind(channel_id)
    .bind(before)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(rows.iter().map(MessageRow::to_object).collect()))
}

#[cfg(test)]
mod tests {
    use super::valid_username;

    #[test]
    fn usernames() {
        assert!(valid_username("alice_01"));
        assert!(!valid_username("a"));
        assert!(!valid_username("Alice"));
        assert!(!valid_username("al ice"));
        assert!(!valid_username(&"a".repeat(33)));
    }
}
