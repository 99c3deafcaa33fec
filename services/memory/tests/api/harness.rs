//! Spawns the memory service on port 0 over a fresh database, and gives tests
//! a real gRPC client with the bearer token. The local model is loaded once
//! per test process and shared by every service the tests start.

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use mesh_memory::{
    Config,
    config::{DEFAULT_EXACT_SEARCH_MAX, DEFAULT_MAX_DOCUMENT_BYTES, EmbedderConfig},
    embed::{Embedder, LocalEmbedder, SuppliedVectors},
};
use mesh_proto::mesh::memory::v1::memory_service_client::MemoryServiceClient;
use mesh_runtime::testing::{Auth, TestDatabase, bearer};
pub use mesh_runtime::testing::{TOKEN, bad_fields, channel, wait_serving};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

pub type Client = MemoryServiceClient<InterceptedService<Channel, Auth>>;

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: Client,
    pub db: TestDatabase,
    /// Ends the service (drain included) when sent or dropped.
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// all-MiniLM-L6-v2 from `MEMORY_MODEL_DIR` (`cargo xtask test` installs it
/// and sets the variable), loaded once.
pub fn local_model() -> Arc<dyn Embedder> {
    static MODEL: OnceLock<Arc<dyn Embedder>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = std::env::var("MEMORY_MODEL_DIR").expect(
                "MEMORY_MODEL_DIR must name the all-MiniLM-L6-v2 directory: run the tests with `cargo xtask test`",
            );
            Arc::new(LocalEmbedder::load(dir.as_ref()).expect("the local model loads"))
        })
        .clone()
}

/// No embedder: vectors come from the test (`dimensions` of them, model `test-model`).
pub fn supplied(dimensions: usize) -> Arc<dyn Embedder> {
    Arc::new(SuppliedVectors {
        model: "test-model".into(),
        dimensions,
    })
}

/// The configuration tests run with: port 0, the test token, the defaults.
pub fn config(db: &TestDatabase) -> Config {
    Config {
        service: db.service_config("memory"),
        // Unused: tests hand the service its embedder (build_with).
        embedder: EmbedderConfig::Supplied {
            model: "unused".into(),
            dimensions: 384,
        },
        max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
        exact_search_max: DEFAULT_EXACT_SEARCH_MAX,
        ingest_lease: Duration::from_secs(60),
    }
}

/// A running memory service with the local model on a fresh database, SERVING.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(local_model(), |_| {}).await
}

/// A running memory service with `embedder` and the configuration `tweak`
/// leaves, on a fresh database, SERVING.
pub async fn spawn_app_with(
    embedder: Arc<dyn Embedder>,
    tweak: impl FnOnce(&mut Config),
) -> TestApp {
    let db = TestDatabase::create().await;
    let mut config = config(&db);
    tweak(&mut config);
    spawn_on(db, embedder, &config).await
}

/// A running memory service over `db` (which may already hold data), SERVING.
pub async fn spawn_on(db: TestDatabase, embedder: Arc<dyn Embedder>, config: &Config) -> TestApp {
    let app = mesh_memory::build_with(config, embedder)
        .await
        .expect("build");
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let channel = channel(addr).await;
    wait_serving(channel.clone()).await;
    TestApp {
        addr,
        client: client(channel),
        db,
        stop: Some(stop),
        server,
    }
}

/// An authenticated client over `channel`.
pub fn client(channel: Channel) -> Client {
    MemoryServiceClient::with_interceptor(channel, bearer as Auth)
}

impl TestApp {
    /// Stops the service (drain included) and hands back its database.
    pub async fn stop(mut self) -> TestDatabase {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server
            .await
            .expect("server task")
            .expect("server stopped cleanly");
        self.db
    }

    /// Rows in `memory.<table>` right now, counted as the superuser.
    pub async fn count(&self, table: &str) -> i64 {
        self.db.count("memory", table).await
    }
}

/// A deterministic bag-of-words embedder for tests that need *an* embedder
/// but not a real model: each word adds to one of `dimensions` buckets, so
/// texts sharing words are close. Counts its calls.
pub struct WordsEmbedder {
    pub model: String,
    pub dimensions: usize,
    pub calls: std::sync::atomic::AtomicUsize,
}

impl WordsEmbedder {
    pub fn new(model: &str, dimensions: usize) -> Arc<Self> {
        Arc::new(Self {
            model: model.into(),
            dimensions,
            calls: Default::default(),
        })
    }

    /// The vector it gives `text`.
    pub fn vector(&self, text: &str) -> Vec<f32> {
        let mut vector = vec![0.0f32; self.dimensions];
        for word in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
        {
            let word = word.to_lowercase();
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
            for byte in word.bytes() {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
            vector[(hash % self.dimensions as u64) as usize] += 1.0;
        }
        if vector.iter().all(|v| *v == 0.0) {
            vector[0] = 1.0;
        }
        mesh_memory::embed::normalize(&mut vector);
        vector
    }
}

#[tonic::async_trait]
impl Embedder for WordsEmbedder {
    fn model(&self) -> &str {
        &self.model
    }

    fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn count_tokens(&self, text: &str) -> usize {
        text.split_whitespace().count()
    }

    async fn embed(
        &self,
        texts: &[String],
    ) -> Result<Vec<Vec<f32>>, mesh_memory::embed::EmbedError> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(texts.iter().map(|text| self.vector(text)).collect())
    }
}

/// The description of the violation of `field` in an INVALID_ARGUMENT.
pub fn violation(status: &tonic::Status, field: &str) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .and_then(|bad| {
            bad.field_violations
                .into_iter()
                .find(|v| v.field == field)
                .map(|v| v.description)
        })
        .unwrap_or_else(|| panic!("no violation of {field} in {status:?}"))
}
