//! Reminders: create (instants, local times across DST, the user's zone),
//! validation, request_id retries, listing, and the state machine driven
//! through CancelReminder, RescheduleReminder and SnoozeReminder.

use chrono::{DateTime, TimeDelta, Utc};
use mesh_proto::mesh::scheduler::v1 as pb;
use tonic::Code;

use crate::harness::{TestApp, data, sorted_bad_fields, spawn_app, time_of, ts};

fn in_minutes(minutes: i64) -> DateTime<Utc> {
    Utc::now() + TimeDelta::minutes(minutes)
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

/// Puts reminder `id` into `status` behind the API's back, as the
/// dispatcher would (a sent one gets its sent_time; a failed one retries).
async fn force_status(app: &TestApp, id: &str, status: &str) {
    let mut conn = app.db.admin_connection().await;
    sqlx::query(
        "UPDATE scheduler.reminders
         SET status = $2,
             sent_time = CASE WHEN $2 = 'sent' THEN now() END,
             retry_count = CASE WHEN $2 = 'failed' THEN 3 ELSE retry_count END,
             status_reason = CASE WHEN $2 = 'failed' THEN 'provider_down' ELSE status_reason END
         WHERE id = $1::uuid",
    )
    .bind(id)
    .bind(status)
    .execute(&mut conn)
    .await
    .expect("set the status");
}

/// The stored row, every column, to tell whether a call changed it.
async fn stored_row(app: &TestApp, id: &str) -> String {
    let mut conn = app.db.admin_connection().await;
    sqlx::query_scalar("SELECT row_to_json(r)::text FROM scheduler.reminders r WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&mut conn)
        .await
        .expect("the row")
}

#[derive(Clone, Copy, Debug)]
enum Move {
    Cancel,
    Reschedule,
    Snooze,
}

impl Move {
    async fn call(self, app: &mut TestApp, id: &str) -> Result<pb::Reminder, tonic::Status> {
        let reminder_id = id.to_owned();
        let reminder = match self {
            Move::Cancel => {
                app.client
                    .cancel_reminder(pb::CancelReminderRequest {
                        reminder_id,
                        reason: "not needed".into(),
                    })
                    .await?
                    .into_inner()
                    .reminder
            }
            Move::Reschedule => {
                app.client
                    .reschedule_reminder(pb::RescheduleReminderRequest {
                        reminder_id,
                        scheduled_time: Some(ts(in_minutes(120))),
                        local_time: String::new(),
                    })
                    .await?
                    .into_inner()
                    .reminder
            }
            Move::Snooze => {
                app.client
                    .snooze_reminder(pb::SnoozeReminderRequest {
                        reminder_id,
                        duration: None,
                    })
                    .await?
                    .into_inner()
                    .reminder
            }
        };
        Ok(reminder.expect("a reminder"))
    }
}

/// While a dispatcher holds a reminder under a live lease its message may be
/// at the provider: cancel, reschedule and snooze are refused as UNAVAILABLE
/// (retry shortly) and change nothing; once the lease is gone they work.
#[tokio::test]
async fn a_reminder_being_sent_is_not_changed_until_its_lease_ends() {
    let mut app = spawn_app().await;
    let user = app.new_user("America/New_York").await;
    let reminder = app.reminder_at(&user.id, "Leased", in_minutes(60)).await;
    app.lease("reminders", &reminder.id, Some(60)).await;
    let before = stored_row(&app, &reminder.id).await;
    for call in [Move::Cancel, Move::Reschedule, Move::Snooze] {
        let refused = call.call(&mut app, &reminder.id).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{call:?}: {refused:?}");
        assert!(refused.message().contains("being sent"), "{refused:?}");
    }
    assert_eq!(stored_row(&app, &reminder.id).await, before);

    app.lease("reminders", &reminder.id, Some(-1)).await;
    let cancelled = Move::Cancel.call(&mut app, &reminder.id).await.unwrap();
    assert_eq!(cancelled.status, pb::ReminderStatus::Cancelled as i32);
}

#[tokio::test]
async fn the_state_machine_allows_exactly_its_transitions() {
    use pb::ReminderStatus::{Cancelled, Failed, Pending, Sent};
    let mut app = spawn_app().await;
    let user = app.new_user("America/New_York").await;
    // (from, the call, the status it leads to when allowed, allowed)
    let table = [
        (Pending, Move::Cancel, Cancelled, true),
        (Sent, Move::Cancel, Cancelled, false),
        (Failed, Move::Cancel, Cancelled, true),
        (Cancelled, Move::Cancel, Cancelled, false),
        (Pending, Move::Reschedule, Pending, true),
        (Sent, Move::Reschedule, Pending, false),
        (Failed, Move::Reschedule, Pending, true),
        (Cancelled, Move::Reschedule, Pending, true),
        (Pending, Move::Snooze, Pending, true),
        (Sent, Move::Snooze, Pending, false),
        (Failed, Move::Snooze, Pending, false),
        (Cancelled, Move::Snooze, Pending, false),
    ];
    for (from, call, to, allowed) in table {
        let case = format!("{from:?} --{call:?}--> {to:?}");
        let created = app.reminder_at(&user.id, &case, in_minutes(60)).await;
        let from_text = from
            .as_str_name()
            .trim_start_matches("REMINDER_STATUS_")
            .to_lowercase();
        if from == Cancelled {
            Move::Cancel.call(&mut app, &created.id).await.expect(&case);
        } else if from != Pending {
            force_status(&app, &created.id, &from_text).await;
        }
        let before = stored_row(&app, &created.id).await;
        let answer = call.call(&mut app, &created.id).await;
        if allowed {
            let reminder = answer.unwrap_or_else(|e| panic!("{case}: {e:?}"));
            assert_eq!(reminder.status, to as i32, "{case}");
            if to == Pending {
                assert_eq!(reminder.retry_count, 0, "{case}: a retry starts afresh");
                assert_eq!(reminder.status_reason, "", "{case}");
                assert_eq!(
                    reminder.next_attempt_time, reminder.scheduled_time,
                    "{case}"
                );
            } else {
                assert_eq!(reminder.status_reason, "not needed", "{case}");
            }
        } else {
            let status = answer.expect_err(&case);
            assert_eq!(
                status.code(),
                Code::FailedPrecondition,
                "{case}: {status:?}"
            );
            assert!(
                status
                    .message()
                    .contains(&format!("a {from_text} reminder cannot")),
                "{case}: {}",
                status.message()
            );
            assert_eq!(
                stored_row(&app, &created.id).await,
                before,
                "{case}: changed"
            );
        }
    }
}

#[tokio::test]
async fn create_returns_the_stored_reminder() {
    let mut app = spawn_app().await;
    let user = app.new_user("Europe/Madrid").await;
    let at = in_minutes(90);
    let reminder = app
        .client
        .create_reminder(pb::CreateReminderRequest {
            reminder: Some(pb::Reminder {
                user_id: user.id.clone(),
                title: "Call mum".into(),
                description: "About Sunday".into(),
                scheduled_time: Some(ts(at)),
                metadata: data(serde_json::json!({"source": "chat"})),
                delivery: Some(pb::Delivery {
                    channel: mesh_proto::mesh::conversations::v1::Channel::Telegram as i32,
                    whatsapp_template: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner()
        .reminder
        .unwrap();
    assert_eq!(reminder.status, pb::ReminderStatus::Pending as i32);
    assert_eq!(reminder.time_zone, "Europe/Madrid", "the user's zone");
    assert_eq!(reminder.text, "Call mum\n\nAbout Sunday");
    assert_eq!(reminder.series_id, reminder.id);
    assert_eq!(reminder.occurrence, 1);
    assert_eq!(reminder.next_attempt_time, reminder.scheduled_time);
    assert_eq!(
        time_of(reminder.scheduled_time.as_ref().unwrap()).timestamp_micros(),
        at.timestamp_micros()
    );
    assert!(uuid::Uuid::parse_str(&reminder.send_token).is_ok());
    assert_eq!(
        reminder.metadata,
        data(serde_json::json!({"source": "chat"}))
    );
    assert_eq!(
        reminder.delivery.as_ref().map(|d| d.channel),
        Some(mesh_proto::mesh::conversations::v1::Channel::Telegram as i32)
    );
    let got = app
        .client
        .get_reminder(pb::GetReminderRequest {
            reminder_id: reminder.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .reminder
        .unwrap();
    assert_eq!(got, reminder);
}

async fn create_local(
    app: &mut TestApp,
    user_id: &str,
    local_time: &str,
    time_zone: &str,
) -> Result<pb::Reminder, tonic::Status> {
    Ok(app
        .client
        .create_reminder(pb::CreateReminderRequest {
            reminder: Some(pb::Reminder {
                user_id: user_id.into(),
                title: "Local".into(),
                time_zone: time_zone.into(),
                ..Default::default()
            }),
            local_time: local_time.into(),
            request_id: String::new(),
        })
        .await?
        .into_inner()
        .reminder
        .unwrap())
}

#[tokio::test]
async fn local_times_follow_the_dst_rules() {
    let mut app = spawn_app().await;
    let user = app.new_user("America/New_York").await;
    // Spring forward, 2030-03-10: 02:30 does not exist and becomes 03:30 EDT.
    let gap = create_local(&mut app, &user.id, "2030-03-10T02:30", "")
        .await
        .unwrap();
    assert_eq!(
        time_of(gap.scheduled_time.as_ref().unwrap()),
        utc("2030-03-10T07:30:00Z")
    );
    assert_eq!(gap.time_zone, "America/New_York");
    // Fall back, 2030-11-03: 01:30 happens twice; the first is EDT.
    let overlap = create_local(&mut app, &user.id, "2030-11-03T01:30:00", "")
        .await
        .unwrap();
    assert_eq!(
        time_of(overlap.scheduled_time.as_ref().unwrap()),
        utc("2030-11-03T05:30:00Z")
    );
    // A zone given wins over the user's.
    let madrid = create_local(&mut app, &user.id, "2030-03-31T02:30", "Europe/Madrid")
        .await
        .unwrap();
    assert_eq!(madrid.time_zone, "Europe/Madrid");
    assert_eq!(
        time_of(madrid.scheduled_time.as_ref().unwrap()),
        utc("2030-03-31T01:30:00Z")
    );
}

#[tokio::test]
async fn bad_input_names_every_field_and_writes_nothing() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .create_reminder(pb::CreateReminderRequest {
            reminder: Some(pb::Reminder {
                user_id: "not-a-uuid".into(),
                title: String::new(),
                description: "x".repeat(2001),
                time_zone: "Mars/Olympus".into(),
                metadata: None,
                recurrence: Some(pb::Recurrence {
                    frequency: 0,
                    interval: -1,
                    ..Default::default()
                }),
                delivery: Some(pb::Delivery {
                    channel: 99,
                    whatsapp_template: None,
                }),
                ..Default::default()
            }),
            local_time: "tomorrow at nine".into(),
            request_id: "r".repeat(129),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        sorted_bad_fields(&status),
        [
            "local_time",
            "reminder.delivery.channel",
            "reminder.description",
            "reminder.recurrence.frequency",
            "reminder.recurrence.interval",
            "reminder.time_zone",
            "reminder.title",
            "reminder.user_id",
            "request_id",
        ]
    );

    let user = app.new_user("UTC").await;
    let both = app
        .client
        .create_reminder(pb::CreateReminderRequest {
            reminder: Some(pb::Reminder {
                user_id: user.id.clone(),
                title: "Both".into(),
                scheduled_time: Some(ts(in_minutes(5))),
                ..Default::default()
            }),
            local_time: "2030-01-01T09:00".into(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(sorted_bad_fields(&both), ["local_time"]);
    let neither = app
        .client
        .create_reminder(pb::CreateReminderRequest {
            reminder: Some(pb::Reminder {
                user_id: user.id.clone(),
                title: "Neither".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(sorted_bad_fields(&neither), ["reminder.scheduled_time"]);
    let past = app
        .client
        .create_reminder(pb::CreateReminderRequest {
            reminder: Some(pb::Reminder {
                user_id: user.id.clone(),
                title: "Past".into(),
                scheduled_time: Some(ts(in_minutes(-1))),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(sorted_bad_fields(&past), ["reminder.scheduled_time"]);
    let past_local = create_local(&mut app, &user.id, "2020-01-01T09:00", "")
        .await
        .unwrap_err();
    assert_eq!(sorted_bad_fields(&past_local), ["local_time"]);
    // Years chrono parses but no Timestamp holds: named, not a crash.
    for far in ["+262143-12-31T23:00", "10000-01-01T09:00"] {
        let status = create_local(&mut app, &user.id, far, "America/New_York")
            .await
            .unwrap_err();
        assert_eq!(sorted_bad_fields(&status), ["local_time"], "{far}");
    }
    assert_eq!(app.count("reminders").await, 0);
    assert_eq!(app.count("idempotency_keys").await, 0);
}

#[tokio::test]
async fn a_user_the_users_service_does_not_know_is_not_found() {
    let mut app = spawn_app().await;
    let stranger = uuid::Uuid::new_v4().to_string();
    let status = create_local(&mut app, &stranger, "2030-01-01T09:00", "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(app.count("reminders").await, 0);
}

#[tokio::test]
async fn a_retry_with_the_same_request_id_returns_the_first_answer() {
    let mut app = spawn_app().await;
    let user = app.new_user("UTC").await;
    let request = pb::CreateReminderRequest {
        reminder: Some(pb::Reminder {
            user_id: user.id.clone(),
            title: "Once".into(),
            scheduled_time: Some(ts(in_minutes(30))),
            ..Default::default()
        }),
        local_time: String::new(),
        request_id: "create-once".into(),
    };
    let first = app
        .client
        .create_reminder(request.clone())
        .await
        .unwrap()
        .into_inner();
    let again = app
        .client
        .create_reminder(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, again);
    assert_eq!(app.count("reminders").await, 1);
    let mut other = request;
    other.reminder.as_mut().unwrap().title = "Something else".into();
    let status = app.client.create_reminder(other).await.unwrap_err();
    assert_eq!(sorted_bad_fields(&status), ["request_id"]);
    assert_eq!(app.count("reminders").await, 1);
}

#[tokio::test]
async fn lists_page_by_time_and_filter_by_status_and_range() {
    let mut app = spawn_app().await;
    let user = app.new_user("UTC").await;
    let other = app.new_user("UTC").await;
    let base = in_minutes(60);
    let mut ids = Vec::new();
    // Created out of order: the list orders by scheduled time.
    for offset in [3, 1, 4, 0, 2] {
        let reminder = app
            .reminder_at(
                &user.id,
                &format!("r{offset}"),
                base + TimeDelta::minutes(offset),
            )
            .await;
        ids.push((offset, reminder.id));
    }
    ids.sort();
    let expected: Vec<String> = ids.into_iter().map(|(_, id)| id).collect();
    app.reminder_at(&other.id, "not theirs", base).await;

    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .client
            .list_reminders(pb::ListRemindersRequest {
                user_id: user.id.clone(),
                page_size: 2,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.reminders.len() <= 2);
        seen.extend(page.reminders.into_iter().map(|r| r.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, expected);

    Move::Cancel.call(&mut app, &expected[1]).await.unwrap();
    let cancelled = app
        .client
        .list_reminders(pb::ListRemindersRequest {
            user_id: user.id.clone(),
            statuses: vec![pb::ReminderStatus::Cancelled as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        cancelled
            .reminders
            .iter()
            .map(|r| &r.id)
            .collect::<Vec<_>>(),
        [&expected[1]]
    );
    let ranged = app
        .client
        .list_reminders(pb::ListRemindersRequest {
            user_id: user.id.clone(),
            start_time: Some(ts(base + TimeDelta::minutes(1))),
            end_time: Some(ts(base + TimeDelta::minutes(3))),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ranged
            .reminders
            .iter()
            .map(|r| r.id.clone())
            .collect::<Vec<_>>(),
        expected[1..3]
    );
    let bad = app
        .client
        .list_reminders(pb::ListRemindersRequest {
            user_id: "nope".into(),
            statuses: vec![42],
            start_time: Some(ts(base)),
            end_time: Some(ts(base)),
            page_size: -1,
            page_token: "garbage".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        sorted_bad_fields(&bad),
        ["end_time", "page_size", "page_token", "statuses", "user_id"]
    );
}

#[tokio::test]
async fn reschedule_and_snooze_move_the_time() {
    let mut app = spawn_app().await;
    let user = app.new_user("America/New_York").await;
    let reminder = app.reminder_at(&user.id, "Move me", in_minutes(60)).await;
    let moved = app
        .client
        .reschedule_reminder(pb::RescheduleReminderRequest {
            reminder_id: reminder.id.clone(),
            scheduled_time: None,
            local_time: "2030-03-10T02:30".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .reminder
        .unwrap();
    assert_eq!(
        time_of(moved.scheduled_time.as_ref().unwrap()),
        utc("2030-03-10T07:30:00Z")
    );
    assert_eq!(moved.next_attempt_time, moved.scheduled_time);

    let before = Utc::now();
    let snoozed = app
        .client
        .snooze_reminder(pb::SnoozeReminderRequest {
            reminder_id: reminder.id.clone(),
            duration: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .reminder
        .unwrap();
    let snoozed_to = time_of(snoozed.scheduled_time.as_ref().unwrap());
    assert!(
        snoozed_to >= before + TimeDelta::hours(1) - TimeDelta::milliseconds(1),
        "{snoozed_to}"
    );
    assert!(
        snoozed_to <= Utc::now() + TimeDelta::hours(1),
        "{snoozed_to}"
    );
    assert_eq!(snoozed.next_attempt_time, snoozed.scheduled_time);

    let too_short = app
        .client
        .snooze_reminder(pb::SnoozeReminderRequest {
            reminder_id: reminder.id.clone(),
            duration: Some(prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(sorted_bad_fields(&too_short), ["duration"]);
    let past = app
        .client
        .reschedule_reminder(pb::RescheduleReminderRequest {
            reminder_id: reminder.id.clone(),
            scheduled_time: Some(ts(in_minutes(-5))),
            local_time: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(sorted_bad_fields(&past), ["scheduled_time"]);
    let unknown = app
        .client
        .cancel_reminder(pb::CancelReminderRequest {
            reminder_id: uuid::Uuid::new_v4().to_string(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}
