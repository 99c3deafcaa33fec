//! Erasing one user from billing: their usage ledger, counters, rate-limit
//! windows and subscriptions go. The audit log of their Lemon Squeezy events
//! stays, as accounting needs it, but stripped to
//! `lemonsqueezy::accounting_only` and unlinked from the user id; the user
//! and their subscriptions are remembered as erased, so a later event naming
//! them is stored the same way and restores nothing. README says what is kept.

use std::collections::HashMap;

use mesh_proto::mesh::billing::v1 as pb;
use mesh_runtime::{ApiResult, purge::purge_user_with};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{State, lemonsqueezy::accounting_only};

/// Tables whose rows of the user are deleted outright (after [`erase`]).
const USER_TABLES: &[&str] = &["ai_usage", "usage_counters", "subscriptions"];

#[tracing::instrument(skip_all)]
pub async fn purge_user(
    state: &State,
    request: pb::PurgeUserRequest,
) -> ApiResult<pb::PurgeUserResponse> {
    let response = purge_user_with(
        &state.pool,
        &request,
        &request.user_id,
        &request.request_id,
        USER_TABLES,
        erase,
        |deleted| pb::PurgeUserResponse { deleted },
    )
    .await?;
    if let Ok(user) = request.user_id.parse() {
        state.people.forget(user);
    }
    Ok(response)
}

/// Strips the user's events (linked to them, naming them in custom_data, or
/// of their subscriptions, such as a payment that came before the
/// subscription), remembers them and their subscriptions as erased, and
/// deletes the rate-limit windows keyed by their id.
async fn erase(
    conn: &mut PgConnection,
    user: Uuid,
    counts: &mut HashMap<String, i64>,
) -> ApiResult<()> {
    let subscriptions: Vec<String> =
        sqlx::query_scalar("SELECT subscription_id FROM subscriptions WHERE user_id = $1")
            .bind(user)
            .fetch_all(&mut *conn)
            .await?;
    let events: Vec<(Uuid, serde_json::Value)> = sqlx::query_as(
        "SELECT id, payload FROM subscription_events
         WHERE user_id = $1
            OR subscription_id = ANY($2)
            OR payload #>> '{meta,custom_data,user_id}' = $1::text
         FOR UPDATE",
    )
    .bind(user)
    .bind(&subscriptions)
    .fetch_all(&mut *conn)
    .await?;
    for (id, payload) in &events {
        sqlx::query(
            "UPDATE subscription_events
             SET payload = $2, user_id = NULL, redact_time = now() WHERE id = $1",
        )
        .bind(id)
        .bind(accounting_only(payload))
        .execute(&mut *conn)
        .await?;
    }
    counts.insert("subscription_events".into(), events.len() as i64);
    sqlx::query("INSERT INTO erased_users (user_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(user)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO erased_subscriptions (subscription_id)
         SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(&subscriptions)
    .execute(&mut *conn)
    .await?;
    let windows = sqlx::query("DELETE FROM rate_limit_windows WHERE key = $1")
        .bind(user.to_string())
        .execute(&mut *conn)
        .await?
        .rows_affected();
    counts.insert("rate_limit_windows".into(), windows as i64);
    Ok(())
}
