use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "stocknet-operator",
    version,
    about = "Kubernetes operator for StockNet"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the StockNet CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => print!("{}", stocknet_operator::crd::crd_yaml()?),
        None => anyhow::bail!("the controller is not built yet"),
    }
    Ok(())
}
