//! Usage reports: a user's days, each model's month, and totals.

use std::{fmt, str::FromStr};

use chrono::{DateTime, NaiveDate, Utc};
use mesh_proto::mesh::billing::v1 as pb;
use mesh_runtime::{
    ApiResult, FieldViolation, Violations,
    convert::{from_timestamp, parse_uuid},
    pagination::{Page, next_page},
    wire::optional_uuid,
};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::{State, quotas::decimal_text};

fn day(field: &str, text: &str) -> Result<Option<NaiveDate>, FieldViolation> {
    if text.is_empty() {
        return Ok(None);
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map(Some)
        .map_err(|_| FieldViolation::new(field, "must be a date YYYY-MM-DD"))
}

#[derive(sqlx::FromRow)]
struct DayRow {
    day: NaiveDate,
    inbound_messages: i64,
    ai_calls: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_usd: Decimal,
}

pub async fn daily(
    state: &State,
    request: pb::ListDailyUsageRequest,
) -> ApiResult<pb::ListDailyUsageResponse> {
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    let start = violations.check(day("start_day", &request.start_day));
    let end = violations.check(day("end_day", &request.end_day));
    let page = Page::<NaiveDate>::check(&mut violations, request.page_size, &request.page_token);
    violations.into_result()?;
    let page = page.expect("checked");
    // Inbound messages are counted per local day in usage_counters; AI calls
    // are in the ledger under the local day they were recorded on.
    let mut rows: Vec<DayRow> = sqlx::query_as(
        "WITH ai AS (
             SELECT local_day AS day, count(*) AS calls, sum(input_tokens) AS input_tokens,
                    sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost
             FROM ai_usage WHERE user_id = $1 GROUP BY local_day),
         inbound AS (
             SELECT to_date(period, 'YYYY-MM-DD') AS day, used
             FROM usage_counters
             WHERE user_id = $1 AND feature = 'inbound_messages')
         SELECT coalesce(ai.day, inbound.day) AS day,
                coalesce(inbound.used, 0)::bigint AS inbound_messages,
                coalesce(ai.calls, 0)::bigint AS ai_calls,
                coalesce(ai.input_tokens, 0)::bigint AS input_tokens,
                coalesce(ai.output_tokens, 0)::bigint AS output_tokens,
                coalesce(ai.cost, 0) AS cost_usd
         FROM ai FULL JOIN inbound ON ai.day = inbound.day
         WHERE ($2::date IS NULL OR coalesce(ai.day, inbound.day) >= $2)
           AND ($3::date IS NULL OR coalesce(ai.day, inbound.day) <= $3)
           AND ($4::date IS NULL OR coalesce(ai.day, inbound.day) < $4)
         ORDER BY 1 DESC LIMIT $5",
    )
    .bind(user.expect("checked"))
    .bind(start.flatten())
    .bind(end.flatten())
    .bind(page.after)
    .bind(page.size + 1)
    .fetch_all(&state.pool)
    .await?;
    let next_page_token = next_page(&mut rows, page.size, |r| r.day.to_string());
    Ok(pb::ListDailyUsageResponse {
        days: rows
            .into_iter()
            .map(|r| pb::DailyUsage {
                day: r.day.to_string(),
                inbound_messages: r.inbound_messages,
                ai_calls: r.ai_calls,
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
                cost_usd: decimal_text(r.cost_usd),
            })
            .collect(),
        next_page_token,
    })
}

/// A page key over (provider, model): providers hold no '/'.
#[derive(Debug, Clone)]
struct ModelKey {
    provider: String,
    model: String,
}

impl fmt::Display for ModelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

impl FromStr for ModelKey {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let (provider, model) = text.split_once('/').ok_or(())?;
        Ok(Self {
            provider: provider.to_owned(),
            model: model.to_owned(),
        })
    }
}

#[derive(sqlx::FromRow)]
struct ModelRow {
    provider: String,
    model: String,
    calls: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_usd: Decimal,
}

fn month(text: &str) -> Result<(DateTime<Utc>, DateTime<Utc>), FieldViolation> {
    let first = NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d")
        .ok()
        .filter(|_| text.len() == 7)
        .ok_or_else(|| FieldViolation::new("month", "must be a month YYYY-MM"))?;
    let next = crate::features::first_of_next_month(first)
        .ok_or_else(|| FieldViolation::new("month", "is out of range"))?;
    let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    Ok((midnight(first), midnight(next)))
}

pub async fn by_model(
    state: &State,
    request: pb::ListModelUsageRequest,
) -> ApiResult<pb::ListModelUsageResponse> {
    let mut violations = Violations::default();
    let range = violations.check(month(&request.month));
    let page = Page::<ModelKey>::check(&mut violations, request.page_size, &request.page_token);
    violations.into_result()?;
    let ((from, to), page) = (range.expect("checked"), page.expect("checked"));
    let after = page.after.clone();
    let mut rows: Vec<ModelRow> = sqlx::query_as(
        "SELECT provider, model, count(*) AS calls,
                sum(input_tokens)::bigint AS input_tokens,
                sum(output_tokens)::bigint AS output_tokens, sum(cost_usd) AS cost_usd
         FROM ai_usage
         WHERE create_time >= $1 AND create_time < $2
           AND ($3::text IS NULL OR (provider, model) > ($3, $4))
         GROUP BY provider, model
         ORDER BY provider, model LIMIT $5",
    )
    .bind(from)
    .bind(to)
    .bind(after.as_ref().map(|k| k.provider.clone()))
    .bind(after.as_ref().map(|k| k.model.clone()))
    .bind(page.size + 1)
    .fetch_all(&state.pool)
    .await?;
    let next_page_token = next_page(&mut rows, page.size, |r| {
        ModelKey {
            provider: r.provider.clone(),
            model: r.model.clone(),
        }
        .to_string()
    });
    Ok(pb::ListModelUsageResponse {
        models: rows
            .into_iter()
            .map(|r| pb::ModelUsage {
                provider: r.provider,
                model: r.model,
                calls: r.calls,
                input_tokens: r.input_tokens,
                output_tokens: r.output_tokens,
                cost_usd: decimal_text(r.cost_usd),
            })
            .collect(),
        next_page_token,
    })
}

pub async fn totals(
    state: &State,
    request: pb::GetUsageTotalsRequest,
) -> ApiResult<pb::GetUsageTotalsResponse> {
    let mut violations = Violations::default();
    let user = violations.check(optional_uuid("user_id", &request.user_id));
    let start = request
        .start_time
        .as_ref()
        .and_then(|t| violations.check(from_timestamp("start_time", t)));
    let end = request
        .end_time
        .as_ref()
        .and_then(|t| violations.check(from_timestamp("end_time", t)));
    if let (Some(start), Some(end)) = (start, end)
        && start > end
    {
        violations.push("end_time", "must not be before start_time");
    }
    violations.into_result()?;
    let user: Option<Uuid> = user.flatten();
    let (calls, input_tokens, output_tokens, cost, users): (i64, i64, i64, Decimal, i64) =
        sqlx::query_as(
            "SELECT count(*), coalesce(sum(input_tokens), 0)::bigint,
                    coalesce(sum(output_tokens), 0)::bigint, coalesce(sum(cost_usd), 0),
                    count(DISTINCT user_id)
             FROM ai_usage
             WHERE ($1::uuid IS NULL OR user_id = $1)
               AND ($2::timestamptz IS NULL OR create_time >= $2)
               AND ($3::timestamptz IS NULL OR create_time < $3)",
        )
        .bind(user)
        .bind(start)
        .bind(end)
        .fetch_one(&state.pool)
        .await?;
    Ok(pb::GetUsageTotalsResponse {
        ai_calls: calls,
        input_tokens,
        output_tokens,
        cost_usd: decimal_text(cost),
        users,
    })
}
