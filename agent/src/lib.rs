//! estate agent: collects this host's inventory, runs the configured checks and reports both to
//! an estate collector over gRPC.
//!
//! Entry points: [`schedule::run`] (the service loop) and [`schedule::once`] (one report).
//! The agent never talks to a database and never listens on a port.

mod calendar;
pub mod checks;
pub mod config;
pub mod credentials;
pub mod identity;
pub mod install;
pub mod inventory;
pub mod report;
pub mod schedule;
pub mod sender;
pub mod spool;

/// The agent's version, reported in every report.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
