//! Domain types that cross service boundaries.

use serde::{Deserialize, Serialize};

/// The side of a trade, spelled as the public API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "buy" => Some(Self::Buy),
            "sell" => Some(Self::Sell),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Buy => "buy",
            Self::Sell => "sell",
        }
    }

    /// How the order changes the catalog's quantity: a buy takes shares out of it.
    pub fn delta(self, quantity: u32) -> i64 {
        match self {
            Self::Buy => -i64::from(quantity),
            Self::Sell => i64::from(quantity),
        }
    }
}

/// A stock as the catalog holds it and the public API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stock {
    pub name: String,
    pub price: f64,
    pub quantity: u64,
}

/// One entry of the replicated order log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Transaction number: dense, starting at 1, assigned by the leader.
    pub number: u64,
    /// Term of the leader that sequenced this order.
    pub term: u64,
    pub name: String,
    #[serde(rename = "type")]
    pub side: Side,
    pub quantity: u32,
    /// Idempotency key the order was placed with, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// The catalog's cache-invalidation push to a frontend: every stock a catalog update named,
/// in one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidation {
    pub names: Vec<String>,
}
