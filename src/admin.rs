//! `stocknet admin`: offline repairs of a stopped service's files.

use std::path::PathBuf;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct AdminConfig {
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Set the leader term a stopped catalog or order replica has seen, e.g. to recover one
    /// that accepted a bogus term and now refuses every real leader as stale. Pick a term
    /// at least the highest term of the healthy replicas (their /health says).
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
}

pub fn run(config: AdminConfig) -> anyhow::Result<()> {
    match config.command {
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
