//! A throwaway S3-API server on loopback for tests (feature `test-s3`).
//!
//! Starts `moto_server` (PyPI `moto[server]`) on a loopback port the kernel picks
//! (moto binds port 0 and logs the port; a port found free beforehand could be
//! taken by someone else before moto binds it), waits until that port answers
//! `GET /` with moto's `ListAllMyBucketsResult`, creates a bucket, and kills the
//! server when dropped. [`S3TestServer::start`] blocks the calling thread while it
//! waits; async tests use [`S3TestServer::start_async`]. Any crate's tests can use
//! it:
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
//! ```no_run
//! # async fn demo() -> ops_core::Result<()> {
//! // In a #[tokio::test]: the wait for moto runs on the blocking pool.
//! let server = ops_storage::s3_test_server::S3TestServer::start_async().await?;
//! // Multipart uploads started and neither completed nor aborted:
//! assert!(server.multipart_uploads_async("dbops-test").await?.is_empty());
//! # Ok(()) }
//! ```
//!
//! A missing `moto_server` is an error that says how to install it, never a skip:
//! a test that silently does not run proves nothing.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
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

/// How long [`S3TestServer::start`] waits for moto to answer.
const START_LIMIT: Duration = Duration::from_secs(60);
/// Pause between two readiness probes: short, so a waiting thread is back soon.
const POLL: Duration = Duration::from_millis(50);

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
    /// This blocks the calling thread until moto answers (a second or two, at most
    /// 60 s). Inside a multi-threaded Tokio runtime (`#[tokio::test(flavor =
    /// "multi_thread")]`) the wait runs under `block_in_place`, so the runtime's
    /// other tasks move to another worker; from async code prefer
    /// [`S3TestServer::start_async`], which works on any runtime.
    ///
    /// # Errors
    /// [`ErrorKind::MissingTool`] when `moto_server` is not installed (the message
    /// says `pip install 'moto[server]'`); [`ErrorKind::Io`] or
    /// [`ErrorKind::Unreachable`] when it does not start within 60 s.
    pub fn start() -> Result<Self> {
        Self::start_with_min_part_size(5 * 1024 * 1024)
    }

    /// Starts a server that accepts multipart parts down to `min_part_size` bytes, to
    /// test the part-size rule without uploading gigabytes. Blocks like
    /// [`S3TestServer::start`].
    ///
    /// # Errors
    /// As [`S3TestServer::start`].
    pub fn start_with_min_part_size(min_part_size: u64) -> Result<Self> {
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(|| Self::start_blocking(min_part_size))
        } else {
            Self::start_blocking(min_part_size)
        }
    }

    /// [`S3TestServer::start`] for async code: the wait runs on Tokio's blocking
    /// pool, never on a runtime worker.
    ///
    /// # Errors
    /// As [`S3TestServer::start`].
    pub async fn start_async() -> Result<Self> {
        Self::start_with_min_part_size_async(5 * 1024 * 1024).await
    }

    /// [`S3TestServer::start_with_min_part_size`] for async code (see
    /// [`S3TestServer::start_async`]).
    ///
    /// # Errors
    /// As [`S3TestServer::start`].
    pub async fn start_with_min_part_size_async(min_part_size: u64) -> Result<Self> {
        tokio::task::spawn_blocking(move || Self::start_blocking(min_part_size))
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Interrupted, "starting moto_server panicked").with_source(e)
            })?
    }

    fn start_blocking(min_part_size: u64) -> Result<Self> {
        let program = std::env::var_os(MOTO_SERVER_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("moto_server"));
        let log_dir = tempfile::tempdir().map_err(|e| Error::io("creating a temp dir", e))?;
        let log_path = log_dir.path().join("moto.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| Error::io("duplicating the log file handle", e))?;
        // Port 0: the server binds a port the kernel picks and logs it ("Running on
        // http://127.0.0.1:<port>"). Choosing a free port here and passing it would
        // leave a gap in which another process could take it.
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .env("S3_UPLOAD_PART_MIN_SIZE", min_part_size.to_string())
            // moto sizes its in-memory spool as the minimum part size minus 1 KiB,
            // which goes negative for tiny test parts: pin it.
            .env(
                "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE",
                (16 * 1024 * 1024).to_string(),
            )
            .env("PYTHONUNBUFFERED", "1")
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
            port: 0,
            log_dir,
        };
        server.wait_ready(START_LIMIT)?;
        server.create_bucket(DEFAULT_BUCKET)?;
        Ok(server)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_dir.path().join("moto.log")).unwrap_or_default()
    }

    /// The port moto logged that it runs on, once it did.
    fn logged_port(&self) -> Option<u16> {
        let log = self.log();
        let at = log.find("Running on http://127.0.0.1:")?;
        let digits: String = log[at + "Running on http://127.0.0.1:".len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok().filter(|port| *port != 0)
    }

    /// Waits until our moto answers: its log names the port, and `GET /` on that
    /// port returns moto's `ListAllMyBucketsResult`. Anything else listening there
    /// does not count.
    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let start = Instant::now();
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
            if self.port == 0
                && let Some(port) = self.logged_port()
            {
                self.port = port;
            }
            if self.port != 0
                && let Ok((200, body)) = self.request("GET", "/")
                && body.contains("ListAllMyBucketsResult")
            {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(Error::new(
                    ErrorKind::Unreachable,
                    format!(
                        "moto_server did not answer as S3 (port {}) within {limit:?}. \
                         Its output:\n{}",
                        self.port,
                        self.log()
                    ),
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    fn request(&self, method: &str, path: &str) -> Result<(u16, String)> {
        request(self.port, method, path)
    }

    /// Creates a bucket (moto accepts unsigned requests).
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the server refuses; [`ErrorKind::Io`] on a
    /// socket error.
    pub fn create_bucket(&self, bucket: &str) -> Result<()> {
        match self.request("PUT", &format!("/{bucket}"))? {
            (200, _) => Ok(()),
            (status, body) => Err(Error::new(
                ErrorKind::Storage,
                format!("moto_server refused to create bucket {bucket} ({status}): {body}"),
            )),
        }
    }

    /// The keys of the multipart uploads in progress in `bucket` (S3's
    /// ListMultipartUploads, `GET /bucket?uploads`): started, neither completed nor
    /// aborted. Their parts are invisible to `list` and `head`, so this is the only
    /// way to see that an upload was left behind. Up to 1,000 uploads.
    ///
    /// # Errors
    /// [`ErrorKind::Storage`] when the server refuses; [`ErrorKind::Io`] on a
    /// socket error.
    pub fn multipart_uploads(&self, bucket: &str) -> Result<Vec<String>> {
        multipart_uploads(self.port, bucket)
    }

    /// [`S3TestServer::multipart_uploads`] for async code (on Tokio's blocking
    /// pool).
    ///
    /// # Errors
    /// As [`S3TestServer::multipart_uploads`].
    pub async fn multipart_uploads_async(&self, bucket: &str) -> Result<Vec<String>> {
        let port = self.port;
        let bucket = bucket.to_owned();
        tokio::task::spawn_blocking(move || multipart_uploads(port, &bucket))
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Interrupted, "listing uploads panicked").with_source(e)
            })?
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

fn multipart_uploads(port: u16, bucket: &str) -> Result<Vec<String>> {
    let (status, body) = request(port, "GET", &format!("/{bucket}?uploads"))?;
    if status != 200 || !body.contains("ListMultipartUploadsResult") {
        return Err(Error::new(
            ErrorKind::Storage,
            format!("moto_server did not list the uploads of {bucket} ({status}): {body}"),
        ));
    }
    Ok(body
        .split("<Upload>")
        .skip(1)
        .filter_map(|upload| {
            let start = upload.find("<Key>")? + "<Key>".len();
            let end = start + upload[start..].find("</Key>")?;
            Some(xml_unescape(&upload[start..end]))
        })
        .collect())
}

/// One unsigned HTTP/1.0 request to moto on `port` (moto does not check
/// signatures; HTTP/1.0 keeps the answer free of chunked encoding). Returns the
/// status (0 when unreadable) and the body.
fn request(port: u16, method: &str, path: &str) -> Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| Error::io(format!("connecting to moto_server at {addr}"), e))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| Error::io("setting a socket timeout", e))?;
    let request =
        format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| Error::io(format!("sending {method} {path} to moto_server"), e))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| Error::io("reading moto_server's answer", e))?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn xml_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}
