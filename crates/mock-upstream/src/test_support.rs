//! What the mock's tests share: a client posting JSON, an SSE parser (LF
//! or CRLF), and a wait for every streamed body to end.

use std::time::Duration;

use serde_json::Value;

use crate::MockUpstream;

/// Posts `body` to `url` with `headers`.
pub(crate) async fn post(url: &str, headers: &[(&str, &str)], body: &Value) -> reqwest::Response {
    let mut request = reqwest::Client::new().post(url).body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// Posts `body` and reads the answer as JSON: its status and body.
pub(crate) async fn call(url: &str, headers: &[(&str, &str)], body: &Value) -> (u16, Value) {
    let answer = post(url, headers, body).await;
    let status = answer.status().as_u16();
    let text = answer.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")))
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    /// Its `event:` name, if any.
    pub(crate) name: Option<String>,
    /// Its `data:`.
    pub(crate) data: String,
}

impl Event {
    /// The data as JSON.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {}", self.data))
    }
}

/// The events of an SSE body, whichever line ends it uses.
pub(crate) fn events(text: &str) -> Vec<Event> {
    text.replace("\r\n", "\n")
        .split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut event = Event { name: None, data: String::new() };
            for line in block.lines() {
                if let Some(name) = line.strip_prefix("event: ") {
                    event.name = Some(name.to_owned());
                } else if let Some(data) = line.strip_prefix("data: ") {
                    event.data.push_str(data);
                }
            }
            event
        })
        .collect()
}

/// Posts `body`, checks the answer is a 200 event stream, and parses it.
pub(crate) async fn stream(url: &str, headers: &[(&str, &str)], body: &Value) -> Vec<Event> {
    let answer = post(url, headers, body).await;
    assert_eq!(answer.status(), 200);
    let kind = answer.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(kind.as_deref(), Some("text/event-stream"));
    events(&answer.text().await.unwrap())
}

/// Waits (bounded) until the mock sends no body any more.
pub(crate) async fn no_body_left(mock: &MockUpstream) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while mock.bodies_in_flight() > 0 {
        assert!(std::time::Instant::now() < deadline, "a body is still being sent after its client left");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A provider whose chat route a test calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Provider {
    OpenAi,
    Anthropic,
    Gemini,
    Azure,
}

impl Provider {
    pub(crate) const ALL: [Provider; 4] = [Provider::OpenAi, Provider::Anthropic, Provider::Gemini, Provider::Azure];

    /// The URL of a chat call to `model`.
    pub(crate) fn url(self, mock: &MockUpstream, model: &str, stream: bool) -> String {
        let root = mock.root_url();
        match (self, stream) {
            (Provider::OpenAi, _) => format!("{}/chat/completions", mock.base_url()),
            (Provider::Anthropic, _) => format!("{root}/v1/messages"),
            (Provider::Gemini, false) => format!("{root}/v1beta/models/{model}:generateContent"),
            (Provider::Gemini, true) => format!("{root}/v1beta/models/{model}:streamGenerateContent?alt=sse"),
            (Provider::Azure, _) => {
                format!("{root}/openai/deployments/{model}/chat/completions?api-version=2024-10-21")
            }
        }
    }

    /// A chat request saying "hello there" to `model`.
    pub(crate) fn body(self, model: &str, stream: bool) -> Value {
        let messages = serde_json::json!([{"role": "user", "content": "hello there"}]);
        match self {
            Provider::OpenAi | Provider::Azure => {
                serde_json::json!({"model": model, "stream": stream, "messages": messages})
            }
            Provider::Anthropic => {
                serde_json::json!({"model": model, "stream": stream, "max_tokens": 256, "messages": messages})
            }
            Provider::Gemini => serde_json::json!({"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}),
        }
    }

    /// The headers of a call with `key`.
    pub(crate) fn headers(self, key: Option<&str>) -> Vec<(&'static str, String)> {
        let mut headers = Vec::new();
        if self == Provider::Anthropic {
            headers.push(("anthropic-version", "2023-06-01".to_owned()));
        }
        if let Some(key) = key {
            headers.push(match self {
                Provider::OpenAi => ("authorization", format!("Bearer {key}")),
                Provider::Anthropic => ("x-api-key", key.to_owned()),
                Provider::Gemini => ("x-goog-api-key", key.to_owned()),
                Provider::Azure => ("api-key", key.to_owned()),
            });
        }
        headers
    }

    /// A chat call to `model` with `key`, ready to send.
    pub(crate) fn request(
        self,
        mock: &MockUpstream,
        model: &str,
        stream: bool,
        key: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut request = reqwest::Client::new().post(self.url(mock, model, stream));
        for (name, value) in self.headers(key) {
            request = request.header(name, value);
        }
        request.body(self.body(model, stream).to_string())
    }

    /// Sends a chat call to `model` with `key`.
    pub(crate) async fn send(
        self,
        mock: &MockUpstream,
        model: &str,
        stream: bool,
        key: Option<&str>,
    ) -> reqwest::Response {
        self.request(mock, model, stream, key).send().await.unwrap()
    }
}

/// A JSON list of numbers as `f32`s.
pub(crate) fn floats(value: &Value) -> Vec<f32> {
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{e}: {value}"))
}
