//! Reports from the stored history and warm starts, through the facade (see the helper).
//!
//! A fleet of custom models serves a known sequence of calls (scripted per
//! model: a latency on tokio's paused clock, then an answer with known usage
//! or a failure); the report over the last hour is then checked figure by
//! figure, whichever way it is grouped. Recommendations name an alternative
//! that can stand in for the model (never a better-scoring one of another
//! category, a smaller window, without a capability, or disabled). A budget
//! forecast to pass its limit names its biggest spender and the cheapest
//! stand-in. A restarted fleet warms its monitor from the last hour of rows
//! (and only that hour); ratings reach the monitor.

use std::time::Duration;

use crate::support::now_ms;
use modelfleet::{
    Fleet, FleetError, FleetOptions, GroupLine, HistoryReport, ModelResponse, ReportQuery, Request, Served, Usage,
    budget::{BudgetSpec, Enforcement, Forecast, LedgerConfig, Period, Scope},
    errors::{ErrorClass, Failure},
    fallback::{CooldownConfig, TrackerConfig},
    monitor::{Finding, Health, Outcome, Recommendation, ReportConfig, performance_score},
    registry::{Capabilities, Category, ModelSpec, ModelUpdate, Money, Pricing},
    selector::Requirements,
    store::{Dim, PerfRecord},
};

fn options(dir: &tempfile::TempDir) -> FleetOptions {
    // On tokio's paused clock; the tests of warm starts run in real time.
    FleetOptions { db_path: Some(dir.path().join("fleet.db")), virtual_time: true, ..FleetOptions::default() }
}

fn money(dollars: &str) -> Money {
    dollars.parse().unwrap()
}

/// A cloud model speaking English, with a 32k window, at `per_mtok` dollars
/// per million tokens in and out.
fn model(id: &str, provider: &str, categories: &[Category], per_mtok: &str) -> ModelSpec {
    let mut m = ModelSpec::new(id, provider);
    m.categories = categories.to_vec();
    m.context_window = Some(32_000);
    m.max_output_tokens = Some(4_000);
    m.languages = vec!["en".into()];
    m.pricing = Some(Pricing {
        input_per_mtok: money(per_mtok),
        output_per_mtok: money(per_mtok),
        cached_input_per_mtok: None,
        cache_write_per_mtok: None,
        reasoning_per_mtok: None,
    });
    m
}

/// A request naming `model`, of `category`, with the id `id`.
fn ask(model: &str, category: Option<Category>, id: Option<&str>) -> Request {
    Request {
        model: Some(model.to_owned()),
        request_id: id.map(str::to_owned),
        requirements: Requirements { category, ..Requirements::default() },
        ..Request::default()
    }
}

/// What a scripted model does with one call: wait `latency` (on tokio's
/// clock), then answer with `usage` or fail with `fail`.
struct Step {
    latency: Duration,
    fail: Option<ErrorClass>,
    usage: Usage,
}

fn answers(latency_ms: u64, input_tokens: u64, output_tokens: u64) -> Step {
    Step { latency: Duration::from_millis(latency_ms), fail: None, usage: Usage::new(input_tokens, output_tokens) }
}

fn fails(latency_ms: u64, class: ErrorClass) -> Step {
    Step { latency: Duration::from_millis(latency_ms), fail: Some(class), usage: Usage::default() }
}

/// Serves `request`, each attempt doing what `script` says for its model.
async fn call(fleet: &Fleet, request: &Request, script: impl Fn(&str) -> Step) -> Result<Served<()>, FleetError> {
    fleet
        .call(request, |model, _| {
            let step = script(&model.id);
            async move {
                if !step.latency.is_zero() {
                    tokio::time::sleep(step.latency).await;
                }
                match step.fail {
                    Some(class) => Err(Failure::new(class, "scripted failure")),
                    None => Ok(ModelResponse { value: (), usage: Some(step.usage) }),
                }
            }
        })
        .await
}

/// The last hour, its end just after now (a row stamped this millisecond is in).
fn last_hour(by: Dim) -> ReportQuery {
    ReportQuery { by, ..ReportQuery::last(Duration::from_hours(1), now_ms() + 1) }
}

/// The figures of a group line that the calls fix exactly: requests,
/// successes, failures, client faults, aborted, fallbacks, input and
/// output tokens, cost.
fn figures(line: &GroupLine) -> (u64, u64, u64, u64, u64, u64, u64, u64, Money) {
    (
        line.requests,
        line.successes,
        line.failures,
        line.client_faults,
        line.aborted,
        line.fallbacks,
        line.input_tokens,
        line.output_tokens,
        line.cost,
    )
}

fn group<'r>(report: &'r HistoryReport, name: &str) -> &'r GroupLine {
    report.groups.iter().find(|g| g.name == name).unwrap_or_else(|| panic!("no group {name:?} in {:?}", report.groups))
}

#[tokio::test(start_paused = true)]
async fn a_report_counts_every_attempt_exactly_whichever_way_it_is_grouped() {
    let dir = tempfile::tempdir().unwrap();
    let models = vec![
        model("alpha", "p-one", &[Category::Code, Category::General], "1"),
        model("beta", "p-two", &[Category::General], "2"),
        model("gamma", "p-three", &[Category::Code], "4"),
        model("idle", "p-one", &[Category::General], "1"),
    ];
    let fleet = Fleet::open(FleetOptions {
        models: Some(models),
        model_fallbacks: [("alpha".to_owned(), vec!["beta".to_owned()])].into(),
        ..options(&dir)
    })
    .await
    .unwrap();
    let code = Some(Category::Code);
    // alpha: three code answers of 1,000 + 500 tokens at $1/Mtok: $0.0015 each.
    for _ in 0..3 {
        call(&fleet, &ask("alpha", code, None), |_| answers(0, 1_000, 500)).await.unwrap();
    }
    // beta: two general answers of 2,000 + 1,000 tokens at $2/Mtok: $0.006 each.
    for _ in 0..2 {
        call(&fleet, &ask("beta", None, None), |_| answers(0, 2_000, 1_000)).await.unwrap();
    }
    // gamma: a code answer of 500 + 500 tokens at $4/Mtok ($0.004), a second slow.
    call(&fleet, &ask("gamma", code, None), |_| answers(1_000, 500, 500)).await.unwrap();
    // gamma: a bad request, the request's fault: no fallback, nothing charged.
    let err = call(&fleet, &ask("gamma", code, None), |_| fails(0, ErrorClass::BadRequest)).await.unwrap_err();
    let FleetError::NotServed { class, attempts, cost, .. } = err else { panic!("expected a refusal, got {err}") };
    assert_eq!((class, attempts.len(), cost), (Some(ErrorClass::BadRequest), 1, Money::ZERO));
    // alpha fails (a server error, not billed); beta stands in: 100 + 100 tokens at $2/Mtok.
    let served = call(&fleet, &ask("alpha", None, None), |m| {
        if m == "alpha" { fails(0, ErrorClass::ServerError) } else { answers(0, 100, 100) }
    })
    .await
    .unwrap();
    assert_eq!((served.model.as_str(), served.fell_back, served.cost), ("beta", true, money("0.0004")));

    let query = last_hour(Dim::Model);
    let by_model = fleet.report(&query).await.unwrap();
    assert_eq!((by_model.from_ms, by_model.to_ms), (query.from_ms, query.to_ms), "the range asked, not widened");
    let names: Vec<&str> = by_model.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta", "gamma"], "busiest first; a model without traffic has no line");
    assert_eq!(figures(group(&by_model, "alpha")), (4, 3, 1, 0, 0, 0, 3_000, 1_500, money("0.0045")));
    assert_eq!(figures(group(&by_model, "beta")), (3, 3, 0, 0, 0, 1, 4_100, 2_100, money("0.0124")));
    assert_eq!(figures(group(&by_model, "gamma")), (2, 1, 0, 1, 0, 0, 500, 500, money("0.004")));
    assert_eq!(group(&by_model, "alpha").provider.as_deref(), Some("p-one"));
    assert_eq!(group(&by_model, "alpha").success_rate, Some(0.75));
    assert_eq!(group(&by_model, "gamma").success_rate, Some(1.0), "a client fault does not count against it");
    let totals = (9, 7, 1, 1, 0, 1, 7_600, 4_100, money("0.0209"));
    assert_eq!(figures(&by_model.totals), totals);

    let by_provider = fleet.report(&last_hour(Dim::Provider)).await.unwrap();
    let names: Vec<&str> = by_provider.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["p-one", "p-two", "p-three"]);
    assert_eq!(figures(group(&by_provider, "p-one")), figures(group(&by_model, "alpha")));
    assert_eq!(figures(group(&by_provider, "p-two")), figures(group(&by_model, "beta")));
    assert_eq!(figures(group(&by_provider, "p-three")), figures(group(&by_model, "gamma")));
    assert_eq!(group(&by_provider, "p-one").provider, None, "only a model's line names a provider");

    let by_category = fleet.report(&last_hour(Dim::Category)).await.unwrap();
    let names: Vec<&str> = by_category.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["code", "general"]);
    assert_eq!(figures(group(&by_category, "code")), (5, 4, 0, 1, 0, 0, 3_500, 2_000, money("0.0085")));
    assert_eq!(figures(group(&by_category, "general")), (4, 3, 1, 0, 0, 1, 4_100, 2_100, money("0.0124")));

    for report in [&by_model, &by_provider, &by_category] {
        assert_eq!(figures(&report.totals), totals, "the totals agree whichever way the range is grouped");
        assert_eq!(report.totals.success_rate, Some(7.0 / 8.0));
        let summed =
            report.groups.iter().fold((0, Money::ZERO), |(n, c), g| (n + g.requests, c.saturating_add(g.cost)));
        assert_eq!(summed, (9, money("0.0209")), "{:?}: the groups add up to the totals", report.by);
    }

    // Ranking: beta (all answered, fast), gamma (all answered, one slow
    // answer), alpha (3 of 4): each score is the shared formula of its line.
    let ranked: Vec<(&str, u64, Option<f64>)> =
        by_model.ranking.iter().map(|r| (r.model.as_str(), r.requests, r.success_rate)).collect();
    assert_eq!(ranked, [("beta", 3, Some(1.0)), ("gamma", 2, Some(1.0)), ("alpha", 4, Some(0.75))]);
    for line in &by_model.ranking {
        let quality = line.mean_rating.map(|m| (m - 1.0) / 4.0);
        let expected = performance_score(line.success_rate, line.p95_ms.unwrap_or(1_000.0), quality);
        assert_eq!(line.score.to_bits(), expected.to_bits(), "{}'s score", line.model);
    }
    let beta = &by_model.ranking[0];
    assert_eq!(beta.p95_ms, Some(0.0));
    assert!((beta.score - 0.925).abs() < 1e-12, "answers in no time: 0.6 + 0.25 + 0.15 × 0.5, not {}", beta.score);
    let gamma_p95 = by_model.ranking[1].p95_ms.unwrap();
    assert!((gamma_p95 - 1_000.0).abs() <= 1_000.0 / 128.0, "gamma's p95 is its one judged 1 s answer: {gamma_p95}");
    assert_eq!(by_model.ranking, by_provider.ranking, "the ranking is by model, whatever the grouping");
    assert!(by_model.recommendations.is_empty(), "nobody has 20 judged requests: {:?}", by_model.recommendations);

    // None is proven (20 judged outcomes): ranked, but no top performer.
    assert!(by_model.ranking.iter().all(|r| !r.proven));
    let overview = &by_model.overview;
    assert!(overview.top_performers.is_empty(), "{:?}", overview.top_performers);
    assert_eq!(overview.inactive, ["idle"]);
    assert!(overview.disabled.is_empty());
    let providers: Vec<(&str, usize, u64, Money)> =
        overview.providers.iter().map(|p| (p.provider.as_str(), p.models, p.requests, p.cost)).collect();
    assert_eq!(
        providers,
        [("p-one", 1, 4, money("0.0045")), ("p-three", 1, 2, money("0.004")), ("p-two", 1, 3, money("0.0124"))]
    );
    let categories: Vec<(&str, u64, Vec<&str>)> = overview
        .categories
        .iter()
        .map(|c| (c.category.as_str(), c.requests, c.top.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(categories, [("code", 5, vec![]), ("general", 4, vec![])], "top models are proven ones: none yet");
    fleet.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn recommendations_name_only_alternatives_that_can_stand_in() {
    let dir = tempfile::tempdir().unwrap();
    let tools = Capabilities { tools: true, ..Capabilities::default() };
    let coder = |id: &str| ModelSpec { capabilities: tools, ..model(id, "lab", &[Category::Code], "1") };
    let models = vec![
        coder("flaky"),
        coder("steady"),
        // A smaller window: it cannot stand in for flaky, steady can for it.
        ModelSpec { context_window: Some(16_000), ..coder("dull") },
        // Each scores higher than `steady` and cannot stand in for a code model with tools and a 32k window.
        ModelSpec { context_window: Some(128_000), ..model("wide", "lab", &[Category::General], "1") },
        ModelSpec { context_window: Some(8_000), ..coder("small") },
        model("notool", "lab", &[Category::Code], "1"),
        coder("retired"),
        coder("spare"),
    ];
    let fleet = Fleet::open(FleetOptions {
        models: Some(models),
        model_fallbacks: [("flaky".to_owned(), vec!["steady".to_owned()])].into(),
        ..options(&dir)
    })
    .await
    .unwrap();
    let script = |id: &str| match id {
        "steady" => answers(500, 10, 10),
        "flaky" => answers(1_000, 10, 10),
        _ => answers(0, 10, 10),
    };
    // flaky: 17 of 20 answered (85%); its 3 failures fall back to steady.
    for i in 0..20 {
        let served = call(&fleet, &ask("flaky", None, None), |id| {
            if id == "flaky" && i % 7 == 3 { fails(1_000, ErrorClass::ServerError) } else { script(id) }
        })
        .await
        .unwrap();
        assert_eq!(served.model, if i % 7 == 3 { "steady" } else { "flaky" });
    }
    for _ in 0..20 {
        call(&fleet, &ask("steady", None, None), script).await.unwrap();
    }
    // dull: 20 fast answers, five of them rated 1, 2, 2, 3, 4 (a mean of 2.4):
    // it still outscores steady, so nothing that can stand in for it scores higher.
    for i in 0..20 {
        call(&fleet, &ask("dull", None, Some(&format!("dull-{i}"))), script).await.unwrap();
    }
    for (i, rating) in [1, 2, 2, 3, 4].into_iter().enumerate() {
        let rated = fleet.rate(&format!("dull-{i}"), rating, None, ("tester", None)).await.unwrap().unwrap();
        assert_eq!((rated.model.as_str(), rated.rating), ("dull", rating));
    }
    // Proven (20 judged each) like the others: only standing in keeps them out.
    for id in ["wide", "small", "notool", "retired"] {
        for _ in 0..20 {
            call(&fleet, &ask(id, None, None), script).await.unwrap();
        }
    }
    fleet.catalog().update("retired", ModelUpdate { enabled: Some(false), ..ModelUpdate::default() }).unwrap();

    let report = fleet.report(&last_hour(Dim::Model)).await.unwrap();
    let ranked: Vec<&str> = report.ranking.iter().map(|r| r.model.as_str()).collect();
    assert_eq!(
        ranked,
        ["notool", "retired", "small", "wide", "dull", "steady", "flaky"],
        "the four that cannot stand in outrank steady"
    );
    let steady = &report.ranking[5];
    assert_eq!((steady.requests, steady.success_rate), (23, Some(1.0)), "20 calls and 3 fallbacks");
    assert!(report.ranking.iter().all(|r| r.proven));
    // Top performers are enabled now: retired is not one.
    assert_eq!(report.overview.top_performers, ["notool", "small", "wide"]);
    let general = report.overview.categories.iter().find(|c| c.category == "general").unwrap();
    assert_eq!(general.top, ["notool", "small", "wide"], "proven enabled models, best first");
    let dull = group(&report, "dull");
    assert_eq!((dull.ratings, dull.mean_rating), (5, Some(2.4)));
    let expected = vec![
        Recommendation {
            model: "dull".into(),
            finding: Finding::LowRating { mean_rating: 2.4, ratings: 5, threshold: 3.0 },
            alternative: None,
            message: "dull: users rate it 2.4 of 5 on average over 5 ratings, under 3.0".into(),
        },
        Recommendation {
            model: "flaky".into(),
            finding: Finding::LowSuccessRate { success_rate: 0.85, threshold: 0.9 },
            alternative: Some("steady".into()),
            message: "flaky: success rate 85.0% is under 90% over 20 requests; consider steady".into(),
        },
    ];
    assert_eq!(report.recommendations, expected);
    assert_eq!(report.overview.inactive, ["spare"], "enabled, and no request in the range");
    assert_eq!(report.overview.disabled, ["retired"], "disabled now, though it served in the range");
    fleet.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_budget_forecast_past_its_limit_names_its_biggest_spender_and_the_cheapest_stand_in() {
    let dir = tempfile::tempdir().unwrap();
    // A day that began 12 hours ago at this offset: half the period has
    // elapsed, enough for a forecast (10% or 24 hours), which then doubles the spend.
    let minute_of_day = i16::try_from(now_ms() / 60_000 % 1_440).unwrap();
    let utc_offset_minutes = 720 - minute_of_day;
    let chat = [Category::Conversation];
    let models = vec![
        model("pricey", "lab", &chat, "10"),
        model("mid", "lab", &chat, "5"),
        model("cheap", "lab", &chat, "1"),
        // Cheaper still, and neither can stand in: a 4k window, another category.
        ModelSpec { context_window: Some(4_000), max_output_tokens: Some(1_000), ..model("tiny", "lab", &chat, "0.5") },
        model("coder", "lab", &[Category::Code], "0.1"),
    ];
    let limit = money("0.05");
    let budget = BudgetSpec { enforcement: Enforcement::Soft, ..BudgetSpec::hard(Scope::Global, Period::Daily, limit) };
    let fleet = Fleet::open(FleetOptions {
        models: Some(models),
        budgets: vec![budget],
        ledger: LedgerConfig { utc_offset_minutes, ..LedgerConfig::default() },
        ..options(&dir)
    })
    .await
    .unwrap();
    // pricey: 2 × 2,000 tokens at $10/Mtok = $0.04; cheap: 2,000 tokens at $1/Mtok = $0.002.
    for _ in 0..2 {
        call(&fleet, &ask("pricey", None, None), |_| answers(0, 1_000, 1_000)).await.unwrap();
    }
    call(&fleet, &ask("cheap", None, None), |_| answers(0, 1_000, 1_000)).await.unwrap();

    let before = now_ms();
    let report = fleet.report(&last_hour(Dim::Model)).await.unwrap();
    let after = now_ms();
    let [view] = report.overview.budgets.as_slice() else { panic!("one budget: {:?}", report.overview.budgets) };
    let status = &view.status;
    assert_eq!(status.spent, money("0.042"));
    let start = status.period_start_ms;
    let length = status.period_end_ms.unwrap() - start;
    assert_eq!(length, 86_400_000);
    assert!(before - start >= 12 * 3_600_000 - 60_000, "the local day began 12 hours ago");
    let [advice] = report.recommendations.as_slice() else { panic!("one: {:?}", report.recommendations) };
    let Finding::OverBudgetForecast { budget, forecast, limit: limit_seen, spent } = &advice.finding else {
        panic!("a forecast: {advice:?}")
    };
    assert_eq!((budget.as_str(), *limit_seen, *spent), ("global/daily", limit, money("0.04")));
    // The spend extended linearly over the day from what has elapsed, at some instant of the report.
    let projected = |elapsed: u64| {
        Money::from_nanos(
            i64::try_from(i128::from(status.spent.nanos()) * i128::from(length) / i128::from(elapsed)).unwrap(),
        )
    };
    assert!(
        (projected(after - start)..=projected(before - start)).contains(forecast),
        "{forecast} is $0.042 over {} of the day",
        (before - start) as f64 / length as f64
    );
    assert!(*forecast > limit);
    assert_eq!(advice.model, "pricey", "the model that spent the most of it");
    assert_eq!(advice.alternative.as_deref(), Some("cheap"), "the cheapest model that can stand in for pricey");
    assert_eq!(
        advice.message,
        format!(
            "budget global/daily is forecast to reach ${forecast} against its $0.05 limit; pricey spent $0.04 of it; consider cheap"
        )
    );
    assert!(matches!(status.forecast, Forecast::Projected { exceeds_limit: true, .. }));
    fleet.shutdown().await.unwrap();
}

/// Rows of `model` (a success of 50 ms) at each of `at`, written straight to the store.
async fn backdated(fleet: &Fleet, model: &str, provider: &str, at: &[u64]) {
    for &at_ms in at {
        let outcome = Outcome::success(model, provider, Duration::from_millis(50));
        fleet.store().record(PerfRecord::from_outcome(&outcome, at_ms)).await.unwrap();
    }
    fleet.store().flush_async().await.unwrap();
}

#[tokio::test]
async fn a_restarted_fleet_warms_its_monitor_from_the_last_hour() {
    let dir = tempfile::tempdir().unwrap();
    let models = vec![model("a", "pa", &[Category::General], "1"), model("b", "pb", &[Category::General], "1")];
    // Real time (a warm start replays the wall clock's last hour); no
    // ejection, so all ten failures reach `a`.
    let live = || FleetOptions {
        models: Some(models.clone()),
        model_fallbacks: [("a".to_owned(), vec!["b".to_owned()])].into(),
        tracker: TrackerConfig {
            cooldown: CooldownConfig { escalate_after: u32::MAX, ..CooldownConfig::default() },
            ..TrackerConfig::default()
        },
        virtual_time: false,
        ..options(&dir)
    };
    let now = now_ms();
    let (old, recent) = ([now - 2 * 3_600_000; 3], [now - 50 * 60_000; 2]);
    {
        let fleet = Fleet::open(live()).await.unwrap();
        backdated(&fleet, "a", "pa", &old).await;
        backdated(&fleet, "a", "pa", &recent).await;
        for _ in 0..10 {
            let served = call(&fleet, &ask("a", None, None), |m| {
                if m == "a" { fails(0, ErrorClass::ServerError) } else { answers(0, 10, 10) }
            })
            .await
            .unwrap();
            assert_eq!(served.model, "b");
        }
        assert_eq!(fleet.monitor().model_health("a", &ReportConfig::default()), Health::Down);
        fleet.shutdown().await.unwrap();
    }

    let fleet = Fleet::open(live()).await.unwrap();
    // Before any call: the last hour's rows, not the older ones.
    let a = fleet.monitor().model_stats("a").totals;
    assert_eq!((a.requests, a.successes, a.failures), (12, 2, 10), "10 failures and the 2 rows of 50 minutes ago");
    let b = fleet.monitor().model_stats("b").totals;
    assert_eq!((b.requests, b.successes), (10, 10));
    assert_eq!(
        fleet.monitor().model_health("a", &ReportConfig::default()),
        Health::Down,
        "its last five judged outcomes failed, and its last minute is all failures"
    );
    assert_eq!(fleet.monitor().model_health("b", &ReportConfig::default()), Health::Healthy);
    // What the selector reads: the live signals rank the failing model low.
    let now = fleet.monitor().now_ms();
    let (sa, sb) = (fleet.monitor().signals_at("a", now), fleet.monitor().signals_at("b", now));
    assert!(sa.samples > 0 && sa.success_rate < 0.5, "a's live success rate: {sa:?}");
    assert!(sb.success_rate > 0.9, "b's: {sb:?}");
    let report = fleet.report(&last_hour(Dim::Model)).await.unwrap();
    let health: Vec<(&str, Health)> = report.health.models.iter().map(|m| (m.model.as_str(), m.health)).collect();
    assert_eq!(health, [("a", Health::Down), ("b", Health::Healthy)]);
    assert_eq!(report.health.providers.get("pa"), Some(&Health::Down));
    assert_eq!(report.health.overall, Health::Down);
    assert_eq!((group(&report, "a").requests, group(&report, "a").successes), (12, 2));
    // The rows of two hours ago are not in the monitor, but the history has them.
    let older = ReportQuery { from_ms: now - 3 * 3_600_000, to_ms: now - 90 * 60_000, by: Dim::Model };
    let report = fleet.report(&older).await.unwrap();
    let stored = group(&report, "a");
    assert_eq!((report.groups.len(), stored.requests, stored.successes), (1, 3, 3));
    fleet.shutdown().await.unwrap();

    // Simulated time has no past to warm from.
    let fleet = Fleet::open(FleetOptions { virtual_time: true, ..live() }).await.unwrap();
    assert!(fleet.monitor().models().is_empty(), "{:?}", fleet.monitor().models());
    assert_eq!(fleet.monitor().model_stats("a").totals.requests, 0);
    assert_eq!(fleet.monitor().model_health("a", &ReportConfig::default()), Health::Healthy);
    fleet.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn ratings_reach_the_monitor_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let models = vec![model("m", "lab", &[Category::General], "1"), model("n", "lab", &[Category::General], "1")];
    let fleet = Fleet::open(FleetOptions { models: Some(models), ..options(&dir) }).await.unwrap();
    for id in ["r1", "r2"] {
        call(&fleet, &ask("m", None, Some(id)), |_| answers(0, 10, 10)).await.unwrap();
    }
    // A request no model answered (a bad request) has nothing to rate.
    call(&fleet, &ask("n", None, Some("bad")), |_| fails(0, ErrorClass::BadRequest)).await.unwrap_err();
    assert_eq!(fleet.monitor().model_stats("m").avg_quality, None);

    let rated = fleet.rate("r1", 4, Some("good"), ("tester", None)).await.unwrap().unwrap();
    assert_eq!(
        (rated.request_id.as_str(), rated.model.as_str(), rated.provider.as_str(), rated.rating),
        ("r1", "m", "lab", 4)
    );
    assert_eq!(fleet.monitor().model_stats("m").avg_quality, Some(0.75), "(4 - 1) / 4");
    fleet.rate("r2", 2, None, ("tester", None)).await.unwrap().unwrap();
    assert_eq!(fleet.monitor().model_stats("m").avg_quality, Some(0.5), "the mean of 0.75 and 0.25");

    assert_eq!(fleet.rate("nobody", 5, None, ("tester", None)).await.unwrap(), None);
    // With a key, only a request sent with that key.
    let keyed = Request { key: Some("team-a".into()), ..ask("m", None, Some("r3")) };
    call(&fleet, &keyed, |_| answers(0, 10, 10)).await.unwrap();
    assert_eq!(fleet.rate("r3", 5, None, ("tester", Some("team-b"))).await.unwrap(), None);
    assert_eq!(fleet.monitor().model_stats("m").avg_quality, Some(0.5), "another key's rating is not taken");
    assert_eq!(fleet.rate("bad", 5, None, ("tester", None)).await.unwrap(), None);
    for rating in [0, 6] {
        match fleet.rate("r1", rating, None, ("tester", None)).await {
            Err(FleetError::Store(modelfleet::store::Error::Invalid(message))) => {
                assert_eq!(message, format!("a rating is an integer from 1 to 5, not {rating}"));
            }
            other => panic!("a rating of {rating} must be refused, got {other:?}"),
        }
    }
    assert_eq!(fleet.monitor().model_stats("m").avg_quality, Some(0.5), "a refused rating changes nothing");
    assert_eq!(fleet.monitor().model_stats("n").avg_quality, None);
    let report = fleet.report(&last_hour(Dim::Model)).await.unwrap();
    let m = group(&report, "m");
    assert_eq!((m.ratings, m.mean_rating), (2, Some(3.0)), "the history agrees: (4 + 2) / 2");
    let rated = fleet.rate("r3", 5, None, ("tester", Some("team-a"))).await.unwrap();
    assert_eq!(rated.map(|r| r.rating), Some(5), "its own key may rate it");
    assert_eq!(fleet.monitor().model_stats("m").avg_quality, Some(2.0 / 3.0), "(0.75 + 0.25 + 1) / 3");
    fleet.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_second_rating_of_a_request_replaces_the_first_in_the_monitor_as_in_the_history() {
    let dir = tempfile::tempdir().unwrap();
    // Real time, so that a restart warms the monitor from the stored rows.
    let live = || FleetOptions {
        models: Some(vec![model("m", "lab", &[Category::General], "1")]),
        virtual_time: false,
        ..options(&dir)
    };
    let fleet = Fleet::open(live()).await.unwrap();
    call(&fleet, &ask("m", None, Some("r1")), |_| answers(0, 10, 10)).await.unwrap();
    fleet.rate("r1", 5, None, ("tester", None)).await.unwrap().unwrap();
    fleet.rate("r1", 1, None, ("tester", None)).await.unwrap().unwrap();
    let report = fleet.report(&last_hour(Dim::Model)).await.unwrap();
    let m = group(&report, "m");
    assert_eq!((m.ratings, m.mean_rating), (1, Some(1.0)), "the store keeps the second rating only");
    let before_restart = fleet.monitor().model_stats("m").avg_quality;
    fleet.shutdown().await.unwrap();
    let fleet = Fleet::open(live()).await.unwrap();
    let after_restart = fleet.monitor().model_stats("m").avg_quality;
    fleet.shutdown().await.unwrap();
    assert_eq!(after_restart, Some(0.0), "the restarted monitor replays the row's quality: (1 - 1) / 4");
    assert_eq!(
        before_restart, after_restart,
        "the live monitor's quality is the request's rating now, as a restart replays it (it counted both ratings)"
    );
}
