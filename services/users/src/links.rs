//! Channel links: a one-time token, shown to the user on one channel
//! (WhatsApp), redeemed from another (a Telegram `/start <token>` deep link).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use mesh_proto::mesh::users::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult,
    convert::{parse_uuid, timestamp},
};
use rand::RngCore;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{erasure, users::UserRow};

const ALREADY_LINKED: &str = "this Telegram account is already linked to another user";
const USED: &str = "this link token was already used; ask for a new one";
const DEFAULT_TTL_SECONDS: i32 = 15 * 60;
const MIN_TTL_SECONDS: i32 = 60;
const MAX_TTL_SECONDS: i32 = 7 * 24 * 60 * 60;
/// 24 random bytes: 32 URL-safe characters, within Telegram's 64-character
/// `/start` payload of A-Z a-z 0-9 _ -.
const TOKEN_BYTES: usize = 24;

#[tracing::instrument(skip(pool))]
pub async fn create(
    pool: &PgPool,
    request: pb::CreateLinkTokenRequest,
) -> ApiResult<pb::CreateLinkTokenResponse> {
    // Both fields are checked before refusing, so every bad one is named.
    let mut violations = mesh_runtime::Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    let ttl = match request.ttl_seconds {
        0 => DEFAULT_TTL_SECONDS,
        n if (MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&n) => n,
        _ => {
            violations.push(
                "ttl_seconds",
                format!("must be 0 (default) or {MIN_TTL_SECONDS} to {MAX_TTL_SECONDS}"),
            );
            0
        }
    };
    violations.into_result()?;
    let user = user.expect("validated");
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let expire_time: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO link_tokens (token, user_id, expire_time)
         VALUES ($1, $2, now() + make_interval(secs => $3))
         RETURNING expire_time",
    )
    .bind(&token)
    .bind(user)
    .bind(f64::from(ttl))
    .fetch_one(pool)
    .await
    .map_err(|e| ApiError::from(e).or_missing(|| format!("no user with id {user}")))?;
    Ok(pb::CreateLinkTokenResponse {
        token,
        expire_time: Some(timestamp(expire_time)),
    })
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    user_id: Uuid,
    expire_time: DateTime<Utc>,
    redeem_time: Option<DateTime<Utc>>,
    /// Who redeemed it.
    telegram_user_id: Option<i64>,
}

#[tracing::instrument(skip(pool, request), fields(telegram_user_id = request.telegram_user_id))]
pub async fn redeem(
    pool: &PgPool,
    request: pb::RedeemLinkTokenRequest,
) -> ApiResult<pb::RedeemLinkTokenResponse> {
    let mut violations = mesh_runtime::Violations::default();
    let token_ok = !request.token.is_empty()
        && request.token.len() <= 64
        && request
            .token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !token_ok {
        violations.push(
            "token",
            "must be a link token (A-Z a-z 0-9 _ -, at most 64 characters)",
        );
    }
    violations.check(crate::validate::telegram_user_id(
        "telegram_user_id",
        request.telegram_user_id,
    ));
    violations.check(crate::validate::max_chars(
        "telegram_username",
        &request.telegram_username,
        64,
    ));
    violations.into_result()?;

    let mut tx = pool.begin().await?;
    // Locking the token makes two redemptions of it take turns: the second sees it used.
    let token: TokenRow = sqlx::query_as(
        "SELECT user_id, expire_time, redeem_time, telegram_user_id
         FROM link_tokens WHERE token = $1 FOR UPDATE",
    )
    .bind(&request.token)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::not_found("no such link token"))?;
    if token.redeem_time.is_some() {
        if token.telegram_user_id == Some(request.telegram_user_id) {
            // The same account again: Telegram re-delivers a `/start` whose
            // handling failed later on, even after the token expired.
            let user = redeemed_again(&mut tx, &token, &request).await?;
            // Refused before the commit: nothing is linked to a user being erased.
            erasure::refuse_if_erasing(user.id, user.erase_time)?;
            tx.commit().await?;
            return Ok(pb::RedeemLinkTokenResponse {
                user: Some(user.into()),
            });
        }
        return Err(ApiError::FailedPrecondition(USED.into()));
    }
    if token.expire_time <= Utc::now() {
        return Err(ApiError::FailedPrecondition(
            "this link token has expired; ask for a new one".into(),
        ));
    }
    let owner: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM users WHERE telegram_user_id = $1")
            .bind(request.telegram_user_id)
            .fetch_optional(&mut *tx)
            .await?;
    if owner.is_some_and(|owner| owner != token.user_id) {
        return Err(ApiError::AlreadyExists(ALREADY_LINKED.into()));
    }
    let user: UserRow = sqlx::query_as(
        "UPDATE users SET telegram_user_id = $2, telegram_username = $3 WHERE id = $1 RETURNING *",
    )
    .bind(token.user_id)
    .bind(request.telegram_user_id)
    .bind(request.telegram_username.trim_start_matches('@'))
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| ApiError::from(e).or_conflict(|| ALREADY_LINKED.into()))?;
    erasure::refuse_if_erasing(user.id, user.erase_time)?;
    sqlx::query(
        "UPDATE link_tokens SET redeem_time = now(), telegram_user_id = $2 WHERE token = $1",
    )
    .bind(&request.token)
    .bind(request.telegram_user_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(pb::RedeemLinkTokenResponse {
        user: Some(user.into()),
    })
}

/// The answer to a repeat redemption by the account that redeemed the token:
/// its user, the username refreshed. The link may have changed since (the user
/// linked another account, or dropped this one): then the token is used, as
/// for anyone else, rather than undoing the later change.
async fn redeemed_again(
    tx: &mut sqlx::PgConnection,
    token: &TokenRow,
    request: &pb::RedeemLinkTokenRequest,
) -> ApiResult<UserRow> {
    let user: UserRow =
        sqlx::query_as("SELECT * FROM users WHERE id = $1 AND telegram_user_id = $2 FOR UPDATE")
            .bind(token.user_id)
            .bind(request.telegram_user_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| ApiError::FailedPrecondition(USED.into()))?;
    let changed: Option<UserRow> = sqlx::query_as(
        // Only a new username is written: the same one leaves update_time be.
        "UPDATE users SET telegram_username = $2
         WHERE id = $1 AND telegram_username <> $2 RETURNING *",
    )
    .bind(token.user_id)
    .bind(request.telegram_username.trim_start_matches('@'))
    .fetch_optional(&mut *tx)
    .await?;
    Ok(changed.unwrap_or(user))
}
