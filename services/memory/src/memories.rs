//! Memories: create, keyed upsert, get, masked update, list, soft delete and
//! hard forget. Reads never return a deleted or expired memory.

use chrono::{DateTime, Utc};
use mesh_proto::mesh::memory::v1 as pb;
use mesh_runtime::{
    ApiError, ApiResult, FieldViolation, Violations,
    convert::{from_timestamp, json_to_struct, optional_timestamp, parse_uuid, timestamp},
    field_mask,
    idempotency::{self, Key},
    pagination::{Page, next_page},
    wire::optional_uuid,
};
use pgvector::Vector;
use sqlx::{AssertSqlSafe, PgConnection};
use uuid::Uuid;

use crate::{
    State, vectors,
    wire::{Scope, entity_type, json_object, memory_kind, required_text, source_type, text},
};

const MAX_CONTENT_CHARS: usize = 8000;
const MAX_KEY_CHARS: usize = 200;
const MAX_TAGS: usize = 32;
const MAX_TAG_CHARS: usize = 64;
const MAX_ENTITIES: usize = 64;
const MAX_ENTITY_CHARS: usize = 200;
const MAX_SOURCE_REF_CHARS: usize = 256;

/// Every column a Memory is read from, in [`MemoryRow`]'s order.
pub const COLUMNS: &str = "id, user_id, project_id, kind, category, key, content, importance, \
    emotional_valence, tags, entities, source_type, source_ref, metadata, expire_time, \
    previous_content, revision, embedding_model, create_time, update_time, last_access_time, \
    access_count";

/// SQL true for a memory every read may return, given the table's name or
/// alias in the query.
pub fn live(memories: &str) -> String {
    format!(
        "{memories}.delete_time IS NULL \
         AND ({memories}.expire_time IS NULL OR {memories}.expire_time > now())"
    )
}

#[derive(sqlx::FromRow)]
pub struct MemoryRow {
    pub id: Uuid,
    user_id: Uuid,
    project_id: Option<Uuid>,
    kind: String,
    category: Option<String>,
    key: Option<String>,
    content: String,
    importance: f32,
    emotional_valence: f32,
    tags: Vec<String>,
    entities: serde_json::Value,
    source_type: String,
    source_ref: String,
    metadata: serde_json::Value,
    expire_time: Option<DateTime<Utc>>,
    previous_content: Option<String>,
    revision: i32,
    embedding_model: Option<String>,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
    pub last_access_time: Option<DateTime<Utc>>,
    pub access_count: i64,
}

impl MemoryRow {
    pub fn into_pb(self) -> pb::Memory {
        let entities = serde_json::from_value::<Vec<StoredEntity>>(self.entities)
            .unwrap_or_default()
            .into_iter()
            .map(|entity| pb::Entity {
                name: entity.name,
                r#type: entity_type::parse(&entity.r#type) as i32,
            })
            .collect();
        pb::Memory {
            id: self.id.to_string(),
            user_id: self.user_id.to_string(),
            project_id: self.project_id.map(|p| p.to_string()).unwrap_or_default(),
            kind: memory_kind::parse(&self.kind) as i32,
            category: self.category.unwrap_or_default(),
            key: self.key.unwrap_or_default(),
            content: self.content,
            importance: Some(self.importance),
            emotional_valence: self.emotional_valence,
            tags: self.tags,
            entities,
            source_type: source_type::parse(&self.source_type) as i32,
            source_ref: self.source_ref,
            metadata: Some(json_to_struct(&self.metadata)),
            expire_time: optional_timestamp(self.expire_time),
            previous_content: self.previous_content.unwrap_or_default(),
            revision: self.revision,
            embedding_model: self.embedding_model.unwrap_or_default(),
            create_time: Some(timestamp(self.create_time)),
            update_time: Some(timestamp(self.update_time)),
            last_access_time: optional_timestamp(self.last_access_time),
            access_count: self.access_count,
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredEntity {
    name: String,
    r#type: String,
}

/// A memory's writable fields, checked.
struct MemoryInput {
    user: Uuid,
    project: Option<Uuid>,
    kind: &'static str,
    /// Category and key, both or neither.
    keyed: Option<(String, String)>,
    content: String,
    importance: f32,
    emotional_valence: f32,
    tags: Vec<String>,
    entities: serde_json::Value,
    source_type: &'static str,
    source_ref: String,
    metadata: serde_json::Value,
    expire_time: Option<DateTime<Utc>>,
}

/// Checks `memory` (named `field` in the request), recording every problem.
/// `now` bounds `expire_time`: a memory that would be born expired is a mistake.
fn check_memory(
    violations: &mut Violations,
    field: &str,
    memory: Option<&pb::Memory>,
    now: DateTime<Utc>,
) -> Option<MemoryInput> {
    let Some(memory) = memory else {
        violations.push(field, "is required");
        return None;
    };
    let name = |sub: &str| format!("{field}.{sub}");
    let user = violations.check(parse_uuid(&name("user_id"), &memory.user_id));
    let project = violations.check(optional_uuid(&name("project_id"), &memory.project_id));
    let kind = violations.check(memory_kind::require(&name("kind"), memory.kind));
    let keyed = match (memory.category.is_empty(), memory.key.is_empty()) {
        (true, true) => Some(None),
        (false, false) => {
            let category =
                violations.check(text(&name("category"), &memory.category, MAX_KEY_CHARS));
            let key = violations.check(text(&name("key"), &memory.key, MAX_KEY_CHARS));
            category
                .and(key)
                .map(|()| Some((memory.category.clone(), memory.key.clone())))
        }
        (true, false) => {
            violations.push(&name("category"), "is required when key is set");
            None
        }
        (false, true) => {
            violations.push(&name("key"), "is required when category is set");
            None
        }
    };
    let content = violations.check(check_content(&name("content"), &memory.content));
    let importance = memory.importance.unwrap_or(0.5);
    if !(0.0..=1.0).contains(&importance) {
        violations.push(&name("importance"), "must be between 0 and 1");
    }
    if !(-2.0..=2.0).contains(&memory.emotional_valence) {
        violations.push(&name("emotional_valence"), "must be between -2 and 2");
    }
    let tags = violations.check(check_tags(&name("tags"), &memory.tags));
    let entities = violations.check(check_entities(&name("entities"), &memory.entities));
    let source = if memory.source_type == 0 {
        Some("manual")
    } else {
        violations.check(source_type::require(
            &name("source_type"),
            memory.source_type,
        ))
    };
    violations.check(text(
        &name("source_ref"),
        &memory.source_ref,
        MAX_SOURCE_REF_CHARS,
    ));
    let metadata = violations.check(json_object(&name("metadata"), memory.metadata.as_ref()));
    let expire_time = match &memory.expire_time {
        None => Some(None),
        Some(time) => violations
            .check(from_timestamp(&name("expire_time"), time))
            .and_then(|time| {
                if time <= now {
                    violations.push(&name("expire_time"), "must be in the future");
                    None
                } else {
                    Some(Some(time))
                }
            }),
    };
    Some(MemoryInput {
        user: user?,
        project: project?,
        kind: kind?,
        keyed: keyed?,
        content: content?,
        importance,
        emotional_valence: memory.emotional_valence,
        tags: tags?,
        entities: entities?,
        source_type: source?,
        source_ref: memory.source_ref.clone(),
        metadata: metadata?,
        expire_time: expire_time?,
    })
}

fn check_content(field: &str, content: &str) -> Result<String, FieldViolation> {
    required_text(field, content, MAX_CONTENT_CHARS)?;
    if content.trim().is_empty() {
        return Err(FieldViolation::new(field, "must not be blank"));
    }
    Ok(content.to_owned())
}

/// Tags in the order given, without repeats: a memory's, or those a read
/// filters on.
pub fn check_tags(field: &str, tags: &[String]) -> Result<Vec<String>, FieldViolation> {
    if tags.len() > MAX_TAGS {
        return Err(FieldViolation::new(
            field,
            format!("must hold at most {MAX_TAGS} tags"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        if tag.trim().is_empty() {
            return Err(FieldViolation::new(field, "must not hold an empty tag"));
        }
        text(field, tag, MAX_TAG_CHARS)?;
        if !out.contains(tag) {
            out.push(tag.clone());
        }
    }
    Ok(out)
}

fn check_entities(
    field: &str,
    entities: &[pb::Entity],
) -> Result<serde_json::Value, FieldViolation> {
    if entities.len() > MAX_ENTITIES {
        return Err(FieldViolation::new(
            field,
            format!("must hold at most {MAX_ENTITIES} entities"),
        ));
    }
    let mut stored = Vec::with_capacity(entities.len());
    for (i, entity) in entities.iter().enumerate() {
        let name = format!("{field}[{i}]");
        required_text(&format!("{name}.name"), &entity.name, MAX_ENTITY_CHARS)?;
        let kind = entity_type::require(&format!("{name}.type"), entity.r#type)?;
        stored.push(StoredEntity {
            name: entity.name.clone(),
            r#type: kind.to_owned(),
        });
    }
    Ok(serde_json::to_value(stored).expect("entities serialise"))
}

/// The end of a create's or an upsert's checks (the memory's vector, if
/// given, and the request id), then the memory and its vector: the caller's,
/// else the embedder's (made before any transaction: embedding is slow).
async fn checked_with_vector(
    state: &State,
    mut violations: Violations,
    input: Option<MemoryInput>,
    embedding: Option<&pb::Embedding>,
    request_id: &str,
) -> ApiResult<(MemoryInput, Vector)> {
    let supplied = violations.check(state.space.check("embedding", embedding));
    violations.check(idempotency::check_request_id(request_id));
    violations.into_result()?;
    let (input, supplied) = (input.expect("checked"), supplied.expect("checked"));
    let vector = vectors::vector_of(state.embedder.as_ref(), supplied, &input.content).await?;
    Ok((input, vector))
}

#[tracing::instrument(skip_all)]
pub async fn create(
    state: &State,
    request: pb::CreateMemoryRequest,
) -> ApiResult<pb::CreateMemoryResponse> {
    let mut violations = Violations::default();
    let input = check_memory(
        &mut violations,
        "memory",
        request.memory.as_ref(),
        Utc::now(),
    );
    if let Some(input) = &input
        && input.keyed.is_some()
    {
        // A keyed memory is stated with UpsertMemory, which decides create or update.
        violations.push("memory.key", "keyed memories are written with UpsertMemory");
    }
    let (input, vector) = checked_with_vector(
        state,
        violations,
        input,
        request.embedding.as_ref(),
        &request.request_id,
    )
    .await?;
    let key = Key {
        operation: "CreateMemory",
        request_id: &request.request_id,
        user_id: Some(input.user),
    };
    idempotency::run_once(&state.pool, key, &request, async |conn| {
        let (_, row) = write(conn, &input, &vector, state.space.model(), OnKey::Insert).await?;
        Ok(pb::CreateMemoryResponse {
            memory: Some(row.into_pb()),
        })
    })
    .await
}

/// What a write does when the memory's category + key is taken.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnKey {
    /// Nothing: a plain insert (unkeyed memories never conflict).
    Insert,
    /// Update the existing memory in place, keeping the content it replaces.
    Update,
}

/// Inserts the memory, or with [`OnKey::Update`] updates the live one with
/// the same key. One statement: concurrent upserts of one key serialise on
/// the unique index, and the later one updates what the first created.
/// Returns whether a row was created.
#[tracing::instrument(skip_all)]
async fn write(
    conn: &mut PgConnection,
    input: &MemoryInput,
    vector: &Vector,
    model: &str,
    on_key: OnKey,
) -> ApiResult<(bool, MemoryRow)> {
    let (category, key) = input.keyed.clone().unzip();
    let on_conflict = match on_key {
        OnKey::Insert => "",
        OnKey::Update => {
            "ON CONFLICT (user_id, project_id, category, key)
                 WHERE category IS NOT NULL AND delete_time IS NULL
             DO UPDATE SET
                 previous_content = CASE WHEN m.content = EXCLUDED.content
                     THEN m.previous_content ELSE m.content END,
                 revision = m.revision + CASE WHEN m.content = EXCLUDED.content THEN 0 ELSE 1 END,
                 kind = EXCLUDED.kind, content = EXCLUDED.content,
                 importance = EXCLUDED.importance, emotional_valence = EXCLUDED.emotional_valence,
                 tags = EXCLUDED.tags, entities = EXCLUDED.entities,
                 source_type = EXCLUDED.source_type, source_ref = EXCLUDED.source_ref,
                 metadata = EXCLUDED.metadata, expire_time = EXCLUDED.expire_time,
                 embedding = EXCLUDED.embedding, embedding_model = EXCLUDED.embedding_model"
        }
    };
    let row: MemoryRowWithFlag = sqlx::query_as(AssertSqlSafe(format!(
        "INSERT INTO memories AS m (id, user_id, project_id, kind, category, key, content,
             importance, emotional_valence, tags, entities, source_type, source_ref,
             metadata, expire_time, embedding, embedding_model)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
         {on_conflict}
         RETURNING (xmax = 0) AS created, {COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(input.user)
    .bind(input.project)
    .bind(input.kind)
    .bind(category)
    .bind(key)
    .bind(&input.content)
    .bind(input.importance)
    .bind(input.emotional_valence)
    .bind(&input.tags)
    .bind(&input.entities)
    .bind(input.source_type)
    .bind(&input.source_ref)
    .bind(&input.metadata)
    .bind(input.expire_time)
    .bind(vector)
    .bind(model)
    .fetch_one(conn)
    .await?;
    Ok((row.created, row.memory))
}

#[tracing::instrument(skip_all)]
pub async fn upsert(
    state: &State,
    request: pb::UpsertMemoryRequest,
) -> ApiResult<pb::UpsertMemoryResponse> {
    let mut violations = Violations::default();
    let input = check_memory(
        &mut violations,
        "memory",
        request.memory.as_ref(),
        Utc::now(),
    );
    if let Some(memory) = &request.memory
        && memory.category.is_empty()
        && memory.key.is_empty()
    {
        violations.push(
            "memory.category",
            "is required: UpsertMemory finds the memory by category and key",
        );
        violations.push(
            "memory.key",
            "is required: UpsertMemory finds the memory by category and key",
        );
    }
    let (input, vector) = checked_with_vector(
        state,
        violations,
        input,
        request.embedding.as_ref(),
        &request.request_id,
    )
    .await?;
    let key = Key {
        operation: "UpsertMemory",
        request_id: &request.request_id,
        user_id: Some(input.user),
    };
    idempotency::run_once(&state.pool, key, &request, async |conn| {
        let (created, row) =
            write(conn, &input, &vector, state.space.model(), OnKey::Update).await?;
        Ok(pb::UpsertMemoryResponse {
            memory: Some(row.into_pb()),
            created,
        })
    })
    .await
}

#[derive(sqlx::FromRow)]
struct MemoryRowWithFlag {
    created: bool,
    #[sqlx(flatten)]
    memory: MemoryRow,
}

#[tracing::instrument(skip_all)]
pub async fn get(state: &State, request: pb::GetMemoryRequest) -> ApiResult<pb::GetMemoryResponse> {
    let id = parse_uuid("id", &request.id)?;
    let row = fetch_live(&mut *state.pool.acquire().await?, id, false).await?;
    Ok(pb::GetMemoryResponse {
        memory: Some(row.into_pb()),
    })
}

/// The live memory `id` (locked for update when `lock`), or NOT_FOUND.
async fn fetch_live(conn: &mut PgConnection, id: Uuid, lock: bool) -> ApiResult<MemoryRow> {
    let lock = if lock { "FOR UPDATE" } else { "" };
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM memories WHERE id = $1 AND {live} {lock}",
        live = live("memories"),
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("no memory {id}")))
}

const UPDATABLE: &[&str] = &[
    "content",
    "kind",
    "importance",
    "emotional_valence",
    "tags",
    "entities",
    "source_type",
    "source_ref",
    "metadata",
    "expire_time",
];

#[tracing::instrument(skip_all)]
pub async fn update(
    state: &State,
    request: pb::UpdateMemoryRequest,
) -> ApiResult<pb::UpdateMemoryResponse> {
    let mut violations = Violations::default();
    let paths = violations.merge(field_mask::paths(request.update_mask.as_ref(), UPDATABLE));
    let given = request.memory.unwrap_or_default();
    let id = violations.check(parse_uuid("memory.id", &given.id));
    let supplied = violations.check(state.space.check("embedding", request.embedding.as_ref()));
    let new_content = paths
        .as_ref()
        .is_some_and(|p| p.iter().any(|p| p == "content"));
    if request.embedding.is_some() && paths.is_some() && !new_content {
        violations.push(
            "embedding",
            "is the new content's vector: name content in update_mask",
        );
    }
    if new_content {
        violations.check(check_content("memory.content", &given.content));
    }
    violations.into_result()?;
    let (paths, id, supplied) = (
        paths.expect("checked"),
        id.expect("checked"),
        supplied.expect("checked"),
    );
    // Embedding is slow: do it before taking the row's lock.
    let vector = if new_content {
        Some(vectors::vector_of(state.embedder.as_ref(), supplied, &given.content).await?)
    } else {
        None
    };

    let mut tx = state.pool.begin().await?;
    let current = fetch_live(&mut tx, id, true).await?.into_pb();
    let mut merged = current.clone();
    for path in &paths {
        match path.as_str() {
            "content" => merged.content.clone_from(&given.content),
            "kind" => merged.kind = given.kind,
            "importance" => merged.importance = Some(given.importance.unwrap_or(0.5)),
            "emotional_valence" => merged.emotional_valence = given.emotional_valence,
            "tags" => merged.tags.clone_from(&given.tags),
            "entities" => merged.entities.clone_from(&given.entities),
            "source_type" => merged.source_type = given.source_type,
            "source_ref" => merged.source_ref.clone_from(&given.source_ref),
            "metadata" => merged.metadata.clone_from(&given.metadata),
            "expire_time" => merged.expire_time = given.expire_time,
            _ => unreachable!("field_mask::paths keeps to UPDATABLE"),
        }
    }
    let mut violations = Violations::default();
    let input = check_memory(&mut violations, "memory", Some(&merged), Utc::now());
    violations.into_result()?;
    let input = input.expect("checked");
    let changed = input.content != current.content;
    let row: MemoryRow = sqlx::query_as(AssertSqlSafe(format!(
        "UPDATE memories SET kind = $2, content = $3, importance = $4, emotional_valence = $5,
             tags = $6, entities = $7, source_type = $8, source_ref = $9, metadata = $10,
             expire_time = $11,
             previous_content = CASE WHEN $12 THEN content ELSE previous_content END,
             revision = revision + CASE WHEN $12 THEN 1 ELSE 0 END,
             embedding = coalesce($13, embedding),
             embedding_model = CASE WHEN $13 IS NULL THEN embedding_model ELSE $14 END
         WHERE id = $1
         RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(input.kind)
    .bind(&input.content)
    .bind(input.importance)
    .bind(input.emotional_valence)
    .bind(&input.tags)
    .bind(&input.entities)
    .bind(input.source_type)
    .bind(&input.source_ref)
    .bind(&input.metadata)
    .bind(input.expire_time)
    .bind(changed)
    .bind(vector)
    .bind(state.space.model())
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(pb::UpdateMemoryResponse {
        memory: Some(row.into_pb()),
    })
}

#[tracing::instrument(skip_all)]
pub async fn list(
    state: &State,
    request: pb::ListMemoriesRequest,
) -> ApiResult<pb::ListMemoriesResponse> {
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    let scope = violations.check(Scope::check("scope", request.scope.as_ref()));
    let kinds = violations.check(kinds("kinds", &request.kinds));
    let tags = violations.check(check_tags("tags", &request.tags));
    violations.check(text("category", &request.category, MAX_KEY_CHARS));
    let page = Page::<Uuid>::check(&mut violations, request.page_size, &request.page_token);
    violations.into_result()?;
    let (user, scope, kinds, tags, page) = (
        user.expect("checked"),
        scope.expect("checked"),
        kinds.expect("checked"),
        tags.expect("checked"),
        page.expect("checked"),
    );
    let mut rows: Vec<MemoryRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM memories
         WHERE user_id = $1 AND {live} AND {scope}
           AND (cardinality($3::text[]) = 0 OR kind = ANY($3))
           AND tags @> $4
           AND ($5 = '' OR category = $5)
           AND ($6::uuid IS NULL OR id < $6)
         ORDER BY id DESC
         LIMIT $7",
        live = live("memories"),
        scope = scope.sql("project_id", "$2"),
    )))
    .bind(user)
    .bind(scope.project())
    .bind(&kinds)
    .bind(&tags)
    .bind(&request.category)
    .bind(page.after)
    .bind(page.size + 1)
    .fetch_all(&state.pool)
    .await?;
    let next_page_token = next_page(&mut rows, page.size, |row| row.id.to_string());
    Ok(pb::ListMemoriesResponse {
        memories: rows.into_iter().map(MemoryRow::into_pb).collect(),
        next_page_token,
    })
}

/// The stored names of `kinds` (each must be a named kind).
pub fn kinds(field: &str, kinds: &[i32]) -> Result<Vec<String>, FieldViolation> {
    kinds
        .iter()
        .map(|kind| memory_kind::require(field, *kind).map(str::to_owned))
        .collect()
}

#[tracing::instrument(skip_all)]
pub async fn delete(
    state: &State,
    request: pb::DeleteMemoryRequest,
) -> ApiResult<pb::DeleteMemoryResponse> {
    let id = parse_uuid("id", &request.id)?;
    // Deleting a deleted memory is harmless; only an unknown id is NOT_FOUND.
    let found = sqlx::query_scalar::<_, bool>(
        "WITH deleted AS (
             UPDATE memories SET delete_time = now() WHERE id = $1 AND delete_time IS NULL RETURNING id
         )
         SELECT EXISTS (SELECT 1 FROM deleted) OR EXISTS (SELECT 1 FROM memories WHERE id = $1)",
    )
    .bind(id)
    .fetch_one(&state.pool)
    .await?;
    if !found {
        return Err(ApiError::not_found(format!("no memory {id}")));
    }
    Ok(pb::DeleteMemoryResponse {})
}

#[tracing::instrument(skip_all)]
pub async fn forget(
    state: &State,
    request: pb::ForgetMemoryRequest,
) -> ApiResult<pb::ForgetMemoryResponse> {
    let id = parse_uuid("id", &request.id)?;
    let deleted = sqlx::query("DELETE FROM memories WHERE id = $1")
        .bind(id)
        .execute(&state.pool)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::not_found(format!("no memory {id}")));
    }
    Ok(pb::ForgetMemoryResponse {})
}
