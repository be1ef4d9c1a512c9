//! What a request asks of a model.

use modelfleet_registry::{Capability, Category, Money};
use serde::{Deserialize, Serialize};

/// Where a model must run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Locality {
    /// Local or cloud, said explicitly: a named local model may then fall
    /// back to a cloud one (unset, it falls back only to local models).
    Any,
    /// Only models on this machine.
    LocalOnly,
    /// Only models behind a provider's API.
    CloudOnly,
}

/// What a request needs from a model. Every field is optional; the default
/// asks for nothing and every servable model is eligible.
///
/// A constraint on a property a model does not know (no context window, no
/// quality, no price…) rejects that model: unknown never passes. The one
/// exception is an output limit the model does not state: its context
/// window bounds the output instead (and must be known when tokens are
/// asked for).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Requirements {
    /// The kind of work. Models of that category score highest; `general`
    /// models may take it, scoring lower; others are rejected.
    pub category: Option<Category>,
    /// The language of the request (ISO 639-1, e.g. `en`); the model must speak it.
    pub language: Option<String>,
    /// Tokens in the prompt (for the context check and the cost estimate).
    pub prompt_tokens: u32,
    /// The prompt holds more than `prompt_tokens` says and nobody can tell
    /// how much, or the call may cost what no price covers (a conversation
    /// stored at the provider, a provider's built-in tools): the cost cannot
    /// be bounded, so a model that is not free has no worst case (a hard
    /// budget refuses it; `max_cost` rejects it).
    pub unmeasured: bool,
    /// Tokens each answer may take (the request's `max_tokens`), 0 when the
    /// request sets no cap and a model may answer up to its own limit. The
    /// context window must hold prompt plus this, and the model's output
    /// limit, when it states one, must allow it.
    pub max_output_tokens: u32,
    /// Answers asked for (OpenAI's `n`); 0 counts as 1. Each may take the
    /// whole output bound, so the worst-case cost multiplies by it.
    pub n: u32,
    /// Capabilities the model must have. Asking for
    /// [`Capability::Embeddings`] makes it an embeddings request: only
    /// embedding models serve it, and they serve nothing else.
    pub capabilities: Vec<Capability>,
    /// For an embeddings request, the length its vectors must have: only
    /// models that state exactly this [`embedding_dimensions`](modelfleet_registry::ModelSpec::embedding_dimensions)
    /// may serve it (unknown never passes).
    pub embedding_dimensions: Option<u32>,
    /// The most this request may cost: a model whose worst case
    /// ([`worst_case_cost`](crate::worst_case_cost)) is above it, or cannot
    /// be bounded, is rejected. A worst case exactly at the limit passes.
    pub max_cost: Option<Money>,
    /// The lowest acceptable quality, 0 to 1.
    pub min_quality: Option<f64>,
    /// The highest acceptable latency in milliseconds (live when measured,
    /// else the model's typical latency).
    pub max_latency_ms: Option<u32>,
    /// When not empty, only these providers.
    pub providers: Vec<String>,
    /// Never these providers.
    pub exclude_providers: Vec<String>,
    /// Local only, cloud only, or either; `None` (the default) lets any
    /// model serve, but a named model's implied fallbacks keep its locality
    /// unless the request says [`Locality::Any`] explicitly.
    pub locality: Option<Locality>,
    /// Rank free models above every paid one.
    pub prefer_free: bool,
    /// Rank local models above every cloud one.
    pub prefer_local: bool,
    /// Memory free for a local model, in MiB, as the caller measured it; a
    /// local model needing more (or not saying) is rejected. `None`: no check.
    pub available_memory_mb: Option<u64>,
}

impl Requirements {
    /// The context window a model needs: prompt plus output, where a
    /// request without `max_tokens` needs room for at least one token of
    /// answer (a window the prompt fills exactly could say nothing). 0 when
    /// the request gives no sizes at all.
    #[must_use]
    pub fn min_context(&self) -> u64 {
        if self.prompt_tokens == 0 && self.max_output_tokens == 0 {
            return 0;
        }
        u64::from(self.prompt_tokens) + u64::from(self.max_output_tokens.max(1))
    }

    /// Answers asked for: `n`, at least 1.
    #[must_use]
    pub fn choices(&self) -> u32 {
        self.n.max(1)
    }

    /// Checks the values no model could be judged against: a negative
    /// `max_cost`, a `min_quality` outside 0..=1 (or not a number).
    /// Whoever takes requirements from a user (the gateway's `modelfleet`
    /// extension, the CLI's flags) calls this and refuses them with its
    /// message, instead of rejecting every model.
    ///
    /// ```
    /// use modelfleet_selector::Requirements;
    ///
    /// let req = Requirements { max_cost: Some("-0.01".parse()?), ..Requirements::default() };
    /// assert_eq!(req.check().unwrap_err().to_string(), "max_cost must be >= 0, got $-0.01");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn check(&self) -> Result<(), crate::Error> {
        if let Some(max) = self.max_cost
            && max < Money::ZERO
        {
            return Err(crate::Error::InvalidRequirement {
                field: "max_cost",
                problem: format!("must be >= 0, got ${max}"),
            });
        }
        if let Some(min) = self.min_quality
            && !(0.0..=1.0).contains(&min)
        {
            return Err(crate::Error::InvalidRequirement {
                field: "min_quality",
                problem: format!("must be from 0 to 1, got {min}"),
            });
        }
        Ok(())
    }
}
