//! Workspaces and projects: CreateWorkspace (with request_id), GetWorkspace,
//! ListWorkspaces, CreateProject, GetProject, ListProjects, and the cascade of
//! DeleteUser.

use std::collections::HashSet;

use futures::future::join_all;
use mesh_proto::mesh::users::v1::*;
use tonic::{Code, Status};
use uuid::Uuid;

use crate::harness::{TestApp, bad_fields, spawn_app};

fn workspace_request(owner: &str, name: &str, request_id: &str) -> CreateWorkspaceRequest {
    CreateWorkspaceRequest {
        workspace: Some(Workspace {
            name: name.into(),
            owner_user_id: owner.into(),
            ..Default::default()
        }),
        request_id: request_id.into(),
    }
}

async fn try_create_workspace(
    app: &mut TestApp,
    request: CreateWorkspaceRequest,
) -> Result<Workspace, Status> {
    app.client
        .create_workspace(request)
        .await
        .map(|r| r.into_inner().workspace.unwrap())
}

async fn create_workspace(app: &mut TestApp, owner: &str, name: &str) -> Workspace {
    try_create_workspace(app, workspace_request(owner, name, ""))
        .await
        .unwrap()
}

fn project_request(
    workspace: &str,
    name: &str,
    description: &str,
    request_id: &str,
) -> CreateProjectRequest {
    CreateProjectRequest {
        project: Some(Project {
            workspace_id: workspace.into(),
            name: name.into(),
            description: description.into(),
            ..Default::default()
        }),
        request_id: request_id.into(),
    }
}

async fn try_create_project(
    app: &mut TestApp,
    request: CreateProjectRequest,
) -> Result<Project, Status> {
    app.client
        .create_project(request)
        .await
        .map(|r| r.into_inner().project.unwrap())
}

async fn create_project(app: &mut TestApp, workspace: &str, name: &str) -> Project {
    try_create_project(app, project_request(workspace, name, "", ""))
        .await
        .unwrap()
}

async fn list_workspaces(
    app: &mut TestApp,
    owner: &str,
    page_size: i32,
    page_token: String,
) -> Result<ListWorkspacesResponse, Status> {
    app.client
        .list_workspaces(ListWorkspacesRequest {
            owner_user_id: owner.into(),
            page_size,
            page_token,
        })
        .await
        .map(|r| r.into_inner())
}

async fn list_projects(
    app: &mut TestApp,
    workspace: &str,
    page_size: i32,
    page_token: String,
) -> Result<ListProjectsResponse, Status> {
    app.client
        .list_projects(ListProjectsRequest {
            workspace_id: workspace.into(),
            page_size,
            page_token,
        })
        .await
        .map(|r| r.into_inner())
}

/// Every workspace id, following next_page_token; also the size of each page.
async fn all_workspace_pages(
    app: &mut TestApp,
    owner: &str,
    page_size: i32,
) -> (Vec<String>, Vec<usize>) {
    let (mut ids, mut sizes, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let page = list_workspaces(app, owner, page_size, token).await.unwrap();
        sizes.push(page.workspaces.len());
        ids.extend(page.workspaces.into_iter().map(|w| w.id));
        token = page.next_page_token;
        if token.is_empty() {
            return (ids, sizes);
        }
        assert!(sizes.len() < 20, "pagination does not end");
    }
}

async fn all_project_pages(
    app: &mut TestApp,
    workspace: &str,
    page_size: i32,
) -> (Vec<String>, Vec<usize>) {
    let (mut ids, mut sizes, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let page = list_projects(app, workspace, page_size, token)
            .await
            .unwrap();
        sizes.push(page.projects.len());
        ids.extend(page.projects.into_iter().map(|p| p.id));
        token = page.next_page_token;
        if token.is_empty() {
            return (ids, sizes);
        }
        assert!(sizes.len() < 20, "pagination does not end");
    }
}

fn assert_no_repeats(ids: &[String]) {
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an id repeats: {ids:?}");
}

// ---------------------------------------------------------------- CreateWorkspace / GetWorkspace

#[tokio::test]
async fn create_workspace_then_get_round_trips() {
    let mut app = spawn_app().await;
    let owner = app.new_user().await;
    let created = create_workspace(&mut app, &owner, "Family").await;
    Uuid::parse_str(&created.id).expect("the id is a UUID");
    assert_eq!(created.name, "Family");
    assert_eq!(created.owner_user_id, owner);
    assert!(created.create_time.is_some());
    assert!(created.update_time.is_some());

    let fetched = app
        .client
        .get_workspace(GetWorkspaceRequest {
            workspace_id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .workspace
        .unwrap();
    assert_eq!(fetched, created);
    assert_eq!(app.count("workspaces").await, 1);
}

#[tokio::test]
async fn create_workspace_name_limit_counts_characters() {
    let mut app = spawn_app().await;
    let owner = app.new_user().await;
    // 200 two-byte characters are within the 200-character limit.
    let name = "é".repeat(200);
    let created = create_workspace(&mut app, &owner, &name).await;
    assert_eq!(created.name, name);
}

#[tokio::test]
async fn create_workspace_for_an_unknown_owner_is_not_found_and_writes_nothing() {
    let mut app = spawn_app().await;
    app.new_user().await;
    let stranger = Uuid::new_v4().to_string();
    for request_id in ["", "req-unknown-owner"] {
        let status =
            try_create_workspace(&mut app, workspace_request(&stranger, "Home", request_id))
                .await
                .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    assert_eq!(app.count("workspaces").await, 0);
    // A failed call stores no answer for its request_id.
    assert_eq!(app.count("idempotency_keys").await, 0);
}

#[tokio::test]
async fn create_workspace_with_a_bad_name_is_invalid_and_writes_nothing() {
    let mut app = spawn_app().await;
    let owner = app.new_user().await;
    let too_long = "x".repeat(201);
    for name in ["", "   ", "\t\n", too_long.as_str()] {
        let status = try_create_workspace(&mut app, workspace_request(&owner, name, "r1"))
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), ["workspace.name"], "name {name:?}");
    }
    assert_eq!(app.count("workspaces").await, 0);
    assert_eq!(app.count("idempotency_keys").await, 0);
}

#[tokio::test]
async fn create_workspace_with_a_bad_owner_id_is_invalid_and_writes_nothing() {
    let mut app = spawn_app().await;
    app.new_user().await;
    for owner in ["", "not-a-uuid", "123"] {
        let status = try_create_workspace(&mut app, workspace_request(owner, "Home", ""))
            .await
            .unwrap_err();
        assert_eq!(
            bad_fields(&status),
            ["workspace.owner_user_id"],
            "owner {owner:?}"
        );
    }
    // Both fields wrong: both are named.
    let status = try_create_workspace(&mut app, workspace_request("nope", "", ""))
        .await
        .unwrap_err();
    assert_eq!(
        bad_fields(&status),
        ["workspace.name", "workspace.owner_user_id"]
    );

    let status = try_create_workspace(
        &mut app,
        CreateWorkspaceRequest {
            workspace: None,
            request_id: String::new(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&status), ["workspace"]);
    assert_eq!(app.count("workspaces").await, 0);
}

#[tokio::test]
async fn a_retry_with_the_same_request_id_returns_the_first_workspace() {
    let mut app = spawn_app().await;
    let owner = app.new_user().await;
    let request = workspace_request(&owner, "Home", "create-home-1");
    let first = try_create_workspace(&mut app, request.clone())
        .await
        .unwrap();
    let retry = try_create_workspace(&mut app, request.clone())
        .await
        .unwrap();
    assert_eq!(retry, first);
    assert_eq!(app.count("workspaces").await, 1);
    assert_eq!(app.count("idempotency_keys").await, 1);

    // Without a request_id, the same request creates another workspace.
    let other = create_workspace(&mut app, &owner, "Home").await;
    assert_ne!(other.id, first.id);
    assert_eq!(app.count("workspaces").await, 2);
}

#[tokio::test]
async fn reusing_a_request_id_for_a_different_workspace_is_invalid() {
    let mut app = spawn_app().await;
    let owner = app.new_user().await;
    try_create_workspace(&mut app, workspace_request(&owner, "Home", "create-1"))
        .await
        .unwrap();
    let status = try_create_workspace(&mut app, workspace_request(&owner, "Office", "create-1"))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["request_id"]);
    assert_eq!(app.count("workspaces").await, 1);

    let mut conn = app.db.admin_connection().await;
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM users.workspaces")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(names, ["Home"]);
}

#[tokio::test]
async fn concurrent_creates_with_one_request_id_make_one_workspace() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let owner = crate::harness::create_user(&mut client, User::default())
        .await
        .id;

    let request = workspace_request(&owner, "Shared", "concurrent-create");
    let calls = (0..20).map(|_| {
        let mut client = app.client.clone();
        let request = request.clone();
        async move { client.create_workspace(request).await }
    });
    let results = join_all(calls).await;

    let ids: HashSet<String> = results
        .into_iter()
        .map(|r| {
            r.expect("every concurrent call succeeds")
                .into_inner()
                .workspace
                .unwrap()
                .id
        })
        .collect();
    assert_eq!(ids.len(), 1, "all calls return the same workspace: {ids:?}");
    assert_eq!(app.count("workspaces").await, 1);
    assert_eq!(app.count("idempotency_keys").await, 1);
}

#[tokio::test]
async fn a_request_id_over_128_characters_is_invalid() {
    let mut app = spawn_app().await;
    let owner = app.new_user().await;
    let status = try_create_workspace(
        &mut app,
        workspace_request(&owner, "Home", &"r".repeat(129)),
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&status), ["request_id"]);
    assert_eq!(app.count("workspaces").await, 0);
    assert_eq!(app.count("idempotency_keys").await, 0);

    // Exactly 128 is fine.
    try_create_workspace(
        &mut app,
        workspace_request(&owner, "Home", &"r".repeat(128)),
    )
    .await
    .unwrap();
    assert_eq!(app.count("workspaces").await, 1);
}

#[tokio::test]
async fn get_workspace_not_found_and_bad_id() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .get_workspace(GetWorkspaceRequest {
            workspace_id: Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    for workspace_id in ["", "not-a-uuid"] {
        let status = app
            .client
            .get_workspace(GetWorkspaceRequest {
                workspace_id: workspace_id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), ["workspace_id"], "id {workspace_id:?}");
    }
}

// ---------------------------------------------------------------- ListWorkspaces

#[tokio::test]
async fn list_workspaces_filters_by_owner() {
    let mut app = spawn_app().await;
    let ana = app.new_user().await;
    let bob = app.new_user().await;
    let mut anas = Vec::new();
    for name in ["a1", "a2", "a3"] {
        anas.push(create_workspace(&mut app, &ana, name).await);
    }
    let mut bobs = Vec::new();
    for name in ["b1", "b2"] {
        bobs.push(create_workspace(&mut app, &bob, name).await);
    }

    let page = list_workspaces(&mut app, &ana, 0, String::new())
        .await
        .unwrap();
    assert_eq!(page.workspaces, anas);
    assert_eq!(page.next_page_token, "");

    let page = list_workspaces(&mut app, &bob, 0, String::new())
        .await
        .unwrap();
    assert_eq!(page.workspaces, bobs);

    let page = list_workspaces(&mut app, "", 0, String::new())
        .await
        .unwrap();
    assert_eq!(page.workspaces.len(), 5);

    // A well-formed id that owns nothing: an empty list.
    let nobody = Uuid::new_v4().to_string();
    let page = list_workspaces(&mut app, &nobody, 0, String::new())
        .await
        .unwrap();
    assert!(page.workspaces.is_empty());
    assert_eq!(page.next_page_token, "");
}

#[tokio::test]
async fn list_workspaces_pages_in_creation_order() {
    let mut app = spawn_app().await;
    let owner = app.new_user().await;
    let other = app.new_user().await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(
            create_workspace(&mut app, &owner, &format!("w{i}"))
                .await
                .id,
        );
        create_workspace(&mut app, &other, &format!("o{i}")).await;
    }

    let (ids, sizes) = all_workspace_pages(&mut app, &owner, 2).await;
    assert_eq!(sizes, [2, 2, 1]);
    assert_no_repeats(&ids);
    assert_eq!(ids, created);

    // Unfiltered, all ten, still two at a time and without repeats.
    let (ids, sizes) = all_workspace_pages(&mut app, "", 2).await;
    assert_eq!(sizes, [2, 2, 2, 2, 2]);
    assert_no_repeats(&ids);
    assert_eq!(ids.len(), 10);
}

#[tokio::test]
async fn list_workspaces_with_a_bad_owner_or_token_is_invalid() {
    let mut app = spawn_app().await;
    let owner = app.new_user().await;
    create_workspace(&mut app, &owner, "Home").await;

    let status = list_workspaces(&mut app, "not-a-uuid", 0, String::new())
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["owner_user_id"]);

    for token in ["not-a-token", "!!!"] {
        let status = list_workspaces(&mut app, &owner, 2, token.into())
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), ["page_token"], "token {token:?}");
    }

    let status = list_workspaces(&mut app, &owner, -1, String::new())
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["page_size"]);
}

// ---------------------------------------------------------------- CreateProject / GetProject

#[tokio::test]
async fn create_project_then_get_round_trips() {
    let mut app = spawn_app().await;
    let owner = app.new_user().await;
    let workspace = create_workspace(&mut app, &owner, "Home").await;
    let created = try_create_project(
        &mut app,
        project_request(&workspace.id, "Garden", "Tomatoes and herbs", ""),
    )
    .await
    .unwrap();
    Uuid::parse_str(&created.id).expect("the id is a UUID");
    assert_eq!(created.workspace_id, workspace.id);
    assert_eq!(created.name, "Garden");
    assert_eq!(created.description, "Tomatoes and herbs");
    assert!(created.create_time.is_some());
    assert!(created.update_time.is_some());

    let fetched = app
        .client
        .get_project(GetProjectRequest {
            project_id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .project
        .unwrap();
    assert_eq!(fetched, created);
    assert_eq!(app.count("projects").await, 1);
}

#[tokio::test]
async fn create_project_in_an_unknown_workspace_is_not_found_and_writes_nothing() {
    let mut app = spawn_app().await;
    let ghost = Uuid::new_v4().to_string();
    for request_id in ["", "proj-ghost"] {
        let status =
            try_create_project(&mut app, project_request(&ghost, "Garden", "", request_id))
                .await
                .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    assert_eq!(app.count("projects").await, 0);
    assert_eq!(app.count("idempotency_keys").await, 0);
}

#[tokio::test]
async fn project_names_are_unique_within_a_workspace_only() {
    let mut app = spawn_app().await;
    let owner = app.new_user().await;
    let home = create_workspace(&mut app, &owner, "Home").await;
    let office = create_workspace(&mut app, &owner, "Office").await;
    let first = create_project(&mut app, &home.id, "Plans").await;

    let status = try_create_project(&mut app, project_request(&home.id, "Plans", "again", ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(app.count("projects").await, 1);

    let mut conn = app.db.admin_connection().await;
    let description: String =
        sqlx::query_scalar("SELECT description FROM users.projects WHERE id = $1")
            .bind(Uuid::parse_str(&first.id).unwrap())
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(description, "", "the first project is untouched");

    let elsewhere = create_project(&mut app, &office.id, "Plans").await;
    assert_eq!(elsewhere.workspace_id, office.id);
    assert_eq!(app.count("projects").await, 2);
}

#[tokio::test]
async fn create_project_description_over_2000_characters_is_invalid() {
    let mut app = spawn_app().await;
    let owner = app.new_user().await;
    let workspace = create_workspace(&mut app, &owner, "Home").await;

    let status = try_create_project(
        &mut app,
        project_request(&workspace.id, "Long", &"d".repeat(2001), ""),
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&status), ["project.description"]);
    assert_eq!(app.count("projects").await, 0);

    // 2000 characters, even multi-byte ones, are fine.
    let description = "ñ".repeat(2000);
    let created = try_create_project(
        &mut app,
        project_request(&workspace.id, "Long", &description, ""),
    )
    .await
    .unwrap();
    assert_eq!(created.description, description);
    assert_eq!(app.count("projects").await, 1);
}

#[tokio::test]
async fn create_project_with_bad_fields_names_each_and_writes_nothing() {
    let mut app = spawn_app().await;
    let owner = app.new_user().await;
    let workspace = create_workspace(&mut app, &owner, "Home").await;

    let status = try_create_project(
        &mut app,
        project_request("nope", "  ", &"d".repeat(2001), ""),
    )
    .await
    .unwrap_err();
    assert_eq!(
        bad_fields(&status),
        [
            "project.workspace_id",
            "project.name",
            "project.description"
        ]
    );

    let status = try_create_project(
        &mut app,
        project_request(&workspace.id, &"n".repeat(201), "", ""),
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&status), ["project.name"]);

    let status = try_create_project(
        &mut app,
        CreateProjectRequest {
            project: None,
            request_id: String::new(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&status), ["project"]);

    let status = try_create_project(
        &mut app,
        project_request(&workspace.id, "Garden", "", &"r".repeat(129)),
    )
    .await
    .unwrap_err();
    assert_eq!(bad_fields(&status), ["request_id"]);

    assert_eq!(app.count("projects").await, 0);
}

#[tokio::test]
async fn a_project_retry_with_the_same_request_id_returns_the_first_project() {
    let mut app = spawn_app().await;
    let owner = app.new_user().await;
    let workspace = create_workspace(&mut app, &owner, "Home").await;
    let request = project_request(&workspace.id, "Garden", "", "create-garden");
    let first = try_create_project(&mut app, request.clone()).await.unwrap();
    // Not ALREADY_EXISTS: the retry gets the first answer.
    let retry = try_create_project(&mut app, request).await.unwrap();
    assert_eq!(retry, first);
    assert_eq!(app.count("projects").await, 1);
}

#[tokio::test]
async fn get_project_not_found_and_bad_id() {
    let mut app = spawn_app().await;
    let status = app
        .client
        .get_project(GetProjectRequest {
            project_id: Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    for project_id in ["", "not-a-uuid"] {
        let status = app
            .client
            .get_project(GetProjectRequest {
                project_id: project_id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), ["project_id"], "id {project_id:?}");
    }
}

// ---------------------------------------------------------------- ListProjects

#[tokio::test]
async fn list_projects_pages_through_one_workspace() {
    let mut app = spawn_app().await;
    let owner = app.new_user().await;
    let home = create_workspace(&mut app, &owner, "Home").await;
    let office = create_workspace(&mut app, &owner, "Office").await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(
            create_project(&mut app, &home.id, &format!("p{i}"))
                .await
                .id,
        );
        create_project(&mut app, &office.id, &format!("p{i}")).await;
    }

    let (ids, sizes) = all_project_pages(&mut app, &home.id, 2).await;
    assert_eq!(sizes, [2, 2, 1]);
    assert_no_repeats(&ids);
    assert_eq!(ids, created);

    let page = list_projects(&mut app, &home.id, 0, String::new())
        .await
        .unwrap();
    assert_eq!(page.projects.len(), 5);
    assert!(page.projects.iter().all(|p| p.workspace_id == home.id));
    assert_eq!(page.next_page_token, "");
}

#[tokio::test]
async fn list_projects_of_an_unknown_workspace_is_not_found_and_of_an_empty_one_is_empty() {
    let mut app = spawn_app().await;
    let owner = app.new_user().await;
    let empty = create_workspace(&mut app, &owner, "Empty").await;

    let status = list_projects(&mut app, &Uuid::new_v4().to_string(), 0, String::new())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let page = list_projects(&mut app, &empty.id, 0, String::new())
        .await
        .unwrap();
    assert!(page.projects.is_empty());
    assert_eq!(page.next_page_token, "");
}

#[tokio::test]
async fn list_projects_with_a_bad_workspace_id_or_token_is_invalid() {
    let mut app = spawn_app().await;
    let owner = app.new_user().await;
    let workspace = create_workspace(&mut app, &owner, "Home").await;

    for workspace_id in ["", "not-a-uuid"] {
        let status = list_projects(&mut app, workspace_id, 0, String::new())
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&status), ["workspace_id"], "id {workspace_id:?}");
    }
    let status = list_projects(&mut app, &workspace.id, 2, "not-a-token".into())
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["page_token"]);
}

// ---------------------------------------------------------------- DeleteUser cascade

#[tokio::test]
async fn deleting_the_owner_removes_their_workspaces_and_projects() {
    let mut app = spawn_app().await;
    let owner = app.new_user().await;
    let keeper = app.new_user().await;
    let mut owned = Vec::new();
    let mut owned_projects = Vec::new();
    for name in ["Home", "Office"] {
        let workspace = create_workspace(&mut app, &owner, name).await;
        for project in ["a", "b"] {
            owned_projects.push(create_project(&mut app, &workspace.id, project).await.id);
        }
        owned.push(workspace.id);
    }
    let kept = create_workspace(&mut app, &keeper, "Kept").await;
    let kept_project = create_project(&mut app, &kept.id, "a").await;
    assert_eq!(app.count("workspaces").await, 3);
    assert_eq!(app.count("projects").await, 5);

    app.client
        .delete_user(DeleteUserRequest {
            user_id: owner.clone(),
            request_id: String::new(),
        })
        .await
        .unwrap();

    assert_eq!(app.count("workspaces").await, 1);
    assert_eq!(app.count("projects").await, 1);
    for workspace_id in owned {
        let status = app
            .client
            .get_workspace(GetWorkspaceRequest { workspace_id })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    for project_id in owned_projects {
        let status = app
            .client
            .get_project(GetProjectRequest { project_id })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
    let page = list_workspaces(&mut app, &owner, 0, String::new())
        .await
        .unwrap();
    assert!(page.workspaces.is_empty());

    // The other user's workspace and project are untouched.
    let page = list_workspaces(&mut app, "", 0, String::new())
        .await
        .unwrap();
    assert_eq!(page.workspaces, std::slice::from_ref(&kept));
    let page = list_projects(&mut app, &kept.id, 0, String::new())
        .await
        .unwrap();
    assert_eq!(page.projects, [kept_project]);
}
