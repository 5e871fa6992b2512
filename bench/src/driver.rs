//! How one message is sent: through the backend's HTTP API, straight into
//! the dispatch connection (a row written to PostgreSQL and a request on
//! `otako.dispatch`, as the backend would), or published to the peer. Every
//! message's content starts with its send time (`ts=<unix micros>;`).

use crate::latency::{now_us, stamped_payload};
use crate::seed;
use crate::shard::peer_subject;
use async_nats::HeaderMap;
use otako_common::proto::{Roundtrip, COMMITTED_AT_HEADER, DISPATCH_SUBJECT};
use sqlx::PgPool;

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("inserting the message: {0}")]
    Insert(#[from] seed::SeedError),
    #[error("dispatch request: {0}")]
    Request(String),
    #[error("dispatch answered success:false: {0}")]
    Refused(String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("publish: {0}")]
    Publish(String),
}

impl DriveError {
    /// A short label to count failures by.
    pub fn label(&self) -> String {
        match self {
            DriveError::Status(s) => format!("http {s}"),
            DriveError::Refused(_) => "dispatch refused".into(),
            other => {
                let mut s = other.to_string();
                s.truncate(80);
                s
            }
        }
    }
}

/// One channel messages go to: its id and an author who is a member.
#[derive(Debug, Clone)]
pub struct ChannelTarget {
    pub index: u32,
    pub id: i64,
    pub author_id: i64,
    /// The author's token, for the HTTP drive.
    pub author_token: String,
}

pub enum Sender {
    /// Row straight into PostgreSQL, then a dispatch request (the backend's
    /// part, without the HTTP hop and the outbox).
    Dispatch {
        pool: PgPool,
        nats: async_nats::Client,
        run_id: String,
    },
    /// `POST /channels/{id}/messages` on the backend.
    Http {
        client: reqwest::Client,
        base_url: String,
    },
    /// A plain NATS publish on the peer, to subject `bench.c<channel>`.
    Peer { nats: async_nats::Client },
}

impl Sender {
    pub async fn send(&self, target: &ChannelTarget, payload_len: usize) -> Result<(), DriveError> {
        let sent = now_us();
        let content = stamped_payload(sent, payload_len);
        match self {
            Sender::Dispatch { pool, nats, run_id } => {
                let id = seed::insert_message(pool, target.id, target.author_id, &content).await?;
                let body = serde_json::json!({
                    "t": "EVENT_MESSAGE_CREATE",
                    "d": {"id": id.to_string(), "channel_id": target.id.to_string()},
                    "op": 0,
                    "s": id.to_string(),
                    "event_id": format!("bench-{run_id}-{id}"),
                });
                let mut headers = HeaderMap::new();
                headers.insert(COMMITTED_AT_HEADER, sent.to_string().as_str());
                let reply = nats
                    .request_with_headers(
                        DISPATCH_SUBJECT,
                        headers,
                        serde_json::to_vec(&body).expect("JSON").into(),
                    )
                    .await
                    .map_err(|e| DriveError::Request(e.to_string()))?;
                let rt: Roundtrip = serde_json::from_slice(&reply.payload)
                    .map_err(|e| DriveError::Request(format!("bad reply: {e}")))?;
                if rt.success {
                    Ok(())
                } else {
                    Err(DriveError::Refused(rt.error.unwrap_or_default()))
                }
            }
            Sender::Http { client, base_url } => {
                let r = client
                    .post(format!("{base_url}/channels/{}/messages", target.id))
                    .header("authorization", &target.author_token)
                    .json(&serde_json::json!({"content": content}))
                    .send()
                    .await
                    .map_err(|e| DriveError::Http(e.to_string()))?;
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(DriveError::Status(r.status().as_u16()))
                }
            }
            Sender::Peer { nats } => nats
                .publish(peer_subject(target.index), content.into_bytes().into())
                .await
                .map_err(|e| DriveError::Publish(e.to_string())),
        }
    }
}
