//! Several dispatchers over one database: each item is sent exactly once,
//! whether the replicas race for it or one dies holding it.

use std::{collections::HashMap, time::Duration};

use uuid::Uuid;

use crate::{
    dispatch::{Send, awake_user, insert_reminder, row, stored_messages, whatsapp_sends},
    harness::{WaReply, spawn_app, spawn_scheduler, spawn_with},
};

const USERS: usize = 20;
const PER_USER: i32 = 100;

#[tokio::test]
async fn three_replicas_send_two_thousand_due_reminders_exactly_once() {
    let mut app = spawn_app().await;
    let _second = spawn_scheduler(&app.config).await;
    let _third = spawn_scheduler(&app.config).await;
    let mut users = Vec::new();
    for _ in 0..USERS {
        let user = awake_user(&mut app).await;
        app.open_whatsapp_window(&user.id).await;
        users.push(user.id.parse::<Uuid>().unwrap());
    }
    let batch = Uuid::new_v4().simple().to_string();
    let mut conn = app.db.admin_connection().await;
    // One statement, so all three find them due at once.
    sqlx::query(
        "INSERT INTO scheduler.reminders (id, user_id, title, scheduled_time, time_zone,
             send_token, series_id, series_local_time, next_attempt_time)
         SELECT id, user_id, format('Bulk %s %s %s', $3::text, u, s),
                now() - interval '1 second', 'UTC', gen_random_uuid(), id,
                (now() - interval '1 second')::timestamp, now() - interval '1 second'
         FROM (
             SELECT gen_random_uuid() AS id, u.user_id, u.n AS u, s.n AS s
             FROM unnest($1::uuid[]) WITH ORDINALITY AS u(user_id, n),
                  generate_series(1, $2) AS s(n)
         ) due",
    )
    .bind(&users)
    .bind(PER_USER)
    .bind(&batch)
    .execute(&mut conn)
    .await
    .expect("insert the reminders");
    sqlx::query("SELECT pg_notify('scheduler_due', '')")
        .execute(&mut conn)
        .await
        .unwrap();
    let total = USERS as i64 * i64::from(PER_USER);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let sent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM scheduler.reminders WHERE status = 'sent'")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        if sent == total {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sent} of {total} sent"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut per_text: HashMap<String, usize> = HashMap::new();
    for request in app.providers.whatsapp.requests() {
        if let Some(text) = request.body["text"]["body"].as_str()
            && text.contains(&batch)
        {
            *per_text.entry(text.to_owned()).or_default() += 1;
        }
    }
    assert_eq!(
        per_text.len() as i64,
        total,
        "every reminder reached the provider"
    );
    assert!(
        per_text.values().all(|&n| n == 1),
        "sent twice: {:?}",
        per_text.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    let (messages, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT m.send_request_id)
         FROM conversations.messages m
         JOIN scheduler.reminders r ON r.send_token::text = m.send_request_id",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((messages, distinct), (total, total));
    let (mismatched, retried): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE r.provider_message_id IS DISTINCT FROM m.provider_message_id),
                count(*) FILTER (WHERE r.retry_count > 0)
         FROM scheduler.reminders r
         JOIN conversations.messages m ON m.send_request_id = r.send_token::text",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((mismatched, retried), (0, 0));
}

/// A dispatcher dies after conversations took its SendMessage and before it
/// wrote "sent". What happens, as these tests show:
///
/// 1. conversations runs the provider call on its own task, so the caller
///    going away does not stop it: the provider answers, the message is
///    stored accepted with the provider's id.
/// 2. The dead replica's reminder stays pending, leased to it, until the
///    lease expires.
/// 3. Another replica claims it and calls SendMessage again with the same
///    request_id (the send_token) and the same request: conversations finds
///    the message and replays its answer (it would wait had the send still
///    been in flight) without calling the provider. The reminder is marked
///    sent with the same provider id: one message, one provider request.
async fn crash_mid_send(kill: bool) {
    let mut app = spawn_with(|config| {
        // The first scheduler only serves; the victim and its successor dispatch.
        config.dispatcher.enabled = false;
        config.dispatcher.lease = Duration::from_secs(2);
    })
    .await;
    let mut dispatching = app.config.clone();
    dispatching.dispatcher.enabled = true;
    let user = awake_user(&mut app).await;
    app.open_whatsapp_window(&user.id).await;
    // Within conversations' provider timeout (5 s): a late but real answer.
    app.providers.whatsapp.script([WaReply::Delayed(
        Duration::from_secs(3),
        Box::new(WaReply::Accept),
    )]);
    let title = format!("Crash {}", Uuid::new_v4().simple());
    let at = chrono::Utc::now() - chrono::TimeDelta::seconds(1);
    let id = insert_reminder(&app, &user.id, &title, at, Send::default()).await;
    let token = row(&app, "reminders", id).await.send_token;

    let victim = if kill {
        Victim::Process(start_binary(&app).await)
    } else {
        Victim::Call(dead_replica_sends(&app, &user.id, id, token, &title).await)
    };
    // The send is at the provider: kill whoever made it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while whatsapp_sends(&app, &title).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match victim {
        // SIGKILL: no drain, no last write, as a crash or an OOM kill.
        Victim::Process(child) => drop(child),
        Victim::Call(call) => call.abort(),
    }

    // conversations finishes the send without its caller...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let stored = loop {
        let stored = stored_messages(&app, token).await;
        if stored.iter().any(|(_, provider_id)| provider_id.is_some()) {
            break stored;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stored:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].0, "accepted");
    // ...while the reminder still waits under the dead replica's lease.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let orphan = row(&app, "reminders", id).await;
    assert_eq!(orphan.status, "pending", "{orphan:?}");

    let _successor = spawn_scheduler(&dispatching).await;
    let sent = crate::dispatch::wait_row(&app, "reminders", id, |r| r.status == "sent").await;

    assert_eq!(
        whatsapp_sends(&app, &title).len(),
        1,
        "one provider request"
    );
    assert_eq!(stored_messages(&app, token).await.len(), 1);
    assert_eq!(sent.provider_message_id, stored[0].1);
    assert_eq!(sent.retry_count, 0);
}

enum Victim {
    Process(KilledOnDrop),
    Call(tokio::task::JoinHandle<()>),
}

/// A child process SIGKILLed and reaped when dropped, so a failing test
/// leaves none behind.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `scheduler` binary as a dispatching replica of `app` (a 2 s lease,
/// quick polls), once it is SERVING. A separate process is the one way to
/// kill a dispatcher mid-send with nothing of it left running.
async fn start_binary(app: &crate::harness::TestApp) -> KilledOnDrop {
    use std::process::{Command, Stdio};

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_scheduler"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SCHEDULER_ADDR", &addr)
        .env("SCHEDULER_DATABASE_URL", app.db.service_url("scheduler"))
        .env("MESH_AUTH_TOKEN", crate::harness::TOKEN)
        .env("SCHEDULER_USERS_URL", &app.config.users_url)
        .env("SCHEDULER_CONVERSATIONS_URL", &app.config.conversations_url)
        .env("SCHEDULER_METRICS_ADDR", "127.0.0.1:0")
        .env("SCHEDULER_LEASE_SECONDS", "2")
        .env("SCHEDULER_POLL_INTERVAL_MS", "200")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the scheduler binary");
    let child = KilledOnDrop(child);
    for _ in 0..100 {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            crate::harness::wait_serving(channel).await;
            return child;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the scheduler binary never listened on {addr}");
}

/// What a dispatcher does before it dies mid-send, done by hand: claim the
/// reminder under a lease (2 s) for an owner that will never come back, and
/// start the very SendMessage the dispatcher makes (same request_id, same
/// request: conversations refuses a request_id reused for another request).
async fn dead_replica_sends(
    app: &crate::harness::TestApp,
    user_id: &str,
    id: Uuid,
    token: Uuid,
    title: &str,
) -> tokio::task::JoinHandle<()> {
    use mesh_proto::mesh::conversations::v1::{self as conversations, send_message_request};

    app.lease("reminders", &id.to_string(), Some(2)).await;
    let request = conversations::SendMessageRequest {
        target: Some(send_message_request::Target::UserId(user_id.into())),
        channel: conversations::Channel::Whatsapp as i32,
        content: Some(send_message_request::Content::Text(title.into())),
        proactive: true,
        metadata: crate::harness::data(serde_json::json!({
            "source": "scheduler", "kind": "reminder", "item_id": id.to_string(),
        })),
        request_id: token.to_string(),
        ..Default::default()
    };
    let mut client = app.conversations.clone();
    tokio::spawn(async move {
        let _ = client.send_message(request).await;
    })
}

#[tokio::test]
async fn a_dispatcher_that_dies_mid_send_leaves_the_reminder_to_another_that_sends_it_once() {
    crash_mid_send(false).await;
}

/// The same with a real replica: the `scheduler` binary, SIGKILLed while
/// its SendMessage is at the provider.
#[tokio::test]
async fn a_replica_killed_mid_send_leaves_the_reminder_to_another_that_sends_it_once() {
    crash_mid_send(true).await;
}
