//! `modelfleet serve`: the OpenAI-compatible gateway.

use std::{net::SocketAddr, path::PathBuf};

use modelfleet::config::{Config, Options, validate, validate_file};
use modelfleet_gateway::Gateway;

use crate::CheckFailed;

/// What `serve` was asked.
pub(crate) struct ServeArgs {
    pub(crate) config: Option<PathBuf>,
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) db: Option<PathBuf>,
    pub(crate) workers: Option<usize>,
}

/// The embedded default: the default catalog, every provider simulated.
fn default_config(env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
    let catalog = modelfleet::registry::default_catalog()?;
    let mut providers: Vec<&str> = catalog.iter().map(|m| m.provider.as_str()).collect();
    providers.sort_unstable();
    providers.dedup();
    let mut text = String::from("[server]\nlisten = \"127.0.0.1:8080\"\n");
    for provider in providers {
        text.push_str("\n[[providers]]\nkind = \"simulated\"\nname = \"");
        text.push_str(provider);
        text.push_str("\"\n");
    }
    let options = Options { env, check_files: false, check_ports: false, check_tools: false, base_dir: ".".into() };
    let report = validate(&text, &options);
    let problems = report.to_string();
    report.config.ok_or_else(|| anyhow::anyhow!("the embedded default configuration is invalid: {problems}"))
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<Result<(), CheckFailed>> {
    let env = |name: &str| std::env::var(name).ok();
    let mut config = match &args.config {
        Some(file) => {
            let base_dir = file.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
            let options = Options { env: &env, check_files: false, check_ports: false, check_tools: false, base_dir };
            let report = validate_file(file, &options);
            for warning in &report.warnings {
                tracing::warn!("{}: {warning}", file.display());
            }
            let problems = report.to_string();
            let Some(config) = report.config else {
                eprintln!("{problems}");
                return Ok(Err(CheckFailed));
            };
            config
        }
        None => default_config(&env)?,
    };
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if args.db.is_some() {
        config.store.path = args.db;
    }
    // One worker: a current-thread runtime (no cross-thread wake-ups; one core).
    let mut builder = if args.workers == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if let Some(n) = args.workers.filter(|n| *n > 1) {
        builder.worker_threads(n);
    }
    let runtime = builder.enable_all().build()?;
    let simulated_only = args.config.is_none();
    runtime.block_on(async {
        let gateway = Gateway::bind(&config, &env).await?;
        eprintln!("modelfleet gateway on http://{} (Ctrl-C or SIGTERM stops it)", gateway.local_addr());
        if simulated_only {
            eprintln!(
                "modelfleet: no --config: EVERY PROVIDER IS SIMULATED. Answers are stand-ins, marked \
                 x-modelfleet-simulated: true; to serve real providers, pass --config (see \
                 config/modelfleet.example.toml)"
            );
        }
        gateway.serve(stop_signal()).await?;
        Ok(Ok(()))
    })
}

/// Ctrl-C, or SIGTERM on Unix.
async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(err) => {
                tracing::warn!(%err, "cannot watch SIGTERM; Ctrl-C still stops the gateway");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
