//! GetEmbeddingStatus: which model makes vectors now, and how far the
//! re-embedding of older vectors has come.

use mesh_proto::mesh::memory::v1 as pb;
use mesh_runtime::ApiResult;

use crate::State;

#[tracing::instrument(skip_all)]
pub async fn get(
    state: &State,
    _request: pb::GetEmbeddingStatusRequest,
) -> ApiResult<pb::GetEmbeddingStatusResponse> {
    // Deleted memories are never re-embedded (see vectors::reembed_batch), so
    // they are left out here too.
    let rows: Vec<(Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT model, sum(memories)::bigint, sum(chunks)::bigint FROM (
             SELECT embedding_model AS model, count(*) AS memories, 0 AS chunks
             FROM memories WHERE delete_time IS NULL GROUP BY embedding_model
             UNION ALL
             SELECT embedding_model, 0, count(*) FROM chunks GROUP BY embedding_model
         ) AS counts GROUP BY model ORDER BY model NULLS LAST",
    )
    .fetch_all(&state.pool)
    .await?;
    let current = state.space.model();
    let mut response = pb::GetEmbeddingStatusResponse {
        model: current.to_owned(),
        dimensions: state.space.dimensions() as i32,
        ..Default::default()
    };
    for (model, memories, chunks) in rows {
        if model.as_deref() != Some(current) {
            response.pending_memories += memories;
            response.pending_chunks += chunks;
        }
        if let Some(model) = model {
            response.vectors.push(pb::ModelVectors {
                model,
                memories,
                chunks,
            });
        }
    }
    Ok(response)
}
