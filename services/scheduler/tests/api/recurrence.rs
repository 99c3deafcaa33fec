//! Recurring reminders: the rule as created and stored, its validation, and
//! the next occurrence the dispatcher creates when one is sent, and the
//! series' end.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use mesh_proto::mesh::scheduler::v1 as pb;
use tonic::Code;

use crate::{
    dispatch::awake_user,
    harness::{TestApp, sorted_bad_fields, spawn_app, time_of, ts},
};

async fn create_recurring(
    app: &mut TestApp,
    user_id: &str,
    at: DateTime<Utc>,
    recurrence: pb::Recurrence,
) -> Result<pb::Reminder, tonic::Status> {
    Ok(app
        .client
        .create_reminder(pb::CreateReminderRequest {
            reminder: Some(pb::Reminder {
                user_id: user_id.into(),
                title: "Take the pills".into(),
                scheduled_time: Some(ts(at)),
                recurrence: Some(recurrence),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?
        .into_inner()
        .reminder
        .expect("a reminder"))
}

/// Every reminder of the user, by scheduled time.
async fn reminders_of(app: &mut TestApp, user_id: &str) -> Vec<pb::Reminder> {
    app.client
        .list_reminders(pb::ListRemindersRequest {
            user_id: user_id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .reminders
}

#[tokio::test]
async fn a_rule_is_stored_with_its_defaults() {
    let mut app = spawn_app().await;
    let user = app.new_user("Europe/Madrid").await;
    let daily = create_recurring(
        &mut app,
        &user.id,
        Utc::now() + TimeDelta::hours(1),
        pb::Recurrence {
            frequency: pb::RecurrenceFrequency::Daily as i32,
            count: 5,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        daily.recurrence,
        Some(pb::Recurrence {
            frequency: pb::RecurrenceFrequency::Daily as i32,
            interval: 1,
            count: 5,
            ..Default::default()
        })
    );
    assert_eq!(
        (daily.series_id.as_str(), daily.occurrence),
        (daily.id.as_str(), 1)
    );

    // 2030-01-07 12:00 UTC is a Monday in Madrid: a weekly rule without
    // weekdays falls on the first occurrence's weekday.
    let weekly = create_recurring(
        &mut app,
        &user.id,
        DateTime::parse_from_rfc3339("2030-01-07T12:00:00Z")
            .unwrap()
            .to_utc(),
        pb::Recurrence {
            frequency: pb::RecurrenceFrequency::Weekly as i32,
            interval: 2,
            until_date: "2030-06-30".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let rule = weekly.recurrence.unwrap();
    assert_eq!(rule.weekdays, [pb::Weekday::Monday as i32]);
    assert_eq!((rule.interval, rule.until_date.as_str()), (2, "2030-06-30"));
}

#[tokio::test]
async fn a_bad_rule_names_each_field_and_writes_nothing() {
    let mut app = spawn_app().await;
    let user = app.new_user("UTC").await;
    let status = create_recurring(
        &mut app,
        &user.id,
        Utc::now() + TimeDelta::hours(1),
        pb::Recurrence {
            frequency: 0,
            interval: 400,
            weekdays: vec![0],
            until_date: "31/12/2030".into(),
            count: -2,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        sorted_bad_fields(&status),
        [
            "reminder.recurrence.count",
            "reminder.recurrence.frequency",
            "reminder.recurrence.interval",
            "reminder.recurrence.until_date",
            "reminder.recurrence.weekdays",
        ]
    );
    let ends_before_it_starts = create_recurring(
        &mut app,
        &user.id,
        Utc::now() + TimeDelta::days(3),
        pb::Recurrence {
            frequency: pb::RecurrenceFrequency::Daily as i32,
            until_date: (Utc::now() + TimeDelta::days(1))
                .format("%Y-%m-%d")
                .to_string(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        sorted_bad_fields(&ends_before_it_starts),
        ["reminder.recurrence.until_date"]
    );
    let daily_with_days = create_recurring(
        &mut app,
        &user.id,
        Utc::now() + TimeDelta::hours(1),
        pb::Recurrence {
            frequency: pb::RecurrenceFrequency::Daily as i32,
            weekdays: vec![pb::Weekday::Monday as i32],
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(
        sorted_bad_fields(&daily_with_days),
        ["reminder.recurrence.weekdays"]
    );
    assert_eq!(app.count("reminders").await, 0);
}

#[tokio::test]
async fn a_sent_daily_reminder_schedules_the_next_at_the_same_local_time() {
    let mut app = spawn_app().await;
    let user = awake_user(&mut app).await;
    app.open_whatsapp_window(&user.id).await;
    let first = create_recurring(
        &mut app,
        &user.id,
        Utc::now() + TimeDelta::seconds(1),
        pb::Recurrence {
            frequency: pb::RecurrenceFrequency::Daily as i32,
            count: 2,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    app.wait_reminder(&first.id, Duration::from_secs(20), |r| {
        r.status == pb::ReminderStatus::Sent as i32
    })
    .await;
    let series = reminders_of(&mut app, &user.id).await;
    assert_eq!(series.len(), 2, "{series:?}");
    let next = &series[1];
    assert_eq!(
        (next.series_id.as_str(), next.occurrence),
        (first.id.as_str(), 2)
    );
    assert_eq!(next.status, pb::ReminderStatus::Pending as i32);
    assert_eq!(next.title, first.title);
    assert_eq!(next.recurrence, first.recurrence);
    assert_ne!(next.send_token, first.send_token);
    let zone: chrono_tz::Tz = first.time_zone.parse().unwrap();
    let local = |reminder: &pb::Reminder| {
        time_of(reminder.scheduled_time.as_ref().unwrap())
            .with_timezone(&zone)
            .naive_local()
    };
    let first_local = local(&first);
    assert_eq!(local(next).date(), first_local.date() + TimeDelta::days(1));
    assert_eq!(
        local(next).time().format("%H:%M:%S").to_string(),
        first_local.time().format("%H:%M:%S").to_string()
    );

    // The second of a count of two: once it is sent, the series has ended.
    // (Brought forward by hand: the dispatcher sends what is due, whenever.)
    let mut conn = app.db.admin_connection().await;
    sqlx::query(
        "UPDATE scheduler.reminders SET scheduled_time = now(), next_attempt_time = now()
         WHERE id = $1::uuid",
    )
    .bind(&next.id)
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("SELECT pg_notify('scheduler_due', '')")
        .execute(&mut conn)
        .await
        .unwrap();
    app.wait_reminder(&next.id, Duration::from_secs(20), |r| {
        r.status == pb::ReminderStatus::Sent as i32
    })
    .await;
    // Give a wrongly created third occurrence the time to appear.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = reminders_of(&mut app, &user.id).await;
    assert_eq!(all.len(), 2, "no third occurrence: {all:?}");
    assert!(
        all.iter()
            .all(|r| r.status == pb::ReminderStatus::Sent as i32)
    );
}
