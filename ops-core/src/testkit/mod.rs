//! Conformance suites that every adapter runs against the real thing.
//!
//! A new target or engine is done when it passes its suite. The suites use only the
//! public traits, so they prove behaviour, not implementation.

pub mod certs;
pub mod engine;
pub mod health;
pub mod maintain;
pub mod notifier;
pub mod retention;
pub mod scale;
pub mod target;
