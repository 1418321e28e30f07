//! Bounded rings of what log entries did, which forget the oldest first, and the ring of order
//! updates with its long polls: the order replicas keep one per feed (`GET /feed`,
//! `GET /feed/orders`), and each frontend keeps a copy of the leader's order updates for its
//! `/ws/orders` streams, so that its streams share one poll of the leader.
//!
//! A poll of one user's updates waits on that user's own signal, which only an update of
//! theirs (or a restart) sends: idle streams sleep through other users' entries, where one
//! signal for all woke every poll for every entry applied. A poll of every user's updates (the
//! frontends') waits on a signal that every update sends.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::wire::{MarketEvent, OrderUpdate, OrderUpdatePage};

/// Most items in one page (a page ends at a whole entry).
pub const PAGE: usize = 1_000;

/// Order updates a ring keeps for users' streams that fall behind or reconnect.
pub const UPDATE_CAPACITY: usize = 16_384;

/// What a ring keeps: things of one log entry each.
pub trait OfEntry: Clone {
    fn entry(&self) -> u64;
}

impl OfEntry for MarketEvent {
    fn entry(&self) -> u64 {
        self.entry
    }
}

impl OfEntry for OrderUpdate {
    fn entry(&self) -> u64 {
        self.entry
    }
}

pub struct Ring<T> {
    items: VecDeque<T>,
    capacity: usize,
    /// Items of entries up to here may have been dropped (or never kept: a restart).
    pub floor: u64,
}

impl<T: OfEntry> Ring<T> {
    pub fn new(capacity: usize, floor: u64) -> Self {
        Self {
            items: VecDeque::new(),
            capacity,
            floor,
        }
    }

    /// Adds `items`, the newest, handing each item it forgets to `forgotten`.
    pub fn push(&mut self, items: Vec<T>, mut forgotten: impl FnMut(&T)) {
        for item in items {
            if self.items.len() == self.capacity {
                if let Some(dropped) = self.items.pop_front() {
                    self.floor = dropped.entry();
                    forgotten(&dropped);
                }
            }
            self.items.push_back(item);
        }
    }

    /// The items after entry `after` that `keep` admits, at most [`PAGE`] but whole entries,
    /// and the entry the page runs through (`applied` when it reached the end).
    pub fn page(&self, after: u64, applied: u64, keep: impl Fn(&T) -> bool) -> (Vec<T>, u64) {
        let start = self.items.partition_point(|item| item.entry() <= after);
        let mut page: Vec<T> = Vec::new();
        for item in self.items.iter().skip(start) {
            if let Some(last) = page.last().filter(|_| page.len() >= PAGE) {
                if item.entry() != last.entry() {
                    let through = last.entry();
                    return (page, through);
                }
            }
            if keep(item) {
                page.push(item.clone());
            }
        }
        (page, applied.max(after))
    }
}

/// The last [`UPDATE_CAPACITY`] order updates, through an applied entry, with polls waiting
/// for a user's (or anybody's) next ones.
pub struct UpdateRing {
    state: Mutex<Updates>,
}

struct Updates {
    ring: Ring<OrderUpdate>,
    applied: u64,
    /// The users whose updates polls wait for (`None`: everybody's).
    waiting: HashMap<Option<u64>, Waiters>,
}

/// The polls waiting for one user's updates, or for everybody's.
struct Waiters {
    /// Sent when an update they wait for is pushed, or the ring restarted.
    signal: Arc<Notify>,
    polls: usize,
    /// The last entry of an update they wait for that the ring forgot while they waited.
    forgotten: u64,
}

/// A poll's place among those waiting for `user`'s updates, given up when it is dropped.
struct Waiting<'a> {
    ring: &'a UpdateRing,
    user: Option<u64>,
    signal: Arc<Notify>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut updates = self.ring.lock();
        if let Some(waiters) = updates.waiting.get_mut(&self.user) {
            waiters.polls -= 1;
            if waiters.polls == 0 {
                updates.waiting.remove(&self.user);
            }
        }
    }
}

impl UpdateRing {
    /// An empty ring that starts after entry `applied`.
    pub fn new(applied: u64) -> Self {
        Self {
            state: Mutex::new(Updates {
                ring: Ring::new(UPDATE_CAPACITY, applied),
                applied,
                waiting: HashMap::new(),
            }),
        }
    }

    /// The entry the ring holds every update through.
    pub fn applied(&self) -> u64 {
        self.lock().applied
    }

    /// Entries up to here may have updates the ring does not hold.
    pub fn floor(&self) -> u64 {
        self.lock().ring.floor
    }

    /// Records the updates of the entries through `applied`, and wakes the polls of the users
    /// they are for, and those of everybody's.
    pub fn push(&self, updates: Vec<OrderUpdate>, applied: u64) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut signals: Vec<Arc<Notify>> = Vec::new();
        if !state.waiting.is_empty() && !updates.is_empty() {
            let users: HashSet<Option<u64>> = updates.iter().map(|u| Some(u.user)).collect();
            for user in users.into_iter().chain([None]) {
                if let Some(waiters) = state.waiting.get(&user) {
                    signals.push(waiters.signal.clone());
                }
            }
        }
        let waiting = &mut state.waiting;
        state.ring.push(updates, |dropped| {
            for user in [Some(dropped.user), None] {
                if let Some(waiters) = waiting.get_mut(&user) {
                    waiters.forgotten = dropped.entry;
                }
            }
        });
        state.applied = applied;
        drop(guard);
        signals.iter().for_each(|signal| signal.notify_waiters());
    }

    /// Starts again after entry `applied`, with nothing kept (the entries before it are not
    /// known here), and wakes every waiting poll to say so.
    pub fn restart(&self, applied: u64) {
        let mut state = self.lock();
        state.ring = Ring::new(UPDATE_CAPACITY, applied);
        state.applied = applied;
        for waiters in state.waiting.values_mut() {
            waiters.forgotten = applied;
            waiters.signal.notify_waiters();
        }
    }

    /// `user`'s order updates (`None`: everybody's) after entry `after`; when there are none
    /// yet, waits up to `wait` for some.
    pub async fn wait_for_updates(
        &self,
        user: Option<u64>,
        after: u64,
        wait: Duration,
    ) -> OrderUpdatePage {
        let deadline = tokio::time::Instant::now() + wait;
        let waiting = self.wait_for(user);
        // Entries through `scanned` have no update of the user's: the wait goes on after it.
        let mut scanned = after;
        let mut first = true;
        loop {
            // Listening before looking: an update pushed after the look signals this poll.
            let signal = waiting.signal.notified();
            tokio::pin!(signal);
            signal.as_mut().enable();
            let page = {
                let state = self.lock();
                let (updates, through) = state.ring.page(scanned, state.applied, |u| {
                    user.is_none_or(|user| u.user == user)
                });
                // Before this poll waited, whatever the ring forgot after `after` may have been
                // the user's; since, the ring has noted what of the user's it forgot.
                let forgotten = match first {
                    true => state.ring.floor,
                    false => state.waiting.get(&user).map_or(0, |w| w.forgotten),
                };
                OrderUpdatePage {
                    gap: forgotten > scanned,
                    through,
                    updates,
                }
            };
            if page.gap || !page.updates.is_empty() || tokio::time::Instant::now() >= deadline {
                return page;
            }
            (scanned, first) = (page.through, false);
            let _ = tokio::time::timeout_at(deadline, signal).await;
        }
    }

    /// Counts a poll among those waiting for `user`'s updates, with their shared signal.
    fn wait_for(&self, user: Option<u64>) -> Waiting<'_> {
        let mut state = self.lock();
        let waiters = state.waiting.entry(user).or_insert_with(|| Waiters {
            signal: Arc::new(Notify::new()),
            polls: 0,
            forgotten: 0,
        });
        waiters.polls += 1;
        let signal = waiters.signal.clone();
        Waiting {
            ring: self,
            user,
            signal,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Updates> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::order_update as update;

    #[tokio::test]
    async fn a_users_updates_wait_for_their_own_and_say_when_some_are_gone() {
        let feed = Arc::new(UpdateRing::new(0));
        feed.push(vec![update(1, 7), update(2, 8), update(2, 7)], 2);
        let page = feed.wait_for_updates(Some(7), 0, Duration::ZERO).await;
        assert!(!page.gap);
        assert_eq!(page.through, 2);
        assert_eq!(page.updates, [update(1, 7), update(2, 7)]);

        // Nothing of user 7's after 2: the poll waits past user 8's entry for user 7's.
        let waiting = {
            let feed = feed.clone();
            tokio::spawn(async move {
                feed.wait_for_updates(Some(7), 2, Duration::from_secs(30))
                    .await
            })
        };
        // One thread: each yield lets the poll run until it waits again.
        tokio::task::yield_now().await;
        feed.push(vec![update(3, 8)], 3);
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "the poll went on waiting past an entry with only another user's update"
        );
        feed.push(vec![update(5, 7)], 5);
        let page = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the poll returns once user 7 has an update")
            .unwrap();
        assert_eq!((page.gap, page.through, page.updates.len()), (false, 5, 1));
        assert_eq!(page.updates[0].entry, 5);

        // Nothing new: an empty page through the last applied entry once the wait is over.
        let page = feed
            .wait_for_updates(Some(7), 5, Duration::from_millis(10))
            .await;
        assert_eq!((page.gap, page.through), (false, 5));
        assert!(page.updates.is_empty());

        // The ring forgets the oldest: a stream behind them is told, and given what is kept.
        let many: Vec<OrderUpdate> = (6..6 + UPDATE_CAPACITY as u64)
            .map(|e| update(e, 8))
            .collect();
        feed.push(many, 5 + UPDATE_CAPACITY as u64);
        feed.push(
            vec![update(9 + UPDATE_CAPACITY as u64, 7)],
            9 + UPDATE_CAPACITY as u64,
        );
        let page = feed.wait_for_updates(Some(7), 5, Duration::ZERO).await;
        assert!(page.gap);
        assert_eq!(page.updates.len(), 1);
        // A restart (a replaced book) starts the ring again: whoever was before it has a gap.
        feed.restart(20_000);
        assert!(feed.wait_for_updates(Some(7), 10, Duration::ZERO).await.gap);
        assert!(
            !feed
                .wait_for_updates(Some(7), 20_000, Duration::ZERO)
                .await
                .gap
        );
    }

    /// Counts the wakes of a task.
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_users_poll_sleeps_through_other_users_updates_and_wakes_for_its_own() {
        use std::future::Future;
        let feed = UpdateRing::new(0);
        let wakes = Arc::new(Wakes(Default::default()));
        let waker = std::task::Waker::from(wakes.clone());
        let mut context = std::task::Context::from_waker(&waker);
        let woken = || wakes.0.load(std::sync::atomic::Ordering::SeqCst);
        let poll = feed.wait_for_updates(Some(7), 0, Duration::from_secs(30));
        tokio::pin!(poll);
        assert!(poll.as_mut().poll(&mut context).is_pending());

        // Enough of user 8's updates that the ring forgets the oldest past where user 7's
        // poll looked last: none of them wakes it.
        let others: Vec<OrderUpdate> = (1..=UPDATE_CAPACITY as u64 + 10)
            .map(|e| update(e, 8))
            .collect();
        feed.push(others, UPDATE_CAPACITY as u64 + 10);
        assert_eq!(woken(), 0, "another user's updates woke the poll");

        // Its own wakes it, and it is complete: what was forgotten was user 8's.
        let own = UPDATE_CAPACITY as u64 + 11;
        feed.push(vec![update(own, 7)], own);
        assert_eq!(woken(), 1);
        let std::task::Poll::Ready(page) = poll.as_mut().poll(&mut context) else {
            panic!("the poll is still waiting after its user's update");
        };
        assert_eq!((page.gap, page.through), (false, own));
        assert_eq!(page.updates, [update(own, 7)]);
        assert!(feed.lock().waiting.is_empty(), "the poll left its place");

        // Its own update forgotten before the poll looks again: a gap.
        let poll = feed.wait_for_updates(Some(7), own, Duration::from_secs(30));
        tokio::pin!(poll);
        assert!(poll.as_mut().poll(&mut context).is_pending());
        feed.push(vec![update(own + 1, 7)], own + 1);
        let others: Vec<OrderUpdate> = (own + 2..own + 2 + UPDATE_CAPACITY as u64)
            .map(|e| update(e, 8))
            .collect();
        let own = own + 1 + UPDATE_CAPACITY as u64;
        feed.push(others, own);
        let std::task::Poll::Ready(page) = poll.as_mut().poll(&mut context) else {
            panic!("the poll is still waiting after its user's update");
        };
        assert!(page.gap, "an update of the user's was forgotten unseen");

        // A restart (a replaced book) wakes every poll, to tell it of the gap.
        let poll = feed.wait_for_updates(Some(7), own, Duration::from_secs(30));
        tokio::pin!(poll);
        assert!(poll.as_mut().poll(&mut context).is_pending());
        feed.restart(own + 100);
        assert_eq!(woken(), 3);
        let std::task::Poll::Ready(page) = poll.as_mut().poll(&mut context) else {
            panic!("the poll is still waiting after the book was replaced");
        };
        assert!(page.gap);
    }

    /// A frontend's copy starts again from an earlier entry (a new leader a little behind):
    /// a poll past that entry has lost nothing and goes on waiting, and a poll before it is
    /// told of a gap.
    #[tokio::test]
    async fn a_restart_before_a_poll_s_position_costs_it_nothing() {
        use std::future::Future;
        let feed = UpdateRing::new(20);
        let waker = std::task::Waker::from(Arc::new(Wakes(Default::default())));
        let mut context = std::task::Context::from_waker(&waker);
        let ahead = feed.wait_for_updates(Some(7), 20, Duration::from_secs(30));
        tokio::pin!(ahead);
        let behind = feed.wait_for_updates(Some(7), 10, Duration::from_secs(30));
        tokio::pin!(behind);
        assert!(ahead.as_mut().poll(&mut context).is_pending());
        // Nothing after 10 is held (the ring starts at 20): told at once.
        let std::task::Poll::Ready(page) = behind.as_mut().poll(&mut context) else {
            panic!("a poll before the ring's floor waits");
        };
        assert!(page.gap);

        feed.restart(15);
        assert!(
            ahead.as_mut().poll(&mut context).is_pending(),
            "a restart before the poll's position ended it"
        );
        feed.push(vec![update(16, 7), update(21, 7)], 21);
        let std::task::Poll::Ready(page) = ahead.as_mut().poll(&mut context) else {
            panic!("the poll is still waiting after its user's update");
        };
        assert!(!page.gap);
        assert_eq!(page.updates, [update(21, 7)]);
    }

    #[test]
    fn a_page_ends_at_a_whole_entry() {
        let feed = UpdateRing::new(0);
        let updates: Vec<OrderUpdate> =
            (0..PAGE as u64 + 2).map(|i| update(1 + i / 3, 7)).collect();
        let last = updates.last().unwrap().entry;
        feed.push(updates, last);
        let state = feed.lock();
        let (page, through) = state.ring.page(0, last, |_| true);
        assert!(
            page.len() > PAGE,
            "the entry that crosses the limit is whole"
        );
        assert_eq!(page.len() % 3, 0);
        assert_eq!(through, page.last().unwrap().entry);
        let (rest, _) = state.ring.page(through, last, |_| true);
        assert_eq!(page.len() + rest.len(), PAGE + 2);
    }

    #[tokio::test]
    async fn a_poll_of_everybody_s_updates_wakes_for_any_and_gets_them_all() {
        let feed = Arc::new(UpdateRing::new(0));
        let waiting = {
            let feed = feed.clone();
            tokio::spawn(async move {
                feed.wait_for_updates(None, 0, Duration::from_secs(30))
                    .await
            })
        };
        tokio::task::yield_now().await;
        feed.push(vec![update(1, 7), update(2, 8)], 2);
        let page = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the poll returns at the first update")
            .unwrap();
        assert_eq!((page.gap, page.through), (false, 2));
        assert_eq!(page.updates, [update(1, 7), update(2, 8)]);
        // Past the ring's capacity, a poll behind the oldest kept is told.
        let many: Vec<OrderUpdate> = (3..=3 + UPDATE_CAPACITY as u64)
            .map(|e| update(e, 9))
            .collect();
        feed.push(many, 3 + UPDATE_CAPACITY as u64);
        assert!(feed.wait_for_updates(None, 2, Duration::ZERO).await.gap);
        assert!(!feed.wait_for_updates(None, 3, Duration::ZERO).await.gap);
    }
}
