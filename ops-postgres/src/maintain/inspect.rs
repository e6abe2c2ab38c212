//! PLACEHOLDER (being written): the inspection reports.
use ops_core::maintain::{Inspect, InspectOptions, Inspection};
use ops_core::{Error, Result};

use crate::PostgresEngine;

pub(crate) async fn inspect(
    _engine: &PostgresEngine,
    what: Inspect,
    _options: &InspectOptions,
) -> Result<Inspection> {
    Err(Error::invalid(format!("{what}: not written yet")))
}
