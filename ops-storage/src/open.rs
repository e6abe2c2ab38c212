//! Turning a target URL and [`TargetOptions`] into a target.
//!
//! Parsing ([`TargetUrl::parse`]) is separate from building so that the CLI can
//! validate a URL without touching the network or the disk.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;
use ops_core::{BackupTarget, Error, ErrorKind, Result, redact_url};

use crate::options::TargetOptions;
use crate::retry::RetryTarget;
use crate::target::ObjectStoreTarget;

/// A parsed target URL.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TargetUrl {
    /// A local directory (`/abs/path`, `relative/path`, `file:///abs/path`), made
    /// absolute against the current directory.
    Local(PathBuf),
    /// An in-process store that lives as long as the target (`memory://`).
    Memory,
    /// `s3://bucket/prefix`.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket (may be empty).
        prefix: String,
    },
    /// `gs://bucket/prefix` (feature `gcs` to open).
    Gcs {
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket (may be empty).
        prefix: String,
    },
    /// `azure://container/prefix` or `az://container/prefix` (feature `azure` to
    /// open); the storage account comes from [`TargetOptions::azure_account`] or
    /// `AZURE_STORAGE_ACCOUNT_NAME`.
    Azure {
        /// Container name.
        container: String,
        /// Key prefix inside the container (may be empty).
        prefix: String,
    },
}

impl TargetUrl {
    /// Parses a target URL (see the variants for the accepted forms).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for an unknown scheme, a missing bucket, a
    /// relative `file://` URL, or credentials written into the URL (they belong in
    /// the environment or [`TargetOptions`], where they are kept out of logs).
    pub fn parse(url: &str) -> Result<Self> {
        let Some((scheme, rest)) = url.split_once("://") else {
            if url.trim().is_empty() {
                return Err(Error::invalid("the target location is empty"));
            }
            return Ok(Self::Local(absolute(url)?));
        };
        let bad = |why: &str| {
            Error::invalid(format!("invalid target URL: {why}"))
                .with_context("target", redact_url(url))
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
                if parsed
                    .host_str()
                    .is_some_and(|h| !h.is_empty() && h != "localhost")
                {
                    return Err(bad("file URLs take an absolute path: file:///var/backups"));
                }
                let path = parsed
                    .to_file_path()
                    .map_err(|()| bad("file URLs take an absolute path: file:///var/backups"))?;
                Ok(Self::Local(path))
            }
            "memory" => {
                if !rest.trim_matches('/').is_empty() {
                    return Err(bad("memory targets take no path: memory://"));
                }
                Ok(Self::Memory)
            }
            "s3" | "s3a" | "gs" | "gcs" | "azure" | "az" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.contains('@') {
                    return Err(bad(
                        "credentials do not belong in the URL; use AWS_*/GOOGLE_*/AZURE_* \
                         environment variables or the target options",
                    ));
                }
                if bucket.is_empty() || bucket.contains(['?', '#', ':']) {
                    return Err(bad("expected scheme://bucket/prefix"));
                }
                if rest.contains(['?', '#']) {
                    return Err(bad("query strings and fragments are not supported"));
                }
                let bucket = bucket.to_owned();
                let prefix = prefix.trim_matches('/').to_owned();
                Ok(match scheme {
                    "s3" | "s3a" => Self::S3 { bucket, prefix },
                    "gs" | "gcs" => Self::Gcs { bucket, prefix },
                    _ => Self::Azure {
                        container: bucket,
                        prefix,
                    },
                })
            }
            other => Err(bad(&format!(
                "unknown scheme {other:?}; expected a path, file://, memory://, s3://, gs:// or azure://"
            ))),
        }
    }

    /// True for the stores that keep objects off this machine.
    pub fn is_remote(&self) -> bool {
        matches!(
            self,
            Self::S3 { .. } | Self::Gcs { .. } | Self::Azure { .. }
        )
    }

    /// The URL in canonical form, for messages.
    pub fn display(&self) -> String {
        let join = |scheme: &str, bucket: &str, prefix: &str| {
            if prefix.is_empty() {
                format!("{scheme}://{bucket}")
            } else {
                format!("{scheme}://{bucket}/{prefix}")
            }
        };
        match self {
            Self::Local(path) => path.display().to_string(),
            Self::Memory => "memory://".to_owned(),
            Self::S3 { bucket, prefix } => join("s3", bucket, prefix),
            Self::Gcs { bucket, prefix } => join("gs", bucket, prefix),
            Self::Azure { container, prefix } => join("azure", container, prefix),
        }
    }
}

fn absolute(path: &str) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io(format!("resolving the path {path}"), e))
}

/// Opens the target at `url` as an [`ObjectStoreTarget`] (no retry layer).
///
/// Accepted URLs: a path or `file:///abs/path` (a local directory, created on the
/// first write), `memory://`, `s3://bucket/prefix`, and with features `gcs` /
/// `azure`: `gs://bucket/prefix`, `azure://container/prefix`, `az://…`. Opening
/// does not touch the network: a wrong bucket or bad credentials show up on the
/// first call.
///
/// # Errors
/// [`ErrorKind::InvalidInput`] for a bad URL or options, a scheme whose feature is
/// not compiled in, or a local path that exists but is not a directory;
/// [`ErrorKind::Io`] when the CA file cannot be read.
pub fn open_object_store_target(url: &str, options: &TargetOptions) -> Result<ObjectStoreTarget> {
    let parsed = TargetUrl::parse(url)?;
    let location = parsed.display();
    let (stores, prefix): (Stores, object_store::path::Path) = match &parsed {
        TargetUrl::Local(dir) => {
            if dir.exists() && !dir.is_dir() {
                return Err(Error::invalid(format!(
                    "{} exists and is not a directory",
                    dir.display()
                )));
            }
            // Rooted at `/` with the directory as key prefix (instead of
            // `new_with_prefix`, which needs the directory to exist): the directory
            // is created by the first write, not by opening — a typo in a read-only
            // command must not leave directories behind.
            let prefix = object_store::path::Path::from_absolute_path(dir).map_err(|e| {
                Error::invalid(format!("unusable directory {}: {e}", dir.display()))
            })?;
            let store = crate::local::PrivateLocalStore::new(dir.clone(), options.local_access);
            (Stores::one(Arc::new(store)), prefix)
        }
        TargetUrl::Memory => (
            Stores::one(Arc::new(object_store::memory::InMemory::new())),
            object_store::path::Path::default(),
        ),
        TargetUrl::S3 { bucket, prefix } => {
            (s3(bucket, options)?, parse_prefix(prefix, &location)?)
        }
        TargetUrl::Gcs { bucket, prefix } => {
            (gcs(bucket, options)?, parse_prefix(prefix, &location)?)
        }
        TargetUrl::Azure { container, prefix } => {
            (azure(container, options)?, parse_prefix(prefix, &location)?)
        }
    };
    let mut target =
        ObjectStoreTarget::from_parts(stores.calls, prefix, &location, parsed.is_remote())
            .with_multipart(options.multipart.clone());
    if let Some(streams) = stores.streams {
        target = target.with_stream_store(streams);
    }
    Ok(target)
}

/// The store of a target's ordinary calls and, when it differs, the store its
/// streamed uploads use (see [`HttpRetries`]).
struct Stores {
    calls: Arc<dyn ObjectStore>,
    streams: Option<Arc<dyn ObjectStore>>,
}

impl Stores {
    fn one(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            calls: store,
            streams: None,
        }
    }

    /// Builds the store(s) from one configured builder, once per retry setting.
    fn build<B: Clone, S: ObjectStore>(
        builder: B,
        retries: &HttpRetries,
        with_retry: impl Fn(B, object_store::RetryConfig) -> B,
        build: impl Fn(B) -> object_store::Result<S>,
        what: &str,
    ) -> Result<Self> {
        let calls = build(with_retry(builder.clone(), retries.calls.clone()))
            .map_err(|e| build_error(e, what))?;
        let streams = match &retries.streams {
            Some(config) => Some(Arc::new(
                build(with_retry(builder, config.clone())).map_err(|e| build_error(e, what))?,
            ) as Arc<dyn ObjectStore>),
            None => None,
        };
        Ok(Self {
            calls: Arc::new(calls),
            streams,
        })
    }
}

/// object_store's own HTTP retries when [`RetryTarget`] wraps the target and
/// [`TargetOptions::http_max_retries`] is unset: one quick retry of a request (a
/// pooled connection the server closed, a single 503) and no more, so that
/// RetryTarget's 6 attempts are not multiplied by object_store's 10 — which made a
/// dead endpoint take many minutes to report.
pub const WRAPPED_HTTP_MAX_RETRIES: usize = 1;

/// object_store's HTTP retry settings for a remote store.
///
/// The two retry layers must not multiply, yet a streamed upload must not lose
/// retries: RetryTarget never retries `put_stream` (its stream cannot be replayed),
/// and it cannot retry one part of a multipart upload either, so object_store's
/// per-request retry is all a part gets. Hence, when RetryTarget wraps the target
/// and the user did not choose: ordinary calls use a store with
/// [`WRAPPED_HTTP_MAX_RETRIES`], streamed uploads (their parts, their start and
/// completion, and the single put of a short stream) use a second store with
/// object_store's default (10 retries within 3 minutes). A user's
/// `http_max_retries` applies to both; without RetryTarget, both keep the default.
struct HttpRetries {
    calls: object_store::RetryConfig,
    /// `None`: streamed uploads use the same store as the calls.
    streams: Option<object_store::RetryConfig>,
}

impl HttpRetries {
    fn of(options: &TargetOptions) -> Self {
        match (options.http_max_retries, &options.retry) {
            (Some(retries), _) => Self {
                calls: http_retry(retries),
                streams: None,
            },
            (None, Some(_)) => Self {
                calls: http_retry(WRAPPED_HTTP_MAX_RETRIES),
                streams: Some(object_store::RetryConfig::default()),
            },
            (None, None) => Self {
                calls: object_store::RetryConfig::default(),
                streams: None,
            },
        }
    }
}

/// Opens the target at `url` (see [`open_object_store_target`] for the accepted
/// URLs), wrapped in a [`RetryTarget`] unless [`TargetOptions::retry`] is `None`.
///
/// With the RetryTarget, object_store's own retries of one HTTP request are cut
/// to [`WRAPPED_HTTP_MAX_RETRIES`] for every call but `put_stream`, unless
/// [`TargetOptions::http_max_retries`] says otherwise (see the crate README,
/// "Retries").
///
/// # Errors
/// As [`open_object_store_target`].
pub fn open_target(url: &str, options: &TargetOptions) -> Result<Arc<dyn BackupTarget>> {
    let target: Arc<dyn BackupTarget> = Arc::new(open_object_store_target(url, options)?);
    Ok(match &options.retry {
        Some(config) => Arc::new(RetryTarget::new(target).with_config(config.clone())),
        None => target,
    })
}

fn parse_prefix(prefix: &str, location: &str) -> Result<object_store::path::Path> {
    if prefix.is_empty() {
        return Ok(object_store::path::Path::default());
    }
    object_store::path::Path::parse(prefix).map_err(|e| {
        Error::invalid(format!("invalid key prefix {prefix:?}: {e}"))
            .with_context("target", location)
    })
}

fn build_error(err: object_store::Error, what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!("cannot configure the {what} target"),
    )
    .with_source(err)
}

/// HTTP client options shared by the remote stores: the environment's client keys
/// (replayed, because setting client options replaces them), a private CA, a timeout.
fn client_options(
    options: &TargetOptions,
    env_prefix: &str,
) -> Result<Option<object_store::ClientOptions>> {
    if options.ca_file.is_none() && options.request_timeout.is_none() {
        return Ok(None);
    }
    let mut client = object_store::ClientOptions::new();
    for (key, value) in std::env::vars() {
        if let Some(name) = key.strip_prefix(env_prefix)
            && let Ok(config_key) = name.to_ascii_lowercase().parse()
        {
            client = client.with_config(config_key, value);
        }
    }
    if let Some(path) = &options.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| Error::io(format!("reading the CA file {}", path.display()), e))?;
        let certs = object_store::Certificate::from_pem_bundle(&pem).map_err(|e| {
            Error::invalid(format!(
                "{} holds no usable PEM certificate",
                path.display()
            ))
            .with_source(e)
        })?;
        for cert in certs {
            client = client.with_root_certificate(cert);
        }
    }
    if let Some(timeout) = options.request_timeout {
        client = client.with_timeout(timeout);
    }
    if let Some(allow) = options.allow_http {
        client = client.with_allow_http(allow);
    }
    Ok(Some(client))
}

fn http_retry(max_retries: usize) -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries,
        ..object_store::RetryConfig::default()
    }
}

/// The S3 endpoint in force: the option, else `AWS_ENDPOINT_URL` / `AWS_ENDPOINT`.
pub(crate) fn s3_endpoint(options: &TargetOptions) -> Option<String> {
    options.endpoint.clone().or_else(|| {
        ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|e| !e.is_empty()))
    })
}

fn s3(bucket: &str, options: &TargetOptions) -> Result<Stores> {
    use object_store::aws::AmazonS3Builder;
    // object_store refuses a plain-HTTP endpoint only when the first request is sent,
    // as "HTTP error: builder error": say what is wrong and what to do, up front.
    if let Some(endpoint) = s3_endpoint(options).filter(|e| e.starts_with("http://")) {
        let allowed = options.allow_http.unwrap_or_else(|| {
            std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        });
        if !allowed {
            return Err(Error::invalid(format!(
                "the S3 endpoint {endpoint} for bucket {bucket} is plain HTTP, which is refused unless allowed: use https://, or set AWS_ALLOW_HTTP=true for a store on a trusted network (a MinIO on this host)"
            )));
        }
    }
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(client) = client_options(options, "AWS_")? {
        builder = builder.with_client_options(client);
    }
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &options.region {
        builder = builder.with_region(region);
    }
    if let Some(path_style) = options.path_style {
        builder = builder.with_virtual_hosted_style_request(!path_style);
    }
    if let Some(allow) = options.allow_http {
        builder = builder.with_allow_http(allow);
    }
    if let Some(key_id) = &options.access_key_id {
        builder = builder.with_access_key_id(key_id);
    }
    if let Some(secret) = &options.secret_access_key {
        builder = builder.with_secret_access_key(secret.expose());
    }
    if let Some(token) = &options.session_token {
        builder = builder.with_token(token.expose());
    }
    Stores::build(
        builder,
        &HttpRetries::of(options),
        AmazonS3Builder::with_retry,
        AmazonS3Builder::build,
        "S3",
    )
}

#[cfg(feature = "gcs")]
fn gcs(bucket: &str, options: &TargetOptions) -> Result<Stores> {
    use object_store::gcp::GoogleCloudStorageBuilder;
    let mut builder = GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket);
    if let Some(client) = client_options(options, "GOOGLE_")? {
        builder = builder.with_client_options(client);
    }
    if let Some(path) = &options.gcs_service_account_path {
        builder = builder.with_service_account_path(path.to_string_lossy());
    }
    if let Some(key) = &options.gcs_service_account_key {
        builder = builder.with_service_account_key(key.expose());
    }
    Stores::build(
        builder,
        &HttpRetries::of(options),
        GoogleCloudStorageBuilder::with_retry,
        GoogleCloudStorageBuilder::build,
        "GCS",
    )
}

#[cfg(not(feature = "gcs"))]
fn gcs(_bucket: &str, _options: &TargetOptions) -> Result<Stores> {
    Err(Error::invalid(
        "gs:// targets need ops-storage built with the `gcs` feature",
    ))
}

#[cfg(feature = "azure")]
fn azure(container: &str, options: &TargetOptions) -> Result<Stores> {
    use object_store::azure::MicrosoftAzureBuilder;
    let mut builder = MicrosoftAzureBuilder::from_env().with_container_name(container);
    if let Some(client) = client_options(options, "AZURE_")? {
        builder = builder.with_client_options(client);
    }
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    if let Some(allow) = options.allow_http {
        builder = builder.with_allow_http(allow);
    }
    if let Some(account) = &options.azure_account {
        builder = builder.with_account(account);
    }
    if let Some(key) = &options.azure_access_key {
        builder = builder.with_access_key(key.expose());
    }
    Stores::build(
        builder,
        &HttpRetries::of(options),
        MicrosoftAzureBuilder::with_retry,
        MicrosoftAzureBuilder::build,
        "Azure",
    )
}

#[cfg(not(feature = "azure"))]
fn azure(_container: &str, _options: &TargetOptions) -> Result<Stores> {
    Err(Error::invalid(
        "azure:// targets need ops-storage built with the `azure` feature",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        assert_eq!(
            TargetUrl::parse("/var/backups").expect("path"),
            TargetUrl::Local("/var/backups".into())
        );
        assert_eq!(
            TargetUrl::parse("file:///var/backups/db").expect("file"),
            TargetUrl::Local("/var/backups/db".into())
        );
        assert!(
            matches!(TargetUrl::parse("rel/dir").expect("relative"), TargetUrl::Local(p) if p.is_absolute())
        );
        assert_eq!(
            TargetUrl::parse("memory://").expect("memory"),
            TargetUrl::Memory
        );
        assert_eq!(
            TargetUrl::parse("s3://bucket/some/prefix/").expect("s3"),
            TargetUrl::S3 {
                bucket: "bucket".into(),
                prefix: "some/prefix".into()
            }
        );
        assert_eq!(
            TargetUrl::parse("gs://b").expect("gs"),
            TargetUrl::Gcs {
                bucket: "b".into(),
                prefix: String::new()
            }
        );
        for url in ["azure://c/p", "az://c/p"] {
            assert_eq!(
                TargetUrl::parse(url).expect("azure"),
                TargetUrl::Azure {
                    container: "c".into(),
                    prefix: "p".into()
                }
            );
        }
        assert!(TargetUrl::parse("s3://b").expect("s3").is_remote());
        assert!(!TargetUrl::parse("memory://").expect("memory").is_remote());
    }

    #[test]
    fn rejects_bad_urls_without_leaking_secrets() {
        for url in [
            "",
            "ftp://host/x",
            "s3://",
            "s3:///prefix",
            "file://host/x",
            "memory://x",
            "s3://b/p?x=1",
        ] {
            let err = TargetUrl::parse(url).expect_err(url);
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{url}");
        }
        let err = TargetUrl::parse("s3://AKID:topsecret@bucket/x").expect_err("creds");
        assert!(!format!("{err} {err:?}").contains("topsecret"), "{err:?}");
    }

    #[test]
    fn opens_without_network_and_reports_remote() {
        let options = TargetOptions::default()
            .with_credentials("AKID", "supersecret")
            .with_endpoint("http://127.0.0.1:9")
            .with_allow_http(true)
            .with_region("eu-west-1");
        let target = open_target("s3://bucket/prefix", &options).expect("opens");
        assert!(target.is_remote());
        assert_eq!(target.location(), "s3://bucket/prefix");
        assert!(!format!("{target:?}").contains("supersecret"), "{target:?}");
        let local = open_target("memory://", &TargetOptions::default()).expect("opens");
        assert!(!local.is_remote());
    }

    #[cfg(feature = "azure")]
    #[test]
    fn azure_opens_with_account_and_hides_the_key() {
        let options = TargetOptions::default()
            .with_azure_account("devstoreaccount1", "c2VjcmV0LWF6dXJlLWtleQ==");
        for url in [
            "azure://container/some/prefix",
            "az://container/some/prefix",
        ] {
            let target = open_target(url, &options).expect("opens");
            assert!(target.is_remote());
            assert_eq!(target.location(), "azure://container/some/prefix");
            assert!(
                !format!("{target:?} {options:?}").contains("c2VjcmV0"),
                "{target:?}"
            );
        }
    }

    #[cfg(feature = "gcs")]
    #[test]
    fn gcs_opens_and_reports_remote() {
        let target = open_target("gs://bucket/prefix", &TargetOptions::default()).expect("opens");
        assert!(target.is_remote());
        assert_eq!(target.location(), "gs://bucket/prefix");
    }

    #[test]
    fn features_not_built_say_so() {
        #[cfg(not(feature = "gcs"))]
        {
            let err = open_target("gs://b/p", &TargetOptions::default()).expect_err("no gcs");
            assert!(err.to_string().contains("`gcs` feature"), "{err}");
        }
        #[cfg(not(feature = "azure"))]
        {
            let err = open_target("az://c/p", &TargetOptions::default()).expect_err("no azure");
            assert!(err.to_string().contains("`azure` feature"), "{err}");
        }
    }
}
