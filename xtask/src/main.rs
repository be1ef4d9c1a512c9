//! The project's own commands, run as `cargo xtask <command>`.
//!
//! - `ci`: the one check of the whole workspace (fmt, clippy, tests,
//!   `python-sdk`, doctests, `soak --quick`, `loadtest --cluster 3 --quick`,
//!   docs, tidy, cargo-deny); the first red step stops the run.
//! - `python-sdk`: `modelfleet serve` driven by the official Python SDKs
//!   (`tests/python/smoke.py` in a venv of pinned `openai` and `anthropic`);
//!   a step of `ci`, runnable alone.
//! - `bench [--quick]`: runs the criterion benches and writes
//!   `bench-report.json` and `bench-report.md` in the target directory
//!   against the targets in [`bench::TARGETS`], each median also as a
//!   multiple of the calibration bench's.
//! - `loadtest [--quick] [--budget]`: the gateway's load benchmark (the `loadtest`
//!   binary of `benches/`), its figures added to the same report.
//! - `loadtest --cluster N [--quick]`: `N` gateway replicas on one hot hard
//!   budget in PostgreSQL (the `cluster` binary of `benches/`): a SIGKILL
//!   mid-burst checked against the shared ledger, then throughput and
//!   latency against one replica without a cluster. `--quick` (debug
//!   builds, a few seconds of load) is a step of `ci`.
//! - `soak [--quick]`: the gateway under sustained load with injected
//!   faults, a SIGKILL and a restart, checked for client-visible errors, the
//!   books and memory growth; its figures added to the same report.
//! - `mutants [-p CRATE] [-f FILE] [-- ARGS]`: mutation testing with
//!   cargo-mutants (installed when missing), run by hand, never by `ci`.
//!
//! The target directory is `CARGO_TARGET_DIR` when set, else `target/`
//! ([`target_dir`]). The tidy checks live in `tidy.rs` as ordinary tests,
//! run by `ci`.

mod bench;
mod ci;
mod mutants;
mod python_sdk;
mod soak;
#[cfg(test)]
mod tidy;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci              fmt, clippy -D warnings, tests, python-sdk, doctests,
                  soak --quick, loadtest --cluster 3 --quick, docs -D warnings,
                  tidy checks, cargo-deny (when installed); stops at the first
                  red step
  python-sdk      the gateway (debug build, default catalog, simulated) driven by
                  the official openai and anthropic Python SDKs: runs
                  tests/python/smoke.py in <target dir>/python-sdk-venv, made
                  from the pins of tests/python/requirements.txt (pip install
                  from PyPI when it lacks them); a step of ci
  bench [--quick] run the criterion benches, write bench-report.{json,md} in the
                  target dir (CARGO_TARGET_DIR, else target/); medians also as
                  multiples of the calibration bench's
  loadtest [--quick] [--budget]
                  the gateway under load (mock upstream, release builds); adds
                  throughput, latency and memory to bench-report.{json,md};
                  --budget configures a global budget (spend committed per request)
  loadtest --cluster N [--quick]
                  N replicas (2-8) sharing one hot hard budget in PostgreSQL
                  (MODELFLEET_TEST_POSTGRES): 300 requests on room for 50 with a
                  replica SIGKILLed mid-burst (checked against the shared ledger),
                  then throughput and p99 against one replica without a cluster;
                  --quick: debug builds, seconds of load (a step of ci)
  soak [--quick]  the gateway (a child process) against the mock upstream with
                  injected faults, slow and stalled clients, a SIGKILL and a
                  restart; checks client-visible errors, the stored rows and
                  spend, and RSS growth; adds its figures to bench-report.{json,md}.
                  --quick: about a minute, debug build (a step of ci); full:
                  100,000+ requests, release build
  mutants [-p CRATE] [-f FILE] [-- ARGS]
                  mutation testing with cargo-mutants (installed when missing;
                  slow: run by hand, not by ci); ARGS go to cargo mutants, e.g.
                  -- --timeout 60 -j 1; results in <target dir>/mutants.out/
  help            this text";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["ci"] => ci::run(),
        ["python-sdk"] => python_sdk::run(),
        ["bench"] => bench::run(false),
        ["bench", "--quick"] => bench::run(true),
        ["mutants", rest @ ..] => mutants::run(rest),
        ["soak"] => soak::run(false),
        ["soak", "--quick"] => soak::run(true),
        ["loadtest", "--cluster", n, flags @ ..] if flags.iter().all(|f| *f == "--quick") => {
            bench::cluster(n, flags.contains(&"--quick"))
        }
        ["loadtest", flags @ ..] if flags.iter().all(|f| matches!(*f, "--quick" | "--budget")) => {
            bench::loadtest(flags.contains(&"--quick"), flags.contains(&"--budget"))
        }
        [] | ["help" | "--help" | "-h"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("unknown arguments {args:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Where cargo writes its output: `CARGO_TARGET_DIR` when set, else
/// `<root>/target`. Criterion's results, the bench reports and the release
/// binaries are all read and written here.
fn target_dir() -> PathBuf {
    resolve_target_dir(&root(), std::env::var_os("CARGO_TARGET_DIR"))
}

/// [`target_dir`] without the process environment: `env` is the value of
/// `CARGO_TARGET_DIR`. A relative value is relative to the workspace root,
/// where xtask runs cargo; an empty one counts as unset.
fn resolve_target_dir(root: &Path, env: Option<OsString>) -> PathBuf {
    match env {
        // `join` of an absolute path is that path.
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}

/// `cargo`, as the running cargo names itself (so rustup's toolchain is kept).
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_dir_resolution() {
        let check = |env: Option<&str>, expect: &str| {
            assert_eq!(resolve_target_dir(Path::new("/ws"), env.map(OsString::from)), PathBuf::from(expect), "{env:?}");
        };
        check(None, "/ws/target");
        check(Some(""), "/ws/target");
        check(Some("/tmp/tdir"), "/tmp/tdir");
        check(Some("build/out"), "/ws/build/out");
        check(Some("../shared-target"), "/ws/../shared-target");
    }
}
