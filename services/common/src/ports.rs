//! The ports StockNet's services listen on unless told otherwise: their flags' defaults, and
//! the ports the operator gives their pods. Each number is written once; the URLs that flags
//! take as their defaults (clap takes a default as text) are made from it.

/// A default port and its URL on 127.0.0.1.
macro_rules! port {
    ($(#[$doc:meta])* $port:ident, $url:ident = $number:literal) => {
        $(#[$doc])*
        pub const $port: u16 = $number;
        #[doc = concat!("`http://127.0.0.1:", $number, "`: the default URL of [`", stringify!($port), "`].")]
        pub const $url: &str = concat!("http://127.0.0.1:", $number);
    };
}

port!(FRONTEND, FRONTEND_URL = 8080);
port!(CATALOG, CATALOG_URL = 8081);
/// The frontend's internal routes, on a port of their own where a network policy needs it.
pub const FRONTEND_INTERNAL: u16 = 8082;
/// `GET /metrics` on a port of its own, where one is asked for.
pub const METRICS: u16 = 9090;

/// The three order replicas' default ports: the first is a replica's own default, `stocknet
/// up` runs all three.
macro_rules! order_ports {
    ($first:literal, $second:literal, $third:literal) => {
        /// The first order replica's.
        pub const ORDER: u16 = $first;
        /// `stocknet up`'s replicas, ids 1, 2, 3 in this order.
        pub const ORDER_PORTS: &str = concat!($first, ",", $second, ",", $third);
        /// The replicas a frontend calls by default, as `ID=URL`.
        pub const ORDER_REPLICAS: &str = concat!(
            "1=http://127.0.0.1:",
            $first,
            ",2=http://127.0.0.1:",
            $second,
            ",3=http://127.0.0.1:",
            $third
        );
    };
}

order_ports!(8091, 8092, 8093);
