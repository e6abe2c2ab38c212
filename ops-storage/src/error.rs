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
    let mut out = Error::new(kind, format!("{doing} failed: {what}"))
        .with_context("object", key)
        .with_context("target", location)
        .with_source(err);
    if temporary {
        out = out.temporary();
    }
    out
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
        let (kind, temp, _) = classify_status_text("something odd");
        assert_eq!((kind, temp), (ErrorKind::Storage, false));
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
