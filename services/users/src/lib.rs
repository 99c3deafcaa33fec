//! mesh.users.v1.UsersService: the identity context.
//!
//! One module per resource, each holding its validation, its SQL and its
//! conversion to the wire types; this file wires them to the generated gRPC
//! trait. Every handler returns `ApiError`, mapped to a Status in one place
//! (mesh_runtime::error).

pub mod config;
mod devices;
pub mod erasure;
mod flags;
mod links;
mod preferences;
mod users;
pub mod validate;
mod workspaces;

use std::{ops::Deref, sync::Arc};

use erasure::{Contexts, Erasures};
use mesh_proto::mesh::users::v1::{
    self as pb,
    users_service_server::{UsersService, UsersServiceServer},
};
use mesh_runtime::server::{Application, ServiceSpec};
use sqlx::{PgPool, migrate::Migrator};
use tonic::service::Routes;

pub use config::Config;
pub use flags::rollout_bucket;

pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/users");

pub static SPEC: ServiceSpec = ServiceSpec {
    name: "users",
    grpc_services: &["mesh.users.v1.UsersService"],
    file_descriptor_set: mesh_proto::FILE_DESCRIPTOR_SET,
    migrator: &MIGRATOR,
};

/// `USERS_ADDR` when unset.
pub const DEFAULT_ADDR: &str = "127.0.0.1:50051";

/// Builds the users service from its configuration. A bare
/// `ServiceConfig` gives erasures that reach no other context.
pub async fn build(config: impl Into<Config>) -> anyhow::Result<Application> {
    let config = config.into();
    let contexts = Contexts::new(
        &config.erasure,
        &config.service.auth_token,
        config.service.tls_ca.as_ref(),
    )?;
    let mut erasures = None;
    let app = Application::build(&config.service, &SPEC, |context| {
        let state = State {
            pool: context.pool.clone(),
            erasures: Erasures::new(context.pool, contexts, &config.erasure),
        };
        erasures = Some(state.erasures.clone());
        Routes::new(UsersServiceServer::new(UsersApi { state }))
    })
    .await?;
    let erasures = erasures.expect("the routes were built");
    Ok(app.with_worker("erasures", move |shutdown| {
        erasure::run_worker(erasures, shutdown)
    }))
}

/// What handlers work with. Most need only the database, and take the
/// `&PgPool` this dereferences to.
pub struct State {
    pool: PgPool,
    erasures: Arc<Erasures>,
}

impl Deref for State {
    type Target = PgPool;

    fn deref(&self) -> &PgPool {
        &self.pool
    }
}

pub struct UsersApi {
    state: State,
}

mesh_runtime::grpc_handlers! { pb, UsersService for UsersApi, state;
    create_user(CreateUserRequest) -> CreateUserResponse => users::create;
    get_user(GetUserRequest) -> GetUserResponse => users::get;
    get_user_by_phone(GetUserByPhoneRequest) -> GetUserByPhoneResponse => users::get_by_phone;
    get_user_by_telegram_id(GetUserByTelegramIdRequest) -> GetUserByTelegramIdResponse => users::get_by_telegram_id;
    upsert_user_by_phone(UpsertUserByPhoneRequest) -> UpsertUserByPhoneResponse => users::upsert_by_phone;
    update_user(UpdateUserRequest) -> UpdateUserResponse => users::update;
    list_users(ListUsersRequest) -> ListUsersResponse => users::list;
    deactivate_user(DeactivateUserRequest) -> DeactivateUserResponse => users::deactivate;
    delete_user(DeleteUserRequest) -> DeleteUserResponse => erasure::delete_user;
    get_erasure(GetErasureRequest) -> GetErasureResponse => erasure::get_erasure;
    touch_last_message(TouchLastMessageRequest) -> TouchLastMessageResponse => users::touch_last_message;
    create_link_token(CreateLinkTokenRequest) -> CreateLinkTokenResponse => links::create;
    redeem_link_token(RedeemLinkTokenRequest) -> RedeemLinkTokenResponse => links::redeem;
    register_device(RegisterDeviceRequest) -> RegisterDeviceResponse => devices::register;
    list_devices(ListDevicesRequest) -> ListDevicesResponse => devices::list;
    deregister_device(DeregisterDeviceRequest) -> DeregisterDeviceResponse => devices::deregister;
    get_agent_preferences(GetAgentPreferencesRequest) -> GetAgentPreferencesResponse => preferences::get;
    update_agent_preferences(UpdateAgentPreferencesRequest) -> UpdateAgentPreferencesResponse => preferences::update;
    get_onboarding(GetOnboardingRequest) -> GetOnboardingResponse => preferences::get_onboarding;
    complete_onboarding_step(CompleteOnboardingStepRequest) -> CompleteOnboardingStepResponse => preferences::complete_step;
    create_feature_flag(CreateFeatureFlagRequest) -> CreateFeatureFlagResponse => flags::create;
    update_feature_flag(UpdateFeatureFlagRequest) -> UpdateFeatureFlagResponse => flags::update;
    list_feature_flags(ListFeatureFlagsRequest) -> ListFeatureFlagsResponse => flags::list;
    is_feature_enabled(IsFeatureEnabledRequest) -> IsFeatureEnabledResponse => flags::is_enabled;
    create_workspace(CreateWorkspaceRequest) -> CreateWorkspaceResponse => workspaces::create_workspace;
    get_workspace(GetWorkspaceRequest) -> GetWorkspaceResponse => workspaces::get_workspace;
    list_workspaces(ListWorkspacesRequest) -> ListWorkspacesResponse => workspaces::list_workspaces;
    create_project(CreateProjectRequest) -> CreateProjectResponse => workspaces::create_project;
    get_project(GetProjectRequest) -> GetProjectResponse => workspaces::get_project;
    list_projects(ListProjectsRequest) -> ListProjectsResponse => workspaces::list_projects;
}
