use axum::response::{IntoResponse, Response};
use stocknet_common::file::FileFailure;
use stocknet_common::wire::{CATALOG_UNAVAILABLE, LEADER_HINT, LEADER_HINT_TERM};
use stocknet_common::{ApiError, Cause, Classified, Price, Rejection, RemoteError};

use crate::book::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("Stock not found")]
    StockNotFound,
    /// The leader refused a new order, and logged the refusal as entry `number`; `quote` is
    /// the stock's price it saw.
    #[error("{}", rejection_message(*.rejection, *.quote))]
    Rejected {
        rejection: Rejection,
        quote: Option<Price>,
        number: u64,
    },
    #[error("Order {0} belongs to another user")]
    NotOwner(u64),
    #[error("Order number invalid")]
    OrderNotFound,
    #[error("No open order has client_order_id {0:?}")]
    ClientOrderIdNotOpen(String),
    #[error("Transaction {0} is not an order: a modify, a cancel, or the group's own entry")]
    NotAnOrder(u64),
    /// The book refused the command, logged as entry `number`.
    #[error("{refusal}")]
    Refused { refusal: Refusal, number: u64 },
    #[error("{0}")]
    InvalidChange(&'static str),
    #[error("Idempotency-Key was used for a different request")]
    KeyReused,
    /// Not the leader; `leader` is the one this replica follows, and its term, if it knows one.
    #[error("Not the leader")]
    NotLeader { leader: Option<(u32, u64)> },
    #[error("Replica is not ready: it knows no leader, or is still taking over as one")]
    NotReady,
    /// A leader handing the leadership over takes nothing more; it executed nothing of this.
    #[error("Leadership is moving to replica {0}; retry shortly")]
    HandingOver(u32),
    #[error("order log ends at {last}")]
    Gap { last: u64 },
    #[error("after {after} is past the end of the order log ({last})")]
    PastTheLog { after: u64, last: u64 },
    #[error("catalog unavailable: {0}")]
    CatalogUnavailable(String),
    /// The command is in the leader's log, and whether it commits is not known: a commit
    /// round failed after it was written, or the leader stopped leading.
    #[error("outcome unknown ({cause}): retry with the same Idempotency-Key")]
    OutcomeUnknown { cause: String, catalog: bool },
    #[error("order log is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Io(#[from] stocknet_common::file::FileError),
    /// A membership step asked with a value no group can take (a bad URL, id 0, no voter).
    #[error("membership: {0}")]
    InvalidMembership(String),
    /// A membership step that cannot be taken in the group as it stands.
    #[error("membership: {0}")]
    Membership(String),
    /// A membership step was proposed and had not committed by the deadline: it may yet.
    #[error("membership change not committed within {0:?}; GET /members shows how far it got")]
    MembershipPending(std::time::Duration),
    #[error("configuration: {0}")]
    Config(String),
    #[error("internal task failed: {0}")]
    Task(String),
    #[error("{0}")]
    Secret(#[from] stocknet_common::auth::SecretError),
}

impl OrderError {
    pub fn task(error: tokio::task::JoinError) -> Self {
        Self::Task(error.to_string())
    }

    pub fn catalog(error: RemoteError) -> Self {
        Self::CatalogUnavailable(error.to_string())
    }
}

impl Classified for OrderError {
    fn cause(&self) -> Cause {
        use OrderError as E;
        match self {
            E::Rejected {
                rejection: Rejection::QuantityOverflow,
                ..
            }
            | E::InvalidChange(_)
            | E::PastTheLog { .. }
            | E::InvalidMembership(_) => Cause::Input,
            E::NotOwner(_) => Cause::Forbidden,
            E::StockNotFound
            | E::OrderNotFound
            | E::NotAnOrder(_)
            | E::ClientOrderIdNotOpen(_)
            | E::Refused {
                refusal: Refusal::NotFound(_),
                ..
            } => Cause::NotFound,
            E::Refused { .. } | E::Rejected { .. } | E::Gap { .. } | E::Membership(_) => {
                Cause::Conflict
            }
            E::KeyReused => Cause::KeyReused,
            E::NotLeader { .. } | E::NotReady | E::HandingOver(_) | E::CatalogUnavailable(_) => {
                Cause::Unavailable
            }
            E::OutcomeUnknown { .. } | E::MembershipPending(_) => Cause::OutcomeUnknown,
            E::Corrupt(_) | E::Io(_) | E::Config(_) | E::Task(_) | E::Secret(_) => Cause::Internal,
        }
    }

    fn detail(&self, api: ApiError) -> ApiError {
        use OrderError as E;
        match *self {
            // Tells a frontend not to elect another leader over it (see wire::CATALOG_UNAVAILABLE).
            E::CatalogUnavailable(_) | E::OutcomeUnknown { catalog: true, .. } => {
                api.with("reason", CATALOG_UNAVAILABLE)
            }
            E::NotLeader {
                leader: Some((leader, term)),
            } => api.with(LEADER_HINT, leader).with(LEADER_HINT_TERM, term),
            // The reason in a field of its own, and the price to retry with if it moved.
            E::Refused { refusal, number } => api
                .with("reason", refusal.reason())
                .with("transaction_number", number),
            E::Rejected {
                rejection,
                quote,
                number,
            } => {
                let api = api
                    .with("reason", rejection)
                    .with("transaction_number", number);
                match (rejection, quote) {
                    (Rejection::PriceMoved, Some(quote)) => api.with("current_price", quote),
                    _ => api,
                }
            }
            _ => api,
        }
    }
}

impl From<OrderError> for ApiError {
    fn from(error: OrderError) -> Self {
        ApiError::classified(&error)
    }
}

fn rejection_message(rejection: Rejection, quote: Option<Price>) -> String {
    match (rejection, quote) {
        (Rejection::InsufficientQuantity, _) => "Insufficient stock quantity".into(),
        (Rejection::QuantityOverflow, _) => "Quantity would overflow".into(),
        (Rejection::PriceMoved, Some(quote)) => format!(
            "price_moved: the price is {quote}, further from expected_price than the order allows"
        ),
        (Rejection::PriceMoved, None) => "price_moved".into(),
    }
}

impl IntoResponse for OrderError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

impl FileFailure for OrderError {
    fn corrupt_message(&mut self) -> Option<&mut String> {
        match self {
            Self::Corrupt(message) => Some(message),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn not_the_leader_names_the_leader_it_follows_when_it_knows_one() {
        let hinted = ApiError::from(OrderError::NotLeader {
            leader: Some((3, 7)),
        });
        assert_eq!(hinted.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(hinted.extra.get(LEADER_HINT), Some(&serde_json::json!(3)));
        assert_eq!(
            hinted.extra.get(LEADER_HINT_TERM),
            Some(&serde_json::json!(7))
        );
        let unknown = ApiError::from(OrderError::NotLeader { leader: None });
        assert!(unknown.extra.get(LEADER_HINT).is_none());
    }
}
