//! The backend's HTTP API. Every call has a `try_` form returning status and
//! body, for tests of errors, and a plain form that asserts the contract's
//! success status and returns what the test needs.

use serde_json::{json, Value};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    /// The JSON body; `Null` when empty, a string when not JSON.
    pub body: Value,
}

impl ApiResponse {
    /// Asserts the status and returns the body.
    #[track_caller]
    pub fn expect(self, status: u16, what: &str) -> Value {
        assert_eq!(
            self.status, status,
            "{what}: unexpected status; body {}",
            self.body
        );
        self.body
    }

    /// The error `code` of an error body.
    pub fn code(&self) -> Option<&str> {
        self.body["code"].as_str()
    }
}

/// A user created through the API.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub username: String,
    pub token: String,
}

#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    /// `base` like `http://127.0.0.1:8000`.
    pub fn new(base: String) -> Api {
        Api {
            base,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("an HTTP client"),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Any request: `method` and `path` (from `/`), optional token and JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> ApiResponse {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("authorization", t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: reading the body: {e}"));
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        ApiResponse { status, body }
    }

    pub async fn try_create_user(&self, username: &str) -> ApiResponse {
        self.call(
            reqwest::Method::POST,
            "/users",
            None,
            Some(json!({"username": username})),
        )
        .await
    }

    pub async fn create_user(&self, username: &str) -> User {
        let b = self
            .try_create_user(username)
            .await
            .expect(201, "POST /users");
        let user = User {
            id: b["id"].as_str().expect("user id is a string").to_owned(),
            username: b["username"]
                .as_str()
                .expect("username is a string")
                .to_owned(),
            token: b["token"].as_str().expect("token is a string").to_owned(),
        };
        assert_eq!(user.username, username);
        user
    }

    pub async fn try_create_channel(&self, token: &str, name: &str) -> ApiResponse {
        self.call(
            reqwest::Method::POST,
            "/channels",
            Some(token),
            Some(json!({"name": name})),
        )
        .await
    }

    /// Creates a channel; returns its id.
    pub async fn create_channel(&self, token: &str, name: &str) -> String {
        let b = self
            .try_create_channel(token, name)
            .await
            .expect(201, "POST /channels");
        assert_eq!(b["name"], name);
        b["id"].as_str().expect("channel id is a string").to_owned()
    }

    pub async fn try_add_member(&self, token: &str, channel: &str, user: &str) -> ApiResponse {
        let path = format!("/channels/{channel}/members/{user}");
        self.call(reqwest::Method::PUT, &path, Some(token), None)
            .await
    }

    pub async fn add_member(&self, token: &str, channel: &str, user: &str) {
        self.try_add_member(token, channel, user)
            .await
            .expect(204, "PUT member");
    }

    pub async fn try_remove_member(&self, token: &str, channel: &str, user: &str) -> ApiResponse {
        let path = format!("/channels/{channel}/members/{user}");
        self.call(reqwest::Method::DELETE, &path, Some(token), None)
            .await
    }

    pub async fn remove_member(&self, token: &str, channel: &str, user: &str) {
        self.try_remove_member(token, channel, user)
            .await
            .expect(204, "DELETE member");
    }

    pub async fn try_post_message(
        &self,
        token: &str,
        channel: &str,
        content: &str,
        nonce: Option<&str>,
    ) -> ApiResponse {
        let mut body = json!({"content": content});
        if let Some(n) = nonce {
            body["nonce"] = json!(n);
        }
        let path = format!("/channels/{channel}/messages");
        self.call(reqwest::Method::POST, &path, Some(token), Some(body))
            .await
    }

    /// Posts a message; returns the message object.
    pub async fn post_message(
        &self,
        token: &str,
        channel: &str,
        content: &str,
        nonce: Option<&str>,
    ) -> Value {
        self.try_post_message(token, channel, content, nonce)
            .await
            .expect(200, "POST message")
    }

    pub async fn try_edit_message(
        &self,
        token: &str,
        channel: &str,
        message: &str,
        content: &str,
    ) -> ApiResponse {
        let path = format!("/channels/{channel}/messages/{message}");
        self.call(
            reqwest::Method::PATCH,
            &path,
            Some(token),
            Some(json!({"content": content})),
        )
        .await
    }

    pub async fn edit_message(
        &self,
        token: &str,
        channel: &str,
        message: &str,
        content: &str,
    ) -> Value {
        self.try_edit_message(token, channel, message, content)
            .await
            .expect(200, "PATCH message")
    }

    pub async fn try_delete_message(
        &self,
        token: &str,
        channel: &str,
        message: &str,
    ) -> ApiResponse {
        let path = format!("/channels/{channel}/messages/{message}");
        self.call(reqwest::Method::DELETE, &path, Some(token), None)
            .await
    }

    pub async fn delete_message(&self, token: &str, channel: &str, message: &str) {
        self.try_delete_message(token, channel, message)
            .await
            .expect(204, "DELETE message");
    }

    pub async fn try_list_messages(
        &self,
        token: &str,
        channel: &str,
        limit: Option<u32>,
        before: Option<&str>,
    ) -> ApiResponse {
        let mut query = Vec::new();
        if let Some(l) = limit {
            query.push(format!("limit={l}"));
        }
        if let Some(b) = before {
            query.push(format!("before={b}"));
        }
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        let path = format!("/channels/{channel}/messages{q}");
        self.call(reqwest::Method::GET, &path, Some(token), None)
            .await
    }

    /// Lists messages, newest first.
    pub async fn list_messages(
        &self,
        token: &str,
        channel: &str,
        limit: Option<u32>,
        before: Option<&str>,
    ) -> Vec<Value> {
        match self
            .try_list_messages(token, channel, limit, before)
            .await
            .expect(200, "GET messages")
        {
            Value::Array(a) => a,
            other => panic!("GET messages: expected an array, got {other}"),
        }
    }

    pub async fn try_revoke(&self, token: &str) -> ApiResponse {
        self.call(
            reqwest::Method::POST,
            "/users/@me/revoke",
            Some(token),
            None,
        )
        .await
    }

    /// Revokes every token of the caller; returns the new one.
    pub async fn revoke(&self, token: &str) -> String {
        let b = self
            .try_revoke(token)
            .await
            .expect(200, "POST /users/@me/revoke");
        b["token"].as_str().expect("token is a string").to_owned()
    }
}
