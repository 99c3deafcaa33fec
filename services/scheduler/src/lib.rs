//! mesh.scheduler.v1.SchedulerService: what the assistant must do later for
//! a user (reminders, daily check-ins), its in-app notifications, the user's
//! calendar, and the dispatcher that sends due items through
//! conversations.SendMessage.
//!
//! One module per resource, each holding its validation, its SQL and its
//! conversion to the wire types; this file wires them to the generated gRPC
//! trait and starts the background work. Every handler returns `ApiError`,
//! mapped to a Status in one place (mesh_runtime::error).

mod calendar;
mod checkins;
mod clock;
pub mod config;
mod dead_letters;
mod delivery;
pub mod dispatcher;
mod notifications;
mod people;
mod purge;
mod recurrence;
mod reminders;
mod status;
mod wire;

use std::{net::SocketAddr, sync::Arc};

use mesh_proto::mesh::scheduler::v1::{
    self as pb,
    scheduler_service_server::{SchedulerService, SchedulerServiceServer},
};
use mesh_runtime::{
    client::Downstream,
    server::{Application, ServiceSpec},
};
use sqlx::{PgPool, migrate::Migrator};
use tonic::service::Routes;

pub use config::Config;
use people::People;

pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/scheduler");

pub static SPEC: ServiceSpec = ServiceSpec {
    name: "scheduler",
    grpc_services: &["mesh.scheduler.v1.SchedulerService"],
    file_descriptor_set: mesh_proto::FILE_DESCRIPTOR_SET,
    migrator: &MIGRATOR,
};

/// `SCHEDULER_ADDR` when unset.
pub const DEFAULT_ADDR: &str = "127.0.0.1:50054";

/// What every handler and the dispatcher work with.
pub struct State {
    pub pool: PgPool,
    pub config: Config,
    /// The users service: time zones, check-in times, channels, quiet hours.
    pub people: People,
    /// The conversations service: WhatsApp windows and sends.
    pub conversations: Downstream,
    pub metrics: dispatcher::metrics::Metrics,
}

/// Builds the scheduler service from its configuration.
pub async fn build(config: &Config) -> anyhow::Result<Application> {
    Ok(build_with_metrics(config).await?.0)
}

/// Like [`build`], and says where `/metrics` listens (the configured address
/// may have port 0).
pub async fn build_with_metrics(config: &Config) -> anyhow::Result<(Application, SocketAddr)> {
    let token = &config.service.auth_token;
    let users = Downstream::new(
        "SCHEDULER_USERS_URL",
        &config.users_url,
        token,
        config.service.tls_ca.as_ref(),
        config.call_timeout,
    )?;
    let conversations = Downstream::new(
        "SCHEDULER_CONVERSATIONS_URL",
        &config.conversations_url,
        token,
        config.service.tls_ca.as_ref(),
        config.call_timeout,
    )?;
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .map_err(|e| anyhow::anyhow!("SCHEDULER_METRICS_ADDR={}: {e}", config.metrics_addr))?;
    let metrics_addr = metrics_listener.local_addr()?;
    let mut state = None;
    let app = Application::build(&config.service, &SPEC, |context| {
        let shared = Arc::new(State {
            pool: context.pool,
            config: config.clone(),
            people: People::new(users),
            conversations,
            metrics: dispatcher::metrics::Metrics::default(),
        });
        state = Some(shared.clone());
        Routes::new(SchedulerServiceServer::new(SchedulerApi { state: shared }))
    })
    .await?;
    let state = state.expect("the routes were built");
    let retention = config.notification_retention;
    let metrics_state = state.clone();
    let mut app = app
        .with_housekeeping("read notifications past their retention", move |pool| {
            notifications::delete_expired(pool, retention)
        })
        .with_worker("metrics endpoint", move |shutdown| {
            dispatcher::metrics::serve(metrics_listener, metrics_state, shutdown)
        });
    if config.dispatcher.enabled {
        app = app.with_worker("dispatcher", move |shutdown| {
            dispatcher::run(state, shutdown)
        });
    }
    Ok((app, metrics_addr))
}

pub struct SchedulerApi {
    state: Arc<State>,
}

mesh_runtime::grpc_handlers! { pb, SchedulerService for SchedulerApi, state;
    create_reminder(CreateReminderRequest) -> CreateReminderResponse => reminders::create;
    get_reminder(GetReminderRequest) -> GetReminderResponse => reminders::get;
    list_reminders(ListRemindersRequest) -> ListRemindersResponse => reminders::list;
    cancel_reminder(CancelReminderRequest) -> CancelReminderResponse => reminders::cancel;
    reschedule_reminder(RescheduleReminderRequest) -> RescheduleReminderResponse => reminders::reschedule;
    snooze_reminder(SnoozeReminderRequest) -> SnoozeReminderResponse => reminders::snooze;
    schedule_check_in(ScheduleCheckInRequest) -> ScheduleCheckInResponse => checkins::schedule;
    get_check_in(GetCheckInRequest) -> GetCheckInResponse => checkins::get;
    list_check_ins(ListCheckInsRequest) -> ListCheckInsResponse => checkins::list;
    set_check_in_content(SetCheckInContentRequest) -> SetCheckInContentResponse => checkins::set_content;
    skip_check_in(SkipCheckInRequest) -> SkipCheckInResponse => checkins::skip;
    create_notification(CreateNotificationRequest) -> CreateNotificationResponse => notifications::create;
    list_notifications(ListNotificationsRequest) -> ListNotificationsResponse => notifications::list;
    mark_notification_read(MarkNotificationReadRequest) -> MarkNotificationReadResponse => notifications::mark_read;
    create_calendar_event(CreateCalendarEventRequest) -> CreateCalendarEventResponse => calendar::create;
    get_calendar_event(GetCalendarEventRequest) -> GetCalendarEventResponse => calendar::get;
    update_calendar_event(UpdateCalendarEventRequest) -> UpdateCalendarEventResponse => calendar::update;
    delete_calendar_event(DeleteCalendarEventRequest) -> DeleteCalendarEventResponse => calendar::delete;
    list_upcoming_calendar_events(ListUpcomingCalendarEventsRequest) -> ListUpcomingCalendarEventsResponse => calendar::list_upcoming;
    list_dead_letters(ListDeadLettersRequest) -> ListDeadLettersResponse => dead_letters::list;
    retry_dead_letter(RetryDeadLetterRequest) -> RetryDeadLetterResponse => dead_letters::retry;
    discard_dead_letter(DiscardDeadLetterRequest) -> DiscardDeadLetterResponse => dead_letters::discard;
    purge_user(PurgeUserRequest) -> PurgeUserResponse => purge::purge_user;
}
