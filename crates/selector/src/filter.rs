//! Hard constraints: which models may serve a request, and why not.

use std::{fmt, ops::ControlFlow};

use modelfleet_registry::{Capability, Category, ModelSpec, ModelStatus, Money};
use serde::Serialize;

use crate::{BudgetRoom, Locality, Requirements, Signals};

/// Why a model cannot serve a request. Each names the constraint and, where
/// it helps, what was needed and what the model has.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "constraint", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Rejection {
    /// Switched off.
    Disabled,
    /// Its status does not serve traffic.
    Status {
        /// The status.
        status: ModelStatus,
    },
    /// Another model with the same id came earlier in the input.
    DuplicateId,
    /// Neither the category nor `general`, or no categories known.
    Category {
        /// The category asked for.
        wanted: Category,
    },
    /// It does not speak the language (or no language is known).
    Language {
        /// The language asked for.
        wanted: String,
    },
    /// Its context window is unknown.
    ContextUnknown {
        /// Prompt plus output, in tokens.
        needed: u64,
    },
    /// Its context window is too small.
    ContextTooSmall {
        /// Prompt plus output, in tokens.
        needed: u64,
        /// Its window.
        window: u32,
    },
    /// Its output limit is below the request's `max_tokens` (a model that
    /// states no limit is bounded by its context window instead).
    OutputTooLong {
        /// The output tokens asked for.
        needed: u32,
        /// Its limit.
        limit: u32,
    },
    /// It lacks a capability.
    Capability {
        /// The capability missing.
        missing: Capability,
    },
    /// An embedding model, and the request is not for embeddings (a chat
    /// or completion request never goes to one).
    EmbeddingModel,
    /// Its vectors are not of the length asked for (or their length is unknown).
    EmbeddingDimensions {
        /// The length asked for.
        wanted: u32,
        /// Its vectors' length, when known.
        dimensions: Option<u32>,
    },
    /// Its price is unknown.
    PriceUnknown,
    /// Its output cannot be bounded: the request sets no `max_tokens` and
    /// the model states neither an output limit nor a context window.
    OutputUnbounded,
    /// The request's cost cannot be measured on a model that is not free
    /// ([`Requirements::unmeasured`]).
    Unmeasured,
    /// The worst-case cost is above the limit.
    TooExpensive {
        /// The request's worst-case cost on the model.
        estimate: Money,
        /// The limit.
        max: Money,
    },
    /// A hard budget that would pay for the request has less left than the
    /// request could cost on this model.
    OverBudget {
        /// The budget (scope and period, e.g. `global monthly`).
        budget: String,
        /// What is left of it (spent and held money taken off).
        remaining: Money,
        /// The request's worst-case cost on the model.
        worst_case: Money,
    },
    /// A hard budget would pay for the request, and the model's cost cannot
    /// be bounded (no price, or no output bound): it could pass the budget.
    Unbounded {
        /// The budget (scope and period).
        budget: String,
    },
    /// Its quality is unknown.
    QualityUnknown,
    /// Its quality is below the minimum.
    QualityTooLow {
        /// Its quality.
        quality: f64,
        /// The minimum.
        min: f64,
    },
    /// Its latency is unknown (not measured, no typical value).
    LatencyUnknown,
    /// Its latency is above the maximum.
    TooSlow {
        /// Its latency in ms (live when measured).
        latency_ms: f64,
        /// The maximum.
        max_ms: u32,
    },
    /// Its provider is not among those allowed.
    ProviderNotAllowed {
        /// Its provider.
        provider: String,
    },
    /// Its provider is excluded.
    ProviderExcluded {
        /// Its provider.
        provider: String,
    },
    /// A cloud model where only local ones may serve.
    NotLocal,
    /// A local model where only cloud ones may serve.
    NotCloud,
    /// A local model whose memory need is unknown.
    MemoryUnknown,
    /// A local model that needs more memory than is free.
    NotEnoughMemory {
        /// What it needs, MiB.
        needed_mb: u64,
        /// What is free, MiB.
        available_mb: u64,
    },
}

impl Rejection {
    /// The constraint's short name (`context_window`, `language`, …), for
    /// counting rejections by constraint.
    #[must_use]
    pub fn constraint(&self) -> &'static str {
        match self {
            Rejection::Disabled | Rejection::Status { .. } => "status",
            Rejection::DuplicateId => "duplicate_id",
            Rejection::Category { .. } => "category",
            Rejection::Language { .. } => "language",
            Rejection::ContextUnknown { .. } | Rejection::ContextTooSmall { .. } => "context_window",
            Rejection::OutputTooLong { .. } => "max_output_tokens",
            Rejection::Capability { .. } | Rejection::EmbeddingModel => "capabilities",
            Rejection::EmbeddingDimensions { .. } => "embedding_dimensions",
            Rejection::PriceUnknown
            | Rejection::OutputUnbounded
            | Rejection::Unmeasured
            | Rejection::TooExpensive { .. } => "max_cost",
            Rejection::OverBudget { .. } | Rejection::Unbounded { .. } => "budget",
            Rejection::QualityUnknown | Rejection::QualityTooLow { .. } => "min_quality",
            Rejection::LatencyUnknown | Rejection::TooSlow { .. } => "max_latency_ms",
            Rejection::ProviderNotAllowed { .. } | Rejection::ProviderExcluded { .. } => "providers",
            Rejection::NotLocal | Rejection::NotCloud => "locality",
            Rejection::MemoryUnknown | Rejection::NotEnoughMemory { .. } => "available_memory_mb",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Disabled => write!(f, "disabled"),
            Rejection::Status { status } => write!(f, "status is {}", status.as_str()),
            Rejection::DuplicateId => write!(f, "duplicate id (an earlier model has it)"),
            Rejection::Category { wanted: Category::General } => write!(f, "not a general model"),
            Rejection::Category { wanted } => write!(f, "not a {wanted} or general model"),
            Rejection::Language { wanted } => write!(f, "does not speak {wanted:?}"),
            Rejection::ContextUnknown { needed } => {
                write!(f, "context window unknown ({needed} tokens needed)")
            }
            Rejection::ContextTooSmall { needed, window } => {
                write!(f, "context window {window} < {needed} tokens needed")
            }
            Rejection::OutputTooLong { needed, limit } => write!(f, "output limit {limit} < {needed} tokens asked"),
            Rejection::Capability { missing } => write!(f, "no {missing} support"),
            Rejection::EmbeddingModel => write!(f, "an embedding model (it serves embeddings requests only)"),
            Rejection::EmbeddingDimensions { wanted, dimensions: None } => {
                write!(f, "embedding dimensions unknown ({wanted} wanted)")
            }
            Rejection::EmbeddingDimensions { wanted, dimensions: Some(d) } => {
                write!(f, "embeds in {d} dimensions, {wanted} wanted")
            }
            Rejection::PriceUnknown => write!(f, "price unknown"),
            Rejection::OutputUnbounded => {
                write!(f, "output unbounded (no max_tokens, no output limit, no context window)")
            }
            Rejection::Unmeasured => {
                write!(
                    f,
                    "the request's cost cannot be measured (a stored conversation, or a provider's built-in tools)"
                )
            }
            Rejection::TooExpensive { estimate, max } => write!(f, "worst-case cost ${estimate} > max ${max}"),
            Rejection::OverBudget { budget, remaining, worst_case } => {
                write!(f, "worst-case cost ${worst_case} > ${remaining} left in hard budget {budget}")
            }
            Rejection::Unbounded { budget } => {
                write!(
                    f,
                    "cost cannot be bounded (no price, no bound on the output, or a prompt the gateway cannot \
                     measure) under hard budget {budget}"
                )
            }
            Rejection::QualityUnknown => write!(f, "quality unknown"),
            Rejection::QualityTooLow { quality, min } => write!(f, "quality {quality} < min {min}"),
            Rejection::LatencyUnknown => write!(f, "latency unknown"),
            // Whole milliseconds, unless within one of the maximum (where
            // rounding could print the maximum itself): then every digit.
            Rejection::TooSlow { latency_ms, max_ms } if *latency_ms < f64::from(*max_ms) + 1.0 => {
                write!(f, "latency {latency_ms} ms > max {max_ms} ms")
            }
            Rejection::TooSlow { latency_ms, max_ms } => write!(f, "latency {latency_ms:.0} ms > max {max_ms} ms"),
            Rejection::ProviderNotAllowed { provider } => write!(f, "provider {provider:?} not allowed"),
            Rejection::ProviderExcluded { provider } => write!(f, "provider {provider:?} excluded"),
            Rejection::NotLocal => write!(f, "not local"),
            Rejection::NotCloud => write!(f, "not a cloud model"),
            Rejection::MemoryUnknown => write!(f, "memory need unknown"),
            Rejection::NotEnoughMemory { needed_mb, available_mb } => {
                write!(f, "needs {needed_mb} MiB, {available_mb} MiB free")
            }
        }
    }
}

/// The latency to judge a model by: live when measured, else typical.
pub(crate) fn latency_ms(model: &ModelSpec, live: &Signals) -> Option<f64> {
    match live.latency_ms {
        Some(ms) if live.samples > 0 && ms.is_finite() && ms >= 0.0 => Some(ms),
        _ => model.typical_latency_ms.map(f64::from),
    }
}

/// The typical cost of the request on `model` (prompt plus the request's
/// own output cap; an embedding model writes none), when its price is
/// known: the score's cost term.
pub(crate) fn estimate(model: &ModelSpec, req: &Requirements) -> Option<Money> {
    let output = if model.capabilities.embeddings { 0 } else { u64::from(req.max_output_tokens) };
    model.price().map(|p| p.cost(u64::from(req.prompt_tokens), 0, output))
}

/// The most output `req` can take on `model`, all answers together: each of
/// the `n` answers is bounded by the least of the request's `max_tokens`
/// (when set), the model's output limit and what its context window leaves
/// after the prompt. `None` when none of the three is known. An embedding
/// model writes none.
#[must_use]
pub fn worst_case_output(model: &ModelSpec, req: &Requirements) -> Option<u64> {
    if model.capabilities.embeddings {
        // Vectors, not tokens: an embedding model's price is its input's.
        return Some(0);
    }
    let cap = (req.max_output_tokens > 0).then_some(u64::from(req.max_output_tokens));
    let limit = model.max_output_tokens.map(u64::from);
    let left = model.context_window.map(|w| u64::from(w).saturating_sub(u64::from(req.prompt_tokens)));
    let each = [cap, limit, left].into_iter().flatten().min()?;
    Some(each.saturating_mul(u64::from(req.choices())))
}

/// The most `req` can cost on `model`: its prompt plus
/// [`worst_case_output`] at the model's dearest rates ([`modelfleet_registry::Pricing::worst_case`]:
/// a cache write or a reasoning token may cost more than a plain one). A model whose prices are
/// explicitly zero (or a local model without prices) costs nothing whatever
/// it answers. `None` when the cost cannot be bounded: a cloud model without
/// a price, no output bound, or a request whose prompt or fees the gateway
/// cannot measure ([`Requirements::unmeasured`]).
///
/// The budget hold, the `max_cost` filter and `explain` all use this one
/// function, so they cannot disagree.
///
/// ```
/// use modelfleet_registry::{ModelSpec, Pricing};
/// use modelfleet_selector::{worst_case_cost, Requirements};
///
/// let mut model = ModelSpec::new("m", "p");
/// model.pricing = Some(Pricing::new("1".parse()?, "2".parse()?));
/// model.max_output_tokens = Some(100_000);
/// let req = Requirements { prompt_tokens: 1_000, n: 2, ..Requirements::default() };
/// // 1,000 prompt tokens at $1/M plus 2 × 100,000 output tokens at $2/M.
/// assert_eq!(worst_case_cost(&model, &req).map(|c| c.to_string()), Some("0.401".into()));
/// model.pricing = None;
/// assert_eq!(worst_case_cost(&model, &req), None, "an unpriced cloud model cannot be bounded");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use]
pub fn worst_case_cost(model: &ModelSpec, req: &Requirements) -> Option<Money> {
    let price = model.price()?;
    if price.is_free() {
        return Some(Money::ZERO);
    }
    if req.unmeasured {
        return None;
    }
    Some(price.worst_case(u64::from(req.prompt_tokens), worst_case_output(model, req)?))
}

/// The cost constraints: `max_cost` and the room left in the hard budget
/// that would pay, both against the one [`worst_case_cost`].
fn check_cost(
    model: &ModelSpec,
    req: &Requirements,
    room: Option<BudgetRoom<'_>>,
    reject: &mut impl FnMut(Rejection) -> ControlFlow<()>,
) -> ControlFlow<()> {
    if req.max_cost.is_none() && room.is_none() {
        return ControlFlow::Continue(());
    }
    let worst = worst_case_cost(model, req);
    if let Some(max) = req.max_cost {
        match worst {
            None if model.price().is_none() => reject(Rejection::PriceUnknown)?,
            None if req.unmeasured => reject(Rejection::Unmeasured)?,
            None => reject(Rejection::OutputUnbounded)?,
            Some(estimate) if estimate > max => reject(Rejection::TooExpensive { estimate, max })?,
            Some(_) => {}
        }
    }
    if let Some(room) = room {
        match worst {
            None => reject(Rejection::Unbounded { budget: room.budget.to_owned() })?,
            // A free answer never spends: it fits even an exhausted budget.
            Some(cost) if !cost.is_zero() && cost > room.remaining => reject(Rejection::OverBudget {
                budget: room.budget.to_owned(),
                remaining: room.remaining,
                worst_case: cost,
            })?,
            Some(_) => {}
        }
    }
    ControlFlow::Continue(())
}

/// Checks every constraint of `req` against `model`, reporting each failure
/// to `on_reject`, which decides whether to go on (`Continue`) or stop.
/// Returns whether the model passed every constraint checked.
pub(crate) fn check(
    model: &ModelSpec,
    req: &Requirements,
    live: &Signals,
    room: Option<BudgetRoom<'_>>,
    mut on_reject: impl FnMut(Rejection) -> ControlFlow<()>,
) -> bool {
    let mut ok = true;
    let mut reject = |rejection: Rejection| {
        ok = false;
        on_reject(rejection)
    };
    // `?` on ControlFlow stops at the first Break.
    let mut run = || -> ControlFlow<()> {
        if !model.enabled {
            reject(Rejection::Disabled)?;
        }
        if !model.status.is_servable() {
            reject(Rejection::Status { status: model.status })?;
        }
        if !req.providers.is_empty() && !req.providers.contains(&model.provider) {
            reject(Rejection::ProviderNotAllowed { provider: model.provider.clone() })?;
        }
        if req.exclude_providers.contains(&model.provider) {
            reject(Rejection::ProviderExcluded { provider: model.provider.clone() })?;
        }
        match req.locality {
            Some(Locality::LocalOnly) if !model.local => reject(Rejection::NotLocal)?,
            Some(Locality::CloudOnly) if model.local => reject(Rejection::NotCloud)?,
            _ => {}
        }
        if let Some(wanted) = req.category
            && !model.categories.iter().any(|c| *c == wanted || *c == Category::General)
        {
            reject(Rejection::Category { wanted })?;
        }
        if let Some(wanted) = &req.language
            && !model.speaks(wanted)
        {
            reject(Rejection::Language { wanted: wanted.clone() })?;
        }
        let embeddings = req.capabilities.contains(&Capability::Embeddings);
        if model.capabilities.embeddings && !embeddings {
            reject(Rejection::EmbeddingModel)?;
        }
        if let Some(wanted) = req.embedding_dimensions
            && model.embedding_dimensions != Some(wanted)
        {
            reject(Rejection::EmbeddingDimensions { wanted, dimensions: model.embedding_dimensions })?;
        }
        // An embeddings request's prompt is every input together, while an
        // embedding model's window bounds each input alone: its provider
        // checks that (a context-window failure then moves to a larger one).
        let needed = if embeddings { 0 } else { req.min_context() };
        if needed > 0 {
            match model.context_window {
                None => reject(Rejection::ContextUnknown { needed })?,
                Some(window) if u64::from(window) < needed => reject(Rejection::ContextTooSmall { needed, window })?,
                Some(_) => {}
            }
        }
        // A model that states no output limit is bounded by its context
        // window alone, which the check above already applied. (No
        // `max_tokens`, 0, is below no limit.)
        if let Some(limit) = model.max_output_tokens
            && limit < req.max_output_tokens
        {
            reject(Rejection::OutputTooLong { needed: req.max_output_tokens, limit })?;
        }
        for &capability in &req.capabilities {
            if !model.capabilities.has(capability) {
                reject(Rejection::Capability { missing: capability })?;
            }
        }
        check_cost(model, req, room, &mut reject)?;
        if let Some(min) = req.min_quality {
            match model.quality {
                None => reject(Rejection::QualityUnknown)?,
                Some(quality) if quality < min => reject(Rejection::QualityTooLow { quality, min })?,
                Some(_) => {}
            }
        }
        if let Some(max_ms) = req.max_latency_ms {
            match latency_ms(model, live) {
                None => reject(Rejection::LatencyUnknown)?,
                Some(latency_ms) if latency_ms > f64::from(max_ms) => {
                    reject(Rejection::TooSlow { latency_ms, max_ms })?;
                }
                Some(_) => {}
            }
        }
        if model.local
            && let Some(available_mb) = req.available_memory_mb
        {
            match model.memory_mb {
                None => reject(Rejection::MemoryUnknown)?,
                Some(needed_mb) if needed_mb > available_mb => {
                    reject(Rejection::NotEnoughMemory { needed_mb, available_mb })?;
                }
                Some(_) => {}
            }
        }
        ControlFlow::Continue(())
    };
    let _ = run();
    ok
}
