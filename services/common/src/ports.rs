//! The ports StockNet's services listen on unless told otherwise: their flags' defaults, and
//! the ports the operator gives their pods.

pub const FRONTEND: u16 = 8080;
pub const CATALOG: u16 = 8081;
/// The frontend's internal routes, on a port of their own where a network policy needs it.
pub const FRONTEND_INTERNAL: u16 = 8082;
/// The first order replica's (`stocknet up` gives the next ones the ports after it).
pub const ORDER: u16 = 8091;
/// `GET /metrics` on a port of its own, where one is asked for.
pub const METRICS: u16 = 9090;
