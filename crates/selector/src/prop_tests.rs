//! Properties of the selector: rankings are sorted, unique and deterministic,
//! `select` is the head of `rank`, and the hard constraints are exactly the
//! documented rules (the table in the crate docs).
//!
//! The generators draw models and requirements from the same small pools
//! (windows, prompts and output caps that add up exactly, shared quality,
//! latency and memory values, cost limits and budget rooms pinned to a
//! model's worst case, models put exactly at the request's limits) so that
//! every rule of the filter is reached, often right at its boundary; a
//! deterministic run counts that they are
//! ([`the_generators_reach_every_rule_alone_and_at_its_limit`]). Rankings
//! are checked under weights drawn from 0 to the maximum as well as the
//! defaults. [`failures`] is an oracle written from the rules as
//! documented, not from the filter's code: every ranked model fails none of
//! them, every rejected model is rejected by exactly the constraints it
//! fails, each reason shows what the model and the request really have, and
//! `select`'s error counts them. The one function the oracle shares with the
//! filter, [`worst_case_cost`], is itself held to its documented definition.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    fmt::Debug,
    ops::RangeInclusive,
    ptr,
};

use modelfleet_registry::{Capabilities, Capability, Category, ModelSpec, ModelStatus, Money, Pricing};
use proptest::{
    prelude::{Just, ProptestConfig, any, prop_assert, prop_assert_eq, prop_oneof, proptest},
    sample::Index,
    strategy::{Strategy as Gen, ValueTree},
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};

use crate::*;

/// How many ids there are: few enough that repeats are common.
const IDS: u8 = 16;
const PROVIDERS: [&str; 4] = ["openai", "anthropic", "ollama", "mistral"];
/// The statuses other than active, two of which serve.
const OTHER_STATUSES: [ModelStatus; 4] =
    [ModelStatus::Deprecated, ModelStatus::Experimental, ModelStatus::Inactive, ModelStatus::Maintenance];
/// Languages as models list them and as requests ask for them: the case
/// differs on purpose (the match ignores ASCII case).
const MODEL_LANGUAGES: [&str; 5] = ["en", "fr", "de", "ja", "EN"];
const ASKED_LANGUAGES: [&str; 5] = ["en", "fr", "de", "ja", "Fr"];
const CATEGORIES: [Category; 4] = [Category::General, Category::Code, Category::Translation, Category::Reasoning];
const CAPABILITIES: [Capability; 5] =
    [Capability::Streaming, Capability::Tools, Capability::JsonMode, Capability::Vision, Capability::Embeddings];

/// Vector lengths of embedding models and of requests, few so they meet.
const DIMENSIONS: [u32; 2] = [768, 1_536];
/// Context windows, and prompts and output caps many of whose sums land
/// exactly on one (500 + 500, 900 + 100, 1,000 + 1,000, 1,500 + 500, …).
const WINDOWS: [u32; 5] = [500, 1_000, 1_500, 2_000, 4_000];
const PROMPTS: [u32; 5] = [0, 100, 500, 900, 1_000];
/// A request's output cap (0: none) and a model's output limit share values.
const OUTPUT_CAPS: [u32; 4] = [0, 100, 500, 1_000];
const OUTPUT_LIMITS: [u32; 4] = [100, 500, 1_000, 2_000];
const QUALITIES: [f64; 4] = [0.25, 0.5, 0.75, 0.9];
const LATENCIES_MS: [u32; 4] = [100, 500, 1_000, 2_000];
/// Live latencies no monitor should report: all but -0 are unusable, and
/// the typical latency counts instead.
const ODD_LATENCIES_MS: [f64; 5] = [f64::NAN, -1.0, -0.0, f64::INFINITY, f64::NEG_INFINITY];
const ODD_HEADROOMS: [f64; 4] = [0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
const MEMORIES_MB: [u64; 4] = [1_024, 4_096, 8_192, 16_384];
/// Prices per million tokens in nano-dollars: free, $1, $2, $15.
const PRICES: [i64; 4] = [0, 1_000_000_000, 2_000_000_000, 15_000_000_000];
/// Cost limits and budget rooms in nano-dollars (a room of -1: overspent).
const MONEY: [i64; 5] = [0, 1_000_000, 2_000_000, 5_000_000, 50_000_000];
const ROOMS: [i64; 6] = [-1, 0, 1_000_000, 2_000_000, 5_000_000, 50_000_000];
const BUDGET: &str = "global monthly";
/// Signals drawn per case, dealt round the models.
const SIGNALS: usize = 8;
/// Rolls drawn per case for [`sit_at_limits`], dealt round the models.
const AT_LIMITS: usize = 8;

// Every case draws hundreds of values, and in a debug build a weighted
// `prop_oneof!` or `option::weighted` costs ten times a `select` and a
// roll, so the generators roll dice and pick from pools instead.

/// One value of `pool`.
fn pick<T: Clone + Debug + 'static>(pool: &'static [T]) -> impl Gen<Value = T> {
    proptest::sample::select(pool)
}

/// `value` in `tenths` cases out of ten, else `None` (shrinking to `None`).
fn chance<T: Debug>(tenths: u8, value: impl Gen<Value = T>) -> impl Gen<Value = Option<T>> {
    (0u8..10, value).prop_map(move |(roll, value)| (roll >= 10 - tenths).then_some(value))
}

/// Mostly a quality from the pool models and requests share, else any.
fn arb_quality() -> impl Gen<Value = f64> {
    (0u8..4, pick(&QUALITIES), 0.0f64..=1.0).prop_map(|(roll, pooled, any)| if roll < 3 { pooled } else { any })
}

fn arb_pricing() -> impl Gen<Value = Option<Pricing>> {
    let money = || pick(&PRICES).prop_map(Money::from_nanos);
    (0u8..5, money(), money(), chance(2, money()), chance(2, money()), chance(2, money())).prop_map(
        |(kind, input_per_mtok, output_per_mtok, cached_input_per_mtok, cache_write_per_mtok, reasoning_per_mtok)| {
            match kind {
                0 => None,
                1 => Some(Pricing::FREE),
                _ => Some(Pricing {
                    input_per_mtok,
                    output_per_mtok,
                    cached_input_per_mtok,
                    cache_write_per_mtok,
                    reasoning_per_mtok,
                }),
            }
        },
    )
}

fn arb_model() -> impl Gen<Value = ModelSpec> {
    let switches = (0u8..IDS, pick(&PROVIDERS), 0u8..13, chance(1, pick(&OTHER_STATUSES)), 0u8..=100);
    let skills = (
        proptest::sample::subsequence(CATEGORIES.to_vec(), 0..=2),
        chance(5, pick(&MODEL_LANGUAGES)),
        proptest::sample::subsequence(MODEL_LANGUAGES.to_vec(), 0..=2),
        any::<[bool; 4]>(),
        (0u8..3, chance(6, pick(&DIMENSIONS))),
    );
    let sizes = (
        chance(9, pick(&WINDOWS)),
        chance(7, pick(&OUTPUT_LIMITS)),
        arb_pricing(),
        any::<bool>(),
        chance(8, pick(&MEMORIES_MB)),
        chance(9, arb_quality()),
        chance(9, pick(&LATENCIES_MS)),
    );
    (switches, skills, sizes).prop_map(|(switches, skills, sizes)| {
        let (id, provider, off, status, priority) = switches;
        let (categories, primary, languages, [streaming, tools, json_mode, vision], (embed, dimensions)) = skills;
        let (window, output_limit, pricing, local, memory_mb, quality, latency) = sizes;
        let mut m = ModelSpec::new(format!("m{id:02}"), provider);
        m.enabled = off > 0;
        m.status = status.unwrap_or(ModelStatus::Active);
        m.priority = priority;
        m.categories = categories;
        m.primary_language = primary.map(String::from);
        m.languages = languages.into_iter().map(String::from).collect();
        // One model in three embeds, most of them saying their vectors' length.
        let embeddings = embed == 0;
        m.capabilities = Capabilities { streaming, tools, json_mode, vision, embeddings };
        m.embedding_dimensions = dimensions.filter(|_| embeddings);
        m.context_window = window;
        m.max_output_tokens = output_limit;
        m.pricing = pricing;
        m.local = local;
        m.memory_mb = memory_mb;
        m.quality = quality;
        m.typical_latency_ms = latency;
        m
    })
}

/// Models as a caller may pass them: in any order with repeated ids, sorted
/// with repeats, or a catalog snapshot (strictly ascending ids); now and
/// then more than the selector scans linearly for repeats.
fn arb_models() -> impl Gen<Value = Vec<ModelSpec>> {
    let models = prop_oneof![
        12 => proptest::collection::vec(arb_model(), 0..12),
        1 => proptest::collection::vec(arb_model(), 33..40),
    ];
    (models, 0u8..3).prop_map(|(mut models, shape)| {
        if shape > 0 {
            models.sort_by(|a, b| a.id.cmp(&b.id));
        }
        if shape > 1 {
            models.dedup_by(|a, b| a.id == b.id);
        }
        models
    })
}

/// Now and then, `len` of the providers.
fn arb_providers(len: RangeInclusive<usize>) -> impl Gen<Value = Vec<String>> {
    let some = proptest::sample::subsequence(PROVIDERS.to_vec(), len)
        .prop_map(|providers| providers.into_iter().map(String::from).collect());
    chance(1, some).prop_map(Option::unwrap_or_default)
}

fn arb_requirements() -> impl Gen<Value = Requirements> {
    const LOCALITIES: [Option<Locality>; 7] =
        [None, None, None, None, Some(Locality::Any), Some(Locality::LocalOnly), Some(Locality::CloudOnly)];
    let work = (
        chance(2, pick(&CATEGORIES)),
        chance(2, pick(&ASKED_LANGUAGES).prop_map(String::from)),
        pick(&PROMPTS),
        pick(&OUTPUT_CAPS),
        0u32..=3,
        chance(1, proptest::collection::vec(pick(&CAPABILITIES), 1..=2)).prop_map(Option::unwrap_or_default),
        0u8..3,
    );
    let limits = (
        chance(2, pick(&MONEY).prop_map(Money::from_nanos)),
        chance(2, arb_quality()),
        chance(2, pick(&LATENCIES_MS)),
        chance(3, pick(&MEMORIES_MB)),
        chance(8, pick(&DIMENSIONS)),
    );
    let place = (arb_providers(1..=3), arb_providers(1..=1), pick(&LOCALITIES), any::<bool>(), any::<bool>(), 0u8..10);
    (work, limits, place).prop_map(|(work, limits, place)| {
        let (category, language, prompt_tokens, max_output_tokens, n, mut capabilities, embed) = work;
        // One request in three is for embeddings, and asks for that alone,
        // as the gateway sends it; a vector length is asked only then.
        let embeddings = embed == 0 || capabilities.contains(&Capability::Embeddings);
        if embeddings {
            capabilities = vec![Capability::Embeddings];
        }
        let (max_cost, min_quality, max_latency_ms, available_memory_mb, embedding_dimensions) = limits;
        let embedding_dimensions = embedding_dimensions.filter(|_| embeddings);
        let (providers, exclude_providers, locality, prefer_free, prefer_local, unmeasured) = place;
        Requirements {
            category,
            language,
            prompt_tokens,
            // One request in ten cannot be measured.
            unmeasured: unmeasured == 0,
            max_output_tokens,
            n,
            capabilities,
            embedding_dimensions,
            max_cost,
            min_quality,
            max_latency_ms,
            providers,
            exclude_providers,
            locality,
            prefer_free,
            prefer_local,
            available_memory_mb,
        }
    })
}

/// Signals for one model: a live latency sometimes measured on no samples,
/// sometimes not a usable number (the typical latency then counts).
fn arb_signal() -> impl Gen<Value = Signals> {
    let latency =
        (0u8..8, pick(&LATENCIES_MS), 0.0f64..3_000.0, pick(&ODD_LATENCIES_MS)).prop_map(|(roll, pooled, any, odd)| {
            match roll {
                0..4 => f64::from(pooled),
                4 | 5 => any,
                _ => odd,
            }
        });
    let headroom = (0u8..4, -0.5f64..1.5, pick(&ODD_HEADROOMS)).prop_map(|(roll, any, odd)| match roll {
        0 => None,
        1 => Some(odd),
        _ => Some(any),
    });
    let samples = (0u8..3, 1u64..1_000).prop_map(|(roll, samples)| if roll == 0 { 0 } else { samples });
    (samples, 0.0f64..=1.0, chance(8, latency), chance(5, 0.0f64..30_000.0), 0u32..50, headroom).prop_map(
        |(samples, success_rate, latency_ms, latency_p95_ms, in_flight, rate_limit_headroom)| Signals {
            samples,
            success_rate,
            latency_ms,
            latency_p95_ms,
            in_flight,
            rate_limit_headroom,
        },
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

/// Score weights: 0 (twice as likely), small, the defaults' largest and the
/// maximum.
const WEIGHTS: [f64; 6] = [0.0, 0.0, 0.001, 0.5, 3.0, 1_000.0];

/// The default weights in a quarter of the cases, one term's weight alone
/// in another, else every weight from [`WEIGHTS`]; all of them 0 (refused)
/// is drawn again.
fn arb_weights() -> impl Gen<Value = Weights> {
    (0u8..4, 0usize..8, proptest::array::uniform::<_, 8>(pick(&WEIGHTS))).prop_filter_map(
        "every weight 0",
        |(shape, alone, mut w)| {
            match shape {
                0 => return Some(Weights::default()),
                1 => (0..8).filter(|&i| i != alone).for_each(|i| w[i] = 0.0),
                _ => {}
            }
            let [quality, reliability, language, cost, speed, load, category, priority] = w;
            Weights::new(WeightValues { quality, reliability, language, cost, speed, load, category, priority }).ok()
        },
    )
}

/// Live signals per model id, and the room left in the one hard budget that
/// would pay for any model.
#[derive(Debug, Clone, Default)]
struct Live {
    signals: HashMap<String, Signals>,
    room: Option<Money>,
}

impl LiveSignals for Live {
    fn signals(&self, id: &str) -> Signals {
        self.signals.get(id).copied().unwrap_or_default()
    }

    fn budget_room(&self, _: &ModelSpec) -> Option<BudgetRoom<'_>> {
        self.room.map(|remaining| BudgetRoom { budget: BUDGET, remaining })
    }
}

/// One selection: the models, the request, what is live, the order and
/// the weights.
#[derive(Debug, Clone)]
struct Case {
    models: Vec<ModelSpec>,
    req: Requirements,
    live: Live,
    strategy: Strategy,
    weights: Weights,
}

impl Case {
    fn config(&self) -> SelectorConfig {
        SelectorConfig { strategy: self.strategy, weights: self.weights }
    }

    /// The oracle's verdict on `model` in this case.
    fn failures(&self, model: &ModelSpec) -> BTreeSet<&'static str> {
        failures(model, &self.req, &self.live.signals(&model.id), self.live.budget_room(model))
    }

    /// The position of `model` in the input (which occurrence of its id).
    fn index_of(&self, model: &ModelSpec) -> usize {
        self.models.iter().position(|m| ptr::eq(m, model)).unwrap()
    }

    /// Each id's first occurrence, with its position: the models judged.
    fn firsts(&self) -> Vec<(usize, &ModelSpec)> {
        let mut seen = HashSet::new();
        self.models.iter().enumerate().filter(|(_, m)| seen.insert(m.id.as_str())).collect()
    }
}

/// A worst case less a nano-dollar, exactly (half the time), or plus one.
const SHIFTS: [i64; 4] = [-1, 0, 0, 1];

/// A case whose cost limit or budget room is, half the time, the worst case
/// of one of its models ([`Case::worst_case_of_one`]) give or take
/// a nano-dollar, and whose models now and then sit exactly at (or one unit
/// past) its other limits: the boundaries the pools rarely hit by
/// themselves. [`the_generators_reach_every_rule_alone_and_at_its_limit`]
/// counts how often a model passes right at each of them.
fn arb_case() -> impl Gen<Value = Case> {
    (
        arb_models(),
        arb_requirements(),
        proptest::collection::vec(chance(7, arb_signal()), SIGNALS),
        chance(2, pick(&ROOMS).prop_map(Money::from_nanos)),
        arb_strategy(),
        (any::<Index>(), 0u8..3, 0u8..4, any::<[u16; AT_LIMITS]>()),
    )
        .prop_map(|(mut models, req, signals, room, strategy, (index, pin, shift, at_limits))| {
            for (m, &at_limit) in models.iter_mut().zip(at_limits.iter().cycle()) {
                sit_at_limits(m, &req, at_limit);
            }
            // Each id gets the signals dealt to its first occurrence, if any.
            let mut live = HashMap::new();
            for (m, dealt) in models.iter().zip(signals.iter().cycle()) {
                live.entry(m.id.clone()).or_insert(*dealt);
            }
            let signals = live.into_iter().filter_map(|(id, dealt)| Some((id, dealt?))).collect();
            let mut case = Case { models, req, live: Live { signals, room }, strategy, weights: Weights::default() };
            match pin {
                0 => case.req.max_cost = case.worst_case_of_one(index, shift, |case| case.req.max_cost = None),
                1 => case.live.room = case.worst_case_of_one(index, shift, |case| case.live.room = None),
                _ => {}
            }
            case
        })
}

impl Case {
    /// The worst case of one of the models, give or take a nano-dollar
    /// ([`SHIFTS`]): of one that fails no rule once `lift` has lifted the
    /// limit being pinned, and has a price, when there is one, so that a
    /// limit pinned exactly at its worst case is passed right at the limit.
    fn worst_case_of_one(&self, index: Index, shift: u8, lift: impl Fn(&mut Case)) -> Option<Money> {
        let mut lifted = self.clone();
        lift(&mut lifted);
        let worsts: Vec<(Money, bool)> = self
            .firsts()
            .into_iter()
            .filter_map(|(_, m)| Some((worst_case_cost(m, &self.req)?, lifted.failures(m).is_empty())))
            .collect();
        let rank = |&(worst, clean): &(Money, bool)| (clean, worst > Money::ZERO);
        let best = worsts.iter().map(rank).max()?;
        let targets: Vec<Money> = worsts.iter().filter(|w| rank(w) == best).map(|&(worst, _)| worst).collect();
        Some(Money::from_nanos(index.get(&targets).nanos() + SHIFTS[usize::from(shift)]))
    }
}

/// A case of [`arb_case`] with weights of [`arb_weights`].
fn arb_weighted_case() -> impl Gen<Value = Case> {
    (arb_case(), arb_weights()).prop_map(|(case, weights)| Case { weights, ..case })
}

/// Puts `model` right at the request's limits as `roll` says, two bits a
/// limit. For the minimum quality and the latency limit: 3, exactly at the
/// limit; 2, one unit past it (the float just below the minimum, a
/// millisecond more), each in a quarter of the models. For the memory free
/// (which binds local models only): 2 or 3, exactly at it; 1, a megabyte
/// more. For the context needed: 3, a window of exactly that (the pools
/// already land a window a token short, prompt + 1 with no output cap).
/// For the language asked: 3, the model speaks it, the case swapped.
fn sit_at_limits(model: &mut ModelSpec, req: &Requirements, roll: u16) {
    let at = |limit: u16| (roll >> (2 * limit)) & 3;
    match (at(0), req.min_quality) {
        (3, Some(min)) => model.quality = Some(min),
        (2, Some(min)) => model.quality = Some(min.next_down()),
        _ => {}
    }
    match (at(1), req.max_latency_ms) {
        (3, Some(max)) => model.typical_latency_ms = Some(max),
        (2, Some(max)) => model.typical_latency_ms = Some(max + 1),
        _ => {}
    }
    if let (3, Ok(needed @ 1..)) = (at(2), u32::try_from(needed_context(req))) {
        model.context_window = Some(needed);
    }
    match (at(3), req.available_memory_mb) {
        (2 | 3, Some(free)) => model.memory_mb = Some(free),
        (1, Some(free)) => model.memory_mb = Some(free + 1),
        _ => {}
    }
    if let (3, Some(wanted)) = (at(4), &req.language) {
        let swapped = wanted
            .chars()
            .map(|c| if c.is_ascii_lowercase() { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() });
        model.languages.push(swapped.collect());
    }
}

/// The latency a model is judged by: the live one when measured (samples,
/// a finite value, not negative), else its typical latency.
fn judged_latency(model: &ModelSpec, live: &Signals) -> Option<f64> {
    let measured = live.latency_ms.filter(|ms| live.samples > 0 && ms.is_finite() && *ms >= 0.0);
    measured.or(model.typical_latency_ms.map(f64::from))
}

/// The context a request needs, as the crate docs' table has it: none when
/// it gives no sizes, else prompt + `max_tokens`, or prompt + 1 without
/// `max_tokens` (an answer needs a token).
/// An embeddings request needs none (its inputs are checked one by one,
/// by the provider).
fn needed_context(req: &Requirements) -> u64 {
    if (req.prompt_tokens == 0 && req.max_output_tokens == 0) || req.capabilities.contains(&Capability::Embeddings) {
        return 0;
    }
    u64::from(req.prompt_tokens) + u64::from(req.max_output_tokens.max(1))
}

/// The oracle: the constraints (as [`Rejection::constraint`] names them)
/// that `model` fails, from the documented rules. Unknown never passes a
/// constraint; a value exactly at a limit passes.
fn failures(
    model: &ModelSpec,
    req: &Requirements,
    live: &Signals,
    room: Option<BudgetRoom<'_>>,
) -> BTreeSet<&'static str> {
    let servable = matches!(model.status, ModelStatus::Active | ModelStatus::Deprecated | ModelStatus::Experimental);
    let needed = needed_context(req);
    // The one documented cost bound, shared by `max_cost` and the budget.
    let worst = worst_case_cost(model, req);
    let latency = judged_latency(model, live);
    let rules = [
        ("status", !model.enabled || !servable),
        (
            "providers",
            (!req.providers.is_empty() && !req.providers.contains(&model.provider))
                || req.exclude_providers.contains(&model.provider),
        ),
        (
            "locality",
            match req.locality {
                Some(Locality::LocalOnly) => !model.local,
                Some(Locality::CloudOnly) => model.local,
                Some(Locality::Any) | None => false,
            },
        ),
        (
            "category",
            req.category
                .is_some_and(|c| !model.categories.contains(&c) && !model.categories.contains(&Category::General)),
        ),
        (
            "language",
            req.language.as_ref().is_some_and(|wanted| {
                !model.primary_language.iter().chain(&model.languages).any(|l| l.eq_ignore_ascii_case(wanted))
            }),
        ),
        ("context_window", needed > 0 && model.context_window.is_none_or(|w| u64::from(w) < needed)),
        (
            "max_output_tokens",
            req.max_output_tokens > 0 && model.max_output_tokens.is_some_and(|limit| limit < req.max_output_tokens),
        ),
        (
            "capabilities",
            req.capabilities.iter().any(|&c| !model.capabilities.has(c))
                || (model.capabilities.embeddings && !req.capabilities.contains(&Capability::Embeddings)),
        ),
        (
            "embedding_dimensions",
            req.embedding_dimensions.is_some_and(|wanted| model.embedding_dimensions != Some(wanted)),
        ),
        ("max_cost", req.max_cost.is_some_and(|max| worst.is_none_or(|w| w > max))),
        ("budget", room.is_some_and(|room| worst.is_none_or(|w| !w.is_zero() && w > room.remaining))),
        ("min_quality", req.min_quality.is_some_and(|min| model.quality.is_none_or(|q| q < min))),
        ("max_latency_ms", req.max_latency_ms.is_some_and(|max| latency.is_none_or(|l| l > f64::from(max)))),
        (
            "available_memory_mb",
            model.local && req.available_memory_mb.is_some_and(|free| model.memory_mb.is_none_or(|m| m > free)),
        ),
    ];
    rules.into_iter().filter(|&(_, failed)| failed).map(|(constraint, _)| constraint).collect()
}

/// The constraints `reasons` name.
fn named(reasons: &[Rejection]) -> BTreeSet<&'static str> {
    reasons.iter().map(Rejection::constraint).collect()
}

/// The worst case as documented: `n` answers (at least one), each bounded
/// by the least of the request's cap (when set), the model's output limit
/// and what its window leaves after the prompt; their cost with the prompt
/// at the model's prices, nothing for a free model (or a local one without
/// prices), unbounded for a cloud model without prices or unbounded output.
fn documented_worst_case(model: &ModelSpec, req: &Requirements) -> (Option<u64>, Option<Money>) {
    let prompt = u64::from(req.prompt_tokens);
    let bounds = [
        (req.max_output_tokens > 0).then_some(u64::from(req.max_output_tokens)),
        model.max_output_tokens.map(u64::from),
        model.context_window.map(|w| u64::from(w).saturating_sub(prompt)),
    ];
    let output = if model.capabilities.embeddings {
        // Vectors: no output tokens.
        Some(0)
    } else {
        bounds.into_iter().flatten().min().map(|each| each * u64::from(req.n.max(1)))
    };
    let price = match (model.pricing, model.local) {
        (Some(price), _) => price,
        (None, true) => Pricing::FREE,
        (None, false) => return (output, None),
    };
    // The docs' rule: every prompt token at the dearest input-side rate,
    // every output token at the dearest output-side one.
    let dearest = |rates: &[Option<Money>]| rates.iter().flatten().copied().max().unwrap_or(Money::ZERO);
    let input = dearest(&[Some(price.input_per_mtok), price.cached_input_per_mtok, price.cache_write_per_mtok]);
    let output_rate = dearest(&[Some(price.output_per_mtok), price.reasoning_per_mtok]);
    let free = input.is_zero() && output_rate.is_zero();
    let cost = if free {
        Some(Money::ZERO)
    } else if req.unmeasured {
        None
    } else {
        output.map(|output| Pricing::new(input, output_rate).cost(prompt, 0, output))
    };
    (output, cost)
}

/// Whether `reason`, given for `model` (the first of its id or not), tells
/// the truth: it is the variant the rule documents for this failure, and
/// what it shows is what the model and the request have.
fn truthful(reason: &Rejection, case: &Case, model: &ModelSpec, first: bool) -> bool {
    let req = &case.req;
    let worst = worst_case_cost(model, req);
    let latency = judged_latency(model, &case.live.signals(&model.id));
    let room = case.live.room;
    match reason {
        Rejection::DuplicateId => !first,
        Rejection::Disabled => !model.enabled,
        Rejection::Status { status } => {
            *status == model.status && matches!(status, ModelStatus::Inactive | ModelStatus::Maintenance)
        }
        Rejection::Category { wanted } => req.category == Some(*wanted),
        Rejection::Language { wanted } => req.language.as_ref() == Some(wanted),
        Rejection::ContextUnknown { needed } => model.context_window.is_none() && *needed == needed_context(req),
        Rejection::ContextTooSmall { needed, window } => {
            model.context_window == Some(*window) && *needed == needed_context(req) && u64::from(*window) < *needed
        }
        Rejection::OutputTooLong { needed, limit } => {
            *needed == req.max_output_tokens && Some(*limit) == model.max_output_tokens && *limit < *needed
        }
        Rejection::Capability { missing } => req.capabilities.contains(missing) && !model.capabilities.has(*missing),
        Rejection::EmbeddingModel => {
            model.capabilities.embeddings && !req.capabilities.contains(&Capability::Embeddings)
        }
        Rejection::EmbeddingDimensions { wanted, dimensions } => {
            req.embedding_dimensions == Some(*wanted)
                && *dimensions == model.embedding_dimensions
                && *dimensions != Some(*wanted)
        }
        Rejection::PriceUnknown => req.max_cost.is_some() && model.price().is_none(),
        Rejection::OutputUnbounded => {
            req.max_cost.is_some() && model.price().is_some() && worst.is_none() && !req.unmeasured
        }
        Rejection::Unmeasured => req.max_cost.is_some() && model.price().is_some() && worst.is_none() && req.unmeasured,
        Rejection::TooExpensive { estimate, max } => {
            worst == Some(*estimate) && req.max_cost == Some(*max) && estimate > max
        }
        Rejection::OverBudget { budget, remaining, worst_case } => {
            budget == BUDGET
                && room == Some(*remaining)
                && worst == Some(*worst_case)
                && !worst_case.is_zero()
                && worst_case > remaining
        }
        Rejection::Unbounded { budget } => budget == BUDGET && room.is_some() && worst.is_none(),
        Rejection::QualityUnknown => req.min_quality.is_some() && model.quality.is_none(),
        Rejection::QualityTooLow { quality, min } => {
            model.quality == Some(*quality) && req.min_quality == Some(*min) && quality < min
        }
        Rejection::LatencyUnknown => req.max_latency_ms.is_some() && latency.is_none(),
        Rejection::TooSlow { latency_ms, max_ms } => {
            latency == Some(*latency_ms) && req.max_latency_ms == Some(*max_ms) && *latency_ms > f64::from(*max_ms)
        }
        Rejection::ProviderNotAllowed { provider } => {
            *provider == model.provider && !req.providers.is_empty() && !req.providers.contains(provider)
        }
        Rejection::ProviderExcluded { provider } => {
            *provider == model.provider && req.exclude_providers.contains(provider)
        }
        Rejection::NotLocal => req.locality == Some(Locality::LocalOnly) && !model.local,
        Rejection::NotCloud => req.locality == Some(Locality::CloudOnly) && model.local,
        Rejection::MemoryUnknown => model.local && req.available_memory_mb.is_some() && model.memory_mb.is_none(),
        Rejection::NotEnoughMemory { needed_mb, available_mb } => {
            model.local
                && model.memory_mb == Some(*needed_mb)
                && req.available_memory_mb == Some(*available_mb)
                && needed_mb > available_mb
        }
    }
}

/// The rules of the crate docs' table, by the names [`failures`] gives them.
const RULES: [&str; 14] = [
    "status",
    "providers",
    "locality",
    "category",
    "language",
    "context_window",
    "max_output_tokens",
    "capabilities",
    "embedding_dimensions",
    "max_cost",
    "budget",
    "min_quality",
    "max_latency_ms",
    "available_memory_mb",
];

/// The rules whose edge `model`, failing none of them, sits on. A rule with
/// a limit: exactly at it (a window of exactly the context needed, an
/// output limit of exactly `max_tokens`, a worst case of exactly `max_cost`
/// or of exactly the room left, above 0 since a free model fits any room,
/// a quality of exactly `min_quality`, a judged latency of exactly
/// `max_latency_ms`, a local model needing exactly the memory free). A rule
/// without one: in force and met (a servable status other than active, a
/// provider list, a locality, a category, a language or capabilities asked).
fn edges(case: &Case, model: &ModelSpec) -> BTreeSet<&'static str> {
    let req = &case.req;
    let worst = worst_case_cost(model, req);
    let needed = needed_context(req);
    let latency = judged_latency(model, &case.live.signals(&model.id));
    let edges = [
        ("status", matches!(model.status, ModelStatus::Deprecated | ModelStatus::Experimental)),
        ("providers", !req.providers.is_empty() || !req.exclude_providers.is_empty()),
        ("locality", matches!(req.locality, Some(Locality::LocalOnly | Locality::CloudOnly))),
        ("category", req.category.is_some()),
        ("language", req.language.is_some()),
        ("context_window", needed > 0 && model.context_window.map(u64::from) == Some(needed)),
        ("max_output_tokens", req.max_output_tokens > 0 && model.max_output_tokens == Some(req.max_output_tokens)),
        ("capabilities", !req.capabilities.is_empty()),
        ("embedding_dimensions", req.embedding_dimensions.is_some()),
        ("max_cost", req.max_cost.is_some() && worst == req.max_cost),
        ("budget", case.live.room.is_some_and(|room| room > Money::ZERO && worst == Some(room))),
        ("min_quality", req.min_quality.is_some() && model.quality == req.min_quality),
        ("max_latency_ms", req.max_latency_ms.is_some_and(|max| latency == Some(f64::from(max)))),
        (
            "available_memory_mb",
            model.local && req.available_memory_mb.is_some() && model.memory_mb == req.available_memory_mb,
        ),
    ];
    edges.into_iter().filter(|&(_, at)| at).map(|(rule, _)| rule).collect()
}

/// The generators reach every rule, so the properties cannot go vacuous
/// unnoticed: over 1,024 cases of [`arb_case`] from a fixed seed, enough
/// models fail each rule alone (a verdict on that rule is then all that
/// rejects them) and enough pass every rule right at its edge ([`edges`]:
/// where an off-by-one would show).
#[test]
fn the_generators_reach_every_rule_alone_and_at_its_limit() {
    // What this seed gives (proptest 1.12), over 1,024 cases:
    //
    // | rule                 | fails alone | passes at its edge |
    // |----------------------|-------------|--------------------|
    // | status               |          71 |                 23 |
    // | providers            |          44 |                 49 |
    // | locality             |          73 |                 88 |
    // | category             |          73 |                 35 |
    // | language             |          48 |                 49 |
    // | context_window       |         124 |                141 |
    // | max_output_tokens    |          73 |                 64 |
    // | capabilities         |         345 |                 86 |
    // | embedding_dimensions |         119 |                 39 |
    // | max_cost             |          97 |                 70 |
    // | budget               |          66 |                 40 |
    // | min_quality          |          50 |                 28 |
    // | max_latency_ms       |          47 |                 17 |
    // | available_memory_mb  |          29 |                 47 |
    const AT_LEAST: usize = 10;
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let cases = arb_case();
    let mut alone: BTreeMap<&str, usize> = BTreeMap::new();
    let mut at_edge: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..1024 {
        let case = cases.new_tree(&mut runner).expect("arb_case rejects nothing").current();
        for (_, model) in case.firsts() {
            let failed = case.failures(model);
            let (counts, rules) = match failed.len() {
                0 => (&mut at_edge, edges(&case, model)),
                1 => (&mut alone, failed),
                _ => continue,
            };
            for rule in rules {
                *counts.entry(rule).or_default() += 1;
            }
        }
    }
    assert!(alone.keys().all(|rule| RULES.contains(rule)), "a rule missing from RULES: {alone:?}");
    let count = |counts: &BTreeMap<&str, usize>, rule| counts.get(rule).copied().unwrap_or(0);
    let thin: Vec<(&str, usize, usize)> = RULES
        .into_iter()
        .map(|rule| (rule, count(&alone, rule), count(&at_edge, rule)))
        .filter(|&(_, alone, at_edge)| alone < AT_LEAST || at_edge < AT_LEAST)
        .collect();
    assert!(thin.is_empty(), "rules the generators barely reach (rule, fails alone, passes at its edge): {thin:?}");
}

/// The strategy's sort key of `r` (higher first), as documented, where the
/// public view shows it: `None` for the weighted random order.
fn key(strategy: Strategy, req: &Requirements, r: &Ranked<'_>) -> Option<f64> {
    match strategy {
        Strategy::WeightedScore => Some(r.score.total),
        Strategy::Cheapest => {
            // Priced on the request's tokens, or on 1,000 prompt and 500
            // output tokens when it gives none; unknown price last.
            let (prompt, output) = match (req.prompt_tokens, req.max_output_tokens) {
                (0, 0) => (1_000, 500),
                sizes => sizes,
            };
            Some(r.model.price().map_or(f64::NEG_INFINITY, |p| {
                -(p.input_per_mtok.nanos() as f64 * f64::from(prompt)
                    + p.output_per_mtok.nanos() as f64 * f64::from(output))
            }))
        }
        Strategy::Fastest => Some(r.latency_ms.map_or(f64::NEG_INFINITY, |ms| -ms)),
        Strategy::HighestQuality => Some(r.model.quality.unwrap_or(f64::NEG_INFINITY)),
        Strategy::PriorityOrder => Some(f64::from(r.model.priority)),
        Strategy::WeightedRandom { .. } => None,
    }
}

/// Whether `a` may rank right above `b`: preferred models first, then those
/// with rate-limit room, then (where known) the strategy's key, the score
/// and the id.
fn in_order(strategy: Strategy, req: &Requirements, a: &Ranked<'_>, b: &Ranked<'_>) -> bool {
    let group = |r: &Ranked<'_>| (r.preferred, r.score.rate_limit >= 1.0);
    match group(a).cmp(&group(b)) {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => match (key(strategy, req, a), key(strategy, req, b)) {
            (Some(ka), Some(kb)) => kb
                .total_cmp(&ka)
                .then_with(|| b.score.total.total_cmp(&a.score.total))
                .then_with(|| a.model.id.cmp(&b.model.id))
                .is_lt(),
            _ => true,
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn rankings_are_sorted_unique_and_deterministic(case in arb_weighted_case()) {
        let before = (case.models.clone(), case.req.clone());
        let ranked = rank(&case.models, &case.req, &case.live, &case.config());
        prop_assert_eq!(&(case.models.clone(), case.req.clone()), &before, "inputs unchanged");
        for pair in ranked.windows(2) {
            prop_assert!(in_order(case.strategy, &case.req, &pair[0], &pair[1]), "{} above {}", pair[0].model.id, pair[1].model.id);
        }
        let unique: HashSet<&str> = ranked.iter().map(|r| r.model.id.as_str()).collect();
        prop_assert_eq!(unique.len(), ranked.len(), "no duplicates");
        prop_assert_eq!(&rank(&case.models, &case.req, &case.live, &case.config()), &ranked, "deterministic");
        for r in &ranked {
            prop_assert!(r.score.total.is_finite() && r.score.total >= 0.0, "{:?}", r.score);
            // The total is the documented weighted sum of the terms shown.
            let sum: f64 = case.weights.values().named().iter().zip(r.score.terms()).map(|((_, w), (_, t))| w * t).sum();
            let total = r.score.rate_limit * sum;
            prop_assert!((r.score.total - total).abs() <= 1e-9 * total.max(1.0), "{:?}: total {}", r.score, total);
        }
    }

    #[test]
    fn ranked_are_exactly_the_models_passing_every_rule(case in arb_case()) {
        let ranked = rank(&case.models, &case.req, &case.live, &case.config());
        for r in &ranked {
            let failed = case.failures(r.model);
            prop_assert!(failed.is_empty(), "{} ranked, fails {:?}", r.model.id, failed);
        }
        let mut got: Vec<usize> = ranked.iter().map(|r| case.index_of(r.model)).collect();
        got.sort_unstable();
        let passing: Vec<usize> =
            case.firsts().into_iter().filter(|(_, m)| case.failures(m).is_empty()).map(|(i, _)| i).collect();
        prop_assert_eq!(got, passing, "the first occurrence of every passing id, and no other");
    }

    #[test]
    fn explain_names_exactly_the_rules_each_rejected_model_fails(case in arb_case()) {
        let why = explain(&case.models, &case.req, &case.live, &case.config());
        prop_assert_eq!(&why.ranked, &rank(&case.models, &case.req, &case.live, &case.config()));
        let firsts: HashSet<usize> = case.firsts().into_iter().map(|(i, _)| i).collect();
        let expected: Vec<(usize, &str, BTreeSet<&str>)> = case
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let failed = if firsts.contains(&i) { case.failures(m) } else { BTreeSet::from(["duplicate_id"]) };
                (i, m.id.as_str(), failed)
            })
            .filter(|(.., failed)| !failed.is_empty())
            .collect();
        let got: Vec<(usize, &str, BTreeSet<&str>)> = why
            .rejected
            .iter()
            .map(|r| (case.index_of(r.model), r.model.id.as_str(), named(&r.reasons)))
            .collect();
        prop_assert_eq!(got, expected, "rejected in input order, each by exactly the rules it fails");
        for r in why.rejected.iter().filter(|r| r.reasons.contains(&Rejection::DuplicateId)) {
            prop_assert_eq!(&r.reasons, &vec![Rejection::DuplicateId]);
        }
    }

    #[test]
    fn select_is_the_head_of_rank_or_counts_the_rules_failed(case in arb_weighted_case()) {
        let ranked = rank(&case.models, &case.req, &case.live, &case.config());
        match select(&case.models, &case.req, &case.live, &case.config()) {
            Ok(best) => prop_assert_eq!(Some(&best), ranked.first()),
            Err(Error::EmptyCatalog) => prop_assert!(case.models.is_empty()),
            Err(Error::NoMatch { models, rejected_by }) => {
                prop_assert!(ranked.is_empty(), "no match, yet {} ranked", ranked.len());
                prop_assert_eq!(models, case.models.len());
                let firsts = case.firsts();
                let mut expected: BTreeMap<&str, usize> = BTreeMap::new();
                for failed in firsts.iter().flat_map(|(_, m)| case.failures(m)) {
                    *expected.entry(failed).or_default() += 1;
                }
                if case.models.len() > firsts.len() {
                    expected.insert("duplicate_id", case.models.len() - firsts.len());
                }
                prop_assert!(rejected_by.windows(2).all(|w| w[0].1 >= w[1].1), "most first: {:?}", rejected_by);
                let got: BTreeMap<&str, usize> = rejected_by.iter().copied().collect();
                prop_assert_eq!(got.len(), rejected_by.len(), "each constraint once: {:?}", rejected_by);
                prop_assert_eq!(got, expected);
            }
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }

    #[test]
    fn every_reason_tells_the_truth(case in arb_case()) {
        let why = explain(&case.models, &case.req, &case.live, &case.config());
        let firsts: HashSet<usize> = case.firsts().into_iter().map(|(i, _)| i).collect();
        for rejected in &why.rejected {
            let (model, first) = (rejected.model, firsts.contains(&case.index_of(rejected.model)));
            for reason in &rejected.reasons {
                prop_assert!(truthful(reason, &case, model, first), "{}: {:?}", model.id, reason);
            }
            // Every capability missing is named, not only the first.
            let named: BTreeSet<Capability> = rejected
                .reasons
                .iter()
                .filter_map(|r| match r {
                    Rejection::Capability { missing } => Some(*missing),
                    _ => None,
                })
                .collect();
            let missing: BTreeSet<Capability> = if first {
                case.req.capabilities.iter().copied().filter(|&c| !model.capabilities.has(c)).collect()
            } else {
                BTreeSet::new()
            };
            prop_assert_eq!(named, missing, "{}", model.id);
        }
    }

    #[test]
    fn the_worst_case_is_the_documented_bound(case in arb_case()) {
        for model in &case.models {
            let (output, cost) = documented_worst_case(model, &case.req);
            prop_assert_eq!(worst_case_output(model, &case.req), output, "{}", model.id);
            prop_assert_eq!(worst_case_cost(model, &case.req), cost, "{}", model.id);
        }
    }

    #[test]
    fn ranked_costs_and_latencies_are_the_ones_judged(case in arb_case()) {
        let req = &case.req;
        for r in rank(&case.models, req, &case.live, &case.config()) {
            let worst = worst_case_cost(r.model, req);
            prop_assert_eq!(r.worst_case_cost, worst);
            let output = if r.model.capabilities.embeddings { 0 } else { req.max_output_tokens.into() };
            let typical = r.model.price().map(|p| p.cost(req.prompt_tokens.into(), 0, output));
            prop_assert_eq!(r.estimated_cost, typical);
            if let Some(max) = req.max_cost {
                prop_assert!(worst.is_some_and(|w| w <= max), "{}: worst {:?} > max {}", r.model.id, worst, max);
            }
            if let Some(room) = case.live.room {
                prop_assert!(worst.is_some_and(|w| w.is_zero() || w <= room), "{}: worst {:?} > room {}", r.model.id, worst, room);
            }
            if let (Some(typical), Some(worst)) = (typical, worst) {
                prop_assert!(typical <= worst, "{}: typical {} > worst case {}", r.model.id, typical, worst);
            }
            prop_assert_eq!(r.latency_ms, judged_latency(r.model, &case.live.signals(&r.model.id)));
            if let Some(max) = req.max_latency_ms {
                prop_assert!(r.latency_ms.is_some_and(|ms| ms <= f64::from(max)));
            }
        }
    }

    #[test]
    fn filtering_is_consistent_with_explain(case in arb_case()) {
        let why = explain(&case.models, &case.req, &case.live, &case.config());
        // Every distinct id is either ranked or rejected, never both.
        let ranked: HashSet<&str> = why.ranked.iter().map(|r| r.model.id.as_str()).collect();
        for rejected in &why.rejected {
            prop_assert!(!rejected.reasons.is_empty());
            if rejected.reasons != [Rejection::DuplicateId] {
                prop_assert!(!ranked.contains(rejected.model.id.as_str()));
            }
        }
        prop_assert_eq!(why.ranked.len() + why.rejected.len(), case.models.len());
    }

    #[test]
    fn free_and_local_preferences_are_respected(
        models in arb_models(),
        prefer_free in any::<bool>(),
        prefer_local in any::<bool>(),
    ) {
        let req = Requirements { prefer_free, prefer_local, ..Requirements::default() };
        let ranked = rank(&models, &req, &NoSignals, &SelectorConfig::default());
        let matches = |m: &ModelSpec| {
            (prefer_free && m.price().is_some_and(|p| p.is_free())) || (prefer_local && m.local)
        };
        for r in &ranked {
            prop_assert_eq!(r.preferred, matches(r.model), "{}", r.model.id);
        }
        if let Some(first_unpreferred) = ranked.iter().position(|r| !matches(r.model)) {
            prop_assert!(ranked[first_unpreferred..].iter().all(|r| !matches(r.model)),
                "a preferred model ranks below an unpreferred one");
        }
    }
}
