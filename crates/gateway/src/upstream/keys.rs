//! A provider's API keys (`api_key_env` or `api_key_envs`): calls take them
//! in turn, and a key the provider refused rests while the others serve.
//!
//! A 429 answered to one key is that key's limit, not the model's: the key
//! rests for the provider's `Retry-After` (a minute without one) and the
//! same attempt is sent again with the next key, so neither the model's
//! health nor the request's fallback pays for it. A 401 or 403 is the key's
//! own (revoked, or not allowed this model), as is a used-up quota (each key
//! may be another account's): it rests for an hour. A rest is never longer
//! than an hour, whatever `Retry-After` says. Within one attempt a key is
//! tried at most once, and another only while one is awake: when every key
//! rests (a provider-wide limit), the attempt fails rather than calling once
//! per key. A new attempt with every key resting uses the one that wakes
//! first: the provider, not a guess, says whether it is back.
//!
//! Time is milliseconds since the provider's keys were read, passed in by
//! the caller, so the rotation is tested without a clock.

use std::{
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use reqwest::header::{HeaderName, HeaderValue};

/// How long a key answered 429 rests when the provider gave no `Retry-After`.
pub(crate) const RATE_LIMITED_REST: Duration = Duration::from_mins(1);
/// How long a key answered 401 or 403 rests.
pub(crate) const REFUSED_REST: Duration = Duration::from_hours(1);

/// The keys of one provider, with the header each goes in.
pub(crate) struct Keys {
    /// Where a key goes (`authorization`, `x-api-key`, `x-goog-api-key`, `api-key`).
    header: HeaderName,
    set: Vec<Key>,
    /// The next key to try first (round robin).
    next: AtomicUsize,
    born: Instant,
}

struct Key {
    /// The header's value (`Bearer …` for OpenAI's), marked sensitive.
    value: HeaderValue,
    /// Resting until this many ms after `born` (0: never rested).
    resting_until: AtomicU64,
}

impl Keys {
    /// `values` as they go in `header`: each already formatted (and marked
    /// sensitive). Empty: the provider takes no key.
    pub(crate) fn new(header: HeaderName, values: Vec<HeaderValue>) -> Keys {
        let set = values.into_iter().map(|value| Key { value, resting_until: AtomicU64::new(0) }).collect();
        Keys { header, set, next: AtomicUsize::new(0), born: Instant::now() }
    }

    /// How many keys there are.
    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }

    /// The header keys go in.
    pub(crate) fn header(&self) -> &HeaderName {
        &self.header
    }

    /// Now, in this set's milliseconds.
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The key to send with, as an index, skipping those already `tried` in
    /// this attempt: the next one in turn that is not resting, else the one
    /// that wakes first. `None` when every key was tried (or there is none).
    pub(crate) fn pick(&self, now_ms: u64, tried: &[usize]) -> Option<usize> {
        let n = self.set.len();
        if tried.len() >= n {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let open = (0..n).map(|i| (start + i) % n).filter(|i| !tried.contains(i));
        let mut soonest: Option<(u64, usize)> = None;
        for i in open {
            let until = self.set[i].resting_until.load(Ordering::Relaxed);
            if until <= now_ms {
                return Some(i);
            }
            if soonest.is_none_or(|(wake, _)| until < wake) {
                soonest = Some((until, i));
            }
        }
        soonest.map(|(_, i)| i)
    }

    /// The value of key `index`.
    pub(crate) fn value(&self, index: usize) -> Option<&HeaderValue> {
        self.set.get(index).map(|k| &k.value)
    }

    /// Key `index` rests for `rest` from `now_ms` (never shortened by a
    /// shorter rest given meanwhile).
    pub(crate) fn rest(&self, index: usize, now_ms: u64, rest: Duration) {
        if let Some(key) = self.set.get(index) {
            let until = now_ms.saturating_add(u64::try_from(rest.as_millis()).unwrap_or(u64::MAX));
            key.resting_until.fetch_max(until, Ordering::Relaxed);
        }
    }

    /// Whether a key other than those `tried` is awake at `now_ms`.
    pub(crate) fn awake_untried(&self, now_ms: u64, tried: &[usize]) -> bool {
        self.set
            .iter()
            .enumerate()
            .any(|(i, key)| !tried.contains(&i) && key.resting_until.load(Ordering::Relaxed) <= now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Keys {
        let values = (0..n).map(|i| HeaderValue::from_str(&format!("key-{i}")).unwrap()).collect();
        Keys::new(HeaderName::from_static("x-api-key"), values)
    }

    #[test]
    fn calls_take_the_keys_in_turn() {
        let keys = keys(3);
        let picked: Vec<_> = (0..6).map(|_| keys.pick(0, &[]).unwrap()).collect();
        assert_eq!(picked, [0, 1, 2, 0, 1, 2]);
        assert_eq!(keys.value(1).unwrap(), "key-1");
    }

    #[test]
    fn a_resting_key_is_skipped_until_it_wakes() {
        let keys = keys(3);
        keys.rest(1, 1_000, Duration::from_mins(1));
        let picked: Vec<_> = (0..4).map(|_| keys.pick(2_000, &[]).unwrap()).collect();
        assert_eq!(picked, [0, 2, 2, 0], "key 1 rests");
        // At its wake time it serves again.
        let picked: Vec<_> = (0..3).map(|_| keys.pick(61_000, &[]).unwrap()).collect();
        assert!(picked.contains(&1), "{picked:?}");
        // A shorter rest given later never shortens a longer one.
        keys.rest(0, 0, Duration::from_hours(1));
        keys.rest(0, 0, Duration::from_secs(1));
        assert!((0..6).all(|_| keys.pick(10_000, &[]) != Some(0)));
    }

    #[test]
    fn within_an_attempt_each_key_is_tried_once_then_none() {
        let keys = keys(2);
        let first = keys.pick(0, &[]).unwrap();
        let second = keys.pick(0, &[first]).unwrap();
        assert_ne!(first, second);
        assert!(keys.awake_untried(0, &[first]));
        assert!(!keys.awake_untried(0, &[first, second]));
        keys.rest(second, 0, Duration::from_secs(5));
        assert!(!keys.awake_untried(1_000, &[first]), "the other key rests: no second call now");
        assert_eq!(keys.pick(0, &[first, second]), None);
        assert_eq!(self::keys(0).pick(0, &[]), None, "no key: nothing to pick");
    }

    #[test]
    fn when_every_key_rests_the_first_to_wake_is_used() {
        let keys = keys(3);
        keys.rest(0, 0, Duration::from_secs(30));
        keys.rest(1, 0, Duration::from_secs(10));
        keys.rest(2, 0, Duration::from_secs(20));
        assert_eq!(keys.pick(5_000, &[]), Some(1));
        assert_eq!(keys.pick(5_000, &[1]), Some(2));
    }
}
