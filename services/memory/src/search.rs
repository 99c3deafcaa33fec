//! Hybrid search over a user's memories: semantic similarity of the vectors,
//! keyword match, importance and recency, blended into one score (the weights
//! are the contract's: see SearchMemories in memory.proto).
//!
//! A user with at most `exact_search_max` live memories is searched exactly:
//! every memory in scope is scored. Above it, candidates come from the HNSW
//! index (with pgvector's iterative scan, so the user filter does not starve
//! the results) and from the full-text and trigram indexes, and only those
//! are scored.
//!
//! A search only reads; the RPCs [`touch`] the memories they hand out
//! (SearchMemories its hits, GetContext those its text holds).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use mesh_proto::mesh::memory::v1 as pb;
use mesh_runtime::{ApiResult, FieldViolation, Violations, convert::parse_uuid};
use pgvector::Vector;
use sqlx::{AssertSqlSafe, PgConnection, PgPool};
use uuid::Uuid;

use crate::{
    State, keyword,
    memories::{self, COLUMNS, MemoryRow},
    vectors::{self, VectorSpace},
    wire::{Scope, json_object, text},
};

pub const SEMANTIC_WEIGHT: f32 = 0.60;
pub const KEYWORD_WEIGHT: f32 = 0.20;
pub const IMPORTANCE_WEIGHT: f32 = 0.10;
pub const RECENCY_WEIGHT: f32 = 0.10;
/// Recency halves every this many days since the memory last changed.
pub const RECENCY_HALF_LIFE_DAYS: f64 = 30.0;
pub const DEFAULT_LIMIT: i64 = 10;
pub const MAX_LIMIT: i64 = 100;
pub const MAX_QUERY_CHARS: usize = 8000;
/// How many candidates each index contributes per requested hit when the
/// approximate path runs.
const CANDIDATES_PER_HIT: i64 = 10;
const MIN_CANDIDATES: i64 = 100;

/// A checked search.
pub struct Query {
    pub user: Uuid,
    pub text: String,
    pub vector: Option<Vector>,
    pub scope: Scope,
    pub kinds: Vec<String>,
    pub tags: Vec<String>,
    /// What the memories' metadata must contain (`{}`: anything).
    pub metadata: serde_json::Value,
    pub limit: i64,
    pub threshold: f32,
    pub exact: bool,
}

pub struct Hit {
    pub memory: MemoryRow,
    pub score: f32,
    pub semantic: f32,
    pub keyword: f32,
    pub importance: f32,
    pub recency: f32,
}

#[tracing::instrument(skip_all)]
pub async fn search_memories(
    state: &State,
    request: pb::SearchMemoriesRequest,
) -> ApiResult<pb::SearchMemoriesResponse> {
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    let supplied = check_query(
        &mut violations,
        &state.space,
        &request.query,
        request.query_embedding.as_ref(),
    );
    let scope = violations.check(Scope::check("scope", request.scope.as_ref()));
    let kinds = violations.check(memories::kinds("kinds", &request.kinds));
    let tags = violations.check(memories::check_tags("tags", &request.tags));
    let metadata = violations.check(json_object(
        "metadata_filter",
        request.metadata_filter.as_ref(),
    ));
    let limit = violations.check(limit("limit", request.limit));
    let threshold = violations.check(threshold("threshold", request.threshold));
    violations.into_result()?;
    let vector = query_vector(state, supplied.expect("checked"), &request.query).await?;
    let query = Query {
        user: user.expect("checked"),
        text: request.query,
        vector,
        scope: scope.expect("checked"),
        kinds: kinds.expect("checked"),
        tags: tags.expect("checked"),
        metadata: metadata.expect("checked"),
        limit: limit.expect("checked"),
        threshold: threshold.expect("checked"),
        exact: request.exact,
    };
    let (hits, approximate) = run(state, &query).await?;
    let ids: Vec<Uuid> = hits.iter().map(|hit| hit.memory.id).collect();
    let touched = touch(&state.pool, &ids).await?;
    let hits = hits
        .into_iter()
        .map(|mut hit| {
            if let Some(&(time, count)) = touched.get(&hit.memory.id) {
                hit.memory.last_access_time = Some(time);
                hit.memory.access_count = count;
            }
            hit.into_pb()
        })
        .collect();
    Ok(pb::SearchMemoriesResponse { hits, approximate })
}

/// A search's `query` text and `query_embedding` (one of them is required),
/// checked: the caller's vector, if any.
pub fn check_query(
    violations: &mut Violations,
    space: &VectorSpace,
    query: &str,
    embedding: Option<&pb::Embedding>,
) -> Option<Option<Vector>> {
    violations.check(text("query", query, MAX_QUERY_CHARS));
    let supplied = violations.check(space.check("query_embedding", embedding));
    if query.trim().is_empty() && embedding.is_none() {
        violations.push(
            "query",
            "give the query's text, its query_embedding, or both",
        );
    }
    supplied
}

/// `limit` of a search: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when 0.
pub fn limit(field: &str, limit: i32) -> Result<i64, FieldViolation> {
    match i64::from(limit) {
        0 => Ok(DEFAULT_LIMIT),
        n if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(FieldViolation::new(
            field,
            format!("must be between 1 and {MAX_LIMIT} (0 means {DEFAULT_LIMIT})"),
        )),
    }
}

/// `threshold` of a search: a blended score, 0 to 1.
pub fn threshold(field: &str, threshold: f32) -> Result<f32, FieldViolation> {
    if threshold.is_finite() && (0.0..=1.0).contains(&threshold) {
        Ok(threshold)
    } else {
        Err(FieldViolation::new(field, "must be between 0 and 1"))
    }
}

/// A search's vector: the caller's when given, else the embedder's for the
/// query text; none for a blank text, or when the service makes no vectors
/// (the search then matches by keyword only).
pub async fn query_vector(
    state: &State,
    supplied: Option<Vector>,
    text: &str,
) -> ApiResult<Option<Vector>> {
    if supplied.is_none() && (text.trim().is_empty() || !state.embedder.makes_vectors()) {
        return Ok(None);
    }
    vectors::vector_of(state.embedder.as_ref(), supplied, text)
        .await
        .map(Some)
}

/// SQL true for the candidates of an approximate search among the rows of
/// `table` (as `alias`, which `filter` names) that pass `filter`: the `limit`
/// nearest the query vector `vector`, and the `limit` best keyword matches
/// (against CTE `q`). The vectors alone would miss the names and numbers the
/// keyword score exists for.
pub fn candidates(
    space: &VectorSpace,
    table: &str,
    alias: &str,
    filter: &str,
    vector: &str,
    trigram: Option<&str>,
    limit: &str,
) -> String {
    format!(
        "{alias}.id IN ({nearest} UNION {matching})",
        nearest = space.nearest(table, alias, filter, vector, limit),
        matching = keyword::best_matches(table, alias, filter, trigram, limit),
    )
}

/// SQL for a blended score: each column times its weight, summed.
pub fn blend(terms: &[(f32, &str)]) -> String {
    terms
        .iter()
        .map(|(weight, column)| format!("{weight} * {column}"))
        .collect::<Vec<_>>()
        .join(" + ")
}

impl Hit {
    fn into_pb(self) -> pb::MemoryHit {
        pb::MemoryHit {
            memory: Some(self.memory.into_pb()),
            score: self.score,
            semantic: self.semantic,
            keyword: self.keyword,
            importance: self.importance,
            recency: self.recency,
        }
    }
}

#[derive(sqlx::FromRow)]
struct ScoredRow {
    #[sqlx(flatten)]
    memory: MemoryRow,
    score: f32,
    semantic: f32,
    keyword: f32,
    importance_score: f32,
    recency: f32,
}

/// Runs `query`: the hits, best first, and whether the approximate index
/// served it. Reading is not an access: callers [`touch`] the memories they
/// hand out.
#[tracing::instrument(skip_all, fields(user = %query.user))]
pub async fn run(state: &State, query: &Query) -> ApiResult<(Vec<Hit>, bool)> {
    let mut conn = state.pool.acquire().await?;
    let approximate = query.vector.is_some()
        && !query.exact
        && live_count(&mut conn, query.user, state.exact_search_max).await?
            > state.exact_search_max;
    let filter = format!(
        "m.user_id = $1 AND {live} AND {scope}
         AND (cardinality($3::text[]) = 0 OR m.kind = ANY($3))
         AND m.tags @> $4 AND m.metadata @> $5",
        live = memories::live("m"),
        scope = query.scope.sql("m.project_id", "$2"),
    );
    let trigram = keyword::use_trigram(&query.text).then_some("$6");
    let candidate_count = (query.limit * CANDIDATES_PER_HIT).max(MIN_CANDIDATES);
    let filter = if approximate {
        // Each index hands over its best candidates; only those are scored.
        candidates(&state.space, "memories", "m", &filter, "$7", trigram, "$10")
    } else {
        filter
    };
    let semantic = if query.vector.is_some() {
        state
            .space
            .similarity("m.embedding", "m.embedding_model", "$7")
    } else {
        "0".to_owned()
    };
    let sql = format!(
        "WITH q AS ({query_cte}),
         scored AS (
             SELECT m.*,
                 ({semantic})::real AS semantic,
                 ({keyword})::real AS keyword,
                 m.importance AS importance_score,
                 power(0.5, extract(epoch FROM now() - m.update_time) / 86400.0 / {half_life})::real AS recency
             FROM memories m, q WHERE {filter}
         ),
         blended AS (SELECT *, ({score})::real AS score FROM scored)
         SELECT {COLUMNS}, semantic, keyword, importance_score, recency, score
         FROM blended
         WHERE score >= $9
         ORDER BY score DESC, id DESC
         LIMIT $8",
        query_cte = keyword::query_cte("$11"),
        keyword = keyword::score("m", trigram),
        half_life = RECENCY_HALF_LIFE_DAYS,
        score = blend(&[
            (SEMANTIC_WEIGHT, "semantic"),
            (KEYWORD_WEIGHT, "keyword"),
            (IMPORTANCE_WEIGHT, "importance_score"),
            (RECENCY_WEIGHT, "recency"),
        ]),
    );
    let select = sqlx::query_as(AssertSqlSafe(sql))
        .bind(query.user)
        .bind(query.scope.project())
        .bind(&query.kinds)
        .bind(&query.tags)
        .bind(&query.metadata)
        .bind(&query.text)
        .bind(&query.vector)
        .bind(query.limit)
        .bind(query.threshold)
        .bind(candidate_count)
        .bind(keyword::words(&query.text));
    let rows: Vec<ScoredRow> =
        vectors::fetch_all(&mut conn, approximate.then_some(candidate_count), select).await?;
    let hits = rows
        .into_iter()
        .map(|row| Hit {
            memory: row.memory,
            score: row.score,
            semantic: row.semantic,
            keyword: row.keyword,
            importance: row.importance_score,
            recency: row.recency,
        })
        .collect();
    Ok((hits, approximate))
}

/// The user's live memories, counted up to `cap + 1` (enough to choose the path).
async fn live_count(conn: &mut PgConnection, user: Uuid, cap: i64) -> ApiResult<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM memories WHERE user_id = $1 AND delete_time IS NULL LIMIT $2) AS capped",
    )
    .bind(user)
    .bind(cap + 1)
    .fetch_one(conn)
    .await?)
}

/// Records that the memories `ids` were handed out: their new access time
/// and count, by id.
pub async fn touch(pool: &PgPool, ids: &[Uuid]) -> ApiResult<HashMap<Uuid, (DateTime<Utc>, i64)>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, DateTime<Utc>, i64)> = sqlx::query_as(
        // Rows are locked in id order, so concurrent searches that share
        // hits cannot deadlock.
        "UPDATE memories SET last_access_time = now(), access_count = access_count + 1
         WHERE id IN (SELECT id FROM memories WHERE id = ANY($1) ORDER BY id FOR UPDATE)
         RETURNING id, last_access_time, access_count",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, time, count)| (id, (time, count)))
        .collect())
}
