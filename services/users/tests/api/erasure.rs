//! DeleteUser as the mesh-wide erasure: the users service with the four
//! contexts it purges, each a real service over the same Postgres database
//! (its own schema and role), one of them down when the erasure starts, and
//! the users service restarted halfway.

use std::{net::SocketAddr, time::Duration};

use mesh_proto::mesh::{
    billing::v1::{self as billing, billing_service_client::BillingServiceClient},
    conversations::v1::{
        self as conversations, conversations_service_client::ConversationsServiceClient,
    },
    memory::v1::{self as memory, memory_service_client::MemoryServiceClient},
    scheduler::v1::{self as scheduler, scheduler_service_client::SchedulerServiceClient},
    users::v1::*,
};
use mesh_runtime::testing::{Auth, Served, TestDatabase, bearer, channel, serve_task};
use mesh_users::{Config, config::ErasureConfig, erasure::Context};
use sqlx::AssertSqlSafe;
use tonic::{Code, service::interceptor::InterceptedService, transport::Channel};

use crate::harness::client;

type Authed = InterceptedService<Channel, Auth>;

const PHONE: &str = "+573009876543";

/// The five services over one test database.
struct Mesh {
    db: TestDatabase,
    users_config: Config,
    users: Option<Served>,
    contexts: Vec<(Context, Option<Served>)>,
    memory_config: mesh_memory::Config,
}

impl Mesh {
    async fn start() -> Self {
        let db = TestDatabase::create().await;
        // The contexts ask users for time zones and phones, and users purges
        // them: users' address is chosen first, the others are then known.
        let users_addr = free_addr();
        let users_url = format!("http://{users_addr}");
        let conversations = serve_task(
            mesh_conversations::build(&conversations_config(&db, &users_url))
                .await
                .expect("build conversations"),
        )
        .await;
        let mut memory_config = memory_config(&db);
        let memory = serve_task(
            mesh_memory::build(&memory_config)
                .await
                .expect("build memory"),
        )
        .await;
        // A restart must come back where users calls it.
        memory_config.service.addr = memory.addr;
        let scheduler = serve_task(
            mesh_scheduler::build(&scheduler_config(&db, &users_url, conversations.addr))
                .await
                .expect("build scheduler"),
        )
        .await;
        let billing = serve_task(
            mesh_billing::build(&billing_config(&db, &users_url))
                .await
                .expect("build billing"),
        )
        .await;
        let contexts = vec![
            (Context::Conversations, Some(conversations)),
            (Context::Memory, Some(memory)),
            (Context::Scheduler, Some(scheduler)),
            (Context::Billing, Some(billing)),
        ];
        let mut service = db.service_config("users");
        service.addr = users_addr;
        let users_config = Config {
            service,
            erasure: ErasureConfig {
                contexts: contexts
                    .iter()
                    .map(|(context, served)| {
                        let addr = served.as_ref().expect("running").addr;
                        (*context, format!("http://{addr}"))
                    })
                    .collect(),
                purge_timeout: Duration::from_secs(5),
                // Quick retries, so the test does not wait out a long backoff.
                retry_max: Duration::from_millis(500),
                // The sweep a second after every context answered.
                settle: Duration::from_secs(1),
            },
        };
        let users = serve_task(
            mesh_users::build(users_config.clone())
                .await
                .expect("build users"),
        )
        .await;
        Self {
            db,
            users_config,
            users: Some(users),
            contexts,
            memory_config,
        }
    }

    fn addr(&self, context: Context) -> SocketAddr {
        self.contexts
            .iter()
            .find(|(c, _)| *c == context)
            .and_then(|(_, served)| served.as_ref())
            .expect("the context is running")
            .addr
    }

    async fn client_of(&self, context: Context) -> Authed {
        InterceptedService::new(channel(self.addr(context)).await, bearer as Auth)
    }

    async fn users(&self) -> crate::harness::Client {
        client(channel(self.users.as_ref().expect("users running").addr).await)
    }

    async fn stop_memory(&mut self) {
        let slot = self
            .contexts
            .iter_mut()
            .find(|(c, _)| *c == Context::Memory)
            .expect("memory");
        let served = slot.1.take().expect("memory running");
        served.shutdown().await.expect("memory drains");
    }

    async fn start_memory(&mut self) {
        let served = serve_task(
            mesh_memory::build(&self.memory_config)
                .await
                .expect("build memory"),
        )
        .await;
        let slot = self
            .contexts
            .iter_mut()
            .find(|(c, _)| *c == Context::Memory)
            .expect("memory");
        slot.1 = Some(served);
    }

    /// Stops the users service and starts a new one on the same database and
    /// address: what a crash-and-restart leaves to resume.
    async fn restart_users(&mut self) {
        let served = self.users.take().expect("users running");
        served.shutdown().await.expect("users drains");
        self.users = Some(
            serve_task(
                mesh_users::build(self.users_config.clone())
                    .await
                    .expect("build users"),
            )
            .await,
        );
    }
}

/// A loopback address nobody listens on right now.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

fn conversations_config(db: &TestDatabase, users_url: &str) -> mesh_conversations::Config {
    use mesh_conversations::config::{TelegramConfig, WhatsAppConfig};
    mesh_conversations::Config {
        service: db.service_config("conversations"),
        idle_gap: mesh_conversations::config::DEFAULT_IDLE_GAP,
        event_retention: mesh_conversations::config::DEFAULT_EVENT_RETENTION,
        users_url: users_url.into(),
        provider_timeout: Duration::from_secs(5),
        // Nothing is sent in this test.
        whatsapp: WhatsAppConfig {
            api_base: "http://127.0.0.1:9".into(),
            api_version: "v21.0".into(),
            access_token: None,
            phone_number_id: None,
        },
        telegram: TelegramConfig {
            api_base: "http://127.0.0.1:9".into(),
            bot_token: None,
        },
    }
}

fn memory_config(db: &TestDatabase) -> mesh_memory::Config {
    let model_dir = std::env::var("MEMORY_MODEL_DIR").expect(
        "MEMORY_MODEL_DIR must name the all-MiniLM-L6-v2 directory: run the tests with `cargo xtask test`",
    );
    mesh_memory::Config {
        service: db.service_config("memory"),
        embedder: mesh_memory::config::EmbedderConfig::Local {
            model_dir: model_dir.into(),
        },
        max_document_bytes: mesh_memory::config::DEFAULT_MAX_DOCUMENT_BYTES,
        exact_search_max: mesh_memory::config::DEFAULT_EXACT_SEARCH_MAX,
        ingest_lease: Duration::from_secs(60),
    }
}

fn scheduler_config(
    db: &TestDatabase,
    users_url: &str,
    conversations: SocketAddr,
) -> mesh_scheduler::Config {
    mesh_scheduler::Config {
        service: db.service_config("scheduler"),
        users_url: users_url.into(),
        conversations_url: format!("http://{conversations}"),
        call_timeout: Duration::from_secs(5),
        // The reminder is for tomorrow; nothing is dispatched meanwhile.
        dispatcher: mesh_scheduler::config::DispatcherConfig {
            enabled: false,
            poll_interval: Duration::from_secs(1),
            batch_size: 100,
            concurrency: 4,
            lease: Duration::from_secs(30),
            max_retries: 3,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(1),
        },
        notification_retention: Duration::from_secs(30 * 24 * 3600),
        checkin_content_grace: Duration::from_secs(2 * 3600),
        metrics_addr: "127.0.0.1:0".parse().expect("valid"),
    }
}

fn billing_config(db: &TestDatabase, users_url: &str) -> mesh_billing::Config {
    mesh_billing::Config {
        service: db.service_config("billing"),
        users_url: users_url.into(),
        call_timeout: Duration::from_secs(5),
        profile_cache: Duration::from_secs(300),
        plans: mesh_billing::plans::Plans::builtin(),
        prices: mesh_billing::plans::Prices::builtin(),
    }
}

/// Gives `user` data in every context through their APIs.
async fn fill_every_context(mesh: &Mesh, user: &str) {
    let mut chat = ConversationsServiceClient::new(mesh.client_of(Context::Conversations).await);
    let conversation = chat
        .get_or_create_active_conversation(conversations::GetOrCreateActiveConversationRequest {
            user_id: user.into(),
            channel: conversations::Channel::Whatsapp as i32,
            ..Default::default()
        })
        .await
        .expect("a conversation")
        .into_inner()
        .conversation
        .expect("conversation");
    for (n, text) in ["Hola, soy Ana", "Recuérdame llamar a mamá"]
        .into_iter()
        .enumerate()
    {
        chat.record_inbound_message(conversations::RecordInboundMessageRequest {
            conversation_id: conversation.id.clone(),
            message: Some(conversations::Message {
                r#type: conversations::MessageType::Text as i32,
                role: conversations::MessageRole::User as i32,
                content: text.into(),
                provider_message_id: format!("wamid.erasure-{n}"),
                ..Default::default()
            }),
            referral: None,
        })
        .await
        .expect("an inbound message");
    }

    let mut memories = MemoryServiceClient::new(mesh.client_of(Context::Memory).await);
    memories
        .create_memory(memory::CreateMemoryRequest {
            memory: Some(memory::Memory {
                user_id: user.into(),
                kind: memory::MemoryKind::Fact as i32,
                content: "Ana's mother lives in Medellín".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("a memory");
    memories
        .upload_document(memory::UploadDocumentRequest {
            user_id: user.into(),
            filename: "diary.txt".into(),
            content: Some(memory::upload_document_request::Content::Text(
                "Ana wrote about her week in Medellín.".into(),
            )),
            ..Default::default()
        })
        .await
        .expect("a document");

    let tomorrow = chrono::Utc::now() + chrono::TimeDelta::days(1);
    SchedulerServiceClient::new(mesh.client_of(Context::Scheduler).await)
        .create_reminder(scheduler::CreateReminderRequest {
            reminder: Some(scheduler::Reminder {
                user_id: user.into(),
                title: "Call mum".into(),
                scheduled_time: Some(mesh_runtime::convert::timestamp(tomorrow)),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("a reminder");

    let mut billing = BillingServiceClient::new(mesh.client_of(Context::Billing).await);
    billing
        .consume_quota(billing::ConsumeQuotaRequest {
            user_id: user.into(),
            feature: billing::Feature::InboundMessages as i32,
            amount: 2,
            request_id: "inbound-erasure".into(),
        })
        .await
        .expect("quota");
    billing
        .record_ai_usage(billing::RecordAiUsageRequest {
            request_id: "ai-erasure".into(),
            user_id: user.into(),
            conversation_id: conversation.id,
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            task_type: billing::TaskType::Chat as i32,
            input_tokens: 120,
            output_tokens: 40,
            ..Default::default()
        })
        .await
        .expect("usage");
}

/// Rows in the test database, in any schema, that mention `needle` in any
/// column, binary ones included, by table. The records that the erasure
/// happened are left out: users' erasures and billing's erased ids keep the
/// user id on purpose (billing stores a later renewal naming it stripped).
/// With `skip_purge_answers`, so are the contexts' stored PurgeUser answers,
/// which name the user id too (a digest of the request and the counts, kept
/// so a retried purge gets its answer).
async fn rows_mentioning(
    db: &TestDatabase,
    needle: &str,
    skip_purge_answers: bool,
) -> Vec<(String, i64)> {
    let mut admin = db.admin_connection().await;
    // Each table with its binary columns, which `t::text` shows as hex: they
    // are searched for the needle's bytes (stored protobuf, raw webhook
    // bodies).
    let tables: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "SELECT t.table_schema::text, t.table_name::text,
                coalesce(array_agg(c.column_name::text) FILTER (WHERE c.data_type = 'bytea'), '{}')
         FROM information_schema.tables t
         JOIN information_schema.columns c USING (table_schema, table_name)
         WHERE t.table_schema IN ('users', 'conversations', 'memory', 'scheduler', 'billing')
           AND t.table_type = 'BASE TABLE'
           AND (t.table_schema, t.table_name) NOT IN (
               ('users', 'erasures'), ('users', 'erasure_steps'), ('billing', 'erased_users'))
           AND t.table_name NOT LIKE '\\_sqlx%'
         GROUP BY 1, 2",
    )
    .fetch_all(&mut admin)
    .await
    .expect("list tables");
    assert!(tables.len() > 30, "every schema is there: {tables:?}");
    let mut found = Vec::new();
    for (schema, table, binary) in tables {
        let mut matches = vec!["t::text LIKE '%' || $1 || '%'".to_owned()];
        matches.extend(
            binary
                .iter()
                .map(|column| format!("position(convert_to($1, 'UTF8') in t.{column}) > 0")),
        );
        let purge_answers = if skip_purge_answers && table == "idempotency_keys" {
            " AND operation <> 'PurgeUser'"
        } else {
            ""
        };
        // Names from the catalogue, not input.
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {schema}.{table} t WHERE ({}){purge_answers}",
            matches.join(" OR ")
        )))
        .bind(needle)
        .fetch_one(&mut admin)
        .await
        .expect("count rows");
        if n > 0 {
            found.push((format!("{schema}.{table}"), n));
        }
    }
    found
}

async fn erasure(users: &mut crate::harness::Client, id: &str) -> Erasure {
    users
        .get_erasure(GetErasureRequest {
            erasure_id: id.into(),
        })
        .await
        .expect("GetErasure")
        .into_inner()
        .erasure
        .expect("erasure")
}

fn step<'a>(erasure: &'a Erasure, context: &str) -> &'a ErasureStep {
    erasure
        .steps
        .iter()
        .find(|s| s.context == context)
        .unwrap_or_else(|| panic!("no {context} step in {erasure:?}"))
}

#[tokio::test]
async fn an_erasure_reaches_every_context_waits_out_a_down_one_and_survives_a_restart() {
    let mut mesh = Mesh::start().await;
    let mut users = mesh.users().await;
    let user = users
        .upsert_user_by_phone(UpsertUserByPhoneRequest {
            phone: PHONE.into(),
            profile_name: "Ana".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    fill_every_context(&mesh, &user.id).await;
    assert!(
        rows_mentioning(&mesh.db, &user.id, true).await.len() >= 8,
        "the user has data in every context"
    );

    mesh.stop_memory().await;
    let started = users
        .delete_user(DeleteUserRequest {
            user_id: user.id.clone(),
            request_id: "erase-ana".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .erasure
        .unwrap();
    assert_eq!(started.state(), ErasureState::Running, "{started:?}");
    let contexts: Vec<&str> = started.steps.iter().map(|s| s.context.as_str()).collect();
    assert_eq!(
        contexts,
        ["conversations", "memory", "scheduler", "billing", "users"]
    );
    for done in ["conversations", "scheduler", "billing"] {
        let step = step(&started, done);
        assert!(step.done, "{step:?}");
        assert!(step.complete_time.is_some());
        assert!(step.deleted.values().sum::<i64>() > 0, "{step:?}");
    }
    assert_eq!(step(&started, "conversations").deleted["messages"], 2);
    let memory_step = step(&started, "memory");
    assert!(!memory_step.done);
    assert_eq!(memory_step.attempts, 1);
    assert!(
        memory_step
            .last_error
            .contains("did not answer: Unavailable"),
        "{memory_step:?}"
    );
    assert!(memory_step.next_attempt_time.is_some());
    assert!(
        !step(&started, "users").done,
        "the user stays until every context answered"
    );

    // Meanwhile the user is kept but cannot be written to through the
    // gateway's lookups: a message retried later finds a fresh identity.
    let kept = users
        .get_user(GetUserRequest {
            user_id: user.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert!(!kept.is_active);
    let refused = users
        .upsert_user_by_phone(UpsertUserByPhoneRequest {
            phone: PHONE.into(),
            profile_name: "Ana".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let refused = users
        .update_user(UpdateUserRequest {
            user: Some(User {
                id: user.id.clone(),
                display_name: "Ana María".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["display_name".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");

    // A caller that looked the user up before the erasure began writes to
    // conversations after its first purge: the sweep erases that too.
    let mut chat = ConversationsServiceClient::new(mesh.client_of(Context::Conversations).await);
    let late = chat
        .get_or_create_active_conversation(conversations::GetOrCreateActiveConversationRequest {
            user_id: user.id.clone(),
            channel: conversations::Channel::Whatsapp as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    chat.record_inbound_message(conversations::RecordInboundMessageRequest {
        conversation_id: late.id,
        message: Some(conversations::Message {
            r#type: conversations::MessageType::Text as i32,
            role: conversations::MessageRole::User as i32,
            content: "¿Sigues ahí?".into(),
            provider_message_id: "wamid.erasure-late".into(),
            ..Default::default()
        }),
        referral: None,
    })
    .await
    .expect("a late inbound message");

    // A repeat, with no request id, is the same erasure.
    let repeat = users
        .delete_user(DeleteUserRequest {
            user_id: user.id.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .erasure
        .unwrap();
    assert_eq!(repeat.erasure_id, started.erasure_id);

    // The users service goes down halfway and comes back; memory returns.
    mesh.restart_users().await;
    let mut users = mesh.users().await;
    mesh.start_memory().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let done = loop {
        let now = erasure(&mut users, &started.erasure_id).await;
        if now.state() == ErasureState::Done {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the erasure never finished: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let memory_step = step(&done, "memory");
    assert!(
        memory_step.done && memory_step.attempts >= 2,
        "{memory_step:?}"
    );
    assert_eq!(memory_step.deleted["memories"], 1, "{memory_step:?}");
    assert_eq!(memory_step.deleted["documents"], 1, "{memory_step:?}");
    // Every context was swept, and the sweep found the late message.
    for context in ["conversations", "memory", "scheduler", "billing"] {
        let step = step(&done, context);
        assert!(step.sweep_time.is_some() && step.done, "{step:?}");
    }
    let conversations_step = step(&done, "conversations");
    assert_eq!(
        conversations_step.deleted["messages"], 3,
        "two in the first round, the late one in the sweep: {conversations_step:?}"
    );
    assert_eq!(step(&done, "users").deleted["users"], 1);
    // The user went last, and the erasure ended with it.
    let finished = |t: &Option<prost_types::Timestamp>| {
        let t = t.as_ref().expect("a completion time");
        (t.seconds, t.nanos)
    };
    let users_finished = finished(&step(&done, "users").complete_time);
    for other in &done.steps {
        assert!(finished(&other.complete_time) <= users_finished, "{done:?}");
    }
    assert!(users_finished <= finished(&done.complete_time), "{done:?}");
    assert_eq!(done.request_id, "erase-ana");

    // Nothing of the user is left, through every API...
    let gone = users
        .get_user(GetUserRequest {
            user_id: user.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let gone = users
        .get_user_by_phone(GetUserByPhoneRequest {
            phone: PHONE.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let conversations =
        ConversationsServiceClient::new(mesh.client_of(Context::Conversations).await)
            .list_conversations(conversations::ListConversationsRequest {
                user_id: user.id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .conversations;
    assert!(conversations.is_empty(), "{conversations:?}");
    let mut memories = MemoryServiceClient::new(mesh.client_of(Context::Memory).await);
    let listed = memories
        .list_memories(memory::ListMemoriesRequest {
            user_id: user.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .memories;
    assert!(listed.is_empty(), "{listed:?}");
    let documents = memories
        .list_documents(memory::ListDocumentsRequest {
            user_id: user.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .documents;
    assert!(documents.is_empty(), "{documents:?}");
    let reminders = SchedulerServiceClient::new(mesh.client_of(Context::Scheduler).await)
        .list_reminders(scheduler::ListRemindersRequest {
            user_id: user.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .reminders;
    assert!(reminders.is_empty(), "{reminders:?}");
    let totals = BillingServiceClient::new(mesh.client_of(Context::Billing).await)
        .get_usage_totals(billing::GetUsageTotalsRequest {
            user_id: user.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((totals.ai_calls, totals.input_tokens), (0, 0), "{totals:?}");

    // ...and in every table of every schema, by id and by phone.
    assert_eq!(rows_mentioning(&mesh.db, &user.id, true).await, []);
    assert_eq!(
        rows_mentioning(&mesh.db, PHONE.trim_start_matches('+'), false).await,
        []
    );

    // The phone is free again: the next message makes a new user.
    let fresh = users
        .upsert_user_by_phone(UpsertUserByPhoneRequest {
            phone: PHONE.into(),
            profile_name: "Ana".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(fresh.created);
    assert_ne!(fresh.user.unwrap().id, user.id);
}

#[tokio::test]
async fn get_erasure_checks_its_id() {
    let mut app = crate::harness::spawn_app().await;
    let users = &mut app.client;
    let bad = users
        .get_erasure(GetErasureRequest {
            erasure_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(crate::harness::bad_fields(&bad), ["erasure_id"]);
    let unknown = users
        .get_erasure(GetErasureRequest {
            erasure_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
}

#[tokio::test]
async fn concurrent_deletes_of_one_user_start_one_erasure() {
    let mut app = crate::harness::spawn_app().await;
    let user = app.new_user().await;
    let calls = (0..10).map(|n| {
        let mut client = app.client.clone();
        let user_id = user.clone();
        async move {
            client
                .delete_user(DeleteUserRequest {
                    user_id,
                    request_id: format!("erase-{n}"),
                })
                .await
                .expect("DeleteUser")
                .into_inner()
                .erasure
                .expect("erasure")
                .erasure_id
        }
    });
    let ids = futures::future::join_all(calls).await;
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(app.count("erasures").await, 1);
    assert_eq!(app.count("users").await, 0);
}
