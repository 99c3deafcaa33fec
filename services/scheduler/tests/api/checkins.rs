//! ScheduleCheckIn, GetCheckIn, ListCheckIns, SetCheckInContent, SkipCheckIn.

use chrono::{Datelike, NaiveDate, TimeDelta, Utc, Weekday};
use mesh_proto::mesh::{
    conversations::v1::Channel,
    scheduler::v1::{self as pb, CheckInPriority, CheckInStatus},
    users::v1 as users_pb,
};
use tonic::Code;

use crate::harness::{TestApp, data, sorted_bad_fields, spawn_app, time_of};

/// A local day well ahead, so nothing about it is due during a test.
fn future_date(days_ahead: i64) -> String {
    (Utc::now().date_naive() + TimeDelta::days(days_ahead))
        .format("%Y-%m-%d")
        .to_string()
}

fn request(user_id: &str, slot_date: &str) -> pb::ScheduleCheckInRequest {
    pb::ScheduleCheckInRequest {
        check_in: Some(pb::CheckIn {
            user_id: user_id.into(),
            slot_date: slot_date.into(),
            ..Default::default()
        }),
        local_time: String::new(),
    }
}

pub async fn schedule(
    app: &mut TestApp,
    request: pb::ScheduleCheckInRequest,
) -> pb::ScheduleCheckInResponse {
    app.client
        .schedule_check_in(request)
        .await
        .expect("schedule a check-in")
        .into_inner()
}

/// A pending check-in of `user_id` on a day well ahead, without content.
pub async fn pending_check_in(app: &mut TestApp, user_id: &str, days_ahead: i64) -> pb::CheckIn {
    schedule(app, request(user_id, &future_date(days_ahead)))
        .await
        .check_in
        .expect("a check-in")
}

async fn set_preferred_checkin_time(app: &mut TestApp, user_id: &str, time: &str) {
    app.users
        .update_user(users_pb::UpdateUserRequest {
            user: Some(users_pb::User {
                id: user_id.into(),
                preferred_checkin_time: time.into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["preferred_checkin_time".into()],
            }),
        })
        .await
        .expect("set the preferred check-in time");
}

async fn stored(app: &TestApp, id: &str) -> (String, String, Option<String>) {
    let mut conn = app.db.admin_connection().await;
    sqlx::query_as(
        "SELECT status, status_reason, content FROM scheduler.check_ins WHERE id = $1::uuid",
    )
    .bind(id)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn scheduling_names_every_bad_field_and_writes_nothing() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .schedule_check_in(pb::ScheduleCheckInRequest {
            check_in: Some(pb::CheckIn {
                user_id: "not-a-uuid".into(),
                slot_date: "2030-13-01".into(),
                time_zone: "Mars/Olympus_Mons".into(),
                priority: 99,
                content: "x".repeat(4097),
                delivery: Some(pb::Delivery {
                    channel: 42,
                    whatsapp_template: None,
                }),
                ..Default::default()
            }),
            local_time: "25:00".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        sorted_bad_fields(&status),
        [
            "check_in.content",
            "check_in.delivery.channel",
            "check_in.priority",
            "check_in.slot_date",
            "check_in.time_zone",
            "check_in.user_id",
            "local_time",
        ]
    );

    let status = app
        .client
        .schedule_check_in(pb::ScheduleCheckInRequest::default())
        .await
        .unwrap_err();
    assert_eq!(sorted_bad_fields(&status), ["check_in"]);
    assert_eq!(app.count("check_ins").await, 0);
}

#[tokio::test]
async fn a_slot_in_the_past_or_of_an_unknown_user_is_refused() {
    let mut app = spawn_app().await;
    let user = app.new_user("Europe/Madrid").await;
    let status = app
        .client
        .schedule_check_in(request(&user.id, &future_date(-2)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(sorted_bad_fields(&status), ["check_in.slot_date"]);

    let stranger = uuid::Uuid::now_v7().to_string();
    let status = app
        .client
        .schedule_check_in(request(&stranger, &future_date(3)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(app.count("check_ins").await, 0);

    // Years chrono parses but no Timestamp holds: named, not a crash.
    for far in ["+262143-12-31", "10000-01-01", "0000-01-01"] {
        let status = app
            .client
            .schedule_check_in(request(&user.id, far))
            .await
            .unwrap_err();
        assert_eq!(sorted_bad_fields(&status), ["check_in.slot_date"], "{far}");
    }
    assert_eq!(app.count("check_ins").await, 0);
}

/// A scheduling repeated after the slot's time has passed answers the
/// slot's check-in (as any repeat does), not "has passed".
#[tokio::test]
async fn a_repeat_after_the_slot_time_answers_the_existing_check_in() {
    let mut app = spawn_app().await;
    let user = app.new_user("Europe/Madrid").await;
    let first = pending_check_in(&mut app, &user.id, 2).await;
    // Its time passes (moved into the past behind the API's back).
    let slot = future_date(-2);
    let mut conn = app.db.admin_connection().await;
    sqlx::query(
        "UPDATE scheduler.check_ins SET slot_date = $2::date,
             scheduled_time = now() - interval '2 days' WHERE id = $1::uuid",
    )
    .bind(&first.id)
    .bind(&slot)
    .execute(&mut conn)
    .await
    .unwrap();
    let again = schedule(&mut app, request(&user.id, &slot)).await;
    assert!(!again.created);
    assert_eq!(again.check_in.unwrap().id, first.id);
    assert_eq!(app.count("check_ins").await, 1);
}

#[tokio::test]
async fn a_slot_takes_one_check_in_and_a_second_scheduling_changes_nothing() {
    let mut app = spawn_app().await;
    let user = app.new_user("Europe/Madrid").await;
    let slot = future_date(5);
    let mut first_request = request(&user.id, &slot);
    let check_in = first_request.check_in.as_mut().unwrap();
    check_in.priority = CheckInPriority::FollowUp as i32;
    check_in.generation_context = data(serde_json::json!({"topic": "the interview"}));
    check_in.delivery = Some(pb::Delivery {
        channel: Channel::Telegram as i32,
        whatsapp_template: None,
    });
    first_request.local_time = "18:30".into();
    let first = schedule(&mut app, first_request).await;
    assert!(first.created);
    let first = first.check_in.unwrap();
    assert_eq!(first.slot_date, slot);
    assert_eq!(first.time_zone, "Europe/Madrid");
    assert_eq!(first.priority, CheckInPriority::FollowUp as i32);
    assert_eq!(first.status, CheckInStatus::Pending as i32);
    assert_eq!(first.next_attempt_time, first.scheduled_time);
    assert_eq!(
        first.delivery.as_ref().unwrap().channel,
        Channel::Telegram as i32
    );
    assert!(uuid::Uuid::parse_str(&first.send_token).is_ok());

    let mut second_request = request(&user.id, &slot);
    let check_in = second_request.check_in.as_mut().unwrap();
    check_in.content = "Another text".into();
    check_in.priority = CheckInPriority::Texture as i32;
    second_request.local_time = "07:00".into();
    let second = schedule(&mut app, second_request).await;
    assert!(!second.created);
    assert_eq!(second.check_in.unwrap(), first);
    assert_eq!(app.count("check_ins").await, 1);
}

#[tokio::test]
async fn the_time_zone_and_time_default_to_the_users() {
    let mut app = spawn_app().await;
    let user = app.new_user("Asia/Tokyo").await;
    let plain = pending_check_in(&mut app, &user.id, 10).await;
    assert_eq!(plain.time_zone, "Asia/Tokyo");
    assert_eq!(plain.priority, CheckInPriority::Generic as i32);
    // Tokyo is UTC+9 all year: 09:00 there is 00:00 UTC the same day.
    assert_eq!(
        time_of(plain.scheduled_time.as_ref().unwrap()).to_rfc3339(),
        format!("{}T00:00:00+00:00", future_date(10))
    );

    set_preferred_checkin_time(&mut app, &user.id, "07:45").await;
    let preferred = pending_check_in(&mut app, &user.id, 11).await;
    let day_before = future_date(10);
    assert_eq!(
        time_of(preferred.scheduled_time.as_ref().unwrap()).to_rfc3339(),
        format!("{day_before}T22:45:00+00:00")
    );

    // With no slot date: the first day whose 07:45 in Tokyo is still ahead.
    let next = schedule(&mut app, request(&user.id, ""))
        .await
        .check_in
        .unwrap();
    let at = time_of(next.scheduled_time.as_ref().unwrap());
    let local = at + TimeDelta::hours(9);
    assert_eq!(local.format("%H:%M").to_string(), "07:45");
    assert_eq!(local.format("%Y-%m-%d").to_string(), next.slot_date);
    let now = Utc::now();
    assert!(at > time_of(next.create_time.as_ref().unwrap()));
    assert!(
        at - TimeDelta::days(1) <= now,
        "{at} is not the first slot ahead"
    );
}

/// The second Sunday of March next year: when New York springs forward.
fn next_us_spring_forward() -> NaiveDate {
    let year = Utc::now().year() + 1;
    NaiveDate::from_weekday_of_month_opt(year, 3, Weekday::Sun, 2).unwrap()
}

#[tokio::test]
async fn a_time_skipped_by_dst_moves_forward_by_the_change() {
    let mut app = spawn_app().await;
    let user = app.new_user("America/New_York").await;
    let day = next_us_spring_forward();
    let mut skipped = request(&user.id, &day.to_string());
    skipped.local_time = "02:30".into();
    let check_in = schedule(&mut app, skipped).await.check_in.unwrap();
    // 02:30 EST never happens that night; 03:30 EDT is 07:30 UTC.
    assert_eq!(
        time_of(check_in.scheduled_time.as_ref().unwrap()).to_rfc3339(),
        format!("{day}T07:30:00+00:00")
    );
    assert_eq!(check_in.slot_date, day.to_string());
}

#[tokio::test]
async fn content_is_set_while_pending_and_skipping_ends_it() {
    let mut app = spawn_app().await;
    let user = app.new_user("Europe/Madrid").await;
    let check_in = pending_check_in(&mut app, &user.id, 4).await;
    assert_eq!(check_in.content, "");

    let with_content = app
        .client
        .set_check_in_content(pb::SetCheckInContentRequest {
            check_in_id: check_in.id.clone(),
            content: "How did the interview go?".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .check_in
        .unwrap();
    assert_eq!(with_content.content, "How did the interview go?");
    assert_eq!(with_content.status, CheckInStatus::Pending as i32);

    let skipped = app
        .client
        .skip_check_in(pb::SkipCheckInRequest {
            check_in_id: check_in.id.clone(),
            reason: "the user is travelling".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .check_in
        .unwrap();
    assert_eq!(skipped.status, CheckInStatus::Skipped as i32);
    assert_eq!(skipped.status_reason, "the user is travelling");

    let status = app
        .client
        .set_check_in_content(pb::SetCheckInContentRequest {
            check_in_id: check_in.id.clone(),
            content: "Too late".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("skipped"), "{}", status.message());
    let status = app
        .client
        .skip_check_in(pb::SkipCheckInRequest {
            check_in_id: check_in.id.clone(),
            reason: "again".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        stored(&app, &check_in.id).await,
        (
            "skipped".into(),
            "the user is travelling".into(),
            Some("How did the interview go?".into())
        )
    );

    let fetched = app
        .client
        .get_check_in(pb::GetCheckInRequest {
            check_in_id: check_in.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .check_in
        .unwrap();
    assert_eq!(fetched, skipped);
}

#[tokio::test]
async fn bad_content_and_reasons_are_refused_and_change_nothing() {
    let mut app = spawn_app().await;
    let user = app.new_user("Europe/Madrid").await;
    let check_in = pending_check_in(&mut app, &user.id, 4).await;

    let status = app
        .client
        .set_check_in_content(pb::SetCheckInContentRequest {
            check_in_id: "nope".into(),
            content: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(sorted_bad_fields(&status), ["check_in_id", "content"]);
    let status = app
        .client
        .skip_check_in(pb::SkipCheckInRequest {
            check_in_id: check_in.id.clone(),
            reason: "r".repeat(501),
        })
        .await
        .unwrap_err();
    assert_eq!(sorted_bad_fields(&status), ["reason"]);
    let status = app
        .client
        .skip_check_in(pb::SkipCheckInRequest {
            check_in_id: check_in.id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(sorted_bad_fields(&status), ["reason"]);
    assert_eq!(
        stored(&app, &check_in.id).await,
        ("pending".into(), String::new(), None)
    );

    let unknown = uuid::Uuid::now_v7().to_string();
    for status in [
        app.client
            .skip_check_in(pb::SkipCheckInRequest {
                check_in_id: unknown.clone(),
                reason: "why".into(),
            })
            .await
            .unwrap_err(),
        app.client
            .get_check_in(pb::GetCheckInRequest {
                check_in_id: unknown.clone(),
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::NotFound);
    }
}

#[tokio::test]
async fn a_users_check_ins_list_newest_slot_first_by_pages() {
    let mut app = spawn_app().await;
    let user = app.new_user("Europe/Madrid").await;
    let other = app.new_user("Europe/Madrid").await;
    let mut ids = Vec::new();
    for days_ahead in [3, 5, 4] {
        ids.push(pending_check_in(&mut app, &user.id, days_ahead).await.id);
    }
    pending_check_in(&mut app, &other.id, 3).await;
    app.client
        .skip_check_in(pb::SkipCheckInRequest {
            check_in_id: ids[1].clone(),
            reason: "not today".into(),
        })
        .await
        .unwrap();

    let first = app
        .client
        .list_check_ins(pb::ListCheckInsRequest {
            user_id: user.id.clone(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let dates: Vec<_> = first
        .check_ins
        .iter()
        .map(|c| c.slot_date.clone())
        .collect();
    assert_eq!(dates, [future_date(5), future_date(4)]);
    assert!(!first.next_page_token.is_empty());
    let second = app
        .client
        .list_check_ins(pb::ListCheckInsRequest {
            user_id: user.id.clone(),
            page_size: 2,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let dates: Vec<_> = second
        .check_ins
        .iter()
        .map(|c| c.slot_date.clone())
        .collect();
    assert_eq!(dates, [future_date(3)]);
    assert_eq!(second.next_page_token, "");

    let pending = app
        .client
        .list_check_ins(pb::ListCheckInsRequest {
            user_id: user.id.clone(),
            statuses: vec![CheckInStatus::Pending as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let pending_ids: Vec<_> = pending.check_ins.iter().map(|c| c.id.clone()).collect();
    assert_eq!(pending_ids, [ids[2].clone(), ids[0].clone()]);

    let status = app
        .client
        .list_check_ins(pb::ListCheckInsRequest {
            user_id: String::new(),
            statuses: vec![77],
            page_size: -1,
            page_token: "bogus".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        sorted_bad_fields(&status),
        ["page_size", "page_token", "statuses", "user_id"]
    );
}

/// While a dispatcher sends a check-in, new content and skips are
/// UNAVAILABLE (retry shortly); once a send was attempted, new content is
/// refused for good (a retry resends the first text), and a skip still works.
#[tokio::test]
async fn a_check_in_being_sent_or_attempted_keeps_its_content() {
    let mut app = spawn_app().await;
    let user = app.new_user("Europe/Madrid").await;
    let check_in = pending_check_in(&mut app, &user.id, 3).await;
    let set = |content: &str| pb::SetCheckInContentRequest {
        check_in_id: check_in.id.clone(),
        content: content.into(),
    };
    app.client.set_check_in_content(set("first")).await.unwrap();
    // A dispatcher's attempt: the request pinned, the lease held.
    let mut conn = app.db.admin_connection().await;
    sqlx::query(
        "UPDATE scheduler.check_ins
         SET send_request = '{\"channel\": \"whatsapp\", \"text\": \"first\"}'
         WHERE id = $1::uuid",
    )
    .bind(&check_in.id)
    .execute(&mut conn)
    .await
    .unwrap();
    app.lease("check_ins", &check_in.id, Some(60)).await;
    let busy = app
        .client
        .set_check_in_content(set("second"))
        .await
        .unwrap_err();
    assert_eq!(busy.code(), Code::Unavailable, "{busy:?}");
    let skip = pb::SkipCheckInRequest {
        check_in_id: check_in.id.clone(),
        reason: "not today".into(),
    };
    let busy = app.client.skip_check_in(skip.clone()).await.unwrap_err();
    assert_eq!(busy.code(), Code::Unavailable, "{busy:?}");

    // The attempt ended (a retry is due later): the lease is gone.
    app.lease("check_ins", &check_in.id, None).await;
    let refused = app
        .client
        .set_check_in_content(set("second"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("attempted"), "{refused:?}");
    assert_eq!(
        stored(&app, &check_in.id).await,
        ("pending".into(), String::new(), Some("first".into()))
    );
    app.client.skip_check_in(skip).await.unwrap();
    assert_eq!(stored(&app, &check_in.id).await.0, "skipped");
}
