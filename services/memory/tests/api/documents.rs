//! UploadDocument, GetDocument, ListDocuments, DeleteDocument and
//! SearchChunks, and the ingestion worker behind them: counts, chunks,
//! failures, deletion mid-ingestion, resuming after a restart, and replicas
//! sharing the work.
//!
//! Most tests embed with [`Scripted`]: the harness's bag-of-words vectors,
//! which share words the way a model shares meaning closely enough to rank,
//! and can be made to block or fail on cue. One test runs the real local
//! model end to end.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use mesh_memory::{
    documents::ingest::MAX_ATTEMPTS,
    embed::{EmbedError, Embedder, estimate_tokens},
};
use mesh_proto::mesh::memory::v1::{self as pb, upload_document_request::Content};
use sqlx::Row;
use tonic::{Code, Status};
use uuid::Uuid;

use crate::harness::{
    self, Client, TestApp, WordsEmbedder, bad_fields, spawn_app, spawn_app_with, spawn_on,
    wait_serving,
};

// ---------------------------------------------------------------------------
// The test embedder

const DIMENSIONS: usize = 64;
const MODEL: &str = "test-hashed-words";

/// What a scripted embedder does once it has served its calls.
enum Then {
    /// Waits until the gate opens.
    Block,
    /// Answers Unavailable for this many calls, then embeds.
    Unavailable(usize),
    /// Always fails.
    Fail,
}

/// [`WordsEmbedder`]'s vectors, with tokens counted as [`estimate_tokens`]
/// counts them (about 4 characters a token, so each [`long_text`] paragraph
/// is a chunk of its own), that serves `allowed` calls, then does what `then`
/// says.
struct Scripted {
    words: Arc<WordsEmbedder>,
    allowed: usize,
    then: Then,
    calls: AtomicUsize,
    texts: AtomicUsize,
    open: tokio::sync::watch::Sender<bool>,
}

impl Scripted {
    fn new(allowed: usize, then: Then) -> Arc<Self> {
        Arc::new(Self {
            words: WordsEmbedder::new(MODEL, DIMENSIONS),
            allowed,
            then,
            calls: AtomicUsize::new(0),
            texts: AtomicUsize::new(0),
            open: tokio::sync::watch::Sender::new(false),
        })
    }

    /// One that embeds every call.
    fn serving() -> Arc<Self> {
        Self::new(usize::MAX, Then::Fail)
    }

    fn open(&self) {
        self.open.send_replace(true);
    }

    /// Texts embedded so far.
    fn embedded(&self) -> usize {
        self.texts.load(Ordering::SeqCst)
    }
}

#[tonic::async_trait]
impl Embedder for Scripted {
    fn model(&self) -> &str {
        MODEL
    }
    fn dimensions(&self) -> usize {
        DIMENSIONS
    }
    fn count_tokens(&self, text: &str) -> usize {
        estimate_tokens(text)
    }
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if call >= self.allowed {
            match self.then {
                Then::Block => {
                    let mut open = self.open.subscribe();
                    let _ = open.wait_for(|open| *open).await;
                }
                Then::Unavailable(times) if call - self.allowed < times => {
                    return Err(EmbedError::Unavailable("503 from the test endpoint".into()));
                }
                Then::Unavailable(_) => {}
                Then::Fail => {
                    return Err(EmbedError::Failed(anyhow::anyhow!(
                        "the test model cannot read this"
                    )));
                }
            }
        }
        self.texts.fetch_add(texts.len(), Ordering::SeqCst);
        Ok(texts.iter().map(|text| self.words.vector(text)).collect())
    }
}

// ---------------------------------------------------------------------------
// Helpers

fn upload_request(user: &str, filename: &str, text: &str) -> pb::UploadDocumentRequest {
    pb::UploadDocumentRequest {
        user_id: user.into(),
        filename: filename.into(),
        content: Some(Content::Text(text.into())),
        ..Default::default()
    }
}

async fn upload(
    client: &mut Client,
    request: pb::UploadDocumentRequest,
) -> Result<pb::Document, Status> {
    client
        .upload_document(request)
        .await
        .map(|r| r.into_inner().document.expect("a document"))
}

/// Uploads `text` as `filename`, which must be accepted.
async fn upload_text(client: &mut Client, user: &str, filename: &str, text: &str) -> pb::Document {
    upload(client, upload_request(user, filename, text))
        .await
        .expect("the upload is accepted")
}

async fn get(client: &mut Client, id: &str) -> Result<pb::Document, Status> {
    client
        .get_document(pb::GetDocumentRequest { id: id.into() })
        .await
        .map(|r| r.into_inner().document.expect("a document"))
}

async fn search(
    client: &mut Client,
    request: pb::SearchChunksRequest,
) -> Result<Vec<pb::ChunkHit>, Status> {
    client
        .search_chunks(request)
        .await
        .map(|r| r.into_inner().hits)
}

async fn delete(client: &mut Client, id: &str) -> Result<(), Status> {
    client
        .delete_document(pb::DeleteDocumentRequest { id: id.into() })
        .await
        .map(|_| ())
}

fn status_of(document: &pb::Document) -> pb::DocumentStatus {
    pb::DocumentStatus::try_from(document.status).expect("a known status")
}

/// How long a test waits for the worker before it calls it stuck (a guard
/// against hanging, not a measurement).
const PATIENCE: Duration = Duration::from_secs(180);

/// Polls GetDocument until `done` holds for it.
async fn wait_until(
    client: &mut Client,
    id: &str,
    what: &str,
    done: impl Fn(&pb::Document) -> bool,
) -> pb::Document {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let document = get(client, id).await.expect("the document exists");
        if done(&document) {
            return document;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "document {id} never got {what}: {document:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_completed(client: &mut Client, id: &str) -> pb::Document {
    let document = wait_until(client, id, "completed or failed", |d| {
        matches!(
            status_of(d),
            pb::DocumentStatus::Completed | pb::DocumentStatus::Failed
        )
    })
    .await;
    assert_eq!(
        status_of(&document),
        pb::DocumentStatus::Completed,
        "{document:?}"
    );
    document
}

async fn wait_failed(client: &mut Client, id: &str) -> pb::Document {
    wait_until(client, id, "failed", |d| {
        status_of(d) == pb::DocumentStatus::Failed
    })
    .await
}

/// The ids of every stored chunk, read as the superuser.
async fn chunk_ids(db: &mesh_runtime::testing::TestDatabase) -> HashSet<String> {
    let mut conn = db.admin_connection().await;
    sqlx::query_scalar("SELECT id::text FROM memory.chunks")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Chunk rows of one document, read as the superuser: (rows, distinct
/// positions, lowest position, highest position).
async fn stored_chunks(
    db: &mesh_runtime::testing::TestDatabase,
    document: &str,
) -> (i64, i64, i32, i32) {
    let mut conn = db.admin_connection().await;
    let row = sqlx::query(
        "SELECT count(*), count(DISTINCT chunk_index), coalesce(min(chunk_index), -1),
                coalesce(max(chunk_index), -1)
         FROM memory.chunks WHERE document_id = $1",
    )
    .bind(Uuid::parse_str(document).unwrap())
    .fetch_one(&mut conn)
    .await
    .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

/// Asserts the document's chunks are stored once each, at positions 0..chunk_count.
async fn assert_every_chunk_once(
    db: &mesh_runtime::testing::TestDatabase,
    document: &pb::Document,
) {
    let n = i64::from(document.chunk_count);
    assert!(n > 0, "{document:?}");
    assert_eq!(
        stored_chunks(db, &document.id).await,
        (n, n, 0, document.chunk_count - 1),
        "{document:?}"
    );
    assert_eq!(document.chunks_done, document.chunk_count);
}

/// A text of `paragraphs` paragraphs of about 300 tokens each (as the test
/// embedders count): each becomes a chunk of its own.
fn long_text(tag: &str, paragraphs: usize) -> String {
    (0..paragraphs)
        .map(|p| {
            (0..24)
                .map(|s| format!("The {tag} item {p}.{s} carries value {} here.", p * 100 + s))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn metadata(pairs: &[(&str, &str)]) -> prost_types::Struct {
    prost_types::Struct {
        fields: pairs
            .iter()
            .map(|(key, value)| {
                (
                    (*key).to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue((*value).to_owned())),
                    },
                )
            })
            .collect(),
    }
}

/// Another replica of `app`'s service: same database, its own embedder and lease.
struct Replica {
    client: Client,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn replica(app: &TestApp, embedder: Arc<dyn Embedder>, lease: Duration) -> Replica {
    let mut config = harness::config(&app.db);
    config.ingest_lease = lease;
    let service = mesh_memory::build_with(&config, embedder)
        .await
        .expect("build");
    let addr = service.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(service.run_until(async {
        let _ = stopped.await;
    }));
    let channel = harness::channel(addr).await;
    wait_serving(channel.clone()).await;
    Replica {
        client: harness::client(channel),
        stop,
        server,
    }
}

impl Replica {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.server
            .await
            .expect("server task")
            .expect("server stopped cleanly");
    }
}

// ---------------------------------------------------------------------------
// Upload and ingestion

#[tokio::test]
async fn an_upload_is_ingested_into_chunks_with_its_counts() {
    let mut app = spawn_app_with(Scripted::serving(), |_| {}).await;
    let user = Uuid::now_v7().to_string();
    let text = format!(
        "# Handbook\n\nWelcome to the handbook.\n\n## Travel\n\n{}\u{c}## Expenses\n\n{}\n",
        long_text("travel", 3),
        long_text("expense", 2)
    );
    let mut request = upload_request(&user, "handbook.md", &text);
    request.metadata = Some(metadata(&[("team", "ops")]));
    let uploaded = upload(&mut app.client, request).await.unwrap();
    assert_eq!(status_of(&uploaded), pb::DocumentStatus::Pending);
    assert_eq!(uploaded.r#type, pb::DocumentType::Md as i32);
    assert_eq!(uploaded.user_id, user);
    assert_eq!(uploaded.filename, "handbook.md");
    assert_eq!(uploaded.size_bytes, text.len() as i64);
    assert_eq!(uploaded.page_count, 2);
    assert_eq!(uploaded.word_count, text.split_whitespace().count() as i32);
    assert_eq!(uploaded.chunk_count, 0);
    assert!(uploaded.complete_time.is_none());
    assert_eq!(uploaded.metadata, Some(metadata(&[("team", "ops")])));

    let done = wait_completed(&mut app.client, &uploaded.id).await;
    assert!(done.error.is_empty());
    assert!(done.complete_time.is_some());
    // Five paragraphs of ~300 tokens and a heading or two: one chunk each.
    assert_eq!(done.chunk_count, 5, "{done:?}");
    assert_every_chunk_once(&app.db, &done).await;
    assert_eq!(app.count("chunks").await, 5);

    // What each chunk records: position, page, section, size, vector, owner.
    let mut conn = app.db.admin_connection().await;
    let rows = sqlx::query(
        "SELECT chunk_index, page, section_title, token_count, embedding_model, user_id::text,
                content
         FROM memory.chunks WHERE document_id = $1 ORDER BY chunk_index",
    )
    .bind(Uuid::parse_str(&done.id).unwrap())
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let summary: Vec<(i32, i32, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        summary,
        [
            (0, 1, "Handbook".to_owned()),
            (1, 1, "Handbook > Travel".to_owned()),
            (2, 1, "Handbook > Travel".to_owned()),
            (3, 2, "Handbook > Expenses".to_owned()),
            (4, 2, "Handbook > Expenses".to_owned()),
        ]
    );
    for row in &rows {
        let tokens: i32 = row.get(3);
        let content: String = row.get(6);
        assert!(tokens > 0 && tokens <= 400, "{tokens}");
        assert_eq!(tokens as usize, estimate_tokens(&content));
        assert_eq!(row.get::<String, _>(4), MODEL);
        assert_eq!(row.get::<String, _>(5), user);
    }
    // Headings are kept with what follows them, and pages are where chunks start.
    let first: String = rows[0].get(6);
    assert!(
        first.starts_with("# Handbook\n\nWelcome to the handbook."),
        "{first}"
    );
    let sections: Vec<String> = rows.iter().map(|r| r.get(2)).collect();
    assert_eq!(sections[0], "Handbook");
    assert!(sections.iter().any(|s| s == "Handbook > Travel"));
    assert!(sections.iter().any(|s| s == "Handbook > Expenses"));
    let expenses_start = rows
        .iter()
        .find(|r| r.get::<String, _>(6).contains("## Expenses"))
        .expect("a chunk holds the Expenses heading");
    assert_eq!(
        expenses_start.get::<i32, _>(1),
        2,
        "the heading is on page 2"
    );
    for row in &rows {
        let content: String = row.get(6);
        assert!(!content.trim_end().lines().last().unwrap().starts_with('#'));
    }
}

#[tokio::test]
async fn the_type_comes_from_the_extension_and_bytes_are_read_as_utf8() {
    let mut app = spawn_app_with(Scripted::serving(), |_| {}).await;
    let user = Uuid::now_v7().to_string();
    let mut request = upload_request(&user, "notes.TXT", "");
    request.content = Some(Content::Data("café\u{c}página dos".as_bytes().to_vec()));
    let document = upload(&mut app.client, request).await.unwrap();
    assert_eq!(document.r#type, pb::DocumentType::Txt as i32);
    assert_eq!(document.page_count, 2);
    assert_eq!(document.word_count, 3);
    assert_eq!(document.size_bytes, "café\u{c}página dos".len() as i64);

    let mut request = upload_request(&user, "no-extension", "# Title\n\ntext");
    request.r#type = pb::DocumentType::Md as i32;
    let document = upload(&mut app.client, request).await.unwrap();
    assert_eq!(document.r#type, pb::DocumentType::Md as i32);
    let done = wait_completed(&mut app.client, &document.id).await;
    assert_eq!(done.chunk_count, 1);
}

#[tokio::test]
async fn bad_uploads_are_refused_naming_each_field_and_store_nothing() {
    let mut app = spawn_app_with(Scripted::serving(), |c| c.max_document_bytes = 1000).await;
    let user = Uuid::now_v7().to_string();
    let valid = || upload_request(&user, "a.txt", "some text");

    // Everything wrong at once: every field is named.
    let status = upload(
        &mut app.client,
        pb::UploadDocumentRequest {
            user_id: "not-a-uuid".into(),
            project_id: "nor-this".into(),
            filename: String::new(),
            r#type: 99,
            content: None,
            metadata: None,
            request_id: "r".repeat(129),
        },
    )
    .await
    .unwrap_err();
    let mut fields = bad_fields(&status);
    fields.sort();
    assert_eq!(
        fields,
        [
            "content",
            "filename",
            "project_id",
            "request_id",
            "type",
            "user_id"
        ]
    );

    let cases: Vec<(pb::UploadDocumentRequest, &str)> = vec![
        (
            pb::UploadDocumentRequest {
                content: Some(Content::Text("x".repeat(1001))),
                ..valid()
            },
            "text",
        ),
        (
            pb::UploadDocumentRequest {
                content: Some(Content::Data(vec![b'x'; 1001])),
                ..valid()
            },
            "data",
        ),
        (
            pb::UploadDocumentRequest {
                content: Some(Content::Data(vec![b'o', b'k', 0xc3, 0x28, 0xff])),
                ..valid()
            },
            "data",
        ),
        (
            pb::UploadDocumentRequest {
                filename: "report.pdf".into(),
                ..valid()
            },
            "type",
        ),
        (
            pb::UploadDocumentRequest {
                filename: String::new(),
                r#type: pb::DocumentType::Txt as i32,
                ..valid()
            },
            "filename",
        ),
        (
            pb::UploadDocumentRequest {
                filename: format!("{}.txt", "f".repeat(252)),
                ..valid()
            },
            "filename",
        ),
        (
            pb::UploadDocumentRequest {
                filename: "a\0.txt".into(),
                ..valid()
            },
            "filename",
        ),
        (
            pb::UploadDocumentRequest {
                content: Some(Content::Text(" \n\t\u{c} ".into())),
                ..valid()
            },
            "text",
        ),
        (
            pb::UploadDocumentRequest {
                content: Some(Content::Text("a\0b".into())),
                ..valid()
            },
            "text",
        ),
        (
            pb::UploadDocumentRequest {
                user_id: String::new(),
                ..valid()
            },
            "user_id",
        ),
    ];
    for (request, field) in cases {
        let status = upload(&mut app.client, request.clone()).await.unwrap_err();
        assert_eq!(bad_fields(&status), [field], "{request:?}: {status:?}");
    }
    // The size limit is said.
    let status = upload(
        &mut app.client,
        pb::UploadDocumentRequest {
            content: Some(Content::Text("x".repeat(1001))),
            ..valid()
        },
    )
    .await
    .unwrap_err();
    assert!(
        status.message().contains("1000 bytes"),
        "{}",
        status.message()
    );

    assert_eq!(app.count("documents").await, 0);
    assert_eq!(app.count("idempotency_keys").await, 0);
    // At the limit exactly is fine.
    let document = upload(
        &mut app.client,
        pb::UploadDocumentRequest {
            content: Some(Content::Text("x".repeat(1000))),
            ..valid()
        },
    )
    .await
    .unwrap();
    assert_eq!(document.size_bytes, 1000);
}

#[tokio::test]
async fn an_upload_with_a_request_id_is_stored_once() {
    let mut app = spawn_app_with(Scripted::serving(), |_| {}).await;
    let user = Uuid::now_v7().to_string();
    let request = pb::UploadDocumentRequest {
        request_id: "upload-1".into(),
        ..upload_request(&user, "a.md", "# A\n\nsome text")
    };
    // Concurrent retries too.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let mut client = app.client.clone();
        let request = request.clone();
        calls.spawn(async move { upload(&mut client, request).await.unwrap().id });
    }
    let ids: HashSet<String> = calls.join_all().await.into_iter().collect();
    assert_eq!(ids.len(), 1);
    let again = upload(&mut app.client, request.clone()).await.unwrap();
    assert!(ids.contains(&again.id));
    assert_eq!(app.count("documents").await, 1);

    // The same id for another document is refused, and stores nothing.
    let other = pb::UploadDocumentRequest {
        content: Some(Content::Text("# A\n\nother text".into())),
        ..request.clone()
    };
    let status = upload(&mut app.client, other).await.unwrap_err();
    assert_eq!(bad_fields(&status), ["request_id"]);
    assert_eq!(app.count("documents").await, 1);

    // Without a request id, each upload is a document.
    let plain = upload_request(&user, "a.md", "# A\n\nsome text");
    upload(&mut app.client, plain.clone()).await.unwrap();
    upload(&mut app.client, plain).await.unwrap();
    assert_eq!(app.count("documents").await, 3);
}

// ---------------------------------------------------------------------------
// Get, list, delete

#[tokio::test]
async fn documents_are_listed_newest_first_by_scope_and_deleted_with_their_chunks() {
    let mut app = spawn_app_with(Scripted::serving(), |_| {}).await;
    let user = Uuid::now_v7().to_string();
    let someone_else = Uuid::now_v7().to_string();
    let project = Uuid::now_v7().to_string();
    let mut ids = Vec::new();
    for (name, project_id) in [("g1.txt", ""), ("p1.txt", project.as_str()), ("g2.txt", "")] {
        let request = pb::UploadDocumentRequest {
            project_id: project_id.into(),
            ..upload_request(&user, name, &format!("the text of {name}"))
        };
        ids.push(upload(&mut app.client, request).await.unwrap().id);
    }
    upload_text(&mut app.client, &someone_else, "x.txt", "theirs").await;

    let list = |user: &str, scope: Option<pb::ProjectScope>, page_size: i32, page_token: &str| {
        pb::ListDocumentsRequest {
            user_id: user.into(),
            scope,
            page_size,
            page_token: page_token.into(),
        }
    };
    let names = |response: &pb::ListDocumentsResponse| {
        response
            .documents
            .iter()
            .map(|d| d.filename.clone())
            .collect::<Vec<_>>()
    };
    let global = app
        .client
        .list_documents(list(&user, None, 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&global), ["g2.txt", "g1.txt"]);
    assert!(global.next_page_token.is_empty());
    let in_project = app
        .client
        .list_documents(list(
            &user,
            Some(pb::ProjectScope {
                project_id: project.clone(),
                all_projects: false,
            }),
            0,
            "",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&in_project), ["g2.txt", "p1.txt", "g1.txt"]);

    // Page by page, newest first, with every project.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = app
            .client
            .list_documents(list(&user, all_projects(), 2, &token))
            .await
            .unwrap()
            .into_inner();
        assert!(page.documents.len() <= 2);
        seen.extend(names(&page));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ["g2.txt", "p1.txt", "g1.txt"]);

    let status = app
        .client
        .list_documents(pb::ListDocumentsRequest {
            user_id: "x".into(),
            scope: Some(pb::ProjectScope {
                project_id: "y".into(),
                all_projects: false,
            }),
            page_size: -1,
            page_token: "not-ours".into(),
        })
        .await
        .unwrap_err();
    let mut fields = bad_fields(&status);
    fields.sort();
    assert_eq!(
        fields,
        ["page_size", "page_token", "scope.project_id", "user_id"]
    );

    // Get and delete.
    let first = wait_completed(&mut app.client, &ids[0]).await;
    assert_eq!(first.filename, "g1.txt");
    assert!(stored_chunks(&app.db, &ids[0]).await.0 > 0);
    delete(&mut app.client, &ids[0]).await.unwrap();
    assert_eq!(
        get(&mut app.client, &ids[0]).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(stored_chunks(&app.db, &ids[0]).await.0, 0);
    let again = delete(&mut app.client, &ids[0]).await.unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    let missing = Uuid::now_v7().to_string();
    assert_eq!(
        get(&mut app.client, &missing).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        bad_fields(&get(&mut app.client, "nope").await.unwrap_err()),
        ["id"]
    );
    let status = delete(&mut app.client, "nope").await.unwrap_err();
    assert_eq!(bad_fields(&status), ["id"]);
    assert_eq!(app.count("documents").await, 3);
}

// ---------------------------------------------------------------------------
// Search

/// Uploads and waits for: a manual about volcanoes (global), cake recipes
/// (in `project`), sailing notes (in `other_project`), and another user's
/// volcano notes.
struct Library {
    user: String,
    project: String,
    volcano: pb::Document,
    cake: pb::Document,
    sailing: pb::Document,
    theirs: pb::Document,
}

async fn library(client: &mut Client) -> Library {
    let user = Uuid::now_v7().to_string();
    let project = Uuid::now_v7().to_string();
    let other_project = Uuid::now_v7().to_string();
    let add = async |client: &mut Client,
                     user: &str,
                     name: &str,
                     project: &str,
                     kind: &str,
                     text: &str| {
        let request = pb::UploadDocumentRequest {
            project_id: project.into(),
            metadata: Some(metadata(&[("kind", kind)])),
            ..upload_request(user, name, text)
        };
        let document = upload(client, request).await.unwrap();
        wait_completed(client, &document.id).await
    };
    let volcano = add(
        client,
        &user,
        "volcanoes.md",
        "",
        "manual",
        "# Volcanoes\n\nMagma rises through the crust and erupts as lava.\n\n\
         ## Safety\n\nStay away from lava flows and ash clouds during an eruption.",
    )
    .await;
    let cake = add(
        client,
        &user,
        "cake.md",
        &project,
        "notes",
        "# Chocolate cake\n\nMix flour, sugar, cocoa and eggs, \
         then bake the cake for forty minutes.",
    )
    .await;
    let sailing = add(
        client,
        &user,
        "sailing.txt",
        &other_project,
        "notes",
        "Trim the sails when the wind shifts; the boat heels less on the ocean swell.",
    )
    .await;
    let theirs = add(
        client,
        &Uuid::now_v7().to_string(),
        "their-volcano.txt",
        "",
        "manual",
        "Lava and magma: another user's volcano notes.",
    )
    .await;
    Library {
        user,
        project,
        volcano,
        cake,
        sailing,
        theirs,
    }
}

fn query(user: &str, text: &str) -> pb::SearchChunksRequest {
    pb::SearchChunksRequest {
        user_id: user.into(),
        query: text.into(),
        ..Default::default()
    }
}

/// A search within one document.
fn in_document(user: &str, text: &str, document: &str) -> pb::SearchChunksRequest {
    pb::SearchChunksRequest {
        document_id: document.into(),
        ..query(user, text)
    }
}

/// The scope of every project.
fn all_projects() -> Option<pb::ProjectScope> {
    Some(pb::ProjectScope {
        project_id: String::new(),
        all_projects: true,
    })
}

fn documents_of(hits: &[pb::ChunkHit]) -> Vec<String> {
    hits.iter()
        .map(|h| h.chunk.as_ref().unwrap().document_id.clone())
        .collect()
}

#[tokio::test]
async fn search_ranks_chunks_by_document_scope_and_metadata() {
    let embedder = Scripted::serving();
    let mut app = spawn_app_with(embedder.clone(), |_| {}).await;
    let lib = library(&mut app.client).await;

    // Global scope: the user's global documents only, never another user's.
    let hits = search(&mut app.client, query(&lib.user, "lava flows eruption"))
        .await
        .unwrap();
    assert!(!hits.is_empty());
    let top = &hits[0];
    let chunk = top.chunk.as_ref().unwrap();
    assert_eq!(chunk.document_id, lib.volcano.id);
    assert_eq!(top.filename, "volcanoes.md");
    assert_eq!(chunk.metadata, Some(metadata(&[("kind", "manual")])));
    assert!(chunk.content.contains("lava"));
    assert!(top.keyword > 0.0 && top.semantic > 0.0, "{top:?}");
    let blended = 0.75 * top.semantic + 0.25 * top.keyword;
    assert!((top.score - blended).abs() < 1e-4, "{top:?}");
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    let docs = documents_of(&hits);
    assert!(!docs.contains(&lib.theirs.id));
    assert!(!docs.contains(&lib.cake.id), "the cake is in a project");

    // A project scope adds that project's documents.
    let mut in_project = query(&lib.user, "chocolate cake flour");
    in_project.scope = Some(pb::ProjectScope {
        project_id: lib.project.clone(),
        all_projects: false,
    });
    let hits = search(&mut app.client, in_project).await.unwrap();
    assert_eq!(documents_of(&hits)[0], lib.cake.id);
    assert!(!documents_of(&hits).contains(&lib.sailing.id));

    // Every project, filtered by the documents' metadata.
    let mut notes = query(&lib.user, "wind boat ocean");
    notes.scope = all_projects();
    notes.metadata_filter = Some(metadata(&[("kind", "notes")]));
    let hits = search(&mut app.client, notes).await.unwrap();
    assert_eq!(documents_of(&hits)[0], lib.sailing.id);
    let kinds: HashSet<String> = documents_of(&hits).into_iter().collect();
    assert!(kinds.is_subset(&HashSet::from([
        lib.sailing.id.clone(),
        lib.cake.id.clone()
    ])));

    // One document, whatever its project (the volcano manual matches too).
    let one = in_document(&lib.user, "lava cake", &lib.cake.id);
    let hits = search(&mut app.client, one).await.unwrap();
    assert!(!hits.is_empty());
    assert!(documents_of(&hits).iter().all(|d| *d == lib.cake.id));

    // A vector alone; a limit; a threshold nothing reaches.
    let mut by_vector = query(&lib.user, "");
    by_vector.query_embedding = Some(pb::Embedding {
        values: embedder.words.vector("magma rises through the crust"),
    });
    by_vector.limit = 1;
    let hits = search(&mut app.client, by_vector).await.unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(documents_of(&hits), std::slice::from_ref(&lib.volcano.id));
    assert_eq!(hits[0].keyword, 0.0);
    let mut strict = query(&lib.user, "lava");
    strict.threshold = 0.99;
    assert!(search(&mut app.client, strict).await.unwrap().is_empty());

    // Another user's document is not found; nothing matches an empty metadata match.
    let theirs = in_document(&lib.user, "lava", &lib.theirs.id);
    assert_eq!(
        search(&mut app.client, theirs).await.unwrap_err().code(),
        Code::NotFound
    );
    let mut nothing = query(&lib.user, "lava");
    nothing.metadata_filter = Some(metadata(&[("kind", "none")]));
    assert!(search(&mut app.client, nothing).await.unwrap().is_empty());
}

#[tokio::test]
async fn bad_searches_name_each_field() {
    let mut app = spawn_app_with(Scripted::serving(), |_| {}).await;
    let status = search(
        &mut app.client,
        pb::SearchChunksRequest {
            user_id: "x".into(),
            query: String::new(),
            query_embedding: None,
            document_id: "y".into(),
            scope: Some(pb::ProjectScope {
                project_id: Uuid::now_v7().to_string(),
                all_projects: true,
            }),
            metadata_filter: None,
            limit: 101,
            threshold: 1.5,
        },
    )
    .await
    .unwrap_err();
    let mut fields = bad_fields(&status);
    fields.sort();
    assert_eq!(
        fields,
        [
            "document_id",
            "limit",
            "query",
            "scope.project_id",
            "threshold",
            "user_id"
        ]
    );
    let mut wrong_size = query(&Uuid::now_v7().to_string(), "text");
    wrong_size.query_embedding = Some(pb::Embedding {
        values: vec![0.5; DIMENSIONS + 1],
    });
    let status = search(&mut app.client, wrong_size).await.unwrap_err();
    assert_eq!(bad_fields(&status), ["query_embedding.values"]);
    let missing = in_document(
        &Uuid::now_v7().to_string(),
        "text",
        &Uuid::now_v7().to_string(),
    );
    assert_eq!(
        search(&mut app.client, missing).await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn the_approximate_index_serves_large_scopes() {
    // Every scope counts as large: the HNSW index and keyword candidates serve.
    let mut app = spawn_app_with(Scripted::serving(), |c| c.exact_search_max = 1).await;
    let lib = library(&mut app.client).await;
    let hits = search(&mut app.client, query(&lib.user, "lava flows eruption"))
        .await
        .unwrap();
    assert_eq!(documents_of(&hits)[0], lib.volcano.id);
    let mut all = query(&lib.user, "wind boat ocean");
    all.scope = all_projects();
    let hits = search(&mut app.client, all).await.unwrap();
    assert_eq!(documents_of(&hits)[0], lib.sailing.id);
    assert!(!documents_of(&hits).contains(&lib.theirs.id));
}

#[tokio::test]
async fn without_an_embedder_documents_fail_and_search_is_by_keyword() {
    // Documents ingested by a service with an embedder...
    let mut app = spawn_app_with(Scripted::serving(), |_| {}).await;
    let lib = library(&mut app.client).await;
    let config = harness::config(&app.db);
    let db = app.stop().await;
    // ...are still found by keyword by one without (whose model is another).
    let mut app = spawn_on(db, harness::supplied(DIMENSIONS), &config).await;
    let hits = search(&mut app.client, query(&lib.user, "lava eruption"))
        .await
        .unwrap();
    assert_eq!(documents_of(&hits)[0], lib.volcano.id);
    assert!(
        hits.iter().all(|h| h.semantic == 0.0 && h.keyword > 0.0),
        "{hits:?}"
    );
    assert!(
        search(&mut app.client, query(&lib.user, "zeppelin"))
            .await
            .unwrap()
            .is_empty()
    );

    // A new document cannot be embedded: it fails and says why.
    let document = upload_text(&mut app.client, &lib.user, "new.txt", "some new text").await;
    let failed = wait_failed(&mut app.client, &document.id).await;
    assert!(
        failed.error.contains("need an embedder"),
        "{}",
        failed.error
    );
    assert_eq!(stored_chunks(&app.db, &document.id).await.0, 0);
    // A failed document is not searched.
    let in_it = in_document(&lib.user, "new text", &document.id);
    assert_eq!(
        search(&mut app.client, in_it).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
}

// ---------------------------------------------------------------------------
// Failures, deletion, restarts, replicas

#[tokio::test]
async fn an_embedder_that_cannot_read_a_document_fails_it() {
    let embedder = Scripted::new(0, Then::Fail);
    let mut app = spawn_app_with(embedder, |_| {}).await;
    let user = Uuid::now_v7().to_string();
    let document = upload_text(&mut app.client, &user, "a.txt", "hello").await;
    let failed = wait_failed(&mut app.client, &document.id).await;
    assert!(
        failed.error.contains("the test model cannot read this"),
        "{}",
        failed.error
    );
    assert_eq!(app.count("chunks").await, 0);
}

#[tokio::test]
async fn an_embedder_outage_is_waited_out() {
    let embedder = Scripted::new(1, Then::Unavailable(1));
    let mut app = spawn_app_with(embedder.clone(), |_| {}).await;
    let user = Uuid::now_v7().to_string();
    // 20 chunks: the first batch goes in, the second meets the outage, and
    // the retry stores the rest.
    let document = upload_text(&mut app.client, &user, "a.txt", &long_text("x", 20)).await;
    let done = wait_completed(&mut app.client, &document.id).await;
    assert_eq!(done.chunk_count, 20);
    assert_every_chunk_once(&app.db, &done).await;
    assert_eq!(embedder.embedded(), 20, "nothing embedded twice");
}

#[tokio::test]
async fn an_embedder_that_stays_down_fails_the_document_at_its_last_attempt() {
    // One batch goes in, then the endpoint is down for good.
    let embedder = Scripted::new(1, Then::Unavailable(usize::MAX));
    let mut app = spawn_app_with(embedder, |_| {}).await;
    let user = Uuid::now_v7().to_string();
    let document = upload_text(&mut app.client, &user, "a.txt", &long_text("x", 20)).await;
    wait_until(&mut app.client, &document.id, "a first batch", |d| {
        d.chunks_done > 0
    })
    .await;
    // Once the outage has released the document, every attempt but the last
    // is spent here rather than waited out (the delays double).
    let id = Uuid::parse_str(&document.id).unwrap();
    let mut conn = app.db.admin_connection().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while sqlx::query(
        "UPDATE memory.documents SET attempts = $2 - 1, lease_until = NULL
         WHERE id = $1 AND lease_owner IS NULL",
    )
    .bind(id)
    .bind(MAX_ATTEMPTS)
    .execute(&mut conn)
    .await
    .unwrap()
    .rows_affected()
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outage never released the document"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let failed = wait_failed(&mut app.client, &document.id).await;
    assert!(
        failed
            .error
            .contains(&format!("gave up after {MAX_ATTEMPTS} attempts")),
        "{}",
        failed.error
    );
    assert!(failed.error.contains("503 from the test endpoint"));
    // What was stored is deleted: a failed document is never searched.
    assert_eq!(failed.chunks_done, 0);
    assert_eq!(stored_chunks(&app.db, &document.id).await.0, 0);
}

#[tokio::test]
async fn deleting_a_document_mid_ingestion_stops_its_worker_cleanly() {
    // One batch goes through, then the embedder blocks until opened.
    let embedder = Scripted::new(1, Then::Block);
    let mut app = spawn_app_with(embedder.clone(), |_| {}).await;
    let user = Uuid::now_v7().to_string();
    let document = upload_text(&mut app.client, &user, "a.txt", &long_text("x", 40)).await;
    let midway = wait_until(&mut app.client, &document.id, "a first batch", |d| {
        d.chunks_done > 0
    })
    .await;
    assert_eq!(status_of(&midway), pb::DocumentStatus::Processing);
    assert_eq!(midway.chunk_count, 40);
    assert_eq!(midway.chunks_done, 16);
    // Not searchable while it is processed.
    let in_it = in_document(&user, "item", &document.id);
    assert_eq!(
        search(&mut app.client, in_it).await.unwrap_err().code(),
        Code::FailedPrecondition
    );

    delete(&mut app.client, &document.id).await.unwrap();
    embedder.open();
    // The worker drops it at its next batch and goes on with other documents.
    let next = upload_text(&mut app.client, &user, "b.txt", "next document").await;
    let next = wait_completed(&mut app.client, &next.id).await;
    assert_eq!(
        get(&mut app.client, &document.id).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(stored_chunks(&app.db, &document.id).await.0, 0);
    assert_eq!(app.count("chunks").await, i64::from(next.chunk_count));
    assert_eq!(app.count("documents").await, 1);
}

#[tokio::test]
async fn ingestion_resumes_after_a_restart_without_storing_a_chunk_twice() {
    // Two batches (32 chunks) go in, then the embedder hangs: the service is
    // stopped mid-document.
    let hanging = Scripted::new(2, Then::Block);
    let mut app = spawn_app_with(hanging.clone(), |_| {}).await;
    let config = harness::config(&app.db);
    let user = Uuid::now_v7().to_string();
    let text = format!("# Long\n\n{}", long_text("resume", 45));
    let document = upload_text(&mut app.client, &user, "long.md", &text).await;
    let midway = wait_until(&mut app.client, &document.id, "two batches", |d| {
        d.chunks_done >= 32
    })
    .await;
    assert_eq!(status_of(&midway), pb::DocumentStatus::Processing);
    assert_eq!(midway.chunk_count, 45);
    assert_eq!(midway.chunks_done, 32);
    let before = chunk_ids(&app.db).await;
    assert_eq!(before.len(), 32);
    let db = app.stop().await;

    // The restarted service takes the document over and stores only the rest.
    let counting = Scripted::serving();
    let mut app = spawn_on(db, counting.clone(), &config).await;
    let done = wait_completed(&mut app.client, &document.id).await;
    assert_eq!(done.chunk_count, 45);
    assert_every_chunk_once(&app.db, &done).await;
    assert_eq!(app.count("chunks").await, 45);
    assert_eq!(counting.embedded(), 45 - 32);
    assert!(
        before.is_subset(&chunk_ids(&app.db).await),
        "the first run's chunks are kept"
    );
}

#[tokio::test]
async fn a_replica_that_stops_renewing_its_lease_is_taken_over() {
    let lease = Duration::from_secs(1);
    // This replica stores one batch, then hangs holding the lease.
    let hanging = Scripted::new(1, Then::Block);
    let mut app = spawn_app_with(hanging.clone(), |c| c.ingest_lease = lease).await;
    let user = Uuid::now_v7().to_string();
    let document = upload_text(&mut app.client, &user, "a.txt", &long_text("x", 40)).await;
    wait_until(&mut app.client, &document.id, "a first batch", |d| {
        d.chunks_done > 0
    })
    .await;

    // Another replica finds the lease expired and finishes the document.
    let other = replica(&app, Scripted::serving(), lease).await;
    let done = wait_completed(&mut app.client, &document.id).await;
    assert_every_chunk_once(&app.db, &done).await;
    assert_eq!(app.count("chunks").await, 40);

    // The hung replica, woken up, finds it lost the document and writes nothing.
    hanging.open();
    let next = upload_text(&mut app.client, &user, "b.txt", "another").await;
    let next = wait_completed(&mut app.client, &next.id).await;
    assert_eq!(app.count("chunks").await, 40 + i64::from(next.chunk_count));
    assert_every_chunk_once(&app.db, &get(&mut app.client, &document.id).await.unwrap()).await;
    other.stop().await;
}

#[tokio::test]
async fn replicas_share_the_documents_and_store_every_chunk_once() {
    let mut app = spawn_app_with(Scripted::serving(), |_| {}).await;
    let mut second = replica(&app, Scripted::serving(), Duration::from_secs(60)).await;
    let third = replica(&app, Scripted::serving(), Duration::from_secs(60)).await;
    let user = Uuid::now_v7().to_string();
    let mut ids = Vec::new();
    for n in 0..8 {
        let text = long_text(&format!("doc{n}"), 10 + 3 * n);
        let document = upload_text(&mut app.client, &user, &format!("{n}.txt"), &text).await;
        ids.push(document.id);
    }
    let mut total = 0;
    for (n, id) in ids.iter().enumerate() {
        // Any replica answers for any document.
        let client = if n % 2 == 0 {
            &mut app.client
        } else {
            &mut second.client
        };
        let done = wait_completed(client, id).await;
        assert_eq!(done.chunk_count as usize, 10 + 3 * n);
        assert_every_chunk_once(&app.db, &done).await;
        total += i64::from(done.chunk_count);
    }
    assert_eq!(app.count("chunks").await, total);
    second.stop().await;
    third.stop().await;
}

// ---------------------------------------------------------------------------
// The real model

#[tokio::test]
async fn the_local_model_ingests_a_document_and_finds_the_relevant_chunk() {
    let mut app = spawn_app().await;
    let user = Uuid::now_v7().to_string();
    let section = |title: &str, sentences: &[&str]| {
        let paragraph = sentences.join(" ");
        format!("## {title}\n\n{}", [paragraph.as_str(); 8].join("\n\n"))
    };
    let text = format!(
        "# Household guide\n\n{}\n\n{}\n\n{}\n",
        section(
            "Taxes",
            &[
                "File your income tax return before the April deadline.",
                "Keep receipts for deductible expenses and charitable donations.",
                "The revenue agency may audit returns with missing forms.",
            ]
        ),
        section(
            "Dog training",
            &[
                "Reward your puppy with treats when it sits on command.",
                "Short daily training sessions teach dogs to walk on a leash.",
                "Never punish a dog long after it misbehaved.",
            ]
        ),
        section(
            "Baking bread",
            &[
                "Knead the dough until it is smooth and elastic.",
                "Let the yeast rise the loaf in a warm place for an hour.",
                "Bake the bread until the crust sounds hollow when tapped.",
            ]
        ),
    );
    let document = upload_text(&mut app.client, &user, "guide.md", &text).await;
    let done = wait_completed(&mut app.client, &document.id).await;
    assert!(done.chunk_count >= 3, "{done:?}");
    assert_every_chunk_once(&app.db, &done).await;

    for (question, section) in [
        (
            "when do I have to send my tax declaration to the government?",
            "Taxes",
        ),
        ("how can I teach my pet to behave", "Dog training"),
        ("my loaf did not rise, what went wrong", "Baking bread"),
    ] {
        let request = in_document(&user, question, &document.id);
        let hits = search(&mut app.client, request).await.unwrap();
        let top = hits[0].chunk.as_ref().unwrap();
        assert_eq!(
            top.section_title,
            format!("Household guide > {section}"),
            "{question}: {hits:?}"
        );
        assert!(hits[0].semantic > 0.0);
    }
}
