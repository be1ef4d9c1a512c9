//! Google's Gemini API (`POST {base}/models/{model}:generateContent`,
//! `:streamGenerateContent?alt=sse` for streams, `:batchEmbedContents` for
//! embeddings; `x-goog-api-key`): bodies, answers and streams translated by
//! `modelfleet-translate`.

use bytes::Bytes;
use modelfleet::{ModelResponse, Usage, errors::ErrorClass, errors::Failure, registry::ModelSpec};
use modelfleet_translate::{
    GeminiToChat, ToChatStream, Unsupported, chat_to_gemini, embeddings_to_gemini, gemini_to_chat, gemini_to_embeddings,
};
use serde_json::{Value, json};

use super::{
    Adapter, answer_failure, default_max_tokens, encode_as_asked, join, refused, translated_answer, unsupported_op,
};
use crate::wire::{ChatRequest, Op, json_bytes};

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
    fn url(&self, model: &ModelSpec, req: &ChatRequest) -> Result<reqwest::Url, Failure> {
        let stream = req.stream;
        let action = match req.op {
            Op::Chat if stream => "streamGenerateContent",
            Op::Chat => "generateContent",
            Op::Embeddings => "batchEmbedContents",
            Op::Completions | Op::Responses => return Err(unsupported_op("gemini", req.op)),
        };
        let mut url = join(&self.base, &["models", &format!("{}:{action}", model.upstream_name())]).map_err(|e| {
            Failure::new(ErrorClass::NotFound, &format!("the provider's base_url cannot take a path: {e}"))
        })?;
        if stream {
            url.query_pairs_mut().append_pair("alt", "sse");
        }
        Ok(url)
    }

    fn body(&self, model: &ModelSpec, chat: &ChatRequest) -> Result<Vec<u8>, Failure> {
        if chat.op == Op::Embeddings {
            let body = embeddings_to_gemini(&chat.body, model.upstream_name()).map_err(|r| refused("gemini", &r))?;
            return Ok(json_bytes(&body));
        }
        let mut body = chat_to_gemini(&chat.body, self.unsupported).map_err(|r| refused("gemini", &r))?;
        // Without the client's cap, the bound the budget hold assumed.
        if let Some(config) = body.as_object_mut().map(|b| b.entry("generationConfig").or_insert_with(|| json!({})))
            && let Some(config) = config.as_object_mut()
        {
            config.entry("maxOutputTokens").or_insert_with(|| Value::from(default_max_tokens(model, chat)));
        }
        Ok(json_bytes(&body))
    }

    fn answer(&self, model: &ModelSpec, req: &ChatRequest, body: Bytes) -> Result<ModelResponse<Bytes>, Failure> {
        let response: Value = serde_json::from_slice(&body)
            .map_err(|e| Failure::new(ErrorClass::ServerError, &format!("the upstream answered invalid JSON: {e}")))?;
        if req.op == Op::Embeddings {
            // Gemini reports no usage for embeddings: the estimate, which
            // errs high, is charged.
            let prompt = u64::from(req.requirements.prompt_tokens);
            let mut list = gemini_to_embeddings(&response, model.upstream_name(), prompt).map_err(answer_failure)?;
            let inputs = match req.body.get("input") {
                Some(Value::Array(items)) => items.len(),
                _ => 1,
            };
            let got = list.get("data").and_then(Value::as_array).map_or(0, Vec::len);
            if got != inputs {
                return Err(Failure::new(
                    ErrorClass::ServerError,
                    &format!("the upstream answered {got} embeddings for {inputs} inputs"),
                ));
            }
            encode_as_asked(req, &mut list);
            return Ok(ModelResponse { value: Bytes::from(json_bytes(&list)), usage: Some(Usage::new(prompt, 0)) });
        }
        let completion = gemini_to_chat(&response, model.upstream_name()).map_err(answer_failure)?;
        Ok(translated_answer(&completion))
    }

    fn translator(&self, model: &ModelSpec) -> Option<Box<dyn ToChatStream>> {
        Some(Box::new(GeminiToChat::new(model.upstream_name())))
    }
}
