//! The notifiers against real receivers on this machine: a small HTTP server written
//! here (webhook, Slack, pings), an SMTP server from Python's aiosmtpd (plain, and
//! STARTTLS with a throwaway CA from `openssl`), and real commands under `sh`. Each
//! notifier runs the shared conformance suite; then what an operator meets when a
//! receiver fails, hangs or refuses, and that no secret shows anywhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ops_agent::notify::{
    self, Channel, CommandOptions, Delivery, EmailOptions, NotifierSpec, PingOptions, SlackOptions,
    SmtpSecurity, WebhookOptions,
};
use ops_core::testkit::notifier::{conformance, sample_event};
use ops_core::{ErrorKind, EventKind, Secret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

// ---------------------------------------------------------------------------------
// An HTTP receiver: records every request, answers with a chosen status, or never.

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: String,
}

/// Answers every request with `status`; 0 means never answer (hold the connection).
struct Receiver {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(status: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(status));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (status.clone(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(socket, s.clone(), r.clone()));
            }
        });
        Self {
            addr,
            status,
            requests,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// The requests received since the last call.
    fn take(&self) -> Vec<Request> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request per connection: read the head and a `Content-Length` body, record it,
/// answer (or not) and close.
async fn serve(
    mut socket: tokio::net::TcpStream,
    status: Arc<AtomicU16>,
    requests: Arc<Mutex<Vec<Request>>>,
) {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let mut chunk = [0u8; 4096];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    requests.lock().unwrap().push(Request {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let status = status.load(Ordering::SeqCst);
    if status == 0 {
        // A receiver that took the request and went quiet.
        tokio::time::sleep(Duration::from_secs(60)).await;
        return;
    }
    let answer =
        format!("HTTP/1.1 {status} Test\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
    let _ = socket.write_all(answer.as_bytes()).await;
    let _ = socket.shutdown().await;
}

/// A port on 127.0.0.1 where nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------
// An SMTP receiver: aiosmtpd in a child process, one file per message.

const SMTP_SERVER: &str = r#"
import os, ssl, sys
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, outdir = int(sys.argv[1]), sys.argv[2]
user, password = os.environ.get("SMTP_USER"), os.environ.get("SMTP_PASSWORD")
cert, key = os.environ.get("SMTP_CERT"), os.environ.get("SMTP_KEY")

class Mailbox:
    count = 0
    async def handle_DATA(self, server, session, envelope):
        Mailbox.count += 1
        path = os.path.join(outdir, "%04d.eml" % Mailbox.count)
        with open(path + ".tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(path + ".tmp", path)
        return "250 OK"

def authenticate(server, session, envelope, mechanism, auth_data):
    ok = (isinstance(auth_data, LoginPassword)
          and auth_data.login == user.encode() and auth_data.password == password.encode())
    return AuthResult(success=ok, handled=False)

kwargs = {}
if user:
    kwargs.update(authenticator=authenticate, auth_require_tls=bool(cert))
if cert:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    kwargs.update(tls_context=context, require_starttls=True)
controller = Controller(Mailbox(), hostname="127.0.0.1", port=port, **kwargs)
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()
"#;

struct SmtpServer {
    port: u16,
    mailbox: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

/// Login and TLS for the test SMTP server.
#[derive(Default)]
struct SmtpSetup {
    login: Option<(&'static str, &'static str)>,
    starttls: bool,
}

impl SmtpServer {
    fn start(setup: SmtpSetup) -> (Self, Option<Vec<u8>>) {
        let python = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .output();
        match python {
            Ok(out) if out.status.success() => {}
            _ => panic!(
                "the e-mail tests need Python's aiosmtpd as their SMTP server: run `pip install aiosmtpd` (scripts/test installs it)"
            ),
        }
        let dir = tempfile::tempdir().unwrap();
        let mailbox = dir.path().join("mail");
        std::fs::create_dir(&mailbox).unwrap();
        let script = dir.path().join("smtp_server.py");
        std::fs::write(&script, SMTP_SERVER).unwrap();
        let port = closed_port();
        let mut command = Command::new("python3");
        command
            .arg(&script)
            .arg(port.to_string())
            .arg(&mailbox)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((user, password)) = setup.login {
            command
                .env("SMTP_USER", user)
                .env("SMTP_PASSWORD", password);
        }
        let ca = setup.starttls.then(|| {
            let (ca, cert, key) = throwaway_certificates(dir.path());
            command.env("SMTP_CERT", cert).env("SMTP_KEY", key);
            std::fs::read(ca).unwrap()
        });
        let mut child = command.spawn().expect("python3 starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.trim() != "ready" {
            let _ = child.kill();
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err);
            panic!("the aiosmtpd test server did not start: {err}");
        }
        let server = Self {
            port,
            mailbox,
            child,
            _dir: dir,
        };
        (server, ca)
    }

    /// The raw messages received since the last call.
    fn take(&self) -> Vec<String> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&self.mailbox)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        paths.sort();
        paths
            .into_iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                std::fs::remove_file(&p).unwrap();
                text
            })
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with `openssl`:
/// (CA PEM, server certificate, server key).
fn throwaway_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the STARTTLS test makes its certificates with the openssl program: apt-get install openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509", "-days", "2", "-subj", "/CN=dbops test CA"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-subj", "/CN=127.0.0.1"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

// ---------------------------------------------------------------------------------
// Helpers.

/// Test specs: short timeouts and backoff so that failures are quick.
fn spec(channel: Channel) -> NotifierSpec {
    NotifierSpec::new(channel)
        .with_timeout(Duration::from_secs(1))
        .with_retries(2)
        .with_backoff(Duration::from_millis(50))
}

fn assert_hides(text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!text.contains(secret), "a secret shows: {text}");
    }
}

const FAILURES: [EventKind; 2] = [EventKind::Failure, EventKind::Recovered];

// ---------------------------------------------------------------------------------
// Each notifier delivers, and passes the conformance suite.

#[tokio::test]
async fn webhook_posts_the_event_as_json() {
    let receiver = Receiver::start(200).await;
    let token = "hook-token-7f3e9a";
    let bearer = "Bearer sk-live-51c0ffee";
    let notifier = notify::build(
        "ops-hook",
        spec(Channel::Webhook(
            WebhookOptions::new(Secret::new(receiver.url(&format!("/hooks/{token}"))))
                .with_header("Authorization", Secret::new(bearer)),
        )),
    )
    .unwrap();
    assert_eq!(notifier.destination(), receiver.url(""));

    notifier
        .notify(&sample_event(EventKind::Failure, "erp-backup"))
        .await
        .unwrap();
    let requests = receiver.take();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, format!("/hooks/{token}"));
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["authorization"], bearer);
    let json: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(json["job"], "erp-backup");
    assert_eq!(json["event"], "failure");
    assert_eq!(json["kind"], "backup");
    assert_eq!(json["status"], "failure");
    assert_eq!(json["attempts"], 2);
    assert_eq!(json["duration_seconds"], 83.0);
    assert!(
        json["error"].as_str().unwrap().contains("pg_dump"),
        "{json}"
    );
    assert!(json["started"].is_string(), "{json}");

    let success = sample_event(EventKind::Success, "erp-backup");
    notifier.notify(&success).await.unwrap();
    let json: serde_json::Value = serde_json::from_str(&receiver.take()[0].body).unwrap();
    assert_eq!(json["backup_id"], "20250301T020000Z-3f2a");
    assert_eq!(json["stored_bytes"], 120 * 1024 * 1024);

    conformance(
        notifier,
        &FAILURES,
        &[token, bearer, "sk-live"],
        async || receiver.take().into_iter().map(|r| r.body).collect(),
    )
    .await;
}

#[tokio::test]
async fn slack_posts_the_summary_as_text() {
    let receiver = Receiver::start(200).await;
    let path = "/services/T0001/B0002/XXXXsecretXXXX";
    let notifier = notify::build(
        "ops",
        spec(Channel::Slack(SlackOptions::new(Secret::new(
            receiver.url(path),
        )))),
    )
    .unwrap();
    let event = sample_event(EventKind::Failure, "erp-backup");
    notifier.notify(&event).await.unwrap();
    let requests = receiver.take();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, path);
    assert_eq!(requests[0].headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_str(&requests[0].body).unwrap();
    let text = json["text"].as_str().unwrap();
    assert!(text.ends_with(&event.summary()), "{text}");
    assert!(
        text.contains("dbops: job erp-backup (backup) failed after 2 attempts"),
        "{text}"
    );

    conformance(
        notifier,
        &FAILURES,
        &["XXXXsecretXXXX", "T0001/B0002"],
        async || receiver.take().into_iter().map(|r| r.body).collect(),
    )
    .await;
}

#[tokio::test]
async fn ping_follows_the_healthchecks_convention() {
    let receiver = Receiver::start(200).await;
    let uuid = "5bf66975-d4c7-4bf5-bcc8-b8d8a82ea278";
    let notifier = notify::build(
        "deadman",
        spec(Channel::Ping(PingOptions::new(Secret::new(
            receiver.url(&format!("/ping/{uuid}")),
        )))),
    )
    .unwrap();
    for kind in EventKind::ALL {
        assert!(notifier.wants(kind), "a ping wants {kind} by default");
    }
    let expected = [
        (EventKind::Start, "/start"),
        (EventKind::Success, ""),
        (EventKind::Failure, "/fail"),
        (EventKind::RepeatedFailure, "/fail"),
        (EventKind::Recovered, ""),
    ];
    for (kind, suffix) in expected {
        let event = sample_event(kind, "erp-backup");
        notifier.notify(&event).await.unwrap();
        let requests = receiver.take();
        assert_eq!(requests.len(), 1, "{kind}: {requests:?}");
        assert_eq!(requests[0].path, format!("/ping/{uuid}{suffix}"), "{kind}");
        assert_eq!(requests[0].body, event.summary(), "{kind}");
    }

    // A trailing slash in the configured URL does not make `//start`.
    let slash = notify::build(
        "deadman",
        spec(Channel::Ping(PingOptions::new(Secret::new(
            receiver.url(&format!("/ping/{uuid}/")),
        )))),
    )
    .unwrap();
    slash
        .notify(&sample_event(EventKind::Start, "erp-backup"))
        .await
        .unwrap();
    assert_eq!(receiver.take()[0].path, format!("/ping/{uuid}/start"));

    conformance(notifier, &EventKind::ALL, &[uuid], async || {
        receiver.take().into_iter().map(|r| r.body).collect()
    })
    .await;
}

#[tokio::test]
async fn email_is_sent_over_smtp_with_a_login() {
    let password = "mail-pw-Q9x7Lw";
    let (server, _) = SmtpServer::start(SmtpSetup {
        login: Some(("dbops", password)),
        starttls: false,
    });
    let notifier = notify::build(
        "mail",
        spec(Channel::Email(
            EmailOptions::new(
                "127.0.0.1",
                "dbops@example.com",
                ["ops@example.com", "dba@example.com"],
            )
            .with_port(server.port)
            .with_security(SmtpSecurity::None)
            .with_login("dbops", Secret::new(password)),
        )),
    )
    .unwrap();
    assert_eq!(
        notifier.destination(),
        format!(
            "ops@example.com, dba@example.com via 127.0.0.1:{} (unencrypted)",
            server.port
        )
    );
    let event = sample_event(EventKind::Failure, "erp-backup");
    notifier.notify(&event).await.unwrap();
    let mails = server.take();
    assert_eq!(mails.len(), 1);
    // Long headers are folded (CRLF before a space); unfold to compare.
    let mail = &mails[0].replace("\r\n ", " ");
    assert!(
        mail.contains(&format!("Subject: {}", event.summary())),
        "{mail}"
    );
    assert!(mail.contains("From: dbops@example.com"), "{mail}");
    assert!(mail.contains("ops@example.com, dba@example.com"), "{mail}");
    assert!(mail.contains("Job:       erp-backup (backup)"), "{mail}");
    assert!(mail.contains("Attempts:  2"), "{mail}");
    assert!(
        mail.contains("pg_dump: connection to server failed"),
        "{mail}"
    );

    conformance(notifier, &FAILURES, &[password], async || server.take()).await;

    // The wrong password: refused at once (535 will not change), and not shown.
    let wrong = "wrong-pw-Zk28";
    let refused = notify::build(
        "mail",
        spec(Channel::Email(
            EmailOptions::new("127.0.0.1", "dbops@example.com", ["ops@example.com"])
                .with_port(server.port)
                .with_security(SmtpSecurity::None)
                .with_login("dbops", Secret::new(wrong)),
        )),
    )
    .unwrap();
    let err = refused.notify(&event).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("notification 'mail' (email to ops@example.com via 127.0.0.1"),
        "{text}"
    );
    assert!(text.contains("not retried"), "{text}");
    assert_hides(&text, &[wrong, password]);
    assert!(server.take().is_empty());
}

#[tokio::test]
async fn email_requires_starttls_and_checks_the_certificate() {
    let password = "tls-pw-M3n8";
    let (server, ca) = SmtpServer::start(SmtpSetup {
        login: Some(("dbops", password)),
        starttls: true,
    });
    let ca = ca.unwrap();
    let options = EmailOptions::new(
        "127.0.0.1",
        "dbops <dbops@example.com>",
        ["ops@example.com"],
    )
    .with_port(server.port)
    .with_login("dbops", Secret::new(password));
    assert_eq!(
        options.security,
        SmtpSecurity::StartTls,
        "STARTTLS is the default"
    );

    let notifier = notify::build(
        "mail",
        spec(Channel::Email(options.clone().with_ca_pem(ca))),
    )
    .unwrap();
    assert!(notifier.destination().ends_with("(STARTTLS)"));
    conformance(notifier, &FAILURES, &[password], async || server.take()).await;

    // Without the private CA the certificate is not trusted: no retry, no mail, and
    // the password never went out.
    let untrusted = notify::build("mail", spec(Channel::Email(options))).unwrap();
    let started = Instant::now();
    let err = untrusted
        .notify(&sample_event(EventKind::Failure, "erp-backup"))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1), "{err}");
    let text = format!("{err} {err:?}");
    assert!(text.contains("notification 'mail'"), "{text}");
    assert!(text.contains("invalid peer certificate"), "{text}");
    assert!(text.contains("(not retried"), "{text}");
    assert_hides(&text, &[password]);
    assert!(server.take().is_empty());
}

#[tokio::test]
async fn command_gets_the_event_on_stdin_and_in_its_environment() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let notifier = notify::build(
        "pager",
        spec(Channel::Command(CommandOptions::new(format!(
            "cat > '{d}/stdin.json' && env | grep '^DBOPS_' | sort > '{d}/env'"
        )))),
    )
    .unwrap();
    assert_eq!(notifier.destination(), "cat …", "only the program shows");
    let event = sample_event(EventKind::Failure, "erp-backup");
    notifier.notify(&event).await.unwrap();

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("stdin.json")).unwrap())
            .unwrap();
    assert_eq!(json, event.to_json());
    let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
    for line in [
        "DBOPS_EVENT=failure",
        "DBOPS_JOB=erp-backup",
        "DBOPS_KIND=backup",
        "DBOPS_STATUS=failure",
        "DBOPS_BACKUP_ID=",
        "DBOPS_ERROR=pg_dump: connection to server failed: timeout",
    ] {
        assert!(
            env.lines().any(|l| l == line),
            "{line} missing from:\n{env}"
        );
    }

    // The conformance suite, with a command that keeps one file per delivery.
    let bodies = dir.path().join("bodies");
    std::fs::create_dir(&bodies).unwrap();
    let token = "cmd-token-88aa";
    let notifier = notify::build(
        "pager",
        spec(Channel::Command(CommandOptions::new(format!(
            "f=$(mktemp -p '{}' body.XXXXXX) && cat > \"$f\" # {token}",
            bodies.display()
        )))),
    )
    .unwrap();
    conformance(notifier, &FAILURES, &[token], async || {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&bodies).unwrap() {
            let path = entry.unwrap().path();
            out.push(std::fs::read_to_string(&path).unwrap());
            std::fs::remove_file(path).unwrap();
        }
        out
    })
    .await;
}

// ---------------------------------------------------------------------------------
// Failures: bounded in time, retried only when it can help, and without secrets.

#[tokio::test]
async fn a_failing_receiver_is_retried_then_reported_without_secrets() {
    let receiver = Receiver::start(500).await;
    let token = "T0001/B0002/failingXXXX";
    let spec = spec(Channel::Slack(SlackOptions::new(Secret::new(
        receiver.url(&format!("/services/{token}")),
    ))));
    let bound = spec.max_delivery_time();
    let notifier = notify::build("ops", spec).unwrap();
    let started = Instant::now();
    let err = notifier
        .notify(&sample_event(EventKind::Failure, "erp-backup"))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(took < bound, "took {took:?}, bound {bound:?}");
    assert_eq!(receiver.take().len(), 3, "1 attempt + 2 retries");
    assert_eq!(
        err.to_string(),
        format!(
            "notification 'ops' (slack to {}): HTTP 500 Internal Server Error after 3 attempts",
            receiver.url("")
        )
    );
    assert_eq!(err.kind(), ErrorKind::Unreachable);
    assert_hides(&format!("{err} {err:?}"), &[token, "failingXXXX"]);

    // A 4xx will not change on retry: one attempt.
    receiver.answer(404);
    let err = notifier
        .notify(&sample_event(EventKind::Failure, "erp-backup"))
        .await
        .unwrap_err();
    assert_eq!(receiver.take().len(), 1);
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(
        err.to_string().contains("HTTP 404 Not Found (not retried"),
        "{err}"
    );
    assert_hides(&format!("{err} {err:?}"), &[token, "failingXXXX"]);
}

#[tokio::test]
async fn a_receiver_that_never_answers_hits_the_timeout() {
    let receiver = Receiver::start(0).await;
    let uuid = "0c9d7e52-hanging-uuid";
    let spec = spec(Channel::Ping(PingOptions::new(Secret::new(
        receiver.url(&format!("/{uuid}")),
    ))))
    .with_timeout(Duration::from_millis(300))
    .with_retries(1);
    let bound = spec.max_delivery_time();
    let notifier = notify::build("deadman", spec).unwrap();
    let started = Instant::now();
    let err = notifier
        .notify(&sample_event(EventKind::Start, "erp-backup"))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(600), "took {took:?}");
    assert!(
        took < bound + Duration::from_millis(500),
        "took {took:?}, bound {bound:?}"
    );
    assert_eq!(receiver.take().len(), 2);
    assert!(
        err.to_string()
            .ends_with("no answer within 300ms after 2 attempts"),
        "{err}"
    );
    assert_hides(&format!("{err} {err:?}"), &[uuid]);
}

#[tokio::test]
async fn an_unreachable_receiver_is_reported_without_secrets() {
    let uuid = "unreachable-uuid-4411";
    let url = format!(
        "http://user:pa55word@127.0.0.1:{}/{uuid}?token=qq77",
        closed_port()
    );
    for channel in [
        Channel::Webhook(WebhookOptions::new(Secret::new(url.clone()))),
        Channel::Slack(SlackOptions::new(Secret::new(url.clone()))),
        Channel::Ping(PingOptions::new(Secret::new(url.clone()))),
    ] {
        let kind = channel.kind();
        let notifier = notify::build("ops", spec(channel).with_retries(1)).unwrap();
        let shown = format!("{notifier:?} {}", notifier.destination());
        let err = notifier
            .notify(&sample_event(EventKind::Failure, "erp-backup"))
            .await
            .unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(
            text.contains("could not connect: Connection refused"),
            "{kind}: {text}"
        );
        assert!(text.contains("after 2 attempts"), "{kind}: {text}");
        assert_hides(
            &format!("{shown} {text}"),
            &[uuid, "pa55word", "qq77", "user:"],
        );
    }
}

#[tokio::test]
async fn a_failing_command_is_retried_and_its_complaint_reported() {
    let notifier = notify::build(
        "pager",
        spec(Channel::Command(CommandOptions::new(
            "echo 'pager service down' >&2; exit 3",
        )))
        .with_retries(1),
    )
    .unwrap();
    let err = notifier
        .notify(&sample_event(EventKind::Failure, "erp-backup"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "notification 'pager' (command to echo …): exited with status 3: pager service down after 2 attempts"
    );

    let missing = notify::build(
        "pager",
        spec(Channel::Command(CommandOptions::new(
            "/nonexistent/page-oncall",
        ))),
    )
    .unwrap();
    let err = missing
        .notify(&sample_event(EventKind::Failure, "erp-backup"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MissingTool);
    assert!(err.to_string().contains("status 127"), "{err}");
    assert!(err.to_string().contains("not retried"), "{err}");
}

#[tokio::test]
async fn a_command_past_its_timeout_is_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let notifier = notify::build(
        "pager",
        spec(Channel::Command(CommandOptions::new(format!(
            "sleep 30 & echo $! > '{}'; wait",
            pid_file.display()
        ))))
        .with_timeout(Duration::from_millis(300))
        .with_retries(0),
    )
    .unwrap();
    let started = Instant::now();
    let err = notifier
        .notify(&sample_event(EventKind::Failure, "erp-backup"))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.to_string().ends_with("killed: not done within 300ms"),
        "{err}"
    );
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let stat = format!("/proc/{}/stat", pid.trim());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        // Gone, or a zombie waiting for init: either way not running.
        match std::fs::read_to_string(&stat) {
            Err(_) => break,
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z')) =>
            {
                break;
            }
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(s) => panic!("the command's child still runs: {s}"),
        }
    }
}

// ---------------------------------------------------------------------------------
// Config checks and delivery to several notifiers.

#[test]
fn bad_configs_are_refused_with_the_key_and_without_secrets() {
    let secret = "sek-ret-path-991";
    let cases: Vec<(NotifierSpec, &str)> = vec![
        (
            spec(Channel::Slack(SlackOptions::new(Secret::new(format!(
                "ftp://hooks.example.com/{secret}"
            ))))),
            "`url` must start with https://",
        ),
        (
            spec(Channel::Webhook(WebhookOptions::new(Secret::new(format!(
                "hooks.example.com/{secret}"
            ))))),
            "`url` is not a valid URL",
        ),
        (
            spec(Channel::Ping(PingOptions::new(Secret::new("")))),
            "`url` is missing",
        ),
        (
            spec(Channel::Webhook(
                WebhookOptions::new(Secret::new("https://hooks.example.com/x"))
                    .with_header("Authorization", Secret::new(format!("Bearer {secret}\n"))),
            )),
            "the value of header 'Authorization'",
        ),
        (
            spec(Channel::Email(EmailOptions::new(
                "",
                "a@example.com",
                ["b@example.com"],
            ))),
            "`smtp_host` is missing",
        ),
        (
            spec(Channel::Email(EmailOptions::new(
                "smtp.example.com",
                "not an address",
                ["b@example.com"],
            ))),
            "`from` 'not an address' is not an address",
        ),
        (
            spec(Channel::Email(EmailOptions::new(
                "smtp.example.com",
                "a@example.com",
                Vec::<String>::new(),
            ))),
            "`to` lists no recipient",
        ),
        (
            spec(Channel::Email(
                EmailOptions::new("smtp.example.com", "a@example.com", ["b@example.com"])
                    .with_security(SmtpSecurity::None)
                    .with_login("dbops", Secret::new(secret)),
            )),
            "will not send a password unencrypted to smtp.example.com",
        ),
        (
            spec(Channel::Command(CommandOptions::new("  "))),
            "`command` is empty",
        ),
        (
            spec(Channel::Command(CommandOptions::new("true"))).with_on([]),
            "`on` is empty",
        ),
        (
            spec(Channel::Command(CommandOptions::new("true"))).with_timeout(Duration::ZERO),
            "`timeout` must be more than 0 s",
        ),
        (
            spec(Channel::Command(CommandOptions::new("true"))).with_retries(50),
            "`retries` is 50, at most 10",
        ),
    ];
    for (spec, expected) in cases {
        let kind = spec.channel.kind();
        let err = notify::build("ops", spec).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let text = format!("{err} {err:?}");
        assert!(text.contains("notification 'ops'"), "{text}");
        assert!(
            text.contains(expected),
            "{kind}: expected {expected:?} in {text}"
        );
        assert_hides(&text, &[secret]);
    }
    let err = notify::build("", spec(Channel::Command(CommandOptions::new("true")))).unwrap_err();
    assert!(err.to_string().contains("empty name"), "{err}");
}

#[test]
fn on_lists_default_by_kind() {
    let slack = notify::build(
        "ops",
        NotifierSpec::new(Channel::Slack(SlackOptions::new(Secret::new(
            "https://hooks.slack.com/services/T/B/X",
        )))),
    )
    .unwrap();
    assert_eq!(slack.destination(), "https://hooks.slack.com");
    let wanted: Vec<EventKind> = EventKind::ALL
        .into_iter()
        .filter(|k| slack.wants(*k))
        .collect();
    assert_eq!(wanted, FAILURES);

    let chatty = notify::build(
        "ops",
        NotifierSpec::new(Channel::Command(CommandOptions::new("true")))
            .with_on([EventKind::Start, EventKind::Success]),
    )
    .unwrap();
    assert!(chatty.wants(EventKind::Start) && chatty.wants(EventKind::Success));
    assert!(!chatty.wants(EventKind::Failure));
}

#[tokio::test]
async fn deliver_all_asks_only_who_wants_and_never_fails() {
    let ok = Receiver::start(200).await;
    let failing = Receiver::start(503).await;
    let token = "deliver-all-token-55";
    let notifiers = vec![
        notify::build(
            "hook",
            spec(Channel::Webhook(WebhookOptions::new(Secret::new(
                ok.url("/hook"),
            )))),
        )
        .unwrap(),
        notify::build(
            "ops",
            spec(Channel::Slack(SlackOptions::new(Secret::new(
                failing.url(&format!("/services/{token}")),
            ))))
            .with_retries(0),
        )
        .unwrap(),
        notify::build(
            "chatty",
            spec(Channel::Webhook(WebhookOptions::new(Secret::new(
                ok.url("/chatty"),
            ))))
            .with_on([EventKind::Start]),
        )
        .unwrap(),
    ];
    let event = sample_event(EventKind::Failure, "erp-backup");
    let deliveries: Vec<Delivery> = notify::deliver_all(&notifiers, &event).await;
    assert_eq!(
        deliveries.len(),
        2,
        "chatty does not want failures: {deliveries:?}"
    );
    let hook = deliveries.iter().find(|d| d.notifier == "hook").unwrap();
    assert!(hook.ok && hook.error.is_none(), "{hook:?}");
    assert_eq!(hook.event, EventKind::Failure);
    let ops = deliveries.iter().find(|d| d.notifier == "ops").unwrap();
    assert!(!ops.ok, "{ops:?}");
    assert_eq!(ops.destination, failing.url(""));
    assert!(
        ops.error.as_deref().unwrap().contains("HTTP 503"),
        "{ops:?}"
    );
    let json = serde_json::to_string(&deliveries).unwrap();
    assert_hides(&json, &[token]);
    assert_eq!(ok.take().len(), 1);
    assert_eq!(failing.take().len(), 1);
    assert!(ok.take().is_empty());
}
