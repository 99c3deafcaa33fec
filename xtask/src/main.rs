//! `cargo xtask up|test|bench`: the local mesh without Docker.
//!
//! - `up`: build the services and the gateway, start Postgres and all of them,
//!   print how to reach them, stop it all on Ctrl-C (up.rs).
//! - `test`: proto lint, compose check, and the whole test suite against a
//!   throwaway Postgres (test.rs); `.ci/run` calls this.
//! - `bench <name>`: load against a service next to the same SQL run
//!   straight against Postgres, or against the gateway next to the same gRPC
//!   calls made directly (bench/).
//! - `chaos`: the whole mesh under load while processes are killed, Postgres
//!   restarts and bad requests arrive (chaos/); `test` runs it too.
//!
//! Shared pieces: tools.rs installs the external programs, postgres.rs runs a
//! local server, launch.rs builds and starts the mesh's processes, process.rs
//! holds the signal and child-process plumbing.

mod bench;
mod chaos;
mod clients;
mod due_reminders;
mod health;
mod host;
mod launch;
mod postgres;
mod process;
mod test;
mod tools;
mod up;
mod whatsapp;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command>

  up               build and start the mesh locally (Ctrl-C stops it)
  test [-- ARGS]   lint, then cargo test --workspace [ARGS] on a throwaway Postgres,
                   then (without ARGS) the chaos suite
  bench <name>     run a benchmark: users, conversations, gateway, memory,
                   scheduler or billing
  chaos            kill and restart each process, Postgres, a scheduler replica,
                   and send bad requests, all under load (always on a Postgres
                   of its own); prints a table, fails if a check does

environment: DATABASE_URL (use this server instead of a local one),
MESH_PG_PORT (local Postgres for `up`, default 54320), MESH_DB_PASSWORD,
MESH_AUTH_TOKEN (default dev-token), WHATSAPP_VERIFY_TOKEN, WHATSAPP_APP_SECRET,
TELEGRAM_SECRET_TOKEN, LEMONSQUEEZY_SIGNING_SECRET (defaults dev-verify-token,
dev-app-secret, dev-telegram-secret, dev-lemonsqueezy-secret), MEMORY_MODEL_DIR (all-MiniLM-L6-v2 already on disk, instead
of the one installed from PyPI), RUST_LOG, <SERVICE>_ADDR ...";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // One thread: children are spawned from the main thread, which the kernel
    // ties PR_SET_PDEATHSIG to (see process::die_with_parent).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("xtask: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(&args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(args: &[String]) -> anyhow::Result<ExitCode> {
    let (command, rest) = match args.split_first() {
        Some((command, rest)) => (command.as_str(), rest),
        None => ("help", &[][..]),
    };
    match command {
        "up" if rest.is_empty() => up::run().await?,
        // `cargo xtask test -- FILTER`: everything after `--` goes to cargo test.
        "test" => test::run(rest.strip_prefix(&["--".to_owned()]).unwrap_or(rest)).await?,
        "bench" => bench::run(rest).await?,
        "chaos" if rest.is_empty() => chaos::run(chaos::Binaries::Build).await?,
        "help" | "-h" | "--help" => println!("{USAGE}"),
        _ => {
            eprintln!("{USAGE}");
            return Ok(ExitCode::from(2));
        }
    }
    Ok(ExitCode::SUCCESS)
}
