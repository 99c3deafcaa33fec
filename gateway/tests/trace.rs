//! One trace per webhook: a signed WhatsApp delivery followed from the
//! gateway's HTTP span through its calls on the users, billing and
//! conversations services down to their SQL statements, as exported over
//! OTLP to a collector in this process.
//!
//! A test binary of its own: it installs the process's global subscriber,
//! which the tests in `api` must not share. The services run in this process
//! too (so one tracer provider exports them all), but each serves its own
//! TCP port and the gateway calls them over real gRPC: the `traceparent`
//! really crosses the wire, as between processes.

// The harness of the `api` tests, written once; this test uses part of it.
#[allow(dead_code)]
#[path = "api/fake_whatsapp.rs"]
mod fake_whatsapp;
#[allow(dead_code)]
#[path = "api/faults.rs"]
mod faults;
#[allow(dead_code)]
#[path = "api/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "api/payloads.rs"]
mod payloads;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use mesh_runtime::{
    telemetry::{TelemetryConfig, TelemetryGuard},
    testing::otlp::{Collector, Span, attribute, hex},
};

use crate::{
    harness::{ok_json, spawn_app},
    payloads::{sender, single, text, wamid},
};

/// The calls the gateway makes for one new text message: (gRPC service,
/// method).
const CALLS: [(&str, &str); 5] = [
    ("mesh.users.v1.UsersService", "UpsertUserByPhone"),
    ("mesh.billing.v1.BillingService", "ConsumeQuota"),
    (
        "mesh.conversations.v1.ConversationsService",
        "GetOrCreateActiveConversation",
    ),
    (
        "mesh.conversations.v1.ConversationsService",
        "RecordInboundMessage",
    ),
    ("mesh.users.v1.UsersService", "TouchLastMessage"),
];

#[tokio::test(flavor = "multi_thread")]
async fn a_whatsapp_webhook_is_one_trace_from_the_gateway_to_the_database() {
    let (collector, endpoint) = Collector::start().await;
    // One service name for the whole process: the services are told apart
    // by their spans' rpc.method.
    let telemetry = TelemetryConfig::from_env()
        .expect("RUST_LOG and LOG_FORMAT are valid")
        .with_otlp_endpoint(endpoint)
        .init("mesh")
        .expect("install the subscriber");
    let app = spawn_app().await;

    let (wa_id, phone) = sender();
    let id = wamid();
    let body = single(&wa_id, "Ana", text(&wa_id, &id, "Hola"));
    let answer = ok_json(app.post_whatsapp(&body).await).await;
    assert_eq!(answer["stored"], 1, "{answer}");

    let spans = exported(&collector, &telemetry).await;
    let by_id: HashMap<&[u8], &Span> = spans.iter().map(|s| (&s.span_id[..], s)).collect();

    // The delivery's HTTP span is the one root of its trace.
    let webhooks: Vec<&Span> = spans.iter().filter(|s| s.name == "http.request").collect();
    let [root] = webhooks[..] else {
        panic!("one http.request span, got {webhooks:#?}");
    };
    assert_eq!(attribute(root, "http.route"), Some("/webhooks/whatsapp"));
    assert!(
        root.parent_span_id.is_empty(),
        "the delivery starts the trace"
    );
    let trace: Vec<&Span> = spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id)
        .collect();
    let roots: Vec<&str> = trace
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(roots, ["http.request"], "exactly one root");
    // Every span of the trace hangs from the root, through spans exported.
    for span in &trace {
        let chain = chain(&by_id, span);
        assert_eq!(chain.last().unwrap().span_id, root.span_id, "{}", span.name);
    }

    for (service, method) in CALLS {
        let path = format!("/{service}/{method}");
        // Every server span of the call, wherever it is, is in this trace:
        // none started a trace of its own.
        let served: Vec<&Span> = spans
            .iter()
            .filter(|s| attribute(s, "rpc.method") == Some(path.as_str()))
            .collect();
        assert!(!served.is_empty(), "{path} was served");
        for server in served {
            assert_eq!(hex(&server.trace_id), hex(&root.trace_id), "{path}");
            // Its parent is the gateway's client span of the same call.
            let caller = by_id[&server.parent_span_id[..]];
            assert_eq!(caller.name, format!("{service}/{method}"));
            assert_eq!(attribute(caller, "rpc.service"), Some(service));
            assert_eq!(attribute(caller, "rpc.method"), Some(method));
            assert_eq!(caller.parent_span_id, root.span_id, "{path}");
        }
    }

    // A call one service makes to another is traced the same way: billing
    // asks users for the sender's time zone while serving ConsumeQuota.
    let nested = trace
        .iter()
        .find(|s| s.name == "mesh.users.v1.UsersService/GetUser")
        .expect("billing's call to users.GetUser is in the trace");
    let ancestry: Vec<&str> = chain(&by_id, nested)
        .iter()
        .map(|s| attribute(s, "rpc.method").unwrap_or(s.name.as_str()))
        .collect();
    assert_eq!(
        ancestry,
        [
            "GetUser",
            "fetch",
            "/mesh.billing.v1.BillingService/ConsumeQuota",
            "ConsumeQuota",
            "http.request"
        ],
        "billing's client span, its lookup, its server span, the gateway's client span, the delivery"
    );
    let served = trace
        .iter()
        .find(|s| attribute(s, "rpc.method") == Some("/mesh.users.v1.UsersService/GetUser"))
        .expect("users served it");
    assert_eq!(served.parent_span_id, nested.span_id);

    // What the sender said and their phone are the request's, not the
    // trace's: no exported span quotes them, in any trace, in its name,
    // attributes, events or status (the statements' bound values included).
    for span in &spans {
        let exported = format!(
            "{} {:?} {:?} {:?}",
            span.name, span.attributes, span.events, span.status
        );
        assert!(
            !exported.contains(&phone[1..]) && !exported.contains("Hola"),
            "{} quotes the sender: {span:#?}",
            span.name
        );
    }

    // The SQL statements: under the service that ran them, named by what
    // they do.
    let statements: Vec<&Span> = trace
        .iter()
        .copied()
        .filter(|s| attribute(s, "db.system.name") == Some("postgresql"))
        .collect();
    let mut under: HashMap<&str, Vec<&str>> = HashMap::new();
    for statement in &statements {
        assert!(
            attribute(statement, "db.operation.name").is_some_and(|op| !op.is_empty()),
            "{statement:#?}"
        );
        let chain = chain(&by_id, statement);
        let server = chain
            .iter()
            .find(|s| s.name == "grpc.request")
            .unwrap_or_else(|| panic!("{} ran outside a request: {chain:#?}", statement.name));
        let method = attribute(server, "rpc.method").unwrap();
        under
            .entry(method)
            .or_default()
            .push(statement.name.as_str());
    }
    for (service, method) in CALLS {
        let path = format!("/{service}/{method}");
        assert!(
            under.get(path.as_str()).is_some_and(|s| !s.is_empty()),
            "{path} ran statements: {under:#?}"
        );
    }
    let upsert = &under["/mesh.users.v1.UsersService/UpsertUserByPhone"];
    for statement in ["SELECT users", "INSERT users"] {
        assert!(upsert.contains(&statement), "{statement} in {upsert:?}");
    }
}

/// `span` and its ancestors up to the root, `span` first. Panics on a
/// parent that was never exported.
fn chain<'a>(by_id: &HashMap<&[u8], &'a Span>, span: &'a Span) -> Vec<&'a Span> {
    let mut chain = vec![span];
    let mut current = span;
    while !current.parent_span_id.is_empty() {
        current = by_id
            .get(&current.parent_span_id[..])
            .unwrap_or_else(|| panic!("the parent of {} was not exported", current.name));
        chain.push(current);
        assert!(chain.len() < 100, "a cycle through {}", current.name);
    }
    chain
}

/// Every span exported once the delivery's have all ended. A span is
/// exported when it ends, and the HTTP span may end just after the answer
/// left: flush until it and every call's server span are in.
async fn exported(collector: &Collector, telemetry: &TelemetryGuard) -> Vec<Span> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The flush waits on the exporter: not on a runtime thread.
        tokio::task::block_in_place(|| telemetry.flush()).expect("export the spans");
        let spans = collector.spans();
        let has = |name: &str, method: Option<&str>| {
            spans.iter().any(|s| {
                s.name == name && method.is_none_or(|m| attribute(s, "rpc.method") == Some(m))
            })
        };
        let complete = has("http.request", None)
            && CALLS.iter().all(|(service, method)| {
                has("grpc.request", Some(&format!("/{service}/{method}")))
            });
        if complete || Instant::now() > deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
