//! Erasing one user from this context (GDPR / HIPAA): every row about them,
//! counted by table, in one transaction.

use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{
    ApiResult, Violations,
    convert::parse_uuid,
    idempotency::{self, Key},
    purge,
};
use sqlx::PgPool;

/// Tables holding a `user_id`, in the order they are emptied: what hangs
/// off messages and conversations first (each count is what that table
/// lost, not what cascaded), then messages and conversations, then what
/// concurrent writers may still have added while the purge waited for them
/// (windows, events).
const USER_TABLES: &[&str] = &[
    "message_feedback",
    "interactions",
    "user_locations",
    "call_logs",
    "flow_sessions",
    "messages",
    "conversations",
    "webhook_failures",
    "messaging_windows",
    "events",
];

#[tracing::instrument(skip_all)]
pub async fn purge_user(
    pool: &PgPool,
    request: pb::PurgeUserRequest,
) -> ApiResult<pb::PurgeUserResponse> {
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    if !request.phone.is_empty() && !mesh_runtime::validate::is_e164(&request.phone) {
        violations.push("phone", "must be E.164, such as +573001234567");
    }
    violations.check(idempotency::check_request_id(&request.request_id));
    violations.into_result()?;
    let user = user.expect("validated");
    let key = Key {
        operation: purge::OPERATION,
        request_id: &request.request_id,
        user_id: Some(user),
    };
    idempotency::run_once(pool, key, &request, async |conn| {
        // Writers lock a conversation before anything else of it: taking the
        // user's conversations first keeps the same order (no deadlock) and
        // holds off appends until the purge commits.
        sqlx::query("SELECT id FROM conversations WHERE user_id = $1 ORDER BY id FOR UPDATE")
            .bind(user)
            .execute(&mut *conn)
            .await?;
        let mut deleted = std::collections::HashMap::new();
        // Executions hang off conversations, not users: count them before the cascade.
        for table in ["tool_executions", "agent_executions"] {
            let n = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE conversation_id IN (SELECT id FROM conversations WHERE user_id = $1)"
            )))
            .bind(user)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            deleted.insert(table.to_owned(), n as i64);
        }
        purge::delete_user_rows(conn, user, USER_TABLES, &mut deleted).await?;
        if !request.phone.is_empty() {
            let n = sqlx::query("DELETE FROM webhook_failures WHERE phone = $1")
                .bind(&request.phone)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            *deleted.entry("webhook_failures".to_owned()).or_default() += n as i64;
        }
        purge::forget_answers(conn, user, &mut deleted).await?;
        Ok(pb::PurgeUserResponse { deleted })
    })
    .await
}
