//! Conversations: at most one active per user and channel (a partial unique
//! index), the reuse policy that closes a stale one, and the row lock that
//! hands out gapless sequence numbers to appended messages.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, FieldViolation, Violations,
    convert::{json_to_struct, optional_timestamp, parse_uuid, timestamp},
    field_mask, pagination,
};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{events, wire};

#[derive(sqlx::FromRow, Clone, Debug)]
pub struct ConversationRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub channel: String,
    pub status: String,
    pub start_time: DateTime<Utc>,
    pub end_time: Option<DateTime<Utc>>,
    pub message_count: i64,
    pub last_message_time: Option<DateTime<Utc>>,
    pub context_summary: String,
    pub mood_summary: String,
    pub topics: Vec<String>,
    pub provider_conversation_id: Option<String>,
    pub metadata: serde_json::Value,
    pub update_time: DateTime<Utc>,
}

impl ConversationRow {
    pub fn into_proto(self) -> pb::Conversation {
        pb::Conversation {
            id: self.id.to_string(),
            user_id: self.user_id.to_string(),
            channel: wire::channel::parse(&self.channel) as i32,
            status: wire::conversation_status::parse(&self.status) as i32,
            start_time: Some(timestamp(self.start_time)),
            end_time: optional_timestamp(self.end_time),
            message_count: self.message_count,
            last_message_time: optional_timestamp(self.last_message_time),
            context_summary: self.context_summary,
            mood_summary: self.mood_summary,
            topics: self.topics,
            provider_conversation_id: self.provider_conversation_id.unwrap_or_default(),
            metadata: Some(json_to_struct(&self.metadata)),
            update_time: Some(timestamp(self.update_time)),
        }
    }

    /// When the conversation last saw a message (or started, without any).
    fn last_activity(&self) -> DateTime<Utc> {
        self.last_message_time.unwrap_or(self.start_time)
    }
}

/// When an active conversation is stale and a new one starts.
#[derive(Clone, Copy, Debug)]
pub struct ReusePolicy {
    pub idle_gap: Duration,
    /// With the daily scope: the user's time zone, whose day change also ends it.
    pub daily_in: Option<Tz>,
}

impl ReusePolicy {
    fn is_stale(&self, conversation: &ConversationRow, now: DateTime<Utc>) -> bool {
        let last = conversation.last_activity();
        let idle = (now - last).to_std().unwrap_or_default();
        if idle > self.idle_gap {
            return true;
        }
        self.daily_in.is_some_and(|tz| {
            last.with_timezone(&tz).date_naive() != now.with_timezone(&tz).date_naive()
        })
    }
}

const MAX_IDLE_GAP: Duration = Duration::from_secs(366 * 24 * 60 * 60);

fn idle_gap(
    value: Option<&prost_types::Duration>,
    default: Duration,
) -> Result<Duration, FieldViolation> {
    let Some(value) = value else {
        return Ok(default);
    };
    let out_of_range = || FieldViolation::new("idle_gap", "must be between 1 second and 366 days");
    if value.nanos < 0 || value.nanos >= 1_000_000_000 {
        return Err(out_of_range());
    }
    let gap = u64::try_from(value.seconds)
        .map(|s| Duration::new(s, value.nanos as u32))
        .map_err(|_| out_of_range())?;
    if gap < Duration::from_secs(1) || gap > MAX_IDLE_GAP {
        return Err(out_of_range());
    }
    Ok(gap)
}

pub fn time_zone(field: &str, value: &str) -> Result<Tz, FieldViolation> {
    value
        .parse::<Tz>()
        .map_err(|_| FieldViolation::new(field, "must be an IANA time zone such as America/Bogota"))
}

#[tracing::instrument(skip_all)]
pub async fn get_or_create_active(
    pool: &PgPool,
    default_idle_gap: Duration,
    request: pb::GetOrCreateActiveConversationRequest,
) -> ApiResult<pb::GetOrCreateActiveConversationResponse> {
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    let channel = violations.check(wire::channel::require("channel", request.channel));
    let gap = violations.check(idle_gap(request.idle_gap.as_ref(), default_idle_gap));
    let daily = match pb::ConversationScope::try_from(request.scope) {
        Ok(pb::ConversationScope::Daily) => true,
        Ok(_) => false,
        Err(_) => {
            violations.push("scope", "must be CONVERSATION_SCOPE_IDLE_GAP or _DAILY");
            false
        }
    };
    let zone = if daily || !request.time_zone.is_empty() {
        violations.check(time_zone("time_zone", &request.time_zone))
    } else {
        None
    };
    violations.check(wire::text(
        "provider_conversation_id",
        &request.provider_conversation_id,
        256,
    ));
    violations.into_result()?;
    let policy = ReusePolicy {
        idle_gap: gap.expect("validated"),
        daily_in: if daily { zone } else { None },
    };
    let provider_id = wire::non_empty(&request.provider_conversation_id);

    let mut tx = pool.begin().await?;
    let outcome = active(
        &mut tx,
        user.expect("validated"),
        channel.expect("validated"),
        policy,
        provider_id,
    )
    .await?;
    events::emit_all(&mut tx, outcome.events).await?;
    tx.commit().await?;
    Ok(pb::GetOrCreateActiveConversationResponse {
        conversation: Some(outcome.conversation.into_proto()),
        created: outcome.created,
        closed_conversation_id: outcome.closed.map(|id| id.to_string()).unwrap_or_default(),
    })
}

pub struct Active {
    pub conversation: ConversationRow,
    pub created: bool,
    /// The stale conversation the policy closed.
    pub closed: Option<Uuid>,
    /// What changed, for the caller to emit as the last statements of its
    /// transaction: the event head's lock must not be held while waiting on
    /// other locks (an insert can wait on another transaction's unique key).
    pub events: Vec<events::Event>,
}

/// The user's active conversation on `channel` within the caller's
/// transaction, closing a stale one and creating one as the policy says.
/// Safe under concurrency: the partial unique index admits one active row,
/// and a caller that loses the insert race reads the winner's.
pub async fn active(
    conn: &mut PgConnection,
    user: Uuid,
    channel: &str,
    policy: ReusePolicy,
    provider_conversation_id: Option<&str>,
) -> ApiResult<Active> {
    let mut closed = None;
    let mut pending = Vec::new();
    // Twice at most: a lost insert race means the winner's row is now visible.
    for _ in 0..3 {
        let current: Option<ConversationRow> = sqlx::query_as(
            "SELECT * FROM conversations WHERE user_id = $1 AND channel = $2 AND status = 'active'
             FOR UPDATE",
        )
        .bind(user)
        .bind(channel)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(current) = current {
            if !policy.is_stale(&current, Utc::now()) {
                return Ok(Active {
                    conversation: current,
                    created: false,
                    closed,
                    events: pending,
                });
            }
            let ended: ConversationRow = sqlx::query_as(
                "UPDATE conversations SET status = 'closed', end_time = now() WHERE id = $1 RETURNING *",
            )
            .bind(current.id)
            .fetch_one(&mut *conn)
            .await?;
            closed = Some(ended.id);
            pending.push(events::conversation_event(
                pb::EventType::ConversationUpdated,
                &ended,
            ));
        }
        let created: Option<ConversationRow> = sqlx::query_as(
            "INSERT INTO conversations (id, user_id, channel, provider_conversation_id)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id, channel) WHERE status = 'active' DO NOTHING
             RETURNING *",
        )
        .bind(Uuid::now_v7())
        .bind(user)
        .bind(channel)
        .bind(provider_conversation_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| {
            ApiError::from(e)
                .or_conflict(|| "another conversation has that provider_conversation_id".to_owned())
        })?;
        if let Some(created) = created {
            pending.push(events::conversation_event(
                pb::EventType::ConversationStarted,
                &created,
            ));
            return Ok(Active {
                conversation: created,
                created: true,
                closed,
                events: pending,
            });
        }
    }
    Err(ApiError::Unavailable(
        "the active conversation kept changing under concurrent calls; retry".into(),
    ))
}

/// The conversation with `id`, or NOT_FOUND.
pub async fn find(conn: &mut PgConnection, id: Uuid) -> ApiResult<ConversationRow> {
    sqlx::query_as("SELECT * FROM conversations WHERE id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no conversation with id {id}")))
}

/// Takes the next sequence number of an active conversation (the returned
/// row's `message_count`) and records the activity. The row stays locked until the caller's transaction ends, which
/// is what makes the numbers gapless: a rolled-back append gives its number
/// back. NOT_FOUND for no such conversation, FAILED_PRECONDITION when it is
/// not active.
pub async fn lock_for_append(conn: &mut PgConnection, id: Uuid) -> ApiResult<ConversationRow> {
    let row: Option<ConversationRow> = sqlx::query_as(
        "UPDATE conversations SET message_count = message_count + 1,
            last_message_time = clock_timestamp()
         WHERE id = $1 AND status = 'active' RETURNING *",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => Ok(row),
        None => {
            let existing = find(conn, id).await?;
            Err(ApiError::FailedPrecondition(format!(
                "conversation {id} is {}: messages go to an active conversation \
                 (GetOrCreateActiveConversation)",
                existing.status
            )))
        }
    }
}

#[tracing::instrument(skip_all)]
pub async fn get(
    pool: &PgPool,
    request: pb::GetConversationRequest,
) -> ApiResult<pb::GetConversationResponse> {
    let id = parse_uuid("conversation_id", &request.conversation_id)?;
    let mut conn = pool.acquire().await?;
    Ok(pb::GetConversationResponse {
        conversation: Some(find(&mut conn, id).await?.into_proto()),
    })
}

#[tracing::instrument(skip_all)]
pub async fn list(
    pool: &PgPool,
    request: pb::ListConversationsRequest,
) -> ApiResult<pb::ListConversationsResponse> {
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    let page =
        pagination::Page::<Uuid>::check(&mut violations, request.page_size, &request.page_token);
    let status = violations.check(wire::conversation_status::optional(
        "status",
        request.status,
    ));
    let channel = violations.check(wire::channel::optional("channel", request.channel));
    violations.into_result()?;
    let page = page.expect("validated");
    let mut rows: Vec<ConversationRow> = sqlx::query_as(
        "SELECT * FROM conversations
         WHERE user_id = $1 AND ($2::uuid IS NULL OR id < $2)
           AND ($3::text IS NULL OR status = $3) AND ($4::text IS NULL OR channel = $4)
         ORDER BY id DESC LIMIT $5",
    )
    .bind(user.expect("validated"))
    .bind(page.after)
    .bind(status.expect("validated"))
    .bind(channel.expect("validated"))
    .bind(page.size + 1)
    .fetch_all(pool)
    .await?;
    let next_page_token = pagination::next_page(&mut rows, page.size, |c| c.id.to_string());
    Ok(pb::ListConversationsResponse {
        conversations: rows.into_iter().map(ConversationRow::into_proto).collect(),
        next_page_token,
    })
}

#[tracing::instrument(skip_all)]
pub async fn close(
    pool: &PgPool,
    request: pb::CloseConversationRequest,
) -> ApiResult<pb::CloseConversationResponse> {
    let id = parse_uuid("conversation_id", &request.conversation_id)?;
    let conversation = change_status(
        pool,
        id,
        "UPDATE conversations SET status = 'closed', end_time = now()
         WHERE id = $1 AND status = 'active' RETURNING *",
        |current| match current.status.as_str() {
            "closed" => Ok(()),
            _ => Err(ApiError::FailedPrecondition(format!(
                "conversation {id} is archived and cannot be closed"
            ))),
        },
    )
    .await?;
    Ok(pb::CloseConversationResponse {
        conversation: Some(conversation),
    })
}

#[tracing::instrument(skip_all)]
pub async fn archive(
    pool: &PgPool,
    request: pb::ArchiveConversationRequest,
) -> ApiResult<pb::ArchiveConversationResponse> {
    let id = parse_uuid("conversation_id", &request.conversation_id)?;
    let conversation = change_status(
        pool,
        id,
        "UPDATE conversations SET status = 'archived', end_time = COALESCE(end_time, now())
         WHERE id = $1 AND status <> 'archived' RETURNING *",
        |_| Ok(()),
    )
    .await?;
    Ok(pb::ArchiveConversationResponse {
        conversation: Some(conversation),
    })
}

/// Runs a status `update` (which returns no row when the move does not apply);
/// when it changed nothing, `unchanged` decides between "already there" (Ok:
/// the conversation is returned as it is) and a refusal.
async fn change_status(
    pool: &PgPool,
    id: Uuid,
    update: &'static str,
    unchanged: impl FnOnce(&ConversationRow) -> ApiResult<()>,
) -> ApiResult<pb::Conversation> {
    let mut tx = pool.begin().await?;
    let changed: Option<ConversationRow> = sqlx::query_as(update)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let conversation = match changed {
        Some(row) => {
            events::emit(
                &mut tx,
                events::conversation_event(pb::EventType::ConversationUpdated, &row),
            )
            .await?;
            row.into_proto()
        }
        None => {
            let current = find(&mut tx, id).await?;
            unchanged(&current)?;
            current.into_proto()
        }
    };
    tx.commit().await?;
    Ok(conversation)
}

const SUMMARY_FIELDS: &[&str] = &["context_summary", "mood_summary", "topics", "metadata"];
const MAX_SUMMARY_CHARS: usize = 20_000;
const MAX_TOPICS: usize = 50;

#[tracing::instrument(skip_all)]
pub async fn update_summary(
    pool: &PgPool,
    request: pb::UpdateConversationSummaryRequest,
) -> ApiResult<pb::UpdateConversationSummaryResponse> {
    let mut violations = Violations::default();
    let id = violations.check(parse_uuid("conversation_id", &request.conversation_id));
    let paths = violations
        .merge(field_mask::paths(
            request.update_mask.as_ref(),
            SUMMARY_FIELDS,
        ))
        .unwrap_or_default();
    let fields = request.conversation.unwrap_or_default();
    let wants = |field: &str| paths.iter().any(|p| p == field);
    if wants("context_summary") {
        violations.check(wire::text(
            "conversation.context_summary",
            &fields.context_summary,
            MAX_SUMMARY_CHARS,
        ));
    }
    if wants("mood_summary") {
        violations.check(wire::text(
            "conversation.mood_summary",
            &fields.mood_summary,
            MAX_SUMMARY_CHARS,
        ));
    }
    if wants("topics") {
        if fields.topics.len() > MAX_TOPICS {
            violations.push(
                "conversation.topics",
                format!("must have at most {MAX_TOPICS} topics"),
            );
        }
        for (i, topic) in fields.topics.iter().enumerate() {
            violations.check(wire::required_text(
                &format!("conversation.topics[{i}]"),
                topic,
                100,
            ));
        }
    }
    let metadata = if wants("metadata") {
        violations.check(wire::json_object(
            "conversation.metadata",
            fields.metadata.as_ref(),
        ))
    } else {
        None
    };
    violations.into_result()?;
    let id = id.expect("validated");
    let metadata = metadata.unwrap_or_default();

    let mut tx = pool.begin().await?;
    let row: Option<ConversationRow> = sqlx::query_as(
        "UPDATE conversations SET
            context_summary = CASE WHEN $2 THEN $3 ELSE context_summary END,
            mood_summary = CASE WHEN $4 THEN $5 ELSE mood_summary END,
            topics = CASE WHEN $6 THEN $7 ELSE topics END,
            metadata = CASE WHEN $8 THEN $9 ELSE metadata END
         WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(wants("context_summary"))
    .bind(&fields.context_summary)
    .bind(wants("mood_summary"))
    .bind(&fields.mood_summary)
    .bind(wants("topics"))
    .bind(&fields.topics)
    .bind(wants("metadata"))
    .bind(&metadata)
    .fetch_optional(&mut *tx)
    .await?;
    let row = row.ok_or_else(|| ApiError::not_found(format!("no conversation with id {id}")))?;
    events::emit(
        &mut tx,
        events::conversation_event(pb::EventType::ConversationUpdated, &row),
    )
    .await?;
    let conversation = row.into_proto();
    tx.commit().await?;
    Ok(pb::UpdateConversationSummaryResponse {
        conversation: Some(conversation),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation(last: DateTime<Utc>) -> ConversationRow {
        ConversationRow {
            id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            channel: "whatsapp".into(),
            status: "active".into(),
            start_time: last,
            end_time: None,
            message_count: 0,
            last_message_time: Some(last),
            context_summary: String::new(),
            mood_summary: String::new(),
            topics: vec![],
            provider_conversation_id: None,
            metadata: serde_json::json!({}),
            update_time: last,
        }
    }

    #[test]
    fn daily_scope_ends_at_the_users_midnight_not_utcs() {
        let bogota: Tz = "America/Bogota".parse().unwrap();
        let policy = ReusePolicy {
            idle_gap: Duration::from_secs(6 * 3600),
            daily_in: Some(bogota),
        };
        // 23:30 and 00:10 in Bogota (UTC-5): a new local day, 40 minutes apart.
        let last = "2026-03-02T04:30:00Z".parse().unwrap();
        let now = "2026-03-02T05:10:00Z".parse().unwrap();
        assert!(policy.is_stale(&conversation(last), now));
        // 18:00 and 20:00 in Bogota: the UTC day changed, the local one did not.
        let last = "2026-03-02T23:00:00Z".parse().unwrap();
        let now = "2026-03-03T01:00:00Z".parse().unwrap();
        assert!(!policy.is_stale(&conversation(last), now));
    }

    #[test]
    fn idle_gap_is_bounded() {
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert!(idle_gap(Some(&d(0, 0)), Duration::ZERO).is_err());
        assert!(idle_gap(Some(&d(-5, 0)), Duration::ZERO).is_err());
        assert!(idle_gap(Some(&d(1, -1)), Duration::ZERO).is_err());
        assert_eq!(
            idle_gap(Some(&d(60, 0)), Duration::ZERO).unwrap(),
            Duration::from_secs(60)
        );
        assert_eq!(
            idle_gap(None, Duration::from_secs(7)).unwrap(),
            Duration::from_secs(7)
        );
    }
}
