//! Human-readable tables, or JSON for scripts.

use std::path::Path;

use modelfleet::{
    BudgetView, GroupLine, HistoryReport,
    budget::Forecast,
    monitor::Health,
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

pub(crate) fn report(report: &HistoryReport, summary: Option<&Summary>) {
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
        println!("  the report below is `modelfleet report --from {}` (the same code)", report.from);
        println!();
    }
    println!("Report from {} to {}, by {}:", report.from, report.to, report.by);
    if report.groups.is_empty() {
        println!("  no requests in this range (run `modelfleet demo`, or widen it with --last 7d)");
        println!();
    } else {
        groups(report);
    }
    ranking(report);
    overview(report);
    health(report);
    budgets(&report.overview.budgets);
    if report.recommendations.is_empty() {
        println!("Recommendations: none, every judged model is healthy.");
    } else {
        println!("Recommendations:");
        for r in &report.recommendations {
            println!("  - {}", r.message);
        }
    }
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

fn ms(p: Option<f64>) -> String {
    p.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
}

fn groups(report: &HistoryReport) {
    println!(
        "  {:<20} {:>7} {:>8} {:>7} {:>7} {:>7} {:>9} {:>10} {:>11} {:>8} {:>7}",
        report.by.as_str().to_uppercase(),
        "REQS",
        "SUCCESS",
        "P50 ms",
        "P95 ms",
        "P99 ms",
        "TTFT p50",
        "TOKENS",
        "COST",
        "FALLBACK",
        "RATING"
    );
    let line = |g: &GroupLine| {
        let name = if g.name.is_empty() { "(none)" } else { g.name.as_str() };
        println!(
            "  {:<20} {:>7} {:>8} {:>7} {:>7} {:>7} {:>9} {:>10} {:>11} {:>8} {:>7}",
            name,
            g.requests,
            percent(g.success_rate),
            ms(g.latency.map(|l| l.p50_ms)),
            ms(g.latency.map(|l| l.p95_ms)),
            ms(g.latency.map(|l| l.p99_ms)),
            ms(g.ttft.map(|l| l.p50_ms)),
            g.input_tokens + g.output_tokens,
            dollars(g.cost),
            g.fallbacks,
            g.mean_rating.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}/5"))
        );
    };
    for g in &report.groups {
        line(g);
    }
    line(&report.totals);
    println!();
}

fn ranking(report: &HistoryReport) {
    if report.ranking.is_empty() {
        return;
    }
    println!("Ranking (score: 60% success rate, 25% speed, 15% user rating):");
    for (i, r) in report.ranking.iter().enumerate() {
        println!(
            "  {:>2}. {:<20} {:.3}  {} ok, p95 {} ms{}{}",
            i + 1,
            r.model,
            r.score,
            percent(r.success_rate),
            ms(r.p95_ms),
            r.mean_rating.map_or_else(String::new, |m| format!(", rated {m:.1}/5")),
            if r.proven { String::new() } else { format!(" (only {} judged: unproven)", r.judged) }
        );
    }
    println!();
}

fn overview(report: &HistoryReport) {
    let o = &report.overview;
    println!("Overview:");
    for p in &o.providers {
        println!(
            "  provider {:<12} {:>2} models {:>7} requests {:>7} ok {:>11}  {}",
            p.provider,
            p.models,
            p.requests,
            percent(p.success_rate),
            dollars(p.cost),
            p.health
        );
    }
    for c in &o.categories {
        println!(
            "  category {:<14} {:>7} requests {:>7} ok  top: {}",
            c.category,
            c.requests,
            percent(c.success_rate),
            if c.top.is_empty() { "-".to_owned() } else { c.top.join(", ") }
        );
    }
    let list = |v: &[String]| if v.is_empty() { "none".to_owned() } else { v.join(", ") };
    println!("  top performers: {}", list(&o.top_performers));
    println!("  inactive (no request in range): {}", list(&o.inactive));
    println!("  disabled: {}", list(&o.disabled));
    println!();
}

fn health(report: &HistoryReport) {
    let h = &report.health;
    let providers: Vec<String> = h.providers.iter().map(|(p, health)| format!("{p} {health}")).collect();
    println!(
        "Health now: {}{}",
        h.overall,
        if providers.is_empty() { String::new() } else { format!(" ({})", providers.join(", ")) }
    );
    for m in h.models.iter().filter(|m| m.health != Health::Healthy || m.out_of_rotation.is_some()) {
        println!(
            "  {:<20} {:<9} circuit {}{}",
            m.model,
            m.health.to_string(),
            m.circuit.as_str(),
            m.out_of_rotation.as_ref().map_or_else(String::new, |why| format!(" {why}"))
        );
    }
    println!();
}

#[allow(clippy::cast_precision_loss)] // hours of data, for people
fn budgets(views: &[BudgetView]) {
    for view in views {
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
