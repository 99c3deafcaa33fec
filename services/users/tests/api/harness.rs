//! Spawns the users service on port 0 over a fresh database, and gives tests a
//! real gRPC client with the bearer token.

use std::{net::SocketAddr, time::Duration};

use mesh_proto::mesh::users::v1::users_service_client::UsersServiceClient;
use mesh_runtime::{config::ServiceConfig, testing::TestDatabase};
use tonic::{
    Request, Status,
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

pub const TOKEN: &str = "test-token";

pub type Client =
    UsersServiceClient<InterceptedService<Channel, fn(Request<()>) -> Result<Request<()>, Status>>>;

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: Client,
    pub db: TestDatabase,
    /// Ends the service (drain included) when sent or dropped.
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn bearer(mut request: Request<()>) -> Result<Request<()>, Status> {
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    Ok(request)
}

pub fn config(db: &TestDatabase) -> ServiceConfig {
    ServiceConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        database_url: db.service_url("users"),
        db_max_connections: 5,
        auth_token: TOKEN.into(),
        drain_grace: Duration::from_secs(5),
        tls: None,
    }
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
    UsersServiceClient::with_interceptor(channel, bearer as fn(_) -> _)
}

pub async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the service")
}

/// Polls gRPC health until the whole server reports SERVING.
pub async fn wait_serving(channel: Channel) {
    let mut health = HealthClient::new(channel);
    for _ in 0..300 {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|r| r.into_inner().status());
        if matches!(status, Ok(ServingStatus::Serving)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the service never reported SERVING");
}

impl TestApp {
    /// Creates a user with every field at its default; returns its id.
    pub async fn new_user(&mut self) -> String {
        create_user(&mut self.client, Default::default()).await.id
    }

    /// Rows in `users.<table>` right now, counted as the superuser.
    pub async fn count(&self, table: &str) -> i64 {
        let mut conn = self.db.admin_connection().await;
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM users.{table}"
        )))
        .fetch_one(&mut conn)
        .await
        .unwrap()
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

/// The field paths a BadRequest status names.
pub fn bad_fields(status: &Status) -> Vec<String> {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("INVALID_ARGUMENT carries BadRequest details")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}
