//! The layout of the order log's lines, defined once: the columns in file order, the header,
//! the shorter layouts of older logs, and the codec between a [`Line`] and a CSV record that
//! the writer, the readers and the replacement of a divergent suffix all use.

use std::io::Read;

use stocknet_common::model::EntryFields;
use stocknet_common::{Price, Rejection, SelfTrade, TimeInForce};

use super::Line;

/// The columns of a line, in file order.
pub const COLUMNS: [&str; 22] = [
    "number",
    "term",
    "type",
    "name",
    "quantity",
    "key",
    "price",
    "target",
    "user",
    "time",
    "quote",
    "rejected",
    "entry",
    "request_id",
    "time_in_force",
    "expire_at",
    "post_only",
    "stp",
    "client_order_id",
    "protection_bps",
    "display_quantity",
    "stop_price",
];

// Where each column is in a record.
const NUMBER: usize = 0;
const TERM: usize = 1;
const TYPE: usize = 2;
const NAME: usize = 3;
const QUANTITY: usize = 4;
const KEY: usize = 5;
const PRICE: usize = 6;
const TARGET: usize = 7;
const USER: usize = 8;
const TIME: usize = 9;
const QUOTE: usize = 10;
const REJECTED: usize = 11;
const ENTRY: usize = 12;
const REQUEST_ID: usize = 13;
const TIME_IN_FORCE: usize = 14;
const EXPIRE_AT: usize = 15;
const POST_ONLY: usize = 16;
const STP: usize = 17;
const CLIENT_ORDER_ID: usize = 18;
const PROTECTION_BPS: usize = 19;
const DISPLAY_QUANTITY: usize = 20;
const STOP_PRICE: usize = 21;

/// How many columns a log's lines have: all of them; or, in a log written before orders' terms
/// (time in force to stop price), before request ids, before entries held several lines,
/// before users and stamps, or before the order book, the first fourteen, thirteen, twelve,
/// eight or six. Such a log is read as it is (without an entry column each of its lines is its
/// own entry, see [`Line::alone`]) and new lines are appended in the current layout.
const LAYOUTS: [usize; 6] = [COLUMNS.len(), 14, 13, 12, 8, 6];

/// The header line of a log of `columns` columns.
pub fn header_of(columns: usize) -> String {
    let mut header = COLUMNS[..columns].join(",");
    header.push('\n');
    header
}

/// The header line a new log starts with.
pub fn header() -> String {
    header_of(COLUMNS.len())
}

/// Whether `record` is the header of a log in one of the [`LAYOUTS`].
pub fn is_header(record: &csv::ByteRecord) -> bool {
    LAYOUTS.into_iter().any(|columns| {
        record
            .iter()
            .eq(COLUMNS[..columns].iter().map(|c| c.as_bytes()))
    })
}

/// A CSV reader of the log's records (the header is a record like the others).
pub fn reader<R: Read>(source: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(source)
}

/// What ends the `entry` column of a line that more lines of its entry follow: a log whose
/// last line has it lost the rest of its entry to a crash mid-write, and opening it drops the
/// whole entry, which was never acknowledged (its lines are written by one append).
const CONTINUED: char = '+';

/// The record of `line`, in the current layout; `continued` if more lines of its entry follow.
pub fn encode(line: &Line, continued: bool) -> [String; COLUMNS.len()] {
    let fields = EntryFields::from(line.order.clone());
    let text = |value: Option<String>| value.unwrap_or_default();
    let mut record: [String; COLUMNS.len()] = Default::default();
    record[NUMBER] = fields.number.to_string();
    record[TERM] = fields.term.to_string();
    record[TYPE] = fields.kind;
    record[NAME] = fields.name;
    record[QUANTITY] = text(fields.quantity.map(|q| q.to_string()));
    record[KEY] = text(fields.key);
    record[PRICE] = text(fields.price.map(|p| p.to_string()));
    record[TARGET] = text(fields.target.map(|t| t.to_string()));
    record[USER] = text(fields.user.map(|u| u.to_string()));
    record[TIME] = fields.time.to_string();
    record[QUOTE] = text(fields.quote.map(|p| p.to_string()));
    record[REJECTED] = text(fields.rejected.map(|r| r.as_str().to_owned()));
    record[ENTRY] = if continued {
        format!("{}{CONTINUED}", line.entry)
    } else {
        line.entry.to_string()
    };
    record[REQUEST_ID] = text(fields.request_id);
    record[TIME_IN_FORCE] = text(fields.time_in_force.map(|t| t.as_str().to_owned()));
    record[EXPIRE_AT] = text(fields.expire_at.map(|t| t.to_string()));
    record[POST_ONLY] = text(fields.post_only.then(|| "true".to_owned()));
    record[STP] = text(fields.stp.map(|s| s.as_str().to_owned()));
    record[CLIENT_ORDER_ID] = text(fields.client_order_id);
    record[PROTECTION_BPS] = text(fields.protection_bps.map(|bps| bps.to_string()));
    record[DISPLAY_QUANTITY] = text(fields.display_quantity.map(|q| q.to_string()));
    record[STOP_PRICE] = text(fields.stop_price.map(|p| p.to_string()));
    record
}

/// Parses one record of any of the [`LAYOUTS`], which must be line `expected`.
pub fn decode(record: &csv::ByteRecord, expected: u64) -> Result<Line, String> {
    if !LAYOUTS.contains(&record.len()) {
        return Err(format!(
            "expected {} fields, found {}",
            COLUMNS.len(),
            record.len()
        ));
    }
    let field = |i: usize| {
        let bytes = record.get(i).unwrap_or_default();
        std::str::from_utf8(bytes).map_err(|e| format!("{}: {e}", COLUMNS[i]))
    };
    let optional = |i: usize| field(i).map(|text| (!text.is_empty()).then_some(text));
    let number: u64 = field(NUMBER)?.parse().map_err(|e| format!("number: {e}"))?;
    if number != expected {
        return Err(format!("expected order {expected}, found {number}"));
    }
    let fields = EntryFields {
        number,
        term: field(TERM)?.parse().map_err(|e| format!("term: {e}"))?,
        kind: field(TYPE)?.to_owned(),
        name: field(NAME)?.to_owned(),
        quantity: parsed(optional(QUANTITY)?, QUANTITY)?,
        key: optional(KEY)?.map(str::to_owned),
        price: parsed::<Price>(optional(PRICE)?, PRICE)?,
        target: parsed(optional(TARGET)?, TARGET)?,
        user: parsed(optional(USER)?, USER)?,
        time: parsed(optional(TIME)?, TIME)?.unwrap_or(0),
        quote: parsed::<Price>(optional(QUOTE)?, QUOTE)?,
        rejected: optional(REJECTED)?
            .map(|r| Rejection::parse(r).ok_or_else(|| format!("rejected: unknown reason {r:?}")))
            .transpose()?,
        request_id: optional(REQUEST_ID)?.map(str::to_owned),
        time_in_force: optional(TIME_IN_FORCE)?
            .map(|t| TimeInForce::parse(t).ok_or_else(|| format!("time_in_force: {t:?}")))
            .transpose()?,
        expire_at: parsed(optional(EXPIRE_AT)?, EXPIRE_AT)?,
        post_only: match optional(POST_ONLY)? {
            None => false,
            Some("true") => true,
            Some(other) => return Err(format!("post_only: {other:?}")),
        },
        stp: optional(STP)?
            .map(|s| SelfTrade::parse(s).ok_or_else(|| format!("stp: {s:?}")))
            .transpose()?,
        client_order_id: optional(CLIENT_ORDER_ID)?.map(str::to_owned),
        protection_bps: parsed(optional(PROTECTION_BPS)?, PROTECTION_BPS)?,
        display_quantity: parsed(optional(DISPLAY_QUANTITY)?, DISPLAY_QUANTITY)?,
        stop_price: parsed::<Price>(optional(STOP_PRICE)?, STOP_PRICE)?,
    };
    let order = stocknet_common::Order::try_from(fields)?;
    let entry = optional(ENTRY)?.map(|e| e.strip_suffix(CONTINUED).unwrap_or(e));
    Ok(match parsed(entry, ENTRY)? {
        Some(entry) => Line { entry, order },
        None => Line::alone(order),
    })
}

/// Whether more lines of its entry follow `record`'s line.
pub fn is_continued(record: &csv::ByteRecord) -> bool {
    record
        .get(ENTRY)
        .is_some_and(|entry| entry.ends_with(&[CONTINUED as u8]))
}

/// `text` of column `column`, parsed, if there is any.
fn parsed<T>(text: Option<&str>, column: usize) -> Result<Option<T>, String>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    text.map(|text| {
        text.parse()
            .map_err(|e| format!("{}: {e}", COLUMNS[column]))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use stocknet_common::{Command, Order, OrderOptions, Side, Stamp, Terms};

    use super::*;

    #[test]
    fn a_line_comes_back_as_it_was_written_and_older_layouts_are_read() {
        let line = Line {
            entry: 7,
            order: Order {
                number: 9,
                term: 2,
                name: "Tesla".into(),
                key: Some("k-1".into()),
                user: Some(4),
                stamp: Stamp {
                    time: 1_700_000_000_000,
                    quote: Some(Price::from_cents(1550)),
                    rejected: None,
                    request_id: Some("6f1c0e2a9b3d4c5e-42".into()),
                },
                command: Command::Place {
                    side: Side::Buy,
                    quantity: 3,
                    limit: Some(Price::from_cents(1525)),
                    options: OrderOptions::boxed(
                        Terms {
                            time_in_force: TimeInForce::Gtd,
                            expire_at: Some(1_700_000_600_000),
                            post_only: true,
                            self_trade: SelfTrade::CancelOldest,
                            display_quantity: Some(1),
                            stop_price: None,
                        },
                        Some("ladder-3".into()),
                    ),
                },
            },
        };
        let record = csv::ByteRecord::from(encode(&line, false).to_vec());
        assert_eq!(decode(&record, 9), Ok(line.clone()));
        assert!(!is_continued(&record));
        assert!(decode(&record, 10).is_err(), "not the line expected");
        // A line that more of its entry follows says so, and reads as the same line.
        let continued = csv::ByteRecord::from(encode(&line, true).to_vec());
        assert_eq!(continued.get(ENTRY), Some(&b"7+"[..]));
        assert!(is_continued(&continued));
        assert_eq!(decode(&continued, 9), Ok(line));

        let eight = csv::ByteRecord::from(vec!["3", "1", "sell", "A", "2", "", "", ""]);
        let read = decode(&eight, 3).expect("an older line");
        assert_eq!(read.entry, 2, "an older line is its own entry");
        for columns in LAYOUTS {
            let header = header_of(columns);
            let record = csv::ByteRecord::from(header.trim_end().split(',').collect::<Vec<_>>());
            assert!(is_header(&record), "{header}");
        }
        assert!(!is_header(&csv::ByteRecord::from(vec!["number", "term"])));
    }
}
