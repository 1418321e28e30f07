//! The replica group's consensus: openraft over this replica's CSV order log (the Raft log),
//! its book (the state machine, whose snapshots are the book snapshots) and HTTP between
//! replicas. The group elects its own leader; nobody outside it does.
//!
//! Numbering: the entry at Raft index `i` is log line (and transaction number) `i + 1`, so
//! that the first entry a group ever writes, at index 0, is number 1 as before. Besides
//! orders the log holds the group's own entries ([`Command::Group`]): each new leader's blank
//! entry and membership changes, so transaction numbers increase but skip those.

// openraft's own error types are what its traits return.
#![allow(clippy::result_large_err)]

mod log_store;
mod network;
mod state_machine;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::{BasicNode, Entry, EntryPayload, LogId, Membership};
use stocknet_common::wire::Peer;
use stocknet_common::{Command, GroupEntry, Order};

pub use log_store::LogStore;
pub use network::{routes, HttpNetwork};
pub use state_machine::StateMachine;

use crate::error::OrderError;

openraft::declare_raft_types!(
    /// The order group's types. A proposal is the entry the leader sequenced, with number
    /// and term 0: the log id the entry gets is its number and term.
    pub TypeConfig:
        D = Order,
        R = (),
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// How often a leader heartbeats its followers when it has nothing to send. openraft checks
/// its timers every 1.5 heartbeats.
pub const HEARTBEAT: Duration = Duration::from_millis(50);

/// How long the replica ranked `rank` (0 for the highest id) waits without hearing from a
/// leader, after the leader's lease, before it stands for election. Each rank has its own
/// window, apart from the others by more than a timer check, so two replicas never stand in
/// the same instant and split the vote again and again (openraft 0.9 draws a replica's
/// timeout once); and the highest-id healthy replica stands first, which is the seeds'
/// preference for it, as a preference only.
pub fn election_timeout(rank: u64) -> (Duration, Duration) {
    let start = Duration::from_millis(400 + 200 * rank);
    (start, start + Duration::from_millis(100))
}

/// The consensus settings of the replica ranked `rank`: timeouts above; snapshots every
/// `snapshot_every` entries (they speed up restarts); no entry is ever purged, since the log
/// is also the audit trail.
pub fn config(rank: u64, snapshot_every: u64) -> Result<openraft::Config, OrderError> {
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let (min, max) = election_timeout(rank);
    openraft::Config {
        cluster_name: "stocknet-order".into(),
        election_timeout_min: millis(min),
        election_timeout_max: millis(max),
        heartbeat_interval: millis(HEARTBEAT),
        max_payload_entries: crate::replica::BATCH as u64,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every.max(1)),
        max_in_snapshot_log_to_keep: u64::MAX,
        ..Default::default()
    }
    .validate()
    .map_err(|e| OrderError::Config(e.to_string()))
}

/// Where replica `id` ranks among `peers` by id, from the highest (0).
pub fn rank(id: u32, peers: &[Peer]) -> u64 {
    peers.iter().filter(|p| p.id > id).count() as u64
}

/// The voters a group starts with when its log records no membership: every replica named
/// in the configuration (as etcd's `--initial-cluster`).
pub fn initial_membership(peers: &[Peer]) -> Membership<u64, BasicNode> {
    let voters: BTreeSet<u64> = peers.iter().map(|p| u64::from(p.id)).collect();
    let nodes: BTreeMap<u64, BasicNode> = peers
        .iter()
        .map(|p| (u64::from(p.id), BasicNode::new(&p.url)))
        .collect();
    Membership::new(vec![voters], nodes)
}

/// The transaction number of Raft index `index`.
pub fn number_of(index: u64) -> u64 {
    index + 1
}

/// The log id of `order`, a line of the log.
pub fn log_id_of(order: &Order) -> LogId<u64> {
    log_id(order.term, order.number.saturating_sub(1))
}

pub fn log_id(term: u64, index: u64) -> LogId<u64> {
    // One leader per term (`single-term-leader`): the term alone identifies the leader.
    LogId::new(openraft::CommittedLeaderId::new(term, 0), index)
}

/// The log line that records `entry`.
pub fn order_of(entry: &Entry<TypeConfig>) -> Result<Order, OrderError> {
    let number = number_of(entry.log_id.index);
    let term = entry.log_id.leader_id.term;
    let group = |entry: GroupEntry| Order {
        number,
        term,
        name: String::new(),
        key: None,
        user: None,
        stamp: Default::default(),
        command: Command::Group(entry),
    };
    Ok(match &entry.payload {
        EntryPayload::Normal(order) => Order {
            number,
            term,
            ..order.clone()
        },
        EntryPayload::Blank => group(GroupEntry::Leader),
        EntryPayload::Membership(membership) => group(GroupEntry::Membership(
            serde_json::to_string(membership).map_err(|e| OrderError::Task(e.to_string()))?,
        )),
    })
}

/// The entry a log line records.
pub fn entry_of(order: Order) -> Result<Entry<TypeConfig>, OrderError> {
    let log_id = log_id_of(&order);
    let payload = match order.command {
        Command::Group(GroupEntry::Leader) => EntryPayload::Blank,
        Command::Group(GroupEntry::Membership(ref config)) => {
            EntryPayload::Membership(serde_json::from_str(config).map_err(|e| {
                OrderError::Corrupt(format!("entry {}: membership: {e}", order.number))
            })?)
        }
        _ => EntryPayload::Normal(order),
    };
    Ok(Entry { log_id, payload })
}

#[cfg(test)]
mod tests;
