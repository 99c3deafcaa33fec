//! mesh.conversations.v1.ConversationsService: everything said between a user
//! and the assistant.
//!
//! One module per resource, each holding its validation, its SQL and its
//! conversion to the wire types; this file wires them to the generated gRPC
//! trait. Every handler returns `ApiError`, mapped to a Status in one place
//! (mesh_runtime::error).

pub mod config;
mod conversations;
mod delivery;
mod events;
mod executions;
mod flows;
mod messages;
mod purge;
mod records;
mod send;
mod webhook_failures;
mod windows;
mod wire;

use std::sync::Arc;

use mesh_proto::mesh::conversations::v1::{
    self as pb,
    conversations_service_server::{ConversationsService, ConversationsServiceServer},
};
use mesh_runtime::server::{Application, ServiceSpec};
use sqlx::{PgPool, migrate::Migrator};
use tonic::{Request, Response, Status, service::Routes};

pub use config::Config;

pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/conversations");

pub static SPEC: ServiceSpec = ServiceSpec {
    name: "conversations",
    grpc_services: &["mesh.conversations.v1.ConversationsService"],
    file_descriptor_set: mesh_proto::FILE_DESCRIPTOR_SET,
    migrator: &MIGRATOR,
};

/// `CONVERSATIONS_ADDR` when unset.
pub const DEFAULT_ADDR: &str = "127.0.0.1:50052";

/// Builds the conversations service from its configuration.
pub async fn build(config: &Config) -> anyhow::Result<Application> {
    let sender = Arc::new(send::Sender::new(config)?);
    let retention = config.event_retention;
    let idle_gap = config.idle_gap;
    let app = Application::build(&config.service, &SPEC, |context| {
        let hub = events::Hub::start(context.pool.clone(), context.shutdown.clone());
        Routes::new(ConversationsServiceServer::new(ConversationsApi {
            pool: context.pool,
            idle_gap,
            sender,
            hub,
        }))
    })
    .await?;
    Ok(app
        .with_housekeeping("expired events", move |pool| async move {
            events::prune(&pool, retention).await
        })
        .with_housekeeping("stale deferred statuses", |pool| async move {
            delivery::prune_deferred(&pool).await
        }))
}

pub struct ConversationsApi {
    pool: PgPool,
    idle_gap: std::time::Duration,
    sender: Arc<send::Sender>,
    hub: events::Hub,
}

/// Each unary RPC: unwrap the request, run the module function, map its error once.
macro_rules! rpcs {
    ($($method:ident($request:ident) -> $response:ident => |$api:ident, $req:ident| $call:expr;)*) => {
        #[tonic::async_trait]
        impl ConversationsService for ConversationsApi {
            $(
                async fn $method(
                    &self,
                    request: Request<pb::$request>,
                ) -> Result<Response<pb::$response>, Status> {
                    let $api = self;
                    let $req = request.into_inner();
                    Ok(Response::new($call.await?))
                }
            )*

            type WatchEventsStream = events::EventStream;

            async fn watch_events(
                &self,
                request: Request<pb::WatchEventsRequest>,
            ) -> Result<Response<Self::WatchEventsStream>, Status> {
                Ok(Response::new(self.hub.watch(request.into_inner()).await?))
            }
        }
    };
}

rpcs! {
    get_or_create_active_conversation(GetOrCreateActiveConversationRequest) -> GetOrCreateActiveConversationResponse
        => |api, req| conversations::get_or_create_active(&api.pool, api.idle_gap, req);
    get_conversation(GetConversationRequest) -> GetConversationResponse => |api, req| conversations::get(&api.pool, req);
    list_conversations(ListConversationsRequest) -> ListConversationsResponse => |api, req| conversations::list(&api.pool, req);
    close_conversation(CloseConversationRequest) -> CloseConversationResponse => |api, req| conversations::close(&api.pool, req);
    archive_conversation(ArchiveConversationRequest) -> ArchiveConversationResponse => |api, req| conversations::archive(&api.pool, req);
    update_conversation_summary(UpdateConversationSummaryRequest) -> UpdateConversationSummaryResponse
        => |api, req| conversations::update_summary(&api.pool, req);
    record_inbound_message(RecordInboundMessageRequest) -> RecordInboundMessageResponse => |api, req| messages::record_inbound(&api.pool, req);
    get_message(GetMessageRequest) -> GetMessageResponse => |api, req| messages::get(&api.pool, req);
    list_messages(ListMessagesRequest) -> ListMessagesResponse => |api, req| messages::list(&api.pool, req);
    get_history(GetHistoryRequest) -> GetHistoryResponse => |api, req| messages::history(&api.pool, req);
    update_delivery_status(UpdateDeliveryStatusRequest) -> UpdateDeliveryStatusResponse => |api, req| delivery::update(&api.pool, req);
    get_messaging_window(GetMessagingWindowRequest) -> GetMessagingWindowResponse => |api, req| windows::get(&api.pool, req);
    send_message(SendMessageRequest) -> SendMessageResponse => |api, req| api.sender.send(&api.pool, api.idle_gap, req);
    create_flow_session(CreateFlowSessionRequest) -> CreateFlowSessionResponse => |api, req| flows::create(&api.pool, req);
    get_flow_session(GetFlowSessionRequest) -> GetFlowSessionResponse => |api, req| flows::get(&api.pool, req);
    update_flow_session(UpdateFlowSessionRequest) -> UpdateFlowSessionResponse => |api, req| flows::update(&api.pool, req);
    record_call(RecordCallRequest) -> RecordCallResponse => |api, req| records::record_call(&api.pool, req);
    list_calls(ListCallsRequest) -> ListCallsResponse => |api, req| records::list_calls(&api.pool, req);
    record_interaction(RecordInteractionRequest) -> RecordInteractionResponse => |api, req| records::record_interaction(&api.pool, req);
    list_interactions(ListInteractionsRequest) -> ListInteractionsResponse => |api, req| records::list_interactions(&api.pool, req);
    record_location(RecordLocationRequest) -> RecordLocationResponse => |api, req| records::record_location(&api.pool, req);
    list_locations(ListLocationsRequest) -> ListLocationsResponse => |api, req| records::list_locations(&api.pool, req);
    record_tool_execution(RecordToolExecutionRequest) -> RecordToolExecutionResponse => |api, req| executions::record_tool(&api.pool, req);
    list_tool_executions(ListToolExecutionsRequest) -> ListToolExecutionsResponse => |api, req| executions::list_tools(&api.pool, req);
    record_agent_execution(RecordAgentExecutionRequest) -> RecordAgentExecutionResponse => |api, req| executions::record_agent(&api.pool, req);
    list_agent_executions(ListAgentExecutionsRequest) -> ListAgentExecutionsResponse => |api, req| executions::list_agents(&api.pool, req);
    set_message_feedback(SetMessageFeedbackRequest) -> SetMessageFeedbackResponse => |api, req| messages::set_feedback(&api.pool, req);
    record_webhook_failure(RecordWebhookFailureRequest) -> RecordWebhookFailureResponse => |api, req| webhook_failures::record(&api.pool, req);
    list_webhook_failures(ListWebhookFailuresRequest) -> ListWebhookFailuresResponse => |api, req| webhook_failures::list(&api.pool, req);
    resolve_webhook_failure(ResolveWebhookFailureRequest) -> ResolveWebhookFailureResponse => |api, req| webhook_failures::resolve(&api.pool, req);
    purge_user(PurgeUserRequest) -> PurgeUserResponse => |api, req| purge::purge_user(&api.pool, req);
}
