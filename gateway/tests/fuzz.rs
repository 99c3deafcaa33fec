//! The fuzz target, as property tests: arbitrary bytes and arbitrary
//! JSON into the parsers and the signature checks never panic, every
//! failure is a `PayloadError` (400), and well-shaped payloads keep their text.

use mesh_gateway::signature::{verify_lemonsqueezy, verify_telegram, verify_whatsapp};
use mesh_gateway::{PayloadError, lemonsqueezy, telegram, whatsapp};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Keys and strings the parsers look for, so random JSON reaches deep paths.
const KEYS: &[&str] = &[
    "object",
    "entry",
    "id",
    "changes",
    "field",
    "value",
    "metadata",
    "phone_number_id",
    "contacts",
    "profile",
    "name",
    "wa_id",
    "messages",
    "statuses",
    "errors",
    "from",
    "timestamp",
    "type",
    "text",
    "body",
    "image",
    "caption",
    "location",
    "latitude",
    "interactive",
    "button_reply",
    "list_reply",
    "title",
    "reaction",
    "emoji",
    "context",
    "referral",
    "status",
    "pricing",
    "code",
    "error_data",
    "update_id",
    "message",
    "edited_message",
    "callback_query",
    "message_id",
    "chat",
    "date",
    "is_bot",
    "first_name",
    "data",
    "photo",
    "reply_to_message",
    "meta",
    "event_name",
    "custom_data",
    "attributes",
];
const STRINGS: &[&str] = &[
    "whatsapp_business_account",
    "messages",
    "text",
    "image",
    "interactive",
    "failed",
    "unsupported",
    "1700000000",
    "private",
    "/start abc",
    "subscription_created",
];

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // NaN and infinities become null
        any::<String>().prop_map(Value::String),
        prop::sample::select(STRINGS).prop_map(Value::from),
    ];
    let key = prop_oneof![
        prop::sample::select(KEYS).prop_map(String::from),
        any::<String>()
    ];
    leaf.prop_recursive(6, 96, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn sign(secret: &[u8], body: &[u8]) -> String {
    mesh_gateway::signature::sign_whatsapp(secret, body)
}

/// Meta's serialisation: non-ASCII as `\uXXXX` UTF-16 escapes.
fn escape_non_ascii(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// A failure must carry a short, non-empty reason (it becomes the 400 body).
fn check_error(e: &PayloadError) {
    let reason = e.to_string();
    assert!(!reason.is_empty() && reason.len() < 300, "{reason}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = whatsapp::parse(&raw) { check_error(&e); }
        if let Err(e) = telegram::parse(&raw) { check_error(&e); }
        if let Err(e) = lemonsqueezy::parse(&raw) { check_error(&e); }
        let header = String::from_utf8_lossy(&raw);
        let _ = verify_whatsapp(b"secret", Some(&header), &raw);
        let _ = verify_whatsapp(&raw, Some(&header), &raw);
        let _ = verify_telegram("token", Some(&header));
        let _ = verify_telegram(&header, Some("token"));
        let _ = verify_lemonsqueezy(b"secret", Some(&header), &raw);
        let _ = verify_lemonsqueezy(&raw, Some(&header), &raw);
    }

    #[test]
    fn json_never_panics(v in arb_json(), wrap in any::<bool>()) {
        // Half the time inside a valid envelope, so the inner paths get hit.
        let wa = if wrap {
            json!({"object": "whatsapp_business_account", "entry": [{"id": "1",
                "changes": [{"field": "messages", "value": v.clone()}]}]})
        } else { v.clone() };
        match whatsapp::parse(wa.to_string().as_bytes()) {
            Ok(d) => {
                for m in &d.messages { prop_assert!(m.raw.is_object()); }
            }
            Err(e) => check_error(&e),
        }
        let ls = if wrap {
            json!({"meta": {"event_name": "subscription_created"}, "data": v.clone()})
        } else { v.clone() };
        if let Err(e) = lemonsqueezy::parse(ls.to_string().as_bytes()) { check_error(&e); }
        let tg = if wrap { json!({"update_id": 1, "message": v}) } else { v };
        if let Err(e) = telegram::parse(tg.to_string().as_bytes()) { check_error(&e); }
    }

    #[test]
    fn whatsapp_text_round_trips_when_signed(
        body in any::<String>(), name in any::<String>(), wa_id in "[0-9]{8,15}",
        wamid in "wamid\\.[A-Za-z0-9=_-]{1,100}", ts in 0i64..=i64::MAX,
    ) {
        let payload = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
            {"field": "messages", "value": {"metadata": {"phone_number_id": "p"},
                "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
                "messages": [{"from": wa_id, "id": wamid, "timestamp": ts.to_string(),
                    "type": "text", "text": {"body": body}}]}}]}]});
        let raw = escape_non_ascii(&payload.to_string());
        let header = sign(b"app-secret", raw.as_bytes());
        prop_assert_eq!(verify_whatsapp(b"app-secret", Some(&header), raw.as_bytes()), Ok(()));
        let d = whatsapp::parse(raw.as_bytes()).expect("well-shaped");
        let m = &d.messages[0];
        prop_assert_eq!(m.text.as_deref(), Some(body.as_str()));
        prop_assert_eq!(m.profile_name.as_deref(), Some(name.as_str()));
        prop_assert_eq!((&m.wa_id, &m.id, m.timestamp), (&wa_id, &wamid, ts));
    }

    #[test]
    fn telegram_text_round_trips(
        text in any::<String>(), update_id in any::<i64>(), user_id in any::<i64>(),
        token in "[A-Za-z0-9_-]{1,64}",
    ) {
        let raw = json!({"update_id": update_id, "message": {"message_id": 1,
            "from": {"id": user_id, "is_bot": false, "first_name": text},
            "chat": {"id": user_id, "type": "private"}, "date": 1,
            "text": format!("/start {token}")}}).to_string();
        let u = telegram::parse(raw.as_bytes()).expect("well-shaped");
        prop_assert_eq!(u.update_id, update_id);
        let telegram::UpdateKind::Message(m) = u.kind else { panic!("not a message") };
        prop_assert_eq!(m.from.map(|f| (f.id, f.first_name)), Some((user_id, text)));
        prop_assert_eq!(m.text.as_deref().and_then(telegram::start_payload), Some(token.as_str()));
    }
}

#[test]
fn deep_nesting_is_a_400_not_a_stack_overflow() {
    // serde_json stops at depth 128; this pins that the parsers rely on it.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(matches!(
        whatsapp::parse(deep.as_bytes()),
        Err(PayloadError::NotJson(_))
    ));
    assert!(matches!(
        telegram::parse(deep.as_bytes()),
        Err(PayloadError::NotJson(_))
    ));
}

/// The routes themselves, in process, with the downstream services at an
/// address nobody listens on: a signed body the parser refuses is a 400,
/// one it accepts is 200 (nothing to store) or a 5xx (the mesh is needed
/// and away): never a panic, never a 500.
mod routes {
    use std::sync::OnceLock;

    use axum::{Router, body::Body, http::Request};
    use tower::ServiceExt;

    use super::*;

    const SECRET: &str = "fuzz-app-secret";
    const TELEGRAM: &str = "fuzz-telegram-secret";
    const LEMONSQUEEZY: &str = "fuzz-lemonsqueezy-secret";

    fn runtime() -> &'static tokio::runtime::Runtime {
        static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        RUNTIME.get_or_init(|| tokio::runtime::Runtime::new().unwrap())
    }

    fn router() -> Router {
        static ROUTER: OnceLock<Router> = OnceLock::new();
        ROUTER
            .get_or_init(|| {
                let _entered = runtime().enter();
                let config = mesh_gateway::Config {
                    addr: "127.0.0.1:0".parse().unwrap(),
                    users_url: "http://127.0.0.1:9".into(),
                    conversations_url: "http://127.0.0.1:9".into(),
                    billing_url: "http://127.0.0.1:9".into(),
                    auth_token: "token".into(),
                    tls_ca: None,
                    downstream_timeout: std::time::Duration::from_secs(2),
                    drain_grace: std::time::Duration::from_secs(1),
                    whatsapp_verify_token: None,
                    whatsapp_app_secret: Some(SECRET.into()),
                    telegram_secret_token: Some(TELEGRAM.into()),
                    lemonsqueezy_signing_secret: Some(LEMONSQUEEZY.into()),
                };
                mesh_gateway::routes::router(mesh_gateway::routes::AppState::new(&config).unwrap())
            })
            .clone()
    }

    fn post(path: &str, header: (&str, String), body: Vec<u8>) -> u16 {
        let request = Request::post(path)
            .header(header.0, header.1)
            .body(Body::from(body))
            .unwrap();
        runtime()
            .block_on(router().oneshot(request))
            .unwrap()
            .status()
            .as_u16()
    }

    fn check(status: u16, parsed: bool) {
        if parsed {
            assert!(matches!(status, 200 | 502 | 503), "{status}");
        } else {
            assert_eq!(status, 400);
        }
    }

    /// A signed Lemon Squeezy body that is not an event is filed as a dead
    /// letter before its 400, so with the services away (as here) it is a
    /// 5xx that Lemon Squeezy retries; an event goes to billing, also away.
    /// A 400 here would be a body refused without its dead letter.
    fn check_lemonsqueezy(status: u16) {
        assert!(matches!(status, 502 | 503), "{status}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn signed_bytes_get_a_documented_answer(raw in prop::collection::vec(any::<u8>(), 0..512)) {
            let status = post("/webhooks/whatsapp",
                ("x-hub-signature-256", sign(SECRET.as_bytes(), &raw)), raw.clone());
            check(status, whatsapp::parse(&raw).is_ok());
            let status = post("/webhooks/telegram",
                ("x-telegram-bot-api-secret-token", TELEGRAM.into()), raw.clone());
            check(status, telegram::parse(&raw).is_ok());
            let signature = mesh_gateway::signature::sign_lemonsqueezy(LEMONSQUEEZY.as_bytes(), &raw);
            let status = post("/webhooks/lemonsqueezy", ("x-signature", signature), raw.clone());
            check_lemonsqueezy(status);
        }

        #[test]
        fn signed_json_gets_a_documented_answer(v in arb_json(), wrap in any::<bool>()) {
            let wa = if wrap {
                json!({"object": "whatsapp_business_account", "entry": [{"id": "1",
                    "changes": [{"field": "messages", "value": v.clone()}]}]})
            } else { v.clone() };
            let raw = wa.to_string().into_bytes();
            let status = post("/webhooks/whatsapp",
                ("x-hub-signature-256", sign(SECRET.as_bytes(), &raw)), raw.clone());
            check(status, whatsapp::parse(&raw).is_ok());
            let ls = if wrap {
                json!({"meta": {"event_name": "subscription_created"}, "data": v.clone()})
            } else { v.clone() };
            let raw = ls.to_string().into_bytes();
            let signature = mesh_gateway::signature::sign_lemonsqueezy(LEMONSQUEEZY.as_bytes(), &raw);
            let status = post("/webhooks/lemonsqueezy", ("x-signature", signature), raw.clone());
            check_lemonsqueezy(status);
            let tg = if wrap { json!({"update_id": 1, "message": v}) } else { v };
            let raw = tg.to_string().into_bytes();
            let status = post("/webhooks/telegram",
                ("x-telegram-bot-api-secret-token", TELEGRAM.into()), raw.clone());
            check(status, telegram::parse(&raw).is_ok());
        }

        #[test]
        fn unsigned_bytes_are_401(raw in prop::collection::vec(any::<u8>(), 0..256)) {
            let status = post("/webhooks/whatsapp",
                ("x-hub-signature-256", sign(b"another-secret", &raw)), raw.clone());
            prop_assert_eq!(status, 401);
            let signature = mesh_gateway::signature::sign_lemonsqueezy(b"another-secret", &raw);
            let status = post("/webhooks/lemonsqueezy", ("x-signature", signature), raw);
            prop_assert_eq!(status, 401);
        }
    }
}
