//! SendMessage against the fake WhatsApp and Telegram APIs: what the
//! provider received, what the caller was told, and what was stored.

use std::time::Duration;

use mesh_proto::mesh::{
    conversations::v1::{self as pb, send_message_request::Content, send_message_request::Target},
    users::v1 as users_pb,
};
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;

use mesh_fake_providers::{Providers, TgReply, WaReply};

use crate::harness::{
    self, TELEGRAM_BOT_TOKEN, TestApp, WHATSAPP_PHONE_NUMBER_ID, WHATSAPP_TOKEN, bad_fields, wamid,
};

async fn setup() -> (TestApp, Providers) {
    setup_with(|_| {}).await
}

async fn setup_with(adjust: impl FnOnce(&mut mesh_conversations::Config)) -> (TestApp, Providers) {
    let providers = Providers::start().await;
    let app = harness::spawn_with(|config| {
        crate::harness::use_fakes(&providers, config);
        adjust(config);
    })
    .await;
    (app, providers)
}

fn text_to(user_id: &str, channel: pb::Channel, text: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        target: Some(Target::UserId(user_id.into())),
        channel: channel as i32,
        content: Some(Content::Text(text.into())),
        ..Default::default()
    }
}

fn template_to(user_id: &str) -> pb::SendMessageRequest {
    pb::SendMessageRequest {
        target: Some(Target::UserId(user_id.into())),
        channel: pb::Channel::Whatsapp as i32,
        content: Some(Content::Template(pb::Template {
            name: "daily_checkin".into(),
            language_code: "es".into(),
            components: vec![mesh_runtime::convert::json_to_struct(&json!({
                "type": "body",
                "parameters": [{"type": "text", "text": "Ana"}],
            }))],
        })),
        ..Default::default()
    }
}

fn with_request_id(mut request: pb::SendMessageRequest, id: &str) -> pb::SendMessageRequest {
    request.request_id = id.into();
    request
}

/// A user with a WhatsApp conversation whose customer service window is open.
async fn user_in_window(app: &mut TestApp) -> (users_pb::User, pb::Conversation) {
    let user = app.new_user().await;
    let conversation = app.conversation(&user.id, pb::Channel::Whatsapp).await;
    app.inbound(&conversation.id, "hola", &wamid()).await;
    (user, conversation)
}

fn digits(phone: &str) -> String {
    phone.trim_start_matches('+').to_owned()
}

/// The outbound rows as stored.
#[derive(Debug, sqlx::FromRow)]
struct Stored {
    id: uuid::Uuid,
    sequence_number: i64,
    delivery_status: Option<String>,
    provider_message_id: Option<String>,
    error_code: Option<String>,
    error_title: Option<String>,
    send_retryable: bool,
}

async fn outbound(app: &TestApp) -> Vec<Stored> {
    let mut conn = app.db.admin_connection().await;
    sqlx::query_as(
        "SELECT id, sequence_number, delivery_status, provider_message_id,
                error_code, error_title, send_retryable
         FROM conversations.messages WHERE direction = 'outbound' ORDER BY create_time",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

async fn event_types(app: &TestApp, message_id: &str) -> Vec<String> {
    let mut conn = app.db.admin_connection().await;
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT type, payload FROM conversations.events ORDER BY seq")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    rows.into_iter()
        .filter(|(_, payload)| {
            use prost::Message as _;
            pb::Event::decode(payload.as_slice())
                .unwrap()
                .message
                .is_some_and(|m| m.id == message_id)
        })
        .map(|(kind, _)| kind)
        .collect()
}

fn retry_delay(status: &tonic::Status) -> Duration {
    status
        .get_details_retry_info()
        .expect("RetryInfo details")
        .retry_delay
        .expect("a retry delay")
}

#[tokio::test]
async fn whatsapp_text_inside_the_window_is_sent_once_and_stores_the_provider_id() {
    let (mut app, fake) = setup().await;
    let (user, conversation) = user_in_window(&mut app).await;

    let response = app
        .client
        .send_message(text_to(&user.id, pb::Channel::Whatsapp, "¿Cómo dormiste?"))
        .await
        .expect("sent")
        .into_inner();

    let requests = fake.whatsapp.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    assert_eq!(
        request.path,
        format!("/v21.0/{WHATSAPP_PHONE_NUMBER_ID}/messages")
    );
    assert_eq!(
        request.authorization.as_deref(),
        Some(format!("Bearer {WHATSAPP_TOKEN}").as_str())
    );
    assert_eq!(request.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        request.body,
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": digits(user.phone.as_deref().unwrap()),
            "type": "text",
            "text": {"body": "¿Cómo dormiste?", "preview_url": false},
        })
    );
    assert!(fake.telegram.requests().is_empty());

    assert!(
        response.provider_message_id.starts_with("wamid."),
        "{response:?}"
    );
    let message = response.message.expect("the message");
    assert_eq!(message.provider_message_id, response.provider_message_id);
    assert_eq!(message.conversation_id, conversation.id);
    assert_eq!(message.user_id, user.id);
    assert_eq!(message.sequence_number, 2);
    assert_eq!(message.direction(), pb::MessageDirection::Outbound);
    assert_eq!(message.role(), pb::MessageRole::Assistant);
    assert_eq!(message.r#type(), pb::MessageType::Text);
    assert_eq!(message.content, "¿Cómo dormiste?");
    assert_eq!(message.delivery_status(), pb::DeliveryStatus::Accepted);
    assert!(!message.proactive, "inside the customer service window");

    let stored = app
        .client
        .get_message(pb::GetMessageRequest {
            message_id: message.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(stored, message);
    assert_eq!(
        event_types(&app, &message.id).await,
        ["message_sent", "delivery_status_changed"]
    );
}

#[tokio::test]
async fn whatsapp_text_outside_the_window_is_refused_and_nothing_is_sent_or_recorded() {
    let (mut app, fake) = setup().await;
    let user = app.new_user().await;

    let status = app
        .client
        .send_message(text_to(&user.id, pb::Channel::Whatsapp, "hola"))
        .await
        .expect_err("outside the window");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("24-hour customer service window"),
        "{status:?}"
    );
    assert!(
        status.message().contains("only template messages"),
        "{status:?}"
    );

    assert!(fake.whatsapp.requests().is_empty());
    assert_eq!(app.count("messages").await, 0);
    assert_eq!(
        app.count("conversations").await,
        0,
        "no conversation was started either"
    );
    assert_eq!(app.count("events").await, 0);
}

#[tokio::test]
async fn a_template_outside_the_window_is_sent_and_marked_proactive() {
    let (mut app, fake) = setup().await;
    let user = app.new_user().await;

    let response = app
        .client
        .send_message(template_to(&user.id))
        .await
        .expect("templates always go")
        .into_inner();
    let message = response.message.unwrap();
    assert_eq!(message.r#type(), pb::MessageType::Template);
    assert_eq!(message.content, "daily_checkin");
    assert!(message.proactive, "no customer service window was open");
    assert_eq!(message.delivery_status(), pb::DeliveryStatus::Accepted);

    let requests = fake.whatsapp.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].body,
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": digits(user.phone.as_deref().unwrap()),
            "type": "template",
            "template": {
                "name": "daily_checkin",
                "language": {"code": "es"},
                "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}],
            },
        })
    );
}

#[tokio::test]
async fn a_send_by_user_id_creates_the_active_conversation() {
    let (mut app, _fake) = setup().await;
    let user = app.new_user().await;
    assert_eq!(app.count("conversations").await, 0);

    let message = app
        .client
        .send_message(template_to(&user.id))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(message.sequence_number, 1);

    let active = app
        .client
        .get_or_create_active_conversation(pb::GetOrCreateActiveConversationRequest {
            user_id: user.id.clone(),
            channel: pb::Channel::Whatsapp as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!active.created, "the send created it");
    let conversation = active.conversation.unwrap();
    assert_eq!(conversation.id, message.conversation_id);
    assert_eq!(conversation.message_count, 1);
    assert_eq!(conversation.status(), pb::ConversationStatus::Active);
}

#[tokio::test]
async fn telegram_text_is_sent_to_the_users_chat() {
    let (mut app, fake) = setup().await;
    let user = app.new_user().await;
    let chat_id = user.telegram_user_id.unwrap();

    let response = app
        .client
        .send_message(text_to(&user.id, pb::Channel::Telegram, "Buenos días"))
        .await
        .expect("sent")
        .into_inner();

    let requests = fake.telegram.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].path,
        format!("/bot{TELEGRAM_BOT_TOKEN}/sendMessage")
    );
    assert_eq!(
        requests[0].body,
        json!({"chat_id": chat_id, "text": "Buenos días"})
    );
    assert!(fake.whatsapp.requests().is_empty());

    let message = response.message.unwrap();
    assert_eq!(response.provider_message_id, format!("{chat_id}:1"));
    assert_eq!(message.provider_message_id, response.provider_message_id);
    assert_eq!(message.channel(), pb::Channel::Telegram);
    assert_eq!(message.delivery_status(), pb::DeliveryStatus::Sent);
    assert!(message.sent_time.is_some());
    assert!(
        !message.proactive,
        "Telegram has no window: proactive is the caller's"
    );
}

#[tokio::test]
async fn a_reply_carries_the_providers_reference_to_the_message() {
    let (mut app, fake) = setup().await;
    let user = app.new_user().await;
    let conversation = app.conversation(&user.id, pb::Channel::Whatsapp).await;
    let inbound_wamid = wamid();
    let inbound = app
        .inbound(&conversation.id, "¿me recuerdas?", &inbound_wamid)
        .await;
    let inbound_id = inbound.message.unwrap().id;

    let request = pb::SendMessageRequest {
        target: Some(Target::ConversationId(conversation.id.clone())),
        content: Some(Content::Text("Claro".into())),
        reply_to_message_id: inbound_id.clone(),
        role: pb::MessageRole::System as i32,
        ..Default::default()
    };
    let message = app
        .client
        .send_message(request)
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(message.reply_to_message_id, inbound_id);
    assert_eq!(message.reply_to_provider_message_id, inbound_wamid);
    assert_eq!(message.role(), pb::MessageRole::System);
    assert_eq!(
        fake.whatsapp.requests()[0].body["context"],
        json!({"message_id": inbound_wamid})
    );

    let unknown = pb::SendMessageRequest {
        target: Some(Target::ConversationId(conversation.id.clone())),
        content: Some(Content::Text("Claro".into())),
        reply_to_message_id: uuid::Uuid::now_v7().to_string(),
        ..Default::default()
    };
    let status = app.client.send_message(unknown).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        status.message().contains("reply_to_message_id"),
        "{status:?}"
    );
    assert_eq!(fake.whatsapp.requests().len(), 1);
}

/// On Telegram the reference is the message id within the recipient's chat:
/// a message of another chat, or of another channel, is named in the stored
/// reply but not sent to the provider.
#[tokio::test]
async fn a_telegram_reply_refers_to_the_message_only_within_the_users_chat() {
    let (mut app, fake) = setup().await;
    let user = app.new_user().await;
    let chat_id = user.telegram_user_id.unwrap();
    let telegram = app.conversation(&user.id, pb::Channel::Telegram).await;
    let whatsapp = app.conversation(&user.id, pb::Channel::Whatsapp).await;
    let in_chat = format!("{chat_id}:77");
    let in_other_chat = format!("{}:78", chat_id + 1);
    let whatsapp_wamid = wamid();
    let mut ids = Vec::new();
    for (conversation, provider_id) in [
        (&telegram.id, &in_chat),
        (&telegram.id, &in_other_chat),
        (&whatsapp.id, &whatsapp_wamid),
    ] {
        let inbound = app.inbound(conversation, "¿y entonces?", provider_id).await;
        ids.push(inbound.message.unwrap().id);
    }

    let reply_to = |id: &str| {
        let request = pb::SendMessageRequest {
            target: Some(Target::ConversationId(telegram.id.clone())),
            content: Some(Content::Text("Claro".into())),
            reply_to_message_id: id.into(),
            ..Default::default()
        };
        let mut client = app.client.clone();
        async move { client.send_message(request).await.unwrap().into_inner() }
    };
    let sent = [
        reply_to(&ids[0]).await,
        reply_to(&ids[1]).await,
        reply_to(&ids[2]).await,
    ];
    let stored: Vec<_> = sent
        .iter()
        .map(|s| {
            let message = s.message.as_ref().unwrap();
            (
                message.reply_to_message_id.as_str(),
                message.reply_to_provider_message_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        stored,
        [
            (ids[0].as_str(), in_chat.as_str()),
            (ids[1].as_str(), in_other_chat.as_str()),
            // Another channel's id means nothing to Telegram.
            (ids[2].as_str(), ""),
        ]
    );
    let requests = fake.telegram.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(
        requests[0].body["reply_parameters"],
        json!({"message_id": 77, "allow_sending_without_reply": true})
    );
    for request in &requests[1..] {
        assert_eq!(
            request.body,
            json!({"chat_id": chat_id, "text": "Claro"}),
            "no reference outside the user's chat"
        );
    }
    assert!(fake.whatsapp.requests().is_empty());
}

#[tokio::test]
async fn sequence_numbers_interleave_with_inbound_messages() {
    let (mut app, _fake) = setup().await;
    let (user, conversation) = user_in_window(&mut app).await;
    app.client
        .send_message(text_to(&user.id, pb::Channel::Whatsapp, "respuesta 1"))
        .await
        .unwrap();
    app.inbound(&conversation.id, "otra", &wamid()).await;
    app.client
        .send_message(pb::SendMessageRequest {
            target: Some(Target::ConversationId(conversation.id.clone())),
            content: Some(Content::Text("respuesta 2".into())),
            ..Default::default()
        })
        .await
        .unwrap();

    let messages = app
        .client
        .list_messages(pb::ListMessagesRequest {
            conversation_id: conversation.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    let seen: Vec<_> = messages
        .iter()
        .map(|m| (m.sequence_number, m.direction(), m.content.as_str()))
        .collect();
    use pb::MessageDirection::{Inbound, Outbound};
    assert_eq!(
        seen,
        [
            (1, Inbound, "hola"),
            (2, Outbound, "respuesta 1"),
            (3, Inbound, "otra"),
            (4, Outbound, "respuesta 2"),
        ]
    );
}

#[tokio::test]
async fn a_pair_rate_limit_is_resource_exhausted_with_retry_info_and_a_retryable_failed_row() {
    let (mut app, fake) = setup().await;
    let (user, _) = user_in_window(&mut app).await;
    fake.whatsapp.script([WaReply::pair_rate_limit()]);

    let status = app
        .client
        .send_message(text_to(&user.id, pb::Channel::Whatsapp, "hola"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("131056"), "{status:?}");
    assert_eq!(retry_delay(&status), Duration::from_secs(6));

    let stored = outbound(&app).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].delivery_status.as_deref(), Some("failed"));
    assert_eq!(stored[0].error_code.as_deref(), Some("131056"));
    assert!(
        stored[0]
            .error_title
            .as_deref()
            .unwrap()
            .contains("pair rate limit hit")
    );
    assert!(stored[0].send_retryable);
    assert_eq!(stored[0].provider_message_id, None);
    assert_eq!(fake.whatsapp.requests().len(), 1);
}

#[tokio::test]
async fn a_throughput_rate_limit_is_resource_exhausted() {
    let (mut app, fake) = setup().await;
    let (user, _) = user_in_window(&mut app).await;
    fake.whatsapp.script([WaReply::rate_limit()]);
    let status = app
        .client
        .send_message(text_to(&user.id, pb::Channel::Whatsapp, "hola"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("130429"), "{status:?}");
    assert_eq!(retry_delay(&status), Duration::from_secs(1));
    assert_eq!(
        outbound(&app).await[0].error_code.as_deref(),
        Some("130429")
    );
}

#[tokio::test]
async fn telegram_too_many_requests_carries_its_retry_after() {
    let (mut app, fake) = setup().await;
    let user = app.new_user().await;
    fake.telegram.script([TgReply::too_many_requests(17)]);

    let status = app
        .client
        .send_message(text_to(&user.id, pb::Channel::Telegram, "hola"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(retry_delay(&status), Duration::from_secs(17));
    let stored = outbound(&app).await;
    assert_eq!(stored[0].error_code.as_deref(), Some("429"));
    assert!(stored[0].send_retryable);
}

#[tokio::test]
async fn a_provider_outage_is_unavailable_and_retryable() {
    let (mut app, fake) = setup().await;
    let (user, _) = user_in_window(&mut app).await;
    fake.whatsapp
        .script([WaReply::outage(), WaReply::Bare(503)]);

    for expected_code in ["131000", "503"] {
        let status = app
            .client
            .send_message(text_to(&user.id, pb::Channel::Whatsapp, "hola"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains(expected_code), "{status:?}");
    }
    let stored = outbound(&app).await;
    let codes: Vec<_> = stored
        .iter()
        .map(|s| s.error_code.as_deref().unwrap())
        .collect();
    assert_eq!(codes, ["131000", "503"]);
    assert!(
        stored
            .iter()
            .all(|s| s.send_retryable && s.delivery_status.as_deref() == Some("failed"))
    );

    let user = app.new_user().await;
    fake.telegram
        .script([TgReply::outage(), TgReply::Bare(503)]);
    for expected_code in ["500", "503"] {
        let status = app
            .client
            .send_message(text_to(&user.id, pb::Channel::Telegram, "hola"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains(expected_code), "{status:?}");
        assert!(status.message().contains("was not sent"), "{status:?}");
    }
    let stored = outbound(&app).await;
    assert_eq!(stored.len(), 4);
    assert!(stored.iter().all(|s| s.send_retryable));
}

#[tokio::test]
async fn a_proxys_bare_server_error_is_an_unknown_outcome_never_sent_again() {
    let (mut app, fake) = setup().await;
    let (user, _) = user_in_window(&mut app).await;
    // A 502 from a proxy in front of the API may come after the API took it.
    fake.whatsapp.script([WaReply::Bare(502)]);
    fake.telegram.script([TgReply::Bare(504)]);
    let requests = [
        with_request_id(text_to(&user.id, pb::Channel::Whatsapp, "hola"), "proxy-1"),
        with_request_id(text_to(&user.id, pb::Channel::Telegram, "hola"), "proxy-2"),
    ];

    for (request, status_code) in requests.iter().zip(["502", "504"]) {
        let status = app.client.send_message(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains(status_code), "{status:?}");
        assert!(status.message().contains("unknown_outcome"), "{status:?}");
        assert!(
            status.message().contains("may have been sent"),
            "{status:?}"
        );
        let again = app.client.send_message(request.clone()).await.unwrap_err();
        assert_eq!(again.code(), Code::Unavailable, "{again:?}");
        assert_eq!(again.message(), status.message());
    }
    assert_eq!(fake.whatsapp.requests().len(), 1, "never sent twice");
    assert_eq!(fake.telegram.requests().len(), 1, "never sent twice");
    let stored = outbound(&app).await;
    assert_eq!(stored.len(), 2);
    for row in &stored {
        assert_eq!(row.delivery_status.as_deref(), Some("failed"));
        assert_eq!(row.error_code.as_deref(), Some("unknown_outcome"));
        assert!(!row.send_retryable);
    }
}

#[tokio::test]
async fn an_unreachable_provider_is_unavailable_and_retryable() {
    // The harness's default provider address refuses connections.
    let mut app = harness::spawn_app().await;
    let user = app.new_user().await;
    let status = app
        .client
        .send_message(text_to(&user.id, pb::Channel::Telegram, "hola"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        !status.message().contains(TELEGRAM_BOT_TOKEN),
        "the token never leaks: {status:?}"
    );
    let stored = outbound(&app).await;
    assert_eq!(stored[0].error_code.as_deref(), Some("unreachable"));
    assert!(stored[0].send_retryable);
}

#[tokio::test]
async fn a_permanent_refusal_is_failed_precondition_with_the_providers_code() {
    let (mut app, fake) = setup().await;
    let (user, _) = user_in_window(&mut app).await;
    fake.whatsapp
        .script([WaReply::re_engagement(), WaReply::undeliverable()]);

    for (code, title) in [
        ("131047", "Re-engagement message"),
        ("131026", "Message undeliverable"),
    ] {
        let status = app
            .client
            .send_message(text_to(&user.id, pb::Channel::Whatsapp, "hola"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains(code), "{status:?}");
        assert!(status.message().contains(title), "{status:?}");
    }
    let stored = outbound(&app).await;
    assert_eq!(stored.len(), 2);
    for (row, code) in stored.iter().zip(["131047", "131026"]) {
        assert_eq!(row.delivery_status.as_deref(), Some("failed"));
        assert_eq!(row.error_code.as_deref(), Some(code));
        assert!(!row.send_retryable);
    }
    // The message reads back failed with the provider's code.
    let message = app
        .client
        .get_message(pb::GetMessageRequest {
            message_id: stored[0].id.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(message.delivery_status(), pb::DeliveryStatus::Failed);
    assert_eq!(message.error_code, "131047");
    assert!(message.error_title.contains("Re-engagement message"));
    assert!(message.failed_time.is_some());
}

#[tokio::test]
async fn a_blocked_telegram_bot_is_failed_precondition() {
    let (mut app, fake) = setup().await;
    let user = app.new_user().await;
    fake.telegram.script([TgReply::bot_blocked()]);
    let status = app
        .client
        .send_message(text_to(&user.id, pb::Channel::Telegram, "hola"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("403"), "{status:?}");
    assert!(
        status.message().contains("bot was blocked by the user"),
        "{status:?}"
    );
    let stored = outbound(&app).await;
    assert_eq!(stored[0].error_code.as_deref(), Some("403"));
    assert!(!stored[0].send_retryable);
}

#[tokio::test]
async fn a_provider_that_answers_too_late_leaves_an_unknown_outcome_never_sent_again() {
    let (mut app, fake) = setup_with(|c| c.provider_timeout = Duration::from_secs(1)).await;
    let (user, _) = user_in_window(&mut app).await;
    fake.whatsapp
        .script([WaReply::AcceptAfter(Duration::from_secs(3))]);
    let request = with_request_id(text_to(&user.id, pb::Channel::Whatsapp, "hola"), "late-1");

    let status = app.client.send_message(request.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("may have been sent"),
        "{status:?}"
    );
    let stored = outbound(&app).await;
    assert_eq!(stored[0].delivery_status.as_deref(), Some("failed"));
    assert_eq!(stored[0].error_code.as_deref(), Some("unknown_outcome"));
    assert!(
        stored[0]
            .error_title
            .as_deref()
            .unwrap()
            .contains("may have been sent")
    );
    assert!(!stored[0].send_retryable);

    let again = app.client.send_message(request).await.unwrap_err();
    assert_eq!(again.code(), Code::Unavailable, "{again:?}");
    assert!(again.message().contains("may have been sent"), "{again:?}");
    assert_eq!(fake.whatsapp.requests().len(), 1, "never sent twice");
    assert_eq!(outbound(&app).await.len(), 1);
}

#[tokio::test]
async fn a_retry_after_success_returns_the_first_answer_without_sending_again() {
    let (mut app, fake) = setup().await;
    let (user, _) = user_in_window(&mut app).await;
    let request = with_request_id(text_to(&user.id, pb::Channel::Whatsapp, "hola"), "once-1");

    let first = app
        .client
        .send_message(request.clone())
        .await
        .unwrap()
        .into_inner();
    let second = app.client.send_message(request).await.unwrap().into_inner();
    assert_eq!(second, first);
    assert_eq!(fake.whatsapp.requests().len(), 1);
    assert_eq!(outbound(&app).await.len(), 1);
}

#[tokio::test]
async fn concurrent_retries_send_once() {
    let (mut app, fake) = setup().await;
    let (user, conversation) = user_in_window(&mut app).await;
    // Slow enough that the twins arrive while the first is in flight.
    fake.whatsapp
        .script([WaReply::AcceptAfter(Duration::from_millis(500))]);
    let request = with_request_id(text_to(&user.id, pb::Channel::Whatsapp, "hola"), "burst-1");

    // The twins find no message with the request_id and queue on the
    // conversation, so that all but the first lose the insert to it.
    let held = app.hold_conversation(&conversation.id).await;
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let mut client = app.client.clone();
            let request = request.clone();
            tokio::spawn(async move { client.send_message(request).await })
        })
        .collect();
    app.wait_for_lock_waiters(3).await;
    held.release().await;
    let answers: Vec<_> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().expect("every twin gets the answer").into_inner())
        .collect();
    assert!(
        answers
            .iter()
            .all(|a| a.message.as_ref().unwrap().id == answers[0].message.as_ref().unwrap().id)
    );
    assert!(
        answers
            .iter()
            .all(|a| a.provider_message_id == answers[0].provider_message_id)
    );
    assert!(!answers[0].provider_message_id.is_empty());
    assert_eq!(fake.whatsapp.requests().len(), 1, "one provider request");
    assert_eq!(outbound(&app).await.len(), 1, "one message");
    let mut conn = app.db.admin_connection().await;
    let count: i64 = sqlx::query_scalar(
        "SELECT message_count FROM conversations.conversations WHERE id = $1::uuid",
    )
    .bind(&conversation.id)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(count, 2, "the twins gave their sequence numbers back");
}

#[tokio::test]
async fn concurrent_twins_of_a_rate_limited_send_hear_the_same_answer() {
    let (mut app, fake) = setup().await;
    let (user, _) = user_in_window(&mut app).await;
    // Slow, so that every twin arrives while the first is in flight.
    fake.whatsapp.script([WaReply::Delayed(
        Duration::from_millis(500),
        Box::new(WaReply::pair_rate_limit()),
    )]);
    let request = with_request_id(text_to(&user.id, pb::Channel::Whatsapp, "hola"), "burst-2");
    let calls = (0..6).map(|_| {
        let mut client = app.client.clone();
        let request = request.clone();
        tokio::spawn(async move { client.send_message(request).await })
    });
    for result in futures::future::join_all(calls).await {
        let status = result.unwrap().expect_err("rate limited");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(retry_delay(&status), Duration::from_secs(6));
    }
    assert_eq!(
        fake.whatsapp.requests().len(),
        1,
        "the twins did not try again"
    );
    let stored = outbound(&app).await;
    assert_eq!(stored.len(), 1, "one message");
    assert!(stored[0].send_retryable, "a later retry may");
}

#[tokio::test]
async fn a_retry_after_a_rate_limit_sends_again_on_the_same_message() {
    let (mut app, fake) = setup().await;
    let (user, conversation) = user_in_window(&mut app).await;
    fake.whatsapp.script([WaReply::pair_rate_limit()]);
    let request = with_request_id(text_to(&user.id, pb::Channel::Whatsapp, "hola"), "again-1");

    let status = app.client.send_message(request.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let failed = outbound(&app).await;

    let response = app
        .client
        .send_message(request.clone())
        .await
        .expect("sent this time")
        .into_inner();
    let message = response.message.unwrap();
    assert_eq!(message.id, failed[0].id.to_string(), "the same message");
    assert_eq!(message.sequence_number, 2);
    assert_eq!(message.delivery_status(), pb::DeliveryStatus::Accepted);
    assert_eq!(message.error_code, "");
    assert_eq!(message.conversation_id, conversation.id);

    let requests = fake.whatsapp.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].body, requests[1].body);
    let stored = outbound(&app).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].delivery_status.as_deref(), Some("accepted"));
    assert_eq!(stored[0].sequence_number, 2, "no new sequence number");
    assert!(!stored[0].send_retryable);

    // And now it is done: a third call is answered, not sent.
    let third = app.client.send_message(request).await.unwrap().into_inner();
    assert_eq!(third.provider_message_id, response.provider_message_id);
    assert_eq!(fake.whatsapp.requests().len(), 2);
}

#[tokio::test]
async fn a_retry_after_a_permanent_refusal_repeats_the_refusal_without_sending() {
    let (mut app, fake) = setup().await;
    let user = app.new_user().await;
    fake.telegram.script([TgReply::bot_blocked()]);
    let request = with_request_id(
        text_to(&user.id, pb::Channel::Telegram, "hola"),
        "blocked-1",
    );

    let first = app.client.send_message(request.clone()).await.unwrap_err();
    let second = app.client.send_message(request).await.unwrap_err();
    assert_eq!(first.code(), Code::FailedPrecondition);
    assert_eq!(second.code(), first.code());
    assert_eq!(second.message(), first.message());
    assert_eq!(fake.telegram.requests().len(), 1);
}

#[tokio::test]
async fn a_reused_request_id_with_a_different_request_is_invalid_argument() {
    let (mut app, fake) = setup().await;
    let (user, _) = user_in_window(&mut app).await;
    app.client
        .send_message(with_request_id(
            text_to(&user.id, pb::Channel::Whatsapp, "hola"),
            "reused-1",
        ))
        .await
        .unwrap();
    let status = app
        .client
        .send_message(with_request_id(
            text_to(&user.id, pb::Channel::Whatsapp, "adiós"),
            "reused-1",
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["request_id"]);
    assert!(
        status
            .message()
            .contains("already used for a different request"),
        "{status:?}"
    );
    assert_eq!(fake.whatsapp.requests().len(), 1);
    assert_eq!(outbound(&app).await.len(), 1);
}

#[tokio::test]
async fn a_client_that_goes_away_does_not_leave_the_message_pending() {
    let (mut app, fake) = setup().await;
    let (user, _) = user_in_window(&mut app).await;
    fake.whatsapp
        .script([WaReply::AcceptAfter(Duration::from_millis(1500))]);
    let request = with_request_id(text_to(&user.id, pb::Channel::Whatsapp, "hola"), "gone-1");

    let gave_up = tokio::time::timeout(
        Duration::from_millis(400),
        app.client.send_message(request.clone()),
    )
    .await;
    assert!(gave_up.is_err(), "the client gave up first");

    let mut status = None;
    for _ in 0..100 {
        let stored = outbound(&app).await;
        status = stored.first().and_then(|s| s.delivery_status.clone());
        if status.as_deref() == Some("accepted") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status.as_deref(), Some("accepted"));
    let retry = app.client.send_message(request).await.unwrap().into_inner();
    assert!(retry.provider_message_id.starts_with("wamid."));
    assert_eq!(fake.whatsapp.requests().len(), 1);
}

#[tokio::test]
async fn a_send_lost_in_flight_is_declared_unknown_by_a_retry() {
    let (mut app, fake) = setup_with(|c| c.provider_timeout = Duration::from_secs(1)).await;
    let (user, _) = user_in_window(&mut app).await;
    let request = with_request_id(text_to(&user.id, pb::Channel::Whatsapp, "hola"), "lost-1");
    app.client.send_message(request.clone()).await.unwrap();
    // As if the process had died between the provider's answer and Tx2.
    let mut conn = app.db.admin_connection().await;
    sqlx::query(
        "UPDATE conversations.messages SET delivery_status = 'pending', provider_message_id = NULL
         WHERE send_request_id = 'lost-1'",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let status = app.client.send_message(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("may have been sent"),
        "{status:?}"
    );
    let stored = outbound(&app).await;
    assert_eq!(stored[0].error_code.as_deref(), Some("unknown_outcome"));
    assert_eq!(fake.whatsapp.requests().len(), 1, "not sent again");
}

/// Holds the lock the sender's Tx2 takes on `provider_id` before storing
/// it, so that recording the provider's acceptance waits until [`unlock`].
async fn lock_provider_id(app: &TestApp, provider_id: &str) -> sqlx::PgConnection {
    let mut conn = app.db.admin_connection().await;
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
        .bind(format!("whatsapp:{provider_id}"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

async fn unlock(mut conn: sqlx::PgConnection) {
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut conn)
        .await
        .unwrap();
}

/// Waits until the fake WhatsApp API has received `n` requests.
async fn until_received(fake: &Providers, n: usize) {
    for _ in 0..200 {
        if fake.whatsapp.requests().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the provider never received {n} requests");
}

#[tokio::test]
async fn a_retry_waits_for_a_sender_slow_to_record_the_acceptance() {
    let (mut app, fake) = setup_with(|c| c.provider_timeout = Duration::from_secs(1)).await;
    let (user, _) = user_in_window(&mut app).await;
    let id = wamid();
    fake.whatsapp.script([WaReply::AcceptAs(id.clone())]);
    let lock = lock_provider_id(&app, &id).await;
    let request = with_request_id(text_to(&user.id, pb::Channel::Whatsapp, "hola"), "slow-1");
    let call = |request: pb::SendMessageRequest| {
        let mut client = app.client.clone();
        tokio::spawn(async move { client.send_message(request).await })
    };

    let first = call(request.clone());
    until_received(&fake, 1).await;
    let retry = call(request.clone());
    // Past provider timeout + 2 s, when a retry used to declare it lost.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!retry.is_finished(), "the retry still waits");
    unlock(lock).await;

    let first = first.await.unwrap().expect("accepted").into_inner();
    let retry = retry.await.unwrap().expect("the same answer").into_inner();
    assert_eq!(first.provider_message_id, id);
    assert_eq!(retry.provider_message_id, id);
    assert_eq!(fake.whatsapp.requests().len(), 1, "sent once");
    let stored = outbound(&app).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].delivery_status.as_deref(), Some("accepted"));
    assert_eq!(stored[0].error_code, None);
}

#[tokio::test]
async fn a_late_acceptance_corrects_a_send_declared_lost() {
    let (mut app, fake) = setup().await;
    let (user, _) = user_in_window(&mut app).await;
    let id = wamid();
    fake.whatsapp.script([WaReply::AcceptAs(id.clone())]);
    let lock = lock_provider_id(&app, &id).await;
    let request = with_request_id(text_to(&user.id, pb::Channel::Whatsapp, "hola"), "late-2");
    let first = {
        let mut client = app.client.clone();
        let request = request.clone();
        tokio::spawn(async move { client.send_message(request).await })
    };
    until_received(&fake, 1).await;
    // As a retry that ran out of patience leaves it.
    let mut conn = app.db.admin_connection().await;
    sqlx::query(
        "UPDATE conversations.messages SET delivery_status = 'failed', failed_time = now(),
            error_code = 'unknown_outcome', send_retryable = false,
            error_title = 'the send in flight never recorded its outcome: the message may have been sent'
         WHERE send_request_id = 'late-2'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let status = app.client.send_message(request.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("unknown_outcome"), "{status:?}");

    unlock(lock).await;
    let first = first
        .await
        .unwrap()
        .expect("the provider's answer is the truth")
        .into_inner();
    assert_eq!(first.provider_message_id, id);
    let stored = outbound(&app).await;
    assert_eq!(stored[0].delivery_status.as_deref(), Some("accepted"));
    assert_eq!(stored[0].provider_message_id.as_deref(), Some(id.as_str()));
    assert_eq!(stored[0].error_code, None);
    let again = app.client.send_message(request).await.unwrap().into_inner();
    assert_eq!(again.provider_message_id, id);
    assert_eq!(fake.whatsapp.requests().len(), 1, "never sent twice");
}

#[tokio::test]
async fn statuses_that_arrived_first_are_applied_when_the_id_is_stored() {
    let (mut app, fake) = setup().await;
    let (user, _) = user_in_window(&mut app).await;
    let id = wamid();
    let deferred = app
        .client
        .update_delivery_status(pb::UpdateDeliveryStatusRequest {
            channel: pb::Channel::Whatsapp as i32,
            provider_message_id: id.clone(),
            status: pb::DeliveryStatus::Delivered as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deferred.deferred);
    fake.whatsapp.script([WaReply::AcceptAs(id.clone())]);

    let response = app
        .client
        .send_message(text_to(&user.id, pb::Channel::Whatsapp, "hola"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.provider_message_id, id);
    let message = response.message.unwrap();
    assert_eq!(message.delivery_status(), pb::DeliveryStatus::Delivered);
    assert!(message.delivered_time.is_some());
}

#[tokio::test]
async fn an_unknown_user_is_not_found_and_nothing_is_recorded() {
    let (mut app, fake) = setup().await;
    let nobody = uuid::Uuid::now_v7().to_string();
    let status = app
        .client
        .send_message(template_to(&nobody))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("no user"), "{status:?}");
    assert!(fake.whatsapp.requests().is_empty());
    assert_eq!(app.count("conversations").await, 0);
    assert_eq!(app.count("messages").await, 0);
}

#[tokio::test]
async fn an_unreachable_users_service_is_unavailable_and_nothing_is_recorded() {
    let (mut app, fake) = setup_with(|c| c.users_url = "http://127.0.0.1:9".into()).await;
    let user = app.new_user().await;
    let status = app
        .client
        .send_message(template_to(&user.id))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("users service"), "{status:?}");
    assert!(fake.whatsapp.requests().is_empty());
    assert_eq!(app.count("conversations").await, 0);
    assert_eq!(app.count("messages").await, 0);
}

#[tokio::test]
async fn a_deactivated_user_is_failed_precondition_and_nothing_is_sent_or_recorded() {
    let (mut app, fake) = setup().await;
    let (user, _conversation) = user_in_window(&mut app).await;
    app.users
        .deactivate_user(users_pb::DeactivateUserRequest {
            user_id: user.id.clone(),
        })
        .await
        .expect("deactivated");
    for request in [
        template_to(&user.id),
        text_to(&user.id, pb::Channel::Telegram, "hola"),
    ] {
        let status = app.client.send_message(request).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("deactivated"), "{status:?}");
    }
    assert!(fake.whatsapp.requests().is_empty() && fake.telegram.requests().is_empty());
    assert!(outbound(&app).await.is_empty());
    assert_eq!(app.count("conversations").await, 1, "only the inbound one");
}

#[tokio::test]
async fn a_user_without_an_address_on_the_channel_is_failed_precondition() {
    let (mut app, fake) = setup().await;
    let telegram_only = app
        .users
        .create_user(users_pb::CreateUserRequest {
            user: Some(users_pb::User {
                telegram_user_id: Some(777_000_111),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let status = app
        .client
        .send_message(template_to(&telegram_only.id))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("no phone number"), "{status:?}");

    let phone_only = app
        .users
        .create_user(users_pb::CreateUserRequest {
            user: Some(users_pb::User {
                phone: Some("+573009998877".into()),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let status = app
        .client
        .send_message(text_to(&phone_only.id, pb::Channel::Telegram, "hola"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("Telegram"), "{status:?}");
    assert!(fake.whatsapp.requests().is_empty() && fake.telegram.requests().is_empty());
    assert_eq!(app.count("messages").await, 0);
}

#[tokio::test]
async fn missing_credentials_are_failed_precondition_naming_the_variable() {
    let (mut app, fake) = setup_with(|c| {
        c.whatsapp.access_token = None;
        c.telegram.bot_token = None;
    })
    .await;
    let user = app.new_user().await;
    let status = app
        .client
        .send_message(template_to(&user.id))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("WHATSAPP_ACCESS_TOKEN"),
        "{status:?}"
    );
    let status = app
        .client
        .send_message(text_to(&user.id, pb::Channel::Telegram, "hola"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("TELEGRAM_BOT_TOKEN"),
        "{status:?}"
    );
    assert!(fake.whatsapp.requests().is_empty() && fake.telegram.requests().is_empty());
    assert_eq!(app.count("messages").await, 0);
}

#[tokio::test]
async fn validation_names_every_bad_field_and_changes_nothing() {
    let (mut app, fake) = setup().await;
    let status = app
        .client
        .send_message(pb::SendMessageRequest {
            target: Some(Target::UserId("not-a-uuid".into())),
            channel: pb::Channel::Web as i32,
            content: Some(Content::Text("x".repeat(4097))),
            role: pb::MessageRole::User as i32,
            reply_to_message_id: "nope".into(),
            request_id: "r".repeat(129),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        bad_fields(&status),
        [
            "user_id",
            "channel",
            "text",
            "role",
            "reply_to_message_id",
            "request_id"
        ]
    );

    let status = app
        .client
        .send_message(pb::SendMessageRequest::default())
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["user_id", "text"]);

    let user = app.new_user().await;
    let status = app
        .client
        .send_message(pb::SendMessageRequest {
            target: Some(Target::UserId(user.id.clone())),
            channel: pb::Channel::Telegram as i32,
            content: Some(Content::Template(pb::Template::default())),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        bad_fields(&status),
        ["template.name", "template.language_code", "template"]
    );
    let status = app
        .client
        .send_message(text_to(&user.id, pb::Channel::Unspecified, "hola"))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["channel"]);

    let with_components = |components: Vec<serde_json::Value>| {
        let mut request = template_to(&user.id);
        if let Some(Content::Template(template)) = &mut request.content {
            template.components = components
                .iter()
                .map(mesh_runtime::convert::json_to_struct)
                .collect();
        }
        request
    };
    let body = |text: &str| json!({"type": "body", "parameters": [{"type": "text", "text": text}]});
    let status = app
        .client
        .send_message(with_components(vec![body("Ana"), body("a\u{0}b")]))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["template.components[1]"]);
    assert!(status.message().contains("NUL"), "{status:?}");
    let status = app
        .client
        .send_message(with_components(vec![body("Ana"); 21]))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["template.components"]);
    let status = app
        .client
        .send_message(with_components(vec![body(&"x".repeat(20_000)); 4]))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["template.components"]);
    assert!(status.message().contains("64 KiB"), "{status:?}");

    assert!(fake.whatsapp.requests().is_empty() && fake.telegram.requests().is_empty());
    assert_eq!(app.count("conversations").await, 0);
    assert_eq!(app.count("messages").await, 0);
}

#[tokio::test]
async fn conversations_that_cannot_be_sent_in_are_refused() {
    let (mut app, fake) = setup().await;
    let user = app.new_user().await;
    let by_conversation = |id: &str, content: Content| pb::SendMessageRequest {
        target: Some(Target::ConversationId(id.into())),
        content: Some(content),
        ..Default::default()
    };
    let text = || Content::Text("hola".into());

    let missing = app
        .client
        .send_message(by_conversation(&uuid::Uuid::now_v7().to_string(), text()))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    let telegram = app.conversation(&user.id, pb::Channel::Telegram).await;
    let template = app
        .client
        .send_message(by_conversation(
            &telegram.id,
            Content::Template(pb::Template {
                name: "daily_checkin".into(),
                language_code: "es".into(),
                components: vec![],
            }),
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&template), ["template"]);

    let web = app.conversation(&user.id, pb::Channel::Web).await;
    let status = app
        .client
        .send_message(by_conversation(&web.id, text()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("no provider"), "{status:?}");

    app.client
        .close_conversation(pb::CloseConversationRequest {
            conversation_id: telegram.id.clone(),
        })
        .await
        .unwrap();
    let status = app
        .client
        .send_message(by_conversation(&telegram.id, text()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("closed"), "{status:?}");

    assert!(fake.whatsapp.requests().is_empty() && fake.telegram.requests().is_empty());
    assert_eq!(app.count("messages").await, 0);
}
