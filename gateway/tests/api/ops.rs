//! The gateway as operators meet it: health, readiness, metrics, the
//! verification handshake, and a downstream service going away mid-test.

use crate::{
    harness::{VERIFY_TOKEN, ok_json, spawn_app},
    payloads::{sender, single, text, wamid},
};

#[tokio::test(flavor = "multi_thread")]
async fn healthz_readyz_and_metrics() {
    let mut app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"users": "SERVING", "conversations": "SERVING", "billing": "SERVING"})
    );

    let (wa_id, _) = sender();
    ok_json(
        app.post_whatsapp(&single(&wa_id, "Ana", text(&wa_id, &wamid(), "Hola")))
            .await,
    )
    .await;
    assert_eq!(app.post_whatsapp(b"{}").await.status(), 400);

    app.stop_conversations().await;
    let not_ready = app.get("/readyz").await;
    assert_eq!(not_ready.status(), 503);
    let body: serde_json::Value = not_ready.json().await.unwrap();
    assert_eq!(body["users"], "SERVING");
    assert_ne!(body["conversations"], "SERVING", "{body}");
    assert_eq!(
        app.post_whatsapp(&single(&wa_id, "Ana", text(&wa_id, &wamid(), "otra")))
            .await
            .status(),
        503
    );

    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    for line in [
        r#"gateway_http_requests_total{route="/webhooks/whatsapp",outcome="recorded"} 1"#,
        r#"gateway_http_requests_total{route="/webhooks/whatsapp",outcome="bad_request"} 1"#,
        r#"gateway_http_requests_total{route="/webhooks/whatsapp",outcome="downstream_error"} 1"#,
        r#"gateway_webhook_items_total{source="whatsapp",kind="message",result="stored"} 1"#,
        "# TYPE gateway_http_request_duration_seconds histogram",
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("gateway_downstream_errors_total{service=\"conversations\"")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_verification_handshake_echoes_the_challenge_only_for_our_token() {
    let app = spawn_app().await;
    let ok = app
        .get(&format!(
            "/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444"
        ))
        .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "1158201444");
    for (query, expected) in [
        (
            "hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1",
            403,
        ),
        (
            &format!("hub.mode=unsubscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1")
                as &str,
            403,
        ),
        ("hub.mode=subscribe&hub.challenge=1", 400),
        (
            &format!(
                "hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=%3Cscript%3E"
            ) as &str,
            400,
        ),
    ] {
        let answer = app.get(&format!("/webhooks/whatsapp?{query}")).await;
        assert_eq!(answer.status(), expected, "{query}");
    }
}

/// The conversations service stops mid-test: the delivery is answered 5xx
/// (the provider will retry), and the retry after it is back stores the
/// message exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_downstream_is_5xx_then_the_retry_stores_exactly_once() {
    let mut app = spawn_app().await;
    let (wa_id, phone) = sender();
    ok_json(
        app.post_whatsapp(&single(&wa_id, "Ana", text(&wa_id, &wamid(), "antes")))
            .await,
    )
    .await;

    app.stop_conversations().await;
    let body = single(&wa_id, "Ana", text(&wa_id, &wamid(), "durante"));
    let refused = app.post_whatsapp(&body).await;
    assert!(refused.status().is_server_error(), "{}", refused.status());
    let again = app.post_whatsapp(&body).await;
    assert!(again.status().is_server_error());

    app.start_conversations().await;
    let answer = ok_json(app.post_whatsapp(&body).await).await;
    assert_eq!(answer["stored"], 1, "{answer}");
    let answer = ok_json(app.post_whatsapp(&body).await).await;
    assert_eq!(answer["duplicates"], 1, "{answer}");
    assert_eq!(app.texts_from(&phone).await, ["antes", "durante"]);
}
