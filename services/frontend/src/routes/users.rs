//! Users as the public API sees them: creating one (its API key is shown once), their keys
//! (listed by prefix, another made, one revoked) and a user's portfolio valued at current
//! prices.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Extension;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use stocknet_common::api_key::{ApiKey, Credential};
use stocknet_common::connections::client_address;
use stocknet_common::envelope::{parse_json_object, ClientBody, DataEnvelope, ErrorEnvelope};
use stocknet_common::paths;
use stocknet_common::wire::{check_display_name, Holding, KeyRecord, NewKey, NewUser, UserRecord};
use stocknet_common::{data, Money, Price, RemoteError};
use utoipa::ToSchema;

use super::answers::{CatalogWriteUnknown, NeedsKey, NoCatalog, OwnUserAnswers};
use super::extract::{refuse_a_body, KeyId, NoQuery, OwnUser};
use crate::credentials;
use crate::routes::stocks::{stock, Looked};
use crate::upstream::catalog::{self, call_catalog_for_users, CatalogCall};
use crate::upstream::is_for_client;
use crate::upstream::order_group;
use crate::{Answer, AppState, FrontendError};

/// A new user, with the API key that acts for them. The key is shown here only.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedUser {
    pub user_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Send as `Authorization: Bearer <api_key>`. Only a hash of it is stored: keep it safe,
    /// it cannot be shown again.
    pub api_key: String,
    /// The key's id among the user's keys (to revoke it).
    pub key_id: u32,
    /// Milliseconds since the Unix epoch.
    pub created: u64,
}

/// The body of `POST /users`; it may also be empty.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUserRequest {
    /// A name to show for the user (not unique, not used to sign in).
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub display_name: Option<String>,
}

/// Creates a user and returns their API key, once. The body may be empty, `{}` or carry a
/// `display_name`.
#[utoipa::path(post, path = "/users", operation_id = "create_user", tag = "users",
    request_body(content = NewUserRequest, description = "Optional: the body may be empty"),
    responses(
        (status = 201, body = DataEnvelope<CreatedUser>),
        (status = 400, description = "A body that is not empty or a NewUserRequest: an unknown field, a display_name that is not 1 to 64 characters without control characters; or a query parameter (it takes none)", body = ErrorEnvelope),
        (status = 429, description = "This address has created --new-users-per-minute users (default 60) within the last minute: retry after Retry-After", body = ErrorEnvelope),
        NoCatalog,
        CatalogWriteUnknown,
    ))]
pub(crate) async fn create_user(
    State(state): State<AppState>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    _: NoQuery,
    ClientBody(body): ClientBody,
) -> Answer {
    let display_name = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let fields = parse_json_object(&body).map_err(|e| FrontendError::BadRequest(e.message))?;
        let request: NewUserRequest = serde_json::from_value(Value::Object(fields))
            .map_err(|e| FrontendError::BadRequest(format!("Invalid user: {e}")))?;
        if let Some(name) = &request.display_name {
            check_display_name(name).map_err(|e| FrontendError::BadRequest(e.into()))?;
        }
        request.display_name
    };
    // Each user is a write the catalog keeps for good, and this route needs no key: an
    // address creates a bounded number a minute (a malformed request, refused above, counts
    // for nothing; the deployment's operators, with its shared secret, any number).
    if let Some(Extension(ConnectInfo(client))) = client {
        if !state.inner.secret.admits(&headers) {
            let address = client_address(client.ip());
            state
                .inner
                .limits
                .admit_new_user(address)
                .map_err(|too_many| FrontendError::TooManyNewUsers {
                    retry_after: too_many.retry_after,
                })?;
        }
    }
    let (key, credential, prefix) = new_key()?;
    let new = NewUser {
        credential,
        prefix,
        display_name,
    };
    let url = paths::USERS.url(&state.inner.catalog_url, &[]);
    let generation = state.inner.credentials.generation();
    let user: UserRecord = catalog_write(&state, url, Method::POST, Some(&new)).await?;
    let key_id = user.keys.first().map_or(1, |k| k.id);
    let created = CreatedUser {
        user_id: user.id,
        display_name: user.display_name.clone(),
        api_key: key.with_user(user.id).reveal(),
        key_id,
        created: user.created,
    };
    state.inner.credentials.keep_fetched(user, generation);
    Ok((StatusCode::CREATED, data(created)).into_response())
}

/// A new key's secret part, its credential and prefix. The key names user 0 until the
/// catalog gives it its user (the credential does not depend on it).
fn new_key() -> Result<(ApiKey, Credential, String), FrontendError> {
    let key = ApiKey::generate(0).map_err(|e| FrontendError::Internal(e.to_string()))?;
    let credential = Credential::of(&key).map_err(|e| FrontendError::Internal(e.to_string()))?;
    let prefix = key.prefix();
    Ok((key, credential, prefix))
}

/// A change to the catalog's users (an fsync there), passing its refusals (404, 409) on. Sent
/// and not answered (a timeout, a connection lost, an answer that does not read), it may have
/// been made: 504, not the 503 that says it was not.
async fn catalog_write<T: serde::de::DeserializeOwned>(
    state: &AppState,
    url: Result<reqwest::Url, RemoteError>,
    method: Method,
    body: Option<&impl Serialize>,
) -> Result<T, FrontendError> {
    let url = url.map_err(FrontendError::CatalogUnavailable)?;
    let mut request = state
        .inner
        .http
        .request(method, url)
        .timeout(catalog::WRITE_TIMEOUT);
    if let Some(body) = body {
        request = request.json(body);
    }
    call_catalog_for_users(state, request)
        .await
        .map_err(|failure| match failure {
            CatalogCall::Answered(RemoteError::Api(e)) if is_for_client(&e) => {
                FrontendError::Upstream(e)
            }
            CatalogCall::Failed(e @ RemoteError::Unreachable(_)) if !e.never_sent() => {
                FrontendError::CatalogWriteUnknown(e)
            }
            // An answer that is not the catalog's own (a proxy's error status) says nothing of
            // whether the change was made.
            CatalogCall::Answered(e @ (RemoteError::Decode(_) | RemoteError::Status(..)))
            | CatalogCall::Failed(e @ RemoteError::Status(..)) => {
                FrontendError::CatalogWriteUnknown(e)
            }
            other => other.into(),
        })
}

/// A user as they see themselves.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub user_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created: u64,
    /// Keys not revoked.
    pub keys: usize,
}

/// The caller's user.
#[utoipa::path(get, path = "/users/{id}", operation_id = "get_user", tag = "users",
    params(("id" = u64, Path, description = "User id")),
    security(("api_key" = [])),
    responses(
        (status = 200, body = DataEnvelope<UserView>),
        OwnUserAnswers,
        NoCatalog,
    ))]
pub(crate) async fn get_user(State(state): State<AppState>, OwnUser(id): OwnUser) -> Answer {
    let user = credentials::user(&state, id).await?;
    Ok(data(UserView {
        user_id: user.id,
        display_name: user.display_name.clone(),
        created: user.created,
        keys: user.live_keys().count(),
    }))
}

/// One of a user's keys as a list shows it: never the key itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub key_id: u32,
    /// The key's first characters (`snk_<user>_` and 8 hex digits of its secret; only
    /// `snk_<user>_` for a key made before prefixes were kept).
    pub prefix: String,
    /// Milliseconds since the Unix epoch.
    pub created: u64,
    /// When it was revoked (milliseconds since the Unix epoch); only in a revocation's answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked: Option<u64>,
}

impl KeyView {
    fn of(user: u64, key: &KeyRecord) -> Self {
        Self {
            key_id: key.id,
            prefix: format!("snk_{user}_{}", key.prefix.as_deref().unwrap_or_default()),
            created: key.created,
            revoked: key.revoked,
        }
    }
}

/// The caller's keys that are not revoked, by id.
#[utoipa::path(get, path = "/users/{id}/keys", operation_id = "list_keys", tag = "users",
    params(("id" = u64, Path, description = "User id")),
    security(("api_key" = [])),
    responses(
        (status = 200, body = DataEnvelope<Vec<KeyView>>),
        OwnUserAnswers,
        NoCatalog,
    ))]
pub(crate) async fn list_keys(State(state): State<AppState>, OwnUser(id): OwnUser) -> Answer {
    let user = credentials::user(&state, id).await?;
    let keys: Vec<KeyView> = user.live_keys().map(|k| KeyView::of(id, k)).collect();
    Ok(data(keys))
}

/// Another key, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    pub key_id: u32,
    /// Send as `Authorization: Bearer <api_key>`; it cannot be shown again.
    pub api_key: String,
    pub prefix: String,
    /// Milliseconds since the Unix epoch.
    pub created: u64,
}

/// Makes the caller another key (at most 10 at once), to rotate keys or to give a program its
/// own. The body may be empty or `{}`.
#[utoipa::path(post, path = "/users/{id}/keys", operation_id = "create_key", tag = "users",
    params(("id" = u64, Path, description = "User id")),
    security(("api_key" = [])),
    responses(
        (status = 201, body = DataEnvelope<CreatedKey>),
        (status = 400, description = "User id must be a number, a body that is not empty or {}, or a query parameter (it takes none)", body = ErrorEnvelope),
        NeedsKey,
        (status = 403, description = "Another user", body = ErrorEnvelope),
        (status = 409, description = "The user holds 10 keys already (revoke one first), or has made 1,000 keys in all (register another user)", body = ErrorEnvelope),
        NoCatalog,
        CatalogWriteUnknown,
    ))]
pub(crate) async fn create_key(
    State(state): State<AppState>,
    OwnUser(id): OwnUser,
    _: NoQuery,
    ClientBody(body): ClientBody,
) -> Answer {
    refuse_a_body(&body, "a new key takes none")?;
    let (key, credential, prefix) = new_key()?;
    let url = paths::USER_KEYS.url(&state.inner.catalog_url, &[&id.to_string()]);
    let new = NewKey { credential, prefix };
    let record: KeyRecord = catalog_write(&state, url, Method::POST, Some(&new)).await?;
    state.inner.credentials.forget(&[id]);
    let view = KeyView::of(id, &record);
    let created = CreatedKey {
        key_id: record.id,
        api_key: key.with_user(id).reveal(),
        prefix: view.prefix,
        created: record.created,
    };
    Ok((StatusCode::CREATED, data(created)).into_response())
}

/// Revokes one of the caller's keys (the one sending this too, if it is that one). Every
/// frontend the catalog reaches refuses it before this answers; one cut off from the catalog
/// within 30 s. Revoking a revoked key answers as the first time.
#[utoipa::path(delete, path = "/users/{id}/keys/{key_id}", operation_id = "revoke_key", tag = "users",
    params(("id" = u64, Path, description = "User id"), ("key_id" = u32, Path, description = "Key id")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The key, with `revoked`", body = DataEnvelope<KeyView>),
        (status = 400, description = "User id or key id is not a number, a body that is not empty or {}, or a query parameter (it takes none)", body = ErrorEnvelope),
        NeedsKey,
        (status = 403, description = "Another user's key", body = ErrorEnvelope),
        (status = 404, description = "Key not found", body = ErrorEnvelope),
        NoCatalog,
        CatalogWriteUnknown,
    ))]
pub(crate) async fn revoke_key(
    State(state): State<AppState>,
    KeyId(key_id): KeyId,
    OwnUser(id): OwnUser,
    _: NoQuery,
    ClientBody(body): ClientBody,
) -> Answer {
    refuse_a_body(&body, "a revocation takes none")?;
    let url = paths::USER_KEY.url(
        &state.inner.catalog_url,
        &[&id.to_string(), &key_id.to_string()],
    );
    let body: Option<&()> = None;
    let record: KeyRecord = catalog_write(&state, url, Method::DELETE, body).await?;
    // (The catalog's push did this too; this frontend's own next read must not wait for it.)
    state.inner.credentials.forget(&[id]);
    Ok(data(KeyView::of(id, &record)))
}

/// One stock of a portfolio.
#[derive(Debug, Serialize, ToSchema)]
pub struct PortfolioPosition {
    pub name: String,
    /// Shares held; negative when short.
    pub shares: i64,
    /// Average cost of the open shares, from the user's own fills; null when flat.
    pub average_cost: Option<Price>,
    /// The stock's price now.
    pub price: Price,
    pub market_value: Money,
    /// What the open shares cost.
    pub cost_basis: Money,
    pub unrealized_pnl: Money,
    pub realized_pnl: Money,
    pub bought: u64,
    pub sold: u64,
}

/// A user's holdings, derived from the committed log, valued at current prices.
#[derive(Debug, Serialize, ToSchema)]
pub struct Portfolio {
    pub user_id: u64,
    /// Every stock the user traded, in name order.
    pub positions: Vec<PortfolioPosition>,
    pub market_value: Money,
    pub cost_basis: Money,
    pub unrealized_pnl: Money,
    pub realized_pnl: Money,
    /// Some price is the last one seen because the catalog is unreachable.
    pub stale: bool,
}

/// A user's portfolio: per stock the position, average cost, market value and profit and
/// loss, and totals. Only with that user's own key.
#[utoipa::path(get, path = "/users/{id}/portfolio", operation_id = "get_portfolio", tag = "users",
    params(("id" = u64, Path, description = "User id")),
    security(("api_key" = [])),
    responses(
        (status = 200, body = DataEnvelope<Portfolio>),
        OwnUserAnswers,
        (status = 503, description = "No order leader, or the catalog is unavailable", body = ErrorEnvelope),
    ))]
pub(crate) async fn portfolio(State(state): State<AppState>, OwnUser(id): OwnUser) -> Answer {
    let holdings: Vec<Holding> =
        order_group::get(&state, paths::PORTFOLIO, &[&id.to_string()], None).await?;
    let mut portfolio = Portfolio {
        user_id: id,
        positions: Vec::with_capacity(holdings.len()),
        market_value: Money(0),
        cost_basis: Money(0),
        unrealized_pnl: Money(0),
        realized_pnl: Money(0),
        stale: false,
    };
    for holding in holdings {
        let price = match stock(&state, &holding.name).await? {
            Looked::Cached(cached) => cached.stock.price,
            Looked::Fresh(stock) => stock.price,
            Looked::Stale(stock) => {
                portfolio.stale = true;
                stock.price
            }
        };
        let market_value = i128::from(holding.shares) * i128::from(price.cents());
        let unrealized = market_value - holding.cost_cents;
        portfolio.market_value.0 += market_value;
        portfolio.cost_basis.0 += holding.cost_cents;
        portfolio.unrealized_pnl.0 += unrealized;
        portfolio.realized_pnl.0 += holding.realized_cents;
        portfolio.positions.push(PortfolioPosition {
            name: holding.name,
            shares: holding.shares,
            average_cost: holding.average_cost,
            price,
            market_value: Money(market_value),
            cost_basis: Money(holding.cost_cents),
            unrealized_pnl: Money(unrealized),
            realized_pnl: Money(holding.realized_cents),
            bought: holding.bought,
            sold: holding.sold,
        });
    }
    Ok(data(portfolio))
}
