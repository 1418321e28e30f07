//! Calls to the order group's leader. Reads are retried on a re-elected leader a few times.
//! Writes (place, modify, cancel) go under an idempotency key and are retried with it until
//! they have a true answer or [`WRITE_DEADLINE`] passes (DESIGN I11): 200 executed; 4xx and
//! 503 not executed, and never will be; 504 (outcome unknown) only once an attempt may have
//! reached a leader that could have executed it.

use std::time::Duration;

use axum::response::Response;
use serde_json::Value;
use stocknet_common::client::{call, endpoint};
use stocknet_common::data;
use stocknet_common::wire::CATALOG_UNAVAILABLE;
use stocknet_common::RemoteError;
use tokio::time::Instant;

use crate::upstream::leader::Leader;
use crate::{AppState, FrontendError};

/// How long a write is retried under its key before the answer is 504.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(6);

/// How long one write to a leader may take before the leader counts as hung and another is
/// elected. A healthy leader answers in milliseconds; a round that waits on a hung catalog
/// ends within the leader's 1.5 s deadline for it (and the breaker is open by then).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a read may wait for the leader: it waits for a commit round to confirm the
/// leadership (a read index), and with the catalog hung a round in flight takes up to the
/// leader's 1.5 s deadline for the catalog before the next one confirms.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// How many times a read goes to a (re-elected) leader.
const READ_ATTEMPTS: usize = 3;

/// Pause before the first retry of a write; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Runs `send` against the leader; when the leader is unreachable or cannot serve (a 5xx),
/// elects another and tries again, a bounded number of times. Client errors (4xx) are final.
pub(crate) async fn read<T, F, Fut>(state: &AppState, send: F) -> Result<T, FrontendError>
where
    F: Fn(&Leader) -> Fut,
    Fut: std::future::Future<Output = Result<T, RemoteError>>,
{
    let inner = &state.inner;
    let mut leader = inner
        .election
        .leader()
        .await
        .ok_or(FrontendError::NoLeader)?;
    for attempt in 1..=READ_ATTEMPTS {
        let failure = match tokio::time::timeout(READ_TIMEOUT, send(&leader)).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(RemoteError::Api(error))) if error.status.is_client_error() => {
                return Err(FrontendError::Upstream(error));
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {READ_TIMEOUT:?}"),
        };
        tracing::warn!(leader = leader.id, attempt, "leader read failed: {failure}");
        if attempt == READ_ATTEMPTS {
            break;
        }
        inner.order_retries.inc();
        leader = inner
            .election
            .replace(Some(&leader))
            .await
            .ok_or(FrontendError::NoLeader)?;
    }
    Err(FrontendError::NoLeader)
}

/// Forwards a read of the book to the leader, whose book holds every committed entry; the
/// query string goes as it came (the replica validates it).
pub(crate) async fn forward_read(
    state: &AppState,
    segments: &[&str],
    query: Option<&str>,
) -> Result<Response, FrontendError> {
    let value: Value = read(state, |leader| {
        let request = endpoint(&leader.url, segments).map(|mut url| {
            url.set_query(query);
            state.inner.leader_read(url)
        });
        async move { call::<Value>(request?).await }
    })
    .await?;
    Ok(data(value))
}

/// What one attempt of a write says about it.
#[derive(Debug, PartialEq)]
pub(crate) enum Attempt<T> {
    /// Executed: the answer.
    Done(T),
    /// A client error (4xx): not executed, and a retry would be refused the same way.
    Refused(stocknet_common::ApiError),
    /// Not executed: never sent (no connection), or refused by the replica before it wrote
    /// anything (503). `catalog` when the catalog is what failed.
    NotExecuted { catalog: bool },
    /// Sent, and no answer says how it went: no answer in time, a 5xx after the replica wrote
    /// the command, a body that is not an envelope.
    Unknown { catalog: bool },
}

impl<T> Attempt<T> {
    pub(crate) fn of(result: Result<T, RemoteError>) -> Self {
        match result {
            Ok(value) => Self::Done(value),
            Err(RemoteError::Api(error)) => {
                let catalog =
                    error.extra.get("reason").and_then(|r| r.as_str()) == Some(CATALOG_UNAVAILABLE);
                if error.status.is_client_error() {
                    Self::Refused(error)
                } else if error.status == axum::http::StatusCode::SERVICE_UNAVAILABLE {
                    Self::NotExecuted { catalog }
                } else {
                    Self::Unknown { catalog }
                }
            }
            Err(RemoteError::Unreachable(e)) if e.is_connect() => {
                Self::NotExecuted { catalog: false }
            }
            Err(RemoteError::Unreachable(_) | RemoteError::Decode(_)) => {
                Self::Unknown { catalog: false }
            }
        }
    }
}

/// Sends a write to the leader with `send` (which puts `key` on it) until it has a true
/// answer. Retries go to a newly elected leader when the last one did not answer or said it
/// cannot lead, and to the same one when only the catalog failed; they stop at the deadline,
/// or at once when the catalog's breaker is open. Then the answer is 503 if no attempt can have
/// executed, else 504 with `key`.
pub(crate) async fn write<T, F, Fut>(
    state: &AppState,
    key: &str,
    send: F,
) -> Result<T, FrontendError>
where
    F: Fn(&Leader) -> Fut,
    Fut: std::future::Future<Output = Result<T, RemoteError>>,
{
    let inner = &state.inner;
    let deadline = Instant::now() + WRITE_DEADLINE;
    let mut maybe_executed = false;
    let mut backoff = FIRST_BACKOFF;
    let mut leader = inner.election.leader().await;
    loop {
        let mut elect = true;
        if let Some(current) = &leader {
            let until = deadline.min(Instant::now() + ATTEMPT_TIMEOUT);
            let attempt = match tokio::time::timeout_at(until, send(current)).await {
                Ok(result) => Attempt::of(result),
                // The request may be at the leader: it is dropped, not undone.
                Err(_) => Attempt::Unknown { catalog: false },
            };
            match attempt {
                Attempt::Done(value) => return Ok(value),
                Attempt::Refused(error) => return Err(FrontendError::Upstream(error)),
                Attempt::NotExecuted { catalog: true } if !maybe_executed => {
                    return Err(FrontendError::CatalogDown {
                        retry_after: crate::upstream::breaker::PROBE_EVERY,
                    });
                }
                Attempt::NotExecuted { catalog } => {
                    elect = !catalog;
                    tracing::warn!(leader = current.id, key, catalog, "order not executed");
                }
                Attempt::Unknown { catalog } => {
                    maybe_executed = true;
                    elect = !catalog;
                    tracing::warn!(leader = current.id, key, catalog, "order outcome unknown");
                }
            }
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if let Err(retry_after) = inner.catalog_breaker.admit() {
            // Nothing can commit without the catalog; say at once what is known.
            if maybe_executed {
                break;
            }
            return Err(FrontendError::CatalogDown { retry_after });
        }
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        inner.order_retries.inc();
        leader = match (elect, leader) {
            (false, Some(current)) => Some(current),
            // An election that outlasts the deadline leaves the write's answer as it is.
            (_, failed) => {
                match tokio::time::timeout_at(deadline, inner.election.replace(failed.as_ref()))
                    .await
                {
                    Ok(found) => found,
                    Err(_) => break,
                }
            }
        };
    }
    if maybe_executed {
        Err(FrontendError::OutcomeUnknown {
            key: key.to_owned(),
        })
    } else {
        Err(FrontendError::NoLeader)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use stocknet_common::ApiError;

    fn api(status: StatusCode, reason: Option<&str>) -> Result<(), RemoteError> {
        let error = ApiError::new(status, "x");
        Err(RemoteError::Api(match reason {
            Some(reason) => error.with("reason", reason),
            None => error,
        }))
    }

    #[test]
    fn only_answers_that_rule_execution_out_are_not_executed() {
        assert_eq!(Attempt::of(Ok(7)), Attempt::Done(7));
        let conflict = ApiError::new(StatusCode::CONFLICT, "x");
        assert_eq!(
            Attempt::of(api(StatusCode::CONFLICT, None)),
            Attempt::Refused(conflict)
        );
        assert_eq!(
            Attempt::of(api(StatusCode::SERVICE_UNAVAILABLE, None)),
            Attempt::NotExecuted { catalog: false }
        );
        assert_eq!(
            Attempt::of(api(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(CATALOG_UNAVAILABLE)
            )),
            Attempt::NotExecuted { catalog: true }
        );
        for status in [
            StatusCode::GATEWAY_TIMEOUT,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
        ] {
            assert_eq!(
                Attempt::of(api(status, None)),
                Attempt::Unknown { catalog: false }
            );
        }
        assert_eq!(
            Attempt::of(api(StatusCode::GATEWAY_TIMEOUT, Some(CATALOG_UNAVAILABLE))),
            Attempt::Unknown { catalog: true }
        );
        assert_eq!(
            Attempt::<()>::of(Err(RemoteError::Decode("not JSON".into()))),
            Attempt::Unknown { catalog: false }
        );
    }

    /// A refused connection never reached anybody; a timeout may have.
    #[tokio::test]
    async fn a_refused_connection_is_not_executed_and_a_timeout_is_unknown() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let http = reqwest::Client::new();
        let refused = stocknet_common::call::<()>(http.get(format!("http://127.0.0.1:{port}/")));
        assert_eq!(
            Attempt::of(refused.await),
            Attempt::NotExecuted { catalog: false }
        );
        // A listener that accepts and never answers, like a hung (SIGSTOPped) process.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", silent.local_addr().unwrap());
        let hung = http.get(url).timeout(Duration::from_millis(100));
        assert_eq!(
            Attempt::of(stocknet_common::call::<()>(hung).await),
            Attempt::Unknown { catalog: false }
        );
    }
}
