//! The catalog's flags (with environment fallbacks) and the catalog it starts with.

use std::net::IpAddr;
use std::path::PathBuf;

use stocknet_common::env;
use stocknet_common::ports;
use stocknet_common::{BaseUrl, SecretArgs};

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
    /// Each frontend at its own address: several behind one (a load balancer) would be taken
    /// for one, and all but the one a push reaches would serve stale values.
    #[arg(long, env = env::FRONTEND_URLS, value_parser = parse_frontends,
          default_value = "", hide_default_value = true)]
    pub frontends: Frontends,
    /// HOST:PORT whose DNS name resolves to every frontend (a headless Service in
    /// Kubernetes); resolved every second, so frontends that come and go are reached.
    #[arg(long, env = env::FRONTEND_DNS)]
    pub frontend_dns: Option<String>,
    #[command(flatten)]
    pub secret: SecretArgs,
    #[command(flatten)]
    pub metrics: stocknet_common::metrics::MetricsArgs,
}

/// The frontends named by `--frontends`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontends(pub Vec<BaseUrl>);

/// Comma-separated base URLs, each checked; an empty list names none (a pod leaves it empty
/// and finds the frontends by DNS).
fn parse_frontends(text: &str) -> Result<Frontends, String> {
    text.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map(Frontends)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Catalog {
        #[command(flatten)]
        config: Config,
    }

    fn frontends(args: &[&str]) -> Result<Vec<String>, String> {
        let args = ["catalog"].iter().chain(args);
        let parsed = Catalog::try_parse_from(args).map_err(|e| e.to_string())?;
        Ok(parsed
            .config
            .frontends
            .0
            .iter()
            .map(|url| url.to_string())
            .collect())
    }

    #[test]
    fn frontends_are_checked_urls_and_an_empty_list_names_none() {
        assert_eq!(frontends(&[]), Ok(vec![]));
        assert_eq!(frontends(&["--frontends", ""]), Ok(vec![]));
        assert_eq!(
            frontends(&["--frontends", "http://a:1/, http://b:2"]),
            Ok(vec!["http://a:1".to_owned(), "http://b:2".to_owned()])
        );
        let refused = frontends(&["--frontends", "http://a:1,b:2"]).unwrap_err();
        assert!(
            refused.contains("\"b:2\" is not an http or https URL"),
            "{refused}"
        );
    }
}
