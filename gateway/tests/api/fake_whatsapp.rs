//! The WhatsApp Cloud API's send endpoint, enough for the conversations
//! service to send a message the statuses can then be about: it answers each
//! send with a new wamid, as Meta does.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{Json, Router, extract::State, routing::post};
use serde_json::{Value, json};

pub const ACCESS_TOKEN: &str = "fake-access-token";
pub const PHONE_NUMBER_ID: &str = "106540352242922";

/// Starts the fake; returns its base URL.
pub async fn start() -> String {
    let sent = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route("/{version}/{phone_number_id}/messages", post(send))
        .with_state(sent);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn send(State(sent): State<Arc<AtomicU64>>, Json(body): Json<Value>) -> Json<Value> {
    let n = sent.fetch_add(1, Ordering::Relaxed);
    let to = body["to"].as_str().unwrap_or_default().to_owned();
    Json(json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": to, "wa_id": to}],
        "messages": [{"id": format!("wamid.out.{}.{n}", uuid::Uuid::new_v4().simple()),
                      "message_status": "accepted"}],
    }))
}
