//! Retry budget tests: the floor, the share of requests, refusal, decay,
//! and the configuration check.

use std::time::Duration;

use super::*;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn budget(ratio: f64, min_per_sec: f64) -> RetryBudget {
    RetryBudget::new(RetryBudgetConfig { ratio, min_per_sec, window: secs(10) }).unwrap()
}

/// Retries allowed in a row for "p" at `now`, up to 100.
fn allowed(b: &RetryBudget, now: Duration) -> usize {
    (0..100).take_while(|_| b.try_retry("p", now)).count()
}

fn requests(b: &RetryBudget, n: usize, now: Duration) {
    for _ in 0..n {
        b.record_request("p", now);
    }
}

#[test]
fn defaults_and_config() {
    let config = RetryBudgetConfig::default();
    assert_eq!(config, RetryBudgetConfig { ratio: 0.2, min_per_sec: 1.0, window: secs(10) });
    assert_eq!(config.check(), Ok(()));
    let custom = RetryBudgetConfig { ratio: 0.5, min_per_sec: 2.0, window: secs(5) };
    assert_eq!(RetryBudget::new(custom).map(|b| *b.config()), Ok(custom));
}

#[test]
fn check_and_new_reject_each_unusable_field() {
    // `check`'s answer, which `new` must give too.
    let check = |change: fn(&mut RetryBudgetConfig)| {
        let mut config = RetryBudgetConfig::default();
        change(&mut config);
        let checked = config.check().map_err(|e| e.to_string());
        let built = RetryBudget::new(config).map(|b| assert_eq!(b.config(), &config)).map_err(|e| e.to_string());
        assert_eq!(built, checked, "new agrees with check");
        checked
    };
    let ratio = |shown: &str| Err(format!("retry budget ratio must be in [0, 10] (got {shown})"));
    assert_eq!(check(|c| c.ratio = -0.1), ratio("-0.1"));
    assert_eq!(check(|c| c.ratio = 10.000_001), ratio("10.000001"));
    assert_eq!(check(|c| c.ratio = f64::NAN), ratio("NaN"));
    assert_eq!(check(|c| c.ratio = f64::INFINITY), ratio("inf"));
    let floor = |shown: &str| Err(format!("retry budget min_per_sec must be finite and >= 0 (got {shown})"));
    assert_eq!(check(|c| c.min_per_sec = -1.0), floor("-1"));
    assert_eq!(check(|c| c.min_per_sec = f64::NAN), floor("NaN"));
    assert_eq!(check(|c| c.min_per_sec = f64::INFINITY), floor("inf"));
    assert_eq!(
        check(|c| c.window = Duration::ZERO),
        Err("retry budget window must be greater than zero (got 0ns)".into())
    );
    // The edges that are fine.
    assert_eq!(check(|c| c.ratio = 0.0), Ok(()));
    assert_eq!(check(|c| c.ratio = 10.0), Ok(()));
    assert_eq!(check(|c| c.min_per_sec = 0.0), Ok(()));
    assert_eq!(check(|c| c.window = Duration::from_nanos(1)), Ok(()));
}

#[test]
fn the_floor_allows_min_per_sec_times_the_window() {
    let b = budget(0.0, 1.0);
    assert_eq!(b.remaining("p", secs(0)).to_bits(), 10.0f64.to_bits());
    assert_eq!(allowed(&b, secs(0)), 10, "1/s over 10 s, with no requests at all");
    assert_eq!(b.remaining("p", secs(0)).to_bits(), 0.0f64.to_bits());
}

#[test]
fn a_share_of_the_requests_is_allowed_on_top() {
    let b = budget(0.5, 0.0);
    requests(&b, 4, secs(0));
    assert_eq!(allowed(&b, secs(0)), 2, "half of 4");
    let b = budget(0.5, 0.0);
    requests(&b, 5, secs(0));
    assert_eq!(allowed(&b, secs(0)), 2, "half of 5 is 2.5: the third would pass it");
    let b = budget(0.5, 1.0);
    requests(&b, 4, secs(0));
    assert_eq!(b.remaining("p", secs(0)).to_bits(), 12.0f64.to_bits());
    assert!(b.try_retry("p", secs(0)));
    assert_eq!(b.remaining("p", secs(0)).to_bits(), 11.0f64.to_bits());
    assert_eq!(allowed(&b, secs(0)), 11, "10 + 2 in all");
}

#[test]
fn refused_retries_are_not_counted() {
    let b = budget(0.5, 0.0);
    requests(&b, 5, secs(0));
    assert_eq!(allowed(&b, secs(0)), 2);
    assert!(!b.try_retry("p", secs(0)));
    b.record_request("p", secs(0));
    assert!(b.try_retry("p", secs(0)), "6 requests allow 3; the refusals took none");
}

#[test]
fn the_budget_recovers_after_the_window() {
    // 1 s buckets: retries at 0 count until 10 s.
    let b = budget(0.0, 1.0);
    assert_eq!(allowed(&b, secs(0)), 10);
    assert!(!b.try_retry("p", Duration::from_millis(9_999)));
    assert_eq!(b.remaining("p", secs(10)).to_bits(), 10.0f64.to_bits());
    assert_eq!(allowed(&b, secs(10)), 10);
}

#[test]
fn requests_age_out_too_and_remaining_never_goes_negative() {
    let b = budget(1.0, 0.0);
    requests(&b, 10, secs(0));
    assert_eq!(allowed(&b, secs(9)), 10);
    // The requests left the window before the retries did.
    assert_eq!(b.remaining("p", secs(10)).to_bits(), 0.0f64.to_bits());
    assert!(!b.try_retry("p", secs(10)));
    requests(&b, 2, secs(10));
    assert_eq!(allowed(&b, secs(10)), 0, "2 allowed, 10 made at 9 s");
    assert_eq!(allowed(&b, secs(19)), 2, "the retries at 9 s are out, the requests at 10 s in");
}

#[test]
fn providers_are_independent_and_listed_sorted() {
    let b = budget(0.0, 0.5);
    assert_eq!(allowed(&b, secs(0)), 5);
    b.record_request("b", secs(0));
    assert!(b.try_retry("a", secs(0)), "another provider's budget is its own");
    assert_eq!(b.remaining("a", secs(0)).to_bits(), 4.0f64.to_bits());
    assert_eq!(b.remaining("unknown", secs(0)).to_bits(), 5.0f64.to_bits());
    assert_eq!(b.providers(), ["a", "b", "p"]);
}
