//! The public API's OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! attributes and the wire types, and a page that renders it.

use std::sync::LazyLock;

use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use stocknet_common::deadline::REQUEST_DEADLINE;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "StockNet",
        description = "A fault-tolerant stock-trading back end: stock lookups, market and limit \
            orders on a replicated order book, trades. Every answer is `{\"data\": ...}` or \
            `{\"error\": {\"code\", \"message\"}}` with the HTTP status equal to `code`.",
    ),
    modifiers(&ApiKeyScheme),
    // The first message of `/ws/orders` without an Authorization header: no operation's body.
    components(schemas(crate::streams::orders::OrderStreamHello)),
    tags(
        (name = "stocks", description = "The catalog of stocks"),
        (name = "users", description = "Users, their API keys and portfolios"),
        (name = "orders", description = "Market and limit orders, modify, cancel"),
        (name = "market", description = "Trades and order books"),
        (name = "service", description = "Health, metrics and this description"),
    )
)]
pub struct ApiDoc;

/// `api_key`: a user's key as `Authorization: Bearer`. Orders may carry one (they then belong
/// to that user); a portfolio needs its user's.
struct ApiKeyScheme;

impl utoipa::Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("An API key from POST /users"))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("api_key", SecurityScheme::Http(scheme));
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", operation_id = "get_openapi_document", tag = "service",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn document() -> Response {
    /// Made once, when first asked for: the same for the life of the process.
    static DOCUMENT: LazyLock<Bytes> = LazyLock::new(|| {
        serde_json::to_vec(&crate::openapi_document())
            .map(Bytes::from)
            .unwrap_or_default()
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.clone(),
    )
        .into_response()
}

/// The document as served: utoipa's, completed with what its attributes cannot say (JSON
/// Schema's `dependentRequired` and `minProperties`, an optional body, and the links between operations that
/// clients and fuzzers follow from a created resource to its reads and changes).
pub fn complete(document: utoipa::openapi::OpenApi) -> Value {
    let mut document = serde_json::to_value(document).unwrap_or_default();
    bound_integers(&mut document);
    let schemas = &mut document["components"]["schemas"];
    // A tolerance without the price it is a tolerance of is refused.
    schemas["PlaceOrder"]["dependentRequired"] = json!({"max_deviation_bps": ["expected_price"]});
    // A change must change something.
    schemas["OrderChange"]["minProperties"] = json!(1);
    // A new user may come with no body at all (utoipa marks every body required).
    document["paths"]["/users"]["post"]["requestBody"]["required"] = json!(false);
    answers_every_operation_may_give(&mut document);
    let order = "$response.body#/data/transaction_number";
    let links = json!({
        "GetOrder": {"operationId": "get_order", "parameters": {"number": order}},
        "ModifyOrder": {"operationId": "modify_order", "parameters": {"number": order}},
        "CancelOrder": {"operationId": "cancel_order", "parameters": {"number": order}},
    });
    document["paths"]["/orders"]["post"]["responses"]["200"]["links"] = links;
    let user = "$response.body#/data/user_id";
    document["paths"]["/users"]["post"]["responses"]["201"]["links"] =
        json!({"GetPortfolio": {"operationId": "get_portfolio", "parameters": {"id": user}}});
    document
}

/// Interactive documentation of this API (Swagger UI, served by this frontend: it works
/// offline).
#[utoipa::path(get, path = "/docs", operation_id = "get_api_docs_page", tag = "service",
    responses((status = 200, description = "An HTML page", content_type = "text/html")))]
pub async fn docs_page() -> Response {
    super::console::page(DOCS_POLICY, include_str!("docs.html"))
}

/// What the docs page may load and run: Swagger UI's own files (served here) and calls to this
/// frontend ("Try it out"); nothing from elsewhere, and no framing.
const DOCS_POLICY: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The docs page's own script, which starts Swagger UI (a file, so that the page runs no
/// inline script).
pub async fn docs_init() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_bytes!("docs_init.js"),
    )
}

/// Swagger UI's stylesheet, vendored (`assets/swagger-ui`).
pub async fn swagger_ui_css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_bytes!("../../assets/swagger-ui/swagger-ui.css"),
    )
}

/// Swagger UI's script, vendored (`assets/swagger-ui`).
pub async fn swagger_ui_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js"),
    )
}

/// A file of the binary's, cached by browsers for a day.
fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "public, max-age=86400"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    (headers, body).into_response()
}

/// Gives every unsigned integer the upper bound of its Rust type (`format: uint32`/`uint64`),
/// which utoipa leaves out: the handlers refuse anything above it.
fn bound_integers(value: &mut Value) {
    match value {
        Value::Object(object) => {
            // utoipa spells them `u-int16`, `u-int32` and `u-int64`.
            let bounds = match object.get("format").and_then(Value::as_str) {
                Some("uint16" | "u-int16") => Some(("uint16", json!(u16::MAX))),
                Some("uint32" | "u-int32") => Some(("uint32", json!(u32::MAX))),
                Some("uint64" | "u-int64") => Some(("uint64", json!(u64::MAX))),
                _ => None,
            };
            if let Some((format, maximum)) = bounds {
                object.insert("format".into(), json!(format));
                object.entry("maximum").or_insert(maximum);
            }
            object.values_mut().for_each(bound_integers);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

/// The answers any operation may give besides its own, from the layers in front of every
/// handler: when the frontend limits rates (`GET /health` is exempt), 429 for a client over its
/// limit and 401 for a request with a bad API key, which it counts against the key's user; 413
/// for a write's body over the limit; 408 for a request not answered within 30 s of when it first had
/// to wait (`stocknet_common::deadline`); 500 when something failed inside (logged, never
/// detailed).
fn answers_every_operation_may_give(document: &mut Value) {
    let envelope =
        json!({"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}});
    let answer = |description: &str| json!({"description": description, "content": envelope});
    let Some(paths) = document["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(operations) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in operations.iter_mut() {
            // Every write reads its body, if only to refuse one (`ClientBody`).
            let reads_a_body = method != "get";
            let Some(responses) = operation["responses"].as_object_mut() else {
                continue;
            };
            if path != "/health" {
                responses.entry("429").or_insert_with(|| {
                    answer("Too many requests from this client (with Retry-After), when the frontend limits rates")
                });
                responses.entry("401").or_insert_with(|| {
                    answer("An API key that is malformed, unknown or revoked, when the frontend limits rates: it checks the key of every request that sends one")
                });
            }
            if reads_a_body {
                responses
                    .entry("413")
                    .or_insert_with(|| answer("The body is larger than 4 MiB"));
            }
            responses.entry("408").or_insert_with(|| {
                answer(&format!(
                    "Not answered within {} s of when it first had to wait",
                    REQUEST_DEADLINE.as_secs()
                ))
            });
            responses
                .entry("500")
                .or_insert_with(|| answer("An internal error (logged; the message says no more)"));
        }
    }
}
