//! `stocknet up`: the whole system on 127.0.0.1 as supervised child processes. `up` binds
//! every port first (0 picks a free one) and hands each service its socket, so a port in use
//! is an error before anything starts, and every address is known to every service.

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use command_fds::{CommandFdExt, FdMapping};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use stocknet_common::clock::{day_of, day_text, now_millis, DAY_MS};
use stocknet_common::server::{LogFormat, LOG_FORMAT_ENV};
use stocknet_common::{BaseUrl, Secret};
use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout, Instant};

use crate::report;
use stocknet_common::env;
use stocknet_common::listeners;
use stocknet_common::ports;

#[derive(Debug, Clone, clap::Args)]
pub struct UpConfig {
    /// Directory for catalog.csv and the order logs (seeded on first run).
    #[arg(long, env = env::DATA_DIR, default_value = "./stocknet-data")]
    pub data_dir: PathBuf,
    #[arg(long, env = env::FRONTEND_PORT, default_value_t = ports::FRONTEND)]
    pub frontend_port: u16,
    #[arg(long, env = env::CATALOG_PORT, default_value_t = ports::CATALOG)]
    pub catalog_port: u16,
    /// One port per order replica; replica ids are 1, 2, 3... in this order.
    #[arg(long, env = env::ORDER_PORTS, value_delimiter = ',', default_value = ports::ORDER_PORTS)]
    pub order_ports: Vec<u16>,
    /// Stocks held by the frontend's cache (below the catalog's 12 stocks by default).
    #[arg(long, env = env::CACHE_SIZE, default_value_t = 8)]
    pub cache_size: usize,
    /// Turn the frontend's cache off.
    #[arg(long, env = env::NO_CACHE)]
    pub no_cache: bool,
    /// CSV (name,price,quantity) to seed the catalog from on first run.
    #[arg(long, env = env::INITIAL_CATALOG)]
    pub initial_catalog: Option<PathBuf>,
    /// When the day's report is archived under `<data-dir>/reports` (and delivered, with
    /// `--webhook` or `--smtp-url`), daily: a UTC time of day, HH:MM or HH:MM:SS.
    #[arg(long, env = env::REPORT_AT, default_value = "23:59", value_parser = time_of_day)]
    pub report_at: Duration,
    /// Which day the scheduled report covers: the one it runs in (for a run late in the
    /// day), or the one before (for a run after midnight).
    #[arg(long, env = env::REPORT_DAY, value_enum, default_value_t = ReportDay::Today)]
    pub report_day: ReportDay,
    /// No scheduled report.
    #[arg(long, env = env::NO_REPORTS)]
    pub no_reports: bool,
    #[command(flatten)]
    pub report_delivery: report::DeliveryArgs,
}

/// Which day a scheduled report covers, counted from the day it runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportDay {
    Today,
    Yesterday,
}

/// `HH:MM` or `HH:MM:SS` as the time since midnight.
fn time_of_day(text: &str) -> Result<Duration, String> {
    let parts: Vec<u64> = text
        .split(':')
        .map(|part| {
            part.parse()
                .map_err(|_| format!("{text:?} is not HH:MM[:SS]"))
        })
        .collect::<Result<_, _>>()?;
    match parts[..] {
        [hours, minutes] if hours < 24 && minutes < 60 => {
            Ok(Duration::from_secs(hours * 3600 + minutes * 60))
        }
        [hours, minutes, seconds] if hours < 24 && minutes < 60 && seconds < 60 => {
            Ok(Duration::from_secs(hours * 3600 + minutes * 60 + seconds))
        }
        _ => Err(format!("{text:?} is not a time of day, HH:MM[:SS]")),
    }
}

/// How long every service gets to become ready at start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a service gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// tokio's own setting of a runtime's worker threads (its default: one per core).
const WORKER_THREADS_ENV: &str = "TOKIO_WORKER_THREADS";

/// The tokio worker threads `up` starts the catalog and each order replica with, unless
/// `TOKIO_WORKER_THREADS` is set: half the cores, at least one. Their work goes through one
/// task at a time (the catalog's store, a replica's consensus core and sequencer), and on two
/// cores ten workers in five processes handed each commit round between threads: with one
/// worker each, 32 clients' durable orders ran 1.28–1.30× as fast for 0.78× the CPU
/// (docs/BENCHMARKS.md, "Worker threads under `up`"). The frontend, whose requests run side by
/// side, keeps one per core.
fn serial_service_workers() -> Option<usize> {
    std::env::var_os(WORKER_THREADS_ENV)
        .is_none()
        .then(|| std::thread::available_parallelism().map_or(1, |cores| (cores.get() / 2).max(1)))
}

struct Service {
    name: String,
    args: Vec<String>,
    /// The port it listens on; its socket is bound here and handed to it.
    port: u16,
    /// Its socket, bound once and kept: each start is handed a copy, so that while it restarts
    /// clients' connections wait in the socket's queue instead of being refused (and a port
    /// the system picked is never given up to another program meanwhile).
    listener: Option<TcpListener>,
    /// The data directory's lock ([`lock_data_dir`]), which each start holds too (as its
    /// descriptor [`DATA_DIR_LOCK_FD`]): a killed `up`'s services stop in their own time, and
    /// another `up` must not start over the same files meanwhile.
    data_dir_lock: Option<std::fs::File>,
    ready_url: String,
    child: Option<Child>,
    restarts: u32,
    restart: Restart,
    liveness: Liveness,
    /// Passed on, so that every service logs the way `up` was asked to.
    log_format: LogFormat,
    /// Its tokio worker threads, where `up` chooses them.
    workers: Option<usize>,
}

impl Service {
    /// A service not started yet, ready when `ready_url` answers 2xx.
    fn new(
        name: String,
        args: Vec<String>,
        ready_url: String,
        port: u16,
        log_format: LogFormat,
        workers: Option<usize>,
    ) -> Self {
        Self {
            name,
            args,
            port,
            listener: None,
            data_dir_lock: None,
            ready_url,
            child: None,
            restarts: 0,
            restart: Restart::default(),
            liveness: Liveness::new(LIVENESS_FAILURES, READY_TIMEOUT),
            log_format,
            workers,
        }
    }

    /// The same, killed only after `failures` failed liveness checks in a row.
    fn allowing(mut self, failures: u32, startup: Duration) -> Self {
        self.liveness = Liveness::new(failures, startup);
        self
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let (program, name) = own_binary()?;
        if self.listener.is_none() {
            self.listener = Some(bind(self.port)?);
        }
        let listener = (self.listener.as_ref().map(TcpListener::try_clone))
            .context("no socket")?
            .context("cannot hand a socket over")?;
        let mut handed = vec![FdMapping {
            parent_fd: OwnedFd::from(listener),
            child_fd: 3,
        }];
        if let Some(lock) = &self.data_dir_lock {
            handed.push(FdMapping {
                parent_fd: OwnedFd::from(lock.try_clone().context("cannot hand the lock over")?),
                child_fd: DATA_DIR_LOCK_FD,
            });
        }
        let mut command = Command::new(program);
        command.arg0(name);
        command
            .fd_mappings(handed)
            .context("cannot hand a socket over")?;
        command
            .args(&self.args)
            .env("LISTEN_FDS", "1")
            .env(listeners::NAMES_ENV, listeners::PUBLIC)
            .env(LOG_FORMAT_ENV, self.log_format.as_str())
            .stdin(Stdio::null())
            // Its own process group: a Ctrl-C in the terminal reaches `up` alone, which stops
            // the services one by one, frontend first (the parent-death signal below still
            // stops them if `up` is killed).
            .process_group(0)
            .kill_on_drop(true);
        if let Some(workers) = self.workers {
            command.env(WORKER_THREADS_ENV, workers.to_string());
        }
        // SAFETY: prctl and getppid are async-signal-safe; the child gets SIGTERM when `up`
        // dies, even by SIGKILL, so no service outlives its supervisor (and one whose `up`
        // died before that was set does not start).
        let up = nix::unistd::getpid();
        unsafe {
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
                if nix::unistd::getppid() != up {
                    return Err(std::io::Error::other("its `up` has exited"));
                }
                Ok(())
            });
        }
        self.child = Some(
            command
                .spawn()
                .with_context(|| format!("cannot start {}", self.name))?,
        );
        self.restart.started = Some(Instant::now());
        self.liveness = Liveness::new(self.liveness.allowed, self.liveness.startup);
        Ok(())
    }

    /// Counts one liveness check: kills a process that answered since it started and now has
    /// failed its allowance of checks in a row (it hangs), for [`supervise`] to restart.
    fn checked(&mut self, answered: bool) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if self.liveness.heard(answered, Instant::now()) {
            tracing::warn!(service = %self.name, "no answer to {} health checks in a row; killing it to restart it", self.liveness.allowed);
            // SIGKILL also ends a stopped process.
            let _ = child.start_kill();
        }
    }

    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        if timeout(STOP_TIMEOUT, child.wait()).await.is_err() {
            tracing::warn!("{} did not stop in time; killing it", self.name);
            let _ = child.kill().await;
        }
    }
}

pub async fn run(mut config: UpConfig, log_format: LogFormat) -> anyhow::Result<()> {
    if config.order_ports.is_empty() {
        bail!("--order-ports needs at least one port");
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let only_up_here = lock_data_dir(&config.data_dir)?;
    let secret = ensure_secret(&config.data_dir)?;
    let mut listeners = vec![bind(config.catalog_port)?];
    for port in &config.order_ports {
        listeners.push(bind(*port)?);
    }
    listeners.push(bind(config.frontend_port)?);
    // Ports given as 0 are now the ones the system picked.
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?;
    let (catalog, rest) = ports.split_first().context("no ports")?;
    let (frontend, orders) = rest.split_last().context("no ports")?;
    (config.catalog_port, config.frontend_port) = (*catalog, *frontend);
    config.order_ports = orders.to_vec();
    let mut services = plan(&config, &secret, log_format);
    for (service, listener) in services.iter_mut().zip(listeners) {
        service.listener = Some(listener);
        service.data_dir_lock = Some(only_up_here.try_clone().context("cannot share the lock")?);
    }
    for service in &mut services {
        service.spawn()?;
    }
    let http = stocknet_common::http_client(Duration::from_secs(1));
    if let Err(e) = wait_ready(&http, &mut services).await {
        stop_all(&mut services).await;
        return Err(e);
    }
    print_banner(&config);
    let frontend: BaseUrl = format!("http://127.0.0.1:{}", config.frontend_port)
        .parse()
        .map_err(anyhow::Error::msg)?;
    let reports = (!config.no_reports).then(|| {
        tokio::spawn(report_daily(
            frontend,
            config.data_dir.join("reports"),
            config.report_at,
            config.report_day,
            config.report_delivery.clone(),
        ))
    });

    let mut shutdown = std::pin::pin!(stocknet_common::server::shutdown_signal());
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut liveness = tokio::time::interval(LIVENESS_PERIOD);
    liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // (Shutdown first: a service that exits as it stops is not restarted.)
            biased;
            _ = &mut shutdown => break,
            _ = tick.tick() => supervise(&mut services),
            _ = liveness.tick() => check_liveness(&http, &mut services).await,
        }
    }
    if let Some(reports) = reports {
        reports.abort();
    }
    stop_all(&mut services).await;
    println!("StockNet stopped.");
    Ok(())
}

/// Pauses between the attempts of one day's scheduled report: a leader change or a restart at
/// the scheduled time costs it seconds, not the day.
const REPORT_RETRY_PAUSES: [Duration; 5] = [
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(120),
    Duration::from_secs(300),
];

/// Archives (and delivers) the report of the UTC day every day at `at` past midnight, UTC: the
/// day that is ending, as the serverless design's 23:59 job does. A run that fails is tried
/// again, [`REPORT_RETRY_PAUSES`] apart, and then logged as failed; `stocknet report --out`
/// catches a day up by hand.
async fn report_daily(
    frontend: BaseUrl,
    dir: PathBuf,
    at: Duration,
    covered: ReportDay,
    delivery: report::DeliveryArgs,
) {
    let at = u64::try_from(at.as_millis()).unwrap_or(0);
    loop {
        let (next, day) = next_report(now_millis(), at, covered);
        // Waited out by the time of day, a minute at a time: a clock stepped back meanwhile
        // (an NTP correction) must not make the report run before its time.
        while let Some(left) = next.checked_sub(now_millis()).filter(|&left| left > 0) {
            sleep(Duration::from_millis(left.min(60_000))).await;
        }
        match report_day(&frontend, &dir, &delivery, day, &REPORT_RETRY_PAUSES).await {
            Ok(()) => tracing::info!(date = %day_text(day), "daily report archived"),
            Err(e) => tracing::warn!(date = %day_text(day), "daily report failed: {e:#}"),
        }
    }
}

/// Fetches, archives and delivers `day`'s report, trying again after each of `pauses` while
/// it fails. (Delivery is recorded per channel: a retry sends nothing twice.)
async fn report_day(
    frontend: &BaseUrl,
    dir: &Path,
    delivery: &report::DeliveryArgs,
    day: u32,
    pauses: &[Duration],
) -> anyhow::Result<()> {
    let mut pauses = pauses.iter();
    let http = stocknet_common::http_client(Duration::from_secs(30));
    loop {
        let done = match report::fetch(&http, frontend, day).await {
            Ok(daily) => report::archive_and_deliver(&daily, dir, delivery, false).await,
            Err(e) => Err(e),
        };
        match (done, pauses.next()) {
            (Ok(()), _) => return Ok(()),
            (Err(e), Some(pause)) => {
                tracing::warn!(date = %day_text(day), "daily report failed, trying again in {pause:?}: {e:#}");
                sleep(*pause).await;
            }
            (Err(e), None) => return Err(e),
        }
    }
}

/// The binary this process runs, to start a service with, and the name to show for it (its
/// path). On Linux `/proc/self/exe`, which opens the file this process was started from even
/// after a rebuild replaced (deleted) it at its path: so a restart starts the same version as
/// the services beside it, and does not fail for a file gone.
fn own_binary() -> anyhow::Result<(PathBuf, PathBuf)> {
    let path = std::env::current_exe().context("cannot find the stocknet binary")?;
    let running = PathBuf::from("/proc/self/exe");
    Ok(if running.exists() {
        (running, path)
    } else {
        (path.clone(), path)
    })
}

/// When the next scheduled report runs after `now` (milliseconds since the epoch), `at` past
/// a UTC midnight, and the day it covers.
fn next_report(now: u64, at: u64, covered: ReportDay) -> (u64, u32) {
    let today = now - now % DAY_MS + at;
    let next = if today > now { today } else { today + DAY_MS };
    let day = match covered {
        ReportDay::Today => day_of(next),
        ReportDay::Yesterday => day_of(next - DAY_MS),
    };
    (next, day)
}

/// The descriptor under which each service holds the data directory's lock (after its socket).
const DATA_DIR_LOCK_FD: i32 = 4;

/// `<data dir>/up.lock`, locked (`flock`) for as long as this file or a copy of its descriptor
/// is open anywhere (each service holds one): two `up`s on one data directory would run two of
/// each service over the same files (two replicas appending to one log).
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join("up.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{} is in use by another `stocknet up`, or by services of one that are still stopping \
             (`fuser -v {}` names them); give this one another --data-dir",
            data_dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// A socket listening on `port` of 127.0.0.1 (0: a free port), to hand to a service.
fn bind(port: u16) -> anyhow::Result<TcpListener> {
    TcpListener::bind(("127.0.0.1", port)).with_context(|| format!("cannot listen on port {port}"))
}

/// The deployment's shared secret, `<data dir>/secret`: made on first run (64 random hex
/// digits, mode 0600), read afterwards. Returns its path, which every service is given.
fn ensure_secret(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("secret");
    let read = |path: &Path| {
        Secret::read(path).with_context(|| format!("the shared secret in {}", path.display()))
    };
    if path.exists() {
        read(&path)?;
        return Ok(path);
    }
    // Written whole beside it, then linked into place (which fails if it exists): a crash
    // while it is written leaves no secret file, never an empty one that no start accepts.
    let temp = data_dir.join(format!("secret.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        let secret = Secret::generate()?;
        file.write_all(secret.expose().as_bytes())?;
        file.sync_all()?;
        match std::fs::hard_link(&temp, &path) {
            // Another `up` made it first: theirs stands.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            linked => linked.and_then(|()| stocknet_common::file::sync_dir(&path)),
        }
    })();
    let removed = std::fs::remove_file(&temp);
    written.with_context(|| format!("cannot write {}", path.display()))?;
    removed.with_context(|| format!("cannot remove {}", temp.display()))?;
    read(&path)?;
    Ok(path)
}

fn plan(config: &UpConfig, secret: &Path, log_format: LogFormat) -> Vec<Service> {
    let local = |port: u16| format!("http://127.0.0.1:{port}");
    let data_dir = config.data_dir.display().to_string();
    let secret = secret.display().to_string();
    let replicas: Vec<String> = config
        .order_ports
        .iter()
        .enumerate()
        .map(|(i, port)| format!("{}={}", i + 1, local(*port)))
        .collect();
    let replicas = replicas.join(",");

    let mut catalog_args = vec![
        "catalog".into(),
        "--port".into(),
        config.catalog_port.to_string(),
        "--data-dir".into(),
        data_dir.clone(),
        "--frontends".into(),
        local(config.frontend_port),
        "--secret-file".into(),
        secret.clone(),
    ];
    if let Some(initial) = &config.initial_catalog {
        catalog_args.extend(["--initial-catalog".into(), initial.display().to_string()]);
    }
    let mut services = vec![Service::new(
        "catalog".into(),
        catalog_args,
        format!("{}/health", local(config.catalog_port)),
        config.catalog_port,
        log_format,
        serial_service_workers(),
    )];
    for (i, port) in config.order_ports.iter().enumerate() {
        services.push(
            Service::new(
                format!("order {}", i + 1),
                vec![
                    "order".into(),
                    "--port".into(),
                    port.to_string(),
                    "--node-id".into(),
                    (i + 1).to_string(),
                    "--peers".into(),
                    replicas.clone(),
                    "--catalog-url".into(),
                    local(config.catalog_port),
                    "--data-dir".into(),
                    data_dir.clone(),
                    "--secret-file".into(),
                    secret.clone(),
                ],
                format!("{}/ready", local(*port)),
                *port,
                log_format,
                serial_service_workers(),
            )
            .allowing(ORDER_LIVENESS_FAILURES, ORDER_STARTUP),
        );
    }
    let mut frontend_args = vec![
        "frontend".into(),
        "--port".into(),
        config.frontend_port.to_string(),
        "--catalog-url".into(),
        local(config.catalog_port),
        "--order-replicas".into(),
        replicas,
        "--cache-size".into(),
        config.cache_size.to_string(),
        "--secret-file".into(),
        secret,
    ];
    if config.no_cache {
        frontend_args.push("--no-cache".into());
    }
    services.push(Service::new(
        "frontend".into(),
        frontend_args,
        format!("{}/health", local(config.frontend_port)),
        config.frontend_port,
        log_format,
        None,
    ));
    services
}

/// Waits until every service is ready, restarting any that crash meanwhile.
async fn wait_ready(http: &reqwest::Client, services: &mut [Service]) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    for index in 0..services.len() {
        loop {
            supervise(services);
            let service = &services[index];
            let ready = http
                .get(&service.ready_url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                // Started: from now on it is expected to answer.
                services[index].liveness.heard(true, Instant::now());
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not become ready at {}",
                    service.name,
                    service.ready_url
                );
            }
            sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// How often `up` asks every service's `/health` once it runs, and how long each answer may
/// take. A process that hangs (SIGSTOP, a deadlock) answers nothing but does not exit: after
/// its allowance of checks in a row without an answer it is killed and restarted like one that
/// died, as Kubernetes' liveness probe does. A hung frontend would otherwise slow every trade's
/// invalidation push for good, and a hung catalog fail every order.
const LIVENESS_PERIOD: Duration = Duration::from_secs(2);
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(1);
/// The frontend's and the catalog's allowance: 10 s.
const LIVENESS_FAILURES: u32 = 5;
/// An order replica's: 60 s, as on Kubernetes. (A replica installing a snapshot holds its log
/// for the install, about 35 s for 10 M lines; its health check answers at once all the same.)
const ORDER_LIVENESS_FAILURES: u32 = 30;

/// How long an order replica may take to start before its checks count (it replays its log
/// before it serves): the startup probe's bound on Kubernetes.
const ORDER_STARTUP: Duration = Duration::from_secs(600);

/// A service's liveness checks since it started. Until it has answered once it is starting (an
/// order replica replays its log before it serves) and is not counted against, for its
/// startup allowance at most: a start that hangs before it ever answers is a hang too.
#[derive(Debug)]
struct Liveness {
    allowed: u32,
    startup: Duration,
    started: Instant,
    answered: bool,
    failures: u32,
}

impl Liveness {
    /// Started now, no check yet; killed after `allowed` failed checks in a row, counted from
    /// its first answer or once `startup` has passed.
    fn new(allowed: u32, startup: Duration) -> Self {
        Self {
            allowed,
            startup,
            started: Instant::now(),
            answered: false,
            failures: 0,
        }
    }

    /// Counts a check made at `now`; whether the service hangs.
    fn heard(&mut self, answered: bool, now: Instant) -> bool {
        if answered {
            self.answered = true;
            self.failures = 0;
            return false;
        }
        if self.answered || now.duration_since(self.started) >= self.startup {
            self.failures += 1;
        }
        self.failures >= self.allowed
    }
}

/// Asks every running service's `/health` at once, and kills those that hang.
async fn check_liveness(http: &reqwest::Client, services: &mut [Service]) {
    let mut checks = tokio::task::JoinSet::new();
    for (index, service) in services.iter().enumerate() {
        let url = format!("http://127.0.0.1:{}/health", service.port);
        let check = http.get(url).timeout(LIVENESS_TIMEOUT);
        checks.spawn(async move {
            let answer = check.send().await;
            (index, answer.is_ok_and(|a| a.status().is_success()))
        });
    }
    let mut answered = vec![false; services.len()];
    while let Some(Ok((index, answer))) = checks.join_next().await {
        answered[index] = answer;
    }
    for (service, answered) in services.iter_mut().zip(answered) {
        service.checked(answered);
    }
}

/// How a service is restarted: at once after it ran a while, later and later (up to
/// [`MAX_RESTART_WAIT`]) while it keeps exiting soon after it starts, so that one that cannot
/// start (a log it refuses to read) does not take the CPU from those that run.
#[derive(Debug, Default)]
struct Restart {
    started: Option<Instant>,
    wait: Duration,
    at: Option<Instant>,
}

/// How long a service must run for its next restart to be at once.
const RAN_LONG_ENOUGH: Duration = Duration::from_secs(30);
const FIRST_RESTART_WAIT: Duration = Duration::from_millis(200);
const MAX_RESTART_WAIT: Duration = Duration::from_secs(10);

/// The wait before the next restart of a service that ran for `ran` after a wait of
/// `previous` before its last start.
fn restart_wait(ran: Duration, previous: Duration) -> Duration {
    if ran >= RAN_LONG_ENOUGH {
        Duration::ZERO
    } else {
        (previous * 2).clamp(FIRST_RESTART_WAIT, MAX_RESTART_WAIT)
    }
}

/// Restarts every service whose process has exited, when its wait is over. An order replica
/// resyncs on restart.
fn supervise(services: &mut [Service]) {
    let now = Instant::now();
    for service in services {
        let exited = match service.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Err(e)) => Some(e.to_string()),
            None => None,
            Some(Ok(None)) => continue,
        };
        if let Some(why) = exited {
            service.child = None;
            let ran = service.restart.started.map_or(Duration::ZERO, |s| now - s);
            let wait = restart_wait(ran, service.restart.wait);
            service.restart.wait = wait;
            service.restart.at = Some(now + wait);
            tracing::warn!(service = %service.name, restarts = service.restarts, "exited ({why}); restarting in {wait:?}");
        }
        if service.restart.at.is_none_or(|at| now >= at) {
            service.restarts += 1;
            service.restart.at = None;
            if let Err(e) = service.spawn() {
                tracing::error!("{e:#}");
                let wait = restart_wait(Duration::ZERO, service.restart.wait);
                service.restart.wait = wait;
                service.restart.at = Some(now + wait);
            }
        }
    }
}

async fn stop_all(services: &mut [Service]) {
    // Frontend first, catalog last: nothing is left calling a stopped service.
    for service in services.iter_mut().rev() {
        service.stop().await;
    }
}

fn print_banner(config: &UpConfig) {
    println!("StockNet is up (data in {}):", config.data_dir.display());
    println!(
        "  frontend  http://127.0.0.1:{}   <- the public API",
        config.frontend_port
    );
    println!("  catalog   http://127.0.0.1:{}", config.catalog_port);
    for (i, port) in config.order_ports.iter().enumerate() {
        println!("  order {}   http://127.0.0.1:{port}", i + 1);
    }
    println!(
        "Open the console at http://127.0.0.1:{}/ or try: curl http://127.0.0.1:{}/stocks/GameStart",
        config.frontend_port, config.frontend_port
    );
    println!("Ctrl-C stops everything.");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frontend whose report route fails its first `failing` calls (503), then answers;
    /// returns its URL and the calls it got.
    async fn reporting_frontend(
        failing: usize,
    ) -> (BaseUrl, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let app = axum::Router::new().route(
            "/reports/daily",
            axum::routing::get(move || {
                let call = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    if call < failing {
                        let refused = serde_json::json!({"error": {"code": 503, "message": "No leader"}});
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(refused))
                    } else {
                        let report = serde_json::json!({"data": {"date": "2026-12-06", "stocks": [], "top_users": []}});
                        (axum::http::StatusCode::OK, axum::Json(report))
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url.parse().unwrap(), calls)
    }

    /// A scheduled report that fails (no leader for a moment at its time) is tried again for
    /// the same day, not left until the next day's run covers the next day.
    #[tokio::test]
    async fn a_scheduled_report_that_fails_is_tried_again_for_its_day() {
        use std::sync::atomic::Ordering;
        #[derive(clap::Parser)]
        struct Args {
            #[command(flatten)]
            delivery: report::DeliveryArgs,
        }
        let Args { delivery } = clap::Parser::parse_from(["up"]);
        let day = day_of(1_796_515_200_000);
        let pauses = [Duration::from_millis(1); 2];

        let (frontend, calls) = reporting_frontend(2).await;
        let dir = tempfile::tempdir().unwrap();
        report_day(&frontend, dir.path(), &delivery, day, &pauses)
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(dir.path().join("2026-12-06.json").exists());

        let (frontend, calls) = reporting_frontend(usize::MAX).await;
        let failed = report_day(&frontend, dir.path(), &delivery, day, &pauses).await;
        assert!(failed.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "once, then after each pause"
        );
    }

    #[test]
    fn a_service_that_answered_and_then_stops_answering_is_killed_after_five_checks() {
        let mut liveness = Liveness::new(LIVENESS_FAILURES, READY_TIMEOUT);
        let now = liveness.started;
        // Starting: no answer yet is not held against it.
        for _ in 0..10 {
            assert!(!liveness.heard(false, now));
        }
        assert!(!liveness.heard(true, now));
        for _ in 1..LIVENESS_FAILURES {
            assert!(!liveness.heard(false, now));
        }
        // One answer starts the count again.
        assert!(!liveness.heard(true, now));
        for _ in 1..LIVENESS_FAILURES {
            assert!(!liveness.heard(false, now));
        }
        assert!(liveness.heard(false, now));
    }

    /// A start that hangs before it ever answers (a restarted service stuck opening its files)
    /// is killed too, once its startup allowance has passed.
    #[test]
    fn a_start_that_never_answers_is_killed_after_its_startup_allowance() {
        let mut liveness = Liveness::new(LIVENESS_FAILURES, READY_TIMEOUT);
        let starting = liveness.started + READY_TIMEOUT / 2;
        for _ in 0..10 {
            assert!(!liveness.heard(false, starting));
        }
        let late = liveness.started + READY_TIMEOUT;
        for _ in 1..LIVENESS_FAILURES {
            assert!(!liveness.heard(false, late));
        }
        assert!(liveness.heard(false, late));
    }

    #[test]
    fn a_service_that_keeps_exiting_is_restarted_later_and_later() {
        let soon = Duration::from_millis(300);
        let mut wait = Duration::ZERO;
        let mut waits = Vec::new();
        for _ in 0..8 {
            wait = restart_wait(soon, wait);
            waits.push(wait.as_millis());
        }
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        // One that ran a while is restarted at once, and starts over.
        assert_eq!(restart_wait(RAN_LONG_ENOUGH, wait), Duration::ZERO);
        assert_eq!(restart_wait(soon, Duration::ZERO), FIRST_RESTART_WAIT);
    }

    #[test]
    fn the_secret_is_made_once_private_and_whole_and_read_after() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let path = ensure_secret(dir.path()).unwrap();
        let made = std::fs::read_to_string(&path).unwrap();
        assert!(Secret::new(&made).is_ok());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(ensure_secret(dir.path()).unwrap(), path);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), made);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["secret"], "nothing left beside it");
        // One left empty (by a version that crashed while writing it) is named in the error.
        std::fs::write(&path, "").unwrap();
        let refused = ensure_secret(dir.path()).unwrap_err();
        assert!(
            format!("{refused:#}").contains(&path.display().to_string()),
            "{refused:#}"
        );
    }

    #[test]
    fn a_scheduled_report_covers_the_day_it_runs_in_or_the_one_before() {
        let midnight = 20_000 * DAY_MS;
        let ten_past = 10 * 60_000;
        let ends = DAY_MS - 60_000;
        // Before 23:59: tonight's run, for today.
        let evening = midnight + 20 * 3_600_000;
        assert_eq!(
            next_report(evening, ends, ReportDay::Today),
            (midnight + ends, 20_000)
        );
        // After 00:10 has passed: tomorrow's run, for tomorrow, or with `yesterday` for today.
        let noon = midnight + 12 * 3_600_000;
        let tomorrow_ten_past = midnight + DAY_MS + ten_past;
        assert_eq!(
            next_report(noon, ten_past, ReportDay::Yesterday),
            (tomorrow_ten_past, 20_000)
        );
        assert_eq!(
            next_report(noon, ten_past, ReportDay::Today),
            (tomorrow_ten_past, 20_001)
        );
        // Exactly at the time: the next day's run.
        assert_eq!(
            next_report(midnight + ten_past, ten_past, ReportDay::Yesterday),
            (tomorrow_ten_past, 20_000)
        );
    }

    #[test]
    fn a_time_of_day_is_hours_minutes_and_seconds_past_midnight() {
        assert_eq!(time_of_day("23:59"), Ok(Duration::from_secs(86_340)));
        assert_eq!(time_of_day("00:00:30"), Ok(Duration::from_secs(30)));
        for bad in ["24:00", "12:60", "12", "1:2:3:4", "noon", "12:00:60"] {
            assert!(time_of_day(bad).is_err(), "{bad}");
        }
    }
}
