//! `--order-streams`: each user's own order updates followed on a `/ws/orders` stream for the
//! whole invocation, as a trader's screen does, so that a run measures trading with its feeds
//! open. Counts the updates received.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// How long a stream may take to say it is subscribed.
const SUBSCRIBE_DEADLINE: Duration = Duration::from_secs(10);

/// The open streams; they close when this is dropped.
pub struct OrderStreams {
    updates: Arc<AtomicU64>,
    /// Streams that ended before the invocation did (closed by the frontend, or broken).
    ended: Arc<AtomicU64>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl OrderStreams {
    /// One stream per key in `api_keys` on the frontend at `frontend` (`http://host:port`),
    /// each subscribed when this returns.
    pub async fn open(frontend: &str, api_keys: &[String]) -> anyhow::Result<Self> {
        let url = format!("ws{}/ws/orders", frontend.trim_start_matches("http"));
        let updates = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(AtomicU64::new(0));
        let mut readers = Vec::new();
        for key in api_keys {
            let mut request = url.as_str().into_client_request()?;
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {key}").parse()?);
            let (mut stream, _) = tokio::time::timeout(
                SUBSCRIBE_DEADLINE,
                tokio_tungstenite::connect_async(request),
            )
            .await
            .map_err(|_| anyhow::anyhow!("{url}: no handshake within {SUBSCRIBE_DEADLINE:?}"))??;
            let first = tokio::time::timeout(SUBSCRIBE_DEADLINE, stream.next()).await;
            match first {
                Ok(Some(Ok(Message::Text(text)))) if text.contains("\"subscribed\"") => {}
                other => anyhow::bail!("{url}: not subscribed: {other:?}"),
            }
            let (updates, ended) = (updates.clone(), ended.clone());
            readers.push(tokio::spawn(async move {
                while let Some(Ok(message)) = stream.next().await {
                    if let Message::Text(text) = message {
                        if text.contains("\"type\":\"update\"") {
                            updates.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                ended.fetch_add(1, Ordering::Relaxed);
            }));
        }
        Ok(Self {
            updates,
            ended,
            readers,
        })
    }

    /// Updates received so far.
    pub fn updates(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }

    /// Streams that ended so far.
    pub fn ended(&self) -> u64 {
        self.ended.load(Ordering::Relaxed)
    }
}

impl Drop for OrderStreams {
    fn drop(&mut self) {
        self.readers.iter().for_each(|reader| reader.abort());
    }
}
