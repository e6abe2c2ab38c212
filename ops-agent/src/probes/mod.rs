//! Health probes that the agent owns: checks of services other than the databases the
//! engine crates probe (declared under `[services.*]`), each an `ops_core::HealthCheck`.

pub mod redis;
