//! Serving a router: middleware shared by every service, graceful shutdown, logging.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::serve::Listener;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::connections::{CappedListener, ConnectionCaps};
use crate::envelope::{method_not_allowed, route_not_found};
use crate::head_timer::HeadTimer;
use crate::metrics::HttpMetrics;
use crate::request_id;
pub use crate::served::around_routes;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

/// What a service's `run` fails with: its store could not open, or its socket failed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest request body any StockNet endpoint accepts (replication batches included).
pub const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// Adds what every service router needs inside routing: envelope fallbacks. [`serve`] adds
/// what every request gets around routing, the body limit among it ([`around_routes`]).
pub fn with_common_layers(router: Router) -> Router {
    router
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// A service's routes with the common layers, each request recorded in `http`.
pub fn service_router(routes: Router, http: &HttpMetrics) -> Router {
    crate::metrics::tracked(with_common_layers(routes), http)
}

/// Writes each log line as `format` does, with the id of the request being served, if any:
/// ` request_id=<id>` at the end of a text line, a `request_id` field in a JSON one. The id
/// is read when a line is written (it is the serving task's), so requests that log nothing
/// cost nothing.
struct WithRequestId<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithRequestId<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some(id) = request_id::current() else {
            return self.0.format_event(context, writer, event);
        };
        let id = id.to_str().unwrap_or_default();
        let mut line = String::new();
        self.0
            .format_event(context, Writer::new(&mut line), event)?;
        let body = line.trim_end_matches('\n');
        match body.strip_suffix('}') {
            // Ids are letters, digits and `-_.:`: nothing to escape.
            Some(object) if body.starts_with('{') => {
                writeln!(writer, "{object},\"request_id\":\"{id}\"}}")
            }
            _ => writeln!(writer, "{body} request_id={id}"),
        }
    }
}

/// A service serving in the background: the address it listens on (with port 0 in its flags,
/// the one the system picked), and its task.
pub struct Running {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<Result<(), BoxError>>,
}

impl Running {
    /// `serving`, spawned, which listens on `addr`.
    pub fn spawn(
        addr: SocketAddr,
        serving: impl Future<Output = Result<(), BoxError>> + Send + 'static,
    ) -> Self {
        Self {
            addr,
            task: tokio::spawn(serving),
        }
    }

    /// Waits until it stopped (its shutdown came and in-flight requests were answered), and
    /// how.
    pub async fn stopped(self) -> Result<(), BoxError> {
        self.task.await?
    }
}

/// How a listening port treats its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionRules {
    /// How many it keeps open (`connections.rs`).
    pub caps: ConnectionCaps,
    /// How long a connection may go without sending a whole request head, from when it opens
    /// or its last answer was written; then it is closed (without an answer). So a
    /// client that sends nothing, or its headers a byte at a time, does not hold its place
    /// for ever. A request being answered, and a WebSocket stream, are not idle; but an
    /// answer that waits this long with no byte of it taken (a client that does not read)
    /// closes the connection too.
    pub idle_timeout: Option<Duration>,
}

impl ConnectionRules {
    /// No cap, no timeout: for ports only other StockNet processes reach, which keep their
    /// connections pooled.
    pub const INSIDE: Self = Self {
        caps: ConnectionCaps::NONE,
        idle_timeout: None,
    };
}

/// Serves until `shutdown` resolves, then finishes in-flight requests. Handlers can see the
/// client's address (`ConnectInfo<SocketAddr>`), e.g. to limit each client's rate.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, ConnectionRules::INSIDE, router, shutdown).await
}

/// [`serve`], under `rules`: for a port clients reach. HTTP/1.1, as axum's `serve`, whose
/// loop this is but for the timer that hyper's idle timeout needs. `routes` is a router, or
/// a service that answers some requests before its router does.
pub async fn serve_with<S>(
    listener: TcpListener,
    rules: ConnectionRules,
    routes: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let app = around_routes(routes);
    let mut listener =
        CappedListener::new(listener, rules.caps).failing_writes_stalled_for(rules.idle_timeout);
    let http = hyper::server::conn::http1::Builder::new();
    // Each connection holds a sender of `finish`, whose one receiver is dropped to ask them
    // all to finish, and a receiver of `finished`, whose sender sees when they all have.
    let (finish, finish_asked) = watch::channel(());
    let (finished, serving_connection) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (connection, client) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        // An answer written in parts (a batch's lines, a stream's frames) goes out part by
        // part: with Nagle's algorithm a part would wait for the peer's delayed
        // acknowledgement (40 ms).
        if let Err(e) = connection.tcp().set_nodelay(true) {
            tracing::warn!("cannot set TCP_NODELAY on a connection: {e}");
        }
        let service = app
            .clone()
            .map_request(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(client));
                request.map(axum::body::Body::new)
            });
        let mut http = http.clone();
        if let Some(timeout) = rules.idle_timeout {
            http.timer(HeadTimer::default())
                .header_read_timeout(timeout);
        }
        let serving = http
            .serve_connection(TokioIo::new(connection), TowerToHyperService::new(service))
            .with_upgrades();
        let finish = finish.clone();
        let serving_connection = serving_connection.clone();
        tokio::spawn(async move {
            let mut serving = std::pin::pin!(serving);
            let served = tokio::select! {
                served = serving.as_mut() => served,
                () = finish.closed() => {
                    serving.as_mut().graceful_shutdown();
                    serving.await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%client, "connection ended: {e}");
            }
            drop(serving_connection);
        });
    }
    drop(listener);
    drop(finish_asked);
    drop(serving_connection);
    finished.closed().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received");
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: coloured only when stderr is a terminal, so files and pipes stay plain.
    #[default]
    Text,
    /// One JSON object a line, for a log stack.
    Json,
}

impl LogFormat {
    /// The value of `--log-format` (and `STOCKNET_LOG_FORMAT`) that selects this format.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// How log lines are written: text, or json (one object a line).
    #[arg(long, env = LOG_FORMAT_ENV, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// The environment variable of `--log-format`, which `stocknet up` passes to its services.
pub const LOG_FORMAT_ENV: &str = "STOCKNET_LOG_FORMAT";

/// Logs to stderr in `format`, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second call (tests, `up` in-process) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .event_format(WithRequestId(tracing_subscriber::fmt::format()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .event_format(WithRequestId(
                tracing_subscriber::fmt::format().json().flatten_event(true),
            ))
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::http::HeaderValue;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::Notify;
    use tokio::time::timeout;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;
    use axum::extract::Request;
    use axum::response::Response;

    /// Every wait of these tests is bounded by this.
    const WAIT: Duration = Duration::from_secs(10);

    /// Reads from `stream` until what it read contains `text`, and returns it all.
    async fn read_until(stream: &mut TcpStream, text: &str) -> String {
        let mut read = Vec::new();
        let mut buffer = [0; 1024];
        while !String::from_utf8_lossy(&read).contains(text) {
            let n = timeout(WAIT, stream.read(&mut buffer))
                .await
                .expect("an answer in time")
                .expect("a read");
            assert!(
                n > 0,
                "closed before {text:?}: {}",
                String::from_utf8_lossy(&read)
            );
            read.extend_from_slice(&buffer[..n]);
        }
        String::from_utf8_lossy(&read).into_owned()
    }

    /// Whether the server closes `stream` (within the bounded wait) without another byte.
    async fn closed_silently(stream: &mut TcpStream) -> bool {
        let mut rest = Vec::new();
        let read = timeout(WAIT, stream.read_to_end(&mut rest)).await;
        matches!(read, Ok(Ok(0)))
    }

    /// Switches the connection to a protocol of its own, which sends back what it receives.
    async fn echo(mut request: Request) -> Response {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let mut connection = TokioIo::new(upgrade.await.expect("upgraded"));
            let mut buffer = [0; 64];
            while let Ok(n @ 1..) = connection.read(&mut buffer).await {
                if connection.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
            }
        });
        Response::builder()
            .status(axum::http::StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(axum::body::Body::empty())
            .expect("a valid answer")
    }

    /// The routes of these tests: `/quick`; `/slow`, which says it began on `began` and
    /// answers once `release` is notified; `/client`, the client's address as the handler
    /// sees it; and `/echo`.
    fn test_routes(began: Arc<Notify>, release: Arc<Notify>) -> Router {
        Router::new()
            .route("/quick", get(|| async { "quick" }))
            .route(
                "/client",
                get(|ConnectInfo(client): ConnectInfo<SocketAddr>| async move {
                    format!("from {client} end")
                }),
            )
            .route("/echo", get(echo))
            .route(
                "/slow",
                get(move || async move {
                    began.notify_one();
                    release.notified().await;
                    "slow"
                }),
            )
    }

    /// A router served under test on a free port.
    struct TestServer {
        addr: SocketAddr,
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    impl TestServer {
        async fn start(router: Router, rules: ConnectionRules) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(serve_with(listener, rules, router, async {
                let _ = stopped.await;
            }));
            Self { addr, stop, task }
        }

        /// Shuts it down, and waits (bounded) until it has stopped.
        async fn stop(self) {
            self.stop.send(()).unwrap();
            timeout(WAIT, self.task).await.unwrap().unwrap().unwrap();
        }
    }

    /// A connection on which `GET /slow` has begun (its handler notified `began`).
    async fn slow_begun(addr: SocketAddr, began: &Notify) -> TcpStream {
        let mut connection = TcpStream::connect(addr).await.unwrap();
        connection
            .write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        timeout(WAIT, began.notified()).await.expect("/slow begun");
        connection
    }

    /// `GET path` on `connection`, answered with a body ending in `end`: the answer.
    async fn get_on(connection: &mut TcpStream, path: &str, end: &str) -> String {
        let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
        connection.write_all(request.as_bytes()).await.unwrap();
        let answer = read_until(connection, end).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        answer
    }

    const IDLE: Duration = Duration::from_millis(300);

    fn idle_after(timeout: Duration) -> ConnectionRules {
        ConnectionRules {
            caps: ConnectionCaps::NONE,
            idle_timeout: Some(timeout),
        }
    }

    /// A client that asks and never reads its answer loses its connection once the answer
    /// has waited the idle timeout with no byte taken: its place goes to the next client.
    #[tokio::test]
    async fn a_client_that_does_not_read_its_answer_loses_its_place() {
        // More than the kernel buffers on both sides hold.
        let large = axum::body::Bytes::from(vec![b'x'; 64 << 20]);
        let router = Router::new()
            .route("/large", get(move || async move { large.clone() }))
            .route("/quick", get(|| async { "quick" }));
        let rules = ConnectionRules {
            caps: ConnectionCaps {
                total: 1,
                per_address: 1,
            },
            idle_timeout: Some(IDLE),
        };
        let server = TestServer::start(router, rules).await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut reader_that_never_reads = socket.connect(server.addr).await.unwrap();
        let request = "GET /large HTTP/1.1\r\nHost: a\r\n\r\n";
        reader_that_never_reads
            .write_all(request.as_bytes())
            .await
            .unwrap();
        // The one place is taken until the stalled answer fails: later clients are closed at
        // once meanwhile, and then one gets in.
        let started = tokio::time::Instant::now();
        loop {
            let mut next = TcpStream::connect(server.addr).await.unwrap();
            next.write_all(b"GET /quick HTTP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            let mut answer = Vec::new();
            let _ = timeout(WAIT, next.read_to_end(&mut answer)).await;
            if String::from_utf8_lossy(&answer).contains("quick") {
                break;
            }
            assert!(
                started.elapsed() < WAIT,
                "the stalled connection kept its place"
            );
            tokio::time::sleep(IDLE / 4).await;
        }
        drop(reader_that_never_reads);
        server.stop().await;
    }

    /// Idle is counted from the last answer, not from the connection's start; and handlers
    /// see the client's address.
    #[tokio::test]
    async fn a_connection_is_closed_once_idle_since_its_last_answer() {
        let router = test_routes(Arc::default(), Arc::default());
        let server = TestServer::start(router, idle_after(IDLE)).await;
        let mut connection = TcpStream::connect(server.addr).await.unwrap();
        let client = connection.local_addr().unwrap();
        // Three requests over 400 ms, longer than the timeout, each within it of the last.
        for _ in 0..3 {
            let answer = get_on(&mut connection, "/client", "end").await;
            assert!(answer.contains(&format!("from {client} end")), "{answer}");
            tokio::time::sleep(IDLE * 2 / 3).await;
        }
        get_on(&mut connection, "/quick", "quick").await;
        let answered = tokio::time::Instant::now();
        assert!(closed_silently(&mut connection).await, "closed once idle");
        // (Less a margin for the time the answer took to be read here.)
        assert!(answered.elapsed() >= IDLE * 5 / 6, "not before the timeout");
        server.stop().await;
    }

    #[tokio::test]
    async fn trickling_connections_are_closed_and_requests_being_answered_are_not() {
        let (began, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let router = test_routes(began.clone(), release.clone());
        let server = TestServer::start(router, idle_after(IDLE)).await;
        let addr = server.addr;

        let mut answering = slow_begun(addr, &began).await;
        let mut upgraded = TcpStream::connect(addr).await.unwrap();
        upgraded
            .write_all(
                b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
            )
            .await
            .unwrap();
        let switched = read_until(&mut upgraded, "\r\n\r\n").await;
        assert!(switched.starts_with("HTTP/1.1 101"), "{switched}");
        let mut trickling = TcpStream::connect(addr).await.unwrap();
        let opened = tokio::time::Instant::now();
        trickling
            .write_all(b"GET /quick HTTP/1.1\r\nHo")
            .await
            .unwrap();
        tokio::time::sleep(IDLE / 2).await;
        trickling.write_all(b"st: a\r\nX-More: ").await.unwrap();

        assert!(
            closed_silently(&mut trickling).await,
            "a head not whole within the timeout is cut off"
        );
        assert!(opened.elapsed() >= IDLE * 5 / 6, "not before the timeout");
        // The request begun before it is still answered, and the upgraded connection (as a
        // WebSocket stream's) is still open.
        release.notify_one();
        let answer = read_until(&mut answering, "slow").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        upgraded.write_all(b"still here").await.unwrap();
        assert_eq!(read_until(&mut upgraded, "still here").await, "still here");
        server.stop().await;
    }

    /// At shutdown an idle connection is closed at once, and the server stops once the
    /// requests being answered are, each answer saying the connection closes.
    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_finishes_requests_being_answered() {
        let (began, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let router = test_routes(began.clone(), release.clone());
        let TestServer { addr, stop, task } =
            TestServer::start(router, ConnectionRules::INSIDE).await;
        let mut answering = slow_begun(addr, &began).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        get_on(&mut idle, "/quick", "quick").await;

        stop.send(()).unwrap();
        assert!(
            closed_silently(&mut idle).await,
            "an idle one closes at once"
        );
        assert!(
            !task.is_finished(),
            "it waits for the request being answered"
        );
        release.notify_one();
        let answer = read_until(&mut answering, "slow").await;
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        timeout(WAIT, task).await.unwrap().unwrap().unwrap();
    }

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    /// Logs one line outside any request and one while serving request `abc-7`.
    async fn log_both(subscriber: impl tracing::Subscriber + Send + Sync + 'static) {
        let _guard = tracing::subscriber::set_default(subscriber);
        tracing::info!("outside");
        let id = HeaderValue::from_static("abc-7");
        request_id::CURRENT
            .scope(id, async { tracing::warn!(stock = "GameStart", "inside") })
            .await;
    }

    #[tokio::test]
    async fn lines_logged_while_serving_a_request_carry_its_id() {
        let text = Lines::default();
        log_both(
            tracing_subscriber::fmt()
                .with_writer(text.clone())
                .with_ansi(false)
                .event_format(WithRequestId(tracing_subscriber::fmt::format()))
                .finish(),
        )
        .await;
        let text = String::from_utf8(text.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with("outside"), "{text}");
        assert!(
            lines[1].ends_with("inside stock=\"GameStart\" request_id=abc-7"),
            "{text}"
        );

        let json = Lines::default();
        log_both(
            tracing_subscriber::fmt()
                .with_writer(json.clone())
                .json()
                .event_format(WithRequestId(
                    tracing_subscriber::fmt::format().json().flatten_event(true),
                ))
                .finish(),
        )
        .await;
        let json = String::from_utf8(json.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = json
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines[0].get("request_id"), None, "{json}");
        assert_eq!(lines[1]["request_id"], "abc-7", "{json}");
        assert_eq!(lines[1]["stock"], "GameStart", "{json}");
    }
}
