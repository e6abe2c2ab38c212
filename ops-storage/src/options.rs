//! `TargetOptions`: everything about a target that is not in its URL.
//!
//! Secrets live in [`Secret`] so that `Debug` of the options never prints them; the
//! endpoint is printed through [`redact_url`] in case it carries userinfo.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use ops_core::{FileAccess, Secret, redact_url};

use crate::multipart::MultipartOptions;
use crate::retry::RetryConfig;

/// Options for [`crate::open_target`] that the URL does not carry.
///
/// Every field is optional: unset fields fall back to the standard environment
/// variables of the store (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, … for S3;
/// `GOOGLE_*` for GCS; `AZURE_*` for Azure) and then to the store's defaults. Fields
/// set here win over the environment.
///
/// `Debug` redacts every secret:
///
/// ```
/// use ops_storage::TargetOptions;
/// let options = TargetOptions::default().with_credentials("AKIDEXAMPLE", "wJalrXUtnFEMI");
/// assert!(!format!("{options:?}").contains("wJalrXUtnFEMI"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct TargetOptions {
    /// S3-compatible endpoint such as `http://127.0.0.1:9000` or
    /// `https://s3.eu-central-1.wasabisys.com` (S3), or a custom blob endpoint (Azure).
    pub endpoint: Option<String>,
    /// Region (S3). `AWS_REGION`/`AWS_DEFAULT_REGION` otherwise, then `us-east-1`.
    pub region: Option<String>,
    /// `true`: address buckets as `endpoint/bucket/key` (path style, what most
    /// S3-compatible servers want); `false`: virtual-hosted style
    /// (`bucket.endpoint/key`). Unset: the store's default (path style for S3 unless
    /// `AWS_VIRTUAL_HOSTED_STYLE_REQUEST` says otherwise).
    pub path_style: Option<bool>,
    /// Allow plain `http://` endpoints (test servers, a MinIO on a private network).
    pub allow_http: Option<bool>,
    /// A PEM file of extra root certificates to trust (a private CA).
    pub ca_file: Option<PathBuf>,
    /// Access key id (S3). Not a secret on its own, so `Debug` shows it.
    pub access_key_id: Option<String>,
    /// Secret access key (S3).
    pub secret_access_key: Option<Secret>,
    /// Session token of temporary credentials (S3).
    pub session_token: Option<Secret>,
    /// Path of a service-account JSON file (GCS, feature `gcs`).
    pub gcs_service_account_path: Option<PathBuf>,
    /// Service-account JSON itself (GCS, feature `gcs`).
    pub gcs_service_account_key: Option<Secret>,
    /// Storage account name (Azure, feature `azure`).
    pub azure_account: Option<String>,
    /// Storage account access key (Azure, feature `azure`).
    pub azure_access_key: Option<Secret>,
    /// Timeout of one HTTP request (remote stores). The store's default otherwise.
    pub request_timeout: Option<Duration>,
    /// How many times object_store retries one failed HTTP request itself (5xx,
    /// throttling, refused connections) before the error reaches dbops; applies to
    /// every call when set. Unset, and with [`TargetOptions::retry`] on (the
    /// default): [`crate::WRAPPED_HTTP_MAX_RETRIES`] (1) for ordinary calls, which
    /// [`crate::RetryTarget`] retries, and object_store's default (10 retries within
    /// 3 minutes) for `put_stream`, whose parts get no other retries. Unset with
    /// `retry` off: object_store's default everywhere.
    pub http_max_retries: Option<usize>,
    /// How [`ops_core::BackupTarget::put_stream`] cuts objects into parts.
    pub multipart: MultipartOptions,
    /// Retries of idempotent calls ([`crate::RetryTarget`]); `None` turns them off.
    /// On by default with [`RetryConfig::default`].
    pub retry: Option<RetryConfig>,
    /// Who may read a local directory target (files and folders) when this target
    /// creates the directory: [`FileAccess::Owner`] (the default, `0600`/`0700`) or
    /// [`FileAccess::Group`] (`0640`/`0750`, a backup group). An existing directory
    /// keeps its own choice ([`FileAccess::of_dir`]). Other targets ignore it.
    pub local_access: FileAccess,
}

impl Default for TargetOptions {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: None,
            path_style: None,
            allow_http: None,
            ca_file: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            gcs_service_account_path: None,
            gcs_service_account_key: None,
            azure_account: None,
            azure_access_key: None,
            request_timeout: None,
            http_max_retries: None,
            multipart: MultipartOptions::default(),
            retry: Some(RetryConfig::default()),
            local_access: FileAccess::Owner,
        }
    }
}

impl TargetOptions {
    /// Sets who may read a local directory target this target creates
    /// ([`TargetOptions::local_access`]).
    #[must_use]
    pub fn with_local_access(mut self, access: FileAccess) -> Self {
        self.local_access = access;
        self
    }

    /// Sets the endpoint (S3-compatible servers, Azure emulators).
    #[must_use]
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Sets the region.
    #[must_use]
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Chooses path-style (`true`) or virtual-hosted-style (`false`) bucket addressing.
    #[must_use]
    pub fn with_path_style(mut self, path_style: bool) -> Self {
        self.path_style = Some(path_style);
        self
    }

    /// Allows or forbids plain-HTTP endpoints.
    #[must_use]
    pub fn with_allow_http(mut self, allow_http: bool) -> Self {
        self.allow_http = Some(allow_http);
        self
    }

    /// Trusts the root certificates in this PEM file in addition to the system's.
    #[must_use]
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Sets static S3 credentials.
    #[must_use]
    pub fn with_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.access_key_id = Some(access_key_id.into());
        self.secret_access_key = Some(Secret::new(secret_access_key));
        self
    }

    /// Sets the session token that goes with temporary S3 credentials.
    #[must_use]
    pub fn with_session_token(mut self, token: impl Into<String>) -> Self {
        self.session_token = Some(Secret::new(token));
        self
    }

    /// Sets the path of a GCS service-account JSON file.
    #[must_use]
    pub fn with_gcs_service_account_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.gcs_service_account_path = Some(path.into());
        self
    }

    /// Sets the GCS service-account JSON itself.
    #[must_use]
    pub fn with_gcs_service_account_key(mut self, json: impl Into<String>) -> Self {
        self.gcs_service_account_key = Some(Secret::new(json));
        self
    }

    /// Sets the Azure storage account and its access key.
    #[must_use]
    pub fn with_azure_account(
        mut self,
        account: impl Into<String>,
        access_key: impl Into<String>,
    ) -> Self {
        self.azure_account = Some(account.into());
        self.azure_access_key = Some(Secret::new(access_key));
        self
    }

    /// Sets the timeout of one HTTP request.
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Sets how many times one failed HTTP request is retried inside object_store.
    #[must_use]
    pub fn with_http_max_retries(mut self, retries: usize) -> Self {
        self.http_max_retries = Some(retries);
        self
    }

    /// Sets the retry limits of idempotent calls, or turns retries off with `None`.
    #[must_use]
    pub fn with_retry(mut self, retry: Option<RetryConfig>) -> Self {
        self.retry = retry;
        self
    }

    /// Sets how streamed uploads are cut into parts.
    #[must_use]
    pub fn with_multipart(mut self, multipart: MultipartOptions) -> Self {
        self.multipart = multipart;
        self
    }
}

impl fmt::Debug for TargetOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written out by hand so that a new secret field cannot slip into `Debug`
        // through a derive: every field is listed here on purpose.
        f.debug_struct("TargetOptions")
            .field("endpoint", &self.endpoint.as_deref().map(redact_url))
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("allow_http", &self.allow_http)
            .field("ca_file", &self.ca_file)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .field("gcs_service_account_path", &self.gcs_service_account_path)
            .field("gcs_service_account_key", &self.gcs_service_account_key)
            .field("azure_account", &self.azure_account)
            .field("azure_access_key", &self.azure_access_key)
            .field("request_timeout", &self.request_timeout)
            .field("http_max_retries", &self.http_max_retries)
            .field("multipart", &self.multipart)
            .field("retry", &self.retry)
            .field("local_access", &self.local_access)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_every_secret() {
        let options = TargetOptions::default()
            .with_endpoint("https://user:endpointpass@minio.internal:9000")
            .with_credentials("AKIDEXAMPLE", "secret-access-key-value")
            .with_session_token("session-token-value")
            .with_gcs_service_account_key("{\"private_key\": \"gcs-key-value\"}")
            .with_azure_account("account", "azure-key-value");
        let debug = format!("{options:?}");
        for secret in [
            "endpointpass",
            "secret-access-key-value",
            "session-token-value",
            "gcs-key-value",
            "azure-key-value",
        ] {
            assert!(!debug.contains(secret), "{secret} leaked: {debug}");
        }
        assert!(debug.contains("AKIDEXAMPLE"), "{debug}");
        assert!(debug.contains("minio.internal"), "{debug}");
    }
}
