//! Erasing one user from this context (GDPR / HIPAA): every row about them,
//! counted by table, in one transaction.

use mesh_proto::mesh::scheduler::v1 as pb;
use mesh_runtime::ApiResult;

use crate::State;

/// Tables holding a `user_id`. None references another, so each count is
/// what that table lost.
const USER_TABLES: &[&str] = &[
    "reminders",
    "check_ins",
    "notifications",
    "calendar_events",
    "dead_letters",
];

#[tracing::instrument(skip_all)]
pub async fn purge_user(
    state: &State,
    request: pb::PurgeUserRequest,
) -> ApiResult<pb::PurgeUserResponse> {
    mesh_runtime::purge::purge_user(
        &state.pool,
        &request,
        &request.user_id,
        &request.request_id,
        USER_TABLES,
        |deleted| pb::PurgeUserResponse { deleted },
    )
    .await
}
