//! The market feed: the events of the last entries the book applied, kept in a bounded ring
//! for frontends to follow with long polls (`GET /feed?after=N`). Entries that change nothing
//! in the book have no event; the ring forgets the oldest events first.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use stocknet_common::wire::{FeedPage, MarketEvent};
use tokio::sync::watch;

/// Events kept for followers that fall behind.
pub const CAPACITY: usize = 8_192;

/// Most events in one page.
pub const PAGE: usize = 1_000;

pub struct Feed {
    state: Mutex<Ring>,
    /// The book's applied entry, for long polls to wait on.
    applied: watch::Sender<u64>,
}

struct Ring {
    events: VecDeque<MarketEvent>,
    /// Events of entries up to here may have been dropped (or never kept: a restart).
    floor: u64,
    applied: u64,
}

impl Feed {
    /// A feed that starts after entry `applied` (where the book starts).
    pub fn new(applied: u64) -> Self {
        Self {
            state: Mutex::new(Ring {
                events: VecDeque::new(),
                floor: applied,
                applied,
            }),
            applied: watch::Sender::new(applied),
        }
    }

    /// Records the events of the entries through `applied`.
    pub fn push(&self, events: Vec<MarketEvent>, applied: u64) {
        let mut ring = self.ring();
        for event in events {
            if ring.events.len() == CAPACITY {
                if let Some(dropped) = ring.events.pop_front() {
                    ring.floor = dropped.entry;
                }
            }
            ring.events.push_back(event);
        }
        ring.applied = applied;
        drop(ring);
        self.applied.send_replace(applied);
    }

    /// Watches the book's applied entry.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// The events after entry `after`, at most [`PAGE`].
    pub fn page(&self, after: u64) -> FeedPage {
        let ring = self.ring();
        let start = ring.events.partition_point(|e| e.entry <= after);
        let events: Vec<MarketEvent> = ring.events.iter().skip(start).take(PAGE).cloned().collect();
        let through = if start + events.len() < ring.events.len() {
            events.last().map_or(after, |e| e.entry)
        } else {
            ring.applied.max(after)
        };
        FeedPage {
            floor: ring.floor,
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

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
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
        feed.push(vec![event(11), event(13)], 14);
        let page = feed.page(10);
        assert_eq!((page.floor, page.through, page.events.len()), (10, 14, 2));
        let page = feed.page(11);
        assert_eq!(page.events, [event(13)]);
        assert!(feed.page(14).events.is_empty());
        // Past capacity, the oldest go and the floor says so.
        feed.push(
            (15..15 + CAPACITY as u64).map(event).collect(),
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
        feed.push(vec![event(1)], 1);
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
