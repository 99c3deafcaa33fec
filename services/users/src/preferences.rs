//! How the assistant should behave with a user (agent preferences), and how
//! far the user got through onboarding. Both read as defaults until written.

use chrono::{DateTime, NaiveTime, Utc};
use mesh_proto::mesh::users::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, Violations,
    convert::{optional_timestamp, parse_uuid, timestamp},
    field_mask,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::validate;

#[derive(sqlx::FromRow)]
struct PreferencesRow {
    enabled_agents: Vec<String>,
    notification_frequency: String,
    quiet_hours_start: NaiveTime,
    quiet_hours_end: NaiveTime,
    data_sharing_consent: bool,
    transparency_level: String,
    language_preference: String,
    update_time: Option<DateTime<Utc>>,
}

impl PreferencesRow {
    fn defaults() -> Self {
        Self {
            enabled_agents: vec!["companion".into()],
            notification_frequency: "normal".into(),
            quiet_hours_start: NaiveTime::from_hms_opt(22, 0, 0).expect("valid"),
            quiet_hours_end: NaiveTime::from_hms_opt(7, 0, 0).expect("valid"),
            data_sharing_consent: false,
            transparency_level: "balanced".into(),
            language_preference: String::new(),
            update_time: None,
        }
    }

    fn into_proto(self, user: Uuid) -> pb::AgentPreferences {
        pb::AgentPreferences {
            user_id: user.to_string(),
            enabled_agents: self.enabled_agents,
            notification_frequency: frequency_from_name(&self.notification_frequency) as i32,
            quiet_hours_start: validate::format_local_time(self.quiet_hours_start),
            quiet_hours_end: validate::format_local_time(self.quiet_hours_end),
            data_sharing_consent: self.data_sharing_consent,
            transparency_level: transparency_from_name(&self.transparency_level) as i32,
            language_preference: self.language_preference,
            update_time: optional_timestamp(self.update_time),
        }
    }
}

fn frequency_from_name(name: &str) -> pb::NotificationFrequency {
    match name {
        "minimal" => pb::NotificationFrequency::Minimal,
        "reduced" => pb::NotificationFrequency::Reduced,
        "normal" => pb::NotificationFrequency::Normal,
        _ => pb::NotificationFrequency::Unspecified,
    }
}

fn frequency_name(value: i32) -> Option<&'static str> {
    match pb::NotificationFrequency::try_from(value).ok()? {
        pb::NotificationFrequency::Minimal => Some("minimal"),
        pb::NotificationFrequency::Reduced => Some("reduced"),
        pb::NotificationFrequency::Normal => Some("normal"),
        pb::NotificationFrequency::Unspecified => None,
    }
}

fn transparency_from_name(name: &str) -> pb::TransparencyLevel {
    match name {
        "minimal" => pb::TransparencyLevel::Minimal,
        "balanced" => pb::TransparencyLevel::Balanced,
        "detailed" => pb::TransparencyLevel::Detailed,
        _ => pb::TransparencyLevel::Unspecified,
    }
}

fn transparency_name(value: i32) -> Option<&'static str> {
    match pb::TransparencyLevel::try_from(value).ok()? {
        pb::TransparencyLevel::Minimal => Some("minimal"),
        pb::TransparencyLevel::Balanced => Some("balanced"),
        pb::TransparencyLevel::Detailed => Some("detailed"),
        pb::TransparencyLevel::Unspecified => None,
    }
}

/// The stored preferences, `None` when the user never wrote any, or NOT_FOUND
/// when there is no such user. `lock` serialises concurrent updates per user.
async fn load(
    conn: &mut sqlx::PgConnection,
    user: Uuid,
    lock: bool,
) -> ApiResult<Option<PreferencesRow>> {
    let exists: Option<Uuid> = sqlx::query_scalar(if lock {
        "SELECT id FROM users WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT id FROM users WHERE id = $1"
    })
    .bind(user)
    .fetch_optional(&mut *conn)
    .await?;
    if exists.is_none() {
        return Err(ApiError::not_found(format!("no user with id {user}")));
    }
    Ok(
        sqlx::query_as("SELECT * FROM agent_preferences WHERE user_id = $1")
            .bind(user)
            .fetch_optional(&mut *conn)
            .await?,
    )
}

#[tracing::instrument(skip(pool))]
pub async fn get(
    pool: &PgPool,
    request: pb::GetAgentPreferencesRequest,
) -> ApiResult<pb::GetAgentPreferencesResponse> {
    let user = parse_uuid("user_id", &request.user_id)?;
    let mut conn = pool.acquire().await?;
    let row = load(&mut conn, user, false)
        .await?
        .unwrap_or_else(PreferencesRow::defaults);
    Ok(pb::GetAgentPreferencesResponse {
        preferences: Some(row.into_proto(user)),
    })
}

const UPDATABLE: [&str; 7] = [
    "enabled_agents",
    "notification_frequency",
    "quiet_hours_start",
    "quiet_hours_end",
    "data_sharing_consent",
    "transparency_level",
    "language_preference",
];

const MAX_AGENTS: usize = 32;

/// Applies the masked fields of `input` onto `row`, naming every bad field.
fn apply(
    row: &mut PreferencesRow,
    input: &pb::AgentPreferences,
    paths: &[String],
    violations: &mut Violations,
) {
    for path in paths {
        let field = format!("preferences.{path}");
        match path.as_str() {
            "enabled_agents" => {
                let mut agents: Vec<String> = Vec::new();
                for agent in &input.enabled_agents {
                    if violations
                        .check(validate::identifier(&field, agent, 64, "_-"))
                        .is_some()
                        && !agents.contains(agent)
                    {
                        agents.push(agent.clone());
                    }
                }
                if agents.len() > MAX_AGENTS {
                    violations.push(&field, format!("must name at most {MAX_AGENTS} agents"));
                }
                row.enabled_agents = agents;
            }
            "notification_frequency" => match frequency_name(input.notification_frequency) {
                Some(name) => row.notification_frequency = name.into(),
                None => violations.push(&field, "must be MINIMAL, REDUCED or NORMAL"),
            },
            "quiet_hours_start" => {
                if let Some(t) =
                    violations.check(validate::local_time(&field, &input.quiet_hours_start))
                {
                    row.quiet_hours_start = t;
                }
            }
            "quiet_hours_end" => {
                if let Some(t) =
                    violations.check(validate::local_time(&field, &input.quiet_hours_end))
                {
                    row.quiet_hours_end = t;
                }
            }
            "data_sharing_consent" => row.data_sharing_consent = input.data_sharing_consent,
            "transparency_level" => match transparency_name(input.transparency_level) {
                Some(name) => row.transparency_level = name.into(),
                None => violations.push(&field, "must be MINIMAL, BALANCED or DETAILED"),
            },
            "language_preference" => {
                if let Some(code) =
                    violations.check(validate::language(&field, &input.language_preference, ""))
                {
                    row.language_preference = code;
                }
            }
            _ => unreachable!("field_mask::paths admits only UPDATABLE"),
        }
    }
}

#[tracing::instrument(skip_all)]
pub async fn update(
    pool: &PgPool,
    request: pb::UpdateAgentPreferencesRequest,
) -> ApiResult<pb::UpdateAgentPreferencesResponse> {
    let Some(input) = request.preferences else {
        return Err(ApiError::invalid("preferences", "is required"));
    };
    // Validate everything before looking the user up: bad input is
    // INVALID_ARGUMENT whether or not the user exists, and the apply in the
    // transaction below cannot fail.
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("preferences.user_id", &input.user_id));
    let paths = violations
        .merge(field_mask::paths(request.update_mask.as_ref(), &UPDATABLE))
        .unwrap_or_default();
    apply(
        &mut PreferencesRow::defaults(),
        &input,
        &paths,
        &mut violations,
    );
    violations.into_result()?;
    let user = user.expect("validated");

    let mut tx = pool.begin().await?;
    let mut row = load(&mut tx, user, true)
        .await?
        .unwrap_or_else(PreferencesRow::defaults);
    apply(&mut row, &input, &paths, &mut Violations::default());
    let stored: PreferencesRow = sqlx::query_as(
        "INSERT INTO agent_preferences (user_id, enabled_agents, notification_frequency,
            quiet_hours_start, quiet_hours_end, data_sharing_consent, transparency_level,
            language_preference)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (user_id) DO UPDATE SET
            enabled_agents = EXCLUDED.enabled_agents,
            notification_frequency = EXCLUDED.notification_frequency,
            quiet_hours_start = EXCLUDED.quiet_hours_start,
            quiet_hours_end = EXCLUDED.quiet_hours_end,
            data_sharing_consent = EXCLUDED.data_sharing_consent,
            transparency_level = EXCLUDED.transparency_level,
            language_preference = EXCLUDED.language_preference
         RETURNING *",
    )
    .bind(user)
    .bind(&row.enabled_agents)
    .bind(&row.notification_frequency)
    .bind(row.quiet_hours_start)
    .bind(row.quiet_hours_end)
    .bind(row.data_sharing_consent)
    .bind(&row.transparency_level)
    .bind(&row.language_preference)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(pb::UpdateAgentPreferencesResponse {
        preferences: Some(stored.into_proto(user)),
    })
}

#[derive(sqlx::FromRow)]
struct OnboardingRow {
    completed_steps: Vec<String>,
    complete_time: Option<DateTime<Utc>>,
}

fn onboarding(user: Uuid, row: Option<OnboardingRow>) -> pb::Onboarding {
    let row = row.unwrap_or(OnboardingRow {
        completed_steps: Vec::new(),
        complete_time: None,
    });
    pb::Onboarding {
        user_id: user.to_string(),
        completed_steps: row.completed_steps,
        complete_time: row.complete_time.map(timestamp),
    }
}

#[tracing::instrument(skip(pool))]
pub async fn get_onboarding(
    pool: &PgPool,
    request: pb::GetOnboardingRequest,
) -> ApiResult<pb::GetOnboardingResponse> {
    let user = parse_uuid("user_id", &request.user_id)?;
    let (found, completed_steps, complete_time): (
        bool,
        Option<Vec<String>>,
        Option<DateTime<Utc>>,
    ) = sqlx::query_as(
        "SELECT o.user_id IS NOT NULL, o.completed_steps, o.complete_time
             FROM users u LEFT JOIN onboarding o ON o.user_id = u.id WHERE u.id = $1",
    )
    .bind(user)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("no user with id {user}")))?;
    let row = found.then(|| OnboardingRow {
        completed_steps: completed_steps.unwrap_or_default(),
        complete_time,
    });
    Ok(pb::GetOnboardingResponse {
        onboarding: Some(onboarding(user, row)),
    })
}

#[tracing::instrument(skip(pool))]
pub async fn complete_step(
    pool: &PgPool,
    request: pb::CompleteOnboardingStepRequest,
) -> ApiResult<pb::CompleteOnboardingStepResponse> {
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    violations.check(validate::identifier("step", &request.step, 64, "_"));
    violations.into_result()?;
    let user = user.expect("validated");
    // One statement, so repeats and races add a step once and keep the first completion time.
    let row: OnboardingRow = sqlx::query_as(
        "INSERT INTO onboarding AS o (user_id, completed_steps, complete_time)
         VALUES ($1, ARRAY[$2], CASE WHEN $3 THEN now() END)
         ON CONFLICT (user_id) DO UPDATE SET
            completed_steps = CASE WHEN $2 = ANY (o.completed_steps) THEN o.completed_steps
                                   ELSE array_append(o.completed_steps, $2) END,
            complete_time = COALESCE(o.complete_time, CASE WHEN $3 THEN now() END)
         RETURNING completed_steps, complete_time",
    )
    .bind(user)
    .bind(&request.step)
    .bind(request.finish)
    .fetch_one(pool)
    .await
    .map_err(|e| ApiError::from(e).or_missing(|| format!("no user with id {user}")))?;
    Ok(pb::CompleteOnboardingStepResponse {
        onboarding: Some(onboarding(user, Some(row))),
    })
}
