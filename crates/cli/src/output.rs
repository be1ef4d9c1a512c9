//! Human-readable tables, or JSON for scripts.

use std::path::Path;

use modelfleet::{
    FleetReport,
    budget::Forecast,
    registry::{ModelSpec, Money},
    store::CheckReport,
};
use serde::Serialize;

use crate::demo::Summary;

/// Prints `value` as JSON when asked, else runs `human`.
pub(crate) fn print<T: Serialize>(json: bool, value: &T, human: impl FnOnce()) {
    if json {
        match serde_json::to_string_pretty(value) {
            Ok(text) => println!("{text}"),
            Err(err) => eprintln!("error: cannot encode the output as JSON: {err}"),
        }
    } else {
        human();
    }
}

fn price(model: &ModelSpec) -> String {
    match model.price() {
        Some(p) if p.is_free() => "free".to_owned(),
        Some(p) => format!("${}/${}", p.input_per_mtok, p.output_per_mtok),
        None => "unknown".to_owned(),
    }
}

pub(crate) fn models(models: &[ModelSpec]) {
    println!("{:<20} {:<10} {:>9} {:>8} {:<14} STATUS", "MODEL", "PROVIDER", "CONTEXT", "QUALITY", "PRICE/MTOK");
    for m in models {
        println!(
            "{:<20} {:<10} {:>9} {:>8} {:<14} {}{}",
            m.id,
            m.provider,
            m.context_window.map_or_else(|| "?".to_owned(), |w| w.to_string()),
            m.quality.map_or_else(|| "?".to_owned(), |q| format!("{q:.2}")),
            price(m),
            m.status.as_str(),
            if m.local { " (local)" } else { "" },
        );
    }
}

fn dollars(m: Money) -> String {
    format!("${:.4}", m.as_dollars_f64())
}

pub(crate) fn report(report: &FleetReport, summary: Option<&Summary>) {
    if let Some(s) = summary {
        println!(
            "modelfleet demo: {} requests, {} served, {} failed, {} served by a fallback, {} spent",
            s.requests,
            s.served,
            s.failed,
            s.fell_back,
            dollars(s.cost)
        );
        if !s.failures.is_empty() {
            let why: Vec<String> = s.failures.iter().map(|(reason, n)| format!("{n} {reason}")).collect();
            println!("  failures: {}", why.join(", "));
        }
        println!(
            "  {:.0} s of simulated traffic in {:.1} s; database {}",
            s.simulated_seconds, s.wall_seconds, s.database
        );
        println!();
    }
    if !report.models.is_empty() {
        println!("This run, per model:");
        println!(
            "  {:<18} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9} {:>10} {:>9} {:<9}",
            "MODEL", "REQS", "SUCCESS", "P50 ms", "P95 ms", "P99 ms", "TOKENS", "COST", "FALLBACK", "CIRCUIT"
        );
        for m in &report.models {
            println!(
                "  {:<18} {:>6} {:>7.1}% {:>8.0} {:>8.0} {:>8.0} {:>9} {:>10} {:>9} {:<9}",
                m.model,
                m.requests,
                m.success_rate * 100.0,
                m.p50_ms,
                m.p95_ms,
                m.p99_ms,
                m.tokens,
                dollars(m.cost),
                m.fallbacks_served,
                m.circuit.as_str()
            );
        }
        println!();
    }
    println!("All runs recorded in the database:");
    if report.history.is_empty() {
        println!("  nothing yet: run `modelfleet demo`");
    }
    for u in &report.history {
        let rate = if u.requests == 0 { 0.0 } else { u.successes as f64 * 100.0 / u.requests as f64 };
        println!(
            "  {:<18} {:>8} requests {:>6.1}% ok {:>11} tokens {:>10}",
            u.model,
            u.requests,
            rate,
            u.input_tokens + u.output_tokens,
            dollars(u.cost)
        );
    }
    println!();
    for view in &report.budgets {
        let b = &view.status;
        let forecast = match b.forecast {
            Forecast::NotEnoughData => format!(
                "forecast: not enough data yet ({:.1} h of the period; 10% of it or 24 h needed)",
                b.data_ms as f64 / 3_600_000.0
            ),
            Forecast::NoPeriodEnd => "no period end".to_owned(),
            Forecast::Projected { end_of_period, exceeds_limit } => format!(
                "forecast {} at period end, from {:.1} h of data{}",
                dollars(end_of_period),
                b.data_ms as f64 / 3_600_000.0,
                if exceeds_limit { " — OVER THE LIMIT" } else { "" }
            ),
        };
        println!(
            "Budget {} {} ({:?}): {} of {} spent ({:.1}%), {} reserved; {forecast}",
            b.spec.scope,
            b.spec.period,
            view.source,
            dollars(b.spent),
            dollars(b.spec.limit),
            b.percent,
            dollars(b.reserved)
        );
    }
    if report.recommendations.is_empty() {
        println!("Recommendations: none, every judged model is healthy.");
    } else {
        println!("Recommendations:");
        for r in &report.recommendations {
            println!("  - {}", r.message);
        }
    }
}

pub(crate) fn db(path: &Path, report: &CheckReport) {
    println!("database      {}", path.display());
    println!("schema        version {} (this build writes {})", report.schema_version, report.supported_version);
    println!("integrity     {}", if report.problems.is_empty() { "ok".to_owned() } else { report.problems.join("; ") });
    println!("size          {} bytes (+ {} bytes of write-ahead log)", report.file_bytes, report.wal_bytes);
    for (table, rows) in &report.tables {
        println!("  {table:<14} {rows} rows");
    }
}
