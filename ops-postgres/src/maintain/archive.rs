//! PLACEHOLDER (being written): archiving.
use ops_core::maintain::{ArchiveReport, ArchiveSpec};
use ops_core::{Error, Result};

use crate::PostgresEngine;

pub(crate) async fn archive(
    _engine: &PostgresEngine,
    _spec: &ArchiveSpec,
) -> Result<ArchiveReport> {
    Err(Error::invalid("not written yet"))
}
