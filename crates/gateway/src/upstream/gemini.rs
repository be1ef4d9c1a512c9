//! Google's Gemini API (`POST {base}/models/{model}:generateContent`, and
//! `:streamGenerateContent?alt=sse` for streams; `x-goog-api-key`): bodies,
//! answers and streams translated by `modelfleet-translate`.

use bytes::Bytes;
use modelfleet::{ModelResponse, errors::ErrorClass, errors::Failure, registry::ModelSpec};
use modelfleet_translate::{GeminiToChat, ToChatStream, Unsupported, chat_to_gemini, gemini_to_chat};
use serde_json::{Value, json};

use super::{Adapter, answer_failure, default_max_tokens, join, refused, translated_answer};
use crate::wire::{ChatRequest, json_bytes};

/// A Gemini provider.
pub(super) struct Gemini {
    base: reqwest::Url,
    unsupported: Unsupported,
}

impl Gemini {
    pub(super) fn new(base: reqwest::Url, unsupported: Unsupported) -> Gemini {
        Gemini { base, unsupported }
    }
}

impl Adapter for Gemini {
    fn chat_url(&self, model: &ModelSpec, stream: bool) -> Result<reqwest::Url, Failure> {
        let action = if stream { "streamGenerateContent" } else { "generateContent" };
        let mut url = join(&self.base, &["models", &format!("{}:{action}", model.upstream_name())]).map_err(|e| {
            Failure::new(ErrorClass::NotFound, &format!("the provider's base_url cannot take a path: {e}"))
        })?;
        if stream {
            url.query_pairs_mut().append_pair("alt", "sse");
        }
        Ok(url)
    }

    fn chat_body(&self, model: &ModelSpec, chat: &ChatRequest) -> Result<Vec<u8>, Failure> {
        let mut body = chat_to_gemini(&chat.body, self.unsupported).map_err(|r| refused("gemini", &r))?;
        // Without the client's cap, the bound the budget hold assumed.
        if let Some(config) = body.as_object_mut().map(|b| b.entry("generationConfig").or_insert_with(|| json!({})))
            && let Some(config) = config.as_object_mut()
        {
            config.entry("maxOutputTokens").or_insert_with(|| Value::from(default_max_tokens(model, chat)));
        }
        Ok(json_bytes(&body))
    }

    fn chat_answer(&self, model: &ModelSpec, body: Bytes) -> Result<ModelResponse<Bytes>, Failure> {
        let response: Value = serde_json::from_slice(&body)
            .map_err(|e| Failure::new(ErrorClass::ServerError, &format!("the upstream answered invalid JSON: {e}")))?;
        let completion = gemini_to_chat(&response, model.upstream_name()).map_err(answer_failure)?;
        Ok(translated_answer(&completion))
    }

    fn translator(&self, model: &ModelSpec) -> Option<Box<dyn ToChatStream>> {
        Some(Box::new(GeminiToChat::new(model.upstream_name())))
    }
}
