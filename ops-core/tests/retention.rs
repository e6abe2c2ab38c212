//! `KeepRules` decisions: calendar boundaries (day, ISO week across a year, month
//! ends, leap day), UTC offsets, `last` with ties, `within`, tags, the union of rules
//! with every reason listed, the newest complete backup, failed backups, input order,
//! empty input and empty rules; then properties over random backups and rules.
//! Pure: `now` is always given, no clock is read.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;

use ops_core::retention::{KeepRules, parse_duration, parse_utc_offset};
use ops_core::{BackupSummary, RetentionDecision, RetentionPolicy};

fn at(text: &str) -> DateTime<Utc> {
    text.parse()
        .unwrap_or_else(|e| panic!("bad timestamp {text}: {e}"))
}

fn good(id: &str, time: &str) -> BackupSummary {
    BackupSummary {
        id: id.to_owned(),
        time: at(time),
        tags: BTreeSet::new(),
        complete: true,
    }
}

fn failed(id: &str, time: &str) -> BackupSummary {
    BackupSummary {
        complete: false,
        ..good(id, time)
    }
}

fn tagged(id: &str, time: &str, tags: &[&str]) -> BackupSummary {
    BackupSummary {
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        ..good(id, time)
    }
}

/// A `now` after every backup in these tests, far enough that `within` rules given
/// relative to it are easy to read.
fn now() -> DateTime<Utc> {
    at("2030-01-01T00:00:00Z")
}

fn kept(decisions: &[RetentionDecision]) -> Vec<&str> {
    decisions
        .iter()
        .filter(|d| d.keep)
        .map(|d| d.id.as_str())
        .collect()
}

fn reasons<'a>(decisions: &'a [RetentionDecision], id: &str) -> Vec<&'a str> {
    decisions
        .iter()
        .find(|d| d.id == id)
        .unwrap_or_else(|| panic!("no decision for {id}"))
        .reasons
        .iter()
        .map(String::as_str)
        .collect()
}

#[test]
fn policy_is_object_safe_and_shareable() {
    let policy: Arc<dyn RetentionPolicy> = Arc::new(KeepRules::default().with_last(1));
    let decisions = policy.apply(&[good("a", "2026-01-01T00:00:00Z")], now());
    assert_eq!(kept(&decisions), ["a"]);
    fn assert_send_sync<T: Send + Sync + 'static>(_: &T) {}
    assert_send_sync(&policy);
}

#[test]
fn daily_splits_at_midnight() {
    let backups = [
        good("before", "2026-11-19T23:59:59Z"),
        good("midnight", "2026-11-20T00:00:00Z"),
        good("noon", "2026-11-20T12:00:00Z"),
        good("early", "2026-11-19T01:00:00Z"),
    ];
    let decisions = KeepRules::default().with_daily(5).apply(&backups, now());
    // The newest of each day: 12:00 on the 20th, 23:59:59 on the 19th.
    assert_eq!(kept(&decisions), ["before", "noon"]);
    assert_eq!(reasons(&decisions, "before"), ["daily 2026-11-19"]);
    assert_eq!(
        reasons(&decisions, "noon"),
        ["newest complete backup", "daily 2026-11-20"]
    );
    assert_eq!(reasons(&decisions, "midnight"), ["no rule keeps it"]);
    assert_eq!(reasons(&decisions, "early"), ["no rule keeps it"]);
}

#[test]
fn daily_counts_days_with_backups_not_calendar_days() {
    // Three backups a week apart: daily 3 keeps all three, the gaps use no slot.
    let backups = [
        good("a", "2026-11-01T10:00:00Z"),
        good("b", "2026-11-08T10:00:00Z"),
        good("c", "2026-11-15T10:00:00Z"),
        good("d", "2026-10-25T10:00:00Z"),
    ];
    let decisions = KeepRules::default().with_daily(3).apply(&backups, now());
    assert_eq!(kept(&decisions), ["a", "b", "c"]);
}

#[test]
fn hourly_splits_at_the_hour() {
    let backups = [
        good("a", "2026-11-20T13:59:59Z"),
        good("b", "2026-11-20T14:00:00Z"),
        good("c", "2026-11-20T14:30:00Z"),
        good("d", "2026-11-20T12:15:00Z"),
        good("e", "2026-11-20T11:15:00Z"),
    ];
    let decisions = KeepRules::default().with_hourly(3).apply(&backups, now());
    assert_eq!(kept(&decisions), ["a", "c", "d"]);
    assert_eq!(reasons(&decisions, "a"), ["hourly 2026-11-20 13:00"]);
    assert_eq!(
        reasons(&decisions, "c"),
        ["newest complete backup", "hourly 2026-11-20 14:00"]
    );
    assert_eq!(reasons(&decisions, "d"), ["hourly 2026-11-20 12:00"]);
    assert_eq!(reasons(&decisions, "e"), ["no rule keeps it"]);
}

#[test]
fn weekly_follows_iso_weeks_across_the_year_end() {
    // 2026-12-31 is a Thursday and 2027-01-01 a Friday: both in ISO week 2026-W53,
    // which runs Monday 2026-12-28 to Sunday 2027-01-03.
    let backups = [
        good("sun-w52", "2026-12-27T23:59:59Z"),
        good("mon-w53", "2026-12-28T00:00:00Z"),
        good("thu-w53", "2026-12-31T12:00:00Z"),
        good("fri-w53", "2027-01-01T12:00:00Z"),
        good("sun-w53", "2027-01-03T23:59:59Z"),
        good("mon-w01", "2027-01-04T00:00:00Z"),
    ];
    let decisions = KeepRules::default().with_weekly(3).apply(&backups, now());
    assert_eq!(kept(&decisions), ["sun-w52", "sun-w53", "mon-w01"]);
    assert_eq!(reasons(&decisions, "sun-w52"), ["weekly 2026-W52"]);
    assert_eq!(reasons(&decisions, "sun-w53"), ["weekly 2026-W53"]);
    assert_eq!(
        reasons(&decisions, "mon-w01"),
        ["newest complete backup", "weekly 2027-W01"]
    );

    // The yearly rule goes by calendar year, not ISO year.
    let decisions = KeepRules::default().with_yearly(2).apply(&backups, now());
    assert_eq!(kept(&decisions), ["thu-w53", "mon-w01"]);
    assert_eq!(reasons(&decisions, "thu-w53"), ["yearly 2026"]);
}

#[test]
fn iso_week_one_can_start_in_the_previous_year() {
    // 2025-12-29 (a Monday) is in 2026-W01.
    let backups = [
        good("sun", "2025-12-28T12:00:00Z"),
        good("mon", "2025-12-29T12:00:00Z"),
        good("new-year", "2026-01-01T12:00:00Z"),
    ];
    let decisions = KeepRules::default().with_weekly(5).apply(&backups, now());
    assert_eq!(kept(&decisions), ["sun", "new-year"]);
    assert_eq!(reasons(&decisions, "sun"), ["weekly 2025-W52"]);
    assert_eq!(
        reasons(&decisions, "new-year"),
        ["newest complete backup", "weekly 2026-W01"]
    );
}

#[test]
fn monthly_splits_at_month_ends_and_leap_day() {
    let backups = [
        good("jan-31", "2028-01-31T23:59:59Z"),
        good("feb-28", "2028-02-28T23:59:59Z"),
        good("leap-day", "2028-02-29T23:59:59Z"),
        good("mar-1", "2028-03-01T00:00:00Z"),
        good("apr-30", "2028-04-30T23:00:00Z"),
        good("may-1", "2028-05-01T00:00:00Z"),
    ];
    let decisions = KeepRules::default().with_monthly(5).apply(&backups, now());
    assert_eq!(
        kept(&decisions),
        ["jan-31", "leap-day", "mar-1", "apr-30", "may-1"]
    );
    assert_eq!(reasons(&decisions, "leap-day"), ["monthly 2028-02"]);
    assert_eq!(reasons(&decisions, "mar-1"), ["monthly 2028-03"]);

    // The leap day is a day of its own.
    let decisions = KeepRules::default().with_daily(10).apply(&backups, now());
    assert_eq!(reasons(&decisions, "leap-day"), ["daily 2028-02-29"]);
    assert_eq!(reasons(&decisions, "feb-28"), ["daily 2028-02-28"]);
}

#[test]
fn yearly_splits_at_new_year() {
    let backups = [
        good("a", "2025-12-31T23:59:59Z"),
        good("b", "2026-01-01T00:00:00Z"),
        good("c", "2024-06-01T00:00:00Z"),
        good("d", "2024-01-01T00:00:00Z"),
    ];
    let decisions = KeepRules::default().with_yearly(2).apply(&backups, now());
    assert_eq!(kept(&decisions), ["a", "b"]);
    assert_eq!(reasons(&decisions, "a"), ["yearly 2025"]);
    assert_eq!(reasons(&decisions, "c"), ["no rule keeps it"]);
}

#[test]
fn utc_offset_shifts_the_day() {
    // At +02:00, 22:30 UTC on the 19th is 00:30 on the 20th: same day as 12:00 UTC
    // on the 20th. At UTC they are different days.
    let backups = [
        good("late", "2026-11-19T22:30:00Z"),
        good("noon", "2026-11-20T12:00:00Z"),
    ];
    let plus_two = KeepRules::default()
        .with_daily(7)
        .with_utc_offset(parse_utc_offset("+02:00").expect("valid offset"));
    assert_eq!(kept(&plus_two.apply(&backups, now())), ["noon"]);
    let at_utc = KeepRules::default().with_daily(7);
    assert_eq!(kept(&at_utc.apply(&backups, now())), ["late", "noon"]);

    // West of UTC, 01:30 UTC on the 20th is still the 19th.
    let backups = [
        good("evening", "2026-11-20T01:30:00Z"),
        good("morning", "2026-11-19T14:00:00Z"),
    ];
    let minus_five = KeepRules::default()
        .with_daily(7)
        .with_utc_offset(parse_utc_offset("-05:00").expect("valid offset"));
    let decisions = minus_five.apply(&backups, now());
    assert_eq!(kept(&decisions), ["evening"]);
    assert_eq!(
        reasons(&decisions, "evening"),
        ["newest complete backup", "daily 2026-11-19"]
    );
}

#[test]
fn utc_offset_shifts_weeks_months_and_years() {
    // 2026-12-31T23:30Z is 2027-01-01T01:30 at +02:00: another year, month and
    // (ISO) the same week 2026-W53.
    let backups = [
        good("old-year", "2026-12-31T20:00:00Z"),
        good("new-year", "2026-12-31T23:30:00Z"),
    ];
    let rules = KeepRules::default()
        .with_yearly(5)
        .with_monthly(5)
        .with_weekly(5)
        .with_utc_offset(parse_utc_offset("+02:00").expect("valid offset"));
    let decisions = rules.apply(&backups, now());
    assert_eq!(
        reasons(&decisions, "new-year"),
        [
            "newest complete backup",
            "weekly 2026-W53",
            "monthly 2027-01",
            "yearly 2027"
        ]
    );
    assert_eq!(
        reasons(&decisions, "old-year"),
        ["monthly 2026-12", "yearly 2026"]
    );
}

#[test]
fn last_counts_newest_first_and_breaks_ties_by_id() {
    let backups = [
        good("c", "2026-11-20T10:00:00Z"),
        good("a", "2026-11-20T10:00:00Z"),
        good("b", "2026-11-20T10:00:00Z"),
        good("old", "2026-11-19T10:00:00Z"),
    ];
    let decisions = KeepRules::default().with_last(2).apply(&backups, now());
    // Same instant: the smaller id counts as the newer.
    assert_eq!(kept(&decisions), ["a", "b"]);
    assert_eq!(
        reasons(&decisions, "a"),
        ["newest complete backup", "last 1"]
    );
    assert_eq!(reasons(&decisions, "b"), ["last 2"]);
    assert_eq!(reasons(&decisions, "c"), ["no rule keeps it"]);

    // Reordering the input changes nothing.
    let mut reversed = backups.to_vec();
    reversed.reverse();
    let again = KeepRules::default().with_last(2).apply(&reversed, now());
    assert_eq!(kept(&again), ["b", "a"]);

    // The same tie in a calendar period: the smaller id is the period's newest.
    let decisions = KeepRules::default().with_daily(1).apply(&backups, now());
    assert_eq!(kept(&decisions), ["a"]);
}

#[test]
fn last_with_exact_duplicates_keeps_the_first() {
    let backups = [
        good("x", "2026-11-20T10:00:00Z"),
        good("x", "2026-11-20T10:00:00Z"),
    ];
    let decisions = KeepRules::default().with_last(1).apply(&backups, now());
    assert!(decisions[0].keep);
    assert!(!decisions[1].keep);
    assert_eq!(decisions[1].reasons, ["no rule keeps it"]);
}

#[test]
fn last_larger_than_the_backups_keeps_all() {
    let backups = [
        good("a", "2026-11-20T10:00:00Z"),
        good("b", "2026-11-21T10:00:00Z"),
    ];
    let decisions = KeepRules::default().with_last(10).apply(&backups, now());
    assert_eq!(kept(&decisions), ["a", "b"]);
    assert_eq!(reasons(&decisions, "a"), ["last 2"]);
}

#[test]
fn within_keeps_what_is_newer_than_now_minus_the_duration() {
    let now = at("2026-11-20T12:00:00Z");
    let backups = [
        good("edge", "2026-11-13T12:00:00Z"),
        good("inside", "2026-11-13T12:00:01Z"),
        good("outside", "2026-11-10T00:00:00Z"),
        good("future", "2026-11-21T00:00:00Z"),
    ];
    let rules = KeepRules::default().with_within(parse_duration("7d").expect("valid duration"));
    let decisions = rules.apply(&backups, now);
    // Strictly newer than now - 7d; a backup from the future is inside the window.
    assert_eq!(kept(&decisions), ["inside", "future"]);
    assert_eq!(reasons(&decisions, "inside"), ["within 7d"]);
    assert_eq!(
        reasons(&decisions, "future"),
        ["newest complete backup", "within 7d"]
    );
    assert_eq!(reasons(&decisions, "edge"), ["no rule keeps it"]);

    // Reasons show the duration in days and hours.
    let rules = KeepRules::default().with_within(parse_duration("36h").expect("valid"));
    let decisions = rules.apply(&backups, now);
    assert_eq!(
        reasons(&decisions, "future"),
        ["newest complete backup", "within 1d12h"]
    );
}

#[test]
fn within_counts_back_from_now_not_from_the_newest_backup() {
    // restic counts back from the newest backup; here the window ends at `now`, so
    // old backups fall out of it even when no new backup has been taken.
    let backups = [
        good("a", "2026-01-01T00:00:00Z"),
        good("b", "2026-01-02T00:00:00Z"),
    ];
    let rules = KeepRules::default().with_within(TimeDelta::days(7));
    let decisions = rules.apply(&backups, at("2026-06-01T00:00:00Z"));
    assert_eq!(kept(&decisions), ["b"]);
    assert_eq!(reasons(&decisions, "b"), ["newest complete backup"]);
}

#[test]
fn a_huge_within_keeps_everything() {
    let backups = [
        good("a", "1970-01-01T00:00:00Z"),
        good("b", "2026-01-02T00:00:00Z"),
    ];
    let rules = KeepRules::default().with_within(TimeDelta::MAX);
    assert_eq!(kept(&rules.apply(&backups, now())), ["a", "b"]);
}

#[test]
fn tags_keep_every_tagged_backup() {
    let backups = [
        tagged("a", "2026-01-01T00:00:00Z", &["pre-migration"]),
        tagged(
            "b",
            "2026-01-02T00:00:00Z",
            &["nightly", "pre-migration", "x"],
        ),
        tagged("c", "2026-01-03T00:00:00Z", &["x"]),
        good("d", "2026-01-04T00:00:00Z"),
    ];
    let rules = KeepRules::default().with_tags(["pre-migration", "nightly"]);
    let decisions = rules.apply(&backups, now());
    assert_eq!(kept(&decisions), ["a", "b", "d"]);
    assert_eq!(reasons(&decisions, "a"), ["tag pre-migration"]);
    assert_eq!(
        reasons(&decisions, "b"),
        ["tag nightly", "tag pre-migration"]
    );
    assert_eq!(reasons(&decisions, "c"), ["no rule keeps it"]);
    assert_eq!(reasons(&decisions, "d"), ["newest complete backup"]);
}

#[test]
fn a_backup_kept_by_several_rules_lists_them_all() {
    let now = at("2026-11-22T00:00:00Z");
    let backups = [
        tagged("sat", "2026-11-21T03:00:00Z", &["nightly"]),
        good("fri", "2026-11-20T03:00:00Z"),
        good("thu", "2026-11-19T03:00:00Z"),
        good("oct", "2026-10-15T03:00:00Z"),
        good("old", "2026-10-01T03:00:00Z"),
    ];
    let rules = KeepRules::default()
        .with_last(2)
        .with_hourly(1)
        .with_daily(2)
        .with_weekly(2)
        .with_monthly(2)
        .with_yearly(1)
        .with_within(TimeDelta::days(7))
        .with_tag("nightly");
    let decisions = rules.apply(&backups, now);
    assert_eq!(
        reasons(&decisions, "sat"),
        [
            "newest complete backup",
            "last 1",
            "hourly 2026-11-21 03:00",
            "daily 2026-11-21",
            "weekly 2026-W47",
            "monthly 2026-11",
            "yearly 2026",
            "within 7d",
            "tag nightly",
        ]
    );
    assert_eq!(
        reasons(&decisions, "fri"),
        ["last 2", "daily 2026-11-20", "within 7d"]
    );
    assert_eq!(reasons(&decisions, "thu"), ["within 7d"]);
    assert_eq!(
        reasons(&decisions, "oct"),
        ["weekly 2026-W42", "monthly 2026-10"]
    );
    assert_eq!(reasons(&decisions, "old"), ["no rule keeps it"]);
}

#[test]
fn the_newest_complete_backup_is_always_kept() {
    // A rule that keeps nothing on its own: a tag nobody has.
    let backups = [
        good("older", "2026-01-01T00:00:00Z"),
        good("newest", "2026-01-02T00:00:00Z"),
        failed("newer-but-failed", "2026-01-03T00:00:00Z"),
    ];
    let rules = KeepRules::default().with_tag("nobody");
    let decisions = rules.apply(&backups, now());
    assert_eq!(kept(&decisions), ["newest"]);
    assert_eq!(reasons(&decisions, "newest"), ["newest complete backup"]);
    assert_eq!(reasons(&decisions, "newer-but-failed"), ["incomplete"]);

    // Even when every rule's window has passed.
    let rules = KeepRules::default().with_within(TimeDelta::hours(1));
    assert_eq!(kept(&rules.apply(&backups, now())), ["newest"]);
}

#[test]
fn failed_backups_are_forgotten_and_never_fill_a_rule() {
    let backups = [
        failed("f3", "2026-11-20T10:00:00Z"),
        good("g2", "2026-11-19T10:00:00Z"),
        failed("f2", "2026-11-19T11:00:00Z"),
        good("g1", "2026-11-18T10:00:00Z"),
        tagged("f1", "2026-11-18T11:00:00Z", &["keep"]),
    ];
    let mut backups = backups.to_vec();
    backups[4].complete = false;
    let rules = KeepRules::default()
        .with_last(1)
        .with_daily(2)
        .with_within(TimeDelta::days(365 * 10))
        .with_tag("keep");
    let decisions = rules.apply(&backups, now());
    assert_eq!(kept(&decisions), ["g2", "g1"]);
    for id in ["f1", "f2", "f3"] {
        assert_eq!(reasons(&decisions, id), ["incomplete"], "{id}");
    }
    // f2 is the newest of the 19th but does not count: g2 is that day's backup.
    assert_eq!(
        reasons(&decisions, "g2"),
        [
            "newest complete backup",
            "last 1",
            "daily 2026-11-19",
            "within 3650d"
        ]
    );
    assert_eq!(
        reasons(&decisions, "g1"),
        ["daily 2026-11-18", "within 3650d"]
    );
}

#[test]
fn a_run_of_failures_does_not_push_out_good_backups() {
    // 10 good nightly backups, then 10 nights of failures (several a night).
    let mut backups = Vec::new();
    for day in 1..=10 {
        backups.push(good(
            &format!("good-{day:02}"),
            &format!("2026-11-{day:02}T02:00:00Z"),
        ));
    }
    for day in 11..=20 {
        for attempt in 0..3 {
            backups.push(failed(
                &format!("failed-{day:02}-{attempt}"),
                &format!("2026-11-{day:02}T0{}:00:00Z", 2 + attempt),
            ));
        }
    }
    let now = at("2026-11-21T00:00:00Z");
    let rules = KeepRules::default().with_daily(7).with_last(2);
    let decisions = rules.apply(&backups, now);
    assert_eq!(
        kept(&decisions),
        [
            "good-04", "good-05", "good-06", "good-07", "good-08", "good-09", "good-10"
        ]
    );
    assert_eq!(
        reasons(&decisions, "good-10"),
        ["newest complete backup", "last 1", "daily 2026-11-10"]
    );
    assert_eq!(
        reasons(&decisions, "good-09"),
        ["last 2", "daily 2026-11-09"]
    );
    assert!(
        decisions
            .iter()
            .filter(|d| d.id.starts_with("failed"))
            .all(|d| !d.keep && d.reasons == ["incomplete"])
    );

    // Only failures at all: nothing is kept, and nothing good existed to lose.
    let only_failed: Vec<_> = backups.into_iter().filter(|b| !b.complete).collect();
    let decisions = rules.apply(&only_failed, now);
    assert!(kept(&decisions).is_empty());
}

#[test]
fn decisions_come_back_in_input_order_for_unsorted_input() {
    let backups = [
        good("mid", "2026-11-15T00:00:00Z"),
        good("new", "2026-11-20T00:00:00Z"),
        failed("bad", "2026-11-21T00:00:00Z"),
        good("old", "2026-11-10T00:00:00Z"),
    ];
    let decisions = KeepRules::default().with_last(2).apply(&backups, now());
    let ids: Vec<&str> = decisions.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["mid", "new", "bad", "old"]);
    let times: Vec<_> = decisions.iter().map(|d| d.time).collect();
    let want: Vec<_> = backups.iter().map(|b| b.time).collect();
    assert_eq!(times, want);
    assert_eq!(kept(&decisions), ["mid", "new"]);
    assert_eq!(reasons(&decisions, "mid"), ["last 2"]);
}

#[test]
fn empty_input_gives_no_decisions() {
    assert!(
        KeepRules::default()
            .with_daily(7)
            .apply(&[], now())
            .is_empty()
    );
    assert!(KeepRules::default().apply(&[], now()).is_empty());
}

#[test]
fn empty_rules_keep_everything_failed_backups_included() {
    let rules = KeepRules::default();
    assert!(rules.is_empty());
    let backups = [
        good("a", "2026-01-01T00:00:00Z"),
        failed("b", "2026-01-02T00:00:00Z"),
        good("c", "2025-01-01T00:00:00Z"),
    ];
    let decisions = rules.apply(&backups, now());
    assert_eq!(kept(&decisions), ["a", "b", "c"]);
    assert_eq!(
        reasons(&decisions, "a"),
        [
            "newest complete backup",
            "no rule given: keeping everything"
        ]
    );
    assert_eq!(
        reasons(&decisions, "b"),
        ["no rule given: keeping everything"]
    );
    assert_eq!(
        reasons(&decisions, "c"),
        ["no rule given: keeping everything"]
    );

    // A zero `within` is no rule either.
    let zero = KeepRules::default().with_within(TimeDelta::zero());
    assert_eq!(kept(&zero.apply(&backups, now())), ["a", "b", "c"]);
}

// ---------------------------------------------------------------------------------
// Properties

const TAGS: [&str; 3] = ["a", "b", "c"];

fn arb_backups() -> impl Strategy<Value = Vec<BackupSummary>> {
    // Times on a coarse grid over ~3 years so that hours, days, weeks, months and
    // years hold several backups, and some backups share an instant.
    let base = at("2025-01-01T00:00:00Z");
    let one = (
        0u8..12,
        // Mostly spread over 3 years in steps of 105 minutes; some packed into a
        // few days in steps of 20 minutes, so that hours and days fill up too.
        prop_oneof![
            3 => (0i64..(3 * 366 * 24 * 4 / 7)).prop_map(|n| n * 105),
            1 => (0i64..(3 * 24 * 3)).prop_map(|n| 500 * 24 * 60 + n * 20),
        ],
        prop::bool::weighted(0.8),
        prop::collection::btree_set(prop::sample::select(TAGS.to_vec()), 0..2),
    )
        .prop_map(move |(id, minutes, complete, tags)| BackupSummary {
            id: format!("b{id:02}"),
            time: base + TimeDelta::minutes(minutes),
            tags: tags.into_iter().map(str::to_owned).collect(),
            complete,
        });
    prop::collection::vec(one, 0..40)
}

fn arb_rules() -> impl Strategy<Value = KeepRules> {
    (
        (0u32..4, 0u32..4, 0u32..6, 0u32..4, 0u32..4, 0u32..3),
        prop::option::of(0i64..(2 * 366 * 24)),
        prop::collection::btree_set(prop::sample::select(TAGS.to_vec()), 0..2),
        -48i32..=56,
    )
        .prop_map(
            |((last, hourly, daily, weekly, monthly, yearly), within_hours, tags, quarters)| {
                let offset = chrono::FixedOffset::east_opt(quarters * 15 * 60)
                    .expect("offsets within ±14h are valid");
                let mut rules = KeepRules::default()
                    .with_last(last)
                    .with_hourly(hourly)
                    .with_daily(daily)
                    .with_weekly(weekly)
                    .with_monthly(monthly)
                    .with_yearly(yearly)
                    .with_tags(tags)
                    .with_utc_offset(offset);
                if let Some(hours) = within_hours {
                    rules = rules.with_within(TimeDelta::hours(hours));
                }
                rules
            },
        )
}

fn arb_now() -> impl Strategy<Value = DateTime<Utc>> {
    (0i64..(4 * 366 * 24)).prop_map(|hours| at("2025-01-01T00:00:00Z") + TimeDelta::hours(hours))
}

/// The newest complete backup by the documented order: time, then smaller id.
fn newest_complete(backups: &[BackupSummary]) -> Option<usize> {
    (0..backups.len())
        .filter(|&i| backups[i].complete)
        .min_by(|&a, &b| {
            let (x, y) = (&backups[a], &backups[b]);
            y.time
                .cmp(&x.time)
                .then_with(|| x.id.cmp(&y.id))
                .then_with(|| a.cmp(&b))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (1) The newest complete backup is always kept.
    #[test]
    fn newest_complete_is_kept(backups in arb_backups(), rules in arb_rules(), now in arb_now()) {
        let decisions = rules.apply(&backups, now);
        if let Some(newest) = newest_complete(&backups) {
            prop_assert!(decisions[newest].keep);
            prop_assert_eq!(&decisions[newest].reasons[0], "newest complete backup");
        }
    }

    /// (2) No more is kept than the rules allow.
    #[test]
    fn kept_count_is_bounded(backups in arb_backups(), rules in arb_rules(), now in arb_now()) {
        prop_assume!(!rules.is_empty());
        let decisions = rules.apply(&backups, now);
        let good = || backups.iter().filter(|b| b.complete);
        let tagged = good().filter(|b| !b.tags.is_disjoint(&rules.tags)).count();
        let within = match rules.within.filter(|d| *d > TimeDelta::zero()) {
            Some(d) => good().filter(|b| b.time > now - d).count(),
            None => 0,
        };
        let limits = [rules.last, rules.hourly, rules.daily, rules.weekly, rules.monthly, rules.yearly]
            .iter()
            .map(|n| *n as usize)
            .sum::<usize>();
        let kept = decisions.iter().filter(|d| d.keep).count();
        prop_assert!(kept <= limits + tagged + within + 1, "kept {kept}, rules {rules}");
        // And nothing incomplete is kept.
        for (d, b) in decisions.iter().zip(&backups) {
            prop_assert!(b.complete || !d.keep);
        }
    }

    /// (3) Applying the rules to what they kept keeps all of it (same `now`), and with
    /// the same reasons: `forget` run twice forgets nothing the second time.
    #[test]
    fn idempotent(backups in arb_backups(), rules in arb_rules(), now in arb_now()) {
        let decisions = rules.apply(&backups, now);
        let kept: Vec<BackupSummary> = backups
            .iter()
            .zip(&decisions)
            .filter(|(_, d)| d.keep)
            .map(|(b, _)| b.clone())
            .collect();
        let first: Vec<RetentionDecision> = decisions.into_iter().filter(|d| d.keep).collect();
        let again = rules.apply(&kept, now);
        prop_assert_eq!(again, first);
    }

    /// (4) One decision per backup, in input order, each with at least one reason.
    #[test]
    fn order_and_reasons(backups in arb_backups(), rules in arb_rules(), now in arb_now()) {
        let decisions = rules.apply(&backups, now);
        prop_assert_eq!(decisions.len(), backups.len());
        for (d, b) in decisions.iter().zip(&backups) {
            prop_assert_eq!(&d.id, &b.id);
            prop_assert_eq!(d.time, b.time);
            prop_assert!(!d.reasons.is_empty());
            if !d.keep {
                prop_assert_eq!(d.reasons.len(), 1);
            }
        }
    }

    /// Failed backups are invisible: adding any number of them changes no decision
    /// about the complete ones (when some rule is given).
    #[test]
    fn failures_change_nothing_for_good_backups(
        backups in arb_backups(),
        rules in arb_rules(),
        now in arb_now(),
    ) {
        prop_assume!(!rules.is_empty());
        let good: Vec<BackupSummary> = backups.iter().filter(|b| b.complete).cloned().collect();
        let with_failures: Vec<RetentionDecision> = rules
            .apply(&backups, now)
            .into_iter()
            .zip(&backups)
            .filter(|(_, b)| b.complete)
            .map(|(d, _)| d)
            .collect();
        prop_assert_eq!(with_failures, rules.apply(&good, now));
    }

    /// The order of the input changes no decision.
    #[test]
    fn input_order_does_not_matter(
        backups in arb_backups(),
        rules in arb_rules(),
        now in arb_now(),
        seed in any::<u64>(),
    ) {
        // Exact duplicates are told apart by position only; drop them here.
        let mut seen = BTreeSet::new();
        let backups: Vec<_> = backups.into_iter().filter(|b| seen.insert((b.id.clone(), b.time))).collect();
        let mut order: Vec<usize> = (0..backups.len()).collect();
        // A seeded Fisher-Yates shuffle, with a simple LCG: reproducible.
        let mut state = seed;
        for i in (1..order.len()).rev() {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let j = usize::try_from((state >> 33) % (i as u64 + 1)).expect("fits");
            order.swap(i, j);
        }
        let shuffled: Vec<_> = order.iter().map(|&i| backups[i].clone()).collect();
        let straight = rules.apply(&backups, now);
        let shuffled = rules.apply(&shuffled, now);
        for (k, &i) in order.iter().enumerate() {
            prop_assert_eq!(&shuffled[k], &straight[i]);
        }
    }

    /// The serde form reads back to the same rules (within to whole seconds).
    #[test]
    fn serde_round_trip(rules in arb_rules()) {
        let json = serde_json::to_string(&rules).expect("serialisable");
        let back: KeepRules = serde_json::from_str(&json).expect("reads back");
        prop_assert_eq!(back, rules);
    }
}
