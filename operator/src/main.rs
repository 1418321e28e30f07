//! `stocknet-operator`: runs the StockNet controller (in a pod, or outside one with
//! `KUBECONFIG`); `stocknet-operator crd` prints the CustomResourceDefinition.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use stocknet_operator::controller::{self, Context, Settings};
use stocknet_operator::{crd, metrics};

#[derive(Parser)]
#[command(
    name = "stocknet-operator",
    version,
    about = "Kubernetes operator for StockNet"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    settings: Settings,
    /// Address of the /metrics and /healthz endpoint.
    #[arg(
        long,
        env = "STOCKNET_OPERATOR_METRICS",
        default_value = "0.0.0.0:8080"
    )]
    metrics_address: SocketAddr,
}

#[derive(Subcommand)]
enum Command {
    /// Print the StockNet CustomResourceDefinition as YAML.
    Crd,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Crd) = cli.command {
        print!("{}", crd::crd_yaml()?);
        return Ok(());
    }
    stocknet_common::server::init_tracing();
    let client = kube::Client::try_default().await?;
    let context = Arc::new(Context::new(client.clone(), cli.settings));
    let listener = tokio::net::TcpListener::bind(cli.metrics_address).await?;
    tracing::info!(address = %cli.metrics_address, "operator metrics listening");
    let metrics_server = axum::serve(listener, metrics::router(context.clone()));
    tokio::select! {
        () = controller::run(client, context) => {}
        result = metrics_server => result?,
    }
    tracing::info!("operator stopped");
    Ok(())
}
