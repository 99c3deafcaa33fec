//! The items the scenarios send: WhatsApp deliveries through the gateway,
//! and for each gRPC service an idempotent create whose result is a row.

use std::sync::Arc;

use mesh_proto::mesh::{
    billing::v1 as billing, memory::v1 as memory, scheduler::v1 as scheduler, users::v1 as users,
};

use super::load::{Attempt, Workload, grpc_code, http_failure, key};
use crate::{
    clients::{BillingClient, MemoryClient, SchedulerClient, UsersClient},
    whatsapp,
};

/// Distinct senders the deliveries come from.
const SENDERS: usize = 50;

/// Signed WhatsApp text deliveries, one message each, posted to the
/// gateway at `url` until it answers 200 with the message stored (or
/// already stored: a retry of a delivery whose first answer was lost).
pub fn webhooks(http: &reqwest::Client, url: &str, app_secret: &str, tag: &str) -> Workload {
    let prefix = format!("wamid.chaos.{tag}.");
    let (http, url, secret, wamids) = (
        http.clone(),
        Arc::new(url.to_owned()),
        Arc::new(app_secret.to_owned()),
        prefix.clone(),
    );
    let attempt: Attempt = Arc::new(move |i| {
        let wa_id = format!("57300{:07}", i % SENDERS);
        let body = whatsapp::TextMessage {
            wa_id: &wa_id,
            profile_name: "Chaos",
            wamid: &key(&wamids, i),
            timestamp: now(),
            text: "¿Sigues ahí? 👋",
        }
        .body();
        let signature = whatsapp::signature(&secret, &body);
        let (http, url) = (http.clone(), url.clone());
        Box::pin(async move {
            match whatsapp::post_delivery(&http, &url, body, signature).await {
                Ok((status, summary)) if status.is_success() => {
                    if summary.stored + summary.duplicates == 1 {
                        Ok(())
                    } else {
                        Err(format!("HTTP {} without the message", status.as_u16()))
                    }
                }
                Ok((status, _)) => Err(format!("HTTP {}", status.as_u16())),
                Err(e) => Err(e
                    .downcast_ref::<reqwest::Error>()
                    .map_or_else(|| "unreadable answer".into(), http_failure)),
            }
        })
    });
    Workload {
        label: "WhatsApp deliveries via the gateway".into(),
        prefix,
        stored_sql: "SELECT provider_message_id FROM conversations.messages \
                     WHERE provider_message_id LIKE $1",
        // UNIQUE (channel, provider_message_id).
        unique_key: true,
        attempt,
    }
}

/// users.CreateUser, a new phone number each (`+5732<digit><i>`).
pub fn create_users(client: &UsersClient, digit: u8) -> Workload {
    let prefix = format!("+5732{digit}");
    let (client, phones) = (client.clone(), prefix.clone());
    let attempt: Attempt = Arc::new(move |i| {
        let mut client = client.clone();
        let phone = key(&phones, i);
        Box::pin(async move {
            client
                .create_user(users::CreateUserRequest {
                    user: Some(users::User {
                        phone: Some(phone.clone()),
                        timezone: "America/Bogota".into(),
                        ..Default::default()
                    }),
                    request_id: phone,
                })
                .await
                .map(drop)
                .map_err(|status| grpc_code(&status))
        })
    });
    Workload {
        label: "users.CreateUser".into(),
        prefix,
        stored_sql: "SELECT phone FROM users.users WHERE phone LIKE $1",
        // users.phone is UNIQUE.
        unique_key: true,
        attempt,
    }
}

/// memory.CreateMemory (embedded with the local model), for `user_id`.
pub fn create_memories(client: &MemoryClient, user_id: &str, tag: &str) -> Workload {
    let prefix = format!("chaos memory {tag} #");
    let (client, user_id, contents) = (client.clone(), user_id.to_owned(), prefix.clone());
    let attempt: Attempt = Arc::new(move |i| {
        let mut client = client.clone();
        let content = key(&contents, i);
        let user_id = user_id.clone();
        Box::pin(async move {
            client
                .create_memory(memory::CreateMemoryRequest {
                    memory: Some(memory::Memory {
                        user_id,
                        kind: memory::MemoryKind::Fact.into(),
                        content: content.clone(),
                        ..Default::default()
                    }),
                    embedding: None,
                    request_id: content,
                })
                .await
                .map(drop)
                .map_err(|status| grpc_code(&status))
        })
    });
    Workload {
        label: "memory.CreateMemory".into(),
        prefix,
        stored_sql: "SELECT content FROM memory.memories WHERE content LIKE $1",
        unique_key: false,
        attempt,
    }
}

/// scheduler.CreateReminder for `user_id`, due years from now (so the
/// dispatcher leaves them alone).
pub fn create_reminders(client: &SchedulerClient, user_id: &str, tag: &str) -> Workload {
    let prefix = format!("chaos reminder {tag} #");
    let (client, user_id, titles) = (client.clone(), user_id.to_owned(), prefix.clone());
    let attempt: Attempt = Arc::new(move |i| {
        let mut client = client.clone();
        let title = key(&titles, i);
        let user_id = user_id.clone();
        Box::pin(async move {
            client
                .create_reminder(scheduler::CreateReminderRequest {
                    reminder: Some(scheduler::Reminder {
                        user_id,
                        title: title.clone(),
                        time_zone: "America/Bogota".into(),
                        ..Default::default()
                    }),
                    local_time: "2031-01-15T09:00".into(),
                    request_id: title,
                })
                .await
                .map(drop)
                .map_err(|status| grpc_code(&status))
        })
    });
    Workload {
        label: "scheduler.CreateReminder".into(),
        prefix,
        stored_sql: "SELECT title FROM scheduler.reminders WHERE title LIKE $1",
        unique_key: false,
        attempt,
    }
}

/// billing.RecordAiUsage for `user_id`, a ledger row each (at a given cost
/// of zero, far from any quota).
pub fn record_ai_usage(client: &BillingClient, user_id: &str, tag: &str) -> Workload {
    let prefix = format!("chaos-ai-{tag}-");
    let (client, user_id, request_ids) = (client.clone(), user_id.to_owned(), prefix.clone());
    let attempt: Attempt = Arc::new(move |i| {
        let mut client = client.clone();
        let request_id = key(&request_ids, i);
        let user_id = user_id.clone();
        Box::pin(async move {
            client
                .record_ai_usage(billing::RecordAiUsageRequest {
                    request_id,
                    user_id,
                    provider: "openai".into(),
                    model: "gpt-4o-mini".into(),
                    task_type: billing::TaskType::Chat.into(),
                    input_tokens: 1,
                    output_tokens: 1,
                    cost_usd: Some("0".into()),
                    ..Default::default()
                })
                .await
                .map(drop)
                .map_err(|status| grpc_code(&status))
        })
    });
    Workload {
        label: "billing.RecordAiUsage".into(),
        prefix,
        stored_sql: "SELECT request_id FROM billing.ai_usage WHERE request_id LIKE $1",
        // billing.ai_usage.request_id is UNIQUE.
        unique_key: true,
        attempt,
    }
}

/// Unix seconds now.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
