//! Feature flags with gradual rollout.
//!
//! The rollout decision hashes (flag name, user id) with 64-bit FNV-1a and
//! takes it modulo 100: stable across calls, replicas and releases (the hash is
//! spelled out here, not borrowed from a std hasher that may change), and
//! different per flag, so the same users are not always first in line.

use chrono::{DateTime, Utc};
use mesh_proto::mesh::users::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, FieldViolation, Violations,
    convert::{parse_uuid, timestamp},
    field_mask, pagination,
};
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::validate;

const MAX_TARGETS: usize = 10_000;

#[derive(sqlx::FromRow)]
struct FlagRow {
    name: String,
    description: String,
    enabled: bool,
    rollout_percentage: i32,
    target_user_ids: Vec<Uuid>,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl From<FlagRow> for pb::FeatureFlag {
    fn from(row: FlagRow) -> Self {
        Self {
            name: row.name,
            description: row.description,
            enabled: row.enabled,
            rollout_percentage: row.rollout_percentage,
            target_user_ids: row.target_user_ids.iter().map(Uuid::to_string).collect(),
            create_time: Some(timestamp(row.create_time)),
            update_time: Some(timestamp(row.update_time)),
        }
    }
}

fn flag_name(field: &str, name: &str) -> Result<(), FieldViolation> {
    validate::identifier(field, name, 100, "_-.")
}

/// The validated values of the fields in `paths`.
struct FlagFields {
    description: String,
    rollout_percentage: i32,
    target_user_ids: Vec<Uuid>,
}

/// Checks the fields in `paths`, adding to `violations` (what was already
/// found wrong elsewhere in the request) so that every bad field is named.
fn validate_fields(
    flag: &pb::FeatureFlag,
    paths: &[&str],
    mut violations: Violations,
) -> ApiResult<FlagFields> {
    if paths.contains(&"description") {
        violations.check(validate::max_chars(
            "flag.description",
            &flag.description,
            1000,
        ));
    }
    if paths.contains(&"rollout_percentage") && !(0..=100).contains(&flag.rollout_percentage) {
        violations.push("flag.rollout_percentage", "must be 0 to 100");
    }
    let mut targets = Vec::new();
    if paths.contains(&"target_user_ids") {
        for raw in &flag.target_user_ids {
            if let Some(id) = violations.check(parse_uuid("flag.target_user_ids", raw))
                && !targets.contains(&id)
            {
                targets.push(id);
            }
        }
        if targets.len() > MAX_TARGETS {
            violations.push(
                "flag.target_user_ids",
                format!("must name at most {MAX_TARGETS} users"),
            );
        }
    }
    violations.into_result()?;
    Ok(FlagFields {
        description: flag.description.clone(),
        rollout_percentage: flag.rollout_percentage,
        target_user_ids: targets,
    })
}

const UPDATABLE: [&str; 4] = [
    "description",
    "enabled",
    "rollout_percentage",
    "target_user_ids",
];

#[tracing::instrument(skip_all)]
pub async fn create(
    pool: &PgPool,
    request: pb::CreateFeatureFlagRequest,
) -> ApiResult<pb::CreateFeatureFlagResponse> {
    let Some(flag) = request.flag else {
        return Err(ApiError::invalid("flag", "is required"));
    };
    let mut violations = Violations::default();
    violations.check(flag_name("flag.name", &flag.name));
    let fields = validate_fields(&flag, &UPDATABLE, violations)?;
    let row: FlagRow = sqlx::query_as(
        "INSERT INTO feature_flags (name, description, enabled, rollout_percentage, target_user_ids)
         VALUES ($1, $2, $3, $4, $5) RETURNING *",
    )
    .bind(&flag.name)
    .bind(&fields.description)
    .bind(flag.enabled)
    .bind(fields.rollout_percentage)
    .bind(&fields.target_user_ids)
    .fetch_one(pool)
    .await
    .map_err(|e| ApiError::from(e).or_conflict(|| format!("a flag named {:?} already exists", flag.name)))?;
    Ok(pb::CreateFeatureFlagResponse {
        flag: Some(row.into()),
    })
}

#[tracing::instrument(skip_all)]
pub async fn update(
    pool: &PgPool,
    request: pb::UpdateFeatureFlagRequest,
) -> ApiResult<pb::UpdateFeatureFlagResponse> {
    let Some(flag) = request.flag else {
        return Err(ApiError::invalid("flag", "is required"));
    };
    let mut violations = Violations::default();
    violations.check(flag_name("flag.name", &flag.name));
    let paths = violations
        .merge(field_mask::paths(request.update_mask.as_ref(), &UPDATABLE))
        .unwrap_or_default();
    let path_refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    // With a bad mask, no value is checked (paths is empty) and the mask is named.
    let fields = validate_fields(&flag, &path_refs, violations)?;

    let mut query = QueryBuilder::<Postgres>::new("UPDATE feature_flags SET ");
    let mut set = query.separated(", ");
    for path in &path_refs {
        match *path {
            "description" => set
                .push("description = ")
                .push_bind_unseparated(fields.description.clone()),
            "enabled" => set.push("enabled = ").push_bind_unseparated(flag.enabled),
            "rollout_percentage" => set
                .push("rollout_percentage = ")
                .push_bind_unseparated(fields.rollout_percentage),
            "target_user_ids" => set
                .push("target_user_ids = ")
                .push_bind_unseparated(fields.target_user_ids.clone()),
            _ => unreachable!("field_mask::paths admits only UPDATABLE"),
        };
    }
    query
        .push(" WHERE name = ")
        .push_bind(&flag.name)
        .push(" RETURNING *");
    let row: FlagRow = query
        .build_query_as()
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no flag named {:?}", flag.name)))?;
    Ok(pb::UpdateFeatureFlagResponse {
        flag: Some(row.into()),
    })
}

#[tracing::instrument(skip_all)]
pub async fn list(
    pool: &PgPool,
    request: pb::ListFeatureFlagsRequest,
) -> ApiResult<pb::ListFeatureFlagsResponse> {
    let mut violations = Violations::default();
    let page =
        pagination::Page::<String>::check(&mut violations, request.page_size, &request.page_token);
    violations.into_result()?;
    let page = page.expect("validated");
    let mut rows: Vec<FlagRow> = sqlx::query_as(
        "SELECT * FROM feature_flags WHERE ($1::text IS NULL OR name > $1) ORDER BY name LIMIT $2",
    )
    .bind(&page.after)
    .bind(page.size + 1)
    .fetch_all(pool)
    .await?;
    let next_page_token = pagination::next_page(&mut rows, page.size, |f| f.name.clone());
    Ok(pb::ListFeatureFlagsResponse {
        flags: rows.into_iter().map(Into::into).collect(),
        next_page_token,
    })
}

#[tracing::instrument(skip(pool))]
pub async fn is_enabled(
    pool: &PgPool,
    request: pb::IsFeatureEnabledRequest,
) -> ApiResult<pb::IsFeatureEnabledResponse> {
    let mut violations = Violations::default();
    violations.check(validate::identifier(
        "flag_name",
        &request.flag_name,
        100,
        "_-.",
    ));
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    violations.into_result()?;
    let user = user.expect("validated");
    let (enabled, rollout, targeted): (bool, i32, bool) = sqlx::query_as(
        "SELECT enabled, rollout_percentage, $2 = ANY (target_user_ids)
         FROM feature_flags WHERE name = $1",
    )
    .bind(&request.flag_name)
    .bind(user)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("no flag named {:?}", request.flag_name)))?;
    let decision = decide(&request.flag_name, user, enabled, rollout, targeted);
    Ok(pb::IsFeatureEnabledResponse {
        enabled: matches!(
            decision,
            pb::FeatureDecision::Targeted | pb::FeatureDecision::InRollout
        ),
        decision: decision as i32,
    })
}

fn decide(
    flag: &str,
    user: Uuid,
    enabled: bool,
    rollout: i32,
    targeted: bool,
) -> pb::FeatureDecision {
    if targeted {
        pb::FeatureDecision::Targeted
    } else if !enabled {
        pb::FeatureDecision::FlagDisabled
    } else if (rollout_bucket(flag, user) as i32) < rollout {
        pb::FeatureDecision::InRollout
    } else {
        pb::FeatureDecision::OutsideRollout
    }
}

/// 0..=99, from FNV-1a 64 of `"<flag>:<user id>"`.
pub fn rollout_bucket(flag: &str, user: Uuid) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let key = format!("{flag}:{user}");
    let hash = key.bytes().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    hash % 100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        // Pinned values: a change here would move users in and out of rollouts.
        let user = Uuid::parse_str("01890a5d-ac96-774b-bcce-b302099a8057").unwrap();
        // FNV-1a 64 of "<flag>:<user>", mod 100.
        assert_eq!(rollout_bucket("new_onboarding", user), 61);
        assert_eq!(rollout_bucket("dark_mode", user), 23);
        let mut counts = [0u32; 10];
        for _ in 0..10_000 {
            counts[(rollout_bucket("f", Uuid::new_v4()) / 10) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn decisions() {
        let user = Uuid::new_v4();
        assert_eq!(
            decide("f", user, false, 100, true),
            pb::FeatureDecision::Targeted
        );
        assert_eq!(
            decide("f", user, false, 100, false),
            pb::FeatureDecision::FlagDisabled
        );
        assert_eq!(
            decide("f", user, true, 0, true),
            pb::FeatureDecision::Targeted
        );
        assert_eq!(
            decide("f", user, true, 100, false),
            pb::FeatureDecision::InRollout
        );
        assert_eq!(
            decide("f", user, true, 0, false),
            pb::FeatureDecision::OutsideRollout
        );
    }
}
