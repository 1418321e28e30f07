//! `stocknet`: run one service, the whole system locally with `stocknet up`, the load client
//! `stocknet load`, a day's market report with `stocknet report`, or offline repairs with
//! `stocknet admin`.

mod admin;
#[cfg(feature = "load")]
mod catalog_gen;
#[cfg(feature = "load")]
mod ceiling;
#[cfg(feature = "load")]
mod load;
mod report;
mod up;

use clap::{Parser, Subcommand};
use stocknet_common::server::{shutdown_signal, BoxError, Running};

#[derive(Parser)]
#[command(
    name = "stocknet",
    version,
    about = "StockNet: a fault-tolerant stock-trading back end"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: stocknet_common::server::LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the catalog service.
    Catalog(stocknet_catalog::Config),
    /// Run one order replica.
    Order(stocknet_order::Config),
    /// Run the frontend gateway (the public API).
    Frontend(stocknet_frontend::Config),
    /// Run catalog, 3 order replicas and a frontend locally, supervised, until Ctrl-C.
    Up(up::UpConfig),
    /// Drive a frontend with concurrent client sessions and report latency and throughput.
    #[cfg(feature = "load")]
    Load(load::LoadConfig),
    /// Print a catalog of many stocks (CSV) for load tests, e.g. for `up --initial-catalog`.
    #[cfg(feature = "load")]
    GenerateCatalog(catalog_gen::GenerateConfig),
    /// Print a day's market report (from a frontend, or recomputed from an order log).
    Report(report::ReportConfig),
    /// Offline repairs of a stopped service's files; revoking a user's key.
    Admin(admin::AdminConfig),
    /// Serve stock lookups from a bare axum handler: the benchmarks' ceiling.
    #[cfg(feature = "load")]
    #[command(hide = true)]
    Ceiling(ceiling::CeilingConfig),
}

fn main() -> std::process::ExitCode {
    return_large_blocks_to_the_system();
    // Before any thread starts: it reads and clears environment variables.
    if let Err(e) = stocknet_common::listeners::adopt() {
        eprintln!("stocknet: cannot take over the listeners handed to it: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    stocknet_common::server::init_tracing(cli.log.log_format);
    let result = tokio::runtime::Runtime::new()
        .map_err(Into::into)
        .and_then(|runtime| {
            runtime.block_on(async {
                match cli.command {
                    // Each serves until Ctrl-C or SIGTERM.
                    Command::Catalog(config) => {
                        until_stopped(stocknet_catalog::start(config, shutdown_signal()).await)
                            .await
                    }
                    Command::Order(config) => {
                        until_stopped(stocknet_order::start(config, shutdown_signal()).await).await
                    }
                    Command::Frontend(config) => {
                        until_stopped(stocknet_frontend::start(config, shutdown_signal()).await)
                            .await
                    }
                    Command::Up(config) => up::run(config, cli.log.log_format)
                        .await
                        .map_err(Into::into),
                    #[cfg(feature = "load")]
                    Command::Load(config) => load::run(config).await.map_err(Into::into),
                    #[cfg(feature = "load")]
                    Command::Ceiling(config) => ceiling::run(config).await.map_err(Into::into),
                    Command::Report(config) => report::run(config).await.map_err(Into::into),
                    Command::Admin(config) => admin::run(config).await.map_err(Into::into),
                    #[cfg(feature = "load")]
                    Command::GenerateCatalog(config) => {
                        catalog_gen::run(config).map_err(Into::into)
                    }
                }
            })
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stocknet: {}", with_causes(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `error` and what caused it, down the chain (a report's "GET …" and the 503 behind it),
/// each cause once: many errors name their cause in their own message already.
fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let text = error.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = error.source();
    }
    message
}

/// Waits until a service that started stops.
async fn until_stopped(started: Result<Running, BoxError>) -> Result<(), BoxError> {
    started?.stopped().await
}

/// glibc raises its mmap threshold each time a large block is freed; from then on blocks of a
/// megabyte (a page of 10,000 orders, its JSON) come from the heap and stay resident after they
/// are freed. Pinning the threshold at its default, 128 KiB, hands them back: a replica that had
/// resynced 300,000 orders held 16 MB instead of 27 MB (`bench/resync.sh 300000`).
fn return_large_blocks_to_the_system() {
    #[cfg(target_env = "gnu")]
    // SAFETY: sets one allocator parameter, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}
