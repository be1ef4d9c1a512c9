//! Cross-crate integration tests: one binary, one module per scenario.

mod startup_retry;
