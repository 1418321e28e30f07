//! `GET /ws/orders`: a user's own order updates, in log order, resumable after a reconnect.
//!
//! While any of its streams is open, the frontend keeps a copy of the order leader's updates
//! of everybody ([`OrderFeed`]), followed with one long poll at a time (`GET /feed/orders`),
//! and each stream reads its user's updates from that copy, from the entry it got to. A
//! stream behind what the copy holds (one that resumes from long ago, or started before the
//! copy did) reads its user's updates from the leader itself until it reaches the copy: so a
//! stream resumes at any entry the leader still keeps updates for, also across a change of
//! leader (every replica derives the same updates from the same log), and the leader answers
//! one poll per frontend instead of one per stream. Where some are gone, the stream says so
//! (a gap) instead of skipping them silently. The key is checked again whenever the frontend
//! forgets credentials (a revocation's push, a lapsed lease), so a revoked key's stream ends at
//! once, before a page whenever the frontend's lease on what it keeps has lapsed (a push may
//! have been missed), and otherwise at most once a second, before a page or after a client's
//! frame (a frontend cut off from the catalog accepts kept keys for a bounded time only).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{close_code, Message};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use stocknet_common::api_key::ApiKey;
use stocknet_common::client::call;
use stocknet_common::paths;
use stocknet_common::ring::UpdateRing;
use stocknet_common::wire::{OrderUpdate, OrderUpdatePage};
use stocknet_common::{BaseUrl, Query, RemoteError};
use tokio::sync::Notify;
use utoipa::{IntoParams, ToSchema};

use super::{
    answer_due, close, follow_leader, frame, refuse_unreadable, send, send_all, start_position,
    while_followed, Handshake, Keepalive, LeaderFeed, POLL_DEADLINE, POLL_WAIT,
};
use crate::credentials::{bearer, verify};
use crate::routes::answers::{NoCatalog, OtherWebSocketVersion};
use crate::{Answer, AppState, FrontendError};

/// How long a client without an `Authorization` header has to send its key.
const HELLO_WAIT: Duration = Duration::from_secs(5);

/// How often a stream's key is checked again when nothing was forgotten meanwhile.
const KEY_CHECKED_EVERY: Duration = Duration::from_secs(1);

/// This frontend's copy of the order leader's updates, for its `/ws/orders` streams.
pub struct OrderFeed {
    updates: UpdateRing,
    /// Whether `updates` follows the leader now, from its floor on.
    following: AtomicBool,
    follower_started: AtomicBool,
    /// `/ws/orders` streams open now: the copy is followed while there are any.
    streams: Arc<AtomicUsize>,
    stream_arrived: Notify,
}

/// Where a stream's position stands against the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The copy holds every update after it, or will.
    Within,
    /// Before the copy's floor: its updates from there are the leader's to give.
    Before,
    /// A client's position past what the copy holds, or the copy follows nothing now. Only
    /// the leader knows whether such a position is in its log at all.
    Beyond,
}

/// A stream counted among those the copy is followed for, until dropped.
struct Listening(Arc<AtomicUsize>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for OrderFeed {
    fn default() -> Self {
        Self {
            updates: UpdateRing::new(0),
            following: AtomicBool::new(false),
            follower_started: AtomicBool::new(false),
            streams: Arc::default(),
            stream_arrived: Notify::new(),
        }
    }
}

impl OrderFeed {
    /// Counts a stream open, and has the copy followed.
    fn listen(&self, state: &AppState) -> Listening {
        self.streams.fetch_add(1, Ordering::AcqRel);
        if !self.follower_started.swap(true, Ordering::AcqRel) {
            tokio::spawn(follow_leader(state.clone(), UpdateFeed));
        }
        self.stream_arrived.notify_one();
        Listening(self.streams.clone())
    }

    /// Where entry `after` stands against the copy; `known`: it is an entry of the log (the
    /// leader or the copy gave it), not a client's word.
    fn place(&self, after: u64, known: bool) -> Place {
        if !self.following.load(Ordering::Acquire) {
            Place::Beyond
        } else if after < self.updates.floor() {
            Place::Before
        } else if known || after <= self.updates.applied() {
            Place::Within
        } else {
            Place::Beyond
        }
    }
}

/// The leader's updates of everybody (`GET /feed/orders`), followed into the copy while any
/// stream is open: from the leader's present entry when the first stream opens, and again
/// from where the leader's answer shows the copy missed some (a gap), since streams behind
/// that read the leader itself.
struct UpdateFeed;

impl LeaderFeed for UpdateFeed {
    type Page = OrderUpdatePage;
    const NAME: &'static str = "order update feed";

    fn listened(&self, state: &AppState) -> bool {
        state.inner.streams.orders.streams.load(Ordering::Acquire) > 0
    }

    fn arrived<'a>(&self, state: &'a AppState) -> &'a Notify {
        &state.inner.streams.orders.stream_arrived
    }

    fn stopped(&self, state: &AppState) {
        state
            .inner
            .streams
            .orders
            .following
            .store(false, Ordering::Release);
    }

    async fn poll(
        &self,
        state: &AppState,
        leader: &BaseUrl,
        after: u64,
    ) -> Result<OrderUpdatePage, RemoteError> {
        poll_updates(state, leader, None, after, POLL_WAIT).await
    }

    fn started(&self, state: &AppState, applied: u64) {
        let copy = &state.inner.streams.orders;
        copy.updates.restart(applied);
        copy.following.store(true, Ordering::Release);
    }

    fn took(&self, state: &AppState, _after: u64, page: OrderUpdatePage) -> u64 {
        let copy = &state.inner.streams.orders;
        // After a gap the page's updates are dropped too: streams behind its end read the
        // leader, which says what is gone.
        match page.gap {
            true => copy.updates.restart(page.through),
            false => copy.updates.push(page.updates, page.through),
        }
        page.through
    }
}

/// The leader's page of `user`'s updates (`None`: everybody's) after entry `after`, held up to
/// `wait` when there are none yet.
async fn poll_updates(
    state: &AppState,
    leader: &BaseUrl,
    user: Option<u64>,
    after: u64,
    wait: Duration,
) -> Result<OrderUpdatePage, RemoteError> {
    let mut url = paths::ORDER_FEED.url(leader, &[])?;
    {
        let mut query = url.query_pairs_mut();
        if let Some(user) = user {
            query.append_pair("user", &user.to_string());
        }
        query
            .append_pair("after", &after.to_string())
            .append_pair("wait_ms", &wait.as_millis().to_string());
    }
    call(state.inner.http.get(url).timeout(POLL_DEADLINE)).await
}

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
    Update {
        #[serde(flatten)]
        update: Box<OrderUpdate>,
        /// The last of its entry's updates for this user: resume after `entry` once it has
        /// come. (A connection cut between an entry's updates would otherwise lose the rest.)
        last_of_entry: bool,
    },
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
            of reach past 30 s) with 1013, as one over the frontend's caps (in all, and per address) of open streams: \
            reconnect to resume.", body = OrderFrame),
        (status = 400, description = "An unknown parameter, `after` not a number, or not a WebSocket handshake", body = stocknet_common::envelope::ErrorEnvelope),
        (status = 401, description = "An Authorization header with a wrong key", body = stocknet_common::envelope::ErrorEnvelope),
        OtherWebSocketVersion,
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
                Ok(Some(key)) => key,
                Ok(None) => {
                    let reason = "send {\"api_key\": ...} first, or an Authorization header";
                    let _ = send(&mut sink, close(close_code::POLICY, reason)).await;
                    return;
                }
                Err(unreadable) => return refuse_unreadable(&mut sink, unreadable).await,
            },
        };
        // Watched from before the check: a revocation pushed while the catalog is asked (its
        // answer may predate it) has the key checked again before anything is sent.
        let mut forgotten = state.inner.credentials.forgotten();
        let user = match verify(&state, &key).await {
            Ok(user) => user,
            Err(refused) => {
                let _ = send(&mut sink, refusal(&refused)).await;
                return;
            }
        };
        let _listening = state.inner.streams.orders.listen(&state);
        let mut backoff = Duration::from_millis(50);
        let mut cursor = query.after;
        // Whether `cursor` is an entry of the log: the client's may not be.
        let mut known = false;
        let mut subscribed = false;
        // One page at a time, kept across what else the loop hears (a client's frames, a key
        // forgotten somewhere): dropped, a poll of the leader in flight costs the leader its
        // connection, and a client could make it cost one per frame it sends.
        let mut polling = None;
        let mut keepalive = Keepalive::new();
        // When the key was last checked, and whether it must be now: checked on every frame
        // a client sends, a lapsed lease would make each one a call to the catalog.
        let mut checked = Instant::now();
        let mut check_due = false;
        loop {
            if check_due || checked.elapsed() >= KEY_CHECKED_EVERY {
                if let Err(refused) = verify(&state, &key).await {
                    let _ = send(&mut sink, refusal(&refused)).await;
                    return;
                }
                checked = Instant::now();
                check_due = false;
            }
            let poll =
                polling.get_or_insert_with(|| Box::pin(next_page(&state, user, cursor, known)));
            let polled = tokio::select! {
                polled = poll => polled,
                // A key may have been revoked: check this one again now.
                _ = forgotten.changed() => {
                    check_due = true;
                    continue;
                }
                message = stream.next() => match message {
                    Some(Ok(Message::Close(_))) | None => return,
                    Some(Err(error)) => return refuse_unreadable(&mut sink, error).await,
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
                    known = true;
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
                // A page ends between whole entries.
                let mut updates = page.updates.into_iter().peekable();
                while let Some(update) = updates.next() {
                    let last_of_entry =
                        updates.peek().is_none_or(|next| next.entry != update.entry);
                    frames.push(OrderFrame::Update {
                        update: Box::new(update),
                        last_of_entry,
                    });
                }
                cursor = Some(page.through.max(after));
            } else {
                cursor = Some(after);
            }
            // A key forgotten while the page was polled (the revocation's push and the page
            // ready at once), or one the lease no longer vouches for (a push may have been
            // missed), is checked again before the page goes out.
            let unvouched = !state.inner.catalog_contact.recent();
            if forgotten.has_changed().unwrap_or(false) || unvouched {
                forgotten.mark_unchanged();
                if let Err(refused) = verify(&state, &key).await {
                    let _ = send(&mut sink, refusal(&refused)).await;
                    return;
                }
            }
            let messages: Vec<Message> = frames
                .iter()
                .map(|f| Message::Text(frame(f).into()))
                .collect();
            if send_all(&mut sink, messages).await.is_err() {
                return;
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

/// The key a client sends as its first message, if it does in time; an error if its message
/// could not be read.
async fn hello(
    stream: &mut (impl futures::Stream<Item = Result<Message, axum::Error>> + Unpin),
) -> Result<Option<ApiKey>, axum::Error> {
    let message = match tokio::time::timeout(HELLO_WAIT, stream.next()).await {
        Ok(Some(message)) => message?,
        Ok(None) | Err(_) => return Ok(None),
    };
    let Message::Text(text) = message else {
        return Ok(None);
    };
    let hello = serde_json::from_str::<OrderStreamHello>(&text).ok();
    Ok(hello.and_then(|hello| ApiKey::parse(&hello.api_key)))
}

/// Why a poll of the leader brought no page.
enum PollError {
    /// The leader refused the client's position (`after` past the end of the log): final.
    Refused(String),
    /// No answer, or no leader: tried again.
    Failed(String),
}

/// From `cursor` (or, at first without one, from where the leader is now; `known`: the cursor
/// is an entry of the log): the entry the next updates follow, and the page of the user's
/// updates after it (none when the stream only found its start): from the frontend's copy
/// when it holds them, else from the leader.
async fn next_page(
    state: &AppState,
    user: u64,
    cursor: Option<u64>,
    known: bool,
) -> Result<(u64, Option<OrderUpdatePage>), PollError> {
    let inner = &state.inner;
    let copy = &inner.streams.orders;
    let mut wait = POLL_WAIT;
    if let Some(after) = cursor {
        match copy.place(after, known) {
            Place::Within => {
                let page = copy
                    .updates
                    .wait_for_updates(Some(user), after, POLL_WAIT)
                    .await;
                if !page.gap {
                    return Ok((after, Some(page)));
                }
                // The copy's gap (it started again): the leader tells what is gone, at once.
                wait = Duration::ZERO;
            }
            // Behind the copy: the leader's page at once, so that the stream reaches the copy.
            Place::Before => wait = Duration::ZERO,
            Place::Beyond => {}
        }
    }
    let Some(leader) = inner.leaders.leader().await else {
        return Err(PollError::Failed("no order leader".into()));
    };
    let asked = async {
        match cursor {
            None => start_position(state, &leader.url)
                .await
                .map(|at| (at, None)),
            Some(after) => poll_updates(state, &leader.url, Some(user), after, wait)
                .await
                .map(|page| (after, Some(page))),
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
        RemoteError::Api(refused) if refused.status == StatusCode::BAD_REQUEST => {
            PollError::Refused(refused.message)
        }
        e => PollError::Failed(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use axum::extract::Query as AxumQuery;
    use axum::routing::get;
    use stocknet_common::testing::order_update;
    use stocknet_common::wire::Health;

    use super::*;

    /// The leader's polls of `/feed/orders`, by their query.
    type Polls = Arc<Mutex<Vec<HashMap<String, String>>>>;

    /// A leader at entry 10 whose next entries carry updates: 11 (user 7), 12 (user 8), and 14
    /// (user 7), which its feed of everybody gives only once `release` is notified.
    async fn leader(release: Arc<Notify>) -> (String, Polls, tokio::task::JoinHandle<()>) {
        let polls: Polls = Arc::default();
        let health = Health {
            node_id: 1,
            term: 1,
            leader: Some(1),
            ready: true,
            last_transaction: 14,
            applied: 10,
            leading: true,
        };
        let seen = polls.clone();
        let feed = move |AxumQuery(query): AxumQuery<HashMap<String, String>>| {
            seen.lock().unwrap().push(query.clone());
            let release = release.clone();
            async move {
                let after: u64 = query["after"].parse().unwrap();
                let user: Option<u64> = query.get("user").map(|u| u.parse().unwrap());
                let mut through = 14;
                if user.is_none() {
                    match after {
                        ..12 => through = 12,
                        12..14 => release.notified().await,
                        // Nothing more: held like a long poll.
                        _ => std::future::pending::<()>().await,
                    }
                }
                let updates = [
                    order_update(11, 7),
                    order_update(12, 8),
                    order_update(14, 7),
                ]
                .into_iter()
                .filter(|u| u.entry > after && u.entry <= through)
                .filter(|u| user.is_none_or(|user| u.user == user))
                .collect();
                stocknet_common::data(OrderUpdatePage {
                    gap: false,
                    through,
                    updates,
                })
            }
        };
        let router = axum::Router::new()
            .route(
                "/health",
                get(move || std::future::ready(stocknet_common::data(health))),
            )
            .route("/feed/orders", get(feed));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("1=http://{}", listener.local_addr().unwrap());
        let served = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (url, polls, served)
    }

    /// The leader's polls of one user's updates.
    fn by_user(polls: &Polls) -> Vec<HashMap<String, String>> {
        let polls = polls.lock().unwrap();
        polls
            .iter()
            .filter(|q| q.contains_key("user"))
            .cloned()
            .collect()
    }

    /// `next_page` within the test's bound, and its page.
    async fn page(state: &AppState, user: u64, after: u64, known: bool) -> OrderUpdatePage {
        let next = next_page(state, user, Some(after), known);
        let (from, page) = tokio::time::timeout(Duration::from_secs(10), next)
            .await
            .expect("a page within the bound")
            .ok()
            .expect("a page");
        assert_eq!(from, after);
        page.expect("updates")
    }

    #[tokio::test]
    async fn streams_read_their_users_updates_from_one_shared_poll_of_the_leader() {
        let release = Arc::new(Notify::new());
        let (replica, polls, served) = leader(release.clone()).await;
        let state = crate::router_tests::lone_state(&["--order-replicas", &replica]);
        let copy = &state.inner.streams.orders;
        let listening = copy.listen(&state);
        let caught_up = tokio::time::timeout(Duration::from_secs(10), async {
            while copy.updates.applied() < 12 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        caught_up
            .await
            .expect("the copy follows the leader from entry 10");

        for (user, entry) in [(7, 11), (8, 12)] {
            let page = page(&state, user, 10, false).await;
            assert!(!page.gap);
            assert_eq!(page.updates, [order_update(entry, user)]);
        }
        assert!(
            by_user(&polls).is_empty(),
            "a stream polled the leader itself"
        );

        // A stream from before the copy's start reads the leader itself, without waiting.
        let before = page(&state, 7, 5, false).await;
        assert_eq!(before.updates[0], order_update(11, 7));
        let asked = by_user(&polls);
        assert_eq!(asked.len(), 1, "{asked:?}");
        assert_eq!(
            (asked[0]["user"].as_str(), asked[0]["wait_ms"].as_str()),
            ("7", "0")
        );
        // A client's position past the copy is the leader's to judge: it refuses one past
        // its log, which the copy cannot tell from one it has not reached yet.
        let _ = page(&state, 7, 50, false).await;
        let asked = by_user(&polls);
        assert_eq!(asked.len(), 2, "{asked:?}");
        assert_eq!(asked[1]["after"], "50");

        // One the leader gave (a stream's start, ahead of the copy) waits on the copy.
        let ahead = tokio::spawn({
            let state = state.clone();
            async move { page(&state, 7, 13, true).await }
        });
        release.notify_one();
        let ahead = ahead.await.expect("the page");
        assert_eq!(ahead.updates, [order_update(14, 7)]);
        assert_eq!(
            by_user(&polls).len(),
            2,
            "a stream polled the leader itself"
        );
        drop(listening);
        served.abort();
    }
}
