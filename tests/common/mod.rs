//! Harness for end-to-end tests: real `stocknet` processes on free 127.0.0.1 ports, each in
//! its own temporary data directory, killed and reaped when the test ends (also on failure).
//! The harness binds every port first (port 0: the system picks a free one) and hands each
//! process its sockets (`stocknet_common::listeners`), so every address is known before any
//! process starts and no other process can take a port meanwhile.

#![allow(dead_code)] // each test binary uses part of the harness

pub mod book;
pub mod browser;

use std::fs::File;
use std::future::Future;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use stocknet_common::listeners::PUBLIC;
use tokio::time::{sleep, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_stocknet");

/// The shared secret of test clusters.
pub const SECRET: &str = "test-cluster-shared-secret";

/// Book entries between snapshots in test clusters.
pub const BOOK_SNAPSHOT_EVERY: &str = "50";

/// Trades and limit orders a test cluster's books keep in memory: few, so that tests read
/// older ones from the replicas' archives.
pub const IN_MEMORY: &str = "4";

/// The entries of `log` (a replica's log as JSON) that are commands somebody sent: not the
/// replica group's own entries (a new leader's, a membership change).
pub fn orders_only(log: &[Value]) -> Vec<Value> {
    log.iter()
        .filter(|entry| !matches!(entry["type"].as_str(), Some("leader" | "membership")))
        .cloned()
        .collect()
}

/// The `field` of each element of the array `list` (a test fails if `list` is not an array).
pub fn each<'a>(list: &'a Value, field: &str) -> Vec<&'a Value> {
    list.as_array()
        .unwrap_or_else(|| panic!("an array: {list}"))
        .iter()
        .map(|element| &element[field])
        .collect()
}

/// `body`, an error envelope, without its `request_id`, which must be there (every error
/// names the request it answers).
pub fn without_request_id(mut body: Value) -> Value {
    let id = body["error"]
        .as_object_mut()
        .and_then(|error| error.remove("request_id"));
    assert!(
        id.as_ref()
            .and_then(Value::as_str)
            .is_some_and(|id| !id.is_empty()),
        "no request_id in {body}"
    );
    body
}

/// A socket listening on a free port of 127.0.0.1, to hand to a process. The port lies below
/// the kernel's ephemeral range (32768–60999 by default), so no outgoing connection takes it
/// as its local port while the process restarts and the port is bound again, as one could a
/// port that `bind(0)` handed out; each call in this process gets a different one.
pub fn listener() -> TcpListener {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Test binaries running side by side start at different places.
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free port left below the ephemeral range");
        let port = u16::try_from(LOW + (start + n) % SPAN).expect("below 32000");
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            return listener;
        }
    }
}

/// The port `listener` listens on.
pub fn port_of(listener: &TcpListener) -> u16 {
    listener.local_addr().expect("a bound listener").port()
}

/// A port nobody listens on: an address that refuses connections.
pub fn closed_port() -> u16 {
    port_of(&listener())
}

pub fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Runs `command` (a `stocknet` client of servers the test runs) to its end, within 180 s: a
/// client that hangs fails its test instead of stalling the whole run. Killed when dropped.
pub async fn output_within(command: &mut tokio::process::Command) -> std::process::Output {
    command.kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(180), command.output())
        .await
        .expect("the command ended within 180 s")
        .expect("the command runs")
}

/// Polls `check` until it holds or `timeout` passes; panics naming `what` on timeout.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    // A check that hangs is cut off at the deadline too: the test fails, not the run stalls.
    while !tokio::time::timeout_at(deadline, check())
        .await
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(25)).await;
    }
}

/// `request` with `Authorization: Bearer <key>` when a key is given.
pub fn with_key(request: reqwest::RequestBuilder, key: Option<&str>) -> reqwest::RequestBuilder {
    match key {
        Some(key) => request.bearer_auth(key),
        None => request,
    }
}

/// Sends `request`; its status.
pub async fn status(request: reqwest::RequestBuilder) -> u16 {
    request.send().await.expect("an answer").status().as_u16()
}

/// Sends `request`; its status and JSON body.
pub async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// The standard output of a `stocknet` command that must have succeeded (else the test fails
/// with both of its outputs).
pub fn succeeded(output: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Waits (20 s at most) for the next message of a WebSocket, which must close it with a
/// policy violation (1008): a wrong or revoked key. `what` names the case in a failure.
pub async fn expect_policy_close<S>(socket: &mut S, what: &str)
where
    S: futures::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let message = tokio::time::timeout(Duration::from_secs(20), socket.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: no message within 20 s"));
    match message {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1008, "{what}: {frame:?}")
        }
        other => panic!("{what}: expected a close, got {other:?}"),
    }
}

/// One child process, restartable with the same arguments and ports.
pub struct Proc {
    pub name: String,
    args: Vec<String>,
    log: PathBuf,
    /// Its `RUST_LOG`.
    filter: String,
    child: Option<Child>,
    /// What it listens on: by name (`stocknet_common::listeners`), the port.
    ports: Vec<(&'static str, u16)>,
    /// The sockets bound for its first start; later starts bind its ports again.
    first: Vec<TcpListener>,
}

impl Proc {
    pub fn start(
        name: &str,
        args: Vec<String>,
        log_dir: &Path,
        listeners: Vec<(&'static str, TcpListener)>,
    ) -> Self {
        let mut proc = Self::prepare(name, args, log_dir, listeners);
        proc.restart();
        proc
    }

    /// The process, not started yet (`restart` starts it), to be handed `listeners`.
    pub fn prepare(
        name: &str,
        args: Vec<String>,
        log_dir: &Path,
        listeners: Vec<(&'static str, TcpListener)>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            args,
            log: log_dir.join(format!("{}.log", name.replace(' ', "-"))),
            filter: "warn".into(),
            child: None,
            ports: listeners.iter().map(|(n, l)| (*n, port_of(l))).collect(),
            first: listeners.into_iter().map(|(_, l)| l).collect(),
        }
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let listeners = match self.first.is_empty() {
            false => std::mem::take(&mut self.first),
            true => self
                .ports
                .iter()
                .map(|(_, port)| {
                    TcpListener::bind(("127.0.0.1", *port)).unwrap_or_else(|e| {
                        panic!("{} cannot have port {port} again: {e}", self.name)
                    })
                })
                .collect(),
        };
        let names: Vec<&str> = self.ports.iter().map(|(name, _)| *name).collect();
        let mut command = Command::new(BIN);
        command
            .args(&self.args)
            .env("RUST_LOG", &self.filter)
            .env("LISTEN_FDS", listeners.len().to_string())
            .env(stocknet_common::listeners::NAMES_ENV, names.join(":"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        let mappings = listeners
            .into_iter()
            .zip(3..)
            .map(|(listener, child_fd)| FdMapping {
                parent_fd: OwnedFd::from(listener),
                child_fd,
            });
        command
            .fd_mappings(mappings.collect())
            .expect("distinct descriptors");
        // (Dropping `command` then closes this process's copies of the sockets.)
        self.child = Some(command.spawn().expect("spawn stocknet"));
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last `lines` lines of what it printed, for a failure message.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGSTOP: it hangs, holding its sockets open, until [`Proc::resume`] (a gray failure).
    pub fn pause(&self) {
        self.send(Signal::SIGSTOP);
    }

    /// SIGCONT: a paused process goes on where it stopped.
    pub fn resume(&self) {
        self.send(Signal::SIGCONT);
    }

    fn send(&self, signal: Signal) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        let pid = Pid::from_raw(i32::try_from(pid).expect("a pid"));
        kill(pid, signal).unwrap_or_else(|e| panic!("{signal} to {}: {e}", self.name));
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a graceful exit: 30 s at most, then SIGKILL (a process that does
    /// not stop fails its test, not the whole run).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while matches!(child.try_wait(), Ok(None)) {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("a process did not stop within 30 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A frontend alone on a free port, with nothing behind it (its catalog and replicas are
/// unreachable): for tests of its own routes. `extra` adds flags.
pub struct LoneFrontend {
    pub url: String,
    pub frontend: Proc,
    _dir: tempfile::TempDir,
}

impl LoneFrontend {
    pub async fn start(extra: &[&str]) -> Self {
        Self::start_with(extra, Vec::new()).await
    }

    /// With a second port, of `flag` (`--internal-port`, `--metrics-port`), handed to it as the
    /// socket named `name`; and that port.
    pub async fn with_port(flag: &str, name: &'static str) -> (Self, u16) {
        let listener = listener();
        let port = port_of(&listener);
        let frontend = Self::start_with(&[flag, &port.to_string()], vec![(name, listener)]).await;
        (frontend, port)
    }

    /// With more listeners (e.g. `--internal-port`'s, named `internal`).
    pub async fn start_with(
        extra: &[&str],
        mut listeners: Vec<(&'static str, TcpListener)>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, SECRET).expect("write the secret");
        let public = listener();
        let port = port_of(&public);
        let mut args: Vec<String> = [
            "frontend",
            "--port",
            &port.to_string(),
            "--secret-file",
            &secret.display().to_string(),
            "--catalog-url",
            "http://127.0.0.1:9",
            "--order-replicas",
            "1=http://127.0.0.1:9",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        listeners.insert(0, (PUBLIC, public));
        let frontend = Proc::start("frontend", args, dir.path(), listeners);
        let url = url(port);
        let http = reqwest::Client::new();
        // Serving means every port it was given is bound.
        wait_until("the frontend", Duration::from_secs(20), || {
            let request = http.get(format!("{url}/health")).send();
            async move { request.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        Self {
            url,
            frontend,
            _dir: dir,
        }
    }
}

/// Catalog, three order replicas and `frontends` frontends.
pub struct Cluster {
    pub catalog: Proc,
    pub orders: Vec<Proc>,
    pub frontends: Vec<Proc>,
    pub catalog_url: String,
    pub order_urls: Vec<String>,
    pub frontend_urls: Vec<String>,
    /// A client as users are: no credentials.
    pub http: reqwest::Client,
    /// A client with the shared secret, for reading replicas' logs and books directly.
    pub insider: reqwest::Client,
    // Last, so that processes stop before their directory goes.
    pub dir: tempfile::TempDir,
}

/// Where a cluster's processes reach each other (e.g. through a [`Link`]): the catalog pushes
/// to frontend `i` (at `url`) at `push_to(i, url)`, every process reaches order replica `i` at
/// `replica_at(i, url)`, and order replica `i` reaches the catalog at `catalog_at(i, url)`.
pub struct Wiring<'a> {
    pub push_to: &'a dyn Fn(usize, &str) -> String,
    pub replica_at: &'a dyn Fn(usize, &str) -> String,
    pub catalog_at: &'a dyn Fn(usize, &str) -> String,
}

impl Wiring<'static> {
    pub const DIRECT: Self = Self {
        push_to: &|_, url| url.to_owned(),
        replica_at: &|_, url| url.to_owned(),
        catalog_at: &|_, url| url.to_owned(),
    };
}

/// Wirings that reroute one kind of call, the others direct.
impl<'a> Wiring<'a> {
    pub fn push_to(push_to: &'a dyn Fn(usize, &str) -> String) -> Self {
        Self {
            push_to,
            ..Wiring::DIRECT
        }
    }

    pub fn replica_at(replica_at: &'a dyn Fn(usize, &str) -> String) -> Self {
        Self {
            replica_at,
            ..Wiring::DIRECT
        }
    }

    pub fn catalog_at(catalog_at: &'a dyn Fn(usize, &str) -> String) -> Self {
        Self {
            catalog_at,
            ..Wiring::DIRECT
        }
    }
}

/// A TCP link on 127.0.0.1 to one address that a test can cut or slow: once cut, what
/// arrives is neither forwarded nor answered (connections stay open, as over a link that drops
/// packets; those made while it is cut are never forwarded); slowed, everything it carries
/// each way arrives that much later (as over a long link: what is sent meanwhile is not held
/// back behind it). Its tasks end with the test's runtime.
pub struct Link {
    pub url: String,
    target: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    cut: tokio::sync::watch::Sender<bool>,
    delay: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Link {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let target: std::sync::Arc<std::sync::Mutex<Option<String>>> = Default::default();
        let (cut, watching) = tokio::sync::watch::channel(false);
        let delay: std::sync::Arc<std::sync::atomic::AtomicU64> = Default::default();
        let to = target.clone();
        let slow = delay.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = to.lock().expect("target").clone();
                let mut cut = watching.clone();
                if *cut.borrow() {
                    held.push(inbound);
                    continue;
                }
                let slow = slow.clone();
                tokio::spawn(async move {
                    let Some(target) = target else { return };
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (from_client, to_client) = inbound.split();
                    let (from_target, to_target) = outbound.split();
                    let black_holed = tokio::select! {
                        _ = async {
                            tokio::join!(
                                carry(from_client, to_target, &slow),
                                carry(from_target, to_client, &slow),
                            )
                        } => false,
                        cut_off = async { cut.wait_for(|&cut| cut).await.is_ok() } => cut_off,
                    };
                    if black_holed {
                        // Keep the client's connection open, silent, until healed.
                        let _ = cut.wait_for(|&cut| !cut).await.is_ok();
                    }
                });
            }
        });
        Self {
            url,
            target,
            cut,
            delay,
        }
    }

    /// Delays everything it carries by `delay` each way from now on.
    pub fn slow(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).expect("a delay in milliseconds");
        self.delay
            .store(millis, std::sync::atomic::Ordering::SeqCst);
    }

    /// Forwards to `url` (`http://host:port`); returns the link's own URL.
    pub fn forward_to(&self, url: &str) -> String {
        let address = url.trim_start_matches("http://").to_owned();
        *self.target.lock().expect("target") = Some(address);
        self.url.clone()
    }

    /// A [`Wiring`] function that puts this link in front of the process numbered `which` alone.
    pub fn only_for(&self, which: usize) -> impl Fn(usize, &str) -> String + '_ {
        move |i, url| {
            if i == which {
                self.forward_to(url)
            } else {
                url.to_owned()
            }
        }
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

/// Carries what `from` reads to `to`, each part `delay` milliseconds after it was read (a
/// delay line: later parts are not held behind earlier ones' waits), until either side ends.
/// Unlike a real link it has no backpressure (what is read waits in memory, however much)
/// and passes a read error on as a close, not a reset: enough for the tests' small calls.
async fn carry(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    delay: &std::sync::atomic::AtomicU64,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (parts, mut due) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buffer).await {
            let wait = delay.load(std::sync::atomic::Ordering::SeqCst);
            let at = Instant::now() + Duration::from_millis(wait);
            if parts.send((at, buffer[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let write = async move {
        while let Some((at, part)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&part).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

impl Cluster {
    pub async fn start(frontends: usize) -> Self {
        Self::start_with(frontends, 3, 3).await
    }

    /// A cluster of `replicas` order replicas, of which the first `founders` found the group,
    /// are started and are the replicas the frontends are told of; the others are only
    /// prepared, to join it (the frontends learn of them from the group).
    pub async fn start_with(frontends: usize, replicas: usize, founders: usize) -> Self {
        Self::launch(frontends, replicas, founders, "warn", &Wiring::DIRECT).await
    }

    /// Catalog, three order replicas and `frontends` frontends, every process logging with
    /// `RUST_LOG` `filter`.
    pub async fn start_logging(frontends: usize, filter: &str) -> Self {
        Self::launch(frontends, 3, 3, filter, &Wiring::DIRECT).await
    }

    /// Catalog, three order replicas and `frontends` frontends, reaching each other as `wiring`
    /// says.
    pub async fn start_wired(frontends: usize, wiring: &Wiring<'_>) -> Self {
        Self::launch(frontends, 3, 3, "warn", wiring).await
    }

    async fn launch(
        frontends: usize,
        replicas: usize,
        founders: usize,
        filter: &str,
        wiring: &Wiring<'_>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().display().to_string();
        let catalog_listener = listener();
        let order_listeners: Vec<TcpListener> = (0..replicas).map(|_| listener()).collect();
        let frontend_listeners: Vec<TcpListener> = (0..frontends).map(|_| listener()).collect();
        let catalog_port = port_of(&catalog_listener);
        let order_ports: Vec<u16> = order_listeners.iter().map(port_of).collect();
        let frontend_ports: Vec<u16> = frontend_listeners.iter().map(port_of).collect();
        let catalog_url = url(catalog_port);
        let order_urls: Vec<String> = order_ports.iter().map(|p| url(*p)).collect();
        let frontend_urls: Vec<String> = frontend_ports.iter().map(|p| url(*p)).collect();
        let peer_list = |count: usize| {
            order_urls
                .iter()
                .take(count)
                .enumerate()
                .map(|(i, u)| format!("{}={}", i + 1, (wiring.replica_at)(i, u)))
                .collect::<Vec<_>>()
                .join(",")
        };
        let founding = peer_list(founders);

        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, SECRET).expect("write the secret");
        let secret_file = secret_file.display().to_string();
        let args = |list: &[&str]| {
            let mut args: Vec<String> = list.iter().map(|s| s.to_string()).collect();
            args.extend(["--secret-file".to_owned(), secret_file.clone()]);
            args
        };
        // Each process logs with `filter`; replicas that are to join are only prepared.
        let logged = |name: &str, args: Vec<String>, listener: TcpListener, start: bool| {
            let mut proc = Proc::prepare(name, args, dir.path(), vec![(PUBLIC, listener)]);
            proc.filter = filter.to_owned();
            if start {
                proc.restart();
            }
            proc
        };
        let catalog = logged(
            "catalog",
            args(&[
                "catalog",
                "--port",
                &catalog_port.to_string(),
                "--data-dir",
                &data,
                "--frontends",
                &(frontend_urls.iter().enumerate())
                    .map(|(i, url)| (wiring.push_to)(i, url))
                    .collect::<Vec<_>>()
                    .join(","),
            ]),
            catalog_listener,
            true,
        );
        // One process of `kind` on each port: its flags after `--port`, and whether it starts now.
        let spawn = |kind: &str,
                     ports: &[u16],
                     listeners: Vec<TcpListener>,
                     flags: &dyn Fn(usize) -> Vec<String>,
                     start: &dyn Fn(usize) -> bool| {
            (ports.iter().zip(listeners).enumerate())
                .map(|(i, (port, listener))| {
                    let mut list = vec![kind.to_owned(), "--port".to_owned(), port.to_string()];
                    list.extend(flags(i));
                    let list: Vec<&str> = list.iter().map(String::as_str).collect();
                    logged(
                        &format!("{kind} {}", i + 1),
                        args(&list),
                        listener,
                        start(i),
                    )
                })
                .collect()
        };
        let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let order_flags = |i: usize| {
            owned(&[
                "--node-id",
                &(i + 1).to_string(),
                "--peers",
                &founding,
                "--catalog-url",
                &(wiring.catalog_at)(i, &catalog_url),
                "--data-dir",
                &data,
                // Often, so that every restart in a test loads a book snapshot.
                "--book-snapshot-every",
                BOOK_SNAPSHOT_EVERY,
                "--trades-in-memory",
                IN_MEMORY,
                "--orders-in-memory",
                IN_MEMORY,
                // Often, so that a restart reads its log's index from a checkpoint (each
                // costs a few fsyncs, which the suite's clusters share one disk for).
                "--index-checkpoint-every",
                "64",
                "--index-checkpoint-seconds",
                "0",
            ])
        };
        let orders = spawn("order", &order_ports, order_listeners, &order_flags, &|i| {
            i < founders
        });
        let frontend_flags = |_: usize| {
            owned(&[
                "--catalog-url",
                &catalog_url,
                "--order-replicas",
                &founding,
                "--cache-size",
                "4",
            ])
        };
        let frontends = spawn(
            "frontend",
            &frontend_ports,
            frontend_listeners,
            &frontend_flags,
            &|_| true,
        );
        let cluster = Self {
            catalog,
            orders,
            frontends,
            catalog_url,
            order_urls,
            frontend_urls,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("client"),
            insider: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .default_headers(reqwest::header::HeaderMap::from_iter([(
                    reqwest::header::AUTHORIZATION,
                    format!("Bearer {SECRET}").parse().expect("header value"),
                )]))
                .build()
                .expect("client"),
            dir,
        };
        cluster.wait_ready().await;
        cluster.wait_led_by(founders - 1).await;
        cluster
    }

    /// Waits (bounded) until replica `index` leads: in steady state the highest-id replica
    /// does, handed the leadership if another was elected first. The bound covers one handover
    /// that does not happen (on a machine busy with the rest of the suite) and the next, 10 s
    /// later (`consensus::handover`): about 20 s after the first election.
    pub async fn wait_led_by(&self, index: usize) {
        let deadline = Instant::now() + Duration::from_secs(45);
        while self.leader().await != Some(index) {
            assert!(
                Instant::now() < deadline,
                "replica {} never led; its log ends:\n{}",
                index + 1,
                self.orders[index].log_tail(20)
            );
            sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn frontend(&self) -> &str {
        &self.frontend_urls[0]
    }

    /// A new user's id and API key, made through `frontend`.
    pub async fn new_user(&self, frontend: &str) -> (u64, String) {
        let (status, created) = self.post(&format!("{frontend}/users"), &json!({})).await;
        assert_eq!(status, 201, "{created}");
        let data = &created["data"];
        (
            data["user_id"].as_u64().expect("id"),
            data["api_key"].as_str().expect("key").to_owned(),
        )
    }

    pub async fn is_up(&self, url: &str) -> bool {
        self.http
            .get(url)
            .timeout(Duration::from_millis(500))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    pub async fn wait_ready(&self) {
        let mut waits = vec![(format!("{}/health", self.catalog_url), &self.catalog)];
        for (url, proc) in self.order_urls.iter().zip(&self.orders) {
            if proc.pid().is_some() {
                waits.push((format!("{url}/ready"), proc));
            }
        }
        for (url, proc) in self.frontend_urls.iter().zip(&self.frontends) {
            waits.push((format!("{url}/health"), proc));
        }
        for (url, proc) in waits {
            self.wait_up(&url, proc).await;
        }
    }

    pub async fn wait_replica_ready(&self, index: usize) {
        let url = format!("{}/ready", self.order_urls[index]);
        self.wait_up(&url, &self.orders[index]).await;
    }

    /// Waits (bounded) until `url` answers 2xx; on timeout, fails with `proc`'s log.
    async fn wait_up(&self, url: &str, proc: &Proc) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.is_up(url).await {
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(&proc.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "timed out waiting for {url} ({}); its log ends:\n{}",
                    proc.name,
                    tail.join("\n")
                );
            }
            sleep(Duration::from_millis(25)).await;
        }
    }

    /// The public client for a frontend's URL, the insider for the other services'.
    pub fn client_for(&self, url: &str) -> &reqwest::Client {
        if self
            .frontend_urls
            .iter()
            .any(|f| url.starts_with(f.as_str()))
        {
            &self.http
        } else {
            &self.insider
        }
    }

    /// The Prometheus text `base` (a frontend's URL) serves at `/metrics`.
    pub async fn metrics(&self, base: &str) -> String {
        let response = self.http.get(format!("{base}/metrics")).send().await;
        response
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// A cluster of one frontend, its URL and a new user there (id and key).
    pub async fn start_with_user() -> (Self, String, (u64, String)) {
        let cluster = Self::start(1).await;
        let frontend = cluster.frontend().to_owned();
        let user = cluster.new_user(&frontend).await;
        (cluster, frontend, user)
    }

    /// `GET` of `path` on the first frontend.
    pub async fn get_front(&self, path: &str) -> (u16, Value) {
        self.get(&format!("{}{path}", self.frontend())).await
    }

    pub async fn get(&self, url: &str) -> (u16, Value) {
        let response = self.client_for(url).get(url).send().await.expect("GET");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    pub async fn post(&self, url: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client_for(url)
            .post(url)
            .json(body)
            .send()
            .await
            .expect("POST");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON body"))
    }

    /// Places an order through frontend `frontend`; returns status and body.
    pub async fn order(
        &self,
        frontend: usize,
        name: &str,
        side: &str,
        quantity: u64,
    ) -> (u16, Value) {
        let body = json!({"name": name, "quantity": quantity, "type": side});
        self.post(&format!("{}/orders", self.frontend_urls[frontend]), &body)
            .await
    }

    /// Places a limit order for GameStart through frontend `frontend` that must succeed;
    /// returns the answer's `data`.
    pub async fn must_limit(
        &self,
        frontend: usize,
        side: &str,
        quantity: u64,
        price: f64,
    ) -> Value {
        let body = json!({"name": "GameStart", "type": side, "quantity": quantity, "price": price});
        let (status, reply) = self
            .post(&format!("{}/orders", self.frontend_urls[frontend]), &body)
            .await;
        assert_eq!(status, 200, "{reply}");
        reply["data"].clone()
    }

    /// Places an order that must succeed; returns its transaction number.
    pub async fn must_order(&self, name: &str, side: &str, quantity: u64) -> u64 {
        let (status, body) = self.order(0, name, side, quantity).await;
        assert_eq!(status, 200, "{body}");
        body["data"]["transaction_number"]
            .as_u64()
            .expect("transaction number")
    }

    pub async fn quantity(&self, frontend: usize, name: &str) -> u64 {
        let (status, body) = self
            .get(&format!("{}/stocks/{name}", self.frontend_urls[frontend]))
            .await;
        assert_eq!(status, 200, "{body}");
        body["data"]["quantity"].as_u64().expect("quantity")
    }

    /// Entry `number` of replica `index`'s log, committed or not.
    pub async fn replica_order(&self, index: usize, number: u64) -> Value {
        let (status, body) = self
            .get(&format!(
                "{}/orders/logs/{}?limit=1",
                self.order_urls[index],
                number - 1
            ))
            .await;
        assert_eq!(status, 200, "replica {} order {number}: {body}", index + 1);
        body["data"]["orders"][0].clone()
    }

    /// The replica that leads the highest term, as the live replicas report it.
    pub async fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for index in 0..self.order_urls.len() {
            // A replica not started yet has its port held, listening, by this process: the
            // kernel accepts a connection there that nobody answers. A hung one is not waited
            // for long either.
            if self.orders[index].pid().is_none() {
                continue;
            }
            let url = format!("{}/health", self.order_urls[index]);
            let asked = self.insider.get(&url).timeout(Duration::from_secs(5));
            let Ok(response) = asked.send().await else {
                continue;
            };
            let Ok(health) = response.json::<Value>().await else {
                continue;
            };
            let health = &health["data"];
            let term = health["term"].as_u64().unwrap_or(0);
            if health["leader"] == health["node_id"] && best.is_none_or(|(t, _)| term > t) {
                best = Some((term, index));
            }
        }
        best.map(|(_, index)| index)
    }

    pub async fn replica_health(&self, index: usize) -> Value {
        self.get(&format!("{}/health", self.order_urls[index]))
            .await
            .1["data"]
            .clone()
    }

    /// Replica `index`'s whole log, or `None` if it does not answer.
    pub async fn replica_log(&self, index: usize) -> Option<Vec<Value>> {
        let mut orders = Vec::new();
        loop {
            let url = format!("{}/orders/logs/{}", self.order_urls[index], orders.len());
            let response = self.insider.get(&url).send().await.ok()?;
            let body: Value = response.json().await.ok()?;
            let page = body["data"]["orders"].as_array()?;
            if page.is_empty() {
                return Some(orders);
            }
            orders.extend(page.iter().cloned());
        }
    }

    /// Whether replica `index` has applied all of its log (a follower learns the last commit
    /// point with the append after the one that brought the entry).
    async fn replica_applied_all(&self, index: usize) -> bool {
        let url = format!("{}/orders/logs/{}", self.order_urls[index], u64::MAX);
        let Ok(response) = self.insider.get(&url).send().await else {
            return false;
        };
        let body: Value = response.json().await.unwrap_or_default();
        let (last, committed) = (&body["data"]["last"], &body["data"]["committed"]);
        last.as_u64().is_some() && last == committed
    }

    /// Waits until every order replica holds the same log and has applied all of it; returns
    /// the log.
    pub async fn wait_for_identical_logs(&self) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut logs = Vec::new();
            let mut applied = true;
            for index in 0..self.order_urls.len() {
                logs.push(self.replica_log(index).await);
                applied &= self.replica_applied_all(index).await;
            }
            if applied
                && logs.iter().all(Option::is_some)
                && logs.windows(2).all(|pair| pair[0] == pair[1])
            {
                return logs.swap_remove(0).unwrap_or_default();
            }
            let lengths: Vec<Option<usize>> =
                logs.iter().map(|log| log.as_ref().map(Vec::len)).collect();
            if Instant::now() > deadline {
                let tails: Vec<String> = self
                    .orders
                    .iter()
                    .map(|proc| format!("--- {}:\n{}", proc.name, proc.log_tail(20)))
                    .collect();
                panic!(
                    "replica logs still differ; lengths {lengths:?}\n{}",
                    tails.join("\n")
                );
            }
            sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Where a test's reports go: a webhook and a mail server, each on a free port, and the
/// webhook's signing key (`hook-secret`) in a file of a temporary directory the test may use
/// for its other files.
pub struct ReportSinks {
    pub hook: Webhook,
    pub mail: MailServer,
    /// `smtp://` URL of `mail`.
    pub smtp: String,
    pub key_file: PathBuf,
    pub dir: tempfile::TempDir,
}

impl ReportSinks {
    pub async fn start() -> Self {
        let hook = Webhook::start().await;
        let mail = MailServer::start().await;
        let smtp = format!("smtp://127.0.0.1:{}", mail.port);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let key_file = dir.path().join("webhook-key");
        std::fs::write(&key_file, "hook-secret\n").expect("the webhook's key written");
        Self {
            hook,
            mail,
            smtp,
            key_file,
            dir,
        }
    }
}

/// A webhook receiver on a free port: every delivery's `X-StockNet-Signature` and body, in
/// order.
pub struct Webhook {
    pub url: String,
    deliveries: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl Webhook {
    pub async fn start() -> Self {
        let deliveries: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>> =
            Default::default();
        let recorded = deliveries.clone();
        let hook = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let signature = headers
                    .get("x-stocknet-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                recorded
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((signature, body));
                async { "ok" }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let url = format!(
            "http://{}/hook",
            listener.local_addr().expect("its address")
        );
        tokio::spawn(async move { axum::serve(listener, hook).await });
        Self { url, deliveries }
    }

    /// The deliveries so far: (signature, body).
    pub fn deliveries(&self) -> Vec<(String, String)> {
        self.deliveries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A mail server on a free port that takes every message (SMTP without STARTTLS or AUTH):
/// each message's sender, recipients and data, in order.
pub struct MailServer {
    pub port: u16,
    messages: std::sync::Arc<std::sync::Mutex<Vec<Mail>>>,
}

#[derive(Debug, Clone, Default)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

impl MailServer {
    pub async fn start() -> Self {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        let messages: std::sync::Arc<std::sync::Mutex<Vec<Mail>>> = Default::default();
        let kept = messages.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let (reader, mut writer) = stream.into_split();
                    let mut lines = BufReader::new(reader).lines();
                    let mut mail = Mail::default();
                    let _ = writer.write_all(b"220 test ESMTP\r\n").await;
                    while let Ok(Some(line)) = lines.next_line().await {
                        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                        let reply: &[u8] = match verb.as_str() {
                            "EHLO" | "HELO" => b"250-test\r\n250 8BITMIME\r\n",
                            "MAIL" => {
                                mail.from = line[10..].to_owned();
                                b"250 ok\r\n"
                            }
                            "RCPT" => {
                                mail.to.push(line[8..].to_owned());
                                b"250 ok\r\n"
                            }
                            "DATA" => {
                                let _ = writer.write_all(b"354 go on\r\n").await;
                                while let Ok(Some(line)) = lines.next_line().await {
                                    if line == "." {
                                        break;
                                    }
                                    mail.data.push_str(&line);
                                    mail.data.push('\n');
                                }
                                kept.lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push(std::mem::take(&mut mail));
                                b"250 queued\r\n"
                            }
                            "QUIT" => {
                                let _ = writer.write_all(b"221 bye\r\n").await;
                                return;
                            }
                            _ => b"250 ok\r\n",
                        };
                        if writer.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { port, messages }
    }

    /// The messages so far.
    pub fn messages(&self) -> Vec<Mail> {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
