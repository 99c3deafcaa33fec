//! Messages: appended to an active conversation under its row lock (gapless
//! sequence numbers), deduplicated on the provider's message id, read back
//! page by page or shaped as a prompt history.

use chrono::{DateTime, Utc};
use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, Violations,
    convert::{from_timestamp, json_to_struct, optional_timestamp, parse_uuid, timestamp},
    pagination,
};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{conversations, events, records, windows, wire};

/// A stored message; the feedback columns come from a join where one is made.
#[derive(sqlx::FromRow, Clone, Debug)]
pub struct MessageRow {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub user_id: Uuid,
    pub channel: String,
    pub sequence_number: i64,
    pub direction: String,
    pub role: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub content: String,
    pub media_url: Option<String>,
    pub media_provider_id: Option<String>,
    pub media_mime_type: Option<String>,
    pub media_sha256: Option<String>,
    pub media_caption: Option<String>,
    pub provider_message_id: Option<String>,
    pub reply_to_message_id: Option<Uuid>,
    pub reply_to_provider_message_id: Option<String>,
    pub metadata: serde_json::Value,
    pub provider_time: Option<DateTime<Utc>>,
    pub create_time: DateTime<Utc>,
    pub delivery_status: Option<String>,
    pub sent_time: Option<DateTime<Utc>>,
    pub delivered_time: Option<DateTime<Utc>>,
    pub read_time: Option<DateTime<Utc>>,
    pub played_time: Option<DateTime<Utc>>,
    pub failed_time: Option<DateTime<Utc>>,
    pub error_code: Option<String>,
    pub error_title: Option<String>,
    pub error_message: Option<String>,
    pub proactive: bool,
    /// The encoded request a send came with; loaded only to check a replay
    /// (every other query selects [`MESSAGE_COLUMNS`]).
    #[sqlx(default)]
    pub send_request: Option<Vec<u8>>,
    pub send_retryable: bool,
    #[sqlx(default)]
    pub feedback_rating: Option<i32>,
    #[sqlx(default)]
    pub feedback_comment: Option<String>,
    #[sqlx(default)]
    pub feedback_time: Option<DateTime<Utc>>,
}

/// [`MESSAGE_COLUMNS`] as a literal, for `concat!`.
macro_rules! message_columns {
    () => {
        "id, conversation_id, user_id, channel, sequence_number, direction, role, type, content,
         media_url, media_provider_id, media_mime_type, media_sha256, media_caption,
         provider_message_id, reply_to_message_id, reply_to_provider_message_id, metadata,
         provider_time, create_time, delivery_status, sent_time, delivered_time, read_time,
         played_time, failed_time, error_code, error_title, error_message, proactive,
         send_retryable"
    };
}

/// Every column of `messages` a [`MessageRow`] reads but `send_request` (up
/// to ~130 KiB, read only to check a replay).
pub const MESSAGE_COLUMNS: &str = message_columns!();

/// Selects messages with their feedback; append a WHERE clause on `m`. The
/// feedback columns come renamed from a subquery, so that no column of
/// `messages` needs its table's name.
const SELECT_WITH_FEEDBACK: &str = concat!(
    "SELECT ",
    message_columns!(),
    ", feedback_rating, feedback_comment, feedback_time
     FROM messages m LEFT JOIN (
         SELECT message_id, rating AS feedback_rating, comment AS feedback_comment,
             update_time AS feedback_time
         FROM message_feedback) f ON f.message_id = m.id"
);

impl MessageRow {
    pub fn into_proto(self) -> pb::Message {
        let has_media = self.media_url.is_some() || self.media_provider_id.is_some();
        pb::Message {
            id: self.id.to_string(),
            conversation_id: self.conversation_id.to_string(),
            user_id: self.user_id.to_string(),
            channel: wire::channel::parse(&self.channel) as i32,
            sequence_number: self.sequence_number,
            direction: wire::direction::parse(&self.direction) as i32,
            role: wire::role::parse(&self.role) as i32,
            r#type: wire::message_type::parse(&self.kind) as i32,
            content: self.content,
            media: has_media.then(|| pb::Media {
                url: self.media_url.unwrap_or_default(),
                provider_media_id: self.media_provider_id.unwrap_or_default(),
                mime_type: self.media_mime_type.unwrap_or_default(),
                sha256: self.media_sha256.unwrap_or_default(),
                caption: self.media_caption.unwrap_or_default(),
            }),
            provider_message_id: self.provider_message_id.unwrap_or_default(),
            reply_to_message_id: self
                .reply_to_message_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            reply_to_provider_message_id: self.reply_to_provider_message_id.unwrap_or_default(),
            metadata: Some(json_to_struct(&self.metadata)),
            provider_time: optional_timestamp(self.provider_time),
            create_time: Some(timestamp(self.create_time)),
            delivery_status: self.delivery_status.as_deref().map_or(
                pb::DeliveryStatus::Unspecified,
                wire::delivery_status::parse,
            ) as i32,
            sent_time: optional_timestamp(self.sent_time),
            delivered_time: optional_timestamp(self.delivered_time),
            read_time: optional_timestamp(self.read_time),
            played_time: optional_timestamp(self.played_time),
            failed_time: optional_timestamp(self.failed_time),
            error_code: self.error_code.unwrap_or_default(),
            error_title: self.error_title.unwrap_or_default(),
            proactive: self.proactive,
            feedback: self.feedback_rating.map(|rating| pb::MessageFeedback {
                rating,
                comment: self.feedback_comment.unwrap_or_default(),
                update_time: optional_timestamp(self.feedback_time),
            }),
        }
    }
}

/// A message to append; the conversation gives user, channel and sequence.
#[derive(Debug, Default)]
pub struct NewMessage {
    pub direction: &'static str,
    pub role: &'static str,
    pub kind: &'static str,
    pub content: String,
    pub media: Option<pb::Media>,
    pub provider_message_id: Option<String>,
    pub reply_to_message_id: Option<Uuid>,
    pub reply_to_provider_message_id: Option<String>,
    pub metadata: serde_json::Value,
    pub provider_time: Option<DateTime<Utc>>,
    /// Outbound only.
    pub delivery_status: Option<&'static str>,
    pub proactive: bool,
    pub send_request_id: Option<String>,
    pub send_request: Option<Vec<u8>>,
}

/// Inserts `message` as number `sequence_number` of `conversation`; the
/// caller holds the conversation's lock ([`conversations::lock_for_append`]).
/// Returns the raw sqlx error so callers can tell a duplicate provider id
/// ([`violates`] `messages_provider_id`) from other failures.
pub async fn insert(
    conn: &mut PgConnection,
    conversation: &conversations::ConversationRow,
    sequence_number: i64,
    message: &NewMessage,
) -> Result<MessageRow, sqlx::Error> {
    let no_media = pb::Media::default();
    let media = message.media.as_ref().unwrap_or(&no_media);
    let reply_to = match (
        message.reply_to_message_id,
        &message.reply_to_provider_message_id,
    ) {
        (Some(id), _) => Some(id),
        (None, Some(provider_id)) => {
            // Only the user's own messages: a provider id names no one else's.
            sqlx::query_scalar(
                "SELECT id FROM messages
                 WHERE channel = $1 AND provider_message_id = $2 AND user_id = $3",
            )
            .bind(&conversation.channel)
            .bind(provider_id)
            .bind(conversation.user_id)
            .fetch_optional(&mut *conn)
            .await?
        }
        (None, None) => None,
    };
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO messages (id, conversation_id, user_id, channel, sequence_number, direction,
            role, type, content, media_url, media_provider_id, media_mime_type, media_sha256,
            media_caption, provider_message_id, reply_to_message_id, reply_to_provider_message_id,
            metadata, provider_time, delivery_status, proactive, send_request_id, send_request)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
            $19, $20, $21, $22, $23)
         RETURNING {MESSAGE_COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(conversation.id)
    .bind(conversation.user_id)
    .bind(&conversation.channel)
    .bind(sequence_number)
    .bind(message.direction)
    .bind(message.role)
    .bind(message.kind)
    .bind(&message.content)
    .bind(wire::non_empty(&media.url))
    .bind(wire::non_empty(&media.provider_media_id))
    .bind(wire::non_empty(&media.mime_type))
    .bind(wire::non_empty(&media.sha256))
    .bind(wire::non_empty(&media.caption))
    .bind(&message.provider_message_id)
    .bind(reply_to)
    .bind(&message.reply_to_provider_message_id)
    .bind(&message.metadata)
    .bind(message.provider_time)
    .bind(message.delivery_status)
    .bind(message.proactive)
    .bind(&message.send_request_id)
    .bind(&message.send_request)
    .fetch_one(conn)
    .await
}

/// The statement failed on `constraint`: an insert lost to another with the
/// same value of a unique key.
pub fn violates(error: &sqlx::Error, constraint: &str) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.constraint())
        .is_some_and(|name| name == constraint)
}

async fn find_by_provider_id(
    pool: &PgPool,
    conversation_id: Uuid,
    provider_message_id: &str,
) -> ApiResult<Option<MessageRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE provider_message_id = $2
           AND channel = (SELECT channel FROM conversations WHERE id = $1)"
    )))
    .bind(conversation_id)
    .bind(provider_message_id)
    .fetch_optional(pool)
    .await?)
}

const MAX_CONTENT_CHARS: usize = 65_536;
const MAX_ID_CHARS: usize = 256;

/// The checked fields of an inbound message, or every violation at once.
fn inbound_message(message: Option<pb::Message>) -> Result<NewMessage, Violations> {
    let Some(message) = message else {
        return Err(Violations::default().add("message", "is required"));
    };
    let mut violations = Violations::default();
    let kind = if message.r#type == 0 {
        Some("text")
    } else {
        violations.check(wire::message_type::require("message.type", message.r#type))
    };
    let role = match pb::MessageRole::try_from(message.role) {
        Ok(pb::MessageRole::Unspecified | pb::MessageRole::User) => "user",
        Ok(pb::MessageRole::System) => "system",
        _ => {
            violations.push(
                "message.role",
                "inbound messages are MESSAGE_ROLE_USER or _SYSTEM",
            );
            "user"
        }
    };
    if !matches!(message.direction, 0 | 1) {
        violations.push(
            "message.direction",
            "must be MESSAGE_DIRECTION_INBOUND (or unset)",
        );
    }
    violations.check(wire::text(
        "message.content",
        &message.content,
        MAX_CONTENT_CHARS,
    ));
    let has_media = message
        .media
        .as_ref()
        .is_some_and(|m| !m.url.is_empty() || !m.provider_media_id.is_empty());
    if let Some(media) = &message.media {
        if !has_media {
            // Its mime type or caption alone could not be read back as media.
            violations.push("message.media", "needs a url or a provider_media_id");
        }
        violations.merge(check_media(media));
    }
    let has_metadata = message
        .metadata
        .as_ref()
        .is_some_and(|m| !m.fields.is_empty());
    if message.content.is_empty()
        && let Some(needs) = content_rule(kind, has_media, has_metadata)
    {
        violations.push("message.content", needs);
    }
    violations.check(wire::text(
        "message.provider_message_id",
        &message.provider_message_id,
        MAX_ID_CHARS,
    ));
    let reply_to = violations.check(wire::optional_uuid(
        "message.reply_to_message_id",
        &message.reply_to_message_id,
    ));
    violations.check(wire::text(
        "message.reply_to_provider_message_id",
        &message.reply_to_provider_message_id,
        MAX_ID_CHARS,
    ));
    let metadata = violations.check(wire::json_object(
        "message.metadata",
        message.metadata.as_ref(),
    ));
    let provider_time = match &message.provider_time {
        Some(t) => violations.check(from_timestamp("message.provider_time", t)),
        None => None,
    };
    if !violations.is_empty() {
        return Err(violations);
    }
    Ok(NewMessage {
        direction: "inbound",
        role,
        kind: kind.expect("validated"),
        content: message.content,
        media: message.media,
        provider_message_id: wire::non_empty(&message.provider_message_id).map(str::to_owned),
        reply_to_message_id: reply_to.expect("validated"),
        reply_to_provider_message_id: wire::non_empty(&message.reply_to_provider_message_id)
            .map(str::to_owned),
        metadata: metadata.expect("validated"),
        provider_time,
        ..Default::default()
    })
}

/// What a message of `kind` (None: a type that is not one) without content
/// lacks, if anything. Text needs its text; a media type needs media when it
/// has no caption; every other type (a location, contacts, a removed
/// reaction, an order, a system notice, a type the provider added since) may
/// carry its substance in `metadata` alone.
fn content_rule(kind: Option<&str>, has_media: bool, has_metadata: bool) -> Option<String> {
    match kind {
        Some("text") => Some("a MESSAGE_TYPE_TEXT message needs content".into()),
        Some(media @ ("image" | "audio" | "video" | "document" | "sticker")) => {
            (!has_media).then(|| {
                format!(
                    "a MESSAGE_TYPE_{} message needs content or media (url or provider_media_id)",
                    media.to_uppercase()
                )
            })
        }
        other => (!has_media && !has_metadata).then(|| {
            let kind = other.map_or_else(
                || "message".to_owned(),
                |k| format!("MESSAGE_TYPE_{} message", k.to_uppercase()),
            );
            format!(
                "a {kind} needs content, media (url or provider_media_id) or a non-empty metadata object"
            )
        }),
    }
}

fn check_media(media: &pb::Media) -> Result<(), Violations> {
    let mut violations = Violations::default();
    let is_web_url = media.url.starts_with("https://") || media.url.starts_with("http://");
    if !media.url.is_empty() && !is_web_url {
        violations.push("message.media.url", "must be an http(s) URL");
    }
    violations.check(wire::text("message.media.url", &media.url, 2048));
    violations.check(wire::text(
        "message.media.provider_media_id",
        &media.provider_media_id,
        MAX_ID_CHARS,
    ));
    violations.check(wire::text("message.media.mime_type", &media.mime_type, 255));
    violations.check(wire::text("message.media.sha256", &media.sha256, 128));
    violations.check(wire::text("message.media.caption", &media.caption, 4096));
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations)
    }
}

fn referral(referral: Option<&pb::Referral>) -> Result<Option<serde_json::Value>, Violations> {
    let Some(r) = referral else { return Ok(None) };
    let mut violations = Violations::default();
    for (field, value) in [
        ("referral.source_url", &r.source_url),
        ("referral.source_id", &r.source_id),
        ("referral.source_type", &r.source_type),
        ("referral.headline", &r.headline),
        ("referral.ctwa_clid", &r.ctwa_clid),
    ] {
        violations.check(wire::text(field, value, 2048));
    }
    if !violations.is_empty() {
        return Err(violations);
    }
    Ok(Some(serde_json::json!({
        "source_url": r.source_url, "source_id": r.source_id, "source_type": r.source_type,
        "headline": r.headline, "ctwa_clid": r.ctwa_clid,
    })))
}

#[tracing::instrument(skip_all)]
pub async fn record_inbound(
    pool: &PgPool,
    request: pb::RecordInboundMessageRequest,
) -> ApiResult<pb::RecordInboundMessageResponse> {
    let mut violations = Violations::default();
    let conversation_id = violations.check(parse_uuid("conversation_id", &request.conversation_id));
    let referral = violations.merge(referral(request.referral.as_ref()));
    let message = violations.merge(inbound_message(request.message));
    violations.into_result()?;
    let (conversation_id, message, referral) = (
        conversation_id.expect("validated"),
        message.expect("validated"),
        referral.expect("validated"),
    );

    // A provider's retry is the common duplicate: answer it without locking.
    if let Some(provider_id) = &message.provider_message_id
        && let Some(stored) = find_by_provider_id(pool, conversation_id, provider_id).await?
    {
        return Ok(duplicate(stored));
    }
    let mut tx = pool.begin().await?;
    let conversation = conversations::lock_for_append(&mut tx, conversation_id).await?;
    if let Some(reply_to) = message.reply_to_message_id {
        message_of_user(
            &mut tx,
            reply_to,
            conversation.user_id,
            "message.reply_to_message_id",
        )
        .await?;
    }
    let stored = match insert(&mut tx, &conversation, conversation.message_count, &message).await {
        Ok(stored) => stored,
        Err(error) if violates(&error, "messages_provider_id") => {
            // A concurrent twin committed first: give back the sequence
            // number, answer with the twin.
            tx.rollback().await?;
            let provider_id = message.provider_message_id.as_deref().unwrap_or_default();
            let stored = find_by_provider_id(pool, conversation_id, provider_id)
                .await?
                .ok_or_else(|| {
                    ApiError::Unavailable("a concurrent duplicate vanished; retry".into())
                })?;
            return Ok(duplicate(stored));
        }
        Err(error) => return Err(error.into()),
    };
    if conversation.channel == "whatsapp" && stored.role == "user" {
        let sent_at = stored
            .provider_time
            .map_or(stored.create_time, |t| t.min(stored.create_time));
        windows::note_inbound(&mut tx, conversation.user_id, sent_at, referral).await?;
    }
    events::emit(
        &mut tx,
        events::message_event(pb::EventType::MessageReceived, &stored),
    )
    .await?;
    let message = stored.into_proto();
    tx.commit().await?;
    Ok(pb::RecordInboundMessageResponse {
        message: Some(message),
        duplicate: false,
    })
}

fn duplicate(stored: MessageRow) -> pb::RecordInboundMessageResponse {
    pb::RecordInboundMessageResponse {
        message: Some(stored.into_proto()),
        duplicate: true,
    }
}

/// The channel and provider id of `message`, which must be one of `user`'s
/// (NOT_FOUND, naming `field`, otherwise).
pub async fn message_of_user(
    conn: &mut PgConnection,
    message: Uuid,
    user: Uuid,
    field: &str,
) -> ApiResult<(String, Option<String>)> {
    sqlx::query_as(
        "SELECT channel, provider_message_id FROM messages WHERE id = $1 AND user_id = $2",
    )
    .bind(message)
    .bind(user)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| {
        ApiError::not_found(format!(
            "{field}: the user has no message with id {message}"
        ))
    })
}

#[tracing::instrument(skip_all)]
pub async fn get(
    pool: &PgPool,
    request: pb::GetMessageRequest,
) -> ApiResult<pb::GetMessageResponse> {
    let id = parse_uuid("message_id", &request.message_id)?;
    let row: Option<MessageRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT_WITH_FEEDBACK} WHERE m.id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let row = row.ok_or_else(|| ApiError::not_found(format!("no message with id {id}")))?;
    Ok(pb::GetMessageResponse {
        message: Some(row.into_proto()),
    })
}

#[tracing::instrument(skip_all)]
pub async fn list(
    pool: &PgPool,
    request: pb::ListMessagesRequest,
) -> ApiResult<pb::ListMessagesResponse> {
    let mut violations = Violations::default();
    let conversation_id = violations.check(parse_uuid("conversation_id", &request.conversation_id));
    let page =
        pagination::Page::<i64>::check(&mut violations, request.page_size, &request.page_token);
    violations.into_result()?;
    let (conversation_id, page) = (
        conversation_id.expect("validated"),
        page.expect("validated"),
    );
    let order = if request.descending {
        "AND ($2::bigint IS NULL OR m.sequence_number < $2) ORDER BY m.sequence_number DESC"
    } else {
        "AND ($2::bigint IS NULL OR m.sequence_number > $2) ORDER BY m.sequence_number"
    };
    let mut rows: Vec<MessageRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT_WITH_FEEDBACK} WHERE m.conversation_id = $1 {order} LIMIT $3"
    )))
    .bind(conversation_id)
    .bind(page.after)
    .bind(page.size + 1)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        // Tell "no messages (here)" from "no such conversation".
        records::parents::conversation_user(pool, conversation_id).await?;
    }
    let next_page_token =
        pagination::next_page(&mut rows, page.size, |m| m.sequence_number.to_string());
    Ok(pb::ListMessagesResponse {
        messages: rows.into_iter().map(MessageRow::into_proto).collect(),
        next_page_token,
    })
}

const MAX_HISTORY: i64 = 1000;

#[tracing::instrument(skip_all)]
pub async fn history(
    pool: &PgPool,
    request: pb::GetHistoryRequest,
) -> ApiResult<pb::GetHistoryResponse> {
    let mut violations = Violations::default();
    let conversation_id = violations.check(parse_uuid("conversation_id", &request.conversation_id));
    let since = match (&request.since, request.last_n) {
        (Some(_), n) if n != 0 => {
            violations.push("last_n", "give either last_n or since, not both");
            None
        }
        (Some(since), _) => violations.check(from_timestamp("since", since)),
        (None, n) if !(1..=MAX_HISTORY as i32).contains(&n) => {
            violations.push(
                "last_n",
                format!("must be 1 to {MAX_HISTORY} (or give since)"),
            );
            None
        }
        (None, _) => None,
    };
    violations.into_result()?;
    let conversation_id = conversation_id.expect("validated");
    let limit = if since.is_some() {
        MAX_HISTORY
    } else {
        i64::from(request.last_n)
    };

    let mut conn = pool.acquire().await?;
    let conversation = conversations::find(&mut conn, conversation_id).await?;
    // The newest `limit` that qualify, then oldest first. A failed outbound
    // message never reached the user, so it is not part of what was said.
    let mut rows: Vec<MessageRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages
         WHERE conversation_id = $1 AND ($2::timestamptz IS NULL OR create_time >= $2)
           AND delivery_status IS DISTINCT FROM 'failed'
         ORDER BY sequence_number DESC LIMIT $3"
    )))
    .bind(conversation_id)
    .bind(since)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.reverse();
    Ok(pb::GetHistoryResponse {
        turns: rows.into_iter().map(turn).collect(),
        conversation: Some(conversation.into_proto()),
    })
}

/// One prompt turn: the text, or the caption, or a note of what was sent.
fn turn(row: MessageRow) -> pb::HistoryTurn {
    let content = if !row.content.is_empty() {
        row.content
    } else if let Some(caption) = row.media_caption.filter(|c| !c.is_empty()) {
        format!("[{}] {caption}", row.kind)
    } else {
        format!("[{}]", row.kind)
    };
    pb::HistoryTurn {
        role: wire::role::parse(&row.role) as i32,
        content,
        time: Some(timestamp(row.create_time)),
        sequence_number: row.sequence_number,
        message_id: row.id.to_string(),
    }
}

#[tracing::instrument(skip_all)]
pub async fn set_feedback(
    pool: &PgPool,
    request: pb::SetMessageFeedbackRequest,
) -> ApiResult<pb::SetMessageFeedbackResponse> {
    let mut violations = Violations::default();
    let message_id = violations.check(parse_uuid("message_id", &request.message_id));
    let feedback = request.feedback.unwrap_or_default();
    if !(1..=5).contains(&feedback.rating) {
        violations.push("feedback.rating", "must be 1 to 5");
    }
    violations.check(wire::text("feedback.comment", &feedback.comment, 4000));
    violations.into_result()?;
    let message_id = message_id.expect("validated");
    let stored: Option<(i32, String, DateTime<Utc>)> = sqlx::query_as(
        "INSERT INTO message_feedback (message_id, user_id, rating, comment)
         SELECT id, user_id, $2, $3 FROM messages WHERE id = $1
         ON CONFLICT (message_id) DO UPDATE
            SET rating = EXCLUDED.rating, comment = EXCLUDED.comment, update_time = now()
         RETURNING rating, comment, update_time",
    )
    .bind(message_id)
    .bind(feedback.rating)
    .bind(&feedback.comment)
    .fetch_optional(pool)
    .await?;
    let (rating, comment, update_time) =
        stored.ok_or_else(|| ApiError::not_found(format!("no message with id {message_id}")))?;
    Ok(pb::SetMessageFeedbackResponse {
        feedback: Some(pb::MessageFeedback {
            rating,
            comment,
            update_time: Some(timestamp(update_time)),
        }),
    })
}
