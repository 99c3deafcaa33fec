//! PurgeUser: erases every row about one user (and the webhook failures
//! naming their phone), reports the count per table, touches no one else, and
//! finds nothing more when repeated.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use mesh_proto::mesh::conversations::v1::{self as pb};
use tonic::{Code, Status};

use crate::harness::{Outbound, TestApp, fresh_user, sorted_bad_fields, spawn_app, wamid};

/// The tables PurgeUser reports on.
const TABLES: &[&str] = &[
    "agent_executions",
    "call_logs",
    "conversations",
    "events",
    "flow_sessions",
    "idempotency_keys",
    "interactions",
    "message_feedback",
    "messages",
    "messaging_windows",
    "tool_executions",
    "user_locations",
    "webhook_failures",
];

async fn purge(
    app: &mut TestApp,
    user_id: &str,
    phone: &str,
    request_id: &str,
) -> Result<pb::PurgeUserResponse, Status> {
    app.client
        .purge_user(pb::PurgeUserRequest {
            user_id: user_id.into(),
            phone: phone.into(),
            request_id: request_id.into(),
        })
        .await
        .map(|r| r.into_inner())
}

fn deleted(counts: &[(&str, i64)]) -> HashMap<String, i64> {
    let mut map: HashMap<String, i64> = TABLES.iter().map(|t| (t.to_string(), 0)).collect();
    for (table, n) in counts {
        map.insert(table.to_string(), *n);
    }
    map
}

/// Creates a user's data in every table: through the API where it is this
/// service's (conversations, messages, feedback, windows, events), as the
/// superuser for the records other modules write. Returns the user's active
/// WhatsApp conversation id.
async fn seed(app: &mut TestApp, user: &str, phone: &str) -> String {
    let whatsapp = app.conversation(user, pb::Channel::Whatsapp).await;
    let first = app
        .inbound(&whatsapp.id, "hola", &wamid())
        .await
        .message
        .unwrap();
    app.inbound(&whatsapp.id, "¿estás?", &wamid()).await;
    let answer = app.insert_outbound(&whatsapp.id, Outbound::default()).await;
    app.client
        .set_message_feedback(pb::SetMessageFeedbackRequest {
            message_id: answer.clone(),
            feedback: Some(pb::MessageFeedback {
                rating: 5,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let telegram = app.conversation(user, pb::Channel::Telegram).await;
    app.inbound(&telegram.id, "hi", "").await;
    app.client
        .close_conversation(pb::CloseConversationRequest {
            conversation_id: telegram.id.clone(),
        })
        .await
        .unwrap();

    let mut conn = app.db.admin_connection().await;
    let statements = [
        "INSERT INTO conversations.interactions (id, user_id, conversation_id, message_id, type, target)
         VALUES (gen_random_uuid(), $1::uuid, $2::uuid, $3::uuid, 'button_reply', 'yes'),
                (gen_random_uuid(), $1::uuid, NULL, NULL, 'cta_tap', 'https://example.com')",
        "INSERT INTO conversations.user_locations (id, user_id, message_id, latitude, longitude)
         VALUES (gen_random_uuid(), $1::uuid, $3::uuid, 4.71, -74.07)",
        "INSERT INTO conversations.call_logs (id, user_id, conversation_id, provider_call_id, direction, status)
         VALUES (gen_random_uuid(), $1::uuid, $2::uuid, gen_random_uuid()::text, 'inbound', 'completed')",
        "INSERT INTO conversations.flow_sessions (id, flow_token, user_id, conversation_id, flow_type, expire_time)
         VALUES (gen_random_uuid(), gen_random_uuid()::text, $1::uuid, $2::uuid, 'navigate', now() + interval '1 day')",
        "INSERT INTO conversations.tool_executions (id, conversation_id, message_id, tool_name, status)
         VALUES (gen_random_uuid(), $2::uuid, $3::uuid, 'search', 'success'),
                (gen_random_uuid(), $2::uuid, NULL, 'remember', 'error')",
        "INSERT INTO conversations.agent_executions (id, conversation_id, message_id, agent_name, status)
         VALUES (gen_random_uuid(), $2::uuid, $3::uuid, 'companion', 'success')",
        "INSERT INTO conversations.idempotency_keys (operation, request_id, request, response, user_id)
         VALUES ('RecordInteraction', gen_random_uuid()::text, '\\x00', '\\x00', $1::uuid)",
    ];
    for statement in statements {
        sqlx::query(statement)
            .bind(user)
            .bind(&whatsapp.id)
            .bind(&first.id)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    // Webhook failures: one with the user and the phone, one with only the
    // phone, one with only the user.
    sqlx::query(
        "INSERT INTO conversations.webhook_failures (id, request_id, source, phone, user_id, raw_payload, error)
         VALUES (gen_random_uuid(), gen_random_uuid()::text, 'whatsapp', $2, $1::uuid, '\\x7b7d', 'boom'),
                (gen_random_uuid(), gen_random_uuid()::text, 'whatsapp', $2, NULL, '\\x7b7d', 'boom'),
                (gen_random_uuid(), gen_random_uuid()::text, 'telegram', NULL, $1::uuid, '\\x7b7d', 'boom')",
    )
    .bind(user)
    .bind(phone)
    .execute(&mut conn)
    .await
    .unwrap();
    whatsapp.id
}

/// What `seed` creates for one user.
fn seeded() -> HashMap<String, i64> {
    deleted(&[
        ("agent_executions", 1),
        ("call_logs", 1),
        ("conversations", 2),
        // Started x2, received x3, the Telegram conversation closed.
        ("events", 6),
        ("flow_sessions", 1),
        // The stored answer of a RecordInteraction with a request_id.
        ("idempotency_keys", 1),
        ("interactions", 2),
        ("message_feedback", 1),
        ("messages", 4),
        ("messaging_windows", 1),
        ("tool_executions", 2),
        ("user_locations", 1),
        ("webhook_failures", 3),
    ])
}

/// The rows about `user` (or naming `phone`) in every table, counted as the
/// superuser. The purge's own stored answer is not counted: it is kept for
/// its retries.
async fn rows_about(app: &TestApp, user: &str, phone: &str) -> BTreeMap<String, i64> {
    let mut conn = app.db.admin_connection().await;
    let mut counts = BTreeMap::new();
    for table in TABLES {
        let condition = match *table {
            "tool_executions" | "agent_executions" => {
                "conversation_id IN (SELECT id FROM conversations.conversations WHERE user_id = $1::uuid)"
            }
            "webhook_failures" => "user_id = $1::uuid OR phone = $2",
            "idempotency_keys" => "user_id = $1::uuid AND operation <> 'PurgeUser'",
            _ => "user_id = $1::uuid",
        };
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM conversations.{table} WHERE {condition}"
        )))
        .bind(user)
        .bind(phone)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        counts.insert(table.to_string(), n);
    }
    counts
}

#[tokio::test]
async fn purge_erases_one_user_and_reports_what_it_erased() {
    let mut app = spawn_app().await;
    let (ana, ana_phone) = (fresh_user(), "+573001110001");
    let (bob, bob_phone) = (fresh_user(), "+573001110002");
    let anas = seed(&mut app, &ana, ana_phone).await;
    let bobs = seed(&mut app, &bob, bob_phone).await;
    let ana_before = rows_about(&app, &ana, ana_phone).await;
    let bob_before = rows_about(&app, &bob, bob_phone).await;
    // The seed is what it says.
    for (table, n) in seeded() {
        assert_eq!(ana_before[&table], n, "{table}");
    }
    assert_eq!(ana_before["idempotency_keys"], 1);

    let answer = purge(&mut app, &ana, ana_phone, "").await.unwrap();
    assert_eq!(answer.deleted, seeded());

    let ana_after = rows_about(&app, &ana, ana_phone).await;
    assert!(ana_after.values().all(|n| *n == 0), "{ana_after:?}");
    assert_eq!(
        rows_about(&app, &bob, bob_phone).await,
        bob_before,
        "Bob is untouched"
    );

    // What the API shows.
    let gone = app
        .client
        .get_conversation(pb::GetConversationRequest {
            conversation_id: anas,
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let bobs = app
        .client
        .get_history(pb::GetHistoryRequest {
            conversation_id: bobs,
            last_n: 10,
            since: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bobs.turns.len(), 3);
    let window = app
        .client
        .get_messaging_window(pb::GetMessagingWindowRequest {
            user_id: ana.clone(),
            time_zone: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!window.free_form_allowed);
    let listed = app
        .client
        .list_conversations(pb::ListConversationsRequest {
            user_id: ana.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.conversations.is_empty());
}

#[tokio::test]
async fn repeating_the_purge_finds_nothing_more() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    seed(&mut app, &user, "+573002220001").await;
    assert_eq!(
        purge(&mut app, &user, "+573002220001", "")
            .await
            .unwrap()
            .deleted,
        seeded()
    );
    assert_eq!(
        purge(&mut app, &user, "+573002220001", "")
            .await
            .unwrap()
            .deleted,
        deleted(&[])
    );
    assert_eq!(
        purge(&mut app, &user, "", "another-request")
            .await
            .unwrap()
            .deleted,
        deleted(&[])
    );
    // A user never seen: nothing, and no error.
    assert_eq!(
        purge(&mut app, &fresh_user(), "", "")
            .await
            .unwrap()
            .deleted,
        deleted(&[])
    );
}

#[tokio::test]
async fn without_the_phone_the_failures_naming_only_it_stay() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    let phone = "+573003330001";
    seed(&mut app, &user, phone).await;
    let answer = purge(&mut app, &user, "", "").await.unwrap();
    assert_eq!(
        answer.deleted["webhook_failures"], 2,
        "the two that carry the user id"
    );
    assert_eq!(rows_about(&app, &user, phone).await["webhook_failures"], 1);

    // With the phone, a later purge erases it.
    let answer = purge(&mut app, &user, phone, "").await.unwrap();
    assert_eq!(answer.deleted, deleted(&[("webhook_failures", 1)]));
    assert_eq!(app.count("webhook_failures").await, 0);
}

#[tokio::test]
async fn a_retry_with_the_same_request_id_returns_the_first_answer() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    let phone = "+573004440001";
    seed(&mut app, &user, phone).await;
    let first = purge(&mut app, &user, phone, "purge-1").await.unwrap();
    assert_eq!(first.deleted, seeded());

    let retry = purge(&mut app, &user, phone, "purge-1").await.unwrap();
    assert_eq!(retry, first, "the first answer, not a second purge's");
    // A new request finds nothing more.
    assert_eq!(
        purge(&mut app, &user, phone, "purge-2")
            .await
            .unwrap()
            .deleted,
        deleted(&[])
    );

    // The same request id for another request is refused.
    let other = purge(&mut app, &fresh_user(), "", "purge-1")
        .await
        .unwrap_err();
    assert_eq!(sorted_bad_fields(&other), ["request_id"]);
}

#[tokio::test]
async fn purge_names_every_bad_field_and_erases_nothing() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    let phone = "+573005550001";
    seed(&mut app, &user, phone).await;
    let before = rows_about(&app, &user, phone).await;
    let long_id = "r".repeat(129);
    let cases: Vec<(&str, &str, &str, &[&str])> = vec![
        ("", phone, "", &["user_id"]),
        ("not-a-uuid", phone, "", &["user_id"]),
        (&user, "3005550001", "", &["phone"]),
        (&user, "+0573005550001", "", &["phone"]),
        (&user, "+57 300 555 0001", "", &["phone"]),
        (&user, "+1234567", "", &["phone"]),
        (&user, "+1234567890123456", "", &["phone"]),
        (&user, phone, &long_id, &["request_id"]),
        ("x", "x", &long_id, &["phone", "request_id", "user_id"]),
    ];
    for (user_id, phone, request_id, expected) in cases {
        let status = purge(&mut app, user_id, phone, request_id)
            .await
            .unwrap_err();
        assert_eq!(
            sorted_bad_fields(&status),
            expected,
            "{user_id:?} {phone:?}"
        );
    }
    assert_eq!(rows_about(&app, &user, phone).await, before);
}

#[tokio::test]
async fn parallel_purges_of_one_user_erase_each_row_once() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    let phone = "+573006660001";
    seed(&mut app, &user, phone).await;
    let calls = (0..4).map(|_| {
        let mut client = app.client.clone();
        let request = pb::PurgeUserRequest {
            user_id: user.clone(),
            phone: phone.into(),
            request_id: String::new(),
        };
        async move { client.purge_user(request).await.map(|r| r.into_inner()) }
    });
    let answers = futures::future::join_all(calls).await;
    let mut total = deleted(&[]);
    for answer in answers {
        let answer = answer.expect("every purge succeeds");
        for (table, n) in answer.deleted {
            *total.get_mut(&table).expect("a known table") += n;
        }
    }
    assert_eq!(total, seeded(), "each row counted by exactly one purge");
    assert!(
        rows_about(&app, &user, phone)
            .await
            .values()
            .all(|n| *n == 0)
    );
}

/// A purge racing the user's own traffic neither deadlocks nor leaves
/// anything behind: appends that commit first are erased with the rest, and
/// those after it find no conversation.
#[tokio::test]
async fn a_purge_during_appends_leaves_nothing_behind() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    let conversation = app.conversation(&user, pb::Channel::Whatsapp).await;
    // Writers append in a loop from before the purge starts until after it
    // returns, so the purge certainly runs while appends are in flight.
    let purged = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut client = app.client.clone();
        let id = conversation.id.clone();
        let purged = purged.clone();
        let appended = appended.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let after_purge = purged.load(Ordering::SeqCst);
                let result = client
                    .record_inbound_message(crate::harness::inbound_request(
                        &id,
                        &format!("message {w}.{i}"),
                        &wamid(),
                    ))
                    .await;
                match result {
                    Ok(_) => {
                        assert!(!after_purge, "an append begun after the purge succeeded");
                        appended.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(status) => {
                        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
                        if after_purge {
                            return;
                        }
                    }
                }
            }
        }));
    }
    // At least one append commits before the purge starts.
    tokio::time::timeout(Duration::from_secs(10), async {
        while appended.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("an append succeeds before the purge");
    purge(&mut app, &user, "", "").await.expect("the purge");
    purged.store(true, Ordering::SeqCst);
    // Every writer ends on an append begun after the purge returned, which
    // finds no conversation.
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(30), writer)
            .await
            .expect("the writer gets NOT_FOUND after the purge")
            .unwrap();
    }
    assert!(appended.load(Ordering::SeqCst) >= 1);
    let again = purge(&mut app, &user, "", "").await.unwrap();
    assert!(
        again.deleted.values().all(|n| *n == 0),
        "nothing was left: {:?}",
        again.deleted
    );
}
