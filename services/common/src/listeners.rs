//! Where a service listens: the sockets the process that started it handed over, or the ports
//! it binds itself.
//!
//! A supervisor (`stocknet up`, systemd, the tests) may bind every port first — port 0
//! included, so the system picks free ones and nothing races for them — and so know every
//! address before it starts any process that needs them (the replicas each other's, the
//! catalog the frontends', the frontends all of them). It hands each process its sockets by
//! systemd's socket activation protocol: descriptors from 3 on, `LISTEN_FDS` of them, named by
//! `LISTEN_FDNAMES` (`public`, `internal`, `metrics`; without names the first is `public`).
//! A listener nobody handed over is bound from the flags as before.

use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::net::TcpListener;

/// The service's API (its `--port`).
pub const PUBLIC: &str = "public";
/// A frontend's internal routes (`--internal-port`).
pub const INTERNAL: &str = "internal";
/// The Prometheus scrape port (`--metrics-port`).
pub const METRICS: &str = "metrics";

/// The environment variable that names the handed-over descriptors, in order.
pub const NAMES_ENV: &str = "LISTEN_FDNAMES";

/// Handed-over listeners not taken yet, by name.
static HANDED_OVER: Mutex<Vec<(String, std::net::TcpListener)>> = Mutex::new(Vec::new());

/// Takes over the listeners this process was handed, if any. Call it first thing in `main`,
/// before any thread starts: it reads the protocol's environment variables and removes
/// `LISTEN_FDS`, so that a process this one starts does not take them for its own. A socket
/// handed over under a name no service asks for is never used.
pub fn adopt() -> std::io::Result<()> {
    let names = std::env::var(NAMES_ENV).unwrap_or_default();
    let mut names = names.split(':').filter(|name| !name.is_empty());
    let mut handed = listenfd::ListenFd::from_env();
    let mut adopted = Vec::new();
    for index in 0..handed.len() {
        let name = names.next().unwrap_or(if index == 0 { PUBLIC } else { "" });
        let listener = handed.take_tcp_listener(index)?.ok_or_else(|| {
            std::io::Error::other(format!("handed-over descriptor {index} is gone"))
        })?;
        adopted.push((name.to_owned(), listener));
    }
    *HANDED_OVER.lock().unwrap_or_else(|e| e.into_inner()) = adopted;
    Ok(())
}

/// The listener handed over as `name`, or else `addr` bound (port 0 picks a free port); with
/// the address it listens on.
pub async fn listen(name: &str, addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let handed = {
        let mut handed = HANDED_OVER.lock().unwrap_or_else(|e| e.into_inner());
        let index = handed.iter().position(|(n, _)| n == name);
        index.map(|index| handed.swap_remove(index).1)
    };
    let listener = match handed {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            TcpListener::from_std(listener)?
        }
        None => TcpListener::bind(addr).await?,
    };
    let local = listener.local_addr()?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listener_nobody_handed_over_is_bound_and_tells_its_port() {
        let (listener, addr) = listen(METRICS, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        assert_ne!(addr.port(), 0);
        assert_eq!(listener.local_addr().unwrap(), addr);
    }
}
