//! A circuit breaker in front of the catalog: after [`FAILURES`] calls in a row fail (no
//! answer, or a 5xx), it opens and calls fail at once instead of each waiting out a timeout;
//! after [`OPEN_FOR`] one call goes through as a probe, which closes it again or reopens it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Consecutive failures that open the breaker.
pub const FAILURES: u32 = 3;

/// How long the breaker stays open before it lets a probe through.
pub const OPEN_FOR: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; everyone else is refused until it returns.
    Probing,
}

#[derive(Debug)]
pub struct Breaker {
    state: Mutex<State>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }
}

impl Breaker {
    /// Whether a call may go to the catalog now; if not, how long until it may.
    pub fn admit(&self, now: Instant) -> Result<(), Duration> {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Ok(()),
            State::Open { until } if now >= until => {
                *state = State::Probing;
                Ok(())
            }
            State::Open { until } => Err(until - now),
            State::Probing => Err(OPEN_FOR),
        }
    }

    /// Whether calls are being refused now (for orders, which fail fast then).
    pub fn retry_after(&self, now: Instant) -> Option<Duration> {
        match *self.lock() {
            State::Closed { .. } => None,
            State::Open { until } => Some(until.saturating_duration_since(now)),
            State::Probing => Some(OPEN_FOR),
        }
    }

    pub fn succeeded(&self) {
        let mut state = self.lock();
        if *state != (State::Closed { failures: 0 }) {
            if !matches!(*state, State::Closed { .. }) {
                tracing::info!("catalog reachable again: breaker closed");
            }
            *state = State::Closed { failures: 0 };
        }
    }

    pub fn failed(&self, now: Instant) {
        let mut state = self.lock();
        *state = match *state {
            State::Closed { failures } if failures + 1 < FAILURES => State::Closed {
                failures: failures + 1,
            },
            State::Closed { .. } | State::Probing => {
                tracing::warn!("catalog unreachable: breaker open for {OPEN_FOR:?}");
                State::Open {
                    until: now + OPEN_FOR,
                }
            }
            open @ State::Open { .. } => open,
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_repeated_failures_and_a_probe_closes_it() {
        let breaker = Breaker::default();
        let start = Instant::now();
        for _ in 0..FAILURES - 1 {
            breaker.failed(start);
            assert_eq!(breaker.admit(start), Ok(()), "still closed");
        }
        breaker.failed(start);
        assert_eq!(breaker.admit(start), Err(OPEN_FOR));
        assert_eq!(breaker.retry_after(start), Some(OPEN_FOR));
        // After the open period one probe goes through, the others are refused meanwhile.
        let later = start + OPEN_FOR;
        assert_eq!(breaker.admit(later), Ok(()));
        assert!(breaker.admit(later).is_err());
        // A failed probe reopens it; a successful one closes it.
        breaker.failed(later);
        assert!(breaker.admit(later).is_err());
        let again = later + OPEN_FOR;
        assert_eq!(breaker.admit(again), Ok(()));
        breaker.succeeded();
        assert_eq!(breaker.admit(again), Ok(()));
        assert_eq!(breaker.retry_after(again), None);
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
        assert_eq!(breaker.admit(now), Ok(()));
    }
}
