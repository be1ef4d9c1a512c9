//! Score terms, one test per term: moving one input moves that term alone,
//! by the size its formula gives, and the total by that times its weight.
//! Then the unknown rule, the weights, and snapshots of whole breakdowns of
//! the default catalog.

use std::{fmt::Write as _, slice};

use modelfleet_registry::{Category, ModelSpec, Pricing, default_catalog};

use crate::{
    tests::{ZERO_WEIGHTS, model, price},
    *,
};

/// `m`'s breakdown for `req` under `live`, default weights.
fn scored(m: &ModelSpec, req: &Requirements, live: Signals) -> Breakdown {
    let ranked = rank(slice::from_ref(m), req, &|_: &str| live, &SelectorConfig::default());
    assert_eq!(ranked.len(), 1, "{} should be eligible", m.id);
    ranked[0].score
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

/// From `before` to `after`, only `term` moved, from `from` to `to`, and
/// the total by the difference times the term's default weight.
#[track_caller]
fn check_moves(before: Breakdown, after: Breakdown, term: &str, from: f64, to: f64) {
    let weight = WeightValues::default().named().into_iter().find(|(name, _)| *name == term).map(|(_, w)| w);
    let weight = weight.unwrap_or_else(|| panic!("no term {term}"));
    for ((name, b), (_, a)) in before.terms().into_iter().zip(after.terms()) {
        if name == term {
            assert!(close(b, from), "{term} before: {b}, expected {from}");
            assert!(close(a, to), "{term} after: {a}, expected {to}");
        } else {
            assert!(close(a, b), "{name} moved from {b} to {a} when only {term} should");
        }
    }
    assert!(close(after.rate_limit, before.rate_limit), "the factor moved");
    let moved = (to - from) * weight * before.rate_limit;
    assert!(close(after.total - before.total, moved), "total moved {} not {moved}", after.total - before.total);
}

#[test]
fn quality_is_the_catalog_score_and_unknown_scores_zero() {
    let req = Requirements::default();
    let base = scored(&model("m"), &req, Signals::default());
    let mut better = model("m");
    better.quality = Some(0.8);
    check_moves(base, scored(&better, &req, Signals::default()), "quality", 0.5, 0.8);
    let mut unknown = model("m");
    unknown.quality = None;
    check_moves(base, scored(&unknown, &req, Signals::default()), "quality", 0.5, 0.0);
}

#[test]
fn reliability_is_the_success_rate_smoothed_toward_the_prior() {
    let req = Requirements::default();
    let m = model("m");
    let live = |samples, success_rate| Signals { samples, success_rate, ..Signals::default() };
    let base = scored(&m, &req, Signals::default());
    // (0.5 × 10 + 0.9 × 10) / 20
    check_moves(base, scored(&m, &req, live(10, 0.5)), "reliability", 0.9, 0.7);
    // (1 × 90 + 9) / 100
    check_moves(base, scored(&m, &req, live(90, 1.0)), "reliability", 0.9, 0.99);
    // (0 × 990 + 9) / 1000: the prior fades with evidence.
    check_moves(base, scored(&m, &req, live(990, 0.0)), "reliability", 0.9, 0.009);
    // A rate out of range counts as its nearest bound; with no samples the
    // rate is ignored.
    check_moves(base, scored(&m, &req, live(10, 7.0)), "reliability", 0.9, 0.95);
    check_moves(base, scored(&m, &req, live(0, 0.0)), "reliability", 0.9, 0.9);
}

#[test]
fn language_prefers_the_primary_one() {
    let mut m = model("m"); // primary en
    m.languages = vec!["en".into(), "fr".into()];
    let base = scored(&m, &Requirements::default(), Signals::default());
    let asking = |l: &str| Requirements { language: Some(l.into()), ..Requirements::default() };
    check_moves(base, scored(&m, &asking("en"), Signals::default()), "language", 0.5, 1.0);
    check_moves(base, scored(&m, &asking("EN"), Signals::default()), "language", 0.5, 1.0);
    check_moves(base, scored(&m, &asking("fr"), Signals::default()), "language", 0.5, 0.8);
}

#[test]
fn cost_halves_at_a_thousandth_of_a_dollar() {
    let sized =
        |prompt, output| Requirements { prompt_tokens: prompt, max_output_tokens: output, ..Requirements::default() };
    let m = model("m"); // $1 in, $2 out per million
    // 1,000 in + 500 out = $0.002: 1 / (1 + 2).
    let base = scored(&m, &sized(1_000, 500), Signals::default());
    let mut dearer = model("m");
    dearer.pricing = Some(price("2", "4")); // $0.004: 1 / 5
    check_moves(base, scored(&dearer, &sized(1_000, 500), Signals::default()), "cost", 1.0 / 3.0, 0.2);
    // 1,000 in alone = $0.001: 1 / 2.
    check_moves(base, scored(&m, &sized(1_000, 0), Signals::default()), "cost", 1.0 / 3.0, 0.5);
    let mut free = model("m");
    free.pricing = Some(Pricing::FREE);
    check_moves(base, scored(&free, &sized(1_000, 500), Signals::default()), "cost", 1.0 / 3.0, 1.0);
    let mut local = model("m");
    local.pricing = None;
    local.local = true;
    check_moves(base, scored(&local, &sized(1_000, 500), Signals::default()), "cost", 1.0 / 3.0, 1.0);
    let mut unpriced = model("m");
    unpriced.pricing = None;
    check_moves(base, scored(&unpriced, &sized(1_000, 500), Signals::default()), "cost", 1.0 / 3.0, 0.0);
}

#[test]
fn an_unsized_request_is_priced_as_the_reference_one() {
    // No prompt and no max_tokens: priced as 1,000 in and 500 out.
    let m = model("m");
    let reference = Requirements { prompt_tokens: 1_000, max_output_tokens: 500, ..Requirements::default() };
    let blank = scored(&m, &Requirements::default(), Signals::default());
    assert!(close(blank.cost, scored(&m, &reference, Signals::default()).cost));
    assert!(close(blank.cost, 1.0 / 3.0), "{blank:?}");
    // Sized on one side only, the request's own sizes count.
    let prompt_only = Requirements { prompt_tokens: 1_000, ..Requirements::default() };
    assert!(close(scored(&m, &prompt_only, Signals::default()).cost, 0.5));
    let output_only = Requirements { max_output_tokens: 500, ..Requirements::default() };
    assert!(close(scored(&m, &output_only, Signals::default()).cost, 0.5));
}

#[test]
fn speed_halves_at_a_second() {
    let req = Requirements::default();
    let base = scored(&model("m"), &req, Signals::default()); // typical 1,000 ms
    let mut slower = model("m");
    slower.typical_latency_ms = Some(3_000);
    check_moves(base, scored(&slower, &req, Signals::default()), "speed", 0.5, 0.25);
    let mut unknown = model("m");
    unknown.typical_latency_ms = None;
    check_moves(base, scored(&unknown, &req, Signals::default()), "speed", 0.5, 0.0);
    // A live latency replaces the typical one (and moves nothing else when
    // the success rate stays at the prior).
    let live = Signals { samples: 10, success_rate: 0.9, latency_ms: Some(0.0), ..Signals::default() };
    check_moves(base, scored(&model("m"), &req, live), "speed", 0.5, 1.0);
}

#[test]
fn load_is_the_wait_behind_the_requests_in_flight() {
    let req = Requirements::default();
    let busy = |in_flight| Signals { in_flight, ..Signals::default() };
    let m = model("m"); // typical 1,000 ms
    let base = scored(&m, &req, Signals::default());
    check_moves(base, scored(&m, &req, busy(1)), "load", 1.0, 0.5);
    check_moves(base, scored(&m, &req, busy(3)), "load", 1.0, 0.25);
    let mut unknown = model("m");
    unknown.typical_latency_ms = None;
    let idle = scored(&unknown, &req, Signals::default());
    assert!(close(idle.load, 1.0), "nothing in flight: no wait, whatever the latency");
    check_moves(idle, scored(&unknown, &req, busy(1)), "load", 1.0, 0.0);
}

#[test]
fn category_rewards_the_exact_one() {
    let mut coder = model("m");
    coder.categories = vec![Category::Code, Category::General];
    let base = scored(&coder, &Requirements::default(), Signals::default());
    let asking = |category| Requirements { category: Some(category), ..Requirements::default() };
    check_moves(base, scored(&coder, &asking(Category::Code), Signals::default()), "category", 0.5, 1.0);
    // A general model taking the category, or `general` asked: no bonus.
    check_moves(base, scored(&coder, &asking(Category::Translation), Signals::default()), "category", 0.5, 0.5);
    check_moves(base, scored(&coder, &asking(Category::General), Signals::default()), "category", 0.5, 0.5);
}

#[test]
fn priority_counts_its_hundredths() {
    let req = Requirements::default();
    let base = scored(&model("m"), &req, Signals::default());
    for (priority, term) in [(1, 0.01), (50, 0.5), (100, 1.0)] {
        let mut m = model("m");
        m.priority = priority;
        check_moves(base, scored(&m, &req, Signals::default()), "priority", 0.0, term);
    }
}

#[test]
fn the_total_is_the_weighted_sum_times_the_factor() {
    let mut m = model("m");
    m.priority = 30;
    m.categories = vec![Category::Code];
    let req = Requirements { category: Some(Category::Code), language: Some("en".into()), ..Requirements::default() };
    let live =
        Signals { samples: 10, success_rate: 0.7, in_flight: 2, rate_limit_headroom: Some(0.1), ..Signals::default() };
    let weights = WeightValues {
        quality: 1.0,
        reliability: 2.0,
        language: 3.0,
        cost: 4.0,
        speed: 5.0,
        load: 6.0,
        category: 7.0,
        priority: 8.0,
    };
    let config = SelectorConfig { weights: Weights::new(weights).unwrap(), ..SelectorConfig::default() };
    let b = rank(slice::from_ref(&m), &req, &|_: &str| live, &config)[0].score;
    // quality 0.5, reliability (7 + 9) / 20 = 0.8, language 1, cost 1/3,
    // speed 0.5, load 1 / (1 + 2) = 1/3, category 1, priority 0.3; factor
    // 0.25 + 0.75 × 0.5.
    let terms = [0.5, 0.8, 1.0, 1.0 / 3.0, 0.5, 1.0 / 3.0, 1.0, 0.3];
    for ((name, got), want) in b.terms().into_iter().zip(terms) {
        assert!(close(got, want), "{name}: {got} not {want}");
    }
    assert!(close(b.rate_limit, 0.625));
    let sum = 0.5 + 1.6 + 3.0 + 4.0 / 3.0 + 2.5 + 2.0 + 7.0 + 2.4;
    assert!(close(b.total, sum * 0.625), "{} not {}", b.total, sum * 0.625);
}

/// Sets a property: known (barely above the worst) or unknown.
type Set = fn(&mut ModelSpec, bool);

#[test]
fn an_unknown_property_never_outranks_a_known_one() {
    // Same model but for one property, unknown in "a" (which would win a
    // tie on its id) and known in "b", barely above the worst: "b" first.
    let req = Requirements::default();
    let config = SelectorConfig::default();
    let cases: [(&str, Set); 3] = [
        ("quality", |m, known| m.quality = known.then_some(0.01)),
        ("price", |m, known| m.pricing = known.then(|| price("1000000", "1000000"))),
        ("latency", |m, known| m.typical_latency_ms = known.then_some(u32::MAX)),
    ];
    for (property, set) in cases {
        let mut a = model("a");
        set(&mut a, false);
        let mut b = model("b");
        set(&mut b, true);
        let models = [a, b];
        let ranked = rank(&models, &req, &NoSignals, &config);
        let totals: Vec<f64> = ranked.iter().map(|r| r.score.total).collect();
        assert_eq!(crate::tests::ids(&ranked), ["b", "a"], "unknown {property}: {totals:?}");
    }
}

#[test]
fn weights_are_checked() {
    let check = |values: WeightValues| Weights::new(values).map(|w| w.values()).map_err(|e| e.to_string());
    let d = WeightValues::default();
    assert_eq!(check(d), Ok(d));
    assert_eq!(
        check(WeightValues { cost: -1.0, ..d }),
        Err("weight cost must be a number from 0 to 1000, got -1".into())
    );
    assert_eq!(
        check(WeightValues { speed: f64::NAN, ..d }),
        Err("weight speed must be a number from 0 to 1000, got NaN".into())
    );
    assert_eq!(
        check(WeightValues { load: f64::INFINITY, ..d }),
        Err("weight load must be a number from 0 to 1000, got inf".into())
    );
    assert_eq!(
        check(WeightValues { priority: 1_000.5, ..d }),
        Err("weight priority must be a number from 0 to 1000, got 1000.5".into())
    );
    let max = WeightValues { quality: 1e3, ..d };
    assert_eq!(check(max), Ok(max), "the largest weight is allowed");
    let zero = ZERO_WEIGHTS;
    assert_eq!(check(zero), Err("every score weight is 0: the weighted score could not tell models apart".into()));
    let one = WeightValues { priority: f64::MIN_POSITIVE, ..zero };
    assert_eq!(check(one), Ok(one), "one weight above 0 is enough");
    // Deserializing checks too.
    let parsed: Result<Weights, _> = serde_json::from_str(r#"{"quality": -2}"#);
    assert!(parsed.unwrap_err().to_string().contains("weight quality must be a number from 0 to 1000, got -2"));
    let parsed: Weights = serde_json::from_str(r#"{"cost": 7}"#).unwrap();
    assert_eq!(parsed.values(), WeightValues { cost: 7.0, ..d });
    assert_eq!(serde_json::to_value(parsed).unwrap()["cost"], 7.0);
}

#[test]
fn a_single_weight_ranks_by_its_term_alone() {
    let mut cheap = model("b");
    cheap.pricing = Some(price("0.1", "0.1"));
    cheap.quality = Some(0.1);
    let mut good = model("a");
    good.quality = Some(0.9);
    let models = [good, cheap];
    let req = Requirements::default();
    let zero = ZERO_WEIGHTS;
    let by = |values| {
        let config = SelectorConfig { weights: Weights::new(values).unwrap(), ..SelectorConfig::default() };
        crate::tests::ids(&rank(&models, &req, &NoSignals, &config)).join(",")
    };
    assert_eq!(by(WeightValues { quality: 1.0, ..zero }), "a,b");
    assert_eq!(by(WeightValues { cost: 1.0, ..zero }), "b,a");
}

/// The full breakdown of every eligible model of the default catalog for
/// `req`, one line each, best first.
fn breakdowns(req: &Requirements) -> String {
    let models = default_catalog().unwrap();
    let ranked = rank(&models, req, &NoSignals, &SelectorConfig::default());
    let mut out = String::from(
        "model                      quality reliab. lang.   cost    speed   load    categ.  prio.   factor  total\n",
    );
    for r in &ranked {
        let _ = write!(out, "{:<26}", r.model.id);
        for (_, term) in r.score.terms() {
            let _ = write!(out, " {term:<7.4}");
        }
        let _ = writeln!(out, " {:<7.4} {:.4}", r.score.rate_limit, r.score.total);
    }
    out
}

#[test]
fn default_catalog_breakdown_for_a_code_request() {
    let req = Requirements {
        category: Some(Category::Code),
        language: Some("en".into()),
        prompt_tokens: 2_000,
        max_output_tokens: 500,
        ..Requirements::default()
    };
    insta::assert_snapshot!(breakdowns(&req));
}

#[test]
fn default_catalog_breakdown_for_an_unsized_chat() {
    insta::assert_snapshot!(breakdowns(&Requirements::default()));
}

#[test]
fn default_catalog_breakdown_for_a_long_french_translation() {
    let req = Requirements {
        category: Some(Category::Translation),
        language: Some("fr".into()),
        prompt_tokens: 30_000,
        max_output_tokens: 4_000,
        min_quality: Some(0.7),
        ..Requirements::default()
    };
    insta::assert_snapshot!(breakdowns(&req));
}
