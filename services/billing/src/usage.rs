//! The AI usage ledger: one row per model call, once per request_id, its
//! cost given or computed from the price table in decimal, and its tokens
//! and cost added to the user's quotas.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use mesh_proto::mesh::billing::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, FieldViolation, Violations,
    convert::{parse_uuid, timestamp},
    idempotency::{self, Key},
    text_enum,
    wire::{optional_uuid, required_text},
};
use rust_decimal::{Decimal, RoundingStrategy};
use uuid::Uuid;

use crate::{
    State,
    features::{self, Feature},
    quotas::{self, decimal_text},
};

text_enum!(mesh_proto::mesh::billing::v1; task_type, TaskType {
    Chat => "chat",
    Transcription => "transcription",
    Ocr => "ocr",
    Embeddings => "embeddings",
    Image => "image",
});

/// What the ledger's numeric(20, 10) holds.
const MAX_SCALE: u32 = 10;
/// Far above any one call's cost; keeps sums inside the column.
const MAX_COST: i64 = 1_000_000;

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    request_id: String,
    user_id: Uuid,
    conversation_id: Option<Uuid>,
    provider: String,
    model: String,
    task_type: String,
    input_tokens: i64,
    output_tokens: i64,
    latency_ms: i64,
    cost_usd: Decimal,
    cost_source: String,
    create_time: DateTime<Utc>,
}

impl Row {
    fn to_pb(&self) -> pb::AiUsage {
        pb::AiUsage {
            id: self.id.to_string(),
            request_id: self.request_id.clone(),
            user_id: self.user_id.to_string(),
            conversation_id: self
                .conversation_id
                .map(|c| c.to_string())
                .unwrap_or_default(),
            provider: self.provider.clone(),
            model: self.model.clone(),
            task_type: task_type::parse(&self.task_type) as i32,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            latency: Some(prost_types::Duration {
                seconds: self.latency_ms / 1000,
                nanos: ((self.latency_ms % 1000) * 1_000_000) as i32,
            }),
            cost_usd: decimal_text(self.cost_usd),
            cost_source: self.cost_source.clone(),
            create_time: Some(timestamp(self.create_time)),
        }
    }
}

/// A caller's decimal amount of dollars: at most 10 decimals, not negative.
fn cost(field: &str, text: &str) -> Result<Decimal, FieldViolation> {
    let value = Decimal::from_str(text.trim())
        .map_err(|_| FieldViolation::new(field, "must be a decimal number such as \"0.0042\""))?;
    if value.is_sign_negative() || value > Decimal::from(MAX_COST) {
        return Err(FieldViolation::new(
            field,
            format!("must be between 0 and {MAX_COST}"),
        ));
    }
    if value.normalize().scale() > MAX_SCALE {
        return Err(FieldViolation::new(
            field,
            format!("must have at most {MAX_SCALE} decimals"),
        ));
    }
    Ok(value)
}

fn latency_ms(latency: Option<&prost_types::Duration>) -> Result<i64, FieldViolation> {
    let Some(latency) = latency else { return Ok(0) };
    std::time::Duration::try_from(*latency)
        .ok()
        .filter(|d| d.as_secs() <= 86_400)
        .map(|d| d.as_millis() as i64)
        .ok_or_else(|| FieldViolation::new("latency", "must be between 0 and 1 day"))
}

/// The cost of a checked request from the price table, rounded half away
/// from zero to the ledger's 10 decimals (as Postgres rounds numerics).
fn priced(state: &State, request: &pb::RecordAiUsageRequest) -> ApiResult<Decimal> {
    let price = state
        .config
        .prices
        .get(&request.provider, &request.model)
        .ok_or_else(|| {
            ApiError::invalid(
                "model",
                format!(
                    "{}/{} is not in the price table: give cost_usd, or add it to BILLING_PRICES_FILE",
                    request.provider, request.model
                ),
            )
        })?;
    price
        .cost(request.input_tokens, request.output_tokens)
        .filter(|cost| *cost <= Decimal::from(MAX_COST))
        .map(|cost| cost.round_dp_with_strategy(MAX_SCALE, RoundingStrategy::MidpointAwayFromZero))
        .ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!(
                "the price of {}/{} gives a cost over {MAX_COST}: check BILLING_PRICES_FILE",
                request.provider,
                request.model
            ))
        })
}

pub async fn record(
    state: &State,
    request: pb::RecordAiUsageRequest,
) -> ApiResult<pb::RecordAiUsageResponse> {
    let mut violations = Violations::default();
    if request.request_id.is_empty() {
        violations.push(
            "request_id",
            "is required: usage is recorded once per request_id",
        );
    }
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    let conversation = violations.check(optional_uuid("conversation_id", &request.conversation_id));
    violations.check(required_text("provider", &request.provider, 64));
    if request.provider.contains('/') {
        violations.push("provider", "must not contain '/'");
    }
    violations.check(required_text("model", &request.model, 128));
    let task = violations.check(task_type::require("task_type", request.task_type));
    for (field, tokens) in [
        ("input_tokens", request.input_tokens),
        ("output_tokens", request.output_tokens),
    ] {
        if !(0..=1_000_000_000).contains(&tokens) {
            violations.push(field, "must be between 0 and 1000000000");
        }
    }
    let latency = violations.check(latency_ms(request.latency.as_ref()));
    let given = match &request.cost_usd {
        Some(text) => violations.check(cost("cost_usd", text)).map(Some),
        None => Some(None),
    };
    violations.check(idempotency::check_request_id(&request.request_id));
    violations.into_result()?;
    let user = user.expect("checked");
    let (cost_usd, source) = match given.expect("checked") {
        Some(cost) => (cost, "given"),
        None => (priced(state, &request)?, "price_table"),
    };

    let standing = quotas::standing(state, user).await?;
    let zone = standing.profile.time_zone;
    let now = Utc::now();
    let local_day = now.with_timezone(&zone).date_naive();
    let key = Key {
        operation: "RecordAiUsage",
        request_id: &request.request_id,
        user_id: Some(user),
    };
    idempotency::run_once(&state.pool, key, &request, async |conn| {
        let row: Row = sqlx::query_as(
            "INSERT INTO ai_usage (id, request_id, user_id, conversation_id, provider, model,
                 task_type, input_tokens, output_tokens, latency_ms, cost_usd, cost_source, local_day)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             RETURNING id, request_id, user_id, conversation_id, provider, model, task_type,
                 input_tokens, output_tokens, latency_ms, cost_usd, cost_source, create_time",
        )
        .bind(Uuid::now_v7())
        .bind(&request.request_id)
        .bind(user)
        .bind(conversation.flatten())
        .bind(&request.provider)
        .bind(&request.model)
        .bind(task.expect("checked"))
        .bind(request.input_tokens)
        .bind(request.output_tokens)
        .bind(latency.expect("checked"))
        .bind(cost_usd)
        .bind(source)
        .bind(local_day)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| {
            ApiError::from(e).or_conflict(|| {
                "this request_id was recorded more than 7 days ago".to_owned()
            })
        })?;
        let mut quotas = Vec::new();
        for (feature, amount) in [
            (
                Feature::AiTokens,
                Decimal::from(request.input_tokens + request.output_tokens),
            ),
            (Feature::AiCostUsd, cost_usd),
        ] {
            let (period, reset) = features::current(feature, zone, now);
            // Usage that happened is always counted, over the limit or not.
            let used = quotas::add(conn, user, feature, &period, amount, None)
                .await?
                .expect("an unlimited add always writes");
            quotas.push(quotas::quota(feature, standing.plan.limit(feature), Some(used), reset));
        }
        let over_quota = quotas
            .iter()
            .any(|q| !q.unlimited && q.remaining == "0");
        Ok(pb::RecordAiUsageResponse {
            usage: Some(row.to_pb()),
            quotas,
            over_quota,
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_checked_decimals() {
        assert_eq!(cost("c", "0.0042").unwrap().to_string(), "0.0042");
        assert!(cost("c", "-1").is_err());
        assert!(cost("c", "1e7").is_err(), "over the largest cost");
        assert!(cost("c", "0.00000000001").is_err());
        assert!(
            cost("c", "0.10000000000000").is_ok(),
            "trailing zeros are no precision"
        );
        assert!(cost("c", "NaN").is_err());
    }
}
