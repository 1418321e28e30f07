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

async fn limit(cluster: &Cluster, frontend: usize, side: &str, quantity: u64, price: f64) -> Value {
    let body = json!({"name": "GameStart", "type": side, "quantity": quantity, "price": price});
    let (status, reply) = cluster
        .post(
            &format!("{}/orders", cluster.frontend_urls[frontend]),
            &body,
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    reply["data"].clone()
}

#[tokio::test]
async fn every_frontend_streams_trades_books_candles_and_prices_across_a_failover() {
    let mut cluster = Cluster::start(2).await;
    let (one, two) = (
        cluster.frontend_urls[0].clone(),
        cluster.frontend_urls[1].clone(),
    );
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

    let resting = limit(&cluster, 0, "sell", 5, 20.5).await;
    assert_eq!(resting["status"], "open");
    for book in [&mut book_one, &mut book_two] {
        let update = next(book).await;
        assert_eq!(update["type"], "update", "{update}");
        assert_eq!(
            update["levels"],
            json!([{"side": "sell", "price": 20.5, "quantity": 5, "orders": 1}])
        );
    }
    let taker = limit(&cluster, 0, "buy", 2, 21.0).await;
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
    let taker = limit(&cluster, 1, "buy", 3, 20.5).await;
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

#[tokio::test]
async fn a_stream_for_an_unknown_stock_or_interval_is_refused() {
    let cluster = Cluster::start(1).await;
    for (path, status) in [
        ("/ws/book/NoSuchStock", 404),
        ("/ws/candles/NoSuchStock", 404),
        ("/ws/candles/GameStart?interval=7m", 400),
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
