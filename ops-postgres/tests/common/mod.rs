//! Helpers shared by the integration tests: loading SQL with psql, comparing schemas
//! with pg_dump and tables with SQL checksums — all independent of dbops.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ops_postgres::ephemeral::EphemeralPostgres;

/// `${DBOPS_FIXTURES_DIR:-<repo>/../shared/fixtures}`.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("DBOPS_FIXTURES_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"),
    }
}

/// The kitchen-sink fixture shipped with this crate.
pub fn kitchen_sink() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kitchen_sink.sql")
}

fn tool(server: &EphemeralPostgres, name: &str) -> PathBuf {
    server.bin_dir().join(name)
}

/// Runs a SQL file with psql (ON_ERROR_STOP) in `db`.
pub fn psql_file(server: &EphemeralPostgres, db: &str, file: &Path) {
    let out = Command::new(tool(server, "psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres"])
        .arg("-h")
        .arg(server.socket_dir())
        .arg("-p")
        .arg(server.port().to_string())
        .arg("-d")
        .arg(db)
        .arg("-f")
        .arg(file)
        .env_remove("PGPASSWORD")
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql -f {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pg_dump --schema-only` without comment lines and `\restrict` lines.
pub fn schema_of(server: &EphemeralPostgres, db: &str) -> String {
    let out = Command::new(tool(server, "pg_dump"))
        .args(["--schema-only", "-U", "postgres"])
        .arg("-h")
        .arg(server.socket_dir())
        .arg("-p")
        .arg(server.port().to_string())
        .arg("-d")
        .arg(db)
        .output()
        .expect("pg_dump runs");
    assert!(
        out.status.success(),
        "pg_dump --schema-only {db} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("--"))
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts equal schemas, showing the first differing lines.
pub fn assert_same_schema(server: &EphemeralPostgres, source: &str, restored: &str) {
    let a = schema_of(server, source);
    let b = schema_of(server, restored);
    assert!(
        a.lines().count() > 50,
        "suspiciously small schema of {source}:\n{a}"
    );
    if a != b {
        let al: Vec<&str> = a.lines().collect();
        let bl: Vec<&str> = b.lines().collect();
        let first = al
            .iter()
            .zip(bl.iter())
            .position(|(x, y)| x != y)
            .unwrap_or(al.len().min(bl.len()));
        let from = first.saturating_sub(3);
        panic!(
            "schemas differ at line {first} ({} vs {} lines)\n--- {source}\n{}\n--- {restored}\n{}",
            al.len(),
            bl.len(),
            al[from..(first + 8).min(al.len())].join("\n"),
            bl[from..(first + 8).min(bl.len())].join("\n"),
        );
    }
}

/// A tokio-postgres client for `db`, for checks independent of dbops.
pub async fn client(server: &EphemeralPostgres, db: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host={} port={} user=postgres dbname='{db}'",
            server.socket_dir().display(),
            server.port()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .expect("test connection");
    tokio::spawn(conn);
    client
}

/// A session on database `db` of `server`, named `app` (its `application_name`), as
/// the superuser or as `login` (user, password), with its backend pid: the load and
/// the blockers of the maintenance, inspection and health tests.
pub async fn session(
    server: &EphemeralPostgres,
    db: &str,
    login: Option<(&str, &str)>,
    app: &str,
) -> (tokio_postgres::Client, i64) {
    let url = match login {
        None => format!("{}&application_name={app}", server.url_for(db)),
        Some((user, pw)) => format!(
            "postgres://{user}:{pw}@127.0.0.1:{}/{db}?sslmode=disable&application_name={app}",
            server.port()
        ),
    };
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("test session connects");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    (client, i64::from(pid))
}

/// Waits until the server shows session `pid` in `pg_stat_activity` as `state` (an
/// SQL condition on the row, such as `wait_event_type = 'Lock'`), for at most 5 s.
pub async fn wait_for_session(observer: &tokio_postgres::Client, pid: i64, state: &str) {
    let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND ({state})");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let n: i64 = observer
            .query_one(&sql, &[&(pid as i32)])
            .await
            .unwrap_or_else(|e| panic!("looking for session {pid}: {e}"))
            .get(0);
        if n > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "session {pid} is not {state} after 5 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Waits until session `pid` waits for a lock, for at most 5 s.
pub async fn wait_for_lock_wait(observer: &tokio_postgres::Client, pid: i64) {
    wait_for_session(observer, pid, "wait_event_type = 'Lock'").await;
}

/// The session with id `pid` of a session list.
pub fn session_with_id(
    sessions: &[ops_core::maintain::SessionInfo],
    pid: i64,
) -> Option<&ops_core::maintain::SessionInfo> {
    sessions.iter().find(|s| s.id == pid)
}

/// Terminates every session named `app` and waits until the server has none left.
pub async fn end_sessions_named(admin: &tokio_postgres::Client, app: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                  WHERE application_name = $1",
                &[&app],
            )
            .await
            .expect("terminating load sessions")
            .get(0);
        if left == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} sessions named {app} do not end"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Runs a scenario and prints how long it took.
pub async fn timed<F: std::future::Future<Output = ()>>(what: &str, scenario: F) {
    let started = std::time::Instant::now();
    scenario.await;
    eprintln!("--- {what}: {:.2} s", started.elapsed().as_secs_f64());
}

/// Rows of one query as text, for comparisons.
pub async fn rows_text(server: &EphemeralPostgres, db: &str, sql: &str) -> Vec<String> {
    let c = client(server, db).await;
    c.simple_query(sql)
        .await
        .expect("query")
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("<null>").to_owned())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect()
}

/// Per table: `schema.table|rows|md5 of sorted row md5s` over `FROM ONLY` each table.
pub async fn table_checksums(server: &EphemeralPostgres, db: &str) -> Vec<String> {
    let tables = rows_text(
        server,
        db,
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE (c.relkind = 'r' OR (c.relkind = 'm' AND c.relispopulated)) AND n.nspname NOT IN ('pg_catalog', 'information_schema')
            AND n.nspname !~ '^pg_' ORDER BY 1",
    )
    .await;
    let mut out = Vec::new();
    for t in tables {
        let r = rows_text(
            server,
            db,
            &format!(
                "SELECT count(*), md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))) FROM ONLY {t} t"
            ),
        )
        .await;
        out.push(format!("{t}|{}", r.join(";")));
    }
    out
}

/// Sequence values and large objects, which table checksums do not cover.
pub async fn non_table_state(server: &EphemeralPostgres, db: &str) -> Vec<String> {
    let mut out = rows_text(
        server,
        db,
        "SELECT schemaname, sequencename, last_value FROM pg_sequences ORDER BY 1, 2",
    )
    .await;
    out.extend(
        rows_text(
            server,
            db,
            "SELECT relname, relispopulated FROM pg_class WHERE relkind = 'm' ORDER BY 1",
        )
        .await,
    );
    out.extend(
        rows_text(
            server,
            db,
            "SELECT oid, md5(lo_get(oid)) FROM pg_largeobject_metadata ORDER BY 1",
        )
        .await,
    );
    out
}

/// Prints a message that cannot be missed in test output.
pub fn loud(message: &str) {
    let bar = "!".repeat(78);
    eprintln!("\n{bar}\n!!! {message}\n{bar}\n");
}

/// A repository target in a local directory, for tests that go through
/// `ops_core::repo::Repository` (ops-storage's targets are not a dependency of this
/// crate). Writes are atomic (a temporary file renamed, or hard-linked for
/// `put_if_absent`); reads load whole objects, which is fine for test sizes.
#[derive(Debug)]
pub struct DirTarget {
    root: PathBuf,
}

impl DirTarget {
    pub fn new(root: &Path) -> std::sync::Arc<Self> {
        std::fs::create_dir_all(root).expect("create the target directory");
        std::sync::Arc::new(Self {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn staged(&self, key: &str, data: &[u8]) -> ops_core::Result<tempfile::NamedTempFile> {
        use std::io::Write;
        let path = self.path(key);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| ops_core::Error::io("mkdir", e))?;
        let mut file =
            tempfile::NamedTempFile::new_in(&dir).map_err(|e| ops_core::Error::io("temp", e))?;
        file.write_all(data)
            .map_err(|e| ops_core::Error::io("write", e))?;
        Ok(file)
    }

    fn read(&self, key: &str) -> ops_core::Result<Vec<u8>> {
        std::fs::read(self.path(key)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ops_core::Error::new(ops_core::ErrorKind::NotFound, format!("no object {key}"))
            } else {
                ops_core::Error::io(format!("reading {key}"), e)
            }
        })
    }
}

#[async_trait::async_trait]
impl ops_core::BackupTarget for DirTarget {
    fn location(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn is_remote(&self) -> bool {
        false
    }

    async fn put(&self, key: &str, data: bytes::Bytes) -> ops_core::Result<()> {
        self.staged(key, &data)?
            .persist(self.path(key))
            .map_err(|e| ops_core::Error::io("rename", e.error))?;
        Ok(())
    }

    async fn put_stream(&self, key: &str, data: ops_core::ByteStream) -> ops_core::Result<u64> {
        use futures::StreamExt;
        let mut all = Vec::new();
        futures::pin_mut!(data);
        while let Some(piece) = data.next().await {
            all.extend_from_slice(&piece?);
        }
        let len = all.len() as u64;
        self.put(key, all.into()).await?;
        Ok(len)
    }

    async fn put_if_absent(
        &self,
        key: &str,
        data: bytes::Bytes,
    ) -> ops_core::Result<ops_core::PutOutcome> {
        let staged = self.staged(key, &data)?;
        match std::fs::hard_link(staged.path(), self.path(key)) {
            Ok(()) => Ok(ops_core::PutOutcome::Created),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok(ops_core::PutOutcome::AlreadyExists)
            }
            Err(e) => Err(ops_core::Error::io("link", e)),
        }
    }

    async fn get(&self, key: &str) -> ops_core::Result<ops_core::ByteStream> {
        let data = bytes::Bytes::from(self.read(key)?);
        Ok(Box::pin(futures::stream::iter([Ok(data)])))
    }

    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> ops_core::Result<bytes::Bytes> {
        let data = self.read(key)?;
        let (start, end) = (range.start as usize, range.end as usize);
        if start > end || end > data.len() {
            return Err(ops_core::Error::invalid(format!(
                "range {range:?} outside {key} ({} bytes)",
                data.len()
            )));
        }
        Ok(bytes::Bytes::copy_from_slice(&data[start..end]))
    }

    async fn head(&self, key: &str) -> ops_core::Result<Option<ops_core::ObjectMeta>> {
        match std::fs::metadata(self.path(key)) {
            Ok(m) => Ok(Some(ops_core::ObjectMeta {
                key: key.to_owned(),
                size: m.len(),
                modified: m
                    .modified()
                    .map_err(|e| ops_core::Error::io("mtime", e))?
                    .into(),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ops_core::Error::io("stat", e)),
        }
    }

    async fn list(&self, prefix: &str) -> ops_core::Result<ops_core::ObjectStream> {
        let mut found = Vec::new();
        let mut todo = vec![self.root.clone()];
        while let Some(dir) = todo.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    todo.push(path);
                    continue;
                }
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let key = rel.to_string_lossy().replace('\\', "/");
                // Staged temporary files are not objects.
                if key.starts_with(prefix)
                    && !rel
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(".tmp"))
                {
                    found.push(Ok(ops_core::ObjectMeta {
                        key,
                        size: meta.len(),
                        modified: meta
                            .modified()
                            .map_err(|e| ops_core::Error::io("mtime", e))?
                            .into(),
                    }));
                }
            }
        }
        Ok(Box::pin(futures::stream::iter(found)))
    }

    async fn delete(&self, key: &str) -> ops_core::Result<()> {
        match std::fs::remove_file(self.path(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ops_core::Error::io("delete", e)),
        }
    }
}

/// A repository (password-encrypted, cheap KDF, small packs) in `dir`.
pub async fn repository(dir: &Path) -> ops_core::repo::Repository {
    use ops_core::repo::{ChunkerParams, Encryption, InitOptions, KdfParams, Repository};
    let options = InitOptions::new(Encryption::Password(ops_core::Secret::new("repo-pw")))
        .with_kdf(KdfParams {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        })
        .with_pack_size(256 * 1024)
        .with_chunker(ChunkerParams {
            min: 1024,
            avg: 4096,
            max: 16384,
        });
    Repository::init(DirTarget::new(&dir.join("repo")), options)
        .await
        .expect("init the repository")
        .with_cache_dir(dir.join("cache"))
}
