//! The devices a user has the app on, for push notifications.

use chrono::{DateTime, Utc};
use mesh_proto::mesh::users::v1 as pb;
use mesh_runtime::FieldViolation;
use mesh_runtime::{
    ApiError, ApiResult, Violations,
    convert::{parse_uuid, timestamp},
    pagination,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::users;

#[derive(sqlx::FromRow)]
struct DeviceRow {
    user_id: Uuid,
    device_id: String,
    platform: String,
    push_token: String,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl From<DeviceRow> for pb::Device {
    fn from(row: DeviceRow) -> Self {
        let platform = match row.platform.as_str() {
            "ios" => pb::DevicePlatform::Ios,
            "android" => pb::DevicePlatform::Android,
            "web" => pb::DevicePlatform::Web,
            _ => pb::DevicePlatform::Unspecified,
        };
        Self {
            user_id: row.user_id.to_string(),
            device_id: row.device_id,
            platform: platform as i32,
            push_token: row.push_token,
            create_time: Some(timestamp(row.create_time)),
            update_time: Some(timestamp(row.update_time)),
        }
    }
}

fn platform_name(value: i32) -> Option<&'static str> {
    match pb::DevicePlatform::try_from(value).ok()? {
        pb::DevicePlatform::Ios => Some("ios"),
        pb::DevicePlatform::Android => Some("android"),
        pb::DevicePlatform::Web => Some("web"),
        pb::DevicePlatform::Unspecified => None,
    }
}

/// The contract's limit is in characters, not bytes.
fn device_id(field: &str, value: &str) -> Result<(), FieldViolation> {
    if value.is_empty() || value.chars().count() > 256 {
        return Err(FieldViolation::new(field, "must be 1 to 256 characters"));
    }
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn register(
    pool: &PgPool,
    request: pb::RegisterDeviceRequest,
) -> ApiResult<pb::RegisterDeviceResponse> {
    let Some(device) = request.device else {
        return Err(ApiError::invalid("device", "is required"));
    };
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("device.user_id", &device.user_id));
    violations.check(device_id("device.device_id", &device.device_id));
    let platform = platform_name(device.platform);
    if platform.is_none() {
        violations.push(
            "device.platform",
            "must be DEVICE_PLATFORM_IOS, _ANDROID or _WEB",
        );
    }
    violations.check(crate::validate::max_chars(
        "device.push_token",
        &device.push_token,
        4096,
    ));
    violations.into_result()?;
    let user = user.expect("validated");

    let RowWithCreated {
        device: row,
        created,
    } = sqlx::query_as(
        "INSERT INTO devices (user_id, device_id, platform, push_token) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id, device_id)
         DO UPDATE SET platform = EXCLUDED.platform, push_token = EXCLUDED.push_token
         RETURNING devices.*, (xmax = 0) AS created",
    )
    .bind(user)
    .bind(&device.device_id)
    .bind(platform)
    .bind(&device.push_token)
    .fetch_one(pool)
    .await
    .map_err(|e| ApiError::from(e).or_missing(|| format!("no user with id {user}")))?;
    Ok(pb::RegisterDeviceResponse {
        device: Some(row.into()),
        created,
    })
}

/// A device row plus whether the upsert inserted it (`xmax = 0` holds only
/// for a freshly inserted row version).
#[derive(sqlx::FromRow)]
struct RowWithCreated {
    #[sqlx(flatten)]
    device: DeviceRow,
    created: bool,
}

#[tracing::instrument(skip_all)]
pub async fn list(
    pool: &PgPool,
    request: pb::ListDevicesRequest,
) -> ApiResult<pb::ListDevicesResponse> {
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    let page =
        pagination::Page::<String>::check(&mut violations, request.page_size, &request.page_token);
    violations.into_result()?;
    let (user, page) = (user.expect("validated"), page.expect("validated"));
    let mut rows: Vec<DeviceRow> = sqlx::query_as(
        "SELECT * FROM devices WHERE user_id = $1 AND ($2::text IS NULL OR device_id > $2)
         ORDER BY device_id LIMIT $3",
    )
    .bind(user)
    .bind(&page.after)
    .bind(page.size + 1)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        // An empty page: tell "no devices" from "no such user".
        users::find(pool, user).await?;
    }
    let next_page_token = pagination::next_page(&mut rows, page.size, |d| d.device_id.clone());
    Ok(pb::ListDevicesResponse {
        devices: rows.into_iter().map(Into::into).collect(),
        next_page_token,
    })
}

#[tracing::instrument(skip(pool))]
pub async fn deregister(
    pool: &PgPool,
    request: pb::DeregisterDeviceRequest,
) -> ApiResult<pb::DeregisterDeviceResponse> {
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    violations.check(device_id("device_id", &request.device_id));
    violations.into_result()?;
    let user = user.expect("validated");
    let deleted = sqlx::query("DELETE FROM devices WHERE user_id = $1 AND device_id = $2")
        .bind(user)
        .bind(&request.device_id)
        .execute(pool)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::not_found(format!(
            "user {user} has no device {:?}",
            request.device_id
        )));
    }
    Ok(pb::DeregisterDeviceResponse {})
}
