//! How one message is sent: through the backend's HTTP API, straight into
//! the dispatch connection (a row written to PostgreSQL and a request on
//! `otako.dispatch`, as the backend would), or published to the peer. Every
//! message's content starts with a time stamp (`ts=<unix micros>;`): when it
//! was sent, or, for a row written ahead ([`Sender::prefill`]), when its
//! dispatch request is due.

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
    /// A batch of rows written ahead failed; each of its messages counts it.
    #[error("writing rows ahead: {0}")]
    Prefill(String),
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

/// A message whose row is written and whose dispatch is still to come.
#[derive(Debug, Clone, Copy)]
pub struct Prepared {
    pub id: i64,
    /// The time its content is stamped with: when its dispatch is due.
    pub stamp_us: i64,
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
    /// Whether rows can be written ahead of their send time ([`Sender::prefill`]).
    pub fn prefills(&self) -> bool {
        matches!(self, Sender::Dispatch { .. })
    }

    /// Writes the rows of messages to be dispatched later, one per target,
    /// in one batch; each is stamped with its own due time (unix µs).
    pub async fn prefill(
        &self,
        due: &[(&ChannelTarget, i64)],
        payload_len: usize,
    ) -> Result<Vec<Prepared>, DriveError> {
        let Sender::Dispatch { pool, .. } = self else {
            return Err(DriveError::Prefill(
                "only the dispatch drive writes rows ahead".into(),
            ));
        };
        let rows: Vec<(i64, i64, String)> = due
            .iter()
            .map(|(t, at)| (t.id, t.author_id, stamped_payload(*at, payload_len)))
            .collect();
        let ids = seed::insert_messages(pool, &rows).await?;
        Ok(ids
            .into_iter()
            .zip(due)
            .map(|(id, (_, stamp_us))| Prepared {
                id,
                stamp_us: *stamp_us,
            })
            .collect())
    }

    /// Sends the dispatch request for a row already written, as the outbox
    /// does after the commit.
    pub async fn dispatch(&self, p: &Prepared, target: &ChannelTarget) -> Result<(), DriveError> {
        let Sender::Dispatch { nats, run_id, .. } = self else {
            return Err(DriveError::Request("not the dispatch drive".into()));
        };
        let body = serde_json::json!({
            "t": "EVENT_MESSAGE_CREATE",
            "d": {"id": p.id.to_string(), "channel_id": target.id.to_string()},
            "op": 0,
            "s": p.id.to_string(),
            "event_id": format!("bench-{run_id}-{}", p.id),
        });
        let mut headers = HeaderMap::new();
        headers.insert(COMMITTED_AT_HEADER, p.stamp_us.to_string().as_str());
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

    pub async fn send(&self, target: &ChannelTarget, payload_len: usize) -> Result<(), DriveError> {
        let sent = now_us();
        let content = stamped_payload(sent, payload_len);
        match self {
            Sender::Dispatch { pool, .. } => {
                let id = seed::insert_message(pool, target.id, target.author_id, &content).await?;
                self.dispatch(&Prepared { id, stamp_us: sent }, target)
                    .await
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
