//! `stocknet report`: print a day's market report, as a running StockNet serves it or
//! recomputed from an order log file.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use stocknet_common::clock::{day_of, now_millis, parse_day};
use stocknet_common::wire::DailyReport;
use stocknet_common::Price;

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
        None => day_of(now_millis()),
    };
    let report = match &config.log {
        Some(path) => recompute(path, day)?,
        None => fetch(&config.frontend, day).await?,
    };
    print!("{}", render(&report, config.format)?);
    Ok(())
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

async fn fetch(frontend: &str, day: u32) -> anyhow::Result<DailyReport> {
    let date = stocknet_common::clock::day_text(day);
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
