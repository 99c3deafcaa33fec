//! RegisterDevice, ListDevices and DeregisterDevice.

use std::collections::HashSet;

use mesh_proto::mesh::users::v1::*;
use tonic::Code;

use crate::harness::{TestApp, bad_fields, spawn_app};

fn device(user_id: &str, device_id: &str, platform: DevicePlatform, push_token: &str) -> Device {
    Device {
        user_id: user_id.into(),
        device_id: device_id.into(),
        platform: platform as i32,
        push_token: push_token.into(),
        ..Default::default()
    }
}

async fn register(
    app: &mut TestApp,
    device: Device,
) -> Result<RegisterDeviceResponse, tonic::Status> {
    app.client
        .register_device(RegisterDeviceRequest {
            device: Some(device),
        })
        .await
        .map(|r| r.into_inner())
}

async fn list(
    app: &mut TestApp,
    user_id: &str,
    page_size: i32,
    page_token: &str,
) -> Result<ListDevicesResponse, tonic::Status> {
    app.client
        .list_devices(ListDevicesRequest {
            user_id: user_id.into(),
            page_size,
            page_token: page_token.into(),
        })
        .await
        .map(|r| r.into_inner())
}

async fn deregister(
    app: &mut TestApp,
    user_id: &str,
    device_id: &str,
) -> Result<(), tonic::Status> {
    app.client
        .deregister_device(DeregisterDeviceRequest {
            user_id: user_id.into(),
            device_id: device_id.into(),
        })
        .await
        .map(|_| ())
}

/// The stored (platform, push_token) of a device, if it exists.
async fn stored(app: &TestApp, user_id: &str, device_id: &str) -> Option<(String, String)> {
    let mut conn = app.db.admin_connection().await;
    sqlx::query_as(
        "SELECT platform, push_token FROM users.devices WHERE user_id = $1::uuid AND device_id = $2",
    )
    .bind(user_id)
    .bind(device_id)
    .fetch_optional(&mut conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn register_creates_then_updates_the_same_device() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;

    let first = register(
        &mut app,
        device(&user, "pixel-8", DevicePlatform::Android, "push-1"),
    )
    .await
    .unwrap();
    assert!(first.created);
    let created = first.device.unwrap();
    assert_eq!(created.user_id, user);
    assert_eq!(created.device_id, "pixel-8");
    assert_eq!(created.platform(), DevicePlatform::Android);
    assert_eq!(created.push_token, "push-1");
    assert!(created.create_time.is_some());
    assert!(created.update_time.is_some());

    let second = register(
        &mut app,
        device(&user, "pixel-8", DevicePlatform::Web, "push-2"),
    )
    .await
    .unwrap();
    assert!(!second.created, "a known device is updated, not created");
    let updated = second.device.unwrap();
    assert_eq!(updated.device_id, "pixel-8");
    assert_eq!(updated.platform(), DevicePlatform::Web);
    assert_eq!(updated.push_token, "push-2");
    assert_eq!(updated.create_time, created.create_time);

    assert_eq!(app.count("devices").await, 1);
    assert_eq!(
        stored(&app, &user, "pixel-8").await,
        Some(("web".to_owned(), "push-2".to_owned()))
    );
    let listed = list(&mut app, &user, 0, "").await.unwrap();
    assert_eq!(listed.devices, [updated]);
    assert_eq!(listed.next_page_token, "");
}

#[tokio::test]
async fn the_same_device_id_under_two_users_is_two_devices() {
    let mut app = spawn_app().await;
    let ana = app.new_user().await;
    let bob = app.new_user().await;
    assert!(
        register(&mut app, device(&ana, "shared", DevicePlatform::Ios, ""))
            .await
            .unwrap()
            .created
    );
    assert!(
        register(
            &mut app,
            device(&bob, "shared", DevicePlatform::Android, "")
        )
        .await
        .unwrap()
        .created
    );
    assert_eq!(app.count("devices").await, 2);
    assert_eq!(stored(&app, &ana, "shared").await.unwrap().0, "ios");
    assert_eq!(stored(&app, &bob, "shared").await.unwrap().0, "android");
}

#[tokio::test]
async fn register_accepts_a_device_id_of_256_characters() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    // 256 characters, 512 bytes: the limit is in characters.
    let long = "é".repeat(256);
    let registered = register(&mut app, device(&user, &long, DevicePlatform::Ios, ""))
        .await
        .unwrap();
    assert_eq!(registered.device.unwrap().device_id, long);
    deregister(&mut app, &user, &long).await.unwrap();
    assert_eq!(app.count("devices").await, 0);
}

#[tokio::test]
async fn register_without_a_device_is_invalid() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .register_device(RegisterDeviceRequest { device: None })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["device"]);
    assert_eq!(app.count("devices").await, 0);
}

#[tokio::test]
async fn register_names_each_bad_field_and_writes_nothing() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let cases: Vec<(Device, &[&str])> = vec![
        (
            device("", "d", DevicePlatform::Ios, ""),
            &["device.user_id"],
        ),
        (
            device("not-a-uuid", "d", DevicePlatform::Ios, ""),
            &["device.user_id"],
        ),
        (
            device(&user, "", DevicePlatform::Ios, ""),
            &["device.device_id"],
        ),
        (
            device(&user, &"d".repeat(257), DevicePlatform::Ios, ""),
            &["device.device_id"],
        ),
        (
            device(&user, "d", DevicePlatform::Unspecified, ""),
            &["device.platform"],
        ),
        (
            Device {
                platform: 42,
                ..device(&user, "d", DevicePlatform::Ios, "")
            },
            &["device.platform"],
        ),
        (
            device(&user, "d", DevicePlatform::Ios, &"p".repeat(4097)),
            &["device.push_token"],
        ),
        (
            device("nope", "", DevicePlatform::Unspecified, ""),
            &["device.user_id", "device.device_id", "device.platform"],
        ),
    ];
    for (bad, fields) in cases {
        let status = register(&mut app, bad.clone()).await.unwrap_err();
        assert_eq!(bad_fields(&status), fields, "{bad:?}");
    }
    assert_eq!(app.count("devices").await, 0);
}

#[tokio::test]
async fn register_for_an_unknown_user_is_not_found() {
    let mut app = spawn_app().await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let status = register(&mut app, device(&unknown, "d", DevicePlatform::Ios, ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(app.count("devices").await, 0);
}

#[tokio::test]
async fn list_pages_through_every_device_once() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let other = app.new_user().await;
    let ids = ["phone", "Tablet", "web-1", "web_2", "Ω-watch"];
    for id in ids {
        register(&mut app, device(&user, id, DevicePlatform::Ios, ""))
            .await
            .unwrap();
    }
    register(
        &mut app,
        device(&other, "not-mine", DevicePlatform::Web, ""),
    )
    .await
    .unwrap();

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(&mut app, &user, 2, &token).await.unwrap();
        sizes.push(page.devices.len());
        for d in &page.devices {
            assert_eq!(d.user_id, user);
            seen.push(d.device_id.clone());
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(sizes.len() < 10, "pagination does not end");
    }
    assert_eq!(sizes, [2, 2, 1]);
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "no device is listed twice: {seen:?}"
    );
    let mut seen_sorted = seen.clone();
    seen_sorted.sort();
    let mut expected: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(seen_sorted, expected);

    // One page holds everything with the default size.
    let all = list(&mut app, &user, 0, "").await.unwrap();
    assert_eq!(all.devices.len(), 5);
    assert_eq!(all.next_page_token, "");
}

#[tokio::test]
async fn list_with_an_exact_final_page_ends_with_an_empty_token() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    for id in ["a", "b", "c", "d"] {
        register(&mut app, device(&user, id, DevicePlatform::Android, ""))
            .await
            .unwrap();
    }
    let first = list(&mut app, &user, 2, "").await.unwrap();
    assert_eq!(first.devices.len(), 2);
    assert_ne!(first.next_page_token, "");
    let second = list(&mut app, &user, 2, &first.next_page_token)
        .await
        .unwrap();
    assert_eq!(second.devices.len(), 2);
    assert_eq!(second.next_page_token, "", "no empty trailing page");
}

#[tokio::test]
async fn list_for_a_user_without_devices_is_empty() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let page = list(&mut app, &user, 0, "").await.unwrap();
    assert!(page.devices.is_empty());
    assert_eq!(page.next_page_token, "");
}

#[tokio::test]
async fn list_refuses_bad_arguments() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    register(&mut app, device(&user, "d", DevicePlatform::Ios, ""))
        .await
        .unwrap();

    for bad in ["not-a-token", "!!!", "a2V5OmZvbw"] {
        let status = list(&mut app, &user, 0, bad).await.unwrap_err();
        assert_eq!(bad_fields(&status), ["page_token"], "page_token {bad:?}");
    }
    let status = list(&mut app, &user, -1, "").await.unwrap_err();
    assert_eq!(bad_fields(&status), ["page_size"]);
    for bad in ["", "nope"] {
        let status = list(&mut app, bad, 0, "").await.unwrap_err();
        assert_eq!(bad_fields(&status), ["user_id"], "user_id {bad:?}");
    }
}

#[tokio::test]
async fn list_for_an_unknown_user_is_not_found() {
    let mut app = spawn_app().await;
    let status = list(&mut app, &uuid::Uuid::now_v7().to_string(), 0, "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn deregister_removes_the_device_once() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let other = app.new_user().await;
    register(
        &mut app,
        device(&user, "old-phone", DevicePlatform::Ios, "t"),
    )
    .await
    .unwrap();
    register(
        &mut app,
        device(&user, "new-phone", DevicePlatform::Ios, "t"),
    )
    .await
    .unwrap();
    register(
        &mut app,
        device(&other, "old-phone", DevicePlatform::Ios, "t"),
    )
    .await
    .unwrap();

    deregister(&mut app, &user, "old-phone").await.unwrap();
    assert_eq!(stored(&app, &user, "old-phone").await, None);
    assert!(
        stored(&app, &other, "old-phone").await.is_some(),
        "another user's device stays"
    );
    assert_eq!(app.count("devices").await, 2);
    let left: Vec<String> = list(&mut app, &user, 0, "")
        .await
        .unwrap()
        .devices
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    assert_eq!(left, ["new-phone"]);

    let status = deregister(&mut app, &user, "old-phone").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(app.count("devices").await, 2);
}

#[tokio::test]
async fn deregister_unknown_user_or_device_is_not_found() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    register(&mut app, device(&user, "d", DevicePlatform::Ios, ""))
        .await
        .unwrap();
    let status = deregister(&mut app, &user, "never-registered")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = deregister(&mut app, &uuid::Uuid::now_v7().to_string(), "d")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(app.count("devices").await, 1);
}

#[tokio::test]
async fn deregister_refuses_bad_arguments() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    register(&mut app, device(&user, "d", DevicePlatform::Ios, ""))
        .await
        .unwrap();
    let status = deregister(&mut app, "nope", "d").await.unwrap_err();
    assert_eq!(bad_fields(&status), ["user_id"]);
    let status = deregister(&mut app, &user, "").await.unwrap_err();
    assert_eq!(bad_fields(&status), ["device_id"]);
    assert_eq!(app.count("devices").await, 1);
}

#[tokio::test]
async fn racing_registers_of_one_device_create_it_once() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let mut a = app.client.clone();
    let mut b = app.client.clone();
    let (ra, rb) = tokio::join!(
        a.register_device(RegisterDeviceRequest {
            device: Some(device(&user, "phone", DevicePlatform::Ios, "a")),
        }),
        b.register_device(RegisterDeviceRequest {
            device: Some(device(&user, "phone", DevicePlatform::Ios, "b")),
        }),
    );
    let created = [
        ra.unwrap().into_inner().created,
        rb.unwrap().into_inner().created,
    ];
    assert_eq!(
        created.iter().filter(|c| **c).count(),
        1,
        "exactly one created: {created:?}"
    );
    assert_eq!(app.count("devices").await, 1);
}
