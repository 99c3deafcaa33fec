//! Calendar events: create (and the reminder before the start), validation,
//! request_id retries, the external id's uniqueness, field-mask updates that
//! move or cancel the reminder, delete, and the upcoming list.

use chrono::{DateTime, TimeDelta, Utc};
use mesh_proto::mesh::scheduler::v1 as pb;
use tonic::Code;

use crate::harness::{TestApp, sorted_bad_fields, spawn_app, time_of, ts};

/// An hour-long event starting `start` from now, with a reminder
/// `minutes_before` it when given.
fn event(user_id: &str, start: TimeDelta, minutes_before: Option<i32>) -> pb::CalendarEvent {
    let start = Utc::now() + start;
    pb::CalendarEvent {
        user_id: user_id.into(),
        title: "Dentist".into(),
        description: "Check-up".into(),
        start_time: Some(ts(start)),
        end_time: Some(ts(start + TimeDelta::hours(1))),
        location: "Calle 93".into(),
        reminder_minutes_before: minutes_before,
        ..Default::default()
    }
}

async fn create(
    app: &mut TestApp,
    event: pb::CalendarEvent,
) -> Result<pb::CalendarEvent, tonic::Status> {
    Ok(app
        .client
        .create_calendar_event(pb::CreateCalendarEventRequest {
            event: Some(event),
            request_id: String::new(),
        })
        .await?
        .into_inner()
        .event
        .expect("an event"))
}

async fn get(app: &mut TestApp, id: &str) -> Result<pb::CalendarEvent, tonic::Status> {
    Ok(app
        .client
        .get_calendar_event(pb::GetCalendarEventRequest {
            event_id: id.into(),
        })
        .await?
        .into_inner()
        .event
        .expect("an event"))
}

async fn update(
    app: &mut TestApp,
    event: pb::CalendarEvent,
    paths: &[&str],
) -> Result<pb::CalendarEvent, tonic::Status> {
    Ok(app
        .client
        .update_calendar_event(pb::UpdateCalendarEventRequest {
            event: Some(event),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        })
        .await?
        .into_inner()
        .event
        .expect("an event"))
}

async fn reminder(app: &mut TestApp, id: &str) -> pb::Reminder {
    app.client
        .get_reminder(pb::GetReminderRequest {
            reminder_id: id.into(),
        })
        .await
        .expect("get the reminder")
        .into_inner()
        .reminder
        .expect("a reminder")
}

fn start_of(event: &pb::CalendarEvent) -> DateTime<Utc> {
    time_of(event.start_time.as_ref().unwrap())
}

#[tokio::test]
async fn an_event_with_minutes_before_gets_a_reminder_in_the_users_zone() {
    let mut app = spawn_app().await;
    let user = app.new_user("America/Bogota").await;
    let created = create(&mut app, event(&user.id, TimeDelta::days(2), Some(30)))
        .await
        .unwrap();
    assert_eq!(created.status, pb::CalendarEventStatus::Confirmed as i32);
    assert_eq!(
        (created.title.as_str(), created.location.as_str()),
        ("Dentist", "Calle 93")
    );
    assert_eq!(created.reminder_minutes_before, Some(30));
    assert!(!created.reminder_id.is_empty());
    assert_eq!(get(&mut app, &created.id).await.unwrap(), created);

    let linked = reminder(&mut app, &created.reminder_id).await;
    assert_eq!(linked.status, pb::ReminderStatus::Pending as i32);
    assert_eq!(linked.calendar_event_id, created.id);
    assert_eq!(linked.user_id, user.id);
    assert_eq!(linked.title, "Dentist");
    assert_eq!(linked.time_zone, "America/Bogota");
    assert_eq!(
        time_of(linked.scheduled_time.as_ref().unwrap()),
        start_of(&created) - TimeDelta::minutes(30)
    );
    let bogota: chrono_tz::Tz = "America/Bogota".parse().unwrap();
    let local_start = start_of(&created).with_timezone(&bogota).format("%H:%M");
    assert_eq!(
        linked.description,
        format!("starts at {local_start} (Calle 93)")
    );

    // Without minutes: no reminder, and the users service is not needed.
    let plain = create(&mut app, event(&user.id, TimeDelta::days(1), None))
        .await
        .unwrap();
    assert_eq!(
        (plain.reminder_minutes_before, plain.reminder_id.as_str()),
        (None, "")
    );
    // A reminder time already past: the event, but no reminder.
    let soon = create(&mut app, event(&user.id, TimeDelta::minutes(5), Some(60)))
        .await
        .unwrap();
    assert_eq!(soon.reminder_id, "");
    assert_eq!(app.count("calendar_events").await, 3);
    assert_eq!(app.count("reminders").await, 1);
}

#[tokio::test]
async fn bad_events_name_every_field_and_write_nothing() {
    let mut app = spawn_app().await;
    let start = Utc::now() + TimeDelta::days(1);
    let bad = pb::CalendarEvent {
        user_id: "not-a-uuid".into(),
        title: String::new(),
        description: "d".repeat(4001),
        start_time: Some(ts(start)),
        end_time: Some(ts(start - TimeDelta::minutes(1))),
        location: "l".repeat(501),
        status: 42,
        external_id: "x".repeat(257),
        reminder_minutes_before: Some(-1),
        ..Default::default()
    };
    let error = create(&mut app, bad).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert_eq!(
        sorted_bad_fields(&error),
        [
            "event.description",
            "event.end_time",
            "event.external_id",
            "event.location",
            "event.reminder_minutes_before",
            "event.status",
            "event.title",
            "event.user_id",
        ]
    );
    let equal_times = pb::CalendarEvent {
        end_time: Some(ts(start)),
        ..event(&uuid::Uuid::new_v4().to_string(), TimeDelta::days(1), None)
    };
    let equal_times = pb::CalendarEvent {
        start_time: Some(ts(start)),
        ..equal_times
    };
    let error = create(&mut app, equal_times).await.unwrap_err();
    assert_eq!(sorted_bad_fields(&error), ["event.end_time"]);
    let missing = app
        .client
        .create_calendar_event(pb::CreateCalendarEventRequest::default())
        .await
        .unwrap_err();
    assert_eq!(sorted_bad_fields(&missing), ["event"]);
    // A reminder needs the user's time zone: an unknown user is NOT_FOUND.
    let unknown = uuid::Uuid::new_v4().to_string();
    let error = create(&mut app, event(&unknown, TimeDelta::days(1), Some(10)))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");
    assert_eq!(app.count("calendar_events").await, 0);
    assert_eq!(app.count("reminders").await, 0);
}

#[tokio::test]
async fn a_retry_returns_the_first_event_and_external_ids_are_unique_per_user() {
    let mut app = spawn_app().await;
    let user = app.new_user("Europe/Madrid").await;
    let other = app.new_user("Europe/Madrid").await;
    let request = pb::CreateCalendarEventRequest {
        event: Some(event(&user.id, TimeDelta::days(3), Some(15))),
        request_id: "calendar-retry-1".into(),
    };
    let first = app
        .client
        .create_calendar_event(request.clone())
        .await
        .unwrap()
        .into_inner();
    let again = app
        .client
        .create_calendar_event(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first);
    assert_eq!(app.count("calendar_events").await, 1);
    assert_eq!(app.count("reminders").await, 1);

    let external = |user_id: &str| pb::CalendarEvent {
        external_id: "gcal-abc".into(),
        ..event(user_id, TimeDelta::days(4), None)
    };
    create(&mut app, external(&user.id)).await.unwrap();
    let duplicate = create(&mut app, external(&user.id)).await.unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists, "{duplicate:?}");
    assert!(duplicate.message().contains("external_id"), "{duplicate:?}");
    create(&mut app, external(&other.id)).await.unwrap();
    assert_eq!(app.count("calendar_events").await, 3);
}

#[tokio::test]
async fn updates_move_retitle_and_cancel_the_reminder_with_the_event() {
    let mut app = spawn_app().await;
    let user = app.new_user("America/Bogota").await;
    let created = create(&mut app, event(&user.id, TimeDelta::days(2), Some(30)))
        .await
        .unwrap();
    let reminder_id = created.reminder_id.clone();

    // Moving the start moves the reminder; the end goes with it in one call.
    let later = start_of(&created) + TimeDelta::hours(5);
    let moved = update(
        &mut app,
        pb::CalendarEvent {
            id: created.id.clone(),
            title: "Dentist (moved)".into(),
            start_time: Some(ts(later)),
            end_time: Some(ts(later + TimeDelta::hours(1))),
            ..Default::default()
        },
        &["title", "start_time", "end_time"],
    )
    .await
    .unwrap();
    assert_eq!(start_of(&moved), later);
    assert_eq!(moved.location, "Calle 93", "fields outside the mask stay");
    assert_eq!(moved.reminder_id, reminder_id);
    let linked = reminder(&mut app, &reminder_id).await;
    assert_eq!(linked.title, "Dentist (moved)");
    assert_eq!(
        time_of(linked.scheduled_time.as_ref().unwrap()),
        later - TimeDelta::minutes(30)
    );
    assert_eq!(linked.status, pb::ReminderStatus::Pending as i32);

    // Minutes changed: the same reminder, at the new time.
    update(
        &mut app,
        pb::CalendarEvent {
            id: created.id.clone(),
            reminder_minutes_before: Some(120),
            ..Default::default()
        },
        &["reminder_minutes_before"],
    )
    .await
    .unwrap();
    let linked = reminder(&mut app, &reminder_id).await;
    assert_eq!(
        time_of(linked.scheduled_time.as_ref().unwrap()),
        later - TimeDelta::minutes(120)
    );

    // Cancelling the event cancels its reminder...
    let cancelled = update(
        &mut app,
        pb::CalendarEvent {
            id: created.id.clone(),
            status: pb::CalendarEventStatus::Cancelled as i32,
            ..Default::default()
        },
        &["status"],
    )
    .await
    .unwrap();
    assert_eq!(cancelled.status, pb::CalendarEventStatus::Cancelled as i32);
    let linked = reminder(&mut app, &reminder_id).await;
    assert_eq!(linked.status, pb::ReminderStatus::Cancelled as i32);
    assert_eq!(linked.status_reason, "event cancelled");

    // ...and confirming it again brings the same reminder back.
    update(
        &mut app,
        pb::CalendarEvent {
            id: created.id.clone(),
            status: pb::CalendarEventStatus::Confirmed as i32,
            ..Default::default()
        },
        &["status"],
    )
    .await
    .unwrap();
    assert_eq!(
        reminder(&mut app, &reminder_id).await.status,
        pb::ReminderStatus::Pending as i32
    );

    // Clearing the minutes removes the reminder.
    let without = update(
        &mut app,
        pb::CalendarEvent {
            id: created.id.clone(),
            reminder_minutes_before: None,
            ..Default::default()
        },
        &["reminder_minutes_before"],
    )
    .await
    .unwrap();
    assert_eq!(without.reminder_minutes_before, None);
    let linked = reminder(&mut app, &reminder_id).await;
    assert_eq!(linked.status, pb::ReminderStatus::Cancelled as i32);
    assert_eq!(linked.status_reason, "event reminder removed");
    assert_eq!(app.count("reminders").await, 1, "one reminder all along");
}

#[tokio::test]
async fn bad_updates_are_refused_and_change_nothing() {
    let mut app = spawn_app().await;
    let user = app.new_user("America/Bogota").await;
    let created = create(&mut app, event(&user.id, TimeDelta::days(2), Some(30)))
        .await
        .unwrap();

    let unknown_path = update(
        &mut app,
        pb::CalendarEvent {
            id: created.id.clone(),
            ..Default::default()
        },
        &["user_id"],
    )
    .await
    .unwrap_err();
    assert_eq!(
        unknown_path.code(),
        Code::InvalidArgument,
        "{unknown_path:?}"
    );
    assert_eq!(sorted_bad_fields(&unknown_path), ["update_mask"]);

    // An end before the stored start, named as the merged event's field.
    let backwards = update(
        &mut app,
        pb::CalendarEvent {
            id: created.id.clone(),
            title: String::new(),
            end_time: Some(ts(start_of(&created) - TimeDelta::hours(1))),
            ..Default::default()
        },
        &["title", "end_time"],
    )
    .await
    .unwrap_err();
    assert_eq!(
        sorted_bad_fields(&backwards),
        ["event.end_time", "event.title"]
    );

    let missing = update(
        &mut app,
        pb::CalendarEvent {
            id: uuid::Uuid::new_v4().to_string(),
            title: "x".into(),
            ..Default::default()
        },
        &["title"],
    )
    .await
    .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    assert_eq!(get(&mut app, &created.id).await.unwrap(), created);
    let linked = reminder(&mut app, &created.reminder_id).await;
    assert_eq!(
        time_of(linked.scheduled_time.as_ref().unwrap()),
        start_of(&created) - TimeDelta::minutes(30)
    );
}

#[tokio::test]
async fn deleting_an_event_cancels_its_reminder() {
    let mut app = spawn_app().await;
    let user = app.new_user("America/Bogota").await;
    let created = create(&mut app, event(&user.id, TimeDelta::days(2), Some(30)))
        .await
        .unwrap();
    app.client
        .delete_calendar_event(pb::DeleteCalendarEventRequest {
            event_id: created.id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        get(&mut app, &created.id).await.unwrap_err().code(),
        Code::NotFound
    );
    let linked = reminder(&mut app, &created.reminder_id).await;
    assert_eq!(linked.status, pb::ReminderStatus::Cancelled as i32);
    assert_eq!(linked.status_reason, "event deleted");
    let again = app
        .client
        .delete_calendar_event(pb::DeleteCalendarEventRequest {
            event_id: created.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    let bad = app
        .client
        .delete_calendar_event(pb::DeleteCalendarEventRequest {
            event_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(sorted_bad_fields(&bad), ["event_id"]);
}

#[tokio::test]
async fn upcoming_events_list_by_start_by_pages_without_ended_or_cancelled_ones() {
    let mut app = spawn_app().await;
    let user = app.new_user("America/Bogota").await;
    let other = app.new_user("America/Bogota").await;
    // Ended an hour ago: not upcoming. Started an hour ago and still on: upcoming.
    let ended = create(&mut app, event(&user.id, TimeDelta::hours(-2), None))
        .await
        .unwrap();
    let ongoing = pb::CalendarEvent {
        end_time: Some(ts(Utc::now() + TimeDelta::hours(1))),
        ..event(&user.id, TimeDelta::hours(-1), None)
    };
    let ongoing = create(&mut app, ongoing).await.unwrap();
    let mut upcoming = vec![ongoing.id.clone()];
    for day in 1..=4 {
        upcoming.push(
            create(&mut app, event(&user.id, TimeDelta::days(day), None))
                .await
                .unwrap()
                .id,
        );
    }
    let cancelled = pb::CalendarEvent {
        status: pb::CalendarEventStatus::Cancelled as i32,
        ..event(&user.id, TimeDelta::hours(36), None)
    };
    let cancelled = create(&mut app, cancelled).await.unwrap();
    create(&mut app, event(&other.id, TimeDelta::days(1), None))
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .client
            .list_upcoming_calendar_events(pb::ListUpcomingCalendarEventsRequest {
                user_id: user.id.clone(),
                page_size: 2,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.events.len() <= 2);
        seen.extend(page.events.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, upcoming);

    let with_cancelled: Vec<String> = app
        .client
        .list_upcoming_calendar_events(pb::ListUpcomingCalendarEventsRequest {
            user_id: user.id.clone(),
            include_cancelled: true,
            after_time: Some(ts(Utc::now() - TimeDelta::hours(3))),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(with_cancelled.len(), 7);
    assert_eq!(with_cancelled[0], ended.id);
    assert!(with_cancelled.contains(&cancelled.id));

    let bad = app
        .client
        .list_upcoming_calendar_events(pb::ListUpcomingCalendarEventsRequest {
            user_id: "nope".into(),
            page_size: -1,
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        sorted_bad_fields(&bad),
        ["page_size", "page_token", "user_id"]
    );
}

/// While a dispatcher holds the event's reminder (its message may be at the
/// provider), changes that would move or cancel it wait: UNAVAILABLE, and
/// neither the event nor the reminder changes.
#[tokio::test]
async fn an_event_whose_reminder_is_being_sent_waits_for_it() {
    let mut app = spawn_app().await;
    let user = app.new_user("America/Bogota").await;
    let created = create(&mut app, event(&user.id, TimeDelta::days(2), Some(30)))
        .await
        .unwrap();
    app.lease("reminders", &created.reminder_id, Some(60)).await;
    let before = reminder(&mut app, &created.reminder_id).await;

    let moved = update(
        &mut app,
        pb::CalendarEvent {
            id: created.id.clone(),
            start_time: Some(ts(start_of(&created) + TimeDelta::hours(1))),
            end_time: Some(ts(start_of(&created) + TimeDelta::hours(2))),
            ..Default::default()
        },
        &["start_time", "end_time"],
    )
    .await
    .unwrap_err();
    assert_eq!(moved.code(), Code::Unavailable, "{moved:?}");
    let deleted = app
        .client
        .delete_calendar_event(pb::DeleteCalendarEventRequest {
            event_id: created.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(deleted.code(), Code::Unavailable, "{deleted:?}");
    assert_eq!(get(&mut app, &created.id).await.unwrap(), created);
    assert_eq!(reminder(&mut app, &created.reminder_id).await, before);
}
