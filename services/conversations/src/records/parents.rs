//! The conversation and message a record points at. Each must exist
//! (NOT_FOUND) and belong with the rest of the record: one user's record never
//! names another user's conversation or message (INVALID_ARGUMENT naming the
//! field), or erasing one user would leave half of it behind.

use mesh_runtime::{ApiError, ApiResult};
use sqlx::PgExecutor;
use uuid::Uuid;

/// The user a conversation belongs to.
pub(crate) async fn conversation_user(db: impl PgExecutor<'_>, id: Uuid) -> ApiResult<Uuid> {
    sqlx::query_scalar("SELECT user_id FROM conversations WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no conversation with id {id}")))
}

/// `id`, named by `field`, is a conversation of `user`.
pub(crate) async fn conversation(
    db: impl PgExecutor<'_>,
    field: &str,
    id: Uuid,
    user: Uuid,
) -> ApiResult<()> {
    if conversation_user(db, id).await? != user {
        return Err(ApiError::invalid(field, "is another user's conversation"));
    }
    Ok(())
}

/// `id`, named by `field`, is a message of `user`, and of `conversation` when given.
pub(crate) async fn message(
    db: impl PgExecutor<'_>,
    field: &str,
    id: Uuid,
    user: Uuid,
    conversation: Option<Uuid>,
) -> ApiResult<()> {
    let (owner, in_conversation): (Uuid, Uuid) =
        sqlx::query_as("SELECT user_id, conversation_id FROM messages WHERE id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no message with id {id}")))?;
    if owner != user {
        return Err(ApiError::invalid(field, "is another user's message"));
    }
    if let Some(conversation) = conversation.filter(|c| *c != in_conversation) {
        return Err(ApiError::invalid(
            field,
            format!("is not a message of conversation {conversation}"),
        ));
    }
    Ok(())
}

/// A foreign key refused an insert: the conversation or message it names was
/// deleted after the checks above found it.
pub(crate) fn gone(error: sqlx::Error) -> ApiError {
    ApiError::from(error).or_missing(|| "the conversation or message no longer exists".into())
}
