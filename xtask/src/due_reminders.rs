//! Reminders that go out as soon as they are due, for `bench scheduler` and
//! chaos: WhatsApp users with an open customer service window and no quiet
//! hours, and reminders for them loaded straight into the scheduler's table
//! (what is measured or broken is the dispatch, not CreateReminder).

use std::time::Duration;

use anyhow::{Context, Result};
use mesh_proto::mesh::{
    conversations::v1 as conversations_pb,
    users::v1::{self as users_pb},
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::clients::{ConversationsClient, UsersClient};

/// `count` users with a phone, no quiet hours (start = end), and an inbound
/// message each, so the customer service window is open and reminders go as
/// text. `tag` keeps runs' phones, request ids and message ids apart.
pub async fn seed_reachable_users(
    users: &mut UsersClient,
    conversations: &mut ConversationsClient,
    count: usize,
    tag: &str,
) -> Result<Vec<Uuid>> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let user = users
            .create_user(users_pb::CreateUserRequest {
                user: Some(users_pb::User {
                    phone: Some(format!("+57310{i:07}")),
                    timezone: "America/Bogota".into(),
                    ..Default::default()
                }),
                request_id: format!("{tag}-user-{i}"),
            })
            .await?
            .into_inner()
            .user
            .context("CreateUser answered no user")?;
        users
            .update_agent_preferences(users_pb::UpdateAgentPreferencesRequest {
                preferences: Some(users_pb::AgentPreferences {
                    user_id: user.id.clone(),
                    quiet_hours_start: "00:00".into(),
                    quiet_hours_end: "00:00".into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["quiet_hours_start".into(), "quiet_hours_end".into()],
                }),
            })
            .await?;
        let conversation = conversations
            .get_or_create_active_conversation(
                conversations_pb::GetOrCreateActiveConversationRequest {
                    user_id: user.id.clone(),
                    channel: conversations_pb::Channel::Whatsapp as i32,
                    ..Default::default()
                },
            )
            .await?
            .into_inner()
            .conversation
            .context("GetOrCreateActiveConversation answered no conversation")?;
        conversations
            .record_inbound_message(conversations_pb::RecordInboundMessageRequest {
                conversation_id: conversation.id,
                message: Some(conversations_pb::Message {
                    r#type: conversations_pb::MessageType::Text as i32,
                    role: conversations_pb::MessageRole::User as i32,
                    content: "hola".into(),
                    provider_message_id: format!("wamid.{tag}-{i}"),
                    ..Default::default()
                }),
                referral: None,
            })
            .await?;
        ids.push(user.id.parse()?);
    }
    Ok(ids)
}

/// Inserts `count` reminders for `recipients` (round-robin), due evenly over
/// `spread` starting `lead` from now, titled `<title> #<i>` and tagged
/// `metadata.round = round` (what [`round_status`] counts by).
pub async fn insert_due_reminders(
    db: &mut PgConnection,
    recipients: &[Uuid],
    round: &str,
    title: &str,
    count: usize,
    lead: Duration,
    spread: Duration,
) -> Result<()> {
    // One statement: ids and send tokens from Postgres, users round-robin,
    // due times spread evenly over `spread` after `lead`.
    sqlx::query(
        "INSERT INTO scheduler.reminders (id, user_id, title, scheduled_time, time_zone, \
             send_token, series_id, series_local_time, next_attempt_time, channel, metadata) \
         SELECT r.id, ($1::uuid[])[1 + (r.i % cardinality($1::uuid[]))], \
                $6 || ' #' || r.i, r.due, 'America/Bogota', \
                gen_random_uuid(), r.id, r.due AT TIME ZONE 'America/Bogota', r.due, 'whatsapp', \
                jsonb_build_object('round', $2) \
         FROM (SELECT uuidv7() AS id, i, \
                      now() + make_interval(secs => $3 + $4 * i / $5) AS due \
               FROM generate_series(0, $5 - 1) AS i) AS r",
    )
    .bind(recipients)
    .bind(round)
    .bind(lead.as_secs_f64())
    .bind(spread.as_secs_f64())
    .bind(count as i64)
    .bind(title)
    .execute(db)
    .await?;
    Ok(())
}

/// How many of a round's reminders are still pending, and how many failed.
pub async fn round_status(db: &mut PgConnection, round: &str) -> Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'pending'), \
                count(*) FILTER (WHERE status = 'failed') \
         FROM scheduler.reminders WHERE metadata->>'round' = $1",
    )
    .bind(round)
    .fetch_one(db)
    .await?)
}
