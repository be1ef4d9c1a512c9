//! `cargo xtask soak [--quick]`: the gateway under sustained load with
//! injected faults, checked for what its clients saw and what its books kept.
//!
//! The real `modelfleet serve` (built by cargo: the dev profile for
//! `--quick`, as the tests built it; release for the full run) runs as a
//! child process on 127.0.0.1, in front of the mock upstream, which runs in
//! this process. Everything is loopback, bounded in requests and time, and
//! stops by itself; the gateway dies with the soak even when the soak is
//! killed ([`dies_with_this_thread`]).
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
//! each client is streamed, with `stream_options.include_usage`, so a
//! completed stream's cost is known from its usage chunk. Two more clients
//! read long streams slowly, and two stop reading a very long one (over a
//! socket with a 4 KiB receive buffer) for longer than the gateway's
//! `stream_send_timeout_ms`, so the gateway drops them. A request lasts at
//! most [`CLIENT_TIMEOUT`], so a load phase ends at most that long after
//! its deadline.
//!
//! **Phases**: (1) mixed load in two halves (`--quick`: 2 × 18 s; full:
//! 2 × 50,000 requests), the gateway's RSS read after each, then SIGTERM;
//! (2) non-streamed calls on a fresh database (every cost a call is charged
//! is then in its answer's header, so what a crash may lose is bounded by
//! the calls it cut), SIGKILL mid-load, `modelfleet db check`, the books
//! reopened, the gateway restarted on the same file, mixed load, SIGTERM.
//!
//! **What a client is told it spent** ([`Spend`]): the `x-modelfleet-cost`
//! of every 200 (for a stream, what was charged before it opened), plus the
//! cost of every completed stream, priced from its usage chunk at the
//! config's prices ([`Prices`], as the gateway prices: integer nanos, each
//! term rounded). A stream that got its 200 but did not complete (cut by a
//! faulty model, dropped by the gateway) is charged what it used, never
//! acknowledged: at most its hold ([`Prices::hold`]).
//!
//! **Checks** (both modes): no client saw an error a healthy model could
//! have served: an HTTP error, a broken connection, a 200 without its cost,
//! a stream ended early on a model with no mid-stream fault. A stream cut
//! after its first event by a model that does cut streams cannot fall back:
//! it is excused only when it ended with an SSE error event of code
//! `stream_interrupted`, and each such model cuts at most about its fault
//! rate of the streams it opened. Every slow reader is served to its end;
//! every stalled client is dropped by the gateway. After SIGTERM, `db check`
//! passes, the stored successes are the answers clients completed (plus the
//! streams stalled clients left, if the gateway finished them), and
//! `acknowledged <= stored spend <= acknowledged + the holds of the streams
//! that did not complete`, over all models and with the stalled clients'
//! model apart (its holds are large). At least a quarter of the completed
//! answers are streams. After SIGKILL (the clients are stopped first, and
//! the requests in flight counted), `db check` passes, `acknowledged <=
//! stored spend <= acknowledged + in flight × the largest cost of a call`,
//! and `answered <= stored successes <= answered + in flight`; after the
//! restart the gateway answers without error and the stored spend is still
//! within those bounds plus the restart load's own. The full run also
//! reaches 100,000 requests, and the gateway's RSS grows less than 5 % from
//! the 50k to the 100k mark (printed only with `--quick`). `db check` and
//! `report` are killed past [`CLI_WAIT`].
//!
//! The figures go to stdout and to `bench-report.{json,md}` (key `soak`);
//! the configs, databases and gateway logs are written to
//! `<target>/soak/<pid>/`, kept when a check fails.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
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

/// More output tokens (as the gateway counts them: four characters each)
/// than any one event of the mock's streams carries: the largest is a
/// `good-huge` chunk, 2,400 characters, 600 tokens (see `behavior`; a test
/// keeps it so). The gateway ends a stream at the first event past its
/// output bound, so a stream is never charged more output than its
/// `max_tokens` plus this.
const EVENT_TOKENS: u32 = 1_000;

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
    let dir = run_dir("soak")?;
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
        // Well under the gateway's 60 s idle limit: a pooled connection is
        // never reused after the gateway closed it.
        .pool_idle_timeout(Duration::from_secs(20))
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

/// This run's directory, `<target>/<name>/<pid>` (`name`: the command,
/// e.g. `soak`): runs at once (two `ci`s on one tree) must not share a
/// database. The directories of runs whose process is gone are removed
/// first; a run that passes removes its own, one that fails keeps it
/// (configs, databases, gateway logs).
pub(crate) fn run_dir(name: &str) -> anyhow::Result<PathBuf> {
    let root = target_dir().join(name);
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

    /// Writes the config `name.toml` (its store `name.db`) and reads back
    /// the prices it sets.
    fn write_config(&self, name: &str) -> anyhow::Result<(PathBuf, PathBuf, Arc<Prices>)> {
        let db = self.dir.join(format!("{name}.db"));
        let path = self.dir.join(format!("{name}.toml"));
        let text = config(&db, &self.mock_url);
        let prices = Prices::from_config(&text)?;
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok((path, db, Arc::new(prices)))
    }

    fn start(&self, config: &Path, log: &str) -> anyhow::Result<Gateway> {
        Gateway::start(&self.bin, &["--config".as_ref(), config.as_os_str()], &self.dir.join(log))
    }

    /// Mixed load until `until` on a gateway at `addr`.
    fn load(&self, addr: &str, prices: &Arc<Prices>, until: Until) -> anyhow::Result<Tally> {
        let target = Target::new(&self.client, addr, prices)?;
        let load = self.mode.load(until, Traffic::Mixed);
        Ok(self.runtime.block_on(drive(target, load, Arc::new(Control::default()))))
    }

    /// Phase 1: two halves of load, RSS after each, SIGTERM, then the books.
    fn load_phase(&self, figures: &mut Figures) -> anyhow::Result<()> {
        let (config, db, prices) = self.write_config("soak")?;
        let gateway = self.start(&config, "gateway.log")?;
        let addr = gateway.addr.clone();
        self.say(&format!("phase 1, first half ({})…", self.mode.half.describe()));
        let mut tally = self.load(&addr, &prices, self.mode.half)?;
        figures.rss_half_mib = gateway.rss_mib()?;
        figures.requests_at_half = tally.requests;
        self.say(&format!("{} requests, gateway RSS {:.1} MiB; second half…", tally.requests, figures.rss_half_mib));
        tally.merge(self.load(&addr, &prices, self.mode.half)?);
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
        let (ok, detail) = cuts_within_rates(&tally);
        figures.check("streams cut by faulty models: an error event each, about their fault rate", ok, detail);
        figures.check(
            "every slow reader is served to its end",
            tally.slow_done > 0 && tally.slow_dropped == 0,
            format!("{} done, {} dropped by the gateway", tally.slow_done, tally.slow_dropped),
        );
        figures.check(
            "the gateway drops every stalled client",
            tally.stalled > 0 && tally.stalled_dropped == tally.stalled,
            format!("{} stalled, {} dropped", tally.stalled, tally.stalled_dropped),
        );
        figures.check("`db check` passes after SIGTERM", check.is_ok(), format!("{check:?}"));
        // A stalled client's stream the gateway did not drop may have been
        // finished (a success) after the client left.
        let left = tally.stalled - tally.stalled_dropped;
        let (low, high) = (tally.completed, tally.completed + left);
        figures.check(
            "every completed answer has its row, and no other (SIGTERM)",
            (low..=high).contains(&books.successes),
            format!(
                "{} successful rows stored; clients completed {low} (+ {left} streams stalled clients left)",
                books.successes
            ),
        );
        let spend = tally.spend;
        figures.check(
            "acknowledged <= stored spend <= acknowledged + holds of unfinished streams (SIGTERM)",
            spend.covers(books.cost_nanos),
            spend.describe(books.cost_nanos),
        );
        let (ok, detail) = stalled_apart(tally.spend, tally.stalled_spend, &books);
        figures.check("the same, for the stalled clients' model and for all the others apart", ok, detail);
        // A third of each normal client's requests are streamed (the first of
        // every three), and at most about a fifth of the streams that the
        // three stream-cutting models (a quarter of the mix) open end early:
        // about 31 % of the completed answers are streams, more with the slow
        // readers'. A quarter leaves room for chance.
        figures.check(
            "at least a quarter of the completed answers were streams",
            tally.completed_streams() * 4 >= tally.completed,
            format!("{} of {} completed answers were streams", tally.completed_streams(), tally.completed),
        );
        if !self.mode.quick {
            figures.check(
                "at least 100,000 requests",
                tally.requests >= 2 * self.mode.half.requests,
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
        figures.stored_stalled_model_nanos = books.cost_of(STALLED_MODEL);
        figures.perf_rows = check.ok().and_then(|c| c.perf_rows);
        figures.load = tally;
        Ok(())
    }

    /// Phase 2: load, SIGKILL mid-load, `db check`, reopen, restart, load, SIGTERM.
    fn crash_phase(&self, figures: &mut Figures) -> anyhow::Result<()> {
        let (config, db, prices) = self.write_config("crash")?;
        let gateway = self.start(&config, "gateway-crash.log")?;
        let target = Target::new(&self.client, &gateway.addr, &prices)?;
        let control = Arc::new(Control::default());
        let until = Until { requests: u64::MAX, time: self.mode.crash_load + Duration::from_mins(1) };
        let load = self.mode.load(until, Traffic::CallsOnly);
        self.say(&format!("phase 2, calls on a fresh database, SIGKILL after {} s…", self.mode.crash_load.as_secs()));
        let load = self.runtime.spawn(drive(target, load, Arc::clone(&control)));
        std::thread::sleep(self.mode.crash_load);
        // No request starts from here on: what the SIGKILL can cut is known.
        let in_flight = control.stop_for_kill();
        gateway.kill()?;
        let before = self.runtime.block_on(load).context("the load before the SIGKILL panicked")?;
        let check = db_check(&self.bin, &db)?;
        figures.check("`db check` passes after SIGKILL", check.is_ok(), format!("{check:?}"));
        let reopened = books(&self.bin, &db)?;
        // Every cost a call is charged is committed before its answer, and
        // in its header: beyond what was acknowledged, only the calls the
        // SIGKILL cut may have been charged. Each of those was charged at
        // most what a whole call is: bounded by the largest call seen (a sum
        // over the calls in flight passes it only if they cost more than the
        // dearest of the thousands answered, on average).
        let largest = before.largest_cost_nanos;
        let cut_bound = Spend {
            acked: before.spend.acked,
            open: before.spend.open.saturating_add(in_flight_i64(in_flight).saturating_mul(largest)),
        };
        figures.check(
            "acknowledged <= stored spend <= acknowledged + in flight × largest call (SIGKILL)",
            cut_bound.covers(reopened.cost_nanos),
            format!(
                "{}; {in_flight} in flight, largest call {}",
                cut_bound.describe(reopened.cost_nanos),
                dollars(largest)
            ),
        );
        // Each answered call's row was committed before its answer; a call
        // in flight at the SIGKILL may have committed one too.
        let (low, high) = (before.completed_calls, before.completed_calls + in_flight);
        figures.check(
            "answered <= stored successes <= answered + in flight (SIGKILL)",
            (low..=high).contains(&reopened.successes),
            format!("{} successful rows stored; {low} calls answered, {in_flight} in flight", reopened.successes),
        );
        figures.check(
            "no client-visible error before the SIGKILL",
            before.error_total() == 0,
            format!("{:?} (first of each: {:?})", before.errors, before.examples),
        );
        self.say(&format!(
            "{} requests before the SIGKILL ({in_flight} in flight, {} cut by it); restarting…",
            before.requests, before.killed
        ));
        let gateway = self.start(&config, "gateway-restart.log")?;
        let after = self.load(&gateway.addr, &prices, Until { requests: u64::MAX, time: self.mode.restart_load })?;
        self.say(&format!("{} requests after the restart; SIGTERM…", after.requests));
        gateway.terminate()?;
        let check = db_check(&self.bin, &db)?;
        figures.check("`db check` passes after the restart and SIGTERM", check.is_ok(), format!("{check:?}"));
        let last = books(&self.bin, &db)?;
        let total = cut_bound.plus(after.spend);
        figures.check(
            "acknowledged <= stored spend <= acknowledged + the bounds above (restart)",
            total.covers(last.cost_nanos),
            total.describe(last.cost_nanos),
        );
        // Only the restart load had stalled clients.
        let (ok, detail) = stalled_apart(total, after.stalled_spend, &last);
        figures.check("the same, with the stalled clients' model apart (restart)", ok, detail);
        figures.check(
            "the restarted gateway answers",
            after.completed > 0 && after.error_total() == 0,
            format!("{} completed, errors {:?} (first of each: {:?})", after.completed, after.errors, after.examples),
        );
        let (ok, detail) = cuts_within_rates(&after);
        figures.check("streams cut by faulty models after the restart: as before", ok, detail);
        figures.crash = Some(Crash {
            before_kill: before.requests,
            answered_before_kill: before.completed_calls,
            in_flight,
            cut_by_kill: before.killed,
            largest_call_nanos: largest,
            acked_before_nanos: before.spend.acked,
            bound_after_kill_nanos: cut_bound.bound(),
            stored_after_kill_nanos: reopened.cost_nanos,
            rows_after_kill: reopened.successes,
            after_restart: after.requests,
            acked_total_nanos: total.acked,
            bound_final_nanos: total.bound(),
            stored_final_nanos: last.cost_nanos,
        });
        Ok(())
    }
}

/// Whether the stored spend is within its bounds for the stalled clients'
/// model and for all the others apart, and the figures. Stalled clients
/// ask for [`STALLED_MODEL`] only (its context window is the only one large
/// enough), and no one else does: its spend is theirs, and the large holds
/// of their streams do not loosen the bound on everyone else's.
fn stalled_apart(all: Spend, stalled: Spend, books: &Books) -> (bool, String) {
    let huge = books.cost_of(STALLED_MODEL);
    let (others, stored) = (all.minus(stalled), books.cost_nanos - huge);
    let detail = format!("{STALLED_MODEL}: {}; the others: {}", stalled.describe(huge), others.describe(stored));
    (stalled.covers(huge) && others.covers(stored), detail)
}

/// A count of requests as a multiplier of nano-dollars.
fn in_flight_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
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
pub(crate) struct Gateway {
    child: Child,
    /// Where it listens, `127.0.0.1:PORT`.
    pub(crate) addr: String,
    log: PathBuf,
}

/// How long a gateway may take to say where it listens, or to stop.
const PROCESS_WAIT: Duration = Duration::from_mins(2);

impl Gateway {
    /// Starts `bin serve --listen 127.0.0.1:0 ARGS`, its stderr to `log`,
    /// and waits for the line that says where it listens.
    pub(crate) fn start(bin: &Path, args: &[&OsStr], log: &Path) -> anyhow::Result<Gateway> {
        let mut child = dies_with_this_thread(bin)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
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
    pub(crate) fn terminate(mut self) -> anyhow::Result<()> {
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

/// A command running `bin` that is killed if the thread that spawns it
/// (the soak's main thread) ends, however the soak ends: under
/// util-linux's `setpriv --pdeathsig KILL`, which sets the parent-death
/// signal and execs `bin` (same process). Without `setpriv`, `bin` itself:
/// std sets no parent-death signal without `unsafe`, which is forbidden
/// here; [`Gateway`]'s `Drop` still kills it unless the soak is killed.
fn dies_with_this_thread(bin: &Path) -> Command {
    let setpriv = Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !setpriv {
        return Command::new(bin);
    }
    let mut command = Command::new("setpriv");
    command.args(["--pdeathsig", "KILL", "--"]).arg(bin);
    command
}

/// The last lines of a log, for an error message.
pub(crate) fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

// ---------------------------------------------------------------------------
// The books, as the CLI reads them.

/// How long `modelfleet db check` or `report` may take before it is killed.
const CLI_WAIT: Duration = Duration::from_mins(2);

/// Runs `command` (named `what` in errors) to its end within [`CLI_WAIT`],
/// its output collected; past it, kills it and fails.
fn output_within(command: &mut Command, what: &str) -> anyhow::Result<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    // Drained on threads of their own: the child never blocks on a full
    // pipe while it is polled.
    let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let deadline = Instant::now() + CLI_WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().with_context(|| format!("waiting for {what}"))? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {} s: killed", CLI_WAIT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let collect = |thread: JoinHandle<Vec<u8>>| thread.join().unwrap_or_default();
    Ok(Output { status, stdout: collect(stdout), stderr: collect(stderr) })
}

/// Reads `pipe` to its end on a thread.
fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut out);
        }
        out
    })
}

/// What `modelfleet db check --json` says, when it passes.
#[derive(Debug)]
struct DbCheck {
    perf_rows: Option<u64>,
}

/// `modelfleet db check --db FILE --json`: `Err` with its output unless it passes.
fn db_check(bin: &Path, db: &Path) -> anyhow::Result<Result<DbCheck, String>> {
    let output =
        output_within(Command::new(bin).args(["db", "check", "--json", "--db"]).arg(db), "modelfleet db check")?;
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
    cost_by_model: BTreeMap<String, i64>,
}

impl Books {
    /// The spend stored for `model`.
    fn cost_of(&self, model: &str) -> i64 {
        self.cost_by_model.get(model).copied().unwrap_or(0)
    }
}

/// `modelfleet report --last 7d --db FILE --json` (the soak's whole run,
/// through the hourly aggregates and the raw rows): per model, summed.
fn books(bin: &Path, db: &Path) -> anyhow::Result<Books> {
    let output = output_within(
        Command::new(bin).args(["report", "--json", "--last", "7d", "--db"]).arg(db),
        "modelfleet report",
    )?;
    if !output.status.success() {
        bail!("modelfleet report failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    let value: Value = serde_json::from_slice(&output.stdout).context("parsing `report --json`")?;
    let rows = value.get("groups").and_then(Value::as_array).context("`report --json` has no groups")?;
    let mut books = Books { successes: 0, cost_nanos: 0, cost_by_model: BTreeMap::new() };
    for row in rows {
        books.successes += row.get("successes").and_then(Value::as_u64).context("a report group without successes")?;
        let model = row.get("name").and_then(Value::as_str).context("a report group without name")?;
        let cost = row.get("cost").and_then(Value::as_str).context("a report group without cost")?;
        let cost = nanos(cost).with_context(|| format!("the cost {cost:?} is not dollars"))?;
        books.cost_nanos += cost;
        *books.cost_by_model.entry(model.to_owned()).or_default() += cost;
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
// Money: the config's prices, and what clients were told they spent.

/// A model's prices, nano-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Price {
    input: i64,
    /// Prompt tokens served from the provider's cache (`input` unless the
    /// model prices them apart).
    cached: i64,
    output: i64,
}

impl Price {
    /// The exact cost of a call, as the gateway prices it (the registry's
    /// `Pricing::cost`): cached prompt tokens apart, each term rounded to
    /// the nano-dollar.
    fn cost(self, input: u64, cached: u64, output: u64) -> i64 {
        let cached = cached.min(input);
        per_million(self.input, input - cached)
            .saturating_add(per_million(self.cached, cached))
            .saturating_add(per_million(self.output, output))
    }

    /// Each price the dearer of the two.
    fn max(self, other: Price) -> Price {
        Price {
            input: self.input.max(other.input),
            cached: self.cached.max(other.cached),
            output: self.output.max(other.output),
        }
    }
}

/// `price × tokens / 1,000,000`, rounded half away from zero to the
/// nano-dollar, as the registry's `Money::per_million` does.
fn per_million(price: i64, tokens: u64) -> i64 {
    let femto = i128::from(price) * i128::from(tokens);
    let (q, r) = (femto / 1_000_000, femto % 1_000_000);
    let rounded = if r.abs() >= 500_000 { q + femto.signum() } else { q };
    i64::try_from(rounded).unwrap_or(if rounded < 0 { i64::MIN } else { i64::MAX })
}

/// The prices of the soak's models, read from its own config text.
#[derive(Debug)]
struct Prices {
    by_model: BTreeMap<String, Price>,
    /// Every price at its dearest over the models.
    dearest: Price,
}

impl Prices {
    fn from_config(text: &str) -> anyhow::Result<Prices> {
        let config: toml::Table = toml::from_str(text).context("parsing the soak's own config")?;
        let models = config.get("models").and_then(toml::Value::as_array).context("the config has no [[models]]")?;
        let mut by_model = BTreeMap::new();
        for model in models {
            let id = model.get("id").and_then(toml::Value::as_str).context("a model without an id")?;
            let price = |field: &str| -> anyhow::Result<Option<i64>> {
                model
                    .get(field)
                    .map(|v| v.as_str().and_then(nanos).with_context(|| format!("{id}: {field} is not dollars")))
                    .transpose()
            };
            let input = price("input_price_per_mtok")?.with_context(|| format!("{id} has no input price"))?;
            let output = price("output_price_per_mtok")?.with_context(|| format!("{id} has no output price"))?;
            let cached = price("cached_input_price_per_mtok")?.unwrap_or(input);
            by_model.insert(id.to_owned(), Price { input, cached, output });
        }
        let dearest = by_model.values().copied().reduce(Price::max).context("the config has no models")?;
        Ok(Prices { by_model, dearest })
    }

    /// The cost of a completed stream served by `model`, from its usage
    /// chunk, read as the gateway reads it.
    fn stream_cost(&self, model: &str, usage: &Value) -> Option<i64> {
        let price = self.by_model.get(model)?;
        let n = |pointer: &str| usage.pointer(pointer).and_then(Value::as_u64);
        let cached = n("/prompt_tokens_details/cached_tokens").unwrap_or(0);
        Some(price.cost(n("/prompt_tokens")?, cached, n("/completion_tokens")?))
    }

    /// The most a stream of a request of `body_len` bytes asking for
    /// `max_tokens` can be charged after its head: its hold, the gateway's
    /// worst case (prompt plus `max_tokens`, which a stream dropped
    /// unfinished is charged), or what it used when it ended early (the
    /// prompt plus the output relayed, which passes `max_tokens` by at most
    /// the event that made the gateway end it: [`EVENT_TOKENS`]). The
    /// gateway estimates a prompt at four bytes a token of its JSON, which
    /// is part of the body; the upstream's count is smaller still. At the
    /// dearest prices, whichever model served.
    fn hold(&self, body_len: usize, max_tokens: u32) -> i64 {
        let prompt = u64::try_from(body_len.div_ceil(4)).unwrap_or(u64::MAX);
        let dearest = Price { input: self.dearest.input.max(self.dearest.cached), ..self.dearest };
        dearest.cost(prompt, 0, u64::from(max_tokens) + u64::from(EVENT_TOKENS))
    }
}

/// What a load's clients were told they spent, and what may have been
/// charged beyond it; nano-dollars.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Spend {
    /// The `x-modelfleet-cost` of every 200, plus the cost of every stream
    /// read to `[DONE]`, from its usage chunk.
    acked: i64,
    /// An upper bound on what was charged and never acknowledged: the
    /// holds of the streams that got their 200 but did not complete (and,
    /// after a SIGKILL, what the calls it cut may have been charged).
    open: i64,
}

impl Spend {
    /// Whether `stored` is within `acked ..= acked + open`.
    fn covers(self, stored: i64) -> bool {
        (self.acked..=self.bound()).contains(&stored)
    }

    /// The most that may be stored.
    fn bound(self) -> i64 {
        self.acked.saturating_add(self.open)
    }

    fn plus(self, other: Spend) -> Spend {
        Spend { acked: self.acked + other.acked, open: self.open.saturating_add(other.open) }
    }

    fn minus(self, other: Spend) -> Spend {
        Spend { acked: self.acked - other.acked, open: self.open - other.open }
    }

    fn describe(self, stored: i64) -> String {
        format!(
            "acknowledged {} <= stored {} <= {} (+ {} unacknowledged at most)",
            dollars(self.acked),
            dollars(stored),
            dollars(self.bound()),
            dollars(self.open)
        )
    }
}

// ---------------------------------------------------------------------------
// The traffic.

#[derive(Clone)]
struct Target {
    client: reqwest::Client,
    addr: SocketAddr,
    url: String,
    prices: Arc<Prices>,
}

impl Target {
    fn new(client: &reqwest::Client, addr: &str, prices: &Arc<Prices>) -> anyhow::Result<Target> {
        Ok(Target {
            client: client.clone(),
            addr: addr.parse().with_context(|| format!("the gateway said it listens on {addr:?}"))?,
            url: format!("http://{addr}/v1/chat/completions"),
            prices: Arc::clone(prices),
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
    /// Streams [`STALLED_MODEL`], stops reading, and leaves.
    Stalled,
}

/// The model stalled clients ask for, and no one else.
const STALLED_MODEL: &str = "good-huge";

/// Whether `model`'s streams may end early after their first event.
fn cuts_streams(model: &str) -> bool {
    MODELS.iter().any(|m| m.id == model && m.cuts_streams())
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
    /// What the clients were told they spent, and the most they may have
    /// been charged beyond it.
    spend: Spend,
    /// The part of `spend` due to stalled clients.
    stalled_spend: Spend,
    /// The largest cost acknowledged for one request.
    largest_cost_nanos: i64,
    /// Streams that got their 200, by the model that served them.
    streams_by_model: BTreeMap<String, u64>,
    /// Client-visible errors by kind, with the first of each.
    errors: BTreeMap<String, u64>,
    examples: BTreeMap<String, String>,
    /// Streams ended after their first event, with a `stream_interrupted`
    /// error event, by a model that cuts streams.
    cut_mid_stream: BTreeMap<String, u64>,
    slow_done: u64,
    /// Slow readers the gateway stopped waiting for.
    slow_dropped: u64,
    stalled: u64,
    /// Stalled clients the gateway stopped waiting for.
    stalled_dropped: u64,
    /// Requests that failed once the SIGKILL was coming.
    killed: u64,
    latencies_us: Vec<u64>,
}

impl Tally {
    fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    fn completed_streams(&self) -> u64 {
        self.completed - self.completed_calls
    }

    fn error(&mut self, kind: String, example: String) {
        *self.errors.entry(kind.clone()).or_default() += 1;
        self.examples.entry(kind).or_insert(example);
    }

    fn merge(&mut self, other: Tally) {
        let add = |to: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>| {
            for (key, n) in from {
                *to.entry(key).or_default() += n;
            }
        };
        self.requests += other.requests;
        self.streamed += other.streamed;
        self.completed += other.completed;
        self.completed_calls += other.completed_calls;
        self.spend = self.spend.plus(other.spend);
        self.stalled_spend = self.stalled_spend.plus(other.stalled_spend);
        self.largest_cost_nanos = self.largest_cost_nanos.max(other.largest_cost_nanos);
        add(&mut self.streams_by_model, other.streams_by_model);
        add(&mut self.errors, other.errors);
        for (kind, example) in other.examples {
            self.examples.entry(kind).or_insert(example);
        }
        add(&mut self.cut_mid_stream, other.cut_mid_stream);
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
        let Outcome { head, end } = outcome;
        let mut spend = Spend::default();
        let model = head.map_or_else(String::new, |head| {
            spend.acked = head.cost;
            if call.stream {
                *self.streams_by_model.entry(head.model.clone()).or_default() += 1;
                if !matches!(end, End::Completed { .. }) {
                    // Charged what it used, never acknowledged.
                    spend.open = call.hold_nanos;
                }
            }
            head.model
        });
        match end {
            End::Completed { latency, stream_cost } => {
                spend.acked += stream_cost;
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
            // error event): counted apart, and a check wants none.
            End::Interrupted(Cut::EndedEarly) if call.role == Role::Slow => self.slow_dropped += 1,
            _ if killed => self.killed += 1,
            End::Interrupted(Cut::ErrorEvent { code, .. }) if code == INTERRUPTED && cuts_streams(&model) => {
                *self.cut_mid_stream.entry(model).or_default() += 1;
            }
            End::Interrupted(cut) => self.error(format!("stream ended early on {model}"), cut.to_string()),
            End::Failed { kind, detail } => self.error(kind, format!("{} {}: {detail}", call.model, call.stream)),
        }
        self.largest_cost_nanos = self.largest_cost_nanos.max(spend.acked);
        self.spend = self.spend.plus(spend);
        if call.role == Role::Stalled {
            self.stalled_spend = self.stalled_spend.plus(spend);
        }
    }
}

/// The error event's code for a stream its upstream broke mid-way.
const INTERRUPTED: &str = "stream_interrupted";

/// Each model that cuts streams has cut at most about its fault rate of
/// the streams it opened (×1.5, + 10, for chance); and whether all are.
fn cuts_within_rates(tally: &Tally) -> (bool, String) {
    let mut ok = true;
    let mut detail = Vec::new();
    for model in MODELS.iter().filter(|m| m.cuts_streams()) {
        let streams = tally.streams_by_model.get(model.id).copied().unwrap_or(0);
        let cut = tally.cut_mid_stream.get(model.id).copied().unwrap_or(0);
        let most = model.rate * float(streams) * 1.5 + 10.0;
        ok &= float(cut) <= most;
        detail.push(format!("{}: {cut} of {streams} streams (at most {most:.0})", model.id));
    }
    (ok, detail.join(", "))
}

/// A count as a float (counts here are far below 2^32).
fn float(n: u64) -> f64 {
    f64::from(u32::try_from(n).unwrap_or(u32::MAX))
}

/// One request.
struct Call {
    role: Role,
    model: &'static str,
    stream: bool,
    body: String,
    /// For a stream, the most it can be charged after its head
    /// ([`Prices::hold`]); 0 for a call, all of whose cost is in its head.
    hold_nanos: i64,
}

impl Call {
    fn new(role: Role, model: &'static str, stream: bool, n: u64, prices: &Prices) -> Call {
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
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        if model == "auto" {
            body["modelfleet"] = json!({"category": "general"});
        }
        let body = body.to_string();
        let hold_nanos = if stream { prices.hold(body.len(), max_tokens) } else { 0 };
        Call { role, model, stream, body, hold_nanos }
    }
}

/// What became of a request.
struct Outcome {
    /// What a 200's head said.
    head: Option<Head>,
    end: End,
}

/// The head of a 200.
struct Head {
    /// `x-modelfleet-cost`: for a stream, what was charged before it opened.
    cost: i64,
    /// `x-modelfleet-model`.
    model: String,
}

enum End {
    /// Read to its end in `latency`; a stream's own cost, from its usage
    /// chunk (0 for a call: its head has its whole cost).
    Completed { latency: Duration, stream_cost: i64 },
    /// A stream that ended without `[DONE]`, after its head.
    Interrupted(Cut),
    /// The client stopped reading for a while, as told; `dropped` when the
    /// gateway gave up on it meanwhile (its stream ended without `[DONE]`).
    Stalled { dropped: bool },
    /// An HTTP error, a broken connection, a 200 without its cost or body.
    Failed { kind: String, detail: String },
}

/// How a stream ended without `[DONE]`.
#[derive(Debug, PartialEq, Eq)]
enum Cut {
    /// With an SSE error event.
    ErrorEvent { code: String, message: String },
    /// Its body ended cleanly, with neither `[DONE]` nor an error event.
    EndedEarly,
    /// Its connection broke.
    Broke(String),
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cut::ErrorEvent { code, message } => write!(f, "error event {code}: {message}"),
            Cut::EndedEarly => f.write_str("ended without [DONE]"),
            Cut::Broke(why) => write!(f, "connection broke: {why}"),
        }
    }
}

/// The error event in an SSE event's `data`, if it is one.
fn error_event(data: &str) -> Option<Cut> {
    if !data.contains("\"error\"") {
        return None;
    }
    let value: Value = serde_json::from_str(data).unwrap_or(Value::Null);
    let field = |name: &str| value.pointer(&format!("/error/{name}")).and_then(Value::as_str).unwrap_or("?").to_owned();
    Some(Cut::ErrorEvent { code: field("code"), message: field("message") })
}

fn failed(kind: &str, detail: impl std::fmt::Display) -> End {
    End::Failed { kind: kind.to_owned(), detail: detail.to_string() }
}

/// The client's own limit on a request: far above anything the gateway
/// should take (a second or two at most, on a loaded machine), so only a
/// stuck request reaches it; and a load phase ends at most this long after
/// its deadline.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

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

/// What a load's clients and the phase driving them share.
#[derive(Debug, Default)]
struct Control {
    /// Set by the phase: no request starts after it.
    stop: AtomicBool,
    /// Set with `stop`, before a SIGKILL: a request failing from then on
    /// was cut by it.
    killed: AtomicBool,
    /// Requests a client is about to send (counted before it reads `stop`
    /// a last time).
    begun: AtomicU64,
    /// Requests whose outcome is recorded, or that were not sent after all.
    ended: AtomicU64,
}

impl Control {
    /// Stops the clients before a SIGKILL, and returns how many requests
    /// may be in flight: an upper bound, since a client counts a request
    /// in `begun` before it reads `stop` a last time, and the count is
    /// taken after `stop` is set.
    fn stop_for_kill(&self) -> u64 {
        self.killed.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        let ended = self.ended.load(Ordering::SeqCst);
        self.begun.load(Ordering::SeqCst).saturating_sub(ended)
    }
}

/// Runs the clients until `until` or `control.stop`, and sums what they saw.
async fn drive(target: Target, load: Load, control: Arc<Control>) -> Tally {
    let Load { until, clients: normal, traffic, stall } = load;
    let sent = Arc::new(AtomicU64::new(0));
    // Set by the first client to see `until` reached.
    let done = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + until.time;
    let mut roles = vec![Role::Normal; normal];
    if traffic == Traffic::Mixed {
        roles.extend([Role::Slow, Role::Slow, Role::Stalled, Role::Stalled]);
    }
    let mut clients = Vec::new();
    for (i, role) in roles.into_iter().enumerate() {
        let (target, sent, done, control) =
            (target.clone(), Arc::clone(&sent), Arc::clone(&done), Arc::clone(&control));
        clients.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(0x50a4 + i as u64);
            let mut tally = Tally::default();
            let mut mine = 0_u64;
            while !control.stop.load(Ordering::SeqCst) && !done.load(Ordering::SeqCst) {
                let n = sent.fetch_add(1, Ordering::SeqCst);
                if n >= until.requests || Instant::now() >= deadline {
                    done.store(true, Ordering::SeqCst);
                    break;
                }
                let call = match role {
                    Role::Normal => {
                        let stream = traffic == Traffic::Mixed && mine.is_multiple_of(3);
                        Call::new(role, pick(&mut rng), stream, n, &target.prices)
                    }
                    Role::Slow => Call::new(role, "good-long", true, n, &target.prices),
                    Role::Stalled => Call::new(role, STALLED_MODEL, true, n, &target.prices),
                };
                mine += 1;
                control.begun.fetch_add(1, Ordering::SeqCst);
                if control.stop.load(Ordering::SeqCst) {
                    control.ended.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                let outcome = one(&target, &call, stall).await;
                tally.record(&call, outcome, control.killed.load(Ordering::SeqCst));
                control.ended.fetch_add(1, Ordering::SeqCst);
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
        return Ok(Outcome { head: None, end: failed(&format!("HTTP {status} (stalled client)"), detail) });
    }
    let header = |wanted: &str| {
        head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case(wanted).then(|| value.trim().to_owned())
        })
    };
    let Some(cost) = header("x-modelfleet-cost").as_deref().and_then(nanos) else {
        return Ok(Outcome { head: None, end: failed("a 200 without x-modelfleet-cost", "stalled client") });
    };
    let head = Head { cost, model: header("x-modelfleet-model").unwrap_or_default() };
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
    } else if let Some(cut) = tail.split("\n\n").filter_map(|e| e.trim().strip_prefix("data:")).find_map(error_event) {
        End::Interrupted(cut)
    } else {
        End::Stalled { dropped: true }
    };
    Ok(Outcome { head: Some(head), end })
}

/// Sends `call` and reads its answer as its role says.
async fn one(target: &Target, call: &Call, stall: Duration) -> Outcome {
    if call.role == Role::Stalled {
        return match tokio::time::timeout(CLIENT_TIMEOUT, stalled(target.addr, &call.body, stall)).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(err)) => Outcome { head: None, end: failed("a stalled client's connection failed", err) },
            Err(_) => Outcome { head: None, end: failed("client timeout (stalled client)", call.model) },
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
        Err(err) => return Outcome { head: None, end: transport("sending", &err) },
    };
    let status = response.status();
    if !status.is_success() {
        let body: Value =
            response.bytes().await.ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null);
        let code = body.pointer("/error/code").and_then(Value::as_str).unwrap_or("?");
        let message = body.pointer("/error/message").and_then(Value::as_str).unwrap_or_default();
        return Outcome { head: None, end: failed(&format!("HTTP {} {code}", status.as_u16()), message) };
    }
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let Some(cost) = header("x-modelfleet-cost").as_deref().and_then(nanos) else {
        return Outcome { head: None, end: failed("a 200 without x-modelfleet-cost", call.model) };
    };
    let head = Head { cost, model: header("x-modelfleet-model").unwrap_or_default() };
    let end = if call.stream {
        let pause = (call.role == Role::Slow).then_some(Duration::from_millis(5));
        read_stream(response, &head.model, &target.prices, pause, started).await
    } else {
        match response.bytes().await {
            Ok(body) if serde_json::from_slice::<Value>(&body).is_ok_and(|v| v.get("choices").is_some()) => {
                End::Completed { latency: started.elapsed(), stream_cost: 0 }
            }
            Ok(body) => failed("a 200 that is not a completion", String::from_utf8_lossy(&body)),
            Err(err) => transport("reading a completion", &err),
        }
    };
    Outcome { head: Some(head), end }
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

/// Reads an SSE stream `model` serves to its end, pausing `pause` after
/// each piece; a completed stream is priced from its usage chunk.
async fn read_stream(
    response: reqwest::Response,
    model: &str,
    prices: &Prices,
    pause: Option<Duration>,
    started: Instant,
) -> End {
    let mut body = response.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    let (mut done, mut error, mut usage) = (false, None::<Cut>, None::<Value>);
    while let Some(piece) = body.next().await {
        let piece = match piece {
            Ok(piece) => piece,
            Err(err) => return End::Interrupted(Cut::Broke(err.to_string())),
        };
        pending.extend_from_slice(&piece);
        let mut start = 0;
        while let Some(at) = pending[start..].windows(2).position(|w| w == b"\n\n") {
            let event = String::from_utf8_lossy(&pending[start..start + at]).into_owned();
            start += at + 2;
            let Some(data) = event.strip_prefix("data:").map(str::trim) else { continue };
            if data == "[DONE]" {
                done = true;
            } else if let Some(cut) = error_event(data) {
                error = Some(cut);
            } else if data.contains("\"usage\"") {
                let value: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                usage = value.get("usage").filter(|u| u.is_object()).cloned().or(usage);
            }
        }
        pending.drain(..start);
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
    match (done, error) {
        (true, None) => match usage.as_ref().and_then(|u| prices.stream_cost(model, u)) {
            Some(stream_cost) => End::Completed { latency: started.elapsed(), stream_cost },
            None => failed("a completed stream without a usage chunk to price", format!("{model}: {usage:?}")),
        },
        (_, Some(cut)) => End::Interrupted(cut),
        (false, None) => End::Interrupted(Cut::EndedEarly),
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
    /// Of which on [`STALLED_MODEL`].
    stored_stalled_model_nanos: i64,
    perf_rows: Option<u64>,
    crash: Option<Crash>,
    checks: Vec<Check>,
    seconds: f64,
}

#[derive(Debug)]
struct Crash {
    before_kill: u64,
    answered_before_kill: u64,
    /// Requests in flight when the SIGKILL came (at most).
    in_flight: u64,
    /// Requests that failed once the SIGKILL was coming.
    cut_by_kill: u64,
    largest_call_nanos: i64,
    acked_before_nanos: i64,
    bound_after_kill_nanos: i64,
    stored_after_kill_nanos: i64,
    rows_after_kill: u64,
    after_restart: u64,
    acked_total_nanos: i64,
    bound_final_nanos: i64,
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
                "answered_before_kill": c.answered_before_kill,
                "in_flight_at_kill": c.in_flight,
                "cut_by_kill": c.cut_by_kill,
                "largest_call": dollars(c.largest_call_nanos),
                "acknowledged_before_kill": dollars(c.acked_before_nanos),
                "stored_after_kill": dollars(c.stored_after_kill_nanos),
                "bound_after_kill": dollars(c.bound_after_kill_nanos),
                "successes_after_kill": c.rows_after_kill,
                "requests_after_restart": c.after_restart,
                "acknowledged_total": dollars(c.acked_total_nanos),
                "stored_final": dollars(c.stored_final_nanos),
                "bound_final": dollars(c.bound_final_nanos),
            })
        });
        json!({
            "quick": mode.quick,
            "seconds": self.seconds,
            "requests": load.requests,
            "streamed": load.streamed,
            "completed": load.completed,
            "completed_streams": load.completed_streams(),
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
                "acknowledged": dollars(load.spend.acked),
                "bound": dollars(load.spend.bound()),
                "stalled_clients_acknowledged": dollars(load.stalled_spend.acked),
                "stalled_clients_bound": dollars(load.stalled_spend.bound()),
                "stalled_clients_model_spend": dollars(self.stored_stalled_model_nanos),
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
        row("completed answers / of which streams", format!("{} / {}", load.completed, load.completed_streams()));
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
        row("stored successes", self.stored_successes.to_string());
        row(
            "spend: acknowledged <= stored <= bound",
            format!(
                "{} <= {} <= {}",
                dollars(load.spend.acked),
                dollars(self.stored_cost_nanos),
                dollars(load.spend.bound())
            ),
        );
        let others = load.spend.minus(load.stalled_spend);
        row(
            "of which not the stalled clients': acknowledged <= stored <= bound",
            format!(
                "{} <= {} <= {}",
                dollars(others.acked),
                dollars(self.stored_cost_nanos - self.stored_stalled_model_nanos),
                dollars(others.bound())
            ),
        );
        if let Some(c) = &self.crash {
            row(
                "SIGKILL: requests before / answered / in flight / cut by it",
                format!("{} / {} / {} / {}", c.before_kill, c.answered_before_kill, c.in_flight, c.cut_by_kill),
            );
            row(
                "SIGKILL: stored successes / largest call",
                format!("{} / {}", c.rows_after_kill, dollars(c.largest_call_nanos)),
            );
            row(
                "SIGKILL: acknowledged <= stored <= bound",
                format!(
                    "{} <= {} <= {}",
                    dollars(c.acked_before_nanos),
                    dollars(c.stored_after_kill_nanos),
                    dollars(c.bound_after_kill_nanos)
                ),
            );
            row(
                "restart: requests; acknowledged <= stored <= bound",
                format!(
                    "{}; {} <= {} <= {}",
                    c.after_restart,
                    dollars(c.acked_total_nanos),
                    dollars(c.stored_final_nanos),
                    dollars(c.bound_final_nanos)
                ),
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

    /// The soak's prices, from its own config.
    fn prices() -> Prices {
        let text = config(Path::new("/tmp/soak.db"), "http://127.0.0.1:1/v1");
        Prices::from_config(&text).unwrap_or_else(|err| panic!("{err:#}"))
    }

    #[test]
    fn streams_are_priced_as_the_gateway_prices_from_the_configs_prices() {
        let prices = prices();
        assert_eq!(prices.by_model.len(), MODELS.len());
        // $0.50 and $1.50 per million tokens: 500 and 1,500 nanos a token.
        let price = Price { input: 500_000_000, cached: 500_000_000, output: 1_500_000_000 };
        assert_eq!(prices.by_model.get("good-a"), Some(&price));
        assert_eq!(prices.dearest, price);
        let usage =
            json!({"prompt_tokens": 10, "completion_tokens": 12, "prompt_tokens_details": {"cached_tokens": 4}});
        assert_eq!(prices.stream_cost("f-cut", &usage), Some(10 * 500 + 12 * 1_500));
        assert_eq!(prices.stream_cost("f-cut", &json!({"prompt_tokens": 1})), None, "no completion tokens");
        assert_eq!(prices.stream_cost("unknown", &usage), None);
        // Cached tokens priced apart; each term rounded half away from zero.
        let odd = Price { input: 1_000_000, cached: 250_000, output: 3 };
        assert_eq!(odd.cost(1_000, 600, 0), 400 + 150);
        assert_eq!(odd.cost(0, 0, 500_000), 2, "1.5 rounds up");
        assert_eq!(odd.cost(10, 20, 0), 3, "cached tokens are at most the prompt: 2.5 rounds up");
        assert_eq!(per_million(250, 2_000), 1, "0.5 rounds up");
    }

    #[test]
    fn a_streams_hold_covers_its_prompt_its_cap_and_one_more_event_of_the_mock() {
        let prices = prices();
        let call = Call::new(Role::Normal, "f-drip", true, 7, &prices);
        assert!(call.body.contains(r#""stream_options":{"include_usage":true}"#), "{}", call.body);
        let prompt = u64::try_from(call.body.len().div_ceil(4)).unwrap_or(u64::MAX);
        assert_eq!(call.hold_nanos, prices.dearest.cost(prompt, 0, u64::from(MAX_TOKENS + EVENT_TOKENS)));
        assert_eq!(Call::new(Role::Normal, "good-a", false, 7, &prices).hold_nanos, 0, "a call's cost is in its head");
        // The largest event of any model's stream: its answer (six
        // characters a word, plus the preamble) over its chunks, four
        // characters a token; a drip's event is one word.
        for model in MODELS {
            let behavior = behavior(model);
            let chars = u64::from(behavior.completion_tokens) * 6 + 64;
            let event = chars.div_ceil(u64::from(behavior.chunks.max(1))).div_ceil(4);
            assert!(event < u64::from(EVENT_TOKENS), "{}: {event} tokens an event", model.id);
        }
    }

    #[test]
    fn spend_is_covered_between_what_was_acknowledged_and_its_bound() {
        let spend = Spend { acked: 100, open: 20 };
        assert!(spend.covers(100) && spend.covers(120));
        assert!(!spend.covers(99), "a lost cost");
        assert!(!spend.covers(121), "a cost charged twice");
        assert_eq!(spend.plus(Spend { acked: 1, open: 2 }).minus(Spend { acked: 1, open: 2 }).bound(), 120);
    }

    #[test]
    fn stopping_for_a_kill_counts_the_requests_in_flight() {
        let control = Control::default();
        control.begun.fetch_add(5, Ordering::SeqCst);
        control.ended.fetch_add(3, Ordering::SeqCst);
        assert_eq!(control.stop_for_kill(), 2);
        assert!(control.stop.load(Ordering::SeqCst) && control.killed.load(Ordering::SeqCst));
    }

    #[test]
    fn only_an_interrupted_event_on_a_model_that_cuts_streams_is_excused() {
        let prices = prices();
        let head = |model: &str| Some(Head { cost: 5, model: model.to_owned() });
        let interrupted = |model: &str| Outcome {
            head: head(model),
            end: End::Interrupted(Cut::ErrorEvent { code: INTERRUPTED.to_owned(), message: "cut".to_owned() }),
        };
        let mut tally = Tally::default();
        let slow = Call::new(Role::Slow, "good-long", true, 1, &prices);
        tally.record(&slow, Outcome { head: head("good-long"), end: End::Interrupted(Cut::EndedEarly) }, false);
        let normal = Call::new(Role::Normal, "f-cut", true, 2, &prices);
        tally.record(&normal, interrupted("f-cut"), false);
        assert_eq!((tally.slow_dropped, tally.error_total()), (1, 0));
        assert_eq!(tally.cut_mid_stream.get("f-cut"), Some(&1));
        assert_eq!(tally.spend, Spend { acked: 10, open: slow.hold_nanos + normal.hold_nanos });
        tally.record(&normal, interrupted("good-a"), false);
        tally.record(&normal, Outcome { head: head("f-cut"), end: End::Interrupted(Cut::EndedEarly) }, false);
        tally.record(
            &normal,
            Outcome { head: head("f-drip"), end: End::Interrupted(Cut::Broke("reset".into())) },
            false,
        );
        let other = Cut::ErrorEvent { code: "shutting_down".to_owned(), message: "bye".to_owned() };
        tally.record(&normal, Outcome { head: head("f-midstream"), end: End::Interrupted(other) }, false);
        tally.record(&slow, interrupted("good-long"), false);
        assert_eq!(tally.error_total(), 5);
        assert_eq!(tally.streams_by_model.get("f-cut"), Some(&2));
        let done = Outcome { head: head("f-cut"), end: End::Completed { latency: Duration::ZERO, stream_cost: 7 } };
        tally.record(&normal, done, false);
        assert_eq!((tally.completed_streams(), tally.largest_cost_nanos), (1, 12));
        let call = Call::new(Role::Normal, "good-a", false, 3, &prices);
        tally.record(&call, Outcome { head: None, end: failed("cannot connect sending", "refused") }, true);
        assert_eq!((tally.error_total(), tally.killed), (5, 1));
    }

    #[test]
    fn each_models_cuts_are_bounded_by_its_fault_rate() {
        let mut tally = Tally::default();
        tally.streams_by_model.insert("f-cut".to_owned(), 100);
        tally.cut_mid_stream.insert("f-cut".to_owned(), 40);
        assert!(cuts_within_rates(&tally).0, "0.2 × 100 × 1.5 + 10 = 40");
        tally.cut_mid_stream.insert("f-drip".to_owned(), 11);
        assert!(!cuts_within_rates(&tally).0, "f-drip opened no stream: 10 at most");
    }
}
