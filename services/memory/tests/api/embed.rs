//! The embedders on their own: the real all-MiniLM-L6-v2 (from
//! MEMORY_MODEL_DIR), and the OpenAI-compatible client against a local fake
//! endpoint (axum on 127.0.0.1:0) speaking the real wire format.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use mesh_memory::{
    config::OpenAiConfig,
    embed::{EmbedError, Embedder, LocalEmbedder, OpenAiEmbedder},
};
use serde_json::{Value, json};

use crate::harness::local_model;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn assert_close(a: &[f32], b: &[f32], tolerance: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= tolerance, "{what}: differ by {worst}");
}

// ---- the local model ----

#[tokio::test]
async fn local_vectors_put_related_texts_closer_than_unrelated_ones() {
    let model = local_model();
    assert_eq!(model.model(), "sentence-transformers/all-MiniLM-L6-v2");
    assert_eq!(model.dimensions(), 384);
    // (text, related, unrelated)
    let triples = [
        ("I am allergic to peanuts", "food allergy", "my car is red"),
        (
            "My daughter turns seven on March 3rd",
            "the birthday of my child",
            "the bus was late this morning",
        ),
        (
            "I work night shifts as a nurse at the hospital",
            "what is my job?",
            "I prefer my coffee without sugar",
        ),
        (
            "Me encanta bailar salsa los viernes",
            "me gusta bailar",
            "the quarterly tax report is due",
        ),
    ];
    let all: Vec<String> = triples
        .iter()
        .flat_map(|(a, b, c)| [*a, *b, *c])
        .map(String::from)
        .collect();
    let vectors = model.embed(&all).await.expect("embed");
    assert_eq!(vectors.len(), all.len());
    for vector in &vectors {
        assert_eq!(vector.len(), 384);
        let norm = dot(vector, vector).sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    for (i, (text, related, unrelated)) in triples.iter().enumerate() {
        let [a, b, c] = [&vectors[3 * i], &vectors[3 * i + 1], &vectors[3 * i + 2]];
        let (near, far) = (dot(a, b), dot(a, c));
        assert!(
            near > far,
            "{text:?}: {related:?} at {near} is not closer than {unrelated:?} at {far}"
        );
    }
}

#[tokio::test]
async fn local_batches_match_one_by_one_in_the_callers_order() {
    let model = local_model();
    // More than one internal batch, lengths all over the place (the model
    // sorts by length inside), a duplicate, and an empty text.
    let mut all: Vec<String> = (0..40)
        .map(|i| {
            let words = (i * 7) % 23 + 1;
            let mut text = format!("note {i}:");
            for w in 0..words {
                text.push_str(&format!(" word{}", (i + w) % 11));
            }
            text
        })
        .collect();
    all.push(all[3].clone());
    all.push(String::new());

    let together = model.embed(&all).await.expect("batch");
    assert_eq!(together.len(), all.len());
    for (i, text) in all.iter().enumerate() {
        let alone = model.embed(std::slice::from_ref(text)).await.expect("one");
        assert_eq!(alone.len(), 1);
        assert_close(&together[i], &alone[0], 1e-5, &format!("text {i}"));
    }
    // The same text gives the same vector, in one call and across calls.
    assert_close(&together[3], &together[40], 1e-6, "duplicate in one batch");
    let again = model.embed(&all[..1]).await.expect("again");
    let once_more = model.embed(&all[..1]).await.expect("once more");
    assert_eq!(again, once_more);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_callers_at_once_each_get_their_own_vectors() {
    let model = local_model();
    let calls: Vec<Vec<String>> = (0..4)
        .map(|c| {
            (0..(10 + 15 * c))
                .map(|i| format!("caller {c} asks question {i} about the weather"))
                .collect()
        })
        .collect();
    let tasks: Vec<_> = calls
        .iter()
        .cloned()
        .map(|texts| {
            let model = model.clone();
            tokio::spawn(async move { model.embed(&texts).await })
        })
        .collect();
    for (texts, task) in calls.iter().zip(tasks) {
        let at_once = task.await.expect("task").expect("embed");
        let alone = model.embed(texts).await.expect("embed alone");
        assert_eq!(at_once.len(), texts.len());
        for (i, (a, b)) in at_once.iter().zip(&alone).enumerate() {
            assert_close(a, b, 1e-5, &format!("{:?}", texts[i]));
        }
    }
}

#[tokio::test]
async fn local_embeds_nothing_for_no_texts() {
    assert!(local_model().embed(&[]).await.expect("empty").is_empty());
}

#[tokio::test]
async fn local_truncates_long_texts_to_what_the_model_reads() {
    let model = local_model();
    // ~300 words of one token each: past the model's limit. Whatever follows
    // is cut off, so both texts give the same vector.
    let long: String = (0..300).map(|i| format!("w{} ", i % 10)).collect();
    let longer = format!("{long} and then a tail about something else entirely");
    let vectors = model.embed(&[long, longer]).await.expect("embed");
    assert_eq!(vectors[0].len(), 384);
    assert_close(&vectors[0], &vectors[1], 1e-5, "truncated");
}

#[tokio::test]
async fn local_reads_max_tokens_and_no_more() {
    let model = local_model();
    // 256 as sentence-transformers reads the model, less [CLS] and [SEP]:
    // chunks are cut to it.
    assert_eq!(model.max_tokens(), 254);
    let fill = "hello ".repeat(model.max_tokens() - 1);
    let texts = [
        fill.clone(),
        format!("{fill}world"),
        format!("{fill}world and more"),
    ];
    assert_eq!(model.count_tokens(&texts[1]), model.max_tokens());
    let vectors = model.embed(&texts).await.expect("embed");
    // The last token it reads still shapes the vector; those after do not.
    let moved = 1.0 - dot(&vectors[0], &vectors[1]);
    assert!(
        moved > 1e-5,
        "the last token read changed nothing ({moved})"
    );
    assert_close(&vectors[1], &vectors[2], 1e-5, "past max_tokens");
}

#[test]
fn local_counts_tokens_with_its_tokenizer() {
    let model = local_model();
    assert_eq!(model.count_tokens("hello world"), 2);
    assert_eq!(model.count_tokens(""), 0);
    // WordPiece splits words it does not know.
    assert!(model.count_tokens("antidisestablishmentarianism") > 1);
    // Counting is not truncated: chunking needs the whole length.
    let long = "hello ".repeat(1000);
    assert_eq!(model.count_tokens(&long), 1000);
}

#[test]
fn a_missing_model_file_is_named() {
    let dir = std::env::temp_dir().join(format!("no-model-{}", uuid::Uuid::new_v4()));
    let error = LocalEmbedder::load(&dir)
        .err()
        .expect("no model there")
        .to_string();
    assert!(error.contains("model.safetensors"), "{error}");
}

// ---- the OpenAI-compatible endpoint ----

const KEY: &str = "sk-test-key";
const MODEL: &str = "test-embedding-model";
const DIMENSIONS: usize = 8;

/// What the fake answers to one request.
#[derive(Clone, Debug)]
enum Reply {
    /// 200 with one vector per input (see `vector_for`), listed in reverse.
    Vectors,
    /// 200 with vectors of this many dimensions.
    WrongDimensions(usize),
    /// This status with an OpenAI error body, and `Retry-After: 0` on a 429.
    Error(u16, &'static str),
}

/// One request the fake received.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    authorization: Option<String>,
    body: Value,
}

#[derive(Default)]
struct Shared {
    script: Mutex<VecDeque<Reply>>,
    /// After the script runs out (None: `Reply::Vectors`).
    then: Mutex<Option<Reply>>,
    received: Mutex<Vec<Received>>,
}

struct FakeEndpoint {
    base: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeEndpoint {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeEndpoint {
    async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let router = Router::new().fallback(answer).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self {
            base: format!("http://{addr}"),
            shared,
            server,
        }
    }

    /// Answers the next requests with `replies`, then `then` forever.
    fn script(&self, replies: impl IntoIterator<Item = Reply>, then: Option<Reply>) {
        self.shared.script.lock().unwrap().extend(replies);
        *self.shared.then.lock().unwrap() = then;
    }

    fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    fn embedder(&self, tweak: impl FnOnce(&mut OpenAiConfig)) -> OpenAiEmbedder {
        let mut config = config(&self.base);
        tweak(&mut config);
        OpenAiEmbedder::new(config).expect("embedder")
    }
}

/// The client's configuration for an endpoint at `api_base`.
fn config(api_base: &str) -> OpenAiConfig {
    OpenAiConfig {
        api_base: api_base.into(),
        api_key: Some(KEY.into()),
        model: MODEL.into(),
        dimensions: DIMENSIONS,
        batch_size: 64,
        timeout: Duration::from_secs(10),
        max_attempts: 3,
        retry_backoff: Duration::from_millis(1),
    }
}

/// The vector the fake makes for `text` ("t<k>"): 3.0 at position k (mod the
/// dimensions) and 4.0 at the next, so its unit vector is 0.6 and 0.8 there.
fn vector_for(text: &str, dimensions: usize) -> Vec<f32> {
    let k: usize = text.trim_start_matches('t').parse().unwrap_or(0);
    let mut vector = vec![0.0; dimensions];
    vector[k % dimensions] = 3.0;
    vector[(k + 1) % dimensions] = 4.0;
    vector
}

async fn answer(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    shared.received.lock().unwrap().push(Received {
        path: uri.path().to_owned(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        body: body.clone(),
    });
    let next = shared.script.lock().unwrap().pop_front();
    let reply = next
        .or_else(|| shared.then.lock().unwrap().clone())
        .unwrap_or(Reply::Vectors);
    let inputs: Vec<String> = body["input"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| item.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default();
    let vectors = |dimensions: usize| {
        // Highest index first: clients must order by `index`.
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .rev()
            .map(|(index, text)| {
                json!({"object": "embedding", "index": index, "embedding": vector_for(text, dimensions)})
            })
            .collect();
        Json(json!({
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": inputs.len(), "total_tokens": inputs.len()},
        }))
        .into_response()
    };
    match reply {
        Reply::Vectors => vectors(body["dimensions"].as_u64().unwrap_or(0) as usize),
        Reply::WrongDimensions(dimensions) => vectors(dimensions),
        Reply::Error(status, message) => {
            let status = StatusCode::from_u16(status).unwrap();
            let error = json!({"error": {
                "message": message,
                "type": "invalid_request_error",
                "param": null,
                "code": null,
            }});
            let mut response = (status, Json(error)).into_response();
            if status == StatusCode::TOO_MANY_REQUESTS {
                response
                    .headers_mut()
                    .insert("retry-after", "0".parse().unwrap());
            }
            response
        }
    }
}

fn numbered(n: usize) -> Vec<String> {
    (0..n).map(|k| format!("t{k}")).collect()
}

#[tokio::test]
async fn openai_speaks_the_wire_format_and_orders_by_index() {
    let fake = FakeEndpoint::start().await;
    let embedder = fake.embedder(|_| {});
    assert_eq!(embedder.model(), MODEL);
    assert_eq!(embedder.dimensions(), DIMENSIONS);

    let vectors = embedder.embed(&numbered(3)).await.expect("embed");
    assert_eq!(vectors.len(), 3);
    for (k, vector) in vectors.iter().enumerate() {
        assert_eq!(vector.len(), DIMENSIONS);
        assert!((vector[k] - 0.6).abs() < 1e-6, "vector {k}: {vector:?}");
        assert!((vector[k + 1] - 0.8).abs() < 1e-6, "vector {k}: {vector:?}");
    }

    let received = fake.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "/v1/embeddings");
    assert_eq!(
        received[0].authorization.as_deref(),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(
        received[0].body,
        json!({"model": MODEL, "input": ["t0", "t1", "t2"], "dimensions": DIMENSIONS})
    );
}

#[tokio::test]
async fn openai_sends_no_authorization_without_a_key_and_nothing_for_no_texts() {
    let fake = FakeEndpoint::start().await;
    let embedder = fake.embedder(|config| {
        config.api_key = None;
        config.api_base.push('/');
    });
    assert!(embedder.embed(&[]).await.expect("empty").is_empty());
    assert!(fake.received().is_empty());

    embedder.embed(&numbered(1)).await.expect("embed");
    let received = fake.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "/v1/embeddings");
    assert_eq!(received[0].authorization, None);
}

#[tokio::test]
async fn openai_sends_batches_of_batch_size() {
    let fake = FakeEndpoint::start().await;
    let embedder = fake.embedder(|config| config.batch_size = 2);
    let vectors = embedder.embed(&numbered(5)).await.expect("embed");
    assert_eq!(vectors.len(), 5);
    for (k, vector) in vectors.iter().enumerate() {
        assert!((vector[k] - 0.6).abs() < 1e-6, "vector {k}: {vector:?}");
    }
    let inputs: Vec<Value> = fake
        .received()
        .into_iter()
        .map(|r| r.body["input"].clone())
        .collect();
    assert_eq!(
        inputs,
        [json!(["t0", "t1"]), json!(["t2", "t3"]), json!(["t4"])]
    );
}

#[tokio::test]
async fn openai_retries_a_rate_limit_then_succeeds() {
    let fake = FakeEndpoint::start().await;
    fake.script(
        [
            Reply::Error(429, "Rate limit reached"),
            Reply::Error(503, "overloaded"),
        ],
        None,
    );
    let embedder = fake.embedder(|_| {});
    let vectors = embedder
        .embed(&numbered(2))
        .await
        .expect("embed after retries");
    assert_eq!(vectors.len(), 2);
    let received = fake.received();
    assert_eq!(received.len(), 3);
    // Every attempt is the same request.
    assert!(received.iter().all(|r| r.body == received[0].body));
}

#[tokio::test]
async fn openai_is_unavailable_when_the_endpoint_keeps_failing() {
    let fake = FakeEndpoint::start().await;
    fake.script([], Some(Reply::Error(500, "The server had an error")));
    let embedder = fake.embedder(|config| config.max_attempts = 4);
    let error = embedder.embed(&numbered(1)).await.expect_err("fails");
    let EmbedError::Unavailable(message) = &error else {
        panic!("not Unavailable: {error:?}");
    };
    assert!(message.contains("The server had an error"), "{message}");
    assert_eq!(fake.received().len(), 4);
}

#[tokio::test]
async fn openai_is_unavailable_when_nothing_listens() {
    // A port that was free a moment ago: the connection is refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let embedder = OpenAiEmbedder::new(OpenAiConfig {
        max_attempts: 2,
        ..config(&format!("http://{addr}"))
    })
    .expect("embedder");
    let error = embedder.embed(&numbered(1)).await.expect_err("fails");
    assert!(matches!(error, EmbedError::Unavailable(_)), "{error:?}");
}

#[tokio::test]
async fn openai_fails_at_once_on_a_refusal_with_the_providers_message() {
    let fake = FakeEndpoint::start().await;
    fake.script(
        [Reply::Error(
            400,
            "This model's maximum context length is 8192 tokens",
        )],
        None,
    );
    let embedder = fake.embedder(|_| {});
    let error = embedder.embed(&numbered(1)).await.expect_err("fails");
    let EmbedError::Failed(error) = &error else {
        panic!("not Failed: {error:?}");
    };
    let message = format!("{error:#}");
    assert!(
        message.contains("maximum context length is 8192 tokens"),
        "{message}"
    );
    assert!(message.contains("400"), "{message}");
    assert!(!message.contains(KEY), "{message}");
    assert_eq!(fake.received().len(), 1, "a refusal is not retried");
}

#[tokio::test]
async fn openai_fails_on_vectors_of_the_wrong_length() {
    let fake = FakeEndpoint::start().await;
    fake.script([Reply::WrongDimensions(DIMENSIONS + 1)], None);
    let embedder = fake.embedder(|_| {});
    let error = embedder.embed(&numbered(2)).await.expect_err("fails");
    let EmbedError::Failed(error) = &error else {
        panic!("not Failed: {error:?}");
    };
    let message = format!("{error:#}");
    assert!(message.contains(MODEL), "{message}");
    assert!(message.contains(&(DIMENSIONS + 1).to_string()), "{message}");
    assert_eq!(fake.received().len(), 1);
}
