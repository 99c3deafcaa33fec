//! The scheduler service process: configuration from the environment, then
//! serve (and dispatch) until SIGTERM/SIGINT.

use mesh_runtime::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init("scheduler")?;
    let config = mesh_scheduler::Config::from_env(mesh_scheduler::DEFAULT_ADDR)?;
    mesh_scheduler::build(&config)
        .await?
        .run_until_stopped()
        .await
}
