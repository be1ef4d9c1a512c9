//! Reports over any range of the stored history: per group, a ranking with
//! its score, recommendations with an alternative, an overview and health.
//!
//! One function builds them ([`Fleet::report`]) from the store's hourly
//! aggregates and raw rows (see `modelfleet_store::History`), for the CLI's
//! `modelfleet report`, the demo's closing report and the gateway's
//! `GET /v1/admin/report`, so they cannot disagree. Health is the live
//! monitor's, which a restart warms from the recent history.

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc, time::Duration};

use modelfleet_budget::{Forecast, rfc3339};
use modelfleet_errors::Timer as _;
use modelfleet_fallback::CircuitState;
use modelfleet_monitor::{Finding, Health, Outcome, Recommendation, ReportConfig, performance_score};
use modelfleet_registry::{Capability, Category, Clock as _, ModelSpec, Money};
use modelfleet_store::{Aggregate, Dim, History, Rated};
use serde::Serialize;

use crate::{BudgetView, Fleet, FleetError};

/// The longest range a report covers: ten years.
const MAX_RANGE_MS: u64 = 10 * 366 * 24 * 3_600_000;

/// What a report covers: `[from_ms, to_ms)`, grouped `by`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ReportQuery {
    /// The start (Unix ms).
    pub from_ms: u64,
    /// The end (Unix ms, excluded).
    pub to_ms: u64,
    /// The grouping of its main table.
    pub by: Dim,
}

impl ReportQuery {
    /// The last `span` up to `now_ms` (included), by model.
    #[must_use]
    pub fn last(span: Duration, now_ms: u64) -> ReportQuery {
        let span = u64::try_from(span.as_millis()).unwrap_or(u64::MAX);
        ReportQuery { from_ms: now_ms.saturating_sub(span), to_ms: now_ms.saturating_add(1), by: Dim::Model }
    }

    /// The query the CLI's flags and the API's parameters describe:
    /// `from`/`to` (RFC 3339 such as `2026-12-01T08:00:00Z`, a date
    /// `2026-12-01` for its UTC midnight, or Unix milliseconds) or `last`
    /// (`90m`, `24h`, `7d`, `2w`, `1h30m`), not both; `to` (excluded)
    /// defaults to just after now (a row of this millisecond counts),
    /// `from` to a day before `to`; `by` is `model` (the default),
    /// `provider`, `category`, `language` or `key`.
    ///
    /// # Errors
    ///
    /// A message naming the parameter and what is wrong with it.
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        last: Option<&str>,
        by: Option<&str>,
        now_ms: u64,
    ) -> Result<ReportQuery, String> {
        let by = by.map_or(Ok(Dim::Model), |b| b.parse::<Dim>().map_err(|e| format!("by: {e}")))?;
        let day = 24 * 3_600_000;
        let (from_ms, to_ms) = match (from, to, last) {
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                return Err("give either from/to or last, not both".to_owned());
            }
            (None, None, Some(last)) => {
                let span = parse_span(last).map_err(|e| format!("last: {e}"))?;
                (now_ms.saturating_sub(span), now_ms.saturating_add(1))
            }
            (from, to, None) => {
                let to_ms =
                    to.map_or(Ok(now_ms.saturating_add(1)), |t| parse_time(t).map_err(|e| format!("to: {e}")))?;
                let from_ms =
                    from.map_or(Ok(to_ms.saturating_sub(day)), |f| parse_time(f).map_err(|e| format!("from: {e}")))?;
                (from_ms, to_ms)
            }
        };
        if from_ms >= to_ms {
            return Err(format!("from ({}) must be before to ({})", rfc3339(from_ms), rfc3339(to_ms)));
        }
        if to_ms - from_ms > MAX_RANGE_MS {
            return Err("a report covers ten years at most".to_owned());
        }
        Ok(ReportQuery { from_ms, to_ms, by })
    }
}

/// A point in time: RFC 3339, a date (its UTC midnight), or Unix ms.
fn parse_time(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let shown = modelfleet_errors::sanitize(text);
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u64>().map_err(|_| format!("{shown:?} is too large for Unix milliseconds"));
    }
    let full = if text.len() == 10 { format!("{text}T00:00:00Z") } else { text.to_owned() };
    let at = time::OffsetDateTime::parse(&full, &time::format_description::well_known::Rfc3339).map_err(|_| {
        format!(
            "{shown:?} is not a time: use RFC 3339 (2026-12-01T08:00:00Z), a date (2026-12-01) or Unix milliseconds"
        )
    })?;
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).map_err(|_| format!("{shown:?} is before 1970"))
}

/// A span such as `90m`, `24h`, `7d`, `2w` or `1h30m`, in ms.
fn parse_span(text: &str) -> Result<u64, String> {
    let shown = modelfleet_errors::sanitize(text.trim());
    let bad = || format!("{shown:?} is not a span: a number and a unit (s, m, h, d, w), such as 90m, 24h, 7d, 1h30m");
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in text.trim().chars() {
        if let Some(digit) = c.to_digit(10) {
            number = Some(
                number.unwrap_or(0).checked_mul(10).and_then(|n| n.checked_add(u64::from(digit))).ok_or_else(bad)?,
            );
            continue;
        }
        let unit: u64 = match c {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            'w' => 604_800_000,
            _ => return Err(bad()),
        };
        let n = number.take().ok_or_else(bad)?;
        total = n.checked_mul(unit).and_then(|ms| total.checked_add(ms)).ok_or_else(bad)?;
    }
    if number.is_some() || total == 0 {
        return Err(bad());
    }
    Ok(total)
}

/// Latency or time-to-first-token percentiles, ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

impl Percentiles {
    #[allow(clippy::cast_precision_loss)] // µs far below 2^52
    fn of(hist: &modelfleet_store::Hist) -> Option<Percentiles> {
        let ms = |q: f64| hist.quantile(q).map(|us| us as f64 / 1_000.0);
        Some(Percentiles { p50_ms: ms(0.5)?, p95_ms: ms(0.95)?, p99_ms: ms(0.99)? })
    }
}

/// One group's line: a model, a provider, a category, a language or a key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupLine {
    /// The group (`""`: requests without a language, or without a key).
    pub name: String,
    /// For a model, its provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Attempts (a request that fell back has several).
    pub requests: u64,
    /// Answered.
    pub successes: u64,
    /// Failed for the model's reasons.
    pub failures: u64,
    /// Refused for the request's reasons (any model would have).
    pub client_faults: u64,
    /// Ended by the client leaving or a budget.
    pub aborted: u64,
    /// Successes over successes and failures; `None` when neither.
    pub success_rate: Option<f64>,
    /// Latency of the answers and failures.
    pub latency: Option<Percentiles>,
    /// Time to first token of streams.
    pub ttft: Option<Percentiles>,
    /// Prompt tokens (cached included).
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Cached prompt tokens.
    pub cached_tokens: u64,
    /// Exact cost.
    pub cost: Money,
    /// Answers a fallback model gave.
    pub fallbacks: u64,
    /// User ratings.
    pub ratings: u64,
    /// Their mean, 1 to 5.
    pub mean_rating: Option<f64>,
}

impl GroupLine {
    fn of(agg: &Aggregate, dim: Dim) -> GroupLine {
        GroupLine {
            name: agg.value.clone(),
            provider: (dim == Dim::Model).then(|| agg.provider.clone()),
            requests: agg.requests,
            successes: agg.successes,
            failures: agg.failures,
            client_faults: agg.client_faults,
            aborted: agg.aborted,
            success_rate: agg.success_rate(),
            latency: Percentiles::of(&agg.latency),
            ttft: Percentiles::of(&agg.ttft),
            input_tokens: agg.input_tokens,
            output_tokens: agg.output_tokens,
            cached_tokens: agg.cached_tokens,
            cost: agg.cost,
            fallbacks: agg.fallbacks,
            ratings: agg.ratings,
            mean_rating: agg.mean_rating(),
        }
    }

    fn total(groups: &[Aggregate]) -> GroupLine {
        let mut all = Aggregate { value: "all".to_owned(), ..Aggregate::default() };
        for group in groups {
            all.merge(group);
        }
        GroupLine::of(&all, Dim::Provider)
    }
}

/// A model's place in the ranking.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankedLine {
    /// The model.
    pub model: String,
    /// Its provider.
    pub provider: String,
    /// 0 to 1 (see [`performance_score`]): 60% success rate, 25% speed
    /// (`1 / (1 + p95 / 1 s)`), 15% mean rating (0.5 when unrated).
    pub score: f64,
    /// Its success rate.
    pub success_rate: Option<f64>,
    /// Its p95 latency, ms.
    pub p95_ms: Option<f64>,
    /// Its mean rating, 1 to 5.
    pub mean_rating: Option<f64>,
    /// Its requests in the range.
    pub requests: u64,
    /// Of which judged it (successes and its own failures).
    pub judged: u64,
    /// Whether it was judged on enough outcomes to be ranked among the
    /// proven (`ReportConfig::min_requests`, 20): those come first, and
    /// only they are top performers or alternatives.
    pub proven: bool,
}

/// One provider's line in the overview.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderLine {
    /// The provider.
    pub provider: String,
    /// Its models with traffic in the range.
    pub models: usize,
    /// Requests.
    pub requests: u64,
    /// Success rate.
    pub success_rate: Option<f64>,
    /// Cost.
    pub cost: Money,
    /// Its health now.
    pub health: Health,
}

/// One category's line in the overview.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CategoryLine {
    /// The category.
    pub category: String,
    /// Requests of that kind.
    pub requests: u64,
    /// Its success rate.
    pub success_rate: Option<f64>,
    /// The best-ranked proven catalog models for it, enabled now, that
    /// served in the range (up to 3).
    pub top: Vec<String>,
}

/// The fleet at a glance over the range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Overview {
    /// Per provider.
    pub providers: Vec<ProviderLine>,
    /// Per category.
    pub categories: Vec<CategoryLine>,
    /// The three best-ranked proven models that are enabled now.
    pub top_performers: Vec<String>,
    /// Enabled catalog models without a request in the range.
    pub inactive: Vec<String>,
    /// Catalog models disabled now.
    pub disabled: Vec<String>,
    /// Budgets now, with their forecasts.
    pub budgets: Vec<BudgetView>,
}

/// A model's health now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelHealth {
    /// The model.
    pub model: String,
    /// Its provider.
    pub provider: String,
    /// Healthy, degraded or down (the live monitor's last minutes).
    pub health: Health,
    /// Its circuit.
    pub circuit: CircuitState,
    /// Why it is out of rotation (cooling down, circuit open…), if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_of_rotation: Option<String>,
    /// Times it was ejected in this process.
    pub ejections: u64,
}

/// Health now, with the provider breakdown.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthSection {
    /// The worst provider's.
    pub overall: Health,
    /// Per provider: down when all its models are, degraded when any is not healthy.
    pub providers: BTreeMap<String, Health>,
    /// Per catalog model with recent traffic or out of rotation.
    pub models: Vec<ModelHealth>,
}

/// A report over a range of the stored history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryReport {
    /// The range covered, RFC 3339: the one asked, widened to whole hours
    /// at an edge older than the raw rows' retention.
    pub from: String,
    /// Its end (excluded).
    pub to: String,
    /// The same, Unix ms.
    pub from_ms: u64,
    /// Its end, Unix ms.
    pub to_ms: u64,
    /// The grouping of `groups`.
    pub by: Dim,
    /// Every request in the range.
    pub totals: GroupLine,
    /// Per group, busiest first.
    pub groups: Vec<GroupLine>,
    /// The models, best first.
    pub ranking: Vec<RankedLine>,
    /// What deserves attention, each with an alternative that meets the
    /// same requirements when there is one.
    pub recommendations: Vec<Recommendation>,
    /// Providers, categories, top performers, inactive and disabled models, budgets.
    pub overview: Overview,
    /// Health now.
    pub health: HealthSection,
}

impl Fleet {
    /// The report over `query`'s range, from the store (after a flush, so
    /// it includes this process's last requests). Blocking reads run on
    /// the blocking pool.
    ///
    /// # Errors
    ///
    /// [`FleetError::Store`] when the database cannot be read.
    ///
    /// Under `[cluster]` the report is every replica's: this replica's
    /// last records are shipped first, then every replica's hourly records
    /// are read from PostgreSQL, over the whole hours covering the range
    /// (the report's `from` and `to` say so).
    ///
    /// # Errors
    ///
    /// [`FleetError::Store`] when the database cannot be read;
    /// [`FleetError::Cluster`] when, under `[cluster]`, the shared store
    /// cannot be reached (a report of this replica alone would pass for
    /// the fleet's).
    pub async fn report(&self, query: &ReportQuery) -> Result<HistoryReport, FleetError> {
        let store = Arc::clone(&self.store);
        let dims = report_dims(query.by);
        let (from, to) = (query.from_ms, query.to_ms);
        let Some(records) = &self.records else {
            let history =
                tokio::task::spawn_blocking(move || store.flush().and_then(|()| store.history(from, to, &dims)))
                    .await
                    .map_err(|e| FleetError::Store(modelfleet_store::Error::Write(e.to_string())))?
                    .map_err(FleetError::Store)?;
            return Ok(self.build_report(&history, query.by));
        };
        // Committed locally, this replica's records were handed to the shipping.
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| FleetError::Store(modelfleet_store::Error::Write(e.to_string())))?
            .map_err(FleetError::Store)?;
        let failed = |e: modelfleet_cluster::ClusterError| FleetError::Cluster(e.to_string());
        Box::pin(records.ship()).await.map_err(failed)?;
        let history = Box::pin(records.history(from, to, &dims)).await.map_err(failed)?;
        Ok(self.build_report(&history, query.by))
    }

    /// The report over `query`'s range of the records every replica of the
    /// cluster `settings` name shipped, read without joining the cluster
    /// (nothing is created, migrated or shipped): `modelfleet report
    /// --config`. The catalog, budgets and health in it are this fleet's.
    ///
    /// # Errors
    ///
    /// [`FleetError::Cluster`] when the shared store cannot be read (or
    /// its schema is missing or of another version).
    pub async fn cluster_report(
        &self,
        query: &ReportQuery,
        settings: &modelfleet_config_validate::ClusterSettings,
    ) -> Result<HistoryReport, FleetError> {
        let failed = |e: modelfleet_cluster::ClusterError| FleetError::Cluster(e.to_string());
        let timeout = Duration::from_millis(settings.timeout_ms);
        let ledger = modelfleet_cluster::SharedLedger::inspect(&settings.postgres_url, &settings.schema, timeout)
            .await
            .map_err(failed)?;
        let dims = report_dims(query.by);
        let history =
            Box::pin(crate::records::history(&ledger, query.from_ms, query.to_ms, &dims)).await.map_err(failed)?;
        Ok(self.build_report(&history, query.by))
    }

    fn build_report(&self, history: &History, by: Dim) -> HistoryReport {
        let config = ReportConfig::default();
        let snapshot = self.catalog.snapshot();
        let ranking = ranking(history.by(Dim::Model), config.min_requests);
        // One look at the budgets: the recommendations and the overview
        // show the same forecasts.
        let budgets = self.budget_views();
        let mut recommendations = self.recommendations(history, &ranking, snapshot.models(), &config);
        recommendations.extend(self.budget_advice(&budgets, snapshot.models()));
        let health = self.health_section(&config);
        let mut groups: Vec<GroupLine> = history.by(by).iter().map(|a| GroupLine::of(a, by)).collect();
        groups.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.name.cmp(&b.name)));
        let overview = overview(history, &ranking, snapshot.models(), &health, budgets);
        HistoryReport {
            from: rfc3339(history.from_ms),
            to: rfc3339(history.to_ms),
            from_ms: history.from_ms,
            to_ms: history.to_ms,
            by,
            totals: GroupLine::total(history.by(Dim::Provider)),
            groups,
            ranking,
            recommendations,
            overview,
            health,
        }
    }

    fn health_section(&self, config: &ReportConfig) -> HealthSection {
        let live = self.monitor.health(config);
        let now = self.timer.now();
        let snapshot = self.catalog.snapshot();
        let models = snapshot
            .models()
            .iter()
            .filter_map(|spec| {
                let availability = self.tracker.availability(&spec.id, now);
                let health = live.models.get(&spec.id).copied();
                let tracked = self.tracker.health(&spec.id, now);
                let out =
                    (!availability.is_available()).then(|| crate::ejections::describe(availability, &tracked, now));
                (health.is_some() || out.is_some()).then(|| ModelHealth {
                    model: spec.id.clone(),
                    provider: spec.provider.clone(),
                    health: health.unwrap_or(Health::Healthy),
                    circuit: self.circuit(&spec.id),
                    out_of_rotation: out,
                    ejections: tracked.ejections,
                })
            })
            .collect();
        HealthSection { overall: live.overall, providers: live.providers, models }
    }

    /// Low success, slow, low rated, and the models spending most of a
    /// budget forecast to pass its limit.
    fn recommendations(
        &self,
        history: &History,
        ranking: &[RankedLine],
        catalog: &[Arc<ModelSpec>],
        config: &ReportConfig,
    ) -> Vec<Recommendation> {
        let by_model = history.by(Dim::Model);
        let judged: Vec<&Aggregate> = by_model.iter().filter(|a| a.judged() >= config.min_requests).collect();
        let spec = |id: &str| catalog.iter().find(|m| m.id == id);
        let score = |id: &str| ranking.iter().find(|r| r.model == id).map_or(0.0, |r| r.score);
        // Models failing too often or rated low are no one's alternative.
        let flagged = |a: &Aggregate| {
            a.judged() >= config.min_requests && a.success_rate().is_some_and(|r| r < config.low_success_rate)
                || a.ratings >= config.min_ratings && a.mean_rating().is_some_and(|m| m < config.low_rating)
        };
        let unfit: Vec<&str> = by_model.iter().filter(|a| flagged(a)).map(|a| a.value.as_str()).collect();
        // The best-ranked model that can stand in for `me`, scores higher
        // and is not itself failing or rated low.
        let better = |me: &str| {
            let me_spec = spec(me)?;
            ranking
                .iter()
                .filter(|r| r.proven && r.model != me && r.score > score(me) && !unfit.contains(&r.model.as_str()))
                .find(|r| spec(&r.model).is_some_and(|c| self.stands_in_for(me_spec, c)))
                .map(|r| r.model.clone())
        };
        let mut out = Vec::new();
        for me in &judged {
            let id = me.value.as_str();
            if let Some(rate) = me.success_rate().filter(|r| *r < config.low_success_rate) {
                let message = format!(
                    "{id}: success rate {:.1}% is under {:.0}% over {} requests",
                    rate * 100.0,
                    config.low_success_rate * 100.0,
                    me.judged()
                );
                out.push(advice(
                    id,
                    Finding::LowSuccessRate { success_rate: rate, threshold: config.low_success_rate },
                    better(id),
                    message,
                ));
            }
            if let Some((p95, median)) = slow(me, &judged, config) {
                let message =
                    format!("{id}: p95 latency {p95:.0} ms is {:.1}x its peers' median {median:.0} ms", p95 / median);
                out.push(advice(id, Finding::Slow { p95_ms: p95, peers_p95_ms: median }, better(id), message));
            }
            if let Some(mean) = me.mean_rating().filter(|m| *m < config.low_rating && me.ratings >= config.min_ratings)
            {
                let message = format!(
                    "{id}: users rate it {mean:.1} of 5 on average over {} ratings, under {:.1}",
                    me.ratings, config.low_rating
                );
                let finding =
                    Finding::LowRating { mean_rating: mean, ratings: me.ratings, threshold: config.low_rating };
                out.push(advice(id, finding, better(id), message));
            }
        }
        out
    }

    /// Whether `candidate` meets what `model` is used for: enabled, one of
    /// its categories and languages, local where it is local, its
    /// capabilities, and at least its context window.
    fn stands_in_for(&self, model: &ModelSpec, candidate: &ModelSpec) -> bool {
        let requirements = modelfleet_selector::Requirements::default();
        candidate.enabled
            && modelfleet_fallback::implied_fallback(model, candidate, &requirements, &self.simulated_providers)
                .is_none()
            && Capability::ALL.iter().all(|&c| !model.capabilities.has(c) || candidate.capabilities.has(c))
            && candidate.context_window.unwrap_or(0) >= model.context_window.unwrap_or(0)
    }

    /// For each budget forecast to pass its limit: the model that spent the
    /// most of it, with the cheapest model that can stand in for it.
    fn budget_advice(&self, budgets: &[BudgetView], catalog: &[Arc<ModelSpec>]) -> Vec<Recommendation> {
        let mut out = Vec::new();
        for view in budgets {
            let status = &view.status;
            let Forecast::Projected { end_of_period, exceeds_limit: true } = status.forecast else { continue };
            let Some((model, spent)) = status.by_model.iter().max_by_key(|(_, spent)| **spent) else { continue };
            let budget = format!("{}/{}", status.spec.scope, status.spec.period);
            let price = |m: &ModelSpec| m.pricing.as_ref().map(|p| p.output_per_mtok.saturating_add(p.input_per_mtok));
            let alternative = catalog.iter().find(|m| m.id == *model).and_then(|me| {
                let mine = price(me)?;
                catalog
                    .iter()
                    .filter(|c| c.id != me.id && self.stands_in_for(me, c))
                    .filter_map(|c| price(c).filter(|p| *p < mine).map(|p| (p, c)))
                    .min_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)))
                    .map(|(_, c)| c.id.clone())
            });
            let message = format!(
                "budget {budget} is forecast to reach ${end_of_period} against its ${} limit; {model} spent ${spent} of it",
                status.spec.limit
            );
            let finding = Finding::OverBudgetForecast {
                budget,
                forecast: end_of_period,
                limit: status.spec.limit,
                spent: *spent,
            };
            out.push(advice(model, finding, alternative, message));
        }
        out
    }
}

/// How far back a restarted monitor is warmed from the stored history: its
/// hour window, the minute and quarter its live signals read included.
const WARM_SPAN_MS: u64 = 3_600_000;
/// The most rows a warm start replays (the newest): it stays bounded
/// however busy the last hour was.
const WARM_MAX_ROWS: usize = 100_000;

impl Fleet {
    /// Rates the answer to the request `request_id` (see
    /// [`Store::rate`](modelfleet_store::Store::rate)): `rating` 1 to 5, an
    /// optional comment, by `who`; with `key`, only a request sent with
    /// that key. The model's quality signal in the monitor hears of it too
    /// (a second rating of one answer replaces the first there as well).
    /// `Ok(None)` when no answered request has that id.
    ///
    /// # Errors
    ///
    /// [`FleetError::Store`]: a rating outside 1 to 5
    /// ([`modelfleet_store::Error::Invalid`]), or the database failed.
    pub async fn rate(
        &self,
        request_id: &str,
        rating: u8,
        comment: Option<&str>,
        (who, key): (&str, Option<&str>),
    ) -> Result<Option<Rated>, FleetError> {
        let store = Arc::clone(&self.store);
        let (id, comment, who) = (request_id.to_owned(), comment.map(str::to_owned), who.to_owned());
        let key = key.map(str::to_owned);
        let now = modelfleet_registry::SystemClock.now_ms();
        let rated = tokio::task::spawn_blocking(move || {
            store.rate(&id, rating, comment.as_deref(), (&who, key.as_deref()), now)
        })
        .await
        .map_err(|e| FleetError::Store(modelfleet_store::Error::Write(e.to_string())))?
        .map_err(FleetError::Store)?;
        if let Some(rated) = &rated {
            let (sum, count) = rated.model_quality;
            self.monitor.set_quality(&rated.model, &rated.provider, sum, count);
        }
        Ok(rated)
    }

    /// Seeds the monitor with the last hour of stored outcomes (at most
    /// [`WARM_MAX_ROWS`], the newest), so a restarted process does not take
    /// a model that was failing a minute ago for a perfect one, and with
    /// each model's user ratings over its whole history. Best
    /// effort: a database that cannot be read leaves the monitor cold
    /// (logged). Returns the rows replayed.
    pub(crate) async fn warm_start(&self) -> usize {
        let store = Arc::clone(&self.store);
        let since = self.monitor.now_ms().saturating_sub(WARM_SPAN_MS);
        let read =
            move || Ok::<_, modelfleet_store::Error>((store.perf_log_tail(since, WARM_MAX_ROWS)?, store.usage()?));
        let (rows, usage) = match tokio::task::spawn_blocking(read).await {
            Ok(Ok(read)) => read,
            Ok(Err(err)) => {
                tracing::warn!(%err, "the monitor starts cold: the recent history cannot be read");
                return 0;
            }
            Err(err) => {
                tracing::warn!(%err, "the monitor starts cold");
                return 0;
            }
        };
        for row in &rows {
            let us = Duration::from_micros;
            let outcome = Outcome {
                model: &row.model,
                provider: &row.provider,
                kind: row.kind,
                language: row.language.as_deref(),
                latency: us(row.latency_us),
                time_to_first_token: row.ttft_us.map(us),
                input_tokens: row.input_tokens,
                output_tokens: row.output_tokens,
                cached_tokens: row.cached_tokens,
                cost: row.cost,
                error: row.error,
                quality: row.quality,
            };
            self.monitor.record_at(&outcome, row.at_ms);
        }
        // The quality signal is every rating the history holds, not only
        // the last hour's.
        for model in usage.iter().filter(|u| u.rated > 0) {
            #[allow(clippy::cast_precision_loss)] // rating counts far below 2^52
            let sum = model.avg_quality.unwrap_or(0.0) * model.rated as f64;
            self.monitor.set_quality(&model.model, &model.provider, sum, model.rated);
        }
        rows.len()
    }
}

/// The groupings a report reads: its tables' and the one asked.
fn report_dims(by: Dim) -> Vec<Dim> {
    let mut dims = vec![Dim::Model, Dim::Provider, Dim::Category];
    if !dims.contains(&by) {
        dims.push(by);
    }
    dims
}

fn advice(model: &str, finding: Finding, alternative: Option<String>, mut message: String) -> Recommendation {
    if let Some(alt) = &alternative {
        let _ = write!(message, "; consider {alt}");
    }
    Recommendation { model: model.to_owned(), finding, alternative, message }
}

/// `me`'s p95 and its peers' median p95 when it is more than
/// `slow_factor` times that median (with at least two peers).
fn slow(me: &Aggregate, judged: &[&Aggregate], config: &ReportConfig) -> Option<(f64, f64)> {
    let p95 = |a: &Aggregate| Percentiles::of(&a.latency).map(|p| p.p95_ms);
    let mut peers: Vec<f64> = judged.iter().filter(|o| o.value != me.value).filter_map(|o| p95(o)).collect();
    if peers.len() < 2 {
        return None;
    }
    peers.sort_by(f64::total_cmp);
    let median = peers[peers.len() / 2];
    let mine = p95(me)?;
    (median > 0.0 && mine > config.slow_factor * median).then_some((mine, median))
}

/// The models with traffic: first those judged on enough outcomes
/// (`min_requests`), best score first (ties by id), then the others, so a
/// model with two lucky answers never outranks one proven over hundreds.
fn ranking(models: &[Aggregate], min_requests: u64) -> Vec<RankedLine> {
    let mut ranked: Vec<RankedLine> = models
        .iter()
        .map(|a| {
            let latency = Percentiles::of(&a.latency);
            // Ratings 1 to 5 as the score's 0 to 1 quality.
            let quality = a.mean_rating().map(|m| (m - 1.0) / 4.0);
            // No judged latency: neither fast nor slow (1 s scores 0.5).
            let p95 = latency.map_or(1_000.0, |l| l.p95_ms);
            RankedLine {
                model: a.value.clone(),
                provider: a.provider.clone(),
                score: performance_score(a.success_rate(), p95, quality),
                success_rate: a.success_rate(),
                p95_ms: latency.map(|l| l.p95_ms),
                mean_rating: a.mean_rating(),
                requests: a.requests,
                judged: a.judged(),
                proven: a.judged() >= min_requests,
            }
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.proven.cmp(&a.proven).then_with(|| b.score.total_cmp(&a.score)).then_with(|| a.model.cmp(&b.model))
    });
    ranked
}

fn overview(
    history: &History,
    ranking: &[RankedLine],
    catalog: &[Arc<ModelSpec>],
    health: &HealthSection,
    budgets: Vec<BudgetView>,
) -> Overview {
    let providers = history
        .by(Dim::Provider)
        .iter()
        .map(|p| ProviderLine {
            provider: p.value.clone(),
            models: history.by(Dim::Model).iter().filter(|m| m.provider == p.value).count(),
            requests: p.requests,
            success_rate: p.success_rate(),
            cost: p.cost,
            health: health.providers.get(&p.value).copied().unwrap_or(Health::Healthy),
        })
        .collect();
    let categories = history
        .by(Dim::Category)
        .iter()
        .map(|c| CategoryLine {
            category: c.value.clone(),
            requests: c.requests,
            success_rate: c.success_rate(),
            top: ranking
                .iter()
                .filter(|r| r.proven)
                .filter(|r| {
                    catalog.iter().find(|m| m.id == r.model).is_some_and(|m| {
                        m.enabled
                            && (m.categories.iter().any(|k| k.as_str() == c.value)
                                || c.value == Category::General.as_str())
                    })
                })
                .take(3)
                .map(|r| r.model.clone())
                .collect(),
        })
        .collect();
    let served = |id: &str| history.by(Dim::Model).iter().any(|m| m.value == id);
    Overview {
        providers,
        categories,
        top_performers: ranking
            .iter()
            .filter(|r| r.proven && catalog.iter().any(|m| m.id == r.model && m.enabled))
            .take(3)
            .map(|r| r.model.clone())
            .collect(),
        inactive: catalog.iter().filter(|m| m.enabled && !served(&m.id)).map(|m| m.id.clone()).collect(),
        disabled: catalog.iter().filter(|m| !m.enabled).map(|m| m.id.clone()).collect(),
        budgets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_764_547_200_000; // 2025-12-01T00:00:00Z

    #[test]
    fn ranges_parse_from_times_dates_milliseconds_and_spans() {
        let q = ReportQuery::parse(None, None, Some("1h30m"), Some("key"), NOW).unwrap();
        assert_eq!((q.from_ms, q.to_ms, q.by), (NOW - 5_400_000, NOW + 1, Dim::Key), "now included");
        let q = ReportQuery::parse(Some("2025-11-30"), Some("2025-11-30T12:00:00Z"), None, None, NOW).unwrap();
        assert_eq!((q.from_ms, q.to_ms, q.by), (NOW - 86_400_000, NOW - 43_200_000, Dim::Model));
        let q = ReportQuery::parse(Some("2025-11-30T01:00:00+01:00"), None, None, None, NOW).unwrap();
        assert_eq!((q.from_ms, q.to_ms), (NOW - 86_400_000, NOW + 1), "an offset is honoured; to defaults to now");
        let q = ReportQuery::parse(None, Some("1764460800000"), None, None, NOW).unwrap();
        assert_eq!((q.from_ms, q.to_ms), (NOW - 2 * 86_400_000, NOW - 86_400_000), "from defaults to a day before to");
        assert_eq!(ReportQuery::parse(None, None, None, None, NOW).unwrap().from_ms, NOW + 1 - 86_400_000);
        assert_eq!(ReportQuery::parse(None, None, Some("2w"), None, NOW).unwrap().from_ms, NOW - 14 * 86_400_000);
    }

    #[test]
    fn bad_ranges_are_refused_naming_the_parameter() {
        let err = |from, to, last, by| ReportQuery::parse(from, to, last, by, NOW).unwrap_err();
        assert!(err(Some("yesterday"), None, None, None).starts_with("from: \"yesterday\" is not a time"));
        assert!(err(None, Some("2025-13-01"), None, None).starts_with("to: "));
        assert!(err(None, None, Some("24"), None).starts_with("last: \"24\" is not a span"));
        assert!(err(None, None, Some("h"), None).starts_with("last: "));
        assert!(err(None, None, Some("0h"), None).starts_with("last: "));
        assert!(err(None, None, Some("99999999999999999999d"), None).starts_with("last: "));
        assert_eq!(err(Some("2025-11-30"), None, Some("1h"), None), "give either from/to or last, not both");
        assert!(err(None, None, None, Some("colour")).starts_with("by: unknown grouping \"colour\""));
        assert!(
            err(Some("2025-12-01"), Some("2025-11-30"), None, None)
                .starts_with("from (2025-12-01T00:00:00Z) must be before to")
        );
        assert_eq!(err(Some("0"), None, None, None), "a report covers ten years at most");
    }
}
