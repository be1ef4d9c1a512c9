//! Failed authentications are rate limited per client address: after
//! [`MAX_FAILURES`] answers of 401 within [`WINDOW`] to one address, that
//! address is refused with 429 and `Retry-After` until the window that began
//! with its first failure ends, whatever key it then presents. A key cannot
//! be guessed at the speed of the network.
//!
//! What it does not lock out:
//! - loopback peers: on this machine every client (and a reverse proxy on
//!   the same host) is `127.0.0.1`, and one misconfigured script would lock
//!   out all of them;
//! - `/health/*`: an orchestrator's probes must still reach the gateway.
//!
//! `[server] auth_lockout = "all"` counts loopback peers too (a machine
//! shared with people who should not guess keys). Behind a reverse proxy on
//! another host every client shares its address: set `"off"` there (the
//! proxy should rate limit).
//!
//! Addresses are counted in a fixed table of [`BUCKETS`] atomic counters,
//! indexed by a hash of the address (IPv6 by its /64, which one subscriber
//! holds) under a per-process random key: memory is fixed, no lock is
//! taken, and a flood of addresses cannot push the guesser's own out. Two
//! addresses may share a bucket (one in 16,384, not choosable from outside);
//! then they share a lockout. Every failure is counted
//! (`modelfleet_gateway_auth_failures_total`).

use std::{
    hash::{BuildHasher, RandomState},
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use modelfleet::config::AuthLockout;

use crate::wire::ApiError;

/// Failures within [`WINDOW`] after which an address is refused.
pub(crate) const MAX_FAILURES: u32 = 10;
/// The window failures are counted in, from an address's first failure.
pub(crate) const WINDOW: Duration = Duration::from_mins(1);
/// Counters in the table.
pub(crate) const BUCKETS: usize = 16_384;

/// Failed authentications per client address.
#[derive(Debug)]
pub(crate) struct Lockout {
    /// Which addresses are locked out (`[server] auth_lockout`).
    scope: AuthLockout,
    /// Seconds are counted from here.
    origin: Instant,
    /// The hash key, random per process.
    hasher: RandomState,
    /// Per bucket: the window's start (seconds since `origin`, high 32 bits)
    /// and the failures in it (low 32 bits).
    buckets: Box<[AtomicU64]>,
    /// Every failure since start.
    pub(crate) failures: AtomicU64,
}

impl Lockout {
    pub(crate) fn new(scope: AuthLockout) -> Lockout {
        Lockout {
            scope,
            origin: Instant::now(),
            hasher: RandomState::new(),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            failures: AtomicU64::new(0),
        }
    }

    /// Whether failures from `ip` count toward its lockout.
    fn applies(&self, ip: IpAddr) -> bool {
        match self.scope {
            AuthLockout::Remote => !ip.is_loopback(),
            AuthLockout::All => true,
            AuthLockout::Off => false,
        }
    }

    fn bucket(&self, ip: IpAddr) -> &AtomicU64 {
        let key: u128 = match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            // One subscriber holds a whole /64.
            IpAddr::V6(v6) => u128::from(v6) >> 64 | 1 << 127,
        };
        let index = usize::try_from(self.hasher.hash_one(key) % BUCKETS as u64).unwrap_or(0);
        &self.buckets[index]
    }

    fn seconds(&self, now: Instant) -> u64 {
        // +1 so that a window starting at the origin is not the empty 0.
        now.saturating_duration_since(self.origin).as_secs() + 1
    }

    /// How long `ip` is still refused at `now`, if it is (rounded up to a
    /// whole second, so a client waiting that long is let in).
    pub(crate) fn locked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if !self.applies(ip) {
            return None;
        }
        let (start, failures) = unpack(self.bucket(ip).load(Ordering::Relaxed));
        let end = start + WINDOW.as_secs();
        let now = self.seconds(now);
        (start > 0 && failures >= MAX_FAILURES && now < end).then(|| Duration::from_secs(end - now))
    }

    /// Records a failed authentication from `ip` at `now`.
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if !self.applies(ip) {
            return;
        }
        let now = self.seconds(now);
        let _ = self.bucket(ip).fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
            let (start, failures) = unpack(packed);
            Some(if start == 0 || now >= start + WINDOW.as_secs() {
                pack(now, 1)
            } else {
                pack(start, failures.saturating_add(1))
            })
        });
    }
}

fn pack(start: u64, failures: u32) -> u64 {
    (start.min(u64::from(u32::MAX)) << 32) | u64::from(failures)
}

fn unpack(packed: u64) -> (u64, u32) {
    (packed >> 32, u32::try_from(packed & u64::from(u32::MAX)).unwrap_or(u32::MAX))
}

/// The middleware: refuses a locked-out address before authentication, and
/// counts every 401 against the address it went to.
pub(crate) async fn check(State(lockout): State<std::sync::Arc<Lockout>>, request: Request, next: Next) -> Response {
    let ip = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip());
    let Some(ip) = ip.filter(|_| !request.uri().path().starts_with("/health/")) else {
        return next.run(request).await;
    };
    if let Some(left) = lockout.locked(ip, Instant::now()) {
        let seconds = left.as_secs().max(1);
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "too_many_auth_failures",
            format!(
                "{MAX_FAILURES} failed authentications from this address within {} s: refused for {seconds} s more",
                WINDOW.as_secs()
            ),
        )
        .into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        return response;
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        lockout.failed(ip, Instant::now());
    }
    response
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn an_address_is_refused_after_its_failures_until_its_window_ends() {
        let lockout = Lockout::new(AuthLockout::Remote);
        let t0 = lockout.origin;
        for i in 0..MAX_FAILURES - 1 {
            lockout.failed(ip(1), t0 + secs(u64::from(i)));
        }
        assert_eq!(lockout.locked(ip(1), t0 + secs(9)), None, "one failure short");
        lockout.failed(ip(1), t0 + secs(9));
        assert_eq!(lockout.locked(ip(1), t0 + secs(10)), Some(secs(50)));
        assert_eq!(lockout.locked(ip(1), t0 + Duration::from_millis(59_500)), Some(secs(1)), "rounded up");
        assert_eq!(lockout.locked(ip(1), t0 + WINDOW), None, "the window ended");
        // A new window starts with the next failure.
        lockout.failed(ip(1), t0 + WINDOW);
        assert_eq!(lockout.locked(ip(1), t0 + WINDOW), None);
        assert_eq!(lockout.failures.load(Ordering::Relaxed), u64::from(MAX_FAILURES) + 1);
    }

    #[test]
    fn failures_spread_over_more_than_a_window_never_lock_out() {
        let lockout = Lockout::new(AuthLockout::Remote);
        let t0 = lockout.origin;
        for i in 0..30u64 {
            lockout.failed(ip(1), t0 + secs(i * 7));
            assert_eq!(lockout.locked(ip(1), t0 + secs(i * 7)), None, "failure {i}");
        }
    }

    #[test]
    fn loopback_peers_are_never_locked_out_nor_anyone_when_disabled() {
        let lockout = Lockout::new(AuthLockout::Remote);
        let t0 = lockout.origin;
        for peer in [IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)] {
            for _ in 0..50 {
                lockout.failed(peer, t0);
            }
            assert_eq!(lockout.locked(peer, t0), None, "{peer}");
        }
        let off = Lockout::new(AuthLockout::Off);
        for _ in 0..50 {
            off.failed(ip(1), off.origin);
        }
        assert_eq!(off.locked(ip(1), off.origin), None);
        assert_eq!(off.failures.load(Ordering::Relaxed), 50, "still counted");
    }

    #[test]
    fn all_counts_loopback_peers_too() {
        let lockout = Lockout::new(AuthLockout::All);
        let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for _ in 0..MAX_FAILURES {
            lockout.failed(local, lockout.origin);
        }
        assert_eq!(lockout.locked(local, lockout.origin), Some(WINDOW));
    }

    #[test]
    fn an_ipv6_subscriber_is_one_address_whatever_its_interface_id() {
        let lockout = Lockout::new(AuthLockout::Remote);
        let t0 = lockout.origin;
        let prefix: u128 = 0x2001_0db8_0001_0002 << 64;
        for i in 0..u128::from(MAX_FAILURES) {
            lockout.failed(IpAddr::V6(Ipv6Addr::from(prefix | (i + 1))), t0);
        }
        let another = IpAddr::V6(Ipv6Addr::from(prefix | 0xdead_beef));
        assert_eq!(lockout.locked(another, t0), Some(WINDOW), "the same /64");
    }

    #[test]
    fn a_flood_of_other_addresses_does_not_free_the_guesser() {
        let lockout = Lockout::new(AuthLockout::Remote);
        let t0 = lockout.origin;
        for _ in 0..MAX_FAILURES {
            lockout.failed(ip(7), t0);
        }
        for i in 0..100_000u32 {
            lockout.failed(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)), t0);
        }
        assert!(lockout.locked(ip(7), t0 + secs(1)).is_some(), "still locked out");
    }
}
