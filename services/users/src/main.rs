//! The users service process: configuration from the environment, then serve
//! until SIGTERM/SIGINT.

use mesh_runtime::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init("users")?;
    let config = mesh_users::Config::from_env(mesh_users::DEFAULT_ADDR)?;
    mesh_users::build(config).await?.run_until_stopped().await
}
