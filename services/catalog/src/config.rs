//! The catalog's flags (with environment fallbacks) and the catalog it starts with.

use std::net::IpAddr;
use std::path::PathBuf;

use stocknet_common::env;
use stocknet_common::ports;
use stocknet_common::SecretArgs;

/// The catalog shipped with StockNet, used when no initial catalog file is given.
pub const DEFAULT_CATALOG: &str = include_str!("../../../data/catalog.csv");

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = env::HOST, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = env::CATALOG_PORT, default_value_t = ports::CATALOG)]
    pub port: u16,
    /// Directory holding catalog.csv.
    #[arg(long, env = env::DATA_DIR, default_value = "./stocknet-data")]
    pub data_dir: PathBuf,
    /// CSV (name,price,quantity) to seed catalog.csv from on first start; default: the
    /// built-in catalog of 12 stocks.
    #[arg(long, env = env::INITIAL_CATALOG)]
    pub initial_catalog: Option<PathBuf>,
    /// Frontend base URLs to push cache invalidations to, comma-separated; none when empty.
    #[arg(long, env = env::FRONTEND_URLS, value_delimiter = ',')]
    pub frontends: Vec<String>,
    /// HOST:PORT whose DNS name resolves to every frontend (a headless Service in
    /// Kubernetes); resolved at each invalidation, so frontends that come and go are reached.
    #[arg(long, env = env::FRONTEND_DNS)]
    pub frontend_dns: Option<String>,
    #[command(flatten)]
    pub secret: SecretArgs,
    #[command(flatten)]
    pub metrics: stocknet_common::metrics::MetricsArgs,
}
