//! SearchChunks: ranks chunks of a user's COMPLETED documents against a query
//! by `0.75 semantic + 0.25 keyword`.
//!
//! - semantic: cosine similarity with the query's vector (floored at 0; 0 for
//!   a chunk whose vector is of another model, and for every chunk when there
//!   is no query vector: EMBEDDER=supplied and a text-only query).
//! - keyword: the share of the query's words the chunk holds (see
//!   crate::keyword; no trigrams: chunks are long).
//!
//! The documents in scope are found first (owner, status, project scope or
//! one document, metadata filter); chunks are then filtered by document id.
//! When those documents hold at most `exact_search_max` chunks, every chunk
//! is scored. Above it, the candidates are the nearest chunks by the
//! per-model HNSW index (iterative scan, so the filter does not starve it)
//! and the best keyword matches (crate::search::candidates), and only those
//! are scored.

use std::collections::HashMap;

use mesh_proto::mesh::memory::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, Violations,
    convert::{json_to_struct, parse_uuid},
    wire::optional_uuid,
};
use pgvector::Vector;
use sqlx::AssertSqlSafe;
use uuid::Uuid;

use crate::{
    State, keyword, search, vectors,
    wire::{Scope, json_object},
};

/// Candidates each approximate source (vector, keyword) gives per hit asked for.
const CANDIDATES_PER_HIT: i64 = 4;
/// The fewest candidates the HNSW scan keeps in its list (`hnsw.ef_search`).
const MIN_EF_SEARCH: i64 = 40;

/// Weights of the blended score (the proto documents them).
const SEMANTIC_WEIGHT: f32 = 0.75;
const KEYWORD_WEIGHT: f32 = 0.25;

struct Query {
    user: Uuid,
    /// The query's words as a `websearch_to_tsquery` OR-query; None without words.
    words: Option<String>,
    /// The caller's vector, checked.
    supplied: Option<Vector>,
    text: String,
    document: Option<Uuid>,
    scope: Scope,
    metadata_filter: serde_json::Value,
    limit: i64,
    threshold: f64,
}

fn check(state: &State, request: &pb::SearchChunksRequest) -> ApiResult<Query> {
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    let supplied = search::check_query(
        &mut violations,
        &state.space,
        &request.query,
        request.query_embedding.as_ref(),
    );
    let document = violations.check(optional_uuid("document_id", &request.document_id));
    let scope = violations.check(Scope::check("scope", request.scope.as_ref()));
    let metadata_filter = violations.check(json_object(
        "metadata_filter",
        request.metadata_filter.as_ref(),
    ));
    let limit = violations.check(search::limit("limit", request.limit));
    let threshold = violations
        .check(search::threshold("threshold", request.threshold))
        .map(f64::from);
    violations.into_result()?;
    Ok(Query {
        user: user.expect("checked"),
        words: keyword::words(&request.query),
        supplied: supplied.expect("checked"),
        text: request.query.trim().to_owned(),
        document: document.expect("checked"),
        scope: scope.expect("checked"),
        metadata_filter: metadata_filter.expect("checked"),
        limit: limit.expect("checked"),
        threshold: threshold.expect("checked"),
    })
}

#[derive(sqlx::FromRow)]
struct InScope {
    id: Uuid,
    filename: String,
    metadata: serde_json::Value,
    chunk_count: i32,
}

#[derive(sqlx::FromRow)]
struct HitRow {
    id: Uuid,
    document_id: Uuid,
    chunk_index: i32,
    content: String,
    page: i32,
    section_title: String,
    token_count: i32,
    semantic: f64,
    keyword: f64,
    score: f64,
}

/// The completed documents the search covers: the one asked for (NOT_FOUND
/// unless it is the user's, FAILED_PRECONDITION unless it is completed), or
/// those of the scope; either way only those whose metadata contains the filter.
async fn in_scope(state: &State, query: &Query) -> ApiResult<Vec<InScope>> {
    if let Some(document) = query.document {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM documents WHERE id = $1 AND user_id = $2")
                .bind(document)
                .bind(query.user)
                .fetch_optional(&state.pool)
                .await?;
        match status.as_deref() {
            None => {
                return Err(ApiError::not_found(format!(
                    "no document {document} of user {}",
                    query.user
                )));
            }
            Some("completed") => {}
            Some(status) => {
                return Err(ApiError::FailedPrecondition(format!(
                    "document {document} is {status}: only completed documents are searched"
                )));
            }
        }
    }
    Ok(sqlx::query_as(AssertSqlSafe(format!(
        "SELECT id, filename, metadata, chunk_count FROM documents
         WHERE user_id = $1 AND status = 'completed' AND metadata @> $3
           AND CASE WHEN $4::uuid IS NULL THEN {scope} ELSE id = $4 END",
        scope = query.scope.sql("project_id", "$2"),
    )))
    .bind(query.user)
    .bind(query.scope.project())
    .bind(&query.metadata_filter)
    .bind(query.document)
    .fetch_all(&state.pool)
    .await?)
}

#[tracing::instrument(skip_all)]
pub async fn search_chunks(
    state: &State,
    request: pb::SearchChunksRequest,
) -> ApiResult<pb::SearchChunksResponse> {
    let query = check(state, &request)?;
    let documents = in_scope(state, &query).await?;
    if documents.is_empty() {
        return Ok(pb::SearchChunksResponse { hits: Vec::new() });
    }
    // Without an embedder, a text query ranks by keyword only.
    let vector = search::query_vector(state, query.supplied, &query.text).await?;

    let ids: Vec<Uuid> = documents.iter().map(|d| d.id).collect();
    let chunks_in_scope: i64 = documents.iter().map(|d| i64::from(d.chunk_count)).sum();
    let candidates = query.limit * CANDIDATES_PER_HIT;
    let approximate = vector.is_some() && chunks_in_scope > state.exact_search_max;
    let filter = if vector.is_none() {
        // Keyword only: the chunks that match a word.
        keyword::matches("c", None)
    } else if approximate {
        search::candidates(
            &state.space,
            "chunks",
            "c",
            "c.document_id = ANY($1)",
            "$2",
            None,
            "$6",
        )
    } else {
        "TRUE".to_owned()
    };
    let semantic = match vector {
        Some(_) => state
            .space
            .similarity("c.embedding", "c.embedding_model", "$2"),
        None => "0".to_owned(),
    };
    let sql = format!(
        "WITH q AS ({query_cte}),
         scored AS (
             SELECT c.id, c.document_id, c.chunk_index, c.content, c.page, c.section_title,
                 c.token_count, ({semantic})::float8 AS semantic,
                 ({keyword})::float8 AS keyword
             FROM chunks c, q
             WHERE c.document_id = ANY($1) AND {filter}
         ),
         blended AS (SELECT *, {score} AS score FROM scored)
         SELECT * FROM blended
         WHERE score > 0 AND score >= $4
         ORDER BY score DESC, document_id, chunk_index
         LIMIT $5",
        query_cte = keyword::query_cte("$3"),
        keyword = keyword::score("c", None),
        score = search::blend(&[(SEMANTIC_WEIGHT, "semantic"), (KEYWORD_WEIGHT, "keyword")]),
    );
    // The SQL is ours: the model literal is escaped by VectorSpace, values are bound.
    let select = sqlx::query_as(AssertSqlSafe(sql))
        .bind(&ids)
        .bind(vector.as_ref())
        .bind(query.words.as_deref())
        .bind(query.threshold)
        .bind(query.limit)
        .bind(candidates);
    let ef_search = approximate.then(|| candidates.max(MIN_EF_SEARCH));
    let rows: Vec<HitRow> =
        vectors::fetch_all(&mut *state.pool.acquire().await?, ef_search, select).await?;

    let documents: HashMap<Uuid, InScope> = documents.into_iter().map(|d| (d.id, d)).collect();
    let hits = rows
        .into_iter()
        .map(|row| {
            let document = &documents[&row.document_id];
            pb::ChunkHit {
                chunk: Some(pb::Chunk {
                    id: row.id.to_string(),
                    document_id: row.document_id.to_string(),
                    index: row.chunk_index,
                    content: row.content,
                    page: row.page,
                    section_title: row.section_title,
                    token_count: row.token_count,
                    metadata: Some(json_to_struct(&document.metadata)),
                }),
                filename: document.filename.clone(),
                score: row.score as f32,
                semantic: row.semantic as f32,
                keyword: row.keyword as f32,
            }
        })
        .collect();
    Ok(pb::SearchChunksResponse { hits })
}
