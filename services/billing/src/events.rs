//! The audit log of Lemon Squeezy events: each recorded once, applied to
//! its subscription unless older than the stored state, replayed when it
//! came before its subscription, and stripped when it names an erased user.

use chrono::{DateTime, Utc};
use mesh_proto::mesh::billing::v1 as pb;
use mesh_runtime::{
    ApiResult, Violations,
    convert::{json_to_struct, timestamp},
    pagination::{Page, TimeKey, next_page},
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    State,
    lemonsqueezy::{self, Kind},
    plans::Plans,
    subscriptions::{owner_columns, owner_pb, parse_owner, stored},
};

/// What a subscription event sets, from the bind parameters both of
/// `apply_kind`'s statements share.
const STATE_COLUMNS: &str = "customer_id = $4, order_id = $5, product_id = $6, \
    variant_id = $7, plan_id = $8, status = $9, renews_at = $10, ends_at = $11, \
    trial_ends_at = $12, customer_portal_url = $13, test_mode = $14, state_time = $15, \
    pause_mode = $16";

#[derive(sqlx::FromRow)]
struct EventRow {
    id: Uuid,
    event_name: String,
    subscription_id: String,
    user_id: Option<Uuid>,
    workspace_id: Option<Uuid>,
    outcome: String,
    payload: serde_json::Value,
    receive_time: DateTime<Utc>,
}

impl EventRow {
    fn to_pb(&self) -> pb::SubscriptionEvent {
        pb::SubscriptionEvent {
            id: self.id.to_string(),
            event_name: self.event_name.clone(),
            subscription_id: self.subscription_id.clone(),
            owner: Some(owner_pb(self.user_id, self.workspace_id)),
            outcome: self.outcome.clone(),
            payload: Some(json_to_struct(&self.payload)),
            receive_time: Some(timestamp(self.receive_time)),
        }
    }
}

const EVENT_COLUMNS: &str =
    "id, event_name, subscription_id, user_id, workspace_id, outcome, payload, receive_time";

/// Records the event and applies it, in one transaction.
#[tracing::instrument(skip_all, fields(event_name = %request.event_name))]
pub async fn apply(
    state: &State,
    request: pb::ApplySubscriptionEventRequest,
) -> ApiResult<pb::ApplySubscriptionEventResponse> {
    let event = lemonsqueezy::parse(&request.event_name, &request.payload)?;
    let mut tx = state.pool.begin().await?;
    // The same name and body again is a repeat delivery: answer the first.
    let digest_input = format!("{}\n{}", event.name, request.payload);
    let claimed: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO subscription_events (id, digest, event_name, outcome, payload)
         VALUES ($1, sha256(convert_to($2, 'UTF8')), $3, 'recorded', $4)
         ON CONFLICT (digest) DO NOTHING RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(&digest_input)
    .bind(&event.name)
    .bind(&event.payload)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = claimed else {
        tx.rollback().await?;
        let first: EventRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM subscription_events
             WHERE digest = sha256(convert_to($1, 'UTF8'))"
        )))
        .bind(&digest_input)
        .fetch_one(&state.pool)
        .await?;
        let subscription = stored(&state.pool, &first.subscription_id).await?;
        return Ok(pb::ApplySubscriptionEventResponse {
            event: Some(first.to_pb()),
            recorded: false,
            subscription: subscription.map(|row| row.to_pb()),
        });
    };

    let subscription_id = event.subscription_id().to_owned();
    let plans = &state.config.plans;
    let row: EventRow = if is_erased(&mut tx, &event).await? {
        // Kept for accounting only, like the erased user's earlier events.
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "UPDATE subscription_events
             SET outcome = 'erased', subscription_id = $2, payload = $3, redact_time = now()
             WHERE id = $1 RETURNING {EVENT_COLUMNS}"
        )))
        .bind(id)
        .bind(&subscription_id)
        .bind(lemonsqueezy::accounting_only(&event.payload))
        .fetch_one(&mut *tx)
        .await?
    } else {
        let outcome = apply_kind(&mut tx, plans, &event).await?;
        if outcome == "applied" && matches!(event.kind, Kind::Subscription(_)) {
            replay_pending(&mut tx, plans, &subscription_id).await?;
        }
        record_outcome(&mut tx, id, &event, outcome).await?
    };
    let outcome = row.outcome.as_str();
    let subscription = stored(&mut *tx, &subscription_id).await?;
    tx.commit().await?;
    tracing::info!(event = %row.event_name, outcome, subscription_id, "Lemon Squeezy event recorded");
    Ok(pb::ApplySubscriptionEventResponse {
        event: Some(row.to_pb()),
        recorded: true,
        subscription: subscription.map(|row| row.to_pb()),
    })
}

/// Whether the event names a user or a subscription PurgeUser erased.
async fn is_erased(conn: &mut PgConnection, event: &lemonsqueezy::Event) -> ApiResult<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM erased_users WHERE user_id = $1)
             OR EXISTS (SELECT 1 FROM erased_subscriptions WHERE subscription_id = $2)",
    )
    .bind(event.user())
    .bind(event.subscription_id())
    .fetch_one(conn)
    .await?)
}

/// Writes the outcome of the event recorded as `id`, and its owner:
/// custom_data's, else its subscription's.
async fn record_outcome(
    conn: &mut PgConnection,
    id: Uuid,
    event: &lemonsqueezy::Event,
    outcome: &str,
) -> ApiResult<EventRow> {
    let subscription_id = event.subscription_id();
    let (mut user, mut workspace) = owner_columns(event.owner);
    if event.owner.is_none() && !subscription_id.is_empty() {
        let owner: Option<(Option<Uuid>, Option<Uuid>)> = sqlx::query_as(
            "SELECT user_id, workspace_id FROM subscriptions WHERE subscription_id = $1",
        )
        .bind(subscription_id)
        .fetch_optional(&mut *conn)
        .await?;
        (user, workspace) = owner.unwrap_or_default();
    }
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE subscription_events
         SET outcome = $2, subscription_id = $3, user_id = $4, workspace_id = $5
         WHERE id = $1 RETURNING {EVENT_COLUMNS}"
    )))
    .bind(id)
    .bind(outcome)
    .bind(subscription_id)
    .bind(user)
    .bind(workspace)
    .fetch_one(conn)
    .await?)
}

/// Applies again, in the order they came, the events of a subscription that
/// arrived before it could be stored (a first payment sent with the
/// creation, an update without custom_data): once the subscription exists
/// they apply, or are stale.
async fn replay_pending(
    conn: &mut PgConnection,
    plans: &Plans,
    subscription_id: &str,
) -> ApiResult<()> {
    let pending: Vec<(Uuid, String, serde_json::Value)> = sqlx::query_as(
        "SELECT id, event_name, payload FROM subscription_events
         WHERE subscription_id = $1 AND outcome IN ('no_subscription', 'no_owner')
         ORDER BY receive_time, id FOR UPDATE",
    )
    .bind(subscription_id)
    .fetch_all(&mut *conn)
    .await?;
    for (id, name, payload) in pending {
        // It parsed when it came; the same text parses the same way.
        let Ok(event) = lemonsqueezy::parse(&name, &payload.to_string()) else {
            continue;
        };
        let outcome = apply_kind(conn, plans, &event).await?;
        record_outcome(conn, id, &event, outcome).await?;
    }
    Ok(())
}

/// Applies the event's effect; returns its outcome.
async fn apply_kind(
    conn: &mut PgConnection,
    plans: &Plans,
    event: &lemonsqueezy::Event,
) -> ApiResult<&'static str> {
    match &event.kind {
        Kind::Subscription(sub) => {
            let (user, workspace) = owner_columns(event.owner);
            if event.owner.is_none() {
                // Without custom_data only a stored subscription can be updated.
                let known: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM subscriptions WHERE subscription_id = $1)",
                )
                .bind(&sub.subscription_id)
                .fetch_one(&mut *conn)
                .await?;
                if !known {
                    return Ok("no_owner");
                }
            }
            let plan = plans.for_variant(&sub.variant_id);
            // Applied only when not older than the stored state: the row
            // lock of ON CONFLICT (or of the UPDATE) orders concurrent
            // deliveries. Without custom_data the stored owner stays.
            let statement = if event.owner.is_some() {
                format!(
                    "INSERT INTO subscriptions (subscription_id, user_id, workspace_id,
                         customer_id, order_id, product_id, variant_id, plan_id, status,
                         renews_at, ends_at, trial_ends_at, customer_portal_url, test_mode,
                         state_time, pause_mode)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                             $16)
                     ON CONFLICT (subscription_id) DO UPDATE SET
                         user_id = $2, workspace_id = $3, {STATE_COLUMNS}
                     WHERE subscriptions.state_time <= $15"
                )
            } else {
                format!(
                    // $2 and $3 (no owner) are named only so that both
                    // statements take the same parameters.
                    "UPDATE subscriptions SET {STATE_COLUMNS}
                     WHERE subscription_id = $1 AND state_time <= $15
                       AND $2::uuid IS NULL AND $3::uuid IS NULL"
                )
            };
            let applied = sqlx::query(sqlx::AssertSqlSafe(statement))
                .bind(&sub.subscription_id)
                .bind(user)
                .bind(workspace)
                .bind(&sub.customer_id)
                .bind(&sub.order_id)
                .bind(&sub.product_id)
                .bind(&sub.variant_id)
                .bind(&plan.id)
                .bind(&sub.status)
                .bind(sub.renews_at)
                .bind(sub.ends_at)
                .bind(sub.trial_ends_at)
                .bind(&sub.customer_portal_url)
                .bind(event.test_mode)
                .bind(sub.updated_at)
                .bind(&sub.pause_mode)
                .execute(&mut *conn)
                .await?
                .rows_affected()
                == 1;
            Ok(if applied { "applied" } else { "stale" })
        }
        Kind::Payment {
            subscription_id,
            status,
            time,
        } => {
            let updated = sqlx::query(
                "UPDATE subscriptions SET last_payment_status = $2, last_payment_time = $3
                 WHERE subscription_id = $1
                   AND (last_payment_time IS NULL OR last_payment_time <= $3)",
            )
            .bind(subscription_id)
            .bind(status)
            .bind(time)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                == 1;
            Ok(if updated {
                "applied"
            } else if stored(&mut *conn, subscription_id).await?.is_some() {
                "stale"
            } else {
                "no_subscription"
            })
        }
        Kind::Other => Ok("recorded"),
    }
}

pub async fn list(
    state: &State,
    request: pb::ListSubscriptionEventsRequest,
) -> ApiResult<pb::ListSubscriptionEventsResponse> {
    let mut violations = Violations::default();
    let owner = match &request.owner {
        Some(owner) if owner.kind.is_some() => violations
            .check(parse_owner("owner", Some(owner)))
            .map(Some),
        _ => Some(None),
    };
    violations.check(mesh_runtime::wire::text(
        "subscription_id",
        &request.subscription_id,
        64,
    ));
    let page = Page::<TimeKey>::check(&mut violations, request.page_size, &request.page_token);
    violations.into_result()?;
    let (owner, page) = (owner.expect("checked"), page.expect("checked"));
    let (user, workspace) = owner_columns(owner);
    let mut rows: Vec<EventRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM subscription_events
         WHERE ($1::uuid IS NULL OR user_id = $1)
           AND ($2::uuid IS NULL OR workspace_id = $2)
           AND ($3 = '' OR subscription_id = $3)
           AND ($4::timestamptz IS NULL OR (receive_time, id) < ($4, $5))
         ORDER BY receive_time DESC, id DESC LIMIT $6"
    )))
    .bind(user)
    .bind(workspace)
    .bind(&request.subscription_id)
    .bind(page.after.map(|k| k.time))
    .bind(page.after.map(|k| k.id))
    .bind(page.size + 1)
    .fetch_all(&state.pool)
    .await?;
    let next_page_token = next_page(&mut rows, page.size, |r| {
        TimeKey::new(r.receive_time, r.id).to_string()
    });
    Ok(pb::ListSubscriptionEventsResponse {
        events: rows.iter().map(EventRow::to_pb).collect(),
        next_page_token,
    })
}
