//! Dead-man pings, as healthchecks.io (and compatible monitors) take them: `<url>/start`
//! when a run starts, `<url>` when it succeeds, `<url>/fail` when it fails, each a POST
//! whose body (the summary) the monitor shows in its log. The monitor alerts when the
//! pings stop, so a ping notifier wants every event by default. The URL's path holds
//! the check's uuid: a secret.

use std::fmt;

use async_trait::async_trait;
use ops_core::{Event, EventKind, Notifier, Result, Secret};
use reqwest::header::HeaderMap;
use url::Url;

use super::{Policy, http};

/// A dead-man ping (`kind = "ping"`).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PingOptions {
    /// The check's ping URL (`url`), `https://hc-ping.com/<uuid>`.
    pub url: Secret,
}

impl PingOptions {
    /// A ping notifier for the check at `url`.
    pub fn new(url: Secret) -> Self {
        Self { url }
    }
}

pub(super) struct PingNotifier {
    policy: Policy,
    url: Url,
    client: reqwest::Client,
}

impl PingNotifier {
    pub(super) fn new(policy: Policy, options: PingOptions) -> Result<Self> {
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

    /// The URL for `kind`: `/start`, nothing, or `/fail` after the check's path (any
    /// query, such as healthchecks' `?rid=`, is kept).
    fn url_for(&self, kind: EventKind) -> Url {
        let suffix = match kind {
            EventKind::Start => "/start",
            EventKind::Failure | EventKind::RepeatedFailure => "/fail",
            _ => "",
        };
        let mut url = self.url.clone();
        let path = format!("{}{suffix}", self.url.path().trim_end_matches('/'));
        url.set_path(&path);
        url
    }
}

impl fmt::Debug for PingNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PingNotifier")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Notifier for PingNotifier {
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
        let url = self.url_for(event.kind);
        let body = event.summary().into_bytes();
        let headers = HeaderMap::new();
        self.policy
            .deliver(|| {
                http::post(
                    &self.client,
                    &url,
                    &headers,
                    "text/plain; charset=utf-8",
                    body.clone(),
                    self.policy.timeout,
                )
            })
            .await
    }
}
