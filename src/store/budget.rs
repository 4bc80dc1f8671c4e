//! LiteLLM duration strings (`budget_duration`, and the `duration` a key expires after) and
//! budget windows.
//!
//! Syntax: a positive integer and a unit: `s` seconds, `m` minutes, `h` hours, `d` days,
//! `w` weeks, `mo` calendar months (`30s`, `10m`, `1h`, `1d`, `7d`, `30d`, `1mo`).
//!
//! Budget windows follow LiteLLM's standardized resets, always in UTC:
//!
//! | duration | window |
//! | --- | --- |
//! | `1d` | the UTC day, reset at midnight |
//! | `7d`, `1w` | the week, reset on Monday 00:00 |
//! | `30d`, `1mo` | the calendar month, reset on the 1st at 00:00 |
//! | `Nmo` | N calendar months, reset on the 1st at 00:00 |
//! | other `Nd`, `Nw` | N days (N weeks) from the midnight the budget started, then every N days |
//! | `Ns`, `Nm`, `Nh` under a day | N-unit slices of the UTC day from midnight (the last slice of a day ends at midnight when N does not divide the day) |
//! | `Ns`, `Nm`, `Nh` of a day or more | N units from the midnight the budget started, then every N units |
//!
//! The "anchor" of a window scheme is any one of its boundaries: keys keep it in
//! `budget_reset_at`, so windows stay on the same grid after the stored reset time has passed
//! (see [`BudgetDuration::window`]).

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use super::clock::{
    DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS, add_months, first_day_of_month_index, from_unix_ms,
    month_index, to_unix_ms, weekday,
};

/// The unit of a [`BudgetDuration`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DurationUnit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
}

impl DurationUnit {
    fn suffix(self) -> &'static str {
        match self {
            Self::Second => "s",
            Self::Minute => "m",
            Self::Hour => "h",
            Self::Day => "d",
            Self::Week => "w",
            Self::Month => "mo",
        }
    }

    /// Length in milliseconds of one unit; `None` for months, whose length varies.
    fn fixed_ms(self) -> Option<i64> {
        match self {
            Self::Second => Some(SECOND_MS),
            Self::Minute => Some(MINUTE_MS),
            Self::Hour => Some(HOUR_MS),
            Self::Day => Some(DAY_MS),
            Self::Week => Some(7 * DAY_MS),
            Self::Month => None,
        }
    }
}

/// A parsed LiteLLM duration such as `30s`, `1h`, `7d` or `1mo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BudgetDuration {
    value: u32,
    unit: DurationUnit,
}

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration {input:?}: expected a positive number and a unit s, m, h, d, w or mo (e.g. 30s, 1h, 7d, 1mo)"
)]
pub struct DurationParseError {
    input: String,
}

/// Durations above this many units are refused (100 years of days is 36,500).
const MAX_VALUE: u32 = 1_000_000;

/// The budget window a moment falls in: `[start, end)`; spend since `start` counts against the
/// budget, which resets at `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetWindow {
    pub start: SystemTime,
    pub end: SystemTime,
}

impl BudgetDuration {
    /// `value` units; `value` must be positive.
    pub fn new(value: u32, unit: DurationUnit) -> Option<Self> {
        (value > 0 && value <= MAX_VALUE).then_some(Self { value, unit })
    }

    pub fn value(&self) -> u32 {
        self.value
    }

    pub fn unit(&self) -> DurationUnit {
        self.unit
    }

    /// `t` plus this duration (LiteLLM's `duration_in_seconds`, used for key expiry): fixed
    /// lengths for s/m/h/d/w, calendar months (day clamped to the month's end) for `mo`.
    pub fn after(&self, t: SystemTime) -> SystemTime {
        let ms = to_unix_ms(t);
        let value = i64::from(self.value);
        let end = match self.unit.fixed_ms() {
            Some(unit_ms) => ms.saturating_add(value.saturating_mul(unit_ms)),
            None => add_months(ms, value),
        };
        from_unix_ms(end)
    }

    /// When a budget that starts at `now` first resets (LiteLLM's
    /// `get_next_standardized_reset_time`, in UTC): the end of [`Self::window`] with no anchor.
    pub fn next_reset(&self, now: SystemTime) -> SystemTime {
        self.window(now, None).end
    }

    /// The window that contains `now`. `anchor` is a boundary of the window grid for the
    /// schemes that are not calendar-aligned (custom day counts, multi-month and long
    /// fixed-length durations): pass the key's stored `budget_reset_at`. Without an anchor the
    /// grid starts at the UTC midnight (or, for months, the 1st) of `now`.
    pub fn window(&self, now: SystemTime, anchor: Option<SystemTime>) -> BudgetWindow {
        let t = to_unix_ms(now);
        let (start, end) = self.window_ms(t, anchor.map(to_unix_ms));
        BudgetWindow {
            start: from_unix_ms(start),
            end: from_unix_ms(end),
        }
    }

    fn window_ms(&self, t: i64, anchor: Option<i64>) -> (i64, i64) {
        let day = t.div_euclid(DAY_MS);
        let midnight = day * DAY_MS;
        let value = i64::from(self.value);
        match (self.unit, self.value) {
            (DurationUnit::Day, 1) => (midnight, midnight + DAY_MS),
            (DurationUnit::Day, 7) | (DurationUnit::Week, 1) => {
                let monday = (day - weekday(day)) * DAY_MS;
                (monday, monday + 7 * DAY_MS)
            }
            (DurationUnit::Day, 30) | (DurationUnit::Month, 1) => {
                let mi = month_index(day);
                (
                    first_day_of_month_index(mi) * DAY_MS,
                    first_day_of_month_index(mi + 1) * DAY_MS,
                )
            }
            (DurationUnit::Month, _) => {
                let mi = month_index(day);
                let anchor_mi = anchor.map_or(mi, |a| month_index(a.div_euclid(DAY_MS)));
                let start_mi = anchor_mi + (mi - anchor_mi).div_euclid(value) * value;
                (
                    first_day_of_month_index(start_mi) * DAY_MS,
                    first_day_of_month_index(start_mi + value) * DAY_MS,
                )
            }
            (unit, _) => {
                // Every other unit has a fixed length.
                let len = unit
                    .fixed_ms()
                    .unwrap_or(DAY_MS)
                    .saturating_mul(value)
                    .max(1);
                if len < DAY_MS {
                    // Slices of the UTC day, from midnight.
                    let start = midnight + (t - midnight) / len * len;
                    (start, (start + len).min(midnight + DAY_MS))
                } else {
                    // A fixed grid through the anchor (or today's midnight).
                    let a = anchor.unwrap_or(midnight);
                    let start = a.saturating_add(t.saturating_sub(a).div_euclid(len) * len);
                    (start, start.saturating_add(len))
                }
            }
        }
    }
}

impl FromStr for BudgetDuration {
    type Err = DurationParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurationParseError {
            input: s.to_owned(),
        };
        let trimmed = s.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(err)?;
        let (digits, unit) = trimmed.split_at(split);
        let value: u32 = digits.parse().map_err(|_| err())?;
        let unit = match unit {
            "s" => DurationUnit::Second,
            "m" => DurationUnit::Minute,
            "h" => DurationUnit::Hour,
            "d" => DurationUnit::Day,
            "w" => DurationUnit::Week,
            "mo" => DurationUnit::Month,
            _ => return Err(err()),
        };
        Self::new(value, unit).ok_or_else(err)
    }
}

impl fmt::Display for BudgetDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.value, self.unit.suffix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::clock::days_from_civil;

    fn at(y: i64, m: u32, d: u32, h: i64, min: i64, s: i64) -> SystemTime {
        from_unix_ms(days_from_civil(y, m, d) * DAY_MS + h * HOUR_MS + min * MINUTE_MS + s * 1000)
    }

    fn dur(s: &str) -> BudgetDuration {
        match s.parse() {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn parses_litellm_strings() {
        for (s, value, unit) in [
            ("30s", 30, DurationUnit::Second),
            ("10m", 10, DurationUnit::Minute),
            ("1h", 1, DurationUnit::Hour),
            ("1d", 1, DurationUnit::Day),
            ("7d", 7, DurationUnit::Day),
            ("30d", 30, DurationUnit::Day),
            ("2w", 2, DurationUnit::Week),
            ("1mo", 1, DurationUnit::Month),
            (" 3mo ", 3, DurationUnit::Month),
        ] {
            let d = dur(s);
            assert_eq!((d.value(), d.unit()), (value, unit), "{s}");
            assert_eq!(d.to_string(), s.trim());
        }
        for bad in [
            "",
            "d",
            "0d",
            "10",
            "1y",
            "-1d",
            "1.5h",
            "1 d",
            "1dd",
            "99999999999d",
        ] {
            assert!(bad.parse::<BudgetDuration>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn standardized_resets() {
        // Wednesday 2024-01-31 13:45:10 UTC.
        let now = at(2024, 1, 31, 13, 45, 10);
        assert_eq!(dur("1d").next_reset(now), at(2024, 2, 1, 0, 0, 0));
        assert_eq!(dur("24h").next_reset(now), at(2024, 2, 1, 0, 0, 0));
        assert_eq!(dur("7d").next_reset(now), at(2024, 2, 5, 0, 0, 0)); // Monday
        assert_eq!(dur("1w").next_reset(now), at(2024, 2, 5, 0, 0, 0));
        assert_eq!(dur("30d").next_reset(now), at(2024, 2, 1, 0, 0, 0));
        assert_eq!(dur("1mo").next_reset(now), at(2024, 2, 1, 0, 0, 0));
        assert_eq!(dur("3mo").next_reset(now), at(2024, 4, 1, 0, 0, 0));
        assert_eq!(dur("1h").next_reset(now), at(2024, 1, 31, 14, 0, 0));
        assert_eq!(dur("5h").next_reset(now), at(2024, 1, 31, 15, 0, 0));
        assert_eq!(dur("10m").next_reset(now), at(2024, 1, 31, 13, 50, 0));
        assert_eq!(dur("30s").next_reset(now), at(2024, 1, 31, 13, 45, 30));
        assert_eq!(dur("2d").next_reset(now), at(2024, 2, 2, 0, 0, 0));
        // Late in the day a slice that does not divide the day ends at midnight.
        let late = at(2024, 1, 31, 22, 0, 0);
        assert_eq!(
            dur("5h").window(late, None).start,
            at(2024, 1, 31, 20, 0, 0)
        );
        assert_eq!(dur("5h").next_reset(late), at(2024, 2, 1, 0, 0, 0));
        // December rolls into the next year.
        assert_eq!(
            dur("1mo").next_reset(at(2024, 12, 15, 0, 0, 0)),
            at(2025, 1, 1, 0, 0, 0)
        );
        // On a boundary the new window has begun.
        let monday = at(2024, 2, 5, 0, 0, 0);
        assert_eq!(dur("7d").window(monday, None).start, monday);
        assert_eq!(dur("7d").next_reset(monday), at(2024, 2, 12, 0, 0, 0));
    }

    #[test]
    fn anchored_windows_stay_on_their_grid() {
        // A 2d budget created 2024-01-31 resets 2024-02-02 00:00; later windows follow that grid.
        let anchor = at(2024, 2, 2, 0, 0, 0);
        let w = dur("2d").window(at(2024, 2, 5, 10, 0, 0), Some(anchor));
        assert_eq!(w.start, at(2024, 2, 4, 0, 0, 0));
        assert_eq!(w.end, at(2024, 2, 6, 0, 0, 0));
        // Before the anchor too.
        let w = dur("2d").window(at(2024, 2, 1, 10, 0, 0), Some(anchor));
        assert_eq!((w.start, w.end), (at(2024, 1, 31, 0, 0, 0), anchor));
        // 3-month windows through April 1st.
        let w = dur("3mo").window(at(2024, 9, 9, 0, 0, 0), Some(at(2024, 4, 1, 0, 0, 0)));
        assert_eq!(
            (w.start, w.end),
            (at(2024, 7, 1, 0, 0, 0), at(2024, 10, 1, 0, 0, 0))
        );
        // Calendar-aligned schemes ignore the anchor.
        let w = dur("1d").window(at(2024, 3, 3, 3, 0, 0), Some(anchor));
        assert_eq!(w.start, at(2024, 3, 3, 0, 0, 0));
    }

    #[test]
    fn expiry_adds_the_duration() {
        let now = at(2024, 1, 31, 13, 45, 10);
        assert_eq!(dur("30s").after(now), at(2024, 1, 31, 13, 45, 40));
        assert_eq!(dur("2h").after(now), at(2024, 1, 31, 15, 45, 10));
        assert_eq!(dur("30d").after(now), at(2024, 3, 1, 13, 45, 10));
        assert_eq!(dur("1mo").after(now), at(2024, 2, 29, 13, 45, 10));
        assert_eq!(dur("1w").after(now), at(2024, 2, 7, 13, 45, 10));
    }
}
