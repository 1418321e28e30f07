//! The catalog's router without a socket: lookups, applying trades in order, users and keys,
//! and the invalidation push to a recording frontend.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use stocknet_common::testing::{
    assert_each_answered, insider_get, insider_post, send, send_raw, SECRET,
};
use stocknet_common::wire::{Invalidation, UserRecord};
use stocknet_common::{data, Json, Secret, SecretArgs};

use super::*;

/// A catalog of the built-in stocks in `dir`, which pushes invalidations to `frontends`.
fn state(dir: &std::path::Path, frontends: &[String]) -> AppState {
    let frontends = frontends.iter().map(|url| url.parse().unwrap()).collect();
    let store = CatalogStore::open(dir.join("catalog.csv"), DEFAULT_CATALOG).unwrap();
    let users = UserStore::open(dir.join("users.csv")).unwrap();
    AppState::new(store, users, frontends, secret())
}

fn app(dir: &std::path::Path) -> Router {
    router(state(dir, &[]))
}

fn secret() -> Secret {
    Secret::new(SECRET).unwrap()
}

/// A `GET` without credentials.
fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
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
        send(&app, insider_get("/users/1")).await.0,
        StatusCode::NOT_FOUND,
        "the refused call registered nobody"
    );

    let (status, created) = send(&app, insider_post("/users", &body)).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_eq!(created["data"]["id"], 1);
    let (_, second) = send(&app, insider_post("/users", &body)).await;
    assert_eq!(second["data"]["id"], 2);
    let (status, read) = send(&app, insider_get("/users/1")).await;
    assert_eq!(status, StatusCode::OK);
    let stored: UserRecord = serde_json::from_value(read["data"].clone()).unwrap();
    assert!(stored.admits(&key.clone().with_user(1)));

    let named = json!({"credential": credential, "prefix": "00", "display_name": "Ada"});
    let (_, third) = send(&app, insider_post("/users", &named.to_string())).await;
    assert_eq!(third["data"]["display_name"], "Ada");
    let bad = [
        r#"{"credential":"00:11"}"#,
        r#"{"credential":"x","admin":true}"#,
        "{}",
        &json!({"credential": credential, "prefix": "00", "display_name": "A\nda"}).to_string(),
    ]
    .map(|body| insider_post("/users", body));
    assert_each_answered(&app, bad, StatusCode::BAD_REQUEST).await;
    for (uri, status) in [
        ("/users/9", StatusCode::NOT_FOUND),
        ("/users/x", StatusCode::NOT_FOUND),
    ] {
        assert_eq!(send(&app, insider_get(uri)).await.0, status, "{uri}");
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
        send(&app, insider_post("/apply", body)).await.0,
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
    let bad = [
        "/stocks?limit=0",
        "/stocks?limit=1001",
        "/stocks?cursor=zz",
        "/stocks?sort=name",
    ]
    .map(get);
    assert_each_answered(&app, bad, StatusCode::BAD_REQUEST).await;
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
    // The request's id is adopted around routing, as `serve` does.
    let (status, body) = send(
        &stocknet_common::server::around_routes(app),
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
    let (status, reply) = send(&app, insider_post("/apply", body)).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["data"]["applied"], 1);
    let overdraw = r#"{"term":1,"trades":[{"number":2,"name":"GameStart","delta":-61}]}"#;
    let (status, reply) = send(&app, insider_post("/apply", overdraw)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(reply["error"]["message"], "Insufficient stock quantity");
    let (_, body) = send(&app, get("/stocks/GameStart")).await;
    assert_eq!(body["data"]["quantity"], 60);
    // A trade with a field the catalog does not know (a misspelt price) changes nothing.
    let misspelt =
        r#"{"term":1,"trades":[{"number":2,"name":"GameStart","delta":-1,"prize":17.5}]}"#;
    let (status, reply) = send(&app, insider_post("/apply", misspelt)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
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
        frontends: Frontends::default(),
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

type Pushes = Arc<std::sync::Mutex<Vec<Invalidation>>>;

/// A stand-in frontend on 127.0.0.1 that records the pushes it gets.
async fn recording_frontend() -> (u16, Pushes) {
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
    (serve_frontend(app).await, seen)
}

/// Serves `frontend` (a stand-in for a frontend's push route) on a free port of 127.0.0.1, and
/// a catalog in `dir` that pushes to it only.
async fn pushing_to(frontend: Router, dir: &std::path::Path) -> Router {
    let port = serve_frontend(frontend).await;
    router(state(dir, &[format!("http://127.0.0.1:{port}")]))
}

/// Serves `frontend` on a free port of 127.0.0.1, which it returns.
async fn serve_frontend(frontend: Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, frontend).await });
    port
}

/// A catalog in `dir` that pushes to a [`recording_frontend`], and what that records.
async fn pushing_to_a_recorder(dir: &std::path::Path) -> (Router, Pushes) {
    let (port, seen) = recording_frontend().await;
    (
        router(state(dir, &[format!("http://127.0.0.1:{port}")])),
        seen,
    )
}

/// Each stock's quantity as every push so far carried it, in name order.
fn quantities_told(seen: &Pushes) -> Vec<(String, u64)> {
    let pushes = seen.lock().unwrap();
    let mut told: Vec<(String, u64)> = pushes
        .iter()
        .flat_map(|push| push.stocks.iter().map(|s| (s.name.clone(), s.quantity)))
        .collect();
    told.sort();
    told
}

/// Each push carries its number, and `/health` tells the last one: a frontend that is told a
/// number it did not get knows it missed a push.
#[tokio::test]
async fn pushes_are_numbered_and_health_tells_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let (app, seen) = pushing_to_a_recorder(dir.path()).await;
    let take_over = insider_post("/apply", r#"{"term":1,"trades":[]}"#);
    assert_eq!(send(&app, take_over).await.0, StatusCode::OK);
    let body = r#"{"term":1,"trades":[{"number":1,"name":"GameStart","delta":-1}]}"#;
    assert_eq!(
        send(&app, insider_post("/apply", body)).await.0,
        StatusCode::OK
    );
    let marks: Vec<_> = seen.lock().unwrap().iter().map(|push| push.mark).collect();
    let boot = marks[0].expect("numbered").boot;
    let sequences: Vec<_> = marks.iter().map(|mark| mark.map(|m| m.sequence)).collect();
    assert_eq!(sequences, [Some(1), Some(2)]);
    assert!(marks
        .iter()
        .all(|mark| mark.is_some_and(|m| m.boot == boot)));
    let (status, health) = send(&app, get("/health")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        health["data"]["pushes"],
        json!({ "boot": boot, "sequence": 2 })
    );
}

/// A frontend that answered a push and refused it (its secret is another) goes on trusting
/// what it cached until its lease runs out: the write that pushed is answered only after that.
#[tokio::test]
async fn a_write_whose_push_a_frontend_refused_is_answered_after_the_lease() {
    use stocknet_common::wire::CACHE_LEASE;

    let refusing = Router::new().route("/invalidate", post(|| async { StatusCode::UNAUTHORIZED }));
    let dir = tempfile::tempdir().unwrap();
    let app = pushing_to(refusing, dir.path()).await;
    let started = std::time::Instant::now();
    let take_over = insider_post("/apply", r#"{"term":1,"trades":[]}"#);
    assert_eq!(send(&app, take_over).await.0, StatusCode::OK);
    assert!(started.elapsed() >= CACHE_LEASE, "{:?}", started.elapsed());
    // Refused for a lease, with no other process probing: nothing there trusts a cache, and
    // it gets a trial nobody waits for.
    let trade = r#"{"term":1,"trades":[{"number":1,"name":"GameStart","delta":-1}]}"#;
    let (status, answer) = send(&app, insider_post("/apply", trade)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// A take-over's push of every stock goes in parts a frontend takes (its body limit is
/// 4 MiB): a catalog of many stocks in one push would be refused by every frontend.
#[tokio::test]
async fn the_push_of_every_stock_goes_in_parts_every_frontend_takes() {
    let dir = tempfile::tempdir().unwrap();
    let stocks = 2 * crate::state::STOCKS_PER_PUSH + 5;
    let mut catalog = String::from("name,price,quantity\n");
    for n in 0..stocks {
        catalog.push_str(&format!("Stock{n:06},10.00,100\n"));
    }
    let store = CatalogStore::open(dir.path().join("catalog.csv"), &catalog).unwrap();
    let users = UserStore::open(dir.path().join("users.csv")).unwrap();
    let (port, seen) = recording_frontend().await;
    let frontends = vec![format!("http://127.0.0.1:{port}").parse().unwrap()];
    let app = router(AppState::new(store, users, frontends, secret()));
    let take_over = insider_post("/apply", r#"{"term":1,"trades":[]}"#);
    assert_eq!(send(&app, take_over).await.0, StatusCode::OK);
    let pushes = seen.lock().unwrap().clone();
    assert_eq!(pushes.len(), 3);
    let mut named = std::collections::BTreeSet::new();
    for push in &pushes {
        assert!(push.names.len() <= crate::state::STOCKS_PER_PUSH);
        assert_eq!(push.names.len(), push.stocks.len());
        assert!(serde_json::to_vec(push).unwrap().len() < 4 << 20);
        named.extend(push.names.iter().cloned());
    }
    assert_eq!(named.len(), stocks, "every stock named once");
}

/// When the frontends' name lists a new address, an empty push goes out to it at once, not
/// only with the next write: a frontend refused the lease while it was not listed gets the
/// lease back from a push that reaches it.
#[tokio::test]
async fn a_new_address_in_the_frontends_name_is_pushed_to_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = recording_frontend().await;
    let (second, seen) = recording_frontend().await;
    let state = state(dir.path(), &[]);
    state.resolve(&format!("localhost:{first}")).await;
    assert!(seen.lock().unwrap().is_empty());
    state.resolve(&format!("localhost:{second}")).await;
    let waited = std::time::Instant::now();
    while seen.lock().unwrap().is_empty() && waited.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let pushes = seen.lock().unwrap().clone();
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    assert!(pushes[0].names.is_empty() && pushes[0].mark.is_some());
}

#[tokio::test]
async fn apply_invalidates_every_named_stock_at_frontends_found_by_dns() {
    let dir = tempfile::tempdir().unwrap();
    let (port, seen) = recording_frontend().await;
    let state = state(dir.path(), &[]);
    state.resolve(&format!("localhost:{port}")).await;
    // A lookup that fails keeps the frontends found last: pushes still reach them.
    state.resolve("nothing.invalid:1").await;
    let app = router(state);
    // The leader of term 1 takes over (which invalidates everything: below).
    let take_over = insider_post("/apply", r#"{"term":1,"trades":[]}"#);
    assert_eq!(send(&app, take_over).await.0, StatusCode::OK);
    seen.lock().unwrap().clear();
    let body = r#"{"term":1,"trades":[{"number":1,"name":"GameStart","delta":-1},
                                        {"number":2,"name":"FishCo","delta":2}]}"#;
    assert_eq!(
        send(&app, insider_post("/apply", body)).await.0,
        StatusCode::OK
    );
    // Resent after a crash: nothing changes, but the stocks are invalidated again.
    assert_eq!(
        send(&app, insider_post("/apply", body)).await.0,
        StatusCode::OK
    );
    // Each push names the stocks and carries their new quantities.
    let pushed = quantities_told(&seen);
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

/// An apply of entries that change no stock (resting orders, cancels, modifies that trade
/// nothing) advances the position with no push and no fsync: the leader's answers do not wait
/// for it. One with a change among them is pushed, resent or not, and synced only where the
/// kernel names no boot (a power loss would otherwise go unnoticed).
#[tokio::test]
async fn entries_that_change_no_stock_are_neither_pushed_nor_synced() {
    let dir = tempfile::tempdir().unwrap();
    let (app, seen) = pushing_to_a_recorder(dir.path()).await;
    let apply = |body: &str| send(&app, insider_post("/apply", body));
    let fsyncs = || async {
        let (_, _, text) = send_raw(&app, get("/metrics")).await;
        let text = String::from_utf8(text.to_vec()).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("stocknet_catalog_fsync_seconds_count"))
            .expect("the fsync histogram");
        line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
    };
    assert_eq!(apply(r#"{"term":1,"trades":[]}"#).await.0, StatusCode::OK);
    let pushed = || seen.lock().unwrap().clone();
    let (pushes, synced) = (pushed().len(), fsyncs().await);
    assert_eq!(synced, 1, "a new term is made durable");

    let quiet = r#"{"term":1,"trades":[{"number":1,"name":"GameStart","delta":0},
                                         {"number":2,"name":"","delta":0}]}"#;
    let (status, body) = apply(quiet).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["applied"], 2);
    assert_eq!(pushed().len(), pushes);
    assert_eq!(fsyncs().await, synced);

    let priced = r#"{"term":1,"trades":[{"number":3,"name":"FishCo","delta":0,"price":9.5},
                                          {"number":4,"name":"GameStart","delta":0}]}"#;
    let syncs_trades = stocknet_common::file::kernel_boot_id().is_none();
    for round in 1..=2 {
        assert_eq!(apply(priced).await.0, StatusCode::OK);
        let pushed = pushed();
        assert_eq!(pushed.len(), pushes + round);
        assert_eq!(
            pushed.last().unwrap().names,
            ["FishCo"],
            "only the stock it changes"
        );
        assert_eq!(
            fsyncs().await,
            synced + if syncs_trades { round as u64 } else { 0 },
            "resent: synced again where trades are"
        );
    }

    // A long run of them still syncs once the journal is due to be compacted, and compacts it.
    let run = |numbers: std::ops::Range<usize>| {
        let trades: Vec<Value> = numbers
            .map(|number| json!({"number": number, "name": "GameStart", "delta": 0}))
            .collect();
        json!({"term": 1, "trades": trades}).to_string()
    };
    let journal = || {
        std::fs::metadata(dir.path().join("catalog.wal"))
            .unwrap()
            .len()
    };
    let synced = fsyncs().await;
    let before = journal();
    let short = 5 + store::COMPACT_EVERY - 100;
    assert_eq!(apply(&run(5..short)).await.0, StatusCode::OK);
    assert!(journal() > before);
    assert_eq!(fsyncs().await, synced, "quiet: no sync");
    assert_eq!(apply(&run(short..short + 100)).await.0, StatusCode::OK);
    assert_eq!(
        (journal(), fsyncs().await),
        (0, synced + 1),
        "synced, then compacted"
    );
}

/// A catalog whose machine restarted since it last wrote may lack trades it acknowledged
/// (answered before their fsync): it answers no lookup and pushes no stock's value until a
/// leader's apply reaches where the leader's book stands; then it pushes every stock.
#[tokio::test]
async fn a_catalog_in_a_new_boot_shows_no_stock_until_a_leader_catches_it_up() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("catalog.kernel-boot"), "an earlier boot\n").unwrap();
    let (app, seen) = pushing_to_a_recorder(dir.path()).await;
    for path in ["/stocks/GameStart", "/stocks"] {
        let (status, body) = send(&app, get(path)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("catching up"), "{path}: {body}");
        // What tells a frontend not to count it against its breaker.
        assert_eq!(body["error"]["reason"], "catching_up", "{path}: {body}");
    }
    let (status, snapshot) = send(&app, insider_get("/snapshot")).await;
    assert_eq!(status, StatusCode::OK, "the leader's take-over reads it");
    assert_eq!(snapshot["data"]["behind"], true);
    let metric = || async {
        let text = send_raw(&app, get("/metrics")).await.2;
        let text = String::from_utf8(text.to_vec()).unwrap();
        text.lines().any(|l| l == "stocknet_catalog_behind 1")
    };
    assert!(metric().await, "the gauge says so");
    let (_, health) = send(&app, get("/health")).await;
    assert_eq!(health["data"]["behind"], true, "and its health");

    let apply = |body: &str| send(&app, insider_post("/apply", body));
    let names_only = |pushed: &[Invalidation], name: &str| {
        let bare = |push: &Invalidation| push.stocks.is_empty() && push.as_of.is_none();
        assert!(pushed.iter().all(bare), "names only: {pushed:?}");
        assert!(pushed
            .iter()
            .any(|push| push.names.contains(&name.to_owned())));
    };
    // A new leader's take-over (every stock dropped), then a trade of its term, both short of
    // where its book stands.
    let take_over = r#"{"term":1,"leader_applied":2,"trades":[]}"#;
    assert_eq!(apply(take_over).await.0, StatusCode::OK);
    names_only(&seen.lock().unwrap().clone(), "FishCo");
    seen.lock().unwrap().clear();
    let part = r#"{"term":1,"leader_applied":2,
                   "trades":[{"number":1,"name":"GameStart","delta":-1}]}"#;
    assert_eq!(apply(part).await.0, StatusCode::OK);
    let pushed = seen.lock().unwrap().clone();
    assert_eq!(pushed.len(), 1, "{pushed:?}");
    names_only(&pushed, "GameStart");
    assert_eq!(
        send(&app, get("/stocks/GameStart")).await.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "short of the leader's book"
    );

    seen.lock().unwrap().clear();
    let rest = r#"{"term":1,"leader_applied":2,
                   "trades":[{"number":2,"name":"FishCo","delta":-2}]}"#;
    assert_eq!(apply(rest).await.0, StatusCode::OK);
    let (status, stock) = send(&app, get("/stocks/GameStart")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stock["data"]["quantity"], 99);
    let told = quantities_told(&seen);
    let (_, snapshot) = send(&app, insider_get("/snapshot")).await;
    assert_eq!(snapshot["data"].get("behind"), None);
    let stocks = snapshot["data"]["stocks"].as_array().unwrap().iter();
    let now: Vec<(String, u64)> = stocks
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["quantity"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(now.contains(&("FishCo".to_owned(), 98)));
    assert_eq!(told, now, "every stock as it is now");
    assert_eq!(send(&app, get("/stocks")).await.0, StatusCode::OK);
    assert!(!metric().await);
    let (_, health) = send(&app, get("/health")).await;
    assert_eq!(health["data"].get("behind"), None);
}

/// A new leader counts what the catalog applied as done, and the last leader's last apply may
/// have been taken without its invalidation finishing (the call dropped with that leader): so
/// the first apply of a new term has every frontend drop every stock before it is answered.
#[tokio::test]
async fn a_new_leaders_first_apply_invalidates_every_stock() {
    let dir = tempfile::tempdir().unwrap();
    let (app, seen) = pushing_to_a_recorder(dir.path()).await;
    let apply = |body: &str| send(&app, insider_post("/apply", body));
    let trade = r#"{"term":1,"trades":[{"number":1,"name":"GameStart","delta":-1}]}"#;
    assert_eq!(apply(trade).await.0, StatusCode::OK);
    seen.lock().unwrap().clear();
    // Leader 1 again, nothing new: nothing to tell.
    assert_eq!(apply(r#"{"term":1,"trades":[]}"#).await.0, StatusCode::OK);
    assert!(seen.lock().unwrap().is_empty());
    // Leader 2 takes over, with nothing the catalog lacks.
    assert_eq!(apply(r#"{"term":2,"trades":[]}"#).await.0, StatusCode::OK);
    let pushes = seen.lock().unwrap().clone();
    let mut named: Vec<&str> = pushes
        .iter()
        .flat_map(|p| &p.names)
        .map(String::as_str)
        .collect();
    named.sort_unstable();
    let store = CatalogStore::open(dir.path().join("catalog.csv"), DEFAULT_CATALOG).unwrap();
    let mut every: Vec<String> = store
        .snapshot()
        .stocks
        .into_iter()
        .map(|s| s.name)
        .collect();
    every.sort_unstable();
    assert_eq!(named, every);
    assert!(pushes.iter().all(|p| !p.all_users));
}

/// A take-over whose push was cut short (its call dropped, as a leader that gave up drops it)
/// has every stock pushed again when the leader retries it, though the store has its term.
#[tokio::test]
async fn a_retried_take_over_whose_push_was_cut_short_is_pushed_again() {
    let seen: Pushes = Arc::default();
    let recorder = seen.clone();
    // The first push hangs; later ones are answered.
    let app = Router::new().route(
        "/invalidate",
        post(move |Json(request): Json<Invalidation>| async move {
            let first = {
                let mut seen = recorder.lock().unwrap();
                seen.push(request);
                seen.len() == 1
            };
            if first {
                std::future::pending::<()>().await;
            }
            data(json!({"success": true}))
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    let app = pushing_to(app, dir.path()).await;
    let take_over = || insider_post("/apply", r#"{"term":1,"trades":[]}"#);

    let cut_short = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        send(&app, take_over()),
    );
    assert!(cut_short.await.is_err(), "the push hangs");
    let (status, _) = send(&app, take_over()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen.lock().unwrap().len(), 2, "pushed again");

    // Once pushed, the term's next applies are not pushed whole again.
    let (status, _) = send(&app, take_over()).await;
    assert_eq!(status, StatusCode::OK);
    let pushes = seen.lock().unwrap().clone();
    assert_eq!(pushes.len(), 2);
    drop(app);
    let every = CatalogStore::open(dir.path().join("catalog.csv"), DEFAULT_CATALOG)
        .unwrap()
        .snapshot()
        .stocks
        .len();
    assert!(pushes.iter().all(|push| push.names.len() == every));
}

#[tokio::test]
async fn a_revoked_key_is_pushed_to_every_frontend_before_the_answer() {
    use stocknet_common::api_key::{ApiKey, Credential};
    let dir = tempfile::tempdir().unwrap();
    let (app, seen) = pushing_to_a_recorder(dir.path()).await;
    let new_key = || {
        let key = ApiKey::generate(1).unwrap();
        let body = json!({"credential": Credential::of(&key).unwrap(), "prefix": key.prefix()});
        (key, body.to_string())
    };
    let (first, body) = new_key();
    send(&app, insider_post("/users", &body)).await;
    let (second, body) = new_key();
    let (status, added) = send(&app, insider_post("/users/1/keys", &body)).await;
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
    // Revoked again: answered as it was, and nobody is told anything new.
    let (status, again) = send(&app, delete("/users/1/keys/1")).await;
    assert_eq!(
        (status, &again["data"]["revoked"]),
        (StatusCode::OK, &revoked["data"]["revoked"])
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "no push for a revocation made before"
    );
    let (_, read) = send(&app, insider_get("/users/1")).await;
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
    let (_, read) = send(&app, insider_get("/users/1")).await;
    let user: UserRecord = serde_json::from_value(read["data"].clone()).unwrap();
    assert!(user.admits(&second.with_user(1)), "still live");
}

/// A revocation whose caller goes away while it is written (a frontend's deadline, a client
/// that hung up) is still pushed: else the key would stay usable on the frontends holding it.
#[tokio::test]
async fn a_revocation_whose_caller_went_away_is_still_pushed() {
    use stocknet_common::api_key::{ApiKey, Credential};
    let dir = tempfile::tempdir().unwrap();
    let (app, seen) = pushing_to_a_recorder(dir.path()).await;
    let key = ApiKey::generate(1).unwrap();
    let body = json!({"credential": Credential::of(&key).unwrap(), "prefix": key.prefix()});
    send(&app, insider_post("/users", &body.to_string())).await;
    let revoke = Request::delete("/users/1/keys/1")
        .header("authorization", format!("Bearer {SECRET}"))
        .body(Body::empty())
        .unwrap();
    // Polled once, up to the write, then dropped: what a closed connection does to a handler.
    let mut answer = Box::pin(send_raw(&app, revoke));
    let first = std::future::poll_fn(|context| {
        std::task::Poll::Ready(answer.as_mut().poll(context).is_pending())
    })
    .await;
    assert!(first, "the revocation was answered at once");
    drop(answer);

    let pushed = || seen.lock().unwrap().iter().any(|push| push.users == [1]);
    let waited = std::time::Instant::now();
    while !pushed() && waited.elapsed() < std::time::Duration::from_secs(10) {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(pushed(), "the revocation was never pushed");
    let (_, read) = send(&app, insider_get("/users/1")).await;
    let user: UserRecord = serde_json::from_value(read["data"].clone()).unwrap();
    assert!(!user.admits(&key.with_user(1)), "revoked");
}

/// A revocation repeated while the first one's push is on its way (a retry after a 504, a
/// second tab) is answered only once that push is done: the frontend it has not reached yet
/// still accepts the key.
#[tokio::test]
async fn a_repeated_revocation_waits_for_the_first_ones_push() {
    use stocknet_common::api_key::{ApiKey, Credential};
    let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let held = release.clone();
    let frontend = Router::new().route(
        "/invalidate",
        post(move |Json(request): Json<Invalidation>| {
            let (arrived, held) = (arrived.clone(), held.clone());
            async move {
                if request.users == [1] {
                    let _ = arrived.send(());
                    let _ = held.acquire().await.map(|permit| permit.forget());
                }
                data(json!({"success": true}))
            }
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    let app = pushing_to(frontend, dir.path()).await;
    for _ in 1..=2 {
        let key = ApiKey::generate(1).unwrap();
        let body = json!({"credential": Credential::of(&key).unwrap(), "prefix": key.prefix()});
        send(&app, insider_post("/users", &body.to_string())).await;
    }
    let revoke_of = |user: u64| {
        let app = app.clone();
        let request = Request::delete(format!("/users/{user}/keys/1"))
            .header("authorization", format!("Bearer {SECRET}"))
            .body(Body::empty())
            .unwrap();
        tokio::spawn(async move { send(&app, request).await })
    };

    let revoke = || revoke_of(1);
    let first = revoke();
    tokio::time::timeout(std::time::Duration::from_secs(10), arrivals.recv())
        .await
        .expect("the revocation is pushed");
    // Another user's change waits for nothing of user 1's.
    let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(10), revoke_of(2))
        .await
        .expect("user 2's revocation is answered while user 1's push is held")
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut second = revoke();
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), &mut second)
            .await
            .is_err(),
        "the repeat was answered before the first revocation's push was done"
    );
    release.add_permits(1);
    for answer in [first, second] {
        let (status, body) = answer.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["data"]["revoked"].is_u64(), "{body}");
    }
    assert!(arrivals.try_recv().is_err(), "the repeat pushed again");
}

#[tokio::test]
async fn bad_requests_get_envelopes() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    for (request, expected) in [
        (insider_post("/apply", "{nope"), StatusCode::BAD_REQUEST),
        (
            insider_post("/apply", r#"{"term":"x"}"#),
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
