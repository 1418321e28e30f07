//! Live streams over WebSockets: `/ws/trades` (every trade as it commits), `/ws/book/{name}`
//! (a snapshot of the book, then its changes), `/ws/candles/{name}` (recent candles, then each
//! candle a trade changes), `/ws/prices` (price and quantity changes of every stock) and
//! `/ws/orders` (a user's own order updates, see [`orders`]).
//!
//! While anybody listens, one task per frontend follows the order leader's market feed with
//! long polls, from the entry it got to, also across a change of leader (every replica derives
//! the same events from the same log). Prices come with the catalog's invalidation push. Both
//! fan out through bounded broadcast channels: a consumer that falls a channel's length behind
//! is closed with a reason, so nobody's backlog grows without bound or slows the order path.
//! A stream of one stock listens on that stock's channel, so that it is woken by that stock's
//! events only (a thousand watchers of one book cost nothing to trading in the others).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{Sink, SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use stocknet_common::client::call;
use stocknet_common::clock::{parse_instant, rfc3339};
use stocknet_common::connections::client_address;
use stocknet_common::paths;
use stocknet_common::wire::{
    AsOf, Candle, CandleInterval, Candles, Depth, FeedPage, Health, LevelChange, MarketEvent,
    Ohlcv, Snapshot, Trade, CATCHING_UP,
};
use stocknet_common::{ApiError, BaseUrl, Path, Price, Query, RemoteError, Stock};
use tokio::sync::{broadcast, Notify};
use utoipa::{IntoParams, ToSchema};

use crate::routes::answers::{NotAHandshake, OtherWebSocketVersion, StockLookup};
use crate::routes::stocks::stock;
use crate::upstream::catalog::{self, call_catalog};
use crate::upstream::leader::Leader;
use crate::upstream::order_group;
use crate::{Answer, AppState, FrontendError};

pub mod orders;

/// Messages a stream's channel holds for its slowest consumer.
pub const CHANNEL: usize = 1_024;

/// Most channel items a stream takes at once, to send with one write.
const BATCH: usize = 64;

/// How long the leader holds a feed poll open.
const POLL_WAIT: Duration = Duration::from_secs(8);

/// A feed poll's deadline: the leader's wait and room for its answer.
const POLL_DEADLINE: Duration = Duration::from_secs(11);

/// How long the leader's health may take to tell where a stream starts.
const START_DEADLINE: Duration = Duration::from_secs(2);

/// A consumer that accepts nothing for this long is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a stream pings its client, and how long the client may stay silent (a pong
/// answers each ping; browsers send it by themselves) before its stream is closed. A client
/// that vanished without closing (a dropped network, a suspended laptop) sends nothing and,
/// on a quiet stream, is sent too little to fill the socket: it would hold its place among the
/// open streams, and a `/ws/orders` its poll of the leader, for good.
const PING_EVERY: Duration = Duration::from_secs(20);
const SILENCE_LIMIT: Duration = Duration::from_secs(60);

/// When a stream pings its client next, and when it last heard from it.
struct Keepalive {
    ping: tokio::time::Interval,
    heard: tokio::time::Instant,
}

impl Keepalive {
    fn new() -> Self {
        let now = tokio::time::Instant::now();
        let mut ping = tokio::time::interval_at(now + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { ping, heard: now }
    }

    /// The client said something (a pong, a ping, anything).
    fn heard(&mut self) {
        self.heard = tokio::time::Instant::now();
    }

    /// Waits until the next ping is due: the ping to send, or the close of a client silent
    /// for [`SILENCE_LIMIT`].
    async fn due(&mut self) -> Result<Message, Message> {
        self.ping.tick().await;
        if self.heard.elapsed() < SILENCE_LIMIT {
            Ok(Message::Ping(axum::body::Bytes::new()))
        } else {
            Err(close(
                close_code::AWAY,
                "no answer to pings: closing a client that is gone",
            ))
        }
    }
}

/// Sends what [`Keepalive::due`] says is due: whether the stream goes on (a ping sent, not a
/// close).
async fn answer_due<S: Sink<Message> + Unpin>(sink: &mut S, due: Result<Message, Message>) -> bool {
    match due {
        Ok(ping) => send(sink, ping).await.is_ok(),
        Err(gone) => {
            let _ = send(sink, gone).await;
            false
        }
    }
}

/// A stock's price and quantity as last sent to `/ws/prices`, and which catalog state it was.
#[derive(Debug, Clone, Copy)]
struct PriceSent {
    value: (Price, u64),
    as_of: AsOf,
}

/// A stock's new price or quantity for `/ws/prices`, and the catalog state it is of (none for
/// a push by hand, which counts as new).
#[derive(Debug, Clone)]
pub(crate) struct PriceChange {
    stock: Stock,
    as_of: Option<AsOf>,
}

impl PriceChange {
    /// Whether it is news to a stream whose snapshot was of `snapshot`: a change the snapshot
    /// already holds, or an older one (a push broadcast while the snapshot was read), would
    /// take the stream back.
    fn after(&self, snapshot: AsOf) -> bool {
        self.as_of.is_none_or(|as_of| as_of > snapshot)
    }
}

/// What the market channel carries.
#[derive(Debug, Clone)]
pub enum MarketItem {
    Event(Arc<MarketEvent>),
    /// The feed lost events (the leader's ring moved past this frontend's position): book
    /// streams start again from a snapshot.
    Gap,
    /// The feed started after this entry, the leader's present one: a snapshot older than it
    /// misses the events between the two, which never come, so its stream takes another.
    Started(u64),
}

pub struct Streams {
    /// Every market item: `/ws/trades`.
    market: broadcast::Sender<MarketItem>,
    /// One stock's items (its events, and every gap and start) for its `/ws/book` and
    /// `/ws/candles` streams, while it has any.
    stocks: Mutex<HashMap<String, broadcast::Sender<MarketItem>>>,
    prices: broadcast::Sender<PriceChange>,
    /// The last price and quantity sent per stock: the catalog names stocks that did not change.
    last_sent: Mutex<HashMap<String, PriceSent>>,
    follower_started: AtomicBool,
    listener_arrived: Notify,
    /// The copy of the leader's order updates that `/ws/orders` streams read.
    pub(crate) orders: orders::OrderFeed,
    /// Streams open now, and how many may be.
    open: Arc<AtomicUsize>,
    max_open: usize,
    /// Streams open per client address, where a cap is set: one client must not take every
    /// place.
    by_client: Arc<StreamsByClient>,
    max_per_client: Option<usize>,
}

impl Streams {
    /// At most `max_open` streams open, `max_per_client` of them (0: any number) from one
    /// client address.
    pub fn new(max_open: usize, max_per_client: usize) -> Self {
        Self {
            market: broadcast::channel(CHANNEL).0,
            stocks: Mutex::default(),
            prices: broadcast::channel(CHANNEL).0,
            last_sent: Mutex::default(),
            follower_started: AtomicBool::new(false),
            listener_arrived: Notify::new(),
            orders: orders::OrderFeed::default(),
            open: Arc::default(),
            max_open,
            by_client: Arc::default(),
            max_per_client: (max_per_client > 0).then_some(max_per_client),
        }
    }

    /// One more stream open from `client` (its address, where known), if the caps allow it:
    /// it counts until the guard is dropped.
    fn open(&self, client: Option<IpAddr>) -> Option<OpenStream> {
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        let mut guard = OpenStream {
            open: self.open.clone(),
            client: None,
        };
        if open >= self.max_open {
            return None;
        }
        if let (Some(cap), Some(client)) = (self.max_per_client, client) {
            let mut by_client = self.by_client.lock().unwrap_or_else(|e| e.into_inner());
            let count = by_client.entry(client).or_insert(0);
            if *count >= cap {
                return None;
            }
            *count += 1;
            guard.client = Some((self.by_client.clone(), client));
        }
        Some(guard)
    }

    /// Sends to `/ws/prices` the stocks whose price or quantity changed, of those newer than
    /// what was sent (`as_of`: absent from a push by hand, which counts as new).
    pub fn publish_prices(&self, stocks: Vec<Stock>, as_of: Option<AsOf>) {
        let new_as_of = as_of;
        let mut last = self.last_sent.lock().unwrap_or_else(|e| e.into_inner());
        for stock in stocks {
            let value = (stock.price, stock.quantity);
            let sent = last.get(&stock.name);
            let as_of = match (as_of, sent) {
                (Some(new), Some(sent)) if new <= sent.as_of => continue,
                (Some(new), _) => new,
                (None, Some(sent)) => sent.as_of,
                (None, None) => AsOf::default(),
            };
            let changed = sent.is_none_or(|sent| sent.value != value);
            last.insert(stock.name.clone(), PriceSent { value, as_of });
            if changed {
                // No receiver is not an error: nobody is listening.
                let _ = self.prices.send(PriceChange {
                    stock,
                    as_of: new_as_of,
                });
            }
        }
    }

    /// A receiver of the market items of `stock`, or of every stock, with the leader's feed
    /// followed.
    fn subscribe_market(
        &self,
        state: &AppState,
        stock: Option<&str>,
    ) -> broadcast::Receiver<MarketItem> {
        let receiver = self.market_receiver(stock);
        if !self.follower_started.swap(true, Ordering::AcqRel) {
            tokio::spawn(follow_leader(state.clone(), MarketFeed));
        }
        self.listener_arrived.notify_one();
        receiver
    }

    fn market_receiver(&self, stock: Option<&str>) -> broadcast::Receiver<MarketItem> {
        match stock {
            None => self.market.subscribe(),
            Some(name) => self
                .stock_channels()
                .entry(name.to_owned())
                .or_insert_with(|| broadcast::channel(CHANNEL).0)
                .subscribe(),
        }
    }

    /// Whether any stream listens to the market; stocks' channels nobody listens to go.
    fn market_listened(&self) -> bool {
        let mut stocks = self.stock_channels();
        stocks.retain(|_, channel| channel.receiver_count() > 0);
        !stocks.is_empty() || self.market.receiver_count() > 0
    }

    /// Sends `item` to the streams it concerns: an event to its stock's and to every stock's;
    /// a gap or a start to all.
    fn publish_market(&self, item: MarketItem) {
        // No receiver is not an error: nobody is listening there.
        {
            let stocks = self.stock_channels();
            match &item {
                MarketItem::Event(event) => {
                    if let Some(channel) = stocks.get(&event.name) {
                        let _ = channel.send(item.clone());
                    }
                }
                MarketItem::Gap | MarketItem::Started(_) => {
                    for channel in stocks.values() {
                        let _ = channel.send(item.clone());
                    }
                }
            }
        }
        let _ = self.market.send(item);
    }

    fn stock_channels(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<MarketItem>>> {
        self.stocks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One of the leader's feeds that a frontend follows while its streams listen, from the
/// entry it got to, across changes of leader (every replica derives the same feed from the
/// same log): [`follow_leader`] polls it and hands each answer here.
trait LeaderFeed: Send + Sync + 'static {
    type Page: Send;

    /// What the logs call it.
    const NAME: &'static str;

    /// Whether any stream listens, and the signal of one arriving.
    fn listened(&self, state: &AppState) -> bool;
    fn arrived<'a>(&self, state: &'a AppState) -> &'a Notify;

    /// Nobody listens any more: the feed is no longer followed.
    fn stopped(&self, _state: &AppState) {}

    /// The leader's page after entry `after`, held up to [`POLL_WAIT`] when there is none.
    fn poll(
        &self,
        state: &AppState,
        leader: &BaseUrl,
        after: u64,
    ) -> impl std::future::Future<Output = Result<Self::Page, RemoteError>> + Send;

    /// The feed is followed from entry `applied`, the leader's present one.
    fn started(&self, state: &AppState, applied: u64);

    /// Takes `page`, polled after entry `after`: the entry the next poll is after.
    fn took(&self, state: &AppState, after: u64, page: Self::Page) -> u64;
}

/// Follows `feed` while its streams listen: from the leader's present when the first one
/// arrives, and again from the present when the leader refuses the position (past its log).
async fn follow_leader<F: LeaderFeed>(state: AppState, feed: F) {
    let inner = &state.inner;
    let mut cursor: Option<u64> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        if !feed.listened(&state) {
            // Nobody listens: stop polling, and start from the present when somebody does.
            feed.stopped(&state);
            cursor = None;
            let arrived = feed.arrived(&state).notified();
            if !feed.listened(&state) {
                arrived.await;
            }
            continue;
        }
        let Some(leader) = inner.leaders.leader().await else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            continue;
        };
        let polled = match cursor {
            None => while_followed(&state, &leader, start_position(&state, &leader.url))
                .await
                .map(|started| started.inspect(|&applied| feed.started(&state, applied))),
            Some(after) => while_followed(&state, &leader, feed.poll(&state, &leader.url, after))
                .await
                .map(|page| page.map(|page| feed.took(&state, after, page))),
        };
        // This frontend follows another leader now: poll that one at once.
        let Some(polled) = polled else {
            continue;
        };
        match polled {
            Ok(next) => {
                backoff = Duration::from_millis(50);
                cursor = Some(next);
            }
            Err(e) => {
                tracing::debug!(leader = leader.id, "{}: {e}", F::NAME);
                match e {
                    RemoteError::Api(refused) if refused.status == StatusCode::BAD_REQUEST => {
                        cursor = None;
                    }
                    RemoteError::Unreachable(_) => {
                        inner.leaders.replace(Some(&leader), None).await;
                    }
                    _ => {}
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// The leader's market feed (`GET /feed`), for the trade, book and candle streams.
struct MarketFeed;

impl LeaderFeed for MarketFeed {
    type Page = FeedPage;
    const NAME: &'static str = "market feed";

    fn listened(&self, state: &AppState) -> bool {
        state.inner.streams.market_listened()
    }

    fn arrived<'a>(&self, state: &'a AppState) -> &'a Notify {
        &state.inner.streams.listener_arrived
    }

    async fn poll(
        &self,
        state: &AppState,
        leader: &BaseUrl,
        after: u64,
    ) -> Result<FeedPage, RemoteError> {
        let mut url = paths::FEED.url(leader, &[])?;
        url.query_pairs_mut()
            .append_pair("after", &after.to_string())
            .append_pair("wait_ms", &POLL_WAIT.as_millis().to_string());
        call(state.inner.http.get(url).timeout(POLL_DEADLINE)).await
    }

    fn started(&self, state: &AppState, applied: u64) {
        state
            .inner
            .streams
            .publish_market(MarketItem::Started(applied));
    }

    fn took(&self, state: &AppState, after: u64, page: FeedPage) -> u64 {
        let streams = &state.inner.streams;
        if page.floor > after {
            streams.publish_market(MarketItem::Gap);
        }
        for event in page.events {
            streams.publish_market(MarketItem::Event(Arc::new(event)));
        }
        page.through.max(after)
    }
}

/// `call` to `leader`, given up (`None`) once this frontend follows another leader: the poll
/// of a leader that hangs would hold its streams until the poll's deadline, while orders go to
/// the new leader within about a second.
async fn while_followed<T>(
    state: &AppState,
    leader: &Leader,
    call: impl std::future::Future<Output = Result<T, RemoteError>>,
) -> Option<Result<T, RemoteError>> {
    tokio::select! {
        answer = call => Some(answer),
        () = state.inner.leaders.follows_another(leader) => None,
    }
}

/// Where the leader's book is now: a stream starts there.
async fn start_position(state: &AppState, leader: &BaseUrl) -> Result<u64, RemoteError> {
    let url = paths::HEALTH.url(leader, &[])?;
    let health: Health = call(state.inner.http.get(url).timeout(START_DEADLINE)).await?;
    Ok(health.applied)
}

/// A stream counted open until dropped.
/// Streams open per client address.
type StreamsByClient = Mutex<HashMap<IpAddr, usize>>;

struct OpenStream {
    open: Arc<AtomicUsize>,
    /// The count of its client's address it is in, where one is kept.
    client: Option<(Arc<StreamsByClient>, IpAddr)>,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        if let Some((by_client, client)) = &self.client {
            let mut by_client = by_client.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = by_client.get_mut(client) {
                *count -= 1;
                if *count == 0 {
                    by_client.remove(client);
                }
            }
        }
    }
}

/// `WebSocketUpgrade` whose rejection (a request that is not a WebSocket handshake, e.g. a
/// plain GET) is an error envelope like every other answer, not axum's plain text. Its socket
/// reads client messages of at most [`CLIENT_MESSAGE_LIMIT`] bytes, and counts as open (against
/// `--max-streams` and `--max-streams-per-client`) until it closes.
pub struct Handshake {
    upgrade: WebSocketUpgrade,
    open: Option<OpenStream>,
}

impl Handshake {
    /// Upgrades and runs `stream` on the socket, holding the stream's place meanwhile; over
    /// the cap, closes the socket with 1013 at once.
    pub fn on_upgrade<F, Fut>(self, stream: F) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let open = self.open;
        self.upgrade.on_upgrade(move |mut socket| async move {
            let Some(_open) = open else {
                let full = close(close_code::AGAIN, "too many streams open here; retry later");
                let _ = send(&mut socket, full).await;
                return;
            };
            stream(socket).await;
        })
    }
}

/// The largest message or frame a client may send on a stream: the most any stream takes is
/// `/ws/orders`' hello with a key. A longer one closes the stream (1009, [`too_large`]); the WebSocket
/// library's own limit, 64 MiB a message held until it is complete, would let a few clients
/// exhaust a frontend's memory. It is also the socket's read buffer: the library zeroes the
/// buffer's free part on every read it tries, and a stream tries one (finding nothing) for
/// every message it sends, so its default 128 KiB cost every message sent a 128 KiB memset.
pub const CLIENT_MESSAGE_LIMIT: usize = 4096;

impl FromRequestParts<AppState> for Handshake {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let versioned = parts.headers.contains_key(header::SEC_WEBSOCKET_VERSION);
        let client = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| client_address(info.0.ip()));
        let upgrade = WebSocketUpgrade::from_request_parts(parts, state)
            .await
            .map_err(|rejection| refused_handshake(rejection, versioned))?;
        Ok(Self {
            upgrade: upgrade
                .max_message_size(CLIENT_MESSAGE_LIMIT)
                .max_frame_size(CLIENT_MESSAGE_LIMIT)
                .read_buffer_size(CLIENT_MESSAGE_LIMIT),
            open: state.inner.streams.open(client),
        })
    }
}

/// The error envelope for a request that is not a WebSocket handshake this server takes: 400,
/// but for a version other than 13, which is 426 naming the version it speaks (RFC 6455, 4.4).
fn refused_handshake(rejection: WebSocketUpgradeRejection, versioned: bool) -> Response {
    match rejection {
        // A HEAD, which axum routes to a GET route: a 405 would contradict the route's own
        // `Allow: GET,HEAD`.
        WebSocketUpgradeRejection::MethodNotGet(_) => {
            ApiError::bad_request("a stream opens with a WebSocket handshake, a GET")
                .into_response()
        }
        WebSocketUpgradeRejection::InvalidWebSocketVersionHeader(_) if versioned => {
            let message =
                "this server speaks WebSocket version 13 only (Sec-WebSocket-Version: 13)";
            let mut answer = ApiError::new(StatusCode::UPGRADE_REQUIRED, message).into_response();
            let version = HeaderValue::from_static("13");
            answer
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_VERSION, version);
            answer
        }
        other => ApiError::new(other.status(), other.body_text()).into_response(),
    }
}

/// The [`Handshake`] of a stream that takes no query parameters: any is a 400, not ignored
/// (`/ws/trades?name=X` would otherwise stream every stock's trades).
pub struct BareHandshake(pub Handshake);

impl FromRequestParts<AppState> for BareHandshake {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct NoParameters {}
        let Query(NoParameters {}) = Query::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Handshake::from_request_parts(parts, state).await.map(Self)
    }
}

/// `GET /ws/trades`: every trade, as it commits.
#[utoipa::path(get, path = "/ws/trades", operation_id = "stream_trades", tag = "market",
    responses((status = 101, description = "A WebSocket whose messages are TradeFrames: each \
        trade as it commits, and a gap where this frontend missed some. A consumer that falls \
        behind is closed with code 1008 and a reason; one over the frontend's caps (in all, and per address) of open \
        streams, at once with 1013; one silent for 60 s (pings go every 20 s), with 1001.", body = TradeFrame), NotAHandshake, OtherWebSocketVersion))]
pub async fn trades(
    State(state): State<AppState>,
    BareHandshake(handshake): BareHandshake,
) -> Response {
    handshake.on_upgrade(move |socket| async move {
        let receiver = state.inner.streams.subscribe_market(&state, None);
        let (sink, stream) = socket.split();
        let render = |item: &MarketItem| match item {
            MarketItem::Event(event) => event
                .trades
                .iter()
                .map(|trade| frame(&TradeFrame::Trade(trade.clone())))
                .collect(),
            MarketItem::Gap => vec![frame(&TradeFrame::Gap)],
            // A trade stream starts from the present anyway.
            MarketItem::Started(_) => Vec::new(),
        };
        pump(receiver, sink, stream, render).await;
    })
}

/// `GET /ws/prices`: a snapshot of every stock, then each change of a price or quantity.
#[utoipa::path(get, path = "/ws/prices", operation_id = "stream_prices", tag = "stocks",
    responses((status = 101, description = "A WebSocket whose messages are PriceFrames: a \
        snapshot of every stock, then a price per change. Closed with 1013 when the catalog \
        is unavailable, or at once over the frontend's caps (in all, and per address) of open streams; with 1008 and a \
        reason when the consumer falls behind; with 1001 when it is silent for 60 s (pings go \
        every 20 s).", body = PriceFrame), NotAHandshake, OtherWebSocketVersion))]
pub async fn prices(
    State(state): State<AppState>,
    BareHandshake(handshake): BareHandshake,
) -> Response {
    handshake.on_upgrade(move |socket| async move {
        let receiver = state.inner.streams.prices.subscribe();
        let (mut sink, stream) = socket.split();
        // A hung catalog closes the stream soon, as it fails a lookup.
        let (as_of, stocks) = match catalog_stocks(&state).await {
            Ok(snapshot) => (snapshot.as_of(), snapshot.stocks),
            Err(e) => {
                tracing::warn!("prices stream: catalog snapshot: {e}");
                let _ = send(&mut sink, close(close_code::AGAIN, "catalog unavailable")).await;
                return;
            }
        };
        let first = frame(&PriceFrame::Snapshot {
            stocks: stocks.clone(),
        });
        // What the streams were last sent may be older than the snapshot (pushes missed with
        // no stream open, which nobody caught up on): a later change back to that value must
        // not pass for no change. (This stream takes nothing as old as its snapshot.)
        state.inner.streams.publish_prices(stocks, Some(as_of));
        if send(&mut sink, Message::Text(first.into())).await.is_err() {
            return;
        }
        // Changes published while the snapshot was read may be older than it.
        pump(
            receiver,
            sink,
            stream,
            |change: &PriceChange| match change.after(as_of) {
                true => vec![frame(&PriceFrame::Price(change.stock.clone()))],
                false => Vec::new(),
            },
        )
        .await;
    })
}

/// Every stock as the catalog has it now, through the breaker and within a deadline; not from
/// a catalog behind what it showed before a power loss (its stocks may be older).
async fn catalog_stocks(state: &AppState) -> Result<Snapshot, FrontendError> {
    let url = paths::SNAPSHOT
        .url(&state.inner.catalog_url, &[])
        .map_err(FrontendError::CatalogUnavailable)?;
    let request = state.inner.http.get(url).timeout(catalog::SNAPSHOT_TIMEOUT);
    let snapshot = call_catalog::<Snapshot>(state, request).await?;
    if snapshot.behind {
        // As the catalog's own lookups answer while it is behind.
        let behind = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the catalog is catching up",
        )
        .with("reason", CATCHING_UP);
        return Err(FrontendError::CatalogUnavailable(RemoteError::Api(behind)));
    }
    Ok(snapshot)
}

/// Sends the price streams every stock whose price or quantity changed since what they were
/// sent: after this frontend found it had missed pushes (which carry the changes), e.g. while
/// it hung.
pub(crate) async fn catch_up_prices(state: AppState) {
    if state.inner.streams.prices.receiver_count() == 0 {
        return;
    }
    match catalog_stocks(&state).await {
        Ok(snapshot) => {
            let as_of = Some(snapshot.as_of());
            state.inner.streams.publish_prices(snapshot.stocks, as_of);
        }
        // The next push of each stock brings it.
        Err(e) => tracing::warn!("prices after missed pushes: catalog snapshot: {e}"),
    }
}

/// `GET /ws/book/{name}`: the stock's book (the best 1,000 levels of each side: a snapshot
/// of every level would let anybody who rests orders a cent apart make every connect cost
/// megabytes), then each change, in order.
#[utoipa::path(get, path = "/ws/book/{name}", operation_id = "stream_order_book", tag = "market",
    params(("name" = String, Path, description = "Stock name")),
    responses(
        (status = 101, description = "A WebSocket whose messages are BookFrames: a snapshot \
            (the book as of entry `applied`, the best 1,000 levels of each side), then an \
            update per entry that changed it (every level it changed, at any depth), and a \
            new snapshot after a gap. Closed with 1013 when no order leader answers, or at once \
            over the frontend's caps (in all, and per address) of open streams; with 1008 and a reason when the consumer \
            falls behind; with 1001 when it is silent for 60 s (pings go every 20 s).", body = BookFrame),
        NotAHandshake,
        OtherWebSocketVersion,
        StockLookup,
    ))]
pub async fn book(
    State(state): State<AppState>,
    Path(name): Path<String>,
    BareHandshake(handshake): BareHandshake,
) -> Answer {
    stock(&state, &name).await?;
    Ok(handshake.on_upgrade(move |socket| follow(state, socket, BookStream { name })))
}

/// `GET /ws/book/{name}`'s frames.
struct BookStream {
    name: String,
}

impl Followed for BookStream {
    async fn snapshot(&mut self, state: &AppState) -> Option<(u64, String)> {
        let depth = book_snapshot(state, &self.name).await?;
        Some((depth.applied, frame(&BookFrame::Snapshot(depth))))
    }

    fn update(&mut self, event: &MarketEvent) -> Option<String> {
        if event.name != self.name || event.levels.is_empty() {
            return None;
        }
        Some(frame(&BookFrame::Update {
            entry: event.entry,
            levels: event.levels.clone(),
            last_price: event.last_price,
        }))
    }

    fn stock(&self) -> &str {
        &self.name
    }
}

/// The query of `GET /ws/candles/{name}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CandleStreamQuery {
    /// `1m` (default), `5m`, `1h` or `1d`.
    #[param(value_type = Option<CandleInterval>)]
    interval: Option<CandleInterval>,
}

/// `GET /ws/candles/{name}`: the stock's candles of the last 100 intervals, then the candle
/// each trade changes, as it commits (bucketed by the leader's time of its entry, as the book
/// keeps them).
#[utoipa::path(get, path = "/ws/candles/{name}", operation_id = "stream_candles", tag = "market",
    params(("name" = String, Path, description = "Stock name"), CandleStreamQuery),
    responses(
        (status = 101, description = "A WebSocket whose messages are CandleFrames: a snapshot \
            (the last 100 intervals' candles as of entry `applied`), then the candle each \
            committed trade changed, and a new snapshot after a gap. Closed with 1013 when no \
            order leader answers, or at once over the frontend's caps (in all, and per address) of open streams; with 1008 \
            and a reason when the consumer falls behind; with 1001 when it is silent for 60 s \
            (pings go every 20 s).", body = CandleFrame),
        (status = 400, description = "An unknown parameter or interval, or not a WebSocket handshake", body = stocknet_common::envelope::ErrorEnvelope),
        OtherWebSocketVersion,
        StockLookup,
    ))]
pub async fn candles(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<CandleStreamQuery>,
    handshake: Handshake,
) -> Answer {
    stock(&state, &name).await?;
    let interval = query.interval.unwrap_or_default();
    let stream = CandleStream {
        name,
        interval,
        last: None,
    };
    Ok(handshake.on_upgrade(move |socket| follow(state, socket, stream)))
}

/// `GET /ws/candles/{name}`'s frames.
struct CandleStream {
    name: String,
    interval: CandleInterval,
    /// The last candle sent and its start, which the next trades extend while they fall in
    /// its interval.
    last: Option<(u64, Candle)>,
}

impl Followed for CandleStream {
    async fn snapshot(&mut self, state: &AppState) -> Option<(u64, String)> {
        let snapshot = candle_snapshot(state, &self.name, self.interval).await?;
        self.last = snapshot.candles.last().and_then(|candle| {
            let start = parse_instant(&candle.time).ok()?;
            Some((start, candle.clone()))
        });
        Some((snapshot.applied, frame(&CandleFrame::Snapshot(snapshot))))
    }

    fn update(&mut self, event: &MarketEvent) -> Option<String> {
        if event.name != self.name || event.trades.is_empty() {
            return None;
        }
        let width = self.interval.millis();
        let start = event.time - event.time % width;
        for trade in &event.trades {
            let traded = Ohlcv::trade(trade.price, trade.quantity);
            self.last = Some(match self.last.take() {
                Some((at, mut candle)) if at == start => {
                    candle.traded.extend(&traded);
                    (at, candle)
                }
                _ => (
                    start,
                    Candle {
                        time: rfc3339(start),
                        traded,
                    },
                ),
            });
        }
        let (_, candle) = self.last.as_ref()?;
        Some(frame(&CandleFrame::Update {
            entry: event.entry,
            candle: candle.clone(),
        }))
    }

    fn stock(&self) -> &str {
        &self.name
    }
}

/// A stream that starts from a snapshot of what it follows and goes on with what each market
/// event changes of it, from a new snapshot after a gap in the feed.
trait Followed: Send {
    /// The snapshot's frame and the entry it is as of; `None` when no leader answers.
    fn snapshot(
        &mut self,
        state: &AppState,
    ) -> impl std::future::Future<Output = Option<(u64, String)>> + Send;

    /// The frame for `event`, which comes after the snapshot, if it changes what is followed.
    fn update(&mut self, event: &MarketEvent) -> Option<String>;

    /// The stock followed.
    fn stock(&self) -> &str;
}

/// Serves `followed` on `socket` until the client goes or falls behind.
async fn follow(
    state: AppState,
    socket: axum::extract::ws::WebSocket,
    mut followed: impl Followed,
) {
    let mut receiver = state
        .inner
        .streams
        .subscribe_market(&state, Some(followed.stock()));
    let (mut sink, mut stream) = socket.split();
    let mut keepalive = Keepalive::new();
    loop {
        let Some((applied, first)) = followed.snapshot(&state).await else {
            let _ = send(
                &mut sink,
                close(close_code::AGAIN, "no order leader available"),
            )
            .await;
            return;
        };
        if send(&mut sink, Message::Text(first.into())).await.is_err() {
            return;
        }
        let client = (&mut sink, &mut stream);
        let after = send_updates(
            &mut receiver,
            client,
            &mut keepalive,
            &mut followed,
            applied,
        );
        if let AfterSnapshot::Over = after.await {
            return;
        }
    }
}

/// What ended a stream's updates after a snapshot.
enum AfterSnapshot {
    /// The feed lost events, or started past the snapshot: a new snapshot follows.
    Again,
    /// The client went or fell behind, or the channel closed.
    Over,
}

/// Sends what each market item `receiver` gets changes of `followed` after its snapshot as of
/// `applied`, with what else waits in the channel (up to [`BATCH`] items) in one write, until
/// the stream needs a new snapshot or is over.
async fn send_updates<S: Sink<Message> + Unpin>(
    receiver: &mut broadcast::Receiver<MarketItem>,
    (sink, stream): (
        &mut S,
        &mut (impl futures::Stream<Item = Result<Message, axum::Error>> + Unpin),
    ),
    keepalive: &mut Keepalive,
    followed: &mut impl Followed,
    applied: u64,
) -> AfterSnapshot {
    loop {
        let mut item = match next_item(receiver, (&mut *sink, &mut *stream), keepalive).await {
            Next::Item(item) => Some(item),
            Next::Behind(missed) => {
                let _ = send(sink, slow_consumer(missed)).await;
                return AfterSnapshot::Over;
            }
            Next::Done => return AfterSnapshot::Over,
        };
        let (mut updates, mut again, mut taken) = (Vec::new(), false, 0);
        while let Some(next) = item.take() {
            match next {
                MarketItem::Event(event) => {
                    if event.entry > applied {
                        updates.extend(followed.update(&event));
                    }
                }
                MarketItem::Gap => again = true,
                MarketItem::Started(after) => again = after > applied,
            }
            taken += 1;
            if again || taken == BATCH {
                break;
            }
            item = match receiver.try_recv() {
                Ok(next) => Some(next),
                Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                    let _ = send(sink, slow_consumer(missed)).await;
                    return AfterSnapshot::Over;
                }
                Err(_) => None,
            };
        }
        if !updates.is_empty() {
            let messages = updates
                .into_iter()
                .map(|update| Message::Text(update.into()));
            if send_all(sink, messages).await.is_err() {
                return AfterSnapshot::Over;
            }
        }
        if again {
            return AfterSnapshot::Again;
        }
    }
}

async fn candle_snapshot(
    state: &AppState,
    name: &str,
    interval: CandleInterval,
) -> Option<Candles> {
    let query = interval_query(interval);
    order_group::get(state, paths::CANDLES, &[name], Some(&query))
        .await
        .inspect_err(|e| tracing::warn!("candle stream for {name}: {e}"))
        .ok()
}

/// `interval=...` as the candles' query spells it.
fn interval_query(interval: CandleInterval) -> String {
    let text = serde_json::to_value(interval)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default();
    format!("interval={text}")
}

async fn book_snapshot(state: &AppState, name: &str) -> Option<Depth> {
    order_group::get(state, paths::BOOK, &[name], Some("depth=1000"))
        .await
        .inspect_err(|e| tracing::warn!("book stream for {name}: {e}"))
        .ok()
}

/// Forwards what `receiver` gets, rendered as text messages, until the client goes, the
/// channel closes, or the client falls behind: then it is closed with a reason.
pub async fn pump<T: Clone, S>(
    mut receiver: broadcast::Receiver<T>,
    mut sink: S,
    mut stream: impl futures::Stream<Item = Result<Message, axum::Error>> + Unpin,
    render: impl Fn(&T) -> Vec<String>,
) where
    S: Sink<Message> + Unpin,
{
    let mut keepalive = Keepalive::new();
    loop {
        match next_item(&mut receiver, (&mut sink, &mut stream), &mut keepalive).await {
            Next::Item(item) => {
                // With what else is waiting in the channel, written at once: a write per
                // message was most of what a stream cost.
                let mut texts = render(&item);
                for _ in 0..BATCH {
                    match receiver.try_recv() {
                        Ok(item) => texts.extend(render(&item)),
                        Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                            let _ = send(&mut sink, slow_consumer(missed)).await;
                            return;
                        }
                        Err(_) => break,
                    }
                }
                let messages = texts.into_iter().map(|text| Message::Text(text.into()));
                if send_all(&mut sink, messages).await.is_err() {
                    return;
                }
            }
            Next::Behind(missed) => {
                let _ = send(&mut sink, slow_consumer(missed)).await;
                return;
            }
            Next::Done => return,
        }
    }
}

/// What a stream's consumer gets next.
enum Next<T> {
    Item(T),
    /// It fell this many messages behind.
    Behind(u64),
    /// The client went, or the channel closed.
    Done,
}

/// The next item for a consumer, watching its socket meanwhile: clients have nothing to say
/// on these streams (axum answers pings), so anything but a close only tells that the client
/// is there. A ping due goes out on `sink` meanwhile.
async fn next_item<T: Clone, S: Sink<Message> + Unpin>(
    receiver: &mut broadcast::Receiver<T>,
    (sink, stream): (
        &mut S,
        &mut (impl futures::Stream<Item = Result<Message, axum::Error>> + Unpin),
    ),
    keepalive: &mut Keepalive,
) -> Next<T> {
    loop {
        tokio::select! {
            item = receiver.recv() => {
                return match item {
                    Ok(item) => Next::Item(item),
                    Err(broadcast::error::RecvError::Lagged(missed)) => Next::Behind(missed),
                    Err(broadcast::error::RecvError::Closed) => Next::Done,
                };
            }
            message = stream.next() => match message {
                Some(Ok(Message::Close(_))) | None => return Next::Done,
                Some(Err(error)) => {
                    refuse_unreadable(sink, error).await;
                    return Next::Done;
                }
                Some(Ok(_)) => keepalive.heard(),
            },
            due = keepalive.due() => if !answer_due(sink, due).await {
                return Next::Done;
            },
        }
    }
}

/// Sends one message, giving up on a client that accepts nothing for [`SEND_TIMEOUT`].
async fn send<S: Sink<Message> + Unpin>(sink: &mut S, message: Message) -> Result<(), ()> {
    send_all(sink, [message]).await
}

/// Sends `messages` with one write where they fit the socket's buffer, giving up on a client
/// that accepts nothing for [`SEND_TIMEOUT`].
async fn send_all<S: Sink<Message> + Unpin>(
    sink: &mut S,
    messages: impl IntoIterator<Item = Message>,
) -> Result<(), ()> {
    let sending = async {
        for message in messages {
            sink.feed(message).await.map_err(|_| ())?;
        }
        sink.flush().await.map_err(|_| ())
    };
    tokio::time::timeout(SEND_TIMEOUT, sending)
        .await
        .unwrap_or(Err(()))
}

fn slow_consumer(missed: u64) -> Message {
    close(
        close_code::POLICY,
        &format!("slow consumer: fell {missed} messages behind; reconnect to resume"),
    )
}

/// What a stream does with a message from the client it could not read: one over
/// [`CLIENT_MESSAGE_LIMIT`] is answered with a close frame that says so (1009, as RFC 6455
/// asks); any other such error has broken the connection, which is dropped.
pub(crate) async fn refuse_unreadable<S: Sink<Message> + Unpin>(sink: &mut S, error: axum::Error) {
    if let Ok(error) = error.into_inner().downcast::<tungstenite::Error>() {
        if let tungstenite::Error::Capacity(_) = *error {
            let _ = send(sink, too_large()).await;
        }
    }
}

fn too_large() -> Message {
    close(
        close_code::SIZE,
        &format!("a message to a stream is at most {CLIENT_MESSAGE_LIMIT} bytes"),
    )
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// Every message `GET /ws/trades` sends.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TradeFrame {
    /// A trade, as it commits.
    Trade(Trade),
    /// This frontend missed some trades: they are in `GET /trades?after=`.
    Gap,
}

/// Every message `GET /ws/prices` sends.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PriceFrame {
    /// Every stock, first.
    Snapshot { stocks: Vec<Stock> },
    /// A stock whose price or quantity changed.
    Price(Stock),
}

/// Every message `GET /ws/book/{name}` sends.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BookFrame {
    /// The whole book as of entry `applied`: first, and again after a gap.
    Snapshot(Depth),
    /// What one committed entry changed; a level with quantity 0 is gone.
    Update {
        entry: u64,
        levels: Vec<LevelChange>,
        last_price: Option<Price>,
    },
}

/// Every message `GET /ws/candles/{name}` sends.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CandleFrame {
    /// The last 100 intervals' candles as of entry `applied`: first, and again after a gap.
    Snapshot(Candles),
    /// The candle a committed entry's trades changed, as it stands after them.
    Update { entry: u64, candle: Candle },
}

/// A frame as the text of a WebSocket message.
fn frame(frame: &impl Serialize) -> String {
    serde_json::to_string(frame).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_consumer_that_falls_behind_is_closed_with_a_reason() {
        let (sender, receiver) = broadcast::channel::<u32>(4);
        for n in 0..10 {
            sender.send(n).unwrap();
        }
        // The sender never waited, and the channel holds no more than its capacity.
        assert_eq!(sender.len(), 4);
        let (sink, mut sent) = futures::channel::mpsc::unbounded::<Message>();
        let (_client, quiet) = futures::channel::mpsc::unbounded::<Result<Message, axum::Error>>();
        pump(receiver, sink, quiet, |n| vec![n.to_string()]).await;
        match sent.next().await {
            Some(Message::Close(Some(frame))) => {
                assert_eq!(frame.code, close_code::POLICY);
                assert!(frame.reason.contains("slow consumer"), "{}", frame.reason);
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// A client's message over the limit closes its stream with 1009 and a reason.
    #[tokio::test]
    async fn a_message_over_the_limit_is_answered_with_1009() {
        let (_sender, receiver) = broadcast::channel::<u32>(4);
        let (sink, mut sent) = futures::channel::mpsc::unbounded::<Message>();
        let (client, messages) =
            futures::channel::mpsc::unbounded::<Result<Message, axum::Error>>();
        let too_long = tungstenite::error::CapacityError::MessageTooLong {
            size: CLIENT_MESSAGE_LIMIT + 1,
            max_size: CLIENT_MESSAGE_LIMIT,
        };
        client
            .unbounded_send(Err(axum::Error::new(tungstenite::Error::Capacity(
                too_long,
            ))))
            .unwrap();
        pump(receiver, sink, messages, |n| vec![n.to_string()]).await;
        match sent.next().await {
            Some(Message::Close(Some(frame))) => {
                assert_eq!(frame.code, close_code::SIZE);
                assert!(
                    frame.reason.contains("at most 4096 bytes"),
                    "{}",
                    frame.reason
                );
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// A client that says nothing (gone without closing) is pinged, then closed once silent for
    /// the limit; one that answers the pings keeps its stream.
    #[tokio::test(start_paused = true)]
    async fn a_client_silent_past_the_limit_is_closed_and_one_that_answers_pings_is_kept() {
        let (sender, receiver) = broadcast::channel::<u32>(4);
        let (sink, sent) = futures::channel::mpsc::unbounded::<Message>();
        let (_client, silent) = futures::channel::mpsc::unbounded::<Result<Message, axum::Error>>();
        let started = tokio::time::Instant::now();
        let pumped = pump(receiver, sink, silent, |n| vec![n.to_string()]);
        tokio::time::timeout(SILENCE_LIMIT * 10, pumped)
            .await
            .expect("a silent client's stream ends");
        assert_eq!(started.elapsed(), SILENCE_LIMIT);
        let sent: Vec<Message> = sent.collect().await;
        assert!(
            matches!(
                sent.as_slice(),
                [Message::Ping(_), Message::Ping(_), Message::Close(Some(frame))]
                    if frame.code == close_code::AWAY
            ),
            "{sent:?}"
        );

        let (sink, mut sent) = futures::channel::mpsc::unbounded::<Message>();
        let (client, answers) = futures::channel::mpsc::unbounded::<Result<Message, axum::Error>>();
        let pumping = tokio::spawn(pump(sender.subscribe(), sink, answers, |n| {
            vec![n.to_string()]
        }));
        for _ in 0..5 {
            assert!(matches!(sent.next().await, Some(Message::Ping(_))));
            client
                .unbounded_send(Ok(Message::Pong(axum::body::Bytes::new())))
                .unwrap();
        }
        assert!(!pumping.is_finished(), "answered five pings: kept");
        drop(sender);
        pumping.await.unwrap();
    }

    #[tokio::test]
    async fn a_consumer_that_keeps_up_gets_everything_in_order() {
        let (sender, receiver) = broadcast::channel::<u32>(4);
        let (sink, sent) = futures::channel::mpsc::unbounded::<Message>();
        let (client, quiet) = futures::channel::mpsc::unbounded::<Result<Message, axum::Error>>();
        let pumping = tokio::spawn(pump(receiver, sink, quiet, |n| vec![n.to_string()]));
        for n in 0..3 {
            sender.send(n).unwrap();
        }
        drop(sender);
        pumping.await.unwrap();
        drop(client);
        let texts: Vec<String> = sent
            .map(|m| match m {
                Message::Text(text) => text.to_string(),
                other => format!("{other:?}"),
            })
            .collect()
            .await;
        assert_eq!(texts, ["0", "1", "2"]);
    }

    /// A client's socket: what it was sent, and in how many writes (flushes).
    #[derive(Default, Clone)]
    struct Socket {
        sent: Arc<Mutex<Vec<String>>>,
        writes: Arc<AtomicUsize>,
    }

    impl Sink<Message> for Socket {
        type Error = std::convert::Infallible;

        fn poll_ready(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn start_send(self: std::pin::Pin<&mut Self>, message: Message) -> Result<(), Self::Error> {
            if let Message::Text(text) = message {
                self.sent.lock().unwrap().push(text.to_string());
            }
            Ok(())
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn what_waits_in_the_channel_is_sent_with_one_write() {
        let (sender, receiver) = broadcast::channel::<u32>(8);
        for n in 0..3 {
            sender.send(n).unwrap();
        }
        drop(sender);
        let socket = Socket::default();
        let (_client, quiet) = futures::channel::mpsc::unbounded::<Result<Message, axum::Error>>();
        pump(receiver, socket.clone(), quiet, |n| {
            vec![n.to_string(), format!("{n}'")]
        })
        .await;
        assert_eq!(
            *socket.sent.lock().unwrap(),
            ["0", "0'", "1", "1'", "2", "2'"]
        );
        assert_eq!(socket.writes.load(Ordering::SeqCst), 1);
    }

    /// A book or candle stream sends the updates of what waits in its channel with one write,
    /// skips what its snapshot holds already, and at a gap stops for a new snapshot once it
    /// sent what came before the gap.
    #[tokio::test]
    async fn a_followed_stream_sends_what_waits_with_one_write_and_stops_at_a_gap() {
        struct Entries;
        impl Followed for Entries {
            async fn snapshot(&mut self, _: &AppState) -> Option<(u64, String)> {
                None
            }
            fn update(&mut self, event: &MarketEvent) -> Option<String> {
                Some(event.entry.to_string())
            }
            fn stock(&self) -> &str {
                "GameStart"
            }
        }
        let (sender, mut receiver) = broadcast::channel(16);
        for entry in [3, 4, 5, 6] {
            sender.send(event(entry, "GameStart")).unwrap();
        }
        sender.send(MarketItem::Gap).unwrap();
        sender.send(event(7, "GameStart")).unwrap();
        let socket = Socket::default();
        let (_client, mut quiet) =
            futures::channel::mpsc::unbounded::<Result<Message, axum::Error>>();
        let mut sink = socket.clone();
        let (client, mut keepalive) = ((&mut sink, &mut quiet), Keepalive::new());
        let after = send_updates(&mut receiver, client, &mut keepalive, &mut Entries, 3).await;
        assert!(matches!(after, AfterSnapshot::Again));
        assert_eq!(*socket.sent.lock().unwrap(), ["4", "5", "6"]);
        assert_eq!(socket.writes.load(Ordering::SeqCst), 1);
        // What came after the gap is for the new snapshot's updates.
        assert_eq!(entry_of(receiver.try_recv()), Some(7));
    }

    /// Whoever subscribed before the feed started may hold a snapshot older than where the
    /// feed starts: the start tells them, before any event.
    #[tokio::test]
    async fn the_feed_tells_its_listeners_where_it_started_before_any_event() {
        use axum::routing::get;
        use stocknet_common::wire::{FeedPage, Health};

        let health = Health {
            node_id: 1,
            term: 1,
            leader: Some(1),
            ready: true,
            last_transaction: 11,
            applied: 10,
            leading: true,
        };
        let page = FeedPage {
            floor: 0,
            through: 11,
            events: Vec::new(),
        };
        let leader = axum::Router::new()
            .route(
                "/health",
                get(move || async move { stocknet_common::data(health) }),
            )
            .route(
                "/feed",
                get(move || {
                    let page = page.clone();
                    async move { stocknet_common::data(page) }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let replica = format!("1=http://{}", listener.local_addr().unwrap());
        let served = tokio::spawn(async move { axum::serve(listener, leader).await });
        let state = crate::router_tests::lone_state(&["--order-replicas", &replica]);
        let mut receiver = state.inner.streams.subscribe_market(&state, None);
        let first = tokio::time::timeout(Duration::from_secs(10), receiver.recv()).await;
        assert!(
            matches!(first, Ok(Ok(MarketItem::Started(10)))),
            "{first:?}"
        );
        served.abort();
    }

    /// A leader that hangs holds its feed poll: once this frontend follows the new leader,
    /// the feed polls that one at once, instead of waiting out the hung poll's deadline.
    #[tokio::test]
    async fn the_feed_leaves_a_hung_leader_s_poll_once_another_leader_is_followed() {
        use axum::routing::get;
        use std::sync::atomic::AtomicBool;
        use stocknet_common::wire::{FeedPage, Health};

        // Replica 1 leads term 1, until `moved`: then replica 2 leads term 2. Replica 1's
        // feed never answers.
        let moved = Arc::new(AtomicBool::new(false));
        let replica = |id: u32, feed_hangs: bool| {
            let moved = moved.clone();
            let health = move || {
                let moved = moved.load(Ordering::Acquire);
                let term = if moved { 2 } else { 1 };
                let leads = (id == 2) == moved;
                stocknet_common::data(Health {
                    node_id: id,
                    term,
                    leader: Some(if moved { 2 } else { 1 }),
                    ready: true,
                    last_transaction: 10,
                    applied: 10,
                    leading: leads,
                })
            };
            axum::Router::new()
                .route("/health", get(move || std::future::ready(health())))
                .route(
                    "/feed",
                    get(move || async move {
                        if feed_hangs {
                            std::future::pending::<()>().await;
                        }
                        // Events before 11 are gone: the frontend's listeners hear of a gap.
                        stocknet_common::data(FeedPage {
                            floor: 11,
                            through: 12,
                            events: Vec::new(),
                        })
                    }),
                )
        };
        let mut urls = Vec::new();
        let mut served = Vec::new();
        for (id, feed_hangs) in [(1, true), (2, false)] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            urls.push(format!("{id}=http://{}", listener.local_addr().unwrap()));
            let router = replica(id, feed_hangs);
            served.push(tokio::spawn(
                async move { axum::serve(listener, router).await },
            ));
        }
        let state = crate::router_tests::lone_state(&["--order-replicas", &urls.join(",")]);
        let mut receiver = state.inner.streams.subscribe_market(&state, None);
        let first = tokio::time::timeout(Duration::from_secs(10), receiver.recv()).await;
        assert!(
            matches!(first, Ok(Ok(MarketItem::Started(10)))),
            "{first:?}"
        );
        // The feed now polls replica 1, which hangs; the group moves on to replica 2.
        moved.store(true, Ordering::Release);
        assert!(
            state.inner.leaders.check_leader().await,
            "follows replica 2"
        );
        // Well inside the hung poll's deadline (11 s).
        let next = tokio::time::timeout(Duration::from_secs(4), receiver.recv()).await;
        assert!(matches!(next, Ok(Ok(MarketItem::Gap))), "{next:?}");
        for server in served {
            server.abort();
        }
    }

    fn event(entry: u64, name: &str) -> MarketItem {
        MarketItem::Event(Arc::new(MarketEvent {
            entry,
            time: 0,
            name: name.into(),
            trades: Vec::new(),
            levels: Vec::new(),
            last_price: None,
        }))
    }

    fn entry_of(item: Result<MarketItem, broadcast::error::TryRecvError>) -> Option<u64> {
        match item {
            Ok(MarketItem::Event(event)) => Some(event.entry),
            _ => None,
        }
    }

    #[test]
    fn a_stock_s_streams_hear_its_events_and_every_gap_only() {
        let streams = Streams::new(10, 0);
        let mut a = streams.market_receiver(Some("A"));
        let mut every = streams.market_receiver(None);
        assert!(streams.market_listened());
        streams.publish_market(MarketItem::Started(1));
        for (entry, name) in [(2, "A"), (3, "B"), (4, "B"), (5, "A")] {
            streams.publish_market(event(entry, name));
        }
        streams.publish_market(MarketItem::Gap);

        assert!(matches!(a.try_recv(), Ok(MarketItem::Started(1))));
        assert_eq!(entry_of(a.try_recv()), Some(2));
        assert_eq!(
            entry_of(a.try_recv()),
            Some(5),
            "B's events reached A's stream"
        );
        assert!(matches!(a.try_recv(), Ok(MarketItem::Gap)));
        assert!(a.try_recv().is_err());
        assert!(matches!(every.try_recv(), Ok(MarketItem::Started(1))));
        let entries: Vec<_> = (0..4).map(|_| entry_of(every.try_recv())).collect();
        assert_eq!(entries, [Some(2), Some(3), Some(4), Some(5)]);
        assert!(matches!(every.try_recv(), Ok(MarketItem::Gap)));

        // Nobody left: the feed is no longer listened to, and A's channel is gone.
        drop((a, every));
        assert!(!streams.market_listened());
        assert!(streams.stock_channels().is_empty());
    }

    /// Stock A at $1 with `quantity` shares.
    fn stock(quantity: u64) -> Stock {
        Stock {
            name: "A".into(),
            price: Price::from_cents(100),
            quantity,
        }
    }

    #[test]
    fn one_client_address_opens_at_most_its_share_of_the_streams() {
        let streams = Streams::new(10, 2);
        let (a, b) = (
            Some(IpAddr::from([10, 0, 0, 1])),
            Some(IpAddr::from([10, 0, 0, 2])),
        );
        let first = streams.open(a).expect("a's first");
        let _second = streams.open(a).expect("a's second");
        assert!(streams.open(a).is_none(), "a's third");
        let _other = streams.open(b).expect("another address has its own share");
        let unknown = streams.open(None);
        assert!(
            unknown.is_some(),
            "an unknown address counts in the total only"
        );
        drop(first);
        let again = streams.open(a);
        assert!(again.is_some(), "a place given back");
        assert_eq!(streams.open.load(Ordering::Acquire), 4);
        drop((again, unknown));
        assert_eq!(streams.open.load(Ordering::Acquire), 2);
        assert_eq!(streams.by_client.lock().unwrap().len(), 2);
    }

    #[test]
    fn prices_are_published_only_when_they_change() {
        let streams = Streams::new(1, 0);
        let mut receiver = streams.prices.subscribe();
        let as_of = |applied| Some(AsOf { boot: 1, applied });
        streams.publish_prices(vec![stock(5)], as_of(1));
        streams.publish_prices(vec![stock(5)], as_of(2));
        streams.publish_prices(vec![stock(6)], as_of(3));
        assert_eq!(receiver.try_recv().unwrap().stock.quantity, 5);
        assert_eq!(receiver.try_recv().unwrap().stock.quantity, 6);
        assert!(receiver.try_recv().is_err());
    }

    /// A stream takes a change only if it is of a later catalog state than its snapshot: one
    /// published while the snapshot was read may be older, and one its snapshot holds is not
    /// news. Another stream's snapshot, taken later, keeps nothing from this one.
    #[test]
    fn a_stream_takes_only_changes_newer_than_its_snapshot() {
        let streams = Streams::new(2, 0);
        let mut receiver = streams.prices.subscribe();
        let as_of = |applied| AsOf { boot: 1, applied };
        streams.publish_prices(vec![stock(5)], Some(as_of(1)));
        streams.publish_prices(vec![stock(6)], Some(as_of(3)));
        let older = receiver.try_recv().unwrap();
        let held = receiver.try_recv().unwrap();
        // A snapshot read at 2 (quantity 5 after entry 1, say, 6 only at 3).
        assert!(!older.after(as_of(2)), "older than the snapshot");
        assert!(held.after(as_of(2)));
        // One read at 3 holds it already.
        assert!(!held.after(as_of(3)));
        // A push by hand names no state: it is news to every stream.
        streams.publish_prices(vec![stock(7)], None);
        assert!(receiver.try_recv().unwrap().after(as_of(9)));
    }

    /// A value from an older catalog state (a push that timed out and arrived late, a
    /// snapshot a push overtook, a push of a catalog process since replaced) sends nothing.
    #[test]
    fn prices_never_go_back_to_an_older_catalog_state() {
        let streams = Streams::new(1, 0);
        let mut receiver = streams.prices.subscribe();
        let as_of = |boot, applied| Some(AsOf { boot, applied });
        streams.publish_prices(vec![stock(5)], as_of(1, 7));
        streams.publish_prices(vec![stock(6)], as_of(1, 6));
        streams.publish_prices(vec![stock(6)], as_of(1, 7));
        assert_eq!(receiver.try_recv().unwrap().stock.quantity, 5);
        assert!(receiver.try_recv().is_err());
        // A new catalog process's values are newer, whatever its position.
        streams.publish_prices(vec![stock(4)], as_of(2, 1));
        streams.publish_prices(vec![stock(6)], as_of(1, 9));
        assert_eq!(receiver.try_recv().unwrap().stock.quantity, 4);
        assert!(receiver.try_recv().is_err());
    }
}
