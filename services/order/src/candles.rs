//! Candles (open, high, low, close, volume) of each stock's book trades, kept per minute as the
//! trades are applied, so that a chart of any interval is a sum of minutes, never a scan of the
//! trades. A stock's minutes live with its book (I10); they only ever grow at the end, since
//! entries' times never go back along the log.

use stocknet_common::wire::Ohlcv;
use stocknet_common::Price;

/// A candle's width in milliseconds: one minute, the unit the book keeps.
pub const MINUTE_MS: u64 = 60_000;

/// The trades of one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candle {
    /// Start of the interval, milliseconds since the epoch.
    pub start: u64,
    pub traded: Ohlcv,
}

/// One stock's minutes with trades, oldest first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Minutes(Vec<Candle>);

impl Minutes {
    pub fn from_candles(candles: Vec<Candle>) -> Result<Self, String> {
        let ordered = candles.windows(2).all(|pair| pair[0].start < pair[1].start);
        let aligned = candles.iter().all(|c| c.start % MINUTE_MS == 0);
        if ordered && aligned {
            Ok(Self(candles))
        } else {
            Err("candles out of order".into())
        }
    }

    pub fn as_slice(&self) -> &[Candle] {
        &self.0
    }

    /// Counts a trade of `quantity` at `price` made at `time` (never before the last one).
    pub fn trade(&mut self, time: u64, price: Price, quantity: u32) {
        let start = time - time % MINUTE_MS;
        let trade = Ohlcv::trade(price, quantity);
        match self.0.last_mut() {
            Some(last) if last.start >= start => last.traded.extend(&trade),
            _ => self.0.push(Candle {
                start,
                traded: trade,
            }),
        }
    }

    /// The first `limit` candles of width `interval` (a whole number of minutes) that start
    /// at or after `from` and before `to`, oldest first (an interval without trades has none),
    /// and the start of the next one if there are more.
    pub fn candles(
        &self,
        interval: u64,
        from: u64,
        to: u64,
        limit: usize,
    ) -> (Vec<Candle>, Option<u64>) {
        let first = self.0.partition_point(|c| c.start < from - from % interval);
        let mut candles: Vec<Candle> = Vec::new();
        for minute in self.0[first..].iter().take_while(|c| c.start < to) {
            let start = minute.start - minute.start % interval;
            if start < from {
                continue;
            }
            let full = candles.len() == limit;
            match candles.last_mut() {
                Some(last) if last.start == start => last.traded.extend(&minute.traded),
                _ if full => return (candles, Some(start)),
                _ => candles.push(Candle { start, ..*minute }),
            }
        }
        (candles, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_add_up_to_any_interval() {
        let mut minutes = Minutes::default();
        let hour = 60 * MINUTE_MS;
        // Two trades in minute 0, one in minute 1, one in minute 61.
        minutes.trade(5, Price::from_cents(1000), 2);
        minutes.trade(59_999, Price::from_cents(1010), 1);
        minutes.trade(MINUTE_MS + 1, Price::from_cents(990), 4);
        minutes.trade(hour + MINUTE_MS, Price::from_cents(1005), 3);
        let one = minutes.candles(MINUTE_MS, 0, 2 * hour, 10).0;
        assert_eq!(one.len(), 3);
        assert_eq!(
            one[0],
            Candle {
                start: 0,
                traded: Ohlcv {
                    open: Price::from_cents(1000),
                    high: Price::from_cents(1010),
                    low: Price::from_cents(1000),
                    close: Price::from_cents(1010),
                    volume: 3,
                    trades: 2
                }
            }
        );
        let hours = minutes.candles(hour, 0, 2 * hour, 10).0;
        assert_eq!(
            hours
                .iter()
                .map(|c| (c.start, c.traded))
                .collect::<Vec<_>>(),
            [
                (
                    0,
                    Ohlcv {
                        open: Price::from_cents(1000),
                        high: Price::from_cents(1010),
                        low: Price::from_cents(990),
                        close: Price::from_cents(990),
                        volume: 7,
                        trades: 3
                    }
                ),
                (hour, Ohlcv::trade(Price::from_cents(1005), 3))
            ]
        );
        // Only intervals that start within [from, to).
        assert_eq!(minutes.candles(hour, 1, 2 * hour, 10).0.len(), 1);
        assert_eq!(minutes.candles(MINUTE_MS, MINUTE_MS, hour, 10).0.len(), 1);
        // A page of two minutes says where the next begins.
        assert_eq!(
            minutes.candles(MINUTE_MS, 0, 2 * hour, 2).1,
            Some(hour + MINUTE_MS)
        );
        assert_eq!(minutes.candles(MINUTE_MS, 0, 2 * hour, 3).1, None);
        assert!(Minutes::from_candles(vec![one[1], one[0]]).is_err());
        assert_eq!(Minutes::from_candles(one.clone()).map(|m| m.0), Ok(one));
    }
}
