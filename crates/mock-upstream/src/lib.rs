//! A mock of the LLM providers modelfleet speaks to, for its end-to-end
//! tests, load benchmark and README walkthrough: a real HTTP server on
//! loopback speaking each provider's wire format (JSON and streaming),
//! whose behaviour per upstream model is scripted at run time.
//!
//! # Routes
//!
//! | Provider | Route | Key | Answer |
//! |---|---|---|---|
//! | OpenAI | `POST /v1/chat/completions` | `Authorization: Bearer` | `chat.completion`, SSE chunks + `[DONE]` |
//! | OpenAI | `POST /v1/completions` (legacy) | same | `text_completion`, SSE chunks + `[DONE]` |
//! | OpenAI | `POST /v1/embeddings` | same | `list` of `embedding` (float or base64) |
//! | OpenAI | `POST /v1/responses` | same | `response`, named SSE events |
//! | Anthropic | `POST /v1/messages` | `x-api-key` | `message`, named SSE events |
//! | Gemini | `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent?alt=sse` | `x-goog-api-key` or `?key=` | `GenerateContentResponse`s |
//! | Gemini | `POST /v1beta/models/{model}:batchEmbedContents`, `:embedContent` | same | `embeddings[].values` |
//! | Azure | `POST /openai/deployments/{deployment}/chat/completions?api-version=…` | `api-key` | as OpenAI's |
//! | Azure | `POST /openai/deployments/{deployment}/embeddings?api-version=…`, `…/completions?…` | `api-key` | as OpenAI's |
//!
//! Every route under `/v1` also answers without it (`/chat/completions`,
//! `/messages`, …), so a provider's base URL may be
//! [`MockUpstream::base_url`] (`http://127.0.0.1:PORT/v1`, to which a
//! client adds `/chat/completions` or `/messages`) or
//! [`MockUpstream::root_url`] (`http://127.0.0.1:PORT`, to which
//! Anthropic's clients add `/v1/messages`, Gemini's
//! `/v1beta/models/…` and Azure's `/openai/deployments/…`). The Gemini
//! routes also answer under `/v1/models/…` and `/models/…`. Azure requires
//! `?api-version=` (404 `Resource not found` without, as Azure answers)
//! and adds its content-filter annotations (a stream opens with a chunk
//! whose `choices` is empty). Anthropic requires the `anthropic-version`
//! header and `max_tokens` (400 `invalid_request_error` without). A body
//! the mock cannot read gets the provider's 400, never a panic.
//!
//! # Behaviours and faults
//!
//! Each model (the `model` field; Gemini's is in the path, Azure's
//! deployment plays its part) follows a [`Behavior`]: latency, the
//! completion's length in tokens and stream events, a context window,
//! cached, cache-write and reasoning tokens, whether it calls a declared
//! tool ([`Behavior::call_tools`]: arguments that fit the tool's schema,
//! streamed in pieces), its embeddings' length, and a [`Fault`] injected
//! on the next N calls ([`MockUpstream::fail_next`]) or at a rate
//! ([`Behavior::fault_rate`]). Each route answers a fault in its
//! provider's shape:
//!
//! | [`Fault`] | OpenAI, Azure | Anthropic | Gemini |
//! |---|---|---|---|
//! | `ServerError` | 500 `server_error` | 500 `api_error` | 500 `INTERNAL` |
//! | `Overloaded` | 503 `server_error` | 529 `overloaded_error` | 503 `UNAVAILABLE` |
//! | `RateLimited` | 429 + `retry-after` (Azure: its body, `retry-after-ms`) | 429 `rate_limit_error` + `retry-after` | 429 `RESOURCE_EXHAUSTED`, `RetryInfo` detail |
//! | `ContextWindow` | 400 `context_length_exceeded` | 400 "prompt is too long: N tokens > M maximum" | 400 `INVALID_ARGUMENT` "The input token count…" |
//! | `BadRequest` | 400 `invalid_request_error` | 400 `invalid_request_error` | 400 `INVALID_ARGUMENT` |
//! | `Unauthorized` | 401 `invalid_api_key` (Azure: its 401) | 401 `authentication_error` | 400 `API_KEY_INVALID` |
//! | `PromptBlocked` | 400 `content_filter` (Azure's) | 200, `stop_reason: "refusal"` | 200, `promptFeedback.blockReason: "SAFETY"` |
//! | `AnswerFiltered` | 200, `finish_reason: "content_filter"` | 200, `stop_reason: "refusal"` | 200, `finishReason: "SAFETY"` |
//! | `MidStreamError(n)` | `data: {"error": …}` | `event: error`, `overloaded_error` | `data: {"error": …}` |
//! | `Hang` | 504 | 504 `timeout_error` | 504 `DEADLINE_EXCEEDED` |
//!
//! `Reset`, `CutAfter(n)`, `SlowHeaders`, `SlowDrip` and `Huge` act on the
//! connection, the same on every route. A model may also report
//! [`RateLimits`] on every answer, in its provider's headers.
//!
//! # Keys
//!
//! By default any key, or none, is accepted. [`MockUpstream::require_key`]
//! accepts one key; [`MockUpstream::set_keys`] takes a [`KeyPolicy`]: the
//! accepted keys, keys that are always rate limited (the provider's 429)
//! and revoked keys (its 401; Gemini's 400 `API_KEY_INVALID`), for key
//! rotation tests. A missing key gets Anthropic's 401 "x-api-key header is
//! required", Gemini's 403 `PERMISSION_DENIED`, Azure's 401.
//!
//! # Recording
//!
//! The mock counts calls per model ([`MockUpstream::hits`]), per key
//! ([`MockUpstream::key_hits`]) and in all, and keeps each model's latest
//! requests ([`MockUpstream::recorded`], [`MockUpstream::last_request`],
//! [`MockUpstream::last_headers`]): the route ([`Api`]), path and query,
//! headers and body, so tests can assert what the gateway sent (and that
//! it did not retry a 400).
//!
//! ```
//! use modelfleet_mock_upstream::{Api, Behavior, Fault, MockUpstream};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! let mock = MockUpstream::start().await?;
//! mock.fail_next("tiny", Fault::ServerError, 1);
//! let url = format!("{}/chat/completions", mock.base_url());
//! let body = r#"{"model":"tiny","messages":[{"role":"user","content":"hi"}]}"#;
//! let client = reqwest::Client::new();
//! let first = client.post(&url).body(body).send().await?;
//! assert_eq!(first.status(), 500);
//! let second = client.post(&url).body(body).send().await?;
//! assert_eq!(second.status(), 200);
//! assert_eq!(mock.hits("tiny"), 2);
//!
//! // The same fault, in Anthropic's shape.
//! mock.fail_next("claude", Fault::Overloaded, 1);
//! let url = format!("{}/v1/messages", mock.root_url());
//! let body = r#"{"model":"claude","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
//! let answer = client.post(&url).header("anthropic-version", "2023-06-01").body(body).send().await?;
//! assert_eq!(answer.status(), 529);
//! assert!(answer.text().await?.contains("overloaded_error"));
//! assert_eq!(mock.last_recorded("claude").map(|r| r.api), Some(Api::AnthropicMessages));
//! mock.shutdown().await;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod anthropic;
mod azure;
mod behavior;
mod completions;
mod embeddings;
mod gemini;
mod openai;
mod responses;
mod serve;
mod server;
mod tools;
mod transport;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

pub use crate::{
    behavior::{Behavior, Fault, KeyPolicy, RateLimits, parse_fault},
    embeddings::embedding,
    openai::prompt_tokens,
    server::{Api, MockUpstream, Recorded},
};
