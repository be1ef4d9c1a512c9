//! Anthropic's Messages API (`POST {base}/messages`, `x-api-key`,
//! `anthropic-version`): bodies, answers and streams translated by
//! `modelfleet-translate`.

use bytes::Bytes;
use modelfleet::{ModelResponse, errors::ErrorClass, errors::Failure, registry::ModelSpec};
use modelfleet_translate::{AnthropicToChat, ToChatStream, Unsupported, anthropic_to_chat, chat_to_anthropic};
use serde_json::Value;

use super::{Adapter, answer_failure, default_max_tokens, join, refused, translated_answer, unsupported_op};
use crate::wire::{ChatRequest, Op, json_bytes};

/// An Anthropic provider.
pub(super) struct Anthropic {
    /// `{base}/messages`, parsed once.
    url: Option<reqwest::Url>,
    unsupported: Unsupported,
}

impl Anthropic {
    pub(super) fn new(base: &reqwest::Url, unsupported: Unsupported) -> Anthropic {
        Anthropic { url: join(base, &["messages"]).ok(), unsupported }
    }
}

impl Adapter for Anthropic {
    fn url(&self, _model: &ModelSpec, req: &ChatRequest) -> Result<reqwest::Url, Failure> {
        if req.op != Op::Chat {
            return Err(unsupported_op("anthropic", req.op));
        }
        self.url.clone().ok_or_else(|| Failure::new(ErrorClass::NotFound, "the provider's base_url cannot take a path"))
    }

    fn body(&self, model: &ModelSpec, chat: &ChatRequest) -> Result<Vec<u8>, Failure> {
        // Anthropic requires `max_tokens`: the client's, else the bound the
        // budget hold assumed.
        let body =
            chat_to_anthropic(&chat.body, model.upstream_name(), default_max_tokens(model, chat), self.unsupported)
                .map_err(|r| refused("anthropic", &r))?;
        Ok(json_bytes(&body))
    }

    fn answer(&self, _model: &ModelSpec, _req: &ChatRequest, body: Bytes) -> Result<ModelResponse<Bytes>, Failure> {
        let message: Value = serde_json::from_slice(&body)
            .map_err(|e| Failure::new(ErrorClass::ServerError, &format!("the upstream answered invalid JSON: {e}")))?;
        let completion = anthropic_to_chat(&message).map_err(answer_failure)?;
        Ok(translated_answer(&completion))
    }

    fn translator(&self, _model: &ModelSpec) -> Option<Box<dyn ToChatStream>> {
        Some(Box::new(AnthropicToChat::new()))
    }
}
