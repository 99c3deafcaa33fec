//! Who a message goes to, asked of the users service: the phone (E.164) for
//! WhatsApp, the Telegram user id (which is also the private chat's id) for
//! Telegram.

use std::time::Duration;

use mesh_proto::mesh::users::v1::{self as users_pb, users_service_client::UsersServiceClient};
use mesh_runtime::{ApiError, ApiResult, client::Downstream, config::Pem};
use uuid::Uuid;

/// Where a message goes on its channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recipient {
    WhatsApp { phone: String },
    Telegram { chat_id: i64 },
}

pub struct Recipients {
    users: Downstream,
}

impl Recipients {
    pub fn new(
        url: &str,
        auth_token: &str,
        tls_ca: Option<&Pem>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            users: Downstream::new("CONVERSATIONS_USERS_URL", url, auth_token, tls_ca, timeout)?,
        })
    }

    /// The recipient of `user` on `channel` ("whatsapp" or "telegram"). A
    /// deactivated user has none: FAILED_PRECONDITION.
    pub async fn lookup(&self, user: Uuid, channel: &str) -> ApiResult<Recipient> {
        let answer = UsersServiceClient::new(self.users.channel())
            .get_user(users_pb::GetUserRequest {
                user_id: user.to_string(),
            })
            .await;
        let found = match answer {
            Ok(response) => response.into_inner().user.ok_or_else(|| {
                ApiError::internal(anyhow::anyhow!("GetUser answered without a user"))
            })?,
            Err(status) => return Err(self.failure(user, status)),
        };
        if !found.is_active {
            return Err(ApiError::FailedPrecondition(format!(
                "user {user} is deactivated: nothing is sent to a deactivated user"
            )));
        }
        match channel {
            "whatsapp" => match found.phone.filter(|p| !p.is_empty()) {
                Some(phone) => Ok(Recipient::WhatsApp { phone }),
                None => Err(ApiError::FailedPrecondition(format!(
                    "user {user} has no phone number to send to on WhatsApp"
                ))),
            },
            "telegram" => match found.telegram_user_id {
                Some(chat_id) => Ok(Recipient::Telegram { chat_id }),
                None => Err(ApiError::FailedPrecondition(format!(
                    "user {user} has no linked Telegram account to send to"
                ))),
            },
            other => Err(ApiError::FailedPrecondition(format!(
                "channel {other} has no provider to send through"
            ))),
        }
    }

    fn failure(&self, user: Uuid, status: tonic::Status) -> ApiError {
        self.users.failure("the users service", status, || {
            format!("no user with id {user}")
        })
    }
}
