//! Embeddings: the deterministic vectors every embeddings route answers
//! ([`embedding`]), and OpenAI's `POST /v1/embeddings` (Azure's deployment
//! route runs the same endpoint). Gemini's embedding actions format the
//! same vectors in `gemini`.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, Uri},
    response::Response,
};
use serde_json::{Value, json};

use crate::{
    behavior::{Behavior, RateLimits},
    openai::{self, Flavor},
    serve::{self, Ask, Call, Endpoint, Failure, Refused, Reply, serve},
    server::{Api, Shared},
    transport::Script,
};

/// The most inputs one request may embed, as OpenAI allows.
const MAX_INPUTS: usize = 2048;

/// The embedding the mock gives `text` for `model`: `dimensions` numbers
/// drawn from a generator seeded by the model and the text, scaled to unit
/// length. The same inputs always give the same vector, and a shorter
/// vector is the longer one's start, rescaled (as OpenAI's `dimensions`
/// shortens its vectors). A token-id input is embedded as its ids written
/// with commas (`1,2,3`).
#[must_use]
pub fn embedding(model: &str, text: &str, dimensions: usize) -> Vec<f32> {
    // FNV-1a over the model, a separator and the text.
    let seed = model
        .bytes()
        .chain([0])
        .chain(text.bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
    let mut rng = fastrand::Rng::with_seed(seed);
    let raw: Vec<f32> = (0..dimensions).map(|_| rng.f32().mul_add(2.0, -1.0)).collect();
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        return raw;
    }
    raw.into_iter().map(|x| x / norm).collect()
}

/// A vector as OpenAI's `encoding_format: "base64"` sends it: its
/// little-endian `f32`s in standard base64.
pub(crate) fn base64(vector: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [group[0], group.get(1).copied().unwrap_or(0), group.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= group.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The length of the vectors a request gets: the behaviour's, or fewer if
/// `asked`; a [`crate::Fault::Huge`] answer makes them long enough to
/// weigh about its size.
pub(crate) fn length(reply: &Reply, asked: Option<u64>, inputs: usize) -> usize {
    let configured = reply.dimensions as usize;
    let wanted = asked.and_then(|n| usize::try_from(n).ok()).unwrap_or(configured);
    match reply.huge {
        // About ten characters a number.
        Some(bytes) => wanted.max(bytes / 10 / inputs.max(1)),
        None => wanted,
    }
}

/// `POST /v1/embeddings`.
pub(crate) async fn openai(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    match openai::call(&shared, Api::OpenAiEmbeddings, uri, headers, &body) {
        Ok(call) => serve(&shared, &Embeddings { flavor: Flavor::OpenAi }, call).await,
        Err(refused) => *refused,
    }
}

/// OpenAI's (and Azure's) embeddings endpoint.
pub(crate) struct Embeddings {
    pub(crate) flavor: Flavor,
}

/// Each input's text (token ids written with commas) and token count.
fn inputs(input: Option<&Value>) -> Option<Vec<(String, u32)>> {
    let text = |t: &str| (t.to_owned(), serve::count(t.len().div_ceil(4).max(1)));
    let ids = |list: &[Value]| {
        let ids: Option<Vec<String>> = list.iter().map(|v| v.as_u64().map(|id| id.to_string())).collect();
        ids.map(|ids| (ids.join(","), serve::count(list.len())))
    };
    match input? {
        Value::String(t) => Some(vec![text(t)]),
        Value::Array(list) if list.is_empty() || list.len() > MAX_INPUTS => None,
        Value::Array(list) if list.iter().all(Value::is_u64) => ids(list).map(|one| vec![one]),
        Value::Array(list) => list
            .iter()
            .map(|item| match item {
                Value::String(t) => Some(text(t)),
                Value::Array(list) if !list.is_empty() => ids(list),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

impl Endpoint for Embeddings {
    fn read(&self, call: &Call, behavior: &Behavior) -> Result<Ask, Refused> {
        if self.flavor == Flavor::Azure {
            crate::azure::require_version(call)?;
        }
        let request = &call.request;
        let Some(inputs) = inputs(request.get("input")) else {
            return Err(Box::new(openai::invalid(
                "input",
                &format!("input must be a string, or a list of 1 to {MAX_INPUTS} strings or token-id lists"),
            )));
        };
        if let Some(asked) = request.get("dimensions") {
            let most = u64::from(behavior.embedding_dimensions);
            if !asked.as_u64().is_some_and(|n| (1..=most).contains(&n)) {
                return Err(Box::new(openai::invalid("dimensions", &format!("dimensions must be 1 to {most}"))));
            }
        }
        match request.get("encoding_format").and_then(Value::as_str) {
            None | Some("float" | "base64") => {}
            Some(_) => {
                return Err(Box::new(openai::invalid("encoding_format", "encoding_format must be float or base64")));
            }
        }
        Ok(Ask {
            prompt: inputs.iter().fold(0_u32, |sum, (_, n)| sum.saturating_add(*n)),
            answers: 1,
            ..Ask::default()
        })
    }

    fn failure(&self, failure: &Failure) -> Response {
        openai::failure(self.flavor, failure)
    }

    fn rate_limits(&self, limits: RateLimits, headers: &mut HeaderMap) {
        openai::rate_limits(limits, headers);
    }

    fn body(&self, call: &Call, ask: &Ask, reply: &Reply) -> Value {
        let request = &call.request;
        let inputs = inputs(request.get("input")).unwrap_or_default();
        let dimensions = length(reply, request.get("dimensions").and_then(Value::as_u64), inputs.len());
        let base64 = request.get("encoding_format").and_then(Value::as_str) == Some("base64");
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(index, (text, _))| {
                let vector = embedding(&call.model, text, dimensions);
                let encoded = if base64 { json!(self::base64(&vector)) } else { json!(vector) };
                json!({"object": "embedding", "index": index, "embedding": encoded})
            })
            .collect();
        json!({
            "object": "list",
            "data": data,
            "model": call.model,
            "usage": {"prompt_tokens": ask.prompt, "total_tokens": ask.prompt},
        })
    }

    fn script(&self, _: &Call, _: &Ask, _: &Reply) -> Script {
        unreachable_script()
    }
}

/// The script of an endpoint that never streams (its `read` never asks
/// for a stream): nothing.
pub(crate) fn unreachable_script() -> Script {
    Script {
        content_type: "text/event-stream",
        head: Vec::new(),
        content: Vec::new(),
        tail: Vec::new(),
        filler: Bytes::new(),
        error: Box::new(|_| Bytes::new()),
    }
}

#[cfg(test)]
mod tests;
