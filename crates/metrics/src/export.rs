//! Exports: one snapshot, rendered as JSON or as Prometheus text 0.0.4.

use std::{collections::BTreeMap, fmt::Write as _, sync::atomic::Ordering};

use modelfleet_errors::ErrorClass;
use modelfleet_registry::Money;
use serde::Serialize;

use crate::{
    Category, Metrics,
    collector::{
        Buckets, HedgeCounts, LATENCY_BUCKETS, ModelResilience, ModelSeries, OTHER_MODEL, OTHER_PROVIDER, PREFIX, lock,
    },
};

/// The JSON schema's name; bumped on any incompatible change.
pub const SCHEMA: &str = "modelfleet.metrics.v1";

/// Cache hits and misses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheStats {
    /// Hits.
    pub hits: u64,
    /// Misses.
    pub misses: u64,
    /// hits / (hits + misses), 0 with neither.
    pub hit_rate: f64,
}

/// Latency over every request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyStats {
    /// Latencies recorded.
    pub count: u64,
    /// Mean, ms.
    pub mean_ms: f64,
    /// Median, ms (2 significant figures).
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
    #[serde(skip)]
    pub(crate) buckets: (Vec<u64>, u64, f64),
}

/// Process memory; when unavailable, only this section says so.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryStats {
    /// Whether it could be read.
    pub available: bool,
    /// Resident memory now, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_mb: Option<f64>,
    /// The highest sampled, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_mb: Option<f64>,
    /// Growth since the first sample, percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth_percent: Option<f64>,
    /// Why it is unavailable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip)]
    pub(crate) bytes: Option<(u64, u64)>,
}

/// Requests over time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThroughputStats {
    /// Requests since start (or the last throughput reset).
    pub total_requests: u64,
    /// total / seconds since then.
    pub requests_per_second: f64,
    /// The sliding window's length.
    pub window_seconds: u32,
    /// Requests per second over the window.
    pub window_requests_per_second: f64,
}

/// Errors by class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorStats {
    /// All errors.
    pub total: u64,
    /// Per class (non-zero only).
    pub by_class: BTreeMap<ErrorClass, u64>,
}

/// One model's series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelMetrics {
    /// Requests.
    pub requests: u64,
    /// Of which succeeded.
    pub successes: u64,
    /// Failures per class (non-zero only).
    pub errors: BTreeMap<ErrorClass, u64>,
    /// Median latency, ms, estimated from the histogram buckets.
    pub p50_ms: f64,
    /// 95th percentile, ms, estimated from the buckets.
    pub p95_ms: f64,
    /// 99th percentile, ms, estimated from the buckets.
    pub p99_ms: f64,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Exact cost, dollars.
    pub cost: Money,
    #[serde(skip)]
    pub(crate) outcomes: Vec<(String, u64)>,
    #[serde(skip)]
    pub(crate) buckets: (Vec<u64>, u64, f64),
}

/// A budget's spend.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetMetrics {
    /// Its scope (`global`, `key:team-a`, …).
    pub scope: String,
    /// Its period (`daily`, `monthly`, …).
    pub period: String,
    /// Spent this period.
    pub spent: Money,
    /// The limit.
    pub limit: Money,
}

/// Settlements that took a hard budget past its limit: an upstream that
/// answered more than the request's output cap allowed. Each is charged in
/// full; the budget then refuses every paid request until its period ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OvershootStats {
    /// How many settlements went past a hard limit.
    pub count: u64,
    /// By how much in all.
    pub amount: Money,
}

/// One provider's hedged requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HedgeStats {
    /// Hedges started.
    pub started: u64,
    /// Of which won (their answer was the one used).
    pub won: u64,
}

/// Failure handling as the fallback tracker and executor report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResilienceStats {
    /// Per model id: circuit, ejections, ejection multiplier, cooldown left.
    pub models: BTreeMap<String, ModelResilience>,
    /// Per provider: the retries its retry budget has left.
    pub retry_budget_remaining: BTreeMap<String, f64>,
    /// Per provider (and [`OTHER_PROVIDER`], always present): hedges.
    pub hedges: BTreeMap<String, HedgeStats>,
}

/// Everything asked for, at one instant. Absent sections were filtered out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// When (Unix ms).
    pub timestamp_ms: u64,
    /// Seconds since the collector started.
    pub uptime_seconds: f64,
    /// See [`CacheStats`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheStats>,
    /// See [`LatencyStats`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyStats>,
    /// See [`MemoryStats`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    /// See [`ThroughputStats`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throughput: Option<ThroughputStats>,
    /// See [`ErrorStats`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<ErrorStats>,
    /// Per model id (and [`OTHER_MODEL`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<BTreeMap<String, ModelMetrics>>,
    /// See [`ResilienceStats`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resilience: Option<ResilienceStats>,
    /// Per budget, keyed `"<scope> <period>"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<BTreeMap<String, BudgetMetrics>>,
    /// See [`OvershootStats`] (with the budget category).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_overshoot: Option<OvershootStats>,
    /// Application gauges.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gauges: Option<BTreeMap<String, f64>>,
    #[serde(skip)]
    gauge_help: BTreeMap<String, String>,
}

/// Estimates a quantile (ms) from cumulative bucket counts, interpolating
/// linearly inside the bucket as Prometheus's `histogram_quantile` does.
fn bucket_quantile(cumulative: &[u64], total: u64, q: f64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let rank = q * total as f64;
    let mut lower = (0.0, 0u64);
    for (i, &count) in cumulative.iter().enumerate() {
        if count as f64 >= rank {
            let upper = LATENCY_BUCKETS[i];
            let in_bucket = (count - lower.1) as f64;
            let share = if in_bucket > 0.0 { (rank - lower.1 as f64) / in_bucket } else { 1.0 };
            return (lower.0 + (upper - lower.0) * share.clamp(0.0, 1.0)) * 1_000.0;
        }
        lower = (LATENCY_BUCKETS[i], count);
    }
    LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1] * 1_000.0
}

fn model_metrics(series: &ModelSeries) -> ModelMetrics {
    let count = |i: usize| series.outcomes[i].load(Ordering::Relaxed);
    let errors: BTreeMap<ErrorClass, u64> =
        ErrorClass::ALL.into_iter().map(|c| (c, count(1 + c.index()))).filter(|(_, n)| *n > 0).collect();
    let successes = count(0);
    let mut outcomes = vec![("success".to_owned(), successes)];
    outcomes.extend(ErrorClass::ALL.into_iter().map(|c| (c.as_str().to_owned(), count(1 + c.index()))));
    let buckets = series.latency.read();
    let q = |p| bucket_quantile(&buckets.0, buckets.1, p);
    ModelMetrics {
        requests: successes + errors.values().sum::<u64>(),
        successes,
        p50_ms: q(0.5),
        p95_ms: q(0.95),
        p99_ms: q(0.99),
        errors,
        input_tokens: series.input_tokens.load(Ordering::Relaxed),
        output_tokens: series.output_tokens.load(Ordering::Relaxed),
        cost: Money::from_nanos(i64::try_from(series.cost_nanos.load(Ordering::Relaxed)).unwrap_or(i64::MAX)),
        outcomes,
        buckets,
    }
}

fn latency_stats(m: &Metrics, buckets: &Buckets) -> LatencyStats {
    let hist = lock(&m.latency);
    let ms = |us: u64| us as f64 / 1_000.0;
    let empty = hist.is_empty();
    LatencyStats {
        count: hist.len(),
        mean_ms: if empty { 0.0 } else { hist.mean() / 1_000.0 },
        p50_ms: if empty { 0.0 } else { ms(hist.value_at_quantile(0.50)) },
        p95_ms: if empty { 0.0 } else { ms(hist.value_at_quantile(0.95)) },
        p99_ms: if empty { 0.0 } else { ms(hist.value_at_quantile(0.99)) },
        max_ms: if empty { 0.0 } else { ms(hist.max()) },
        buckets: buckets.read(),
    }
}

fn hedge_stats(counts: &HedgeCounts) -> HedgeStats {
    let (started, won) = counts.read();
    HedgeStats { started, won }
}

impl Metrics {
    fn resilience(&self) -> ResilienceStats {
        let mut hedges: BTreeMap<String, HedgeStats> =
            self.hedges.iter().map(|e| (e.key().to_string(), hedge_stats(e.value()))).collect();
        hedges.insert(OTHER_PROVIDER.to_owned(), hedge_stats(&self.other_hedges));
        ResilienceStats {
            models: lock(&self.resilience).clone(),
            retry_budget_remaining: lock(&self.retry_budgets).clone(),
            hedges,
        }
    }

    /// Every budget's series, keyed `"<scope> <period>"`.
    fn budgets(&self) -> BTreeMap<String, BudgetMetrics> {
        lock(&self.budgets)
            .iter()
            .map(|((scope, period), (spent, limit))| {
                let metrics =
                    BudgetMetrics { scope: scope.clone(), period: period.clone(), spent: *spent, limit: *limit };
                (format!("{scope} {period}"), metrics)
            })
            .collect()
    }

    fn overshoot(&self) -> OvershootStats {
        OvershootStats {
            count: self.overshoots.load(Ordering::Relaxed),
            amount: Money::from_nanos(self.overshoot_nanos.load(Ordering::Relaxed)),
        }
    }

    /// The chosen categories now (memory is sampled, so its peak follows).
    #[must_use]
    pub fn snapshot(&self, categories: &[Category]) -> Snapshot {
        let now = self.clock.now_ms();
        let wants = |c| categories.contains(&c);
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let cache = wants(Category::Cache).then(|| {
            let (hits, misses) = (self.cache_hits.load(Ordering::Relaxed), self.cache_misses.load(Ordering::Relaxed));
            let total = hits + misses;
            CacheStats { hits, misses, hit_rate: if total == 0 { 0.0 } else { hits as f64 / total as f64 } }
        });
        let memory = wants(Category::Memory).then(|| match self.memory_track.sample(self.memory.as_ref()) {
            Ok((current, peak, baseline)) => MemoryStats {
                available: true,
                current_mb: Some(mib(current)),
                peak_mb: Some(mib(peak)),
                growth_percent: Some(if baseline == 0 {
                    0.0
                } else {
                    (current as f64 - baseline as f64) * 100.0 / baseline as f64
                }),
                reason: None,
                bytes: Some((current, peak)),
            },
            Err(reason) => MemoryStats {
                available: false,
                current_mb: None,
                peak_mb: None,
                growth_percent: None,
                reason: Some(modelfleet_errors::sanitize(&reason).into_owned()),
                bytes: None,
            },
        });
        let throughput = wants(Category::Throughput).then(|| {
            let t = &self.throughput;
            let total = t.total.load(Ordering::Relaxed);
            let elapsed = now.saturating_sub(t.since_ms.load(Ordering::Relaxed)) as f64 / 1_000.0;
            let second = now / 1_000;
            let window = self.config.window_secs;
            let oldest = second.saturating_sub(u64::from(window) - 1);
            let in_window: u64 = t
                .slots
                .iter()
                .filter(|(epoch, _)| {
                    let e = epoch.load(Ordering::Relaxed);
                    e != u64::MAX && e >= oldest && e <= second
                })
                .map(|(_, count)| count.load(Ordering::Relaxed))
                .sum();
            let span = f64::from(window).min(elapsed.max(1.0));
            ThroughputStats {
                total_requests: total,
                requests_per_second: if elapsed > 0.0 { total as f64 / elapsed } else { 0.0 },
                window_seconds: window,
                window_requests_per_second: in_window as f64 / span,
            }
        });
        let errors = wants(Category::Errors).then(|| {
            let by_class: BTreeMap<ErrorClass, u64> = ErrorClass::ALL
                .into_iter()
                .map(|c| (c, self.errors[c.index()].load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect();
            ErrorStats { total: by_class.values().sum(), by_class }
        });
        let models = wants(Category::Models).then(|| {
            let mut out: BTreeMap<String, ModelMetrics> =
                self.models.iter().map(|e| (e.key().to_string(), model_metrics(e.value()))).collect();
            out.insert(OTHER_MODEL.to_owned(), model_metrics(&self.other));
            out
        });
        let resilience = wants(Category::Resilience).then(|| self.resilience());
        let (budget, budget_overshoot) =
            if wants(Category::Budget) { (Some(self.budgets()), Some(self.overshoot())) } else { (None, None) };
        let (gauges, gauge_help) = if wants(Category::Gauges) {
            let g = lock(&self.gauges);
            (
                Some(g.iter().map(|(k, (_, v))| (k.clone(), *v)).collect()),
                g.iter().map(|(k, (h, _))| (k.clone(), h.clone())).collect(),
            )
        } else {
            (None, BTreeMap::new())
        };
        Snapshot {
            schema: SCHEMA,
            timestamp_ms: now,
            uptime_seconds: now.saturating_sub(self.started_ms) as f64 / 1_000.0,
            cache,
            latency: wants(Category::Latency).then(|| latency_stats(self, &self.latency_buckets)),
            memory,
            throughput,
            errors,
            models,
            resilience,
            budget,
            budget_overshoot,
            gauges,
            gauge_help,
        }
    }

    /// The chosen categories as JSON (schema [`SCHEMA`], documented on [`Snapshot`]).
    #[must_use]
    pub fn to_json(&self, categories: &[Category]) -> serde_json::Value {
        serde_json::to_value(self.snapshot(categories)).unwrap_or(serde_json::Value::Null)
    }

    /// The chosen categories as Prometheus text exposition 0.0.4.
    #[must_use]
    pub fn to_prometheus(&self, categories: &[Category]) -> String {
        self.snapshot(categories).to_prometheus()
    }
}

/// Writes `value` escaped as a label value: backslash, double quote, newline.
fn push_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Escapes HELP text: backslash and newline.
fn help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Writes a float as Prometheus reads it.
fn push_num(out: &mut String, x: f64) {
    if x.is_nan() {
        out.push_str("NaN");
    } else if x == f64::INFINITY {
        out.push_str("+Inf");
    } else if x == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{x}");
    }
}

/// The `le` label of each bucket bound, as Prometheus writes it.
const LE: [&str; LATENCY_BUCKETS.len()] =
    ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60", "120"];

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, text: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", help(text));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    /// One sample line: `name{labels} value`; `suffix` is appended to the name.
    fn line(&mut self, name: &str, suffix: &str, labels: &[(&str, &str)], le: Option<&str>, value: f64) {
        self.0.push_str(name);
        self.0.push_str(suffix);
        if !labels.is_empty() || le.is_some() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().chain(le.map(|le| ("le", le)).iter()).enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                self.0.push_str(k);
                self.0.push_str("=\"");
                push_label(&mut self.0, v);
                self.0.push('"');
            }
            self.0.push('}');
        }
        self.0.push(' ');
        push_num(&mut self.0, value);
        self.0.push('\n');
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.line(name, "", labels, None, value);
    }

    /// A family with one series per key of `series`, labelled `label`.
    fn labelled<T>(
        &mut self,
        name: &str,
        kind: &str,
        text: &str,
        label: &str,
        series: &BTreeMap<String, T>,
        value: impl Fn(&T) -> f64,
    ) {
        self.family(name, kind, text);
        for (key, v) in series {
            self.sample(name, &[(label, key)], value(v));
        }
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], (cumulative, total, sum): &(Vec<u64>, u64, f64)) {
        for (le, count) in LE.iter().zip(cumulative) {
            self.line(name, "_bucket", labels, Some(le), *count as f64);
        }
        self.line(name, "_bucket", labels, Some("+Inf"), *total as f64);
        self.line(name, "_sum", labels, None, *sum);
        self.line(name, "_count", labels, None, *total as f64);
    }
}

impl Snapshot {
    /// The resilience category's families.
    fn resilience_prometheus(&self, out: &mut Out) {
        let Some(r) = &self.resilience else { return };
        let models = &r.models;
        let circuit = "Circuit state per model: 0 closed, 1 half-open, 2 open.";
        out.labelled("modelfleet_model_circuit_state", "gauge", circuit, "model", models, |m| f64::from(m.circuit));
        let ejections = "Ejections per model in all.";
        out.labelled("modelfleet_model_ejections_total", "counter", ejections, "model", models, |m| m.ejections as f64);
        let multiplier = "The current ejection multiplier per model.";
        out.labelled("modelfleet_model_ejection_multiplier", "gauge", multiplier, "model", models, |m| {
            f64::from(m.multiplier)
        });
        let cooldown = "Seconds left in each model's cooldown (0 when not cooling down).";
        out.labelled("modelfleet_model_cooldown_remaining_seconds", "gauge", cooldown, "model", models, |m| {
            m.cooldown_remaining_secs
        });
        let budget = "Retries left in each provider's retry budget.";
        out.labelled(
            "modelfleet_provider_retry_budget_remaining",
            "gauge",
            budget,
            "provider",
            &r.retry_budget_remaining,
            |x| *x,
        );
        let started = "Hedged requests started per provider (providers past the series bound count under other).";
        out.labelled("modelfleet_provider_hedges_started_total", "counter", started, "provider", &r.hedges, |h| {
            h.started as f64
        });
        let won = "Hedged requests per provider whose answer was the one used.";
        out.labelled("modelfleet_provider_hedges_won_total", "counter", won, "provider", &r.hedges, |h| h.won as f64);
    }

    /// The budget category's families.
    fn budget_prometheus(&self, out: &mut Out) {
        if let Some(budgets) = &self.budget {
            out.family("modelfleet_budget_spent_dollars", "gauge", "Spent this period per budget, US dollars.");
            for b in budgets.values() {
                let labels = [("scope", b.scope.as_str()), ("period", b.period.as_str())];
                out.sample("modelfleet_budget_spent_dollars", &labels, b.spent.as_dollars_f64());
            }
            out.family("modelfleet_budget_limit_dollars", "gauge", "Limit per budget, US dollars.");
            for b in budgets.values() {
                let labels = [("scope", b.scope.as_str()), ("period", b.period.as_str())];
                out.sample("modelfleet_budget_limit_dollars", &labels, b.limit.as_dollars_f64());
            }
        }
        if let Some(overshoot) = &self.budget_overshoot {
            out.family(
                "modelfleet_budget_overshoot_total",
                "counter",
                "Settlements whose actual cost took a hard budget past its limit (charged in full).",
            );
            out.sample("modelfleet_budget_overshoot_total", &[], overshoot.count as f64);
            out.family(
                "modelfleet_budget_overshoot_dollars_total",
                "counter",
                "How far past their hard limits those settlements went, US dollars.",
            );
            out.sample("modelfleet_budget_overshoot_dollars_total", &[], overshoot.amount.as_dollars_f64());
        }
    }

    /// This snapshot as Prometheus text exposition 0.0.4: `# HELP` and
    /// `# TYPE` for every family, counters ending in `_total`, histograms with
    /// cumulative `_bucket{le}`, `_sum` and `_count`, label values escaped.
    #[must_use]
    pub fn to_prometheus(&self) -> String {
        let mut out = Out(String::with_capacity(16 * 1024));
        out.family("modelfleet_uptime_seconds", "gauge", "Seconds since the metrics collector started.");
        out.sample("modelfleet_uptime_seconds", &[], self.uptime_seconds);
        if let Some(c) = &self.cache {
            out.family("modelfleet_cache_hits_total", "counter", "Response-cache hits.");
            out.sample("modelfleet_cache_hits_total", &[], c.hits as f64);
            out.family("modelfleet_cache_misses_total", "counter", "Response-cache misses.");
            out.sample("modelfleet_cache_misses_total", &[], c.misses as f64);
            out.family("modelfleet_cache_hit_ratio", "gauge", "Hits over hits plus misses (0 with neither).");
            out.sample("modelfleet_cache_hit_ratio", &[], c.hit_rate);
        }
        if let Some(l) = &self.latency {
            out.family("modelfleet_request_duration_seconds", "histogram", "Latency of every request.");
            out.histogram("modelfleet_request_duration_seconds", &[], &l.buckets);
        }
        if let Some(m) = &self.memory
            && let Some((current, peak)) = m.bytes
        {
            out.family("modelfleet_memory_resident_bytes", "gauge", "Resident memory of the process.");
            out.sample("modelfleet_memory_resident_bytes", &[], current as f64);
            out.family("modelfleet_memory_peak_bytes", "gauge", "Highest resident memory sampled.");
            out.sample("modelfleet_memory_peak_bytes", &[], peak as f64);
        }
        if let Some(t) = &self.throughput {
            out.family("modelfleet_requests_total", "counter", "Requests handled.");
            out.sample("modelfleet_requests_total", &[], t.total_requests as f64);
            out.family("modelfleet_requests_per_second", "gauge", "Requests per second over the sliding window.");
            out.sample("modelfleet_requests_per_second", &[], t.window_requests_per_second);
        }
        if let Some(e) = &self.errors {
            out.family("modelfleet_errors_total", "counter", "Failed requests by error class.");
            for class in ErrorClass::ALL {
                out.sample(
                    "modelfleet_errors_total",
                    &[("class", class.as_str())],
                    e.by_class.get(&class).copied().unwrap_or(0) as f64,
                );
            }
        }
        if let Some(models) = &self.models {
            out.family(
                "modelfleet_model_requests_total",
                "counter",
                "Requests per model and outcome (success or error class).",
            );
            for (model, m) in models {
                for (outcome, n) in &m.outcomes {
                    out.sample("modelfleet_model_requests_total", &[("model", model), ("outcome", outcome)], *n as f64);
                }
            }
            out.family("modelfleet_model_request_duration_seconds", "histogram", "Latency per model.");
            for (model, m) in models {
                out.histogram("modelfleet_model_request_duration_seconds", &[("model", model)], &m.buckets);
            }
            out.family("modelfleet_model_tokens_total", "counter", "Tokens per model and direction.");
            for (model, m) in models {
                out.sample(
                    "modelfleet_model_tokens_total",
                    &[("model", model), ("direction", "input")],
                    m.input_tokens as f64,
                );
                out.sample(
                    "modelfleet_model_tokens_total",
                    &[("model", model), ("direction", "output")],
                    m.output_tokens as f64,
                );
            }
            out.family("modelfleet_model_cost_dollars_total", "counter", "Spend per model, US dollars.");
            for (model, m) in models {
                out.sample("modelfleet_model_cost_dollars_total", &[("model", model)], m.cost.as_dollars_f64());
            }
        }
        self.resilience_prometheus(&mut out);
        self.budget_prometheus(&mut out);
        if let Some(gauges) = &self.gauges {
            for (name, value) in gauges {
                // `set_gauge` keeps names as given; the prefix is added once.
                let family = if name.starts_with(PREFIX) { name.clone() } else { format!("{PREFIX}{name}") };
                let kind = if family.ends_with("_total") { "counter" } else { "gauge" };
                out.family(&family, kind, self.gauge_help.get(name).map_or("", String::as_str));
                out.sample(&family, &[], *value);
            }
        }
        out.0
    }
}

#[cfg(test)]
mod le_tests {
    use super::{LATENCY_BUCKETS, LE};

    #[test]
    fn le_labels_spell_the_bucket_bounds() {
        for (le, bound) in LE.iter().zip(LATENCY_BUCKETS) {
            assert_eq!(*le, format!("{bound}"));
        }
    }
}
