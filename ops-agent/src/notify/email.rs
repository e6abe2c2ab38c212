//! E-mail over SMTP with lettre on rustls: STARTTLS on 587 by default, implicit TLS on
//! 465, or no encryption for a relay on this machine. The subject is the event's
//! summary; the body lists the run's fields, one a line. The password is a secret, and a
//! password never goes over an unencrypted connection to another host.

use std::fmt::{self, Write as _};
use std::net::IpAddr;

use async_trait::async_trait;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use ops_core::{ErrorKind, Event, EventKind, Notifier, Result, Secret};

use super::{Failure, Policy, error_chain, is_tls_failure};

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SmtpSecurity {
    /// Connect in clear and require STARTTLS before anything else is sent
    /// (`starttls = true`, the default; port 587).
    #[default]
    StartTls,
    /// TLS from the first byte (`starttls = "tls"`; port 465).
    Tls,
    /// No encryption (`starttls = false`; port 25). Meant for a relay on this machine;
    /// a password is refused over it to any other host.
    None,
}

impl SmtpSecurity {
    fn default_port(self) -> u16 {
        match self {
            SmtpSecurity::StartTls => 587,
            SmtpSecurity::Tls => 465,
            SmtpSecurity::None => 25,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            SmtpSecurity::StartTls => "STARTTLS",
            SmtpSecurity::Tls => "TLS",
            SmtpSecurity::None => "unencrypted",
        }
    }
}

/// An e-mail notifier (`kind = "email"`).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct EmailOptions {
    /// The SMTP server (`smtp_host`).
    pub host: String,
    /// Its port (`smtp_port`); `None` for the security's usual one (587, 465, 25).
    pub port: Option<u16>,
    /// How the connection is protected (`starttls`).
    pub security: SmtpSecurity,
    /// The login (`username`); none to send without logging in.
    pub username: Option<String>,
    /// The password (`password`).
    pub password: Option<Secret>,
    /// The sender (`from`), `dbops@example.com` or `dbops <dbops@example.com>`.
    pub from: String,
    /// The recipients (`to`).
    pub to: Vec<String>,
    /// Extra certificate authorities (PEM) to trust besides the system's, for a server
    /// with a certificate from a private CA.
    pub ca_pem: Option<Vec<u8>>,
}

impl EmailOptions {
    /// Mail from `from` to `to` through `host` with STARTTLS on its usual port.
    pub fn new(
        host: impl Into<String>,
        from: impl Into<String>,
        to: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            host: host.into(),
            from: from.into(),
            to: to.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Sets the port.
    #[must_use]
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Sets how the connection is protected.
    #[must_use]
    pub fn with_security(mut self, security: SmtpSecurity) -> Self {
        self.security = security;
        self
    }

    /// Logs in with `username` and `password`.
    #[must_use]
    pub fn with_login(mut self, username: impl Into<String>, password: Secret) -> Self {
        self.username = Some(username.into());
        self.password = Some(password);
        self
    }

    /// Trusts the certificate authorities in `pem` as well as the system's.
    #[must_use]
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }
}

pub(super) struct EmailNotifier {
    policy: Policy,
    from: Mailbox,
    to: Vec<Mailbox>,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl EmailNotifier {
    pub(super) fn new(policy: Policy, options: EmailOptions) -> Result<Self> {
        let host = options.host.trim().to_owned();
        if host.is_empty() {
            return Err(policy.invalid("`smtp_host` is missing"));
        }
        let from: Mailbox = options.from.trim().parse().map_err(|e| {
            policy.invalid(format!("`from` '{}' is not an address ({e})", options.from))
        })?;
        if options.to.is_empty() {
            return Err(policy.invalid("`to` lists no recipient"));
        }
        let to = options
            .to
            .iter()
            .map(|t| {
                t.trim()
                    .parse::<Mailbox>()
                    .map_err(|e| policy.invalid(format!("`to` '{t}' is not an address ({e})")))
            })
            .collect::<Result<Vec<_>>>()?;
        let credentials = match (&options.username, &options.password) {
            (Some(user), Some(password)) => {
                Some(Credentials::new(user.clone(), password.expose().to_owned()))
            }
            (Some(_), None) => {
                return Err(policy.invalid("`username` is set but `password` is not"));
            }
            (None, Some(_)) => {
                return Err(policy.invalid("`password` is set but `username` is not"));
            }
            (None, None) => None,
        };
        if credentials.is_some() && options.security == SmtpSecurity::None && !is_loopback(&host) {
            return Err(policy.invalid(format!(
                "will not send a password unencrypted to {host}: use `starttls = true` (or \"tls\"); `starttls = false` is for a relay on this machine"
            )));
        }
        let port = options.port.unwrap_or(options.security.default_port());
        let tls = match options.security {
            SmtpSecurity::None => Tls::None,
            SmtpSecurity::StartTls => Tls::Required(tls_parameters(&policy, &host, &options)?),
            SmtpSecurity::Tls => Tls::Wrapper(tls_parameters(&policy, &host, &options)?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
            .port(port)
            .tls(tls)
            .timeout(Some(policy.timeout));
        if let Some(credentials) = credentials {
            builder = builder.credentials(credentials);
        }
        let transport = builder.build();
        let recipients = to.iter().map(|m| m.email.to_string()).collect::<Vec<_>>();
        let destination = format!(
            "{} via {host}:{port} ({})",
            recipients.join(", "),
            options.security.as_str()
        );
        let secrets = options.password.into_iter().collect();
        let policy = policy.finish(destination, secrets);
        Ok(Self {
            policy,
            from,
            to,
            transport,
        })
    }

    fn message(&self, event: &Event) -> Result<Message, Failure> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject(event))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        builder.body(body(event)).map_err(|e| {
            Failure::permanent(ErrorKind::Internal, format!("cannot build the mail: {e}"))
        })
    }
}

fn tls_parameters(policy: &Policy, host: &str, options: &EmailOptions) -> Result<TlsParameters> {
    let mut builder = TlsParameters::builder(host.to_owned());
    if let Some(pem) = &options.ca_pem {
        let certificate = Certificate::from_pem(pem)
            .map_err(|e| policy.invalid(format!("the extra CA certificates are not PEM ({e})")))?;
        builder = builder.add_root_certificate(certificate);
    }
    builder
        .build_rustls()
        .map_err(|e| policy.invalid(format!("cannot set up TLS for {host}: {}", error_chain(&e))))
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The summary on one line, cut at about 150 characters: mail clients show no more.
fn subject(event: &Event) -> String {
    const MAX: usize = 150;
    let line = event
        .summary()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match line.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", line[..at].trim_end()),
        None => line,
    }
}

/// The run's fields, one a line, for a reader rather than a program.
fn body(event: &Event) -> String {
    let r = &event.run;
    let mut text = String::new();
    let mut line = |label: &str, value: &dyn fmt::Display| {
        // Writing to a String cannot fail.
        let _ = writeln!(text, "{label:<10} {value}");
    };
    line("Job:", &format_args!("{} ({})", r.job, r.kind));
    line("Event:", &event.kind);
    line("Status:", &r.status);
    line("Trigger:", &r.trigger.as_str());
    if let Some(slot) = r.slot {
        line("Slot:", &slot.format("%Y-%m-%d %H:%M:%S UTC"));
    }
    line("Started:", &r.started.format("%Y-%m-%d %H:%M:%S UTC"));
    if let Some(ended) = r.ended {
        line("Ended:", &ended.format("%Y-%m-%d %H:%M:%S UTC"));
        line("Duration:", &format_args!("{:.1} s", r.duration_secs()));
    }
    if r.attempts > 0 {
        line("Attempts:", &r.attempts);
    }
    if let Some(id) = &r.backup_id {
        line("Backup:", id);
    }
    for (label, bytes) in [
        ("Read:", r.bytes),
        ("New:", r.new_bytes),
        ("Stored:", r.stored_bytes),
    ] {
        if let Some(bytes) = bytes {
            line(
                label,
                &format_args!("{} ({bytes} bytes)", human_bytes(bytes)),
            );
        }
    }
    line("Host:", &format_args!("{} (pid {})", r.host, r.pid));
    if let Some(error) = &r.error {
        text.push_str("\nError:\n");
        for l in error.lines() {
            text.push_str("  ");
            text.push_str(l);
            text.push('\n');
        }
    }
    text.push_str("\n-- \ndbops\n");
    text
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn send_failure(err: &lettre::transport::smtp::Error) -> Failure {
    let message = error_chain(err);
    let authentication = err.status().is_some_and(|code| u16::from(code) == 535);
    if authentication {
        Failure::permanent(ErrorKind::Authentication, message)
    } else if err.is_permanent() || err.is_tls() || err.is_client() || is_tls_failure(err) {
        // The server refused this mail (5xx), or its certificate is not trusted:
        // sending it again gets the same answer.
        Failure::permanent(ErrorKind::Unreachable, message)
    } else {
        Failure::temporary(ErrorKind::Unreachable, message)
    }
}

impl fmt::Debug for EmailNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the transport: its Debug is lettre's to change.
        f.debug_struct("EmailNotifier")
            .field("policy", &self.policy)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Notifier for EmailNotifier {
    fn name(&self) -> &str {
        &self.policy.name
    }

    fn destination(&self) -> String {
        self.policy.destination.clone()
    }

    fn wants(&self, kind: EventKind) -> bool {
        self.policy.wants(kind)
    }

    async fn notify(&self, event: &Event) -> Result<()> {
        self.policy
            .deliver(|| async {
                let message = self.message(event)?;
                self.transport
                    .send(message)
                    .await
                    .map(drop)
                    .map_err(|e| send_failure(&e))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use ops_core::{JobKind, RunRecord, RunStatus, Trigger};

    use super::*;

    #[test]
    fn subject_is_one_short_line() {
        let mut run = RunRecord::start("db", JobKind::Backup, Trigger::Manual, chrono::Utc::now());
        run.finish(
            RunStatus::Failure,
            Some(format!("line one\nline two {}", "x".repeat(400))),
            chrono::Utc::now(),
        );
        let s = subject(&Event::new(EventKind::Failure, run));
        assert!(!s.contains('\n'), "{s}");
        assert!(s.chars().count() <= 151, "{s}");
        assert!(
            s.starts_with("dbops: job db (backup) failed: line one line two"),
            "{s}"
        );
    }

    #[test]
    fn loopback_hosts() {
        for host in ["localhost", "127.0.0.1", "::1", "[::1]", "127.0.0.53"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["smtp.example.com", "10.0.0.1", "localhost.example.com"] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
    }
}
