//! GetContext: the relevant memories as prompt text within a token budget.

use mesh_proto::mesh::memory::v1::{self as pb, MemoryKind};

use crate::{
    harness::{WordsEmbedder, bad_fields, spawn_app_with},
    memories::{create, list, memory, user},
};

#[tokio::test]
async fn the_most_relevant_memories_come_first_within_the_budget() {
    // Wide enough that unrelated words rarely share a bucket.
    let mut app = spawn_app_with(WordsEmbedder::new("words-v1", 1024), |_| {}).await;
    let user = user();
    let allergy = create(
        &mut app.client,
        memory(&user, MemoryKind::Fact, "Allergic to peanuts"),
    )
    .await;
    let cafe = create(
        &mut app.client,
        memory(
            &user,
            MemoryKind::Preference,
            "Prefers the cafe near the office",
        ),
    )
    .await;
    for i in 0..20 {
        create(
            &mut app.client,
            memory(
                &user,
                MemoryKind::Event,
                &format!("Climbed Everest during expedition {i}"),
            ),
        )
        .await;
    }
    let context = |budget: i32| pb::GetContextRequest {
        user_id: user.clone(),
        recent_messages: vec![
            "Can you suggest a snack?".into(),
            "Something with peanuts maybe, near the office cafe".into(),
        ],
        token_budget: budget,
        ..Default::default()
    };
    let answer = app
        .client
        .get_context(context(1000))
        .await
        .unwrap()
        .into_inner();
    assert!(
        answer.context.starts_with("What you know about the user:"),
        "{}",
        answer.context
    );
    assert!(
        answer.context.contains("Facts:\n- Allergic to peanuts"),
        "{}",
        answer.context
    );
    assert!(
        answer
            .context
            .contains("Preferences:\n- Prefers the cafe near the office")
    );
    let first_two: Vec<&String> = answer.memory_ids.iter().take(2).collect();
    assert!(
        first_two.contains(&&allergy.id) && first_two.contains(&&cafe.id),
        "{answer:?}"
    );
    assert!(answer.token_count as usize <= 1000);

    let tight = app
        .client
        .get_context(context(20))
        .await
        .unwrap()
        .into_inner();
    assert!(tight.token_count <= 20, "{tight:?}");
    assert!(tight.context.split_whitespace().count() <= 20);
    assert!(!tight.memory_ids.is_empty());
    assert!(tight.memory_ids.len() < answer.memory_ids.len());

    // Nothing known: an empty context.
    let stranger = app
        .client
        .get_context(pb::GetContextRequest {
            user_id: self::user(),
            recent_messages: vec!["hello".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stranger.context, "");
    assert_eq!(stranger.token_count, 0);

    // No messages yet: the most important and recent memories.
    let cold = app
        .client
        .get_context(pb::GetContextRequest {
            user_id: user.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!cold.memory_ids.is_empty());

    let bad = app
        .client
        .get_context(pb::GetContextRequest {
            user_id: user,
            token_budget: -1,
            recent_messages: vec!["a\0b".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    let mut fields = bad_fields(&bad);
    fields.sort();
    assert_eq!(fields, ["recent_messages[0]", "token_budget"]);
}

#[tokio::test]
async fn only_the_memories_the_context_holds_count_as_accessed() {
    let mut app = spawn_app_with(WordsEmbedder::new("words-v1", 1024), |_| {}).await;
    let user = user();
    let allergy = create(
        &mut app.client,
        memory(&user, MemoryKind::Fact, "Allergic to peanuts"),
    )
    .await;
    for (kind, content) in [
        (MemoryKind::Preference, "Prefers the cafe near the office"),
        (
            MemoryKind::Fact,
            "Climbed Everest twice in one year with friends",
        ),
    ] {
        create(&mut app.client, memory(&user, kind, content)).await;
    }
    // The header, "Facts:" and the allergy take 11 of the 12 tokens (words):
    // the other memories are candidates but do not fit.
    let answer = app
        .client
        .get_context(pb::GetContextRequest {
            user_id: user.clone(),
            recent_messages: vec!["Something with peanuts maybe".into()],
            token_budget: 12,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.memory_ids,
        std::slice::from_ref(&allergy.id),
        "{answer:?}"
    );
    let listed = list(
        &mut app.client,
        pb::ListMemoriesRequest {
            user_id: user,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(listed.len(), 3);
    for memory in listed {
        let held = memory.id == allergy.id;
        assert_eq!(memory.access_count, i64::from(held), "{memory:?}");
        assert_eq!(memory.last_access_time.is_some(), held, "{memory:?}");
    }
}
