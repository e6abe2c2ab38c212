//! Notifiers: the adapters that deliver job events (`ops_core::Event`) to people and
//! monitors — a generic webhook, Slack, e-mail over SMTP, a local command, and
//! healthchecks.io-style dead-man pings.
//!
//! The config names a notifier and describes it with a [`NotifierSpec`]; [`build`]
//! checks the spec and returns an `Arc<dyn Notifier>`. The runner hands each event to
//! [`deliver_all`], which asks only the notifiers that want it, runs them side by side
//! and returns one [`Delivery`] per notifier for the run history. A failed delivery
//! never fails a job: it is logged and recorded.
//!
//! Every notifier bounds its own time: one timeout per attempt, a few retries with a
//! short growing backoff, and no retry where trying again cannot help (HTTP 4xx, an
//! SMTP 5xx). Webhook, Slack and ping URLs, webhook header values and SMTP passwords are
//! secrets: they live in [`Secret`]s, `Debug` and [`Notifier::destination`] show only
//! `scheme://host[:port]`, and every error message is scrubbed of them before it
//! leaves this module. Deciding *which* events a run raises is not done here
//! (`ops_core::EventKind::for_outcome`).

mod command;
mod email;
mod http;
mod ping;
mod slack;
mod webhook;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use ops_core::{Error, ErrorKind, Event, EventKind, Notifier, Result, Secret};
use serde::{Deserialize, Serialize};

pub use command::CommandOptions;
pub use email::{EmailOptions, SmtpSecurity};
pub use ping::PingOptions;
pub use slack::SlackOptions;
pub use webhook::WebhookOptions;

/// How long one delivery attempt may take unless the config says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra attempts after a failed one unless the config says otherwise.
pub const DEFAULT_RETRIES: u32 = 2;
/// The wait before the first retry; it doubles for each later one.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
/// The most retries a notifier may make: a receiver that is down must not hold a run
/// for long.
pub const MAX_RETRIES: u32 = 10;
/// The longest wait between two attempts, however many retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where and how a notifier delivers: one variant per `kind` in the config.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Channel {
    /// `kind = "webhook"`: POST the event as JSON.
    Webhook(WebhookOptions),
    /// `kind = "slack"`: POST a one-line message to a Slack incoming webhook.
    Slack(SlackOptions),
    /// `kind = "email"`: send a mail over SMTP.
    Email(EmailOptions),
    /// `kind = "command"`: run a command with the event on its standard input.
    Command(CommandOptions),
    /// `kind = "ping"`: healthchecks.io-style dead-man pings.
    Ping(PingOptions),
}

impl Channel {
    /// The channel's `kind` in the config (`webhook`, `slack`, `email`, `command`,
    /// `ping`).
    pub fn kind(&self) -> &'static str {
        match self {
            Channel::Webhook(_) => "webhook",
            Channel::Slack(_) => "slack",
            Channel::Email(_) => "email",
            Channel::Command(_) => "command",
            Channel::Ping(_) => "ping",
        }
    }

    /// The events a notifier of this kind wants when the config gives no `on` list:
    /// every event for a ping (the monitor needs every start and end to judge the
    /// job), `failure` and `recovered` for the others (one message per incident).
    pub fn default_events(&self) -> Vec<EventKind> {
        match self {
            Channel::Ping(_) => EventKind::ALL.to_vec(),
            _ => vec![EventKind::Failure, EventKind::Recovered],
        }
    }
}

/// A notifier as the config describes it: its channel and, for any kind, which events
/// it wants and how hard it tries.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NotifierSpec {
    /// Where and how it delivers.
    pub channel: Channel,
    /// The events it wants (`on`); `None` for the channel's
    /// [`default`](Channel::default_events).
    pub on: Option<Vec<EventKind>>,
    /// The time one attempt may take (`timeout`).
    pub timeout: Duration,
    /// Extra attempts after a failed one (`retries`).
    pub retries: u32,
    /// The wait before the first retry; it doubles for each later one (at most 30 s).
    pub backoff: Duration,
}

impl NotifierSpec {
    /// A spec for `channel` with the default `on` list, timeout, retries and backoff.
    pub fn new(channel: Channel) -> Self {
        Self {
            channel,
            on: None,
            timeout: DEFAULT_TIMEOUT,
            retries: DEFAULT_RETRIES,
            backoff: DEFAULT_BACKOFF,
        }
    }

    /// Sets the events the notifier wants.
    #[must_use]
    pub fn with_on(mut self, events: impl IntoIterator<Item = EventKind>) -> Self {
        self.on = Some(events.into_iter().collect());
        self
    }

    /// Sets the time one attempt may take.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the number of extra attempts.
    #[must_use]
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Sets the wait before the first retry.
    #[must_use]
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// The longest one `notify` call can take: every attempt timing out, plus the
    /// waits between them.
    pub fn max_delivery_time(&self) -> Duration {
        let retries = self.retries.min(MAX_RETRIES);
        let waits: Duration = (0..retries).map(|n| backoff_before(self.backoff, n)).sum();
        self.timeout * (retries + 1) + waits
    }
}

/// Checks `spec` and builds the notifier the config calls `name`.
///
/// # Errors
/// [`ErrorKind::InvalidInput`] naming the notifier and the key at fault: an empty
/// name or `on` list, a zero timeout, too many retries, a URL that is not http(s), an
/// e-mail without `smtp_host`, `from` or `to`, a password over an unencrypted
/// connection to another host, an empty command. No message shows a secret.
pub fn build(name: &str, spec: NotifierSpec) -> Result<Arc<dyn Notifier>> {
    let policy = Policy::new(name, &spec)?;
    Ok(match spec.channel {
        Channel::Webhook(options) => Arc::new(webhook::WebhookNotifier::new(policy, options)?),
        Channel::Slack(options) => Arc::new(slack::SlackNotifier::new(policy, options)?),
        Channel::Email(options) => Arc::new(email::EmailNotifier::new(policy, options)?),
        Channel::Command(options) => Arc::new(command::CommandNotifier::new(policy, options)?),
        Channel::Ping(options) => Arc::new(ping::PingNotifier::new(policy, options)?),
    })
}

/// What happened when one notifier was given one event, as the run history keeps it.
/// Holds no secret: the destination is redacted and the error scrubbed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Delivery {
    /// The notifier's name in the config.
    pub notifier: String,
    /// Where it delivers, redacted ([`Notifier::destination`]).
    pub destination: String,
    /// The event it was given.
    pub event: EventKind,
    /// Whether the delivery succeeded.
    pub ok: bool,
    /// Why it failed.
    pub error: Option<String>,
    /// When the delivery ended.
    pub at: DateTime<Utc>,
}

/// Gives `event` to every notifier that wants it, all at once, and reports how each
/// delivery went. Never fails: a failed delivery (or a notifier that panicked) is
/// logged as a warning and reported with `ok: false`. Notifiers that do not want the
/// event are not called and not reported.
pub async fn deliver_all(notifiers: &[Arc<dyn Notifier>], event: &Event) -> Vec<Delivery> {
    let deliveries = notifiers
        .iter()
        .filter(|n| n.wants(event.kind))
        .map(|notifier| async move {
            // A panic in one notifier is a bug in it; it must not take the other
            // deliveries (or the job's run) with it.
            let outcome = AssertUnwindSafe(notifier.notify(event))
                .catch_unwind()
                .await;
            let error = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!(
                    "notification '{}' ({}): the notifier panicked (a dbops bug)",
                    notifier.name(),
                    notifier.destination()
                )),
            };
            match &error {
                Some(error) => tracing::warn!(
                    notifier = notifier.name(),
                    event = event.kind.as_str(),
                    job = event.run.job.as_str(),
                    "{error}"
                ),
                None => tracing::debug!(
                    notifier = notifier.name(),
                    event = event.kind.as_str(),
                    job = event.run.job.as_str(),
                    "notification delivered"
                ),
            }
            Delivery {
                notifier: notifier.name().to_owned(),
                destination: notifier.destination(),
                event: event.kind,
                ok: error.is_none(),
                error,
                at: Utc::now(),
            }
        });
    futures::future::join_all(deliveries).await
}

/// What every notifier shares: its name, what it wants, where it delivers (redacted),
/// how hard it tries, and the secrets its messages must never show.
struct Policy {
    name: String,
    kind: &'static str,
    destination: String,
    on: Vec<EventKind>,
    timeout: Duration,
    retries: u32,
    backoff: Duration,
    secrets: Vec<Secret>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // By hand so that no later field can print a secret by accident.
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("destination", &self.destination)
            .field("on", &self.on)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl Policy {
    fn new(name: &str, spec: &NotifierSpec) -> Result<Self> {
        let kind = spec.channel.kind();
        if name.trim().is_empty() {
            return Err(Error::invalid(format!(
                "a {kind} notification has an empty name: name it under [notifications.NAME]"
            )));
        }
        let on = spec
            .on
            .clone()
            .unwrap_or_else(|| spec.channel.default_events());
        if on.is_empty() {
            return Err(Error::invalid(format!(
                "notification '{name}' ({kind}): `on` is empty, so it would never send; list events ({}) or remove the notification",
                EventKind::ALL.map(EventKind::as_str).join(", ")
            )));
        }
        if spec.timeout.is_zero() {
            return Err(Error::invalid(format!(
                "notification '{name}' ({kind}): `timeout` must be more than 0 s"
            )));
        }
        if spec.retries > MAX_RETRIES {
            return Err(Error::invalid(format!(
                "notification '{name}' ({kind}): `retries` is {}, at most {MAX_RETRIES} (a receiver that is down must not hold the job)",
                spec.retries
            )));
        }
        Ok(Self {
            name: name.to_owned(),
            kind,
            destination: String::new(),
            on,
            timeout: spec.timeout,
            retries: spec.retries,
            backoff: spec.backoff,
            secrets: Vec::new(),
        })
    }

    /// Records where the notifier delivers (already redacted) and which strings its
    /// messages must never show.
    fn finish(mut self, destination: String, secrets: Vec<Secret>) -> Self {
        self.destination = destination;
        self.secrets = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        self
    }

    fn wants(&self, kind: EventKind) -> bool {
        self.on.contains(&kind)
    }

    /// The start of every message about this notifier:
    /// `notification 'ops' (slack to https://hooks.slack.com)`.
    fn label(&self) -> String {
        format!(
            "notification '{}' ({} to {})",
            self.name, self.kind, self.destination
        )
    }

    /// An invalid-config error about this notifier, before `finish`.
    fn invalid(&self, what: impl std::fmt::Display) -> Error {
        Error::invalid(format!(
            "notification '{}' ({}): {what}",
            self.name, self.kind
        ))
    }

    /// Runs `attempt` until it succeeds, fails permanently, or the retries are used
    /// up; each attempt is cut off at the timeout.
    async fn deliver<F, Fut>(&self, mut attempt: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), Failure>>,
    {
        let attempts = self.retries + 1;
        let mut made = 0;
        loop {
            made += 1;
            let failure = match tokio::time::timeout(self.timeout, attempt()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(failure)) => failure,
                Err(_) if self.kind == "command" => Failure::temporary(
                    ErrorKind::Interrupted,
                    format!("killed: not done within {}", fmt_duration(self.timeout)),
                ),
                Err(_) => Failure::temporary(
                    ErrorKind::Unreachable,
                    format!("no answer within {}", fmt_duration(self.timeout)),
                ),
            };
            let message = scrub(&failure.message, &self.secrets);
            if failure.permanent || made == attempts {
                return Err(self.failed(failure.kind, failure.permanent, &message, made));
            }
            tracing::debug!(
                notifier = self.name.as_str(),
                attempt = made,
                "{}: {message}; trying again",
                self.label()
            );
            tokio::time::sleep(backoff_before(self.backoff, made - 1)).await;
        }
    }

    fn failed(&self, kind: ErrorKind, permanent: bool, message: &str, made: u32) -> Error {
        let tail = match (permanent, made) {
            (true, 1) if self.retries > 0 => " (not retried: trying again cannot help)".to_owned(),
            (_, 1) => String::new(),
            (_, n) => format!(" after {n} attempts"),
        };
        let error = Error::new(kind, format!("{}: {message}{tail}", self.label()));
        if permanent {
            error
        } else {
            error.temporary().persist()
        }
    }
}

/// Why one attempt failed, before the message is scrubbed and labelled.
#[derive(Debug)]
struct Failure {
    kind: ErrorKind,
    /// Trying again cannot help (HTTP 4xx, SMTP 5xx, a certificate not trusted).
    permanent: bool,
    message: String,
}

impl Failure {
    fn temporary(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            permanent: false,
            message: message.into(),
        }
    }

    fn permanent(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            permanent: true,
            message: message.into(),
        }
    }
}

/// The wait before retry number `n` (0-based): `first`, doubled each time, at most
/// 30 s.
fn backoff_before(first: Duration, n: u32) -> Duration {
    first
        .saturating_mul(2u32.saturating_pow(n))
        .min(MAX_BACKOFF.max(first))
}

/// `text` with every secret replaced by `******`: the last guard for messages that
/// quote what a server or library said.
fn scrub(text: &str, secrets: &[Secret]) -> String {
    let mut text = text.to_owned();
    for secret in secrets {
        if !secret.is_empty() {
            text = text.replace(secret.expose(), ops_core::secret::REDACTED);
        }
    }
    text
}

/// `1s`, `1.5s`, `250ms`: durations as the config writes them.
fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms >= 1000 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms >= 1000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{ms}ms")
    }
}

/// The error chain of `err`, each cause once, joined by `: `. Libraries often print
/// their source in their own message too; repeats are dropped.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    let mut words: Vec<&str> = Vec::new();
    for part in parts.iter().flat_map(|p| p.split(": ")) {
        if words.last() != Some(&part) {
            words.push(part);
        }
    }
    words.join(": ")
}

/// The innermost cause of `err`: what actually went wrong under a library's layers
/// (`Connection refused (os error 111)`).
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// Whether an I/O error with kind `InvalidData` sits in the chain: what TLS libraries
/// report for a handshake that failed (a certificate not trusted, no common protocol),
/// which trying again will not fix.
fn is_tls_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
        {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let first = Duration::from_secs(1);
        assert_eq!(backoff_before(first, 0), Duration::from_secs(1));
        assert_eq!(backoff_before(first, 1), Duration::from_secs(2));
        assert_eq!(backoff_before(first, 10), MAX_BACKOFF);
        let spec = NotifierSpec::new(Channel::Command(CommandOptions::new("true")))
            .with_timeout(Duration::from_secs(10));
        assert_eq!(spec.max_delivery_time(), Duration::from_secs(33));
    }

    #[test]
    fn scrub_hides_every_secret() {
        let secrets = [Secret::new("T000/B000/XXXX"), Secret::new("hunter2")];
        assert_eq!(
            scrub("POST /services/T000/B000/XXXX failed; pw hunter2", &secrets),
            "POST /services/****** failed; pw ******"
        );
    }

    #[test]
    fn error_chains_say_each_thing_once() {
        let inner = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        let outer = Error::new(ErrorKind::Unreachable, "Connection error: Connection error")
            .with_source(inner);
        assert_eq!(
            error_chain(&outer),
            "Connection error: invalid peer certificate: UnknownIssuer"
        );
        assert_eq!(
            root_cause(&outer),
            "invalid peer certificate: UnknownIssuer"
        );
    }

    #[test]
    fn durations_read_as_the_config_writes_them() {
        assert_eq!(fmt_duration(Duration::from_secs(10)), "10s");
        assert_eq!(fmt_duration(Duration::from_millis(300)), "300ms");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
    }
}
