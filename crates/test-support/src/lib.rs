//! Helpers for modelfleet's tests against real servers, shared by the
//! cluster crate's, the facade's, the integration and the CLI tests (a
//! dev-dependency only: no library depends on it).
//!
//! - [`postgres_url`] and [`redis_url`] find the test servers
//!   (`MODELFLEET_TEST_POSTGRES`, default
//!   `postgres://postgres@127.0.0.1:5432/test`; `MODELFLEET_TEST_REDIS`,
//!   default `redis://127.0.0.1:6379`). Without one the test skips, saying
//!   so on stderr, except under `CI=true`, where it fails: CI never skips.
//! - [`Schema`] is a PostgreSQL schema of the test's own, dropped when the
//!   test ends, passed or failed; [`unique`] names anything else a test
//!   must not share with another (or an earlier run).
//! - [`Proxy`] is a loopback TCP proxy the test owns, to cut, stall and
//!   restore a server without touching the machine's.
//!
//! ```no_run
//! use modelfleet_test_support::{Schema, postgres_url};
//!
//! let Some(url) = postgres_url() else { return };
//! let schema = Schema::new(&url, "example");
//! assert!(schema.name.starts_with("t_example_"));
//! ```

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

/// The test PostgreSQL's URL, or `None` (the test skips, saying so) when
/// nothing listens there and CI did not ask for it.
#[must_use]
pub fn postgres_url() -> Option<String> {
    let url = std::env::var("MODELFLEET_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let address = match url.parse::<tokio_postgres::Config>() {
        Ok(config) => {
            let host = match config.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
                _ => "127.0.0.1".to_owned(),
            };
            format!("{host}:{}", config.get_ports().first().copied().unwrap_or(5432))
        }
        Err(e) => panic!("MODELFLEET_TEST_POSTGRES is not a PostgreSQL URL: {e}"),
    };
    reachable(url, &address, "PostgreSQL", "MODELFLEET_TEST_POSTGRES")
}

/// The test Redis's URL, or `None` (the test skips, saying so) when
/// nothing listens there and CI did not ask for it.
#[must_use]
pub fn redis_url() -> Option<String> {
    let url = std::env::var("MODELFLEET_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let address = redis_address(&url);
    reachable(url, &address, "Redis", "MODELFLEET_TEST_REDIS")
}

/// `host:port` of a `redis://[userinfo@]host[:port][/db]` URL.
#[must_use]
pub fn redis_address(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = rest.split('/').next().unwrap_or(rest);
    if host.contains(':') { host.to_owned() } else { format!("{host}:6379") }
}

fn reachable(url: String, address: &str, server: &str, variable: &str) -> Option<String> {
    let listening = std::net::ToSocketAddrs::to_socket_addrs(address)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    if listening {
        return Some(url);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{server} is not reachable at {address} ({variable}): CI runs these tests against it"
    );
    eprintln!("SKIPPED: {server} is not reachable at {address}; set {variable} to run this test");
    None
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// `{prefix}_{test}_{pid}_{nanos}_{n}`: a name no other test, process or
/// run uses (lower-case letters, digits and `_` when `prefix` and `test`
/// are).
#[must_use]
pub fn unique(prefix: &str, test: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{prefix}_{test}_{}_{nanos}_{}", std::process::id(), UNIQUE.fetch_add(1, Ordering::Relaxed))
}

/// The test's PostgreSQL schema (`t_{test}_…`), dropped when the test
/// ends, passed or failed.
pub struct Schema {
    url: String,
    /// Its name.
    pub name: String,
}

impl Schema {
    /// A schema name no other test uses, on the server at `url` (nothing
    /// is created: the code under test does).
    #[must_use]
    pub fn new(url: &str, test: &str) -> Schema {
        Schema { url: url.to_owned(), name: unique("t", test) }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // A runtime of its own: the test's may be gone (or be this thread's).
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test schema {}: drop it by hand", self.name);
        }
    }
}

/// A loopback TCP proxy the test owns. Cut, every connection through it
/// drops and new ones are refused; stalled, connections stay open but
/// nothing gets through (a silent network: only timeouts can tell);
/// restored, it forwards again.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    tasks: Arc<Mutex<JoinSet<()>>>,
    stalled: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on a free loopback port, forwarding to `target`.
    ///
    /// # Panics
    /// When no loopback port can be had.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free loopback port");
        let addr = listener.local_addr().expect("a bound listener's address");
        let proxy = Proxy { addr, target, tasks: Arc::default(), stalled: Arc::default() };
        proxy.serve(listener);
        proxy
    }

    /// A proxy to the PostgreSQL at `url`, and the URL that goes through
    /// it (the same user and database).
    ///
    /// # Panics
    /// When `url` is not a PostgreSQL URL that resolves.
    pub async fn to_postgres(url: &str) -> (Proxy, String) {
        let config: tokio_postgres::Config = url.parse().expect("a PostgreSQL URL");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let target = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .ok()
            .and_then(|mut addrs| addrs.next())
            .expect("the test PostgreSQL resolves");
        let proxy = Proxy::start(target).await;
        let user = config.get_user().unwrap_or("postgres");
        let db = config.get_dbname().unwrap_or("test");
        let through = format!("postgres://{user}@127.0.0.1:{}/{db}", proxy.port());
        (proxy, through)
    }

    /// Its loopback port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    fn serve(&self, listener: TcpListener) {
        let (target, tasks, stalled) = (self.target, Arc::clone(&self.tasks), Arc::clone(&self.stalled));
        let accept = async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(target).await else { continue };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                let mut tasks = tasks.lock().unwrap_or_else(PoisonError::into_inner);
                tasks.spawn(forward(in_read, out_write, Arc::clone(&stalled)));
                tasks.spawn(forward(out_read, in_write, Arc::clone(&stalled)));
            }
        };
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner).spawn(accept);
    }

    /// Drops every connection and stops listening (new ones are refused).
    pub fn cut(&self) {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner).abort_all();
    }

    /// Holds every byte back (`true`), or lets them through again.
    pub fn stall(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::SeqCst);
    }

    /// Listens again on the same port after a [`Proxy::cut`].
    ///
    /// # Panics
    /// When the port was taken meanwhile.
    pub async fn restore(&self) {
        let listener = TcpListener::bind(self.addr).await.expect("the proxy's port is still free");
        self.serve(listener);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Copies `from` to `to`, holding every byte back while `stalled`.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buffer = vec![0; 16 * 1024];
    loop {
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let Ok(n) = from.read(&mut buffer).await else { return };
        if n == 0 {
            return;
        }
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
