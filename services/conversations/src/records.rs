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

/// A list request's key (the id in `field`: whose records it lists) and
/// page, checked.
pub(crate) fn list_args(
    field: &str,
    key: &str,
    page_size: i32,
    page_token: &str,
) -> ApiResult<(Uuid, Page)> {
    let mut violations = Violations::default();
    let key = violations.check(parse_uuid(field, key));
    let page = Page::check(&mut violations, page_size, page_token);
    violations.into_result()?;
    Ok((key.expect("validated"), page.expect("validated")))
}

/// One page of what `sql` lists: `sql` selects the rows of key `$1` whose id
/// (given by `id`) is after `$2` (NULL for the first page), ordered by id,
/// `$3` at most. Gives the page's rows as `T` and the next page's token
/// (empty after the last page).
pub(crate) async fn list_page<R, T>(
    pool: &PgPool,
    sql: &'static str,
    key: Uuid,
    page: &Page,
    id: impl Fn(&R) -> Uuid,
) -> ApiResult<(Vec<T>, String)>
where
    R: for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin + Into<T>,
{
    let mut rows: Vec<R> = sqlx::query_as(sql)
        .bind(key)
        .bind(page.after)
        .bind(page.size + 1)
        .fetch_all(pool)
        .await?;
    let next_page_token = pagination::next_page(&mut rows, page.size, |r| id(r).to_string());
    Ok((rows.into_iter().map(Into::into).collect(), next_page_token))
}

/// Counts (latency, tokens, seconds) are never negative.
pub(crate) fn non_negative(field: &str, value: i32) -> Result<(), FieldViolation> {
    if value < 0 {
        return Err(FieldViolation::new(field, "must not be negative"));
    }
    Ok(())
}
