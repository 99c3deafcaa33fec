//! Lemon Squeezy webhook bodies (JSON:API), read only as far as the gateway
//! needs: the billing service owns the meaning of an event (and checks the
//! rest: ids, statuses, times, the owner in `custom_data`), so here a body is
//! only refused early when it cannot be an event at all.

use serde_json::Value;

use crate::PayloadError;

/// A body that has an event's envelope, still as the raw text that was signed.
#[derive(Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// `meta.event_name`, e.g. "subscription_created".
    pub name: String,
    /// The body exactly as received (billing keeps it as its audit record).
    pub payload: &'a str,
}

/// Checks that `raw` is UTF-8 JSON with `meta.event_name` (a non-empty
/// string) and a `data` object.
pub fn parse(raw: &[u8]) -> Result<Event<'_>, PayloadError> {
    // JSON is UTF-8 (RFC 8259), and billing takes the body as a string.
    let payload = std::str::from_utf8(raw).map_err(|e| PayloadError::NotJson(e.to_string()))?;
    let json: Value = serde_json::from_str(payload).map_err(|e| PayloadError::not_json(&e))?;
    let Some(meta) = json.get("meta").filter(|m| m.is_object()) else {
        return Err(PayloadError::shape("meta", "must be an object"));
    };
    let name = match meta.get("event_name") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        _ => {
            return Err(PayloadError::shape(
                "meta.event_name",
                "must be a non-empty string",
            ));
        }
    };
    if !json.get("data").is_some_and(Value::is_object) {
        return Err(PayloadError::shape("data", "must be an object"));
    }
    Ok(Event { name, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_is_enough() {
        let body = r#"{"meta":{"event_name":"order_created","custom_data":null},"data":{"type":"orders","id":"1","attributes":{}}}"#;
        assert_eq!(
            parse(body.as_bytes()),
            Ok(Event {
                name: "order_created".into(),
                payload: body,
            })
        );
    }

    #[test]
    fn anything_else_names_what_is_wrong() {
        for (body, reason) in [
            (&b"\xff{}"[..], "body is not JSON"),
            (b"not json", "body is not JSON"),
            (b"[]", "meta: must be an object"),
            (br#"{"data":{}}"#, "meta: must be an object"),
            (br#"{"meta":[],"data":{}}"#, "meta: must be an object"),
            (br#"{"meta":{},"data":{}}"#, "meta.event_name"),
            (
                br#"{"meta":{"event_name":""},"data":{}}"#,
                "meta.event_name",
            ),
            (br#"{"meta":{"event_name":7},"data":{}}"#, "meta.event_name"),
            (br#"{"meta":{"event_name":"x"}}"#, "data: must be an object"),
            (
                br#"{"meta":{"event_name":"x"},"data":"s"}"#,
                "data: must be an object",
            ),
        ] {
            let error = parse(body).expect_err("refused").to_string();
            assert!(error.contains(reason), "{error} for {body:?}");
        }
    }
}
