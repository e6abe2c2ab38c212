//! `RetentionPolicy`: which backups to keep, as a pure function of the backups and
//! the current time, with the reasons for every decision; and [`KeepRules`], the
//! restic-style `keep-*` policy that operators already know.
//!
//! Time comes in as an argument so that tests need no clock. Nothing here touches a
//! repository: `forget` applies the decisions, `prune` removes what is unreferenced.
//! Nothing here prints either: the CLI formats the decisions.
//!
//! # How [`KeepRules`] decides
//!
//! The rules follow restic's `forget` (`--keep-last`, `--keep-daily`, ...), which is
//! also what rustic does:
//!
//! - Backups are considered newest first. Of two backups taken at the same instant,
//!   the one with the smaller id counts as the newer, so the outcome never depends on
//!   the order of the input. Decisions come back in the order of the input.
//! - A backup is kept if **any** rule keeps it, and the reasons list **every** rule
//!   that keeps it: `"newest complete backup"`, `"last 2"` (the 2nd newest),
//!   `"hourly 2026-11-20 14:00"`, `"daily 2026-11-20"`, `"weekly 2026-W47"`,
//!   `"monthly 2026-11"`, `"yearly 2026"`, `"within 7d"`, `"tag nightly"`.
//! - `last` keeps the `last` newest backups.
//! - A calendar rule (`hourly` ... `yearly`) with count N keeps the newest backup of
//!   each of the N most recent hours, days, ISO weeks, months or years *that hold a
//!   backup*: a week without backups does not use up a `weekly` slot. Calendar
//!   periods are those of the configured UTC offset (see [`KeepRules::utc_offset`]).
//! - `within` keeps every backup taken after `now - within`. Unlike restic, which
//!   counts back from the newest backup, the window ends at `now` (as in rustic), so
//!   `apply` gives the same answer whatever backups have been forgotten before.
//! - `tags` keeps every backup that carries one of the tags.
//! - **The newest complete backup is always kept**, whatever the rules say.
//! - **Incomplete backups never count**: they fill no calendar period, use up no
//!   `last` slot, are not kept by `within` or `tags`, and are forgotten with the
//!   reason `"incomplete"`. So a run of failed backups can never push a good backup
//!   out of its rule: the good ones are kept exactly as if the failures did not exist.
//! - A complete backup that no rule keeps is forgotten with `"no rule keeps it"`.
//! - With **no rule at all** ([`KeepRules::is_empty`]), `apply` keeps everything,
//!   failed backups included, with the reason `"no rule given: keeping everything"`.
//!   Deleting on an empty policy would turn a forgotten flag into data loss; the CLI
//!   refuses an empty policy before it gets here.
//!
//! Applying the rules again, with the same `now`, to the backups they kept keeps all
//! of them: every rule picks the same backups from the kept set as from the full one
//! (each rule's picks are in the kept set, and the kept set holds no newer backup or
//! calendar period that the full set did not), so `forget` run twice forgets nothing
//! the second time.

use std::collections::BTreeSet;
use std::fmt::{self, Debug};

use chrono::{DateTime, Datelike, FixedOffset, NaiveDateTime, Offset, TimeDelta, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What a policy needs to know of one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// The backup id.
    pub id: String,
    /// When the backup's snapshot was taken.
    pub time: DateTime<Utc>,
    /// Its tags.
    pub tags: BTreeSet<String>,
    /// False for a failed or incomplete backup: it never counts towards a rule.
    pub complete: bool,
}

/// Keep or forget one backup, with the reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionDecision {
    /// The backup id.
    pub id: String,
    /// When the backup was taken.
    pub time: DateTime<Utc>,
    /// True to keep.
    pub keep: bool,
    /// Every rule that keeps it, or why it is forgotten.
    pub reasons: Vec<String>,
}

/// Decides which backups to keep.
pub trait RetentionPolicy: Send + Sync + Debug + 'static {
    /// One decision per backup, in the order of `backups`.
    fn apply(&self, backups: &[BackupSummary], now: DateTime<Utc>) -> Vec<RetentionDecision>;
}

/// Reason given to the newest complete backup, which is kept whatever the rules say.
pub const REASON_NEWEST_COMPLETE: &str = "newest complete backup";
/// Reason given to every backup when the rules are empty.
pub const REASON_NO_RULES: &str = "no rule given: keeping everything";
/// Reason given to a forgotten incomplete (failed) backup.
pub const REASON_INCOMPLETE: &str = "incomplete";
/// Reason given to a forgotten complete backup that no rule keeps.
pub const REASON_NOT_KEPT: &str = "no rule keeps it";

/// restic-style keep rules: `last`, `hourly`, `daily`, `weekly`, `monthly`, `yearly`,
/// `within` and `tags`. See the [module documentation](self) for how they decide.
///
/// A count of 0 disables its rule. Build with `Default` and the `with_*` methods:
///
/// ```
/// use chrono::{DateTime, TimeDelta, Utc};
/// use ops_core::retention::{parse_utc_offset, BackupSummary, KeepRules};
/// use ops_core::RetentionPolicy;
///
/// let rules = KeepRules::default()
///     .with_daily(7)
///     .with_weekly(4)
///     .with_within(TimeDelta::days(2))
///     .with_tag("pre-migration")
///     .with_utc_offset(parse_utc_offset("+02:00")?);
/// assert!(!rules.is_empty());
///
/// let at = |s: &str| s.parse::<DateTime<Utc>>().expect("valid timestamp");
/// let backup = |id: &str, time: &str| BackupSummary {
///     id: id.into(),
///     time: at(time),
///     tags: Default::default(),
///     complete: true,
/// };
/// let backups = [
///     // 23:30 UTC is 01:30 the next day at +02:00: both fall on 2026-11-20.
///     backup("a", "2026-11-19T23:30:00Z"),
///     backup("b", "2026-11-20T12:00:00Z"),
/// ];
/// let decisions = rules.apply(&backups, at("2026-11-30T00:00:00Z"));
/// assert!(!decisions[0].keep);
/// assert_eq!(decisions[0].reasons, ["no rule keeps it"]);
/// assert_eq!(
///     decisions[1].reasons,
///     ["newest complete backup", "daily 2026-11-20", "weekly 2026-W47"]
/// );
/// # Ok::<(), ops_core::Error>(())
/// ```
///
/// The serde form is what a configuration file holds; `within` is a duration string
/// ([`parse_duration`]) and `utc_offset` an offset string ([`parse_utc_offset`]).
/// Unknown fields are refused: a misspelt `dayly = 7` silently ignored would forget
/// the backups it was meant to keep.
///
/// ```
/// use ops_core::retention::KeepRules;
///
/// let rules: KeepRules = serde_json::from_str(
///     r#"{"last": 3, "daily": 7, "within": "2w3d", "tags": ["keep"], "utc_offset": "+02:00"}"#,
/// )?;
/// assert_eq!(rules.daily, 7);
/// assert_eq!(rules.within, Some(chrono::TimeDelta::days(17)));
/// assert!(serde_json::from_str::<KeepRules>(r#"{"dayly": 7}"#).is_err());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KeepRules {
    /// Keep the `last` newest complete backups.
    pub last: u32,
    /// Keep the newest backup of each of the `hourly` most recent hours with a backup.
    pub hourly: u32,
    /// Keep the newest backup of each of the `daily` most recent days with a backup.
    pub daily: u32,
    /// Keep the newest backup of each of the `weekly` most recent ISO weeks (Monday to
    /// Sunday; week 1 holds the year's first Thursday) with a backup.
    pub weekly: u32,
    /// Keep the newest backup of each of the `monthly` most recent months with a backup.
    pub monthly: u32,
    /// Keep the newest backup of each of the `yearly` most recent years with a backup.
    pub yearly: u32,
    /// Keep every complete backup taken after `now - within`. `None`, zero or a
    /// negative duration disables the rule.
    ///
    /// Serialised as a duration string such as `"17d"` (see [`parse_duration`] and
    /// [`format_duration`]); sub-second precision is not kept.
    #[serde(with = "within_serde")]
    pub within: Option<TimeDelta>,
    /// Keep every complete backup that carries at least one of these tags.
    pub tags: BTreeSet<String>,
    /// The UTC offset whose hours, days, weeks, months and years the calendar rules
    /// count. Default: UTC.
    ///
    /// A fixed offset does not follow daylight saving time: with `+01:00` for
    /// Central Europe, summer backups are bucketed one hour early, so a backup taken
    /// between 00:00 and 01:00 summer time counts for the previous day. Backups
    /// scheduled away from midnight (and from the top of the hour, for `hourly`) are
    /// bucketed the same all year; otherwise pick the offset in force at the time of
    /// day you back up. Serialised as `"+02:00"` (see [`parse_utc_offset`]).
    #[serde(with = "offset_serde")]
    pub utc_offset: FixedOffset,
}

impl Default for KeepRules {
    fn default() -> Self {
        Self {
            last: 0,
            hourly: 0,
            daily: 0,
            weekly: 0,
            monthly: 0,
            yearly: 0,
            within: None,
            tags: BTreeSet::new(),
            utc_offset: utc(),
        }
    }
}

impl KeepRules {
    /// Keeps the `n` newest complete backups.
    #[must_use]
    pub fn with_last(mut self, n: u32) -> Self {
        self.last = n;
        self
    }

    /// Keeps the newest backup of each of the `n` most recent hours with a backup.
    #[must_use]
    pub fn with_hourly(mut self, n: u32) -> Self {
        self.hourly = n;
        self
    }

    /// Keeps the newest backup of each of the `n` most recent days with a backup.
    #[must_use]
    pub fn with_daily(mut self, n: u32) -> Self {
        self.daily = n;
        self
    }

    /// Keeps the newest backup of each of the `n` most recent ISO weeks with a backup.
    #[must_use]
    pub fn with_weekly(mut self, n: u32) -> Self {
        self.weekly = n;
        self
    }

    /// Keeps the newest backup of each of the `n` most recent months with a backup.
    #[must_use]
    pub fn with_monthly(mut self, n: u32) -> Self {
        self.monthly = n;
        self
    }

    /// Keeps the newest backup of each of the `n` most recent years with a backup.
    #[must_use]
    pub fn with_yearly(mut self, n: u32) -> Self {
        self.yearly = n;
        self
    }

    /// Keeps every complete backup taken after `now - within`.
    ///
    /// ```
    /// use ops_core::retention::{parse_duration, KeepRules};
    ///
    /// let rules = KeepRules::default().with_within(parse_duration("7d")?);
    /// assert_eq!(rules.within, Some(chrono::TimeDelta::days(7)));
    /// # Ok::<(), ops_core::Error>(())
    /// ```
    #[must_use]
    pub fn with_within(mut self, within: TimeDelta) -> Self {
        self.within = Some(within);
        self
    }

    /// Keeps every complete backup tagged `tag` (adds to the tags already given).
    #[must_use]
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.insert(tag.into());
        self
    }

    /// Keeps every complete backup that carries one of `tags` (adds to the tags
    /// already given).
    #[must_use]
    pub fn with_tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Counts calendar periods in `offset` instead of UTC.
    #[must_use]
    pub fn with_utc_offset(mut self, offset: FixedOffset) -> Self {
        self.utc_offset = offset;
        self
    }

    /// True when no rule is given: every count is 0, `within` is unset (or not
    /// positive) and there is no tag. [`apply`](RetentionPolicy::apply) then keeps
    /// everything; the CLI should refuse such a policy instead.
    ///
    /// The UTC offset is not a rule: it only says how the calendar rules count.
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.effective_within().is_none()
            && self.tags.is_empty()
    }

    fn effective_within(&self) -> Option<TimeDelta> {
        self.within.filter(|d| *d > TimeDelta::zero())
    }
}

/// The calendar rules, in the order their reasons are listed.
#[derive(Debug, Clone, Copy)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Period {
    const ALL: [Self; 5] = [Self::Hour, Self::Day, Self::Week, Self::Month, Self::Year];

    fn count(self, rules: &KeepRules) -> u32 {
        match self {
            Self::Hour => rules.hourly,
            Self::Day => rules.daily,
            Self::Week => rules.weekly,
            Self::Month => rules.monthly,
            Self::Year => rules.yearly,
        }
    }

    /// The period's label. Labels are distinct for distinct periods and, for a fixed
    /// offset, periods follow each other in time order, so the backups of one period
    /// are adjacent in a newest-first list.
    fn label(self, local: NaiveDateTime) -> String {
        let (y, m, d) = (local.year(), local.month(), local.day());
        match self {
            Self::Hour => format!("{y:04}-{m:02}-{d:02} {:02}:00", local.hour()),
            Self::Day => format!("{y:04}-{m:02}-{d:02}"),
            Self::Week => {
                let week = local.iso_week();
                format!("{:04}-W{:02}", week.year(), week.week())
            }
            Self::Month => format!("{y:04}-{m:02}"),
            Self::Year => format!("{y:04}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Hour => "hourly",
            Self::Day => "daily",
            Self::Week => "weekly",
            Self::Month => "monthly",
            Self::Year => "yearly",
        }
    }
}

/// Where one calendar rule stands while walking the backups newest first.
struct PeriodState {
    period: Period,
    left: u32,
    last_label: Option<String>,
}

impl RetentionPolicy for KeepRules {
    fn apply(&self, backups: &[BackupSummary], now: DateTime<Utc>) -> Vec<RetentionDecision> {
        let mut reasons: Vec<Vec<String>> = vec![Vec::new(); backups.len()];

        // Newest first; equal times by id, then by position, so that the outcome is
        // the same for any order of the input (except among exact duplicates).
        let mut order: Vec<usize> = (0..backups.len()).collect();
        order.sort_by(|&a, &b| {
            let (x, y) = (&backups[a], &backups[b]);
            y.time
                .cmp(&x.time)
                .then_with(|| x.id.cmp(&y.id))
                .then_with(|| a.cmp(&b))
        });
        // Failed backups are invisible to every rule: this is what keeps a run of
        // failures from pushing good backups out of `last` or out of their periods.
        let complete: Vec<usize> = order.into_iter().filter(|&i| backups[i].complete).collect();

        if let Some(&newest) = complete.first() {
            reasons[newest].push(REASON_NEWEST_COMPLETE.to_owned());
        }

        let empty = self.is_empty();
        if !empty {
            let since = self.effective_within().map(|d| {
                // A window reaching before the earliest representable time keeps
                // everything.
                (now.checked_sub_signed(d), format_duration(d))
            });
            let mut periods: Vec<PeriodState> = Period::ALL
                .into_iter()
                .map(|period| PeriodState {
                    period,
                    left: period.count(self),
                    last_label: None,
                })
                .filter(|state| state.left > 0)
                .collect();

            for (rank, &i) in complete.iter().enumerate() {
                let backup = &backups[i];
                let why = &mut reasons[i];
                if u32::try_from(rank).is_ok_and(|rank| rank < self.last) {
                    why.push(format!("last {}", rank + 1));
                }
                let local = backup.time.with_timezone(&self.utc_offset).naive_local();
                for state in &mut periods {
                    if state.left == 0 {
                        continue;
                    }
                    let label = state.period.label(local);
                    if state.last_label.as_deref() != Some(label.as_str()) {
                        why.push(format!("{} {label}", state.period.name()));
                        state.left -= 1;
                        state.last_label = Some(label);
                    }
                }
                if let Some((since, text)) = &since
                    && since.is_none_or(|since| backup.time > since)
                {
                    why.push(format!("within {text}"));
                }
                for tag in backup.tags.intersection(&self.tags) {
                    why.push(format!("tag {tag}"));
                }
            }
        }

        backups
            .iter()
            .zip(reasons)
            .map(|(backup, mut reasons)| {
                let keep = if empty {
                    reasons.push(REASON_NO_RULES.to_owned());
                    true
                } else if !backup.complete {
                    reasons.push(REASON_INCOMPLETE.to_owned());
                    false
                } else if reasons.is_empty() {
                    reasons.push(REASON_NOT_KEPT.to_owned());
                    false
                } else {
                    true
                };
                RetentionDecision {
                    id: backup.id.clone(),
                    time: backup.time,
                    keep,
                    reasons,
                }
            })
            .collect()
    }
}

fn utc() -> FixedOffset {
    Utc.fix()
}

const MINUTE: i64 = 60;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// The units of a duration string, longest first, with their length in seconds.
const UNITS: [(&str, i64); 7] = [
    ("y", 365 * DAY),
    ("m", 30 * DAY),
    ("w", 7 * DAY),
    ("d", DAY),
    ("h", HOUR),
    ("min", MINUTE),
    ("s", 1),
];

/// Parses a duration such as `"7d"`, `"2w3d"`, `"36h"` or `"1y6m"`.
///
/// A duration is one or more `<number><unit>` parts, optionally separated by spaces,
/// each unit at most once. The units are `y` (365 days), `m` (month: 30 days — as in
/// restic, `m` is not minutes), `w` (7 days), `d` (24 hours), `h`, `min` and `s`.
/// Years and months have a fixed length so that a window does not depend on the
/// calendar or the time zone: `1y6m` is always 545 days.
///
/// ```
/// use chrono::TimeDelta;
/// use ops_core::retention::parse_duration;
///
/// assert_eq!(parse_duration("7d")?, TimeDelta::days(7));
/// assert_eq!(parse_duration("2w3d")?, TimeDelta::days(17));
/// assert_eq!(parse_duration("36h")?, TimeDelta::hours(36));
/// assert_eq!(parse_duration("1y6m")?, TimeDelta::days(365 + 6 * 30));
/// assert_eq!(parse_duration("1d 12h")?, TimeDelta::hours(36));
/// assert!(parse_duration("7").is_err());
/// # Ok::<(), ops_core::Error>(())
/// ```
///
/// # Errors
///
/// An [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) error, with the
/// input as `duration` context, when the string is empty, a number has no unit, a
/// unit is unknown or repeated, a number is missing, or the total does not fit in a
/// [`TimeDelta`].
pub fn parse_duration(text: &str) -> Result<TimeDelta> {
    let fail = |why: String| {
        Error::invalid(format!(
            "invalid duration {text:?}: {why} (write it like \"7d\", \"2w3d\", \"36h\" or \
             \"1y6m\"; units: y, m = 30 days, w, d, h, min, s)"
        ))
        .with_context("duration", text)
    };

    let mut rest = text.trim_start();
    if rest.is_empty() {
        return Err(fail("it is empty".to_owned()));
    }
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut total: i64 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits);
        if number.is_empty() {
            return Err(fail(format!("expected a number at {rest:?}")));
        }
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(fail(format!("the number {number} has no unit")));
        }
        let Some(&(unit, seconds)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(fail(format!("unknown unit {unit:?}")));
        };
        if !seen.insert(unit) {
            return Err(fail(format!("the unit {unit:?} is given twice")));
        }
        total = number
            .parse::<i64>()
            .ok()
            .and_then(|n| n.checked_mul(seconds))
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| fail("it is too long".to_owned()))?;
        rest = after.trim_start();
    }
    TimeDelta::try_seconds(total).ok_or_else(|| fail("it is too long".to_owned()))
}

/// Formats a duration in days, hours, minutes and seconds (`"17d"`, `"1d12h"`,
/// `"90min"` is `"1h30min"`), the form [`parse_duration`] reads back exactly.
///
/// Years and months are not used because they are approximations (`"1y6m"` is
/// shown as `"545d"`); sub-second precision is dropped; a negative duration is
/// shown with a leading `-` (which [`parse_duration`] refuses); zero is `"0s"`.
///
/// ```
/// use chrono::TimeDelta;
/// use ops_core::retention::format_duration;
///
/// assert_eq!(format_duration(TimeDelta::days(17)), "17d");
/// assert_eq!(format_duration(TimeDelta::hours(36)), "1d12h");
/// assert_eq!(format_duration(TimeDelta::minutes(90)), "1h30min");
/// ```
pub fn format_duration(duration: TimeDelta) -> String {
    let seconds = duration.num_seconds();
    let mut left = seconds.unsigned_abs();
    let mut out = String::new();
    if seconds < 0 {
        out.push('-');
    }
    for (name, length) in [("d", DAY), ("h", HOUR), ("min", MINUTE), ("s", 1)] {
        let length = length.unsigned_abs();
        let n = left / length;
        if n > 0 {
            out.push_str(&format!("{n}{name}"));
            left %= length;
        }
    }
    if out.is_empty() || out == "-" {
        "0s".to_owned()
    } else {
        out
    }
}

/// Parses a UTC offset: `"UTC"` or `"Z"`, or `±HH:MM`, `±HHMM` or `±HH`
/// (`"+02:00"`, `"-0530"`, `"+9"` is refused: two hour digits are needed).
///
/// ```
/// use ops_core::retention::parse_utc_offset;
///
/// assert_eq!(parse_utc_offset("+02:00")?.local_minus_utc(), 7200);
/// assert_eq!(parse_utc_offset("-05:30")?.local_minus_utc(), -19800);
/// assert_eq!(parse_utc_offset("UTC")?.local_minus_utc(), 0);
/// assert!(parse_utc_offset("Europe/Berlin").is_err());
/// # Ok::<(), ops_core::Error>(())
/// ```
///
/// # Errors
///
/// An [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) error, with the
/// input as `utc_offset` context, when the text is not one of the forms above or the
/// offset is 24 hours or more. Time zone names are not supported (see
/// [`KeepRules::utc_offset`] for what that means around daylight saving time).
pub fn parse_utc_offset(text: &str) -> Result<FixedOffset> {
    let fail = |why: &str| {
        Error::invalid(format!(
            "invalid UTC offset {text:?}: {why} (write it like \"+02:00\", \"-05:30\" or \
             \"UTC\"; time zone names are not supported)"
        ))
        .with_context("utc_offset", text)
    };

    let trimmed = text.trim();
    if trimmed.eq_ignore_ascii_case("utc") || trimmed == "Z" {
        return Ok(utc());
    }
    let (sign, digits) = match trimmed.as_bytes().first() {
        Some(b'+') => (1, &trimmed[1..]),
        Some(b'-') => (-1, &trimmed[1..]),
        _ => return Err(fail("it must start with + or -")),
    };
    let digits: String = match digits.as_bytes() {
        [_, _, b':', _, _] => digits.replacen(':', "", 1),
        [_, _, _, _] => digits.to_owned(),
        [_, _] => format!("{digits}00"),
        _ => return Err(fail("expected ±HH:MM, ±HHMM or ±HH")),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(fail("expected ±HH:MM, ±HHMM or ±HH"));
    }
    let hours: i32 = digits[..2]
        .parse()
        .map_err(|_| fail("expected ±HH:MM, ±HHMM or ±HH"))?;
    let minutes: i32 = digits[2..]
        .parse()
        .map_err(|_| fail("expected ±HH:MM, ±HHMM or ±HH"))?;
    if minutes >= 60 {
        return Err(fail("the minutes must be below 60"));
    }
    FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60))
        .ok_or_else(|| fail("the offset must be less than 24 hours"))
}

/// Formats a UTC offset as `"+02:00"` (`"+00:00"` for UTC), the form
/// [`parse_utc_offset`] reads back.
pub fn format_utc_offset(offset: FixedOffset) -> String {
    let seconds = offset.local_minus_utc();
    let sign = if seconds < 0 { '-' } else { '+' };
    let minutes = seconds.unsigned_abs() / 60;
    format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60)
}

impl fmt::Display for KeepRules {
    /// The rules in the words of the `forget` command line, for logs:
    /// `last 3, daily 7, within 17d, tag keep`; `no rules` when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if self.last > 0 {
            parts.push(format!("last {}", self.last));
        }
        for period in Period::ALL {
            let n = period.count(self);
            if n > 0 {
                parts.push(format!("{} {n}", period.name()));
            }
        }
        if let Some(within) = self.effective_within() {
            parts.push(format!("within {}", format_duration(within)));
        }
        for tag in &self.tags {
            parts.push(format!("tag {tag}"));
        }
        if parts.is_empty() {
            parts.push("no rules".to_owned());
        }
        if self.utc_offset.local_minus_utc() != 0 && !self.is_empty() {
            parts.push(format!("at UTC{}", format_utc_offset(self.utc_offset)));
        }
        f.write_str(&parts.join(", "))
    }
}

mod within_serde {
    use chrono::TimeDelta;
    use serde::{Deserialize, Deserializer, Serializer, de, ser};

    pub(super) fn serialize<S: Serializer>(
        value: &Option<TimeDelta>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            None => serializer.serialize_none(),
            Some(d) if *d < TimeDelta::zero() => Err(ser::Error::custom(
                "keep `within` must not be negative; leave it out to disable it",
            )),
            Some(d) => serializer.serialize_some(&super::format_duration(*d)),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<TimeDelta>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| super::parse_duration(&text).map_err(de::Error::custom))
            .transpose()
    }
}

mod offset_serde {
    use chrono::FixedOffset;
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub(super) fn serialize<S: Serializer>(
        value: &FixedOffset,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_utc_offset(*value))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<FixedOffset, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_utc_offset(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn durations_parse() {
        let cases = [
            ("7d", TimeDelta::days(7)),
            ("2w3d", TimeDelta::days(17)),
            ("36h", TimeDelta::hours(36)),
            ("1y6m", TimeDelta::days(545)),
            ("1y", TimeDelta::days(365)),
            ("1m", TimeDelta::days(30)),
            ("90min", TimeDelta::minutes(90)),
            ("45s", TimeDelta::seconds(45)),
            (" 1d 12h ", TimeDelta::hours(36)),
            ("0d", TimeDelta::zero()),
            ("3h2d", TimeDelta::hours(51)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).ok(), Some(want), "{text}");
        }
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        let cases = [
            ("", "it is empty"),
            ("   ", "it is empty"),
            ("7", "the number 7 has no unit"),
            ("d", "expected a number at \"d\""),
            ("7x", "unknown unit \"x\""),
            ("7D", "unknown unit \"D\""),
            ("1d2d", "the unit \"d\" is given twice"),
            ("-1d", "expected a number at \"-1d\""),
            ("1.5d", "the number 1 has no unit"),
            ("99999999999999999999y", "it is too long"),
            ("9999999999999y", "it is too long"),
        ];
        for (text, why) in cases {
            let Err(err) = parse_duration(text) else {
                panic!("{text:?} parsed");
            };
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            assert!(err.message().contains(why), "{text:?}: {}", err.message());
            assert!(err.message().contains("2w3d"), "{}", err.message());
            assert_eq!(err.context_value("duration"), Some(text));
        }
    }

    #[test]
    fn durations_format_and_read_back() {
        let cases = [
            (TimeDelta::days(17), "17d"),
            (TimeDelta::days(545), "545d"),
            (TimeDelta::hours(36), "1d12h"),
            (TimeDelta::minutes(90), "1h30min"),
            (TimeDelta::seconds(86_401), "1d1s"),
            (TimeDelta::zero(), "0s"),
            (TimeDelta::milliseconds(1500), "1s"),
            (TimeDelta::milliseconds(500), "0s"),
            (-TimeDelta::days(2), "-2d"),
        ];
        for (d, want) in cases {
            assert_eq!(format_duration(d), want);
            if d >= TimeDelta::zero() {
                let back = parse_duration(want).ok();
                assert_eq!(back, Some(TimeDelta::seconds(d.num_seconds())), "{want}");
            }
        }
    }

    #[test]
    fn offsets_parse_and_format() {
        let cases = [
            ("UTC", 0),
            ("utc", 0),
            ("Z", 0),
            ("+00:00", 0),
            ("+02:00", 7200),
            ("-05:30", -19_800),
            ("+0545", 20_700),
            ("+14", 50_400),
            ("-23:59", -86_340),
        ];
        for (text, seconds) in cases {
            let offset = parse_utc_offset(text).map(|o| o.local_minus_utc()).ok();
            assert_eq!(offset, Some(seconds), "{text}");
        }
        for text in ["+02:00", "-05:30", "+00:00", "-23:59"] {
            let offset = parse_utc_offset(text).ok().map(format_utc_offset);
            assert_eq!(offset.as_deref(), Some(text));
        }
        for (text, why) in [
            ("02:00", "must start with + or -"),
            ("Europe/Berlin", "must start with + or -"),
            ("+2", "expected ±HH:MM"),
            ("+02:0", "expected ±HH:MM"),
            ("+0a:00", "expected ±HH:MM"),
            ("+02:60", "minutes must be below 60"),
            ("+24:00", "less than 24 hours"),
            ("", "must start with + or -"),
        ] {
            let Err(err) = parse_utc_offset(text) else {
                panic!("{text:?} parsed");
            };
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            assert!(err.message().contains(why), "{text:?}: {}", err.message());
            assert_eq!(err.context_value("utc_offset"), Some(text));
        }
    }

    #[test]
    fn period_labels() {
        let at = |s: &str| {
            s.parse::<NaiveDateTime>()
                .unwrap_or_else(|e| panic!("{s}: {e}"))
        };
        let t = at("2026-11-20T14:05:00");
        assert_eq!(Period::Hour.label(t), "2026-11-20 14:00");
        assert_eq!(Period::Day.label(t), "2026-11-20");
        assert_eq!(Period::Week.label(t), "2026-W47");
        assert_eq!(Period::Month.label(t), "2026-11");
        assert_eq!(Period::Year.label(t), "2026");
        // ISO weeks belong to the year of their Thursday.
        assert_eq!(Period::Week.label(at("2027-01-01T00:00:00")), "2026-W53");
        assert_eq!(Period::Week.label(at("2025-12-29T00:00:00")), "2026-W01");
    }

    #[test]
    fn display_reads_like_the_command_line() {
        let rules = KeepRules::default()
            .with_last(3)
            .with_daily(7)
            .with_within(TimeDelta::days(17))
            .with_tags(["b", "a"]);
        assert_eq!(
            rules.to_string(),
            "last 3, daily 7, within 17d, tag a, tag b"
        );
        assert_eq!(KeepRules::default().to_string(), "no rules");
        let offset = parse_utc_offset("-05:30").expect("valid offset");
        assert_eq!(
            KeepRules::default()
                .with_weekly(2)
                .with_utc_offset(offset)
                .to_string(),
            "weekly 2, at UTC-05:30"
        );
    }

    #[test]
    fn is_empty_ignores_offset_and_non_positive_within() {
        assert!(KeepRules::default().is_empty());
        let offset = parse_utc_offset("+02:00").expect("valid offset");
        assert!(KeepRules::default().with_utc_offset(offset).is_empty());
        assert!(
            KeepRules::default()
                .with_within(TimeDelta::zero())
                .is_empty()
        );
        assert!(
            KeepRules::default()
                .with_within(-TimeDelta::days(1))
                .is_empty()
        );
        assert!(
            !KeepRules::default()
                .with_within(TimeDelta::hours(1))
                .is_empty()
        );
        assert!(!KeepRules::default().with_tag("x").is_empty());
        assert!(!KeepRules::default().with_last(1).is_empty());
        assert!(!KeepRules::default().with_hourly(1).is_empty());
        assert!(!KeepRules::default().with_yearly(1).is_empty());
    }

    #[test]
    fn serde_round_trip_and_errors() {
        let offset = parse_utc_offset("+05:45").expect("valid offset");
        let rules = KeepRules::default()
            .with_last(1)
            .with_hourly(2)
            .with_daily(3)
            .with_weekly(4)
            .with_monthly(5)
            .with_yearly(6)
            .with_within(TimeDelta::hours(36))
            .with_tag("keep")
            .with_utc_offset(offset);
        let json = serde_json::to_value(&rules).expect("serialisable");
        assert_eq!(json["within"], "1d12h");
        assert_eq!(json["utc_offset"], "+05:45");
        let back: KeepRules = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, rules);

        let default: KeepRules = serde_json::from_str("{}").expect("valid rules");
        assert_eq!(default, KeepRules::default());
        let null: KeepRules = serde_json::from_str(r#"{"within": null}"#).expect("valid rules");
        assert_eq!(null.within, None);

        let err = serde_json::from_str::<KeepRules>(r#"{"within": "7x"}"#)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("unknown unit \"x\""), "{err}");
        let err = serde_json::from_str::<KeepRules>(r#"{"utc_offset": "CET"}"#)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("invalid UTC offset"), "{err}");
        let err = serde_json::from_str::<KeepRules>(r#"{"keep_daily": 7}"#)
            .expect_err("refused")
            .to_string();
        assert!(err.contains("unknown field"), "{err}");
        assert!(
            serde_json::to_string(&KeepRules::default().with_within(-TimeDelta::days(1))).is_err()
        );
    }
}
