//! Users: create, read, get-or-create from a WhatsApp contact, update by field
//! mask, list, deactivate, delete, and the last-message clock.

use chrono::{DateTime, NaiveTime, Utc};
use mesh_proto::mesh::users::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, Violations,
    convert::{
        from_timestamp, json_to_struct, optional_timestamp, parse_uuid, struct_to_json, timestamp,
    },
    field_mask, idempotency, pagination,
};
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::{erasure, validate};

/// How far ahead of this server's clock a caller's message time may be.
const MAX_CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// Largest `preferences` document, as JSON text.
const MAX_PREFERENCES_BYTES: usize = 16 * 1024;

#[derive(sqlx::FromRow)]
pub struct UserRow {
    pub(crate) id: Uuid,
    phone: Option<String>,
    whatsapp_profile_name: String,
    display_name: String,
    language: String,
    timezone: String,
    preferences: serde_json::Value,
    companion_name: String,
    preferred_checkin_time: Option<NaiveTime>,
    support_style: String,
    is_active: bool,
    last_message_time: Option<DateTime<Utc>>,
    telegram_user_id: Option<i64>,
    telegram_username: String,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
    /// Set when an erasure of the user began.
    pub(crate) erase_time: Option<DateTime<Utc>>,
}

impl From<UserRow> for pb::User {
    fn from(row: UserRow) -> Self {
        Self {
            id: row.id.to_string(),
            phone: row.phone,
            whatsapp_profile_name: row.whatsapp_profile_name,
            display_name: row.display_name,
            language: row.language,
            timezone: row.timezone,
            preferences: Some(json_to_struct(&row.preferences)),
            companion_name: row.companion_name,
            preferred_checkin_time: row
                .preferred_checkin_time
                .map(validate::format_local_time)
                .unwrap_or_default(),
            support_style: row.support_style,
            is_active: row.is_active,
            last_message_time: optional_timestamp(row.last_message_time),
            telegram_user_id: row.telegram_user_id,
            telegram_username: row.telegram_username,
            create_time: Some(timestamp(row.create_time)),
            update_time: Some(timestamp(row.update_time)),
        }
    }
}

/// The writable fields of a user, validated.
struct UserFields {
    phone: Option<String>,
    whatsapp_profile_name: String,
    display_name: String,
    language: String,
    timezone: String,
    preferences: serde_json::Value,
    companion_name: String,
    preferred_checkin_time: Option<NaiveTime>,
    support_style: String,
    telegram_user_id: Option<i64>,
    telegram_username: String,
}

impl UserFields {
    fn validate(user: &pb::User, violations: &mut Violations) -> Option<Self> {
        let phone = match user.phone.as_deref() {
            None | Some("") => Some(None),
            Some(raw) => violations
                .check(validate::phone("user.phone", raw))
                .map(Some),
        };
        let language = violations.check(validate::language(
            "user.language",
            &user.language,
            validate::DEFAULT_LANGUAGE,
        ));
        let timezone = violations.check(validate::timezone("user.timezone", &user.timezone));
        let checkin = violations.check(validate::optional_local_time(
            "user.preferred_checkin_time",
            &user.preferred_checkin_time,
        ));
        for (field, value, max) in [
            (
                "user.whatsapp_profile_name",
                &user.whatsapp_profile_name,
                200,
            ),
            ("user.display_name", &user.display_name, 200),
            ("user.companion_name", &user.companion_name, 100),
            ("user.support_style", &user.support_style, 64),
            ("user.telegram_username", &user.telegram_username, 64),
        ] {
            violations.check(validate::max_chars(field, value, max));
        }
        if let Some(id) = user.telegram_user_id {
            violations.check(validate::telegram_user_id("user.telegram_user_id", id));
        }
        let preferences = user
            .preferences
            .as_ref()
            .map(struct_to_json)
            .unwrap_or_else(|| serde_json::json!({}));
        if preferences.to_string().len() > MAX_PREFERENCES_BYTES {
            violations.push(
                "user.preferences",
                format!("must be at most {MAX_PREFERENCES_BYTES} bytes as JSON"),
            );
        }
        Some(Self {
            phone: phone?,
            whatsapp_profile_name: user.whatsapp_profile_name.clone(),
            display_name: user.display_name.clone(),
            language: language?,
            timezone: timezone?,
            preferences,
            companion_name: user.companion_name.clone(),
            preferred_checkin_time: checkin?,
            support_style: user.support_style.clone(),
            telegram_user_id: user.telegram_user_id,
            telegram_username: user.telegram_username.clone(),
        })
    }
}

#[tracing::instrument(skip_all)]
pub async fn create(
    pool: &PgPool,
    request: pb::CreateUserRequest,
) -> ApiResult<pb::CreateUserResponse> {
    let mut violations = Violations::default();
    let fields = match &request.user {
        Some(user) => UserFields::validate(user, &mut violations),
        None => {
            violations.push("user", "is required");
            None
        }
    };
    violations.check(idempotency::check_request_id(&request.request_id));
    violations.into_result()?;
    let fields = fields.expect("validated");
    let id = Uuid::now_v7();
    let key = idempotency::Key {
        operation: "CreateUser",
        request_id: &request.request_id,
        user_id: Some(id),
    };
    idempotency::run_once(pool, key, &request, async |conn| {
        let row: UserRow = sqlx::query_as(
            "INSERT INTO users (id, phone, whatsapp_profile_name, display_name, language, timezone,
                preferences, companion_name, preferred_checkin_time, support_style,
                telegram_user_id, telegram_username)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             RETURNING *",
        )
        .bind(id)
        .bind(&fields.phone)
        .bind(&fields.whatsapp_profile_name)
        .bind(&fields.display_name)
        .bind(&fields.language)
        .bind(&fields.timezone)
        .bind(&fields.preferences)
        .bind(&fields.companion_name)
        .bind(fields.preferred_checkin_time)
        .bind(&fields.support_style)
        .bind(fields.telegram_user_id)
        .bind(&fields.telegram_username)
        .fetch_one(&mut *conn)
        .await?;
        Ok(pb::CreateUserResponse {
            user: Some(row.into()),
        })
    })
    .await
}

#[tracing::instrument(skip(pool))]
pub async fn find(pool: &PgPool, id: Uuid) -> ApiResult<UserRow> {
    sqlx::query_as("SELECT * FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user with id {id}")))
}

pub async fn get(pool: &PgPool, request: pb::GetUserRequest) -> ApiResult<pb::GetUserResponse> {
    let id = parse_uuid("user_id", &request.user_id)?;
    Ok(pb::GetUserResponse {
        user: Some(find(pool, id).await?.into()),
    })
}

// Not the phone: spans are exported, and a phone number is personal data.
#[tracing::instrument(skip_all)]
async fn find_by_phone(pool: &PgPool, phone: &str) -> ApiResult<Option<UserRow>> {
    Ok(sqlx::query_as("SELECT * FROM users WHERE phone = $1")
        .bind(phone)
        .fetch_optional(pool)
        .await?)
}

pub async fn get_by_phone(
    pool: &PgPool,
    request: pb::GetUserByPhoneRequest,
) -> ApiResult<pb::GetUserByPhoneResponse> {
    let phone = validate::phone("phone", &request.phone)?;
    let row = find_by_phone(pool, &phone)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user with phone {phone}")))?;
    erasure::refuse_if_erasing(row.id, row.erase_time)?;
    Ok(pb::GetUserByPhoneResponse {
        user: Some(row.into()),
    })
}

#[tracing::instrument(skip(pool))]
pub async fn get_by_telegram_id(
    pool: &PgPool,
    request: pb::GetUserByTelegramIdRequest,
) -> ApiResult<pb::GetUserByTelegramIdResponse> {
    validate::telegram_user_id("telegram_user_id", request.telegram_user_id)?;
    let row: UserRow = sqlx::query_as("SELECT * FROM users WHERE telegram_user_id = $1")
        .bind(request.telegram_user_id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no user with Telegram id {}",
                request.telegram_user_id
            ))
        })?;
    erasure::refuse_if_erasing(row.id, row.erase_time)?;
    Ok(pb::GetUserByTelegramIdResponse {
        user: Some(row.into()),
    })
}

/// Reads first: almost every call is for a known contact whose name has not
/// changed, and that costs one indexed read and no write.
#[tracing::instrument(skip_all)]
pub async fn upsert_by_phone(
    pool: &PgPool,
    request: pb::UpsertUserByPhoneRequest,
) -> ApiResult<pb::UpsertUserByPhoneResponse> {
    let mut violations = Violations::default();
    let phone = violations.check(validate::phone("phone", &request.phone));
    let name = request.profile_name.trim();
    violations.check(validate::max_chars("profile_name", name, 200));
    violations.into_result()?;
    let phone = phone.expect("validated");

    let (row, created) = match find_by_phone(pool, &phone).await? {
        Some(row) => {
            erasure::refuse_if_erasing(row.id, row.erase_time)?;
            (refresh_profile_name(pool, row, name).await?, false)
        }
        None => {
            let inserted: Option<UserRow> = sqlx::query_as(
                "INSERT INTO users (id, phone, whatsapp_profile_name) VALUES ($1, $2, $3)
                 ON CONFLICT (phone) DO NOTHING RETURNING *",
            )
            .bind(Uuid::now_v7())
            .bind(&phone)
            .bind(name)
            .fetch_optional(pool)
            .await?;
            match inserted {
                Some(row) => (row, true),
                // A concurrent call created it between our read and insert.
                None => {
                    let row = find_by_phone(pool, &phone)
                        .await?
                        .ok_or_else(deleted_meanwhile)?;
                    (refresh_profile_name(pool, row, name).await?, false)
                }
            }
        }
    };
    erasure::refuse_if_erasing(row.id, row.erase_time)?;
    Ok(pb::UpsertUserByPhoneResponse {
        user: Some(row.into()),
        created,
    })
}

/// The user was deleted between two statements of an upsert: the caller may
/// retry (and get a new user), but must not get the erased one back.
fn deleted_meanwhile() -> ApiError {
    ApiError::Unavailable("the user was deleted meanwhile; retry".into())
}

async fn refresh_profile_name(pool: &PgPool, row: UserRow, name: &str) -> ApiResult<UserRow> {
    if name.is_empty() || row.whatsapp_profile_name == name {
        return Ok(row);
    }
    sqlx::query_as("UPDATE users SET whatsapp_profile_name = $2 WHERE id = $1 RETURNING *")
        .bind(row.id)
        .bind(name)
        .fetch_optional(pool)
        .await?
        .ok_or_else(deleted_meanwhile)
}

const UPDATABLE: [&str; 10] = [
    "phone",
    "whatsapp_profile_name",
    "display_name",
    "language",
    "timezone",
    "preferences",
    "companion_name",
    "preferred_checkin_time",
    "support_style",
    "is_active",
];

#[tracing::instrument(skip_all)]
pub async fn update(
    pool: &PgPool,
    request: pb::UpdateUserRequest,
) -> ApiResult<pb::UpdateUserResponse> {
    let Some(user) = request.user else {
        return Err(ApiError::invalid("user", "is required"));
    };
    let mut violations = Violations::default();
    let id = violations.check(parse_uuid("user.id", &user.id));
    let paths = violations.merge(field_mask::paths(request.update_mask.as_ref(), &UPDATABLE));
    // Fields outside the mask are ignored, so only the masked ones are validated.
    let fields = paths
        .as_ref()
        .and_then(|paths| UserFields::validate(&masked_user(&user, paths), &mut violations));
    violations.into_result()?;
    let (id, paths, fields) = (
        id.expect("validated"),
        paths.expect("validated"),
        fields.expect("validated"),
    );

    let mut query = QueryBuilder::<Postgres>::new("UPDATE users SET ");
    let mut set = query.separated(", ");
    for path in &paths {
        match path.as_str() {
            "phone" => set
                .push("phone = ")
                .push_bind_unseparated(fields.phone.clone()),
            "whatsapp_profile_name" => set
                .push("whatsapp_profile_name = ")
                .push_bind_unseparated(fields.whatsapp_profile_name.clone()),
            "display_name" => set
                .push("display_name = ")
                .push_bind_unseparated(fields.display_name.clone()),
            "language" => set
                .push("language = ")
                .push_bind_unseparated(fields.language.clone()),
            "timezone" => set
                .push("timezone = ")
                .push_bind_unseparated(fields.timezone.clone()),
            "preferences" => set
                .push("preferences = ")
                .push_bind_unseparated(fields.preferences.clone()),
            "companion_name" => set
                .push("companion_name = ")
                .push_bind_unseparated(fields.companion_name.clone()),
            "preferred_checkin_time" => set
                .push("preferred_checkin_time = ")
                .push_bind_unseparated(fields.preferred_checkin_time),
            "support_style" => set
                .push("support_style = ")
                .push_bind_unseparated(fields.support_style.clone()),
            "is_active" => set
                .push("is_active = ")
                .push_bind_unseparated(user.is_active),
            _ => unreachable!("mask::paths admits only UPDATABLE"),
        };
    }
    query
        .push(" WHERE id = ")
        .push_bind(id)
        .push(" AND erase_time IS NULL RETURNING *");
    let row: Option<UserRow> = query.build_query_as().fetch_optional(pool).await?;
    let Some(row) = row else {
        // Absent, or being erased: find out which to say.
        let erasing = find(pool, id).await?;
        erasure::refuse_if_erasing(id, erasing.erase_time)?;
        return Err(ApiError::internal(anyhow::anyhow!(
            "user {id} updated meanwhile"
        )));
    };
    Ok(pb::UpdateUserResponse {
        user: Some(row.into()),
    })
}

/// A user with only the fields named in `paths` copied from `user`.
fn masked_user(user: &pb::User, paths: &[String]) -> pb::User {
    let mut masked = pb::User::default();
    for path in paths {
        match path.as_str() {
            "phone" => masked.phone = user.phone.clone(),
            "whatsapp_profile_name" => {
                masked.whatsapp_profile_name = user.whatsapp_profile_name.clone()
            }
            "display_name" => masked.display_name = user.display_name.clone(),
            "language" => masked.language = user.language.clone(),
            "timezone" => masked.timezone = user.timezone.clone(),
            "preferences" => masked.preferences = user.preferences.clone(),
            "companion_name" => masked.companion_name = user.companion_name.clone(),
            "preferred_checkin_time" => {
                masked.preferred_checkin_time = user.preferred_checkin_time.clone()
            }
            "support_style" => masked.support_style = user.support_style.clone(),
            _ => {}
        }
    }
    masked
}

#[tracing::instrument(skip_all)]
pub async fn list(
    pool: &PgPool,
    request: pb::ListUsersRequest,
) -> ApiResult<pb::ListUsersResponse> {
    let mut violations = Violations::default();
    let page =
        pagination::Page::<Uuid>::check(&mut violations, request.page_size, &request.page_token);
    let since = request
        .last_message_after
        .as_ref()
        .and_then(|t| violations.check(from_timestamp("last_message_after", t)));
    let before = request
        .last_message_before
        .as_ref()
        .and_then(|t| violations.check(from_timestamp("last_message_before", t)));
    violations.into_result()?;
    let page = page.expect("validated");

    let mut query = QueryBuilder::<Postgres>::new("SELECT * FROM users WHERE true");
    if let Some(after) = page.after {
        query.push(" AND id > ").push_bind(after);
    }
    if let Some(active) = request.is_active {
        query.push(" AND is_active = ").push_bind(active);
    }
    if let Some(since) = since {
        query.push(" AND last_message_time >= ").push_bind(since);
    }
    if let Some(before) = before {
        query.push(" AND last_message_time < ").push_bind(before);
    }
    query.push(" ORDER BY id LIMIT ").push_bind(page.size + 1);
    let mut rows: Vec<UserRow> = query.build_query_as().fetch_all(pool).await?;
    let next_page_token = pagination::next_page(&mut rows, page.size, |row| row.id.to_string());
    Ok(pb::ListUsersResponse {
        users: rows.into_iter().map(Into::into).collect(),
        next_page_token,
    })
}

#[tracing::instrument(skip(pool))]
pub async fn deactivate(
    pool: &PgPool,
    request: pb::DeactivateUserRequest,
) -> ApiResult<pb::DeactivateUserResponse> {
    let id = parse_uuid("user_id", &request.user_id)?;
    let row: UserRow =
        sqlx::query_as("UPDATE users SET is_active = false WHERE id = $1 RETURNING *")
            .bind(id)
            .fetch_optional(pool)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no user with id {id}")))?;
    Ok(pb::DeactivateUserResponse {
        user: Some(row.into()),
    })
}

#[tracing::instrument(skip(pool))]
pub async fn touch_last_message(
    pool: &PgPool,
    request: pb::TouchLastMessageRequest,
) -> ApiResult<pb::TouchLastMessageResponse> {
    let id = parse_uuid("user_id", &request.user_id)?;
    let now = Utc::now();
    let at = match &request.message_time {
        Some(ts) => from_timestamp("message_time", ts)?,
        None => now,
    };
    // The clock only moves forward, so a time far ahead would stick: refuse it.
    if at > now + MAX_CLOCK_SKEW {
        return Err(ApiError::invalid(
            "message_time",
            format!(
                "must not be more than {} minutes in the future",
                MAX_CLOCK_SKEW.num_minutes()
            ),
        ));
    }
    // Only ever forward: a late or repeated touch leaves the row untouched.
    let moved: Option<DateTime<Utc>> = sqlx::query_scalar(
        "UPDATE users SET last_message_time = $2
         WHERE id = $1 AND (last_message_time IS NULL OR last_message_time < $2)
         RETURNING last_message_time",
    )
    .bind(id)
    .bind(at)
    .fetch_optional(pool)
    .await?;
    let stored = match moved {
        Some(time) => Some(time),
        None => find(pool, id).await?.last_message_time,
    };
    Ok(pb::TouchLastMessageResponse {
        last_message_time: optional_timestamp(stored),
    })
}
