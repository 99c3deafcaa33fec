//! Updates in the shapes the Bot API documents.

use serde_json::json;

use super::*;

const FROM: &str = r#"{"id": 4503599627370495, "is_bot": false, "first_name": "Ana", "username": "ana_b", "language_code": "pt-br"}"#;

fn update(body: serde_json::Value) -> Update {
    parse(body.to_string().as_bytes()).expect("parses")
}

fn from() -> serde_json::Value {
    serde_json::from_str(FROM).expect("valid")
}

#[test]
fn text_message_with_big_ids() {
    let u = update(
        json!({"update_id": 900_000_001, "message": {"message_id": 17, "from": from(),
        "chat": {"id": -1_001_234_567_890_i64, "type": "supergroup", "title": "t"},
        "date": 1_700_000_000, "text": "olá 👋", "reply_to_message": {"message_id": 16,
            "chat": {"id": 1, "type": "private"}, "date": 1}}}),
    );
    assert_eq!(u.update_id, 900_000_001);
    let UpdateKind::Message(m) = u.kind else {
        panic!("not a message: {u:?}")
    };
    let f = m.from.expect("from");
    assert_eq!(f.id, 4_503_599_627_370_495, "52-bit id kept");
    assert_eq!(
        (f.username.as_deref(), f.language_code.as_deref(), f.is_bot),
        (Some("ana_b"), Some("pt-br"), false)
    );
    assert_eq!(
        (m.chat.id, m.chat.kind.as_str()),
        (-1_001_234_567_890, "supergroup")
    );
    assert_eq!((m.date, m.text.as_deref()), (1_700_000_000, Some("olá 👋")));
    assert_eq!((m.media, m.reply_to_message_id), (None, Some(16)));
}

#[test]
fn edited_message_and_media() {
    let u = update(
        json!({"update_id": 2, "edited_message": {"message_id": 5, "from": from(),
        "chat": {"id": 4, "type": "private"}, "date": 3, "edit_date": 4, "caption": "look",
        "photo": [{"file_id": "a", "file_unique_id": "b", "width": 90, "height": 90}]}}),
    );
    let UpdateKind::EditedMessage(m) = u.kind else {
        panic!("not edited: {u:?}")
    };
    assert_eq!(
        (m.media, m.caption.as_deref()),
        (Some(MediaKind::Photo), Some("look"))
    );

    let u = update(
        json!({"update_id": 3, "message": {"message_id": 6, "chat": {"id": 4, "type": "private"},
        "date": 3, "location": {"latitude": 38.7, "longitude": -9.1}}}),
    );
    let UpdateKind::Message(m) = u.kind else {
        panic!("not a message")
    };
    assert_eq!(m.media, Some(MediaKind::Location));
    assert_eq!(
        m.location,
        Some(Location {
            latitude: 38.7,
            longitude: -9.1
        })
    );
    assert_eq!(m.from, None);

    for (key, kind) in [
        ("voice", MediaKind::Voice),
        ("sticker", MediaKind::Sticker),
        ("document", MediaKind::Document),
        ("contact", MediaKind::Contact),
    ] {
        let mut msg = json!({"message_id": 1, "chat": {"id": 1, "type": "private"}, "date": 1});
        msg[key] = json!({"file_id": "x"});
        let UpdateKind::Message(m) = update(json!({"update_id": 1, "message": msg})).kind else {
            panic!()
        };
        assert_eq!(m.media, Some(kind), "{key}");
    }
}

#[test]
fn callback_query() {
    let u = update(
        json!({"update_id": 4, "callback_query": {"id": "4382bfdwdsb323b2d9", "from": from(),
        "chat_instance": "-1", "data": "plan:pro", "message": {"message_id": 77,
            "chat": {"id": 555, "type": "private"}, "date": 1, "text": "pick"}}}),
    );
    let UpdateKind::CallbackQuery(q) = u.kind else {
        panic!("not a callback")
    };
    assert_eq!(q.id, "4382bfdwdsb323b2d9");
    assert_eq!(q.from.first_name, "Ana");
    assert_eq!(
        (q.data.as_deref(), q.chat_id, q.message_id),
        (Some("plan:pro"), Some(555), Some(77))
    );
    // Inline-mode buttons come without a message.
    let u = update(
        json!({"update_id": 5, "callback_query": {"id": "q", "from": from(), "inline_message_id": "i"}}),
    );
    let UpdateKind::CallbackQuery(q) = u.kind else {
        panic!("not a callback")
    };
    assert_eq!((q.chat_id, q.message_id, q.data), (None, None, None));
}

#[test]
fn start_link_message() {
    let u = update(
        json!({"update_id": 6, "message": {"message_id": 1, "from": from(),
        "chat": {"id": 4503599627370495_i64, "type": "private"}, "date": 1, "text": "/start lnk_AbC-123",
        "entities": [{"offset": 0, "length": 6, "type": "bot_command"}]}}),
    );
    let UpdateKind::Message(m) = u.kind else {
        panic!("not a message")
    };
    assert_eq!(
        m.text.as_deref().and_then(start_payload),
        Some("lnk_AbC-123")
    );
}

#[test]
fn start_payload_rules() {
    let max = "a".repeat(64);
    let too_long = format!("/start {}", "a".repeat(65));
    let with_max = format!("/start {max}");
    for (text, want) in [
        ("/start abc", Some("abc")),
        ("/start@mesh_bot abc", Some("abc")),
        ("/start   abc  ", Some("abc")),
        (with_max.as_str(), Some(max.as_str())),
        ("/start", None),
        ("/start ", None),
        ("/startabc", None),
        ("/start@ abc", None),
        ("/start@bot", None),
        ("/start a b", None),
        ("/start ab!c", None),
        ("/start ação", None),
        (too_long.as_str(), None),
        ("hello /start abc", None),
        ("/help abc", None),
    ] {
        assert_eq!(start_payload(text), want, "{text:?}");
    }
}

#[test]
fn other_updates_are_kept_by_kind() {
    let u =
        update(json!({"update_id": 7, "my_chat_member": {"chat": {"id": 1, "type": "private"}}}));
    assert_eq!(
        u.kind,
        UpdateKind::Other {
            kind: "my_chat_member".into()
        }
    );
}

#[test]
fn refusals_are_payload_errors() {
    for raw in [
        &b"{"[..],
        b"\xff\xfe",
        b"42",
        br#"{"message":{}}"#,
        br#"{"update_id":"1","message":{}}"#,
        br#"{"update_id":1}"#,
        br#"{"update_id":1.5,"my_chat_member":{}}"#,
        br#"{"update_id":1,"message":{"message_id":1,"date":1}}"#,
        br#"{"update_id":1,"message":{"message_id":1,"chat":{"id":1,"type":"private"},"date":"1"}}"#,
        br#"{"update_id":1,"message":{"message_id":1,"chat":{"id":1e30,"type":"private"},"date":1}}"#,
        br#"{"update_id":1,"callback_query":{"id":"q"}}"#,
    ] {
        assert!(parse(raw).is_err(), "{:?}", String::from_utf8_lossy(raw));
    }
    assert!(matches!(parse(b"nope"), Err(PayloadError::NotJson(_))));
    assert!(matches!(parse(b"[1]"), Err(PayloadError::Shape(_))));
}

#[test]
fn media_files_and_raw_message_are_kept() {
    let u = update(
        json!({"update_id": 7, "message": {"message_id": 8, "from": from(),
        "chat": {"id": 4, "type": "private"}, "date": 3,
        "photo": [{"file_id": "small", "file_unique_id": "s", "width": 90, "height": 90},
                  {"file_id": "large", "file_unique_id": "l", "width": 800, "height": 800}]}}),
    );
    let UpdateKind::Message(m) = u.kind else {
        panic!("not a message: {u:?}")
    };
    assert_eq!(
        m.file,
        Some(File {
            file_id: "large".into(),
            mime_type: None
        })
    );
    assert_eq!(m.raw["photo"][1]["file_id"], "large");

    let u = update(
        json!({"update_id": 8, "message": {"message_id": 9, "from": from(),
        "chat": {"id": 4, "type": "private"}, "date": 3,
        "voice": {"file_id": "v1", "file_unique_id": "u", "duration": 2, "mime_type": "audio/ogg"}}}),
    );
    let UpdateKind::Message(m) = u.kind else {
        panic!("not a message: {u:?}")
    };
    assert_eq!(
        (m.media, m.file.as_ref().map(|f| f.mime_type.as_deref())),
        (Some(MediaKind::Voice), Some(Some("audio/ogg")))
    );

    // A poll: no text, no media, still the whole object to store.
    let u = update(
        json!({"update_id": 9, "message": {"message_id": 10, "from": from(),
        "chat": {"id": 4, "type": "private"}, "date": 3,
        "poll": {"id": "p", "question": "?", "options": []}}}),
    );
    let UpdateKind::Message(m) = u.kind else {
        panic!("not a message: {u:?}")
    };
    assert_eq!((m.media, m.file), (None, None));
    assert_eq!(m.raw["poll"]["id"], "p");
}
