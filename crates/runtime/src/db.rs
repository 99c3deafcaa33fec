//! The database pool of one service: its own role, its own schema first on the
//! `search_path`, and its own migrations.

use std::{str::FromStr, time::Duration};

use sqlx::{
    PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// A pool that connects on first use, so a service can start (and report
/// NOT_SERVING) while its database is still down, and reconnects by itself
/// after the database restarts. Its statements keep sqlx's statement log
/// (`sqlx::query` at DEBUG): the telemetry makes their spans from it.
pub fn lazy_pool(
    database_url: &str,
    schema: &str,
    max_connections: u32,
    application_name: &str,
) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(database_url)
        .map_err(|e| anyhow::anyhow!("bad database URL: {e}"))?
        .application_name(application_name)
        // Extensions (vector, pg_trgm) live in public; the service's tables in its schema.
        .options([("search_path", format!("{schema},public"))]);
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// Applies pending migrations. sqlx holds an advisory lock while it migrates,
/// so replicas starting together take turns instead of racing, and the
/// bookkeeping table lands in the service's own schema.
pub async fn migrate(pool: &PgPool, migrator: &Migrator) -> anyhow::Result<()> {
    migrator
        .run(pool)
        .await
        .map_err(|e| anyhow::anyhow!("migrations failed: {e}"))
}

/// Whether the database answers right now.
pub async fn ping(pool: &PgPool) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool),
        )
        .await,
        Ok(Ok(1))
    )
}
