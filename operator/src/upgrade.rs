//! The rolling upgrade of the order replicas, as a pure function. The order StatefulSet updates
//! `OnDelete`: a new template (a new image, say) reaches a pod only when the operator deletes
//! it. It replaces one replica at a time, followers first and the leader last, and only while
//! every replica is up, ready and resynced, so that a majority always holds the log and no two
//! replicas are ever down at once.

use std::collections::BTreeMap;

use crate::crd::UpgradeStatus;
use crate::health::{Observation, ObservedPod};
use crate::membership::CAUGHT_UP_ENTRIES;

/// The label the StatefulSet controller gives each pod: the revision of its template.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// What to do this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The pod to replace now, if it is time for one.
    pub replace: Option<Replacement>,
    /// Progress for the StockNet's status; `None` when every replica runs `revision`.
    pub progress: Option<UpgradeStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    pub pod: ObservedPod,
    pub id: u32,
    pub leader: bool,
}

/// The next step towards every order replica running `revision` (the StatefulSet's update
/// revision; `None` before the controller has computed it), given this round's observations,
/// the leader they report, how many log entries the leader says each other replica is behind
/// (`None`: the leader did not say) and the progress last reported. An upgrade is over once
/// every replica runs the revision and is ready and caught up: the last one replaced (the
/// leader) is waited for like the others.
pub fn next_step(
    observations: &[Observation],
    revision: Option<&str>,
    leader: Option<u32>,
    behind: Option<&BTreeMap<u32, u64>>,
    previous: Option<&UpgradeStatus>,
) -> Step {
    let done = Step {
        replace: None,
        progress: None,
    };
    let Some(revision) = revision else {
        return done;
    };
    let running_revision = |seen: &Observation| {
        seen.pod
            .as_ref()
            .and_then(|pod| pod.metadata.labels.as_ref()?.get(REVISION_LABEL).cloned())
    };
    // A missing pod counts as not on the revision yet: it is on its way back.
    let on_revision = |seen: &&Observation| running_revision(seen).as_deref() == Some(revision);
    let replaced_all = observations.iter().all(|seen| on_revision(&seen));
    let upgrading = previous.is_some_and(|p| p.revision == revision);
    if replaced_all && !upgrading {
        // No upgrade under way: a replica down is the health policy's.
        return done;
    }
    let outdated: Vec<&Observation> = observations
        .iter()
        .filter(|seen| running_revision(seen).is_some_and(|r| r != revision))
        .collect();
    let total = observations.len() as u32;
    // Running it: on the revision and ready (a pod on it that crashes runs nothing).
    let updated = observations
        .iter()
        .filter(|seen| on_revision(seen) && up_and_ready(seen))
        .count() as u32;
    let progress = UpgradeStatus {
        revision: revision.to_owned(),
        updated,
        total,
        waiting_for: None,
    };
    // Every replica up, ready and not on its way out, and every follower caught up by the
    // leader's count (a replica back from a replacement says it is ready once it hears from the
    // leader, long before it has caught up): otherwise replacing one more could leave no
    // majority that keeps up, and commits would wait.
    let waiting = |why: String| Step {
        replace: None,
        progress: Some(UpgradeStatus {
            waiting_for: Some(why),
            ..progress.clone()
        }),
    };
    if let Some(down) = observations.iter().find(|seen| !up_and_ready(seen)) {
        return waiting(format!(
            "order replica {} to be ready and resynced",
            down.id
        ));
    }
    let Some(behind) = behind else {
        return waiting("the order leader to report how far each replica is behind".into());
    };
    let lagging = observations.iter().find(|seen| {
        Some(seen.id) != leader
            && behind
                .get(&seen.id)
                .is_none_or(|&entries| entries > CAUGHT_UP_ENTRIES)
    });
    if let Some(lagging) = lagging {
        return waiting(format!("order replica {} to catch up", lagging.id));
    }
    if replaced_all {
        return done;
    }
    // Followers first, the highest id first (the next leader should be up to date); the leader
    // last, so that it changes once.
    let next = outdated
        .iter()
        .filter(|seen| Some(seen.id) != leader)
        .max_by_key(|seen| seen.id)
        .or_else(|| outdated.first())
        .map(|seen| Replacement {
            pod: seen.observed_pod(),
            id: seen.id,
            leader: Some(seen.id) == leader,
        });
    Step {
        replace: next,
        progress: Some(progress),
    }
}

fn up_and_ready(seen: &Observation) -> bool {
    let running = seen.pod.as_ref().is_some_and(|pod| {
        pod.metadata.deletion_timestamp.is_none()
            && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    });
    running && seen.health.as_ref().is_some_and(|h| h.ready)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Pod, PodStatus};
    use kube::api::ObjectMeta;
    use stocknet_common::wire::Health;

    /// Three replicas as the world holds them: each pod's revision and whether it is ready, or
    /// no pod (deleted, not recreated yet).
    #[derive(Debug, Clone)]
    struct Replica {
        revision: String,
        state: State,
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum State {
        Ready,
        /// Recreated, resyncing: running, its /health says not ready.
        Resyncing,
        Gone,
    }

    fn observe(world: &[Replica], leader: u32) -> Vec<Observation> {
        world
            .iter()
            .enumerate()
            .map(|(index, replica)| {
                let id = index as u32 + 1;
                let pod = (replica.state != State::Gone).then(|| Pod {
                    metadata: ObjectMeta {
                        name: Some(format!("demo-order-{index}")),
                        labels: Some(
                            [(REVISION_LABEL.to_owned(), replica.revision.clone())].into(),
                        ),
                        ..ObjectMeta::default()
                    },
                    status: Some(PodStatus {
                        phase: Some("Running".into()),
                        ..PodStatus::default()
                    }),
                    ..Pod::default()
                });
                // Resyncing, it says it is ready once it hears from the leader, as a replica
                // does; only the leader's count says it is far behind.
                let health = (replica.state != State::Gone).then_some(Health {
                    node_id: id,
                    term: 4,
                    leader: Some(leader),
                    ready: true,
                    last_transaction: 100,
                    applied: 100,
                    leading: leader == id,
                });
                Observation {
                    id,
                    pod_name: format!("demo-order-{index}"),
                    pod,
                    health,
                }
            })
            .collect()
    }

    /// Three replicas on `revision`, all ready.
    fn ready_on(revision: &str) -> Vec<Replica> {
        vec![
            Replica {
                revision: revision.into(),
                state: State::Ready,
            };
            3
        ]
    }

    /// How far the leader says each replica is behind.
    fn behind(world: &[Replica]) -> BTreeMap<u32, u64> {
        (1..)
            .zip(world)
            .filter(|(_, replica)| replica.state != State::Gone)
            .map(|(id, replica)| {
                let entries = if replica.state == State::Ready {
                    0
                } else {
                    50_000
                };
                (id, entries)
            })
            .collect()
    }

    /// The operator's rounds against a world where a deleted pod comes back on the new revision
    /// one round later, resyncs for two rounds, then is ready: the replicas are replaced
    /// followers first, the leader last, one at a time, and never two are down at once; the
    /// upgrade is over only once the last one is back and caught up.
    #[test]
    fn followers_are_replaced_one_at_a_time_and_the_leader_last() {
        let mut leader = 2;
        let mut world = ready_on("old");
        let mut deleted = Vec::new();
        let mut recovering: Option<(usize, u32)> = None;
        let mut progress = None;
        for _round in 0..40 {
            let observations = observe(&world, leader);
            let step = next_step(
                &observations,
                Some("new"),
                Some(leader),
                Some(&behind(&world)),
                progress.as_ref(),
            );
            if step.progress.is_none() {
                assert!(
                    world
                        .iter()
                        .all(|r| r.revision == "new" && r.state == State::Ready),
                    "over before every replica is back: {world:?}"
                );
            }
            progress = step.progress.clone();
            let down = world.iter().filter(|r| r.state != State::Ready).count();
            assert!(down <= 1, "two replicas down at once: {world:?}");
            if let Some(replacement) = &step.replace {
                assert_eq!(down, 0, "replaced {replacement:?} while one was down");
                let index = (replacement.id - 1) as usize;
                assert_eq!(world[index].revision, "old", "replaced an updated replica");
                world[index].state = State::Gone;
                deleted.push(replacement.id);
                if replacement.leader {
                    // The others elect one of them.
                    leader = if leader == 3 { 2 } else { 3 };
                }
                recovering = Some((index, 0));
                continue;
            }
            // The world moves on: the StatefulSet recreates the pod, it resyncs, it is ready.
            if let Some((index, rounds)) = recovering {
                world[index] = Replica {
                    revision: "new".into(),
                    state: if rounds >= 2 {
                        State::Ready
                    } else {
                        State::Resyncing
                    },
                };
                recovering = (rounds < 2).then_some((index, rounds + 1));
            }
        }
        assert_eq!(
            deleted,
            [3, 1, 2],
            "followers (highest id first), then the leader"
        );
        assert!(world
            .iter()
            .all(|r| r.revision == "new" && r.state == State::Ready));
        assert_eq!(progress, None, "over once every replica is back");
    }

    /// The last replica replaced on the new revision, still resyncing (or crashing), is not
    /// an upgrade done, nor a replica running the revision; without an upgrade under way, a
    /// replica down is no upgrade either.
    #[test]
    fn an_upgrade_is_over_once_its_last_replica_is_back_and_caught_up() {
        let mut world = ready_on("new");
        world[1].state = State::Resyncing;
        let under_way = UpgradeStatus {
            revision: "new".into(),
            updated: 2,
            total: 3,
            waiting_for: None,
        };
        let step = |world: &[Replica], previous| {
            next_step(
                &observe(world, 3),
                Some("new"),
                Some(3),
                Some(&behind(world)),
                previous,
            )
        };
        let waiting = step(&world, Some(&under_way));
        assert_eq!(waiting.replace, None);
        let progress = waiting.progress.expect("still upgrading");
        assert!(progress.waiting_for.unwrap().contains("order replica 2"));
        assert_eq!(step(&world, None).progress, None, "no upgrade under way");
        world[1].state = State::Gone;
        assert_eq!(
            step(&world, Some(&under_way)).progress.map(|p| p.updated),
            Some(2)
        );
        world[1].state = State::Ready;
        assert_eq!(step(&world, Some(&under_way)), step(&world, None));
        assert_eq!(step(&world, Some(&under_way)).progress, None);
    }

    #[test]
    fn nothing_is_replaced_while_a_replica_is_down_or_without_a_new_revision() {
        let mut world = ready_on("old");
        world[0].state = State::Resyncing;
        let step = next_step(
            &observe(&world, 3),
            Some("new"),
            Some(3),
            Some(&behind(&world)),
            None,
        );
        assert_eq!(step.replace, None);
        let progress = step.progress.expect("upgrading");
        assert_eq!((progress.updated, progress.total), (0, 3));
        assert!(progress.waiting_for.unwrap().contains("order replica 1"));
        // Without the leader's count of who is behind, nothing goes either.
        world[0].state = State::Ready;
        let step = next_step(&observe(&world, 3), Some("new"), Some(3), None, None);
        assert_eq!(step.replace, None);

        // No update revision, or every pod already runs it: nothing to do.
        for revision in [None, Some("old")] {
            let behind = behind(&world);
            let step = next_step(&observe(&world, 3), revision, Some(3), Some(&behind), None);
            let nothing = Step {
                replace: None,
                progress: None,
            };
            assert_eq!(step, nothing, "update revision {revision:?}");
        }
    }
}
