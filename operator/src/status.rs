//! The `StockNet` status as a pure function of what the operator observed: the replicas'
//! health, the leader they report, the `Ready` and `Degraded` conditions (each keeping its
//! last transition time while its status holds), and the scheduled report's last run.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use stocknet_common::clock::day_text;

use crate::crd::{ReportsStatus, StockNet, StockNetStatus};
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
        reports: None,
    }
}

/// Whether `next` must be written over `previous`, the last status written `since` ago: when
/// it says anything new but how far the replicas' logs have come, or when that progress was
/// last written a probe period or more ago. (Each status written starts another reconcile at
/// once; written every round, the logs' progress under trading kept the operator reconciling
/// back to back, a score of API calls a round.)
pub fn worth_writing(
    previous: Option<&StockNetStatus>,
    next: &StockNetStatus,
    since: Option<std::time::Duration>,
    probe_period: std::time::Duration,
) -> bool {
    let without_progress = |status: &StockNetStatus| {
        let mut status = status.clone();
        for replica in &mut status.replicas {
            replica.last_transaction = None;
        }
        status
    };
    let progress_only = previous.is_some_and(|p| without_progress(p) == without_progress(next));
    !progress_only || since.is_none_or(|since| since >= probe_period)
}

/// The scheduled report as the report CronJob's `jobs` show it: the last run (by start), what
/// day it reported, how it ended, and the last success (kept from `previous` once its Job is
/// out of the CronJob's history). `None` when no run was ever seen.
pub fn reports(
    sn: &StockNet,
    jobs: &[Job],
    previous: Option<&ReportsStatus>,
) -> Option<ReportsStatus> {
    let started = |job: &Job| job.status.as_ref().and_then(|s| s.start_time.clone());
    let last = jobs
        .iter()
        .filter(|job| started(job).is_some())
        .max_by_key(|job| started(job).map(|t| t.0))?;
    let succeeded = |job: &Job| job.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0;
    let outcome = if succeeded(last) {
        "Succeeded"
    } else if failure(last).is_some() {
        "Failed"
    } else {
        "Running"
    };
    let start = started(last)?.0;
    // The day a run reports, as `stocknet report --date today|yesterday` works it out (UTC).
    let back = if sn.spec.reports.day == "yesterday" {
        86_400
    } else {
        0
    };
    let day = (start.as_second() - back).div_euclid(86_400);
    let last_success = jobs
        .iter()
        .filter(|job| succeeded(job))
        .filter_map(|job| job.status.as_ref()?.completion_time.clone())
        .map(|time| time.0)
        .max()
        .map(|time| time.to_string())
        .or_else(|| previous.and_then(|p| p.last_success.clone()));
    Some(ReportsStatus {
        last_job: Some(last.name_any()),
        last_date: Some(day_text(u32::try_from(day).unwrap_or(0))),
        last_run: Some(start.to_string()),
        last_outcome: Some(outcome.into()),
        last_success,
    })
}

/// Why `job` failed, if it did (its `Failed` condition's message).
pub fn failure(job: &Job) -> Option<String> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True")
        .map(|c| c.message.clone().unwrap_or_else(|| "failed".into()))
}

/// The status of a StockNet whose spec cannot run: not ready, and why. Nothing is observed
/// meanwhile, so what was last observed of the replicas (their restarts among it), the
/// membership and the reports stays as it was.
pub fn invalid(sn: &StockNet, message: &str, now: Time) -> StockNetStatus {
    StockNetStatus {
        observed_generation: sn.metadata.generation,
        conditions: vec![
            condition(sn, "Ready", false, "InvalidSpec", message.into(), &now),
            condition(sn, "Degraded", true, "InvalidSpec", message.into(), &now),
        ],
        ..sn.status.clone().unwrap_or_default()
    }
}

/// The status of a StockNet whose desired objects the API server refused: the replicas as
/// observed (the health pass ran), not ready, and why. The upgrade, the membership and the
/// reports were not looked at, so they stay as last observed.
pub fn not_applied(
    sn: &StockNet,
    assessment: health::Assessment,
    refusal: &str,
    now: Time,
) -> StockNetStatus {
    let previous = sn.status.clone().unwrap_or_default();
    let observed = observed(sn, assessment, now.clone());
    let healthy = observed.replicas.iter().filter(|r| r.healthy).count();
    let message = format!(
        "{healthy} of {} order replicas healthy; {refusal}",
        observed.replicas.len()
    );
    StockNetStatus {
        conditions: vec![
            condition(sn, "Ready", false, "ApplyFailed", message.clone(), &now),
            condition(sn, "Degraded", true, "ApplyFailed", message, &now),
        ],
        upgrade: previous.upgrade,
        membership: previous.membership,
        reports: previous.reports,
        ..observed
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
            answered: healthy,
            ..ReplicaStatus::default()
        }
    }

    /// Under trading only the replicas' logs move: that is written once a probe period, not
    /// every round; anything else at once.
    #[test]
    fn a_status_that_only_moves_the_logs_on_is_written_once_a_period() {
        use std::time::Duration;
        let period = Duration::from_secs(5);
        let status = |last_transaction, healthy| StockNetStatus {
            replicas: vec![ReplicaStatus {
                last_transaction: Some(last_transaction),
                ..replica(1, healthy)
            }],
            ..StockNetStatus::default()
        };
        let written = status(10, true);
        let moved_on = status(20, true);
        let just_now = Some(Duration::from_secs(1));
        assert!(!worth_writing(Some(&written), &moved_on, just_now, period));
        assert!(worth_writing(
            Some(&written),
            &moved_on,
            Some(period),
            period
        ));
        // Not written by this process yet (it restarted): written.
        assert!(worth_writing(Some(&written), &moved_on, None, period));
        assert!(worth_writing(None, &moved_on, just_now, period));
        assert!(worth_writing(
            Some(&written),
            &status(20, false),
            just_now,
            period
        ));
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

        // What was observed before stays: the replicas' restarts are not counted from 0 again
        // once the spec is fixed.
        let observed = StockNetStatus {
            leader: Some(3),
            replicas: vec![ReplicaStatus {
                id: 1,
                restarts: 2,
                ..ReplicaStatus::default()
            }],
            ..StockNetStatus::default()
        };
        let status = invalid(&stocknet(Some(observed.clone())), "bad", time(100));
        assert_eq!(
            (status.replicas, status.leader, status.observed_generation),
            (observed.replicas, Some(3), Some(4))
        );
    }

    #[test]
    fn a_refused_apply_shows_the_replicas_observed_and_keeps_what_was_not_looked_at() {
        let before = StockNetStatus {
            membership: Some(crate::crd::MembershipStatus {
                target: 3,
                ..Default::default()
            }),
            reports: Some(ReportsStatus {
                last_job: Some("r-1".into()),
                ..Default::default()
            }),
            ..observed(&stocknet(None), assessment([true; 3]), time(100))
        };
        let refusal = "applying Deployment sn-frontend failed: denied by a webhook";
        let status = not_applied(
            &stocknet(Some(before.clone())),
            assessment([true, false, true]),
            refusal,
            time(200),
        );
        let ready = find(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ApplyFailed")
        );
        assert_eq!(
            ready.message,
            format!("2 of 3 order replicas healthy; {refusal}")
        );
        assert_eq!(ready.last_transition_time, time(200));
        assert_eq!(find(&status, "Degraded").reason, "ApplyFailed");
        let healthy: Vec<bool> = status.replicas.iter().map(|r| r.healthy).collect();
        assert_eq!(healthy, [true, false, true]);
        assert_eq!(
            (status.membership, status.reports, status.leader),
            (before.membership, before.reports, Some(3))
        );
    }

    fn job(name: &str, started: i64, ended: Option<(bool, i64)>) -> Job {
        let mut status = k8s_openapi::api::batch::v1::JobStatus {
            start_time: Some(time(started)),
            ..Default::default()
        };
        match ended {
            Some((true, at)) => {
                status.succeeded = Some(1);
                status.completion_time = Some(time(at));
            }
            Some((false, _)) => {
                status.failed = Some(3);
                status.conditions = Some(vec![k8s_openapi::api::batch::v1::JobCondition {
                    type_: "Failed".into(),
                    status: "True".into(),
                    message: Some("Job has reached the specified backoff limit".into()),
                    ..Default::default()
                }]);
            }
            None => {}
        }
        Job {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(status),
            ..Job::default()
        }
    }

    #[test]
    fn the_last_report_run_and_the_last_success_come_from_the_jobs() {
        // Runs at 23:59 for the day that is ending.
        let mut spec = crate::crd::StockNetSpec::default();
        spec.reports.day = "today".into();
        let sn = StockNet::new("demo", spec);
        assert_eq!(reports(&sn, &[], None), None);
        // 2026-12-03 23:59 and 2026-12-04 23:59 UTC.
        let (day3, day4) = (1_796_342_340, 1_796_428_740);
        let jobs = [
            job("r-1", day3, Some((true, day3 + 20))),
            job("r-2", day4, Some((false, 0))),
        ];
        let seen = reports(&sn, &jobs, None).unwrap();
        assert_eq!(seen.last_job.as_deref(), Some("r-2"));
        assert_eq!(seen.last_date.as_deref(), Some("2026-12-04"));
        assert_eq!(seen.last_outcome.as_deref(), Some("Failed"));
        assert_eq!(seen.last_success.as_deref(), Some("2026-12-03T23:59:20Z"));
        assert_eq!(
            failure(&jobs[1]).as_deref(),
            Some("Job has reached the specified backoff limit")
        );
        // The success's Job is out of the history: it is kept from before. A run still going.
        let running = [job("r-3", day4 + 86_400, None)];
        let later = reports(&sn, &running, Some(&seen)).unwrap();
        assert_eq!(later.last_outcome.as_deref(), Some("Running"));
        assert_eq!(later.last_success, seen.last_success);
        // A schedule after midnight reports the day before.
        let mut sn = sn;
        sn.spec.reports.day = "yesterday".into();
        let early = [job("r-4", day4 + 360, Some((true, day4 + 400)))];
        assert_eq!(
            reports(&sn, &early, None).unwrap().last_date.as_deref(),
            Some("2026-12-04")
        );
    }
}
