//! Webhook bodies in the providers' documented shapes.

use serde_json::{Value, json};

pub const PHONE_NUMBER_ID: &str = crate::fake_whatsapp::PHONE_NUMBER_ID;

/// A sender nobody has used yet: (wa_id digits, E.164 phone).
pub fn sender() -> (String, String) {
    let n = rand::random::<u32>() % 10_000_000;
    let wa_id = format!("57300{n:07}");
    let phone = format!("+{wa_id}");
    (wa_id, phone)
}

/// A wamid nobody has used yet.
pub fn wamid() -> String {
    format!(
        "wamid.HBgMNTczMDA{}",
        uuid::Uuid::new_v4().simple().to_string().to_uppercase()
    )
}

/// Unix seconds, as Meta's string.
pub fn now() -> String {
    chrono_now().to_string()
}

pub fn chrono_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A message object of `kind` with its `content` object, from `wa_id`.
pub fn message(wa_id: &str, id: &str, kind: &str, content: Value) -> Value {
    let mut m = json!({"from": wa_id, "id": id, "timestamp": now(), "type": kind});
    m[kind] = content;
    m
}

pub fn text(wa_id: &str, id: &str, body: &str) -> Value {
    message(wa_id, id, "text", json!({"body": body}))
}

/// One change carrying `messages` from the senders in `contacts` (wa_id, name).
pub fn messages_value(contacts: &[(&str, &str)], messages: Vec<Value>) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
        "contacts": contacts.iter()
            .map(|(wa_id, name)| json!({"profile": {"name": name}, "wa_id": wa_id}))
            .collect::<Vec<_>>(),
        "messages": messages,
    })
}

/// One change carrying `statuses`.
pub fn statuses_value(statuses: Vec<Value>) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID},
        "statuses": statuses,
    })
}

pub fn status(id: &str, status: &str, timestamp: i64, recipient: &str) -> Value {
    json!({"id": id, "status": status, "timestamp": timestamp.to_string(),
           "recipient_id": recipient,
           "pricing": {"billable": true, "pricing_model": "CBP", "category": "service",
                       "type": "free_customer_service"}})
}

/// A whole delivery: one entry per group of changes.
pub fn delivery(entries: Vec<Vec<Value>>) -> Value {
    json!({
        "object": "whatsapp_business_account",
        "entry": entries.into_iter().map(|changes| json!({
            "id": "102290129340398",
            "changes": changes.into_iter()
                .map(|value| json!({"field": "messages", "value": value}))
                .collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// The usual case: one message from one sender.
pub fn single(wa_id: &str, name: &str, message: Value) -> Vec<u8> {
    delivery(vec![vec![messages_value(&[(wa_id, name)], vec![message])]])
        .to_string()
        .into_bytes()
}

/// A Telegram user object.
pub fn telegram_from(id: i64, first_name: &str, username: &str) -> Value {
    json!({"id": id, "is_bot": false, "first_name": first_name, "username": username,
           "language_code": "es"})
}

/// A Telegram update carrying a private-chat message.
pub fn telegram_message(update_id: i64, message_id: i64, from: &Value, fields: Value) -> Value {
    let mut message = json!({"message_id": message_id, "from": from,
        "chat": {"id": from["id"], "type": "private", "first_name": from["first_name"]},
        "date": chrono_now()});
    for (k, v) in fields.as_object().unwrap() {
        message[k] = v.clone();
    }
    json!({"update_id": update_id, "message": message})
}

/// A Telegram user id nobody has used yet.
pub fn telegram_id() -> i64 {
    1_000_000_000 + (rand::random::<u32>() % 1_000_000_000) as i64
}
