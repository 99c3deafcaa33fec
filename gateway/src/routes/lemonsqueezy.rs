//! `POST /webhooks/lemonsqueezy`: size, then `X-Signature` on the raw bytes,
//! then the envelope, then billing's ApplySubscriptionEvent. Billing records
//! each body once, so Lemon Squeezy's retries (of anything not 200) are
//! harmless; a body billing refuses is 400 with its reason.

use axum::{
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::HeaderMap,
};
use mesh_proto::mesh::{
    billing::v1::ApplySubscriptionEventRequest, conversations::v1::WebhookSource,
};
use sha2::{Digest, Sha256};
use tonic::Code;

use super::{AppState, body};
use crate::{
    MAX_LEMONSQUEEZY_BODY,
    answer::{Answer, EventSummary},
    error::short,
    inbound::DeadLetter,
    lemonsqueezy, signature,
};

pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    read: Result<Bytes, BytesRejection>,
) -> Answer {
    let raw = match body(read, MAX_LEMONSQUEEZY_BODY) {
        Ok(raw) => raw,
        Err(answer) => return answer,
    };
    let secret = state
        .inner
        .lemonsqueezy_signing_secret
        .as_deref()
        .unwrap_or("");
    let header = headers.get("x-signature").and_then(|v| v.to_str().ok());
    if let Err(why) = signature::verify_lemonsqueezy(secret.as_bytes(), header, &raw) {
        // Never the body: it is not ours until it is authenticated.
        tracing::warn!(reason = %why, bytes = raw.len(), "Lemon Squeezy event refused");
        return Answer::Unauthorized(why);
    }
    let event = match lemonsqueezy::parse(&raw) {
        Ok(event) => event,
        Err(why) => {
            tracing::warn!(reason = %why, "Lemon Squeezy body is not an event");
            return refuse(&state, &raw, why.to_string(), why.into()).await;
        }
    };
    // Optional: billing then goes by meta.event_name alone (and refuses a
    // header that disagrees with it).
    let event_name = match headers.get("x-event-name").map(|v| v.to_str()) {
        None => String::new(),
        Some(Ok(name)) => name.to_owned(),
        Some(Err(_)) => return Answer::BadRequest("X-Event-Name is not ASCII text".into()),
    };
    let applied = state
        .inner
        .mesh
        .apply_subscription_event(ApplySubscriptionEventRequest {
            event_name,
            payload: event.payload.to_owned(),
        })
        .await;
    match applied {
        Ok(answer) => {
            let outcome = answer.event.map(|e| e.outcome).unwrap_or_default();
            tracing::info!(
                event = %event.name,
                outcome,
                recorded = answer.recorded,
                "Lemon Squeezy event handed to billing"
            );
            Answer::Event(EventSummary {
                outcome,
                recorded: answer.recorded,
            })
        }
        // Signed by Lemon Squeezy but not an event billing can take: a retry
        // carries the same body, so say why instead of asking for one.
        Err(e) if e.code() == Code::InvalidArgument => {
            let reason = format!("billing refused the event: {}", short(e.status.message()));
            tracing::warn!(event = %event.name, %reason, "billing refused the Lemon Squeezy event");
            let answer = Answer::BadRequest(reason.clone());
            refuse(&state, &raw, reason, answer).await
        }

        Err(e) => Answer::Downstream(e),
    }
}

/// Files a signed body that is not an event billing can take as a dead
/// letter (conversations.ListWebhookFailures, source LEMONSQUEEZY) before
/// answering `answer`: Lemon Squeezy gives up after three retries, and what
/// it signed must not be lost. If the letter cannot be filed, 5xx: then Lemon
/// Squeezy's retry tries again.
async fn refuse(state: &AppState, raw: &[u8], reason: String, answer: Answer) -> Answer {
    let mut delivery = state.delivery(raw, WebhookSource::Lemonsqueezy);
    let letter = DeadLetter {
        // The same body again files the same letter, once.
        key: hex::encode(Sha256::digest(raw)),
        phone: None,
        provider_message_id: "",
        reason,
    };
    match delivery.dead_letter("event", letter).await {
        Ok(()) => answer,
        Err(e) => Answer::Downstream(e),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::{body::Body, http::Request};
    use tower::ServiceExt;

    use crate::{config::Config, routes, signature::sign_lemonsqueezy};

    /// Without `LEMONSQUEEZY_SIGNING_SECRET` every event is refused, even one
    /// signed with the empty key (which anyone can compute), and billing is
    /// never asked (it is not even there).
    #[tokio::test]
    async fn without_a_signing_secret_every_event_is_401() {
        let config = Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            users_url: "http://127.0.0.1:9".into(),
            conversations_url: "http://127.0.0.1:9".into(),
            billing_url: "http://127.0.0.1:9".into(),
            auth_token: "token".into(),
            tls_ca: None,
            downstream_timeout: Duration::from_secs(1),
            drain_grace: Duration::from_secs(1),
            whatsapp_verify_token: None,
            whatsapp_app_secret: None,
            telegram_secret_token: None,
            lemonsqueezy_signing_secret: None,
        };
        let router = routes::router(routes::AppState::new(&config).unwrap());
        let body = r#"{"meta":{"event_name":"order_created"},"data":{"type":"orders","id":"1"}}"#;
        for signature in [sign_lemonsqueezy(b"", body.as_bytes()), "00".repeat(32)] {
            let request = Request::post("/webhooks/lemonsqueezy")
                .header("x-event-name", "order_created")
                .header("x-signature", signature)
                .body(Body::from(body))
                .unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), 401);
            let text = axum::body::to_bytes(response.into_body(), 1024)
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&text);
            assert!(text.contains("no webhook secret configured"), "{text}");
        }
    }
}
