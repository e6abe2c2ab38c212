//! Notifier conformance: a notifier has a name, shows no secret in `Debug` or its
//! destination, wants exactly the events of its `on` list, and delivers each event it
//! is given exactly once, with a body that names the job and holds no secret.
//!
//! The suite cannot see where a notifier delivers; the caller passes `received`, which
//! returns the raw bodies its receiver (a test HTTP server, an SMTP server's mailbox, a
//! file a command wrote) got since it was last called.

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};

use crate::jobs::{Event, EventKind, JobKind, Notifier, RunRecord, RunStatus, Trigger};

/// A realistic event of `kind` about job `job`: a start; a success with a backup id,
/// sizes and a duration; or a failure after two attempts with an error.
pub fn sample_event(kind: EventKind, job: &str) -> Event {
    let started = Utc
        .with_ymd_and_hms(2025, 3, 1, 2, 0, 0)
        .single()
        .expect("a fixed, valid date");
    let mut run =
        RunRecord::start(job, JobKind::Backup, Trigger::Schedule, started).with_slot(Some(started));
    let ended = started + Duration::seconds(83);
    match kind {
        EventKind::Start => run.attempts = 1,
        EventKind::Failure | EventKind::RepeatedFailure => {
            run.attempts = 2;
            run.finish(
                RunStatus::Failure,
                Some("pg_dump: connection to server failed: timeout".to_owned()),
                ended,
            );
        }
        _ => {
            run.attempts = 1;
            run.backup_id = Some("20250301T020000Z-3f2a".to_owned());
            run.bytes = Some(5 * 1024 * 1024 * 1024);
            run.new_bytes = Some(300 * 1024 * 1024);
            run.stored_bytes = Some(120 * 1024 * 1024);
            run.finish(RunStatus::Success, None, ended);
        }
    }
    Event::new(kind, run)
}

/// Checks the contract of `notifier`, whose config asked for the events `on` and holds
/// the strings `secrets` (URL tokens, passwords, header values). Delivers one event of
/// each kind in `on` and expects `received` to return exactly one body for each.
///
/// # Panics
/// When the notifier breaks the contract or a delivery fails, saying how.
pub async fn conformance(
    notifier: Arc<dyn Notifier>,
    on: &[EventKind],
    secrets: &[&str],
    mut received: impl AsyncFnMut() -> Vec<String>,
) {
    let name = notifier.name().to_owned();
    assert!(!name.is_empty(), "a notifier needs a name");
    let destination = notifier.destination();
    assert!(!destination.is_empty(), "{name}: destination is empty");
    let debug = format!("{notifier:?} {notifier:#?}");
    for secret in secrets {
        assert!(!secret.is_empty(), "an empty secret proves nothing");
        assert!(
            !debug.contains(secret),
            "{name}: Debug shows a secret: {debug}"
        );
        assert!(
            !destination.contains(secret),
            "{name}: destination shows a secret: {destination}"
        );
    }
    for kind in EventKind::ALL {
        assert_eq!(
            notifier.wants(kind),
            on.contains(&kind),
            "{name}: wants({kind}) does not follow its on-list {on:?}"
        );
    }
    // Whatever the receiver got before is not ours to judge.
    received().await;
    for &kind in on {
        let job = format!("conformance-{}", kind.as_str().replace('_', "-"));
        let event = sample_event(kind, &job);
        if let Err(e) = notifier.notify(&event).await {
            panic!("{name}: delivering {kind} failed: {e}");
        }
        let bodies = received().await;
        assert_eq!(
            bodies.len(),
            1,
            "{name}: one {kind} event should arrive exactly once, got {}: {bodies:?}",
            bodies.len()
        );
        let body = &bodies[0];
        assert!(
            body.contains(&job),
            "{name}: the {kind} body does not name the job {job}: {body}"
        );
        for secret in secrets {
            assert!(
                !body.contains(secret),
                "{name}: the {kind} body holds a secret: {body}"
            );
        }
    }
}
