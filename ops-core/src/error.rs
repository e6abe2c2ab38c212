//! The one public error type of the dbops library.
//!
//! Modelled on opendal: a struct with a `#[non_exhaustive]` kind, a status that says
//! whether trying again can help, key-value context (which table, which object key,
//! which SQLSTATE) and a source. Adapters keep their own private error enums and convert
//! at the boundary, adding context. Nothing that reaches this type may carry a secret:
//! constructors that take URLs must redact them first (see [`crate::secret`]).

use std::fmt;

/// `Result` with the dbops [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in the operator's terms. Decides the CLI's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An object, backup, table or database does not exist.
    NotFound,
    /// Something that must not exist already does (a repository, a lock).
    AlreadyExists,
    /// Credentials were accepted but the operation is not allowed.
    PermissionDenied,
    /// The server or store rejected the credentials.
    Authentication,
    /// The repository password (or key) does not open the repository.
    WrongPassword,
    /// The location holds no dbops repository.
    NotInitialized,
    /// Could not reach a server or store.
    Unreachable,
    /// A database server reported an error.
    Database,
    /// A storage target reported an error.
    Storage,
    /// Stored data failed authentication, hashing or parsing: it is damaged.
    Corrupt,
    /// A repository or manifest written by an unknown format version.
    UnsupportedFormat,
    /// The request cannot be carried out as asked (bad argument, bad URL, bad state).
    InvalidInput,
    /// The restore target holds data and `--clean` was not given.
    TargetNotEmpty,
    /// A required program (pg_dump, initdb, mariadbd) is missing or too old.
    MissingTool,
    /// Another process holds a conflicting lock.
    Locked,
    /// A verification found a difference between what was stored and what was restored.
    Mismatch,
    /// Local I/O failed.
    Io,
    /// The operation was interrupted (signal, cancelled task, server gone mid-stream).
    Interrupted,
    /// A bug in dbops.
    Internal,
}

impl ErrorKind {
    /// A short lower-case name, stable for `--json` output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::PermissionDenied => "permission_denied",
            Self::Authentication => "authentication",
            Self::WrongPassword => "wrong_password",
            Self::NotInitialized => "not_initialized",
            Self::Unreachable => "unreachable",
            Self::Database => "database",
            Self::Storage => "storage",
            Self::Corrupt => "corrupt",
            Self::UnsupportedFormat => "unsupported_format",
            Self::InvalidInput => "invalid_input",
            Self::TargetNotEmpty => "target_not_empty",
            Self::MissingTool => "missing_tool",
            Self::Locked => "locked",
            Self::Mismatch => "mismatch",
            Self::Io => "io",
            Self::Interrupted => "interrupted",
            Self::Internal => "internal",
        }
    }

    /// The kind named by [`ErrorKind::as_str`], if any (run records keep the name).
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::NotFound,
            Self::AlreadyExists,
            Self::PermissionDenied,
            Self::Authentication,
            Self::WrongPassword,
            Self::NotInitialized,
            Self::Unreachable,
            Self::Database,
            Self::Storage,
            Self::Corrupt,
            Self::UnsupportedFormat,
            Self::InvalidInput,
            Self::TargetNotEmpty,
            Self::MissingTool,
            Self::Locked,
            Self::Mismatch,
            Self::Io,
            Self::Interrupted,
            Self::Internal,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether trying the same call again can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorStatus {
    /// Trying again will fail the same way.
    Permanent,
    /// A passing fault (throttling, a reset connection): an idempotent call may be retried.
    Temporary,
    /// Was temporary, but retries have been used up.
    Persistent,
}

/// The dbops error: kind, status, message, context and source.
pub struct Error {
    kind: ErrorKind,
    status: ErrorStatus,
    message: String,
    context: Vec<(&'static str, String)>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A permanent error of `kind` with an operator-facing message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            status: ErrorStatus::Permanent,
            message: message.into(),
            context: Vec::new(),
            source: None,
        }
    }

    /// Marks the error as temporary (retrying an idempotent call may help).
    #[must_use]
    pub fn temporary(mut self) -> Self {
        self.status = ErrorStatus::Temporary;
        self
    }

    /// Marks a temporary error as persistent (retries used up).
    #[must_use]
    pub fn persist(mut self) -> Self {
        if self.status == ErrorStatus::Temporary {
            self.status = ErrorStatus::Persistent;
        }
        self
    }

    /// Adds a key-value pair of context (`table`, `object`, `sqlstate`, ...).
    #[must_use]
    pub fn with_context(mut self, key: &'static str, value: impl fmt::Display) -> Self {
        self.context.push((key, value.to_string()));
        self
    }

    /// Attaches the underlying error. Its `Display` must hold no secret.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Replaces the message, keeping kind, status, context and source.
    #[must_use]
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// Prefixes the message with what was being done (`"restoring table public.film"`).
    #[must_use]
    pub fn during(mut self, doing: impl fmt::Display) -> Self {
        self.message = format!("{doing}: {}", self.message);
        self
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The status.
    pub fn status(&self) -> ErrorStatus {
        self.status
    }

    /// True when an idempotent call may be retried.
    pub fn is_temporary(&self) -> bool {
        self.status == ErrorStatus::Temporary
    }

    /// The message without context or source.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The context pairs.
    pub fn context(&self) -> &[(&'static str, String)] {
        &self.context
    }

    /// The value of one context key, if present.
    pub fn context_value(&self, key: &str) -> Option<&str> {
        self.context
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Shorthand for an [`ErrorKind::Internal`] error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Shorthand for an [`ErrorKind::InvalidInput`] error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// Shorthand for an [`ErrorKind::Corrupt`] error.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    /// Wraps a local I/O error with what was being done.
    pub fn io(doing: impl fmt::Display, err: std::io::Error) -> Self {
        let kind = match err.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            _ => ErrorKind::Io,
        };
        Self::new(kind, format!("{doing}: {err}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if !self.context.is_empty() {
            f.write_str(" (")?;
            for (i, (k, v)) in self.context.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{k}: {v}")?;
            }
            f.write_str(")")?;
        }
        if let Some(source) = &self.source {
            let text = source.to_string();
            if !text.is_empty() && !self.message.contains(&text) {
                write!(f, ": {text}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind)
            .field("status", &self.status)
            .field("message", &self.message);
        if !self.context.is_empty() {
            d.field("context", &self.context);
        }
        if let Some(source) = &self.source {
            // Display, not Debug: a source's Debug may show fields (connection
            // configs) that its Display keeps private.
            d.field("source", &source.to_string());
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Self::io("local I/O failed", err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_message_context_and_source() {
        let err = Error::new(ErrorKind::Storage, "could not write object")
            .with_context("object", "packs/ab/cd")
            .with_source(std::io::Error::other("disk full"))
            .temporary();
        assert_eq!(
            err.to_string(),
            "could not write object (object: packs/ab/cd): disk full"
        );
        assert!(err.is_temporary());
        assert_eq!(err.persist().status(), ErrorStatus::Persistent);
    }
}
