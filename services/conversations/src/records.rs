//! What happened around a conversation, recorded for the user's history:
//! calls, taps on interactive content, shared locations. Each is one user's;
//! the conversation and message a record names must be that user's too.

mod calls;
mod interactions;
mod locations;
pub(crate) mod parents;

pub use calls::{list_calls, record_call};
pub use interactions::{list_interactions, record_interaction};
pub use locations::{list_locations, record_location};

use mesh_runtime::{ApiResult, FieldViolation, Violations, convert::parse_uuid, pagination};
use sqlx::{PgPool, postgres::PgRow};
use uuid::Uuid;

/// A list request's page, checked. Every list here pages by id (UUID v7),
/// oldest first.
pub(crate) type Page = pagination::Page<Uuid>;

/// One page of the rows of `table` whose `column` is `key`, the id a list
/// request gives in its field of the same name, oldest first: the page's
/// rows as `T` (the row's id given by `id`) and the next page's token (empty
/// after the last page). `key` and the page are checked together, so every
/// bad field is named. Gives the checked key too.
pub(crate) async fn list_page<R, T>(
    pool: &PgPool,
    table: &'static str,
    column: &'static str,
    key: &str,
    page_size: i32,
    page_token: &str,
    id: impl Fn(&R) -> Uuid,
) -> ApiResult<(Uuid, Vec<T>, String)>
where
    R: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin + Into<T>,
{
    let mut violations = Violations::default();
    let key = violations.check(parse_uuid(column, key));
    let page = Page::check(&mut violations, page_size, page_token);
    violations.into_result()?;
    let (key, page) = (key.expect("validated"), page.expect("validated"));
    // The names are the callers' constants, not input.
    let mut rows: Vec<R> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT * FROM {table} WHERE {column} = $1 AND ($2::uuid IS NULL OR id > $2)
         ORDER BY id LIMIT $3"
    )))
    .bind(key)
    .bind(page.after)
    .bind(page.size + 1)
    .fetch_all(pool)
    .await?;
    let next_page_token = pagination::next_page(&mut rows, page.size, |r| id(r).to_string());
    Ok((
        key,
        rows.into_iter().map(Into::into).collect(),
        next_page_token,
    ))
}

/// Counts (latency, tokens, seconds) are never negative.
pub(crate) fn non_negative(field: &str, value: i32) -> Result<(), FieldViolation> {
    if value < 0 {
        return Err(FieldViolation::new(field, "must not be negative"));
    }
    Ok(())
}
