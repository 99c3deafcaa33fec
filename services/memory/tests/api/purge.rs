//! PurgeUser: everything about one user goes, nobody else's.

use mesh_proto::mesh::memory::v1::{self as pb, MemoryKind};

use crate::memories::{create, memory, user, words_app};

#[tokio::test]
async fn purging_a_user_erases_their_rows_and_keeps_others() {
    let (mut app, _) = words_app().await;
    let (gone, kept) = (user(), user());
    for who in [&gone, &kept] {
        create(&mut app.client, memory(who, MemoryKind::Fact, "likes tea")).await;
        app.client
            .create_memory(pb::CreateMemoryRequest {
                memory: Some(memory(who, MemoryKind::Goal, "learn piano")),
                request_id: format!("goal-{who}"),
                ..Default::default()
            })
            .await
            .unwrap();
        app.client
            .record_extraction(pb::RecordExtractionRequest {
                extraction: Some(pb::Extraction {
                    user_id: who.clone(),
                    r#type: pb::ExtractionType::Context as i32,
                    status: pb::ExtractionStatus::Skipped as i32,
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .unwrap();
    }
    let request = pb::PurgeUserRequest {
        user_id: gone.clone(),
        request_id: "purge-1".into(),
    };
    let answer = app
        .client
        .purge_user(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.deleted["memories"], 2);
    assert_eq!(answer.deleted["extractions"], 1);
    assert_eq!(answer.deleted["idempotency_keys"], 1);
    // A retry gets the same answer and erases nothing more.
    assert_eq!(
        app.client.purge_user(request).await.unwrap().into_inner(),
        answer
    );
    assert_eq!(app.count("memories").await, 2);
    assert_eq!(app.count("extractions").await, 1);
    let left = app
        .client
        .list_memories(pb::ListMemoriesRequest {
            user_id: kept,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .memories;
    assert_eq!(left.len(), 2);
}
