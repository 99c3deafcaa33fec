use futures::future::join_all;
use mesh_proto::mesh::users::v1::*;
use prost_types::Timestamp;
use tonic::Code;

use crate::harness::{Client, TestApp, bad_fields, create_user, mask, spawn_app};

async fn with_phone(app: &mut TestApp, phone: &str) -> User {
    create_user(
        &mut app.client,
        User {
            phone: Some(phone.into()),
            ..Default::default()
        },
    )
    .await
}

#[tokio::test]
async fn create_then_get_round_trips_every_field() {
    let mut app = spawn_app().await;
    let preferences = mesh_runtime::convert::json_to_struct(&serde_json::json!({
        "voice": "calm", "emoji": false, "topics": ["sleep", "work"]
    }));
    let created = create_user(
        &mut app.client,
        User {
            phone: Some("573001234567".into()),
            whatsapp_profile_name: "Ana WA".into(),
            display_name: "Ana".into(),
            language: "EN".into(),
            timezone: "Europe/Madrid".into(),
            preferences: Some(preferences.clone()),
            companion_name: "Luz".into(),
            preferred_checkin_time: "08:30".into(),
            support_style: "gentle".into(),
            telegram_user_id: Some(4_503_599_627_370_495), // needs 52 bits
            telegram_username: "ana".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(created.phone.as_deref(), Some("+573001234567"));
    assert_eq!(created.language, "en");
    assert_eq!(created.preferences, Some(preferences));
    assert_eq!(created.preferred_checkin_time, "08:30");
    assert_eq!(created.telegram_user_id, Some(4_503_599_627_370_495));
    assert!(created.is_active);
    assert!(created.create_time.is_some() && created.last_message_time.is_none());
    assert_eq!(
        uuid::Uuid::parse_str(&created.id)
            .unwrap()
            .get_version_num(),
        7
    );

    let fetched = app
        .client
        .get_user(GetUserRequest {
            user_id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(fetched, created);
}

#[tokio::test]
async fn a_user_created_with_nothing_gets_the_defaults() {
    let mut app = spawn_app().await;
    let user = create_user(&mut app.client, User::default()).await;
    assert_eq!(user.language, "es");
    assert_eq!(user.timezone, "America/Bogota");
    assert_eq!(user.phone, None);
    assert_eq!(user.preferred_checkin_time, "");
}

#[tokio::test]
async fn bad_create_names_each_field_and_writes_nothing() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .create_user(CreateUserRequest {
            user: Some(User {
                phone: Some("12".into()),
                language: "klingon".into(),
                timezone: "Mars/Olympus".into(),
                preferred_checkin_time: "25:00".into(),
                support_style: "x".repeat(65),
                telegram_user_id: Some(-5),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        bad_fields(&status),
        [
            "user.phone",
            "user.language",
            "user.timezone",
            "user.preferred_checkin_time",
            "user.support_style",
            "user.telegram_user_id"
        ]
    );
    let missing = app
        .client
        .create_user(CreateUserRequest::default())
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&missing), ["user"]);
    assert_eq!(app.count("users").await, 0);
}

#[tokio::test]
async fn a_taken_phone_or_telegram_id_is_already_exists() {
    let mut app = spawn_app().await;
    with_phone(&mut app, "+573001234567").await;
    let status = app
        .client
        .create_user(CreateUserRequest {
            user: Some(User {
                phone: Some("573001234567".into()),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(status.message().contains("phone"), "{}", status.message());
    assert!(!status.message().contains("573001234567"), "no values leak");

    let telegram = User {
        telegram_user_id: Some(42),
        ..Default::default()
    };
    create_user(&mut app.client, telegram.clone()).await;
    let status = app
        .client
        .create_user(CreateUserRequest {
            user: Some(telegram),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(app.count("users").await, 2);
}

#[tokio::test]
async fn a_create_retried_with_its_request_id_returns_the_first_user() {
    let mut app = spawn_app().await;
    let request = CreateUserRequest {
        user: Some(User {
            display_name: "Ana".into(),
            ..Default::default()
        }),
        request_id: "req-1".into(),
    };
    let calls = (0..10).map(|_| {
        let mut client = app.client.clone();
        let request = request.clone();
        async move { client.create_user(request).await.unwrap().into_inner() }
    });
    let answers = join_all(calls).await;
    assert!(answers.iter().all(|a| a == &answers[0]));
    assert_eq!(app.count("users").await, 1);

    let mut other = request.clone();
    other.user.as_mut().unwrap().display_name = "Bea".into();
    let status = app.client.create_user(other).await.unwrap_err();
    assert_eq!(bad_fields(&status), ["request_id"]);
    assert_eq!(app.count("users").await, 1);
}

#[tokio::test]
async fn get_refuses_bad_ids_and_reports_missing_users() {
    let mut app = spawn_app().await;
    let bad = app
        .client
        .get_user(GetUserRequest {
            user_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&bad), ["user_id"]);
    let missing = app
        .client
        .get_user(GetUserRequest {
            user_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn get_by_phone_accepts_wa_id_and_e164() {
    let mut app = spawn_app().await;
    let user = with_phone(&mut app, "+16505551234").await;
    for phone in ["16505551234", "+16505551234", "+1 650-555-1234"] {
        let found = app
            .client
            .get_user_by_phone(GetUserByPhoneRequest {
                phone: phone.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap();
        assert_eq!(found.id, user.id);
    }
    let bad = app
        .client
        .get_user_by_phone(GetUserByPhoneRequest {
            phone: "abc".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&bad), ["phone"]);
    let missing = app
        .client
        .get_user_by_phone(GetUserByPhoneRequest {
            phone: "+16505550000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn get_by_telegram_id() {
    let mut app = spawn_app().await;
    let user = create_user(
        &mut app.client,
        User {
            telegram_user_id: Some(777),
            ..Default::default()
        },
    )
    .await;
    let found = app
        .client
        .get_user_by_telegram_id(GetUserByTelegramIdRequest {
            telegram_user_id: 777,
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(found.id, user.id);
    let bad = app
        .client
        .get_user_by_telegram_id(GetUserByTelegramIdRequest {
            telegram_user_id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&bad), ["telegram_user_id"]);
    let missing = app
        .client
        .get_user_by_telegram_id(GetUserByTelegramIdRequest {
            telegram_user_id: 778,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn upsert_by_phone_creates_once_then_refreshes_the_profile_name() {
    let mut app = spawn_app().await;
    let upsert = |phone: &str, name: &str| UpsertUserByPhoneRequest {
        phone: phone.into(),
        profile_name: name.into(),
    };
    let first = app
        .client
        .upsert_user_by_phone(upsert("573001234567", "Ana"))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    let user = first.user.unwrap();
    assert_eq!(user.phone.as_deref(), Some("+573001234567"));
    assert_eq!(user.whatsapp_profile_name, "Ana");

    let again = app
        .client
        .upsert_user_by_phone(upsert("+573001234567", "Ana María"))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    assert_eq!(again.user.as_ref().unwrap().id, user.id);
    assert_eq!(again.user.unwrap().whatsapp_profile_name, "Ana María");

    let no_name = app
        .client
        .upsert_user_by_phone(upsert("573001234567", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(no_name.user.unwrap().whatsapp_profile_name, "Ana María");
    assert_eq!(app.count("users").await, 1);
}

#[tokio::test]
async fn racing_upserts_of_one_phone_create_one_user() {
    let app = spawn_app().await;
    let calls = (0..20).map(|_| {
        let mut client = app.client.clone();
        async move {
            client
                .upsert_user_by_phone(UpsertUserByPhoneRequest {
                    phone: "16505551234".into(),
                    profile_name: "Sam".into(),
                })
                .await
                .unwrap()
                .into_inner()
        }
    });
    let answers = join_all(calls).await;
    assert_eq!(answers.iter().filter(|a| a.created).count(), 1);
    let id = &answers[0].user.as_ref().unwrap().id;
    assert!(answers.iter().all(|a| &a.user.as_ref().unwrap().id == id));
    assert_eq!(app.count("users").await, 1);
}

#[tokio::test]
async fn upsert_refuses_bad_phones_and_long_names() {
    let mut app = spawn_app().await;
    let bad = app
        .client
        .upsert_user_by_phone(UpsertUserByPhoneRequest {
            phone: "0123".into(),
            profile_name: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&bad), ["phone"]);
    let long = app
        .client
        .upsert_user_by_phone(UpsertUserByPhoneRequest {
            phone: "573001234567".into(),
            profile_name: "x".repeat(201),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&long), ["profile_name"]);
    assert_eq!(app.count("users").await, 0);
}

#[tokio::test]
async fn update_changes_only_the_masked_fields() {
    let mut app = spawn_app().await;
    let user = create_user(
        &mut app.client,
        User {
            display_name: "Ana".into(),
            companion_name: "Luz".into(),
            ..Default::default()
        },
    )
    .await;
    let updated = app
        .client
        .update_user(UpdateUserRequest {
            user: Some(User {
                id: user.id.clone(),
                display_name: "Ana B".into(),
                timezone: "Asia/Tokyo".into(),
                // Not in the mask: ignored, even though it is invalid.
                language: "zz".into(),
                companion_name: String::new(),
                ..Default::default()
            }),
            update_mask: mask(&["display_name", "timezone"]),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(updated.display_name, "Ana B");
    assert_eq!(updated.timezone, "Asia/Tokyo");
    assert_eq!(updated.language, "es");
    assert_eq!(updated.companion_name, "Luz");
    let (before, after) = (user.update_time.unwrap(), updated.update_time.unwrap());
    assert!((after.seconds, after.nanos) > (before.seconds, before.nanos));
}

#[tokio::test]
async fn update_refuses_bad_masks_and_values_and_changes_nothing() {
    let mut app = spawn_app().await;
    let user = with_phone(&mut app, "+573001111111").await;
    let other = with_phone(&mut app, "+573002222222").await;
    let update = |fields: User, paths: &[&str]| UpdateUserRequest {
        user: Some(fields),
        update_mask: mask(paths),
    };
    let target = |u: User| User {
        id: user.id.clone(),
        ..u
    };

    let empty = app
        .client
        .update_user(update(target(User::default()), &[]))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&empty), ["update_mask"]);
    let unknown = app
        .client
        .update_user(update(target(User::default()), &["id"]))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&unknown), ["update_mask"]);
    let bad_value = app
        .client
        .update_user(update(
            target(User {
                timezone: "Nowhere/City".into(),
                ..Default::default()
            }),
            &["timezone"],
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&bad_value), ["user.timezone"]);
    let taken = app
        .client
        .update_user(update(
            target(User {
                phone: other.phone.clone(),
                ..Default::default()
            }),
            &["phone"],
        ))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
    let missing = app
        .client
        .update_user(update(
            User {
                id: uuid::Uuid::now_v7().to_string(),
                ..Default::default()
            },
            &["display_name"],
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let now = app
        .client
        .get_user(GetUserRequest {
            user_id: user.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(now, user, "refused updates change nothing");
}

#[tokio::test]
async fn update_can_reactivate_and_clear_the_phone() {
    let mut app = spawn_app().await;
    let user = with_phone(&mut app, "+573001234567").await;
    app.client
        .deactivate_user(DeactivateUserRequest {
            user_id: user.id.clone(),
        })
        .await
        .unwrap();
    let updated = app
        .client
        .update_user(UpdateUserRequest {
            user: Some(User {
                id: user.id.clone(),
                is_active: true,
                phone: None,
                ..Default::default()
            }),
            update_mask: mask(&["is_active", "phone"]),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert!(updated.is_active);
    assert_eq!(updated.phone, None);
}

async fn touch(client: &mut Client, id: &str, seconds: i64) -> Option<Timestamp> {
    client
        .touch_last_message(TouchLastMessageRequest {
            user_id: id.into(),
            message_time: Some(Timestamp { seconds, nanos: 0 }),
        })
        .await
        .unwrap()
        .into_inner()
        .last_message_time
}

#[tokio::test]
async fn list_pages_through_everyone_and_filters() {
    let mut app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let user = with_phone(&mut app, &format!("+5730000000{i:02}")).await;
        ids.push(user.id);
    }
    touch(&mut app.client, &ids[1], 1_700_000_000).await;
    touch(&mut app.client, &ids[2], 1_760_000_000).await;
    app.client
        .deactivate_user(DeactivateUserRequest {
            user_id: ids[4].clone(),
        })
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .client
            .list_users(ListUsersRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.users.len() <= 2);
        seen.extend(page.users.into_iter().map(|u| u.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, ids, "every user once, in creation order");

    let list = |request: ListUsersRequest| {
        let mut client = app.client.clone();
        async move {
            client
                .list_users(request)
                .await
                .unwrap()
                .into_inner()
                .users
                .into_iter()
                .map(|u| u.id)
                .collect::<Vec<_>>()
        }
    };
    let inactive = list(ListUsersRequest {
        is_active: Some(false),
        ..Default::default()
    })
    .await;
    assert_eq!(inactive, [ids[4].clone()]);
    let recent = list(ListUsersRequest {
        last_message_after: Some(Timestamp {
            seconds: 1_750_000_000,
            nanos: 0,
        }),
        ..Default::default()
    })
    .await;
    assert_eq!(recent, [ids[2].clone()]);
    let older = list(ListUsersRequest {
        last_message_before: Some(Timestamp {
            seconds: 1_750_000_000,
            nanos: 0,
        }),
        ..Default::default()
    })
    .await;
    assert_eq!(older, [ids[1].clone()]);
}

#[tokio::test]
async fn list_refuses_bad_tokens_sizes_and_times() {
    let mut app = spawn_app().await;
    let bad_token = app
        .client
        .list_users(ListUsersRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&bad_token), ["page_token"]);
    let bad_size = app
        .client
        .list_users(ListUsersRequest {
            page_size: -1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&bad_size), ["page_size"]);
    let bad_time = app
        .client
        .list_users(ListUsersRequest {
            last_message_after: Some(Timestamp {
                seconds: 0,
                nanos: -3,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&bad_time), ["last_message_after"]);
    let all_bad = app
        .client
        .list_users(ListUsersRequest {
            page_size: -5,
            page_token: "garbage".into(),
            last_message_before: Some(Timestamp {
                seconds: 0,
                nanos: 2_000_000_000,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        bad_fields(&all_bad),
        ["page_size", "page_token", "last_message_before"]
    );
}

#[tokio::test]
async fn deactivate_keeps_the_user_and_repeats_harmlessly() {
    let mut app = spawn_app().await;
    let user = with_phone(&mut app, "+573001234567").await;
    for _ in 0..2 {
        let user = app
            .client
            .deactivate_user(DeactivateUserRequest {
                user_id: user.id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap();
        assert!(!user.is_active);
    }
    let missing = app
        .client
        .deactivate_user(DeactivateUserRequest {
            user_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(app.count("users").await, 1);
}

#[tokio::test]
async fn delete_removes_the_user_and_what_hangs_off_it() {
    let mut app = spawn_app().await;
    let user = with_phone(&mut app, "+573001234567").await;
    let keep = with_phone(&mut app, "+573007654321").await;
    app.client
        .register_device(RegisterDeviceRequest {
            device: Some(Device {
                user_id: user.id.clone(),
                device_id: "phone-1".into(),
                platform: DevicePlatform::Ios as i32,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    app.client
        .create_link_token(CreateLinkTokenRequest {
            user_id: user.id.clone(),
            ttl_seconds: 0,
        })
        .await
        .unwrap();
    app.client
        .create_feature_flag(CreateFeatureFlagRequest {
            flag: Some(FeatureFlag {
                name: "beta".into(),
                enabled: true,
                target_user_ids: vec![user.id.clone(), keep.id.clone()],
                ..Default::default()
            }),
        })
        .await
        .unwrap();

    let request = DeleteUserRequest {
        user_id: user.id.clone(),
        request_id: "erase-1".into(),
    };
    let first = app
        .client
        .delete_user(request.clone())
        .await
        .unwrap()
        .into_inner()
        .erasure
        .unwrap();
    // With no other context configured, the erasure is done at once.
    assert_eq!(first.state(), ErasureState::Done);
    assert_eq!(first.user_id, user.id);
    assert_eq!(first.request_id, "erase-1");
    // A retry, with the same request_id or none, answers the same erasure.
    for request in [
        request,
        DeleteUserRequest {
            user_id: user.id.clone(),
            request_id: String::new(),
        },
    ] {
        let again = app
            .client
            .delete_user(request)
            .await
            .unwrap()
            .into_inner()
            .erasure
            .unwrap();
        assert_eq!(again, first);
    }
    let unknown = app
        .client
        .delete_user(DeleteUserRequest {
            user_id: uuid::Uuid::now_v7().to_string(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    assert_eq!(app.count("users").await, 1);
    assert_eq!(app.count("devices").await, 0);
    assert_eq!(app.count("link_tokens").await, 0);
    let flags = app
        .client
        .list_feature_flags(ListFeatureFlagsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .flags;
    assert_eq!(flags[0].target_user_ids, [keep.id]);
}

#[tokio::test]
async fn touch_moves_the_last_message_time_forward_only() {
    let mut app = spawn_app().await;
    let user = with_phone(&mut app, "+573001234567").await;
    let later = touch(&mut app.client, &user.id, 1_760_000_000).await;
    assert_eq!(later.as_ref().unwrap().seconds, 1_760_000_000);
    let earlier = touch(&mut app.client, &user.id, 1_700_000_000).await;
    assert_eq!(earlier.unwrap().seconds, 1_760_000_000, "never moves back");

    let fresh = with_phone(&mut app, "+573007654321").await;
    let now = app
        .client
        .touch_last_message(TouchLastMessageRequest {
            user_id: fresh.id.clone(),
            message_time: None,
        })
        .await
        .unwrap()
        .into_inner()
        .last_message_time
        .unwrap();
    let wall = chrono::Utc::now().timestamp();
    assert!((wall - now.seconds).abs() < 60, "defaults to now");

    let missing = app
        .client
        .touch_last_message(TouchLastMessageRequest {
            user_id: uuid::Uuid::now_v7().to_string(),
            message_time: None,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn nul_characters_are_invalid_argument_and_write_nothing() {
    let mut app = spawn_app().await;
    let named = app
        .client
        .create_user(CreateUserRequest {
            user: Some(User {
                display_name: "An\0a".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(named.code(), Code::InvalidArgument, "{named:?}");
    let in_json = app
        .client
        .create_user(CreateUserRequest {
            user: Some(User {
                preferences: Some(mesh_runtime::convert::json_to_struct(
                    &serde_json::json!({"note": "a\u{0}b"}),
                )),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(in_json.code(), Code::InvalidArgument, "{in_json:?}");
    assert_eq!(app.count("users").await, 0);
}

#[tokio::test]
async fn user_id_arguments_are_checked_everywhere() {
    let mut app = spawn_app().await;
    let bad = || "not-a-uuid".to_owned();
    let deactivate = app
        .client
        .deactivate_user(DeactivateUserRequest { user_id: bad() })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&deactivate), ["user_id"]);
    let delete = app
        .client
        .delete_user(DeleteUserRequest {
            user_id: bad(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&delete), ["user_id"]);
    let touch = app
        .client
        .touch_last_message(TouchLastMessageRequest {
            user_id: bad(),
            message_time: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&touch), ["user_id"]);
}

#[tokio::test]
async fn touch_refuses_impossible_and_future_times_and_keeps_the_clock() {
    let mut app = spawn_app().await;
    let user = with_phone(&mut app, "+573001234567").await;
    touch(&mut app.client, &user.id, 1_760_000_000).await;
    let future = chrono::Utc::now().timestamp() + 3600;
    for (seconds, nanos) in [
        (future, 0),
        (253_402_300_800, 0),
        (-62_135_596_801, 0),
        (0, -1),
    ] {
        let status = app
            .client
            .touch_last_message(TouchLastMessageRequest {
                user_id: user.id.clone(),
                message_time: Some(Timestamp { seconds, nanos }),
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), ["message_time"], "{seconds}");
    }
    let stored = app
        .client
        .get_user(GetUserRequest {
            user_id: user.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(stored.last_message_time.unwrap().seconds, 1_760_000_000);
}

#[tokio::test]
async fn a_delete_request_id_cannot_be_reused_for_another_user() {
    let mut app = spawn_app().await;
    let first = with_phone(&mut app, "+573001111111").await;
    let second = with_phone(&mut app, "+573002222222").await;
    app.client
        .delete_user(DeleteUserRequest {
            user_id: first.id,
            request_id: "erase".into(),
        })
        .await
        .unwrap();
    let reused = app
        .client
        .delete_user(DeleteUserRequest {
            user_id: second.id,
            request_id: "erase".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&reused), ["request_id"]);
    assert_eq!(app.count("users").await, 1, "the second user is kept");
}

#[tokio::test]
async fn delete_erases_the_stored_answers_about_the_user() {
    let mut app = spawn_app().await;
    let create = CreateUserRequest {
        user: Some(User {
            phone: Some("+573001234567".into()),
            display_name: "Ana".into(),
            ..Default::default()
        }),
        request_id: "signup-1".into(),
    };
    let user = app
        .client
        .create_user(create.clone())
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let workspace = app
        .client
        .create_workspace(CreateWorkspaceRequest {
            workspace: Some(Workspace {
                name: "Home".into(),
                owner_user_id: user.id.clone(),
                ..Default::default()
            }),
            request_id: "ws-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .workspace
        .unwrap();
    app.client
        .create_project(CreateProjectRequest {
            project: Some(Project {
                workspace_id: workspace.id,
                name: "Diary".into(),
                ..Default::default()
            }),
            request_id: "p-1".into(),
        })
        .await
        .unwrap();
    assert_eq!(app.count("idempotency_keys").await, 3);
    // Of each request only its SHA-256 is kept: the CreateUser one held the
    // phone and names.
    let mut admin = app.db.admin_connection().await;
    let lengths: Vec<i32> =
        sqlx::query_scalar("SELECT octet_length(request) FROM users.idempotency_keys")
            .fetch_all(&mut admin)
            .await
            .unwrap();
    assert_eq!(lengths, [32, 32, 32]);

    app.client
        .delete_user(DeleteUserRequest {
            user_id: user.id.clone(),
            request_id: "erase-1".into(),
        })
        .await
        .unwrap();
    let left: Vec<String> = sqlx::query_scalar("SELECT operation FROM users.idempotency_keys")
        .fetch_all(&mut admin)
        .await
        .unwrap();
    assert!(left.is_empty(), "no stored answer remains: {left:?}");

    // The old request id no longer brings the erased user back.
    let again = app
        .client
        .create_user(create)
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_ne!(again.id, user.id);
}

#[tokio::test]
async fn stored_answers_expire_after_the_retention() {
    let app = spawn_app().await;
    let mut admin = app.db.admin_connection().await;
    sqlx::raw_sql(
        "INSERT INTO users.idempotency_keys (operation, request_id, request, create_time)
         VALUES ('CreateUser', 'old', '', now() - interval '8 days'),
                ('CreateUser', 'recent', '', now() - interval '6 days')",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect_with(
            app.db
                .service_url("users")
                .parse::<sqlx::postgres::PgConnectOptions>()
                .unwrap()
                .options([("search_path", "users")]),
        )
        .await
        .unwrap();
    assert_eq!(mesh_runtime::idempotency::prune(&pool).await.unwrap(), 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT request_id FROM users.idempotency_keys")
        .fetch_all(&mut admin)
        .await
        .unwrap();
    assert_eq!(left, ["recent"]);
}

#[tokio::test]
async fn every_bad_field_is_named_in_one_answer() {
    let mut app = spawn_app().await;
    let upsert = app
        .client
        .upsert_user_by_phone(UpsertUserByPhoneRequest {
            phone: "12".into(),
            profile_name: "x".repeat(201),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&upsert), ["phone", "profile_name"]);

    let update = app
        .client
        .update_user(UpdateUserRequest {
            user: Some(User {
                id: "nope".into(),
                ..Default::default()
            }),
            update_mask: mask(&["id"]),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&update), ["user.id", "update_mask"]);

    let update_values = app
        .client
        .update_user(UpdateUserRequest {
            user: Some(User {
                id: "nope".into(),
                timezone: "Nowhere/City".into(),
                ..Default::default()
            }),
            update_mask: mask(&["timezone"]),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&update_values), ["user.id", "user.timezone"]);

    let create = app
        .client
        .create_user(CreateUserRequest {
            user: Some(User {
                language: "zz".into(),
                ..Default::default()
            }),
            request_id: "r".repeat(129),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&create), ["user.language", "request_id"]);

    let delete = app
        .client
        .delete_user(DeleteUserRequest {
            user_id: "nope".into(),
            request_id: "r".repeat(129),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&delete), ["user_id", "request_id"]);
    assert_eq!(app.count("users").await, 0);
}
