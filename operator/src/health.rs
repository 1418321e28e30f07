//! The order-replica health policy, as a pure function: what the operator observed of each
//! replica's pod and health endpoint in, the replicas' status and the pods to delete out.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use stocknet_common::wire::Health;

use crate::crd::ReplicaStatus;

/// What the operator saw of one order replica in one round.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Node id: StatefulSet ordinal + 1.
    pub id: u32,
    pub pod_name: String,
    /// The pod, if it exists.
    pub pod: Option<Pod>,
    /// The replica's `/health`, if it answered.
    pub health: Option<Health>,
}

impl Observation {
    /// The replica's pod as this round saw it (no uid when it saw none).
    pub fn observed_pod(&self) -> ObservedPod {
        ObservedPod {
            name: self.pod_name.clone(),
            uid: self.pod.as_ref().and_then(|pod| pod.metadata.uid.clone()),
        }
    }
}

/// A pod the operator acts on, by name and by the uid it was observed with: deleted or evicted
/// only if it is still that pod, not one the StatefulSet has made since under the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedPod {
    pub name: String,
    pub uid: Option<String>,
}

/// A pod the operator must delete (the StatefulSet recreates it on the same volume claim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub pod: ObservedPod,
    pub reason: &'static str,
    pub message: String,
}

/// The reason of a crashed replica's deletion (and of its Event).
pub const CRASHED: &str = "OrderReplicaCrashed";

#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub replicas: Vec<ReplicaStatus>,
    pub deletions: Vec<Deletion>,
    /// The replica that says it leads the highest term any replica reports; none if it does
    /// not answer. A replica that still says it leads an older term (deposed, and cut off
    /// from the others) is not the leader.
    pub leader: Option<u32>,
}

impl Assessment {
    pub fn all_healthy(&self) -> bool {
        self.replicas.iter().all(|r| r.healthy)
    }

    /// Marks not healthy each replica that the group's leader counts more than
    /// [`HEALTHY_BEHIND_ENTRIES`] behind it (`behind`, from the leader's `GET /members`): the
    /// group's word, not the replica's own.
    pub fn behind_the_leader(&mut self, behind: &std::collections::BTreeMap<u32, u64>) {
        for status in &mut self.replicas {
            if behind
                .get(&status.id)
                .is_some_and(|&entries| entries > HEALTHY_BEHIND_ENTRIES)
            {
                status.healthy = false;
            }
        }
    }

    /// Counts `deletion` as a restart of its replica, made at `now`: once the API server has
    /// deleted the pod (not when it was gone already, or replaced since it was observed).
    pub fn restarted(&mut self, deletion: &Deletion, now: Timestamp) {
        if let Some(status) = self
            .replicas
            .iter_mut()
            .find(|r| r.pod == deletion.pod.name)
        {
            status.restarts += 1;
            status.last_restart = Some(now.to_string());
            if deletion.reason == CRASHED {
                status.consecutive_crashes += 1;
            }
        }
    }
}

/// How far behind the leader's log a follower may be, by the leader's count, and still count
/// as healthy. A replica's own "ready" holds for its term once reached, so only the leader
/// shows one that has fallen behind since (a slow disk); well above what replication in flight
/// leaves under load.
pub const HEALTHY_BEHIND_ENTRIES: u64 = 1_000;

/// How long after the last restart a replica's next crash restart waits, `crashes` restarts
/// for a crash in a row having been made: none for the first, then 10 s doubling up to 5
/// minutes, as the kubelet backs off a container that keeps crashing.
fn crash_backoff(crashes: u32) -> Duration {
    match crashes {
        0 => Duration::ZERO,
        n => Duration::from_secs(10u64 << (n - 1).min(5)).min(Duration::from_secs(300)),
    }
}

/// A crash restart this long after the last restart starts a new run of crashes (the kubelet
/// forgets its back-off after a container ran 10 minutes).
const CRASHES_FORGOTTEN_AFTER: Duration = Duration::from_secs(600);

/// When a running pod that does not answer is deleted.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Failed health checks in a row.
    pub failure_threshold: u32,
    /// Checks count at most once in this long, however often the operator reconciles (each
    /// status it writes starts another round at once).
    pub probe_period: Duration,
}

/// The highest term any replica reports, and the replica that says it leads it: a replica
/// that still says it leads an older term (deposed, cut off from the others) is not the leader.
pub fn leader_of(observations: &[Observation]) -> (Option<u64>, Option<u32>) {
    let answers = || observations.iter().filter_map(|seen| seen.health.as_ref());
    let term = answers().map(|h| h.term).max();
    let leader = answers()
        .find(|h| Some(h.term) == term && h.leader == Some(h.node_id))
        .map(|h| h.node_id);
    (term, leader)
}

/// Applies the policy: a pod whose container has crashed (CrashLoopBackOff, terminated, phase
/// Failed) is deleted, at once the first time and then backed off ([`crash_backoff`]); a
/// running pod whose health check fails `failure_threshold`
/// times in a row, a probe period apart, after it answered one since it started, is deleted
/// too, one a round, only while a majority of the replicas answer ready without it and every
/// other replica has answered since it started (a pod deleted before is back). A pod that does
/// not answer while the others do hangs; when most do not answer, the operator may be the one
/// cut off, or they are all starting, and deleting them would only stop the group again. Pods
/// that are starting (a replica opens its files before it listens, which a long log makes
/// take a while: the kubelet's startup probe bounds that), already being deleted, or answering
/// but still resyncing are left alone. `previous` is the last status written.
pub fn assess(
    observations: &[Observation],
    previous: &[ReplicaStatus],
    policy: Policy,
    now: Timestamp,
    voters: Option<&BTreeSet<u32>>,
) -> Assessment {
    let mut deletions = Vec::new();
    let mut unanswered: Vec<usize> = Vec::new();
    let mut replicas: Vec<ReplicaStatus> = observations
        .iter()
        .map(|seen| {
            let known = previous.iter().find(|r| r.id == seen.id);
            let started = seen.pod.as_ref().and_then(incarnation);
            // What was counted of this start of the replica; a new one starts afresh.
            let before = known.filter(|b| b.started == started);
            let mut status = ReplicaStatus {
                id: seen.id,
                pod: seen.pod_name.clone(),
                healthy: seen.health.as_ref().is_some_and(|h| h.ready),
                last_transaction: seen
                    .health
                    .as_ref()
                    .map(|h| h.last_transaction)
                    .or(before.and_then(|b| b.last_transaction)),
                consecutive_failures: 0,
                last_failure: None,
                restarts: known.map_or(0, |b| b.restarts),
                last_restart: known.and_then(|b| b.last_restart.clone()),
                consecutive_crashes: known.map_or(0, |b| b.consecutive_crashes),
                answered: seen.health.is_some() || before.is_some_and(|b| b.answered),
                started,
            };
            let Some(pod) = &seen.pod else {
                return status;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                return status;
            }
            if let Some(why) = crashed(pod) {
                // Not healthy, whatever its last answer said.
                status.healthy = false;
                // (A restart stamped ahead of this clock, by an operator pod whose clock runs
                // ahead, holds nothing back.)
                let since_restart = status
                    .last_restart
                    .as_deref()
                    .and_then(|text| text.parse::<Timestamp>().ok())
                    .map(|at| now.duration_since(at).as_secs_f64())
                    .filter(|since| *since >= 0.0);
                if since_restart.is_some_and(|s| s >= CRASHES_FORGOTTEN_AFTER.as_secs_f64()) {
                    status.consecutive_crashes = 0;
                }
                let wait = crash_backoff(status.consecutive_crashes).as_secs_f64();
                if since_restart.is_none_or(|s| s >= wait) {
                    deletions.push(Deletion {
                        pod: seen.observed_pod(),
                        reason: CRASHED,
                        message: format!("order replica {} {why}; deleting its pod", seen.id),
                    });
                }
                return status;
            }
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if running && seen.health.is_none() && status.answered {
                let failures = before.map_or(0, |b| b.consecutive_failures);
                let counted = before
                    .and_then(|b| b.last_failure.as_deref())
                    .and_then(|text| text.parse::<Timestamp>().ok());
                // (A failure stamped ahead of this clock, by an operator pod whose clock ran
                // ahead, counts as a period ago: it must not hold the count back.)
                let period_passed = counted.is_none_or(|at| {
                    let since = now.duration_since(at).as_secs_f64();
                    since < 0.0 || since >= policy.probe_period.as_secs_f64()
                });
                if period_passed {
                    status.consecutive_failures = failures + 1;
                    status.last_failure = Some(now.to_string());
                } else {
                    status.consecutive_failures = failures;
                    status.last_failure = before.and_then(|b| b.last_failure.clone());
                }
            }
            status
        })
        .collect();
    for (at, status) in replicas.iter().enumerate() {
        if status.consecutive_failures >= policy.failure_threshold {
            unanswered.push(at);
        }
    }
    let (term, leader) = leader_of(observations);
    // A replica's word that it is ready is its own: one cut off from the group (a deposed
    // leader, a follower that kept its last leader) goes on saying so at an older term, or
    // naming another leader than the group's.
    for (status, seen) in replicas.iter_mut().zip(observations) {
        let current = seen.health.as_ref().is_some_and(|h| {
            Some(h.term) == term && leader.is_none_or(|leader| h.leader == Some(leader))
        });
        status.healthy &= current;
    }
    // Counted among the voters, where the leader said who they are: a replica whose pod
    // never started (a scale-up stuck on a pending pod) is no part of the majority that
    // keeps trading, and would keep a hung voter from ever being restarted.
    let voting = |id: u32| voters.is_none_or(|voters| voters.contains(&id));
    let answering = (replicas.iter())
        .filter(|r| r.healthy && voting(r.id))
        .count();
    // A replica starting that has not answered yet (new, or a pod deleted before that is not
    // back yet) is left to come back first: one deletion at a time. Not for ever: one that
    // does not start (a pod left pending, an image that does not pull) holds nothing up once
    // the startup probe's bound has passed.
    let coming_back = observations.iter().zip(&replicas).any(|(seen, status)| {
        !status.answered && seen.pod.as_ref().is_some_and(|pod| starting(pod, now))
    });
    // A majority of the group, which the silent pod is part of; in a group of one or two, the
    // others (none, or the one).
    let group = observations.iter().filter(|seen| voting(seen.id)).count();
    let majority = (group / 2 + 1).min(group.saturating_sub(1));
    // The longest silent first; the others wait for the next round, and for it to answer.
    unanswered.sort_by_key(|&at| std::cmp::Reverse(replicas[at].consecutive_failures));
    if let Some(&at) = unanswered
        .first()
        .filter(|_| answering >= majority && !coming_back)
    {
        let status = &mut replicas[at];
        deletions.push(Deletion {
            pod: observations[at].observed_pod(),
            reason: "OrderReplicaUnhealthy",
            message: format!(
                "order replica {} failed {} health checks in a row; deleting its pod",
                status.id, status.consecutive_failures
            ),
        });
        status.consecutive_failures = 0;
        status.last_failure = None;
    }
    Assessment {
        replicas,
        deletions,
        leader,
    }
}

/// How long a pod may take to start before it no longer holds up the deletion of another: the
/// containers' startup probe's bound (`resources/pod.rs`).
const STARTUP_BOUND: Duration = Duration::from_secs(600);

/// Whether `pod` is on its way (being deleted, or made within [`STARTUP_BOUND`]).
fn starting(pod: &Pod, now: Timestamp) -> bool {
    let created = pod.metadata.creation_timestamp.as_ref().map(|time| time.0);
    pod.metadata.deletion_timestamp.is_some()
        || created.is_none_or(|created| {
            now.duration_since(created).as_secs_f64() < STARTUP_BOUND.as_secs_f64()
        })
}

/// Which start of the replica `pod` is: the pod's uid and its container's start time (the
/// kubelet restarts a container in place).
fn incarnation(pod: &Pod) -> Option<String> {
    let uid = pod.metadata.uid.as_deref()?;
    let started = pod
        .status
        .as_ref()
        .and_then(|status| status.container_statuses.as_ref())
        .and_then(|containers| containers.first())
        .and_then(|container| container.state.as_ref())
        .and_then(|state| state.running.as_ref())
        .and_then(|running| running.started_at.as_ref())
        .map(|at| at.0.to_string());
    Some(match started {
        Some(at) => format!("{uid}@{at}"),
        None => uid.to_owned(),
    })
}

/// Why the pod counts as crashed, if it does.
fn crashed(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() == Some("Failed") {
        return Some("has failed".into());
    }
    for container in status.container_statuses.iter().flatten() {
        let Some(state) = &container.state else {
            continue;
        };
        if let Some(waiting) = &state.waiting {
            if waiting.reason.as_deref() == Some("CrashLoopBackOff") {
                return Some("is in CrashLoopBackOff".into());
            }
        }
        if let Some(terminated) = &state.terminated {
            return Some(format!(
                "exited with code {} ({})",
                terminated.exit_code,
                terminated.reason.as_deref().unwrap_or("no reason")
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, PodStatus,
    };

    fn pod(phase: &str, state: Option<ContainerState>) -> Pod {
        Pod {
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: "order".into(),
                    state,
                    ..ContainerStatus::default()
                }]),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    /// A failed check stamped ahead of this clock (by an operator pod whose clock ran ahead)
    /// does not hold the count back.
    #[test]
    fn a_failure_stamped_ahead_of_this_clock_does_not_hold_the_count_back() {
        let answering = |id| seen(id, Some(pod("Running", None)), Some(health(id, 1, 3, true)));
        let unanswered = [
            seen(1, Some(running_pod("a")), None),
            answering(2),
            answering(3),
        ];
        let mut previous = failing(1, "a");
        previous.last_failure = Some(at(10).to_string());
        // Its third failure in a row: past the threshold, deleted.
        let assessment = assess(&unanswered, &[previous], POLICY, at(0), None);
        assert_eq!(deleted_pods(&assessment), ["demo-order-0"]);
    }

    /// A follower that said it was ready and has since fallen far behind the leader (a slow
    /// disk) is not healthy by the leader's count; one a few entries behind is.
    #[test]
    fn a_follower_the_leader_counts_far_behind_is_not_healthy() {
        let mut assessment = assess(&all_ready(), &[], POLICY, at(0), None);
        assert!(assessment.all_healthy());
        let behind = [(1, HEALTHY_BEHIND_ENTRIES + 1), (2, 12)].into();
        assessment.behind_the_leader(&behind);
        let healthy: Vec<bool> = assessment.replicas.iter().map(|r| r.healthy).collect();
        assert_eq!(healthy, [false, true, true]);
        assert!(assessment.deletions.is_empty(), "behind is not down");
    }

    /// Replica `id`'s status after two failed checks of a start (`started`) that had
    /// answered: one more, and it is past the threshold.
    fn failing(id: u32, started: &str) -> ReplicaStatus {
        ReplicaStatus {
            id,
            pod: format!("demo-order-{}", id - 1),
            consecutive_failures: 2,
            started: Some(started.into()),
            answered: true,
            ..ReplicaStatus::default()
        }
    }

    /// A running pod with `uid`.
    fn running_pod(uid: &str) -> Pod {
        let mut pod = pod("Running", None);
        pod.metadata.uid = Some(uid.into());
        pod
    }

    fn health(id: u32, term: u64, leader: u32, ready: bool) -> Health {
        Health {
            node_id: id,
            term,
            leader: Some(leader),
            ready,
            last_transaction: 42,
            applied: 42,
            leading: leader == id,
        }
    }

    fn deleted_pods(assessment: &Assessment) -> Vec<&str> {
        assessment
            .deletions
            .iter()
            .map(|d| d.pod.name.as_str())
            .collect()
    }

    const POLICY: Policy = Policy {
        failure_threshold: 3,
        probe_period: Duration::from_secs(5),
    };

    /// `periods` probe periods into the test.
    fn at(periods: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + 5 * periods).unwrap()
    }

    fn seen(id: u32, pod: Option<Pod>, health: Option<Health>) -> Observation {
        Observation {
            id,
            pod_name: format!("demo-order-{}", id - 1),
            pod,
            health,
        }
    }

    /// Replicas 1–3 running and ready in term 4, led by 3.
    fn all_ready() -> [Observation; 3] {
        [1, 2, 3].map(|id| seen(id, Some(pod("Running", None)), Some(health(id, 4, 3, true))))
    }

    #[test]
    fn healthy_replicas_are_left_alone_and_the_leader_is_found() {
        let observations = all_ready();
        let assessment = assess(&observations, &[], POLICY, at(0), None);
        assert!(assessment.deletions.is_empty());
        assert!(assessment.all_healthy());
        assert_eq!(assessment.leader, Some(3));
        assert_eq!(assessment.replicas[0].last_transaction, Some(42));
    }

    /// A leader cut off from the others goes on saying it leads its term; the group has moved
    /// on to a higher one, whose leader is the one to report, or none while it does not answer.
    #[test]
    fn the_leader_is_the_one_leading_the_highest_term() {
        let observations = [
            seen(1, Some(pod("Running", None)), Some(health(1, 4, 1, true))),
            seen(2, Some(pod("Running", None)), Some(health(2, 5, 3, true))),
            seen(3, Some(pod("Running", None)), None),
        ];
        assert_eq!(assess(&observations, &[], POLICY, at(0), None).leader, None);
        let answered = [
            seen(1, Some(pod("Running", None)), Some(health(1, 4, 1, true))),
            seen(2, Some(pod("Running", None)), Some(health(2, 5, 3, true))),
            seen(3, Some(pod("Running", None)), Some(health(3, 5, 3, true))),
        ];
        let assessment = assess(&answered, &[], POLICY, at(0), None);
        assert_eq!(assessment.leader, Some(3));
        // The deposed leader says it is ready, at its old term: not healthy.
        let healthy: Vec<bool> = assessment.replicas.iter().map(|r| r.healthy).collect();
        assert_eq!(healthy, [false, true, true]);
    }

    /// The assessment at `now` of `observations` after `previous`, with every deletion made.
    fn assess_and_delete(
        observations: &[Observation],
        previous: &[ReplicaStatus],
        now: Timestamp,
    ) -> Assessment {
        let mut assessment = assess(observations, previous, POLICY, now, None);
        for deletion in assessment.deletions.clone() {
            assessment.restarted(&deletion, now);
        }
        assessment
    }

    /// A container the kubelet holds back after crashes.
    fn crash_loop() -> ContainerState {
        ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("CrashLoopBackOff".into()),
                ..ContainerStateWaiting::default()
            }),
            ..ContainerState::default()
        }
    }

    #[test]
    fn a_crashed_pod_is_deleted_at_once() {
        let exited = ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 137,
                reason: Some("Error".into()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        };
        let observations = [
            seen(1, Some(pod("Running", Some(crash_loop()))), None),
            seen(2, Some(pod("Running", Some(exited))), None),
            seen(3, Some(pod("Failed", None)), None),
        ];
        let previous = [ReplicaStatus {
            id: 1,
            restarts: 2,
            ..ReplicaStatus::default()
        }];
        let assessment = assess_and_delete(&observations, &previous, at(0));
        let deleted = deleted_pods(&assessment);
        assert_eq!(deleted, ["demo-order-0", "demo-order-1", "demo-order-2"]);
        assert!(assessment.deletions[1]
            .message
            .contains("exited with code 137"));
        let first = &assessment.replicas[0];
        assert_eq!((first.restarts, first.consecutive_crashes), (3, 1));
        assert_eq!(first.last_restart, Some(at(0).to_string()));
        assert!(!assessment.all_healthy());
    }

    /// A replica that crashes again and again is restarted less and less often, as the kubelet
    /// would restart its container (deleting the pod at once would undo the kubelet's back-off
    /// and restart it as fast as it crashes), and at once again after ten quiet minutes.
    #[test]
    fn a_replica_that_keeps_crashing_is_restarted_backed_off() {
        let crashed = [seen(1, Some(pod("Running", Some(crash_loop()))), None)];
        let mut replicas = Vec::new();
        let mut restarted_at = Vec::new();
        // Five-second rounds for almost 16 minutes.
        for round in 0..190 {
            let assessment = assess_and_delete(&crashed, &replicas, at(round));
            if !assessment.deletions.is_empty() {
                restarted_at.push(round * 5);
            }
            replicas = assessment.replicas;
        }
        // 10, 20, 40, 80, 160 s apart, then 300 s at most.
        assert_eq!(restarted_at, [0, 10, 30, 70, 150, 310, 610, 910]);
        assert_eq!(
            (replicas[0].restarts, replicas[0].consecutive_crashes),
            (8, 8)
        );
        // A crash ten minutes after the last restart (round 182) is the first of a new run.
        let later = assess_and_delete(&crashed, &replicas, at(182 + 120));
        assert_eq!(deleted_pods(&later), ["demo-order-0"]);
        assert_eq!(later.replicas[0].consecutive_crashes, 1);
        // A restart stamped by a clock ahead of this one holds nothing back.
        replicas[0].last_restart = Some(at(400).to_string());
        let skewed = assess_and_delete(&crashed, &replicas, at(300));
        assert_eq!(deleted_pods(&skewed), ["demo-order-0"]);
    }

    /// A deletion that finds its pod gone, or replaced since it was observed, restarted
    /// nothing: the replica's restarts and crash back-off count only deletions made.
    #[test]
    fn only_deletions_made_count_as_restarts() {
        let observations = [seen(1, Some(pod("Failed", None)), None)];
        let assessment = assess(&observations, &[], POLICY, at(0), None);
        assert_eq!(deleted_pods(&assessment), ["demo-order-0"]);
        let replica = &assessment.replicas[0];
        assert_eq!((replica.restarts, replica.consecutive_crashes), (0, 0));
        assert_eq!(replica.last_restart, None);
        // The next round may delete it at once.
        let next = assess(&observations, &assessment.replicas, POLICY, at(1), None);
        assert_eq!(deleted_pods(&next), ["demo-order-0"]);
    }

    #[test]
    fn failed_health_checks_delete_only_past_the_threshold_a_period_apart() {
        let answering = |id| seen(id, Some(pod("Running", None)), Some(health(id, 1, 3, true)));
        let unanswered = [
            seen(1, Some(pod("Running", None)), None),
            answering(2),
            answering(3),
        ];
        // Counted only once it has answered since it started.
        let starting = assess(&unanswered, &[], POLICY, at(0), None);
        assert_eq!(starting.replicas[0].consecutive_failures, 0);
        let answered = [answering(1), answering(2), answering(3)];
        let up = assess(&answered, &[], POLICY, at(0), None);
        let first = assess(&unanswered, &up.replicas, POLICY, at(0), None);
        assert!(first.deletions.is_empty());
        assert_eq!(first.replicas[0].consecutive_failures, 1);
        // Rounds within a period (each status written starts one) count once.
        let again = assess(&unanswered, &first.replicas, POLICY, at(0), None);
        assert_eq!(again.replicas[0].consecutive_failures, 1);
        let second = assess(&unanswered, &again.replicas, POLICY, at(1), None);
        assert!(second.deletions.is_empty());
        let third = assess_and_delete(&unanswered, &second.replicas, at(2));
        assert_eq!(third.deletions.len(), 1);
        assert_eq!(third.deletions[0].reason, "OrderReplicaUnhealthy");
        assert_eq!(
            (
                third.replicas[0].consecutive_failures,
                third.replicas[0].restarts
            ),
            (0, 1)
        );
        // An answer resets the count.
        assert_eq!(
            assess(&answered, &second.replicas, POLICY, at(2), None).replicas[0]
                .consecutive_failures,
            0
        );
    }

    #[test]
    fn silent_pods_are_deleted_one_a_round_and_only_while_a_majority_answers() {
        let running = || Some(pod("Running", None));
        let silent = |id| seen(id, running(), None);
        let answering = |id| seen(id, running(), Some(health(id, 1, 5, true)));
        let past_threshold: Vec<ReplicaStatus> = (1..=5)
            .map(|id| ReplicaStatus {
                id,
                pod: format!("demo-order-{}", id - 1),
                consecutive_failures: 2,
                answered: true,
                ..ReplicaStatus::default()
            })
            .collect();
        // None answers: the operator may be the one cut off, or all are starting.
        let none = [silent(1), silent(2), silent(3)];
        let assessment = assess(&none, &past_threshold[..3], POLICY, at(10), None);
        assert!(
            assessment.deletions.is_empty(),
            "{:?}",
            assessment.deletions
        );
        assert_eq!(assessment.replicas[0].consecutive_failures, 3);
        // Two of five silent, three answering: one goes now, the other in a later round.
        let two = [
            silent(1),
            silent(2),
            answering(3),
            answering(4),
            answering(5),
        ];
        let assessment = assess(&two, &past_threshold, POLICY, at(10), None);
        let deleted = deleted_pods(&assessment);
        assert_eq!(deleted, ["demo-order-0"]);
        assert_eq!(assessment.replicas[1].consecutive_failures, 3);
        // A group of one or two: the others are all there is to answer.
        let alone = [silent(1)];
        assert_eq!(
            deleted_pods(&assess(&alone, &past_threshold[..1], POLICY, at(10), None)),
            ["demo-order-0"]
        );
        let pair = [silent(1), answering(2)];
        assert_eq!(
            deleted_pods(&assess(&pair, &past_threshold[..2], POLICY, at(10), None)),
            ["demo-order-0"]
        );
        // Two of three silent: the one answering is no majority.
        let most = [silent(1), silent(2), answering(3)];
        assert!(assess(&most, &past_threshold[..3], POLICY, at(10), None)
            .deletions
            .is_empty());
        // A scale-up from three to five stuck (pods 4 and 5 never scheduled): among the
        // voters the leader names, two of three answer, and the hung voter is restarted.
        let stuck = [
            answering(1),
            silent(2),
            answering(3),
            seen(4, Some(pod("Pending", None)), None),
            seen(5, None, None),
        ];
        let voters = BTreeSet::from([1, 2, 3]);
        let assessment = assess(&stuck, &past_threshold, POLICY, at(10), Some(&voters));
        assert_eq!(deleted_pods(&assessment), ["demo-order-1"]);
        // (Counted over every pod, it never was.)
        let counted_over_pods = assess(&stuck, &past_threshold, POLICY, at(10), None);
        assert!(counted_over_pods.deletions.is_empty());
    }

    /// A pod of a new start (a new uid, or its container restarted in place) counts nothing
    /// of the one before, and none of its failed checks until it has answered once: a
    /// replica that opens a long log before it listens is not deleted for being slow.
    #[test]
    fn a_new_start_counts_no_failures_until_it_has_answered() {
        let answering = |id| seen(id, Some(pod("Running", None)), Some(health(id, 1, 3, true)));
        let previous = [ReplicaStatus {
            id: 1,
            consecutive_failures: 2,
            started: Some("old".into()),
            answered: true,
            restarts: 1,
            ..ReplicaStatus::default()
        }];
        let booting = [
            seen(1, Some(running_pod("new")), None),
            answering(2),
            answering(3),
        ];
        let mut replicas = previous.to_vec();
        for round in 0..10 {
            let assessment = assess(&booting, &replicas, POLICY, at(round), None);
            assert!(assessment.deletions.is_empty(), "round {round}");
            replicas = assessment.replicas;
        }
        assert_eq!(
            (replicas[0].consecutive_failures, replicas[0].restarts),
            (0, 1)
        );
        assert_eq!(replicas[0].started.as_deref(), Some("new"));
    }

    /// Two silent replicas go one at a time: the second waits until the first is back (it has
    /// answered since its new start), so the group is never short of both at once.
    #[test]
    fn a_second_silent_replica_waits_until_the_first_deleted_is_back() {
        let silent = |id, uid: &str| seen(id, Some(running_pod(uid)), None);
        let answering =
            |id, uid: &str| seen(id, Some(running_pod(uid)), Some(health(id, 1, 5, true)));
        let previous = [
            failing(1, "a1"),
            failing(2, "a2"),
            failing(3, "a3"),
            failing(4, "a4"),
            failing(5, "a5"),
        ];
        let round = [
            silent(1, "a1"),
            silent(2, "a2"),
            answering(3, "a3"),
            answering(4, "a4"),
            answering(5, "a5"),
        ];
        let first = assess(&round, &previous, POLICY, at(10), None);
        assert_eq!(deleted_pods(&first), ["demo-order-0"]);
        // Replica 1 is back as a new pod that has not answered yet; 2 is still silent.
        let back = [
            silent(1, "b1"),
            silent(2, "a2"),
            answering(3, "a3"),
            answering(4, "a4"),
            answering(5, "a5"),
        ];
        let second = assess(&back, &first.replicas, POLICY, at(11), None);
        assert!(second.deletions.is_empty(), "{:?}", second.deletions);
        let answered = [
            answering(1, "b1"),
            silent(2, "a2"),
            answering(3, "a3"),
            answering(4, "a4"),
            answering(5, "a5"),
        ];
        let third = assess(&answered, &second.replicas, POLICY, at(12), None);
        assert_eq!(deleted_pods(&third), ["demo-order-1"]);
    }

    /// A replica that does not start (a pod left pending past the startup bound, or no pod)
    /// holds up no deletion of another.
    #[test]
    fn a_replica_that_does_not_start_holds_up_no_deletion() {
        let mut stuck = pod("Pending", None);
        stuck.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(0)));
        let answering = |id| seen(id, Some(running_pod("a")), Some(health(id, 1, 3, true)));
        let previous = [failing(1, "a")];
        let now = at(200);
        for fifth in [seen(5, Some(stuck.clone()), None), seen(5, None, None)] {
            let observations = [
                seen(1, Some(running_pod("a")), None),
                answering(2),
                answering(3),
                answering(4),
                fifth,
            ];
            let assessment = assess(&observations, &previous, POLICY, now, None);
            assert_eq!(deleted_pods(&assessment), ["demo-order-0"]);
        }
        // Made within the bound, it is on its way: the silent one waits for it.
        stuck.metadata.creation_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(190)),
        );
        let observations = [
            seen(1, Some(running_pod("a")), None),
            answering(2),
            answering(3),
            answering(4),
            seen(5, Some(stuck), None),
        ];
        assert!(assess(&observations, &previous, POLICY, now, None)
            .deletions
            .is_empty());
    }

    /// A deposed leader's own word that it is ready does not make the majority that lets a
    /// silent pod go.
    #[test]
    fn a_deposed_leader_does_not_count_towards_the_majority_that_deletes() {
        let previous = [failing(2, "a")];
        let observations = [
            seen(1, Some(running_pod("a")), Some(health(1, 4, 1, true))),
            seen(2, Some(running_pod("a")), None),
            seen(3, Some(running_pod("a")), Some(health(3, 5, 3, true))),
        ];
        let assessment = assess(&observations, &previous, POLICY, at(10), None);
        assert!(
            assessment.deletions.is_empty(),
            "{:?}",
            assessment.deletions
        );
    }

    #[test]
    fn starting_resyncing_missing_and_terminating_pods_are_left_alone() {
        let mut terminating = pod("Running", None);
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let observations = [
            seen(1, Some(pod("Pending", None)), None),
            seen(2, Some(pod("Running", None)), Some(health(2, 1, 3, false))),
            seen(3, None, None),
            seen(4, Some(terminating), None),
        ];
        let previous: Vec<ReplicaStatus> = (1..=4)
            .map(|id| ReplicaStatus {
                id,
                consecutive_failures: 9,
                ..ReplicaStatus::default()
            })
            .collect();
        let assessment = assess(&observations, &previous, POLICY, at(0), None);
        assert!(
            assessment.deletions.is_empty(),
            "{:?}",
            assessment.deletions
        );
        assert!(
            !assessment.replicas[1].healthy,
            "resyncing is not healthy yet"
        );
        assert_eq!(assessment.leader, None);
    }
}
