//! Selector tests: examples per constraint and strategy, and seed 000's properties.

use std::collections::HashMap;

use modelfleet_registry::{Capability, Category, ModelSpec, ModelStatus, Money, Pricing, default_catalog};
use proptest::{
    prelude::{Just, ProptestConfig, any, prop_assert, prop_assert_eq, prop_oneof, proptest},
    strategy::Strategy as Gen,
};

use super::*;

fn model(id: &str) -> ModelSpec {
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

fn price(input: &str, output: &str) -> Pricing {
    Pricing {
        input_per_mtok: input.parse().unwrap(),
        output_per_mtok: output.parse().unwrap(),
        cached_input_per_mtok: None,
    }
}

fn ids<'a>(ranked: &[Ranked<'a>]) -> Vec<&'a str> {
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
            "open: cost cannot be bounded (no price or no output limit) under hard budget global monthly",
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
            "none of the {} models satisfies the requirements; rejected by context_window ({}), language ({})",
            models.len(),
            models.len(),
            models.len()
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
        "  1. big                      score 7.045\n  -  small                    rejected: context window 8000 < 20000 tokens needed\n"
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
}

#[test]
fn invalid_weights_are_named() {
    let weights = Weights { cost: -1.0, ..Weights::default() };
    assert_eq!(weights.check().unwrap_err().to_string(), "weight cost must be a finite number >= 0, got -1");
    assert!(Weights::default().check().is_ok());
}

// ---- Seed 000's properties ----------------------------------------------

fn arb_model() -> impl Gen<Value = ModelSpec> {
    (
        "[a-e][0-9]?",
        proptest::sample::select(vec!["openai", "anthropic", "ollama"]),
        proptest::option::of(1_000u32..200_000),
        proptest::option::of(0.0f64..=1.0),
        proptest::option::of(0i64..20_000_000_000),
        any::<bool>(),
        proptest::option::of(50u32..5_000),
        0u8..=100,
        proptest::sample::subsequence(Category::ALL.to_vec(), 0..3),
    )
        .prop_map(|(id, provider, window, quality, price, local, latency, priority, categories)| {
            let mut m = ModelSpec::new(id, provider);
            m.context_window = window;
            m.max_output_tokens = window.map(|w| w / 4);
            m.quality = quality;
            m.pricing = price.map(|p| Pricing { input_per_mtok: Money::from_nanos(p), ..Pricing::FREE });
            m.local = local;
            m.memory_mb = local.then_some(4_096);
            m.typical_latency_ms = latency;
            m.priority = priority;
            m.categories = categories;
            m.languages = vec!["en".into()];
            m
        })
}

fn arb_requirements() -> impl Gen<Value = Requirements> {
    (
        proptest::option::of(proptest::sample::select(Category::ALL.to_vec())),
        0u32..100_000,
        proptest::option::of(0.0f64..1.0),
        proptest::option::of(0i64..1_000_000_000),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(category, prompt_tokens, min_quality, max_cost, prefer_free, prefer_local)| Requirements {
            category,
            prompt_tokens,
            min_quality,
            max_cost: max_cost.map(Money::from_nanos),
            prefer_free,
            prefer_local,
            ..Requirements::default()
        })
}

fn arb_signals() -> impl Gen<Value = HashMap<String, Signals>> {
    let headroom = proptest::option::of(prop_oneof![
        -0.5f64..1.5,
        Just(0.0),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY)
    ]);
    proptest::collection::hash_map(
        "[a-e][0-9]?",
        (
            0u64..1_000,
            0.0f64..=1.0,
            proptest::option::of(0.0f64..10_000.0),
            proptest::option::of(0.0f64..30_000.0),
            0u32..50,
            headroom,
        )
            .prop_map(|(samples, success_rate, latency_ms, latency_p95_ms, in_flight, rate_limit_headroom)| {
                Signals { samples, success_rate, latency_ms, latency_p95_ms, in_flight, rate_limit_headroom }
            }),
        0..6,
    )
}

fn arb_strategy() -> impl Gen<Value = Strategy> {
    prop_oneof![
        Just(Strategy::WeightedScore),
        Just(Strategy::Cheapest),
        Just(Strategy::Fastest),
        Just(Strategy::HighestQuality),
        Just(Strategy::PriorityOrder),
        any::<u64>().prop_map(|seed| Strategy::WeightedRandom { seed }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn rankings_are_sorted_unique_and_deterministic(
        models in proptest::collection::vec(arb_model(), 0..12),
        req in arb_requirements(),
        signals in arb_signals(),
        strategy in arb_strategy(),
    ) {
        let config = SelectorConfig { strategy, ..SelectorConfig::default() };
        let before = models.clone();
        let ranked = rank(&models, &req, &signals, &config);
        prop_assert_eq!(&models, &before, "inputs unchanged");
        // Sorted: preferred first, then the key/score order the comparator defines.
        for pair in ranked.windows(2) {
            prop_assert!(pair[0].preferred >= pair[1].preferred);
        }
        if matches!(strategy, Strategy::WeightedScore) {
            for pair in ranked.windows(2) {
                if pair[0].preferred == pair[1].preferred {
                    prop_assert!(pair[0].score.total >= pair[1].score.total);
                }
            }
        }
        let unique: std::collections::HashSet<&str> = ranked.iter().map(|r| r.model.id.as_str()).collect();
        prop_assert_eq!(unique.len(), ranked.len(), "no duplicates");
        let again = rank(&models, &req, &signals, &config);
        prop_assert_eq!(ids(&again), ids(&ranked), "deterministic");
        for r in &ranked {
            prop_assert!(r.score.total.is_finite() && r.score.total >= 0.0, "{:?}", r.score);
        }
    }

    #[test]
    fn select_is_the_head_of_rank(
        models in proptest::collection::vec(arb_model(), 0..12),
        req in arb_requirements(),
        signals in arb_signals(),
        strategy in arb_strategy(),
    ) {
        let config = SelectorConfig { strategy, ..SelectorConfig::default() };
        let ranked = rank(&models, &req, &signals, &config);
        match select(&models, &req, &signals, &config) {
            Ok(best) => prop_assert_eq!(Some(best.model.id.as_str()), ranked.first().map(|r| r.model.id.as_str())),
            Err(_) => prop_assert!(ranked.is_empty()),
        }
    }

    #[test]
    fn filtering_is_consistent_with_explain(
        models in proptest::collection::vec(arb_model(), 0..12),
        req in arb_requirements(),
    ) {
        let why = explain(&models, &req, &NoSignals, &SelectorConfig::default());
        // Every distinct id is either ranked or rejected, never both.
        let ranked: std::collections::HashSet<&str> = why.ranked.iter().map(|r| r.model.id.as_str()).collect();
        for rejected in &why.rejected {
            prop_assert!(!rejected.reasons.is_empty());
            if rejected.reasons != [Rejection::DuplicateId] {
                prop_assert!(!ranked.contains(rejected.model.id.as_str()));
            }
        }
        prop_assert_eq!(why.ranked.len() + why.rejected.len(), models.len());
        // Every ranked model meets the hard constraints.
        for r in &why.ranked {
            if let Some(min) = req.min_quality {
                prop_assert!(r.model.quality.is_some_and(|q| q >= min));
            }
            if let Some(max) = req.max_cost {
                prop_assert!(r.estimated_cost.is_some_and(|c| c <= max));
            }
            if req.min_context() > 0 {
                prop_assert!(r.model.context_window.is_some_and(|w| u64::from(w) >= req.min_context()));
            }
        }
    }

    #[test]
    fn free_and_local_preferences_are_respected(
        models in proptest::collection::vec(arb_model(), 1..12),
        prefer_free in any::<bool>(),
        prefer_local in any::<bool>(),
    ) {
        let req = Requirements { prefer_free, prefer_local, ..Requirements::default() };
        let ranked = rank(&models, &req, &NoSignals, &SelectorConfig::default());
        let matches = |m: &ModelSpec| {
            (prefer_free && m.price().is_some_and(|p| p.is_free())) || (prefer_local && m.local)
        };
        if let Some(first_unpreferred) = ranked.iter().position(|r| !matches(r.model)) {
            prop_assert!(ranked[first_unpreferred..].iter().all(|r| !matches(r.model)),
                "a preferred model ranks below an unpreferred one");
        }
    }
}
