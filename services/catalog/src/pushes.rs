//! The catalog's invalidation pushes: each numbered ([`PushMark`]), and sent only to the
//! frontends that may still trust what they cached.
//!
//! A frontend trusts its cache for [`CACHE_LEASE`] after a probe it sent, and only once it has
//! every push that probe's answer counts. So a frontend process that has not probed this
//! catalog for longer than the lease trusts nothing it cached: its next probe counts a push it
//! never got, and it clears its cache before it trusts anything again. Such a frontend is left
//! out of a push instead of waited for, so that a hung one (SIGSTOP, a stuck disk) holds writes
//! for one push's deadline, not every write until it is restarted. Frontends name their
//! process in their probes and in their answers to pushes ([`FRONTEND_PROCESS`]), so the
//! catalog knows which process answers at each address and when that process last probed.
//!
//! An address no known process answers at, whose pushes have failed for a lease while no
//! stranger probed, gets trials too: nothing there holds a lease.
//!
//! A process that still probes but that a push did not reach (a one-way partition) is refused
//! the lease in its probes' answers until a push reaches it again; once the leases it renewed
//! before have run out, it is only sent trials, one at a time, that nobody waits for.
//!
//! [`FRONTEND_PROCESS`]: stocknet_common::wire::FRONTEND_PROCESS

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use stocknet_common::wire::{PushMark, CACHE_LEASE};
use stocknet_common::BaseUrl;

/// Beyond the lease, for a frontend's clock running slightly slower than this one's.
pub(crate) const LEASE_MARGIN: Duration = Duration::from_millis(50);

/// The longest process name a frontend may give; a longer one counts as none.
const MAX_PROCESS_NAME: usize = 64;

#[derive(Debug)]
pub struct Pushes {
    /// Names this process: its start, in nanoseconds since the epoch.
    boot: u64,
    /// No frontend holds a lease from a probe this process answered before this.
    started: Instant,
    ledger: Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    /// The last push numbered.
    last: u64,
    /// The frontend process that last took a push at each address.
    at: HashMap<String, String>,
    /// When each frontend process last probed: its lease runs from no later than that.
    probed: HashMap<String, Instant>,
    /// When a probe last came from a frontend that no address is known to reach: one not yet
    /// pushed to where it listens now (just restarted), or one that does not name itself.
    stranger: Option<Instant>,
    /// Frontend processes a push did not reach, and since when their probes renew no lease.
    unreached: HashMap<String, Instant>,
    /// Addresses with a trial push in flight.
    trying: HashSet<String>,
    /// Addresses no process is known at whose pushes failed, and since when: a frontend that
    /// hung before it took a push from this catalog process (or while this one restarted).
    silent: HashMap<String, Instant>,
    /// When an empty push last went out for a trial ([`Pushes::claim_trial`]).
    trial_offered: Option<Instant>,
}

impl Default for Pushes {
    fn default() -> Self {
        Self::named(boot_after(0, std::time::SystemTime::now()))
    }
}

/// The name of a catalog process that starts at `now` after one named `previous`: its start,
/// in nanoseconds since the epoch, unless the clock was set back past `previous` (frontends
/// take a process of a lower name for an earlier one, and its prices for old news).
pub fn boot_after(previous: u64, now: std::time::SystemTime) -> u64 {
    let since_epoch = now.duration_since(std::time::UNIX_EPOCH);
    let now = since_epoch.map_or(0, |since| {
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    });
    now.max(previous.saturating_add(1))
}

impl Pushes {
    /// The pushes of the catalog process named `boot` ([`PushMark::boot`]).
    pub fn named(boot: u64) -> Self {
        Self {
            boot,
            started: Instant::now(),
            ledger: Mutex::default(),
        }
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a lease from a probe noted at `since` (none: before this process started) has
    /// run out by `now`.
    fn lapsed(&self, since: Option<Instant>, now: Instant) -> bool {
        let since = since.map_or(self.started, |at| at.max(self.started));
        now.saturating_duration_since(since) > CACHE_LEASE + LEASE_MARGIN
    }

    /// The catalog process ([`PushMark::boot`]).
    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// The last push numbered, for a caller that is not a frontend.
    pub fn mark(&self) -> PushMark {
        self.mark_of(&self.ledger())
    }

    fn mark_of(&self, ledger: &Ledger) -> PushMark {
        PushMark {
            boot: self.boot,
            sequence: ledger.last,
        }
    }

    /// Notes a frontend's probe (`process`: the name it gave, if one it can be trusted for),
    /// and returns the mark to answer it with and whether the prober may renew its lease from
    /// the answer: not while pushes do not reach it. All under the lock that numbers pushes: a
    /// push numbered later sees this probe, and one numbered earlier is counted in the mark.
    pub fn probed(&self, process: Option<&str>, now: Instant) -> (PushMark, bool) {
        let mut ledger = self.ledger();
        let process = process.filter(|name| name.len() <= MAX_PROCESS_NAME);
        let known = process.is_some_and(|name| ledger.at.values().any(|p| p == name));
        if let Some(name) = process {
            ledger.probed.insert(name.to_owned(), now);
        }
        if !known {
            ledger.stranger = Some(now);
        }
        let lease = process.is_none_or(|name| !ledger.unreached.contains_key(name));
        (self.mark_of(&ledger), lease)
    }

    /// Numbers the next push, and says how each of `frontends` gets it. A frontend's process
    /// that has not probed within a lease is skipped; one whose probes have been refused the
    /// lease for longer than a lease (pushes do not reach it) gets a trial, not waited for, one
    /// at a time. Neither while a stranger has probed within a lease. Also returns the
    /// processes that may hold a lease now, from probes answered before this push was numbered:
    /// those the push must reach ([`Pushes::missed`]).
    pub fn next(
        &self,
        frontends: &[BaseUrl],
        now: Instant,
    ) -> (PushMark, Vec<Delivery>, Vec<String>) {
        let mut guard = self.ledger();
        let ledger = &mut *guard;
        ledger.last += 1;
        let lapsed = |since| self.lapsed(since, now);
        ledger.probed.retain(|_, at| !lapsed(Some(*at)));
        // Addresses no longer pushed to (a frontend pod gone from the DNS answer) are forgotten:
        // should one come back, it is pushed to until it answers again.
        ledger
            .at
            .retain(|address, _| frontends.iter().any(|f| f.as_str() == address));
        let at = &ledger.at;
        // A process refused the lease stays refused while it probes, known at an address or
        // not (one no listed address reaches: see [`Pushes::missed`]).
        let probed = &ledger.probed;
        ledger
            .unreached
            .retain(|process, _| at.values().any(|p| p == process) || probed.contains_key(process));
        let listed = |address: &String| frontends.iter().any(|f| f.as_str() == address);
        ledger.trying.retain(listed);
        ledger.silent.retain(|address, _| listed(address));
        let stranger = !lapsed(ledger.stranger);
        let plan = frontends
            .iter()
            .map(|frontend| {
                let Some(process) = ledger.at.get(frontend.as_str()) else {
                    // Whatever listens here holds no lease once no stranger has probed
                    // within one: a process that probed within a lease is either known at
                    // an address of its own or a stranger. So an address whose pushes have
                    // failed for a lease gets trials, and a hung frontend there holds no
                    // write for a push's deadline.
                    let silent = ledger
                        .silent
                        .get(frontend.as_str())
                        .is_some_and(|since| lapsed(Some(*since)));
                    return if stranger || !silent {
                        Delivery::Wait
                    } else if ledger.trying.insert(frontend.as_str().to_owned()) {
                        Delivery::Try
                    } else {
                        Delivery::Skip
                    };
                };
                if stranger {
                    Delivery::Wait
                } else if lapsed(ledger.probed.get(process).copied()) {
                    Delivery::Skip
                } else if ledger
                    .unreached
                    .get(process)
                    .is_some_and(|since| lapsed(Some(*since)))
                {
                    if ledger.trying.insert(frontend.as_str().to_owned()) {
                        Delivery::Try
                    } else {
                        Delivery::Skip
                    }
                } else {
                    Delivery::Wait
                }
            })
            .collect();
        let holders = ledger
            .probed
            .keys()
            .filter(|process| {
                !ledger
                    .unreached
                    .get(*process)
                    .is_some_and(|since| lapsed(Some(*since)))
            })
            .cloned()
            .collect();
        (self.mark_of(ledger), plan, holders)
    }

    /// Numbers one more part of the push [`next`](Self::next) numbered, sent the same way.
    pub fn next_part(&self) -> PushMark {
        let mut ledger = self.ledger();
        ledger.last += 1;
        self.mark_of(&ledger)
    }

    /// Until when a frontend may hold a lease from a probe the catalog process before this
    /// one answered.
    pub fn leases_from_before_start_end(&self) -> Instant {
        self.started + CACHE_LEASE + LEASE_MARGIN
    }

    /// Whether to send an empty push for a trial, with nothing else to push: a push now would
    /// send one (a process that still probes has been refused the lease for longer than a
    /// lease, with no trial to it in flight, and no stranger has every push waited for), and
    /// none went out for one within a lease. Claimed here: updates in quick succession, or a
    /// trial refused at once, send one a lease.
    pub fn claim_trial(&self, now: Instant) -> bool {
        let mut ledger = self.ledger();
        let lapsed = |since| self.lapsed(since, now);
        let offered = ledger
            .trial_offered
            .is_some_and(|at| now < at + CACHE_LEASE);
        let due = !offered
            && lapsed(ledger.stranger)
            && ledger.at.iter().any(|(address, process)| {
                !ledger.trying.contains(address)
                    && !lapsed(ledger.probed.get(process).copied())
                    && ledger
                        .unreached
                        .get(process)
                        .is_some_and(|since| lapsed(Some(*since)))
            });
        if due {
            ledger.trial_offered = Some(now);
        }
        due
    }

    /// A push to `frontend` was taken, by the process it names (or by one that named none):
    /// pushes reach it.
    pub fn taken(&self, frontend: &BaseUrl, process: Option<&str>) {
        let mut ledger = self.ledger();
        ledger.trying.remove(frontend.as_str());
        ledger.silent.remove(frontend.as_str());
        match process.filter(|name| name.len() <= MAX_PROCESS_NAME) {
            Some(name) => {
                ledger.unreached.remove(name);
                let before = ledger
                    .at
                    .insert(frontend.as_str().to_owned(), name.to_owned());
                // Another process listens where it did: it is gone (a restart on the same
                // port), and holds no lease that a push must reach.
                if let Some(gone) = before.filter(|before| before != name) {
                    ledger.probed.remove(&gone);
                    ledger.unreached.remove(&gone);
                }
            }
            None => {
                ledger.at.remove(frontend.as_str());
            }
        }
    }

    /// After a push to `frontends`, at `now`: those of `holders` (the processes that may have
    /// held a lease when it was numbered: [`next`](Self::next)) that no address of `frontends`
    /// is known to reach: a frontend missing from the DNS answer (not yet in it, or DNS
    /// failing), or listening where it is not listed. They are refused the lease from now on,
    /// as after a failed push, until a push reaches them; the push must wait until the leases
    /// they hold have run out. (Each frontend is to be listed at its own address: behind one
    /// address several would be taken for one.)
    pub fn missed(&self, holders: &[String], frontends: &[BaseUrl], now: Instant) -> Vec<String> {
        let mut guard = self.ledger();
        let ledger = &mut *guard;
        let reached = |process: &String| {
            frontends
                .iter()
                .any(|f| ledger.at.get(f.as_str()) == Some(process))
        };
        let missed: Vec<String> = holders
            .iter()
            .filter(|process| ledger.probed.contains_key(*process) && !reached(process))
            .cloned()
            .collect();
        for process in &missed {
            let since = ledger.probed.get(process).map_or(now, |&at| at.max(now));
            ledger.unreached.entry(process.clone()).or_insert(since);
        }
        missed
    }

    /// A push to `frontend` failed (no answer in time, cut off, refused) at `now`: from then
    /// (or from its last probe, if the clock was read before that was noted), the process last
    /// there is refused the lease in its probes' answers until a push reaches it.
    pub fn failed(&self, frontend: &BaseUrl, now: Instant) {
        let mut ledger = self.ledger();
        Self::refuse(&mut ledger, frontend, now);
    }

    fn refuse(ledger: &mut Ledger, frontend: &BaseUrl, now: Instant) {
        ledger.trying.remove(frontend.as_str());
        match ledger.at.get(frontend.as_str()).cloned() {
            Some(process) => {
                let since = ledger.probed.get(&process).map_or(now, |&at| at.max(now));
                ledger.unreached.entry(process).or_insert(since);
            }
            None => {
                ledger
                    .silent
                    .entry(frontend.as_str().to_owned())
                    .or_insert(now);
            }
        }
    }

    /// No connection to `frontend` could be made at `now` (`timed_out`: nothing answered
    /// the attempt, rather than a refusal). If the process known there has probed within a
    /// lease, it is alive and cut off (a one-way partition that refuses or drops
    /// connections): it is refused the lease as after a failed push, and this returns true.
    /// Otherwise nothing is known to listen there any more, and whatever starts there is a
    /// stranger until it takes a push. An attempt that timed out counts towards the address
    /// being silent: a host that drops packets (a node gone, its pod still listed) would
    /// otherwise cost every push the connection's deadline, for as long as it is listed.
    pub fn not_connected(&self, frontend: &BaseUrl, now: Instant, timed_out: bool) -> bool {
        let mut ledger = self.ledger();
        let process = ledger.at.get(frontend.as_str());
        let probed = process
            .and_then(|process| ledger.probed.get(process))
            .copied();
        let alive = probed.is_some() && !self.lapsed(probed, now);
        if alive {
            Self::refuse(&mut ledger, frontend, now);
        } else {
            ledger.trying.remove(frontend.as_str());
            ledger.at.remove(frontend.as_str());
            match timed_out {
                true => {
                    ledger
                        .silent
                        .entry(frontend.as_str().to_owned())
                        .or_insert(now);
                }
                false => {
                    ledger.silent.remove(frontend.as_str());
                }
            }
        }
        alive
    }
}

/// How one frontend gets a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Sent, and waited for.
    Wait,
    /// Not sent: the frontend trusts nothing it cached.
    Skip,
    /// Sent, not waited for: whether it reaches a frontend that pushes did not reach.
    Try,
}

#[cfg(test)]
mod tests {
    use super::Delivery::{Skip, Try, Wait};
    use super::*;

    fn url(port: u16) -> BaseUrl {
        format!("http://127.0.0.1:{port}").parse().unwrap()
    }

    /// A process started with the clock set back past the last one's start is named after
    /// it all the same: frontends order catalog processes by name.
    #[test]
    fn a_process_started_with_the_clock_set_back_is_named_after_the_last() {
        let at = |secs| std::time::UNIX_EPOCH + Duration::from_secs(secs);
        let first = boot_after(0, at(1_000));
        assert_eq!(first, 1_000_000_000_000);
        let set_back = boot_after(first, at(990));
        assert!(set_back > first, "{set_back}");
        assert_eq!(boot_after(set_back, at(2_000)), 2_000_000_000_000);
    }

    /// A catalog process that started `ago` before the tests' times.
    fn pushes_started(ago: Duration) -> (Pushes, Instant) {
        let pushes = Pushes::default();
        (pushes, Instant::now() + ago)
    }

    /// A catalog process that started 5 s before `t0`, pushing to one address, where
    /// `process` took push 1 at `t0`.
    fn one_frontend(process: &str) -> (Pushes, Instant, BaseUrl) {
        let (pushes, t0) = pushes_started(Duration::from_secs(5));
        let one = url(1);
        pushes.next(std::slice::from_ref(&one), t0);
        pushes.taken(&one, Some(process));
        (pushes, t0, one)
    }

    /// Like [`one_frontend`], with two addresses, where `p1` and `p2` took push 1.
    fn two_frontends() -> (Pushes, Instant, [BaseUrl; 2]) {
        let (pushes, t0) = pushes_started(Duration::from_secs(5));
        let frontends = [url(1), url(2)];
        pushes.next(&frontends, t0);
        pushes.taken(&frontends[0], Some("p1"));
        pushes.taken(&frontends[1], Some("p2"));
        (pushes, t0, frontends)
    }

    const LEASE: Duration = CACHE_LEASE.saturating_add(LEASE_MARGIN);
    const TICK: Duration = Duration::from_millis(1);

    #[test]
    fn a_lease_holder_no_listed_address_reaches_is_missed_and_refused_the_lease() {
        let (pushes, t0, frontends) = two_frontends();
        pushes.probed(Some("p1"), t0);
        pushes.probed(Some("p2"), t0);
        let (_, _, holders) = pushes.next(&frontends, t0);
        pushes.taken(&frontends[0], Some("p1"));
        pushes.taken(&frontends[1], Some("p2"));
        assert!(
            pushes.missed(&holders, &frontends, t0).is_empty(),
            "both reached"
        );
        // DNS answers without p2 (failing, or not yet listing it): p2 may hold a lease.
        let only_one = std::slice::from_ref(&frontends[0]);
        let (_, plan, holders) = pushes.next(only_one, t0 + TICK);
        assert_eq!(plan, [Wait]);
        // A process that first probes once the push is numbered holds no lease it must reach.
        pushes.probed(Some("p9"), t0 + TICK);
        pushes.taken(&frontends[0], Some("p1"));
        assert_eq!(pushes.missed(&holders, only_one, t0 + TICK), ["p2"]);
        assert!(
            !pushes.probed(Some("p2"), t0 + 2 * TICK).1,
            "refused the lease"
        );
        // Refused for longer than a lease, p2 holds none: nothing more to wait for, and it
        // stays refused while it probes unlisted.
        let later = t0 + 2 * TICK + LEASE + TICK;
        assert!(!pushes.probed(Some("p2"), later).1);
        let (_, _, holders) = pushes.next(only_one, later);
        assert!(pushes.missed(&holders, only_one, later).is_empty());
        assert!(!pushes.probed(Some("p2"), later + TICK).1);
        // Listed again (an address no longer listed was forgotten), it is pushed to and waited
        // for, and a push that reaches it gives the lease back.
        let (_, plan, _) = pushes.next(&frontends, later + TICK);
        assert_eq!(plan, [Wait, Wait]);
        pushes.taken(&frontends[1], Some("p2"));
        assert!(pushes.probed(Some("p2"), later + 2 * TICK).1);
    }

    /// An address whose connections time out (a host that drops packets: a node gone with its
    /// frontend pod still listed) is waited for at first, and once it has been silent for a
    /// lease it gets trials only, not waited for: every push used to wait out the
    /// connection's deadline there, for as long as it was listed.
    #[test]
    fn an_address_whose_connections_time_out_is_not_waited_for_after_a_lease() {
        let (pushes, t0) = pushes_started(Duration::from_secs(5));
        let gone = url(1);
        let frontends = std::slice::from_ref(&gone);
        let mut now = t0;
        let (_, plan, _) = pushes.next(frontends, now);
        assert_eq!(plan, [Wait]);
        while now < t0 + LEASE {
            assert!(!pushes.not_connected(&gone, now, true));
            now += Duration::from_millis(100);
            let (_, plan, _) = pushes.next(frontends, now);
            let expected = if now > t0 + LEASE { Try } else { Wait };
            assert_eq!(plan, [expected], "{:?} after the first", now - t0);
        }
        // Refused at once, nothing listens there: waited for (the attempt costs nothing).
        assert!(!pushes.not_connected(&gone, now, false));
        let (_, plan, _) = pushes.next(frontends, now + TICK);
        assert_eq!(plan, [Wait]);
    }

    #[test]
    fn a_process_another_took_the_address_of_is_gone() {
        let (pushes, t0, one) = one_frontend("p1");
        pushes.probed(Some("p1"), t0);
        // Restarted on the same port, as p3, before p1's lease ran out.
        pushes.probed(Some("p3"), t0 + TICK);
        let frontends = std::slice::from_ref(&one);
        let (_, _, holders) = pushes.next(frontends, t0 + TICK);
        pushes.taken(&one, Some("p3"));
        assert!(pushes.missed(&holders, frontends, t0 + TICK).is_empty());
    }

    #[test]
    fn a_frontend_that_stopped_probing_is_left_out_once_its_lease_has_run_out() {
        let (pushes, t0) = pushes_started(Duration::from_secs(5));
        let (one, two) = (url(1), url(2));
        let frontends = [one.clone(), two.clone()];
        pushes.probed(Some("p1"), t0);
        pushes.probed(Some("p2"), t0);
        let (first, plan, _) = pushes.next(&frontends, t0);
        assert_eq!(plan, [Wait, Wait]);
        pushes.taken(&one, Some("p1"));
        pushes.taken(&two, Some("p2"));
        // p2 goes on probing; p1 hangs after its last probe at t0.
        let later = t0 + LEASE;
        assert_eq!(pushes.probed(Some("p2"), later).0.sequence, first.sequence);
        let (_, plan, _) = pushes.next(&frontends, later);
        assert_eq!(plan, [Wait, Wait], "p1's lease may still run");
        let (second, plan, _) = pushes.next(&frontends, later + TICK);
        assert_eq!(plan, [Skip, Wait], "p1 trusts nothing it cached");
        assert_eq!(second.sequence, first.sequence + 2);
        // Back, p1 probes (and learns of the pushes it missed): it is pushed to again.
        let back = later + 10 * TICK;
        assert_eq!(pushes.probed(Some("p1"), back), (second, true));
        let (_, plan, _) = pushes.next(&frontends, back);
        assert_eq!(plan, [Wait, Wait]);
    }

    #[test]
    fn a_probe_from_a_process_no_address_is_known_for_keeps_every_frontend_pushed() {
        let (pushes, t0, one) = one_frontend("old");
        // "old" is gone and a new process listens at the same address: until it takes a push
        // there, its probes may come from there.
        let later = t0 + 2 * LEASE;
        pushes.probed(Some("new"), later);
        let (_, plan, _) = pushes.next(std::slice::from_ref(&one), later + TICK);
        assert_eq!(plan, [Wait]);
        pushes.taken(&one, Some("new"));
        // Once "new" answers there it is known, and "old"'s silence no longer matters.
        let (_, plan, _) = pushes.next(std::slice::from_ref(&one), later + LEASE);
        assert_eq!(plan, [Wait], "new probed within the lease");
        let (_, plan, _) = pushes.next(std::slice::from_ref(&one), later + LEASE + TICK);
        assert_eq!(plan, [Skip]);
        // A caller with the secret that names no process is a stranger too.
        let quiet = later + 3 * LEASE;
        pushes.probed(None, quiet);
        let (_, plan, _) = pushes.next(std::slice::from_ref(&one), quiet);
        assert_eq!(plan, [Wait]);
    }

    #[test]
    fn a_new_catalog_process_leaves_nobody_out_before_a_lease_has_passed_since_it_started() {
        let pushes = Pushes::default();
        let start = Instant::now();
        let one = url(1);
        // Pushed before it ever probed this process: it may hold a lease from a probe the
        // previous catalog process answered.
        pushes.next(std::slice::from_ref(&one), start);
        pushes.taken(&one, Some("p"));
        let (_, plan, _) = pushes.next(std::slice::from_ref(&one), start + TICK);
        assert_eq!(plan, [Wait]);
        let (_, plan, _) = pushes.next(std::slice::from_ref(&one), start + 2 * LEASE);
        assert_eq!(plan, [Skip]);
    }

    #[test]
    fn an_address_whose_answer_names_no_process_that_nobody_listens_at_or_not_listed_is_pushed_to()
    {
        let (pushes, t0, [one, two]) = two_frontends();
        let frontends = [one.clone(), two.clone()];
        pushes.taken(&one, None);
        assert!(
            !pushes.not_connected(&two, t0 + 2 * LEASE, false),
            "p2 has not probed"
        );
        let (_, plan, _) = pushes.next(&frontends, t0 + 2 * LEASE);
        assert_eq!(plan, [Wait, Wait]);
        // One left out of a push's list is forgotten: back in the list, it is pushed to.
        pushes.taken(&two, Some("p2"));
        pushes.next(std::slice::from_ref(&one), t0 + 2 * LEASE);
        let (_, plan, _) = pushes.next(&frontends, t0 + 3 * LEASE);
        assert_eq!(plan, [Wait, Wait]);
    }

    #[test]
    fn a_process_name_too_long_counts_as_none() {
        let (pushes, t0, one) = one_frontend("p");
        pushes.taken(&one, Some(&"x".repeat(MAX_PROCESS_NAME + 1)));
        let (_, plan, _) = pushes.next(std::slice::from_ref(&one), t0 + 2 * LEASE);
        assert_eq!(plan, [Wait], "no process is known at the address");
    }

    #[test]
    fn a_frontend_that_pushes_do_not_reach_is_refused_the_lease_then_tried_until_one_does() {
        let (pushes, t0, [one, two]) = two_frontends();
        let frontends = [one.clone(), two.clone()];
        assert!(pushes.probed(Some("p1"), t0).1);
        // The link to p1 drops: its push fails, while its probes still arrive.
        let cut = t0 + TICK;
        pushes.failed(&one, cut);
        let (_, lease) = pushes.probed(Some("p1"), cut + TICK);
        assert!(!lease, "no lease while pushes do not reach it");
        assert!(pushes.probed(Some("p2"), cut + TICK).1);
        // Until the leases of its probes before the cut have run out, it is waited for.
        let (_, plan, _) = pushes.next(&frontends, cut + LEASE);
        assert_eq!(plan, [Wait, Wait]);
        pushes.probed(Some("p1"), cut + LEASE);
        pushes.probed(Some("p2"), cut + LEASE);
        // Then tried, one push at a time, and not waited for.
        let (_, plan, _) = pushes.next(&frontends, cut + LEASE + TICK);
        assert_eq!(plan, [Try, Wait]);
        let (_, plan, _) = pushes.next(&frontends, cut + LEASE + 2 * TICK);
        assert_eq!(plan, [Skip, Wait], "a trial is in flight");
        // The trial fails: the next push tries again.
        pushes.failed(&one, cut + LEASE + 3 * TICK);
        let (_, plan, _) = pushes.next(&frontends, cut + LEASE + 4 * TICK);
        assert_eq!(plan, [Try, Wait]);
        // A trial reaches it: the lease again, and pushes waited for.
        pushes.taken(&one, Some("p1"));
        assert!(pushes.probed(Some("p1"), cut + LEASE + 5 * TICK).1);
        let (_, plan, _) = pushes.next(&frontends, cut + LEASE + 5 * TICK);
        assert_eq!(plan, [Wait, Wait]);
    }

    /// With nothing to push, a frontend refused the lease gets its trial as an empty push:
    /// claimed once, at most once a lease, and not while a stranger has every push waited for.
    #[test]
    fn an_empty_push_for_a_trial_is_claimed_once_a_lease() {
        let (pushes, t0, [one, _]) = two_frontends();
        let cut = t0 + TICK;
        pushes.failed(&one, cut);
        let probe = |at| {
            pushes.probed(Some("p1"), at);
            pushes.probed(Some("p2"), at);
        };
        probe(cut + LEASE);
        assert!(
            !pushes.claim_trial(cut + LEASE),
            "refused for a lease at most"
        );
        let due = cut + LEASE + TICK;
        assert!(pushes.claim_trial(due));
        assert!(!pushes.claim_trial(due), "claimed");
        // Refused again at once (a connection refused): the next one a lease later.
        pushes.failed(&one, due + TICK);
        assert!(!pushes.claim_trial(due + 2 * TICK));
        probe(due + CACHE_LEASE);
        assert!(pushes.claim_trial(due + CACHE_LEASE));
        // A stranger probes: every push is waited for, and no trial is sent.
        pushes.probed(None, due + CACHE_LEASE + TICK);
        probe(due + 2 * CACHE_LEASE + TICK);
        assert!(!pushes.claim_trial(due + 2 * CACHE_LEASE + 2 * TICK));
    }

    #[test]
    fn a_failed_push_to_an_address_no_process_is_known_at_refuses_nobody_the_lease() {
        let (pushes, t0) = pushes_started(Duration::from_secs(5));
        let one = url(1);
        pushes.next(std::slice::from_ref(&one), t0);
        pushes.failed(&one, t0);
        assert!(pushes.probed(Some("p"), t0 + TICK).1);
        // "p", a stranger, may be the one there: waited for while its lease may run.
        let (_, plan, _) = pushes.next(std::slice::from_ref(&one), t0 + LEASE);
        assert_eq!(plan, [Wait]);
    }

    /// A frontend that hung before it took a push from this catalog process (or hung while
    /// the catalog restarted) holds each push for its deadline only until a lease has passed
    /// since pushes to it began to fail, and no stranger probed within it: then nothing there
    /// holds a lease, and it gets trials, one at a time, that nobody waits for.
    #[test]
    fn an_address_nobody_known_answers_at_gets_trials_once_its_pushes_failed_for_a_lease() {
        let (pushes, t0) = pushes_started(Duration::from_secs(5));
        let (one, two) = (url(1), url(2));
        let frontends = [one.clone(), two.clone()];
        pushes.next(&frontends, t0);
        pushes.taken(&two, Some("p2"));
        pushes.failed(&one, t0 + LEASE / 2);
        pushes.probed(Some("p2"), t0 + LEASE);
        let (_, plan, _) = pushes.next(&frontends, t0 + LEASE);
        assert_eq!(plan, [Wait, Wait], "failing for less than a lease");
        let later = t0 + LEASE / 2 + LEASE + TICK;
        pushes.probed(Some("p2"), later);
        let (_, plan, _) = pushes.next(&frontends, later);
        assert_eq!(plan, [Try, Wait]);
        let (_, plan, _) = pushes.next(&frontends, later + TICK);
        assert_eq!(plan, [Skip, Wait], "one trial at a time");
        pushes.failed(&one, later + 2 * TICK);
        let (_, plan, _) = pushes.next(&frontends, later + 3 * TICK);
        assert_eq!(plan, [Try, Wait], "its failures still count from the first");

        // A stranger probing (it may be listening there) has every push waited for again.
        let stranger = later + 4 * TICK;
        pushes.probed(Some("p1"), stranger);
        pushes.failed(&one, stranger);
        let (_, plan, _) = pushes.next(&frontends, stranger + TICK);
        assert_eq!(plan, [Wait, Wait]);
        // Once a push there is taken, it is known: its own probes decide.
        pushes.taken(&one, Some("p1"));
        pushes.failed(&one, stranger + 2 * TICK);
        pushes.probed(Some("p2"), stranger + LEASE);
        let (_, plan, _) = pushes.next(&frontends, stranger + LEASE + 3 * TICK);
        assert_eq!(plan, [Skip, Wait], "p1 has not probed within a lease");
    }

    #[test]
    fn a_refused_connection_to_a_process_that_still_probes_refuses_it_the_lease() {
        let (pushes, t0, one) = one_frontend("p");
        pushes.probed(Some("p"), t0);
        // Alive, cut off by a rule that refuses connections: as after a failed push.
        assert!(pushes.not_connected(&one, t0 + TICK, false));
        assert!(!pushes.probed(Some("p"), t0 + 2 * TICK).1);
        pushes.probed(Some("p"), t0 + LEASE);
        let (_, plan, _) = pushes.next(std::slice::from_ref(&one), t0 + 2 * TICK + LEASE + TICK);
        assert_eq!(plan, [Try]);
    }

    #[test]
    fn the_refusal_runs_from_the_last_probe_noted_if_the_failure_was_timed_before_it() {
        let (pushes, t0, one) = one_frontend("p");
        // The failure's time was read, then a probe was noted, then the failure.
        let failure = t0 + TICK;
        pushes.probed(Some("p"), failure + 10 * TICK);
        pushes.failed(&one, failure);
        pushes.probed(Some("p"), failure + LEASE + 5 * TICK);
        let (_, plan, _) = pushes.next(std::slice::from_ref(&one), failure + LEASE + 5 * TICK);
        assert_eq!(plan, [Wait], "the probe's lease may still run");
        let (_, plan, _) = pushes.next(std::slice::from_ref(&one), failure + LEASE + 11 * TICK);
        assert_eq!(plan, [Try]);
    }
}
