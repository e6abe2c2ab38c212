//! Embedding dbops: the whole job as a program built on the library does it.
//!
//! One dependency (`dbops`) and a runtime (`tokio`). A throwaway PostgreSQL server
//! with a demo database; an encrypted repository in a temporary directory, behind a
//! storage decorator of our own that counts bytes; two backups, each on a spawned task
//! with two connections sharing one snapshot, with new orders between them; the list;
//! what retention would forget in each group (dry run); every byte verified; the
//! newest backup restored into a new database and its row counts compared; and a
//! health check of our own. Everything is removed at the end.
//!
//! ```sh
//! cargo run --release --example embed
//! ```
//!
//! `dbops/tests/embed.rs` compiles this file into a test and calls [`run`].

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dbops::async_trait::async_trait;
use dbops::bytes::Bytes;
use dbops::futures::StreamExt as _;
use dbops::{
    BackupOptions, BackupTarget, ByteStream, DatabaseEngine, DumpOptions, Encryption,
    ForgetOptions, HealthCheck, HealthReport, HealthStatus, InitOptions, KeepRules, Manifest,
    ObjectMeta, ObjectStream, PutOutcome, Repository, RestoreOptions, Result, Secret,
    TargetOptions, VerifyOptions,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const DEMO: &str = "
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text UNIQUE);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int REFERENCES customers, placed date NOT NULL, note text);
INSERT INTO customers SELECT g, 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 5000) g;
INSERT INTO orders (customer_id, placed, note) SELECT 1 + g % 5000, date '2026-01-01' + g % 300, 'order ' || g FROM generate_series(1, 40000) g;
";

/// What happens between the two backups: new orders.
const NEW_ORDERS: &str = "INSERT INTO orders (customer_id, placed, note) SELECT 1 + g % 5000, date '2026-11-01', 'late order ' || g FROM generate_series(1, 200) g;";

/// Rows in the database at the second backup.
const ROWS: u64 = 5000 + 40_000 + 200;

/// A storage decorator that counts the bytes written to and read from the target it
/// wraps. Like the library's own wrappers (`dbops::storage::RetryTarget`), it
/// forwards every method, so that none silently falls back to a default.
#[derive(Debug)]
struct CountingTarget {
    inner: Arc<dyn BackupTarget>,
    written: AtomicU64,
    // Shared with the streams that `get` hands out, which outlive the call.
    read: Arc<AtomicU64>,
}

impl CountingTarget {
    fn new(inner: Arc<dyn BackupTarget>) -> Self {
        Self {
            inner,
            written: AtomicU64::new(0),
            read: Arc::new(AtomicU64::new(0)),
        }
    }

    fn count_written(&self, bytes: usize) {
        self.written.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl BackupTarget for CountingTarget {
    fn location(&self) -> String {
        self.inner.location()
    }

    fn is_remote(&self) -> bool {
        self.inner.is_remote()
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let len = data.len();
        self.inner.put(key, data).await?;
        self.count_written(len);
        Ok(())
    }

    async fn put_stream(&self, key: &str, data: ByteStream) -> Result<u64> {
        let written = self.inner.put_stream(key, data).await?;
        self.written.fetch_add(written, Ordering::Relaxed);
        Ok(written)
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome> {
        let len = data.len();
        let outcome = self.inner.put_if_absent(key, data).await?;
        if outcome == PutOutcome::Created {
            self.count_written(len);
        }
        Ok(outcome)
    }

    async fn get(&self, key: &str) -> Result<ByteStream> {
        let read = Arc::clone(&self.read);
        let stream = self.inner.get(key).await?;
        Ok(Box::pin(stream.inspect(move |item| {
            if let Ok(bytes) = item {
                read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
        })))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let bytes = self.inner.get_range(key, range).await?;
        self.read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<ObjectStream> {
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
}

/// A health check of our own: the share of the newest backup of a database that was
/// new data, not de-duplicated against earlier backups. Near 1 night after night, the
/// data churns faster than planned for, or something defeats de-duplication.
#[derive(Debug)]
struct NewDataShare {
    repo: Repository,
    database: String,
}

#[async_trait]
impl HealthCheck for NewDataShare {
    fn name(&self) -> &str {
        "new_data_share"
    }

    async fn check(&self) -> Result<HealthReport> {
        let backups = self.repo.list_backups().await?;
        let newest = backups
            .iter()
            .filter(|m| m.database == self.database)
            .max_by_key(|m| m.finished);
        let Some(m) = newest else {
            let reason = format!("no backup of {}", self.database);
            return Ok(HealthReport::new(
                self.name(),
                HealthStatus::Unhealthy,
                1.0,
                "ratio",
                reason,
            ));
        };
        let share = m.stats.new_bytes as f64 / m.stats.bytes.max(1) as f64;
        let share = (share * 1000.0).round() / 1000.0;
        Ok(HealthReport::judge(self.name(), share, "ratio", 0.5, 0.9))
    }
}

/// Runs a backup on a task of its own, as a service does next to its other work.
fn spawn_backup(
    repo: &Repository,
    source: &Arc<dyn DatabaseEngine>,
    options: &BackupOptions,
) -> tokio::task::JoinHandle<Result<Manifest>> {
    let (repo, source, options) = (repo.clone(), Arc::clone(source), options.clone());
    tokio::spawn(async move { repo.backup(source.as_ref(), &options).await })
}

/// A directory only we can enter, under the system's temporary directory; removed on
/// drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        let nanos = std::time::UNIX_EPOCH
            .elapsed()
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("dbops-embed-{}-{nanos}", std::process::id());
        let path = std::env::temp_dir().join(name);
        // Fails if the name is taken: never a directory someone else prepared.
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn step(text: &str) {
    println!("\n==> {text}");
}

/// The whole job. An error says which step failed, or what did not match.
pub async fn run() -> std::result::Result<(), BoxError> {
    step("a throwaway PostgreSQL server with a demo database `shop`");
    let server = dbops::scratch_server("postgresql").await?;
    server.create_database("shop").await?;
    server.execute("shop", DEMO).await?;
    let source = dbops::engine(&server.url_for("shop"))?;

    step("an encrypted repository in a temporary directory, bytes counted");
    let dir = TempDir::new()?;
    let repo_url = dir.0.join("repo").display().to_string();
    let target = dbops::target(&repo_url, &TargetOptions::default())?;
    let counting = Arc::new(CountingTarget::new(target));
    let password = Secret::new("embed example");
    let encryption = Encryption::Password(password.clone());
    Repository::init(counting.clone(), InitOptions::new(encryption)).await?;
    // What every later run does: open it with the password.
    let repo = Repository::open(counting.clone(), Some(&password)).await?;

    step("two backups on spawned tasks, 2 connections each, new orders in between");
    let options = BackupOptions::default().with_dump(DumpOptions::default().with_jobs(2));
    let first = spawn_backup(&repo, &source, &options).await??;
    server.execute("shop", NEW_ORDERS).await?;
    let second = spawn_backup(&repo, &source, &options).await??;

    step("the repository");
    for m in repo.list_backups().await? {
        println!(
            "    {}  {} {}  {} bytes, {} of them new",
            m.id, m.engine, m.database, m.stats.bytes, m.stats.new_bytes
        );
    }

    step("retention, dry run: keep the last backup of each database");
    let keep = KeepRules::default().with_last(1);
    let dry_run = ForgetOptions::default().with_dry_run(true);
    let report = repo
        .forget(&keep, dbops::chrono::Utc::now(), &dry_run)
        .await?;
    for group in &report.groups {
        println!("    {}", group.group);
        for d in &group.decisions {
            let verdict = if d.keep { "keep" } else { "forget" };
            println!("      {verdict:<6} {}  {}", d.id, d.reasons.join("; "));
        }
    }
    let forgotten: Vec<&str> = report
        .decisions()
        .filter(|d| !d.keep)
        .map(|d| d.id.as_str())
        .collect();
    if forgotten != [first.id.as_str()] || repo.list_backups().await?.len() != 2 {
        return Err(format!(
            "the dry run should name {} alone and remove nothing: {forgotten:?}",
            first.id
        )
        .into());
    }

    step("verifying every byte of both backups");
    let backups = [first, second];
    let verified = repo.verify(&backups, &VerifyOptions::new(true)).await?;
    println!(
        "    {} streams, {} bytes read",
        verified.streams, verified.bytes_read
    );
    if !verified.ok() {
        return Err(format!("verify found problems: {:?}", verified.problems).into());
    }

    step("restoring the newest backup as `shop_restored`");
    let [_, newest] = &backups;
    let restored = dbops::engine(&server.url_for("shop_restored"))?;
    let restore = RestoreOptions::default().with_create(true).with_jobs(2);
    let report = repo.restore(newest, restored.as_ref(), &restore).await?;
    let rows: u64 = report.tables.values().sum();
    println!("    {} tables, {rows} rows", report.tables.len());
    if rows != ROWS || newest.tables().values().sum::<u64>() != ROWS {
        return Err(format!("restored {rows} rows, expected {ROWS}").into());
    }

    step("our own health check");
    let check: Arc<dyn HealthCheck> = Arc::new(NewDataShare {
        repo: repo.clone(),
        database: "shop".into(),
    });
    let health = check.check().await?;
    println!(
        "    {}: {:?}, {}",
        health.check, health.status, health.reason
    );

    let (written, read) = (
        counting.written.load(Ordering::Relaxed),
        counting.read.load(Ordering::Relaxed),
    );
    println!("\nOK: {written} bytes written to the repository, {read} bytes read back.");
    if health.status != HealthStatus::Healthy || written == 0 || read == 0 {
        return Err(format!("{health:?}, {written} bytes written, {read} read").into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> std::result::Result<(), BoxError> {
    run().await
}
