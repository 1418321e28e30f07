//! The catalog table: stocks by name, changed only by applying committed orders in
//! transaction order, persisted atomically as CSV.
//!
//! File format: a seed-compatible `name,price,quantity` CSV, preceded (once the catalog has
//! applied anything) by one line `# stocknet applied=N term=T`. Keeping the applied mark in the
//! same file as the quantities is what makes a crash between "apply" and "remember that it was
//! applied" impossible: both change in one atomic rename.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use stocknet_common::Stock;

use crate::error::CatalogError;

/// One committed order as the catalog needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trade {
    pub number: u64,
    pub name: String,
    /// Change in quantity: negative for a buy.
    pub delta: i64,
}

/// A batch of committed trades from the leader of `term`, in transaction order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyRequest {
    pub term: u64,
    pub trades: Vec<Trade>,
}

/// What an apply did: the last applied transaction and the stocks whose quantity changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOutcome {
    pub applied: u64,
    pub changed: Vec<String>,
}

/// Everything a new order leader needs to take over: quantities and what they include.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub applied: u64,
    pub term: u64,
    pub stocks: Vec<Stock>,
}

#[derive(Debug, Clone)]
struct Table {
    stocks: BTreeMap<String, Stock>,
    /// Highest transaction number whose trade is reflected in `stocks`.
    applied: u64,
    /// Highest leader term seen; older leaders are refused.
    term: u64,
}

#[derive(Debug)]
pub struct CatalogStore {
    path: PathBuf,
    table: RwLock<Table>,
}

const MARK_PREFIX: &str = "# stocknet";

impl CatalogStore {
    /// Opens `path`; if it does not exist yet, seeds it from `initial` (CSV text).
    pub fn open(path: impl Into<PathBuf>, initial: &str) -> Result<Self, CatalogError> {
        let path = path.into();
        let table = if path.exists() {
            let file = File::open(&path).map_err(|e| CatalogError::io(&path, e))?;
            parse(BufReader::new(file)).map_err(|e| e.in_file(&path))?
        } else {
            let table = parse(initial.as_bytes())?;
            write_atomically(&path, &table)?;
            table
        };
        Ok(Self {
            path,
            table: RwLock::new(table),
        })
    }

    pub fn get(&self, name: &str) -> Option<Stock> {
        self.read().stocks.get(name).cloned()
    }

    pub fn snapshot(&self) -> Snapshot {
        let table = self.read();
        Snapshot {
            applied: table.applied,
            term: table.term,
            stocks: table.stocks.values().cloned().collect(),
        }
    }

    /// Applies `request` all-or-nothing: trades already applied are skipped (so a retry is
    /// harmless), a gap is refused with the current position, and no quantity may go negative.
    /// The result is durable before this returns. Blocking: call from `spawn_blocking`.
    pub fn apply(&self, request: &ApplyRequest) -> Result<ApplyOutcome, CatalogError> {
        let mut table = self.write();
        if request.term < table.term {
            return Err(CatalogError::StaleTerm {
                term: request.term,
                current: table.term,
            });
        }
        let mut applied = table.applied;
        let mut staged: HashMap<&str, u64> = HashMap::new();
        for trade in &request.trades {
            if trade.number <= applied {
                continue;
            }
            if trade.number != applied + 1 {
                return Err(CatalogError::Gap {
                    applied,
                    next: trade.number,
                });
            }
            let current = match staged.get(trade.name.as_str()) {
                Some(quantity) => *quantity,
                None => {
                    table
                        .stocks
                        .get(&trade.name)
                        .ok_or_else(|| CatalogError::StockNotFound(trade.name.clone()))?
                        .quantity
                }
            };
            let updated = current
                .checked_add_signed(trade.delta)
                .ok_or(CatalogError::InsufficientQuantity)?;
            staged.insert(&trade.name, updated);
            applied = trade.number;
        }
        if applied == table.applied && request.term == table.term {
            return Ok(ApplyOutcome {
                applied,
                changed: Vec::new(),
            });
        }
        let mut next = table.clone();
        next.term = request.term;
        next.applied = applied;
        for (name, quantity) in &staged {
            if let Some(stock) = next.stocks.get_mut(*name) {
                stock.quantity = *quantity;
            }
        }
        write_atomically(&self.path, &next)?;
        *table = next;
        let mut changed: Vec<String> = staged.into_keys().map(str::to_owned).collect();
        changed.sort();
        Ok(ApplyOutcome { applied, changed })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table half-changed (changes are
        // built on a copy and swapped in), so a poisoned lock is still consistent.
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn parse(reader: impl BufRead) -> Result<Table, CatalogError> {
    let mut lines = reader.lines();
    let mut body = String::new();
    let (mut applied, mut term) = (0, 0);
    if let Some(first) = lines.next() {
        let first = first.map_err(|e| CatalogError::Corrupt(e.to_string()))?;
        if let Some(mark) = first.strip_prefix(MARK_PREFIX) {
            (applied, term) = parse_mark(mark)?;
        } else {
            body.push_str(&first);
            body.push('\n');
        }
    }
    for line in lines {
        body.push_str(&line.map_err(|e| CatalogError::Corrupt(e.to_string()))?);
        body.push('\n');
    }
    let mut stocks = BTreeMap::new();
    for (index, record) in csv::Reader::from_reader(body.as_bytes())
        .deserialize::<Stock>()
        .enumerate()
    {
        let stock = record.map_err(|e| CatalogError::Corrupt(format!("row {}: {e}", index + 1)))?;
        if stock.name.is_empty() {
            return Err(CatalogError::Corrupt(format!(
                "row {}: empty stock name",
                index + 1
            )));
        }
        stocks.insert(stock.name.clone(), stock);
    }
    if stocks.is_empty() {
        return Err(CatalogError::Corrupt("no stocks".into()));
    }
    Ok(Table {
        stocks,
        applied,
        term,
    })
}

fn parse_mark(mark: &str) -> Result<(u64, u64), CatalogError> {
    let (mut applied, mut term) = (None, None);
    for field in mark.split_whitespace() {
        let parsed = |value: &str| {
            value
                .parse::<u64>()
                .map_err(|e| CatalogError::Corrupt(format!("mark {field}: {e}")))
        };
        if let Some(value) = field.strip_prefix("applied=") {
            applied = Some(parsed(value)?);
        } else if let Some(value) = field.strip_prefix("term=") {
            term = Some(parsed(value)?);
        }
    }
    match (applied, term) {
        (Some(applied), Some(term)) => Ok((applied, term)),
        _ => Err(CatalogError::Corrupt(format!("bad mark line: {mark}"))),
    }
}

/// Write to a temporary file, fsync it, rename over the old file, fsync the directory:
/// a crash at any point leaves either the old or the new file, never a torn one.
fn write_atomically(path: &Path, table: &Table) -> Result<(), CatalogError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut text = format!(
        "{MARK_PREFIX} applied={} term={}\n",
        table.applied, table.term
    );
    let mut writer = csv::Writer::from_writer(Vec::new());
    for stock in table.stocks.values() {
        writer
            .serialize(stock)
            .map_err(|e| CatalogError::Corrupt(e.to_string()))?;
    }
    let rows = writer
        .into_inner()
        .map_err(|e| CatalogError::Corrupt(e.to_string()))?;
    text.push_str(&String::from_utf8_lossy(&rows));

    let tmp = path.with_extension("csv.tmp");
    let io = |e| CatalogError::io(path, e);
    let mut file = File::create(&tmp).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITIAL: &str = "name,price,quantity\nGameStart,15.99,100\nFishCo,9.5,100\n";

    fn trade(number: u64, name: &str, delta: i64) -> Trade {
        Trade {
            number,
            name: name.into(),
            delta,
        }
    }

    fn apply(
        store: &CatalogStore,
        term: u64,
        trades: Vec<Trade>,
    ) -> Result<ApplyOutcome, CatalogError> {
        store.apply(&ApplyRequest { term, trades })
    }

    #[test]
    fn seeds_from_initial_and_reloads_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.csv");
        let store = CatalogStore::open(&path, INITIAL).unwrap();
        assert_eq!(store.get("GameStart").unwrap().quantity, 100);
        apply(
            &store,
            1,
            vec![trade(1, "GameStart", -30), trade(2, "FishCo", 5)],
        )
        .unwrap();
        drop(store);

        let reopened = CatalogStore::open(&path, "name,price,quantity\nOther,1,1\n").unwrap();
        assert_eq!(reopened.get("GameStart").unwrap().quantity, 70);
        assert_eq!(reopened.get("FishCo").unwrap().quantity, 105);
        assert_eq!(reopened.get("Other"), None);
        let snapshot = reopened.snapshot();
        assert_eq!((snapshot.applied, snapshot.term), (2, 1));
    }

    #[test]
    fn applying_twice_changes_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = CatalogStore::open(dir.path().join("c.csv"), INITIAL).unwrap();
        let first = apply(&store, 1, vec![trade(1, "GameStart", -10)]).unwrap();
        assert_eq!(first.changed, vec!["GameStart".to_string()]);
        let again = apply(&store, 1, vec![trade(1, "GameStart", -10)]).unwrap();
        assert_eq!(
            again,
            ApplyOutcome {
                applied: 1,
                changed: vec![]
            }
        );
        assert_eq!(store.get("GameStart").unwrap().quantity, 90);
    }

    #[test]
    fn refuses_gaps_negative_quantities_and_stale_terms_without_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = CatalogStore::open(dir.path().join("c.csv"), INITIAL).unwrap();
        assert!(matches!(
            apply(&store, 1, vec![trade(2, "GameStart", -1)]),
            Err(CatalogError::Gap {
                applied: 0,
                next: 2
            })
        ));
        // The first trade is fine, the second overdraws: neither may be applied.
        assert!(matches!(
            apply(
                &store,
                1,
                vec![trade(1, "FishCo", -1), trade(2, "GameStart", -101)]
            ),
            Err(CatalogError::InsufficientQuantity)
        ));
        assert!(matches!(
            apply(&store, 1, vec![trade(1, "Nope", 1)]),
            Err(CatalogError::StockNotFound(_))
        ));
        assert_eq!(store.snapshot().applied, 0);
        assert_eq!(store.get("FishCo").unwrap().quantity, 100);

        apply(&store, 3, vec![trade(1, "GameStart", -100)]).unwrap();
        assert_eq!(store.get("GameStart").unwrap().quantity, 0);
        assert!(matches!(
            apply(&store, 2, vec![trade(2, "FishCo", 1)]),
            Err(CatalogError::StaleTerm {
                term: 2,
                current: 3
            })
        ));
    }

    #[test]
    fn corrupt_files_are_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.csv");
        fs::write(&path, "name,price,quantity\nGameStart,abc,100\n").unwrap();
        let error = CatalogStore::open(&path, INITIAL).unwrap_err();
        assert!(error.to_string().contains("row 1"), "{error}");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "name,price,quantity\nGameStart,abc,100\n"
        );
    }

    #[test]
    fn concurrent_applies_conserve_quantity() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            std::sync::Arc::new(CatalogStore::open(dir.path().join("c.csv"), INITIAL).unwrap());
        // Sixteen threads race to apply overlapping prefixes of one log; each trade lands once.
        let trades: Vec<Trade> = (1..=40)
            .map(|n| trade(n, "GameStart", if n % 2 == 0 { -3 } else { 1 }))
            .collect();
        std::thread::scope(|scope| {
            for _ in 0..16 {
                let store = store.clone();
                let trades = trades.clone();
                scope.spawn(move || {
                    for chunk in trades.chunks(5) {
                        let prefix = trades[..chunk[4].number as usize].to_vec();
                        store
                            .apply(&ApplyRequest {
                                term: 1,
                                trades: prefix,
                            })
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(store.snapshot().applied, 40);
        assert_eq!(store.get("GameStart").unwrap().quantity, 100 + 20 - 60);
    }
}
