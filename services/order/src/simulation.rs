//! Whole replicas in one process (issue 19, items 8 and 9a): the sequencer (idempotency keys,
//! the house projection), the book and the leader's catalog applier of three replicas, over the
//! in-memory network of the consensus tests and a catalog store in memory of the process, with
//! seeded faults: a replica cut off, a replica stopped and restarted, the catalog down.
//!
//! Clients place market orders, and limit orders about the stock's price (about half of which
//! trade), the way a frontend does: each call has a deadline, an answer
//! that leaves the outcome unknown is retried under the same key, and after a "not executed"
//! answer the next try is a new order under a new key. What the answers claimed is checked
//! against the group's final log and the catalog (I11, exactly-once):
//! - an order acknowledged with a number is in the log once, executed, at that number;
//! - an order answered "not executed" (503, 4xx) is never executed, not even later;
//! - no key is executed twice, whatever was retried;
//! - the catalog holds every executed order's effect exactly once, and the logs are identical;
//! - a market order executed at its stock's last price on the book where it stands in the log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use futures::future::BoxFuture;
use stocknet_catalog::store::CatalogStore;
use stocknet_catalog::CatalogError;
use stocknet_common::wire::{ApplyOutcome, ApplyRequest, NewOrder, Peer, Placed, Snapshot};
use stocknet_common::{ApiError, Command, Order, Price, RemoteError, Side};
use tempfile::TempDir;

use crate::book::InMemory;
use crate::book_store::BookSettings;
use crate::catalog::Catalog;
use crate::consensus::sim::{Choices, LinkFault, Network, Router};
use crate::error::OrderError;
use crate::log::IndexLimits;
use crate::replica::{Caller, Links, Replica, BATCH};

const STOCKS: [&str; 2] = ["GameStart", "FishCo"];
const INITIAL: &str = "name,price,quantity\nGameStart,15.99,1000000\nFishCo,9.50,1000000\n";

/// How long a client waits for one answer: a frontend's deadline for the leader.
const DEADLINE: Duration = Duration::from_secs(1);

/// The catalog's store, in this process; while `down`, every call fails as a catalog that
/// answers 503 would, and so do the calls of the replicas `cut` from it; while `stalled`,
/// applies wait (a catalog that takes its time).
struct MemoryCatalog {
    /// Replaced as a catalog brought back from a copy of its files would be.
    store: Mutex<Arc<CatalogStore>>,
    down: AtomicBool,
    cut: Mutex<BTreeSet<u64>>,
    stalled: tokio::sync::watch::Sender<bool>,
    /// Where the store stood after each apply that caught it up from behind.
    caught_up_at: Mutex<Vec<u64>>,
}

impl MemoryCatalog {
    fn store(&self) -> Arc<CatalogStore> {
        self.store.lock().unwrap().clone()
    }

    fn check(&self, from: u64) -> Result<(), RemoteError> {
        if self.down.load(Ordering::Acquire) || self.cut.lock().unwrap().contains(&from) {
            Err(RemoteError::Api(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the catalog is down",
            )))
        } else {
            Ok(())
        }
    }
}

/// The catalog as replica `from` reaches it.
struct CatalogFrom {
    catalog: Arc<MemoryCatalog>,
    from: u64,
}

impl Catalog for CatalogFrom {
    fn snapshot(&self) -> BoxFuture<'_, Result<Snapshot, RemoteError>> {
        Box::pin(async move {
            self.catalog.check(self.from)?;
            Ok(self.catalog.store().snapshot())
        })
    }

    fn apply<'a>(
        &'a self,
        request: &'a ApplyRequest,
    ) -> BoxFuture<'a, Result<ApplyOutcome, RemoteError>> {
        Box::pin(async move {
            self.catalog.check(self.from)?;
            let mut stalled = self.catalog.stalled.subscribe();
            let _ = stalled.wait_for(|stalled| !stalled).await;
            let store = self.catalog.store();
            let applied = store.apply(request).map(|applied| {
                if applied.caught_up {
                    let at = applied.outcome.applied;
                    self.catalog.caught_up_at.lock().unwrap().push(at);
                }
                applied.outcome
            });
            applied.map_err(|e| {
                let status = match e {
                    CatalogError::Gap { .. }
                    | CatalogError::StaleTerm { .. }
                    | CatalogError::TermJump { .. }
                    | CatalogError::InsufficientQuantity => StatusCode::CONFLICT,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                RemoteError::Api(ApiError::new(status, e.to_string()))
            })
        })
    }
}

/// What one try under a key was answered.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Executed(u64),
    NotExecuted(String),
    Unknown(String),
}

struct Cluster {
    dir: TempDir,
    size: u64,
    router: Arc<Router>,
    catalog: Arc<MemoryCatalog>,
    running: Mutex<BTreeMap<u64, Arc<Replica>>>,
    answers: Mutex<HashMap<String, Vec<Answer>>>,
    keys: AtomicU64,
}

impl Cluster {
    async fn start(size: u64) -> Arc<Self> {
        let cluster = Self::new(size);
        for id in 1..=size {
            cluster.start_replica(id).await;
        }
        cluster
    }

    /// A cluster of `size` replicas, none of them started yet.
    fn new(size: u64) -> Arc<Self> {
        let dir = tempfile::tempdir().unwrap();
        let store = CatalogStore::open(dir.path().join("catalog.csv"), INITIAL).unwrap();
        Arc::new(Self {
            dir,
            size,
            router: Arc::default(),
            catalog: Arc::new(MemoryCatalog {
                store: Mutex::new(Arc::new(store)),
                down: AtomicBool::new(false),
                cut: Mutex::default(),
                stalled: tokio::sync::watch::channel(false).0,
                caught_up_at: Mutex::default(),
            }),
            running: Mutex::default(),
            answers: Mutex::default(),
            keys: AtomicU64::new(0),
        })
    }

    async fn start_replica(&self, id: u64) {
        let peers = (1..=self.size)
            .map(|id| Peer {
                id: id as u32,
                url: format!("http://replica-{id}.sim")
                    .parse()
                    .expect("a simulated address"),
            })
            .collect();
        let network = Network {
            router: self.router.clone(),
            from: id,
        };
        let links = Links {
            network: network.clone(),
            elections: network,
            catalog: Arc::new(CatalogFrom {
                catalog: self.catalog.clone(),
                from: id,
            }),
        };
        // Small enough that the checks read trades from the archive too.
        let book = BookSettings {
            snapshot_every: 50,
            in_memory: InMemory {
                trades: 8,
                orders: 8,
            },
        };
        // Checkpoints of the log's index as often as it takes, so that restarts read them.
        let index = IndexLimits {
            key_checkpoint_every: 16,
            key_checkpoint_interval: Duration::ZERO,
            ..IndexLimits::default()
        };
        let replica = Replica::start(id as u32, self.dir.path(), peers, links, book, index)
            .await
            .unwrap();
        self.router
            .rafts
            .lock()
            .unwrap()
            .insert(id, (replica.raft().clone(), replica.elections().clone()));
        self.running.lock().unwrap().insert(id, replica);
    }

    /// Stops replica `id` as a crash would, keeping its files.
    async fn stop_replica(&self, id: u64) {
        self.router.rafts.lock().unwrap().remove(&id);
        let replica = self.running.lock().unwrap().remove(&id);
        if let Some(replica) = replica {
            replica.shutdown().await;
        }
    }

    fn running(&self) -> Vec<(u64, Arc<Replica>)> {
        let running = self.running.lock().unwrap();
        running.iter().map(|(id, r)| (*id, r.clone())).collect()
    }

    /// The replica a frontend would send to: the one that says it leads the highest term, else
    /// any.
    fn pick(&self, choice: u64) -> Option<Arc<Replica>> {
        let running = self.running();
        let leading = running
            .iter()
            .map(|(id, r)| (r.health(), id, r))
            .filter(|(health, _, _)| health.leading)
            .max_by_key(|(health, _, _)| health.term)
            .map(|(_, id, r)| (*id, r.clone()));
        let leading = leading.as_ref();
        leading
            .or_else(|| running.get(choice as usize % running.len().max(1)))
            .map(|(_, r)| r.clone())
    }

    /// Waits (bounded) until replica `id` leads and has taken over, and returns it.
    async fn led_by(&self, id: u64, within: Duration) -> Arc<Replica> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let leader = self
                .running()
                .into_iter()
                .find(|(running, replica)| *running == id && replica.health().leading);
            if let Some((_, leader)) = leader {
                return leader;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica {id} never led"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn fresh_key(&self) -> String {
        format!("sim-{}", self.keys.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, key: &str, answer: Answer) {
        let mut answers = self.answers.lock().unwrap();
        answers.entry(key.to_owned()).or_default().push(answer);
    }

    /// One client's order, tried until it is answered for sure (or 8 tries).
    async fn client(self: Arc<Self>, order: NewOrder, choice: u64) {
        let mut key = self.fresh_key();
        for attempt in 0..8u64 {
            let Some(replica) = self.pick(choice + attempt) else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let placed = replica.place(order.clone(), Caller::new(Some(key.clone()), None));
            match tokio::time::timeout(DEADLINE, placed).await {
                Ok(Ok(placed)) => {
                    self.record(&key, Answer::Executed(placed.transaction_number));
                    return;
                }
                Ok(Err(e @ OrderError::OutcomeUnknown { .. })) => {
                    self.record(&key, Answer::Unknown(e.to_string()));
                }
                Err(_) => self.record(&key, Answer::Unknown("no answer in time".into())),
                Ok(Err(
                    e @ (OrderError::NotLeader { .. }
                    | OrderError::NotReady
                    | OrderError::HandingOver(_)
                    | OrderError::CatalogUnavailable(_)
                    | OrderError::Rejected { .. }),
                )) => {
                    self.record(&key, Answer::NotExecuted(e.to_string()));
                    key = self.fresh_key();
                }
                Ok(Err(e)) => panic!("an order was answered with {e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// Replica `id`'s whole log.
    fn log(replica: &Replica) -> Vec<Order> {
        let mut log = Vec::new();
        loop {
            let page = replica.slice_after(log.len() as u64, BATCH).unwrap();
            if page.orders.is_empty() {
                return log;
            }
            log.extend(page.orders);
        }
    }

    /// Waits until every replica holds the same log and the catalog has applied all of it.
    async fn settled(&self) -> Vec<Order> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let logs: Vec<Vec<Order>> = self.running().iter().map(|(_, r)| Self::log(r)).collect();
            let last = logs[0].last().map_or(0, |o| o.number);
            let applied = self.catalog.store().snapshot().applied;
            if logs.windows(2).all(|pair| pair[0] == pair[1]) && applied == last {
                return logs[0].clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never settled: log lengths {:?}, catalog at {applied}",
                logs.iter().map(Vec::len).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The numbers of the entries in `log` under idempotency key `key`.
fn numbers_under(log: &[Order], key: &str) -> Vec<u64> {
    log.iter()
        .filter(|o| o.key.as_deref() == Some(key))
        .map(|o| o.number)
        .collect()
}

/// Waits (at most 5 s) until `replica`'s log holds a command under `key`, committed or not.
async fn logged(replica: &Replica, key: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !Cluster::log(replica)
        .iter()
        .any(|o| o.key.as_deref() == Some(key))
    {
        assert!(tokio::time::Instant::now() < deadline, "{key} never logged");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `replica` places `order` under `key`, answered within `within` or not at all.
fn place_within(
    replica: &Arc<Replica>,
    order: NewOrder,
    key: &str,
    within: Duration,
) -> tokio::time::Timeout<impl std::future::Future<Output = Result<Placed, OrderError>>> {
    let (replica, key) = (replica.clone(), Some(key.to_owned()));
    tokio::time::timeout(within, async move {
        replica.place(order, Caller::new(key, None)).await
    })
}

/// `order` placed anonymously on `leader` under `key`, answered within 5 s.
async fn answered(
    leader: Arc<Replica>,
    order: NewOrder,
    key: String,
) -> Result<Placed, OrderError> {
    let placed = leader.place(order, Caller::new(Some(key), None));
    tokio::time::timeout(Duration::from_secs(5), placed)
        .await
        .expect("an answer")
}

/// An order of `quantity` shares of `name` with no terms: a market order without a `price`.
fn new_order(name: &str, side: Side, quantity: u32, price: Option<Price>) -> NewOrder {
    NewOrder {
        name: name.into(),
        quantity,
        side,
        price,
        guard: None,
        terms: Default::default(),
        client_order_id: None,
        protection_bps: None,
    }
}

/// Runs `steps` seeded steps on three replicas and checks every answer against the outcome.
async fn simulate(seed: u64, steps: usize) {
    let mut choices = Choices::seeded(seed);
    let cluster = Cluster::start(3).await;
    let mut cut: Option<u64> = None;
    let mut stopped: Option<u64> = None;
    // A replica whose messages are slow, lost one in a few, or held until it "resumes".
    let mut troubled: Option<u64> = None;
    let mut link_faults = 0;
    for _ in 0..steps {
        match choices.below(13) {
            12 => {
                if let (None, None, None) = (cut, stopped, troubled) {
                    let id = 1 + choices.below(3);
                    let fault = match choices.below(3) {
                        0 => LinkFault::Slow(Duration::from_millis(5 + choices.below(60))),
                        1 => LinkFault::Lossy(2 + choices.below(4)),
                        _ => LinkFault::Paused,
                    };
                    cluster.router.set_fault(id, Some(fault));
                    troubled = Some(id);
                    link_faults += 1;
                }
            }
            0 => {
                if let (None, None, None) = (cut, stopped, troubled) {
                    let id = 1 + choices.below(3);
                    cluster.router.isolate(id, &[1, 2, 3], true);
                    cut = Some(id);
                }
            }
            1 => {
                if let (None, None, None) = (cut, stopped, troubled) {
                    let id = 1 + choices.below(3);
                    cluster.stop_replica(id).await;
                    stopped = Some(id);
                }
            }
            2 => {
                if choices.below(2) == 0 {
                    let down = !cluster.catalog.down.load(Ordering::Acquire);
                    cluster.catalog.down.store(down, Ordering::Release);
                } else {
                    // One replica's link to the catalog cut, or healed.
                    let mut cut_off = cluster.catalog.cut.lock().unwrap();
                    if cut_off.is_empty() {
                        cut_off.insert(1 + choices.below(3));
                    } else {
                        cut_off.clear();
                    }
                }
            }
            3 => {
                if let Some(id) = cut.take() {
                    cluster.router.isolate(id, &[1, 2, 3], false);
                }
                if let Some(id) = troubled.take() {
                    cluster.router.set_fault(id, None);
                }
                if let Some(id) = stopped.take() {
                    cluster.start_replica(id).await;
                }
            }
            _ => {
                let clients: Vec<_> = (0..1 + choices.below(4))
                    .map(|_| {
                        let name = STOCKS[choices.below(2) as usize];
                        let quantity = 1 + choices.below(20) as u32;
                        let side = if choices.below(2) == 0 {
                            Side::Buy
                        } else {
                            Side::Sell
                        };
                        // One order in three on the book, within 20 cents of the stock's
                        // initial price: half cross and trade, and move its price.
                        let price = (choices.below(3) == 0).then(|| {
                            let initial = if name == STOCKS[0] { 1599 } else { 950 };
                            Price::from_cents(initial - 20 + choices.below(41))
                        });
                        let order = new_order(name, side, quantity, price);
                        tokio::spawn(cluster.clone().client(order, choices.below(3)))
                    })
                    .collect();
                for client in clients {
                    client.await.unwrap();
                }
            }
        }
    }
    // Everything heals; the answers are then checked against what the group settled on.
    if let Some(id) = cut {
        cluster.router.isolate(id, &[1, 2, 3], false);
    }
    if let Some(id) = troubled {
        cluster.router.set_fault(id, None);
    }
    if let Some(id) = stopped {
        cluster.start_replica(id).await;
    }
    cluster.catalog.down.store(false, Ordering::Release);
    cluster.catalog.cut.lock().unwrap().clear();
    cluster
        .clone()
        .client(new_order(STOCKS[0], Side::Buy, 1, None), 0)
        .await;
    let log = cluster.settled().await;
    check(&cluster, &log);
    assert!(
        link_faults > 0,
        "seed {seed}: no slow, lossy or held messages drawn"
    );
}

fn check(cluster: &Cluster, log: &[Order]) {
    let mut executed: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut quantities: BTreeMap<&str, i64> = STOCKS.iter().map(|s| (*s, 1_000_000)).collect();
    // The book replayed alongside: a market order's quote is its stock's last price on the book
    // before it, once the book has traded the stock.
    let mut book = crate::book::Book::default();
    for entry in log {
        let placed = matches!(entry.command, Command::Place { .. });
        if let Some(key) = entry.key.as_deref().filter(|_| placed) {
            if entry.stamp.rejected.is_none() {
                executed.entry(key).or_default().push(entry.number);
            }
        }
        if let Some((side, count)) = entry.market() {
            *quantities.get_mut(entry.name.as_str()).unwrap() += side.delta(count);
            if let Some(price) = book.last_price(&entry.name) {
                assert_eq!(entry.stamp.quote, Some(price), "{entry:?}");
            }
        }
        book.apply(entry);
    }
    for (key, numbers) in &executed {
        assert_eq!(numbers.len(), 1, "key {key} executed at {numbers:?}");
    }
    let answers = cluster.answers.lock().unwrap();
    let mut acknowledged = 0;
    for (key, tries) in answers.iter() {
        let fate = executed.get(key.as_str()).map(|numbers| numbers[0]);
        for answer in tries {
            if let Answer::Executed(number) = answer {
                acknowledged += 1;
                assert_eq!(fate, Some(*number), "key {key}: {tries:?}");
            }
        }
        // Its only try said "not executed": it never is.
        if let [Answer::NotExecuted(why)] = tries.as_slice() {
            assert_eq!(fate, None, "key {key} was answered {why:?} and executed");
        }
    }
    assert!(acknowledged > 0, "no order was acknowledged: {answers:?}");
    let catalog = cluster.catalog.store().snapshot();
    for stock in catalog.stocks {
        assert_eq!(
            stock.quantity as i64,
            quantities[stock.name.as_str()],
            "{}: the catalog holds every executed order once",
            stock.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_faults_keep_every_answer_true_and_every_order_executed_once() {
    for seed in [1, 2] {
        simulate(seed, 80).await;
    }
}

/// Issue 20, item 2: a book command that does not trade changes nothing in the catalog, so its
/// answer does not wait for it; a market order's does (I3, I7), and comes once it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_commands_that_change_the_catalog_wait_for_it() {
    let cluster = Cluster::start(3).await;
    let order = |side: Side, price: Option<Price>| new_order(STOCKS[0], side, 1, price);
    // The steady state: the highest id leads (it would be handed the leadership otherwise).
    let leader = cluster.led_by(3, Duration::from_secs(20)).await;
    let place = |order: NewOrder, key: &str| answered(leader.clone(), order, key.to_owned());
    place(order(Side::Buy, None), "warm-up").await.unwrap();

    cluster.catalog.stalled.send_replace(true);
    let market = tokio::spawn(place(order(Side::Buy, None), "market"));
    // Resting limit orders (far below the price) and a cancel: answered while the catalog is
    // stalled.
    let resting = place(order(Side::Buy, Some(Price::from_cents(1))), "resting")
        .await
        .unwrap();
    assert_eq!(resting.status, stocknet_common::Status::Open);
    let cancel = leader
        .cancel(
            resting.transaction_number,
            Caller::new(Some("cancel".into()), None),
        )
        .await
        .unwrap();
    assert!(cancel.transaction_number > resting.transaction_number);
    // The market order changes the house's quantity: it waits for the catalog.
    assert!(
        !market.is_finished(),
        "answered before the catalog applied it"
    );
    cluster.catalog.stalled.send_replace(false);
    let market = market.await.unwrap().unwrap();
    assert_eq!(market.status, stocknet_common::Status::Filled);
    cluster.settled().await;
    let house = cluster.catalog.store().get(STOCKS[0]).expect("the stock");
    assert_eq!(house.quantity, 1_000_000 - 2, "both market buys, once each");
}

/// A catalog brought back from an older copy of its files, while nothing commits, is caught
/// up by the leader within a few seconds: it asks where the catalog stands now and then, not
/// only when an order commits, so the quantities of acknowledged orders come back (I3).
#[tokio::test]
async fn a_catalog_back_from_an_older_copy_is_caught_up_while_nothing_commits() {
    catalog_caught_up_while_nothing_commits(None).await;
}

/// A catalog that lost trades it had answered before their fsync with its machine's power
/// (what its disk held before them, opened in a new boot) shows no stock until the leader has
/// caught it up, which it does while nothing commits: the leader's rounds say where its book
/// stands.
#[tokio::test]
async fn a_catalog_back_from_a_power_loss_is_behind_until_the_leader_catches_it_up() {
    catalog_caught_up_while_nothing_commits(Some("a later boot")).await;
}

/// The catalog's files copied before more than two batches of acknowledged orders are opened
/// in `new_boot`, or in this one, and replace the catalog; the leader must bring it back to
/// where it stood, and a catalog behind must not count as caught up before it is there (the
/// first batch does not bring it there).
async fn catalog_caught_up_while_nothing_commits(new_boot: Option<&str>) {
    let cluster = Cluster::start(3).await;
    let leader = cluster.led_by(3, Duration::from_secs(20)).await;
    let copy = tempfile::tempdir().unwrap();
    // (No boot file where the kernel names no boot.)
    let files = ["catalog.csv", "catalog.wal", "catalog.kernel-boot"];
    for file in files.iter().filter(|f| cluster.dir.path().join(f).exists()) {
        std::fs::copy(cluster.dir.path().join(file), copy.path().join(file)).unwrap();
    }
    let before = cluster.catalog.store().get(STOCKS[0]).expect("the stock");
    let orders = 2 * BATCH as u64 + 3;
    for _ in 0..orders {
        let buy = new_order(STOCKS[0], Side::Buy, 1, None);
        leader.place(buy, Caller::new(None, None)).await.unwrap();
    }
    let acknowledged = cluster.catalog.store().snapshot();
    assert_eq!(
        cluster.catalog.store().get(STOCKS[0]).unwrap().quantity,
        before.quantity - orders
    );

    let path = copy.path().join("catalog.csv");
    let restored = match new_boot {
        Some(boot) => CatalogStore::open_in_boot(path, INITIAL, Some(boot.to_owned())).unwrap(),
        None => CatalogStore::open(path, INITIAL).unwrap(),
    };
    assert_eq!(restored.get(STOCKS[0]), Some(before));
    assert_eq!(restored.is_behind(), new_boot.is_some());
    *cluster.catalog.store.lock().unwrap() = Arc::new(restored);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cluster.catalog.store().snapshot().applied < acknowledged.applied
        || cluster.catalog.store().is_behind()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restored catalog was never caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        cluster.catalog.store().snapshot().stocks,
        acknowledged.stocks
    );
    let caught_up_at = cluster.catalog.caught_up_at.lock().unwrap().clone();
    assert!(
        caught_up_at.iter().all(|&at| at >= acknowledged.applied),
        "caught up at {caught_up_at:?}, short of {}",
        acknowledged.applied
    );
    assert_eq!(caught_up_at.is_empty(), new_boot.is_none());
}

/// A catalog that went down while nothing committed (its leader's idle look at it failed) is
/// taken up again within a retry of its return, not after the idle look's 2 s: new orders
/// are refused while the last round failed, so no commit would bring the next round.
#[tokio::test]
async fn orders_go_on_soon_after_a_catalog_that_failed_an_idle_look_is_back() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.led_by(3, Duration::from_secs(20)).await;
    cluster.catalog.down.store(true, Ordering::Release);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !leader.catalog_failing() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no idle look failed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.catalog.down.store(false, Ordering::Release);
    let back = tokio::time::Instant::now();
    loop {
        let resting = new_order(STOCKS[0], Side::Buy, 1, Some(Price::from_cents(1)));
        match leader.place(resting, Caller::new(None, None)).await {
            Ok(_) => break,
            Err(OrderError::CatalogUnavailable(_)) => {}
            Err(e) => panic!("{e:?}"),
        }
        assert!(
            back.elapsed() < Duration::from_millis(1500),
            "orders refused for {:?} after the catalog came back",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A leader cut off from the catalog alone (its link to it cut, the others' not) refuses every
/// new order: it hands the leadership to the highest voter that reaches the catalog. That voter
/// keeps it: a leader hands over by preference (to the highest id, here the one cut off) only
/// to a voter that reaches the catalog, so orders, which change the catalog, go on there past
/// the preference's wait.
#[tokio::test]
async fn a_leader_cut_off_from_the_catalog_alone_hands_over_to_a_voter_that_reaches_it() {
    let cluster = Cluster::start(3).await;
    cluster.led_by(3, Duration::from_secs(20)).await;
    cluster.catalog.cut.lock().unwrap().insert(3);
    orders_go_on_without(&cluster, 3).await;
}

/// The leader and the voter next to it in rank both cut off from the catalog: the leader hands
/// the leadership to the highest voter that reaches it, in one change, though the other one cut
/// off would stand first after the leader's heartbeats stopped (and, elected, hand it on in
/// turn). Told of the handover, the chosen voter stands at once (TimeoutNow) and the others wait
/// for it: it is elected at once in a group of three, where the leader's vote and its own are a
/// majority; in a group of five once the others' leases ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_hands_over_to_the_voter_it_chose_though_another_stands_first() {
    for voters in [3, 5] {
        let cluster = Cluster::start(voters).await;
        let leader = cluster.led_by(voters, Duration::from_secs(20)).await;
        let term = leader.raft().metrics().borrow().current_term;
        cluster
            .catalog
            .cut
            .lock()
            .unwrap()
            .extend([voters - 1, voters]);
        let next = cluster.led_by(voters - 2, Duration::from_secs(20)).await;
        let next_term = next.raft().metrics().borrow().current_term;
        assert_eq!(
            next_term,
            term + 1,
            "of {voters}: another leader came between {voters} and {}",
            voters - 2
        );
    }
}

/// The same for a replica elected while cut off from the catalog: its takeover fails, and it
/// hands the leadership over all the same. (Replica 2 leads first, handed the leadership by
/// replica 3 if 3 was elected; stopped, it leaves the election to 3, the first to stand.)
#[tokio::test]
async fn a_replica_elected_while_cut_off_from_the_catalog_hands_over() {
    let cluster = Cluster::start(3).await;
    cluster.catalog.cut.lock().unwrap().insert(3);
    cluster.led_by(2, Duration::from_secs(30)).await;
    cluster.stop_replica(2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let elected = |(id, replica): &(u64, Arc<Replica>)| {
        *id == 3 && replica.raft().metrics().borrow().state == openraft::ServerState::Leader
    };
    while !cluster.running().iter().any(elected) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "replica 3 never elected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.start_replica(2).await;
    orders_go_on_without(&cluster, 3).await;
}

/// Waits until replica 2 leads, then has it execute orders against the house (which change
/// the catalog) for longer than a handover by preference takes to come, and checks that it
/// still leads: the leadership did not go back to replica `cut_off`.
async fn orders_go_on_without(cluster: &Cluster, cut_off: u64) {
    use crate::consensus::handover::{CAUGHT_UP_FOR, LEAD_SETTLE};
    let next = cluster.led_by(2, Duration::from_secs(30)).await;
    let taken = tokio::time::Instant::now();
    let mut placed = 0;
    while taken.elapsed() < LEAD_SETTLE + CAUGHT_UP_FOR + Duration::from_secs(1) {
        let order = new_order(STOCKS[0], Side::Buy, 1, None);
        let key = format!("after-{placed}");
        if let Err(e) = answered(next.clone(), order, key).await {
            panic!(
                "order {placed} on replica 2, {:?} after it took over from {cut_off}: {e:?}",
                taken.elapsed()
            );
        }
        placed += 1;
    }
    assert!(next.health().leading);
}

/// A leader the catalog says a newer leader has fenced out (cut off from its group but not from
/// the catalog, and not told yet) is not leading any more, whatever its consensus layer still
/// says: the command waiting on that round is of unknown outcome with no catalog reason, and
/// new commands are "not the leader" (not "catalog unavailable", which a frontend answers
/// without looking for another leader), so that frontends find the new one.
#[tokio::test]
async fn a_leader_the_catalog_has_fenced_out_answers_not_the_leader() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.led_by(3, Duration::from_secs(20)).await;
    let place = |price: Option<Price>, key: &str| {
        let order = new_order(STOCKS[0], Side::Buy, 1, price);
        answered(leader.clone(), order, key.to_owned())
    };
    place(None, "warm-up").await.unwrap();
    // A newer leader's take-over reaches the catalog.
    let term = cluster.catalog.store().snapshot().term;
    let newer = ApplyRequest {
        term: term + 1,
        trades: Vec::new(),
        leader_applied: None,
    };
    cluster.catalog.store().apply(&newer).unwrap();
    let fenced = place(None, "fenced").await;
    assert!(
        matches!(
            fenced,
            Err(OrderError::OutcomeUnknown { catalog: false, .. })
        ),
        "{fenced:?}"
    );
    let next = place(Some(Price::from_cents(1)), "next").await;
    assert!(
        matches!(next, Err(OrderError::NotLeader { .. })),
        "{next:?}"
    );
    assert!(!leader.health().leading, "its health still says it leads");
    // The catalog's term set back (as `stocknet admin set-term` does after a bogus one): the
    // leader's next catalog round is taken, and it leads again.
    cluster.catalog.store().reset_term(term).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !leader.health().leading {
        assert!(tokio::time::Instant::now() < deadline, "still fenced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    place(Some(Price::from_cents(1)), "again").await.unwrap();
}

/// A retry of a command the leader has written to its log but the group has not committed is
/// answered as undecided, never as done nor as not found (I11, I12): the leader may be cut off,
/// and the entry overwritten. So while the first try waits, and after it went away unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_a_command_logged_and_not_committed_is_not_answered_as_done() {
    // Each on a group of its own: an entry that cannot commit holds back the next.
    for (key, cancel) in [("cut-off place", false), ("cut-off cancel", true)] {
        retry_on_a_cut_off_leader(key, cancel).await;
    }
}

/// A client's read of the book runs off the async workers: one that takes a while (archived
/// records read from disk under the book's lock) leaves the replica's own traffic on them, its
/// consensus heartbeats and appends, going meanwhile.
#[tokio::test]
async fn a_slow_read_of_the_book_leaves_the_async_workers_free() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.led_by(3, Duration::from_secs(20)).await;
    let (release, released) = std::sync::mpsc::channel::<()>();
    let reading = tokio::spawn({
        let leader = leader.clone();
        async move {
            leader
                .read_off_runtime(move |replica| {
                    // Held until this test's task, on the async worker, lets it go.
                    let let_go = released.recv_timeout(Duration::from_secs(10)).is_ok();
                    replica.read_book(|book| (let_go, book.applied()))
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    release.send(()).unwrap();
    let (let_go, _) = reading.await.unwrap().unwrap();
    assert!(let_go, "the read held the async worker the test runs on");
}

/// A replica whose log is busy (a snapshot's lines being installed hold it for as long as that
/// takes) still answers pre-votes and health at once: a pre-vote answered late counts as
/// refused, which could keep the others from electing a leader, and a health answer that waits
/// gets the replica restarted by its liveness probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_log_is_busy_answers_pre_votes_and_health_at_once() {
    use crate::consensus::PreVote;
    let cluster = Cluster::start(3).await;
    let leader = cluster.led_by(3, Duration::from_secs(20)).await;
    leader
        .place(
            new_order(STOCKS[0], Side::Buy, 1, None),
            Caller::new(Some("busy".into()), None),
        )
        .await
        .unwrap();
    let follower = cluster
        .running()
        .into_iter()
        .find(|(id, _)| *id == 1)
        .map(|(_, replica)| replica)
        .unwrap();
    // The order commits on a majority, which need not include this follower yet.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while follower.health().last_transaction < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the order never reached replica 1"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (hold, held) = std::sync::mpsc::channel::<()>();
    let (locked, is_locked) = std::sync::mpsc::channel::<()>();
    let busy = {
        let log = follower.order_log().clone();
        std::thread::spawn(move || {
            let _busy = log.lock().unwrap();
            locked.send(()).unwrap();
            let _ = held.recv_timeout(Duration::from_secs(30));
        })
    };
    is_locked.recv().unwrap();
    let runtime = tokio::runtime::Handle::current();
    let asking = follower.clone();
    let answered = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::task::spawn_blocking(move || {
            let health = asking.health();
            let request = PreVote {
                candidate: 2,
                term: health.term + 1,
                last_log: None,
            };
            // Refused (a leader is still heard from), but answered.
            let vote = runtime.block_on(asking.elections().answer(&request));
            (health, vote)
        }),
    )
    .await;
    let _ = hold.send(());
    busy.join().unwrap();
    let (health, vote) = answered.expect("answered while the log is busy").unwrap();
    assert!(!vote);
    assert!(health.last_transaction >= 1, "{health:?}");
}

/// Only the leader, taken over, answers a cancel by client order id: a follower's book may lag
/// an order placed a moment ago, and its "no open order has it" (404) would be untrue.
#[tokio::test]
async fn a_cancel_by_client_order_id_is_answered_by_the_leader_only() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.led_by(3, Duration::from_secs(20)).await;
    // Replica 1 hears nothing of the order: its book lags.
    cluster.router.isolate(1, &[1, 2, 3], true);
    let mut resting = new_order(STOCKS[0], Side::Buy, 1, Some(Price::from_cents(1)));
    resting.client_order_id = Some("ladder-1".into());
    leader
        .place(resting, Caller::new(Some("resting".into()), Some(7)))
        .await
        .unwrap();
    for (id, follower) in cluster.running() {
        if id == 3 {
            continue;
        }
        let asked = follower
            .cancel_by_client_order_id("ladder-1", Some("cancel".into()), 7)
            .await;
        assert!(
            matches!(asked, Err(OrderError::NotLeader { .. })),
            "replica {id}: {asked:?}"
        );
    }
    cluster.router.isolate(1, &[1, 2, 3], false);
    let cancelled = leader
        .cancel_by_client_order_id("ladder-1", Some("cancel".into()), 7)
        .await;
    assert!(cancelled.is_ok(), "{cancelled:?}");
}

/// A leader cut off from a group that has moved on, which still says it leads, does not refuse
/// a position its successor's log holds as past the end of the order log: a stream told so is
/// closed for good (I11). It leaves the position to the leader, which refuses one past its own.
#[tokio::test]
async fn a_cut_off_leader_leaves_a_position_past_its_log_to_the_new_leader() {
    let cluster = Cluster::start(3).await;
    let old = cluster.led_by(3, Duration::from_secs(20)).await;
    cluster.router.isolate(3, &[1, 2, 3], true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let new = loop {
        let leading = (cluster.running().into_iter())
            .find(|(id, replica)| *id != 3 && replica.health().leading);
        if let Some((_, replica)) = leading {
            break replica;
        }
        assert!(tokio::time::Instant::now() < deadline, "no new leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The catalog holds every apply from here on: the cut-off leader's look at where the
    // catalog stands would be told a newer leader took over, and it would stop saying it
    // leads. (The resting order waits for no catalog round.)
    cluster.catalog.stalled.send_replace(true);
    let resting = new_order(STOCKS[0], Side::Buy, 1, Some(Price::from_cents(1)));
    let placed = new.place(resting, Caller::new(None, None)).await.unwrap();
    let position = placed.transaction_number;
    assert!(position > old.last_transaction());
    assert!(old.health().leading, "the cut-off leader says it leads");

    let asked = old.order_updates(None, position, Duration::ZERO).await;
    assert!(
        matches!(asked, Err(OrderError::NotLeader { .. })),
        "{asked:?}"
    );
    let past = new.order_updates(None, position + 1, Duration::ZERO).await;
    assert!(
        matches!(past, Err(OrderError::PastTheLog { after, last }) if after == position + 1 && last == position),
        "{past:?}"
    );
    let served = new.order_updates(None, position - 1, Duration::ZERO).await;
    assert!(served.is_ok(), "{served:?}");
    cluster.catalog.stalled.send_replace(false);
    cluster.router.isolate(3, &[1, 2, 3], false);
}

/// A market order on the book retried under its key with another protection (a frontend fills
/// in its own default when the client gave none) is the same request, answered with the
/// first's number; with another quantity it is a key reused (422).
#[tokio::test]
async fn a_market_order_retried_with_another_protection_is_the_same_request() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.led_by(3, Duration::from_secs(20)).await;
    let resting = new_order(STOCKS[0], Side::Sell, 5, Some(Price::from_cents(100)));
    let caller = |key: &str, user| Caller::new(Some(key.into()), Some(user));
    leader.place(resting, caller("resting", 8)).await.unwrap();
    let sweep = |protection_bps, quantity| {
        let mut order = new_order(STOCKS[0], Side::Buy, quantity, None);
        order.protection_bps = Some(protection_bps);
        order.terms.time_in_force = stocknet_common::TimeInForce::Ioc;
        order
    };
    let first = leader
        .place(sweep(500, 2), caller("sweep", 7))
        .await
        .unwrap();
    let retried = leader
        .place(sweep(300, 2), caller("sweep", 7))
        .await
        .unwrap();
    assert_eq!(retried.transaction_number, first.transaction_number);
    let reused = leader.place(sweep(500, 3), caller("sweep", 7)).await;
    assert!(matches!(reused, Err(OrderError::KeyReused)), "{reused:?}");
}

/// A key that cancelled one order by its client order id, or by its number, and comes back to
/// cancel another order by its client order id is a key reused (422), not a retry answered
/// with the first cancel while the other order stays open (I11).
#[tokio::test]
async fn a_cancel_key_reused_for_another_client_order_id_is_refused() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.led_by(3, Duration::from_secs(20)).await;
    let mut numbers = Vec::new();
    for id in ["ladder-1", "ladder-2", "ladder-3"] {
        let mut resting = new_order(STOCKS[0], Side::Buy, 1, Some(Price::from_cents(1)));
        resting.client_order_id = Some(id.into());
        let placed = leader.place(resting, Caller::new(Some(id.into()), Some(7)));
        numbers.push(placed.await.unwrap().transaction_number);
    }
    let cancel = |id: &'static str, key: &'static str| {
        leader.cancel_by_client_order_id(id, Some(key.into()), 7)
    };
    let first = cancel("ladder-1", "cancel").await.unwrap();
    let retried = cancel("ladder-1", "cancel").await.unwrap();
    assert_eq!(retried.transaction_number, first.transaction_number);
    let reused = cancel("ladder-2", "cancel").await;
    assert!(matches!(reused, Err(OrderError::KeyReused)), "{reused:?}");

    let by_number = leader
        .cancel(numbers[2], Caller::new(Some("by number".into()), Some(7)))
        .await;
    assert!(by_number.is_ok(), "{by_number:?}");
    let reused = cancel("ladder-2", "by number").await;
    assert!(matches!(reused, Err(OrderError::KeyReused)), "{reused:?}");
    assert!(
        leader
            .read_book(|book| book.open_by_client_order_id(7, "ladder-2"))
            .unwrap()
            .is_some(),
        "ladder-2 stays open"
    );
}

async fn retry_on_a_cut_off_leader(key: &str, cancel: bool) {
    let cluster = Cluster::start(3).await;
    let leader = cluster.led_by(3, Duration::from_secs(20)).await;
    let resting = new_order(STOCKS[0], Side::Buy, 1, Some(Price::from_cents(1)));
    let placed = leader.place(resting.clone(), Caller::new(Some("resting".into()), None));
    let open = placed.await.unwrap().transaction_number;
    let send = || {
        let (leader, order, key) = (leader.clone(), resting.clone(), Some(key.to_owned()));
        tokio::spawn(async move {
            let answer = async {
                if cancel {
                    let changed = leader.cancel(open, Caller::new(key, None)).await;
                    changed.map(|c| c.transaction_number)
                } else {
                    let placed = leader.place(order, Caller::new(key, None)).await;
                    placed.map(|p| p.transaction_number)
                }
            };
            tokio::time::timeout(Duration::from_millis(500), answer).await
        })
    };
    let undecided = |answer: &Result<Result<u64, OrderError>, _>| {
        matches!(answer, Err(_) | Ok(Err(OrderError::OutcomeUnknown { .. })))
    };

    cluster.router.isolate(3, &[1, 2, 3], true);
    let first = send();
    logged(&leader, key).await;
    let beside = send().await.unwrap();
    assert!(
        undecided(&beside),
        "{key}, retried beside the first: {beside:?}"
    );
    // Asked under its key meanwhile (`GET /orders?key=`), the leader says it is still being
    // decided: an empty answer would say it never executed, and it may yet.
    let asked = leader.placed_under(key).await;
    assert!(
        matches!(asked, Err(OrderError::OutcomeUnknown { .. })),
        "{key}, asked under its key: {asked:?}"
    );
    let first = first.await.unwrap();
    assert!(undecided(&first), "{key}: {first:?}");
    let after = send().await.unwrap();
    assert!(
        undecided(&after),
        "{key}, retried after the first: {after:?}"
    );

    cluster.router.isolate(3, &[1, 2, 3], false);
    let log = cluster.settled().await;
    assert!(numbers_under(&log, key).len() <= 1);
}

/// A request that goes away before its command commits (its caller's deadline passed) leaves
/// nothing in flight behind it: once the command commits, a retry under its key gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_first_try_went_away_gets_the_committed_command() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.led_by(3, Duration::from_secs(20)).await;
    let resting = new_order(STOCKS[0], Side::Buy, 1, Some(Price::from_cents(1)));
    let place = |replica: Arc<Replica>, within: Duration| {
        let order = resting.clone();
        let placed = async move {
            replica
                .place(order, Caller::new(Some("went away".into()), None))
                .await
        };
        tokio::time::timeout(within, placed)
    };
    cluster
        .router
        .set_fault(3, Some(LinkFault::Slow(Duration::from_millis(100))));
    let gone = place(leader.clone(), Duration::from_millis(20)).await;
    assert!(
        gone.is_err(),
        "answered within 20 ms over a slow link: {gone:?}"
    );
    cluster.router.set_fault(3, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let placed = loop {
        if let Some(replica) = cluster.pick(0) {
            match place(replica, Duration::from_secs(1)).await {
                Ok(Ok(placed)) => break placed,
                Ok(Err(OrderError::OutcomeUnknown { .. })) | Err(_) => {}
                Ok(Err(e)) => panic!("{e:?}"),
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = cluster.settled().await;
    assert_eq!(
        numbers_under(&log, "went away"),
        [placed.transaction_number]
    );
}

/// A request that goes away while its command waits for the entry in flight to be applied
/// (queued for the next entry: in neither the log nor an entry yet) leaves it in flight: a
/// retry under its key waits for that command instead of proposing it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_a_command_queued_behind_the_entry_in_flight_executes_it_once() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.led_by(3, Duration::from_secs(20)).await;
    let resting = |cents| new_order(STOCKS[0], Side::Buy, 1, Some(Price::from_cents(cents)));
    let place = |order, key: &str, within| place_within(&leader, order, key, within);
    // Cut off for a moment, well inside the followers' patience: the entry in flight waits.
    cluster.router.isolate(3, &[1, 2, 3], true);
    let first = tokio::spawn(place(resting(1), "first", Duration::from_secs(5)));
    logged(&leader, "first").await;
    for _ in 0..2 {
        let gone = place(resting(2), "queued", Duration::from_millis(20)).await;
        assert!(gone.is_err(), "answered while cut off: {gone:?}");
    }
    cluster.router.isolate(3, &[1, 2, 3], false);
    let placed = match place(resting(2), "queued", Duration::from_secs(5)).await {
        Ok(Ok(placed)) => placed,
        other => panic!("{other:?}"),
    };
    assert!(matches!(first.await.unwrap(), Ok(Ok(_))));
    let log = cluster.settled().await;
    let queued = numbers_under(&log, "queued");
    assert_eq!(queued, [placed.transaction_number], "executed once");
}

/// A market order waits while a book order of its stock is in flight, since that may trade at
/// another price first: held, its key is still being decided; its caller gone, it is dropped
/// unproposed, and a retry under its key runs it once, at the price the book order left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_market_order_waits_for_the_book_order_in_flight_and_its_retry_runs_once() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.led_by(3, Duration::from_secs(20)).await;
    let order = |side, quantity, cents: Option<u64>| {
        new_order(STOCKS[0], side, quantity, cents.map(Price::from_cents))
    };
    let place = |order, key: &str, within| place_within(&leader, order, key, within);
    // A trade at 16.00, and 5 offered at 17.00.
    for (side, quantity, cents, key) in [
        (Side::Sell, 1, 1600, "sell"),
        (Side::Buy, 1, 1600, "buy"),
        (Side::Sell, 5, 1700, "ask"),
    ] {
        let placed = place(
            order(side, quantity, Some(cents)),
            key,
            Duration::from_secs(5),
        )
        .await;
        assert!(matches!(placed, Ok(Ok(_))), "{placed:?}");
    }
    // Cut off for a moment, well inside the followers' patience: the buy at 17.00 waits in
    // flight.
    cluster.router.isolate(3, &[1, 2, 3], true);
    let crossing = tokio::spawn(place(
        order(Side::Buy, 5, Some(1700)),
        "crossing",
        Duration::from_secs(5),
    ));
    logged(&leader, "crossing").await;
    let gone = place(
        order(Side::Buy, 1, None),
        "market",
        Duration::from_millis(20),
    )
    .await;
    assert!(
        gone.is_err(),
        "answered while the book order was in flight: {gone:?}"
    );
    let asked = leader.placed_under("market").await;
    assert!(
        matches!(asked, Err(OrderError::OutcomeUnknown { .. })),
        "{asked:?}"
    );
    cluster.router.isolate(3, &[1, 2, 3], false);
    assert!(matches!(crossing.await.unwrap(), Ok(Ok(_))));
    let placed = match place(order(Side::Buy, 1, None), "market", Duration::from_secs(5)).await {
        Ok(Ok(placed)) => placed,
        other => panic!("{other:?}"),
    };
    let log = cluster.settled().await;
    assert_eq!(numbers_under(&log, "market"), [placed.transaction_number]);
    let market = log.iter().find(|o| o.key.as_deref() == Some("market"));
    assert_eq!(
        market.and_then(|o| o.stamp.quote),
        Some(Price::from_cents(1700)),
        "{market:?}"
    );
}

/// A replica back from a crash is ready only once it has applied through its leader's commit
/// point: ready, it holds no old book (DESIGN). So too when it comes back into a new term,
/// whose leader's first appends carry no commit point of the term yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_back_from_a_crash_is_ready_only_once_caught_up() {
    for new_term in [false, true] {
        back_from_a_crash(new_term).await;
    }
}

async fn back_from_a_crash(new_term: bool) {
    let cluster = Cluster::start(3).await;
    let leader = cluster.led_by(3, Duration::from_secs(20)).await;
    cluster.stop_replica(1).await;
    let orders = (1..=150).map(|n| {
        let resting = new_order(STOCKS[0], Side::Buy, 1, Some(Price::from_cents(n)));
        let leader = leader.clone();
        async move {
            leader
                .place(resting, Caller::new(Some(format!("missed-{n}")), None))
                .await
        }
    });
    for placed in futures::future::join_all(orders).await {
        placed.unwrap();
    }
    let target = leader.health().applied;
    if new_term {
        // Replica 2 is elected only with 1's vote: 1 hears the new term's first appends.
        cluster.stop_replica(3).await;
    }
    cluster.start_replica(1).await;
    let running = cluster.running();
    let (_, back) = running.iter().find(|(id, _)| *id == 1).expect("replica 1");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let health = back.health();
        if health.ready {
            assert!(
                health.applied >= target,
                "ready at {} of {target} (new term: {new_term})",
                health.applied
            );
            break;
        }
        assert!(!back.is_ready());
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A replica whose consensus core stops on a fault (here a snapshot that does not install)
/// says so: it is not ready, and the fault is reported, which the service exits on to be
/// restarted (docs/OPERATIONS.md). It kept its last leader, which read alone looked healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_consensus_stopped_on_a_fault_is_not_ready() {
    use openraft::error::Fatal;
    use openraft::raft::InstallSnapshotRequest;
    use openraft::SnapshotMeta;

    let cluster = Cluster::start(3).await;
    let leader = cluster.led_by(3, Duration::from_secs(20)).await;
    let running = cluster.running();
    let (_, follower) = running.iter().find(|(id, _)| *id == 1).expect("replica 1");
    // Ready once it applied the new leader's first commit point, which reaches it with the
    // next append after the leader's first round.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !follower.health().ready {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let fault = tokio::spawn({
        let follower = follower.clone();
        async move { follower.consensus_fault().await }
    });
    let vote = leader.raft().metrics().borrow().vote;
    let term = leader.health().term;
    let garbage = InstallSnapshotRequest {
        vote,
        meta: SnapshotMeta {
            last_log_id: Some(crate::consensus::log_id(term, 1_000_000)),
            snapshot_id: "garbage".into(),
            ..Default::default()
        },
        offset: 0,
        data: b"not a snapshot".to_vec(),
        done: true,
    };
    let _ = follower.raft().install_snapshot(garbage).await;
    let fault = tokio::time::timeout(Duration::from_secs(10), fault)
        .await
        .expect("the core stopped")
        .unwrap();
    assert!(matches!(fault, Some(Fatal::StorageError(_))), "{fault:?}");
    assert!(!follower.health().ready);
    // A replica shut down is no fault.
    let (_, other) = running.iter().find(|(id, _)| *id == 2).expect("replica 2");
    let stopped = tokio::spawn({
        let other = other.clone();
        async move { other.consensus_fault().await }
    });
    cluster.stop_replica(2).await;
    assert!(stopped.await.unwrap().is_none());
}

/// The seeds' preference, as a preference (issue 19, item 1): the highest-id replica, back
/// from a crash, is handed the leadership once it has kept up with the leader, at the cost of
/// one election; orders placed all along are answered truly and executed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_highest_replica_back_from_a_crash_is_handed_the_leadership() {
    let cluster = Cluster::start(3).await;
    let buy = |quantity: u32| new_order(STOCKS[0], Side::Buy, quantity, None);
    cluster.led_by(3, Duration::from_secs(20)).await;
    cluster.stop_replica(3).await;
    for quantity in 1..=5 {
        cluster.clone().client(buy(quantity), 0).await;
    }
    let (interim, interim_term) = {
        let running = cluster.running();
        let (id, leader) = running
            .iter()
            .find(|(_, replica)| replica.health().leading)
            .expect("a leader once the orders went through");
        (*id, leader.health().term)
    };
    assert!(interim < 3);

    cluster.start_replica(3).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut quantity = 5;
    let leader = loop {
        quantity += 1;
        cluster.clone().client(buy(quantity), quantity.into()).await;
        let running = cluster.running();
        if let Some((_, leader)) = running
            .iter()
            .find(|(id, replica)| *id == 3 && replica.health().leading)
        {
            break leader.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "never handed over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(leader.health().term, interim_term + 1, "one election");
    let old = cluster.running().into_iter().find(|(id, _)| *id == interim);
    let (_, old) = old.expect("the interim leader runs");
    assert_eq!(old.metrics().handovers.get(), 1);
    assert!(!old.health().leading);
    let log = cluster.settled().await;
    check(&cluster, &log);
}
