//! Finding the order leader. The replicas elect their leader among themselves; a frontend
//! only asks them, and follows the replica that says it leads (and has taken over) in the
//! highest term any live replica knows. It never changes a term, so any number of frontends
//! leave the group's terms alone. One search at a time; a request that saw the leader fail
//! searches again only if nobody has done so since. It starts from the replicas it is
//! configured with and learns the others from the group's membership (`GET /members`) when a
//! search names a replica it does not know or finds no leader: a replica that joined later
//! (and, having the highest id, is handed the leadership) is found too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use prometheus_client::metrics::counter::Counter;
use stocknet_common::client::call;
use stocknet_common::paths;
use stocknet_common::wire::{Health, Members, Peer, LEADER_HINT, LEADER_HINT_TERM};
use stocknet_common::{BaseUrl, RemoteError};

/// How long the first search waits for the group to have a leader.
const FIRST_SEARCH_WAIT: Duration = Duration::from_secs(30);

/// A replica that does not answer its health check within this is passed over.
const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);

/// How soon a search asks a replica that answered again, while another has yet to answer (a
/// replica that hangs, or a killed one whose port is held open and never answers): an election
/// that ends meanwhile is found without waiting that one out.
const ASK_AGAIN_AFTER: Duration = Duration::from_millis(50);

/// How often a frontend asks the leader it follows whether it still leads: the group changes
/// its leader by itself (a handover to a higher id, an election), and a frontend that has no
/// call to make would otherwise keep following the old one until its next call failed.
const LEADER_CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub id: u32,
    pub url: BaseUrl,
    pub term: u64,
}

pub struct LeaderDiscovery {
    /// Replicas by descending id, as `GET /cluster` lists them: those configured, and those
    /// learned from the group's membership.
    replicas: RwLock<Vec<Peer>>,
    /// The leader followed; streams that poll it watch for a change.
    current: tokio::sync::watch::Sender<Option<Leader>>,
    /// The searches for a leader that failed ([`Self::replace`]).
    searches: OneAtATime,
    /// The looks for the successor of a leader that writes wait on ([`Self::newer_than`]),
    /// apart: a search may be waiting out that leader's health check.
    hedges: OneAtATime,
    http: reqwest::Client,
    leader_changes: Counter,
}

impl LeaderDiscovery {
    pub fn new(mut replicas: Vec<Peer>, http: reqwest::Client) -> Self {
        replicas.sort_by_key(|replica| std::cmp::Reverse(replica.id));
        Self {
            replicas: RwLock::new(replicas),
            current: tokio::sync::watch::Sender::new(None),
            searches: OneAtATime::default(),
            hedges: OneAtATime::default(),
            http,
            leader_changes: Default::default(),
        }
    }

    /// The order replicas, by descending id.
    pub fn replicas(&self) -> Vec<Peer> {
        self.replicas
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn knows(&self, id: u32) -> Option<Peer> {
        self.replicas().into_iter().find(|replica| replica.id == id)
    }

    /// Adds the members the group names that this frontend does not know yet, from the first
    /// replica whose `GET /members` names one; whether it learned any. All are asked at once,
    /// and one that hangs, often the leader just lost, is not waited out: once a majority has
    /// answered with nothing new, there is nothing (a member added is in the log of a majority
    /// of the group before it counts). One answer with nothing new is not the last word: that
    /// replica may be behind the group.
    async fn learn_members(&self) -> bool {
        let mut asks: FuturesUnordered<_> = self
            .replicas()
            .into_iter()
            .filter_map(|replica| paths::MEMBERS.url(&replica.url, &[]).ok())
            .map(|url| call::<Members>(self.http.get(url).timeout(HEALTH_TIMEOUT)))
            .collect();
        let majority = asks.len() / 2 + 1;
        let mut nothing_new = 0;
        while let Some(answer) = asks.next().await {
            match answer {
                Ok(members) if self.add_members(&members) => return true,
                Ok(_) => nothing_new += 1,
                Err(_) => {}
            }
            if nothing_new >= majority {
                break;
            }
        }
        false
    }

    fn add_members(&self, members: &Members) -> bool {
        let mut replicas = self.replicas.write().unwrap_or_else(|e| e.into_inner());
        let mut learned = false;
        for (&id, url) in &members.urls {
            if replicas.iter().any(|replica| replica.id == id) {
                continue;
            }
            match url.parse() {
                Ok(url) => {
                    tracing::info!(replica = id, %url, "learned an order replica from the group");
                    replicas.push(Peer { id, url });
                    learned = true;
                }
                Err(e) => tracing::warn!(replica = id, "the group names an unusable URL: {e}"),
            }
        }
        replicas.sort_by_key(|replica| std::cmp::Reverse(replica.id));
        learned
    }

    pub fn current(&self) -> Option<Leader> {
        self.current.borrow().clone()
    }

    /// Resolves once this frontend follows a leader other than `leader` (following none, after
    /// a search that found none mid-election, is no reason to drop what `leader` is asked).
    pub async fn follows_another(&self, leader: &Leader) {
        let mut followed = self.current.subscribe();
        // (The sender lives as long as `self`.)
        let _ = followed
            .wait_for(|current| current.as_ref().is_some_and(|c| c != leader))
            .await;
    }

    /// How many times this frontend started following another leader (the metric itself:
    /// clones share it).
    pub fn leader_changes(&self) -> &Counter {
        &self.leader_changes
    }

    /// The current leader, searching for one if there is none.
    pub async fn leader(&self) -> Option<Leader> {
        match self.current() {
            Some(leader) => Some(leader),
            None => self.replace(None, None).await,
        }
    }

    /// Searches for the leader again because `failed` did not answer as one, unless another
    /// request already did. The replica `hint` names (from a "not the leader" answer, see
    /// [`hint`]) is asked first, and followed if it leads the term named; else every replica.
    pub async fn replace(
        &self,
        failed: Option<&Leader>,
        hint: Option<(u32, u64)>,
    ) -> Option<Leader> {
        self.searches
            .look(|| async {
                let current = self.current();
                if current.is_some() && current.as_ref() != failed {
                    // (No search: a request queued behind this one for another failed leader
                    // searches itself.)
                    return Looked::Not(current);
                }
                // A hint naming a replica this frontend does not know: the group has grown.
                if hint.is_some_and(|(id, _)| self.knows(id).is_none()) {
                    self.learn_members().await;
                }
                let mut found = match self.hinted(hint).await {
                    Some(leader) => Some(leader),
                    None => self.search(failed).await,
                };
                if found.is_none() && self.learn_members().await {
                    found = self.search(failed).await;
                }
                // (Unless a waiting write found the successor meanwhile: see `newer_than`.)
                self.follow_after(&current, found);
                Looked::Found(self.current())
            })
            .await;
        // (What this search or the one waited for found, or a waiting write since.)
        self.current()
    }

    /// The replica `hint` names, if it says it leads (and has taken over) the term named.
    async fn hinted(&self, hint: Option<(u32, u64)>) -> Option<Leader> {
        let (id, term) = hint?;
        let replica = self.knows(id)?;
        let health = self.health(&replica).await?;
        (health.leading && health.term == term).then(|| leader(&replica, term))
    }

    async fn health(&self, replica: &Peer) -> Option<Health> {
        let url = paths::HEALTH.url(&replica.url, &[]).ok()?;
        let health = call::<Health>(self.http.get(url).timeout(HEALTH_TIMEOUT))
            .await
            .ok()?;
        (health.node_id == replica.id).then_some(health)
    }

    /// A leader other than `current`, in a newer term, if the replicas name one now: the
    /// group replaced a leader that stopped answering (a hung one) while a call to it waits.
    /// One waiting write searches at a time; those that waited for it take what it found (a
    /// thousand writes held by a hung leader must not each ask every replica four times a
    /// second). It takes no turn behind [`Self::replace`], whose search may be waiting out
    /// that hung leader's health check.
    pub async fn newer_than(&self, current: &Leader) -> Option<Leader> {
        let found = self
            .hedges
            .look(|| async {
                // (Not asking the leader the call waits on: it may hang, and its health
                // check's deadline would hold every waiting write's look for its successor.)
                let found = self.search_among(Some(current), Some(current.id)).await;
                if let Some(found) = found.as_ref().filter(|f| f.term > current.term) {
                    // Followed unless this frontend already follows a leader of its term or
                    // newer (following none, after a search mid-election found none, it
                    // follows this one).
                    self.follow_if(Some(found.clone()), |followed| {
                        followed.as_ref().is_none_or(|f| f.term < found.term)
                    });
                }
                Looked::Found(found)
            })
            .await;
        found.filter(|leader| leader.term > current.term)
    }

    /// Makes `found` the leader this frontend follows, if it still follows `seen` (what the
    /// search that found it started from); counted and logged when it changes.
    fn follow_after(&self, seen: &Option<Leader>, found: Option<Leader>) {
        self.follow_if(found, |followed| followed == seen);
    }

    /// Makes `found` the leader this frontend follows if `wanted` says so of the one it
    /// follows; counted and logged when it changes.
    fn follow_if(&self, found: Option<Leader>, wanted: impl Fn(&Option<Leader>) -> bool) {
        self.current.send_if_modified(|current| {
            if *current == found || !wanted(current) {
                return false;
            }
            match &found {
                Some(leader) => {
                    self.leader_changes.inc();
                    tracing::info!(
                        leader = leader.id,
                        term = leader.term,
                        "following the order leader"
                    );
                }
                None => tracing::warn!("no order replica leads now"),
            }
            *current = found;
            true
        });
    }

    /// The replica that says it leads (and has taken over) in the highest term the replicas
    /// report, unless it is the leader that just failed this frontend in that same term. The
    /// answer comes as soon as a majority has answered and one of them leads a term none of
    /// them is past, so a hung replica's health check is not waited for; otherwise once every
    /// replica answered or timed out. Those that answered are asked again meanwhile, every
    /// [`ASK_AGAIN_AFTER`]: a leader they elect while a hung one is waited for is found then.
    async fn search(&self, failed: Option<&Leader>) -> Option<Leader> {
        self.search_among(failed, None).await
    }

    /// [`Self::search`], not asking the replica `skipped`.
    async fn search_among(&self, failed: Option<&Leader>, skipped: Option<u32>) -> Option<Leader> {
        let replicas = self.replicas();
        let majority = replicas.len() / 2 + 1;
        let ask = |replica, wait| async move {
            tokio::time::sleep(wait).await;
            (replica, self.health(replica).await)
        };
        let asked: Vec<&Peer> = replicas
            .iter()
            .filter(|replica| Some(replica.id) != skipped)
            .collect();
        let mut unanswered: Vec<u32> = asked.iter().map(|replica| replica.id).collect();
        let mut checks: FuturesUnordered<_> = asked
            .into_iter()
            .map(|replica| ask(replica, Duration::ZERO))
            .collect();
        // Each replica's latest answer.
        let mut answered: Vec<(&Peer, Health)> = Vec::new();
        while let Some((replica, health)) = checks.next().await {
            unanswered.retain(|&id| id != replica.id);
            // (An answer asked again and not given keeps the one before.)
            if let Some(health) = health {
                answered.retain(|(other, _)| other.id != replica.id);
                answered.push((replica, health));
                if !unanswered.is_empty() {
                    checks.push(ask(replica, ASK_AGAIN_AFTER));
                }
            }
            if answered.len() >= majority {
                let highest = answered.iter().map(|(_, h)| h.term).max();
                let leading = answered.iter().find(|(replica, h)| {
                    h.leading
                        && Some(h.term) == highest
                        && !failed.is_some_and(|f| f.id == replica.id && f.term == h.term)
                });
                if let Some((replica, health)) = leading {
                    return Some(leader(replica, health.term));
                }
            }
            if unanswered.is_empty() {
                break;
            }
        }
        None
    }

    /// Asks the leader this frontend follows whether it still leads its term; if it does not
    /// (or does not answer), searches again, first at the replica it names; following none,
    /// searches. Whether the leader changed (or one was found).
    pub async fn check_leader(&self) -> bool {
        // Following none (a search found no leader, mid-election): look again, rather than
        // wait for a request to.
        let Some(current) = self.current() else {
            return self.leader().await.is_some();
        };
        let followed = Peer {
            id: current.id,
            url: current.url.clone(),
        };
        let health = self.health(&followed).await;
        if health
            .as_ref()
            .is_some_and(|h| h.leading && h.term == current.term)
        {
            return false;
        }
        let hint = health.and_then(|h| Some((h.leader?, h.term)));
        let found = self.replace(Some(&current), hint).await;
        found.is_some_and(|leader| leader != current)
    }

    /// Checks the leader every [`LEADER_CHECK_EVERY`] (see [`Self::check_leader`]). Runs
    /// until aborted.
    pub async fn watch_leader(&self) {
        let mut ticks = tokio::time::interval(LEADER_CHECK_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.check_leader().await;
        }
    }

    /// Finds the leader as soon as the group has one rather than at the first order, so that
    /// `GET /cluster` names it from the start. Gives up after [`FIRST_SEARCH_WAIT`]: the first
    /// request then searches again.
    pub async fn find_early(&self) {
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        while self.current().is_none() && started.elapsed() < FIRST_SEARCH_WAIT {
            if self.leader().await.is_some() {
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

/// One look at a time (for a leader, asking every replica): a caller that waited while a
/// look ran takes what it found, whatever that was, instead of looking again (with replicas
/// that hang, each look takes a while, and a thousand waiting requests would each ask every
/// replica).
#[derive(Default)]
struct OneAtATime {
    /// What the last look found.
    found: tokio::sync::Mutex<Option<Leader>>,
    /// Looks finished.
    looks: AtomicU64,
}

/// What one turn of [`OneAtATime::look`] did.
enum Looked {
    /// Asked the replicas: the callers that waited take this.
    Found(Option<Leader>),
    /// Had no need to ask: this, for its caller only.
    Not(Option<Leader>),
}

impl OneAtATime {
    /// What `look` finds, or what the look that ended while this caller waited found.
    async fn look<F>(&self, look: impl FnOnce() -> F) -> Option<Leader>
    where
        F: std::future::Future<Output = Looked>,
    {
        let looked_before = self.looks.load(Ordering::Acquire);
        let mut found = self.found.lock().await;
        if self.looks.load(Ordering::Acquire) != looked_before {
            return found.clone();
        }
        match look().await {
            Looked::Found(leader) => {
                *found = leader.clone();
                self.looks.fetch_add(1, Ordering::Release);
                leader
            }
            Looked::Not(leader) => leader,
        }
    }
}

/// `replica` as the leader of `term`.
fn leader(replica: &Peer, term: u64) -> Leader {
    Leader {
        id: replica.id,
        url: replica.url.clone(),
        term,
    }
}

/// The leader a replica's "not the leader" answer names, and its term (see
/// [`LEADER_HINT`]).
pub fn hint(error: &RemoteError) -> Option<(u32, u64)> {
    let RemoteError::Api(error) = error else {
        return None;
    };
    let id = error.extra.get(LEADER_HINT)?.as_u64()?;
    let term = error.extra.get(LEADER_HINT_TERM)?.as_u64()?;
    Some((u32::try_from(id).ok()?, term))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::routing::get;
    use stocknet_common::ApiError;

    use super::*;

    /// A replica that answers its health check with `health` and counts the checks.
    async fn replica(health: Health) -> (Peer, Arc<AtomicUsize>) {
        serve(any_port().await, health, None).await
    }

    /// A replica on `listener` that answers its health check with `health` and, if given,
    /// `GET /members` with `members`.
    async fn serve(
        listener: tokio::net::TcpListener,
        health: Health,
        members: Option<Members>,
    ) -> (Peer, Arc<AtomicUsize>) {
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = asked.clone();
        let id = health.node_id;
        let mut app = axum::Router::new().route(
            "/health",
            get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                let health = health.clone();
                async move { stocknet_common::data(health) }
            }),
        );
        if let Some(members) = members {
            app = app.route(
                "/members",
                get(move || {
                    let members = members.clone();
                    async move { stocknet_common::data(members) }
                }),
            );
        }
        (answering(id, listener, app), asked)
    }

    /// Replica `id`: `app` on `listener`.
    fn answering(id: u32, listener: tokio::net::TcpListener, app: axum::Router) -> Peer {
        let url = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Peer { id, url }
    }

    /// The group's membership with voters `ids` (each at a URL of its own), led by replica 2.
    fn members_of(ids: &[u32]) -> Members {
        Members {
            configs: vec![ids.to_vec()],
            learners: Vec::new(),
            urls: ids
                .iter()
                .map(|&id| (id, format!("http://127.0.0.1:{}", 9 + id)))
                .collect(),
            entry: None,
            leader: Some(2),
            committed: true,
            behind: BTreeMap::new(),
        }
    }

    async fn any_port() -> tokio::net::TcpListener {
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
    }

    fn health(node_id: u32, term: u64, leading: bool) -> Health {
        Health {
            node_id,
            term,
            leader: Some(2),
            ready: true,
            last_transaction: 0,
            applied: 0,
            leading,
        }
    }

    #[tokio::test]
    async fn a_hint_is_followed_when_the_named_replica_leads_that_term_else_all_are_asked() {
        let mut replicas = Vec::new();
        let mut asked = Vec::new();
        for (id, leading) in [(1, false), (2, true), (3, false)] {
            let (peer, count) = replica(health(id, 7, leading)).await;
            replicas.push(peer);
            asked.push(count);
        }
        let http = stocknet_common::http_client(Duration::from_secs(2));
        let asked_total = || {
            asked
                .iter()
                .map(|a| a.load(Ordering::SeqCst))
                .sum::<usize>()
        };

        let discovery = LeaderDiscovery::new(replicas.clone(), http.clone());
        let found = discovery
            .replace(None, Some((2, 7)))
            .await
            .expect("a leader");
        assert_eq!((found.id, found.term), (2, 7));
        assert_eq!(asked_total(), 1, "only the hinted replica is asked");

        // A hint of another term is checked, then the replicas are searched (the answer
        // comes once a majority answered).
        let discovery = LeaderDiscovery::new(replicas, http);
        let found = discovery
            .replace(None, Some((2, 6)))
            .await
            .expect("a leader");
        assert_eq!((found.id, found.term), (2, 7));
        assert!(asked_total() >= 1 + 1 + 2, "{} checks", asked_total());
    }

    /// A replica whose health is what `health` holds when it is asked; it counts the checks
    /// it answered.
    async fn changing(health: Arc<std::sync::Mutex<Health>>) -> (Peer, Arc<AtomicUsize>) {
        let id = health.lock().unwrap().node_id;
        let answered = Arc::new(AtomicUsize::new(0));
        let counter = answered.clone();
        let app = axum::Router::new().route(
            "/health",
            get(move || {
                let now = health.lock().unwrap().clone();
                counter.fetch_add(1, Ordering::SeqCst);
                async move { stocknet_common::data(now) }
            }),
        );
        (answering(id, any_port().await, app), answered)
    }

    #[tokio::test]
    async fn a_frontend_follows_a_new_leader_without_a_call_failing() {
        let healths: Vec<Arc<std::sync::Mutex<Health>>> = (1..=3)
            .map(|id| Arc::new(std::sync::Mutex::new(health(id, 7, id == 2))))
            .collect();
        let mut replicas = Vec::new();
        for health in &healths {
            replicas.push(changing(health.clone()).await.0);
        }
        let discovery = LeaderDiscovery::new(
            replicas,
            stocknet_common::http_client(Duration::from_secs(2)),
        );
        assert_eq!(discovery.leader().await.map(|l| l.id), Some(2));
        assert!(!discovery.check_leader().await, "2 still leads");

        // The group hands the leadership to 3, in term 8.
        for (id, health) in (1..).zip(&healths) {
            *health.lock().unwrap() = Health {
                leader: Some(3),
                ..self::health(id, 8, id == 3)
            };
        }
        assert!(discovery.check_leader().await);
        let leader = discovery.current().expect("a leader");
        assert_eq!((leader.id, leader.term), (3, 8));

        // Mid-election nobody leads: the search finds none, and the next check finds the
        // leader elected meanwhile, with no request asking.
        for (id, health) in (1..).zip(&healths) {
            *health.lock().unwrap() = self::health(id, 9, false);
        }
        assert!(!discovery.check_leader().await);
        assert_eq!(discovery.current(), None);
        *healths[0].lock().unwrap() = self::health(1, 9, true);
        assert!(discovery.check_leader().await);
        assert_eq!(discovery.current().map(|l| (l.id, l.term)), Some((1, 9)));
    }

    /// Replicas 1–3 are configured; 5 joined the group later and leads it.
    async fn grown_group() -> (Vec<Peer>, Peer) {
        let listener = any_port().await;
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mut urls = BTreeMap::from([(5, url)]);
        let mut founders = Vec::new();
        for id in 1..=3 {
            let listener = any_port().await;
            urls.insert(id, format!("http://{}", listener.local_addr().unwrap()));
            founders.push((id, listener));
        }
        let members = Members {
            configs: vec![vec![1, 2, 3, 5]],
            learners: vec![],
            urls,
            entry: Some(9),
            leader: Some(5),
            committed: true,
            behind: BTreeMap::new(),
        };
        let mut configured = Vec::new();
        for (id, listener) in founders {
            let health = Health {
                leader: Some(5),
                ..health(id, 7, false)
            };
            configured.push(serve(listener, health, Some(members.clone())).await.0);
        }
        let (joined, _) = serve(listener, health(5, 7, true), Some(members)).await;
        (configured, joined)
    }

    #[test]
    fn a_member_the_group_names_by_an_unusable_url_is_not_learned() {
        let http = stocknet_common::http_client(Duration::from_secs(2));
        let discovery = LeaderDiscovery::new(Vec::new(), http);
        let members = Members {
            configs: vec![vec![1, 2]],
            learners: vec![],
            urls: BTreeMap::from([
                (1, "http://127.0.0.1:9/".to_owned()),
                (2, "127.0.0.1:10".to_owned()),
            ]),
            entry: None,
            leader: None,
            committed: true,
            behind: BTreeMap::new(),
        };
        assert!(discovery.add_members(&members));
        let learned: Vec<(u32, String)> = discovery
            .replicas()
            .iter()
            .map(|r| (r.id, r.url.to_string()))
            .collect();
        assert_eq!(learned, [(1, "http://127.0.0.1:9".to_owned())]);
    }

    #[tokio::test]
    async fn a_leader_that_joined_later_is_learned_from_the_membership() {
        let (configured, joined) = grown_group().await;
        let http = stocknet_common::http_client(Duration::from_secs(2));

        // No configured replica leads: the search learns the members and asks again.
        let discovery = LeaderDiscovery::new(configured.clone(), http.clone());
        let found = discovery.replace(None, None).await.expect("a leader");
        assert_eq!((found.id, found.url.as_str()), (5, joined.url.as_str()));
        let ids: Vec<u32> = discovery.replicas().iter().map(|r| r.id).collect();
        assert_eq!(ids, [5, 3, 2, 1]);

        // A hint that names a replica this frontend does not know.
        let discovery = LeaderDiscovery::new(configured, http);
        let found = discovery
            .replace(None, Some((5, 7)))
            .await
            .expect("a leader");
        assert_eq!(found.id, 5);
    }

    #[test]
    fn a_hint_is_read_from_a_not_the_leader_answer_only() {
        let not_leader = ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "Not the leader",
        )
        .with(LEADER_HINT, 3)
        .with(LEADER_HINT_TERM, 9);
        assert_eq!(hint(&RemoteError::Api(not_leader)), Some((3, 9)));
        let plain = ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "Not the leader",
        );
        assert_eq!(hint(&RemoteError::Api(plain)), None);
    }

    /// A replica that takes connections and never answers its health check or `GET /members`
    /// (stopped, as by SIGSTOP, its socket still open), counting the checks.
    async fn hung(id: u32) -> (Peer, Arc<AtomicUsize>) {
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = asked.clone();
        let app = axum::Router::new()
            .route(
                "/health",
                get(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>()
                }),
            )
            .route("/members", get(std::future::pending::<()>));
        (answering(id, any_port().await, app), asked)
    }

    /// A frontend's discovery of `one`, `two` and a replica 3 that hangs, and 3 as the leader
    /// of term 7 that a write waits on.
    async fn beside_a_hung_leader(one: Peer, two: Peer) -> (LeaderDiscovery, Leader) {
        let (three, _) = hung(3).await;
        let held = leader(&three, 7);
        let http = stocknet_common::http_client(Duration::from_secs(2));
        (LeaderDiscovery::new(vec![one, two, three], http), held)
    }

    /// Writes held by a hung leader look for its successor one at a time, the others taking
    /// what that one found: two hundred of them for two seconds mid-election (nobody leads
    /// yet) cost the live replicas a handful of health checks, not one per write each round.
    #[tokio::test]
    async fn writes_held_by_a_hung_leader_share_the_search_for_its_successor() {
        let (one, one_asked) = replica(health(1, 7, false)).await;
        let (two, two_asked) = replica(health(2, 7, false)).await;
        let (discovery, held) = beside_a_hung_leader(one, two).await;
        discovery.follow_after(&None, Some(held.clone()));
        let hedge = || async {
            loop {
                if discovery.newer_than(&held).await.is_some() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        };
        let writes = futures::future::join_all((0..200).map(|_| hedge()));
        assert!(
            tokio::time::timeout(Duration::from_secs(2), writes)
                .await
                .is_err(),
            "nobody leads: no write found a successor"
        );
        for asked in [one_asked, two_asked] {
            let checks = asked.load(Ordering::SeqCst);
            assert!((1..=20).contains(&checks), "{checks} health checks");
        }
    }

    /// Replicas 1 and 2, whose health is what `healths` holds (at first: term 7, nobody
    /// leads), beside a replica 3 that hangs, the leader of term 7 that failed a call; and a
    /// search after that failure, under way.
    struct SearchBesideAHungLeader {
        healths: Vec<Arc<std::sync::Mutex<Health>>>,
        discovery: Arc<LeaderDiscovery>,
        failed: Leader,
        searching: tokio::task::JoinHandle<Option<Leader>>,
    }

    impl SearchBesideAHungLeader {
        /// Starts the search (from following 3, when `following`) and returns once it has its
        /// answers from 1 and 2 and waits for 3's.
        async fn start(following: bool) -> Self {
            let healths: Vec<Arc<std::sync::Mutex<Health>>> = (1..=2)
                .map(|id| Arc::new(std::sync::Mutex::new(health(id, 7, false))))
                .collect();
            let mut replicas = Vec::new();
            let mut answered = Vec::new();
            for health in &healths {
                let (replica, checks) = changing(health.clone()).await;
                replicas.push(replica);
                answered.push(checks);
            }
            let (three, three_asked) = hung(3).await;
            let failed = leader(&three, 7);
            replicas.push(three);
            let http = stocknet_common::http_client(Duration::from_secs(2));
            let discovery = Arc::new(LeaderDiscovery::new(replicas, http));
            if following {
                discovery.follow_after(&None, Some(failed.clone()));
            }
            let searching = {
                let (discovery, failed) = (discovery.clone(), failed.clone());
                tokio::spawn(async move { discovery.replace(Some(&failed), None).await })
            };
            let asked = |checks: &AtomicUsize| checks.load(Ordering::SeqCst) > 0;
            let all_asked = async {
                while !(asked(&three_asked) && answered.iter().all(|checks| asked(checks))) {
                    tokio::task::yield_now().await;
                }
            };
            tokio::time::timeout(Duration::from_secs(10), all_asked)
                .await
                .expect("the search asks every replica");
            Self {
                healths,
                discovery,
                failed,
                searching,
            }
        }

        /// Replica 2 is elected, in term 8.
        fn elect_two(&self) {
            *self.healths[1].lock().unwrap() = health(2, 8, true);
        }
    }

    /// A write's look for the hung leader's successor does not wait for a search under way
    /// (here one waiting out the hung leader's health check): it follows the successor, and the
    /// search, asking the others again meanwhile, finds the same one and leaves it followed.
    #[tokio::test]
    async fn a_successor_found_by_a_waiting_write_is_followed_while_a_search_runs() {
        let search = SearchBesideAHungLeader::start(true).await;
        search.elect_two();
        let discovery = &search.discovery;
        let found = discovery
            .newer_than(&search.failed)
            .await
            .expect("a successor");
        assert_eq!((found.id, found.term), (2, 8));
        assert_eq!(discovery.current(), Some(found.clone()));
        assert_eq!(search.searching.await.unwrap(), Some(found.clone()));
        assert_eq!(discovery.current(), Some(found));
    }

    /// A replica behind the group answers `GET /members` first, without the member the group
    /// has added since; the frontend learns it from the next answer, instead of giving up.
    #[tokio::test]
    async fn members_are_learned_past_a_replica_that_answers_first_without_them() {
        // Replica 2 answers once replica 3, behind, has answered.
        let (answered, behind_answered) = tokio::sync::watch::channel(false);
        let behind = members_of(&[2, 3]);
        let three = answering(
            3,
            any_port().await,
            axum::Router::new().route(
                "/members",
                get(move || {
                    let (behind, answered) = (behind.clone(), answered.clone());
                    async move {
                        let answer = stocknet_common::data(behind);
                        answered.send_replace(true);
                        answer
                    }
                }),
            ),
        );
        let grown = members_of(&[2, 3, 4]);
        let two = answering(
            2,
            any_port().await,
            axum::Router::new().route(
                "/members",
                get(move || {
                    let (grown, mut behind_answered) = (grown.clone(), behind_answered.clone());
                    async move {
                        let _ = behind_answered.wait_for(|answered| *answered).await;
                        stocknet_common::data(grown)
                    }
                }),
            ),
        );
        let http = stocknet_common::http_client(Duration::from_secs(2));
        let discovery = LeaderDiscovery::new(vec![three, two], http);
        assert!(discovery.learn_members().await, "learned no member");
        assert!(discovery.knows(4).is_some());
    }

    /// With the leader hung and the others answering with no member this frontend does not
    /// know, the look for members ends without waiting the hung one out.
    #[tokio::test]
    async fn a_majority_with_nothing_new_ends_the_look_for_members_beside_one_that_hangs() {
        let (three, _) = hung(3).await;
        let mut known = vec![three];
        for id in [2, 1] {
            let members = Some(members_of(&[1, 2, 3]));
            known.push(
                serve(any_port().await, health(id, 7, false), members)
                    .await
                    .0,
            );
        }
        let http = stocknet_common::http_client(Duration::from_secs(2));
        let discovery = LeaderDiscovery::new(known, http);
        let learned = tokio::time::timeout(HEALTH_TIMEOUT / 2, discovery.learn_members()).await;
        assert_eq!(learned, Ok(false), "waited for the replica that hangs");
    }

    /// The group's members are learned from the first replica that answers, not after a
    /// replica that hangs (listed first: the highest id) has timed out.
    #[tokio::test]
    async fn members_are_learned_from_a_replica_that_answers_beside_one_that_hangs() {
        let (three, _) = hung(3).await;
        let members = Some(members_of(&[2, 3, 4]));
        let (two, _) = serve(any_port().await, health(2, 7, true), members).await;
        let http = stocknet_common::http_client(Duration::from_secs(2));
        let discovery = LeaderDiscovery::new(vec![three, two], http);
        let learned = tokio::time::timeout(HEALTH_TIMEOUT / 2, discovery.learn_members()).await;
        assert_eq!(learned, Ok(true), "waited for the replica that hangs");
        assert!(discovery.knows(4).is_some());
    }

    /// A search after a failed call, while the failed leader's port takes connections and
    /// never answers (hung, or killed with its socket held open), finds the leader the others
    /// elect meanwhile, before that replica's health check times out: those that answered are
    /// asked again.
    #[tokio::test]
    async fn a_search_finds_a_leader_elected_while_a_hung_replica_is_waited_for() {
        let search = SearchBesideAHungLeader::start(false).await;
        search.elect_two();
        let found = search.searching.await.unwrap().expect("the new leader");
        assert_eq!((found.id, found.term), (2, 8));
    }

    /// A successor a waiting write finds is followed also when this frontend follows nobody (a
    /// search mid-election found no leader): the requests that search next start from it.
    #[tokio::test]
    async fn a_successor_found_while_following_nobody_is_followed() {
        let (one, _) = replica(health(1, 8, false)).await;
        let (two, _) = replica(health(2, 8, true)).await;
        let (discovery, held) = beside_a_hung_leader(one, two).await;
        assert_eq!(discovery.current(), None);
        let found = discovery.newer_than(&held).await.expect("a successor");
        assert_eq!((found.id, found.term), (2, 8));
        assert_eq!(discovery.current(), Some(found));
    }

    /// A turn that had no need to look (its leader had been replaced already) is no look for
    /// the caller queued behind it, which failed on another leader: that one looks itself.
    #[tokio::test]
    async fn a_turn_that_did_not_look_leaves_the_next_caller_its_own_look() {
        let one = Peer {
            id: 1,
            url: "http://127.0.0.1:9".parse().unwrap(),
        };
        let found = leader(&one, 7);
        let looks = Arc::new(OneAtATime::default());
        let (started, turn_started) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let looks = looks.clone();
            tokio::spawn(async move {
                looks
                    .look(|| async move {
                        let _ = started.send(());
                        let _ = released.await;
                        Looked::Not(None)
                    })
                    .await
            })
        };
        turn_started.await.unwrap();
        // Queued behind the first turn, then the first turn ends.
        let second = looks.look(|| async { Looked::Found(Some(found.clone())) });
        let (looked, ()) = tokio::join!(second, async {
            tokio::task::yield_now().await;
            release.send(()).unwrap();
        });
        assert_eq!(first.await.unwrap(), None);
        assert_eq!(looked, Some(found));
    }

    /// Requests that wait while a search is under way take what it found, even nothing,
    /// instead of each searching again: with two replicas hung, every search waits for their
    /// health checks to time out, and the requests would wait for one search each.
    #[tokio::test]
    async fn waiting_requests_share_the_search_under_way() {
        let (one, one_asked) = hung(1).await;
        let (two, two_asked) = hung(2).await;
        let (three, _) = replica(health(3, 7, false)).await;
        let http = stocknet_common::http_client(Duration::from_secs(2));
        let discovery = LeaderDiscovery::new(vec![one, two, three], http);
        let found = futures::future::join_all((0..5).map(|_| discovery.leader())).await;
        assert!(found.iter().all(Option::is_none), "{found:?}");
        for asked in [one_asked, two_asked] {
            assert_eq!(asked.load(Ordering::SeqCst), 1, "one search for all five");
        }
    }
}
