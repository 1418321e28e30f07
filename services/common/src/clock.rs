//! Times on the wire. Log entries carry milliseconds since the Unix epoch; the API shows and
//! takes instants in RFC 3339 (UTC) and calendar days as `YYYY-MM-DD` (UTC).

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;

/// The last instant RFC 3339 can write, 9999-12-31T23:59:59.999Z, in milliseconds since the
/// epoch: a time the API takes to keep (an order's `expire_at`) may be no later.
pub const LATEST_MS: u64 = 253_402_300_799_999;

/// Milliseconds since the Unix epoch now (0 if the clock is before it).
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `ms` as RFC 3339 in UTC, with milliseconds: `2026-11-29T20:16:40.123Z`.
pub fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// An instant given as RFC 3339 (`2026-11-29T20:16:40Z`, any offset) or as milliseconds since
/// the Unix epoch.
pub fn parse_instant(text: &str) -> Result<u64, String> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    let instant = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        format!("{text:?} is neither an RFC 3339 time (2026-11-29T20:16:40Z) nor milliseconds")
    })?;
    // An instant before 1970 bounds nothing that is in a log: it is the beginning.
    Ok(u64::try_from(instant.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
}

/// The UTC day (days since 1970-01-01) of an instant in milliseconds.
pub fn day_of(ms: u64) -> u32 {
    u32::try_from(ms / DAY_MS).unwrap_or(u32::MAX)
}

/// The day a `YYYY-MM-DD` date names.
pub fn parse_day(text: &str) -> Result<u32, String> {
    let format = format_description!("[year]-[month]-[day]");
    let date =
        Date::parse(text, &format).map_err(|_| format!("{text:?} is not a date as YYYY-MM-DD"))?;
    u32::try_from(date.to_julian_day() - EPOCH_JULIAN_DAY)
        .map_err(|_| format!("{text:?} is before 1970"))
}

/// `YYYY-MM-DD` of a day.
pub fn day_text(day: u32) -> String {
    let julian = i64::from(day) + i64::from(EPOCH_JULIAN_DAY);
    i32::try_from(julian)
        .ok()
        .and_then(|j| Date::from_julian_day(j).ok())
        .map_or_else(|| day.to_string(), |date| date.to_string())
}

/// The Julian day number of 1970-01-01.
const EPOCH_JULIAN_DAY: i32 = 2_440_588;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_and_days_round_trip() {
        let ms = 1_796_000_000_123;
        assert_eq!(rfc3339(ms), "2026-11-30T00:53:20.123Z");
        assert_eq!(parse_instant(&rfc3339(ms)), Ok(ms));
        assert_eq!(parse_instant("2026-11-30T01:53:20.123+01:00"), Ok(ms));
        assert_eq!(parse_instant("1796000000123"), Ok(ms));
        assert_eq!(rfc3339(LATEST_MS), "9999-12-31T23:59:59.999Z");
        assert!(parse_instant("yesterday").is_err());
        // Before 1970 is before anything in a log: the beginning.
        assert_eq!(parse_instant("1969-12-31T23:59:59Z"), Ok(0));

        let day = day_of(ms);
        assert_eq!(day_text(day), "2026-11-30");
        assert_eq!(parse_day("2026-11-30"), Ok(day));
        assert_eq!(parse_day("1970-01-01"), Ok(0));
        assert_eq!(day_of(DAY_MS - 1), 0);
        for bad in ["2026-13-01", "2026-11-31", "29.11.2026", "", "1969-12-31"] {
            assert!(parse_day(bad).is_err(), "{bad}");
        }
    }
}
