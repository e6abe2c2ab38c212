//! Maintenance conformance, for any engine's [`Maintenance`]: integrity queries count
//! their rows, keep a bounded sample, run read-only and report SQL errors as errors;
//! the session list marks the asking session; every report comes back and serialises.
//!
//! It needs an empty database of its own (it creates nothing: a write it tries must
//! be refused).

use std::time::Duration;

use crate::health::HealthStatus;
use crate::maintain::{Inspect, InspectOptions, IntegrityCheck, Maintenance, SessionFilter};
use crate::maintain::{SessionKind, Severity};

/// Runs the conformance checks against `db`.
///
/// # Panics
/// When `db` breaks the contract.
pub async fn conformance(db: &dyn Maintenance) {
    let t = Duration::from_secs(10);
    let none = db
        .query_rows("SELECT 1 AS one FROM (SELECT 1 AS x) s WHERE x = 0", t, 10)
        .await
        .expect("a query without rows runs");
    assert_eq!(none.count, 0);
    assert!(none.sample.is_empty());

    let sql = "SELECT n, NULL AS nothing FROM (SELECT 1 AS n UNION ALL SELECT 2 UNION ALL \
               SELECT 3 UNION ALL SELECT 4) s ORDER BY n";
    let some = db.query_rows(sql, t, 2).await.expect("rows");
    assert_eq!(some.count, 4, "every row is counted");
    assert_eq!(some.sample.len(), 2, "the sample is bounded");
    assert_eq!(some.columns, vec!["n".to_owned(), "nothing".to_owned()]);
    assert_eq!(some.sample[0], vec![Some("1".to_owned()), None]);

    let bad = db.query_rows("SELEC 1", t, 10).await;
    assert!(bad.is_err(), "a syntax error is an error, not zero rows");

    let write = db
        .query_rows("CREATE TABLE dbops_conformance_write (a int)", t, 10)
        .await;
    assert!(write.is_err(), "checks run read-only: a write must fail");
    // Only one query: a second statement (which could write or call a procedure
    // outside the read-only guard) is refused, not run.
    let two = db
        .query_rows(
            "SELECT 1; CREATE TABLE dbops_conformance_write (a int)",
            t,
            10,
        )
        .await;
    assert!(two.is_err(), "a second statement is refused");
    let call = db.query_rows("CALL dbops_no_such_procedure()", t, 10).await;
    assert!(call.is_err(), "only queries run: CALL is refused");
    let end_all = db
        .end_sessions(
            &SessionFilter::default(),
            &crate::maintain::EndOptions::new(crate::maintain::EndMode::Cancel).with_dry_run(true),
        )
        .await;
    assert_eq!(
        end_all.map(|_| ()).map_err(|e| e.kind()),
        Err(crate::ErrorKind::InvalidInput),
        "ending sessions without a condition is refused, even as a dry run"
    );

    let check = IntegrityCheck::new("four", sql).with_severity(Severity::Warn);
    assert_eq!(check.run(db).await.status, HealthStatus::Degraded);
    let broken = IntegrityCheck::new("broken", "SELEC 1").run(db).await;
    assert_eq!(broken.status, HealthStatus::Unknown);
    assert!(broken.error.is_some());

    let sessions = db
        .sessions(&SessionFilter::default())
        .await
        .expect("sessions");
    assert_eq!(
        sessions
            .iter()
            .filter(|s| s.kind == SessionKind::Own)
            .count(),
        1,
        "exactly the asking session is marked as its own: {sessions:?}"
    );
    for what in Inspect::ALL {
        match db.inspect(what, &InspectOptions::default()).await {
            Ok(report) => {
                serde_json::to_string(&report).expect("reports serialise");
            }
            Err(e) => assert_eq!(
                e.kind(),
                crate::ErrorKind::InvalidInput,
                "{what}: only a report the engine does not have may fail here: {e}"
            ),
        }
    }
}
