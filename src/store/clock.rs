//! UTC time arithmetic without a calendar crate: Unix milliseconds, civil dates (proleptic
//! Gregorian, Howard Hinnant's algorithms), weekdays and month arithmetic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) const SECOND_MS: i64 = 1_000;
pub(crate) const MINUTE_MS: i64 = 60 * SECOND_MS;
pub(crate) const HOUR_MS: i64 = 60 * MINUTE_MS;
pub(crate) const DAY_MS: i64 = 24 * HOUR_MS;

/// Milliseconds since the Unix epoch (negative before it), saturating at the `i64` range.
pub fn to_unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// The instant `ms` milliseconds after the Unix epoch (before it when negative).
pub fn from_unix_ms(ms: i64) -> SystemTime {
    let magnitude = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH.checked_add(magnitude).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(magnitude).unwrap_or(UNIX_EPOCH)
    }
}

/// Days since 1970-01-01 of the civil date `y-m-d` (`m` in 1..=12, `d` in 1..=31).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // [0, 399]
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 }; // [0, 11], March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The civil date `(year, month 1..=12, day 1..=31)` of `days` since 1970-01-01.
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = yoe + era * 400 + i64::from(m <= 2);
    // The ranges above make these conversions lossless.
    (y, m as u32, d as u32)
}

/// `YYYY-MM-DD` of `days` since 1970-01-01.
pub fn format_day(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Parses `YYYY-MM-DD` into days since 1970-01-01.
pub fn parse_day(s: &str) -> Option<i64> {
    let mut parts = s.trim().splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// UTC midnight starting the civil day `YYYY-MM-DD`.
pub fn day_start(s: &str) -> Option<SystemTime> {
    parse_day(s).map(|days| from_unix_ms(days.saturating_mul(DAY_MS)))
}

pub(crate) fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

pub(crate) fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Day of the week of `days` since 1970-01-01, Monday = 0 … Sunday = 6.
pub(crate) fn weekday(days: i64) -> i64 {
    // 1970-01-01 was a Thursday (3).
    (days + 3).rem_euclid(7)
}

/// Month index `year * 12 + (month - 1)` of `days` since 1970-01-01.
pub(crate) fn month_index(days: i64) -> i64 {
    let (y, m, _) = civil_from_days(days);
    y * 12 + i64::from(m) - 1
}

/// Days since 1970-01-01 of the first day of month index `mi` (see [`month_index`]).
pub(crate) fn first_day_of_month_index(mi: i64) -> i64 {
    let y = mi.div_euclid(12);
    let m = mi.rem_euclid(12) as u32 + 1;
    days_from_civil(y, m, 1)
}

/// `ms` plus `months` calendar months, keeping the time of day and clamping the day of the
/// month (Jan 31 + 1 month = Feb 28/29).
pub(crate) fn add_months(ms: i64, months: i64) -> i64 {
    let days = ms.div_euclid(DAY_MS);
    let time_of_day = ms.rem_euclid(DAY_MS);
    let (y, m, d) = civil_from_days(days);
    let mi = y * 12 + i64::from(m) - 1 + months;
    let ty = mi.div_euclid(12);
    let tm = mi.rem_euclid(12) as u32 + 1;
    let td = d.min(days_in_month(ty, tm));
    days_from_civil(ty, tm, td)
        .saturating_mul(DAY_MS)
        .saturating_add(time_of_day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trips() {
        for days in (-800_000..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(format_day(0), "1970-01-01");
        assert_eq!(parse_day("2024-02-29"), Some(days_from_civil(2024, 2, 29)));
        assert_eq!(parse_day("2023-02-29"), None);
        assert_eq!(format_day(days_from_civil(2000, 12, 31)), "2000-12-31");
    }

    #[test]
    fn weekdays_and_months() {
        // 2024-01-01 was a Monday.
        assert_eq!(weekday(days_from_civil(2024, 1, 1)), 0);
        assert_eq!(weekday(days_from_civil(2024, 1, 7)), 6);
        let jan31 = days_from_civil(2024, 1, 31) * DAY_MS + 5 * HOUR_MS;
        assert_eq!(
            add_months(jan31, 1),
            days_from_civil(2024, 2, 29) * DAY_MS + 5 * HOUR_MS
        );
        assert_eq!(
            add_months(jan31, 13),
            days_from_civil(2025, 2, 28) * DAY_MS + 5 * HOUR_MS
        );
        assert_eq!(
            first_day_of_month_index(month_index(days_from_civil(2024, 12, 15)) + 1),
            days_from_civil(2025, 1, 1)
        );
    }

    #[test]
    fn unix_ms_round_trips() {
        for ms in [0, 1, -1, 1_700_000_000_123, -86_400_000] {
            assert_eq!(to_unix_ms(from_unix_ms(ms)), ms);
        }
    }
}
