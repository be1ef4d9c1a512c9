//! `cargo xtask mutants [-p CRATE] [-f FILE] [-- ARGS]`: mutation testing with
//! cargo-mutants, run by hand (not by `ci`: it rebuilds and retests the crate
//! once per mutant, minutes to hours on a small machine).
//!
//! Installs cargo-mutants (`cargo install --locked cargo-mutants`) when
//! `cargo mutants --version` fails, then runs it on the given package and
//! file, writing its results to `mutants.out/` in the target directory
//! (`CARGO_TARGET_DIR`, else `target/`). A surviving mutant is
//! a change to the code that no test notices: add the test, or name it as
//! equivalent (it changes nothing observable).

use std::process::Stdio;

use anyhow::{Context, bail};

use crate::{cargo, target_dir};

/// What `cargo xtask mutants` was asked for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Args<'a> {
    package: Option<&'a str>,
    file: Option<&'a str>,
    /// Passed to cargo-mutants as they are (after `--`): `--timeout 60 -j 1`.
    extra: Vec<&'a str>,
}

fn parse<'a>(args: &[&'a str]) -> anyhow::Result<Args<'a>> {
    let mut parsed = Args::default();
    let mut rest = args.iter();
    while let Some(&arg) = rest.next() {
        match arg {
            "-p" | "--package" => parsed.package = Some(value(arg, rest.next())?),
            "-f" | "--file" => parsed.file = Some(value(arg, rest.next())?),
            "--" => {
                parsed.extra = rest.copied().collect();
                break;
            }
            other => bail!("unknown argument {other:?} (usage: cargo xtask mutants [-p CRATE] [-f FILE] [-- ARGS])"),
        }
    }
    Ok(parsed)
}

fn value<'a>(flag: &str, value: Option<&&'a str>) -> anyhow::Result<&'a str> {
    value.copied().with_context(|| format!("{flag} needs a value"))
}

pub(crate) fn run(args: &[&str]) -> anyhow::Result<()> {
    let args = parse(args)?;
    let installed = cargo()
        .args(["mutants", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        println!("==> cargo-mutants is not installed: cargo install --locked cargo-mutants");
        let status =
            cargo().args(["install", "--locked", "cargo-mutants"]).status().context("could not run cargo install")?;
        if !status.success() {
            bail!("installing cargo-mutants failed ({status})");
        }
    }
    let target = target_dir();
    let out = target.join("mutants.out");
    let mut command = cargo();
    command.args(["mutants", "--output"]).arg(&target);
    if let Some(package) = args.package {
        command.args(["--package", package]);
    }
    if let Some(file) = args.file {
        command.args(["--file", file]);
    }
    command.args(&args.extra);
    println!("==> {command:?}");
    let status = command.status().context("could not run cargo mutants")?;
    // cargo-mutants prints its summary (caught, missed, unviable, timeouts) itself.
    match status.code() {
        Some(0) => {
            println!("mutants: every mutant was caught or unviable; details in {}", out.display());
            Ok(())
        }
        Some(2) => bail!("mutants survived: see {}", out.join("missed.txt").display()),
        Some(3) => bail!(
            "mutants timed out (a mutant that loops forever is caught; a slow test is not): see {}",
            out.join("timeout.txt").display()
        ),
        Some(4) => bail!("the tests fail without any mutation: fix them first"),
        _ => bail!("cargo mutants failed ({status})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        assert_eq!(parse(&[]).unwrap(), Args::default());
        assert_eq!(
            parse(&["-p", "modelfleet-budget", "--file", "crates/budget/src/ledger.rs", "--", "-j", "1"]).unwrap(),
            Args {
                package: Some("modelfleet-budget"),
                file: Some("crates/budget/src/ledger.rs"),
                extra: vec!["-j", "1"],
            }
        );
        assert!(parse(&["-p"]).is_err());
        assert!(parse(&["--jobs"]).is_err());
    }
}
