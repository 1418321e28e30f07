//! The order replica's flags (with environment fallbacks) and its node id.

use std::net::IpAddr;
use std::path::PathBuf;

use stocknet_common::env;
use stocknet_common::ports;
use stocknet_common::wire::{parse_peer, Peer};
use stocknet_common::{BaseUrl, SecretArgs};

use crate::error::OrderError;

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = env::HOST, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = env::ORDER_PORT, default_value_t = ports::ORDER)]
    pub port: u16,
    /// This replica's id: unique, >= 1; the highest live id leads. Default: the ordinal at
    /// the end of the host name plus one (`stocknet-order-2` is replica 3), as in a
    /// Kubernetes StatefulSet.
    #[arg(long, env = env::NODE_ID)]
    pub node_id: Option<u32>,
    /// The group's founding replicas as ID=URL, comma-separated (etcd's initial cluster):
    /// they are the voters until the group changes its membership (`/members`), and the same
    /// on every replica. A replica not named here joins a running group as the leader adds it.
    #[arg(long, env = env::ORDER_PEERS, value_delimiter = ',', value_parser = parse_peer)]
    pub peers: Vec<Peer>,
    /// Catalog base URL.
    #[arg(long, env = env::CATALOG_URL, default_value = ports::CATALOG_URL)]
    pub catalog_url: BaseUrl,
    /// Directory holding orders-<id>.csv, term-<id>, book-<id>.snap, trades-<id>.bin and
    /// order-records-<id>.bin.
    #[arg(long, env = env::DATA_DIR, default_value = "./stocknet-data")]
    pub data_dir: PathBuf,
    /// Log entries applied to the book between two snapshots of it (a restart loads the
    /// last snapshot and applies only the entries after it). Also how far behind a replica
    /// may fall and still be sent entries: one further behind is sent a snapshot.
    #[arg(long, env = env::BOOK_SNAPSHOT_EVERY, default_value_t = crate::book_store::SNAPSHOT_EVERY,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub book_snapshot_every: u64,
    /// The newest trades the book keeps in memory; older ones are read from the archive
    /// (`trades-<id>.bin`) when asked for.
    #[arg(long, env = env::TRADES_IN_MEMORY, default_value_t = crate::book_store::TRADES_IN_MEMORY,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub trades_in_memory: usize,
    /// The newest limit orders whose records the book keeps in memory, besides every open one;
    /// older ones are read from the archive (`order-records-<id>.bin`) when asked for.
    #[arg(long, env = env::ORDERS_IN_MEMORY, default_value_t = crate::book_store::ORDERS_IN_MEMORY,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub orders_in_memory: usize,
    /// Lines of the order log between two checkpoints of its index (`orders-<id>.index/`): a
    /// replica that starts reads only the lines after the last one.
    #[arg(long, env = env::INDEX_CHECKPOINT_EVERY, default_value_t = crate::log::CHECKPOINT_EVERY,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub index_checkpoint_every: u64,
    /// The least seconds between two checkpoints of the index (each writes back every page
    /// of its key tables touched since the last).
    #[arg(long, env = env::INDEX_CHECKPOINT_SECONDS, default_value_t = crate::log::CHECKPOINT_SECONDS)]
    pub index_checkpoint_seconds: u64,
    #[command(flatten)]
    pub secret: SecretArgs,
    #[command(flatten)]
    pub metrics: stocknet_common::metrics::MetricsArgs,
}

impl Config {
    /// `--node-id`, or else the StatefulSet ordinal in `HOSTNAME` plus one.
    pub fn node_id(&self) -> Result<u32, OrderError> {
        if let Some(id) = self.node_id {
            return Ok(id);
        }
        let hostname = std::env::var("HOSTNAME").unwrap_or_default();
        node_id_from_hostname(&hostname).ok_or_else(|| {
            OrderError::Config(format!(
                "no --node-id / STOCKNET_NODE_ID, and host name {hostname:?} does not end in a \
                 StatefulSet ordinal"
            ))
        })
    }
}

/// `stocknet-order-2` → 3: a StatefulSet pod's ordinal plus one (ids start at 1).
pub fn node_id_from_hostname(hostname: &str) -> Option<u32> {
    let (_, ordinal) = hostname.rsplit_once('-')?;
    ordinal.parse::<u32>().ok()?.checked_add(1)
}
