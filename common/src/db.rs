//! The schema lives in `migrations/` and is compiled into both binaries.

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::time::Duration;

pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run(pool).await
}

/// Opens a pool lazily, so a process starts (and reports not-ready) while the
/// database is down instead of refusing to start.
pub fn lazy_pool(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(url)
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
