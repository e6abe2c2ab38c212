//! Opening tokio-postgres connections with pinned session settings.
//!
//! The settings make COPY text output independent of server and role defaults (so two
//! dumps of the same data are byte-identical per row and restore reads them back
//! unambiguously), and keep timeouts from killing a long dump.

use ops_core::Result;
use tokio_postgres::Client;

use crate::config::{ConnConfig, connect_timed_out};
use crate::errors::{connect_error, query_error};

/// Session settings for every dump and restore connection.
pub(crate) const PINNED_SETTINGS: &str = "SET client_encoding = 'UTF8';
SET DateStyle = 'ISO, YMD';
SET IntervalStyle = 'postgres';
SET extra_float_digits = 3;
SET TimeZone = 'UTC';
SET bytea_output = 'hex';
SET standard_conforming_strings = on;
SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET row_security = off;";

/// Connects to `config` and spawns the connection driver.
///
/// # Errors
/// Unreachable server, TLS or authentication failures.
pub(crate) async fn connect(config: &ConnConfig) -> Result<Client> {
    let location = config.redacted_url();
    let tls = crate::tls::connector(config)?;
    // tokio-postgres's connect_timeout covers the TCP connect only; a server that
    // accepts and then says nothing must not hang us either (libpq's covers it all).
    let (client, connection) =
        tokio::time::timeout(config.connect_timeout, config.tokio_config().connect(tls))
            .await
            .map_err(|_| connect_timed_out(&location, config.connect_timeout))?
            .map_err(|e| config.explain_auth(connect_error(e, &location)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("PostgreSQL connection ended: {e}");
        }
    });
    Ok(client)
}

/// Connects and applies [`PINNED_SETTINGS`].
///
/// # Errors
/// As [`connect`], and a server that refuses the settings.
pub(crate) async fn connect_pinned(config: &ConnConfig) -> Result<Client> {
    let client = connect(config).await?;
    client
        .batch_execute(PINNED_SETTINGS)
        .await
        .map_err(|e| query_error(e, "setting session parameters"))?;
    Ok(client)
}

/// Quotes an SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal. Text with a backslash is written as an escape string
/// (`E'…'`, backslashes doubled), which reads the same whatever the session's
/// `standard_conforming_strings`: a comment or setting value read from one server can
/// never end the literal early on another (`\'` would, with the setting off).
pub(crate) fn quote_literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// `"schema"."name"`.
pub(crate) fn qualified(table: &ops_core::TableRef) -> String {
    format!(
        "{}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.name)
    )
}

#[cfg(test)]
mod quoting {
    use super::quote_literal;

    #[test]
    fn literals_cannot_be_ended_by_a_backslash() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(
            quote_literal(r"\'; DROP ROLE x; --"),
            r"E'\\''; DROP ROLE x; --'"
        );
        assert_eq!(quote_literal(r"C:\dir"), r"E'C:\\dir'");
    }
}
