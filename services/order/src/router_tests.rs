//! The replica's router without a socket, in a group whose other replicas and catalog are not
//! running.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use stocknet_common::testing::{
    assert_each_answered, insider_get, insider_post, send, send_raw, SECRET,
};
use stocknet_common::wire::{parse_peer, MAX_BATCH, READ_FROM_LEADER, USER};
use stocknet_common::BaseUrl;

use super::*;

/// Replica 1 of a three-replica group whose other replicas and catalog are not running:
/// it never learns of a leader.
async fn app(dir: &std::path::Path) -> Router {
    app_with_catalog(dir, "http://127.0.0.1:9".parse().unwrap()).await
}

/// Replica 1 of a three-replica group whose other replicas are not running, with the catalog
/// at `catalog`.
async fn app_with_catalog(dir: &std::path::Path, catalog: BaseUrl) -> Router {
    let peers = vec![
        parse_peer("1=http://127.0.0.1:9").unwrap(),
        parse_peer("2=http://127.0.0.1:9").unwrap(),
        parse_peer("3=http://127.0.0.1:9").unwrap(),
    ];
    let secret = Secret::new(SECRET).unwrap();
    let links = Links::http(
        internal_client(Duration::from_millis(200), &secret),
        &catalog,
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
        "/candles/GameStart",
        "/portfolios/1",
        "/reports/daily",
        "/audit",
    ] {
        let own = send(&app, insider_get(uri)).await.0;
        assert_ne!(own, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        let mut request = insider_get(uri);
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

/// A position past the end of a replica's log that does not lead may be an entry it lacks
/// yet, or none: it is not the follower's to answer (503), where an answer after a wait
/// would take the position as an entry of the log, and the stream would skip to it.
#[tokio::test]
async fn a_replica_that_does_not_lead_leaves_a_position_past_its_log_to_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let (status, body) = send(&app, insider_get("/feed/orders?user=1&after=9")).await;
    assert_eq!(
        (status, body["error"]["message"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("Not the leader")),
    );
    let (status, body) = send(&app, insider_get("/feed/orders?user=1&after=0&wait_ms=1")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
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
        let (status, body) = send(&app, insider_get(uri)).await;
        assert_eq!(
            (status, &body["data"]),
            (StatusCode::OK, &expected),
            "{uri}"
        );
    }
    let bad = [
        "/portfolios/x",
        "/audit?outcome=maybe",
        "/audit?to=tomorrow",
        "/audit?cursor=x",
        "/audit?limit=0",
        "/audit?colour=red",
        "/reports/daily?date=2026-02-30",
        "/reports/daily?day=2026-11-29",
        "/orders?status=maybe",
        // A refused order is not on the book: listing them would answer nothing, ever.
        "/orders?status=rejected",
        // No order can be under a key no write may carry.
        "/orders?key=",
        "/orders?key=a%20b",
        format!("/orders?key={}", "k".repeat(129)).as_str(),
        "/orders/logs/0?limt=5",
        "/orders/logs/0?limit=0",
    ]
    .map(insider_get);
    assert_each_answered(&app, bad, StatusCode::BAD_REQUEST).await;
    let anonymous = Request::get("/audit").body(Body::empty()).unwrap();
    assert_eq!(send(&app, anonymous).await.0, StatusCode::UNAUTHORIZED);
}

/// The answer lines of `batch`, by the index of their order: one for each.
async fn batch_answers(app: &Router, batch: &Value) -> Vec<Value> {
    let request = insider_post("/orders/batch", &batch.to_string());
    let (status, headers, body) = send_raw(app, request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/x-ndjson");
    let mut answers: Vec<Value> = body
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).unwrap())
        .collect();
    answers.sort_by_key(|answer| answer["index"].as_u64());
    let indexes: Vec<_> = answers.iter().map(|a| a["index"].as_u64()).collect();
    let expected: Vec<_> = (0..batch.as_array().unwrap().len() as u64)
        .map(Some)
        .collect();
    assert_eq!(indexes, expected);
    answers
}

/// Each call of a batch is answered as its own route would have answered it, in order,
/// under its own request id; a batch that is not one is refused whole.
#[tokio::test]
async fn each_call_of_a_batch_gets_its_own_routes_answer_under_its_own_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let place = |quantity: u32, side: &str| json!({"place": {"name": "GameStart", "quantity": quantity, "type": side}});
    let calls = [
        (
            json!({"command": place(0, "buy"), "request_id": "batch-a"}),
            "POST",
            "/orders",
        ),
        (
            json!({"command": place(1, "buy"), "key": "k1", "user": 7, "request_id": "batch-b"}),
            "POST",
            "/orders",
        ),
        (
            json!({"command": place(1, "sell"), "request_id": "has space"}),
            "POST",
            "/orders",
        ),
        (
            json!({"command": {"modify": {"number": 5, "change": {"price": 16.5}}}, "user": 7}),
            "PUT",
            "/orders/5",
        ),
        (
            json!({"command": {"cancel": {"number": 5}}}),
            "DELETE",
            "/orders/5",
        ),
        (
            json!({"command": {"cancel_by_client_order_id": {"client_order_id": "mm-1"}}}),
            "DELETE",
            "/orders?client_order_id=mm-1",
        ),
        (
            json!({"command": {"cancel_by_client_order_id": {"client_order_id": "mm-1"}},
                   "user": 7}),
            "DELETE",
            "/orders?client_order_id=mm-1",
        ),
    ];
    let batch = Value::Array(calls.iter().map(|(call, _, _)| call.clone()).collect());
    let answers = batch_answers(&app, &batch).await;
    // The same call on its own route, with the headers it would carry.
    let single = |call: &Value, method: &str, uri: &str| {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {SECRET}"))
            .header("content-type", "application/json");
        if let Some(user) = call["user"].as_u64() {
            request = request.header(USER, user);
        }
        let command = call["command"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap();
        let body = match method {
            "POST" => command.to_string(),
            "PUT" => command["change"].to_string(),
            _ => String::new(),
        };
        let app = app.clone();
        let request = request.body(Body::from(body)).unwrap();
        async move { send(&app, request).await }
    };
    let statuses: Vec<_> = answers.iter().map(|a| a["status"].clone()).collect();
    for (answer, (call, method, uri)) in answers.iter().zip(&calls) {
        let (alone, mut alone_body) = single(call, method, uri).await;
        assert_eq!(answer["status"], alone.as_u16(), "{call}: {answer}");
        let mut error = answer["error"].clone();
        let own_id = error["request_id"].take();
        alone_body["error"]["request_id"].take();
        assert_eq!(error, alone_body["error"], "{call}: {answer}");
        match call["request_id"].as_str() {
            Some("has space") | None => {
                assert!(own_id.as_str().is_some_and(|own| own != "has space"));
            }
            Some(id) => assert_eq!(own_id, id),
        }
    }
    let expected = [400, 503, 503, 503, 503, 400, 503].map(|status| json!(status));
    assert_eq!(statuses, expected);

    // An order that is not one is refused alone.
    let unknown_field = json!([
        {"command": place(1, "buy"), "priority": 1},
        {"command": {"place": {"name": "GameStart", "quantity": 1, "type": "buy", "colour": 1}}},
        {"command": place(0, "buy")},
    ]);
    let answers = batch_answers(&app, &unknown_field).await;
    let statuses: Vec<_> = answers.iter().map(|a| a["status"].clone()).collect();
    assert_eq!(
        statuses,
        [json!(400), json!(400), json!(400)],
        "{answers:?}"
    );
    let message = answers[0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("priority"), "{message}");

    let too_many = Value::Array(vec![batch[1].clone(); MAX_BATCH + 1]);
    let too_long = json!("x".repeat(stocknet_common::server::BODY_LIMIT));
    for (batch, refused) in [
        (json!({"command": {}}), StatusCode::BAD_REQUEST),
        (too_many, StatusCode::PAYLOAD_TOO_LARGE),
        (too_long, StatusCode::PAYLOAD_TOO_LARGE),
    ] {
        let (status, body) = send(&app, insider_post("/orders/batch", &batch.to_string())).await;
        assert_eq!(status, refused, "{body}");
        assert_eq!(
            body["error"]["code"],
            refused.as_u16(),
            "an envelope: {body}"
        );
    }
}

/// A batch's answer gives each order's line once that order is decided, not once the last
/// is; and ends at the deadline, without the lines of orders still undecided.
#[tokio::test(start_paused = true)]
async fn a_batch_answer_gives_each_line_once_its_order_is_decided_until_the_deadline() {
    use futures::future::BoxFuture;
    use futures::stream::{FuturesUnordered, StreamExt};
    use stocknet_common::wire::BatchAnswer;

    let answer = |index| BatchAnswer::<u64> {
        index,
        status: 200,
        data: Some(index as u64),
        error: None,
    };
    let line = |index| format!("{}\n", serde_json::to_string(&answer(index)).unwrap());
    let (release, held) = tokio::sync::oneshot::channel::<()>();
    let answers: FuturesUnordered<BoxFuture<'static, BatchAnswer<u64>>> = FuturesUnordered::new();
    answers.push(Box::pin(async move {
        let _ = held.await;
        answer(0)
    }));
    answers.push(Box::pin(async move { answer(1) }));
    answers.push(Box::pin(futures::future::pending()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut lines = Box::pin(routes::answer_lines(answers, deadline));
    let first = lines.next().await.unwrap().unwrap();
    assert_eq!(String::from_utf8(first).unwrap(), line(1));
    assert!(futures::poll!(lines.next()).is_pending());
    release.send(()).unwrap();
    let second = lines.next().await.unwrap().unwrap();
    assert_eq!(String::from_utf8(second).unwrap(), line(0));
    // The third is never decided: the lines end at the deadline.
    let end = tokio::time::timeout(Duration::from_secs(60), lines.next()).await;
    assert!(end.expect("the lines end").is_none());
    assert!(tokio::time::Instant::now() >= deadline);
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
        anonymous(
            "POST",
            "/orders/batch",
            json!([{"command": {"place": {"name": "GameStart", "quantity": 1, "type": "buy"}}}]),
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

/// A replica takes a handover's announcement only from the leader it follows, in that leader's
/// term; one with a field it does not know is refused as malformed.
#[tokio::test]
async fn a_replica_takes_a_handover_only_from_its_leader() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let told = |body: &str| insider_post("/raft/handover", body);
    let from_nobody = told(r#"{"leader":2,"term":1,"to":1}"#);
    assert_eq!(
        send(&app, from_nobody).await,
        (StatusCode::OK, json!(false))
    );
    let (status, _) = send(&app, told(r#"{"leader":2,"term":1,"to":1,"at_once":true}"#)).await;
    assert!(status.is_client_error(), "{status}");
}

/// A replica asked whether it reaches the catalog (by a leader that cannot, before it hands
/// the leadership over) answers what a call of its own to the catalog found.
#[tokio::test]
async fn a_replica_says_whether_it_reaches_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let check = || insider_post("/raft/catalog-check", "null");
    let app = app(dir.path()).await;
    assert_eq!(send(&app, check()).await, (StatusCode::OK, json!(false)));

    let catalog = stocknet_catalog::AppState::new(
        stocknet_catalog::CatalogStore::open(
            dir.path().join("catalog.csv"),
            "name,price,quantity\nGameStart,15.99,100\n",
        )
        .unwrap(),
        stocknet_catalog::UserStore::open(dir.path().join("users.csv")).unwrap(),
        Vec::new(),
        Secret::new(SECRET).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let serving =
        tokio::spawn(async move { axum::serve(listener, stocknet_catalog::router(catalog)).await });
    let other = tempfile::tempdir().unwrap();
    let app = app_with_catalog(other.path(), url.parse().unwrap()).await;
    assert_eq!(send(&app, check()).await, (StatusCode::OK, json!(true)));
    serving.abort();
}
