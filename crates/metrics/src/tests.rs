//! Metrics tests: seed 002's collector cases, bounded labels, exports
//! (snapshots and a real Prometheus parser), resets and concurrency.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use modelfleet_errors::ErrorClass;
use modelfleet_registry::{Clock, ManualClock, Money};

use super::*;

/// Memory that reads from a script of values.
struct Scripted(Mutex<Vec<u64>>);

impl MemorySource for Scripted {
    fn rss_bytes(&self) -> Result<u64, String> {
        let mut values = self.0.lock().unwrap();
        if values.len() > 1 { Ok(values.remove(0)) } else { values.first().copied().ok_or_else(|| "empty".into()) }
    }
}

const T0: u64 = 1_795_275_000_000;

fn metrics_with(memory: impl MemorySource + 'static) -> (Metrics, Arc<ManualClock>) {
    metrics_configured(MetricsConfig::default(), memory)
}

fn metrics_configured(config: MetricsConfig, memory: impl MemorySource + 'static) -> (Metrics, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let shared = Arc::clone(&clock);
    (Metrics::with_sources(config, move || shared.now_ms(), memory), clock)
}

fn metrics() -> (Metrics, Arc<ManualClock>) {
    metrics_with(NoMemory("no access in this sandbox".into()))
}

fn sample(model: &str, ms: u64, error: Option<ErrorClass>) -> RequestSample<'_> {
    RequestSample {
        model,
        latency: Duration::from_millis(ms),
        error,
        input_tokens: 100,
        output_tokens: 20,
        cost: Money::from_nanos(1_500),
    }
}

#[test]
fn cache_hit_rate() {
    let (m, _) = metrics();
    assert_eq!(m.to_json(&[Category::Cache])["cache"]["hit_rate"], 0.0, "no requests: 0%");
    for _ in 0..7 {
        m.record_cache_hit();
    }
    for _ in 0..3 {
        m.record_cache_miss();
    }
    let cache = m.snapshot(&[Category::Cache]).cache.unwrap();
    assert_eq!((cache.hits, cache.misses), (7, 3));
    assert!((cache.hit_rate - 0.7).abs() < 1e-12);
}

#[test]
fn latency_accepts_zero_and_an_hour_and_refuses_negatives() {
    let (m, _) = metrics();
    assert_eq!(m.record_latency(-0.001), Err(Error::InvalidLatency(-0.001)));
    assert!(m.record_latency(f64::NAN).is_err());
    assert!(m.record_latency(f64::INFINITY).is_err());
    assert_eq!(m.record_latency(0.0), Ok(()));
    assert_eq!(m.record_latency(3_600.0), Ok(()));
    let l = m.snapshot(&[Category::Latency]).latency.unwrap();
    assert_eq!(l.count, 2);
    assert!((l.max_ms - 3_600_000.0).abs() / 3_600_000.0 < 0.01, "{l:?}");
    assert_eq!(Error::InvalidLatency(-1.0).to_string(), "latency must be a finite number of seconds >= 0, got -1");
}

#[test]
fn percentiles_of_few_and_many_samples() {
    let (m, _) = metrics();
    for ms in [10.0, 20.0, 30.0] {
        m.record_latency(ms / 1_000.0).unwrap();
    }
    let l = m.snapshot(&[Category::Latency]).latency.unwrap();
    assert!((l.p50_ms - 20.0).abs() < 0.2 && (l.p99_ms - 30.0).abs() < 0.3, "{l:?}");
    m.reset(&[Category::Latency]);
    for i in 1..=1_000 {
        m.record_latency(f64::from(i) / 1_000.0).unwrap();
    }
    let l = m.snapshot(&[Category::Latency]).latency.unwrap();
    for (got, want) in [(l.p50_ms, 500.0), (l.p95_ms, 950.0), (l.p99_ms, 990.0)] {
        assert!((got - want).abs() <= want * 0.01, "{got} vs {want}");
    }
}

#[test]
fn memory_current_peak_growth_and_unavailable() {
    let mib = 1024 * 1024;
    let (m, _) = metrics_with(Scripted(Mutex::new(vec![100 * mib, 150 * mib, 120 * mib])));
    let first = m.snapshot(&[Category::Memory]).memory.unwrap();
    assert_eq!((first.current_mb, first.growth_percent), (Some(100.0), Some(0.0)));
    let second = m.snapshot(&[Category::Memory]).memory.unwrap();
    assert_eq!((second.current_mb, second.peak_mb), (Some(150.0), Some(150.0)));
    let third = m.snapshot(&[Category::Memory]).memory.unwrap();
    assert_eq!((third.current_mb, third.peak_mb, third.growth_percent), (Some(120.0), Some(150.0), Some(20.0)));

    let (m, _) = metrics();
    m.record_cache_hit();
    let json = m.to_json(&Category::ALL);
    assert_eq!(json["memory"], serde_json::json!({"available": false, "reason": "no access in this sandbox"}));
    assert_eq!(json["cache"]["hits"], 1, "the rest of the export still works");
    assert!(!m.to_prometheus(&Category::ALL).contains("memory"), "no memory family without data");
}

#[test]
fn the_real_process_memory_is_read() {
    let source = ProcessMemory::new();
    let rss = source.rss_bytes().expect("this test's own process is readable on Linux");
    assert!(rss > 1024 * 1024, "a Rust test process uses more than 1 MiB: {rss}");
}

#[test]
fn throughput_total_since_start_and_window() {
    let (m, clock) = metrics();
    for _ in 0..100 {
        m.record_request(&sample("a", 5, None));
    }
    clock.advance_ms(100_000);
    for _ in 0..30 {
        m.record_request(&sample("a", 5, None));
        clock.advance_ms(1_000);
    }
    let t = m.snapshot(&[Category::Throughput]).throughput.unwrap();
    assert_eq!(t.total_requests, 130);
    assert!((t.requests_per_second - 1.0).abs() < 1e-9, "130 in 130 s: {t:?}");
    assert!((t.window_requests_per_second - 0.5).abs() < 1e-9, "30 in the last 60 s: {t:?}");
}

#[test]
fn unknown_models_collapse_into_other() {
    let (m, _) = metrics();
    m.set_known_models(["gpt-4o", "haiku"]);
    m.record_request(&sample("gpt-4o", 200, None));
    m.record_request(&sample("gpt-4o", 400, Some(ErrorClass::Timeout)));
    for i in 0..1_000 {
        let hostile = format!("attacker-{i}");
        m.record_request(&sample(&hostile, 10, None));
    }
    let models = m.snapshot(&[Category::Models]).models.unwrap();
    assert_eq!(models.keys().collect::<Vec<_>>(), ["gpt-4o", "haiku", "other"]);
    assert_eq!(models["other"].requests, 1_000);
    let gpt = &models["gpt-4o"];
    assert_eq!((gpt.requests, gpt.successes, gpt.errors.get(&ErrorClass::Timeout)), (2, 1, Some(&1)));
    assert_eq!((gpt.input_tokens, gpt.output_tokens, gpt.cost), (200, 40, Money::from_nanos(3_000)));
    assert!(gpt.p50_ms > 100.0 && gpt.p50_ms <= 250.0, "bucket estimate: {gpt:?}");
    let errors = m.snapshot(&[Category::Errors]).errors.unwrap();
    assert_eq!((errors.total, errors.by_class.get(&ErrorClass::Timeout)), (1, Some(&1)));
}

#[test]
fn categories_parse_and_unknown_ones_list_the_valid() {
    assert_eq!(Category::parse_list("cache, latency,cache").unwrap(), [Category::Cache, Category::Latency]);
    assert_eq!(Category::parse_list("").unwrap(), Category::ALL);
    assert_eq!(
        Category::parse_list("cache,disk,cpu").unwrap_err().to_string(),
        "unknown metrics categories \"disk\", \"cpu\"; valid: cache, latency, memory, throughput, errors, models, resilience, budget, gauges"
    );
    let (m, _) = metrics();
    let json = m.to_json(&[Category::Cache, Category::Latency]);
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["cache", "latency", "schema", "timestamp_ms", "uptime_seconds"]);
}

#[test]
fn resets_per_category_and_in_total() {
    let (m, _) = metrics();
    m.set_known_models(["a"]);
    m.record_cache_hit();
    m.record_request(&sample("a", 10, Some(ErrorClass::ServerError)));
    m.set_budget("global", "monthly", Money::from_dollars(1), Money::from_dollars(10)).unwrap();
    m.reset(&[Category::Cache]);
    let s = m.snapshot(&Category::ALL);
    assert_eq!(s.cache.unwrap().hits, 0);
    assert_eq!(s.latency.unwrap().count, 1, "other categories untouched");
    m.reset_all();
    let s = m.snapshot(&Category::ALL);
    assert_eq!(s.latency.unwrap().count, 0);
    assert_eq!(s.throughput.unwrap().total_requests, 0);
    assert_eq!(s.errors.unwrap().total, 0);
    assert_eq!(s.models.unwrap()["a"].requests, 0);
    assert!(s.budget.unwrap().is_empty());
}

#[test]
fn ten_threads_times_a_hundred_count_exactly() {
    let (m, _) = metrics();
    let m = Arc::new(m);
    let threads: Vec<_> = (0..10)
        .map(|_| {
            let m = Arc::clone(&m);
            std::thread::spawn(move || {
                for i in 0..100 {
                    m.record_cache_hit();
                    m.record_latency(f64::from(i) / 1_000.0).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = m.snapshot(&Category::ALL);
    assert_eq!(s.cache.unwrap().hits, 1_000);
    assert_eq!(s.latency.unwrap().count, 1_000);
}

#[test]
fn gauges_and_budgets_are_bounded_and_validated() {
    let (m, _) = metrics();
    assert!(m.set_gauge("catalog_models", "Models in the catalog.", 9.0).is_ok());
    assert_eq!(m.set_gauge("9lives", "", 1.0), Err(Error::InvalidName("9lives".into())));
    assert!(m.set_gauge("bad name", "", 1.0).is_err());
    for i in 0..MetricsConfig::default().max_series {
        m.set_budget(&format!("s{i}"), "daily", Money::ZERO, Money::ZERO).unwrap();
    }
    assert_eq!(
        m.set_budget("one-more", "daily", Money::ZERO, Money::ZERO).unwrap_err().to_string(),
        "too many budgets: at most 256"
    );
}

/// A populated collector with deterministic time and memory.
fn populated() -> Metrics {
    let mib = 1024 * 1024;
    let (m, clock) = metrics_with(Scripted(Mutex::new(vec![64 * mib])));
    m.set_known_models(["claude-3-haiku", "gpt-4o-mini", "weird\"id\\with\nnewline"]);
    for (i, model) in
        ["claude-3-haiku", "gpt-4o-mini", "claude-3-haiku", "unknown-x", "weird\"id\\with\nnewline"].iter().enumerate()
    {
        let error = (i == 1).then_some(ErrorClass::RateLimited);
        m.record_request(&sample(model, 80 * (i as u64 + 1), error));
    }
    for _ in 0..3 {
        m.record_cache_hit();
    }
    m.record_cache_miss();
    m.set_budget("global", "monthly", "1.25".parse().unwrap(), Money::from_dollars(50)).unwrap();
    m.set_budget("global", "daily", "0.25".parse().unwrap(), Money::from_dollars(5)).unwrap();
    m.record_budget_overshoot("0.125".parse().unwrap());
    m.set_gauge("catalog_models", "Models in the catalog.", 9.0).unwrap();
    let open = ModelResilience { circuit: 2, ejections: 3, multiplier: 4, cooldown_remaining_secs: 12.5 };
    m.set_model_resilience("claude-3-haiku", open).unwrap();
    m.set_model_resilience("weird\"id\\with\nnewline", ModelResilience { circuit: 1, ..ModelResilience::default() })
        .unwrap();
    m.set_retry_budget("anthropic", 7.5).unwrap();
    m.record_hedge("openai", true);
    m.record_hedge("openai", false);
    m.record_hedge("anthropic", false);
    clock.advance_ms(12_500);
    m
}

#[test]
fn json_export_snapshot() {
    let json = populated().to_json(&Category::ALL);
    insta::assert_json_snapshot!("json_export", json, {
        ".timestamp_ms" => "[timestamp]",
        ".uptime_seconds" => "[uptime]",
    });
}

#[test]
fn prometheus_export_snapshot() {
    let text = populated().to_prometheus(&Category::ALL);
    let redacted: String =
        text.lines()
            .map(|line| {
                if line.starts_with("modelfleet_uptime_seconds ") { "modelfleet_uptime_seconds [uptime]" } else { line }
            })
            .collect::<Vec<_>>()
            .join("\n");
    insta::assert_snapshot!("prometheus_export", redacted);
}

#[test]
fn prometheus_output_parses_and_every_family_is_documented() {
    let text = populated().to_prometheus(&Category::ALL);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition");
    let mut families: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(|l| l.split(' ').next().unwrap()).collect();
    families.dedup();
    assert_eq!(families.len(), 26, "every family of every category: {families:?}");
    for family in &families {
        assert!(scrape.docs.contains_key(*family), "{family} has no HELP");
        assert!(scrape.samples.iter().any(|s| s.metric == *family), "{family} has no sample in the parsed scrape");
        let kind = text.lines().find(|l| l.starts_with(&format!("# TYPE {family} "))).unwrap();
        if kind.ends_with(" counter") {
            assert!(family.ends_with("_total"), "counter {family} must end in _total");
        }
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok() || value == "+Inf", "bad value in {line:?}");
    }
    // The escaped label value parses back to the original id.
    let weird = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "modelfleet_model_tokens_total" && s.labels.get("model").is_some_and(|m| m.contains("weird"))
        })
        .expect("the weird model's series");
    // prometheus-parse hands label values back as written (escaped); the
    // exposition format's escapes are \\, \" and \n, and undoing them gives the id.
    let raw = weird.labels.get("model").unwrap();
    assert_eq!(raw, r#"weird\"id\\with\nnewline"#);
    let unescaped = raw.replace("\\n", "\n").replace("\\\"", "\"").replace("\\\\", "\\");
    assert_eq!(unescaped, "weird\"id\\with\nnewline");
    let hits = scrape.samples.iter().find(|s| s.metric == "modelfleet_cache_hits_total").unwrap();
    assert_eq!(hits.value, prometheus_parse::Value::Counter(3.0));
}

#[test]
fn histograms_are_cumulative_and_consistent() {
    let m = populated();
    let text = m.to_prometheus(&[Category::Latency]);
    let buckets: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("modelfleet_request_duration_seconds_bucket"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
        .collect();
    assert_eq!(buckets.len(), LATENCY_BUCKETS.len() + 1);
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "cumulative: {buckets:?}");
    assert!(text.contains("modelfleet_request_duration_seconds_count 5\n"));
    assert!(text.contains("modelfleet_request_duration_seconds_bucket{le=\"+Inf\"} 5\n"));
    assert!(text.contains("modelfleet_request_duration_seconds_sum 1.2\n"), "{text}");
}

#[test]
fn values_update_in_real_time() {
    let (m, clock) = metrics();
    let before = m.snapshot(&[Category::Throughput]);
    m.record_request(&sample("a", 1, None));
    clock.advance_ms(1_500);
    let after = m.snapshot(&[Category::Throughput]);
    assert_eq!(after.throughput.unwrap().total_requests, before.throughput.unwrap().total_requests + 1);
    assert!(after.uptime_seconds > before.uptime_seconds);
    assert!(after.timestamp_ms > before.timestamp_ms);
}

/// Asserts that `text` declares `family` with `kind` (and a HELP) and holds
/// the sample line `sample` exactly.
fn check_family(text: &str, family: &str, kind: &str, sample: &str) {
    assert!(text.contains(&format!("\n# HELP {family} ")), "{family} has no HELP:\n{text}");
    assert!(text.contains(&format!("\n# TYPE {family} {kind}\n")), "{family} is not a {kind}:\n{text}");
    assert!(text.lines().any(|l| l == sample), "no line {sample:?}:\n{text}");
    if kind == "counter" {
        assert!(family.ends_with("_total"), "counter {family} must end in _total");
    }
}

#[test]
fn resilience_series_are_exported_with_their_values_and_types() {
    let (m, _) = metrics();
    let state = ModelResilience { circuit: 2, ejections: 5, multiplier: 8, cooldown_remaining_secs: 30.25 };
    m.set_model_resilience("gpt-4o", state).unwrap();
    m.set_model_resilience("a\"b", ModelResilience { circuit: 1, ..ModelResilience::default() }).unwrap();
    m.set_retry_budget("openai", 2.5).unwrap();
    m.record_hedge("openai", true);
    m.record_hedge("openai", true);
    m.record_hedge("openai", false);
    let text = m.to_prometheus(&[Category::Resilience]);
    for (family, kind, sample) in [
        ("modelfleet_model_circuit_state", "gauge", r#"modelfleet_model_circuit_state{model="gpt-4o"} 2"#),
        ("modelfleet_model_circuit_state", "gauge", r#"modelfleet_model_circuit_state{model="a\"b"} 1"#),
        ("modelfleet_model_ejections_total", "counter", r#"modelfleet_model_ejections_total{model="gpt-4o"} 5"#),
        ("modelfleet_model_ejection_multiplier", "gauge", r#"modelfleet_model_ejection_multiplier{model="gpt-4o"} 8"#),
        (
            "modelfleet_model_cooldown_remaining_seconds",
            "gauge",
            r#"modelfleet_model_cooldown_remaining_seconds{model="gpt-4o"} 30.25"#,
        ),
        (
            "modelfleet_model_cooldown_remaining_seconds",
            "gauge",
            r#"modelfleet_model_cooldown_remaining_seconds{model="a\"b"} 0"#,
        ),
        (
            "modelfleet_provider_retry_budget_remaining",
            "gauge",
            r#"modelfleet_provider_retry_budget_remaining{provider="openai"} 2.5"#,
        ),
        (
            "modelfleet_provider_hedges_started_total",
            "counter",
            r#"modelfleet_provider_hedges_started_total{provider="openai"} 3"#,
        ),
        (
            "modelfleet_provider_hedges_won_total",
            "counter",
            r#"modelfleet_provider_hedges_won_total{provider="openai"} 2"#,
        ),
    ] {
        check_family(&text, family, kind, sample);
    }
    assert!(
        text.contains(
            "# HELP modelfleet_model_circuit_state Circuit state per model: 0 closed, 1 half-open, 2 open.\n"
        )
    );
    assert!(!m.to_prometheus(&[Category::Models]).contains("circuit"), "only in its own category");

    // A later state replaces the earlier one.
    m.set_model_resilience("gpt-4o", ModelResilience { ejections: 6, ..state }).unwrap();
    let json = m.to_json(&[Category::Resilience]);
    assert_eq!(
        json["resilience"]["models"]["gpt-4o"],
        serde_json::json!({"circuit": 2, "ejections": 6, "multiplier": 8, "cooldown_remaining_secs": 30.25})
    );
    assert_eq!(json["resilience"]["retry_budget_remaining"]["openai"], 2.5);
    assert_eq!(json["resilience"]["hedges"]["openai"], serde_json::json!({"started": 3, "won": 2}));
    assert_eq!(json["resilience"]["hedges"][OTHER_PROVIDER], serde_json::json!({"started": 0, "won": 0}));
}

#[test]
fn no_exported_name_doubles_the_prefix() {
    let m = populated();
    // The gateway names its gauges with the prefix; it is not added again.
    m.set_gauge("modelfleet_gateway_streams_open", "Streams being relayed now.", 2.0).unwrap();
    let text = m.to_prometheus(&Category::ALL);
    let names: Vec<&str> = text
        .lines()
        .map(|l| {
            let l = l.strip_prefix("# HELP ").or_else(|| l.strip_prefix("# TYPE ")).unwrap_or(l);
            l.split(['{', ' ']).next().unwrap()
        })
        .collect();
    for name in &names {
        assert!(name.starts_with("modelfleet_"), "{name} has no prefix");
        assert!(!name.contains("modelfleet_modelfleet"), "{name} doubles the prefix");
    }
    for family in ["modelfleet_gateway_streams_open", "modelfleet_catalog_models", "modelfleet_model_circuit_state"] {
        assert!(names.contains(&family), "{family} missing");
    }
    // JSON keeps the names as set.
    assert_eq!(m.to_json(&[Category::Gauges])["gauges"]["modelfleet_gateway_streams_open"], 2.0);
    // `x` and `modelfleet_x` are one gauge, kept under the first spelling.
    m.set_gauge("gateway_streams_open", "Streams being relayed now.", 3.0).unwrap();
    m.set_gauge("modelfleet_catalog_models", "Models in the catalog.", 10.0).unwrap();
    let gauges = m.snapshot(&[Category::Gauges]).gauges.unwrap();
    assert_eq!(gauges.len(), 2, "{gauges:?}");
    assert_eq!((gauges["modelfleet_gateway_streams_open"], gauges["catalog_models"]), (3.0, 10.0));
}

#[test]
fn an_application_series_named_total_is_typed_a_counter() {
    let m = populated();
    m.set_gauge("modelfleet_gateway_streams_open", "Streams being relayed now.", 2.0).unwrap();
    m.set_gauge("gateway_stream_failures_total", "Streams ended by an upstream failure.", 5.0).unwrap();
    let text = m.to_prometheus(&[Category::Gauges]);
    assert!(text.contains("# TYPE modelfleet_gateway_streams_open gauge\n"), "{text}");
    assert!(text.contains("# TYPE modelfleet_gateway_stream_failures_total counter\n"), "{text}");
    assert!(text.contains("\nmodelfleet_gateway_stream_failures_total 5\n"), "{text}");
}

#[test]
fn resilience_series_are_bounded_and_hedges_overflow_into_other() {
    let config = MetricsConfig { max_series: 2, ..MetricsConfig::default() };
    let (m, _) = metrics_configured(config, NoMemory("none".into()));
    let state = ModelResilience::default();
    m.set_model_resilience("a", state).unwrap();
    m.set_model_resilience("b", state).unwrap();
    let full = Err(Error::TooManySeries { kind: "model resilience states", max: 2 });
    assert_eq!(m.set_model_resilience("c", state), full);
    assert_eq!(m.set_model_resilience("a", ModelResilience { circuit: 2, ..state }), Ok(()), "known ones update");
    m.set_retry_budget("p1", 1.0).unwrap();
    m.set_retry_budget("p2", 1.0).unwrap();
    assert_eq!(m.set_retry_budget("p3", 1.0).unwrap_err().to_string(), "too many retry budgets: at most 2");
    assert_eq!(m.set_retry_budget("p1", 0.0), Ok(()));

    for provider in ["p1", "p2", "p3", "p4", "p1"] {
        m.record_hedge(provider, true);
    }
    m.record_hedge(OTHER_PROVIDER, false);
    let r = m.snapshot(&[Category::Resilience]).resilience.unwrap();
    assert_eq!(r.models.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(r.models["a"].circuit, 2);
    assert_eq!(r.retry_budget_remaining.keys().collect::<Vec<_>>(), ["p1", "p2"]);
    assert_eq!(r.hedges.keys().collect::<Vec<_>>(), ["other", "p1", "p2"]);
    assert_eq!(r.hedges["p1"], HedgeStats { started: 2, won: 2 });
    assert_eq!(r.hedges["other"], HedgeStats { started: 3, won: 2 }, "p3, p4 and other itself");
    let text = m.to_prometheus(&[Category::Resilience]);
    assert!(text.contains("modelfleet_provider_hedges_started_total{provider=\"other\"} 3\n"), "{text}");
}

#[test]
fn resilience_resets_with_its_category_only() {
    let (m, _) = metrics();
    let fill = |m: &Metrics| {
        m.set_model_resilience("a", ModelResilience { ejections: 4, ..ModelResilience::default() }).unwrap();
        m.set_retry_budget("p", 3.0).unwrap();
        m.record_hedge("p", true);
        m.record_hedge("q", false);
    };
    fill(&m);
    m.reset(&[Category::Models, Category::Budget, Category::Gauges, Category::Errors]);
    let r = m.snapshot(&[Category::Resilience]).resilience.unwrap();
    assert_eq!((r.models.len(), r.retry_budget_remaining.len(), r.hedges["p"].started), (1, 1, 1), "untouched");
    m.reset(&[Category::Resilience]);
    let r = m.snapshot(&[Category::Resilience]).resilience.unwrap();
    assert!(r.models.is_empty() && r.retry_budget_remaining.is_empty());
    assert_eq!(r.hedges.keys().collect::<Vec<_>>(), [OTHER_PROVIDER]);
    fill(&m);
    m.record_hedge(OTHER_PROVIDER, true);
    m.reset_all();
    let r = m.snapshot(&[Category::Resilience]).resilience.unwrap();
    assert!(r.models.is_empty() && r.retry_budget_remaining.is_empty());
    assert_eq!(r.hedges[OTHER_PROVIDER], HedgeStats { started: 0, won: 0 });
}
