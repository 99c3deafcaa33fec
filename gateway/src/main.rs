//! The gateway process: configuration from the environment, then serve
//! until SIGTERM/SIGINT.

use mesh_runtime::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init("gateway")?;
    let config = mesh_gateway::Config::from_env()?;
    mesh_gateway::build(&config)
        .await?
        .run_until_stopped()
        .await
}
