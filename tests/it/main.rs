//! Cross-crate integration tests: one binary, one module per scenario.

mod cluster;
mod cluster_records;
mod endpoints;
mod feedback;
mod full_stack;
mod gateway;
mod history;
mod memory;
mod providers;
mod resilience;
mod startup_retry;
mod support;
