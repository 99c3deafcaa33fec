//! The checks on a WatchEvents request: where the stream starts and what it
//! is filtered to.

use mesh_proto::mesh::conversations::v1 as pb;
use mesh_runtime::{ApiResult, Violations};
use uuid::Uuid;

use super::cursor::decode_cursor;
use crate::wire;

/// What a WatchEvents call asked for, validated.
pub(super) struct Filter {
    pub(super) types: Option<Vec<&'static str>>,
    pub(super) user_id: Option<Uuid>,
    pub(super) conversation_id: Option<Uuid>,
}

pub(super) enum Start {
    After(i64),
    Oldest,
    Now,
}

pub(super) fn validate(request: &pb::WatchEventsRequest) -> ApiResult<(Start, Filter)> {
    let mut violations = Violations::default();
    let after = if request.after_cursor.is_empty() {
        None
    } else {
        violations.check(decode_cursor("after_cursor", &request.after_cursor))
    };
    if request.from_oldest && !request.after_cursor.is_empty() {
        violations.push(
            "from_oldest",
            "cannot be combined with after_cursor: the cursor says where to start",
        );
    }
    let mut types = Vec::new();
    for (i, value) in request.types.iter().enumerate() {
        if let Some(name) =
            violations.check(wire::event_type::require(&format!("types[{i}]"), *value))
            && !types.contains(&name)
        {
            types.push(name);
        }
    }
    let user_id = violations.check(wire::optional_uuid("user_id", &request.user_id));
    let conversation_id = violations.check(wire::optional_uuid(
        "conversation_id",
        &request.conversation_id,
    ));
    violations.into_result()?;
    let start = match after {
        Some(seq) => Start::After(seq),
        None if request.from_oldest => Start::Oldest,
        None => Start::Now,
    };
    Ok((
        start,
        Filter {
            types: (!types.is_empty()).then_some(types),
            user_id: user_id.flatten(),
            conversation_id: conversation_id.flatten(),
        },
    ))
}
