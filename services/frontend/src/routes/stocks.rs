//! Stock lookups (through the cache) and the catalog's listing.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::future::Either;
use stocknet_common::catalog_file::is_stock_name;
use stocknet_common::envelope::{encoded, DataEnvelope, ErrorEnvelope};
use stocknet_common::paths;
use stocknet_common::wire::{is_catching_up, StockPage};
use stocknet_common::{data, Path, RemoteError, Stock};
use tower::Service;

use super::answers::{BadQuery, StockLookup};
use crate::cache::{CachedStock, Epoch};
use crate::limits::{self, BeforeKey};
use crate::upstream::catalog::{self, call_catalog, CatalogCall};
use crate::upstream::is_for_client;
use crate::{Answer, AppState, FrontendError};

/// A stock: its price (the last trade on its book) and the house quantity market orders use.
/// While the catalog is unreachable, the last value this frontend saw, with `"stale": true`
/// beside `data` and a `Warning: 110` header.
#[utoipa::path(get, path = "/stocks/{name}", operation_id = "get_stock", tag = "stocks",
    params(("name" = String, Path, description = "Stock name")),
    responses(
        (status = 200, body = DataEnvelope<Stock>),
        (status = 400, description = "A name that is not UTF-8 text", body = ErrorEnvelope),
        StockLookup,
    ))]
pub(crate) async fn lookup(State(state): State<AppState>, Path(name): Path<String>) -> Answer {
    match stock(&state, &name).await? {
        Looked::Cached(cached) => Ok(encoded(cached.answer.clone())),
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
    /// In the cache, with its answer encoded.
    Cached(Arc<CachedStock>),
    /// Read from the catalog.
    Fresh(Stock),
    /// The catalog is unreachable: the last value this frontend saw.
    Stale(Stock),
}

/// Stocks whose names contain `search` (any case), in name order, a page at a time.
#[utoipa::path(get, path = "/stocks", operation_id = "list_stocks", tag = "stocks",
    params(
        ("search" = Option<String>, Query, description = "Part of the name, any case"),
        ("limit" = Option<usize>, Query, description = "Page size, 1–1000 (default 100)", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "The previous page's next_cursor", pattern = "^([0-9a-fA-F]{2})*$"),
    ),
    responses(
        (status = 200, body = DataEnvelope<StockPage>),
        BadQuery,
        (status = 503, description = "Catalog unavailable", body = ErrorEnvelope),
    ))]
pub(crate) async fn list_stocks(State(state): State<AppState>, uri: Uri) -> Answer {
    let inner = &state.inner;
    let mut url = paths::STOCKS
        .url(&inner.catalog_url, &[])
        .map_err(FrontendError::CatalogUnavailable)?;
    url.set_query(uri.query());
    let request = inner.http.get(url).timeout(catalog::READ_TIMEOUT);
    match call_catalog::<StockPage>(&state, request).await {
        Ok(page) => Ok(data(page)),
        Err(CatalogCall::Answered(RemoteError::Api(error))) if is_for_client(&error) => {
            Err(FrontendError::Upstream(error))
        }
        Err(failure) => Err(failure.into()),
    }
}

/// A stock from the cache, or from the catalog (then cached); while the catalog cannot be
/// reached, the last value this frontend saw, if it saw one, marked stale: a cached value too,
/// since the catalog cannot push invalidations while it is down.
pub(crate) async fn stock(state: &AppState, name: &str) -> Result<Looked, FrontendError> {
    if !is_stock_name(name) {
        return Err(FrontendError::StockNotFound);
    }
    let inner = &state.inner;
    // Looked at once: a breaker that closed between two looks would let a value the lease no
    // longer vouches for be served as current.
    let reachable = inner.catalog_breaker.admit().is_ok();
    // (What `CachedLookupsFirst` checks before it answers from the cache: keep them alike.)
    if !inner.catalog_contact.recent() && reachable {
        // Pushes may have been missed (this frontend was paused, or cut off): nothing cached
        // can be trusted until the catalog is heard from again.
        inner.cache.clear();
    }
    match inner.cache.get(name) {
        Ok(cached) if !reachable => Ok(Looked::Stale(cached.stock.clone())),
        Ok(cached) => Ok(Looked::Cached(cached)),
        // Boxed: a hit's future, which axum boxes too, then holds none of the catalog call's
        // state (1.5 KB, an allocation past the allocator's small sizes for every lookup).
        Err(epoch) => Box::pin(read_through(state, name, epoch)).await,
    }
}

/// A stock missing from the cache, read from the catalog and cached, or the last value seen
/// while the catalog cannot be reached.
async fn read_through(state: &AppState, name: &str, epoch: Epoch) -> Result<Looked, FrontendError> {
    let inner = &state.inner;
    let url = paths::STOCK
        .url(&inner.catalog_url, &[name])
        .map_err(FrontendError::CatalogUnavailable)?;
    let request = inner.http.get(url).timeout(catalog::READ_TIMEOUT);
    match call_catalog::<Stock>(state, request).await {
        Ok(stock) => {
            // A push that arrived while this was read holds a newer value: keep that one as
            // the last seen.
            inner.cache.fill(stock.clone(), epoch);
            inner.remember_read(stock.clone(), epoch);
            Ok(Looked::Fresh(stock))
        }
        Err(CatalogCall::Answered(e)) if e.status() == Some(StatusCode::NOT_FOUND) => {
            Err(FrontendError::StockNotFound)
        }
        Err(failure) if serves_last_known(&failure) => match inner.last_known(name) {
            Some(stock) => Ok(Looked::Stale(stock)),
            None => Err(failure.into()),
        },
        Err(failure) => Err(failure.into()),
    }
}

/// Whether a lookup whose catalog call failed so is answered with the last value seen: the
/// catalog out of reach (the breaker refused the call, or it failed), or catching up after a
/// power loss.
fn serves_last_known(failure: &CatalogCall) -> bool {
    match failure {
        CatalogCall::Refused(_) | CatalogCall::Failed(_) => true,
        CatalogCall::Answered(RemoteError::Api(error)) => is_catching_up(error),
        CatalogCall::Answered(_) => false,
    }
}

/// The pattern of the lookup route, under which a lookup answered before routing is counted.
const LOOKUP_ROUTE: &str = "/stocks/{name}";

/// Answers cached stock lookups before routing and sends every other request to `routes`.
/// Cached lookups are most of what a frontend serves; answered here, each skips the router's
/// matching, the path's extraction, the route's boxed service and the handler's boxed future
/// (docs/BENCHMARKS.md, "Cached lookups before routing"). It answers only what the route
/// would answer the same way (a current value in the cache: the same checks as [`stock`]; the
/// rate limits of a request without a key: the same function as the routes' limits), with
/// the same body and headers, counted in the request histogram under the route's pattern; a
/// miss, a value that is not current, a name the router would decode (`%`) and, with rate
/// limits on, a request with an API key (the limits verify it) go to the route.
#[derive(Clone)]
pub(crate) struct CachedLookupsFirst<S> {
    state: AppState,
    routes: S,
}

impl<S> CachedLookupsFirst<S> {
    pub(crate) fn new(state: AppState, routes: S) -> Self {
        Self { state, routes }
    }

    /// The answer from the cache (or the rate limits' 429), recorded, if `request` is a lookup
    /// the cache can answer as current.
    fn answer_from_cache(&self, request: &Request) -> Option<Response> {
        if request.method() != Method::GET {
            return None;
        }
        let name = request.uri().path().strip_prefix("/stocks/")?;
        if name.contains('%') || !is_stock_name(name) {
            return None;
        }
        let started = Instant::now();
        let inner = &self.state.inner;
        if inner.catalog_breaker.admit().is_err() || !inner.catalog_contact.recent() {
            return None;
        }
        let cached = inner.cache.find(name)?;
        let hit = || {
            inner.cache.count_hit();
            encoded(cached.answer.clone())
        };
        let (answer, in_flight) = match limits::before_key(&self.state, request) {
            BeforeKey::Keyed(_) => return None,
            BeforeKey::Refused(refused) => (refused, None),
            BeforeKey::Admitted(in_flight) => (hit(), Some(in_flight)),
            BeforeKey::Unlimited => (hit(), None),
        };
        let status = answer.status().as_u16();
        let http = &inner.metrics.http;
        http.record(request.method(), LOOKUP_ROUTE, status, started);
        // In flight until its answer is made, as the routes' limits count it.
        drop(in_flight);
        Some(answer)
    }
}

impl<S> Service<Request> for CachedLookupsFirst<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.routes.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.answer_from_cache(&request) {
            Some(answer) => Either::Left(ready(Ok(answer))),
            None => Either::Right(self.routes.call(request)),
        }
    }
}
