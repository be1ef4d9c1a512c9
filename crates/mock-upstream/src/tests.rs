//! The mock's own tests: fault parsing, rate-limit headers, the key
//! policy and the recording, and the transport-level faults on a real
//! socket (over the OpenAI chat route; the provider modules test their
//! shapes).

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::{
    Api, Behavior, Fault, KeyPolicy, MockUpstream, RateLimits, parse_fault, prompt_tokens,
    test_support::{self, no_body_left},
};

#[test]
fn faults_parse_and_bad_specs_say_why() {
    let check = |spec: &str, expect: Fault| assert_eq!(parse_fault(spec), Ok(expect), "{spec}");
    check("429:3", Fault::RateLimited { retry_after_secs: 3 });
    check("cut:2", Fault::CutAfter(2));
    check("hang:50", Fault::Hang(Duration::from_millis(50)));
    check("slow_headers:250", Fault::SlowHeaders(Duration::from_millis(250)));
    check("drip:20", Fault::SlowDrip { interval: Duration::from_millis(20) });
    check("midstream_error:3", Fault::MidStreamError(3));
    check("huge:1024", Fault::Huge(1024));
    let refused = |spec: &str, says: &str| {
        let err = parse_fault(spec).unwrap_err();
        assert!(err.contains(says), "{spec}: {err}");
    };
    refused("hang", "hang needs :ms");
    refused("drip", "drip needs :ms");
    refused("slow_headers:soon", "slow_headers: ms must be a whole number");
    refused("midstream_error:99999999999", "midstream_error: too many chunks");
    refused("teapot", "unknown fault \"teapot\"");
}

#[tokio::test]
async fn rate_limits_are_reported_on_every_answer_of_their_model_only() {
    let mock = MockUpstream::start().await.unwrap();
    let limits = RateLimits { limit_requests: 100, remaining_requests: 1, reset_requests: Duration::from_secs(30) };
    mock.set("near", Behavior { rate_limits: Some(limits), ..Behavior::default() });
    mock.fail_next("near", Fault::ServerError, 1);
    let client = reqwest::Client::new();
    let url = format!("{}/chat/completions", mock.base_url());
    let call = |model: &str| {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string();
        client.post(&url).body(body).send()
    };
    let header = |r: &reqwest::Response, name: &str| {
        r.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
    };
    for status in [500, 200] {
        let answer = call("near").await.unwrap();
        assert_eq!(answer.status(), status);
        let got = ["limit", "remaining", "reset"].map(|h| header(&answer, &format!("x-ratelimit-{h}-requests")));
        assert_eq!(got, ["100", "1", "30000ms"], "on a {status}");
    }
    let other = call("far").await.unwrap();
    assert_eq!(other.status(), 200);
    assert!(!other.headers().contains_key("x-ratelimit-remaining-requests"));
    mock.shutdown().await;
}

#[test]
fn prompt_tokens_count_a_quarter_of_the_characters_plus_one_per_message() {
    let request = json!({"messages": [{"role": "user", "content": "12345678"}, {"role": "user", "content": "1"}]});
    assert_eq!(prompt_tokens(&request), 2 + 1 + 2);
}

// Slow headers, drips and mid-stream errors, on a real socket.

fn chat_body(model: &str, stream: bool) -> String {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}).to_string()
}

async fn post(mock: &MockUpstream, model: &str, stream: bool) -> reqwest::Response {
    let url = format!("{}/chat/completions", mock.base_url());
    reqwest::Client::new().post(url).body(chat_body(model, stream)).send().await.unwrap()
}

/// The data of each SSE event in `text`.
fn events(text: &str) -> Vec<String> {
    test_support::events(text).into_iter().map(|e| e.data).collect()
}

#[tokio::test]
async fn slow_headers_accept_the_connection_then_hold_the_head_back_and_answer_normally() {
    let mock = MockUpstream::start().await.unwrap();
    let delay = Duration::from_millis(600);
    mock.fail_next("slow", Fault::SlowHeaders(delay), 2);
    let (addr, body) = (mock.addr(), chat_body("slow", false));
    let raw = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut socket = std::net::TcpStream::connect(addr).unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        socket.write_all(head.as_bytes()).unwrap();
        socket.write_all(body.as_bytes()).unwrap();
        // Accepted and read, but not a byte back before the delay.
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut byte = [0_u8; 1];
        let early = socket.read(&mut byte);
        assert!(early.is_err(), "an answer came before the delay: {early:?}");
        socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut answer = String::new();
        socket.read_to_string(&mut answer).unwrap();
        answer
    })
    .await
    .unwrap();
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(raw.contains("\"object\":\"chat.completion\""), "{raw}");
    // Streaming: the head waits as long, then the whole stream comes.
    let started = std::time::Instant::now();
    let answer = post(&mock, "slow", true).await;
    assert!(started.elapsed() >= delay);
    assert_eq!(answer.status(), 200);
    let events = events(&answer.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    // Unlike a hang, which ends in a 504.
    mock.fail_next("hung", Fault::Hang(Duration::from_millis(10)), 1);
    assert_eq!(post(&mock, "hung", false).await.status(), 504);
    mock.shutdown().await;
}

#[tokio::test]
async fn a_drip_stream_never_ends_and_stops_when_its_client_leaves() {
    let mock = MockUpstream::start().await.unwrap();
    let interval = Duration::from_millis(20);
    mock.fail_next("drip", Fault::SlowDrip { interval }, 1);
    let started = std::time::Instant::now();
    let answer = post(&mock, "drip", true).await;
    assert_eq!(answer.status(), 200);
    let mut body = answer.bytes_stream();
    let mut text = String::new();
    // Past the normal stream's length (4 chunks): it goes on and on.
    while events(&text).len() < 12 {
        let piece = body.next().await.unwrap().unwrap();
        text.push_str(std::str::from_utf8(&piece).unwrap());
    }
    let got = events(&text);
    assert!(started.elapsed() >= interval * 10, "12 events came in {:?}", started.elapsed());
    assert!(got[0].contains("\"role\":\"assistant\""), "{got:?}");
    assert!(got[1..].iter().all(|e| e.contains("\"content\":\" lorem\"")), "{got:?}");
    assert_eq!(mock.bodies_in_flight(), 1);
    drop(body);
    no_body_left(&mock).await;
    mock.shutdown().await;
}

#[tokio::test]
async fn a_drip_body_comes_a_byte_at_a_time_and_stops_when_its_client_leaves() {
    let mock = MockUpstream::start().await.unwrap();
    let interval = Duration::from_millis(2);
    mock.fail_next("drip", Fault::SlowDrip { interval }, 1);
    let started = std::time::Instant::now();
    let answer = post(&mock, "drip", false).await;
    assert_eq!(answer.status(), 200);
    let mut body = answer.bytes_stream();
    let (mut bytes, mut pieces) = (Vec::new(), 0_u32);
    while let Some(piece) = body.next().await {
        bytes.extend_from_slice(&piece.unwrap());
        pieces += 1;
    }
    let value: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(value["object"], "chat.completion");
    // Each byte waited its interval (a timer never fires early), so the
    // body took at least that long, and came in pieces.
    let bytes_sent = u32::try_from(bytes.len()).unwrap();
    assert!(started.elapsed() >= interval * bytes_sent, "{} bytes in {:?}", bytes.len(), started.elapsed());
    assert!(pieces > 1, "{pieces} pieces");
    no_body_left(&mock).await;
    // Abandoned half way, it stops.
    mock.fail_next("drip", Fault::SlowDrip { interval: Duration::from_millis(20) }, 1);
    let mut body = post(&mock, "drip", false).await.bytes_stream();
    body.next().await.unwrap().unwrap();
    assert_eq!(mock.bodies_in_flight(), 1);
    drop(body);
    no_body_left(&mock).await;
    mock.shutdown().await;
}

#[tokio::test]
async fn a_midstream_error_is_an_openai_error_event_after_n_chunks_then_a_clean_end() {
    let mock = MockUpstream::start().await.unwrap();
    mock.fail_next("mid", Fault::MidStreamError(2), 2);
    let answer = post(&mock, "mid", true).await;
    assert_eq!(answer.status(), 200);
    // `text` fails if the connection broke: the body ends cleanly.
    let got = events(&answer.text().await.unwrap());
    assert_eq!(got.len(), 1 + 2 + 1, "{got:?}");
    assert!(got[0].contains("\"role\":\"assistant\""), "{got:?}");
    assert!(got[1..3].iter().all(|e| e.contains("\"content\"")), "{got:?}");
    let error: Value = serde_json::from_str(&got[3]).unwrap();
    assert_eq!(error["error"]["type"], "server_error", "{error}");
    assert_eq!(error["error"]["code"], "server_error", "{error}");
    assert!(error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
    // Not streaming: the same failure before any answer, a 500.
    assert_eq!(post(&mock, "mid", false).await.status(), 500);
    // The fault is spent: the next stream ends normally.
    let got = events(&post(&mock, "mid", true).await.text().await.unwrap());
    assert_eq!(got.last().map(String::as_str), Some("[DONE]"), "{got:?}");
    no_body_left(&mock).await;
    mock.shutdown().await;
}

#[test]
fn the_new_faults_parse() {
    let check = |spec: &str, expect: Fault| assert_eq!(parse_fault(spec), Ok(expect), "{spec}");
    check("overloaded", Fault::Overloaded);
    check("blocked", Fault::PromptBlocked);
    check("filtered", Fault::AnswerFiltered);
}

#[test]
fn the_key_policy_refuses_revoked_then_rate_limited_then_unknown_keys() {
    use crate::behavior::KeyProblem;
    let policy = KeyPolicy {
        accepted: vec!["a".into(), "b".into()],
        rate_limited: vec!["slow".into()],
        revoked: vec!["old".into(), "b".into()],
        ..KeyPolicy::default()
    };
    let check = |key: Option<&str>, expect: Result<(), KeyProblem>| assert_eq!(policy.admit(key), expect, "{key:?}");
    check(Some("a"), Ok(()));
    check(Some("b"), Err(KeyProblem::Revoked));
    check(Some("old"), Err(KeyProblem::Revoked));
    check(Some("slow"), Err(KeyProblem::RateLimited));
    check(Some("c"), Err(KeyProblem::Wrong));
    check(None, Err(KeyProblem::Missing));
    // Nothing accepted listed: any other key, or none, passes.
    let open = KeyPolicy { rate_limited: vec!["slow".into()], ..KeyPolicy::default() };
    assert_eq!(open.admit(None), Ok(()));
    assert_eq!(open.admit(Some("anything")), Ok(()));
    assert_eq!(open.admit(Some("slow")), Err(KeyProblem::RateLimited));
}

#[tokio::test]
async fn every_provider_answers_each_key_as_the_policy_says_in_its_own_status() {
    use test_support::Provider::{self, Anthropic, Azure, Gemini, OpenAi};
    let mock = MockUpstream::start().await.unwrap();
    mock.set_keys(KeyPolicy {
        accepted: vec!["good".into(), "spare".into()],
        rate_limited: vec!["busy".into()],
        retry_after_secs: 7,
        revoked: vec!["gone".into()],
    });
    let check = async |provider: Provider, key: Option<&str>, status: u16| {
        let answer = provider.send(&mock, "m", false, key).await;
        assert_eq!(answer.status(), status, "{provider:?} with {key:?}");
        if status == 429 && provider != Gemini {
            assert_eq!(answer.headers()["retry-after"], "7", "{provider:?}");
        }
    };
    for provider in Provider::ALL {
        check(provider, Some("good"), 200).await;
        check(provider, Some("spare"), 200).await;
        check(provider, Some("busy"), 429).await;
    }
    for (provider, revoked, wrong, missing) in
        [(OpenAi, 401, 401, 401), (Anthropic, 401, 401, 401), (Gemini, 400, 400, 403), (Azure, 401, 401, 401)]
    {
        check(provider, Some("gone"), revoked).await;
        check(provider, Some("bad"), wrong).await;
        check(provider, None, missing).await;
    }
    // Gemini also takes the key in the query.
    let url = format!("{}?key=good", Gemini.url(&mock, "m", false));
    let (status, _) = test_support::call(&url, &[], &Gemini.body("m", false)).await;
    assert_eq!(status, 200);
    assert_eq!((mock.key_hits("good"), mock.key_hits("busy"), mock.key_hits("gone")), (5, 4, 4));
    // `require_key` narrows the accepted keys and keeps the others.
    mock.require_key("spare");
    check(OpenAi, Some("good"), 401).await;
    check(OpenAi, Some("spare"), 200).await;
    check(OpenAi, Some("busy"), 429).await;
    assert_eq!(mock.keys().accepted, ["spare"]);
    mock.shutdown().await;
}

#[tokio::test]
async fn each_fault_answers_with_each_providers_status() {
    use test_support::Provider::{Anthropic, Azure, Gemini, OpenAi};
    let mock = MockUpstream::start().await.unwrap();
    let check = async |fault: Fault, statuses: [u16; 4]| {
        for (provider, status) in [OpenAi, Anthropic, Gemini, Azure].into_iter().zip(statuses) {
            mock.fail_next("m", fault, 1);
            let answer = provider.send(&mock, "m", false, None).await;
            assert_eq!(answer.status(), status, "{fault:?} on {provider:?}");
            let body: Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
            assert!(body.is_object(), "{fault:?} on {provider:?}: {body}");
        }
    };
    check(Fault::ServerError, [500, 500, 500, 500]).await;
    check(Fault::Overloaded, [503, 529, 503, 503]).await;
    check(Fault::RateLimited { retry_after_secs: 2 }, [429, 429, 429, 429]).await;
    check(Fault::ContextWindow, [400, 400, 400, 400]).await;
    check(Fault::BadRequest, [400, 400, 400, 400]).await;
    check(Fault::Unauthorized, [401, 401, 400, 401]).await;
    check(Fault::PromptBlocked, [400, 200, 200, 400]).await;
    check(Fault::AnswerFiltered, [200, 200, 200, 200]).await;
    check(Fault::Hang(Duration::from_millis(5)), [504, 504, 504, 504]).await;
    check(Fault::MidStreamError(1), [500, 500, 500, 500]).await;
    // Spent: the next call of each is answered.
    for provider in [OpenAi, Anthropic, Gemini, Azure] {
        assert_eq!(provider.send(&mock, "m", false, None).await.status(), 200, "{provider:?}");
    }
    mock.shutdown().await;
}

#[tokio::test]
async fn transport_faults_act_alike_on_every_provider() {
    use test_support::Provider;
    let mock = MockUpstream::start().await.unwrap();
    for provider in Provider::ALL {
        // A reset: no answer at all.
        mock.fail_next("m", Fault::Reset, 1);
        let sent = provider.request(&mock, "m", false, None).send().await;
        let answered = match sent {
            Ok(answer) => answer.bytes().await.ok(),
            Err(_) => None,
        };
        assert_eq!(answered, None, "{provider:?}: a reset answered");
        // A cut stream: some content, then the connection breaks.
        mock.fail_next("m", Fault::CutAfter(1), 1);
        let answer = provider.send(&mock, "m", true, None).await;
        assert_eq!(answer.status(), 200, "{provider:?}");
        assert!(answer.text().await.is_err(), "{provider:?}: the cut stream ended cleanly");
        // A drip: the normal body, a byte at a time.
        mock.fail_next("m", Fault::SlowDrip { interval: Duration::ZERO }, 1);
        let answer = provider.send(&mock, "m", false, None).await;
        let body: Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
        assert!(body.is_object(), "{provider:?}: {body}");
        // A huge stream: its first event alone is over the size.
        mock.fail_next("m", Fault::Huge(100_000), 1);
        let got = test_support::events(&provider.send(&mock, "m", true, None).await.text().await.unwrap());
        assert_eq!(got.len(), 1, "{provider:?}");
        assert!(got[0].data.len() > 100_000, "{provider:?}");
        // A huge body.
        mock.fail_next("m", Fault::Huge(100_000), 1);
        let body = provider.send(&mock, "m", false, None).await.text().await.unwrap();
        assert!(body.len() > 100_000 && serde_json::from_str::<Value>(&body).is_ok(), "{provider:?}");
    }
    no_body_left(&mock).await;
    mock.shutdown().await;
}

#[tokio::test]
async fn every_request_is_recorded_with_its_route_uri_headers_and_body_the_latest_hundred_kept() {
    use test_support::Provider::{Anthropic, Azure, Gemini, OpenAi};
    let mock = MockUpstream::start().await.unwrap();
    for (provider, model, api) in [
        (OpenAi, "gpt", Api::OpenAiChat),
        (Anthropic, "claude", Api::AnthropicMessages),
        (Gemini, "gemini", Api::GeminiGenerate),
        (Azure, "deploy", Api::AzureChat),
    ] {
        assert_eq!(provider.send(&mock, model, false, Some("k")).await.status(), 200);
        let recorded = mock.last_recorded(model).unwrap();
        assert_eq!(recorded.api, api);
        assert!(provider.url(&mock, model, false).ends_with(&recorded.uri), "{}", recorded.uri);
        assert_eq!(recorded.body, provider.body(model, false));
        assert_eq!(mock.last_request(model), Some(provider.body(model, false)));
        let key = ["authorization", "x-api-key", "x-goog-api-key", "api-key"]
            .iter()
            .find_map(|h| recorded.headers.get(*h))
            .map(|v| v.to_str().unwrap().trim_start_matches("Bearer ").to_owned());
        assert_eq!(key.as_deref(), Some("k"), "{provider:?}");
        assert_eq!(mock.last_headers(model).unwrap(), recorded.headers);
    }
    // Refused requests are recorded too: what the gateway sent is there to see.
    let (status, _) =
        test_support::call(&Anthropic.url(&mock, "claude", false), &[], &json!({"model": "claude"})).await;
    assert_eq!(status, 400);
    assert_eq!(mock.last_request("claude"), Some(json!({"model": "claude"})));
    assert_eq!(mock.hits("claude"), 2);
    // Bounded: the latest hundred.
    for i in 0..105 {
        let mut body = OpenAi.body("many", false);
        body["seq"] = json!(i);
        test_support::call(&OpenAi.url(&mock, "many", false), &[], &body).await;
    }
    let kept = mock.recorded("many");
    assert_eq!((kept.len(), mock.hits("many")), (100, 105));
    assert_eq!((kept[0].body["seq"].clone(), kept[99].body["seq"].clone()), (json!(5), json!(104)));
    assert!(mock.recorded("nobody").is_empty());
    mock.shutdown().await;
}
