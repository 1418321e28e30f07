//! The replica group's consensus: openraft over this replica's CSV order log (the Raft log),
//! its book (the state machine, whose snapshots are the book snapshots) and HTTP between
//! replicas. The group elects its own leader; nobody outside it does.
//!
//! Numbering: a leader proposes the commands that arrive together as one entry, so an entry
//! is one log line (transaction number) or several, consecutive, each marked with its entry's
//! Raft index (see [`Line`]). In a log written before that, line `i + 1` is entry `i`.
//! Besides orders the log holds the group's own entries ([`Command::Group`]), a line each:
//! each new leader's blank entry and membership changes, so transaction numbers increase but
//! skip those.

// openraft's own error types are what its traits return.
#![allow(clippy::result_large_err)]

mod catch_up;
mod durable;
mod election;
pub mod handover;
mod lease;
mod log_store;
pub mod members;
mod network;
mod outgoing;
mod reads;
#[cfg(test)]
pub(crate) mod sim;
mod state_machine;
pub mod transfer;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::{BasicNode, Entry, EntryPayload, LogId, Membership};
use stocknet_common::wire::Peer;
use stocknet_common::{Command, GroupEntry, Order};

pub use catch_up::CatchUp;
pub use durable::{Durable, DurableLog};
pub use election::{ElectionTransport, Elections, Handover, PreVote};
pub use lease::Lease;
pub use log_store::{Disk, LogStore};
pub use network::{routes, HttpElections, HttpNetwork};
pub use outgoing::Outgoing;
pub use reads::{BootFloor, SharedReads};
pub use state_machine::StateMachine;

use crate::error::OrderError;
use crate::log::Line;

openraft::declare_raft_types!(
    /// The order group's types. A proposal is the commands the leader sequenced together,
    /// with numbers and terms 0: they get their lines' numbers and the entry's term when the
    /// entry is written. Applying an entry answers the number of its first line.
    pub TypeConfig:
        D = Vec<Order>,
        R = u64,
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = transfer::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// What sending a snapshot to a replica answers, in openraft's terms (each network's
/// `install_snapshot`).
pub type SnapshotAnswer = Result<
    openraft::raft::InstallSnapshotResponse<u64>,
    openraft::error::RPCError<
        u64,
        BasicNode,
        openraft::error::RaftError<u64, openraft::error::InstallSnapshotError>,
    >,
>;

/// Most commands a leader proposes as one entry.
pub const MAX_PROPOSAL: usize = 64;

/// Most entries sent in one replication call: at most `MAX_PROPOSAL` lines each.
const MAX_PAYLOAD_ENTRIES: u64 = 256;

/// Bytes of a snapshot per request to a replica that installs it, within a request body's
/// limit (2 MiB).
const SNAPSHOT_CHUNK: u64 = 1024 * 1024;

/// How long a replica may take to answer a chunk of a snapshot, the last one included: it
/// installs the whole log then (0.35 s per 100,000 lines here, so 35 s at 10 M). Past this the
/// leader sends the snapshot again from the start, so it is generous.
const INSTALL_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

/// How often a leader heartbeats its followers when it has nothing to send. openraft checks
/// its timers every 1.5 heartbeats.
pub const HEARTBEAT: Duration = Duration::from_millis(50);

/// How long the voter ranked `rank` (0 for the highest id) waits without hearing from a
/// leader before it asks the others for a pre-vote (`election.rs`). Each rank waits 200 ms
/// longer than the one above, more than a timer check, so two replicas never stand in the
/// same instant and split the vote again and again; and the highest-id healthy replica stands
/// first, which is the seeds' preference for it, as a preference only.
pub const fn election_timeout(rank: u64) -> Duration {
    Duration::from_millis(400 + 200 * rank)
}

/// The lease openraft's voters keep for their leader (its `election_timeout_max`): they
/// refuse votes until it passes after a heartbeat. It must pass before the first candidate
/// stands ([`election_timeout`] of rank 0), or the candidate's first election fails and costs
/// a term; the pre-vote is what keeps healthy leaders in place.
pub(crate) const VOTER_LEASE: Duration = Duration::from_millis(350);

/// The consensus settings of a replica: openraft's own election timer off (elections start
/// after a pre-vote); snapshots every `snapshot_every` entries (they speed up restarts); no
/// entry is ever purged, since the log is also the audit trail.
pub fn config(snapshot_every: u64) -> Result<openraft::Config, OrderError> {
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    openraft::Config {
        cluster_name: "stocknet-order".into(),
        election_timeout_min: millis(VOTER_LEASE) - 50,
        election_timeout_max: millis(VOTER_LEASE),
        heartbeat_interval: millis(HEARTBEAT),
        enable_elect: false,
        // A batch of entries in JSON stays well inside a request body's limit.
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every.max(1)),
        // A replica further behind than that is sent a snapshot (`transfer.rs`) rather than
        // the entries, which it would otherwise apply one by one (etcd keeps 5,000 for it).
        max_in_snapshot_log_to_keep: snapshot_every.max(1),
        snapshot_max_chunk_size: SNAPSHOT_CHUNK,
        // The last chunk is answered once the snapshot is installed: its log written and
        // fsync'd, which for a long log takes seconds.
        install_snapshot_timeout: millis(INSTALL_SNAPSHOT_TIMEOUT),
        ..Default::default()
    }
    .validate()
    .map_err(|e| OrderError::Config(e.to_string()))
}

/// The voters a group starts with when its log records no membership: every replica named
/// in the configuration (as etcd's `--initial-cluster`). A replica not named there joins a
/// group that exists ([`members::joining`]).
pub fn initial_membership(peers: &[Peer]) -> Membership<u64, BasicNode> {
    let voters: BTreeSet<u64> = peers.iter().map(|p| u64::from(p.id)).collect();
    let nodes: BTreeMap<u64, BasicNode> = peers
        .iter()
        .map(|p| (u64::from(p.id), BasicNode::new(&p.url)))
        .collect();
    Membership::new(vec![voters], nodes)
}

pub fn log_id(term: u64, index: u64) -> LogId<u64> {
    // One leader per term (`single-term-leader`): the term alone identifies the leader.
    LogId::new(openraft::CommittedLeaderId::new(term, 0), index)
}

/// The lines that record `entry`, the first numbered `first`.
pub fn lines_of(entry: &Entry<TypeConfig>, first: u64) -> Result<Vec<Line>, OrderError> {
    let term = entry.log_id.leader_id.term;
    let line = |offset: u64, order: Order| Line {
        entry: entry.log_id.index,
        order: Order {
            number: first + offset,
            term,
            ..order
        },
    };
    let group = |entry: GroupEntry| Order {
        number: 0,
        term: 0,
        name: String::new(),
        key: None,
        user: None,
        stamp: Default::default(),
        command: Command::Group(entry),
    };
    Ok(match &entry.payload {
        EntryPayload::Normal(orders) if orders.is_empty() => {
            return Err(OrderError::Task(format!(
                "entry {} holds no command",
                entry.log_id
            )))
        }
        EntryPayload::Normal(orders) => (0..)
            .zip(orders.iter().cloned())
            .map(|(offset, order)| line(offset, order))
            .collect(),
        EntryPayload::Blank => vec![line(0, group(GroupEntry::Leader))],
        EntryPayload::Membership(membership) => vec![line(
            0,
            group(GroupEntry::Membership(
                serde_json::to_string(membership).map_err(|e| OrderError::Task(e.to_string()))?,
            )),
        )],
    })
}

/// The entry that `lines`, all the lines of one entry in order, record.
pub fn entry_of(lines: Vec<Line>) -> Result<Entry<TypeConfig>, OrderError> {
    let Some(first) = lines.first() else {
        return Err(OrderError::Task("an entry of no lines".into()));
    };
    let log_id = log_id(first.order.term, first.entry);
    let number = first.order.number;
    let payload = match &first.order.command {
        Command::Group(GroupEntry::Leader) => EntryPayload::Blank,
        Command::Group(GroupEntry::Membership(config)) => EntryPayload::Membership(
            serde_json::from_str(config)
                .map_err(|e| OrderError::Corrupt(format!("entry {number}: membership: {e}")))?,
        ),
        _ => EntryPayload::Normal(lines.into_iter().map(|line| line.order).collect()),
    };
    Ok(Entry { log_id, payload })
}

/// Tests: an append from leader 1 of `term`, of blank entries `entries` after `prev`.
#[cfg(test)]
fn blank_append(
    term: u64,
    prev: Option<LogId<u64>>,
    entries: impl IntoIterator<Item = LogId<u64>>,
    commit: Option<LogId<u64>>,
) -> openraft::raft::AppendEntriesRequest<TypeConfig> {
    openraft::raft::AppendEntriesRequest {
        vote: openraft::Vote::new_committed(term, 1),
        prev_log_id: prev,
        entries: entries
            .into_iter()
            .map(|log_id| Entry {
                log_id,
                payload: EntryPayload::Blank,
            })
            .collect(),
        leader_commit: commit,
    }
}

#[cfg(test)]
mod tests;
