//! How many connections a listener keeps open: in all, and from one client address. A client
//! that opens connections and sends nothing would otherwise hold one file descriptor each
//! until the process has none left, and then no other client gets in and the process's own
//! calls to other processes fail too (I13). A connection over either cap is closed as soon as
//! it is accepted; an idle one is closed by its server after a while
//! (`server::ConnectionRules::idle_timeout`), and so is one whose answer waits that long with
//! no byte of it taken (a client that does not read). What this does not do: without a cap per address,
//! one client can still hold every place until its connections idle out, and new clients are
//! refused meanwhile while those connected go on; and the reserve covers the process's calls
//! for idle clients, not for more than about a thousand requests in flight at once
//! (`--max-in-flight` bounds those per client).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// File descriptors kept for everything but the clients' connections (calls to other
/// processes, files, the listeners): this many, or a quarter of a lower open-file limit.
const RESERVED_DESCRIPTORS: u64 = 1024;

/// The address a client is counted by: an IPv4 address as it is, an IPv6 address by its /64,
/// which one host or customer usually holds whole (each of its 2^64 addresses would otherwise
/// be a client of its own).
pub fn client_address(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::from([a, b, c, d, 0, 0, 0, 0])
            }
        },
    }
}

/// What the clients' connections may use of an open-file limit of `limit` descriptors: all
/// but [`RESERVED_DESCRIPTORS`], or three quarters of a lower limit.
fn clients_under(limit: u64) -> u64 {
    limit - RESERVED_DESCRIPTORS.min(limit / 4)
}

/// The caps of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    pub total: usize,
    pub per_address: usize,
}

impl ConnectionCaps {
    /// No cap: for listeners only other StockNet processes reach.
    pub const NONE: Self = Self {
        total: usize::MAX,
        per_address: usize::MAX,
    };

    /// `per_address`, and `total` if given, else what this process's open-file limit leaves
    /// after [`RESERVED_DESCRIPTORS`].
    pub fn within_open_file_limit(total: Option<usize>, per_address: usize) -> Self {
        let total = total.unwrap_or_else(|| {
            let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
            let free = limit.map_or(u64::MAX, clients_under);
            usize::try_from(free).unwrap_or(usize::MAX)
        });
        Self { total, per_address }
    }
}

/// A TCP listener that keeps at most its [`ConnectionCaps`] open.
pub struct CappedListener {
    inner: TcpListener,
    caps: ConnectionCaps,
    open: Arc<Mutex<Open>>,
    /// How long a write may wait with no byte taken before the connection fails.
    write_stall: Option<Duration>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
    /// Connections closed at once, over a cap.
    refused: u64,
}

impl CappedListener {
    pub fn new(inner: TcpListener, caps: ConnectionCaps) -> Self {
        Self {
            inner,
            caps,
            open: Arc::default(),
            write_stall: None,
        }
    }

    /// Fails a connection's write that has waited `limit` with no byte taken: hyper has no
    /// write timeout, and a client that sends requests and never reads the answers would
    /// otherwise hold its place (and the answer's buffers) for good.
    pub fn failing_writes_stalled_for(mut self, limit: Option<Duration>) -> Self {
        self.write_stall = limit;
        self
    }

    fn open(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a connection from `address` in, unless that would pass a cap.
    fn admit(&self, address: IpAddr) -> Option<OpenConnection> {
        let mut open = self.open();
        let from_address = open.by_address.get(&address).copied().unwrap_or(0);
        if open.total >= self.caps.total || from_address >= self.caps.per_address {
            open.refused += 1;
            // Once, then every 1,000th: a client that keeps trying must not flood the log.
            if open.refused % 1000 == 1 {
                tracing::warn!(
                    %address,
                    open = open.total,
                    from_address,
                    refused = open.refused,
                    "a connection over the caps is closed at once"
                );
            }
            return None;
        }
        open.total += 1;
        open.by_address.insert(address, from_address + 1);
        Some(OpenConnection {
            address,
            open: self.open.clone(),
        })
    }
}

impl Listener for CappedListener {
    type Io = CountedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CountedStream, SocketAddr) {
        loop {
            // (axum's accept retries on errors, such as running out of descriptors.)
            let (stream, address) = Listener::accept(&mut self.inner).await;
            if let Some(counted) = self.admit(client_address(address.ip())) {
                let stream = CountedStream {
                    stream,
                    _counted: counted,
                    stall_limit: self.write_stall,
                    stalled: None,
                };
                return (stream, address);
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection counted as open until it is dropped.
struct OpenConnection {
    address: IpAddr,
    open: Arc<Mutex<Open>>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        if let Some(count) = open.by_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.by_address.remove(&self.address);
            }
        }
    }
}

/// An accepted connection, counted against its listener's caps while it is open.
pub struct CountedStream {
    stream: TcpStream,
    _counted: OpenConnection,
    stall_limit: Option<Duration>,
    /// Armed while a write waits for the client to take bytes; it fails the write once due.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl CountedStream {
    pub fn tcp(&self) -> &TcpStream {
        &self.stream
    }

    /// `written`, but for a write that has waited past the stall limit: an error.
    fn unless_stalled<T>(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let Some(limit) = self.stall_limit else {
            return written;
        };
        if written.is_ready() {
            self.stalled = None;
            return written;
        }
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took no byte of its answer for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.unless_stalled(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.unless_stalled(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;

    use super::*;

    /// A connection the listener closed at once reads its end within a bound.
    async fn closed_at_once(stream: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await;
        matches!(read, Ok(Ok(0)) | Ok(Err(_)))
    }

    /// Two connections are let in under `caps`; a third is closed at once while they are
    /// open; once one of them closes, the next gets in.
    async fn third_waits_for_a_place(caps: ConnectionCaps) {
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = inner.local_addr().unwrap();
        let mut listener = CappedListener::new(inner, caps);
        let mut clients = Vec::new();
        let mut accepted = Vec::new();
        for _ in 0..2 {
            clients.push(TcpStream::connect(address).await.unwrap());
            accepted.push(listener.accept().await.0);
        }
        // The kernel takes it; the listener closes it and waits on.
        let mut third = TcpStream::connect(address).await.unwrap();
        let waiting = tokio::spawn(async move { listener.accept().await.0 });
        assert!(closed_at_once(&mut third).await, "{caps:?}");

        drop(accepted.pop());
        let fourth = TcpStream::connect(address).await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a place was freed")
            .unwrap();
        assert_eq!(
            next.tcp().peer_addr().unwrap(),
            fourth.local_addr().unwrap()
        );
    }

    #[tokio::test]
    async fn one_address_gets_no_more_than_its_cap() {
        third_waits_for_a_place(ConnectionCaps {
            total: 100,
            per_address: 2,
        })
        .await;
    }

    #[tokio::test]
    async fn all_addresses_together_get_no_more_than_the_total() {
        third_waits_for_a_place(ConnectionCaps {
            total: 2,
            per_address: 100,
        })
        .await;
    }

    #[test]
    fn the_default_total_leaves_descriptors_for_everything_else() {
        for (limit, clients) in [(100_000, 98_976), (4096, 3072), (1024, 768), (0, 0)] {
            assert_eq!(clients_under(limit), clients, "{limit}");
        }
        assert_eq!(
            ConnectionCaps::within_open_file_limit(Some(7), 3),
            ConnectionCaps {
                total: 7,
                per_address: 3
            }
        );
    }
}
