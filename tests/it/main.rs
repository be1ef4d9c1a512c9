//! Cross-crate integration tests: one binary, one module per scenario.

mod full_stack;
mod gateway;
mod memory;
mod resilience;
mod startup_retry;
mod support;
