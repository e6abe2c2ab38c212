//! Conversion of tokio-postgres and sqlx errors into [`ops_core::Error`].
//!
//! The kind comes from the SQLSTATE (kept as `sqlstate` context); the message says
//! what was being done. Neither driver puts the password in its `Display`, and we
//! never hand them a URL, so nothing here can leak it.

use std::fmt::Display;

use ops_core::{Error, ErrorKind};

/// The kind for a SQLSTATE.
pub(crate) fn kind_for_sqlstate(code: &str) -> ErrorKind {
    match code {
        "28P01" | "28000" => ErrorKind::Authentication,
        "42501" => ErrorKind::PermissionDenied,
        "3D000" => ErrorKind::NotFound,
        "42P04" | "42P06" | "42P07" | "42710" => ErrorKind::AlreadyExists,
        "55P03" => ErrorKind::Locked,
        "57P01" | "57P02" | "57P03" | "57014" => ErrorKind::Interrupted,
        c if c.starts_with("08") => ErrorKind::Interrupted,
        "53300" => ErrorKind::Unreachable,
        _ => ErrorKind::Database,
    }
}

fn temporary(code: &str) -> bool {
    matches!(code, "53300" | "57P03" | "40001" | "40P01") || code.starts_with("08")
}

/// Converts a tokio-postgres error raised while connecting to `location`.
pub(crate) fn connect_error(err: tokio_postgres::Error, location: &str) -> Error {
    if err.as_db_error().is_some() {
        return query_error(err, format!("connecting to {location}"));
    }
    let text = chain_text(&err);
    if text.contains("password missing") {
        // tokio-postgres, asked for a password it was not given: not a network fault,
        // and trying again will not help.
        return Error::new(
            ErrorKind::Authentication,
            format!("connecting to {location}: the server asks for a password"),
        );
    }
    if let Some(err) = tls_failure(&text, &format!("could not connect to {location}")) {
        return err;
    }
    Error::new(
        ErrorKind::Unreachable,
        format!("could not connect to {location}: {text}"),
    )
    .temporary()
}

/// A TLS failure, explained: what was wrong with the server's certificate (or that it
/// offers no TLS) and what to do. Never temporary: trying again meets the same
/// certificate. A certificate that does not verify is an authentication failure (the
/// server could not prove who it is); there is no fallback to an unverified or plain
/// connection.
pub(crate) fn tls_failure(text: &str, doing: &str) -> Option<Error> {
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    let (kind, advice) = if has(&[
        "UnknownIssuer",
        "unknown issuer",
        "BadSignature",
        "certificate verify failed",
    ]) {
        (
            ErrorKind::Authentication,
            "the server's TLS certificate is not signed by the CA dbops trusts (sslrootcert, \
             PGSSLROOTCERT or ~/.postgresql/root.crt): give the CA certificate that issued the \
             server's certificate",
        )
    } else if has(&[
        "NotValidForName",
        "not valid for name",
        "does not match host name",
    ]) {
        (
            ErrorKind::Authentication,
            "the server's TLS certificate does not name the host dbops connected to: connect by \
             a name or address in the certificate's subjectAltName, or use sslmode=verify-ca to \
             check only that the CA signed it",
        )
    } else if has(&["Expired", "NotValidYet", "expired"]) {
        (
            ErrorKind::Authentication,
            "the server's TLS certificate is expired or not yet valid: renew it on the server \
             (or check this machine's clock)",
        )
    } else if has(&["does not support TLS", "does not support SSL"]) {
        (
            ErrorKind::Unreachable,
            "the server does not offer TLS and the sslmode asks for it: turn ssl on in the \
             server (dbops never falls back to a plain connection)",
        )
    } else if has(&["invalid peer certificate"]) {
        (
            ErrorKind::Authentication,
            "the server's TLS certificate was not accepted: check sslrootcert and the host name",
        )
    } else {
        return None;
    };
    Some(Error::new(kind, format!("{doing}: {advice} ({text})")))
}

/// Converts a tokio-postgres error raised while doing `doing`.
pub(crate) fn query_error(err: tokio_postgres::Error, doing: impl Display) -> Error {
    if let Some(db) = err.as_db_error() {
        let code = db.code().code();
        let mut message = format!("{doing}: {}", db.message());
        if let Some(detail) = db.detail() {
            message.push_str(&format!("; detail: {detail}"));
        }
        if let Some(hint) = db.hint() {
            message.push_str(&format!("; hint: {hint}"));
        }
        let mut out = Error::new(kind_for_sqlstate(code), message).with_context("sqlstate", code);
        if temporary(code) {
            out = out.temporary();
        }
        return out;
    }
    let text = chain_text(&err);
    if err.is_closed() || text.contains("connection closed") || io_source(&err) {
        return Error::new(
            ErrorKind::Interrupted,
            format!("{doing}: the server closed the connection ({text})"),
        );
    }
    Error::new(ErrorKind::Database, format!("{doing}: {text}"))
}

/// Column `idx` of a row the server sent, as `T`; a type or NULL the code did not
/// expect is an error, never a panic.
pub(crate) fn column<'a, T>(
    row: &'a tokio_postgres::Row,
    idx: usize,
    doing: &str,
) -> ops_core::Result<T>
where
    T: tokio_postgres::types::FromSql<'a>,
{
    row.try_get(idx).map_err(|e| {
        Error::new(
            ErrorKind::Database,
            format!("{doing}: unexpected value in column {idx}: {e}"),
        )
    })
}

/// Converts a sqlx error raised while doing `doing`.
pub(crate) fn sqlx_error(err: sqlx::Error, doing: impl Display) -> Error {
    match &err {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let mut message = format!("{doing}: {}", db.message());
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                if let Some(detail) = pg.detail() {
                    message.push_str(&format!("; detail: {detail}"));
                }
                if let Some(hint) = pg.hint() {
                    message.push_str(&format!("; hint: {hint}"));
                }
            }
            let mut out = Error::new(kind_for_sqlstate(&code), message);
            if !code.is_empty() {
                out = out.with_context("sqlstate", &code);
            }
            if temporary(&code) {
                out = out.temporary();
            }
            out
        }
        sqlx::Error::Tls(_) | sqlx::Error::Io(_)
            if let Some(tls) = tls_failure(&chain_text(&err), &doing.to_string()) =>
        {
            tls
        }
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut => {
            Error::new(ErrorKind::Unreachable, format!("{doing}: {err}")).temporary()
        }
        sqlx::Error::Configuration(_) => {
            Error::new(ErrorKind::InvalidInput, format!("{doing}: {err}"))
        }
        _ => Error::new(ErrorKind::Database, format!("{doing}: {err}")),
    }
}

fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

fn io_source(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = err.source();
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_kinds() {
        assert_eq!(kind_for_sqlstate("28P01"), ErrorKind::Authentication);
        assert_eq!(kind_for_sqlstate("42501"), ErrorKind::PermissionDenied);
        assert_eq!(kind_for_sqlstate("42P04"), ErrorKind::AlreadyExists);
        assert_eq!(kind_for_sqlstate("08006"), ErrorKind::Interrupted);
        assert_eq!(kind_for_sqlstate("23505"), ErrorKind::Database);
    }
}
