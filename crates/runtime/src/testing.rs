//! Integration-test support: a fresh database per test on the server that
//! `DATABASE_URL` names (a superuser URL; `cargo xtask test` starts a
//! throwaway Postgres and sets it), set up exactly as in production by
//! `migrations/bootstrap.sql`.

use std::str::FromStr;

use sqlx::{
    AssertSqlSafe, Connection, Executor, PgConnection,
    postgres::{PgConnectOptions, PgConnection as Conn},
};

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
        crate::setup::bootstrap(&mut database)
            .await
            .expect("migrations/bootstrap.sql applies");
        if let Ok(password) = std::env::var("MESH_DB_PASSWORD") {
            crate::setup::set_role_passwords(&mut database, &password)
                .await
                .expect("set the role passwords");
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

impl Drop for TestDatabase {
    /// Drops the database, so that tests against a long-lived server
    /// (DATABASE_URL) leave nothing behind. FORCE ends the connections the
    /// test's service may still hold. `cargo xtask test` on its own throwaway
    /// server skips this (MESH_TEST_SERVER_IS_THROWAWAY): the cluster goes
    /// whole, and each drop forces a checkpoint.
    fn drop(&mut self) {
        if std::env::var_os("MESH_TEST_SERVER_IS_THROWAWAY").is_some() {
            return;
        }
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop cannot await; a thread with its own runtime works whether or
        // not the test's runtime is still running.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let mut server = Conn::connect_with(&admin).await.ok()?;
                server
                    .execute(AssertSqlSafe(format!(
                        r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                    )))
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}
