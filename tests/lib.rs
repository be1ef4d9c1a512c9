//! The top-level integration tests of modelfleet live in `it/`, compiled
//! into one test binary (`cargo test -p modelfleet-tests`); this library is
//! empty and exists only so the package has a root.
