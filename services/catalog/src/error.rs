use axum::response::{IntoResponse, Response};
use stocknet_common::file::FileFailure;
use stocknet_common::{ApiError, Cause, Classified};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("Stock not found")]
    StockNotFound(String),
    #[error("User not found")]
    UserNotFound,
    #[error("Key not found")]
    KeyNotFound,
    #[error("A user holds at most {0} keys at once: revoke one first")]
    TooManyKeys(usize),
    #[error("A user makes at most {0} keys in all, revoked ones included: register another user")]
    KeysUsedUp(usize),
    #[error("{0}")]
    Invalid(String),
    #[error("Insufficient stock quantity")]
    InsufficientQuantity,
    #[error("trade {next} does not follow the last applied trade {applied}")]
    Gap { applied: u64, next: u64 },
    #[error("stale leader term {term}; current term is {current}")]
    StaleTerm { term: u64, current: u64 },
    #[error("term {term} is a jump from {current} that no election produces")]
    TermJump { term: u64, current: u64 },
    #[error("catalog file is corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Io(#[from] stocknet_common::file::FileError),
    #[error("The users' file is busy: nothing was changed, try again")]
    UsersBusy,
    #[error("The catalog is catching up with the order group after its machine restarted: try again shortly")]
    Behind,
    #[error("internal task failed: {0}")]
    Task(String),
    #[error("{0}")]
    Secret(#[from] stocknet_common::auth::SecretError),
}

impl Classified for CatalogError {
    fn cause(&self) -> Cause {
        match self {
            Self::StockNotFound(_) | Self::UserNotFound | Self::KeyNotFound => Cause::NotFound,
            Self::Invalid(_) => Cause::Input,
            Self::InsufficientQuantity
            | Self::TooManyKeys(_)
            | Self::KeysUsedUp(_)
            | Self::Gap { .. }
            | Self::StaleTerm { .. }
            | Self::TermJump { .. } => Cause::Conflict,
            Self::UsersBusy | Self::Behind => Cause::Unavailable,
            Self::Corrupt(_) | Self::Io(_) | Self::Task(_) | Self::Secret(_) => Cause::Internal,
        }
    }
}

impl From<&CatalogError> for ApiError {
    fn from(error: &CatalogError) -> Self {
        let answer = ApiError::classified(error);
        match error {
            CatalogError::Behind => answer.with("reason", stocknet_common::wire::CATCHING_UP),
            _ => answer,
        }
    }
}

impl IntoResponse for CatalogError {
    fn into_response(self) -> Response {
        ApiError::from(&self).into_response()
    }
}

impl FileFailure for CatalogError {
    fn corrupt_message(&mut self) -> Option<&mut String> {
        match self {
            Self::Corrupt(message) => Some(message),
            _ => None,
        }
    }
}
