//! Google's Gemini API: `POST /v1beta/models/{model}:generateContent`,
//! `:streamGenerateContent` (`?alt=sse`: `data:` events ended by CRLF
//! pairs, as Google sends them, no `[DONE]`; without it, a JSON array),
//! `:embedContent` and `:batchEmbedContents` (also under `/v1/models/…`
//! and `/models/…`). The key comes in `x-goog-api-key` or `?key=`; errors
//! are `{"error": {"code", "message", "status"}}` with Google's statuses,
//! including its 400 `API_KEY_INVALID` for a bad key and its 403 for none.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use crate::{
    behavior::{Behavior, KeyProblem, RateLimits},
    embeddings::{self, embedding},
    serve::{self, Ask, Call, Endpoint, Failure, Finish, Refused, Reply, Tokens, serve},
    server::{Api, Shared},
    tools::{self, ToolSpec},
    transport::Script,
};

/// The most candidates a request may ask for, as Gemini allows.
const MAX_CANDIDATES: u64 = 8;

/// The most embeddings one batch may ask for.
const MAX_BATCH: usize = 100;

/// `POST /v1beta/models/{model}:{action}`.
pub(crate) async fn models(State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let serial = shared.begin();
    let segment = serve::decode(uri.path().rsplit('/').next().unwrap_or_default());
    let Some((model, action)) = segment.rsplit_once(':') else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("models/{segment} is not a model and action"), None);
    };
    let generate = |stream| Generate { stream };
    let (api, endpoint) = match action {
        "generateContent" => (Api::GeminiGenerate, Action::Generate(generate(None))),
        "streamGenerateContent" => {
            let framing =
                if serve::query(&uri, "alt").as_deref() == Some("sse") { Framing::Sse } else { Framing::Array };
            (Api::GeminiGenerate, Action::Generate(generate(Some(framing))))
        }
        "embedContent" => (Api::GeminiEmbed, Action::Embed(Embed { batch: false })),
        "batchEmbedContents" => (Api::GeminiEmbed, Action::Embed(Embed { batch: true })),
        other => {
            let message = format!("Method not found: {other} is not an action of models/{model}");
            return error(StatusCode::NOT_FOUND, "NOT_FOUND", &message, None);
        }
    };
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return invalid("Invalid JSON payload received.");
    };
    let key = serve::header(&headers, "x-goog-api-key").map(str::to_owned).or_else(|| serve::query(&uri, "key"));
    let shown_key = key.clone().unwrap_or_default();
    let call = Call { api, model: model.to_owned(), uri, headers, request, key, shown_key, serial };
    match endpoint {
        Action::Generate(generate) => serve(&shared, &generate, call).await,
        Action::Embed(embed) => serve(&shared, &embed, call).await,
    }
}

enum Action {
    Generate(Generate),
    Embed(Embed),
}

/// A Google error body.
fn error(status: StatusCode, name: &str, message: &str, details: Option<Value>) -> Response {
    let mut body = json!({"error": {"code": status.as_u16(), "message": message, "status": name}});
    if let Some(details) = details {
        body["error"]["details"] = details;
    }
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn invalid(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message, None)
}

/// `failure` as Gemini answers it, on every action.
fn failure(failure: &Failure) -> Response {
    let key_invalid = |message: &str| {
        let details = json!([{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        }]);
        error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message, Some(details))
    };
    match failure {
        Failure::ServerError => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "An internal error has occurred. Please retry or report in \
             https://developers.generativeai.google/guide/troubleshooting",
            None,
        ),
        Failure::Overloaded => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
            None,
        ),
        // Google sends no `retry-after`: the delay is a `RetryInfo` detail.
        Failure::RateLimited { retry_after_secs } => error(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details.",
            Some(json!([{
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": format!("{retry_after_secs}s"),
            }])),
        ),
        Failure::Timeout => error(
            StatusCode::GATEWAY_TIMEOUT,
            "DEADLINE_EXCEEDED",
            "Deadline expired before operation could complete.",
            None,
        ),
        Failure::ContextWindow { window, needed, .. } => invalid(&format!(
            "The input token count ({needed}) exceeds the maximum number of tokens allowed ({window})."
        )),
        Failure::BadRequest | Failure::PromptBlocked => invalid("Request contains an invalid argument."),
        Failure::Unauthorized { problem: KeyProblem::Missing, .. } => error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key \
             or other form of API consumer identity to call this API.",
            None,
        ),
        Failure::Unauthorized { problem: KeyProblem::Revoked, .. } => {
            key_invalid("API key expired. Please renew the API key.")
        }
        Failure::Unauthorized { .. } => key_invalid("API key not valid. Please pass a valid API key."),
    }
}

/// How a stream is written: `?alt=sse`, or Google's default JSON array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Sse,
    Array,
}

impl Framing {
    /// The `at`-th item of the stream (0 opens the array).
    fn frame(self, at: usize, data: &Value) -> Bytes {
        Bytes::from(match (self, at) {
            (Framing::Sse, _) => format!("data: {data}\r\n\r\n"),
            (Framing::Array, 0) => format!("[{data}"),
            (Framing::Array, _) => format!(",\r\n{data}"),
        })
    }
}

/// `generateContent` (`stream: None`) and `streamGenerateContent`.
struct Generate {
    stream: Option<Framing>,
}

/// Prompt tokens: a quarter of the characters of every part's text, plus
/// one per content.
fn prompt_tokens(request: &Value) -> u32 {
    let contents = request.get("contents").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let chars = serve::text_chars(request.pointer("/systemInstruction/parts"))
        + contents.iter().map(|c| serve::text_chars(c.get("parts"))).sum::<usize>();
    serve::count(chars.div_ceil(4) + contents.len())
}

/// The function to call: `tools[].functionDeclarations[]`, with
/// `toolConfig.functionCallingConfig` forbidding calls (`mode: NONE`) or
/// allowing only some (`allowedFunctionNames`).
fn tool(request: &Value) -> Option<ToolSpec> {
    let tools = request.get("tools").and_then(Value::as_array)?;
    let config = request.pointer("/toolConfig/functionCallingConfig");
    let forbidden = config.and_then(|c| c.get("mode")).and_then(Value::as_str) == Some("NONE");
    let forced = config.and_then(|c| c.pointer("/allowedFunctionNames/0")).and_then(Value::as_str);
    let null = &Value::Null;
    let declared =
        tools.iter().filter_map(|t| t.get("functionDeclarations").and_then(Value::as_array)).flatten().map(|f| {
            (
                f.get("name").unwrap_or(null),
                f.get("parameters").or_else(|| f.get("parametersJsonSchema")).unwrap_or(null),
            )
        });
    tools::pick(declared, tools::Choice::of(forced, forbidden))
}

fn usage(tokens: &Tokens, candidates: u32) -> Value {
    let total = tokens.prompt.saturating_add(candidates).saturating_add(tokens.reasoning);
    let mut usage =
        json!({"promptTokenCount": tokens.prompt, "candidatesTokenCount": candidates, "totalTokenCount": total});
    if tokens.cached > 0 {
        usage["cachedContentTokenCount"] = json!(tokens.cached);
    }
    if tokens.reasoning > 0 {
        usage["thoughtsTokenCount"] = json!(tokens.reasoning);
    }
    usage
}

fn safety_ratings(blocked: bool) -> Value {
    let probability = if blocked { "HIGH" } else { "NEGLIGIBLE" };
    json!([
        {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": probability, "blocked": blocked},
    ])
}

/// `candidates` for `answers` answers of `parts` (none: a filtered
/// answer), with `finish` when they end here.
fn candidates(answers: u32, parts: &Value, finish: Option<Finish>) -> Value {
    let reason = finish.map(|f| match f {
        Finish::Stop | Finish::ToolUse => "STOP",
        Finish::Length => "MAX_TOKENS",
        Finish::Filtered | Finish::Blocked => "SAFETY",
    });
    let candidate = |index: u32| {
        if finish == Some(Finish::Filtered) {
            return json!({"finishReason": reason, "index": index, "safetyRatings": safety_ratings(true)});
        }
        let mut candidate = json!({"content": {"role": "model", "parts": parts}, "index": index});
        if let Some(reason) = reason {
            candidate["finishReason"] = json!(reason);
        }
        candidate
    };
    Value::Array((0..answers.max(1)).map(candidate).collect())
}

/// One `GenerateContentResponse` of `call`.
fn response(call: &Call, reply: &Reply, candidates: Value, completion: u32) -> Value {
    let mut body = json!({
        "usageMetadata": usage(&reply.tokens, completion),
        "modelVersion": call.model,
        "responseId": format!("mock{}", call.serial),
    });
    if reply.finish == Finish::Blocked {
        body["promptFeedback"] = json!({"blockReason": "SAFETY", "safetyRatings": safety_ratings(true)});
    } else {
        body["candidates"] = candidates;
    }
    body
}

fn tool_parts(reply: &Reply) -> Option<Value> {
    reply.tool_call.as_ref().map(|tool| json!([{"functionCall": {"name": tool.name, "args": tool.arguments}}]))
}

impl Endpoint for Generate {
    fn read(&self, call: &Call, _: &Behavior) -> Result<Ask, Refused> {
        let request = &call.request;
        if request.get("contents").and_then(Value::as_array).is_none_or(Vec::is_empty) {
            return Err(Box::new(invalid("* GenerateContentRequest.contents: contents is not specified")));
        }
        let answers = request.pointer("/generationConfig/candidateCount").map_or(Some(1), Value::as_u64);
        let Some(answers) = answers.filter(|n| (1..=MAX_CANDIDATES).contains(n)) else {
            return Err(Box::new(invalid(&format!("candidateCount must be 1 to {MAX_CANDIDATES}"))));
        };
        Ok(Ask {
            prompt: prompt_tokens(request),
            wanted: serve::number(request, "/generationConfig/maxOutputTokens", 0),
            answers: u32::try_from(answers).unwrap_or(1),
            streaming: self.stream.is_some(),
            tool: tool(request),
        })
    }

    fn failure(&self, f: &Failure) -> Response {
        failure(f)
    }

    fn rate_limits(&self, _: RateLimits, _: &mut HeaderMap) {
        // Gemini sends no rate-limit headers.
    }

    fn blocks_in_answer(&self) -> bool {
        true
    }

    fn body(&self, call: &Call, ask: &Ask, reply: &Reply) -> Value {
        let parts = tool_parts(reply).unwrap_or_else(|| json!([{"text": reply.text}]));
        let candidates = candidates(ask.answers, &parts, Some(reply.finish));
        response(call, reply, candidates, reply.tokens.completion)
    }

    fn script(&self, call: &Call, ask: &Ask, reply: &Reply) -> Script {
        let framing = self.stream.unwrap_or(Framing::Sse);
        let whole = reply.tokens.completion;
        let content: Vec<Bytes> = match (tool_parts(reply), reply.finish) {
            (Some(parts), finish) => vec![response(call, reply, candidates(ask.answers, &parts, Some(finish)), whole)],
            (None, Finish::Filtered | Finish::Blocked) => {
                vec![response(call, reply, candidates(ask.answers, &Value::Null, Some(reply.finish)), whole)]
            }
            (None, finish) => {
                let pieces = reply.text_pieces();
                let last = pieces.len().saturating_sub(1);
                let so_far = |i: usize| {
                    let share = u64::from(whole) * (i as u64 + 1) / pieces.len().max(1) as u64;
                    u32::try_from(share).unwrap_or(whole)
                };
                let piece = |(i, text): (usize, &String)| {
                    let ends = (i == last).then_some(finish);
                    response(call, reply, candidates(ask.answers, &json!([{"text": text}]), ends), so_far(i))
                };
                pieces.iter().enumerate().map(piece).collect()
            }
        }
        .iter()
        .enumerate()
        .map(|(i, data)| framing.frame(i, data))
        .collect();
        let tail = if framing == Framing::Array { vec![Bytes::from_static(b"]")] } else { Vec::new() };
        let filler = json!({"candidates": [{"content": {"role": "model", "parts": [{"text": " lorem"}]}, "index": 0}]});
        Script {
            content_type: if framing == Framing::Array { "application/json" } else { "text/event-stream" },
            head: Vec::new(),
            content,
            tail,
            // An endless array stream never opens its array: it never closes either.
            filler: framing.frame(1, &filler),
            error: Box::new(move |sent| {
                let error = json!({"error": {
                    "code": 500, "message": "An internal error has occurred.", "status": "INTERNAL",
                }});
                let event = framing.frame(sent, &error);
                if framing == Framing::Array { [event, Bytes::from_static(b"]")].concat().into() } else { event }
            }),
        }
    }
}

/// `embedContent` (one `content`) and `batchEmbedContents` (`requests`).
struct Embed {
    batch: bool,
}

impl Embed {
    /// The requests embedded: each one's text and `outputDimensionality`.
    fn requests<'a>(&self, request: &'a Value) -> Option<Vec<(String, Option<&'a Value>)>> {
        let one = |r: &'a Value| {
            let parts = r.pointer("/content/parts").and_then(Value::as_array)?;
            let text: String = parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect();
            Some((text, r.get("outputDimensionality")))
        };
        if !self.batch {
            return one(request).map(|r| vec![r]);
        }
        let requests = request.get("requests").and_then(Value::as_array)?;
        if requests.is_empty() || requests.len() > MAX_BATCH {
            return None;
        }
        requests.iter().map(one).collect()
    }
}

impl Endpoint for Embed {
    fn read(&self, call: &Call, behavior: &Behavior) -> Result<Ask, Refused> {
        let Some(requests) = self.requests(&call.request) else {
            let field = if self.batch { "requests (1 to 100, each with content.parts)" } else { "content.parts" };
            return Err(Box::new(invalid(&format!("* EmbedContentRequest: {field} is not specified"))));
        };
        let most = u64::from(behavior.embedding_dimensions);
        for (_, asked) in &requests {
            if asked.is_some_and(|n| !n.as_u64().is_some_and(|n| (1..=most).contains(&n))) {
                return Err(Box::new(invalid(&format!("outputDimensionality must be 1 to {most}"))));
            }
        }
        let tokens = requests.iter().map(|(text, _)| text.len().div_ceil(4).max(1)).sum();
        Ok(Ask { prompt: serve::count(tokens), answers: 1, ..Ask::default() })
    }

    fn failure(&self, f: &Failure) -> Response {
        failure(f)
    }

    fn rate_limits(&self, _: RateLimits, _: &mut HeaderMap) {}

    fn body(&self, call: &Call, _: &Ask, reply: &Reply) -> Value {
        let requests = self.requests(&call.request).unwrap_or_default();
        let count = requests.len();
        let values = |(text, asked): &(String, Option<&Value>)| {
            let length = embeddings::length(reply, asked.and_then(Value::as_u64), count);
            json!({"values": embedding(&call.model, text, length)})
        };
        if self.batch {
            json!({"embeddings": requests.iter().map(values).collect::<Vec<_>>()})
        } else {
            json!({"embedding": requests.first().map(values).unwrap_or_default()})
        }
    }

    fn script(&self, _: &Call, _: &Ask, _: &Reply) -> Script {
        embeddings::unreachable_script()
    }
}

#[cfg(test)]
mod tests;
