//! Erasing one user from this context (GDPR / HIPAA): every row about them,
//! counted by table, in one transaction.

use std::collections::HashMap;

use mesh_proto::mesh::memory::v1 as pb;
use mesh_runtime::{
    ApiResult, Violations,
    convert::parse_uuid,
    idempotency::{self, Key},
};

use crate::State;

/// Tables holding a `user_id`, emptied in this order: chunks before their
/// documents, so each count is what that table lost rather than what cascaded.
const USER_TABLES: &[&str] = &["memories", "chunks", "documents", "extractions"];

const OPERATION: &str = "PurgeUser";

#[tracing::instrument(skip_all)]
pub async fn purge_user(
    state: &State,
    request: pb::PurgeUserRequest,
) -> ApiResult<pb::PurgeUserResponse> {
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    violations.check(idempotency::check_request_id(&request.request_id));
    violations.into_result()?;
    let user = user.expect("checked");
    let key = Key {
        operation: OPERATION,
        request_id: &request.request_id,
        user_id: Some(user),
    };
    idempotency::run_once(&state.pool, key, &request, async |conn| {
        let mut deleted = HashMap::new();
        for table in USER_TABLES {
            // The names are the constants above, not input.
            let n = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE user_id = $1"
            )))
            .bind(user)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            deleted.insert((*table).to_owned(), n as i64);
        }
        // Stored answers of earlier calls about the user, but this call's own.
        let n = idempotency::forget_user(conn, user, OPERATION).await?;
        deleted.insert("idempotency_keys".to_owned(), n as i64);
        Ok(pb::PurgeUserResponse { deleted })
    })
    .await
}
