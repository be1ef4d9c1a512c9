//! Budget periods and their calendar boundaries at a UTC offset.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime, UtcOffset};

/// How often a budget starts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// At midnight.
    Daily,
    /// At midnight between Sunday and Monday.
    Weekly,
    /// At midnight on the first of the month.
    Monthly,
    /// Never: a lifetime budget.
    None,
}

impl Period {
    /// Its lower-case name: `daily`, `weekly`, `monthly`, or `lifetime` for
    /// [`Period::None`] (a budget that never resets).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::None => "lifetime",
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The period containing `now_ms`: its start and (unless `Period::None`) its
/// end, both Unix ms, with calendar boundaries at `offset` from UTC.
pub(crate) fn bounds(period: Period, now_ms: u64, offset: UtcOffset) -> (u64, Option<u64>) {
    if period == Period::None {
        return (0, None);
    }
    let secs = i64::try_from(now_ms / 1_000).unwrap_or(i64::MAX);
    let Ok(now) = OffsetDateTime::from_unix_timestamp(secs) else { return (0, None) };
    let local = now.to_offset(offset).date();
    let (start, end) = match period {
        Period::Daily => (local, local.next_day()),
        Period::Weekly => {
            let back = i64::from(local.weekday().number_days_from_monday());
            let monday = local.checked_sub(time::Duration::days(back)).unwrap_or(local);
            (monday, monday.checked_add(time::Duration::days(7)))
        }
        Period::Monthly => {
            let first = Date::from_calendar_date(local.year(), local.month(), 1).unwrap_or(local);
            let next = if local.month() == Month::December {
                Date::from_calendar_date(local.year() + 1, Month::January, 1).ok()
            } else {
                Date::from_calendar_date(local.year(), local.month().next(), 1).ok()
            };
            (first, next)
        }
        Period::None => unreachable!("handled above"),
    };
    let ms = |date: Date| {
        let at = date.midnight().assume_offset(offset).unix_timestamp();
        u64::try_from(at).unwrap_or(0).saturating_mul(1_000)
    };
    (ms(start), end.map(ms))
}

/// `ms` as an RFC 3339 UTC timestamp (`2026-12-01T00:00:00Z`).
#[must_use]
pub fn rfc3339(ms: u64) -> String {
    let secs = i64::try_from(ms / 1_000).unwrap_or(i64::MAX);
    match OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{ms} ms after the epoch"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000;

    /// 2026-11-21 15:30 UTC, a Saturday.
    const NOW: u64 = 1_795_275_000_000;

    #[track_caller]
    fn check(period: Period, offset_hours: i8, now: u64, start: &str, end: Option<&str>) {
        let offset = UtcOffset::from_hms(offset_hours, 0, 0).unwrap();
        let (s, e) = bounds(period, now, offset);
        assert_eq!(rfc3339(s), start, "{period:?} start");
        assert_eq!(e.map(rfc3339).as_deref(), end, "{period:?} end");
    }

    #[test]
    fn calendar_boundaries() {
        assert_eq!(rfc3339(NOW), "2026-11-21T15:30:00Z");
        check(Period::Daily, 0, NOW, "2026-11-21T00:00:00Z", Some("2026-11-22T00:00:00Z"));
        check(Period::Weekly, 0, NOW, "2026-11-16T00:00:00Z", Some("2026-11-23T00:00:00Z"));
        check(Period::Monthly, 0, NOW, "2026-11-01T00:00:00Z", Some("2026-12-01T00:00:00Z"));
        check(Period::None, 0, NOW, "1970-01-01T00:00:00Z", None);
        // At UTC+9 it is already Sunday 00:30: the day starts at 15:00 UTC.
        check(Period::Daily, 9, NOW, "2026-11-21T15:00:00Z", Some("2026-11-22T15:00:00Z"));
        // At UTC-5 it is 10:30 on Saturday.
        check(Period::Daily, -5, NOW, "2026-11-21T05:00:00Z", Some("2026-11-22T05:00:00Z"));
        // December rolls into January of the next year.
        let december = NOW + 20 * 24 * HOUR;
        check(Period::Monthly, 0, december, "2026-12-01T00:00:00Z", Some("2027-01-01T00:00:00Z"));
    }

    #[test]
    fn the_boundary_instant_belongs_to_the_new_period() {
        let (start, end) = bounds(Period::Daily, NOW, UtcOffset::UTC);
        let end = end.unwrap();
        assert_eq!(bounds(Period::Daily, end, UtcOffset::UTC).0, end);
        assert_eq!(bounds(Period::Daily, end - 1, UtcOffset::UTC).0, start);
    }
}
