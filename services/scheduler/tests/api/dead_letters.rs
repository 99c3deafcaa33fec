//! ListDeadLetters, RetryDeadLetter, DiscardDeadLetter. The dispatcher writes
//! dead letters; here they are written as the superuser, each with its failed
//! item, and the dispatcher is off so that nothing sends a revived item.

use mesh_proto::mesh::scheduler::v1::{self as pb, CheckInStatus, DeadLetterOperation};
use sqlx::PgConnection;
use tonic::Code;
use uuid::Uuid;

use crate::harness::{TestApp, data, sorted_bad_fields, spawn_with};

async fn spawn_without_dispatcher() -> TestApp {
    spawn_with(|config| config.dispatcher.enabled = false).await
}

/// A failed check-in of `user` with its dead letter; returns (dead letter, check-in).
pub async fn failed_check_in(conn: &mut PgConnection, user: Uuid) -> (Uuid, Uuid) {
    let item = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO scheduler.check_ins (id, user_id, slot_date, scheduled_time, time_zone,
             content, status, status_reason, retry_count, send_token, next_attempt_time)
         VALUES ($1, $2, current_date - 1, now() - interval '1 day', 'Europe/Madrid',
             'How are you?', 'failed', 'rate_limited', 3, gen_random_uuid(),
             now() - interval '1 day')",
    )
    .bind(item)
    .bind(user)
    .execute(&mut *conn)
    .await
    .unwrap();
    (dead_letter(conn, "send_check_in", item, user).await, item)
}

/// A reminder of `user` in `status` with its dead letter; returns (dead letter, reminder).
pub async fn dead_reminder(conn: &mut PgConnection, user: Uuid, status: &str) -> (Uuid, Uuid) {
    let item = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO scheduler.reminders (id, user_id, title, scheduled_time, time_zone, status,
             status_reason, retry_count, send_token, series_id, series_local_time,
             next_attempt_time)
         VALUES ($1, $2, 'Call mum', now() - interval '1 hour', 'Europe/Madrid', $3,
             'rate_limited', 3, gen_random_uuid(), $1, localtimestamp, now() - interval '1 hour')",
    )
    .bind(item)
    .bind(user)
    .bind(status)
    .execute(&mut *conn)
    .await
    .unwrap();
    (dead_letter(conn, "send_reminder", item, user).await, item)
}

async fn dead_letter(conn: &mut PgConnection, operation: &str, item: Uuid, user: Uuid) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO scheduler.dead_letters (id, operation, item_id, user_id, payload, error, retries)
         VALUES ($1, $2, $3, $4, '{\"text\": \"hello\", \"channel\": \"whatsapp\"}', 'HTTP 429', 3)",
    )
    .bind(id)
    .bind(operation)
    .bind(item)
    .bind(user)
    .execute(conn)
    .await
    .unwrap();
    id
}

/// (status, status_reason, retry_count, due now, leased) of an item as stored.
async fn stored_item(app: &TestApp, table: &str, id: Uuid) -> (String, String, i32, bool, bool) {
    let mut conn = app.db.admin_connection().await;
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT status, status_reason, retry_count, next_attempt_time <= now(),
                lease_owner IS NOT NULL
         FROM scheduler.{table} WHERE id = $1"
    )))
    .bind(id)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

async fn dead_letter_ids(app: &TestApp) -> Vec<Uuid> {
    let mut conn = app.db.admin_connection().await;
    sqlx::query_scalar("SELECT id FROM scheduler.dead_letters ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

async fn retry(
    app: &mut TestApp,
    dead_letter: Uuid,
) -> Result<tonic::Response<pb::RetryDeadLetterResponse>, tonic::Status> {
    app.client
        .retry_dead_letter(pb::RetryDeadLetterRequest {
            dead_letter_id: dead_letter.to_string(),
        })
        .await
}

#[tokio::test]
async fn dead_letters_list_oldest_first_by_pages_and_by_user() {
    let mut app = spawn_without_dispatcher().await;
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let mut conn = app.db.admin_connection().await;
    let (first, check_in) = failed_check_in(&mut conn, alice).await;
    let (second, _) = dead_reminder(&mut conn, bob, "failed").await;
    let (third, _) = dead_reminder(&mut conn, alice, "failed").await;

    let page = app
        .client
        .list_dead_letters(pb::ListDeadLettersRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = page.dead_letters.iter().map(|d| d.id.clone()).collect();
    assert_eq!(ids, [first.to_string(), second.to_string()]);
    let shown = &page.dead_letters[0];
    assert_eq!(shown.operation, DeadLetterOperation::SendCheckIn as i32);
    assert_eq!(shown.item_id, check_in.to_string());
    assert_eq!(shown.user_id, alice.to_string());
    assert_eq!(
        shown.payload,
        data(serde_json::json!({"text": "hello", "channel": "whatsapp"}))
    );
    assert_eq!((shown.error.as_str(), shown.retries), ("HTTP 429", 3));
    let rest = app
        .client
        .list_dead_letters(pb::ListDeadLettersRequest {
            page_size: 2,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = rest.dead_letters.iter().map(|d| d.id.clone()).collect();
    assert_eq!(ids, [third.to_string()]);
    assert_eq!(rest.next_page_token, "");

    let alices = app
        .client
        .list_dead_letters(pb::ListDeadLettersRequest {
            user_id: alice.to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = alices.dead_letters.iter().map(|d| d.id.clone()).collect();
    assert_eq!(ids, [first.to_string(), third.to_string()]);

    let status = app
        .client
        .list_dead_letters(pb::ListDeadLettersRequest {
            user_id: "alice".into(),
            page_size: -1,
            page_token: "forged".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        sorted_bad_fields(&status),
        ["page_size", "page_token", "user_id"]
    );
}

#[tokio::test]
async fn retrying_puts_the_check_in_back_to_pending_and_removes_the_dead_letter() {
    let mut app = spawn_without_dispatcher().await;
    let mut conn = app.db.admin_connection().await;
    let (dead, item) = failed_check_in(&mut conn, Uuid::now_v7()).await;
    let (other, _) = failed_check_in(&mut conn, Uuid::now_v7()).await;

    let response = retry(&mut app, dead).await.unwrap().into_inner();
    assert_eq!(response.reminder, None);
    let check_in = response.check_in.expect("the check-in");
    assert_eq!(check_in.id, item.to_string());
    assert_eq!(check_in.status, CheckInStatus::Pending as i32);
    assert_eq!(
        (check_in.retry_count, check_in.status_reason.as_str()),
        (0, "")
    );
    assert_eq!(
        stored_item(&app, "check_ins", item).await,
        ("pending".into(), String::new(), 0, true, false)
    );
    assert_eq!(dead_letter_ids(&app).await, [other]);

    let status = retry(&mut app, dead).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn retrying_puts_the_reminder_back_to_pending() {
    let mut app = spawn_without_dispatcher().await;
    let mut conn = app.db.admin_connection().await;
    let (dead, item) = dead_reminder(&mut conn, Uuid::now_v7(), "failed").await;
    let response = retry(&mut app, dead).await.unwrap().into_inner();
    assert_eq!(response.check_in, None);
    assert_eq!(
        response.reminder.expect("the reminder").id,
        item.to_string()
    );
    assert_eq!(
        stored_item(&app, "reminders", item).await,
        ("pending".into(), String::new(), 0, true, false)
    );
    assert!(dead_letter_ids(&app).await.is_empty());
}

#[tokio::test]
async fn an_item_no_longer_failed_is_not_retried_and_keeps_its_dead_letter() {
    let mut app = spawn_without_dispatcher().await;
    let mut conn = app.db.admin_connection().await;
    // The user cancelled the reminder after it failed.
    let (dead, item) = dead_reminder(&mut conn, Uuid::now_v7(), "cancelled").await;
    let status = retry(&mut app, dead).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("cancelled"),
        "{}",
        status.message()
    );
    assert_eq!(
        stored_item(&app, "reminders", item).await,
        ("cancelled".into(), "rate_limited".into(), 3, true, false)
    );
    assert_eq!(dead_letter_ids(&app).await, [dead]);
}

#[tokio::test]
async fn discarding_removes_the_dead_letter_and_the_item_stays_failed() {
    let mut app = spawn_without_dispatcher().await;
    let mut conn = app.db.admin_connection().await;
    let (dead, item) = failed_check_in(&mut conn, Uuid::now_v7()).await;
    app.client
        .discard_dead_letter(pb::DiscardDeadLetterRequest {
            dead_letter_id: dead.to_string(),
        })
        .await
        .unwrap();
    assert!(dead_letter_ids(&app).await.is_empty());
    assert_eq!(
        stored_item(&app, "check_ins", item).await,
        ("failed".into(), "rate_limited".into(), 3, true, false)
    );

    let status = app
        .client
        .discard_dead_letter(pb::DiscardDeadLetterRequest {
            dead_letter_id: dead.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = app
        .client
        .discard_dead_letter(pb::DiscardDeadLetterRequest {
            dead_letter_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(sorted_bad_fields(&status), ["dead_letter_id"]);
}

/// A failed reminder moved on by its user (rescheduled, or cancelled) needs
/// no operator: its dead letter goes with the move.
#[tokio::test]
async fn a_failed_reminder_rescheduled_or_cancelled_takes_its_dead_letter_along() {
    let mut app = spawn_without_dispatcher().await;
    let mut conn = app.db.admin_connection().await;
    let (_, rescheduled) = dead_reminder(&mut conn, Uuid::now_v7(), "failed").await;
    let (_, cancelled) = dead_reminder(&mut conn, Uuid::now_v7(), "failed").await;
    let (kept, _) = dead_reminder(&mut conn, Uuid::now_v7(), "failed").await;
    app.client
        .reschedule_reminder(pb::RescheduleReminderRequest {
            reminder_id: rescheduled.to_string(),
            scheduled_time: Some(crate::harness::ts(
                chrono::Utc::now() + chrono::TimeDelta::hours(1),
            )),
            local_time: String::new(),
        })
        .await
        .unwrap();
    app.client
        .cancel_reminder(pb::CancelReminderRequest {
            reminder_id: cancelled.to_string(),
            reason: "done by hand".into(),
        })
        .await
        .unwrap();
    assert_eq!(dead_letter_ids(&app).await, [kept]);
}
