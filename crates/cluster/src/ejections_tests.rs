//! Shared ejections against a real Redis (`MODELFLEET_TEST_REDIS`, default
//! `redis://127.0.0.1:6379`), each test under a key prefix of its own.
//! Without a server the tests skip, saying so, except under `CI=true`,
//! where they fail. Cutting Redis off is done by a loopback TCP proxy the
//! test owns, never by touching the machine's server.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

use modelfleet_test_support::{redis_address, redis_url};

use super::{check_prefix, notice_of_message, scrub, secrets_of};
use crate::{ClusterError, EjectionNotice, EjectionsConfig, MAX_EJECTION, SharedEjections};

static PREFIXES: AtomicU64 = AtomicU64::new(0);

/// The test's key prefix; its keys are deleted when the test ends, passed
/// or failed.
struct Prefix {
    url: String,
    name: String,
}

impl Prefix {
    fn new(url: &str, test: &str) -> Prefix {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let name = format!("t:{test}:{}-{nanos}-{}", std::process::id(), PREFIXES.fetch_add(1, Ordering::Relaxed));
        Prefix { url: url.to_owned(), name }
    }

    fn key(&self, model: &str) -> String {
        format!("{}:ejected:{model}", self.name)
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let deleted = (|| {
            let mut conn = redis::Client::open(self.url.as_str())?.get_connection()?;
            let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg(format!("{}:*", self.name)).query(&mut conn)?;
            if !keys.is_empty() {
                redis::cmd("DEL").arg(keys).query::<()>(&mut conn)?;
            }
            Ok::<_, redis::RedisError>(())
        })();
        if deleted.is_err() {
            eprintln!("could not delete the test keys under {}", self.name);
        }
    }
}

/// A replica's side: a timeout for correctness, not latency.
async fn replica(url: &str, prefix: &Prefix, name: &str) -> SharedEjections {
    let config = EjectionsConfig { url, prefix: &prefix.name, replica: name, timeout: Duration::from_secs(5) };
    SharedEjections::connect(&config).await.expect("a valid configuration")
}

/// A plain async connection, for what the test reads and writes itself.
async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap()
}

async fn get(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

/// A watch's notices, as a channel.
fn watching(shared: &SharedEjections) -> (crate::EjectionWatch, mpsc::UnboundedReceiver<EjectionNotice>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let watch = shared.watch(move |notice| {
        let _ = tx.send(notice);
    });
    (watch, rx)
}

/// The first notice `wanted` accepts within 10 s (others are kept in `seen`),
/// doing `nudge` every 100 ms meanwhile (a publication the subscriber may
/// not be there yet to hear).
async fn wait_for<F: Future<Output = ()>>(
    rx: &mut mpsc::UnboundedReceiver<EjectionNotice>,
    seen: &mut Vec<EjectionNotice>,
    wanted: impl Fn(&EjectionNotice) -> bool,
    mut nudge: impl FnMut() -> F,
) -> Option<EjectionNotice> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        nudge().await;
        while let Ok(Some(notice)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            if wanted(&notice) {
                return Some(notice);
            }
            seen.push(notice);
        }
    }
    None
}

async fn nothing() {}

/// PUBLISH `payload` on `channel`: a message with no key behind it.
async fn publish_raw(conn: &mut redis::aio::MultiplexedConnection, channel: &str, payload: &[u8]) {
    let _: i64 = redis::cmd("PUBLISH").arg(channel).arg(payload).query_async(conn).await.unwrap();
}

#[test]
fn a_prefix_is_short_and_plain() {
    for good in ["modelfleet", "prod:eu-1", "a_b"] {
        assert!(check_prefix(good).is_ok(), "{good}");
    }
    for bad in ["", "Upper", "with space", "glob*", "q?", "[x]", &"a".repeat(65)] {
        assert!(matches!(check_prefix(bad), Err(ClusterError::Invalid(_))), "{bad:?}");
    }
}

#[test]
fn a_url_and_its_password_are_scrubbed() {
    let url = "redis://fleet:s3cret@cache.internal:6379/0";
    let secrets = secrets_of(url);
    let text = scrub(&format!("cannot reach {url}, auth s3cret refused"), &secrets);
    assert!(!text.contains("s3cret") && !text.contains("cache.internal"), "{text}");
    assert_eq!(secrets_of("redis://127.0.0.1:6379"), vec!["redis://127.0.0.1:6379".to_owned()]);
}

#[test]
fn corrupt_messages_are_refused_with_a_reason() {
    let ok = notice_of_message(b"1\ngpt-4o\n1500\ngw-1\nserver_error").unwrap();
    assert_eq!(
        ok,
        EjectionNotice {
            model: "gpt-4o".into(),
            remaining: Duration::from_millis(1_500),
            replica: "gw-1".into(),
            reason: "server_error".into()
        }
    );
    let long_model = format!("1\n{}\n1500\ngw-1\nserver_error", "m".repeat(257));
    let too_long_for_ever = format!("1\nm\n{}\ngw-1\ntimeout", MAX_EJECTION.as_millis() + 1);
    for bad in [
        &b"2\nm\n1500\ngw-1\nserver_error"[..],
        b"1\nm\n1500\ngw-1",
        b"1\nm\n1500\ngw-1\nserver_error\nextra",
        b"1\nm\n-5\ngw-1\nserver_error",
        b"1\nm\n0\ngw-1\nserver_error",
        b"1\nm\nsoon\ngw-1\nserver_error",
        b"1\nm\n1500\ngw-1\nServer Error",
        b"1\nm\x07odel\n1500\ngw-1\nserver_error",
        b"1\n\n1500\ngw-1\nserver_error",
        b"\xff\xfe",
        long_model.as_bytes(),
        too_long_for_ever.as_bytes(),
        &[b'x'; 4_000][..],
    ] {
        assert!(notice_of_message(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejection_is_a_key_with_its_ttl_and_a_longer_one_is_never_shortened() {
    let Some(url) = redis_url() else { return };
    let prefix = Prefix::new(&url, "ttl");
    let (a, b) = (replica(&url, &prefix, "a").await, replica(&url, &prefix, "b").await);
    let mut conn = raw(&url).await;
    let key = prefix.key("m");
    assert!(a.publish("m", Duration::from_mins(1), "server_error").await.unwrap(), "written");
    let left = pttl(&mut conn, &key).await;
    assert!((50_000..=60_000).contains(&left), "{left}");
    assert_eq!(get(&mut conn, &key).await.as_deref(), Some("1\na\nserver_error"));
    // A shorter one, from another replica, changes nothing.
    assert!(!b.publish("m", Duration::from_secs(1), "timeout").await.unwrap(), "kept the longer");
    assert!(pttl(&mut conn, &key).await > 50_000);
    assert_eq!(get(&mut conn, &key).await.as_deref(), Some("1\na\nserver_error"));
    // A longer one replaces it.
    assert!(b.publish("m", Duration::from_mins(2), "circuit_open").await.unwrap());
    assert!(pttl(&mut conn, &key).await > 110_000);
    assert_eq!(get(&mut conn, &key).await.as_deref(), Some("1\nb\ncircuit_open"));
    // Nothing to share, and nothing shared for ever.
    assert!(!a.publish("z", Duration::ZERO, "timeout").await.unwrap());
    assert_eq!(pttl(&mut conn, &prefix.key("z")).await, -2, "no key");
    assert!(a.publish("long", Duration::from_hours(1_000), "quota_exhausted").await.unwrap());
    let capped = pttl(&mut conn, &prefix.key("long")).await;
    assert!(capped <= i64::try_from(MAX_EJECTION.as_millis()).unwrap() && capped > 0, "{capped}");
    // What cannot be shared is refused before Redis sees it.
    for (model, reason) in [("", "timeout"), ("bad\nmodel", "timeout"), ("m", "Not A Reason")] {
        let refused = a.publish(model, Duration::from_secs(1), reason).await;
        assert!(matches!(refused, Err(ClusterError::Invalid(_))), "{model:?} {reason:?}: {refused:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reread_finds_the_other_replicas_ejections_not_its_own() {
    let Some(url) = redis_url() else { return };
    let prefix = Prefix::new(&url, "reread");
    let (a, b) = (replica(&url, &prefix, "a").await, replica(&url, &prefix, "b").await);
    assert!(a.publish("m1", Duration::from_secs(30), "server_error").await.unwrap());
    assert!(b.publish("m2", Duration::from_secs(30), "circuit_open").await.unwrap());
    let seen_by_a = a.read().await.unwrap();
    assert_eq!(seen_by_a.len(), 1, "{seen_by_a:?}");
    assert_eq!((seen_by_a[0].model.as_str(), seen_by_a[0].replica.as_str()), ("m2", "b"));
    assert_eq!(seen_by_a[0].reason, "circuit_open");
    assert!(seen_by_a[0].remaining > Duration::from_secs(20) && seen_by_a[0].remaining <= Duration::from_secs(30));
    let seen_by_b = b.read().await.unwrap();
    assert_eq!(seen_by_b.iter().map(|n| n.model.as_str()).collect::<Vec<_>>(), ["m1"]);
    // More keys than one SCAN step returns are all found.
    for i in 0..250 {
        b.publish(&format!("many-{i}"), Duration::from_secs(30), "timeout").await.unwrap();
    }
    assert_eq!(a.read().await.unwrap().len(), 251);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_hears_a_message_at_once_and_a_missed_one_at_the_next_reread() {
    let Some(url) = redis_url() else { return };
    let prefix = Prefix::new(&url, "watch");
    let (a, b) = (replica(&url, &prefix, "a").await, replica(&url, &prefix, "b").await);
    let (_watch, mut rx) = watching(&b);
    let mut seen = Vec::new();
    // A message with no key behind it: only the subscriber can hear it.
    let conn = raw(&url).await;
    let channel = a.channel();
    let heard = wait_for(
        &mut rx,
        &mut seen,
        |n| n.model == "only-a-message",
        || {
            let (mut conn, channel) = (conn.clone(), channel.clone());
            async move {
                publish_raw(&mut conn, &channel, "1\nonly-a-message\n5000\na\nserver_error".as_bytes()).await;
            }
        },
    )
    .await;
    assert_eq!(heard.map(|n| (n.replica, n.reason)), Some(("a".to_owned(), "server_error".to_owned())));
    // A key with no message (the message was missed): the re-read finds it.
    let mut writer = conn.clone();
    let _: () = redis::cmd("SET")
        .arg(prefix.key("only-a-key"))
        .arg("1\na\ntimeout")
        .arg("PX")
        .arg(30_000)
        .query_async(&mut writer)
        .await
        .unwrap();
    let healed = wait_for(&mut rx, &mut seen, |n| n.model == "only-a-key", nothing).await;
    assert!(healed.is_some_and(|n| n.reason == "timeout" && n.remaining <= Duration::from_secs(30)));
    // And a publication arrives by both ways, as the same fact.
    a.publish("both", Duration::from_secs(30), "circuit_open").await.unwrap();
    let both = wait_for(&mut rx, &mut seen, |n| n.model == "both", nothing).await;
    assert!(both.is_some_and(|n| n.replica == "a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_never_hears_its_own_ejections() {
    let Some(url) = redis_url() else { return };
    let prefix = Prefix::new(&url, "own");
    let a = replica(&url, &prefix, "a").await;
    let (_watch, mut rx) = watching(&a);
    let mut seen = Vec::new();
    let (conn, channel) = (raw(&url).await, a.channel());
    let message = |model: &'static str| {
        let (mut conn, channel) = (conn.clone(), channel.clone());
        async move { publish_raw(&mut conn, &channel, format!("1\n{model}\n5000\nb\ntimeout").as_bytes()).await }
    };
    // The subscriber is there once it hears a message (no key: no re-read finds it).
    assert!(wait_for(&mut rx, &mut seen, |n| n.model == "ready", || message("ready")).await.is_some());
    // Its own ejection, then another's message: the other's arrives, and
    // its own, published before on the same channel, never did.
    a.publish("mine", Duration::from_secs(30), "server_error").await.unwrap();
    assert!(wait_for(&mut rx, &mut seen, |n| n.model == "after", || message("after")).await.is_some());
    // A key with no message, found only by a re-read that started after it
    // was written, and so saw its own key too.
    let mut conn = conn.clone();
    let _: () = redis::cmd("SET")
        .arg(prefix.key("marker"))
        .arg("1\nb\ntimeout")
        .arg("PX")
        .arg(30_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(wait_for(&mut rx, &mut seen, |n| n.model == "marker", nothing).await.is_some());
    assert!(seen.iter().all(|n| n.replica == "b"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_hostile_entries_are_skipped_never_trusted() {
    let Some(url) = redis_url() else { return };
    let prefix = Prefix::new(&url, "hostile");
    let (a, b) = (replica(&url, &prefix, "a").await, replica(&url, &prefix, "b").await);
    let mut conn = raw(&url).await;
    let set = |key: String, value: Vec<u8>, px: Option<u64>| {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if let Some(px) = px {
            cmd.arg("PX").arg(px);
        }
        cmd
    };
    let day_and_more = u64::try_from(MAX_EJECTION.as_millis()).unwrap() + 60_000;
    let hostile = [
        set(prefix.key("no-ttl"), b"1\nb\ntimeout".to_vec(), None),
        set(prefix.key("huge"), vec![b'x'; 100_000], Some(30_000)),
        set(prefix.key("version"), b"2\nb\ntimeout".to_vec(), Some(30_000)),
        set(prefix.key("fields"), b"1\nb".to_vec(), Some(30_000)),
        set(prefix.key("reason"), b"1\nb\nDROP TABLE".to_vec(), Some(30_000)),
        set(prefix.key("replica"), b"1\nb\x1b[31m\ntimeout".to_vec(), Some(30_000)),
        set(prefix.key("binary"), vec![0xff, 0xfe, 0x00], Some(30_000)),
        set(prefix.key("forever"), b"1\nb\ntimeout".to_vec(), Some(day_and_more)),
        set(prefix.key("bad\u{7}model"), b"1\nb\ntimeout".to_vec(), Some(30_000)),
        set(prefix.key(&"l".repeat(300)), b"1\nb\ntimeout".to_vec(), Some(30_000)),
    ];
    for cmd in hostile {
        let _: () = cmd.query_async(&mut conn).await.unwrap();
    }
    let _: () = redis::cmd("HSET").arg(prefix.key("a-hash")).arg("f").arg("v").query_async(&mut conn).await.unwrap();
    let _: () = redis::cmd("RPUSH").arg(prefix.key("a-list")).arg("v").query_async(&mut conn).await.unwrap();
    b.publish("good", Duration::from_secs(30), "server_error").await.unwrap();
    let read = a.read().await.expect("corrupt entries do not fail the re-read");
    assert_eq!(read.iter().map(|n| n.model.as_str()).collect::<Vec<_>>(), ["good"], "{read:?}");
    // The same for messages: garbage first, then a good one, until heard.
    let (_watch, mut rx) = watching(&a);
    let mut seen = Vec::new();
    let channel = a.channel();
    let heard = wait_for(
        &mut rx,
        &mut seen,
        |n| n.model == "good-message",
        || {
            let (mut conn, channel) = (conn.clone(), channel.clone());
            async move {
                let huge = vec![b'x'; 100_000];
                for garbage in [
                    &b"1\nm\n-1\nb\ntimeout"[..],
                    b"\xff\xff",
                    b"1\nm\n99999999999999999999\nb\ntimeout",
                    &huge,
                    b"1\nm\n1000\nb\ntimeout\n",
                    b"1\ngood-message\n1000\nb\ntimeout",
                ] {
                    publish_raw(&mut conn, &channel, garbage).await;
                }
            }
        },
    )
    .await;
    assert!(heard.is_some());
    assert!(seen.iter().all(|n| n.model == "good" || n.model == "good-message"), "{seen:?}");
}

#[tokio::test]
async fn an_unreachable_redis_fails_each_call_in_time_without_the_url() {
    // A port nothing listens on: bound, then closed.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("redis://fleet:s3cret-pw@127.0.0.1:{port}/0");
    let config = EjectionsConfig { url: &url, prefix: "t:down", replica: "a", timeout: Duration::from_millis(300) };
    let shared = SharedEjections::connect(&config).await.expect("an unreachable Redis is no reason not to start");
    assert!(!shared.reachable());
    let published = shared.publish("m", Duration::from_secs(5), "server_error").await;
    let Err(ClusterError::Unavailable(why)) = published else { panic!("{published:?}") };
    assert!(!why.contains("s3cret") && !why.contains("fleet:"), "{why}");
    assert!(matches!(shared.read().await, Err(ClusterError::Unavailable(_))));
    assert!(!format!("{shared:?} {config:?}").contains("s3cret"));
    // What cannot work at all is refused at once, the URL unsaid.
    for (url, prefix) in [("http://fleet:s3cret-pw@x", "ok"), (url.as_str(), "Not*A*Prefix")] {
        let config = EjectionsConfig { url, prefix, replica: "a", timeout: Duration::from_millis(300) };
        let refused = SharedEjections::connect(&config).await;
        let Err(ClusterError::Invalid(why)) = refused else { panic!("{refused:?}") };
        assert!(!why.contains("s3cret"), "{why}");
    }
}

/// How the proxy treats connections.
const OPEN: u8 = 0;
const CUT: u8 = 1;
const STALLED: u8 = 2;

/// A loopback TCP proxy to Redis that the test can cut (refusing and
/// closing connections), stall (a silent network: connections stay open
/// and carry nothing) and restore (new connections work; stalled ones stay
/// silent, as after a real partition).
struct Proxy {
    port: u16,
    mode: Arc<AtomicU8>,
    /// Bumped at each cut or stall: connections forwarding before stop.
    epoch: Arc<AtomicU64>,
    /// Connections open now.
    open: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mode, epoch, open) =
            (Arc::new(AtomicU8::new(OPEN)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (mode_, epoch_, open_) = (Arc::clone(&mode), Arc::clone(&epoch), Arc::clone(&open));
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (upstream, mode, epoch, open) =
                    (upstream.clone(), Arc::clone(&mode_), Arc::clone(&epoch_), Arc::clone(&open_));
                if mode.load(Ordering::SeqCst) == CUT {
                    continue; // dropped: refused
                }
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _closed = Closed(open);
                    let born = epoch.load(Ordering::SeqCst);
                    if mode.load(Ordering::SeqCst) == OPEN {
                        let Ok(mut server) = TcpStream::connect(&upstream).await else { return };
                        let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
                        let stopped = async {
                            while epoch.load(Ordering::SeqCst) == born {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        };
                        tokio::pin!(copy, stopped);
                        tokio::select! {
                            _ = &mut copy => return,
                            () = &mut stopped => {}
                        }
                        // Stalled or cut: hold the sockets, carrying nothing, until cut.
                        while mode.load(Ordering::SeqCst) != CUT {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    } else {
                        while mode.load(Ordering::SeqCst) != CUT {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                });
            }
        });
        Proxy { port, mode, epoch, open, task }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Refuses new connections and closes the open ones (returns once
    /// they are closed).
    async fn cut(&self) {
        self.mode.store(CUT, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.open.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The network goes silent: nothing is carried, nothing is closed.
    async fn stall(&self) {
        self.mode.store(STALLED, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        // Every forwarding task sees it within its 10 ms poll.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    fn restore(&self) {
        self.mode.store(OPEN, Ordering::SeqCst);
    }
}

/// Counts a proxied connection closed, however its task ends.
struct Closed(Arc<AtomicU64>);

impl Drop for Closed {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.mode.store(CUT, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharing_stops_while_redis_is_cut_off_and_comes_back_by_itself() {
    let Some(url) = redis_url() else { return };
    let prefix = Prefix::new(&url, "recover");
    let proxy = Proxy::start(redis_address(&url)).await;
    let config =
        EjectionsConfig { url: &proxy.url(), prefix: &prefix.name, replica: "a", timeout: Duration::from_millis(500) };
    let a = SharedEjections::connect(&config).await.unwrap();
    let b = replica(&url, &prefix, "b").await;
    let (_watch, mut rx) = watching(&a);
    let mut seen = Vec::new();
    assert!(a.publish("before", Duration::from_secs(30), "timeout").await.unwrap());
    assert!(a.reachable());

    proxy.cut().await;
    let failed = a.publish("during", Duration::from_secs(30), "timeout").await;
    assert!(matches!(failed, Err(ClusterError::Unavailable(_))), "{failed:?}");
    assert!(!a.reachable());
    // Another replica's ejection while cut off: missed by the subscriber.
    b.publish("missed", Duration::from_mins(1), "server_error").await.unwrap();

    proxy.restore();
    // Calls get through again with no help…
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.publish("after", Duration::from_secs(30), "timeout").await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "Redis never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(a.reachable());
    // …the missed ejection heals at a re-read…
    let healed = wait_for(&mut rx, &mut seen, |n| n.model == "missed", nothing).await;
    assert!(healed.is_some_and(|n| n.replica == "b"));
    // …and the subscriber is back: a message with no key is heard.
    let conn = raw(&url).await;
    let channel = a.channel();
    let heard = wait_for(
        &mut rx,
        &mut seen,
        |n| n.model == "message-after",
        || {
            let (mut conn, channel) = (conn.clone(), channel.clone());
            async move {
                publish_raw(&mut conn, &channel, "1\nmessage-after\n5000\nb\nserver_error".as_bytes()).await;
            }
        },
    )
    .await;
    assert!(heard.is_some(), "the subscriber reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_network_is_left_for_a_new_connection() {
    let Some(url) = redis_url() else { return };
    let prefix = Prefix::new(&url, "silent");
    let proxy = Proxy::start(redis_address(&url)).await;
    let config =
        EjectionsConfig { url: &proxy.url(), prefix: &prefix.name, replica: "a", timeout: Duration::from_millis(300) };
    let a = SharedEjections::connect(&config).await.unwrap();
    let (_watch, mut rx) = watching(&a);
    let mut seen = Vec::new();
    let (conn, channel) = (raw(&url).await, a.channel());
    let message = |model: &'static str| {
        let (mut conn, channel) = (conn.clone(), channel.clone());
        async move { publish_raw(&mut conn, &channel, format!("1\n{model}\n5000\nb\ntimeout").as_bytes()).await }
    };
    assert!(wait_for(&mut rx, &mut seen, |n| n.model == "before", || message("before")).await.is_some());
    assert!(a.publish("before", Duration::from_secs(30), "timeout").await.unwrap());

    proxy.stall().await;
    let failed = a.publish("during", Duration::from_secs(30), "timeout").await;
    assert!(matches!(failed, Err(ClusterError::Unavailable(_))), "{failed:?}");
    assert!(!a.reachable());

    // The silent connections stay silent: only new ones carry anything.
    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.publish("after", Duration::from_secs(30), "timeout").await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "calls never left the silent connection");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The subscriber's ping finds its connection silent, and it subscribes again.
    assert!(wait_for(&mut rx, &mut seen, |n| n.model == "after", || message("after")).await.is_some());
}
