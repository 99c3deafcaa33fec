//! Hybrid search over a user's memories: semantic similarity of the vectors,
//! keyword match, importance and recency, blended into one score (the weights
//! are the contract's: see SearchMemories in memory.proto).
//!
//! A user with at most `exact_search_max` live memories is searched exactly:
//! every memory in scope is scored. Above it, candidates come from the HNSW
//! index (with pgvector's iterative scan, so the user filter does not starve
//! the results) and from the full-text and trigram indexes, and only those
//! are scored.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use mesh_proto::mesh::memory::v1 as pb;
use mesh_runtime::{ApiError, ApiResult, Violations, convert::parse_uuid};
use pgvector::Vector;
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use crate::{
    State,
    embed::EmbedError,
    keyword,
    memories::{self, COLUMNS, LIVE, MemoryRow},
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
    pub metadata: Option<serde_json::Value>,
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
    violations.check(text("query", &request.query, MAX_QUERY_CHARS));
    let supplied = match &request.query_embedding {
        None => Some(None),
        Some(embedding) => violations
            .check(state.space.check("query_embedding", embedding))
            .map(Some),
    };
    if request.query.trim().is_empty() && request.query_embedding.is_none() {
        violations.push(
            "query",
            "give the query's text, its query_embedding, or both",
        );
    }
    let scope = violations.check(Scope::check("scope", request.scope.as_ref()));
    let kinds = violations.check(memories::kinds("kinds", &request.kinds));
    let tags = violations.check(memories::filter_tags("tags", &request.tags));
    let metadata = match &request.metadata_filter {
        None => Some(None),
        Some(filter) => violations
            .check(json_object("metadata_filter", Some(filter)))
            .map(Some),
    };
    let limit = violations.check(limit("limit", request.limit));
    violations.check(threshold("threshold", request.threshold));
    violations.into_result()?;
    let supplied = supplied.expect("checked");
    let vector = match supplied {
        Some(vector) => Some(vector),
        None => embed_query(state, &request.query).await?,
    };
    let query = Query {
        user: user.expect("checked"),
        text: request.query,
        vector,
        scope: scope.expect("checked"),
        kinds: kinds.expect("checked"),
        tags: tags.expect("checked"),
        metadata: metadata.expect("checked"),
        limit: limit.expect("checked"),
        threshold: request.threshold,
        exact: request.exact,
    };
    let (hits, approximate) = run(state, &query).await?;
    Ok(pb::SearchMemoriesResponse {
        hits: hits.into_iter().map(Hit::into_pb).collect(),
        approximate,
    })
}

/// `limit` of a search: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when 0.
pub fn limit(field: &str, limit: i32) -> Result<i64, mesh_runtime::FieldViolation> {
    match i64::from(limit) {
        0 => Ok(DEFAULT_LIMIT),
        n if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(mesh_runtime::FieldViolation::new(
            field,
            format!("must be between 1 and {MAX_LIMIT} (0 means {DEFAULT_LIMIT})"),
        )),
    }
}

/// `threshold` of a search: a blended score, 0 to 1.
pub fn threshold(field: &str, threshold: f32) -> Result<f32, mesh_runtime::FieldViolation> {
    if threshold.is_finite() && (0.0..=1.0).contains(&threshold) {
        Ok(threshold)
    } else {
        Err(mesh_runtime::FieldViolation::new(
            field,
            "must be between 0 and 1",
        ))
    }
}

/// The query text's vector; none for an empty text, or when the service has
/// no embedder (the search then matches by keyword only).
pub async fn embed_query(state: &State, text: &str) -> ApiResult<Option<Vector>> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    match state.embedder.embed(&[text.to_owned()]).await {
        Ok(mut vectors) => Ok(vectors.pop().map(Vector::from)),
        Err(EmbedError::NoEmbedder) => Ok(None),
        Err(error) => Err(error.into()),
    }
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
/// served it. The hits' access time and count are updated.
#[tracing::instrument(skip_all, fields(user = %query.user))]
pub async fn run(state: &State, query: &Query) -> ApiResult<(Vec<Hit>, bool)> {
    let mut tx = state.pool.begin().await?;
    let approximate = query.vector.is_some()
        && !query.exact
        && live_count(&mut tx, query.user, state.exact_search_max).await? > state.exact_search_max;
    let space = &state.space;
    let filter = format!(
        "m.user_id = $1 AND {live} AND {scope}
         AND (cardinality($3::text[]) = 0 OR m.kind = ANY($3))
         AND m.tags @> $4 AND ($5::jsonb IS NULL OR m.metadata @> $5)",
        live = LIVE
            .replace("delete_time", "m.delete_time")
            .replace("expire_time", "m.expire_time"),
        scope = query.scope.sql("m.project_id", "$2"),
    );
    let trigram = keyword::use_trigram(&query.text).then_some("$6");
    let source = if approximate {
        // Each index hands over its best candidates; only those are scored.
        format!(
            "FROM memories m, q WHERE m.id IN (
                 (SELECT m.id FROM memories m WHERE {filter} AND {current}
                  ORDER BY {typed} <=> $7::vector({n}) LIMIT $10)
                 UNION
                 (SELECT m.id FROM memories m, q WHERE {filter} AND {matches} LIMIT $10))",
            current = space.is_current("m.embedding_model"),
            typed = space.typed("m.embedding"),
            n = space.dimensions(),
            matches = keyword::matches("m", trigram),
        )
    } else {
        format!("FROM memories m, q WHERE {filter}")
    };
    let semantic = if query.vector.is_some() {
        space.similarity("m.embedding", "m.embedding_model", "$7")
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
             {source}
         )
         SELECT {COLUMNS}, semantic, keyword, importance_score, recency,
             ({sw} * semantic + {kw} * keyword + {iw} * importance_score + {rw} * recency)::real AS score
         FROM scored
         WHERE ({sw} * semantic + {kw} * keyword + {iw} * importance_score + {rw} * recency) >= $9
         ORDER BY score DESC, id DESC
         LIMIT $8",
        query_cte = keyword::query_cte("$11"),
        keyword = keyword::score("m", trigram),
        half_life = RECENCY_HALF_LIFE_DAYS,
        sw = SEMANTIC_WEIGHT,
        kw = KEYWORD_WEIGHT,
        iw = IMPORTANCE_WEIGHT,
        rw = RECENCY_WEIGHT,
    );
    if approximate {
        // Keep scanning the graph until enough candidates pass the filters.
        sqlx::query("SET LOCAL hnsw.iterative_scan = relaxed_order")
            .execute(&mut *tx)
            .await?;
        let ef_search = (query.limit * CANDIDATES_PER_HIT).max(MIN_CANDIDATES);
        sqlx::query(AssertSqlSafe(format!(
            "SET LOCAL hnsw.ef_search = {ef_search}"
        )))
        .execute(&mut *tx)
        .await?;
    }
    let rows: Vec<ScoredRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(query.user)
        .bind(query.scope.project())
        .bind(&query.kinds)
        .bind(&query.tags)
        .bind(&query.metadata)
        .bind(&query.text)
        .bind(&query.vector)
        .bind(query.limit)
        .bind(query.threshold)
        .bind((query.limit * CANDIDATES_PER_HIT).max(MIN_CANDIDATES))
        .bind(keyword::words(&query.text))
        .fetch_all(&mut *tx)
        .await?;
    let ids: Vec<Uuid> = rows.iter().map(|row| row.memory.id).collect();
    let touched = touch(&mut tx, &ids).await?;
    tx.commit().await?;
    let hits = rows
        .into_iter()
        .map(|mut row| {
            if let Some((time, count)) = touched.get(&row.memory.id) {
                row.memory.last_access_time = Some(*time);
                row.memory.access_count = *count;
            }
            Hit {
                memory: row.memory,
                score: row.score,
                semantic: row.semantic,
                keyword: row.keyword,
                importance: row.importance_score,
                recency: row.recency,
            }
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

/// Records a retrieval: the new access time and count of each memory.
async fn touch(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> ApiResult<HashMap<Uuid, (DateTime<Utc>, i64)>> {
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
    .fetch_all(conn)
    .await
    .map_err(ApiError::from)?;
    Ok(rows
        .into_iter()
        .map(|(id, time, count)| (id, (time, count)))
        .collect())
}
