//! `cargo xtask python-sdk`: the gateway driven by the official Python SDKs
//! (`openai`, `anthropic`), a step of `cargo xtask ci`.
//!
//! Builds `modelfleet` (dev profile; a no-op when the tests already built
//! it), makes the venv `<target>/python-sdk-venv` hold exactly the versions
//! `tests/python/requirements.txt` pins (reused when it does, else `pip
//! install` from the package index), starts `modelfleet serve --listen
//! 127.0.0.1:0` without a config (the default catalog on simulated
//! providers, keyless) on a database in `<target>/python-sdk/<pid>/`, waits
//! for `GET /health/ready`, and runs `tests/python/smoke.py` against it
//! (what it checks is in its docstring). Every stage is bounded in time;
//! any failure fails the command, nothing is skipped. The gateway is
//! stopped with SIGTERM after a pass and killed on any failure (and when
//! this process dies, see `soak::Gateway`). A failed run keeps its
//! directory (database, gateway log).

use std::{
    ffi::OsStr,
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{
    bench::{Profile, build_bin},
    root,
    soak::{Gateway, run_dir, tail},
    target_dir,
};

/// How long creating the venv may take.
const VENV_WAIT: Duration = Duration::from_mins(2);
/// How long `pip install` may take (a cold download of every pin).
const PIP_WAIT: Duration = Duration::from_mins(10);
/// How long the gateway may take to say it is ready, once it listens.
const READY_WAIT: Duration = Duration::from_mins(1);
/// How long `smoke.py` may take, all its checks together.
const SMOKE_WAIT: Duration = Duration::from_mins(2);

/// Exits 0 when the interpreter running it has exactly the `name==version`
/// pins of the requirements file `argv[1]`, else prints what differs and
/// exits 1. A line that is not such a pin differs.
const CHECK_PINS: &str = r##"
import importlib.metadata as metadata, sys
wrong = []
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, sep, want = (part.strip() for part in line.partition("=="))
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        have = None
    if not sep or have != want:
        wrong.append(f"{line}: installed {have}")
print("\n".join(wrong))
sys.exit(1 if wrong else 0)
"##;

pub(crate) fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    if let Err(why) = python_ready() {
        // Only the Rust toolchain is promised locally; CI has Python (`.ci/run` installs it).
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            bail!("the python-sdk step needs python3 3.11+ with venv under CI=true: {why}");
        }
        println!("python-sdk: SKIPPED: {why}; install python3 (3.11 or later, with venv) to run the SDK smoke test");
        return Ok(());
    }
    let bin = build_bin(Profile::Debug, "modelfleet-cli", "modelfleet")?;
    let dir = root().join("tests").join("python");
    let phase = Instant::now();
    let python = venv(&target_dir().join("python-sdk-venv"), &dir.join("requirements.txt"))?;
    println!("python-sdk: venv ready in {:.1} s", phase.elapsed().as_secs_f64());
    let run = run_dir("python-sdk")?;
    let log = run.join("gateway.log");
    let db = run.join("m.db");
    let phase = Instant::now();
    let gateway = Gateway::start(&bin, &["--db".as_ref(), db.as_os_str()], &log)?;
    let kept = || format!("(database and gateway log kept in {})", run.display());
    wait_ready(&gateway.addr, &log).with_context(kept)?;
    println!("python-sdk: gateway ready on {} in {:.1} s", gateway.addr, phase.elapsed().as_secs_f64());
    let base_url = format!("http://{}", gateway.addr);
    let mut smoke = Command::new(&python);
    smoke
        .arg("-u")
        .arg(dir.join("smoke.py"))
        .arg(&base_url)
        .current_dir(&dir)
        // The SDKs (httpx) honour proxy variables: the gateway is on loopback.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    let phase = Instant::now();
    let status = status_within(&mut smoke, SMOKE_WAIT, "tests/python/smoke.py").with_context(kept)?;
    println!("python-sdk: smoke.py ran in {:.1} s", phase.elapsed().as_secs_f64());
    if !status.success() {
        bail!(
            "tests/python/smoke.py failed ({status}); its output is above. The gateway's log:\n{}\n{}",
            tail(&log),
            kept()
        );
    }
    gateway.terminate().with_context(kept)?;
    fs::remove_dir_all(&run).with_context(|| format!("removing {}", run.display()))?;
    println!("python-sdk: passed in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Whether `python3` is 3.11 or later with its venv module (the pinned
/// httpx2 needs 3.11).
fn python_ready() -> Result<(), String> {
    let probe = "import sys, venv, ensurepip; sys.exit(0 if sys.version_info >= (3, 11) else 3)";
    match Command::new("python3").args(["-c", probe]).output() {
        Err(e) => Err(format!("python3 cannot be run ({e})")),
        Ok(out) if out.status.code() == Some(3) => Err("python3 is older than 3.11".to_owned()),
        Ok(out) if !out.status.success() => Err("python3 lacks its venv or ensurepip module".to_owned()),
        Ok(_) => Ok(()),
    }
}

/// The venv's interpreter, once `dir` holds a venv with exactly the pins of
/// `requirements`: kept when it does, else created (when it has no
/// interpreter) and installed into with pip.
fn venv(dir: &Path, requirements: &Path) -> anyhow::Result<PathBuf> {
    let python = dir.join("bin").join("python");
    if python.exists() && pinned(&python, requirements)?.is_ok() {
        println!("python-sdk: reusing {} (holds the pinned versions)", dir.display());
        return Ok(python);
    }
    if !python.exists() {
        println!("python-sdk: creating {}", dir.display());
        let status = status_within(
            Command::new("python3").args(["-m", "venv", "--clear"]).arg(dir),
            VENV_WAIT,
            "python3 -m venv",
        )
        .context("the python-sdk step needs python3 (3.11 or later, as the pinned httpx2 does) with its venv module")?;
        if !status.success() {
            bail!("`python3 -m venv --clear {}` failed ({status}); its output is above", dir.display());
        }
    }
    println!("python-sdk: pip install -r {}", requirements.display());
    let status = status_within(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(requirements),
        PIP_WAIT,
        "pip install",
    )?;
    if !status.success() {
        bail!(
            "`pip install -r {}` failed ({status}); its output is above (PyPI must be reachable)",
            requirements.display()
        );
    }
    if let Err(wrong) = pinned(&python, requirements)? {
        bail!("after pip install, {} still differs from {}:\n{wrong}", dir.display(), requirements.display());
    }
    Ok(python)
}

/// `Ok` when `python` has every `name==version` pin of `requirements`, else
/// `Err` with what differs.
fn pinned(python: &Path, requirements: &Path) -> anyhow::Result<Result<(), String>> {
    let output = Command::new(python)
        .args([OsStr::new("-c"), OsStr::new(CHECK_PINS), requirements.as_os_str()])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if output.status.success() {
        return Ok(Ok(()));
    }
    let mut wrong = String::from_utf8_lossy(&output.stdout).into_owned();
    wrong.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok(Err(wrong.trim_end().to_owned()))
}

/// Polls `GET /health/ready` on `addr` until it answers 200, for at most
/// [`READY_WAIT`].
fn wait_ready(addr: &str, log: &Path) -> anyhow::Result<()> {
    let addr: SocketAddr = addr.parse().with_context(|| format!("the gateway said it listens on {addr:?}"))?;
    let deadline = Instant::now() + READY_WAIT;
    loop {
        let last = match ready_status(addr) {
            Ok(line) if line.split_whitespace().nth(1) == Some("200") => return Ok(()),
            Ok(line) => line,
            Err(err) => err.to_string(),
        };
        if Instant::now() >= deadline {
            bail!(
                "GET /health/ready on {addr} did not answer 200 within {} s (last: {last}); the gateway's log:\n{}",
                READY_WAIT.as_secs(),
                tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The status line of one `GET /health/ready` (HTTP/1.1, closed after).
fn ready_status(addr: SocketAddr) -> std::io::Result<String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET /health/ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    Ok(answer.lines().next().unwrap_or_default().to_owned())
}

/// Runs `command` (named `what` in errors), its output on ours, to its end
/// within `limit`; past it, kills it and fails.
fn status_within(command: &mut Command, limit: Duration, what: &str) -> anyhow::Result<ExitStatus> {
    let mut child = command.stdin(Stdio::null()).spawn().with_context(|| format!("starting {what}"))?;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().with_context(|| format!("waiting for {what}"))? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {} s: killed", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
