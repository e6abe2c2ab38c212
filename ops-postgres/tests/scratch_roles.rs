//! A restore proof on a throwaway server (`RestoreOptions::scratch`): the roles that
//! own the backup's objects or are granted privileges on them are created there, so a
//! database owned by an application role restores with its ownership and grants.
//! Without `scratch`, a server lacking the roles refuses the restore, naming them.

mod common;

use ops_core::repo::BackupOptions;
use ops_core::{DatabaseEngine, RestoreOptions};
use ops_postgres::ephemeral::EphemeralPostgres;

use common::*;

const ERP: &str = "
CREATE SCHEMA erp AUTHORIZATION erpgo;
SET ROLE erpgo;
CREATE TABLE erp.customer (id bigserial PRIMARY KEY, name text NOT NULL);
CREATE SEQUENCE erp.invoice_no;
CREATE TABLE erp.invoice (
    id bigint PRIMARY KEY DEFAULT nextval('erp.invoice_no'),
    customer bigint NOT NULL REFERENCES erp.customer,
    total numeric(12, 2) NOT NULL
);
CREATE VIEW erp.customer_totals AS
    SELECT c.name, sum(i.total) AS total
      FROM erp.customer c JOIN erp.invoice i ON i.customer = c.id GROUP BY c.name;
CREATE FUNCTION erp.total_of(bigint) RETURNS numeric LANGUAGE sql STABLE
    AS $$ SELECT sum(total) FROM erp.invoice WHERE customer = $1 $$;
INSERT INTO erp.customer (name) SELECT 'customer ' || g FROM generate_series(1, 50) g;
INSERT INTO erp.invoice (customer, total)
    SELECT 1 + g % 50, (g * 7 % 1000) / 10.0 FROM generate_series(1, 500) g;
GRANT USAGE ON SCHEMA erp TO report_reader;
GRANT SELECT ON erp.customer, erp.invoice, erp.customer_totals TO report_reader;
GRANT USAGE ON SEQUENCE erp.invoice_no TO report_reader;
REVOKE EXECUTE ON FUNCTION erp.total_of(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION erp.total_of(bigint) TO report_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA erp GRANT SELECT ON TABLES TO report_reader;
RESET ROLE;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_restore_creates_the_roles_the_backup_needs() {
    let (source, target) = tokio::join!(EphemeralPostgres::start(), EphemeralPostgres::start());
    let (source, target) = (
        source.expect("source server"),
        target.expect("target server"),
    );
    source
        .execute(
            "postgres",
            "CREATE ROLE erpgo NOLOGIN; CREATE ROLE report_reader NOLOGIN",
        )
        .await
        .expect("roles");
    source.create_database("erp").await.expect("create erp");
    source.execute("erp", ERP).await.expect("fill erp");
    let source_schema = schema_of(&source, "erp");
    for expected in [
        "ALTER TABLE erp.customer OWNER TO erpgo;",
        "ALTER FUNCTION erp.total_of(bigint) OWNER TO erpgo;",
        "GRANT SELECT ON TABLE erp.customer_totals TO report_reader;",
        "ALTER DEFAULT PRIVILEGES FOR ROLE erpgo IN SCHEMA erp GRANT SELECT ON TABLES",
    ] {
        assert!(
            source_schema.contains(expected),
            "{expected}\n{source_schema}"
        );
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let repo = repository(dir.path()).await;
    let manifest = repo
        .backup(
            &source.engine_for("erp").expect("engine"),
            &BackupOptions::default(),
        )
        .await
        .expect("backup");

    // Without scratch: the target lacks the roles, and the restore says which.
    let plain = target.engine_for("erp_plain").expect("engine");
    let err = repo
        .restore(
            &manifest,
            &plain,
            &RestoreOptions::default().with_create(true),
        )
        .await
        .expect_err("the target has no role erpgo");
    assert!(
        err.message().contains("role \"erpgo\" does not exist"),
        "{err}"
    );
    assert_eq!(err.context_value("role"), Some("erpgo"), "{err:?}");
    assert!(!err.message().contains("--no-owner"), "no CLI flags: {err}");
    // Leaving out ownership is not enough: the grants still name report_reader.
    let err = repo
        .restore(
            &manifest,
            &plain,
            &RestoreOptions::default()
                .with_create(true)
                .with_no_owner(true),
        )
        .await
        .expect_err("the target has no role report_reader");
    assert_eq!(err.context_value("role"), Some("report_reader"), "{err:?}");
    assert_eq!(
        rows_text(
            &target,
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname IN ('erpgo', 'report_reader')"
        )
        .await,
        ["0"],
        "a restore without scratch creates no role"
    );

    // With scratch: the roles are made, ownership and grants are as in the source.
    let engine = target.engine_for("erp").expect("engine");
    let report = repo
        .restore(
            &manifest,
            &engine,
            &RestoreOptions::default()
                .with_create(true)
                .with_scratch(true)
                .with_jobs(2),
        )
        .await
        .expect("scratch restore");
    assert_eq!(report.prepared.len(), 2, "{:?}", report.prepared);
    assert!(
        report
            .prepared
            .iter()
            .any(|p| p.starts_with("role erpgo (owns objects")),
        "{:?}",
        report.prepared
    );
    assert!(
        report
            .prepared
            .iter()
            .any(|p| p == "role report_reader (granted privileges)"),
        "{:?}",
        report.prepared
    );
    assert_eq!(schema_of(&target, "erp"), source_schema);
    assert_eq!(
        table_checksums(&target, "erp").await,
        table_checksums(&source, "erp").await
    );
    assert_eq!(
        rows_text(
            &target,
            "postgres",
            "SELECT rolname, rolcanlogin, rolpassword IS NULL FROM pg_authid
              WHERE rolname IN ('erpgo', 'report_reader') ORDER BY 1"
        )
        .await,
        ["erpgo|f|t", "report_reader|f|t"],
        "created unable to log in, without passwords"
    );
    assert_eq!(engine.database(), "erp");

    // The roles exist now: another scratch restore prepares nothing.
    let again = repo
        .restore(
            &manifest,
            &target.engine_for("erp_again").expect("engine"),
            &RestoreOptions::default()
                .with_create(true)
                .with_scratch(true),
        )
        .await
        .expect("second scratch restore");
    assert!(again.prepared.is_empty(), "{:?}", again.prepared);
}
