//! OpenAI's chat-completions API and the many servers compatible with it,
//! and Azure OpenAI: the gateway's own format, so the body is the client's
//! (model replaced, usage asked for) and the answer goes back as it came.

use bytes::Bytes;
use modelfleet::{ModelResponse, errors::ErrorClass, errors::Failure, registry::ModelSpec};
use modelfleet_translate::ToChatStream;

use super::{Adapter, join};
use crate::wire::{ChatRequest, Outgoing, completion_usage, json_bytes};

/// An OpenAI-compatible provider, or an Azure one.
pub(super) struct OpenAi {
    /// Where chat calls go: parsed once (parsing per request, IDNA
    /// included, showed in profiles). `None` for Azure, whose URL names
    /// the model's deployment.
    chat_url: Option<reqwest::Url>,
    /// Azure: the resource's base and the `api-version`.
    azure: Option<(reqwest::Url, String)>,
    /// `include_usage`: streams ask for `stream_options.include_usage`.
    include_usage: bool,
}

impl OpenAi {
    /// `{base}/chat/completions`.
    pub(super) fn new(base: &reqwest::Url, include_usage: bool) -> OpenAi {
        let chat_url = join(base, &["chat", "completions"]).ok();
        OpenAi { chat_url, azure: None, include_usage }
    }

    /// `{base}/openai/deployments/{upstream}/chat/completions?api-version=…`.
    pub(super) fn azure(base: reqwest::Url, api_version: &str, include_usage: bool) -> OpenAi {
        OpenAi { chat_url: None, azure: Some((base, api_version.to_owned())), include_usage }
    }
}

impl Adapter for OpenAi {
    fn chat_url(&self, model: &ModelSpec, _stream: bool) -> Result<reqwest::Url, Failure> {
        if let Some(url) = &self.chat_url {
            return Ok(url.clone());
        }
        let (base, version) = self
            .azure
            .as_ref()
            .ok_or_else(|| Failure::new(ErrorClass::NotFound, "the provider's base_url cannot take a path"))?;
        let mut url =
            join(base, &["openai", "deployments", model.upstream_name(), "chat", "completions"]).map_err(|e| {
                Failure::new(ErrorClass::NotFound, &format!("the provider's base_url cannot take a path: {e}"))
            })?;
        url.query_pairs_mut().append_pair("api-version", version);
        Ok(url)
    }

    fn chat_body(&self, model: &ModelSpec, chat: &ChatRequest) -> Result<Vec<u8>, Failure> {
        Ok(json_bytes(&Outgoing {
            body: &chat.body,
            model: model.upstream_name(),
            stream: chat.stream,
            cap: chat.cap,
            include_usage: self.include_usage,
        }))
    }

    fn chat_answer(&self, _model: &ModelSpec, body: Bytes) -> Result<ModelResponse<Bytes>, Failure> {
        let usage = completion_usage(&body)
            .map_err(|e| Failure::new(ErrorClass::ServerError, &format!("the upstream answered invalid JSON: {e}")))?;
        Ok(ModelResponse { value: body, usage })
    }

    fn translator(&self, _model: &ModelSpec) -> Option<Box<dyn ToChatStream>> {
        None
    }
}
