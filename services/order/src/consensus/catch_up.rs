//! Whether a follower has caught up: it has applied through the commit point its leader first
//! told it of in the leader's term. A replica is ready only then (DESIGN): one back from a
//! restart, or from a partition into a newer term, holds an old book and is not ready while it
//! does. Once reached it stays reached for the term, since later commit points move on with
//! every heartbeat and a follower a round behind them is no stale one.

use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct CatchUp(Mutex<Target>);

#[derive(Debug, Default)]
struct Target {
    term: u64,
    /// The first commit point (a log index) this term's leader sent.
    index: Option<u64>,
    reached: bool,
}

impl CatchUp {
    /// Notes the commit point `commit` (a log index) that an append from `term`'s leader
    /// carried. An append without one (a new leader's first, before an entry of its term is
    /// committed) sets no target: nothing would be caught up with.
    pub fn heard(&self, term: u64, commit: Option<u64>) {
        let mut target = self.lock();
        if term > target.term {
            *target = Target {
                term,
                index: commit,
                reached: false,
            };
        } else if term == target.term && target.index.is_none() {
            target.index = commit;
        }
    }

    /// Whether this follower, in `term` and with log index `applied` applied, has applied
    /// through its leader's first commit point of that term.
    pub fn reached(&self, term: u64, applied: u64) -> bool {
        let mut target = self.lock();
        if target.term != term {
            return false;
        }
        if target.index.is_some_and(|index| applied >= index) {
            target.reached = true;
        }
        target.reached
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Target> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_is_caught_up_once_it_applied_its_leaders_first_commit_point() {
        let catch_up = CatchUp::default();
        assert!(!catch_up.reached(0, 0), "no leader heard from yet");
        // A new leader's first appends carry no commit point of its term yet.
        catch_up.heard(3, None);
        assert!(!catch_up.reached(3, 0));
        catch_up.heard(3, Some(100));
        assert!(!catch_up.reached(3, 40));
        // Later commit points of the term do not move the target.
        catch_up.heard(3, Some(500));
        assert!(catch_up.reached(3, 100));
        assert!(catch_up.reached(3, 101), "stays reached for the term");
        // A newer term's leader: caught up again only through its first commit point.
        catch_up.heard(4, Some(900));
        assert!(!catch_up.reached(4, 600));
        assert!(!catch_up.reached(5, 900), "a term not heard from");
        catch_up.heard(2, Some(10));
        assert!(
            catch_up.reached(4, 900),
            "an older leader's append changes nothing"
        );
    }
}
