//! CreateLinkToken and RedeemLinkToken: one-time tokens that bind a Telegram
//! account to a user.

use chrono::{DateTime, TimeDelta, Utc};
use mesh_proto::mesh::users::v1::*;
use tonic::Code;

use crate::harness::{TestApp, bad_fields, spawn_app};

async fn create_token(
    app: &mut TestApp,
    user_id: &str,
    ttl_seconds: i32,
) -> CreateLinkTokenResponse {
    app.client
        .create_link_token(CreateLinkTokenRequest {
            user_id: user_id.into(),
            ttl_seconds,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn redeem(
    app: &mut TestApp,
    token: &str,
    telegram_user_id: i64,
    telegram_username: &str,
) -> Result<User, tonic::Status> {
    app.client
        .redeem_link_token(RedeemLinkTokenRequest {
            token: token.into(),
            telegram_user_id,
            telegram_username: telegram_username.into(),
        })
        .await
        .map(|r| r.into_inner().user.unwrap())
}

async fn get_user(app: &mut TestApp, user_id: &str) -> User {
    app.client
        .get_user(GetUserRequest {
            user_id: user_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
}

/// The stored (redeem_time, telegram_user_id) of a token.
async fn token_state(app: &TestApp, token: &str) -> (Option<DateTime<Utc>>, Option<i64>) {
    let mut conn = app.db.admin_connection().await;
    sqlx::query_as("SELECT redeem_time, telegram_user_id FROM users.link_tokens WHERE token = $1")
        .bind(token)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

fn to_chrono(ts: &prost_types::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(ts.seconds, ts.nanos as u32).unwrap()
}

/// Asserts `expire` lies `ttl` seconds after some moment between `before` and
/// `after` (with a little slack for the database's clock).
fn assert_expires_after(
    expire: &prost_types::Timestamp,
    before: DateTime<Utc>,
    after: DateTime<Utc>,
    ttl: i64,
) {
    let expire = to_chrono(expire);
    let slack = TimeDelta::seconds(2);
    let ttl = TimeDelta::seconds(ttl);
    assert!(
        expire >= before + ttl - slack && expire <= after + ttl + slack,
        "expire_time {expire} is not {ttl} after [{before}, {after}]"
    );
}

fn is_token(token: &str) -> bool {
    token.len() == 32
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[tokio::test]
async fn create_gives_a_url_safe_token_that_expires_in_fifteen_minutes_by_default() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;

    let before = Utc::now();
    let first = create_token(&mut app, &user, 0).await;
    let after = Utc::now();
    assert!(
        is_token(&first.token),
        "{:?} is not 32 chars of A-Za-z0-9_-",
        first.token
    );
    assert_expires_after(first.expire_time.as_ref().unwrap(), before, after, 900);

    let second = create_token(&mut app, &user, 0).await;
    assert!(is_token(&second.token));
    assert_ne!(first.token, second.token, "tokens are random");
    assert_eq!(app.count("link_tokens").await, 2);
}

#[tokio::test]
async fn create_honours_ttl_at_both_bounds() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    for ttl in [60, 604_800] {
        let before = Utc::now();
        let created = create_token(&mut app, &user, ttl).await;
        let after = Utc::now();
        assert!(is_token(&created.token));
        assert_expires_after(
            created.expire_time.as_ref().unwrap(),
            before,
            after,
            i64::from(ttl),
        );
    }
    assert_eq!(app.count("link_tokens").await, 2);
}

#[tokio::test]
async fn create_refuses_ttl_out_of_bounds_and_writes_nothing() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    for ttl in [-1, 1, 59, 604_801, i32::MAX, i32::MIN] {
        let status = app
            .client
            .create_link_token(CreateLinkTokenRequest {
                user_id: user.clone(),
                ttl_seconds: ttl,
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), ["ttl_seconds"], "ttl {ttl}");
    }
    assert_eq!(app.count("link_tokens").await, 0);
}

#[tokio::test]
async fn create_refuses_a_bad_user_id() {
    let mut app = spawn_app().await;
    for bad in ["", "not-a-uuid", "12345"] {
        let status = app
            .client
            .create_link_token(CreateLinkTokenRequest {
                user_id: bad.into(),
                ttl_seconds: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), ["user_id"], "user_id {bad:?}");
    }
    assert_eq!(app.count("link_tokens").await, 0);
}

#[tokio::test]
async fn create_names_every_bad_field() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .create_link_token(CreateLinkTokenRequest {
            user_id: "nope".into(),
            ttl_seconds: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["user_id", "ttl_seconds"]);
    assert_eq!(app.count("link_tokens").await, 0);
}

#[tokio::test]
async fn create_for_an_unknown_user_is_not_found() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .create_link_token(CreateLinkTokenRequest {
            user_id: uuid::Uuid::now_v7().to_string(),
            ttl_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(app.count("link_tokens").await, 0);
}

#[tokio::test]
async fn redeem_binds_the_telegram_account_to_the_user() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let other = app.new_user().await;
    let token = create_token(&mut app, &user, 0).await.token;

    let linked = redeem(&mut app, &token, 777_000_111, "ana_tg")
        .await
        .unwrap();
    assert_eq!(linked.id, user);
    assert_eq!(linked.telegram_user_id, Some(777_000_111));
    assert_eq!(linked.telegram_username, "ana_tg");

    let found = app
        .client
        .get_user_by_telegram_id(GetUserByTelegramIdRequest {
            telegram_user_id: 777_000_111,
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(found.id, user);
    assert_eq!(found.telegram_username, "ana_tg");
    assert_eq!(get_user(&mut app, &user).await, found);

    let (redeem_time, telegram_user_id) = token_state(&app, &token).await;
    assert!(redeem_time.is_some(), "the token is marked used");
    assert_eq!(telegram_user_id, Some(777_000_111));
    // Nobody else was touched.
    assert_eq!(get_user(&mut app, &other).await.telegram_user_id, None);
}

#[tokio::test]
async fn a_repeat_by_the_account_that_redeemed_it_returns_the_same_user() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let token = create_token(&mut app, &user, 0).await.token;
    let first = redeem(&mut app, &token, 1001, "first").await.unwrap();
    let used = token_state(&app, &token).await;

    // Telegram re-delivers the `/start`: the same answer, nothing rewritten.
    let again = redeem(&mut app, &token, 1001, "first").await.unwrap();
    assert_eq!(again, first);
    assert_eq!(get_user(&mut app, &user).await, first);
    assert_eq!(
        token_state(&app, &token).await,
        used,
        "still the first redemption"
    );

    // A repeat with a new username refreshes it; the link stays.
    let renamed = redeem(&mut app, &token, 1001, "@renamed").await.unwrap();
    assert_eq!(renamed.id, user);
    assert_eq!(renamed.telegram_user_id, Some(1001));
    assert_eq!(renamed.telegram_username, "renamed");
    assert_eq!(get_user(&mut app, &user).await, renamed);
    assert_eq!(token_state(&app, &token).await, used);
}

#[tokio::test]
async fn a_token_redeemed_by_another_account_is_failed_precondition() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let token = create_token(&mut app, &user, 0).await.token;
    let first = redeem(&mut app, &token, 1001, "first").await.unwrap();
    let used = token_state(&app, &token).await;

    let status = redeem(&mut app, &token, 2002, "second").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("already used"), "{status:?}");
    assert_eq!(get_user(&mut app, &user).await, first);
    assert_eq!(token_state(&app, &token).await, used);
    let status = app
        .client
        .get_user_by_telegram_id(GetUserByTelegramIdRequest {
            telegram_user_id: 2002,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn an_expired_token_repeated_by_the_account_that_redeemed_it_returns_the_user() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let token = create_token(&mut app, &user, 0).await.token;
    let first = redeem(&mut app, &token, 1001, "first").await.unwrap();
    let mut conn = app.db.admin_connection().await;
    sqlx::query(
        "UPDATE users.link_tokens SET expire_time = now() - interval '1 second' WHERE token = $1",
    )
    .bind(&token)
    .execute(&mut conn)
    .await
    .unwrap();
    let used = token_state(&app, &token).await;

    // The re-delivery came after the token expired: still the linked user.
    let again = redeem(&mut app, &token, 1001, "first").await.unwrap();
    assert_eq!(again, first);

    // Anyone else is refused, as used.
    let status = redeem(&mut app, &token, 2002, "late").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(get_user(&mut app, &user).await, first);
    assert_eq!(token_state(&app, &token).await, used);
}

#[tokio::test]
async fn a_repeat_after_the_user_linked_another_account_is_failed_precondition() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let old_token = create_token(&mut app, &user, 0).await.token;
    redeem(&mut app, &old_token, 1001, "old").await.unwrap();
    let new_token = create_token(&mut app, &user, 0).await.token;
    let relinked = redeem(&mut app, &new_token, 1002, "new").await.unwrap();
    assert_eq!(relinked.telegram_user_id, Some(1002));

    // A late re-delivery of the first `/start` does not undo the newer link.
    let status = redeem(&mut app, &old_token, 1001, "old").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(get_user(&mut app, &user).await, relinked);
}

#[tokio::test]
async fn two_concurrent_redeems_by_the_same_account_both_return_the_user() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let token = create_token(&mut app, &user, 0).await.token;

    let mut a = app.client.clone();
    let mut b = app.client.clone();
    let request = RedeemLinkTokenRequest {
        token: token.clone(),
        telegram_user_id: 9009,
        telegram_username: "twin".into(),
    };
    let (ra, rb) = tokio::join!(
        a.redeem_link_token(request.clone()),
        b.redeem_link_token(request.clone()),
    );
    let (ua, ub) = (
        ra.unwrap().into_inner().user.unwrap(),
        rb.unwrap().into_inner().user.unwrap(),
    );
    assert_eq!(ua, ub);
    assert_eq!(ua.id, user);
    assert_eq!(ua.telegram_user_id, Some(9009));
    assert_eq!(get_user(&mut app, &user).await, ua);
    assert_eq!(token_state(&app, &token).await.1, Some(9009));
}

#[tokio::test]
async fn an_expired_token_is_failed_precondition_and_changes_nothing() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let token = create_token(&mut app, &user, 0).await.token;
    let mut conn = app.db.admin_connection().await;
    sqlx::query(
        "UPDATE users.link_tokens SET expire_time = now() - interval '1 second' WHERE token = $1",
    )
    .bind(&token)
    .execute(&mut conn)
    .await
    .unwrap();
    let before = get_user(&mut app, &user).await;

    let status = redeem(&mut app, &token, 3003, "late").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(get_user(&mut app, &user).await, before);
    assert_eq!(token_state(&app, &token).await, (None, None));
}

#[tokio::test]
async fn an_unknown_token_is_not_found() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let before = get_user(&mut app, &user).await;
    let status = redeem(&mut app, &"A".repeat(32), 4004, "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(get_user(&mut app, &user).await, before);
}

#[tokio::test]
async fn a_telegram_account_of_another_user_is_already_exists_and_changes_nothing() {
    let mut app = spawn_app().await;
    let owner = crate::harness::create_user(
        &mut app.client,
        User {
            telegram_user_id: Some(5005),
            telegram_username: "owner".into(),
            ..Default::default()
        },
    )
    .await;
    let user = app.new_user().await;
    let token = create_token(&mut app, &user, 0).await.token;
    let user_before = get_user(&mut app, &user).await;

    let status = redeem(&mut app, &token, 5005, "thief").await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    assert_eq!(get_user(&mut app, &owner.id).await, owner);
    assert_eq!(get_user(&mut app, &user).await, user_before);
    assert_eq!(
        token_state(&app, &token).await,
        (None, None),
        "the token stays unused"
    );

    // The token is still good for an account nobody has.
    let linked = redeem(&mut app, &token, 6006, "mine").await.unwrap();
    assert_eq!(linked.id, user);
    assert_eq!(linked.telegram_user_id, Some(6006));
}

#[tokio::test]
async fn redeem_names_each_bad_field_and_writes_nothing() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let token = create_token(&mut app, &user, 0).await.token;
    let before = get_user(&mut app, &user).await;

    let cases: [(&str, i64, String, &[&str]); 8] = [
        ("", 1, String::new(), &["token"]),
        ("has space", 1, String::new(), &["token"]),
        ("bad/chars+=", 1, String::new(), &["token"]),
        ("ünïcode", 1, String::new(), &["token"]),
        (&token, 0, String::new(), &["telegram_user_id"]),
        (&token, -7, String::new(), &["telegram_user_id"]),
        (&token, 1, "u".repeat(65), &["telegram_username"]),
        (
            "",
            0,
            "u".repeat(65),
            &["token", "telegram_user_id", "telegram_username"],
        ),
    ];
    for (bad_token, telegram_user_id, username, fields) in cases {
        let status = redeem(&mut app, bad_token, telegram_user_id, &username)
            .await
            .unwrap_err();
        assert_eq!(
            bad_fields(&status),
            fields,
            "{bad_token:?} {telegram_user_id} {username:?}"
        );
    }
    let too_long = "a".repeat(65);
    let status = redeem(&mut app, &too_long, 1, "").await.unwrap_err();
    assert_eq!(bad_fields(&status), ["token"]);

    assert_eq!(get_user(&mut app, &user).await, before);
    assert_eq!(token_state(&app, &token).await, (None, None));
}

#[tokio::test]
async fn two_concurrent_redeems_of_one_token_exactly_one_wins() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let token = create_token(&mut app, &user, 0).await.token;

    let mut a = app.client.clone();
    let mut b = app.client.clone();
    let (ra, rb) = tokio::join!(
        a.redeem_link_token(RedeemLinkTokenRequest {
            token: token.clone(),
            telegram_user_id: 7001,
            telegram_username: "a".into(),
        }),
        b.redeem_link_token(RedeemLinkTokenRequest {
            token: token.clone(),
            telegram_user_id: 7002,
            telegram_username: "b".into(),
        }),
    );
    let (winner, loser) = match (ra, rb) {
        (Ok(won), Err(lost)) => ((7001, won), lost),
        (Err(lost), Ok(won)) => ((7002, won), lost),
        (ra, rb) => panic!("exactly one redeem must succeed: {ra:?} / {rb:?}"),
    };
    assert_eq!(loser.code(), Code::FailedPrecondition, "{loser:?}");
    let (winner_id, won) = winner;
    assert_eq!(
        won.into_inner().user.unwrap().telegram_user_id,
        Some(winner_id)
    );
    assert_eq!(
        get_user(&mut app, &user).await.telegram_user_id,
        Some(winner_id)
    );
    assert_eq!(token_state(&app, &token).await.1, Some(winner_id));
}

#[tokio::test]
async fn two_users_racing_for_one_telegram_account_one_wins() {
    let mut app = spawn_app().await;
    let first = app.new_user().await;
    let second = app.new_user().await;
    let first_token = create_token(&mut app, &first, 0).await.token;
    let second_token = create_token(&mut app, &second, 0).await.token;

    let mut a = app.client.clone();
    let mut b = app.client.clone();
    let (ra, rb) = tokio::join!(
        a.redeem_link_token(RedeemLinkTokenRequest {
            token: first_token.clone(),
            telegram_user_id: 8008,
            telegram_username: String::new(),
        }),
        b.redeem_link_token(RedeemLinkTokenRequest {
            token: second_token.clone(),
            telegram_user_id: 8008,
            telegram_username: String::new(),
        }),
    );
    let (winner, loser, loser_token, lost) = match (ra, rb) {
        (Ok(_), Err(lost)) => (first.clone(), second.clone(), second_token, lost),
        (Err(lost), Ok(_)) => (second.clone(), first.clone(), first_token, lost),
        (ra, rb) => panic!("exactly one redeem must succeed: {ra:?} / {rb:?}"),
    };
    assert_eq!(lost.code(), Code::AlreadyExists, "{lost:?}");
    assert_eq!(
        get_user(&mut app, &winner).await.telegram_user_id,
        Some(8008)
    );
    assert_eq!(get_user(&mut app, &loser).await.telegram_user_id, None);
    assert_eq!(token_state(&app, &loser_token).await, (None, None));
}
