//! The paths of the routes one StockNet process calls on another, typed once: a server registers
//! each with [`Route::pattern`] and a client builds its URL with [`Route::url`], so the two
//! sides cannot drift apart. (The public API's paths are the frontend's OpenAPI document's.)

use crate::client::{BaseUrl, RemoteError};

/// A route's path, with `{name}` segments for its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route(&'static str);

impl Route {
    /// The path as a router registers it.
    pub const fn pattern(self) -> &'static str {
        self.0
    }

    /// The route at `base`, with `params` (percent-encoded) for its `{name}` segments, in
    /// order.
    pub fn url(self, base: &BaseUrl, params: &[&str]) -> Result<reqwest::Url, RemoteError> {
        let mut params = params.iter();
        let segments: Option<Vec<&str>> = self
            .0
            .trim_start_matches('/')
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    params.next().copied()
                } else {
                    Some(segment)
                }
            })
            .collect();
        match (segments, params.next()) {
            (Some(segments), None) => Ok(base.join(&segments)),
            _ => Err(RemoteError::Decode(format!(
                "{}: wrong number of parameters",
                self.0
            ))),
        }
    }
}

// Every service.
pub const HEALTH: Route = Route("/health");
pub const METRICS: Route = Route("/metrics");

// An order replica: the probes, what the frontends forward (served from its book, after it
// confirmed its leadership), the market feed, the log, the membership and consensus.
pub const READY: Route = Route("/ready");
pub const ORDERS: Route = Route("/orders");
pub const ORDER: Route = Route("/orders/{number}");
pub const ORDER_BATCH: Route = Route("/orders/batch");
pub const TRADES: Route = Route("/trades");
pub const PORTFOLIO: Route = Route("/portfolios/{user}");
pub const AUDIT: Route = Route("/audit");
pub const DAILY_REPORT: Route = Route("/reports/daily");
pub const BOOK: Route = Route("/book/{name}");
pub const CANDLES: Route = Route("/candles/{name}");
pub const FEED: Route = Route("/feed");
pub const ORDER_FEED: Route = Route("/feed/orders");
pub const LOG_AFTER: Route = Route("/orders/logs/{after}");
pub const MEMBERS: Route = Route("/members");
pub const LEARNERS: Route = Route("/members/learners");
pub const VOTERS: Route = Route("/members/voters");
pub const RAFT_APPEND: Route = Route("/raft/append");
pub const RAFT_VOTE: Route = Route("/raft/vote");
pub const RAFT_SNAPSHOT: Route = Route("/raft/snapshot");
pub const RAFT_PRE_VOTE: Route = Route("/raft/prevote");
pub const RAFT_CATALOG_CHECK: Route = Route("/raft/catalog-check");
pub const RAFT_HANDOVER: Route = Route("/raft/handover");

// The catalog.
pub const STOCKS: Route = Route("/stocks");
pub const STOCK: Route = Route("/stocks/{name}");
pub const SNAPSHOT: Route = Route("/snapshot");
pub const APPLY: Route = Route("/apply");
pub const USERS: Route = Route("/users");
pub const USER: Route = Route("/users/{id}");
pub const USER_KEYS: Route = Route("/users/{id}/keys");
pub const USER_KEY: Route = Route("/users/{id}/keys/{key}");

// A frontend's internal routes: the catalog's invalidation push.
pub const INVALIDATE: Route = Route("/invalidate");
pub const INVALIDATE_ONE: Route = Route("/invalidate/{name}");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_fills_its_parameters_in_order_and_encodes_them() {
        let base: BaseUrl = "http://127.0.0.1:1/".parse().unwrap();
        let url = STOCK.url(&base, &["a b/c"]).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:1/stocks/a%20b%2Fc");
        let url = RAFT_PRE_VOTE.url(&base, &[]).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:1/raft/prevote");
        assert!(ORDER.url(&base, &[]).is_err());
        assert!(HEALTH.url(&base, &["extra"]).is_err());
    }
}
