//! Log lines kept to a budget a second: a fault under load repeats one line thousands of times
//! a second, which would flood the log and its disk; the metrics count every occurrence.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many lines may be written each second, and how many were left out.
pub struct LineBudget {
    most: u32,
    window: Mutex<Option<LineWindow>>,
}

#[derive(Debug)]
struct LineWindow {
    started: Instant,
    written: u32,
    left_out: u64,
}

impl LineBudget {
    pub const fn per_second(most: u32) -> Self {
        Self {
            most,
            window: Mutex::new(None),
        }
    }

    /// Whether a line may be written at `now`, with how many were left out since the last
    /// one written; `None`: leave it out.
    pub fn take(&self, now: Instant) -> Option<u64> {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        match window.as_mut() {
            Some(open) if now.saturating_duration_since(open.started) < Duration::from_secs(1) => {
                if open.written < self.most {
                    open.written += 1;
                    Some(0)
                } else {
                    open.left_out += 1;
                    None
                }
            }
            _ => {
                let left_out = window.as_ref().map_or(0, |last| last.left_out);
                *window = Some(LineWindow {
                    started: now,
                    written: 1,
                    left_out: 0,
                });
                Some(left_out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An outage answers thousands of 5xx a second: at most the budget's lines are written
    /// each second, and the first line after one that left some out says how many.
    #[test]
    fn lines_are_kept_to_a_budget_a_second_and_the_next_says_what_was_left_out() {
        let budget = LineBudget::per_second(3);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let first: Vec<Option<u64>> = (0..5).map(|i| budget.take(at(i * 100))).collect();
        assert_eq!(first, [Some(0), Some(0), Some(0), None, None]);
        assert_eq!(
            budget.take(at(1_000)),
            Some(2),
            "a new second; two left out"
        );
        assert_eq!(budget.take(at(1_100)), Some(0));
        assert_eq!(budget.take(at(5_000)), Some(0), "none left out since");
    }
}
