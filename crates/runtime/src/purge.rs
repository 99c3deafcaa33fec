//! Erasing one user from a context (GDPR / HIPAA): every row about them,
//! counted by table, in one transaction, and the stored answers of earlier
//! calls about them (they hold their data too).

use std::collections::HashMap;

use prost::Message;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    ApiResult, Violations,
    convert::parse_uuid,
    idempotency::{self, Key},
};

/// The operation name purges store their answers under.
pub const OPERATION: &str = "PurgeUser";

/// Deletes `user`'s rows from each of `tables`, in that order, adding what
/// each lost to `deleted`. The names must be the caller's constants, never
/// input.
pub async fn delete_user_rows(
    conn: &mut PgConnection,
    user: Uuid,
    tables: &[&str],
    deleted: &mut HashMap<String, i64>,
) -> ApiResult<()> {
    for table in tables {
        let n = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE user_id = $1"
        )))
        .bind(user)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        *deleted.entry((*table).to_owned()).or_default() += n as i64;
    }
    Ok(())
}

/// Erases the stored answers about `user` but the purges' own (so a retried
/// purge still gets its answer), counted as `idempotency_keys`.
pub async fn forget_answers(
    conn: &mut PgConnection,
    user: Uuid,
    deleted: &mut HashMap<String, i64>,
) -> ApiResult<()> {
    let n = idempotency::forget_user(conn, user, OPERATION).await?;
    deleted.insert("idempotency_keys".to_owned(), n as i64);
    Ok(())
}

/// The whole PurgeUser of a context whose user rows are all in `tables`
/// (emptied in that order, so each count is what that table lost rather
/// than what cascaded): `user_id` and `request_id` checked together, a
/// retry with the same `request_id` answered as the first call.
pub async fn purge_user<Req, Resp>(
    pool: &PgPool,
    request: &Req,
    user_id: &str,
    request_id: &str,
    tables: &[&str],
    respond: impl FnOnce(HashMap<String, i64>) -> Resp,
) -> ApiResult<Resp>
where
    Req: Message,
    Resp: Message + Default,
{
    let nothing_else = async |_: &mut PgConnection, _: Uuid, _: &mut HashMap<String, i64>| Ok(());
    purge_user_with(
        pool,
        request,
        user_id,
        request_id,
        tables,
        nothing_else,
        respond,
    )
    .await
}

/// Like [`purge_user`], with `more` run in the same transaction first, for
/// what a context erases other than by deleting rows with the user's id
/// (adding its counts to the map).
pub async fn purge_user_with<Req, Resp>(
    pool: &PgPool,
    request: &Req,
    user_id: &str,
    request_id: &str,
    tables: &[&str],
    more: impl AsyncFnOnce(&mut PgConnection, Uuid, &mut HashMap<String, i64>) -> ApiResult<()>,
    respond: impl FnOnce(HashMap<String, i64>) -> Resp,
) -> ApiResult<Resp>
where
    Req: Message,
    Resp: Message + Default,
{
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", user_id));
    violations.check(idempotency::check_request_id(request_id));
    violations.into_result()?;
    let user = user.expect("checked");
    let key = Key {
        operation: OPERATION,
        request_id,
        user_id: Some(user),
    };
    idempotency::run_once(pool, key, request, async |conn| {
        let mut deleted = HashMap::new();
        more(conn, user, &mut deleted).await?;
        delete_user_rows(conn, user, tables, &mut deleted).await?;
        forget_answers(conn, user, &mut deleted).await?;
        Ok(respond(deleted))
    })
    .await
}
