//! Taps on interactive content: CTA buttons, reply buttons, list rows,
//! completed flows, answers to call prompts.

use chrono::{DateTime, Utc};
use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, Violations,
    convert::{json_to_struct, parse_uuid, timestamp},
    idempotency,
};
use sqlx::PgPool;
use uuid::Uuid;

use super::{list_page, parents};
use crate::wire;

#[derive(sqlx::FromRow)]
struct InteractionRow {
    id: Uuid,
    user_id: Uuid,
    conversation_id: Option<Uuid>,
    message_id: Option<Uuid>,
    r#type: String,
    target: String,
    payload: serde_json::Value,
    create_time: DateTime<Utc>,
}

impl From<InteractionRow> for pb::Interaction {
    fn from(row: InteractionRow) -> Self {
        Self {
            id: row.id.to_string(),
            user_id: row.user_id.to_string(),
            conversation_id: row
                .conversation_id
                .map(|c| c.to_string())
                .unwrap_or_default(),
            message_id: row.message_id.map(|m| m.to_string()).unwrap_or_default(),
            r#type: wire::interaction_type::parse(&row.r#type) as i32,
            target: row.target,
            payload: Some(json_to_struct(&row.payload)),
            create_time: Some(timestamp(row.create_time)),
        }
    }
}

/// A CTA URL can be long; button and row ids are short.
const MAX_TARGET: usize = 2048;

#[tracing::instrument(skip_all)]
pub async fn record_interaction(
    pool: &PgPool,
    request: pb::RecordInteractionRequest,
) -> ApiResult<pb::RecordInteractionResponse> {
    let Some(interaction) = &request.interaction else {
        return Err(ApiError::invalid("interaction", "is required"));
    };
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("interaction.user_id", &interaction.user_id));
    let conversation = violations.check(wire::optional_uuid(
        "interaction.conversation_id",
        &interaction.conversation_id,
    ));
    let message = violations.check(wire::optional_uuid(
        "interaction.message_id",
        &interaction.message_id,
    ));
    let kind = violations.check(wire::interaction_type::require(
        "interaction.type",
        interaction.r#type,
    ));
    violations.check(wire::text(
        "interaction.target",
        &interaction.target,
        MAX_TARGET,
    ));
    let payload = violations.check(wire::json_object(
        "interaction.payload",
        interaction.payload.as_ref(),
    ));
    violations.check(idempotency::check_request_id(&request.request_id));
    violations.into_result()?;
    let (user, conversation, message, payload) = (
        user.expect("validated"),
        conversation.expect("validated"),
        message.expect("validated"),
        payload.expect("validated"),
    );

    let key = idempotency::Key {
        operation: "RecordInteraction",
        request_id: &request.request_id,
        user_id: Some(user),
    };
    idempotency::run_once(pool, key, &request, async |conn| {
        if let Some(conversation) = conversation {
            parents::conversation(&mut *conn, "interaction.conversation_id", conversation, user).await?;
        }
        if let Some(message) = message {
            parents::message(&mut *conn, "interaction.message_id", message, user, conversation).await?;
        }
        let row: InteractionRow = sqlx::query_as(
            "INSERT INTO interactions (id, user_id, conversation_id, message_id, type, target, payload)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
        )
        .bind(Uuid::now_v7())
        .bind(user)
        .bind(conversation)
        .bind(message)
        .bind(kind)
        .bind(&interaction.target)
        .bind(&payload)
        .fetch_one(&mut *conn)
        .await
        .map_err(parents::gone)?;
        Ok(pb::RecordInteractionResponse {
            interaction: Some(row.into()),
        })
    })
    .await
}

#[tracing::instrument(skip_all)]
pub async fn list_interactions(
    pool: &PgPool,
    request: pb::ListInteractionsRequest,
) -> ApiResult<pb::ListInteractionsResponse> {
    let (_, interactions, next_page_token) = list_page(
        pool,
        "interactions",
        "user_id",
        &request.user_id,
        request.page_size,
        &request.page_token,
        |r: &InteractionRow| r.id,
    )
    .await?;
    Ok(pb::ListInteractionsResponse {
        interactions,
        next_page_token,
    })
}
