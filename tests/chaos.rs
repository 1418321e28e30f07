//! Chaos: clients trade without pause — market and limit orders, modifies and cancels, for
//! users and anonymously — while faults hit the processes, then the reliability contract I1–I5
//! and I8 (one book, one set of portfolios, one daily report) is checked on what is left. Two
//! runs: one SIGKILLs and restarts order replicas (the leader at least every other time) and
//! the catalog once, as a power loss of its machine (its last trades cut from its journal, in a
//! new boot: the catalog answers trades before their fsync); the other, with two frontends, brings gray failures (I13): replicas, the
//! catalog and a frontend hang (SIGSTOP) and go on (SIGCONT), replicas die and are back
//! within a second, and the leader's link to the catalog drops everything for a while. Some limit orders carry terms (ioc, fok, day, gtd, post-only, self-trade
//! prevention): the replay checks that no user's orders traded with each other against the
//! taker's choice, that no fok order filled in part, and that every expired order expired at
//! an expiry entry of its stock.
//!
//! Every answer is checked to be true (I11): a command answered 503 is not retried, and its
//! key must never reach the log; only 504 is retried under its key; a market order against the
//! house executed at its stock's last book price where it stands in the log. Every order acknowledged is read back at once, through the other frontend
//! where there are two, which must not answer 404 (I12).
//!
//! CI runs each for a few seconds. A longer soak: `STOCKNET_CHAOS_SECS=600 cargo test
//! --release --test chaos -- --nocapture`.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{book, wait_until, Cluster, Link, Wiring};
use serde_json::{json, Value};
use tokio::time::{sleep, Instant};

const CLIENTS: usize = 4;
const STOCKS: [&str; 4] = ["GameStart", "FishCo", "BoarCo", "MenhirCo"];
const INITIAL_QUANTITY: i64 = 100;
/// Attempts per order before a client gives up on it (its outcome then stays unknown).
const ATTEMPTS: usize = 40;
/// How long the group has, after the last fault, to take an order again.
const SETTLE: Duration = Duration::from_secs(30);

/// xorshift64: enough randomness to pick victims and orders, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A command a client saw acknowledged, with the log entry it must have become.
#[derive(Debug, Clone)]
struct Ack {
    number: u64,
    key: String,
    entry: Value,
    /// When its answer came.
    at: Instant,
}

/// What a client sends next.
enum Action {
    Place(Value),
    Modify {
        target: u64,
        name: String,
        change: Value,
    },
    Cancel {
        target: u64,
        name: String,
    },
}

#[derive(Debug, Default)]
struct ClientReport {
    acks: Vec<Ack>,
    refused: usize,
    /// Keys of commands answered 503: not executed, and never to be (not retried).
    unavailable: Vec<String>,
    unknown: usize,
    retries: usize,
    /// Acknowledged orders read back (through the other frontend, where there are two), and how many of those reads
    /// answered 503 or 504 (no leader could be confirmed then) rather than the order.
    reads: usize,
    reads_unavailable: usize,
}

/// The frontend a client sends its commands to, and the one it reads its orders back from.
struct Reach {
    write: String,
    read: String,
}

/// A client trading for a user (`Some((user id, API key))`) or anonymously.
async fn client(
    http: reqwest::Client,
    reach: Reach,
    id: usize,
    user: Option<(u64, String)>,
    stop: Arc<AtomicBool>,
) -> ClientReport {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1));
    let mut report = ClientReport::default();
    // This client's acknowledged limit orders: (number, name), for modifies and cancels.
    let mut limits: Vec<(u64, String)> = Vec::new();
    let mut sequence = 0;
    while !stop.load(Ordering::Relaxed) {
        sequence += 1;
        let key = format!("chaos-{id}-{sequence}");
        let name = STOCKS[rng.below(STOCKS.len() as u64) as usize];
        let side = if rng.below(2) == 0 { "buy" } else { "sell" };
        let quantity = 1 + rng.below(3);
        // Prices around 10.00, so that about half of the limit orders cross.
        let price = 9.95 + rng.below(11) as f64 / 100.0;
        let price = (price * 100.0).round() / 100.0;
        let roll = rng.below(10);
        let action = match (roll, limits.is_empty()) {
            // One in four market orders goes to the book, the others to the house.
            (0, _) => Action::Place(
                json!({"name": name, "type": side, "quantity": quantity, "order_type": "market"}),
            ),
            (1..=3, _) | (8.., true) => {
                Action::Place(json!({"name": name, "type": side, "quantity": quantity}))
            }
            (4..=7, _) => {
                let mut body =
                    json!({"name": name, "type": side, "quantity": quantity, "price": price});
                // A third of them with terms other than the default (only what differs from
                // it, as the log records it).
                if rng.below(3) == 0 {
                    let terms = random_terms(&mut rng, quantity);
                    if let (Some(body), Some(terms)) = (body.as_object_mut(), terms.as_object()) {
                        body.extend(terms.clone());
                    }
                }
                Action::Place(body)
            }
            (8, false) => {
                let (target, name) = limits[rng.below(limits.len() as u64) as usize].clone();
                let change = if rng.below(2) == 0 {
                    json!({"price": price})
                } else {
                    json!({"quantity": 1 + rng.below(6)})
                };
                Action::Modify {
                    target,
                    name,
                    change,
                }
            }
            (_, false) => {
                let (target, name) = limits[rng.below(limits.len() as u64) as usize].clone();
                Action::Cancel { target, name }
            }
        };
        let mut outcome = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                report.retries += 1;
                // Pacing between retries of a command whose outcome is unknown.
                sleep(Duration::from_millis(50)).await;
            }
            let frontend = &reach.write;
            let request = match &action {
                Action::Place(body) => http.post(format!("{frontend}/orders")).json(body),
                Action::Modify { target, change, .. } => {
                    http.put(format!("{frontend}/orders/{target}")).json(change)
                }
                Action::Cancel { target, .. } => http.delete(format!("{frontend}/orders/{target}")),
            };
            let request = authorized(request, &user);
            let Ok(response) = request.header("idempotency-key", &key).send().await else {
                continue;
            };
            let status = response.status().as_u16();
            let Ok(reply) = response.json::<Value>().await else {
                continue;
            };
            match status {
                200 => {
                    outcome = Some(reply["data"]["transaction_number"].as_u64());
                    break;
                }
                409 => {
                    report.refused += 1;
                    outcome = Some(None);
                    break;
                }
                // Not executed, and never to be: the final checks hold the system to it.
                503 => {
                    report.unavailable.push(key.clone());
                    outcome = Some(None);
                    break;
                }
                // Not known: the retry under the same key says.
                504 => continue,
                other => panic!("command {key} answered {other}: {reply}"),
            }
        }
        let Some(outcome) = outcome else {
            report.unknown += 1;
            continue;
        };
        let Some(number) = outcome else { continue };
        if matches!(action, Action::Place(_)) {
            read_back(&http, &reach.read, &user, number, name, &mut report).await;
        }
        let client_key = json!(format!("client-{key}"));
        let mut entry = match action {
            Action::Place(mut body) => {
                if body.get("price").is_some() {
                    limits.push((number, name.to_owned()));
                }
                // As the log records a market order on the book: the frontend's protection and
                // its time in force.
                if body.get("order_type").is_some() {
                    body = json!({"name": name, "type": side, "quantity": quantity,
                                  "protection_bps": 500, "time_in_force": "ioc"});
                }
                body["number"] = json!(number);
                body["key"] = client_key;
                body
            }
            Action::Modify {
                target,
                name,
                mut change,
            } => {
                change["number"] = json!(number);
                change["key"] = client_key;
                change["type"] = json!("modify");
                change["target"] = json!(target);
                change["name"] = json!(name);
                change
            }
            Action::Cancel { target, name } => json!({
                "number": number, "key": client_key, "type": "cancel", "target": target,
                "name": name
            }),
        };
        if let Some((user, _)) = &user {
            entry["user"] = json!(user);
        }
        report.acks.push(Ack {
            number,
            key,
            entry,
            at: Instant::now(),
        });
    }
    report
}

/// `request` with the user's API key, if the client trades for one.
fn authorized(
    request: reqwest::RequestBuilder,
    user: &Option<(u64, String)>,
) -> reqwest::RequestBuilder {
    match user {
        Some((_, api_key)) => request.bearer_auth(api_key),
        None => request,
    }
}

/// Reads order `number`, just acknowledged, through `frontend` (I12): it must be there, or
/// the read must say that no leader can be confirmed (503), or time out (504); never 404.
async fn read_back(
    http: &reqwest::Client,
    frontend: &str,
    user: &Option<(u64, String)>,
    number: u64,
    name: &str,
    report: &mut ClientReport,
) {
    report.reads += 1;
    let request = authorized(http.get(format!("{frontend}/orders/{number}")), user);
    // A frontend that hangs (the gray run) fails the read; that is not an answer.
    let Ok(response) = request.send().await else {
        report.reads_unavailable += 1;
        return;
    };
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    match status {
        200 => assert_eq!(body["data"]["name"], name, "order {number}: {body}"),
        503 | 504 => report.reads_unavailable += 1,
        other => panic!("order {number}, acknowledged, read back as {other}: {body}"),
    }
}

/// A limit order's terms: `ioc`, `fok`, `day`, `gtd` (expiring within a second), post-only,
/// a self-trade prevention other than the default, (of more than one share) an iceberg, or a
/// stop.
fn random_terms(rng: &mut Rng, quantity: u64) -> Value {
    match rng.below(9) {
        8 => {
            let stop = [9.97, 10.03][rng.below(2) as usize];
            json!({ "stop_price": stop })
        }
        7 if quantity > 1 => json!({"display_quantity": 1}),
        0 => json!({"time_in_force": "ioc"}),
        1 => json!({"time_in_force": "fok"}),
        2 => json!({"time_in_force": "day"}),
        3 => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            json!({"time_in_force": "gtd", "expire_at": now + 200 + rng.below(800)})
        }
        4 => json!({"post_only": true}),
        5 => json!({"stp": "cancel_oldest"}),
        _ => {
            let stp = ["cancel_both", "none"][rng.below(2) as usize];
            json!({ "stp": stp })
        }
    }
}

/// The faults a run brings, and how many of each.
#[derive(Debug, Default)]
struct Chaos {
    /// Replicas killed (SIGKILL) and restarted, and of those the leader.
    kills: usize,
    leader_kills: usize,
    /// Replicas that hung (SIGSTOP) and went on (SIGCONT), and of those the leader.
    hangs: usize,
    leader_hangs: usize,
    catalog_kills: usize,
    catalog_hangs: usize,
    frontend_hangs: usize,
    /// The leader's link to the catalog cut, then healed.
    catalog_cuts: usize,
    /// When each fault began and ended, to tell which one a pause in trading followed.
    timeline: Timeline,
}

impl Chaos {
    /// Kills a replica, the leader every other time, starts it again within `down_ms` and
    /// waits until it is ready.
    async fn kill_a_replica(&mut self, cluster: &mut Cluster, rng: &mut Rng, down_ms: u64) {
        let (victim, leader) = victim(cluster, rng, self.kills.is_multiple_of(2)).await;
        self.leader_kills += usize::from(leader);
        self.kills += 1;
        cluster.orders[victim].kill9();
        if leader {
            self.timeline.leader_lost.push(Instant::now());
        }
        self.timeline
            .note(format!("{} killed", replica(victim, leader)));
        sleep(Duration::from_millis(rng.below(down_ms))).await;
        cluster.orders[victim].restart();
        let name = format!("replica {}", victim + 1);
        self.timeline.note(format!("{name} restarted"));
        cluster.wait_replica_ready(victim).await;
        self.timeline.note(format!("{name} ready"));
    }
}

#[derive(Default)]
struct Timeline {
    events: Vec<(Instant, String)>,
    /// When the leader was killed or hung.
    leader_lost: Vec<Instant>,
}

impl Timeline {
    fn note(&mut self, what: impl Into<String>) {
        self.events.push((Instant::now(), what.into()));
    }

    /// What happened from `window` before `from` until `to`, in seconds since `start`.
    fn around(&self, start: Instant, from: Instant, to: Instant, window: Duration) -> String {
        let since = |at: Instant| at.saturating_duration_since(start).as_secs_f64();
        (self.events.iter())
            .filter(|(at, _)| *at + window >= from && *at <= to)
            .map(|(at, what)| format!("{:.2} s {what}", since(*at)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Debug for Timeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} events", self.events.len())
    }
}

#[derive(Debug, Clone, Copy)]
enum Faults {
    /// [`kill_and_restart`], one frontend.
    Kills,
    /// [`hang_and_resume`], two frontends.
    Gray,
}

impl Faults {
    fn frontends(self) -> usize {
        match self {
            Self::Kills => 1,
            Self::Gray => 2,
        }
    }

    /// The cluster these faults hit; under gray failures each replica reaches the catalog
    /// through a link of `links`.
    async fn cluster(self, links: &[Link]) -> Cluster {
        match self {
            Self::Kills => Cluster::start(self.frontends()).await,
            Self::Gray => {
                let catalog_at = |replica: usize, url: &str| links[replica].forward_to(url);
                Cluster::start_wired(self.frontends(), &Wiring::catalog_at(&catalog_at)).await
            }
        }
    }

    async fn bring(self, cluster: &mut Cluster, links: &[Link], until: Instant) -> Chaos {
        match self {
            Self::Kills => kill_and_restart(cluster, until).await,
            Self::Gray => hang_and_resume(cluster, links, until).await,
        }
    }

    /// Every kind of fault came at least once.
    fn all_came(self, chaos: &Chaos) -> bool {
        match self {
            Self::Kills => chaos.leader_kills >= 1 && chaos.catalog_kills == 1,
            Self::Gray => missing(chaos).is_none(),
        }
    }
}

/// The replica a fault hits: the leader when `leader_first` (every other fault of a kind),
/// else any; and whether that is the leader.
async fn victim(cluster: &Cluster, rng: &mut Rng, leader_first: bool) -> (usize, bool) {
    let leader = cluster.leader().await;
    let victim = match leader {
        Some(index) if leader_first => index,
        _ => rng.below(cluster.orders.len() as u64) as usize,
    };
    (victim, Some(victim) == leader)
}

/// Kills and restarts replicas until `until`, the leader every other time and the catalog once
/// from halfway on, which loses power; waits for each victim to be back (ready) before the
/// next round.
async fn kill_and_restart(cluster: &mut Cluster, until: Instant) -> Chaos {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut chaos = Chaos::default();
    let halfway = Instant::now() + (until - Instant::now()) / 2;
    // Past `until`, the catalog is still killed once if the replicas' rounds used up the time.
    while Instant::now() < until || chaos.catalog_kills == 0 {
        // Pacing: let the clients trade for a while between kills.
        sleep(Duration::from_millis(200 + rng.below(300))).await;
        if chaos.catalog_kills == 0 && Instant::now() >= halfway {
            cluster.catalog.kill9();
            let lost = lose_catalogs_unsynced_trades(cluster.dir.path());
            chaos.timeline.note(format!(
                "catalog lost power ({lost} trades cut from its journal) and restarted"
            ));
            cluster.catalog.restart();
            wait_catalog_back(cluster).await;
            chaos.timeline.note("catalog back");
            // The leader's rounds catch it up (the next order, or its look every 2 s), and it
            // notes this boot.
            let boot = cluster.dir.path().join("catalog.kernel-boot");
            wait_until("the catalog caught up", Duration::from_secs(10), || {
                let noted = std::fs::read_to_string(&boot).unwrap_or_default();
                std::future::ready(!noted.contains("power loss"))
            })
            .await;
            chaos.timeline.note("catalog caught up");
            chaos.catalog_kills += 1;
            continue;
        }
        chaos.kill_a_replica(cluster, &mut rng, 300).await;
    }
    chaos
}

/// Gray failures until `until`, one at a time, every kind at least once (taken in turn until
/// each came): a replica hangs, the leader every other time; the catalog
/// hangs; a replica, the leader every other time, dies and is started again within a second;
/// a frontend hangs; the leader's link to the catalog (in `links`) drops everything for 1 to
/// 7 s, at times long enough that it hands the leadership to a replica that reaches the
/// catalog. A hang lasts 0.2 to 3 s: at times shorter than an election takes, at times longer
/// than the frontends' deadlines.
async fn hang_and_resume(cluster: &mut Cluster, links: &[Link], until: Instant) -> Chaos {
    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    let mut chaos = Chaos::default();
    let mut overtime = 0;
    // The kinds that have not come yet come first (a round meant for the leader finds none
    // while an election runs), also past `until`, for a bounded number of rounds.
    while Instant::now() < until || missing(&chaos).is_some() {
        if Instant::now() >= until {
            overtime += 1;
            assert!(overtime <= 20, "every kind of fault came: {chaos:?}");
        }
        sleep(Duration::from_millis(200 + rng.below(300))).await;
        let kind = missing(&chaos).unwrap_or_else(|| rng.below(5));
        let hang = Duration::from_millis(200 + rng.below(2800));
        match kind {
            0 => {
                let (victim, leader) = victim(cluster, &mut rng, chaos.hangs % 2 == 0).await;
                chaos.leader_hangs += usize::from(leader);
                chaos.hangs += 1;
                cluster.orders[victim].pause();
                if leader {
                    chaos.timeline.leader_lost.push(Instant::now());
                }
                chaos
                    .timeline
                    .note(format!("{} hung", replica(victim, leader)));
                sleep(hang).await;
                cluster.orders[victim].resume();
                chaos
                    .timeline
                    .note(format!("replica {} resumed", victim + 1));
                cluster.wait_replica_ready(victim).await;
                chaos.timeline.note(format!("replica {} ready", victim + 1));
            }
            1 => {
                chaos.catalog_hangs += 1;
                cluster.catalog.pause();
                chaos.timeline.note("catalog hung");
                sleep(hang).await;
                cluster.catalog.resume();
                chaos.timeline.note("catalog resumed");
                wait_catalog_back(cluster).await;
                chaos.timeline.note("catalog back");
            }
            2 => chaos.kill_a_replica(cluster, &mut rng, 1000).await,
            3 => {
                let (victim, leader) = victim(cluster, &mut rng, true).await;
                chaos.catalog_cuts += 1;
                links[victim].cut();
                let cut = format!("{} cut from the catalog", replica(victim, leader));
                chaos.timeline.note(cut);
                sleep(Duration::from_millis(1000 + rng.below(6000))).await;
                links[victim].heal();
                let healed = format!("replica {}'s link to the catalog healed", victim + 1);
                chaos.timeline.note(healed);
            }
            _ => {
                chaos.frontend_hangs += 1;
                let index = rng.below(cluster.frontends.len() as u64) as usize;
                let frontend = &cluster.frontends[index];
                frontend.pause();
                chaos.timeline.note(format!("frontend {} hung", index + 1));
                sleep(hang).await;
                frontend.resume();
                chaos
                    .timeline
                    .note(format!("frontend {} resumed", index + 1));
            }
        }
    }
    chaos
}

fn replica(index: usize, leader: bool) -> String {
    match leader {
        true => format!("replica {} (the leader)", index + 1),
        false => format!("replica {}", index + 1),
    }
}

/// Once the clients stopped: the one log every replica holds (I5), and the catalog's snapshot,
/// which has applied all of it (I3). The leader may append an entry of its own meanwhile (it
/// expires orders whose time ran out, and a new term begins with one), so both are read again
/// until they agree.
async fn converged(cluster: &Cluster) -> (Vec<Value>, Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = cluster.wait_for_identical_logs().await;
        let url = format!("{}/snapshot", cluster.catalog_url);
        let (_, snapshot) = cluster.get(&url).await;
        if snapshot["data"]["applied"] == log.len() as u64 {
            return (log, snapshot);
        }
        assert!(
            Instant::now() < deadline,
            "the catalog never applied just the log's {} entries: {snapshot}",
            log.len()
        );
        eprintln!(
            "the catalog applied {} entries, the log holds {}: reading both again",
            snapshot["data"]["applied"],
            log.len()
        );
        sleep(Duration::from_millis(50)).await;
    }
}

/// [`converged`], with every replica's book at the end of that log (I8).
async fn final_state(cluster: &Cluster) -> (Vec<Value>, Value, Vec<book::BookState>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut read_before = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "the log kept growing: no final state in 120 s"
        );
        let (log, snapshot) = converged(cluster).await;
        if let Some(before) = read_before {
            eprintln!("the log grew by {:?}", log.get(before..));
        }
        read_before = Some(log.len());
        let days = book::days(&log);
        if let Some(books) = book::books_at(cluster, log.len() as u64, &STOCKS, &days).await {
            return (log, snapshot, books);
        }
        eprintln!(
            "a replica applied more than the log's {} entries: reading all again",
            log.len()
        );
    }
}

/// The first kind of [`hang_and_resume`]'s faults that has not come yet.
fn missing(chaos: &Chaos) -> Option<u64> {
    [
        chaos.leader_hangs,
        chaos.catalog_hangs,
        chaos.leader_kills,
        chaos.catalog_cuts,
        chaos.frontend_hangs,
    ]
    .iter()
    .position(|&count| count == 0)
    .map(|kind| kind as u64)
}

/// What a power loss of the catalog's machine may take from its files in `dir`: trades at the
/// end of its journal, which it answered before their fsync (not a term record: those are
/// fsync'd before the answer); and it starts in another boot. Says how many trades it cut.
fn lose_catalogs_unsynced_trades(dir: &std::path::Path) -> usize {
    let journal = dir.join("catalog.wal");
    let text = std::fs::read_to_string(&journal).expect("the catalog's journal");
    let lines: Vec<&str> = text.lines().collect();
    let last_term = lines.iter().rposition(|line| line.starts_with("term,"));
    let keep = lines
        .len()
        .saturating_sub(8)
        .max(last_term.map_or(0, |i| i + 1));
    let kept: String = lines[..keep]
        .iter()
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&journal, kept).expect("cut the journal");
    std::fs::write(
        dir.join("catalog.kernel-boot"),
        "a boot before the power loss\n",
    )
    .expect("the boot");
    lines.len() - keep
}

async fn wait_catalog_back(cluster: &Cluster) {
    let url = format!("{}/health", cluster.catalog_url);
    wait_until("catalog back", Duration::from_secs(20), || {
        cluster.is_up(&url)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kills_and_restarts_lose_no_acknowledged_order() {
    trade_through(Faults::Kills).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hangs_and_quick_restarts_answer_truly_and_lose_nothing() {
    trade_through(Faults::Gray).await;
}

/// Clients trade while `faults` come for `STOCKNET_CHAOS_SECS` (8 s by default), then the
/// contract is checked on what is left.
async fn trade_through(faults: Faults) {
    let seconds: u64 = std::env::var("STOCKNET_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let links = [
        Link::start().await,
        Link::start().await,
        Link::start().await,
    ];
    let mut cluster = faults.cluster(&links).await;
    // Two clients trade for users (whose portfolios are checked at the end), two anonymously.
    let mut users = Vec::new();
    for expected in book::USERS {
        let (id, key) = cluster.new_user(cluster.frontend()).await;
        assert_eq!(id, expected);
        users.push((expected, key));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let urls = &cluster.frontend_urls;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let reach = Reach {
                write: urls[id % urls.len()].clone(),
                read: urls[(id + 1) % urls.len()].clone(),
            };
            tokio::spawn(client(
                cluster.http.clone(),
                reach,
                id,
                users.get(id).cloned(),
                stop.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    let chaos = faults
        .bring(&mut cluster, &links, started + Duration::from_secs(seconds))
        .await;
    stop.store(true, Ordering::Relaxed);
    let mut reports = Vec::new();
    for client in clients {
        reports.push(client.await.expect("client task"));
    }
    let acks: Vec<&Ack> = reports.iter().flat_map(|r| &r.acks).collect();

    // Quiescence: one more order commits everything before it and brings the catalog up to
    // date; then every replica converges on one log.
    // (Bounded by time: after a last fault the breaker or an election may take a while, and
    // a refusal comes back at once.)
    wait_until("an order to succeed after the chaos", SETTLE, || async {
        cluster.order(0, "GameStart", "sell", 1).await.0 == 200
    })
    .await;
    let (log, snapshot, books) = final_state(&cluster).await;

    // I2: numbers are 1..=n, each used once; no two acknowledgements share one.
    for (index, order) in log.iter().enumerate() {
        assert_eq!(order["number"], index as u64 + 1, "{order}");
    }
    let acked_numbers: HashSet<u64> = acks.iter().map(|a| a.number).collect();
    assert_eq!(
        acked_numbers.len(),
        acks.len(),
        "a number acknowledged twice"
    );

    // I4: no idempotency key executed twice.
    let mut keys = HashSet::new();
    for order in &log {
        if let Some(key) = order["key"].as_str() {
            assert!(keys.insert(key.to_owned()), "key {key} executed twice");
        }
    }

    // I11: a command answered 503 was not executed and never will be: its key is not logged.
    let unavailable: Vec<&String> = reports.iter().flat_map(|r| &r.unavailable).collect();
    for key in &unavailable {
        assert!(
            !keys.contains(&format!("client-{key}")),
            "command {key} was answered 503, and executed"
        );
    }

    // I1: every acknowledged command is in the log, unchanged, and an order is served by the
    // frontend.
    let mut lost = 0;
    for ack in &acks {
        let mut found = log[(ack.number - 1) as usize].clone();
        if let Some(fields) = found.as_object_mut() {
            // What the leader adds: its term, its clock, the stock's price then and the id of
            // the request that brought it.
            for stamp in ["term", "time", "quote", "request_id"] {
                fields.remove(stamp);
            }
        }
        if found != ack.entry {
            lost += 1;
            eprintln!(
                "command {} ({}) acknowledged as {}, log has {found}",
                ack.number, ack.key, ack.entry
            );
        }
    }
    // (Market orders: a limit order's quantity may have been modified since.)
    let placed_at_market =
        |a: &&&Ack| a.entry.get("target").is_none() && a.entry.get("price").is_none();
    for ack in acks.iter().filter(placed_at_market).step_by(7) {
        let (status, body) = cluster
            .get(&format!("{}/orders/{}", cluster.frontend(), ack.number))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (
                body["data"]["name"].clone(),
                body["data"]["quantity"].clone()
            ),
            (ack.entry["name"].clone(), ack.entry["quantity"].clone())
        );
    }

    // I3: the catalog holds initial + sells - buys of the committed log, all applied.
    let mut expected: HashMap<String, i64> = HashMap::new();
    let market = |order: &&Value| {
        (order["type"] == "buy" || order["type"] == "sell")
            && order.get("price").is_none()
            && order.get("protection_bps").is_none()
            && order.get("rejected").is_none()
    };
    for order in log.iter().filter(market) {
        let delta = order["quantity"].as_i64().expect("quantity");
        let signed = if order["type"] == "sell" {
            delta
        } else {
            -delta
        };
        *expected
            .entry(order["name"].as_str().expect("name").to_owned())
            .or_insert(INITIAL_QUANTITY) += signed;
    }
    for stock in snapshot["data"]["stocks"].as_array().expect("stocks") {
        let name = stock["name"].as_str().expect("name");
        let quantity = stock["quantity"].as_i64().expect("quantity");
        assert_eq!(
            quantity,
            *expected.get(name).unwrap_or(&INITIAL_QUANTITY),
            "{name}"
        );
        assert!(quantity >= 0);
        assert_eq!(
            cluster.quantity(0, name).await as i64,
            quantity,
            "{name} via the frontend"
        );
    }

    // I8: every replica holds the same book, equal to a fresh replay of the committed log.
    let replayed = book::check_replay(&log);
    let differing: Vec<String> = books
        .iter()
        .enumerate()
        .filter(|(_, book)| **book != replayed)
        .map(|(index, book)| {
            format!(
                "replica {}'s book differs from a replay of the log: {:?}; from replica {}'s: {:?}",
                index + 1,
                book.differences(&replayed),
                (index + 1) % books.len() + 1,
                book.differences(&books[(index + 1) % books.len()]),
            )
        })
        .collect();
    assert!(differing.is_empty(), "{differing:#?}");
    assert!(
        replayed
            .portfolios
            .iter()
            .all(|p| p.as_array().is_some_and(|held| !held.is_empty())),
        "both users traded: {:?}",
        replayed.portfolios
    );
    assert!(
        replayed
            .reports
            .iter()
            .any(|r| r["stocks"].as_array().is_some_and(|s| !s.is_empty())),
        "the reports count the day's trading"
    );
    // I11: a market order against the house executed at its stock's last price on the book
    // where it stands in the log (the leader holds it until the book orders of the stock
    // sequenced before it are applied), never at a price a trade before it had moved on from.
    let mut book_trades: Vec<(u64, u64, &str, f64)> = replayed
        .trades
        .iter()
        .map(|t| {
            let field = |name: &str| t[name].as_u64().expect("a trade's numbers");
            let price = t["price"].as_f64().expect("a trade's price");
            (
                field("id"),
                field("entry"),
                t["name"].as_str().expect("a name"),
                price,
            )
        })
        .collect();
    book_trades.sort_by_key(|&(id, ..)| id);
    let mut last_price: HashMap<&str, f64> = HashMap::new();
    let (mut earlier, mut quoted) = (book_trades.iter().peekable(), 0);
    for entry in log.iter().filter(market) {
        let number = entry["number"].as_u64().expect("a number");
        while let Some((_, _, name, price)) = earlier.next_if(|trade| trade.1 < number) {
            last_price.insert(name, *price);
        }
        let name = entry["name"].as_str().expect("a name");
        if let Some(price) = last_price.get(name) {
            assert_eq!(entry["quote"].as_f64(), Some(*price), "{entry}");
            quoted += 1;
        }
    }
    assert!(quoted > 0, "no market order after a trade of its stock");
    let limit_orders = replayed.orders.len();
    let expired = replayed
        .orders
        .iter()
        .filter(|o| o["status"] == "expired")
        .count();
    let triggered = replayed
        .orders
        .iter()
        .filter(|o| o.get("triggered_at").is_some())
        .count();
    let trades = replayed.trades.len();

    let refused: usize = reports.iter().map(|r| r.refused).sum();
    let unknown: usize = reports.iter().map(|r| r.unknown).sum();
    let retries: usize = reports.iter().map(|r| r.retries).sum();
    let reads: usize = reports.iter().map(|r| r.reads).sum();
    let reads_unavailable: usize = reports.iter().map(|r| r.reads_unavailable).sum();
    // What the faults cost trading (I13), reported, not asserted: the longest time in which no
    // client had a command acknowledged.
    let mut times: Vec<Instant> = acks.iter().map(|a| a.at).collect();
    times.sort();
    let mut pauses: Vec<(Duration, Instant, Instant)> = times
        .windows(2)
        .map(|pair| (pair[1] - pair[0], pair[0], pair[1]))
        .collect();
    pauses.sort_by_key(|pause| std::cmp::Reverse(pause.0));
    let longest_pause = pauses.first().map(|p| p.0).unwrap_or_default();
    // Which faults the longest pauses followed, for whoever has to make them shorter.
    for (pause, from, to) in pauses.iter().take(3) {
        let since = from.saturating_duration_since(started).as_secs_f64();
        let faults = (chaos.timeline).around(started, *from, *to, Duration::from_secs(3));
        println!("{pause:.1?} without an acknowledgement from {since:.2} s: {faults}");
    }
    // How long trading took to go on after each loss of the leader (to the next
    // acknowledgement, whatever came in between).
    let mut recoveries: Vec<Duration> = (chaos.timeline.leader_lost.iter())
        .filter_map(|lost| {
            let next = times.partition_point(|at| at <= lost);
            times.get(next).map(|at| *at - *lost)
        })
        .collect();
    recoveries.sort();
    let quantile = |q: f64| {
        let index = ((recoveries.len() as f64 - 1.0) * q).round() as usize;
        recoveries.get(index).copied().unwrap_or_default()
    };
    println!(
        "trading went on {:.0?} (median), {:.0?} (90th percentile), {:.0?} (at most) after \
         each of {} losses of the leader",
        quantile(0.5),
        quantile(0.9),
        quantile(1.0),
        recoveries.len()
    );
    let metrics = cluster.metrics(cluster.frontend()).await;
    let leader_changes = metrics
        .lines()
        .find_map(|l| l.strip_prefix("stocknet_frontend_leader_changes_total "))
        .unwrap_or("?");
    println!(
        "chaos ({faults:?}) over {seconds} s: {} commands acknowledged ({limit_orders} limit \
         orders, {trades} trades), {refused} refused (409), {} not executed (503), {unknown} \
         unknown after {ATTEMPTS} attempts, {retries} client retries; {reads} acknowledged \
         orders read back at once, {reads_unavailable} of those reads \
         unavailable; at most {longest_pause:.1?} without an acknowledgement; faults {chaos:?}; {leader_changes} leader changes followed; {expired} \
         orders expired, {triggered} stops triggered; orders lost: {lost}",
        acks.len(),
        unavailable.len(),
    );
    assert_eq!(lost, 0);
    assert!(faults.all_came(&chaos), "{chaos:?}");
    // A leader that refused every read would pass the read-backs without one.
    assert!(
        reads_unavailable < reads,
        "{reads_unavailable} of {reads} reads unavailable"
    );
    assert!(!acks.is_empty());
}
