//! Restore with clean into a database that holds more than the backup: the target
//! ends up holding exactly what the backup held, the report names what was dropped,
//! and a busy object stops the clean with nothing dropped. Checked through the
//! catalog, independently of dbops.

mod common;

use std::time::{Duration, Instant};

use ops_core::testkit::engine::dump_to_memory;
use ops_core::{DatabaseEngine, DumpOptions, ErrorKind, RestoreOptions, TableRef};
use ops_postgres::ephemeral::EphemeralPostgres;

use common::*;

/// Tables a, b and a view over both, 100 and 50 rows; a function, a range type, a
/// function of it, aggregates (which the target holds too: they must not be taken for
/// objects of its own).
const SOURCE: &str = "
    CREATE TABLE a (id serial PRIMARY KEY, v text);
    CREATE TABLE b (id integer PRIMARY KEY, a_id integer REFERENCES a (id));
    CREATE VIEW ab AS SELECT a.id, a.v, b.id AS b_id FROM a JOIN b ON b.a_id = a.id;
    CREATE FUNCTION kept_fn(x integer) RETURNS integer LANGUAGE sql AS $$ SELECT x $$;
    CREATE TYPE span AS RANGE (subtype = float8);
    CREATE FUNCTION span_width(s span) RETURNS float8 LANGUAGE sql
      AS $$ SELECT upper(s) - lower(s) $$;
    CREATE AGGREGATE total(integer) (sfunc = int4pl, stype = integer);
    CREATE AGGREGATE cnt(*) (sfunc = int8inc, stype = int8, initcond = '0');
    INSERT INTO a (v) SELECT 'row ' || g FROM generate_series(1, 100) g;
    INSERT INTO b SELECT g, g FROM generate_series(1, 50) g;";

/// Every user object, one line each, extension members and the schemas extensions
/// live in left out (a clean keeps those).
const OBJECTS: &str = "
    WITH nsp AS (
      SELECT oid, nspname FROM pg_namespace n
       WHERE nspname !~ '^pg_' AND nspname <> 'information_schema'
         AND NOT EXISTS (SELECT 1 FROM pg_extension x WHERE x.extnamespace = n.oid)
    ), member AS (SELECT classid, objid FROM pg_depend WHERE deptype = 'e')
    SELECT 'schema ' || nspname FROM nsp
    UNION ALL
    SELECT 'relation ' || c.relkind::text || ' ' || n.nspname || '.' || c.relname
      FROM pg_class c JOIN nsp n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')
       AND ('pg_class'::regclass::oid, c.oid) NOT IN (SELECT * FROM member)
    UNION ALL
    SELECT 'routine ' || p.oid::regprocedure::text
      FROM pg_proc p JOIN nsp n ON n.oid = p.pronamespace
     WHERE ('pg_proc'::regclass::oid, p.oid) NOT IN (SELECT * FROM member)
    UNION ALL
    SELECT 'type ' || t.typtype::text || ' ' || n.nspname || '.' || t.typname
      FROM pg_type t JOIN nsp n ON n.oid = t.typnamespace
     WHERE t.typtype IN ('d', 'e', 'r')
       AND ('pg_type'::regclass::oid, t.oid) NOT IN (SELECT * FROM member)
    UNION ALL
    SELECT 'large object ' || oid FROM pg_largeobject_metadata
    ORDER BY 1";

async fn objects(server: &EphemeralPostgres, db: &str) -> Vec<String> {
    rows_text(server, db, OBJECTS).await
}

async fn has_citext(server: &EphemeralPostgres) -> bool {
    rows_text(
        server,
        "postgres",
        "SELECT 1 FROM pg_available_extensions WHERE name = 'citext'",
    )
    .await
    .len()
        == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_leaves_exactly_what_the_backup_holds() {
    let server = EphemeralPostgres::start().await.expect("ephemeral server");
    server.create_database("src").await.expect("create src");
    server.execute("src", SOURCE).await.expect("fill src");
    let source = server.engine_for("src").expect("engine");
    let (dump, _) = dump_to_memory(&source, &DumpOptions::default()).await;
    let dump = dump.into_source();

    // The target: a table of the backup's name but another shape, and objects of
    // every kind the backup lacks, some depending on the backup's names.
    server.create_database("tgt").await.expect("create tgt");
    server
        .execute(
            "tgt",
            "CREATE TABLE a (id integer PRIMARY KEY, other text);
             INSERT INTO a VALUES (1, 'x'), (2, 'y');
             CREATE FUNCTION kept_fn(x integer) RETURNS integer LANGUAGE sql AS $$ SELECT x + 1 $$;
             CREATE TYPE span AS RANGE (subtype = float8);
             CREATE FUNCTION span_width(s span) RETURNS float8 LANGUAGE sql
               AS $$ SELECT 0::float8 $$;
             CREATE AGGREGATE total(integer) (sfunc = int4pl, stype = integer);
             CREATE AGGREGATE cnt(*) (sfunc = int8inc, stype = int8, initcond = '0');
             CREATE AGGREGATE extra_agg(integer) (sfunc = int4larger, stype = integer);
             CREATE TABLE c (id integer PRIMARY KEY, a_id integer REFERENCES a (id));
             INSERT INTO c VALUES (1, 1);
             CREATE VIEW extra_view AS SELECT * FROM c;
             CREATE VIEW over_a AS SELECT id FROM a;
             CREATE SEQUENCE extra_seq;
             CREATE TYPE extra_mood AS ENUM ('low', 'high');
             CREATE DOMAIN extra_dom AS integer CHECK (VALUE > 0);
             CREATE FUNCTION extra_fn(n integer) RETURNS integer LANGUAGE sql AS $$ SELECT n + 1 $$;
             CREATE FUNCTION mood_text(m extra_mood) RETURNS text LANGUAGE sql AS $$ SELECT m::text $$;
             CREATE PROCEDURE extra_proc() LANGUAGE sql AS $$ SELECT 1 $$;
             CREATE SCHEMA junk;
             CREATE TABLE junk.t (x extra_dom);
             CREATE MATERIALIZED VIEW junk.mv AS SELECT count(*) AS n FROM c;
             SELECT lo_create(777);",
        )
        .await
        .expect("fill tgt");
    // An extension in a schema of its own: its objects are not dropped, nor its schema.
    let citext = has_citext(&server).await;
    if citext {
        server
            .execute(
                "tgt",
                "CREATE SCHEMA ext_home; CREATE EXTENSION citext SCHEMA ext_home;
                 CREATE TABLE ext_home.mine (x ext_home.citext);",
            )
            .await
            .expect("extension");
    } else {
        loud("citext is not installed (postgresql-contrib): extension objects are not checked");
    }
    let target = server.engine_for("tgt").expect("engine");

    // Without clean: refused, naming what the target holds.
    let err = target
        .restore(dump.clone(), &RestoreOptions::default())
        .await
        .expect_err("a non-empty target");
    assert_eq!(err.kind(), ErrorKind::TargetNotEmpty, "{err:?}");
    for name in ["table public.a", "table public.c", "view public.over_a"] {
        assert!(err.message().contains(name), "{name} not named: {err}");
    }
    assert!(!err.message().contains("--"), "{err}");
    assert_eq!(
        rows_text(&server, "tgt", "SELECT count(*) FROM c").await,
        ["1"]
    );

    let report = target
        .restore(
            dump.clone(),
            &RestoreOptions::default().with_clean(true).with_jobs(2),
        )
        .await
        .expect("clean restore");

    let src_objects = objects(&server, "src").await;
    assert!(
        src_objects.contains(&"relation v public.ab".to_owned()),
        "{src_objects:?}"
    );
    assert_eq!(
        objects(&server, "tgt").await,
        src_objects,
        "the target holds other objects than the backup"
    );
    assert_same_schema_small(&server, "src", "tgt");
    let sums = table_checksums(&server, "src").await;
    assert_eq!(sums.len(), 2, "{sums:?}");
    assert!(sums[0].starts_with("public.a|100|"), "{sums:?}");
    assert_eq!(table_checksums(&server, "tgt").await, sums);
    assert_eq!(
        rows_text(&server, "tgt", "SELECT count(*) FROM ab").await,
        ["50"]
    );
    assert_eq!(
        rows_text(&server, "tgt", "SELECT kept_fn(1)").await,
        ["1"],
        "the backup's version of a function both hold"
    );

    // The report names each object the backup did not hold, and none it did.
    let dropped: Vec<&String> = report
        .warnings
        .iter()
        .filter(|w| w.contains("dropped"))
        .collect();
    assert_eq!(dropped.len(), 1, "{:?}", report.warnings);
    let dropped = dropped[0];
    let mut extras = vec![
        "table public.c",
        "view public.extra_view",
        "view public.over_a",
        "sequence public.extra_seq",
        "type public.extra_mood",
        "domain public.extra_dom",
        "function public.extra_fn(n integer)",
        "function public.mood_text(m public.extra_mood)",
        "procedure public.extra_proc()",
        "aggregate public.extra_agg(integer)",
        "schema junk",
        "table junk.t",
        "materialized view junk.mv",
        "large object 777",
    ];
    if citext {
        extras.push("table ext_home.mine");
    }
    let (head, names) = dropped.split_once(": ").expect("a list of names");
    assert_eq!(
        head,
        format!(
            "restore with clean dropped {} object(s) the backup does not hold",
            extras.len()
        )
    );
    let mut named: Vec<&str> = names.split(", ").collect();
    named.sort_unstable();
    extras.sort_unstable();
    assert_eq!(named, extras);

    // The extension, its objects and its schema stay, and are named.
    if citext {
        assert_eq!(
            rows_text(
                &server,
                "tgt",
                "SELECT 'ABC'::ext_home.citext OPERATOR(ext_home.=) 'abc'"
            )
            .await,
            ["t"]
        );
        let left = report
            .warnings
            .iter()
            .find(|w| w.contains("left in place"))
            .expect("a warning naming what was left");
        assert!(
            left.contains("extension citext") && left.contains("schema ext_home"),
            "{left}"
        );
        assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
    } else {
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    }

    // Again over the restored copy: nothing is extra, nothing is named.
    let report = target
        .restore(dump, &RestoreOptions::default().with_clean(true))
        .await
        .expect("clean restore over an exact copy");
    assert!(
        !report.warnings.iter().any(|w| w.contains("dropped")),
        "{:?}",
        report.warnings
    );
    assert_eq!(objects(&server, "tgt").await, src_objects);
}

/// `assert_same_schema` wants a big schema; this one is small.
fn assert_same_schema_small(server: &EphemeralPostgres, a: &str, b: &str) {
    let without_extensions = |s: String| {
        s.lines()
            .filter(|l| !l.contains("ext_home") && !l.contains("EXTENSION"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        without_extensions(schema_of(server, a)),
        without_extensions(schema_of(server, b))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_stops_with_nothing_dropped_when_an_object_is_in_use() {
    let server = EphemeralPostgres::start().await.expect("ephemeral server");
    server.create_database("src").await.expect("create src");
    server.execute("src", SOURCE).await.expect("fill src");
    let source = server.engine_for("src").expect("engine");
    let (dump, _) = dump_to_memory(&source, &DumpOptions::default()).await;
    let dump = dump.into_source();

    server.create_database("tgt").await.expect("create tgt");
    server
        .execute(
            "tgt",
            "CREATE TABLE a (id integer PRIMARY KEY); INSERT INTO a VALUES (1);
             CREATE TABLE busy (x integer); INSERT INTO busy VALUES (1), (2);
             CREATE FUNCTION extra_fn() RETURNS integer LANGUAGE sql AS $$ SELECT 1 $$;",
        )
        .await
        .expect("fill tgt");
    let before = objects(&server, "tgt").await;

    // An application reads the extra table in an open transaction.
    let app = client(&server, "tgt").await;
    app.batch_execute("BEGIN; SELECT count(*) FROM busy")
        .await
        .expect("application transaction");

    let target = server.engine_for("tgt").expect("engine");
    let started = Instant::now();
    let err = target
        .restore(dump.clone(), &RestoreOptions::default().with_clean(true))
        .await
        .expect_err("the extra table is in use");
    assert_eq!(err.kind(), ErrorKind::Locked, "{err:?}");
    assert!(
        err.message().contains("table public.busy")
            && err.message().contains("nothing was dropped"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        objects(&server, "tgt").await,
        before,
        "something was dropped"
    );
    assert_eq!(
        rows_text(&server, "tgt", "SELECT count(*) FROM a").await,
        ["1"]
    );

    // The application is done: the clean goes through.
    app.batch_execute("COMMIT").await.expect("commit");
    let report = target
        .restore(dump, &RestoreOptions::default().with_clean(true))
        .await
        .expect("clean restore");
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("table public.busy") && w.contains("function public.extra_fn()")),
        "{:?}",
        report.warnings
    );
    assert_eq!(objects(&server, "tgt").await, objects(&server, "src").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_clean_keeps_unrelated_objects() {
    let server = EphemeralPostgres::start().await.expect("ephemeral server");
    server.create_database("src").await.expect("create src");
    server.execute("src", SOURCE).await.expect("fill src");
    let source = server.engine_for("src").expect("engine");
    let (dump, _) = dump_to_memory(&source, &DumpOptions::default()).await;
    let dump = dump.into_source();

    server.create_database("tgt").await.expect("create tgt");
    server
        .execute(
            "tgt",
            "CREATE TABLE a (id integer PRIMARY KEY); INSERT INTO a VALUES (1);
             CREATE TABLE c (x integer); INSERT INTO c VALUES (1);
             CREATE FUNCTION extra_fn() RETURNS integer LANGUAGE sql AS $$ SELECT 1 $$;
             CREATE SCHEMA junk; CREATE TABLE junk.t (x integer);",
        )
        .await
        .expect("fill tgt");
    let target = server.engine_for("tgt").expect("engine");

    let report = target
        .restore(
            dump.clone(),
            &RestoreOptions::default()
                .with_clean(true)
                .with_tables(vec![TableRef::new("public", "a")]),
        )
        .await
        .expect("table restore with clean");
    assert_eq!(report.tables.get("public.a"), Some(&100));
    assert!(
        !report.warnings.iter().any(|w| w.contains("dropped")),
        "{:?}",
        report.warnings
    );
    let report = target
        .restore(
            dump,
            &RestoreOptions::default()
                .with_clean(true)
                .with_schemas(vec!["public".into()]),
        )
        .await
        .expect("schema restore with clean");
    assert!(
        !report.warnings.iter().any(|w| w.contains("dropped")),
        "{:?}",
        report.warnings
    );
    let left = objects(&server, "tgt").await;
    for kept in [
        "relation r public.c",
        "routine extra_fn()",
        "schema junk",
        "relation r junk.t",
    ] {
        assert!(
            left.contains(&kept.to_owned()),
            "{kept} was dropped: {left:?}"
        );
    }
    assert_eq!(
        rows_text(&server, "tgt", "SELECT count(*) FROM a").await,
        ["100"]
    );
}
