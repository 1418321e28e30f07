//! Calls between services go straight to the peer, whatever proxy the environment names;
//! calls out of the deployment go through it. (A test binary of its own: the proxy is set in
//! the process's environment, which every client built meanwhile would read.)

use std::time::Duration;

use stocknet_common::auth::Secret;
use stocknet_common::client::{http_client, internal_client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Answers every request with `{"data": reply}` and tells how many connections it accepted.
async fn answering(reply: &'static str) -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (accepted, count) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = accepted.send(());
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let body = format!("{{\"data\":\"{reply}\"}}");
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    (address, count)
}

#[tokio::test]
async fn a_proxy_in_the_environment_is_not_used() {
    let (peer, _) = answering("peer").await;
    let (proxy, mut proxied) = answering("proxy").await;
    // The only test of this binary: no other thread reads the environment meanwhile.
    std::env::set_var("HTTP_PROXY", &proxy);
    std::env::set_var("http_proxy", &proxy);
    std::env::remove_var("NO_PROXY");
    std::env::remove_var("no_proxy");
    let secret = Secret::new("a-shared-secret-long-enough-1234").unwrap();
    let clients = [
        http_client(Duration::from_secs(2)),
        internal_client(Duration::from_secs(2), &secret),
    ];
    for client in clients {
        let answer: String = stocknet_common::call(client.get(format!("{peer}/health")))
            .await
            .unwrap();
        assert_eq!(answer, "peer");
    }
    // A client for calls out of the deployment goes through it, as curl would.
    let outside = stocknet_common::outside_client(Duration::from_secs(2));
    let through: String = stocknet_common::call(outside.get(format!("{peer}/health")))
        .await
        .unwrap();
    assert_eq!(through, "proxy");
    assert!(proxied.try_recv().is_ok());
    assert!(
        proxied.try_recv().is_err(),
        "only the last call was proxied"
    );
}
