//! Health check conformance: a check has a stable, non-empty name; a report carries
//! that name, a finite value, a unit and a reason an operator can act on; and "could not
//! check" is an error, never a status.

use crate::health::HealthCheck;

/// Runs `check` twice and checks the contract of each report.
///
/// # Panics
/// When the check breaks the contract or cannot be carried out.
pub async fn conformance(check: &dyn HealthCheck) {
    let name = check.name().to_owned();
    assert!(!name.is_empty(), "a health check needs a name");
    assert!(
        name.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "check names are snake_case for metrics: {name}"
    );
    for _ in 0..2 {
        let report = check
            .check()
            .await
            .unwrap_or_else(|e| panic!("health check {name} could not run: {e}"));
        assert_eq!(report.check, name, "report names its check");
        assert!(
            report.value.is_finite(),
            "{name}: value {} is not finite",
            report.value
        );
        assert!(!report.unit.is_empty(), "{name}: no unit");
        assert!(!report.reason.is_empty(), "{name}: no reason");
        assert_eq!(check.name(), name, "{name}: the name changed");
    }
}

/// Checks that a check which cannot reach what it checks returns an error rather than
/// a status.
///
/// # Panics
/// When it reports a status instead.
pub async fn unreachable_is_an_error(check: &dyn HealthCheck) {
    if let Ok(r) = check.check().await {
        panic!(
            "{}: could not check, but reported {:?}: {}",
            check.name(),
            r.status,
            r.reason
        );
    }
}
