//! Integration-test support: a fresh database per test on the server that
//! `DATABASE_URL` names (a superuser URL; `cargo xtask test` starts a
//! throwaway Postgres and sets it), set up exactly as in production by
//! `migrations/bootstrap.sql`.

use std::str::FromStr;

use sqlx::{
    AssertSqlSafe, Connection, Executor, PgConnection,
    postgres::{PgConnectOptions, PgConnection as Conn},
};

const BOOTSTRAP_SQL: &str = include_str!("../../../migrations/bootstrap.sql");

/// One database, created for one test.
pub struct TestDatabase {
    admin: PgConnectOptions,
    pub name: String,
}

impl TestDatabase {
    /// Creates `test_<uuid>` and bootstraps its roles, schemas and extensions.
    pub async fn create() -> Self {
        let url = std::env::var("DATABASE_URL").expect(
            "DATABASE_URL must name a Postgres superuser URL: run the tests with `cargo xtask test`",
        );
        let admin = PgConnectOptions::from_str(&url).expect("DATABASE_URL is a valid URL");
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut server = Conn::connect_with(&admin)
            .await
            .expect("connect to DATABASE_URL");
        server
            // The name is ours (test_ and a UUID), not input: safe to splice.
            .execute(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .await
            .expect("create the test database");
        let mut database = Conn::connect_with(&admin.clone().database(&name))
            .await
            .expect("connect to the test database");
        sqlx::raw_sql(BOOTSTRAP_SQL)
            .execute(&mut database)
            .await
            .expect("migrations/bootstrap.sql applies");
        if let Ok(password) = std::env::var("MESH_DB_PASSWORD") {
            set_role_passwords(&mut database, &password).await;
        }
        Self { admin, name }
    }

    /// The URL a service connects with: its own role, this database.
    pub fn service_url(&self, service: &str) -> String {
        let host = self.admin.get_host();
        let port = self.admin.get_port();
        match std::env::var("MESH_DB_PASSWORD") {
            Ok(password) => format!(
                "postgres://mesh_{service}:{password}@{host}:{port}/{}",
                self.name
            ),
            Err(_) => format!("postgres://mesh_{service}@{host}:{port}/{}", self.name),
        }
    }

    /// A superuser connection to this database, for checking what was stored.
    pub async fn admin_connection(&self) -> PgConnection {
        Conn::connect_with(&self.admin.clone().database(&self.name))
            .await
            .expect("connect to the test database as superuser")
    }
}

async fn set_role_passwords(database: &mut PgConnection, password: &str) {
    for service in ["users", "conversations", "memory", "scheduler", "billing"] {
        let literal = password.replace('\'', "''");
        database
            .execute(AssertSqlSafe(format!(
                "ALTER ROLE mesh_{service} PASSWORD '{literal}'"
            )))
            .await
            .expect("set the role password");
    }
}
