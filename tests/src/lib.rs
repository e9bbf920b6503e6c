//! Support for the tests that run the real binaries and for the benchmark programs of this
//! crate.
//!
//! [`flags`] reads the benchmark programs' command lines. [`harness`] starts the real binaries, picks ports and waits for them. [`simulation`] builds
//! the reports of simulated agents: a small but realistic inventory, a dozen check results and
//! vitals, the same for the load generator and the benchmarks so their figures describe the
//! same work. [`process`] reads a process's CPU time and memory from `/proc`.

pub mod flags;
pub mod harness;
#[cfg(unix)]
pub mod process;
pub mod simulation;
