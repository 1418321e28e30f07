//! Order service: one replica of the replicated order log. The replicas elect their leader
//! among themselves (openraft, see [`consensus`]); the leader sequences orders, commits them
//! on a majority, applies them to the catalog and answers.

pub mod archive;
pub mod audit;
pub mod book;
pub mod book_store;
pub mod candles;
pub mod catalog;
pub mod consensus;
pub mod error;
pub mod feed;
pub mod log;
pub mod metrics;
pub mod portfolio;
pub mod replica;
pub mod report;
#[cfg(test)]
mod simulation;
pub mod snapshot;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{middleware, Router};
use serde::Deserialize;
use stocknet_common::auth::require_secret;
use stocknet_common::clock;
use stocknet_common::envelope::bounded;
use stocknet_common::listeners;
use stocknet_common::model;
use stocknet_common::paths;
use stocknet_common::wire::{
    self, parse_peer, AuditQuery, CandleQuery, Candles, NewLearner, NewOrder, OrderChange,
    OrderPage, OrderView, Peer, Trade, Voters, CLIENT_KEY_PREFIX, IDEMPOTENCY_KEY,
    READ_FROM_LEADER, USER,
};
use stocknet_common::{
    data, internal_client, server, ApiError, Json, Path, Query, Secret, SecretArgs, Status,
};

pub use error::OrderError;
pub use replica::{Links, Replica};

use audit::AuditFilter;
use book::InMemory;
use book_store::BookSettings;
use log::IndexLimits;
use stocknet_common::env;
use stocknet_common::ports;

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = env::HOST, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = env::ORDER_PORT, default_value_t = ports::ORDER)]
    pub port: u16,
    /// This replica's id: unique, >= 1; the highest live id leads. Default: the ordinal at
    /// the end of the host name plus one (`stocknet-order-2` is replica 3), as in a
    /// Kubernetes StatefulSet.
    #[arg(long, env = env::NODE_ID)]
    pub node_id: Option<u32>,
    /// The group's founding replicas as ID=URL, comma-separated (etcd's initial cluster):
    /// they are the voters until the group changes its membership (`/members`), and the same
    /// on every replica. A replica not named here joins a running group as the leader adds it.
    #[arg(
        long,
        env = env::ORDER_PEERS,
        value_delimiter = ',',
        value_parser = parse_peer
    )]
    pub peers: Vec<Peer>,
    /// Catalog base URL.
    #[arg(
        long,
        env = env::CATALOG_URL,
        default_value = ports::CATALOG_URL
    )]
    pub catalog_url: String,
    /// Directory holding orders-<id>.csv, term-<id>, book-<id>.snap, trades-<id>.bin and
    /// order-records-<id>.bin.
    #[arg(long, env = env::DATA_DIR, default_value = "./stocknet-data")]
    pub data_dir: PathBuf,
    /// Log entries applied to the book between two snapshots of it (a restart loads the
    /// last snapshot and applies only the entries after it). Also how far behind a replica
    /// may fall and still be sent entries: one further behind is sent a snapshot.
    #[arg(long, env = env::BOOK_SNAPSHOT_EVERY, default_value_t = book_store::SNAPSHOT_EVERY,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub book_snapshot_every: u64,
    /// The newest trades the book keeps in memory; older ones are read from the archive
    /// (`trades-<id>.bin`) when asked for.
    #[arg(long, env = env::TRADES_IN_MEMORY, default_value_t = book_store::TRADES_IN_MEMORY,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub trades_in_memory: usize,
    /// The newest limit orders whose records the book keeps in memory, besides every open one;
    /// older ones are read from the archive (`order-records-<id>.bin`) when asked for.
    #[arg(long, env = env::ORDERS_IN_MEMORY, default_value_t = book_store::ORDERS_IN_MEMORY,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub orders_in_memory: usize,
    /// Lines of the order log between two checkpoints of its index (`orders-<id>.index/`): a
    /// replica that starts reads only the lines after the last one.
    #[arg(long, env = env::INDEX_CHECKPOINT_EVERY, default_value_t = log::CHECKPOINT_EVERY,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub index_checkpoint_every: u64,
    /// The least seconds between two checkpoints of the index (each writes back every page
    /// of its key tables touched since the last).
    #[arg(long, env = env::INDEX_CHECKPOINT_SECONDS, default_value_t = log::CHECKPOINT_SECONDS)]
    pub index_checkpoint_seconds: u64,
    #[command(flatten)]
    pub secret: SecretArgs,
    #[command(flatten)]
    pub metrics: stocknet_common::metrics::MetricsArgs,
}

impl Config {
    /// `--node-id`, or else the StatefulSet ordinal in `HOSTNAME` plus one.
    pub fn node_id(&self) -> Result<u32, OrderError> {
        if let Some(id) = self.node_id {
            return Ok(id);
        }
        let hostname = std::env::var("HOSTNAME").unwrap_or_default();
        node_id_from_hostname(&hostname).ok_or_else(|| {
            OrderError::Config(format!(
                "no --node-id / STOCKNET_NODE_ID, and host name {hostname:?} does not end in a \
                 StatefulSet ordinal"
            ))
        })
    }
}

/// `stocknet-order-2` → 3: a StatefulSet pod's ordinal plus one (ids start at 1).
pub fn node_id_from_hostname(hostname: &str) -> Option<u32> {
    let (_, ordinal) = hostname.rsplit_once('-')?;
    ordinal.parse::<u32>().ok()?.checked_add(1)
}

#[derive(Clone)]
pub struct AppState {
    pub replica: Arc<Replica>,
    /// Required of every caller but health and readiness probes.
    pub secret: Secret,
}

impl AppState {
    /// Opens the replica's files and starts its part in the group.
    pub async fn start(config: &Config) -> Result<Self, OrderError> {
        let secret = config.secret.load()?;
        let links = Links::http(
            internal_client(Duration::from_secs(2), &secret),
            &config.catalog_url,
        );
        let replica = Replica::start(
            config.node_id()?,
            &config.data_dir,
            config.peers.clone(),
            links,
            BookSettings {
                snapshot_every: config.book_snapshot_every,
                in_memory: InMemory {
                    trades: config.trades_in_memory,
                    orders: config.orders_in_memory,
                },
            },
            IndexLimits {
                key_checkpoint_every: config.index_checkpoint_every,
                key_checkpoint_interval: Duration::from_secs(config.index_checkpoint_seconds),
                ..IndexLimits::default()
            },
        )
        .await?;
        Ok(Self { replica, secret })
    }
}

pub fn router(state: AppState) -> Router {
    // The reads a frontend forwards wait for a confirmation of leadership when they ask for it;
    // writes and the group's own calls never pass through that layer.
    let confirmed = || middleware::from_fn_with_state(state.clone(), confirm_leader_reads);
    // Everything but the probes is for the frontends and the other replicas only.
    let internal = Router::new()
        .route(
            paths::ORDERS.pattern(),
            get(list_orders)
                .route_layer(confirmed())
                .post(place)
                .delete(cancel_by_client_order_id),
        )
        .route(
            paths::ORDER.pattern(),
            get(lookup)
                .route_layer(confirmed())
                .put(modify_order)
                .delete(cancel_order),
        )
        .route(
            paths::TRADES.pattern(),
            get(trades).route_layer(confirmed()),
        )
        .route(
            paths::PORTFOLIO.pattern(),
            get(portfolio).route_layer(confirmed()),
        )
        .route(
            paths::AUDIT.pattern(),
            get(audit_trail).route_layer(confirmed()),
        )
        .route(
            paths::DAILY_REPORT.pattern(),
            get(daily_report).route_layer(confirmed()),
        )
        .route(paths::BOOK.pattern(), get(book).route_layer(confirmed()))
        .route(
            paths::CANDLES.pattern(),
            get(candles).route_layer(confirmed()),
        )
        .route(paths::FEED.pattern(), get(feed))
        .route(paths::ORDER_FEED.pattern(), get(order_feed))
        .route(paths::LOG_AFTER.pattern(), get(orders_after))
        .route(paths::MEMBERS.pattern(), get(members))
        .route(paths::LEARNERS.pattern(), post(add_learner))
        .route(paths::VOTERS.pattern(), put(change_voters))
        .merge(consensus::routes(
            state.replica.raft().clone(),
            state.replica.elections().clone(),
        ))
        .route_layer(middleware::from_fn_with_state(
            state.secret.clone(),
            require_secret,
        ));
    let http = state.replica.metrics().http.clone();
    let routes = Router::new()
        .route(paths::HEALTH.pattern(), get(health))
        .route(paths::READY.pattern(), get(ready))
        .route(paths::METRICS.pattern(), get(metrics))
        .merge(internal)
        .with_state(state);
    stocknet_common::metrics::tracked(server::with_common_layers(routes), &http)
}

/// A read a frontend forwards (it carries [`READ_FROM_LEADER`]) is served only once this
/// replica has confirmed that it leads: never from a deposed leader or from a restarted one
/// that has not caught up (I12).
async fn confirm_leader_reads(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    if request.headers().contains_key(READ_FROM_LEADER) {
        if let Err(e) = state.replica.confirm_leadership().await {
            return e.into_response();
        }
    }
    next.run(request).await
}

/// `GET /metrics`: Prometheus metrics, open like the probes (they reveal no orders).
async fn metrics(State(state): State<AppState>) -> Response {
    state.replica.refresh_metrics();
    stocknet_common::metrics::exposition(&state.replica.metrics().registry)
}

/// Starts the replica and serves on the configured address in the background until
/// `shutdown` resolves.
pub async fn start(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<server::Running, server::BoxError> {
    let state = AppState::start(&config).await?;
    let (listener, addr) =
        listeners::listen(listeners::PUBLIC, SocketAddr::new(config.host, config.port)).await?;
    tracing::info!(%addr, node_id = state.replica.health().node_id, "order replica listening");
    let replica = state.replica.clone();
    let scrape =
        stocknet_common::metrics::metrics_router(replica.metrics().registry.clone(), move || {
            replica.refresh_metrics()
        });
    stocknet_common::metrics::spawn_metrics_port(config.host, config.metrics.metrics_port, scrape)
        .await?;
    let replica = state.replica.clone();
    Ok(server::Running::spawn(addr, async move {
        server::serve(listener, router(state), shutdown).await?;
        // Requests are answered: stop standing in elections and let consensus stop cleanly.
        replica.shutdown().await;
        Ok(())
    }))
}

async fn health(State(state): State<AppState>) -> Response {
    data(state.replica.health())
}

/// `GET /members`: the group's membership as this replica knows it.
async fn members(State(state): State<AppState>) -> Response {
    data(state.replica.members())
}

/// `POST /members/learners` (leader only): replicate the log to a new replica.
async fn add_learner(
    State(state): State<AppState>,
    Json(learner): Json<NewLearner>,
) -> Result<Response, ApiError> {
    state.replica.add_learner(learner).await?;
    Ok(data(state.replica.members()))
}

/// `PUT /members/voters` (leader only): the voters the group should have.
async fn change_voters(
    State(state): State<AppState>,
    Json(voters): Json<Voters>,
) -> Result<Response, ApiError> {
    state.replica.change_voters(voters).await?;
    Ok(data(state.replica.members()))
}

/// Readiness: 200 once this replica knows a leader (its term has one).
async fn ready(State(state): State<AppState>) -> Response {
    if state.replica.is_ready() {
        data(serde_json::json!({ "ready": true }))
    } else {
        OrderError::NotReady.into_response()
    }
}

async fn place(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(order): Json<NewOrder>,
) -> Result<Response, ApiError> {
    let placed = state
        .replica
        .place(order, idempotency_key(&headers), user(&headers)?)
        .await?;
    Ok(data(placed))
}

fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// The user the frontend verified the request's API key for, if it had one.
fn user(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get(USER)
        .map(|value| {
            value
                .to_str()
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| ApiError::bad_request("the user header must be a user id"))
        })
        .transpose()
}

/// `GET /audit`: the commands that reached a leader, newest first, filtered.
async fn audit_trail(
    State(state): State<AppState>,
    Query(query): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let filter = AuditFilter::parse(&query).map_err(ApiError::bad_request)?;
    let limit = page_size(query.limit)?;
    let before = match query.cursor.as_deref() {
        None => u64::MAX,
        Some(cursor) => cursor
            .parse()
            .map_err(|_| ApiError::bad_request("cursor is not one this API gave out"))?,
    };
    Ok(data(state.replica.audit(filter, before, limit).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportQuery {
    /// `YYYY-MM-DD`; today (UTC) when absent.
    date: Option<String>,
}

/// `GET /reports/daily?date=`: one UTC day of the market, from the book's tallies.
async fn daily_report(
    State(state): State<AppState>,
    Query(query): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    let day = match query.date.as_deref() {
        Some(date) => clock::parse_day(date).map_err(ApiError::bad_request)?,
        None => clock::day_of(clock::now_millis()),
    };
    Ok(data(
        state.replica.read_book(|book| book.daily_report(day))?,
    ))
}

/// `GET /portfolios/{user}`: the user's positions, from the committed log.
async fn portfolio(
    State(state): State<AppState>,
    Path(user): Path<String>,
) -> Result<Response, ApiError> {
    let user: u64 = user
        .parse()
        .map_err(|_| ApiError::bad_request("User id must be a number"))?;
    Ok(data(state.replica.read_book(|book| book.holdings(user))?))
}

async fn modify_order(
    State(state): State<AppState>,
    Path(number): Path<String>,
    headers: HeaderMap,
    Json(change): Json<OrderChange>,
) -> Result<Response, ApiError> {
    let number = parse_number(&number)?;
    let changed = state
        .replica
        .modify(number, change, idempotency_key(&headers), user(&headers)?)
        .await?;
    Ok(data(changed))
}

async fn cancel_order(
    State(state): State<AppState>,
    Path(number): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let number = parse_number(&number)?;
    let changed = state
        .replica
        .cancel(number, idempotency_key(&headers), user(&headers)?)
        .await?;
    Ok(data(changed))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientOrderId {
    client_order_id: String,
}

/// `DELETE /orders?client_order_id=`: cancels the user's open order with that client order id.
async fn cancel_by_client_order_id(
    State(state): State<AppState>,
    Query(query): Query<ClientOrderId>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user =
        user(&headers)?.ok_or_else(|| ApiError::bad_request(model::ANONYMOUS_CLIENT_ORDER_ID))?;
    let changed = state
        .replica
        .cancel_by_client_order_id(&query.client_order_id, idempotency_key(&headers), user)
        .await?;
    Ok(data(changed))
}

/// Most items one page of a listing holds.
pub const MAX_PAGE: usize = 1_000;
/// Items a listing's page holds when the request does not say.
const DEFAULT_PAGE: usize = 100;

fn page_size(limit: Option<usize>) -> Result<usize, ApiError> {
    bounded("limit", limit, DEFAULT_PAGE, MAX_PAGE)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderFilter {
    name: Option<String>,
    status: Option<String>,
    /// Only this user's orders.
    user: Option<u64>,
    /// Only the order placed under this client `Idempotency-Key`, once committed.
    key: Option<String>,
    /// Only orders with this client order id.
    client_order_id: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /orders`: limit orders, newest first; the cursor is the last number of the previous
/// page.
async fn list_orders(
    State(state): State<AppState>,
    Query(filter): Query<OrderFilter>,
) -> Result<Response, ApiError> {
    let limit = page_size(filter.limit)?;
    let status = filter
        .status
        .as_deref()
        .map(|text| {
            Status::parse(text).ok_or_else(|| {
                ApiError::bad_request(
                    "status must be open, partially_filled, filled, cancelled, expired, untriggered or rejected",
                )
            })
        })
        .transpose()?;
    if let Some(id) = filter.client_order_id.as_deref() {
        // (Any price: only the id's text is checked here.)
        model::check_client_order_id(id, Some(stocknet_common::Price::from_cents(1)))
            .map_err(ApiError::bad_request)?;
    }
    let before = match filter.cursor.as_deref() {
        None => u64::MAX,
        Some(cursor) => cursor
            .parse()
            .map_err(|_| ApiError::bad_request("cursor is not one this API gave out"))?,
    };
    if let Some(key) = filter.key.as_deref() {
        let logged = format!("{CLIENT_KEY_PREFIX}{key}");
        let orders = state
            .replica
            .placed_under(&logged)?
            .filter(|(order, user)| {
                filter.name.as_ref().is_none_or(|name| *name == order.name)
                    && status.is_none_or(|status| status == order.status)
                    && filter.user.is_none_or(|wanted| *user == Some(wanted))
            })
            .map(|(order, _)| order)
            .into_iter()
            .collect();
        return Ok(data(OrderPage {
            orders,
            next_cursor: None,
        }));
    }
    let page = state.replica.read_book(|book| {
        let wanted = |order: &book::LimitOrder| {
            filter
                .name
                .as_deref()
                .is_none_or(|name| *order.name == *name)
                && status.is_none_or(|status| order.status() == status)
                && filter.user.is_none_or(|user| order.user == Some(user))
                && filter
                    .client_order_id
                    .as_deref()
                    .is_none_or(|id| order.client_order_id() == Some(id))
        };
        let (orders, next) = book.orders_page(before, (limit, book::ORDERS_SCANNED), wanted);
        let orders: Vec<OrderView> = orders.iter().map(|o| book.limit_view(o)).collect();
        let next_cursor = next.map(|number| number.to_string());
        OrderPage {
            orders,
            next_cursor,
        }
    })?;
    Ok(data(page))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TradeFilter {
    name: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

/// `GET /trades`: trades after trade id `after`, oldest first.
async fn trades(
    State(state): State<AppState>,
    Query(filter): Query<TradeFilter>,
) -> Result<Response, ApiError> {
    let limit = page_size(filter.limit)?;
    let trades: Vec<Trade> = state
        .replica
        .read_book(|book| book.trades(filter.name.as_deref(), filter.after.unwrap_or(0), limit))?;
    Ok(data(trades))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    after: u64,
    /// How long to wait for a new entry, in milliseconds (default and at most 20,000).
    wait_ms: Option<u64>,
}

/// `GET /feed?after=N`: the market events of the entries after N; a long poll that waits for
/// the next entry when there is none yet.
async fn feed(State(state): State<AppState>, Query(query): Query<FeedQuery>) -> Response {
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(20_000).min(20_000));
    data(state.replica.feed().wait_for_page(query.after, wait).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderFeedQuery {
    user: u64,
    after: u64,
    /// How long to wait for an update, in milliseconds (default and at most 20,000).
    wait_ms: Option<u64>,
}

/// `GET /feed/orders?user=U&after=N`: user U's order updates of the entries after N; a long
/// poll that waits for one when there is none yet.
async fn order_feed(
    State(state): State<AppState>,
    Query(query): Query<OrderFeedQuery>,
) -> Response {
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(20_000).min(20_000));
    let feed = state.replica.feed();
    data(feed.wait_for_updates(query.user, query.after, wait).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DepthQuery {
    depth: Option<usize>,
}

/// Price levels shown when the request does not say.
const DEFAULT_DEPTH: usize = 10;

/// `GET /book/{name}`: the best price levels of each side, aggregated.
async fn book(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<DepthQuery>,
) -> Result<Response, ApiError> {
    let depth = bounded("depth", query.depth, DEFAULT_DEPTH, MAX_PAGE)?;
    Ok(data(
        state.replica.read_book(|book| book.depth(&name, depth))?,
    ))
}

/// Candles a request gets when it gives no `from`.
const DEFAULT_CANDLES: u64 = 100;

/// `GET /candles/{name}`: the stock's candles of one interval in `[from, to)` (none if `from`
/// is not before `to`), at most [`MAX_PAGE`] of them, with where the next page starts.
async fn candles(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<CandleQuery>,
) -> Result<Response, ApiError> {
    let interval = query.interval.unwrap_or_default();
    let width = interval.millis();
    let instant = |text: &Option<String>| {
        text.as_deref()
            .map(clock::parse_instant)
            .transpose()
            .map_err(ApiError::bad_request)
    };
    let to = instant(&query.to)?.unwrap_or_else(clock::now_millis);
    let from = instant(&query.from)?.unwrap_or(to.saturating_sub(DEFAULT_CANDLES * width));
    let (applied, (candles, next)) = state.replica.read_book(|book| {
        let candles = book.candles(&name, width, (from, to), MAX_PAGE);
        (book.applied(), candles)
    })?;
    let candles = candles
        .into_iter()
        .map(|c| wire::Candle {
            time: clock::rfc3339(c.start),
            open: c.open,
            high: c.high,
            low: c.low,
            close: c.close,
            volume: c.volume,
            trades: c.trades,
        })
        .collect();
    Ok(data(Candles {
        name,
        interval,
        applied,
        candles,
        next_from: next.map(clock::rfc3339),
    }))
}

fn parse_number(text: &str) -> Result<u64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "Order number must be a number"))
}

async fn lookup(
    State(state): State<AppState>,
    Path(number): Path<String>,
) -> Result<Response, ApiError> {
    let number = parse_number(&number)?;
    Ok(data(state.replica.order_view(number)?))
}

#[derive(Deserialize)]
struct Page {
    limit: Option<usize>,
}

async fn orders_after(
    State(state): State<AppState>,
    Path(after): Path<String>,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    let after = parse_number(&after)?;
    let limit = page.limit.unwrap_or(replica::BATCH);
    Ok(data(state.replica.slice_after(after, limit)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use serde_json::{json, Value};
    use stocknet_common::testing::send;

    const SECRET: &str = "router-test-secret";

    /// Replica 1 of a three-replica group whose other replicas and catalog are not running:
    /// it never learns of a leader.
    async fn app(dir: &std::path::Path) -> Router {
        let peers = vec![
            parse_peer("1=http://127.0.0.1:9").unwrap(),
            parse_peer("2=http://127.0.0.1:9").unwrap(),
            parse_peer("3=http://127.0.0.1:9").unwrap(),
        ];
        let secret = Secret::new(SECRET).unwrap();
        let links = Links::http(
            internal_client(Duration::from_millis(200), &secret),
            "http://127.0.0.1:9",
        );
        let replica = Replica::start(
            1,
            dir,
            peers,
            links,
            BookSettings::default(),
            IndexLimits::default(),
        )
        .await
        .unwrap();
        router(AppState { replica, secret })
    }

    fn get(uri: &str) -> Request<Body> {
        Request::get(uri)
            .header("authorization", format!("Bearer {SECRET}"))
            .body(Body::empty())
            .unwrap()
    }

    /// A replica that does not lead serves its own book to insiders, but a read a frontend
    /// forwards (with the read-from-leader header) is refused: nothing confirms it is current.
    #[tokio::test]
    async fn a_replica_that_does_not_lead_refuses_reads_meant_for_the_leader() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path()).await;
        for uri in [
            "/orders/1",
            "/orders",
            "/trades",
            "/book/GameStart",
            "/portfolios/1",
            "/reports/daily",
            "/audit",
        ] {
            let own = send(&app, get(uri)).await.0;
            assert_ne!(own, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
            let mut request = get(uri);
            request
                .headers_mut()
                .insert(READ_FROM_LEADER, "1".parse().unwrap());
            let (status, body) = send(&app, request).await;
            assert_eq!(
                (status, body["error"]["message"].clone()),
                (StatusCode::SERVICE_UNAVAILABLE, json!("Not the leader")),
                "{uri}"
            );
        }
    }

    /// The reads of issue 10 on an empty replica: their answers and their errors.
    #[tokio::test]
    async fn portfolios_audit_and_reports_answer_and_refuse_bad_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path()).await;
        for (uri, expected) in [
            ("/portfolios/7", json!([])),
            ("/audit", json!({"records": []})),
            (
                "/audit?user=7&outcome=price_moved&from=2026-11-29T00:00:00Z",
                json!({"records": []}),
            ),
            (
                "/reports/daily?date=2026-11-29",
                json!({"date": "2026-11-29", "stocks": [], "top_users": []}),
            ),
        ] {
            let (status, body) = send(&app, get(uri)).await;
            assert_eq!(
                (status, &body["data"]),
                (StatusCode::OK, &expected),
                "{uri}"
            );
        }
        for uri in [
            "/portfolios/x",
            "/audit?outcome=maybe",
            "/audit?to=tomorrow",
            "/audit?cursor=x",
            "/audit?limit=0",
            "/audit?colour=red",
            "/reports/daily?date=2026-02-30",
            "/reports/daily?day=2026-11-29",
        ] {
            let (status, body) = send(&app, get(uri)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        }
        let anonymous = Request::get("/audit").body(Body::empty()).unwrap();
        assert_eq!(send(&app, anonymous).await.0, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn without_the_secret_only_the_probes_answer_and_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path()).await;
        let anonymous = |method: &str, uri: &str, body: Value| {
            Request::builder()
                .method(method)
                .uri(uri)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap()
        };
        let vote = json!({"vote": {"leader_id": {"term": 999999, "voted_for": 3},
                     "committed": false}, "last_log_id": null});
        for request in [
            anonymous("POST", "/raft/vote", vote.clone()),
            anonymous("POST", "/raft/append", json!({})),
            anonymous("POST", "/raft/snapshot", json!({})),
            anonymous(
                "POST",
                "/orders",
                json!({"name": "GameStart", "quantity": 1, "type": "buy"}),
            ),
            anonymous("DELETE", "/orders/1", Value::Null),
            anonymous("GET", "/orders/logs/0", Value::Null),
            anonymous("GET", "/feed?after=0", Value::Null),
            anonymous("GET", "/feed/orders?user=1&after=0", Value::Null),
        ] {
            let uri = request.uri().to_string();
            let (status, body) = send(&app, request).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}: {body}");
            assert_eq!(body["error"]["code"], 401);
        }
        let wrong = Request::post("/raft/vote")
            .header("content-type", "application/json")
            .header("authorization", "Bearer not-the-secret-at-all")
            .body(Body::from(vote.to_string()))
            .unwrap();
        assert_eq!(send(&app, wrong).await.0, StatusCode::UNAUTHORIZED);
        // Nothing changed: the vote was never seen, no log; and the probes stay open.
        let health = Request::get("/health").body(Body::empty()).unwrap();
        let (status, body) = send(&app, health).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body["data"]["term"].as_u64().unwrap() < 999999, "{body}");
        assert_eq!(body["data"]["last_transaction"], json!(0));
        let ready = Request::get("/ready").body(Body::empty()).unwrap();
        assert_eq!(send(&app, ready).await.0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn node_id_from_a_statefulset_pod_name() {
        assert_eq!(node_id_from_hostname("demo-order-0"), Some(1));
        assert_eq!(node_id_from_hostname("demo-order-12"), Some(13));
        assert_eq!(node_id_from_hostname("laptop"), None);
        assert_eq!(node_id_from_hostname("demo-order-x"), None);
    }
}
