//! Quotas: the plan in force, what a user used of each feature in the
//! current period, and the one statement that consumes atomically.

use chrono::{DateTime, Utc};
use mesh_proto::mesh::billing::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, Violations,
    convert::{optional_timestamp, parse_uuid},
    idempotency::{self, Key},
};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    State,
    features::{self, Feature},
    lemonsqueezy::Owner,
    people::Profile,
    plans::Plan,
    subscriptions,
};

/// The most one ConsumeQuota may take: far above any real use, and far
/// below what the counters (numeric(24, 10)) hold.
const MAX_AMOUNT: i64 = 1_000_000_000;

/// Amounts on the wire: no trailing zeros ("50", "0.0005253").
pub fn decimal_text(value: Decimal) -> String {
    value.normalize().to_string()
}

/// A user's plan and the time zone their periods follow.
pub struct Standing<'a> {
    pub plan: &'a Plan,
    pub profile: Profile,
    pub subscription: Option<subscriptions::Row>,
}

/// The plan in force for `user`.
pub async fn standing(state: &State, user: Uuid) -> ApiResult<Standing<'_>> {
    let profile = state.people.profile(user).await?;
    let subscription =
        subscriptions::in_force_for_user(&state.pool, user, &profile.workspaces).await?;
    let plan = plan_of(state, subscription.as_ref());
    Ok(Standing {
        plan,
        profile,
        subscription,
    })
}

fn plan_of<'a>(state: &'a State, subscription: Option<&subscriptions::Row>) -> &'a Plan {
    let plans = &state.config.plans;
    subscription
        .and_then(|row| plans.get(&row.plan_id))
        .unwrap_or_else(|| plans.free())
}

/// One feature's quota for the wire.
pub fn quota(
    feature: Feature,
    limit: Option<Decimal>,
    used: Option<Decimal>,
    reset: Option<DateTime<Utc>>,
) -> pb::Quota {
    pb::Quota {
        feature: feature.to_pb() as i32,
        unlimited: limit.is_none(),
        limit: limit.map(decimal_text).unwrap_or_default(),
        used: used.map(decimal_text).unwrap_or_default(),
        // Unknown without `used` (a workspace's quota: usage is per user).
        remaining: match (limit, used) {
            (Some(limit), Some(used)) => decimal_text((limit - used).max(Decimal::ZERO)),
            _ => String::new(),
        },
        reset_time: optional_timestamp(reset),
    }
}

/// What a user used of a feature in its current period, which ends at `reset`.
pub struct Used {
    pub feature: Feature,
    pub used: Decimal,
    pub reset: Option<DateTime<Utc>>,
}

/// What `user` used of each of `wanted` in its current period.
#[tracing::instrument(skip(pool, profile))]
pub async fn usage(
    pool: &sqlx::PgPool,
    user: Uuid,
    profile: &Profile,
    wanted: &[Feature],
) -> ApiResult<Vec<Used>> {
    let now = Utc::now();
    let periods: Vec<(Feature, String, Option<DateTime<Utc>>)> = wanted
        .iter()
        .map(|&f| {
            let (period, reset) = features::current(f, profile.time_zone, now);
            (f, period, reset)
        })
        .collect();
    let names: Vec<&str> = periods.iter().map(|(f, _, _)| f.config_name()).collect();
    let keys: Vec<&str> = periods.iter().map(|(_, p, _)| p.as_str()).collect();
    let rows: Vec<(String, String, Decimal)> = sqlx::query_as(
        "SELECT c.feature, c.period, c.used FROM usage_counters c
         JOIN unnest($2::text[], $3::text[]) AS w(feature, period)
           ON c.feature = w.feature AND c.period = w.period
         WHERE c.user_id = $1",
    )
    .bind(user)
    .bind(&names)
    .bind(&keys)
    .fetch_all(pool)
    .await?;
    Ok(periods
        .into_iter()
        .map(|(feature, period, reset)| {
            let used = rows
                .iter()
                .find(|(f, p, _)| f == feature.config_name() && *p == period)
                .map_or(Decimal::ZERO, |(_, _, used)| *used);
            Used {
                feature,
                used,
                reset,
            }
        })
        .collect())
}

pub async fn entitlements(
    state: &State,
    request: pb::GetEntitlementsRequest,
) -> ApiResult<pb::GetEntitlementsResponse> {
    let owner = subscriptions::parse_owner("owner", request.owner.as_ref())?;
    match owner {
        Owner::User(user) => {
            let standing = standing(state, user).await?;
            let used = usage(&state.pool, user, &standing.profile, &Feature::ALL).await?;
            Ok(pb::GetEntitlementsResponse {
                plan: Some(plan_pb(standing.plan)),
                quotas: used
                    .into_iter()
                    .map(|u| {
                        quota(
                            u.feature,
                            standing.plan.limit(u.feature),
                            Some(u.used),
                            u.reset,
                        )
                    })
                    .collect(),
                subscription: standing.subscription.map(|row| row.to_pb()),
                time_zone: standing.profile.time_zone.name().to_owned(),
            })
        }
        Owner::Workspace(_) => {
            let subscription = subscriptions::for_owner(&state.pool, owner)
                .await?
                .filter(|row| row.in_force);
            let plan = plan_of(state, subscription.as_ref());
            Ok(pb::GetEntitlementsResponse {
                plan: Some(plan_pb(plan)),
                quotas: Feature::ALL
                    .into_iter()
                    .map(|f| quota(f, plan.limit(f), None, None))
                    .collect(),
                subscription: subscription.map(|row| row.to_pb()),
                time_zone: String::new(),
            })
        }
    }
}

fn plan_pb(plan: &Plan) -> pb::Plan {
    pb::Plan {
        id: plan.id.clone(),
        display_name: plan.display_name.clone(),
        features: plan.features.clone(),
    }
}

pub async fn consume(
    state: &State,
    request: pb::ConsumeQuotaRequest,
) -> ApiResult<pb::ConsumeQuotaResponse> {
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    let feature = violations.check(Feature::require("feature", request.feature));
    if feature == Some(Feature::AiCostUsd) {
        violations.push(
            "feature",
            "AI cost is recorded by RecordAiUsage, not consumed",
        );
    }
    if !(1..=MAX_AMOUNT).contains(&request.amount) {
        violations.push("amount", format!("must be between 1 and {MAX_AMOUNT}"));
    }
    violations.check(idempotency::check_request_id(&request.request_id));
    violations.into_result()?;
    let (user, feature) = (user.expect("checked"), feature.expect("checked"));
    let standing = standing(state, user).await?;
    let limit = standing.plan.limit(feature);
    let (period, reset) = features::current(feature, standing.profile.time_zone, Utc::now());
    let amount = Decimal::from(request.amount);
    let key = Key {
        operation: "ConsumeQuota",
        request_id: &request.request_id,
        user_id: Some(user),
    };
    idempotency::run_once(&state.pool, key, &request, async |conn| {
        let used = add(conn, user, feature, &period, amount, limit).await?;
        match used {
            Some(used) => Ok(pb::ConsumeQuotaResponse {
                quota: Some(quota(feature, limit, Some(used), reset)),
            }),
            None => Err(exhausted(feature, standing.plan, limit, reset)),
        }
    })
    .await
}

/// Adds `amount` to the counter when the sum stays within `limit` (always
/// when unlimited); returns the new total, or None when it would not fit.
/// The upsert holds the row's lock from the check to the write, so
/// concurrent callers queue on it and each sees the others' sums.
pub async fn add(
    conn: &mut PgConnection,
    user: Uuid,
    feature: Feature,
    period: &str,
    amount: Decimal,
    limit: Option<Decimal>,
) -> ApiResult<Option<Decimal>> {
    if limit.is_some_and(|limit| amount > limit) {
        return Ok(None);
    }
    Ok(sqlx::query_scalar(
        "INSERT INTO usage_counters (user_id, feature, period, used) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id, feature, period)
         DO UPDATE SET used = usage_counters.used + EXCLUDED.used
         WHERE $5::numeric IS NULL OR usage_counters.used + EXCLUDED.used <= $5
         RETURNING used",
    )
    .bind(user)
    .bind(feature.config_name())
    .bind(period)
    .bind(amount)
    .bind(limit)
    .fetch_optional(conn)
    .await?)
}

fn exhausted(
    feature: Feature,
    plan: &Plan,
    limit: Option<Decimal>,
    reset: Option<DateTime<Utc>>,
) -> ApiError {
    let limit = limit.map(decimal_text).unwrap_or_default();
    let name = feature.to_pb().as_str_name();
    let message = match reset {
        Some(reset) => format!(
            "the {} plan's {name} quota of {limit} is used up until {}",
            plan.id,
            reset.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
        None => format!("the {} plan's {name} quota of {limit} is used up", plan.id),
    };
    ApiError::ResourceExhausted {
        message,
        retry_after: reset.map(|reset| (reset - Utc::now()).to_std().unwrap_or_default()),
    }
}
