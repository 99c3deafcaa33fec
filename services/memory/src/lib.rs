//! mesh.memory.v1.MemoryService: what the assistant remembers about a user and
//! the documents the user gave it.
//!
//! One module per resource, each holding its validation, its SQL and its
//! conversion to the wire types; this file wires them to the generated gRPC
//! trait. Every handler returns `ApiError`, mapped to a Status in one place
//! (mesh_runtime::error).

pub mod config;
mod context;
pub mod documents;
pub mod embed;
mod extractions;
mod keyword;
mod memories;
mod purge;
mod search;
mod status;
pub mod vectors;
mod wire;

use std::sync::Arc;

use mesh_proto::mesh::memory::v1::{
    self as pb,
    memory_service_server::{MemoryService, MemoryServiceServer},
};
use mesh_runtime::server::{Application, ServiceSpec};
use sqlx::{PgPool, migrate::Migrator};
use tonic::service::Routes;

pub use config::Config;
use embed::Embedder;
use vectors::VectorSpace;

pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/memory");

pub static SPEC: ServiceSpec = ServiceSpec {
    name: "memory",
    grpc_services: &["mesh.memory.v1.MemoryService"],
    file_descriptor_set: mesh_proto::FILE_DESCRIPTOR_SET,
    migrator: &MIGRATOR,
};

/// `MEMORY_ADDR` when unset.
pub const DEFAULT_ADDR: &str = "127.0.0.1:50053";

/// What every handler works with.
pub struct State {
    pub pool: PgPool,
    pub embedder: Arc<dyn Embedder>,
    /// The current model's vectors: its name, dimensions and SQL.
    pub space: VectorSpace,
    pub exact_search_max: i64,
    pub max_document_bytes: usize,
}

/// Builds the memory service from its configuration, loading the embedder.
pub async fn build(config: &Config) -> anyhow::Result<Application> {
    let embedder = embed::from_config(&config.embedder)?;
    build_with(config, embedder).await
}

/// Builds the memory service around an embedder the caller made (tests share
/// one loaded model between many services).
pub async fn build_with(
    config: &Config,
    embedder: Arc<dyn Embedder>,
) -> anyhow::Result<Application> {
    let space = VectorSpace::new(embedder.model(), embedder.dimensions());
    let mut state = None;
    let app = Application::build(&config.service, &SPEC, |context| {
        let shared = Arc::new(State {
            pool: context.pool,
            embedder,
            space,
            exact_search_max: config.exact_search_max,
            max_document_bytes: config.max_document_bytes,
        });
        state = Some(shared.clone());
        // Documents arrive in one message: allow the largest one plus its envelope.
        let max_message = config.max_document_bytes.saturating_add(64 * 1024);
        Routes::new(
            MemoryServiceServer::new(MemoryApi { state: shared })
                .max_decoding_message_size(max_message),
        )
    })
    .await?;
    let state = state.expect("the routes were built");
    let lease = config.ingest_lease;
    let ingest_state = state.clone();
    Ok(app
        .with_worker("vector indexes and re-embedding", move |shutdown| {
            vectors::maintain(state, shutdown)
        })
        .with_worker("document ingestion", move |shutdown| {
            documents::ingest::run(ingest_state, lease, shutdown)
        }))
}

pub struct MemoryApi {
    state: Arc<State>,
}

mesh_runtime::grpc_handlers! { pb, MemoryService for MemoryApi, state;
    create_memory(CreateMemoryRequest) -> CreateMemoryResponse => memories::create;
    upsert_memory(UpsertMemoryRequest) -> UpsertMemoryResponse => memories::upsert;
    get_memory(GetMemoryRequest) -> GetMemoryResponse => memories::get;
    update_memory(UpdateMemoryRequest) -> UpdateMemoryResponse => memories::update;
    list_memories(ListMemoriesRequest) -> ListMemoriesResponse => memories::list;
    delete_memory(DeleteMemoryRequest) -> DeleteMemoryResponse => memories::delete;
    forget_memory(ForgetMemoryRequest) -> ForgetMemoryResponse => memories::forget;
    search_memories(SearchMemoriesRequest) -> SearchMemoriesResponse => search::search_memories;
    get_context(GetContextRequest) -> GetContextResponse => context::get;
    upload_document(UploadDocumentRequest) -> UploadDocumentResponse => documents::upload;
    get_document(GetDocumentRequest) -> GetDocumentResponse => documents::get;
    list_documents(ListDocumentsRequest) -> ListDocumentsResponse => documents::list;
    delete_document(DeleteDocumentRequest) -> DeleteDocumentResponse => documents::delete;
    search_chunks(SearchChunksRequest) -> SearchChunksResponse => documents::search::search_chunks;
    record_extraction(RecordExtractionRequest) -> RecordExtractionResponse => extractions::record;
    list_extractions(ListExtractionsRequest) -> ListExtractionsResponse => extractions::list;
    get_embedding_status(GetEmbeddingStatusRequest) -> GetEmbeddingStatusResponse => status::get;
    purge_user(PurgeUserRequest) -> PurgeUserResponse => purge::purge_user;
}
