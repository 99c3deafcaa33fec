//! What the scheduler asks the users service about a user: their time zone,
//! preferred check-in time, channels and quiet hours. The users service owns
//! them; nothing is copied into this schema but the time zone an item was
//! scheduled in.

use chrono::NaiveTime;
use chrono_tz::Tz;
use mesh_proto::mesh::users::v1::{self as users_pb, users_service_client::UsersServiceClient};
use mesh_runtime::{ApiError, ApiResult, client::Downstream};
use uuid::Uuid;

use crate::clock;

/// A user as the scheduler needs them.
#[derive(Clone, Debug)]
pub struct Person {
    pub time_zone: Tz,
    /// The daily check-in's local time, when the user chose one.
    pub preferred_checkin_time: Option<NaiveTime>,
    pub has_phone: bool,
    pub has_telegram: bool,
    pub active: bool,
}

impl Person {
    /// The channel an item without one is sent on: WhatsApp when the user
    /// has a phone, else Telegram; None when they have neither.
    pub fn default_channel(&self) -> Option<&'static str> {
        if self.has_phone {
            Some("whatsapp")
        } else if self.has_telegram {
            Some("telegram")
        } else {
            None
        }
    }
}

/// Local quiet hours: no message is sent from `start` to `end` (which may be
/// on the next day, e.g. 22:00-07:00).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

pub struct People {
    users: Downstream,
}

impl People {
    pub fn new(users: Downstream) -> Self {
        Self { users }
    }

    /// NOT_FOUND for a user the users service does not know; UNAVAILABLE
    /// when it does not answer.
    #[tracing::instrument(skip(self))]
    pub async fn person(&self, user: Uuid) -> ApiResult<Person> {
        let found = UsersServiceClient::new(self.users.channel())
            .get_user(users_pb::GetUserRequest {
                user_id: user.to_string(),
            })
            .await
            .map_err(|status| self.failure(user, status))?
            .into_inner()
            .user
            .ok_or_else(|| {
                ApiError::internal(anyhow::anyhow!("GetUser answered without a user"))
            })?;
        let time_zone = found.timezone.parse::<Tz>().map_err(|_| {
            ApiError::internal(anyhow::anyhow!(
                "user {user} has time zone {:?}, which is no IANA name",
                found.timezone
            ))
        })?;
        Ok(Person {
            time_zone,
            preferred_checkin_time: clock::hh_mm(&found.preferred_checkin_time),
            has_phone: found.phone.is_some_and(|phone| !phone.is_empty()),
            has_telegram: found.telegram_user_id.is_some(),
            active: found.is_active,
        })
    }

    /// The user's quiet hours (the users service answers its defaults until
    /// the user sets their own); None when start equals end or either is unset.
    #[tracing::instrument(skip(self))]
    pub async fn quiet_hours(&self, user: Uuid) -> ApiResult<Option<QuietHours>> {
        let preferences = UsersServiceClient::new(self.users.channel())
            .get_agent_preferences(users_pb::GetAgentPreferencesRequest {
                user_id: user.to_string(),
            })
            .await
            .map_err(|status| self.failure(user, status))?
            .into_inner()
            .preferences
            .unwrap_or_default();
        let start = clock::hh_mm(&preferences.quiet_hours_start);
        let end = clock::hh_mm(&preferences.quiet_hours_end);
        Ok(match (start, end) {
            (Some(start), Some(end)) if start != end => Some(QuietHours { start, end }),
            _ => None,
        })
    }

    fn failure(&self, user: Uuid, status: tonic::Status) -> ApiError {
        self.users.failure("the users service", status, || {
            format!("no user with id {user}")
        })
    }
}
