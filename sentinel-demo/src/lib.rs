//! Runnable demos of Sentinel: `cargo run --example payments`.
//!
//! The crate also compiles and runs the Rust examples of the repository's README as doc tests.

#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExamples;
