//! [`Maintenance`] for MariaDB (and MySQL): inspection reports, maintenance actions,
//! sessions, integrity queries and archiving (see `ops_core::maintain` for the
//! contract).

use std::time::Duration;

use async_trait::async_trait;
use ops_core::maintain::{
    Action, ArchiveReport, ArchiveSpec, EndOptions, EndReport, Inspect, InspectOptions, Inspection,
    MaintainOptions, MaintainReport, Maintenance, QueryRows, SessionFilter, SessionInfo,
};
use ops_core::{Error, Result};

use crate::MariaDbEngine;

#[async_trait]
impl Maintenance for MariaDbEngine {
    fn engine_name(&self) -> &'static str {
        "mariadb"
    }

    async fn inspect(&self, what: Inspect, _options: &InspectOptions) -> Result<Inspection> {
        Err(Error::invalid(format!("{what}: not written yet")))
    }

    async fn maintain(&self, action: Action, _options: &MaintainOptions) -> Result<MaintainReport> {
        Err(Error::invalid(format!("{action}: not written yet")))
    }

    async fn sessions(&self, _filter: &SessionFilter) -> Result<Vec<SessionInfo>> {
        Err(Error::invalid("not written yet"))
    }

    async fn end_sessions(
        &self,
        _filter: &SessionFilter,
        _options: &EndOptions,
    ) -> Result<EndReport> {
        Err(Error::invalid("not written yet"))
    }

    async fn query_rows(
        &self,
        _sql: &str,
        _timeout: Duration,
        _sample: usize,
    ) -> Result<QueryRows> {
        Err(Error::invalid("not written yet"))
    }

    async fn archive(&self, _spec: &ArchiveSpec) -> Result<ArchiveReport> {
        Err(Error::invalid("not written yet"))
    }
}
