//! RecordCall/ListCalls, RecordInteraction/ListInteractions and
//! RecordLocation/ListLocations.

use mesh_proto::mesh::conversations::v1::*;
use prost_types::Timestamp;
use serde_json::json;
use tonic::Code;

use crate::harness::{TestApp, bad_fields, data, spawn_app, too_big, wamid};

fn at(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

fn call(user_id: &str, provider_call_id: &str, status: CallStatus) -> CallLog {
    CallLog {
        user_id: user_id.into(),
        provider_call_id: provider_call_id.into(),
        direction: CallDirection::Inbound as i32,
        status: status as i32,
        ..Default::default()
    }
}

async fn record_call(
    app: &mut TestApp,
    call: CallLog,
) -> Result<RecordCallResponse, tonic::Status> {
    app.client
        .record_call(RecordCallRequest { call: Some(call) })
        .await
        .map(|r| r.into_inner())
}

/// Every id ListCalls (or another per-user list) gives for `user`, paging by
/// `page_size`; and the size of each page.
async fn list_call_ids(app: &mut TestApp, user: &str, page_size: i32) -> (Vec<String>, Vec<usize>) {
    let (mut ids, mut sizes, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let page = app
            .client
            .list_calls(ListCallsRequest {
                user_id: user.into(),
                page_size,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        sizes.push(page.calls.len());
        ids.extend(page.calls.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            return (ids, sizes);
        }
        token = page.next_page_token;
        assert!(sizes.len() < 20, "pagination does not end");
    }
}

#[tokio::test]
async fn a_second_record_of_a_provider_call_updates_it() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    let first = record_call(
        &mut app,
        CallLog {
            start_time: at(1_700_000_000),
            metadata: data(json!({"from": "+573001234567", "leg": 1.0})),
            ..call(&user, "wacid.ABC", CallStatus::Ringing)
        },
    )
    .await
    .unwrap();
    assert!(first.created);
    let ringing = first.call.unwrap();
    assert_eq!(ringing.status(), CallStatus::Ringing);
    assert_eq!(ringing.direction(), CallDirection::Inbound);
    assert_eq!(ringing.duration_seconds, 0);
    assert_eq!(ringing.start_time, at(1_700_000_000));
    assert_eq!(ringing.end_time, None);

    let second = record_call(
        &mut app,
        CallLog {
            duration_seconds: 95,
            end_reason: "hangup".into(),
            end_time: at(1_700_000_095),
            metadata: data(json!({"leg": 2.0})),
            // The first record's direction stays.
            direction: CallDirection::Outbound as i32,
            ..call(&user, "wacid.ABC", CallStatus::Completed)
        },
    )
    .await
    .unwrap();
    assert!(!second.created, "the same provider call is updated");
    let ended = second.call.unwrap();
    assert_eq!(ended.id, ringing.id);
    assert_eq!(ended.status(), CallStatus::Completed);
    assert_eq!(ended.direction(), CallDirection::Inbound);
    assert_eq!(ended.duration_seconds, 95);
    assert_eq!(ended.end_reason, "hangup");
    assert_eq!(
        ended.start_time,
        at(1_700_000_000),
        "unset fields keep the stored value"
    );
    assert_eq!(ended.end_time, at(1_700_000_095));
    assert_eq!(
        ended.metadata,
        data(json!({"from": "+573001234567", "leg": 2.0}))
    );
    assert_eq!(ended.create_time, ringing.create_time);
    assert_eq!(app.count("call_logs").await, 1);

    let (ids, _) = list_call_ids(&mut app, &user, 0).await;
    assert_eq!(ids, [ended.id]);
}

#[tokio::test]
async fn calls_without_a_provider_id_are_each_recorded() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    for _ in 0..2 {
        let recorded = record_call(&mut app, call(&user, "", CallStatus::Missed))
            .await
            .unwrap();
        assert!(recorded.created);
        assert_eq!(recorded.call.unwrap().provider_call_id, "");
    }
    assert_eq!(app.count("call_logs").await, 2);
}

#[tokio::test]
async fn another_users_provider_call_id_is_refused_and_left_alone() {
    let mut app = spawn_app().await;
    let ana = app.new_user().await.id;
    let bob = app.new_user().await.id;
    record_call(&mut app, call(&ana, "wacid.1", CallStatus::Ringing))
        .await
        .unwrap();
    let status = record_call(&mut app, call(&bob, "wacid.1", CallStatus::Completed))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(app.count("call_logs").await, 1);
    let mut conn = app.db.admin_connection().await;
    let stored: String = sqlx::query_scalar("SELECT status FROM conversations.call_logs")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, "ringing");
}

#[tokio::test]
async fn record_call_names_each_bad_field_and_writes_nothing() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    let status = app
        .client
        .record_call(RecordCallRequest { call: None })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["call"]);
    let good = call(&user, "wacid.X", CallStatus::Completed);
    let cases: Vec<(CallLog, &[&str])> = vec![
        (call("", "", CallStatus::Completed), &["call.user_id"]),
        (call("nope", "", CallStatus::Completed), &["call.user_id"]),
        (
            CallLog {
                conversation_id: "nope".into(),
                ..good.clone()
            },
            &["call.conversation_id"],
        ),
        (
            call(&user, &"p".repeat(257), CallStatus::Completed),
            &["call.provider_call_id"],
        ),
        (
            CallLog {
                direction: 0,
                ..good.clone()
            },
            &["call.direction"],
        ),
        (
            CallLog {
                direction: 9,
                ..good.clone()
            },
            &["call.direction"],
        ),
        (call(&user, "", CallStatus::Unspecified), &["call.status"]),
        (
            CallLog {
                duration_seconds: -1,
                ..good.clone()
            },
            &["call.duration_seconds"],
        ),
        (
            CallLog {
                end_reason: "r".repeat(501),
                ..good.clone()
            },
            &["call.end_reason"],
        ),
        (
            CallLog {
                start_time: Some(Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..good.clone()
            },
            &["call.start_time"],
        ),
        (
            CallLog {
                start_time: at(1_700_000_100),
                end_time: at(1_700_000_000),
                ..good.clone()
            },
            &["call.end_time"],
        ),
        (
            CallLog {
                user_id: "nope".into(),
                direction: 0,
                status: 0,
                duration_seconds: -5,
                ..Default::default()
            },
            &[
                "call.user_id",
                "call.direction",
                "call.status",
                "call.duration_seconds",
            ],
        ),
    ];
    for (bad, fields) in cases {
        let status = record_call(&mut app, bad.clone()).await.unwrap_err();
        assert_eq!(bad_fields(&status), fields, "{bad:?}");
    }
    assert_eq!(app.count("call_logs").await, 0);
}

#[tokio::test]
async fn a_call_names_its_users_conversation_or_none() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    let other = app.new_user().await.id;
    let conversation = app.conversation(&user, Channel::Whatsapp).await.id;
    let recorded = record_call(
        &mut app,
        CallLog {
            conversation_id: conversation.clone(),
            ..call(&user, "", CallStatus::Answered)
        },
    )
    .await
    .unwrap();
    assert_eq!(recorded.call.unwrap().conversation_id, conversation);

    let unknown = uuid::Uuid::now_v7().to_string();
    let status = record_call(
        &mut app,
        CallLog {
            conversation_id: unknown,
            ..call(&user, "", CallStatus::Answered)
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = record_call(
        &mut app,
        CallLog {
            conversation_id: conversation,
            ..call(&other, "", CallStatus::Answered)
        },
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&status), ["call.conversation_id"]);
    assert_eq!(app.count("call_logs").await, 1);
}

#[tokio::test]
async fn list_calls_pages_through_one_users_calls_oldest_first() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    let other = app.new_user().await.id;
    let mut recorded = Vec::new();
    for i in 0..5 {
        let c = record_call(
            &mut app,
            call(&user, &format!("wacid.{i}"), CallStatus::Missed),
        )
        .await
        .unwrap();
        recorded.push(c.call.unwrap().id);
    }
    record_call(&mut app, call(&other, "", CallStatus::Missed))
        .await
        .unwrap();

    let (ids, sizes) = list_call_ids(&mut app, &user, 2).await;
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(ids, recorded);
    let (ids, sizes) = list_call_ids(&mut app, &user, 5).await;
    assert_eq!(
        (ids.len(), sizes),
        (5, vec![5]),
        "an exact last page ends the list"
    );
    let (ids, _) = list_call_ids(&mut app, &uuid::Uuid::now_v7().to_string(), 0).await;
    assert!(ids.is_empty());
}

#[tokio::test]
async fn the_lists_refuse_bad_arguments() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    let status = app
        .client
        .list_calls(ListCallsRequest {
            user_id: "nope".into(),
            page_size: -1,
            page_token: "bad".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["user_id", "page_size", "page_token"]);
    let status = app
        .client
        .list_interactions(ListInteractionsRequest {
            user_id: String::new(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["user_id"]);
    let status = app
        .client
        .list_locations(ListLocationsRequest {
            user_id: user,
            page_size: -3,
            page_token: "!!".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["page_size", "page_token"]);
}

fn interaction(user_id: &str, kind: InteractionType, target: &str) -> Interaction {
    Interaction {
        user_id: user_id.into(),
        r#type: kind as i32,
        target: target.into(),
        ..Default::default()
    }
}

async fn record_interaction(
    app: &mut TestApp,
    interaction: Interaction,
    request_id: &str,
) -> Result<Interaction, tonic::Status> {
    app.client
        .record_interaction(RecordInteractionRequest {
            interaction: Some(interaction),
            request_id: request_id.into(),
        })
        .await
        .map(|r| r.into_inner().interaction.unwrap())
}

#[tokio::test]
async fn interactions_are_recorded_with_their_message_and_listed() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    let conversation = app.conversation(&user, Channel::Whatsapp).await.id;
    let message = app
        .inbound(&conversation, "menu", &wamid())
        .await
        .message
        .unwrap()
        .id;

    let tapped = record_interaction(
        &mut app,
        Interaction {
            conversation_id: conversation.clone(),
            message_id: message.clone(),
            payload: data(json!({"title": "Yes"})),
            ..interaction(&user, InteractionType::ButtonReply, "btn-yes")
        },
        "",
    )
    .await
    .unwrap();
    assert_eq!(tapped.user_id, user);
    assert_eq!(tapped.conversation_id, conversation);
    assert_eq!(tapped.message_id, message);
    assert_eq!(tapped.r#type(), InteractionType::ButtonReply);
    assert_eq!(tapped.target, "btn-yes");
    assert_eq!(tapped.payload, data(json!({"title": "Yes"})));
    assert!(tapped.create_time.is_some());

    let cta = record_interaction(
        &mut app,
        interaction(
            &user,
            InteractionType::CtaTap,
            &format!("https://example.com/{}", "p".repeat(2000)),
        ),
        "",
    )
    .await
    .unwrap();
    assert_eq!(cta.conversation_id, "");

    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .client
            .list_interactions(ListInteractionsRequest {
                user_id: user.clone(),
                page_size: 1,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        ids.extend(page.interactions.into_iter().map(|i| i.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(ids, [tapped.id, cta.id]);
}

#[tokio::test]
async fn an_interaction_retried_with_its_request_id_is_recorded_once() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    let tap = interaction(&user, InteractionType::ListReply, "row-2");
    let first = record_interaction(&mut app, tap.clone(), "tap-1")
        .await
        .unwrap();
    let again = record_interaction(&mut app, tap.clone(), "tap-1")
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(app.count("interactions").await, 1);
    let status = record_interaction(
        &mut app,
        Interaction {
            target: "row-3".into(),
            ..tap.clone()
        },
        "tap-1",
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&status), ["request_id"]);
    record_interaction(&mut app, tap, "").await.unwrap();
    assert_eq!(app.count("interactions").await, 2);
}

#[tokio::test]
async fn record_interaction_names_each_bad_field_and_writes_nothing() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    let good = interaction(&user, InteractionType::CtaTap, "https://example.com");
    let status = app
        .client
        .record_interaction(RecordInteractionRequest {
            interaction: None,
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["interaction"]);
    let long_request_id = "r".repeat(129);
    let cases: Vec<(Interaction, &str, &[&str])> = vec![
        (
            interaction("", InteractionType::CtaTap, ""),
            "",
            &["interaction.user_id"],
        ),
        (
            Interaction {
                conversation_id: "x".into(),
                ..good.clone()
            },
            "",
            &["interaction.conversation_id"],
        ),
        (
            Interaction {
                message_id: "x".into(),
                ..good.clone()
            },
            "",
            &["interaction.message_id"],
        ),
        (
            interaction(&user, InteractionType::Unspecified, ""),
            "",
            &["interaction.type"],
        ),
        (
            Interaction {
                r#type: 99,
                ..good.clone()
            },
            "",
            &["interaction.type"],
        ),
        (
            interaction(&user, InteractionType::CtaTap, &"u".repeat(2049)),
            "",
            &["interaction.target"],
        ),
        (
            interaction(&user, InteractionType::CtaTap, "a\0b"),
            "",
            &["interaction.target"],
        ),
        (good.clone(), &long_request_id, &["request_id"]),
        (
            Interaction {
                user_id: "x".into(),
                conversation_id: "x".into(),
                message_id: "x".into(),
                r#type: 0,
                ..Default::default()
            },
            "",
            &[
                "interaction.user_id",
                "interaction.conversation_id",
                "interaction.message_id",
                "interaction.type",
            ],
        ),
    ];
    for (bad, request_id, fields) in cases {
        let status = record_interaction(&mut app, bad.clone(), request_id)
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), fields, "{bad:?}");
    }
    assert_eq!(app.count("interactions").await, 0);
}

#[tokio::test]
async fn an_interaction_names_existing_rows_of_its_own_user() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    let other = app.new_user().await.id;
    let whatsapp = app.conversation(&user, Channel::Whatsapp).await.id;
    let telegram = app.conversation(&user, Channel::Telegram).await.id;
    let message = app
        .inbound(&whatsapp, "hi", &wamid())
        .await
        .message
        .unwrap()
        .id;
    let unknown = uuid::Uuid::now_v7().to_string();
    let tap = interaction(&user, InteractionType::ButtonReply, "b");

    for bad in [
        Interaction {
            conversation_id: unknown.clone(),
            ..tap.clone()
        },
        Interaction {
            message_id: unknown.clone(),
            ..tap.clone()
        },
    ] {
        let status = record_interaction(&mut app, bad, "").await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    let cases: Vec<(Interaction, &str)> = vec![
        (
            Interaction {
                conversation_id: whatsapp.clone(),
                ..interaction(&other, InteractionType::ButtonReply, "b")
            },
            "interaction.conversation_id",
        ),
        (
            Interaction {
                message_id: message.clone(),
                ..interaction(&other, InteractionType::ButtonReply, "b")
            },
            "interaction.message_id",
        ),
        (
            Interaction {
                conversation_id: telegram,
                message_id: message.clone(),
                ..tap.clone()
            },
            "interaction.message_id",
        ),
    ];
    for (bad, field) in cases {
        let status = record_interaction(&mut app, bad.clone(), "")
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), [field], "{bad:?}");
    }
    assert_eq!(app.count("interactions").await, 0);
    // The message alone is enough.
    record_interaction(
        &mut app,
        Interaction {
            message_id: message,
            ..tap
        },
        "",
    )
    .await
    .unwrap();
    assert_eq!(app.count("interactions").await, 1);
}

fn location(user_id: &str, latitude: f64, longitude: f64) -> UserLocation {
    UserLocation {
        user_id: user_id.into(),
        latitude,
        longitude,
        ..Default::default()
    }
}

async fn record_location(
    app: &mut TestApp,
    location: UserLocation,
    request_id: &str,
) -> Result<UserLocation, tonic::Status> {
    app.client
        .record_location(RecordLocationRequest {
            location: Some(location),
            request_id: request_id.into(),
        })
        .await
        .map(|r| r.into_inner().location.unwrap())
}

#[tokio::test]
async fn locations_are_recorded_up_to_the_poles_and_the_antimeridian() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    let conversation = app.conversation(&user, Channel::Whatsapp).await.id;
    let message = app
        .inbound(&conversation, "here", &wamid())
        .await
        .message
        .unwrap()
        .id;
    let shared = record_location(
        &mut app,
        UserLocation {
            message_id: message.clone(),
            name: "Parque de la 93".into(),
            address: "Cra. 11a #93a-80, Bogotá".into(),
            ..location(&user, 4.676_6, -74.048_2)
        },
        "",
    )
    .await
    .unwrap();
    assert_eq!(shared.message_id, message);
    assert_eq!((shared.latitude, shared.longitude), (4.676_6, -74.048_2));
    assert_eq!(shared.name, "Parque de la 93");
    assert_eq!(shared.address, "Cra. 11a #93a-80, Bogotá");

    let mut recorded = vec![shared.id];
    for (latitude, longitude) in [(90.0, 180.0), (-90.0, -180.0), (0.0, 0.0)] {
        let l = record_location(&mut app, location(&user, latitude, longitude), "")
            .await
            .unwrap();
        assert_eq!((l.latitude, l.longitude), (latitude, longitude));
        recorded.push(l.id);
    }
    let first = app
        .client
        .list_locations(ListLocationsRequest {
            user_id: user.clone(),
            page_size: 3,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let second = app
        .client
        .list_locations(ListLocationsRequest {
            user_id: user,
            page_size: 3,
            page_token: first.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.next_page_token, "");
    let listed: Vec<String> = first
        .locations
        .into_iter()
        .chain(second.locations)
        .map(|l| l.id)
        .collect();
    assert_eq!(listed, recorded);
}

#[tokio::test]
async fn record_location_names_each_bad_field_and_writes_nothing() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    let good = location(&user, 1.0, 1.0);
    let cases: Vec<(UserLocation, &[&str])> = vec![
        (location("", 1.0, 1.0), &["location.user_id"]),
        (
            UserLocation {
                message_id: "x".into(),
                ..good.clone()
            },
            &["location.message_id"],
        ),
        (location(&user, 90.000_1, 1.0), &["location.latitude"]),
        (location(&user, -91.0, 1.0), &["location.latitude"]),
        (location(&user, f64::NAN, 1.0), &["location.latitude"]),
        (location(&user, 1.0, 180.5), &["location.longitude"]),
        (
            location(&user, 1.0, f64::NEG_INFINITY),
            &["location.longitude"],
        ),
        (
            UserLocation {
                name: "n".repeat(501),
                ..good.clone()
            },
            &["location.name"],
        ),
        (
            UserLocation {
                address: "a".repeat(1001),
                ..good.clone()
            },
            &["location.address"],
        ),
        (
            UserLocation {
                name: "n".repeat(501),
                ..location("x", f64::INFINITY, -200.0)
            },
            &[
                "location.user_id",
                "location.latitude",
                "location.longitude",
                "location.name",
            ],
        ),
    ];
    for (bad, fields) in cases {
        let status = record_location(&mut app, bad.clone(), "")
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), fields, "{bad:?}");
    }
    let status = app
        .client
        .record_location(RecordLocationRequest {
            location: None,
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["location"]);
    assert_eq!(app.count("user_locations").await, 0);
}

#[tokio::test]
async fn a_location_retried_with_its_request_id_is_recorded_once() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    let first = record_location(&mut app, location(&user, 10.0, 20.0), "loc-1")
        .await
        .unwrap();
    let again = record_location(&mut app, location(&user, 10.0, 20.0), "loc-1")
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(app.count("user_locations").await, 1);
}

#[tokio::test]
async fn a_location_names_an_existing_message_of_its_user() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    let other = app.new_user().await.id;
    let conversation = app.conversation(&user, Channel::Whatsapp).await.id;
    let message = app
        .inbound(&conversation, "here", &wamid())
        .await
        .message
        .unwrap()
        .id;
    let status = record_location(
        &mut app,
        UserLocation {
            message_id: uuid::Uuid::now_v7().to_string(),
            ..location(&user, 1.0, 1.0)
        },
        "",
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = record_location(
        &mut app,
        UserLocation {
            message_id: message,
            ..location(&other, 1.0, 1.0)
        },
        "",
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&status), ["location.message_id"]);
    assert_eq!(app.count("user_locations").await, 0);
}

/// A Struct holding U+0000 deep inside: jsonb refuses it.
fn with_nul() -> serde_json::Value {
    json!({"context": {"notes": ["ok", "a\u{0}b"]}})
}

#[tokio::test]
async fn record_call_refuses_metadata_with_nul_or_over_64_kib() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    let good = call(&user, "wacid.json", CallStatus::Ringing);
    let cases: Vec<(CallLog, &[&str])> = vec![
        (
            CallLog {
                metadata: data(with_nul()),
                ..good.clone()
            },
            &["call.metadata"],
        ),
        (
            CallLog {
                metadata: data(json!({"k\u{0}": true})),
                ..good.clone()
            },
            &["call.metadata"],
        ),
        (
            CallLog {
                metadata: data(too_big()),
                ..good.clone()
            },
            &["call.metadata"],
        ),
        (
            CallLog {
                status: 0,
                metadata: data(too_big()),
                ..good.clone()
            },
            &["call.status", "call.metadata"],
        ),
    ];
    for (bad, fields) in cases {
        let status = record_call(&mut app, bad).await.unwrap_err();
        assert_eq!(bad_fields(&status), fields);
    }
    assert_eq!(app.count("call_logs").await, 0);
}

#[tokio::test]
async fn record_interaction_refuses_a_payload_with_nul_or_over_64_kib() {
    let mut app = spawn_app().await;
    let user = app.new_user().await.id;
    let good = interaction(&user, InteractionType::ButtonReply, "yes");
    let cases: Vec<(Interaction, &[&str])> = vec![
        (
            Interaction {
                payload: data(with_nul()),
                ..good.clone()
            },
            &["interaction.payload"],
        ),
        (
            Interaction {
                payload: data(too_big()),
                ..good.clone()
            },
            &["interaction.payload"],
        ),
        (
            Interaction {
                user_id: "nope".into(),
                payload: data(with_nul()),
                ..good.clone()
            },
            &["interaction.user_id", "interaction.payload"],
        ),
    ];
    for (bad, fields) in cases {
        let status = record_interaction(&mut app, bad, "").await.unwrap_err();
        assert_eq!(bad_fields(&status), fields);
    }
    assert_eq!(app.count("interactions").await, 0);
}
