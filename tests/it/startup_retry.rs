//! A service whose start retries a flaky dependency with the errors crate's
//! policy, started by the service registry: the two base crates together.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use modelfleet_errors::{ErrorClass, Failure, Jitter, RetryConfig, RetryPolicy, TokioTimer, retry, sanitize};
use modelfleet_service_registry::{BoxError, BoxFuture, Error, RegistryConfig, Service, ServiceRegistry};

/// Connects to a backend that fails `failures` times with `class` first.
struct Connector {
    name: &'static str,
    failures: u32,
    class: ErrorClass,
    calls: AtomicU32,
}

impl Connector {
    fn new(name: &'static str, failures: u32, class: ErrorClass) -> Arc<Connector> {
        Arc::new(Connector { name, failures, class, calls: AtomicU32::new(0) })
    }
}

impl Service for Connector {
    fn name(&self) -> &str {
        self.name
    }

    fn start(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            let policy = RetryPolicy::new(RetryConfig {
                jitter: Jitter::None,
                max_attempts: 5,
                deadline: Some(Duration::from_secs(10)),
                ..RetryConfig::default()
            })?;
            let mut rng = fastrand::Rng::with_seed(11);
            let outcome = retry(&policy, &TokioTimer::new(), &mut rng, |_| async {
                let call = self.calls.fetch_add(1, Ordering::SeqCst);
                if call < self.failures {
                    Err(Failure::new(
                        self.class,
                        "connect to /var/run/backend.sock failed with key sk-abcdefghijklmnop",
                    ))
                } else {
                    Ok(())
                }
            })
            .await;
            outcome.map(|_| ()).map_err(|err| sanitize(&err.to_string()).into_owned().into())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_flaky_dependency_is_retried_until_it_starts() {
    let store = Connector::new("store", 2, ErrorClass::Connection);
    let mut registry = ServiceRegistry::new(RegistryConfig::default());
    registry.register_arc(Arc::clone(&store)).unwrap();
    let started = tokio::time::Instant::now();
    let running = registry.start().await.unwrap();
    assert_eq!(store.calls.load(Ordering::SeqCst), 3);
    // Two waits, 100 ms and 200 ms, in paused (virtual) time.
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    running.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_non_retryable_failure_fails_the_start_at_once_with_a_clean_message() {
    let store = Connector::new("store", 1, ErrorClass::Connection);
    let auth = Connector::new("auth", 99, ErrorClass::Authentication);
    let mut registry = ServiceRegistry::new(RegistryConfig::default());
    registry.register_arc(Arc::clone(&store)).unwrap();
    registry.register_arc(Arc::clone(&auth)).unwrap();
    let err = registry.start().await.unwrap_err();
    assert_eq!(auth.calls.load(Ordering::SeqCst), 1, "authentication failures are not retried");
    let message = err.to_string();
    assert!(matches!(err, Error::StartFailed { ref service, .. } if service == "auth"), "{message}");
    assert_eq!(
        message,
        "service \"auth\" failed to start: gave up after 1 attempt(s) because the error is not retryable: \
         authentication: connect to [PATH] failed with key [REDACTED]"
    );
}
