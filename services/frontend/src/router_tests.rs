//! The router without its backends: envelopes, authentication, limits, the OpenAPI document.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use clap::Parser;
use http_body_util::BodyExt;
use serde_json::Value;
use stocknet_common::testing::{insider_post, SECRET};
use stocknet_common::wire::IDEMPOTENCY_KEY;
use stocknet_common::Secret;
use tower::ServiceExt;

use crate::{openapi_document, router, upstream, AppState, Config, FrontendError};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: Config,
}

/// Serves `app` on a free port of 127.0.0.1 in the background: a stand-in for another process.
async fn serve(
    app: Router,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    // Handlers and limits see each request's client address, as they do when served.
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    (
        address,
        tokio::spawn(async move { axum::serve(listener, app).await }),
    )
}

/// The user `key` names, holding that one key: as a frontend keeps them once it has fetched them
/// from the catalog.
/// Keys of users 1 and 2, whose credentials `state` keeps as if it had fetched them from the
/// catalog.
fn two_users_kept(state: &AppState) -> Vec<stocknet_common::api_key::ApiKey> {
    let keys: Vec<_> = (1..=2)
        .map(|user| stocknet_common::api_key::ApiKey::generate(user).unwrap())
        .collect();
    for key in &keys {
        state.inner.credentials.keep(holder_of(key));
    }
    keys
}

fn holder_of(key: &stocknet_common::api_key::ApiKey) -> stocknet_common::wire::UserRecord {
    use stocknet_common::api_key::Credential;
    use stocknet_common::wire::{KeyRecord, UserRecord};
    UserRecord {
        id: key.user(),
        created: 0,
        display_name: None,
        keys: vec![KeyRecord {
            id: 1,
            created: 0,
            prefix: Some(key.prefix()),
            credential: Credential::of(key).unwrap(),
            revoked: None,
        }],
    }
}

/// The state of a frontend whose catalog and order replicas (unless `flags` name them) are not
/// running, with `flags`.
pub(crate) fn lone_state(flags: &[&str]) -> AppState {
    let mut args = vec!["frontend"];
    for (flag, nothing_there) in [
        ("--catalog-url", "http://127.0.0.1:9"),
        ("--order-replicas", "1=http://127.0.0.1:9"),
    ] {
        if !flags.contains(&flag) {
            args.extend([flag, nothing_there]);
        }
    }
    args.extend_from_slice(flags);
    let cli = Cli::parse_from(args);
    AppState::new(&cli.config, Secret::new(SECRET).unwrap())
}

/// A frontend whose catalog and order replicas are not running.
fn app() -> Router {
    router(lone_state(&[]))
}

async fn send(request: Request<Body>) -> (StatusCode, Value) {
    stocknet_common::testing::send(&app(), request).await
}

#[tokio::test]
async fn the_invalidation_push_needs_the_secret() {
    for auth in [None, Some("Bearer wrong-secret-but-long")] {
        let mut request = Request::post("/invalidate").header("content-type", "application/json");
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
    let (status, body) = send(insider_post(
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
    let (status, body) = send(insider_post("/invalidate", r#"{"names":"GameStart"}"#)).await;
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
    use stocknet_common::api_key::ApiKey;
    let state = lone_state(&["--rate-limit", "1", "--rate-burst", "2"]);
    let keys = two_users_kept(&state);
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
    // The scheme in any case, and with more than one space, names the same key: the same
    // bucket.
    let key = keys[0].reveal();
    for spelling in [format!("bearer {key}"), format!("BEARER  {key}")] {
        assert_eq!(
            get(Some(spelling)).await.unwrap().status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
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

/// A WebSocket route asked with a plain GET answers 400 in the error envelope, as the
/// document says, before it looks anything up.
#[tokio::test]
async fn a_stream_without_a_handshake_is_a_400_envelope() {
    let document = openapi_document();
    for uri in [
        "/ws/trades",
        "/ws/prices",
        "/ws/book/GameStart",
        "/ws/candles/GameStart",
        "/ws/orders",
    ] {
        for method in [Method::GET, Method::HEAD] {
            let request = Request::builder().method(&method).uri(uri);
            let response = app()
                .oneshot(request.body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{method} {uri}");
        }
        let (status, body) = send(Request::get(uri).body(Body::empty()).unwrap()).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (StatusCode::BAD_REQUEST, serde_json::json!(400)),
            "{uri}: {body}"
        );
        let path = uri.replace("GameStart", "{name}");
        assert!(
            document["paths"][&path]["get"]["responses"]["400"].is_object(),
            "{path} lists no 400"
        );
    }
}

/// A handshake in another version of WebSocket than 13 is 426 naming the version this server
/// speaks (RFC 6455, 4.4), as the document says of every stream; one that names no version is
/// no handshake: 400.
#[tokio::test]
async fn a_handshake_in_another_version_is_426_naming_13() {
    let document = openapi_document();
    let handshake = |version: Option<&str>| {
        let mut request = Request::get("/ws/trades")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        if let Some(version) = version {
            request = request.header("sec-websocket-version", version);
        }
        request.body(Body::empty()).unwrap()
    };
    let response = app().oneshot(handshake(Some("8"))).await.unwrap();
    assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
    assert_eq!(response.headers()["sec-websocket-version"], "13");
    let (_, body) = send(handshake(Some("8"))).await;
    assert_eq!(body["error"]["code"], 426, "{body}");
    let (status, body) = send(handshake(None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    for path in [
        "/ws/trades",
        "/ws/prices",
        "/ws/book/{name}",
        "/ws/candles/{name}",
        "/ws/orders",
    ] {
        let listed = &document["paths"][path]["get"]["responses"]["426"];
        assert!(listed.is_object(), "{path} lists no 426");
    }
}

/// With limits on and the catalog unreachable, a key that cannot be verified is not refused
/// by the limiter: a route that needs no user answers as without limits, one that needs the
/// user answers 503 itself.
#[tokio::test]
async fn under_limits_a_key_the_catalog_cannot_verify_stops_no_public_read() {
    use stocknet_common::api_key::ApiKey;
    let app = router(lone_state(&["--rate-limit", "100"]));
    let key = ApiKey::generate(3).unwrap();
    let keyed = |uri: &str| {
        Request::get(uri)
            .header("authorization", format!("Bearer {}", key.reveal()))
            .body(Body::empty())
            .unwrap()
    };
    let public = app.clone().oneshot(keyed("/openapi.json")).await.unwrap();
    assert_eq!(public.status(), StatusCode::OK);
    let own = app.clone().oneshot(keyed("/users/3")).await.unwrap();
    assert_eq!(own.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The deployment's secret is no API key, and the audit trail takes it in place of one.
    let everybody = Request::get("/audit")
        .header("authorization", format!("Bearer {SECRET}"))
        .body(Body::empty())
        .unwrap();
    let trail = app.oneshot(everybody).await.unwrap();
    assert_eq!(
        trail.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the secret admits under limits too; no leader here"
    );
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
    let long = format!(r#"{{"display_name":"{}"}}"#, "x".repeat(65));
    for body in [
        r#"{"name":"alice"}"#,
        "[1]",
        "{",
        r#"{"display_name":""}"#,
        r#"{"display_name":"a\u0007"}"#,
        r#"{"display_name":7}"#,
        r#"{"display_name":"a","display_name":"b"}"#,
        &long,
    ] {
        let request = Request::post("/users")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let (status, reply) = send(request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reply}");
    }
    // A valid request needs the catalog, which keeps users.
    for body in ["", "{}", " ", r#"{"display_name":"Ada Lovelace"}"#] {
        let request = Request::post("/users").body(Body::from(body)).unwrap();
        assert_eq!(
            send(request).await.0,
            StatusCode::SERVICE_UNAVAILABLE,
            "{body:?}"
        );
    }
    // A number the path names is checked before the key is asked for.
    let number = |method: &str, uri: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap()
    };
    for (request, message) in [
        (get("/users/x/portfolio", None), "User id must be a number"),
        (get("/users/x", None), "User id must be a number"),
        (get("/users/x/keys", None), "User id must be a number"),
        (
            number("DELETE", "/users/x/keys/1"),
            "User id must be a number",
        ),
        (
            number("DELETE", "/users/1/keys/x"),
            "Key id must be a number",
        ),
        (get("/orders/x", None), "Order number must be a number"),
        (number("PUT", "/orders/-1"), "Order number must be a number"),
        (
            number("DELETE", "/orders/1.5"),
            "Order number must be a number",
        ),
    ] {
        let uri = request.uri().to_string();
        let (status, reply) = send(request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {reply}");
        assert_eq!(reply["error"]["message"], message, "{uri}");
    }
    // A user's own records and keys need their key.
    for request in [
        get("/users/1", None),
        get("/users/1/keys", None),
        Request::post("/users/1/keys").body(Body::empty()).unwrap(),
        Request::delete("/users/1/keys/1")
            .body(Body::empty())
            .unwrap(),
    ] {
        let uri = request.uri().to_string();
        assert_eq!(send(request).await.0, StatusCode::UNAUTHORIZED, "{uri}");
    }
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
async fn the_openapi_document_describes_times_and_fills_as_the_code_takes_them() {
    let document = openapi_document();
    let kinds = |schema: &Value| -> Vec<String> {
        schema["anyOf"]
            .as_array()
            .map(|items| items.iter().map(|i| i["type"].to_string()).collect())
            .unwrap_or_default()
    };
    let expire_at = &document["components"]["schemas"]["PlaceOrder"]["properties"]["expire_at"];
    assert_eq!(
        kinds(expire_at),
        ["\"string\"", "\"string\"", "\"integer\""],
        "{expire_at}"
    );
    for path in ["/audit", "/candles/{name}"] {
        let parameters = document["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap();
        let times: Vec<&Value> = parameters
            .iter()
            .filter(|p| p["name"] == "from" || p["name"] == "to")
            .collect();
        assert_eq!(times.len(), 2, "{path}");
        for parameter in times {
            assert_eq!(kinds(&parameter["schema"]).len(), 2, "{path}: {parameter}");
        }
    }
    let fills = &document["components"]["schemas"]["OrderView"]["properties"]["fills"];
    let shown = format!("the last {}", stocknet_common::wire::FILLS_SHOWN);
    assert!(
        fills["description"]
            .as_str()
            .is_some_and(|d| d.contains(&shown)),
        "{fills}"
    );
}

/// The console and the docs page say what they may load (their own files, calls to this
/// frontend), and that no page may frame them.
#[tokio::test]
async fn the_pages_carry_a_content_security_policy_and_refuse_framing() {
    for uri in ["/", "/console", "/docs"] {
        let page = app()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let header = |name: &str| {
            page.headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let policy = header("content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{uri}: {policy}");
        }
        assert_eq!(header("x-frame-options"), "DENY", "{uri}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{uri}");
    }
}

#[tokio::test]
async fn the_openapi_document_describes_every_public_route() {
    let document = openapi_document();
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

/// `GET path` through a frontend's router: the status, the content type and the whole body.
async fn served(path: &str) -> (StatusCode, String, axum::body::Bytes) {
    let response = app()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|kind| kind.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, content_type, body)
}

#[tokio::test]
async fn the_document_and_its_page_are_served() {
    let (status, _, body) = served("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let served_document: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(served_document, openapi_document());
    let (status, _, body) = served("/docs").await;
    assert_eq!(status, StatusCode::OK);
    let page = String::from_utf8_lossy(&body).into_owned();
    assert!(page.contains("openapi.json"));
    // Everything the page loads is this frontend's: it works offline.
    assert!(!page.contains("//"), "{page}");
    for (path, kind) in [
        ("/docs/swagger-ui.css", "text/css"),
        ("/docs/swagger-ui-bundle.js", "text/javascript"),
    ] {
        assert!(page.contains(&path[1..]), "{path} in {page}");
        let (status, content_type, body) = served(path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        assert!(body.len() > 100_000, "{path}: {} bytes", body.len());
    }
}

/// Paths that are not a stock name never reach the catalog (which is not running here, so
/// reaching it would be a 503) and never count against its breaker.
#[tokio::test]
async fn hostile_lookup_paths_are_404_and_leave_the_breaker_closed() {
    let state = lone_state(&[]);
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

/// While the catalog's breaker is open a write is not sent. Without a key of the client's it
/// never executed: 503. Under the client's key an earlier request may have executed it, so
/// the answer is 504 with the key (a retry resolves it), never a 503 that says it did not.
#[tokio::test]
async fn an_unsent_write_under_the_client_s_key_is_504_not_503() {
    let state = lone_state(&[]);
    for _ in 0..upstream::breaker::FAILURES {
        state
            .inner
            .catalog_breaker
            .failed(std::time::Instant::now());
    }
    let app = router(state);
    let order = r#"{"name":"GameStart","quantity":1,"type":"buy"}"#;
    let writes = |key: Option<&str>| {
        [
            Request::post("/orders").body(Body::from(order)),
            Request::put("/orders/4").body(Body::from(r#"{"quantity":2}"#)),
            Request::delete("/orders/4").body(Body::empty()),
        ]
        .map(|request| {
            let mut request = request.unwrap();
            if let Some(key) = key {
                request
                    .headers_mut()
                    .insert(IDEMPOTENCY_KEY, key.parse().unwrap());
            }
            request
        })
    };
    for request in writes(None) {
        let uri = request.uri().to_string();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{uri}");
    }
    for request in writes(Some("retry-7")) {
        let uri = request.uri().to_string();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT, "{uri}");
        assert_eq!(response.headers()[IDEMPOTENCY_KEY], "retry-7", "{uri}");
    }
}

/// Keys made up for writes without one cannot be foreseen: each carries a tag under a salt the
/// frontend never shows, so no client can claim an anonymous client's next key first.
#[test]
fn made_up_write_keys_carry_a_tag_nobody_else_can_make() {
    let (one, two) = (lone_state(&[]), lone_state(&[]));
    let first = one.inner.next_write_key();
    let second = one.inner.next_write_key();
    assert_ne!(first, second);
    let (counted, tag) = second.rsplit_once('-').expect("a tag");
    assert!(
        counted.starts_with("auto-") && counted.ends_with("-2"),
        "{second}"
    );
    assert_eq!(tag.len(), 16, "{second}");
    // The tag is of the prefix and count under this frontend's salt, not of them alone.
    let salted =
        |state: &AppState| stocknet_common::api_key::tag(&state.inner.key_salt, counted.as_bytes());
    assert_eq!(salted(&one), tag);
    assert_ne!(salted(&two), tag);
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
    // Declared too large: refused at once, before any of the body is waited for (this one is
    // short: the declared length is what counts).
    let declared = Request::post("/orders")
        .header(
            header::CONTENT_LENGTH,
            stocknet_common::server::BODY_LIMIT + 1,
        )
        .body(Body::from("{}"))
        .unwrap();
    let (status, body) = send(declared).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
}

/// What generators and fuzzers rely on: every operation has its own id, and every integer a
/// client may send has the bounds the handlers enforce.
#[test]
fn operation_ids_are_unique_and_integers_are_bounded() {
    let document = openapi_document();
    let mut ids = std::collections::BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap().to_owned();
            assert!(ids.insert(id.clone()), "{method} {path}: {id} twice");
            // Every write reads a body, if only to refuse one; no read does.
            assert_eq!(
                operation["responses"]["413"].is_object(),
                method != "get",
                "{method} {path}: 413"
            );
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let schema = &parameter["schema"];
                if schema["type"] == "integer" {
                    assert!(
                        schema["minimum"].is_number() && schema["maximum"].is_number(),
                        "{method} {path} {}: {schema}",
                        parameter["name"]
                    );
                }
            }
        }
    }
    for (path, method) in [
        ("/orders", "post"),
        ("/orders/{number}", "put"),
        ("/orders/{number}", "delete"),
        ("/orders", "delete"),
    ] {
        let responses = &document["paths"][path][method]["responses"];
        for status in ["400", "408", "413", "503", "504", "429", "500"] {
            assert!(
                responses[status].is_object(),
                "{method} {path} lists no {status}"
            );
        }
    }
    let quantity = &document["components"]["schemas"]["PlaceOrder"]["properties"]["quantity"];
    assert_eq!(
        (quantity["minimum"].as_u64(), quantity["maximum"].as_u64()),
        (Some(1), Some(u64::from(u32::MAX)))
    );
}

/// An order's terms are checked before any backend is asked: a bad one is a 400 envelope, a
/// good one goes on (and finds no leader here).
#[tokio::test]
async fn order_terms_are_checked_at_the_router() {
    let bad = r#"{"name":"GameStart","quantity":1,"type":"buy","price":10,"time_in_force":"ioc","post_only":true}"#;
    let (status, body) = send(Request::post("/orders").body(Body::from(bad)).unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["error"]["message"],
        "a post_only order rests: time_in_force ioc or fok cannot go with it"
    );
    let unknown = r#"{"name":"GameStart","quantity":1,"type":"buy","price":10,"tif":"ioc"}"#;
    let (status, body) = send(Request::post("/orders").body(Body::from(unknown)).unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("Unknown fields: tif")));
    let good = r#"{"name":"GameStart","quantity":1,"type":"buy","price":10,"time_in_force":"day","stp":"cancel_oldest"}"#;
    let (status, _) = send(Request::post("/orders").body(Body::from(good)).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

/// A header that names one thing (a credential, a write's key) comes once: of two that differ,
/// which one counts is not for a parser to decide. Refused before any backend is asked.
#[tokio::test]
async fn a_second_authorization_or_idempotency_key_header_is_refused() {
    let order = r#"{"name":"GameStart","quantity":1,"type":"buy"}"#;
    for (header, values) in [
        ("authorization", ["Bearer one", "Bearer two"]),
        (IDEMPOTENCY_KEY, ["first", "second"]),
    ] {
        let mut request = Request::post("/orders");
        for value in values {
            request = request.header(header, value);
        }
        let (status, body) = send(request.body(Body::from(order)).unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{header}: {body}");
        assert_eq!(
            body["error"]["message"],
            format!("more than one {header} header")
        );
    }
    // The same key twice (a proxy repeating it) is that key: the order goes on, and finds no
    // leader here.
    let twice = Request::post("/orders")
        .header(IDEMPOTENCY_KEY, "same")
        .header(IDEMPOTENCY_KEY, "same")
        .body(Body::from(order))
        .unwrap();
    let (status, body) = send(twice).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
}

/// A write takes no query parameter and a cancel or revocation no body: one ignored (a
/// misspelt option, a partial quantity on a cancel) would carry the write out as it was not
/// meant. Checked before any backend is asked.
#[tokio::test]
async fn writes_refuse_query_parameters_and_cancels_refuse_a_body() {
    let write = |method: &str, uri: &str, body: &'static str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body))
            .unwrap()
    };
    let order = r#"{"name":"GameStart","quantity":1,"type":"buy"}"#;
    for (method, uri, body, expected) in [
        (
            "POST",
            "/orders?dry_run=true",
            order,
            "Unknown parameter: dry_run (this operation takes none)",
        ),
        (
            "PUT",
            "/orders/4?price=10",
            r#"{"quantity":2}"#,
            "Unknown parameter: price (this operation takes none)",
        ),
        (
            "DELETE",
            "/orders/4?quantity=2",
            "",
            "Unknown parameter: quantity (this operation takes none)",
        ),
        (
            "DELETE",
            "/orders/4",
            r#"{"quantity":2}"#,
            "Unknown field: quantity (a cancel takes none: PUT changes a quantity)",
        ),
        (
            "DELETE",
            "/orders?client_order_id=a",
            r#"{"all":true}"#,
            "Unknown field: all (a cancel takes none)",
        ),
        (
            "POST",
            "/users?admin=1",
            "",
            "Unknown parameter: admin (this operation takes none)",
        ),
    ] {
        let (status, answer) = send(write(method, uri, body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {uri}: {answer}");
        assert_eq!(answer["error"]["message"], expected, "{method} {uri}");
    }
    // Without them, the same writes go on (and find no leader or catalog here).
    for (method, uri, body) in [("DELETE", "/orders/4", ""), ("DELETE", "/orders/4", "{}")] {
        let (status, answer) = send(write(method, uri, body)).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {uri} {body}: {answer}"
        );
    }
}

/// `DELETE /orders` takes exactly a well-formed `client_order_id` and needs an API key, all
/// checked before any backend is asked; so does a new order's `client_order_id`.
#[tokio::test]
async fn cancel_by_client_order_id_is_checked_at_the_router() {
    for (uri, expected) in [
        ("/orders", StatusCode::BAD_REQUEST),
        ("/orders?client_order_id=a%20b", StatusCode::BAD_REQUEST),
        ("/orders?client_order_id=a&user=1", StatusCode::BAD_REQUEST),
        ("/orders?client_order_id=ladder-1", StatusCode::UNAUTHORIZED),
    ] {
        let (status, body) = send(Request::delete(uri).body(Body::empty()).unwrap()).await;
        assert_eq!(status, expected, "{uri}: {body}");
        assert_eq!(body["error"]["code"], expected.as_u16(), "{uri}");
    }
    let anonymous =
        r#"{"name":"GameStart","quantity":1,"type":"buy","price":10,"client_order_id":"a"}"#;
    let (status, _) = send(
        Request::post("/orders")
            .body(Body::from(anonymous))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let market = r#"{"name":"GameStart","quantity":1,"type":"buy","client_order_id":"a"}"#;
    let (status, body) = send(Request::post("/orders").body(Body::from(market)).unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// A frontend cut off from the catalog goes on with the credentials it keeps only while its
/// last word from the catalog is under the bound (docs/API.md: a revoked key works at most that
/// long there), and answers 503 for keys after it.
#[tokio::test]
async fn kept_credentials_outlive_the_catalog_only_within_their_bound() {
    use std::time::Duration;

    use stocknet_common::api_key::ApiKey;

    use crate::credentials::CREDENTIAL_BOUND;
    use crate::upstream::catalog::CatalogContact;

    let key = ApiKey::generate(1).unwrap();
    let bearer = format!("Bearer {}", key.reveal());
    for (silence, expected) in [
        (CREDENTIAL_BOUND / 2, StatusCode::OK),
        (
            CREDENTIAL_BOUND + Duration::from_secs(1),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    ] {
        let mut state = lone_state(&[]);
        let inner = std::sync::Arc::get_mut(&mut state.inner).expect("the only reference");
        inner.catalog_contact = CatalogContact::silent_for(silence);
        state.inner.credentials.keep(holder_of(&key));
        let request = Request::get("/users/1")
            .header("authorization", &bearer)
            .body(Body::empty())
            .unwrap();
        let response = router(state).oneshot(request).await.unwrap();
        assert_eq!(response.status(), expected, "silent for {silence:?}");
    }
}

/// A user's record fetched from the catalog while a revocation of one of their keys is pushed
/// here is not kept: it may be from before the revocation, and kept it would admit the revoked
/// key for as long as this frontend hears from the catalog.
#[tokio::test]
async fn a_record_fetched_across_a_revocation_is_not_kept() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use axum::routing::get;
    use stocknet_common::api_key::ApiKey;
    use tokio::sync::Notify;

    let key = ApiKey::generate(1).unwrap();
    let (asked, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let calls = Arc::new(AtomicU32::new(0));
    // The catalog: the first answer is the record before the revocation, held back until the
    // test lets it go; every later one has the key revoked.
    let catalog = {
        let (asked, release, calls) = (asked.clone(), release.clone(), calls.clone());
        let record = holder_of(&key);
        Router::new().route(
            "/users/{id}",
            get(move || async move {
                let mut record = record.clone();
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    asked.notify_one();
                    release.notified().await;
                } else {
                    record.keys[0].revoked = Some(1);
                }
                axum::Json(serde_json::json!({ "data": record }))
            }),
        )
    };
    let (address, served) = serve(catalog).await;
    let catalog_url = format!("http://{address}");
    let state = lone_state(&["--catalog-url", &catalog_url]);
    // In touch with the catalog already: its first word after a silence would clear every
    // credential kept, and hide what this test is about.
    state.inner.catalog_contact.renewed_now();
    let app = router(state);
    let as_user = || {
        let request = Request::get("/users/1")
            .header("authorization", format!("Bearer {}", key.reveal()))
            .body(Body::empty())
            .unwrap();
        app.clone().oneshot(request)
    };

    let first = tokio::spawn(as_user());
    tokio::time::timeout(std::time::Duration::from_secs(30), asked.notified())
        .await
        .expect("the backend was asked");
    let pushed = app
        .clone()
        .oneshot(insider_post("/invalidate", r#"{"names":[],"users":[1]}"#))
        .await
        .unwrap();
    assert!(pushed.status().is_success(), "{}", pushed.status());
    release.notify_one();
    // Sent before the revocation was answered, the first request may go either way.
    first.await.unwrap().unwrap();
    let after = as_user().await.unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    assert!(
        calls.load(Ordering::SeqCst) >= 2,
        "the record was asked for again"
    );
    served.abort();
}

/// A frontend whose lease lapsed asks the catalog for a user's record; when that fails, it
/// falls back on the record it keeps only as that record is after the call (a revocation
/// pushed during the call forgot it), and only when the catalog was out of reach, not when it
/// answered with an error.
#[tokio::test]
async fn kept_credentials_stand_in_only_for_a_catalog_out_of_reach_and_as_they_are_after_the_call()
{
    use std::sync::Arc;
    use std::time::Duration;

    use axum::routing::get;
    use stocknet_common::api_key::ApiKey;
    use tokio::sync::Notify;

    use crate::upstream::catalog::CatalogContact;

    let key = ApiKey::generate(1).unwrap();
    // (what the catalog answers, whether a revocation is pushed during the call, expected)
    for (answer, pushed, expected) in [
        (StatusCode::INTERNAL_SERVER_ERROR, false, StatusCode::OK),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            true,
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            StatusCode::BAD_REQUEST,
            false,
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    ] {
        let (asked, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let catalog = {
            let (asked, release) = (asked.clone(), release.clone());
            Router::new().route(
                "/users/{id}",
                get(move || async move {
                    asked.notify_one();
                    release.notified().await;
                    let error =
                        serde_json::json!({"error": {"code": answer.as_u16(), "message": "no"}});
                    (answer, axum::Json(error))
                }),
            )
        };
        let (address, served) = serve(catalog).await;
        let mut state = lone_state(&["--catalog-url", &format!("http://{address}")]);
        let inner = Arc::get_mut(&mut state.inner).expect("the only reference");
        // Heard from 2 s ago: the lease has lapsed, the credentials' bound has not.
        inner.catalog_contact = CatalogContact::silent_for(Duration::from_secs(2));
        state.inner.credentials.keep(holder_of(&key));
        let app = router(state.clone());
        // The key checked once (a route's handler may read the record again).
        let call = {
            let (state, key) = (state.clone(), key.clone());
            tokio::spawn(async move { crate::credentials::verify(&state, &key).await })
        };
        tokio::time::timeout(Duration::from_secs(30), asked.notified())
            .await
            .expect("the catalog was asked");
        if pushed {
            let push = insider_post("/invalidate", r#"{"names":[],"users":[1]}"#);
            let push = app.clone().oneshot(push).await.unwrap();
            assert!(push.status().is_success(), "{}", push.status());
        }
        release.notify_one();
        let status = match call.await.unwrap() {
            Ok(user) => {
                assert_eq!(user, 1);
                StatusCode::OK
            }
            Err(e) => e.into_response().status(),
        };
        assert_eq!(status, expected, "catalog {answer}, pushed {pushed}");
        served.abort();
    }
}

/// A push of an older catalog state that arrives late (it timed out while this frontend hung,
/// or a part of a push of every stock overtaken by a later push) does not take the last value
/// seen back: with the catalog out of reach, the lookup shows the newer one.
#[tokio::test]
async fn a_late_push_of_an_older_state_does_not_take_the_last_seen_value_back() {
    let app = router(lone_state(&[]));
    let push = |applied: u64, quantity: u64| {
        let body = serde_json::json!({
            "names": ["GameStart"],
            "stocks": [{"name": "GameStart", "price": 16.5, "quantity": quantity}],
            "as_of": {"boot": 1, "applied": applied},
        });
        app.clone()
            .oneshot(insider_post("/invalidate", &body.to_string()))
    };
    assert!(push(2, 90).await.unwrap().status().is_success());
    assert!(push(1, 95).await.unwrap().status().is_success());
    let lookup = Request::get("/stocks/GameStart")
        .body(Body::empty())
        .unwrap();
    let stale = app.clone().oneshot(lookup).await.unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
    let body = stale.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["stale"], true, "{body}");
    assert_eq!(body["data"]["quantity"], 90, "{body}");
}

/// Routes that answer 418 to everything: what reaches them was not answered before routing.
fn teapot() -> Router {
    Router::new().fallback(|| async { StatusCode::IM_A_TEAPOT })
}

/// `state`'s cache holding a stock named `name` (quantity 100).
fn cache_holds(state: &AppState, name: &str) {
    let Err(epoch) = state.inner.cache.get(name) else {
        panic!("{name} is cached already");
    };
    let stock = stocknet_common::Stock {
        name: name.into(),
        price: "15.99".parse().unwrap(),
        quantity: 100,
    };
    assert!(state.inner.cache.fill(stock, epoch));
}

/// The answer of `service` (a router, or the look before routing around one) to `request`.
async fn answer<S>(service: &S, request: Request<Body>) -> axum::response::Response
where
    S: tower::Service<Request<Body>, Response = axum::response::Response> + Clone,
    S::Error: std::fmt::Debug,
{
    service.clone().oneshot(request).await.unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

async fn body_of(response: axum::response::Response) -> axum::body::Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

/// A cached lookup is answered before routing as the route answers it, and counted as the
/// route counts it; what the cache cannot answer as current goes to the routes.
#[tokio::test]
async fn cached_lookups_are_answered_before_routing_as_the_route_answers_them() {
    use axum::extract::Path;

    use crate::routes::stocks::CachedLookupsFirst;

    let catalog = Router::new().route(
        "/stocks/{name}",
        axum::routing::get(|Path(name): Path<String>| async move {
            let stock = serde_json::json!({"name": name, "price": 15.99, "quantity": 100});
            axum::Json(serde_json::json!({ "data": stock }))
        }),
    );
    let (address, served) = serve(catalog).await;
    let state = lone_state(&["--catalog-url", &format!("http://{address}")]);
    state.inner.catalog_contact.renewed_now();
    let routes = router(state.clone());
    let first = CachedLookupsFirst::new(state.clone(), teapot());

    // A miss goes to the routes; the route reads the catalog and caches the stock.
    let missed = answer(&first, get("/stocks/GameStart")).await;
    assert_eq!(missed.status(), StatusCode::IM_A_TEAPOT);
    let read = answer(&routes, get("/stocks/GameStart")).await;
    assert_eq!(read.status(), StatusCode::OK);
    let cached_by_route = answer(&routes, get("/stocks/GameStart")).await;
    let answered_first = answer(&first, get("/stocks/GameStart")).await;
    assert_eq!(answered_first.status(), cached_by_route.status());
    // The router sets the length of a body it knows; hyper writes it on the wire either way.
    let mut route_headers = cached_by_route.headers().clone();
    route_headers.remove(header::CONTENT_LENGTH);
    assert_eq!(answered_first.headers(), &route_headers);
    let first_body = body_of(answered_first).await;
    assert_eq!(first_body, body_of(cached_by_route).await);
    assert!(String::from_utf8_lossy(&first_body).contains("\"quantity\":100"));

    // Counted as the route counts: two hits (the route's and this one), one miss (the
    // route's: the look before routing counts none), three requests of the route.
    let metrics = body_of(answer(&routes, get("/metrics")).await).await;
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    let value = |start: &str, containing: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|line| line.starts_with(start) && line.contains(containing))
            .unwrap_or_else(|| panic!("no {start} {containing} in {metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("stocknet_frontend_cache_hits", ""), 2.0);
    assert_eq!(value("stocknet_frontend_cache_misses", ""), 1.0);
    let lookups = r#"method="GET",route="/stocks/{name}",status="200""#;
    let requests = value(
        "stocknet_frontend_http_request_duration_seconds_count",
        lookups,
    );
    assert_eq!(requests, 3.0);

    // Only a GET of a name as the route would take it: the route decodes `%47` to `G`, so
    // a stock named `%47ameStart` (names may hold `%`) is not what `/stocks/%47ameStart` asks.
    cache_holds(&state, "%47ameStart");
    let to_routes = [
        get("/stocks/%47ameStart"),
        get("/stocks/GameStart/"),
        get("/stocks/Unknown"),
        Request::head("/stocks/GameStart")
            .body(Body::empty())
            .unwrap(),
        Request::post("/stocks/GameStart")
            .body(Body::empty())
            .unwrap(),
    ];
    for request in to_routes {
        let asked = format!("{} {}", request.method(), request.uri());
        let status = answer(&first, request).await.status();
        assert_eq!(status, StatusCode::IM_A_TEAPOT, "{asked}");
    }

    // With the catalog's breaker open, the route answers (the value marked stale).
    let breaker = &state.inner.catalog_breaker;
    while breaker.admit().is_ok() {
        breaker.failed(std::time::Instant::now());
    }
    let stale = answer(&first, get("/stocks/GameStart")).await;
    assert_eq!(stale.status(), StatusCode::IM_A_TEAPOT);
    served.abort();

    // Not once the catalog's lease has lapsed.
    let mut lapsed = lone_state(&[]);
    let inner = std::sync::Arc::get_mut(&mut lapsed.inner).expect("the only reference");
    inner.catalog_contact =
        upstream::catalog::CatalogContact::silent_for(std::time::Duration::from_secs(2));
    cache_holds(&lapsed, "GameStart");
    let first = CachedLookupsFirst::new(lapsed, teapot());
    let unvouched = answer(&first, get("/stocks/GameStart")).await;
    assert_eq!(unvouched.status(), StatusCode::IM_A_TEAPOT);
}

/// With rate limits on, a cached lookup without a key is limited before routing as the
/// routes' limits limit it, by its address; one with a key goes to the routes, which verify it.
#[tokio::test]
async fn cached_lookups_before_routing_keep_the_rate_limits() {
    use crate::routes::stocks::CachedLookupsFirst;

    let state = lone_state(&["--rate-limit", "1"]);
    state.inner.catalog_contact.renewed_now();
    cache_holds(&state, "GameStart");
    let first = CachedLookupsFirst::new(state.clone(), teapot());
    let from = |address: &str| {
        let mut request = get("/stocks/GameStart");
        let address: std::net::SocketAddr = address.parse().unwrap();
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(address));
        request
    };

    let admitted = answer(&first, from("192.0.2.8:40000")).await;
    assert_eq!(admitted.status(), StatusCode::OK);
    // Over the address's rate (one a second): refused before routing, as the routes refuse it.
    let refused = answer(&first, from("192.0.2.8:40001")).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key(header::RETRY_AFTER));
    let by_routes = answer(&router(state.clone()), from("192.0.2.8:40002")).await;
    assert_eq!(by_routes.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body_of(refused).await, body_of(by_routes).await);
    // Another address has its own rate.
    let other = answer(&first, from("192.0.2.9:40000")).await;
    assert_eq!(other.status(), StatusCode::OK);
    // A key goes to the routes.
    let mut keyed = from("192.0.2.10:40000");
    let key = "Bearer sk_1_notakey".parse().unwrap();
    keyed.headers_mut().insert(header::AUTHORIZATION, key);
    let keyed = answer(&first, keyed).await;
    assert_eq!(keyed.status(), StatusCode::IM_A_TEAPOT);
}

/// The last value a frontend saw of a stock, which it serves marked stale while the catalog is
/// out of reach, is never older than one it was pushed: a read answered across a push does not
/// overwrite the pushed value.
#[tokio::test]
async fn a_lookup_read_across_a_push_does_not_replace_the_pushed_value_as_the_last_seen() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use axum::routing::get;
    use tokio::sync::Notify;

    let (asked, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let calls = Arc::new(AtomicU32::new(0));
    // The catalog: its first answer, quantity 100, is held back until the push of 95 has
    // arrived; after it, it fails.
    let catalog = {
        let (asked, release, calls) = (asked.clone(), release.clone(), calls.clone());
        Router::new().route(
            "/stocks/{name}",
            get(move || async move {
                if calls.fetch_add(1, Ordering::SeqCst) > 0 {
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
                asked.notify_one();
                release.notified().await;
                let old = serde_json::json!({"name": "GameStart", "price": 15.99, "quantity": 100});
                axum::Json(serde_json::json!({ "data": old })).into_response()
            }),
        )
    };
    let (address, served) = serve(catalog).await;
    let state = lone_state(&["--catalog-url", &format!("http://{address}")]);
    state.inner.catalog_contact.renewed_now();
    let app = router(state);
    let lookup = || {
        app.clone().oneshot(
            Request::get("/stocks/GameStart")
                .body(Body::empty())
                .unwrap(),
        )
    };

    let first = tokio::spawn(lookup());
    tokio::time::timeout(std::time::Duration::from_secs(30), asked.notified())
        .await
        .expect("the backend was asked");
    let push =
        r#"{"names":["GameStart"],"stocks":[{"name":"GameStart","price":16.5,"quantity":95}]}"#;
    let pushed = app
        .clone()
        .oneshot(insider_post("/invalidate", push))
        .await
        .unwrap();
    assert!(pushed.status().is_success(), "{}", pushed.status());
    release.notify_one();
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    let stale = lookup().await.unwrap();
    assert_eq!(stale.status(), StatusCode::OK);
    let body = stale.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["stale"], true, "{body}");
    assert_eq!(body["data"]["quantity"], 95, "{body}");
    served.abort();
}

/// A change to the users that reached the catalog and was not answered may have been made: 504,
/// not 503, which says it was not; so may one answered by something else on the way (a proxy's
/// 502 without the catalog's envelope). A change the catalog never got is 503.
#[tokio::test]
async fn a_catalog_write_without_an_answer_is_504_and_one_never_sent_503() {
    use axum::routing::{delete, get};
    use stocknet_common::api_key::ApiKey;

    let key = ApiKey::generate(1).unwrap();
    let catalog = |revoke: axum::routing::MethodRouter| {
        let record = holder_of(&key);
        Router::new()
            .route("/users/{id}/keys/{key_id}", revoke)
            .route(
                "/users/{id}",
                get(move || async move { axum::Json(serde_json::json!({ "data": record })) }),
            )
    };
    let (address, served) = serve(catalog(delete(std::future::pending::<()>))).await;
    let hung = format!("http://{address}");
    let proxy_error = || async { (StatusCode::BAD_GATEWAY, "upstream connect error") };
    let (address, proxied) = serve(catalog(delete(proxy_error))).await;
    let behind_a_proxy = format!("http://{address}");
    for (catalog_url, expected) in [
        (hung.as_str(), StatusCode::GATEWAY_TIMEOUT),
        (behind_a_proxy.as_str(), StatusCode::GATEWAY_TIMEOUT),
        ("http://127.0.0.1:9", StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let state = lone_state(&["--catalog-url", catalog_url]);
        state.inner.catalog_contact.renewed_now();
        state.inner.credentials.keep(holder_of(&key));
        let request = Request::delete("/users/1/keys/1")
            .header("authorization", format!("Bearer {}", key.reveal()))
            .body(Body::empty())
            .unwrap();
        let (status, body) = stocknet_common::testing::send(&router(state), request).await;
        assert_eq!(status, expected, "{catalog_url}: {body}");
        assert_eq!(body["error"]["code"], expected.as_u16());
    }
    served.abort();
    proxied.abort();
}

/// A read with a key of `user` the catalog never made, from `from`.
fn made_up_key_from(user: u64, from: std::net::SocketAddr) -> Request<Body> {
    let key = stocknet_common::api_key::ApiKey::generate(user).unwrap();
    read_with_key_from(&key, from)
}

/// A read with `key`, from `from`.
fn read_with_key_from(
    key: &stocknet_common::api_key::ApiKey,
    from: std::net::SocketAddr,
) -> Request<Body> {
    let mut request = Request::get("/openapi.json")
        .header("authorization", format!("Bearer {}", key.reveal()))
        .body(Body::empty())
        .unwrap();
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(from));
    request
}

/// A user over their own rate spends nothing of what the users at their address share: another
/// user there is still admitted.
#[tokio::test]
async fn a_user_over_their_limit_leaves_the_others_at_their_address_theirs() {
    use std::net::SocketAddr;

    use stocknet_common::api_key::ApiKey;

    let state = lone_state(&["--rate-limit", "1", "--rate-burst", "1"]);
    state.inner.catalog_contact.renewed_now();
    let keys = two_users_kept(&state);
    let app = router(state);
    let from: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let ask = |key: &ApiKey| app.clone().oneshot(read_with_key_from(key, from));
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(ask(&keys[0]).await.unwrap().status());
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert_eq!(ask(&keys[1]).await.unwrap().status(), StatusCode::OK);
}

/// Under limits, keys of users this frontend keeps nothing for cost their address a request
/// before the catalog is asked about them: made-up keys are refused 429 once the address is
/// over its limit, without a call to the catalog each.
#[tokio::test]
async fn made_up_keys_are_limited_by_their_address_before_the_catalog_is_asked() {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use axum::routing::get;

    let asked = Arc::new(AtomicU32::new(0));
    let counter = asked.clone();
    let catalog = Router::new().route(
        "/users/{id}",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { stocknet_common::ApiError::new(StatusCode::NOT_FOUND, "User not found") }
        }),
    );
    let (address, served) = serve(catalog).await;
    let catalog_url = format!("http://{address}");
    let state = lone_state(&[
        "--catalog-url",
        &catalog_url,
        "--rate-limit",
        "1",
        "--rate-burst",
        "2",
    ]);
    state.inner.catalog_contact.renewed_now();
    let app = router(state);
    let from: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let mut statuses = Vec::new();
    for user in 1..=10 {
        let request = made_up_key_from(user, from);
        statuses.push(app.clone().oneshot(request).await.unwrap().status());
    }
    let refused = statuses
        .iter()
        .filter(|&&s| s == StatusCode::UNAUTHORIZED)
        .count();
    assert!(
        statuses[..2].iter().all(|&s| s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert_eq!(asked.load(Ordering::SeqCst) as usize, refused);
    served.abort();
}

/// A price stream starts with the catalog's snapshot; a catalog that hangs closes the stream
/// with 1013 (try again) within the snapshot's deadline, not the HTTP client's 10 s.
#[tokio::test]
async fn a_price_stream_whose_catalog_hangs_closes_within_the_snapshot_deadline() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    let catalog = Router::new().route("/snapshot", axum::routing::get(std::future::pending::<()>));
    let (address, catalog) = serve(catalog).await;
    let state = lone_state(&["--catalog-url", &format!("http://{address}")]);
    let (frontend, served) = serve(router(state)).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{frontend}/ws/prices"))
        .await
        .unwrap();
    let bound = upstream::catalog::SNAPSHOT_TIMEOUT + std::time::Duration::from_secs(3);
    let first = tokio::time::timeout(bound, socket.next()).await;
    assert!(
        matches!(&first, Ok(Some(Ok(Message::Close(Some(frame))))) if frame.code == CloseCode::Again),
        "{first:?}"
    );
    served.abort();
    catalog.abort();
}

/// A stream without parameters refuses any, before the upgrade: `/ws/trades?name=X` must not
/// stream every stock's trades as if it were filtered.
#[tokio::test]
async fn a_stream_without_parameters_refuses_a_query_parameter() {
    for path in [
        "/ws/trades?name=GameStart",
        "/ws/prices?x=1",
        "/ws/book/GameStart?depth=10",
    ] {
        let request = Request::get(path)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(Body::empty())
            .unwrap();
        let (status, body) = stocknet_common::testing::send(&app(), request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["error"]["code"], 400, "{path}: {body}");
    }
}

/// The first message of a new `/ws/trades` socket at `frontend` after a ping: a pong if the
/// stream was let open, its close frame if not.
async fn first_answer_to_a_ping(
    frontend: std::net::SocketAddr,
) -> tokio_tungstenite::tungstenite::Message {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{frontend}/ws/trades"))
        .await
        .unwrap();
    socket.send(Message::Ping(Vec::new().into())).await.unwrap();
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), socket.next()).await;
    first
        .expect("an answer in time")
        .expect("a message")
        .unwrap()
}

/// A frontend with `flags` served on a free port, and a `/ws/trades` stream open on it.
async fn serving_a_stream(
    flags: &[&str],
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) {
    let (frontend, served) = serve(router(lone_state(flags))).await;
    let (open, _) = tokio_tungstenite::connect_async(format!("ws://{frontend}/ws/trades"))
        .await
        .unwrap();
    (frontend, served, open)
}

/// Streams beyond `--max-streams`, or beyond `--max-streams-per-client` from one address, are
/// closed at once with 1013 (try again later), and a place that a closed stream leaves is
/// taken again: open streams cannot pile up without bound, nor one client take every place.
#[tokio::test]
async fn streams_over_the_cap_are_closed_with_1013_until_a_place_is_free() {
    for cap in ["--max-streams", "--max-streams-per-client"] {
        streams_over(cap).await;
    }
}

async fn streams_over(cap: &str) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    let (frontend, served, mut open) = serving_a_stream(&[cap, "1"]).await;
    open.send(Message::Ping(Vec::new().into())).await.unwrap();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(30), open.next()).await;
    assert!(
        matches!(answer, Ok(Some(Ok(Message::Pong(_))))),
        "{answer:?}"
    );
    let over = first_answer_to_a_ping(frontend).await;
    assert!(
        matches!(&over, Message::Close(Some(frame)) if frame.code == CloseCode::Again),
        "{cap}: {over:?}"
    );
    open.close(None).await.unwrap();
    within_5_s("the place to come back", || async {
        matches!(first_answer_to_a_ping(frontend).await, Message::Pong(_))
    })
    .await;
    served.abort();
}

/// Waits until `check` holds, asking every 25 ms, and fails the test after 5 s.
async fn within_5_s<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "waited 5 s for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// An address may create `--new-users-per-minute` users, whatever the other limits (off
/// here): each is a write the catalog keeps for good, and `POST /users` needs no key. Over it,
/// 429 with Retry-After, before the catalog is asked.
#[tokio::test]
async fn an_address_creates_a_bounded_number_of_users_a_minute() {
    let (frontend, served) = serve(router(lone_state(&["--new-users-per-minute", "2"]))).await;
    let http = reqwest::Client::new();
    let create = || http.post(format!("http://{frontend}/users")).send();
    // Refused for what they are, these count for nothing.
    for _ in 0..3 {
        let malformed = http
            .post(format!("http://{frontend}/users"))
            .body(r#"{"display_name":""}"#)
            .send();
        assert_eq!(malformed.await.unwrap().status(), StatusCode::BAD_REQUEST);
    }
    // No catalog runs: the two admitted are 503, not executed.
    for _ in 0..2 {
        assert_eq!(
            create().await.unwrap().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    let third = create().await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = third.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&wait), "{wait}");
    // Other routes are not counted.
    let docs = http.get(format!("http://{frontend}/openapi.json")).send();
    assert_eq!(docs.await.unwrap().status(), StatusCode::OK);
    served.abort();
}

/// With `--max-in-flight`, an open stream is not a request in flight (the stream caps count
/// it): a client with a stream open for hours is not refused its requests.
#[tokio::test]
async fn an_open_stream_is_not_a_request_in_flight() {
    let (frontend, served, _open) = serving_a_stream(&["--max-in-flight", "1"]).await;
    let docs = format!("http://{frontend}/openapi.json");
    assert_eq!(reqwest::get(&docs).await.unwrap().status(), StatusCode::OK);
    served.abort();
}

/// With `--max-in-flight`, a request counts in flight until it is answered, not only until
/// its handler has what it takes from the request: an order the leader holds keeps its
/// client's place.
#[tokio::test]
async fn a_request_counts_in_flight_until_it_is_answered() {
    use axum::routing::{get, post};
    use stocknet_common::wire::Health;

    let health = Health {
        node_id: 1,
        term: 1,
        leader: Some(1),
        ready: true,
        last_transaction: 0,
        applied: 0,
        leading: true,
    };
    let (asked, holds) = holding();
    let leader = Router::new()
        .route(
            "/health",
            get(move || async move { stocknet_common::data(health) }),
        )
        .route("/orders", post(holds));
    let (address, leader) = serve(leader).await;
    let replica = format!("1=http://{address}");
    let state = lone_state(&["--max-in-flight", "1", "--order-replicas", &replica]);
    state.inner.catalog_contact.renewed_now();
    let app = router(state);
    let from =
        axum::extract::ConnectInfo("192.0.2.8:40000".parse::<std::net::SocketAddr>().unwrap());
    let mut order = Request::post("/orders")
        .body(Body::from(
            r#"{"name":"GameStart","quantity":1,"type":"buy"}"#,
        ))
        .unwrap();
    order.extensions_mut().insert(from);
    let order = tokio::spawn(app.clone().oneshot(order));
    tokio::time::timeout(std::time::Duration::from_secs(30), asked.notified())
        .await
        .expect("the backend was asked");
    let mut docs = Request::get("/openapi.json").body(Body::empty()).unwrap();
    docs.extensions_mut().insert(from);
    let docs = app.oneshot(docs).await.unwrap();
    assert_eq!(docs.status(), StatusCode::TOO_MANY_REQUESTS);
    order.abort();
    leader.abort();
}

/// A backend's handler that never answers, and what tells the test it was asked.
fn holding() -> (
    std::sync::Arc<tokio::sync::Notify>,
    impl Fn() -> std::future::Pending<()> + Clone + Send + Sync + 'static,
) {
    let asked = std::sync::Arc::new(tokio::sync::Notify::new());
    let told = asked.clone();
    let holds = move || {
        told.notify_one();
        std::future::pending::<()>()
    };
    (asked, holds)
}

/// A client message longer than a stream takes ends the socket, instead of being gathered
/// (up to 64 MiB a message, the WebSocket library's default) and then ignored.
#[tokio::test]
async fn a_stream_ends_a_socket_whose_client_sends_an_oversized_message() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let (frontend, served) = serve(router(lone_state(&[]))).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{frontend}/ws/trades"))
        .await
        .unwrap();
    let oversized = "x".repeat(crate::streams::CLIENT_MESSAGE_LIMIT + 1);
    socket.send(Message::Text(oversized.into())).await.unwrap();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert_eq!(ended, Ok(true), "the socket stayed open");
    served.abort();
}

/// Order replica 1 as its health check answers: leading term 1, at entry 10.
fn leading_replica() -> Router {
    use axum::routing::get;
    use stocknet_common::wire::Health;

    let health = Health {
        node_id: 1,
        term: 1,
        leader: Some(1),
        ready: true,
        last_transaction: 10,
        applied: 10,
        leading: true,
    };
    Router::new().route(
        "/health",
        get(move || async move { stocknet_common::data(health) }),
    )
}

/// A user's order stream keeps one poll of the leader in flight, whatever the client sends
/// meanwhile: each frame used to drop the poll and start another, a new connection to the
/// leader per ping (I13).
#[tokio::test]
async fn an_order_stream_polls_the_leader_once_however_many_frames_its_client_sends() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use axum::routing::get;
    use futures::{SinkExt, StreamExt};
    use stocknet_common::api_key::ApiKey;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    let polls = Arc::new(AtomicU32::new(0));
    let counter = polls.clone();
    // The leader: it holds every poll of the feed open.
    let leader = leading_replica().route(
        "/feed/orders",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>()
        }),
    );
    let (address, leader) = serve(leader).await;
    let replica = format!("1=http://{address}");
    let state = lone_state(&["--order-replicas", &replica]);
    state.inner.catalog_contact.renewed_now();
    let key = ApiKey::generate(7).unwrap();
    state.inner.credentials.keep(holder_of(&key));
    let (frontend, served) = serve(router(state)).await;

    let mut request = format!("ws://{frontend}/ws/orders")
        .into_client_request()
        .unwrap();
    let bearer = format!("Bearer {}", key.reveal()).parse().unwrap();
    request.headers_mut().insert("authorization", bearer);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next()).await;
    assert!(
        matches!(&first, Ok(Some(Ok(Message::Text(text)))) if text.contains("subscribed")),
        "{first:?}"
    );
    // A client that sends something every 20 ms, as a chatty one would.
    for n in 0..25 {
        let text = Message::Text(n.to_string().into());
        socket.send(text).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Answered once the frontend has read every message before it.
    socket.send(Message::Ping(Vec::new().into())).await.unwrap();
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next()).await;
        match message {
            Ok(Some(Ok(Message::Pong(_)))) => break,
            Ok(Some(Ok(_))) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(
        polls.load(Ordering::SeqCst) <= 2,
        "{} polls",
        polls.load(Ordering::SeqCst)
    );
    served.abort();
    leader.abort();
}

/// A key revoked while an order stream's first check of it waits for the catalog (whose
/// answer predates the revocation's push) is checked again before the stream sends anything:
/// the client is refused, not subscribed to the user's orders.
#[tokio::test]
async fn an_order_stream_whose_key_is_revoked_during_its_first_check_is_refused() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use axum::routing::get;
    use futures::{SinkExt, StreamExt};
    use stocknet_common::api_key::ApiKey;
    use stocknet_common::ApiError;
    use tokio_tungstenite::tungstenite::Message;

    let (address, leader) = serve(leading_replica()).await;
    let replica = format!("1=http://{address}");
    let catalog_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let catalog_url = format!("http://{}", catalog_listener.local_addr().unwrap());
    let state = lone_state(&["--order-replicas", &replica, "--catalog-url", &catalog_url]);
    state.inner.catalog_contact.renewed_now();
    let key = ApiKey::generate(7).unwrap();
    // The catalog: the revocation's push reaches the frontend while the first check is
    // answered with the record from before it; asked again, the key is gone.
    let asked = Arc::new(AtomicU32::new(0));
    let catalog = {
        let (state, holder, asked) = (state.clone(), holder_of(&key), asked.clone());
        Router::new().route(
            "/users/{id}",
            get(move || async move {
                if asked.fetch_add(1, Ordering::SeqCst) > 0 {
                    return ApiError::new(StatusCode::NOT_FOUND, "no such user").into_response();
                }
                state.inner.credentials.forget(&[7]);
                stocknet_common::data(holder).into_response()
            }),
        )
    };
    let catalog = tokio::spawn(async move { axum::serve(catalog_listener, catalog).await });
    let (frontend, served) = serve(router(state)).await;

    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{frontend}/ws/orders"))
        .await
        .unwrap();
    let hello = format!(r#"{{"api_key": "{}"}}"#, key.reveal());
    socket.send(Message::Text(hello.into())).await.unwrap();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next()).await;
    assert!(
        matches!(&first, Ok(Some(Ok(Message::Close(Some(frame))))) if u16::from(frame.code) == 1008),
        "{first:?}"
    );
    assert_eq!(
        asked.load(Ordering::SeqCst),
        2,
        "checked again after the push"
    );
    for task in [served, leader, catalog] {
        task.abort();
    }
}

/// A price stream opened after this frontend missed pushes (while no stream was open, so
/// nobody caught up on them) starts from the catalog's snapshot, and a later change back to
/// the value sent before the missed ones is sent: it is news to the stream. Not from the
/// snapshot of a catalog behind since a power loss (its stocks may be older than those sent):
/// that stream is closed with 1013 (try again).
#[tokio::test]
async fn a_price_stream_hears_a_change_back_to_a_value_sent_before_pushes_it_missed() {
    use axum::routing::get;
    use futures::StreamExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use stocknet_common::model::{Price, Stock};
    use stocknet_common::wire::{AsOf, Snapshot};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    let stock = |quantity| Stock {
        name: "GameStart".into(),
        price: Price::from_cents(1500),
        quantity,
    };
    let as_of = |applied| AsOf { boot: 1, applied };
    // The catalog has applied a buy of 1 whose push this frontend missed.
    let snapshot = Snapshot {
        applied: 6,
        term: 1,
        stocks: vec![stock(99)],
        boot: 1,
        behind: false,
    };
    let behind = std::sync::Arc::new(AtomicBool::new(true));
    let catalog_behind = behind.clone();
    let catalog = Router::new().route(
        "/snapshot",
        get(move || {
            let snapshot = Snapshot {
                behind: catalog_behind.load(Ordering::Acquire),
                ..snapshot.clone()
            };
            async move { stocknet_common::data(snapshot) }
        }),
    );
    let (address, catalog) = serve(catalog).await;
    let catalog_url = format!("http://{address}");
    let state = lone_state(&["--catalog-url", &catalog_url]);
    state.inner.catalog_contact.renewed_now();
    // Sent to the streams before: 100 shares.
    let streams = &state.inner.streams;
    streams.publish_prices(vec![stock(100)], Some(as_of(5)));
    let (frontend, served) = serve(router(state.clone())).await;
    let connect = || tokio_tungstenite::connect_async(format!("ws://{frontend}/ws/prices"));
    let within = std::time::Duration::from_secs(10);

    let (mut socket, _) = connect().await.unwrap();
    let first = tokio::time::timeout(within, socket.next()).await;
    assert!(
        matches!(&first, Ok(Some(Ok(Message::Close(Some(frame))))) if frame.code == CloseCode::Again),
        "{first:?}"
    );
    behind.store(false, Ordering::Release);
    let (mut socket, _) = connect().await.unwrap();
    let snapshot = tokio::time::timeout(within, socket.next()).await;
    assert!(
        matches!(&snapshot, Ok(Some(Ok(Message::Text(text)))) if text.contains("\"quantity\":99")),
        "{snapshot:?}"
    );
    // A sell of 1 takes it back to 100.
    streams.publish_prices(vec![stock(100)], Some(as_of(7)));
    let price = tokio::time::timeout(within, socket.next()).await;
    assert!(
        matches!(&price, Ok(Some(Ok(Message::Text(text)))) if text.contains("\"quantity\":100")),
        "{price:?}"
    );
    served.abort();
    catalog.abort();
}

/// Users' changes the catalog refuses for want of a turn (503: its users' file takes one at a
/// time) do not open the breaker: a burst of registrations from anybody would otherwise stop
/// every order of this frontend (I13).
#[tokio::test]
async fn refused_users_changes_do_not_open_the_catalog_breaker() {
    use axum::routing::post;
    use stocknet_common::ApiError;

    let busy = || async {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "The users' file is busy: nothing was changed, try again",
        )
        .into_response()
    };
    let (address, catalog) = serve(Router::new().route("/users", post(busy))).await;
    let catalog_url = format!("http://{address}");
    let state = lone_state(&["--catalog-url", &catalog_url]);
    let app = router(state.clone());
    for _ in 0..5 {
        let request = insider_post("/users", "");
        let answer = app.clone().oneshot(request).await.unwrap();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let breaker = state.inner.catalog_breaker.view(std::time::Instant::now());
    assert_eq!(breaker.state, "closed");
    assert!(state.inner.catalog_breaker.admit().is_ok());
    catalog.abort();
}

/// Checking a key the frontend keeps nothing for counts in flight against the address while
/// the catalog is asked: with one request in flight allowed, a second made-up key waits for
/// nobody, it is 429 at once.
#[tokio::test]
async fn made_up_keys_count_in_flight_against_their_address_while_the_catalog_is_asked() {
    use std::net::SocketAddr;

    use axum::routing::get;

    let (asked, holds) = holding();
    let catalog = Router::new().route("/users/{id}", get(holds));
    let (address, served) = serve(catalog).await;
    let catalog_url = format!("http://{address}");
    let state = lone_state(&["--catalog-url", &catalog_url, "--max-in-flight", "1"]);
    state.inner.catalog_contact.renewed_now();
    let app = router(state);
    let from: SocketAddr = "192.0.2.8:40000".parse().unwrap();
    let with_key = |user| app.clone().oneshot(made_up_key_from(user, from));
    let first = tokio::spawn(with_key(1));
    tokio::time::timeout(std::time::Duration::from_secs(30), asked.notified())
        .await
        .expect("the backend was asked");
    let second = with_key(2).await.unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    first.abort();
    served.abort();
}

/// `GET /cluster` shows the catalog's health as it answers now: a catalog that waits for the
/// order leader after a power loss of its machine says so (its lookups answer 503 meanwhile).
#[tokio::test]
async fn the_cluster_view_shows_a_catalog_behind_after_a_power_loss() {
    use axum::routing::get;
    use stocknet_common::wire::{CatalogHealth, PushMark};

    let health = CatalogHealth {
        service: "catalog".into(),
        applied: 7,
        term: 2,
        pushes: PushMark {
            boot: 1,
            sequence: 0,
        },
        lease: true,
        behind: true,
    };
    let catalog = Router::new().route(
        "/health",
        get(move || {
            let health = health.clone();
            async move { stocknet_common::data(health) }
        }),
    );
    let (address, catalog) = serve(catalog).await;
    let state = lone_state(&["--catalog-url", &format!("http://{address}")]);
    let request = Request::get("/cluster").body(Body::empty()).unwrap();
    let (status, view) = stocknet_common::testing::send(&router(state), request).await;
    assert_eq!(status, StatusCode::OK);
    let seen = &view["data"]["catalog"];
    assert_eq!(
        (&seen["up"], &seen["applied"]),
        (&Value::Bool(true), &Value::from(7))
    );
    assert_eq!(seen["behind"], true, "{view}");
    catalog.abort();
}

/// A catalog catching up after a power loss answers lookups 503 with the reason `catching_up`:
/// the frontend serves the last value it saw, marked stale, and its breaker does not count
/// those answers (orders go on, and they catch the catalog up). Another 503 counts.
#[tokio::test]
async fn a_catalog_catching_up_is_served_around_and_not_counted_against_the_breaker() {
    use axum::routing::get;
    use stocknet_common::model::{Price, Stock};
    use stocknet_common::wire::{AsOf, CATCHING_UP};
    use stocknet_common::ApiError;

    for (reason, counted) in [(Some(CATCHING_UP), false), (None, true)] {
        let catalog = Router::new().route(
            "/stocks/{name}",
            get(move || async move {
                let error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not now");
                match reason {
                    Some(reason) => error.with("reason", reason),
                    None => error,
                }
                .into_response()
            }),
        );
        let (address, catalog) = serve(catalog).await;
        let state = lone_state(&["--catalog-url", &format!("http://{address}")]);
        let seen = Stock {
            name: "GameStart".into(),
            price: Price::from_cents(1500),
            quantity: 97,
        };
        let as_of = AsOf {
            boot: 1,
            applied: 3,
        };
        state.inner.remember_pushed(&[seen], Some(as_of));
        let app = router(state.clone());
        for _ in 0..upstream::breaker::FAILURES + 1 {
            let lookup = Request::get("/stocks/GameStart")
                .body(Body::empty())
                .unwrap();
            let (status, body) = stocknet_common::testing::send(&app, lookup).await;
            assert_eq!(status, StatusCode::OK, "{reason:?}: {body}");
            assert_eq!(body["stale"], true, "{reason:?}: {body}");
            assert_eq!(body["data"]["quantity"], 97);
        }
        let view = state.inner.catalog_breaker.view(std::time::Instant::now());
        let opened = view.state == "open";
        assert_eq!(opened, counted, "{reason:?}: {view:?}");
        catalog.abort();
    }
}
