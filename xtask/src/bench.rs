//! `cargo xtask bench`: run the criterion benches and report against targets.

use std::{fmt::Write as _, fs, path::Path, process::Command, time::SystemTime};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::{cargo, root};

/// One speed goal: a criterion benchmark id (`group/function`) and the
/// median it must not exceed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Goal {
    /// The criterion id, `group/function`.
    pub(crate) name: &'static str,
    /// The median, in nanoseconds, that counts as fast enough.
    pub(crate) target_ns: f64,
    /// Where the target comes from (the figure to beat).
    pub(crate) why: &'static str,
}

/// What "fast" means, in one place. Every benchmark the report covers is here;
/// the tidy tests check that each name is defined by a bench under `benches/`.
pub(crate) const TARGETS: &[Goal] = &[
    Goal {
        name: "service_registry/lookup_by_type",
        target_ns: 20.0,
        why: "issue 2; seed 004 did 5.7 M lookups/s (175 ns)",
    },
    Goal {
        name: "service_registry/lookup_by_name",
        target_ns: 40.0,
        why: "ours: a name lookup hashes a string, allow twice the by-type target",
    },
    Goal {
        name: "service_registry/start_1000_noop",
        target_ns: 5_000_000.0,
        why: "issue 2: resolve and start 1,000 no-op services <= 5 ms",
    },
    Goal {
        name: "errors/sanitize_clean",
        target_ns: 1_000.0,
        why: "ours: a 120-byte message with nothing to remove, on every logged error",
    },
    Goal {
        name: "errors/sanitize_secrets",
        target_ns: 5_000.0,
        why: "ours: a 200-byte message with a key, a bearer token and a path",
    },
    Goal {
        name: "errors/classify_openai_body",
        target_ns: 2_000.0,
        why: "ours: classify a 429 with an OpenAI error body, once per failed call",
    },
    Goal { name: "selector/select_best_of_10", target_ns: 1_000.0, why: "issue 3; seed 000 selected in 1.65 ms" },
    Goal { name: "selector/rank_1000", target_ns: 150_000.0, why: "issue 3: rank 1,000 models <= 150 us" },
    Goal { name: "selector/rank_10000", target_ns: 2_000_000.0, why: "issue 3: rank 10,000 models <= 2 ms" },
    Goal {
        name: "fallback/execute_with_one_failure",
        target_ns: 2_000.0,
        why: "issue 12: the production executor, one failed attempt then success, 10 models; seed 000 took 505 us to pick a fallback",
    },
    Goal {
        name: "fallback/acquire_release_permit",
        target_ns: 100.0,
        why: "issue 12: a circuit permit taken and dropped",
    },
    Goal {
        name: "fallback/acquire_release_probe",
        target_ns: 150.0,
        why: "issue 12: a probe permit taken and dropped (slot returned)",
    },
    Goal { name: "fallback/record_failure", target_ns: 250.0, why: "issue 3; seed 000 took 389 us" },
    Goal { name: "monitor/record", target_ns: 200.0, why: "issue 4; seed 000 took 168 us" },
    Goal {
        name: "monitor/record_two_threads",
        target_ns: 250.0,
        why: "issue 4: >= 4 M records/s from two threads = <= 250 ns of wall time per record",
    },
    Goal { name: "monitor/model_stats", target_ns: 20_000.0, why: "issue 4; seed 000 took 320 us" },
    Goal { name: "metrics/record_latency", target_ns: 100.0, why: "issue 4: record one latency <= 100 ns" },
    Goal {
        name: "metrics/prometheus_100_models",
        target_ns: 2_000_000.0,
        why: "issue 4: render Prometheus text for 100 models with every family <= 2 ms",
    },
    Goal {
        name: "store/perf_row_batched",
        target_ns: 10_000.0,
        why: "issue 5: >= 100,000 performance-log rows/s through the batched writer into a WAL file",
    },
    Goal {
        name: "store/open_new_database",
        target_ns: 30_000_000.0,
        why: "issue 5: open and migrate a new database <= 30 ms",
    },
    Goal { name: "store/cache_hit", target_ns: 20_000.0, why: "issue 5: a response-cache hit <= 20 us" },
    Goal {
        name: "fleet/startup",
        target_ns: 50_000_000.0,
        why: "issue 6: full-stack startup to ready <= 50 ms (seed 004: 1.135 s)",
    },
    Goal {
        name: "fleet/call_overhead",
        target_ns: 5_000.0,
        why: "issue 6: the facade around a no-op model call <= 5 us (LiteLLM's router: ~2 ms of CPU)",
    },
    Goal {
        name: "fleet/call_overhead_with_budget",
        target_ns: 15_000.0,
        why: "issue 11: with a hard budget and the spend committed to SQLite, 32 calls at once, per call <= 15 us",
    },
    Goal {
        name: "fleet/call_overhead_with_budget_serial",
        target_ns: 1_000_000.0,
        why: "issue 11 (reported): one call at a time, the commit's latency; under 1 ms keeps the budgeted p99 goal",
    },
    Goal {
        name: "config/validate_example",
        target_ns: 1_000_000.0,
        why: "ours: validating the full example config at startup should cost under 1 ms",
    },
    Goal {
        name: "budget/reserve_reconcile",
        target_ns: 300.0,
        why: "issue 4: reserve then reconcile, 4 budgets (global, provider, model, key)",
    },
    Goal {
        name: "budget/reserve_reconcile_charged",
        target_ns: 500.0,
        why: "ours: the request path's reserve then reconcile_charged, 2 hard budgets (global monthly, key daily)",
    },
];

#[derive(Serialize)]
struct Report {
    benchmarks: Vec<Entry>,
}

#[derive(Serialize)]
struct Entry {
    name: &'static str,
    median_ns: f64,
    target_ns: f64,
    ratio: f64,
    met: bool,
    why: &'static str,
}

pub(crate) fn run(quick: bool) -> anyhow::Result<()> {
    let started = SystemTime::now();
    let mut command = cargo();
    command.args(["bench", "--package", "modelfleet-benches", "--benches", "--locked", "--"]);
    if quick {
        command.args(["--warm-up-time", "0.5", "--measurement-time", "1", "--sample-size", "10"]);
    }
    let status = command.status().context("could not run cargo bench")?;
    if !status.success() {
        bail!("cargo bench failed ({status})");
    }

    let criterion = root().join("target").join("criterion");
    let mut benchmarks = Vec::new();
    let mut missing = Vec::new();
    for target in TARGETS {
        match read_median(&criterion, target.name, started)? {
            Some(median_ns) => {
                let ratio = median_ns / target.target_ns;
                benchmarks.push(Entry {
                    name: target.name,
                    median_ns,
                    target_ns: target.target_ns,
                    ratio,
                    met: ratio <= 1.0,
                    why: target.why,
                });
            }
            None => missing.push(target.name),
        }
    }
    let report = Report { benchmarks };
    let out = root().join("target");
    fs::write(out.join("bench-report.json"), serde_json::to_string_pretty(&report)? + "\n")
        .context("writing target/bench-report.json")?;
    let markdown = markdown(&report, quick);
    fs::write(out.join("bench-report.md"), &markdown).context("writing target/bench-report.md")?;
    println!("\n{markdown}");
    println!("wrote target/bench-report.json and target/bench-report.md");
    if !missing.is_empty() {
        bail!("no fresh criterion result for {missing:?}: is the bench still there, under that name?");
    }
    Ok(())
}

/// `cargo xtask loadtest`: builds the `modelfleet` binary and the load
/// generator in release mode, runs the load benchmark (mock upstream in the
/// generator, the gateway as a child process), and adds its figures to
/// `target/bench-report.json` (key `load`) and `target/bench-report.md`.
pub(crate) fn loadtest(quick: bool, budget: bool) -> anyhow::Result<()> {
    for package in [
        ["--package", "modelfleet-cli", "--bin", "modelfleet"],
        ["--package", "modelfleet-benches", "--bin", "loadtest"],
    ] {
        let status =
            cargo().args(["build", "--release", "--locked"]).args(package).status().context("running cargo build")?;
        if !status.success() {
            bail!("cargo build {package:?} failed ({status})");
        }
    }
    let out = root().join("target");
    let release = out.join("release");
    let report_path = out.join("loadtest.json");
    let mut command = Command::new(release.join("loadtest"));
    command.arg("--gateway-bin").arg(release.join("modelfleet")).arg("--out").arg(&report_path);
    if quick {
        command.arg("--quick");
    }
    if budget {
        command.arg("--budget");
    }
    let status = command.status().context("running the load generator")?;
    if !status.success() {
        bail!("the load benchmark failed ({status}); its output is above");
    }
    let load: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(&report_path).with_context(|| format!("reading {}", report_path.display()))?,
    )
    .context("parsing the load report")?;
    let json_path = out.join("bench-report.json");
    let mut report: serde_json::Value = fs::read_to_string(&json_path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| serde_json::json!({"benchmarks": []}));
    report["load"] = load.clone();
    fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n").context("writing target/bench-report.json")?;
    let md_path = out.join("bench-report.md");
    let mut markdown = fs::read_to_string(&md_path).unwrap_or_else(|_| String::from("# Benchmark report\n"));
    if let Some(start) = markdown.find("\n## Gateway load") {
        markdown.truncate(start);
    }
    markdown.push_str(&load_markdown(&load));
    fs::write(&md_path, &markdown).context("writing target/bench-report.md")?;
    println!("{}", load_markdown(&load));
    println!("added to target/bench-report.json (\"load\") and target/bench-report.md");
    Ok(())
}

fn load_markdown(load: &serde_json::Value) -> String {
    let f = |pointer: &str| load.pointer(pointer).and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
    let met =
        |pointer: &str| if load.pointer(pointer) == Some(&serde_json::Value::Bool(true)) { "yes" } else { "**no**" };
    let mut out = String::from("\n## Gateway load (mock upstream, generator and gateway on this machine)\n\n");
    if load.get("quick") == Some(&serde_json::Value::Bool(true)) {
        out.push_str("Quick run: a smoke check, not a measurement to quote.\n\n");
    }
    if load.get("budget") == Some(&serde_json::Value::Bool(true)) {
        out.push_str("With a global budget: every request commits its spend to SQLite before answering.\n\n");
    }
    out.push_str("| measure | value | target | met |\n|---|---:|---:|:---:|\n");
    let _ = writeln!(
        out,
        "| throughput, closed loop | {:.0} req/s | ≥ 5,000 req/s | {} |",
        f("/throughput/requests_per_second"),
        met("/throughput/met")
    );
    let _ = writeln!(
        out,
        "| added latency p50 at 1,000 req/s | {:.0} µs | ≤ 150 µs | {} |",
        f("/latency_1000rps/added_p50_us"),
        if f("/latency_1000rps/added_p50_us") <= 150.0 { "yes" } else { "**no**" }
    );
    let _ = writeln!(
        out,
        "| added latency p99 at 1,000 req/s | {:.0} µs | ≤ 1,000 µs | {} |",
        f("/latency_1000rps/added_p99_us"),
        if f("/latency_1000rps/added_p99_us") <= 1000.0 { "yes" } else { "**no**" }
    );
    let _ = writeln!(
        out,
        "| gateway p50 / p95 / p99 at 1,000 req/s | {:.0} / {:.0} / {:.0} µs | p95 < 2 × p50 | {} |",
        f("/latency_1000rps/gateway/p50_us"),
        f("/latency_1000rps/gateway/p95_us"),
        f("/latency_1000rps/gateway/p99_us"),
        if f("/latency_1000rps/gateway_p95_over_p50") < 2.0 { "yes" } else { "**no**" }
    );
    let _ = writeln!(
        out,
        "| direct to the mock p50 / p99 | {:.0} / {:.0} µs | — | — |",
        f("/latency_1000rps/direct/p50_us"),
        f("/latency_1000rps/direct/p99_us")
    );
    let _ = writeln!(
        out,
        "| gateway RSS after the run / growth second half | {:.1} MiB / {:.2} % | ≤ 64 MB / ≤ 5 % | {} |",
        f("/memory/rss_mb_at_full"),
        f("/memory/growth_percent_half_to_full"),
        met("/memory/met")
    );
    out
}

/// The median of `name` from criterion's `estimates.json`, if written since `since`.
fn read_median(criterion: &Path, name: &str, since: SystemTime) -> anyhow::Result<Option<f64>> {
    let path = criterion.join(name).join("new").join("estimates.json");
    let Ok(meta) = fs::metadata(&path) else { return Ok(None) };
    if meta.modified().is_ok_and(|m| m < since) {
        return Ok(None);
    }
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let median = value
        .pointer("/median/point_estimate")
        .and_then(serde_json::Value::as_f64)
        .with_context(|| format!("{} has no median.point_estimate", path.display()))?;
    Ok(Some(median))
}

fn markdown(report: &Report, quick: bool) -> String {
    let mut out = String::from("# Benchmark report\n\n");
    if quick {
        out.push_str("Quick run (short measurement): a smoke check, not a measurement to quote.\n\n");
    }
    out.push_str("| benchmark | median | target | ratio | met |\n|---|---:|---:|---:|:---:|\n");
    for b in &report.benchmarks {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.3} | {} |",
            b.name,
            human(b.median_ns),
            human(b.target_ns),
            b.ratio,
            if b.met { "yes" } else { "**no**" }
        );
    }
    out
}

/// Nanoseconds in the largest unit that keeps the number at or above 1.
fn human(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human(12.34), "12.3 ns");
        assert_eq!(human(1_500.0), "1.50 µs");
        assert_eq!(human(5_000_000.0), "5.00 ms");
        assert_eq!(human(2e9), "2.00 s");
    }

    #[test]
    fn report_json_has_the_agreed_shape() {
        let report = Report {
            benchmarks: vec![Entry { name: "g/f", median_ns: 10.0, target_ns: 20.0, ratio: 0.5, met: true, why: "x" }],
        };
        let value = serde_json::to_value(&report).unwrap();
        assert_eq!(value["benchmarks"][0]["name"], "g/f");
        assert_eq!(value["benchmarks"][0]["median_ns"], 10.0);
        assert_eq!(value["benchmarks"][0]["target_ns"], 20.0);
        let md = markdown(&report, false);
        assert!(md.contains("| g/f | 10.0 ns | 20.0 ns | 0.500 | yes |"), "{md}");
    }

    #[test]
    fn stale_or_absent_results_are_not_read() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
        let bench = dir.join("g").join("f").join("new");
        fs::create_dir_all(&bench).unwrap();
        fs::write(bench.join("estimates.json"), r#"{"median": {"point_estimate": 42.5}}"#).unwrap();
        let long_ago = SystemTime::UNIX_EPOCH;
        assert_eq!(read_median(&dir, "g/f", long_ago).unwrap(), Some(42.5));
        let future = SystemTime::now() + std::time::Duration::from_hours(1);
        assert_eq!(read_median(&dir, "g/f", future).unwrap(), None, "older than the run: stale");
        assert_eq!(read_median(&dir, "g/absent", long_ago).unwrap(), None);
        fs::write(bench.join("estimates.json"), "{}").unwrap();
        assert!(read_median(&dir, "g/f", long_ago).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
