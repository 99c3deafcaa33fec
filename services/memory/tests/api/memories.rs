//! Memories: create, keyed upsert, get, update, list, delete, forget; project
//! scope, expiry, and bad input rejected with nothing written.

use std::time::Duration;

use mesh_proto::mesh::memory::v1::{self as pb, MemoryKind};
use mesh_runtime::convert::timestamp;
use tonic::Code;

use crate::harness::{Client, TestApp, WordsEmbedder, bad_fields, spawn_app_with};

pub async fn words_app() -> (TestApp, std::sync::Arc<WordsEmbedder>) {
    let embedder = WordsEmbedder::new("words-v1", 64);
    (spawn_app_with(embedder.clone(), |_| {}).await, embedder)
}

pub fn memory(user: &str, kind: MemoryKind, content: &str) -> pb::Memory {
    pb::Memory {
        user_id: user.into(),
        kind: kind as i32,
        content: content.into(),
        ..Default::default()
    }
}

pub async fn create(client: &mut Client, memory: pb::Memory) -> pb::Memory {
    client
        .create_memory(pb::CreateMemoryRequest {
            memory: Some(memory),
            ..Default::default()
        })
        .await
        .expect("CreateMemory")
        .into_inner()
        .memory
        .expect("memory")
}

pub async fn list(client: &mut Client, request: pb::ListMemoriesRequest) -> Vec<pb::Memory> {
    client
        .list_memories(request)
        .await
        .expect("ListMemories")
        .into_inner()
        .memories
}

pub fn user() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn a_memory_is_stored_with_its_fields_and_vector_model() {
    let (mut app, embedder) = words_app().await;
    let user = user();
    let mut given = memory(&user, MemoryKind::Fact, "Has a sister called Ana");
    given.importance = Some(0.9);
    given.emotional_valence = 1.5;
    given.tags = vec!["family".into(), "family".into(), "people".into()];
    given.entities = vec![pb::Entity {
        name: "Ana".into(),
        r#type: pb::EntityType::Person as i32,
    }];
    given.source_type = pb::SourceType::Message as i32;
    given.source_ref = "msg-1".into();
    given.metadata = Some(mesh_runtime::convert::json_to_struct(
        &serde_json::json!({"lang": "en"}),
    ));
    let stored = create(&mut app.client, given).await;
    assert_eq!(stored.user_id, user);
    assert_eq!(stored.importance, Some(0.9));
    assert_eq!(stored.emotional_valence, 1.5);
    assert_eq!(stored.tags, ["family", "people"], "repeats dropped");
    assert_eq!(stored.entities[0].name, "Ana");
    assert_eq!(stored.source_type, pb::SourceType::Message as i32);
    assert_eq!(stored.embedding_model, "words-v1");
    assert_eq!(stored.revision, 0);
    assert!(stored.create_time.is_some() && stored.update_time.is_some());
    assert!(embedder.calls.load(std::sync::atomic::Ordering::Relaxed) >= 1);

    let got = app
        .client
        .get_memory(pb::GetMemoryRequest {
            id: stored.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .memory
        .unwrap();
    assert_eq!(got, stored);

    // Defaults: importance 0.5, source MANUAL.
    let plain = create(
        &mut app.client,
        memory(&user, MemoryKind::Goal, "Run a marathon"),
    )
    .await;
    assert_eq!(plain.importance, Some(0.5));
    assert_eq!(plain.source_type, pb::SourceType::Manual as i32);
}

#[tokio::test]
async fn a_retry_with_the_same_request_id_stores_once() {
    let (mut app, _) = words_app().await;
    let user = user();
    let request = pb::CreateMemoryRequest {
        memory: Some(memory(&user, MemoryKind::Fact, "Works at Acme")),
        request_id: "create-1".into(),
        ..Default::default()
    };
    let first = app
        .client
        .create_memory(request.clone())
        .await
        .unwrap()
        .into_inner();
    let second = app
        .client
        .create_memory(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, second);
    assert_eq!(app.count("memories").await, 1);
}

#[tokio::test]
async fn bad_input_is_refused_naming_every_field_and_nothing_is_written() {
    let (mut app, _) = words_app().await;
    let bad = pb::Memory {
        user_id: "not-a-uuid".into(),
        project_id: "nope".into(),
        kind: 99,
        category: "diet".into(),
        content: " ".into(),
        importance: Some(1.5),
        emotional_valence: -3.0,
        tags: vec![String::new()],
        entities: vec![pb::Entity {
            name: "Ana".into(),
            r#type: 0,
        }],
        source_type: 42,
        expire_time: Some(timestamp(chrono::Utc::now() - chrono::Duration::hours(1))),
        ..Default::default()
    };
    let status = app
        .client
        .create_memory(pb::CreateMemoryRequest {
            memory: Some(bad),
            embedding: Some(pb::Embedding {
                values: vec![0.5; 3],
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut fields = bad_fields(&status);
    fields.sort();
    assert_eq!(
        fields,
        [
            "embedding.values",
            "memory.content",
            "memory.emotional_valence",
            "memory.entities[0].type",
            "memory.expire_time",
            "memory.importance",
            "memory.key",
            "memory.kind",
            "memory.project_id",
            "memory.source_type",
            "memory.tags",
            "memory.user_id",
        ]
    );
    let why = crate::harness::violation(&status, "embedding.values");
    assert!(
        why.contains("has 3 dimensions") && why.contains("words-v1 makes 64"),
        "{why}"
    );

    let unknown_kind = app
        .client
        .create_memory(pb::CreateMemoryRequest {
            memory: Some(pb::Memory {
                kind: 77,
                ..memory(&user(), MemoryKind::Fact, "x")
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&unknown_kind), ["memory.kind"]);

    let too_long = app
        .client
        .create_memory(pb::CreateMemoryRequest {
            memory: Some(memory(&user(), MemoryKind::Fact, &"x".repeat(8001))),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&too_long), ["memory.content"]);
    assert_eq!(app.count("memories").await, 0);
}

#[tokio::test]
async fn restating_a_keyed_fact_updates_it_in_place_and_keeps_the_previous_value() {
    let (mut app, _) = words_app().await;
    let user = user();
    let keyed = |content: &str| pb::UpsertMemoryRequest {
        memory: Some(pb::Memory {
            category: "location".into(),
            key: "home_city".into(),
            ..memory(&user, MemoryKind::Fact, content)
        }),
        ..Default::default()
    };
    let first = app
        .client
        .upsert_memory(keyed("Lives in Bogotá"))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    let second = app
        .client
        .upsert_memory(keyed("Lives in Medellín"))
        .await
        .unwrap()
        .into_inner();
    assert!(!second.created);
    let (first, second) = (first.memory.unwrap(), second.memory.unwrap());
    assert_eq!(second.id, first.id, "same memory");
    assert_eq!(second.create_time, first.create_time);
    assert_eq!(second.content, "Lives in Medellín");
    assert_eq!(second.previous_content, "Lives in Bogotá");
    assert_eq!(second.revision, 1);
    // The same statement again changes nothing of the history.
    let third = app
        .client
        .upsert_memory(keyed("Lives in Medellín"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(third.memory.unwrap().revision, 1);
    assert_eq!(app.count("memories").await, 1);

    // The same key inside a project is another memory.
    let project = uuid::Uuid::new_v4().to_string();
    let mut in_project = keyed("Lives in Cali");
    in_project.memory.as_mut().unwrap().project_id = project;
    assert!(
        app.client
            .upsert_memory(in_project)
            .await
            .unwrap()
            .into_inner()
            .created
    );

    // Upsert needs the key; CreateMemory refuses one.
    let unkeyed = app
        .client
        .upsert_memory(pb::UpsertMemoryRequest {
            memory: Some(memory(&user, MemoryKind::Fact, "x")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let mut fields = bad_fields(&unkeyed);
    fields.sort();
    assert_eq!(fields, ["memory.category", "memory.key"]);
    let create_keyed = app
        .client
        .create_memory(pb::CreateMemoryRequest {
            memory: keyed("x").memory,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&create_keyed), ["memory.key"]);
}

#[tokio::test]
async fn concurrent_upserts_of_one_key_make_one_memory() {
    let (app, _) = words_app().await;
    let user = user();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut client = app.client.clone();
        let user = user.clone();
        tasks.push(tokio::spawn(async move {
            client
                .upsert_memory(pb::UpsertMemoryRequest {
                    memory: Some(pb::Memory {
                        category: "diet".into(),
                        key: "allergy".into(),
                        ..memory(&user, MemoryKind::Fact, &format!("Allergy number {i}"))
                    }),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
        }));
    }
    let mut created = 0;
    for task in tasks {
        created += usize::from(task.await.unwrap().created);
    }
    assert_eq!(created, 1);
    assert_eq!(app.count("memories").await, 1);
}

#[tokio::test]
async fn update_changes_the_named_fields_and_re_embeds_new_content() {
    let (mut app, embedder) = words_app().await;
    let user = user();
    let stored = create(
        &mut app.client,
        memory(&user, MemoryKind::Fact, "Drives a red car"),
    )
    .await;
    let updated = app
        .client
        .update_memory(pb::UpdateMemoryRequest {
            memory: Some(pb::Memory {
                id: stored.id.clone(),
                content: "Drives a blue bike".into(),
                importance: Some(0.8),
                kind: MemoryKind::Goal as i32, // not in the mask: ignored
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["content".into(), "importance".into()],
            }),
            embedding: None,
        })
        .await
        .unwrap()
        .into_inner()
        .memory
        .unwrap();
    assert_eq!(updated.content, "Drives a blue bike");
    assert_eq!(updated.previous_content, "Drives a red car");
    assert_eq!(updated.revision, 1);
    assert_eq!(updated.importance, Some(0.8));
    assert_eq!(updated.kind, MemoryKind::Fact as i32);

    // The stored vector is the new content's: an exact search with it scores 1.
    let hits = app
        .client
        .search_memories(pb::SearchMemoriesRequest {
            user_id: user.clone(),
            query_embedding: Some(pb::Embedding {
                values: embedder.vector("Drives a blue bike"),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert!(
        (hits[0].semantic - 1.0).abs() < 1e-4,
        "{}",
        hits[0].semantic
    );

    let bad = app
        .client
        .update_memory(pb::UpdateMemoryRequest {
            memory: Some(pb::Memory {
                id: stored.id.clone(),
                importance: Some(7.0),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["importance".into(), "user_id".into()],
            }),
            embedding: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&bad), ["update_mask"]);
    let bad_value = app
        .client
        .update_memory(pb::UpdateMemoryRequest {
            memory: Some(pb::Memory {
                id: stored.id.clone(),
                importance: Some(7.0),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["importance".into()],
            }),
            embedding: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&bad_value), ["memory.importance"]);
    let missing = app
        .client
        .update_memory(pb::UpdateMemoryRequest {
            memory: Some(pb::Memory {
                id: uuid::Uuid::new_v4().to_string(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["tags".into()],
            }),
            embedding: None,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn project_scope_decides_what_a_list_sees() {
    let (mut app, _) = words_app().await;
    let user = user();
    let (p1, p2) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    create(
        &mut app.client,
        memory(&user, MemoryKind::Fact, "global one"),
    )
    .await;
    create(
        &mut app.client,
        pb::Memory {
            project_id: p1.clone(),
            ..memory(&user, MemoryKind::Fact, "in project one")
        },
    )
    .await;
    create(
        &mut app.client,
        pb::Memory {
            project_id: p2.clone(),
            ..memory(&user, MemoryKind::Fact, "in project two")
        },
    )
    .await;
    create(
        &mut app.client,
        memory(&self::user(), MemoryKind::Fact, "someone else's"),
    )
    .await;

    let contents = |memories: Vec<pb::Memory>| {
        let mut c: Vec<String> = memories.into_iter().map(|m| m.content).collect();
        c.sort();
        c
    };
    let scoped = |scope: pb::ProjectScope| pb::ListMemoriesRequest {
        user_id: user.clone(),
        scope: Some(scope),
        ..Default::default()
    };
    assert_eq!(
        contents(list(&mut app.client, scoped(Default::default())).await),
        ["global one"]
    );
    assert_eq!(
        contents(
            list(
                &mut app.client,
                scoped(pb::ProjectScope {
                    project_id: p1.clone(),
                    all_projects: false
                })
            )
            .await
        ),
        ["global one", "in project one"]
    );
    assert_eq!(
        contents(
            list(
                &mut app.client,
                scoped(pb::ProjectScope {
                    project_id: String::new(),
                    all_projects: true
                })
            )
            .await
        ),
        ["global one", "in project one", "in project two"]
    );
    let both = app
        .client
        .list_memories(scoped(pb::ProjectScope {
            project_id: p1,
            all_projects: true,
        }))
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&both), ["scope.project_id"]);
}

#[tokio::test]
async fn lists_filter_and_page_newest_first() {
    let (mut app, _) = words_app().await;
    let user = user();
    for i in 0..5 {
        let kind = if i % 2 == 0 {
            MemoryKind::Fact
        } else {
            MemoryKind::Goal
        };
        let mut m = memory(&user, kind, &format!("memory {i}"));
        if i < 2 {
            m.tags = vec!["early".into(), "x".into()];
        }
        create(&mut app.client, m).await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .client
            .list_memories(pb::ListMemoriesRequest {
                user_id: user.clone(),
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.memories.into_iter().map(|m| m.content));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        ["memory 4", "memory 3", "memory 2", "memory 1", "memory 0"]
    );

    let goals = list(
        &mut app.client,
        pb::ListMemoriesRequest {
            user_id: user.clone(),
            kinds: vec![MemoryKind::Goal as i32],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(goals.len(), 2);
    let tagged = list(
        &mut app.client,
        pb::ListMemoriesRequest {
            user_id: user.clone(),
            tags: vec!["early".into(), "x".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(tagged.len(), 2);
    let bad = app
        .client
        .list_memories(pb::ListMemoriesRequest {
            user_id: user,
            kinds: vec![123],
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let mut fields = bad_fields(&bad);
    fields.sort();
    assert_eq!(fields, ["kinds", "page_token"]);
}

#[tokio::test]
async fn deleted_and_expired_memories_never_come_back() {
    let embedder = WordsEmbedder::new("words-v1", 64);
    // More than one memory makes a search not asked to be exact approximate,
    // so both paths are checked below.
    let mut app = spawn_app_with(embedder.clone(), |config| config.exact_search_max = 1).await;
    let user = user();
    let deleted = create(
        &mut app.client,
        memory(&user, MemoryKind::Fact, "pizza on fridays"),
    )
    .await;
    let expiring = create(
        &mut app.client,
        pb::Memory {
            expire_time: Some(timestamp(chrono::Utc::now() + chrono::Duration::seconds(1))),
            ..memory(&user, MemoryKind::Event, "pizza party tonight")
        },
    )
    .await;
    let kept = create(
        &mut app.client,
        memory(&user, MemoryKind::Fact, "pizza with pineapple"),
    )
    .await;

    app.client
        .delete_memory(pb::DeleteMemoryRequest {
            id: deleted.id.clone(),
        })
        .await
        .unwrap();
    // Repeating the delete is harmless; an unknown id is NOT_FOUND.
    app.client
        .delete_memory(pb::DeleteMemoryRequest {
            id: deleted.id.clone(),
        })
        .await
        .unwrap();
    let unknown = app
        .client
        .delete_memory(pb::DeleteMemoryRequest {
            id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    // Wait out the expiry (the clock, not a timing assertion).
    let expiry = expiring.expire_time.unwrap();
    while chrono::Utc::now().timestamp() <= expiry.seconds {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    for id in [&deleted.id, &expiring.id] {
        let gone = app
            .client
            .get_memory(pb::GetMemoryRequest { id: id.clone() })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);
    }
    let listed = list(
        &mut app.client,
        pb::ListMemoriesRequest {
            user_id: user.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(listed.iter().map(|m| &m.id).collect::<Vec<_>>(), [&kept.id]);
    for exact in [true, false] {
        let response = app
            .client
            .search_memories(pb::SearchMemoriesRequest {
                user_id: user.clone(),
                query: "pizza".into(),
                query_embedding: Some(pb::Embedding {
                    values: embedder.vector("pizza"),
                }),
                exact,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.approximate, !exact);
        let hits = response.hits;
        assert_eq!(
            hits.iter()
                .map(|h| &h.memory.as_ref().unwrap().id)
                .collect::<Vec<_>>(),
            [&kept.id]
        );
    }

    // Forget removes the row for good, deleted or not.
    app.client
        .forget_memory(pb::ForgetMemoryRequest {
            id: deleted.id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(app.count("memories").await, 2);
    let again = app
        .client
        .forget_memory(pb::ForgetMemoryRequest { id: deleted.id })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
}
