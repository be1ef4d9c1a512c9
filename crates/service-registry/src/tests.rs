//! Seed 004's scenarios, and properties of the start order.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use proptest::prelude::*;

use super::*;

/// What happened, in order, across all services of one test.
#[derive(Default)]
struct Log {
    events: Mutex<Vec<String>>,
}

impl Log {
    fn push(&self, event: String) {
        self.events.lock().unwrap().push(event);
    }

    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    /// The position of `event`, which must have happened.
    fn at(&self, event: &str) -> usize {
        let events = self.events();
        events.iter().position(|e| e == event).unwrap_or_else(|| panic!("{event} never happened in {events:?}"))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Ok,
    FailStart,
    HangStart,
    FailStop,
    Degraded,
    HangHealth,
}

struct Mock {
    name: String,
    deps: Vec<String>,
    log: Arc<Log>,
    behaviour: Behaviour,
}

impl Mock {
    fn new(log: &Arc<Log>, name: &str, deps: &[&str]) -> Mock {
        Mock::with(log, name, deps, Behaviour::Ok)
    }

    fn with(log: &Arc<Log>, name: &str, deps: &[&str], behaviour: Behaviour) -> Mock {
        Mock {
            name: name.to_owned(),
            deps: deps.iter().map(|d| (*d).to_owned()).collect(),
            log: Arc::clone(log),
            behaviour,
        }
    }
}

impl Service for Mock {
    fn name(&self) -> &str {
        &self.name
    }

    fn dependencies(&self) -> Vec<&str> {
        self.deps.iter().map(String::as_str).collect()
    }

    fn start(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            match self.behaviour {
                Behaviour::FailStart => return Err(format!("{} could not open its file", self.name).into()),
                Behaviour::HangStart => std::future::pending::<()>().await,
                _ => {}
            }
            self.log.push(format!("start {}", self.name));
            Ok(())
        })
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            self.log.push(format!("stop {}", self.name));
            if self.behaviour == Behaviour::FailStop {
                return Err("flush failed".into());
            }
            Ok(())
        })
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async move {
            match self.behaviour {
                Behaviour::Degraded => Health::Degraded("queue 90% full".into()),
                Behaviour::HangHealth => std::future::pending().await,
                _ => Health::Healthy,
            }
        })
    }
}

fn registry(log: &Arc<Log>, spec: &[(&str, &[&str])]) -> ServiceRegistry {
    let mut registry = ServiceRegistry::new(RegistryConfig::default());
    for (name, deps) in spec {
        registry.register(Mock::new(log, name, deps)).unwrap();
    }
    registry
}

fn names(layers: &[Vec<&str>]) -> Vec<Vec<String>> {
    layers.iter().map(|l| l.iter().map(|s| (*s).to_owned()).collect()).collect()
}

#[tokio::test]
async fn normal_chain_starts_in_order_and_stops_in_reverse() {
    let log = Arc::new(Log::default());
    let registry = registry(
        &log,
        &[("selector", &["registry", "monitor"]), ("monitor", &["store"]), ("registry", &["store"]), ("store", &[])],
    );
    let running = registry.start().await.unwrap();
    assert_eq!(running.start_order(), vec![vec!["store"], vec!["monitor", "registry"], vec!["selector"]]);
    assert!(log.at("start store") < log.at("start registry"));
    assert!(log.at("start monitor") < log.at("start selector"));
    let report = running.health().await;
    assert_eq!(report.overall, HealthStatus::Healthy);
    assert_eq!(report.services.len(), 4);
    running.shutdown().await.unwrap();
    assert!(log.at("stop selector") < log.at("stop registry"));
    assert!(log.at("stop registry") < log.at("stop store"));
    assert!(log.at("stop monitor") < log.at("stop store"));
}

#[test]
fn missing_dependencies_are_all_reported() {
    let log = Arc::new(Log::default());
    let registry = registry(&log, &[("gateway", &["store", "auth"]), ("store", &[]), ("cli", &["metrics"])]);
    let err = registry.plan().unwrap_err();
    assert_eq!(
        err.missing,
        vec![
            Missing { service: "gateway".into(), dependency: "auth".into() },
            Missing { service: "cli".into(), dependency: "metrics".into() },
        ]
    );
    assert!(err.cycles.is_empty());
}

#[tokio::test]
async fn nothing_starts_when_the_plan_fails() {
    let log = Arc::new(Log::default());
    let registry = registry(&log, &[("store", &[]), ("gateway", &["auth"])]);
    let err = registry.start().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"cannot resolve the start order: service "gateway" depends on "auth", which is not registered"#
    );
    assert!(log.events().is_empty());
}

#[test]
fn cycles_are_reported_with_their_path() {
    let log = Arc::new(Log::default());
    let registry = registry(
        &log,
        &[
            ("a", &["b"]),
            ("b", &["c"]),
            ("c", &["a"]),
            ("x", &["y"]),
            ("y", &["x"]),
            ("self", &["self"]),
            ("waiting", &["a"]),
            ("fine", &[]),
        ],
    );
    let err = registry.plan().unwrap_err();
    let cycles: Vec<String> = err.cycles.iter().map(|c| c.join(" → ")).collect();
    assert_eq!(cycles, vec!["a → b → c → a", "self → self", "x → y → x"]);
}

#[tokio::test]
async fn start_failure_rolls_back_in_reverse_and_names_the_cause() {
    let log = Arc::new(Log::default());
    let mut registry = ServiceRegistry::new(RegistryConfig::default());
    registry.register(Mock::new(&log, "store", &[])).unwrap();
    registry.register(Mock::new(&log, "registry", &["store"])).unwrap();
    registry.register(Mock::new(&log, "metrics", &["store"])).unwrap();
    registry.register(Mock::with(&log, "monitor", &["registry"], Behaviour::FailStart)).unwrap();
    registry.register(Mock::new(&log, "selector", &["monitor"])).unwrap();
    let err = registry.start().await.unwrap_err();
    assert_eq!(err.to_string(), r#"service "monitor" failed to start: monitor could not open its file"#);
    assert!(
        matches!(&err, Error::StartFailed { service, rollback, .. } if service == "monitor" && rollback.is_empty())
    );
    let events = log.events();
    assert!(!events.contains(&"start selector".to_owned()), "{events:?}");
    assert!(!events.contains(&"stop monitor".to_owned()), "a service that failed to start is not stopped");
    // Everything that started was stopped, dependents first.
    for started in ["store", "registry", "metrics"] {
        assert!(log.at(&format!("start {started}")) < log.at(&format!("stop {started}")));
    }
    assert!(log.at("stop registry") < log.at("stop store"));
    assert!(log.at("stop metrics") < log.at("stop store"));
}

#[tokio::test(start_paused = true)]
async fn a_start_that_hangs_times_out_and_rolls_back() {
    let log = Arc::new(Log::default());
    let config = RegistryConfig { start_timeout: Duration::from_secs(5), ..RegistryConfig::default() };
    let mut registry = ServiceRegistry::new(config);
    registry.register(Mock::new(&log, "store", &[])).unwrap();
    registry.register(Mock::with(&log, "slow", &["store"], Behaviour::HangStart)).unwrap();
    let err = registry.start().await.unwrap_err();
    assert_eq!(err.to_string(), r#"service "slow" failed to start: start timed out after 5s"#);
    assert_eq!(log.events(), vec!["start store", "stop store"]);
}

#[tokio::test]
async fn rollback_failures_are_reported_too() {
    let log = Arc::new(Log::default());
    let mut registry = ServiceRegistry::new(RegistryConfig::default());
    registry.register(Mock::with(&log, "store", &[], Behaviour::FailStop)).unwrap();
    registry.register(Mock::with(&log, "monitor", &["store"], Behaviour::FailStart)).unwrap();
    let err = registry.start().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"service "monitor" failed to start: monitor could not open its file (and while rolling back, failed to stop: store: flush failed)"#
    );
}

#[tokio::test]
async fn ten_deep_chain() {
    let log = Arc::new(Log::default());
    let names: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
    let mut registry = ServiceRegistry::new(RegistryConfig::default());
    for i in 0..10 {
        let deps: Vec<&str> = if i == 0 { vec![] } else { vec![names[i - 1].as_str()] };
        registry.register(Mock::new(&log, &names[i], &deps)).unwrap();
    }
    let running = registry.start().await.unwrap();
    assert_eq!(running.start_order().len(), 10);
    let expected: Vec<String> = names.iter().map(|n| format!("start {n}")).collect();
    assert_eq!(log.events(), expected);
    running.shutdown().await.unwrap();
    let stops: Vec<String> = log.events()[10..].to_vec();
    let expected: Vec<String> = names.iter().rev().map(|n| format!("stop {n}")).collect();
    assert_eq!(stops, expected);
}

#[tokio::test]
async fn lookup_by_type_and_name() {
    struct Store;
    impl Service for Store {
        fn name(&self) -> &'static str {
            "store"
        }
        fn start(&self) -> BoxFuture<'_, Result<(), BoxError>> {
            Box::pin(async { Ok(()) })
        }
    }
    let log = Arc::new(Log::default());
    let mut registry = ServiceRegistry::new(RegistryConfig::default());
    registry.register(Store).unwrap();
    registry.register(Mock::new(&log, "m1", &["store"])).unwrap();
    registry.register(Mock::new(&log, "m2", &[])).unwrap();
    let running = registry.start().await.unwrap();
    assert!(running.get::<Store>().is_some());
    assert!(running.get_arc::<Store>().is_some());
    // Two services of one type: by type is ambiguous, by name is not.
    assert!(running.get::<Mock>().is_none());
    assert_eq!(running.get_named::<Mock>("m2").map(|m| m.name.as_str()), Some("m2"));
    assert!(running.get_named::<Store>("m2").is_none(), "wrong type");
    assert!(running.get_named::<Mock>("nope").is_none());
    assert_eq!(running.get_dyn("store").map(|s| s.name().to_owned()), Some("store".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_from_many_threads() {
    let log = Arc::new(Log::default());
    let mut registry = ServiceRegistry::new(RegistryConfig::default());
    for i in 0..20 {
        registry.register(Mock::new(&log, &format!("svc{i}"), &[])).unwrap();
    }
    let running = Arc::new(registry.start().await.unwrap());
    let found = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..10)
        .map(|t| {
            let running = Arc::clone(&running);
            let found = Arc::clone(&found);
            std::thread::spawn(move || {
                for i in 0..100 {
                    let name = format!("svc{}", (t + i) % 20);
                    if running.get_named::<Mock>(&name).is_some_and(|m| m.name == name) {
                        found.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(found.load(Ordering::Relaxed), 1000);
}

#[tokio::test]
async fn fifty_cycles_leave_nothing_behind() {
    let log = Arc::new(Log::default());
    let mut weak: Vec<Weak<Mock>> = Vec::new();
    for cycle in 0..50 {
        let mut registry = ServiceRegistry::new(RegistryConfig::default());
        for (name, deps) in [("store", &[][..]), ("monitor", &["store"][..]), ("gateway", &["monitor", "store"][..])] {
            let service = Arc::new(Mock::new(&log, name, deps));
            weak.push(Arc::downgrade(&service));
            registry.register_arc(service).unwrap();
        }
        let running = registry.start().await.unwrap();
        assert_eq!(running.health().await.overall, HealthStatus::Healthy, "cycle {cycle}");
        running.shutdown().await.unwrap();
    }
    assert_eq!(weak.len(), 150);
    assert!(weak.iter().all(|w| w.upgrade().is_none()), "every service was dropped after its shutdown");
    assert_eq!(Arc::strong_count(&log), 1, "no service still holds the log");
    assert_eq!(log.events().len(), 50 * 6);
}

#[tokio::test(start_paused = true)]
async fn health_aggregates_the_worst_and_times_out() {
    let log = Arc::new(Log::default());
    let mut registry = ServiceRegistry::new(RegistryConfig::default());
    registry.register(Mock::new(&log, "store", &[])).unwrap();
    registry.register(Mock::with(&log, "cache", &[], Behaviour::Degraded)).unwrap();
    let running = registry.start().await.unwrap();
    let report = running.health().await;
    assert_eq!(report.overall, HealthStatus::Degraded);

    let mut registry = ServiceRegistry::new(RegistryConfig::default());
    registry.register(Mock::with(&log, "stuck", &[], Behaviour::HangHealth)).unwrap();
    registry.register(Mock::with(&log, "cache", &[], Behaviour::Degraded)).unwrap();
    let running = registry.start().await.unwrap();
    let report = running.health().await;
    assert_eq!(report.overall, HealthStatus::Unhealthy);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "overall": "unhealthy",
            "services": [
                {"name": "cache", "health": {"status": "degraded", "detail": "queue 90% full"}},
                {"name": "stuck", "health": {"status": "unhealthy", "detail": "health check timed out after 2s"}},
            ]
        })
    );
}

#[test]
fn registration_errors() {
    let log = Arc::new(Log::default());
    let mut registry = ServiceRegistry::new(RegistryConfig::default());
    registry.register(Mock::new(&log, "store", &[])).unwrap();
    assert_eq!(
        registry.register(Mock::new(&log, "store", &[])).unwrap_err().to_string(),
        r#"service "store" is registered twice"#
    );
    assert!(matches!(registry.register(Mock::new(&log, " ", &[])), Err(Error::EmptyName)));
    assert_eq!(registry.len(), 1);
}

#[tokio::test]
async fn stop_failures_do_not_stop_the_others_stopping() {
    let log = Arc::new(Log::default());
    let mut registry = ServiceRegistry::new(RegistryConfig::default());
    registry.register(Mock::new(&log, "store", &[])).unwrap();
    registry.register(Mock::with(&log, "monitor", &["store"], Behaviour::FailStop)).unwrap();
    let running = registry.start().await.unwrap();
    let err = running.shutdown().await.unwrap_err();
    assert_eq!(err.to_string(), "1 service(s) failed to stop: monitor: flush failed");
    assert!(log.events().contains(&"stop store".to_owned()));
}

#[tokio::test]
async fn stop_through_a_shared_reference_stops_once() {
    let log = Arc::new(Log::default());
    let mut registry = ServiceRegistry::new(RegistryConfig::default());
    registry.register(Mock::new(&log, "store", &[])).unwrap();
    let running = Arc::new(registry.start().await.unwrap());
    running.stop().await.unwrap();
    running.stop().await.unwrap();
    assert_eq!(log.events(), ["start store", "stop store"]);
}

#[tokio::test]
async fn an_empty_registry_starts_and_is_healthy() {
    let running = ServiceRegistry::new(RegistryConfig::default()).start().await.unwrap();
    assert_eq!(running.start_order(), names(&[]));
    assert_eq!(running.health().await.overall, HealthStatus::Healthy);
}

// ---- Properties --------------------------------------------------------

/// A random DAG on `n` nodes: edges only from a higher to a lower index,
/// so it has no cycle; names are shuffled so index order is not name order.
fn dag(max: usize) -> impl Strategy<Value = Vec<(String, Vec<String>)>> {
    (1..=max)
        .prop_flat_map(|n| {
            let edges = proptest::collection::vec(proptest::collection::vec(any::<bool>(), n), n);
            (Just(n), edges, Just((0..n).collect::<Vec<_>>()).prop_shuffle())
        })
        .prop_map(|(n, edges, perm)| {
            let name = |i: usize| format!("n{}", perm[i]);
            (0..n)
                .map(|i| {
                    let deps = (0..i).filter(|&j| edges[i][j]).map(name).collect();
                    (name(i), deps)
                })
                .collect()
        })
}

fn plan_of(graph: &[(String, Vec<String>)]) -> Result<Vec<Vec<String>>, ResolveError> {
    let nodes: Vec<(&str, Vec<&str>)> =
        graph.iter().map(|(n, ds)| (n.as_str(), ds.iter().map(String::as_str).collect())).collect();
    graph::layers(&nodes).map(|layers| layers.iter().map(|l| l.iter().map(|&i| graph[i].0.clone()).collect()).collect())
}

/// Whether some order of the nodes puts every dependency first (brute force).
fn naive_has_order(graph: &[(String, Vec<String>)]) -> bool {
    fn permute(items: &mut Vec<usize>, k: usize, ok: &dyn Fn(&[usize]) -> bool) -> bool {
        if k == items.len() {
            return ok(items);
        }
        for i in k..items.len() {
            items.swap(k, i);
            if permute(items, k + 1, ok) {
                return true;
            }
            items.swap(k, i);
        }
        false
    }
    let index: HashMap<&str, usize> = graph.iter().enumerate().map(|(i, (n, _))| (n.as_str(), i)).collect();
    let respects = |order: &[usize]| {
        let pos: HashMap<usize, usize> = order.iter().enumerate().map(|(p, &i)| (i, p)).collect();
        graph.iter().enumerate().all(|(i, (_, deps))| deps.iter().all(|d| pos[&index[d.as_str()]] < pos[&i]))
    };
    permute(&mut (0..graph.len()).collect(), 0, &respects)
}

/// The naive depth: the longest dependency chain below each node.
fn naive_depth(graph: &[(String, Vec<String>)], node: &str) -> usize {
    let deps = &graph.iter().find(|(n, _)| n == node).unwrap().1;
    deps.iter().map(|d| naive_depth(graph, d) + 1).max().unwrap_or(0)
}

proptest! {
    #[test]
    fn random_dags_start_in_an_order_that_respects_every_edge(graph in dag(30)) {
        let layers = plan_of(&graph).unwrap();
        let pos: HashMap<&str, usize> =
            layers.iter().enumerate().flat_map(|(k, l)| l.iter().map(move |n| (n.as_str(), k))).collect();
        prop_assert_eq!(pos.len(), graph.len());
        for (node, deps) in &graph {
            for dep in deps {
                prop_assert!(pos[dep.as_str()] < pos[node.as_str()], "{} starts before its dependency {}", node, dep);
            }
        }
        for layer in &layers {
            prop_assert!(layer.windows(2).all(|w| w[0] < w[1]), "layer sorted by name");
        }
    }

    #[test]
    fn one_back_edge_is_reported_as_a_cycle(graph in dag(12), pick in any::<proptest::sample::Index>()) {
        // Add an edge from the end of a dependency to its dependent: a cycle.
        let edges: Vec<(usize, String)> =
            graph.iter().enumerate().flat_map(|(i, (_, ds))| ds.iter().map(move |d| (i, d.clone()))).collect();
        prop_assume!(!edges.is_empty());
        let (from, to) = pick.get(&edges).clone();
        let mut graph = graph;
        let dependent = graph[from].0.clone();
        graph.iter_mut().find(|(n, _)| *n == to).unwrap().1.push(dependent.clone());
        let err = plan_of(&graph).unwrap_err();
        prop_assert!(err.missing.is_empty());
        prop_assert_eq!(err.cycles.len(), 1);
        let cycle = &err.cycles[0];
        prop_assert_eq!(cycle.first(), cycle.last());
        prop_assert!(cycle.contains(&dependent) && cycle.contains(&to), "{:?} lacks {} or {}", cycle, dependent, to);
        // Each step of the reported path is a real edge.
        for step in cycle.windows(2) {
            let deps = &graph.iter().find(|(n, _)| *n == step[0]).unwrap().1;
            prop_assert!(deps.contains(&step[1]), "{} does not depend on {}", step[0], step[1]);
        }
    }

    #[test]
    fn agrees_with_a_naive_reference_on_small_graphs(
        edges in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 5), 1..=5)
    ) {
        let n = edges.len();
        let graph: Vec<(String, Vec<String>)> = (0..n)
            .map(|i| (format!("s{i}"), (0..n).filter(|&j| edges[i][j]).map(|j| format!("s{j}")).collect()))
            .collect();
        match plan_of(&graph) {
            Ok(layers) => {
                prop_assert!(naive_has_order(&graph));
                for (k, layer) in layers.iter().enumerate() {
                    for node in layer {
                        prop_assert_eq!(naive_depth(&graph, node), k);
                    }
                }
            }
            Err(err) => {
                prop_assert!(!naive_has_order(&graph));
                prop_assert!(!err.cycles.is_empty());
                let on_cycles: HashSet<&String> = err.cycles.iter().flatten().collect();
                prop_assert!(!on_cycles.is_empty());
            }
        }
    }
}
