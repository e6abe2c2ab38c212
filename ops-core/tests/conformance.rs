//! The core's own implementations against the conformance suites, and the traits kept
//! object-safe and `Send + Sync + Debug + 'static`.

use std::sync::Arc;

use ops_core::repo::{Encryption, InitOptions, KdfParams, LastBackupAge, Repository};
use ops_core::retention::{KeepRules, parse_duration};
use ops_core::testkit;
use ops_core::{BackupTarget, DatabaseEngine, HealthCheck, HealthStatus, RetentionPolicy};
use ops_storage::{TargetOptions, open_target};

fn is_shareable<T: Send + Sync + std::fmt::Debug + 'static + ?Sized>() {}

#[test]
fn traits_are_object_safe_and_shareable() {
    is_shareable::<dyn DatabaseEngine>();
    is_shareable::<dyn BackupTarget>();
    is_shareable::<dyn HealthCheck>();
    is_shareable::<dyn RetentionPolicy>();
    let _: Option<Arc<dyn DatabaseEngine>> = None;
    let _: Option<Arc<dyn BackupTarget>> = None;
    let _: Option<Arc<dyn HealthCheck>> = None;
    let _: Option<Arc<dyn RetentionPolicy>> = None;
}

#[test]
fn keep_rules_pass_the_retention_suite() {
    let within = parse_duration("10d").expect("duration");
    for rules in [
        KeepRules::default(),
        KeepRules::default().with_last(3),
        KeepRules::default()
            .with_daily(7)
            .with_weekly(4)
            .with_monthly(12)
            .with_yearly(3),
        KeepRules::default().with_hourly(24).with_within(within),
        KeepRules::default().with_tags(["nightly".to_owned()]),
    ] {
        testkit::retention::conformance(&rules);
    }
}

#[tokio::test]
async fn last_backup_age_passes_the_health_suite() {
    let target = open_target("memory://", &TargetOptions::default()).expect("memory");
    let repo = Repository::init(
        target,
        InitOptions::new(Encryption::None).with_kdf(KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        }),
    )
    .await
    .expect("init");
    let check = LastBackupAge::new(repo);
    testkit::health::conformance(&check).await;
    let report = check.check().await.expect("check");
    assert_eq!(report.status, HealthStatus::Unhealthy);
    assert!(report.reason.contains("no backup"), "{}", report.reason);
}
