//! Spawns the scheduler on port 0 over a fresh database, with the users and
//! conversations services it calls (on the same database, each in its own
//! schema) and fake WhatsApp and Telegram APIs behind conversations, and
//! gives tests real gRPC clients with the bearer token.

#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use chrono::{DateTime, Utc};
use mesh_conversations::config::{TelegramConfig, WhatsAppConfig};
pub use mesh_fake_providers::{Providers, WaReply};
use mesh_proto::mesh::{
    conversations::v1::{
        self as conversations_pb, conversations_service_client::ConversationsServiceClient,
    },
    scheduler::v1::{self as pb, scheduler_service_client::SchedulerServiceClient},
    users::v1::{self as users_pb, users_service_client::UsersServiceClient},
};
use mesh_runtime::testing::{Auth, TestDatabase, bearer, serve_task};
pub use mesh_runtime::testing::{TOKEN, bad_fields, channel, serve, wait_serving};
use mesh_scheduler::{Config, config::DispatcherConfig};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

pub type Client = SchedulerServiceClient<InterceptedService<Channel, Auth>>;
pub type UsersClient = UsersServiceClient<InterceptedService<Channel, Auth>>;
pub type ConversationsClient = ConversationsServiceClient<InterceptedService<Channel, Auth>>;

/// One running scheduler: a replica, or the only one.
pub struct Scheduler {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub client: Client,
    /// Ends this scheduler (drain included) when sent or dropped.
    pub stop: Option<oneshot::Sender<()>>,
    pub server: JoinHandle<anyhow::Result<()>>,
}

impl Scheduler {
    /// Stops it gracefully and waits until it has exited.
    pub async fn shut_down(mut self) {
        drop(self.stop.take());
        self.server.await.expect("join").expect("a clean exit");
    }
}

pub struct TestApp {
    pub scheduler: Scheduler,
    /// The first scheduler's client (`app.scheduler.client`, shorter).
    pub client: Client,
    pub users: UsersClient,
    pub conversations: ConversationsClient,
    pub providers: Providers,
    pub db: TestDatabase,
    /// The configuration the first scheduler ran with: start replicas from it.
    pub config: Config,
    _users_stop: oneshot::Sender<()>,
    _conversations_stop: oneshot::Sender<()>,
}

/// The dispatcher settings tests start from: quick polls and retries.
pub fn fast_dispatcher() -> DispatcherConfig {
    DispatcherConfig {
        enabled: true,
        poll_interval: Duration::from_millis(200),
        batch_size: 100,
        concurrency: 16,
        lease: Duration::from_secs(30),
        max_retries: 3,
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_millis(400),
    }
}

/// The scheduler's configuration over `db`, calling the given services.
pub fn config(db: &TestDatabase, users: SocketAddr, conversations: SocketAddr) -> Config {
    Config {
        service: db.service_config("scheduler"),
        users_url: format!("http://{users}"),
        conversations_url: format!("http://{conversations}"),
        call_timeout: Duration::from_secs(10),
        dispatcher: fast_dispatcher(),
        notification_retention: Duration::from_secs(30 * 24 * 3600),
        checkin_content_grace: Duration::from_secs(2 * 3600),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
    }
}

/// The scheduler (with its dispatcher), users and conversations services on a
/// fresh database, all SERVING.
pub async fn spawn_app() -> TestApp {
    spawn_with(|_| {}).await
}

/// Like [`spawn_app`], with the scheduler's configuration adjusted by `adjust`.
pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let db = TestDatabase::create().await;
    let providers = Providers::start().await;
    let (users_addr, users_stop) = serve(
        mesh_users::build(&db.service_config("users"))
            .await
            .expect("build users"),
    )
    .await;
    let conversations_config = mesh_conversations::Config {
        service: db.service_config("conversations"),
        idle_gap: mesh_conversations::config::DEFAULT_IDLE_GAP,
        event_retention: mesh_conversations::config::DEFAULT_EVENT_RETENTION,
        users_url: format!("http://{users_addr}"),
        provider_timeout: Duration::from_secs(5),
        whatsapp: WhatsAppConfig {
            api_base: providers.whatsapp.url(),
            api_version: "v21.0".into(),
            access_token: Some(mesh_fake_providers::WHATSAPP_TOKEN.into()),
            phone_number_id: Some(mesh_fake_providers::WHATSAPP_PHONE_NUMBER_ID.into()),
        },
        telegram: TelegramConfig {
            api_base: providers.telegram.url(),
            bot_token: Some(mesh_fake_providers::TELEGRAM_BOT_TOKEN.into()),
        },
    };
    let (conversations_addr, conversations_stop) = serve(
        mesh_conversations::build(&conversations_config)
            .await
            .expect("build conversations"),
    )
    .await;
    let mut config = config(&db, users_addr, conversations_addr);
    adjust(&mut config);
    let scheduler = spawn_scheduler(&config).await;
    TestApp {
        client: scheduler.client.clone(),
        scheduler,
        users: UsersServiceClient::with_interceptor(channel(users_addr).await, bearer as Auth),
        conversations: ConversationsServiceClient::with_interceptor(
            channel(conversations_addr).await,
            bearer as Auth,
        ),
        providers,
        db,
        config,
        _users_stop: users_stop,
        _conversations_stop: conversations_stop,
    }
}

/// Another scheduler (a replica, or a restart) per `config`, SERVING.
pub async fn spawn_scheduler(config: &Config) -> Scheduler {
    let (app, metrics_addr) = mesh_scheduler::build_with_metrics(config)
        .await
        .expect("build the scheduler");
    let served = serve_task(app).await;
    Scheduler {
        addr: served.addr,
        metrics_addr,
        client: client(channel(served.addr).await),
        stop: Some(served.stop),
        server: served.task,
    }
}

/// An authenticated client over `channel`.
pub fn client(channel: Channel) -> Client {
    SchedulerServiceClient::with_interceptor(channel, bearer as Auth)
}

impl TestApp {
    /// Creates a user in the users service with a fresh phone number and
    /// Telegram id, in `time_zone`; returns it.
    pub async fn new_user(&mut self, time_zone: &str) -> users_pb::User {
        let unique = rand::random::<u32>() as u64;
        self.users
            .create_user(users_pb::CreateUserRequest {
                user: Some(users_pb::User {
                    phone: Some(format!("+57300{:07}", unique % 10_000_000)),
                    telegram_user_id: Some(1_000_000 + unique as i64),
                    timezone: time_zone.into(),
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

    /// Sets the user's quiet hours ("HH:MM" local).
    pub async fn set_quiet_hours(&mut self, user_id: &str, start: &str, end: &str) {
        self.users
            .update_agent_preferences(users_pb::UpdateAgentPreferencesRequest {
                preferences: Some(users_pb::AgentPreferences {
                    user_id: user_id.into(),
                    quiet_hours_start: start.into(),
                    quiet_hours_end: end.into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["quiet_hours_start".into(), "quiet_hours_end".into()],
                }),
            })
            .await
            .expect("set quiet hours");
    }

    /// Opens the user's WhatsApp customer service window: they write to us.
    pub async fn open_whatsapp_window(&mut self, user_id: &str) {
        let conversation = self
            .conversations
            .get_or_create_active_conversation(
                conversations_pb::GetOrCreateActiveConversationRequest {
                    user_id: user_id.into(),
                    channel: conversations_pb::Channel::Whatsapp as i32,
                    ..Default::default()
                },
            )
            .await
            .expect("a conversation")
            .into_inner()
            .conversation
            .expect("a conversation");
        self.conversations
            .record_inbound_message(conversations_pb::RecordInboundMessageRequest {
                conversation_id: conversation.id,
                message: Some(conversations_pb::Message {
                    r#type: conversations_pb::MessageType::Text as i32,
                    role: conversations_pb::MessageRole::User as i32,
                    content: "hola".into(),
                    provider_message_id: format!("wamid.HBgM{}", uuid::Uuid::new_v4().simple()),
                    ..Default::default()
                }),
                referral: None,
            })
            .await
            .expect("record an inbound message");
    }

    /// Leases item `id` of `scheduler.<table>` to a dispatcher that is not
    /// running, until `seconds` from now (a past time: a lease run out), as a
    /// dispatcher does when it claims the item; None releases it.
    pub async fn lease(&self, table: &str, id: &str, seconds: Option<i64>) {
        let mut conn = self.db.admin_connection().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE scheduler.{table}
             SET lease_owner = CASE WHEN $2::bigint IS NULL THEN NULL ELSE gen_random_uuid() END,
                 lease_expire_time = now() + make_interval(secs => $2::bigint)
             WHERE id = $1::uuid"
        )))
        .bind(id)
        .bind(seconds)
        .execute(&mut conn)
        .await
        .expect("set the lease");
    }

    /// Rows in `scheduler.<table>` right now, counted as the superuser.
    pub async fn count(&self, table: &str) -> i64 {
        self.db.count("scheduler", table).await
    }

    /// Creates a reminder for `user_id` due at `at`; returns it.
    pub async fn reminder_at(
        &mut self,
        user_id: &str,
        title: &str,
        at: DateTime<Utc>,
    ) -> pb::Reminder {
        self.client
            .create_reminder(pb::CreateReminderRequest {
                reminder: Some(pb::Reminder {
                    user_id: user_id.into(),
                    title: title.into(),
                    scheduled_time: Some(ts(at)),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("create a reminder")
            .into_inner()
            .reminder
            .expect("a reminder")
    }

    /// Polls GetReminder until `done` holds for it (at most `within`).
    pub async fn wait_reminder(
        &mut self,
        id: &str,
        within: Duration,
        done: impl Fn(&pb::Reminder) -> bool,
    ) -> pb::Reminder {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let reminder = self
                .client
                .get_reminder(pb::GetReminderRequest {
                    reminder_id: id.into(),
                })
                .await
                .expect("get the reminder")
                .into_inner()
                .reminder
                .expect("a reminder");
            if done(&reminder) {
                return reminder;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the reminder did not get there in {within:?}: {reminder:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `time` as a protobuf Timestamp.
pub use mesh_runtime::convert::timestamp as ts;

/// A protobuf Timestamp as a time.
pub fn time_of(timestamp: &prost_types::Timestamp) -> DateTime<Utc> {
    mesh_runtime::convert::from_timestamp("timestamp", timestamp).expect("a valid timestamp")
}

/// The bad fields of an INVALID_ARGUMENT, sorted.
pub fn sorted_bad_fields(status: &tonic::Status) -> Vec<String> {
    let mut fields = bad_fields(status);
    fields.sort();
    fields
}

/// `value` as a protobuf Struct.
pub fn data(value: serde_json::Value) -> Option<prost_types::Struct> {
    Some(mesh_runtime::convert::json_to_struct(&value))
}
