//! Spawns the conversations service (and the users service it asks for
//! recipients) on port 0 over a fresh database, and gives tests real gRPC
//! clients with the bearer token.

use std::{net::SocketAddr, time::Duration};

use mesh_conversations::{
    Config,
    config::{TelegramConfig, WhatsAppConfig},
};
pub use mesh_fake_providers::{TELEGRAM_BOT_TOKEN, WHATSAPP_PHONE_NUMBER_ID, WHATSAPP_TOKEN};
use mesh_proto::mesh::{
    conversations::v1::{self as pb, conversations_service_client::ConversationsServiceClient},
    users::v1::{self as users_pb, users_service_client::UsersServiceClient},
};
use mesh_runtime::testing::{Auth, TestDatabase, bearer};
pub use mesh_runtime::testing::{TOKEN, bad_fields, channel, wait_serving};
use tonic::{Status, service::interceptor::InterceptedService, transport::Channel};

pub type Client = ConversationsServiceClient<InterceptedService<Channel, Auth>>;
pub type UsersClient = UsersServiceClient<InterceptedService<Channel, Auth>>;

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: Client,
    pub users: UsersClient,
    pub db: TestDatabase,
    /// Ends the conversations service (drain included) when sent or dropped.
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
    _users_stop: tokio::sync::oneshot::Sender<()>,
}

/// The configuration tests start from: providers at unreachable local
/// addresses (tests with a fake provider point them at it).
pub fn config(db: &TestDatabase, users_addr: SocketAddr) -> Config {
    Config {
        service: db.service_config("conversations"),
        idle_gap: mesh_conversations::config::DEFAULT_IDLE_GAP,
        event_retention: mesh_conversations::config::DEFAULT_EVENT_RETENTION,
        users_url: format!("http://{users_addr}"),
        provider_timeout: Duration::from_secs(5),
        whatsapp: WhatsAppConfig {
            api_base: "http://127.0.0.1:9".into(),
            api_version: "v21.0".into(),
            access_token: Some(WHATSAPP_TOKEN.into()),
            phone_number_id: Some(WHATSAPP_PHONE_NUMBER_ID.into()),
        },
        telegram: TelegramConfig {
            api_base: "http://127.0.0.1:9".into(),
            bot_token: Some(TELEGRAM_BOT_TOKEN.into()),
        },
    }
}

/// The conversations and users services on a fresh database, both SERVING.
pub async fn spawn_app() -> TestApp {
    spawn_with(|_| {}).await
}

/// Like [`spawn_app`], with the configuration adjusted by `adjust`.
pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let db = TestDatabase::create().await;
    let (users_addr, users_stop) = spawn_users(&db).await;
    let mut config = config(&db, users_addr);
    adjust(&mut config);
    let (addr, stop, server) = spawn_conversations(&config).await;
    TestApp {
        addr,
        client: client(channel(addr).await),
        users: UsersServiceClient::with_interceptor(channel(users_addr).await, bearer as Auth),
        db,
        stop: Some(stop),
        server,
        _users_stop: users_stop,
    }
}

async fn spawn_users(db: &TestDatabase) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let app = mesh_users::build(&db.service_config("users"))
        .await
        .expect("build users");
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    wait_serving(channel(addr).await).await;
    (addr, stop)
}

/// Another conversations service (a replica, or a restart) per `config`, SERVING.
pub async fn spawn_conversations(
    config: &Config,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let app = mesh_conversations::build(config).await.expect("build");
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    wait_serving(channel(addr).await).await;
    (addr, stop, server)
}

/// An authenticated client over `channel`.
pub fn client(channel: Channel) -> Client {
    ConversationsServiceClient::with_interceptor(channel, bearer as Auth)
}

impl TestApp {
    /// Creates a user in the users service with a fresh phone number and
    /// Telegram id; returns it.
    pub async fn new_user(&mut self) -> users_pb::User {
        let unique = rand::random::<u32>() as u64;
        self.users
            .create_user(users_pb::CreateUserRequest {
                user: Some(users_pb::User {
                    phone: Some(format!("+57300{:07}", unique % 10_000_000)),
                    telegram_user_id: Some(1_000_000 + unique as i64),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect("create a user")
            .into_inner()
            .user
            .expect("a user")
    }

    /// The user's active conversation on `channel` (created when needed).
    pub async fn conversation(&mut self, user_id: &str, channel: pb::Channel) -> pb::Conversation {
        conversation_on(&mut self.client, user_id, channel).await
    }

    /// Records an inbound user text message; returns the response.
    pub async fn inbound(
        &mut self,
        conversation_id: &str,
        text: &str,
        provider_message_id: &str,
    ) -> pb::RecordInboundMessageResponse {
        self.client
            .record_inbound_message(inbound_request(conversation_id, text, provider_message_id))
            .await
            .expect("record an inbound message")
            .into_inner()
    }

    /// Rows in `conversations.<table>` right now, counted as the superuser.
    pub async fn count(&self, table: &str) -> i64 {
        self.db.count("conversations", table).await
    }
}

/// The user's active conversation on `channel` through `client` (created
/// when needed).
pub async fn conversation_on(
    client: &mut Client,
    user_id: &str,
    channel: pb::Channel,
) -> pb::Conversation {
    client
        .get_or_create_active_conversation(pb::GetOrCreateActiveConversationRequest {
            user_id: user_id.into(),
            channel: channel as i32,
            ..Default::default()
        })
        .await
        .expect("get or create a conversation")
        .into_inner()
        .conversation
        .expect("a conversation")
}

/// A RecordInboundMessage request for a user text message.
pub fn inbound_request(
    conversation_id: &str,
    text: &str,
    provider_message_id: &str,
) -> pb::RecordInboundMessageRequest {
    pb::RecordInboundMessageRequest {
        conversation_id: conversation_id.into(),
        message: Some(pb::Message {
            r#type: pb::MessageType::Text as i32,
            role: pb::MessageRole::User as i32,
            content: text.into(),
            provider_message_id: provider_message_id.into(),
            ..Default::default()
        }),
        referral: None,
    }
}

/// `value` as a protobuf Struct field.
pub fn data(value: serde_json::Value) -> Option<prost_types::Struct> {
    Some(mesh_runtime::convert::json_to_struct(&value))
}

/// A Struct over 64 KiB as JSON.
pub fn too_big() -> serde_json::Value {
    serde_json::json!({"blob": "x".repeat(64 * 1024)})
}

/// A WhatsApp-style message id, unique per call.
pub fn wamid() -> String {
    format!("wamid.HBgM{}", uuid::Uuid::new_v4().simple())
}

// ---- Helpers for the conversations/messages/delivery/windows/purge tests ----

/// A user id nobody has used yet (the service does not check user ids).
pub fn fresh_user() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The bad fields of an INVALID_ARGUMENT, sorted (the order is not part of
/// the contract).
pub fn sorted_bad_fields(status: &Status) -> Vec<String> {
    let mut fields = bad_fields(status);
    fields.sort();
    fields
}

/// `time` as a protobuf Timestamp.
pub use mesh_runtime::convert::timestamp as ts;

/// A protobuf Timestamp as a time.
pub fn time_of(timestamp: &prost_types::Timestamp) -> chrono::DateTime<chrono::Utc> {
    mesh_runtime::convert::from_timestamp("timestamp", timestamp).expect("a valid timestamp")
}

/// `ago` before now, to the microsecond (what Postgres keeps), so that a time
/// sent and read back compares equal.
pub fn micros_ago(ago: chrono::Duration) -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    (chrono::Utc::now() - ago).trunc_subsecs(6)
}

/// When the local day of `now` began in `zone`, in UTC.
pub fn local_midnight(
    zone: chrono_tz::Tz,
    now: chrono::DateTime<chrono::Utc>,
) -> chrono::DateTime<chrono::Utc> {
    use chrono::TimeZone;
    let day = now.with_timezone(&zone).date_naive();
    [
        chrono::NaiveTime::MIN,
        chrono::NaiveTime::from_hms_opt(1, 0, 0).unwrap(),
    ]
    .into_iter()
    .find_map(|t| zone.from_local_datetime(&day.and_time(t)).earliest())
    .expect("the local day has a start")
    .with_timezone(&chrono::Utc)
}

/// An outbound message as SendMessage stores it, written as the superuser
/// (SendMessage needs a provider): the conversation's next sequence number,
/// its message_count bumped.
pub struct Outbound<'a> {
    pub content: &'a str,
    pub provider_message_id: Option<&'a str>,
    pub delivery_status: &'a str,
    pub proactive: bool,
    /// Now when unset.
    pub create_time: Option<chrono::DateTime<chrono::Utc>>,
}

impl Default for Outbound<'_> {
    fn default() -> Self {
        Self {
            content: "an answer",
            provider_message_id: None,
            delivery_status: "accepted",
            proactive: false,
            create_time: None,
        }
    }
}

impl TestApp {
    /// Stores `outbound` in `conversation_id`; returns the message id.
    pub async fn insert_outbound(&self, conversation_id: &str, outbound: Outbound<'_>) -> String {
        let mut conn = self.db.admin_connection().await;
        let id: uuid::Uuid = sqlx::query_scalar(
            "WITH c AS (
                UPDATE conversations.conversations
                   SET message_count = message_count + 1, last_message_time = now()
                 WHERE id = $1::uuid RETURNING id, user_id, channel, message_count)
             INSERT INTO conversations.messages (id, conversation_id, user_id, channel,
                sequence_number, direction, role, type, content, provider_message_id,
                delivery_status, proactive, create_time)
             SELECT $2, c.id, c.user_id, c.channel, c.message_count, 'outbound', 'assistant',
                'text', $3, $4, $5, $6, COALESCE($7, now())
             FROM c RETURNING id",
        )
        .bind(conversation_id)
        .bind(uuid::Uuid::now_v7())
        .bind(outbound.content)
        .bind(outbound.provider_message_id)
        .bind(outbound.delivery_status)
        .bind(outbound.proactive)
        .bind(outbound.create_time)
        .fetch_one(&mut conn)
        .await
        .expect("insert an outbound message");
        id.to_string()
    }

    /// Rows of `conversations.events` of `kind` (e.g. "message_received").
    pub async fn count_events(&self, kind: &str) -> i64 {
        let mut conn = self.db.admin_connection().await;
        sqlx::query_scalar("SELECT count(*) FROM conversations.events WHERE type = $1")
            .bind(kind)
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }
}

/// A superuser transaction holding the row lock of one conversation: the
/// service's appends to it, and sends that find it active, queue behind it
/// until [`HeldConversation::release`]. It lines racing calls up, so that a
/// test of what the losers of a race do certainly has losers.
pub struct HeldConversation(sqlx::PgConnection);

impl HeldConversation {
    pub async fn release(mut self) {
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut self.0)
            .await
            .expect("release the conversation");
    }
}

impl TestApp {
    /// Locks the row of conversation `id` until what it returns is released.
    pub async fn hold_conversation(&self, id: &str) -> HeldConversation {
        let mut conn = self.db.admin_connection().await;
        sqlx::raw_sql("BEGIN").execute(&mut conn).await.unwrap();
        sqlx::query("SELECT 1 FROM conversations.conversations WHERE id = $1::uuid FOR UPDATE")
            .bind(id)
            .fetch_one(&mut conn)
            .await
            .expect("lock the conversation");
        HeldConversation(conn)
    }

    /// Waits until at least `n` statements on this test's database wait on a lock.
    pub async fn wait_for_lock_waiters(&self, n: i64) {
        let mut conn = self.db.admin_connection().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&mut conn)
            .await
            .unwrap();
            if waiting >= n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {waiting} of {n} calls came to wait on the lock"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Points the service's provider settings at these fakes.
pub fn use_fakes(providers: &mesh_fake_providers::Providers, config: &mut Config) {
    config.whatsapp.api_base = providers.whatsapp.url();
    config.telegram.api_base = providers.telegram.url();
}
