//! Tests of the retry policy and helper, with time injected and nothing slept.

use std::time::Duration;

use super::*;
use crate::Failure;

fn policy(config: RetryConfig) -> RetryPolicy {
    RetryPolicy::new(config).expect("test config is valid")
}

fn no_jitter() -> RetryConfig {
    RetryConfig { jitter: Jitter::None, max_attempts: 4, ..RetryConfig::default() }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn run<T>(
    policy: &RetryPolicy,
    timer: &ManualTimer,
    script: Vec<Result<T, Failure>>,
) -> Result<Retried<T>, RetryError<Failure>> {
    let mut script = script.into_iter();
    let mut rng = fastrand::Rng::with_seed(42);
    retry(policy, timer, &mut rng, |_| {
        let next = script.next().expect("the script has an outcome for every attempt");
        async move { next }
    })
    .await
}

fn server_error() -> Failure {
    Failure::new(ErrorClass::ServerError, "boom").with_status(500)
}

#[tokio::test]
async fn delays_without_jitter_are_100_200_400() {
    let timer = ManualTimer::new();
    let err = run::<()>(&policy(no_jitter()), &timer, vec![Err(server_error()); 4]).await.unwrap_err();
    assert_eq!(timer.slept(), vec![ms(100), ms(200), ms(400)]);
    assert_eq!(err.reason, GiveUp::AttemptsExhausted);
    assert_eq!(err.attempts.len(), 4);
    assert_eq!(
        err.attempts.iter().map(|a| a.delay).collect::<Vec<_>>(),
        vec![Some(ms(100)), Some(ms(200)), Some(ms(400)), None]
    );
    assert!(err.attempts.iter().all(|a| a.error == Some(ErrorClass::ServerError)));
    assert_eq!(timer.now(), ms(700));
}

#[tokio::test]
async fn success_on_first_try_sleeps_never() {
    let timer = ManualTimer::new();
    let ok = run(&policy(no_jitter()), &timer, vec![Ok(7)]).await.unwrap();
    assert_eq!(ok.value, 7);
    assert_eq!(ok.attempts, vec![AttemptRecord { attempt: 1, error: None, elapsed: Duration::ZERO, delay: None }]);
    assert!(timer.slept().is_empty());
}

#[tokio::test]
async fn succeeds_after_transient_failures() {
    let timer = ManualTimer::new();
    let script = vec![Err(server_error()), Err(Failure::new(ErrorClass::Timeout, "slow")), Ok("done")];
    let ok = run(&policy(no_jitter()), &timer, script).await.unwrap();
    assert_eq!(ok.value, "done");
    let classes: Vec<_> = ok.attempts.iter().map(|a| a.error).collect();
    assert_eq!(classes, vec![Some(ErrorClass::ServerError), Some(ErrorClass::Timeout), None]);
}

#[tokio::test]
async fn non_retryable_errors_are_not_retried() {
    for class in ErrorClass::ALL.into_iter().filter(|c| !c.retry_same_model()) {
        let timer = ManualTimer::new();
        let err = run::<()>(&policy(no_jitter()), &timer, vec![Err(Failure::new(class, "no"))]).await.unwrap_err();
        assert_eq!(err.reason, GiveUp::NotRetryable, "{class}");
        assert_eq!(err.attempts.len(), 1, "{class}");
        assert!(timer.slept().is_empty(), "{class}");
    }
}

#[tokio::test]
async fn zero_backoff_retries_without_waiting() {
    let timer = ManualTimer::new();
    let config = RetryConfig { initial_backoff: Duration::ZERO, max_backoff: Duration::ZERO, ..no_jitter() };
    let ok = run(&policy(config), &timer, vec![Err(server_error()), Ok(1)]).await.unwrap();
    assert_eq!(ok.attempts.len(), 2);
    assert_eq!(timer.slept(), vec![Duration::ZERO]);
}

#[tokio::test]
async fn retry_after_is_honoured_within_the_cap() {
    let timer = ManualTimer::new();
    let limited = Failure::new(ErrorClass::RateLimited, "slow down").with_retry_after(Duration::from_secs(2));
    let ok = run(&policy(no_jitter()), &timer, vec![Err(limited), Ok(())]).await.unwrap();
    assert_eq!(ok.attempts.len(), 2);
    assert_eq!(timer.slept(), vec![Duration::from_secs(2)]);

    // A Retry-After shorter than the backoff does not shorten the backoff.
    let timer = ManualTimer::new();
    let limited = Failure::new(ErrorClass::RateLimited, "").with_retry_after(ms(10));
    run(&policy(no_jitter()), &timer, vec![Err(limited), Ok(())]).await.unwrap();
    assert_eq!(timer.slept(), vec![ms(100)]);

    // Above the cap: stop retrying this model at once.
    let timer = ManualTimer::new();
    let limited = Failure::new(ErrorClass::RateLimited, "").with_retry_after(Duration::from_hours(1));
    let err = run::<()>(&policy(no_jitter()), &timer, vec![Err(limited)]).await.unwrap_err();
    assert_eq!(err.reason, GiveUp::RetryAfterTooLong(Duration::from_hours(1)));
    assert!(timer.slept().is_empty());
}

#[tokio::test]
async fn deadline_covers_attempts_and_waits() {
    let timer = ManualTimer::new();
    let config = RetryConfig { deadline: Some(ms(250)), max_attempts: 10, ..no_jitter() };
    let policy = policy(config);
    let mut rng = fastrand::Rng::with_seed(1);
    let mut remaining_seen = Vec::new();
    let err = retry(&policy, &timer, &mut rng, |ctx| {
        remaining_seen.push(ctx.remaining);
        timer.advance(ms(10)); // each attempt takes 10 ms
        async { Err::<(), _>(server_error()) }
    })
    .await
    .unwrap_err();
    // 10 ms attempt, 100 ms wait, 10 ms attempt: 120 ms used, 130 left < the 200 ms wait.
    assert_eq!(err.reason, GiveUp::DeadlineExceeded);
    assert_eq!(err.attempts.len(), 2);
    assert_eq!(timer.slept(), vec![ms(100)]);
    assert_eq!(remaining_seen, vec![Some(ms(250)), Some(ms(140))]);
    assert_eq!(err.attempts[0].elapsed, ms(10));
}

#[test]
fn backoff_is_capped_and_never_overflows() {
    let policy = policy(RetryConfig { max_backoff: Duration::from_secs(1), ..no_jitter() });
    let mut rng = fastrand::Rng::with_seed(3);
    assert_eq!(policy.backoff(5, &mut rng), Duration::from_secs(1));
    assert_eq!(policy.backoff(u32::MAX, &mut rng), Duration::from_secs(1));
}

#[test]
fn jitter_stays_in_its_range_and_is_seeded() {
    let full = policy(RetryConfig { jitter: Jitter::Full, ..RetryConfig::default() });
    let equal = policy(RetryConfig { jitter: Jitter::Equal, ..RetryConfig::default() });
    let mut rng = fastrand::Rng::with_seed(9);
    for retry in 1..8 {
        let base = policy(no_jitter()).backoff(retry, &mut rng);
        let f = full.backoff(retry, &mut rng);
        let e = equal.backoff(retry, &mut rng);
        assert!(f <= base, "full {f:?} > {base:?}");
        assert!(e >= base / 2 && e <= base, "equal {e:?} outside [{:?}, {base:?}]", base / 2);
    }
    let draw = |seed| {
        let mut rng = fastrand::Rng::with_seed(seed);
        (1..6).map(|r| full.backoff(r, &mut rng)).collect::<Vec<_>>()
    };
    assert_eq!(draw(5), draw(5));
    assert_ne!(draw(5), draw(6));
}

#[test]
fn invalid_configs_name_the_field() {
    let table = [
        (RetryConfig { max_attempts: 0, ..RetryConfig::default() }, "max_attempts"),
        (RetryConfig { multiplier: 0.5, ..RetryConfig::default() }, "multiplier"),
        (RetryConfig { multiplier: f64::NAN, ..RetryConfig::default() }, "multiplier"),
        (RetryConfig { max_backoff: ms(1), ..RetryConfig::default() }, "max_backoff"),
        (RetryConfig { deadline: Some(Duration::ZERO), ..RetryConfig::default() }, "deadline"),
    ];
    for (config, field) in table {
        let err = RetryPolicy::new(config).unwrap_err();
        assert!(matches!(err, Error::InvalidRetryConfig { field: f, .. } if f == field), "{err}");
        assert!(err.to_string().starts_with(&format!("invalid retry config: {field}: ")), "{err}");
    }
}

#[test]
fn retry_error_reports_what_happened() {
    let err = RetryError {
        last: server_error(),
        reason: GiveUp::AttemptsExhausted,
        attempts: vec![AttemptRecord { attempt: 1, error: Some(ErrorClass::ServerError), elapsed: ms(1), delay: None }],
    };
    assert_eq!(err.to_string(), "gave up after 1 attempt(s) because no attempts left: server_error (HTTP 500): boom");
}

#[cfg(feature = "tokio")]
#[tokio::test(start_paused = true)]
async fn tokio_timer_follows_paused_time() {
    let timer = TokioTimer::new();
    timer.sleep(Duration::from_secs(5)).await;
    assert_eq!(timer.now(), Duration::from_secs(5));
}
