//! The gateway's load benchmark (run by `cargo xtask loadtest`): starts the
//! mock upstream in this process and `modelfleet serve` as a child process,
//! then drives HTTP load over loopback and writes the figures as JSON.
//!
//! Phases: a warm-up; a closed-loop phase at full speed (throughput) that
//! also carries the gateway to 50k and 100k requests, where its RSS is read;
//! then a constant-arrival phase at 1,000 requests/s, once straight to the
//! mock and once through the gateway (the difference is the latency the
//! gateway adds), each request measured from its send.
//!
//! `loadtest --gateway-bin PATH --out FILE [--quick] [--workers N] [--budget]`

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use modelfleet_benches::load::{closed_loop, constant_arrival, percentiles, rss_mb, start_gateway};
use modelfleet_mock_upstream::MockUpstream;
use serde_json::json;

struct Args {
    gateway_bin: PathBuf,
    out: PathBuf,
    quick: bool,
    /// Passed to `serve --workers`.
    workers: Option<String>,
    /// Configure a global budget.
    budget: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut gateway_bin, mut out, mut quick, mut workers, mut budget) = (None, None, false, None, false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--gateway-bin" => gateway_bin = args.next().map(PathBuf::from),
            "--out" => out = args.next().map(PathBuf::from),
            "--quick" => quick = true,
            "--workers" => workers = args.next(),
            "--budget" => budget = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        gateway_bin: gateway_bin.ok_or("--gateway-bin PATH is required")?,
        out: out.ok_or("--out FILE is required")?,
        quick,
        workers,
        budget,
    })
}

async fn run(args: Args) -> Result<serde_json::Value, String> {
    let mock = MockUpstream::start().await.map_err(|e| format!("mock upstream: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = dir.path().join("load.toml");
    // The minimal config: one model behind the mock, no cache. With
    // --budget, a global budget too: every request then reserves, reconciles
    // and commits its spend to SQLite before answering (the strict path).
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n\n[store]\npath = \"{}\"\n\n[[providers]]\nname = \"mock\"\nkind = \
         \"openai\"\nbase_url = \"{}\"\n\n[[models]]\nid = \"m\"\nprovider = \"mock\"\ncontext_window = \
         8192\ninput_price_per_mtok = \"0.50\"\noutput_price_per_mtok = \"1.50\"\nquality = 0.7\nlanguages = \
         [\"en\"]\ncategories = [\"general\"]\n\n[cache]\nenabled = false\n{}",
        dir.path().join("load.db").display(),
        mock.base_url(),
        if args.budget { "\n[[budgets]]\nscope = \"global\"\nperiod = \"monthly\"\nlimit = \"1000000\"\n" } else { "" },
    );
    std::fs::write(&config, text).map_err(|e| e.to_string())?;
    let gateway = start_gateway(&args.gateway_bin, &config, args.workers.as_deref())?;
    let pid = gateway.child.id();
    let client =
        reqwest::Client::builder().pool_max_idle_per_host(256).tcp_nodelay(true).build().map_err(|e| e.to_string())?;
    let via_gateway = format!("http://{}/v1/chat/completions", gateway.addr);
    let direct = format!("{}/chat/completions", mock.base_url());
    let (scale, seconds) = if args.quick { (10, 2) } else { (1, 10) };
    let sent = Arc::new(AtomicU64::new(0));

    eprintln!("warm-up…");
    closed_loop(&client, std::slice::from_ref(&via_gateway), 16, Duration::from_secs(2), &sent, 5_000).await;
    let rss_start = rss_mb(pid);

    eprintln!("throughput (closed loop, 32 connections) up to 50k requests…");
    let half = 50_000 / scale;
    let (done_a, failed_a, secs_a) =
        closed_loop(&client, std::slice::from_ref(&via_gateway), 32, Duration::from_mins(1), &sent, half).await;
    let rss_50k = rss_mb(pid);
    eprintln!("… and on to 100k…");
    let (done_b, failed_b, secs_b) =
        closed_loop(&client, std::slice::from_ref(&via_gateway), 32, Duration::from_mins(1), &sent, 2 * half).await;
    let rss_100k = rss_mb(pid);
    let throughput = (done_a + done_b) as f64 / (secs_a + secs_b);
    let total_sent = sent.load(Ordering::Relaxed);

    // Interleaved one-second blocks, so a drift of this noisy machine hits both alike.
    eprintln!(
        "constant arrival, 1000/s, {seconds}s straight to the mock and {seconds}s through the gateway, interleaved…"
    );
    let mut direct_h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut gateway_h = direct_h.clone();
    let (mut direct_failed, mut gateway_failed) = (0, 0);
    for _ in 0..seconds {
        let (h, f) = constant_arrival(&client, std::slice::from_ref(&direct), 1_000, Duration::from_secs(1)).await?;
        direct_h.add(&h).map_err(|e| e.to_string())?;
        direct_failed += f;
        let (h, f) =
            constant_arrival(&client, std::slice::from_ref(&via_gateway), 1_000, Duration::from_secs(1)).await?;
        gateway_h.add(&h).map_err(|e| e.to_string())?;
        gateway_failed += f;
    }
    let added = |q: f64| gateway_h.value_at_quantile(q) as f64 - direct_h.value_at_quantile(q) as f64;
    let growth = match (rss_50k, rss_100k) {
        (Some(a), Some(b)) if a > 0.0 => Some((b - a) / a * 100.0),
        _ => None,
    };
    drop(gateway);
    mock.shutdown().await;
    Ok(json!({
        "quick": args.quick,
        "gateway_workers": args.workers,
        "budget": args.budget,
        "throughput": {
            "requests": done_a + done_b,
            "failed": failed_a + failed_b,
            "seconds": secs_a + secs_b,
            "requests_per_second": throughput,
            "target_rps": 5000,
            "met": throughput >= 5000.0,
        },
        "latency_1000rps": {
            "direct": percentiles(&direct_h),
            "gateway": percentiles(&gateway_h),
            "direct_failed": direct_failed,
            "gateway_failed": gateway_failed,
            "added_p50_us": added(0.50),
            "added_p99_us": added(0.99),
            "target_added_p50_us": 150,
            "target_added_p99_us": 1000,
            "gateway_p95_over_p50": gateway_h.value_at_quantile(0.95) as f64 / gateway_h.value_at_quantile(0.50).max(1) as f64,
            "met": added(0.50) <= 150.0 && added(0.99) <= 1000.0,
        },
        "memory": {
            "requests_through_gateway": total_sent,
            "rss_mb_after_warmup": rss_start,
            "rss_mb_at_half": rss_50k,
            "rss_mb_at_full": rss_100k,
            "growth_percent_half_to_full": growth,
            "target_rss_mb": 64,
            "met": rss_100k.is_some_and(|r| r <= 64.0) && growth.is_some_and(|g| g <= 5.0),
        },
    }))
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!(
                "error: {message}\nusage: loadtest --gateway-bin PATH --out FILE [--quick] [--workers N] [--budget]"
            );
            return ExitCode::from(2);
        }
    };
    let out = args.out.clone();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(report) => {
            let text = serde_json::to_string_pretty(&report).unwrap_or_default();
            println!("{text}");
            if let Err(err) = std::fs::write(&out, text + "\n") {
                eprintln!("error: cannot write {}: {err}", out.display());
                return ExitCode::from(3);
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(3)
        }
    }
}
