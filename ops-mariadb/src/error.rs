//! Conversion of driver errors into the dbops [`Error`], with the server's error code
//! and SQLSTATE as context and a kind the operator can act on.
//!
//! Driver errors never contain the password (the driver is handed it, never a URL), so
//! their text may be shown.

use mysql_async::{DriverError, Error as DbError, IoError};
use ops_core::{Error, ErrorKind};

/// Server error codes dbops reacts to.
pub(crate) mod code {
    /// Access denied for a user (wrong password, unknown user, host not allowed).
    pub const ACCESS_DENIED: u16 = 1045;
    /// Access denied for a user with no password given whose account authenticates
    /// another way (unix_socket, ...).
    pub const ACCESS_DENIED_NO_PASSWORD: u16 = 1698;
    /// Access denied to a database.
    pub const DB_ACCESS_DENIED: u16 = 1044;
    /// `RELOAD`, `SUPER` or similar privilege missing.
    pub const SPECIFIC_ACCESS_DENIED: u16 = 1227;
    /// Table-level privilege missing.
    pub const TABLE_ACCESS_DENIED: u16 = 1142;
    /// Column-level privilege missing.
    pub const COLUMN_ACCESS_DENIED: u16 = 1143;
    /// Routine-level privilege missing.
    pub const PROC_ACCESS_DENIED: u16 = 1370;
    /// Unknown database.
    pub const BAD_DB: u16 = 1049;
    /// Database exists.
    pub const DB_CREATE_EXISTS: u16 = 1007;
    /// Table does not exist.
    pub const NO_SUCH_TABLE: u16 = 1146;
    /// View references invalid objects.
    pub const VIEW_INVALID: u16 = 1356;
    /// `LOAD DATA LOCAL` not allowed (older servers).
    pub const NOT_ALLOWED_COMMAND: u16 = 1148;
    /// `LOAD DATA LOCAL` disabled on the server or client (10.6+).
    pub const LOAD_INFILE_CAPABILITY_DISABLED: u16 = 4166;
    /// Unknown system variable.
    pub const UNKNOWN_SYSTEM_VARIABLE: u16 = 1193;
    /// Definer account does not exist / needs SUPER or SET USER.
    pub const NO_SUCH_USER: u16 = 1449;
}

/// True for the error a `prefer` connection gets from a server without TLS.
pub(crate) fn is_no_tls(err: &DbError) -> bool {
    matches!(err, DbError::Driver(DriverError::NoClientSslFlagFromServer))
}

/// The rustls error behind a failed TLS handshake, if that is what `err` is.
fn rustls_error(err: &DbError) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = match err {
        DbError::Io(IoError::Io(io)) => Some(io),
        DbError::Io(IoError::Tls(tls)) => Some(tls),
        _ => None,
    };
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        // io::Error's source() skips the error it wraps.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(inner);
        }
        next = e.source();
    }
    None
}

/// The names a server's certificate holds (`DNS` names first, then addresses), when
/// the handshake failed only because none of them is the host connected to.
pub(crate) fn certificate_names(err: &DbError) -> Option<Vec<String>> {
    let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
        presented,
        ..
    })) = rustls_error(err)
    else {
        return None;
    };
    // webpki writes them as `DnsName("db.example")` and `IpAddress(192.0.2.1)`.
    let dns = presented.iter().filter_map(|p| {
        p.strip_prefix("DnsName(\"")
            .and_then(|n| n.strip_suffix("\")"))
            .map(|n| n.replace("*.", "any."))
    });
    let ips = presented.iter().filter_map(|p| {
        p.strip_prefix("IpAddress(")
            .and_then(|n| n.strip_suffix(')'))
            .map(str::to_owned)
    });
    let names: Vec<String> = dns.chain(ips).collect();
    (!names.is_empty()).then_some(names)
}

/// A failed TLS handshake, explained; `None` for other errors. Never temporary: the
/// same certificate answers the next try. A certificate that does not verify is an
/// authentication failure (the server could not prove who it is); dbops never falls
/// back to an unverified or plain connection.
fn tls_failure(err: &DbError) -> Option<Error> {
    use rustls::CertificateError as Cert;
    let rustls::Error::InvalidCertificate(cert) = rustls_error(err)? else {
        return Some(Error::new(
            ErrorKind::Unreachable,
            format!("the TLS handshake failed: {}", rustls_error(err)?),
        ));
    };
    let advice = match cert {
        Cert::UnknownIssuer | Cert::BadSignature | Cert::InvalidPurpose => {
            "the server's TLS certificate is not signed by the CA dbops trusts (ssl-ca in the \
             URL, else the built-in public roots): give the CA certificate that issued the \
             server's certificate as ssl-ca"
        }
        Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
            "the server's TLS certificate does not name the host dbops connected to: connect \
             by a name or address in the certificate's subjectAltName, or use \
             ssl-mode=verify-ca to check only that the CA signed it"
        }
        Cert::Expired
        | Cert::ExpiredContext { .. }
        | Cert::NotValidYet
        | Cert::NotValidYetContext { .. } => {
            "the server's TLS certificate is expired or not yet valid: renew it on the server \
             (or check this machine's clock)"
        }
        _ => "the server's TLS certificate was not accepted: check ssl-ca and the host name",
    };
    Some(Error::new(
        ErrorKind::Authentication,
        format!("{advice} ({cert})"),
    ))
}

/// The server error code, if the error came from the server.
pub(crate) fn server_code(err: &DbError) -> Option<u16> {
    match err {
        DbError::Server(e) => Some(e.code),
        _ => None,
    }
}

/// Converts a driver error.
pub(crate) fn db_error(err: DbError) -> Error {
    if let Some(tls) = tls_failure(&err) {
        return tls;
    }
    match &err {
        DbError::Server(e) => {
            let kind = match e.code {
                code::ACCESS_DENIED | code::ACCESS_DENIED_NO_PASSWORD => ErrorKind::Authentication,
                code::DB_ACCESS_DENIED
                | code::SPECIFIC_ACCESS_DENIED
                | code::TABLE_ACCESS_DENIED
                | code::COLUMN_ACCESS_DENIED
                | code::PROC_ACCESS_DENIED
                | code::NO_SUCH_USER => ErrorKind::PermissionDenied,
                code::BAD_DB | code::NO_SUCH_TABLE => ErrorKind::NotFound,
                code::DB_CREATE_EXISTS => ErrorKind::AlreadyExists,
                code::NOT_ALLOWED_COMMAND | code::LOAD_INFILE_CAPABILITY_DISABLED => {
                    ErrorKind::PermissionDenied
                }
                _ => ErrorKind::Database,
            };
            let mut out = Error::new(kind, e.message.clone())
                .with_context("code", e.code)
                .with_context("sqlstate", &e.state);
            // Lock wait timeouts and deadlocks pass.
            if matches!(e.code, 1205 | 1213) {
                out = out.temporary();
            }
            out
        }
        DbError::Io(IoError::Io(io)) => {
            let kind = match io.kind() {
                std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::NotFound
                | std::io::ErrorKind::AddrNotAvailable
                | std::io::ErrorKind::HostUnreachable
                | std::io::ErrorKind::NetworkUnreachable
                | std::io::ErrorKind::TimedOut => ErrorKind::Unreachable,
                _ => ErrorKind::Interrupted,
            };
            Error::new(kind, format!("connection failed: {io}")).temporary()
        }
        DbError::Io(IoError::Tls(tls)) => {
            Error::new(ErrorKind::Unreachable, format!("TLS failed: {tls}"))
        }
        DbError::Driver(DriverError::ConnectionClosed)
        | DbError::Driver(DriverError::PacketOutOfOrder) => Error::new(
            ErrorKind::Interrupted,
            "the server closed the connection (restarted, killed, or the connection was cut)",
        )
        .temporary(),
        DbError::Driver(DriverError::NoClientSslFlagFromServer) => Error::new(
            ErrorKind::Unreachable,
            "the server does not offer TLS and the URL's ssl-mode asks for it: turn TLS on in \
             the server (ssl_cert, ssl_key); dbops never falls back to a plain connection",
        ),
        DbError::Driver(
            d @ (DriverError::UnknownAuthPlugin { .. }
            | DriverError::MysqlOldPasswordDisabled
            | DriverError::CleartextPluginDisabled),
        ) => Error::new(
            ErrorKind::Authentication,
            format!("the server asks for a login method dbops does not use: {d}"),
        ),
        DbError::Driver(d) => Error::new(ErrorKind::Database, format!("MariaDB driver: {d}")),
        DbError::Other(o) => Error::new(ErrorKind::Database, format!("MariaDB driver: {o}")),
        DbError::Url(u) => Error::invalid(format!("MariaDB URL: {u}")),
    }
}
