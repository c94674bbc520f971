//! Cron expressions and their next instant in a time zone (pure).
//!
//! Five fields, `minute hour day-of-month month day-of-week`, each `*`, a number, a range
//! `a-b`, a step `*/n` or `a-b/n` or `a/n`, or a comma list of those; months and weekdays also
//! by name (`JAN`, `MON-FRI`; weekday 7 is Sunday too). Macros: `@yearly`/`@annually`,
//! `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly`. When both day fields are restricted,
//! a day matching either one fires (as in Vixie cron and Kubernetes CronJobs).
//!
//! Daylight saving time: a civil time the clock skips (02:30 on the night the clocks go
//! forward) fires at the same distance after the jump (03:30); a civil time that happens twice
//! (the night the clocks go back) fires at its first occurrence only, unless the hour field
//! covers every hour (`*`), in which case it fires at both: an every-15-minutes schedule keeps
//! firing every 15 minutes of real time.

use std::fmt;

use k8s_openapi::jiff::civil::{self, DateTime};
use k8s_openapi::jiff::tz::{AmbiguousOffset, TimeZone};
use k8s_openapi::jiff::{SignedDuration, Timestamp, ToSpan};

/// A parsed cron expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days_of_month: u32,
    months: u16,
    days_of_week: u8,
    /// The day-of-month field is `*` (or `?`).
    any_day_of_month: bool,
    /// The day-of-week field is `*` (or `?`).
    any_day_of_week: bool,
}

/// Why a cron expression does not parse: which field, its text, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronError {
    /// The field: minute, hour, day-of-month, month or day-of-week (empty: the whole text).
    pub field: &'static str,
    /// The text of that field.
    pub text: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "`{}`: {}", self.text, self.reason)
        } else {
            write!(
                f,
                "the {} field `{}`: {}",
                self.field, self.text, self.reason
            )
        }
    }
}

impl std::error::Error for CronError {}

struct FieldDef {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: FieldDef = FieldDef {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: FieldDef = FieldDef {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: FieldDef = FieldDef {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: FieldDef = FieldDef {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
};
// 7 is Sunday as well; folded onto 0 after parsing.
const DAY_OF_WEEK: FieldDef = FieldDef {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
};

/// The longest search for a next instant; a schedule that fires less often never fires.
const SEARCH_YEARS: i16 = 8;

impl Cron {
    /// Parses a 5-field expression or a macro.
    pub fn parse(text: &str) -> Result<Cron, CronError> {
        let trimmed = text.trim();
        let expanded = match trimmed.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(CronError {
                    field: "",
                    text: trimmed.to_string(),
                    reason: "unknown macro; use @hourly, @daily, @weekly, @monthly or @yearly"
                        .to_string(),
                });
            }
            _ => trimmed,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(CronError {
                field: "",
                text: trimmed.to_string(),
                reason: format!(
                    "has {} fields; a schedule has 5: minute hour day-of-month month day-of-week (e.g. `0 2 * * *`)",
                    fields.len()
                ),
            });
        }
        let minutes = parse_field(fields[0], &MINUTE)?;
        let hours = parse_field(fields[1], &HOUR)?;
        let days_of_month = parse_field(fields[2], &DAY_OF_MONTH)?;
        let months = parse_field(fields[3], &MONTH)?;
        let mut days_of_week = parse_field(fields[4], &DAY_OF_WEEK)?;
        if days_of_week & (1 << 7) != 0 {
            days_of_week = (days_of_week | 1) & 0x7f;
        }
        let cron = Cron {
            minutes,
            hours: hours as u32,
            days_of_month: days_of_month as u32,
            months: months as u16,
            days_of_week: days_of_week as u8,
            any_day_of_month: is_any(fields[2]),
            any_day_of_week: is_any(fields[4]),
        };
        if cron.any_day_of_week && !cron.fires_on_some_day() {
            return Err(CronError {
                field: "day-of-month",
                text: fields[2].to_string(),
                reason: format!(
                    "no such day in month(s) `{}`: the schedule would never fire",
                    fields[3]
                ),
            });
        }
        Ok(cron)
    }

    /// Whether some month has one of the days of the month (30 February never comes).
    fn fires_on_some_day(&self) -> bool {
        const LONGEST: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        (1..=12u32).any(|m| {
            self.months & (1 << m) != 0 && (1..=LONGEST[m as usize - 1]).any(|d| self.has_dom(d))
        })
    }

    fn has_dom(&self, day: u32) -> bool {
        self.days_of_month & (1 << day) != 0
    }

    fn every_hour(&self) -> bool {
        self.hours == (1 << 24) - 1
    }

    fn day_matches(&self, date: civil::Date) -> bool {
        let dom = self.has_dom(date.day() as u32);
        let dow = self.days_of_week & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        match (self.any_day_of_month, self.any_day_of_week) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }

    /// The first civil date-time at or after `from` (seconds ignored) that the fields match.
    fn next_civil(&self, from: DateTime) -> Option<DateTime> {
        let limit_year = from.year().saturating_add(SEARCH_YEARS);
        let mut date = from.date();
        let mut first_day = true;
        while date.year() <= limit_year {
            if self.months & (1 << date.month()) == 0 {
                date = date.first_of_month().checked_add(1.month()).ok()?;
                first_day = false;
                continue;
            }
            if self.day_matches(date) {
                let (h0, m0) = if first_day {
                    (from.hour() as u32, from.minute() as u32)
                } else {
                    (0, 0)
                };
                for h in h0..24 {
                    if self.hours & (1 << h) == 0 {
                        continue;
                    }
                    let start = if h == h0 { m0 } else { 0 };
                    if let Some(m) = (start..60).find(|m| self.minutes & (1 << m) != 0) {
                        return Some(date.at(h as i8, m as i8, 0, 0));
                    }
                }
            }
            date = date.tomorrow().ok()?;
            first_day = false;
        }
        None
    }

    /// The first instant strictly after `after` that the schedule fires at in `tz`.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        // Civil times near a DST change are not in the order of their instants, so the search
        // starts this much before `after` in civil time and keeps the earliest instant found,
        // looking on until civil time is this much past it.
        let slack = 3.hours();
        let civil_after = tz
            .to_datetime(after)
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?;
        // Fast path: no offset change near `after` and the candidate.
        let c = self.next_civil(civil_after.checked_add(1.minute()).ok()?)?;
        if let Some(&t) = self.instants(c, tz).first() {
            let offset_before = tz.to_offset(after.checked_sub(slack).ok()?);
            let offset_after = tz.to_offset(t.checked_add(slack).ok()?);
            if t > after && offset_before == offset_after {
                return Some(t);
            }
        }
        let mut from = civil_after.checked_sub(slack).ok()?;
        let mut best: Option<Timestamp> = None;
        loop {
            let c = self.next_civil(from)?;
            if let Some(b) = best
                && c > tz.to_datetime(b).checked_add(slack).ok()?
            {
                return best;
            }
            for t in self.instants(c, tz) {
                if t > after && best.is_none_or(|b| t < b) {
                    best = Some(t);
                }
            }
            from = c.checked_add(1.minute()).ok()?;
        }
    }

    /// The instants a matching civil time stands for in `tz`.
    fn instants(&self, dt: DateTime, tz: &TimeZone) -> Vec<Timestamp> {
        let amb = tz.to_ambiguous_timestamp(dt);
        match amb.offset() {
            AmbiguousOffset::Unambiguous { .. } | AmbiguousOffset::Gap { .. } => {
                amb.compatible().ok().into_iter().collect()
            }
            AmbiguousOffset::Fold { .. } => {
                let mut out: Vec<Timestamp> = amb.earlier().ok().into_iter().collect();
                if self.every_hour() {
                    out.extend(amb.later().ok());
                }
                out
            }
        }
    }

    /// The latest instant in `(after, until]`, and how many earlier ones in that window were
    /// passed over. Looks back at most about 400 days.
    pub fn latest_between(
        &self,
        after: Timestamp,
        until: Timestamp,
        tz: &TimeZone,
    ) -> Option<(Timestamp, u64)> {
        // Dense schedules: look in a short window first so a schedule left alone for months
        // does not walk every minute since.
        for window_hours in [1i64, 25, 24 * 32, 24 * 400] {
            let window_start = until
                .checked_sub(SignedDuration::from_hours(window_hours))
                .ok()?;
            let start = window_start.max(after);
            let mut t = start;
            let mut found = None;
            let mut passed = 0u64;
            while let Some(next) = self.next_after(t, tz) {
                if next > until {
                    break;
                }
                if found.is_some() {
                    passed += 1;
                }
                found = Some(next);
                t = next;
            }
            if let Some(f) = found {
                return Some((f, passed));
            }
            if start == after {
                return None;
            }
        }
        None
    }
}

fn is_any(field: &str) -> bool {
    field == "*" || field == "?"
}

fn parse_field(text: &str, def: &FieldDef) -> Result<u64, CronError> {
    let fail = |reason: String| CronError {
        field: def.name,
        text: text.to_string(),
        reason,
    };
    if text.is_empty() {
        return Err(fail("is empty".to_string()));
    }
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| fail(format!("step `{s}` is not a positive number")))?;
                if step == 0 {
                    return Err(fail(
                        "a step of 0 never advances; use 1 or more".to_string(),
                    ));
                }
                (r, Some(step))
            }
            None => (item, None),
        };
        let (lo, hi) = if is_any(range) {
            (def.min, def.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let lo = parse_value(a, def).map_err(&fail)?;
            let hi = parse_value(b, def).map_err(&fail)?;
            if lo > hi {
                return Err(fail(format!(
                    "range `{range}` runs backwards; write the smaller value first"
                )));
            }
            (lo, hi)
        } else {
            let v = parse_value(range, def).map_err(&fail)?;
            // `5/15` means from 5 to the end in steps of 15.
            (v, if step.is_some() { def.max } else { v })
        };
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

fn parse_value(text: &str, def: &FieldDef) -> Result<u32, String> {
    if let Some(i) = def.names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Ok(i as u32 + def.min);
    }
    let v: u32 = text.parse().map_err(|_| {
        if def.names.is_empty() {
            format!("`{text}` is not a number")
        } else {
            format!(
                "`{text}` is not a number or a name ({}-{})",
                def.names[0],
                def.names[def.names.len() - 1]
            )
        }
    })?;
    if v < def.min || v > def.max {
        return Err(format!("{v} is out of range {}-{}", def.min, def.max));
    }
    Ok(v)
}

/// The time zone named `name` (an IANA name such as `Europe/Berlin`, or `UTC`): from jiff's
/// database when one is compiled in, else from the system's zoneinfo files (`$ZONEINFO` or
/// /usr/share/zoneinfo).
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    if name == "UTC" || name == "Etc/UTC" {
        return Ok(TimeZone::UTC);
    }
    if let Ok(tz) = TimeZone::get(name) {
        return Ok(tz);
    }
    let valid = !name.is_empty()
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_-+".contains(c));
    if !valid {
        return Err(format!(
            "`{name}` is not an IANA time zone name (e.g. `Europe/Berlin`, `UTC`)"
        ));
    }
    let dirs: Vec<std::path::PathBuf> = std::env::var_os("ZONEINFO")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain([std::path::PathBuf::from("/usr/share/zoneinfo")])
        .collect();
    for dir in &dirs {
        if let Ok(data) = std::fs::read(dir.join(name)) {
            return TimeZone::tzif(name, &data)
                .map_err(|e| format!("the zoneinfo file of `{name}` is unreadable: {e}"));
        }
    }
    Err(format!(
        "unknown time zone `{name}` (not in {}); use an IANA name such as `Europe/Berlin`",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next_n(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
        let cron = Cron::parse(expr).unwrap();
        let tz = time_zone(tz).unwrap();
        let mut t = ts(from);
        let mut out = Vec::new();
        for _ in 0..n {
            t = cron.next_after(t, &tz).unwrap();
            out.push(
                t.to_zoned(tz.clone())
                    .strftime("%Y-%m-%d %H:%M %Z")
                    .to_string(),
            );
        }
        out
    }

    #[test]
    fn every_fifteen_minutes_fires_at_quarter_hours() {
        assert_eq!(
            next_n("*/15 * * * *", "UTC", "2026-03-01T10:07:30Z", 4),
            vec![
                "2026-03-01 10:15 UTC",
                "2026-03-01 10:30 UTC",
                "2026-03-01 10:45 UTC",
                "2026-03-01 11:00 UTC"
            ]
        );
    }

    #[test]
    fn an_instant_exactly_on_the_schedule_is_not_its_own_next() {
        assert_eq!(
            next_n("*/5 * * * *", "UTC", "2026-03-01T10:05:00Z", 1),
            vec!["2026-03-01 10:10 UTC"]
        );
    }

    #[test]
    fn weekdays_at_two_in_berlin_skip_the_weekend() {
        // 2026-01-09 is a Friday.
        assert_eq!(
            next_n(
                "0 2 * * MON-FRI",
                "Europe/Berlin",
                "2026-01-09T12:00:00Z",
                2
            ),
            vec!["2026-01-12 02:00 CET", "2026-01-13 02:00 CET"]
        );
    }

    #[test]
    fn lists_ranges_and_steps_combine() {
        assert_eq!(
            next_n("0,30 9-17/4 * * *", "UTC", "2026-05-05T09:10:00Z", 5),
            vec![
                "2026-05-05 09:30 UTC",
                "2026-05-05 13:00 UTC",
                "2026-05-05 13:30 UTC",
                "2026-05-05 17:00 UTC",
                "2026-05-05 17:30 UTC"
            ]
        );
    }

    #[test]
    fn macros_expand_to_their_five_fields() {
        assert_eq!(Cron::parse("@daily"), Cron::parse("0 0 * * *"));
        assert_eq!(Cron::parse("@hourly"), Cron::parse("0 * * * *"));
        assert_eq!(Cron::parse("@weekly"), Cron::parse("0 0 * * SUN"));
        assert_eq!(Cron::parse("@monthly"), Cron::parse("0 0 1 * *"));
        assert_eq!(Cron::parse("@yearly"), Cron::parse("0 0 1 JAN *"));
    }

    #[test]
    fn sunday_is_both_zero_and_seven() {
        assert_eq!(Cron::parse("0 0 * * 7"), Cron::parse("0 0 * * 0"));
        assert_eq!(Cron::parse("0 0 * * 5-7"), Cron::parse("0 0 * * 0,5,6"));
    }

    #[test]
    fn restricted_day_of_month_and_day_of_week_fire_on_either() {
        // The 13th (a Tuesday in Jan 2026) and every Friday.
        assert_eq!(
            next_n("0 0 13 * FRI", "UTC", "2026-01-10T00:00:00Z", 3),
            vec![
                "2026-01-13 00:00 UTC",
                "2026-01-16 00:00 UTC",
                "2026-01-23 00:00 UTC"
            ]
        );
    }

    #[test]
    fn the_thirty_first_fires_only_in_long_months() {
        assert_eq!(
            next_n("0 12 31 * *", "UTC", "2026-01-31T13:00:00Z", 2),
            vec!["2026-03-31 12:00 UTC", "2026-05-31 12:00 UTC"]
        );
    }

    #[test]
    fn a_nightly_run_skipped_by_the_spring_forward_fires_after_the_jump() {
        // Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist that night.
        assert_eq!(
            next_n("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", 3),
            vec![
                "2026-03-29 03:30 CEST",
                "2026-03-30 02:30 CEST",
                "2026-03-31 02:30 CEST"
            ]
        );
    }

    #[test]
    fn a_nightly_run_in_the_repeated_hour_of_the_fall_back_fires_once() {
        // Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
        assert_eq!(
            next_n("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", 2),
            vec!["2026-10-25 02:30 CEST", "2026-10-26 02:30 CET"]
        );
    }

    #[test]
    fn every_fifteen_minutes_keeps_its_pace_in_real_time_across_both_dst_changes() {
        assert_eq!(
            next_n("*/15 * * * *", "Europe/Berlin", "2026-03-29T00:30:00Z", 4),
            vec![
                "2026-03-29 01:45 CET",
                "2026-03-29 03:00 CEST",
                "2026-03-29 03:15 CEST",
                "2026-03-29 03:30 CEST"
            ]
        );
        assert_eq!(
            next_n("*/30 * * * *", "Europe/Berlin", "2026-10-24T23:45:00Z", 5),
            vec![
                "2026-10-25 02:00 CEST",
                "2026-10-25 02:30 CEST",
                "2026-10-25 02:00 CET",
                "2026-10-25 02:30 CET",
                "2026-10-25 03:00 CET"
            ]
        );
    }

    #[test]
    fn the_latest_instant_in_a_window_counts_the_ones_passed_over() {
        let cron = Cron::parse("*/5 * * * *").unwrap();
        let (t, passed) = cron
            .latest_between(
                ts("2026-03-01T10:00:00Z"),
                ts("2026-03-01T10:17:00Z"),
                &TimeZone::UTC,
            )
            .unwrap();
        assert_eq!(t, ts("2026-03-01T10:15:00Z"));
        assert_eq!(passed, 2);
        assert_eq!(
            cron.latest_between(
                ts("2026-03-01T10:15:00Z"),
                ts("2026-03-01T10:19:59Z"),
                &TimeZone::UTC
            ),
            None
        );
    }

    #[test]
    fn a_yearly_schedule_is_found_months_back() {
        let cron = Cron::parse("@yearly").unwrap();
        let (t, passed) = cron
            .latest_between(
                ts("2025-06-01T00:00:00Z"),
                ts("2026-09-01T00:00:00Z"),
                &TimeZone::UTC,
            )
            .unwrap();
        assert_eq!((t, passed), (ts("2026-01-01T00:00:00Z"), 0));
    }

    #[test]
    fn every_minute_of_january_is_found_from_september() {
        let cron = Cron::parse("* * * JAN *").unwrap();
        let started = std::time::Instant::now();
        let (t, passed) = cron
            .latest_between(
                ts("2025-06-01T00:00:00Z"),
                ts("2026-09-01T00:00:00Z"),
                &TimeZone::UTC,
            )
            .unwrap();
        assert_eq!(t, ts("2026-01-31T23:59:00Z"));
        assert_eq!(passed, 31 * 24 * 60 - 1);
        assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
    }

    #[test]
    fn an_invalid_field_is_named_with_the_reason() {
        let e = |s: &str| Cron::parse(s).unwrap_err().to_string();
        assert_eq!(
            e("0 25 * * *"),
            "the hour field `25`: 25 is out of range 0-23"
        );
        assert_eq!(
            e("*/0 * * * *"),
            "the minute field `*/0`: a step of 0 never advances; use 1 or more"
        );
        assert_eq!(
            e("0 0 * * MON-FOO"),
            "the day-of-week field `MON-FOO`: `FOO` is not a number or a name (SUN-SAT)"
        );
        assert_eq!(
            e("0 0 10-5 * *"),
            "the day-of-month field `10-5`: range `10-5` runs backwards; write the smaller value first"
        );
        assert_eq!(
            e("0 2 * *"),
            "`0 2 * *`: has 4 fields; a schedule has 5: minute hour day-of-month month day-of-week (e.g. `0 2 * * *`)"
        );
        assert_eq!(
            e("@nightly"),
            "`@nightly`: unknown macro; use @hourly, @daily, @weekly, @monthly or @yearly"
        );
        assert_eq!(
            e("0 0 30 FEB *"),
            "the day-of-month field `30`: no such day in month(s) `FEB`: the schedule would never fire"
        );
    }

    #[test]
    fn time_zones_resolve_by_iana_name_and_unknown_ones_are_explained() {
        assert!(time_zone("Europe/Berlin").is_ok());
        assert!(time_zone("UTC").is_ok());
        let e = time_zone("Mars/Olympus").unwrap_err();
        assert!(e.starts_with("unknown time zone `Mars/Olympus`"), "{e}");
        let e = time_zone("../etc/passwd").unwrap_err();
        assert!(e.contains("not an IANA time zone name"), "{e}");
    }
}
