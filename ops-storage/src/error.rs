//! Converting `object_store` errors into [`ops_core::Error`] at the boundary.
//!
//! Every error names the object key (`object` context) and the redacted target
//! location (`target` context), and says whether retrying can help.

use std::error::Error as StdError;

use object_store::client::{HttpError, HttpErrorKind};
use ops_core::{Error, ErrorKind};

/// Converts an `object_store` error from `doing` (e.g. "writing") on `key`.
pub(crate) fn from_store(
    err: object_store::Error,
    doing: &str,
    key: &str,
    location: &str,
) -> Error {
    use object_store::Error as E;
    let (kind, temporary, what) = match &err {
        E::NotFound { .. } => (ErrorKind::NotFound, false, "no such object".to_owned()),
        // object_store turns every 409 into `AlreadyExists`, but S3's 409s say that
        // another request on the same key or bucket is in progress, not that the
        // object exists: retrying is the documented answer.
        E::AlreadyExists { .. } | E::Precondition { .. } if is_conflict_in_progress(&err) => {
            (ErrorKind::Storage, true, CONFLICT_IN_PROGRESS.to_owned())
        }
        E::AlreadyExists { .. } | E::Precondition { .. } => (
            ErrorKind::AlreadyExists,
            false,
            "the object already exists".to_owned(),
        ),
        E::PermissionDenied { .. } => (
            ErrorKind::PermissionDenied,
            false,
            "permission denied: check the bucket policy or the role's rights".to_owned(),
        ),
        E::Unauthenticated { .. } => (
            ErrorKind::Authentication,
            false,
            "the store rejected the credentials".to_owned(),
        ),
        E::InvalidPath { .. } => (
            ErrorKind::InvalidInput,
            false,
            "invalid object key".to_owned(),
        ),
        E::NotSupported { .. } | E::NotImplemented { .. } => (
            ErrorKind::Storage,
            false,
            "the store does not support this operation".to_owned(),
        ),
        E::JoinError { .. } => (
            ErrorKind::Interrupted,
            false,
            "the storage task was cancelled".to_owned(),
        ),
        _ => classify_chain(&err),
    };
    let text = err.to_string();
    let mut out = Error::new(kind, format!("{doing} failed: {what}"))
        .with_context("object", key)
        .with_context("target", location);
    // An S3 error page is XML: keep its code and message, not the page.
    out = match s3_error_page(&text) {
        Some((code, message)) => {
            let endpoint = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
                .iter()
                .find_map(|v| std::env::var(v).ok().filter(|e| !e.is_empty()))
                .unwrap_or_else(|| "AWS S3 (no AWS_ENDPOINT_URL set)".to_owned());
            let hint = match code.as_str() {
                "NoSuchBucket" => format!(
                    "; the bucket of {location} does not exist at {endpoint}: create it, or check the bucket name, AWS_REGION and AWS_ENDPOINT_URL"
                ),
                "InvalidAccessKeyId" | "SignatureDoesNotMatch" => format!(
                    "; {endpoint} does not accept these credentials: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                ),
                "AccessDenied" => format!(
                    "; {endpoint} denies this to these credentials: check the bucket policy and the key's rights"
                ),
                _ => format!(" (endpoint {endpoint})"),
            };
            let kind = if code == "NoSuchBucket" {
                ErrorKind::NotFound
            } else {
                out.kind()
            };
            let mut e = Error::new(
                kind,
                format!("{doing} failed: S3 error {code}: {message}{hint}"),
            )
            .with_context("object", key)
            .with_context("target", location)
            .with_context("s3_code", &code);
            // ops-core's open tells "no repository here" from "no store here" by this.
            if code == "NoSuchBucket" {
                e = e.with_context("store_missing", "bucket");
            }
            e
        }
        None => out.with_source(err),
    };
    if temporary {
        out = out.temporary();
    }
    out
}

/// The `<Code>` and `<Message>` of an S3 XML error page inside an error's text.
fn s3_error_page(text: &str) -> Option<(String, String)> {
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(text[start..end].trim().to_owned())
    };
    let code = tag("Code")?;
    Some((code, tag("Message").unwrap_or_default()))
}

/// S3 error codes of a 409 that means "a conflicting request is in progress, try
/// again": `ConditionalRequestConflict` (two conditional writes to one key, e.g. two
/// `If-None-Match: *` creates racing) and `OperationAborted` (a conflicting
/// operation on the bucket or key).
const CONFLICT_CODES: [&str; 2] = ["ConditionalRequestConflict", "OperationAborted"];

const CONFLICT_IN_PROGRESS: &str =
    "a conflicting request on this object is in progress (409 Conflict); try again";

/// True when `err` is a 409 whose S3 error code says that a conflicting request is
/// in progress (see [`CONFLICT_CODES`]), as opposed to Azure's 409 for an object
/// that exists. object_store keeps the status in a private type; its message holds
/// the response body, which holds the code.
pub(crate) fn is_conflict_in_progress(err: &object_store::Error) -> bool {
    let text = err.to_string();
    CONFLICT_CODES.iter().any(|code| text.contains(code))
}

/// Classifies a generic error by what lies in its source chain: a local I/O error,
/// an HTTP transport error, or an HTTP status.
fn classify_chain(err: &(dyn StdError + 'static)) -> (ErrorKind, bool, String) {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as Io;
            return match io.kind() {
                Io::PermissionDenied | Io::ReadOnlyFilesystem => (
                    ErrorKind::PermissionDenied,
                    false,
                    format!(
                        "permission denied ({io}): the directory must be writable by this user"
                    ),
                ),
                Io::NotFound => (ErrorKind::NotFound, false, io.to_string()),
                Io::StorageFull | Io::QuotaExceeded => {
                    (ErrorKind::Io, false, format!("no space left ({io})"))
                }
                Io::Interrupted | Io::TimedOut | Io::WouldBlock => {
                    (ErrorKind::Io, true, io.to_string())
                }
                _ => (ErrorKind::Io, false, io.to_string()),
            };
        }
        if let Some(http) = e.downcast_ref::<HttpError>() {
            return match http.kind() {
                HttpErrorKind::Connect => (
                    ErrorKind::Unreachable,
                    true,
                    "could not connect to the store".to_owned(),
                ),
                HttpErrorKind::Timeout => (
                    ErrorKind::Unreachable,
                    true,
                    "the store did not answer in time".to_owned(),
                ),
                HttpErrorKind::Request | HttpErrorKind::Interrupted => (
                    ErrorKind::Storage,
                    true,
                    "the request to the store was interrupted".to_owned(),
                ),
                _ => (
                    ErrorKind::Storage,
                    false,
                    "unexpected answer from the store".to_owned(),
                ),
            };
        }
        current = e.source();
    }
    classify_status_text(&err.to_string())
}

/// object_store 0.14 keeps the HTTP status of a failed request in a private type
/// (`client::retry::RetryError`); only its message carries it, as
/// `status code: 503 Service Unavailable`. Read it from there.
fn classify_status_text(text: &str) -> (ErrorKind, bool, String) {
    let status = text
        .find("status code: ")
        .and_then(|at| text.get(at + 13..at + 16))
        .and_then(|code| code.parse::<u16>().ok());
    let throttled = ["SlowDown", "Throttl", "RequestTimeout", "TooManyRequests"]
        .iter()
        .any(|word| text.contains(word));
    match status {
        Some(429) => (
            ErrorKind::Storage,
            true,
            "the store throttled the request".to_owned(),
        ),
        Some(401) => (
            ErrorKind::Authentication,
            false,
            "the store rejected the credentials".to_owned(),
        ),
        Some(403) => (
            ErrorKind::PermissionDenied,
            false,
            "permission denied".to_owned(),
        ),
        Some(409) if CONFLICT_CODES.iter().any(|code| text.contains(code)) => {
            (ErrorKind::Storage, true, CONFLICT_IN_PROGRESS.to_owned())
        }
        Some(408) => (
            ErrorKind::Unreachable,
            true,
            "the request timed out".to_owned(),
        ),
        Some(code @ 500..=599) => (
            ErrorKind::Storage,
            true,
            format!("the store answered with server error {code}"),
        ),
        Some(code) => (
            ErrorKind::Storage,
            throttled,
            format!("the store answered with status {code}"),
        ),
        None => (
            ErrorKind::Storage,
            throttled,
            "the store reported an error".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_is_classified() {
        let (kind, temp, _) = classify_status_text(
            "Error performing PUT http://x/b/k in 1s - Server returned non-2xx status code: 503 Service Unavailable: <Error><Code>SlowDown</Code></Error>",
        );
        assert_eq!((kind, temp), (ErrorKind::Storage, true));
        let (kind, temp, _) =
            classify_status_text("Server returned non-2xx status code: 403 Forbidden: ");
        assert_eq!((kind, temp), (ErrorKind::PermissionDenied, false));
        let (kind, temp, _) = classify_status_text(
            "Server returned non-2xx status code: 409 Conflict: <Error><Code>OperationAborted</Code></Error>",
        );
        assert_eq!((kind, temp), (ErrorKind::Storage, true));
        let (kind, temp, _) = classify_status_text("something odd");
        assert_eq!((kind, temp), (ErrorKind::Storage, false));
    }

    /// What object_store 0.14 makes of S3's answer to two racing `If-None-Match: *`
    /// puts: every 409 becomes `AlreadyExists`, the body keeps the S3 code.
    fn conflict_409(code: &str) -> object_store::Error {
        object_store::Error::AlreadyExists {
            path: "locks/x".to_owned(),
            source: format!(
                "Error performing PUT http://x/b/locks/x in 20ms - Server returned non-2xx \
                 status code: 409 Conflict: <?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                 <Error><Code>{code}</Code><Message>A conflicting conditional operation is \
                 currently in progress against this resource. Please try again.</Message></Error>"
            )
            .into(),
        }
    }

    #[test]
    fn conditional_request_conflict_is_temporary() {
        let err = from_store(
            conflict_409("ConditionalRequestConflict"),
            "creating if absent",
            "locks/x",
            "s3://b",
        );
        assert_eq!(err.kind(), ErrorKind::Storage, "{err}");
        assert!(err.is_temporary(), "{err:?}");
        assert!(err.to_string().contains("in progress"), "{err}");
        // Azure (Azurite) answers an existing blob with a 409 too: that one stays
        // `AlreadyExists`.
        let exists = object_store::Error::AlreadyExists {
            path: "locks/x".to_owned(),
            source: "Server returned non-2xx status code: 409 Conflict: <Error><Code>BlobAlreadyExists</Code></Error>".into(),
        };
        assert!(!is_conflict_in_progress(&exists));
        let err = from_store(exists, "creating if absent", "locks/x", "az://c");
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        assert!(!err.is_temporary());
    }

    #[test]
    fn local_permission_error_names_the_path() {
        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let err = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(io),
        };
        let err = from_store(err, "writing", "packs/ab", "/srv/backups");
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        assert!(!err.is_temporary());
        let text = err.to_string();
        assert!(
            text.contains("/srv/backups") && text.contains("packs/ab"),
            "{text}"
        );
    }
}
