//! What billing asks the users service about a user: the time zone their
//! days are counted in, and the workspaces they own (whose subscriptions
//! they enjoy). Both are remembered for BILLING_PROFILE_CACHE_SECONDS, so
//! the quota path makes no call on a warm user. A user the users service
//! does not know is counted in UTC and owns nothing.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use chrono_tz::Tz;
use mesh_proto::mesh::users::v1::{self as users_pb, users_service_client::UsersServiceClient};
use mesh_runtime::{ApiError, ApiResult, client::Downstream};
use tonic::Code;
use uuid::Uuid;

#[derive(Clone, Debug)]
pub struct Profile {
    pub time_zone: Tz,
    pub workspaces: Vec<Uuid>,
}

/// Past this many cached users the cache starts afresh rather than grow.
const MAX_CACHED: usize = 100_000;

pub struct People {
    users: Downstream,
    ttl: Duration,
    cache: Mutex<HashMap<Uuid, (Instant, Profile)>>,
}

impl People {
    pub fn new(users: Downstream, ttl: Duration) -> Self {
        Self {
            users,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// UNAVAILABLE when the users service does not answer and the user is
    /// not cached.
    pub async fn profile(&self, user: Uuid) -> ApiResult<Profile> {
        if let Some((seen, profile)) = self.cache.lock().expect("not poisoned").get(&user)
            && seen.elapsed() < self.ttl
        {
            return Ok(profile.clone());
        }
        let profile = self.fetch(user).await?;
        let mut cache = self.cache.lock().expect("not poisoned");
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(user, (Instant::now(), profile.clone()));
        Ok(profile)
    }

    /// Forgets `user` (after PurgeUser).
    pub fn forget(&self, user: Uuid) {
        self.cache.lock().expect("not poisoned").remove(&user);
    }

    #[tracing::instrument(skip(self))]
    async fn fetch(&self, user: Uuid) -> ApiResult<Profile> {
        let mut client = UsersServiceClient::new(self.users.channel());
        let found = match client
            .get_user(users_pb::GetUserRequest {
                user_id: user.to_string(),
            })
            .await
        {
            Ok(answer) => answer.into_inner().user,
            Err(status) if status.code() == Code::NotFound => None,
            Err(status) => return Err(self.failure(status)),
        };
        let Some(found) = found else {
            return Ok(Profile {
                time_zone: Tz::UTC,
                workspaces: Vec::new(),
            });
        };
        let time_zone = found.timezone.parse::<Tz>().map_err(|_| {
            ApiError::internal(anyhow::anyhow!(
                "user {user} has time zone {:?}, which is no IANA name",
                found.timezone
            ))
        })?;
        let workspaces = client
            .list_workspaces(users_pb::ListWorkspacesRequest {
                owner_user_id: user.to_string(),
                page_size: 1000,
                page_token: String::new(),
            })
            .await
            .map_err(|status| self.failure(status))?
            .into_inner()
            .workspaces
            .iter()
            .filter_map(|w| w.id.parse().ok())
            .collect();
        Ok(Profile {
            time_zone,
            workspaces,
        })
    }

    fn failure(&self, status: tonic::Status) -> ApiError {
        self.users
            .failure("the users service", status, || "no such user".into())
    }
}
