//! Properties of the selector (seed 000's and the rules'): rankings are
//! sorted, unique and deterministic, `select` is the head of `rank`, and
//! every ranked model passes every constraint while every rejected one fails
//! each constraint it is rejected by.

use std::collections::HashMap;

use modelfleet_registry::{Category, ModelSpec, Money, Pricing};
use proptest::{
    prelude::{Just, ProptestConfig, any, prop_assert, prop_assert_eq, prop_oneof, proptest},
    strategy::Strategy as Gen,
};

use crate::{tests::ids, *};

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
