//! The conversations service process: configuration from the environment,
//! then serve until SIGTERM/SIGINT.

use mesh_runtime::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init("conversations")?;
    let config = mesh_conversations::Config::from_env(mesh_conversations::DEFAULT_ADDR)?;
    mesh_conversations::build(&config)
        .await?
        .run_until_stopped()
        .await
}
