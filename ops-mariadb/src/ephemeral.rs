//! A throwaway MariaDB server for tests, examples and `verify --restore`.
//!
//! [`EphemeralMariaDb::start`] runs `mariadb-install-db` into a temporary directory and
//! starts `mariadbd --no-defaults` on a free loopback port with a private socket, as
//! user `nobody` when running as root. Root may connect over TCP from 127.0.0.1 with
//! an empty password. The server is killed and its directory removed on drop. Missing
//! binaries are an [`ErrorKind::MissingTool`] error that names the package.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User};
use ops_core::ephemeral::EphemeralServer;
use ops_core::{Error, ErrorKind, Result};

/// The Debian package that holds the server binaries.
const PACKAGE_HINT: &str = "install it with `apt-get install mariadb-server`";
/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Options for an ephemeral server. `Default` is what tests want.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EphemeralOptions {
    /// Allow `LOAD DATA LOCAL INFILE` (`--local-infile`).
    pub local_infile: bool,
    /// InnoDB buffer pool size in MiB.
    pub buffer_pool_mb: u32,
    /// Extra `--option=value` arguments for `mariadbd`.
    pub extra_args: Vec<String>,
    /// TLS: the server's certificate and key (PEM), copied into the server's directory
    /// for its user.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The CA that client certificates must chain to (`--ssl-ca`).
    pub tls_client_ca: Option<PathBuf>,
    /// Refuse connections without TLS (`--require-secure-transport`); the Unix socket
    /// stays usable, as MariaDB counts it secure.
    pub tls_required: bool,
}

impl Default for EphemeralOptions {
    fn default() -> Self {
        Self {
            local_infile: true,
            buffer_pool_mb: 64,
            extra_args: Vec::new(),
            tls: None,
            tls_client_ca: None,
            tls_required: false,
        }
    }
}

impl EphemeralOptions {
    /// Sets `--local-infile`.
    #[must_use]
    pub fn with_local_infile(mut self, on: bool) -> Self {
        self.local_infile = on;
        self
    }

    /// Sets the InnoDB buffer pool size in MiB.
    #[must_use]
    pub fn with_buffer_pool_mb(mut self, mb: u32) -> Self {
        self.buffer_pool_mb = mb.max(8);
        self
    }

    /// Adds a `mariadbd` argument such as `--max-connections=20`.
    #[must_use]
    pub fn with_arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Turns TLS on with this certificate and key (PEM files).
    #[must_use]
    pub fn with_tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls = Some((cert.into(), key.into()));
        self
    }

    /// Verifies client certificates against this CA (for accounts that `REQUIRE X509`).
    #[must_use]
    pub fn with_tls_client_ca(mut self, ca: impl Into<PathBuf>) -> Self {
        self.tls_client_ca = Some(ca.into());
        self
    }

    /// Refuses TCP connections that do not use TLS (with [`EphemeralOptions::with_tls`]).
    #[must_use]
    pub fn with_tls_required(mut self) -> Self {
        self.tls_required = true;
        self
    }

    /// Starts a server with these options.
    ///
    /// # Errors
    /// See [`EphemeralMariaDb::start`].
    pub async fn start(self) -> Result<EphemeralMariaDb> {
        EphemeralMariaDb::start_with(self).await
    }
}

/// A running throwaway server. Dropping it kills the server and removes its files.
#[derive(Debug)]
pub struct EphemeralMariaDb {
    child: Option<Child>,
    port: u16,
    socket: PathBuf,
    error_log: PathBuf,
    /// The server speaks TLS: the set-up connections use it (unverified: they only
    /// prepare the throwaway server).
    tls: bool,
    // Last: removed after the server is gone.
    dir: tempfile::TempDir,
}

impl EphemeralMariaDb {
    /// Starts a server with default options (`local_infile` on, binlog on).
    ///
    /// # Errors
    /// [`ErrorKind::MissingTool`] when `mariadbd` or `mariadb-install-db` is not
    /// installed; [`ErrorKind::Io`] when the data directory cannot be made;
    /// [`ErrorKind::Internal`] when the server does not come up (the message carries
    /// the end of its error log).
    pub async fn start() -> Result<Self> {
        Self::start_with(EphemeralOptions::default()).await
    }

    /// Options to start a server with (for example without `local_infile`).
    pub fn builder() -> EphemeralOptions {
        EphemeralOptions::default()
    }

    async fn start_with(options: EphemeralOptions) -> Result<Self> {
        let mariadbd = find_tool(&["mariadbd", "mysqld"])?;
        let install_db = find_tool(&["mariadb-install-db", "mysql_install_db"])?;
        let dir = tempfile::Builder::new()
            .prefix("dbops-mariadb-")
            .tempdir()
            .map_err(|e| Error::io("creating a temporary directory", e))?;
        let owner = if nix::unistd::geteuid().is_root() {
            let user = User::from_name("nobody")
                .map_err(|e| Error::internal(format!("looking up user nobody: {e}")))?
                .ok_or_else(|| Error::internal("running as root but there is no user 'nobody'"))?;
            Some((user.uid, user.gid))
        } else {
            None
        };
        let data = dir.path().join("data");
        std::fs::create_dir(&data).map_err(|e| Error::io("creating the data directory", e))?;
        // A private tmpdir: temporary table files are named after the pid, and a
        // killed server's leftovers in a shared /tmp break a later server that got
        // the same pid.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).map_err(|e| Error::io("creating the tmp directory", e))?;
        if let Some((uid, gid)) = owner {
            for p in [dir.path(), &data, &tmp] {
                nix::unistd::chown(p, Some(uid), Some(gid))
                    .map_err(|e| Error::internal(format!("chown {}: {e}", p.display())))?;
            }
        }
        let install_log = dir.path().join("install.log");
        let mut install = Command::new(&install_db);
        install
            .arg("--no-defaults")
            .arg("--auth-root-authentication-method=normal")
            .arg(format!("--datadir={}", data.display()))
            .arg("--skip-test-db")
            .arg("--skip-name-resolve")
            .arg(format!("--tmpdir={}", tmp.display()))
            .stdin(Stdio::null())
            .stdout(log_file(&install_log)?)
            .stderr(log_file(&install_log)?);
        if let Some((uid, gid)) = owner {
            install.uid(uid.as_raw()).gid(gid.as_raw());
        }
        let status = tokio::task::spawn_blocking(move || install.status())
            .await
            .map_err(|e| Error::internal(format!("running mariadb-install-db: {e}")))?
            .map_err(|e| Error::io(format!("running {}", install_db.display()), e))?;
        if !status.success() {
            return Err(Error::internal(format!(
                "mariadb-install-db failed ({status}): {}",
                tail(&install_log)
            )));
        }

        let tls_args = tls_args(&options, dir.path(), owner)?;
        let tls = !tls_args.is_empty();
        let socket = dir.path().join("mysqld.sock");
        let error_log = dir.path().join("error.log");
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port()?;
            let mut cmd = Command::new(&mariadbd);
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--tmpdir={}", tmp.display()))
                .arg(format!("--port={port}"))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--socket={}", socket.display()))
                .arg(format!(
                    "--pid-file={}",
                    dir.path().join("mysqld.pid").display()
                ))
                .arg(format!("--log-error={}", error_log.display()))
                .arg(format!("--log-bin={}", dir.path().join("binlog").display()))
                .arg("--server-id=1")
                .arg(format!("--local-infile={}", u8::from(options.local_infile)))
                .arg(format!(
                    "--innodb-buffer-pool-size={}M",
                    options.buffer_pool_mb
                ))
                .arg("--innodb-log-file-size=64M")
                .arg("--innodb-flush-log-at-trx-commit=2")
                .arg("--innodb-doublewrite=0")
                .arg("--sync-binlog=0")
                .arg("--skip-name-resolve")
                .arg("--performance-schema=OFF")
                .arg("--max-connections=200")
                .arg("--character-set-server=utf8mb4")
                .arg("--collation-server=utf8mb4_general_ci")
                .args(&tls_args)
                .args(&options.extra_args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(&dir.path().join("stderr.log"))?);
            if let Some((uid, gid)) = owner {
                cmd.uid(uid.as_raw()).gid(gid.as_raw());
            }
            let mut child = cmd
                .spawn()
                .map_err(|e| Error::io(format!("starting {}", mariadbd.display()), e))?;
            match wait_ready(&mut child, port, tls).await {
                Ok(()) => {
                    let server = Self {
                        child: Some(child),
                        port,
                        socket,
                        error_log,
                        tls,
                        dir,
                    };
                    server.prepare_accounts().await?;
                    return Ok(server);
                }
                Err(e) => {
                    stop(&mut child);
                    let log = tail(&error_log);
                    // Someone took the port between probing and binding: try another.
                    let retry = log.contains("Address already in use");
                    last_error = Some(e.with_message(format!("mariadbd did not start: {log}")));
                    if !retry {
                        break;
                    }
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::internal("mariadbd did not start")))
    }

    /// Makes root usable from any loopback address, as the docs promise.
    async fn prepare_accounts(&self) -> Result<()> {
        self.execute(
            "",
            "CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY ''; \
             GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION",
        )
        .await
    }

    /// Runs SQL (several statements allowed) as root with `db` as the default
    /// database; an empty `db` means none.
    ///
    /// # Errors
    /// Connection and database errors.
    pub async fn execute(&self, db: &str, sql: &str) -> Result<()> {
        let opts = admin_opts(self.port, self.tls).db_name((!db.is_empty()).then_some(db));
        let mut conn = mysql_async::Conn::new(opts)
            .await
            .map_err(crate::error::db_error)?;
        conn.query_drop(sql).await.map_err(crate::error::db_error)?;
        let _ = conn.disconnect().await;
        Ok(())
    }

    /// Creates database `name` (the server's default character set, utf8mb4).
    ///
    /// # Errors
    /// Connection and database errors, e.g. when it exists.
    pub async fn create_database(&self, name: &str) -> Result<()> {
        self.execute(
            "",
            &format!("CREATE DATABASE {}", crate::format::quote_ident(name)),
        )
        .await
    }

    /// The server URL without a database: `mariadb://root@127.0.0.1:PORT/?password=`.
    ///
    /// The empty `password=` says that root has no password here: without it an
    /// engine would look for one in `MARIADB_PWD`, `MYSQL_PWD` and `~/.my.cnf`, which
    /// hold the operator's password for their own servers, not for this one.
    pub fn url(&self) -> String {
        self.url_for("")
    }

    /// The URL of database `db` on this server (see [`EphemeralMariaDb::url`]).
    pub fn url_for(&self, db: &str) -> String {
        format!(
            "mariadb://root@127.0.0.1:{}/{}?password=",
            self.port,
            url::form_urlencoded::byte_serialize(db.as_bytes())
                .collect::<String>()
                .replace('+', "%20")
        )
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory holding the data directory, logs and socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The Unix socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The server's error log (to show when a test fails).
    pub fn error_log(&self) -> String {
        tail(&self.error_log)
    }

    /// Kills the server with SIGKILL (for "server died mid-backup" tests). The files
    /// stay until drop.
    pub fn kill(&mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child);
        }
    }
}

/// The engine-neutral shape (for callers that pick the engine at run time); every
/// method is the inherent one of the same name.
#[deny(clippy::missing_trait_methods)]
#[async_trait]
impl EphemeralServer for EphemeralMariaDb {
    fn engine(&self) -> &'static str {
        "mariadb"
    }

    fn url(&self) -> String {
        EphemeralMariaDb::url(self)
    }

    fn url_for(&self, db: &str) -> String {
        EphemeralMariaDb::url_for(self, db)
    }

    fn port(&self) -> u16 {
        EphemeralMariaDb::port(self)
    }

    async fn create_database(&self, name: &str) -> Result<()> {
        EphemeralMariaDb::create_database(self, name).await
    }

    async fn execute(&self, db: &str, sql: &str) -> Result<()> {
        EphemeralMariaDb::execute(self, db, sql).await
    }
}

fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.wait();
}

/// How the set-up connects: root over TCP, with TLS (unverified) when the server has it.
fn admin_opts(port: u16, tls: bool) -> mysql_async::OptsBuilder {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some("root"))
        .prefer_socket(false)
        .ssl_opts(tls.then(|| {
            mysql_async::SslOpts::default()
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true)
        }))
}

/// The `mariadbd` arguments for [`EphemeralOptions::tls`], with the files copied into
/// `dir` for the server's user.
fn tls_args(
    options: &EphemeralOptions,
    dir: &Path,
    owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
) -> Result<Vec<String>> {
    use std::os::unix::fs::PermissionsExt;
    let Some((cert, key)) = &options.tls else {
        return Ok(Vec::new());
    };
    let mut files = vec![
        (cert, "server.crt", "ssl-cert"),
        (key, "server.key", "ssl-key"),
    ];
    if let Some(ca) = &options.tls_client_ca {
        files.push((ca, "client-ca.crt", "ssl-ca"));
    }
    let mut args = Vec::new();
    for (from, name, option) in files {
        let to = dir.join(name);
        std::fs::copy(from, &to)
            .map_err(|e| Error::io(format!("copying {} for the server", from.display()), e))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("making {} private", to.display()), e))?;
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(&to, Some(uid), Some(gid))
                .map_err(|e| Error::internal(format!("chown {}: {e}", to.display())))?;
        }
        args.push(format!("--{option}={}", to.display()));
    }
    if options.tls_required {
        args.push("--require-secure-transport=ON".to_owned());
    }
    Ok(args)
}

async fn wait_ready(child: &mut Child, port: u16, tls: bool) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::internal(format!("mariadbd exited with {status}")));
        }
        if let Ok(conn) = mysql_async::Conn::new(admin_opts(port, tls)).await {
            let _ = conn.disconnect().await;
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::internal(
                "mariadbd did not accept connections in time",
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for EphemeralMariaDb {
    fn drop(&mut self) {
        // The data is thrown away, so there is nothing to shut down cleanly.
        self.stop();
    }
}

fn find_tool(names: &[&str]) -> Result<PathBuf> {
    find_program(names, PACKAGE_HINT)
}

/// The first of `names` found on the `PATH` or in the usual MariaDB directories;
/// missing, [`ErrorKind::MissingTool`] with `hint` (which package installs it).
pub(crate) fn find_program(names: &[&str], hint: &str) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/local/mysql/bin",
    ] {
        dirs.push(PathBuf::from(extra));
    }
    for name in names {
        for d in &dirs {
            let p = d.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(Error::new(
        ErrorKind::MissingTool,
        format!("{} is not installed: {hint}", names[0]),
    ))
}

fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("finding a free port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::io("finding a free port", e))?
        .port();
    Ok(port)
}

fn log_file(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))
}

/// The error lines and the last lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut shown: Vec<&str> = lines
        .iter()
        .filter(|l| l.contains("ERROR") || l.contains("[ERROR]") || l.contains("rror:"))
        .take(10)
        .copied()
        .collect();
    shown.extend_from_slice(&lines[lines.len().saturating_sub(8)..]);
    shown.join("\n")
}
