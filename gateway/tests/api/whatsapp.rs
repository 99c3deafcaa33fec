//! WhatsApp deliveries: every message type stored, nothing doubled, nothing
//! unauthenticated or malformed let in.

use mesh_proto::mesh::conversations::v1::{self as conv, MessageType};
use serde_json::json;

use crate::{
    harness::{APP_SECRET, metadata, ok_json, sign, spawn_app},
    payloads::{self, delivery, message, messages_value, sender, single, text, wamid},
};

#[tokio::test(flavor = "multi_thread")]
async fn a_text_message_is_stored_with_its_sender_and_opens_the_window() {
    let mut app = spawn_app().await;
    let (wa_id, phone) = sender();
    let id = wamid();
    let answer = ok_json(
        app.post_whatsapp(&single(&wa_id, "Ana", text(&wa_id, &id, "Hola")))
            .await,
    )
    .await;
    assert_eq!(answer["stored"], 1, "{answer}");

    let user = app.user_by_phone(&phone).await;
    assert_eq!(user.whatsapp_profile_name, "Ana");
    assert!(user.last_message_time.is_some(), "TouchLastMessage ran");
    let messages = app.messages_of(&user.id).await;
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(
        (m.content.as_str(), m.provider_message_id.as_str()),
        ("Hola", id.as_str())
    );
    assert_eq!(m.r#type(), MessageType::Text);
    assert_eq!(m.direction(), conv::MessageDirection::Inbound);
    assert_eq!(m.channel(), conv::Channel::Whatsapp);
    assert!(m.provider_time.is_some());

    let window = app
        .conversations
        .get_messaging_window(conv::GetMessagingWindowRequest {
            user_id: user.id.clone(),
            time_zone: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        window.free_form_allowed,
        "the 24 h window opened: {window:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_with_several_entries_and_messages_stores_them_all_in_order() {
    let mut app = spawn_app().await;
    let (ana, ana_phone) = sender();
    let (ben, ben_phone) = sender();
    let ids: Vec<String> = (0..4).map(|_| wamid()).collect();
    let body = delivery(vec![
        vec![
            messages_value(
                &[(&ana, "Ana")],
                vec![text(&ana, &ids[0], "uno"), text(&ana, &ids[1], "dos")],
            ),
            messages_value(&[(&ben, "Ben")], vec![text(&ben, &ids[2], "one")]),
        ],
        vec![messages_value(
            &[(&ana, "Ana")],
            vec![text(&ana, &ids[3], "tres")],
        )],
    ]);
    let answer = ok_json(app.post_whatsapp(body.to_string().as_bytes()).await).await;
    assert_eq!(answer["stored"], 4, "{answer}");

    assert_eq!(app.texts_from(&ana_phone).await, ["uno", "dos", "tres"]);
    assert_eq!(app.texts_from(&ben_phone).await, ["one"]);
    let ben_user = app.user_by_phone(&ben_phone).await;
    assert_eq!(ben_user.whatsapp_profile_name, "Ben");
}

#[tokio::test(flavor = "multi_thread")]
async fn media_messages_keep_the_media_id_mime_type_and_caption() {
    let mut app = spawn_app().await;
    let (wa_id, phone) = sender();
    let image = message(
        &wa_id,
        &wamid(),
        "image",
        json!({"id": "1234567890", "mime_type": "image/jpeg", "sha256": "abc=", "caption": "mi perro"}),
    );
    let voice = message(
        &wa_id,
        &wamid(),
        "audio",
        json!({"id": "998877", "mime_type": "audio/ogg; codecs=opus", "sha256": "def=", "voice": true}),
    );
    let body = delivery(vec![vec![messages_value(
        &[(&wa_id, "Ana")],
        vec![image, voice],
    )]]);
    ok_json(app.post_whatsapp(body.to_string().as_bytes()).await).await;

    let messages = app.messages_from(&phone).await;
    assert_eq!(messages.len(), 2);
    let (image, voice) = (&messages[0], &messages[1]);
    assert_eq!(image.r#type(), MessageType::Image);
    assert_eq!(image.content, "mi perro");
    let media = image.media.as_ref().expect("media");
    assert_eq!(
        (
            media.provider_media_id.as_str(),
            media.mime_type.as_str(),
            media.sha256.as_str()
        ),
        ("1234567890", "image/jpeg", "abc=")
    );
    assert_eq!(voice.r#type(), MessageType::Audio);
    assert_eq!(voice.content, "", "a voice note has no text");
    assert_eq!(voice.media.as_ref().unwrap().provider_media_id, "998877");
    assert_eq!(
        metadata(voice)["whatsapp"]["message"]["audio"]["voice"],
        true
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interactive_reply_keeps_the_title_as_text_and_the_id_picked() {
    let mut app = spawn_app().await;
    let (wa_id, phone) = sender();
    let mut reply = message(
        &wa_id,
        &wamid(),
        "interactive",
        json!({"type": "button_reply", "button_reply": {"id": "slot-9am", "title": "9:00 a. m."}}),
    );
    reply["context"] = json!({"from": "15550783881", "id": "wamid.ours"});
    ok_json(app.post_whatsapp(&single(&wa_id, "Ana", reply)).await).await;

    let m = &app.messages_from(&phone).await[0];
    assert_eq!(m.r#type(), MessageType::Interactive);
    assert_eq!(m.content, "9:00 a. m.");
    assert_eq!(m.reply_to_provider_message_id, "wamid.ours");
    assert_eq!(metadata(m)["whatsapp"]["reply_payload"], "slot-9am");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_location_is_stored_with_its_coordinates() {
    let mut app = spawn_app().await;
    let (wa_id, phone) = sender();
    let location = message(
        &wa_id,
        &wamid(),
        "location",
        json!({"latitude": 4.6097, "longitude": -74.0817, "name": "Plaza de Bolívar", "address": "Bogotá"}),
    );
    ok_json(app.post_whatsapp(&single(&wa_id, "Ana", location)).await).await;
    let m = &app.messages_from(&phone).await[0];
    assert_eq!(m.r#type(), MessageType::Location);
    assert_eq!(m.content, "Plaza de Bolívar");
    let stored = &metadata(m)["whatsapp"]["message"]["location"];
    assert_eq!(
        (stored["latitude"].as_f64(), stored["longitude"].as_f64()),
        (Some(4.6097), Some(-74.0817))
    );

    // A shared pin without a name has no text: its coordinates are enough.
    let bare = message(
        &wa_id,
        &wamid(),
        "location",
        json!({"latitude": 1.5, "longitude": 2.5}),
    );
    ok_json(app.post_whatsapp(&single(&wa_id, "Ana", bare)).await).await;
    let m = &app.messages_from(&phone).await[1];
    assert_eq!(
        (m.r#type(), m.content.as_str()),
        (MessageType::Location, "")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reaction_points_at_the_message_it_reacts_to() {
    let mut app = spawn_app().await;
    let (wa_id, phone) = sender();
    let reaction = message(
        &wa_id,
        &wamid(),
        "reaction",
        json!({"message_id": "wamid.reacted", "emoji": "❤️"}),
    );
    // Removing a reaction sends an empty emoji: still stored.
    let removed = message(
        &wa_id,
        &wamid(),
        "reaction",
        json!({"message_id": "wamid.reacted"}),
    );
    let body = delivery(vec![vec![messages_value(
        &[(&wa_id, "Ana")],
        vec![reaction, removed],
    )]]);
    ok_json(app.post_whatsapp(body.to_string().as_bytes()).await).await;
    let messages = app.messages_from(&phone).await;
    assert_eq!(messages.len(), 2);
    for m in &messages {
        assert_eq!(m.r#type(), MessageType::Reaction);
        assert_eq!(m.reply_to_provider_message_id, "wamid.reacted");
    }
    assert_eq!(
        (messages[0].content.as_str(), messages[1].content.as_str()),
        ("❤️", "")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unsupported_and_unknown_types_are_stored_whole_as_unknown() {
    let mut app = spawn_app().await;
    let (wa_id, phone) = sender();
    let mut unsupported = json!({"from": wa_id, "id": wamid(), "timestamp": payloads::now(),
        "type": "unsupported",
        "errors": [{"code": 131051, "title": "Message type unknown",
                    "message": "Message type unknown",
                    "error_data": {"details": "Message type is currently not supported."}}]});
    unsupported["unsupported"] = json!({"type": "edit"});
    let future_type = message(&wa_id, &wamid(), "hologram", json!({"depth": 3}));
    let body = delivery(vec![vec![messages_value(
        &[(&wa_id, "Ana")],
        vec![unsupported, future_type],
    )]]);
    let answer = ok_json(app.post_whatsapp(body.to_string().as_bytes()).await).await;
    assert_eq!(answer["stored"], 2, "{answer}");

    let messages = app.messages_from(&phone).await;
    assert_eq!(messages.len(), 2, "never dropped");
    for m in &messages {
        assert_eq!(m.r#type(), MessageType::Unknown);
    }
    let first = metadata(&messages[0]);
    assert_eq!(first["whatsapp"]["type"], "unsupported");
    assert_eq!(
        first["whatsapp"]["errors"][0]["code"].as_f64(),
        Some(131051.0)
    );
    assert_eq!(first["whatsapp"]["message"]["unsupported"]["type"], "edit");
    let second = metadata(&messages[1]);
    assert_eq!(second["whatsapp"]["type"], "hologram");
    assert_eq!(
        second["whatsapp"]["message"]["hologram"]["depth"].as_f64(),
        Some(3.0)
    );
}

/// Meta signs its own serialisation, with non-ASCII escaped as \uXXXX: the
/// signature is checked over those raw bytes, and the text arrives intact.
#[tokio::test(flavor = "multi_thread")]
async fn a_non_ascii_message_signed_over_the_raw_bytes_is_accepted() {
    let mut app = spawn_app().await;
    let (wa_id, phone) = sender();
    let id = wamid();
    let raw = format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550783881","phone_number_id":"106540352242922"}},"contacts":[{{"profile":{{"name":"Mar\u00eda Jos\u00e9"}},"wa_id":"{wa_id}"}}],"messages":[{{"from":"{wa_id}","id":"{id}","timestamp":"{ts}","type":"text","text":{{"body":"\u00bfMa\u00f1ana a las 9? \ud83d\udc4d"}}}}]}}}}]}}]}}"#,
        ts = payloads::now()
    );
    let signature = sign(APP_SECRET, raw.as_bytes());
    // The same JSON re-serialised (UTF-8, not escaped) does not match that signature.
    let reserialised = serde_json::from_str::<serde_json::Value>(&raw)
        .unwrap()
        .to_string();
    assert_ne!(reserialised, raw);
    let refused = app
        .post_whatsapp_signed(reserialised.as_bytes(), Some(&signature))
        .await;
    assert_eq!(refused.status(), 401);

    ok_json(
        app.post_whatsapp_signed(raw.as_bytes(), Some(&signature))
            .await,
    )
    .await;
    let user = app.user_by_phone(&phone).await;
    assert_eq!(user.whatsapp_profile_name, "María José");
    let messages = app.messages_of(&user.id).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].content, "¿Mañana a las 9? 👍");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_delivery_twice_stores_each_message_once() {
    let mut app = spawn_app().await;
    let (wa_id, phone) = sender();
    let body = delivery(vec![vec![messages_value(
        &[(&wa_id, "Ana")],
        vec![text(&wa_id, &wamid(), "a"), text(&wa_id, &wamid(), "b")],
    )]])
    .to_string();
    let first = ok_json(app.post_whatsapp(body.as_bytes()).await).await;
    assert_eq!(
        (first["stored"].as_u64(), first["duplicates"].as_u64()),
        (Some(2), Some(0))
    );
    // Meta retries, and sometimes delivers twice at once.
    let (again, concurrently) = tokio::join!(
        app.post_whatsapp(body.as_bytes()),
        app.post_whatsapp(body.as_bytes())
    );
    for answer in [ok_json(again).await, ok_json(concurrently).await] {
        assert_eq!(
            (answer["stored"].as_u64(), answer["duplicates"].as_u64()),
            (Some(0), Some(2)),
            "{answer}"
        );
    }
    assert_eq!(app.messages_from(&phone).await.len(), 2);
    assert_eq!(app.stored_messages().await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_or_missing_signature_is_401_and_nothing_is_called() {
    let mut app = spawn_app().await;
    let (wa_id, phone) = sender();
    let body = single(&wa_id, "Ana", text(&wa_id, &wamid(), "Hola"));
    let wrong_key = sign("not-the-secret", &body);
    let mut tampered = body.clone();
    let last = tampered.len() - 3;
    tampered[last] = b' ';
    for (bytes, signature) in [
        (&body, None),
        (&body, Some(wrong_key.as_str())),
        (&body, Some("sha256=zz")),
        (&body, Some("md5=00")),
        (&tampered, Some(sign(APP_SECRET, &body).as_str())),
    ] {
        let answer = app.post_whatsapp_signed(bytes, signature).await;
        assert_eq!(answer.status(), 401, "{signature:?}");
        let text = answer.text().await.unwrap();
        assert!(!text.contains("Hola"), "the body is not echoed: {text}");
    }
    let missing = app
        .users
        .get_user_by_phone(mesh_proto::mesh::users::v1::GetUserByPhoneRequest { phone })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "no user was made");
    assert_eq!(app.stored_messages().await, 0);
    assert_eq!(app.db.count("users", "users").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_that_are_not_a_whatsapp_payload_are_400_with_a_reason() {
    let app = spawn_app().await;
    let (wa_id, _) = sender();
    let whole = single(&wa_id, "Ana", text(&wa_id, &wamid(), "Hola"));
    let truncated = &whole[..whole.len() / 2];
    let cases: Vec<(&[u8], &str)> = vec![
        (truncated, "not JSON"),
        (b"", "not JSON"),
        (br#"{"object":"page","entry":[]}"#, "unexpected object"),
        (br#"{"entry":[]}"#, "shape"),
        (br#"[1,2,3]"#, "shape"),
    ];
    for (body, reason) in cases {
        let answer = app.post_whatsapp(body).await;
        assert_eq!(answer.status(), 400, "{}", String::from_utf8_lossy(body));
        let error: serde_json::Value = answer.json().await.unwrap();
        assert!(error["error"].as_str().unwrap().contains(reason), "{error}");
    }
    assert_eq!(app.stored_messages().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_3_mb_is_413() {
    let app = spawn_app().await;
    let body = vec![b' '; mesh_gateway::MAX_WHATSAPP_BODY + 1];
    let answer = app.post_whatsapp(&body).await;
    assert_eq!(answer.status(), 413);
    // Exactly at the limit it is read, checked and parsed (here: not JSON).
    let mut at_limit = vec![b' '; mesh_gateway::MAX_WHATSAPP_BODY];
    at_limit[0] = b'x';
    assert_eq!(app.post_whatsapp(&at_limit).await.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sender_that_is_not_a_phone_number_is_dead_lettered_and_answered_200() {
    let mut app = spawn_app().await;
    let (good, good_phone) = sender();
    let bad = "0123";
    let bad_id = wamid();
    let body = delivery(vec![vec![messages_value(
        &[(bad, "?"), (&good, "Ana")],
        vec![text(bad, &bad_id, "hi"), text(&good, &wamid(), "Hola")],
    )]])
    .to_string();
    let answer = ok_json(app.post_whatsapp(body.as_bytes()).await).await;
    assert_eq!(
        (answer["stored"].as_u64(), answer["dead_lettered"].as_u64()),
        (Some(1), Some(1))
    );
    // The good one is stored all the same.
    assert_eq!(app.messages_from(&good_phone).await.len(), 1);

    let failures = app.webhook_failures().await;
    assert_eq!(failures.len(), 1);
    let failure = &failures[0];
    assert_eq!(failure.source(), conv::WebhookSource::Whatsapp);
    assert_eq!(failure.provider_message_id, bad_id);
    assert!(
        failure.error.contains("not a phone number"),
        "{}",
        failure.error
    );
    assert_eq!(failure.raw_payload, body.as_bytes(), "the raw body is kept");
    assert_eq!(failure.status(), conv::WebhookFailureStatus::Pending);

    // The provider's retry files nothing twice.
    ok_json(app.post_whatsapp(body.as_bytes()).await).await;
    assert_eq!(app.webhook_failures().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ad_referral_opens_the_free_entry_point() {
    let mut app = spawn_app().await;
    let (wa_id, phone) = sender();
    let mut m = text(&wa_id, &wamid(), "Vi su anuncio");
    m["referral"] = json!({"source_url": "https://fb.me/abc", "source_id": "120", "source_type": "ad",
        "headline": "Habla con nosotros", "body": "…", "ctwa_clid": "ARAkLk"});
    ok_json(app.post_whatsapp(&single(&wa_id, "Ana", m)).await).await;
    let user = app.user_by_phone(&phone).await;
    // The 72 h offer starts with our first reply: send one, then look.
    app.send_text(&user.id, "¡Hola! ¿En qué te ayudo?").await;
    let window = app
        .conversations
        .get_messaging_window(conv::GetMessagingWindowRequest {
            user_id: user.id,
            time_zone: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let free_entry = window.free_entry_point.expect("free entry point");
    assert!(free_entry.open, "{free_entry:?}");
}
