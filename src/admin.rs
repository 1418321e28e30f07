//! `stocknet admin`: offline repairs of a stopped service's files, and revoking any user's key
//! through the catalog.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use stocknet_common::env;
use stocknet_common::paths;
use stocknet_common::ports;
use stocknet_common::wire::KeyRecord;
use stocknet_common::{BaseUrl, SecretArgs};

#[derive(Debug, clap::Args)]
pub struct AdminConfig {
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Set the leader term a stopped catalog or order replica has seen, e.g. to recover one
    /// that accepted a bogus term and now refuses every real leader as stale. An order
    /// replica: at least the highest term of the healthy replicas (their /health says). The
    /// catalog: the current leader's term, no higher (above it, the catalog refuses that
    /// leader as stale, and nothing makes the group elect past it).
    SetTerm {
        /// The service's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The order replica whose term to set (its id), or --catalog.
        #[arg(long, conflicts_with = "catalog", required_unless_present = "catalog")]
        replica: Option<u32>,
        /// Set the catalog's term.
        #[arg(long)]
        catalog: bool,
        #[arg(long)]
        term: u64,
    },
    /// Revoke a user's API key (a leaked one, say) through the running catalog: every frontend
    /// it reaches refuses the key before this returns.
    RevokeKey {
        /// The catalog's base URL.
        #[arg(long, env = env::CATALOG_URL, default_value = ports::CATALOG_URL)]
        catalog: BaseUrl,
        #[arg(long)]
        user: u64,
        /// The key's id (`GET /users/{id}/keys` lists them).
        #[arg(long)]
        key: u32,
        #[command(flatten)]
        secret: SecretArgs,
    },
}

pub async fn run(config: AdminConfig) -> anyhow::Result<()> {
    match config.command {
        AdminCommand::RevokeKey {
            catalog,
            user,
            key,
            secret,
        } => {
            let secret = secret.load()?;
            let client = stocknet_common::internal_client(Duration::from_secs(10), &secret);
            let url = paths::USER_KEY.url(&catalog, &[&user.to_string(), &key.to_string()])?;
            let revoked: KeyRecord = stocknet_common::client::call(client.delete(url))
                .await
                .with_context(|| format!("revoking key {key} of user {user} at {catalog}"))?;
            println!(
                "user {user}: key {} (snk_{user}_{}) revoked at {}",
                revoked.id,
                revoked.prefix.as_deref().unwrap_or_default(),
                revoked
                    .revoked
                    .map(stocknet_common::clock::rfc3339)
                    .unwrap_or_default()
            );
        }
        AdminCommand::SetTerm {
            data_dir,
            replica: Some(id),
            term,
            ..
        } => {
            stocknet_order::replica::reset_term(&data_dir, id, term)?;
            println!("order replica {id}: term {term}, no leader accepted in it");
        }
        AdminCommand::SetTerm { data_dir, term, .. } => {
            let path = data_dir.join("catalog.csv");
            anyhow::ensure!(path.exists(), "{} does not exist", path.display());
            // Opening replays the journal; nothing is seeded, the file exists.
            let store = stocknet_catalog::CatalogStore::open(&path, "")
                .with_context(|| format!("cannot open {}", path.display()))?;
            store.reset_term(term)?;
            println!("catalog: term {term}");
        }
    }
    Ok(())
}
