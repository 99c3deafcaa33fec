//! GetMessagingWindow: the WhatsApp customer service window (24 h from the
//! user's last message), the free entry point (72 h from our first reply to a
//! user who came from an ad), and the proactive messages of the local day.
//!
//! Our replies (which open the free entry point) come from SendMessage: the
//! last tests send through the fake WhatsApp API; the others arrange the free
//! entry point start as the superuser.

use chrono::{DateTime, Duration, Utc};
use mesh_proto::mesh::conversations::v1::{self as pb};
use pb::send_message_request::{Content, Target};
use tonic::Status;

use mesh_fake_providers::Providers;

use crate::harness::{
    Outbound, TestApp, fresh_user, local_midnight, micros_ago, sorted_bad_fields, spawn_app,
    spawn_with, time_of, ts, wamid,
};

async fn window(
    app: &mut TestApp,
    user_id: &str,
    time_zone: &str,
) -> Result<pb::GetMessagingWindowResponse, Status> {
    app.client
        .get_messaging_window(pb::GetMessagingWindowRequest {
            user_id: user_id.into(),
            time_zone: time_zone.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Records an inbound WhatsApp user message sent at `provider_time`.
async fn inbound_at(
    app: &mut TestApp,
    conversation_id: &str,
    provider_time: Option<DateTime<Utc>>,
    referral: Option<pb::Referral>,
) -> pb::Message {
    app.client
        .record_inbound_message(pb::RecordInboundMessageRequest {
            conversation_id: conversation_id.into(),
            message: Some(pb::Message {
                content: "hola".into(),
                provider_message_id: wamid(),
                provider_time: provider_time.map(ts),
                ..Default::default()
            }),
            referral,
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap()
}

fn closed() -> Option<pb::MessagingWindow> {
    Some(pb::MessagingWindow {
        open: false,
        expire_time: None,
    })
}

fn open_until(time: DateTime<Utc>) -> Option<pb::MessagingWindow> {
    Some(pb::MessagingWindow {
        open: true,
        expire_time: Some(ts(time)),
    })
}

fn closed_at(time: DateTime<Utc>) -> Option<pb::MessagingWindow> {
    Some(pb::MessagingWindow {
        open: false,
        expire_time: Some(ts(time)),
    })
}

/// Sets columns of the user's messaging_windows row (as the superuser).
async fn arrange(app: &TestApp, user_id: &str, set: &str) {
    let mut conn = app.db.admin_connection().await;
    let updated = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE conversations.messaging_windows SET {set} WHERE user_id = $1::uuid"
    )))
    .bind(user_id)
    .execute(&mut conn)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(updated, 1, "the user has a windows row");
}

/// (last_inbound_time, free_entry_point_start) as stored.
async fn stored_times(
    app: &TestApp,
    user_id: &str,
) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let mut conn = app.db.admin_connection().await;
    sqlx::query_as(
        "SELECT last_inbound_time, free_entry_point_start FROM conversations.messaging_windows WHERE user_id = $1::uuid",
    )
    .bind(user_id)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn without_history_every_window_is_closed() {
    let mut app = spawn_app().await;
    let answer = window(&mut app, &fresh_user(), "").await.unwrap();
    assert_eq!(
        answer,
        pb::GetMessagingWindowResponse {
            free_form_allowed: false,
            free_form_until: None,
            customer_service: closed(),
            free_entry_point: closed(),
            proactive_messages_today: 0,
        }
    );
    assert_eq!(
        app.count("messaging_windows").await,
        0,
        "reading writes nothing"
    );
}

#[tokio::test]
async fn an_inbound_whatsapp_user_message_opens_the_customer_service_window() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    let conversation = app.conversation(&user, pb::Channel::Whatsapp).await;
    let message = inbound_at(&mut app, &conversation.id, None, None).await;
    let expire = time_of(message.create_time.as_ref().unwrap()) + Duration::hours(24);

    let answer = window(&mut app, &user, "America/Bogota").await.unwrap();
    assert!(answer.free_form_allowed);
    assert_eq!(answer.free_form_until, Some(ts(expire)));
    assert_eq!(answer.customer_service, open_until(expire));
    assert_eq!(answer.free_entry_point, closed());
    assert_eq!(answer.proactive_messages_today, 0);
    let from_now = expire - Utc::now();
    assert!(from_now > Duration::hours(23) && from_now <= Duration::hours(24));

    // A later message moves it on.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let later = inbound_at(&mut app, &conversation.id, None, None).await;
    let refreshed = time_of(later.create_time.as_ref().unwrap()) + Duration::hours(24);
    assert!(refreshed > expire);
    assert_eq!(
        window(&mut app, &user, "").await.unwrap().customer_service,
        open_until(refreshed)
    );
}

#[tokio::test]
async fn telegram_and_system_messages_do_not_open_it() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    let telegram = app.conversation(&user, pb::Channel::Telegram).await;
    inbound_at(&mut app, &telegram.id, None, None).await;
    let whatsapp = app.conversation(&user, pb::Channel::Whatsapp).await;
    app.client
        .record_inbound_message(pb::RecordInboundMessageRequest {
            conversation_id: whatsapp.id.clone(),
            message: Some(pb::Message {
                role: pb::MessageRole::System as i32,
                content: "the user changed their number".into(),
                ..Default::default()
            }),
            referral: None,
        })
        .await
        .unwrap();
    let answer = window(&mut app, &user, "").await.unwrap();
    assert!(!answer.free_form_allowed);
    assert_eq!(answer.customer_service, closed());
    assert_eq!(app.count("messaging_windows").await, 0);
}

#[tokio::test]
async fn the_window_counts_from_when_the_user_sent_the_message() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    let conversation = app.conversation(&user, pb::Channel::Whatsapp).await;

    // Sent 20 h ago, delivered to us now: 4 h left.
    let sent = micros_ago(Duration::hours(20));
    inbound_at(&mut app, &conversation.id, Some(sent), None).await;
    let answer = window(&mut app, &user, "").await.unwrap();
    assert_eq!(
        answer.customer_service,
        open_until(sent + Duration::hours(24))
    );
    assert_eq!(answer.free_form_until, Some(ts(sent + Duration::hours(24))));

    // An even older message arriving late does not move it back.
    inbound_at(
        &mut app,
        &conversation.id,
        Some(micros_ago(Duration::hours(22))),
        None,
    )
    .await;
    assert_eq!(
        window(&mut app, &user, "").await.unwrap().customer_service,
        open_until(sent + Duration::hours(24))
    );

    // A provider time in the future counts as now.
    let future = inbound_at(
        &mut app,
        &conversation.id,
        Some(Utc::now() + Duration::hours(5)),
        None,
    )
    .await;
    let expire = time_of(future.create_time.as_ref().unwrap()) + Duration::hours(24);
    assert_eq!(
        window(&mut app, &user, "").await.unwrap().customer_service,
        open_until(expire)
    );
}

#[tokio::test]
async fn a_message_sent_more_than_24_hours_ago_leaves_it_closed() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    let conversation = app.conversation(&user, pb::Channel::Whatsapp).await;
    let sent = micros_ago(Duration::hours(25));
    inbound_at(&mut app, &conversation.id, Some(sent), None).await;
    let answer = window(&mut app, &user, "").await.unwrap();
    assert!(!answer.free_form_allowed);
    assert_eq!(answer.free_form_until, None);
    assert_eq!(
        answer.customer_service,
        closed_at(sent + Duration::hours(24))
    );

    // And one that was open closes after 24 h.
    inbound_at(&mut app, &conversation.id, None, None).await;
    assert!(window(&mut app, &user, "").await.unwrap().free_form_allowed);
    let long_ago = micros_ago(Duration::hours(24) + Duration::minutes(1));
    arrange(
        &app,
        &user,
        &format!("last_inbound_time = '{}'", long_ago.to_rfc3339()),
    )
    .await;
    let answer = window(&mut app, &user, "").await.unwrap();
    assert!(!answer.free_form_allowed);
    assert_eq!(
        answer.customer_service,
        closed_at(long_ago + Duration::hours(24))
    );
}

#[tokio::test]
async fn a_referral_is_recorded_and_the_free_entry_point_waits_for_our_reply() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    let conversation = app.conversation(&user, pb::Channel::Whatsapp).await;
    let referral = pb::Referral {
        source_url: "https://fb.me/ad-1".into(),
        source_id: "120201".into(),
        source_type: "ad".into(),
        headline: "Sleep better".into(),
        ctwa_clid: "ARAkLkA8rmlFeiCktEJQ".into(),
    };
    let message = inbound_at(&mut app, &conversation.id, None, Some(referral)).await;

    let mut conn = app.db.admin_connection().await;
    let (referral_time, stored): (Option<DateTime<Utc>>, Option<serde_json::Value>) = sqlx::query_as(
        "SELECT referral_time, referral FROM conversations.messaging_windows WHERE user_id = $1::uuid",
    )
    .bind(&user)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        referral_time,
        Some(time_of(message.create_time.as_ref().unwrap()))
    );
    assert_eq!(
        stored,
        Some(serde_json::json!({
            "source_url": "https://fb.me/ad-1", "source_id": "120201", "source_type": "ad",
            "headline": "Sleep better", "ctwa_clid": "ARAkLkA8rmlFeiCktEJQ",
        }))
    );
    // Until we reply, only the customer service window is open.
    let answer = window(&mut app, &user, "").await.unwrap();
    assert_eq!(answer.free_entry_point, closed());
    assert!(answer.customer_service.unwrap().open);

    // A later message without a referral keeps the referral.
    inbound_at(&mut app, &conversation.id, None, None).await;
    let kept: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT referral FROM conversations.messaging_windows WHERE user_id = $1::uuid",
    )
    .bind(&user)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(kept, stored);

    // A referral on Telegram is no WhatsApp ad: nothing recorded.
    let other = fresh_user();
    let telegram = app.conversation(&other, pb::Channel::Telegram).await;
    inbound_at(
        &mut app,
        &telegram.id,
        None,
        Some(pb::Referral {
            source_url: "https://t.me/ad".into(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(app.count("messaging_windows").await, 1);
}

/// BUG(lead): windows.rs `note_inbound` keeps referral_time at the newest
/// referral (GREATEST) but replaces `referral` with whichever arrived last
/// (COALESCE(EXCLUDED.referral, ...)): an older ad message delivered late
/// leaves the newer ad's time paired with the older ad. The schema says
/// "When the user last came from an ad, and which": the row should keep the
/// newer ad's referral with its time.
#[tokio::test]
async fn a_late_older_referral_does_not_replace_the_newer_one() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    let conversation = app.conversation(&user, pb::Channel::Whatsapp).await;
    let ad = |id: &str| pb::Referral {
        source_id: id.into(),
        source_url: format!("https://fb.me/{id}"),
        ..Default::default()
    };
    let newer = micros_ago(Duration::hours(1));
    inbound_at(&mut app, &conversation.id, Some(newer), Some(ad("newer"))).await;
    inbound_at(
        &mut app,
        &conversation.id,
        Some(micros_ago(Duration::hours(2))),
        Some(ad("older")),
    )
    .await;

    let mut conn = app.db.admin_connection().await;
    let (time, source): (Option<DateTime<Utc>>, Option<String>) = sqlx::query_as(
        "SELECT referral_time, referral->>'source_id' FROM conversations.messaging_windows WHERE user_id = $1::uuid",
    )
    .bind(&user)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(time, Some(newer));
    assert_eq!(
        source.as_deref(),
        Some("newer"),
        "the referral and its time describe the same ad"
    );
}

#[tokio::test]
async fn the_free_entry_point_runs_72_hours_from_our_first_reply() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    let conversation = app.conversation(&user, pb::Channel::Whatsapp).await;
    inbound_at(
        &mut app,
        &conversation.id,
        None,
        Some(pb::Referral {
            source_id: "ad-1".into(),
            ..Default::default()
        }),
    )
    .await;

    // We replied 30 h ago, the user last wrote 30 h ago: only the free entry point is open.
    let replied = micros_ago(Duration::hours(30));
    let wrote = micros_ago(Duration::hours(30));
    arrange(
        &app,
        &user,
        &format!(
            "free_entry_point_start = '{}', last_inbound_time = '{}', referral_time = '{}'",
            replied.to_rfc3339(),
            wrote.to_rfc3339(),
            wrote.to_rfc3339()
        ),
    )
    .await;
    let answer = window(&mut app, &user, "").await.unwrap();
    assert!(answer.free_form_allowed);
    assert_eq!(
        answer.free_form_until,
        Some(ts(replied + Duration::hours(72)))
    );
    assert_eq!(
        answer.free_entry_point,
        open_until(replied + Duration::hours(72))
    );
    assert_eq!(
        answer.customer_service,
        closed_at(wrote + Duration::hours(24))
    );

    // Both open: free-form until the later of the two.
    inbound_at(&mut app, &conversation.id, None, None).await;
    let answer = window(&mut app, &user, "").await.unwrap();
    assert!(answer.customer_service.as_ref().unwrap().open);
    assert_eq!(
        answer.free_form_until,
        Some(ts(replied + Duration::hours(72)))
    );
    let (last_inbound, _) = stored_times(&app, &user).await;
    let customer_until = last_inbound.unwrap() + Duration::hours(24);
    // With the reply 60 h ago the customer service window outlasts it.
    let replied = micros_ago(Duration::hours(60));
    arrange(
        &app,
        &user,
        &format!("free_entry_point_start = '{}'", replied.to_rfc3339()),
    )
    .await;
    let answer = window(&mut app, &user, "").await.unwrap();
    assert_eq!(answer.free_form_until, Some(ts(customer_until)));
    assert_eq!(
        answer.free_entry_point,
        open_until(replied + Duration::hours(72))
    );

    // 73 h after the reply and 25 h after the last message: everything closed.
    let replied = micros_ago(Duration::hours(73));
    let wrote = micros_ago(Duration::hours(25));
    arrange(
        &app,
        &user,
        &format!(
            "free_entry_point_start = '{}', last_inbound_time = '{}'",
            replied.to_rfc3339(),
            wrote.to_rfc3339()
        ),
    )
    .await;
    let answer = window(&mut app, &user, "").await.unwrap();
    assert!(!answer.free_form_allowed);
    assert_eq!(answer.free_form_until, None);
    assert_eq!(
        answer.free_entry_point,
        closed_at(replied + Duration::hours(72))
    );
    assert_eq!(
        answer.customer_service,
        closed_at(wrote + Duration::hours(24))
    );
}

#[tokio::test]
async fn proactive_messages_today_count_the_users_local_day() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    let whatsapp = app.conversation(&user, pb::Channel::Whatsapp).await;
    let telegram = app.conversation(&user, pb::Channel::Telegram).await;
    let someone_else = app.conversation(&fresh_user(), pb::Channel::Whatsapp).await;

    // Two zones whose days start at different instants: UTC and Bogota (UTC-5).
    let now = Utc::now();
    let utc: chrono_tz::Tz = "UTC".parse().unwrap();
    let bogota: chrono_tz::Tz = "America/Bogota".parse().unwrap();
    let (utc_day, bogota_day) = (local_midnight(utc, now), local_midnight(bogota, now));
    let (earlier, later) = (utc_day.min(bogota_day), utc_day.max(bogota_day));
    let between = earlier + (later - earlier) / 2;

    let proactive = |at: DateTime<Utc>| Outbound {
        proactive: true,
        create_time: Some(at),
        ..Default::default()
    };
    // Today in both zones.
    app.insert_outbound(&whatsapp.id, proactive(Utc::now() - Duration::seconds(1)))
        .await;
    app.insert_outbound(&whatsapp.id, proactive(later)).await;
    // Today only in the zone whose day started earlier.
    app.insert_outbound(&whatsapp.id, proactive(between)).await;
    // Yesterday in both.
    app.insert_outbound(&whatsapp.id, proactive(earlier - Duration::minutes(1)))
        .await;
    // Not counted: not proactive, not WhatsApp, someone else's, failed, inbound.
    app.insert_outbound(&whatsapp.id, Outbound::default()).await;
    app.insert_outbound(&telegram.id, proactive(Utc::now()))
        .await;
    app.insert_outbound(&someone_else.id, proactive(Utc::now()))
        .await;
    app.insert_outbound(
        &whatsapp.id,
        Outbound {
            delivery_status: "failed",
            ..proactive(Utc::now())
        },
    )
    .await;
    app.inbound(&whatsapp.id, "hola", &wamid()).await;

    let in_zone = |day_start: DateTime<Utc>| if day_start == earlier { 3 } else { 2 };
    assert_eq!(
        window(&mut app, &user, "")
            .await
            .unwrap()
            .proactive_messages_today,
        in_zone(utc_day),
        "UTC by default"
    );
    assert_eq!(
        window(&mut app, &user, "UTC")
            .await
            .unwrap()
            .proactive_messages_today,
        in_zone(utc_day)
    );
    assert_eq!(
        window(&mut app, &user, "America/Bogota")
            .await
            .unwrap()
            .proactive_messages_today,
        in_zone(bogota_day)
    );
    assert_eq!(
        window(&mut app, &fresh_user(), "America/Bogota")
            .await
            .unwrap()
            .proactive_messages_today,
        0
    );
}

#[tokio::test]
async fn get_messaging_window_names_every_bad_field() {
    let mut app = spawn_app().await;
    let user = fresh_user();
    for (user_id, zone, expected) in [
        (user.as_str(), "Mars/Olympus_Mons", &["time_zone"][..]),
        (user.as_str(), "-05:00", &["time_zone"]),
        ("", "", &["user_id"]),
        ("nope", "", &["user_id"]),
        ("nope", "Nowhere", &["time_zone", "user_id"]),
    ] {
        let status = window(&mut app, user_id, zone).await.unwrap_err();
        assert_eq!(sorted_bad_fields(&status), expected, "{user_id:?} {zone:?}");
    }
}

// ---- Our replies open the free entry point (SendMessage against the fake
// WhatsApp API: the send path calls windows::note_outbound) ----

async fn reply(app: &mut TestApp, user_id: &str) {
    app.client
        .send_message(pb::SendMessageRequest {
            target: Some(Target::UserId(user_id.into())),
            channel: pb::Channel::Whatsapp as i32,
            content: Some(Content::Text("¡Hola! ¿En qué te ayudo?".into())),
            ..Default::default()
        })
        .await
        .expect("the reply goes out");
}

/// The app with fake providers, and a user who wrote from an ad (when `ad`).
async fn user_from_ad(ad: bool) -> (TestApp, Providers, String) {
    let providers = Providers::start().await;
    let mut app = spawn_with(|config| crate::harness::use_fakes(&providers, config)).await;
    let user = app.new_user().await;
    let conversation = app.conversation(&user.id, pb::Channel::Whatsapp).await;
    let referral = ad.then(|| pb::Referral {
        source_id: "ad-7".into(),
        ctwa_clid: "clid-7".into(),
        ..Default::default()
    });
    inbound_at(&mut app, &conversation.id, None, referral).await;
    (app, providers, user.id)
}

#[tokio::test]
async fn our_first_reply_to_a_user_from_an_ad_opens_the_free_entry_point() {
    let (mut app, _providers, user) = user_from_ad(true).await;
    let before = Utc::now() - Duration::seconds(1);
    reply(&mut app, &user).await;
    let after = Utc::now() + Duration::seconds(1);

    let answer = window(&mut app, &user, "").await.unwrap();
    let entry = answer.free_entry_point.unwrap();
    assert!(entry.open);
    let until = time_of(entry.expire_time.as_ref().unwrap());
    assert!(
        until >= before + Duration::hours(72) && until <= after + Duration::hours(72),
        "{until}"
    );
    assert_eq!(
        answer.free_form_until, entry.expire_time,
        "the later of the two windows"
    );

    // A second reply does not move it.
    reply(&mut app, &user).await;
    let again = window(&mut app, &user, "").await.unwrap();
    assert_eq!(
        again.free_entry_point.unwrap().expire_time,
        entry.expire_time
    );
}

#[tokio::test]
async fn a_reply_without_a_recent_referral_opens_no_free_entry_point() {
    // No ad at all.
    let (mut app, _providers, user) = user_from_ad(false).await;
    reply(&mut app, &user).await;
    assert_eq!(
        window(&mut app, &user, "").await.unwrap().free_entry_point,
        closed()
    );
    assert_eq!(stored_times(&app, &user).await.1, None);

    // An ad more than 24 h before our first reply.
    let (mut app, _providers, user) = user_from_ad(true).await;
    arrange(&app, &user, "referral_time = now() - interval '25 hours'").await;
    reply(&mut app, &user).await;
    assert_eq!(
        window(&mut app, &user, "").await.unwrap().free_entry_point,
        closed()
    );
    assert_eq!(stored_times(&app, &user).await.1, None);
}
