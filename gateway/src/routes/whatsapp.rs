//! `GET /webhooks/whatsapp` (Meta's verification handshake) and
//! `POST /webhooks/whatsapp` (deliveries): size, then signature on the raw
//! bytes, then parse, then hand on.

use std::collections::HashMap;

use axum::{
    body::Bytes,
    extract::{Query, State, rejection::BytesRejection},
    http::HeaderMap,
};
use mesh_proto::mesh::conversations::v1::WebhookSource;
use subtle::ConstantTimeEq;

use super::{AppState, body};
use crate::{MAX_WHATSAPP_BODY, answer::Answer, inbound, signature, whatsapp};

/// The challenge is echoed as the body: keep it to what Meta sends (digits,
/// in practice), so the route cannot be used to reflect arbitrary content.
const MAX_CHALLENGE: usize = 256;

pub async fn verify(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let Some(expected) = &state.inner.whatsapp_verify_token else {
        return Answer::Forbidden("WHATSAPP_VERIFY_TOKEN is not configured");
    };
    let (Some(mode), Some(token), Some(challenge)) = (
        query.get("hub.mode"),
        query.get("hub.verify_token"),
        query.get("hub.challenge"),
    ) else {
        return Answer::BadRequest("expected hub.mode, hub.verify_token and hub.challenge".into());
    };
    let matches: bool = token.as_bytes().ct_eq(expected.as_bytes()).into();
    if mode != "subscribe" || !matches {
        tracing::warn!(mode, "verification refused: wrong mode or token");
        return Answer::Forbidden("verification refused");
    }
    let printable = challenge.len() <= MAX_CHALLENGE
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !printable {
        return Answer::BadRequest("hub.challenge must be at most 256 letters or digits".into());
    }
    Answer::Challenge(challenge.clone())
}

pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    read: Result<Bytes, BytesRejection>,
) -> Answer {
    let raw = match body(read, MAX_WHATSAPP_BODY) {
        Ok(raw) => raw,
        Err(answer) => return answer,
    };
    let secret = state.inner.whatsapp_app_secret.as_deref().unwrap_or("");
    let header = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    if let Err(why) = signature::verify_whatsapp(secret.as_bytes(), header, &raw) {
        // Never the body: it is not ours until it is authenticated.
        tracing::warn!(reason = %why, bytes = raw.len(), "WhatsApp delivery refused");
        return Answer::Unauthorized(why);
    }
    let parsed = match whatsapp::parse(&raw) {
        Ok(parsed) => parsed,
        Err(why) => {
            tracing::warn!(reason = %why, "WhatsApp delivery is not a webhook payload");
            return why.into();
        }
    };
    let delivery = state.delivery(&raw, WebhookSource::Whatsapp);
    inbound::whatsapp::deliver(delivery, parsed).await.into()
}
