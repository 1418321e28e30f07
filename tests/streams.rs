//! The live streams through real frontends: trades, a book, candles and prices, on two
//! frontends at once, across a kill of the order leader.

mod common;

use std::time::Duration;

use common::Cluster;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(frontend: &str, path: &str) -> Socket {
    let url = format!("{}{path}", frontend.replace("http://", "ws://"));
    let (socket, _) = connect_async(&url).await.expect("WebSocket connects");
    socket
}

/// The next JSON message, waiting at most 20 s.
async fn next(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("a message within 20 s")
            .expect("the stream is open")
            .expect("a message");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            Message::Ping(data) => socket.send(Message::Pong(data)).await.expect("pong"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Skips messages until one satisfies `wanted`.
async fn next_matching(socket: &mut Socket, wanted: impl Fn(&Value) -> bool) -> Value {
    loop {
        let message = next(socket).await;
        if wanted(&message) {
            return message;
        }
    }
}

/// A cluster with two frontends, and their URLs.
async fn two_frontends() -> (Cluster, String, String) {
    let cluster = Cluster::start(2).await;
    let (one, two) = (
        cluster.frontend_urls[0].clone(),
        cluster.frontend_urls[1].clone(),
    );
    (cluster, one, two)
}

#[tokio::test]
async fn every_frontend_streams_trades_books_candles_and_prices_across_a_failover() {
    let (mut cluster, one, two) = two_frontends().await;
    let mut trades = connect(&two, "/ws/trades").await;
    let mut book_one = connect(&one, "/ws/book/GameStart").await;
    let mut book_two = connect(&two, "/ws/book/GameStart").await;
    let mut prices = connect(&two, "/ws/prices").await;
    let mut candles = connect(&two, "/ws/candles/GameStart?interval=1d").await;
    let snapshot = next(&mut candles).await;
    assert_eq!(
        (
            &snapshot["type"],
            &snapshot["interval"],
            &snapshot["candles"]
        ),
        (&json!("snapshot"), &json!("1d"), &json!([])),
        "{snapshot}"
    );
    for book in [&mut book_one, &mut book_two] {
        let snapshot = next(book).await;
        assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
        assert_eq!(snapshot["bids"], json!([]));
    }
    let snapshot = next(&mut prices).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert!(snapshot["stocks"].as_array().expect("stocks").len() >= 10);

    let resting = cluster.must_limit(0, "sell", 5, 20.5).await;
    assert_eq!(resting["status"], "open");
    for book in [&mut book_one, &mut book_two] {
        let update = next(book).await;
        assert_eq!(update["type"], "update", "{update}");
        assert_eq!(
            update["levels"],
            json!([{"side": "sell", "price": 20.5, "quantity": 5, "orders": 1}])
        );
    }
    let taker = cluster.must_limit(0, "buy", 2, 21.0).await;
    assert_eq!(taker["status"], "filled");
    let trade = next(&mut trades).await;
    assert_eq!(
        (
            trade["type"].clone(),
            trade["price"].clone(),
            trade["quantity"].clone()
        ),
        (json!("trade"), json!(20.5), json!(2))
    );
    assert_eq!(trade["sell_order"], resting["transaction_number"]);
    for book in [&mut book_one, &mut book_two] {
        let update = next(book).await;
        assert_eq!(
            update["levels"],
            json!([{"side": "sell", "price": 20.5, "quantity": 3, "orders": 1}]),
            "{update}"
        );
        assert_eq!(update["last_price"], 20.5);
    }
    let first = next(&mut candles).await;
    assert_eq!(first["type"], "update", "{first}");
    assert_eq!(
        [
            &first["candle"]["open"],
            &first["candle"]["close"],
            &first["candle"]["volume"],
            &first["candle"]["trades"],
        ],
        [&json!(20.5), &json!(20.5), &json!(2), &json!(1)],
        "{first}"
    );
    let price = next_matching(&mut prices, |m| m["name"] == "GameStart").await;
    assert_eq!(
        (price["type"].clone(), price["price"].clone()),
        (json!("price"), json!(20.5))
    );

    // The leader dies; the next order elects another, and the streams go on from it.
    let leader = cluster.leader().await.expect("a leader");
    cluster.orders[leader].kill9();
    let taker = cluster.must_limit(1, "buy", 3, 20.5).await;
    assert_eq!(taker["status"], "filled");
    let trade = next(&mut trades).await;
    assert_eq!(
        (trade["quantity"].clone(), trade["buy_order"].clone()),
        (json!(3), taker["transaction_number"].clone())
    );
    for book in [&mut book_one, &mut book_two] {
        let update = next_matching(book, |m| m["type"] == "update").await;
        assert_eq!(
            update["levels"],
            json!([{"side": "sell", "price": 20.5, "quantity": 0, "orders": 0}]),
            "{update}"
        );
    }
    // The day's candle grows by the trade (a new one if the UTC day turned meanwhile).
    let second = next_matching(&mut candles, |m| m["type"] == "update").await;
    let expected = if second["candle"]["time"] == first["candle"]["time"] {
        [json!(5), json!(2)]
    } else {
        [json!(3), json!(1)]
    };
    assert_eq!(
        [&second["candle"]["volume"], &second["candle"]["trades"]],
        [&expected[0], &expected[1]],
        "{second}"
    );
    cluster.orders[leader].restart();
}

/// Sends `socket` a message longer than a stream takes; the code of the close that follows.
async fn closed_for_too_long_a_message(socket: &mut Socket) -> u16 {
    let long = "x".repeat(stocknet_frontend::streams::CLIENT_MESSAGE_LIMIT + 1);
    socket.send(Message::Text(long.into())).await.expect("sent");
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next()).await;
        match message.expect("an answer in time") {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
            Some(Ok(Message::Close(None))) => panic!("a close frame without a code"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Refused at the handshake: an unknown stock or interval, a bad position; and once open, a
/// message over the limit closes the stream with 1009 (RFC 6455's "message too big").
#[tokio::test]
async fn a_stream_for_an_unknown_stock_or_interval_or_a_bad_position_is_refused() {
    let cluster = Cluster::start(1).await;
    let mut trades = connect(cluster.frontend(), "/ws/trades").await;
    assert_eq!(closed_for_too_long_a_message(&mut trades).await, 1009);

    for (path, status) in [
        ("/ws/book/NoSuchStock", 404),
        ("/ws/candles/NoSuchStock", 404),
        ("/ws/candles/GameStart?interval=7m", 400),
        ("/ws/orders?after=soon", 400),
        ("/ws/orders?since=4", 400),
    ] {
        let url = format!("{}{path}", cluster.frontend().replace("http://", "ws://"));
        match connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), status, "{path}")
            }
            other => panic!(
                "{path}: expected {status}, got {:?}",
                other.map(|(_, r)| r.status())
            ),
        }
    }
}

/// Sends `body` to `path` of `frontend` as the user whose key is `key`.
async fn as_user(
    cluster: &Cluster,
    method: reqwest::Method,
    url: String,
    key: &str,
    body: Option<Value>,
) -> Value {
    let mut request = cluster
        .client_for(&url)
        .request(method, &url)
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("an answer");
    let status = response.status();
    let reply: Value = response.json().await.expect("JSON");
    assert!(status.is_success(), "{status}: {reply}");
    reply["data"].clone()
}

/// Places `order` through `frontend` with `key`; its transaction number.
async fn place_as(cluster: &Cluster, frontend: &str, key: &str, order: Value) -> Value {
    let url = format!("{frontend}/orders");
    let placed = as_user(cluster, reqwest::Method::POST, url, key, Some(order)).await;
    placed["transaction_number"].clone()
}

/// Opens `/ws/orders` on `frontend` with the key in the Authorization header.
async fn own_orders(frontend: &str, query: &str, key: &str) -> Socket {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}/ws/orders{query}", frontend.replace("http://", "ws://"));
    let mut request = url.into_client_request().expect("a request");
    let bearer = format!("Bearer {key}").parse().expect("a header value");
    request.headers_mut().insert("authorization", bearer);
    let (socket, _) = connect_async(request).await.expect("WebSocket connects");
    socket
}

#[tokio::test]
async fn a_user_streams_their_own_order_updates_and_resumes_after_a_failover() {
    let (mut cluster, one, two) = two_frontends().await;
    let (seller, seller_key) = cluster.new_user(&one).await;
    let (buyer, buyer_key) = cluster.new_user(&one).await;
    // The seller's key in the header, on the other frontend; the buyer's as a first message.
    let mut sells = own_orders(&two, "", &seller_key).await;
    let subscribed = next(&mut sells).await;
    assert_eq!(
        (&subscribed["type"], &subscribed["user"]),
        (&json!("subscribed"), &json!(seller)),
        "{subscribed}"
    );
    let url = format!("{}/ws/orders", one.replace("http://", "ws://"));
    let (mut buys, _) = connect_async(&url).await.expect("connects");
    buys.send(Message::Text(
        json!({"api_key": buyer_key}).to_string().into(),
    ))
    .await
    .expect("hello");
    let subscribed = next(&mut buys).await;
    assert_eq!(subscribed["user"], json!(buyer), "{subscribed}");

    let order = |side: &str, quantity: u64, price: f64, id: &str| {
        json!({"name": "GameStart", "type": side, "quantity": quantity, "price": price,
            "client_order_id": id})
    };
    let number = place_as(&cluster, &one, &seller_key, order("sell", 5, 20.5, "ask-1")).await;
    let accepted = next_matching(&mut sells, |m| m["type"] == "update").await;
    assert_eq!(
        (
            &accepted["event"],
            &accepted["order"]["number"],
            &accepted["order"]["status"]
        ),
        (&json!("accepted"), &number, &json!("open")),
        "{accepted}"
    );
    assert_eq!(accepted["order"]["client_order_id"], "ask-1");
    assert_eq!(
        accepted["entry"], number,
        "a new order's entry is its number"
    );

    let taken = place_as(&cluster, &two, &buyer_key, order("buy", 2, 21.0, "bid-1")).await;
    let accepted = next_matching(&mut buys, |m| m["type"] == "update").await;
    assert_eq!(
        (&accepted["order"]["number"], &accepted["event"]),
        (&taken, &json!("accepted"))
    );
    // The entry goes on for the buyer (the fill): not a place to resume after yet.
    assert_eq!(accepted["last_of_entry"], false, "{accepted}");
    let filled = next_matching(&mut buys, |m| m["type"] == "update").await;
    assert_eq!(filled["last_of_entry"], true, "{filled}");
    assert_eq!(
        (
            &filled["event"],
            &filled["fills"][0]["quantity"],
            &filled["fills"][0]["price"]
        ),
        (&json!("filled"), &json!(2), &json!(20.5)),
        "{filled}"
    );
    // The seller hears of the fill of their resting order, and of nothing of the buyer's.
    let partial = next_matching(&mut sells, |m| m["type"] == "update").await;
    assert_eq!(
        (
            &partial["event"],
            &partial["order"]["number"],
            &partial["entry"]
        ),
        (&json!("partially_filled"), &number, &taken),
        "{partial}"
    );
    assert_eq!(partial["order"]["remaining_quantity"], 3);
    assert_eq!(partial["last_of_entry"], true, "{partial}");
    assert_eq!(partial["fills"], filled["fills"]);
    let seen = partial["entry"].as_u64().expect("entry");
    drop(sells);

    // While the seller is away the leader dies, and the seller cancels through a new one.
    let leader = cluster.leader().await.expect("a leader");
    cluster.orders[leader].kill9();
    let delete = reqwest::Method::DELETE;
    let cancelled = as_user(
        &cluster,
        delete,
        format!("{one}/orders/{number}"),
        &seller_key,
        None,
    )
    .await;
    let cancel_entry = cancelled["transaction_number"].clone();
    // Back after the last entry it saw: the cancel, with nothing missed and nothing twice.
    let mut sells = own_orders(&two, &format!("?after={seen}"), &seller_key).await;
    let subscribed = next(&mut sells).await;
    assert_eq!(subscribed["after"], json!(seen), "{subscribed}");
    let update = next(&mut sells).await;
    assert_eq!(
        (
            &update["type"],
            &update["event"],
            &update["order"]["number"],
            &update["entry"]
        ),
        (
            &json!("update"),
            &json!("cancelled"),
            &number,
            &cancel_entry
        ),
        "{update}"
    );
    cluster.orders[leader].restart();
}

#[tokio::test]
async fn an_order_stream_needs_its_users_key() {
    let cluster = Cluster::start(1).await;
    let frontend = cluster.frontend().to_owned();
    let (user, key) = cluster.new_user(&frontend).await;
    let wrong = key.replace(&format!("snk_{user}_"), &format!("snk_{}_", user + 1));
    let ws = format!("{}/ws/orders", frontend.replace("http://", "ws://"));
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = ws.clone().into_client_request().expect("a request");
    let bearer = format!("Bearer {wrong}").parse().expect("a header value");
    request.headers_mut().insert("authorization", bearer);
    match connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("expected 401, got {:?}", other.map(|(_, r)| r.status())),
    }
    // A wrong key as the first message closes the stream with a policy violation.
    for hello in [json!({"api_key": wrong}), json!({"key": key})] {
        let (mut socket, _) = connect_async(&ws).await.expect("connects");
        socket
            .send(Message::Text(hello.to_string().into()))
            .await
            .expect("hello");
        common::expect_policy_close(&mut socket, &hello.to_string()).await;
    }
    // A first message too long to be a hello is refused as too long.
    let (mut socket, _) = connect_async(&ws).await.expect("connects");
    assert_eq!(closed_for_too_long_a_message(&mut socket).await, 1009);
    // A position past the end of the log is no stream's: the stream is closed, rather than
    // skipping every update up to it without a word.
    let mut ahead = own_orders(&frontend, "?after=999999999", &key).await;
    common::expect_policy_close(&mut ahead, "after past the end of the log").await;
}

/// Places a resting sell for the user whose key is `key` through `frontend`, under the
/// Idempotency-Key `id`, again under the same key while the group answers 503 or 504 (a hung
/// or restarting leader), for at most 30 s; its transaction number.
async fn place_through_faults(cluster: &Cluster, frontend: &str, key: &str, id: &str) -> u64 {
    let url = format!("{frontend}/orders");
    let body = json!({"name": "GameStart", "type": "sell", "quantity": 1, "price": 900.0});
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let response = cluster
            .client_for(&url)
            .post(&url)
            .bearer_auth(key)
            .header("idempotency-key", id)
            .json(&body)
            .send()
            .await;
        if let Ok(response) = response {
            let status = response.status();
            let reply: Value = response.json().await.expect("JSON");
            if status.is_success() {
                return reply["data"]["transaction_number"]
                    .as_u64()
                    .expect("a number");
            }
            assert!(
                status == 503 || status == 504,
                "{status}: an answer other than not-now: {reply}"
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "order {id} not placed within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The next update on `stream` is the acceptance of order `number`.
async fn accepted_next(stream: &mut Socket, number: u64) {
    let update = next_matching(stream, |m| m["type"] == "update").await;
    assert_eq!(
        (&update["event"], &update["order"]["number"]),
        (&json!("accepted"), &json!(number)),
        "{update}"
    );
}

/// A user's order stream through gray failures of the order leader, with two frontends: the
/// stream on one, the orders through the other. The leader hangs (SIGSTOP); later the new
/// leader is killed and back within a second. The stream's frontend leaves each for the leader
/// that follows, and the stream gets every update of the user's, in order, each once.
#[tokio::test]
async fn a_user_s_order_stream_goes_on_through_a_hung_and_a_restarted_leader() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let (mut cluster, one, two) = two_frontends().await;
    let (_, key) = cluster.new_user(&one).await;
    let mut stream = own_orders(&two, "", &key).await;
    assert_eq!(next(&mut stream).await["type"], "subscribed");
    let signal = |cluster: &Cluster, index: usize, signal: Signal| {
        let pid = cluster.orders[index].pid().expect("running");
        kill(Pid::from_raw(i32::try_from(pid).expect("a pid")), signal).expect("signal");
    };
    let first = place_through_faults(&cluster, &one, &key, "gray-1").await;
    accepted_next(&mut stream, first).await;

    let hung = cluster.leader().await.expect("a leader");
    signal(&cluster, hung, Signal::SIGSTOP);
    let second = place_through_faults(&cluster, &one, &key, "gray-2").await;
    accepted_next(&mut stream, second).await;
    signal(&cluster, hung, Signal::SIGCONT);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let leader = loop {
        if let Some(leader) = cluster.leader().await {
            break leader;
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader in 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    cluster.orders[leader].kill9();
    cluster.orders[leader].restart();
    let third = place_through_faults(&cluster, &one, &key, "gray-3").await;
    accepted_next(&mut stream, third).await;
    // Nothing came twice meanwhile: the update after the third order's is the fourth's.
    let fourth = place_through_faults(&cluster, &one, &key, "gray-4").await;
    accepted_next(&mut stream, fourth).await;
}
