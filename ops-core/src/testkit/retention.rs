//! Retention policy conformance: the contract every [`RetentionPolicy`] keeps,
//! whatever its rules. [`conformance`] checks it on generated backup histories.

use chrono::{DateTime, Duration, TimeZone, Utc};

use crate::retention::{BackupSummary, RetentionPolicy};

/// A history of `n` backups, one every `step_hours`, ending at `end`; every
/// `fail_every`-th (when non-zero) is incomplete; tags cycle through `tags`.
pub fn history(
    n: usize,
    step_hours: i64,
    end: DateTime<Utc>,
    fail_every: usize,
    tags: &[&str],
) -> Vec<BackupSummary> {
    (0..n)
        .map(|i| BackupSummary {
            id: format!("b{i:05}"),
            time: end - Duration::hours(step_hours * (n - 1 - i) as i64),
            tags: if tags.is_empty() {
                Default::default()
            } else {
                [tags[i % tags.len()].to_owned()].into_iter().collect()
            },
            complete: fail_every == 0 || i % fail_every != fail_every - 1,
        })
        .collect()
}

/// Checks the contract of `policy` on `backups` at `now`:
/// one decision per backup, in input order, with matching ids and at least one reason;
/// the newest complete backup is kept; no incomplete backup is kept unless every
/// backup is kept; and the result does not depend on input order.
///
/// # Panics
/// When the policy breaks the contract, saying how.
pub fn check(policy: &dyn RetentionPolicy, backups: &[BackupSummary], now: DateTime<Utc>) {
    let decisions = policy.apply(backups, now);
    assert_eq!(decisions.len(), backups.len(), "one decision per backup");
    for (d, b) in decisions.iter().zip(backups) {
        assert_eq!(d.id, b.id, "decisions come in input order");
        assert!(!d.reasons.is_empty(), "decision for {} has no reason", d.id);
    }
    if let Some(newest) = backups
        .iter()
        .filter(|b| b.complete)
        .max_by(|a, b| a.time.cmp(&b.time).then(b.id.cmp(&a.id)))
    {
        let d = decisions
            .iter()
            .find(|d| d.id == newest.id)
            .expect("decision exists");
        assert!(
            d.keep,
            "the newest complete backup {} is forgotten",
            newest.id
        );
    }
    let keeps_all = decisions.iter().all(|d| d.keep);
    if !keeps_all {
        for (d, b) in decisions.iter().zip(backups) {
            assert!(!d.keep || b.complete, "incomplete backup {} is kept", b.id);
        }
    }
    let mut reversed: Vec<BackupSummary> = backups.to_vec();
    reversed.reverse();
    let again = policy.apply(&reversed, now);
    for d in &decisions {
        let e = again
            .iter()
            .find(|e| e.id == d.id)
            .expect("decision exists");
        assert_eq!(
            d.keep, e.keep,
            "decision for {} depends on input order",
            d.id
        );
    }
}

/// Runs [`check`] on a range of histories: empty, one backup, hourly over weeks,
/// daily over years, with failures and tags.
///
/// # Panics
/// As [`check`].
pub fn conformance(policy: &dyn RetentionPolicy) {
    let now = Utc
        .with_ymd_and_hms(2026, 11, 21, 12, 0, 0)
        .single()
        .expect("valid time");
    check(policy, &[], now);
    check(policy, &history(1, 1, now, 0, &[]), now);
    check(policy, &history(24 * 21, 1, now, 7, &["a", "b", "c"]), now);
    check(policy, &history(800, 24, now, 3, &["nightly"]), now);
    check(policy, &history(30, 24, now, 1, &[]), now);
    check(
        policy,
        &history(50, 6, now - Duration::days(400), 0, &[]),
        now,
    );
}
