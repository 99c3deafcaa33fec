//! The other contexts an erasure purges, and the one call each gets:
//! PurgeUser with the erasure's own request id, so a call whose answer was
//! lost is answered from the context's record the next time.

use std::collections::HashMap;

use mesh_proto::mesh::{
    billing::v1 as billing, conversations::v1 as conversations, memory::v1 as memory,
    scheduler::v1 as scheduler,
};
use mesh_runtime::{
    client::Downstream,
    config::{ConfigError, Pem},
};
use tonic::Status;
use uuid::Uuid;

use crate::config::ErasureConfig;

/// A context holding data about users, other than this one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    Conversations,
    Memory,
    Scheduler,
    Billing,
}

impl Context {
    pub const ALL: [Context; 4] = [
        Context::Conversations,
        Context::Memory,
        Context::Scheduler,
        Context::Billing,
    ];

    /// The name steps are recorded under.
    pub fn name(self) -> &'static str {
        match self {
            Context::Conversations => "conversations",
            Context::Memory => "memory",
            Context::Scheduler => "scheduler",
            Context::Billing => "billing",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    pub fn url_var(self) -> &'static str {
        match self {
            Context::Conversations => "USERS_CONVERSATIONS_URL",
            Context::Memory => "USERS_MEMORY_URL",
            Context::Scheduler => "USERS_SCHEDULER_URL",
            Context::Billing => "USERS_BILLING_URL",
        }
    }

    /// Where `cargo xtask up` runs it.
    pub fn default_url(self) -> &'static str {
        match self {
            Context::Conversations => "http://127.0.0.1:50052",
            Context::Memory => "http://127.0.0.1:50053",
            Context::Scheduler => "http://127.0.0.1:50054",
            Context::Billing => "http://127.0.0.1:50055",
        }
    }
}

/// The configured contexts, each with its connection.
pub struct Contexts {
    contexts: Vec<(Context, Downstream)>,
}

impl Contexts {
    pub fn new(
        config: &ErasureConfig,
        auth_token: &str,
        tls_ca: Option<&Pem>,
    ) -> Result<Self, ConfigError> {
        let contexts = config
            .contexts
            .iter()
            .map(|(context, url)| {
                let downstream = Downstream::new(
                    context.url_var(),
                    url,
                    auth_token,
                    tls_ca,
                    config.purge_timeout,
                )?;
                Ok((*context, downstream))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Self { contexts })
    }

    /// The configured contexts, in step order.
    pub fn names(&self) -> impl Iterator<Item = Context> + '_ {
        self.contexts.iter().map(|(context, _)| *context)
    }

    /// Asks `context` to erase `user`. `phone` lets conversations find the
    /// webhook failures that name only the phone.
    pub async fn purge(
        &self,
        context: Context,
        user: Uuid,
        phone: &str,
        request_id: &str,
    ) -> Result<HashMap<String, i64>, Status> {
        let Some((_, downstream)) = self.contexts.iter().find(|(c, _)| *c == context) else {
            return Err(Status::failed_precondition(format!(
                "{} is not configured ({})",
                context.name(),
                context.url_var()
            )));
        };
        let channel = downstream.channel();
        let user_id = user.to_string();
        let request_id = request_id.to_owned();
        let deleted = match context {
            Context::Conversations => {
                conversations::conversations_service_client::ConversationsServiceClient::new(
                    channel,
                )
                .purge_user(conversations::PurgeUserRequest {
                    user_id,
                    phone: phone.to_owned(),
                    request_id,
                })
                .await?
                .into_inner()
                .deleted
            }
            Context::Memory => {
                memory::memory_service_client::MemoryServiceClient::new(channel)
                    .purge_user(memory::PurgeUserRequest {
                        user_id,
                        request_id,
                    })
                    .await?
                    .into_inner()
                    .deleted
            }
            Context::Scheduler => {
                scheduler::scheduler_service_client::SchedulerServiceClient::new(channel)
                    .purge_user(scheduler::PurgeUserRequest {
                        user_id,
                        request_id,
                    })
                    .await?
                    .into_inner()
                    .deleted
            }
            Context::Billing => {
                billing::billing_service_client::BillingServiceClient::new(channel)
                    .purge_user(billing::PurgeUserRequest {
                        user_id,
                        request_id,
                    })
                    .await?
                    .into_inner()
                    .deleted
            }
        };
        Ok(deleted)
    }
}
