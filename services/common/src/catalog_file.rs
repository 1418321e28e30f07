//! The catalog's CSV format, `name,price,quantity`, parsed here once: by the catalog when it
//! starts, and by the operator when it checks a StockNet's initial catalog, so that a spec the
//! operator accepts never makes the catalog refuse to start.

use std::collections::BTreeMap;

use crate::model::{Price, Stock};

/// The header line a catalog file starts with.
pub const HEADER: [&str; 3] = ["name", "price", "quantity"];

/// Why a catalog file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogFileError {
    #[error("the header must be name,price,quantity")]
    Header,
    #[error("line {line}: {message}")]
    Row { line: u64, message: String },
    #[error("no stocks")]
    Empty,
}

/// The longest stock name, in characters.
pub const MAX_NAME_LEN: usize = 128;

/// Whether `name` is text an order may name a stock by: 1–128 characters, none a control
/// character.
pub fn is_name_text(name: &str) -> bool {
    !name.is_empty() && name.chars().count() <= MAX_NAME_LEN && !name.chars().any(char::is_control)
}

/// Whether `name` can be a stock's name in a lookup path. Segments such as `..` or `a/b`
/// (decoded from `%2e%2e`, `%2F`) would name another catalog route, so they never reach it,
/// and no catalog may name a stock so: nobody could look it up or value it.
pub fn is_stock_name(name: &str) -> bool {
    is_name_text(name) && name != "." && name != ".." && !name.contains('/')
}

/// The stocks of a catalog file to start from, by name: every row a stock with a name the API
/// can address ([`is_stock_name`]), a price of at most two decimals and a whole quantity, no
/// name twice, at least one stock.
pub fn parse(text: &str) -> Result<BTreeMap<String, Stock>, CatalogFileError> {
    parse_names(text, true)
}

/// [`parse`] of a catalog's own saved table, which may hold a name from before names were
/// checked: it is kept (refusing it would stop the catalog from starting at all).
pub fn parse_saved(text: &str) -> Result<BTreeMap<String, Stock>, CatalogFileError> {
    parse_names(text, false)
}

fn parse_names(
    text: &str,
    addressable_names: bool,
) -> Result<BTreeMap<String, Stock>, CatalogFileError> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let header = reader.headers().map_err(|_| CatalogFileError::Header)?;
    if header.iter().ne(HEADER) {
        return Err(CatalogFileError::Header);
    }
    let mut stocks = BTreeMap::new();
    for record in reader.records() {
        let record = record.map_err(|e| CatalogFileError::Row {
            line: e.position().map_or(0, |p| p.line()),
            message: e.to_string(),
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let bad = |message: &str| CatalogFileError::Row {
            line,
            message: message.to_owned(),
        };
        let name = record.get(0).unwrap_or_default();
        if name.is_empty() {
            return Err(bad("empty stock name"));
        }
        if addressable_names && !is_stock_name(name) {
            return Err(bad(&format!(
                "{name:?} cannot be a stock's name: at most {MAX_NAME_LEN} characters, no \
                 control character or '/', not '.' or '..'"
            )));
        }
        let price: Price = record
            .get(1)
            .unwrap_or_default()
            .parse()
            .map_err(|_| bad("price must be a number >= 0 with at most 2 decimals"))?;
        let quantity: u64 = record
            .get(2)
            .unwrap_or_default()
            .parse()
            .map_err(|_| bad("quantity must be a whole number >= 0"))?;
        let stock = Stock {
            name: name.to_owned(),
            price,
            quantity,
        };
        if stocks.insert(stock.name.clone(), stock).is_some() {
            return Err(bad(&format!("{name} appears twice")));
        }
    }
    if stocks.is_empty() {
        return Err(CatalogFileError::Empty);
    }
    Ok(stocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_files_parse_and_bad_ones_name_their_line() {
        let stocks = parse("name,price,quantity\nGameStart,15.99,100\nFishCo,9.5,0\n").unwrap();
        assert_eq!(stocks["FishCo"].price, Price::from_cents(950));
        assert_eq!(stocks["GameStart"].quantity, 100);
        for (text, error) in [
            ("name,price,quantity\n", "no stocks"),
            (
                "name,quantity,price\nA,1,1\n",
                "the header must be name,price,quantity",
            ),
            (
                "name,price,quantity\nA,1.234,1\n",
                "line 2: price must be a number >= 0 with at most 2 decimals",
            ),
            (
                "name,price,quantity\nA,1,1\nB,-1,1\n",
                "line 3: price must be a number >= 0 with at most 2 decimals",
            ),
            (
                "name,price,quantity\nA,1,-1\n",
                "line 2: quantity must be a whole number >= 0",
            ),
            ("name,price,quantity\n,1,1\n", "line 2: empty stock name"),
            (
                "name,price,quantity\nA/B,1,1\n",
                "line 2: \"A/B\" cannot be a stock's name: at most 128 characters, no control \
                 character or '/', not '.' or '..'",
            ),
            (
                "name,price,quantity\n..,1,1\n",
                "line 2: \"..\" cannot be a stock's name: at most 128 characters, no control \
                 character or '/', not '.' or '..'",
            ),
            (
                "name,price,quantity\nA,1,1\nA,2,2\n",
                "line 3: A appears twice",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err().to_string(), error, "{text:?}");
        }
        // A catalog's own table from before names were checked still opens.
        let saved = parse_saved("name,price,quantity\nA/B,1,1\n").unwrap();
        assert_eq!(saved["A/B"].quantity, 1);
        assert!(matches!(
            parse("name,price,quantity\nA,1\n"),
            Err(CatalogFileError::Row { .. })
        ));
    }
}
