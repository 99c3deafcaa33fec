//! Setting up a database for the mesh, as a superuser: the one place that runs
//! `migrations/bootstrap.sql` (roles, schemas, extensions) and sets the service
//! roles' passwords. `cargo xtask` and the test harness both use it; the
//! Postgres container runs the same file through psql.

use sqlx::{AssertSqlSafe, PgConnection};

/// The contexts that own a schema, each through role `mesh_<context>`.
pub const CONTEXTS: [&str; 5] = ["users", "conversations", "memory", "scheduler", "billing"];

const BOOTSTRAP_SQL: &str = include_str!("../../../migrations/bootstrap.sql");

/// Gives the connected database its roles, schemas and extensions. Safe to
/// run again, and from several databases of one cluster at once.
pub async fn bootstrap(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::raw_sql(BOOTSTRAP_SQL).execute(conn).await?;
    Ok(())
}

/// Sets `password` on every service role (roles are cluster-wide), for
/// servers that ask for one.
pub async fn set_role_passwords(conn: &mut PgConnection, password: &str) -> sqlx::Result<()> {
    // ALTER ROLE takes no bind parameters; the literal is quoted here.
    let literal = password.replace('\'', "''");
    for context in CONTEXTS {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "ALTER ROLE mesh_{context} PASSWORD '{literal}'"
        )))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
