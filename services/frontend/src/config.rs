//! The frontend's configuration: flags with environment fallbacks.

use std::net::IpAddr;
use std::num::NonZeroUsize;

use stocknet_common::metrics::MetricsArgs;
use stocknet_common::wire::{parse_peer, Peer};
use stocknet_common::{BaseUrl, SecretArgs};

use crate::limits;
use stocknet_common::env;
use stocknet_common::ports;

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = env::HOST, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = env::FRONTEND_PORT, default_value_t = ports::FRONTEND)]
    pub port: u16,
    /// Catalog base URL.
    #[arg(long, env = env::CATALOG_URL, default_value = ports::CATALOG_URL)]
    pub catalog_url: BaseUrl,
    /// Order replicas as ID=URL, comma-separated.
    #[arg(
        long,
        env = env::ORDER_REPLICAS,
        value_delimiter = ',',
        value_parser = parse_peer,
        default_value = ports::ORDER_REPLICAS
    )]
    pub order_replicas: Vec<Peer>,
    /// Number of stocks the lookup cache holds (kept below the catalog size so that the
    /// LRU policy is exercised).
    #[arg(long, env = env::CACHE_SIZE, default_value_t = NonZeroUsize::new(8).expect("8 > 0"))]
    pub cache_size: NonZeroUsize,
    /// Turn the lookup cache off.
    #[arg(long, env = env::NO_CACHE)]
    pub no_cache: bool,
    /// A port of their own for the internal routes (the catalog's invalidation push), so that
    /// a network policy can keep them from everybody but the catalog; on the public port
    /// when unset.
    #[arg(long, env = env::FRONTEND_INTERNAL_PORT)]
    pub internal_port: Option<u16>,
    #[command(flatten)]
    pub limits: limits::LimitArgs,
    /// Client connections the public port keeps open at once; more are closed as they come, so
    /// that clients cannot take every file descriptor this frontend needs for its own calls.
    /// Default: what the open-file limit leaves after 1,024 (a quarter of a lower limit).
    #[arg(long, env = env::MAX_CONNECTIONS, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,
    /// Seconds a client connection may go without sending a whole request head (after it
    /// opens, or between requests) before it is closed, so that idle or trickling clients do
    /// not hold their places for ever. Requests being answered and streams are not idle, but
    /// an answer that waits this long with no byte of it taken closes the connection too.
    /// Longer than the usual proxies' idle timeouts (60 s), which must be the shorter.
    #[arg(long, env = env::CLIENT_IDLE_SECONDS, default_value_t = 75,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub client_idle_seconds: u64,
    /// WebSocket streams this frontend keeps open at once; one more is closed at once with
    /// 1013 (try again later). Each user order stream polls the order leader.
    #[arg(long, env = env::MAX_STREAMS, default_value_t = 1000)]
    pub max_streams: usize,
    /// WebSocket streams one client address keeps open at once, of `--max-streams` (0: no
    /// limit); one more is closed at once with 1013. Off by default: behind a proxy (and
    /// through `kubectl port-forward`) every client has the proxy's address.
    #[arg(long, env = env::MAX_STREAMS_PER_CLIENT, default_value_t = 0)]
    pub max_streams_per_client: usize,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// How far (in basis points) a stock's price may be from an order's `expected_price`
    /// when the order does not say (`max_deviation_bps`).
    #[arg(long, env = env::PRICE_TOLERANCE_BPS, default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub price_tolerance_bps: u32,
    /// How far (in basis points) from the best opposite price a market order on the book may
    /// trade when it does not say (`protection_bps`): the rest is cancelled.
    #[arg(long, env = env::MARKET_PROTECTION_BPS, default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub market_protection_bps: u32,
    #[command(flatten)]
    pub secret: SecretArgs,
}
