//! `cargo xtask bench users`: GetUser and UpsertUserByPhone through the users
//! service over loopback gRPC, each next to the same SQL run straight against
//! Postgres by a pool of the same size, in the same run.

use std::sync::Arc;

use anyhow::{Result, bail};
use mesh_proto::mesh::users::v1::{GetUserRequest, UpsertUserByPhoneRequest};

use super::{
    Measurement, Options, Roles, UsersClient as Client, measure, peak_rss_note, print_table,
    run_bench, spread, start_users_service, with_service_cpu,
};
use crate::tools::Paths;

/// Users seeded before measuring.
const SEEDED: usize = 10_000;
const DATABASE: &str = "mesh_bench_users";

pub async fn run(options: &Options) -> Result<()> {
    run_bench(options, &["users"], DATABASE, measure_all).await
}

async fn measure_all(paths: &Paths, roles: &Roles, options: Options) -> Result<()> {
    let (mut service, client) = start_users_service(paths, roles, options).await?;
    let seeded = Arc::new(seed(roles).await?);
    let direct = roles.pool("users", options.concurrency).await?;
    println!(
        "xtask: measuring {} requests per workload, {} in flight",
        options.requests, options.concurrency
    );

    let pid = service.child.id();
    let rows = vec![
        (
            with_service_cpu(pid, get_user_grpc(&client, &seeded, options)).await?,
            select_by_id(&direct, &seeded, options).await?,
        ),
        (
            with_service_cpu(pid, upsert_known_grpc(&client, &seeded, options)).await?,
            select_by_phone(&direct, &seeded, options).await?,
        ),
        (
            with_service_cpu(pid, upsert_new_grpc(&client, options)).await?,
            insert_new(&direct, options).await?,
        ),
    ];
    let rss = peak_rss_note("users", pid);
    service.stop();
    print_table(
        "cargo xtask bench users",
        &rows,
        &[
            rss,
            format!(
                "{SEEDED} users seeded; {} requests in flight; service pool and direct pool both {} connections; client, service and Postgres share the machine",
                options.concurrency, options.concurrency
            ),
            "direct = the service's own SQL for that call, sent by sqlx straight to Postgres as the same role".into(),
        ],
    );
    Ok(())
}

/// The seeded users' ids and phones, in insertion order.
struct Seeded {
    ids: Vec<uuid::Uuid>,
    phones: Vec<String>,
}

impl Seeded {
    /// Spreads the i-th request over all seeded users.
    fn pick(&self, i: usize) -> usize {
        spread(i, self.ids.len())
    }
}

async fn seed(roles: &Roles) -> Result<Seeded> {
    let mut conn = roles.superuser().await?;
    let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "INSERT INTO users.users (id, phone, whatsapp_profile_name)
         SELECT uuidv7(), '+5730' || lpad(i::text, 8, '0'), 'User ' || i
         FROM generate_series(1, $1) AS i
         RETURNING id, phone",
    )
    .bind(SEEDED as i32)
    .fetch_all(&mut conn)
    .await?;
    sqlx::raw_sql("VACUUM ANALYZE users.users")
        .execute(&mut conn)
        .await?;
    Ok(Seeded {
        ids: rows.iter().map(|(id, _)| *id).collect(),
        phones: rows.into_iter().map(|(_, phone)| phone).collect(),
    })
}

async fn get_user_grpc(
    client: &Client,
    seeded: &Arc<Seeded>,
    options: Options,
) -> Result<Measurement> {
    let (client, seeded) = (client.clone(), seeded.clone());
    measure("GetUser", "gRPC", options, move |i| {
        let (mut client, id) = (client.clone(), seeded.ids[seeded.pick(i)]);
        async move {
            client
                .get_user(GetUserRequest {
                    user_id: id.to_string(),
                })
                .await?;
            Ok(())
        }
    })
    .await
}

async fn select_by_id(
    pool: &sqlx::PgPool,
    seeded: &Arc<Seeded>,
    options: Options,
) -> Result<Measurement> {
    let (pool, seeded) = (pool.clone(), seeded.clone());
    measure("GetUser", "Postgres", options, move |i| {
        let (pool, id) = (pool.clone(), seeded.ids[seeded.pick(i)]);
        async move {
            sqlx::query("SELECT * FROM users WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await?;
            Ok(())
        }
    })
    .await
}

/// A known contact writing again: the path nearly every inbound message takes.
async fn upsert_known_grpc(
    client: &Client,
    seeded: &Arc<Seeded>,
    options: Options,
) -> Result<Measurement> {
    let (client, seeded) = (client.clone(), seeded.clone());
    measure(
        "UpsertUserByPhone (known contact)",
        "gRPC",
        options,
        move |i| {
            let index = seeded.pick(i);
            let mut client = client.clone();
            let request = UpsertUserByPhoneRequest {
                phone: seeded.phones[index].trim_start_matches('+').to_owned(),
                profile_name: format!("User {}", index + 1),
            };
            async move {
                let answer = client.upsert_user_by_phone(request).await?;
                if answer.into_inner().created {
                    bail!("a known contact was created again");
                }
                Ok(())
            }
        },
    )
    .await
}

async fn select_by_phone(
    pool: &sqlx::PgPool,
    seeded: &Arc<Seeded>,
    options: Options,
) -> Result<Measurement> {
    let (pool, seeded) = (pool.clone(), seeded.clone());
    measure(
        "UpsertUserByPhone (known contact)",
        "Postgres",
        options,
        move |i| {
            let pool = pool.clone();
            let phone = seeded.phones[seeded.pick(i)].clone();
            async move {
                sqlx::query("SELECT * FROM users WHERE phone = $1")
                    .bind(phone)
                    .fetch_one(&pool)
                    .await?;
                Ok(())
            }
        },
    )
    .await
}

/// Distinct new numbers per request index, apart from the seeded ones.
fn new_phone(prefix: &str, i: usize) -> String {
    format!("+{prefix}{i:09}")
}

async fn upsert_new_grpc(client: &Client, options: Options) -> Result<Measurement> {
    let client = client.clone();
    measure(
        "UpsertUserByPhone (new contact)",
        "gRPC",
        options,
        move |i| {
            let mut client = client.clone();
            async move {
                let answer = client
                    .upsert_user_by_phone(UpsertUserByPhoneRequest {
                        phone: new_phone("44", i),
                        profile_name: "New".into(),
                    })
                    .await?;
                if !answer.into_inner().created {
                    bail!("a new contact was not created");
                }
                Ok(())
            }
        },
    )
    .await
}

async fn insert_new(pool: &sqlx::PgPool, options: Options) -> Result<Measurement> {
    let pool = pool.clone();
    measure(
        "UpsertUserByPhone (new contact)",
        "Postgres",
        options,
        move |i| {
            let pool = pool.clone();
            async move {
                // The service's two statements for a new contact: the miss, then the insert.
                let phone = new_phone("49", i);
                let found = sqlx::query("SELECT * FROM users WHERE phone = $1")
                    .bind(&phone)
                    .fetch_optional(&pool)
                    .await?;
                if found.is_some() {
                    bail!("{phone} already exists");
                }
                sqlx::query(
                    "INSERT INTO users (id, phone, whatsapp_profile_name) VALUES ($1, $2, $3)
                 ON CONFLICT (phone) DO NOTHING RETURNING *",
                )
                .bind(uuid::Uuid::now_v7())
                .bind(&phone)
                .bind("New")
                .fetch_one(&pool)
                .await?;
                Ok(())
            }
        },
    )
    .await
}
