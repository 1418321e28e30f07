//! What every StockNet service shares: the response envelope, the JSON extractor whose
//! rejections are envelopes too, the shared secret of internal calls, the HTTP client for
//! service-to-service calls, the domain
//! types and the wire protocol that cross service boundaries, serving with graceful
//! shutdown, and durable files.

pub mod api_key;
pub mod auth;
pub mod catalog_file;
pub mod client;
pub mod clock;
pub mod connections;
pub mod deadline;
pub mod env;
pub mod envelope;
pub mod file;
pub mod head_timer;
pub mod listeners;
pub mod log_budget;
pub mod metrics;
pub mod model;
pub mod paths;
pub mod ports;
pub mod request_id;
pub mod ring;
pub mod served;
pub mod server;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod wire;

pub use auth::{Secret, SecretArgs};
pub use client::{call, http_client, internal_client, outside_client, BaseUrl, RemoteError};
pub use envelope::{data, ApiError, Cause, Classified, Json, Path, Query};
pub use model::{
    Command, GroupEntry, Money, Order, OrderOptions, Price, Rejection, SelfTrade, Side, Stamp,
    Status, Stock, Terms, TimeInForce,
};
