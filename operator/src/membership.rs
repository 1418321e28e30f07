//! Changing `order.replicas` on a live StockNet, as a pure function: from the group's
//! membership as its leader reports it, the order pods that exist and the spec, the next step.
//!
//! Growing: the StatefulSet gets the new pods first; each new replica (not among the founding
//! members, so it waits to be added) is added as a learner once its pod answers; once every
//! learner has caught up, all become voters together (one joint-consensus change). Shrinking:
//! the voters change first; only once the group no longer counts on a replica does its pod go.
//! One step a round, each idempotent, so that a step retried after a lost answer does no harm.

use std::collections::BTreeSet;

use stocknet_common::wire::Members;

use crate::crd::MembershipStatus;
use crate::health::Observation;

/// How many log entries a learner may lag the leader and still be made a voter: a voter that
/// lags more would make commits wait for it when another voter is down.
pub const CAUGHT_UP_ENTRIES: u64 = 16;

/// A call to the order leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `POST /members/learners`.
    AddLearner { id: u32 },
    /// `PUT /members/voters`.
    SetVoters(BTreeSet<u32>),
}

/// What to do this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// How many order pods the StatefulSet runs: every member's, and the spec's.
    pub pods: i32,
    pub change: Option<Change>,
    pub status: MembershipStatus,
}

/// The next step towards `target` voters (replicas 1 to `target`), given the leader's view of
/// the membership (`None`: no leader answered), the order pods' observations and how many
/// pods the StatefulSet runs now (0 before it exists).
pub fn plan(
    target: u32,
    members: Option<&Members>,
    observations: &[Observation],
    pods_now: i32,
) -> Plan {
    let desired: BTreeSet<u32> = (1..=target).collect();
    let Some(members) = members else {
        // Membership unknown: pods may be added (a new replica waits to be added), never
        // removed.
        return Plan {
            pods: pods_now.max(to_pods(target)),
            change: None,
            status: MembershipStatus {
                target,
                waiting_for: Some("the order leader to report the membership".into()),
                ..MembershipStatus::default()
            },
        };
    };
    let voters = members.voters();
    let learners: BTreeSet<u32> = members.learners.iter().copied().collect();
    let in_group: BTreeSet<u32> = voters.union(&learners).copied().collect();
    let highest = in_group
        .iter()
        .copied()
        .chain([target])
        .max()
        .unwrap_or(target);
    let status = |waiting_for: Option<String>| MembershipStatus {
        target,
        voters: voters.iter().copied().collect(),
        learners: learners.iter().copied().collect(),
        waiting_for,
    };
    if !members.committed {
        // Raft acts on a membership once it is in the log; should its leader be lost before
        // it commits, the group goes on under the one before, with every pod that one has.
        let entry = members
            .entry
            .map_or("".into(), |entry| format!(" (entry {entry})"));
        return Plan {
            pods: pods_now.max(to_pods(highest)),
            change: None,
            status: status(Some(format!("the membership{entry} to commit"))),
        };
    }
    let mut plan = Plan {
        pods: to_pods(highest),
        change: None,
        status: status(None),
    };
    if let Some(&id) = desired.difference(&in_group).next() {
        let answering = observations
            .iter()
            .any(|seen| seen.id == id && seen.health.is_some());
        if answering {
            plan.change = Some(Change::AddLearner { id });
            plan.status = status(Some(format!("order replica {id} to join as a learner")));
        } else {
            plan.status = status(Some(format!("order replica {id} to start")));
        }
        return plan;
    }
    if voters == desired && !members.joint() && learners.is_empty() {
        plan.pods = to_pods(target);
        return plan;
    }
    // The leader's count of what a member lacks stays low for one that hung on an idle group:
    // a member keeps up only if it also answers ready this round.
    let answers = |id: u32| {
        observations
            .iter()
            .any(|seen| seen.id == id && seen.health.as_ref().is_some_and(|h| h.ready))
    };
    let lagging = desired.intersection(&learners).find_map(|&id| {
        let waiting_for = match members.behind.get(&id) {
            _ if !answers(id) => format!("order replica {id} to answer ready"),
            None => format!("order replica {id} to catch up (not heard from yet)"),
            Some(&behind) if behind > CAUGHT_UP_ENTRIES => {
                format!("order replica {id} to catch up ({behind} entries behind)")
            }
            Some(_) => return None,
        };
        Some(waiting_for)
    });
    if let Some(waiting_for) = lagging {
        plan.status = status(Some(waiting_for));
        return plan;
    }
    // Every commit under the new voters needs a majority of them: if as many are down or far
    // behind, the change itself would stop the group (shrinking away from the replicas that
    // work), so it waits for them.
    let keeping_up = |id: &&u32| {
        answers(**id)
            && (members.leader == Some(**id)
                || members
                    .behind
                    .get(id)
                    .is_some_and(|&behind| behind <= CAUGHT_UP_ENTRIES))
    };
    let live = desired.iter().filter(keeping_up).count();
    if live < desired.len() / 2 + 1 {
        let missing: Vec<String> = desired
            .iter()
            .filter(|id| !keeping_up(id))
            .map(u32::to_string)
            .collect();
        plan.status = status(Some(format!(
            "order replicas {} to keep up with the leader, so that most of the new voters do",
            missing.join(", ")
        )));
        return plan;
    }
    plan.change = Some(Change::SetVoters(desired.clone()));
    plan.status = status(Some(format!(
        "the voters to become {}",
        desired
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )));
    plan
}

fn to_pods(replicas: u32) -> i32 {
    i32::try_from(replicas).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use stocknet_common::wire::Health;

    use super::*;

    fn members(configs: &[&[u32]], learners: &[u32], behind: &[(u32, u64)]) -> Members {
        let configs: Vec<Vec<u32>> = configs.iter().map(|c| c.to_vec()).collect();
        let urls: BTreeMap<u32, String> = configs
            .iter()
            .flatten()
            .chain(learners)
            .map(|&id| (id, format!("http://order-{id}")))
            .collect();
        Members {
            configs,
            learners: learners.to_vec(),
            urls,
            entry: Some(7),
            leader: Some(1),
            committed: true,
            behind: behind.iter().copied().collect(),
        }
    }

    /// Replicas 1 to `pods`, each answering its health check unless listed in `silent`.
    fn observed(pods: u32, silent: &[u32]) -> Vec<Observation> {
        (1..=pods)
            .map(|id| Observation {
                id,
                pod_name: format!("demo-order-{}", id - 1),
                pod: None,
                health: (!silent.contains(&id)).then_some(Health {
                    node_id: id,
                    term: 2,
                    leader: Some(1),
                    ready: true,
                    last_transaction: 9,
                    applied: 9,
                    leading: id == 1,
                }),
            })
            .collect()
    }

    #[test]
    fn a_group_at_its_target_is_left_alone() {
        let plan = plan(
            3,
            Some(&members(&[&[1, 2, 3]], &[], &[])),
            &observed(3, &[]),
            3,
        );
        assert_eq!((plan.pods, plan.change), (3, None));
        assert_eq!(plan.status.waiting_for, None);
        assert_eq!(plan.status.voters, [1, 2, 3]);
    }

    #[test]
    fn growing_starts_pods_adds_learners_one_a_round_and_promotes_them_once_caught_up() {
        // The spec says 5: the pods come first.
        let three = members(&[&[1, 2, 3]], &[], &[]);
        let first = plan(5, Some(&three), &observed(3, &[]), 3);
        assert_eq!(first.pods, 5);
        assert_eq!(first.change, None);
        assert_eq!(
            first.status.waiting_for.as_deref(),
            Some("order replica 4 to start")
        );
        // Replica 4 answers: it joins; then 5.
        let up = observed(5, &[5]);
        assert_eq!(
            plan(5, Some(&three), &up, 5).change,
            Some(Change::AddLearner { id: 4 })
        );
        let one_learner = members(&[&[1, 2, 3]], &[4], &[(4, 0)]);
        assert_eq!(plan(5, Some(&one_learner), &up, 5).change, None);
        let all_up = observed(5, &[]);
        assert_eq!(
            plan(5, Some(&one_learner), &all_up, 5).change,
            Some(Change::AddLearner { id: 5 })
        );
        // A learner far behind (or not heard from) is waited for.
        let lagging = members(&[&[1, 2, 3]], &[4, 5], &[(4, 0), (5, 500)]);
        let waiting = plan(5, Some(&lagging), &all_up, 5);
        assert_eq!(waiting.change, None);
        assert_eq!(
            waiting.status.waiting_for.as_deref(),
            Some("order replica 5 to catch up (500 entries behind)")
        );
        let unheard = members(&[&[1, 2, 3]], &[4, 5], &[(4, 0)]);
        assert_eq!(plan(5, Some(&unheard), &all_up, 5).change, None);
        // Caught up: all five vote, in one change.
        let caught_up = members(&[&[1, 2, 3]], &[4, 5], &[(4, 3), (5, 0)]);
        let promote = plan(5, Some(&caught_up), &all_up, 5);
        assert_eq!(
            promote.change,
            Some(Change::SetVoters(BTreeSet::from([1, 2, 3, 4, 5])))
        );
        assert_eq!(promote.status.learners, [4, 5]);
        let five = members(&[&[1, 2, 3, 4, 5]], &[], &[]);
        assert_eq!(plan(5, Some(&five), &all_up, 5).change, None);
    }

    #[test]
    fn shrinking_changes_the_voters_before_any_pod_goes() {
        let keeping_up = [(2, 0), (3, 1), (4, 0), (5, 0)];
        let five = members(&[&[1, 2, 3, 4, 5]], &[], &keeping_up);
        let all_up = observed(5, &[]);
        let first = plan(3, Some(&five), &all_up, 5);
        assert_eq!(first.pods, 5, "no pod goes while it votes");
        assert_eq!(
            first.change,
            Some(Change::SetVoters(BTreeSet::from([1, 2, 3])))
        );
        // Joint (old and new sets): the pods stay, the change is asked again until it is done.
        let joint = members(&[&[1, 2, 3, 4, 5], &[1, 2, 3]], &[], &keeping_up);
        let during = plan(3, Some(&joint), &all_up, 5);
        assert_eq!(during.pods, 5);
        assert_eq!(
            during.change,
            Some(Change::SetVoters(BTreeSet::from([1, 2, 3])))
        );
        // The new voters alone, in the log and not committed yet: a leader lost now leaves
        // the group under the joint configuration, which needs the pods of 4 and 5.
        let three = members(&[&[1, 2, 3]], &[], &[]);
        let uncommitted = Members {
            committed: false,
            ..three.clone()
        };
        let waiting = plan(3, Some(&uncommitted), &all_up, 5);
        assert_eq!((waiting.pods, waiting.change), (5, None));
        assert_eq!(
            waiting.status.waiting_for.as_deref(),
            Some("the membership (entry 7) to commit")
        );
        let done = plan(3, Some(&three), &all_up, 5);
        assert_eq!((done.pods, done.change), (3, None));
    }

    #[test]
    fn the_voters_change_only_to_a_set_most_of_which_keeps_up() {
        // Five voters; 2 and 3 are down (not heard from) or far behind, 1, 4 and 5 trade.
        let all_up = observed(5, &[]);
        for behind in [&[(4, 0), (5, 0)][..], &[(2, 90_000), (4, 0), (5, 0)]] {
            let five = members(&[&[1, 2, 3, 4, 5]], &[], behind);
            let shrink = plan(3, Some(&five), &all_up, 5);
            assert_eq!(shrink.change, None, "{behind:?}");
            assert_eq!(shrink.pods, 5);
            assert!(
                shrink
                    .status
                    .waiting_for
                    .as_deref()
                    .is_some_and(|w| w.contains('2')),
                "{:?}",
                shrink.status.waiting_for
            );
        }
        // One of the three down: 1 and 3 are a majority of them.
        let one_down = members(&[&[1, 2, 3, 4, 5]], &[], &[(3, 0), (4, 0), (5, 0)]);
        assert_eq!(
            plan(3, Some(&one_down), &all_up, 5).change,
            Some(Change::SetVoters(BTreeSet::from([1, 2, 3])))
        );
    }

    /// The leader's count of what a member lacks stays low for one that hung on an idle group:
    /// a change to voters most of which do not answer would stop the group.
    #[test]
    fn members_that_do_not_answer_ready_do_not_count_as_keeping_up() {
        let all_keep_up = [(2, 0), (3, 0), (4, 0), (5, 0)];
        let five = members(&[&[1, 2, 3, 4, 5]], &[], &all_keep_up);
        let hung = plan(3, Some(&five), &observed(5, &[2, 3]), 5);
        assert_eq!(hung.change, None);
        let learners = members(&[&[1, 2, 3]], &[4, 5], &all_keep_up);
        let silent_learner = plan(5, Some(&learners), &observed(5, &[5]), 5);
        assert_eq!(silent_learner.change, None);
        assert_eq!(
            silent_learner.status.waiting_for.as_deref(),
            Some("order replica 5 to answer ready")
        );
    }

    #[test]
    fn a_learner_the_spec_no_longer_wants_is_removed_with_its_pod_kept_until_then() {
        let with_learner = members(&[&[1, 2, 3]], &[4], &[(2, 0), (3, 0), (4, 0)]);
        let plan = plan(3, Some(&with_learner), &observed(4, &[]), 4);
        assert_eq!(plan.pods, 4);
        assert_eq!(
            plan.change,
            Some(Change::SetVoters(BTreeSet::from([1, 2, 3])))
        );
    }

    #[test]
    fn without_the_membership_pods_are_added_but_never_removed() {
        assert_eq!(plan(3, None, &[], 0).pods, 3, "a new StockNet");
        assert_eq!(plan(5, None, &observed(3, &[]), 3).pods, 5);
        let shrink = plan(3, None, &observed(5, &[]), 5);
        assert_eq!((shrink.pods, shrink.change), (5, None));
        assert_eq!(
            shrink.status.target, 3,
            "the spec's, known without the leader"
        );
    }
}
