//! SearchMemories: the blend of scores, keyword rescue, filters, the exact and
//! approximate paths, access tracking, and models kept apart.

use std::time::Duration;

use mesh_proto::mesh::memory::v1::{self as pb, MemoryKind};
use mesh_runtime::convert::json_to_struct;
use tonic::Code;

use crate::{
    harness::{Client, WordsEmbedder, bad_fields, config, spawn_app_with, spawn_on, supplied},
    memories::{create, memory, user, words_app},
};

fn query(user: &str, text: &str, embedder: &WordsEmbedder) -> pb::SearchMemoriesRequest {
    pb::SearchMemoriesRequest {
        user_id: user.into(),
        query: text.into(),
        query_embedding: Some(pb::Embedding {
            values: embedder.vector(text),
        }),
        ..Default::default()
    }
}

async fn search(
    client: &mut Client,
    request: pb::SearchMemoriesRequest,
) -> pb::SearchMemoriesResponse {
    client
        .search_memories(request)
        .await
        .expect("SearchMemories")
        .into_inner()
}

fn contents(response: &pb::SearchMemoriesResponse) -> Vec<&str> {
    response
        .hits
        .iter()
        .map(|hit| hit.memory.as_ref().unwrap().content.as_str())
        .collect()
}

#[tokio::test]
async fn every_hit_carries_its_component_scores_and_their_blend() {
    let (mut app, embedder) = words_app().await;
    let user = user();
    let mut important = memory(&user, MemoryKind::Fact, "allergic to peanuts and walnuts");
    important.importance = Some(1.0);
    create(&mut app.client, important).await;
    create(
        &mut app.client,
        memory(&user, MemoryKind::Fact, "my car is red"),
    )
    .await;

    let response = search(&mut app.client, query(&user, "peanuts", &embedder)).await;
    assert!(!response.approximate);
    assert_eq!(contents(&response)[0], "allergic to peanuts and walnuts");
    for hit in &response.hits {
        let blend =
            0.6 * hit.semantic + 0.2 * hit.keyword + 0.1 * hit.importance + 0.1 * hit.recency;
        assert!((hit.score - blend).abs() < 1e-4, "{hit:?}");
        for component in [hit.semantic, hit.keyword, hit.importance, hit.recency] {
            assert!((0.0..=1.0).contains(&component), "{hit:?}");
        }
        assert!(hit.recency > 0.99, "just written: {}", hit.recency);
    }
    let top = &response.hits[0];
    assert_eq!(top.importance, 1.0);
    assert_eq!(top.keyword, 1.0, "the one query word is in it");
    assert!(top.semantic > 0.3);
    let other = &response.hits[1];
    assert_eq!(other.keyword, 0.0);
    assert_eq!(other.semantic, 0.0, "no shared word, orthogonal vectors");

    // threshold cuts on the blended score.
    let mut strict = query(&user, "peanuts", &embedder);
    strict.threshold = top.score - 0.01;
    assert_eq!(
        contents(&search(&mut app.client, strict).await),
        ["allergic to peanuts and walnuts"]
    );
}

#[tokio::test]
async fn names_and_numbers_are_found_by_keyword_when_the_vectors_miss() {
    // Few enough memories for the exact path, and the index path above 5.
    for exact_search_max in [1000, 5] {
        let embedder = WordsEmbedder::new("words-v1", 64);
        let mut app = spawn_app_with(embedder.clone(), |config| {
            config.exact_search_max = exact_search_max;
        })
        .await;
        let user = user();
        create(
            &mut app.client,
            memory(&user, MemoryKind::Fact, "The gate code is 4417"),
        )
        .await;
        create(
            &mut app.client,
            memory(
                &user,
                MemoryKind::Relationship,
                "Her dentist is Dr. Zylberstein",
            ),
        )
        .await;
        for i in 0..10 {
            create(
                &mut app.client,
                memory(
                    &user,
                    MemoryKind::Fact,
                    &format!("likes engines and cars {i}"),
                ),
            )
            .await;
        }
        // The query's vector points at the car memories; its words at the others.
        for (text, expected) in [
            ("4417", "The gate code is 4417"),
            ("Zylberstein", "Her dentist is Dr. Zylberstein"),
            // Misspelt: trigram similarity still finds it.
            ("Zilberstein", "Her dentist is Dr. Zylberstein"),
        ] {
            let request = pb::SearchMemoriesRequest {
                query: text.into(),
                query_embedding: Some(pb::Embedding {
                    values: embedder.vector("engines and cars"),
                }),
                user_id: user.clone(),
                limit: 20,
                ..Default::default()
            };
            let response = search(&mut app.client, request).await;
            assert_eq!(response.approximate, exact_search_max == 5);
            let hit = response
                .hits
                .iter()
                .find(|hit| hit.memory.as_ref().unwrap().content == expected)
                .unwrap_or_else(|| panic!("{text} finds {expected}: {:?}", contents(&response)));
            assert_eq!(hit.semantic, 0.0, "{text}: the vectors miss it");
            assert!(hit.keyword > 0.3, "{text}: {hit:?}");
        }
    }
}

#[tokio::test]
async fn filters_narrow_the_search_to_kinds_tags_metadata_and_scope() {
    let (mut app, embedder) = words_app().await;
    let user = user();
    let project = uuid::Uuid::new_v4().to_string();
    let mut tagged = memory(&user, MemoryKind::Preference, "coffee black no sugar");
    tagged.tags = vec!["drinks".into()];
    tagged.metadata = Some(json_to_struct(
        &serde_json::json!({"source": "onboarding", "v": 2}),
    ));
    create(&mut app.client, tagged).await;
    create(
        &mut app.client,
        memory(&user, MemoryKind::Fact, "coffee shop downtown"),
    )
    .await;
    create(
        &mut app.client,
        pb::Memory {
            project_id: project.clone(),
            ..memory(&user, MemoryKind::Fact, "coffee budget for the project")
        },
    )
    .await;
    create(
        &mut app.client,
        memory(&self::user(), MemoryKind::Fact, "coffee of another user"),
    )
    .await;

    let base = query(&user, "coffee", &embedder);
    let mut all = contents(&search(&mut app.client, base.clone()).await)
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    all.sort();
    assert_eq!(
        all,
        ["coffee black no sugar", "coffee shop downtown"],
        "global scope by default"
    );

    let kinds = pb::SearchMemoriesRequest {
        kinds: vec![MemoryKind::Preference as i32],
        ..base.clone()
    };
    assert_eq!(
        contents(&search(&mut app.client, kinds).await),
        ["coffee black no sugar"]
    );
    let tags = pb::SearchMemoriesRequest {
        tags: vec!["drinks".into()],
        ..base.clone()
    };
    assert_eq!(
        contents(&search(&mut app.client, tags).await),
        ["coffee black no sugar"]
    );
    let metadata = pb::SearchMemoriesRequest {
        metadata_filter: Some(json_to_struct(&serde_json::json!({"source": "onboarding"}))),
        ..base.clone()
    };
    assert_eq!(
        contents(&search(&mut app.client, metadata).await),
        ["coffee black no sugar"]
    );
    let in_project = pb::SearchMemoriesRequest {
        scope: Some(pb::ProjectScope {
            project_id: project,
            all_projects: false,
        }),
        ..base.clone()
    };
    assert_eq!(search(&mut app.client, in_project).await.hits.len(), 3);
}

#[tokio::test]
async fn retrieval_updates_last_access_and_count() {
    let (mut app, embedder) = words_app().await;
    let user = user();
    let stored = create(
        &mut app.client,
        memory(&user, MemoryKind::Fact, "plays the cello"),
    )
    .await;
    assert_eq!(stored.access_count, 0);
    assert!(stored.last_access_time.is_none());
    search(&mut app.client, query(&user, "cello", &embedder)).await;
    let response = search(&mut app.client, query(&user, "cello", &embedder)).await;
    let hit = response.hits[0].memory.as_ref().unwrap();
    assert_eq!(hit.access_count, 2);
    assert!(hit.last_access_time.is_some());
    assert_eq!(
        hit.update_time, stored.update_time,
        "reading is not updating"
    );
}

#[tokio::test]
async fn a_user_with_many_memories_is_served_by_the_index_with_the_same_answer() {
    let embedder = WordsEmbedder::new("words-v1", 64);
    let mut app = spawn_app_with(embedder.clone(), |config| config.exact_search_max = 20).await;
    let user = user();
    let topics = ["guitar", "cooking", "running", "chess", "travel", "python"];
    for i in 0..60 {
        let topic = topics[i % topics.len()];
        create(
            &mut app.client,
            memory(
                &user,
                MemoryKind::Fact,
                &format!("enjoys {topic} session {i}"),
            ),
        )
        .await;
    }
    // A small user beside the big one is still searched exactly.
    let small = self::user();
    create(
        &mut app.client,
        memory(&small, MemoryKind::Fact, "enjoys chess"),
    )
    .await;

    // The index is built in the background once the service is up.
    valid_hnsw_index(&app).await;

    let approximate = search(&mut app.client, query(&user, "chess", &embedder)).await;
    assert!(approximate.approximate);
    let exact = search(
        &mut app.client,
        pb::SearchMemoriesRequest {
            exact: true,
            ..query(&user, "chess", &embedder)
        },
    )
    .await;
    assert!(!exact.approximate);
    assert_eq!(approximate.hits.len(), 10);
    let ids = |r: &pb::SearchMemoriesResponse| {
        let mut ids: Vec<String> = r
            .hits
            .iter()
            .map(|h| h.memory.as_ref().unwrap().id.clone())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&approximate), ids(&exact));
    assert!(contents(&approximate).iter().all(|c| c.contains("chess")));

    let small_search = search(&mut app.client, query(&small, "chess", &embedder)).await;
    assert!(!small_search.approximate);
    assert_eq!(contents(&small_search), ["enjoys chess"]);
}

#[tokio::test]
async fn vectors_of_another_model_are_never_compared_and_get_re_embedded() {
    let model_a = WordsEmbedder::new("model-a", 64);
    let app = spawn_app_with(model_a.clone(), |_| {}).await;
    let mut client = app.client.clone();
    let user = user();
    create(
        &mut client,
        memory(&user, MemoryKind::Fact, "walks the dog every morning"),
    )
    .await;
    create(
        &mut client,
        memory(&user, MemoryKind::Fact, "reads novels at night"),
    )
    .await;
    let db = app.stop().await;

    // The same data under a model that makes no vectors itself (and so
    // cannot re-embed): the old vectors are not compared with its queries.
    let restart = config(&db);
    let app = spawn_on(db, supplied(32), &restart).await;
    let mut client = app.client.clone();
    let status = client
        .get_embedding_status(pb::GetEmbeddingStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.model, "test-model");
    assert_eq!(status.dimensions, 32);
    assert_eq!(status.pending_memories, 2);
    assert_eq!(status.vectors[0].model, "model-a");
    let response = search(
        &mut client,
        pb::SearchMemoriesRequest {
            user_id: user.clone(),
            query: "dog".into(),
            query_embedding: Some(pb::Embedding {
                values: vec![0.1; 32],
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        contents(&response),
        ["walks the dog every morning", "reads novels at night"]
    );
    assert!(response.hits.iter().all(|hit| hit.semantic == 0.0));
    assert!(response.hits[0].keyword > 0.0, "found by keyword");
    // A query vector of the old model's size is refused.
    let wrong = client
        .search_memories(pb::SearchMemoriesRequest {
            user_id: user.clone(),
            query_embedding: Some(pb::Embedding {
                values: model_a.vector("dog"),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&wrong), ["query_embedding.values"]);
    // Without an embedder, a memory needs its vector.
    let refused = client
        .create_memory(pb::CreateMemoryRequest {
            memory: Some(memory(&user, MemoryKind::Fact, "no vector")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let db = app.stop().await;

    // Model B with an embedder: the background job re-embeds every row.
    let model_b = WordsEmbedder::new("model-b", 32);
    let restart = config(&db);
    let app = spawn_on(db, model_b.clone(), &restart).await;
    let mut client = app.client.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = client
            .get_embedding_status(pb::GetEmbeddingStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if status.pending_memories == 0 {
            assert_eq!(status.vectors.len(), 1);
            assert_eq!(status.vectors[0].model, "model-b");
            assert_eq!(status.vectors[0].memories, 2);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "re-embedding stalled: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = search(&mut client, query(&user, "dog", &model_b)).await;
    assert_eq!(contents(&response)[0], "walks the dog every morning");
    assert!(response.hits[0].semantic > 0.3);
    assert_eq!(
        response.hits[0].memory.as_ref().unwrap().embedding_model,
        "model-b"
    );
}

#[tokio::test]
async fn bad_searches_are_refused_naming_each_field() {
    let (mut app, _) = words_app().await;
    let status = app
        .client
        .search_memories(pb::SearchMemoriesRequest {
            user_id: "x".into(),
            kinds: vec![0],
            limit: 101,
            threshold: 1.5,
            metadata_filter: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut fields = bad_fields(&status);
    fields.sort();
    assert_eq!(fields, ["kinds", "limit", "query", "threshold", "user_id"]);
}

/// Polls until `memory` has a valid HNSW index on memories; returns its name.
async fn valid_hnsw_index(app: &crate::harness::TestApp) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut conn = app.db.admin_connection().await;
        let found: Option<(String, bool)> = sqlx::query_as(
            "SELECT c.relname::text, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE c.relnamespace = 'memory'::regnamespace AND c.relname LIKE 'memories_hnsw_%'",
        )
        .fetch_optional(&mut conn)
        .await
        .unwrap();
        if let Some((name, true)) = found {
            return name;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no valid HNSW index"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_index_build_cut_short_is_built_again_at_the_next_start() {
    let embedder = WordsEmbedder::new("words-v1", 64);
    let app = spawn_app_with(embedder.clone(), |_| {}).await;
    let name = valid_hnsw_index(&app).await;
    // What a build stopped mid-way leaves: an index marked invalid.
    let mut conn = app.db.admin_connection().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'memory.{name}'::regclass"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    drop(conn);
    let db = app.stop().await;
    let restart = config(&db);
    let app = spawn_on(db, embedder, &restart).await;
    assert_eq!(valid_hnsw_index(&app).await, name);
}

#[tokio::test]
async fn the_local_model_ranks_by_meaning() {
    let mut app = crate::harness::spawn_app().await;
    let user = user();
    for content in [
        "I am allergic to peanuts",
        "My car is red",
        "My sister Ana lives in Madrid",
        "I go running every morning before work",
    ] {
        create(&mut app.client, memory(&user, MemoryKind::Fact, content)).await;
    }
    for (text, expected) in [
        ("food allergy", "I am allergic to peanuts"),
        ("what colour is my vehicle", "My car is red"),
        ("family abroad", "My sister Ana lives in Madrid"),
        ("exercise habits", "I go running every morning before work"),
    ] {
        let response = search(
            &mut app.client,
            pb::SearchMemoriesRequest {
                user_id: user.clone(),
                query: text.into(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            contents(&response)[0],
            expected,
            "{text}: {:?}",
            response.hits
        );
        assert_eq!(
            response.hits[0].memory.as_ref().unwrap().embedding_model,
            "sentence-transformers/all-MiniLM-L6-v2"
        );
    }
}
