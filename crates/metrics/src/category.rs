//! The categories an export can be filtered by.

use std::{fmt, str::FromStr};

use serde::Serialize;

/// A part of the metrics, for filtering exports and resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Response-cache hits and misses.
    Cache,
    /// Request latency.
    Latency,
    /// Process memory.
    Memory,
    /// Requests in total, per second, and over the sliding window.
    Throughput,
    /// Errors by class.
    Errors,
    /// Per-model requests, latency, tokens and cost.
    Models,
    /// Failure handling: per-model circuit, ejections and cooldown; per
    /// provider retry budget and hedges.
    Resilience,
    /// Budget spend and limits.
    Budget,
    /// Application gauges.
    Gauges,
}

impl Category {
    /// Every category, in export order.
    pub const ALL: [Category; 9] = [
        Category::Cache,
        Category::Latency,
        Category::Memory,
        Category::Throughput,
        Category::Errors,
        Category::Models,
        Category::Resilience,
        Category::Budget,
        Category::Gauges,
    ];

    /// Its name in queries and JSON.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Category::Cache => "cache",
            Category::Latency => "latency",
            Category::Memory => "memory",
            Category::Throughput => "throughput",
            Category::Errors => "errors",
            Category::Models => "models",
            Category::Resilience => "resilience",
            Category::Budget => "budget",
            Category::Gauges => "gauges",
        }
    }

    /// Parses a comma-separated list (`cache,latency`); empty means all.
    /// Every unknown name is reported with the valid ones.
    pub fn parse_list(list: &str) -> Result<Vec<Category>, crate::Error> {
        let mut out = Vec::new();
        let mut unknown = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name.parse::<Category>() {
                Ok(c) if !out.contains(&c) => out.push(c),
                Ok(_) => {}
                Err(_) => unknown.push(name.to_owned()),
            }
        }
        if !unknown.is_empty() {
            return Err(crate::Error::UnknownCategory(unknown));
        }
        if out.is_empty() {
            out = Category::ALL.to_vec();
        }
        out.sort();
        Ok(out)
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Category {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Category, crate::Error> {
        Category::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| crate::Error::UnknownCategory(vec![s.to_owned()]))
    }
}
