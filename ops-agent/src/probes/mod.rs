//! Health probes that belong to the agent: backups (from the run history), local
//! disks, and services beside the databases (Redis). Database probes live in the
//! engine crates, the repository probe in `ops-storage`; [`crate::health::suite`] puts
//! a config's probes together.

pub mod backups;
pub mod disk;
pub mod redis;
pub mod wal;
