//! `POST /webhooks/telegram`: the secret token header, then parse, then hand on.

use axum::{
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::HeaderMap,
};
use mesh_proto::mesh::conversations::v1::WebhookSource;

use super::{AppState, body};
use crate::{MAX_WHATSAPP_BODY, answer::Answer, inbound, signature, telegram};

pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    read: Result<Bytes, BytesRejection>,
) -> Answer {
    let raw = match body(read, MAX_WHATSAPP_BODY) {
        Ok(raw) => raw,
        Err(answer) => return answer,
    };
    let expected = state.inner.telegram_secret_token.as_deref().unwrap_or("");
    let header = headers
        .get("x-telegram-bot-api-secret-token")
        .and_then(|v| v.to_str().ok());
    if let Err(why) = signature::verify_telegram(expected, header) {
        tracing::warn!(reason = %why, bytes = raw.len(), "Telegram update refused");
        return Answer::Unauthorized(why);
    }
    let update = match telegram::parse(&raw) {
        Ok(update) => update,
        Err(why) => {
            tracing::warn!(reason = %why, "Telegram update is not an update");
            return why.into();
        }
    };
    let delivery = state.delivery(&raw, WebhookSource::Telegram);
    inbound::telegram::deliver(delivery, update).await.into()
}
