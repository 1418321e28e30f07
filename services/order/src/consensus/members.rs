//! Membership changes: who votes in the group and who only receives the log. A replica joins
//! as a learner, which the leader replicates to; once it has caught up it is made a voter with
//! the others through Raft's joint consensus (openraft commits a configuration holding the old
//! and the new voter sets, then the new set alone); a voter leaves the same way. Operators (the
//! Kubernetes operator, or a person with the cluster secret) drive the steps through the
//! leader; each step is idempotent, so a step retried after a lost answer does no harm.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Membership, RaftMetrics, ServerState};
use stocknet_common::file::{self, FileFailure};
use stocknet_common::wire::{Members, NewLearner, Peer, Voters};
use stocknet_common::BaseUrl;

use super::Raft;
use crate::error::OrderError;

/// How long a membership step may take to commit before the answer says it is pending: a
/// step waits for a majority of the old voters and, while joint, of the new ones too.
pub const STEP_DEADLINE: Duration = Duration::from_secs(10);

/// The membership of a replica whose id is not among the founding members: none. It does not
/// stand for election and votes for no one's log until the leader adds it and replicates the
/// membership to it.
pub fn joining() -> Membership<u64, BasicNode> {
    Membership::default()
}

/// The group's founding membership as replica `id` sees it, kept in `path` (`founders-<id>`):
/// the ids of `peers` (`--peers`) at its first start, and the same ids ever after, reached at
/// the URLs `peers` gives them now. A log without a membership entry (a group never resized)
/// holds no other record of who votes, and a replica started with another list (a StockNet
/// made again, with another replica count, over the volumes it kept; `up` with another
/// `--order-replicas`) would elect among voters that never held its log: acknowledged orders
/// could be lost. Not among the founders, it joins as the leader adds it ([`joining`]).
pub fn founding(
    path: &std::path::Path,
    id: u32,
    peers: &[Peer],
) -> Result<Membership<u64, BasicNode>, OrderError> {
    let founders: Vec<u32> = match std::fs::read_to_string(path) {
        Ok(text) => text
            .split_whitespace()
            .map(|id| id.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| OrderError::Corrupt(format!("{}: {e}", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let ids: BTreeSet<u32> = peers.iter().map(|peer| peer.id).collect();
            let text = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
            file::replace_atomically(path, |file| writeln!(file, "{text}"))
                .map_err(|e| OrderError::io(path, e))?;
            ids.into_iter().collect()
        }
        Err(e) => return Err(OrderError::io(path, e)),
    };
    if !founders.contains(&id) {
        return Ok(joining());
    }
    let founding: Vec<Peer> = (founders.iter())
        .map(|founder| {
            let peer = peers.iter().find(|peer| peer.id == *founder);
            peer.cloned().ok_or_else(|| {
                OrderError::Config(format!(
                    "the group was founded by replicas {founders:?} ({}), and --peers names no \
                     URL for replica {founder}: list every founder (a group shrinks by a \
                     membership change: stocknet admin voters)",
                    path.display()
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(super::initial_membership(&founding))
}

/// The membership `metrics` report, and (on the leader) how far behind each member is.
pub fn members(metrics: &RaftMetrics<u64, BasicNode>) -> Members {
    let stored = &metrics.membership_config;
    let membership = stored.membership();
    let id = |id: u64| u32::try_from(id).ok();
    let behind = metrics
        .replication
        .iter()
        .flatten()
        .filter(|(member, _)| **member != metrics.id)
        .filter_map(|(member, matched)| {
            let last = metrics.last_log_index.unwrap_or(0);
            let matched = matched.map(|log_id| log_id.index)?;
            Some((id(*member)?, last.saturating_sub(matched)))
        })
        .collect();
    Members {
        configs: membership
            .get_joint_config()
            .iter()
            .map(|voters| voters.iter().filter_map(|&v| id(v)).collect())
            .collect(),
        learners: membership.learner_ids().filter_map(id).collect(),
        urls: membership
            .nodes()
            .filter_map(|(member, node)| Some((id(*member)?, node.addr.clone())))
            .collect(),
        entry: stored.log_id().map(|log_id| log_id.index),
        leader: metrics.current_leader.and_then(id),
        committed: is_committed(metrics),
        behind,
    }
}

/// Whether the membership `metrics` report is committed: its entry applied here (the founding
/// members have none).
fn is_committed(metrics: &RaftMetrics<u64, BasicNode>) -> bool {
    let entry = metrics
        .membership_config
        .log_id()
        .map(|log_id| log_id.index);
    let applied = metrics.last_applied.map(|log_id| log_id.index);
    entry.is_none_or(|entry| applied.is_some_and(|applied| applied >= entry))
}

/// Adds `learner` (or updates its URL): the leader starts replicating the log to it. Answers
/// once the membership that holds it is committed.
pub async fn add_learner(raft: &Raft, learner: NewLearner) -> Result<(), OrderError> {
    let url: BaseUrl = learner
        .url
        .parse()
        .map_err(|e| OrderError::InvalidMembership(format!("url: {e}")))?;
    if learner.id == 0 {
        return Err(OrderError::InvalidMembership(
            "replica ids start at 1".into(),
        ));
    }
    leading(raft)?;
    let step = raft.add_learner(u64::from(learner.id), BasicNode::new(url.as_str()), false);
    outcome(tokio::time::timeout(STEP_DEADLINE, step).await)
}

/// Makes `voters` the group's voters, through a joint configuration; members that are not in
/// it, voters or learners, are removed. Answers once the final configuration is committed.
pub async fn change_voters(raft: &Raft, voters: Voters) -> Result<(), OrderError> {
    if voters.voters.is_empty() {
        return Err(OrderError::InvalidMembership(
            "a group needs a voter".into(),
        ));
    }
    leading(raft)?;
    let ids: BTreeSet<u64> = voters.voters.iter().map(|&v| u64::from(v)).collect();
    let steps = async {
        let membership = current(raft);
        let now: BTreeSet<u64> = membership.voter_ids().collect();
        if now != ids || membership.get_joint_config().len() > 1 {
            raft.change_membership(ChangeMembers::ReplaceAllVoters(ids.clone()), false)
                .await?;
        }
        let membership = current(raft);
        let learners: BTreeSet<u64> = membership
            .learner_ids()
            .filter(|l| !ids.contains(l))
            .collect();
        if !learners.is_empty() {
            raft.change_membership(ChangeMembers::RemoveNodes(learners), false)
                .await?;
        }
        // A step asked again after a lost answer finds the voters as asked, maybe not yet
        // committed: done only once they are.
        raft.wait(None)
            .metrics(is_committed, "the membership committed")
            .await
            .map_err(|_| RaftError::Fatal(openraft::error::Fatal::Stopped))?;
        Ok(())
    };
    outcome(tokio::time::timeout(STEP_DEADLINE, steps).await)
}

/// The membership `raft` goes by now.
fn current(raft: &Raft) -> Membership<u64, BasicNode> {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .clone()
}

/// Only the leader changes the membership; a follower says so before it judges the step.
fn leading(raft: &Raft) -> Result<(), OrderError> {
    if raft.server_metrics().borrow().state == ServerState::Leader {
        Ok(())
    } else {
        Err(OrderError::NotLeader { leader: None })
    }
}

type Step<T> = Result<
    Result<T, RaftError<u64, ClientWriteError<u64, BasicNode>>>,
    tokio::time::error::Elapsed,
>;

fn outcome<T>(step: Step<T>) -> Result<(), OrderError> {
    match step {
        Ok(Ok(_)) => Ok(()),
        // The caller names the leader it follows (see `Replica::not_leader`).
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
            Err(OrderError::NotLeader { leader: None })
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            Err(OrderError::Membership(match e {
                ChangeMembershipError::LearnerNotFound(e) => format!(
                    "replica {} is not a member: add it as a learner first",
                    e.node_id
                ),
                other => other.to_string(),
            }))
        }
        Ok(Err(RaftError::Fatal(e))) => Err(OrderError::Task(format!("consensus stopped: {e}"))),
        Err(_) => Err(OrderError::MembershipPending(STEP_DEADLINE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(ids: &[u32]) -> Vec<Peer> {
        let peer = |id| Peer {
            id,
            url: format!("http://replica-{id}.test:8000").parse().unwrap(),
        };
        ids.iter().copied().map(peer).collect()
    }

    fn voters(membership: &Membership<u64, BasicNode>) -> Vec<u64> {
        membership.voter_ids().collect()
    }

    /// The founding members are those of the first start's `--peers`, kept: a later start with
    /// more peers (a StockNet made again with five replicas over the volumes of three) founds
    /// no group of five, one with a founder missing is refused, and a replica that was not a
    /// founder stays one that joins.
    #[test]
    fn the_founders_of_the_first_start_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = |id| dir.path().join(format!("founders-{id}"));
        let first = founding(&path(1), 1, &peers(&[1, 2, 3])).unwrap();
        assert_eq!(voters(&first), [1, 2, 3]);
        let again = founding(&path(1), 1, &peers(&[1, 2, 3, 4, 5])).unwrap();
        assert_eq!(voters(&again), [1, 2, 3]);
        // At the URLs given now.
        let moved = vec![Peer {
            url: "http://elsewhere.test:9000".parse().unwrap(),
            ..peers(&[2])[0].clone()
        }];
        let moved = founding(&path(1), 1, &[peers(&[1, 3]), moved].concat()).unwrap();
        let node = moved.get_node(&2).expect("founder 2");
        assert_eq!(node.addr, "http://elsewhere.test:9000");
        let shrunk = founding(&path(1), 1, &peers(&[1, 2]));
        assert!(
            matches!(&shrunk, Err(OrderError::Config(e)) if e.contains("replica 3")),
            "{shrunk:?}"
        );
        // Replica 4 started beside the founders joins; so it does again.
        let joining = founding(&path(4), 4, &peers(&[1, 2, 3])).unwrap();
        assert!(voters(&joining).is_empty());
        let later = founding(&path(4), 4, &peers(&[1, 2, 3, 4, 5])).unwrap();
        assert!(voters(&later).is_empty());
    }
}
