//! Selector tests: examples per constraint and strategy, and seed 000's properties.

use std::collections::HashMap;

use modelfleet_registry::{Capability, Category, ModelSpec, ModelStatus, Money, Pricing, default_catalog};

use super::*;

/// A general English model of provider `prov`: window 8,000, output limit
/// 2,000, quality 0.5, typical latency 1 s, $1 in and $2 out per million.
pub(crate) fn model(id: &str) -> ModelSpec {
    let mut m = ModelSpec::new(id, "prov");
    m.categories = vec![Category::General];
    m.context_window = Some(8_000);
    m.max_output_tokens = Some(2_000);
    m.quality = Some(0.5);
    m.typical_latency_ms = Some(1_000);
    m.primary_language = Some("en".into());
    m.languages = vec!["en".into()];
    m.pricing = Some(price("1", "2"));
    m
}

/// Every weight 0: a base for weights that count one or two terms.
pub(crate) const ZERO_WEIGHTS: WeightValues = WeightValues {
    quality: 0.0,
    reliability: 0.0,
    language: 0.0,
    cost: 0.0,
    speed: 0.0,
    load: 0.0,
    category: 0.0,
    priority: 0.0,
};

pub(crate) fn price(input: &str, output: &str) -> Pricing {
    Pricing {
        input_per_mtok: input.parse().unwrap(),
        output_per_mtok: output.parse().unwrap(),
        cached_input_per_mtok: None,
        cache_write_per_mtok: None,
        reasoning_per_mtok: None,
    }
}

pub(crate) fn ids<'a>(ranked: &[Ranked<'a>]) -> Vec<&'a str> {
    ranked.iter().map(|r| r.model.id.as_str()).collect()
}

#[track_caller]
fn check_rejects(m: &ModelSpec, req: &Requirements, expect: &str) {
    let why = explain(std::slice::from_ref(m), req, &NoSignals, &SelectorConfig::default());
    assert!(why.ranked.is_empty(), "{} should be rejected", m.id);
    let reasons: Vec<String> = why.rejected[0].reasons.iter().map(ToString::to_string).collect();
    assert_eq!(reasons.join("; "), expect);
}

#[test]
fn each_constraint_rejects_with_a_reason() {
    let base = model("m");
    let req = Requirements::default();
    let mut off = base.clone();
    off.enabled = false;
    off.status = ModelStatus::Maintenance;
    check_rejects(&off, &req, "disabled; status is maintenance");

    let code = Requirements { category: Some(Category::Code), ..req.clone() };
    let general = rank(std::slice::from_ref(&base), &code, &NoSignals, &SelectorConfig::default());
    assert_eq!(general.len(), 1, "a general model may take any category");
    assert!((general[0].score.category - 0.5).abs() < f64::EPSILON, "but scores lower than an exact match");
    let mut coder_only = base.clone();
    coder_only.categories = vec![Category::Translation];
    check_rejects(
        &coder_only,
        &Requirements { category: Some(Category::Code), ..req.clone() },
        "not a code or general model",
    );

    check_rejects(&base, &Requirements { language: Some("ja".into()), ..req.clone() }, r#"does not speak "ja""#);
    check_rejects(
        &base,
        &Requirements { prompt_tokens: 7_000, max_output_tokens: 1_500, ..req.clone() },
        "context window 8000 < 8500 tokens needed",
    );
    check_rejects(
        &base,
        &Requirements { max_output_tokens: 3_000, ..req.clone() },
        "output limit 2000 < 3000 tokens asked",
    );
    check_rejects(&base, &Requirements { capabilities: vec![Capability::Vision], ..req.clone() }, "no vision support");
    check_rejects(
        &base,
        &Requirements {
            prompt_tokens: 1_000,
            max_output_tokens: 500,
            max_cost: Some(Money::from_nanos(1_999_999)),
            ..req.clone()
        },
        "worst-case cost $0.002 > max $0.001999999",
    );
    check_rejects(&base, &Requirements { min_quality: Some(0.9), ..req.clone() }, "quality 0.5 < min 0.9");
    check_rejects(&base, &Requirements { max_latency_ms: Some(500), ..req.clone() }, "latency 1000 ms > max 500 ms");
    check_rejects(
        &base,
        &Requirements { providers: vec!["other".into()], ..req.clone() },
        r#"provider "prov" not allowed"#,
    );
    check_rejects(
        &base,
        &Requirements { exclude_providers: vec!["prov".into()], ..req.clone() },
        r#"provider "prov" excluded"#,
    );
    check_rejects(&base, &Requirements { locality: Some(Locality::LocalOnly), ..req.clone() }, "not local");
    let mut local = base.clone();
    local.local = true;
    local.memory_mb = Some(4_096);
    check_rejects(&local, &Requirements { locality: Some(Locality::CloudOnly), ..req.clone() }, "not a cloud model");
    check_rejects(
        &local,
        &Requirements { available_memory_mb: Some(2_048), ..req.clone() },
        "needs 4096 MiB, 2048 MiB free",
    );
}

/// One row: the model's output limit and window, the request's prompt,
/// `max_tokens` and `n`, and the worst-case output and cost expected.
#[track_caller]
fn check_worst(limit: Option<u32>, window: Option<u32>, prompt: u32, cap: u32, n: u32, expect: Option<(u64, &str)>) {
    let mut m = model("m"); // $1 in, $2 out per million
    m.max_output_tokens = limit;
    m.context_window = window;
    let req = Requirements { prompt_tokens: prompt, max_output_tokens: cap, n, ..Requirements::default() };
    let got = worst_case_output(&m, &req).zip(worst_case_cost(&m, &req).map(|c| c.to_string()));
    assert_eq!(got, expect.map(|(tokens, cost)| (tokens, cost.to_owned())));
}

#[test]
fn the_worst_case_takes_the_least_known_output_bound_for_every_answer() {
    // The request's cap, when it is the least bound.
    check_worst(Some(2_000), Some(8_000), 1_000, 500, 0, Some((500, "0.002")));
    // No cap: the model's output limit.
    check_worst(Some(2_000), Some(8_000), 1_000, 0, 0, Some((2_000, "0.005")));
    // No cap, no limit: what the window leaves after the prompt.
    check_worst(None, Some(8_000), 1_000, 0, 1, Some((7_000, "0.015")));
    // The window leaves less than the limit.
    check_worst(Some(2_000), Some(2_500), 1_000, 0, 1, Some((1_500, "0.004")));
    // A prompt filling the window leaves nothing to answer.
    check_worst(None, Some(1_000), 1_000, 0, 1, Some((0, "0.001")));
    // n answers each take the whole bound; the prompt is paid once.
    check_worst(Some(2_000), None, 1_000, 0, 3, Some((6_000, "0.013")));
    // Nothing bounds the output.
    check_worst(None, None, 1_000, 0, 1, None);
    // The request's cap bounds it alone.
    check_worst(None, None, 1_000, 10, 2, Some((20, "0.00104")));

    let mut unpriced = model("u");
    unpriced.pricing = None;
    assert_eq!(worst_case_cost(&unpriced, &Requirements::default()), None, "an unpriced cloud model");
    unpriced.local = true;
    unpriced.max_output_tokens = None;
    unpriced.context_window = None;
    assert_eq!(worst_case_cost(&unpriced, &Requirements::default()), Some(Money::ZERO), "a local model is free");
    let mut free = model("f");
    free.pricing = Some(Pricing::FREE);
    free.max_output_tokens = None;
    free.context_window = None;
    assert_eq!(worst_case_cost(&free, &Requirements::default()), Some(Money::ZERO), "explicit zero prices");
}

#[test]
fn max_cost_passes_a_worst_case_exactly_at_it_and_rejects_unbounded_output() {
    let base = model("m");
    // prompt 1,000 + 2,000 output (the model's limit): $0.005.
    let at = |nanos| Requirements {
        prompt_tokens: 1_000,
        max_cost: Some(Money::from_nanos(nanos)),
        ..Requirements::default()
    };
    let one = std::slice::from_ref(&base);
    assert_eq!(rank(one, &at(5_000_000), &NoSignals, &SelectorConfig::default()).len(), 1, "exactly at max_cost");
    check_rejects(&base, &at(4_999_999), "worst-case cost $0.005 > max $0.004999999");
    let mut open = base.clone();
    open.max_output_tokens = None;
    open.context_window = None;
    // Without a prompt the unknown window is not needed; the output is still unbounded.
    let no_prompt = Requirements { prompt_tokens: 0, ..at(5_000_000) };
    check_rejects(&open, &no_prompt, "output unbounded (no max_tokens, no output limit, no context window)");
}

/// Signals with one budget room for every model.
struct Room(Money);

impl LiveSignals for Room {
    fn signals(&self, _: &str) -> Signals {
        Signals::default()
    }

    fn budget_room(&self, _: &ModelSpec) -> Option<BudgetRoom<'_>> {
        Some(BudgetRoom { budget: "global monthly", remaining: self.0 })
    }
}

#[test]
fn a_model_whose_worst_case_does_not_fit_the_budget_left_is_rejected_and_cheaper_ones_serve() {
    let dear = model("dear"); // worst case for 1,000 prompt tokens: $0.005
    let mut cheap = model("cheap");
    cheap.pricing = Some(price("0.5", "1")); // $0.0025
    let mut free = model("free");
    free.pricing = Some(Pricing::FREE);
    let mut open = model("open");
    open.pricing = None;
    let models = [cheap, dear, free, open];
    let req = Requirements { prompt_tokens: 1_000, ..Requirements::default() };
    let config = SelectorConfig::default();
    let served = |left: i64| {
        let mut ids = ids(&rank(&models, &req, &Room(Money::from_nanos(left)), &config));
        ids.sort_unstable();
        ids
    };
    assert_eq!(served(5_000_000), ["cheap", "dear", "free"], "exactly the worst case left fits");
    assert_eq!(served(4_999_999), ["cheap", "free"]);
    assert_eq!(served(2_500_000), ["cheap", "free"]);
    assert_eq!(served(2_499_999), ["free"]);
    assert_eq!(served(0), ["free"], "a free model fits an exhausted budget");
    let why = explain(&models, &req, &Room(Money::from_nanos(2_499_999)), &config);
    let reasons: Vec<String> = why.rejected.iter().map(|r| format!("{}: {}", r.model.id, r.reasons[0])).collect();
    assert_eq!(
        reasons,
        [
            "cheap: worst-case cost $0.0025 > $0.002499999 left in hard budget global monthly",
            "dear: worst-case cost $0.005 > $0.002499999 left in hard budget global monthly",
            "open: cost cannot be bounded (no price, no bound on the output, or a prompt the gateway cannot measure) under hard budget global monthly",
        ]
    );
    assert!(why.rejected.iter().all(|r| r.reasons[0].constraint() == "budget"));
    // Without a budget the unbounded model serves.
    assert_eq!(rank(&models, &req, &NoSignals, &config).len(), 4);
}

#[test]
fn unknown_properties_never_pass_a_constraint() {
    let unknown = ModelSpec::new("blank", "prov");
    let req = Requirements {
        category: Some(Category::Code),
        language: Some("en".into()),
        prompt_tokens: 10,
        max_output_tokens: 10,
        max_cost: Some(Money::from_dollars(100)),
        min_quality: Some(0.0),
        max_latency_ms: Some(100_000),
        ..Requirements::default()
    };
    check_rejects(
        &unknown,
        &req,
        r#"not a code or general model; does not speak "en"; context window unknown (20 tokens needed); price unknown; quality unknown; latency unknown"#,
    );
    let mut local = unknown.clone();
    local.local = true;
    check_rejects(
        &local,
        &Requirements { available_memory_mb: Some(1 << 20), ..Requirements::default() },
        "memory need unknown",
    );
    // With no constraints, the unknown model is eligible.
    assert_eq!(rank(&[unknown], &Requirements::default(), &NoSignals, &SelectorConfig::default()).len(), 1);
}

#[test]
fn strategies_order_as_named() {
    let mut cheap = model("cheap");
    cheap.pricing = Some(price("0.1", "0.1"));
    cheap.quality = Some(0.4);
    let mut fast = model("fast");
    fast.typical_latency_ms = Some(100);
    let mut smart = model("smart");
    smart.quality = Some(0.95);
    smart.pricing = Some(price("10", "30"));
    let mut favourite = model("favourite");
    favourite.priority = 90;
    let models = [cheap, fast, smart, favourite];
    let req = Requirements::default();
    let head = |strategy| {
        let config = SelectorConfig { strategy, ..SelectorConfig::default() };
        rank(&models, &req, &NoSignals, &config)[0].model.id.clone()
    };
    assert_eq!(head(Strategy::Cheapest), "cheap", "priced on the reference request when none is sized");
    assert_eq!(head(Strategy::Fastest), "fast");
    assert_eq!(head(Strategy::HighestQuality), "smart");
    assert_eq!(head(Strategy::PriorityOrder), "favourite");
}

#[test]
fn cheapest_prices_the_request_as_sized() {
    // "input" is cheap to read and dear to write, "output" the reverse.
    let mut input = model("input");
    input.pricing = Some(price("1", "10"));
    let mut output = model("output");
    output.pricing = Some(price("5", "1"));
    let mut unpriced = model("a-unpriced");
    unpriced.pricing = None;
    let models = [unpriced, input, output];
    let config = SelectorConfig { strategy: Strategy::Cheapest, ..SelectorConfig::default() };
    let order = |prompt, out| {
        let req = Requirements { prompt_tokens: prompt, max_output_tokens: out, ..Requirements::default() };
        ids(&rank(&models, &req, &NoSignals, &config)).join(",")
    };
    // 1,000 in + 100 out: $0.002 against $0.0051.
    assert_eq!(order(1_000, 100), "input,output,a-unpriced");
    // 100 in + 1,000 out: $0.0101 against $0.0015.
    assert_eq!(order(100, 1_000), "output,input,a-unpriced");
    // Unsized: the reference 1,000 in + 500 out, $0.006 against $0.0055.
    assert_eq!(order(0, 0), "output,input,a-unpriced");
    // Sized on one side only: that side alone, $0.001 against $0.005.
    assert_eq!(order(1_000, 0), "input,output,a-unpriced");
    // A nano-dollar apart still orders: 1,000 in at $1.000001 per million.
    let mut dearer = model("a-dearer");
    dearer.pricing = Some(Pricing { input_per_mtok: Money::from_nanos(1_000_001_000), ..price("1", "2") });
    let twins = [dearer, model("b")];
    let req = Requirements { prompt_tokens: 1_000, max_output_tokens: 1, ..Requirements::default() };
    assert_eq!(ids(&rank(&twins, &req, &NoSignals, &config)), ["b", "a-dearer"]);
}

#[test]
fn live_signals_move_traffic_away_from_a_failing_or_slow_model() {
    let models = [model("a"), model("b")];
    let req = Requirements::default();
    let config = SelectorConfig::default();
    // Equal on paper: the tie goes to the id.
    assert_eq!(select(&models, &req, &NoSignals, &config).unwrap().model.id, "a");
    let failing: HashMap<String, Signals> = [(
        "a".to_owned(),
        Signals { samples: 200, success_rate: 0.3, latency_ms: Some(1_000.0), ..Signals::default() },
    )]
    .into();
    assert_eq!(select(&models, &req, &failing, &config).unwrap().model.id, "b");
    let slow = |id: &str| {
        if id == "a" {
            Signals { samples: 50, success_rate: 1.0, latency_ms: Some(9_000.0), ..Signals::default() }
        } else {
            Signals::default()
        }
    };
    assert_eq!(select(&models, &req, &slow, &config).unwrap().model.id, "b");
    let busy = |id: &str| {
        if id == "a" {
            Signals { samples: 50, success_rate: 0.99, latency_ms: Some(1_000.0), in_flight: 40, ..Signals::default() }
        } else {
            Signals::default()
        }
    };
    let ranked = rank(&models, &req, &busy, &config);
    assert_eq!(ids(&ranked), ["b", "a"]);
    assert!(ranked[1].score.load < 0.05, "{:?}", ranked[1].score);
}

/// One model scored with `headroom` reported: the factor in its breakdown,
/// and its total against the same model with no report.
#[track_caller]
#[allow(clippy::float_cmp)] // exact on purpose: these points are exactly representable
fn check_rate_limit(headroom: Option<f64>, expect: f64) {
    let models = [model("a")];
    let req = Requirements::default();
    let config = SelectorConfig::default();
    let reported = |_: &str| Signals { rate_limit_headroom: headroom, ..Signals::default() };
    let score = rank(&models, &req, &reported, &config)[0].score;
    let plain = rank(&models, &req, &NoSignals, &config)[0].score;
    assert_eq!(score.rate_limit, expect, "factor at headroom {headroom:?}");
    assert_eq!(score.total, plain.total * expect, "the total is scaled by it: {score:?}");
    assert_eq!(Breakdown { rate_limit: 1.0, total: plain.total, ..score }, plain, "nothing else moves");
}

#[test]
fn rate_limit_headroom_scales_the_score_below_a_fifth_left() {
    check_rate_limit(None, 1.0);
    check_rate_limit(Some(1.0), 1.0);
    check_rate_limit(Some(0.5), 1.0);
    check_rate_limit(Some(0.2), 1.0);
    check_rate_limit(Some(0.1), 0.625);
    check_rate_limit(Some(0.0), 0.25);
    // Out of range or not a number.
    check_rate_limit(Some(3.0), 1.0);
    check_rate_limit(Some(-1.0), 0.25);
    check_rate_limit(Some(f64::NAN), 1.0);
}

#[test]
fn a_model_near_its_rate_limit_ranks_below_an_equal_one() {
    // "a" would win the tie on its id: only the factor can put it second.
    let models = [model("a"), model("b")];
    let req = Requirements::default();
    let config = SelectorConfig::default();
    for other in [Some(1.0), None] {
        let near = |id: &str| Signals {
            rate_limit_headroom: if id == "a" { Some(0.05) } else { other },
            ..Signals::default()
        };
        assert_eq!(ids(&rank(&models, &req, &near, &config)), ["b", "a"], "b reports {other:?}");
        assert_eq!(select(&models, &req, &near, &config).unwrap().model.id, "b");
    }
    // Above a fifth of headroom the limit does not matter.
    let comfortable = |id: &str| Signals { rate_limit_headroom: (id == "a").then_some(0.2), ..Signals::default() };
    assert_eq!(ids(&rank(&models, &req, &comfortable, &config)), ["a", "b"]);
}

#[test]
fn a_model_near_its_rate_limit_ranks_below_the_others_whatever_the_strategy() {
    // "a" is cheaper, faster, better and of higher priority: every strategy
    // puts it first, until its provider says it is near its limit.
    let mut a = model("a");
    a.quality = Some(0.99);
    a.typical_latency_ms = Some(10);
    a.priority = 100;
    let mut b = model("b");
    b.pricing = a.pricing.map(|p| Pricing {
        input_per_mtok: Money::from_nanos(p.input_per_mtok.nanos() * 10),
        output_per_mtok: Money::from_nanos(p.output_per_mtok.nanos() * 10),
        ..p
    });
    b.quality = Some(0.5);
    b.typical_latency_ms = Some(5_000);
    b.priority = 1;
    let models = [a, b];
    let req = Requirements::default();
    let near = |id: &str| Signals { rate_limit_headroom: (id == "a").then_some(0.1), ..Signals::default() };
    for strategy in [
        Strategy::WeightedScore,
        Strategy::Cheapest,
        Strategy::Fastest,
        Strategy::HighestQuality,
        Strategy::PriorityOrder,
        Strategy::WeightedRandom { seed: 3 },
    ] {
        let config = SelectorConfig { strategy, ..SelectorConfig::default() };
        assert_eq!(ids(&rank(&models, &req, &NoSignals, &config))[0], "a", "{strategy:?} without limits");
        assert_eq!(ids(&rank(&models, &req, &near, &config)), ["b", "a"], "{strategy:?} near the limit");
        assert_eq!(select(&models, &req, &near, &config).unwrap().model.id, "b", "{strategy:?}");
    }
}

#[test]
fn weighted_random_is_seeded_and_spreads_load() {
    let models: Vec<ModelSpec> = (0..5).map(|i| model(&format!("m{i}"))).collect();
    let req = Requirements::default();
    let order = |seed| {
        let config = SelectorConfig { strategy: Strategy::WeightedRandom { seed }, ..SelectorConfig::default() };
        ids(&rank(&models, &req, &NoSignals, &config)).into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(order(7), order(7));
    let heads: std::collections::HashSet<String> = (0..50).map(|seed| order(seed)[0].clone()).collect();
    assert!(heads.len() >= 3, "equal models should each lead sometimes, got {heads:?}");
}

#[test]
fn weighted_random_leads_with_each_model_in_proportion_to_its_score() {
    // Scores 1 and 0.25 (priority alone): over 200 seeds "big" should lead
    // about 4 times in 5 (a weighted sample: w / Σw).
    let mut big = model("big");
    big.priority = 100;
    let mut small = model("small");
    small.priority = 25;
    let models = [big, small];
    let weights = Weights::new(WeightValues { priority: 1.0, ..ZERO_WEIGHTS }).unwrap();
    let led = (0..200)
        .filter(|&seed| {
            let config = SelectorConfig { weights, strategy: Strategy::WeightedRandom { seed } };
            rank(&models, &Requirements::default(), &NoSignals, &config)[0].model.id == "big"
        })
        .count();
    assert!((140..=180).contains(&led), "big led {led} of 200");
}

#[test]
fn empty_and_impossible() {
    let none: [ModelSpec; 0] = [];
    let config = SelectorConfig::default();
    assert!(rank(&none, &Requirements::default(), &NoSignals, &config).is_empty());
    assert_eq!(select(&none, &Requirements::default(), &NoSignals, &config).unwrap_err(), Error::EmptyCatalog);

    let models = default_catalog().unwrap();
    let req = Requirements { prompt_tokens: 5_000_000, language: Some("tlh".into()), ..Requirements::default() };
    let err = select(&models, &req, &NoSignals, &config).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "none of the {} models satisfies the requirements; rejected by context_window ({}), language ({}), \
             capabilities ({})",
            models.len(),
            models.len(),
            models.len(),
            // The embedding models: a chat request never goes to one.
            models.iter().filter(|m| m.capabilities.embeddings).count()
        )
    );
}

#[test]
fn explanation_reads_well() {
    let mut big = model("big");
    big.context_window = Some(100_000);
    let models = [model("small"), big];
    let req = Requirements { prompt_tokens: 20_000, ..Requirements::default() };
    let text = explain(&models, &req, &NoSignals, &SelectorConfig::default()).to_string();
    // quality 0.5×3 + reliability 0.9×3 + language 0.5×1 + cost (1/(1+$0.02/$0.001))×2
    // + speed 0.5×1.5 + load 1×1 + category 0.5×1 + priority 0 = 7.045
    assert_eq!(
        text,
        "  1. big                      score 7.045\n       \
         quality 0.500×3 + reliability 0.900×3 + language 0.500×1 + cost 0.048×2\n       \
         + speed 0.500×1.5 + load 1.000×1 + category 0.500×1 + priority 0.000×0.5\n  \
         -  small                    rejected: context window 8000 < 20001 tokens needed\n"
    );
}

#[test]
fn explanation_shows_preference_and_the_rate_limit_factor() {
    let mut free = model("free");
    free.pricing = Some(Pricing::FREE);
    let models = [free, model("paid")];
    let req = Requirements { prefer_free: true, ..Requirements::default() };
    let near = |id: &str| Signals { rate_limit_headroom: (id == "paid").then_some(0.1), ..Signals::default() };
    let weights = Weights::new(WeightValues { speed: 2.25, ..WeightValues::default() }).unwrap();
    let config = SelectorConfig { weights, ..SelectorConfig::default() };
    let text = explain(&models, &req, &near, &config).to_string();
    // free: 1.5 + 2.7 + 0.5 + 1×2 + 0.5×2.25 + 1 + 0.5 = 9.325
    // paid: (1.5 + 2.7 + 0.5 + (1/3)×2 + 1.125 + 1 + 0.5) × 0.625 = 4.9948
    assert_eq!(
        text,
        "  1. free                     score 9.325 (preferred)\n       \
         quality 0.500×3 + reliability 0.900×3 + language 0.500×1 + cost 1.000×2\n       \
         + speed 0.500×2.25 + load 1.000×1 + category 0.500×1 + priority 0.000×0.5\n  \
         2. paid                     score 4.995\n       \
         quality 0.500×3 + reliability 0.900×3 + language 0.500×1 + cost 0.333×2\n       \
         + speed 0.500×2.25 + load 1.000×1 + category 0.500×1 + priority 0.000×0.5\n       \
         × rate limit 0.625\n"
    );
}

#[test]
fn duplicate_ids_count_once_in_every_input_shape() {
    // 40 models: beyond the linear scan; ids repeat, first occurrence wins.
    let mut models: Vec<ModelSpec> = (0..40).map(|i| model(&format!("m{:02}", i % 20))).collect();
    models[25].quality = Some(1.0); // a later duplicate of m05 that would win
    let ranked = rank(&models, &Requirements::default(), &NoSignals, &SelectorConfig::default());
    assert_eq!(ranked.len(), 20);
    let m05 = ranked.iter().find(|r| r.model.id == "m05").unwrap();
    assert_eq!(m05.model.quality, Some(0.5), "the first occurrence is kept");
    let why = explain(&models, &Requirements::default(), &NoSignals, &SelectorConfig::default());
    assert_eq!(why.rejected.iter().filter(|r| r.reasons == [Rejection::DuplicateId]).count(), 20);
    // Strictly ascending ids (a catalog snapshot) take the fast path, same answer.
    let mut sorted: Vec<ModelSpec> = models[..20].to_vec();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let fast = rank(&sorted, &Requirements::default(), &NoSignals, &SelectorConfig::default());
    assert_eq!(ids(&fast), ids(&ranked));
    // Sorted but not strictly ascending: adjacent duplicates are no fast path.
    let mut second = model("a");
    second.quality = Some(1.0);
    let sorted_twice = [model("a"), second, model("b")];
    let ranked = rank(&sorted_twice, &Requirements::default(), &NoSignals, &SelectorConfig::default());
    assert_eq!(ids(&ranked), ["a", "b"]);
    assert_eq!(ranked[0].model.quality, Some(0.5), "the first occurrence is kept");
    let same = [model("a"), model("a")];
    assert_eq!(rank(&same, &Requirements::default(), &NoSignals, &SelectorConfig::default()).len(), 1);
}

#[test]
fn requirements_no_model_can_be_judged_against_are_refused() {
    let check = |req: Requirements| req.check().map_err(|e| e.to_string());
    let cost = |nanos| Requirements { max_cost: Some(Money::from_nanos(nanos)), ..Requirements::default() };
    let quality = |q| Requirements { min_quality: Some(q), ..Requirements::default() };
    assert_eq!(check(Requirements::default()), Ok(()));
    assert_eq!(check(cost(0)), Ok(()), "a zero max_cost is met by free models");
    assert_eq!(check(cost(-1)), Err("max_cost must be >= 0, got $-0.000000001".into()));
    assert_eq!(check(quality(0.0)), Ok(()));
    assert_eq!(check(quality(0.5)), Ok(()));
    assert_eq!(check(quality(1.0)), Ok(()));
    assert_eq!(check(quality(1.01)), Err("min_quality must be from 0 to 1, got 1.01".into()));
    assert_eq!(check(quality(-0.01)), Err("min_quality must be from 0 to 1, got -0.01".into()));
    assert_eq!(check(quality(f64::NAN)), Err("min_quality must be from 0 to 1, got NaN".into()));
}
