//! Lemon Squeezy webhook events (JSON:API), from the raw body to what billing
//! applies: a subscription's new state, a payment on a subscription, or an
//! event that only goes into the audit log. Every error names the JSON path
//! that is wrong, under `payload.`.

use chrono::{DateTime, Utc};
use mesh_runtime::{FieldViolation, Violations};
use serde_json::Value;
use uuid::Uuid;

/// The largest body accepted (Lemon Squeezy's events are a few KiB).
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// Who a subscription belongs to, from the checkout's `custom_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    User(Uuid),
    Workspace(Uuid),
}

#[derive(Debug)]
pub struct Event {
    pub name: String,
    pub test_mode: bool,
    pub owner: Option<Owner>,
    pub kind: Kind,
    pub payload: Value,
}

impl Event {
    /// The Lemon Squeezy subscription the event is about; empty for orders.
    pub fn subscription_id(&self) -> &str {
        match &self.kind {
            Kind::Subscription(state) => &state.subscription_id,
            Kind::Payment {
                subscription_id, ..
            } => subscription_id,
            Kind::Other => "",
        }
    }

    /// The user `custom_data` names, if it names one.
    pub fn user(&self) -> Option<Uuid> {
        match self.owner {
            Some(Owner::User(user)) => Some(user),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub enum Kind {
    /// subscription_created, _updated, _cancelled, _resumed, _expired,
    /// _paused, _unpaused: the subscription object as it now is.
    Subscription(State),
    /// subscription_payment_*: an invoice of a subscription.
    Payment {
        subscription_id: String,
        status: &'static str,
        time: DateTime<Utc>,
    },
    /// Orders, refunds of orders, and event names billing does not act on.
    Other,
}

#[derive(Debug, Clone)]
pub struct State {
    pub subscription_id: String,
    pub customer_id: String,
    pub order_id: String,
    pub product_id: String,
    pub variant_id: String,
    /// One of the seven statuses (checked).
    pub status: String,
    pub renews_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub trial_ends_at: Option<DateTime<Utc>>,
    /// `pause.mode` while paused: "void" (no service) or "free" (service
    /// goes on without payment).
    pub pause_mode: Option<String>,
    pub customer_portal_url: String,
    pub updated_at: DateTime<Utc>,
}

pub const STATUSES: [&str; 7] = [
    "on_trial",
    "active",
    "paused",
    "past_due",
    "unpaid",
    "cancelled",
    "expired",
];

const SUBSCRIPTION_EVENTS: [&str; 7] = [
    "subscription_created",
    "subscription_updated",
    "subscription_cancelled",
    "subscription_resumed",
    "subscription_expired",
    "subscription_paused",
    "subscription_unpaused",
];

/// Parses `payload` delivered under the `X-Event-Name` `header_name` (which
/// may be empty: then `meta.event_name` alone names it).
pub fn parse(header_name: &str, payload: &str) -> Result<Event, Violations> {
    let fail = |field: &str, why: &str| Violations::default().add(field, why);
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(fail("payload", "must be at most 256 KiB"));
    }
    // Postgres' jsonb refuses U+0000, escaped or not.
    if payload.contains('\0') || payload.contains("\\u0000") {
        return Err(fail(
            "payload",
            "must not contain the NUL character (U+0000)",
        ));
    }
    let json: Value =
        serde_json::from_str(payload).map_err(|e| fail("payload", &format!("is not JSON: {e}")))?;
    let meta = json
        .get("meta")
        .filter(|m| m.is_object())
        .ok_or_else(|| fail("payload.meta", "must be an object"))?;
    let name = meta
        .get("event_name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty() && n.len() <= 64)
        .ok_or_else(|| {
            fail(
                "payload.meta.event_name",
                "must be a string of 1 to 64 characters",
            )
        })?
        .to_owned();
    if !header_name.is_empty() && header_name != name {
        return Err(fail(
            "event_name",
            &format!("is {header_name:?} but the body's meta.event_name is {name:?}"),
        ));
    }
    let data = json
        .get("data")
        .filter(|d| d.is_object())
        .ok_or_else(|| fail("payload.data", "must be an object"))?;
    let attributes = data
        .get("attributes")
        .filter(|a| a.is_object())
        .ok_or_else(|| fail("payload.data.attributes", "must be an object"))?;
    let mut violations = Violations::default();
    let owner = owner(meta.get("custom_data"));
    let test_mode = meta
        .get("test_mode")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let kind = if SUBSCRIPTION_EVENTS.contains(&name.as_str()) {
        violations
            .merge(subscription_state(data, attributes))
            .map(Kind::Subscription)
    } else if let Some(outcome) = name.strip_prefix("subscription_payment_") {
        let status = match outcome {
            "success" => Some("success"),
            "failed" => Some("failed"),
            "recovered" => Some("recovered"),
            "refunded" => Some("refunded"),
            _ => None,
        };
        let subscription_id = violations.check(id_at(
            attributes,
            "subscription_id",
            "payload.data.attributes.subscription_id",
        ));
        let time = violations.check(time_at(attributes, "updated_at", true));
        match (status, subscription_id, time) {
            (Some(status), Some(subscription_id), Some(time)) => Some(Kind::Payment {
                subscription_id,
                status,
                time: time.expect("required"),
            }),
            (None, _, _) => Some(Kind::Other),
            _ => None,
        }
    } else {
        Some(Kind::Other)
    };
    if !violations.is_empty() {
        return Err(violations);
    }
    Ok(Event {
        name,
        test_mode,
        owner,
        kind: kind.expect("checked"),
        payload: json,
    })
}

/// `custom_data.user_id` or `custom_data.workspace_id`; None when neither
/// is a UUID. A store's checkouts may carry other apps' custom data: such an
/// event is still recorded (as having no owner), never refused, since Lemon
/// Squeezy gives up on a refused event after three retries.
fn owner(custom: Option<&Value>) -> Option<Owner> {
    let uuid = |key: &str| {
        let value = custom?.get(key)?;
        let parsed = value.as_str().and_then(|s| s.parse::<Uuid>().ok());
        if parsed.is_none() && !value.is_null() {
            tracing::warn!(
                key,
                "custom_data holds something other than a UUID; ignored"
            );
        }
        parsed
    };
    match (uuid("user_id"), uuid("workspace_id")) {
        (_, Some(workspace)) => Some(Owner::Workspace(workspace)),
        (Some(user), None) => Some(Owner::User(user)),
        (None, None) => None,
    }
}

fn subscription_state(data: &Value, attributes: &Value) -> Result<State, Violations> {
    let mut violations = Violations::default();
    let subscription_id = violations.check(id_at(data, "id", "payload.data.id"));
    if data.get("type").and_then(Value::as_str) != Some("subscriptions") {
        violations.push(
            "payload.data.type",
            "must be \"subscriptions\" for a subscription event",
        );
    }
    let status = attributes.get("status").and_then(Value::as_str);
    let status = match status {
        Some(s) if STATUSES.contains(&s) => Some(s.to_owned()),
        _ => {
            violations.push(
                "payload.data.attributes.status",
                format!("must be one of {}", STATUSES.join(", ")),
            );
            None
        }
    };
    let renews_at = violations.check(time_at(attributes, "renews_at", false));
    let ends_at = violations.check(time_at(attributes, "ends_at", false));
    let trial_ends_at = violations.check(time_at(attributes, "trial_ends_at", false));
    let updated_at = violations.check(time_at(attributes, "updated_at", true));
    if !violations.is_empty() {
        return Err(violations);
    }
    let text = |key: &str| match attributes.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    Ok(State {
        subscription_id: subscription_id.expect("checked"),
        customer_id: text("customer_id"),
        order_id: text("order_id"),
        product_id: text("product_id"),
        variant_id: text("variant_id"),
        status: status.expect("checked"),
        renews_at: renews_at.expect("checked"),
        ends_at: ends_at.expect("checked"),
        trial_ends_at: trial_ends_at.expect("checked"),
        pause_mode: attributes
            .pointer("/pause/mode")
            .and_then(Value::as_str)
            .filter(|mode| matches!(*mode, "void" | "free"))
            .map(str::to_owned),
        customer_portal_url: attributes
            .pointer("/urls/customer_portal")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        updated_at: updated_at.expect("checked").expect("required"),
    })
}

/// An id Lemon Squeezy writes as a number or a numeric string.
fn id_at(object: &Value, key: &str, field: &str) -> Result<String, FieldViolation> {
    match object.get(key) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 64 => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(FieldViolation::new(
            field,
            "must be an id (a number or a string)",
        )),
    }
}

/// An RFC 3339 time at `attributes.key`; null or absent is None unless required.
fn time_at(
    attributes: &Value,
    key: &str,
    required: bool,
) -> Result<Option<DateTime<Utc>>, FieldViolation> {
    let field = format!("payload.data.attributes.{key}");
    match attributes.get(key) {
        None | Some(Value::Null) if !required => Ok(None),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| FieldViolation::new(&field, "must be an RFC 3339 time")),
        _ => Err(FieldViolation::new(
            &field,
            if required {
                "is required (an RFC 3339 time)"
            } else {
                "must be an RFC 3339 time or null"
            },
        )),
    }
}

/// The attribute names of invoices, orders and subscriptions that accounting
/// keeps after the customer is erased: ids, amounts, currency, tax, status
/// and dates; never names, emails, card details or signed URLs.
pub const ACCOUNTING_ATTRIBUTES: &[&str] = &[
    "store_id",
    "customer_id",
    "order_id",
    "order_number",
    "subscription_id",
    "product_id",
    "variant_id",
    "status",
    "billing_reason",
    "currency",
    "currency_rate",
    "subtotal",
    "discount_total",
    "tax",
    "tax_inclusive",
    "total",
    "subtotal_usd",
    "discount_total_usd",
    "tax_usd",
    "total_usd",
    "refunded",
    "refunded_at",
    "refunded_amount",
    "refunded_amount_usd",
    "renews_at",
    "ends_at",
    "trial_ends_at",
    "created_at",
    "updated_at",
    "test_mode",
];

/// `payload` with only what accounting keeps: the event name and test mode,
/// the data's type and id, and the [`ACCOUNTING_ATTRIBUTES`].
pub fn accounting_only(payload: &Value) -> Value {
    let attributes: serde_json::Map<String, Value> = payload
        .pointer("/data/attributes")
        .and_then(Value::as_object)
        .map(|all| {
            all.iter()
                .filter(|(key, _)| ACCOUNTING_ATTRIBUTES.contains(&key.as_str()))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({
        "meta": {
            "event_name": payload.pointer("/meta/event_name"),
            "test_mode": payload.pointer("/meta/test_mode"),
        },
        "data": {
            "type": payload.pointer("/data/type"),
            "id": payload.pointer("/data/id"),
            "attributes": attributes,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(name: &str, data: Value) -> String {
        serde_json::json!({
            "meta": {"event_name": name, "test_mode": true,
                     "custom_data": {"user_id": "0190d6a4-55a8-7c4e-9f63-3a1d2b9c8e01"}},
            "data": data,
        })
        .to_string()
    }

    #[test]
    fn a_subscription_event_gives_its_state_and_owner() {
        let payload = body(
            "subscription_created",
            serde_json::json!({"type": "subscriptions", "id": "1",
              "attributes": {"status": "on_trial", "customer_id": 7, "variant_id": 42,
                "renews_at": "2027-01-07T00:00:00.000000Z", "ends_at": null,
                "trial_ends_at": "2026-12-14T00:00:00Z",
                "updated_at": "2026-12-07T10:00:00.000000Z",
                "urls": {"customer_portal": "https://example.test/portal"}}}),
        );
        let event = parse("subscription_created", &payload).unwrap();
        assert!(matches!(event.owner, Some(Owner::User(_))));
        let Kind::Subscription(state) = event.kind else {
            panic!("a state")
        };
        assert_eq!(state.variant_id, "42");
        assert_eq!(state.customer_id, "7");
        assert_eq!(state.status, "on_trial");
        assert!(state.ends_at.is_none());
        assert_eq!(state.customer_portal_url, "https://example.test/portal");
    }

    #[test]
    fn bad_events_name_the_path() {
        let fields = |e: Violations| e.to_string();
        assert!(fields(parse("", "nope").unwrap_err()).contains("payload: is not JSON"));
        let bad_status = body(
            "subscription_updated",
            serde_json::json!({"type": "subscriptions", "id": "1",
              "attributes": {"status": "sleeping", "updated_at": "yesterday"}}),
        );
        let why = fields(parse("subscription_updated", &bad_status).unwrap_err());
        assert!(why.contains("payload.data.attributes.status"), "{why}");
        assert!(why.contains("payload.data.attributes.updated_at"), "{why}");
        let other = body(
            "order_created",
            serde_json::json!({"type": "orders", "id": 9, "attributes": {}}),
        );
        assert!(fields(parse("subscription_created", &other).unwrap_err()).contains("event_name"));
        assert!(matches!(
            parse("order_created", &other).unwrap().kind,
            Kind::Other
        ));
    }

    #[test]
    fn payments_name_their_subscription() {
        let payload = body(
            "subscription_payment_failed",
            serde_json::json!({"type": "subscription-invoices", "id": "5",
              "attributes": {"subscription_id": 1, "status": "failed",
                             "updated_at": "2026-12-07T10:00:00Z"}}),
        );
        let Kind::Payment {
            subscription_id,
            status,
            ..
        } = parse("", &payload).unwrap().kind
        else {
            panic!("a payment")
        };
        assert_eq!((subscription_id.as_str(), status), ("1", "failed"));
    }
}
