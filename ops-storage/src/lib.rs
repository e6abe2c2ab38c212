#![doc = include_str!("../README.md")]

mod error;
mod faulty;
pub mod health;
mod local;
pub mod multipart;
mod open;
mod options;
mod retry;
#[cfg(feature = "test-s3")]
pub mod s3_test_server;
mod target;

pub use faulty::{FaultConfig, FaultyTarget};
pub use multipart::{MultipartOptions, PartSizer};
pub use open::{TargetUrl, WRAPPED_HTTP_MAX_RETRIES, open_object_store_target, open_target};
pub use options::TargetOptions;
pub use retry::{RetryConfig, RetryTarget};
pub use target::ObjectStoreTarget;
