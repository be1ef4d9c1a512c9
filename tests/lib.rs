//! The top-level integration tests of modelfleet live in `it/`, compiled
//! into one test binary (`cargo test -p modelfleet-tests`). This library
//! holds no code; it compiles the README's Rust examples as doctests, so the
//! README cannot drift from the API.

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
