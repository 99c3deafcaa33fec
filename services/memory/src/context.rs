//! GetContext: the memories most relevant to the recent conversation, as text
//! for an LLM prompt that fits a token budget. Only the memories the text
//! holds count as accessed.

use mesh_proto::mesh::memory::v1 as pb;
use mesh_runtime::{ApiResult, Violations, convert::parse_uuid};
use uuid::Uuid;

use crate::{
    State,
    search::{self, Query},
    wire::{Scope, memory_kind, text},
};

const DEFAULT_BUDGET: i32 = 500;
const MAX_BUDGET: i32 = 8000;
const MAX_MESSAGES: usize = 50;
const MAX_MESSAGE_CHARS: usize = 8000;
/// The tail of the conversation that relevance is judged against: the latest
/// words matter most, and the model reads at most a few hundred tokens.
const QUERY_TAIL_CHARS: usize = 2000;
/// Memories considered before the budget cuts.
const CANDIDATES: i64 = 50;
const HEADER: &str = "What you know about the user:";

#[tracing::instrument(skip_all)]
pub async fn get(
    state: &State,
    request: pb::GetContextRequest,
) -> ApiResult<pb::GetContextResponse> {
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    let scope = violations.check(Scope::check("scope", request.scope.as_ref()));
    if request.recent_messages.len() > MAX_MESSAGES {
        violations.push(
            "recent_messages",
            format!("must hold at most {MAX_MESSAGES} messages"),
        );
    }
    for (i, message) in request.recent_messages.iter().enumerate() {
        violations.check(text(
            &format!("recent_messages[{i}]"),
            message,
            MAX_MESSAGE_CHARS,
        ));
    }
    let budget = match request.token_budget {
        0 => DEFAULT_BUDGET,
        n if (1..=MAX_BUDGET).contains(&n) => n,
        _ => {
            violations.push(
                "token_budget",
                format!("must be between 1 and {MAX_BUDGET}"),
            );
            0
        }
    } as usize;
    violations.into_result()?;

    let text = tail(&request.recent_messages.join("\n"), QUERY_TAIL_CHARS);
    let vector = search::query_vector(state, None, &text).await?;
    let query = Query {
        user: user.expect("checked"),
        text,
        vector,
        scope: scope.expect("checked"),
        kinds: Vec::new(),
        tags: Vec::new(),
        metadata: serde_json::json!({}),
        limit: CANDIDATES,
        threshold: 0.0,
        exact: false,
    };
    let (hits, _) = search::run(state, &query).await?;
    let memories = hits
        .into_iter()
        .map(|hit| (hit.memory.id, hit.memory.into_pb()))
        .collect::<Vec<_>>();
    let count = |text: &str| state.embedder.count_tokens(text);
    let (context, memory_ids) = format_within(&memories, budget, &count);
    search::touch(&state.pool, &memory_ids).await?;
    let token_count = if context.is_empty() {
        0
    } else {
        count(&context)
    };
    Ok(pb::GetContextResponse {
        context,
        memory_ids: memory_ids.iter().map(Uuid::to_string).collect(),
        token_count: token_count as i32,
    })
}

/// The last `max` characters of `text`.
fn tail(text: &str, max: usize) -> String {
    let skip = text.chars().count().saturating_sub(max);
    text.chars().skip(skip).collect()
}

/// Formats the memories (most relevant first, each with its id) as a header
/// and one section per kind, adding them in order of relevance while the
/// whole stays within `budget` tokens. Returns the text and the ids it holds.
fn format_within<Id: Clone + PartialEq>(
    memories: &[(Id, pb::Memory)],
    budget: usize,
    count: &dyn Fn(&str) -> usize,
) -> (String, Vec<Id>) {
    // Sections in order of their most relevant memory; lines in relevance order.
    let mut sections: Vec<(i32, Vec<&str>)> = Vec::new();
    let mut ids = Vec::new();
    let mut used = count(HEADER);
    for (id, memory) in memories {
        let line = format!("- {}", memory.content);
        let mut cost = count(&line);
        let section = sections.iter().position(|(kind, _)| *kind == memory.kind);
        if section.is_none() {
            cost += count(&section_title(memory.kind));
        }
        if used + cost > budget {
            continue; // A shorter, less relevant memory may still fit.
        }
        used += cost;
        match section {
            Some(i) => sections[i].1.push(&memory.content),
            None => sections.push((memory.kind, vec![&memory.content])),
        }
        ids.push(id.clone());
    }
    loop {
        let text = render(&sections);
        // Per-line counts can be off by a token where lines join; drop the
        // least relevant memory until the whole fits.
        if text.is_empty() || count(&text) <= budget || ids.is_empty() {
            return (text, ids);
        }
        let last = ids.pop().expect("not empty");
        let (kind, content) = memories
            .iter()
            .find(|(id, _)| *id == last)
            .map(|(_, memory)| (memory.kind, memory.content.as_str()))
            .expect("an id we added");
        if let Some(i) = sections.iter().position(|(k, _)| *k == kind) {
            sections[i].1.retain(|line| *line != content);
            if sections[i].1.is_empty() {
                sections.remove(i);
            }
        }
    }
}

fn render(sections: &[(i32, Vec<&str>)]) -> String {
    if sections.is_empty() {
        return String::new();
    }
    let mut out = String::from(HEADER);
    for (kind, lines) in sections {
        out.push_str("\n\n");
        out.push_str(&section_title(*kind));
        for line in lines {
            out.push_str("\n- ");
            out.push_str(line);
        }
    }
    out
}

/// "Facts:", "Follow ups:" ...
fn section_title(kind: i32) -> String {
    let name = memory_kind::name(kind).unwrap_or("other").replace('_', " ");
    let mut title: String = name[..1].to_uppercase() + &name[1..];
    title.push_str(if title.ends_with('s') { ":" } else { "s:" });
    title
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(kind: pb::MemoryKind, content: &str) -> pb::Memory {
        pb::Memory {
            kind: kind as i32,
            content: content.into(),
            ..Default::default()
        }
    }

    fn words(text: &str) -> usize {
        text.split_whitespace().count()
    }

    #[test]
    fn groups_by_kind_in_order_of_relevance_and_stays_within_budget() {
        let memories = vec![
            (
                "a".to_owned(),
                memory(pb::MemoryKind::Fact, "Allergic to peanuts"),
            ),
            (
                "b".to_owned(),
                memory(pb::MemoryKind::Preference, "Likes short answers"),
            ),
            (
                "c".to_owned(),
                memory(pb::MemoryKind::Fact, "Lives in Bogotá"),
            ),
            (
                "d".to_owned(),
                memory(pb::MemoryKind::FollowUp, "Ask how the exam went"),
            ),
        ];
        let (text, ids) = format_within(&memories, 1000, &words);
        assert_eq!(ids, ["a", "b", "c", "d"]);
        assert_eq!(
            text,
            "What you know about the user:\n\nFacts:\n- Allergic to peanuts\n- Lives in Bogotá\
             \n\nPreferences:\n- Likes short answers\n\nFollow ups:\n- Ask how the exam went"
        );

        let budget = 20;
        let (text, ids) = format_within(&memories, budget, &words);
        assert!(words(&text) <= budget, "{text}");
        assert_eq!(
            ids,
            ["a", "b", "c"],
            "the least relevant that does not fit is left out"
        );
    }

    #[test]
    fn nothing_fits_gives_empty_context() {
        let memories = vec![(
            "a".to_owned(),
            memory(pb::MemoryKind::Fact, "one two three"),
        )];
        let (text, ids) = format_within(&memories, 3, &words);
        assert_eq!(text, "");
        assert!(ids.is_empty());
    }
}
