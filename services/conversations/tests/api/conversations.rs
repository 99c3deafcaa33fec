//! GetOrCreateActiveConversation (one active per user and channel, the reuse
//! policy), GetConversation, ListConversations, CloseConversation,
//! ArchiveConversation and UpdateConversationSummary.

use std::{collections::HashSet, time::Duration};

use chrono::{DateTime, Utc};
use futures::future::join_all;
use mesh_proto::mesh::conversations::v1::{self as pb};
use prost_types::FieldMask;
use tonic::{Code, Status};

use crate::harness::{TestApp, fresh_user, local_midnight, sorted_bad_fields, spawn_app, time_of};

fn request(user_id: &str, channel: pb::Channel) -> pb::GetOrCreateActiveConversationRequest {
    pb::GetOrCreateActiveConversationRequest {
        user_id: user_id.into(),
        channel: channel as i32,
        ..Default::default()
    }
}

/// The daily scope in `time_zone`, with an idle gap long enough never to matter.
fn daily(user_id: &str, time_zone: &str) -> pb::GetOrCreateActiveConversationRequest {
    pb::GetOrCreateActiveConversationRequest {
        scope: pb::ConversationScope::Daily as i32,
        time_zone: time_zone.into(),
        idle_gap: Some(prost_types::Duration {
            seconds: 2 * 24 * 3600,
            nanos: 0,
        }),
        ..request(user_id, pb::Channel::Whatsapp)
    }
}

async fn get_or_create(
    app: &mut TestApp,
    request: pb::GetOrCreateActiveConversationRequest,
) -> Result<pb::GetOrCreateActiveConversationResponse, Status> {
    app.client
        .get_or_create_active_conversation(request)
        .await
        .map(|r| r.into_inner())
}

async fn get(app: &mut TestApp, id: &str) -> Result<pb::Conversation, Status> {
    app.client
        .get_conversation(pb::GetConversationRequest {
            conversation_id: id.into(),
        })
        .await
        .map(|r| r.into_inner().conversation.unwrap())
}

async fn close(app: &mut TestApp, id: &str) -> Result<pb::Conversation, Status> {
    app.client
        .close_conversation(pb::CloseConversationRequest {
            conversation_id: id.into(),
        })
        .await
        .map(|r| r.into_inner().conversation.unwrap())
}

async fn archive(app: &mut TestApp, id: &str) -> Result<pb::Conversation, Status> {
    app.client
        .archive_conversation(pb::ArchiveConversationRequest {
            conversation_id: id.into(),
        })
        .await
        .map(|r| r.into_inner().conversation.unwrap())
}

async fn list(
    app: &mut TestApp,
    request: pb::ListConversationsRequest,
) -> Result<pb::ListConversationsResponse, Status> {
    app.client
        .list_conversations(request)
        .await
        .map(|r| r.into_inner())
}

async fn update_summary(
    app: &mut TestApp,
    id: &str,
    conversation: pb::Conversation,
    paths: &[&str],
) -> Result<pb::Conversation, Status> {
    app.client
        .update_conversation_summary(pb::UpdateConversationSummaryRequest {
            conversation_id: id.into(),
            conversation: Some(conversation),
            update_mask: Some(FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        })
        .await
        .map(|r| r.into_inner().conversation.unwrap())
}

/// Moves the conversation's last message time (as the superuser).
async fn set_last_message_time(app: &TestApp, id: &str, time: DateTime<Utc>) {
    let mut conn = app.db.admin_connection().await;
    sqlx::query(
        "UPDATE conversations.conversations SET last_message_time = $2 WHERE id = $1::uuid",
    )
    .bind(id)
    .bind(time)
    .execute(&mut conn)
    .await
    .unwrap();
}

/// (status, has end_time) as stored.
async fn stored_status(app: &TestApp, id: &str) -> (String, bool) {
    let mut conn = app.db.admin_connection().await;
    sqlx::query_as(
        "SELECT status, end_time IS NOT NULL FROM conversations.conversations WHERE id = $1::uuid",
    )
    .bind(id)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

/// The user's active conversations on `channel`, as stored.
async fn active_rows(app: &TestApp, user_id: &str, channel: &str) -> i64 {
    let mut conn = app.db.admin_connection().await;
    sqlx::query_scalar(
        "SELECT count(*) FROM conversations.conversations
         WHERE user_id = $1::uuid AND channel = $2 AND status = 'active'",
    )
    .bind(user_id)
    .bind(channel)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

fn mask(paths: &[&str]) -> FieldMask {
    FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    }
}

// ---- GetOrCreateActiveConversation ----

#[tokio::test]
async fn get_or_create_returns_the_same_active_conversation() {
    let mut app = spawn_app().await;
    let user = fresh_user();

    let first = get_or_create(&mut app, request(&user, pb::Channel::Whatsapp))
        .await
        .unwrap();
    assert!(first.created);
    assert_eq!(first.closed_conversation_id, "");
    let created = first.conversation.unwrap();
    assert_eq!(
        uuid::Uuid::parse_str(&created.id)
            .unwrap()
            .get_version_num(),
        7
    );
    assert_eq!(created.user_id, user);
    assert_eq!(created.channel(), pb::Channel::Whatsapp);
    assert_eq!(created.status(), pb::ConversationStatus::Active);
    assert_eq!(created.message_count, 0);
    assert!(created.start_time.is_some() && created.update_time.is_some());
    assert!(created.end_time.is_none() && created.last_message_time.is_none());
    assert_eq!(created.provider_conversation_id, "");

    let second = get_or_create(&mut app, request(&user, pb::Channel::Whatsapp))
        .await
        .unwrap();
    assert!(!second.created);
    assert_eq!(second.closed_conversation_id, "");
    assert_eq!(second.conversation.unwrap(), created);
    assert_eq!(get(&mut app, &created.id).await.unwrap(), created);

    assert_eq!(app.count("conversations").await, 1);
    assert_eq!(app.count_events("conversation_started").await, 1);
}

#[tokio::test]
async fn concurrent_calls_for_one_user_and_channel_create_one_conversation() {
    let app = spawn_app().await;
    let user = fresh_user();
    let calls = (0..40).map(|_| {
        let mut client = app.client.clone();
        let request = request(&user, pb::Channel::Whatsapp);
        async move {
            client
                .get_or_create_active_conversation(request)
                .await
                .expect("every racing call succeeds")
                .into_inner()
        }
    });
    let answers = join_all(calls).await;

    let ids: HashSet<_> = answers
        .iter()
        .map(|a| a.conversation.as_ref().unwrap().id.clone())
        .collect();
    assert_eq!(ids.len(), 1, "every call got the same conversation");
    assert_eq!(
        answers.iter().filter(|a| a.created).count(),
        1,
        "exactly one created it"
    );
    assert!(answers.iter().all(|a| a.closed_conversation_id.is_empty()));
    assert_eq!(app.count("conversations").await, 1);
    assert_eq!(active_rows(&app, &user, "whatsapp").await, 1);
    assert_eq!(app.count_events("conversation_started").await, 1);
}

#[tokio::test]
async fn concurrent_calls_on_a_stale_conversation_close_it_once_and_share_the_new_one() {
    let app = spawn_app().await;
    let user = fresh_user();
    let mut client = app.client.clone();
    let stale = client
        .get_or_create_active_conversation(request(&user, pb::Channel::Whatsapp))
        .await
        .unwrap()
        .into_inner()
        .conversation
        .unwrap();
    set_last_message_time(&app, &stale.id, Utc::now() - chrono::Duration::hours(7)).await;

    let calls = (0..25).map(|_| {
        let mut client = app.client.clone();
        let request = request(&user, pb::Channel::Whatsapp);
        async move {
            client
                .get_or_create_active_conversation(request)
                .await
                .unwrap()
                .into_inner()
        }
    });
    let answers = join_all(calls).await;

    let ids: HashSet<_> = answers
        .iter()
        .map(|a| a.conversation.as_ref().unwrap().id.clone())
        .collect();
    assert_eq!(ids.len(), 1);
    assert!(!ids.contains(&stale.id));
    assert_eq!(answers.iter().filter(|a| a.created).count(), 1);
    let closers: Vec<_> = answers
        .iter()
        .filter(|a| !a.closed_conversation_id.is_empty())
        .collect();
    assert_eq!(closers.len(), 1, "the stale conversation is closed once");
    assert_eq!(closers[0].closed_conversation_id, stale.id);
    assert!(
        closers[0].created,
        "the call that closed it created the new one"
    );
    assert_eq!(app.count("conversations").await, 2);
    assert_eq!(active_rows(&app, &user, "whatsapp").await, 1);
    assert_eq!(
        stored_status(&app, &stale.id).await,
        ("closed".to_owned(), true)
    );
}

#[tokio::test]
async fn channels_and_users_are_independent() {
    let mut app = spawn_app().await;
    let ana = fresh_user();
    let bob = fresh_user();
    let mut ids = HashSet::new();
    for channel in [
        pb::Channel::Whatsapp,
        pb::Channel::Telegram,
        pb::Channel::Web,
        pb::Channel::App,
    ] {
        let answer = get_or_create(&mut app, request(&ana, channel))
            .await
            .unwrap();
        assert!(answer.created, "{channel:?} gets its own conversation");
        let conversation = answer.conversation.unwrap();
        assert_eq!(conversation.channel(), channel);
        ids.insert(conversation.id);
    }
    let bobs = get_or_create(&mut app, request(&bob, pb::Channel::Whatsapp))
        .await
        .unwrap();
    assert!(bobs.created);
    ids.insert(bobs.conversation.unwrap().id);
    assert_eq!(ids.len(), 5);

    // Closing Ana's WhatsApp conversation leaves her others (and Bob's) active.
    let whatsapp = get_or_create(&mut app, request(&ana, pb::Channel::Whatsapp))
        .await
        .unwrap();
    assert!(!whatsapp.created);
    close(&mut app, &whatsapp.conversation.unwrap().id)
        .await
        .unwrap();
    let telegram = get_or_create(&mut app, request(&ana, pb::Channel::Telegram))
        .await
        .unwrap();
    assert!(!telegram.created);
    assert!(
        !get_or_create(&mut app, request(&bob, pb::Channel::Whatsapp))
            .await
            .unwrap()
            .created
    );
    let again = get_or_create(&mut app, request(&ana, pb::Channel::Whatsapp))
        .await
        .unwrap();
    assert!(again.created, "a closed conversation is not reused");
    assert_eq!(
        again.closed_conversation_id, "",
        "the policy closed nothing"
    );
    assert_eq!(app.count("conversations").await, 6);
}

#[tokio::test]
async fn an_idle_conversation_is_closed_and_a_new_one_started() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    let one_second = pb::GetOrCreateActiveConversationRequest {
        idle_gap: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..request(&user, pb::Channel::Whatsapp)
    };
    let old = get_or_create(&mut app, one_second.clone())
        .await
        .unwrap()
        .conversation
        .unwrap();
    // Within the gap: kept.
    let kept = get_or_create(&mut app, one_second.clone()).await.unwrap();
    assert!(!kept.created);
    assert_eq!(kept.conversation.unwrap().id, old.id);

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let answer = get_or_create(&mut app, one_second).await.unwrap();
    assert!(answer.created);
    assert_eq!(answer.closed_conversation_id, old.id);
    let new = answer.conversation.unwrap();
    assert_ne!(new.id, old.id);
    assert_eq!(new.status(), pb::ConversationStatus::Active);

    let closed = get(&mut app, &old.id).await.unwrap();
    assert_eq!(closed.status(), pb::ConversationStatus::Closed);
    let end = time_of(
        closed
            .end_time
            .as_ref()
            .expect("a closed conversation has an end time"),
    );
    assert!(end >= time_of(old.start_time.as_ref().unwrap()));
    assert_eq!(app.count("conversations").await, 2);
    assert_eq!(active_rows(&app, &user, "whatsapp").await, 1);
    assert_eq!(app.count_events("conversation_started").await, 2);
    assert_eq!(
        app.count_events("conversation_updated").await,
        1,
        "the close is an event"
    );
}

#[tokio::test]
async fn the_default_idle_gap_counts_from_the_last_message_or_the_start() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    // The service's default gap is 6 h (CONVERSATIONS_IDLE_GAP in the harness config).
    let first = get_or_create(&mut app, request(&user, pb::Channel::Telegram))
        .await
        .unwrap()
        .conversation
        .unwrap();

    // Started 7 h ago, but a message 5 h ago: not idle for 6 h yet.
    {
        let mut conn = app.db.admin_connection().await;
        sqlx::query(
            "UPDATE conversations.conversations
             SET start_time = now() - interval '7 hours', last_message_time = now() - interval '5 hours'
             WHERE id = $1::uuid",
        )
        .bind(&first.id)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let kept = get_or_create(&mut app, request(&user, pb::Channel::Telegram))
        .await
        .unwrap();
    assert!(!kept.created);
    assert_eq!(kept.conversation.unwrap().id, first.id);

    // The last message 7 h ago: stale.
    set_last_message_time(&app, &first.id, Utc::now() - chrono::Duration::hours(7)).await;
    let renewed = get_or_create(&mut app, request(&user, pb::Channel::Telegram))
        .await
        .unwrap();
    assert!(renewed.created);
    assert_eq!(renewed.closed_conversation_id, first.id);
    assert_eq!(
        stored_status(&app, &first.id).await,
        ("closed".to_owned(), true)
    );

    // Without messages, the start counts: started 7 h ago is stale.
    let second = renewed.conversation.unwrap();
    {
        let mut conn = app.db.admin_connection().await;
        sqlx::query("UPDATE conversations.conversations SET start_time = now() - interval '7 hours' WHERE id = $1::uuid")
            .bind(&second.id)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let third = get_or_create(&mut app, request(&user, pb::Channel::Telegram))
        .await
        .unwrap();
    assert!(third.created);
    assert_eq!(third.closed_conversation_id, second.id);
    assert_eq!(app.count("conversations").await, 3);
    assert_eq!(active_rows(&app, &user, "telegram").await, 1);
}

#[tokio::test]
async fn daily_scope_starts_a_new_conversation_when_the_local_day_changes() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    let zone: chrono_tz::Tz = "America/Bogota".parse().unwrap();
    let first = get_or_create(&mut app, daily(&user, "America/Bogota"))
        .await
        .unwrap()
        .conversation
        .unwrap();

    // The last message earlier today (local): the same conversation.
    let now = Utc::now();
    let midnight = local_midnight(zone, now);
    set_last_message_time(&app, &first.id, midnight + (now - midnight) / 2).await;
    let kept = get_or_create(&mut app, daily(&user, "America/Bogota"))
        .await
        .unwrap();
    assert!(!kept.created);
    assert_eq!(kept.conversation.unwrap().id, first.id);

    // The last message a minute before the local midnight: a new day, a new conversation.
    set_last_message_time(&app, &first.id, midnight - chrono::Duration::minutes(1)).await;
    let renewed = get_or_create(&mut app, daily(&user, "America/Bogota"))
        .await
        .unwrap();
    assert!(renewed.created);
    assert_eq!(renewed.closed_conversation_id, first.id);
    assert_eq!(
        stored_status(&app, &first.id).await,
        ("closed".to_owned(), true)
    );

    // The idle-gap scope ignores the day change.
    let current = renewed.conversation.unwrap();
    set_last_message_time(&app, &current.id, midnight - chrono::Duration::minutes(1)).await;
    let idle_scope = pb::GetOrCreateActiveConversationRequest {
        scope: pb::ConversationScope::IdleGap as i32,
        ..daily(&user, "America/Bogota")
    };
    let kept = get_or_create(&mut app, idle_scope).await.unwrap();
    assert!(!kept.created);
    assert_eq!(kept.conversation.unwrap().id, current.id);
    assert_eq!(active_rows(&app, &user, "whatsapp").await, 1);
}

#[tokio::test]
async fn daily_scope_follows_the_users_local_day_not_utcs() {
    let mut app = spawn_app().await;
    let now = Utc::now();
    let utc_midnight = now.date_naive().and_time(chrono::NaiveTime::MIN).and_utc();
    let since_midnight = now - utc_midnight;
    let mut checked = 0;

    // UTC+1 ("Etc/GMT-1"): its day began at 23:00 UTC yesterday. A message at
    // 23:30 UTC yesterday is from the same local day.
    if since_midnight < chrono::Duration::minutes(22 * 60 + 58) {
        let user = fresh_user();
        let first = get_or_create(&mut app, daily(&user, "Etc/GMT-1"))
            .await
            .unwrap()
            .conversation
            .unwrap();
        set_last_message_time(
            &app,
            &first.id,
            utc_midnight - chrono::Duration::minutes(30),
        )
        .await;
        let answer = get_or_create(&mut app, daily(&user, "Etc/GMT-1"))
            .await
            .unwrap();
        assert!(
            !answer.created,
            "the UTC day changed, the local one did not"
        );
        assert_eq!(answer.conversation.unwrap().id, first.id);
        checked += 1;
    }
    // UTC-1 ("Etc/GMT+1"): its day began at 01:00 UTC. A message at 00:30 UTC
    // today is from the previous local day.
    if since_midnight > chrono::Duration::minutes(62) {
        let user = fresh_user();
        let first = get_or_create(&mut app, daily(&user, "Etc/GMT+1"))
            .await
            .unwrap()
            .conversation
            .unwrap();
        set_last_message_time(
            &app,
            &first.id,
            utc_midnight + chrono::Duration::minutes(30),
        )
        .await;
        let answer = get_or_create(&mut app, daily(&user, "Etc/GMT+1"))
            .await
            .unwrap();
        assert!(answer.created, "the local day changed, the UTC one did not");
        assert_eq!(answer.closed_conversation_id, first.id);
        checked += 1;
    }
    assert!(checked >= 1);
}

#[tokio::test]
async fn daily_scope_needs_a_valid_time_zone() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    let missing = get_or_create(&mut app, daily(&user, "")).await.unwrap_err();
    assert_eq!(sorted_bad_fields(&missing), ["time_zone"]);
    let unknown = get_or_create(&mut app, daily(&user, "Mars/Olympus_Mons"))
        .await
        .unwrap_err();
    assert_eq!(sorted_bad_fields(&unknown), ["time_zone"]);
    // A bad zone is refused with the idle-gap scope too.
    let idle = pb::GetOrCreateActiveConversationRequest {
        time_zone: "UTC+5".into(),
        ..request(&user, pb::Channel::Whatsapp)
    };
    assert_eq!(
        sorted_bad_fields(&get_or_create(&mut app, idle).await.unwrap_err()),
        ["time_zone"]
    );
    assert_eq!(app.count("conversations").await, 0);
    assert_eq!(app.count("events").await, 0);
}

#[tokio::test]
async fn get_or_create_names_every_bad_field_and_writes_nothing() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    let gap = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
    let base = request(&user, pb::Channel::Whatsapp);
    let cases: Vec<(pb::GetOrCreateActiveConversationRequest, &[&str])> = vec![
        (
            pb::GetOrCreateActiveConversationRequest {
                user_id: "".into(),
                ..base.clone()
            },
            &["user_id"],
        ),
        (
            pb::GetOrCreateActiveConversationRequest {
                user_id: "ana".into(),
                ..base.clone()
            },
            &["user_id"],
        ),
        (
            pb::GetOrCreateActiveConversationRequest {
                channel: 0,
                ..base.clone()
            },
            &["channel"],
        ),
        (
            pb::GetOrCreateActiveConversationRequest {
                channel: 42,
                ..base.clone()
            },
            &["channel"],
        ),
        (
            pb::GetOrCreateActiveConversationRequest {
                scope: 9,
                ..base.clone()
            },
            &["scope"],
        ),
        (
            pb::GetOrCreateActiveConversationRequest {
                idle_gap: gap(0, 0),
                ..base.clone()
            },
            &["idle_gap"],
        ),
        (
            pb::GetOrCreateActiveConversationRequest {
                idle_gap: gap(0, 999_999_999),
                ..base.clone()
            },
            &["idle_gap"],
        ),
        (
            pb::GetOrCreateActiveConversationRequest {
                idle_gap: gap(-60, 0),
                ..base.clone()
            },
            &["idle_gap"],
        ),
        (
            pb::GetOrCreateActiveConversationRequest {
                idle_gap: gap(60, -1),
                ..base.clone()
            },
            &["idle_gap"],
        ),
        (
            pb::GetOrCreateActiveConversationRequest {
                idle_gap: gap(367 * 24 * 3600, 0),
                ..base.clone()
            },
            &["idle_gap"],
        ),
        (
            pb::GetOrCreateActiveConversationRequest {
                provider_conversation_id: "c".repeat(257),
                ..base.clone()
            },
            &["provider_conversation_id"],
        ),
        (
            pb::GetOrCreateActiveConversationRequest {
                provider_conversation_id: "a\0b".into(),
                ..base.clone()
            },
            &["provider_conversation_id"],
        ),
        (
            pb::GetOrCreateActiveConversationRequest {
                user_id: "x".into(),
                channel: 0,
                scope: pb::ConversationScope::Daily as i32,
                time_zone: String::new(),
                idle_gap: gap(0, 0),
                provider_conversation_id: "c".repeat(300),
            },
            &[
                "channel",
                "idle_gap",
                "provider_conversation_id",
                "time_zone",
                "user_id",
            ],
        ),
    ];
    for (request, expected) in cases {
        let status = get_or_create(&mut app, request.clone()).await.unwrap_err();
        assert_eq!(sorted_bad_fields(&status), expected, "{request:?}");
    }
    assert_eq!(app.count("conversations").await, 0);
    assert_eq!(app.count("events").await, 0);

    // The bounds themselves are fine.
    for idle_gap in [gap(1, 0), gap(366 * 24 * 3600, 0)] {
        let ok = pb::GetOrCreateActiveConversationRequest {
            idle_gap,
            ..base.clone()
        };
        get_or_create(&mut app, ok).await.unwrap();
    }
    let ok = pb::GetOrCreateActiveConversationRequest {
        provider_conversation_id: "c".repeat(256),
        ..request(&user, pb::Channel::Web)
    };
    assert_eq!(
        get_or_create(&mut app, ok)
            .await
            .unwrap()
            .conversation
            .unwrap()
            .provider_conversation_id,
        "c".repeat(256)
    );
}

#[tokio::test]
async fn provider_conversation_id_is_set_on_creation_and_unique() {
    let mut app = spawn_app().await;
    let ana = fresh_user();
    let bob = fresh_user();
    let with_id = |user: &str, id: &str| pb::GetOrCreateActiveConversationRequest {
        provider_conversation_id: id.into(),
        ..request(user, pb::Channel::Whatsapp)
    };
    let anas = get_or_create(&mut app, with_id(&ana, "wa-conv-1"))
        .await
        .unwrap()
        .conversation
        .unwrap();
    assert_eq!(anas.provider_conversation_id, "wa-conv-1");

    // Only a conversation the call creates gets it: the active one keeps its own.
    let again = get_or_create(&mut app, with_id(&ana, "wa-conv-2"))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(
        again.conversation.unwrap().provider_conversation_id,
        "wa-conv-1"
    );

    let taken = get_or_create(&mut app, with_id(&bob, "wa-conv-1"))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    assert_eq!(app.count("conversations").await, 1);
    assert_eq!(active_rows(&app, &bob, "whatsapp").await, 0);

    // A refused creation does not close the stale conversation it would have replaced.
    set_last_message_time(&app, &anas.id, Utc::now() - chrono::Duration::hours(7)).await;
    let bobs = get_or_create(&mut app, with_id(&bob, "wa-conv-3"))
        .await
        .unwrap()
        .conversation
        .unwrap();
    let refused = get_or_create(&mut app, with_id(&ana, "wa-conv-3"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");
    assert_eq!(
        stored_status(&app, &anas.id).await,
        ("active".to_owned(), false)
    );
    assert_eq!(app.count("conversations").await, 2);
    assert_eq!(bobs.provider_conversation_id, "wa-conv-3");
}

// ---- GetConversation ----

#[tokio::test]
async fn get_conversation_finds_it_or_says_not_found() {
    let mut app = spawn_app().await;
    let created = app.conversation(&fresh_user(), pb::Channel::App).await;
    assert_eq!(get(&mut app, &created.id).await.unwrap(), created);

    let missing = get(&mut app, &uuid::Uuid::now_v7().to_string())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    for bad in ["", "not-a-uuid"] {
        assert_eq!(
            sorted_bad_fields(&get(&mut app, bad).await.unwrap_err()),
            ["conversation_id"]
        );
    }
}

// ---- ListConversations ----

/// Makes `n` conversations of `user` on `channel`, all but the last closed;
/// returns their ids, oldest first.
async fn conversations(
    app: &mut TestApp,
    user: &str,
    channel: pb::Channel,
    n: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let conversation = app.conversation(user, channel).await;
        if i + 1 < n {
            close(app, &conversation.id).await.unwrap();
        }
        ids.push(conversation.id);
    }
    ids
}

#[tokio::test]
async fn list_conversations_pages_newest_first() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    let mut all = conversations(&mut app, &user, pb::Channel::Whatsapp, 4).await;
    all.extend(conversations(&mut app, &user, pb::Channel::Telegram, 3).await);
    conversations(&mut app, &fresh_user(), pb::Channel::Whatsapp, 2).await; // someone else's
    let newest_first: Vec<String> = all.iter().rev().cloned().collect();

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = list(
            &mut app,
            pb::ListConversationsRequest {
                user_id: user.clone(),
                page_size: 3,
                page_token: token.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        pages += 1;
        assert!(page.conversations.len() <= 3);
        assert!(page.conversations.iter().all(|c| c.user_id == user));
        seen.extend(page.conversations.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, newest_first);

    // The default page holds them all, with an empty token.
    let whole = list(
        &mut app,
        pb::ListConversationsRequest {
            user_id: user.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(whole.next_page_token, "");
    let starts: Vec<_> = whole
        .conversations
        .iter()
        .map(|c| time_of(c.start_time.as_ref().unwrap()))
        .collect();
    assert!(starts.windows(2).all(|w| w[0] >= w[1]), "newest first");
    assert_eq!(
        whole
            .conversations
            .into_iter()
            .map(|c| c.id)
            .collect::<Vec<_>>(),
        newest_first
    );

    // An exact fit ends without a token.
    let exact = list(
        &mut app,
        pb::ListConversationsRequest {
            user_id: user.clone(),
            page_size: 7,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(exact.conversations.len(), 7);
    assert_eq!(exact.next_page_token, "");

    let nobody = list(
        &mut app,
        pb::ListConversationsRequest {
            user_id: fresh_user(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(nobody.conversations.is_empty() && nobody.next_page_token.is_empty());
}

#[tokio::test]
async fn list_conversations_filters_by_status_and_channel() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    let whatsapp = conversations(&mut app, &user, pb::Channel::Whatsapp, 3).await;
    let telegram = conversations(&mut app, &user, pb::Channel::Telegram, 2).await;
    archive(&mut app, &whatsapp[0]).await.unwrap();

    let ids = |response: pb::ListConversationsResponse| -> Vec<String> {
        response.conversations.into_iter().map(|c| c.id).collect()
    };
    let by = |status: pb::ConversationStatus, channel: pb::Channel| pb::ListConversationsRequest {
        user_id: user.clone(),
        status: status as i32,
        channel: channel as i32,
        ..Default::default()
    };
    use pb::{Channel as C, ConversationStatus as S};
    assert_eq!(
        ids(list(&mut app, by(S::Active, C::Unspecified)).await.unwrap()),
        [telegram[1].clone(), whatsapp[2].clone()]
    );
    assert_eq!(
        ids(list(&mut app, by(S::Closed, C::Unspecified)).await.unwrap()),
        [telegram[0].clone(), whatsapp[1].clone()]
    );
    assert_eq!(
        ids(list(&mut app, by(S::Archived, C::Unspecified))
            .await
            .unwrap()),
        [whatsapp[0].clone()]
    );
    assert_eq!(
        ids(list(&mut app, by(S::Unspecified, C::Whatsapp))
            .await
            .unwrap()),
        [
            whatsapp[2].clone(),
            whatsapp[1].clone(),
            whatsapp[0].clone()
        ]
    );
    assert_eq!(
        ids(list(&mut app, by(S::Closed, C::Telegram)).await.unwrap()),
        [telegram[0].clone()]
    );
    assert!(ids(list(&mut app, by(S::Active, C::Web)).await.unwrap()).is_empty());

    // Filters and pagination together.
    let first = list(
        &mut app,
        pb::ListConversationsRequest {
            page_size: 1,
            ..by(S::Unspecified, C::Whatsapp)
        },
    )
    .await
    .unwrap();
    let second = list(
        &mut app,
        pb::ListConversationsRequest {
            page_size: 5,
            page_token: first.next_page_token.clone(),
            ..by(S::Unspecified, C::Whatsapp)
        },
    )
    .await
    .unwrap();
    assert_eq!(ids(first), [whatsapp[2].clone()]);
    assert_eq!(ids(second), [whatsapp[1].clone(), whatsapp[0].clone()]);
}

#[tokio::test]
async fn list_conversations_names_every_bad_field() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    let base = pb::ListConversationsRequest {
        user_id: user.clone(),
        ..Default::default()
    };
    let cases: Vec<(pb::ListConversationsRequest, &[&str])> = vec![
        (
            pb::ListConversationsRequest {
                user_id: "".into(),
                ..base.clone()
            },
            &["user_id"],
        ),
        (
            pb::ListConversationsRequest {
                page_size: -1,
                ..base.clone()
            },
            &["page_size"],
        ),
        (
            pb::ListConversationsRequest {
                page_token: "garbage".into(),
                ..base.clone()
            },
            &["page_token"],
        ),
        (
            pb::ListConversationsRequest {
                status: 9,
                ..base.clone()
            },
            &["status"],
        ),
        (
            pb::ListConversationsRequest {
                channel: 9,
                ..base.clone()
            },
            &["channel"],
        ),
        (
            pb::ListConversationsRequest {
                user_id: "nope".into(),
                page_size: -5,
                page_token: "garbage".into(),
                status: 9,
                channel: 9,
            },
            &["channel", "page_size", "page_token", "status", "user_id"],
        ),
    ];
    for (request, expected) in cases {
        let status = list(&mut app, request.clone()).await.unwrap_err();
        assert_eq!(sorted_bad_fields(&status), expected, "{request:?}");
    }
}

// ---- CloseConversation and ArchiveConversation ----

#[tokio::test]
async fn close_ends_an_active_conversation_once() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    let active = app.conversation(&user, pb::Channel::Whatsapp).await;

    let closed = close(&mut app, &active.id).await.unwrap();
    assert_eq!(closed.id, active.id);
    assert_eq!(closed.status(), pb::ConversationStatus::Closed);
    assert!(closed.end_time.is_some());
    assert_eq!(
        stored_status(&app, &active.id).await,
        ("closed".to_owned(), true)
    );
    assert_eq!(app.count_events("conversation_updated").await, 1);

    // Closing it again returns it unchanged, and emits nothing.
    let again = close(&mut app, &active.id).await.unwrap();
    assert_eq!(again, closed);
    assert_eq!(get(&mut app, &active.id).await.unwrap(), closed);
    assert_eq!(app.count_events("conversation_updated").await, 1);

    // The next call for the user starts a new one.
    let next = get_or_create(&mut app, request(&user, pb::Channel::Whatsapp))
        .await
        .unwrap();
    assert!(next.created);
    assert_ne!(next.conversation.unwrap().id, active.id);
}

#[tokio::test]
async fn an_archived_conversation_cannot_be_closed() {
    let mut app = spawn_app().await;
    let active = app.conversation(&fresh_user(), pb::Channel::Telegram).await;
    let archived = archive(&mut app, &active.id).await.unwrap();
    let events = app.count("events").await;

    let refused = close(&mut app, &active.id).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(get(&mut app, &active.id).await.unwrap(), archived);
    assert_eq!(
        stored_status(&app, &active.id).await,
        ("archived".to_owned(), true)
    );
    assert_eq!(app.count("events").await, events);
}

#[tokio::test]
async fn archive_takes_active_or_closed_conversations_and_repeats_harmlessly() {
    let mut app = spawn_app().await;
    let user = fresh_user();

    // Active: closed first, so it gets an end time.
    let active = app.conversation(&user, pb::Channel::Whatsapp).await;
    let archived = archive(&mut app, &active.id).await.unwrap();
    assert_eq!(archived.status(), pb::ConversationStatus::Archived);
    assert!(archived.end_time.is_some());
    assert_eq!(active_rows(&app, &user, "whatsapp").await, 0);

    // Closed: keeps the time it was closed.
    let other = app.conversation(&user, pb::Channel::Whatsapp).await;
    let closed = close(&mut app, &other.id).await.unwrap();
    let archived_closed = archive(&mut app, &other.id).await.unwrap();
    assert_eq!(archived_closed.status(), pb::ConversationStatus::Archived);
    assert_eq!(archived_closed.end_time, closed.end_time);
    let updates = app.count_events("conversation_updated").await;
    assert_eq!(updates, 3, "archive, close, archive");

    // Again: harmless, unchanged, no event.
    assert_eq!(archive(&mut app, &other.id).await.unwrap(), archived_closed);
    assert_eq!(app.count_events("conversation_updated").await, updates);
    assert_eq!(
        stored_status(&app, &other.id).await,
        ("archived".to_owned(), true)
    );
}

#[tokio::test]
async fn close_and_archive_of_unknown_or_bad_ids() {
    let mut app = spawn_app().await;
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_eq!(
        close(&mut app, &unknown).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        archive(&mut app, &unknown).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        sorted_bad_fields(&close(&mut app, "x").await.unwrap_err()),
        ["conversation_id"]
    );
    assert_eq!(
        sorted_bad_fields(&archive(&mut app, "").await.unwrap_err()),
        ["conversation_id"]
    );
    assert_eq!(app.count("conversations").await, 0);
    assert_eq!(app.count("events").await, 0);
}

// ---- UpdateConversationSummary ----

#[tokio::test]
async fn update_summary_changes_only_the_masked_fields() {
    let mut app = spawn_app().await;
    let active = app.conversation(&fresh_user(), pb::Channel::Whatsapp).await;
    let metadata =
        mesh_runtime::convert::json_to_struct(&serde_json::json!({"lang": "es", "score": 3.0}));
    let everything = pb::Conversation {
        context_summary: "Talked about sleep".into(),
        mood_summary: "calm".into(),
        topics: vec!["sleep".into(), "work".into()],
        metadata: Some(metadata.clone()),
        // Not summary fields: never changed here.
        status: pb::ConversationStatus::Archived as i32,
        message_count: 99,
        provider_conversation_id: "sneaky".into(),
        ..Default::default()
    };

    let updated = update_summary(
        &mut app,
        &active.id,
        everything.clone(),
        &["context_summary", "topics"],
    )
    .await
    .unwrap();
    assert_eq!(updated.context_summary, "Talked about sleep");
    assert_eq!(updated.topics, ["sleep", "work"]);
    assert_eq!(updated.mood_summary, "", "not in the mask");
    assert_eq!(
        updated.metadata,
        Some(Default::default()),
        "not in the mask"
    );
    assert_eq!(updated.status(), pb::ConversationStatus::Active);
    assert_eq!(updated.message_count, 0);
    assert_eq!(updated.provider_conversation_id, "");
    assert_eq!(updated.start_time, active.start_time);
    assert_eq!(get(&mut app, &active.id).await.unwrap(), updated);

    let updated = update_summary(
        &mut app,
        &active.id,
        everything.clone(),
        &["mood_summary", "metadata"],
    )
    .await
    .unwrap();
    assert_eq!(updated.mood_summary, "calm");
    assert_eq!(updated.metadata, Some(metadata));
    assert_eq!(updated.context_summary, "Talked about sleep");

    // Masked but empty clears.
    let cleared = update_summary(
        &mut app,
        &active.id,
        pb::Conversation::default(),
        &["topics", "metadata"],
    )
    .await
    .unwrap();
    assert!(cleared.topics.is_empty());
    assert_eq!(cleared.metadata, Some(Default::default()));
    assert_eq!(cleared.mood_summary, "calm");

    let mut conn = app.db.admin_connection().await;
    let stored: (String, String, Vec<String>, serde_json::Value, String) = sqlx::query_as(
        "SELECT context_summary, mood_summary, topics, metadata, status
         FROM conversations.conversations WHERE id = $1::uuid",
    )
    .bind(&active.id)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        stored,
        (
            "Talked about sleep".to_owned(),
            "calm".to_owned(),
            vec![],
            serde_json::json!({}),
            "active".to_owned()
        )
    );
    assert_eq!(app.count_events("conversation_updated").await, 3);
}

#[tokio::test]
async fn update_summary_needs_a_mask_of_known_fields_and_valid_values() {
    let mut app = spawn_app().await;
    let active = app.conversation(&fresh_user(), pb::Channel::Whatsapp).await;
    let summary = pb::Conversation {
        context_summary: "changed".into(),
        ..Default::default()
    };
    let call = |mask: Option<FieldMask>, conversation: pb::Conversation| {
        pb::UpdateConversationSummaryRequest {
            conversation_id: active.id.clone(),
            conversation: Some(conversation),
            update_mask: mask,
        }
    };
    let cases: Vec<(pb::UpdateConversationSummaryRequest, &[&str])> = vec![
        (call(None, summary.clone()), &["update_mask"]),
        (call(Some(mask(&[])), summary.clone()), &["update_mask"]),
        (
            call(Some(mask(&["status"])), summary.clone()),
            &["update_mask"],
        ),
        (
            call(
                Some(mask(&["context_summary", "message_count"])),
                summary.clone(),
            ),
            &["update_mask"],
        ),
        (
            call(
                Some(mask(&["context_summary"])),
                pb::Conversation {
                    context_summary: "x".repeat(20_001),
                    ..Default::default()
                },
            ),
            &["conversation.context_summary"],
        ),
        (
            call(
                Some(mask(&["mood_summary"])),
                pb::Conversation {
                    mood_summary: "a\0b".into(),
                    ..Default::default()
                },
            ),
            &["conversation.mood_summary"],
        ),
        (
            call(
                Some(mask(&["topics"])),
                pb::Conversation {
                    topics: vec!["ok".into(), "".into(), "t".repeat(101)],
                    ..Default::default()
                },
            ),
            &["conversation.topics[1]", "conversation.topics[2]"],
        ),
        (
            call(
                Some(mask(&["topics"])),
                pb::Conversation {
                    topics: (0..51).map(|i| format!("t{i}")).collect(),
                    ..Default::default()
                },
            ),
            &["conversation.topics"],
        ),
        (
            pb::UpdateConversationSummaryRequest {
                conversation_id: "bad".into(),
                ..call(None, summary.clone())
            },
            &["conversation_id", "update_mask"],
        ),
    ];
    for (request, expected) in cases {
        let status = app
            .client
            .update_conversation_summary(request.clone())
            .await
            .unwrap_err();
        assert_eq!(
            sorted_bad_fields(&status),
            expected,
            "{:?}",
            request.update_mask
        );
    }
    assert_eq!(
        get(&mut app, &active.id).await.unwrap(),
        active,
        "nothing changed"
    );
    assert_eq!(app.count_events("conversation_updated").await, 0);

    // A value that is only wrong outside the mask does not matter.
    let ok = update_summary(
        &mut app,
        &active.id,
        pb::Conversation {
            context_summary: "fine".into(),
            mood_summary: "x".repeat(20_001),
            ..Default::default()
        },
        &["context_summary"],
    )
    .await
    .unwrap();
    assert_eq!(ok.context_summary, "fine");

    let missing = update_summary(
        &mut app,
        &uuid::Uuid::now_v7().to_string(),
        summary,
        &["context_summary"],
    )
    .await
    .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
}
