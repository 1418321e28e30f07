//! Calls to the order group's leader. Reads are retried on the leader found again a few times.
//! Writes (place, modify, cancel) go under an idempotency key and are retried with it until
//! they have a true answer or [`WRITE_DEADLINE`] passes (I11, docs/ARCHITECTURE.md): 200
//! executed; 4xx and 503 not executed, and never will be; 504 (outcome unknown) only once an
//! attempt may have reached a leader that could have executed it.

use std::time::Duration;

use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;
use stocknet_common::client::call;
use stocknet_common::data;
use stocknet_common::paths::Route;
use stocknet_common::wire::CATALOG_UNAVAILABLE;
use stocknet_common::RemoteError;
use tokio::time::Instant;

use crate::upstream::is_for_client;
use crate::upstream::leader::{hint, Leader};
use crate::{Answer, AppState, FrontendError};

/// How long a call to the leader waits before the frontend also asks the replicas whether
/// they replaced it, and then how often: a hung leader is replaced by the group in 0.4–0.6 s
/// (its followers' election timeouts), and a call waiting on it moves to the new one without
/// waiting out its deadline. (The calls waiting share one look at a time, so asking often
/// costs the replicas little.)
const HEDGE_AFTER: Duration = Duration::from_millis(400);
const HEDGE_EVERY: Duration = Duration::from_millis(100);

/// How long a write is retried under its key before the answer is 504.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(6);

/// How long one write to a leader may take before the leader counts as hung and the frontend
/// looks for another. A healthy leader answers in milliseconds; a round that waits on a hung catalog
/// ends within the leader's 1.5 s deadline for it (and the breaker is open by then).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one read may wait for the leader: it confirms its leadership with a heartbeat
/// round a majority answers (a read index) before it serves.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a read goes on finding the leader and retrying: long enough to ride over an
/// election (about a second, or the read timeout when the leader hangs).
const READ_DEADLINE: Duration = Duration::from_secs(5);

/// Pause before the first retry of a write; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// Runs `send` against the leader; when the leader is unreachable or cannot serve (a 5xx),
/// or while the group has none (an election takes about a second), finds the leader again
/// and retries after a pause, until [`READ_DEADLINE`]. Client errors (4xx) are final.
pub(crate) async fn read<T, F, Fut>(state: &AppState, send: F) -> Result<T, FrontendError>
where
    F: Fn(&Leader) -> Fut,
    Fut: std::future::Future<Output = Result<T, RemoteError>>,
{
    let inner = &state.inner;
    let deadline = Instant::now() + READ_DEADLINE;
    let mut leader = leader_by(state, deadline).await;
    let mut backoff = FIRST_BACKOFF;
    // A leader's 504: what it reads is still being decided (a command under a key, in flight).
    let mut undecided = None;
    loop {
        let mut hinted = None;
        let mut still_leads = false;
        if let Some(current) = &leader {
            let until = deadline.min(Instant::now() + READ_TIMEOUT);
            let failure = match tokio::time::timeout_at(until, send(current)).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(RemoteError::Api(error))) if is_for_client(&error) => {
                    return Err(FrontendError::Upstream(error));
                }
                // The leader answered: ask it again, not another.
                Ok(Err(RemoteError::Api(error))) if error.status == StatusCode::GATEWAY_TIMEOUT => {
                    still_leads = true;
                    let failure = error.message.clone();
                    undecided = Some(error);
                    failure
                }
                Ok(Err(e)) => {
                    hinted = hint(&e);
                    e.to_string()
                }
                Err(_) => "no answer in time".to_owned(),
            };
            tracing::warn!(leader = current.id, "leader read failed: {failure}");
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        inner.order_retries.inc();
        if still_leads {
            continue;
        }
        let replacing = inner.leaders.replace(leader.as_ref(), hinted);
        leader = tokio::time::timeout_at(deadline, replacing)
            .await
            .ok()
            .flatten();
    }
    Err(undecided.map_or(FrontendError::NoLeader, FrontendError::Upstream))
}

/// The leader, if one is known or found before `deadline`: with replicas that hang, a search
/// takes a while, and requests wait for the one under way.
async fn leader_by(state: &AppState, deadline: Instant) -> Option<Leader> {
    let finding = state.inner.leaders.leader();
    tokio::time::timeout_at(deadline, finding)
        .await
        .ok()
        .flatten()
}

/// `GET` of `route` (with `params`, and `query` as it came) from the leader, through [`read`].
pub(crate) async fn get<T: DeserializeOwned>(
    state: &AppState,
    route: Route,
    params: &[&str],
    query: Option<&str>,
) -> Result<T, FrontendError> {
    read(state, |leader| {
        let request = route.url(&leader.url, params).map(|mut url| {
            url.set_query(query);
            state.inner.leader_read(url)
        });
        async move { call::<T>(request?).await }
    })
    .await
}

/// Forwards a read of the book to the leader, whose book holds every committed entry; the
/// query string goes as it came (the replica validates it).
pub(crate) async fn forward_read(
    state: &AppState,
    route: Route,
    params: &[&str],
    query: Option<&str>,
) -> Answer {
    let value: Value = get(state, route, params, query).await?;
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
                if is_for_client(&error) {
                    Self::Refused(error)
                } else if matches!(
                    error.status,
                    // A 401: the replica's secret check refused it before anything ran.
                    StatusCode::UNAUTHORIZED | StatusCode::SERVICE_UNAVAILABLE
                ) {
                    Self::NotExecuted { catalog }
                } else {
                    Self::Unknown { catalog }
                }
            }
            Err(e) if e.never_sent() => Self::NotExecuted { catalog: false },
            // (An error status without an envelope is not the replica's word: a proxy's 503
            // says nothing of whether the replica wrote the command.)
            Err(RemoteError::Unreachable(_) | RemoteError::Decode(_) | RemoteError::Status(..)) => {
                Self::Unknown { catalog: false }
            }
        }
    }
}

/// Sends a write to the leader with `send` (which puts `key` on it) until it has a true
/// answer. Retries go to a newly elected leader when the last one did not answer or said it
/// cannot lead, and to the same one when only the catalog failed; they stop at the deadline,
/// or at once when the catalog's breaker is open. Then the answer is 503 if no attempt can have
/// executed, else 504 with `key`. A key `from_client` may name a command an earlier request
/// executed: unless a leader answers for it, its outcome is unknown (504) from the start.
pub(crate) async fn write<T, F, Fut>(
    state: &AppState,
    key: &str,
    from_client: bool,
    send: F,
) -> Result<T, FrontendError>
where
    F: Fn(&Leader) -> Fut,
    Fut: std::future::Future<Output = Result<T, RemoteError>>,
{
    let inner = &state.inner;
    let deadline = Instant::now() + WRITE_DEADLINE;
    let mut maybe_executed = from_client;
    let mut backoff = FIRST_BACKOFF;
    let mut leader = leader_by(state, deadline).await;
    loop {
        let mut search = true;
        let mut replaced = None;
        let mut hinted = None;
        if let Some(current) = &leader {
            let until = deadline.min(Instant::now() + ATTEMPT_TIMEOUT);
            let attempt = tokio::select! {
                result = tokio::time::timeout_at(until, send(current)) => match result {
                    Ok(result) => {
                        hinted = result.as_ref().err().and_then(hint);
                        Attempt::of(result)
                    }
                    // The request may be at the leader: it is dropped, not undone.
                    Err(_) => Attempt::Unknown { catalog: false },
                },
                // The group replaced the leader while the call waited (it hangs): the request
                // may be at the old one, so it goes on under its key at the new one at once.
                newer = newer_leader(state, current) => {
                    replaced = Some(newer);
                    Attempt::Unknown { catalog: false }
                }
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
                    search = !catalog;
                    tracing::warn!(leader = current.id, key, catalog, "order not executed");
                }
                Attempt::Unknown { catalog } => {
                    maybe_executed = true;
                    search = !catalog;
                    tracing::warn!(leader = current.id, key, catalog, "order outcome unknown");
                }
            }
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if let Some(newer) = replaced {
            leader = Some(newer);
            inner.order_retries.inc();
            continue;
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
        leader = match (search, leader) {
            (false, Some(current)) => Some(current),
            // A search that outlasts the deadline leaves the write's answer as it is.
            (_, failed) => {
                let replacing = inner.leaders.replace(failed.as_ref(), hinted);
                match tokio::time::timeout_at(deadline, replacing).await {
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

/// Resolves with the leader the replicas elected in place of `current`, asking from
/// [`HEDGE_AFTER`] on; never if they keep it.
async fn newer_leader(state: &AppState, current: &Leader) -> Leader {
    tokio::time::sleep(HEDGE_AFTER).await;
    loop {
        if let Some(newer) = state.inner.leaders.newer_than(current).await {
            return newer;
        }
        tokio::time::sleep(HEDGE_EVERY).await;
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
        for status in [StatusCode::SERVICE_UNAVAILABLE, StatusCode::UNAUTHORIZED] {
            assert_eq!(
                Attempt::of(api(status, None)),
                Attempt::NotExecuted { catalog: false }
            );
        }
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
        // An error status whose body is not the replica's envelope (a proxy's) says nothing
        // of what the replica did, whatever the status.
        for status in [
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::UNAUTHORIZED,
            StatusCode::CONFLICT,
        ] {
            let answer = stocknet_common::client::decode::<()>(status, b"upstream reset");
            assert_eq!(Attempt::of(answer), Attempt::Unknown { catalog: false });
        }
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
