//! The `StockNet` status as a pure function of what the operator observed: the replicas'
//! health, the leader they report, and the `Ready` and `Degraded` conditions (each keeping its
//! last transition time while its status holds).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{StockNet, StockNetStatus};
use crate::health;

/// A condition, keeping the previous transition time when its status did not change.
fn condition(
    sn: &StockNet,
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let previous = sn
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_));
    let last_transition_time = match previous {
        Some(previous) if previous.status == status => previous.last_transition_time.clone(),
        _ => now.clone(),
    };
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: sn.metadata.generation,
        last_transition_time,
    }
}

pub fn observed(sn: &StockNet, assessment: health::Assessment, now: Time) -> StockNetStatus {
    let healthy = assessment.replicas.iter().filter(|r| r.healthy).count();
    let total = assessment.replicas.len();
    let ready = assessment.all_healthy();
    let message = format!("{healthy} of {total} order replicas healthy");
    StockNetStatus {
        observed_generation: sn.metadata.generation,
        leader: assessment.leader,
        conditions: vec![
            condition(
                sn,
                "Ready",
                ready,
                if ready {
                    "AllReplicasHealthy"
                } else {
                    "ReplicasUnhealthy"
                },
                message.clone(),
                &now,
            ),
            condition(
                sn,
                "Degraded",
                !ready,
                if ready {
                    "AllReplicasHealthy"
                } else {
                    "ReplicasUnhealthy"
                },
                message,
                &now,
            ),
        ],
        replicas: assessment.replicas,
        // The caller knows whether an upgrade or a membership change is under way.
        upgrade: None,
        membership: None,
    }
}

pub fn invalid(sn: &StockNet, message: &str, now: Time) -> StockNetStatus {
    StockNetStatus {
        observed_generation: sn.metadata.generation,
        leader: None,
        replicas: Vec::new(),
        upgrade: None,
        membership: None,
        conditions: vec![
            condition(sn, "Ready", false, "InvalidSpec", message.into(), &now),
            condition(sn, "Degraded", true, "InvalidSpec", message.into(), &now),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ReplicaStatus;

    fn time(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn replica(id: u32, healthy: bool) -> ReplicaStatus {
        ReplicaStatus {
            id,
            pod: format!("sn-order-{}", id - 1),
            healthy,
            last_transaction: None,
            consecutive_failures: 0,
            restarts: 0,
        }
    }

    fn assessment(healthy: [bool; 3]) -> health::Assessment {
        health::Assessment {
            replicas: (1..=3).zip(healthy).map(|(id, h)| replica(id, h)).collect(),
            deletions: Vec::new(),
            leader: Some(3),
        }
    }

    fn stocknet(status: Option<StockNetStatus>) -> StockNet {
        let mut sn = StockNet::new("sn", Default::default());
        sn.metadata.generation = Some(4);
        sn.status = status;
        sn
    }

    fn find<'a>(status: &'a StockNetStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn ready_and_degraded_follow_the_replicas_and_keep_their_transition_times() {
        let healthy = observed(&stocknet(None), assessment([true; 3]), time(100));
        assert_eq!(healthy.observed_generation, Some(4));
        assert_eq!(healthy.leader, Some(3));
        let ready = find(&healthy, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "AllReplicasHealthy")
        );
        assert_eq!(ready.message, "3 of 3 order replicas healthy");
        assert_eq!(find(&healthy, "Degraded").status, "False");

        // Still healthy later: the transition times stay those of the first observation.
        let again = observed(
            &stocknet(Some(healthy.clone())),
            assessment([true; 3]),
            time(200),
        );
        assert_eq!(find(&again, "Ready").last_transition_time, time(100));

        // One replica down: both conditions change, at the new time.
        let down = observed(
            &stocknet(Some(again)),
            assessment([true, false, true]),
            time(300),
        );
        let ready = find(&down, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ReplicasUnhealthy")
        );
        assert_eq!(ready.message, "2 of 3 order replicas healthy");
        assert_eq!(ready.last_transition_time, time(300));
        assert_eq!(find(&down, "Degraded").status, "True");
        assert_eq!(find(&down, "Degraded").last_transition_time, time(300));
    }

    #[test]
    fn an_invalid_spec_is_not_ready_and_says_why() {
        let status = invalid(&stocknet(None), "order.replicas must be odd", time(100));
        let ready = find(&status, "Ready");
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            ("False", "InvalidSpec", "order.replicas must be odd")
        );
        assert_eq!(find(&status, "Degraded").status, "True");
        assert!(status.replicas.is_empty() && status.leader.is_none());
    }
}
