//! What the HTTP notifiers (webhook, Slack, ping) share: checking a secret URL, the
//! redacted `scheme://host[:port]` they show, and one POST with its outcome sorted into
//! retry-or-not. Nothing here may put a URL's path or query into a message.

use std::time::Duration;

use ops_core::{ErrorKind, Result, Secret};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use url::Url;

use super::{Failure, Policy, error_chain, fmt_duration, is_tls_failure, root_cause};

/// Parses the notifier's secret `url`: it must be http or https with a host. The
/// messages name the key, never the URL.
pub(super) fn parse_url(policy: &Policy, key: &str, url: &Secret) -> Result<Url> {
    if url.is_empty() {
        return Err(policy.invalid(format!("`{key}` is missing")));
    }
    let parsed = Url::parse(url.expose().trim())
        .map_err(|e| policy.invalid(format!("`{key}` is not a valid URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(policy.invalid(format!(
            "`{key}` must start with https:// (or http://), not {}:",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(policy.invalid(format!("`{key}` has no host")));
    }
    Ok(parsed)
}

/// `https://hooks.slack.com`, `http://127.0.0.1:8080`: where a secret URL points, all
/// that may be shown of it (user info, path and query are the secret).
pub(super) fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// The secrets of a URL for scrubbing messages: the whole URL and its path and query,
/// which hold the token (`/services/T…/B…/X…`, the ping uuid).
pub(super) fn url_secrets(url: &Url, raw: &Secret) -> Vec<Secret> {
    let mut secrets = vec![raw.clone(), Secret::new(url.as_str())];
    let path = url.path().trim_matches('/');
    if !path.is_empty() {
        secrets.push(Secret::new(path));
    }
    if let Some(query) = url.query() {
        secrets.push(Secret::new(query));
    }
    if let Some(password) = url.password() {
        secrets.push(Secret::new(password));
    }
    secrets
}

/// The HTTP client of one notifier. Its own timeout matches the attempt's, so that a
/// slow receiver is cut off by reqwest (with a clear message) rather than dropped.
pub(super) fn client(policy: &Policy) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(policy.timeout)
        .user_agent(concat!("dbops/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| policy.invalid(format!("cannot set up an HTTP client: {}", error_chain(&e))))
}

/// POSTs `body` to `url` once. Any 2xx is a success; 4xx other than 408 and 429 is
/// permanent (the receiver refused this request and will again); everything else may
/// pass.
pub(super) async fn post(
    client: &reqwest::Client,
    url: &Url,
    headers: &HeaderMap,
    content_type: &'static str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(), Failure> {
    let response = client
        .post(url.clone())
        .headers(headers.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static(content_type))
        .body(body)
        .send()
        .await
        .map_err(|e| request_failure(e, timeout))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let code = status.as_u16();
    let message = match status.canonical_reason() {
        Some(reason) => format!("HTTP {code} {reason}"),
        None => format!("HTTP {code}"),
    };
    Err(match code {
        401 => Failure::permanent(ErrorKind::Authentication, message),
        403 => Failure::permanent(ErrorKind::PermissionDenied, message),
        404 | 410 => Failure::permanent(ErrorKind::NotFound, message),
        408 | 429 => Failure::temporary(ErrorKind::Unreachable, message),
        400..=499 => Failure::permanent(ErrorKind::InvalidInput, message),
        _ => Failure::temporary(ErrorKind::Unreachable, message),
    })
}

fn request_failure(err: reqwest::Error, timeout: Duration) -> Failure {
    // The URL would carry the secret path.
    let err = err.without_url();
    if err.is_timeout() {
        return Failure::temporary(
            ErrorKind::Unreachable,
            format!("no answer within {}", fmt_duration(timeout)),
        );
    }
    // reqwest's layers ("error sending request: client error (Connect): tcp connect
    // error: …") say little; the innermost cause says what happened.
    let what = if err.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let message = format!("{what}: {}", root_cause(&err));
    if is_tls_failure(&err) {
        Failure::permanent(ErrorKind::Unreachable, message)
    } else {
        Failure::temporary(ErrorKind::Unreachable, message)
    }
}
