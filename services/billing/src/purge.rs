//! Erasing one user from billing: their usage ledger, counters and
//! rate-limit windows go; their subscriptions go; the audit log of their
//! Lemon Squeezy events stays, as accounting needs it, but stripped of
//! personal data (names, emails, card details, signed URLs, custom_data)
//! and no longer linked to the user id. README says what is kept.

use std::collections::HashMap;

use mesh_proto::mesh::billing::v1 as pb;
use mesh_runtime::{
    ApiResult, Violations,
    convert::parse_uuid,
    idempotency::{self, Key},
    purge::{OPERATION, delete_user_rows, forget_answers},
};

use crate::{State, lemonsqueezy::ACCOUNTING_ATTRIBUTES};

/// Tables whose rows of the user are deleted outright.
const USER_TABLES: &[&str] = &["ai_usage", "usage_counters", "subscriptions"];

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
    let response = idempotency::run_once(&state.pool, key, &request, async |conn| {
        let mut deleted = HashMap::new();
        delete_user_rows(conn, user, USER_TABLES, &mut deleted).await?;
        let windows = sqlx::query("DELETE FROM rate_limit_windows WHERE key = $1")
            .bind(user.to_string())
            .execute(&mut *conn)
            .await?
            .rows_affected();
        deleted.insert("rate_limit_windows".into(), windows as i64);
        let stripped = sqlx::query(
            "UPDATE subscription_events SET
                 user_id = NULL,
                 redact_time = now(),
                 payload = jsonb_build_object(
                     'meta', (payload->'meta') - 'custom_data',
                     'data', jsonb_build_object(
                         'type', payload->'data'->'type',
                         'id', payload->'data'->'id',
                         'attributes', coalesce((
                             SELECT jsonb_object_agg(key, value)
                             FROM jsonb_each(payload->'data'->'attributes')
                             WHERE key = ANY($2)), '{}'::jsonb)))
             WHERE user_id = $1",
        )
        .bind(user)
        .bind(ACCOUNTING_ATTRIBUTES)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        deleted.insert("subscription_events".into(), stripped as i64);
        forget_answers(conn, user, &mut deleted).await?;
        Ok(pb::PurgeUserResponse { deleted })
    })
    .await?;
    state.people.forget(user);
    Ok(response)
}
