//! The seeds' preference, kept as a preference: in steady state the highest-id voter leads.
//! Elections already favour it (it stands first, see [`super::election_timeout`]), but after a
//! fault another replica leads until the next fault. So a leader that sees a voter with a
//! higher id caught up with it hands the leadership over (Raft's leadership transfer, the
//! dissertation's §3.10; openraft 0.9 has none): it stops taking commands and reads (503,
//! nothing executed), lets those in flight finish, stops its heartbeats, grants that voter
//! alone its pre-vote and its vote, and tells every voter of the handover ([`Handover`]): that
//! voter stands at once (Raft's TimeoutNow), the others neither stand nor grant a pre-vote to
//! anyone else meanwhile. In a group of three the leader's vote and the voter's own are a
//! majority: the voter is elected within a round trip. In a group of five it needs one more,
//! which the others give once their leases ran out. Told or not, the voter stands; if it is
//! not elected in time, the leader takes up its heartbeats again and keeps leading.
//!
//! A leader that cannot reach the catalog refuses every new order, while a voter that can
//! would take them: such a leader (a link to the catalog cut, or dropping packets, on its node
//! alone) hands the leadership to the highest voter that keeps up and reaches the catalog, the
//! same way. And a leader hands over by preference only to a voter that reaches the catalog,
//! or the two would pass the leadership back and forth.
//!
//! Safety never rests on this: any voter may win any election, and the handover only decides
//! when the leader stops sending heartbeats.

use std::sync::Arc;
use std::time::Duration;

use openraft::metrics::RaftMetrics;
use openraft::{BasicNode, ServerState};
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use super::{ElectionTransport, Elections, Handover, Raft, HEARTBEAT};

/// How long a replica leads before it hands over: a new leader settles first (its takeover,
/// the catalog), and a group that just had a fault sees one change at a time.
pub const LEAD_SETTLE: Duration = Duration::from_secs(2);

/// How long the voter must have kept up with the leader before it is handed the leadership:
/// a replica back from a restart or a hang proves it is answering first.
pub const CAUGHT_UP_FOR: Duration = Duration::from_secs(1);

/// How long the leader waits for the commands in flight to finish before it gives up a
/// handover (and keeps leading).
const DRAIN_DEADLINE: Duration = Duration::from_secs(1);

/// How long the leader waits, heartbeats stopped, for the voter to be elected: told of the
/// handover it stands at once; untold (the announcement lost), one election timeout after the
/// last heartbeat, and again a timeout later. The other voters wait for it as long.
pub(super) const ELECTED_DEADLINE: Duration = Duration::from_secs(2);

/// After a handover that did not happen, the next waits this long, doubling up to
/// [`MAX_RETRY`]: a voter that keeps up but does not stand (hung between two heartbeats)
/// costs a pause now and then, not every few seconds.
const FIRST_RETRY: Duration = Duration::from_secs(10);
const MAX_RETRY: Duration = Duration::from_secs(160);

/// The voter a leader with `metrics` would hand over to: the highest-id voter above its own,
/// other than `passed_over`, that keeps up with its log, while the membership is not changing
/// (a joint membership is left to finish first).
pub fn preferred(metrics: &RaftMetrics<u64, BasicNode>, passed_over: Option<u64>) -> Option<u64> {
    if metrics.state != ServerState::Leader {
        return None;
    }
    let membership = metrics.membership_config.membership();
    if membership.get_joint_config().len() != 1 {
        return None;
    }
    let voters: Vec<u64> = membership.voter_ids().collect();
    voters
        .into_iter()
        .rev()
        .take_while(|&voter| voter > metrics.id)
        .filter(|&voter| Some(voter) != passed_over)
        .find(|&voter| caught_up(metrics, voter, KEPT_UP_ENTRIES))
}

/// How many entries behind the leader a voter may be seen and still count as keeping up: under
/// load the entry in flight is rarely acknowledged yet. (The handover itself waits until it
/// holds them all.)
const KEPT_UP_ENTRIES: u64 = 8;

/// Whether the leader with `metrics` has seen `voter` hold its log but for `lag` entries.
pub fn caught_up(metrics: &RaftMetrics<u64, BasicNode>, voter: u64, lag: u64) -> bool {
    let matched = metrics
        .replication
        .as_ref()
        .and_then(|replication| replication.get(&voter));
    // Entries held, against entries written (index 0 is the first).
    let held = |index: Option<u64>| index.map_or(0, |index| index + 1);
    matched.is_some_and(|matched| {
        held(matched.map(|id| id.index)) + lag >= held(metrics.last_log_index)
    })
}

/// What the handover needs to know of the replica that leads.
pub trait Leader: Send + Sync + 'static {
    /// Whether every command this leader took is answered: committed and applied to the book
    /// and, with `catalog`, in the catalog too.
    fn drained(&self, catalog: bool) -> bool;
    /// Whether this leader cannot apply its log to the catalog now (its rounds, or its
    /// takeover, fail).
    fn catalog_failing(&self) -> bool;
}

/// How long a leader's catalog rounds fail before it looks for a voter that reaches the
/// catalog to hand the leadership to, the first time: a catalog's own restart is over by then
/// (and a leader whose rounds work again before the voters answer keeps the leadership). Each
/// handover for the catalog doubles it, up to [`MAX_CATALOG_LOST_FOR`], until the catalog has
/// worked for this replica, leading, for [`CATALOG_WORKED_FOR`]. A voter's check (a snapshot)
/// can pass where a leader's rounds (applies, with an fsync) fail, on a catalog whose disk is
/// slow or full: leaders then pass the leadership round, ever more slowly.
pub const CATALOG_LOST_FOR: Duration = Duration::from_millis(1500);
const MAX_CATALOG_LOST_FOR: Duration = Duration::from_secs(30);

/// How long the catalog works for a replica, leading, before its wait for the next handover
/// for the catalog is [`CATALOG_LOST_FOR`] again: a catalog that fails every leader fails one
/// within this of its takeover; a link cut again later is a new fault.
const CATALOG_WORKED_FOR: Duration = Duration::from_secs(5);

/// After a look for a voter that reaches the catalog found none (the catalog is down for all,
/// not only for this leader), the next waits this long, doubling up to
/// [`MAX_CATALOG_LOST_FOR`]. A preferred voter that says it does not reach the catalog is passed
/// over for the next for this long, then asked again.
const CATALOG_RETRY: Duration = Duration::from_secs(3);

/// How long a voter asked whether it reaches the catalog has to answer: its own call to the
/// catalog's deadline, and a margin.
const CATALOG_CHECK_DEADLINE: Duration = Duration::from_millis(1750);

/// How much longer than for the voters' answers a leader that cannot reach the catalog waits
/// for its own call to the catalog: a catalog that answers the voters answers it as soon.
const OWN_CHECK_GRACE: Duration = Duration::from_millis(250);

/// Runs on every replica, and hands the leadership over while it leads:
/// - when it cannot reach the catalog (every new order is refused then) for
///   [`CATALOG_LOST_FOR`], to the highest caught-up voter that can;
/// - otherwise, when the same preferred voter (see [`preferred`]) has kept up for
///   [`CAUGHT_UP_FOR`], to that voter, if it reaches the catalog (a voter that cannot would
///   only hand it back).
///
/// Runs until aborted.
pub async fn steer(
    raft: Raft,
    elections: Arc<Elections>,
    leader: impl Leader,
    transport: impl ElectionTransport,
    handovers: Counter,
) {
    let mut ticks = tokio::time::interval(HEARTBEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // (term, since): when this replica began leading its term.
    let mut leading_since: Option<(u64, Instant)> = None;
    // (voter, since): since when the preferred voter has kept up.
    let mut caught_up_since: Option<(u64, Instant)> = None;
    let mut preference = Backoff::new(FIRST_RETRY, MAX_RETRY);
    // The preferred voter that said it does not reach the catalog, until when it is passed
    // over for the next.
    let mut passed_over: Option<(u64, Instant)> = None;
    // Leading, since when the catalog has failed or worked for this replica.
    let mut catalog_since: Option<(bool, Instant)> = None;
    let mut catalog_lost_for = CATALOG_LOST_FOR;
    let mut catalog_look = Backoff::new(CATALOG_RETRY, MAX_CATALOG_LOST_FOR);
    loop {
        ticks.tick().await;
        let metrics = raft.metrics().borrow().clone();
        let now = Instant::now();
        let term = metrics.current_term;
        if metrics.state != ServerState::Leader {
            (leading_since, caught_up_since, catalog_since) = (None, None, None);
            catalog_look.reset();
            continue;
        }
        let led_since = match leading_since {
            Some((led, since)) if led == term => since,
            _ => {
                (leading_since, catalog_since) = (Some((term, now)), None);
                catalog_look.reset();
                now
            }
        };
        let failing = leader.catalog_failing();
        let since = match catalog_since {
            Some((was_failing, since)) if was_failing == failing => since,
            _ => catalog_since.insert((failing, now)).1,
        };
        if failing {
            if now < since + catalog_lost_for || !catalog_look.due(now) {
                continue;
            }
            // This replica asks the catalog itself meanwhile: a catalog that comes back (from a
            // hang, a restart) while the voters are asked answers it too, as soon as it answers
            // them, and the leadership stays. (Its rounds may not have tried since.) Through a
            // link that drops everything its call would wait out its deadline: it is waited
            // for only a little longer than the voters' answers.
            let own_check = tokio::spawn({
                let elections = elections.clone();
                async move {
                    let asked = elections.reaches_catalog();
                    tokio::time::timeout(CATALOG_CHECK_DEADLINE, asked).await == Ok(true)
                }
            });
            let voter = reaching_catalog(&metrics, &transport).await;
            let abort = own_check.abort_handle();
            let reached = tokio::time::timeout(OWN_CHECK_GRACE, own_check).await;
            abort.abort();
            let reached = matches!(reached, Ok(Ok(true)));
            // Commands are taken again once a round worked; a handover now would leave theirs
            // unknown.
            if !leader.catalog_failing() || !leads_term(&raft, term) {
                continue;
            }
            if reached {
                // Its next round may work; if its rounds fail while its calls pass, the catalog
                // is in trouble, not this link: asked again later, not every tick.
                catalog_look.failed(Instant::now());
                continue;
            }
            let Some(voter) = voter else {
                tracing::warn!("this leader cannot reach the catalog, nor can any voter");
                catalog_look.failed(Instant::now());
                continue;
            };
            tracing::warn!(voter, "this leader cannot reach the catalog; handing over");
            if hand_over(&raft, &elections, &transport, voter, || {
                leader.drained(false)
            })
            .await
            {
                handovers.inc();
                catalog_lost_for = (catalog_lost_for * 2).min(MAX_CATALOG_LOST_FOR);
            } else {
                catalog_look.failed(Instant::now());
            }
            continue;
        }
        catalog_look.reset();
        if now >= since + CATALOG_WORKED_FOR {
            catalog_lost_for = CATALOG_LOST_FOR;
        }
        let skipped = passed_over
            .filter(|&(_, until)| now < until)
            .map(|(voter, _)| voter);
        let Some(voter) = preferred(&metrics, skipped) else {
            caught_up_since = None;
            continue;
        };
        let kept_up_since = match caught_up_since {
            Some((kept_up, since)) if kept_up == voter => since,
            _ => {
                caught_up_since = Some((voter, now));
                continue;
            }
        };
        if now < led_since + LEAD_SETTLE
            || now < kept_up_since + CAUGHT_UP_FOR
            || !preference.due(now)
        {
            continue;
        }
        caught_up_since = None;
        let reaches = match metrics.membership_config.membership().get_node(&voter) {
            Some(node) => says_it_reaches_catalog(&transport, voter, node).await,
            None => false,
        };
        if !reaches {
            tracing::info!(
                voter,
                "not handing over: the voter does not reach the catalog"
            );
            passed_over = Some((voter, Instant::now() + CATALOG_RETRY));
            continue;
        }
        if hand_over(&raft, &elections, &transport, voter, || {
            leader.drained(true)
        })
        .await
        {
            handovers.inc();
            preference.reset();
        } else {
            preference.failed(Instant::now());
        }
    }
}

/// Whether this replica still leads `term`.
fn leads_term(raft: &Raft, term: u64) -> bool {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    metrics.state == ServerState::Leader && metrics.current_term == term
}

/// Whether `voter` answers, within [`CATALOG_CHECK_DEADLINE`], that it reaches the catalog.
async fn says_it_reaches_catalog(
    transport: &impl ElectionTransport,
    voter: u64,
    node: &BasicNode,
) -> bool {
    let asked = transport.reaches_catalog(voter, node);
    tokio::time::timeout(CATALOG_CHECK_DEADLINE, asked).await == Ok(Some(true))
}

/// When the next attempt of a kind may be made: at once at first, and after a wait that
/// doubles with each attempt that failed since.
struct Backoff {
    first: Duration,
    max: Duration,
    wait: Duration,
    next: Instant,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            wait: first,
            next: Instant::now(),
        }
    }

    fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// An attempt failed at `now`: the next waits, twice as long as the one before.
    fn failed(&mut self, now: Instant) {
        self.next = now + self.wait;
        self.wait = (self.wait * 2).min(self.max);
    }

    /// An attempt succeeded, or what failed works again: the next may come at once.
    fn reset(&mut self) {
        (self.wait, self.next) = (self.first, Instant::now());
    }
}

/// The highest voter, other than the leader with `metrics`, that keeps up with its log and
/// answers that it reaches the catalog; asked all at once, outside a membership change.
async fn reaching_catalog(
    metrics: &RaftMetrics<u64, BasicNode>,
    transport: &impl ElectionTransport,
) -> Option<u64> {
    let membership = metrics.membership_config.membership();
    if membership.get_joint_config().len() != 1 {
        return None;
    }
    let asks = membership
        .voter_ids()
        .filter(|&id| id != metrics.id && caught_up(metrics, id, KEPT_UP_ENTRIES))
        .filter_map(|id| Some((id, membership.get_node(&id)?)))
        .map(|(id, node)| async move { (id, says_it_reaches_catalog(transport, id, node).await) });
    let answers = futures::future::join_all(asks).await;
    answers
        .into_iter()
        .filter(|&(_, reaches)| reaches)
        .map(|(id, _)| id)
        .max()
}

/// One handover to `voter`; whether this replica stopped leading.
async fn hand_over(
    raft: &Raft,
    elections: &Elections,
    transport: &impl ElectionTransport,
    voter: u64,
    drained: impl Fn() -> bool,
) -> bool {
    // From here on the replica takes no command and serves no read.
    elections.hand_to(Some(voter));
    let handed = async {
        let deadline = Instant::now() + DRAIN_DEADLINE;
        // Twice in a row, a poll apart: a command that passed the check just before the
        // handover began is proposed within that time.
        let mut quiet = 0;
        while quiet < 2 {
            let done = drained() && caught_up(&raft.metrics().borrow(), voter, 0);
            quiet = if done { quiet + 1 } else { 0 };
            if Instant::now() >= deadline {
                tracing::info!(voter, "handover given up: commands still in flight");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!(voter, "handing the leadership over");
        raft.runtime_config().heartbeat(false);
        // Told, the voter stands at once and the others wait for it; untold (the call lost),
        // it stands in its own rank's time.
        let told = announce(raft, transport, voter);
        let mut metrics = raft.server_metrics();
        let stepped_down = tokio::time::timeout(ELECTED_DEADLINE, async {
            let changed = metrics.wait_for(|m| m.state != ServerState::Leader);
            changed.await.is_ok()
        });
        let (_, stepped_down) = tokio::join!(told, stepped_down);
        let stepped_down = stepped_down == Ok(true);
        raft.runtime_config().heartbeat(true);
        if !stepped_down {
            tracing::warn!(voter, "handover did not happen; leading on");
        }
        stepped_down
    }
    .await;
    elections.hand_to(None);
    handed
}

/// How long a leader waits for the voters to take its [`Handover`]: a voter that hangs is not
/// waited for (nor, told or not, needed).
const ANNOUNCE_DEADLINE: Duration = Duration::from_millis(250);

/// Tells every voter but this leader that it hands the leadership to `voter`.
async fn announce(raft: &Raft, transport: &impl ElectionTransport, voter: u64) {
    let metrics = raft.metrics().borrow().clone();
    let request = Handover {
        leader: metrics.id,
        term: metrics.current_term,
        to: voter,
    };
    let membership = metrics.membership_config.membership();
    let told = membership
        .voter_ids()
        .filter(|&id| id != metrics.id)
        .filter_map(|id| Some((id, membership.get_node(&id)?)))
        .map(|(id, node)| {
            let request = &request;
            async move { (id, transport.announce_handover(id, node, request).await) }
        });
    let answers = tokio::time::timeout(ANNOUNCE_DEADLINE, futures::future::join_all(told)).await;
    let took = answers.is_ok_and(|answers| answers.contains(&(voter, Some(true))));
    if !took {
        tracing::info!(voter, "the voter did not take the handover");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{Membership, StoredMembership, Vote};

    use super::*;
    use crate::consensus::log_id;

    fn leader_metrics(id: u64, configs: Vec<BTreeSet<u64>>) -> RaftMetrics<u64, BasicNode> {
        let nodes: BTreeMap<u64, BasicNode> = configs
            .iter()
            .flatten()
            .map(|&id| (id, BasicNode::new(format!("http://127.0.0.1:{id}"))))
            .collect();
        RaftMetrics {
            id,
            state: ServerState::Leader,
            current_term: 2,
            vote: Vote::new_committed(2, id),
            last_log_index: Some(10),
            membership_config: Arc::new(StoredMembership::new(
                Some(log_id(1, 1)),
                Membership::new(configs, nodes),
            )),
            ..RaftMetrics::new_initial(id)
        }
    }

    fn replicated(metrics: &mut RaftMetrics<u64, BasicNode>, matched: &[(u64, u64)]) {
        let matched = matched
            .iter()
            .map(|&(id, index)| (id, Some(log_id(2, index))));
        metrics.replication = Some(matched.collect());
    }

    #[test]
    fn a_leader_prefers_the_highest_caught_up_voter_above_it_outside_a_change() {
        let three = BTreeSet::from([1, 2, 3]);
        let mut metrics = leader_metrics(1, vec![three.clone()]);
        assert_eq!(preferred(&metrics, None), None, "no replication seen yet");
        replicated(&mut metrics, &[(2, 10), (3, 10)]);
        assert_eq!(preferred(&metrics, None), Some(3));
        replicated(&mut metrics, &[(2, 10), (3, 10 - KEPT_UP_ENTRIES - 1)]);
        assert_eq!(preferred(&metrics, None), Some(2), "3 is behind");
        replicated(&mut metrics, &[(2, 10), (3, 10)]);
        assert_eq!(preferred(&metrics, Some(3)), Some(2), "3 passed over");

        let mut top = leader_metrics(3, vec![three.clone()]);
        replicated(&mut top, &[(1, 10), (2, 10)]);
        assert_eq!(preferred(&top, None), None, "the highest leads already");

        let mut joint = leader_metrics(3, vec![three, BTreeSet::from([1, 2, 3, 4, 5])]);
        replicated(&mut joint, &[(4, 10), (5, 10)]);
        assert_eq!(preferred(&joint, None), None, "the membership is changing");

        let mut follower = RaftMetrics {
            state: ServerState::Follower,
            ..leader_metrics(1, vec![BTreeSet::from([1, 2, 3])])
        };
        replicated(&mut follower, &[(2, 10), (3, 10)]);
        assert_eq!(preferred(&follower, None), None);
    }

    #[test]
    fn a_voter_is_caught_up_when_the_leader_saw_it_hold_its_log_but_for_the_lag() {
        let mut metrics = leader_metrics(2, vec![BTreeSet::from([1, 2, 3])]);
        assert!(!caught_up(&metrics, 3, 0));
        replicated(&mut metrics, &[(1, 10), (3, 9)]);
        assert!(caught_up(&metrics, 1, 0));
        assert!(!caught_up(&metrics, 3, 0));
        assert!(caught_up(&metrics, 3, 2));
    }
}
