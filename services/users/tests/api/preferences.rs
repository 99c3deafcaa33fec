//! GetAgentPreferences, UpdateAgentPreferences, GetOnboarding and
//! CompleteOnboardingStep.

use mesh_proto::mesh::users::v1::*;
use tonic::Code;

use crate::harness::{TestApp, bad_fields, mask, spawn_app};

fn defaults(user_id: &str) -> AgentPreferences {
    AgentPreferences {
        user_id: user_id.into(),
        enabled_agents: vec!["companion".into()],
        notification_frequency: NotificationFrequency::Normal as i32,
        quiet_hours_start: "22:00".into(),
        quiet_hours_end: "07:00".into(),
        data_sharing_consent: false,
        transparency_level: TransparencyLevel::Balanced as i32,
        language_preference: String::new(),
        update_time: None,
    }
}

async fn get_preferences(
    app: &mut TestApp,
    user_id: &str,
) -> Result<AgentPreferences, tonic::Status> {
    app.client
        .get_agent_preferences(GetAgentPreferencesRequest {
            user_id: user_id.into(),
        })
        .await
        .map(|r| r.into_inner().preferences.unwrap())
}

async fn update_preferences(
    app: &mut TestApp,
    preferences: AgentPreferences,
    paths: &[&str],
) -> Result<AgentPreferences, tonic::Status> {
    app.client
        .update_agent_preferences(UpdateAgentPreferencesRequest {
            preferences: Some(preferences),
            update_mask: mask(paths),
        })
        .await
        .map(|r| r.into_inner().preferences.unwrap())
}

async fn get_onboarding(app: &mut TestApp, user_id: &str) -> Result<Onboarding, tonic::Status> {
    app.client
        .get_onboarding(GetOnboardingRequest {
            user_id: user_id.into(),
        })
        .await
        .map(|r| r.into_inner().onboarding.unwrap())
}

async fn complete_step(
    app: &mut TestApp,
    user_id: &str,
    step: &str,
    finish: bool,
) -> Result<Onboarding, tonic::Status> {
    app.client
        .complete_onboarding_step(CompleteOnboardingStepRequest {
            user_id: user_id.into(),
            step: step.into(),
            finish,
        })
        .await
        .map(|r| r.into_inner().onboarding.unwrap())
}

/// Preferences with every field set to a valid non-default value.
fn all_changed(user_id: &str) -> AgentPreferences {
    AgentPreferences {
        user_id: user_id.into(),
        enabled_agents: vec!["companion".into(), "planner".into(), "news_digest-2".into()],
        notification_frequency: NotificationFrequency::Minimal as i32,
        quiet_hours_start: "23:30".into(),
        quiet_hours_end: "06:15".into(),
        data_sharing_consent: true,
        transparency_level: TransparencyLevel::Detailed as i32,
        language_preference: "en".into(),
        update_time: None,
    }
}

const ALL_PATHS: [&str; 7] = [
    "enabled_agents",
    "notification_frequency",
    "quiet_hours_start",
    "quiet_hours_end",
    "data_sharing_consent",
    "transparency_level",
    "language_preference",
];

#[tokio::test]
async fn a_new_user_reads_the_defaults_and_reading_writes_nothing() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let preferences = get_preferences(&mut app, &user).await.unwrap();
    assert_eq!(preferences, defaults(&user));
    assert_eq!(
        preferences.notification_frequency(),
        NotificationFrequency::Normal
    );
    assert_eq!(
        preferences.transparency_level(),
        TransparencyLevel::Balanced
    );
    assert!(preferences.update_time.is_none());
    // Twice: still the defaults, still no row.
    assert_eq!(
        get_preferences(&mut app, &user).await.unwrap(),
        defaults(&user)
    );
    assert_eq!(app.count("agent_preferences").await, 0);
}

#[tokio::test]
async fn get_preferences_refuses_bad_and_unknown_users() {
    let mut app = spawn_app().await;
    for bad in ["", "nope"] {
        let status = get_preferences(&mut app, bad).await.unwrap_err();
        assert_eq!(bad_fields(&status), ["user_id"], "user_id {bad:?}");
    }
    let status = get_preferences(&mut app, &uuid::Uuid::now_v7().to_string())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(app.count("agent_preferences").await, 0);
}

#[tokio::test]
async fn update_changes_only_the_masked_fields() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;

    let updated = update_preferences(
        &mut app,
        all_changed(&user),
        &["notification_frequency", "quiet_hours_start"],
    )
    .await
    .unwrap();
    let expected = AgentPreferences {
        notification_frequency: NotificationFrequency::Minimal as i32,
        quiet_hours_start: "23:30".into(),
        update_time: updated.update_time,
        ..defaults(&user)
    };
    assert!(
        updated.update_time.is_some(),
        "update_time is set once written"
    );
    assert_eq!(updated, expected);
    assert_eq!(get_preferences(&mut app, &user).await.unwrap(), expected);
    assert_eq!(app.count("agent_preferences").await, 1);

    // A second update keeps the first one's changes.
    let again = update_preferences(
        &mut app,
        AgentPreferences {
            user_id: user.clone(),
            data_sharing_consent: true,
            language_preference: "EN".into(),
            ..Default::default()
        },
        &["data_sharing_consent", "language_preference"],
    )
    .await
    .unwrap();
    let expected = AgentPreferences {
        data_sharing_consent: true,
        language_preference: "en".into(),
        update_time: again.update_time,
        ..expected
    };
    assert_eq!(again, expected);
    let seconds = |p: &AgentPreferences| p.update_time.map(|t| (t.seconds, t.nanos));
    assert!(
        seconds(&again) >= seconds(&updated),
        "update_time never goes back"
    );
    assert_eq!(get_preferences(&mut app, &user).await.unwrap(), expected);
    assert_eq!(app.count("agent_preferences").await, 1);
}

#[tokio::test]
async fn update_of_every_field_round_trips() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let updated = update_preferences(&mut app, all_changed(&user), &ALL_PATHS)
        .await
        .unwrap();
    let expected = AgentPreferences {
        update_time: updated.update_time,
        ..all_changed(&user)
    };
    assert_eq!(updated, expected);
    assert_eq!(get_preferences(&mut app, &user).await.unwrap(), expected);

    // Clearing: no agents, and the language follows the user again.
    let cleared = update_preferences(
        &mut app,
        AgentPreferences {
            user_id: user.clone(),
            ..Default::default()
        },
        &[
            "enabled_agents",
            "language_preference",
            "data_sharing_consent",
        ],
    )
    .await
    .unwrap();
    assert!(cleared.enabled_agents.is_empty());
    assert_eq!(cleared.language_preference, "");
    assert!(!cleared.data_sharing_consent);
    assert_eq!(cleared.quiet_hours_start, "23:30");
}

#[tokio::test]
async fn update_ignores_unmasked_fields_even_bad_ones() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let updated = update_preferences(
        &mut app,
        AgentPreferences {
            user_id: user.clone(),
            enabled_agents: vec!["Bad Agent".into()],
            notification_frequency: NotificationFrequency::Unspecified as i32,
            quiet_hours_start: "25:00".into(),
            language_preference: "xx".into(),
            data_sharing_consent: true,
            ..Default::default()
        },
        &["data_sharing_consent"],
    )
    .await
    .unwrap();
    assert_eq!(
        updated,
        AgentPreferences {
            data_sharing_consent: true,
            update_time: updated.update_time,
            ..defaults(&user)
        }
    );
}

#[tokio::test]
async fn update_refuses_a_bad_or_empty_mask_and_writes_nothing() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    for paths in [
        &[][..],
        &["user_id"],
        &["update_time"],
        &["quiet_hours"],
        &["enabled_agents", "nope"],
    ] {
        let status = update_preferences(&mut app, all_changed(&user), paths)
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), ["update_mask"], "mask {paths:?}");
    }
    let status = app
        .client
        .update_agent_preferences(UpdateAgentPreferencesRequest {
            preferences: Some(all_changed(&user)),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["update_mask"]);
    assert_eq!(app.count("agent_preferences").await, 0);
    assert_eq!(
        get_preferences(&mut app, &user).await.unwrap(),
        defaults(&user)
    );
}

#[tokio::test]
async fn update_names_each_bad_value_and_writes_nothing() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let bad = AgentPreferences {
        user_id: user.clone(),
        enabled_agents: vec!["companion".into(), "Bad Agent".into()],
        notification_frequency: NotificationFrequency::Unspecified as i32,
        quiet_hours_start: "25:00".into(),
        quiet_hours_end: "7pm".into(),
        data_sharing_consent: true,
        transparency_level: 99,
        language_preference: "xx".into(),
        update_time: None,
    };
    let status = update_preferences(&mut app, bad.clone(), &ALL_PATHS)
        .await
        .unwrap_err();
    assert_eq!(
        bad_fields(&status),
        [
            "preferences.enabled_agents",
            "preferences.notification_frequency",
            "preferences.quiet_hours_start",
            "preferences.quiet_hours_end",
            "preferences.transparency_level",
            "preferences.language_preference",
        ]
    );
    assert_eq!(app.count("agent_preferences").await, 0);

    // One at a time, each is named.
    let single: [(&str, AgentPreferences); 6] = [
        (
            "enabled_agents",
            AgentPreferences {
                enabled_agents: vec!["Bad Agent".into()],
                ..all_changed(&user)
            },
        ),
        (
            "notification_frequency",
            AgentPreferences {
                notification_frequency: NotificationFrequency::Unspecified as i32,
                ..all_changed(&user)
            },
        ),
        (
            "quiet_hours_start",
            AgentPreferences {
                quiet_hours_start: "25:00".into(),
                ..all_changed(&user)
            },
        ),
        (
            "quiet_hours_end",
            AgentPreferences {
                quiet_hours_end: String::new(),
                ..all_changed(&user)
            },
        ),
        (
            "transparency_level",
            AgentPreferences {
                transparency_level: TransparencyLevel::Unspecified as i32,
                ..all_changed(&user)
            },
        ),
        (
            "language_preference",
            AgentPreferences {
                language_preference: "xx".into(),
                ..all_changed(&user)
            },
        ),
    ];
    for (path, preferences) in single {
        let status = update_preferences(&mut app, preferences, &ALL_PATHS)
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), [format!("preferences.{path}")]);
    }
    assert_eq!(app.count("agent_preferences").await, 0);
}

#[tokio::test]
async fn a_bad_update_leaves_stored_preferences_unchanged() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let stored = update_preferences(&mut app, all_changed(&user), &ALL_PATHS)
        .await
        .unwrap();
    let status = update_preferences(
        &mut app,
        AgentPreferences {
            quiet_hours_start: "25:00".into(),
            data_sharing_consent: false,
            ..all_changed(&user)
        },
        &["data_sharing_consent", "quiet_hours_start"],
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&status), ["preferences.quiet_hours_start"]);
    assert_eq!(get_preferences(&mut app, &user).await.unwrap(), stored);
}

#[tokio::test]
async fn update_refuses_missing_preferences_and_bad_user_ids() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .update_agent_preferences(UpdateAgentPreferencesRequest {
            preferences: None,
            update_mask: mask(&["data_sharing_consent"]),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["preferences"]);
    for bad in ["", "nope"] {
        let status = update_preferences(
            &mut app,
            AgentPreferences {
                user_id: bad.into(),
                ..Default::default()
            },
            &["data_sharing_consent"],
        )
        .await
        .unwrap_err();
        assert_eq!(
            bad_fields(&status),
            ["preferences.user_id"],
            "user_id {bad:?}"
        );
    }
    assert_eq!(app.count("agent_preferences").await, 0);
}

#[tokio::test]
async fn update_for_an_unknown_user_is_not_found_and_writes_nothing() {
    let mut app = spawn_app().await;
    let status = update_preferences(
        &mut app,
        all_changed(&uuid::Uuid::now_v7().to_string()),
        &ALL_PATHS,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(app.count("agent_preferences").await, 0);
}

#[tokio::test]
async fn bad_values_for_an_unknown_user_are_invalid_argument() {
    let mut app = spawn_app().await;
    let status = update_preferences(
        &mut app,
        AgentPreferences {
            quiet_hours_start: "25:00".into(),
            ..all_changed(&uuid::Uuid::now_v7().to_string())
        },
        &["quiet_hours_start"],
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&status), ["preferences.quiet_hours_start"]);
    assert_eq!(app.count("agent_preferences").await, 0);
}

#[tokio::test]
async fn a_new_user_has_an_empty_onboarding_and_reading_writes_nothing() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let onboarding = get_onboarding(&mut app, &user).await.unwrap();
    assert_eq!(
        onboarding,
        Onboarding {
            user_id: user.clone(),
            completed_steps: vec![],
            complete_time: None,
        }
    );
    assert_eq!(app.count("onboarding").await, 0);
}

#[tokio::test]
async fn steps_are_kept_in_order_once_each() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let after_one = complete_step(&mut app, &user, "welcome", false)
        .await
        .unwrap();
    assert_eq!(after_one.user_id, user);
    assert_eq!(after_one.completed_steps, ["welcome"]);
    assert!(after_one.complete_time.is_none());

    complete_step(&mut app, &user, "name_companion", false)
        .await
        .unwrap();
    let repeated = complete_step(&mut app, &user, "welcome", false)
        .await
        .unwrap();
    assert_eq!(
        repeated.completed_steps,
        ["welcome", "name_companion"],
        "a repeat adds nothing"
    );
    let third = complete_step(&mut app, &user, "set_checkin_2", false)
        .await
        .unwrap();
    assert_eq!(
        third.completed_steps,
        ["welcome", "name_companion", "set_checkin_2"]
    );
    assert!(third.complete_time.is_none());

    assert_eq!(get_onboarding(&mut app, &user).await.unwrap(), third);
    assert_eq!(app.count("onboarding").await, 1);
}

#[tokio::test]
async fn finishing_sets_the_complete_time_once() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    complete_step(&mut app, &user, "welcome", false)
        .await
        .unwrap();
    let finished = complete_step(&mut app, &user, "done", true).await.unwrap();
    assert_eq!(finished.completed_steps, ["welcome", "done"]);
    let first_time = finished.complete_time.expect("finish sets complete_time");

    // Later steps and later finishes keep the first completion time.
    let later = complete_step(&mut app, &user, "extra", false)
        .await
        .unwrap();
    assert_eq!(later.complete_time, Some(first_time));
    let refinished = complete_step(&mut app, &user, "done", true).await.unwrap();
    assert_eq!(refinished.complete_time, Some(first_time));
    assert_eq!(refinished.completed_steps, ["welcome", "done", "extra"]);
    assert_eq!(get_onboarding(&mut app, &user).await.unwrap(), refinished);
}

#[tokio::test]
async fn finishing_on_the_first_step_works() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let finished = complete_step(&mut app, &user, "skip_all", true)
        .await
        .unwrap();
    assert_eq!(finished.completed_steps, ["skip_all"]);
    assert!(finished.complete_time.is_some());
    assert_eq!(get_onboarding(&mut app, &user).await.unwrap(), finished);
}

#[tokio::test]
async fn bad_step_names_are_invalid_and_write_nothing() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let too_long = format!("s{}", "a".repeat(64));
    for bad in [
        "",
        "Welcome",
        "1st_step",
        "_welcome",
        "has space",
        "with-dash",
        "dot.step",
        "ñandú",
        &too_long,
    ] {
        let status = complete_step(&mut app, &user, bad, true).await.unwrap_err();
        assert_eq!(bad_fields(&status), ["step"], "step {bad:?}");
    }
    assert_eq!(app.count("onboarding").await, 0);
    // 64 characters is fine.
    let longest = format!("s{}", "a".repeat(63));
    let done = complete_step(&mut app, &user, &longest, false)
        .await
        .unwrap();
    assert_eq!(done.completed_steps, [longest]);
}

#[tokio::test]
async fn onboarding_refuses_bad_user_ids() {
    let mut app = spawn_app().await;
    let status = get_onboarding(&mut app, "nope").await.unwrap_err();
    assert_eq!(bad_fields(&status), ["user_id"]);
    let status = complete_step(&mut app, "", "welcome", false)
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["user_id"]);
    let status = complete_step(&mut app, "nope", "Bad Step", false)
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["user_id", "step"]);
    assert_eq!(app.count("onboarding").await, 0);
}

#[tokio::test]
async fn onboarding_of_an_unknown_user_is_not_found_and_writes_nothing() {
    let mut app = spawn_app().await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let status = get_onboarding(&mut app, &unknown).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = complete_step(&mut app, &unknown, "welcome", true)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(app.count("onboarding").await, 0);
}

#[tokio::test]
async fn update_refuses_more_than_32_agents() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let agents = |n: usize| (0..n).map(|i| format!("agent_{i}")).collect::<Vec<_>>();
    let status = update_preferences(
        &mut app,
        AgentPreferences {
            enabled_agents: agents(33),
            ..all_changed(&user)
        },
        &["enabled_agents"],
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&status), ["preferences.enabled_agents"]);
    assert_eq!(app.count("agent_preferences").await, 0);
    let stored = update_preferences(
        &mut app,
        AgentPreferences {
            enabled_agents: agents(32),
            ..all_changed(&user)
        },
        &["enabled_agents"],
    )
    .await
    .unwrap();
    assert_eq!(stored.enabled_agents, agents(32));
}

#[tokio::test]
async fn concurrent_updates_of_different_fields_both_land() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let mut a = app.client.clone();
    let mut b = app.client.clone();
    let (ra, rb) = tokio::join!(
        a.update_agent_preferences(UpdateAgentPreferencesRequest {
            preferences: Some(all_changed(&user)),
            update_mask: mask(&["quiet_hours_start"]),
        }),
        b.update_agent_preferences(UpdateAgentPreferencesRequest {
            preferences: Some(all_changed(&user)),
            update_mask: mask(&["data_sharing_consent"]),
        }),
    );
    ra.unwrap();
    rb.unwrap();
    let stored = get_preferences(&mut app, &user).await.unwrap();
    assert_eq!(stored.quiet_hours_start, "23:30");
    assert!(stored.data_sharing_consent);
    assert_eq!(app.count("agent_preferences").await, 1);
}

#[tokio::test]
async fn concurrent_steps_are_all_recorded() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let steps = ["welcome", "name_companion", "set_checkin", "pick_language"];
    let calls = steps.iter().map(|step| {
        let mut client = app.client.clone();
        let request = CompleteOnboardingStepRequest {
            user_id: user.clone(),
            step: step.to_string(),
            finish: false,
        };
        async move { client.complete_onboarding_step(request).await }
    });
    for result in futures::future::join_all(calls).await {
        result.unwrap();
    }
    let mut recorded = get_onboarding(&mut app, &user)
        .await
        .unwrap()
        .completed_steps;
    recorded.sort();
    let mut expected: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(recorded, expected);
    assert_eq!(app.count("onboarding").await, 1);
}
