//! Malformed, oversized and unauthenticated requests to every gRPC service
//! and every webhook route of the gateway. Each must get its documented
//! answer, no process may go down (all still running and ready afterwards),
//! and none may keep more than [`RSS_BOUND_MIB`] of resident memory it did
//! not have after one warm-up round of the same requests.

use std::collections::BTreeMap;

use anyhow::Result;
use mesh_proto::mesh::{
    conversations::v1 as conversations, memory::v1 as memory, scheduler::v1 as scheduler,
    users::v1 as users,
};
use prost::{
    Message,
    bytes::{Buf, BufMut},
};
use tonic::{
    Code, Request, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    metadata::MetadataValue,
};

use super::{
    load::{grpc_code, http_failure},
    mesh::{APP_SECRET, LEMONSQUEEZY_SECRET, MEMORY_MAX_DOCUMENT_BYTES, Mesh, TELEGRAM_SECRET},
    report::{Report, Row},
};
use crate::{clients::TOKEN, whatsapp};

/// How many times each bad request is sent.
const ROUNDS: usize = 10;
/// Growth of a process's resident memory (VmRSS) over the barrage that
/// fails the run: far above what the requests legitimately leave behind
/// (allocator caches, connection buffers), far below keeping the bodies.
pub const RSS_BOUND_MIB: f64 = 64.0;
/// tonic's default decoding limit, which every service keeps but memory.
const GRPC_DECODING_LIMIT: usize = 4 * 1024 * 1024;
/// Memory takes a whole document in one message: the largest document
/// plus 64 KiB of envelope (services/memory/src/lib.rs).
const MEMORY_DECODING_LIMIT: usize = MEMORY_MAX_DOCUMENT_BYTES + 64 * 1024;
/// How far past its limit an oversized message goes.
const OVER_THE_LIMIT: usize = 1024 * 1024;
/// Tries of an oversized webhook: the gateway may answer 413 and close the
/// connection while the body is still being sent, and the client then
/// cannot read the answer; a retry (as a provider would make) reads it.
const WEBHOOK_TRIES: usize = 3;
/// Over the gateway's limits: 3 MiB for WhatsApp and Telegram (WhatsApp's
/// documented maximum), 256 KiB for Lemon Squeezy.
const OVERSIZED_WEBHOOK: usize = 4 * 1024 * 1024;
const OVERSIZED_LEMONSQUEEZY: usize = 1024 * 1024;

pub async fn run(mesh: &mut Mesh, report: &mut Report, http: &reqwest::Client) -> Result<()> {
    let mut mismatches = Vec::new();
    // One round first, outside the measure: a process's first oversized
    // message grows its buffers and allocator arenas once, for good. The
    // bound is about what the rounds after that keep.
    grpc_barrage(mesh, 1, &mut mismatches).await;
    webhook_barrage(mesh, http, 1, &mut mismatches).await;
    let before = mesh.resident_mib();
    let grpc = grpc_barrage(mesh, ROUNDS, &mut mismatches).await;
    let (webhooks, webhooks_sent) = webhook_barrage(mesh, http, ROUNDS, &mut mismatches).await;
    let grpc_sent = grpc.values().sum();
    let after = mesh.resident_mib();

    let mut growth = Vec::new();
    let mut worst: f64 = 0.0;
    for ((name, before), (_, after)) in before.iter().zip(&after) {
        match before.zip(*after) {
            Some((before, after)) => {
                worst = worst.max(after - before);
                growth.push(format!("{name} {before:.1} → {after:.1}"));
                report.check(after - before <= RSS_BOUND_MIB, || {
                    format!(
                        "barrage: {name}'s resident memory grew from {before:.1} to {after:.1} MiB, over the {RSS_BOUND_MIB} MiB bound"
                    )
                });
            }
            None => report.check(false, || format!("barrage: cannot read {name}'s memory")),
        }
    }
    report.check(mismatches.is_empty(), || {
        format!(
            "barrage: {} answers were not the documented ones, e.g. {:?}",
            mismatches.len(),
            &mismatches[..mismatches.len().min(5)]
        )
    });
    let problems = mesh.problems().await;
    report.check(problems.is_empty(), || {
        format!("barrage: afterwards {}", problems.join("; "))
    });
    let recovery = format!(
        "none needed: all up, RSS +{:.1} MiB at most (bound +{RSS_BOUND_MIB:.0})",
        worst.max(0.0)
    );
    for (what, sent, answers) in [
        (
            "malformed, oversized, unauthenticated gRPC (5 services)",
            grpc_sent,
            grpc,
        ),
        (
            "unsigned, badly signed, non-JSON, oversized webhooks (3 routes)",
            webhooks_sent,
            webhooks,
        ),
    ] {
        report.rows.push(Row {
            fault: what.into(),
            sent,
            acknowledged: None,
            stored: None,
            duplicates: None,
            errors: answers,
            recovery: recovery.clone(),
        });
    }
    report.notes.push(format!(
        "barrage: each bad request sent once (unmeasured warm-up), then {ROUNDS} times; gRPC: no token or a wrong one (UNAUTHENTICATED), bytes that are not protobuf (INTERNAL, tonic's decode error), an invalid id (INVALID_ARGUMENT), a message 1 MiB over the service's decoding limit (OUT_OF_RANGE, tonic's answer; the limit is tonic's default 4 MiB, memory's its largest document plus 64 KiB; UNAUTHENTICATED without a token); webhooks: unsigned or badly signed (401), a wrong WhatsApp verify token (403), not JSON (400), over the route's limit (413; an answer the client could not read because the gateway closed the connection mid-upload is tried again, up to {WEBHOOK_TRIES} times). Resident memory (VmRSS, MiB) after the warm-up → after the {ROUNDS} rounds: {}",
        growth.join(", ")
    ));
    Ok(())
}

/// One bad gRPC request and the code it must get.
struct GrpcCase {
    what: &'static str,
    token: Option<&'static str>,
    body: Vec<u8>,
    expected: Code,
}

/// Per service: a method, a request to it that names a bad id, and the
/// service's decoding limit.
fn invalid_requests() -> [(&'static str, &'static str, Vec<u8>, usize); 5] {
    let not_a_uuid = || "not-a-uuid".to_owned();
    [
        (
            "users",
            "/mesh.users.v1.UsersService/GetUser",
            users::GetUserRequest {
                user_id: not_a_uuid(),
            }
            .encode_to_vec(),
            GRPC_DECODING_LIMIT,
        ),
        (
            "conversations",
            "/mesh.conversations.v1.ConversationsService/GetConversation",
            conversations::GetConversationRequest {
                conversation_id: not_a_uuid(),
            }
            .encode_to_vec(),
            GRPC_DECODING_LIMIT,
        ),
        (
            "memory",
            "/mesh.memory.v1.MemoryService/GetMemory",
            memory::GetMemoryRequest { id: not_a_uuid() }.encode_to_vec(),
            MEMORY_DECODING_LIMIT,
        ),
        (
            "scheduler",
            "/mesh.scheduler.v1.SchedulerService/GetReminder",
            scheduler::GetReminderRequest {
                reminder_id: not_a_uuid(),
            }
            .encode_to_vec(),
            GRPC_DECODING_LIMIT,
        ),
        (
            "billing",
            "/mesh.billing.v1.BillingService/GetEntitlements",
            // No owner at all.
            Vec::new(),
            GRPC_DECODING_LIMIT,
        ),
    ]
}

async fn grpc_barrage(
    mesh: &Mesh,
    rounds: usize,
    mismatches: &mut Vec<String>,
) -> BTreeMap<String, usize> {
    let mut answers = BTreeMap::new();
    for (service, path, invalid, limit) in invalid_requests() {
        let oversized = vec![0; limit + OVER_THE_LIMIT];
        let cases = [
            GrpcCase {
                what: "no bearer token",
                token: None,
                body: invalid.clone(),
                expected: Code::Unauthenticated,
            },
            GrpcCase {
                what: "a wrong bearer token",
                token: Some("not-the-token"),
                body: invalid.clone(),
                expected: Code::Unauthenticated,
            },
            GrpcCase {
                what: "bytes that are not protobuf",
                token: Some(TOKEN),
                body: vec![0xff; 16],
                expected: Code::Internal,
            },
            GrpcCase {
                what: "an invalid argument",
                token: Some(TOKEN),
                body: invalid,
                expected: Code::InvalidArgument,
            },
            GrpcCase {
                what: "a message over the decoding limit",
                token: Some(TOKEN),
                body: oversized.clone(),
                expected: Code::OutOfRange,
            },
            GrpcCase {
                what: "a message over the decoding limit, without a token",
                token: None,
                body: oversized,
                expected: Code::Unauthenticated,
            },
        ];
        let channel = mesh.channel(service);
        for case in &cases {
            for _ in 0..rounds {
                let code = raw_call(channel.clone(), path, case).await;
                *answers.entry(code.clone()).or_default() += 1;
                let expected = grpc_code(&Status::new(case.expected, ""));
                if code != expected {
                    mismatches.push(format!(
                        "{service} {path}, {}: {code}, not {expected}",
                        case.what
                    ));
                }
            }
        }
    }
    answers
}

/// Sends `case.body` as the request message of `path`, byte for byte; the
/// answer's code (`OK` if it succeeded).
async fn raw_call(
    channel: tonic::transport::Channel,
    path: &'static str,
    case: &GrpcCase,
) -> String {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return format!("not reachable: {e}");
    }
    let mut request = Request::new(case.body.clone());
    if let Some(token) = case.token {
        request.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {token}")).expect("ASCII"),
        );
    }
    match grpc
        .unary(request, PathAndQuery::from_static(path), RawBytes)
        .await
    {
        Ok(_) => "OK".into(),
        Err(status) => grpc_code(&status),
    }
}

/// A codec that sends and receives message bytes as they are, so a request
/// can be anything at all.
#[derive(Clone, Copy)]
struct RawBytes;

impl Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// One bad webhook and the status it must get.
struct WebhookCase {
    route: &'static str,
    what: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    expected: u16,
}

fn webhook_cases() -> Vec<WebhookCase> {
    let delivery = whatsapp::TextMessage {
        wa_id: "573001234567",
        profile_name: "Ana",
        wamid: "wamid.chaos.barrage",
        timestamp: 1_732_270_000,
        text: "hola",
    }
    .body();
    let signed = |body: &[u8]| {
        vec![(
            whatsapp::SIGNATURE_HEADER,
            whatsapp::signature(APP_SECRET, body),
        )]
    };
    let update = br#"{"update_id":1,"message":{"message_id":1,"from":{"id":7,"is_bot":false,"first_name":"Ana"},"chat":{"id":7,"type":"private"},"date":1732270000,"text":"hola"}}"#.to_vec();
    let telegram = |token: &str| vec![("X-Telegram-Bot-Api-Secret-Token", token.to_owned())];
    let event = br#"{"meta":{"event_name":"subscription_created"},"data":{"type":"subscriptions","id":"1"}}"#.to_vec();
    let lemonsqueezy = |body: &[u8]| {
        vec![(
            "X-Signature",
            whatsapp::hmac_sha256_hex(LEMONSQUEEZY_SECRET, body),
        )]
    };
    let not_json = b"this is not JSON {".to_vec();
    let big = vec![b' '; OVERSIZED_WEBHOOK];
    let big_event = vec![b' '; OVERSIZED_LEMONSQUEEZY];
    let case = |route, what, headers, body, expected| WebhookCase {
        route,
        what,
        headers,
        body,
        expected,
    };
    vec![
        case(
            "/webhooks/whatsapp",
            "unsigned",
            vec![],
            delivery.clone(),
            401,
        ),
        case(
            "/webhooks/whatsapp",
            "badly signed",
            vec![(
                whatsapp::SIGNATURE_HEADER,
                format!("sha256={}", "0".repeat(64)),
            )],
            delivery,
            401,
        ),
        case(
            "/webhooks/whatsapp",
            "not JSON",
            signed(&not_json),
            not_json.clone(),
            400,
        ),
        case(
            "/webhooks/whatsapp",
            "4 MiB",
            signed(&big),
            big.clone(),
            413,
        ),
        case(
            "/webhooks/telegram",
            "no secret token",
            vec![],
            update.clone(),
            401,
        ),
        case(
            "/webhooks/telegram",
            "a wrong secret token",
            telegram("not-the-secret"),
            update,
            401,
        ),
        case(
            "/webhooks/telegram",
            "not JSON",
            telegram(TELEGRAM_SECRET),
            not_json.clone(),
            400,
        ),
        case(
            "/webhooks/telegram",
            "4 MiB",
            telegram(TELEGRAM_SECRET),
            big,
            413,
        ),
        case(
            "/webhooks/lemonsqueezy",
            "unsigned",
            vec![],
            event.clone(),
            401,
        ),
        case(
            "/webhooks/lemonsqueezy",
            "badly signed",
            vec![("X-Signature", "0".repeat(64))],
            event,
            401,
        ),
        case(
            "/webhooks/lemonsqueezy",
            "not JSON",
            lemonsqueezy(&not_json),
            not_json,
            400,
        ),
        case(
            "/webhooks/lemonsqueezy",
            "1 MiB",
            lemonsqueezy(&big_event),
            big_event,
            413,
        ),
    ]
}

/// Sends every webhook case; the answers by status, and how many requests
/// that took (retries of unread answers included).
async fn webhook_barrage(
    mesh: &Mesh,
    http: &reqwest::Client,
    rounds: usize,
    mismatches: &mut Vec<String>,
) -> (BTreeMap<String, usize>, usize) {
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    let mut sent = 0;
    let mut record = |answer: String, expected: u16, what: String| {
        if answer != format!("HTTP {expected}") {
            mismatches.push(format!("{what}: {answer}, not HTTP {expected}"));
        }
        *answers.entry(answer).or_default() += 1;
    };
    let handshake = mesh.gateway_url(
        "/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=not-the-token&hub.challenge=1",
    );
    for _ in 0..rounds {
        sent += 1;
        let answer = match http.get(&handshake).send().await {
            Ok(answer) => format!("HTTP {}", answer.status().as_u16()),
            Err(e) => format!("no answer: {e}"),
        };
        record(
            answer,
            403,
            "WhatsApp handshake with a wrong verify token".into(),
        );
    }
    for case in webhook_cases() {
        for _ in 0..rounds {
            let mut answer = String::new();
            for _ in 0..WEBHOOK_TRIES {
                let mut request = http
                    .post(mesh.gateway_url(case.route))
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(case.body.clone());
                for (name, value) in &case.headers {
                    request = request.header(*name, value);
                }
                sent += 1;
                match request.send().await {
                    Ok(response) => {
                        answer = format!("HTTP {}", response.status().as_u16());
                        break;
                    }
                    Err(e) => answer = format!("no answer ({})", http_failure(&e)),
                }
            }
            record(
                answer,
                case.expected,
                format!("{} {}", case.route, case.what),
            );
        }
    }
    (answers, sent)
}
