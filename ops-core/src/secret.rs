//! Secrets and their redaction.
//!
//! Passwords in connection URLs and repository passwords must never reach a log, an
//! error, `--json` output or `Debug`. Everything that prints a URL prints
//! [`redact_url`]'s result; everything that holds a password holds a [`Secret`].

use std::fmt;

/// What a redacted secret prints as.
pub const REDACTED: &str = "******";

/// A string that must not be printed: `Debug` and `Display` show `******`. Its
/// bytes are zeroized when it is dropped, so a password does not linger in freed
/// memory (copies made from [`Secret::expose`] are the holder's to look after).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

/// Query parameters whose values are secrets in the URLs dbops accepts.
const SECRET_PARAMS: &[&str] = &[
    "password",
    "pass",
    "passwd",
    "secret",
    "secret_access_key",
    "aws_secret_access_key",
    "session_token",
    "token",
    "sslpassword",
    "access_key",
    "sas",
    "sig",
];

/// True when a URL query parameter of this name carries a secret (`password`,
/// `sslpassword`, `token`, `secret_access_key`, …).
pub fn is_secret_param(name: &str) -> bool {
    SECRET_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// Returns `url` with any password (userinfo or secret query parameter) replaced by
/// `******`. Text that is not a URL is returned with anything between `:` and `@` in
/// its authority replaced the same way, so a malformed URL with a password still does
/// not leak.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.has_host() || parsed.password().is_some() => {
            if parsed.password().is_some() {
                // set_password fails only for URLs that cannot have one.
                let _ = parsed.set_password(Some(REDACTED));
            }
            let pairs: Vec<(String, String)> = parsed
                .query_pairs()
                .map(|(k, v)| {
                    let secret = SECRET_PARAMS.iter().any(|s| k.eq_ignore_ascii_case(s));
                    (
                        k.into_owned(),
                        if secret {
                            REDACTED.to_owned()
                        } else {
                            v.into_owned()
                        },
                    )
                })
                .collect();
            if !pairs.is_empty() {
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string().replace("%2A%2A%2A%2A%2A%2A", REDACTED)
        }
        _ => redact_authority(url),
    }
}

fn redact_authority(text: &str) -> String {
    let text = &redact_query_text(text);
    let Some(scheme_end) = text.find("://") else {
        return text.to_owned();
    };
    let rest = &text[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:{}{}",
            &text[..scheme_end + 3],
            &authority[..colon],
            REDACTED,
            &text[scheme_end + 3 + at..]
        ),
        _ => text.to_owned(),
    }
}

/// Masks the values of secret parameters in the raw query of text that did not parse
/// as a URL.
fn redact_query_text(text: &str) -> String {
    let Some(q) = text.find('?') else {
        return text.to_owned();
    };
    let (head, query) = text.split_at(q + 1);
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if SECRET_PARAMS.iter().any(|s| k.eq_ignore_ascii_case(s)) => {
                format!("{k}={REDACTED}")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{head}{}", pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_userinfo_password() {
        let r = redact_url("postgres://alice:s3cr%40t@db.example:5432/shop?sslmode=require");
        assert!(!r.contains("s3cr"), "{r}");
        assert!(r.contains("alice:******@db.example:5432/shop"), "{r}");
        assert!(r.contains("sslmode=require"), "{r}");
    }

    #[test]
    fn redacts_query_password() {
        let r = redact_url("postgres://db/shop?user=bob&password=hunter2");
        assert!(!r.contains("hunter2"), "{r}");
    }

    #[test]
    fn keeps_urls_without_secrets() {
        assert_eq!(redact_url("file:///var/backups"), "file:///var/backups");
        assert_eq!(redact_url("/var/backups"), "/var/backups");
    }

    #[test]
    fn redacts_unparseable_urls() {
        let r = redact_url("mysql://root:pa ss@[bad/x");
        assert!(!r.contains("pa ss"), "{r}");
    }

    #[test]
    fn redacts_query_passwords_of_unparseable_urls() {
        for url in [
            "postgres://u@h:99999/db?password=sekrit",
            "postgres://u@/db?password=sekrit&x=1",
            "mysql://[bad?sslmode=require&PASSWORD=sekrit",
        ] {
            let r = redact_url(url);
            assert!(!r.contains("sekrit"), "{url} -> {r}");
        }
    }

    #[test]
    fn secret_debug_and_display_are_redacted() {
        let s = Secret::new("topsecret");
        assert_eq!(format!("{s:?} {s}"), "****** ******");
        assert_eq!(s.expose(), "topsecret");
    }
}
