#![doc = include_str!("../README.md")]

pub mod config;
pub mod daemon;
pub mod history;
pub mod hooks;
pub mod notify;
pub mod probes;
pub mod runner;

pub use config::Config;
pub use history::RunHistory;
pub use runner::Runner;
