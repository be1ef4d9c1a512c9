//! Wire-format translation for modelfleet's gateway.
//!
//! The gateway speaks OpenAI's chat-completions format inside: every client
//! endpoint is translated to it, and every provider kind is translated from
//! it. This crate holds those translations as pure functions over
//! `serde_json` values (no I/O, no clock), so they are tested with
//! snapshots, fuzzed, and benchmarked alone:
//!
//! - Anthropic's Messages API, both ways (a chat request to an Anthropic
//!   upstream and its answer back; an Anthropic client's request to chat
//!   and the chat answer back), streams included.
//! - Google's Gemini `generateContent` and `streamGenerateContent`, and its
//!   embeddings.
//! - OpenAI's Responses API for clients, over chat.
//! - A fast, conservative token estimate for budget holds and context
//!   checks.
//!
//! Usage is normalised to [`Usage`] in OpenAI's shape: `prompt_tokens`
//! counts every prompt token (cache reads in
//! `prompt_tokens_details.cached_tokens`, cache writes in
//! `prompt_tokens_details.cache_write_tokens`), `completion_tokens` every
//! generated token (reasoning in `completion_tokens_details.reasoning_tokens`),
//! whatever the provider counted apart.

mod anthropic;
mod gemini;
mod responses;
mod tokens;
mod usage;

pub use modelfleet_registry::Usage;

pub use crate::usage::{usage_json, usage_of};
// Public items of each module (one line per module):
pub use crate::anthropic::{
    AnthropicToChat, ChatToAnthropicEvents, anthropic_error, anthropic_request_to_chat, anthropic_to_chat,
    chat_to_anthropic, chat_to_anthropic_message,
};
pub use crate::gemini::{GeminiToChat, chat_to_gemini, embeddings_to_gemini, gemini_to_chat, gemini_to_embeddings};
pub use crate::responses::{ChatToResponseEvents, chat_to_response, responses_request_to_chat};
pub use crate::tokens::{TokenCounter, estimate_json, estimate_tokens};

/// One server-sent event a client endpoint sends: its `event:` name and
/// its `data:` JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// The `event:` line (Anthropic's and the Responses API's event types).
    pub event: &'static str,
    /// The `data:` line.
    pub data: serde_json::Value,
}

/// What to do with a request parameter the target format has no place for
/// (a provider's `unsupported_params`; LiteLLM's `drop_params`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unsupported {
    /// Leave it out, and send the rest (LiteLLM's `drop_params`).
    #[default]
    Drop,
    /// Refuse the request, naming the parameter.
    Error,
}

/// A request that cannot be translated: the field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Refusal {
    /// The field, as a path in the request (`messages[2].content[0].type`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl Refusal {
    /// A refusal of `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Refusal {
        Refusal { field: field.into(), message: message.into() }
    }
}

/// An upstream answer that cannot be turned into a chat answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// Not in the format its provider kind speaks (what is wrong, never the
    /// whole body).
    #[error("the upstream's answer is not in its provider's format: {0}")]
    Malformed(String),
    /// A failure the provider reported inside an answer or a stream (an
    /// Anthropic `error` event, a Gemini safety block or a
    /// `RESOURCE_EXHAUSTED` chunk): the HTTP status it stands for and the
    /// body in OpenAI's error shape (`{"error": {"message", "type", "code"}}`),
    /// to classify as an error response with that status would be.
    #[error("the upstream reported a failure ({status}): {body}")]
    Reported {
        /// The HTTP status the failure stands for.
        status: u16,
        /// OpenAI's error shape, as JSON text.
        body: String,
    },
}

/// An upstream stream in another provider's format, turned into OpenAI
/// chat-completion chunks event by event.
///
/// `push` takes one SSE event's `data` and returns the chunks it becomes
/// (JSON texts, in order; maybe none). When the provider says the message
/// ended, the translator emits the last chunk with its `finish_reason`, one
/// usage chunk (`"choices": []`, `usage` in [`usage_json`]'s shape) and then
/// the text `[DONE]`. `finish` is called when the upstream's body ends: it
/// returns what is still owed, or [`AnswerError::Malformed`] when the
/// stream ended before the provider said the message was complete (a cut
/// stream is a failure, never a silent truncation).
pub trait ToChatStream: Send {
    /// One event's data.
    fn push(&mut self, data: &str) -> Result<Vec<String>, AnswerError>;
    /// The upstream's body ended.
    fn finish(&mut self) -> Result<Vec<String>, AnswerError>;
}
