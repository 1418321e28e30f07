//! The audit trail: every command that reached the leader, refused ones included, read from
//! the committed log newest first. The log holds who sent each command (its user), when (the
//! leader's stamp), under which key, and a refusal's reason; the book holds the outcome of
//! modifies and cancels.

use std::sync::Mutex;

use stocknet_common::clock::{parse_instant, rfc3339};
use stocknet_common::wire::{AuditPage, AuditQuery, AuditRecord, Outcome, CLIENT_KEY_PREFIX};
use stocknet_common::{Command, Order, Rejection};

use crate::book::Refusal;
use crate::book_store::BookStore;
use crate::error::OrderError;
use crate::log::OrderLog;

/// Most commands one request examines: a page may end before `limit` records, with a cursor.
pub const MAX_SCAN: u64 = 100_000;

/// Commands read from the log at once.
const CHUNK: u64 = 1_000;

/// The filters of a request, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub user: Option<u64>,
    pub name: Option<String>,
    pub outcome: Option<OutcomeFilter>,
    pub from: Option<u64>,
    pub to: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutcomeFilter {
    Is(Outcome),
    Reason(String),
}

/// Every reason a command is refused for: the leader's, then the book's.
fn reasons() -> impl Iterator<Item = &'static str> {
    Rejection::ALL
        .into_iter()
        .map(Rejection::as_str)
        .chain(Refusal::REASONS)
}

impl AuditFilter {
    /// The filters of `query`, or what is wrong with them.
    pub fn parse(query: &AuditQuery) -> Result<Self, String> {
        let outcome = match query.outcome.as_deref() {
            None => None,
            Some("accepted") => Some(OutcomeFilter::Is(Outcome::Accepted)),
            Some("refused") => Some(OutcomeFilter::Is(Outcome::Refused)),
            Some(reason) if reasons().any(|known| known == reason) => {
                Some(OutcomeFilter::Reason(reason.to_owned()))
            }
            Some(other) => {
                return Err(format!(
                    "outcome {other:?} is none of accepted, refused, {}",
                    reasons().collect::<Vec<_>>().join(", ")
                ))
            }
        };
        let instant = |text: &Option<String>| text.as_deref().map(parse_instant).transpose();
        Ok(Self {
            user: query.user,
            name: query.name.clone(),
            outcome,
            from: instant(&query.from)?,
            to: instant(&query.to)?,
        })
    }

    fn admits(&self, record: &AuditRecord) -> bool {
        self.user.is_none_or(|user| record.user == Some(user))
            && self.name.as_ref().is_none_or(|name| record.name == *name)
            && match &self.outcome {
                None => true,
                Some(OutcomeFilter::Is(outcome)) => record.outcome == *outcome,
                Some(OutcomeFilter::Reason(reason)) => record.reason.as_ref() == Some(reason),
            }
    }
}

/// Up to `limit` records matching `filter` among the committed commands numbered below
/// `before`, newest first. Blocking: it reads the log.
pub fn page(
    log: &Mutex<OrderLog>,
    book: &BookStore,
    filter: &AuditFilter,
    before: u64,
    limit: usize,
) -> Result<AuditPage, OrderError> {
    let read_log = || log.lock().unwrap_or_else(|e| e.into_inner());
    // Commands past the book are not known to be committed.
    let mut end = before.min(book.read(|book| book.applied())?.saturating_add(1));
    if let Some(to) = filter.to {
        // Times never go back along the log: skip straight past everything later than `to`.
        end = end.min(first_after(&read_log(), end, to)?);
    }
    let mut records = Vec::new();
    let mut scanned = 0;
    while end > 1 && scanned < MAX_SCAN {
        let start = end.saturating_sub(CHUNK).max(1);
        let chunk = read_log().after(start - 1, (end - start) as usize)?;
        // Through the book's check: a refusal whose archived record cannot be read would
        // otherwise read as an accepted command.
        let refusals: Vec<Option<Refusal>> = book.read(|book| {
            chunk
                .iter()
                .rev()
                .map(|entry| book.refusal(entry.number))
                .collect()
        })?;
        for (entry, refusal) in chunk.iter().rev().zip(refusals) {
            if filter.from.is_some_and(|from| entry.stamp.time < from) {
                return Ok(AuditPage {
                    records,
                    next_cursor: None,
                });
            }
            scanned += 1;
            end = entry.number;
            if matches!(entry.command, Command::Group(_)) {
                // The replica group's own entry: not a command anybody sent.
                continue;
            }
            let record = record(entry, refusal);
            if filter.admits(&record) {
                records.push(record);
                if records.len() == limit {
                    return Ok(AuditPage {
                        records,
                        next_cursor: (end > 1).then(|| end.to_string()),
                    });
                }
            }
        }
    }
    Ok(AuditPage {
        records,
        next_cursor: (end > 1).then(|| end.to_string()),
    })
}

/// The number of the first command before `end` stamped later than `to` (or `end`).
fn first_after(log: &OrderLog, end: u64, to: u64) -> Result<u64, OrderError> {
    let (mut low, mut high) = (1, end);
    while low < high {
        let middle = low + (high - low) / 2;
        let time = log.get(middle)?.map_or(u64::MAX, |entry| entry.stamp.time);
        if time > to {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    Ok(low)
}

fn record(entry: &Order, refusal: Option<Refusal>) -> AuditRecord {
    let (kind, quantity, price, target) = entry.command.flat();
    let reason = entry
        .stamp
        .rejected
        .map(Rejection::as_str)
        .or(refusal.as_ref().map(Refusal::reason));
    AuditRecord {
        number: entry.number,
        time: rfc3339(entry.stamp.time),
        user: entry.user,
        name: entry.name.clone(),
        kind: kind.to_owned(),
        quantity,
        price,
        target,
        idempotency_key: entry
            .key
            .as_deref()
            .and_then(|key| key.strip_prefix(CLIENT_KEY_PREFIX))
            .map(str::to_owned),
        client_order_id: entry.command.client_order_id().map(str::to_owned),
        quote: entry.stamp.quote,
        outcome: if reason.is_some() {
            Outcome::Refused
        } else {
            Outcome::Accepted
        },
        reason: reason.map(str::to_owned),
        request_id: entry.stamp.request_id.clone(),
    }
}
