//! Catalog service: stock lookups, ordered application of committed trades, and server-push
//! cache invalidation to every frontend before a change is acknowledged.

pub mod error;
pub mod metrics;
pub mod store;
pub mod users;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{middleware, Router};
use futures::future::join_all;
use stocknet_common::auth::require_secret;
use stocknet_common::env;
use stocknet_common::envelope::bounded;
use stocknet_common::file::FileFailure;
use stocknet_common::listeners;
use stocknet_common::paths;
use stocknet_common::ports;
use stocknet_common::wire::{
    stock_after, stock_cursor, ApplyRequest, Invalidation, NewKey, NewUser, StockPage,
};
use stocknet_common::{
    data, internal_client, server, ApiError, Json, Path, Query, Secret, SecretArgs,
};

pub use error::CatalogError;
pub use store::CatalogStore;
pub use users::UserStore;

/// The catalog shipped with StockNet, used when no initial catalog file is given.
pub const DEFAULT_CATALOG: &str = include_str!("../../../data/catalog.csv");

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = env::HOST, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = env::CATALOG_PORT, default_value_t = ports::CATALOG)]
    pub port: u16,
    /// Directory holding catalog.csv.
    #[arg(long, env = env::DATA_DIR, default_value = "./stocknet-data")]
    pub data_dir: PathBuf,
    /// CSV (name,price,quantity) to seed catalog.csv from on first start; default: the
    /// built-in catalog of 12 stocks.
    #[arg(long, env = env::INITIAL_CATALOG)]
    pub initial_catalog: Option<PathBuf>,
    /// Frontend base URLs to push cache invalidations to, comma-separated; none when empty.
    #[arg(long, env = env::FRONTEND_URLS, value_delimiter = ',')]
    pub frontends: Vec<String>,
    /// HOST:PORT whose DNS name resolves to every frontend (a headless Service in
    /// Kubernetes); resolved at each invalidation, so frontends that come and go are reached.
    #[arg(long, env = env::FRONTEND_DNS)]
    pub frontend_dns: Option<String>,
    #[command(flatten)]
    pub secret: SecretArgs,
    #[command(flatten)]
    pub metrics: stocknet_common::metrics::MetricsArgs,
}

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<CatalogStore>,
    pub users: Arc<UserStore>,
    pub frontends: Arc<Vec<String>>,
    pub frontend_dns: Option<Arc<str>>,
    /// Carried by the invalidation push, and required of callers of the internal routes.
    pub secret: Secret,
    pub http: reqwest::Client,
    pub metrics: Arc<metrics::CatalogMetrics>,
}

impl AppState {
    pub fn new(
        store: CatalogStore,
        users: UserStore,
        frontends: Vec<String>,
        secret: Secret,
    ) -> Self {
        Self {
            store: Arc::new(store),
            users: Arc::new(users),
            frontends: Arc::new(
                frontends
                    .into_iter()
                    .filter(|url| !url.is_empty())
                    .collect(),
            ),
            frontend_dns: None,
            http: internal_client(Duration::from_secs(2), &secret),
            secret,
            metrics: Arc::default(),
        }
    }

    /// Opens the store named by `config`, seeding it on first start.
    pub fn from_config(config: &Config) -> Result<Self, CatalogError> {
        let initial = match &config.initial_catalog {
            Some(path) => std::fs::read_to_string(path).map_err(|e| CatalogError::io(path, e))?,
            None => DEFAULT_CATALOG.to_owned(),
        };
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| CatalogError::io(&config.data_dir, e))?;
        let store = CatalogStore::open(config.data_dir.join("catalog.csv"), &initial)?;
        let users = UserStore::open(config.data_dir.join("users.csv"))?;
        let secret = config.secret.load()?;
        Ok(Self {
            frontend_dns: config.frontend_dns.as_deref().map(Arc::from),
            ..Self::new(store, users, config.frontends.clone(), secret)
        })
    }

    /// Tells every frontend to drop `names` from its cache, and waits for the answers so
    /// that an acknowledged trade is never followed by a stale cached read.
    async fn invalidate(&self, names: Vec<String>) {
        if names.is_empty() {
            return;
        }
        let stocks = names
            .iter()
            .filter_map(|name| self.store.get(name))
            .collect();
        self.push(Invalidation {
            names,
            stocks,
            ..Invalidation::default()
        })
        .await;
    }

    /// Sends `body` to every frontend, and waits for the answers (each within
    /// [`INVALIDATION_TIMEOUT`]).
    async fn push(&self, body: Invalidation) {
        let mut frontends: Vec<String> = self.frontends.to_vec();
        if let Some(dns) = &self.frontend_dns {
            match tokio::net::lookup_host(&**dns).await {
                Ok(addrs) => frontends.extend(addrs.map(|addr| format!("http://{addr}"))),
                // No frontend pod exists yet (nothing cached), or DNS is failing: then a frontend
                // may serve a stale quantity until its next invalidation (docs/OPERATIONS.md).
                Err(e) => tracing::warn!("resolving frontends at {dns}: {e}"),
            }
        }
        let calls = frontends.iter().map(|frontend| {
            let body = &body;
            async move {
                let result = match paths::INVALIDATE.url(frontend, &[]) {
                    Ok(url) => {
                        let push = self.http.post(url).timeout(INVALIDATION_TIMEOUT);
                        push.json(body).send().await.map(|_| ())
                    }
                    Err(e) => {
                        tracing::warn!("invalidate at {frontend}: {e}");
                        return;
                    }
                };
                // A frontend that is down has no cache to keep fresh; it starts empty.
                if let Err(e) = result {
                    tracing::debug!("invalidate at {frontend}: {e}");
                }
            }
        });
        join_all(calls).await;
    }
}

/// How long an invalidation push waits for a frontend: below the leader's deadline for the
/// catalog's answer (1.5 s), so that a hung frontend slows trades without failing them.
const INVALIDATION_TIMEOUT: Duration = Duration::from_secs(1);

pub fn router(state: AppState) -> Router {
    let internal = Router::new()
        .route(paths::SNAPSHOT.pattern(), get(snapshot))
        .route(paths::APPLY.pattern(), post(apply))
        .route(paths::USERS.pattern(), post(create_user))
        .route(paths::USER.pattern(), get(user))
        .route(paths::USER_KEYS.pattern(), post(add_key))
        .route(paths::USER_KEY.pattern(), delete(revoke_key))
        .route_layer(middleware::from_fn_with_state(
            state.secret.clone(),
            require_secret,
        ));
    let http = state.metrics.http.clone();
    let routes = Router::new()
        .route(paths::HEALTH.pattern(), get(health))
        .route(paths::METRICS.pattern(), get(metrics))
        .route(paths::STOCKS.pattern(), get(list))
        .route(paths::STOCK.pattern(), get(lookup))
        .merge(internal)
        .with_state(state);
    stocknet_common::metrics::tracked(server::with_common_layers(routes), &http)
}

impl AppState {
    /// Sets the gauges read at scrape time.
    fn refresh_metrics(&self) {
        let snapshot = self.store.snapshot();
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.metrics.applied.set(gauge(snapshot.applied));
        self.metrics.term.set(gauge(snapshot.term));
        self.metrics.users.set(gauge(self.users.count() as u64));
    }
}

/// `GET /metrics`: Prometheus metrics, open like `/health`.
async fn metrics(State(state): State<AppState>) -> Response {
    state.refresh_metrics();
    stocknet_common::metrics::exposition(&state.metrics.registry)
}

/// Binds the configured address and serves in the background until `shutdown` resolves.
pub async fn start(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<server::Running, server::BoxError> {
    let state = AppState::from_config(&config)?;
    let (listener, addr) =
        listeners::listen(listeners::PUBLIC, SocketAddr::new(config.host, config.port)).await?;
    tracing::info!(%addr, frontends = ?config.frontends, "catalog listening");
    // A crash may have come between writing a trade and invalidating it: frontends that
    // outlived this process drop everything they cached from it.
    let names: Vec<String> = state
        .store
        .snapshot()
        .stocks
        .into_iter()
        .map(|s| s.name)
        .collect();
    // So do their users' credentials: a key revoked just before the crash may not have been
    // pushed.
    let stocks = names.iter().filter_map(|n| state.store.get(n)).collect();
    let boot = state.clone();
    tokio::spawn(async move {
        let everything = Invalidation {
            names,
            stocks,
            users: Vec::new(),
            all_users: true,
        };
        boot.push(everything).await
    });
    let scraped = state.clone();
    let scrape =
        stocknet_common::metrics::metrics_router(state.metrics.registry.clone(), move || {
            scraped.refresh_metrics()
        });
    stocknet_common::metrics::spawn_metrics_port(config.host, config.metrics.metrics_port, scrape)
        .await?;
    Ok(server::Running::spawn(addr, async move {
        server::serve(listener, router(state), shutdown).await?;
        Ok(())
    }))
}

async fn health(State(state): State<AppState>) -> Response {
    let snapshot = state.store.snapshot();
    data(serde_json::json!({
        "service": "catalog",
        "applied": snapshot.applied,
        "term": snapshot.term,
    }))
}

async fn lookup(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, CatalogError> {
    state
        .store
        .get(&name)
        .map(data)
        .ok_or(CatalogError::StockNotFound(name))
}

/// Most stocks one page of `GET /stocks` holds.
pub const MAX_PAGE: usize = 1_000;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    search: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /stocks?search=&limit=&cursor=`: stocks whose names contain `search`, any case, in
/// name order, a page at a time.
async fn list(
    State(state): State<AppState>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = bounded("limit", query.limit, 100, MAX_PAGE)?;
    let after = match query.cursor.as_deref() {
        None => None,
        Some(cursor) => Some(
            stock_after(cursor)
                .ok_or_else(|| ApiError::bad_request("cursor is not one this API gave out"))?,
        ),
    };
    let search = query.search.unwrap_or_default();
    let (stocks, more) = state.store.list(&search, after.as_deref(), limit);
    let next_cursor = more
        .then(|| stocks.last().map(|s| stock_cursor(&s.name)))
        .flatten();
    Ok(data(StockPage {
        stocks,
        next_cursor,
    }))
}

/// `POST /users` (from a frontend): registers a user by the credential of their first key.
async fn create_user(
    State(state): State<AppState>,
    Json(request): Json<NewUser>,
) -> Result<Response, CatalogError> {
    let created = stocknet_common::clock::now_millis();
    let NewUser {
        credential,
        prefix,
        display_name,
    } = request;
    let record = change_users(&state, move |users| {
        users.create(credential, prefix, display_name, created)
    })
    .await?;
    tracing::info!(user = record.id, "user created");
    Ok(data(record))
}

/// Runs `change` on the user store on the blocking pool: it writes and fsyncs the users' file.
async fn change_users<T: Send + 'static>(
    state: &AppState,
    change: impl FnOnce(&UserStore) -> Result<T, CatalogError> + Send + 'static,
) -> Result<T, CatalogError> {
    let users = state.users.clone();
    tokio::task::spawn_blocking(move || change(&users))
        .await
        .map_err(|e| CatalogError::Task(e.to_string()))?
}

/// Tells every frontend reachable that `user`'s keys changed: they fetch them again.
async fn forget_credentials(state: &AppState, user: u64) {
    state
        .push(Invalidation {
            users: vec![user],
            ..Invalidation::default()
        })
        .await;
}

/// `GET /users/{id}`: a user and their keys' credentials, for a frontend verifying a key.
async fn user(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, CatalogError> {
    user_id(&id)
        .and_then(|id| state.users.get(id))
        .map(data)
        .ok_or(CatalogError::UserNotFound)
}

fn user_id(text: &str) -> Option<u64> {
    text.parse().ok()
}

/// `POST /users/{id}/keys` (from a frontend): another key for the user, answered once every
/// frontend reachable was told to fetch the user's keys again.
async fn add_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(request): Json<NewKey>,
) -> Result<Response, CatalogError> {
    let user = user_id(&id).ok_or(CatalogError::UserNotFound)?;
    let created = stocknet_common::clock::now_millis();
    let key = change_users(&state, move |users| {
        users.add_key(user, request.credential, request.prefix, created)
    })
    .await?;
    tracing::info!(user, key = key.id, "key added");
    forget_credentials(&state, user).await;
    Ok(data(key))
}

/// `DELETE /users/{id}/keys/{key}` (from a frontend, or `stocknet admin`): revokes the key,
/// and answers once every frontend reachable was told to forget the user's credentials.
async fn revoke_key(
    State(state): State<AppState>,
    Path((id, key)): Path<(String, String)>,
) -> Result<Response, CatalogError> {
    let user = user_id(&id).ok_or(CatalogError::UserNotFound)?;
    let key: u32 = key.parse().map_err(|_| CatalogError::KeyNotFound)?;
    let time = stocknet_common::clock::now_millis();
    let revoked = change_users(&state, move |users| users.revoke(user, key, time)).await?;
    tracing::info!(user, key, "key revoked");
    forget_credentials(&state, user).await;
    Ok(data(revoked))
}

async fn snapshot(State(state): State<AppState>) -> Response {
    data(state.store.snapshot())
}

async fn apply(
    State(state): State<AppState>,
    Json(request): Json<ApplyRequest>,
) -> Result<Response, CatalogError> {
    // Every stock the request names, not only those changed now: when the catalog crashed
    // between writing a trade and invalidating, the leader's resend must still invalidate.
    let mut names: Vec<String> = request.trades.iter().map(|t| t.name.clone()).collect();
    names.sort();
    names.dedup();
    let outcome = state.store.apply(&request)?;
    // The leader batches entries of many requests: each line names its entry's request.
    for trade in request.trades.iter().filter(|t| t.request_id.is_some()) {
        let id = trade.request_id.as_deref().unwrap_or_default();
        tracing::debug!(request_id = %id, entry = trade.number, stock = trade.name, delta = trade.delta, "applied a committed entry");
    }
    let metrics = &state.metrics;
    metrics.apply_trades.observe(request.trades.len() as f64);
    // The frontends refetch from memory, which holds only committed trades; so they may be told
    // while the disk works, and the answer waits for both.
    let store = state.store.clone();
    let fsync_seconds = metrics.fsync_seconds.clone();
    let sync = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        store.sync();
        fsync_seconds.observe(started.elapsed().as_secs_f64());
    });
    let invalidate = async {
        let started = std::time::Instant::now();
        state.invalidate(names).await;
        metrics
            .invalidation_seconds
            .observe(started.elapsed().as_secs_f64());
    };
    let (synced, ()) = tokio::join!(sync, invalidate);
    synced.map_err(|e| CatalogError::Task(e.to_string()))?;
    Ok(data(outcome))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use serde_json::{json, Value};
    use stocknet_common::testing::send;
    use stocknet_common::wire::UserRecord;

    fn app(dir: &std::path::Path) -> Router {
        let store = CatalogStore::open(dir.join("catalog.csv"), DEFAULT_CATALOG).unwrap();
        let users = UserStore::open(dir.join("users.csv")).unwrap();
        router(AppState::new(store, users, vec![], secret()))
    }

    const SECRET: &str = "catalog-test-secret";

    fn secret() -> Secret {
        Secret::new(SECRET).unwrap()
    }

    /// A `GET` without credentials.
    fn get(uri: &str) -> Request<Body> {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    /// A call from the order leader: it carries the secret.
    fn post_json(uri: &str, body: &str) -> Request<Body> {
        Request::post(uri)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {SECRET}"))
            .body(Body::from(body.to_owned()))
            .unwrap()
    }

    fn get_internal(uri: &str) -> Request<Body> {
        Request::get(uri)
            .header("authorization", format!("Bearer {SECRET}"))
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn users_are_registered_and_read_back_only_with_the_secret() {
        use stocknet_common::api_key::{ApiKey, Credential};
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        let key = ApiKey::generate(1).unwrap();
        let credential = Credential::of(&key).unwrap();
        let body = json!({ "credential": credential, "prefix": key.prefix() }).to_string();
        let anonymous = Request::post("/users")
            .header("content-type", "application/json")
            .body(Body::from(body.clone()))
            .unwrap();
        assert_eq!(send(&app, anonymous).await.0, StatusCode::UNAUTHORIZED);
        let unauthenticated_read = get("/users/1");
        assert_eq!(
            send(&app, unauthenticated_read).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            send(&app, get_internal("/users/1")).await.0,
            StatusCode::NOT_FOUND,
            "the refused call registered nobody"
        );

        let (status, created) = send(&app, post_json("/users", &body)).await;
        assert_eq!(status, StatusCode::OK, "{created}");
        assert_eq!(created["data"]["id"], 1);
        let (_, second) = send(&app, post_json("/users", &body)).await;
        assert_eq!(second["data"]["id"], 2);
        let (status, read) = send(&app, get_internal("/users/1")).await;
        assert_eq!(status, StatusCode::OK);
        let stored: UserRecord = serde_json::from_value(read["data"].clone()).unwrap();
        assert!(stored.admits(&key.clone().with_user(1)));

        let named = json!({"credential": credential, "prefix": "00", "display_name": "Ada"});
        let (_, third) = send(&app, post_json("/users", &named.to_string())).await;
        assert_eq!(third["data"]["display_name"], "Ada");
        for bad in [
            r#"{"credential":"00:11"}"#,
            r#"{"credential":"x","admin":true}"#,
            "{}",
            &json!({"credential": credential, "prefix": "00", "display_name": "A\nda"}).to_string(),
        ] {
            let (status, body) = send(&app, post_json("/users", bad)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        }
        for (uri, status) in [
            ("/users/9", StatusCode::NOT_FOUND),
            ("/users/x", StatusCode::NOT_FOUND),
        ] {
            assert_eq!(send(&app, get_internal(uri)).await.0, status, "{uri}");
        }
    }

    /// The attack of issue 12: without the secret, neither a bogus term nor arbitrary trades
    /// get in, and the catalog is as it was.
    #[tokio::test]
    async fn apply_and_snapshot_need_the_secret_and_nothing_changes_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        for body in [
            r#"{"term":999999,"trades":[]}"#,
            r#"{"term":1,"trades":[{"number":1,"name":"GameStart","delta":100000}]}"#,
        ] {
            let request = Request::post("/apply")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            let (status, reply) = send(&app, request).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{reply}");
            assert_eq!(reply["error"]["code"], 401);
        }
        let (status, _) = send(&app, get("/snapshot")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (_, health) = send(&app, get("/health")).await;
        assert_eq!(
            (
                health["data"]["term"].clone(),
                health["data"]["applied"].clone()
            ),
            (json!(0), json!(0))
        );
        let (_, stock) = send(&app, get("/stocks/GameStart")).await;
        assert_eq!(stock["data"]["quantity"], 100);
        // The leader's next apply, with the secret, is accepted at its real term.
        let body = r#"{"term":1,"trades":[{"number":1,"name":"GameStart","delta":-1}]}"#;
        assert_eq!(
            send(&app, post_json("/apply", body)).await.0,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn stocks_are_listed_searched_and_paged_with_opaque_cursors() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        let (status, body) = send(&app, get("/stocks?limit=5")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let first: Vec<&str> = body["data"]["stocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(first.len(), 5);
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(first, sorted, "name order");
        let cursor = body["data"]["next_cursor"].as_str().unwrap().to_owned();
        let (_, next) = send(&app, get(&format!("/stocks?limit=100&cursor={cursor}"))).await;
        let rest = next["data"]["stocks"].as_array().unwrap();
        assert_eq!(first.len() + rest.len(), 12, "every stock once");
        assert!(next["data"].get("next_cursor").is_none());
        let (_, found) = send(&app, get("/stocks?search=GAME")).await;
        assert_eq!(found["data"]["stocks"][0]["name"], "GameStart");
        for bad in [
            "/stocks?limit=0",
            "/stocks?limit=1001",
            "/stocks?cursor=zz",
            "/stocks?sort=name",
        ] {
            let (status, body) = send(&app, get(bad)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        }
    }

    #[tokio::test]
    async fn lookup_hit_and_miss() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        let (status, body) = send(&app, get("/stocks/GameStart")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"data": {"name": "GameStart", "price": 15.99, "quantity": 100}})
        );
        let (status, body) = send(
            &app,
            Request::get("/stocks/Nope")
                .header("x-request-id", "lookup-7")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            body,
            json!({"error": {"code": 404, "message": "Stock not found", "request_id": "lookup-7"}})
        );
    }

    #[tokio::test]
    async fn apply_changes_quantity_and_refuses_overdraw() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        let body = r#"{"term":1,"trades":[{"number":1,"name":"GameStart","delta":-40}]}"#;
        let (status, reply) = send(&app, post_json("/apply", body)).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        assert_eq!(reply["data"]["applied"], 1);
        let overdraw = r#"{"term":1,"trades":[{"number":2,"name":"GameStart","delta":-61}]}"#;
        let (status, reply) = send(&app, post_json("/apply", overdraw)).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(reply["error"]["message"], "Insufficient stock quantity");
        let (_, body) = send(&app, get("/stocks/GameStart")).await;
        assert_eq!(body["data"]["quantity"], 60);
    }

    #[tokio::test]
    async fn a_catalog_on_port_0_tells_its_address_and_stops_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            host: "127.0.0.1".parse().unwrap(),
            port: 0,
            data_dir: dir.path().to_path_buf(),
            initial_catalog: None,
            frontends: Vec::new(),
            frontend_dns: None,
            secret: SecretArgs {
                secret_file: None,
                secret: Some(SECRET.into()),
            },
            metrics: stocknet_common::metrics::MetricsArgs { metrics_port: None },
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = start(config, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        assert_ne!(running.addr.port(), 0);
        let url = format!("http://{}/stocks/GameStart", running.addr);
        let body: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        assert_eq!(body["data"]["name"], "GameStart");
        stop.send(()).unwrap();
        running.stopped().await.unwrap();
        assert!(
            reqwest::get(&url).await.is_err(),
            "still serving after it stopped"
        );
    }

    /// A stand-in frontend on 127.0.0.1 that records the pushes it gets.
    async fn recording_frontend() -> (u16, Arc<std::sync::Mutex<Vec<Invalidation>>>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorder = seen.clone();
        // Only pushes that carry the secret are recorded.
        let app = Router::new().route(
            "/invalidate",
            post(
                move |headers: axum::http::HeaderMap, Json(request): Json<Invalidation>| async move {
                    if secret().admits(&headers) {
                        recorder.lock().unwrap().push(request);
                    }
                    data(json!({"success": true}))
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (port, seen)
    }

    #[tokio::test]
    async fn apply_invalidates_every_named_stock_at_frontends_found_by_dns() {
        let dir = tempfile::tempdir().unwrap();
        let (port, seen) = recording_frontend().await;
        let store = CatalogStore::open(dir.path().join("catalog.csv"), DEFAULT_CATALOG).unwrap();
        let users = UserStore::open(dir.path().join("users.csv")).unwrap();
        let app = router(AppState {
            frontend_dns: Some(Arc::from(format!("localhost:{port}"))),
            ..AppState::new(store, users, vec![String::new()], secret())
        });
        let body = r#"{"term":1,"trades":[{"number":1,"name":"GameStart","delta":-1},
                                        {"number":2,"name":"FishCo","delta":2}]}"#;
        assert_eq!(
            send(&app, post_json("/apply", body)).await.0,
            StatusCode::OK
        );
        // Resent after a crash: nothing changes, but the stocks are invalidated again.
        assert_eq!(
            send(&app, post_json("/apply", body)).await.0,
            StatusCode::OK
        );
        // Each push names the stocks and carries their new quantities.
        let mut pushed: Vec<(String, u64)> = seen
            .lock()
            .unwrap()
            .iter()
            .flat_map(|push| push.stocks.iter().map(|s| (s.name.clone(), s.quantity)))
            .collect();
        pushed.sort();
        let expected = [
            ("FishCo", 102),
            ("FishCo", 102),
            ("GameStart", 99),
            ("GameStart", 99),
        ];
        assert_eq!(
            pushed,
            expected.map(|(name, quantity)| (name.to_owned(), quantity))
        );
    }

    #[tokio::test]
    async fn a_revoked_key_is_pushed_to_every_frontend_before_the_answer() {
        use stocknet_common::api_key::{ApiKey, Credential};
        let dir = tempfile::tempdir().unwrap();
        let (port, seen) = recording_frontend().await;
        let store = CatalogStore::open(dir.path().join("catalog.csv"), DEFAULT_CATALOG).unwrap();
        let users = UserStore::open(dir.path().join("users.csv")).unwrap();
        let app = router(AppState::new(
            store,
            users,
            vec![format!("http://127.0.0.1:{port}")],
            secret(),
        ));
        let new_key = || {
            let key = ApiKey::generate(1).unwrap();
            let body = json!({"credential": Credential::of(&key).unwrap(), "prefix": key.prefix()});
            (key, body.to_string())
        };
        let (first, body) = new_key();
        send(&app, post_json("/users", &body)).await;
        let (second, body) = new_key();
        let (status, added) = send(&app, post_json("/users/1/keys", &body)).await;
        assert_eq!((status, &added["data"]["id"]), (StatusCode::OK, &json!(2)));
        let delete = |uri: &str| {
            Request::delete(uri)
                .header("authorization", format!("Bearer {SECRET}"))
                .body(Body::empty())
                .unwrap()
        };
        let (status, revoked) = send(&app, delete("/users/1/keys/1")).await;
        assert_eq!(status, StatusCode::OK, "{revoked}");
        assert!(revoked["data"]["revoked"].is_u64(), "{revoked}");
        let pushes = seen.lock().unwrap().clone();
        assert_eq!(pushes.len(), 2, "each answer came after its push");
        assert!(pushes.iter().all(|push| push.users == [1]));
        let (_, read) = send(&app, get_internal("/users/1")).await;
        let user: UserRecord = serde_json::from_value(read["data"].clone()).unwrap();
        assert!(!user.admits(&first.with_user(1)));
        assert!(user.admits(&second.clone().with_user(1)));
        for (uri, status) in [
            ("/users/1/keys/3", StatusCode::NOT_FOUND),
            ("/users/1/keys/x", StatusCode::NOT_FOUND),
            ("/users/2/keys/1", StatusCode::NOT_FOUND),
        ] {
            assert_eq!(send(&app, delete(uri)).await.0, status, "{uri}");
        }
        let unauthenticated = Request::delete("/users/1/keys/2")
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            send(&app, unauthenticated).await.0,
            StatusCode::UNAUTHORIZED
        );
        let (_, read) = send(&app, get_internal("/users/1")).await;
        let user: UserRecord = serde_json::from_value(read["data"].clone()).unwrap();
        assert!(user.admits(&second.with_user(1)), "still live");
    }

    #[tokio::test]
    async fn bad_requests_get_envelopes() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        for (request, expected) in [
            (post_json("/apply", "{nope"), StatusCode::BAD_REQUEST),
            (
                post_json("/apply", r#"{"term":"x"}"#),
                StatusCode::BAD_REQUEST,
            ),
            (get("/nothing"), StatusCode::NOT_FOUND),
            (
                Request::delete("/stocks/GameStart")
                    .body(Body::empty())
                    .unwrap(),
                StatusCode::METHOD_NOT_ALLOWED,
            ),
        ] {
            let (status, body) = send(&app, request).await;
            assert_eq!(status, expected, "{body}");
            assert_eq!(body["error"]["code"], expected.as_u16());
        }
    }
}
