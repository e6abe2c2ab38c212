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
//! by the wall clock: the skipped hour has no runs, the repeated hour runs twice.
//! `every` is absolute time aligned to the Unix epoch (`every = "6h"` fires at 00, 06,
//! 12 and 18 UTC), whatever the time zone.

use std::fmt;
use std::time::Duration;

use chrono::{
    DateTime, Datelike, Duration as Span, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The most slots [`plan`] walks through in one call; a daemon down for longer than
/// this many slots records the count as "at least" this many.
const MAX_SLOTS_WALKED: usize = 10_000;

/// How far ahead a cron search looks before concluding a schedule never fires
/// (`0 0 30 2 *`): eight years covers every leap-day and weekday combination.
const CRON_SEARCH_DAYS: i64 = 8 * 366;

/// A five-field cron expression (minute, hour, day of month, month, day of week), as
/// in crontab(5): numbers, `*`, ranges `a-b`, steps `*/n` and `a-b/n`, lists, month
/// and day names (`jan`, `mon`), 7 for Sunday, and `@hourly`, `@daily`/`@midnight`,
/// `@weekly`, `@monthly`, `@yearly`/`@annually`. When both day fields are restricted a
/// day matches either (crontab's rule).
#[derive(Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_restricted: bool,
    weekdays_restricted: bool,
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
            days_restricted: !fields[2].starts_with('*'),
            weekdays_restricted: !fields[4].starts_with('*'),
        })
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let dom = self.days & (1 << date.day()) != 0;
        let dow = self.weekdays & (1 << date.weekday().num_days_from_sunday()) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        }
    }

    fn every_hour(&self) -> bool {
        self.hours == (1 << 24) - 1
    }

    /// The first run strictly after `after`, in `tz`; `None` when the expression never
    /// fires (`0 0 30 2 *`).
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&tz).naive_local();
        // Start from the local minute after `after`, minus an hour: a repeated hour
        // (fall-back) can hold a run whose local time is earlier than `after`'s.
        let start = (local - Span::hours(1))
            .with_second(0)?
            .with_nanosecond(0)?;
        let mut date = start.date();
        let last = date + Span::days(CRON_SEARCH_DAYS);
        while date <= last {
            if self.day_matches(date) {
                for hour in (0..24).filter(|h| self.hours & (1 << h) != 0) {
                    for minute in (0..60).filter(|m| self.minutes & (1u64 << m) != 0) {
                        let naive = date.and_hms_opt(hour, minute, 0)?;
                        if naive < start {
                            continue;
                        }
                        if let Some(t) = self.instant(naive, tz, after) {
                            return Some(t);
                        }
                    }
                }
            }
            date = date.succ_opt()?;
        }
        None
    }

    /// The UTC instant at which local `naive` runs, if that is after `after`.
    fn instant(&self, naive: NaiveDateTime, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        use chrono::LocalResult;
        match tz.from_local_datetime(&naive) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)).filter(|t| *t > after),
            LocalResult::Ambiguous(first, second) => {
                let first = first.with_timezone(&Utc);
                let second = second.with_timezone(&Utc);
                if first > after {
                    Some(first)
                } else if self.every_hour() && second > after {
                    Some(second)
                } else {
                    None
                }
            }
            LocalResult::None => {
                if self.every_hour() {
                    return None;
                }
                // The first instant after the jump: the first local minute that
                // exists again (gaps are an hour, rarely two).
                let mut probe = naive;
                for _ in 0..(3 * 60) {
                    probe += Span::minutes(1);
                    if let Some(t) = tz.from_local_datetime(&probe).earliest() {
                        return Some(t.with_timezone(&Utc)).filter(|t| *t > after);
                    }
                }
                None
            }
        }
    }
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
        let mut v = from;
        while v <= to {
            bits |= 1 << v;
            v += step;
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
/// `1h30m`, `500ms`); a bare number is seconds.
///
/// # Errors
/// [`crate::ErrorKind::InvalidInput`] saying how to write one.
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
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
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
    /// jobs sharing a schedule spread out, and a restart does not move them).
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

    /// Sets the jitter.
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

    /// This slot's jitter for job `job`: the same every time it is asked.
    pub fn jitter_for(&self, job: &str, slot: DateTime<Utc>) -> Duration {
        let max = u64::try_from(self.jitter.as_millis()).unwrap_or(u64::MAX);
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
        slot + Span::from_std(self.jitter_for(job, slot)).unwrap_or_else(|_| Span::zero())
    }

    /// The next `n` start times after `now`, jitter included.
    pub fn upcoming(&self, job: &str, now: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        // A slot just before `now` may still start after it because of its jitter.
        let back = Span::from_std(self.jitter).unwrap_or_else(|_| Span::zero());
        let mut starts: Vec<_> = self
            .schedule
            .upcoming(now - back, n + 1)
            .into_iter()
            .map(|s| self.start_of(job, s))
            .filter(|t| *t > now)
            .collect();
        starts.truncate(n);
        starts
    }

    /// When to retry after attempt `failed_attempt` (1 = the first) failed at
    /// `failed_at` with a temporary error, or `None` to give up: retries used up, or
    /// the retry would start at or after `next_slot` (the next slot runs instead).
    /// `unit` in `[0, 1)` picks the point in the backoff window (the caller's random
    /// number), so the delay lies in `[b/2, b]` for `b = retry_backoff × 2^(n-1)`
    /// capped at `retry_backoff_max`.
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
        let at = failed_at + Span::from_std(delay).ok()?;
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

    /// Takes a plan's slots as handled (call after acting on it).
    pub fn apply(&mut self, plan: &Plan) {
        if let Some(h) = plan.handled {
            self.handled = self.handled.max(h);
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
    /// What to do now, oldest slot first.
    pub actions: Vec<Action>,
    /// The newest slot these actions deal with (feed back through [`JobState::apply`]).
    pub handled: Option<DateTime<Utc>>,
    /// When to ask again (the next slot's start); `None` when the schedule has ended.
    pub wake: Option<DateTime<Utc>>,
    /// Slots skipped beyond the ones listed (a very long outage of a frequent job).
    pub more_missed: usize,
}

/// Decides what job `job` should do at `now`: pure, so a daemon and a simulated clock
/// get the same answers.
///
/// Every slot whose start time (slot plus jitter) has come since `state.handled` is
/// dealt with exactly once: while a run is going on each is skipped as an overlap
/// (recorded, never queued); otherwise the newest starts — as a catch-up when it is
/// more than `late_after` late, if catch-up is on — and the older ones are recorded as
/// missed.
pub fn plan(timing: &Timing, job: &str, state: &JobState, now: DateTime<Utc>) -> Plan {
    let mut due = Vec::new();
    let mut more_missed = 0usize;
    let mut cursor = state.handled;
    let mut wake = None;
    while let Some(slot) = timing.schedule.next_after(cursor) {
        let start = timing.start_of(job, slot);
        if start > now {
            wake = Some(start);
            break;
        }
        if due.len() == MAX_SLOTS_WALKED {
            // Keep the newest window; count what falls out of it.
            due.remove(0);
            more_missed += 1;
        }
        due.push(slot);
        cursor = slot;
    }
    let handled = due.last().copied();
    let mut actions = Vec::with_capacity(due.len());
    if let Some(since) = state.running_since {
        for slot in due {
            actions.push(Action::Skip {
                slot,
                reason: SkipReason::Overlap { since },
            });
        }
    } else if let Some((&newest, older)) = due.split_last() {
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
    Plan {
        actions,
        handled,
        wake,
        more_missed,
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
}
