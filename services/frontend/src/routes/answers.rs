//! Error answers that several operations give for the same cause, described once, so that
//! the OpenAPI document says the same of the same failure everywhere (an operation lists
//! these beside the answers of its own).
//!
//! The types only describe: handlers answer through `FrontendError`, so none is built.
#![allow(dead_code)]

use stocknet_common::envelope::ErrorEnvelope;
use utoipa::IntoResponses;

/// What every write (place, modify, cancel) may answer besides its own outcomes: it runs under
/// an idempotency key (`upstream::order_group::write`), which is what makes a 504 safe to
/// retry.
#[derive(IntoResponses)]
pub(crate) enum WriteAnswers {
    #[response(
        status = 422,
        description = "Idempotency-Key used before for a different request"
    )]
    KeyReused(ErrorEnvelope),
    #[response(
        status = 503,
        description = "Not executed, and never will be: no order leader available, or the catalog is down (then with Retry-After). Only without an Idempotency-Key of the client's: under one, an earlier request may have executed it, and such a write is 504 instead"
    )]
    NotExecuted(ErrorEnvelope),
    #[response(
        status = 504,
        description = "Outcome unknown: it may have executed. The body's idempotency_key (also the Idempotency-Key header) is the key it ran under: a retry with it executes at most once and answers how it went; GET /orders?key= settles it too (the order once committed, none if no order was placed under the key, 504 while it is still being decided)"
    )]
    OutcomeUnknown(ErrorEnvelope),
}

/// A change of a limit order (modify, cancel) that only its owner may make.
#[derive(IntoResponses)]
pub(crate) enum OrderChangeAnswers {
    #[response(
        status = 401,
        description = "An API key that is malformed, unknown or wrong"
    )]
    BadKey(ErrorEnvelope),
    #[response(status = 403, description = "The order belongs to another user")]
    NotTheOwner(ErrorEnvelope),
    #[response(status = 404, description = "No such limit order")]
    NoSuchOrder(ErrorEnvelope),
}

/// A stock's market data from the order group's leader (book, candles), for a stock the
/// catalog lists.
#[derive(IntoResponses)]
pub(crate) enum StockMarketRead {
    #[response(status = 404, description = "Stock not found")]
    UnknownStock(ErrorEnvelope),
    #[response(
        status = 503,
        description = "No order leader available, or the catalog unavailable and no value seen for the stock"
    )]
    Unavailable(ErrorEnvelope),
}

/// A read the order group's leader serves (after confirming it leads) or a caught-up follower.
#[derive(IntoResponses)]
#[response(status = 503, description = "No order leader available")]
pub(crate) struct NoLeader(ErrorEnvelope);

/// A stock name in the path or the body that the catalog does not list.
#[derive(IntoResponses)]
#[response(status = 404, description = "Stock not found")]
pub(crate) struct UnknownStock(ErrorEnvelope);

/// A stock looked up by name through this frontend's cache, where nothing else can fail.
#[derive(IntoResponses)]
pub(crate) enum StockLookup {
    #[response(status = 404, description = "Stock not found")]
    NotFound(ErrorEnvelope),
    #[response(
        status = 503,
        description = "Catalog unavailable and no value seen for the stock (Retry-After while its breaker is open)"
    )]
    Unavailable(ErrorEnvelope),
}

/// A WebSocket route asked with a request that is not a WebSocket handshake, or with a query
/// parameter (it takes none).
#[derive(IntoResponses)]
#[response(
    status = 400,
    description = "Not a WebSocket handshake (it needs Connection: upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key), or a query parameter: the stream takes none"
)]
pub(crate) struct NotAHandshake(ErrorEnvelope);

/// A WebSocket handshake in another version of the protocol than 13.
#[derive(IntoResponses)]
#[response(
    status = 426,
    description = "A Sec-WebSocket-Version other than 13: the header Sec-WebSocket-Version: 13 names the one this server speaks (RFC 6455)"
)]
pub(crate) struct OtherWebSocketVersion(ErrorEnvelope);

/// A query string with a parameter the operation does not take, or a bad value.
#[derive(IntoResponses)]
#[response(status = 400, description = "Unknown parameter or bad value")]
pub(crate) struct BadQuery(ErrorEnvelope);

/// An operation that needs the caller's own API key.
#[derive(IntoResponses)]
#[response(status = 401, description = "No API key, or an invalid or revoked one")]
pub(crate) struct NeedsKey(ErrorEnvelope);

/// `/users/{id}` and what is below it, which only that user's own key opens.
#[derive(IntoResponses)]
pub(crate) enum OwnUserAnswers {
    #[response(status = 400, description = "User id must be a number")]
    BadUserId(ErrorEnvelope),
    #[response(status = 401, description = "No API key, or an invalid or revoked one")]
    NeedsKey(ErrorEnvelope),
    #[response(
        status = 403,
        description = "Another user's: only the user's own key opens it"
    )]
    AnotherUser(ErrorEnvelope),
}

/// Users and their keys live in the catalog.
#[derive(IntoResponses)]
#[response(
    status = 503,
    description = "The catalog, which keeps users, is unavailable"
)]
pub(crate) struct NoCatalog(ErrorEnvelope);

/// A change to the users sent to the catalog and not answered.
#[derive(IntoResponses)]
#[response(
    status = 504,
    description = "Outcome unknown: the catalog did not answer, so the change may or may not have been made"
)]
pub(crate) struct CatalogWriteUnknown(ErrorEnvelope);
