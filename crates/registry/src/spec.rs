//! The model spec: everything the fleet knows about one model.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

use crate::Money;

/// Whether a model may serve traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelStatus {
    /// In service.
    #[default]
    Active,
    /// Switched off.
    Inactive,
    /// Still served, on its way out.
    Deprecated,
    /// Served, not yet proven.
    Experimental,
    /// Temporarily out of service.
    Maintenance,
}

impl ModelStatus {
    /// Whether a model with this status may be selected at all.
    #[must_use]
    pub const fn is_servable(self) -> bool {
        matches!(self, ModelStatus::Active | ModelStatus::Deprecated | ModelStatus::Experimental)
    }

    /// The snake-case name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ModelStatus::Active => "active",
            ModelStatus::Inactive => "inactive",
            ModelStatus::Deprecated => "deprecated",
            ModelStatus::Experimental => "experimental",
            ModelStatus::Maintenance => "maintenance",
        }
    }
}

/// What kind of work a model is good at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Anything; a general model can take any category, scoring lower.
    General,
    /// Translation between languages.
    Translation,
    /// Vocabulary and definitions.
    Vocabulary,
    /// Grammar checks and explanations.
    Grammar,
    /// Open conversation.
    Conversation,
    /// Writing and reading code.
    Code,
    /// Multi-step reasoning.
    Reasoning,
    /// Summaries.
    Summarization,
    /// A narrow specialty (see the model's tags).
    Specialized,
}

impl Category {
    /// Every category.
    pub const ALL: [Category; 9] = [
        Category::General,
        Category::Translation,
        Category::Vocabulary,
        Category::Grammar,
        Category::Conversation,
        Category::Code,
        Category::Reasoning,
        Category::Summarization,
        Category::Specialized,
    ];

    /// The category's position in [`Category::ALL`], for per-category arrays.
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The snake-case name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Category::General => "general",
            Category::Translation => "translation",
            Category::Vocabulary => "vocabulary",
            Category::Grammar => "grammar",
            Category::Conversation => "conversation",
            Category::Code => "code",
            Category::Reasoning => "reasoning",
            Category::Summarization => "summarization",
            Category::Specialized => "specialized",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A model's size class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeClass {
    /// Small (a few billion parameters or a "mini" tier).
    Small,
    /// Medium.
    #[default]
    Medium,
    /// Large.
    Large,
    /// Extra large (frontier models).
    Xlarge,
}

/// Prices per million tokens, exact.
///
/// Input-side tokens are priced as [`Usage`] splits them: prompt tokens read
/// from the provider's cache at `cached_input_per_mtok`, prompt tokens
/// written to it at `cache_write_per_mtok`, the rest at `input_per_mtok`;
/// output-side, reasoning (thinking) tokens at `reasoning_per_mtok`, the
/// rest at `output_per_mtok`. A split rate left `None` is its side's plain
/// rate. A budget hold prices every prompt token at the dearest input-side
/// rate and every output token at the dearest output-side one
/// ([`Pricing::worst_case`]), so no split of the usage can cost more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    /// Per million prompt tokens.
    pub input_per_mtok: Money,
    /// Per million completion tokens.
    pub output_per_mtok: Money,
    /// Per million prompt tokens served from the provider's cache, when it
    /// prices them apart (else they cost `input_per_mtok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok: Option<Money>,
    /// Per million prompt tokens written to the provider's cache (Anthropic's
    /// cache creation), when it prices them apart (else `input_per_mtok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_mtok: Option<Money>,
    /// Per million reasoning (thinking) tokens, when priced apart from the
    /// rest of the output (else `output_per_mtok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_per_mtok: Option<Money>,
}

/// Token counts a model call reports, normalised across providers.
///
/// `input_tokens` counts every prompt token, those read from and written to
/// the provider's cache included; `output_tokens` counts every generated
/// token, reasoning (thinking) included. The split fields say how many of
/// those were of each kind, so nothing is counted twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    /// Prompt tokens (cached reads and cache writes included).
    pub input_tokens: u64,
    /// Completion tokens (reasoning included).
    pub output_tokens: u64,
    /// Prompt tokens served from the provider's cache.
    pub cached_tokens: u64,
    /// Prompt tokens written to the provider's cache.
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
    /// Completion tokens spent reasoning (thinking).
    #[serde(skip_serializing_if = "is_zero")]
    pub reasoning_tokens: u64,
}

// serde's `skip_serializing_if` passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    /// Plain counts: `input` prompt tokens, `output` completion tokens.
    #[must_use]
    pub const fn new(input: u64, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cached_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
        }
    }
}

impl Pricing {
    /// Free: a local model, or a free tier.
    pub const FREE: Pricing = Pricing {
        input_per_mtok: Money::ZERO,
        output_per_mtok: Money::ZERO,
        cached_input_per_mtok: None,
        cache_write_per_mtok: None,
        reasoning_per_mtok: None,
    };

    /// Plain prices: `input` and `output` per million tokens, no split rates.
    #[must_use]
    pub const fn new(input: Money, output: Money) -> Pricing {
        Pricing {
            input_per_mtok: input,
            output_per_mtok: output,
            cached_input_per_mtok: None,
            cache_write_per_mtok: None,
            reasoning_per_mtok: None,
        }
    }

    /// Whether every token is free.
    #[must_use]
    pub fn is_free(&self) -> bool {
        self.input_per_mtok.is_zero()
            && self.output_per_mtok.is_zero()
            && [self.cached_input_per_mtok, self.cache_write_per_mtok, self.reasoning_per_mtok]
                .iter()
                .all(|p| p.is_none_or(Money::is_zero))
    }

    /// The exact cost of a call, cached prompt tokens priced apart.
    ///
    /// `input` counts every prompt token, `cached` those of them served from cache.
    #[must_use]
    pub fn cost(&self, input: u64, cached: u64, output: u64) -> Money {
        let cached = cached.min(input);
        if cached == 0 {
            // The selector's hot path: no split, no third term.
            return Money::per_million_sum(&[(self.input_per_mtok, input), (self.output_per_mtok, output)]);
        }
        Money::per_million_sum(&[
            (self.input_per_mtok, input - cached),
            (self.cached_input_per_mtok.unwrap_or(self.input_per_mtok), cached),
            (self.output_per_mtok, output),
        ])
    }

    /// The exact cost of `usage`: each kind of token at its own rate, every
    /// token once, the sum rounded once to the nano. Split counts larger
    /// than their totals are clamped (a provider's inconsistent report never
    /// makes a token free or counts one twice).
    #[must_use]
    pub fn cost_of(&self, usage: &Usage) -> Money {
        let cached = usage.cached_tokens.min(usage.input_tokens);
        let written = usage.cache_write_tokens.min(usage.input_tokens - cached);
        let reasoning = usage.reasoning_tokens.min(usage.output_tokens);
        Money::per_million_sum(&[
            (self.input_per_mtok, usage.input_tokens - cached - written),
            (self.cached_input_per_mtok.unwrap_or(self.input_per_mtok), cached),
            (self.cache_write_per_mtok.unwrap_or(self.input_per_mtok), written),
            (self.output_per_mtok, usage.output_tokens - reasoning),
            (self.reasoning_per_mtok.unwrap_or(self.output_per_mtok), reasoning),
        ])
    }

    /// The most `prompt` and `output` tokens can cost however the provider
    /// splits them: every prompt token at the dearest input-side rate, every
    /// output token at the dearest output-side rate. Never below
    /// [`Pricing::cost_of`] of a usage with those totals.
    #[must_use]
    pub fn worst_case(&self, prompt: u64, output: u64) -> Money {
        let input = [self.cached_input_per_mtok, self.cache_write_per_mtok]
            .into_iter()
            .flatten()
            .fold(self.input_per_mtok, Money::max);
        let out = self.reasoning_per_mtok.map_or(self.output_per_mtok, |r| r.max(self.output_per_mtok));
        Money::per_million_sum(&[(input, prompt), (out, output)])
    }
}

/// What a model can do beyond plain text completion.
///
/// Plain flags rather than a bit set: they are independent facts read and
/// written by name in catalog files.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Capabilities {
    /// Server-sent-event streaming.
    pub streaming: bool,
    /// Tool (function) calls.
    pub tools: bool,
    /// A JSON output mode.
    pub json_mode: bool,
    /// Image input.
    pub vision: bool,
    /// An embedding model: it turns text into vectors (`/v1/embeddings`)
    /// and serves nothing else; no chat or completion request is ever
    /// routed to it, and an embeddings request only to such a model.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub embeddings: bool,
}

/// One capability, as a requirement names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// See [`Capabilities::streaming`].
    Streaming,
    /// See [`Capabilities::tools`].
    Tools,
    /// See [`Capabilities::json_mode`].
    JsonMode,
    /// See [`Capabilities::vision`].
    Vision,
    /// See [`Capabilities::embeddings`].
    Embeddings,
}

impl Capability {
    /// Every capability.
    pub const ALL: [Capability; 5] =
        [Capability::Streaming, Capability::Tools, Capability::JsonMode, Capability::Vision, Capability::Embeddings];
}

impl Capabilities {
    /// Whether the model has `capability`.
    #[must_use]
    pub const fn has(&self, capability: Capability) -> bool {
        match capability {
            Capability::Streaming => self.streaming,
            Capability::Tools => self.tools,
            Capability::JsonMode => self.json_mode,
            Capability::Vision => self.vision,
            Capability::Embeddings => self.embeddings,
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Capability::Streaming => "streaming",
            Capability::Tools => "tools",
            Capability::JsonMode => "json_mode",
            Capability::Vision => "vision",
            Capability::Embeddings => "embeddings",
        })
    }
}

/// Default sampling parameters sent with each call unless the request sets them.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sampling {
    /// 0 to 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// 0 to 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// -2 to 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// -2 to 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
}

/// Everything the fleet knows about one model.
///
/// A property that is `None` is *unknown*: the selector never lets a model
/// pass a constraint on a property it does not know (a model with no known
/// context window is rejected by a minimum-context requirement).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The unique catalog id: non-empty, no whitespace.
    pub id: String,
    /// The provider that serves it (a name from the configuration).
    pub provider: String,
    /// A human name.
    #[serde(default)]
    pub display_name: String,
    /// The model's version, as its provider names it.
    #[serde(default)]
    pub version: String,
    /// The model name sent to the provider (defaults to `id` when empty).
    #[serde(default)]
    pub upstream: String,
    /// Whether it may serve traffic.
    #[serde(default)]
    pub status: ModelStatus,
    /// What it is good at.
    #[serde(default)]
    pub categories: Vec<Category>,
    /// Its size class.
    #[serde(default)]
    pub size: SizeClass,
    /// A switch independent of status.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Preference among equals, 0 to 100; higher is preferred.
    #[serde(default)]
    pub priority: u8,
    /// Prices per million tokens; `None` is unknown (see [`ModelSpec::price`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
    /// Tokens of prompt plus output it accepts.
    #[serde(default)]
    pub context_window: Option<u32>,
    /// The most tokens it writes in one answer.
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    /// What it can do.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// For an embedding model, the length of the vectors it returns. A
    /// named embedding model falls back only to models whose vectors have
    /// the same length (an index built from one cannot take another's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_dimensions: Option<u32>,
    /// Its best language (an ISO 639-1 code such as `en`).
    #[serde(default)]
    pub primary_language: Option<String>,
    /// Every language it handles well, the primary one included.
    #[serde(default)]
    pub languages: Vec<String>,
    /// A quality score in 0..=1.
    #[serde(default)]
    pub quality: Option<f64>,
    /// Its usual latency for a typical request, in milliseconds.
    #[serde(default)]
    pub typical_latency_ms: Option<u32>,
    /// Whether it runs on this machine (no network, no per-token price).
    #[serde(default)]
    pub local: bool,
    /// For a local model, the memory it needs, in MiB.
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// Free-form labels.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Free-form key/value facts.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Default sampling parameters.
    #[serde(default)]
    pub sampling: Sampling,
    /// When it entered the catalog (Unix milliseconds; set by the catalog).
    #[serde(default)]
    pub created_at_ms: u64,
    /// When it last changed (Unix milliseconds; set by the catalog).
    #[serde(default)]
    pub updated_at_ms: u64,
}

fn yes() -> bool {
    true
}

impl ModelSpec {
    /// A minimal spec: an active, enabled model of `provider` with nothing else known.
    #[must_use]
    pub fn new(id: impl Into<String>, provider: impl Into<String>) -> ModelSpec {
        ModelSpec {
            id: id.into(),
            provider: provider.into(),
            display_name: String::new(),
            version: String::new(),
            upstream: String::new(),
            status: ModelStatus::Active,
            categories: Vec::new(),
            size: SizeClass::Medium,
            enabled: true,
            priority: 0,
            pricing: None,
            context_window: None,
            max_output_tokens: None,
            capabilities: Capabilities::default(),
            embedding_dimensions: None,
            primary_language: None,
            languages: Vec::new(),
            quality: None,
            typical_latency_ms: None,
            local: false,
            memory_mb: None,
            tags: Vec::new(),
            metadata: BTreeMap::new(),
            sampling: Sampling::default(),
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    /// The name to send upstream: `upstream`, or the id when that is empty.
    #[must_use]
    pub fn upstream_name(&self) -> &str {
        if self.upstream.is_empty() { &self.id } else { &self.upstream }
    }

    /// What it costs: its pricing when known; a local model without one is
    /// free (it has no per-token price); `None` when unknown.
    #[must_use]
    pub fn price(&self) -> Option<Pricing> {
        match self.pricing {
            Some(pricing) => Some(pricing),
            None if self.local => Some(Pricing::FREE),
            None => None,
        }
    }

    /// Whether it handles `language` (primary or supported, ignoring case).
    #[must_use]
    pub fn speaks(&self, language: &str) -> bool {
        self.primary_language.as_deref().is_some_and(|p| p.eq_ignore_ascii_case(language))
            || self.languages.iter().any(|l| l.eq_ignore_ascii_case(language))
    }

    /// Whether it may be selected: enabled and of a servable status.
    #[must_use]
    pub fn is_servable(&self) -> bool {
        self.enabled && self.status.is_servable()
    }

    /// Whether `other` is this spec but for its timestamps (when it was
    /// created and last updated): the same model to serve.
    #[must_use]
    pub fn same_but_timestamps(&self, other: &ModelSpec) -> bool {
        let bare = |spec: &ModelSpec| ModelSpec { created_at_ms: 0, updated_at_ms: 0, ..spec.clone() };
        std::ptr::eq(self, other) || bare(self) == bare(other)
    }

    /// Every problem with this spec, each naming its field.
    #[must_use]
    pub fn problems(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        let mut bad = |field: &'static str, message: String| out.push(FieldError { field, message });
        if self.id.is_empty() {
            bad("id", "must not be empty".into());
        } else if self.id.chars().any(char::is_whitespace) {
            bad("id", format!("{:?} must not contain whitespace", self.id));
        } else if self.id.chars().any(char::is_control) {
            bad("id", "must not contain control characters".into());
        }
        if self.provider.trim().is_empty() {
            bad("provider", "must not be empty".into());
        }
        let pricing = self.pricing.unwrap_or(Pricing::FREE);
        for (field, price) in [
            ("pricing.input_per_mtok", Some(pricing.input_per_mtok)),
            ("pricing.output_per_mtok", Some(pricing.output_per_mtok)),
            ("pricing.cached_input_per_mtok", pricing.cached_input_per_mtok),
        ] {
            if price.is_some_and(|p| p < Money::ZERO) {
                bad(field, "must not be negative".into());
            }
        }
        if self.context_window == Some(0) {
            bad("context_window", "must be at least 1 token (leave it out when unknown)".into());
        }
        if self.max_output_tokens == Some(0) {
            bad("max_output_tokens", "must be at least 1 token (leave it out when unknown)".into());
        }
        if let (Some(window), Some(out)) = (self.context_window, self.max_output_tokens)
            && out > window
        {
            bad("max_output_tokens", format!("{out} exceeds the context window of {window}"));
        }
        if let Some(q) = self.quality
            && !(q.is_finite() && (0.0..=1.0).contains(&q))
        {
            bad("quality", format!("{q} is outside 0..=1"));
        }
        if self.priority > 100 {
            bad("priority", format!("{} is above 100", self.priority));
        }
        if self.embedding_dimensions == Some(0) {
            bad("embedding_dimensions", "must be at least 1 (leave it out when unknown)".into());
        }
        if self.embedding_dimensions.is_some() && !self.capabilities.embeddings {
            bad("embedding_dimensions", "is set on a model without the embeddings capability".into());
        }
        if self.memory_mb == Some(0) {
            bad("memory_mb", "must be at least 1 MiB (leave it out when unknown)".into());
        }
        if self.languages.iter().chain(&self.primary_language).any(|l| l.trim().is_empty()) {
            bad("languages", "must not contain an empty language".into());
        }
        let ranges = [
            ("sampling.temperature", self.sampling.temperature, 0.0..=2.0),
            ("sampling.top_p", self.sampling.top_p, 0.0..=1.0),
            ("sampling.frequency_penalty", self.sampling.frequency_penalty, -2.0..=2.0),
            ("sampling.presence_penalty", self.sampling.presence_penalty, -2.0..=2.0),
        ];
        for (field, value, range) in ranges {
            if let Some(v) = value
                && !(v.is_finite() && range.contains(&v))
            {
                bad(field, format!("{v} is outside {}..={}", range.start(), range.end()));
            }
        }
        out
    }
}

/// One invalid field of a [`ModelSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path in the spec (`pricing.input_per_mtok`).
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}
