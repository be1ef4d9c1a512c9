//! `cargo xtask soak [--quick]`: the gateway under sustained load with
//! injected faults, checked for what its clients saw and what its books kept.
//!
//! The real `modelfleet serve` (built by cargo: the dev profile for
//! `--quick`, as the tests built it; release for the full run) runs as a
//! child process on 127.0.0.1, in front of the mock upstream, which runs in
//! this process. Everything is loopback, bounded in requests and time, and
//! stops by itself.
//!
//! **The fleet** ([`config`], [`MODELS`]): healthy models that never fail
//! (`good-a`, `good-b`; `good-long` and `good-huge` for long streams), and
//! eight faulty ones, each failing a share of its calls: HTTP 500, 429, a
//! reset, a hang and held-back headers (both longer than their provider's
//! 1 s timeouts), a stream cut, an error event mid-stream, an endless drip.
//! Every faulty model lists `good-a` and `good-b` as its fallbacks; a route
//! lists faulty models then the healthy two; `auto` ranks them all, with
//! enough attempts per request to reach a healthy model past every faulty
//! one. A hard global budget puts every request on the strict path: its
//! spend is committed to SQLite before the answer leaves.
//!
//! **The traffic** ([`drive`]): clients ask for a faulty model most of the
//! time, else a healthy one, the route or `auto`; every third request of
//! each client is streamed. Two more clients read long streams slowly, and
//! two stop reading a very long one (over a socket with a 4 KiB receive
//! buffer) for longer than the gateway's `stream_send_timeout_ms`, so the
//! gateway drops them.
//!
//! **Phases**: (1) mixed load in two halves (`--quick`: 2 × 18 s; full:
//! 2 × 50,000 requests), the gateway's RSS read after each, then SIGTERM;
//! (2) non-streamed calls on a fresh database (every cost a call is charged
//! is then in its answer's header, so what a crash may lose is bounded by
//! the calls it cut), SIGKILL mid-load, `modelfleet db check`, the books
//! reopened, the gateway restarted on the same file, mixed load, SIGTERM.
//!
//! **Checks** (both modes): no client saw an error a healthy model could
//! have served: an HTTP error, a broken connection, a 200 without its cost,
//! a stream ended early on a model with no mid-stream fault (a stream cut
//! after its first event by a model that does cut streams cannot fall back,
//! and is counted apart, as are slow and stalled clients the gateway
//! dropped, and requests the SIGKILL cut). After SIGTERM, `db check` passes,
//! the stored successes are the answers clients completed (plus at most the
//! streams stalled clients left, if the gateway finished them), and the
//! stored spend covers the `x-modelfleet-cost` of every 200. After SIGKILL,
//! `db check` passes, the stored spend covers every acknowledged cost, and
//! the stored successes are the answered calls (plus at most the calls the
//! SIGKILL cut); after the restart the gateway answers without error and the
//! stored spend still covers everything acknowledged. The full run also
//! reaches 100,000 requests, a third of them streamed, and the gateway's
//! RSS grows less than 5 % from the 50k to the 100k mark (printed only with
//! `--quick`).
//!
//! The figures go to stdout and to `bench-report.{json,md}` (key `soak`);
//! the configs, databases and gateway logs are written to
//! `<target>/soak/<pid>/`, kept when a check fails.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use modelfleet_mock_upstream::{Behavior, Fault, MockUpstream};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    bench::{Profile, add_to_report, build_bin},
    target_dir,
};

/// The models the soak configures, with how the mock answers for each.
/// Faulty models fail at their rate; the rest of their calls are answered.
const MODELS: &[SoakModel] = &[
    SoakModel { id: "good-a", fault: None, rate: 0.0 },
    SoakModel { id: "good-b", fault: None, rate: 0.0 },
    SoakModel { id: "good-long", fault: None, rate: 0.0 },
    SoakModel { id: "good-huge", fault: None, rate: 0.0 },
    SoakModel { id: "f-500", fault: Some(Fault::ServerError), rate: 0.3 },
    SoakModel { id: "f-429", fault: Some(Fault::RateLimited { retry_after_secs: 1 }), rate: 0.3 },
    SoakModel { id: "f-reset", fault: Some(Fault::Reset), rate: 0.3 },
    SoakModel { id: "f-hang", fault: Some(Fault::Hang(Duration::from_secs(3))), rate: 0.2 },
    SoakModel { id: "f-slow-headers", fault: Some(Fault::SlowHeaders(Duration::from_secs(2))), rate: 0.2 },
    SoakModel { id: "f-cut", fault: Some(Fault::CutAfter(2)), rate: 0.2 },
    SoakModel { id: "f-midstream", fault: Some(Fault::MidStreamError(2)), rate: 0.2 },
    SoakModel { id: "f-drip", fault: Some(Fault::SlowDrip { interval: Duration::from_millis(25) }), rate: 0.2 },
];

/// A model of the soak's fleet.
#[derive(Debug, Clone, Copy)]
struct SoakModel {
    id: &'static str,
    fault: Option<Fault>,
    rate: f64,
}

impl SoakModel {
    /// Whether its streams may end early after their first event: no
    /// fallback is possible once a client has events.
    fn cuts_streams(&self) -> bool {
        matches!(self.fault, Some(Fault::CutAfter(_) | Fault::MidStreamError(_) | Fault::SlowDrip { .. }))
    }
}

/// What normal clients ask for, with weights: mostly faulty models.
const MIX: &[(&str, u32)] = &[
    ("good-a", 10),
    ("good-b", 6),
    ("f-500", 8),
    ("f-429", 8),
    ("f-reset", 8),
    ("f-hang", 5),
    ("f-slow-headers", 5),
    ("f-cut", 8),
    ("f-midstream", 8),
    ("f-drip", 6),
    ("auto", 8),
    (ROUTE, 8),
];

/// The route: faulty models first, then the healthy two.
const ROUTE: &str = "soak-route";

/// Output tokens a normal request allows: well above what the mock answers
/// (12 tokens), small enough that an endless drip passes it quickly.
const MAX_TOKENS: u32 = 64;

/// `max_tokens` of a slow reader's stream (`good-long` answers half).
const SLOW_TOKENS: u32 = 80_000;

/// `max_tokens` of a stalled client's stream (`good-huge` answers half).
const STALL_TOKENS: u32 = 3_200_000;

/// How the run is sized.
#[derive(Debug, Clone, Copy)]
struct Mode {
    quick: bool,
    /// Each half of phase 1.
    half: Until,
    /// Clients sending normal requests.
    clients: usize,
    /// Load before the SIGKILL, and after the restart.
    crash_load: Duration,
    restart_load: Duration,
    /// How long a stalled client holds its stream without reading.
    stall: Duration,
}

/// When a load phase stops: whichever comes first.
#[derive(Debug, Clone, Copy)]
struct Until {
    requests: u64,
    time: Duration,
}

impl Mode {
    fn load(&self, until: Until, traffic: Traffic) -> Load {
        Load { until, clients: self.clients, traffic, stall: self.stall }
    }

    fn new(quick: bool) -> Mode {
        if quick {
            Mode {
                quick,
                half: Until { requests: u64::MAX, time: Duration::from_secs(18) },
                clients: 16,
                crash_load: Duration::from_secs(8),
                restart_load: Duration::from_secs(4),
                stall: Duration::from_secs(3),
            }
        } else {
            Mode {
                quick,
                half: Until { requests: 50_000, time: Duration::from_mins(15) },
                clients: 32,
                crash_load: Duration::from_secs(20),
                restart_load: Duration::from_secs(10),
                stall: Duration::from_secs(3),
            }
        }
    }
}

pub(crate) fn run(quick: bool) -> anyhow::Result<()> {
    if !Path::new("/proc/self/status").exists() {
        bail!("the soak reads the gateway's memory from /proc: it runs on Linux only");
    }
    let mode = Mode::new(quick);
    let profile = if quick { Profile::Debug } else { Profile::Release };
    let gateway_bin = build_bin(profile, "modelfleet-cli", "modelfleet")?;
    // The soak's own time, the build left out.
    let started = Instant::now();
    let dir = run_dir()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let mock = runtime.block_on(MockUpstream::start()).context("starting the mock upstream")?;
    for model in MODELS {
        mock.set(model.id, behavior(model));
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")?;
    let soak = Soak { mode, bin: gateway_bin, dir, mock_url: mock.base_url(), client, runtime: &runtime, started };
    let result = soak.phases();
    runtime.block_on(mock.shutdown());
    let mut figures = result?;
    figures.seconds = started.elapsed().as_secs_f64();
    let report = figures.json(&mode);
    let markdown = figures.markdown(&mode);
    println!("{markdown}");
    add_to_report("soak", &report, "Soak", &markdown)?;
    let failed: Vec<&Check> = figures.checks.iter().filter(|c| !c.ok).collect();
    if !failed.is_empty() {
        let list: Vec<String> = failed.iter().map(|c| format!("{}: {}", c.name, c.detail)).collect();
        bail!("the soak failed {} check(s):\n  {}\n(logs in {})", failed.len(), list.join("\n  "), soak.dir.display());
    }
    println!("soak: all checks passed in {:.0} s", figures.seconds);
    fs::remove_dir_all(&soak.dir).with_context(|| format!("removing {}", soak.dir.display()))
}

/// This run's directory, `<target>/soak/<pid>`: runs at once (two `ci`s on
/// one tree) must not share a database. The directories of runs whose
/// process is gone are removed first; a run that passes removes its own,
/// one that fails keeps it (configs, databases, gateway logs).
fn run_dir() -> anyhow::Result<PathBuf> {
    let root = target_dir().join("soak");
    if let Ok(entries) = fs::read_dir(&root) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let alive = name
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|pid| pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists());
            if !alive {
                // Best effort: another run may be removing it too.
                let path = entry.path();
                let _ = if path.is_dir() { fs::remove_dir_all(path) } else { fs::remove_file(path) };
            }
        }
    }
    let dir = root.join(std::process::id().to_string());
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// How the mock answers for `model`: as the mock does by default, but
/// `good-long` (for slow readers: 240 kB) and `good-huge` (for stalled
/// clients: 9.6 MB, more than the socket buffers and hyper's queue between
/// the gateway and a client hold) answer long streams. Each answers half
/// its clients' `max_tokens`: the mock writes six characters a token, and
/// the gateway, counting four, ends a stream that looks longer than the
/// request allows.
fn behavior(model: &SoakModel) -> Behavior {
    let mut behavior = Behavior { fault: model.fault, fault_rate: model.rate, ..Behavior::default() };
    match model.id {
        "good-long" => (behavior.completion_tokens, behavior.chunks) = (SLOW_TOKENS / 2, 400),
        "good-huge" => (behavior.completion_tokens, behavior.chunks) = (STALL_TOKENS / 2, 4_000),
        _ => {}
    }
    behavior
}

/// The gateway's configuration: `db` for the store, the mock at `mock_url`.
fn config(db: &Path, mock_url: &str) -> String {
    let mut text = format!(
        r#"# Written by `cargo xtask soak`.
# `serve --listen 127.0.0.1:0` overrides the address: a free port.
[server]
listen = "127.0.0.1:8080"
drain_grace_ms = 100
drain_timeout_ms = 10000
# Shorter than a stalled client's hold: the gateway drops it.
stream_send_timeout_ms = 2000
# Against this process's RSS (tens of MB), not the machine's memory: builds
# running beside the soak must not make the memory guard refuse requests.
memory_limit_bytes = 1073741824

[store]
path = {db}

[[providers]]
name = "healthy"
kind = "openai"
base_url = {mock_url}
request_timeout_ms = 60000

# Small timeouts (yet ample for an answer on a busy machine): a hang or
# held-back headers fail fast and fall back.
[[providers]]
name = "faulty"
kind = "openai"
base_url = {mock_url}
connect_timeout_ms = 1000
request_timeout_ms = 1000
first_token_timeout_ms = 1000
stream_idle_timeout_ms = 1000

[retry]
deadline_ms = 60000

# Faulty models come back soon, so they keep being tried (and failing).
[cooldown]
short_ms = 1000
escalating_base_ms = 500
escalating_max_ms = 2000

[circuit]
open_ms = 2000

# Enough attempts for `auto` to reach a healthy model past every faulty one.
[fallback]
max_attempts_per_request = 16

# A hard budget: every answer's spend is committed before it is sent.
[[budgets]]
scope = "global"
period = "none"
limit = "1000000"
enforcement = "hard"

[cache]
enabled = false

[[routes]]
name = "{ROUTE}"
fallbacks = ["f-500", "f-reset", "f-hang", "good-a", "good-b"]
[routes.requirements]
category = "general"
"#,
        // TOML strings, quoted and escaped.
        db = toml::Value::String(db.display().to_string()),
        mock_url = toml::Value::String(mock_url.to_owned()),
    );
    for model in MODELS {
        // The long-stream models are asked for by name only: neither the
        // route nor `auto` (both ask for "general") picks them, since with a
        // small `max_tokens` the mock's long words would pass the gateway's
        // estimate of what the cap allows (see `behavior`).
        let (provider, window, category, fallbacks) = match (model.fault, model.id) {
            (None, "good-long" | "good-huge") => {
                ("healthy", 2 * STALL_TOKENS, "summarization", r#"["good-a", "good-b"]"#)
            }
            (None, "good-a") => ("healthy", 8_192, "general", r#"["good-b"]"#),
            (None, _) => ("healthy", 8_192, "general", r#"["good-a"]"#),
            (Some(_), _) => ("faulty", 8_192, "general", r#"["good-a", "good-b"]"#),
        };
        let _ = write!(
            text,
            "\n[[models]]\nid = \"{id}\"\nprovider = \"{provider}\"\ncontext_window = {window}\n\
             input_price_per_mtok = \"0.50\"\noutput_price_per_mtok = \"1.50\"\nquality = 0.7\n\
             languages = [\"en\"]\ncategories = [\"{category}\"]\nfallbacks = {fallbacks}\n",
            id = model.id,
        );
    }
    text
}

/// The run's fixed parts.
struct Soak<'a> {
    mode: Mode,
    bin: PathBuf,
    dir: PathBuf,
    mock_url: String,
    client: reqwest::Client,
    runtime: &'a tokio::runtime::Runtime,
    started: Instant,
}

impl Soak<'_> {
    /// Says how far the run is.
    fn say(&self, what: &str) {
        println!("soak [{:5.1} s] {what}", self.started.elapsed().as_secs_f64());
    }

    fn phases(&self) -> anyhow::Result<Figures> {
        let mut figures = Figures::default();
        self.load_phase(&mut figures)?;
        self.crash_phase(&mut figures)?;
        Ok(figures)
    }

    fn write_config(&self, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let db = self.dir.join(format!("{name}.db"));
        let path = self.dir.join(format!("{name}.toml"));
        fs::write(&path, config(&db, &self.mock_url)).with_context(|| format!("writing {}", path.display()))?;
        Ok((path, db))
    }

    fn start(&self, config: &Path, log: &str) -> anyhow::Result<Gateway> {
        Gateway::start(&self.bin, config, &self.dir.join(log))
    }

    /// Mixed load until `until` on a gateway at `addr`.
    fn load(&self, addr: &str, until: Until) -> anyhow::Result<Tally> {
        let target = Target::new(&self.client, addr)?;
        let load = self.mode.load(until, Traffic::Mixed);
        let never = Arc::new(AtomicBool::new(false));
        Ok(self.runtime.block_on(drive(target, load, Arc::clone(&never), never)))
    }

    /// Phase 1: two halves of load, RSS after each, SIGTERM, then the books.
    fn load_phase(&self, figures: &mut Figures) -> anyhow::Result<()> {
        let (config, db) = self.write_config("soak")?;
        let gateway = self.start(&config, "gateway.log")?;
        let addr = gateway.addr.clone();
        self.say(&format!("phase 1, first half ({})…", self.mode.half.describe()));
        let mut tally = self.load(&addr, self.mode.half)?;
        figures.rss_half_mib = gateway.rss_mib()?;
        figures.requests_at_half = tally.requests;
        self.say(&format!("{} requests, gateway RSS {:.1} MiB; second half…", tally.requests, figures.rss_half_mib));
        tally.merge(self.load(&addr, self.mode.half)?);
        figures.rss_full_mib = gateway.rss_mib()?;
        self.say(&format!("{} requests, gateway RSS {:.1} MiB; SIGTERM…", tally.requests, figures.rss_full_mib));
        gateway.terminate()?;
        self.say("stopped; checking the database…");
        let check = db_check(&self.bin, &db)?;
        let books = books(&self.bin, &db)?;
        figures.check(
            "no client-visible error a healthy model could have served",
            tally.error_total() == 0,
            format!("{} errors: {:?} (first of each: {:?})", tally.error_total(), tally.errors, tally.examples),
        );
        figures.check("`db check` passes after SIGTERM", check.is_ok(), format!("{check:?}"));
        let (low, high) = (tally.completed, tally.completed + tally.stalled);
        figures.check(
            "every completed answer has its row (SIGTERM)",
            (low..=high).contains(&books.successes),
            format!(
                "{} successful rows stored; clients completed {low} (+ {} streams they left)",
                books.successes, tally.stalled
            ),
        );
        figures.check(
            "the stored spend covers every acknowledged cost (SIGTERM)",
            books.cost_nanos >= tally.acked_nanos,
            format!("stored {}, acknowledged {}", dollars(books.cost_nanos), dollars(tally.acked_nanos)),
        );
        if !self.mode.quick {
            figures.check(
                "at least 100,000 requests, a third of them streamed",
                tally.requests >= 2 * self.mode.half.requests && tally.streamed * 3 >= tally.requests,
                format!("{} requests, {} streamed", tally.requests, tally.streamed),
            );
            let growth = figures.rss_growth_percent();
            figures.check(
                "gateway RSS grows < 5 % from 50k to 100k requests",
                growth < 5.0,
                format!("{:.1} → {:.1} MiB ({growth:+.2} %)", figures.rss_half_mib, figures.rss_full_mib),
            );
        }
        figures.stored_successes = books.successes;
        figures.stored_cost_nanos = books.cost_nanos;
        figures.perf_rows = check.ok().and_then(|c| c.perf_rows);
        figures.load = tally;
        Ok(())
    }

    /// Phase 2: load, SIGKILL mid-load, `db check`, reopen, restart, load, SIGTERM.
    fn crash_phase(&self, figures: &mut Figures) -> anyhow::Result<()> {
        let (config, db) = self.write_config("crash")?;
        let gateway = self.start(&config, "gateway-crash.log")?;
        let target = Target::new(&self.client, &gateway.addr)?;
        let (stop, killed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let until = Until { requests: u64::MAX, time: self.mode.crash_load + Duration::from_mins(1) };
        let load = self.mode.load(until, Traffic::CallsOnly);
        self.say(&format!("phase 2, calls on a fresh database, SIGKILL after {} s…", self.mode.crash_load.as_secs()));
        let load = self.runtime.spawn(drive(target, load, Arc::clone(&stop), Arc::clone(&killed)));
        std::thread::sleep(self.mode.crash_load);
        killed.store(true, Ordering::SeqCst);
        gateway.kill()?;
        stop.store(true, Ordering::SeqCst);
        let before = self.runtime.block_on(load).context("the load before the SIGKILL panicked")?;
        let check = db_check(&self.bin, &db)?;
        figures.check("`db check` passes after SIGKILL", check.is_ok(), format!("{check:?}"));
        let reopened = books(&self.bin, &db)?;
        figures.check(
            "every acknowledged cost is stored after SIGKILL",
            reopened.cost_nanos >= before.acked_nanos,
            format!("stored {}, acknowledged {}", dollars(reopened.cost_nanos), dollars(before.acked_nanos)),
        );
        // Each answered call's row was committed before its answer; a call
        // the SIGKILL cut may have committed one too.
        let (low, high) = (before.completed_calls, before.completed_calls + before.killed);
        figures.check(
            "every answered call has its row after SIGKILL",
            (low..=high).contains(&reopened.successes),
            format!(
                "{} successful rows stored; {low} calls answered, {} cut by the SIGKILL",
                reopened.successes, before.killed
            ),
        );
        figures.check(
            "no client-visible error before the SIGKILL",
            before.error_total() == 0,
            format!("{:?} (first of each: {:?})", before.errors, before.examples),
        );
        self.say(&format!(
            "{} requests before the SIGKILL ({} cut by it); restarting…",
            before.requests, before.killed
        ));
        let gateway = self.start(&config, "gateway-restart.log")?;
        let after = self.load(&gateway.addr, Until { requests: u64::MAX, time: self.mode.restart_load })?;
        self.say(&format!("{} requests after the restart; SIGTERM…", after.requests));
        gateway.terminate()?;
        let check = db_check(&self.bin, &db)?;
        figures.check("`db check` passes after the restart and SIGTERM", check.is_ok(), format!("{check:?}"));
        let last = books(&self.bin, &db)?;
        let acked = before.acked_nanos + after.acked_nanos;
        figures.check(
            "every acknowledged cost is stored after the restart",
            last.cost_nanos >= acked,
            format!("stored {}, acknowledged {}", dollars(last.cost_nanos), dollars(acked)),
        );
        figures.check(
            "the restarted gateway answers",
            after.completed > 0 && after.error_total() == 0,
            format!("{} completed, errors {:?} (first of each: {:?})", after.completed, after.errors, after.examples),
        );
        figures.crash = Some(Crash {
            before_kill: before.requests,
            cut_by_kill: before.killed,
            acked_before_nanos: before.acked_nanos,
            stored_after_kill_nanos: reopened.cost_nanos,
            after_restart: after.requests,
            acked_total_nanos: acked,
            stored_final_nanos: last.cost_nanos,
        });
        Ok(())
    }
}

impl Until {
    fn describe(&self) -> String {
        if self.requests == u64::MAX {
            format!("{} s", self.time.as_secs())
        } else {
            format!("{} requests, at most {} s", self.requests, self.time.as_secs())
        }
    }
}

// ---------------------------------------------------------------------------
// The gateway process.

/// A running `modelfleet serve`; dropped, it is killed.
struct Gateway {
    child: Child,
    addr: String,
    log: PathBuf,
}

/// How long a gateway may take to say where it listens, or to stop.
const PROCESS_WAIT: Duration = Duration::from_mins(2);

impl Gateway {
    /// Starts `bin serve --config config`, its stderr to `log`, and waits
    /// for the line that says where it listens.
    fn start(bin: &Path, config: &Path, log: &Path) -> anyhow::Result<Gateway> {
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn,modelfleet_gateway=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child.stderr.take().context("the gateway's stderr is not piped")?;
        let mut file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let (tx, rx) = mpsc::channel::<String>();
        // Drains stderr to the log for the process's whole life, so the
        // gateway never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(file, "{line}");
                if let Some(rest) = line.split("modelfleet gateway on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(PROCESS_WAIT) {
            Ok(addr) => addr,
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the gateway did not start listening ({err}); its log:\n{}", tail(log));
            }
        };
        Ok(Gateway { child, addr, log: log.to_owned() })
    }

    /// Resident memory in MiB, from `/proc/PID/status`.
    fn rss_mib(&self) -> anyhow::Result<f64> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no VmRSS in {path}"))?;
        Ok(kib / 1024.0)
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    fn terminate(mut self) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().context("running kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {pid} failed ({status})");
        }
        let deadline = Instant::now() + PROCESS_WAIT;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for the gateway")? {
                if !status.success() {
                    bail!("the gateway exited with {status} after SIGTERM; its log:\n{}", tail(&self.log));
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the gateway did not stop within {PROCESS_WAIT:?} of SIGTERM; its log:\n{}", tail(&self.log));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, and reaps it.
    fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().context("sending SIGKILL to the gateway")?;
        self.child.wait().context("reaping the gateway")?;
        Ok(())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last lines of a log, for an error message.
fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

// ---------------------------------------------------------------------------
// The books, as the CLI reads them.

/// What `modelfleet db check --json` says, when it passes.
#[derive(Debug)]
struct DbCheck {
    perf_rows: Option<u64>,
}

/// `modelfleet db check --db FILE --json`: `Err` with its output unless it passes.
fn db_check(bin: &Path, db: &Path) -> anyhow::Result<Result<DbCheck, String>> {
    let output = Command::new(bin)
        .args(["db", "check", "--json", "--db"])
        .arg(db)
        .output()
        .context("running modelfleet db check")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Ok(Err(format!("{}: {text}{}", output.status, String::from_utf8_lossy(&output.stderr))));
    }
    let value: Value = serde_json::from_str(&text).context("parsing `db check --json`")?;
    let perf_rows = value.get("tables").and_then(Value::as_array).and_then(|tables| {
        tables.iter().find(|t| t.get(0).and_then(Value::as_str) == Some("perf_log")).and_then(|t| t.get(1)?.as_u64())
    });
    Ok(Ok(DbCheck { perf_rows }))
}

/// What the database holds over every model.
#[derive(Debug)]
struct Books {
    successes: u64,
    cost_nanos: i64,
}

/// `modelfleet report --db FILE --json`: the stored usage, summed.
fn books(bin: &Path, db: &Path) -> anyhow::Result<Books> {
    let output =
        Command::new(bin).args(["report", "--json", "--db"]).arg(db).output().context("running modelfleet report")?;
    if !output.status.success() {
        bail!("modelfleet report failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    let value: Value = serde_json::from_slice(&output.stdout).context("parsing `report --json`")?;
    let rows = value.get("history").and_then(Value::as_array).context("`report --json` has no history")?;
    let mut books = Books { successes: 0, cost_nanos: 0 };
    for row in rows {
        books.successes += row.get("successes").and_then(Value::as_u64).context("a history row without successes")?;
        let cost = row.get("cost").and_then(Value::as_str).context("a history row without cost")?;
        books.cost_nanos += nanos(cost).with_context(|| format!("the cost {cost:?} is not dollars"))?;
    }
    Ok(books)
}

/// Dollars as the gateway writes them (`0.000123`, `3`) in nano-dollars.
fn nanos(dollars: &str) -> Option<i64> {
    let (whole, frac) = dollars.trim().split_once('.').unwrap_or((dollars.trim(), ""));
    if whole.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: i64 = whole.parse().ok().filter(|w: &i64| *w >= 0)?;
    let frac: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().ok()? };
    whole.checked_mul(1_000_000_000)?.checked_add(frac)
}

/// Nano-dollars as dollars.
fn dollars(nanos: i64) -> String {
    format!("${}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000)
}

// ---------------------------------------------------------------------------
// The traffic.

#[derive(Clone)]
struct Target {
    client: reqwest::Client,
    addr: SocketAddr,
    url: String,
}

impl Target {
    fn new(client: &reqwest::Client, addr: &str) -> anyhow::Result<Target> {
        Ok(Target {
            client: client.clone(),
            addr: addr.parse().with_context(|| format!("the gateway said it listens on {addr:?}"))?,
            url: format!("http://{addr}/v1/chat/completions"),
        })
    }
}

/// What a client does with its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Asks for anything (every third request streamed) and reads at once.
    Normal,
    /// Streams `good-long` and reads it slowly.
    Slow,
    /// Streams `good-huge`, stops reading, and leaves.
    Stalled,
}

/// What one client saw, summed over its requests.
#[derive(Debug, Default)]
struct Tally {
    requests: u64,
    streamed: u64,
    /// Answers read to their end: completions, and streams to `[DONE]`.
    completed: u64,
    /// Of which not streamed.
    completed_calls: u64,
    /// The sum of `x-modelfleet-cost` over every 200.
    acked_nanos: i64,
    /// Client-visible errors by kind, with the first of each.
    errors: BTreeMap<String, u64>,
    examples: BTreeMap<String, String>,
    /// Streams ended after their first event by a model that cuts streams.
    cut_mid_stream: BTreeMap<String, u64>,
    slow_done: u64,
    /// Slow readers the gateway stopped waiting for.
    slow_dropped: u64,
    stalled: u64,
    /// Stalled clients the gateway stopped waiting for.
    stalled_dropped: u64,
    /// Requests the SIGKILL broke.
    killed: u64,
    latencies_us: Vec<u64>,
}

impl Tally {
    fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    fn error(&mut self, kind: String, example: String) {
        *self.errors.entry(kind.clone()).or_default() += 1;
        self.examples.entry(kind).or_insert(example);
    }

    fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        self.streamed += other.streamed;
        self.completed += other.completed;
        self.completed_calls += other.completed_calls;
        self.acked_nanos += other.acked_nanos;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        for (kind, example) in other.examples {
            self.examples.entry(kind).or_insert(example);
        }
        for (model, n) in other.cut_mid_stream {
            *self.cut_mid_stream.entry(model).or_default() += n;
        }
        self.slow_done += other.slow_done;
        self.slow_dropped += other.slow_dropped;
        self.stalled += other.stalled;
        self.stalled_dropped += other.stalled_dropped;
        self.killed += other.killed;
        self.latencies_us.extend(other.latencies_us);
    }

    fn record(&mut self, call: &Call, outcome: Outcome, killed: bool) {
        self.requests += 1;
        self.streamed += u64::from(call.stream);
        if let Some(cost) = outcome.cost {
            self.acked_nanos += cost;
        }
        match outcome.end {
            End::Completed(latency) => {
                self.completed += 1;
                self.completed_calls += u64::from(!call.stream);
                match call.role {
                    Role::Normal => self.latencies_us.push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX)),
                    Role::Slow => self.slow_done += 1,
                    Role::Stalled => {}
                }
            }
            End::Stalled { dropped } => {
                self.stalled += 1;
                self.stalled_dropped += u64::from(dropped);
            }
            // The gateway ending a slow reader's stream (cleanly, without an
            // error event) is its right.
            End::Interrupted { why, .. } if call.role == Role::Slow && why == ENDED_EARLY => {
                self.slow_dropped += 1;
            }
            _ if killed => self.killed += 1,
            End::Interrupted { model, why } => {
                if MODELS.iter().any(|m| m.id == model && m.cuts_streams()) {
                    *self.cut_mid_stream.entry(model).or_default() += 1;
                } else {
                    self.error(format!("stream ended early on {model}"), why);
                }
            }
            End::Failed { kind, detail } => self.error(kind, format!("{} {}: {detail}", call.model, call.stream)),
        }
    }
}

/// One request.
struct Call {
    role: Role,
    model: &'static str,
    stream: bool,
    body: String,
}

impl Call {
    fn new(role: Role, model: &'static str, stream: bool, n: u64) -> Call {
        let max_tokens = match role {
            Role::Normal => MAX_TOKENS,
            Role::Slow => SLOW_TOKENS,
            Role::Stalled => STALL_TOKENS,
        };
        let mut body = json!({
            "model": model,
            "stream": stream,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": format!("soak request {n}: a short question")}],
        });
        if model == "auto" {
            body["modelfleet"] = json!({"category": "general"});
        }
        Call { role, model, stream, body: body.to_string() }
    }
}

/// What became of a request.
struct Outcome {
    /// The `x-modelfleet-cost` of a 200.
    cost: Option<i64>,
    end: End,
}

enum End {
    /// Read to its end; the time it took.
    Completed(Duration),
    /// A stream that ended without `[DONE]` after events from `model`.
    Interrupted { model: String, why: String },
    /// The client stopped reading for a while, as told; `dropped` when the
    /// gateway gave up on it meanwhile (its stream ended without `[DONE]`).
    Stalled { dropped: bool },
    /// An HTTP error, a broken connection, a 200 without its cost or body.
    Failed { kind: String, detail: String },
}

fn failed(kind: &str, detail: impl std::fmt::Display) -> End {
    End::Failed { kind: kind.to_owned(), detail: detail.to_string() }
}

/// The client's own limit on a request: far above anything the gateway
/// should take, so only a stuck request reaches it.
const CLIENT_TIMEOUT: Duration = Duration::from_mins(2);

/// One load phase.
#[derive(Debug, Clone, Copy)]
struct Load {
    until: Until,
    /// Clients sending normal requests.
    clients: usize,
    traffic: Traffic,
    /// How long a stalled client holds its stream without reading.
    stall: Duration,
}

/// What the clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Traffic {
    /// Every third request of a normal client streamed, plus slow and
    /// stalled clients.
    Mixed,
    /// Normal clients only, nothing streamed: every cost a request is
    /// charged is in its answer's header, so what a crash may lose is
    /// bounded by the requests it cut.
    CallsOnly,
}

/// Runs the clients until `until` or `stop`, and sums what they saw.
async fn drive(target: Target, load: Load, stop: Arc<AtomicBool>, killed: Arc<AtomicBool>) -> Tally {
    let Load { until, clients: normal, traffic, stall } = load;
    let sent = Arc::new(AtomicU64::new(0));
    // Set by the first client to see `until` reached; `stop` is the caller's.
    let done = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + until.time;
    let mut roles = vec![Role::Normal; normal];
    if traffic == Traffic::Mixed {
        roles.extend([Role::Slow, Role::Slow, Role::Stalled, Role::Stalled]);
    }
    let mut clients = Vec::new();
    for (i, role) in roles.into_iter().enumerate() {
        let (target, sent, done, stop, killed) =
            (target.clone(), Arc::clone(&sent), Arc::clone(&done), Arc::clone(&stop), Arc::clone(&killed));
        clients.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(0x50a4 + i as u64);
            let mut tally = Tally::default();
            let mut mine = 0_u64;
            while !stop.load(Ordering::SeqCst) && !done.load(Ordering::SeqCst) {
                let n = sent.fetch_add(1, Ordering::SeqCst);
                if n >= until.requests || Instant::now() >= deadline {
                    done.store(true, Ordering::SeqCst);
                    break;
                }
                let call = match role {
                    Role::Normal => {
                        let stream = traffic == Traffic::Mixed && mine.is_multiple_of(3);
                        Call::new(role, pick(&mut rng), stream, n)
                    }
                    Role::Slow => Call::new(role, "good-long", true, n),
                    Role::Stalled => Call::new(role, "good-huge", true, n),
                };
                mine += 1;
                let outcome = one(&target, &call, stall).await;
                tally.record(&call, outcome, killed.load(Ordering::SeqCst));
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for client in clients {
        match client.await {
            Ok(tally) => total.merge(tally),
            Err(err) => total.error("a client task panicked".to_owned(), err.to_string()),
        }
    }
    total
}

/// A model (or route, or `auto`) from [`MIX`].
fn pick(rng: &mut fastrand::Rng) -> &'static str {
    let total: u32 = MIX.iter().map(|(_, w)| w).sum();
    let mut at = rng.u32(0..total);
    for (model, weight) in MIX {
        if at < *weight {
            return model;
        }
        at -= weight;
    }
    "good-a"
}

/// A client that stops reading: over a socket with a small receive buffer
/// (reqwest would read ahead), it sends `body`, reads the head, holds the
/// stream unread for `hold`, then reads what is left: the rest, when the
/// gateway waited, or the end of a stream it dropped.
async fn stalled(addr: SocketAddr, body: &str, hold: Duration) -> std::io::Result<Outcome> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut stream = socket.connect(addr).await?;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    let mut received = Vec::new();
    let mut buffer = vec![0_u8; 4096];
    let head_end = loop {
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            return Err(std::io::Error::other("the gateway closed the connection before the head"));
        }
        received.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap_or_default().to_owned();
    if status != "200" {
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer).await;
        let detail = format!("{head}\n\n{}", String::from_utf8_lossy(&received[head_end..]) + answer.as_str());
        return Ok(Outcome { cost: None, end: failed(&format!("HTTP {status} (stalled client)"), detail) });
    }
    let header = |wanted: &str| {
        head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case(wanted).then(|| value.trim().to_owned())
        })
    };
    let Some(cost) = header("x-modelfleet-cost").as_deref().and_then(nanos) else {
        return Ok(Outcome { cost: None, end: failed("a 200 without x-modelfleet-cost", "stalled client") });
    };
    tokio::time::sleep(hold).await;
    // The rest; only its tail matters: `[DONE]`, an error event, or neither
    // (the gateway dropped the stream).
    let mut tail = received.split_off(head_end);
    loop {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buffer[..n]);
        tail.drain(..tail.len().saturating_sub(1024));
    }
    let tail = String::from_utf8_lossy(&tail);
    let end = if tail.contains("[DONE]") {
        End::Stalled { dropped: false }
    } else if tail.contains("\"error\"") {
        let model = header("x-modelfleet-model").unwrap_or_default();
        End::Interrupted { model, why: format!("error event after a stall: {tail}") }
    } else {
        End::Stalled { dropped: true }
    };
    Ok(Outcome { cost: Some(cost), end })
}

/// Sends `call` and reads its answer as its role says.
async fn one(target: &Target, call: &Call, stall: Duration) -> Outcome {
    if call.role == Role::Stalled {
        return match tokio::time::timeout(CLIENT_TIMEOUT, stalled(target.addr, &call.body, stall)).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(err)) => Outcome { cost: None, end: failed("a stalled client's connection failed", err) },
            Err(_) => Outcome { cost: None, end: failed("client timeout (stalled client)", call.model) },
        };
    }
    let started = Instant::now();
    let sent = target
        .client
        .post(&target.url)
        .header("content-type", "application/json")
        .timeout(CLIENT_TIMEOUT)
        .body(call.body.clone())
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(err) => return Outcome { cost: None, end: transport("sending", &err) },
    };
    let status = response.status();
    if !status.is_success() {
        let body: Value =
            response.bytes().await.ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null);
        let code = body.pointer("/error/code").and_then(Value::as_str).unwrap_or("?");
        let message = body.pointer("/error/message").and_then(Value::as_str).unwrap_or_default();
        return Outcome { cost: None, end: failed(&format!("HTTP {} {code}", status.as_u16()), message) };
    }
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let Some(cost) = header("x-modelfleet-cost").as_deref().and_then(nanos) else {
        return Outcome { cost: None, end: failed("a 200 without x-modelfleet-cost", call.model) };
    };
    let model = header("x-modelfleet-model").unwrap_or_default();
    let end = if call.stream {
        let pause = (call.role == Role::Slow).then_some(Duration::from_millis(5));
        read_stream(response, model, pause, started).await
    } else {
        match response.bytes().await {
            Ok(body) if serde_json::from_slice::<Value>(&body).is_ok_and(|v| v.get("choices").is_some()) => {
                End::Completed(started.elapsed())
            }
            Ok(body) => failed("a 200 that is not a completion", String::from_utf8_lossy(&body)),
            Err(err) => transport("reading a completion", &err),
        }
    };
    Outcome { cost: Some(cost), end }
}

fn transport(doing: &str, err: &reqwest::Error) -> End {
    let kind = if err.is_timeout() {
        "client timeout"
    } else if err.is_connect() {
        "cannot connect"
    } else {
        "connection broke"
    };
    failed(&format!("{kind} {doing}"), err)
}

/// Why a stream whose body ended cleanly, with neither `[DONE]` nor an
/// error event, is incomplete.
const ENDED_EARLY: &str = "ended without [DONE]";

/// Reads an SSE stream to its end, pausing `pause` after each piece.
async fn read_stream(response: reqwest::Response, model: String, pause: Option<Duration>, started: Instant) -> End {
    let mut body = response.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    let (mut done, mut error) = (false, None::<String>);
    while let Some(piece) = body.next().await {
        let piece = match piece {
            Ok(piece) => piece,
            Err(err) => return End::Interrupted { model, why: format!("connection broke: {err}") },
        };
        pending.extend_from_slice(&piece);
        let mut start = 0;
        while let Some(at) = pending[start..].windows(2).position(|w| w == b"\n\n") {
            let event = String::from_utf8_lossy(&pending[start..start + at]).into_owned();
            start += at + 2;
            let Some(data) = event.strip_prefix("data:").map(str::trim) else { continue };
            if data == "[DONE]" {
                done = true;
            } else if data.contains("\"error\"") {
                let value: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                let field =
                    |name: &str| value.pointer(&format!("/error/{name}")).and_then(Value::as_str).unwrap_or("?");
                error = Some(format!("{}: {}", field("code"), field("message")));
            }
        }
        pending.drain(..start);
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
    match (done, error) {
        (true, None) => End::Completed(started.elapsed()),
        (_, Some(code)) => End::Interrupted { model, why: format!("error event {code}") },
        (false, None) => End::Interrupted { model, why: ENDED_EARLY.to_owned() },
    }
}

// ---------------------------------------------------------------------------
// The figures.

#[derive(Debug, Default)]
struct Figures {
    load: Tally,
    requests_at_half: u64,
    rss_half_mib: f64,
    rss_full_mib: f64,
    stored_successes: u64,
    stored_cost_nanos: i64,
    perf_rows: Option<u64>,
    crash: Option<Crash>,
    checks: Vec<Check>,
    seconds: f64,
}

#[derive(Debug)]
struct Crash {
    before_kill: u64,
    cut_by_kill: u64,
    acked_before_nanos: i64,
    stored_after_kill_nanos: i64,
    after_restart: u64,
    acked_total_nanos: i64,
    stored_final_nanos: i64,
}

#[derive(Debug)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

impl Figures {
    fn check(&mut self, name: &'static str, ok: bool, detail: String) {
        self.checks.push(Check { name, ok, detail });
    }

    fn rss_growth_percent(&self) -> f64 {
        (self.rss_full_mib - self.rss_half_mib) / self.rss_half_mib * 100.0
    }

    /// The latency at quantile `q` of the normal clients' completed answers, ms.
    fn latency_ms(&self, q: f64) -> f64 {
        let mut sorted = self.load.latencies_us.clone();
        sorted.sort_unstable();
        quantile(&sorted, q) as f64 / 1000.0
    }

    fn json(&self, mode: &Mode) -> Value {
        let load = &self.load;
        let crash = self.crash.as_ref().map(|c| {
            json!({
                "requests_before_kill": c.before_kill,
                "cut_by_kill": c.cut_by_kill,
                "acknowledged_before_kill": dollars(c.acked_before_nanos),
                "stored_after_kill": dollars(c.stored_after_kill_nanos),
                "requests_after_restart": c.after_restart,
                "acknowledged_total": dollars(c.acked_total_nanos),
                "stored_final": dollars(c.stored_final_nanos),
            })
        });
        json!({
            "quick": mode.quick,
            "seconds": self.seconds,
            "requests": load.requests,
            "streamed": load.streamed,
            "completed": load.completed,
            "errors": load.errors,
            "cut_mid_stream_by_faulty_models": load.cut_mid_stream,
            "slow_clients": {"done": load.slow_done, "dropped_by_gateway": load.slow_dropped},
            "stalled_clients": {"held": load.stalled, "dropped_by_gateway": load.stalled_dropped},
            "latency_ms": {"p50": self.latency_ms(0.50), "p99": self.latency_ms(0.99), "max": self.latency_ms(1.0)},
            "rss_mib": {
                "at_half": self.rss_half_mib,
                "requests_at_half": self.requests_at_half,
                "at_end": self.rss_full_mib,
                "growth_percent": self.rss_growth_percent(),
                "asserted": !mode.quick,
            },
            "store": {
                "successes": self.stored_successes,
                "perf_rows": self.perf_rows,
                "spend": dollars(self.stored_cost_nanos),
                "acknowledged": dollars(load.acked_nanos),
            },
            "crash": crash,
            "checks": self.checks.iter().map(|c| json!({"name": c.name, "ok": c.ok, "detail": c.detail})).collect::<Vec<_>>(),
            "passed": self.checks.iter().all(|c| c.ok),
        })
    }

    fn markdown(&self, mode: &Mode) -> String {
        let load = &self.load;
        let mut out = String::from("\n## Soak (gateway with injected faults, mock upstream, on this machine)\n\n");
        if mode.quick {
            out.push_str("Quick run (`--quick`, debug build): a smoke check; memory growth is shown, not checked.\n\n");
        }
        out.push_str("| measure | value |\n|---|---:|\n");
        let mut row = |name: &str, value: String| {
            let _ = writeln!(out, "| {name} | {value} |");
        };
        row("duration", format!("{:.0} s", self.seconds));
        row("requests (phase 1) / streamed", format!("{} / {}", load.requests, load.streamed));
        row("completed answers", load.completed.to_string());
        row("client-visible errors", format!("{} ({})", load.error_total(), counts(&load.errors)));
        let cut: u64 = load.cut_mid_stream.values().sum();
        row("streams cut mid-way by faulty models", format!("{cut} ({})", counts(&load.cut_mid_stream)));
        row("slow readers done / dropped by the gateway", format!("{} / {}", load.slow_done, load.slow_dropped));
        row("stalled clients / dropped by the gateway", format!("{} / {}", load.stalled, load.stalled_dropped));
        row(
            "latency p50 / p99 / max",
            format!("{:.1} / {:.1} / {:.1} ms", self.latency_ms(0.5), self.latency_ms(0.99), self.latency_ms(1.0)),
        );
        row(
            "gateway RSS at half / end",
            format!(
                "{:.1} MiB ({} requests) / {:.1} MiB ({:+.2} %)",
                self.rss_half_mib,
                self.requests_at_half,
                self.rss_full_mib,
                self.rss_growth_percent()
            ),
        );
        row(
            "stored successes / spend (acknowledged)",
            format!("{} / {} ({})", self.stored_successes, dollars(self.stored_cost_nanos), dollars(load.acked_nanos)),
        );
        if let Some(c) = &self.crash {
            row("SIGKILL: requests before / cut by it", format!("{} / {}", c.before_kill, c.cut_by_kill));
            row(
                "SIGKILL: stored after it (acknowledged)",
                format!("{} ({})", dollars(c.stored_after_kill_nanos), dollars(c.acked_before_nanos)),
            );
            row(
                "restart: requests / stored at the end (acknowledged)",
                format!("{} / {} ({})", c.after_restart, dollars(c.stored_final_nanos), dollars(c.acked_total_nanos)),
            );
        }
        out.push_str("\n| check | met |\n|---|:---:|\n");
        for check in &self.checks {
            let _ = writeln!(out, "| {} | {} |", check.name, if check.ok { "yes" } else { "**no**" });
        }
        out
    }
}

/// `kind: n, …`, or `none`.
fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.iter().map(|(kind, n)| format!("{kind}: {n}")).collect::<Vec<_>>().join(", ")
}

/// The value at quantile `q` (0..=1) of `sorted`; 0 when empty.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "q is in 0..=1: an index in range")]
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_parse_to_nanos_and_back() {
        let check = |text: &str, expect: Option<i64>| assert_eq!(nanos(text), expect, "{text:?}");
        check("0", Some(0));
        check("3", Some(3_000_000_000));
        check("0.25", Some(250_000_000));
        check("0.000012", Some(12_000));
        check("1.000000001", Some(1_000_000_001));
        check("1.0000000001", None);
        check("-1", None);
        check(".5", None);
        check("abc", None);
        assert_eq!(dollars(1_250_000_001), "$1.250000001");
    }

    #[test]
    fn quantiles_pick_from_the_sorted_values() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(quantile(&values, 0.5), 51);
        assert_eq!(quantile(&values, 0.99), 99);
        assert_eq!(quantile(&values, 1.0), 100);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn every_model_the_traffic_names_is_configured_and_faulty_ones_fall_back_to_healthy_ones() {
        let config = config(Path::new("/tmp/soak.db"), "http://127.0.0.1:1/v1");
        for (model, _) in MIX {
            let known = MODELS.iter().any(|m| m.id == *model) || *model == ROUTE || *model == "auto";
            assert!(known, "{model}");
        }
        for model in MODELS.iter().filter(|m| m.fault.is_some()) {
            let entry = format!("id = \"{}\"\nprovider = \"faulty\"", model.id);
            assert!(config.contains(&entry), "{entry}");
        }
        assert_eq!(MODELS.iter().filter(|m| m.fault.is_none()).count(), 4);
        assert!(config.contains("fallbacks = [\"good-a\", \"good-b\"]"));
    }

    #[test]
    fn a_slow_clients_drop_and_a_faulty_models_cut_are_not_errors_but_a_healthy_ones_is() {
        let interrupted = |model: &str, why: &str| Outcome {
            cost: Some(5),
            end: End::Interrupted { model: model.to_owned(), why: why.to_owned() },
        };
        let mut tally = Tally::default();
        let slow = Call::new(Role::Slow, "good-long", true, 1);
        tally.record(&slow, interrupted("good-long", ENDED_EARLY), false);
        let normal = Call::new(Role::Normal, "f-cut", true, 2);
        tally.record(&normal, interrupted("f-cut", "error event stream_interrupted"), false);
        assert_eq!((tally.slow_dropped, tally.error_total()), (1, 0));
        assert_eq!(tally.cut_mid_stream.get("f-cut"), Some(&1));
        tally.record(&normal, interrupted("good-a", "error event stream_interrupted"), false);
        tally.record(&slow, interrupted("good-long", "error event stream_interrupted"), false);
        tally.record(&slow, interrupted("good-long", "connection broke: reset"), false);
        assert_eq!(tally.error_total(), 3);
        tally.record(&normal, Outcome { cost: None, end: failed("cannot connect sending", "refused") }, true);
        assert_eq!((tally.error_total(), tally.killed, tally.acked_nanos), (3, 1, 25));
    }
}
