//! The generic webhook: POST the event's JSON (`Event::to_json`) to a URL, with the
//! headers the config adds (`Authorization` …). The URL and the header values are
//! secrets.

use std::fmt;

use async_trait::async_trait;
use ops_core::{Event, EventKind, Notifier, Result, Secret};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

use super::{Policy, http};

/// A generic webhook (`kind = "webhook"`).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct WebhookOptions {
    /// The URL to POST to (`url`); a secret, as such URLs usually carry a token.
    pub url: Secret,
    /// Extra request headers (`headers`); their values are secrets.
    pub headers: Vec<(String, Secret)>,
}

impl WebhookOptions {
    /// A webhook posting to `url`.
    pub fn new(url: Secret) -> Self {
        Self {
            url,
            headers: Vec::new(),
        }
    }

    /// Adds a request header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: Secret) -> Self {
        self.headers.push((name.into(), value));
        self
    }
}

pub(super) struct WebhookNotifier {
    policy: Policy,
    url: Url,
    headers: HeaderMap,
    client: reqwest::Client,
}

impl WebhookNotifier {
    pub(super) fn new(policy: Policy, options: WebhookOptions) -> Result<Self> {
        let url = http::parse_url(&policy, "url", &options.url)?;
        let mut headers = HeaderMap::new();
        let mut secrets = http::url_secrets(&url, &options.url);
        for (name, value) in &options.headers {
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                policy.invalid(format!("header name '{name}' is not valid in HTTP"))
            })?;
            let mut header_value = HeaderValue::from_str(value.expose()).map_err(|_| {
                policy.invalid(format!(
                    "the value of header '{name}' cannot be sent in HTTP (control characters or non-ASCII)"
                ))
            })?;
            header_value.set_sensitive(true);
            headers.append(header, header_value);
            secrets.push(value.clone());
        }
        let client = http::client(&policy)?;
        let policy = policy.finish(http::origin(&url), secrets);
        Ok(Self {
            policy,
            url,
            headers,
            client,
        })
    }
}

impl fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("policy", &self.policy)
            .field(
                "headers",
                &self
                    .headers
                    .keys()
                    .map(HeaderName::as_str)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Notifier for WebhookNotifier {
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
        let body = event.to_json().to_string().into_bytes();
        self.policy
            .deliver(|| {
                http::post(
                    &self.client,
                    &self.url,
                    &self.headers,
                    "application/json",
                    body.clone(),
                    self.policy.timeout,
                )
            })
            .await
    }
}
