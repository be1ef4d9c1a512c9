//! Service registry: lookup of a running service, and a 1,000-service start.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use modelfleet_benches::{Noop, layered};
use modelfleet_service_registry::{BoxError, BoxFuture, RegistryConfig, Service, ServiceRegistry};

struct Store;

impl Service for Store {
    fn name(&self) -> &'static str {
        "store"
    }

    fn start(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async { Ok(()) })
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a current-thread runtime builds")
}

fn benches(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("service_registry");

    // 100 services running, one of them the `Store` we look up.
    let mut registry = ServiceRegistry::new(RegistryConfig::default());
    registry.register(Store).expect("unique name");
    for service in layered(99) {
        registry.register(service).expect("unique names");
    }
    let running = rt.block_on(registry.start()).expect("the services start");
    group.bench_function("lookup_by_type", |b| b.iter(|| black_box(&running).get::<Store>().is_some()));
    group.bench_function("lookup_by_name", |b| {
        b.iter(|| black_box(&running).get_named::<Noop>(black_box("svc0042")).is_some());
    });

    group.bench_function("start_1000_noop", |b| {
        b.iter_batched(
            || {
                let mut registry = ServiceRegistry::new(RegistryConfig::default());
                for service in layered(1000) {
                    registry.register(service).expect("unique names");
                }
                registry
            },
            |registry| rt.block_on(registry.start()).expect("the services start"),
            criterion::BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(service_registry, benches);
criterion_main!(service_registry);
