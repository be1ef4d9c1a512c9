//! `mock-upstream`: the mock providers (OpenAI, Anthropic, Gemini, Azure) as
//! a program, for trying the gateway by hand (see the README):
//! `mock-upstream [--listen ADDR] [--latency-ms N] [--fail MODEL=FAULT[@RATE]]...
//! [--key KEY]... [--rate-limited-key KEY]... [--revoked-key KEY]...`.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use modelfleet_mock_upstream::{Behavior, KeyPolicy, MockUpstream, parse_fault};

const USAGE: &str = "usage: mock-upstream [--listen 127.0.0.1:9000] [--latency-ms N] [--fail MODEL=FAULT[@RATE]]...
                     [--key KEY]... [--rate-limited-key KEY]... [--revoked-key KEY]...
  FAULT: 500, 429[:secs], hang:ms, slow_headers:ms, drip:ms, reset, cut:n, midstream_error:n,
         context, 400, 401, huge:bytes, overloaded, blocked, filtered; RATE: 0..1 (default 1)
  --key: a key accepted (none given: any key, or none, is); --rate-limited-key: a key always
         answered 429; --revoked-key: a key always answered 401";

struct Args {
    listen: SocketAddr,
    latency: Duration,
    faults: Vec<(String, Behavior)>,
    keys: KeyPolicy,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 9000)),
        latency: Duration::ZERO,
        faults: Vec::new(),
        keys: KeyPolicy::default(),
    };
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                parsed.listen = v.parse().map_err(|_| format!("--listen: {v:?} is not host:port"))?;
            }
            "--latency-ms" => {
                let v = value("--latency-ms")?;
                parsed.latency =
                    Duration::from_millis(v.parse().map_err(|_| format!("--latency-ms: {v:?} is not a number"))?);
            }
            "--fail" => {
                let v = value("--fail")?;
                let (model, spec) = v.split_once('=').ok_or_else(|| format!("--fail: {v:?} is not MODEL=FAULT"))?;
                let (fault, rate) = spec.split_once('@').map_or((spec, "1"), |(f, r)| (f, r));
                let rate: f64 = rate
                    .parse()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| format!("--fail: rate {rate:?} is not in 0..1"))?;
                let fault = parse_fault(fault).map_err(|e| format!("--fail: {e}"))?;
                parsed
                    .faults
                    .push((model.to_owned(), Behavior { fault: Some(fault), fault_rate: rate, ..Behavior::default() }));
            }
            "--key" => parsed.keys.accepted.push(value("--key")?),
            "--rate-limited-key" => parsed.keys.rate_limited.push(value("--rate-limited-key")?),
            "--revoked-key" => parsed.keys.revoked.push(value("--revoked-key")?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(parsed)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mock = match MockUpstream::start_on(args.listen).await {
        Ok(mock) => mock,
        Err(err) => {
            eprintln!("error: cannot listen on {}: {err}", args.listen);
            return ExitCode::from(3);
        }
    };
    mock.set_keys(args.keys);
    for (model, mut behavior) in args.faults {
        behavior.latency = args.latency;
        mock.set(&model, behavior);
    }
    println!("mock upstream listening on {} (Ctrl-C stops it)", mock.base_url());
    println!("  OpenAI:    {}/chat/completions, /completions, /embeddings, /responses", mock.base_url());
    println!("  Anthropic: {}/v1/messages", mock.root_url());
    println!(
        "  Gemini:    {}/v1beta/models/MODEL:generateContent (and :streamGenerateContent?alt=sse)",
        mock.root_url()
    );
    println!("  Azure:     {}/openai/deployments/DEPLOYMENT/chat/completions?api-version=…", mock.root_url());
    let _ = tokio::signal::ctrl_c().await;
    mock.shutdown().await;
    ExitCode::SUCCESS
}
