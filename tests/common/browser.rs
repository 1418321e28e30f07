//! Headless Chromium driven over the Chrome DevTools Protocol (a WebSocket, with the
//! tokio-tungstenite the stream tests use already): navigate, evaluate script, screenshot.
//! Debian's `chromium` package; tests skip with a message where it is not installed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::{sleep, Instant};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The Chromium binary: `$STOCKNET_CHROMIUM`, or Debian's.
pub fn chromium() -> Option<String> {
    let candidates = std::env::var("STOCKNET_CHROMIUM").into_iter().chain([
        "/usr/bin/chromium".to_owned(),
        "/usr/bin/chromium-browser".to_owned(),
    ]);
    candidates
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
}

pub struct Browser {
    _process: Chromium,
    page: Socket,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts headless `chromium` at 1280×720 and attaches to its page.
    pub async fn start(chromium: &str) -> Self {
        let profile = tempfile::tempdir().expect("profile dir");
        let process = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,720",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        // Owned at once: a start that fails below kills it too.
        let mut process = Chromium(process);
        // It says where its DevTools endpoint listens on stderr.
        let stderr = BufReader::new(process.0.stderr.take().expect("piped stderr"));
        let (found, port) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ws://127.0.0.1:") {
                    let port: String = url.chars().take_while(char::is_ascii_digit).collect();
                    let _ = found.send(port);
                }
            }
        });
        let port = port
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium's DevTools port");
        let targets: Value = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/json/list"))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("DevTools targets")
            .json()
            .await
            .expect("targets JSON");
        let page_url = targets
            .as_array()
            .and_then(|all| all.iter().find(|t| t["type"] == "page"))
            .and_then(|page| page["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        let (page, _) = tokio::time::timeout(
            Duration::from_secs(30),
            tokio_tungstenite::connect_async(page_url),
        )
        .await
        .expect("attached to the page in time")
        .expect("attach to the page");
        let mut browser = Self {
            _process: process,
            page,
            next_id: 0,
            _profile: profile,
        };
        // The viewport the console must not break at.
        let viewport =
            json!({"width": 1280, "height": 720, "deviceScaleFactor": 1, "mobile": false});
        browser
            .command("Emulation.setDeviceMetricsOverride", viewport)
            .await;
        browser
    }

    /// Sends one DevTools command and returns its result (events meanwhile are skipped).
    pub async fn command(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": method, "params": params}).to_string();
        self.page
            .send(Message::Text(request.into()))
            .await
            .expect("send");
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), self.page.next())
                .await
                .expect("DevTools answers")
                .expect("page socket open")
                .expect("a message");
            let Message::Text(text) = message else {
                continue;
            };
            let reply: Value = serde_json::from_str(&text).expect("JSON");
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    pub async fn navigate(&mut self, url: &str) {
        self.command("Page.navigate", json!({"url": url})).await;
    }

    /// The value of a script expression in the page (awaited if it is a promise).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .command(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Waits (bounded) until `expression` is true in the page. Until then it may also throw: a
    /// page just navigated to may not have loaded the elements it names yet.
    pub async fn wait_for(&mut self, what: &str, expression: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let guarded = format!("(() => {{ try {{ return ({expression}) === true; }} catch (_) {{ return false; }} }})()");
        while self.eval(&guarded).await != json!(true) {
            if Instant::now() > deadline {
                let text = self.eval("document.body.innerText").await;
                panic!(
                    "the page never showed {what}; it shows:\n{}",
                    text.as_str().unwrap_or_default()
                );
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        let result = self
            .command("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        decode_base64(result["data"].as_str().expect("image data"))
    }
}

/// The browser's process, killed when dropped.
struct Chromium(Child);

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Standard base64, as DevTools sends images.
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    digits
        .chunks(4)
        .flat_map(|chunk| {
            let bits = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &d)| acc | (u32::from(d) << (18 - 6 * i)));
            let bytes = bits.to_be_bytes();
            bytes[1..chunk.len()].to_vec()
        })
        .collect()
}
