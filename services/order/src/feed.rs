//! The feeds frontends follow with long polls: the market events of the last entries the book
//! applied (`GET /feed?after=N`) and users' order updates (`GET /feed/orders?user=U&after=N`),
//! each kept in a bounded ring that forgets the oldest first. Entries that change nothing in
//! the book have no event; entries that change no user's order have no update.
//!
//! A user's poll waits on that user's own signal, which only an update of theirs (or a
//! replaced book) sends: idle streams sleep through other users' entries, where one signal
//! for all woke every poll for every entry applied.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stocknet_common::wire::{FeedPage, MarketEvent, OrderUpdate, OrderUpdatePage};
use tokio::sync::{watch, Notify};

/// Events kept for followers that fall behind.
pub const CAPACITY: usize = 8_192;

/// Order updates kept for users' streams that fall behind or reconnect.
pub const UPDATE_CAPACITY: usize = 16_384;

/// Most events or updates in one page (a page ends at a whole entry).
pub const PAGE: usize = 1_000;

pub struct Feed {
    state: Mutex<Rings>,
    /// The book's applied entry, for long polls to wait on.
    applied: watch::Sender<u64>,
}

struct Rings {
    events: Ring<MarketEvent>,
    updates: Ring<OrderUpdate>,
    applied: u64,
    /// The users whose updates polls wait for.
    waiting: HashMap<u64, Waiters>,
}

/// The polls waiting for one user's updates.
struct Waiters {
    /// Sent when an update of the user's is pushed, or the book replaced.
    signal: Arc<Notify>,
    polls: usize,
    /// The last entry of the user's whose update the ring forgot while polls waited.
    forgotten: u64,
}

impl Rings {
    fn new(applied: u64) -> Self {
        Self {
            events: Ring::new(CAPACITY, applied),
            updates: Ring::new(UPDATE_CAPACITY, applied),
            applied,
            waiting: HashMap::new(),
        }
    }
}

/// A poll's place among those waiting for `user`'s updates, given up when it is dropped.
struct Waiting<'a> {
    feed: &'a Feed,
    user: u64,
    signal: Arc<Notify>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut rings = self.feed.rings();
        if let Some(waiters) = rings.waiting.get_mut(&self.user) {
            waiters.polls -= 1;
            if waiters.polls == 0 {
                rings.waiting.remove(&self.user);
            }
        }
    }
}

/// What a ring keeps: things of one log entry each.
trait OfEntry: Clone {
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

struct Ring<T> {
    items: VecDeque<T>,
    capacity: usize,
    /// Items of entries up to here may have been dropped (or never kept: a restart).
    floor: u64,
}

impl<T: OfEntry> Ring<T> {
    fn new(capacity: usize, floor: u64) -> Self {
        Self {
            items: VecDeque::new(),
            capacity,
            floor,
        }
    }

    /// Adds `items`, the newest, handing each item it forgets to `forgotten`.
    fn push(&mut self, items: Vec<T>, mut forgotten: impl FnMut(&T)) {
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
    fn page(&self, after: u64, applied: u64, keep: impl Fn(&T) -> bool) -> (Vec<T>, u64) {
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

impl Feed {
    /// A feed that starts after entry `applied` (where the book starts).
    pub fn new(applied: u64) -> Self {
        Self {
            state: Mutex::new(Rings::new(applied)),
            applied: watch::Sender::new(applied),
        }
    }

    /// Records the events and order updates of the entries through `applied`, and wakes the
    /// polls of the users these updates are for.
    pub fn push(&self, events: Vec<MarketEvent>, updates: Vec<OrderUpdate>, applied: u64) {
        let mut guard = self.rings();
        let rings = &mut *guard;
        let mut signals: Vec<Arc<Notify>> = Vec::new();
        if !rings.waiting.is_empty() {
            for update in &updates {
                if let Some(waiters) = rings.waiting.get(&update.user) {
                    if !signals.iter().any(|s| Arc::ptr_eq(s, &waiters.signal)) {
                        signals.push(waiters.signal.clone());
                    }
                }
            }
        }
        rings.events.push(events, |_| {});
        let waiting = &mut rings.waiting;
        rings.updates.push(updates, |dropped| {
            if let Some(waiters) = waiting.get_mut(&dropped.user) {
                waiters.forgotten = dropped.entry;
            }
        });
        rings.applied = applied;
        drop(guard);
        self.applied.send_replace(applied);
        signals.iter().for_each(|signal| signal.notify_waiters());
    }

    /// Starts again after entry `applied`, with nothing kept: the book was replaced (a
    /// snapshot installed), so the entries it skipped have no events here, and every waiting
    /// poll is woken to say so.
    pub fn restart(&self, applied: u64) {
        let mut rings = self.rings();
        let waiting = std::mem::take(&mut rings.waiting);
        *rings = Rings {
            waiting,
            ..Rings::new(applied)
        };
        for waiters in rings.waiting.values_mut() {
            waiters.forgotten = applied;
            waiters.signal.notify_waiters();
        }
        drop(rings);
        self.applied.send_replace(applied);
    }

    /// Watches the book's applied entry.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// The events after entry `after`, at most [`PAGE`].
    pub fn page(&self, after: u64) -> FeedPage {
        let rings = self.rings();
        let (events, through) = rings.events.page(after, rings.applied, |_| true);
        FeedPage {
            floor: rings.events.floor,
            through,
            events,
        }
    }

    /// Like [`page`](Self::page), but when nothing after `after` has been applied yet, waits
    /// up to `wait` for it.
    pub async fn wait_for_page(&self, after: u64, wait: Duration) -> FeedPage {
        let mut applied = self.applied.subscribe();
        let _ = tokio::time::timeout(wait, applied.wait_for(|&a| a > after)).await;
        self.page(after)
    }

    /// `user`'s order updates after entry `after`; when there are none yet, waits up to `wait`
    /// for some.
    pub async fn wait_for_updates(&self, user: u64, after: u64, wait: Duration) -> OrderUpdatePage {
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
                let rings = self.rings();
                let (updates, through) = rings
                    .updates
                    .page(scanned, rings.applied, |u| u.user == user);
                // Before this poll waited, whatever the ring forgot after `after` may have been
                // the user's; since, the ring has noted what of the user's it forgot.
                let forgotten = match first {
                    true => rings.updates.floor,
                    false => rings.waiting.get(&user).map_or(0, |w| w.forgotten),
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
    fn wait_for(&self, user: u64) -> Waiting<'_> {
        let mut rings = self.rings();
        let waiters = rings.waiting.entry(user).or_insert_with(|| Waiters {
            signal: Arc::new(Notify::new()),
            polls: 0,
            forgotten: 0,
        });
        waiters.polls += 1;
        let signal = waiters.signal.clone();
        Waiting {
            feed: self,
            user,
            signal,
        }
    }

    fn rings(&self) -> std::sync::MutexGuard<'_, Rings> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(entry: u64) -> MarketEvent {
        MarketEvent {
            entry,
            time: 0,
            name: "A".into(),
            trades: Vec::new(),
            levels: Vec::new(),
            last_price: None,
        }
    }

    #[test]
    fn pages_follow_the_entries_and_say_what_was_dropped() {
        let feed = Feed::new(10);
        feed.push(vec![event(11), event(13)], Vec::new(), 14);
        let page = feed.page(10);
        assert_eq!((page.floor, page.through, page.events.len()), (10, 14, 2));
        let page = feed.page(11);
        assert_eq!(page.events, [event(13)]);
        assert!(feed.page(14).events.is_empty());
        // Past capacity, the oldest go and the floor says so.
        feed.push(
            (15..15 + CAPACITY as u64).map(event).collect(),
            Vec::new(),
            15 + CAPACITY as u64,
        );
        // Events 11 and 13 went: a follower still before 13 has missed some.
        let page = feed.page(10);
        assert_eq!(page.floor, 13);
        assert_eq!(page.events.len(), PAGE);
        assert_eq!(page.events[0].entry, 15);
        assert_eq!(page.through, page.events.last().unwrap().entry);
    }

    #[tokio::test]
    async fn a_long_poll_returns_when_an_entry_is_applied() {
        let feed = std::sync::Arc::new(Feed::new(0));
        let waiting = {
            let feed = feed.clone();
            tokio::spawn(async move { feed.wait_for_page(0, Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        feed.push(vec![event(1)], Vec::new(), 1);
        let page = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the poll returns once entry 1 is applied")
            .unwrap();
        assert_eq!(page.events, [event(1)]);
        // Nothing new: the poll gives up after its wait, empty.
        let page = feed.wait_for_page(1, Duration::from_millis(10)).await;
        assert!(page.events.is_empty());
    }

    fn update(entry: u64, user: u64) -> OrderUpdate {
        OrderUpdate {
            entry,
            time: String::new(),
            user,
            event: stocknet_common::wire::OrderEvent::Accepted,
            order: stocknet_common::wire::OrderView {
                number: entry,
                name: "A".into(),
                side: stocknet_common::Side::Buy,
                quantity: 1,
                order_type: None,
                price: None,
                status: stocknet_common::Status::Open,
                filled_quantity: 0,
                remaining_quantity: 1,
                fills: Vec::new(),
                fills_truncated: false,
                time_in_force: None,
                expire_at: None,
                post_only: None,
                stp: None,
                client_order_id: None,
                display_quantity: None,
                stop_price: None,
                triggered_at: None,
            },
            fills: Vec::new(),
            reason: None,
        }
    }

    #[tokio::test]
    async fn a_users_updates_wait_for_their_own_and_say_when_some_are_gone() {
        let feed = std::sync::Arc::new(Feed::new(0));
        feed.push(
            Vec::new(),
            vec![update(1, 7), update(2, 8), update(2, 7)],
            2,
        );
        let page = feed.wait_for_updates(7, 0, Duration::ZERO).await;
        assert!(!page.gap);
        assert_eq!(page.through, 2);
        assert_eq!(page.updates, [update(1, 7), update(2, 7)]);

        // Nothing of user 7's after 2: the poll waits past user 8's entry for user 7's.
        let waiting = {
            let feed = feed.clone();
            tokio::spawn(async move { feed.wait_for_updates(7, 2, Duration::from_secs(30)).await })
        };
        // One thread: each yield lets the poll run until it waits again.
        tokio::task::yield_now().await;
        feed.push(Vec::new(), vec![update(3, 8)], 3);
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "the poll went on waiting past an entry with only another user's update"
        );
        feed.push(Vec::new(), vec![update(5, 7)], 5);
        let page = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the poll returns once user 7 has an update")
            .unwrap();
        assert_eq!((page.gap, page.through, page.updates.len()), (false, 5, 1));
        assert_eq!(page.updates[0].entry, 5);

        // Nothing new: an empty page through the last applied entry once the wait is over.
        let page = feed.wait_for_updates(7, 5, Duration::from_millis(10)).await;
        assert_eq!((page.gap, page.through), (false, 5));
        assert!(page.updates.is_empty());

        // The ring forgets the oldest: a stream behind them is told, and given what is kept.
        let many: Vec<OrderUpdate> = (6..6 + UPDATE_CAPACITY as u64)
            .map(|e| update(e, 8))
            .collect();
        feed.push(Vec::new(), many, 5 + UPDATE_CAPACITY as u64);
        feed.push(
            Vec::new(),
            vec![update(9 + UPDATE_CAPACITY as u64, 7)],
            9 + UPDATE_CAPACITY as u64,
        );
        let page = feed.wait_for_updates(7, 5, Duration::ZERO).await;
        assert!(page.gap);
        assert_eq!(page.updates.len(), 1);
        // A replaced book starts the rings again: whoever was before it has a gap.
        feed.restart(20_000);
        assert!(feed.wait_for_updates(7, 10, Duration::ZERO).await.gap);
        assert!(!feed.wait_for_updates(7, 20_000, Duration::ZERO).await.gap);
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
        let feed = Feed::new(0);
        let wakes = Arc::new(Wakes(Default::default()));
        let waker = std::task::Waker::from(wakes.clone());
        let mut context = std::task::Context::from_waker(&waker);
        let woken = || wakes.0.load(std::sync::atomic::Ordering::SeqCst);
        let poll = feed.wait_for_updates(7, 0, Duration::from_secs(30));
        tokio::pin!(poll);
        assert!(poll.as_mut().poll(&mut context).is_pending());

        // Enough of user 8's updates that the ring forgets the oldest past where user 7's
        // poll looked last: none of them wakes it.
        let others: Vec<OrderUpdate> = (1..=UPDATE_CAPACITY as u64 + 10)
            .map(|e| update(e, 8))
            .collect();
        feed.push(vec![event(1)], others, UPDATE_CAPACITY as u64 + 10);
        assert_eq!(woken(), 0, "another user's updates woke the poll");

        // Its own wakes it, and it is complete: what was forgotten was user 8's.
        let own = UPDATE_CAPACITY as u64 + 11;
        feed.push(Vec::new(), vec![update(own, 7)], own);
        assert_eq!(woken(), 1);
        let std::task::Poll::Ready(page) = poll.as_mut().poll(&mut context) else {
            panic!("the poll is still waiting after its user's update");
        };
        assert_eq!((page.gap, page.through), (false, own));
        assert_eq!(page.updates, [update(own, 7)]);
        assert!(feed.rings().waiting.is_empty(), "the poll left its place");

        // Its own update forgotten before the poll looks again: a gap.
        let poll = feed.wait_for_updates(7, own, Duration::from_secs(30));
        tokio::pin!(poll);
        assert!(poll.as_mut().poll(&mut context).is_pending());
        feed.push(Vec::new(), vec![update(own + 1, 7)], own + 1);
        let others: Vec<OrderUpdate> = (own + 2..own + 2 + UPDATE_CAPACITY as u64)
            .map(|e| update(e, 8))
            .collect();
        let own = own + 1 + UPDATE_CAPACITY as u64;
        feed.push(Vec::new(), others, own);
        let std::task::Poll::Ready(page) = poll.as_mut().poll(&mut context) else {
            panic!("the poll is still waiting after its user's update");
        };
        assert!(page.gap, "an update of the user's was forgotten unseen");

        // A replaced book wakes every poll, to tell it of the gap.
        let poll = feed.wait_for_updates(7, own, Duration::from_secs(30));
        tokio::pin!(poll);
        assert!(poll.as_mut().poll(&mut context).is_pending());
        feed.restart(own + 100);
        assert_eq!(woken(), 3);
        let std::task::Poll::Ready(page) = poll.as_mut().poll(&mut context) else {
            panic!("the poll is still waiting after the book was replaced");
        };
        assert!(page.gap);
    }

    #[test]
    fn a_page_ends_at_a_whole_entry() {
        let feed = Feed::new(0);
        let updates: Vec<OrderUpdate> =
            (0..PAGE as u64 + 2).map(|i| update(1 + i / 3, 7)).collect();
        let last = updates.last().unwrap().entry;
        feed.push(Vec::new(), updates, last);
        let rings = feed.rings();
        let (page, through) = rings.updates.page(0, last, |_| true);
        assert!(
            page.len() > PAGE,
            "the entry that crosses the limit is whole"
        );
        assert_eq!(page.len() % 3, 0);
        assert_eq!(through, page.last().unwrap().entry);
        let (rest, _) = rings.updates.page(through, last, |_| true);
        assert_eq!(page.len() + rest.len(), PAGE + 2);
    }
}
