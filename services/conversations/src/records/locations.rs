//! Locations the user shared (WhatsApp location messages).

use chrono::{DateTime, Utc};
use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, FieldViolation, Violations,
    convert::{parse_uuid, timestamp},
    idempotency,
};
use sqlx::PgPool;
use uuid::Uuid;

use super::{list_page, parents};
use crate::wire;

#[derive(sqlx::FromRow)]
struct LocationRow {
    id: Uuid,
    user_id: Uuid,
    message_id: Option<Uuid>,
    latitude: f64,
    longitude: f64,
    name: String,
    address: String,
    create_time: DateTime<Utc>,
}

impl From<LocationRow> for pb::UserLocation {
    fn from(row: LocationRow) -> Self {
        Self {
            id: row.id.to_string(),
            user_id: row.user_id.to_string(),
            message_id: row.message_id.map(|m| m.to_string()).unwrap_or_default(),
            latitude: row.latitude,
            longitude: row.longitude,
            name: row.name,
            address: row.address,
            create_time: Some(timestamp(row.create_time)),
        }
    }
}

/// Degrees within ±`limit`; NaN and infinities are no place.
fn degrees(field: &str, value: f64, limit: f64) -> Result<(), FieldViolation> {
    if !value.is_finite() || !(-limit..=limit).contains(&value) {
        return Err(FieldViolation::new(
            field,
            format!("must be a number from -{limit} to {limit}"),
        ));
    }
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn record_location(
    pool: &PgPool,
    request: pb::RecordLocationRequest,
) -> ApiResult<pb::RecordLocationResponse> {
    let Some(location) = &request.location else {
        return Err(ApiError::invalid("location", "is required"));
    };
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("location.user_id", &location.user_id));
    let message = violations.check(wire::optional_uuid(
        "location.message_id",
        &location.message_id,
    ));
    violations.check(degrees("location.latitude", location.latitude, 90.0));
    violations.check(degrees("location.longitude", location.longitude, 180.0));
    violations.check(wire::text("location.name", &location.name, 500));
    violations.check(wire::text("location.address", &location.address, 1000));
    violations.check(idempotency::check_request_id(&request.request_id));
    violations.into_result()?;
    let (user, message) = (user.expect("validated"), message.expect("validated"));

    let key = idempotency::Key {
        operation: "RecordLocation",
        request_id: &request.request_id,
        user_id: Some(user),
    };
    idempotency::run_once(pool, key, &request, async |conn| {
        if let Some(message) = message {
            parents::message(&mut *conn, "location.message_id", message, user, None).await?;
        }
        let row: LocationRow = sqlx::query_as(
            "INSERT INTO user_locations (id, user_id, message_id, latitude, longitude, name, address)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
        )
        .bind(Uuid::now_v7())
        .bind(user)
        .bind(message)
        .bind(location.latitude)
        .bind(location.longitude)
        .bind(&location.name)
        .bind(&location.address)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| ApiError::from(e).or_missing(|| format!("no message with id {}", location.message_id)))?;
        Ok(pb::RecordLocationResponse {
            location: Some(row.into()),
        })
    })
    .await
}

#[tracing::instrument(skip_all)]
pub async fn list_locations(
    pool: &PgPool,
    request: pb::ListLocationsRequest,
) -> ApiResult<pb::ListLocationsResponse> {
    let (_, locations, next_page_token) = list_page(
        pool,
        "user_locations",
        "user_id",
        &request.user_id,
        request.page_size,
        &request.page_token,
        |r: &LocationRow| r.id,
    )
    .await?;
    Ok(pb::ListLocationsResponse {
        locations,
        next_page_token,
    })
}
