//! What the load generators (`loadtest`, `cluster`) share: gateway child
//! processes, and closed-loop and constant-arrival load over loopback.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde_json::json;

/// The gateway child, killed if the benchmark stops early.
pub struct Gateway {
    /// The process.
    pub child: Child,
    /// Where it listens (`127.0.0.1:PORT`).
    pub addr: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `bin serve` on a free loopback port with `config` (and
/// `--workers`), once it says where it listens.
///
/// # Errors
/// When it cannot start or exits before listening (its log is in the error).
pub fn start_gateway(bin: &Path, config: &Path, workers: Option<&str>) -> Result<Gateway, String> {
    let mut command = Command::new(bin);
    command.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(config);
    if let Some(workers) = workers {
        command.args(["--workers", workers]);
    }
    let mut child = command
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = String::new();
    let addr = loop {
        let line = lines
            .next()
            .ok_or_else(|| format!("the gateway exited before listening:\n{seen}"))?
            .map_err(|e| e.to_string())?;
        seen.push_str(&line);
        seen.push('\n');
        if let Some(rest) = line.split("modelfleet gateway on http://").nth(1) {
            break rest.split_whitespace().next().unwrap_or_default().to_owned();
        }
    };
    // Keep draining its stderr so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(Gateway { child, addr })
}

/// Resident memory of `pid` in MiB, from /proc.
#[must_use]
pub fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A short chat request for model `m`, 16 tokens at most.
pub const BODY: &str =
    r#"{"model":"m","messages":[{"role":"user","content":"a short question for the load test"}],"max_tokens":16}"#;

/// One request: whether it was answered in full with a success.
pub async fn one(client: &reqwest::Client, url: &str) -> bool {
    match client.post(url).header("content-type", "application/json").body(BODY).send().await {
        Ok(response) => {
            let ok = response.status().is_success();
            ok && response.bytes().await.is_ok()
        }
        Err(_) => false,
    }
}

/// Closed loop: `workers` clients back to back for `duration`, or until
/// `sent` (shared by every phase) reaches `stop_at`, worker `i` sending to
/// `urls[i % urls.len()]`. Returns the requests done, those that failed,
/// and the seconds taken.
pub async fn closed_loop(
    client: &reqwest::Client,
    urls: &[String],
    workers: usize,
    duration: Duration,
    sent: &Arc<AtomicU64>,
    stop_at: u64,
) -> (u64, u64, f64) {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let (client, url, done, failed, stop, sent) = (
            client.clone(),
            urls[worker % urls.len()].clone(),
            Arc::clone(&done),
            Arc::clone(&failed),
            Arc::clone(&stop),
            Arc::clone(sent),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if !one(&client, &url).await {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
                if sent.fetch_add(1, Ordering::Relaxed) + 1 >= stop_at || started.elapsed() >= duration {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let secs = started.elapsed().as_secs_f64();
    (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed), secs)
}

/// Constant arrival at `rate` per second for `duration`, request `i` sent
/// to `urls[i % urls.len()]`: latency of each request from its scheduled
/// time, in microseconds, and how many failed.
///
/// # Errors
/// When the histogram cannot be made.
pub async fn constant_arrival(
    client: &reqwest::Client,
    urls: &[String],
    rate: u32,
    duration: Duration,
) -> Result<(Histogram<u64>, u64), String> {
    let histogram =
        Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?));
    let failed = Arc::new(AtomicU64::new(0));
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let total = duration.as_secs() * u64::from(rate);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        let scheduled = start + period.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled).await;
        let url = urls[usize::try_from(i).unwrap_or(0) % urls.len()].clone();
        let (client, histogram, failed) = (client.clone(), Arc::clone(&histogram), Arc::clone(&failed));
        tasks.push(tokio::spawn(async move {
            // From the send, not the tick: tokio's timer fires up to 1 ms
            // late, noise of the generator's own that would hide the
            // gateway's microseconds. A request the system delays still
            // waits in the connection pool after its start, and counts.
            let sent = tokio::time::Instant::now().max(scheduled);
            let ok = one(&client, &url).await;
            let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
            if ok {
                let _ = histogram.lock().unwrap_or_else(PoisonError::into_inner).record(micros);
            } else {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let histogram = histogram.lock().unwrap_or_else(PoisonError::into_inner).clone();
    Ok((histogram, failed.load(Ordering::Relaxed)))
}

/// p50, p90, p95, p99 and max of `h`, in microseconds.
#[must_use]
pub fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p90_us": h.value_at_quantile(0.90),
        "p95_us": h.value_at_quantile(0.95),
        "p99_us": h.value_at_quantile(0.99),
        "max_us": h.max(),
    })
}
