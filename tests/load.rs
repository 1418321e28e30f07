//! `stocknet load` against a real cluster, briefly: it works and its verification passes.
//! (Its figures are measured in docs/BENCHMARKS.md, never asserted here.)

mod common;

use common::{Cluster, BIN};
use serde_json::Value;

/// Runs `stocknet load --frontend FRONTEND ARGS --json` (`args` split at spaces); it must
/// succeed. Returns its report.
async fn load(frontend: &str, args: &str) -> Value {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(["load", "--frontend", frontend])
        .args(args.split_whitespace())
        .arg("--json");
    let output = common::output_within(&mut command).await;
    serde_json::from_str(&common::succeeded(&output)).expect("JSON report")
}

#[tokio::test]
async fn load_client_trades_reads_back_every_order_and_reports() {
    let cluster = Cluster::start(1).await;
    let args = "--clients 4 --p 0,0.5 --iterations 25 --stocks GameStart,FishCo";
    let report = load(cluster.frontend(), args).await;
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);

    let lookup_only = &runs[0]["requests"];
    assert_eq!(lookup_only["lookup"]["ok"], 100, "{lookup_only}");
    assert!(lookup_only.get("order").is_none());

    let trading = &runs[1];
    let requests = &trading["requests"];
    assert_eq!(requests["lookup"]["ok"], 100, "{requests}");
    assert_eq!(requests["lookup"]["errors"], 0);
    assert_eq!(requests["order"]["errors"], 0);
    let placed = requests["order"]["ok"].as_u64().expect("orders");
    assert!(placed > 0, "{requests}");
    assert_eq!(trading["verification"]["checked"], placed);
    assert_eq!(trading["verification"]["mismatched"], 0);
    // Every acknowledged order is in the log, and so is every refused one.
    let refused = requests["order"]["refused"].as_u64().expect("refused");
    let log = cluster.wait_for_identical_logs().await;
    assert_eq!(common::orders_only(&log).len() as u64, placed + refused);
}

#[tokio::test]
async fn load_client_places_limit_orders_that_trade_for_its_users_and_follows_their_updates() {
    let cluster = Cluster::start(1).await;
    let args =
        "--clients 4 --p 1 --iterations 30 --stocks GameStart --limit --users 2 --order-streams";
    let report = load(cluster.frontend(), args).await;
    let run = &report["runs"][0];
    // Each user's stream heard of its orders, and none ended.
    let streams = &run["order_streams"];
    assert!(streams["updates"].as_u64().is_some_and(|n| n > 0), "{run}");
    assert_eq!(streams["ended"], 0, "{run}");
    // Limit orders are never refused for want of house inventory: all 120 are placed.
    assert_eq!(run["requests"]["order"]["ok"], 120, "{run}");
    assert_eq!(run["verification"]["checked"], 120);
    assert_eq!(run["verification"]["mismatched"], 0);
    // Prices within 1% of one another cross: the book traded, and the catalog shows the last
    // trade's price.
    let (status, trades) = cluster
        .get(&format!(
            "{}/trades?name=GameStart&limit=1000",
            cluster.frontend()
        ))
        .await;
    assert_eq!(status, 200, "{trades}");
    let trades = trades["data"].as_array().expect("trades");
    assert!(!trades.is_empty());
    let (_, stock) = cluster
        .get(&format!("{}/stocks/GameStart", cluster.frontend()))
        .await;
    assert_eq!(
        stock["data"]["price"],
        trades.last().expect("a trade")["price"]
    );
    // Sessions alternate between the two users: every order is one of theirs, and both
    // hold positions.
    let log = common::orders_only(&cluster.wait_for_identical_logs().await);
    assert_eq!(log.len(), 120);
    assert!(
        log.iter().all(|e| e["user"] == 1 || e["user"] == 2),
        "{log:?}"
    );
    for user in [1, 2] {
        let (_, held) = cluster
            .get(&format!("{}/portfolios/{user}", cluster.order_urls[0]))
            .await;
        assert!(
            held["data"].as_array().is_some_and(|h| !h.is_empty()),
            "{held}"
        );
    }
}
