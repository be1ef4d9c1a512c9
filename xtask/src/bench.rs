//! `cargo xtask bench`: run the criterion benches and report against targets.
//!
//! Every median is reported twice: in nanoseconds against [`Goal::target_ns`]
//! (`met`), and as a multiple of the [`CALIBRATION`] bench's median from the
//! same run against [`Goal::calibration_target`] (`calibrated_met`). The
//! second survives a change of machine: a run on a slower or busier machine
//! is slower at the calibration work too.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::SystemTime,
};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::{cargo, target_dir};

/// One speed goal: a criterion benchmark id (`group/function`) and the
/// median it must not exceed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Goal {
    /// The criterion id, `group/function`.
    pub(crate) name: &'static str,
    /// The median, in nanoseconds, that counts as fast enough on the
    /// reference machine (the one of the last closing notes).
    pub(crate) target_ns: f64,
    /// Where the target comes from (the figure to beat).
    pub(crate) why: &'static str,
}

impl Goal {
    /// The same target as a multiple of the calibration median: `target_ns`
    /// over [`REFERENCE_CALIBRATION_NS`], both from the reference machine.
    /// The one place targets are converted, so the two statements cannot
    /// disagree.
    pub(crate) fn calibration_target(&self) -> f64 {
        self.target_ns / REFERENCE_CALIBRATION_NS
    }
}

/// The calibration bench (`benches/benches/calibration.rs`): fixed work that
/// uses no modelfleet crate, so its median measures the machine, not the
/// code. Not a speed goal; its `target_ns` is the reference machine's median.
pub(crate) const CALIBRATION: Goal = Goal {
    name: "calibration/sort_and_hash",
    target_ns: REFERENCE_CALIBRATION_NS,
    why: "the machine, not the code: sort 10,000 f64 and SipHash 10,000 short strings; \
          a ratio above 1 means this machine ran it slower than the reference machine",
};

/// The calibration median on the reference machine class, in nanoseconds.
/// Measured on 2026-12-04 on the project's 2-core machine (the class of the
/// last closing notes), otherwise idle, with `cargo bench -p
/// modelfleet-benches --bench calibration` (criterion's full measurement, not
/// `--quick`): seven runs gave medians of 219.0 to 223.1 µs; this is their
/// median, with rustc 1.95.0 and the workspace's `[profile.bench]`. With
/// another build sharing the two cores the same bench read 240 to 340 µs,
/// which is the point of reporting against it. A new toolchain may move it
/// (std's sort and hasher are its work): re-measure when the toolchain moves.
pub(crate) const REFERENCE_CALIBRATION_NS: f64 = 220_000.0;

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
        name: "store/report_month_1m_rows",
        target_ns: 200_000_000.0,
        why: "issue 15: a report by model over a month of 1,000,000 stored requests <= 200 ms",
    },
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
        name: "tokens/estimate_1k_tokens_prompt",
        target_ns: 2_000.0,
        why: "issue 16: the prompt estimate of a 1,000-token chat request (4.8 KB), its body counted as received",
    },
    Goal {
        name: "translate/chat_to_anthropic_and_back",
        target_ns: 10_000.0,
        why: "issue 16: a typical chat request to an Anthropic body (bytes) and its answer back to a chat completion",
    },
    Goal {
        name: "budget/reserve_reconcile_charged",
        target_ns: 500.0,
        why: "ours: the request path's reserve then reconcile_charged, 2 hard budgets (global monthly, key daily)",
    },
];

#[derive(Serialize)]
struct Report {
    /// This run's calibration median, the unit of every `calibrated` figure:
    /// the median of the three runs below.
    calibration_ns: f64,
    /// The calibration bench's median before, during and after the run.
    calibration_runs_ns: [f64; 3],
    /// The calibration bench itself, against the reference machine's median:
    /// not a speed goal, its `ratio` (and `met`) compare this machine with
    /// the reference machine.
    calibration: Entry,
    benchmarks: Vec<Entry>,
}

#[derive(Serialize)]
struct Entry {
    name: &'static str,
    median_ns: f64,
    target_ns: f64,
    /// `median_ns / target_ns`.
    ratio: f64,
    /// `ratio <= 1`: the absolute comparison.
    met: bool,
    /// `median_ns` as a multiple of this run's calibration median.
    calibrated: f64,
    /// [`Goal::calibration_target`].
    calibrated_target: f64,
    /// `calibrated <= calibrated_target`: the comparison across machines.
    calibrated_met: bool,
    why: &'static str,
}

impl Entry {
    fn new(goal: &Goal, median_ns: f64, calibration_ns: f64) -> Entry {
        let ratio = median_ns / goal.target_ns;
        let calibrated = median_ns / calibration_ns;
        let calibrated_target = goal.calibration_target();
        Entry {
            name: goal.name,
            median_ns,
            target_ns: goal.target_ns,
            ratio,
            met: ratio <= 1.0,
            calibrated,
            calibrated_target,
            calibrated_met: calibrated <= calibrated_target,
            why: goal.why,
        }
    }
}

pub(crate) fn run(quick: bool) -> anyhow::Result<()> {
    // Said explicitly (and absolute), so cargo and criterion (which runs with
    // `benches/` as its directory) write where the report is read from.
    let target = target_dir();
    let criterion = target.join("criterion");
    let bench = |only_calibration: bool| -> anyhow::Result<SystemTime> {
        let started = SystemTime::now();
        let mut command = cargo();
        command.args(["bench", "--package", "modelfleet-benches", "--locked"]);
        if only_calibration {
            command.args(["--bench", "calibration"]);
        } else {
            command.arg("--benches");
        }
        command.arg("--");
        if quick {
            command.args(["--warm-up-time", "0.5", "--measurement-time", "1", "--sample-size", "10"]);
        }
        command.env("CARGO_TARGET_DIR", &target);
        let status = command.status().context("could not run cargo bench")?;
        if !status.success() {
            bail!("cargo bench failed ({status})");
        }
        Ok(started)
    };
    let calibration_at = |since: SystemTime| -> anyhow::Result<f64> {
        read_median(&criterion, CALIBRATION.name, since)?.with_context(|| {
            format!(
                "no fresh criterion result for {:?} in {}: is the calibration bench still there, under that name?",
                CALIBRATION.name,
                criterion.display()
            )
        })
    };
    // The machine is measured before, during (the calibration bench is one
    // of the benches) and after the run: a load that comes or goes in
    // between shows as a spread, instead of skewing every ratio silently.
    let before = calibration_at(bench(true)?)?;
    let started = bench(false)?;
    let during = calibration_at(started)?;
    let after = calibration_at(bench(true)?)?;
    let spread = Spread::of([before, during, after]);
    let calibration_ns = spread.median;
    let mut benchmarks = Vec::new();
    let mut missing = Vec::new();
    for goal in TARGETS {
        match read_median(&criterion, goal.name, started)? {
            Some(median_ns) => benchmarks.push(Entry::new(goal, median_ns, calibration_ns)),
            None => missing.push(goal.name),
        }
    }
    let report = Report {
        calibration_ns,
        calibration_runs_ns: [before, during, after],
        calibration: Entry::new(&CALIBRATION, calibration_ns, calibration_ns),
        benchmarks,
    };
    let json_path = target.join("bench-report.json");
    fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let markdown = markdown(&report, quick);
    let md_path = target.join("bench-report.md");
    fs::write(&md_path, &markdown).with_context(|| format!("writing {}", md_path.display()))?;
    println!("\n{markdown}");
    println!("wrote {} and {}", json_path.display(), md_path.display());
    if spread.relative > CALIBRATION_SPREAD_WARN {
        println!(
            "warning: the calibration moved {:.0}% during the run ({}): the machine's load changed, \
             the calibrated figures are not to be quoted",
            spread.relative * 100.0,
            report.calibration_runs_ns.map(human).join(" / ")
        );
    }
    if !missing.is_empty() {
        bail!(
            "no fresh criterion result for {missing:?} in {}: is the bench still there, under that name?",
            criterion.display()
        );
    }
    Ok(())
}

/// Above this spread (max − min over the median) of the three calibration
/// runs, the report warns that the machine's load changed during the run.
const CALIBRATION_SPREAD_WARN: f64 = 0.10;

/// Three calibration medians: their median, and their spread relative to it.
#[derive(Debug, PartialEq)]
struct Spread {
    median: f64,
    relative: f64,
}

impl Spread {
    fn of(mut runs: [f64; 3]) -> Spread {
        runs.sort_by(f64::total_cmp);
        let median = runs[1];
        Spread { median, relative: (runs[2] - runs[0]) / median }
    }
}

/// `cargo xtask loadtest`: builds the `modelfleet` binary and the load
/// generator in release mode, runs the load benchmark (mock upstream in the
/// generator, the gateway as a child process), and adds its figures to
/// `bench-report.json` (key `load`) and `bench-report.md` in the target directory.
pub(crate) fn loadtest(quick: bool, budget: bool) -> anyhow::Result<()> {
    let out = target_dir();
    let gateway = build_bin(Profile::Release, "modelfleet-cli", "modelfleet")?;
    let generator = build_bin(Profile::Release, "modelfleet-benches", "loadtest")?;
    let report_path = out.join("loadtest.json");
    let mut command = Command::new(generator);
    command.arg("--gateway-bin").arg(gateway).arg("--out").arg(&report_path);
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
    println!("{}", load_markdown(&load));
    add_to_report("load", &load, "Gateway load", &load_markdown(&load))
}

/// `loadtest --cluster N [--quick]`: the `cluster` load generator against
/// `N` replicas on the test PostgreSQL; its figures go to the report, and a
/// broken guarantee (the kill phase) fails the run. Without PostgreSQL it
/// skips, saying so, except under `CI=true`.
pub(crate) fn cluster(replicas: &str, quick: bool) -> anyhow::Result<()> {
    let Ok(n) = replicas.parse::<usize>() else { bail!("--cluster takes a number of replicas, not {replicas:?}") };
    if !(2..=8).contains(&n) {
        bail!("--cluster {n}: from 2 to 8 replicas");
    }
    let url = std::env::var("MODELFLEET_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let address = url.rsplit_once('@').map_or("127.0.0.1:5432", |(_, rest)| rest.split('/').next().unwrap_or(rest));
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(address)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).is_ok());
    if !reachable {
        if std::env::var("CI").as_deref() == Ok("true") {
            bail!("PostgreSQL is not reachable at {address} (MODELFLEET_TEST_POSTGRES): CI runs this against it");
        }
        println!("loadtest --cluster: SKIPPED, PostgreSQL is not reachable at {address} (MODELFLEET_TEST_POSTGRES)");
        return Ok(());
    }
    let profile = if quick { Profile::Debug } else { Profile::Release };
    let gateway = build_bin(profile, "modelfleet-cli", "modelfleet")?;
    let generator = build_bin(profile, "modelfleet-benches", "cluster")?;
    let report_path = target_dir().join("cluster-load.json");
    let mut command = Command::new(generator);
    command.arg("--gateway-bin").arg(gateway).arg("--out").arg(&report_path).args(["--replicas", replicas]);
    if quick {
        command.arg("--quick");
    }
    let status = command.status().context("running the cluster load generator")?;
    let load: Option<serde_json::Value> =
        fs::read_to_string(&report_path).ok().and_then(|text| serde_json::from_str(&text).ok());
    if let Some(load) = &load {
        println!("{}", cluster_markdown(load));
        add_to_report("cluster", load, "Replicas on one hot hard budget", &cluster_markdown(load))?;
    }
    if !status.success() {
        bail!("the cluster load test failed ({status}); its output is above");
    }
    Ok(())
}

fn cluster_markdown(load: &serde_json::Value) -> String {
    let f = |pointer: &str| load.pointer(pointer).and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
    let n = f("/kill/replicas");
    let mut out =
        format!("\n## Replicas on one hot hard budget ({n} replicas, PostgreSQL, mock upstream, this machine)\n\n");
    if load.get("quick") == Some(&serde_json::Value::Bool(true)) {
        out.push_str("Quick run (debug builds, seconds of load): the kill checks count, the figures do not.\n\n");
    }
    out.push_str("| measure | value | target |\n|---|---:|---:|\n");
    let _ = writeln!(
        out,
        "| kill: served / refused / cut, of 300 on room for 50 | {} / {} / {} | ≤ 50 served |",
        f("/kill/served"),
        f("/kill/refused_429_or_503"),
        f("/kill/cut_by_kill")
    );
    let _ = writeln!(
        out,
        "| kill: acknowledged ≤ shared spent | ${:.6} ≤ ${:.6} | no acknowledged spend lost |",
        f("/kill/acknowledged_nanos") / 1e9,
        f("/kill/ledger_spent_nanos") / 1e9
    );
    let _ = writeln!(
        out,
        "| kill: dead replica's lease returned after | {:.1} s | its time to live (8 s) + a sweep |",
        f("/kill/lease_returned_after_secs")
    );
    let _ = writeln!(
        out,
        "| throughput, one replica without a cluster | {:.0} req/s | — |",
        f("/load/single/requests_per_second")
    );
    let _ = writeln!(
        out,
        "| throughput, {n} replicas on one hot budget | {:.0} req/s ({:.2} of one) | ≥ 0.70 of one |",
        f("/load/cluster/requests_per_second"),
        f("/load/ratio")
    );
    let _ = writeln!(
        out,
        "| p50 / p99 at 1,000 req/s, one replica | {:.0} / {:.0} µs | — |",
        f("/load/latency_1000rps/single/p50_us"),
        f("/load/latency_1000rps/single/p99_us")
    );
    let _ = writeln!(
        out,
        "| p50 / p99 at 1,000 req/s, {n} replicas | {:.0} / {:.0} µs (p99 added {:.0} µs) | p99 added ≤ 2,000 µs |",
        f("/load/latency_1000rps/cluster/p50_us"),
        f("/load/latency_1000rps/cluster/p99_us"),
        f("/load/latency_1000rps/added_p99_us")
    );
    let _ = writeln!(
        out,
        "| shared ledger transactions during the cluster's closed loop | {:.0} /s, {:.2} ms each | — |",
        f("/load/cluster/ledger_transactions_per_second"),
        f("/load/cluster/ledger_mean_ms")
    );
    let _ = writeln!(
        out,
        "| catalog: an admin edit until every other replica serves it, p50 / max ({} reached, {} not within 10 s) | {:.0} / {:.0} ms | ≤ 1,000 ms |",
        f("/load/catalog/replicas_reached"),
        f("/load/catalog/not_within_10_s"),
        f("/load/catalog/propagation/p50_us") / 1e3,
        f("/load/catalog/propagation/max_us") / 1e3
    );
    out
}

/// A cargo profile to build with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profile {
    /// `dev`: what the tests already built.
    Debug,
    /// `release`: what is measured.
    Release,
}

/// Builds `bin` of `package` into the target directory and returns its path.
pub(crate) fn build_bin(profile: Profile, package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    let out = target_dir();
    let mut command = cargo();
    command.args(["build", "--locked", "--package", package, "--bin", bin]).env("CARGO_TARGET_DIR", &out);
    if profile == Profile::Release {
        command.arg("--release");
    }
    let status = command.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build --package {package} --bin {bin} failed ({status})");
    }
    let dir = if profile == Profile::Release { "release" } else { "debug" };
    Ok(out.join(dir).join(format!("{bin}{}", std::env::consts::EXE_SUFFIX)))
}

/// Adds `value` to `bench-report.json` under `key`, and `section` (markdown
/// starting with `\n## {heading}`) to `bench-report.md`, in place of the
/// previous `## {heading}` section: the other commands' sections are kept.
pub(crate) fn add_to_report(key: &str, value: &serde_json::Value, heading: &str, section: &str) -> anyhow::Result<()> {
    let out = target_dir();
    let json_path = out.join("bench-report.json");
    let mut report: serde_json::Value = fs::read_to_string(&json_path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| serde_json::json!({"benchmarks": []}));
    report[key] = value.clone();
    fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = out.join("bench-report.md");
    let markdown = fs::read_to_string(&md_path).unwrap_or_else(|_| String::from("# Benchmark report\n"));
    fs::write(&md_path, replace_section(&markdown, heading, section))
        .with_context(|| format!("writing {}", md_path.display()))?;
    println!("added to {} ({key:?}) and {}", json_path.display(), md_path.display());
    Ok(())
}

/// `markdown` with its `## {heading}…` section (up to the next `## `) replaced
/// by `section`, or with `section` appended when there is none.
fn replace_section(markdown: &str, heading: &str, section: &str) -> String {
    let marker = format!("\n## {heading}");
    let Some(start) = markdown.find(&marker) else { return format!("{markdown}{section}") };
    let end = markdown[start + 1..].find("\n## ").map_or(markdown.len(), |at| start + 1 + at);
    format!("{}{section}{}", &markdown[..start], &markdown[end..])
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
    let calibration = &report.calibration;
    let _ = writeln!(
        out,
        "Calibration (`{}`, work that uses no modelfleet code): median {} on this run (before / during / after: \
         {}), {} on the reference machine (ratio {:.3}). \"× calibration\" is a median over this run's calibration \
         median, \"target ×cal\" the target over the reference machine's; \"met\" compares nanoseconds, \
         \"met (cal)\" the multiples.\n",
        calibration.name,
        human(report.calibration_ns),
        report.calibration_runs_ns.map(human).join(" / "),
        human(calibration.target_ns),
        calibration.ratio,
    );
    out.push_str(
        "| benchmark | median | target | ratio | met | × calibration | target ×cal | met (cal) |\n\
         |---|---:|---:|---:|:---:|---:|---:|:---:|\n",
    );
    let yes_no = |met: bool| if met { "yes" } else { "**no**" };
    let _ = writeln!(
        out,
        "| {} | {} | {} | {:.3} | — | {} | {} | — |",
        calibration.name,
        human(calibration.median_ns),
        human(calibration.target_ns),
        calibration.ratio,
        multiple(calibration.calibrated),
        multiple(calibration.calibrated_target),
    );
    for b in &report.benchmarks {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.3} | {} | {} | {} | {} |",
            b.name,
            human(b.median_ns),
            human(b.target_ns),
            b.ratio,
            yes_no(b.met),
            multiple(b.calibrated),
            multiple(b.calibrated_target),
            yes_no(b.calibrated_met),
        );
    }
    out
}

/// A multiple of the calibration median to three significant figures,
/// without an exponent: `412`, `41.2`, `4.12`, `0.412`, `0.0000412`.
fn multiple(x: f64) -> String {
    let decimals = if x >= 100.0 {
        0
    } else if x >= 10.0 {
        1
    } else {
        let mut decimals = 2_usize;
        let mut bound = 1.0;
        while x > 0.0 && x < bound && decimals < 12 {
            bound /= 10.0;
            decimals += 1;
        }
        decimals
    };
    format!("{x:.decimals$}")
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
    fn a_report_section_is_replaced_and_the_others_kept() {
        let check = |markdown: &str, expect: &str| {
            assert_eq!(replace_section(markdown, "Soak", "\n## Soak\n\nnew\n"), expect, "{markdown:?}");
        };
        check("# R\n", "# R\n\n## Soak\n\nnew\n");
        check("# R\n\n## Soak\n\nold\n", "# R\n\n## Soak\n\nnew\n");
        check(
            "# R\n\n## Soak\n\nold\n\n## Gateway load\n\nkept\n",
            "# R\n\n## Soak\n\nnew\n\n## Gateway load\n\nkept\n",
        );
        check("# R\n\n## Gateway load\n\nkept\n", "# R\n\n## Gateway load\n\nkept\n\n## Soak\n\nnew\n");
    }

    #[test]
    fn human_units() {
        assert_eq!(human(12.34), "12.3 ns");
        assert_eq!(human(1_500.0), "1.50 µs");
        assert_eq!(human(5_000_000.0), "5.00 ms");
        assert_eq!(human(2e9), "2.00 s");
    }

    #[test]
    fn multiples_keep_three_significant_figures() {
        let check = |x: f64, expect: &str| assert_eq!(multiple(x), expect, "{x}");
        check(412.3, "412");
        check(41.23, "41.2");
        check(4.123, "4.12");
        check(1.0, "1.00");
        check(0.4123, "0.412");
        check(0.000_041_23, "0.0000412");
        check(0.0, "0.00");
    }

    #[test]
    #[expect(clippy::float_cmp, reason = "exact: a value over itself, or over a power of two times itself")]
    fn targets_are_stated_both_ways() {
        for goal in TARGETS {
            let back = goal.calibration_target() * REFERENCE_CALIBRATION_NS;
            assert!((back - goal.target_ns).abs() <= goal.target_ns * 1e-12, "{}", goal.name);
            assert_ne!(goal.name, CALIBRATION.name, "the calibration is not a speed goal");
        }
        assert_eq!(CALIBRATION.calibration_target(), 1.0);
        // On the reference machine a median at the target meets both.
        let goal = Goal { name: "g/f", target_ns: 2.0 * REFERENCE_CALIBRATION_NS, why: "x" };
        let at_target = Entry::new(&goal, goal.target_ns, REFERENCE_CALIBRATION_NS);
        assert!(at_target.met && at_target.calibrated_met);
        assert_eq!((at_target.ratio, at_target.calibrated, at_target.calibrated_target), (1.0, 2.0, 2.0));
        // On a machine twice as slow, twice the time misses in nanoseconds only.
        let slow = Entry::new(&goal, 2.0 * goal.target_ns, 2.0 * REFERENCE_CALIBRATION_NS);
        assert!(!slow.met && slow.calibrated_met);
        assert_eq!((slow.ratio, slow.calibrated), (2.0, 2.0));
    }

    #[test]
    fn the_calibration_is_the_median_of_three_runs_and_its_spread_is_told() {
        assert_eq!(Spread::of([300.0, 200.0, 250.0]), Spread { median: 250.0, relative: 0.4 });
        assert_eq!(Spread::of([220.0, 220.0, 220.0]), Spread { median: 220.0, relative: 0.0 });
        assert!(Spread::of([200.0, 210.0, 205.0]).relative <= CALIBRATION_SPREAD_WARN);
        assert!(Spread::of([200.0, 230.0, 205.0]).relative > CALIBRATION_SPREAD_WARN);
    }

    #[test]
    fn report_json_has_the_agreed_shape() {
        let entry = |name, median_ns, target_ns, calibrated_target| {
            let ratio = median_ns / target_ns;
            let calibrated = median_ns / 1000.0;
            Entry {
                name,
                median_ns,
                target_ns,
                ratio,
                met: ratio <= 1.0,
                calibrated,
                calibrated_target,
                calibrated_met: calibrated <= calibrated_target,
                why: "x",
            }
        };
        let report = Report {
            calibration_ns: 1000.0,
            calibration_runs_ns: [990.0, 1000.0, 1010.0],
            calibration: entry(CALIBRATION.name, 1000.0, 800.0, 1.0),
            benchmarks: vec![entry("g/f", 10.0, 20.0, 0.025), entry("g/slow", 30.0, 20.0, 0.025)],
        };
        let value = serde_json::to_value(&report).unwrap();
        assert_eq!(value["calibration_ns"], 1000.0);
        assert_eq!(value["calibration_runs_ns"], serde_json::json!([990.0, 1000.0, 1010.0]));
        assert_eq!(value["calibration"]["name"], "calibration/sort_and_hash");
        assert_eq!(value["calibration"]["target_ns"], 800.0);
        let first = &value["benchmarks"][0];
        assert_eq!(first["name"], "g/f");
        assert_eq!(first["median_ns"], 10.0);
        assert_eq!(first["target_ns"], 20.0);
        assert_eq!(first["ratio"], 0.5);
        assert_eq!(first["met"], true);
        assert_eq!(first["calibrated"], 0.01);
        assert_eq!(first["calibrated_target"], 0.025);
        assert_eq!(first["calibrated_met"], true);
        assert_eq!(value["benchmarks"][1]["calibrated_met"], false);
        let md = markdown(&report, false);
        assert!(
            md.contains(
                "median 1.00 µs on this run (before / during / after: 990.0 ns / 1.00 µs / 1.01 µs), \
                 800.0 ns on the reference machine (ratio 1.250)"
            ),
            "{md}"
        );
        assert!(md.contains("| benchmark | median | target | ratio | met | × calibration | target ×cal | met (cal) |"));
        assert!(
            md.contains("| calibration/sort_and_hash | 1.00 µs | 800.0 ns | 1.250 | — | 1.00 | 1.00 | — |"),
            "{md}"
        );
        assert!(md.contains("| g/f | 10.0 ns | 20.0 ns | 0.500 | yes | 0.0100 | 0.0250 | yes |"), "{md}");
        assert!(md.contains("| g/slow | 30.0 ns | 20.0 ns | 1.500 | **no** | 0.0300 | 0.0250 | **no** |"), "{md}");
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
