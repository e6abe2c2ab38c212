//! The planner on a simulated clock: days of schedule in microseconds, no sleeps.
//!
//! The simulator plays the daemon's part exactly as `ops-agent`'s loop does: ask
//! `plan` at `now`, act on its actions, sleep until the earliest of the plan's wake
//! time, the running attempt's end and a retry's start; retries stay inside the run
//! (the run counts as running during its backoff), asking `Timing::retry_at`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ops_core::chrono::{DateTime, Duration as Span, Utc};
use ops_core::jobs::Trigger;
use ops_core::schedule::{Action, JobState, Schedule, SkipReason, Timing, plan};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn hours(h: i64) -> Span {
    Span::hours(h)
}

/// How one attempt goes.
#[derive(Clone, Copy, Debug)]
struct Attempt {
    takes: Span,
    ok: bool,
}

#[derive(Debug, Clone)]
enum Rec {
    Run {
        slot: DateTime<Utc>,
        trigger: Trigger,
        started: DateTime<Utc>,
        ended: DateTime<Utc>,
        attempts: Vec<(DateTime<Utc>, DateTime<Utc>)>,
        ok: bool,
    },
    Skip {
        slot: DateTime<Utc>,
        reason: SkipReason,
    },
}

struct Running {
    slot: DateTime<Utc>,
    trigger: Trigger,
    started: DateTime<Utc>,
    attempts: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// The current attempt's end, or the next attempt's start while backing off.
    next_event: DateTime<Utc>,
    in_backoff: bool,
    last_ok: bool,
}

struct Sim<F: FnMut(usize) -> Attempt> {
    timing: Timing,
    job: &'static str,
    state: JobState,
    now: DateTime<Utc>,
    running: Option<Running>,
    records: Vec<Rec>,
    attempt_no: usize,
    outcome: F,
    /// The random unit the daemon would draw for each retry (fixed for repeatability).
    unit: f64,
}

impl<F: FnMut(usize) -> Attempt> Sim<F> {
    fn new(timing: Timing, start: DateTime<Utc>, outcome: F) -> Self {
        Self {
            timing,
            job: "erp-backup",
            state: JobState::new(start),
            now: start,
            running: None,
            records: Vec::new(),
            attempt_no: 0,
            outcome,
            unit: 0.5,
        }
    }

    fn begin_attempt(&mut self) {
        let a = (self.outcome)(self.attempt_no);
        self.attempt_no += 1;
        let r = self.running.as_mut().unwrap();
        r.attempts.push((self.now, self.now + a.takes));
        r.next_event = self.now + a.takes;
        r.in_backoff = false;
        r.last_ok = a.ok;
    }

    /// Handles the running run's event at `now` (an attempt ended or a backoff ended).
    fn step_running(&mut self) {
        let Some(r) = self.running.as_mut() else {
            return;
        };
        if r.next_event > self.now {
            return;
        }
        if r.in_backoff {
            self.begin_attempt();
            return;
        }
        let failed_attempt = u32::try_from(r.attempts.len()).unwrap();
        let next_slot = self.timing.schedule.next_after(r.slot);
        let retry = if r.last_ok {
            None
        } else {
            self.timing
                .retry_at(failed_attempt, self.now, next_slot, self.unit)
        };
        match retry {
            Some(at) => {
                r.next_event = at;
                r.in_backoff = true;
            }
            None => {
                let r = self.running.take().unwrap();
                self.records.push(Rec::Run {
                    slot: r.slot,
                    trigger: r.trigger,
                    started: r.started,
                    ended: self.now,
                    attempts: r.attempts,
                    ok: r.last_ok,
                });
                self.state = self.state.clone().with_running(None);
            }
        }
    }

    fn plan_now(&mut self) -> Option<DateTime<Utc>> {
        let p = plan(&self.timing, self.job, &self.state, self.now);
        for a in &p.actions {
            match a {
                Action::Start { slot, trigger } => {
                    assert!(
                        self.running.is_none(),
                        "planner started a run while one runs"
                    );
                    self.running = Some(Running {
                        slot: *slot,
                        trigger: *trigger,
                        started: self.now,
                        attempts: Vec::new(),
                        next_event: self.now,
                        in_backoff: false,
                        last_ok: false,
                    });
                    self.state = self.state.clone().with_running(Some(self.now));
                    self.begin_attempt();
                }
                Action::Skip { slot, reason } => self.records.push(Rec::Skip {
                    slot: *slot,
                    reason: reason.clone(),
                }),
                other => panic!("unknown action {other:?}"),
            }
        }
        self.state.apply(&p);
        p.wake
    }

    /// Runs the daemon until `end`, and lets a run going on then finish.
    fn run_until(&mut self, end: DateTime<Utc>) {
        let mut steps = 0;
        while self.now <= end || self.running.is_some() {
            steps += 1;
            assert!(steps < 1_000_000, "simulation does not advance");
            self.step_running();
            let wake = if self.now <= end {
                self.plan_now()
            } else {
                None
            };
            let next = [wake, self.running.as_ref().map(|r| r.next_event)]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(n) if n > self.now => self.now = n,
                Some(_) => {}
                None => break,
            }
        }
    }

    /// The daemon is down from now until `until`: nothing runs, nothing is asked.
    fn down_until(&mut self, until: DateTime<Utc>) {
        assert!(self.running.is_none());
        self.now = until;
    }

    fn runs(&self) -> Vec<&Rec> {
        self.records
            .iter()
            .filter(|r| matches!(r, Rec::Run { .. }))
            .collect()
    }
}

fn every(h: u64) -> Schedule {
    Schedule::every(Duration::from_secs(h * 3600)).unwrap()
}

const OK_1H: Attempt = Attempt {
    takes: Span::hours(1),
    ok: true,
};

#[test]
fn a_week_of_every_6_hours_is_28_runs() {
    for schedule in [every(6), Schedule::cron("0 */6 * * *", "UTC").unwrap()] {
        let start = t("2026-03-02T00:00:00Z");
        let mut sim = Sim::new(Timing::new(schedule), start, |_| OK_1H);
        sim.run_until(start + Span::days(7));
        let runs = sim.runs();
        assert_eq!(runs.len(), 28, "{:#?}", sim.records);
        assert!(sim.records.iter().all(|r| matches!(r, Rec::Run { .. })));
        for (i, r) in runs.iter().enumerate() {
            let Rec::Run {
                slot,
                trigger,
                started,
                ..
            } = r
            else {
                unreachable!()
            };
            assert_eq!(*slot, start + hours(6 * (i as i64 + 1)));
            assert_eq!(started, slot, "no jitter: starts on the slot");
            assert_eq!(*trigger, Trigger::Schedule);
        }
    }
}

#[test]
fn a_run_that_takes_7_hours_never_overlaps_and_every_skipped_slot_is_recorded() {
    let start = t("2026-03-02T00:00:00Z");
    // Every third run takes 7 h, the others 1 h.
    let mut sim = Sim::new(Timing::new(every(6)), start, |n| Attempt {
        takes: if n % 3 == 0 { hours(7) } else { hours(1) },
        ok: true,
    });
    sim.run_until(start + Span::days(7));
    let mut intervals: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
    let mut slots = Vec::new();
    let mut overlaps = 0;
    for r in &sim.records {
        match r {
            Rec::Run {
                slot,
                started,
                ended,
                ..
            } => {
                intervals.push((*started, *ended));
                slots.push(*slot);
            }
            Rec::Skip { slot, reason } => {
                assert!(matches!(reason, SkipReason::Overlap { .. }), "{reason:?}");
                overlaps += 1;
                slots.push(*slot);
            }
        }
    }
    intervals.sort();
    for w in intervals.windows(2) {
        assert!(w[0].1 <= w[1].0, "runs overlap: {w:?}");
    }
    slots.sort();
    let expected: Vec<_> = (1..=28).map(|i| start + hours(6 * i)).collect();
    assert_eq!(
        slots, expected,
        "every slot is either run or recorded skipped, once"
    );
    assert!(overlaps >= 5, "the 7-hour runs made skips: {overlaps}");
    // A skipped slot is recorded at its own time, not queued to run later: the run
    // after a skip starts on its own slot.
    for r in sim.runs() {
        let Rec::Run { slot, started, .. } = r else {
            unreachable!()
        };
        assert_eq!(slot, started);
    }
}

#[test]
fn temporary_failures_retry_with_backoff_within_bounds_and_never_past_the_next_slot() {
    let start = t("2026-03-02T00:00:00Z");
    let timing = Timing::new(every(6))
        .with_retries(2)
        .with_backoff(Duration::from_secs(60), Duration::from_secs(3600));
    // Always fails after 5 minutes.
    for unit in [0.0, 0.5, 0.999] {
        let mut sim = Sim::new(timing.clone(), start, |_| Attempt {
            takes: Span::minutes(5),
            ok: false,
        });
        sim.unit = unit;
        sim.run_until(start + Span::days(1));
        let runs = sim.runs();
        assert_eq!(runs.len(), 4);
        for r in runs {
            let Rec::Run {
                slot, attempts, ok, ..
            } = r
            else {
                unreachable!()
            };
            assert!(!ok);
            assert_eq!(attempts.len(), 3, "1 attempt + 2 retries");
            for (n, w) in attempts.windows(2).enumerate() {
                let wait = (w[1].0 - w[0].1).to_std().unwrap();
                let (lo, hi) = timing.backoff_window(u32::try_from(n + 1).unwrap());
                assert!(
                    wait >= lo && wait <= hi,
                    "retry {}: waited {wait:?}, window {lo:?}..{hi:?}",
                    n + 1
                );
            }
            assert_eq!(
                timing.backoff_window(2),
                (Duration::from_secs(60), Duration::from_secs(120)),
                "the backoff doubles"
            );
            assert!(attempts.last().unwrap().1 < *slot + hours(6));
        }
    }

    // A retry that would start at or after the next slot is not made: the slot runs.
    let tight = Timing::new(Schedule::every(Duration::from_secs(600)).unwrap())
        .with_retries(5)
        .with_backoff(Duration::from_secs(240), Duration::from_secs(3600));
    let mut sim = Sim::new(tight.clone(), start, |_| Attempt {
        takes: Span::minutes(1),
        ok: false,
    });
    sim.unit = 0.999;
    sim.run_until(start + Span::hours(2));
    let runs = sim.runs();
    assert_eq!(runs.len(), 12, "{:#?}", sim.records);
    for r in runs {
        let Rec::Run { slot, attempts, .. } = r else {
            unreachable!()
        };
        let next_slot = *slot + Span::minutes(10);
        assert!(attempts.len() < 6, "retries stop before the next slot");
        for a in attempts {
            assert!(
                a.0 < next_slot,
                "an attempt started past the next slot: {a:?}"
            );
        }
    }
    // Permanent errors are not retried: the runner asks only for temporary ones; with
    // retries = 0 the planner never offers one.
    assert_eq!(Timing::new(every(6)).retry_at(1, start, None, 0.5), None);
}

#[test]
fn a_daemon_down_for_10_hours_catches_up_exactly_once() {
    let start = t("2026-03-02T00:00:00Z");
    let mut sim = Sim::new(Timing::new(every(6)), start, |_| OK_1H);
    sim.run_until(t("2026-03-02T05:00:00Z"));
    sim.down_until(t("2026-03-02T15:00:00Z"));
    sim.run_until(t("2026-03-03T00:00:00Z"));
    let catch_ups: Vec<_> = sim
        .records
        .iter()
        .filter(|r| {
            matches!(
                r,
                Rec::Run {
                    trigger: Trigger::CatchUp,
                    ..
                }
            )
        })
        .collect();
    assert_eq!(catch_ups.len(), 1, "{:#?}", sim.records);
    let Rec::Run { slot, started, .. } = catch_ups[0] else {
        unreachable!()
    };
    assert_eq!(
        *slot,
        t("2026-03-02T12:00:00Z"),
        "the newest missed slot runs"
    );
    assert_eq!(
        *started,
        t("2026-03-02T15:00:00Z"),
        "at once when the daemon is back"
    );
    let missed: Vec<_> = sim
        .records
        .iter()
        .filter_map(|r| match r {
            Rec::Skip {
                slot,
                reason: SkipReason::Missed,
            } => Some(*slot),
            _ => None,
        })
        .collect();
    assert_eq!(missed, vec![t("2026-03-02T06:00:00Z")]);
    let scheduled: Vec<_> = sim
        .records
        .iter()
        .filter_map(|r| match r {
            Rec::Run {
                slot,
                trigger: Trigger::Schedule,
                ..
            } => Some(*slot),
            _ => None,
        })
        .collect();
    assert_eq!(
        scheduled,
        vec![t("2026-03-02T18:00:00Z"), t("2026-03-03T00:00:00Z")],
        "then back on schedule"
    );

    // With catch-up off the missed slots are only recorded.
    let mut sim = Sim::new(Timing::new(every(6)).with_catch_up(false), start, |_| OK_1H);
    sim.run_until(t("2026-03-02T05:00:00Z"));
    sim.down_until(t("2026-03-02T15:00:00Z"));
    sim.run_until(t("2026-03-02T17:00:00Z"));
    assert_eq!(sim.runs().len(), 0);
    assert_eq!(sim.records.len(), 2);

    // A frequent job down for a long time: the newest 100 missed slots are listed (and
    // the catch-up), the older ones only counted, so the daemon writes 100 rows.
    let s = Schedule::every(Duration::from_secs(1)).unwrap();
    let p = plan(
        &Timing::new(s.clone()),
        "j",
        &JobState::new(start),
        start + Span::days(2),
    );
    assert_eq!(p.actions.len(), 101);
    assert_eq!(
        p.actions
            .iter()
            .filter(|a| matches!(
                a,
                Action::Skip {
                    reason: SkipReason::Missed,
                    ..
                }
            ))
            .count(),
        100
    );
    assert_eq!(p.more_missed, 2 * 86_400 - 101);
    assert!(!p.more_missed_estimated);
    assert_eq!(p.handled, Some(start + Span::days(2)));
    // A year of it is counted, not walked.
    let clock = std::time::Instant::now();
    let p = plan(
        &Timing::new(s),
        "j",
        &JobState::new(start),
        start + Span::days(365),
    );
    assert!(
        clock.elapsed() < Duration::from_millis(50),
        "{:?}",
        clock.elapsed()
    );
    assert_eq!(p.actions.len(), 101);
    assert_eq!(p.more_missed, 365 * 86_400 - 101);
    assert_eq!(p.handled, Some(start + Span::days(365)));
    assert_eq!(p.wake, Some(start + Span::days(365) + Span::seconds(1)));
}

fn daily_starts(schedule: Schedule, from: DateTime<Utc>, days: i64) -> Vec<DateTime<Utc>> {
    starts_between(schedule, from, from + Span::days(days))
}

fn starts_between(
    schedule: Schedule,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let mut sim = Sim::new(Timing::new(schedule), from, |_| Attempt {
        takes: Span::minutes(10),
        ok: true,
    });
    sim.run_until(to);
    sim.runs()
        .into_iter()
        .map(|r| match r {
            Rec::Run { started, .. } => *started,
            Rec::Skip { .. } => unreachable!(),
        })
        .collect()
}

#[test]
fn daylight_saving_changes_in_a_time_zone() {
    // Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST; 2026-10-25 03:00 CEST -> 02:00 CET.
    let at_0230 = || Schedule::cron("30 2 * * *", "Europe/Berlin").unwrap();
    let spring = daily_starts(at_0230(), t("2026-03-27T12:00:00Z"), 4);
    assert_eq!(
        spring,
        vec![
            t("2026-03-28T01:30:00Z"), // 02:30 CET
            t("2026-03-29T01:00:00Z"), // 02:30 does not exist: the first instant after the jump (03:00 CEST)
            t("2026-03-30T00:30:00Z"), // 02:30 CEST
            t("2026-03-31T00:30:00Z"),
        ]
    );
    let autumn = daily_starts(at_0230(), t("2026-10-23T12:00:00Z"), 4);
    assert_eq!(
        autumn,
        vec![
            t("2026-10-24T00:30:00Z"), // 02:30 CEST
            t("2026-10-25T00:30:00Z"), // 02:30 happens twice: only the first
            t("2026-10-26T01:30:00Z"), // 02:30 CET
            t("2026-10-27T01:30:00Z"),
        ]
    );
    // An hourly job follows the wall clock: 23 runs on the short day, 25 on the long
    // (local midnight to local midnight).
    let hourly = || Schedule::cron("0 * * * *", "Europe/Berlin").unwrap();
    let short_day = starts_between(
        hourly(),
        t("2026-03-28T22:59:00Z"),
        t("2026-03-29T21:59:00Z"),
    );
    assert_eq!(short_day.len(), 23, "{short_day:?}");
    let long_day = starts_between(
        hourly(),
        t("2026-10-24T21:59:00Z"),
        t("2026-10-25T22:59:00Z"),
    );
    assert_eq!(long_day.len(), 25, "{long_day:?}");
    for w in long_day.windows(2) {
        assert_eq!(w[1] - w[0], hours(1), "one run per real hour");
    }
    // "Every 6 hours" in New York keeps local 00/06/12/18 across the change
    // (2026-03-08 02:00 EST -> 03:00 EDT): the gap between two runs is 5 h once.
    let ny = daily_starts(
        Schedule::cron("0 */6 * * *", "America/New_York").unwrap(),
        t("2026-03-07T12:00:00Z"),
        2,
    );
    let gaps: Vec<i64> = ny.windows(2).map(|w| (w[1] - w[0]).num_hours()).collect();
    assert_eq!(gaps.iter().filter(|g| **g == 5).count(), 1, "{ny:?}");
    assert!(gaps.iter().all(|g| *g == 5 || *g == 6));
    // `every` ignores zones and changes: always 6 h apart.
    let abs = daily_starts(every(6), t("2026-03-28T00:00:00Z"), 2);
    assert!(abs.windows(2).all(|w| w[1] - w[0] == hours(6)));
}

#[test]
fn jitter_spreads_starts_and_is_stable() {
    let timing = Timing::new(every(6)).with_jitter(Duration::from_secs(600));
    let start = t("2026-03-02T00:00:00Z");
    let mut sim = Sim::new(timing.clone(), start, |_| OK_1H);
    sim.run_until(start + Span::days(2) + Span::minutes(10));
    let runs = sim.runs();
    assert_eq!(runs.len(), 8);
    let mut distinct = std::collections::BTreeSet::new();
    for r in runs {
        let Rec::Run { slot, started, .. } = r else {
            unreachable!()
        };
        let delay = (*started - *slot).to_std().unwrap();
        assert!(delay < Duration::from_secs(600));
        assert_eq!(
            *started,
            timing.start_of("erp-backup", *slot),
            "the same every time"
        );
        distinct.insert(delay);
    }
    assert!(distinct.len() > 1, "jitter varies between slots");
    assert_ne!(
        timing.jitter_for("erp-backup", start),
        timing.jitter_for("crm-backup", start),
        "and between jobs"
    );
    // The next runs a user is shown include the jitter.
    let next = timing.upcoming("erp-backup", start, 5);
    assert_eq!(next.len(), 5);
    // The slot at `start` itself has not started yet: its jitter puts it later.
    assert_eq!(next[0], timing.start_of("erp-backup", start));
    assert_eq!(next[1], timing.start_of("erp-backup", start + hours(6)));
}

#[test]
fn a_wall_clock_job_runs_through_a_repeated_hour_in_real_time_order() {
    // Europe/Berlin 2026-10-25 (local midnight to local midnight, 25 hours): 02:00 to
    // 02:45 run twice, first in summer time, then in winter time.
    let runs = starts_between(
        Schedule::cron("*/15 * * * *", "Europe/Berlin").unwrap(),
        t("2026-10-24T21:59:00Z"),
        t("2026-10-25T22:59:00Z"),
    );
    assert_eq!(runs.len(), 100, "{runs:?}");
    assert!(runs.windows(2).all(|w| w[1] - w[0] == Span::minutes(15)));
    // Antarctica/Troll turns its clock back by two hours: 26 runs in its long day.
    let runs = starts_between(
        Schedule::cron("30 * * * *", "Antarctica/Troll").unwrap(),
        t("2026-10-24T21:59:00Z"),
        t("2026-10-25T23:59:00Z"),
    );
    assert_eq!(runs.len(), 26, "{runs:?}");
    assert!(runs.windows(2).all(|w| w[1] - w[0] == hours(1)));
}

#[test]
fn a_jitter_longer_than_the_period_still_runs_every_slot_once_in_order() {
    // `check` (config validation) rejects this timing; the planner copes with it
    // anyway: each slot's jitter is cut short at the next slot.
    let timing = Timing::new(Schedule::every(Duration::from_secs(60)).unwrap())
        .with_jitter(Duration::from_secs(300));
    assert!(timing.check().is_err());
    let start = t("2026-03-02T00:00:00Z");
    let mut sim = Sim::new(timing.clone(), start, |_| Attempt {
        takes: Span::zero(),
        ok: true,
    });
    // A minute more, for the last slot's jitter.
    let end = start + Span::days(1);
    sim.run_until(end + Span::minutes(1));
    assert!(
        sim.records.iter().all(|r| matches!(
            r,
            Rec::Run {
                trigger: Trigger::Schedule,
                ..
            }
        )),
        "no skips, no catch-ups"
    );
    let runs: Vec<_> = sim
        .runs()
        .into_iter()
        .filter(|r| matches!(r, Rec::Run { slot, .. } if *slot <= end))
        .collect();
    assert_eq!(runs.len(), 1440);
    let mut last = start;
    for (i, r) in runs.iter().enumerate() {
        let Rec::Run { slot, started, .. } = r else {
            unreachable!()
        };
        assert_eq!(*slot, start + Span::minutes(i as i64 + 1));
        assert!(*started >= *slot && *started < *slot + Span::minutes(1));
        assert!(*started > last, "starts in slot order");
        last = *started;
    }
    let next = timing.upcoming("erp-backup", start, 10);
    assert_eq!(next.len(), 10);
    assert!(next.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn a_clock_set_back_does_not_stall_the_job() {
    // The newest handled slot is 30 days ahead of the clock (the clock was corrected
    // back, or a snapshot restored): the job goes on from now.
    let start = t("2026-03-02T00:00:00Z");
    let mut sim = Sim::new(Timing::new(every(6)), start, |_| OK_1H);
    sim.state = JobState::new(start + Span::days(30));
    let p = plan(&sim.timing, sim.job, &sim.state, start);
    assert!(p.clock_went_back);
    sim.run_until(start + Span::days(1));
    let slots: Vec<_> = sim
        .runs()
        .into_iter()
        .map(|r| match r {
            Rec::Run { slot, trigger, .. } => {
                assert_eq!(*trigger, Trigger::Schedule);
                *slot
            }
            Rec::Skip { .. } => unreachable!(),
        })
        .collect();
    assert_eq!(
        slots,
        (1..=4).map(|i| start + hours(6 * i)).collect::<Vec<_>>()
    );
}
