//! `GET /ws/orders`: a user's own order updates, in log order, resumable after a reconnect.
//!
//! Each connection follows its user's updates on the order leader with long polls from the
//! entry it got to (`GET /feed/orders`), so a stream resumes at any entry the leader still
//! keeps updates for, also across a change of leader: every replica derives the same updates
//! from the same log. Where some are gone, the stream says so (a gap) instead of skipping
//! them silently. The key is checked again before every poll and whenever the frontend forgets
//! credentials (a revocation's push), so a revoked key's stream ends at once.

use std::time::Duration;

use axum::extract::ws::{close_code, Message};
use axum::extract::State;
use axum::http::HeaderMap;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use stocknet_common::api_key::ApiKey;
use stocknet_common::client::call;
use stocknet_common::paths;
use stocknet_common::wire::{OrderUpdate, OrderUpdatePage};
use stocknet_common::{Query, RemoteError};
use utoipa::{IntoParams, ToSchema};

use super::{
    answer_due, close, frame, send, start_position, while_followed, Handshake, Keepalive,
    POLL_DEADLINE, POLL_WAIT,
};
use crate::credentials::{bearer, verify};
use crate::routes::answers::NoCatalog;
use crate::{Answer, AppState, FrontendError};

/// How long a client without an `Authorization` header has to send its key.
const HELLO_WAIT: Duration = Duration::from_secs(5);

/// The query of `GET /ws/orders`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OrderStreamQuery {
    /// Resume after this log entry: the `entry` of the last update received (or the `after`
    /// of `subscribed`). Absent: from now.
    after: Option<u64>,
}

/// The first message of a client that cannot set an `Authorization` header (a browser).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderStreamHello {
    /// The user's API key, as `POST /users` gave it.
    pub api_key: String,
}

/// Every message `GET /ws/orders` sends.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OrderFrame {
    /// First: whose updates follow, and the entry they follow.
    Subscribed { user: u64, after: u64 },
    /// One change of one of the user's orders.
    Update(Box<OrderUpdate>),
    /// Some updates of the entries after `after` are gone (the leader keeps the last 16,384
    /// of all users): re-read the orders (`GET /orders?user=`); the updates that follow are
    /// complete.
    Gap { after: u64 },
}

/// `GET /ws/orders`: every change of the caller's orders as it commits (accepted, refused,
/// modified, triggered, partially filled with the fills, filled, cancelled, expired), in log
/// order. Send the key as `Authorization: Bearer` or as the first message.
#[utoipa::path(get, path = "/ws/orders", operation_id = "stream_own_orders", tag = "orders",
    params(OrderStreamQuery),
    security(("api_key" = [])),
    responses(
        (status = 101, description = "A WebSocket whose messages are OrderFrames: \
            `subscribed`, then an `update` per change of the user's orders, in log order, and a \
            `gap` where some are gone. Without an Authorization header, the first message must \
            be an OrderStreamHello within 5 s. A key that is wrong, or revoked while the stream \
            runs, closes it with code 1008, as does an `after` past the end of the order log; \
            silence for 60 s (pings go every 20 s) with 1001; one that cannot be checked now (the catalog out \
            of reach past 30 s) with 1013, as one over the frontend's cap of open streams: \
            reconnect to resume.", body = OrderFrame),
        (status = 400, description = "An unknown parameter, `after` not a number, or not a WebSocket handshake", body = stocknet_common::envelope::ErrorEnvelope),
        (status = 401, description = "An Authorization header with a wrong key", body = stocknet_common::envelope::ErrorEnvelope),
        NoCatalog,
    ))]
pub async fn orders(
    State(state): State<AppState>,
    Query(query): Query<OrderStreamQuery>,
    headers: HeaderMap,
    handshake: Handshake,
) -> Answer {
    let key = bearer(&headers)?;
    if let Some(key) = &key {
        verify(&state, key).await?;
    }
    Ok(handshake.on_upgrade(move |socket| async move {
        let (mut sink, mut stream) = socket.split();
        let key = match key {
            Some(key) => key,
            None => match hello(&mut stream).await {
                Some(key) => key,
                None => {
                    let reason = "send {\"api_key\": ...} first, or an Authorization header";
                    let _ = send(&mut sink, close(close_code::POLICY, reason)).await;
                    return;
                }
            },
        };
        let user = match verify(&state, &key).await {
            Ok(user) => user,
            Err(refused) => {
                let _ = send(&mut sink, refusal(&refused)).await;
                return;
            }
        };
        let mut forgotten = state.inner.credentials.forgotten();
        let mut backoff = Duration::from_millis(50);
        let mut cursor = query.after;
        let mut subscribed = false;
        // One poll of the leader at a time, kept across what else the loop hears (a client's
        // frames, a key forgotten somewhere): dropped, a poll in flight costs the leader its
        // connection, and a client could make it cost one per frame it sends.
        let mut polling = None;
        let mut keepalive = Keepalive::new();
        loop {
            if let Err(refused) = verify(&state, &key).await {
                let _ = send(&mut sink, refusal(&refused)).await;
                return;
            }
            let poll = polling.get_or_insert_with(|| Box::pin(next_page(&state, user, cursor)));
            let polled = tokio::select! {
                polled = poll => polled,
                // A key may have been revoked: check this one again now.
                _ = forgotten.changed() => continue,
                message = stream.next() => match message {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => {
                        keepalive.heard();
                        continue;
                    }
                },
                due = keepalive.due() => match answer_due(&mut sink, due).await {
                    true => continue,
                    false => return,
                },
            };
            polling = None;
            let (after, page) = match polled {
                Ok(polled) => {
                    backoff = Duration::from_millis(50);
                    polled
                }
                Err(PollError::Refused(why)) => {
                    let _ = send(&mut sink, close(close_code::POLICY, &why)).await;
                    return;
                }
                Err(PollError::Failed(e)) => {
                    tracing::debug!(user, "order stream: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let mut frames = Vec::new();
            if !subscribed {
                frames.push(OrderFrame::Subscribed { user, after });
                subscribed = true;
            }
            if let Some(page) = page {
                if page.gap {
                    frames.push(OrderFrame::Gap { after });
                }
                frames.extend(
                    page.updates
                        .into_iter()
                        .map(|u| OrderFrame::Update(Box::new(u))),
                );
                cursor = Some(page.through.max(after));
            } else {
                cursor = Some(after);
            }
            for message in frames {
                if send(&mut sink, Message::Text(frame(&message).into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }))
}

/// The close frame for a key that `verify` did not pass: refused (1008, final), or not to be
/// checked now (1013: the catalog is out of reach past the credentials' bound, so it may have
/// been revoked; the client reconnects and resumes later).
fn refusal(error: &FrontendError) -> Message {
    match error {
        FrontendError::Unauthorized(_) => close(close_code::POLICY, "invalid or revoked API key"),
        _ => close(
            close_code::AGAIN,
            "the API key cannot be checked now; reconnect to resume",
        ),
    }
}

/// The key a client sends as its first message, if it does in time.
async fn hello(
    stream: &mut (impl futures::Stream<Item = Result<Message, axum::Error>> + Unpin),
) -> Option<ApiKey> {
    let message = tokio::time::timeout(HELLO_WAIT, stream.next())
        .await
        .ok()??;
    let Ok(Message::Text(text)) = message else {
        return None;
    };
    let hello: OrderStreamHello = serde_json::from_str(&text).ok()?;
    ApiKey::parse(&hello.api_key)
}

/// Why a poll of the leader brought no page.
enum PollError {
    /// The leader refused the client's position (`after` past the end of the log): final.
    Refused(String),
    /// No answer, or no leader: tried again.
    Failed(String),
}

/// From `cursor` (or, at first without one, from where the leader is now): the entry the next
/// updates follow, and the leader's page of the user's updates after it (none when the stream
/// only found its start).
async fn next_page(
    state: &AppState,
    user: u64,
    cursor: Option<u64>,
) -> Result<(u64, Option<OrderUpdatePage>), PollError> {
    let inner = &state.inner;
    let Some(leader) = inner.leaders.leader().await else {
        return Err(PollError::Failed("no order leader".into()));
    };
    let asked = async {
        match cursor {
            None => start_position(state, &leader.url)
                .await
                .map(|at| (at, None)),
            Some(after) => {
                let mut url = paths::ORDER_FEED.url(&leader.url, &[])?;
                url.query_pairs_mut()
                    .append_pair("user", &user.to_string())
                    .append_pair("after", &after.to_string())
                    .append_pair("wait_ms", &POLL_WAIT.as_millis().to_string());
                let request = inner.http.get(url).timeout(POLL_DEADLINE);
                call::<OrderUpdatePage>(request)
                    .await
                    .map(|page| (after, Some(page)))
            }
        }
    };
    let Some(result) = while_followed(state, &leader, asked).await else {
        return Err(PollError::Failed(
            "this frontend follows another leader now".into(),
        ));
    };
    if matches!(result, Err(RemoteError::Unreachable(_))) {
        inner.leaders.replace(Some(&leader), None).await;
    }
    result.map_err(|e| match e {
        RemoteError::Api(refused) if refused.status == axum::http::StatusCode::BAD_REQUEST => {
            PollError::Refused(refused.message)
        }
        e => PollError::Failed(e.to_string()),
    })
}
