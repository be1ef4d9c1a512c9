//! Tests of the catalog, the specs and the default catalog.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use proptest::prelude::*;

use super::*;

fn spec(id: &str) -> ModelSpec {
    let mut spec = ModelSpec::new(id, "openai");
    spec.context_window = Some(8192);
    spec.quality = Some(0.5);
    spec
}

fn ticking_catalog() -> Catalog {
    let now = Arc::new(AtomicU64::new(1_000));
    Catalog::with_clock(move || now.fetch_add(1, Ordering::SeqCst))
}

#[test]
fn default_catalog_holds_the_seed_models_with_their_prices() {
    let models = default_catalog().unwrap();
    let catalog = Catalog::from_models(models).unwrap();
    assert!(catalog.snapshot().len() >= 9);
    let table = [
        ("claude-3-haiku", "anthropic", "0.25", "1.25", Some(200_000), false),
        ("mistral-small", "mistral", "0.2", "0.6", Some(32_000), false),
        ("deepseek-chat", "deepseek", "0.27", "1.1", Some(64_000), false),
        ("ollama-llama2", "ollama", "0", "0", Some(4_096), true),
        ("ollama-mistral", "ollama", "0", "0", Some(32_768), true),
    ];
    for (id, provider, input, output, window, local) in table {
        let model = catalog.get(id).unwrap_or_else(|| panic!("{id} missing"));
        assert_eq!(model.provider, provider, "{id}");
        let price = model.price().unwrap_or_else(|| panic!("{id} has no known price"));
        assert_eq!(price.input_per_mtok.to_string(), input, "{id}");
        assert_eq!(price.output_per_mtok.to_string(), output, "{id}");
        assert_eq!(model.context_window, window, "{id}");
        assert_eq!(model.local, local, "{id}");
        assert_eq!(price.is_free(), local, "{id}: local models are free");
        if local {
            assert!(model.memory_mb.is_some(), "{id}: local models state their memory");
        }
    }
}

#[test]
fn every_problem_is_named_by_field() {
    let mut bad = ModelSpec::new("has space", "");
    bad.quality = Some(1.5);
    bad.context_window = Some(100);
    bad.max_output_tokens = Some(200);
    bad.pricing = Some(Pricing { input_per_mtok: Money::from_nanos(-1), ..Pricing::FREE });
    bad.sampling.temperature = Some(f64::NAN);
    bad.priority = 101;
    let fields: Vec<&str> = bad.problems().iter().map(|p| p.field).collect();
    assert_eq!(
        fields,
        vec![
            "id",
            "provider",
            "pricing.input_per_mtok",
            "max_output_tokens",
            "quality",
            "priority",
            "sampling.temperature"
        ]
    );
    let err = Catalog::new().add(bad).unwrap_err();
    assert!(
        err.to_string().starts_with(
            r#"model "has space" is invalid: id: "has space" must not contain whitespace; provider: must not be empty"#
        ),
        "{err}"
    );
    assert!(ModelSpec::new("", "x").problems().iter().any(|p| p.field == "id" && p.message == "must not be empty"));
}

#[test]
fn crud_with_versions_and_timestamps() {
    let catalog = ticking_catalog();
    assert_eq!(catalog.version(), 0);
    assert!(catalog.snapshot().is_empty());
    assert_eq!(catalog.add(spec("b")).unwrap(), 1);
    assert_eq!(catalog.add(spec("a")).unwrap(), 2);
    assert_eq!(catalog.list().iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["a", "b"], "sorted by id");
    let added = catalog.get("a").unwrap();
    assert_eq!((added.created_at_ms, added.updated_at_ms), (1_001, 1_001));

    let v =
        catalog.update("a", ModelUpdate { priority: Some(9), quality: Some(0.9), ..ModelUpdate::default() }).unwrap();
    assert_eq!(v, 3);
    let updated = catalog.get("a").unwrap();
    assert_eq!((updated.priority, updated.quality), (9, Some(0.9)));
    assert_eq!((updated.created_at_ms, updated.updated_at_ms), (1_001, 1_002), "created stays, updated moves");
    assert_eq!(updated.provider, "openai");

    assert_eq!(catalog.remove("b").unwrap(), 4);
    assert!(catalog.get("b").is_none());
    assert_eq!(catalog.remove("b").unwrap_err(), Error::NotFound("b".into()));
    assert_eq!(catalog.version(), 4, "a failed write does not bump the version");
}

#[test]
fn duplicates_are_refused_everywhere() {
    let catalog = Catalog::new();
    catalog.add(spec("x")).unwrap();
    assert_eq!(catalog.add(spec("x")).unwrap_err(), Error::Duplicate("x".into()));
    assert_eq!(catalog.replace(vec![spec("y"), spec("y")]).unwrap_err(), Error::Duplicate("y".into()));
    assert_eq!(catalog.snapshot().len(), 1, "a refused replace changes nothing");
}

#[test]
fn an_invalid_update_changes_nothing() {
    let catalog = Catalog::new();
    catalog.add(spec("x")).unwrap();
    let err = catalog.update("x", ModelUpdate { quality: Some(-0.1), ..ModelUpdate::default() }).unwrap_err();
    assert!(matches!(&err, Error::Invalid { problems, .. } if problems[0].field == "quality"), "{err}");
    assert_eq!(catalog.get("x").unwrap().quality, Some(0.5));
    assert_eq!(catalog.version(), 1);
    assert_eq!(catalog.update("nope", ModelUpdate::default()).unwrap_err(), Error::NotFound("nope".into()));
}

#[test]
fn replace_reports_every_invalid_model() {
    let mut a = spec("a");
    a.quality = Some(2.0);
    let b = ModelSpec::new("b", " ");
    let err = Catalog::new().replace(vec![a, b, spec("c")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"the catalog is invalid: model "a": quality: 2 is outside 0..=1; model "b": provider: must not be empty"#
    );
}

#[test]
fn subscribers_see_every_change_in_order() {
    let catalog = Catalog::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    catalog.subscribe(move |change| sink.lock().unwrap().push(change.clone()));
    catalog.add(spec("a")).unwrap();
    catalog.update("a", ModelUpdate { enabled: Some(false), ..ModelUpdate::default() }).unwrap();
    let _ = catalog.add(spec("a"));
    catalog.remove("a").unwrap();
    catalog.replace(vec![spec("z")]).unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(
        *seen,
        vec![
            Change { version: 1, kind: ChangeKind::Added("a".into()) },
            Change { version: 2, kind: ChangeKind::Updated("a".into()) },
            Change { version: 3, kind: ChangeKind::Removed("a".into()) },
            Change { version: 4, kind: ChangeKind::Replaced },
        ]
    );
}

#[test]
fn readers_see_consistent_snapshots_while_writers_write() {
    let catalog = Arc::new(Catalog::new());
    let writer = {
        let catalog = Arc::clone(&catalog);
        std::thread::spawn(move || {
            for i in 0..500 {
                catalog.add(spec(&format!("m{i:04}"))).unwrap();
            }
        })
    };
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let catalog = Arc::clone(&catalog);
            std::thread::spawn(move || {
                let mut last = 0;
                for _ in 0..2_000 {
                    let snap = catalog.snapshot();
                    // Each add bumps the version by one: a snapshot at version v holds v models.
                    assert_eq!(snap.len() as u64, snap.version());
                    assert!(snap.version() >= last, "versions never go back");
                    assert!(snap.models().windows(2).all(|w| w[0].id < w[1].id));
                    last = snap.version();
                }
            })
        })
        .collect();
    writer.join().unwrap();
    for reader in readers {
        reader.join().unwrap();
    }
    assert_eq!(catalog.snapshot().len(), 500);
}

#[test]
fn catalog_files_report_line_and_unknown_fields() {
    let err = parse_catalog("[[models]]\nid = \"x\"\nprovider = \"p\"\ncontext_windw = 5\n").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("line 4"), "{text}");
    assert!(text.contains("unknown field `context_windw`"), "{text}");
    let err = parse_catalog(
        "[[models]]\nid = \"x\"\nprovider = \"p\"\npricing = { input_per_mtok = \"cheap\", output_per_mtok = 1 }\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("invalid amount \"cheap\""), "{err}");
    assert_eq!(parse_catalog("").unwrap(), Vec::new());
}

#[test]
fn unknown_prices_stay_unknown_except_for_local_models() {
    let mut cloud = ModelSpec::new("cloud", "openai");
    assert_eq!(cloud.price(), None, "a cloud model with no pricing is not free");
    cloud.local = true;
    assert_eq!(cloud.price(), Some(Pricing::FREE));
}

#[test]
fn pricing_cost_prices_cached_tokens_apart() {
    let pricing = Pricing {
        input_per_mtok: "2.50".parse().unwrap(),
        output_per_mtok: "10".parse().unwrap(),
        cached_input_per_mtok: Some("1.25".parse().unwrap()),
        cache_write_per_mtok: None,
        reasoning_per_mtok: None,
    };
    // 1,000 prompt tokens of which 400 cached, 200 completion tokens.
    assert_eq!(pricing.cost(1_000, 400, 200).to_string(), "0.004");
    assert_eq!(pricing.cost(10, 50, 0), pricing.cost(10, 10, 0), "cached is capped at the prompt");
    assert!(Pricing::FREE.is_free());
    assert!(Pricing::FREE.cost(1_000_000, 0, 1_000_000).is_zero());
}

#[test]
fn cost_of_prices_every_kind_of_token_once_at_its_own_rate() {
    let money = |s: &str| s.parse::<Money>().unwrap();
    let pricing = Pricing {
        input_per_mtok: money("3"),
        output_per_mtok: money("15"),
        cached_input_per_mtok: Some(money("0.30")),
        cache_write_per_mtok: Some(money("3.75")),
        reasoning_per_mtok: Some(money("20")),
    };
    // 10,000 prompt tokens: 6,000 read from cache, 2,000 written to it, 2,000
    // plain; 1,000 output tokens of which 400 reasoning.
    let usage = Usage {
        input_tokens: 10_000,
        output_tokens: 1_000,
        cached_tokens: 6_000,
        cache_write_tokens: 2_000,
        reasoning_tokens: 400,
    };
    // 2,000×3 + 6,000×0.30 + 2,000×3.75 + 600×15 + 400×20, per million.
    assert_eq!(pricing.cost_of(&usage).to_string(), "0.0323");
    // Split rates left unset are their side's plain rate.
    let plain = Pricing::new(money("3"), money("15"));
    assert_eq!(plain.cost_of(&usage), plain.cost(10_000, 0, 1_000));
    // Without splits, cost_of is cost.
    assert_eq!(pricing.cost_of(&Usage::new(10_000, 1_000)), pricing.cost(10_000, 0, 1_000));
    // An inconsistent report never makes a token free or counts one twice:
    // splits are clamped to their totals (cache reads first).
    let lying = Usage { cached_tokens: 9_000, cache_write_tokens: 5_000, reasoning_tokens: 5_000, ..usage };
    let clamped = Usage { cached_tokens: 9_000, cache_write_tokens: 1_000, reasoning_tokens: 1_000, ..usage };
    assert_eq!(pricing.cost_of(&lying), pricing.cost_of(&clamped));
}

proptest! {
    /// A hold priced by `worst_case` covers any split of the same totals,
    /// whichever split rate is dearest.
    #[test]
    fn worst_case_covers_every_split_of_the_usage(
        rates in proptest::array::uniform5(0i64..50_000_000_000),
        unset in proptest::array::uniform3(any::<bool>()),
        input in 0u64..2_000_000,
        output in 0u64..2_000_000,
        parts in proptest::array::uniform3(0u64..3_000_000),
    ) {
        let split = |i: usize| (!unset[i - 2]).then(|| Money::from_nanos(rates[i]));
        let pricing = Pricing {
            input_per_mtok: Money::from_nanos(rates[0]),
            output_per_mtok: Money::from_nanos(rates[1]),
            cached_input_per_mtok: split(2),
            cache_write_per_mtok: split(3),
            reasoning_per_mtok: split(4),
        };
        let usage = Usage {
            input_tokens: input,
            output_tokens: output,
            cached_tokens: parts[0],
            cache_write_tokens: parts[1],
            reasoning_tokens: parts[2],
        };
        prop_assert!(pricing.cost_of(&usage) <= pricing.worst_case(input, output));
        // And it is exact when every token is of the dearest kind.
        let all_written = Usage { cached_tokens: 0, cache_write_tokens: input, reasoning_tokens: output, ..usage };
        if pricing.cache_write_per_mtok.is_some_and(|w| w >= pricing.input_per_mtok
                && pricing.cached_input_per_mtok.is_none_or(|c| w >= c))
            && pricing.reasoning_per_mtok.is_some_and(|r| r >= pricing.output_per_mtok)
        {
            prop_assert_eq!(pricing.cost_of(&all_written), pricing.worst_case(input, output));
        }
    }
}

fn arb_spec() -> impl Strategy<Value = ModelSpec> {
    (
        "[a-z][a-z0-9.-]{0,20}",
        "[a-z]{1,10}",
        proptest::option::of(1u32..2_000_000),
        proptest::option::of(0.0f64..=1.0),
        0u8..=100,
        0i64..100_000_000_000,
        any::<bool>(),
        proptest::collection::vec(proptest::sample::select(Category::ALL.to_vec()), 0..4),
    )
        .prop_map(|(id, provider, window, quality, priority, price, local, categories)| {
            let mut spec = ModelSpec::new(id, provider);
            spec.context_window = window;
            spec.quality = quality;
            spec.priority = priority;
            spec.pricing = (price > 0).then(|| Pricing { input_per_mtok: Money::from_nanos(price), ..Pricing::FREE });
            spec.local = local;
            spec.categories = categories;
            spec
        })
}

proptest! {
    #[test]
    fn valid_specs_round_trip_through_json_and_the_catalog(spec in arb_spec()) {
        prop_assert!(spec.problems().is_empty(), "{:?}", spec.problems());
        let json = serde_json::to_string(&spec).unwrap();
        let back: ModelSpec = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&back, &spec);
        let catalog = Catalog::with_clock(|| 0);
        catalog.add(spec.clone()).unwrap();
        let stored = catalog.get(&spec.id);
        prop_assert_eq!(stored.as_deref(), Some(&spec));
    }
}

#[test]
fn category_indexes_follow_all() {
    for (i, category) in Category::ALL.into_iter().enumerate() {
        assert_eq!(category.index(), i, "{category}");
    }
}
