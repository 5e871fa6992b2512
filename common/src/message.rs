//! A message as stored and as shown: one row type with one column list, and
//! one mapping to the contract's message object, for the backend's answers
//! and the gateway's events alike.

use crate::proto::rfc3339;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A message as clients and the HTTP API show it (the contract's message object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageObject {
    pub id: String,
    pub channel_id: String,
    pub author: Author,
    pub content: String,
    pub nonce: Option<String>,
    pub timestamp: String,
    pub edited_timestamp: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Author {
    pub id: String,
    pub username: String,
}

/// One row of `messages` joined with its author.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct MessageRow {
    pub id: i64,
    pub channel_id: i64,
    pub author_id: i64,
    pub username: String,
    pub content: String,
    pub nonce: Option<String>,
    pub created_at: DateTime<Utc>,
    pub edited_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// `SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM} WHERE ...` reads [`MessageRow`]s.
pub const MESSAGE_COLUMNS: &str = "m.id, m.channel_id, m.author_id, u.username, m.content, \
     m.nonce, m.created_at, m.edited_at, m.deleted_at";
pub const MESSAGE_FROM: &str = "messages m JOIN users u ON u.id = m.author_id";

impl MessageRow {
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }

    pub fn to_object(&self) -> MessageObject {
        MessageObject {
            id: self.id.to_string(),
            channel_id: self.channel_id.to_string(),
            author: Author {
                id: self.author_id.to_string(),
                username: self.username.clone(),
            },
            content: self.content.clone(),
            nonce: self.nonce.clone(),
            timestamp: rfc3339(self.created_at),
            edited_timestamp: self.edited_at.map(rfc3339),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_maps_to_the_contract_object() {
        let at = DateTime::parse_from_rfc3339("2026-12-02T10:00:00.5Z")
            .unwrap()
            .with_timezone(&Utc);
        let row = MessageRow {
            id: 3,
            channel_id: 1,
            author_id: 7,
            username: "alice".into(),
            content: "hi".into(),
            nonce: None,
            created_at: at,
            edited_at: None,
            deleted_at: None,
        };
        let v = serde_json::to_value(row.to_object()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id":"3","channel_id":"1","author":{"id":"7","username":"alice"},
                "content":"hi","nonce":null,"timestamp":"2026-12-02T10:00:00.500000Z","edited_timestamp":null})
        );
        assert!(!row.is_deleted());
    }
}
