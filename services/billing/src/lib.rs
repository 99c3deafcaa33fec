//! mesh.billing.v1.BillingService: which plan a user or workspace is on
//! (from Lemon Squeezy subscriptions), their quotas, the AI usage ledger,
//! usage reports, and rate limits shared by every replica.
//!
//! One module per resource, each holding its validation, its SQL and its
//! conversion to the wire types; this file wires them to the generated gRPC
//! trait. Every handler returns `ApiError`, mapped to a Status in one place
//! (mesh_runtime::error).

pub mod config;
mod events;
mod features;
pub mod lemonsqueezy;
mod people;
pub mod plans;
mod purge;
mod quotas;
mod rate_limits;
mod reports;
mod subscriptions;
mod usage;

use std::sync::Arc;

use mesh_proto::mesh::billing::v1::{
    self as pb,
    billing_service_server::{BillingService, BillingServiceServer},
};
use mesh_runtime::{
    client::Downstream,
    server::{Application, ServiceSpec},
};
use sqlx::{PgPool, migrate::Migrator};
use tonic::service::Routes;

pub use config::Config;
use people::People;

pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/billing");

pub static SPEC: ServiceSpec = ServiceSpec {
    name: "billing",
    grpc_services: &["mesh.billing.v1.BillingService"],
    file_descriptor_set: mesh_proto::FILE_DESCRIPTOR_SET,
    migrator: &MIGRATOR,
};

/// `BILLING_ADDR` when unset.
pub const DEFAULT_ADDR: &str = "127.0.0.1:50055";

/// What every handler works with.
pub struct State {
    pub pool: PgPool,
    pub config: Config,
    /// The users service: time zones and owned workspaces, cached.
    pub people: People,
}

/// Builds the billing service from its configuration.
pub async fn build(config: &Config) -> anyhow::Result<Application> {
    let users = Downstream::new(
        "BILLING_USERS_URL",
        &config.users_url,
        &config.service.auth_token,
        config.service.tls_ca.as_ref(),
        config.call_timeout,
    )?;
    let app = Application::build(&config.service, &SPEC, |context| {
        let state = Arc::new(State {
            pool: context.pool,
            config: config.clone(),
            people: People::new(users, config.profile_cache),
        });
        Routes::new(BillingServiceServer::new(BillingApi { state }))
    })
    .await?;
    Ok(app.with_housekeeping("expired rate-limit windows", rate_limits::delete_expired))
}

pub struct BillingApi {
    state: Arc<State>,
}

mesh_runtime::grpc_handlers! { pb, BillingService for BillingApi, state;
    get_entitlements(GetEntitlementsRequest) -> GetEntitlementsResponse => quotas::entitlements;
    consume_quota(ConsumeQuotaRequest) -> ConsumeQuotaResponse => quotas::consume;
    record_ai_usage(RecordAiUsageRequest) -> RecordAiUsageResponse => usage::record;
    check_rate_limit(CheckRateLimitRequest) -> CheckRateLimitResponse => rate_limits::check;
    get_subscription(GetSubscriptionRequest) -> GetSubscriptionResponse => subscriptions::get;
    list_subscription_events(ListSubscriptionEventsRequest) -> ListSubscriptionEventsResponse => events::list;
    apply_subscription_event(ApplySubscriptionEventRequest) -> ApplySubscriptionEventResponse => events::apply;
    list_daily_usage(ListDailyUsageRequest) -> ListDailyUsageResponse => reports::daily;
    list_model_usage(ListModelUsageRequest) -> ListModelUsageResponse => reports::by_model;
    get_usage_totals(GetUsageTotalsRequest) -> GetUsageTotalsResponse => reports::totals;
    purge_user(PurgeUserRequest) -> PurgeUserResponse => purge::purge_user;
}
