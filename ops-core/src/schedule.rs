//! Schedules and the planner: when a job's runs are due, as pure functions of
//! (schedule, what has been handled, now).
//!
//! Nothing here reads a clock or sleeps. The daemon asks [`plan`] what to do at `now`
//! and sleeps until [`Plan::wake`]; tests ask the same function with a simulated clock.
//!
//! Time-zone rules, as cron implementations settled them (cronie's): a job at a fixed
//! local time runs once a day even when the clock jumps — a time skipped by the
//! spring-forward jump runs at the first instant after the jump, a time repeated by the
//! fall-back jump runs at its first occurrence only. A job whose hour field is `*` runs
//! by the wall clock: the skipped hour has no runs, the repeated hour runs twice (in
//! real-time order: 02:00, 02:15, … of the first pass, then of the second).
//! `every` is absolute time aligned to the Unix epoch (`every = "6h"` fires at 00, 06,
//! 12 and 18 UTC), whatever the time zone.
//!
//! A slot's start is the slot plus its jitter, and the jitter always ends before the
//! next slot, so starts keep the slots' order; [`Timing::check`] tells an operator
//! whose jitter would be cut short that way.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use chrono::{
    DateTime, Datelike, Days, Duration as Span, MappedLocalTime, NaiveDate, NaiveDateTime, Offset,
    TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The most skipped slots one [`Plan`] lists; older ones are only counted
/// ([`Plan::more_missed`]), so a long outage of a frequent job costs the daemon a
/// bounded number of history rows.
const MAX_SKIPS_LISTED: usize = 100;

/// A cron walk through more due slots than this (a long outage of a frequent job)
/// jumps to the last [`RECENT`] before now and estimates how many it jumped over.
const WALK_BEFORE_JUMP: usize = 1000;

/// The end of a long outage that is walked slot by slot (see [`WALK_BEFORE_JUMP`]).
const RECENT: Span = Span::days(1);

/// How far ahead a cron search looks before concluding a schedule never fires
/// (`0 0 30 2 *`): 29 years, because a 29 February on a given weekday
/// (`0 0 29 2 */7`, both day fields must match) comes back only every 28.
const CRON_SEARCH_DAYS: u64 = 29 * 366;

/// The most one clock change moves a zone's clock (Antarctica/Casey has moved by
/// 3 hours), with a margin. Within this of a fall-back, a later local time can be an
/// earlier instant.
const MAX_CLOCK_CHANGE: Span = Span::hours(4);

/// How often offsets are sampled to find clock changes: no zone changes its clock twice
/// within half an hour.
const OFFSET_SAMPLE: Span = Span::minutes(30);

/// The longest duration [`parse_duration`] accepts: 100 years.
pub const MAX_DURATION: Duration = Duration::from_secs(36_525 * 86_400);

/// A five-field cron expression (minute, hour, day of month, month, day of week), as
/// in crontab(5): numbers, `*`, ranges `a-b`, steps `*/n` and `a-b/n`, lists, month
/// and day names (`jan`, `mon`), 7 for Sunday, and `@hourly`, `@daily`/`@midnight`,
/// `@weekly`, `@monthly`, `@yearly`/`@annually`.
///
/// The day fields combine as in cronie: when both are restricted (neither starts with
/// `*`) a day matches either (`0 0 13 * fri`: the 13th and every Friday); when either
/// starts with `*`, including a step such as `*/2`, a day must match both
/// (`0 0 */2 * *`: odd days of the month).
#[derive(Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// The day-of-month field starts with `*` (`*`, `*/2`).
    days_star: bool,
    /// The day-of-week field starts with `*`.
    weekdays_star: bool,
}

impl fmt::Debug for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cron({:?})", self.text)
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Cron {
    /// Parses a cron expression.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] naming the field that is wrong and why.
    pub fn parse(text: &str) -> Result<Self> {
        let trimmed = text.trim();
        let expanded = match trimmed {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other if other.starts_with('@') => {
                return Err(Error::invalid(format!(
                    "schedule '{text}': unknown shorthand; use @hourly, @daily, @weekly, @monthly or @yearly, or five fields"
                )));
            }
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(Error::invalid(format!(
                "schedule '{text}' has {} fields; cron takes five: minute hour day-of-month month day-of-week (\"0 */6 * * *\")",
                fields.len()
            )));
        }
        let minutes = field(text, "minute", fields[0], 0, 59, &[])?;
        let hours = field(text, "hour", fields[1], 0, 23, &[])?;
        let days = field(text, "day of month", fields[2], 1, 31, &[])?;
        let months = field(text, "month", fields[3], 1, 12, &MONTH_NAMES)?;
        let mut weekdays = field(text, "day of week", fields[4], 0, 7, &DAY_NAMES)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & 0x7f;
        }
        Ok(Self {
            text: trimmed.to_owned(),
            minutes,
            hours: u32::try_from(hours).unwrap_or(u32::MAX),
            days: u32::try_from(days).unwrap_or(u32::MAX),
            months: u16::try_from(months).unwrap_or(u16::MAX),
            weekdays: u8::try_from(weekdays).unwrap_or(u8::MAX),
            days_star: fields[2].starts_with('*'),
            weekdays_star: fields[4].starts_with('*'),
        })
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let dom = self.days & (1 << date.day()) != 0;
        let dow = self.weekdays & (1 << date.weekday().num_days_from_sunday()) != 0;
        // A plain `*` sets every bit, so "both" is right for it too.
        if self.days_star || self.weekdays_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    fn every_hour(&self) -> bool {
        self.hours == (1 << 24) - 1
    }

    /// How many local times in `[from, to)` the expression names, ignoring clock
    /// changes (each skipped or repeated hour makes it an hour's worth of runs off):
    /// an estimate counted by days, not by runs.
    fn count_local(&self, from: NaiveDateTime, to: NaiveDateTime) -> u64 {
        let per_hour = u64::from(self.minutes.count_ones());
        let per_day = u64::from(self.hours.count_ones()) * per_hour;
        // The named times on `t`'s day before `t`.
        let before = |t: NaiveDateTime| {
            if !self.day_matches(t.date()) {
                return 0;
            }
            let past_minute = t.second() > 0 || t.nanosecond() > 0;
            let minutes = members(self.minutes, 0, 59)
                .filter(|m| *m < t.minute() || (*m == t.minute() && past_minute))
                .count();
            let hours = members(self.hours.into(), 0, 23)
                .filter(|h| *h < t.hour())
                .count();
            u64::try_from(hours).unwrap_or(0) * per_hour
                + if self.hours & (1 << t.hour()) != 0 {
                    u64::try_from(minutes).unwrap_or(0)
                } else {
                    0
                }
        };
        let mut total = 0u64;
        let mut date = from.date();
        while date < to.date() {
            if self.day_matches(date) {
                total += per_day;
            }
            let Some(next) = date.succ_opt() else {
                break;
            };
            date = next;
        }
        (total + before(to)).saturating_sub(before(from))
    }

    /// The first run strictly after `after`, in `tz`; `None` when the expression never
    /// fires (`0 0 30 2 *`).
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = local_time(after, tz)?;
        // Local times are tried in local order, which is real-time order except across
        // a fall-back: then the repeated local times come again, and a run at one of
        // them (before `after`'s local time) can still be later than `after`. So start
        // as far back as the clock falls in the next hours.
        let (lowest, _) = offset_range(tz, after, add_clamped(after, MAX_CLOCK_CHANGE));
        let back = Span::seconds((offset_at(after, tz) - lowest).max(0));
        let from = local
            .checked_sub_signed(back)?
            .with_second(0)?
            .with_nanosecond(0)?;
        let last = from
            .date()
            .checked_add_days(Days::new(CRON_SEARCH_DAYS))
            .unwrap_or(NaiveDate::MAX);
        // The earliest instant found, and the local time past which nothing can be
        // earlier than it.
        let mut best: Option<(DateTime<Utc>, NaiveDateTime)> = None;
        let mut date = from.date();
        'days: while date <= last {
            if self.day_matches(date) {
                let first_day = date == from.date();
                let first_hour = if first_day { from.hour() } else { 0 };
                for hour in members(self.hours.into(), first_hour, 23) {
                    let first_minute = if first_day && hour == from.hour() {
                        from.minute()
                    } else {
                        0
                    };
                    for minute in members(self.minutes, first_minute, 59) {
                        let Some(naive) = date.and_hms_opt(hour, minute, 0) else {
                            continue;
                        };
                        if best.is_some_and(|(_, stop)| naive >= stop) {
                            break 'days;
                        }
                        for t in self.instants(naive, tz).into_iter().flatten() {
                            if t > after && best.is_none_or(|(b, _)| t < b) {
                                best = Some((t, search_end(t, after, tz)));
                            }
                        }
                    }
                }
            }
            let Some(next) = date.succ_opt() else {
                break;
            };
            date = next;
        }
        best.map(|(t, _)| t)
    }

    /// The instants at which local `naive` runs: one, two for an every-hour job in a
    /// repeated hour, or none for an every-hour job in a skipped one.
    fn instants(&self, naive: NaiveDateTime, tz: Tz) -> [Option<DateTime<Utc>>; 2] {
        match tz.from_local_datetime(&naive) {
            MappedLocalTime::Single(t) => [Some(t.with_timezone(&Utc)), None],
            MappedLocalTime::Ambiguous(first, second) => [
                Some(first.with_timezone(&Utc)),
                self.every_hour().then(|| second.with_timezone(&Utc)),
            ],
            MappedLocalTime::None if self.every_hour() => [None, None],
            MappedLocalTime::None => [first_instant_after_gap(naive, tz), None],
        }
    }
}

/// The set bits of `set` from `lo` to `hi`.
fn members(set: u64, lo: u32, hi: u32) -> impl Iterator<Item = u32> {
    (lo..=hi).filter(move |b| set & (1u64 << b) != 0)
}

/// The local wall-clock time of `t` in `tz`; `None` only at the ends of the calendar.
fn local_time(t: DateTime<Utc>, tz: Tz) -> Option<NaiveDateTime> {
    t.naive_utc()
        .checked_add_offset(tz.offset_from_utc_datetime(&t.naive_utc()).fix())
}

/// `tz`'s offset from UTC at `t`, in seconds.
fn offset_at(t: DateTime<Utc>, tz: Tz) -> i64 {
    i64::from(
        tz.offset_from_utc_datetime(&t.naive_utc())
            .fix()
            .local_minus_utc(),
    )
}

/// The lowest and the highest offset `tz` has from `from` to `to`, in seconds.
fn offset_range(tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> (i64, i64) {
    let mut low = offset_at(to, tz);
    let mut high = low;
    let mut t = from;
    while t < to {
        let o = offset_at(t, tz);
        low = low.min(o);
        high = high.max(o);
        match t.checked_add_signed(OFFSET_SAMPLE) {
            Some(next) => t = next,
            None => break,
        }
    }
    (low, high)
}

/// The local time after which no run can be earlier than `best` (a run after
/// `after`): a later local time is a later instant, except across a fall-back, by at
/// most the clock change.
fn search_end(best: DateTime<Utc>, after: DateTime<Utc>, tz: Tz) -> NaiveDateTime {
    let since = after.max(
        best.checked_sub_signed(MAX_CLOCK_CHANGE * 2)
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
    );
    let (low, high) = offset_range(tz, since, best);
    local_time(best, tz)
        .and_then(|l| l.checked_add_signed(Span::seconds(high - low)))
        .unwrap_or(NaiveDateTime::MIN)
}

/// The first instant after the spring-forward jump over local `naive` (a time that
/// does not exist in `tz`): the least instant whose local time is past it.
fn first_instant_after_gap(naive: NaiveDateTime, tz: Tz) -> Option<DateTime<Utc>> {
    // Offsets lie between -12 and +14 hours, so the instant is within 27 hours of
    // `naive` read as UTC; halving by seconds finds it in 18 steps.
    let guess = naive.and_utc().timestamp();
    let (mut lo, mut hi) = (guess - 27 * 3600, guess + 27 * 3600);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if local_time(DateTime::from_timestamp(mid, 0)?, tz)? > naive {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

/// `t + d`, or the end of the calendar.
fn add_clamped(t: DateTime<Utc>, d: Span) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Parses one cron field into a bit set.
fn field(text: &str, name: &str, spec: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u64> {
    let bad = |why: String| {
        Error::invalid(format!(
            "schedule '{text}': the {name} field '{spec}' {why}"
        ))
    };
    let value = |v: &str| -> Result<u32> {
        let lower = v.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            // Month names count from 1, day names from 0.
            return Ok(
                u32::try_from(i).unwrap_or(0) + lo.max(if names.len() == 12 { 1 } else { 0 })
            );
        }
        let n: u32 = v
            .parse()
            .map_err(|_| bad(format!("has '{v}', which is not a number or a name")))?;
        if n < lo || n > hi {
            return Err(bad(format!("has {n}, outside {lo}-{hi}")));
        }
        Ok(n)
    };
    let mut bits = 0u64;
    for part in spec.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    bad(format!("has step '{s}', which is not a positive number"))
                })?;
                (r, step)
            }
            None => (part, 1),
        };
        let (from, to) = if range == "*" {
            (lo, if hi == 7 { 6 } else { hi })
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            // `5/15` means from 5 to the end in steps of 15.
            (v, if step > 1 { hi } else { v })
        };
        if from > to {
            return Err(bad(format!(
                "has the range {from}-{to}, which runs backwards"
            )));
        }
        // A step longer than the range takes its first value only (`5/4294967295`).
        let mut v = Some(from);
        while let Some(x) = v.filter(|x| *x <= to) {
            bits |= 1 << x;
            v = x.checked_add(step);
        }
    }
    if bits == 0 {
        return Err(bad("matches nothing".to_owned()));
    }
    Ok(bits)
}

/// When a job runs: a cron expression in a time zone, or a fixed period.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Schedule {
    /// A cron expression, read in a time zone.
    Cron {
        /// The expression.
        cron: Cron,
        /// The zone its times are in.
        tz: Tz,
    },
    /// Every `period`, aligned to the Unix epoch.
    Every {
        /// The period (at least one second).
        period: Duration,
    },
}

/// The shortest time between two slots of a schedule, and where it was found.
struct Gap {
    length: Duration,
    /// The two slots, for a cron schedule (an `every` gap is the same everywhere).
    between: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

impl Schedule {
    /// A cron schedule in the IANA time zone `tz` (`UTC`, `Europe/Berlin`).
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for a bad expression, an unknown zone, or an
    /// expression that never fires.
    pub fn cron(expr: &str, tz: &str) -> Result<Self> {
        let cron = Cron::parse(expr)?;
        let tz = parse_tz(tz)?;
        let s = Self::Cron { cron, tz };
        if s.next_after(DateTime::<Utc>::UNIX_EPOCH).is_none() {
            return Err(Error::invalid(format!(
                "schedule '{expr}' never fires (no such date); check the day and month fields"
            )));
        }
        Ok(s)
    }

    /// Every `period` (at least one second).
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] for a period under a second.
    pub fn every(period: Duration) -> Result<Self> {
        if period < Duration::from_secs(1) {
            return Err(Error::invalid(format!(
                "every = {period:?} is too short: the shortest period is 1s"
            )));
        }
        Ok(Self::Every { period })
    }

    /// The first slot strictly after `after`; `None` when there is none.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron { cron, tz } => cron.next_after(after, *tz),
            Schedule::Every { period } => {
                let p = i64::try_from(period.as_millis()).ok()?;
                let t = after.timestamp_millis();
                let next = t.div_euclid(p).checked_add(1)?.checked_mul(p)?;
                DateTime::from_timestamp_millis(next)
            }
        }
    }

    /// The next `n` slots after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut t = after;
        while out.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }

    /// The newest slot in `(after, until]`, if any: a halving search over
    /// [`Self::next_after`] (slots fall on whole milliseconds), about 40 calls of it.
    fn last_in(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let within = |ms: i64| {
            DateTime::from_timestamp_millis(ms)
                .and_then(|t| self.next_after(t))
                .filter(|n| *n <= until)
        };
        let mut lo = after.timestamp_millis();
        let mut found = within(lo)?;
        let mut hi = until.timestamp_millis();
        // `within(lo)` holds and `within(hi)` does not; when they are a millisecond
        // apart, the slot after `lo` is the newest one up to `until`.
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match within(mid) {
                Some(n) => {
                    lo = mid;
                    found = n;
                }
                None => hi = mid,
            }
        }
        Some(found)
    }

    /// The shortest time between two consecutive slots: the period, or for cron the
    /// shortest over a run of slots from a fixed date and around each clock change of
    /// the two years after it (where a jump can bring two runs closer). Fixed dates so
    /// that a config's verdict does not change with the day it is checked.
    fn shortest_gap(&self) -> Option<Gap> {
        // No two runs are closer than a minute: nothing shorter to find.
        const MINUTE: Duration = Duration::from_secs(60);
        let tz = match self {
            Schedule::Every { period } => {
                return Some(Gap {
                    length: *period,
                    between: None,
                });
            }
            Schedule::Cron { tz, .. } => *tz,
        };
        let epoch = DateTime::from_timestamp(1_735_689_600, 0)?; // 2025-01-01 UTC
        let mut best: Option<Gap> = None;
        let mut walk = |from: DateTime<Utc>, until: DateTime<Utc>, slots: usize| {
            let mut prev = self.next_after(from);
            for _ in 0..slots {
                if best.as_ref().is_some_and(|g| g.length <= MINUTE) {
                    break;
                }
                let Some(a) = prev else {
                    break;
                };
                let Some(b) = self.next_after(a).filter(|b| *b <= until) else {
                    break;
                };
                let length = (b - a).to_std().unwrap_or_default();
                if best.as_ref().is_none_or(|g| length < g.length) {
                    best = Some(Gap {
                        length,
                        between: Some((a, b)),
                    });
                }
                prev = Some(b);
            }
        };
        // The schedule's own rhythm: more than a day of even the densest schedule,
        // and a leap-day schedule several times.
        walk(epoch, add_clamped(epoch, Span::days(30 * 366)), 1500);
        let around = Span::hours(26);
        for change in clock_changes(tz, epoch, add_clamped(epoch, Span::days(2 * 366))) {
            walk(
                change.checked_sub_signed(around).unwrap_or(change),
                add_clamped(change, around),
                // 52 hours of every minute.
                3120,
            );
        }
        best
    }
}

/// The instants at which `tz` changes its offset between `from` and `to`.
fn clock_changes(tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let mut day = from;
    while day < to {
        let Some(next) = day.checked_add_signed(Span::days(1)) else {
            break;
        };
        if offset_at(day, tz) != offset_at(next, tz) {
            let (mut lo, mut hi) = (day.timestamp(), next.timestamp());
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                match DateTime::from_timestamp(mid, 0) {
                    Some(t) if offset_at(t, tz) == offset_at(day, tz) => lo = mid,
                    _ => hi = mid,
                }
            }
            out.extend(DateTime::from_timestamp(hi, 0));
        }
        day = next;
    }
    out
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Cron { cron, tz } => write!(f, "{cron} ({tz})"),
            Schedule::Every { period } => write!(f, "every {}", format_duration(*period)),
        }
    }
}

/// Parses an IANA time-zone name.
///
/// # Errors
/// [`crate::ErrorKind::InvalidInput`] for an unknown name.
pub fn parse_tz(name: &str) -> Result<Tz> {
    name.parse::<Tz>().map_err(|_| {
        Error::invalid(format!(
            "unknown time zone '{name}': use an IANA name such as UTC, Europe/Berlin or America/New_York"
        ))
    })
}

/// Parses a duration: a number with a unit, or several (`90s`, `10m`, `2h`, `1d`,
/// `1h30m`, `500ms`); a bare number is seconds. At most [`MAX_DURATION`] (100 years):
/// anything longer is a typo, and would overflow the calendar when added to a date.
///
/// # Errors
/// [`crate::ErrorKind::InvalidInput`] saying how to write one, or that it is longer
/// than 100 years.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let bad = || {
        Error::invalid(format!(
            "'{text}' is not a duration: write a number with a unit (500ms, 30s, 10m, 2h, 1d, 1h30m)"
        ))
    };
    let t = text.trim();
    if t.is_empty() {
        return Err(bad());
    }
    let total = if let Ok(secs) = t.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let mut total = Duration::ZERO;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let part = match unit {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n.saturating_mul(60)),
                "h" => Duration::from_secs(n.saturating_mul(3600)),
                "d" => Duration::from_secs(n.saturating_mul(86_400)),
                "w" => Duration::from_secs(n.saturating_mul(7 * 86_400)),
                _ => return Err(bad()),
            };
            total = total.saturating_add(part);
        }
        total
    };
    if total > MAX_DURATION {
        return Err(Error::invalid(format!(
            "'{text}' is longer than 100 years ({}), the longest duration dbops takes",
            format_duration(MAX_DURATION)
        )));
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it (`6h`, `1h30m`, `2s`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.subsec_millis();
    let mut secs = d.as_secs();
    if secs == 0 {
        return format!("{ms}ms");
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if ms > 0 {
        out.push_str(&format!("{ms}ms"));
    }
    out
}

/// A job's timing: its schedule and how its runs are spread, retried and caught up.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Timing {
    /// When it runs.
    pub schedule: Schedule,
    /// Each slot starts up to this much later, by a fixed amount per job and slot (so
    /// jobs sharing a schedule spread out, and a restart does not move them). A slot's
    /// jitter always ends before the next slot, so starts keep the slots' order;
    /// [`Timing::check`] rejects a jitter that would be cut short that way.
    pub jitter: Duration,
    /// Extra attempts after a temporary failure.
    pub retries: u32,
    /// The first retry waits between half of this and this; each later one doubles.
    pub retry_backoff: Duration,
    /// No retry waits longer than this.
    pub retry_backoff_max: Duration,
    /// Whether a slot missed while nothing was running the schedule runs once late.
    pub catch_up: bool,
    /// A slot started later than this after its time counts as missed (and runs as a
    /// catch-up, if `catch_up`).
    pub late_after: Duration,
}

impl Timing {
    /// A timing with no jitter, no retries, catch-up on, 30 s first backoff (10 min at
    /// most), and a slot counted late after a minute.
    pub fn new(schedule: Schedule) -> Self {
        Self {
            schedule,
            jitter: Duration::ZERO,
            retries: 0,
            retry_backoff: Duration::from_secs(30),
            retry_backoff_max: Duration::from_secs(600),
            catch_up: true,
            late_after: Duration::from_secs(60),
        }
    }

    /// Sets the jitter (see [`Timing::check`] for how long it may be).
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets the number of retries.
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Sets the first retry's backoff and the longest.
    pub fn with_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.retry_backoff = first;
        self.retry_backoff_max = max.max(first);
        self
    }

    /// Turns catch-up runs on or off.
    pub fn with_catch_up(mut self, catch_up: bool) -> Self {
        self.catch_up = catch_up;
        self
    }

    /// Checks that the jitter is shorter than the shortest time between two slots
    /// (the period; for cron, the shortest gap, daylight-saving days included). A
    /// longer jitter would not be honoured: each slot's jitter is cut short at the next
    /// slot. Meant for config validation; the planner works with any timing.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] naming the jitter, the schedule and its
    /// shortest gap (and where it is, for cron).
    pub fn check(&self) -> Result<()> {
        // No two cron runs are closer than a minute.
        let floor = match self.schedule {
            Schedule::Cron { .. } => Duration::from_secs(60),
            Schedule::Every { .. } => Duration::ZERO,
        };
        if self.jitter.is_zero() || self.jitter < floor {
            return Ok(());
        }
        let Some(gap) = self.schedule.shortest_gap() else {
            return Ok(());
        };
        if self.jitter < gap.length {
            return Ok(());
        }
        let at = match gap.between {
            Some((a, b)) => format!(
                " (from {} to {})",
                a.format("%Y-%m-%d %H:%M UTC"),
                b.format("%Y-%m-%d %H:%M UTC")
            ),
            None => String::new(),
        };
        Err(Error::invalid(format!(
            "jitter = {} is not shorter than the shortest time between two runs of schedule {}: {}{at}; a run's jitter must end before the next run is due: use a jitter under {}",
            format_duration(self.jitter),
            self.schedule,
            format_duration(gap.length),
            format_duration(gap.length),
        )))
    }

    /// This slot's jitter for job `job`: the same every time it is asked, and shorter
    /// than the time to the next slot.
    pub fn jitter_for(&self, job: &str, slot: DateTime<Utc>) -> Duration {
        if self.jitter.is_zero() {
            return Duration::ZERO;
        }
        self.jitter_before(job, slot, self.schedule.next_after(slot))
    }

    /// `slot`'s jitter, given the slot after it.
    fn jitter_before(
        &self,
        job: &str,
        slot: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
    ) -> Duration {
        let mut max = u64::try_from(self.jitter.as_millis()).unwrap_or(u64::MAX);
        if let Some(next) = next {
            let gap = u64::try_from((next - slot).num_milliseconds()).unwrap_or(0);
            max = max.min(gap);
        }
        if max == 0 {
            return Duration::ZERO;
        }
        let mut h = blake3::Hasher::new();
        h.update(job.as_bytes());
        h.update(&slot.timestamp_millis().to_le_bytes());
        let bytes = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&bytes.as_bytes()[..8]);
        Duration::from_millis(u64::from_le_bytes(first) % max)
    }

    /// When `slot` of job `job` starts (the slot plus its jitter).
    pub fn start_of(&self, job: &str, slot: DateTime<Utc>) -> DateTime<Utc> {
        let next = if self.jitter.is_zero() {
            None
        } else {
            self.schedule.next_after(slot)
        };
        self.start_before(job, slot, next)
    }

    /// `slot`'s start, given the slot after it (which it is before).
    fn start_before(
        &self,
        job: &str,
        slot: DateTime<Utc>,
        next: Option<DateTime<Utc>>,
    ) -> DateTime<Utc> {
        Span::from_std(self.jitter_before(job, slot, next))
            .ok()
            .and_then(|j| slot.checked_add_signed(j))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// The next `n` start times after `now`, jitter included, earliest first.
    pub fn upcoming(&self, job: &str, now: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        if n == 0 {
            return out;
        }
        // Starts keep the slots' order (a jitter ends before the next slot), so of the
        // slots up to `now` only the newest can still start after it, and only if it
        // is less than a jitter old; every later slot starts after `now`.
        let back = Span::from_std(self.jitter.min(MAX_DURATION)).unwrap_or_else(|_| Span::zero());
        let since = now.checked_sub_signed(back).unwrap_or(now);
        let mut slot = self
            .schedule
            .last_in(since, now)
            .or_else(|| self.schedule.next_after(now));
        while let Some(s) = slot
            && out.len() < n
        {
            let next = self.schedule.next_after(s);
            let start = self.start_before(job, s, next);
            if start > now {
                out.push(start);
            }
            slot = next;
        }
        out
    }

    /// When to retry after attempt `failed_attempt` (1 = the first) failed at
    /// `failed_at` with a temporary error, or `None` to give up: retries used up, or
    /// the retry would start at or after `next_slot` (the next slot runs instead), or
    /// past the end of the calendar. `unit` in `[0, 1)` picks the point in the backoff
    /// window (the caller's random number), so the delay lies in `[b/2, b]` for
    /// `b = retry_backoff × 2^(n-1)` capped at `retry_backoff_max`.
    pub fn retry_at(
        &self,
        failed_attempt: u32,
        failed_at: DateTime<Utc>,
        next_slot: Option<DateTime<Utc>>,
        unit: f64,
    ) -> Option<DateTime<Utc>> {
        if failed_attempt == 0 || failed_attempt > self.retries {
            return None;
        }
        let (low, high) = self.backoff_window(failed_attempt);
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let delay = low + (high - low).mul_f64(unit);
        let at = failed_at.checked_add_signed(Span::from_std(delay).ok()?)?;
        match next_slot {
            Some(next) if at >= next => None,
            _ => Some(at),
        }
    }

    /// The bounds of the wait before retry number `n` (1 = the first retry).
    pub fn backoff_window(&self, n: u32) -> (Duration, Duration) {
        let factor = 2u32.saturating_pow(n.saturating_sub(1));
        let high = self
            .retry_backoff
            .saturating_mul(factor)
            .min(self.retry_backoff_max);
        (high / 2, high)
    }

    /// The slots of job `job` due at `now` after `cursor`, for an `every` schedule:
    /// counted, not walked, so an outage of any length costs the same.
    fn due_every(
        &self,
        job: &str,
        period: Duration,
        cursor: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Due {
        let mut due = Due::default();
        let Some(p) = i64::try_from(period.as_millis()).ok().filter(|p| *p > 0) else {
            return due;
        };
        // Slots as milliseconds since the epoch, each a multiple of `p`.
        let at = DateTime::from_timestamp_millis;
        let start = |ms: i64| {
            at(ms).map(|slot| self.start_before(job, slot, ms.checked_add(p).and_then(at)))
        };
        let Some(first) = cursor
            .timestamp_millis()
            .div_euclid(p)
            .checked_add(1)
            .and_then(|k| k.checked_mul(p))
        else {
            return due;
        };
        // The newest slot at or before now is due if its jitter has passed; the one
        // before it is (its jitter ended before this one).
        let top = now.timestamp_millis().div_euclid(p) * p;
        let newest = if start(top).is_some_and(|s| s <= now) {
            Some(top)
        } else {
            top.checked_sub(p)
        };
        let Some(newest) = newest.filter(|n| *n >= first) else {
            due.wake = start(first);
            return due;
        };
        let count = (newest - first) / p + 1;
        let listed = count.min(i64::try_from(MAX_SKIPS_LISTED + 1).unwrap_or(i64::MAX));
        for k in (0..listed).rev() {
            due.slots.extend(at(newest - k * p));
        }
        due.count = usize::try_from(count).unwrap_or(usize::MAX);
        due.wake = newest.checked_add(p).and_then(start);
        due
    }

    /// The slots of job `job` due at `now` after `cursor`, for cron expression `cron`
    /// in `tz`, walked one by one. A walk through more than [`WALK_BEFORE_JUMP`] slots
    /// older than [`RECENT`] jumps to the last of those and estimates how many it
    /// jumped over from the calendar ([`Cron::count_local`]).
    fn due_walk(
        &self,
        job: &str,
        cron: &Cron,
        tz: Tz,
        cursor: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Due {
        let mut due = Due::default();
        let schedule = &self.schedule;
        let mut next = schedule.next_after(cursor);
        let mut jumped = false;
        while let Some(slot) = next {
            let after = schedule.next_after(slot);
            let start = self.start_before(job, slot, after);
            if start > now {
                due.wake = Some(start);
                break;
            }
            due.push(slot);
            next = after;
            if !jumped
                && due.count == WALK_BEFORE_JUMP
                && let Some(n) = next
                && let Some(recent) = now.checked_sub_signed(RECENT)
                && n < recent
            {
                jumped = true;
                // Resume at the second-newest slot before the recent part: it is due
                // (its successor is before `recent`), and the walk from there reaches
                // the newest one whatever its jitter.
                if let Some(last) = schedule.last_in(slot, recent)
                    && let Some(resume) = schedule.last_in(slot, last - Span::milliseconds(1))
                {
                    if resume > n
                        && let (Some(from), Some(to)) = (local_time(n, tz), local_time(resume, tz))
                    {
                        // The slots from `n` up to `resume`, at least `n` itself.
                        let skipped = cron.count_local(from, to).max(1);
                        due.count = due
                            .count
                            .saturating_add(usize::try_from(skipped).unwrap_or(usize::MAX));
                        due.estimated = true;
                    }
                    next = Some(resume);
                }
            }
        }
        due
    }
}

/// The slots due in one [`plan`]: the newest few, and how many in all.
#[derive(Debug, Default)]
struct Due {
    /// The newest due slots, oldest first (at most [`MAX_SKIPS_LISTED`] + 1).
    slots: VecDeque<DateTime<Utc>>,
    /// All due slots, the listed ones included.
    count: usize,
    /// Whether `count` is an estimate.
    estimated: bool,
    /// The start of the first slot not due yet.
    wake: Option<DateTime<Utc>>,
}

impl Due {
    fn push(&mut self, slot: DateTime<Utc>) {
        if self.slots.len() > MAX_SKIPS_LISTED {
            self.slots.pop_front();
        }
        self.slots.push_back(slot);
        self.count += 1;
    }
}

/// What the planner knows about one job: the newest slot already dealt with, and
/// whether a run is going on now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobState {
    /// The newest slot run, skipped or recorded missed — or, for a job with no
    /// history, the moment it was first scheduled (nothing before it is due).
    pub handled: DateTime<Utc>,
    /// When the run going on now started, if one is.
    pub running_since: Option<DateTime<Utc>>,
}

impl JobState {
    /// A job whose slots up to `handled` are dealt with.
    pub fn new(handled: DateTime<Utc>) -> Self {
        Self {
            handled,
            running_since: None,
        }
    }

    /// Marks a run as going on since `started` (or none).
    pub fn with_running(mut self, started: Option<DateTime<Utc>>) -> Self {
        self.running_since = started;
        self
    }

    /// Takes a plan's slots as handled (call after acting on it). After a plan that
    /// found the clock gone back, `handled` moves back to that plan's `now`.
    pub fn apply(&mut self, plan: &Plan) {
        if let Some(h) = plan.handled {
            self.handled = if plan.clock_went_back {
                h
            } else {
                self.handled.max(h)
            };
        }
    }
}

/// Why a slot does not run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
#[non_exhaustive]
pub enum SkipReason {
    /// The previous run (started then) was still going: runs never overlap or queue.
    Overlap {
        /// When the run still going started.
        since: DateTime<Utc>,
    },
    /// Nothing ran the schedule at the slot's time, and a later slot (or a catch-up
    /// run) stands for it, or catch-up is off.
    Missed,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Overlap { since } => write!(
                f,
                "skipped: the previous run (started {}) was still running",
                since.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            SkipReason::Missed => {
                f.write_str("missed: nothing was running the schedule at this time")
            }
        }
    }
}

/// One thing the planner says to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Start a run for `slot`.
    Start {
        /// The slot.
        slot: DateTime<Utc>,
        /// `Schedule`, or `CatchUp` for a late start of a missed slot.
        trigger: crate::jobs::Trigger,
    },
    /// Record `slot` as skipped.
    Skip {
        /// The slot.
        slot: DateTime<Utc>,
        /// Why.
        reason: SkipReason,
    },
}

/// The planner's answer for one job at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Plan {
    /// What to do now, oldest slot first: at most 100 skips (the newest ones), and at
    /// most one start.
    pub actions: Vec<Action>,
    /// The newest slot these actions deal with (feed back through [`JobState::apply`]);
    /// `now` when the clock went back.
    pub handled: Option<DateTime<Utc>>,
    /// When to ask again (the next slot's start); `None` when the schedule has ended.
    pub wake: Option<DateTime<Utc>>,
    /// Slots due but not listed in `actions` (older than the listed skips, and skipped
    /// for the same reason): a long outage of a frequent job. Exact for `every`; for
    /// cron, exact unless `more_missed_estimated`.
    pub more_missed: usize,
    /// Whether `more_missed` is an estimate: a cron schedule that missed more than
    /// 1000 slots before the last day of an outage is walked only through those 1000
    /// and the last day; the slots in between are counted from the calendar, which is
    /// an hour's worth of slots off for each daylight-saving change among them.
    pub more_missed_estimated: bool,
    /// The job's handled slot was later than `now`: the clock went back (corrected, or
    /// a virtual machine's snapshot restored). The plan starts from `now` instead —
    /// slots up to it count as handled — and `handled` is `now`, which
    /// [`JobState::apply`] takes even though it is older. Worth a warning.
    pub clock_went_back: bool,
}

/// Decides what job `job` should do at `now`: pure, so a daemon and a simulated clock
/// get the same answers.
///
/// Every slot whose start time (slot plus jitter) has come since `state.handled` is
/// dealt with exactly once: while a run is going on each is skipped as an overlap
/// (recorded, never queued); otherwise the newest starts — as a catch-up when it is
/// more than `late_after` late, if catch-up is on — and the older ones are recorded as
/// missed. Only the newest 100 skips are listed; the rest are counted in
/// [`Plan::more_missed`]. A `state.handled` later than `now` (the clock went back) is
/// taken as `now`, see [`Plan::clock_went_back`].
///
/// The cost does not grow with an outage's length: `every` slots are counted, and a
/// cron walk jumps over all but about 1000 + one day's worth of them.
pub fn plan(timing: &Timing, job: &str, state: &JobState, now: DateTime<Utc>) -> Plan {
    let clock_went_back = state.handled > now;
    let cursor = state.handled.min(now);
    let due = match &timing.schedule {
        Schedule::Every { period } => timing.due_every(job, *period, cursor, now),
        Schedule::Cron { cron, tz } => timing.due_walk(job, cron, *tz, cursor, now),
    };
    let Due {
        slots,
        count,
        estimated,
        wake,
    } = due;
    let slots = Vec::from(slots);
    let handled = if clock_went_back {
        Some(now)
    } else {
        slots.last().copied()
    };
    let mut actions = Vec::with_capacity(slots.len());
    if let Some(since) = state.running_since {
        for &slot in &slots {
            actions.push(Action::Skip {
                slot,
                reason: SkipReason::Overlap { since },
            });
        }
    } else if let Some((&newest, older)) = slots.split_last() {
        for &slot in older {
            actions.push(Action::Skip {
                slot,
                reason: SkipReason::Missed,
            });
        }
        let late = now - timing.start_of(job, newest)
            > Span::from_std(timing.late_after).unwrap_or_else(|_| Span::zero());
        if !late {
            actions.push(Action::Start {
                slot: newest,
                trigger: crate::jobs::Trigger::Schedule,
            });
        } else if timing.catch_up {
            actions.push(Action::Start {
                slot: newest,
                trigger: crate::jobs::Trigger::CatchUp,
            });
        } else {
            actions.push(Action::Skip {
                slot: newest,
                reason: SkipReason::Missed,
            });
        }
    }
    // The oldest skips beyond the listed ones are only counted; skips come first.
    let skips = actions
        .iter()
        .filter(|a| matches!(a, Action::Skip { .. }))
        .count();
    let dropped = skips.saturating_sub(MAX_SKIPS_LISTED);
    actions.drain(..dropped);
    Plan {
        actions,
        handled,
        wake,
        more_missed: count - slots.len() + dropped,
        more_missed_estimated: estimated,
        clock_went_back,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_else(|e| panic!("bad time {s}: {e}"))
    }

    #[test]
    fn cron_fields() {
        let c = Schedule::cron("0 */6 * * *", "UTC").unwrap_or_else(|e| panic!("{e}"));
        let runs = c.upcoming(t("2026-01-01T00:00:00Z"), 4);
        assert_eq!(
            runs,
            vec![
                t("2026-01-01T06:00:00Z"),
                t("2026-01-01T12:00:00Z"),
                t("2026-01-01T18:00:00Z"),
                t("2026-01-02T00:00:00Z")
            ]
        );
        let sunday = Schedule::cron("0 3 * * sun", "UTC").unwrap_or_else(|e| panic!("{e}"));
        // 2026-01-04 is a Sunday.
        assert_eq!(
            sunday.next_after(t("2026-01-01T00:00:00Z")),
            Some(t("2026-01-04T03:00:00Z"))
        );
        let seven = Schedule::cron("0 3 * * 7", "UTC").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            seven.next_after(t("2026-01-01T00:00:00Z")),
            Some(t("2026-01-04T03:00:00Z"))
        );
        let monthly = Schedule::cron("@monthly", "UTC").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            monthly.next_after(t("2026-01-15T00:00:00Z")),
            Some(t("2026-02-01T00:00:00Z"))
        );
        // Both day fields restricted: either matches (the 13th or any Friday).
        let either = Schedule::cron("0 0 13 * fri", "UTC").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            either.next_after(t("2026-01-01T00:00:00Z")),
            Some(t("2026-01-02T00:00:00Z"))
        );
        let list = Schedule::cron("5,35 1-2 * jan-feb *", "UTC").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            list.upcoming(t("2026-01-01T00:00:00Z"), 5),
            vec![
                t("2026-01-01T01:05:00Z"),
                t("2026-01-01T01:35:00Z"),
                t("2026-01-01T02:05:00Z"),
                t("2026-01-01T02:35:00Z"),
                t("2026-01-02T01:05:00Z")
            ]
        );
        let leap = Schedule::cron("0 0 29 2 *", "UTC").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            leap.next_after(t("2026-01-01T00:00:00Z")),
            Some(t("2028-02-29T00:00:00Z"))
        );
    }

    #[test]
    fn cron_errors_name_the_field() {
        for (expr, words) in [
            ("0 */6 * *", "five"),
            ("61 * * * *", "minute field"),
            ("0 25 * * *", "hour field"),
            ("0 0 * foo *", "month field"),
            ("0 0 * * */0", "step"),
            ("0 0 30 2 *", "never fires"),
            ("@fortnightly", "shorthand"),
        ] {
            let e = Schedule::cron(expr, "UTC")
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(e.contains(words), "{expr}: {e}");
        }
        let e = Schedule::cron("0 0 * * *", "Mars/Olympus")
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("time zone"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("6h").ok(),
            Some(Duration::from_secs(6 * 3600))
        );
        assert_eq!(
            parse_duration("1h30m").ok(),
            Some(Duration::from_secs(5400))
        );
        assert_eq!(parse_duration("90").ok(), Some(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("500ms").ok(),
            Some(Duration::from_millis(500))
        );
        assert!(parse_duration("6 hours").is_err());
        assert!(parse_duration("h").is_err());
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
    }

    #[test]
    fn every_is_epoch_aligned() {
        let s = Schedule::every(Duration::from_secs(6 * 3600)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s.next_after(t("2026-01-01T05:59:59Z")),
            Some(t("2026-01-01T06:00:00Z"))
        );
        assert_eq!(
            s.next_after(t("2026-01-01T06:00:00Z")),
            Some(t("2026-01-01T12:00:00Z"))
        );
        assert!(Schedule::every(Duration::from_millis(500)).is_err());
    }

    fn cron(expr: &str, tz: &str) -> Schedule {
        Schedule::cron(expr, tz).unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    /// The UTC instant of local midnight starting `day` in `tz`.
    fn midnight(day: &str, tz: &str) -> DateTime<Utc> {
        let tz: Tz = tz.parse().unwrap();
        let d = NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
        tz.from_local_datetime(&d.and_hms_opt(0, 0, 0).unwrap())
            .earliest()
            .unwrap()
            .with_timezone(&Utc)
    }

    /// The runs of `schedule` in local day `day` of `tz`.
    fn runs_on(expr: &str, tz: &str, day: &str) -> Vec<DateTime<Utc>> {
        let start = midnight(day, tz);
        let next_day = NaiveDate::parse_from_str(day, "%Y-%m-%d")
            .unwrap()
            .succ_opt()
            .unwrap()
            .to_string();
        let end = midnight(&next_day, tz);
        cron(expr, tz)
            .upcoming(start - Span::seconds(1), 5000)
            .into_iter()
            .take_while(|r| *r < end)
            .collect()
    }

    #[test]
    fn every_hour_jobs_run_twice_in_a_repeated_hour_in_real_time_order() {
        // Europe/Berlin 2026-10-25: 03:00 CEST -> 02:00 CET, a 25-hour day.
        assert_eq!(
            runs_on("*/15 * * * *", "Europe/Berlin", "2026-10-25").len(),
            100
        );
        assert_eq!(
            runs_on("* * * * *", "Europe/Berlin", "2026-10-25").len(),
            1500
        );
        assert_eq!(
            runs_on("0 * * * *", "Europe/Berlin", "2026-10-25").len(),
            25
        );
        assert_eq!(
            runs_on("*/15 * * * *", "Europe/Berlin", "2026-03-29").len(),
            92
        );
        assert_eq!(
            runs_on("*/15 * * * *", "America/New_York", "2026-11-01").len(),
            100
        );
        // Australia/Lord_Howe moves by 30 minutes: 02:00 -> 01:30 on 2026-04-05,
        // 02:00 -> 02:30 on 2026-10-04.
        assert_eq!(
            runs_on("*/15 * * * *", "Australia/Lord_Howe", "2026-04-05").len(),
            98
        );
        assert_eq!(
            runs_on("0 * * * *", "Australia/Lord_Howe", "2026-04-05").len(),
            24
        );
        assert_eq!(
            runs_on("*/15 * * * *", "Australia/Lord_Howe", "2026-10-04").len(),
            94
        );
        // Antarctica/Troll moves by 2 hours: 01:00 -> 03:00 on 2026-03-29, 03:00 ->
        // 01:00 on 2026-10-25.
        assert_eq!(
            runs_on("30 * * * *", "Antarctica/Troll", "2026-10-25").len(),
            26
        );
        assert_eq!(
            runs_on("30 * * * *", "Antarctica/Troll", "2026-03-29").len(),
            22
        );

        let berlin = runs_on("*/15 * * * *", "Europe/Berlin", "2026-10-25");
        assert!(berlin.windows(2).all(|w| w[1] - w[0] == Span::minutes(15)));
        let troll = runs_on("30 * * * *", "Antarctica/Troll", "2026-10-25");
        assert!(
            troll.windows(2).all(|w| w[1] - w[0] == Span::hours(1)),
            "{troll:?}"
        );
    }

    /// A wall-clock (every-hour) job runs at exactly the instants whose local time it
    /// names: checked minute by minute against the zone, and `next_after` from every
    /// minute around each change.
    #[test]
    fn every_hour_jobs_match_the_wall_clock_minute_by_minute() {
        let changes = [
            ("Europe/Berlin", "2026-03-29T01:00:00Z"),
            ("Europe/Berlin", "2026-10-25T01:00:00Z"),
            ("America/New_York", "2026-11-01T06:00:00Z"),
            ("Australia/Lord_Howe", "2026-04-04T15:00:00Z"),
            ("Australia/Lord_Howe", "2026-10-03T15:30:00Z"),
            ("Antarctica/Troll", "2026-03-29T01:00:00Z"),
            ("Antarctica/Troll", "2026-10-25T01:00:00Z"),
        ];
        for (zone, change) in changes {
            let tz: Tz = zone.parse().unwrap();
            let change = t(change);
            assert_ne!(
                offset_at(change - Span::seconds(1), tz),
                offset_at(change, tz),
                "{zone} changes its clock at {change}"
            );
            for expr in ["*/15 * * * *", "7,44 * * * *", "30 * * * *", "* * * * *"] {
                let schedule = cron(expr, zone);
                let Schedule::Cron { cron: c, .. } = &schedule else {
                    unreachable!()
                };
                let (from, to) = (change - Span::hours(6), change + Span::hours(6));
                let expected: Vec<DateTime<Utc>> = (1..=(to - from).num_minutes())
                    .map(|m| from + Span::minutes(m))
                    .filter(|i| {
                        let l = local_time(*i, tz).unwrap();
                        c.minutes & (1 << l.minute()) != 0 && c.day_matches(l.date())
                    })
                    .collect();
                let got: Vec<_> = schedule
                    .upcoming(from, expected.len())
                    .into_iter()
                    .take_while(|r| *r <= to)
                    .collect();
                assert_eq!(got, expected, "{expr} in {zone} around {change}");
                for m in (-180..180).step_by(7) {
                    let after = change + Span::minutes(m) + Span::seconds(13);
                    let want = expected.iter().find(|r| **r > after).copied();
                    assert_eq!(
                        schedule.next_after(after),
                        want,
                        "{expr} in {zone} after {after}"
                    );
                }
            }
        }
    }

    #[test]
    fn fixed_hour_jobs_run_once_across_large_and_half_hour_changes() {
        let daily = |expr: &str, zone: &str, from: &str| cron(expr, zone).upcoming(t(from), 3);
        // Troll, spring: 01:30 does not exist; the first instant after the jump is
        // 01:00 UTC (03:00 +02).
        assert_eq!(
            daily("30 1 * * *", "Antarctica/Troll", "2026-03-28T00:00:00Z"),
            vec![
                t("2026-03-28T01:30:00Z"),
                t("2026-03-29T01:00:00Z"),
                t("2026-03-29T23:30:00Z")
            ]
        );
        // Troll, autumn: 01:30 comes twice; only the first (+02) runs.
        assert_eq!(
            daily("30 1 * * *", "Antarctica/Troll", "2026-10-23T12:00:00Z"),
            vec![
                t("2026-10-23T23:30:00Z"),
                t("2026-10-24T23:30:00Z"),
                t("2026-10-26T01:30:00Z")
            ]
        );
        // Lord Howe, spring: 02:00 does not exist; 02:30 (+11) is 15:30 UTC.
        assert_eq!(
            daily("0 2 * * *", "Australia/Lord_Howe", "2026-10-02T12:00:00Z"),
            vec![
                t("2026-10-02T15:30:00Z"),
                t("2026-10-03T15:30:00Z"),
                t("2026-10-04T15:00:00Z")
            ]
        );
        // Lord Howe, autumn: 01:45 comes twice; only the first (+11) runs.
        assert_eq!(
            daily("45 1 * * *", "Australia/Lord_Howe", "2026-04-03T12:00:00Z"),
            vec![
                t("2026-04-03T14:45:00Z"),
                t("2026-04-04T14:45:00Z"),
                t("2026-04-05T15:15:00Z")
            ]
        );
        // Several fixed times in a skipped hour run once, at the jump.
        assert_eq!(
            runs_on("0,30 2 * * *", "Europe/Berlin", "2026-03-29"),
            vec![t("2026-03-29T01:00:00Z")]
        );
    }

    #[test]
    fn a_step_in_a_day_field_restricts_it() {
        let next = |expr: &str, n: usize| cron(expr, "UTC").upcoming(t("2026-01-01T00:00:00Z"), n);
        // Odd days of the month.
        assert_eq!(
            next("0 0 */2 * *", 4),
            vec![
                t("2026-01-03T00:00:00Z"),
                t("2026-01-05T00:00:00Z"),
                t("2026-01-07T00:00:00Z"),
                t("2026-01-09T00:00:00Z")
            ]
        );
        assert!(next("0 0 */2 * *", 40).iter().all(|r| r.day() % 2 == 1));
        // Sunday, Tuesday, Thursday, Saturday (2026-01-03 is a Saturday).
        assert_eq!(
            next("0 0 * * */2", 4),
            vec![
                t("2026-01-03T00:00:00Z"),
                t("2026-01-04T00:00:00Z"),
                t("2026-01-06T00:00:00Z"),
                t("2026-01-08T00:00:00Z")
            ]
        );
        // One field starts with `*`: both must match (the 1st, on one of those days).
        assert_eq!(
            next("0 0 1 * */2", 2),
            vec![t("2026-02-01T00:00:00Z"), t("2026-03-01T00:00:00Z")]
        );
        // Both restricted: either (the 13th or any Friday).
        assert_eq!(
            next("0 0 13 * fri", 3),
            vec![
                t("2026-01-02T00:00:00Z"),
                t("2026-01-09T00:00:00Z"),
                t("2026-01-13T00:00:00Z")
            ]
        );
        // A 29 February on a Sunday comes every 28 years, and is still found.
        let leap_sunday = cron("0 0 29 2 */7", "UTC");
        assert_eq!(
            leap_sunday.next_after(t("2033-01-01T00:00:00Z")),
            Some(t("2060-02-29T00:00:00Z"))
        );
    }

    #[test]
    fn huge_numbers_are_errors_or_clamped_never_panics() {
        // A step past the range takes the first value only.
        let s = cron("5/4294967295 * * * *", "UTC");
        assert_eq!(
            s.upcoming(t("2026-01-01T00:00:00Z"), 2),
            vec![t("2026-01-01T00:05:00Z"), t("2026-01-01T01:05:00Z")]
        );
        assert!(Schedule::cron("5/99999999999 * * * *", "UTC").is_err());

        let e = parse_duration("105000000d").unwrap_err().to_string();
        assert!(e.contains("100 years"), "{e}");
        assert!(parse_duration("99999999999999999999").is_err());
        assert!(parse_duration("3155760001").is_err());
        assert_eq!(parse_duration("36525d").ok(), Some(MAX_DURATION));
        assert!(parse_duration("36526d").is_err());

        // Durations built by hand are not checked; nothing may panic on them.
        let now = t("2026-01-01T00:00:00Z");
        let huge = Duration::from_secs(105_000_000 * 86_400);
        // A period no calendar holds twice.
        let vast = Timing::new(Schedule::every(huge).unwrap());
        let p = plan(&vast, "job", &JobState::new(now), now + Span::days(1));
        assert!(p.actions.is_empty());
        assert_eq!(p.wake, None);
        let timing = Timing::new(Schedule::every(Duration::from_secs(3600)).unwrap())
            .with_retries(3)
            .with_backoff(huge, huge);
        assert_eq!(timing.retry_at(1, now, None, 0.99), None);
        let timing = timing.with_jitter(Duration::MAX);
        assert!(timing.start_of("job", now) < now + Span::hours(1));
        let p = plan(&timing, "job", &JobState::new(now), now + Span::days(1));
        assert!(matches!(p.actions.last(), Some(Action::Start { .. })));
        assert_eq!(timing.upcoming("job", now, 3).len(), 3);
        // A schedule with no next slot: the jitter is not cut, and saturates.
        let no_more = Timing::new(Schedule::every(Duration::from_secs(1)).unwrap())
            .with_jitter(Duration::MAX);
        assert!(no_more.start_of("job", DateTime::<Utc>::MAX_UTC) <= DateTime::<Utc>::MAX_UTC);
        for zone in ["Pacific/Kiritimati", "America/Adak", "UTC"] {
            let s = cron("* * * * *", zone);
            assert_eq!(s.next_after(DateTime::<Utc>::MAX_UTC), None);
            // At the start of the calendar a zone behind UTC has no local time.
            let _ = s.next_after(DateTime::<Utc>::MIN_UTC);
            let _ = cron("30 2 * * *", zone).next_after(DateTime::<Utc>::MIN_UTC);
        }
        assert!(
            cron("* * * * *", "UTC")
                .next_after(DateTime::<Utc>::MIN_UTC)
                .is_some()
        );
    }

    #[test]
    fn check_rejects_a_jitter_as_long_as_the_shortest_gap() {
        let every = |secs| Timing::new(Schedule::every(Duration::from_secs(secs)).unwrap());
        assert!(
            every(3600)
                .with_jitter(Duration::from_secs(3599))
                .check()
                .is_ok()
        );
        let e = every(3600)
            .with_jitter(Duration::from_secs(3600))
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("jitter = 1h") && e.contains("every 1h"), "{e}");
        assert!(every(60).check().is_ok(), "no jitter");

        let on = |expr: &str, zone: &str, jitter: u64| {
            Timing::new(cron(expr, zone))
                .with_jitter(Duration::from_secs(jitter))
                .check()
        };
        assert!(on("*/15 * * * *", "UTC", 14 * 60).is_ok());
        let e = on("*/15 * * * *", "Europe/Berlin", 15 * 60)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("jitter = 15m") && e.contains("*/15 * * * * (Europe/Berlin): 15m"),
            "{e}"
        );
        // 01:30 and 02:30 are an hour apart, except on the day 02:30 is skipped and runs
        // at 03:00 (CEST), half an hour after 01:30 (CET).
        assert!(on("30 1,2 * * *", "UTC", 45 * 60).is_ok());
        let e = on("30 1,2 * * *", "Europe/Berlin", 45 * 60)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(": 30m (from 2025-03-30 00:30 UTC to 2025-03-30 01:00 UTC)"),
            "{e}"
        );
        // The end of the day and the start of the next one.
        assert!(on("0 0,23 * * *", "UTC", 3600).is_err());
        assert!(on("0 0 29 2 *", "UTC", 365 * 86_400).is_ok());
        assert!(on("* * * * *", "Europe/Berlin", 59).is_ok());
    }

    #[test]
    fn jitter_ends_before_the_next_slot_so_starts_keep_their_order() {
        for timing in [
            Timing::new(Schedule::every(Duration::from_secs(60)).unwrap())
                .with_jitter(Duration::from_secs(300)),
            Timing::new(cron("*/5 * * * *", "Europe/Berlin"))
                .with_jitter(Duration::from_secs(3600)),
        ] {
            let now = t("2026-10-25T00:02:00Z");
            let slots = timing.schedule.upcoming(now - Span::hours(1), 200);
            for w in slots.windows(2) {
                let start = timing.start_of("job", w[0]);
                assert!(start >= w[0] && start < w[1], "{w:?}: {start}");
                assert_eq!(
                    start,
                    w[0] + Span::from_std(timing.jitter_for("job", w[0])).unwrap()
                );
            }
            let next = timing.upcoming("job", now, 50);
            assert_eq!(next.len(), 50);
            assert!(next.windows(2).all(|w| w[0] < w[1]), "{next:?}");
            assert!(next.iter().all(|s| *s > now));
            // Exactly the starts after now, none left out.
            let mut all: Vec<_> = slots
                .iter()
                .map(|s| timing.start_of("job", *s))
                .filter(|s| *s > now)
                .collect();
            all.truncate(50);
            assert_eq!(next, all);
        }
    }

    #[test]
    fn a_handled_slot_in_the_future_means_the_clock_went_back() {
        let timing = Timing::new(Schedule::every(Duration::from_secs(3600)).unwrap());
        let now = t("2026-01-01T00:30:00Z");
        let mut state = JobState::new(now + Span::days(30));
        let p = plan(&timing, "job", &state, now);
        assert!(p.clock_went_back);
        assert!(p.actions.is_empty());
        assert_eq!(p.handled, Some(now));
        assert_eq!(p.wake, Some(t("2026-01-01T01:00:00Z")));
        state.apply(&p);
        assert_eq!(state.handled, now, "planning goes on from now");
        let p = plan(&timing, "job", &state, t("2026-01-01T01:00:00Z"));
        assert!(!p.clock_went_back);
        assert_eq!(
            p.actions,
            vec![Action::Start {
                slot: t("2026-01-01T01:00:00Z"),
                trigger: crate::jobs::Trigger::Schedule
            }]
        );
        let p = plan(&timing, "job", &JobState::new(now), now);
        assert!(!p.clock_went_back, "handled = now is not in the future");
    }

    #[test]
    fn long_outages_are_planned_in_bounded_time_and_actions() {
        let now = t("2026-12-15T10:00:30Z");
        // `every`: counted, so exact.
        let timing = Timing::new(Schedule::every(Duration::from_secs(1)).unwrap());
        let started = std::time::Instant::now();
        let p = plan(&timing, "j", &JobState::new(now - Span::days(365)), now);
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(p.actions.len(), MAX_SKIPS_LISTED + 1);
        assert_eq!(p.more_missed, 365 * 86_400 - MAX_SKIPS_LISTED - 1);
        assert!(!p.more_missed_estimated);
        assert_eq!(p.handled, Some(t("2026-12-15T10:00:30Z")));
        assert_eq!(p.wake, Some(t("2026-12-15T10:00:31Z")));
        assert_eq!(
            p.actions.last(),
            Some(&Action::Start {
                slot: now,
                trigger: crate::jobs::Trigger::Schedule
            })
        );
        assert_eq!(
            p.actions.first(),
            Some(&Action::Skip {
                slot: now - Span::seconds(100),
                reason: SkipReason::Missed
            })
        );
        // With a run going on, every slot is an overlap; still 100 listed.
        let busy = JobState::new(now - Span::days(2)).with_running(Some(now - Span::days(3)));
        let p = plan(&timing, "j", &busy, now);
        assert_eq!(p.actions.len(), MAX_SKIPS_LISTED);
        assert_eq!(p.more_missed, 2 * 86_400 - MAX_SKIPS_LISTED);
        assert!(p.actions.iter().all(|a| matches!(
            a,
            Action::Skip {
                reason: SkipReason::Overlap { .. },
                ..
            }
        )));

        // Cron: a year of every minute is walked through its first 1000 slots and the
        // last day; the calendar counts the rest (the two clock changes cancel out).
        let timing = Timing::new(cron("* * * * *", "Europe/Berlin"));
        let p = plan(&timing, "j", &JobState::new(now - Span::days(365)), now);
        assert_eq!(p.actions.len(), MAX_SKIPS_LISTED + 1);
        assert_eq!(p.more_missed, 365 * 1440 - MAX_SKIPS_LISTED - 1);
        assert!(p.more_missed_estimated);
        assert_eq!(p.handled, Some(t("2026-12-15T10:00:00Z")));
        assert_eq!(p.wake, Some(t("2026-12-15T10:01:00Z")));
        // An outage shorter than that is walked and counted exactly.
        let p = plan(&timing, "j", &JobState::new(now - Span::hours(12)), now);
        assert_eq!(p.more_missed, 12 * 60 - MAX_SKIPS_LISTED - 1);
        assert!(!p.more_missed_estimated);
        // Nothing in the last day: the newest slot before it is still the one caught up.
        let timing = Timing::new(cron("* * 1 * *", "UTC"));
        let p = plan(&timing, "j", &JobState::new(now - Span::days(75)), now);
        assert_eq!(
            p.actions.last(),
            Some(&Action::Start {
                slot: t("2026-12-01T23:59:00Z"),
                trigger: crate::jobs::Trigger::CatchUp
            })
        );
        // 1 October from 10:01, 1 November, 1 December.
        assert_eq!(p.more_missed, 839 + 2 * 1440 - MAX_SKIPS_LISTED - 1);
        assert_eq!(p.handled, Some(t("2026-12-01T23:59:00Z")));
        assert_eq!(p.wake, Some(t("2027-01-01T00:00:00Z")));
    }
}
