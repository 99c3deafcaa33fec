//! `cargo xtask bench memory`: the memory service with its local model
//! (all-MiniLM-L6-v2 on the CPU) over 100,000 memories of 1,000 users and
//! 50,000 of one more user: search latency on the exact path (a user with
//! few memories) and on the approximate one (HNSW, the user with many),
//! recall@10 of the approximate path against `exact: true`, the model's
//! embedding throughput, the ingestion of a large Markdown document, the
//! bulk load and index build, and the service's peak memory.
//!
//! The model is too slow on two cores to embed 150,000 texts for a bench, so
//! the memories are built from a vocabulary: a few thousand distinct
//! sentences embedded by the service itself (CreateMemory without a vector,
//! which is also the embedding throughput measurement). Each bench memory is
//! one or two of those sentences, and its vector the normalized mix of
//! theirs plus a little noise: real-model geometry, clustered as real
//! memories are, loaded straight into the table with COPY.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use mesh_proto::mesh::memory::v1::{self as pb, memory_service_client::MemoryServiceClient};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use sqlx::PgConnection;
use tonic::{service::interceptor::InterceptedService, transport::Channel};
use uuid::Uuid;

use super::{
    Auth, Measurement, Options, Roles, Service, bearer, measure, peak_rss, print_measurements,
    run_bench, spread, with_service_cpu,
};
use crate::tools::Paths;

type Client = MemoryServiceClient<InterceptedService<Channel, Auth>>;

/// Searches per workload: every search embeds its query with the model,
/// which takes most of the service's time, so fewer than the other benches.
pub const DEFAULTS: Options = Options {
    requests: 500,
    concurrency: 16,
};

const DATABASE: &str = "mesh_bench_memory";
/// The users with few memories (searched exactly), and how many each has.
const USERS: usize = 1_000;
const PER_USER: usize = 100;
/// The one user with many (searched through the HNSW index).
const BIG_USER_MEMORIES: usize = 50_000;
/// Distinct sentences embedded by the model through the service (a tenth
/// more are embedded as the warm-up of that measurement, and used too).
const VOCABULARY: usize = 2_000;
/// Queries compared between the approximate and the exact path (an exact
/// search of the big user takes seconds of CPU: this is most of the budget).
const RECALL_QUERIES: usize = 100;
/// Hits per search, and the depth of recall@k.
const TOP_K: usize = 10;
/// The generated Markdown document's size (about 67,000 words, some 130
/// pages): ingestion runs at a few KB a second on two cores (the model
/// embeds every chunk), so a larger one would take most of the bench's time.
const DOCUMENT_BYTES: usize = 350_000;
/// The local embedder's model name and dimensions, as stored beside vectors.
const MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";
const DIMENSIONS: usize = 384;
/// The length of the noise added to each mixed vector (before normalizing):
/// enough to set apart memories of the same sentences, small enough to keep
/// them in their sentence's neighbourhood.
const NOISE: f32 = 0.15;
/// The generator's seed: every run loads the same memories.
const SEED: u64 = 0x6d65_6d6f_7279;
/// The service role's maintenance_work_mem for the HNSW build: the graph of
/// 150,000 vectors of 384 dimensions needs about 300 MB, and a build that
/// outgrows its memory goes on on disk, several times slower.
const BUILD_MEMORY: &str = "1GB";
/// How long the HNSW build and the document's ingestion may take.
const INDEX_TIMEOUT: Duration = Duration::from_secs(20 * 60);
const INGEST_TIMEOUT: Duration = Duration::from_secs(20 * 60);

pub async fn run(options: &Options) -> Result<()> {
    run_bench(options, &["memory"], DATABASE, measure_all).await
}

async fn measure_all(paths: &Paths, roles: &Roles, options: Options) -> Result<()> {
    let bench_started = Instant::now();
    let model_dir = crate::tools::model_dir(paths)?;
    let env = vec![
        ("MEMORY_DATABASE_URL", roles.url("memory")?),
        // The load, the index and re-embedding worker, and the ingestion worker.
        (
            "MEMORY_DB_MAX_CONNECTIONS",
            (options.concurrency + 2).to_string(),
        ),
        ("EMBEDDER", "local".to_owned()),
        ("MEMORY_MODEL_DIR", model_dir.to_string_lossy().into_owned()),
    ];
    let mut admin = roles.superuser().await?;

    // 1. The vocabulary, embedded by the service: the embedding throughput.
    let (mut service, client) = start(paths, &env).await?;
    // One request per sentence, warm-up included.
    let embedding_options = Options {
        requests: VOCABULARY,
        ..options
    };
    let sentences = Arc::new(vocabulary(VOCABULARY + embedding_options.warm_up()));
    let scratch = Uuid::now_v7();
    let embedding = with_service_cpu(
        service.child.id(),
        embed_vocabulary(&client, &sentences, scratch, embedding_options),
    )
    .await?;
    // The queries' vectors too (the service embeds them the same way), for
    // the recall of the HNSW index on its own.
    let queries = Arc::new(queries(RECALL_QUERIES));
    let query_user = Uuid::now_v7();
    for query in queries.iter() {
        create(&client, query_user, query).await?;
    }
    let embedding_rss = peak_rss(service.child.id());
    service.stop();
    let vectors = read_vectors(&mut admin, scratch, &sentences).await?;
    let query_vectors = read_vectors(&mut admin, query_user, &queries).await?;

    // 2. The bench's memories, loaded with the service stopped and its HNSW
    // index dropped, so the index is built once over all of them when the
    // service starts again (as after a restore), rather than row by row.
    drop_hnsw_indexes(&mut admin).await?;
    let plan = Plan::new();
    let started = Instant::now();
    let loaded = load(&mut admin, &plan, &sentences, &vectors).await?;
    // What autovacuum would do after such a load: statistics for the planner,
    // hint bits and the visibility map, so the searches do not pay for them.
    sqlx::query("VACUUM (ANALYZE) memory.memories")
        .execute(&mut admin)
        .await?;
    let load_time = started.elapsed();
    println!(
        "xtask: loaded {loaded} memories in {:.1}s",
        load_time.as_secs_f64()
    );
    set_build_memory(&mut admin, Some(BUILD_MEMORY)).await?;
    let started = Instant::now();
    let (mut service, client) = start(paths, &env).await?;
    let index = wait_for_hnsw(&mut admin, &mut service).await?;
    let index_time = started.elapsed();
    set_build_memory(&mut admin, None).await?;
    println!(
        "xtask: the service built {index} in {:.1}s",
        index_time.as_secs_f64()
    );

    // 3. Searches.
    let index_recall = index_recall(&mut admin, plan.big_user, &query_vectors).await?;
    let pid = service.child.id();
    println!(
        "xtask: measuring {} searches per workload, {} in flight",
        options.requests, options.concurrency
    );
    let small =
        with_service_cpu(pid, search_small_users(&client, &plan, &queries, options)).await?;
    let approximate_ids = Arc::new(Mutex::new(HashMap::new()));
    let approximate = with_service_cpu(
        pid,
        search_big_user(&client, &plan, &queries, false, &approximate_ids, options),
    )
    .await?;
    let exact_ids = Arc::new(Mutex::new(HashMap::new()));
    let exact_options = Options {
        requests: RECALL_QUERIES,
        ..options
    };
    let exact = with_service_cpu(
        pid,
        search_big_user(&client, &plan, &queries, true, &exact_ids, exact_options),
    )
    .await?;
    let recall = recall(
        &approximate_ids.lock().expect("not poisoned"),
        &exact_ids.lock().expect("not poisoned"),
    )?;

    // 4. A large document, alone.
    let ingestion = ingest_document(&client, &sentences).await?;
    let service_rss = peak_rss(pid);
    service.stop();

    let texts_per_second = embedding.throughput();
    print_measurements(
        "cargo xtask bench memory",
        &[embedding, small, approximate, exact],
        &[
            format!(
                "{} memories: {USERS} users with {PER_USER} each and one with {BIG_USER_MEMORIES}; each is one or two of {} distinct sentences, its vector the normalized sum of theirs (as the service's model embedded them) plus noise of length {NOISE}",
                plan.total(),
                sentences.len()
            ),
            format!(
                "CreateMemory: without a vector, one sentence each: the service embeds it with all-MiniLM-L6-v2 on the CPU (one forward pass at a time) and stores it, so req/s is the model's texts/s; {} in flight",
                options.concurrency
            ),
            format!(
                "SearchMemories: a text query (embedded by the service) over {} distinct queries, limit {TOP_K}, {} in flight; the exact path scores every memory of a user with at most MEMORY_EXACT_SEARCH_MAX (10000) live memories; above it the HNSW and keyword indexes give candidates and only those are scored (each answer checked for `approximate: true`); `exact: true` makes the big user's search score all 50000",
                queries.len(),
                options.concurrency
            ),
            format!(
                "memory service (release) peak RSS: {embedding_rss} while embedding the vocabulary; {service_rss} through the index build, the searches and the document"
            ),
            format!(
                "the HNSW index is built by the service at start, its role given maintenance_work_mem {BUILD_MEMORY} (ALTER ROLE ... IN DATABASE): with the default 64MB the graph outgrows memory after about 28,000 of these vectors and the rest is built on disk, several times slower"
            ),
            "client, service and Postgres share the machine; Postgres runs with fsync=off and synchronous_commit=off".into(),
        ],
    );
    let chunks_per_second = f64::from(ingestion.chunks) / ingestion.elapsed.as_secs_f64();
    print_figures(&[
        (
            format!(
                "recall@{TOP_K}, approximate against exact: true ({} queries, the user with {BIG_USER_MEMORIES})",
                recall.queries
            ),
            format!(
                "{:.3} mean; worst {:.1} ({:?})",
                recall.mean, recall.worst, queries[recall.worst_query].text
            ),
        ),
        (
            format!(
                "recall@{TOP_K} of the HNSW index alone: nearest by vector, index (ef_search 100, iterative scan) against a scan, same query vectors and user"
            ),
            format!("{index_recall:.3} mean"),
        ),
        (
            "local model, one text per call (CreateMemory above)".into(),
            format!("{texts_per_second:.0} texts/s"),
        ),
        (
            format!(
                "document ingestion: {:.2} MB of Markdown, {} words, {} chunks (each cut to what the model reads), embedded 16 at a time",
                ingestion.bytes as f64 / 1e6,
                ingestion.words,
                ingestion.chunks
            ),
            format!(
                "{:.1} s from UploadDocument to COMPLETED: {chunks_per_second:.1} chunks/s, {:.1} KB/s",
                ingestion.elapsed.as_secs_f64(),
                ingestion.bytes as f64 / 1e3 / ingestion.elapsed.as_secs_f64()
            ),
        ),
        (
            format!("bulk load: {loaded} memories with COPY (binary), then VACUUM (ANALYZE)"),
            format!("{:.1} s", load_time.as_secs_f64()),
        ),
        (
            format!(
                "HNSW build by the service at start ({loaded} × {DIMENSIONS}, cosine, m 16, ef_construction 64, maintenance_work_mem {BUILD_MEMORY}), start to valid index"
            ),
            format!("{:.1} s", index_time.as_secs_f64()),
        ),
    ]);
    println!(
        "xtask: the memory bench ran for {:.0}s after the build",
        bench_started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The figures that are not request rates, as a two-column table.
fn print_figures(rows: &[(String, String)]) {
    println!("\n#### Loading, recall, embedding and ingestion\n");
    println!("| measure | value |");
    println!("|---|---|");
    for (measure, value) in rows {
        println!("| {measure} | {value} |");
    }
    println!();
}

/// The memory service on the bench database, SERVING, with a client.
async fn start(paths: &Paths, env: &[(&str, String)]) -> Result<(Service, Client)> {
    let mut service = Service::start(paths, "memory", env)?;
    let channel = service.wait_serving().await?;
    Ok((
        service,
        MemoryServiceClient::with_interceptor(channel, bearer as Auth)
            // The document is sent in one message.
            .max_encoding_message_size(16 * 1024 * 1024),
    ))
}

// ---------------------------------------------------------------------------
// The vocabulary

/// Sentence templates a user might tell an assistant, each with the kind of
/// memory it makes. `{slot}`s are filled from [`slot`].
#[rustfmt::skip] // One template per line.
const TEMPLATES: &[(&str, &str)] = &[
    ("relationship", "My {relation} {name} lives in {city} and works as a {job}."),
    ("relationship", "My {relation} {name} and I have not talked since {event}."),
    ("relationship", "{name} is my {relation}; we meet for {food} every {day}."),
    ("fact", "I work as a {job} at {company} in {city}."),
    ("fact", "I have a {pet} called {petname} who is {small} years old."),
    ("fact", "I am allergic to {allergen}, so I avoid {food}."),
    ("fact", "I grew up in {city} and moved to {city2} when I was {age}."),
    ("preference", "I really like {food}, especially on {day}s."),
    ("preference", "I prefer {channel} to phone calls, and never before {hour}."),
    ("preference", "I listen to {music} when I work on {project}."),
    ("preference", "I would rather {activity} than watch {show} on weekends."),
    ("goal", "I am training for a {race} in {city} in {month}."),
    ("goal", "I want to learn {skill} before {month}."),
    ("goal", "I am saving {amount} dollars for a trip to {city} in {month}."),
    ("emotion", "I have been feeling {feeling} about {worry} lately."),
    ("emotion", "Talking to {name} about {worry} made me feel {feeling}."),
    ("routine", "Every {day} I go {activity} at {hour}."),
    ("routine", "I take my {medicine} every morning at {hour} with breakfast."),
    ("event", "{name}'s birthday is on {month} {date}, and I want to plan {plan}."),
    ("event", "Last {month} I moved from {city} to {city2} for {reason}."),
    ("event", "I have an appointment with {professional} on {day} at {hour}."),
    ("struggle", "I keep struggling with {struggle}, especially after {event}."),
    ("struggle", "{struggle} gets worse for me when I am {feeling}."),
    ("follow_up", "Ask me how the {appointment} with {name} went on {day}."),
    ("situation", "I have been between jobs since leaving {company} in {month}."),
    ("situation", "I am looking after my {relation} {name}, who has {illness}."),
    ("context", "I am a {job} with {small} years of experience, mostly in {field}."),
    ("pattern", "I sleep badly whenever I drink {drink} after {hour}."),
];

/// Questions about the memories above, filled from the same slots.
const QUERY_TEMPLATES: &[&str] = &[
    "Where does my {relation} live?",
    "What does {name} do for a living?",
    "Who is {name}?",
    "Where do I work?",
    "What is my pet's name?",
    "What am I allergic to?",
    "Where did I grow up?",
    "What food do I like?",
    "How should you contact me?",
    "What music do I like while working?",
    "What do I do on weekends?",
    "What race am I training for?",
    "What do I want to learn this year?",
    "How much have I saved for {city}?",
    "What have I been worried about lately?",
    "What do I do on {day}s?",
    "Which medicine do I take?",
    "When is {name}'s birthday?",
    "Why did I move to {city}?",
    "When is my appointment with the {professional}?",
    "What do I struggle with?",
    "How did the {appointment} go?",
    "Am I working at the moment?",
    "Who am I taking care of?",
    "How many years of experience do I have in {field}?",
    "Why do I sleep badly?",
    "{name} {city}",
    "{food} on {day}",
    "trip to {city} in {month}",
    "feeling {feeling} about {worry}",
];

/// The values of a template slot.
#[rustfmt::skip] // One line per slot reads better than one line per value.
fn slot(name: &str) -> &'static [&'static str] {
    match name {
        "relation" => &["sister", "brother", "mother", "father", "cousin", "aunt", "uncle",
            "grandmother", "best friend", "partner", "daughter", "son", "neighbour", "colleague"],
        "name" => &["Ana", "Carlos", "Lucía", "Mateo", "Valentina", "Santiago", "Camila",
            "Andrés", "Isabella", "Julián", "Sofía", "Diego", "Mariana", "Felipe", "Daniela",
            "Tomás", "Laura", "Sebastián", "Paula", "Nicolás", "Gabriela", "Emilio", "Sara",
            "Joaquín"],
        "city" | "city2" => &["Bogotá", "Medellín", "Cali", "Cartagena", "Barranquilla",
            "Madrid", "Lima", "Mexico City", "Buenos Aires", "Miami", "Santiago de Chile",
            "Quito", "Panama City", "Toronto", "Barcelona", "New York", "Bucaramanga", "Pereira"],
        "job" => &["nurse", "software developer", "teacher", "accountant", "chef", "architect",
            "graphic designer", "lawyer", "sales manager", "electrician", "dentist",
            "journalist", "pharmacist", "taxi driver", "veterinarian", "civil engineer"],
        "company" => &["Bancolombia", "a small bakery", "the city hospital", "Rappi",
            "a law firm", "a public school", "an airline", "a coffee exporter", "a startup",
            "the university", "a call centre", "a construction company"],
        "food" => &["arepas", "sushi", "bandeja paisa", "pizza", "ceviche", "tacos", "ajiaco",
            "pasta carbonara", "empanadas", "ramen", "paella", "vegetarian curry",
            "chocolate cake", "fresh mango"],
        "day" => &["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
        "pet" => &["dog", "cat", "parrot", "rabbit", "turtle", "hamster"],
        "petname" => &["Luna", "Max", "Rocky", "Canela", "Toby", "Nala", "Simón", "Lola", "Coco",
            "Bruno"],
        "small" => &["two", "three", "four", "five", "seven", "nine", "eleven", "twelve"],
        "age" => &["six", "ten", "fourteen", "eighteen", "twenty", "thirty"],
        "allergen" => &["peanuts", "shellfish", "gluten", "lactose", "penicillin", "cat hair",
            "pollen"],
        "channel" => &["voice notes", "short texts", "emails", "WhatsApp messages"],
        "hour" => &["6 am", "7 am", "8 am", "9 am", "noon", "5 pm", "8 pm", "10 pm"],
        "music" => &["salsa", "jazz", "lo-fi beats", "vallenato", "classical piano", "reggaeton",
            "rock from the eighties", "podcasts about history"],
        "project" => &["my thesis", "the quarterly report", "my novel", "the new website",
            "my taxes", "the kitchen renovation"],
        "activity" => &["running", "swimming", "to yoga class", "cycling", "to the gym",
            "hiking", "dancing", "to church", "to the market"],
        "show" => &["football", "series", "the news", "reality shows"],
        "race" => &["marathon", "half marathon", "10k race", "triathlon", "cycling tour"],
        "month" => &["January", "February", "March", "April", "May", "June", "July", "August",
            "September", "October", "November", "December"],
        "date" => &["1", "3", "7", "12", "15", "19", "22", "28", "30"],
        "skill" => &["English", "French", "to play the guitar", "to cook Thai food", "to drive",
            "Python", "photography", "to swim", "accounting"],
        "amount" => &["500", "1,000", "2,500", "3,000", "5,000", "8,000"],
        "feeling" => &["anxious", "hopeful", "tired", "stressed", "excited", "lonely", "proud",
            "sad"],
        "worry" => &["my job interview", "money", "my health", "my mother's surgery", "the move",
            "my exams", "my relationship", "the rent", "my weight"],
        "medicine" => &["blood pressure pills", "vitamins", "thyroid medication", "insulin",
            "antidepressant"],
        "plan" => &["a surprise party", "a dinner", "a weekend trip", "a picnic",
            "a karaoke night"],
        "reason" => &["a new job", "my studies", "family reasons", "a cheaper rent",
            "my partner"],
        "professional" => &["dentist", "psychologist", "cardiologist", "lawyer", "bank adviser",
            "nutritionist"],
        "event" => &["the wedding", "Christmas", "the argument about money", "the funeral",
            "my accident", "the holidays"],
        "struggle" => &["insomnia", "procrastination", "back pain", "anxiety", "smoking", "debt",
            "motivation"],
        "appointment" => &["job interview", "doctor's visit", "first date", "exam", "meeting",
            "audition"],
        "illness" => &["diabetes", "dementia", "a broken hip", "cancer", "the flu"],
        "field" => &["healthcare", "banking", "education", "retail", "logistics", "tourism"],
        "drink" => &["coffee", "black tea", "cola", "wine", "energy drinks"],
        other => panic!("no values for slot {other:?}"),
    }
}

/// `template` with each `{slot}` replaced by one of its values.
fn fill(template: &str, rng: &mut StdRng) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = open + rest[open..].find('}').expect("slots are closed");
        out.push_str(&rest[..open]);
        out.push_str(slot(&rest[open + 1..close]).choose(rng).expect("not empty"));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// A vocabulary sentence and the kind of memory it makes.
#[derive(Clone)]
struct Sentence {
    text: String,
    kind: &'static str,
}

/// `n` distinct sentences, the same on every run.
fn vocabulary(n: usize) -> Vec<Sentence> {
    distinct(n, SEED, |rng| {
        let (kind, template) = TEMPLATES.choose(rng).expect("not empty");
        Sentence {
            text: fill(template, rng),
            kind,
        }
    })
}

/// `n` distinct queries, the same on every run; stored as `context`
/// memories when the service embeds them (for the index's recall).
fn queries(n: usize) -> Vec<Sentence> {
    distinct(n, SEED + 1, |rng| Sentence {
        text: fill(QUERY_TEMPLATES.choose(rng).expect("not empty"), rng),
        kind: "context",
    })
}

/// The first `n` distinct sentences `make` draws from a generator of `seed`.
fn distinct(n: usize, seed: u64, make: impl Fn(&mut StdRng) -> Sentence) -> Vec<Sentence> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = HashSet::new();
    let mut sentences = Vec::with_capacity(n);
    while sentences.len() < n {
        let sentence = make(&mut rng);
        if seen.insert(sentence.text.clone()) {
            sentences.push(sentence);
        }
    }
    sentences
}

/// Creates one memory per sentence for `user` without a vector, so the
/// service embeds each: `options`' measured requests and warm-up together
/// cover the vocabulary.
async fn embed_vocabulary(
    client: &Client,
    sentences: &Arc<Vec<Sentence>>,
    user: Uuid,
    options: Options,
) -> Result<Measurement> {
    let (client, sentences) = (client.clone(), sentences.clone());
    measure(
        "CreateMemory, service embeds the text (local model)",
        "gRPC",
        options,
        move |i| {
            let (client, sentences) = (client.clone(), sentences.clone());
            async move { create(&client, user, &sentences[i]).await }
        },
    )
    .await
}

/// Creates a memory of `sentence` for `user` without a vector: the service
/// embeds it.
async fn create(client: &Client, user: Uuid, sentence: &Sentence) -> Result<()> {
    let request = pb::CreateMemoryRequest {
        memory: Some(pb::Memory {
            user_id: user.to_string(),
            kind: kind_number(sentence.kind),
            content: sentence.text.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let memory = client
        .clone()
        .create_memory(request)
        .await?
        .into_inner()
        .memory;
    if memory.is_none_or(|m| m.embedding_model != MODEL) {
        bail!("the memory was stored without a vector of {MODEL}");
    }
    Ok(())
}

/// The wire number of a stored kind (`follow_up`: MEMORY_KIND_FOLLOW_UP).
fn kind_number(kind: &str) -> i32 {
    pb::MemoryKind::from_str_name(&format!("MEMORY_KIND_{}", kind.to_ascii_uppercase()))
        .unwrap_or_else(|| panic!("unknown kind {kind}")) as i32
}

/// The vectors the service stored for `user`'s memories of `sentences`, in
/// that order; then those scratch memories are removed.
async fn read_vectors(
    admin: &mut PgConnection,
    user: Uuid,
    sentences: &[Sentence],
) -> Result<Vec<Vec<f32>>> {
    let rows: Vec<(String, Vec<f32>)> = sqlx::query_as(
        "SELECT content, embedding::real[] FROM memory.memories
         WHERE user_id = $1 AND embedding_model = $2",
    )
    .bind(user)
    .bind(MODEL)
    .fetch_all(&mut *admin)
    .await?;
    let mut by_text: HashMap<String, Vec<f32>> = rows.into_iter().collect();
    let vectors = sentences
        .iter()
        .map(|Sentence { text, .. }| {
            by_text
                .remove(text)
                .filter(|vector| vector.len() == DIMENSIONS)
                .with_context(|| format!("no {DIMENSIONS}-dimension vector stored for {text:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    sqlx::query("DELETE FROM memory.memories WHERE user_id = $1")
        .bind(user)
        .execute(&mut *admin)
        .await?;
    Ok(vectors)
}

// ---------------------------------------------------------------------------
// The load

/// Who has how many memories.
struct Plan {
    small_users: Vec<Uuid>,
    big_user: Uuid,
}

impl Plan {
    fn new() -> Self {
        Self {
            small_users: (0..USERS).map(|_| Uuid::now_v7()).collect(),
            big_user: Uuid::now_v7(),
        }
    }

    fn total(&self) -> usize {
        self.small_users.len() * PER_USER + BIG_USER_MEMORIES
    }

    /// Each user with their number of memories.
    fn users(&self) -> impl Iterator<Item = (Uuid, usize)> + '_ {
        self.small_users
            .iter()
            .map(|user| (*user, PER_USER))
            .chain(std::iter::once((self.big_user, BIG_USER_MEMORIES)))
    }
}

/// Drops the memories' HNSW indexes (the service creates its model's at start).
async fn drop_hnsw_indexes(admin: &mut PgConnection) -> Result<()> {
    let names: Vec<String> = sqlx::query_scalar(
        r"SELECT relname::text FROM pg_class
          WHERE relnamespace = 'memory'::regnamespace AND relkind = 'i'
            AND relname LIKE 'memories\_hnsw\_%'",
    )
    .fetch_all(&mut *admin)
    .await?;
    for name in names {
        // The name was just read from the catalog.
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP INDEX memory.\"{name}\"")))
            .execute(&mut *admin)
            .await?;
    }
    Ok(())
}

/// Writes every memory of `plan` with binary COPY; returns how many.
async fn load(
    admin: &mut PgConnection,
    plan: &Plan,
    sentences: &[Sentence],
    vectors: &[Vec<f32>],
) -> Result<u64> {
    /// Bytes sent per COPY message.
    const SEND_AT: usize = 4 << 20;
    let mut rng = StdRng::seed_from_u64(SEED + 2);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let mut copy = admin
        .copy_in_raw(
            "COPY memory.memories (id, user_id, kind, content, importance, embedding,
                 embedding_model, create_time, update_time)
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    let mut buffer = Vec::with_capacity(SEND_AT + 4096);
    buffer.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buffer.extend_from_slice(&0i32.to_be_bytes()); // flags
    buffer.extend_from_slice(&0i32.to_be_bytes()); // header extension
    // Uniform noise of about NOISE in length: each coordinate's variance,
    // half_width^2 / 3, is NOISE^2 / DIMENSIONS.
    let half_width = NOISE * (3.0 / DIMENSIONS as f32).sqrt();
    let mut vector = vec![0f32; DIMENSIONS];
    for (user, count) in plan.users() {
        for _ in 0..count {
            // One sentence, or two (a memory that says two things).
            let first = rng.random_range(0..sentences.len());
            let second = rng
                .random_bool(0.6)
                .then(|| rng.random_range(0..sentences.len()));
            let mut content = sentences[first].text.clone();
            vector.copy_from_slice(&vectors[first]);
            if let Some(second) = second {
                content.push(' ');
                content.push_str(&sentences[second].text);
                let weight = rng.random_range(0.5..1.0);
                for (x, y) in vector.iter_mut().zip(&vectors[second]) {
                    *x += weight * y;
                }
            }
            normalize(&mut vector);
            for x in &mut vector {
                *x += rng.random_range(-half_width..half_width);
            }
            normalize(&mut vector);
            // Changed up to a year ago, created up to two months before that.
            let age = Duration::from_secs(rng.random_range(0..365 * 86_400));
            let updated = now.saturating_sub(age);
            let created =
                updated.saturating_sub(Duration::from_secs(rng.random_range(0..60 * 86_400)));
            let id = Uuid::new_v7(uuid::Timestamp::from_unix(
                uuid::NoContext,
                created.as_secs(),
                created.subsec_nanos(),
            ));
            let importance: f32 = rng.random_range(0.1..0.9);
            copy_row(
                &mut buffer,
                &CopyRow {
                    id,
                    user,
                    kind: sentences[first].kind,
                    content: &content,
                    importance,
                    vector: &vector,
                    created,
                    updated,
                },
            );
            if buffer.len() >= SEND_AT {
                copy.send(std::mem::take(&mut buffer)).await?;
                buffer.reserve(SEND_AT + 4096);
            }
        }
    }
    buffer.extend_from_slice(&(-1i16).to_be_bytes());
    copy.send(buffer).await?;
    Ok(copy.finish().await?)
}

/// One memory as COPY's binary format spells it.
struct CopyRow<'a> {
    id: Uuid,
    user: Uuid,
    kind: &'static str,
    content: &'a str,
    importance: f32,
    vector: &'a [f32],
    created: Duration,
    updated: Duration,
}

/// Appends `row`: the field count, then each field's length and bytes
/// (uuid: 16 bytes; text: UTF-8; real: IEEE 754 big-endian; timestamptz:
/// microseconds since 2000-01-01 UTC; pgvector's vector: dimensions as int16,
/// an unused int16, then the floats).
fn copy_row(buffer: &mut Vec<u8>, row: &CopyRow<'_>) {
    fn field(buffer: &mut Vec<u8>, bytes: &[u8]) {
        buffer.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        buffer.extend_from_slice(bytes);
    }
    fn timestamp(since_unix_epoch: Duration) -> [u8; 8] {
        const POSTGRES_EPOCH: u64 = 946_684_800;
        let micros = since_unix_epoch.as_micros() as i64 - (POSTGRES_EPOCH as i64) * 1_000_000;
        micros.to_be_bytes()
    }
    buffer.extend_from_slice(&9i16.to_be_bytes());
    field(buffer, row.id.as_bytes());
    field(buffer, row.user.as_bytes());
    field(buffer, row.kind.as_bytes());
    field(buffer, row.content.as_bytes());
    field(buffer, &row.importance.to_be_bytes());
    buffer.extend_from_slice(&((4 + 4 * row.vector.len()) as i32).to_be_bytes());
    buffer.extend_from_slice(&(row.vector.len() as i16).to_be_bytes());
    buffer.extend_from_slice(&0i16.to_be_bytes());
    for x in row.vector {
        buffer.extend_from_slice(&x.to_be_bytes());
    }
    field(buffer, MODEL.as_bytes());
    field(buffer, &timestamp(row.created));
    field(buffer, &timestamp(row.updated));
}

fn normalize(vector: &mut [f32]) {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Sets (or with None resets) maintenance_work_mem for the service's
/// sessions in the bench database.
async fn set_build_memory(admin: &mut PgConnection, memory: Option<&str>) -> Result<()> {
    let setting = match memory {
        Some(memory) => format!("SET maintenance_work_mem = '{memory}'"),
        None => "RESET maintenance_work_mem".to_owned(),
    };
    // The value is a constant of this file.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER ROLE mesh_memory IN DATABASE {DATABASE} {setting}"
    )))
    .execute(admin)
    .await?;
    Ok(())
}

/// Waits until the service's HNSW index on the memories is built and valid,
/// printing the build's progress; its name.
async fn wait_for_hnsw(admin: &mut PgConnection, service: &mut Service) -> Result<String> {
    let started = Instant::now();
    let mut reported = Instant::now();
    loop {
        if let Some(status) = service.child.try_wait()? {
            bail!("the memory service exited while building its index ({status})");
        }
        let valid: Option<String> = sqlx::query_scalar(
            r"SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
              WHERE c.relnamespace = 'memory'::regnamespace
                AND c.relname LIKE 'memories\_hnsw\_%' AND i.indisvalid AND i.indisready",
        )
        .fetch_optional(&mut *admin)
        .await?;
        if let Some(name) = valid {
            return Ok(name);
        }
        if started.elapsed() > INDEX_TIMEOUT {
            bail!(
                "the memory service did not build its HNSW index within {}s",
                INDEX_TIMEOUT.as_secs()
            );
        }
        if reported.elapsed() >= Duration::from_secs(15) {
            reported = Instant::now();
            let phase: Option<(String, i64, i64)> = sqlx::query_as(
                "SELECT phase, tuples_done, tuples_total FROM pg_stat_progress_create_index
                 WHERE relid = 'memory.memories'::regclass",
            )
            .fetch_optional(&mut *admin)
            .await?;
            if let Some((phase, done, total)) = phase {
                println!(
                    "xtask: HNSW index build after {:.0}s: {phase} ({done} of {total} tuples)",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// ---------------------------------------------------------------------------
// Searches

fn search_request(user: Uuid, query: &str, exact: bool) -> pb::SearchMemoriesRequest {
    pb::SearchMemoriesRequest {
        user_id: user.to_string(),
        query: query.to_owned(),
        limit: TOP_K as i32,
        exact,
        ..Default::default()
    }
}

/// Searches spread over the users with few memories: the exact path.
async fn search_small_users(
    client: &Client,
    plan: &Plan,
    queries: &Arc<Vec<Sentence>>,
    options: Options,
) -> Result<Measurement> {
    let (client, queries) = (client.clone(), queries.clone());
    let users = Arc::new(plan.small_users.clone());
    measure(
        &format!("SearchMemories ({USERS} users with {PER_USER} memories each)"),
        "gRPC, exact path",
        options,
        move |i| {
            let mut client = client.clone();
            let request = search_request(
                users[spread(i, users.len())],
                &queries[i % queries.len()].text,
                false,
            );
            async move {
                let answer = client.search_memories(request).await?.into_inner();
                if answer.approximate {
                    bail!("a user with {PER_USER} memories was searched approximately");
                }
                if answer.hits.len() != TOP_K {
                    bail!("{} hits, expected {TOP_K}", answer.hits.len());
                }
                Ok(())
            }
        },
    )
    .await
}

/// Searches of the user with many memories, through the HNSW index or
/// (`exact`) not; the hits' ids of each query go to `ids`, for recall.
async fn search_big_user(
    client: &Client,
    plan: &Plan,
    queries: &Arc<Vec<Sentence>>,
    exact: bool,
    ids: &Arc<Mutex<HashMap<usize, Vec<String>>>>,
    options: Options,
) -> Result<Measurement> {
    let (client, queries, ids) = (client.clone(), queries.clone(), ids.clone());
    let user = plan.big_user;
    let wrong_path = Arc::new(AtomicUsize::new(0));
    let counted = wrong_path.clone();
    let measurement = measure(
        &format!("SearchMemories (one user with {BIG_USER_MEMORIES} memories)"),
        if exact {
            "gRPC, exact: true"
        } else {
            "gRPC, HNSW"
        },
        options,
        move |i| {
            let mut client = client.clone();
            let query = i % queries.len();
            let request = search_request(user, &queries[query].text, exact);
            let (ids, counted) = (ids.clone(), counted.clone());
            async move {
                let answer = client.search_memories(request).await?.into_inner();
                if answer.approximate == exact {
                    counted.fetch_add(1, Ordering::Relaxed);
                    bail!("the search took the other path");
                }
                let hits = answer
                    .hits
                    .into_iter()
                    .filter_map(|hit| hit.memory.map(|m| m.id))
                    .collect();
                ids.lock()
                    .expect("not poisoned")
                    .entry(query)
                    .or_insert(hits);
                Ok(())
            }
        },
    )
    .await?;
    let wrong = wrong_path.load(Ordering::Relaxed);
    if wrong > 0 {
        bail!(
            "{wrong} searches of the user with {BIG_USER_MEMORIES} memories {} the HNSW index",
            if exact { "used" } else { "did not use" }
        );
    }
    Ok(measurement)
}

/// Recall@k of the HNSW index on its own: each query vector's `TOP_K`
/// nearest memories of `user` as the index finds them (with the settings
/// the service searches with) against an exact scan of that user's memories.
async fn index_recall(admin: &mut PgConnection, user: Uuid, queries: &[Vec<f32>]) -> Result<f64> {
    let current = format!("user_id = $1 AND delete_time IS NULL AND embedding_model = '{MODEL}'");
    let distance = format!("embedding::vector({DIMENSIONS}) <=> $2::real[]::vector({DIMENSIONS})");
    // The model is a literal, as in the service's SQL, so the planner can
    // match the partial index; a materialized CTE keeps the exact scan off it.
    let indexed =
        format!("SELECT id FROM memory.memories WHERE {current} ORDER BY {distance} LIMIT {TOP_K}");
    let scanned = format!(
        "WITH mine AS MATERIALIZED (SELECT id, embedding FROM memory.memories WHERE {current})
         SELECT id FROM mine ORDER BY {distance} LIMIT {TOP_K}"
    );
    let mut total = 0.0;
    for (i, query) in queries.iter().enumerate() {
        let mut tx = sqlx::Connection::begin(&mut *admin).await?;
        sqlx::query("SET LOCAL hnsw.iterative_scan = relaxed_order")
            .execute(&mut *tx)
            .await?;
        // The service's ef_search for a search of TOP_K hits (search.rs).
        sqlx::query("SET LOCAL hnsw.ef_search = 100")
            .execute(&mut *tx)
            .await?;
        if i == 0 {
            let plan: Vec<String> =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {indexed}")))
                    .bind(user)
                    .bind(query)
                    .fetch_all(&mut *tx)
                    .await?;
            if !plan.iter().any(|line| line.contains("memories_hnsw_")) {
                bail!(
                    "the nearest-neighbour query does not use the HNSW index:\n{}",
                    plan.join("\n")
                );
            }
        }
        // Both statements are built from constants of this file.
        let found: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(indexed.clone()))
            .bind(user)
            .bind(query)
            .fetch_all(&mut *tx)
            .await?;
        let truth: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(scanned.clone()))
            .bind(user)
            .bind(query)
            .fetch_all(&mut *tx)
            .await?;
        tx.rollback().await?;
        let found: HashSet<Uuid> = found.into_iter().collect();
        let hits = truth.iter().filter(|id| found.contains(id)).count();
        total += hits as f64 / truth.len().max(1) as f64;
    }
    Ok(total / queries.len().max(1) as f64)
}

struct Recall {
    mean: f64,
    worst: f64,
    /// The index of the query with the worst recall.
    worst_query: usize,
    queries: usize,
}

/// Recall@k of each query's approximate hits against its exact ones.
fn recall(
    approximate: &HashMap<usize, Vec<String>>,
    exact: &HashMap<usize, Vec<String>>,
) -> Result<Recall> {
    let mut scores = Vec::new();
    let mut worst = (f64::INFINITY, 0);
    for (&query, truth) in exact {
        let Some(found) = approximate.get(&query) else {
            continue;
        };
        if truth.is_empty() {
            continue;
        }
        let found: HashSet<&String> = found.iter().collect();
        let hits = truth.iter().filter(|id| found.contains(id)).count();
        let score = hits as f64 / truth.len() as f64;
        // Ties go to the lowest index, so the answer does not depend on the
        // map's order.
        if score < worst.0 || (score == worst.0 && query < worst.1) {
            worst = (score, query);
        }
        scores.push(score);
    }
    if scores.is_empty() {
        bail!("no query was answered by both paths: no recall to compute");
    }
    Ok(Recall {
        mean: scores.iter().sum::<f64>() / scores.len() as f64,
        worst: worst.0,
        worst_query: worst.1,
        queries: scores.len(),
    })
}

// ---------------------------------------------------------------------------
// Document ingestion

struct Ingestion {
    bytes: usize,
    words: i32,
    chunks: i32,
    elapsed: Duration,
}

/// A Markdown document of about [`DOCUMENT_BYTES`]: chapters, sections and
/// paragraphs of vocabulary sentences.
fn document(sentences: &[Sentence]) -> String {
    let mut rng = StdRng::seed_from_u64(SEED + 3);
    let mut text = String::with_capacity(DOCUMENT_BYTES + 4096);
    let (mut chapter, mut section) = (0, 0);
    while text.len() < DOCUMENT_BYTES {
        if section % 8 == 0 {
            chapter += 1;
            text.push_str(&format!("# Chapter {chapter}: notes from the sessions\n\n"));
        }
        section += 1;
        let heading = &sentences[rng.random_range(0..sentences.len())].text;
        text.push_str(&format!(
            "## {section}. {}\n\n",
            heading.trim_end_matches('.')
        ));
        for _ in 0..rng.random_range(3..7) {
            let paragraph: Vec<&str> = (0..rng.random_range(3..9))
                .map(|_| {
                    sentences[rng.random_range(0..sentences.len())]
                        .text
                        .as_str()
                })
                .collect();
            text.push_str(&paragraph.join(" "));
            text.push_str("\n\n");
        }
    }
    text
}

/// Uploads the document and waits for it to be COMPLETED.
async fn ingest_document(client: &Client, sentences: &[Sentence]) -> Result<Ingestion> {
    let text = document(sentences);
    let bytes = text.len();
    println!(
        "xtask: uploading a {:.2} MB Markdown document",
        bytes as f64 / 1e6
    );
    let mut client = client.clone();
    let started = Instant::now();
    let document = client
        .upload_document(pb::UploadDocumentRequest {
            user_id: Uuid::now_v7().to_string(),
            filename: "session-notes.md".into(),
            content: Some(pb::upload_document_request::Content::Text(text)),
            ..Default::default()
        })
        .await?
        .into_inner()
        .document
        .context("UploadDocument answered no document")?;
    let mut reported = Instant::now();
    loop {
        let document = client
            .get_document(pb::GetDocumentRequest {
                id: document.id.clone(),
            })
            .await?
            .into_inner()
            .document
            .context("GetDocument answered no document")?;
        match pb::DocumentStatus::try_from(document.status) {
            Ok(pb::DocumentStatus::Completed) => {
                return Ok(Ingestion {
                    bytes,
                    words: document.word_count,
                    chunks: document.chunk_count,
                    elapsed: started.elapsed(),
                });
            }
            Ok(pb::DocumentStatus::Failed) => {
                bail!("the document's ingestion failed: {}", document.error)
            }
            _ => {}
        }
        if started.elapsed() > INGEST_TIMEOUT {
            bail!(
                "the document was not ingested within {}s ({} of {} chunks)",
                INGEST_TIMEOUT.as_secs(),
                document.chunks_done,
                document.chunk_count
            );
        }
        if reported.elapsed() >= Duration::from_secs(15) {
            reported = Instant::now();
            println!(
                "xtask: ingestion after {:.0}s: {} of {} chunks",
                started.elapsed().as_secs_f64(),
                document.chunks_done,
                document.chunk_count
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_has_values() {
        let mut rng = StdRng::seed_from_u64(1);
        for (_, template) in TEMPLATES {
            assert!(!fill(template, &mut rng).contains('{'), "{template}");
        }
        for template in QUERY_TEMPLATES {
            assert!(!fill(template, &mut rng).contains('{'), "{template}");
        }
    }

    #[test]
    fn the_vocabulary_is_distinct_and_the_same_every_time() {
        let first = vocabulary(VOCABULARY + VOCABULARY / 10);
        let texts: HashSet<&str> = first.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(texts.len(), first.len());
        let again = vocabulary(100);
        assert!(first.iter().zip(&again).all(|(a, b)| a.text == b.text));
        assert_eq!(queries(RECALL_QUERIES).len(), RECALL_QUERIES);
    }

    #[test]
    fn every_kind_is_a_memory_kind() {
        for (kind, _) in TEMPLATES {
            assert_ne!(kind_number(kind), 0);
        }
    }

    #[test]
    fn copy_rows_have_the_binary_layout() {
        let mut buffer = Vec::new();
        let vector = [1.0f32, -0.5];
        copy_row(
            &mut buffer,
            &CopyRow {
                id: Uuid::nil(),
                user: Uuid::nil(),
                kind: "fact",
                content: "hé",
                importance: 0.5,
                vector: &vector,
                created: Duration::from_secs(946_684_800),
                updated: Duration::from_secs(946_684_801),
            },
        );
        let mut expected = 9i16.to_be_bytes().to_vec();
        for field in [&[0u8; 16][..], &[0u8; 16][..], b"fact", "hé".as_bytes()] {
            expected.extend((field.len() as i32).to_be_bytes());
            expected.extend(field);
        }
        expected.extend(4i32.to_be_bytes());
        expected.extend(0.5f32.to_be_bytes());
        expected.extend(12i32.to_be_bytes());
        expected.extend(2i16.to_be_bytes());
        expected.extend(0i16.to_be_bytes());
        expected.extend(1.0f32.to_be_bytes());
        expected.extend((-0.5f32).to_be_bytes());
        expected.extend((MODEL.len() as i32).to_be_bytes());
        expected.extend(MODEL.as_bytes());
        expected.extend(8i32.to_be_bytes());
        expected.extend(0i64.to_be_bytes());
        expected.extend(8i32.to_be_bytes());
        expected.extend(1_000_000i64.to_be_bytes());
        assert_eq!(buffer, expected);
    }

    #[test]
    fn recall_counts_shared_ids() {
        let ids = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let exact = HashMap::from([(0, ids(&["a", "b"])), (1, ids(&["c", "d"]))]);
        let approximate = HashMap::from([(0, ids(&["a", "b"])), (1, ids(&["c", "x"]))]);
        let recall = recall(&approximate, &exact).unwrap();
        assert_eq!(recall.queries, 2);
        assert!((recall.mean - 0.75).abs() < 1e-9);
        assert!((recall.worst - 0.5).abs() < 1e-9);
        assert_eq!(recall.worst_query, 1);
        // A query only one path answered (or with no exact hits) is left out;
        // with none left there is no recall.
        assert!(super::recall(&HashMap::new(), &exact).is_err());
        let empty = HashMap::from([(0, Vec::new())]);
        assert!(super::recall(&empty, &empty).is_err());
    }
}
