//! Frontend gateway: the public REST API. Stock lookups go through an LRU cache that the
//! catalog keeps fresh by pushing invalidations; orders go to the elected order leader, with
//! re-election and bounded retries (under one idempotency key) when the leader fails.

mod audit;
pub mod cache;
mod console;
pub mod leader;
pub mod limits;
mod openapi;
pub mod streams;
pub mod upstream;
pub mod users;

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{middleware, Extension, Router};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::Value;
use stocknet_common::auth::require_secret;
use stocknet_common::client::{call, endpoint};
use stocknet_common::envelope::{
    parse_json_object, with_retry_after, DataEnvelope, ErrorEnvelope, RawBody,
};
use stocknet_common::metrics::{self, HttpMetrics, MetricsArgs};
use stocknet_common::wire::{
    parse_peer, Changed, DailyReport, Depth, Invalidation, NewOrder, OrderChange, OrderPage,
    OrderView, Peer, Placed, PriceGuard, StockPage, Trade, CLIENT_KEY_PREFIX, IDEMPOTENCY_KEY,
    USER,
};
use stocknet_common::{
    data, internal_client, server, ApiError, Json, Path, Price, RemoteError, Secret, SecretArgs,
    Side, Status, Stock,
};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use cache::StockCache;
use leader::Election;
use upstream::catalog::{call_catalog, CatalogCall};
use upstream::order_group;

/// Longest stock name accepted.
const MAX_NAME_LEN: usize = 128;

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "STOCKNET_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "STOCKNET_FRONTEND_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Catalog base URL.
    #[arg(
        long,
        env = "STOCKNET_CATALOG_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub catalog_url: String,
    /// Order replicas as ID=URL, comma-separated.
    #[arg(
        long,
        env = "STOCKNET_ORDER_REPLICAS",
        value_delimiter = ',',
        value_parser = parse_peer,
        default_value = "1=http://127.0.0.1:8091,2=http://127.0.0.1:8092,3=http://127.0.0.1:8093"
    )]
    pub order_replicas: Vec<Peer>,
    /// Number of stocks the lookup cache holds (kept below the catalog size so that the
    /// LRU policy is exercised).
    #[arg(long, env = "STOCKNET_CACHE_SIZE", default_value_t = NonZeroUsize::new(8).expect("8 > 0"))]
    pub cache_size: NonZeroUsize,
    /// Turn the lookup cache off.
    #[arg(long, env = "STOCKNET_NO_CACHE")]
    pub no_cache: bool,
    /// A port of their own for the internal routes (the catalog's invalidation push), so that
    /// a network policy can keep them from everybody but the catalog; on the public port
    /// when unset.
    #[arg(long, env = "STOCKNET_FRONTEND_INTERNAL_PORT")]
    pub internal_port: Option<u16>,
    #[command(flatten)]
    pub limits: limits::LimitArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// How far (in basis points) a stock's price may be from an order's `expected_price`
    /// when the order does not say (`max_deviation_bps`).
    #[arg(long, env = "STOCKNET_PRICE_TOLERANCE_BPS", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub price_tolerance_bps: u32,
    #[command(flatten)]
    pub secret: SecretArgs,
}

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    catalog_url: String,
    cache: StockCache,
    election: Election,
    http: reqwest::Client,
    /// Prefix of the idempotency keys this frontend makes up for requests without one: random,
    /// so that no other frontend's or client's key is the same.
    key_prefix: String,
    next_key: AtomicU64,
    orders_placed: Counter,
    order_retries: Counter,
    streams: streams::Streams,
    /// Carried by every call to the catalog and the replicas, and required of the catalog's
    /// invalidation push.
    secret: Secret,
    /// Fails calls to the catalog fast while it is unreachable.
    catalog_breaker: upstream::breaker::Breaker,
    /// Per-client rate and in-flight limits of the public API.
    limits: Arc<limits::Limits>,
    /// Default tolerance of an order's `expected_price`.
    price_tolerance_bps: u32,
    /// The last value seen of every stock (read, or pushed with an invalidation), served
    /// marked stale while the catalog is unreachable. Bounded by the catalog's size.
    last_known: std::sync::Mutex<std::collections::HashMap<String, Stock>>,
    /// Users' credentials, to verify their API keys.
    credentials: users::Credentials,
    metrics: Metrics,
}

/// The frontend's metrics: the registry `GET /metrics` serves and what is set at scrape time.
struct Metrics {
    registry: Arc<Registry>,
    http: HttpMetrics,
    cache_entries: Gauge,
}

impl Inner {
    /// Sets what is read at scrape time.
    fn refresh_metrics(&self) {
        let entries = i64::try_from(self.cache.len()).unwrap_or(i64::MAX);
        self.metrics.cache_entries.set(entries);
    }

    fn remember(&self, stocks: impl IntoIterator<Item = Stock>) {
        let mut known = self.last_known.lock().unwrap_or_else(|e| e.into_inner());
        for stock in stocks {
            known.insert(stock.name.clone(), stock);
        }
    }

    fn last_known(&self, name: &str) -> Option<Stock> {
        let known = self.last_known.lock().unwrap_or_else(|e| e.into_inner());
        known.get(name).cloned()
    }
}

impl AppState {
    pub fn new(config: &Config, secret: Secret) -> Self {
        // Long enough for a leader that must first retry the catalog; health checks use less.
        let http = internal_client(Duration::from_secs(10), &secret);
        let cache = StockCache::new((!config.no_cache).then_some(config.cache_size));
        let election = Election::new(config.order_replicas.clone(), http.clone());
        let (orders_placed, order_retries) = (Counter::default(), Counter::default());
        let mut registry = Registry::with_prefix("stocknet_frontend");
        let http_metrics = HttpMetrics::register(&mut registry);
        let cache_entries = Gauge::default();
        for (name, help, counter) in [
            (
                "cache_hits",
                "Lookups answered from the cache",
                cache.hits(),
            ),
            (
                "cache_misses",
                "Lookups that went to the catalog",
                cache.misses(),
            ),
            (
                "orders_placed",
                "Orders acknowledged to clients",
                &orders_placed,
            ),
            (
                "order_retries",
                "Order calls retried after a leader failure",
                &order_retries,
            ),
            ("elections", "Order leaders elected", election.elections()),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "cache_entries",
            "Stocks in the cache",
            cache_entries.clone(),
        );
        let catalog_breaker = upstream::breaker::Breaker::default();
        catalog_breaker.register(&mut registry);
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        // The clock and the process id make it unique where the kernel's random source fails.
        let random = stocknet_common::api_key::random_bytes::<8>()
            .map(|bytes| stocknet_common::api_key::to_hex(&bytes))
            .unwrap_or_else(|_| format!("{:x}-{started:x}", std::process::id()));
        Self {
            inner: Arc::new(Inner {
                catalog_url: config.catalog_url.trim_end_matches('/').to_owned(),
                cache,
                election,
                http,
                key_prefix: format!("auto-{random}"),
                next_key: AtomicU64::new(1),
                orders_placed,
                order_retries,
                streams: streams::Streams::default(),
                secret,
                catalog_breaker,
                limits: Arc::new(limits::Limits::new(&config.limits)),
                price_tolerance_bps: config.price_tolerance_bps,
                last_known: std::sync::Mutex::default(),
                credentials: users::Credentials::default(),
                metrics: Metrics {
                    registry: Arc::new(registry),
                    http: http_metrics,
                    cache_entries,
                },
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("{0}")]
    BadRequest(String),
    #[error("Stock not found")]
    StockNotFound,
    #[error("No order leader available")]
    NoLeader,
    #[error("Catalog unavailable")]
    CatalogUnavailable(#[source] RemoteError),
    /// No API key where one is needed, or one that is malformed, unknown or wrong.
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    /// Logged here, never shown to the client.
    #[error("{0}")]
    Internal(String),
    /// The catalog's breaker is open: fail at once, and say when to try again.
    #[error("Catalog unavailable; retry later")]
    CatalogDown { retry_after: Duration },
    /// An error envelope from a backend service that is meant for the client as it is.
    #[error("{}", .0.message)]
    Upstream(ApiError),
    /// A write that may have executed: no answer says. A retry with `key` executes it at most
    /// once and answers how it went.
    #[error(
        "Outcome unknown: the command may or may not have executed. Retry it with \
         Idempotency-Key {key} (it executes at most once), or GET /orders?key={key}"
    )]
    OutcomeUnknown { key: String },
}

impl IntoResponse for FrontendError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::BadRequest(message) => {
                // Malformed requests never reach the leader, so no audit record holds them:
                // they are logged here and counted by route and status in the metrics.
                tracing::info!(%message, "refused a malformed request");
                StatusCode::BAD_REQUEST
            }
            Self::StockNotFound => StatusCode::NOT_FOUND,
            Self::NoLeader => StatusCode::SERVICE_UNAVAILABLE,
            Self::CatalogUnavailable(cause) => {
                tracing::warn!("catalog unavailable: {cause}");
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Upstream(error) => return error.clone().into_response(),
            Self::Unauthorized(_) => {
                let mut response =
                    ApiError::new(StatusCode::UNAUTHORIZED, self.to_string()).into_response();
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return response;
            }
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Internal(cause) => return ApiError::internal(cause).into_response(),
            Self::CatalogDown { retry_after } => {
                let error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, self.to_string());
                return with_retry_after(error, *retry_after);
            }
            Self::OutcomeUnknown { key } => {
                let error = ApiError::new(StatusCode::GATEWAY_TIMEOUT, self.to_string())
                    .with("idempotency_key", key);
                let mut response = error.into_response();
                if let Ok(value) = HeaderValue::from_str(key) {
                    response.headers_mut().insert(IDEMPOTENCY_KEY, value);
                }
                return response;
            }
        };
        ApiError::new(status, self.to_string()).into_response()
    }
}

/// The public API: every route registered here is described in the OpenAPI document by the
/// same call, so the two cannot drift apart.
fn public_api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(metrics))
        .routes(routes!(lookup))
        .routes(routes!(list_stocks))
        .routes(routes!(place_order, list_orders))
        .routes(routes!(query_order, modify_order, cancel_order))
        .routes(routes!(list_trades))
        .routes(routes!(book))
        .routes(routes!(daily_report))
        .routes(routes!(users::create_user))
        .routes(routes!(users::portfolio))
        .routes(routes!(audit::audit))
        .routes(routes!(streams::trades))
        .routes(routes!(streams::prices))
        .routes(routes!(streams::book))
        .routes(routes!(openapi::document))
        .routes(routes!(openapi::docs_page))
        .routes(routes!(console::root))
        .routes(routes!(console::console))
        .routes(routes!(console::cluster))
}

/// The OpenAPI 3.1 document of the public API (what `GET /openapi.json` serves).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    public_api().split_for_parts().1
}

/// The public API and the internal routes on one port.
pub fn router(state: AppState) -> Router {
    let http = state.inner.metrics.http.clone();
    let routes = public_routes(&state)
        .merge(internal_routes(&state))
        .with_state(state);
    metrics::tracked(server::with_common_layers(routes), &http)
}

/// The public API alone, for a frontend whose internal routes have a port of their own.
pub fn public_router(state: AppState) -> Router {
    let http = state.inner.metrics.http.clone();
    let routes = public_routes(&state).with_state(state);
    metrics::tracked(server::with_common_layers(routes), &http)
}

/// The internal routes alone: the catalog's cache invalidation push.
pub fn internal_router(state: AppState) -> Router {
    let http = state.inner.metrics.http.clone();
    let routes = internal_routes(&state).with_state(state);
    metrics::tracked(server::with_common_layers(routes), &http)
}

fn public_routes(state: &AppState) -> Router<AppState> {
    let (public, document) = public_api().split_for_parts();
    let public = public.layer(Extension(Arc::new(document)));
    // Only when configured: the layer costs cached lookups about 9% even when it lets
    // everything through (bench/ab.sh, 3 rounds).
    if !state.inner.limits.enabled() {
        return public;
    }
    public.route_layer(middleware::from_fn_with_state(state.clone(), limits::limit))
}

/// Not part of the public API, and only for callers with the shared secret.
fn internal_routes(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/invalidate", post(invalidate_many))
        .route("/invalidate/{name}", post(invalidate))
        .route_layer(middleware::from_fn_with_state(
            state.inner.secret.clone(),
            require_secret,
        ))
}

pub async fn run(config: Config) -> Result<(), server::BoxError> {
    let state = AppState::new(&config, config.secret.load()?);
    let (listener, addr) = server::bind(SocketAddr::new(config.host, config.port)).await?;
    tracing::info!(%addr, cache = !config.no_cache, cache_size = config.cache_size, "frontend listening");
    tokio::spawn(elect_early(state.clone()));
    tokio::spawn(upstream::catalog::watch(state.clone()));
    let inner = state.inner.clone();
    let scrape = metrics::metrics_router(inner.metrics.registry.clone(), move || {
        inner.refresh_metrics()
    });
    metrics::spawn_metrics_port(config.host, config.metrics.metrics_port, scrape).await?;
    let Some(internal_port) = config.internal_port else {
        server::serve(listener, router(state), server::shutdown_signal()).await?;
        return Ok(());
    };
    let (internal, internal_addr) =
        server::bind(SocketAddr::new(config.host, internal_port)).await?;
    tracing::info!(%internal_addr, "internal routes listening");
    // One signal stops both listeners.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        server::shutdown_signal().await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|&stop| stop).await;
    };
    tokio::try_join!(
        server::serve(
            listener,
            public_router(state.clone()),
            until_stopped(stopped.clone())
        ),
        server::serve(internal, internal_router(state), until_stopped(stopped)),
    )?;
    Ok(())
}

/// Elects a leader as soon as the replicas are ready rather than at the first order, so that
/// the replicas (and the StockNet's status) name one from the start. It waits for all of them
/// (the highest id should lead), and for at most [`EARLY_ELECTION_WAIT`]: then a majority does.
async fn elect_early(state: AppState) {
    let election = &state.inner.election;
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(200);
    while election.current().is_none() {
        let waited = started.elapsed() > EARLY_ELECTION_WAIT;
        if (waited || election.all_ready().await) && election.leader().await.is_some() {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// How long an early election waits for every replica to be ready.
const EARLY_ELECTION_WAIT: Duration = Duration::from_secs(30);

/// `GET /health` of a frontend.
#[derive(Debug, Serialize, ToSchema)]
struct FrontendHealth {
    service: &'static str,
    /// The order leader this frontend sends orders to, once it has elected one.
    leader: Option<u32>,
    term: Option<u64>,
    cache: bool,
}

/// Liveness, and the order leader this frontend uses.
#[utoipa::path(get, path = "/health", tag = "service",
    responses((status = 200, body = DataEnvelope<FrontendHealth>)))]
async fn health(State(state): State<AppState>) -> Response {
    let leader = state.inner.election.current();
    data(FrontendHealth {
        service: "frontend",
        leader: leader.as_ref().map(|l| l.id),
        term: leader.as_ref().map(|l| l.term),
        cache: state.inner.cache.enabled(),
    })
}

/// Prometheus metrics (OpenMetrics text): requests by route and status with their latency,
/// cache hits, misses and entries, orders placed, retries, elections.
#[utoipa::path(get, path = "/metrics", tag = "service",
    responses((status = 200, body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")))]
async fn metrics(State(state): State<AppState>) -> Response {
    state.inner.refresh_metrics();
    metrics::exposition(&state.inner.metrics.registry)
}

/// A stock: its price (the last trade on its book) and the house quantity market orders use.
/// While the catalog is unreachable, the last value this frontend saw, with `"stale": true`
/// beside `data` and a `Warning: 110` header.
#[utoipa::path(get, path = "/stocks/{name}", tag = "stocks",
    params(("name" = String, Path, description = "Stock name")),
    responses(
        (status = 200, body = DataEnvelope<Stock>),
        (status = 404, description = "Stock not found", body = ErrorEnvelope),
        (status = 503, description = "Catalog unavailable and no value seen (Retry-After while its breaker is open)", body = ErrorEnvelope),
    ))]
async fn lookup(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, FrontendError> {
    match stock(&state, &name).await? {
        Looked::Fresh(stock) => Ok(data(stock)),
        // The envelope says so, and so does the standard header.
        Looked::Stale(stock) => Ok((
            [(
                header::WARNING,
                HeaderValue::from_static("110 - \"Response is Stale\""),
            )],
            axum::Json(serde_json::json!({ "data": stock, "stale": true })),
        )
            .into_response()),
    }
}

/// A stock as a lookup found it.
pub(crate) enum Looked {
    Fresh(Stock),
    /// The catalog is unreachable: the last value this frontend saw.
    Stale(Stock),
}

impl Looked {
    fn into_stock(self) -> Stock {
        match self {
            Self::Fresh(stock) | Self::Stale(stock) => stock,
        }
    }
}

/// Stocks whose names contain `search` (any case), in name order, a page at a time.
#[utoipa::path(get, path = "/stocks", tag = "stocks",
    params(
        ("search" = Option<String>, Query, description = "Part of the name, any case"),
        ("limit" = Option<usize>, Query, description = "Page size, 1–1000 (default 100)"),
        ("cursor" = Option<String>, Query, description = "The previous page's next_cursor"),
    ),
    responses(
        (status = 200, body = DataEnvelope<StockPage>),
        (status = 400, description = "Unknown parameter or bad value", body = ErrorEnvelope),
        (status = 503, description = "Catalog unavailable", body = ErrorEnvelope),
    ))]
async fn list_stocks(State(state): State<AppState>, uri: Uri) -> Result<Response, FrontendError> {
    let inner = &state.inner;
    let mut url =
        endpoint(&inner.catalog_url, &["stocks"]).map_err(FrontendError::CatalogUnavailable)?;
    url.set_query(uri.query());
    let request = inner.http.get(url).timeout(upstream::catalog::READ_TIMEOUT);
    match call_catalog::<StockPage>(&state, request).await {
        Ok(page) => Ok(data(page)),
        Err(CatalogCall::Answered(RemoteError::Api(error))) => Err(FrontendError::Upstream(error)),
        Err(failure) => Err(failure.into()),
    }
}

/// Whether `name` can be a stock's name at all. Path segments such as `..` or `a/b` (decoded
/// from `%2e%2e`, `%2F`) would name another catalog route, so they never reach the catalog.
fn is_stock_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.chars().any(char::is_control)
}

/// A stock from the cache, or from the catalog (then cached); while the catalog cannot be
/// reached, the last value this frontend saw, if it saw one, marked stale: a cached value too,
/// since the catalog cannot push invalidations while it is down.
pub(crate) async fn stock(state: &AppState, name: &str) -> Result<Looked, FrontendError> {
    if !is_stock_name(name) {
        return Err(FrontendError::StockNotFound);
    }
    let inner = &state.inner;
    let epoch = match inner.cache.get(name) {
        Ok(stock) if inner.catalog_breaker.admit().is_err() => return Ok(Looked::Stale(stock)),
        Ok(stock) => return Ok(Looked::Fresh(stock)),
        Err(epoch) => epoch,
    };
    let url = endpoint(&inner.catalog_url, &["stocks", name])
        .map_err(FrontendError::CatalogUnavailable)?;
    let request = inner.http.get(url).timeout(upstream::catalog::READ_TIMEOUT);
    match call_catalog::<Stock>(state, request).await {
        Ok(stock) => {
            inner.remember([stock.clone()]);
            inner.cache.fill(stock.clone(), epoch);
            Ok(Looked::Fresh(stock))
        }
        Err(CatalogCall::Answered(e)) if e.status() == Some(StatusCode::NOT_FOUND) => {
            Err(FrontendError::StockNotFound)
        }
        Err(failure @ (CatalogCall::Refused(_) | CatalogCall::Failed(_))) => {
            match inner.last_known(name) {
                Some(stock) => Ok(Looked::Stale(stock)),
                None => Err(failure.into()),
            }
        }
        Err(failure) => Err(failure.into()),
    }
}

/// Orders fail at once, with `Retry-After`, while the catalog's breaker is open: the leader
/// could not apply them to the catalog anyway.
fn fail_fast_without_catalog(state: &AppState) -> Result<(), FrontendError> {
    state
        .inner
        .catalog_breaker
        .admit()
        .map_err(|retry_after| FrontendError::CatalogDown { retry_after })
}

/// The `Idempotency-Key` header, as the API's description shows it.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // describes a header that handlers read from the `HeaderMap`
struct IdempotencyKey {
    /// 1–128 visible ASCII characters; a retry with the same key executes once.
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
}

/// Fields a `POST /orders` body may have.
const ORDER_FIELDS: [&str; 6] = [
    "name",
    "quantity",
    "type",
    "price",
    "expected_price",
    "max_deviation_bps",
];

/// A `POST /orders` body: the order, and the client's guard against a moved price, which the
/// leader checks as it sequences the order.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PlaceOrder {
    /// The stock.
    name: String,
    #[schema(minimum = 1)]
    quantity: u32,
    #[serde(rename = "type")]
    side: Side,
    /// Limit price; without one the order is a market order against the catalog.
    #[serde(skip_serializing_if = "Option::is_none")]
    price: Option<Price>,
    /// Refuse the order (409, reason `price_moved`) if the stock's price is further than the
    /// tolerance from this.
    #[serde(skip_serializing_if = "Option::is_none")]
    expected_price: Option<Price>,
    /// The tolerance in basis points (0–10000); the frontend's default (200: 2%) when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 10000)]
    max_deviation_bps: Option<u32>,
}

impl PlaceOrder {
    /// The order for the leader; a guard without its own tolerance gets `default_bps`.
    fn into_order(self, default_bps: u32) -> NewOrder {
        NewOrder {
            name: self.name,
            quantity: self.quantity,
            side: self.side,
            price: self.price,
            guard: self.expected_price.map(|expected| PriceGuard {
                expected,
                max_deviation_bps: self.max_deviation_bps.unwrap_or(default_bps),
            }),
        }
    }
}

/// Largest tolerance an order may ask for: 100%.
const MAX_DEVIATION_BPS: u32 = 10_000;

fn validate_order(body: &[u8]) -> Result<PlaceOrder, FrontendError> {
    let bad = |message: &str| FrontendError::BadRequest(message.to_owned());
    let fields = parse_json_object(body).map_err(|e| FrontendError::BadRequest(e.message))?;
    refuse_unknown_fields(&fields, &ORDER_FIELDS)?;
    let missing: Vec<&str> = ["name", "quantity", "type"]
        .into_iter()
        .filter(|field| !fields.contains_key(*field))
        .collect();
    if !missing.is_empty() {
        return Err(FrontendError::BadRequest(format!(
            "Missing required fields: {}",
            missing.join(", ")
        )));
    }
    let name = match &fields["name"] {
        Value::String(name)
            if !name.is_empty()
                && name.len() <= MAX_NAME_LEN
                && !name.chars().any(char::is_control) =>
        {
            name.clone()
        }
        _ => return Err(bad(
            "name must be a non-empty string of at most 128 characters without control characters",
        )),
    };
    let quantity = validate_quantity(&fields["quantity"])?;
    let side = fields["type"]
        .as_str()
        .and_then(Side::parse)
        .ok_or_else(|| bad("type must be \"buy\" or \"sell\""))?;
    let price = fields.get("price").map(validate_price).transpose()?;
    let expected = fields
        .get("expected_price")
        .map(validate_price)
        .transpose()?;
    let max_deviation_bps = match fields.get("max_deviation_bps") {
        None => None,
        Some(value) => Some(
            value
                .as_u64()
                .and_then(|bps| u32::try_from(bps).ok())
                .filter(|bps| *bps <= MAX_DEVIATION_BPS)
                .ok_or_else(|| {
                    bad("max_deviation_bps must be a whole number of basis points, 0 to 10000")
                })?,
        ),
    };
    if expected.is_none() && max_deviation_bps.is_some() {
        return Err(bad("max_deviation_bps needs expected_price"));
    }
    Ok(PlaceOrder {
        name,
        quantity,
        side,
        price,
        expected_price: expected,
        max_deviation_bps,
    })
}

/// A `PUT /orders/{number}` body: a new total quantity, a new price, or both.
fn validate_change(body: &[u8]) -> Result<OrderChange, FrontendError> {
    let fields = parse_json_object(body).map_err(|e| FrontendError::BadRequest(e.message))?;
    refuse_unknown_fields(&fields, &["quantity", "price"])?;
    let change = OrderChange {
        quantity: fields.get("quantity").map(validate_quantity).transpose()?,
        price: fields.get("price").map(validate_price).transpose()?,
    };
    if change.quantity.is_none() && change.price.is_none() {
        return Err(FrontendError::BadRequest(
            "give a new quantity, a new price or both".into(),
        ));
    }
    Ok(change)
}

fn refuse_unknown_fields(
    fields: &serde_json::Map<String, Value>,
    known: &[&str],
) -> Result<(), FrontendError> {
    let unknown: Vec<&str> = fields
        .keys()
        .map(String::as_str)
        .filter(|field| !known.contains(field))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(FrontendError::BadRequest(format!(
            "Unknown fields: {} (known: {})",
            unknown.join(", "),
            known.join(", ")
        )))
    }
}

fn validate_quantity(value: &Value) -> Result<u32, FrontendError> {
    let bad = |message: &str| FrontendError::BadRequest(message.to_owned());
    match value.as_u64() {
        Some(0) | None => Err(bad("quantity must be a positive integer")),
        Some(quantity) => {
            u32::try_from(quantity).map_err(|_| bad("quantity is too large (at most 4294967295)"))
        }
    }
}

fn validate_price(value: &Value) -> Result<Price, FrontendError> {
    value
        .as_f64()
        .and_then(|price| Price::from_f64(price).ok())
        .filter(|price| price.cents() > 0)
        .ok_or_else(|| {
            FrontendError::BadRequest(format!(
                "price must be a positive number with at most 2 decimals, at most {}",
                Price::MAX
            ))
        })
}

/// Places an order: a market order against the house inventory without `price`, a limit
/// order on the stock's book with it. A retry with the same `Idempotency-Key` returns the
/// same transaction number and executes once.
#[utoipa::path(post, path = "/orders", tag = "orders",
    params(IdempotencyKey),
    request_body = PlaceOrder,
    security((), ("api_key" = [])),
    responses(
        (status = 200, body = DataEnvelope<Placed>),
        (status = 400, description = "Malformed body: bad JSON, a field twice, an unknown or missing field, a bad value", body = ErrorEnvelope),
        (status = 401, description = "An API key that is malformed, unknown or wrong", body = ErrorEnvelope),
        (status = 404, description = "Stock not found", body = ErrorEnvelope),
        (status = 409, description = "Refused, and recorded as refused: insufficient stock quantity (market orders; reason insufficient_quantity), or the price is further than the tolerance from expected_price (reason price_moved, with current_price)", body = ErrorEnvelope),
        (status = 422, description = "Idempotency-Key used before for a different request", body = ErrorEnvelope),
        (status = 503, description = "Not executed, and never will be: no order leader available, or the catalog is down (then with Retry-After)", body = ErrorEnvelope),
        (status = 504, description = "Outcome unknown: it may have executed. The body's idempotency_key (also the Idempotency-Key header) is the key it ran under: a retry with it executes at most once and answers how it went; GET /orders?key= shows the order if it was committed", body = ErrorEnvelope),
    ))]
async fn place_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, FrontendError> {
    let inner = &state.inner;
    let order = validate_order(&body)?.into_order(inner.price_tolerance_bps);
    fail_fast_without_catalog(&state)?;
    let user = users::caller(&state, &headers).await?;
    let key = idempotency_key(&state, &headers)?;
    let logged_key = format!("{CLIENT_KEY_PREFIX}{key}");
    let placed: Placed = order_group::write(&state, &key, |leader| {
        let request = inner
            .http
            .post(leader.orders_url.clone())
            .header(IDEMPOTENCY_KEY, logged_key.as_str())
            .json(&order);
        call::<Placed>(for_user(request, user))
    })
    .await?;
    // The catalog has already invalidated every frontend; this covers a frontend the catalog
    // could not reach.
    inner.cache.invalidate([order.name.as_str()]);
    inner.orders_placed.inc();
    Ok(data(placed))
}

/// The client's `Idempotency-Key`, or one this frontend makes up, under which its own retries
/// of the request go. Both go to the log under [`CLIENT_KEY_PREFIX`], so that a client told a
/// made-up key (in a 504) can retry with it.
fn idempotency_key(state: &AppState, headers: &HeaderMap) -> Result<String, FrontendError> {
    let inner = &state.inner;
    Ok(match headers.get(IDEMPOTENCY_KEY) {
        Some(value) => value
            .to_str()
            .ok()
            .filter(|key| !key.is_empty() && key.len() <= 128)
            .ok_or_else(|| {
                FrontendError::BadRequest(
                    "Idempotency-Key must be 1 to 128 visible ASCII characters".into(),
                )
            })?
            .to_owned(),
        None => format!(
            "{}-{}",
            inner.key_prefix,
            inner.next_key.fetch_add(1, Ordering::Relaxed)
        ),
    })
}

/// Marks an internal call as made for `user`, if a user sent the request.
fn for_user(request: reqwest::RequestBuilder, user: Option<u64>) -> reqwest::RequestBuilder {
    match user {
        Some(user) => request.header(USER, user),
        None => request,
    }
}

fn parse_order_number(text: &str) -> Result<u64, FrontendError> {
    text.parse()
        .map_err(|_| FrontendError::BadRequest("Order number must be a number".into()))
}

/// Changes an open limit order's total quantity and/or price. A smaller quantity at the same
/// price keeps its place in the queue; anything else sends it to the back (and may trade).
#[utoipa::path(put, path = "/orders/{number}", tag = "orders",
    params(("number" = u64, Path, description = "Transaction number of the limit order"), IdempotencyKey),
    security((), ("api_key" = [])),
    request_body = OrderChange,
    responses(
        (status = 200, body = DataEnvelope<Changed>),
        (status = 400, description = "Malformed body, or neither quantity nor price", body = ErrorEnvelope),
        (status = 401, description = "An API key that is malformed, unknown or wrong", body = ErrorEnvelope),
        (status = 403, description = "The order belongs to another user", body = ErrorEnvelope),
        (status = 404, description = "No such limit order", body = ErrorEnvelope),
        (status = 409, description = "No longer open, or a quantity not above what is filled", body = ErrorEnvelope),
        (status = 422, description = "Idempotency-Key used before for a different request", body = ErrorEnvelope),
        (status = 503, description = "Not executed, and never will be: no order leader available, or the catalog is down (then with Retry-After)", body = ErrorEnvelope),
        (status = 504, description = "Outcome unknown: it may have executed. The body's idempotency_key (also the Idempotency-Key header) is the key it ran under: a retry with it executes at most once and answers how it went; GET /orders?key= shows the order if it was committed", body = ErrorEnvelope),
    ))]
async fn modify_order(
    State(state): State<AppState>,
    Path(number): Path<String>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, FrontendError> {
    let number = parse_order_number(&number)?;
    let change = validate_change(&body)?;
    change_on_leader(&state, &headers, number, Some(&change)).await
}

/// Cancels an open limit order.
#[utoipa::path(delete, path = "/orders/{number}", tag = "orders",
    params(("number" = u64, Path, description = "Transaction number of the limit order"), IdempotencyKey),
    security((), ("api_key" = [])),
    responses(
        (status = 200, body = DataEnvelope<Changed>),
        (status = 401, description = "An API key that is malformed, unknown or wrong", body = ErrorEnvelope),
        (status = 403, description = "The order belongs to another user", body = ErrorEnvelope),
        (status = 404, description = "No such limit order", body = ErrorEnvelope),
        (status = 409, description = "No longer open", body = ErrorEnvelope),
        (status = 422, description = "Idempotency-Key used before for a different request", body = ErrorEnvelope),
        (status = 503, description = "Not executed, and never will be: no order leader available, or the catalog is down (then with Retry-After)", body = ErrorEnvelope),
        (status = 504, description = "Outcome unknown: it may have executed. The body's idempotency_key (also the Idempotency-Key header) is the key it ran under: a retry with it executes at most once and answers how it went; GET /orders?key= shows the order if it was committed", body = ErrorEnvelope),
    ))]
async fn cancel_order(
    State(state): State<AppState>,
    Path(number): Path<String>,
    headers: HeaderMap,
) -> Result<Response, FrontendError> {
    let number = parse_order_number(&number)?;
    change_on_leader(&state, &headers, number, None).await
}

/// Sends a modify (`change`) or a cancel (none) of order `number` to the leader, under the
/// request's idempotency key.
async fn change_on_leader(
    state: &AppState,
    headers: &HeaderMap,
    number: u64,
    change: Option<&OrderChange>,
) -> Result<Response, FrontendError> {
    fail_fast_without_catalog(state)?;
    let user = users::caller(state, headers).await?;
    let key = idempotency_key(state, headers)?;
    let logged_key = format!("{CLIENT_KEY_PREFIX}{key}");
    let changed: Changed = order_group::write(state, &key, |leader| {
        let request = endpoint(&leader.url, &["orders", &number.to_string()]).map(|url| {
            let http = &state.inner.http;
            let request = match change {
                Some(change) => http.put(url).json(change),
                None => http.delete(url),
            };
            for_user(request.header(IDEMPOTENCY_KEY, logged_key.as_str()), user)
        });
        async move { call::<Changed>(request?).await }
    })
    .await?;
    Ok(data(changed))
}

/// Forwards a read of the book to the leader, whose book holds every committed entry; the
/// query string goes as it came (the replica validates it).
async fn read_from_leader(
    state: &AppState,
    segments: &[&str],
    query: Option<&str>,
) -> Result<Response, FrontendError> {
    let value: Value = order_group::read(state, |leader| {
        let request = endpoint(&leader.url, segments).map(|mut url| {
            url.set_query(query);
            state.inner.http.get(url)
        });
        async move { call::<Value>(request?).await }
    })
    .await?;
    Ok(data(value))
}

/// Limit orders, newest first, a page at a time.
#[utoipa::path(get, path = "/orders", tag = "orders",
    params(
        ("name" = Option<String>, Query, description = "Only this stock's"),
        ("status" = Option<Status>, Query, description = "Only orders in this state"),
        ("user" = Option<u64>, Query, description = "Only this user's orders"),
        ("key" = Option<String>, Query, description = "Only the order placed under this Idempotency-Key (the client's, or the one a 504 named), if it was committed"),
        ("limit" = Option<usize>, Query, description = "Page size, 1–1000 (default 100)"),
        ("cursor" = Option<String>, Query, description = "The previous page's next_cursor"),
    ),
    responses(
        (status = 200, body = DataEnvelope<OrderPage>),
        (status = 400, description = "Unknown parameter or bad value", body = ErrorEnvelope),
        (status = 503, description = "No order leader available", body = ErrorEnvelope),
    ))]
async fn list_orders(State(state): State<AppState>, uri: Uri) -> Result<Response, FrontendError> {
    read_from_leader(&state, &["orders"], uri.query()).await
}

/// Trades after a trade id, oldest first.
#[utoipa::path(get, path = "/trades", tag = "market",
    params(
        ("name" = Option<String>, Query, description = "Only this stock's"),
        ("after" = Option<u64>, Query, description = "Trade id to start after (default 0)"),
        ("limit" = Option<usize>, Query, description = "Page size, 1–1000 (default 100)"),
    ),
    responses(
        (status = 200, body = DataEnvelope<Vec<Trade>>),
        (status = 400, description = "Unknown parameter or bad value", body = ErrorEnvelope),
        (status = 503, description = "No order leader available", body = ErrorEnvelope),
    ))]
async fn list_trades(State(state): State<AppState>, uri: Uri) -> Result<Response, FrontendError> {
    read_from_leader(&state, &["trades"], uri.query()).await
}

/// One UTC day of the market, from the committed log: per stock the executions, volume bought
/// and sold, VWAP, open/high/low/close and refused commands by reason; the top users by volume.
#[utoipa::path(get, path = "/reports/daily", tag = "market",
    params(("date" = Option<String>, Query, description = "YYYY-MM-DD (UTC); today when absent")),
    responses(
        (status = 200, body = DataEnvelope<DailyReport>),
        (status = 400, description = "Unknown parameter or a date that is not YYYY-MM-DD", body = ErrorEnvelope),
        (status = 503, description = "No order leader available", body = ErrorEnvelope),
    ))]
async fn daily_report(State(state): State<AppState>, uri: Uri) -> Result<Response, FrontendError> {
    read_from_leader(&state, &["reports", "daily"], uri.query()).await
}

/// A stock's book: the best price levels of each side, aggregated.
#[utoipa::path(get, path = "/book/{name}", tag = "market",
    params(
        ("name" = String, Path, description = "Stock name"),
        ("depth" = Option<usize>, Query, description = "Levels per side, 1–1000 (default 10)"),
    ),
    responses(
        (status = 200, body = DataEnvelope<Depth>),
        (status = 400, description = "Bad depth", body = ErrorEnvelope),
        (status = 404, description = "Stock not found", body = ErrorEnvelope),
        (status = 503, description = "No order leader available", body = ErrorEnvelope),
    ))]
async fn book(
    State(state): State<AppState>,
    Path(name): Path<String>,
    uri: Uri,
) -> Result<Response, FrontendError> {
    stock(&state, &name).await?.into_stock();
    read_from_leader(&state, &["book", &name], uri.query()).await
}

/// An order: the seed's fields and where it stands, with its trades.
#[utoipa::path(get, path = "/orders/{number}", tag = "orders",
    params(("number" = u64, Path, description = "Transaction number")),
    responses(
        (status = 200, body = DataEnvelope<OrderView>),
        (status = 400, description = "Order number must be a number", body = ErrorEnvelope),
        (status = 404, description = "Order number invalid", body = ErrorEnvelope),
        (status = 503, description = "No order leader available", body = ErrorEnvelope),
    ))]
async fn query_order(
    State(state): State<AppState>,
    Path(number): Path<String>,
) -> Result<Response, FrontendError> {
    let number: u64 = number
        .parse()
        .map_err(|_| FrontendError::BadRequest("Order number must be a number".into()))?;
    let inner = &state.inner;
    let order: OrderView = order_group::read(&state, |leader| {
        let request =
            endpoint(&leader.url, &["orders", &number.to_string()]).map(|url| inner.http.get(url));
        async move { call::<OrderView>(request?).await }
    })
    .await?;
    Ok(data(order))
}

async fn invalidate(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    state.inner.cache.invalidate([name.as_str()]);
    data(serde_json::json!({ "success": true }))
}

/// The catalog's push: every stock one catalog update named, one request per frontend.
async fn invalidate_many(
    State(state): State<AppState>,
    Json(request): Json<Invalidation>,
) -> Response {
    state
        .inner
        .cache
        .invalidate(request.names.iter().map(String::as_str));
    state.inner.remember(request.stocks.iter().cloned());
    state.inner.streams.publish_prices(request.stocks);
    data(serde_json::json!({ "success": true }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_validation_messages() {
        let cases = [
            (r#"{"name":"A","quantity":1,"type":"buy"}"#, None),
            (r#"{"name":"A","quantity":1}"#, Some("Missing required fields: type")),
            (r#"{"name":"A","quantity":0,"type":"buy"}"#, Some("quantity must be a positive integer")),
            (r#"{"name":"A","quantity":-3,"type":"buy"}"#, Some("quantity must be a positive integer")),
            (r#"{"name":"A","quantity":1.5,"type":"buy"}"#, Some("quantity must be a positive integer")),
            (r#"{"name":"A","quantity":"1","type":"buy"}"#, Some("quantity must be a positive integer")),
            (r#"{"name":"A","quantity":99999999999,"type":"buy"}"#, Some("quantity is too large (at most 4294967295)")),
            (r#"{"name":"A","quantity":1,"type":"hold"}"#, Some("type must be \"buy\" or \"sell\"")),
            (r#"{"name":"","quantity":1,"type":"buy"}"#, Some("name must be a non-empty string of at most 128 characters without control characters")),
            (r#"{"name":"a\nb","quantity":1,"type":"buy"}"#, Some("name must be a non-empty string of at most 128 characters without control characters")),
            (r#"[1]"#, Some("Request body must be a JSON object")),
        ];
        for (body, expected) in cases {
            match (validate_order(body.as_bytes()), expected) {
                (Ok(_), None) => {}
                (Err(FrontendError::BadRequest(message)), Some(expected)) => {
                    assert_eq!(message, expected, "{body}")
                }
                (other, _) => panic!("{body}: unexpected {other:?}"),
            }
        }
    }
}

#[cfg(test)]
mod price_check_tests {
    use super::*;

    #[test]
    fn the_guard_is_validated_and_sent_with_the_default_tolerance_filled_in() {
        let body = br#"{"name":"A","quantity":1,"type":"buy","expected_price":15.99,"max_deviation_bps":50}"#;
        let order = validate_order(body).unwrap().into_order(200);
        assert_eq!(order.price, None);
        let guard = |bps| {
            Some(PriceGuard {
                expected: Price::from_cents(1599),
                max_deviation_bps: bps,
            })
        };
        assert_eq!(order.guard, guard(50));
        let body = br#"{"name":"A","quantity":1,"type":"buy","expected_price":15.99}"#;
        assert_eq!(
            validate_order(body).unwrap().into_order(200).guard,
            guard(200)
        );
        let body = br#"{"name":"A","quantity":1,"type":"buy"}"#;
        assert_eq!(validate_order(body).unwrap().into_order(200).guard, None);
        for (body, message) in [
            (
                r#"{"name":"A","quantity":1,"type":"buy","max_deviation_bps":50}"#,
                "max_deviation_bps needs expected_price",
            ),
            (
                r#"{"name":"A","quantity":1,"type":"buy","expected_price":1,"max_deviation_bps":10001}"#,
                "max_deviation_bps must be a whole number of basis points, 0 to 10000",
            ),
            (
                r#"{"name":"A","quantity":1,"type":"buy","expected_price":-1}"#,
                "price must be a positive number with at most 2 decimals, at most 1000000000.00",
            ),
        ] {
            match validate_order(body.as_bytes()) {
                Err(FrontendError::BadRequest(got)) => assert_eq!(got, message, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }
}

#[cfg(test)]
mod router_tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use clap::Parser;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    /// A frontend whose catalog and order replicas are not running.
    fn app() -> Router {
        let cli = Cli::parse_from([
            "frontend",
            "--catalog-url",
            "http://127.0.0.1:9",
            "--order-replicas",
            "1=http://127.0.0.1:9",
        ]);
        router(AppState::new(
            &cli.config,
            Secret::new("router-test-secret").unwrap(),
        ))
    }

    async fn send(request: Request<Body>) -> (StatusCode, Value) {
        let response = app().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    fn post_json(uri: &str, body: &'static str) -> Request<Body> {
        Request::post(uri)
            .header("content-type", "application/json")
            .header("authorization", "Bearer router-test-secret")
            .body(Body::from(body))
            .unwrap()
    }

    #[tokio::test]
    async fn the_invalidation_push_needs_the_secret() {
        for auth in [None, Some("Bearer wrong-secret-but-long")] {
            let mut request =
                Request::post("/invalidate").header("content-type", "application/json");
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            let request = request
                .body(Body::from(r#"{"names":["GameStart"]}"#))
                .unwrap();
            let (status, body) = send(request).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
            assert_eq!(body["error"]["code"], 401);
        }
    }

    #[tokio::test]
    async fn envelopes_for_every_outcome_without_backends() {
        let (status, body) = send(
            Request::post("/invalidate/GameStart")
                .header("authorization", "Bearer router-test-secret")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body),
            (
                StatusCode::OK,
                serde_json::json!({"data": {"success": true}})
            )
        );
        let (status, body) = send(post_json(
            "/invalidate",
            r#"{"names":["GameStart","FishCo"]}"#,
        ))
        .await;
        assert_eq!(
            (status, body),
            (
                StatusCode::OK,
                serde_json::json!({"data": {"success": true}})
            )
        );
        let (status, body) = send(post_json("/invalidate", r#"{"names":"GameStart"}"#)).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (StatusCode::BAD_REQUEST, serde_json::json!(400))
        );
        let (status, body) = send(Request::post("/orders").body(Body::from("{")).unwrap()).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (StatusCode::BAD_REQUEST, serde_json::json!(400))
        );
        let (status, body) = send(
            Request::get("/stocks/GameStart")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body["error"]["message"].clone()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!("Catalog unavailable")
            )
        );
        let valid = r#"{"name":"GameStart","quantity":1,"type":"buy"}"#;
        let (status, body) = send(Request::post("/orders").body(Body::from(valid)).unwrap()).await;
        assert_eq!(
            (status, body["error"]["message"].clone()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!("No order leader available")
            )
        );
        let (status, _) = send(Request::get("/orders/12x").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = send(Request::put("/health").body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }

    /// With limits on, a user's requests count against the user (whatever their address), a
    /// bad key is refused before any limit, and every user has a bucket of their own.
    #[tokio::test]
    async fn a_user_is_limited_by_their_key() {
        use stocknet_common::api_key::{ApiKey, Credential};
        let cli = Cli::parse_from([
            "frontend",
            "--catalog-url",
            "http://127.0.0.1:9",
            "--order-replicas",
            "1=http://127.0.0.1:9",
            "--rate-limit",
            "1",
            "--rate-burst",
            "2",
        ]);
        let state = AppState::new(&cli.config, Secret::new("router-test-secret").unwrap());
        let keys: Vec<ApiKey> = (1..=2)
            .map(|user| ApiKey::generate(user).unwrap())
            .collect();
        for key in &keys {
            // As if this frontend had fetched their credentials from the catalog.
            let credential = Credential::of(key).unwrap();
            state.inner.credentials.keep(key.user(), credential);
        }
        let app = router(state);
        let get = |auth: Option<String>| {
            let mut request = Request::get("/openapi.json");
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            app.clone().oneshot(request.body(Body::empty()).unwrap())
        };
        let bearer = |key: &ApiKey| Some(format!("Bearer {}", key.reveal()));
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(get(bearer(&keys[0])).await.unwrap().status());
        }
        assert_eq!(
            statuses,
            [
                StatusCode::OK,
                StatusCode::OK,
                StatusCode::TOO_MANY_REQUESTS
            ]
        );
        assert_eq!(
            get(bearer(&keys[1])).await.unwrap().status(),
            StatusCode::OK
        );
        let forged = Some(format!("Bearer snk_2_{}", "0".repeat(64)));
        assert_eq!(
            get(forged).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
        // No key and no address (in-process): nothing to count against.
        assert_eq!(get(None).await.unwrap().status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn users_and_keys_are_checked_before_any_backend_is_asked() {
        let get = |uri: &str, auth: Option<&str>| {
            let mut request = Request::get(uri);
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            request.body(Body::empty()).unwrap()
        };
        for body in [r#"{"name":"alice"}"#, "[1]", "{"] {
            let request = Request::post("/users").body(Body::from(body)).unwrap();
            let (status, reply) = send(request).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reply}");
        }
        // A valid request needs the catalog, which keeps users.
        for body in ["", "{}", " "] {
            let request = Request::post("/users").body(Body::from(body)).unwrap();
            assert_eq!(
                send(request).await.0,
                StatusCode::SERVICE_UNAVAILABLE,
                "{body:?}"
            );
        }
        let (status, _) = send(get("/users/x/portfolio", None)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        // The audit trail: a key (or the deployment's secret) first, known parameters only.
        assert_eq!(send(get("/audit", None)).await.0, StatusCode::UNAUTHORIZED);
        let (status, _) = send(get("/audit?colour=red", Some("Bearer router-test-secret"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = send(get("/audit", Some("Bearer router-test-secret"))).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "the secret admits; no leader"
        );
        assert_eq!(
            send(get("/reports/daily?date=2026-11-29", None)).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let response = app()
            .oneshot(get("/users/1/portfolio", None))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let well_formed = format!("Bearer snk_1_{}", "ab".repeat(32));
        for (auth, expected) in [
            ("Bearer junk", StatusCode::UNAUTHORIZED),
            ("Basic c25rOg==", StatusCode::UNAUTHORIZED),
            ("Bearer router-test-secret", StatusCode::UNAUTHORIZED),
            // Verifying it needs the user's credential from the catalog.
            (well_formed.as_str(), StatusCode::SERVICE_UNAVAILABLE),
        ] {
            let (status, body) = send(get("/users/1/portfolio", Some(auth))).await;
            assert_eq!(status, expected, "{auth}: {body}");
            let order = Request::post("/orders")
                .header("authorization", auth)
                .body(Body::from(
                    r#"{"name":"GameStart","quantity":1,"type":"buy"}"#,
                ))
                .unwrap();
            assert_eq!(send(order).await.0, expected, "{auth}");
        }
    }

    /// Every operation of the OpenAPI document is served by the router, and the public API
    /// that docs/API.md lists is exactly what the document describes (the router's public
    /// routes are registered together with their description, in `public_api`).
    #[tokio::test]
    async fn the_openapi_document_describes_every_public_route() {
        let document = serde_json::to_value(openapi_document()).unwrap();
        assert_eq!(document["openapi"], "3.1.0");
        let mut documented = std::collections::BTreeSet::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                let method = method.to_uppercase();
                documented.insert(format!("{method} {path}"));
                let uri = path.replace("{name}", "GameStart").replace("{number}", "1");
                let request = Request::builder()
                    .method(method.as_str())
                    .uri(&uri)
                    .body(Body::from("{}"))
                    .unwrap();
                let response = app().oneshot(request).await.unwrap();
                let status = response.status();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                let fallback = status == StatusCode::METHOD_NOT_ALLOWED
                    || (status == StatusCode::NOT_FOUND
                        && String::from_utf8_lossy(&body).contains("No such route"));
                assert!(!fallback, "{method} {uri} is documented but not routed");
            }
        }
        let api = include_str!("../../../docs/API.md");
        let public = api.split("## Internal").next().unwrap();
        let listed: std::collections::BTreeSet<String> = public
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|row| row.split('`').next())
            .map(|call| call.split('?').next().unwrap().to_owned())
            .collect();
        assert_eq!(listed, documented, "docs/API.md and /openapi.json differ");
        // The internal push is served but not part of the public description.
        assert!(!documented.iter().any(|op| op.contains("/invalidate")));
    }

    #[tokio::test]
    async fn the_document_and_its_page_are_served() {
        let response = app()
            .oneshot(Request::get("/openapi.json").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let served: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(served, serde_json::to_value(openapi_document()).unwrap());
        let response = app()
            .oneshot(Request::get("/docs").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("openapi.json"));
    }

    /// Paths that are not a stock name never reach the catalog (which is not running here, so
    /// reaching it would be a 503) and never count against its breaker.
    #[tokio::test]
    async fn hostile_lookup_paths_are_404_and_leave_the_breaker_closed() {
        let cli = Cli::parse_from([
            "frontend",
            "--catalog-url",
            "http://127.0.0.1:9",
            "--order-replicas",
            "1=http://127.0.0.1:9",
        ]);
        let state = AppState::new(&cli.config, Secret::new("router-test-secret").unwrap());
        let app = router(state.clone());
        for _ in 0..upstream::breaker::FAILURES + 2 {
            for path in [
                "/stocks/..",
                "/stocks/.",
                "/stocks/%2e%2e",
                "/stocks/%2E",
                "/stocks/a%2Fb",
                "/stocks/%2F",
                "/book/..",
                "/book/%2e%2e?depth=1",
            ] {
                let request = Request::get(path).body(Body::empty()).unwrap();
                let response = app.clone().oneshot(request).await.unwrap();
                let status = response.status();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                let body: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(
                    (status, body["error"]["message"].clone()),
                    (StatusCode::NOT_FOUND, serde_json::json!("Stock not found")),
                    "{path}"
                );
            }
        }
        let breaker = state.inner.catalog_breaker.view(std::time::Instant::now());
        assert_eq!((breaker.state, breaker.consecutive_failures), ("closed", 0));
        // A real name does go to the (absent) catalog, and that failure counts.
        let request = Request::get("/stocks/GameStart")
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let breaker = state.inner.catalog_breaker.view(std::time::Instant::now());
        assert_eq!(breaker.consecutive_failures, 1);
    }

    #[tokio::test]
    async fn an_unknown_outcome_is_504_with_the_key_in_the_body_and_a_header() {
        let response = FrontendError::OutcomeUnknown {
            key: "auto-1f-7".into(),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(response.headers()[IDEMPOTENCY_KEY], "auto-1f-7");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], 504);
        assert_eq!(body["error"]["idempotency_key"], "auto-1f-7");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("Outcome unknown"), "{message}");
    }

    #[tokio::test]
    async fn an_oversized_order_body_is_refused_with_413() {
        let huge = format!(
            r#"{{"name":"{}","quantity":1,"type":"buy"}}"#,
            "x".repeat(stocknet_common::server::BODY_LIMIT)
        );
        let (status, body) = send(Request::post("/orders").body(Body::from(huge)).unwrap()).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (StatusCode::PAYLOAD_TOO_LARGE, serde_json::json!(413)),
            "{body}"
        );
    }
}
