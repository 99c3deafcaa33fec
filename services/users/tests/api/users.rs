use mesh_proto::mesh::users::v1::*;
use tonic::Code;

use crate::harness::{bad_fields, spawn_app};

#[tokio::test]
async fn create_then_get_round_trips_every_field() {
    let mut app = spawn_app().await;
    let created = app
        .client
        .create_user(CreateUserRequest {
            user: Some(User {
                phone: Some("573001234567".into()),
                display_name: "Ana".into(),
                language: "EN".into(),
                timezone: "Europe/Madrid".into(),
                preferred_checkin_time: "08:30".into(),
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(created.phone.as_deref(), Some("+573001234567"));
    assert_eq!(created.language, "en");
    assert!(created.is_active);

    let fetched = app
        .client
        .get_user(GetUserRequest { user_id: created.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(fetched, created);
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
                ..Default::default()
            }),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["user.phone", "user.language", "user.timezone"]);
    assert_eq!(app.count("users").await, 0);
    let _ = Code::Ok;
}
