//! The dispatcher against the real users and conversations services and the
//! fake providers: sends, quiet hours, the WhatsApp window, Telegram,
//! retries and dead letters, check-ins, and the lateness on /metrics.
//!
//! Items are inserted by SQL (as CreateReminder would store them) so these
//! tests exercise the dispatcher alone; statuses are read back by SQL.

use std::{net::SocketAddr, time::Duration};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use mesh_proto::mesh::scheduler::v1 as pb;
use serde_json::{Value, json};
use sqlx::Row as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::harness::{TestApp, WaReply, spawn_app, spawn_with};

const WITHIN: Duration = Duration::from_secs(20);

/// How a reminder is sent, beyond its defaults.
#[derive(Default)]
pub struct Send<'a> {
    pub channel: Option<&'a str>,
    pub template: Option<Value>,
}

/// Inserts a pending reminder due at `at`, as CreateReminder stores one, and
/// wakes the dispatchers; returns its id.
pub async fn insert_reminder(
    app: &TestApp,
    user_id: &str,
    title: &str,
    at: DateTime<Utc>,
    send: Send<'_>,
) -> Uuid {
    let id = Uuid::new_v4();
    let mut conn = app.db.admin_connection().await;
    sqlx::query(
        "INSERT INTO scheduler.reminders (id, user_id, title, scheduled_time, time_zone,
             send_token, series_id, series_local_time, next_attempt_time, channel,
             whatsapp_template)
         VALUES ($1, $2, $3, $4, 'UTC', $5, $1, $4::timestamp, $4, $6, $7)",
    )
    .bind(id)
    .bind(user_id.parse::<Uuid>().unwrap())
    .bind(title)
    .bind(at)
    .bind(Uuid::new_v4())
    .bind(send.channel)
    .bind(send.template)
    .execute(&mut conn)
    .await
    .expect("insert a reminder");
    sqlx::query("SELECT pg_notify('scheduler_due', '')")
        .execute(&mut conn)
        .await
        .unwrap();
    id
}

/// A reminder's dispatch columns, read by SQL.
#[derive(Debug, Clone)]
pub struct Row {
    pub status: String,
    pub status_reason: String,
    pub retry_count: i32,
    pub provider_message_id: Option<String>,
    pub next_attempt_time: DateTime<Utc>,
    pub send_token: Uuid,
}

pub async fn row(app: &TestApp, table: &str, id: Uuid) -> Row {
    let mut conn = app.db.admin_connection().await;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT status, status_reason, retry_count, provider_message_id, next_attempt_time,
                send_token
         FROM scheduler.{table} WHERE id = $1"
    )))
    .bind(id)
    .fetch_one(&mut conn)
    .await
    .expect("the item");
    Row {
        status: row.get("status"),
        status_reason: row.get("status_reason"),
        retry_count: row.get("retry_count"),
        provider_message_id: row.get("provider_message_id"),
        next_attempt_time: row.get("next_attempt_time"),
        send_token: row.get("send_token"),
    }
}

/// Polls the item until `done` holds (at most [`WITHIN`]).
pub async fn wait_row(app: &TestApp, table: &str, id: Uuid, done: impl Fn(&Row) -> bool) -> Row {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let row = row(app, table, id).await;
        if done(&row) {
            return row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{table} {id} did not get there: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The WhatsApp sends the fake received whose text (or template name) is `body`.
pub fn whatsapp_sends(app: &TestApp, body: &str) -> Vec<Value> {
    app.providers
        .whatsapp
        .requests()
        .into_iter()
        .map(|r| r.body)
        .filter(|b| b["text"]["body"] == body || b["template"]["name"] == body)
        .collect()
}

/// Outbound messages conversations stored under `request_id`.
pub async fn stored_messages(app: &TestApp, request_id: Uuid) -> Vec<(String, Option<String>)> {
    let mut conn = app.db.admin_connection().await;
    sqlx::query_as(
        "SELECT coalesce(delivery_status, ''), provider_message_id
         FROM conversations.messages WHERE send_request_id = $1",
    )
    .bind(request_id.to_string())
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

/// `GET /metrics`, by hand (no HTTP client among the dev-dependencies).
pub async fn scrape(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// A user in Bogotá whose quiet hours (the users service has defaults) are
/// hours away, whatever the time of the run.
pub async fn awake_user(app: &mut TestApp) -> mesh_proto::mesh::users::v1::User {
    let user = app.new_user("America/Bogota").await;
    let now = Utc::now();
    app.set_quiet_hours(
        &user.id,
        &bogota(now + TimeDelta::hours(2)),
        &bogota(now + TimeDelta::hours(3)),
    )
    .await;
    user
}

fn unique(what: &str) -> String {
    format!("{what} {}", Uuid::new_v4().simple())
}

fn ago(seconds: i64) -> DateTime<Utc> {
    Utc::now() - TimeDelta::seconds(seconds)
}

#[tokio::test]
async fn a_due_reminder_is_sent_once_and_its_lateness_is_on_metrics() {
    let mut app = spawn_app().await;
    let user = awake_user(&mut app).await;
    app.open_whatsapp_window(&user.id).await;
    let title = unique("Take the pills");
    let id = insert_reminder(&app, &user.id, &title, ago(1), Send::default()).await;

    let sent = wait_row(&app, "reminders", id, |r| r.status == "sent").await;

    let sends = whatsapp_sends(&app, &title);
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(sends[0]["type"], "text");
    let stored = stored_messages(&app, sent.send_token).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(sent.provider_message_id, stored[0].1);
    assert!(
        sent.provider_message_id
            .as_deref()
            .unwrap()
            .starts_with("wamid.")
    );
    assert_eq!(sent.status_reason, "");
    let metrics = scrape(app.scheduler.metrics_addr).await;
    assert!(
        metrics.contains(r#"scheduler_dispatch_lateness_seconds_count{kind="reminder"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"scheduler_dispatch_outcomes_total{kind="reminder",outcome="sent"} 1"#),
        "{metrics}"
    );
}

/// "HH:MM" in Bogotá (UTC-5 all year) at `time`.
fn bogota(time: DateTime<Utc>) -> String {
    (time - TimeDelta::hours(5)).format("%H:%M").to_string()
}

#[tokio::test]
async fn quiet_hours_defer_the_send_to_their_end_and_others_are_sent() {
    let mut app = spawn_app().await;
    let now = Utc::now().duration_trunc(TimeDelta::minutes(1)).unwrap();
    let quiet = app.new_user("America/Bogota").await;
    let end = now + TimeDelta::hours(2);
    app.set_quiet_hours(&quiet.id, &bogota(now - TimeDelta::hours(1)), &bogota(end))
        .await;
    let awake = app.new_user("America/Bogota").await;
    app.set_quiet_hours(
        &awake.id,
        &bogota(now + TimeDelta::hours(2)),
        &bogota(now + TimeDelta::hours(3)),
    )
    .await;
    app.open_whatsapp_window(&quiet.id).await;
    app.open_whatsapp_window(&awake.id).await;
    let hushed = unique("Hushed");
    let loud = unique("Loud");
    let deferred = insert_reminder(&app, &quiet.id, &hushed, ago(1), Send::default()).await;
    let sent = insert_reminder(&app, &awake.id, &loud, ago(1), Send::default()).await;

    let deferred = wait_row(&app, "reminders", deferred, |r| {
        r.status_reason.starts_with("deferred")
    })
    .await;
    wait_row(&app, "reminders", sent, |r| r.status == "sent").await;

    assert_eq!(deferred.status, "pending");
    assert_eq!(deferred.next_attempt_time, end);
    assert_eq!(deferred.retry_count, 0);
    assert_eq!(
        deferred.status_reason,
        format!("deferred: quiet hours until {}", end.to_rfc3339())
    );
    assert!(whatsapp_sends(&app, &hushed).is_empty());
    assert_eq!(whatsapp_sends(&app, &loud).len(), 1);
}

#[tokio::test]
async fn outside_the_whatsapp_window_the_template_is_sent_or_the_item_fails() {
    let mut app = spawn_app().await;
    let closed_with_template = awake_user(&mut app).await;
    let closed_without = awake_user(&mut app).await;
    let open = awake_user(&mut app).await;
    app.open_whatsapp_window(&open.id).await;
    let template = format!("nudge_{}", Uuid::new_v4().simple());
    let templated = insert_reminder(
        &app,
        &closed_with_template.id,
        &unique("Templated"),
        ago(1),
        Send {
            template: Some(json!({"name": template, "language_code": "es", "components": []})),
            ..Send::default()
        },
    )
    .await;
    let refused = insert_reminder(
        &app,
        &closed_without.id,
        &unique("Refused"),
        ago(1),
        Send::default(),
    )
    .await;
    let text = unique("Free form");
    let free = insert_reminder(&app, &open.id, &text, ago(1), Send::default()).await;

    wait_row(&app, "reminders", templated, |r| r.status == "sent").await;
    let refused = wait_row(&app, "reminders", refused, |r| r.status != "pending").await;
    wait_row(&app, "reminders", free, |r| r.status == "sent").await;

    let sends = whatsapp_sends(&app, &template);
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert_eq!(sends[0]["type"], "template");
    assert_eq!(refused.status, "failed");
    assert_eq!(refused.status_reason, "outside_whatsapp_window");
    assert!(stored_messages(&app, refused.send_token).await.is_empty());
    assert_eq!(whatsapp_sends(&app, &text)[0]["type"], "text");
}

#[tokio::test]
async fn a_reminder_on_telegram_is_sent_there() {
    let mut app = spawn_app().await;
    let user = awake_user(&mut app).await;
    let title = unique("On Telegram");
    let id = insert_reminder(
        &app,
        &user.id,
        &title,
        ago(1),
        Send {
            channel: Some("telegram"),
            ..Send::default()
        },
    )
    .await;

    let sent = wait_row(&app, "reminders", id, |r| r.status == "sent").await;

    let sends: Vec<_> = app
        .providers
        .telegram
        .requests()
        .into_iter()
        .filter(|r| r.body["text"] == title.as_str())
        .collect();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].body["chat_id"], user.telegram_user_id.unwrap());
    assert!(sent.provider_message_id.is_some());
    assert!(whatsapp_sends(&app, &title).is_empty());
}

#[tokio::test]
async fn rate_limits_and_outages_are_retried_until_the_send_goes_through() {
    let mut app = spawn_app().await;
    let user = awake_user(&mut app).await;
    app.open_whatsapp_window(&user.id).await;
    app.providers
        .whatsapp
        .script([WaReply::outage(), WaReply::rate_limit()]);
    let title = unique("Eventually");
    let id = insert_reminder(&app, &user.id, &title, ago(1), Send::default()).await;

    let sent = wait_row(&app, "reminders", id, |r| r.status == "sent").await;

    assert_eq!(sent.retry_count, 2);
    assert_eq!(
        whatsapp_sends(&app, &title).len(),
        3,
        "two refused, one taken"
    );
    let stored = stored_messages(&app, sent.send_token).await;
    assert_eq!(
        stored.len(),
        1,
        "one message, tried three times: {stored:?}"
    );
    assert_eq!(stored[0].1, sent.provider_message_id);
    assert_eq!(app.count("dead_letters").await, 0);
    let metrics = scrape(app.scheduler.metrics_addr).await;
    assert!(
        metrics
            .contains(r#"scheduler_dispatch_outcomes_total{kind="reminder",outcome="retried"} 2"#),
        "{metrics}"
    );
}

/// A retry resends the first attempt's request as it was, even when the
/// item changed in between (here its title): conversations takes it as the
/// same send retried, not as another request under the same request_id.
#[tokio::test]
async fn a_retry_resends_the_first_attempts_request_as_it_was() {
    let mut app = spawn_with(|config| {
        // Time to edit the reminder between the two attempts.
        config.dispatcher.retry_base = Duration::from_secs(3);
        config.dispatcher.retry_max = Duration::from_secs(3);
    })
    .await;
    let user = awake_user(&mut app).await;
    app.open_whatsapp_window(&user.id).await;
    app.providers.whatsapp.script([WaReply::outage()]);
    let title = unique("Pinned");
    let id = insert_reminder(&app, &user.id, &title, ago(1), Send::default()).await;
    let waiting = wait_row(&app, "reminders", id, |r| r.retry_count == 1).await;
    assert_eq!(waiting.status, "pending");
    let mut conn = app.db.admin_connection().await;
    sqlx::query("UPDATE scheduler.reminders SET title = 'Edited ' || title WHERE id = $1")
        .bind(id)
        .execute(&mut conn)
        .await
        .unwrap();

    let sent = wait_row(&app, "reminders", id, |r| r.status == "sent").await;
    assert_eq!(sent.retry_count, 1);
    assert_eq!(whatsapp_sends(&app, &title).len(), 2, "the same text twice");
    assert!(whatsapp_sends(&app, &format!("Edited {title}")).is_empty());
    let stored = stored_messages(&app, sent.send_token).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].1, sent.provider_message_id);
    assert_eq!(app.count("dead_letters").await, 0);
}

/// A send that outlasts 80% of the lease is given up and retried under the
/// same token before another replica could claim the item: conversations,
/// still sending the first, answers the retry with that send. One message.
#[tokio::test]
async fn a_send_slower_than_the_lease_budget_is_retried_as_the_same_send() {
    let mut app = spawn_with(|config| config.dispatcher.lease = Duration::from_secs(2)).await;
    let user = awake_user(&mut app).await;
    app.open_whatsapp_window(&user.id).await;
    // Past the budget (1.6 s), within conversations' provider timeout (5 s).
    app.providers.whatsapp.script([WaReply::Delayed(
        Duration::from_secs(3),
        Box::new(WaReply::Accept),
    )]);
    let title = unique("Slow");
    let id = insert_reminder(&app, &user.id, &title, ago(1), Send::default()).await;

    let sent = wait_row(&app, "reminders", id, |r| r.status == "sent").await;
    // Given up at least once (a retry waiting on the first send's answer
    // may itself run out of budget, so one or two).
    assert!(sent.retry_count >= 1, "{sent:?}");
    assert_eq!(
        whatsapp_sends(&app, &title).len(),
        1,
        "one provider request"
    );
    let stored = stored_messages(&app, sent.send_token).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].1, sent.provider_message_id);
}

/// A reminder whose every attempt meets an outage (max_retries is 3).
async fn dead_lettered(app: &mut TestApp) -> (Uuid, String, Row) {
    let user = awake_user(app).await;
    app.open_whatsapp_window(&user.id).await;
    app.providers
        .whatsapp
        .script((0..3).map(|_| WaReply::outage()));
    let title = unique("Doomed");
    let id = insert_reminder(app, &user.id, &title, ago(1), Send::default()).await;
    let failed = wait_row(app, "reminders", id, |r| r.status != "pending").await;
    (id, title, failed)
}

#[tokio::test]
async fn a_send_that_keeps_failing_ends_failed_with_one_dead_letter() {
    let mut app = spawn_app().await;
    let (id, title, failed) = dead_lettered(&mut app).await;

    assert_eq!(failed.status, "failed");
    assert_eq!(failed.retry_count, 3);
    assert!(failed.status_reason.contains("Unavailable"), "{failed:?}");
    assert_eq!(whatsapp_sends(&app, &title).len(), 3);
    assert_eq!(app.count("dead_letters").await, 1);
    let mut conn = app.db.admin_connection().await;
    let (operation, item, payload, retries): (String, Uuid, Value, i32) =
        sqlx::query_as("SELECT operation, item_id, payload, retries FROM scheduler.dead_letters")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        (operation.as_str(), item, retries),
        ("send_reminder", id, 3)
    );
    assert_eq!(payload["request_id"], failed.send_token.to_string());
    assert_eq!(payload["text"], title.as_str());
    assert_eq!(payload["channel"], "whatsapp");
}

#[tokio::test]
async fn a_dead_letter_retried_is_sent_once_the_provider_is_healthy() {
    let mut app = spawn_app().await;
    let (id, title, _) = dead_lettered(&mut app).await;
    let letters = app
        .client
        .list_dead_letters(pb::ListDeadLettersRequest::default())
        .await
        .expect("list dead letters")
        .into_inner()
        .dead_letters;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].item_id, id.to_string());

    app.client
        .retry_dead_letter(pb::RetryDeadLetterRequest {
            dead_letter_id: letters[0].id.clone(),
        })
        .await
        .expect("retry the dead letter");

    let sent = wait_row(&app, "reminders", id, |r| r.status == "sent").await;
    assert_eq!(app.count("dead_letters").await, 0);
    assert_eq!(
        whatsapp_sends(&app, &title).len(),
        4,
        "three outages, then sent"
    );
    assert_eq!(stored_messages(&app, sent.send_token).await.len(), 1);
}

#[tokio::test]
async fn check_ins_with_content_are_sent_and_those_without_are_skipped_after_the_grace() {
    let mut app = spawn_with(|config| config.checkin_content_grace = Duration::from_secs(60)).await;
    let user = awake_user(&mut app).await;
    app.open_whatsapp_window(&user.id).await;
    let content = unique("How did the day go?");
    let mut conn = app.db.admin_connection().await;
    let insert = |content: Option<String>, days: i64, at: DateTime<Utc>| {
        let id = Uuid::new_v4();
        let user_id: Uuid = user.id.parse().unwrap();
        (
            id,
            sqlx::query(
                "INSERT INTO scheduler.check_ins (id, user_id, slot_date, scheduled_time,
                     time_zone, content, send_token, next_attempt_time)
                 VALUES ($1, $2, current_date + $3::int, $4, 'America/Bogota', $5, $6, $4)",
            )
            .bind(id)
            .bind(user_id)
            .bind(days as i32)
            .bind(at)
            .bind(content)
            .bind(Uuid::new_v4()),
        )
    };
    let (with_content, query) = insert(Some(content.clone()), 0, ago(1));
    query.execute(&mut conn).await.unwrap();
    let (without, query) = insert(None, -1, ago(120));
    query.execute(&mut conn).await.unwrap();
    let (waiting, query) = insert(None, 1, ago(1));
    query.execute(&mut conn).await.unwrap();

    let sent = wait_row(&app, "check_ins", with_content, |r| r.status == "sent").await;
    let skipped = wait_row(&app, "check_ins", without, |r| r.status != "pending").await;

    assert_eq!(whatsapp_sends(&app, &content).len(), 1);
    assert!(sent.provider_message_id.is_some());
    assert_eq!(
        (skipped.status.as_str(), skipped.status_reason.as_str()),
        ("skipped", "no_content")
    );
    assert_eq!(row(&app, "check_ins", waiting).await.status, "pending");
}

/// An earlier attempt reached conversations under the reminder's send token
/// with another request (here: another text) and was never recorded here.
/// It may have been delivered, so the dispatcher neither sends a second
/// message nor fails silently: the reminder fails with a dead letter for an
/// operator.
#[tokio::test]
async fn a_send_token_already_used_for_another_request_is_dead_lettered() {
    use mesh_proto::mesh::conversations::v1::{self as conversations, send_message_request};

    let mut app = spawn_with(|config| config.dispatcher.enabled = false).await;
    let mut dispatching = app.config.clone();
    dispatching.dispatcher.enabled = true;
    let user = awake_user(&mut app).await;
    app.open_whatsapp_window(&user.id).await;
    let title = unique("Token");
    let id = insert_reminder(&app, &user.id, &title, ago(1), Send::default()).await;
    let token = row(&app, "reminders", id).await.send_token;
    app.conversations
        .send_message(conversations::SendMessageRequest {
            target: Some(send_message_request::Target::UserId(user.id.clone())),
            channel: conversations::Channel::Whatsapp as i32,
            content: Some(send_message_request::Content::Text("an older text".into())),
            proactive: true,
            request_id: token.to_string(),
            ..Default::default()
        })
        .await
        .expect("the earlier attempt");

    let _dispatcher = crate::harness::spawn_scheduler(&dispatching).await;
    let failed = wait_row(&app, "reminders", id, |r| r.status != "pending").await;
    assert_eq!(failed.status, "failed");
    assert!(failed.status_reason.contains("request_id"), "{failed:?}");
    assert!(whatsapp_sends(&app, &title).is_empty(), "no second message");
    assert_eq!(stored_messages(&app, token).await.len(), 1);
    assert_eq!(app.count("dead_letters").await, 1);
}
