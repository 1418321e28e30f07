//! `stocknet report`: a day's market report, as a running StockNet serves it or recomputed
//! from an order log file: printed, or archived to a directory and delivered to a webhook.
//!
//! Archived, a date's report is `<date>.json` and `<date>.csv`, each replaced atomically, so a
//! re-run rewrites the same files; a delivery is recorded in `<date>.delivered`, so a re-run
//! delivers again only when asked (`--resend`). A delivery that fails leaves the files in place
//! and the command exits non-zero.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use stocknet_common::clock::{day_of, day_text, now_millis, parse_day, DAY_MS};
use stocknet_common::file;
use stocknet_common::wire::DailyReport;
use stocknet_common::Price;

/// The header that carries a delivery's signature: `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "x-stocknet-signature";

#[derive(Debug, clap::Args)]
pub struct ReportConfig {
    /// The UTC day, YYYY-MM-DD; today when absent.
    #[arg(long)]
    pub date: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Md)]
    pub format: Format,
    /// The frontend to ask.
    #[arg(
        long,
        env = "STOCKNET_REPORT_FRONTEND",
        default_value = "http://127.0.0.1:8080"
    )]
    pub frontend: String,
    /// Recompute the report from this order log (`orders-<id>.csv`) instead of asking a
    /// frontend. It reads the log as it is: use a replica's at quiescence, since a replica may
    /// hold a tail of entries that were never committed.
    #[arg(long, conflicts_with = "frontend")]
    pub log: Option<PathBuf>,
    /// Archive the report in this directory as `<date>.json` and `<date>.csv` instead of
    /// printing it; the date is then, by default, the UTC day that just ended.
    #[arg(long, env = "STOCKNET_REPORT_DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub webhook: WebhookArgs,
    /// Deliver again a report already delivered.
    #[arg(long, requires = "out")]
    pub resend: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// POST the archived report's JSON here, signed (header `X-StockNet-Signature`).
    #[arg(
        long,
        env = "STOCKNET_REPORT_WEBHOOK",
        requires = "webhook_secret_file"
    )]
    pub webhook: Option<reqwest::Url>,
    /// The file holding the key of the webhook's HMAC-SHA256 signature.
    #[arg(long, env = "STOCKNET_REPORT_WEBHOOK_SECRET_FILE")]
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
    let day = match &config.date {
        Some(date) => parse_day(date).map_err(anyhow::Error::msg)?,
        // An archive is of a day that is over.
        None if config.out.is_some() => day_of(now_millis().saturating_sub(DAY_MS)),
        None => day_of(now_millis()),
    };
    let report = match &config.log {
        Some(path) => recompute(path, day)?,
        None => fetch(&config.frontend, day).await?,
    };
    let Some(dir) = &config.out else {
        if config.webhook.webhook.is_some() {
            anyhow::bail!("--webhook delivers an archived report: give --out too");
        }
        print!("{}", render(&report, config.format)?);
        return Ok(());
    };
    archive_and_deliver(&report, dir, &config.webhook, config.resend).await
}

/// Archives `report` in `dir` and, if a webhook is configured, delivers it unless it was
/// delivered before (or `resend`).
pub async fn archive_and_deliver(
    report: &DailyReport,
    dir: &Path,
    webhook: &WebhookArgs,
    resend: bool,
) -> anyhow::Result<()> {
    let json = archive(dir, report)?;
    let Some(url) = &webhook.webhook else {
        return Ok(());
    };
    let secret_file = webhook
        .webhook_secret_file
        .as_deref()
        .context("--webhook needs --webhook-secret-file")?;
    let key =
        std::fs::read(secret_file).with_context(|| format!("reading {}", secret_file.display()))?;
    let key = key.trim_ascii();
    let delivered = dir.join(format!("{}.delivered", report.date));
    if delivered.exists() && !resend {
        println!(
            "{}: delivered before ({}); --resend delivers again",
            report.date,
            delivered.display()
        );
        return Ok(());
    }
    deliver(url, key, &json, webhook.webhook_attempts)
        .await
        .with_context(|| {
            format!(
                "delivering the report of {} to {url} (its files stay in {})",
                report.date,
                dir.display()
            )
        })?;
    let record = serde_json::json!({ "webhook": url.as_str(), "at_ms": now_millis() });
    file::replace_atomically(&delivered, |f| writeln!(f, "{record}"))
        .with_context(|| format!("writing {}", delivered.display()))?;
    println!("{}: delivered to {url}", report.date);
    Ok(())
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
    let http = stocknet_common::http_client(Duration::from_secs(10));
    let signature = signature(key, json.as_bytes());
    let mut pause = Duration::from_millis(500);
    let mut failure = String::new();
    for attempt in 1..=attempts {
        let sent = http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, &signature)
            .body(json.to_owned())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => failure = format!("answered {}", response.status()),
            Err(e) => failure = format!("no answer: {e}"),
        }
        if attempt < attempts {
            eprintln!(
                "delivery attempt {attempt} of {attempts} failed ({failure}); again in {pause:?}"
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

pub async fn fetch(frontend: &str, day: u32) -> anyhow::Result<DailyReport> {
    let date = day_text(day);
    let url = format!(
        "{}/reports/daily?date={date}",
        frontend.trim_end_matches('/')
    );
    let http = stocknet_common::http_client(std::time::Duration::from_secs(30));
    stocknet_common::call(http.get(&url))
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
                writer.write_record([
                    report.date.clone(),
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
                ])?;
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
                writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    s.name.replace('|', "\\|"),
                    s.trades,
                    s.volume,
                    s.bought,
                    s.sold,
                    price(s.vwap),
                    price(s.open),
                    price(s.high),
                    price(s.low),
                    price(s.close),
                    refused(&s.refused),
                )?;
            }
            writeln!(out, "\n| top user | volume |\n|--:|--:|")?;
            for user in &report.top_users {
                writeln!(out, "| {} | {} |", user.user, user.volume)?;
            }
        }
    }
    Ok(out)
}
