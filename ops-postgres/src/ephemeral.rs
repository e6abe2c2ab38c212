//! A throwaway PostgreSQL server for tests, examples and `verify --restore`.
//!
//! [`EphemeralPostgres::start`] runs `initdb` into a temporary directory and starts
//! `postgres` on a free loopback port with its Unix socket inside that directory,
//! tuned for speed over durability (`fsync=off`, `synchronous_commit=off`,
//! `full_page_writes=off`). When the process runs as root, the server runs as `nobody`
//! (PostgreSQL refuses to run as root). Dropping the value stops the server
//! (immediate shutdown) and removes the directory. Nothing here is for data that
//! must survive; but `verify --restore` loads decrypted backups into it, so it is not
//! open to other local users: TCP needs a SCRAM password (random unless given, and
//! part of [`EphemeralPostgres::url`]), and the Unix socket, which trusts, lives in a
//! directory only the server's user can enter.

use std::fmt;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Gid, Pid, Uid};
use ops_core::ephemeral::EphemeralServer;
use ops_core::{Error, ErrorKind, Result, Secret};

use crate::PostgresEngine;
use crate::tools;

/// How to start an [`EphemeralPostgres`]. `Default`: TCP connections need a random
/// password (SCRAM-SHA-256), which [`EphemeralPostgres::url`] carries; the Unix socket
/// (in a directory only the server's user can enter) trusts.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct EphemeralOptions {
    /// The password of the `postgres` superuser on TCP (SCRAM-SHA-256); `None`: a
    /// random one. The Unix socket stays `trust`.
    pub superuser_password: Option<Secret>,
    /// Extra server settings (`-c name=value`).
    pub settings: Vec<(String, String)>,
    /// TLS: the server's certificate and key (PEM), copied into the server's directory
    /// and given to its user with the key at 0600, as PostgreSQL demands.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Refuse TCP connections without TLS (`hostssl` lines only in pg_hba.conf).
    pub tls_required: bool,
}

impl EphemeralOptions {
    /// Gives `postgres` this password (instead of a random one) for TCP connections.
    #[must_use]
    pub fn with_password_auth(mut self, password: impl Into<String>) -> Self {
        self.superuser_password = Some(Secret::new(password.into()));
        self
    }

    /// Turns TLS on (`ssl=on`) with this certificate and key (PEM files).
    #[must_use]
    pub fn with_tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls = Some((cert.into(), key.into()));
        self
    }

    /// Refuses TCP connections that do not use TLS (with [`EphemeralOptions::with_tls`]).
    #[must_use]
    pub fn with_tls_required(mut self) -> Self {
        self.tls_required = true;
        self
    }

    /// Adds a server setting.
    #[must_use]
    pub fn with_setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }
}

/// A running throwaway server. See the module documentation.
pub struct EphemeralPostgres {
    dir: Option<tempfile::TempDir>,
    bin_dir: PathBuf,
    port: u16,
    password: Secret,
    child: Mutex<Option<Child>>,
}

impl fmt::Debug for EphemeralPostgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EphemeralPostgres")
            .field("port", &self.port)
            .field("dir", &self.dir.as_ref().map(|d| d.path().to_path_buf()))
            .field("bin_dir", &self.bin_dir)
            .field("password", &self.password)
            .finish()
    }
}

/// The user the server runs as when we are root.
fn unprivileged() -> Result<Option<(Uid, Gid)>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name("nobody") {
        Ok(Some(u)) => Ok(Some((u.uid, u.gid))),
        _ => Err(Error::new(
            ErrorKind::MissingTool,
            "running as root, and there is no user 'nobody' to run PostgreSQL as",
        )),
    }
}

/// 128 random bits, hex: safe in a URL as it is.
fn random_password() -> Result<Secret> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::io("reading /dev/urandom for the server password", e))?;
    Ok(Secret::new(
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    ))
}

/// A free TCP port on 127.0.0.1 (free when asked: a server started later may still
/// lose it to another process; callers retry).
pub(crate) fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io("finding a free loopback port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::io("finding a free loopback port", e))?
        .port();
    Ok(port)
}

fn chown(path: &Path, owner: Option<(Uid, Gid)>) -> Result<()> {
    if let Some((uid, gid)) = owner {
        nix::unistd::chown(path, Some(uid), Some(gid)).map_err(|e| {
            Error::io(
                format!("giving {} to the server user", path.display()),
                std::io::Error::from(e),
            )
        })?;
    }
    Ok(())
}

fn run_as(cmd: &mut Command, owner: Option<(Uid, Gid)>) {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid.as_raw()).gid(gid.as_raw());
    }
}

impl EphemeralPostgres {
    /// Starts a server with [`EphemeralOptions::default`].
    ///
    /// # Errors
    /// [`ErrorKind::MissingTool`] (naming the package) when initdb or postgres are not
    /// installed; I/O errors; a server that does not come up (its log is quoted).
    pub async fn start() -> Result<Self> {
        Self::start_with(EphemeralOptions::default()).await
    }

    /// Starts a server with `options`.
    ///
    /// # Errors
    /// As [`EphemeralPostgres::start`].
    pub async fn start_with(options: EphemeralOptions) -> Result<Self> {
        tokio::task::spawn_blocking(move || Self::start_blocking(&options))
            .await
            .map_err(|e| Error::internal(format!("server start task failed: {e}")))?
    }

    fn start_blocking(options: &EphemeralOptions) -> Result<Self> {
        let bin_dir = tools::find_server_bin_dir()?;
        let owner = unprivileged()?;
        let dir = tempfile::Builder::new()
            .prefix("dbops-pg-")
            .tempdir()
            .map_err(|e| Error::io("creating the server directory", e))?;
        // Private: the Unix socket inside trusts whoever reaches it.
        let private = |path: &Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io(format!("making {} private", path.display()), e))
        };
        private(dir.path())?;
        chown(dir.path(), owner)?;
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        std::fs::create_dir(&sock).map_err(|e| Error::io("creating the socket directory", e))?;
        private(&sock)?;
        chown(&sock, owner)?;

        let password = match &options.superuser_password {
            Some(pw) => pw.clone(),
            None => random_password()?,
        };
        let mut initdb = Command::new(bin_dir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .arg("--no-sync")
            .current_dir(dir.path())
            .env_remove("PGDATA")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // The directory is 0700 (tempfile), so the password file is private too.
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", password.expose()))
            .map_err(|e| Error::io("writing the password file", e))?;
        chown(&pwfile, owner)?;
        initdb.arg(format!("--pwfile={}", pwfile.display()));
        run_as(&mut initdb, owner);
        let out = initdb
            .output()
            .map_err(|e| Error::io(format!("running {}", bin_dir.join("initdb").display()), e))?;
        let _ = std::fs::remove_file(dir.path().join("pwfile"));
        if !out.status.success() {
            return Err(Error::new(
                ErrorKind::Database,
                format!(
                    "initdb failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }

        setup_tls(options, dir.path(), &data, owner)?;
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = free_port()?;
            let log_path = dir.path().join("server.log");
            let log =
                File::create(&log_path).map_err(|e| Error::io("creating the server log", e))?;
            let log2 = log
                .try_clone()
                .map_err(|e| Error::io("creating the server log", e))?;
            let mut cmd = Command::new(bin_dir.join("postgres"));
            cmd.arg("-D")
                .arg(&data)
                .arg("-p")
                .arg(port.to_string())
                .arg("-k")
                .arg(&sock);
            let mut settings: Vec<(String, String)> = [
                ("listen_addresses", "127.0.0.1"),
                ("fsync", "off"),
                ("synchronous_commit", "off"),
                ("full_page_writes", "off"),
                ("max_connections", "50"),
                ("shared_buffers", "32MB"),
                ("max_wal_size", "1GB"),
                ("logging_collector", "off"),
                // The socket trusts: only the server's own user (and root) may use it.
                ("unix_socket_permissions", "0700"),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
            settings.extend(options.settings.iter().cloned());
            for (k, v) in &settings {
                cmd.arg("-c").arg(format!("{k}={v}"));
            }
            cmd.current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(log2))
                .process_group(0);
            run_as(&mut cmd, owner);
            let mut child = cmd.spawn().map_err(|e| {
                Error::io(
                    format!("starting {}", bin_dir.join("postgres").display()),
                    e,
                )
            })?;
            match wait_ready(&mut child, &data, &log_path) {
                Ok(()) => {
                    return Ok(Self {
                        dir: Some(dir),
                        bin_dir,
                        port,
                        password,
                        child: Mutex::new(Some(child)),
                    });
                }
                Err(log) => {
                    // The postmaster leads its own process group: end every process
                    // it started, not only itself.
                    if let Ok(pid) = pid_of(&child) {
                        let _ = killpg(pid, Signal::SIGKILL);
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                    let retry = log.contains("could not bind") || log.contains("already in use");
                    last_log = log;
                    if !retry {
                        break;
                    }
                }
            }
        }
        Err(Error::new(
            ErrorKind::Database,
            format!("the ephemeral PostgreSQL server did not start: {last_log}"),
        ))
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres?sslmode=disable`. It holds
    /// the password: redact it (`ops_core::redact_url`) before showing it.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of database `db` on this server.
    pub fn url_for(&self, db: &str) -> String {
        let db: String = url::form_urlencoded::byte_serialize(db.as_bytes())
            .collect::<String>()
            .replace('+', "%20");
        let auth = format!(
            "postgres:{}",
            url::form_urlencoded::byte_serialize(self.password.expose().as_bytes())
                .collect::<String>()
                .replace('+', "%20")
        );
        format!(
            "postgres://{auth}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// An engine bound to database `db` on this server.
    ///
    /// # Errors
    /// Never in practice: the URL is well formed.
    pub fn engine_for(&self, db: &str) -> Result<PostgresEngine> {
        Ok(PostgresEngine::new(&self.url_for(db))?.with_bin_dir(self.bin_dir.clone()))
    }

    /// The directory of the server's programs (initdb, postgres, pg_dump, psql, …).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.root().join("sock")
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.root().join("server.log")
    }

    fn root(&self) -> PathBuf {
        self.dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .unwrap_or_default()
    }

    /// Runs SQL statements in database `db` (through the Unix socket, as `postgres`).
    ///
    /// # Errors
    /// Connection and database errors.
    pub async fn execute(&self, db: &str, sql: &str) -> Result<()> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(self.socket_dir())
            .port(self.port)
            .user("postgres")
            .dbname(db);
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| crate::errors::connect_error(e, &format!("ephemeral server, db {db}")))?;
        let driver = tokio::spawn(connection);
        let result = client
            .batch_execute(sql)
            .await
            .map_err(|e| crate::errors::query_error(e, "running SQL on the ephemeral server"));
        drop(client);
        let _ = driver.await;
        result
    }

    /// Creates database `name` (UTF8, from template0).
    ///
    /// # Errors
    /// Database errors, e.g. when it exists.
    pub async fn create_database(&self, name: &str) -> Result<()> {
        self.execute(
            "postgres",
            &format!(
                "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'",
                crate::session::quote_ident(name)
            ),
        )
        .await
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Kills the server and all its processes with SIGKILL, as a crash would.
    ///
    /// # Errors
    /// The signal cannot be sent.
    pub fn kill(&self) -> Result<()> {
        let mut guard = self.child();
        if let Some(child) = guard.as_mut() {
            let pid = pid_of(child)?;
            // The postmaster leads its own process group: this reaches every backend.
            killpg(pid, Signal::SIGKILL)
                .map_err(|e| Error::io("killing the server", std::io::Error::from(e)))?;
            let _ = child.wait();
        }
        *guard = None;
        Ok(())
    }

    /// Stops the server cleanly (fast shutdown) and removes its directory.
    ///
    /// # Errors
    /// The server does not stop within a minute.
    pub async fn stop(mut self) -> Result<()> {
        let child = self.child().take();
        if let Some(mut child) = child {
            let pid = pid_of(&child)?;
            let _ = kill(pid, Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    _ => {
                        let _ = killpg(pid, Signal::SIGKILL);
                        let _ = child.wait();
                        return Err(Error::new(
                            ErrorKind::Interrupted,
                            "the ephemeral server did not stop within a minute; killed it",
                        ));
                    }
                }
            }
        }
        if let Some(dir) = self.dir.take() {
            dir.close()
                .map_err(|e| Error::io("removing the server directory", e))?;
        }
        Ok(())
    }
}

/// [`EphemeralOptions::tls`]: the certificate and key copied into `dir` for the
/// server's user (the key 0600: PostgreSQL refuses a key others can read) and named in
/// postgresql.conf (not on the command line, so that `ALTER SYSTEM` can still turn TLS
/// off); with [`EphemeralOptions::tls_required`] pg_hba.conf's `host` lines made
/// `hostssl`, so that a plain TCP connection finds no line that lets it in.
fn setup_tls(
    options: &EphemeralOptions,
    dir: &Path,
    data: &Path,
    owner: Option<(Uid, Gid)>,
) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let Some((cert, key)) = &options.tls else {
        return Ok(());
    };
    let mut conf = String::from("ssl = on\n");
    for (from, name, setting) in [
        (cert, "server.crt", "ssl_cert_file"),
        (key, "server.key", "ssl_key_file"),
    ] {
        let to = dir.join(name);
        std::fs::copy(from, &to)
            .map_err(|e| Error::io(format!("copying {} for the server", from.display()), e))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("making {} private", to.display()), e))?;
        chown(&to, owner)?;
        conf.push_str(&format!("{setting} = '{}'\n", to.display()));
    }
    let conf_path = data.join("postgresql.conf");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&conf_path)
        .and_then(|mut f| f.write_all(conf.as_bytes()))
        .map_err(|e| Error::io(format!("writing {}", conf_path.display()), e))?;
    if options.tls_required {
        let hba = data.join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba)
            .map_err(|e| Error::io(format!("reading {}", hba.display()), e))?;
        let text: String = text
            .lines()
            .map(|l| match l.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        std::fs::write(&hba, text)
            .map_err(|e| Error::io(format!("writing {}", hba.display()), e))?;
    }
    Ok(())
}

/// The engine-neutral shape (for callers that pick the engine at run time); every
/// method is the inherent one of the same name.
#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl EphemeralServer for EphemeralPostgres {
    fn engine(&self) -> &'static str {
        "postgresql"
    }

    fn url(&self) -> String {
        EphemeralPostgres::url(self)
    }

    fn url_for(&self, db: &str) -> String {
        EphemeralPostgres::url_for(self, db)
    }

    fn port(&self) -> u16 {
        EphemeralPostgres::port(self)
    }

    async fn create_database(&self, name: &str) -> Result<()> {
        EphemeralPostgres::create_database(self, name).await
    }

    async fn execute(&self, db: &str, sql: &str) -> Result<()> {
        EphemeralPostgres::execute(self, db, sql).await
    }
}

pub(crate) fn pid_of(child: &Child) -> Result<Pid> {
    i32::try_from(child.id())
        .map(Pid::from_raw)
        .map_err(|_| Error::internal("process id out of range"))
}

/// Stops a postmaster started as our child at once, as `pg_ctl stop -m immediate`
/// does (SIGQUIT), waits up to `grace` (a Drop may run on an async worker: keep it
/// short), then kills whatever of its process group is left, and reaps it.
pub(crate) fn stop_immediately(mut child: Child, grace: Duration) {
    if let Ok(pid) = pid_of(&child) {
        let _ = kill(pid, Signal::SIGQUIT);
        let deadline = Instant::now() + grace;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = killpg(pid, Signal::SIGKILL);
    }
    let _ = child.wait();
}

impl Drop for EphemeralPostgres {
    fn drop(&mut self) {
        let mut guard = self.child();
        if let Some(child) = guard.take() {
            // Nothing here must survive anyway.
            stop_immediately(child, Duration::from_millis(500));
        }
        drop(guard);
        // TempDir's own Drop removes the directory.
        self.dir.take();
    }
}

/// Waits until postmaster.pid says `ready`; on failure returns the server log.
fn wait_ready(child: &mut Child, data: &Path, log: &Path) -> std::result::Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let read_log = || std::fs::read_to_string(log).unwrap_or_default();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("postgres exited ({status}): {}", read_log().trim()));
        }
        if let Ok(pid_file) = std::fs::read_to_string(data.join("postmaster.pid"))
            && pid_file.lines().nth(7).map(str::trim) == Some("ready")
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("not ready after 60 s: {}", read_log().trim()));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
