//! Local fake WhatsApp Cloud API and Telegram Bot API servers (axum on
//! 127.0.0.1:0) speaking the providers' real paths, headers, JSON and error
//! bodies. They check the credentials and the shape of each request, record
//! every request they receive (so a test can assert "sent exactly once"),
//! and answer as scripted: a queue of replies per server, then success.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::{Value, json};

/// What the fake providers expect as credentials.
pub const WHATSAPP_TOKEN: &str = "wa-test-token";
pub const WHATSAPP_PHONE_NUMBER_ID: &str = "106540352242922";
pub const TELEGRAM_BOT_TOKEN: &str = "123456:test-bot-token";

/// One request a fake received.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    /// The JSON body (`null` when it was not JSON).
    pub body: Value,
}

/// What the fake WhatsApp Cloud API answers to one send.
#[derive(Clone, Debug)]
pub enum WaReply {
    /// 200 with a fresh wamid.
    Accept,
    /// 200 with this wamid.
    AcceptAs(String),
    /// 200 with a fresh wamid, after this long (longer than the service's
    /// provider timeout: a provider that took the message but answered too late).
    AcceptAfter(Duration),
    /// A Graph API error body.
    Error {
        status: u16,
        code: i64,
        message: &'static str,
        details: &'static str,
    },
    /// A bare status with a non-JSON body (a proxy in front of the API: a 502
    /// or 504 may come after the API took the message).
    Bare(u16),
    /// Another reply, after this long.
    Delayed(Duration, Box<WaReply>),
}

impl WaReply {
    /// 130429: the business number's throughput.
    pub fn rate_limit() -> Self {
        Self::Error {
            status: 429,
            code: 130429,
            message: "(#130429) Rate limit hit",
            details: "Cloud API message throughput has been reached.",
        }
    }

    /// 131056: too many messages to one user (about one per 6 s).
    pub fn pair_rate_limit() -> Self {
        Self::Error {
            status: 400,
            code: 131056,
            message: "(#131056) (Business Account, Consumer Account) pair rate limit hit",
            details: "Message failed to send because there were too many messages sent from this phone number to the same phone number in a short period of time.",
        }
    }

    /// 131000 with a 500: something went wrong on Meta's side.
    pub fn outage() -> Self {
        Self::Error {
            status: 500,
            code: 131000,
            message: "(#131000) Something went wrong",
            details: "Message failed to send due to an unknown error.",
        }
    }

    /// 131047: more than 24 hours since the user last wrote.
    pub fn re_engagement() -> Self {
        Self::Error {
            status: 400,
            code: 131047,
            message: "(#131047) Re-engagement message",
            details: "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
        }
    }

    /// 131026: the recipient cannot receive the message.
    pub fn undeliverable() -> Self {
        Self::Error {
            status: 400,
            code: 131026,
            message: "(#131026) Message undeliverable",
            details: "Unable to deliver message. Reasons can include: the recipient phone number is not a WhatsApp phone number.",
        }
    }
}

/// What the fake Telegram Bot API answers to one sendMessage.
#[derive(Clone, Debug)]
pub enum TgReply {
    Accept,
    AcceptAfter(Duration),
    Error {
        status: u16,
        description: &'static str,
        retry_after: Option<u64>,
    },
    /// A bare status with a non-JSON body (a proxy in front of the API).
    Bare(u16),
}

impl TgReply {
    pub fn too_many_requests(retry_after: u64) -> Self {
        Self::Error {
            status: 429,
            description: "Too Many Requests: retry after N",
            retry_after: Some(retry_after),
        }
    }

    pub fn bot_blocked() -> Self {
        Self::Error {
            status: 403,
            description: "Forbidden: bot was blocked by the user",
            retry_after: None,
        }
    }

    /// The Bot API's own error body on a 500.
    pub fn outage() -> Self {
        Self::Error {
            status: 500,
            description: "Internal Server Error",
            retry_after: None,
        }
    }
}

struct Shared<R> {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<R>>,
    next_id: AtomicI64,
}

impl<R> Shared<R> {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            received: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            next_id: AtomicI64::new(1),
        })
    }

    fn record(&self, path: String, headers: &HeaderMap, body: &Bytes) {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        self.received.lock().unwrap().push(Received {
            path,
            authorization: header("authorization"),
            content_type: header("content-type"),
            body: serde_json::from_slice(body).unwrap_or(Value::Null),
        });
    }

    fn next_reply(&self) -> Option<R> {
        self.script.lock().unwrap().pop_front()
    }
}

/// A running fake; stops when dropped.
pub struct Fake<R> {
    addr: SocketAddr,
    shared: Arc<Shared<R>>,
    server: tokio::task::JoinHandle<()>,
}

impl<R> Fake<R> {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Received> {
        self.received().clone()
    }

    fn received(&self) -> std::sync::MutexGuard<'_, Vec<Received>> {
        self.shared.received.lock().unwrap()
    }

    /// Answers the next requests with `replies`, in order; then success.
    pub fn script(&self, replies: impl IntoIterator<Item = R>) {
        self.shared.script.lock().unwrap().extend(replies);
    }
}

impl<R> Drop for Fake<R> {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve<R: Send + Sync + 'static>(router: Router, shared: Arc<Shared<R>>) -> Fake<R> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    Fake {
        addr,
        shared,
        server,
    }
}

pub type FakeWhatsApp = Fake<WaReply>;
pub type FakeTelegram = Fake<TgReply>;

/// The WhatsApp Cloud API's `POST /{version}/{phone_number_id}/messages`.
pub async fn whatsapp() -> FakeWhatsApp {
    let shared = Shared::<WaReply>::new();
    let router = Router::new()
        .route("/{version}/{phone_number_id}/messages", post(whatsapp_send))
        .with_state(shared.clone());
    serve(router, shared).await
}

fn graph_error(status: u16, code: i64, message: &str, details: &str) -> Response {
    let mut error = json!({
        "message": message,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": "AcB1x2y3z4FakeTrace",
    });
    if !details.is_empty() {
        error["error_data"] = json!({"messaging_product": "whatsapp", "details": details});
    }
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({ "error": error })),
    )
        .into_response()
}

async fn whatsapp_send(
    State(shared): State<Arc<Shared<WaReply>>>,
    Path((version, phone_number_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.record(
        format!("/{version}/{phone_number_id}/messages"),
        &headers,
        &body,
    );
    let bearer = format!("Bearer {WHATSAPP_TOKEN}");
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(bearer.as_str()) {
        return graph_error(
            401,
            190,
            "Invalid OAuth access token - Cannot parse access token",
            "",
        );
    }
    if version != "v21.0" || phone_number_id != WHATSAPP_PHONE_NUMBER_ID {
        return graph_error(
            400,
            100,
            "Unsupported post request. Object with ID does not exist, cannot be loaded due to missing permissions, or does not support this operation",
            "",
        );
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return graph_error(400, 100, "(#100) Invalid parameter", "the body is not JSON");
    };
    if let Err(problem) = whatsapp_shape(&request) {
        return graph_error(400, 100, "(#100) Invalid parameter", &problem);
    }
    let reply = shared.next_reply().unwrap_or(WaReply::Accept);
    let wamid = |shared: &Shared<WaReply>| {
        format!(
            "wamid.HBgMNTczMDA{:012}",
            shared.next_id.fetch_add(1, Ordering::SeqCst)
        )
    };
    let to = request["to"].as_str().unwrap_or_default().to_owned();
    let accepted = |id: String| {
        Json(json!({
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to}],
            "messages": [{"id": id, "message_status": "accepted"}],
        }))
        .into_response()
    };
    let mut reply = reply;
    while let WaReply::Delayed(delay, inner) = reply {
        tokio::time::sleep(delay).await;
        reply = *inner;
    }
    match reply {
        WaReply::Delayed(..) => unreachable!(),
        WaReply::Accept => accepted(wamid(&shared)),
        WaReply::AcceptAs(id) => accepted(id),
        WaReply::AcceptAfter(delay) => {
            tokio::time::sleep(delay).await;
            accepted(wamid(&shared))
        }
        WaReply::Error {
            status,
            code,
            message,
            details,
        } => graph_error(status, code, message, details),
        WaReply::Bare(status) => (
            StatusCode::from_u16(status).unwrap(),
            "<html><body>upstream error</body></html>",
        )
            .into_response(),
    }
}

/// What the Cloud API requires of a text or template message.
fn whatsapp_shape(request: &Value) -> Result<(), String> {
    if request["messaging_product"] != "whatsapp" {
        return Err("messaging_product must be whatsapp".into());
    }
    if request["recipient_type"] != "individual" {
        return Err("recipient_type must be individual".into());
    }
    let to = request["to"].as_str().unwrap_or_default();
    if to.is_empty() || !to.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("to must be the phone's digits, got {to:?}"));
    }
    match request["type"].as_str() {
        Some("text") => {
            let body = request["text"]["body"].as_str().unwrap_or_default();
            if body.is_empty() || body.chars().count() > 4096 {
                return Err("text.body must be 1 to 4096 characters".into());
            }
            if !request["text"]["preview_url"].is_boolean() {
                return Err("text.preview_url must be a boolean".into());
            }
        }
        Some("template") => {
            let template = &request["template"];
            if template["name"].as_str().unwrap_or_default().is_empty() {
                return Err("template.name is required".into());
            }
            if template["language"]["code"]
                .as_str()
                .unwrap_or_default()
                .is_empty()
            {
                return Err("template.language.code is required".into());
            }
            if !(template["components"].is_null() || template["components"].is_array()) {
                return Err("template.components must be an array".into());
            }
        }
        other => return Err(format!("unsupported type {other:?}")),
    }
    if !request["context"].is_null() && !request["context"]["message_id"].is_string() {
        return Err("context.message_id must be a string".into());
    }
    Ok(())
}

/// The Telegram Bot API's `POST /bot<token>/sendMessage`.
pub async fn telegram() -> FakeTelegram {
    let shared = Shared::<TgReply>::new();
    let router = Router::new()
        .route("/{bot}/sendMessage", post(telegram_send))
        .with_state(shared.clone());
    serve(router, shared).await
}

fn telegram_error(status: u16, description: &str, retry_after: Option<u64>) -> Response {
    let mut body = json!({"ok": false, "error_code": status, "description": description});
    if let Some(seconds) = retry_after {
        body["description"] = json!(format!("Too Many Requests: retry after {seconds}"));
        body["parameters"] = json!({ "retry_after": seconds });
    }
    (StatusCode::from_u16(status).unwrap(), Json(body)).into_response()
}

async fn telegram_send(
    State(shared): State<Arc<Shared<TgReply>>>,
    Path(bot): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.record(format!("/{bot}/sendMessage"), &headers, &body);
    if bot.strip_prefix("bot") != Some(TELEGRAM_BOT_TOKEN) {
        return telegram_error(401, "Unauthorized", None);
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return telegram_error(400, "Bad Request: message text is empty", None);
    };
    let Some(chat_id) = request["chat_id"].as_i64() else {
        return telegram_error(400, "Bad Request: chat not found", None);
    };
    let text = request["text"].as_str().unwrap_or_default();
    if text.trim().is_empty() {
        return telegram_error(400, "Bad Request: message text is empty", None);
    }
    if text.chars().count() > 4096 {
        return telegram_error(400, "Bad Request: message is too long", None);
    }
    let accepted = |shared: &Shared<TgReply>| {
        let message_id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        Json(json!({
            "ok": true,
            "result": {
                "message_id": message_id,
                "from": {"id": 123456, "is_bot": true, "first_name": "Mesh", "username": "mesh_bot"},
                "chat": {"id": chat_id, "first_name": "Ana", "type": "private"},
                "date": chrono_now(),
                "text": text,
            }
        }))
        .into_response()
    };
    match shared.next_reply().unwrap_or(TgReply::Accept) {
        TgReply::Accept => accepted(&shared),
        TgReply::AcceptAfter(delay) => {
            tokio::time::sleep(delay).await;
            accepted(&shared)
        }
        TgReply::Error {
            status,
            description,
            retry_after,
        } => telegram_error(status, description, retry_after),
        TgReply::Bare(status) => (
            StatusCode::from_u16(status).unwrap(),
            "<html><body>upstream error</body></html>",
        )
            .into_response(),
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Both fakes, for one test.
pub struct Providers {
    pub whatsapp: FakeWhatsApp,
    pub telegram: FakeTelegram,
}

impl Providers {
    pub async fn start() -> Self {
        Self {
            whatsapp: whatsapp().await,
            telegram: telegram().await,
        }
    }
}
