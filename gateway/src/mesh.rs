//! The gateway's calls on the mesh: each one in a client span of its own,
//! through a shared lazily connected channel with a deadline, the bearer
//! token and the trace context (see `mesh_runtime::client`), and every
//! failure counted in the metrics.

use std::{future::Future, sync::Arc, time::Duration};

use mesh_proto::mesh::{
    billing::v1::{self as billing, billing_service_client::BillingServiceClient},
    conversations::v1::{self as conv, conversations_service_client::ConversationsServiceClient},
    users::v1::{self as users, users_service_client::UsersServiceClient},
};
use mesh_runtime::client::Downstream;
use tonic::{Code, Status};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{config::Config, metrics::Metrics};

/// A downstream call that did not answer OK.
#[derive(Debug, thiserror::Error)]
#[error("{service} {method}: {:?} {}", status.code(), status.message())]
pub struct CallError {
    pub service: &'static str,
    pub method: &'static str,
    pub status: Status,
}

impl CallError {
    pub fn code(&self) -> Code {
        self.status.code()
    }
}

/// Why one message or status could not be handed on.
#[derive(Debug)]
pub enum Failure {
    /// No retry can change the answer (the input itself was refused): it is
    /// dead-lettered with this reason, and the webhook still answered 200.
    Permanent(String),
    /// A retry may succeed: the webhook is answered 5xx so the provider retries.
    Retry(CallError),
}

impl From<CallError> for Failure {
    fn from(error: CallError) -> Self {
        match error.code() {
            Code::InvalidArgument | Code::OutOfRange => Self::Permanent(format!(
                "{} {} refused it: {}",
                error.service,
                error.method,
                error.status.message()
            )),
            _ => Self::Retry(error),
        }
    }
}

type Users = UsersServiceClient<mesh_runtime::client::MeshChannel>;
type Conversations = ConversationsServiceClient<mesh_runtime::client::MeshChannel>;
type Billing = BillingServiceClient<mesh_runtime::client::MeshChannel>;

pub struct Mesh {
    users: Downstream,
    conversations: Downstream,
    billing: Downstream,
    metrics: Arc<Metrics>,
}

impl Mesh {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let timeout = config.downstream_timeout;
        Ok(Self {
            users: Downstream::new(
                "GATEWAY_USERS_URL",
                &config.users_url,
                &config.auth_token,
                config.tls_ca.as_ref(),
                timeout,
            )?,
            conversations: Downstream::new(
                "GATEWAY_CONVERSATIONS_URL",
                &config.conversations_url,
                &config.auth_token,
                config.tls_ca.as_ref(),
                timeout,
            )?,
            billing: Downstream::new(
                "GATEWAY_BILLING_URL",
                &config.billing_url,
                &config.auth_token,
                config.tls_ca.as_ref(),
                timeout,
            )?,
            metrics,
        })
    }

    fn users(&self) -> Users {
        UsersServiceClient::new(self.users.channel())
    }

    fn conversations(&self) -> Conversations {
        ConversationsServiceClient::new(self.conversations.channel())
    }

    fn billing(&self) -> Billing {
        BillingServiceClient::new(self.billing.channel())
    }

    async fn call<T>(
        &self,
        service: &'static str,
        method: &'static str,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, CallError> {
        self.call_expecting(service, method, &[], call).await
    }

    /// Like [`Self::call`], where the codes in `answers` are answers the
    /// caller acts on by design (a used-up quota), not failures: they are
    /// not counted as downstream errors, so they set off no alert.
    async fn call_expecting<T>(
        &self,
        service: &'static str,
        method: &'static str,
        answers: &[Code],
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, CallError> {
        // The call's client span is the runtime's (mesh_runtime::client).
        let answer = call.await;
        match answer {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => {
                if !answers.contains(&status.code()) {
                    self.metrics
                        .downstream_error(service, method, status.code());
                }
                Err(CallError {
                    service,
                    method,
                    status,
                })
            }
        }
    }

    pub async fn upsert_user_by_phone(
        &self,
        phone: String,
        profile_name: String,
    ) -> Result<users::User, CallError> {
        let answer = self
            .call(
                "users",
                "UpsertUserByPhone",
                self.users()
                    .upsert_user_by_phone(users::UpsertUserByPhoneRequest {
                        phone,
                        profile_name,
                    }),
            )
            .await?;
        user_of(answer.user, "users", "UpsertUserByPhone")
    }

    pub async fn get_user_by_telegram_id(&self, id: i64) -> Result<users::User, CallError> {
        let answer = self
            .call(
                "users",
                "GetUserByTelegramId",
                self.users()
                    .get_user_by_telegram_id(users::GetUserByTelegramIdRequest {
                        telegram_user_id: id,
                    }),
            )
            .await?;
        user_of(answer.user, "users", "GetUserByTelegramId")
    }

    pub async fn create_user(
        &self,
        user: users::User,
        request_id: String,
    ) -> Result<users::User, CallError> {
        let answer = self
            .call(
                "users",
                "CreateUser",
                self.users().create_user(users::CreateUserRequest {
                    user: Some(user),
                    request_id,
                }),
            )
            .await?;
        user_of(answer.user, "users", "CreateUser")
    }

    pub async fn redeem_link_token(
        &self,
        token: &str,
        telegram_user_id: i64,
        telegram_username: String,
    ) -> Result<users::User, CallError> {
        let answer = self
            .call(
                "users",
                "RedeemLinkToken",
                self.users()
                    .redeem_link_token(users::RedeemLinkTokenRequest {
                        token: token.to_owned(),
                        telegram_user_id,
                        telegram_username,
                    }),
            )
            .await?;
        user_of(answer.user, "users", "RedeemLinkToken")
    }

    pub async fn touch_last_message(
        &self,
        user_id: String,
        message_time: Option<prost_types::Timestamp>,
    ) -> Result<(), CallError> {
        self.call(
            "users",
            "TouchLastMessage",
            self.users()
                .touch_last_message(users::TouchLastMessageRequest {
                    user_id,
                    message_time,
                }),
        )
        .await
        .map(drop)
    }

    pub async fn active_conversation(
        &self,
        user_id: String,
        channel: conv::Channel,
    ) -> Result<conv::Conversation, CallError> {
        let answer = self
            .call(
                "conversations",
                "GetOrCreateActiveConversation",
                self.conversations().get_or_create_active_conversation(
                    conv::GetOrCreateActiveConversationRequest {
                        user_id,
                        channel: channel.into(),
                        ..Default::default()
                    },
                ),
            )
            .await?;
        answer.conversation.ok_or_else(|| {
            missing(
                "conversations",
                "GetOrCreateActiveConversation",
                "conversation",
            )
        })
    }

    pub async fn record_inbound(
        &self,
        request: conv::RecordInboundMessageRequest,
    ) -> Result<conv::RecordInboundMessageResponse, CallError> {
        self.call(
            "conversations",
            "RecordInboundMessage",
            self.conversations().record_inbound_message(request),
        )
        .await
    }

    pub async fn update_delivery_status(
        &self,
        request: conv::UpdateDeliveryStatusRequest,
    ) -> Result<conv::UpdateDeliveryStatusResponse, CallError> {
        self.call(
            "conversations",
            "UpdateDeliveryStatus",
            self.conversations().update_delivery_status(request),
        )
        .await
    }

    /// Dead-letters one item; a repeat with the same `request_id` is harmless.
    pub async fn record_webhook_failure(
        &self,
        failure: conv::WebhookFailure,
    ) -> Result<(), CallError> {
        self.call(
            "conversations",
            "RecordWebhookFailure",
            self.conversations()
                .record_webhook_failure(conv::RecordWebhookFailureRequest {
                    failure: Some(failure),
                }),
        )
        .await
        .map(drop)
    }

    /// Consumes `amount` of the user's `feature` quota, once per `request_id`;
    /// RESOURCE_EXHAUSTED (consuming nothing) when it would go over.
    pub async fn consume_quota(
        &self,
        request: billing::ConsumeQuotaRequest,
    ) -> Result<billing::ConsumeQuotaResponse, CallError> {
        self.call_expecting(
            "billing",
            "ConsumeQuota",
            &[Code::ResourceExhausted],
            self.billing().consume_quota(request),
        )
        .await
    }

    /// Hands a verified Lemon Squeezy event to billing, which records and
    /// applies it once (a repeat delivery answers `recorded: false`).
    pub async fn apply_subscription_event(
        &self,
        request: billing::ApplySubscriptionEventRequest,
    ) -> Result<billing::ApplySubscriptionEventResponse, CallError> {
        self.call(
            "billing",
            "ApplySubscriptionEvent",
            self.billing().apply_subscription_event(request),
        )
        .await
    }

    /// Each downstream service and whether its gRPC health says SERVING.
    pub async fn readiness(&self) -> Vec<(&'static str, Result<(), String>)> {
        let check = |name: &'static str, downstream: &Downstream| {
            let mut client = HealthClient::new(downstream.raw_channel());
            async move {
                let asked = tokio::time::timeout(
                    READINESS_TIMEOUT,
                    client.check(HealthCheckRequest {
                        service: String::new(),
                    }),
                )
                .await;
                let state = match asked {
                    Err(_) => Err("no answer within 1 s".to_owned()),
                    Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
                    Ok(Ok(answer)) => match answer.into_inner().status() {
                        ServingStatus::Serving => Ok(()),
                        other => Err(other.as_str_name().to_owned()),
                    },
                };
                (name, state)
            }
        };
        let (users, conversations, billing) = tokio::join!(
            check("users", &self.users),
            check("conversations", &self.conversations),
            check("billing", &self.billing)
        );
        vec![users, conversations, billing]
    }
}

const READINESS_TIMEOUT: Duration = Duration::from_secs(1);

fn user_of(
    user: Option<users::User>,
    service: &'static str,
    method: &'static str,
) -> Result<users::User, CallError> {
    user.ok_or_else(|| missing(service, method, "user"))
}

/// An OK answer without the field it must carry: the callee is broken, and a
/// retry (perhaps on another replica) is the only hope.
fn missing(service: &'static str, method: &'static str, field: &str) -> CallError {
    CallError {
        service,
        method,
        status: Status::internal(format!("answered without a {field}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: Code) -> Failure {
        Failure::from(CallError {
            service: "users",
            method: "UpsertUserByPhone",
            status: Status::new(code, "phone: must be E.164"),
        })
    }

    /// Only a refused input is dead-lettered; anything else may pass on a
    /// retry, so the delivery is answered 5xx.
    #[test]
    fn only_a_refused_input_is_permanent() {
        for code in [Code::InvalidArgument, Code::OutOfRange] {
            let Failure::Permanent(reason) = failure(code) else {
                panic!("{code:?} is permanent");
            };
            assert_eq!(
                reason,
                "users UpsertUserByPhone refused it: phone: must be E.164"
            );
        }
        for code in [
            Code::Unavailable,
            Code::FailedPrecondition,
            Code::NotFound,
            Code::AlreadyExists,
            Code::Internal,
            Code::Unauthenticated,
        ] {
            assert!(
                matches!(failure(code), Failure::Retry(e) if e.code() == code),
                "{code:?} is retried"
            );
        }
    }
}
