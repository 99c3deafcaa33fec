//! The memory service process: configuration from the environment, the
//! embedder loaded, then serve until SIGTERM/SIGINT.

use mesh_runtime::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init("memory")?;
    let config = mesh_memory::Config::from_env(mesh_memory::DEFAULT_ADDR)?;
    mesh_memory::build(&config).await?.run_until_stopped().await
}
