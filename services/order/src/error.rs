use std::path::Path;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use stocknet_common::{ApiError, RemoteError};

use crate::book::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("Stock not found")]
    StockNotFound,
    #[error("Insufficient stock quantity")]
    InsufficientQuantity,
    #[error("Quantity would overflow")]
    QuantityOverflow,
    #[error("Order number invalid")]
    OrderNotFound,
    #[error("Transaction {0} is a modify or cancel, not an order")]
    NotAnOrder(u64),
    #[error("{0}")]
    Refused(#[from] Refusal),
    #[error("{0}")]
    InvalidChange(&'static str),
    #[error("Idempotency-Key was used for a different request")]
    KeyReused,
    #[error("Not the leader")]
    NotLeader,
    #[error("Replica is not ready: resync in progress")]
    NotReady,
    #[error("stale leader term {term}; current term is {current}")]
    StaleTerm { term: u64, current: u64 },
    #[error("term {term} is a jump from {current} that no election produces")]
    TermJump { term: u64, current: u64 },
    #[error("term {term} already has leader {current}")]
    LeaderTaken { term: u64, current: u32 },
    #[error("order log ends at {last}")]
    Gap { last: u64 },
    #[error("could not replicate to a majority ({acks} of {needed} replicas)")]
    NoMajority { acks: usize, needed: usize },
    #[error("peer unavailable: {0}")]
    PeerUnavailable(String),
    #[error("catalog unavailable: {0}")]
    CatalogUnavailable(String),
    #[error("order log is corrupt: {0}")]
    Corrupt(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error("internal task failed: {0}")]
    Task(String),
    #[error("{0}")]
    Secret(#[from] stocknet_common::auth::SecretError),
}

impl OrderError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub fn in_file(self, path: &Path) -> Self {
        match self {
            Self::Corrupt(message) => Self::Corrupt(format!("{}: {message}", path.display())),
            other => other,
        }
    }

    pub fn task(error: tokio::task::JoinError) -> Self {
        Self::Task(error.to_string())
    }

    pub fn catalog(error: RemoteError) -> Self {
        Self::CatalogUnavailable(error.to_string())
    }
}

impl From<OrderError> for ApiError {
    fn from(error: OrderError) -> Self {
        use OrderError as E;
        let status = match &error {
            E::StockNotFound
            | E::OrderNotFound
            | E::NotAnOrder(_)
            | E::Refused(Refusal::NotFound(_)) => StatusCode::NOT_FOUND,
            E::QuantityOverflow | E::InvalidChange(_) => StatusCode::BAD_REQUEST,
            E::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            E::Refused(Refusal::NotOpen(_) | Refusal::BelowFilled { .. }) => StatusCode::CONFLICT,
            E::InsufficientQuantity
            | E::StaleTerm { .. }
            | E::TermJump { .. }
            | E::LeaderTaken { .. }
            | E::Gap { .. } => StatusCode::CONFLICT,
            E::NotLeader
            | E::NotReady
            | E::NoMajority { .. }
            | E::PeerUnavailable(_)
            | E::CatalogUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            E::Corrupt(_) | E::Io { .. } | E::Config(_) | E::Task(_) | E::Secret(_) => {
                return ApiError::internal(&error);
            }
        };
        ApiError::new(status, error.to_string())
    }
}

impl IntoResponse for OrderError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}
