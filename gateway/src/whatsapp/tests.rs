//! Payloads in the shapes Meta documents (see PROVIDERS.md).

use serde_json::{Value, json};

use super::*;

fn body(changes_values: Vec<Value>) -> Vec<u8> {
    let changes: Vec<Value> = changes_values
        .into_iter()
        .map(|v| json!({"field": "messages", "value": v}))
        .collect();
    json!({"object": OBJECT, "entry": [{"id": "102290129340398", "changes": changes}]})
        .to_string()
        .into_bytes()
}

fn value(messages: Value) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234"}],
        "messages": messages
    })
}

fn one(message: Value) -> InboundMessage {
    let d = parse(&body(vec![value(json!([message]))])).expect("parses");
    assert_eq!(d.messages.len(), 1);
    d.messages.into_iter().next().expect("one message")
}

fn msg(kind: &str, extra: Value) -> Value {
    let mut m = json!({"from": "16505551234", "id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
        "timestamp": "1749416383", "type": kind});
    if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
        m.extend(extra.clone());
    }
    m
}

#[test]
fn text_message() {
    let m = one(msg(
        "text",
        json!({"text": {"body": "Does it come in another color?"}}),
    ));
    assert_eq!(m.kind, MessageKind::Text);
    assert_eq!(m.wa_id, "16505551234");
    assert_eq!(m.profile_name.as_deref(), Some("Sheena Nelson"));
    assert_eq!(m.phone_number_id, "106540352242922");
    assert_eq!(m.timestamp, 1_749_416_383);
    assert_eq!(m.text.as_deref(), Some("Does it come in another color?"));
    assert!(m.id.starts_with("wamid."));
    assert_eq!(m.raw["text"]["body"], "Does it come in another color?");
    assert_eq!(
        (m.media, m.location, m.reply_to, m.referral),
        (None, None, None, None)
    );
}

#[test]
fn multi_entry_multi_message_in_order() {
    let entry = |waba: &str, pn: &str, ids: &[&str]| {
        let msgs: Vec<Value> = ids
            .iter()
            .map(|id| {
                json!({"from": "16505551234", "id": id, "timestamp": "1700000000",
                "type": "text", "text": {"body": format!("body {id}")}})
            })
            .collect();
        let mut v = value(Value::Array(msgs));
        v["metadata"]["phone_number_id"] = json!(pn);
        json!({"id": waba, "changes": [
            {"field": "messages", "value": v},
            {"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}}
        ]})
    };
    let raw = json!({"object": OBJECT, "entry": [
        entry("1", "pn1", &["wamid.a", "wamid.b"]),
        entry("2", "pn2", &["wamid.c"]),
    ]})
    .to_string();
    let d = parse(raw.as_bytes()).expect("parses");
    let got: Vec<(&str, &str, Option<&str>)> = d
        .messages
        .iter()
        .map(|m| (m.phone_number_id.as_str(), m.id.as_str(), m.text.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("pn1", "wamid.a", Some("body wamid.a")),
            ("pn1", "wamid.b", Some("body wamid.b")),
            ("pn2", "wamid.c", Some("body wamid.c")),
        ]
    );
    assert_eq!(d.skipped, 2);
}

#[test]
fn image_with_caption_and_reply_context() {
    let m = one(msg(
        "image",
        json!({
            "context": {"from": "15550783881", "id": "wamid.prev"},
            "image": {"caption": "this one", "mime_type": "image/jpeg",
                "sha256": "j9Sgo2Ee7sx0ia9gKHAkI9fr4U3hlnkqVBZdV4kFbwE=", "id": "1003383421387256"}
        }),
    ));
    assert_eq!(m.kind, MessageKind::Image);
    assert_eq!(m.text.as_deref(), Some("this one"));
    assert_eq!(m.reply_to.as_deref(), Some("wamid.prev"));
    let media = m.media.expect("media");
    assert_eq!(media.id.as_deref(), Some("1003383421387256"));
    assert_eq!(media.mime_type.as_deref(), Some("image/jpeg"));
    assert_eq!(media.caption.as_deref(), Some("this one"));
    assert!(media.sha256.is_some());
}

#[test]
fn interactive_button_and_list_replies() {
    let b = one(msg(
        "interactive",
        json!({"interactive": {"type": "button_reply",
        "button_reply": {"id": "yes-btn", "title": "Yes"}}}),
    ));
    assert_eq!(b.kind, MessageKind::Interactive);
    assert_eq!(
        (b.text.as_deref(), b.reply_payload.as_deref()),
        (Some("Yes"), Some("yes-btn"))
    );
    let l = one(msg(
        "interactive",
        json!({"interactive": {"type": "list_reply",
        "list_reply": {"id": "row-2", "title": "Tuesday", "description": "afternoon"}}}),
    ));
    assert_eq!(
        (l.text.as_deref(), l.reply_payload.as_deref()),
        (Some("Tuesday"), Some("row-2"))
    );
    let t = one(msg(
        "button",
        json!({"button": {"payload": "STOP", "text": "Stop promotions"}}),
    ));
    assert_eq!(t.kind, MessageKind::Button);
    assert_eq!(
        (t.text.as_deref(), t.reply_payload.as_deref()),
        (Some("Stop promotions"), Some("STOP"))
    );
}

#[test]
fn location_and_reaction() {
    let l = one(msg(
        "location",
        json!({"location": {"latitude": 37.483_307, "longitude": -122.148_981,
        "name": "Philz Coffee", "address": "101 Forest Ave, Palo Alto, CA 94301"}}),
    ));
    assert_eq!(l.kind, MessageKind::Location);
    assert_eq!(l.text.as_deref(), Some("Philz Coffee"));
    let loc = l.location.expect("location");
    assert_eq!((loc.latitude, loc.longitude), (37.483_307, -122.148_981));
    assert_eq!(
        loc.address.as_deref(),
        Some("101 Forest Ave, Palo Alto, CA 94301")
    );
    let r = one(msg(
        "reaction",
        json!({"reaction": {"message_id": "wamid.ours", "emoji": "👍"}}),
    ));
    assert_eq!(
        (r.kind, r.text.as_deref()),
        (MessageKind::Reaction, Some("👍"))
    );
}

#[test]
fn unsupported_and_unknown_types_are_kept_with_errors() {
    let u = one(msg(
        "unsupported",
        json!({"errors": [{"code": 131051, "title": "Message type unknown",
        "message": "Message type unknown", "error_data": {"details": "Message type is currently not supported."}}]}),
    ));
    assert_eq!(
        (u.kind, u.wire_type.as_str()),
        (MessageKind::Unknown, "unsupported")
    );
    assert_eq!(u.kind.as_str(), "unknown");
    assert_eq!(
        u.errors,
        [ProviderError {
            code: Some(131051),
            title: Some("Message type unknown".into()),
            message: Some("Message type unknown".into()),
            details: Some("Message type is currently not supported.".into()),
        }]
    );
    let future = one(msg("hologram", json!({"hologram": {"depth": 3}})));
    assert_eq!((future.kind, future.text), (MessageKind::Unknown, None));
    assert_eq!(future.raw["hologram"]["depth"], 3);
    // A known type with an odd sub-object is kept, not a 400 for the batch.
    let odd = one(msg("image", json!({"image": "not an object"})));
    assert_eq!((odd.kind, odd.media), (MessageKind::Image, None));
}

#[test]
fn statuses_including_failed_with_errors_and_pricing() {
    let v = json!({
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "statuses": [
            {"id": "wamid.s1", "status": "delivered", "timestamp": "1750263773", "recipient_id": "16505551234",
             "pricing": {"billable": true, "pricing_model": "PMP", "type": "regular", "category": "marketing"}},
            {"id": "wamid.s2", "status": "failed", "timestamp": "1750263774", "recipient_id": "16505551234",
             "errors": [{"code": 131047, "title": "Re-engagement message", "message": "Re-engagement message",
                "error_data": {"details": "Message failed to send because more than 24 hours have passed"}}]},
            {"id": "wamid.s3", "status": "deleted", "timestamp": "1750263775", "recipient_id": "1"}
        ],
        "errors": [{"code": 130429, "title": "Rate limit hit"}]
    });
    let d = parse(&body(vec![v])).expect("parses");
    assert_eq!(d.statuses.len(), 3);
    let s = &d.statuses;
    assert_eq!(
        (s[0].status.clone(), s[0].timestamp),
        (StatusKind::Delivered, 1_750_263_773)
    );
    let p = s[0].pricing.as_ref().expect("pricing");
    assert_eq!(
        (p.category.as_deref(), p.pricing_type.as_deref(), p.billable),
        (Some("marketing"), Some("regular"), Some(true))
    );
    assert_eq!(s[1].status, StatusKind::Failed);
    assert_eq!(s[1].errors[0].code, Some(131047));
    assert!(
        s[1].errors[0]
            .details
            .as_deref()
            .is_some_and(|d| d.contains("24 hours"))
    );
    assert_eq!(s[2].status, StatusKind::Unknown("deleted".into()));
    assert_eq!(d.errors[0].code, Some(130429));
    assert!(d.messages.is_empty());
}

#[test]
fn referral_opens_the_free_entry_point() {
    let m = one(msg(
        "text",
        json!({"text": {"body": "Hi, is this still available?"},
        "referral": {"source_url": "https://fb.me/3cr4Wqqkv", "source_id": "120226305854810726",
            "source_type": "ad", "headline": "Chat with us", "body": "Spring sale", "media_type": "image",
            "image_url": "https://example.com/i.jpg", "ctwa_clid": "Afe7Xw-rEJq1"}}),
    ));
    let r = m.referral.expect("referral");
    assert_eq!(r.source_type.as_deref(), Some("ad"));
    assert_eq!(r.ctwa_clid.as_deref(), Some("Afe7Xw-rEJq1"));
    assert_eq!(r.headline.as_deref(), Some("Chat with us"));
    assert_eq!(r.source_url.as_deref(), Some("https://fb.me/3cr4Wqqkv"));
}

#[test]
fn non_ascii_text_from_escaped_unicode() {
    // Meta's form: \u escapes, the emoji as a surrogate pair.
    let raw = r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"p"},"contacts":[{"profile":{"name":"Jos\u00e9"},"wa_id":"5511"}],"messages":[{"from":"5511","id":"wamid.u","timestamp":"1","type":"text","text":{"body":"Ol\u00e1 \ud83d\udc4b"}}]}}]}]}"#;
    let m = parse(raw.as_bytes()).expect("parses").messages.remove(0);
    assert_eq!(m.text.as_deref(), Some("Olá 👋"));
    assert_eq!(m.profile_name.as_deref(), Some("José"));
}

#[test]
fn profile_name_only_from_the_matching_contact() {
    let mut m = msg("text", json!({"text": {"body": "x"}}));
    m["from"] = json!("19990000000");
    assert_eq!(one(m).profile_name, None);
}

/// What a refused body's error must look like.
type Expect = fn(&PayloadError) -> bool;

#[test]
fn refusals_are_payload_errors() {
    let cases: [(&[u8], Expect); 7] = [
        (b"not json", |e| matches!(e, PayloadError::NotJson(_))),
        (b"", |e| matches!(e, PayloadError::NotJson(_))),
        (b"[]", |e| matches!(e, PayloadError::Shape(_))),
        (br#"{"entry":[]}"#, |e| matches!(e, PayloadError::Shape(_))),
        (br#"{"object":"page","entry":[]}"#, |e| matches!(e, PayloadError::WrongObject(_))),
        (br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{}}]}]}"#,
            |e| matches!(e, PayloadError::Shape(s) if s.contains("entry[0].changes[0].value"))),
        (br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"p"},"messages":[{"from":"1","id":"w","timestamp":"17e8","type":"text"}]}}]}]}"#,
            |e| matches!(e, PayloadError::BadTimestamp(s) if s.ends_with("messages[0]"))),
    ];
    for (raw, expected) in cases {
        let e = parse(raw).expect_err("refused");
        assert!(expected(&e), "{:?} -> {e:?}", String::from_utf8_lossy(raw));
    }
    let no_id = msg("text", json!({}));
    let mut no_id = no_id.as_object().cloned().expect("object");
    no_id.remove("id");
    let e = parse(&body(vec![value(json!([no_id]))])).expect_err("refused");
    assert!(e.to_string().contains("missing field `id`"), "{e}");
}

#[test]
fn empty_delivery_is_fine() {
    let d = parse(br#"{"object":"whatsapp_business_account","entry":[]}"#).expect("parses");
    assert_eq!(d, Delivery::default());
}
