//! Users as the public API sees them: creating one (its API key is shown once) and a user's
//! portfolio valued at current prices.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use stocknet_common::api_key::{ApiKey, Credential};
use stocknet_common::client::call;
use stocknet_common::envelope::{parse_json_object, DataEnvelope, ErrorEnvelope, RawBody};
use stocknet_common::paths;
use stocknet_common::wire::{Holding, NewUser, UserRecord};
use stocknet_common::{data, Money, Path, Price};
use utoipa::ToSchema;

use crate::credentials::caller;
use crate::routes::stocks::{stock, Looked};
use crate::upstream::catalog::{self, call_catalog};
use crate::upstream::order_group;
use crate::{AppState, FrontendError};

/// A new user, with the API key that acts for them. The key is shown here only.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedUser {
    pub user_id: u64,
    /// Send as `Authorization: Bearer <api_key>`. Only a hash of it is stored: keep it safe,
    /// it cannot be shown again.
    pub api_key: String,
    /// Milliseconds since the Unix epoch.
    pub created: u64,
}

/// Creates a user and returns their API key, once. The body may be empty or `{}`.
#[utoipa::path(post, path = "/users", operation_id = "create_user", tag = "users",
    responses(
        (status = 201, body = DataEnvelope<CreatedUser>),
        (status = 400, description = "A body that is not empty or {}", body = ErrorEnvelope),
        (status = 503, description = "The catalog, which keeps users, is unavailable", body = ErrorEnvelope),
    ))]
pub(crate) async fn create_user(
    State(state): State<AppState>,
    RawBody(body): RawBody,
) -> Result<Response, FrontendError> {
    if !body.iter().all(u8::is_ascii_whitespace) {
        let fields = parse_json_object(&body).map_err(|e| FrontendError::BadRequest(e.message))?;
        if let Some(field) = fields.keys().next() {
            return Err(FrontendError::BadRequest(format!(
                "Unknown field: {field} (a new user takes none)"
            )));
        }
    }
    let inner = &state.inner;
    let key = ApiKey::generate(0).map_err(|e| FrontendError::Internal(e.to_string()))?;
    let credential = Credential::of(&key).map_err(|e| FrontendError::Internal(e.to_string()))?;
    let url = paths::USERS
        .url(&inner.catalog_url, &[])
        .map_err(FrontendError::CatalogUnavailable)?;
    let request = inner
        .http
        .post(url)
        .timeout(catalog::WRITE_TIMEOUT)
        .json(&NewUser { credential });
    let record: UserRecord = call_catalog(&state, request).await?;
    inner.credentials.keep(record.id, credential);
    let created = CreatedUser {
        user_id: record.id,
        api_key: key.with_user(record.id).reveal(),
        created: record.created,
    };
    Ok((StatusCode::CREATED, data(created)).into_response())
}

/// One stock of a portfolio.
#[derive(Debug, Serialize, ToSchema)]
pub struct PortfolioPosition {
    pub name: String,
    /// Shares held; negative when short.
    pub shares: i64,
    /// Average cost of the open shares, from the user's own fills; absent when flat.
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
        (status = 400, description = "User id must be a number", body = ErrorEnvelope),
        (status = 401, description = "No API key, or an invalid one", body = ErrorEnvelope),
        (status = 403, description = "Another user's portfolio", body = ErrorEnvelope),
        (status = 503, description = "No order leader, or the catalog is unavailable", body = ErrorEnvelope),
    ))]
pub(crate) async fn portfolio(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, FrontendError> {
    let id: u64 = id
        .parse()
        .map_err(|_| FrontendError::BadRequest("User id must be a number".into()))?;
    match caller(&state, &headers).await? {
        None => {
            return Err(FrontendError::Unauthorized(
                "A portfolio needs its user's API key (Authorization: Bearer)",
            ))
        }
        Some(user) if user != id => {
            return Err(FrontendError::Forbidden(
                "A portfolio is shown only with its own user's key".into(),
            ))
        }
        Some(_) => {}
    }
    let inner = &state.inner;
    let holdings: Vec<Holding> = order_group::read(&state, |leader| {
        let request = paths::PORTFOLIO
            .url(&leader.url, &[&id.to_string()])
            .map(|url| inner.leader_read(url));
        async move { call::<Vec<Holding>>(request?).await }
    })
    .await?;
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
            Looked::Fresh(stock) => stock.price,
            Looked::Stale(stock) => {
                portfolio.stale = true;
                stock.price
            }
        };
        let market_value = holding.shares.saturating_mul(price.cents() as i64);
        let unrealized = market_value.saturating_sub(holding.cost_cents);
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
