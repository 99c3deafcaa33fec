//! Documents: upload (checked whole, stored PENDING for the ingestion
//! worker), get, list and delete. The text is cut into chunks by
//! [`chunking`], embedded and stored by [`ingest`], and searched by
//! [`search`].

pub mod chunking;
pub mod ingest;
pub mod search;

use chrono::{DateTime, Utc};
use mesh_proto::mesh::memory::v1::{self as pb, upload_document_request::Content};
use mesh_runtime::{
    ApiError, ApiResult, FieldViolation, Violations,
    convert::{json_to_struct, optional_timestamp, parse_uuid, timestamp},
    idempotency::{self, Key},
    pagination::{Page, next_page},
    wire::optional_uuid,
};
use sqlx::AssertSqlSafe;
use uuid::Uuid;

use crate::{
    State,
    wire::{Scope, document_status, document_type, json_object, required_text},
};

const MAX_FILENAME_CHARS: usize = 255;

/// Every column a Document is read from, in [`DocumentRow`]'s order (never
/// the content: lists and gets do not need megabytes of text).
const COLUMNS: &str = "id, user_id, project_id, filename, type, metadata, status, error, \
    size_bytes, page_count, word_count, chunk_count, chunks_done, create_time, update_time, \
    complete_time";

#[derive(sqlx::FromRow)]
struct DocumentRow {
    id: Uuid,
    user_id: Uuid,
    project_id: Option<Uuid>,
    filename: String,
    #[sqlx(rename = "type")]
    kind: String,
    metadata: serde_json::Value,
    status: String,
    error: Option<String>,
    size_bytes: i64,
    page_count: i32,
    word_count: i32,
    chunk_count: i32,
    chunks_done: i32,
    create_time: DateTime<Utc>,
    update_time: DateTime<Utc>,
    complete_time: Option<DateTime<Utc>>,
}

impl DocumentRow {
    fn into_pb(self) -> pb::Document {
        pb::Document {
            id: self.id.to_string(),
            user_id: self.user_id.to_string(),
            project_id: self.project_id.map(|p| p.to_string()).unwrap_or_default(),
            filename: self.filename,
            r#type: document_type::parse(&self.kind) as i32,
            metadata: Some(json_to_struct(&self.metadata)),
            status: document_status::parse(&self.status) as i32,
            error: self.error.unwrap_or_default(),
            size_bytes: self.size_bytes,
            page_count: self.page_count,
            word_count: self.word_count,
            chunk_count: self.chunk_count,
            chunks_done: self.chunks_done,
            create_time: Some(timestamp(self.create_time)),
            update_time: Some(timestamp(self.update_time)),
            complete_time: optional_timestamp(self.complete_time),
        }
    }
}

/// An upload, checked.
struct Upload<'a> {
    user: Uuid,
    project: Option<Uuid>,
    filename: &'a str,
    kind: &'static str,
    text: &'a str,
    size_bytes: usize,
    metadata: serde_json::Value,
}

fn check_filename(filename: &str) -> Result<(), FieldViolation> {
    required_text("filename", filename, MAX_FILENAME_CHARS)?;
    if filename.trim().is_empty() {
        return Err(FieldViolation::new("filename", "is required"));
    }
    if filename.chars().any(char::is_control) {
        return Err(FieldViolation::new(
            "filename",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// The stored type: the one given, else the one the extension says.
fn check_type(given: i32, filename: &str) -> Result<&'static str, FieldViolation> {
    if given != 0 {
        return document_type::require("type", given);
    }
    let extension = filename
        .rsplit_once('.')
        .map(|(_, extension)| extension.to_ascii_lowercase());
    match extension.as_deref() {
        Some("txt") => Ok("txt"),
        Some("md" | "markdown") => Ok("md"),
        _ => Err(FieldViolation::new(
            "type",
            "is required when the filename does not end in .txt, .md or .markdown \
             (DOCUMENT_TYPE_TXT or DOCUMENT_TYPE_MD)",
        )),
    }
}

/// The document's text: `data` must be UTF-8, either must fit the limit,
/// hold no NUL and not be blank. Returns the field it came in and the text.
fn check_content(content: Option<&Content>, max_bytes: usize) -> Result<&str, FieldViolation> {
    let (field, bytes) = match content {
        Some(Content::Data(data)) => ("data", data.as_slice()),
        Some(Content::Text(text)) => ("text", text.as_bytes()),
        None => {
            return Err(FieldViolation::new(
                "content",
                "is required: the document as data (UTF-8 bytes) or text",
            ));
        }
    };
    if bytes.len() > max_bytes {
        return Err(FieldViolation::new(
            field,
            format!(
                "must be at most {max_bytes} bytes (this one has {})",
                bytes.len()
            ),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|error| {
        FieldViolation::new(
            field,
            format!(
                "must be UTF-8 text (the bytes at offset {} are not)",
                error.valid_up_to()
            ),
        )
    })?;
    if text.contains('\0') {
        return Err(FieldViolation::new(field, "must not contain NUL"));
    }
    if text.trim().is_empty() {
        return Err(FieldViolation::new(
            field,
            "must not be empty or only whitespace",
        ));
    }
    Ok(text)
}

fn check_upload<'a>(
    violations: &mut Violations,
    request: &'a pb::UploadDocumentRequest,
    max_bytes: usize,
) -> Option<Upload<'a>> {
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    let project = violations.check(optional_uuid("project_id", &request.project_id));
    let filename = violations.check(check_filename(&request.filename));
    let kind = violations.check(check_type(request.r#type, &request.filename));
    let text = violations.check(check_content(request.content.as_ref(), max_bytes));
    let metadata = violations.check(json_object("metadata", request.metadata.as_ref()));
    violations.check(idempotency::check_request_id(&request.request_id));
    filename?;
    let text = text?;
    Some(Upload {
        user: user?,
        project: project?,
        filename: &request.filename,
        kind: kind?,
        // A byte-order mark says nothing; chunks and counts go without it.
        text: text.strip_prefix('\u{feff}').unwrap_or(text),
        size_bytes: text.len(),
        metadata: metadata?,
    })
}

/// What a retry must match: the request with its content replaced by its
/// length and digest, so the stored fingerprint stays small however large
/// the document is.
fn fingerprint(request: &pb::UploadDocumentRequest, text: &str) -> pb::UploadDocumentRequest {
    // FNV-1a, 128 bits: a retry with other content under the same request_id
    // is a caller's mistake to detect, not an adversary's collision to resist.
    let mut hash: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for byte in text.as_bytes() {
        hash ^= u128::from(*byte);
        hash = hash.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    pb::UploadDocumentRequest {
        user_id: request.user_id.clone(),
        project_id: request.project_id.clone(),
        filename: request.filename.clone(),
        r#type: request.r#type,
        content: Some(Content::Text(format!(
            "{} bytes, fnv1a-128 {hash:032x}",
            text.len()
        ))),
        metadata: request.metadata.clone(),
        request_id: request.request_id.clone(),
    }
}

/// A count or position as the database's `int`, saturating (no document
/// comes near it).
fn as_i32(value: impl TryInto<i32>) -> i32 {
    value.try_into().unwrap_or(i32::MAX)
}

#[tracing::instrument(skip_all)]
pub async fn upload(
    state: &State,
    request: pb::UploadDocumentRequest,
) -> ApiResult<pb::UploadDocumentResponse> {
    let mut violations = Violations::default();
    let upload = check_upload(&mut violations, &request, state.max_document_bytes);
    violations.into_result()?;
    let upload = upload.expect("checked");
    let page_count = as_i32(chunking::page_count(upload.text));
    let word_count = as_i32(chunking::word_count(upload.text));
    let key = Key {
        operation: "UploadDocument",
        request_id: &request.request_id,
        user_id: Some(upload.user),
    };
    // run_once keeps and compares a fingerprint only under a request_id:
    // without one, hashing megabytes of text would be thrown away.
    let fingerprint = if request.request_id.is_empty() {
        pb::UploadDocumentRequest::default()
    } else {
        fingerprint(&request, upload.text)
    };
    idempotency::run_once(&state.pool, key, &fingerprint, async |conn| {
        let row: DocumentRow = sqlx::query_as(AssertSqlSafe(format!(
            "INSERT INTO documents (id, user_id, project_id, filename, type, metadata, content,
                 size_bytes, page_count, word_count)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             RETURNING {COLUMNS}"
        )))
        .bind(Uuid::now_v7())
        .bind(upload.user)
        .bind(upload.project)
        .bind(upload.filename)
        .bind(upload.kind)
        .bind(&upload.metadata)
        .bind(upload.text)
        .bind(i64::try_from(upload.size_bytes).unwrap_or(i64::MAX))
        .bind(page_count)
        .bind(word_count)
        .fetch_one(&mut *conn)
        .await?;
        tracing::info!(
            document = %row.id,
            bytes = upload.size_bytes,
            "document queued for ingestion"
        );
        Ok(pb::UploadDocumentResponse {
            document: Some(row.into_pb()),
        })
    })
    .await
}

#[tracing::instrument(skip_all)]
pub async fn get(
    state: &State,
    request: pb::GetDocumentRequest,
) -> ApiResult<pb::GetDocumentResponse> {
    let id = parse_uuid("id", &request.id)?;
    let row: DocumentRow = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM documents WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&state.pool)
    .await?
    .ok_or_else(|| ApiError::not_found(format!("no document {id}")))?;
    Ok(pb::GetDocumentResponse {
        document: Some(row.into_pb()),
    })
}

#[tracing::instrument(skip_all)]
pub async fn list(
    state: &State,
    request: pb::ListDocumentsRequest,
) -> ApiResult<pb::ListDocumentsResponse> {
    let mut violations = Violations::default();
    let user = violations.check(parse_uuid("user_id", &request.user_id));
    let scope = violations.check(Scope::check("scope", request.scope.as_ref()));
    let page = Page::<Uuid>::check(&mut violations, request.page_size, &request.page_token);
    violations.into_result()?;
    let (user, scope, page) = (
        user.expect("checked"),
        scope.expect("checked"),
        page.expect("checked"),
    );
    // Ids are time-ordered (v7): newest first is id order, and the page
    // token is the last id.
    let mut rows: Vec<DocumentRow> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM documents
         WHERE user_id = $1 AND {scope} AND ($3::uuid IS NULL OR id < $3)
         ORDER BY id DESC LIMIT $4",
        scope = scope.sql("project_id", "$2"),
    )))
    .bind(user)
    .bind(scope.project())
    .bind(page.after)
    .bind(page.size + 1)
    .fetch_all(&state.pool)
    .await?;
    let next_page_token = next_page(&mut rows, page.size, |row| row.id.to_string());
    Ok(pb::ListDocumentsResponse {
        documents: rows.into_iter().map(DocumentRow::into_pb).collect(),
        next_page_token,
    })
}

/// Deletes the document and (by cascade) its chunks. A worker ingesting it
/// finds it gone at its next batch and stops.
#[tracing::instrument(skip_all)]
pub async fn delete(
    state: &State,
    request: pb::DeleteDocumentRequest,
) -> ApiResult<pb::DeleteDocumentResponse> {
    let id = parse_uuid("id", &request.id)?;
    let deleted = sqlx::query("DELETE FROM documents WHERE id = $1")
        .bind(id)
        .execute(&state.pool)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::not_found(format!("no document {id}")));
    }
    tracing::info!(document = %id, "document deleted");
    Ok(pb::DeleteDocumentResponse {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_type_comes_from_the_extension_when_unset() {
        assert_eq!(check_type(0, "notes.txt").unwrap(), "txt");
        assert_eq!(check_type(0, "README.MD").unwrap(), "md");
        assert_eq!(check_type(0, "a.b.markdown").unwrap(), "md");
        assert_eq!(check_type(0, "report.pdf").unwrap_err().field, "type");
        assert_eq!(check_type(0, "noextension").unwrap_err().field, "type");
        // Given, it wins over the extension.
        assert_eq!(
            check_type(pb::DocumentType::Md as i32, "x.txt").unwrap(),
            "md"
        );
        assert_eq!(check_type(99, "x.txt").unwrap_err().field, "type");
    }

    #[test]
    fn content_must_be_utf8_within_the_limit_and_not_blank() {
        let data = |bytes: &[u8]| Content::Data(bytes.to_vec());
        assert_eq!(check_content(Some(&data(b"hi")), 10).unwrap(), "hi");
        assert_eq!(
            check_content(Some(&data(&[0x66, 0xff, 0xfe])), 10)
                .unwrap_err()
                .field,
            "data"
        );
        let over = check_content(Some(&Content::Text("x".repeat(11))), 10).unwrap_err();
        assert_eq!(over.field, "text");
        assert!(
            over.description.contains("10 bytes"),
            "{}",
            over.description
        );
        assert_eq!(
            check_content(Some(&data(b" \n\t")), 10).unwrap_err().field,
            "data"
        );
        assert_eq!(
            check_content(Some(&data(b"a\0b")), 10).unwrap_err().field,
            "data"
        );
        assert_eq!(check_content(None, 10).unwrap_err().field, "content");
    }

    #[test]
    fn a_fingerprint_tells_contents_apart_and_ignores_data_versus_text() {
        let request = |content: Content| pb::UploadDocumentRequest {
            user_id: "u".into(),
            filename: "a.txt".into(),
            content: Some(content),
            request_id: "r".into(),
            ..Default::default()
        };
        let text = request(Content::Text("hello".into()));
        let data = request(Content::Data(b"hello".to_vec()));
        assert_eq!(fingerprint(&text, "hello"), fingerprint(&data, "hello"));
        assert_ne!(fingerprint(&text, "hello"), fingerprint(&text, "hellp"));
    }
}
