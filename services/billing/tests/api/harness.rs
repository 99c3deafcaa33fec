//! Spawns billing on port 0 over a fresh database, with the users service it
//! asks for time zones and workspaces, and gives tests real gRPC clients
//! with the bearer token, plus builders of Lemon Squeezy events.

#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use mesh_billing::{
    Config,
    plans::{Plans, Prices},
};
use mesh_proto::mesh::{
    billing::v1::{self as pb, billing_service_client::BillingServiceClient},
    users::v1::{self as users_pb, users_service_client::UsersServiceClient},
};
use mesh_runtime::testing::{Auth, TestDatabase, bearer};
pub use mesh_runtime::testing::{TOKEN, bad_fields, channel, serve};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

pub type Client = BillingServiceClient<InterceptedService<Channel, Auth>>;
pub type UsersClient = UsersServiceClient<InterceptedService<Channel, Auth>>;

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: Client,
    pub users: UsersClient,
    pub db: TestDatabase,
    _stops: Vec<oneshot::Sender<()>>,
}

/// The plans tests run with: the built-in free and pro, and a "team" plan
/// for variant 99 with small limits.
pub const TEST_PLANS: &str = r#"{
  "default_paid_plan": "pro",
  "plans": [
    {"id": "free", "display_name": "Free",
     "limits": {"inbound_messages": 5, "ai_tokens": 1000, "ai_cost_usd": "0.01",
                "memories": 3, "documents": 1}},
    {"id": "pro", "display_name": "Pro", "variant_ids": [42], "features": ["voice_notes"],
     "limits": {"inbound_messages": 100, "ai_tokens": 100000, "ai_cost_usd": "5",
                "memories": 1000}},
    {"id": "team", "display_name": "Team", "variant_ids": ["99"],
     "limits": {"inbound_messages": 1000}}
  ]
}"#;

pub fn config(db: &TestDatabase, users: SocketAddr) -> Config {
    Config {
        service: db.service_config("billing"),
        users_url: format!("http://{users}"),
        call_timeout: Duration::from_secs(5),
        profile_cache: Duration::from_secs(300),
        plans: Plans::parse(TEST_PLANS).expect("test plans"),
        prices: Prices::builtin(),
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let db = TestDatabase::create().await;
    let (users_addr, users_stop) = serve(
        mesh_users::build(&db.service_config("users"))
            .await
            .expect("build users"),
    )
    .await;
    let mut config = config(&db, users_addr);
    adjust(&mut config);
    let (addr, billing_stop) =
        serve(mesh_billing::build(&config).await.expect("build billing")).await;
    TestApp {
        addr,
        client: BillingServiceClient::with_interceptor(channel(addr).await, bearer as Auth),
        users: UsersServiceClient::with_interceptor(channel(users_addr).await, bearer as Auth),
        db,
        _stops: vec![users_stop, billing_stop],
    }
}

impl TestApp {
    /// A user in the users service, in `time_zone`; returns its id.
    pub async fn new_user(&mut self, time_zone: &str) -> String {
        self.users
            .create_user(users_pb::CreateUserRequest {
                user: Some(users_pb::User {
                    timezone: time_zone.into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .expect("create a user")
            .into_inner()
            .user
            .expect("a user")
            .id
    }

    pub async fn consume(
        &mut self,
        user: &str,
        feature: pb::Feature,
        amount: i64,
        request_id: &str,
    ) -> Result<pb::Quota, tonic::Status> {
        self.client
            .consume_quota(pb::ConsumeQuotaRequest {
                user_id: user.into(),
                feature: feature as i32,
                amount,
                request_id: request_id.into(),
            })
            .await
            .map(|r| r.into_inner().quota.expect("a quota"))
    }

    pub async fn entitlements(&mut self, user: &str) -> pb::GetEntitlementsResponse {
        self.client
            .get_entitlements(pb::GetEntitlementsRequest {
                owner: Some(user_owner(user)),
            })
            .await
            .expect("entitlements")
            .into_inner()
    }

    /// The user's quota of `feature`.
    pub async fn quota(&mut self, user: &str, feature: pb::Feature) -> pb::Quota {
        self.entitlements(user)
            .await
            .quotas
            .into_iter()
            .find(|q| q.feature == feature as i32)
            .expect("every feature has a quota")
    }

    pub async fn apply(
        &mut self,
        event: &Value,
    ) -> Result<pb::ApplySubscriptionEventResponse, tonic::Status> {
        self.client
            .apply_subscription_event(pb::ApplySubscriptionEventRequest {
                event_name: event["meta"]["event_name"].as_str().unwrap_or("").into(),
                payload: event.to_string(),
            })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn subscription(
        &mut self,
        owner: pb::Owner,
    ) -> Result<pb::Subscription, tonic::Status> {
        self.client
            .get_subscription(pb::GetSubscriptionRequest { owner: Some(owner) })
            .await
            .map(|r| r.into_inner().subscription.expect("a subscription"))
    }
}

pub fn user_owner(user: &str) -> pb::Owner {
    pb::Owner {
        kind: Some(pb::owner::Kind::UserId(user.into())),
    }
}

pub fn workspace_owner(workspace: &str) -> pb::Owner {
    pb::Owner {
        kind: Some(pb::owner::Kind::WorkspaceId(workspace.into())),
    }
}

/// A subscription event as Lemon Squeezy sends it, for `custom_data`
/// (`{"user_id": ...}` or `{"workspace_id": ...}`), at `updated_at`.
pub fn subscription_event(
    name: &str,
    subscription_id: u64,
    custom_data: Value,
    status: &str,
    variant_id: u64,
    updated_at: &str,
) -> Value {
    json!({
        "meta": {"event_name": name, "test_mode": true, "webhook_id": "wh_1",
                 "custom_data": custom_data},
        "data": {
            "type": "subscriptions",
            "id": subscription_id.to_string(),
            "attributes": {
                "store_id": 1, "customer_id": 555, "order_id": 777, "product_id": 12,
                "variant_id": variant_id, "status": status,
                "user_name": "Ana Pérez", "user_email": "ana@example.com",
                "card_brand": "visa", "card_last_four": "4242",
                "renews_at": "2027-01-07T10:00:00.000000Z",
                "ends_at": if status == "cancelled" || status == "expired" {
                    json!("2026-12-31T10:00:00.000000Z")
                } else {
                    Value::Null
                },
                "trial_ends_at": if status == "on_trial" {
                    json!("2026-12-14T10:00:00.000000Z")
                } else {
                    Value::Null
                },
                "created_at": "2026-12-01T10:00:00.000000Z",
                "updated_at": updated_at,
                "test_mode": true,
                "urls": {"customer_portal": "https://store.example/billing?signature=abc",
                         "update_payment_method": "https://store.example/update?signature=def"}
            }
        }
    })
}

/// A subscription payment event (an invoice of `subscription_id`).
pub fn payment_event(name: &str, subscription_id: u64, invoice_id: u64, updated_at: &str) -> Value {
    json!({
        "meta": {"event_name": name, "test_mode": true, "webhook_id": "wh_1"},
        "data": {
            "type": "subscription-invoices",
            "id": invoice_id.to_string(),
            "attributes": {
                "store_id": 1, "subscription_id": subscription_id, "customer_id": 555,
                "user_name": "Ana Pérez", "user_email": "ana@example.com",
                "billing_reason": "renewal", "card_brand": "visa", "card_last_four": "4242",
                "currency": "USD", "status": "paid", "refunded": false,
                "subtotal": 1500, "tax": 285, "total": 1785, "total_usd": 1785,
                "created_at": updated_at, "updated_at": updated_at, "test_mode": true
            }
        }
    })
}

pub fn order_event(name: &str, order_id: u64, custom_data: Value) -> Value {
    json!({
        "meta": {"event_name": name, "test_mode": true, "custom_data": custom_data},
        "data": {
            "type": "orders",
            "id": order_id.to_string(),
            "attributes": {
                "store_id": 1, "customer_id": 555, "user_name": "Ana Pérez",
                "user_email": "ana@example.com", "currency": "USD", "status": "paid",
                "subtotal": 1500, "tax": 285, "total": 1785, "refunded": name == "order_refunded",
                "created_at": "2026-12-07T10:00:00Z", "updated_at": "2026-12-07T10:00:00Z"
            }
        }
    })
}
