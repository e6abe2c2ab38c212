//! A throwaway S3-API server on loopback for tests (feature `test-s3`).
//!
//! Starts `moto_server` (PyPI `moto[server]`) on a free port, creates a bucket, and
//! kills the server when dropped. Any crate's tests can use it:
//!
//! ```toml
//! [dev-dependencies]
//! ops-storage = { workspace = true, features = ["test-s3"] }
//! ```
//!
//! ```no_run
//! # fn main() -> ops_core::Result<()> {
//! use ops_storage::s3_test_server::S3TestServer;
//! let server = S3TestServer::start()?;
//! let target = ops_storage::open_target(&server.url("dbops-test"), &server.options())?;
//! // For a child process (the CLI), pass the same settings as environment:
//! // Command::new(bin).envs(server.env())
//! # Ok(()) }
//! ```
//!
//! A missing `moto_server` is an error that says how to install it, never a skip:
//! a test that silently does not run proves nothing.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ops_core::{Error, ErrorKind, Result};

use crate::TargetOptions;

/// The access key id the server's clients use (moto accepts any).
pub const ACCESS_KEY_ID: &str = "dbops-test-key";
/// The secret access key the server's clients use (moto accepts any).
pub const SECRET_ACCESS_KEY: &str = "dbops-test-secret";
/// The region the server's clients use.
pub const REGION: &str = "us-east-1";
/// The bucket [`S3TestServer::start`] creates.
pub const DEFAULT_BUCKET: &str = "dbops-test";

/// Environment variable naming the `moto_server` program, when it is not on `PATH`.
pub const MOTO_SERVER_ENV: &str = "DBOPS_MOTO_SERVER";

/// A running `moto_server`; killed on drop.
#[derive(Debug)]
pub struct S3TestServer {
    child: Child,
    port: u16,
    /// Holds the server's log; removed on drop.
    log_dir: tempfile::TempDir,
}

impl S3TestServer {
    /// Starts a server that, like real S3, rejects multipart parts below 5 MiB, and
    /// creates [`DEFAULT_BUCKET`].
    ///
    /// # Errors
    /// [`ErrorKind::MissingTool`] when `moto_server` is not installed (the message
    /// says `pip install 'moto[server]'`); [`ErrorKind::Io`] or
    /// [`ErrorKind::Unreachable`] when it does not start within 60 s.
    pub fn start() -> Result<Self> {
        Self::start_with_min_part_size(5 * 1024 * 1024)
    }

    /// Starts a server that accepts multipart parts down to `min_part_size` bytes, to
    /// test the part-size rule without uploading gigabytes.
    ///
    /// # Errors
    /// As [`S3TestServer::start`].
    pub fn start_with_min_part_size(min_part_size: u64) -> Result<Self> {
        let mut last = None;
        // The free port is found by binding and releasing it; another process can
        // take it in between, so try a few times.
        for _ in 0..3 {
            match Self::try_start(min_part_size) {
                Ok(server) => return Ok(server),
                Err(e) if e.kind() == ErrorKind::MissingTool => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::internal("moto_server did not start")))
    }

    fn try_start(min_part_size: u64) -> Result<Self> {
        let program = std::env::var_os(MOTO_SERVER_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("moto_server"));
        let port = free_port()?;
        let log_dir = tempfile::tempdir().map_err(|e| Error::io("creating a temp dir", e))?;
        let log_path = log_dir.path().join("moto.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Error::io("duplicating the log file handle", e))?;
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("S3_UPLOAD_PART_MIN_SIZE", min_part_size.to_string())
            // moto sizes its in-memory spool as the minimum part size minus 1 KiB,
            // which goes negative for tiny test parts: pin it.
            .env(
                "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE",
                (16 * 1024 * 1024).to_string(),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| {
                let kind = if e.kind() == std::io::ErrorKind::NotFound {
                    ErrorKind::MissingTool
                } else {
                    ErrorKind::Io
                };
                Error::new(
                    kind,
                    format!(
                        "cannot run {}: {e}; the S3 tests need a local S3 server: \
                         pip install 'moto[server]' (or set {MOTO_SERVER_ENV})",
                        program.display()
                    ),
                )
            })?;
        let mut server = Self {
            child,
            port,
            log_dir,
        };
        server.wait_ready(Duration::from_secs(60))?;
        server.create_bucket(DEFAULT_BUCKET)?;
        Ok(server)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_dir.path().join("moto.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = self.log();
                let kind = if log.contains("command not found") || status.code() == Some(127) {
                    ErrorKind::MissingTool
                } else {
                    ErrorKind::Io
                };
                return Err(Error::new(
                    kind,
                    format!(
                        "moto_server exited ({status}) before it was ready; \
                         install it with pip install 'moto[server]'. Its output:\n{log}"
                    ),
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(Error::new(
                    ErrorKind::Unreachable,
                    format!(
                        "moto_server did not listen on {addr} within {limit:?}. Its output:\n{}",
                        self.log()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates a bucket (moto accepts unsigned requests).
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the server refuses; [`ErrorKind::Io`] on a
    /// socket error.
    pub fn create_bucket(&self, bucket: &str) -> Result<()> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| Error::io(format!("connecting to moto_server at {addr}"), e))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| Error::io("setting a socket timeout", e))?;
        let request = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| Error::io("sending CreateBucket to moto_server", e))?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .map_err(|e| Error::io("reading moto_server's answer", e))?;
        let status = answer.split_whitespace().nth(1).unwrap_or("");
        if status == "200" {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Storage,
                format!("moto_server refused to create bucket {bucket}: {answer}"),
            ))
        }
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The endpoint URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The target URL of `bucket` (see [`S3TestServer::create_bucket`]; the
    /// [`DEFAULT_BUCKET`] exists already).
    pub fn url(&self, bucket: &str) -> String {
        format!("s3://{bucket}")
    }

    /// Options that point an `s3://` target at this server.
    pub fn options(&self) -> TargetOptions {
        TargetOptions::default()
            .with_endpoint(self.endpoint())
            .with_region(REGION)
            .with_credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY)
            .with_allow_http(true)
            .with_path_style(true)
    }

    /// The same settings as `AWS_*` environment variables, for a child process.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_owned()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".to_owned()),
        ]
    }
}

impl Drop for S3TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::io("finding a free loopback port", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::io("finding a free loopback port", e))?
        .port();
    Ok(port)
}
