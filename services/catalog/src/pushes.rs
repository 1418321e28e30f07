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
//! [`FRONTEND_PROCESS`]: stocknet_common::wire::FRONTEND_PROCESS

use std::collections::HashMap;
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
}

impl Default for Pushes {
    fn default() -> Self {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        Self {
            boot: now.map_or(1, |since| since.as_nanos() as u64),
            started: Instant::now(),
            ledger: Mutex::default(),
        }
    }
}

impl Pushes {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Notes a frontend's probe (`process`: the name it gave, if one it can be trusted for) and returns the mark to
    /// answer it with. Both happen under the lock that numbers pushes: a push numbered later
    /// sees this probe, and one numbered earlier is counted in the mark.
    pub fn probed(&self, process: Option<&str>, now: Instant) -> PushMark {
        let mut ledger = self.ledger();
        let process = process.filter(|name| name.len() <= MAX_PROCESS_NAME);
        let known = process.is_some_and(|name| ledger.at.values().any(|p| p == name));
        if let Some(name) = process {
            ledger.probed.insert(name.to_owned(), now);
        }
        if !known {
            ledger.stranger = Some(now);
        }
        self.mark_of(&ledger)
    }

    /// Numbers the next push, and says for each of `frontends` whether it must get it: all but
    /// those whose process has not probed within a lease, while no stranger has either.
    pub fn next(&self, frontends: &[BaseUrl], now: Instant) -> (PushMark, Vec<bool>) {
        let mut ledger = self.ledger();
        ledger.last += 1;
        let lapsed = |since: Option<Instant>| {
            let since = since.map_or(self.started, |at| at.max(self.started));
            now.saturating_duration_since(since) > CACHE_LEASE + LEASE_MARGIN
        };
        ledger.probed.retain(|_, at| !lapsed(Some(*at)));
        // Addresses no longer pushed to (a frontend pod gone from the DNS answer) are forgotten:
        // should one come back, it is pushed to until it answers again.
        ledger
            .at
            .retain(|address, _| frontends.iter().any(|f| f.as_str() == address));
        let needed = frontends
            .iter()
            .map(|frontend| match ledger.at.get(frontend.as_str()) {
                Some(process) => {
                    !lapsed(ledger.probed.get(process).copied()) || !lapsed(ledger.stranger)
                }
                None => true,
            })
            .collect();
        (self.mark_of(&ledger), needed)
    }

    /// A push to `frontend` was taken, by the process it names (or by one that named none).
    pub fn taken(&self, frontend: &BaseUrl, process: Option<&str>) {
        let mut ledger = self.ledger();
        match process.filter(|name| name.len() <= MAX_PROCESS_NAME) {
            Some(name) => {
                ledger
                    .at
                    .insert(frontend.as_str().to_owned(), name.to_owned());
            }
            None => {
                ledger.at.remove(frontend.as_str());
            }
        }
    }

    /// Nothing listens at `frontend` any more: whatever starts there is a stranger until it
    /// takes a push.
    pub fn gone(&self, frontend: &BaseUrl) {
        self.ledger().at.remove(frontend.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(port: u16) -> BaseUrl {
        format!("http://127.0.0.1:{port}").parse().unwrap()
    }

    /// A catalog process that started `ago` before the tests' times.
    fn pushes_started(ago: Duration) -> (Pushes, Instant) {
        let pushes = Pushes::default();
        (pushes, Instant::now() + ago)
    }

    const LEASE: Duration = CACHE_LEASE.saturating_add(LEASE_MARGIN);
    const TICK: Duration = Duration::from_millis(1);

    #[test]
    fn a_frontend_that_stopped_probing_is_left_out_once_its_lease_has_run_out() {
        let (pushes, t0) = pushes_started(Duration::from_secs(5));
        let (one, two) = (url(1), url(2));
        let frontends = [one.clone(), two.clone()];
        pushes.probed(Some("p1"), t0);
        pushes.probed(Some("p2"), t0);
        let (first, needed) = pushes.next(&frontends, t0);
        assert_eq!(needed, [true, true]);
        pushes.taken(&one, Some("p1"));
        pushes.taken(&two, Some("p2"));
        // p2 goes on probing; p1 hangs after its last probe at t0.
        let later = t0 + LEASE;
        assert_eq!(pushes.probed(Some("p2"), later).sequence, first.sequence);
        let (_, needed) = pushes.next(&frontends, later);
        assert_eq!(needed, [true, true], "p1's lease may still run");
        let (second, needed) = pushes.next(&frontends, later + TICK);
        assert_eq!(needed, [false, true], "p1 trusts nothing it cached");
        assert_eq!(second.sequence, first.sequence + 2);
        // Back, p1 probes (and learns of the pushes it missed): it is pushed to again.
        let back = later + 10 * TICK;
        assert_eq!(pushes.probed(Some("p1"), back), second);
        let (_, needed) = pushes.next(&frontends, back);
        assert_eq!(needed, [true, true]);
    }

    #[test]
    fn a_probe_from_a_process_no_address_is_known_for_keeps_every_frontend_pushed() {
        let (pushes, t0) = pushes_started(Duration::from_secs(5));
        let one = url(1);
        pushes.next(std::slice::from_ref(&one), t0);
        pushes.taken(&one, Some("old"));
        // "old" is gone and a new process listens at the same address: until it takes a push
        // there, its probes may come from there.
        let later = t0 + 2 * LEASE;
        pushes.probed(Some("new"), later);
        let (_, needed) = pushes.next(std::slice::from_ref(&one), later + TICK);
        assert_eq!(needed, [true]);
        pushes.taken(&one, Some("new"));
        // Once "new" answers there it is known, and "old"'s silence no longer matters.
        let (_, needed) = pushes.next(std::slice::from_ref(&one), later + LEASE);
        assert_eq!(needed, [true], "new probed within the lease");
        let (_, needed) = pushes.next(std::slice::from_ref(&one), later + LEASE + TICK);
        assert_eq!(needed, [false]);
        // A caller with the secret that names no process is a stranger too.
        let quiet = later + 3 * LEASE;
        pushes.probed(None, quiet);
        let (_, needed) = pushes.next(std::slice::from_ref(&one), quiet);
        assert_eq!(needed, [true]);
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
        let (_, needed) = pushes.next(std::slice::from_ref(&one), start + TICK);
        assert_eq!(needed, [true]);
        let (_, needed) = pushes.next(std::slice::from_ref(&one), start + 2 * LEASE);
        assert_eq!(needed, [false]);
    }

    #[test]
    fn an_address_whose_answer_names_no_process_that_is_gone_or_was_not_listed_is_pushed_to() {
        let (pushes, t0) = pushes_started(Duration::from_secs(5));
        let (one, two) = (url(1), url(2));
        let frontends = [one.clone(), two.clone()];
        pushes.next(&frontends, t0);
        pushes.taken(&one, Some("p1"));
        pushes.taken(&two, Some("p2"));
        pushes.taken(&one, None);
        pushes.gone(&two);
        let (_, needed) = pushes.next(&frontends, t0 + 2 * LEASE);
        assert_eq!(needed, [true, true]);
        // One left out of a push's list is forgotten: back in the list, it is pushed to.
        pushes.taken(&two, Some("p2"));
        pushes.next(std::slice::from_ref(&one), t0 + 2 * LEASE);
        let (_, needed) = pushes.next(&frontends, t0 + 3 * LEASE);
        assert_eq!(needed, [true, true]);
    }

    #[test]
    fn a_process_name_too_long_counts_as_none() {
        let (pushes, t0) = pushes_started(Duration::from_secs(5));
        let one = url(1);
        let long = "x".repeat(MAX_PROCESS_NAME + 1);
        pushes.next(std::slice::from_ref(&one), t0);
        pushes.taken(&one, Some(&long));
        let (_, needed) = pushes.next(std::slice::from_ref(&one), t0 + 2 * LEASE);
        assert_eq!(needed, [true], "no process is known at the address");
    }
}
