//! Subscriptions from Lemon Squeezy as stored (see `events` for how events
//! change them): the subscription of an owner, and the one in force for a
//! user or a workspace.

use chrono::{DateTime, Utc};
use mesh_proto::mesh::billing::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult,
    convert::{optional_timestamp, parse_uuid, timestamp},
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{State, lemonsqueezy::Owner};

/// Statuses that keep the plan in force: `cancelled` until `ends_at`, and
/// `paused` when the pause is "free" (service goes on without payment).
const IN_FORCE: &str = "coalesce(status IN ('on_trial', 'active', 'past_due') \
                        OR (status = 'cancelled' AND ends_at > now()) \
                        OR (status = 'paused' AND pause_mode = 'free'), false)";

#[derive(sqlx::FromRow, Debug, Clone)]
pub struct Row {
    subscription_id: String,
    user_id: Option<Uuid>,
    workspace_id: Option<Uuid>,
    customer_id: String,
    order_id: String,
    product_id: String,
    variant_id: String,
    pub plan_id: String,
    status: String,
    renews_at: Option<DateTime<Utc>>,
    ends_at: Option<DateTime<Utc>>,
    trial_ends_at: Option<DateTime<Utc>>,
    pause_mode: Option<String>,
    customer_portal_url: String,
    last_payment_status: String,
    last_payment_time: Option<DateTime<Utc>>,
    test_mode: bool,
    state_time: DateTime<Utc>,
    pub in_force: bool,
}

const COLUMNS: &str = "subscription_id, user_id, workspace_id, customer_id, order_id, product_id, \
    variant_id, plan_id, status, renews_at, ends_at, trial_ends_at, pause_mode, customer_portal_url, \
    last_payment_status, last_payment_time, test_mode, state_time";

fn select(filter: &str) -> String {
    format!("SELECT {COLUMNS}, {IN_FORCE} AS in_force FROM subscriptions WHERE {filter}")
}

impl Row {
    pub fn to_pb(&self) -> pb::Subscription {
        pb::Subscription {
            owner: Some(owner_pb(self.user_id, self.workspace_id)),
            subscription_id: self.subscription_id.clone(),
            customer_id: self.customer_id.clone(),
            order_id: self.order_id.clone(),
            product_id: self.product_id.clone(),
            variant_id: self.variant_id.clone(),
            plan_id: self.plan_id.clone(),
            status: status_pb(&self.status) as i32,
            renews_at: optional_timestamp(self.renews_at),
            ends_at: optional_timestamp(self.ends_at),
            trial_ends_at: optional_timestamp(self.trial_ends_at),
            customer_portal_url: self.customer_portal_url.clone(),
            in_force: self.in_force,
            last_payment_status: self.last_payment_status.clone(),
            last_payment_time: optional_timestamp(self.last_payment_time),
            state_time: Some(timestamp(self.state_time)),
            test_mode: self.test_mode,
            pause_mode: self.pause_mode.clone().unwrap_or_default(),
        }
    }
}

fn status_pb(status: &str) -> pb::SubscriptionStatus {
    use pb::SubscriptionStatus as S;
    match status {
        "on_trial" => S::OnTrial,
        "active" => S::Active,
        "paused" => S::Paused,
        "past_due" => S::PastDue,
        "unpaid" => S::Unpaid,
        "cancelled" => S::Cancelled,
        "expired" => S::Expired,
        _ => S::Unspecified,
    }
}

pub fn owner_pb(user: Option<Uuid>, workspace: Option<Uuid>) -> pb::Owner {
    use pb::owner::Kind;
    pb::Owner {
        kind: match (user, workspace) {
            (_, Some(w)) => Some(Kind::WorkspaceId(w.to_string())),
            (Some(u), None) => Some(Kind::UserId(u.to_string())),
            (None, None) => None,
        },
    }
}

/// The owner a request names (`field` is the owner message's name).
pub fn parse_owner(
    field: &str,
    owner: Option<&pb::Owner>,
) -> Result<Owner, mesh_runtime::FieldViolation> {
    use pb::owner::Kind;
    match owner.and_then(|o| o.kind.as_ref()) {
        Some(Kind::UserId(id)) => parse_uuid(&format!("{field}.user_id"), id).map(Owner::User),
        Some(Kind::WorkspaceId(id)) => {
            parse_uuid(&format!("{field}.workspace_id"), id).map(Owner::Workspace)
        }
        None => Err(mesh_runtime::FieldViolation::new(
            field,
            "is required: a user_id or a workspace_id",
        )),
    }
}

pub(crate) fn owner_columns(owner: Option<Owner>) -> (Option<Uuid>, Option<Uuid>) {
    match owner {
        Some(Owner::User(u)) => (Some(u), None),
        Some(Owner::Workspace(w)) => (None, Some(w)),
        None => (None, None),
    }
}

/// The subscription in force for a user: their own, else one of a
/// workspace they own; the most recently changed wins.
#[tracing::instrument(skip(pool))]
pub async fn in_force_for_user(
    pool: &PgPool,
    user: Uuid,
    workspaces: &[Uuid],
) -> ApiResult<Option<Row>> {
    Ok(sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "{} AND {IN_FORCE} ORDER BY (user_id IS NOT NULL) DESC, state_time DESC LIMIT 1",
        select("(user_id = $1 OR workspace_id = ANY($2))")
    )))
    .bind(user)
    .bind(workspaces)
    .fetch_optional(pool)
    .await?)
}

/// The owner's subscription: the one in force, else the latest.
#[tracing::instrument(skip(pool))]
pub async fn for_owner(pool: &PgPool, owner: Owner) -> ApiResult<Option<Row>> {
    let (user, workspace) = owner_columns(Some(owner));
    Ok(sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "{} ORDER BY in_force DESC, state_time DESC LIMIT 1",
        select("(user_id = $1 OR workspace_id = $2)")
    )))
    .bind(user)
    .bind(workspace)
    .fetch_optional(pool)
    .await?)
}

pub async fn get(
    state: &State,
    request: pb::GetSubscriptionRequest,
) -> ApiResult<pb::GetSubscriptionResponse> {
    let owner = parse_owner("owner", request.owner.as_ref())?;
    let row = for_owner(&state.pool, owner)
        .await?
        .ok_or_else(|| ApiError::not_found("this owner has no subscription"))?;
    Ok(pb::GetSubscriptionResponse {
        subscription: Some(row.to_pb()),
    })
}

pub(crate) async fn stored<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    subscription_id: &str,
) -> ApiResult<Option<Row>> {
    if subscription_id.is_empty() {
        return Ok(None);
    }
    Ok(
        sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(select("subscription_id = $1")))
            .bind(subscription_id)
            .fetch_optional(conn)
            .await?,
    )
}
