//! The feeds frontends follow with long polls: the market events of the last entries the book
//! applied (`GET /feed?after=N`) and order updates (`GET /feed/orders?after=N`, a user's with
//! `user=U`, or everybody's), each kept in a bounded ring that forgets the oldest first
//! ([`stocknet_common::ring`]). Entries that change nothing in the book have no event; entries
//! that change no user's order have no update.

use std::sync::Mutex;
use std::time::Duration;

use stocknet_common::ring::{Ring, UpdateRing};
use stocknet_common::wire::{FeedPage, MarketEvent, OrderUpdate};
use tokio::sync::watch;

/// Events kept for followers that fall behind.
pub const CAPACITY: usize = 8_192;

pub struct Feed {
    events: Mutex<Events>,
    updates: UpdateRing,
    /// The book's applied entry, for long polls of events to wait on.
    applied: watch::Sender<u64>,
}

struct Events {
    ring: Ring<MarketEvent>,
    applied: u64,
}

impl Feed {
    /// A feed that starts after entry `applied` (where the book starts).
    pub fn new(applied: u64) -> Self {
        Self {
            events: Mutex::new(Events {
                ring: Ring::new(CAPACITY, applied),
                applied,
            }),
            updates: UpdateRing::new(applied),
            applied: watch::Sender::new(applied),
        }
    }

    /// Records the events and order updates of the entries through `applied`, and wakes the
    /// polls waiting for them.
    pub fn push(&self, events: Vec<MarketEvent>, updates: Vec<OrderUpdate>, applied: u64) {
        {
            let mut state = self.events();
            state.ring.push(events, |_| {});
            state.applied = applied;
        }
        self.updates.push(updates, applied);
        self.applied.send_replace(applied);
    }

    /// Starts again after entry `applied`, with nothing kept: the book was replaced (a
    /// snapshot installed), so the entries it skipped have no events here, and every waiting
    /// poll is woken to say so.
    pub fn restart(&self, applied: u64) {
        *self.events() = Events {
            ring: Ring::new(CAPACITY, applied),
            applied,
        };
        self.updates.restart(applied);
        self.applied.send_replace(applied);
    }

    /// Watches the book's applied entry.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// The events after entry `after`, at most a page.
    pub fn page(&self, after: u64) -> FeedPage {
        let state = self.events();
        let (events, through) = state.ring.page(after, state.applied, |_| true);
        FeedPage {
            floor: state.ring.floor,
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

    /// The order updates, for users' polls.
    pub fn updates(&self) -> &UpdateRing {
        &self.updates
    }

    fn events(&self) -> std::sync::MutexGuard<'_, Events> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
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
        assert_eq!(page.events.len(), stocknet_common::ring::PAGE);
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
}
