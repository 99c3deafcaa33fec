//! The inbound-message quota: every message a user sends consumes one of
//! their plan's daily FEATURE_INBOUND_MESSAGES before it is stored. Over the
//! quota the message is stored all the same (what a user said is never
//! dropped), flagged `metadata.over_quota` so the agent can answer with the
//! plan's limit instead of spending on it. Billing down or failing costs only
//! the flag: the webhook is never failed for it.

use chrono::{SecondsFormat, SubsecRound, TimeDelta, Utc};
use mesh_proto::mesh::{billing::v1 as billing, conversations::v1 as conv};
use prost_types::value::Kind;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use std::{sync::atomic::Ordering, time::Duration};

use super::{Delivery, request_id};

/// The most a message waits for its quota check. The check only adds a
/// flag, so a slow billing must not hold the delivery (Meta and Telegram
/// resend what is not answered in time); past this the message is stored
/// unchecked, and so are the delivery's other messages.
const QUOTA_DEADLINE: Duration = Duration::from_secs(1);

/// Counts `message` from `user_id` against the user's quota and flags it
/// when the quota is used up. `key` is the provider's id of the message: a
/// redelivery carries the same key, which billing consumes only once.
pub async fn count(delivery: &Delivery<'_>, user_id: &str, key: &str, message: &mut conv::Message) {
    let source = delivery.source_name();
    if delivery.billing_away.load(Ordering::Relaxed) {
        delivery.metrics.quota(source, "unchecked");
        return;
    }
    let consumed = tokio::time::timeout(
        QUOTA_DEADLINE,
        delivery.mesh.consume_quota(billing::ConsumeQuotaRequest {
            user_id: user_id.to_owned(),
            feature: billing::Feature::InboundMessages.into(),
            amount: 1,
            // "inbound:<source>:<provider id>" (hashed when over 128 chars).
            request_id: request_id("inbound", source, key),
        }),
    )
    .await;
    let result = match consumed {
        Ok(Ok(_)) => "within",
        Ok(Err(e)) if e.code() == Code::ResourceExhausted => {
            flag(message, &e.status);
            "over"
        }
        failed => {
            delivery.billing_away.store(true, Ordering::Relaxed);
            let error = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {QUOTA_DEADLINE:?}"),
            };
            tracing::warn!(
                source,
                %error,
                "inbound quota not checked: the delivery's messages are stored without the over_quota flag"
            );
            "unchecked"
        }
    };
    delivery.metrics.quota(source, result);
}

/// Sets `over_quota: true` in the message's metadata, and `quota_reset_time`
/// (RFC 3339) when billing said when the quota resets.
fn flag(message: &mut conv::Message, exhausted: &Status) {
    let fields = &mut message.metadata.get_or_insert_with(Default::default).fields;
    fields.insert("over_quota".into(), value(Kind::BoolValue(true)));
    // Billing's RetryInfo is the time left until the reset (midnight in the
    // user's time zone): back to a time, rounded to the whole second it is.
    let delay = exhausted
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .and_then(|delay| TimeDelta::from_std(delay).ok());
    if let Some(reset) = delay.and_then(|delay| Utc::now().checked_add_signed(delay)) {
        let text = reset
            .round_subsecs(0)
            .to_rfc3339_opts(SecondsFormat::Secs, true);
        fields.insert("quota_reset_time".into(), value(Kind::StringValue(text)));
    }
}

fn value(kind: Kind) -> prost_types::Value {
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic_types::ErrorDetails;

    use super::*;

    #[test]
    fn the_flag_joins_the_provider_metadata() {
        let mut message = conv::Message {
            metadata: Some(mesh_runtime::convert::json_to_struct(
                &serde_json::json!({"whatsapp": {"type": "text"}}),
            )),
            ..Default::default()
        };
        let exhausted = Status::with_error_details(
            Code::ResourceExhausted,
            "used up",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(3600))),
        );
        flag(&mut message, &exhausted);
        let json = mesh_runtime::convert::struct_to_json(message.metadata.as_ref().unwrap());
        assert_eq!(json["whatsapp"]["type"], "text");
        assert_eq!(json["over_quota"], true);
        let reset = json["quota_reset_time"].as_str().expect("a reset time");
        let reset = chrono::DateTime::parse_from_rfc3339(reset).unwrap();
        let in_an_hour = Utc::now() + TimeDelta::hours(1);
        assert!(
            (reset.timestamp() - in_an_hour.timestamp()).abs() <= 1,
            "{reset}"
        );

        let mut bare = conv::Message::default();
        flag(&mut bare, &Status::resource_exhausted("no details"));
        let json = mesh_runtime::convert::struct_to_json(bare.metadata.as_ref().unwrap());
        assert_eq!(json, serde_json::json!({"over_quota": true}));
    }
}
