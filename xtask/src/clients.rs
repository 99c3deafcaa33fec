//! gRPC clients for the services xtask starts for its own load (the benches,
//! chaos): every request carries the bearer token those services are given.

use mesh_proto::mesh::{
    billing::v1::billing_service_client::BillingServiceClient,
    conversations::v1::conversations_service_client::ConversationsServiceClient,
    memory::v1::memory_service_client::MemoryServiceClient,
    scheduler::v1::scheduler_service_client::SchedulerServiceClient,
    users::v1::users_service_client::UsersServiceClient,
};
use tonic::{
    Request, Status, metadata::MetadataValue, service::interceptor::InterceptedService,
    transport::Channel,
};

/// The bearer token (MESH_AUTH_TOKEN) of the services xtask loads.
pub const TOKEN: &str = "bench-token";

/// The interceptor type of [`bearer`], for naming clients.
pub type Auth = fn(Request<()>) -> Result<Request<()>, Status>;

pub type UsersClient = UsersServiceClient<InterceptedService<Channel, Auth>>;
pub type ConversationsClient = ConversationsServiceClient<InterceptedService<Channel, Auth>>;
pub type BillingClient = BillingServiceClient<InterceptedService<Channel, Auth>>;
pub type MemoryClient = MemoryServiceClient<InterceptedService<Channel, Auth>>;
pub type SchedulerClient = SchedulerServiceClient<InterceptedService<Channel, Auth>>;

/// Adds [`TOKEN`] to every request of a client.
pub fn bearer(mut request: Request<()>) -> Result<Request<()>, Status> {
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {TOKEN}")).expect("ASCII"),
    );
    Ok(request)
}

/// A channel to `addr` (`host:port`) that connects on first use and again
/// after the server comes back: a restarted service is reached through the
/// same client.
pub fn lazy_channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("a host:port makes a valid URI")
        .connect_timeout(std::time::Duration::from_secs(1))
        .timeout(std::time::Duration::from_secs(30))
        .connect_lazy()
}
