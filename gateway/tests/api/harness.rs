//! Spawns the real users, conversations and billing services over a fresh
//! database and the gateway in front of them, all on port 0; posts
//! provider-shaped webhooks, signed as the providers sign them; reads back
//! what was stored through the services' gRPC APIs.

use std::{net::SocketAddr, time::Duration};

use mesh_conversations::config::{TelegramConfig, WhatsAppConfig};
use mesh_proto::mesh::{
    billing::v1::billing_service_client::BillingServiceClient,
    conversations::v1::{self as conv, conversations_service_client::ConversationsServiceClient},
    users::v1::{self as users, users_service_client::UsersServiceClient},
};
use mesh_runtime::testing::{Auth, TestDatabase, bearer, channel, serve_task};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use crate::faults::Faults;

pub const APP_SECRET: &str = "test-app-secret";
pub const VERIFY_TOKEN: &str = "test-verify-token";
pub const TELEGRAM_SECRET: &str = "test-telegram-secret";
pub const LEMONSQUEEZY_SECRET: &str = "test-lemonsqueezy-secret";

pub type Conversations = ConversationsServiceClient<InterceptedService<Channel, Auth>>;
pub type Users = UsersServiceClient<InterceptedService<Channel, Auth>>;
pub type Billing = BillingServiceClient<InterceptedService<Channel, Auth>>;

/// A service running in this test, stopped (drain included) on `stop`.
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }
}

pub struct TestApp {
    /// `http://<gateway addr>`.
    pub url: String,
    pub http: reqwest::Client,
    pub users: Users,
    pub conversations: Conversations,
    pub billing: Billing,
    pub db: TestDatabase,
    conversations_config: mesh_conversations::Config,
    conversations_service: Option<Running>,
    billing_config: mesh_billing::Config,
    billing_service: Option<Running>,
    _users_service: Running,
    _gateway: Running,
}

pub async fn spawn_app() -> TestApp {
    spawn(None).await
}

/// The app with the gateway calling the services through pass-throughs that
/// give the errors injected into the returned [`Faults`].
pub async fn spawn_app_with_faults() -> (TestApp, Faults) {
    let faults = Faults::default();
    (spawn(Some(faults.clone())).await, faults)
}

async fn spawn(faults: Option<Faults>) -> TestApp {
    let db = TestDatabase::create().await;
    let users_service = run(mesh_users::build(&db.service_config("users"))
        .await
        .expect("build users"))
    .await;
    let mut conversations_config = mesh_conversations::Config {
        service: db.service_config("conversations"),
        idle_gap: mesh_conversations::config::DEFAULT_IDLE_GAP,
        event_retention: mesh_conversations::config::DEFAULT_EVENT_RETENTION,
        users_url: format!("http://{}", users_service.addr),
        provider_timeout: Duration::from_secs(5),
        whatsapp: WhatsAppConfig {
            api_base: crate::fake_whatsapp::start().await,
            api_version: "v21.0".into(),
            access_token: Some(crate::fake_whatsapp::ACCESS_TOKEN.into()),
            phone_number_id: Some(crate::fake_whatsapp::PHONE_NUMBER_ID.into()),
        },
        telegram: TelegramConfig {
            api_base: "http://127.0.0.1:9".into(),
            bot_token: None,
        },
    };
    let conversations_service = spawn_conversations(&conversations_config).await;
    // A restart must come back where the gateway looks for it.
    conversations_config.service.addr = conversations_service.addr;
    let mut billing_config = mesh_billing::Config {
        service: db.service_config("billing"),
        users_url: format!("http://{}", users_service.addr),
        call_timeout: Duration::from_secs(5),
        profile_cache: Duration::from_secs(300),
        plans: mesh_billing::plans::Plans::builtin(),
        prices: mesh_billing::plans::Prices::builtin(),
    };
    let billing_service = spawn_billing(&billing_config).await;
    billing_config.service.addr = billing_service.addr;
    let (users_addr, conversations_addr, billing_addr) = match faults {
        None => (
            users_service.addr,
            conversations_service.addr,
            billing_service.addr,
        ),
        Some(faults) => (
            crate::faults::start(users_service.addr, faults.clone()).await,
            crate::faults::start(conversations_service.addr, faults.clone()).await,
            crate::faults::start(billing_service.addr, faults).await,
        ),
    };
    let gateway_config = mesh_gateway::Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        users_url: format!("http://{users_addr}"),
        conversations_url: format!("http://{conversations_addr}"),
        billing_url: format!("http://{billing_addr}"),
        auth_token: mesh_runtime::testing::TOKEN.into(),
        tls_ca: None,
        downstream_timeout: Duration::from_secs(3),
        drain_grace: Duration::from_secs(5),
        whatsapp_verify_token: Some(VERIFY_TOKEN.into()),
        whatsapp_app_secret: Some(APP_SECRET.into()),
        telegram_secret_token: Some(TELEGRAM_SECRET.into()),
        lemonsqueezy_signing_secret: Some(LEMONSQUEEZY_SECRET.into()),
    };
    let gateway = mesh_gateway::build(&gateway_config)
        .await
        .expect("build the gateway");
    let addr = gateway.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(gateway.run_until(async {
        let _ = stopped.await;
    }));
    TestApp {
        url: format!("http://{addr}"),
        http: reqwest::Client::new(),
        users: UsersServiceClient::with_interceptor(
            channel(users_service.addr).await,
            bearer as Auth,
        ),
        conversations: ConversationsServiceClient::with_interceptor(
            channel(conversations_service.addr).await,
            bearer as Auth,
        ),
        billing: BillingServiceClient::with_interceptor(
            channel(billing_service.addr).await,
            bearer as Auth,
        ),
        db,
        conversations_config,
        conversations_service: Some(conversations_service),
        billing_config,
        billing_service: Some(billing_service),
        _users_service: users_service,
        _gateway: Running {
            addr,
            stop: Some(stop),
            task,
        },
    }
}

async fn spawn_conversations(config: &mesh_conversations::Config) -> Running {
    run(mesh_conversations::build(config)
        .await
        .expect("build conversations"))
    .await
}

async fn spawn_billing(config: &mesh_billing::Config) -> Running {
    run(mesh_billing::build(config).await.expect("build billing")).await
}

/// Runs a built service until stopped, once it reports SERVING.
async fn run(app: mesh_runtime::server::Application) -> Running {
    let served = serve_task(app).await;
    Running {
        addr: served.addr,
        stop: Some(served.stop),
        task: served.task,
    }
}

/// `sha256=<hex>` of `body` under `secret`, as Meta sends it.
pub fn sign(secret: &str, body: &[u8]) -> String {
    mesh_gateway::signature::sign_whatsapp(secret.as_bytes(), body)
}

impl TestApp {
    /// Stops the conversations service (the gateway keeps running).
    pub async fn stop_conversations(&mut self) {
        if let Some(running) = self.conversations_service.take() {
            running.stop().await;
        }
    }

    /// Starts it again on the same address.
    pub async fn start_conversations(&mut self) {
        self.conversations_service = Some(spawn_conversations(&self.conversations_config).await);
    }

    /// Stops the billing service (the gateway keeps running).
    pub async fn stop_billing(&mut self) {
        if let Some(running) = self.billing_service.take() {
            running.stop().await;
        }
    }

    /// Starts it again on the same address.
    pub async fn start_billing(&mut self) {
        self.billing_service = Some(spawn_billing(&self.billing_config).await);
    }

    /// POSTs `body` to the Lemon Squeezy webhook under `event_name`,
    /// signed as Lemon Squeezy signs it.
    pub async fn post_lemonsqueezy(&self, event_name: &str, body: &[u8]) -> reqwest::Response {
        let signature =
            mesh_gateway::signature::sign_lemonsqueezy(LEMONSQUEEZY_SECRET.as_bytes(), body);
        self.post_lemonsqueezy_signed(Some(event_name), body, Some(&signature))
            .await
    }

    /// POSTs `body` to the Lemon Squeezy webhook with these headers (or none).
    pub async fn post_lemonsqueezy_signed(
        &self,
        event_name: Option<&str>,
        body: &[u8],
        signature: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/webhooks/lemonsqueezy", self.url))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(name) = event_name {
            request = request.header("x-event-name", name);
        }
        if let Some(signature) = signature {
            request = request.header("x-signature", signature);
        }
        request.send().await.expect("the gateway answers")
    }

    /// POSTs `body` to the WhatsApp webhook, correctly signed.
    pub async fn post_whatsapp(&self, body: &[u8]) -> reqwest::Response {
        let signature = sign(APP_SECRET, body);
        self.post_whatsapp_signed(body, Some(&signature)).await
    }

    /// POSTs `body` to the WhatsApp webhook with this signature header (or none).
    pub async fn post_whatsapp_signed(
        &self,
        body: &[u8],
        signature: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}/webhooks/whatsapp", self.url))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header("x-hub-signature-256", signature);
        }
        request.send().await.expect("the gateway answers")
    }

    /// POSTs `update` to the Telegram webhook with the secret token.
    pub async fn post_telegram(&self, update: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}/webhooks/telegram", self.url))
            .header("content-type", "application/json")
            .header("x-telegram-bot-api-secret-token", TELEGRAM_SECRET)
            .body(update.to_string())
            .send()
            .await
            .expect("the gateway answers")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("the gateway answers")
    }

    /// The user with this E.164 phone.
    pub async fn user_by_phone(&mut self, phone: &str) -> users::User {
        self.users
            .get_user_by_phone(users::GetUserByPhoneRequest {
                phone: phone.into(),
            })
            .await
            .expect("the user exists")
            .into_inner()
            .user
            .expect("a user")
    }

    /// Every message of the user on every conversation, oldest first.
    pub async fn messages_of(&mut self, user_id: &str) -> Vec<conv::Message> {
        let conversations = self
            .conversations
            .list_conversations(conv::ListConversationsRequest {
                user_id: user_id.into(),
                page_size: 100,
                ..Default::default()
            })
            .await
            .expect("list conversations")
            .into_inner()
            .conversations;
        let mut messages = Vec::new();
        for conversation in conversations.iter().rev() {
            messages.extend(
                self.conversations
                    .list_messages(conv::ListMessagesRequest {
                        conversation_id: conversation.id.clone(),
                        page_size: 1000,
                        ..Default::default()
                    })
                    .await
                    .expect("list messages")
                    .into_inner()
                    .messages,
            );
        }
        messages
    }

    /// The messages of the user with this phone.
    pub async fn messages_from(&mut self, phone: &str) -> Vec<conv::Message> {
        let user = self.user_by_phone(phone).await;
        self.messages_of(&user.id).await
    }

    /// The texts of the messages of the user with this phone, oldest first.
    pub async fn texts_from(&mut self, phone: &str) -> Vec<String> {
        let messages = self.messages_from(phone).await;
        messages.into_iter().map(|m| m.content).collect()
    }

    /// The dead letters, oldest first.
    pub async fn webhook_failures(&mut self) -> Vec<conv::WebhookFailure> {
        self.conversations
            .list_webhook_failures(conv::ListWebhookFailuresRequest {
                page_size: 100,
                ..Default::default()
            })
            .await
            .expect("list webhook failures")
            .into_inner()
            .failures
    }

    /// Sends a text to the user on WhatsApp (through the fake Cloud API);
    /// returns the stored message, with the wamid statuses will name.
    pub async fn send_text(&mut self, user_id: &str, text: &str) -> conv::Message {
        self.conversations
            .send_message(conv::SendMessageRequest {
                target: Some(conv::send_message_request::Target::UserId(user_id.into())),
                channel: conv::Channel::Whatsapp.into(),
                content: Some(conv::send_message_request::Content::Text(text.into())),
                ..Default::default()
            })
            .await
            .expect("send a message")
            .into_inner()
            .message
            .expect("the sent message")
    }

    /// One message by id.
    pub async fn message(&mut self, message_id: &str) -> conv::Message {
        self.conversations
            .get_message(conv::GetMessageRequest {
                message_id: message_id.into(),
            })
            .await
            .expect("get the message")
            .into_inner()
            .message
            .expect("a message")
    }

    /// Rows in `conversations.messages`, counted as the superuser.
    pub async fn stored_messages(&self) -> i64 {
        self.db.count("conversations", "messages").await
    }
}

/// A stored message's metadata, as JSON.
pub fn metadata(m: &conv::Message) -> serde_json::Value {
    mesh_runtime::convert::struct_to_json(m.metadata.as_ref().expect("metadata"))
}

/// The JSON answer of a response that must be 200.
pub async fn ok_json(response: reqwest::Response) -> serde_json::Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("a JSON answer")
}
