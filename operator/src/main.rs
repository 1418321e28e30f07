//! `stocknet-operator`: runs the StockNet controller (in a pod, or outside one with
//! `KUBECONFIG`); `stocknet-operator crd` prints the CustomResourceDefinition.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use stocknet_common::env;
use stocknet_operator::controller::{self, Context, Settings};
use stocknet_operator::{crd, metrics, resources};

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
    #[command(flatten)]
    log: stocknet_common::server::LogArgs,
    /// Address of the /metrics and /healthz endpoint.
    #[arg(long, env = env::OPERATOR_METRICS, default_value = "0.0.0.0:8080")]
    metrics_address: SocketAddr,
}

#[derive(Subcommand)]
enum Command {
    /// Print the StockNet CustomResourceDefinition as YAML.
    Crd,
    /// Print the objects the operator would apply for the StockNet in FILE (YAML), without a
    /// cluster: a dry run, and what CI validates against the Kubernetes schemas.
    Render {
        file: std::path::PathBuf,
        /// Namespace, when the file names none.
        #[arg(long, default_value = "default")]
        namespace: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => {
            print!("{}", crd::crd_yaml()?);
            return Ok(());
        }
        Some(Command::Render { file, namespace }) => {
            let text = std::fs::read_to_string(&file)?;
            print!("{}", resources::render(&text, &namespace)?);
            return Ok(());
        }
        None => {}
    }
    stocknet_common::server::init_tracing(cli.log.log_format);
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::CommandFactory;

    use super::Cli;

    /// The Helm chart's operator Deployment sets only variables the operator reads (a
    /// misspelt name would be silently ignored): its flags' variables, and two read elsewhere.
    #[test]
    fn the_chart_sets_only_variables_the_operator_reads() {
        let mut reads: BTreeSet<String> = Cli::command()
            .get_arguments()
            .filter_map(|arg| Some(arg.get_env()?.to_str()?.to_owned()))
            .collect();
        // tracing's filter, and the instance the operator's Events name.
        reads.extend(["RUST_LOG".to_owned(), "POD_NAME".to_owned()]);
        let deployment = include_str!("../../charts/stocknet/templates/deployment.yaml");
        let env = deployment
            .split("          env:\n")
            .nth(1)
            .expect("the container's env");
        let set: Vec<&str> = env
            .lines()
            .take_while(|line| line.starts_with("            "))
            .filter_map(|line| line.trim().strip_prefix("- name: "))
            .collect();
        assert!(set.len() >= 4, "{set:?}");
        for name in set {
            assert!(reads.contains(name), "the operator does not read {name}");
        }
    }
}
