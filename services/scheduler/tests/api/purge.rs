//! PurgeUser: every row of the user goes, counted by table; other users' stay.

use std::collections::HashMap;

use mesh_proto::mesh::scheduler::v1 as pb;
use uuid::Uuid;

use crate::{
    checkins::pending_check_in,
    dead_letters::{dead_reminder, failed_check_in},
    harness::{TestApp, sorted_bad_fields, spawn_with},
};

const TABLES: [&str; 6] = [
    "reminders",
    "check_ins",
    "notifications",
    "calendar_events",
    "dead_letters",
    "idempotency_keys",
];

/// Gives `user` a row in every table: a failed reminder and a failed
/// check-in (each dead-lettered), a scheduled check-in, a calendar event, and
/// a notification created with a request id.
async fn populate(app: &mut TestApp, user: &str) {
    let id = Uuid::parse_str(user).unwrap();
    let mut conn = app.db.admin_connection().await;
    dead_reminder(&mut conn, id, "failed").await;
    failed_check_in(&mut conn, id).await;
    sqlx::query(
        "INSERT INTO scheduler.calendar_events (id, user_id, title, start_time, end_time)
         VALUES ($1, $2, 'Therapy', now() + interval '1 day', now() + interval '25 hours')",
    )
    .bind(Uuid::now_v7())
    .bind(id)
    .execute(&mut conn)
    .await
    .unwrap();
    pending_check_in(app, user, 3).await;
    app.client
        .create_notification(pb::CreateNotificationRequest {
            notification: Some(pb::Notification {
                user_id: user.into(),
                r#type: pb::NotificationType::Alert as i32,
                title: "Heads up".into(),
                message: "Tomorrow".into(),
                ..Default::default()
            }),
            request_id: format!("notify-{user}"),
        })
        .await
        .unwrap();
}

/// The user's rows in each table, as the superuser sees them.
async fn rows_of(app: &TestApp, user: &str) -> HashMap<String, i64> {
    let mut conn = app.db.admin_connection().await;
    let mut counts = HashMap::new();
    for table in TABLES {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM scheduler.{table} WHERE user_id = $1::uuid"
        )))
        .bind(user)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        counts.insert(table.to_owned(), n);
    }
    counts
}

fn counts(pairs: [(&str, i64); 6]) -> HashMap<String, i64> {
    pairs.into_iter().map(|(t, n)| (t.to_owned(), n)).collect()
}

#[tokio::test]
async fn purging_erases_the_user_and_only_them() {
    // No dispatcher: nothing may change the rows while they are counted.
    let mut app = spawn_with(|config| config.dispatcher.enabled = false).await;
    let user = app.new_user("Europe/Madrid").await.id;
    let other = app.new_user("Europe/Madrid").await.id;
    populate(&mut app, &user).await;
    populate(&mut app, &other).await;
    let everything = counts([
        ("reminders", 1),
        ("check_ins", 2),
        ("notifications", 1),
        ("calendar_events", 1),
        ("dead_letters", 2),
        ("idempotency_keys", 1),
    ]);
    assert_eq!(rows_of(&app, &user).await, everything);

    let request = pb::PurgeUserRequest {
        user_id: user.clone(),
        request_id: "purge-1".into(),
    };
    let purged = app
        .client
        .purge_user(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purged.deleted, everything);
    // Only the purge's own answer is left, so that its retry gets it.
    let mut left = counts(TABLES.map(|table| (table, 0)));
    left.insert("idempotency_keys".into(), 1);
    assert_eq!(rows_of(&app, &user).await, left);
    assert_eq!(rows_of(&app, &other).await, everything);

    let again = app.client.purge_user(request).await.unwrap().into_inner();
    assert_eq!(again.deleted, everything);

    let fresh = app
        .client
        .purge_user(pb::PurgeUserRequest {
            user_id: user.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fresh.deleted, counts(TABLES.map(|table| (table, 0))));
    assert_eq!(rows_of(&app, &other).await, everything);
}

#[tokio::test]
async fn a_bad_purge_names_its_fields_and_erases_nothing() {
    let mut app = spawn_with(|config| config.dispatcher.enabled = false).await;
    let user = app.new_user("Europe/Madrid").await.id;
    populate(&mut app, &user).await;
    let before = rows_of(&app, &user).await;
    let status = app
        .client
        .purge_user(pb::PurgeUserRequest {
            user_id: "everyone".into(),
            request_id: "r".repeat(200),
        })
        .await
        .unwrap_err();
    assert_eq!(sorted_bad_fields(&status), ["request_id", "user_id"]);
    assert_eq!(rows_of(&app, &user).await, before);
}
