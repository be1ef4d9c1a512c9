//! Ejections shared through Redis: "model X is ejected until T (reason)",
//! told by the replica that ejected it to every other replica (see the
//! crate docs for the design and its failure modes).
//!
//! # Keys and messages
//! - `{prefix}:ejected:{model}`: a string `1\n{replica}\n{reason}` whose
//!   time to live (PX) is what is left of the ejection. Written by a small
//!   Lua script ([`PUBLISH_SCRIPT`]) that reads the key's `PTTL` first and
//!   writes only when the new ejection ends later: a longer ejection already
//!   there is never shortened, and the check and the write are one atomic
//!   step on the server, so two replicas ejecting at once keep the longer.
//! - The same script publishes `1\n{model}\n{remaining_ms}\n{replica}\n{reason}`
//!   on `{prefix}:ejections` when it wrote (a shorter ejection tells nobody
//!   anything new).
//!
//! Fields are checked on the way in and out: a model name of at most
//! [`MAX_MODEL_LEN`] bytes, a replica name of at most 128, a reason of at
//! most 64 lower-case letters, digits and `_`, no control characters (so
//! the newline separates fields unambiguously), at most [`MAX_EJECTION`].
//! What is read and fails a check (a corrupt or hostile value, another
//! program's key) is skipped with a warning, at most one a minute.

use std::{
    future::Future,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use redis::{
    RedisResult, Value,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use crate::ClusterError;

/// The longest model name shared, in bytes.
pub const MAX_MODEL_LEN: usize = 256;
/// The longest ejection shared: a longer one is shared for this long.
pub const MAX_EJECTION: Duration = Duration::from_hours(24);
/// How often every replica re-reads the ejected keys, so that a missed
/// message (a subscriber reconnecting) heals.
pub const REREAD_EVERY: Duration = Duration::from_secs(1);

const MAX_REPLICA_LEN: usize = 128;
const MAX_REASON_LEN: usize = 64;
const MAX_PREFIX_LEN: usize = 64;
/// The longest value or message read; longer ones are corrupt.
const MAX_VALUE_LEN: usize = 1_024;
/// Keys one SCAN step asks for.
const SCAN_COUNT: usize = 100;
/// Ejected keys one re-read looks at, at most.
const MAX_KEYS_PER_READ: usize = 10_000;
/// SCAN steps one re-read makes, at most (a Redis shared with many other
/// keys is walked over several re-reads, each going on where the last
/// stopped).
const MAX_SCAN_STEPS: usize = 100;
/// How long the subscriber waits for a message before it pings.
const PING_EVERY: Duration = Duration::from_secs(5);
/// The subscriber's reconnection backoff.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// At most one warning about corrupt entries per this.
const CORRUPT_WARNING_EVERY: Duration = Duration::from_mins(1);

/// The format's version, first in every value and message.
const VERSION: &str = "1";

/// Sets the ejection's key unless a longer one is there, and publishes it
/// when it did. `KEYS[1]`: the key; `ARGV`: the time to live in ms, the
/// value, the channel, the message. Returns 1 when it wrote, 0 when a
/// longer ejection stays. A key without a time to live (-1, written by
/// something else) is overwritten: an ejection never lasts forever.
pub const PUBLISH_SCRIPT: &str = r"
local left = redis.call('PTTL', KEYS[1])
if left >= tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
";

/// An ejection another replica shares: `model` is out for `remaining`
/// (as of when it was read), because of `reason` (an error class's
/// snake-case name, or `circuit_open`), on `replica`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EjectionNotice {
    /// The model's id.
    pub model: String,
    /// What is left of the ejection when it was read or received.
    pub remaining: Duration,
    /// The replica that ejected it.
    pub replica: String,
    /// Why: `server_error`, `timeout`, `rate_limited`, …, or `circuit_open`.
    pub reason: String,
}

/// Where and as whom [`SharedEjections`] connects.
#[derive(Clone, Copy)]
pub struct EjectionsConfig<'a> {
    /// `redis://[user:password@]host:port[/db]`. Never printed.
    pub url: &'a str,
    /// Every key and the channel start with it: lower-case letters,
    /// digits, `_`, `:` and `-`, at most 64.
    pub prefix: &'a str,
    /// This replica's name on what it publishes; what carries it is
    /// ignored when read back. Unique per running fleet.
    pub replica: &'a str,
    /// The longest any call to Redis takes before it counts as a failure.
    pub timeout: Duration,
}

impl std::fmt::Debug for EjectionsConfig<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EjectionsConfig")
            .field("url", &"<redacted>")
            .field("prefix", &self.prefix)
            .field("replica", &self.replica)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Ejections shared with the other replicas through Redis: cheap to clone
/// (one `Arc`). [`SharedEjections::publish`] tells them of one of this
/// replica's; [`SharedEjections::watch`] hears of theirs.
///
/// Redis down never stops a caller: every call fails within the timeout
/// with [`ClusterError::Unavailable`] and the first failure is logged once
/// (a warning without the URL); the connection comes back by itself, and
/// that is logged too. Sharing is then local-only until it returns.
#[derive(Clone)]
pub struct SharedEjections {
    inner: Arc<Inner>,
}

struct Inner {
    /// For the subscriber's own connections.
    client: redis::Client,
    /// Every other call: one multiplexed connection, reconnecting when it
    /// drops. Replaced by a new one when a call times out: a connection
    /// the network went silent on never drops by itself. (The lock is held
    /// only to clone or replace it, never across an await.)
    manager: Mutex<ConnectionManager>,
    manager_config: ConnectionManagerConfig,
    script: redis::Script,
    prefix: String,
    replica: String,
    timeout: Duration,
    /// What may not leave the process: the URL, and its password.
    secrets: Vec<String>,
    /// Whether the last call got through (logged when it changes).
    reachable: AtomicBool,
    /// When corrupt entries were last warned about.
    corrupt_warned: Mutex<Option<Instant>>,
    /// Where the next re-read's SCAN starts: 0, unless the last one
    /// stopped at its bound before the end.
    cursor: Mutex<u64>,
}

impl std::fmt::Debug for SharedEjections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client's settings hold the URL's password: never printed.
        f.debug_struct("SharedEjections")
            .field("prefix", &self.inner.prefix)
            .field("replica", &self.inner.replica)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

/// Stops hearing of other replicas' ejections when dropped.
#[derive(Debug)]
#[must_use = "dropping the watch stops it"]
pub struct EjectionWatch {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for EjectionWatch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl SharedEjections {
    /// Checks the settings and connects; an unreachable Redis is not an
    /// error (it is logged, and every call retries it): only a URL that
    /// does not parse, a prefix or a replica name that is not allowed.
    /// Call it inside a tokio runtime.
    pub async fn connect(config: &EjectionsConfig<'_>) -> Result<SharedEjections, ClusterError> {
        check_prefix(config.prefix)?;
        check_text(config.replica, MAX_REPLICA_LEN)
            .map_err(|why| ClusterError::Invalid(format!("replica name: {why}")))?;
        let secrets = secrets_of(config.url);
        // The driver's message may quote the URL: never passed on.
        let invalid = |err: &redis::RedisError| {
            ClusterError::Invalid(format!("redis_url: {}", scrub(&err.to_string(), &secrets)))
        };
        let client = redis::Client::open(config.url).map_err(|e| invalid(&e))?;
        let timeout = config.timeout.max(Duration::from_millis(1));
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(BACKOFF_MIN)
            .set_max_delay(BACKOFF_MAX);
        let manager =
            ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone()).map_err(|e| invalid(&e))?;
        let shared = SharedEjections {
            inner: Arc::new(Inner {
                client,
                manager: Mutex::new(manager),
                manager_config,
                script: redis::Script::new(PUBLISH_SCRIPT),
                prefix: config.prefix.to_owned(),
                replica: config.replica.to_owned(),
                timeout,
                secrets,
                reachable: AtomicBool::new(true),
                corrupt_warned: Mutex::new(None),
                cursor: Mutex::new(0),
            }),
        };
        // A first look, so that an unreachable Redis is said at start.
        let mut conn = shared.connection();
        let _ = shared.within(redis::cmd("PING").query_async::<Value>(&mut conn)).await;
        Ok(shared)
    }

    /// This replica's name, as it publishes it.
    #[must_use]
    pub fn replica(&self) -> &str {
        &self.inner.replica
    }

    /// Whether the last call to Redis got through.
    #[must_use]
    pub fn reachable(&self) -> bool {
        self.inner.reachable.load(Ordering::Relaxed)
    }

    /// `{prefix}:ejected:{model}`.
    #[must_use]
    pub fn key(&self, model: &str) -> String {
        format!("{}:ejected:{model}", self.inner.prefix)
    }

    /// `{prefix}:ejections`.
    #[must_use]
    pub fn channel(&self) -> String {
        format!("{}:ejections", self.inner.prefix)
    }

    /// Tells the other replicas that `model` is ejected for `remaining`
    /// (at most [`MAX_EJECTION`]) because of `reason`: sets its key with
    /// that time to live and publishes it, unless a longer ejection of it
    /// is there already (then nothing changes: `Ok(false)`). A zero
    /// `remaining` does nothing.
    pub async fn publish(&self, model: &str, remaining: Duration, reason: &str) -> Result<bool, ClusterError> {
        check_text(model, MAX_MODEL_LEN).map_err(|why| ClusterError::Invalid(format!("model name: {why}")))?;
        check_reason(reason).map_err(|why| ClusterError::Invalid(format!("reason: {why}")))?;
        let ms = u64::try_from(remaining.min(MAX_EJECTION).as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return Ok(false);
        }
        let replica = &self.inner.replica;
        let value = format!("{VERSION}\n{replica}\n{reason}");
        let message = format!("{VERSION}\n{model}\n{ms}\n{replica}\n{reason}");
        let mut conn = self.connection();
        let mut invocation = self.inner.script.key(self.key(model));
        invocation.arg(ms).arg(value).arg(self.channel()).arg(message);
        let wrote: i64 = self.within(invocation.invoke_async(&mut conn)).await?;
        Ok(wrote == 1)
    }

    /// One re-read: every other replica's ejection in force (this
    /// replica's own are left out), with what is left of it; corrupt
    /// entries are skipped (with a warning). Bounded: at most 100 SCAN
    /// steps of 100 keys and 10,000 ejected keys; when a bound stops it
    /// before the end of the keyspace, the next read goes on from there (a
    /// Redis holding many other keys is so walked over several reads: give
    /// the replicas a database of their own, `redis://host/2`).
    pub async fn read(&self) -> Result<Vec<EjectionNotice>, ClusterError> {
        let key_prefix = format!("{}:ejected:", self.inner.prefix);
        let pattern = format!("{key_prefix}*");
        let mut conn = self.connection();
        let mut cursor = *self.inner.cursor.lock().unwrap_or_else(PoisonError::into_inner);
        let mut steps = 0;
        let mut looked = 0;
        let mut out = Vec::new();
        let mut corrupt: Option<(usize, String)> = None;
        let mut skip = |why: String| {
            let entry = corrupt.get_or_insert((0, why));
            entry.0 += 1;
        };
        loop {
            let scan = redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(SCAN_COUNT).clone();
            let (next, keys): (u64, Vec<Vec<u8>>) = self.within(scan.query_async(&mut conn)).await?;
            looked += keys.len();
            // Only keys that can be ours are read at all.
            let mut models = Vec::with_capacity(keys.len());
            for key in &keys {
                match model_of(key, key_prefix.as_bytes()) {
                    Ok(model) => models.push(model),
                    Err(why) => skip(format!("key {}: {why}", printable(key))),
                }
            }
            if !models.is_empty() {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for model in &models {
                    let key = self.key(model);
                    // A bounded read: a huge value is never fetched whole.
                    pipe.cmd("GETRANGE").arg(&key).arg(0).arg(MAX_VALUE_LEN).cmd("PTTL").arg(&key);
                }
                let replies: Vec<RedisResult<Value>> = self.within(pipe.query_async(&mut conn)).await?;
                for (model, reply) in models.into_iter().zip(replies.chunks(2)) {
                    match notice_of_key(model, reply) {
                        Ok(Some(notice)) if notice.replica != self.inner.replica => out.push(notice),
                        Ok(_) => {}
                        Err(why) => skip(format!("{key_prefix}{model}: {why}")),
                    }
                }
            }
            cursor = next;
            steps += 1;
            if cursor == 0 || looked >= MAX_KEYS_PER_READ || steps >= MAX_SCAN_STEPS {
                break;
            }
        }
        *self.inner.cursor.lock().unwrap_or_else(PoisonError::into_inner) = cursor;
        if let Some((count, first)) = corrupt {
            self.corrupt(&format!("{count} ejected key(s) skipped, e.g. {first}"));
        }
        Ok(out)
    }

    /// Hears of other replicas' ejections: `on_notice` is called with each
    /// one as it is published (a subscriber on `{prefix}:ejections`,
    /// reconnecting with a backoff of 0.1 s to 5 s), and with every one in
    /// force at each re-read ([`REREAD_EVERY`]), so a missed message heals
    /// within a second. The same ejection may so be told more than once;
    /// this replica's own never. `on_notice` runs on a tokio worker: it
    /// must not block. Stops when the watch is dropped.
    pub fn watch(&self, on_notice: impl Fn(EjectionNotice) + Send + Sync + 'static) -> EjectionWatch {
        let on_notice: Arc<dyn Fn(EjectionNotice) + Send + Sync> = Arc::new(on_notice);
        let subscriber = tokio::spawn(self.clone().subscribe(Arc::clone(&on_notice)));
        let rereader = tokio::spawn(self.clone().reread(on_notice));
        EjectionWatch { tasks: vec![subscriber, rereader] }
    }

    async fn reread(self, on_notice: Arc<dyn Fn(EjectionNotice) + Send + Sync>) {
        let mut every = tokio::time::interval(REREAD_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            // A failure is logged by `within` when Redis goes away.
            if let Ok(notices) = self.read().await {
                for notice in notices {
                    on_notice(notice);
                }
            }
        }
    }

    async fn subscribe(self, on_notice: Arc<dyn Fn(EjectionNotice) + Send + Sync>) {
        let channel = self.channel();
        let mut backoff = BACKOFF_MIN;
        loop {
            let subscribed = self
                .within(async {
                    let mut pubsub = self.inner.client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok(pubsub)
                })
                .await;
            if let Ok(pubsub) = subscribed {
                backoff = BACKOFF_MIN;
                let (mut sink, mut stream) = pubsub.split();
                loop {
                    match tokio::time::timeout(PING_EVERY, stream.next()).await {
                        Ok(Some(message)) => match notice_of_message(message.get_payload_bytes()) {
                            Ok(notice) if notice.replica != self.inner.replica => on_notice(notice),
                            Ok(_) => {}
                            Err(why) => self.corrupt(&format!("a message on {channel} skipped: {why}")),
                        },
                        // The connection closed.
                        Ok(None) => break,
                        // Quiet for a while: is the connection still there?
                        Err(_) => {
                            if self.within(sink.ping::<Value>()).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
            let jitter = Duration::from_millis(fastrand::u64(0..=backoff_ms(backoff) / 2));
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// The shared connection (a clone: it multiplexes).
    fn connection(&self) -> ConnectionManager {
        self.inner.manager.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Leaves the shared connection for a new one, connected at its first
    /// call: the old one may be waiting on a network gone silent, which
    /// only the OS would notice, minutes later.
    fn renew(&self) {
        let fresh =
            ConnectionManager::new_lazy_with_config(self.inner.client.clone(), self.inner.manager_config.clone());
        if let Ok(fresh) = fresh {
            *self.inner.manager.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
        }
    }

    /// `work` within the timeout; a failure is [`ClusterError::Unavailable`]
    /// (scrubbed of the URL) and, when Redis was reachable until then,
    /// logged once. A timeout renews the shared connection.
    async fn within<T>(&self, work: impl Future<Output = RedisResult<T>>) -> Result<T, ClusterError> {
        let outcome = match tokio::time::timeout(self.inner.timeout, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                if err.is_timeout() {
                    self.renew();
                }
                Err(ClusterError::Unavailable(scrub(&err.to_string(), &self.inner.secrets)))
            }
            Err(_) => {
                self.renew();
                Err(ClusterError::Unavailable(format!("no answer within {} ms", self.inner.timeout.as_millis())))
            }
        };
        match &outcome {
            Ok(_) => {
                if !self.inner.reachable.swap(true, Ordering::Relaxed) {
                    tracing::info!(prefix = %self.inner.prefix, "Redis is reachable again: ejections are shared again");
                }
            }
            Err(err) => {
                if self.inner.reachable.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        prefix = %self.inner.prefix,
                        %err,
                        "Redis is unreachable: ejections stay local to this replica until it returns"
                    );
                }
            }
        }
        outcome
    }

    /// Warns about corrupt entries, at most once a minute.
    fn corrupt(&self, what: &str) {
        let mut warned = self.inner.corrupt_warned.lock().unwrap_or_else(PoisonError::into_inner);
        if warned.is_some_and(|at| at.elapsed() < CORRUPT_WARNING_EVERY) {
            return;
        }
        *warned = Some(Instant::now());
        tracing::warn!(prefix = %self.inner.prefix, "corrupt shared ejections ignored: {what}");
    }
}

fn backoff_ms(backoff: Duration) -> u64 {
    u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX)
}

/// The prefix: 1 to 64 of `a-z`, `0-9`, `_`, `:`, `-` (none of them
/// special in a SCAN pattern).
fn check_prefix(prefix: &str) -> Result<(), ClusterError> {
    let valid = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b':' | b'-'));
    if valid {
        return Ok(());
    }
    Err(ClusterError::Invalid(format!(
        "redis prefix {prefix:?}: 1 to {MAX_PREFIX_LEN} lower-case letters, digits, '_', ':' or '-'"
    )))
}

/// A model or replica name: 1 to `max` bytes, no control characters.
fn check_text(text: &str, max: usize) -> Result<(), String> {
    if text.is_empty() {
        return Err("empty".to_owned());
    }
    if text.len() > max {
        return Err(format!("{} bytes, at most {max}", text.len()));
    }
    if text.chars().any(char::is_control) {
        return Err("a control character".to_owned());
    }
    Ok(())
}

/// A reason: 1 to 64 of `a-z`, `0-9`, `_`.
fn check_reason(reason: &str) -> Result<(), String> {
    let valid = !reason.is_empty()
        && reason.len() <= MAX_REASON_LEN
        && reason.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid { Ok(()) } else { Err(format!("{:?} is not a reason", printable(reason.as_bytes()))) }
}

/// A ms count: 1 ms to [`MAX_EJECTION`].
fn check_remaining(ms: i64) -> Result<Duration, String> {
    let max = i64::try_from(MAX_EJECTION.as_millis()).unwrap_or(i64::MAX);
    if (1..=max).contains(&ms) {
        return Ok(Duration::from_millis(ms.unsigned_abs()));
    }
    Err(format!("an ejection of {ms} ms (1 ms to {max} ms)"))
}

/// At most 64 bytes of `bytes`, readable in a log line.
fn printable(bytes: &[u8]) -> String {
    let shown: String = String::from_utf8_lossy(&bytes[..bytes.len().min(64)]).escape_debug().collect();
    if bytes.len() > 64 { format!("{shown}…") } else { shown }
}

/// The model a key names (the key starts with the prefix: SCAN matched it).
fn model_of<'k>(key: &'k [u8], prefix: &[u8]) -> Result<&'k str, String> {
    let rest = key.strip_prefix(prefix).ok_or_else(|| "not under the prefix".to_owned())?;
    let model = std::str::from_utf8(rest).map_err(|_| "not UTF-8".to_owned())?;
    check_text(model, MAX_MODEL_LEN)?;
    Ok(model)
}

/// A key's value and time to live (`GETRANGE`, `PTTL`) as a notice;
/// `None` when it is gone (expired between SCAN and the read).
fn notice_of_key(model: &str, reply: &[RedisResult<Value>]) -> Result<Option<EjectionNotice>, String> {
    let [value, ttl] = reply else { return Err("no reply".to_owned()) };
    let ttl: i64 = match ttl {
        Ok(ttl) => redis::from_redis_value_ref(ttl).map_err(|_| "a time to live that is not a number".to_owned())?,
        Err(err) => return Err(format!("PTTL failed ({})", err.category())),
    };
    match ttl {
        -2 => return Ok(None),
        -1 => return Err("no time to live".to_owned()),
        _ => {}
    }
    let remaining = check_remaining(ttl)?;
    let value: Vec<u8> = match value {
        Ok(Value::Nil) => return Ok(None),
        Ok(value) => redis::from_redis_value_ref(value).map_err(|_| "not a string".to_owned())?,
        // Another type of value (WRONGTYPE): not ours.
        Err(err) => return Err(format!("not a string ({})", err.category())),
    };
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(format!("a value over {MAX_VALUE_LEN} bytes"));
    }
    let text = std::str::from_utf8(&value).map_err(|_| "not UTF-8".to_owned())?;
    let mut fields = text.split('\n');
    let (Some(VERSION), Some(replica), Some(reason), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(format!("{:?} is not `1\\nreplica\\nreason`", printable(&value)));
    };
    check_text(replica, MAX_REPLICA_LEN).map_err(|why| format!("replica name: {why}"))?;
    check_reason(reason)?;
    Ok(Some(EjectionNotice {
        model: model.to_owned(),
        remaining,
        replica: replica.to_owned(),
        reason: reason.to_owned(),
    }))
}

/// A message on the channel as a notice.
fn notice_of_message(payload: &[u8]) -> Result<EjectionNotice, String> {
    if payload.len() > MAX_VALUE_LEN + MAX_MODEL_LEN {
        return Err(format!("{} bytes", payload.len()));
    }
    let text = std::str::from_utf8(payload).map_err(|_| "not UTF-8".to_owned())?;
    let mut fields = text.split('\n');
    let (Some(VERSION), Some(model), Some(ms), Some(replica), Some(reason), None) =
        (fields.next(), fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(format!("{:?} is not `1\\nmodel\\nms\\nreplica\\nreason`", printable(payload)));
    };
    check_text(model, MAX_MODEL_LEN).map_err(|why| format!("model name: {why}"))?;
    let ms: i64 = ms.parse().map_err(|_| format!("{:?} is not a number of ms", printable(ms.as_bytes())))?;
    let remaining = check_remaining(ms)?;
    check_text(replica, MAX_REPLICA_LEN).map_err(|why| format!("replica name: {why}"))?;
    check_reason(reason)?;
    Ok(EjectionNotice { model: model.to_owned(), remaining, replica: replica.to_owned(), reason: reason.to_owned() })
}

/// The URL and, when it has one, its password: what [`scrub`] removes.
fn secrets_of(url: &str) -> Vec<String> {
    let mut secrets = vec![url.to_owned()];
    let userinfo = url.split_once("://").and_then(|(_, rest)| rest.rsplit_once('@')).map(|(info, _)| info);
    if let Some(info) = userinfo {
        let password = info.split_once(':').map_or(info, |(_, password)| password);
        if !password.is_empty() {
            secrets.push(password.to_owned());
        }
    }
    secrets
}

/// `text` without any of `secrets`.
fn scrub(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_owned(), |text, secret| text.replace(secret.as_str(), "<redacted>"))
}

#[cfg(test)]
#[path = "ejections_tests.rs"]
mod tests;
