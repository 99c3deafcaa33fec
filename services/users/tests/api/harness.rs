//! Spawns the users service on port 0 over a fresh database, and gives tests a
//! real gRPC client with the bearer token.

use std::net::SocketAddr;

use mesh_proto::mesh::users::v1::users_service_client::UsersServiceClient;
pub use mesh_runtime::testing::{TOKEN, bad_fields, channel, wait_serving};
use mesh_runtime::{
    config::ServiceConfig,
    testing::{Auth, TestDatabase, bearer},
};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

pub type Client = UsersServiceClient<InterceptedService<Channel, Auth>>;

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: Client,
    pub db: TestDatabase,
    /// Ends the service (drain included) when sent or dropped.
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub fn config(db: &TestDatabase) -> ServiceConfig {
    db.service_config("users")
}

/// A running users service on its own fresh database, SERVING.
pub async fn spawn_app() -> TestApp {
    let db = TestDatabase::create().await;
    spawn_on(db).await
}

/// A running users service over `db` (which may already hold data), SERVING.
pub async fn spawn_on(db: TestDatabase) -> TestApp {
    let app = mesh_users::build(&config(&db)).await.expect("build");
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let channel = channel(addr).await;
    wait_serving(channel.clone()).await;
    let client = client(channel);
    TestApp {
        addr,
        client,
        db,
        stop: Some(stop),
        server,
    }
}

/// An authenticated client over `channel`.
pub fn client(channel: Channel) -> Client {
    UsersServiceClient::with_interceptor(channel, bearer as Auth)
}

impl TestApp {
    /// Creates a user with every field at its default; returns its id.
    pub async fn new_user(&mut self) -> String {
        create_user(&mut self.client, Default::default()).await.id
    }

    /// Rows in `users.<table>` right now, counted as the superuser.
    pub async fn count(&self, table: &str) -> i64 {
        self.db.count("users", table).await
    }
}

/// Creates `user` through `client`, which must succeed; returns it as stored.
pub async fn create_user(
    client: &mut Client,
    user: mesh_proto::mesh::users::v1::User,
) -> mesh_proto::mesh::users::v1::User {
    client
        .create_user(mesh_proto::mesh::users::v1::CreateUserRequest {
            user: Some(user),
            request_id: String::new(),
        })
        .await
        .expect("create a user")
        .into_inner()
        .user
        .expect("a user")
}

/// An update mask naming `paths`.
pub fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}
