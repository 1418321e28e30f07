//! End-to-end: catalog + 3 order replicas + frontend(s) as real processes on 127.0.0.1.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{send, status, with_key, Cluster, BOOK_SNAPSHOT_EVERY};
use serde_json::{json, Value};

#[tokio::test]
async fn lookup_trade_query_and_push_invalidation() {
    let cluster = Cluster::start(2).await;
    let (status, body) = cluster.get_front("/stocks/GameStart").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"data": {"name": "GameStart", "price": 15.99, "quantity": 100}})
    );
    let (status, body) = cluster.get_front("/stocks/NoSuchStock").await;
    assert_eq!(
        (status, common::without_request_id(body)),
        (
            404,
            json!({"error": {"code": 404, "message": "Stock not found"}})
        )
    );

    // Both frontends cache GameStart; frontend 1 then serves it from the cache.
    assert_eq!(cluster.quantity(1, "GameStart").await, 100);
    assert_eq!(cluster.quantity(1, "GameStart").await, 100);
    let metrics = cluster.metrics(&cluster.frontend_urls[1]).await;
    assert!(
        metrics.contains("stocknet_frontend_cache_hits_total 1"),
        "{metrics}"
    );

    // A trade through frontend 0 must be visible through frontend 1 at once: only the
    // catalog's push can have invalidated frontend 1's cached copy.
    let buy = cluster.must_order("GameStart", "buy", 5).await;
    assert_eq!(cluster.quantity(1, "GameStart").await, 95);
    let sell = cluster.must_order("GameStart", "sell", 3).await;
    assert_eq!(cluster.quantity(1, "GameStart").await, 98);
    assert_eq!(cluster.quantity(0, "GameStart").await, 98);
    assert!(sell > buy);

    let (status, body) = cluster.get_front(&format!("/orders/{buy}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"data": {"number": buy, "name": "GameStart", "type": "buy", "quantity": 5,
                        "status": "filled", "filled_quantity": 5, "remaining_quantity": 0,
                        "fills": []}})
    );
    let (status, body) = cluster
        .get(&format!("{}/orders/{}", cluster.frontend(), sell + 100))
        .await;
    assert_eq!(
        (status, common::without_request_id(body)),
        (
            404,
            json!({"error": {"code": 404, "message": "Order number invalid"}})
        )
    );
}

#[tokio::test]
async fn refused_orders_and_bad_input_change_nothing() {
    let cluster = Cluster::start(1).await;
    let (status, body) = cluster.order(0, "FishCo", "buy", 101).await;
    let refused = body["error"]["transaction_number"]
        .as_u64()
        .expect("a number");
    assert_eq!(
        (status, common::without_request_id(body)),
        (
            409,
            json!({"error": {"code": 409, "message": "Insufficient stock quantity",
                             "reason": "insufficient_quantity", "transaction_number": refused}})
        )
    );
    let (status, _) = cluster.order(0, "NoSuchStock", "buy", 1).await;
    assert_eq!(status, 404);

    let orders = format!("{}/orders", cluster.frontend());
    let raw = |body: &'static str| {
        let request = cluster
            .http
            .post(&orders)
            .header("content-type", "application/json")
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    for body in [
        "{not json",
        "[]",
        r#"{"name":"FishCo","type":"buy"}"#,
        r#"{"name":"FishCo","quantity":0,"type":"buy"}"#,
        r#"{"name":"FishCo","quantity":-1,"type":"sell"}"#,
        r#"{"name":"FishCo","quantity":1e30,"type":"buy"}"#,
        r#"{"name":"FishCo","quantity":18446744073709551616,"type":"buy"}"#,
        r#"{"name":"FishCo","quantity":"2","type":"buy"}"#,
        r#"{"name":"FishCo","quantity":2,"type":"steal"}"#,
        r#"{"name":7,"quantity":2,"type":"buy"}"#,
    ] {
        let (status, reply) = raw(body).await;
        assert_eq!(status, 400, "{body} -> {reply}");
        assert_eq!(reply["error"]["code"], 400, "{body} -> {reply}");
    }
    let (status, _) = cluster.get_front("/orders/abc").await;
    assert_eq!(status, 400);
    let (status, body) = cluster.get_front("/no/such/route").await;
    assert_eq!((status, body["error"]["code"].clone()), (404, json!(404)));
    let (status, body) = cluster.get_front("/stocks/%ff%fe").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (400, json!(400)),
        "{body}"
    );
    let (status, _) = cluster
        .get(&format!(
            "{}/stocks/..%2F..%2Fetc%2Fpasswd",
            cluster.frontend()
        ))
        .await;
    assert_eq!(status, 404);

    assert_eq!(cluster.quantity(0, "FishCo").await, 100);
    // The refused order is the log's only order (after the leader's own entry), recorded as
    // refused; bad input never got in.
    let log = cluster.wait_for_identical_logs().await;
    assert_eq!(log.last().unwrap()["number"], refused, "{log:?}");
    assert_eq!(common::orders_only(&log).len(), 1, "{log:?}");
    let refusal = cluster.replica_order(2, refused).await;
    assert_eq!(
        (refusal["name"].clone(), refusal["rejected"].clone()),
        (json!("FishCo"), json!("insufficient_quantity"))
    );
}

#[tokio::test]
async fn concurrent_clients_conserve_quantity() {
    let cluster = std::sync::Arc::new(Cluster::start(1).await);
    let mut clients = Vec::new();
    for client in 0..30u64 {
        let cluster = cluster.clone();
        clients.push(tokio::spawn(async move {
            let (mut bought, mut sold, mut numbers) = (0, 0, Vec::new());
            for round in 0..4u64 {
                // Mostly buys, so the stock runs out and refusals must happen.
                let side = if (client + round) % 4 == 0 {
                    "sell"
                } else {
                    "buy"
                };
                let quantity = 1 + (client * 7 + round) % 5;
                let (status, body) = cluster.order(0, "BoarCo", side, quantity).await;
                match status {
                    200 => {
                        numbers.push(body["data"]["transaction_number"].as_u64().unwrap());
                        if side == "buy" {
                            bought += quantity
                        } else {
                            sold += quantity
                        }
                    }
                    409 => assert_eq!(side, "buy", "{body}"),
                    other => panic!("unexpected {other}: {body}"),
                }
            }
            (bought, sold, numbers)
        }));
    }
    let (mut bought, mut sold, mut numbers) = (0, 0, Vec::new());
    for client in clients {
        let (b, s, n) = client.await.unwrap();
        bought += b;
        sold += s;
        numbers.extend(n);
    }
    let unique: HashSet<u64> = numbers.iter().copied().collect();
    assert_eq!(
        unique.len(),
        numbers.len(),
        "a transaction number was issued twice"
    );
    assert!(
        bought > 100,
        "the test must drive the stock to exhaustion (bought {bought})"
    );
    assert_eq!(cluster.quantity(0, "BoarCo").await, 100 + sold - bought);
    // Every acknowledged order is retrievable and was the one placed.
    for number in numbers {
        let (status, body) = cluster.get_front(&format!("/orders/{number}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"]["name"], "BoarCo");
    }
}

#[tokio::test]
async fn killing_the_leader_elects_the_next_and_loses_nothing() {
    let mut cluster = Cluster::start(1).await;
    let before = cluster.must_order("Tesla", "buy", 10).await;
    let first = cluster.leader().await.expect("a replica leads");

    cluster.orders[first].kill9();
    let after = cluster.must_order("Tesla", "buy", 5).await;
    assert!(after > before);
    let health = cluster.get_front("/health").await.1;
    let next = health["data"]["leader"].as_u64().expect("a leader") as usize - 1;
    assert_ne!(next, first, "{health}");
    assert_eq!(cluster.leader().await, Some(next));
    let more = cluster.must_order("Tesla", "sell", 1).await;
    assert_eq!(cluster.quantity(0, "Tesla").await, 100 - 10 - 5 + 1);
    for number in [before, after, more] {
        let (status, _) = cluster.get_front(&format!("/orders/{number}")).await;
        assert_eq!(status, 200);
    }

    // Losing a second replica leaves no majority: orders are refused, not acknowledged.
    cluster.orders[next].kill9();
    let (status, body) = cluster.order(0, "Tesla", "buy", 1).await;
    assert_eq!(status, 503, "{body}");
}

/// Issue 19, item 7, on live processes: replicas 4 and 5 join a running group as learners,
/// catch up and become voters, and 5, the highest, is handed the leadership (the frontend, told
/// of the founders only, learns of it from the group); with two founders killed the five still
/// trade; back to three voters, the two removed replicas can go and
/// trading goes on. Only the leader takes a step.
#[tokio::test]
async fn the_group_grows_to_five_voters_and_back_to_three_while_trading() {
    let mut cluster = Cluster::start_with(1, 5, 3).await;
    cluster.must_order("GameStart", "buy", 1).await;
    let leader = cluster.leader().await.expect("a replica leads");
    let members = |index: usize| format!("{}/members", cluster.order_urls[index]);
    let (status, seen) = cluster.get(&members(leader)).await;
    assert_eq!(
        (status, seen["data"]["configs"].clone()),
        (200, json!([[1, 2, 3]])),
        "{seen}"
    );

    for index in [3, 4] {
        cluster.orders[index].restart();
        let (status, body) = cluster
            .post(
                &format!("{}/learners", members(leader)),
                &json!({"id": index + 1, "url": cluster.order_urls[index]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let placed = cluster.must_order("GameStart", "buy", 2).await;
    common::wait_until(
        "the learners caught up",
        Duration::from_secs(20),
        || async {
            let behind = cluster.get(&members(leader)).await.1["data"]["behind"].clone();
            behind["4"] == 0 && behind["5"] == 0
        },
    )
    .await;
    for index in [3, 4] {
        assert_eq!(
            cluster.replica_order(index, placed).await["name"],
            "GameStart"
        );
    }

    let change = |index: usize, voters: Value| {
        let request = cluster
            .insider
            .put(format!("{}/voters", members(index)))
            .json(&json!({ "voters": voters }));
        send(request)
    };
    let follower = (leader + 1) % 3;
    let (status, body) = change(follower, json!([1, 2, 3, 4, 5])).await;
    assert_eq!(
        status, 503,
        "only the leader changes the membership: {body}"
    );
    assert_eq!(body["error"]["leader"], leader + 1, "{body}");
    let (status, body) = change(leader, json!([1, 2, 3, 7])).await;
    assert_eq!(status, 409, "{body}");
    // Bad input changes nothing: unknown fields, and callers without the secret.
    let (status, body) = cluster
        .post(
            &format!("{}/learners", members(leader)),
            &json!({"id": 6, "url": "http://127.0.0.1:1", "voter": true}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(common::status(cluster.http.get(members(leader))).await, 401);
    let (status, body) = change(leader, json!([1, 2, 3, 4, 5])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["configs"], json!([[1, 2, 3, 4, 5]]), "{body}");
    // The steady state: the highest id, now 5, is handed the leadership.
    cluster.wait_led_by(4).await;

    // The frontend, told of the founders only, finds the new leader through the group.
    cluster.must_order("GameStart", "buy", 1).await;
    let (_, view) = cluster.get_front("/cluster").await;
    assert_eq!(
        common::each(&view["data"]["replicas"], "id"),
        [&json!(1), &json!(2), &json!(3), &json!(4), &json!(5)]
    );
    assert_eq!(view["data"]["leader"], 5, "{view}");

    // Two founders down: three of five voters still commit.
    for index in [0, 1] {
        cluster.orders[index].kill9();
    }
    cluster.must_order("GameStart", "sell", 1).await;
    for index in [0, 1] {
        cluster.orders[index].restart();
        cluster.wait_replica_ready(index).await;
    }

    // Back to three: the leader leaves the voters, and the founders elect one of themselves.
    let (status, body) = change(4, json!([1, 2, 3])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["data"]["configs"].clone(),
            body["data"]["learners"].clone()
        ),
        (json!([[1, 2, 3]]), json!([])),
        "{body}"
    );
    for index in [3, 4] {
        cluster.orders[index].kill9();
    }
    let last = cluster.must_order("GameStart", "buy", 3).await;
    let logs: Vec<Option<Vec<Value>>> = {
        common::wait_until(
            "the founders hold the last order",
            Duration::from_secs(20),
            || async {
                let mut all = true;
                for index in 0..3 {
                    let health = cluster.replica_health(index).await;
                    all &= health["applied"].as_u64() >= Some(last);
                }
                all
            },
        )
        .await;
        let mut logs = Vec::new();
        for index in 0..3 {
            logs.push(cluster.replica_log(index).await);
        }
        logs
    };
    assert!(logs.iter().all(|log| log.is_some() && *log == logs[0]));
    assert_eq!(
        cluster.quantity(0, "GameStart").await,
        100 - 1 - 2 - 1 + 1 - 3
    );
}

/// I5 and an isolated leader: a leader whose peers are gone cannot commit; the order it wrote
/// alone is dropped when it returns, replaced by the one the next leader committed.
#[tokio::test]
async fn an_order_the_leader_could_not_commit_is_dropped_on_its_return() {
    let mut cluster = Cluster::start(1).await;
    cluster.must_order("GameStart", "buy", 1).await;
    cluster.wait_for_identical_logs().await;
    let leader = cluster.leader().await.expect("a replica leads");
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();

    for &other in &others {
        cluster.orders[other].kill9();
    }
    // Written on the leader alone, it may yet be committed (were the others to come back to
    // it): the answer says the outcome is unknown, and under which key to ask.
    let (status, body) = cluster.order(0, "FishCo", "sell", 7).await;
    assert_eq!(status, 504, "{body}");
    let key = body["error"]["idempotency_key"]
        .as_str()
        .expect("the key")
        .to_owned();
    // Durable on the leader alone: never committed, never applied.
    let alone = cluster.replica_log(leader).await.expect("the leader's log");
    let stranded = alone.last().expect("an entry").clone();
    assert_eq!(stranded["name"], "FishCo");
    assert_eq!(cluster.quantity(0, "FishCo").await, 100);

    cluster.orders[leader].kill9();
    for &other in &others {
        cluster.orders[other].restart();
    }
    for &other in &others {
        cluster.wait_replica_ready(other).await;
    }
    let boar = cluster.must_order("BoarCo", "buy", 2).await;

    cluster.orders[leader].restart();
    // Back, the old leader follows the new one, which replaces the divergent order.
    let log = cluster.wait_for_identical_logs().await;
    let names: Vec<Value> = common::orders_only(&log)
        .iter()
        .map(|o| o["name"].clone())
        .collect();
    assert_eq!(names, [json!("GameStart"), json!("BoarCo")], "{log:?}");
    assert_ne!(
        log[(stranded["number"].as_u64().unwrap() - 1) as usize],
        stranded
    );
    assert!(log.iter().any(|o| o["number"] == boar));
    assert_eq!(cluster.quantity(0, "FishCo").await, 100);
    // Asked under its key, the order is not there: it did not execute.
    let (status, body) = cluster.get_front(&format!("/orders?key={key}")).await;
    assert_eq!(
        (status, body["data"]["orders"].clone()),
        (200, json!([])),
        "{body}"
    );
    assert_eq!(cluster.quantity(0, "BoarCo").await, 98);
}

/// A cluster with one order placed, the replica leading it, and a follower killed (-9) since.
async fn with_a_follower_killed() -> (Cluster, usize, usize) {
    let mut cluster = Cluster::start(1).await;
    cluster.must_order("Apple", "buy", 1).await;
    let leader = cluster.leader().await.expect("a replica leads");
    let follower = (leader + 1) % 3;
    cluster.orders[follower].kill9();
    (cluster, leader, follower)
}

#[tokio::test]
async fn restarted_follower_resyncs_every_missed_order() {
    let (mut cluster, leader, follower) = with_a_follower_killed().await;
    let mut placed = Vec::new();
    for i in 0..6 {
        placed.push(
            cluster
                .must_order("Apple", if i % 2 == 0 { "buy" } else { "sell" }, 2 + i)
                .await,
        );
    }
    cluster.orders[follower].restart();
    cluster.wait_replica_ready(follower).await;
    let last = *placed.last().unwrap();
    // Ready means it knows the leader; the leader brings its log up to date.
    cluster.wait_for_identical_logs().await;
    assert_eq!(
        cluster.replica_health(follower).await["last_transaction"],
        last
    );
    for number in 1..=last {
        assert_eq!(
            cluster.replica_order(follower, number).await,
            cluster.replica_order(leader, number).await
        );
    }
}

/// A follower that missed more entries than the leader's log offers (the cluster snapshots
/// every 50, and keeps 50 before the last snapshot) is sent a snapshot over HTTP, in chunks,
/// and ends with the leader's log, its orders and its book.
#[tokio::test]
async fn a_follower_further_behind_than_the_log_offers_installs_a_snapshot() {
    let (mut cluster, leader, follower) = with_a_follower_killed().await;
    let missed = 3 * BOOK_SNAPSHOT_EVERY.parse::<u64>().expect("a number");
    for i in 0..missed {
        let side = if i % 2 == 0 { "buy" } else { "sell" };
        cluster.must_order("Apple", side, 1).await;
    }
    cluster.orders[follower].restart();
    cluster.wait_replica_ready(follower).await;
    cluster.wait_for_identical_logs().await;
    let metric = |index: usize, name: &'static str| {
        let url = format!("{}/metrics", cluster.order_urls[index]);
        let request = cluster.http.get(url).send();
        async move {
            let text = request.await.unwrap().text().await.unwrap();
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| -> u64 { panic!("{name} in\n{text}") })
        }
    };
    assert!(metric(leader, "stocknet_order_snapshots_sent_total").await >= 1u64);
    assert_eq!(
        metric(follower, "stocknet_order_snapshots_installed_total").await,
        1
    );
    let urls: Vec<String> = (0..3)
        .map(|index| format!("{}/book/Apple", cluster.order_urls[index]))
        .collect();
    let leaders = cluster.get(&urls[leader]).await;
    assert_eq!(leaders.0, 200);
    common::wait_until("the follower's book", Duration::from_secs(10), || async {
        cluster.get(&urls[follower]).await == leaders
    })
    .await;
}

#[tokio::test]
async fn services_restarted_on_the_same_data_keep_everything() {
    let mut cluster = Cluster::start(1).await;
    let mut placed = Vec::new();
    for quantity in 1..=4 {
        placed.push((
            cluster.must_order("Nvidia", "buy", quantity).await,
            quantity,
        ));
    }
    let expected: Vec<Value> = {
        let mut orders = Vec::new();
        for (number, _) in &placed {
            orders.push(cluster.get_front(&format!("/orders/{number}")).await.1);
        }
        orders
    };

    // Everything goes down (one replica and the catalog without warning) and comes back.
    cluster.frontends[0].stop();
    cluster.orders[0].kill9();
    cluster.orders[1].stop();
    cluster.orders[2].stop();
    cluster.catalog.kill9();
    cluster.catalog.restart();
    for order in &mut cluster.orders {
        order.restart();
    }
    cluster.frontends[0].restart();
    cluster.wait_ready().await;

    assert_eq!(cluster.quantity(0, "Nvidia").await, 100 - 10);
    for ((number, _), expected) in placed.iter().zip(&expected) {
        let (status, body) = cluster.get_front(&format!("/orders/{number}")).await;
        assert_eq!(status, 200);
        assert_eq!(&body, expected);
    }
    // Numbering continues after the restart.
    let next = cluster.must_order("Nvidia", "sell", 1).await;
    assert_eq!(next, placed.last().unwrap().0 + 1);
    assert_eq!(cluster.quantity(0, "Nvidia").await, 91);
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_trades_once() {
    let cluster = Cluster::start(1).await;
    let orders = format!("{}/orders", cluster.frontend());
    let place = |key: &'static str| {
        let request = cluster
            .http
            .post(&orders)
            .header("Idempotency-Key", key)
            .json(&json!({"name": "Amazon", "quantity": 4, "type": "buy"}));
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let first = place("order-a").await;
    let retry = place("order-a").await;
    let other = place("order-b").await;
    assert_eq!(first, retry);
    assert_ne!(first, other);
    assert_eq!(cluster.quantity(0, "Amazon").await, 100 - 4 - 4);

    // The same key with a different request is refused, and executes nothing.
    assert_eq!(
        status(
            cluster
                .http
                .post(&orders)
                .header("Idempotency-Key", "order-a")
                .json(&json!({"name": "Amazon", "quantity": 5, "type": "buy"}))
        )
        .await,
        422
    );
    assert_eq!(cluster.quantity(0, "Amazon").await, 100 - 4 - 4);

    // A cancel retried with its key answers as the first time; without one, it is refused
    // as no longer open.
    let limit = cluster
        .post(
            &orders,
            &json!({"name": "Amazon", "quantity": 2, "type": "sell", "price": 99.0}),
        )
        .await
        .1["data"]["transaction_number"]
        .as_u64()
        .unwrap();
    let cancel = || {
        cluster
            .http
            .delete(format!("{orders}/{limit}"))
            .header("Idempotency-Key", "cancel-1")
            .send()
    };
    let first = cancel().await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(first["data"]["order"]["status"], "cancelled", "{first}");
    let retry = cancel().await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(first, retry);
    assert_eq!(
        status(cluster.http.delete(format!("{orders}/{limit}"))).await,
        409
    );
}

/// The attack of issue 12, on real processes: without the shared secret, a bogus term sent to
/// the catalog or to a replica, or arbitrary trades, change nothing, and orders go on.
#[tokio::test]
async fn internal_endpoints_refuse_callers_without_the_secret() {
    let cluster = Cluster::start(1).await;
    let first = cluster.must_order("GameStart", "buy", 1).await;
    let outsider = reqwest::Client::new();
    let attacks = [
        (
            format!("{}/apply", cluster.catalog_url),
            json!({"term": 999999, "trades": []}),
        ),
        (
            format!("{}/apply", cluster.catalog_url),
            json!({"term": 999999, "trades": [{"number": 2, "name": "GameStart", "delta": 1000}]}),
        ),
        (
            format!("{}/raft/vote", cluster.order_urls[0]),
            json!({"vote": {"leader_id": {"term": 999999, "voted_for": 1}, "committed": false},
                   "last_log_id": null}),
        ),
        (
            format!("{}/raft/append", cluster.order_urls[1]),
            json!({"vote": {"leader_id": {"term": 999999, "voted_for": 1}, "committed": true},
                   "prev_log_id": null, "leader_commit": null, "entries": []}),
        ),
        (
            format!("{}/invalidate", cluster.frontend()),
            json!({"names": ["GameStart"]}),
        ),
    ];
    for (url, body) in attacks {
        let response = outsider.post(&url).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 401, "{url}");
        let reply: Value = response.json().await.unwrap();
        assert_eq!(reply["error"]["code"], 401);
    }
    let (_, health) = cluster
        .get(&format!("{}/health", cluster.catalog_url))
        .await;
    assert!(
        health["data"]["term"].as_u64().unwrap() < 999999,
        "{health}"
    );
    for url in &cluster.order_urls {
        let (_, health) = cluster.get(&format!("{url}/health")).await;
        assert!(
            health["data"]["term"].as_u64().unwrap() < 999999,
            "{health}"
        );
    }
    assert_eq!(cluster.quantity(0, "GameStart").await, 99);
    assert_eq!(cluster.must_order("GameStart", "buy", 1).await, first + 1);
    assert_eq!(cluster.quantity(0, "GameStart").await, 98);
}

/// A frontend given a port of its own for its internal routes serves the invalidation push
/// there (with the secret) and not on its public port, and the public API not there.
#[tokio::test]
async fn internal_routes_can_have_a_port_of_their_own() {
    let (frontend, internal) =
        common::LoneFrontend::with_port("--internal-port", stocknet_common::listeners::INTERNAL)
            .await;
    let (public, internal) = (frontend.url.clone(), common::url(internal));
    let http = reqwest::Client::new();
    let push = |base: &str| {
        http.post(format!("{base}/invalidate"))
            .bearer_auth(common::SECRET)
            .json(&json!({"names": ["GameStart"]}))
            .send()
    };
    assert_eq!(push(&internal).await.unwrap().status(), 200);
    assert_eq!(push(&public).await.unwrap().status(), 404);
    assert_eq!(
        status(
            http.post(format!("{internal}/invalidate"))
                .json(&json!({"names": ["GameStart"]}))
        )
        .await,
        401
    );
    assert_eq!(
        status(http.get(format!("{internal}/openapi.json"))).await,
        404
    );
    assert_eq!(
        status(http.get(format!("{public}/openapi.json"))).await,
        200
    );
}

/// The catalog dies: lookups of stocks the frontend has seen are served stale (so marked),
/// orders fail at once with 503 and Retry-After once the breaker is open, and everything is
/// fresh again when the catalog is back.
#[tokio::test]
async fn without_the_catalog_lookups_go_stale_and_orders_fail_fast() {
    let mut cluster = Cluster::start(1).await;
    let frontend = cluster.frontend().to_owned();
    assert_eq!(cluster.quantity(0, "GameStart").await, 100);
    // The trade's invalidation drops the cached copy and carries the new value.
    let before = cluster.must_order("GameStart", "buy", 1).await;

    cluster.catalog.kill9();
    let lookup = || {
        cluster
            .http
            .get(format!("{frontend}/stocks/GameStart"))
            .send()
    };
    for _ in 0..breaker_failures() {
        let response = lookup().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers().contains_key("warning"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            (body["data"]["quantity"].clone(), body["stale"].clone()),
            (json!(99), json!(true)),
            "{body}"
        );
    }
    // A name never seen (the catalog's start pushed every stock it has) has nothing stale to
    // show, and whether it exists cannot be known now.
    let (status, _) = cluster.get(&format!("{frontend}/stocks/NoSuchStock")).await;
    assert_eq!(status, 503);
    let (status, body) = cluster.order(0, "GameStart", "buy", 1).await;
    assert_eq!(status, 503, "{body}");
    let response = cluster
        .http
        .post(format!("{frontend}/orders"))
        .json(&json!({"name": "GameStart", "quantity": 1, "type": "buy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));

    cluster.catalog.restart();
    common::wait_until(
        "fresh lookups",
        std::time::Duration::from_secs(30),
        || async {
            let Ok(response) = lookup().await else {
                return false;
            };
            let body: Value = response.json().await.unwrap_or_default();
            body.get("stale").is_none() && body["data"]["quantity"] == 99
        },
    )
    .await;
    // Nothing refused meanwhile was logged: the next order follows the last one.
    assert_eq!(cluster.must_order("GameStart", "buy", 1).await, before + 1);
    assert_eq!(cluster.quantity(0, "GameStart").await, 98);
}

/// Failures in a row that open the frontend's breaker (stocknet_frontend::upstream::breaker::FAILURES).
fn breaker_failures() -> u32 {
    stocknet_frontend::upstream::breaker::FAILURES
}

/// A frontend with a per-client rate limit answers 429 with Retry-After beyond it, at once,
/// while its health endpoint (probes) stays out of it.
#[tokio::test]
async fn a_client_over_the_rate_limit_gets_429_with_retry_after() {
    let frontend = common::LoneFrontend::start(&["--rate-limit", "2", "--rate-burst", "5"]).await;
    let base = frontend.url.clone();
    let http = reqwest::Client::new();
    // Well past the burst.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..12 {
        let response = http
            .get(format!("{base}/openapi.json"))
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            retry_after = response.headers().get("retry-after").cloned();
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], 429);
            statuses.push(429);
        } else {
            statuses.push(response.status().as_u16());
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    let seconds: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert_eq!(
        seconds, 1,
        "at 2 per second the next token is under a second away"
    );
    for _ in 0..10 {
        assert_eq!(status(http.get(format!("{base}/health"))).await, 200);
    }
}

/// An order with `expected_price` is refused (409, reason `price_moved`, with the current
/// price) when the price is further off than the tolerance, and placed when it is not.
#[tokio::test]
async fn an_order_whose_price_moved_is_refused_with_the_current_price() {
    let cluster = Cluster::start(1).await;
    let orders = format!("{}/orders", cluster.frontend());
    // A buy of one GameStart expecting `price`, with the fields of `more`.
    let buy_expecting = |price: f64, more: Value| {
        let mut order = json!({"name": "GameStart", "quantity": 1, "type": "buy"});
        order["expected_price"] = json!(price);
        order
            .as_object_mut()
            .unwrap()
            .extend(more.as_object().unwrap().clone());
        let (cluster, orders) = (&cluster, &orders);
        async move { cluster.post(orders, &order).await }
    };
    let (status, body) = buy_expecting(15.99, json!({})).await;
    assert_eq!(status, 200, "{body}");
    // 15.99 is 5.9% above 15.10: beyond the default 2%.
    let (status, body) = buy_expecting(15.10, json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        (
            body["error"]["reason"].clone(),
            body["error"]["current_price"].clone()
        ),
        (json!("price_moved"), json!(15.99))
    );
    assert_eq!(
        cluster.quantity(0, "GameStart").await,
        99,
        "the refused order did nothing"
    );
    // Within a tolerance the order itself asks for.
    let (status, body) = buy_expecting(15.10, json!({"max_deviation_bps": 1000})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cluster.quantity(0, "GameStart").await, 98);
}

/// Issue 10, items 1 and 2: users get API keys; their orders are theirs; a portfolio follows
/// the user's own fills (book trades and market orders at the leader's quote), is shown only
/// with the user's key, agrees on every replica and survives the loss of the leader.
#[tokio::test]
async fn users_own_their_orders_and_portfolios_follow_their_fills() {
    let mut cluster = Cluster::start(1).await;
    let frontend = cluster.frontend().to_owned();
    let create = || cluster.http.post(format!("{frontend}/users")).send();
    let mut keys = Vec::new();
    for expected_id in [1, 2] {
        let response = create().await.unwrap();
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["data"]["user_id"], expected_id, "{body}");
        let key = body["data"]["api_key"].as_str().unwrap().to_owned();
        assert!(key.starts_with(&format!("snk_{expected_id}_")), "{key}");
        keys.push(key);
    }
    let (alice, bob) = (keys[0].clone(), keys[1].clone());
    let place = |body: Value, key: Option<&str>| {
        send(with_key(cluster.http.post(format!("{frontend}/orders")), key).json(&body))
    };
    let limit = |side: &str, quantity: u32, price: f64| json!({"name": "GameStart", "quantity": quantity, "type": side, "price": price});

    // Alice offers 10 at 16.00; Bob buys 4 of them, then 2 more from the house at the quote
    // (the last trade, 16.00); then sells 3 at 15.00 to an anonymous buyer.
    let (status, body) = place(limit("sell", 10, 16.0), Some(&alice)).await;
    assert_eq!(status, 200, "{body}");
    let alices_order = body["data"]["transaction_number"].as_u64().unwrap();
    let (status, body) = place(limit("buy", 4, 16.5), Some(&bob)).await;
    assert_eq!(
        (status, body["data"]["filled_quantity"].clone()),
        (200, json!(4)),
        "{body}"
    );
    let market = json!({"name": "GameStart", "quantity": 2, "type": "buy"});
    assert_eq!(place(market, Some(&bob)).await.0, 200);
    assert_eq!(place(limit("sell", 3, 15.0), Some(&bob)).await.0, 200);
    let (status, body) = place(limit("buy", 3, 15.5), None).await;
    assert_eq!(
        (status, body["data"]["filled_quantity"].clone()),
        (200, json!(3)),
        "{body}"
    );

    let portfolio = |user: u64, key: Option<&str>| {
        let url = format!("{frontend}/users/{user}/portfolio");
        send(with_key(cluster.http.get(url), key))
    };
    let (status, body) = portfolio(2, Some(&bob)).await;
    assert_eq!(status, 200, "{body}");
    // 6 bought at 16.00 (cost 96.00), 3 sold at 15.00: 3.00 realised loss, 3 left costing
    // 48.00 and worth 45.00 at the last trade.
    assert_eq!(
        body["data"]["positions"],
        json!([{"name": "GameStart", "shares": 3, "average_cost": 16.0, "price": 15.0,
                "market_value": 45.0, "cost_basis": 48.0, "unrealized_pnl": -3.0,
                "realized_pnl": -3.0, "bought": 6, "sold": 3}]),
        "{body}"
    );
    assert_eq!(
        (
            body["data"]["market_value"].clone(),
            body["data"]["realized_pnl"].clone()
        ),
        (json!(45.0), json!(-3.0))
    );
    let (_, body) = portfolio(1, Some(&alice)).await;
    assert_eq!(body["data"]["positions"][0]["shares"], -4, "{body}");

    // Only the user's own key shows a portfolio; a wrong or unknown key is refused everywhere.
    assert_eq!(portfolio(2, Some(&alice)).await.0, 403);
    assert_eq!(portfolio(2, None).await.0, 401);
    let forged = format!("snk_2_{}", "0".repeat(64));
    let unknown = format!("snk_99_{}", "0".repeat(64));
    for key in [forged.as_str(), unknown.as_str(), "not-a-key"] {
        assert_eq!(portfolio(2, Some(key)).await.0, 401, "{key}");
        let (status, body) = place(limit("buy", 1, 1.0), Some(key)).await;
        assert_eq!(status, 401, "{key}: {body}");
    }

    // A user's order is changed only with their key; an anonymous one by anybody.
    let cancel = |number: u64, key: Option<&str>| {
        let request = with_key(
            cluster.http.delete(format!("{frontend}/orders/{number}")),
            key,
        );
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(cancel(alices_order, Some(&bob)).await, 403);
    assert_eq!(cancel(alices_order, None).await, 403);
    assert_eq!(cancel(alices_order, Some(&alice)).await, 200);
    let (_, body) = place(limit("sell", 1, 99.0), None).await;
    let anonymous = body["data"]["transaction_number"].as_u64().unwrap();
    assert_eq!(cancel(anonymous, Some(&bob)).await, 200);

    // A refused order is logged as such, with the user, and changes nothing.
    let guarded =
        json!({"name": "GameStart", "quantity": 1, "type": "buy", "expected_price": 30.0});
    let (status, body) = place(guarded, Some(&bob)).await;
    assert_eq!(
        (status, body["error"]["reason"].clone()),
        (409, json!("price_moved")),
        "{body}"
    );
    let refused = body["error"]["transaction_number"].as_u64().unwrap();
    let (_, body) = cluster.get(&format!("{frontend}/orders/{refused}")).await;
    assert_eq!(body["data"]["status"], "rejected", "{body}");
    let logs = cluster.wait_for_identical_logs().await;
    let entry = &logs[refused as usize - 1];
    assert_eq!(
        (entry["user"].clone(), entry["rejected"].clone()),
        (json!(2), json!("price_moved"))
    );

    // Every replica derives the same holdings; after the leader dies, nothing changed.
    let before = portfolio(2, Some(&bob)).await.1;
    let mut replicas = Vec::new();
    for base in &cluster.order_urls {
        replicas.push(cluster.get(&format!("{base}/portfolios/2")).await.1);
    }
    assert!(
        replicas.windows(2).all(|pair| pair[0] == pair[1]),
        "{replicas:?}"
    );
    let leader = cluster.leader().await.expect("a leader");
    cluster.orders[leader].kill9();
    assert_eq!(portfolio(2, Some(&bob)).await.1, before);
}

/// Issue 10, item 3: every command that reaches the leader is in the audit trail with its
/// user, time, key, request id and outcome, refused ones too; a user sees only their own, operators (with
/// the deployment's secret) everybody's, and the filters and cursor work.
#[tokio::test]
async fn the_audit_trail_records_every_command_with_its_outcome() {
    let (cluster, frontend, (_, key)) = Cluster::start_with_user().await;
    let orders = format!("{frontend}/orders");
    let as_user = |body: Value| cluster.http.post(&orders).bearer_auth(&key).json(&body);

    let started = std::time::SystemTime::now();
    let buy_all = json!({"name": "FishCo", "quantity": 101, "type": "buy"});
    assert_eq!(send(as_user(buy_all)).await.0, 409);
    let offer = json!({"name": "GameStart", "quantity": 2, "type": "sell", "price": 20.0});
    let (status, body) = send(
        as_user(offer)
            .header("Idempotency-Key", "offer-1")
            .header("X-Request-Id", "trace-offer-1"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let offered = body["data"]["transaction_number"].as_u64().unwrap();
    let guarded = json!({"name": "GameStart", "quantity": 1, "type": "buy", "expected_price": 1.0});
    assert_eq!(send(as_user(guarded)).await.0, 409);
    // The guarded order was refused and logged: the next number is the anonymous order's.
    assert_eq!(
        cluster.must_order("FishCo", "buy", 1).await,
        offered + 2,
        "anonymous"
    );
    let cancel = || {
        cluster
            .http
            .delete(format!("{orders}/{offered}"))
            .bearer_auth(&key)
    };
    assert_eq!(send(cancel()).await.0, 200);
    assert_eq!(send(cancel()).await.0, 409, "no longer open");

    let audit = |query: &str, auth: Option<&str>| {
        send(with_key(
            cluster.http.get(format!("{frontend}/audit?{query}")),
            auth,
        ))
    };
    let (status, body) = audit("", Some(&key)).await;
    assert_eq!(status, 200, "{body}");
    let records = body["data"]["records"].as_array().unwrap().clone();
    let summary: Vec<(u64, String, String, Value)> = records
        .iter()
        .map(|r| {
            (
                r["number"].as_u64().unwrap(),
                r["type"].as_str().unwrap().to_owned(),
                r["outcome"].as_str().unwrap().to_owned(),
                r["reason"].clone(),
            )
        })
        .collect();
    // The commands' numbers: the first is the one before the offer (the log starts with the
    // leader's own entry, which the audit trail leaves out).
    let n = |k: u64| offered - 2 + k;
    // Newest first; the anonymous order (4) is not this user's.
    assert_eq!(
        summary,
        [
            (n(6), "cancel".into(), "refused".into(), json!("not_open")),
            (n(5), "cancel".into(), "accepted".into(), Value::Null),
            (n(3), "buy".into(), "refused".into(), json!("price_moved")),
            (n(2), "sell".into(), "accepted".into(), Value::Null),
            (
                n(1),
                "buy".into(),
                "refused".into(),
                json!("insufficient_quantity")
            ),
        ]
    );
    assert!(records.iter().all(|r| r["user"] == 1));
    assert_eq!(records[3]["idempotency_key"], "offer-1");
    // The request's id as the client sent it, or as the frontend made it.
    assert_eq!(records[3]["request_id"], "trace-offer-1");
    assert!(records
        .iter()
        .all(|r| r["request_id"].as_str().is_some_and(|id| !id.is_empty())));
    assert_eq!(records[2]["quote"], 15.99);
    let time = humantime_ms(&records[4]["time"]);
    let since = started
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        time + 1_000 >= since,
        "{} is the leader's clock then",
        records[4]["time"]
    );

    // Operators see everybody's; filters and the cursor.
    let (status, body) = audit("limit=2", Some(common::SECRET)).await;
    assert_eq!(status, 200, "{body}");
    let numbers = |body: &Value| -> Vec<u64> {
        body["data"]["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["number"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(numbers(&body), [n(6), n(5)]);
    let cursor = body["data"]["next_cursor"].as_str().unwrap().to_owned();
    let (_, body) = audit(&format!("limit=10&cursor={cursor}"), Some(common::SECRET)).await;
    assert_eq!(numbers(&body), [n(4), n(3), n(2), n(1)]);
    assert!(body["data"].get("next_cursor").is_none(), "{body}");
    let (_, body) = audit("outcome=refused&name=GameStart", Some(&key)).await;
    assert_eq!(numbers(&body), [n(6), n(3)]);
    let (_, body) = audit("outcome=accepted", Some(common::SECRET)).await;
    assert_eq!(numbers(&body), [n(5), n(4), n(2)]);
    // Times are inclusive bounds (several commands may share a millisecond).
    let (from, to) = (
        humantime_ms(&records[3]["time"]),
        humantime_ms(&records[2]["time"]),
    );
    let expected: Vec<u64> = records
        .iter()
        .filter(|r| (from..=to).contains(&humantime_ms(&r["time"])))
        .map(|r| r["number"].as_u64().unwrap())
        .collect();
    let (_, body) = audit(&format!("from={from}&to={to}"), Some(&key)).await;
    assert_eq!(numbers(&body), expected);
    assert!(expected.contains(&n(3)) && expected.contains(&n(2)));

    // Who may see what, and bad requests.
    assert_eq!(audit("", None).await.0, 401);
    assert_eq!(audit("user=2", Some(&key)).await.0, 403);
    assert_eq!(audit("user=1", Some(&key)).await.0, 200);
    for bad in [
        "outcome=maybe",
        "from=yesterday",
        "limit=0",
        "cursor=x",
        "color=red",
        "user=x",
    ] {
        let (status, body) = audit(bad, Some(common::SECRET)).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

/// Milliseconds since the epoch of an RFC 3339 time the API gave.
fn humantime_ms(time: &Value) -> u64 {
    let text = time.as_str().expect("a time");
    stocknet_common::clock::parse_instant(text).expect("RFC 3339")
}

/// Issue 10, item 4: the daily report follows the day's executions and refusals, and
/// `stocknet report --log` recomputes the same from a replica's log, in every format.
#[tokio::test]
async fn the_daily_report_equals_a_recomputation_from_the_log() {
    let (cluster, frontend, (_, key)) = Cluster::start_with_user().await;
    let orders = format!("{frontend}/orders");
    let place = |body: Value, key: Option<&str>| {
        let request = with_key(cluster.http.post(&orders), key).json(&body);
        async move { send(request).await.0 }
    };
    let offer = json!({"name": "GameStart", "quantity": 10, "type": "sell", "price": 16.0});
    assert_eq!(place(offer, Some(&key)).await, 200);
    let bid = json!({"name": "GameStart", "quantity": 4, "type": "buy", "price": 16.5});
    assert_eq!(place(bid, None).await, 200);
    let market = json!({"name": "GameStart", "quantity": 2, "type": "buy"});
    assert_eq!(place(market, Some(&key)).await, 200);
    let too_many = json!({"name": "FishCo", "quantity": 1000, "type": "buy"});
    assert_eq!(place(too_many, None).await, 409);

    let log = cluster.wait_for_identical_logs().await;
    let date = common::book::days(&log).pop().expect("a day");
    let (status, body) = cluster
        .get(&format!("{frontend}/reports/daily?date={date}"))
        .await;
    assert_eq!(status, 200, "{body}");
    let report = body["data"].clone();
    if common::book::days(&log).len() == 1 {
        // 4 traded on the book at 16.00, then 2 bought from the house at the quote, 16.00.
        assert_eq!(
            report["stocks"],
            json!([
                {"name": "FishCo", "trades": 0, "volume": 0, "bought": 0, "sold": 0,
                 "vwap": null, "open": null, "high": null, "low": null, "close": null,
                 "refused": {"insufficient_quantity": 1}},
                {"name": "GameStart", "trades": 2, "volume": 6, "bought": 6, "sold": 4,
                 "vwap": 16.0, "open": 16.0, "high": 16.0, "low": 16.0, "close": 16.0,
                 "refused": {}},
            ]),
            "{report}"
        );
        assert_eq!(report["top_users"], json!([{"user": 1, "volume": 6}]));
    }

    let log_file = cluster.dir.path().join("orders-1.csv");
    let recompute = |format: &str| {
        let output = std::process::Command::new(common::BIN)
            .args(["report", "--date", &date, "--format", format, "--log"])
            .arg(&log_file)
            .output()
            .expect("run stocknet report");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).expect("UTF-8")
    };
    let recomputed: Value = serde_json::from_str(&recompute("json")).expect("JSON");
    assert_eq!(recomputed, report);
    let csv = recompute("csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[0].starts_with("date,name,trades,volume"), "{csv}");
    assert!(
        lines[1].contains("FishCo") && lines[1].ends_with("insufficient_quantity=1"),
        "{csv}"
    );
    let markdown = recompute("md");
    assert!(
        markdown.contains(&format!("# StockNet daily report, {date}")),
        "{markdown}"
    );
    assert!(markdown.contains("| 1 | 6 |"), "the top user: {markdown}");
    // Each stock's row has the CSV's cells but the date.
    let fishco = csv
        .lines()
        .find(|l| l.contains("FishCo"))
        .expect("FishCo's row");
    let cells: Vec<&str> = fishco.split(',').skip(1).collect();
    assert!(
        markdown.contains(&format!("| {} |", cells.join(" | "))),
        "{markdown}"
    );

    let (status, body) = cluster
        .get(&format!("{frontend}/reports/daily?date=1999-01-01"))
        .await;
    assert_eq!((status, body["data"]["stocks"].clone()), (200, json!([])));
    for bad in ["date=2026-13-01", "date=today", "day=2026-11-29"] {
        let (status, body) = cluster
            .get(&format!("{frontend}/reports/daily?{bad}"))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

/// Issue 23, items 5 and 6: one request id finds a request's lines in every service it went
/// through: a lookup's in the frontend's and the catalog's logs, a market order's in the
/// frontend's, the leader's and the catalog's (each service's line for every answer at debug
/// carries it, and the catalog's line for each committed entry it applies).
#[tokio::test]
async fn a_request_id_finds_the_requests_lines_in_every_service_it_reached() {
    // (The leader serves the frontend's orders in batches, with a line of its own for each.)
    let cluster = Cluster::start_logging(
        1,
        "warn,stocknet_common::served=debug,stocknet_catalog=debug,stocknet_order=debug",
    )
    .await;
    let frontend = cluster.frontend().to_owned();
    // A fresh frontend has nothing cached: the lookup reaches the catalog.
    let lookup = cluster
        .http
        .get(format!("{frontend}/stocks/BoarCo"))
        .header("X-Request-Id", "trace-lookup-7");
    let (status, body) = send(lookup).await;
    assert_eq!(status, 200, "{body}");
    let order = cluster
        .http
        .post(format!("{frontend}/orders"))
        .header("X-Request-Id", "trace-order-7")
        .json(&json!({"name": "FishCo", "quantity": 1, "type": "buy"}));
    let (status, body) = send(order).await;
    assert_eq!(status, 200, "{body}");
    let leader = cluster.leader().await.expect("a leader");

    let frontend_log = cluster.frontends[0].log_tail(100_000);
    let catalog_log = cluster.catalog.log_tail(100_000);
    let leader_log = cluster.orders[leader].log_tail(100_000);
    for (service, log, id) in [
        ("frontend", &frontend_log, "trace-lookup-7"),
        ("frontend", &frontend_log, "trace-order-7"),
        ("catalog", &catalog_log, "trace-lookup-7"),
        ("catalog", &catalog_log, "trace-order-7"),
        ("leader", &leader_log, "trace-order-7"),
    ] {
        let tagged = format!("request_id={id}");
        assert!(
            log.lines().any(|line| line.contains(&tagged)),
            "no line of the {service} has {tagged}:\n{log}"
        );
    }
}

/// Issue 23, item 1: `stocknet report --out` archives a day's report as JSON and CSV and
/// delivers it once to a webhook, signed with HMAC-SHA256, and by mail, with both files
/// attached; a re-run rewrites the files and does not deliver again unless asked; a delivery
/// that fails exits non-zero and keeps the files, and credentials never go over a connection
/// without TLS.
#[tokio::test]
async fn the_report_is_archived_and_delivered_once_signed() {
    use hmac::Mac;

    let cluster = Cluster::start(1).await;
    let frontend = cluster.frontend().to_owned();
    for (side, price) in [("sell", 16.0), ("buy", 16.5)] {
        let order = json!({"name": "GameStart", "quantity": 3, "type": side, "price": price});
        let (status, body) = cluster.post(&format!("{frontend}/orders"), &order).await;
        assert_eq!(status, 200, "{body}");
    }
    let log = cluster.wait_for_identical_logs().await;
    let date = common::book::days(&log).pop().expect("a day");

    let sinks = common::ReportSinks::start().await;
    let (hook, mail, smtp, key_file) = (&sinks.hook, &sinks.mail, &sinks.smtp, &sinks.key_file);
    let hook_url = hook.url.clone();
    let archive = &sinks.dir;
    let out = archive.path().join("reports");
    let report = |webhook: &str, extra: &[&str]| {
        let mut command = tokio::process::Command::new(common::BIN);
        command
            .args(["report", "--frontend", &frontend, "--date", &date, "--out"])
            .arg(&out)
            .args(["--webhook", webhook, "--webhook-secret-file"])
            .arg(key_file)
            .args([
                "--smtp-url",
                smtp,
                "--mail-from",
                "StockNet <reports@stocknet.test>",
            ])
            .args(["--mail-to", "desk@stocknet.test,risk@stocknet.test"])
            .args(extra);
        async move { common::output_within(&mut command).await }
    };

    let first = report(&hook_url, &[]).await;
    assert!(first.status.success(), "{first:?}");
    let json: Value =
        serde_json::from_slice(&std::fs::read(out.join(format!("{date}.json"))).unwrap()).unwrap();
    let (status, served) = cluster
        .get(&format!("{frontend}/reports/daily?date={date}"))
        .await;
    assert_eq!((status, &json), (200, &served["data"]));
    assert_eq!(json["stocks"][0]["trades"], 1, "{json}");
    let csv = std::fs::read_to_string(out.join(format!("{date}.csv"))).unwrap();
    assert!(
        csv.starts_with("date,name,trades") && csv.contains("GameStart"),
        "{csv}"
    );
    {
        let deliveries = hook.deliveries();
        assert_eq!(deliveries.len(), 1);
        let (signature, body) = &deliveries[0];
        assert_eq!(serde_json::from_str::<Value>(body).unwrap(), json);
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"hook-secret").unwrap();
        mac.update(body.as_bytes());
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(*signature, format!("sha256={expected}"));
    }

    {
        let messages = mail.messages();
        assert_eq!(messages.len(), 1);
        let message = &messages[0];
        assert_eq!(message.from, "<reports@stocknet.test>");
        assert_eq!(message.to, ["<desk@stocknet.test>", "<risk@stocknet.test>"]);
        assert!(
            message
                .data
                .contains(&format!("Subject: StockNet daily report {date}")),
            "{}",
            message.data
        );
        assert!(
            message.data.contains(&format!("filename=\"{date}.csv\"")),
            "{}",
            message.data
        );
        assert!(
            message.data.contains(&format!("filename=\"{date}.json\"")),
            "{}",
            message.data
        );
        assert!(message.data.contains("GameStart"), "{}", message.data);
    }

    // Again: the same files, no second delivery; unless asked.
    let again = report(&hook_url, &[]).await;
    assert!(again.status.success(), "{again:?}");
    assert_eq!(hook.deliveries().len(), 1, "delivered once");
    assert_eq!(mail.messages().len(), 1, "mailed once");
    let resent = report(&hook_url, &["--resend"]).await;
    assert!(resent.status.success(), "{resent:?}");
    assert_eq!(hook.deliveries().len(), 2);
    assert_eq!(mail.messages().len(), 2);

    // A webhook that fails does not stop the mail, and is tried again on the next run alone.
    let out_half = archive.path().join("half");
    let dead = format!("http://127.0.0.1:{}/hook", common::closed_port());
    let half = |webhook: String| {
        let mut command = tokio::process::Command::new(common::BIN);
        command
            .args(["report", "--frontend", &frontend, "--date", &date, "--out"])
            .arg(&out_half)
            .args([
                "--webhook",
                &webhook,
                "--webhook-attempts",
                "1",
                "--webhook-secret-file",
            ])
            .arg(key_file)
            .args(["--smtp-url", smtp, "--mail-from", "reports@stocknet.test"])
            .args(["--mail-to", "desk@stocknet.test"]);
        async move { common::output_within(&mut command).await }
    };
    let failed = half(dead).await;
    assert!(!failed.status.success(), "{failed:?}");
    assert_eq!(
        mail.messages().len(),
        3,
        "mailed although the webhook failed"
    );
    let retried = half(hook_url.clone()).await;
    assert!(retried.status.success(), "{retried:?}");
    assert_eq!((hook.deliveries().len(), mail.messages().len()), (3, 3));

    // Credentials and a server that does not offer STARTTLS: nothing is sent.
    let credentials = archive.path().join("smtp-credentials");
    std::fs::write(&credentials, "reports:secret\n").unwrap();
    let refused = common::output_within(
        tokio::process::Command::new(common::BIN)
            .args(["report", "--frontend", &frontend, "--date", &date, "--out"])
            .arg(archive.path().join("refused"))
            .args(["--smtp-url", smtp, "--mail-from", "reports@stocknet.test"])
            .args(["--mail-to", "desk@stocknet.test", "--smtp-attempts", "1"])
            .arg("--smtp-credentials-file")
            .arg(&credentials),
    )
    .await;
    assert!(!refused.status.success(), "{refused:?}");
    assert_eq!(mail.messages().len(), 3);

    // Nobody listens: non-zero, a clear message, the files in place, nothing recorded.
    let out_failed = archive.path().join("failed");
    let nobody = format!("http://127.0.0.1:{}/hook", common::closed_port());
    let failed = common::output_within(
        tokio::process::Command::new(common::BIN)
            .args(["report", "--frontend", &frontend, "--date", &date, "--out"])
            .arg(&out_failed)
            .args([
                "--webhook",
                &nobody,
                "--webhook-attempts",
                "2",
                "--webhook-secret-file",
            ])
            .arg(key_file),
    )
    .await;
    assert!(!failed.status.success(), "{failed:?}");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("delivering the report of"), "{stderr}");
    assert!(out_failed.join(format!("{date}.json")).exists());
    assert!(!out_failed.join(format!("{date}.delivered")).exists());
}

/// Issue 12, item 4: every service serves Prometheus metrics from prometheus-client: requests by
/// route and status (a malformed order counted, not stored), the leader's commit rounds,
/// fsyncs, takeovers and followers' lag, the catalog's applies; and on a port of its own.
#[tokio::test]
async fn every_service_serves_prometheus_metrics() {
    let cluster = Cluster::start(1).await;
    let first = cluster.must_order("GameStart", "buy", 1).await;
    let (status, _) = cluster
        .post(
            &format!("{}/orders", cluster.frontend()),
            &json!({"name": "GameStart"}),
        )
        .await;
    assert_eq!(status, 400);
    let scrape = |base: &str| {
        let request = cluster.http.get(format!("{base}/metrics")).send();
        async move {
            let response = request.await.unwrap();
            assert_eq!(response.status(), 200);
            let kind = response.headers()["content-type"]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
            response.text().await.unwrap()
        }
    };
    let frontend = scrape(cluster.frontend()).await;
    for line in [
        r#"stocknet_frontend_http_request_duration_seconds_count{method="POST",route="/orders",status="200"} 1"#,
        r#"stocknet_frontend_http_request_duration_seconds_count{method="POST",route="/orders",status="400"} 1"#,
        "stocknet_frontend_orders_placed_total 1",
    ] {
        assert!(frontend.contains(line), "{line} in\n{frontend}");
    }
    // The group may elect another replica before replica 3 takes over, so the frontend may
    // have followed more than one leader by now; it has followed at least the one that leads.
    let value = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{text}"))
    };
    assert!(value(&frontend, "stocknet_frontend_leader_changes_total") >= 1);
    // Replica 3 leads in steady state (the cluster waits for it before a test starts).
    let leading = cluster.leader().await.expect("a replica leads");
    let other = (leading + 1) % cluster.order_urls.len();
    let leader = scrape(&cluster.order_urls[leading]).await;
    assert!(value(&leader, "stocknet_order_takeovers_total") >= 1);
    for line in [
        "stocknet_order_leading 1",
        &format!("stocknet_order_last_entry {first}"),
        "stocknet_order_commit_round_entries_count",
        "stocknet_order_fsync_seconds_count",
        &format!(
            r#"stocknet_order_replication_lag_entries{{follower="{}"}}"#,
            other + 1
        ),
        // The frontend places orders in batches.
        r#"route="/orders/batch",status="200"} 1"#,
    ] {
        assert!(leader.contains(line), "{line} in\n{leader}");
    }
    let follower = scrape(&cluster.order_urls[other]).await;
    assert!(!follower.contains("replication_lag_entries{"), "{follower}");
    assert!(follower.contains("stocknet_order_leading 0"), "{follower}");
    let catalog = scrape(&cluster.catalog_url).await;
    for line in [
        "stocknet_catalog_apply_trades_count",
        &format!("stocknet_catalog_applied {first}"),
    ] {
        assert!(catalog.contains(line), "{line} in\n{catalog}");
    }

    // Every service metric the Grafana dashboard and the alerts use is one some service exports.
    for (what, source, at_least) in [
        (
            "the dashboard",
            include_str!("../charts/stocknet/dashboards/stocknet.json"),
            10,
        ),
        (
            "the alerts",
            include_str!("../charts/stocknet/rules/alerts.yaml"),
            6,
        ),
    ] {
        let used: Vec<&str> = source
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("stocknet_") && !word.starts_with("stocknet_operator_"))
            .collect();
        assert!(used.len() >= at_least, "{what}: {used:?}");
        for name in used {
            assert!(
                [&frontend, &leader, &catalog]
                    .iter()
                    .any(|text| text.contains(name)),
                "{what} uses {name}, which no service exports"
            );
        }
    }

    let (lone, port) =
        common::LoneFrontend::with_port("--metrics-port", stocknet_common::listeners::METRICS)
            .await;
    let own_port = scrape(&common::url(port)).await;
    assert!(
        own_port.contains("stocknet_frontend_cache_hits_total"),
        "{own_port}"
    );
    let (status, _) = cluster
        .get(&format!("{}/stocks/GameStart", common::url(port)))
        .await;
    assert_eq!(status, 404, "the metrics port serves metrics only");
    drop(lone);
}

/// Issue 21, items 1, 2 and 7: time in force, post-only and self-trade prevention through the
/// API, refusals with their reasons in the answer, the order and the audit trail, and a `gtd`
/// order expired by the leader's expiry entry at the same point of every replica's log.
#[tokio::test]
async fn order_terms_fill_refuse_and_expire_the_same_on_every_replica() {
    let (cluster, frontend, (_, alice)) = Cluster::start_with_user().await;
    let (_, bob) = cluster.new_user(&frontend).await;
    let (alice, bob) = (alice.as_str(), bob.as_str());
    let place = |key: &str, body: Value| {
        send(with_key(cluster.http.post(format!("{frontend}/orders")), Some(key)).json(&body))
    };
    let order = |side: &str, quantity: u32, price: f64, terms: Value| {
        let mut body =
            json!({"name": "GameStart", "quantity": quantity, "type": side, "price": price});
        body.as_object_mut()
            .unwrap()
            .extend(terms.as_object().unwrap().clone());
        body
    };
    let number = |body: &Value| body["data"]["transaction_number"].as_u64().unwrap();

    // Alice offers 3 at 20.00 and 2 at 21.00. Bob's ioc buy of 5 at 20.00 takes the 3 and
    // cancels the rest; his fok buy of 5 at 21.00 finds only 2 and is refused.
    assert_eq!(place(alice, order("sell", 3, 20.0, json!({}))).await.0, 200);
    assert_eq!(place(alice, order("sell", 2, 21.0, json!({}))).await.0, 200);
    let (status, body) = place(bob, order("buy", 5, 20.0, json!({"time_in_force": "ioc"}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            &body["data"]["status"],
            &body["data"]["filled_quantity"],
            &body["data"]["remaining_quantity"]
        ),
        (&json!("cancelled"), &json!(3), &json!(0)),
        "{body}"
    );
    let (status, body) = place(bob, order("buy", 5, 21.0, json!({"time_in_force": "fok"}))).await;
    assert_eq!(
        (status, &body["error"]["reason"]),
        (409, &json!("would_not_fill")),
        "{body}"
    );
    let fok = body["error"]["transaction_number"].as_u64().unwrap();
    let (_, body) = cluster.get(&format!("{frontend}/orders/{fok}")).await;
    assert_eq!(
        (&body["data"]["status"], &body["data"]["time_in_force"]),
        (&json!("rejected"), &json!("fok")),
        "{body}"
    );

    // A post-only buy at 21.00 would take Alice's offer: refused. At 19.00 it rests.
    let post_only = json!({"post_only": true});
    let (status, body) = place(bob, order("buy", 1, 21.0, post_only.clone())).await;
    assert_eq!(
        (status, &body["error"]["reason"]),
        (409, &json!("would_take_liquidity")),
        "{body}"
    );
    let (status, body) = place(bob, order("buy", 1, 19.0, post_only)).await;
    assert_eq!(
        (status, &body["data"]["status"]),
        (200, &json!("open")),
        "{body}"
    );
    // An expiry already passed when the leader sequences the order: refused, and logged.
    let passed = json!({"time_in_force": "gtd", "expire_at": "2020-01-01T00:00:00Z"});
    let (status, body) = place(bob, order("buy", 1, 19.0, passed)).await;
    assert_eq!(
        (status, &body["error"]["reason"]),
        (409, &json!("expiry_passed")),
        "{body}"
    );

    // Alice's own buy at 21.00 meets her offer: by default it is cancelled, with cancel_oldest
    // her offer is, and with none they trade.
    let (_, body) = place(alice, order("buy", 1, 21.0, json!({}))).await;
    assert_eq!(
        (&body["data"]["status"], &body["data"]["filled_quantity"]),
        (&json!("cancelled"), &json!(0)),
        "{body}"
    );
    let (_, body) = place(
        alice,
        order("buy", 1, 21.0, json!({"stp": "cancel_oldest"})),
    )
    .await;
    assert_eq!(body["data"]["status"], "open", "{body}");
    let (_, body) = cluster.get(&format!("{frontend}/book/GameStart")).await;
    assert_eq!(
        body["data"]["asks"],
        json!([]),
        "Alice's offer at 21.00 is cancelled: {body}"
    );

    // A gtd order expires at its time; every replica expires it at the same entry.
    let expire_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 5_000;
    let gtd = json!({"time_in_force": "gtd", "expire_at": expire_at});
    let (status, body) = place(alice, order("sell", 4, 30.0, gtd)).await;
    assert_eq!(
        (status, &body["data"]["status"]),
        (200, &json!("open")),
        "{body}"
    );
    let gtd = number(&body);
    common::wait_until(
        "the gtd order to expire",
        Duration::from_secs(20),
        || async {
            let (_, body) = cluster.get(&format!("{frontend}/orders/{gtd}")).await;
            body["data"]["status"] == "expired"
        },
    )
    .await;
    let logs = cluster.wait_for_identical_logs().await;
    let expiry = logs
        .iter()
        .find(|entry| entry["type"] == "expire")
        .expect("the leader's expiry entry");
    assert!(
        expiry["number"].as_u64().unwrap() > gtd && expiry["time"].as_u64().unwrap() >= expire_at,
        "{expiry}"
    );
    for base in &cluster.order_urls {
        let (_, body) = cluster.get(&format!("{base}/orders/{gtd}")).await;
        assert_eq!(body["data"]["status"], "expired", "{base}: {body}");
    }
    // The leader that wrote it counted it.
    let mut written = 0;
    for base in &cluster.order_urls {
        let metrics = cluster.insider.get(format!("{base}/metrics")).send().await;
        let text = metrics.unwrap().text().await.unwrap();
        written += text
            .lines()
            .find_map(|line| line.strip_prefix("stocknet_order_expiry_entries_total "))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    assert!(written >= 1, "no expiry entry counted");
    let (status, audit) = send(with_key(
        cluster
            .http
            .get(format!("{frontend}/audit?outcome=refused")),
        Some(bob),
    ))
    .await;
    assert_eq!(status, 200, "{audit}");
    let reasons: Vec<&str> = audit["data"]["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        ["expiry_passed", "would_take_liquidity", "would_not_fill"],
        "{audit}"
    );
}

/// Issue 21, item 6: a client order id is echoed, unique among the user's open orders, found
/// with `GET /orders`, in the audit trail, and cancels its order; a retry of that cancel gets
/// the same answer.
#[tokio::test]
async fn a_client_order_id_names_an_order_until_it_closes() {
    let (cluster, frontend, (user, key)) = Cluster::start_with_user().await;
    let order = json!({"name": "GameStart", "quantity": 2, "type": "buy", "price": 5.0,
                       "client_order_id": "ladder-1"});
    let place = |key: Option<&str>| {
        send(with_key(cluster.http.post(format!("{frontend}/orders")), key).json(&order))
    };
    let (status, body) = place(Some(&key)).await;
    assert_eq!(
        (status, &body["data"]["client_order_id"]),
        (200, &json!("ladder-1")),
        "{body}"
    );
    let first = body["data"]["transaction_number"].as_u64().unwrap();
    let (status, body) = place(Some(&key)).await;
    assert_eq!(
        (status, &body["error"]["reason"]),
        (409, &json!("duplicate_client_order_id")),
        "{body}"
    );
    assert_eq!(
        place(None).await.0,
        401,
        "an anonymous order has no client id"
    );

    let (_, body) = cluster
        .get(&format!(
            "{frontend}/orders?user={user}&client_order_id=ladder-1"
        ))
        .await;
    let numbers: Vec<u64> = body["data"]["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [first], "{body}");

    let cancel = |key: &str| {
        send(
            with_key(
                cluster
                    .http
                    .delete(format!("{frontend}/orders?client_order_id=ladder-1")),
                Some(key),
            )
            .header("idempotency-key", "cancel-ladder-1"),
        )
    };
    let (status, body) = cancel(&key).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            &body["data"]["order"]["number"],
            &body["data"]["order"]["status"]
        ),
        (&json!(first), &json!("cancelled")),
        "{body}"
    );
    let (status, retried) = cancel(&key).await;
    let own = |method: reqwest::Method, path: &str| {
        send(
            cluster
                .http
                .request(method, format!("{frontend}{path}"))
                .bearer_auth(&key),
        )
    };
    assert_eq!(
        (status, &retried),
        (200, &body),
        "a retry gets the same answer"
    );
    let (status, body) = own(reqwest::Method::DELETE, "/orders?client_order_id=ladder-1").await;
    assert_eq!(status, 404, "no open order has it now: {body}");

    // Free again once its order closed; the audit trail names it.
    assert_eq!(place(Some(&key)).await.0, 200);
    let (_, audit) = own(reqwest::Method::GET, "/audit?outcome=accepted").await;
    let ids: Vec<&Value> = audit["data"]["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "buy")
        .map(|r| &r["client_order_id"])
        .collect();
    assert_eq!(ids, [&json!("ladder-1"), &json!("ladder-1")], "{audit}");
}

/// Issue 21, item 5: a market order against the book sweeps the offers within its protection
/// (the frontend's 5% by default), cancels the rest and leaves the house alone; the seed's
/// market order still trades with the house.
#[tokio::test]
async fn a_market_order_on_the_book_sweeps_within_its_protection() {
    let cluster = Cluster::start(1).await;
    let frontend = cluster.frontend().to_owned();
    let house = cluster.quantity(0, "FishCo").await;
    for (quantity, price) in [(2, 10.0), (2, 10.4), (2, 11.0)] {
        let body = json!({"name": "FishCo", "quantity": quantity, "type": "sell", "price": price});
        let (status, reply) = cluster.post(&format!("{frontend}/orders"), &body).await;
        assert_eq!(status, 200, "{reply}");
    }
    let market = json!({"name": "FishCo", "quantity": 5, "type": "buy", "order_type": "market"});
    let (status, body) = cluster.post(&format!("{frontend}/orders"), &market).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["data"]["status"], &body["data"]["filled_quantity"]),
        (&json!("cancelled"), &json!(4)),
        "10.00 and 10.40 are within 5% of 10.00, 11.00 is not: {body}"
    );
    let number = body["data"]["transaction_number"].as_u64().unwrap();
    let (_, body) = cluster.get(&format!("{frontend}/orders/{number}")).await;
    assert_eq!(
        (&body["data"]["order_type"], &body["data"]["price"]),
        (&json!("market"), &json!(10.5)),
        "{body}"
    );
    let (_, stock) = cluster.get(&format!("{frontend}/stocks/FishCo")).await;
    assert_eq!(
        (&stock["data"]["price"], stock["data"]["quantity"].as_u64()),
        (&json!(10.4), Some(house)),
        "the last trade's price; the house untouched: {stock}"
    );
    let sell = json!({"name": "FishCo", "quantity": 1, "type": "sell", "order_type": "market"});
    let (status, body) = cluster.post(&format!("{frontend}/orders"), &sell).await;
    assert_eq!(
        (status, &body["error"]["reason"]),
        (409, &json!("no_liquidity")),
        "no bids: {body}"
    );
    let seed = json!({"name": "FishCo", "quantity": 1, "type": "buy"});
    assert_eq!(
        cluster.post(&format!("{frontend}/orders"), &seed).await.0,
        200
    );
    assert_eq!(cluster.quantity(0, "FishCo").await, house - 1);
}

/// Issue 21, item 4: an iceberg shows only its slice on the book, and refills it at the back
/// of its level.
#[tokio::test]
async fn an_iceberg_shows_its_slice_and_refills_behind_the_level() {
    let cluster = Cluster::start(1).await;
    let frontend = cluster.frontend().to_owned();
    let orders = format!("{frontend}/orders");
    let iceberg = json!({"name": "BoarCo", "quantity": 10, "type": "sell", "price": 20.0,
                         "display_quantity": 3});
    let (status, body) = cluster.post(&orders, &iceberg).await;
    assert_eq!(status, 200, "{body}");
    let number = body["data"]["transaction_number"].as_u64().unwrap();
    let plain = json!({"name": "BoarCo", "quantity": 2, "type": "sell", "price": 20.0});
    let plain = cluster.post(&orders, &plain).await.1["data"]["transaction_number"].clone();
    let (_, book) = cluster.get(&format!("{frontend}/book/BoarCo")).await;
    assert_eq!(
        book["data"]["asks"],
        json!([{"price": 20.0, "quantity": 5, "orders": 2}]),
        "3 of the iceberg's 10 show: {book}"
    );
    let buy = json!({"name": "BoarCo", "quantity": 4, "type": "buy", "price": 20.0});
    let (_, body) = cluster.post(&orders, &buy).await;
    let buyer = body["data"]["transaction_number"].as_u64().unwrap();
    let (_, trades) = cluster.get(&format!("{frontend}/trades?name=BoarCo")).await;
    let sellers: Vec<(Value, Value)> = trades["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["buy_order"] == buyer)
        .map(|t| (t["sell_order"].clone(), t["quantity"].clone()))
        .collect();
    assert_eq!(
        sellers,
        [(json!(number), json!(3)), (plain, json!(1))],
        "the slice, then the order that was behind it: {trades}"
    );
    let (_, order) = cluster.get(&format!("{frontend}/orders/{number}")).await;
    assert_eq!(
        (
            &order["data"]["display_quantity"],
            &order["data"]["remaining_quantity"]
        ),
        (&json!(3), &json!(7)),
        "{order}"
    );
}

/// Issue 21, item 9: candles of a stock's book trades, whatever minutes they fell in.
#[tokio::test]
async fn candles_sum_up_the_trades() {
    let cluster = Cluster::start(1).await;
    let frontend = cluster.frontend().to_owned();
    let orders = format!("{frontend}/orders");
    // Three trades: 2 at 30.00, 1 at 31.50, 3 at 29.25.
    for (quantity, price) in [(2, 30.0), (1, 31.5), (3, 29.25)] {
        let sell =
            json!({"name": "MenhirCo", "quantity": quantity, "type": "sell", "price": price});
        let buy = json!({"name": "MenhirCo", "quantity": quantity, "type": "buy", "price": price});
        assert_eq!(cluster.post(&orders, &sell).await.0, 200);
        let (status, body) = cluster.post(&orders, &buy).await;
        assert_eq!(
            (status, &body["data"]["status"]),
            (200, &json!("filled")),
            "{body}"
        );
    }
    for interval in ["1m", "5m", "1h", "1d"] {
        let (status, body) = cluster
            .get(&format!("{frontend}/candles/MenhirCo?interval={interval}"))
            .await;
        assert_eq!(status, 200, "{body}");
        let candles = body["data"]["candles"].as_array().unwrap();
        assert!(!candles.is_empty(), "{interval}: {body}");
        let sum = |field: &str| {
            candles
                .iter()
                .map(|c| c[field].as_u64().unwrap())
                .sum::<u64>()
        };
        let prices = |field: &str| {
            candles
                .iter()
                .map(|c| c[field].as_f64().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!((sum("volume"), sum("trades")), (6, 3), "{interval}: {body}");
        assert_eq!(candles[0]["open"], json!(30.0), "{interval}");
        assert_eq!(
            candles[candles.len() - 1]["close"],
            json!(29.25),
            "{interval}"
        );
        assert_eq!(
            prices("high").into_iter().fold(0.0, f64::max),
            31.5,
            "{interval}"
        );
        assert_eq!(
            prices("low").into_iter().fold(f64::MAX, f64::min),
            29.25,
            "{interval}"
        );
    }
    for query in ["interval=2m", "from=tomorrow", "limit=5"] {
        let (status, body) = cluster
            .get(&format!("{frontend}/candles/MenhirCo?{query}"))
            .await;
        assert_eq!(status, 400, "{query}: {body}");
    }
    // An empty range has no candles; a wide one is a page (here all of it).
    let (_, body) = cluster
        .get(&format!(
            "{frontend}/candles/MenhirCo?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"
        ))
        .await;
    assert_eq!(body["data"]["candles"], json!([]), "{body}");
    let (_, body) = cluster
        .get(&format!("{frontend}/candles/MenhirCo?interval=1m&from=0"))
        .await;
    let volume: u64 = body["data"]["candles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["volume"].as_u64().unwrap())
        .sum();
    assert_eq!(
        (volume, &body["data"]["next_from"]),
        (6, &Value::Null),
        "{body}"
    );
    assert_eq!(
        cluster.get(&format!("{frontend}/candles/NoSuchCo")).await.0,
        404
    );
}

/// Issue 21, item 3: a stop-limit order waits off the book until a trade reaches its stop,
/// then enters, the same on every replica.
#[tokio::test]
async fn a_stop_order_enters_when_a_trade_reaches_its_stop() {
    let cluster = Cluster::start(1).await;
    let frontend = cluster.frontend().to_owned();
    let orders = format!("{frontend}/orders");
    let place = |body: Value| {
        let orders = orders.clone();
        let cluster = &cluster;
        async move { cluster.post(&orders, &body).await }
    };
    // Offers at 50.00 and 51.00; a stop-limit buy of 2 at 51.00 once a trade is at 50.50 or
    // above.
    for price in [50.0, 51.0] {
        let body = json!({"name": "BoarCo", "quantity": 2, "type": "sell", "price": price});
        assert_eq!(place(body).await.0, 200);
    }
    let stop = json!({"name": "BoarCo", "quantity": 2, "type": "buy", "price": 51.0,
                      "stop_price": 50.5});
    let (status, body) = place(stop).await;
    assert_eq!(
        (status, &body["data"]["status"]),
        (200, &json!("untriggered")),
        "{body}"
    );
    let stop = body["data"]["transaction_number"].as_u64().unwrap();
    // A trade at 50.00 does not reach it; one at 51.00 does (a buy of 2 takes the last one
    // at 50.00 and one at 51.00), and it buys the last one left at 51.00.
    let buy = |quantity: u32, price: f64| json!({"name": "BoarCo", "quantity": quantity, "type": "buy", "price": price});
    assert_eq!(place(buy(1, 50.0)).await.0, 200);
    let (_, order) = cluster.get(&format!("{frontend}/orders/{stop}")).await;
    assert_eq!(order["data"]["status"], "untriggered", "{order}");
    let (_, body) = place(buy(2, 51.0)).await;
    let trigger = body["data"]["transaction_number"].clone();
    let (_, order) = cluster.get(&format!("{frontend}/orders/{stop}")).await;
    assert_eq!(
        (
            &order["data"]["status"],
            &order["data"]["triggered_at"],
            &order["data"]["filled_quantity"]
        ),
        (&json!("partially_filled"), &trigger, &json!(1)),
        "one of 51.00 left after the trigger: {order}"
    );
    cluster.wait_for_identical_logs().await;
    for base in &cluster.order_urls {
        let (_, order) = cluster.get(&format!("{base}/orders/{stop}")).await;
        assert_eq!(order["data"]["triggered_at"], trigger, "{base}: {order}");
    }
}

/// Issue 21, item 10: a user with a display name makes a second key, lists both by prefix, and
/// revokes the first: every frontend refuses it at once (an open order stream with it is
/// closed), the second goes on working; an operator's `stocknet admin revoke-key` revokes any
/// key the same way.
#[tokio::test]
async fn a_revoked_key_is_refused_at_once_on_every_frontend() {
    use futures::{SinkExt, StreamExt};
    use reqwest::Method;
    use tokio_tungstenite::tungstenite::Message;
    let cluster = Cluster::start(2).await;
    let (one, two) = (
        cluster.frontend_urls[0].clone(),
        cluster.frontend_urls[1].clone(),
    );
    let (status, created) = cluster
        .post(&format!("{one}/users"), &json!({"display_name": "Ada"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let user = created["data"]["user_id"].as_u64().unwrap();
    let first = created["data"]["api_key"].as_str().unwrap().to_owned();
    assert_eq!(
        (&created["data"]["display_name"], &created["data"]["key_id"]),
        (&json!("Ada"), &json!(1))
    );
    let as_user = |method: Method, url: String, key: &str| {
        cluster
            .http
            .request(method, url)
            .bearer_auth(key.to_owned())
    };
    // A request with no body, with `key`, and its answer.
    let keyed = |method: Method, url: String, key: &str| send(as_user(method, url, key));
    let (status, made) = keyed(Method::POST, format!("{two}/users/{user}/keys"), &first).await;
    assert_eq!(status, 201, "{made}");
    let second = made["data"]["api_key"].as_str().unwrap().to_owned();
    assert_eq!(made["data"]["key_id"], 2);
    let (status, listed) = keyed(Method::GET, format!("{one}/users/{user}/keys"), &second).await;
    assert_eq!(status, 200, "{listed}");
    let prefixes: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["prefix"].as_str().unwrap())
        .collect();
    assert_eq!(prefixes.len(), 2, "{listed}");
    assert!(
        first.starts_with(prefixes[0]) && second.starts_with(prefixes[1]),
        "{listed}"
    );
    assert!(prefixes
        .iter()
        .all(|p| p.len() == format!("snk_{user}_").len() + 8));
    let text = listed.to_string();
    assert!(
        !text.contains(&first[12..]) && !text.contains(&second[12..]),
        "no key shown"
    );
    // Another user's keys are not the caller's to see.
    let (status, _) = keyed(
        Method::GET,
        format!("{one}/users/{}/keys", user + 1),
        &first,
    )
    .await;
    assert_eq!(status, 403);

    // Both frontends know the first key; an order stream runs with it on the second.
    for frontend in [&one, &two] {
        let (status, me) = keyed(Method::GET, format!("{frontend}/users/{user}"), &first).await;
        assert_eq!((status, &me["data"]["keys"]), (200, &json!(2)), "{me}");
    }
    let ws = format!("{}/ws/orders", two.replace("http://", "ws://"));
    let (mut stream, _) = tokio_tungstenite::connect_async(&ws)
        .await
        .expect("connects");
    stream
        .send(Message::Text(json!({"api_key": first}).to_string().into()))
        .await
        .unwrap();
    let subscribed = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("subscribed within 20 s");
    assert!(
        matches!(subscribed, Some(Ok(Message::Text(_)))),
        "{subscribed:?}"
    );

    let (status, revoked) = keyed(
        Method::DELETE,
        format!("{one}/users/{user}/keys/1"),
        &second,
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["data"]["revoked"].is_u64(), "{revoked}");
    for frontend in [&one, &two] {
        let (status, body) = keyed(Method::GET, format!("{frontend}/users/{user}"), &first).await;
        assert_eq!(status, 401, "{frontend}: {body}");
        let order = json!({"name": "GameStart", "type": "buy", "quantity": 1, "price": 1.0});
        let (status, _) =
            send(as_user(Method::POST, format!("{frontend}/orders"), &first).json(&order)).await;
        assert_eq!(status, 401, "{frontend}: an order with the revoked key");
        let (status, _) = keyed(Method::GET, format!("{frontend}/users/{user}"), &second).await;
        assert_eq!(status, 200, "{frontend}: the second key still works");
    }
    common::expect_policy_close(&mut stream, "the stream with the revoked key").await;
    // Revoking it again answers the same; the list shows the second key only.
    let (status, again) = keyed(
        Method::DELETE,
        format!("{two}/users/{user}/keys/1"),
        &second,
    )
    .await;
    assert_eq!(
        (status, &again["data"]["revoked"]),
        (200, &revoked["data"]["revoked"])
    );
    let (_, listed) = keyed(Method::GET, format!("{two}/users/{user}/keys"), &second).await;
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(1), "{listed}");

    // The operator revokes the second key through the catalog.
    let output = std::process::Command::new(common::BIN)
        .args(["admin", "revoke-key", "--catalog", &cluster.catalog_url])
        .args(["--user", &user.to_string(), "--key", "2"])
        .arg("--secret-file")
        .arg(cluster.dir.path().join("secret"))
        .output()
        .expect("stocknet admin runs");
    let printed = common::succeeded(&output);
    assert!(
        printed.contains("key 2") && printed.contains("revoked"),
        "{printed}"
    );
    for frontend in [&one, &two] {
        let (status, _) = keyed(Method::GET, format!("{frontend}/users/{user}"), &second).await;
        assert_eq!(status, 401, "{frontend}");
    }
}
