//! Workspaces (owned by a user) and the projects inside them. Memory and
//! billing scope by these ids.

use chrono::{DateTime, Utc};
use mesh_proto::mesh::users::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, Violations,
    convert::{parse_uuid, timestamp},
    idempotency, pagination,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::validate;

#[derive(sqlx::FromRow)]
struct WorkspaceRow {
    id: Uuid,
    name: String,
    owner_user_id: Uuid,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl From<WorkspaceRow> for pb::Workspace {
    fn from(row: WorkspaceRow) -> Self {
        Self {
            id: row.id.to_string(),
            name: row.name,
            owner_user_id: row.owner_user_id.to_string(),
            create_time: Some(timestamp(row.create_time)),
            update_time: Some(timestamp(row.update_time)),
        }
    }
}

#[derive(sqlx::FromRow)]
struct ProjectRow {
    id: Uuid,
    workspace_id: Uuid,
    name: String,
    description: String,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
}

impl From<ProjectRow> for pb::Project {
    fn from(row: ProjectRow) -> Self {
        Self {
            id: row.id.to_string(),
            workspace_id: row.workspace_id.to_string(),
            name: row.name,
            description: row.description,
            create_time: Some(timestamp(row.create_time)),
            update_time: Some(timestamp(row.update_time)),
        }
    }
}

const MAX_NAME: usize = 200;

#[tracing::instrument(skip_all)]
pub async fn create_workspace(
    pool: &PgPool,
    request: pb::CreateWorkspaceRequest,
) -> ApiResult<pb::CreateWorkspaceResponse> {
    let Some(workspace) = &request.workspace else {
        return Err(ApiError::invalid("workspace", "is required"));
    };
    let mut violations = Violations::default();
    let name = violations.check(validate::required_name(
        "workspace.name",
        &workspace.name,
        MAX_NAME,
    ));
    let owner = violations.check(parse_uuid(
        "workspace.owner_user_id",
        &workspace.owner_user_id,
    ));
    violations.check(idempotency::check_request_id(&request.request_id));
    violations.into_result()?;
    let (name, owner) = (name.expect("validated"), owner.expect("validated"));
    let key = idempotency::Key {
        operation: "CreateWorkspace",
        request_id: &request.request_id,
        user_id: Some(owner),
    };
    idempotency::run_once(pool, key, &request, async |conn| {
        let row: WorkspaceRow = sqlx::query_as(
            "INSERT INTO workspaces (id, name, owner_user_id) VALUES ($1, $2, $3) RETURNING *",
        )
        .bind(Uuid::now_v7())
        .bind(&name)
        .bind(owner)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| ApiError::from(e).or_missing(|| format!("no user with id {owner}")))?;
        Ok(pb::CreateWorkspaceResponse {
            workspace: Some(row.into()),
        })
    })
    .await
}

async fn find_workspace(pool: &PgPool, id: Uuid) -> ApiResult<WorkspaceRow> {
    sqlx::query_as("SELECT * FROM workspaces WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no workspace with id {id}")))
}

#[tracing::instrument(skip(pool))]
pub async fn get_workspace(
    pool: &PgPool,
    request: pb::GetWorkspaceRequest,
) -> ApiResult<pb::GetWorkspaceResponse> {
    let id = parse_uuid("workspace_id", &request.workspace_id)?;
    Ok(pb::GetWorkspaceResponse {
        workspace: Some(find_workspace(pool, id).await?.into()),
    })
}

#[tracing::instrument(skip(pool))]
pub async fn list_workspaces(
    pool: &PgPool,
    request: pb::ListWorkspacesRequest,
) -> ApiResult<pb::ListWorkspacesResponse> {
    let mut violations = Violations::default();
    let owner = match request.owner_user_id.as_str() {
        "" => Some(None),
        raw => violations.check(parse_uuid("owner_user_id", raw)).map(Some),
    };
    let page =
        pagination::Page::<Uuid>::check(&mut violations, request.page_size, &request.page_token);
    violations.into_result()?;
    let (owner, page) = (owner.expect("validated"), page.expect("validated"));
    let mut rows: Vec<WorkspaceRow> = sqlx::query_as(
        "SELECT * FROM workspaces
         WHERE ($1::uuid IS NULL OR owner_user_id = $1) AND ($2::uuid IS NULL OR id > $2)
         ORDER BY id LIMIT $3",
    )
    .bind(owner)
    .bind(page.after)
    .bind(page.size + 1)
    .fetch_all(pool)
    .await?;
    let next_page_token = pagination::next_page(&mut rows, page.size, |w| w.id.to_string());
    Ok(pb::ListWorkspacesResponse {
        workspaces: rows.into_iter().map(Into::into).collect(),
        next_page_token,
    })
}

#[tracing::instrument(skip_all)]
pub async fn create_project(
    pool: &PgPool,
    request: pb::CreateProjectRequest,
) -> ApiResult<pb::CreateProjectResponse> {
    let Some(project) = &request.project else {
        return Err(ApiError::invalid("project", "is required"));
    };
    let mut violations = Violations::default();
    let workspace = violations.check(parse_uuid("project.workspace_id", &project.workspace_id));
    let name = violations.check(validate::required_name(
        "project.name",
        &project.name,
        MAX_NAME,
    ));
    violations.check(validate::max_chars(
        "project.description",
        &project.description,
        2000,
    ));
    violations.check(idempotency::check_request_id(&request.request_id));
    violations.into_result()?;
    let (workspace, name) = (workspace.expect("validated"), name.expect("validated"));
    // The stored answer is about the workspace owner: erasing them erases it.
    // Only a request that is remembered needs the owner; without one a
    // missing workspace is told by the insert (the foreign key) instead.
    let owner = if request.request_id.is_empty() {
        None
    } else {
        Some(find_workspace(pool, workspace).await?.owner_user_id)
    };
    let key = idempotency::Key {
        operation: "CreateProject",
        request_id: &request.request_id,
        user_id: owner,
    };
    idempotency::run_once(pool, key, &request, async |conn| {
        let row: ProjectRow = sqlx::query_as(
            "INSERT INTO projects (id, workspace_id, name, description) VALUES ($1, $2, $3, $4)
             RETURNING *",
        )
        .bind(Uuid::now_v7())
        .bind(workspace)
        .bind(&name)
        .bind(&project.description)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| {
            ApiError::from(e)
                .or_missing(|| format!("no workspace with id {workspace}"))
                .or_conflict(|| {
                    format!("workspace {workspace} already has a project named {name:?}")
                })
        })?;
        Ok(pb::CreateProjectResponse {
            project: Some(row.into()),
        })
    })
    .await
}

#[tracing::instrument(skip(pool))]
pub async fn get_project(
    pool: &PgPool,
    request: pb::GetProjectRequest,
) -> ApiResult<pb::GetProjectResponse> {
    let id = parse_uuid("project_id", &request.project_id)?;
    let row: ProjectRow = sqlx::query_as("SELECT * FROM projects WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no project with id {id}")))?;
    Ok(pb::GetProjectResponse {
        project: Some(row.into()),
    })
}

#[tracing::instrument(skip(pool))]
pub async fn list_projects(
    pool: &PgPool,
    request: pb::ListProjectsRequest,
) -> ApiResult<pb::ListProjectsResponse> {
    let mut violations = Violations::default();
    let workspace = violations.check(parse_uuid("workspace_id", &request.workspace_id));
    let page =
        pagination::Page::<Uuid>::check(&mut violations, request.page_size, &request.page_token);
    violations.into_result()?;
    let (workspace, page) = (workspace.expect("validated"), page.expect("validated"));
    let mut rows: Vec<ProjectRow> = sqlx::query_as(
        "SELECT * FROM projects WHERE workspace_id = $1 AND ($2::uuid IS NULL OR id > $2)
         ORDER BY id LIMIT $3",
    )
    .bind(workspace)
    .bind(page.after)
    .bind(page.size + 1)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        // An empty page: tell "no projects" from "no such workspace".
        find_workspace(pool, workspace).await?;
    }
    let next_page_token = pagination::next_page(&mut rows, page.size, |p| p.id.to_string());
    Ok(pb::ListProjectsResponse {
        projects: rows.into_iter().map(Into::into).collect(),
        next_page_token,
    })
}
