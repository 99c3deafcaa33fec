//! The ingestion worker: takes documents that wait (PENDING, or PROCESSING
//! under a lease that expired), cuts them into chunks, embeds and stores the
//! chunks batch by batch, and marks them COMPLETED or FAILED.
//!
//! Safe with several replicas and across restarts, with no in-memory state:
//! - A document is claimed with `FOR UPDATE SKIP LOCKED` and held under a
//!   lease (`lease_owner`, `lease_until`) that every stored batch renews. A
//!   replica that dies leaves the lease to expire; another one takes over.
//! - Chunking is deterministic, and a chunk's position is unique per
//!   document, so a resumed ingestion stores only the chunks that are missing.
//! - Each batch is stored in one transaction that first locks the document
//!   and checks the lease is still this worker's: a worker that lost its
//!   lease, or whose document was deleted, stops without writing.

use std::{collections::HashMap, sync::Arc, time::Duration};

use pgvector::Vector;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    as_i32,
    chunking::{self, Chunk, Format},
};
use crate::{State, embed::EmbedError};

/// How often an idle worker looks for waiting documents: an upload is picked
/// up within this.
pub const IDLE_POLL: Duration = Duration::from_secs(1);
/// Chunks embedded and stored per transaction.
pub const BATCH: usize = 16;
/// Claims in a row without storing a batch before a document is failed: a
/// document that keeps killing its worker (or an embedder that stays down)
/// must not be retried forever.
pub const MAX_ATTEMPTS: i32 = 8;
/// The wait after a transient failure doubles from this, up to `RETRY_MAX`.
const RETRY_BASE: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// The error a document fails with when the service has no embedder.
pub const NO_EMBEDDER: &str = "documents need an embedder to be searchable: this service runs with \
    EMBEDDER=supplied, which makes no vectors for chunks (run it with EMBEDDER=local or openai \
    and upload the document again)";

/// Runs until `shutdown`: one document at a time, each claimed under a lease
/// of `lease` that every stored batch renews.
pub async fn run(state: Arc<State>, lease: Duration, shutdown: CancellationToken) {
    let worker = Uuid::new_v4();
    tracing::info!(%worker, ?lease, "document ingestion started");
    let mut error_pause = IDLE_POLL;
    while !shutdown.is_cancelled() {
        let pause = match claim(&state.pool, worker, lease).await {
            Ok(Some(document)) => {
                error_pause = IDLE_POLL;
                ingest(&state, worker, lease, document, &shutdown).await;
                continue;
            }
            Ok(None) => IDLE_POLL,
            Err(error) => {
                tracing::warn!(
                    %error,
                    retry_in = ?error_pause,
                    "cannot look for documents to ingest"
                );
                let pause = error_pause;
                error_pause = (error_pause * 2).min(Duration::from_secs(30));
                pause
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => break,
        }
    }
    tracing::info!(%worker, "document ingestion stopped");
}

/// A claimed document.
#[derive(sqlx::FromRow)]
struct Claimed {
    id: Uuid,
    user_id: Uuid,
    #[sqlx(rename = "type")]
    kind: String,
    content: String,
    attempts: i32,
}

/// Takes the oldest waiting document: PENDING, or PROCESSING with no live
/// lease (its worker died, stopped, or waits out a transient failure).
#[tracing::instrument(skip_all)]
async fn claim(pool: &PgPool, worker: Uuid, lease: Duration) -> sqlx::Result<Option<Claimed>> {
    sqlx::query_as(
        "UPDATE documents d
         SET status = 'processing', lease_owner = $1,
             lease_until = now() + make_interval(secs => $2), attempts = d.attempts + 1
         FROM (
             SELECT id FROM documents
             WHERE status IN ('pending', 'processing')
               AND (lease_until IS NULL OR lease_until < now())
             ORDER BY create_time, id
             LIMIT 1
             FOR UPDATE SKIP LOCKED
         ) next
         WHERE d.id = next.id
         RETURNING d.id, d.user_id, d.type, d.content, d.attempts",
    )
    .bind(worker)
    .bind(lease.as_secs_f64())
    .fetch_optional(pool)
    .await
}

/// How an ingestion ended, short of completing.
enum Stop {
    /// The document was deleted, or another worker holds it now.
    Lost,
    /// The service is shutting down: the document is released for whoever
    /// starts next.
    Shutdown,
    /// Worth trying again later (the embedder or the database is down).
    Retry(String),
    /// Trying again would fail the same way.
    Fail(String),
}

impl From<sqlx::Error> for Stop {
    fn from(error: sqlx::Error) -> Self {
        // The detail stays in the log: a document's error is read by callers.
        tracing::warn!(%error, "database error during ingestion");
        Stop::Retry("the database was unavailable".into())
    }
}

async fn ingest(
    state: &State,
    worker: Uuid,
    lease: Duration,
    document: Claimed,
    shutdown: &CancellationToken,
) {
    let id = document.id;
    let attempts = document.attempts;
    let outcome = if attempts > MAX_ATTEMPTS {
        Err(Stop::Fail(format!(
            "ingestion did not finish in {MAX_ATTEMPTS} attempts (each one ended without \
             progress: the service stopped or lost the document)"
        )))
    } else {
        process(state, worker, lease, document, shutdown).await
    };
    let pool = &state.pool;
    let result = match outcome {
        Ok(chunks) => {
            tracing::info!(document = %id, chunks, "document ingested");
            Ok(())
        }
        Err(Stop::Lost) => {
            tracing::info!(
                document = %id,
                "document deleted or taken over by another worker; left to it"
            );
            Ok(())
        }
        Err(Stop::Shutdown) => {
            tracing::info!(document = %id, "shutting down: document released mid-ingestion");
            release(pool, id, worker, None, true).await
        }
        Err(Stop::Retry(reason)) if attempts >= MAX_ATTEMPTS => {
            let error = format!("ingestion gave up after {attempts} attempts: {reason}");
            tracing::warn!(document = %id, %error, "document failed");
            fail(pool, id, worker, &error).await
        }
        Err(Stop::Retry(reason)) => {
            let delay = retry_delay(attempts);
            tracing::warn!(
                document = %id,
                %reason,
                retry_in = ?delay,
                "ingestion interrupted; will retry"
            );
            release(pool, id, worker, Some(delay), false).await
        }
        Err(Stop::Fail(error)) => {
            tracing::warn!(document = %id, %error, "document failed");
            fail(pool, id, worker, &error).await
        }
    };
    if let Err(error) = result {
        // The lease expires on its own, and whoever claims it next resumes.
        tracing::warn!(document = %id, %error, "cannot record the end of an ingestion");
    }
}

/// The wait before retrying after the `attempts`-th claim failed transiently.
pub fn retry_delay(attempts: i32) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(16);
    (RETRY_BASE * 2u32.pow(doublings)).min(RETRY_MAX)
}

/// Chunks the document, stores the missing chunks batch by batch, and marks
/// it COMPLETED. Returns its number of chunks.
#[tracing::instrument(skip_all, fields(document = %document.id))]
async fn process(
    state: &State,
    worker: Uuid,
    lease: Duration,
    document: Claimed,
    shutdown: &CancellationToken,
) -> Result<usize, Stop> {
    let Claimed {
        id,
        user_id,
        kind,
        content,
        ..
    } = document;
    // No chunk could be embedded: fail before chunking megabytes for nothing.
    if !state.embedder.makes_vectors() {
        return Err(Stop::Fail(NO_EMBEDDER.to_owned()));
    }
    let format = if kind == "md" {
        Format::Markdown
    } else {
        Format::Plain
    };
    // Counting tokens of megabytes of text takes a while: off the async threads.
    let embedder = state.embedder.clone();
    let limits = chunking::Limits::for_embedder(embedder.max_tokens());
    let chunks = tokio::task::spawn_blocking(move || {
        chunking::split(&content, format, limits, &|text| {
            embedder.count_tokens(text)
        })
    })
    .await
    .map_err(|error| {
        tracing::error!(%error, "chunking did not finish");
        Stop::Retry("chunking did not finish".into())
    })?;
    let chunk_count = chunks.len();
    let job = Job {
        state,
        id,
        user_id,
        worker,
        lease,
    };

    let missing = job.prepare(&chunks).await?;
    tracing::info!(
        document = %id,
        chunk_count,
        chunks_done = chunk_count - missing.len(),
        "ingesting"
    );
    for batch in missing.chunks(BATCH) {
        if shutdown.is_cancelled() {
            return Err(Stop::Shutdown);
        }
        let texts: Vec<String> = batch.iter().map(|&i| chunks[i].content.clone()).collect();
        let vectors = tokio::select! {
            result = state.embedder.embed(&texts) => result.map_err(embed_stop)?,
            () = shutdown.cancelled() => return Err(Stop::Shutdown),
        };
        if vectors.len() != texts.len()
            || vectors.iter().any(|v| v.len() != state.space.dimensions())
        {
            return Err(Stop::Fail(format!(
                "the embedder returned {} vectors for {} chunks, or vectors not of {} dimensions",
                vectors.len(),
                texts.len(),
                state.space.dimensions()
            )));
        }
        let done = job.store_batch(&chunks, batch, vectors).await?;
        tracing::info!(document = %id, chunks_done = done, chunk_count, "stored a batch of chunks");
    }
    job.complete().await?;
    Ok(chunk_count)
}

fn embed_stop(error: EmbedError) -> Stop {
    match error {
        EmbedError::NoEmbedder => Stop::Fail(NO_EMBEDDER.to_owned()),
        EmbedError::Unavailable(reason) => {
            Stop::Retry(format!("the embedding endpoint is unavailable: {reason}"))
        }
        EmbedError::Failed(error) => Stop::Fail(format!("embedding failed: {error:#}")),
    }
}

/// Locks the document and says whether this worker still holds it.
async fn holds(conn: &mut sqlx::PgConnection, id: Uuid, worker: Uuid) -> sqlx::Result<bool> {
    Ok(sqlx::query_scalar::<_, i32>(
        "SELECT 1 FROM documents WHERE id = $1 AND lease_owner = $2 AND status = 'processing'
         FOR UPDATE",
    )
    .bind(id)
    .bind(worker)
    .fetch_optional(conn)
    .await?
    .is_some())
}

/// One claimed document being ingested by this worker.
struct Job<'a> {
    state: &'a State,
    id: Uuid,
    user_id: Uuid,
    worker: Uuid,
    lease: Duration,
}

impl Job<'_> {
    /// Records the chunk count and finds which chunks are still to store.
    /// Chunks stored by an earlier attempt are kept when they are what the
    /// chunking gives now; any other stored chunk (the tokenizer changed
    /// between attempts, say) is deleted and made again.
    async fn prepare(&self, chunks: &[Chunk]) -> Result<Vec<usize>, Stop> {
        let (id, worker) = (self.id, self.worker);
        let mut tx = self.state.pool.begin().await?;
        if !holds(&mut tx, id, worker).await? {
            return Err(Stop::Lost);
        }
        let stored: Vec<(i32, String)> =
            sqlx::query_as("SELECT chunk_index, content FROM chunks WHERE document_id = $1")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
        let stored: HashMap<usize, String> = stored
            .into_iter()
            .filter_map(|(index, content)| Some((usize::try_from(index).ok()?, content)))
            .collect();
        let stale: Vec<i32> = stored
            .iter()
            .filter(|(index, content)| chunks.get(**index).is_none_or(|c| &c.content != *content))
            .map(|(index, _)| as_i32(*index))
            .collect();
        if !stale.is_empty() {
            tracing::warn!(
                document = %id,
                stale = stale.len(),
                "stored chunks differ from the chunking now; redoing them"
            );
            sqlx::query("DELETE FROM chunks WHERE document_id = $1 AND chunk_index = ANY($2)")
                .bind(id)
                .bind(&stale)
                .execute(&mut *tx)
                .await?;
        }
        let missing: Vec<usize> = (0..chunks.len())
            .filter(|index| {
                stored
                    .get(index)
                    .is_none_or(|c| *c != chunks[*index].content)
            })
            .collect();
        sqlx::query("UPDATE documents SET chunk_count = $2, chunks_done = $3 WHERE id = $1")
            .bind(id)
            .bind(as_i32(chunks.len()))
            .bind(as_i32(chunks.len() - missing.len()))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(missing)
    }

    /// Marks the document COMPLETED once every chunk is stored.
    async fn complete(&self) -> Result<(), Stop> {
        let (id, worker) = (self.id, self.worker);
        let mut tx = self.state.pool.begin().await?;
        if !holds(&mut tx, id, worker).await? {
            return Err(Stop::Lost);
        }
        let completed = sqlx::query(
            "UPDATE documents SET status = 'completed', complete_time = now(), error = NULL,
                 lease_owner = NULL, lease_until = NULL, chunks_done = chunk_count
             WHERE id = $1
               AND chunk_count = (SELECT count(*) FROM chunks WHERE document_id = $1)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if completed == 0 {
            return Err(Stop::Retry(
                "fewer chunks are stored than the document has".into(),
            ));
        }
        Ok(())
    }

    /// Stores the chunks at positions `batch` with their `vectors` and renews
    /// the lease, if this worker still holds the document. Returns how many
    /// chunks the document has stored.
    async fn store_batch(
        &self,
        chunks: &[Chunk],
        batch: &[usize],
        vectors: Vec<Vec<f32>>,
    ) -> Result<i32, Stop> {
        let Job {
            state,
            id,
            user_id,
            worker,
            lease,
        } = *self;
        let mut tx = state.pool.begin().await?;
        if !holds(&mut tx, id, worker).await? {
            return Err(Stop::Lost);
        }
        let picked = || batch.iter().map(|&i| &chunks[i]);
        let ids: Vec<Uuid> = batch.iter().map(|_| Uuid::now_v7()).collect();
        let indexes: Vec<i32> = batch.iter().map(|&i| as_i32(i)).collect();
        let contents: Vec<&str> = picked().map(|c| c.content.as_str()).collect();
        let pages: Vec<i32> = picked().map(|c| as_i32(c.page)).collect();
        let titles: Vec<&str> = picked().map(|c| c.section_title.as_str()).collect();
        let tokens: Vec<i32> = picked().map(|c| as_i32(c.token_count)).collect();
        let vectors: Vec<Vector> = vectors.into_iter().map(Vector::from).collect();
        // The unique position is a second guard: a chunk stored twice is impossible.
        let inserted = sqlx::query(
            "INSERT INTO chunks (id, document_id, user_id, chunk_index, content, page,
                 section_title, token_count, embedding, embedding_model)
             SELECT c.id, $2, $3, c.chunk_index, c.content, c.page, c.section_title, c.token_count,
                 c.embedding, $4
             FROM unnest($1::uuid[], $5::int[], $6::text[], $7::int[], $8::text[], $9::int[],
                 $10::vector[])
                 AS c(id, chunk_index, content, page, section_title, token_count, embedding)
             ON CONFLICT (document_id, chunk_index) DO NOTHING",
        )
        .bind(&ids)
        .bind(id)
        .bind(user_id)
        .bind(state.space.model())
        .bind(&indexes)
        .bind(&contents)
        .bind(&pages)
        .bind(&titles)
        .bind(&tokens)
        .bind(&vectors)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // Progress: the lease is renewed and the attempts start over, so a long
        // document that survives several restarts is not failed for them.
        let done: i32 = sqlx::query_scalar(
            "UPDATE documents SET chunks_done = chunks_done + $2,
                 lease_until = now() + make_interval(secs => $3), attempts = 1
             WHERE id = $1 RETURNING chunks_done",
        )
        .bind(id)
        .bind(as_i32(inserted))
        .bind(lease.as_secs_f64())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done)
    }
}

/// Gives the document up: at once for whoever claims next (`after` None), or
/// after a delay. `stopped` says the service is shutting down, an attempt
/// that must not count against the document.
async fn release(
    pool: &PgPool,
    id: Uuid,
    worker: Uuid,
    after: Option<Duration>,
    stopped: bool,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE documents SET lease_owner = NULL,
             lease_until = CASE WHEN $3::float8 IS NULL THEN NULL
                 ELSE now() + make_interval(secs => $3) END,
             attempts = CASE WHEN $4 THEN greatest(attempts - 1, 0) ELSE attempts END
         WHERE id = $1 AND lease_owner = $2",
    )
    .bind(id)
    .bind(worker)
    .bind(after.map(|delay| delay.as_secs_f64()))
    .bind(stopped)
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks the document FAILED with `error`, and deletes the chunks stored so
/// far: they would never be searched (only COMPLETED documents are).
async fn fail(pool: &PgPool, id: Uuid, worker: Uuid, error: &str) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    let failed = sqlx::query(
        "UPDATE documents SET status = 'failed', error = $3, lease_owner = NULL,
             lease_until = NULL, chunks_done = 0
         WHERE id = $1 AND lease_owner = $2",
    )
    .bind(id)
    .bind(worker)
    .bind(error)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if failed > 0 {
        sqlx::query("DELETE FROM chunks WHERE document_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_a_cap() {
        assert_eq!(retry_delay(1), Duration::from_secs(2));
        assert_eq!(retry_delay(2), Duration::from_secs(4));
        assert_eq!(retry_delay(4), Duration::from_secs(16));
        assert_eq!(retry_delay(30), RETRY_MAX);
        assert_eq!(retry_delay(0), RETRY_BASE);
    }
}
