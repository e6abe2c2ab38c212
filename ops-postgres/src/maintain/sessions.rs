//! PLACEHOLDER (being written): sessions, ending them, read-only queries.
use std::time::Duration;

use ops_core::maintain::{EndOptions, EndReport, QueryRows, SessionFilter, SessionInfo};
use ops_core::{Error, Result};

use crate::PostgresEngine;

pub(crate) async fn sessions(
    _engine: &PostgresEngine,
    _filter: &SessionFilter,
) -> Result<Vec<SessionInfo>> {
    Err(Error::invalid("not written yet"))
}

pub(crate) async fn end_sessions(
    _engine: &PostgresEngine,
    _filter: &SessionFilter,
    _options: &EndOptions,
) -> Result<EndReport> {
    Err(Error::invalid("not written yet"))
}

pub(crate) async fn query_rows(
    _engine: &PostgresEngine,
    _sql: &str,
    _timeout: Duration,
    _sample: usize,
) -> Result<QueryRows> {
    Err(Error::invalid("not written yet"))
}
