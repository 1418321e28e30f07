//! What the memory benches share: the process's resident set, and the keyed market order the
//! log benches write.

// Each bench that includes this module uses some of it.
#![allow(dead_code)]

use stocknet_common::{Command, Order, Side, Stamp};

/// The process's resident set, in kB.
pub fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Order `number`: a market order of 3 shares, buying or selling by turns, under a key like
/// the frontend's.
pub fn keyed_order(number: u64) -> Order {
    Order {
        number,
        term: 1,
        name: "GameStart".into(),
        key: Some(format!("fe-7f3a9c-{number}")),
        user: None,
        stamp: Stamp::default(),
        command: Command::Place {
            side: if number.is_multiple_of(2) {
                Side::Buy
            } else {
                Side::Sell
            },
            quantity: 3,
            limit: None,
            options: None,
        },
    }
}
