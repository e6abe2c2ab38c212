//! PLACEHOLDER (being written): maintenance actions.
use ops_core::maintain::{Action, MaintainOptions, MaintainReport};
use ops_core::{Error, Result};

use crate::PostgresEngine;

pub(crate) async fn maintain(
    _engine: &PostgresEngine,
    action: Action,
    _options: &MaintainOptions,
) -> Result<MaintainReport> {
    Err(Error::invalid(format!("{action}: not written yet")))
}
