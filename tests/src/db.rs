//! A fresh database per test on the shared PostgreSQL server, plus direct
//! reads and writes for tests that run without the backend or check its outbox.

use crate::env::{postgres_port, postgres_superuser_url};
use crate::wait;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Connection;
use std::time::Duration;

pub struct TestDb {
    name: String,
    /// As the non-superuser owner `otako`: what the programs under test use.
    url: String,
    admin_url: String,
    pool: PgPool,
}

/// One row of the backend's outbox.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub event_type: String,
    pub channel_id: i64,
    /// The event's `d` as stored (JSONB, read as text).
    pub data: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
}

impl TestDb {
    /// Creates `t_<random>` owned by `otako`. The schema is not applied here:
    /// the programs under test do that (`otako-gateway migrate`).
    pub async fn create() -> TestDb {
        let admin_url = postgres_superuser_url().await.to_owned();
        let name = format!("t_{:016x}", rand::random::<u64>());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {admin_url}: {e}"));
        sqlx::query(&format!("CREATE DATABASE {name} OWNER otako"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        let _ = admin.close().await;
        let url = format!("postgres://otako@127.0.0.1:{}/{name}", postgres_port());
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_lazy(&url)
            .expect("a valid database URL");
        TestDb {
            name,
            url,
            admin_url,
            pool,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL the gateway and backend connect with.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Inserts a user directly (for tests without the backend); returns its id.
    pub async fn insert_user(&self, username: &str) -> i64 {
        sqlx::query_scalar("INSERT INTO users (username) VALUES ($1) RETURNING id")
            .bind(username)
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("inserting user {username}: {e}"))
    }

    /// Inserts a channel with its creator as member; returns its id.
    pub async fn insert_channel(&self, creator: i64, name: &str) -> i64 {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO channels (name, created_by) VALUES ($1, $2) RETURNING id",
        )
        .bind(name)
        .bind(creator)
        .fetch_one(&self.pool)
        .await
        .unwrap_or_else(|e| panic!("inserting channel {name}: {e}"));
        self.insert_member(id, creator).await;
        id
    }

    pub async fn insert_member(&self, channel_id: i64, user_id: i64) {
        sqlx::query("INSERT INTO channel_members (channel_id, user_id) VALUES ($1, $2)")
            .bind(channel_id)
            .bind(user_id)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("adding user {user_id} to channel {channel_id}: {e}"));
    }

    /// Inserts a message directly; returns its id.
    pub async fn insert_message(&self, channel_id: i64, author_id: i64, content: &str) -> i64 {
        sqlx::query_scalar(
            "INSERT INTO messages (channel_id, author_id, content) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(channel_id)
        .bind(author_id)
        .bind(content)
        .fetch_one(&self.pool)
        .await
        .unwrap_or_else(|e| panic!("inserting a message: {e}"))
    }

    /// Bumps a user's token generation, revoking every token issued before.
    pub async fn bump_token_generation(&self, user_id: i64) -> i32 {
        sqlx::query_scalar(
            "UPDATE users SET token_generation = token_generation + 1 WHERE id = $1 RETURNING token_generation",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await
        .unwrap_or_else(|e| panic!("bumping the token generation of user {user_id}: {e}"))
    }

    /// The whole outbox, oldest first.
    pub async fn outbox(&self) -> Vec<OutboxRow> {
        sqlx::query_as(
            "SELECT id, event_type, channel_id, data::text AS data, status, attempts, last_error \
             FROM outbox ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap_or_else(|e| panic!("reading the outbox: {e}"))
    }

    /// Waits until no outbox row is pending (everything written so far was
    /// delivered or dropped), so a test starts from a quiet state.
    pub async fn wait_outbox_settled(&self, timeout: Duration) {
        wait::until("the outbox to have no pending rows", timeout, || async {
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE status = 'pending'")
                    .fetch_one(&self.pool)
                    .await?;
            Ok::<_, sqlx::Error>((pending == 0).then_some(()))
        })
        .await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep it for a post-mortem.
            eprintln!("----- database of the failed test kept: {} -----", self.url);
            return;
        }
        // Dropped inside the test's runtime, which cannot be blocked on: drop
        // the database from a thread with a runtime of its own.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}
