//! `stocknet report`: a day's market report, as a running StockNet serves it or recomputed
//! from an order log file: printed, or archived to a directory and delivered to a webhook.
//!
//! Archived, a date's report is `<date>.json` and `<date>.csv`, each replaced atomically, so a
//! re-run rewrites the same files. It is then delivered to a webhook, by mail, or both; each
//! delivery is recorded in `<date>.delivered`, so a re-run delivers again only where it has not
//! (or everywhere when asked: `--resend`). A delivery that fails leaves the files in place and
//! the command exits non-zero.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use stocknet_common::clock::{day_of, day_text, now_millis, parse_day, DAY_MS};
use stocknet_common::env;
use stocknet_common::file;
use stocknet_common::ports;
use stocknet_common::wire::{DailyReport, StockDay};
use stocknet_common::{BaseUrl, Price};

/// The header that carries a delivery's signature: `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "x-stocknet-signature";

#[derive(Debug, clap::Args)]
pub struct ReportConfig {
    /// The UTC day: YYYY-MM-DD, `today` or `yesterday`. Absent: today, or with `--out` the
    /// day that just ended.
    #[arg(long, env = env::REPORT_DATE)]
    pub date: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Md)]
    pub format: Format,
    /// The frontend to ask.
    #[arg(long, env = env::REPORT_FRONTEND, default_value = ports::FRONTEND_URL)]
    pub frontend: BaseUrl,
    /// Recompute the report from this order log (`orders-<id>.csv`) instead of asking a
    /// frontend. It reads the log as it is: use a replica's at quiescence, since a replica may
    /// hold a tail of entries that were never committed.
    #[arg(long, conflicts_with = "frontend")]
    pub log: Option<PathBuf>,
    /// Archive the report in this directory as `<date>.json` and `<date>.csv` instead of
    /// printing it; the date is then, by default, the UTC day that just ended.
    #[arg(long, env = env::REPORT_DIR)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
    /// Deliver again a report already delivered.
    #[arg(long, requires = "out")]
    pub resend: bool,
}

/// Where an archived report goes: a webhook, mail, both or neither.
#[derive(Debug, Clone, clap::Args)]
pub struct DeliveryArgs {
    #[command(flatten)]
    pub webhook: WebhookArgs,
    #[command(flatten)]
    pub mail: MailArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct MailArgs {
    /// Mail the archived report through this SMTP server: `smtp://host[:port]` (port 587; the
    /// connection is upgraded with STARTTLS when the server offers it, and must be when there
    /// are credentials) or `smtps://host[:port]` (port 465, TLS from the start).
    #[arg(long, env = env::REPORT_SMTP_URL, requires_all = ["mail_from", "mail_to"])]
    pub smtp_url: Option<reqwest::Url>,
    /// The sender's address, e.g. `StockNet <reports@example.com>`.
    #[arg(long, env = env::REPORT_MAIL_FROM)]
    pub mail_from: Option<String>,
    /// The recipients' addresses, comma-separated.
    #[arg(long, env = env::REPORT_MAIL_TO, value_delimiter = ',')]
    pub mail_to: Vec<String>,
    /// A file holding `user:password` to log in to the SMTP server with (none: no login).
    #[arg(long, env = env::REPORT_SMTP_CREDENTIALS_FILE, requires = "smtp_url")]
    pub smtp_credentials_file: Option<PathBuf>,
    /// Attempts at mailing before it fails, 1 s apart and doubling.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub smtp_attempts: u32,
}

#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// POST the archived report's JSON here, signed (header `X-StockNet-Signature`).
    #[arg(long, env = env::REPORT_WEBHOOK, requires = "webhook_secret_file")]
    pub webhook: Option<reqwest::Url>,
    /// The file holding the key of the webhook's HMAC-SHA256 signature.
    #[arg(long, env = env::REPORT_WEBHOOK_SECRET_FILE)]
    pub webhook_secret_file: Option<PathBuf>,
    /// Attempts at a delivery before it fails, 0.5 s apart and doubling.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub webhook_attempts: u32,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// One row per stock.
    Csv,
    /// Markdown tables: the stocks, then the top users.
    Md,
    /// The report as the API answers it (`data` of `GET /reports/daily`).
    Json,
}

pub async fn run(config: ReportConfig) -> anyhow::Result<()> {
    let day = match config.date.as_deref() {
        Some("today") => day_of(now_millis()),
        Some("yesterday") => day_of(now_millis().saturating_sub(DAY_MS)),
        Some(date) => parse_day(date).map_err(anyhow::Error::msg)?,
        // An archive is of a day that is over.
        None if config.out.is_some() => day_of(now_millis().saturating_sub(DAY_MS)),
        None => day_of(now_millis()),
    };
    let report = match &config.log {
        Some(path) => recompute(path, day)?,
        None => {
            let http = stocknet_common::outside_client(Duration::from_secs(30));
            fetch(&http, &config.frontend, day).await?
        }
    };
    let Some(dir) = &config.out else {
        if config.delivery.webhook.webhook.is_some() || config.delivery.mail.smtp_url.is_some() {
            anyhow::bail!("--webhook and --smtp-url deliver an archived report: give --out too");
        }
        print!("{}", render(&report, config.format)?);
        return Ok(());
    };
    archive_and_deliver(&report, dir, &config.delivery, config.resend).await
}

/// Archives `report` in `dir` and delivers it where configured, except where it was delivered
/// before (unless `resend`). Every delivery is tried; any that failed makes this an error.
pub async fn archive_and_deliver(
    report: &DailyReport,
    dir: &Path,
    delivery: &DeliveryArgs,
    resend: bool,
) -> anyhow::Result<()> {
    let json = archive(dir, report)?;
    let date = &report.date;
    let record_path = dir.join(format!("{date}.delivered"));
    let mut record = delivered(&record_path)?;
    let mut failures = Vec::new();
    let mut channels: Vec<(&str, String)> = Vec::new();
    if let Some(url) = &delivery.webhook.webhook {
        channels.push(("webhook", shown(url)));
    }
    if delivery.mail.smtp_url.is_some() {
        channels.push(("mail", delivery.mail.mail_to.join(", ")));
    }
    for (channel, to) in channels {
        if record.contains_key(channel) && !resend {
            println!(
                "{date}: delivered by {channel} before ({}); --resend delivers again",
                record_path.display()
            );
            continue;
        }
        let sent = match channel {
            "webhook" => deliver_webhook(&delivery.webhook, &json).await,
            _ => mail(&delivery.mail, report, &json).await,
        };
        match sent {
            Ok(()) => {
                record.insert(
                    channel.to_owned(),
                    serde_json::json!({ "to": to, "at_ms": now_millis() }),
                );
                let text = serde_json::Value::Object(record.clone()).to_string();
                file::replace_atomically(&record_path, |f| writeln!(f, "{text}"))
                    .with_context(|| format!("writing {}", record_path.display()))?;
                println!("{date}: delivered by {channel} to {to}");
            }
            Err(e) => failures.push(format!("{channel} to {to}: {e:#}")),
        }
    }
    if !failures.is_empty() {
        anyhow::bail!(
            "delivering the report of {date} failed (its files stay in {}): {}",
            dir.display(),
            failures.join("; ")
        );
    }
    Ok(())
}

/// Where a webhook is, as logs and the delivery record show it: its scheme, host and port. Its
/// path, query and user part may hold a token (a Slack-style URL's path does).
fn shown(url: &reqwest::Url) -> String {
    let port = url
        .port()
        .map(|port| format!(":{port}"))
        .unwrap_or_default();
    format!(
        "{}://{}{port}",
        url.scheme(),
        url.host_str().unwrap_or_default()
    )
}

/// What `<date>.delivered` says was delivered: a channel name per delivery (an empty record
/// without the file). The first form of the file, `{"webhook": URL, "at_ms": N}`, reads as a
/// webhook delivery.
fn delivered(path: &Path) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => match serde_json::from_str(&text) {
            Ok(serde_json::Value::Object(record)) => Ok(record),
            _ => anyhow::bail!("{} is not a delivery record: move it away", path.display()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// POSTs the report's JSON to the webhook, signed.
async fn deliver_webhook(webhook: &WebhookArgs, json: &str) -> anyhow::Result<()> {
    let Some(url) = &webhook.webhook else {
        return Ok(());
    };
    let secret_file = webhook
        .webhook_secret_file
        .as_deref()
        .context("--webhook needs --webhook-secret-file")?;
    let key =
        std::fs::read(secret_file).with_context(|| format!("reading {}", secret_file.display()))?;
    deliver(url, key.trim_ascii(), json, webhook.webhook_attempts).await
}

/// Mails the report: the Markdown tables as the text, the CSV and the JSON attached.
async fn mail(args: &MailArgs, report: &DailyReport, json: &str) -> anyhow::Result<()> {
    use lettre::message::header::ContentType;
    use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let Some(url) = &args.smtp_url else {
        return Ok(());
    };
    let address = |text: &str| {
        text.parse::<Mailbox>()
            .with_context(|| format!("{text:?} is not a mail address"))
    };
    let mut message = Message::builder()
        .from(address(args.mail_from.as_deref().unwrap_or_default())?)
        .subject(format!("StockNet daily report {}", report.date));
    for to in &args.mail_to {
        message = message.to(address(to)?);
    }
    let csv_type = ContentType::parse("text/csv").context("text/csv")?;
    let message = message
        .multipart(
            MultiPart::mixed()
                .singlepart(SinglePart::plain(render(report, Format::Md)?))
                .singlepart(
                    Attachment::new(format!("{}.csv", report.date))
                        .body(render(report, Format::Csv)?, csv_type),
                )
                .singlepart(
                    Attachment::new(format!("{}.json", report.date))
                        .body(json.to_owned(), ContentType::TEXT_PLAIN),
                ),
        )
        .context("building the mail")?;

    let host = url.host_str().context("--smtp-url needs a host")?;
    let tls = TlsParameters::new(host.to_owned()).context("TLS parameters")?;
    let credentials = match &args.smtp_credentials_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let (user, password) = text
                .trim_end_matches(['\r', '\n'])
                .split_once(':')
                .with_context(|| format!("{} must hold user:password", path.display()))?;
            Some(Credentials::new(user.to_owned(), password.to_owned()))
        }
        None => None,
    };
    let (port, tls) = match url.scheme() {
        "smtps" => (465, Tls::Wrapper(tls)),
        // Credentials never go over a connection STARTTLS did not protect.
        "smtp" if credentials.is_some() => (587, Tls::Required(tls)),
        "smtp" => (587, Tls::Opportunistic(tls)),
        other => anyhow::bail!("--smtp-url is smtp:// or smtps://, not {other}://"),
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(url.port().unwrap_or(port))
        .tls(tls)
        .timeout(Some(Duration::from_secs(10)));
    if let Some(credentials) = credentials {
        transport = transport.credentials(credentials);
    }
    let transport = transport.build();
    // lettre's timeout bounds each connect only, not the server's answers.
    retried(
        args.smtp_attempts,
        Duration::from_secs(1),
        MAIL_ATTEMPT,
        || async {
            transport
                .send(message.clone())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await
}

/// Writes `report` into `dir` as `<date>.json` and `<date>.csv`, each atomically; the JSON.
fn archive(dir: &Path, report: &DailyReport) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = render(report, Format::Json)?;
    for (extension, text) in [("json", &json), ("csv", &render(report, Format::Csv)?)] {
        let path = dir.join(format!("{}.{extension}", report.date));
        file::replace_atomically(&path, |f| f.write_all(text.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{}: archived in {}", report.date, dir.display());
    Ok(json)
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `key`.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256={hex}")
}

/// POSTs `json`, signed, until the receiver answers 2xx or `attempts` are spent.
async fn deliver(url: &reqwest::Url, key: &[u8], json: &str, attempts: u32) -> anyhow::Result<()> {
    let http = stocknet_common::outside_client(Duration::from_secs(10));
    let signature = signature(key, json.as_bytes());
    retried(
        attempts,
        Duration::from_millis(500),
        WEBHOOK_ATTEMPT,
        || async {
            let sent = http
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, &signature)
                .body(json.to_owned())
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("answered {}", response.status())),
                // (reqwest's error names the URL, token and all.)
                Err(e) => Err(format!("no answer: {}", e.without_url())),
            }
        },
    )
    .await
}

/// How long one delivery by mail may take, from connecting to the server's last answer.
const MAIL_ATTEMPT: Duration = Duration::from_secs(60);

/// How long one webhook call may take (its client's own deadline is 10 s).
const WEBHOOK_ATTEMPT: Duration = Duration::from_secs(15);

/// Tries `attempt` until it succeeds or `attempts` are spent, each within `deadline` (a
/// receiver that accepts and never answers is a failed attempt), pausing `pause` after the
/// first failure and doubling it after each.
async fn retried<F, Fut>(
    attempts: u32,
    mut pause: Duration,
    deadline: Duration,
    mut attempt: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut failure = String::new();
    for tried in 1..=attempts {
        match tokio::time::timeout(deadline, attempt()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => failure = e,
            Err(_) => failure = format!("no answer within {deadline:?}"),
        }
        if tried < attempts {
            eprintln!(
                "delivery attempt {tried} of {attempts} failed ({failure}); again in {pause:?}"
            );
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    anyhow::bail!("{attempts} attempts failed; the last {failure}")
}

/// The report of `day` from a replay of the order log at `path`.
pub fn recompute(path: &std::path::Path, day: u32) -> anyhow::Result<DailyReport> {
    let mut book = stocknet_order::book::Book::default();
    stocknet_order::log::read_entries(path, |entry| {
        book.apply(&entry);
    })
    .with_context(|| format!("replaying {}", path.display()))?;
    Ok(book.daily_report(day))
}

/// `day`'s report from `frontend`, through `http`: `stocknet report`'s goes through the
/// environment's proxy, as a user's tool does; `up`'s own is a call within the deployment,
/// which never does.
pub async fn fetch(
    http: &reqwest::Client,
    frontend: &BaseUrl,
    day: u32,
) -> anyhow::Result<DailyReport> {
    let mut url = frontend.join(&["reports", "daily"]);
    url.query_pairs_mut().append_pair("date", &day_text(day));
    stocknet_common::call(http.get(url.clone()))
        .await
        .with_context(|| format!("GET {url}"))
}

pub fn render(report: &DailyReport, format: Format) -> anyhow::Result<String> {
    let price = |p: Option<Price>| p.map(|p| p.to_string()).unwrap_or_default();
    let refused = |r: &std::collections::BTreeMap<String, u64>| {
        r.iter()
            .map(|(reason, n)| format!("{reason}={n}"))
            .collect::<Vec<_>>()
            .join(";")
    };
    // A stock's row, from its name on, the same in both tables.
    let row = |s: &StockDay| {
        [
            s.name.clone(),
            s.trades.to_string(),
            s.volume.to_string(),
            s.bought.to_string(),
            s.sold.to_string(),
            price(s.vwap),
            price(s.open),
            price(s.high),
            price(s.low),
            price(s.close),
            refused(&s.refused),
        ]
    };
    let mut out = String::new();
    match format {
        Format::Json => out = serde_json::to_string_pretty(report)? + "\n",
        Format::Csv => {
            let mut writer = csv::Writer::from_writer(Vec::new());
            writer.write_record([
                "date", "name", "trades", "volume", "bought", "sold", "vwap", "open", "high",
                "low", "close", "refused",
            ])?;
            for s in &report.stocks {
                writer.write_record(std::iter::once(report.date.clone()).chain(row(s)))?;
            }
            out = String::from_utf8(writer.into_inner()?)?;
        }
        Format::Md => {
            writeln!(out, "# StockNet daily report, {} (UTC)\n", report.date)?;
            writeln!(
                out,
                "| stock | trades | volume | bought | sold | VWAP | open | high | low | close | refused |"
            )?;
            writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")?;
            for s in &report.stocks {
                let mut cells = row(s);
                cells[0] = cells[0].replace('|', "\\|");
                writeln!(out, "| {} |", cells.join(" | "))?;
            }
            writeln!(out, "\n| top user | volume |\n|--:|--:|")?;
            for user in &report.top_users {
                writeln!(out, "| {} | {} |", user.user, user.volume)?;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[test]
    fn a_webhook_is_shown_without_its_path_query_or_user() {
        let url = "https://user:pw@hooks.example.com:8443/services/T0/B1/token?k=v";
        assert_eq!(
            shown(&url.parse().unwrap()),
            "https://hooks.example.com:8443"
        );
        let plain = "http://10.0.0.9/hook".parse().unwrap();
        assert_eq!(shown(&plain), "http://10.0.0.9");
    }

    /// An attempt whose receiver never answers fails at its deadline, and the next is tried.
    #[tokio::test]
    async fn a_delivery_attempt_that_gets_no_answer_fails_at_its_deadline() {
        let mut tries = 0;
        let delivery = retried(
            2,
            Duration::from_millis(10),
            Duration::from_millis(50),
            || {
                tries += 1;
                std::future::pending()
            },
        );
        let failed = tokio::time::timeout(Duration::from_secs(10), delivery)
            .await
            .expect("the attempts end at their deadlines");
        let failure = failed.expect_err("no attempt answered").to_string();
        assert!(failure.contains("no answer within 50ms"), "{failure}");
        assert_eq!(tries, 2);
    }

    /// An https webhook is called over TLS: the connection opens with a TLS handshake record.
    /// (Built without a TLS backend, the HTTP client refused an https URL before connecting.)
    #[tokio::test]
    async fn an_https_webhook_is_called_over_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url: reqwest::Url = format!("https://127.0.0.1:{port}/hook").parse().unwrap();
        let delivery = tokio::spawn(async move { deliver(&url, b"key", "{}", 1).await });
        let accepted = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await;
        let (mut connection, _) = accepted.expect("a connection in time").unwrap();
        let mut first = [0u8; 1];
        connection.read_exact(&mut first).await.unwrap();
        assert_eq!(first[0], 0x16, "a TLS handshake record");
        drop(connection);
        assert!(delivery.await.unwrap().is_err(), "no TLS server answered");
    }
}
