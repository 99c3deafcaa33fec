//! CreateNotification, ListNotifications, MarkNotificationRead and the
//! retention of read ones.

use std::time::Duration;

use mesh_proto::mesh::scheduler::v1::{self as pb, NotificationPriority, NotificationType};
use tonic::Code;

use crate::harness::{TestApp, data, sorted_bad_fields, spawn_app, spawn_scheduler};

fn notification(user_id: &str, title: &str) -> pb::Notification {
    pb::Notification {
        user_id: user_id.into(),
        r#type: NotificationType::Insight as i32,
        title: title.into(),
        message: format!("About {title}"),
        ..Default::default()
    }
}

pub async fn notify(app: &mut TestApp, user_id: &str, title: &str) -> pb::Notification {
    app.client
        .create_notification(pb::CreateNotificationRequest {
            notification: Some(notification(user_id, title)),
            request_id: String::new(),
        })
        .await
        .expect("create a notification")
        .into_inner()
        .notification
        .expect("a notification")
}

async fn mark_read(app: &mut TestApp, id: &str) -> pb::Notification {
    app.client
        .mark_notification_read(pb::MarkNotificationReadRequest {
            notification_id: id.into(),
        })
        .await
        .expect("mark it read")
        .into_inner()
        .notification
        .expect("a notification")
}

async fn list(
    app: &mut TestApp,
    user_id: &str,
    unread_only: bool,
    page_size: i32,
    page_token: String,
) -> pb::ListNotificationsResponse {
    app.client
        .list_notifications(pb::ListNotificationsRequest {
            user_id: user_id.into(),
            unread_only,
            page_size,
            page_token,
        })
        .await
        .expect("list notifications")
        .into_inner()
}

fn titles(response: &pb::ListNotificationsResponse) -> Vec<String> {
    response
        .notifications
        .iter()
        .map(|n| n.title.clone())
        .collect()
}

#[tokio::test]
async fn creating_names_every_bad_field_and_writes_nothing() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .create_notification(pb::CreateNotificationRequest {
            notification: Some(pb::Notification {
                user_id: "someone".into(),
                r#type: 0,
                title: "t".repeat(201),
                message: String::new(),
                priority: 9,
                ..Default::default()
            }),
            request_id: "r".repeat(129),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        sorted_bad_fields(&status),
        [
            "notification.message",
            "notification.priority",
            "notification.title",
            "notification.type",
            "notification.user_id",
            "request_id",
        ]
    );
    assert_eq!(app.count("notifications").await, 0);
}

#[tokio::test]
async fn a_notification_keeps_what_it_was_given_and_a_retry_returns_it() {
    let mut app = spawn_app().await;
    let user = uuid::Uuid::now_v7().to_string();
    let request = pb::CreateNotificationRequest {
        notification: Some(pb::Notification {
            action: data(serde_json::json!({"open": "session", "id": 7})),
            priority: NotificationPriority::Urgent as i32,
            ..notification(&user, "Session tomorrow")
        }),
        request_id: "notify-1".into(),
    };
    let created = app
        .client
        .create_notification(request.clone())
        .await
        .unwrap()
        .into_inner()
        .notification
        .unwrap();
    assert_eq!(created.title, "Session tomorrow");
    assert_eq!(created.priority, NotificationPriority::Urgent as i32);
    assert_eq!(
        created.action,
        data(serde_json::json!({"open": "session", "id": 7}))
    );
    assert!(!created.read);
    assert_eq!(created.read_time, None);
    let again = app
        .client
        .create_notification(request)
        .await
        .unwrap()
        .into_inner()
        .notification
        .unwrap();
    assert_eq!(again, created);
    assert_eq!(app.count("notifications").await, 1);

    let plain = notify(&mut app, &user, "Plain").await;
    assert_eq!(plain.priority, NotificationPriority::Normal as i32);
}

#[tokio::test]
async fn the_list_is_newest_first_with_unread_ones_counted() {
    let mut app = spawn_app().await;
    let user = uuid::Uuid::now_v7().to_string();
    let other = uuid::Uuid::now_v7().to_string();
    let mut ids = Vec::new();
    for title in ["one", "two", "three", "four"] {
        ids.push(notify(&mut app, &user, title).await.id);
    }
    notify(&mut app, &other, "elsewhere").await;
    mark_read(&mut app, &ids[2]).await;

    let first = list(&mut app, &user, false, 3, String::new()).await;
    assert_eq!(titles(&first), ["four", "three", "two"]);
    assert_eq!(first.unread_count, 3);
    assert!(first.notifications[1].read);
    let second = list(&mut app, &user, false, 3, first.next_page_token).await;
    assert_eq!(titles(&second), ["one"]);
    assert_eq!(second.next_page_token, "");
    assert_eq!(second.unread_count, 3);

    let unread = list(&mut app, &user, true, 2, String::new()).await;
    assert_eq!(titles(&unread), ["four", "two"]);
    let rest = list(&mut app, &user, true, 2, unread.next_page_token).await;
    assert_eq!(titles(&rest), ["one"]);

    let status = app
        .client
        .list_notifications(pb::ListNotificationsRequest {
            user_id: "x".into(),
            page_size: -3,
            page_token: "forged".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        sorted_bad_fields(&status),
        ["page_size", "page_token", "user_id"]
    );
}

#[tokio::test]
async fn marking_read_twice_keeps_the_first_read_time() {
    let mut app = spawn_app().await;
    let user = uuid::Uuid::now_v7().to_string();
    let created = notify(&mut app, &user, "Insight").await;
    let read = mark_read(&mut app, &created.id).await;
    assert!(read.read);
    let read_time = read.read_time.expect("a read time");
    let again = mark_read(&mut app, &created.id).await;
    assert_eq!(again.read_time, Some(read_time));
    assert_eq!(
        list(&mut app, &user, false, 0, String::new())
            .await
            .unread_count,
        0
    );

    let status = app
        .client
        .mark_notification_read(pb::MarkNotificationReadRequest {
            notification_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = app
        .client
        .mark_notification_read(pb::MarkNotificationReadRequest::default())
        .await
        .unwrap_err();
    assert_eq!(sorted_bad_fields(&status), ["notification_id"]);
}

/// Moves the notification's read time (or, with None, leaves it unread) and
/// its creation `days` into the past, as the superuser.
async fn age(app: &TestApp, id: &str, days: i32, read: bool) {
    let mut conn = app.db.admin_connection().await;
    sqlx::query(
        "UPDATE scheduler.notifications
         SET create_time = now() - make_interval(days => $2),
             read_time = CASE WHEN $3 THEN now() - make_interval(days => $2) END
         WHERE id = $1::uuid",
    )
    .bind(id)
    .bind(days)
    .bind(read)
    .execute(&mut conn)
    .await
    .unwrap();
}

async fn stored_ids(app: &TestApp) -> Vec<String> {
    let mut conn = app.db.admin_connection().await;
    sqlx::query_scalar("SELECT id::text FROM scheduler.notifications ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn retention_deletes_only_read_notifications_past_it() {
    let mut app = spawn_app().await;
    let user = uuid::Uuid::now_v7().to_string();
    let old_read = notify(&mut app, &user, "old and read").await.id;
    let old_unread = notify(&mut app, &user, "old, never read").await.id;
    let recent_read = notify(&mut app, &user, "read lately").await.id;
    let fresh = notify(&mut app, &user, "fresh").await.id;
    // The retention is 30 days.
    age(&app, &old_read, 31, true).await;
    age(&app, &old_unread, 90, false).await;
    age(&app, &recent_read, 29, true).await;

    // Housekeeping runs shortly after a scheduler starts serving: start one
    // now that the rows are aged, and wait for its first round.
    let replica = spawn_scheduler(&app.config).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stored_ids(&app).await.contains(&old_read) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old read notification was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut kept = vec![old_unread, recent_read, fresh];
    kept.sort();
    assert_eq!(stored_ids(&app).await, kept);
    replica.shut_down().await;
}
