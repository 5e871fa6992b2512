//! The schema lives in `migrations/` and is compiled into both binaries.

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::time::Duration;

pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run(pool).await
}

/// A pooled connection unused for this long is pinged before it is handed
/// out again.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Opens a pool lazily, so a process starts (and reports not-ready) while the
/// database is down instead of refusing to start.
///
/// sqlx pings every connection before handing it out unless told otherwise:
/// one more round trip per query, which the dispatch benchmark showed as 14%
/// of a gateway's CPU. Only a connection that sat idle is pinged (after a
/// database restart those are the dead ones); a busy one proves itself with
/// every query, and a read that finds its connection broken is retried
/// (`is_connection_error`).
pub fn lazy_pool(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(2))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for < PING_IF_IDLE_FOR {
                    return Ok(true);
                }
                // false: sqlx closes this one and hands out another.
                Ok(sqlx::Connection::ping(conn).await.is_ok())
            })
        })
        .connect_lazy(url)
}

/// Pings every idle connection of the pool and closes the dead ones. Call it
/// when a connection was found broken: the others opened before the same
/// database restart are dead too, and one used less than `PING_IF_IDLE_FOR`
/// ago would otherwise be handed out unchecked.
pub async fn drop_dead_connections(pool: &PgPool) {
    let mut alive = Vec::new();
    // try_acquire takes idle connections only, without the pool's checks.
    while let Some(mut conn) = pool.try_acquire() {
        if sqlx::Connection::ping(&mut *conn).await.is_ok() {
            alive.push(conn);
        } else {
            drop(conn.detach());
        }
    }
    // Dropping `alive` returns them to the pool.
}

/// Whether a query failed because its connection broke (the server went
/// away, restarted, or closed it), not because of the query: a read that
/// fails so can be run again on another connection.
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        // admin_shutdown, crash_shutdown, cannot_connect_now: the server
        // ended this session.
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("57P01" | "57P02" | "57P03"))
        }
        _ => false,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("bad DATABASE_URL: {0}")]
    Url(#[from] sqlx::Error),
    #[error("applying migrations: {0}")]
    Migrate(#[from] MigrateError),
}

/// Opens the pool and, when asked, applies the migrations first.
pub async fn open(
    url: &str,
    max_connections: u32,
    migrate_first: bool,
) -> Result<PgPool, OpenError> {
    let pool = lazy_pool(url, max_connections)?;
    if migrate_first {
        migrate(&pool).await?;
        tracing::info!("migrations applied");
    }
    Ok(pool)
}
