//! Telegram updates: messages, edits, button presses, deep-link account
//! linking, repeats of an update_id, and the secret token.

use mesh_proto::mesh::{
    conversations::v1::{self as conv, MessageType},
    users::v1 as users,
};
use serde_json::json;

use crate::{
    harness::{TestApp, metadata, ok_json, spawn_app},
    payloads::{telegram_from, telegram_id, telegram_message},
};

pub async fn user_by_telegram_id(app: &mut TestApp, id: i64) -> users::User {
    app.users
        .get_user_by_telegram_id(users::GetUserByTelegramIdRequest {
            telegram_user_id: id,
        })
        .await
        .expect("the Telegram user exists")
        .into_inner()
        .user
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_sender_gets_a_user_and_a_repeated_update_is_harmless() {
    let mut app = spawn_app().await;
    let id = telegram_id();
    let from = telegram_from(id, "Ana", "ana_b");
    let update = telegram_message(7001, 42, &from, json!({"text": "hola 👋"}));
    let first = ok_json(app.post_telegram(&update).await).await;
    assert_eq!(first["stored"], 1, "{first}");
    let (again, concurrently) =
        tokio::join!(app.post_telegram(&update), app.post_telegram(&update));
    for answer in [ok_json(again).await, ok_json(concurrently).await] {
        assert_eq!(answer["duplicates"], 1, "{answer}");
    }

    let user = user_by_telegram_id(&mut app, id).await;
    assert_eq!(
        (user.telegram_username.as_str(), user.display_name.as_str()),
        ("ana_b", "Ana")
    );
    assert_eq!(
        app.db.count("users", "users").await,
        1,
        "one user, however often it came"
    );
    let messages = app.messages_of(&user.id).await;
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(
        (m.content.as_str(), m.provider_message_id.as_str()),
        ("hola 👋", &*format!("{id}:42"))
    );
    assert_eq!(m.channel(), conv::Channel::Telegram);
    assert_eq!(m.r#type(), MessageType::Text);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_start_link_joins_the_telegram_account_to_the_whatsapp_user() {
    let mut app = spawn_app().await;
    let existing = app
        .users
        .upsert_user_by_phone(users::UpsertUserByPhoneRequest {
            phone: "+573009998877".into(),
            profile_name: "Ana".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let token = app
        .users
        .create_link_token(users::CreateLinkTokenRequest {
            user_id: existing.id.clone(),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let id = telegram_id();
    let from = telegram_from(id, "Ana", "ana_tg");
    let update = telegram_message(8001, 1, &from, json!({"text": format!("/start {token}")}));
    ok_json(app.post_telegram(&update).await).await;
    // Telegram re-delivers it: the redemption is a harmless repeat.
    ok_json(app.post_telegram(&update).await).await;

    let linked = user_by_telegram_id(&mut app, id).await;
    assert_eq!(linked.id, existing.id, "the same person on both channels");
    assert_eq!(linked.telegram_username, "ana_tg");
    let messages = app.messages_of(&existing.id).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(metadata(&messages[0])["telegram"]["link"]["redeemed"], true);

    // A later message from that account lands with the same user.
    let later = telegram_message(8002, 2, &from, json!({"text": "ya estoy"}));
    ok_json(app.post_telegram(&later).await).await;
    assert_eq!(app.messages_of(&existing.id).await.len(), 2);
    assert_eq!(app.db.count("users", "users").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_start_token_still_stores_the_message_and_says_why() {
    let mut app = spawn_app().await;
    let id = telegram_id();
    let from = telegram_from(id, "Ben", "ben");
    let update = telegram_message(9001, 3, &from, json!({"text": "/start notARealToken123"}));
    ok_json(app.post_telegram(&update).await).await;
    let user = user_by_telegram_id(&mut app, id).await;
    let messages = app.messages_of(&user.id).await;
    let link = &metadata(&messages[0])["telegram"]["link"];
    assert_eq!(link["redeemed"], false);
    assert!(
        link["reason"].as_str().unwrap().contains("link token"),
        "{link}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn edits_media_and_button_presses_are_stored() {
    let mut app = spawn_app().await;
    let id = telegram_id();
    let from = telegram_from(id, "Ana", "ana_b");
    ok_json(
        app.post_telegram(&telegram_message(100, 5, &from, json!({"text": "hola"})))
            .await,
    )
    .await;
    let mut edit = telegram_message(
        101,
        5,
        &from,
        json!({"text": "hola, ¿qué tal?", "edit_date": 1}),
    );
    edit["edited_message"] = edit["message"].take();
    edit.as_object_mut().unwrap().remove("message");
    ok_json(app.post_telegram(&edit).await).await;
    let photo = telegram_message(
        102,
        6,
        &from,
        json!({"caption": "mira", "photo": [
            {"file_id": "small", "file_unique_id": "a", "width": 90, "height": 90},
            {"file_id": "big", "file_unique_id": "b", "width": 1280, "height": 960}]}),
    );
    ok_json(app.post_telegram(&photo).await).await;
    let poll = telegram_message(
        103,
        7,
        &from,
        json!({"poll": {"id": "p1", "question": "¿Sí?", "options": []}}),
    );
    ok_json(app.post_telegram(&poll).await).await;
    let press = json!({"update_id": 104, "callback_query": {"id": "4382bfdwdsb323b2d9", "from": from,
        "chat_instance": "-1", "data": "slot-9am",
        "message": {"message_id": 6, "chat": {"id": id, "type": "private"}, "date": 1, "text": "?"}}});
    ok_json(app.post_telegram(&press).await).await;
    let member =
        json!({"update_id": 105, "my_chat_member": {"chat": {"id": id, "type": "private"}}});
    assert_eq!(
        ok_json(app.post_telegram(&member).await).await["skipped"],
        1
    );

    let user = user_by_telegram_id(&mut app, id).await;
    let messages = app.messages_of(&user.id).await;
    let kinds: Vec<MessageType> = messages.iter().map(|m| m.r#type()).collect();
    assert_eq!(
        kinds,
        [
            MessageType::Text,
            MessageType::Text,
            MessageType::Image,
            MessageType::Unknown,
            MessageType::Interactive
        ]
    );
    let edit = &messages[1];
    assert_eq!(edit.content, "hola, ¿qué tal?");
    assert_eq!(metadata(edit)["telegram"]["edit_of"], format!("{id}:5"));
    let image = &messages[2];
    assert_eq!(image.content, "mira");
    assert_eq!(image.media.as_ref().unwrap().provider_media_id, "big");
    assert_eq!(
        metadata(&messages[3])["telegram"]["message"]["poll"]["id"],
        "p1"
    );
    let button = &messages[4];
    assert_eq!(button.content, "slot-9am");
    assert_eq!(button.reply_to_provider_message_id, format!("{id}:6"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_secret_token_is_401_and_bad_updates_are_400() {
    let app = spawn_app().await;
    let from = telegram_from(telegram_id(), "Ana", "ana");
    let update = telegram_message(1, 1, &from, json!({"text": "hola"}));
    for secret in [None, Some("wrong-secret"), Some("bad secret with spaces")] {
        let mut request = app
            .http
            .post(format!("{}/webhooks/telegram", app.url))
            .body(update.to_string());
        if let Some(secret) = secret {
            request = request.header("x-telegram-bot-api-secret-token", secret);
        }
        assert_eq!(request.send().await.unwrap().status(), 401, "{secret:?}");
    }
    for body in [
        json!({"update_id": 1}),
        json!({"message": {}}),
        json!("text"),
    ] {
        assert_eq!(app.post_telegram(&body).await.status(), 400, "{body}");
    }
    assert_eq!(app.stored_messages().await, 0);
    assert_eq!(app.db.count("users", "users").await, 0);
}

/// A message with no `from` (a channel post forwarded as a message) has no
/// user to belong to: it is dead-lettered whole, once, and answered 200.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_without_a_sender_is_dead_lettered() {
    let mut app = spawn_app().await;
    let update = json!({"update_id": 9101, "message": {"message_id": 12,
        "chat": {"id": -1_001_234_567_890_i64, "type": "channel", "title": "news"},
        "date": 1_700_000_000, "text": "hola"}});
    let answer = ok_json(app.post_telegram(&update).await).await;
    assert_eq!(
        (answer["stored"].as_u64(), answer["dead_lettered"].as_u64()),
        (Some(0), Some(1)),
        "{answer}"
    );
    ok_json(app.post_telegram(&update).await).await;

    let failures = app.webhook_failures().await;
    assert_eq!(failures.len(), 1, "the retry files nothing twice");
    let failure = &failures[0];
    assert_eq!(failure.source(), conv::WebhookSource::Telegram);
    assert_eq!(failure.provider_message_id, "-1001234567890:12");
    assert!(
        failure.error.contains("without a sender"),
        "{}",
        failure.error
    );
    assert_eq!(failure.raw_payload, update.to_string().as_bytes());
    assert_eq!(app.db.count("users", "users").await, 0);
}

/// The users service refuses the profile (here a language that is not ISO
/// 639-1): the user is made with the Telegram account alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_profile_still_makes_the_telegram_user() {
    let mut app = spawn_app().await;
    let id = telegram_id();
    let mut from = telegram_from(id, "Ana", "ana_b");
    from["language_code"] = json!("zz");
    let update = telegram_message(9201, 1, &from, json!({"text": "hola"}));
    let answer = ok_json(app.post_telegram(&update).await).await;
    assert_eq!(answer["stored"], 1, "{answer}");

    let user = user_by_telegram_id(&mut app, id).await;
    assert_eq!(
        (user.display_name.as_str(), user.telegram_username.as_str()),
        ("", ""),
        "made bare"
    );
    assert_eq!(app.messages_of(&user.id).await.len(), 1);
}
