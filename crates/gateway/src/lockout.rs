//! Failed authentications are rate limited per client address: after
//! [`MAX_FAILURES`] answers of 401 within [`WINDOW`] to one address, that
//! address is refused with 429 and `Retry-After` until the window that began
//! with its first failure ends, whatever key it then presents. A key cannot
//! be guessed at the speed of the network, and a locked-out address costs a
//! map lookup, not a key digest.
//!
//! Every failure is counted (`modelfleet_gateway_auth_failures_total`). The
//! map holds at most [`MAX_ADDRESSES`] addresses: when full, expired windows
//! are dropped first, and a new address beyond the bound is counted but not
//! tracked, so a flood of addresses cannot grow memory.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::wire::ApiError;

/// Failures within [`WINDOW`] after which an address is refused.
pub(crate) const MAX_FAILURES: u32 = 10;
/// The window failures are counted in, from an address's first failure.
pub(crate) const WINDOW: Duration = Duration::from_mins(1);
/// Addresses tracked at most.
pub(crate) const MAX_ADDRESSES: usize = 10_000;

/// Failed authentications per client address.
#[derive(Debug, Default)]
pub(crate) struct Lockout {
    /// Address → (start of its window, failures in it).
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    /// Every failure since start.
    pub(crate) failures: AtomicU64,
}

impl Lockout {
    /// How long `ip` is still refused at `now`, if it is.
    pub(crate) fn locked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let &(start, failures) = windows.get(&ip)?;
        let left = (start + WINDOW).checked_duration_since(now).filter(|left| !left.is_zero())?;
        (failures >= MAX_FAILURES).then_some(left)
    }

    /// Records a failed authentication from `ip` at `now`.
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if !windows.contains_key(&ip) && windows.len() >= MAX_ADDRESSES {
            windows.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if windows.len() >= MAX_ADDRESSES {
                return;
            }
        }
        let entry = windows.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.windows.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// The middleware: refuses a locked-out address before authentication, and
/// counts every 401 against the address it went to.
pub(crate) async fn check(State(lockout): State<std::sync::Arc<Lockout>>, request: Request, next: Next) -> Response {
    let ip = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip());
    let Some(ip) = ip else { return next.run(request).await };
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
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn an_address_is_refused_after_its_failures_until_its_window_ends() {
        let lockout = Lockout::default();
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES - 1 {
            lockout.failed(ip(1), t0 + Duration::from_secs(u64::from(i)));
        }
        assert_eq!(lockout.locked(ip(1), t0 + Duration::from_secs(9)), None, "one failure short");
        lockout.failed(ip(1), t0 + Duration::from_secs(9));
        assert_eq!(lockout.locked(ip(1), t0 + Duration::from_secs(10)), Some(Duration::from_secs(50)));
        assert_eq!(lockout.locked(ip(2), t0 + Duration::from_secs(10)), None, "other addresses are not");
        assert_eq!(lockout.locked(ip(1), t0 + Duration::from_millis(59_999)), Some(Duration::from_millis(1)));
        assert_eq!(lockout.locked(ip(1), t0 + WINDOW), None, "the window ended");
        // A new window starts with the next failure.
        lockout.failed(ip(1), t0 + WINDOW);
        assert_eq!(lockout.locked(ip(1), t0 + WINDOW), None);
        assert_eq!(lockout.failures.load(Ordering::Relaxed), u64::from(MAX_FAILURES) + 1);
    }

    #[test]
    fn failures_spread_over_more_than_a_window_never_lock_out() {
        let lockout = Lockout::default();
        let t0 = Instant::now();
        for i in 0..30u64 {
            lockout.failed(ip(1), t0 + Duration::from_secs(i * 7));
            assert_eq!(lockout.locked(ip(1), t0 + Duration::from_secs(i * 7)), None, "failure {i}");
        }
    }

    #[test]
    fn the_map_is_bounded_and_expired_windows_make_room() {
        let lockout = Lockout::default();
        let t0 = Instant::now();
        for i in 0..MAX_ADDRESSES {
            let v6 = IpAddr::V6(std::net::Ipv6Addr::from(u128::try_from(i).unwrap()));
            lockout.failed(v6, t0);
        }
        assert_eq!(lockout.tracked(), MAX_ADDRESSES);
        lockout.failed(ip(1), t0);
        assert_eq!(lockout.tracked(), MAX_ADDRESSES, "beyond the bound: counted, not tracked");
        lockout.failed(ip(1), t0 + WINDOW);
        assert_eq!(lockout.tracked(), 1, "the expired windows made room");
        assert_eq!(lockout.failures.load(Ordering::Relaxed), u64::try_from(MAX_ADDRESSES).unwrap() + 2);
    }
}
