//! The billing service process: configuration from the environment, then
//! serve until SIGTERM/SIGINT.

use mesh_runtime::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init("billing")?;
    let config = mesh_billing::Config::from_env(mesh_billing::DEFAULT_ADDR)?;
    mesh_billing::build(&config)
        .await?
        .run_until_stopped()
        .await
}
