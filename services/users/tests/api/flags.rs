//! CreateFeatureFlag, UpdateFeatureFlag, ListFeatureFlags and IsFeatureEnabled.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use mesh_proto::mesh::users::v1::*;
use prost_types::FieldMask;
use tonic::Code;
use uuid::Uuid;

use crate::harness::{TestApp, bad_fields, mask, spawn_app};

/// What the database holds for a flag, read as the superuser.
#[derive(Debug, PartialEq, sqlx::FromRow)]
struct StoredFlag {
    description: String,
    enabled: bool,
    rollout_percentage: i32,
    target_user_ids: Vec<Uuid>,
    update_time: DateTime<Utc>,
}

async fn stored_flag(app: &TestApp, name: &str) -> Option<StoredFlag> {
    let mut conn = app.db.admin_connection().await;
    sqlx::query_as(
        "SELECT description, enabled, rollout_percentage, target_user_ids, update_time
         FROM users.feature_flags WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(&mut conn)
    .await
    .unwrap()
}

fn flag(name: &str, enabled: bool, rollout_percentage: i32, targets: &[Uuid]) -> FeatureFlag {
    FeatureFlag {
        name: name.into(),
        description: format!("the {name} flag"),
        enabled,
        rollout_percentage,
        target_user_ids: targets.iter().map(Uuid::to_string).collect(),
        ..Default::default()
    }
}

async fn create_flag(app: &mut TestApp, flag: FeatureFlag) -> FeatureFlag {
    app.client
        .create_feature_flag(CreateFeatureFlagRequest { flag: Some(flag) })
        .await
        .unwrap()
        .into_inner()
        .flag
        .unwrap()
}

async fn create_flag_err(app: &mut TestApp, flag: Option<FeatureFlag>) -> tonic::Status {
    app.client
        .create_feature_flag(CreateFeatureFlagRequest { flag })
        .await
        .unwrap_err()
}

async fn update_flag(
    app: &mut TestApp,
    flag: FeatureFlag,
    update_mask: Option<FieldMask>,
) -> Result<FeatureFlag, tonic::Status> {
    app.client
        .update_feature_flag(UpdateFeatureFlagRequest {
            flag: Some(flag),
            update_mask,
        })
        .await
        .map(|r| r.into_inner().flag.unwrap())
}

async fn is_enabled(app: &mut TestApp, flag: &str, user: Uuid) -> IsFeatureEnabledResponse {
    app.client
        .is_feature_enabled(IsFeatureEnabledRequest {
            flag_name: flag.into(),
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn list_page(
    app: &mut TestApp,
    page_size: i32,
    page_token: String,
) -> ListFeatureFlagsResponse {
    app.client
        .list_feature_flags(ListFeatureFlagsRequest {
            page_size,
            page_token,
        })
        .await
        .unwrap()
        .into_inner()
}

// ---------------------------------------------------------------- CreateFeatureFlag

#[tokio::test]
async fn create_round_trips_every_field() {
    let mut app = spawn_app().await;
    let targets = [Uuid::new_v4(), Uuid::new_v4()];
    let sent = FeatureFlag {
        name: "chat.v2-beta_1".into(),
        description: "The new chat UI".into(),
        enabled: true,
        rollout_percentage: 25,
        target_user_ids: targets.iter().map(Uuid::to_string).collect(),
        ..Default::default()
    };
    let created = create_flag(&mut app, sent.clone()).await;

    assert_eq!(created.name, sent.name);
    assert_eq!(created.description, sent.description);
    assert!(created.enabled);
    assert_eq!(created.rollout_percentage, 25);
    assert_eq!(created.target_user_ids, sent.target_user_ids);
    assert!(created.create_time.is_some());
    assert!(created.update_time.is_some());

    // What List returns is exactly what Create returned.
    let listed = list_page(&mut app, 0, String::new()).await;
    assert_eq!(listed.flags, [created]);
    assert_eq!(listed.next_page_token, "");

    let stored = stored_flag(&app, "chat.v2-beta_1").await.unwrap();
    assert_eq!(stored.description, "The new chat UI");
    assert!(stored.enabled);
    assert_eq!(stored.rollout_percentage, 25);
    assert_eq!(stored.target_user_ids, targets);
}

#[tokio::test]
async fn create_defaults_to_a_disabled_flag_without_targets() {
    let mut app = spawn_app().await;
    let created = create_flag(
        &mut app,
        FeatureFlag {
            name: "quiet".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(created.description, "");
    assert!(!created.enabled);
    assert_eq!(created.rollout_percentage, 0);
    assert!(created.target_user_ids.is_empty());
    assert_eq!(app.count("feature_flags").await, 1);
}

#[tokio::test]
async fn create_duplicate_name_is_already_exists_and_keeps_the_first() {
    let mut app = spawn_app().await;
    create_flag(&mut app, flag("dup", false, 10, &[])).await;
    let before = stored_flag(&app, "dup").await.unwrap();

    let status = create_flag_err(&mut app, Some(flag("dup", true, 90, &[Uuid::new_v4()]))).await;
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    assert_eq!(app.count("feature_flags").await, 1);
    assert_eq!(stored_flag(&app, "dup").await.unwrap(), before);
}

#[tokio::test]
async fn create_with_a_bad_name_is_invalid_and_writes_nothing() {
    let mut app = spawn_app().await;
    let too_long = format!("a{}", "b".repeat(100));
    for name in [
        "Bad Name",
        "1x",
        "",
        "_x",
        "x y",
        "UPPER",
        too_long.as_str(),
    ] {
        let status = create_flag_err(&mut app, Some(flag(name, true, 10, &[]))).await;
        assert_eq!(bad_fields(&status), ["flag.name"], "name {name:?}");
    }
    assert_eq!(app.count("feature_flags").await, 0);
}

#[tokio::test]
async fn create_with_a_rollout_outside_0_to_100_is_invalid_and_writes_nothing() {
    let mut app = spawn_app().await;
    for rollout in [101, -1, i32::MAX, i32::MIN] {
        let status = create_flag_err(&mut app, Some(flag("f", true, rollout, &[]))).await;
        assert_eq!(
            bad_fields(&status),
            ["flag.rollout_percentage"],
            "rollout {rollout}"
        );
    }
    assert_eq!(app.count("feature_flags").await, 0);
}

#[tokio::test]
async fn create_with_a_non_uuid_target_is_invalid_and_writes_nothing() {
    let mut app = spawn_app().await;
    let mut bad = flag("f", true, 10, &[Uuid::new_v4()]);
    bad.target_user_ids.push("not-a-uuid".into());
    let status = create_flag_err(&mut app, Some(bad)).await;
    assert_eq!(bad_fields(&status), ["flag.target_user_ids"]);
    assert_eq!(app.count("feature_flags").await, 0);
}

#[tokio::test]
async fn create_names_every_bad_field_at_once() {
    let mut app = spawn_app().await;
    let mut bad = flag("Bad Name", true, 101, &[]);
    bad.target_user_ids.push("nope".into());
    let status = create_flag_err(&mut app, Some(bad)).await;
    assert_eq!(
        bad_fields(&status),
        [
            "flag.name",
            "flag.rollout_percentage",
            "flag.target_user_ids"
        ]
    );
    assert_eq!(app.count("feature_flags").await, 0);
}

#[tokio::test]
async fn create_without_a_flag_is_invalid() {
    let mut app = spawn_app().await;
    let status = create_flag_err(&mut app, None).await;
    assert_eq!(bad_fields(&status), ["flag"]);
    assert_eq!(app.count("feature_flags").await, 0);
}

// ---------------------------------------------------------------- UpdateFeatureFlag

#[tokio::test]
async fn update_changes_only_the_masked_fields() {
    let mut app = spawn_app().await;
    let (old_target, new_target) = (Uuid::new_v4(), Uuid::new_v4());
    let created = create_flag(&mut app, flag("f", false, 10, &[old_target])).await;

    let updated = update_flag(
        &mut app,
        FeatureFlag {
            name: "f".into(),
            description: "new words".into(),
            enabled: true,
            rollout_percentage: 90,
            target_user_ids: vec![new_target.to_string()],
            ..Default::default()
        },
        mask(&["description", "rollout_percentage"]),
    )
    .await
    .unwrap();
    assert_eq!(updated.name, "f");
    assert_eq!(updated.description, "new words");
    assert_eq!(updated.rollout_percentage, 90);
    assert!(!updated.enabled, "enabled was not in the mask");
    assert_eq!(updated.target_user_ids, [old_target.to_string()]);
    assert_eq!(updated.create_time, created.create_time);

    let stored = stored_flag(&app, "f").await.unwrap();
    assert_eq!(stored.description, "new words");
    assert_eq!(stored.rollout_percentage, 90);
    assert!(!stored.enabled);
    assert_eq!(stored.target_user_ids, [old_target]);

    // The other two fields, and an empty list clears the targets.
    let updated = update_flag(
        &mut app,
        FeatureFlag {
            name: "f".into(),
            enabled: true,
            rollout_percentage: 5,
            ..Default::default()
        },
        mask(&["enabled", "target_user_ids"]),
    )
    .await
    .unwrap();
    assert!(updated.enabled);
    assert!(updated.target_user_ids.is_empty());
    assert_eq!(updated.description, "new words");
    assert_eq!(updated.rollout_percentage, 90);

    let stored = stored_flag(&app, "f").await.unwrap();
    assert!(stored.enabled);
    assert!(stored.target_user_ids.is_empty());
    assert_eq!(stored.rollout_percentage, 90);
    assert_eq!(app.count("feature_flags").await, 1);
}

#[tokio::test]
async fn update_of_an_unknown_flag_is_not_found_and_creates_nothing() {
    let mut app = spawn_app().await;
    let status = update_flag(&mut app, flag("ghost", true, 50, &[]), mask(&["enabled"]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(app.count("feature_flags").await, 0);
}

#[tokio::test]
async fn update_with_an_empty_or_unknown_mask_is_invalid_and_changes_nothing() {
    let mut app = spawn_app().await;
    create_flag(&mut app, flag("f", false, 10, &[])).await;
    let before = stored_flag(&app, "f").await.unwrap();

    let masks = [
        None,
        mask(&[]),
        mask(&["bogus"]),
        mask(&["name"]),
        mask(&["create_time"]),
        mask(&["enabled", "bogus"]),
    ];
    for update_mask in masks {
        let status = update_flag(&mut app, flag("f", true, 50, &[]), update_mask.clone())
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), ["update_mask"], "mask {update_mask:?}");
    }
    assert_eq!(stored_flag(&app, "f").await.unwrap(), before);
}

#[tokio::test]
async fn update_with_a_bad_masked_value_is_invalid_and_changes_nothing() {
    let mut app = spawn_app().await;
    create_flag(&mut app, flag("f", false, 10, &[])).await;
    let before = stored_flag(&app, "f").await.unwrap();

    for rollout in [101, -1] {
        // The valid description in the same mask is not written either.
        let mut bad = flag("f", true, rollout, &[]);
        bad.description = "changed".into();
        let status = update_flag(&mut app, bad, mask(&["description", "rollout_percentage"]))
            .await
            .unwrap_err();
        assert_eq!(
            bad_fields(&status),
            ["flag.rollout_percentage"],
            "rollout {rollout}"
        );
    }

    let mut bad = flag("f", true, 10, &[]);
    bad.target_user_ids = vec!["not-a-uuid".into()];
    let status = update_flag(&mut app, bad, mask(&["enabled", "target_user_ids"]))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["flag.target_user_ids"]);

    assert_eq!(stored_flag(&app, "f").await.unwrap(), before);
}

#[tokio::test]
async fn update_ignores_invalid_values_in_unmasked_fields() {
    let mut app = spawn_app().await;
    create_flag(&mut app, flag("f", false, 10, &[])).await;

    let mut input = flag("f", true, 500, &[]);
    input.target_user_ids = vec!["not-a-uuid".into()];
    let updated = update_flag(&mut app, input, mask(&["enabled"]))
        .await
        .unwrap();
    assert!(updated.enabled);
    assert_eq!(updated.rollout_percentage, 10);
    assert!(updated.target_user_ids.is_empty());

    let stored = stored_flag(&app, "f").await.unwrap();
    assert!(stored.enabled);
    assert_eq!(stored.rollout_percentage, 10);
    assert!(stored.target_user_ids.is_empty());
}

#[tokio::test]
async fn update_without_a_flag_or_with_a_bad_name_is_invalid() {
    let mut app = spawn_app().await;
    create_flag(&mut app, flag("f", false, 10, &[])).await;
    let before = stored_flag(&app, "f").await.unwrap();

    let status = app
        .client
        .update_feature_flag(UpdateFeatureFlagRequest {
            flag: None,
            update_mask: mask(&["enabled"]),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["flag"]);

    let status = update_flag(
        &mut app,
        flag("Bad Name", true, 10, &[]),
        mask(&["enabled"]),
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&status), ["flag.name"]);

    assert_eq!(stored_flag(&app, "f").await.unwrap(), before);
    assert_eq!(app.count("feature_flags").await, 1);
}

#[tokio::test]
async fn update_names_a_bad_name_together_with_a_bad_masked_value() {
    let mut app = spawn_app().await;
    let status = update_flag(
        &mut app,
        flag("Bad Name", true, 101, &[]),
        mask(&["rollout_percentage"]),
    )
    .await
    .unwrap_err();
    assert_eq!(
        bad_fields(&status),
        ["flag.name", "flag.rollout_percentage"]
    );
    assert_eq!(app.count("feature_flags").await, 0);
}

// ---------------------------------------------------------------- ListFeatureFlags

#[tokio::test]
async fn list_pages_through_flags_in_name_order() {
    let mut app = spawn_app().await;
    for name in ["echo", "alpha", "delta", "bravo", "charlie"] {
        create_flag(&mut app, flag(name, false, 0, &[])).await;
    }

    let mut names = Vec::new();
    let mut page_sizes = Vec::new();
    let mut token = String::new();
    loop {
        let page = list_page(&mut app, 2, token).await;
        page_sizes.push(page.flags.len());
        names.extend(page.flags.into_iter().map(|f| f.name));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
        assert!(page_sizes.len() < 10, "pagination does not end");
    }
    assert_eq!(page_sizes, [2, 2, 1]);
    assert_eq!(names, ["alpha", "bravo", "charlie", "delta", "echo"]);
    let unique: HashSet<_> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "no flag repeats");

    // One page that holds everything has no next page.
    let all = list_page(&mut app, 0, String::new()).await;
    assert_eq!(all.flags.len(), 5);
    assert_eq!(all.next_page_token, "");
}

#[tokio::test]
async fn list_of_no_flags_is_empty() {
    let mut app = spawn_app().await;
    let page = list_page(&mut app, 2, String::new()).await;
    assert!(page.flags.is_empty());
    assert_eq!(page.next_page_token, "");
}

#[tokio::test]
async fn list_with_a_bad_token_or_size_is_invalid() {
    let mut app = spawn_app().await;
    create_flag(&mut app, flag("a", false, 0, &[])).await;
    for page_token in ["not-a-token", "!!!", "aGVsbG8"] {
        let status = app
            .client
            .list_feature_flags(ListFeatureFlagsRequest {
                page_size: 2,
                page_token: page_token.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), ["page_token"], "token {page_token:?}");
    }
    let status = app
        .client
        .list_feature_flags(ListFeatureFlagsRequest {
            page_size: -1,
            page_token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["page_size"]);
}

// ---------------------------------------------------------------- IsFeatureEnabled

#[tokio::test]
async fn a_disabled_flag_is_on_only_for_its_targets() {
    let mut app = spawn_app().await;
    let target = Uuid::new_v4();
    create_flag(&mut app, flag("off", false, 100, &[target])).await;

    let answer = is_enabled(&mut app, "off", target).await;
    assert!(answer.enabled, "targets always get the flag");
    assert_eq!(answer.decision(), FeatureDecision::Targeted);
    for _ in 0..20 {
        let answer = is_enabled(&mut app, "off", Uuid::new_v4()).await;
        assert!(!answer.enabled, "a disabled flag rolls out to nobody else");
        assert_eq!(answer.decision(), FeatureDecision::FlagDisabled);
    }
}

#[tokio::test]
async fn an_enabled_flag_at_zero_rollout_is_on_only_for_its_targets() {
    let mut app = spawn_app().await;
    let target = Uuid::new_v4();
    create_flag(&mut app, flag("beta", true, 0, &[target])).await;

    let answer = is_enabled(&mut app, "beta", target).await;
    assert!(answer.enabled);
    assert_eq!(answer.decision(), FeatureDecision::Targeted);

    for _ in 0..20 {
        let answer = is_enabled(&mut app, "beta", Uuid::new_v4()).await;
        assert!(!answer.enabled);
        assert_eq!(answer.decision(), FeatureDecision::OutsideRollout);
    }
}

#[tokio::test]
async fn an_enabled_flag_at_full_rollout_is_on_for_everyone() {
    let mut app = spawn_app().await;
    let target = Uuid::new_v4();
    create_flag(&mut app, flag("ga", true, 100, &[target])).await;

    for _ in 0..20 {
        let answer = is_enabled(&mut app, "ga", Uuid::new_v4()).await;
        assert!(answer.enabled);
        assert_eq!(answer.decision(), FeatureDecision::InRollout);
    }
    // Targeting still explains the answer for a target.
    let answer = is_enabled(&mut app, "ga", target).await;
    assert!(answer.enabled);
    assert_eq!(answer.decision(), FeatureDecision::Targeted);
}

#[tokio::test]
async fn a_half_rollout_is_stable_per_user_and_follows_the_public_bucket() {
    let mut app = spawn_app().await;
    create_flag(&mut app, flag("half", true, 50, &[])).await;

    let users: Vec<Uuid> = (0..400).map(|_| Uuid::new_v4()).collect();
    let mut first = Vec::with_capacity(users.len());
    for &user in &users {
        let answer = is_enabled(&mut app, "half", user).await;
        let expected = mesh_users::rollout_bucket("half", user) < 50;
        assert_eq!(answer.enabled, expected, "user {user}");
        assert_eq!(
            answer.decision(),
            if expected {
                FeatureDecision::InRollout
            } else {
                FeatureDecision::OutsideRollout
            }
        );
        first.push(answer.enabled);
    }
    let on = first.iter().filter(|&&e| e).count();
    assert!(
        (120..=280).contains(&on),
        "{on} of 400 users got a 50% rollout"
    );

    for (&user, &before) in users.iter().zip(&first) {
        let again = is_enabled(&mut app, "half", user).await;
        assert_eq!(again.enabled, before, "user {user} changed answer");
    }
}

#[tokio::test]
async fn different_flags_at_the_same_rollout_pick_different_users() {
    let mut app = spawn_app().await;
    create_flag(&mut app, flag("left", true, 50, &[])).await;
    create_flag(&mut app, flag("right", true, 50, &[])).await;

    let mut differ = 0;
    for _ in 0..200 {
        let user = Uuid::new_v4();
        let left = is_enabled(&mut app, "left", user).await.enabled;
        let right = is_enabled(&mut app, "right", user).await.enabled;
        assert_eq!(right, mesh_users::rollout_bucket("right", user) < 50);
        if left != right {
            differ += 1;
        }
    }
    assert!(differ > 0, "both flags chose exactly the same users");
}

#[tokio::test]
async fn answers_follow_updates_to_the_flag() {
    let mut app = spawn_app().await;
    let target = Uuid::new_v4();
    create_flag(&mut app, flag("f", false, 0, &[])).await;
    assert!(!is_enabled(&mut app, "f", target).await.enabled);

    update_flag(
        &mut app,
        flag("f", true, 0, &[target]),
        mask(&["enabled", "target_user_ids"]),
    )
    .await
    .unwrap();
    let answer = is_enabled(&mut app, "f", target).await;
    assert_eq!(answer.decision(), FeatureDecision::Targeted);
    assert!(answer.enabled);
}

#[tokio::test]
async fn is_enabled_for_an_unknown_flag_is_not_found() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .is_feature_enabled(IsFeatureEnabledRequest {
            flag_name: "ghost".into(),
            user_id: Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn is_enabled_with_a_bad_user_id_is_invalid() {
    let mut app = spawn_app().await;
    create_flag(&mut app, flag("f", true, 100, &[])).await;
    for user_id in ["not-a-uuid", "", "1234"] {
        let status = app
            .client
            .is_feature_enabled(IsFeatureEnabledRequest {
                flag_name: "f".into(),
                user_id: user_id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), ["user_id"], "user_id {user_id:?}");
    }
    let status = app
        .client
        .is_feature_enabled(IsFeatureEnabledRequest {
            flag_name: "Bad Name".into(),
            user_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["flag_name", "user_id"]);
}
