//! The vectors of the current model: checking a caller's vector, embedding a
//! text, the SQL that compares vectors of one model only, the approximate
//! scan of the per-model HNSW indexes, and the job that builds those indexes
//! and re-embeds rows of another model.
//!
//! Vectors are stored untyped beside their model's name. pgvector indexes
//! only fixed dimensions, so each model gets a partial index on
//! `embedding::vector(N) WHERE embedding_model = '<model>'`; queries spell
//! the same expression and predicate (with the model as a literal, so the
//! planner can match the partial index), which keeps models apart.

use std::{sync::Arc, time::Duration};

use mesh_proto::mesh::memory::v1 as pb;
use mesh_runtime::{ApiError, ApiResult, FieldViolation};
use pgvector::Vector;
use sqlx::{
    AssertSqlSafe, Connection, FromRow, PgConnection, PgPool, Postgres,
    postgres::{PgArguments, PgRow},
    query::QueryAs,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{State, embed::Embedder};

/// The current model's name and dimensions, and the SQL spelled for them.
#[derive(Clone, Debug)]
pub struct VectorSpace {
    model: String,
    dimensions: usize,
    /// The model's name as an SQL string literal.
    model_literal: String,
}

impl VectorSpace {
    pub fn new(model: &str, dimensions: usize) -> Self {
        Self {
            model: model.to_owned(),
            dimensions,
            model_literal: format!("'{}'", model.replace('\'', "''")),
        }
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// `(<column>::vector(N))`: the expression the HNSW index is built on.
    pub fn typed(&self, column: &str) -> String {
        format!("({column}::vector({}))", self.dimensions)
    }

    /// SQL true for rows whose vector is of the current model.
    pub fn is_current(&self, model_column: &str) -> String {
        format!("{model_column} = {}", self.model_literal)
    }

    /// SQL true for rows whose vector is missing or of another model. Spelt
    /// as ranges rather than `IS DISTINCT FROM`, which no index serves, so
    /// that the btree index on the model column finds the few such rows
    /// instead of the idle re-embedding job reading the whole table.
    pub fn is_stale(&self, model_column: &str) -> String {
        format!(
            "({model_column} IS NULL OR {model_column} < {model} OR {model_column} > {model})",
            model = self.model_literal,
        )
    }

    /// Cosine similarity (1 - distance) between `column` and the query vector
    /// parameter `param` (`$n`), floored at 0, and 0 for rows of another model.
    pub fn similarity(&self, column: &str, model_column: &str, param: &str) -> String {
        format!(
            "CASE WHEN {current} THEN greatest(0, 1 - ({typed} <=> {param}::vector({n}))) ELSE 0 END",
            current = self.is_current(model_column),
            typed = self.typed(column),
            n = self.dimensions,
        )
    }

    /// The ids of the `limit` rows of `table` (as `alias`, which `filter`
    /// names) nearest the query vector `param`: a subquery the current
    /// model's HNSW index serves (see [`fetch_all`] for the scan's settings).
    pub fn nearest(
        &self,
        table: &str,
        alias: &str,
        filter: &str,
        param: &str,
        limit: &str,
    ) -> String {
        format!(
            "(SELECT {alias}.id FROM {table} {alias} WHERE {filter} AND {current}
              ORDER BY {typed} <=> {param}::vector({n}) LIMIT {limit})",
            current = self.is_current(&format!("{alias}.embedding_model")),
            typed = self.typed(&format!("{alias}.embedding")),
            n = self.dimensions,
        )
    }

    /// A caller's vector, if given: it must have the current model's
    /// dimensions and only finite values.
    pub fn check(
        &self,
        field: &str,
        embedding: Option<&pb::Embedding>,
    ) -> Result<Option<Vector>, FieldViolation> {
        let Some(embedding) = embedding else {
            return Ok(None);
        };
        let values = &embedding.values;
        if values.len() != self.dimensions {
            return Err(FieldViolation::new(
                format!("{field}.values"),
                format!(
                    "has {} dimensions; the model {} makes {}",
                    values.len(),
                    self.model,
                    self.dimensions
                ),
            ));
        }
        if values.iter().any(|value| !value.is_finite()) {
            return Err(FieldViolation::new(
                format!("{field}.values"),
                "must hold only finite numbers",
            ));
        }
        if values.iter().all(|value| *value == 0.0) {
            return Err(FieldViolation::new(
                format!("{field}.values"),
                "must not be all zeros (it has no direction to compare)",
            ));
        }
        Ok(Some(Vector::from(values.clone())))
    }

    /// The index name for `table` and this model: stable, and distinct per
    /// model and dimensions.
    fn index_name(&self, table: &str) -> String {
        // FNV-1a: a short, stable tag; collisions would only share a name.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in format!("{}/{}", self.model, self.dimensions).bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        format!("{table}_hnsw_{hash:016x}")
    }
}

/// The vector of `text`: the caller's (already checked) when given, else the
/// embedder's (FAILED_PRECONDITION when it makes none).
pub async fn vector_of(
    embedder: &dyn Embedder,
    supplied: Option<Vector>,
    text: &str,
) -> ApiResult<Vector> {
    if let Some(vector) = supplied {
        return Ok(vector);
    }
    let mut vectors = embedder.embed(&[text.to_owned()]).await?;
    let vector = vectors
        .pop()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("the embedder returned no vector")))?;
    Ok(Vector::from(vector))
}

/// pgvector's largest `hnsw.ef_search`.
const MAX_EF_SEARCH: i64 = 1000;

/// Runs `query`. With `ef_search` (the query reads the HNSW index through
/// [`VectorSpace::nearest`]), it runs in a transaction where the scan keeps
/// that many candidates and, with pgvector's iterative scan, goes on past the
/// rows the filters drop until it has found enough (relaxed order: the
/// caller's blend re-sorts anyway). Without, it needs no transaction.
pub async fn fetch_all<O>(
    conn: &mut PgConnection,
    ef_search: Option<i64>,
    query: QueryAs<'_, Postgres, O, PgArguments>,
) -> sqlx::Result<Vec<O>>
where
    O: Send + Unpin + for<'r> FromRow<'r, PgRow>,
{
    let Some(ef_search) = ef_search else {
        return query.fetch_all(conn).await;
    };
    let mut tx = conn.begin().await?;
    sqlx::query(
        "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true),
                set_config('hnsw.ef_search', $1, true)",
    )
    .bind(ef_search.clamp(1, MAX_EF_SEARCH).to_string())
    .execute(&mut *tx)
    .await?;
    let rows = query.fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(rows)
}

/// Creates the current model's HNSW indexes if missing (once across replicas),
/// then re-embeds, batch by batch, the rows whose vector is of another model,
/// until `shutdown`.
pub async fn maintain(state: Arc<State>, shutdown: CancellationToken) {
    let mut delay = Duration::from_secs(1);
    while let Err(error) = ensure_indexes(&state.pool, &state.space).await {
        tracing::warn!(%error, retry_in = ?delay, "cannot create the vector indexes yet");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(60));
    }
    if !state.embedder.makes_vectors() {
        // EMBEDDER=supplied: rows of another model wait for their callers.
        return;
    }
    loop {
        let done = match reembed_batch(&state).await {
            Ok(done) => done,
            Err(error) => {
                tracing::warn!(%error, "re-embedding failed; retrying");
                0
            }
        };
        let pause = if done > 0 {
            Duration::ZERO
        } else {
            REEMBED_IDLE
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// How often the re-embedding job looks for rows of another model when it
/// found none.
const REEMBED_IDLE: Duration = Duration::from_secs(30);
/// Rows re-embedded per transaction.
const REEMBED_BATCH: i64 = 32;

#[tracing::instrument(skip_all, fields(model = space.model()))]
async fn ensure_indexes(pool: &PgPool, space: &VectorSpace) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    // One replica builds; the others wait for it, then find the index there.
    sqlx::query("SELECT pg_advisory_lock(hashtext('memory.vector_indexes'))")
        .execute(&mut *conn)
        .await?;
    let mut result = Ok(());
    for table in ["memories", "chunks"] {
        if let Err(error) = ensure_index(&mut conn, space, table).await {
            result = Err(error);
            break;
        }
    }
    sqlx::query("SELECT pg_advisory_unlock(hashtext('memory.vector_indexes'))")
        .execute(&mut *conn)
        .await?;
    result
}

/// Creates `table`'s HNSW index for the current model unless a valid one
/// exists. A build that was cut short (the process stopped mid-way) leaves an
/// invalid index behind, which `IF NOT EXISTS` would keep forever: it is
/// dropped and built again.
async fn ensure_index(
    conn: &mut PgConnection,
    space: &VectorSpace,
    table: &str,
) -> anyhow::Result<()> {
    let name = space.index_name(table);
    let valid: Option<bool> = sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE c.relname = $1 AND c.relnamespace = current_schema()::regnamespace",
    )
    .bind(&name)
    .fetch_optional(&mut *conn)
    .await?;
    match valid {
        Some(true) => return Ok(()),
        Some(false) => {
            tracing::warn!(index = name, "dropping an index whose build was cut short");
            sqlx::query(AssertSqlSafe(format!(
                "DROP INDEX CONCURRENTLY IF EXISTS {name}"
            )))
            .execute(&mut *conn)
            .await?;
        }
        None => {}
    }
    tracing::info!(index = name, "building the vector index");
    // The model literal is escaped and the rest is ours.
    sqlx::query(AssertSqlSafe(format!(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} \
         USING hnsw ({typed} vector_cosine_ops) WHERE {current}",
        typed = space.typed("embedding"),
        current = space.is_current("embedding_model"),
    )))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Re-embeds up to one batch of memories and one of chunks whose vector is
/// missing or of another model. Rows are claimed with SKIP LOCKED, so
/// replicas share the work. Returns how many rows it re-embedded.
#[tracing::instrument(skip_all)]
async fn reembed_batch(state: &State) -> anyhow::Result<usize> {
    let mut done = 0;
    for (table, live) in [("memories", "delete_time IS NULL"), ("chunks", "TRUE")] {
        let mut tx = state.pool.begin().await?;
        let rows: Vec<(Uuid, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT id, content FROM {table} \
             WHERE {stale} AND {live} \
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
            stale = state.space.is_stale("embedding_model"),
        )))
        .bind(REEMBED_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            continue;
        }
        let (ids, texts): (Vec<Uuid>, Vec<String>) = rows.into_iter().unzip();
        let vectors = state.embedder.embed(&texts).await?;
        let vectors: Vec<Vector> = vectors.into_iter().map(Vector::from).collect();
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {table} SET embedding = v.embedding, embedding_model = $3 \
             FROM unnest($1::uuid[], $2::vector[]) AS v(id, embedding) WHERE {table}.id = v.id"
        )))
        .bind(&ids)
        .bind(&vectors)
        .bind(state.space.model())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(
            table,
            rows = ids.len(),
            model = state.space.model(),
            "re-embedded"
        );
        done += ids.len();
    }
    Ok(done)
}
