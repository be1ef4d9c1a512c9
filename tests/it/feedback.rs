//! Request ids and user ratings through the gateway: the real server on
//! 127.0.0.1 (port 0), a real SQLite file and the mock upstream. An id is
//! echoed on every answer and written with every attempt of its request;
//! `POST /v1/feedback` rates an answer by that id, and the rating reaches
//! the performance row, the report and the monitor; `GET /v1/admin/report`
//! reads any range of the history, grouped as asked.

use std::time::Duration;

use crate::support::{Running, now_ms, validated};
use modelfleet::{Fleet, budget::rfc3339, config::Config, errors::ErrorClass, store::PerfRecord};
use modelfleet_mock_upstream::{Behavior, Fault, MockUpstream};
use reqwest::header::HeaderValue;
use serde_json::{Value, json};

const MOCK_KEY: &str = "sk-mock-upstream-secret";
const CLIENT_KEY: &str = "mf-client-secret-1";
const ADMIN_KEY: &str = "mf-admin-secret-2";
const OTHER_KEY: &str = "mf-other-secret-3";

fn env(var: &str) -> Option<String> {
    match var {
        "MOCK_KEY" => Some(MOCK_KEY.into()),
        "KEY_CLIENT" => Some(CLIENT_KEY.into()),
        "KEY_ADMIN" => Some(ADMIN_KEY.into()),
        "KEY_OTHER" => Some(OTHER_KEY.into()),
        _ => None,
    }
}

/// The keys: `app` (client), `other` (client), `ops` (admin).
const KEYS: &str = "\n[[server.api_keys]]\nname = \"app\"\nkey_env = \"KEY_CLIENT\"\nrole = \"client\"\n\
                    \n[[server.api_keys]]\nname = \"other\"\nkey_env = \"KEY_OTHER\"\nrole = \"client\"\n\
                    \n[[server.api_keys]]\nname = \"ops\"\nkey_env = \"KEY_ADMIN\"\nrole = \"admin\"\n";

/// A `[[models]]` entry on the mock provider speaking the languages the
/// prompts below are in (a language requirement is a hard constraint).
fn model(id: &str, fallbacks: &[&str]) -> String {
    let fallbacks: Vec<String> = fallbacks.iter().map(|f| format!("{f:?}")).collect();
    format!(
        "\n[[models]]\nid = \"{id}\"\nprovider = \"mock\"\ncontext_window = 8192\ninput_price_per_mtok = \
         \"0.50\"\noutput_price_per_mtok = \"1.50\"\nquality = 0.7\nlanguages = [\"en\", \"fr\", \"ru\", \
         \"de\"]\ncategories = [\"general\"]\nfallbacks = [{}]\n",
        fallbacks.join(", ")
    )
}

/// `first` falls back to `second`; the keys of [`KEYS`]; `body` after.
fn config(mock: &MockUpstream, dir: &tempfile::TempDir, body: &str) -> Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n{KEYS}{}{}{body}\n[store]\npath = \"{}\"\nbatch_wait_ms = \
         5\n\n[[providers]]\nname = \"mock\"\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \
         \"MOCK_KEY\"\nconnect_timeout_ms = 500\nrequest_timeout_ms = 1500\n\n[retry]\nmax_attempts = \
         2\ninitial_backoff_ms = 1\nmax_backoff_ms = 5\ndeadline_ms = 5000\n",
        model("first", &["second"]),
        model("second", &[]),
        dir.path().join("fleet.db").display(),
        mock.base_url()
    );
    validated(&text, dir.path(), env)
}

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

/// A chat request with the app key and, if given, an `x-request-id`.
async fn send_chat(gateway: &Running, id: Option<HeaderValue>, body: &Value) -> reqwest::Response {
    let mut request =
        reqwest::Client::new().post(format!("{}/v1/chat/completions", gateway.url)).bearer_auth(CLIENT_KEY).json(body);
    if let Some(id) = id {
        request = request.header("x-request-id", id);
    }
    request.send().await.unwrap()
}

async fn rate(gateway: &Running, key: Option<&str>, body: &Value) -> reqwest::Response {
    let mut request = reqwest::Client::new().post(format!("{}/v1/feedback", gateway.url)).json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

async fn report(gateway: &Running, key: Option<&str>, query: &str) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(format!("{}/v1/admin/report{query}", gateway.url));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

fn header<'r>(response: &'r reqwest::Response, name: &str) -> &'r str {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The id the gateway answered with.
fn request_id(response: &reqwest::Response) -> String {
    header(response, "x-request-id").to_owned()
}

/// Status and JSON body of a response.
async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

/// Status and `error.code` of a refusal, with its message.
async fn refusal(response: reqwest::Response) -> (u16, String, String) {
    let (status, body) = answer(response).await;
    let text = |field: &str| body["error"][field].as_str().unwrap_or_else(|| panic!("{body}")).to_owned();
    (status, text("code"), text("message"))
}

/// The stored performance rows of request `id`, in attempt order, once
/// `count` of them are committed (a stream's row is written after its last
/// event, so it is polled for, at most two seconds).
async fn rows_of(fleet: &Fleet, id: &str, count: usize) -> Vec<PerfRecord> {
    let mut rows = Vec::new();
    for _ in 0..200 {
        fleet.store().flush().unwrap();
        rows = fleet.store().perf_log(None, 0, now_ms() + 60_000, 10_000).unwrap();
        rows.retain(|r| r.request_id.as_deref() == Some(id));
        if rows.len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rows.sort_by_key(|r| r.attempt);
    assert_eq!(rows.len(), count, "rows of {id}: {rows:?}");
    rows
}

/// `id` is a UUID v7 made between `from_ms` and `to_ms`: lowercase
/// hyphenated hex, version 7, variant `10`, its timestamp in range.
#[track_caller]
fn assert_uuid_v7(id: &str, from_ms: u64, to_ms: u64) {
    assert_eq!(id.len(), 36, "{id:?}");
    let dashes: Vec<usize> = id.match_indices('-').map(|(at, _)| at).collect();
    assert_eq!(dashes, [8, 13, 18, 23], "{id}");
    assert!(id.chars().all(|c| c == '-' || matches!(c, '0'..='9' | 'a'..='f')), "lowercase hex: {id}");
    assert_eq!(id.as_bytes()[14], b'7', "version: {id}");
    assert!(matches!(id.as_bytes()[19], b'8' | b'9' | b'a' | b'b'), "variant: {id}");
    let stamp = u64::from_str_radix(&id[..13].replace('-', ""), 16).unwrap();
    assert!((from_ms..=to_ms).contains(&stamp), "timestamp {stamp} outside {from_ms}..={to_ms}: {id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_request_id_is_echoed_on_answers_streams_and_refusals() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Running::start(&config(&mock, &dir, ""), env).await;
    let client = reqwest::Client::new();
    let id = |text: &'static str| Some(HeaderValue::from_static(text));

    let response = send_chat(&gateway, id("trace 42 / span 7"), &chat("second", "hello")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(request_id(&response), "trace 42 / span 7", "spaces inside are kept");

    let mut streamed = chat("second", "tell me");
    streamed["stream"] = json!(true);
    let response = send_chat(&gateway, id("stream-1"), &streamed).await;
    assert_eq!((response.status().as_u16(), header(&response, "content-type")), (200, "text/event-stream"));
    assert_eq!(request_id(&response), "stream-1");
    assert!(response.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    // The stream's row, written when it ended, carries the id too.
    let rows = rows_of(&gateway.fleet, "stream-1", 1).await;
    assert_eq!((rows[0].model.as_str(), rows[0].error, rows[0].ttft_us.is_some()), ("second", None, true));

    // The longest id kept: 128 characters.
    let longest = "x".repeat(128);
    let response = send_chat(&gateway, Some(HeaderValue::from_str(&longest).unwrap()), &chat("second", "hi")).await;
    assert_eq!(request_id(&response), longest);

    // Refusals: a wrong key (401), no such path (404), a wrong method (405), a wrong role (403).
    let url = |path: &str| format!("{}{path}", gateway.url);
    let refusals = [
        (client.post(url("/v1/chat/completions")).bearer_auth("wrong").json(&chat("second", "hi")), 401),
        (client.get(url("/v1/nowhere")).bearer_auth(CLIENT_KEY), 404),
        (client.get(url("/v1/chat/completions")).bearer_auth(CLIENT_KEY), 405),
        (client.get(url("/v1/feedback")).bearer_auth(CLIENT_KEY), 405),
        (client.get(url("/v1/admin/report")).bearer_auth(CLIENT_KEY), 403),
    ];
    for (n, (request, status)) in refusals.into_iter().enumerate() {
        let sent = format!("refused-{n}");
        let response = request.header("x-request-id", &sent).send().await.unwrap();
        assert_eq!((response.status().as_u16(), request_id(&response)), (status, sent.clone()), "{sent}");
    }
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_or_absent_request_id_is_replaced_by_a_fresh_uuid_v7() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Running::start(&config(&mock, &dir, ""), env).await;

    let unusable = [
        ("129 characters", Some(HeaderValue::from_str(&"x".repeat(129)).unwrap())),
        ("a control character (tab)", Some(HeaderValue::from_static("req\t1"))),
        ("non-ASCII bytes", Some(HeaderValue::from_bytes(b"caf\xC3\xA9").unwrap())),
        ("only spaces", Some(HeaderValue::from_static("   "))),
        ("absent", None),
        ("absent again", None),
    ];
    let mut seen = Vec::new();
    for (what, sent) in unusable {
        let before = now_ms();
        let response = send_chat(&gateway, sent, &chat("second", "hello")).await;
        let after = now_ms();
        assert_eq!(response.status(), 200, "{what}");
        let id = request_id(&response);
        assert_uuid_v7(&id, before, after);
        assert!(!seen.contains(&id), "{what}: {id} given twice");
        // The generated id, not the refused one, is the request's id in the log.
        let rows = rows_of(&gateway.fleet, &id, 1).await;
        assert_eq!(rows[0].model, "second", "{what}");
        seen.push(id);
    }
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spaces_around_an_id_are_stripped_by_http_before_the_gateway_reads_it() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Running::start(&config(&mock, &dir, ""), env).await;
    // The spaces around a header value are not part of it (RFC 9110 5.5):
    // the server's parser drops them, so " lead" reaches the gateway as
    // "lead", a valid id, which is echoed and logged. A leading space is
    // refused by the id's own check (`request_id::accept`, unit-tested);
    // over HTTP/1.1 it never arrives.
    let response = send_chat(&gateway, Some(HeaderValue::from_static(" lead")), &chat("second", "hello")).await;
    assert_eq!(request_id(&response), "lead");
    assert_eq!(rows_of(&gateway.fleet, "lead", 1).await[0].model, "second");
    let response = send_chat(&gateway, Some(HeaderValue::from_static("trail ")), &chat("second", "hello")).await;
    assert_eq!(request_id(&response), "trail");
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_is_logged_with_the_request_id_key_and_language() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let route = "\n[[routes]]\nname = \"german\"\n[routes.requirements]\nlanguage = \"de\"\n";
    let gateway = Running::start(&config(&mock, &dir, route), env).await;
    let french = "Pouvez-vous m'expliquer comment fonctionne le réseau dans les grandes villes ?";
    let russian = "Привет! Объясни, пожалуйста, как работает интернет.";
    let id = |text: &'static str| Some(HeaderValue::from_static(text));

    // The first model fails: the request falls back, each attempt its row.
    mock.fail_next("first", Fault::ServerError, 1);
    let response = send_chat(&gateway, id("fr-1"), &chat("first", french)).await;
    assert_eq!(response.status(), 200);
    assert_eq!((header(&response, "x-modelfleet-model"), header(&response, "x-modelfleet-attempts")), ("second", "2"));
    assert_eq!(request_id(&response), "fr-1");
    let rows = rows_of(&gateway.fleet, "fr-1", 2).await;
    let facts = |r: &PerfRecord| {
        (
            r.attempt,
            r.model.clone(),
            r.error,
            r.fallback,
            r.key_name.clone(),
            r.language.clone(),
            r.route.clone(),
            r.rating,
        )
    };
    let some = |s: &str| Some(s.to_owned());
    assert_eq!(
        rows.iter().map(facts).collect::<Vec<_>>(),
        [
            (1, "first".into(), Some(ErrorClass::ServerError), false, some("app"), some("fr"), None, None),
            (2, "second".into(), None, true, some("app"), some("fr"), None, None),
        ]
    );

    // Russian, answered at once: one row, attempt 1, no fallback.
    let response = send_chat(&gateway, id("ru-1"), &chat("first", russian)).await;
    assert_eq!(response.status(), 200);
    let rows = rows_of(&gateway.fleet, "ru-1", 1).await;
    assert_eq!(facts(&rows[0]), (1, "first".into(), None, false, some("app"), some("ru"), None, None));

    // A requirement's language wins over the text's.
    let mut asked = chat("first", french);
    asked["modelfleet"] = json!({"language": "de"});
    let response = send_chat(&gateway, id("de-1"), &asked).await;
    assert_eq!(response.status(), 200);
    let rows = rows_of(&gateway.fleet, "de-1", 1).await;
    assert_eq!(rows[0].language.as_deref(), Some("de"));
    // So does a route's, and the row names the route.
    let response = send_chat(&gateway, id("route-1"), &chat("german", russian)).await;
    assert_eq!(response.status(), 200);
    let rows = rows_of(&gateway.fleet, "route-1", 1).await;
    assert_eq!((rows[0].language.as_deref(), rows[0].route.as_deref()), (Some("de"), Some("german")));
    // Text in no clear language: none.
    let response = send_chat(&gateway, id("none-1"), &chat("first", "ok thanks")).await;
    assert_eq!(response.status(), 200);
    let rows = rows_of(&gateway.fleet, "none-1", 1).await;
    assert_eq!(rows[0].language, None);

    // The report groups by those languages: each attempt once.
    let (status, body) = answer(report(&gateway, Some(ADMIN_KEY), "?last=1h&by=language").await).await;
    assert_eq!(status, 200, "{body}");
    let groups: Vec<(&str, u64)> = body["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["name"].as_str().unwrap(), g["requests"].as_u64().unwrap()))
        .collect();
    assert_eq!(groups, [("de", 2), ("fr", 2), ("", 1), ("ru", 1)], "{body}");
    gateway.stop().await;
    mock.shutdown().await;
}

/// The `groups` line of `name` in a report.
fn group<'r>(report: &'r Value, name: &str) -> &'r Value {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no group {name}: {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rating_reaches_the_row_the_report_and_the_monitor_and_a_second_replaces_it() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Running::start(&config(&mock, &dir, ""), env).await;

    // An answer that fell back: the rating is the answering model's.
    mock.fail_next("first", Fault::ServerError, 1);
    let response = send_chat(&gateway, None, &chat("first", "hello")).await;
    assert_eq!(response.status(), 200);
    let id = request_id(&response);
    assert_eq!(gateway.fleet.monitor().model_stats("second").avg_quality, None, "unrated");

    let rated = json!({"request_id": id, "rating": 2, "comment": "too vague"});
    let (status, body) = answer(rate(&gateway, Some(CLIENT_KEY), &rated).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"request_id": id, "model": "second", "provider": "mock", "rating": 2}));
    let (status, body) = answer(report(&gateway, Some(ADMIN_KEY), "?last=1h").await).await;
    assert_eq!(status, 200, "{body}");
    let second = group(&body, "second");
    assert_eq!((&second["ratings"], &second["mean_rating"]), (&json!(1), &json!(2.0)), "{body}");
    let first = group(&body, "first");
    assert_eq!((&first["ratings"], &first["mean_rating"]), (&json!(0), &Value::Null), "{body}");
    assert_eq!(body["totals"]["ratings"], 1, "{body}");
    assert_eq!(gateway.fleet.monitor().model_stats("second").avg_quality, Some(0.25));
    assert_eq!(gateway.fleet.monitor().model_stats("first").avg_quality, None);

    // Rated again: the second rating replaces the first everywhere.
    let (status, body) = answer(rate(&gateway, Some(CLIENT_KEY), &json!({"request_id": id, "rating": 5})).await).await;
    assert_eq!((status, &body["rating"], &body["model"]), (200, &json!(5), &json!("second")), "{body}");
    let (_, body) = answer(report(&gateway, Some(ADMIN_KEY), "?last=1h").await).await;
    let second = group(&body, "second");
    assert_eq!((&second["ratings"], &second["mean_rating"]), (&json!(1), &json!(5.0)), "{body}");
    let rows = rows_of(&gateway.fleet, &id, 2).await;
    let ratings: Vec<_> = rows.iter().map(|r| (r.model.as_str(), r.rating, r.quality)).collect();
    assert_eq!(ratings, [("first", None, None), ("second", Some(5), Some(1.0))]);
    let usage = gateway.fleet.store().usage().unwrap();
    let stored = usage.iter().find(|u| u.model == "second").unwrap().avg_quality;
    assert_eq!(stored, Some(1.0), "the stored mean quality counts the request once");
    let live = gateway.fleet.monitor().model_stats("second").avg_quality;

    // A stream's row is written before its body ends: rated at once.
    let mut streamed = chat("first", "tell me");
    streamed["stream"] = json!(true);
    let response = send_chat(&gateway, None, &streamed).await;
    let id = request_id(&response);
    assert!(response.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    let (status, body) = answer(rate(&gateway, Some(CLIENT_KEY), &json!({"request_id": id, "rating": 3})).await).await;
    assert_eq!((status, &body["model"]), (200, &json!("first")), "{body}");
    gateway.stop().await;
    // A restart warms the monitor from the rows: one answer, rated 5.
    let restarted = Running::start(&config(&mock, &dir, ""), env).await;
    let warmed = restarted.fleet.monitor().model_stats("second").avg_quality;
    assert_eq!(warmed, Some(1.0));
    restarted.stop().await;
    mock.shutdown().await;
    // The live quality signal agrees with the store and with a restart:
    // the second rating replaced the first, it did not join it.
    assert_eq!(live, warmed, "live monitor vs. the same history after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_refuses_bad_ratings_unknown_ids_and_failed_requests() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Running::start(&config(&mock, &dir, ""), env).await;
    let response = send_chat(&gateway, Some(HeaderValue::from_static("answered-1")), &chat("second", "hi")).await;
    assert_eq!(response.status(), 200);
    let id = "answered-1";

    let long = "x".repeat(2_001);
    let refused = [
        (json!({"request_id": id, "rating": 0}), "rating must be an integer from 1 to 5"),
        (json!({"request_id": id, "rating": 6}), "rating must be an integer from 1 to 5"),
        (json!({"request_id": id, "rating": -1}), "rating must be an integer from 1 to 5"),
        (json!({"request_id": id, "rating": 3.5}), "rating must be an integer from 1 to 5"),
        (json!({"request_id": id, "rating": "4"}), "rating must be an integer from 1 to 5"),
        (json!({"request_id": id}), "rating must be an integer from 1 to 5"),
        (json!({"rating": 3}), "request_id is missing"),
        (json!({"request_id": 7, "rating": 3}), "request_id must be a string"),
        (json!({"request_id": "a\tb", "rating": 3}), "request_id must be 1 to 128 printable ASCII"),
        (json!({"request_id": "x".repeat(129), "rating": 3}), "request_id must be 1 to 128 printable ASCII"),
        (json!({"request_id": id, "rating": 3, "stars": 3}), "unknown field \"stars\""),
        (json!({"request_id": id, "rating": 3, "comment": long}), "comment is longer than 2000 characters"),
        (json!({"request_id": id, "rating": 3, "comment": 5}), "comment must be a string"),
        (json!([id, 3]), "the body must be a JSON object"),
    ];
    for (body, why) in refused {
        let (status, code, message) = refusal(rate(&gateway, Some(CLIENT_KEY), &body).await).await;
        assert_eq!((status, code.as_str()), (400, "invalid_feedback"), "{body}: {message}");
        assert!(message.contains(why), "{body}: {message}");
    }
    let response = reqwest::Client::new()
        .post(format!("{}/v1/feedback", gateway.url))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, code, message) = refusal(response).await;
    assert_eq!((status, code.as_str()), (400, "invalid_feedback"), "{message}");
    assert!(message.contains("the body is not JSON"), "{message}");

    // No key, a wrong key: 401 before anything is read.
    let good = json!({"request_id": id, "rating": 3});
    let (status, code, _) = refusal(rate(&gateway, None, &good).await).await;
    assert_eq!((status, code.as_str()), (401, "missing_api_key"));
    let (status, code, _) = refusal(rate(&gateway, Some("wrong"), &good).await).await;
    assert_eq!((status, code.as_str()), (401, "invalid_api_key"));

    // No request has this id.
    let unknown = json!({"request_id": "never-sent", "rating": 3});
    let (status, code, message) = refusal(rate(&gateway, Some(CLIENT_KEY), &unknown).await).await;
    assert_eq!((status, code.as_str()), (404, "request_not_found"), "{message}");

    // A request every model failed: its attempts are logged, none answered.
    for model in ["first", "second"] {
        mock.set(model, Behavior { fault: Some(Fault::ServerError), fault_rate: 1.0, ..Behavior::default() });
    }
    let response = send_chat(&gateway, Some(HeaderValue::from_static("doomed-1")), &chat("first", "hi")).await;
    assert_eq!(response.status(), 502);
    // Each attempt the answer counts is a row of the request, all failed.
    let attempts: usize = header(&response, "x-modelfleet-attempts").parse().unwrap();
    assert!(attempts >= 2, "both models tried: {attempts}");
    let rows = rows_of(&gateway.fleet, "doomed-1", attempts).await;
    let numbers: Vec<u32> = rows.iter().map(|r| r.attempt).collect();
    assert_eq!(numbers, (1..=u32::try_from(attempts).unwrap()).collect::<Vec<_>>());
    assert!(rows.iter().all(|r| r.error == Some(ErrorClass::ServerError)), "{rows:?}");
    let doomed = json!({"request_id": "doomed-1", "rating": 1});
    let (status, code, message) = refusal(rate(&gateway, Some(CLIENT_KEY), &doomed).await).await;
    assert_eq!((status, code.as_str()), (404, "request_not_found"), "{message}");
    let rows = rows_of(&gateway.fleet, "doomed-1", attempts).await;
    assert!(rows.iter().all(|r| r.rating.is_none()), "{rows:?}");

    // Nothing refused was written.
    let (_, body) = answer(report(&gateway, Some(ADMIN_KEY), "?last=1h").await).await;
    assert_eq!(body["totals"]["ratings"], 0, "{body}");
    assert_eq!(rows_of(&gateway.fleet, id, 1).await[0].rating, None);
    assert_eq!(gateway.fleet.monitor().model_stats("second").avg_quality, None);

    // The longest comment: 2,000 characters (not bytes: 'é' is two).
    let longest = json!({"request_id": id, "rating": 4, "comment": "é".repeat(2_000)});
    let (status, body) = answer(rate(&gateway, Some(CLIENT_KEY), &longest).await).await;
    assert_eq!((status, &body["rating"]), (200, &json!(4)), "{body}");
    assert_eq!(rows_of(&gateway.fleet, id, 1).await[0].rating, Some(4));
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_report_groups_by_key_honours_its_range_and_refuses_bad_queries() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = Running::start(&config(&mock, &dir, ""), env).await;
    let start = now_ms();
    for key in [CLIENT_KEY, CLIENT_KEY, OTHER_KEY] {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", gateway.url))
            .bearer_auth(key)
            .json(&chat("second", "hello"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let end = now_ms();

    let (status, body) = answer(report(&gateway, Some(ADMIN_KEY), "?last=1h&by=key").await).await;
    assert_eq!((status, &body["by"]), (200, &json!("key")), "{body}");
    let groups: Vec<(&str, u64)> = body["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["name"].as_str().unwrap(), g["requests"].as_u64().unwrap()))
        .collect();
    assert_eq!(groups, [("app", 2), ("other", 1)], "{body}");
    assert!(body["groups"][0].get("provider").is_none(), "only a model's line names a provider: {body}");

    // A range around the traffic sees all of it; one before it, none.
    let (from, to) = (rfc3339(start - 1_000), rfc3339(end + 2_000));
    let (status, body) = answer(report(&gateway, Some(ADMIN_KEY), &format!("?from={from}&to={to}")).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((&body["from"], &body["to"], &body["by"]), (&json!(from), &json!(to), &json!("model")), "{body}");
    assert_eq!((&body["totals"]["requests"], &group(&body, "second")["requests"]), (&json!(3), &json!(3)), "{body}");
    let (from, to) = (rfc3339(start - 120_000), rfc3339(start - 60_000));
    let (status, body) = answer(report(&gateway, Some(ADMIN_KEY), &format!("?from={from}&to={to}")).await).await;
    assert_eq!((status, &body["totals"]["requests"], &body["groups"]), (200, &json!(0), &json!([])), "{body}");

    let refused = [
        (format!("?last=1h&from={from}"), "give either from/to or last, not both"),
        ("?by=colour".to_owned(), "by: unknown grouping \"colour\": one of model, provider, category, language, key"),
        ("?last=soon".to_owned(), "last: \"soon\" is not a span"),
        (format!("?from={to}&to={from}"), "must be before to"),
        ("?colour=red".to_owned(), "colour"),
    ];
    for (query, why) in refused {
        let (status, code, message) = refusal(report(&gateway, Some(ADMIN_KEY), &query).await).await;
        assert_eq!((status, code.as_str()), (400, "invalid_report_query"), "{query}: {message}");
        assert!(message.contains(why), "{query}: {message}");
    }
    // A client key may not read it; no key, no report.
    let (status, code, _) = refusal(report(&gateway, Some(CLIENT_KEY), "?last=1h").await).await;
    assert_eq!((status, code.as_str()), (403, "insufficient_role"));
    let (status, code, _) = refusal(report(&gateway, None, "?last=1h").await).await;
    assert_eq!((status, code.as_str()), (401, "missing_api_key"));
    gateway.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_answer_and_another_keys_request_are_refused_saying_why() {
    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = "\n[cache]\nenabled = true\nttl_secs = 60\n";
    let gateway = Running::start(&config(&mock, &dir, cache), env).await;
    let response = send_chat(&gateway, Some(HeaderValue::from_static("made-1")), &chat("second", "same")).await;
    assert_eq!(header(&response, "x-modelfleet-cache"), "miss");
    gateway.fleet.store().flush().unwrap();
    let response = send_chat(&gateway, Some(HeaderValue::from_static("cached-1")), &chat("second", "same")).await;
    assert_eq!((response.status().as_u16(), header(&response, "x-modelfleet-cache")), (200, "hit"));
    assert_eq!(request_id(&response), "cached-1");
    assert_eq!(mock.hits("second"), 1, "answered from the cache");
    // No model answered it: nothing to rate, and the refusal says so.
    let (status, code, message) =
        refusal(rate(&gateway, Some(CLIENT_KEY), &json!({"request_id": "cached-1", "rating": 4})).await).await;
    assert_eq!((status, code.as_str()), (404, "request_not_found"));
    assert!(message.contains("answered from the response cache"), "{message}");

    // A client key rates its own requests only: `other` did not send made-1.
    let (status, _, message) =
        refusal(rate(&gateway, Some(OTHER_KEY), &json!({"request_id": "made-1", "rating": 1})).await).await;
    assert_eq!(status, 404);
    assert!(message.contains("among this key's requests"), "{message}");
    let rows = rows_of(&gateway.fleet, "made-1", 1).await;
    assert_eq!(rows[0].rating, None, "the other key's rating was not written");
    // Its sender may, and an admin may rate any.
    let (status, body) =
        answer(rate(&gateway, Some(CLIENT_KEY), &json!({"request_id": "made-1", "rating": 4})).await).await;
    assert_eq!((status, &body["rating"]), (200, &json!(4)), "{body}");
    let (status, body) =
        answer(rate(&gateway, Some(ADMIN_KEY), &json!({"request_id": "made-1", "rating": 2})).await).await;
    assert_eq!((status, &body["rating"]), (200, &json!(2)), "{body}");
    assert_eq!(rows_of(&gateway.fleet, "made-1", 1).await[0].rating, Some(2));
    gateway.stop().await;
    mock.shutdown().await;
}
