//! Failure modes: each must be the right error kind, and never leak a password.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use ops_core::testkit::engine::{MemoryDump, MemorySink, dump_to_memory};
use ops_core::{
    ByteStream, DatabaseEngine, DumpOptions, DumpSink, Error, ErrorKind, RestoreOptions, Result,
    StreamRole, StreamSource, StreamSpec, StreamSummary, StreamWriter, TableRef,
};
use ops_postgres::PostgresEngine;
use ops_postgres::ephemeral::{EphemeralOptions, EphemeralPostgres};

use common::*;

#[tokio::test]
async fn unreachable_server() {
    let engine =
        PostgresEngine::new("postgres://postgres:pw-unreach@127.0.0.1:1/postgres?sslmode=disable")
            .expect("valid URL");
    let err = engine
        .describe()
        .await
        .expect_err("nothing listens on port 1");
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err:?}");
    let err = engine
        .dump(
            &DumpOptions::default(),
            Arc::new(MemorySink(MemoryDump::new())),
        )
        .await
        .expect_err("nothing listens on port 1");
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err:?}");
    assert!(!format!("{err} {err:?}").contains("pw-unreach"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_times_out() {
    // The kernel accepts the connection; nobody ever speaks.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let engine = PostgresEngine::new(&format!(
        "postgres://postgres:pw-silent@127.0.0.1:{port}/postgres?sslmode=disable&connect_timeout=2"
    ))
    .expect("valid URL");
    let started = std::time::Instant::now();
    let (described, dumped) = tokio::time::timeout(
        Duration::from_secs(20),
        futures::future::join(
            engine.describe(),
            engine.dump(
                &DumpOptions::default().with_data_only(true),
                Arc::new(MemorySink(MemoryDump::new())),
            ),
        ),
    )
    .await
    .expect("connect_timeout must end the wait");
    for err in [
        described.expect_err("sqlx never gets an answer"),
        dumped.expect_err("tokio-postgres never gets an answer"),
    ] {
        assert_eq!(err.kind(), ErrorKind::Unreachable, "{err:?}");
        assert!(err.message().contains("connect_timeout"), "{err}");
        assert!(!format!("{err} {err:?}").contains("pw-silent"));
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(listener);
}

#[tokio::test]
async fn wrong_password_is_authentication_and_never_shown() {
    let server =
        EphemeralPostgres::start_with(EphemeralOptions::default().with_password_auth("right-pw"))
            .await
            .expect("ephemeral server");
    let secret = "wr0ng-Pa55-XYZZY";
    let url = format!(
        "postgres://postgres:{secret}@127.0.0.1:{}/postgres?sslmode=disable",
        server.port()
    );
    let engine = PostgresEngine::new(&url).expect("valid URL");
    assert!(!engine.location().contains(secret));
    assert!(!format!("{engine:?}").contains(secret));

    let err = engine.describe().await.expect_err("wrong password (sqlx)");
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err:?}");
    assert_eq!(err.context_value("sqlstate"), Some("28P01"));
    assert!(!format!("{err} {err:?}").contains(secret), "{err:?}");

    let err = engine
        .dump(
            &DumpOptions::default(),
            Arc::new(MemorySink(MemoryDump::new())),
        )
        .await
        .expect_err("wrong password (tokio-postgres)");
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err:?}");
    assert!(!format!("{err} {err:?}").contains(secret), "{err:?}");

    // The right password works, through both drivers and pg_dump.
    let good = server.engine_for("postgres").expect("engine");
    good.describe()
        .await
        .expect("describe with the right password");
    let (dump, _) = dump_to_memory(&good, &DumpOptions::default()).await;
    assert!(dump.content("schema").is_some_and(|s| !s.is_empty()));
}

/// A sink that reports when the first table stream opens and writes slowly.
#[derive(Default)]
struct SlowState {
    opened: tokio::sync::Notify,
    finished: Mutex<Vec<String>>,
}

struct SlowSink(Arc<SlowState>);

struct SlowWriter {
    name: String,
    table: bool,
    sink: Arc<SlowState>,
}

#[async_trait]
impl DumpSink for SlowSink {
    async fn open_stream(&self, spec: StreamSpec) -> Result<Box<dyn StreamWriter>> {
        let table = spec.role == StreamRole::TableData;
        if table {
            self.0.opened.notify_one();
        }
        Ok(Box::new(SlowWriter {
            name: spec.name,
            table,
            sink: Arc::clone(&self.0),
        }))
    }
    fn warn(&self, _message: String) {}
}

#[async_trait]
impl StreamWriter for SlowWriter {
    async fn write(&mut self, _data: Bytes) -> Result<()> {
        if self.table {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        Ok(())
    }
    async fn finish(self: Box<Self>) -> Result<StreamSummary> {
        self.sink
            .finished
            .lock()
            .expect("lock")
            .push(self.name.clone());
        Ok(StreamSummary::default())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_dump_is_an_error() {
    let server = EphemeralPostgres::start().await.expect("ephemeral server");
    server
        .execute(
            "postgres",
            "CREATE TABLE big AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 60000) g",
        )
        .await
        .expect("fill");
    let engine = server.engine_for("postgres").expect("engine");
    let sink = Arc::new(SlowState::default());
    let dump = {
        let sink = SlowSink(Arc::clone(&sink));
        tokio::spawn(async move {
            engine
                .dump(&DumpOptions::default().with_data_only(true), Arc::new(sink))
                .await
        })
    };
    sink.opened.notified().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.kill().expect("kill");
    let outcome = tokio::time::timeout(Duration::from_secs(60), dump)
        .await
        .expect("the dump must not hang")
        .expect("task");
    let err = outcome.expect_err("a dump whose server died must fail");
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Interrupted | ErrorKind::Unreachable | ErrorKind::Database
        ),
        "{err:?}"
    );
    let finished = sink.finished.lock().expect("lock").clone();
    assert!(
        !finished.iter().any(|n| n.starts_with("data/public.big/")),
        "{finished:?}"
    );
}

/// Wraps a dump and damages one table stream.
#[derive(Debug)]
struct Damaged {
    inner: Arc<MemoryDump>,
    stream: String,
}

#[async_trait]
impl StreamSource for Damaged {
    fn streams(&self) -> &[StreamSpec] {
        self.inner.streams()
    }
    async fn open(&self, name: &str) -> Result<ByteStream> {
        let s = self.inner.open(name).await?;
        if name != self.stream {
            return Ok(s);
        }
        let bad =
            futures::stream::iter([Err(Error::corrupt("chunk 0123abcd failed authentication")
                .with_context("chunk", "0123abcd"))]);
        Ok(Box::pin(s.take(1).chain(bad)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_failures_and_table_filter() {
    let server = EphemeralPostgres::start().await.expect("ephemeral server");
    server.create_database("src").await.expect("create");
    server
        .execute(
            "src",
            "CREATE TABLE parent (id int PRIMARY KEY);
             INSERT INTO parent SELECT generate_series(1, 10);
             CREATE TABLE orders (
                 id serial PRIMARY KEY,
                 parent_id int REFERENCES parent (id),
                 qty int NOT NULL CHECK (qty > 0),
                 note text DEFAULT 'none');
             CREATE INDEX orders_qty ON orders (qty);
             COMMENT ON TABLE orders IS 'the orders';
             CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
             CREATE TRIGGER orders_stamp BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION stamp();
             INSERT INTO orders (parent_id, qty) SELECT g % 10 + 1, g FROM generate_series(1, 500) g;
             CREATE TABLE other (x int);",
        )
        .await
        .expect("fill");
    let source = server.engine_for("src").expect("engine");
    let (dump, _) = dump_to_memory(&source, &DumpOptions::default()).await;
    let dump = dump.into_source();

    // create into an existing database → AlreadyExists, and the database is kept.
    let err = source
        .restore(dump.clone(), &RestoreOptions::default().with_create(true))
        .await
        .expect_err("exists");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err:?}");
    assert_eq!(
        rows_text(&server, "src", "SELECT count(*) FROM orders").await,
        ["500"]
    );

    // Non-empty target without clean → TargetNotEmpty, naming what it holds and the
    // remedies, in the library's words (no command-line flags).
    let err = source
        .restore(dump.clone(), &RestoreOptions::default())
        .await
        .expect_err("not empty");
    assert_eq!(err.kind(), ErrorKind::TargetNotEmpty, "{err:?}");
    assert!(
        err.message().contains("table public.orders")
            && err.message().contains("restore with clean")
            && err.message().contains("new database")
            && !err.message().contains("--"),
        "{err}"
    );

    // A damaged chunk fails the restore with that error, and the created db is dropped.
    let damaged = Arc::new(Damaged {
        inner: Arc::clone(&dump),
        stream: "data/public.orders/0".into(),
    });
    let target = server.engine_for("broken").expect("engine");
    let err = target
        .restore(
            damaged.clone(),
            &RestoreOptions::default().with_create(true),
        )
        .await
        .expect_err("damaged");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err:?}");
    assert_eq!(err.context_value("chunk"), Some("0123abcd"), "{err:?}");
    assert!(err.to_string().contains("public.orders"), "{err}");
    let dbs = rows_text(
        &server,
        "postgres",
        "SELECT datname FROM pg_database WHERE datname = 'broken'",
    )
    .await;
    assert!(
        dbs.is_empty(),
        "the failed restore's database was kept: {dbs:?}"
    );
    // ... unless keep_failed.
    let err = target
        .restore(
            damaged,
            &RestoreOptions::default()
                .with_create(true)
                .with_keep_failed(true),
        )
        .await
        .expect_err("damaged");
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    let dbs = rows_text(
        &server,
        "postgres",
        "SELECT datname FROM pg_database WHERE datname = 'broken'",
    )
    .await;
    assert_eq!(dbs, ["broken"]);
    target.drop_database().await.expect("drop_database");
    let dbs = rows_text(
        &server,
        "postgres",
        "SELECT datname FROM pg_database WHERE datname = 'broken'",
    )
    .await;
    assert!(dbs.is_empty());

    // --table: one table with its rows, index, constraints, trigger, default, sequence.
    let one = server.engine_for("one_table").expect("engine");
    let report = one
        .restore(
            dump.clone(),
            &RestoreOptions::default()
                .with_create(true)
                .with_tables(vec![TableRef::new("public", "orders")]),
        )
        .await
        .expect("table restore");
    assert_eq!(report.tables.get("public.orders"), Some(&500));
    let tables = rows_text(&server, "one_table", "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace ORDER BY 1").await;
    assert_eq!(tables, ["orders"], "only the chosen table");
    let indexes = rows_text(
        &server,
        "one_table",
        "SELECT indexname FROM pg_indexes WHERE tablename = 'orders' ORDER BY 1",
    )
    .await;
    assert_eq!(indexes, ["orders_pkey", "orders_qty"]);
    let constraints: BTreeSet<String> = rows_text(
        &server,
        "one_table",
        "SELECT conname FROM pg_constraint WHERE conrelid = 'orders'::regclass",
    )
    .await
    .into_iter()
    .collect();
    assert!(
        constraints.contains("orders_qty_check") && constraints.contains("orders_pkey"),
        "{constraints:?}"
    );
    assert!(
        !constraints.iter().any(|c| c.contains("fkey")),
        "FK to a table not restored: {constraints:?}"
    );
    let triggers = rows_text(
        &server,
        "one_table",
        "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal",
    )
    .await;
    assert_eq!(triggers, ["orders_stamp"]);
    assert_eq!(
        rows_text(&server, "one_table", "SELECT last_value FROM orders_id_seq").await,
        ["500"]
    );
    assert_eq!(
        rows_text(
            &server,
            "one_table",
            "SELECT obj_description('orders'::regclass)"
        )
        .await,
        ["the orders"]
    );
    assert_eq!(
        table_checksums(&server, "one_table").await,
        table_checksums(&server, "src")
            .await
            .into_iter()
            .filter(|t| t.starts_with("public.orders|"))
            .collect::<Vec<_>>()
    );

    // The same table again without clean → TargetNotEmpty; with clean → replaced.
    let again = RestoreOptions::default().with_tables(vec![TableRef::new("public", "orders")]);
    let err = one.restore(dump.clone(), &again).await.expect_err("exists");
    assert_eq!(err.kind(), ErrorKind::TargetNotEmpty, "{err:?}");
    let report = one
        .restore(dump.clone(), &again.clone().with_clean(true))
        .await
        .expect("clean table restore");
    // The trigger function is there already: kept, and said so.
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("kept") && w.contains("stamp")),
        "{:?}",
        report.warnings
    );
    assert_eq!(
        rows_text(&server, "one_table", "SELECT count(*) FROM orders").await,
        ["500"]
    );

    // Whole-database --clean over a modified copy gives back the source: changed rows,
    // columns, indexes and sequence values of the backup's objects are replaced ...
    server
        .execute(
            "one_table",
            "DELETE FROM orders WHERE qty < 100; ALTER TABLE orders DROP COLUMN note;
             ALTER TABLE orders ADD COLUMN junk int; CREATE INDEX orders_junk ON orders (junk);
             SELECT setval('orders_id_seq', 9999);",
        )
        .await
        .expect("changes");
    // ... and what the backup does not hold is dropped, and named.
    server.execute("one_table", "CREATE SCHEMA junk; CREATE TABLE junk.t (x int); CREATE TABLE public.extra (y int); SELECT lo_create(777);").await.expect("junk");
    let report = one
        .restore(
            dump.clone(),
            &RestoreOptions::default().with_clean(true).with_jobs(2),
        )
        .await
        .expect("clean restore");
    let warned = report.warnings.join("\n");
    for extra in [
        "schema junk",
        "table junk.t",
        "table public.extra",
        "large object 777",
    ] {
        assert!(warned.contains(extra), "{extra} not named: {warned}");
    }
    assert_same_schema(&server, "src", "one_table");
    assert_eq!(
        table_checksums(&server, "src").await,
        table_checksums(&server, "one_table").await
    );
    assert_eq!(
        non_table_state(&server, "src").await,
        non_table_state(&server, "one_table").await
    );

    // An object outside the selection that depends on one a --schemas restore
    // replaces: clean stops, names it and drops nothing.
    server
        .execute(
            "one_table",
            "CREATE SCHEMA rpt; CREATE VIEW rpt.big_orders AS SELECT id FROM public.orders WHERE qty > 400;",
        )
        .await
        .expect("dependent view");
    let options = RestoreOptions::default()
        .with_clean(true)
        .with_schemas(vec!["public".into()]);
    let err = one
        .restore(dump.clone(), &options)
        .await
        .expect_err("a dependent view outside the backup");
    assert_eq!(err.kind(), ErrorKind::TargetNotEmpty, "{err:?}");
    assert!(err.message().contains("rpt.big_orders"), "{err}");
    assert_eq!(
        rows_text(&server, "one_table", "SELECT count(*) FROM rpt.big_orders").await,
        ["100"]
    );
    assert_eq!(
        rows_text(&server, "one_table", "SELECT count(*) FROM parent").await,
        ["10"]
    );
    // A whole-database clean drops it with the rest of what the backup lacks.
    let report = one
        .restore(dump.clone(), &RestoreOptions::default().with_clean(true))
        .await
        .expect("clean restore over a dependent view");
    let warned = report.warnings.join("\n");
    assert!(
        warned.contains("view rpt.big_orders") && warned.contains("schema rpt"),
        "{warned}"
    );
    assert_same_schema(&server, "src", "one_table");

    // --schemas
    let only_public = server.engine_for("only_public").expect("engine");
    only_public
        .restore(
            dump,
            &RestoreOptions::default()
                .with_create(true)
                .with_schemas(vec!["public".into()]),
        )
        .await
        .expect("schema restore");
    assert_same_schema(&server, "src", "only_public");
}

#[tokio::test]
async fn missing_pg_dump_names_the_package() {
    let server = EphemeralPostgres::start().await.expect("ephemeral server");
    let empty = tempfile::tempdir().expect("tempdir");
    let engine = server
        .engine_for("postgres")
        .expect("engine")
        .with_bin_dir(empty.path());
    let err = engine
        .dump(
            &DumpOptions::default(),
            Arc::new(MemorySink(MemoryDump::new())),
        )
        .await
        .expect_err("no pg_dump");
    assert_eq!(err.kind(), ErrorKind::MissingTool, "{err:?}");
    assert!(
        err.message().contains("apt-get install postgresql-client"),
        "{err}"
    );
    // Data-only dumps need no pg_dump.
    engine
        .dump(
            &DumpOptions::default().with_data_only(true),
            Arc::new(MemorySink(MemoryDump::new())),
        )
        .await
        .expect("data-only dump without pg_dump");
}

/// Replaces one stream's content with garbage.
#[derive(Debug)]
struct Garbage {
    inner: Arc<MemoryDump>,
    stream: String,
}

#[async_trait]
impl StreamSource for Garbage {
    fn streams(&self) -> &[StreamSpec] {
        self.inner.streams()
    }
    async fn open(&self, name: &str) -> Result<ByteStream> {
        if name != self.stream {
            return self.inner.open(name).await;
        }
        Ok(Box::pin(futures::stream::iter([Ok(Bytes::from_static(
            b"this is not a pg_dump archive at all",
        ))])))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_restore_of_an_unreadable_backup_leaves_the_target_alone() {
    let server = EphemeralPostgres::start().await.expect("ephemeral server");
    server.create_database("src").await.expect("create");
    server
        .execute(
            "src",
            "CREATE TABLE keep (id int PRIMARY KEY); INSERT INTO keep SELECT generate_series(1, 50);",
        )
        .await
        .expect("fill");
    let source = server.engine_for("src").expect("engine");
    let (dump, _) = dump_to_memory(&source, &DumpOptions::default()).await;
    let dump = dump.into_source();
    let clean = RestoreOptions::default().with_clean(true);

    // A schema stream that fails its authentication half-way.
    let damaged = Arc::new(Damaged {
        inner: Arc::clone(&dump),
        stream: "schema".into(),
    });
    let err = source
        .restore(damaged, &clean)
        .await
        .expect_err("damaged schema stream");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err:?}");
    assert_eq!(
        rows_text(&server, "src", "SELECT count(*) FROM keep").await,
        ["50"],
        "the target was touched before the backup was known readable"
    );

    // A schema stream that reads fine but is not an archive.
    let garbage = Arc::new(Garbage {
        inner: Arc::clone(&dump),
        stream: "schema".into(),
    });
    let err = source
        .restore(garbage, &clean)
        .await
        .expect_err("garbage schema stream");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err:?}");
    assert_eq!(
        rows_text(&server, "src", "SELECT count(*) FROM keep").await,
        ["50"],
        "the target was touched before the backup was known readable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_waits_for_locks_only_so_long() {
    let server = EphemeralPostgres::start().await.expect("ephemeral server");
    server
        .execute(
            "postgres",
            "CREATE TABLE p (id int, at date) PARTITION BY RANGE (at);
             CREATE TABLE p_2024 PARTITION OF p FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
             INSERT INTO p SELECT g, '2024-03-01' FROM generate_series(1, 10) g;
             CREATE TABLE plain (id int); INSERT INTO plain VALUES (1);",
        )
        .await
        .expect("fill");
    let engine = server
        .engine_for("postgres")
        .expect("engine")
        .with_lock_wait_timeout(Duration::from_millis(500));

    // Only the partitioned parent is locked: our COPY workers need no lock on it, but
    // pg_dump does, and gives up after --lock-wait-timeout.
    let holder = client(&server, "postgres").await;
    holder
        .batch_execute("BEGIN; LOCK TABLE ONLY p IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock p");
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        engine.dump(
            &DumpOptions::default(),
            Arc::new(MemorySink(MemoryDump::new())),
        ),
    )
    .await
    .expect("the dump must not wait forever")
    .expect_err("p is locked");
    assert_eq!(err.kind(), ErrorKind::Locked, "{err:?}");
    assert_eq!(err.context_value("table"), Some("public.p"), "{err:?}");
    holder.batch_execute("ROLLBACK").await.expect("unlock");

    // A table we copy ourselves: our own lock gives up, naming it.
    holder
        .batch_execute("BEGIN; LOCK TABLE plain IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock plain");
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        engine.dump(
            &DumpOptions::default().with_data_only(true),
            Arc::new(MemorySink(MemoryDump::new())),
        ),
    )
    .await
    .expect("the dump must not wait forever")
    .expect_err("plain is locked");
    assert_eq!(err.kind(), ErrorKind::Locked, "{err:?}");
    assert!(err.message().contains("plain"), "{err}");
    holder.batch_execute("ROLLBACK").await.expect("unlock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_server_needs_a_password_on_tcp() {
    let server = EphemeralPostgres::start().await.expect("ephemeral server");
    // Without the password: refused, even as the superuser.
    let bare = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
        server.port()
    );
    let err = PostgresEngine::new(&bare)
        .expect("valid URL")
        .describe()
        .await
        .expect_err("TCP needs the password");
    assert!(matches!(err.kind(), ErrorKind::Authentication), "{err:?}");
    // The URL carries a random password; Debug does not show it.
    let url = server.url();
    let password = url::Url::parse(&url)
        .expect("url")
        .password()
        .map(str::to_owned)
        .expect("the URL has a password");
    assert!(password.len() >= 32, "{url}");
    assert!(!format!("{server:?}").contains(&password));
    server
        .engine_for("postgres")
        .expect("engine")
        .describe()
        .await
        .expect("with the URL's password");
    let other = EphemeralPostgres::start().await.expect("second server");
    assert_ne!(
        url::Url::parse(&other.url()).expect("url").password(),
        Some(password.as_str()),
        "passwords must be random"
    );
    // The trusting socket is in a directory only the server's user can enter.
    use std::os::unix::fs::PermissionsExt;
    let root = server.socket_dir().parent().expect("dir").to_path_buf();
    let mode = std::fs::metadata(&root).expect("stat").permissions().mode();
    assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", root.display());
}

/// Yields a table stream's first piece, waits until the foreign key between the big
/// tables exists in the target (built early, while this stream is still open), then
/// fails as a damaged chunk would.
#[derive(Debug)]
struct DamagedLate {
    inner: Arc<MemoryDump>,
    stream: String,
    /// libpq connection string of the target database.
    target: String,
}

#[async_trait]
impl StreamSource for DamagedLate {
    fn streams(&self) -> &[StreamSpec] {
        self.inner.streams()
    }
    async fn open(&self, name: &str) -> Result<ByteStream> {
        let s = self.inner.open(name).await?;
        if name != self.stream {
            return Ok(s);
        }
        let target = self.target.clone();
        let bad = futures::stream::once(async move {
            let (client, conn) = tokio_postgres::connect(&target, tokio_postgres::NoTls)
                .await
                .expect("connect to the target");
            tokio::spawn(conn);
            for _ in 0..600 {
                let found = client
                    .query(
                        "SELECT 1 FROM pg_constraint WHERE conname = 'big_b_a_id_fkey'",
                        &[],
                    )
                    .await
                    .expect("query");
                if !found.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(Error::corrupt("chunk 0badc0de failed authentication")
                .with_context("chunk", "0badc0de"))
        });
        Ok(Box::pin(s.take(1).chain(bad)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_built_while_loading_and_a_damaged_last_table() {
    let server = EphemeralPostgres::start().await.expect("ephemeral server");
    server.create_database("early").await.expect("create");
    // Two tables big enough to have their keys and indexes built as soon as their rows
    // are in (over 4 MiB each), a foreign key between them, and a small table loaded
    // last (biggest first).
    server
        .execute(
            "early",
            "CREATE TABLE big_a (id int PRIMARY KEY, code text UNIQUE, body text);
             INSERT INTO big_a SELECT g, 'a' || g, repeat(md5(g::text), 3) FROM generate_series(1, 60000) g;
             CREATE TABLE big_b (id int PRIMARY KEY, a_id int NOT NULL REFERENCES big_a (id), body text);
             CREATE INDEX big_b_a ON big_b (a_id);
             COMMENT ON INDEX big_b_a IS 'built early, commented late';
             INSERT INTO big_b SELECT g, g % 60000 + 1, repeat(md5((g * 7)::text), 3) FROM generate_series(1, 50000) g;
             CREATE TABLE small (id int PRIMARY KEY, b_id int REFERENCES big_b (id));
             INSERT INTO small SELECT g, g FROM generate_series(1, 100) g;
             CREATE VIEW joined AS SELECT a.code, b.id FROM big_a a JOIN big_b b ON b.a_id = a.id;",
        )
        .await
        .expect("fill");
    let source = server.engine_for("early").expect("engine");
    let (dump, _) = dump_to_memory(&source, &DumpOptions::default()).await;
    let dump = dump.into_source();

    // Undamaged: the restore equals the source (schema by pg_dump, rows by hash), and
    // the tables loaded in one stream are frozen (no vacuum needed afterwards).
    let copy = server.engine_for("early_copy").expect("engine");
    copy.restore(
        dump.clone(),
        &RestoreOptions::default().with_create(true).with_jobs(2),
    )
    .await
    .expect("restore");
    assert_eq!(
        schema_of(&server, "early"),
        schema_of(&server, "early_copy")
    );
    assert_eq!(
        table_checksums(&server, "early").await,
        table_checksums(&server, "early_copy").await
    );
    server
        .execute("early_copy", "CREATE EXTENSION pg_visibility")
        .await
        .expect("pg_visibility (PostgreSQL contrib)");
    for table in ["big_a", "big_b", "small"] {
        let summary = rows_text(
            &server,
            "early_copy",
            &format!(
                "SELECT all_frozen = pg_relation_size('{table}') / current_setting('block_size')::int
                   FROM pg_visibility_map_summary('{table}')"
            ),
        )
        .await;
        assert_eq!(summary, ["t"], "{table} is loaded frozen");
    }

    // The smallest table's stream is damaged: the restore fails with the damage, after
    // the big tables' keys, indexes and foreign key were built (kept to look at), and
    // nothing of the damaged table is committed.
    let damaged = |db: &str| {
        Arc::new(DamagedLate {
            inner: Arc::clone(&dump),
            stream: "data/public.small/0".into(),
            target: format!(
                "host={} port={} user=postgres dbname={db}",
                server.socket_dir().display(),
                server.port()
            ),
        })
    };
    let kept = server.engine_for("early_kept").expect("engine");
    let err = kept
        .restore(
            damaged("early_kept"),
            &RestoreOptions::default()
                .with_create(true)
                .with_jobs(2)
                .with_keep_failed(true),
        )
        .await
        .expect_err("damaged");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err:?}");
    assert_eq!(err.context_value("chunk"), Some("0badc0de"), "{err:?}");
    assert!(err.to_string().contains("public.small"), "{err}");
    let built = rows_text(
        &server,
        "early_kept",
        "SELECT conname FROM pg_constraint WHERE conrelid IN ('big_a'::regclass, 'big_b'::regclass)
          UNION ALL SELECT indexrelid::regclass::text FROM pg_index WHERE indexrelid = 'big_b_a'::regclass
          ORDER BY 1",
    )
    .await;
    assert_eq!(
        built,
        [
            "big_a_code_key",
            "big_a_pkey",
            "big_b_a",
            "big_b_a_id_fkey",
            "big_b_pkey"
        ],
        "keys, indexes and the foreign key were built while the last table loaded"
    );
    assert_eq!(
        rows_text(&server, "early_kept", "SELECT count(*) FROM small").await,
        ["0"]
    );
    kept.drop_database().await.expect("drop");

    // Without keeping: the database the restore created is dropped.
    let err = server
        .engine_for("early_broken")
        .expect("engine")
        .restore(
            damaged("early_broken"),
            &RestoreOptions::default().with_create(true).with_jobs(2),
        )
        .await
        .expect_err("damaged");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err:?}");
    assert!(
        rows_text(
            &server,
            "postgres",
            "SELECT datname FROM pg_database WHERE datname = 'early_broken'",
        )
        .await
        .is_empty(),
        "the failed restore's database is dropped"
    );
}
