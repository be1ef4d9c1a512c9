//! `cargo xtask ci`: every check, in order, stopping at the first red one.

use std::{
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, bail};

use crate::cargo;

struct Step {
    name: &'static str,
    command: Command,
}

fn step(name: &'static str, args: &[&str]) -> Step {
    let mut command = cargo();
    command.args(args);
    Step { name, command }
}

/// Whether `cargo <sub> --version` runs (the subcommand is installed).
fn has_subcommand(sub: &str) -> bool {
    cargo().args([sub, "--version"]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Says loudly, before the tests, which real servers the cluster tests
/// will not find (they skip then, except under `CI=true`, where they fail).
fn announce_cluster_servers() {
    for (server, variable, default) in [
        ("PostgreSQL", "MODELFLEET_TEST_POSTGRES", "127.0.0.1:5432"),
        ("Redis", "MODELFLEET_TEST_REDIS", "127.0.0.1:6379"),
    ] {
        let url = std::env::var(variable).ok();
        // `scheme://[userinfo@]host:port[/…]`: the host and port.
        let address = url
            .as_deref()
            .map(|url| url.split_once("://").map_or(url, |(_, rest)| rest))
            .map(|rest| rest.rsplit_once('@').map_or(rest, |(_, host)| host))
            .and_then(|rest| rest.split('/').next())
            .unwrap_or(default)
            .to_owned();
        let reachable = std::net::ToSocketAddrs::to_socket_addrs(address.as_str())
            .ok()
            .and_then(|mut addrs| addrs.next())
            .is_some_and(|addr| std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).is_ok());
        if !reachable {
            println!(
                "==> cluster tests: {server} is not reachable at {address} ({variable}): the cluster tests that \
                 need it SKIP on this run (under CI=true they fail; .ci/run starts the server)"
            );
        }
    }
}

pub(crate) fn run() -> anyhow::Result<()> {
    announce_cluster_servers();
    let mut steps = vec![
        step("fmt", &["fmt", "--all", "--check"]),
        step("clippy", &["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"]),
    ];
    if has_subcommand("nextest") {
        let profile = if std::env::var_os("CI").is_some() { "ci" } else { "default" };
        steps.push(step(
            "tests (nextest)",
            &["nextest", "run", "--workspace", "--exclude", "xtask", "--locked", "--profile", profile],
        ));
    } else {
        println!("note: cargo-nextest is not installed; running the tests with `cargo test`");
        steps.push(step("tests (cargo test)", &["test", "--workspace", "--exclude", "xtask", "--locked"]));
    }
    // The official Python SDKs against `modelfleet serve` (see `python_sdk.rs`).
    steps.push(step("python-sdk", &["run", "--quiet", "--locked", "--package", "xtask", "--", "python-sdk"]));
    steps.push(step("doctests", &["test", "--workspace", "--doc", "--locked"]));
    // The gateway under faulty load for about a minute (see `soak.rs`).
    steps.push(step("soak --quick", &["run", "--quiet", "--locked", "--package", "xtask", "--", "soak", "--quick"]));
    // Three replicas on one hard budget, one killed mid-burst (see `bench::cluster`).
    steps.push(step(
        "cluster --quick",
        &["run", "--quiet", "--locked", "--package", "xtask", "--", "loadtest", "--cluster", "3", "--quick"],
    ));
    let mut docs = step("docs", &["doc", "--workspace", "--no-deps", "--locked"]);
    docs.command.env("RUSTDOCFLAGS", "-D warnings");
    steps.push(docs);
    steps.push(step("tidy", &["test", "--package", "xtask", "--locked"]));
    let deny = has_subcommand("deny");
    if deny {
        // cargo-deny reads metadata for every platform offline: fetch the
        // crates of the other platforms (the build only fetched this one's).
        steps.push(step("fetch", &["fetch", "--locked"]));
        steps.push(step("cargo-deny", &["deny", "--offline", "check", "bans", "licenses", "sources"]));
    }

    let total = Instant::now();
    for Step { name, mut command } in steps {
        println!("==> {name}");
        let started = Instant::now();
        let status = command.status().with_context(|| format!("could not run step {name}"))?;
        let took = started.elapsed().as_secs_f64();
        if !status.success() {
            bail!("step `{name}` failed after {took:.1}s ({status}); its output is above");
        }
        println!("<== {name}: ok in {took:.1}s");
    }
    if !deny {
        println!(
            "==> cargo-deny: SKIPPED, cargo-deny is not installed (`cargo install --locked cargo-deny`; .ci/run does this)"
        );
    }
    println!("ci: all green in {:.1}s", total.elapsed().as_secs_f64());
    Ok(())
}
