//! OpenAI's API and the many servers compatible with it, and Azure OpenAI:
//! chat completions, legacy completions and embeddings in the gateway's own
//! format, so the body is the client's (model replaced, usage asked for)
//! and the answer goes back as it came.

use bytes::Bytes;
use modelfleet::{ModelResponse, errors::ErrorClass, errors::Failure, registry::ModelSpec};
use modelfleet_translate::ToChatStream;

use super::{Adapter, join};
use crate::wire::{ChatRequest, Op, Outgoing, completion_usage, embeddings_usage, json_bytes, responses_usage};

/// An OpenAI-compatible provider, or an Azure one.
pub(super) struct OpenAi {
    /// Where calls go, by [`Op`] (chat, completions, embeddings, responses): parsed
    /// once (parsing per request, IDNA included, showed in profiles).
    /// `None` for Azure, whose URL names the model's deployment.
    urls: Option<[reqwest::Url; 4]>,
    /// Azure: the resource's base and the `api-version`.
    azure: Option<(reqwest::Url, String)>,
    /// `include_usage`: streams ask for `stream_options.include_usage`.
    include_usage: bool,
}

impl OpenAi {
    /// `{base}/chat/completions`, `{base}/completions`, `{base}/embeddings`,
    /// `{base}/responses`.
    pub(super) fn new(base: &reqwest::Url, include_usage: bool) -> OpenAi {
        let url = |op: Op| join(base, op.path()).ok();
        let urls = url(Op::Chat)
            .zip(url(Op::Completions))
            .zip(url(Op::Embeddings))
            .zip(url(Op::Responses))
            .map(|(((c, t), e), r)| [c, t, e, r]);
        OpenAi { urls, azure: None, include_usage }
    }

    /// `{base}/openai/deployments/{upstream}/{chat/completions|completions|embeddings}?api-version=…`.
    pub(super) fn azure(base: reqwest::Url, api_version: &str, include_usage: bool) -> OpenAi {
        OpenAi { urls: None, azure: Some((base, api_version.to_owned())), include_usage }
    }
}

impl Adapter for OpenAi {
    fn url(&self, model: &ModelSpec, req: &ChatRequest) -> Result<reqwest::Url, Failure> {
        if let Some([chat, completions, embeddings, responses]) = &self.urls {
            return Ok(match req.op {
                Op::Chat => chat,
                Op::Completions => completions,
                Op::Embeddings => embeddings,
                Op::Responses => responses,
            }
            .clone());
        }
        let (base, version) = self
            .azure
            .as_ref()
            .ok_or_else(|| Failure::new(ErrorClass::NotFound, "the provider's base_url cannot take a path"))?;
        let mut segments = vec!["openai", "deployments", model.upstream_name()];
        segments.extend_from_slice(req.op.path());
        let mut url = join(base, &segments).map_err(|e| {
            Failure::new(ErrorClass::NotFound, &format!("the provider's base_url cannot take a path: {e}"))
        })?;
        url.query_pairs_mut().append_pair("api-version", version);
        Ok(url)
    }

    fn body(&self, model: &ModelSpec, chat: &ChatRequest) -> Result<Vec<u8>, Failure> {
        Ok(json_bytes(&Outgoing {
            body: &chat.body,
            model: model.upstream_name(),
            stream: chat.stream,
            cap: chat.cap,
            // A Responses stream reports usage in its last event.
            include_usage: self.include_usage && chat.op != Op::Responses,
            cap_field: if chat.op == Op::Responses { "max_output_tokens" } else { "max_tokens" },
        }))
    }

    fn answer(&self, _model: &ModelSpec, req: &ChatRequest, body: Bytes) -> Result<ModelResponse<Bytes>, Failure> {
        let usage = match req.op {
            Op::Chat | Op::Completions => completion_usage(&body),
            Op::Embeddings => embeddings_usage(&body),
            Op::Responses => serde_json::from_slice::<serde_json::Value>(&body)
                .map(|v| v.get("usage").and_then(responses_usage))
                .map_err(|e| e.to_string()),
        }
        .map_err(|e| Failure::new(ErrorClass::ServerError, &format!("the upstream answered invalid JSON: {e}")))?;
        Ok(ModelResponse { value: body, usage })
    }

    fn translator(&self, _model: &ModelSpec) -> Option<Box<dyn ToChatStream>> {
        None
    }
}
