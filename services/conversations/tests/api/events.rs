//! WatchEvents: every committed write's event, in commit order, each with a
//! cursor that resumes exactly after it, across restarts and replicas.

use std::{collections::HashSet, time::Duration};

use mesh_proto::mesh::conversations::v1::{self as pb};
use tonic::{Code, Streaming};

use crate::harness::{
    bad_fields, client, config, conversation_on, fresh_user, inbound_request, spawn_app,
    spawn_conversations, spawn_with, wamid,
};

/// Generous: only a broken stream takes this long.
const PATIENCE: Duration = Duration::from_secs(15);

async fn watch(
    client: &mut crate::harness::Client,
    request: pb::WatchEventsRequest,
) -> Streaming<pb::WatchEventsResponse> {
    client
        .watch_events(request)
        .await
        .expect("WatchEvents starts")
        .into_inner()
}

/// The next `n` events of `stream`; fails the test if they do not come.
async fn take(stream: &mut Streaming<pb::WatchEventsResponse>, n: usize) -> Vec<pb::Event> {
    let mut events = Vec::with_capacity(n);
    while events.len() < n {
        let next = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events arrived", events.len()))
            .expect("the stream stays healthy")
            .expect("the stream stays open");
        events.push(next.event.expect("an event"));
    }
    events
}

/// The status the stream ends with, skipping events still queued.
async fn ending(stream: &mut Streaming<pb::WatchEventsResponse>) -> tonic::Status {
    loop {
        match tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("the stream ends")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => return status,
        }
    }
}

fn kinds(events: &[pb::Event]) -> Vec<pb::EventType> {
    events.iter().map(|e| e.r#type()).collect()
}

fn contents(events: &[pb::Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.message.as_ref().expect("a message event").content.clone())
        .collect()
}

/// A new active WhatsApp conversation of a fresh user id (the users service is
/// not asked about user ids).
async fn conversation(client: &mut crate::harness::Client) -> pb::Conversation {
    conversation_on(client, &fresh_user(), pb::Channel::Whatsapp).await
}

async fn say(
    client: &mut crate::harness::Client,
    conversation_id: &str,
    text: &str,
) -> pb::Message {
    client
        .record_inbound_message(inbound_request(conversation_id, text, &wamid()))
        .await
        .expect("record an inbound message")
        .into_inner()
        .message
        .expect("a message")
}

#[tokio::test]
async fn committed_writes_arrive_live_in_commit_order_each_with_a_cursor() {
    let mut app = spawn_app().await;
    let mut stream = watch(&mut app.client, Default::default()).await;

    let started = conversation(&mut app.client).await;
    let first = say(&mut app.client, &started.id, "hola").await;
    say(&mut app.client, &started.id, "¿hay alguien?").await;
    app.client
        .update_conversation_summary(pb::UpdateConversationSummaryRequest {
            conversation_id: started.id.clone(),
            conversation: Some(pb::Conversation {
                context_summary: "greets".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["context_summary".into()],
            }),
        })
        .await
        .expect("update the summary");
    app.client
        .close_conversation(pb::CloseConversationRequest {
            conversation_id: started.id.clone(),
        })
        .await
        .expect("close");
    app.client
        .archive_conversation(pb::ArchiveConversationRequest {
            conversation_id: started.id.clone(),
        })
        .await
        .expect("archive");

    let events = take(&mut stream, 6).await;
    assert_eq!(
        kinds(&events),
        [
            pb::EventType::ConversationStarted,
            pb::EventType::MessageReceived,
            pb::EventType::MessageReceived,
            pb::EventType::ConversationUpdated,
            pb::EventType::ConversationUpdated,
            pb::EventType::ConversationUpdated,
        ]
    );
    for event in &events {
        assert_eq!(event.user_id, started.user_id);
        assert_eq!(event.conversation_id, started.id);
        assert!(event.create_time.is_some());
    }
    let cursors: HashSet<_> = events.iter().map(|e| e.cursor.as_str()).collect();
    assert_eq!(cursors.len(), 6, "every event has its own cursor");
    assert!(!cursors.contains(""));

    let conversation = events[0].conversation.as_ref().expect("the conversation");
    assert_eq!(conversation.id, started.id);
    assert_eq!(conversation.status(), pb::ConversationStatus::Active);
    let message = events[1].message.as_ref().expect("the message");
    assert_eq!(message.id, first.id);
    assert_eq!(message.content, "hola");
    assert_eq!(message.sequence_number, 1);
    assert_eq!(contents(&events[1..3]), ["hola", "¿hay alguien?"]);
    // Each event carries the conversation as it was then.
    let states: Vec<_> = events[3..]
        .iter()
        .map(|e| e.conversation.as_ref().expect("the conversation"))
        .map(|c| (c.context_summary.as_str(), c.status()))
        .collect();
    assert_eq!(
        states,
        [
            ("greets", pb::ConversationStatus::Active),
            ("greets", pb::ConversationStatus::Closed),
            ("greets", pb::ConversationStatus::Archived),
        ]
    );
}

#[tokio::test]
async fn without_a_cursor_the_stream_starts_after_the_call_or_at_the_oldest() {
    let mut app = spawn_app().await;
    let before = conversation(&mut app.client).await;
    say(&mut app.client, &before.id, "before").await;

    let mut from_now = watch(&mut app.client, Default::default()).await;
    let mut from_oldest = watch(
        &mut app.client,
        pb::WatchEventsRequest {
            from_oldest: true,
            ..Default::default()
        },
    )
    .await;
    say(&mut app.client, &before.id, "after").await;

    assert_eq!(contents(&take(&mut from_now, 1).await), ["after"]);
    let all = take(&mut from_oldest, 3).await;
    assert_eq!(all[0].r#type(), pb::EventType::ConversationStarted);
    assert_eq!(contents(&all[1..]), ["before", "after"]);
}

#[tokio::test]
async fn resuming_with_the_last_cursor_delivers_every_later_event_exactly_once() {
    let mut app = spawn_app().await;
    let chat = conversation(&mut app.client).await;
    for i in 0..5 {
        say(&mut app.client, &chat.id, &format!("m{i}")).await;
    }
    let mut stream = watch(
        &mut app.client,
        pb::WatchEventsRequest {
            from_oldest: true,
            ..Default::default()
        },
    )
    .await;
    let seen = take(&mut stream, 3).await;
    drop(stream);
    // Written while nobody watches.
    for i in 5..8 {
        say(&mut app.client, &chat.id, &format!("m{i}")).await;
    }

    let cursor = seen.last().unwrap().cursor.clone();
    let mut resumed = watch(
        &mut app.client,
        pb::WatchEventsRequest {
            after_cursor: cursor.clone(),
            ..Default::default()
        },
    )
    .await;
    say(&mut app.client, &chat.id, "m8").await;
    let rest = take(&mut resumed, 7).await;
    assert_eq!(
        contents(&rest),
        ["m2", "m3", "m4", "m5", "m6", "m7", "m8"],
        "the events after the cursor, none twice, none missing"
    );

    // The same cursor again gives the same events with the same cursors.
    let mut again = watch(
        &mut app.client,
        pb::WatchEventsRequest {
            after_cursor: cursor,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(take(&mut again, 7).await, rest);
}

#[tokio::test]
async fn draining_ends_streams_with_unavailable_and_a_restart_resumes_from_the_cursor() {
    let mut app = spawn_with(|config| {
        // Long enough that a stream holding the drain would show.
        config.service.drain_grace = Duration::from_secs(60);
    })
    .await;
    let chat = conversation(&mut app.client).await;
    let mut stream = watch(
        &mut app.client,
        pb::WatchEventsRequest {
            conversation_id: chat.id.clone(),
            ..Default::default()
        },
    )
    .await;
    say(&mut app.client, &chat.id, "one").await;
    let seen = take(&mut stream, 1).await;

    app.stop.take().unwrap().send(()).unwrap();
    let status = ending(&mut stream).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("reconnect with your last cursor"),
        "{status:?}"
    );
    // The open stream did not hold the drain until its deadline.
    tokio::time::timeout(Duration::from_secs(30), &mut app.server)
        .await
        .expect("the server stops well before the drain deadline")
        .expect("the server task")
        .expect("a clean stop");

    // The same database, a new process (the users service is not needed here).
    let restarted = config(&app.db, "127.0.0.1:9".parse().unwrap());
    let (addr, _stop, _server) = spawn_conversations(&restarted).await;
    let mut restarted = client(crate::harness::channel(addr).await);
    say(&mut restarted, &chat.id, "two").await;
    let mut resumed = watch(
        &mut restarted,
        pb::WatchEventsRequest {
            after_cursor: seen[0].cursor.clone(),
            ..Default::default()
        },
    )
    .await;
    say(&mut restarted, &chat.id, "three").await;
    assert_eq!(contents(&take(&mut resumed, 2).await), ["two", "three"]);
}

#[tokio::test]
async fn two_replicas_writing_at_once_give_every_watcher_the_same_complete_sequence() {
    const WRITERS_PER_REPLICA: usize = 4;
    const MESSAGES_PER_WRITER: usize = 15;

    let app = spawn_app().await;
    let (replica_addr, _replica_stop, _replica) =
        spawn_conversations(&config(&app.db, "127.0.0.1:9".parse().unwrap())).await;
    let replicas = [
        app.client.clone(),
        client(crate::harness::channel(replica_addr).await),
    ];
    let mut watchers = Vec::new();
    for replica in &replicas {
        watchers.push(watch(&mut replica.clone(), Default::default()).await);
    }

    let mut writers = Vec::new();
    for (r, replica) in replicas.iter().enumerate() {
        for w in 0..WRITERS_PER_REPLICA {
            let mut client = replica.clone();
            writers.push(tokio::spawn(async move {
                let chat = conversation(&mut client).await;
                let mut ids = vec![chat.id.clone()];
                for m in 0..MESSAGES_PER_WRITER {
                    ids.push(
                        say(&mut client, &chat.id, &format!("r{r}w{w}m{m}"))
                            .await
                            .id,
                    );
                }
                ids
            }));
        }
    }
    let mut written = HashSet::new();
    for writer in writers {
        written.extend(writer.await.unwrap());
    }
    let total = replicas.len() * WRITERS_PER_REPLICA * (1 + MESSAGES_PER_WRITER);
    assert_eq!(written.len(), total);

    let mut sequences = Vec::new();
    for watcher in &mut watchers {
        sequences.push(take(watcher, total).await);
    }
    assert_eq!(
        sequences[0], sequences[1],
        "both replicas stream the same sequence"
    );
    let ids: HashSet<_> = sequences[0]
        .iter()
        .map(|e| match &e.message {
            Some(message) => message.id.clone(),
            None => e.conversation.as_ref().unwrap().id.clone(),
        })
        .collect();
    assert_eq!(ids, written, "every write once, nothing else");
    // Within a conversation, commit order is sequence-number order.
    let mut last = std::collections::HashMap::new();
    for event in &sequences[0] {
        if let Some(message) = &event.message {
            let previous = last.insert(message.conversation_id.clone(), message.sequence_number);
            assert_eq!(previous.unwrap_or(0) + 1, message.sequence_number);
        }
    }

    // A watcher resuming mid-way on the other replica continues the same sequence.
    let middle = total / 2;
    let mut resumed = watch(
        &mut replicas[1].clone(),
        pb::WatchEventsRequest {
            after_cursor: sequences[0][middle - 1].cursor.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        take(&mut resumed, total - middle).await,
        sequences[0][middle..]
    );
}

#[tokio::test]
async fn filters_pick_events_by_type_user_and_conversation() {
    let mut app = spawn_app().await;
    let ana = conversation(&mut app.client).await;
    let ana_telegram = conversation_on(&mut app.client, &ana.user_id, pb::Channel::Telegram).await;
    let bob = conversation(&mut app.client).await;
    say(&mut app.client, &ana.id, "ana 1").await;
    say(&mut app.client, &bob.id, "bob 1").await;
    say(&mut app.client, &ana_telegram.id, "ana tg 1").await;
    say(&mut app.client, &ana.id, "ana 2").await;
    // Many events of others between: a filtered stream reads past them.
    for i in 0..600 {
        say(&mut app.client, &bob.id, &format!("bob {i}")).await;
    }
    app.client
        .close_conversation(pb::CloseConversationRequest {
            conversation_id: ana.id.clone(),
        })
        .await
        .unwrap();

    let oldest = |request: pb::WatchEventsRequest| pb::WatchEventsRequest {
        from_oldest: true,
        ..request
    };
    let mut ana_messages = watch(
        &mut app.client,
        oldest(pb::WatchEventsRequest {
            user_id: ana.user_id.clone(),
            types: vec![pb::EventType::MessageReceived as i32],
            ..Default::default()
        }),
    )
    .await;
    let mut ana_whatsapp = watch(
        &mut app.client,
        oldest(pb::WatchEventsRequest {
            conversation_id: ana.id.clone(),
            ..Default::default()
        }),
    )
    .await;
    let mut conversation_events = watch(
        &mut app.client,
        oldest(pb::WatchEventsRequest {
            types: vec![
                pb::EventType::ConversationStarted as i32,
                pb::EventType::ConversationUpdated as i32,
            ],
            ..Default::default()
        }),
    )
    .await;

    assert_eq!(
        contents(&take(&mut ana_messages, 3).await),
        ["ana 1", "ana tg 1", "ana 2"]
    );
    let events = take(&mut ana_whatsapp, 4).await;
    assert_eq!(
        kinds(&events),
        [
            pb::EventType::ConversationStarted,
            pb::EventType::MessageReceived,
            pb::EventType::MessageReceived,
            pb::EventType::ConversationUpdated,
        ]
    );
    let events = take(&mut conversation_events, 4).await;
    let ids: Vec<_> = events.iter().map(|e| e.conversation_id.as_str()).collect();
    assert_eq!(ids, [&ana.id, &ana_telegram.id, &bob.id, &ana.id]);

    // Live, the filters hold too: bob's message reaches none of these
    // streams, ana's Telegram message only the first, bob's new conversation
    // only the last.
    say(&mut app.client, &bob.id, "bob later").await;
    say(&mut app.client, &ana_telegram.id, "ana tg 2").await;
    let bob_telegram = conversation_on(&mut app.client, &bob.user_id, pb::Channel::Telegram).await;
    assert_eq!(contents(&take(&mut ana_messages, 1).await), ["ana tg 2"]);
    let started = take(&mut conversation_events, 1).await;
    assert_eq!(started[0].conversation_id, bob_telegram.id);
    assert_eq!(started[0].r#type(), pb::EventType::ConversationStarted);
}

#[tokio::test]
async fn bad_requests_name_every_bad_field_and_start_no_stream() {
    let mut app = spawn_app().await;
    let chat = conversation(&mut app.client).await;
    // A page token of this very service is not a cursor.
    let page_token = {
        conversation_on(&mut app.client, &chat.user_id, pb::Channel::Telegram).await;
        app.client
            .list_conversations(pb::ListConversationsRequest {
                user_id: chat.user_id.clone(),
                page_size: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .next_page_token
    };
    assert!(!page_token.is_empty());

    let status = app
        .client
        .watch_events(pb::WatchEventsRequest {
            after_cursor: page_token.clone(),
            from_oldest: true,
            types: vec![pb::EventType::MessageSent as i32, 0, 99],
            user_id: "ana".into(),
            conversation_id: "not-a-uuid".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        bad_fields(&status),
        [
            "after_cursor",
            "from_oldest",
            "types[1]",
            "types[2]",
            "user_id",
            "conversation_id"
        ]
    );

    for cursor in ["e1:5", "ZTE6NQ==", &page_token] {
        let status = app
            .client
            .watch_events(pb::WatchEventsRequest {
                after_cursor: cursor.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), ["after_cursor"], "{cursor:?}");
    }

    // A cursor of another deployment, further along than this one: OUT_OF_RANGE.
    let mut other = spawn_app().await;
    let other_chat = conversation(&mut other.client).await;
    let mut stream = watch(
        &mut other.client,
        pb::WatchEventsRequest {
            from_oldest: true,
            ..Default::default()
        },
    )
    .await;
    for i in 0..3 {
        say(&mut other.client, &other_chat.id, &format!("{i}")).await;
    }
    let far = take(&mut stream, 4).await.pop().unwrap().cursor;
    let status = app
        .client
        .watch_events(pb::WatchEventsRequest {
            after_cursor: far,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
}

#[tokio::test]
async fn a_cursor_behind_the_retention_is_out_of_range() {
    let mut app = spawn_with(|config| config.event_retention = Duration::from_secs(1)).await;
    let chat = conversation(&mut app.client).await;
    let mut stream = watch(
        &mut app.client,
        pb::WatchEventsRequest {
            from_oldest: true,
            ..Default::default()
        },
    )
    .await;
    say(&mut app.client, &chat.id, "old 1").await;
    say(&mut app.client, &chat.id, "old 2").await;
    let old = take(&mut stream, 3).await;
    drop(stream);

    // Housekeeping runs once the service has been serving a few seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while app.count("events").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never pruned the events"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for event in &old[..2] {
        let status = app
            .client
            .watch_events(pb::WatchEventsRequest {
                after_cursor: event.cursor.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    }
    // After the last pruned event nothing is missing: that cursor still works,
    // and so does starting at the oldest retained.
    let mut resumed = watch(
        &mut app.client,
        pb::WatchEventsRequest {
            after_cursor: old[2].cursor.clone(),
            ..Default::default()
        },
    )
    .await;
    let mut oldest = watch(
        &mut app.client,
        pb::WatchEventsRequest {
            from_oldest: true,
            ..Default::default()
        },
    )
    .await;
    say(&mut app.client, &chat.id, "new").await;
    assert_eq!(contents(&take(&mut resumed, 1).await), ["new"]);
    assert_eq!(contents(&take(&mut oldest, 1).await), ["new"]);
}

#[tokio::test]
async fn writes_that_fail_or_change_nothing_emit_no_event() {
    let mut app = spawn_app().await;
    let chat = conversation(&mut app.client).await;
    let stranger = conversation(&mut app.client).await;
    let strangers_message = say(&mut app.client, &stranger.id, "not yours").await;
    let first = app
        .client
        .record_inbound_message(inbound_request(&chat.id, "first", "wamid.first"))
        .await
        .unwrap()
        .into_inner();
    let events_before = app.count("events").await;
    let mut stream = watch(&mut app.client, Default::default()).await;

    // Refused before any write: no content.
    let status = app
        .client
        .record_inbound_message(inbound_request(&chat.id, "", &wamid()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // Refused inside the transaction, after the conversation was locked: the
    // reply names another user's message.
    let mut reply = inbound_request(&chat.id, "re", &wamid());
    reply.message.as_mut().unwrap().reply_to_message_id = strangers_message.id.clone();
    let status = app.client.record_inbound_message(reply).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    // A provider's retry: answered, nothing changes.
    let repeat = app
        .client
        .record_inbound_message(inbound_request(&chat.id, "first", "wamid.first"))
        .await
        .unwrap()
        .into_inner();
    assert!(repeat.duplicate);
    assert_eq!(repeat.message, first.message);
    // A closed conversation takes no messages.
    let closed = conversation(&mut app.client).await;
    app.client
        .close_conversation(pb::CloseConversationRequest {
            conversation_id: closed.id.clone(),
        })
        .await
        .unwrap();
    let status = app
        .client
        .record_inbound_message(inbound_request(&closed.id, "late", &wamid()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    say(&mut app.client, &chat.id, "second").await;
    // Only the closed conversation's own start and close, then "second".
    let events = take(&mut stream, 3).await;
    assert_eq!(
        kinds(&events),
        [
            pb::EventType::ConversationStarted,
            pb::EventType::ConversationUpdated,
            pb::EventType::MessageReceived,
        ]
    );
    assert_eq!(contents(&events[2..]), ["second"]);
    assert_eq!(app.count("events").await, events_before + 3);
}

/// The backend pids of the service's LISTEN connections.
async fn listeners(app: &crate::harness::TestApp) -> Vec<i32> {
    let mut conn = app.db.admin_connection().await;
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE datname = current_database() AND query LIKE 'LISTEN %'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn streams_survive_the_listener_losing_its_connection() {
    let mut app = spawn_app().await;
    let chat = conversation(&mut app.client).await;
    let mut stream = watch(&mut app.client, Default::default()).await;
    say(&mut app.client, &chat.id, "before").await;
    assert_eq!(contents(&take(&mut stream, 1).await), ["before"]);

    let before = listeners(&app).await;
    assert_eq!(before.len(), 1, "one listener per replica");
    let mut admin = app.db.admin_connection().await;
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(before[0])
        .execute(&mut admin)
        .await
        .unwrap();
    // Written while the listener may be down: found by the resync or the poll.
    say(&mut app.client, &chat.id, "during").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = listeners(&app).await;
        if now.len() == 1 && now != before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the listener never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    say(&mut app.client, &chat.id, "after").await;
    assert_eq!(contents(&take(&mut stream, 2).await), ["during", "after"]);
}

#[tokio::test]
async fn sends_and_delivery_statuses_stream_in_the_order_they_committed() {
    use pb::send_message_request::{Content, Target};

    let providers = mesh_fake_providers::Providers::start().await;
    let mut app = spawn_with(|config| crate::harness::use_fakes(&providers, config)).await;
    let user = app.new_user().await;
    let chat = app.conversation(&user.id, pb::Channel::Whatsapp).await;
    // The user wrote: the customer service window is open.
    app.inbound(&chat.id, "hola", &wamid()).await;
    let mut stream = watch(
        &mut app.client,
        pb::WatchEventsRequest {
            user_id: user.id.clone(),
            types: vec![
                pb::EventType::MessageSent as i32,
                pb::EventType::DeliveryStatusChanged as i32,
            ],
            ..Default::default()
        },
    )
    .await;

    let sent = app
        .client
        .send_message(pb::SendMessageRequest {
            target: Some(Target::UserId(user.id.clone())),
            channel: pb::Channel::Whatsapp as i32,
            content: Some(Content::Text("¡Hola! ¿En qué te ayudo?".into())),
            ..Default::default()
        })
        .await
        .expect("send")
        .into_inner();
    let status = |status: pb::DeliveryStatus| pb::UpdateDeliveryStatusRequest {
        channel: pb::Channel::Whatsapp as i32,
        provider_message_id: sent.provider_message_id.clone(),
        status: status as i32,
        ..Default::default()
    };
    for update in [
        status(pb::DeliveryStatus::Delivered),
        status(pb::DeliveryStatus::Read),
        // Older than what is stored: not applied, no event.
        status(pb::DeliveryStatus::Delivered),
    ] {
        app.client
            .update_delivery_status(update)
            .await
            .expect("update");
    }
    // A status for a message not stored yet is kept for later: no event either.
    app.client
        .update_delivery_status(pb::UpdateDeliveryStatusRequest {
            provider_message_id: wamid(),
            ..status(pb::DeliveryStatus::Read)
        })
        .await
        .expect("a deferred update");
    // The marker: a message of the same user that is sent after all of it.
    app.client
        .send_message(pb::SendMessageRequest {
            target: Some(Target::UserId(user.id.clone())),
            channel: pb::Channel::Whatsapp as i32,
            content: Some(Content::Text("¿Algo más?".into())),
            ..Default::default()
        })
        .await
        .expect("send");

    let events = take(&mut stream, 6).await;
    let seen: Vec<_> = events
        .iter()
        .map(|e| {
            let message = e.message.as_ref().expect("a message");
            (
                e.r#type(),
                message.content.as_str(),
                message.delivery_status(),
            )
        })
        .collect();
    let text = "¡Hola! ¿En qué te ayudo?";
    assert_eq!(
        seen,
        [
            // Recorded before the provider is called, then its answer.
            (
                pb::EventType::MessageSent,
                text,
                pb::DeliveryStatus::Pending
            ),
            (
                pb::EventType::DeliveryStatusChanged,
                text,
                pb::DeliveryStatus::Accepted
            ),
            (
                pb::EventType::DeliveryStatusChanged,
                text,
                pb::DeliveryStatus::Delivered
            ),
            (
                pb::EventType::DeliveryStatusChanged,
                text,
                pb::DeliveryStatus::Read
            ),
            (
                pb::EventType::MessageSent,
                "¿Algo más?",
                pb::DeliveryStatus::Pending
            ),
            (
                pb::EventType::DeliveryStatusChanged,
                "¿Algo más?",
                pb::DeliveryStatus::Accepted
            ),
        ]
    );
    let message = events[0].message.as_ref().unwrap();
    assert_eq!(message.id, sent.message.as_ref().unwrap().id);
    assert_eq!(message.direction(), pb::MessageDirection::Outbound);
}

#[tokio::test]
async fn a_client_that_stops_reading_for_a_while_misses_nothing() {
    const WRITERS: usize = 8;
    const EACH: usize = 100;

    let mut app = spawn_app().await;
    let mut stream = watch(&mut app.client, Default::default()).await;
    // Far more than the server queues for one stream and the HTTP/2 windows
    // hold (about 4 MB): the server has to wait for the client, then carry on
    // where it was.
    let padding = "·".repeat(2_500);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (mut client, padding) = (app.client.clone(), padding.clone());
        writers.push(tokio::spawn(async move {
            let chat = conversation(&mut client).await;
            for m in 0..EACH {
                say(&mut client, &chat.id, &format!("w{w}m{m} {padding}")).await;
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let events = take(&mut stream, WRITERS * (1 + EACH)).await;
    let mut next = vec![0; WRITERS];
    for event in events.iter().filter(|e| e.message.is_some()) {
        let content = &event.message.as_ref().unwrap().content;
        let (label, _) = content.split_once(' ').unwrap();
        let (w, m) = label[1..].split_once('m').unwrap();
        let w: usize = w.parse().unwrap();
        assert_eq!(
            m.parse::<usize>().unwrap(),
            next[w],
            "each writer's messages in order, once"
        );
        next[w] += 1;
    }
    assert_eq!(next, vec![EACH; WRITERS]);
}
