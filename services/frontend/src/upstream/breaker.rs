//! A circuit breaker in front of the catalog. After [`FAILURES`] calls in a row fail (no
//! answer within the deadline, or a 5xx; a 4xx is an answer), it opens: calls fail at once
//! instead of each waiting out a timeout, orders are refused (503, not executed) and lookups
//! answer from what the frontend last saw, marked stale. It closes on the first success,
//! which the frontend's own probe (`upstream::catalog::watch`) finds within one
//! [`PROBE_EVERY`] of the catalog answering again, with or without lookups.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use utoipa::ToSchema;

/// Consecutive failures that open the breaker.
pub const FAILURES: u32 = 3;

/// How often the catalog is probed, open or closed: the longest an open breaker stays open
/// once the catalog answers again, and what `Retry-After` says while it is open.
pub const PROBE_EVERY: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { since: Instant },
}

/// Where a breaker went, as a metric label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Transition {
    to: &'static str,
}

#[derive(Debug, Default, Clone)]
struct BreakerMetrics {
    open: Gauge,
    transitions: Family<Transition, Counter>,
}

#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
    /// Whether `state` is open, for the hot path (every cached lookup asks) without the lock.
    open: AtomicBool,
    metrics: BreakerMetrics,
}

/// The breaker as `GET /cluster` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct BreakerView {
    /// `closed` (calls go through) or `open` (calls fail at once).
    pub state: &'static str,
    /// Failed calls in a row while closed.
    pub consecutive_failures: u32,
    /// How long it has been open, in milliseconds.
    pub open_for_ms: Option<u64>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            open: AtomicBool::new(false),
            metrics: BreakerMetrics::default(),
        }
    }
}

impl Breaker {
    /// Registers the breaker's state and transitions (`..._catalog_breaker_open`, and
    /// `..._catalog_breaker_transitions_total{to="open"|"closed"}`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "catalog_breaker_open",
            "1 while the catalog's breaker is open (calls to it fail at once)",
            self.metrics.open.clone(),
        );
        registry.register(
            "catalog_breaker_transitions",
            "Times the catalog's breaker opened or closed",
            self.metrics.transitions.clone(),
        );
    }

    /// Whether a call may go to the catalog now; if not, when to try again.
    pub fn admit(&self) -> Result<(), Duration> {
        if self.open.load(Ordering::Acquire) {
            Err(PROBE_EVERY)
        } else {
            Ok(())
        }
    }

    /// A call answered (anything but a 5xx): the catalog is there.
    pub fn succeeded(&self) {
        let mut state = self.lock();
        if let State::Open { since } = *state {
            tracing::info!(
                open_for = ?since.elapsed(),
                "catalog answers again: breaker closed"
            );
            self.transition("closed", 0);
        }
        *state = State::Closed { failures: 0 };
    }

    /// A call got no answer in time, or a 5xx.
    pub fn failed(&self, now: Instant) {
        let mut state = self.lock();
        if let State::Closed { failures } = *state {
            let failures = failures + 1;
            *state = if failures < FAILURES {
                State::Closed { failures }
            } else {
                tracing::warn!("catalog failed {failures} calls in a row: breaker open");
                self.transition("open", 1);
                State::Open { since: now }
            };
        }
    }

    pub fn view(&self, now: Instant) -> BreakerView {
        match *self.lock() {
            State::Closed { failures } => BreakerView {
                state: "closed",
                consecutive_failures: failures,
                open_for_ms: None,
            },
            State::Open { since } => BreakerView {
                state: "open",
                consecutive_failures: FAILURES,
                open_for_ms: Some(
                    u64::try_from(now.saturating_duration_since(since).as_millis())
                        .unwrap_or(u64::MAX),
                ),
            },
        }
    }

    fn transition(&self, to: &'static str, open: i64) {
        self.open.store(open == 1, Ordering::Release);
        self.metrics.open.set(open);
        self.metrics
            .transitions
            .get_or_create(&Transition { to })
            .inc();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transitions(breaker: &Breaker, to: &'static str) -> u64 {
        breaker
            .metrics
            .transitions
            .get_or_create(&Transition { to })
            .get()
    }

    #[test]
    fn opens_after_repeated_failures_and_the_first_success_closes_it() {
        let breaker = Breaker::default();
        let start = Instant::now();
        for failures in 1..FAILURES {
            breaker.failed(start);
            assert_eq!(breaker.admit(), Ok(()), "still closed");
            assert_eq!(breaker.view(start).consecutive_failures, failures);
        }
        breaker.failed(start);
        assert_eq!(breaker.admit(), Err(PROBE_EVERY));
        assert_eq!(breaker.metrics.open.get(), 1);
        let later = start + Duration::from_millis(1500);
        assert_eq!(
            breaker.view(later),
            BreakerView {
                state: "open",
                consecutive_failures: FAILURES,
                open_for_ms: Some(1500),
            }
        );
        // Failures while open change nothing; the first success closes it.
        breaker.failed(later);
        assert_eq!(transitions(&breaker, "open"), 1);
        breaker.succeeded();
        assert_eq!(breaker.admit(), Ok(()));
        assert_eq!(breaker.metrics.open.get(), 0);
        assert_eq!(transitions(&breaker, "closed"), 1);
        assert_eq!(breaker.view(later).state, "closed");
    }

    #[test]
    fn a_success_resets_the_count() {
        let breaker = Breaker::default();
        let now = Instant::now();
        for _ in 0..FAILURES - 1 {
            breaker.failed(now);
        }
        breaker.succeeded();
        breaker.failed(now);
        assert_eq!(breaker.admit(), Ok(()));
        assert_eq!(transitions(&breaker, "closed"), 0, "it never opened");
    }
}
