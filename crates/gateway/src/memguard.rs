//! Memory guard: the gateway watches its memory and, near the limit, sheds
//! what it can before the kernel's OOM killer takes the whole process.
//!
//! **The limit and the usage** (one [`Reading`] every [`SAMPLE_EVERY`]):
//! `[server] memory_limit_bytes` against this process's resident memory;
//! else the cgroup's limit (v2 `memory.max`, v1 `memory.limit_in_bytes`;
//! `max` or v1's huge number mean none) against the cgroup's usage less its
//! inactive file cache (the kernel reclaims that before it kills, and a
//! SQLite file fills it); else physical memory against what is not
//! available. A file that does not parse falls back to the next source and
//! is logged once at debug. No reading at all means no pressure: a guard
//! that cannot see never refuses.
//!
//! **Pressure** starts when usage reaches `memory_high_percent` of the
//! limit and ends when it falls below five points less (hysteresis: it does
//! not flap around the mark). On entering, the guard logs a warning once,
//! drops the response cache's in-memory state and counts it. While it
//! lasts, new work (completions, explanations) is answered 503
//! `memory_pressure` with `Retry-After: 5`; health, metrics, `GET
//! /v1/models` and the admin API are still served, and `/health/ready` says
//! `degraded` (200, as for any degraded service).
//!
//! Reading `/sys` and `/proc` is file I/O: every sample runs on the
//! blocking pool, never on a tokio worker. The source is a [`Reader`], so
//! tests drive the guard with made-up readings and no clock.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    extract::{Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use modelfleet::metrics::{MemorySource, ProcessMemory};
use serde_json::{Value, json};
use tokio_util::task::AbortOnDropHandle;

use crate::{app::AppState, wire::ApiError};

/// How often memory is read.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// Pressure ends this many points below `memory_high_percent`.
const HYSTERESIS_POINTS: u8 = 5;

/// What a refused client is told to wait, seconds.
const RETRY_AFTER: &str = "5";

/// Where the cgroup file system is mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Cgroup v1 says "no limit" with a huge page-rounded number
/// (`0x7FFF_FFFF_FFFF_F000` on x86-64): from 1 EiB up, a limit is none.
const UNLIMITED_FROM: u64 = 1 << 60;

/// Where a limit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitSource {
    /// `[server] memory_limit_bytes`; usage is this process's RSS.
    Configured,
    /// The cgroup's limit; usage is the cgroup's, less inactive file cache.
    Cgroup,
    /// Physical memory; usage is what is not available.
    Physical,
}

impl LimitSource {
    fn as_str(self) -> &'static str {
        match self {
            LimitSource::Configured => "configured",
            LimitSource::Cgroup => "cgroup",
            LimitSource::Physical => "physical",
        }
    }

    /// The limit, as a refused client is told where it comes from.
    fn describe(self) -> &'static str {
        match self {
            LimitSource::Configured => "server.memory_limit_bytes",
            LimitSource::Cgroup => "its cgroup's",
            LimitSource::Physical => "the machine's physical memory",
        }
    }
}

/// One sample: bytes used against bytes allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reading {
    pub(crate) usage: u64,
    pub(crate) limit: u64,
    pub(crate) source: LimitSource,
}

/// Where readings come from; `None` when there is none to be had.
pub(crate) trait Reader: Send + 'static {
    fn read(&mut self) -> Option<Reading>;
}

impl<F: FnMut() -> Option<Reading> + Send + 'static> Reader for F {
    fn read(&mut self) -> Option<Reading> {
        self()
    }
}

/// What a sample changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    Entered,
    Left,
    Steady,
}

/// The guard's state, shared by the sampler, the middleware, readiness and
/// metrics. Only the sampler writes it (one sample at a time).
#[derive(Debug)]
pub(crate) struct MemoryGuard {
    /// Invariant: within 1..=100.
    high_percent: u8,
    configured_limit: Option<u64>,
    pressured: AtomicBool,
    last: Mutex<Option<Reading>>,
    /// Times pressure dropped the response cache's memory.
    cache_drops: AtomicU64,
    /// Requests refused under pressure.
    refused: AtomicU64,
}

/// `percent` of `limit`, rounded down.
fn share(limit: u64, percent: u8) -> u64 {
    u64::try_from(u128::from(limit) * u128::from(percent) / 100).unwrap_or(u64::MAX)
}

impl MemoryGuard {
    /// A guard for `[server] memory_high_percent` and `memory_limit_bytes`.
    pub(crate) fn new(high_percent: u8, configured_limit: Option<u64>) -> MemoryGuard {
        MemoryGuard {
            high_percent: high_percent.clamp(1, 100),
            configured_limit,
            pressured: AtomicBool::new(false),
            last: Mutex::new(None),
            cache_drops: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Where pressure ends: five points below the mark (half of it, for a
    /// mark under ten), so that it can always end.
    fn low_percent(&self) -> u8 {
        self.high_percent - (self.high_percent / 2).min(HYSTERESIS_POINTS)
    }

    pub(crate) fn pressured(&self) -> bool {
        self.pressured.load(Ordering::Relaxed)
    }

    fn last(&self) -> Option<Reading> {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a sample into account.
    fn observe(&self, reading: Option<Reading>) -> Transition {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = reading;
        let was = self.pressured();
        let mark = if was { self.low_percent() } else { self.high_percent };
        let now = reading.is_some_and(|r| r.usage >= share(r.limit, mark));
        self.pressured.store(now, Ordering::Relaxed);
        match (was, now) {
            (false, true) => Transition::Entered,
            (true, false) => Transition::Left,
            _ => Transition::Steady,
        }
    }

    /// What `/health/ready` shows.
    pub(crate) fn to_json(&self) -> Value {
        let last = self.last();
        json!({
            "pressure": self.pressured(),
            "usage_bytes": last.map(|r| r.usage),
            "limit_bytes": last.map(|r| r.limit),
            "limit_source": last.map(|r| r.source.as_str()),
            "high_percent": self.high_percent,
            "recover_below_percent": self.low_percent(),
        })
    }

    /// The series `/metrics` exports (usage and limit once read).
    pub(crate) fn gauges(&self) -> Vec<(&'static str, &'static str, f64)> {
        let mut gauges = vec![
            (
                "modelfleet_gateway_memory_pressure",
                "1 while memory is above server.memory_high_percent of the limit (new work refused), else 0.",
                if self.pressured() { 1.0 } else { 0.0 },
            ),
            (
                "modelfleet_gateway_memory_cache_drops_total",
                "Times memory pressure dropped the response cache's in-memory state.",
                self.cache_drops.load(Ordering::Relaxed) as f64,
            ),
            (
                "modelfleet_gateway_memory_refused_total",
                "Requests refused with 503 memory_pressure.",
                self.refused.load(Ordering::Relaxed) as f64,
            ),
        ];
        if let Some(reading) = self.last() {
            gauges.push((
                "modelfleet_gateway_memory_usage_bytes",
                "Memory in use, bytes, as the memory guard counts it against its limit.",
                reading.usage as f64,
            ));
            gauges.push((
                "modelfleet_gateway_memory_limit_bytes",
                "The memory limit, bytes: server.memory_limit_bytes, else the cgroup's, else physical memory.",
                reading.limit as f64,
            ));
        }
        gauges
    }
}

/// One sample: read, take it into account, and on entering pressure warn
/// and call `on_enter` (which drops the cache's memory). Blocking: the
/// sampler runs it on the blocking pool.
pub(crate) fn tick(guard: &MemoryGuard, reader: &mut dyn Reader, on_enter: &dyn Fn()) -> Transition {
    let reading = reader.read();
    let transition = guard.observe(reading);
    let (usage, limit, source) = reading.map_or((0, 0, "none"), |r| (r.usage, r.limit, r.source.as_str()));
    match transition {
        Transition::Entered => {
            tracing::warn!(
                usage,
                limit,
                source,
                high_percent = guard.high_percent,
                "memory pressure: dropping the response cache's memory and refusing new work (503) until usage is \
                 below {}% of the limit",
                guard.low_percent()
            );
            on_enter();
            guard.cache_drops.fetch_add(1, Ordering::Relaxed);
        }
        Transition::Left => tracing::info!(usage, limit, source, "memory pressure is over: serving new work again"),
        Transition::Steady => {}
    }
    transition
}

/// Starts watching the gateway's memory; watching stops when the handle is
/// dropped.
pub(crate) fn watch(app: &Arc<AppState>) -> AbortOnDropHandle<()> {
    let reader = SystemReader::new(app.memory.configured_limit, PathBuf::from(CGROUP_ROOT));
    let fleet = Arc::clone(&app.fleet);
    sample(Arc::clone(&app.memory), reader, move || {
        if let Err(err) = fleet.store().shrink_memory() {
            let err = err.to_string();
            let err = modelfleet::errors::sanitize(&err);
            tracing::warn!(%err, "memory pressure: the store could not release its memory");
        }
    })
}

/// Samples `reader` every [`SAMPLE_EVERY`] on the blocking pool.
fn sample(
    guard: Arc<MemoryGuard>,
    mut reader: impl Reader,
    on_enter: impl Fn() + Send + Sync + 'static,
) -> AbortOnDropHandle<()> {
    let on_enter = Arc::new(on_enter);
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let (shared, on_enter) = (Arc::clone(&guard), Arc::clone(&on_enter));
            let sampled = tokio::task::spawn_blocking(move || {
                tick(&shared, &mut reader, &*on_enter);
                reader
            })
            .await;
            match sampled {
                Ok(back) => reader = back,
                Err(err) => {
                    // A guard that cannot see must not refuse forever.
                    guard.observe(None);
                    tracing::error!(%err, "the memory guard failed; memory is no longer watched");
                    return;
                }
            }
        }
    }))
}

/// Paths served under pressure: what says how the gateway is, and what an
/// operator needs to act.
fn essential(method: &Method, path: &str) -> bool {
    path.starts_with("/health/")
        || path == "/metrics"
        || path == "/v1/metrics"
        || path == "/v1/admin"
        || path.starts_with("/v1/admin/")
        || (path == "/v1/models" && (method == Method::GET || method == Method::HEAD))
}

/// The answer to a request the guard refuses, if it does.
fn refusal(guard: &MemoryGuard, method: &Method, path: &str) -> Option<Response> {
    if !guard.pressured() || essential(method, path) {
        return None;
    }
    guard.refused.fetch_add(1, Ordering::Relaxed);
    let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
    let message = match guard.last() {
        Some(r) => format!(
            "memory pressure: the gateway uses {:.1} MiB of its {:.1} MiB limit ({}), at or above \
             server.memory_high_percent = {}%; new requests are refused until it is below {}%: retry shortly",
            mib(r.usage),
            mib(r.limit),
            r.source.describe(),
            guard.high_percent,
            guard.low_percent()
        ),
        None => "memory pressure: new requests are refused until memory is below the mark: retry shortly".to_owned(),
    };
    let mut response =
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "memory_pressure", "memory_pressure", message).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
    Some(response)
}

/// The middleware.
pub(crate) async fn check(State(guard): State<Arc<MemoryGuard>>, request: Request, next: Next) -> Response {
    match refusal(&guard, request.method(), request.uri().path()) {
        Some(refused) => refused,
        None => next.run(request).await,
    }
}

/// A cgroup limit file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    Bytes(u64),
    Unlimited,
}

/// `memory.max` / `memory.limit_in_bytes`: a number, `max`, or garbage.
fn parse_limit(text: &str) -> Option<Limit> {
    let text = text.trim();
    if text == "max" {
        return Some(Limit::Unlimited);
    }
    match text.parse::<u64>().ok()? {
        0 => None,
        bytes if bytes >= UNLIMITED_FROM => Some(Limit::Unlimited),
        bytes => Some(Limit::Bytes(bytes)),
    }
}

fn parse_bytes(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `key`'s value in a `memory.stat` (`name value` lines).
fn stat(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| parse_bytes(value)).flatten()
    })
}

/// One cgroup version's files.
struct CgroupFiles {
    dir: &'static str,
    limit: &'static str,
    usage: &'static str,
    inactive_file: &'static str,
}

const CGROUP_V2: CgroupFiles =
    CgroupFiles { dir: "", limit: "memory.max", usage: "memory.current", inactive_file: "inactive_file" };
const CGROUP_V1: CgroupFiles = CgroupFiles {
    dir: "memory",
    limit: "memory.limit_in_bytes",
    usage: "memory.usage_in_bytes",
    inactive_file: "total_inactive_file",
};

/// The directories (relative to the cgroup mount) of this process's
/// cgroup and of each ancestor, deepest first, for each version, from
/// `/proc/self/cgroup`'s text: `0::/a/b` (v2) and `N:…memory…:/a/b` (v1).
/// Inside a cgroup namespace the path is `/`: the mount root itself.
fn own_cgroups(proc_self_cgroup: &str) -> Vec<(&'static CgroupFiles, PathBuf)> {
    let mut dirs = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let files = if id == "0" && controllers.is_empty() {
            &CGROUP_V2
        } else if controllers.split(',').any(|c| c == "memory") {
            &CGROUP_V1
        } else {
            continue;
        };
        // Only plain relative components: a path that climbs out is ignored.
        let relative: PathBuf = path.trim_start_matches('/').split('/').filter(|c| !c.is_empty()).collect();
        if relative.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            continue;
        }
        let mut dir = Some(relative.as_path());
        while let Some(d) = dir {
            dirs.push((files, Path::new(files.dir).join(d)));
            dir = d.parent();
        }
    }
    dirs
}

/// The cgroup's reading under `root`: of this process's own cgroup
/// (`self_cgroup` is `/proc/self/cgroup`'s text), its ancestors (a service
/// in a limited slice) and the mount root, the one nearest its limit (the
/// kernel enforces each of them). `Ok(None)` when none sets a limit, `Err`
/// when a file does not say what it should.
fn cgroup(root: &Path, self_cgroup: &str) -> Result<Option<Reading>, String> {
    let mut candidates = own_cgroups(self_cgroup);
    candidates.extend([(&CGROUP_V2, PathBuf::from(CGROUP_V2.dir)), (&CGROUP_V1, PathBuf::from(CGROUP_V1.dir))]);
    let mut tightest: Option<Reading> = None;
    for (files, dir) in candidates {
        let dir = root.join(dir);
        let Ok(text) = std::fs::read_to_string(dir.join(files.limit)) else { continue };
        let limit = match parse_limit(&text) {
            Some(Limit::Bytes(limit)) => limit,
            Some(Limit::Unlimited) => continue,
            None => return Err(format!("the cgroup's {} is not a limit", files.limit)),
        };
        let usage = std::fs::read_to_string(dir.join(files.usage))
            .ok()
            .and_then(|text| parse_bytes(&text))
            .ok_or_else(|| format!("the cgroup's {} is unreadable", files.usage))?;
        let inactive = std::fs::read_to_string(dir.join("memory.stat"))
            .ok()
            .and_then(|text| stat(&text, files.inactive_file))
            .unwrap_or(0);
        let reading = Reading { usage: usage.saturating_sub(inactive), limit, source: LimitSource::Cgroup };
        let share = |r: &Reading| u128::from(r.usage) * u128::from(u64::MAX) / u128::from(r.limit.max(1));
        if tightest.as_ref().is_none_or(|t| share(&reading) > share(t)) {
            tightest = Some(reading);
        }
    }
    Ok(tightest)
}

/// Readings from this machine: the configured limit, the cgroup, physical
/// memory, in that order.
pub(crate) struct SystemReader {
    configured: Option<u64>,
    cgroup_root: PathBuf,
    /// Made on first use.
    process: Option<ProcessMemory>,
    system: Option<Result<sysinfo::System, String>>,
    /// Whether a problem was logged (once is enough).
    complained: bool,
}

impl SystemReader {
    pub(crate) fn new(configured: Option<u64>, cgroup_root: PathBuf) -> SystemReader {
        SystemReader { configured, cgroup_root, process: None, system: None, complained: false }
    }

    fn complain(&mut self, why: &str) {
        if !std::mem::replace(&mut self.complained, true) {
            tracing::debug!(why, "memory guard: a memory reading is unavailable; falling back");
        }
    }

    fn physical(&mut self) -> Option<Reading> {
        let system = self
            .system
            .get_or_insert_with(|| sysinfo::System::new().map_err(|e| format!("sysinfo is unavailable: {e}")));
        let system = match system {
            Ok(system) => system,
            Err(why) => {
                let why = why.clone();
                self.complain(&why);
                return None;
            }
        };
        system.refresh_memory_specifics(sysinfo::MemoryRefreshKind::nothing().with_ram());
        let total = system.total_memory();
        if total == 0 {
            self.complain("the platform reports no physical memory");
            return None;
        }
        let usage = total.saturating_sub(system.available_memory());
        Some(Reading { usage, limit: total, source: LimitSource::Physical })
    }
}

impl Reader for SystemReader {
    fn read(&mut self) -> Option<Reading> {
        if let Some(limit) = self.configured {
            return match self.process.get_or_insert_with(ProcessMemory::new).rss_bytes() {
                Ok(usage) => Some(Reading { usage, limit, source: LimitSource::Configured }),
                Err(why) => {
                    self.complain(&why);
                    None
                }
            };
        }
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        match cgroup(&self.cgroup_root, &own) {
            Ok(Some(reading)) => return Some(reading),
            Ok(None) => {}
            Err(why) => self.complain(&why),
        }
        self.physical()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn reading(usage_percent: u64) -> Reading {
        Reading { usage: usage_percent * MIB, limit: 100 * MIB, source: LimitSource::Configured }
    }

    #[test]
    fn limit_files_parse_numbers_max_and_v1_huge_values_and_refuse_garbage() {
        fn check(text: &str, expect: Option<Limit>) {
            assert_eq!(parse_limit(text), expect, "{text:?}");
        }
        check("1048576\n", Some(Limit::Bytes(MIB)));
        check("  536870912 ", Some(Limit::Bytes(512 * MIB)));
        check("max\n", Some(Limit::Unlimited));
        check("9223372036854771712\n", Some(Limit::Unlimited));
        check("18446744073709551615", Some(Limit::Unlimited));
        check("0", None);
        check("", None);
        check("-1", None);
        check("12 MiB", None);
        check("maximum", None);
        check("18446744073709551616", None);
    }

    #[test]
    fn stat_finds_its_key_and_nothing_else() {
        let text = "anon 10\nfile 20\ninactive_file 7\ntotal_inactive_file 9\nactive_file x\n";
        assert_eq!(stat(text, "inactive_file"), Some(7));
        assert_eq!(stat(text, "total_inactive_file"), Some(9));
        assert_eq!(stat(text, "active_file"), None, "garbage value");
        assert_eq!(stat(text, "inactive"), None, "a prefix is not the key");
    }

    /// A fake cgroup file system: `files` are (path under the root, content).
    fn cgroup_of(files: &[(&str, &str)]) -> Result<Option<Reading>, String> {
        cgroup(fake_cgroup(files).path(), "")
    }

    fn fake_cgroup(files: &[(&str, &str)]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let path = root.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        root
    }

    #[test]
    fn the_cgroup_reading_counts_usage_less_inactive_file_cache() {
        let cgroup = |usage, limit| Ok(Some(Reading { usage, limit, source: LimitSource::Cgroup }));
        let v2 =
            [("memory.max", "1048576\n"), ("memory.current", "900000\n"), ("memory.stat", "inactive_file 100000\n")];
        assert_eq!(cgroup_of(&v2), cgroup(800_000, MIB));
        assert_eq!(cgroup_of(&v2[..2]), cgroup(900_000, MIB), "no memory.stat: the whole usage");
        let v1 = [
            ("memory/memory.limit_in_bytes", "2097152"),
            ("memory/memory.usage_in_bytes", "1000"),
            ("memory/memory.stat", "cache 5\ntotal_inactive_file 10\n"),
        ];
        assert_eq!(cgroup_of(&v1), cgroup(990, 2 * MIB));
        // v2 without a limit leaves the word to v1; v1's huge number is none.
        let mixed = [("memory.max", "max\n"), ("memory.current", "5"), v1[0], v1[1]];
        assert_eq!(cgroup_of(&mixed), cgroup(1000, 2 * MIB));
        assert_eq!(cgroup_of(&[("memory.max", "max\n"), ("memory.current", "5")]), Ok(None));
        assert_eq!(cgroup_of(&[("memory/memory.limit_in_bytes", "9223372036854771712")]), Ok(None));
        assert_eq!(cgroup_of(&[]), Ok(None), "no cgroup at all");
    }

    #[test]
    fn the_process_own_cgroup_or_its_nearest_limited_ancestor_is_read_not_the_root() {
        let cgroup = |usage, limit| Ok(Some(Reading { usage, limit, source: LimitSource::Cgroup }));
        let root = fake_cgroup(&[
            ("memory.max", "max\n"),
            ("memory.current", "999999999\n"),
            ("system.slice/memory.max", "4194304\n"),
            ("system.slice/memory.current", "2000\n"),
            ("system.slice/gw.service/memory.max", "2097152\n"),
            ("system.slice/gw.service/memory.current", "1000\n"),
            ("system.slice/other.service/memory.max", "max\n"),
            ("memory/docker/abc/memory.limit_in_bytes", "3145728"),
            ("memory/docker/abc/memory.usage_in_bytes", "3000"),
        ]);
        let read = |own: &str| super::cgroup(root.path(), own);
        assert_eq!(read("0::/system.slice/gw.service\n"), cgroup(1000, 2 * MIB), "its own limit, the tightest");
        assert_eq!(read("0::/system.slice/other.service\n"), cgroup(2000, 4 * MIB), "the slice's, above it");
        assert_eq!(read("12:cpu,cpuacct:/x\n9:memory:/docker/abc\n"), cgroup(3000, 3 * MIB), "v1's memory line");
        assert_eq!(read("0::/\n"), Ok(None), "a namespace root without a limit");
        assert_eq!(read("0::/../../etc\n"), Ok(None), "a path that climbs out is ignored");
        assert_eq!(own_cgroups("garbage\n0::\n").len(), 1, "the root alone");
        // A parent slice nearer its limit than the service is the one that binds.
        let tight_parent = fake_cgroup(&[
            ("slice/memory.max", "1048576\n"),
            ("slice/memory.current", "1000000\n"),
            ("slice/svc/memory.max", "4194304\n"),
            ("slice/svc/memory.current", "1000\n"),
        ]);
        assert_eq!(super::cgroup(tight_parent.path(), "0::/slice/svc\n"), cgroup(1_000_000, MIB));
    }

    #[test]
    fn cgroup_files_that_do_not_parse_are_errors_and_the_reader_falls_back() {
        assert!(cgroup_of(&[("memory.max", "lots"), ("memory.current", "5")]).is_err());
        assert!(cgroup_of(&[("memory.max", "4096"), ("memory.current", "")]).is_err());
        assert!(cgroup_of(&[("memory.max", "4096")]).is_err(), "a limit without its usage");

        let root = fake_cgroup(&[("memory.max", "\u{0}garbage"), ("memory.current", "5")]);
        let mut reader = SystemReader::new(None, root.path().to_path_buf());
        let fallback = reader.read();
        assert!(reader.complained, "the bad file is logged");
        assert_ne!(fallback.map(|r| r.source), Some(LimitSource::Cgroup), "{fallback:?}");
        // A configured limit wins over everything, and is against this process's RSS.
        let mut reader = SystemReader::new(Some(MIB), root.path().to_path_buf());
        let configured = reader.read();
        assert!(configured.is_some_and(|r| r.limit == MIB && r.source == LimitSource::Configured), "{configured:?}");
    }

    #[test]
    fn pressure_enters_at_the_mark_refuses_work_and_recovers_five_points_below() {
        let guard = MemoryGuard::new(90, Some(100 * MIB));
        let (send, samples) = mpsc::channel::<Option<Reading>>();
        let mut reader = move || samples.try_recv().ok().flatten();
        let drops = AtomicU64::new(0);
        let on_enter = || {
            drops.fetch_add(1, Ordering::Relaxed);
        };
        let mut step = |sample: Option<Reading>| {
            assert!(send.send(sample).is_ok());
            tick(&guard, &mut reader, &on_enter)
        };
        let completions = |guard: &MemoryGuard| refusal(guard, &Method::POST, "/v1/chat/completions");

        assert_eq!(step(Some(reading(89))), Transition::Steady);
        assert!(completions(&guard).is_none());
        assert_eq!(step(Some(reading(90))), Transition::Entered);
        assert_eq!(drops.load(Ordering::Relaxed), 1, "the cache's memory is dropped on entering");
        let refused = completions(&guard);
        assert!(refused.as_ref().is_some_and(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE), "{refused:?}");
        assert_eq!(
            refused.as_ref().and_then(|r| r.headers().get(header::RETRY_AFTER)),
            Some(&HeaderValue::from_static("5"))
        );
        // Inside the hysteresis band: still pressured, and no second drop.
        assert_eq!(step(Some(reading(86))), Transition::Steady);
        assert_eq!(step(Some(reading(85))), Transition::Steady);
        assert!(guard.pressured());
        assert_eq!(drops.load(Ordering::Relaxed), 1);
        assert_eq!(step(Some(reading(84))), Transition::Left);
        assert!(completions(&guard).is_none());
        // Back between the marks: not pressured until the high mark again.
        assert_eq!(step(Some(reading(87))), Transition::Steady);
        assert!(!guard.pressured());
        assert_eq!(step(Some(reading(95))), Transition::Entered);
        assert_eq!(drops.load(Ordering::Relaxed), 2);
        // A guard that cannot read does not refuse.
        assert_eq!(step(None), Transition::Left);
        assert_eq!(guard.cache_drops.load(Ordering::Relaxed), 2);
        assert_eq!(guard.refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_hysteresis_band_always_leaves_a_way_out() {
        fn check(high: u8, low: u8) {
            assert_eq!(MemoryGuard::new(high, None).low_percent(), low, "{high}");
        }
        check(90, 85);
        check(100, 95);
        check(10, 5);
        check(6, 3);
        check(1, 1);
        check(0, 1);
    }

    #[test]
    fn under_pressure_health_metrics_models_and_admin_are_still_served() {
        let guard = MemoryGuard::new(90, None);
        let _ = guard.observe(Some(reading(99)));
        let refused = |method: Method, path: &str| refusal(&guard, &method, path).is_some();
        for path in ["/health/live", "/health/ready", "/metrics", "/v1/metrics", "/v1/admin/models", "/v1/admin/report"]
        {
            assert!(!refused(Method::GET, path), "{path}");
        }
        assert!(!refused(Method::POST, "/v1/admin/models/x/disable"));
        assert!(!refused(Method::GET, "/v1/models"));
        assert!(!refused(Method::HEAD, "/v1/models"));
        assert!(refused(Method::POST, "/v1/chat/completions"));
        assert!(refused(Method::POST, "/v1/route/explain"));
        assert!(refused(Method::POST, "/v1/models"), "only reading the catalog is essential");
        assert!(refused(Method::GET, "/v1/administrator"));
    }

    #[test]
    fn readiness_and_metrics_show_the_last_reading() {
        let guard = MemoryGuard::new(50, None);
        assert_eq!(guard.gauges().len(), 3, "no usage or limit before the first reading");
        let _ = guard.observe(Some(reading(60)));
        let ready = guard.to_json();
        assert_eq!(ready["pressure"], true);
        assert_eq!(ready["usage_bytes"], 60 * MIB);
        assert_eq!(ready["limit_bytes"], 100 * MIB);
        assert_eq!(ready["recover_below_percent"], 45);
        let gauges: Vec<(&str, f64)> = guard.gauges().into_iter().map(|(name, _, value)| (name, value)).collect();
        assert!(gauges.contains(&("modelfleet_gateway_memory_pressure", 1.0)), "{gauges:?}");
        assert!(gauges.contains(&("modelfleet_gateway_memory_limit_bytes", (100 * MIB) as f64)), "{gauges:?}");
    }
}
