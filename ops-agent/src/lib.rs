#![doc = include_str!("../README.md")]

pub mod config;
pub mod daemon;
pub mod health;
pub mod history;
pub mod hooks;
pub mod integrity;
pub mod metrics;
pub mod notify;
pub mod probes;
pub mod runner;
pub mod serve;

pub use config::Config;
pub use history::RunHistory;
pub use runner::Runner;
