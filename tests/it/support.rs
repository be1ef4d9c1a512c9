//! What the gateway scenarios share: a test configuration validated as
//! `modelfleet serve` would, and a gateway serving in a task.

use std::{path::Path, sync::Arc};

use modelfleet::{Fleet, config::Config};
use modelfleet_gateway::{Gateway, GatewayError};
use tokio::sync::oneshot;

/// Where a test's configuration reads its secrets.
pub(crate) type Env = fn(&str) -> Option<String>;

/// `text` validated (paths from `dir`, variables through `env`), or a panic
/// naming every problem; on a free loopback port, stopping at once (no
/// load balancer to tell: a test that needs the drain's grace sets it).
pub(crate) fn validated(text: &str, dir: &Path, env: Env) -> Config {
    let options = modelfleet::config::Options {
        env: &env,
        check_files: false,
        check_ports: false,
        check_tools: false,
        base_dir: dir.to_path_buf(),
    };
    let report = modelfleet::config::validate(text, &options);
    let problems = report.to_string();
    let mut config = report.config.unwrap_or_else(|| panic!("test config invalid: {problems}\n{text}"));
    // Port 0 (a free port) is what `modelfleet serve --listen` allows; the file needs a real one.
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.drain_grace_ms = 0;
    config
}

/// A running gateway: its base URL, its fleet, and how to stop it.
pub(crate) struct Running {
    pub(crate) url: String,
    pub(crate) fleet: Arc<Fleet>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), GatewayError>>,
}

impl Running {
    pub(crate) async fn start(config: &Config, env: Env) -> Running {
        let gateway = Gateway::bind(config, &env).await.unwrap();
        let url = format!("http://{}", gateway.local_addr());
        let fleet = gateway.fleet();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.serve(async move {
            let _ = stopped.await;
        }));
        Running { url, fleet, stop: Some(stop), task }
    }

    /// Stops it and waits until `serve` has returned (the store flushed).
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }
}

/// Now, Unix ms (the wall clock the performance rows are stamped with).
pub(crate) fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    u64::try_from(since.as_millis()).unwrap()
}

/// The named SSE events of a body: (event, data).
pub(crate) fn named_events(text: &str) -> Vec<(String, serde_json::Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let event = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((event.to_owned(), serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"))))
        })
        .collect()
}
