//! Helpers shared by the tests that run the real binaries.

pub mod harness;
