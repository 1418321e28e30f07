//! The order-replica health policy, as a pure function: what the operator observed of each
//! replica's pod and health endpoint in, the replicas' status and the pods to delete out.

use k8s_openapi::api::core::v1::Pod;
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

/// A pod the operator must delete (the StatefulSet recreates it on the same volume claim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub pod: String,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub replicas: Vec<ReplicaStatus>,
    pub deletions: Vec<Deletion>,
    /// The replica leading the highest term, by its own report.
    pub leader: Option<u32>,
}

impl Assessment {
    pub fn all_healthy(&self) -> bool {
        self.replicas.iter().all(|r| r.healthy)
    }
}

/// Applies the policy: a pod whose container has crashed (CrashLoopBackOff, terminated, phase
/// Failed) is deleted at once; a running pod whose health check fails `failure_threshold`
/// times in a row is deleted too. Pods that are starting, already being deleted, or answering
/// but still resyncing are left alone. `previous` is the last status written.
pub fn assess(
    observations: &[Observation],
    previous: &[ReplicaStatus],
    failure_threshold: u32,
) -> Assessment {
    let mut deletions = Vec::new();
    let replicas = observations
        .iter()
        .map(|seen| {
            let before = previous.iter().find(|r| r.id == seen.id);
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
                restarts: before.map_or(0, |b| b.restarts),
            };
            let Some(pod) = &seen.pod else {
                return status;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                return status;
            }
            if let Some(why) = crashed(pod) {
                status.restarts += 1;
                deletions.push(Deletion {
                    pod: seen.pod_name.clone(),
                    reason: "OrderReplicaCrashed",
                    message: format!("order replica {} {why}; deleting its pod", seen.id),
                });
                return status;
            }
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if running && seen.health.is_none() {
                status.consecutive_failures = before.map_or(0, |b| b.consecutive_failures) + 1;
                if status.consecutive_failures >= failure_threshold {
                    deletions.push(Deletion {
                        pod: seen.pod_name.clone(),
                        reason: "OrderReplicaUnhealthy",
                        message: format!(
                            "order replica {} failed {} health checks in a row; deleting its pod",
                            seen.id, status.consecutive_failures
                        ),
                    });
                    status.consecutive_failures = 0;
                    status.restarts += 1;
                }
            }
            status
        })
        .collect();
    let leader = observations
        .iter()
        .filter_map(|seen| seen.health.as_ref())
        .filter(|h| h.leader == Some(h.node_id))
        .max_by_key(|h| h.term)
        .map(|h| h.node_id);
    Assessment {
        replicas,
        deletions,
        leader,
    }
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

    fn seen(id: u32, pod: Option<Pod>, health: Option<Health>) -> Observation {
        Observation {
            id,
            pod_name: format!("demo-order-{}", id - 1),
            pod,
            health,
        }
    }

    #[test]
    fn healthy_replicas_are_left_alone_and_the_leader_is_found() {
        let observations = [
            seen(1, Some(pod("Running", None)), Some(health(1, 4, 3, true))),
            seen(2, Some(pod("Running", None)), Some(health(2, 4, 3, true))),
            seen(3, Some(pod("Running", None)), Some(health(3, 4, 3, true))),
        ];
        let assessment = assess(&observations, &[], 3);
        assert!(assessment.deletions.is_empty());
        assert!(assessment.all_healthy());
        assert_eq!(assessment.leader, Some(3));
        assert_eq!(assessment.replicas[0].last_transaction, Some(42));
    }

    #[test]
    fn a_crashed_pod_is_deleted_at_once() {
        let crash_loop = ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("CrashLoopBackOff".into()),
                ..ContainerStateWaiting::default()
            }),
            ..ContainerState::default()
        };
        let exited = ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 137,
                reason: Some("Error".into()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        };
        let observations = [
            seen(1, Some(pod("Running", Some(crash_loop))), None),
            seen(2, Some(pod("Running", Some(exited))), None),
            seen(3, Some(pod("Failed", None)), None),
        ];
        let previous = [ReplicaStatus {
            id: 1,
            restarts: 2,
            ..ReplicaStatus::default()
        }];
        let assessment = assess(&observations, &previous, 3);
        let deleted: Vec<&str> = assessment
            .deletions
            .iter()
            .map(|d| d.pod.as_str())
            .collect();
        assert_eq!(deleted, ["demo-order-0", "demo-order-1", "demo-order-2"]);
        assert!(assessment.deletions[1]
            .message
            .contains("exited with code 137"));
        assert_eq!(assessment.replicas[0].restarts, 3);
        assert!(!assessment.all_healthy());
    }

    #[test]
    fn failed_health_checks_delete_only_past_the_threshold() {
        let unanswered = [seen(1, Some(pod("Running", None)), None)];
        let first = assess(&unanswered, &[], 3);
        assert!(first.deletions.is_empty());
        assert_eq!(first.replicas[0].consecutive_failures, 1);
        let second = assess(&unanswered, &first.replicas, 3);
        assert!(second.deletions.is_empty());
        let third = assess(&unanswered, &second.replicas, 3);
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
        let answered = [seen(
            1,
            Some(pod("Running", None)),
            Some(health(1, 1, 1, true)),
        )];
        assert_eq!(
            assess(&answered, &second.replicas, 3).replicas[0].consecutive_failures,
            0
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
        let assessment = assess(&observations, &previous, 3);
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
