//! Slack incoming webhooks: POST `{"text": …}` with the event's one-line summary. The
//! webhook URL is the only credential Slack asks for, so all of it but the host is a
//! secret.

use std::fmt;

use async_trait::async_trait;
use ops_core::{Event, EventKind, Notifier, Result, Secret};
use reqwest::header::HeaderMap;
use url::Url;

use super::{Policy, http};

/// A Slack incoming webhook (`kind = "slack"`).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SlackOptions {
    /// The incoming webhook's URL (`url`), `https://hooks.slack.com/services/…`.
    pub url: Secret,
}

impl SlackOptions {
    /// A Slack notifier posting to `url`.
    pub fn new(url: Secret) -> Self {
        Self { url }
    }
}

pub(super) struct SlackNotifier {
    policy: Policy,
    url: Url,
    client: reqwest::Client,
}

impl SlackNotifier {
    pub(super) fn new(policy: Policy, options: SlackOptions) -> Result<Self> {
        let url = http::parse_url(&policy, "url", &options.url)?;
        let client = http::client(&policy)?;
        let secrets = http::url_secrets(&url, &options.url);
        let policy = policy.finish(http::origin(&url), secrets);
        Ok(Self {
            policy,
            url,
            client,
        })
    }
}

impl fmt::Debug for SlackNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackNotifier")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// The message: a status mark and the summary, escaped as Slack asks (`&`, `<`, `>`),
/// so that an error message cannot turn into a mention or a link.
fn message(event: &Event) -> serde_json::Value {
    let mark = match event.kind {
        EventKind::Start => ":arrow_forward:",
        EventKind::Success => ":white_check_mark:",
        EventKind::Recovered => ":large_green_circle:",
        EventKind::Failure => ":red_circle:",
        EventKind::RepeatedFailure => ":repeat:",
        _ => ":information_source:",
    };
    let summary = event
        .summary()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    serde_json::json!({ "text": format!("{mark} {summary}") })
}

#[async_trait]
impl Notifier for SlackNotifier {
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
        let body = message(event).to_string().into_bytes();
        let headers = HeaderMap::new();
        self.policy
            .deliver(|| {
                http::post(
                    &self.client,
                    &self.url,
                    &headers,
                    "application/json",
                    body.clone(),
                    self.policy.timeout,
                )
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use ops_core::{JobKind, RunRecord, Trigger};

    use super::*;

    #[test]
    fn errors_cannot_mention_anyone() {
        let mut run = RunRecord::start("db", JobKind::Backup, Trigger::Manual, chrono::Utc::now());
        run.error = Some("<!channel> a & b".into());
        let text = message(&Event::new(EventKind::Failure, run))["text"].to_string();
        assert!(text.contains("&lt;!channel&gt; a &amp; b"), "{text}");
    }
}
