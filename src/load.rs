//! `stocknet load`: the seed design's load client, in Rust. Each client session loops: look
//! up a random stock, and with probability `p` place a random buy or sell. Afterwards every
//! acknowledged order is queried back and checked field by field. Reports count, errors,
//! throughput and latency percentiles (HdrHistogram) per request type.

mod connection;
mod order_streams;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use rand::RngExt;
use serde::Serialize;
use serde_json::{json, Value};

use connection::{Connection, Target};
use stocknet_common::env;
use stocknet_common::ports;
use stocknet_common::BaseUrl;

#[derive(Debug, Clone, clap::Args)]
pub struct LoadConfig {
    /// Frontend base URL.
    #[arg(long, env = env::LOAD_FRONTEND, default_value = ports::FRONTEND_URL)]
    pub frontend: String,
    /// Concurrent client sessions.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub clients: u32,
    /// Probability that an iteration also places an order; a comma-separated list runs a
    /// sweep, one run per value (e.g. 0,0.2,0.4,0.6,0.8).
    #[arg(long, value_delimiter = ',', default_value = "0.5", value_parser = parse_probability)]
    pub p: Vec<f64>,
    /// How long each run lasts (e.g. 10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration, conflicts_with = "iterations")]
    pub duration: Duration,
    /// Iterations per client instead of a duration.
    #[arg(long)]
    pub iterations: Option<u64>,
    /// Stocks to trade, comma-separated; default: the built-in catalog's.
    #[arg(long, value_delimiter = ',')]
    pub stocks: Vec<String>,
    /// JSON field of the order body holding the stock name, to drive other implementations
    /// of this API.
    #[arg(long, default_value = "name")]
    pub name_field: String,
    /// Largest quantity of a random order.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_quantity: u32,
    /// A second frontend, run with its cache off: every p is then run against both, as in the
    /// seed design's comparison.
    #[arg(long)]
    pub uncached_frontend: Option<String>,
    /// Draw mean and p99 latency against p, one line per request type and cache setting, as
    /// an SVG file.
    #[arg(long, value_parser = parse_svg_path)]
    pub plot: Option<std::path::PathBuf>,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Place limit orders instead of market orders, priced within 1% of each stock's price
    /// when the run starts, so that about half of them cross the book and trade.
    #[arg(long, conflicts_with = "resting")]
    pub limit: bool,
    /// Place limit orders that never cross: buys 2-3% below each stock's price when the run
    /// starts, sells 2-3% above, so that every order rests on the book.
    #[arg(long)]
    pub resting: bool,
    /// Create this many users (POST /users) before the runs and send every session's requests
    /// with one of their API keys (session i uses user i mod N); 0: anonymous, as in the seed.
    #[arg(long, default_value_t = 0)]
    pub users: u32,
    /// Follow each user's order updates on a `/ws/orders` stream (one per user) throughout,
    /// as traders' screens do; the report counts the updates received.
    #[arg(long, requires = "users")]
    pub order_streams: bool,
}

/// A whole `stocknet load` invocation: one run per value of `p`.
#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub clients: u32,
    pub runs: Vec<RunReport>,
}

#[derive(Debug, Serialize)]
pub struct RunReport {
    pub frontend: String,
    /// Whether that frontend caches lookups, as its `/health` says.
    pub cache: Option<bool>,
    pub p: f64,
    pub seconds: f64,
    /// Per request type: `lookup`, `order`, `query` (the verification reads).
    pub requests: BTreeMap<&'static str, RequestStats>,
    pub verification: Verification,
    /// With `--order-streams`: the order updates the streams received during the run, and
    /// how many streams had ended by its end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_streams: Option<OrderStreamStats>,
}

#[derive(Debug, Serialize)]
pub struct OrderStreamStats {
    pub updates: u64,
    pub ended: u64,
}

#[derive(Debug, Serialize)]
pub struct RequestStats {
    /// Requests answered as expected.
    pub ok: u64,
    /// Orders refused with 409 (not enough stock): a correct answer, not an error.
    pub refused: u64,
    /// Transport failures and unexpected statuses: counted in no figure below.
    pub errors: u64,
    /// Requests answered as expected (`ok` and `refused`) per second; the latencies are
    /// theirs.
    pub per_second: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Verification {
    /// Acknowledged orders read back.
    pub checked: u64,
    /// Read back with a different stock, side or quantity, or not found; or acknowledged with
    /// a number another acknowledged order had (one of them is gone).
    pub mismatched: u64,
    /// Could not be read back (a transport failure, or an answer other than the order or
    /// 404: a 5xx, a 429).
    pub unreadable: u64,
}

impl Verification {
    pub fn passed(&self) -> bool {
        self.mismatched == 0 && self.unreadable == 0
    }
}

fn parse_svg_path(text: &str) -> Result<std::path::PathBuf, String> {
    if text.ends_with(".svg") {
        Ok(text.into())
    } else {
        Err("the plot is drawn as SVG: give a file name ending in .svg".into())
    }
}

fn parse_probability(text: &str) -> Result<f64, String> {
    let p: f64 = text.trim().parse().map_err(|e| format!("{text:?}: {e}"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not a probability between 0 and 1"))
    }
}

/// `10s`, `500ms`, `2m`, or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected e.g. 10s, 500ms, 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Latencies of one request type, in microseconds.
struct Latencies {
    histogram: Histogram<u64>,
    ok: u64,
    refused: u64,
    errors: u64,
}

impl Latencies {
    fn new() -> Self {
        Self {
            // 1 µs to 60 s at 3 significant digits.
            histogram: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            ok: 0,
            refused: 0,
            errors: 0,
        }
    }

    fn record(&mut self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(micros.max(1));
    }

    fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
        self.ok += other.ok;
        self.refused += other.refused;
        self.errors += other.errors;
    }

    /// The figures of the requests answered as expected (`ok` and `refused`: the histogram
    /// holds only theirs): a failure that comes back at once would make a run look fast.
    fn stats(&self, seconds: f64) -> RequestStats {
        let ms = |micros: u64| micros as f64 / 1000.0;
        let h = &self.histogram;
        let total = self.ok + self.refused;
        RequestStats {
            ok: self.ok,
            refused: self.refused,
            errors: self.errors,
            per_second: if seconds > 0.0 {
                total as f64 / seconds
            } else {
                0.0
            },
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// An order the frontend acknowledged, as the client sent it.
struct Placed {
    number: u64,
    name: String,
    side: &'static str,
    quantity: u32,
    /// Limit price in cents.
    price: Option<u64>,
}

/// What one client session measured.
struct Session {
    lookups: Latencies,
    orders: Latencies,
    placed: Vec<Placed>,
}

struct Plan {
    http: reqwest::Client,
    frontend: String,
    target: Target,
    stocks: Vec<String>,
    /// `GET` path of each stock in `stocks`, percent-encoded once.
    lookup_paths: Vec<String>,
    name_field: String,
    max_quantity: u32,
    /// Each stock's price in cents when the run started, with `--limit` or `--resting`.
    prices: Option<Vec<u64>>,
    /// With `prices`: buys below them and sells above, so that nothing crosses.
    resting: bool,
    /// Users' API keys the sessions act for; none: anonymous.
    api_keys: Vec<String>,
    p: f64,
    deadline: Instant,
    iterations: Option<u64>,
    progress: Option<indicatif::ProgressBar>,
}

pub async fn run(config: LoadConfig) -> anyhow::Result<()> {
    let report = measure(&config).await?;
    if let Some(path) = &config.plot {
        plot(&report, path)?;
    }
    if config.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_tables(&report);
    }
    let failed: Vec<f64> = report
        .runs
        .iter()
        .filter(|r| !r.verification.passed())
        .map(|r| r.p)
        .collect();
    anyhow::ensure!(failed.is_empty(), "verification failed for p = {failed:?}");
    // A run whose requests failed measured something else than the service: say so, and fail.
    let erred: Vec<String> = report
        .runs
        .iter()
        .flat_map(|run| {
            run.requests
                .iter()
                .filter(|(_, stats)| stats.errors > 0)
                .map(move |(kind, stats)| format!("{} {kind} (p = {})", stats.errors, run.p))
        })
        .collect();
    anyhow::ensure!(
        erred.is_empty(),
        "requests failed (no answer, or an unexpected status): {}",
        erred.join(", ")
    );
    Ok(())
}

/// Runs the whole sweep and returns the report.
pub async fn measure(config: &LoadConfig) -> anyhow::Result<LoadReport> {
    let stocks = if config.stocks.is_empty() {
        default_stocks()?
    } else {
        config.stocks.clone()
    };
    anyhow::ensure!(!stocks.is_empty(), "no stocks to trade");
    // Straight to the frontend, as the sessions' own connections go, whatever proxy the
    // environment names.
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(config.clients as usize)
        .build()?;
    let mut frontends = vec![config.frontend.trim_end_matches('/').to_owned()];
    if let Some(uncached) = &config.uncached_frontend {
        frontends.push(uncached.trim_end_matches('/').to_owned());
    }
    let any_host: BaseUrl = "http://load".parse().map_err(anyhow::Error::msg)?;
    let lookup_paths: Vec<String> = stocks
        .iter()
        .map(|stock| any_host.join(&["stocks", stock]).path().to_owned())
        .collect();
    let mut runs = Vec::new();
    for frontend in &frontends {
        let target = Target::parse(frontend).map_err(anyhow::Error::msg)?;
        let cache = caches(&http, frontend).await;
        let prices = if config.limit || config.resting {
            Some(prices(&http, frontend, &stocks).await?)
        } else {
            None
        };
        let api_keys = create_users(&http, frontend, config.users).await?;
        let streams = match config.order_streams {
            true => Some(order_streams::OrderStreams::open(frontend, &api_keys).await?),
            false => None,
        };
        for &p in &config.p {
            let show_progress = !config.json && std::io::stderr().is_terminal();
            let plan = Arc::new(Plan {
                http: http.clone(),
                frontend: frontend.clone(),
                target: target.clone(),
                stocks: stocks.clone(),
                lookup_paths: lookup_paths.clone(),
                name_field: config.name_field.clone(),
                max_quantity: config.max_quantity,
                prices: prices.clone(),
                resting: config.resting,
                api_keys: api_keys.clone(),
                p,
                deadline: Instant::now() + config.duration,
                iterations: config.iterations,
                progress: show_progress.then(|| progress_bar(config, p)),
            });
            let updates_before = streams.as_ref().map_or(0, |s| s.updates());
            let mut run = run_once(plan, config.clients).await?;
            run.cache = cache;
            run.order_streams = streams.as_ref().map(|s| OrderStreamStats {
                updates: s.updates() - updates_before,
                ended: s.ended(),
            });
            runs.push(run);
        }
    }
    Ok(LoadReport {
        clients: config.clients,
        runs,
    })
}

/// The API keys of `count` new users of the frontend at `url`.
async fn create_users(
    http: &reqwest::Client,
    url: &str,
    count: u32,
) -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::new();
    while keys.len() < count as usize {
        let response = http.post(format!("{url}/users")).send().await?;
        // A frontend lets an address create so many users a minute: wait as it says.
        if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let wait = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(1)
                .clamp(1, 60);
            eprintln!(
                "{} users made; the frontend asks to wait {wait} s for more",
                keys.len()
            );
            tokio::time::sleep(Duration::from_secs(wait)).await;
            continue;
        }
        let reply: Value = response.error_for_status()?.json().await?;
        let key = reply["data"]["api_key"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("POST /users answered without a key: {reply}"))?;
        keys.push(key.to_owned());
    }
    Ok(keys)
}

/// Each stock's price in cents, looked up through the frontend at `url`.
async fn prices(http: &reqwest::Client, url: &str, stocks: &[String]) -> anyhow::Result<Vec<u64>> {
    let frontend: BaseUrl = url.parse().map_err(anyhow::Error::msg)?;
    let mut prices = Vec::new();
    for stock in stocks {
        let lookup = frontend.join(&["stocks", stock]);
        let reply: Value = http.get(lookup).send().await?.json().await?;
        let price = reply["data"]["price"]
            .as_f64()
            .ok_or_else(|| anyhow::anyhow!("no price for {stock}: {reply}"))?;
        prices.push((price * 100.0).round() as u64);
    }
    Ok(prices)
}

/// Whether the frontend at `url` caches, from its `/health`; `None` if it does not say.
async fn caches(http: &reqwest::Client, url: &str) -> Option<bool> {
    let health: Value = http
        .get(format!("{url}/health"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    health["data"]["cache"].as_bool()
}

fn default_stocks() -> anyhow::Result<Vec<String>> {
    let mut reader = csv::Reader::from_reader(stocknet_catalog::DEFAULT_CATALOG.as_bytes());
    let mut names = Vec::new();
    for record in reader.records() {
        if let Some(name) = record?.get(0) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn progress_bar(config: &LoadConfig, p: f64) -> indicatif::ProgressBar {
    let (length, unit) = match config.iterations {
        Some(n) => (n * u64::from(config.clients), "iterations"),
        None => (config.duration.as_millis() as u64, "ms"),
    };
    let bar = indicatif::ProgressBar::new(length);
    let template = format!("p={p:<4} [{{bar:40}}] {{pos}}/{{len}} {unit} {{msg}}");
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

async fn run_once(plan: Arc<Plan>, clients: u32) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    let sessions: Vec<_> = (0..clients)
        .map(|index| tokio::spawn(session(plan.clone(), index as usize)))
        .collect();
    let mut lookups = Latencies::new();
    let mut orders = Latencies::new();
    let mut placed = Vec::new();
    for handle in sessions {
        let session = handle.await??;
        lookups.merge(&session.lookups);
        orders.merge(&session.orders);
        placed.extend(session.placed);
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(bar) = &plan.progress {
        bar.finish_and_clear();
    }
    let verify_started = Instant::now();
    let (queries, verification) = verify(&plan, &placed, clients).await;
    let query_seconds = verify_started.elapsed().as_secs_f64();
    let mut requests = BTreeMap::new();
    requests.insert("lookup", lookups.stats(seconds));
    if plan.p > 0.0 {
        requests.insert("order", orders.stats(seconds));
        requests.insert("query", queries.stats(query_seconds));
    }
    Ok(RunReport {
        frontend: plan.frontend.clone(),
        cache: None,
        p: plan.p,
        seconds,
        requests,
        verification,
        order_streams: None,
    })
}

/// Session `index`: it acts for user `index` mod the number of users, if there are any.
async fn session(plan: Arc<Plan>, index: usize) -> anyhow::Result<Session> {
    // A connection of its own: a pool shared by all sessions is a point of contention that
    // caps the client well below what the server can do.
    let mut connection = Connection::new(plan.target.clone());
    if !plan.api_keys.is_empty() {
        connection = connection.with_api_key(&plan.api_keys[index % plan.api_keys.len()])?;
    }
    let mut state = Session {
        lookups: Latencies::new(),
        orders: Latencies::new(),
        placed: Vec::new(),
    };
    let mut done = 0u64;
    loop {
        match plan.iterations {
            Some(n) if done >= n => break,
            None if Instant::now() >= plan.deadline => break,
            _ => {}
        }
        done += 1;
        // Drawn before any await: the thread-local generator must not cross one.
        let (stock, trade, side, quantity, price) = {
            let mut rng = rand::rng();
            let stock = rng.random_range(0..plan.stocks.len());
            let side = if rng.random_bool(0.5) { "buy" } else { "sell" };
            // Within 1% of the starting price, in basis points; or 2-3% on the side's own half.
            let offset: i64 = match (plan.resting, side) {
                (false, _) => rng.random_range(-100..=100),
                (true, "buy") => -rng.random_range(200..=300),
                (true, _) => rng.random_range(200..=300),
            };
            let price = plan.prices.as_ref().map(|prices| {
                let base = prices[stock] as i64;
                (base + base * offset / 10_000).max(1) as u64
            });
            (
                stock,
                rng.random_bool(plan.p),
                side,
                rng.random_range(1..=plan.max_quantity),
                price,
            )
        };
        lookup(
            &mut connection,
            &plan.lookup_paths[stock],
            &mut state.lookups,
        )
        .await;
        if trade {
            let stock = &plan.stocks[stock];
            let order = Placed {
                number: 0,
                name: stock.clone(),
                side,
                quantity,
                price,
            };
            if let Some(number) = place(&plan, &mut connection, &order, &mut state.orders).await {
                state.placed.push(Placed { number, ..order });
            }
        }
        if let Some(bar) = &plan.progress {
            match plan.iterations {
                Some(_) => bar.inc(1),
                None => bar.set_position(
                    plan.deadline
                        .saturating_duration_since(Instant::now())
                        .as_millis()
                        .try_into()
                        .map(|left: u64| bar.length().unwrap_or(0).saturating_sub(left))
                        .unwrap_or(0),
                ),
            }
        }
    }
    Ok(state)
}

async fn lookup(connection: &mut Connection, path: &str, latencies: &mut Latencies) {
    let started = Instant::now();
    match connection.get(path).await {
        Ok((status, _)) if status.is_success() => {
            latencies.record(started.elapsed());
            latencies.ok += 1;
        }
        _ => latencies.errors += 1,
    }
}

async fn place(
    plan: &Plan,
    connection: &mut Connection,
    order: &Placed,
    latencies: &mut Latencies,
) -> Option<u64> {
    let mut body = serde_json::Map::new();
    body.insert(plan.name_field.clone(), json!(order.name));
    body.insert("quantity".into(), json!(order.quantity));
    body.insert("type".into(), json!(order.side));
    if let Some(cents) = order.price {
        body.insert("price".into(), json!(cents as f64 / 100.0));
    }
    let body = serde_json::to_vec(&body).ok()?;
    let started = Instant::now();
    let outcome = connection.post_json("/orders", body).await;
    let elapsed = started.elapsed();
    let (status, reply) = match outcome {
        Ok(answer) => answer,
        Err(_) => {
            latencies.errors += 1;
            return None;
        }
    };
    if status == hyper::StatusCode::CONFLICT {
        latencies.record(elapsed);
        latencies.refused += 1;
        return None;
    }
    let number = status
        .is_success()
        .then(|| serde_json::from_slice::<Value>(&reply).ok())
        .flatten()
        .and_then(|reply| reply["data"]["transaction_number"].as_u64());
    match number {
        Some(_) => {
            latencies.record(elapsed);
            latencies.ok += 1;
        }
        None => latencies.errors += 1,
    }
    number
}

/// Reads every acknowledged order back, `clients` at a time, and compares it.
async fn verify(plan: &Plan, placed: &[Placed], clients: u32) -> (Latencies, Verification) {
    let results: Vec<(Duration, Result<bool, ()>)> = stream::iter(placed)
        .map(|order| async move {
            let started = Instant::now();
            let url = format!("{}/orders/{}", plan.frontend, order.number);
            let outcome = match plan.http.get(url).send().await {
                Ok(response) if response.status().is_success() => {
                    match response.json::<Value>().await {
                        Ok(reply) => {
                            let data = &reply["data"];
                            Ok(data["number"] == json!(order.number)
                                && data["name"] == json!(order.name)
                                && data["type"] == json!(order.side)
                                && data["quantity"] == json!(order.quantity)
                                && data.get("price")
                                    == order.price.map(|c| json!(c as f64 / 100.0)).as_ref())
                        }
                        Err(_) => Err(()),
                    }
                }
                // Not found: the order an acknowledgement promised is gone. (Another 4xx, a 429
                // say, is no answer about the order.)
                Ok(response) if response.status() == reqwest::StatusCode::NOT_FOUND => Ok(false),
                _ => Err(()),
            };
            (started.elapsed(), outcome)
        })
        .buffer_unordered(clients as usize)
        .collect()
        .await;
    let mut latencies = Latencies::new();
    let mut verification = Verification {
        mismatched: numbers_given_twice(placed),
        ..Verification::default()
    };
    for (elapsed, outcome) in results {
        verification.checked += 1;
        match outcome {
            Ok(true) => {
                latencies.record(elapsed);
                latencies.ok += 1;
            }
            Ok(false) => {
                latencies.record(elapsed);
                latencies.ok += 1;
                verification.mismatched += 1;
            }
            Err(()) => {
                latencies.errors += 1;
                verification.unreadable += 1;
            }
        }
    }
    (latencies, verification)
}

/// How many acknowledged orders carry a number an earlier one had: each is an order lost, which
/// reading back the number would not show if the two were alike.
fn numbers_given_twice(placed: &[Placed]) -> u64 {
    let mut seen = std::collections::HashSet::new();
    placed
        .iter()
        .filter(|order| !seen.insert(order.number))
        .count() as u64
}

fn cache_label(cache: Option<bool>) -> &'static str {
    match cache {
        Some(true) => "cache on",
        Some(false) => "cache off",
        None => "cache unknown",
    }
}

fn print_tables(report: &LoadReport) {
    println!("stocknet load: {} clients", report.clients);
    for run in &report.runs {
        println!(
            "\n{} ({}), p = {} ({:.1} s)",
            run.frontend,
            cache_label(run.cache),
            run.p,
            run.seconds
        );
        println!(
            "{:<8} {:>9} {:>8} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "request",
            "ok",
            "refused",
            "errors",
            "req/s",
            "mean ms",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms"
        );
        for (kind, s) in &run.requests {
            println!(
                "{kind:<8} {:>9} {:>8} {:>7} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                s.ok,
                s.refused,
                s.errors,
                s.per_second,
                s.mean_ms,
                s.p50_ms,
                s.p90_ms,
                s.p99_ms,
                s.max_ms
            );
        }
        let v = &run.verification;
        println!(
            "verification: {} orders read back, {} mismatched, {} unreadable: {}",
            v.checked,
            v.mismatched,
            v.unreadable,
            if v.passed() { "PASSED" } else { "FAILED" }
        );
        if let Some(streams) = &run.order_streams {
            println!(
                "order streams: {} updates received, {} streams ended",
                streams.updates, streams.ended
            );
        }
    }
}

/// Mean and p99 latency against p: one line per request type, cache setting and statistic.
fn plot(report: &LoadReport, path: &std::path::Path) -> anyhow::Result<()> {
    use plotters::prelude::*;

    type Series = BTreeMap<(String, &'static str), Vec<(f64, f64)>>;
    let mut series: Series = BTreeMap::new();
    for run in &report.runs {
        for (kind, stats) in &run.requests {
            let label = format!("{kind}, {}", cache_label(run.cache));
            for (statistic, value) in [("mean", stats.mean_ms), ("p99", stats.p99_ms)] {
                series
                    .entry((label.clone(), statistic))
                    .or_default()
                    .push((run.p, value));
            }
        }
    }
    let highest = series
        .values()
        .flatten()
        .map(|(_, ms)| *ms)
        .fold(0.0_f64, f64::max);
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "stocknet load: latency against p ({} clients)",
                report.clients
            ),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..1.0, 0.0..(highest * 1.1).max(0.1))?;
    chart
        .configure_mesh()
        .x_desc("p (probability of placing an order)")
        .y_desc("latency (ms)")
        .draw()?;
    for (index, ((label, statistic), mut points)) in series.into_iter().enumerate() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let color = Palette99::pick(index).to_rgba();
        let style = ShapeStyle {
            color,
            filled: true,
            stroke_width: if statistic == "p99" { 1 } else { 2 },
        };
        chart
            .draw_series(LineSeries::new(points.iter().copied(), style))?
            .label(format!("{label}: {statistic}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        chart.draw_series(points.iter().map(|&(x, y)| Circle::new((x, y), 3, style)))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_number_acknowledged_twice_counts_as_an_order_lost() {
        let order = |number| Placed {
            number,
            name: "GameStart".into(),
            side: "buy",
            quantity: 1,
            price: None,
        };
        assert_eq!(numbers_given_twice(&[order(1), order(2), order(3)]), 0);
        assert_eq!(
            numbers_given_twice(&[order(1), order(2), order(1), order(1)]),
            2
        );
    }

    #[test]
    fn durations_and_probabilities_parse_or_explain() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_probability("0.2"), Ok(0.2));
        assert!(parse_probability("1.5").is_err());
        assert!(parse_probability("x").is_err());
    }

    #[test]
    fn percentiles_come_from_the_recorded_latencies() {
        let mut latencies = Latencies::new();
        for ms in 1..=100u64 {
            latencies.record(Duration::from_millis(ms));
            latencies.ok += 1;
        }
        let stats = latencies.stats(2.0);
        assert_eq!(stats.per_second, 50.0);
        assert!((stats.p50_ms - 50.0).abs() < 0.1, "{}", stats.p50_ms);
        assert!((stats.p99_ms - 99.0).abs() < 0.1, "{}", stats.p99_ms);
        assert!((stats.max_ms - 100.0).abs() < 0.1, "{}", stats.max_ms);
        assert!((stats.mean_ms - 50.5).abs() < 0.1, "{}", stats.mean_ms);
    }

    #[test]
    fn the_plot_has_a_line_per_request_type_cache_setting_and_statistic() {
        let run = |p: f64, cache: bool| {
            let mut latencies = Latencies::new();
            latencies.record(Duration::from_millis(if cache { 1 } else { 5 }));
            latencies.ok += 1;
            let mut requests = BTreeMap::new();
            requests.insert("lookup", latencies.stats(1.0));
            if p > 0.0 {
                requests.insert("order", latencies.stats(1.0));
            }
            RunReport {
                frontend: "http://127.0.0.1:9".into(),
                cache: Some(cache),
                p,
                seconds: 1.0,
                requests,
                verification: Verification::default(),
                order_streams: None,
            }
        };
        let report = LoadReport {
            clients: 5,
            runs: vec![
                run(0.0, true),
                run(0.5, true),
                run(0.0, false),
                run(0.5, false),
            ],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latency.svg");
        plot(&report, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        for label in [
            "lookup, cache on: mean",
            "lookup, cache off: p99",
            "order, cache on: p99",
            "order, cache off: mean",
        ] {
            assert!(svg.contains(label), "no {label:?} in the plot");
        }
        assert!(parse_svg_path("plot.png").is_err());
    }

    #[test]
    fn the_default_stocks_are_the_built_in_catalog() {
        let stocks = default_stocks().unwrap();
        assert_eq!(stocks.len(), 12);
        assert_eq!(stocks[0], "GameStart");
    }
}
