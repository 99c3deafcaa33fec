//! Who a message goes to, asked of the users service: the phone (E.164) for
//! WhatsApp, the Telegram user id (which is also the private chat's id) for
//! Telegram.

use std::{sync::OnceLock, time::Duration};

use mesh_proto::mesh::users::v1::{self as users_pb, users_service_client::UsersServiceClient};
use mesh_runtime::{ApiError, ApiResult};
use tonic::{
    Code,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};
use uuid::Uuid;

/// Where a message goes on its channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recipient {
    WhatsApp { phone: String },
    Telegram { chat_id: i64 },
}

/// Sends the mesh bearer token and the current trace context with every call.
#[derive(Clone)]
struct MeshAuth {
    authorization: MetadataValue<Ascii>,
}

impl Interceptor for MeshAuth {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut request = mesh_runtime::telemetry::inject_trace_context(request)?;
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        Ok(request)
    }
}

type UsersClient = UsersServiceClient<InterceptedService<Channel, MeshAuth>>;

pub struct Recipients {
    endpoint: Endpoint,
    auth: MeshAuth,
    /// Made on first use (a channel needs the runtime), then shared: it
    /// connects lazily and reconnects as needed, so this service starts
    /// without the users service.
    client: OnceLock<UsersClient>,
    url: String,
}

impl Recipients {
    pub fn new(url: &str, auth_token: &str, timeout: Duration) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| anyhow::anyhow!("CONVERSATIONS_USERS_URL={url:?} is not valid: {e}"))?
            .connect_timeout(Duration::from_secs(3).min(timeout))
            .timeout(timeout);
        let authorization = format!("Bearer {auth_token}")
            .parse()
            .map_err(|_| anyhow::anyhow!("MESH_AUTH_TOKEN cannot be sent as a gRPC header"))?;
        Ok(Self {
            endpoint,
            auth: MeshAuth { authorization },
            client: OnceLock::new(),
            url: url.to_owned(),
        })
    }

    fn client(&self) -> UsersClient {
        self.client
            .get_or_init(|| {
                UsersServiceClient::with_interceptor(
                    self.endpoint.connect_lazy(),
                    self.auth.clone(),
                )
            })
            .clone()
    }

    /// The recipient of `user` on `channel` ("whatsapp" or "telegram"). A
    /// deactivated user has none: FAILED_PRECONDITION.
    pub async fn lookup(&self, user: Uuid, channel: &str) -> ApiResult<Recipient> {
        let answer = self
            .client()
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
        match status.code() {
            Code::NotFound => ApiError::not_found(format!("no user with id {user}")),
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Unknown => {
                tracing::warn!(url = %self.url, status = %status, "the users service did not answer");
                ApiError::Unavailable(
                    "the users service is unavailable, so the recipient is unknown; retry".into(),
                )
            }
            _ => ApiError::internal(anyhow::anyhow!(
                "users service GetUser failed: {} {}",
                status.code(),
                status.message()
            )),
        }
    }
}
