//! Properties over arbitrary input to everything that parses bytes from
//! outside the process: request bodies ([`parse_chat`]), upstream SSE
//! streams ([`SseParser`], and [`Events`] with its size limit) and
//! completion bodies ([`completion_usage`]). Whatever the bytes: no panic,
//! and a refusal is a 400 that says what is wrong.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use axum::http::StatusCode;
use bytes::Bytes;
use futures_util::StreamExt;
use modelfleet::registry::Capability;
use proptest::{
    collection::vec,
    prelude::*,
    sample::{Index, select},
};
use serde_json::{Map, Value, json};

use crate::{
    upstream::{Events, MAX_EVENT_BYTES, error_event},
    wire::{ApiError, ChatRequest, SseParser, completion_usage, parse_chat, usage_of},
};

/// A request every check passes.
const VALID: &[u8] = br#"{"model":"auto","stream":true,"n":2,"max_tokens":64,"stream_options":{"include_usage":true},
"messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}],
"modelfleet":{"category":"code","min_quality":0.5,"max_cost":"0.01","capabilities":["tools"]}}"#;

// --- Request bodies ----------------------------------------------------------

/// `bytes` with each `(at, byte)` written over, then cut at `cut` (if any).
fn mutate(mut bytes: Vec<u8>, writes: &[(Index, u8)], cut: Option<Index>) -> Vec<u8> {
    for (at, byte) in writes {
        let i = at.index(bytes.len());
        bytes[i] = *byte;
    }
    if let Some(cut) = cut {
        bytes.truncate(cut.index(bytes.len() + 1));
    }
    bytes
}

/// Any bytes; JSON-looking text (so the parser gets past the first byte);
/// and a valid request with bytes overwritten or cut short.
fn arb_body_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..256),
        r#"[\[\]{}:,"a-z0-9 .eE+\-\\]{0,64}"#.prop_map(String::into_bytes),
        (vec((any::<Index>(), any::<u8>()), 0..4), proptest::option::of(any::<Index>()))
            .prop_map(|(writes, cut)| mutate(VALID.to_vec(), &writes, cut)),
    ]
}

/// A refusal as the client gets it: 400, a code, a message that says
/// something (after sanitizing), and for a body that is not JSON, the word
/// JSON and where the syntax broke.
fn check_refusal(err: &ApiError) -> Result<(), TestCaseError> {
    prop_assert_eq!(err.status, StatusCode::BAD_REQUEST, "{:?}", err);
    prop_assert_eq!(err.kind, "invalid_request_error");
    prop_assert!(!err.code.is_empty());
    prop_assert!(!err.message.trim().is_empty());
    let shown = err.body()["error"]["message"].as_str().map(str::to_owned).unwrap_or_default();
    prop_assert!(!shown.trim().is_empty(), "sanitizing emptied {:?}", err.message);
    if err.code == "invalid_json" {
        prop_assert!(err.message.contains("JSON"), "{}", err.message);
    }
    if err.message.starts_with("the request body is not valid JSON") {
        prop_assert!(err.message.contains(" line ") && err.message.contains(" column "), "{}", err.message);
    }
    Ok(())
}

/// What an accepted request always holds.
fn check_accepted(chat: &ChatRequest) -> Result<(), TestCaseError> {
    prop_assert!(!chat.model.trim().is_empty());
    prop_assert!(!chat.body.contains_key("modelfleet"), "the extension never goes upstream");
    prop_assert_eq!(chat.requirements.available_memory_mb, None, "a client cannot claim memory");
    prop_assert!(chat.requirements.n >= 1);
    prop_assert!(!chat.stream || chat.requirements.capabilities.contains(&Capability::Streaming));
    Ok(())
}

/// What `parse_chat` must make of one field of a generated request.
#[derive(Debug, Clone, Copy)]
enum Verdict {
    /// Never the reason for a refusal.
    Fine,
    /// The request must be refused, the message starting with this.
    Wrong(&'static str),
    /// May be refused for it (a limit the generator straddles).
    Maybe(&'static str),
}

/// A field's value (`None`: absent) and its verdict.
type Field = (Option<Value>, Verdict);

fn fine(value: Value) -> Field {
    (Some(value), Verdict::Fine)
}

/// A short arbitrary string, or a run of up to 20,000 of one char (up to
/// 80 KB; quotes and control chars included, so escaping is exercised).
fn arb_text() -> BoxedStrategy<String> {
    prop_oneof![
        7 => any::<String>(),
        1 => (any::<char>(), 0..20_000_usize).prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
    .boxed()
}

/// JSON values of every type, shallow.
fn arb_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::from),
            vec(("[a-z_]{1,8}", inner), 0..4).prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
    .boxed()
}

/// A value that is not a string.
fn arb_not_string() -> BoxedStrategy<Value> {
    arb_json().prop_filter("not a string", |v| !v.is_string()).boxed()
}

/// `model`: a string with something in it, or (spoiled) blank, absent or not a string.
fn arb_model(spoil: bool) -> BoxedStrategy<Field> {
    let wrong = Verdict::Wrong("model:");
    if !spoil {
        return prop_oneof![Just("auto".to_owned()), Just("gpt-4o-mini".to_owned()), any::<String>()]
            .prop_filter("not blank", |m| !m.trim().is_empty())
            .prop_map(|m| fine(Value::from(m)))
            .boxed();
    }
    prop_oneof![
        " {0,3}".prop_map(move |m| (Some(Value::from(m)), wrong)),
        Just((None, wrong)),
        arb_not_string().prop_map(move |v| (Some(v), wrong)),
    ]
    .boxed()
}

/// A message with a string role (known or not) and any content.
fn arb_message() -> BoxedStrategy<Value> {
    let role = prop_oneof![
        select(vec!["system", "user", "assistant", "tool", "developer", "wizard", ""]).prop_map(str::to_owned),
        any::<String>(),
    ];
    let content = prop_oneof![
        arb_text().prop_map(Value::from),
        Just(Value::Null),
        vec(
            prop_oneof![
                arb_text().prop_map(|t| json!({"type": "text", "text": t})),
                Just(json!({"type": "image_url", "image_url": {"url": "https://e.x/a.png"}})),
                arb_json(),
            ],
            0..4
        )
        .prop_map(Value::from),
        arb_json(),
    ];
    (role, proptest::option::of(content), proptest::option::of(arb_json()))
        .prop_map(|(role, content, extra)| {
            let mut message = Map::new();
            message.insert("role".to_owned(), Value::from(role));
            if let Some(content) = content {
                message.insert("content".to_owned(), content);
            }
            if let Some(extra) = extra {
                message.insert("tool_calls".to_owned(), extra);
            }
            Value::Object(message)
        })
        .boxed()
}

/// A message `parse_chat` must refuse: no role, a role not a string, not an object.
fn arb_bad_message() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(json!({"content": "x"})),
        arb_not_string().prop_map(|role| json!({"role": role, "content": "x"})),
        arb_json().prop_filter("not an object", |v| !v.is_object()),
    ]
    .boxed()
}

/// `messages`: one to three messages with a string role, or (spoiled)
/// one without, none at all, or not an array.
fn arb_messages(spoil: bool) -> BoxedStrategy<Field> {
    if !spoil {
        return vec(arb_message(), 1..4).prop_map(|m| fine(Value::from(m))).boxed();
    }
    let wrong = Verdict::Wrong("messages:");
    prop_oneof![
        3 => (vec(arb_message(), 0..3), any::<Index>(), arb_bad_message()).prop_map(|(mut messages, at, bad)| {
            let at = at.index(messages.len() + 1);
            messages.insert(at, bad);
            (Some(Value::from(messages)), Verdict::Wrong("messages["))
        }),
        1 => Just((Some(json!([])), wrong)),
        1 => Just((None, wrong)),
        1 => arb_json().prop_filter("not an array", |v| !v.is_array()).prop_map(move |v| (Some(v), wrong)),
    ]
    .boxed()
}

/// `stream`: absent, null or a bool, or (spoiled) anything else.
fn arb_stream(spoil: bool) -> BoxedStrategy<Field> {
    if !spoil {
        return prop_oneof![
            Just((None, Verdict::Fine)),
            Just(fine(Value::Null)),
            any::<bool>().prop_map(|b| fine(Value::from(b))),
        ]
        .boxed();
    }
    arb_json()
        .prop_filter("not a bool or null", |v| !v.is_boolean() && !v.is_null())
        .prop_map(|v| (Some(v), Verdict::Wrong("stream:")))
        .boxed()
}

/// A count: absent, null or a whole number from `min` to `u32::MAX`, or
/// (spoiled) one below `min`, negative, fractional, too large, or not a number.
fn arb_count(min: u32, spoil: bool, wrong: &'static str) -> BoxedStrategy<Field> {
    if !spoil {
        return prop_oneof![
            1 => Just((None, Verdict::Fine)),
            1 => Just(fine(Value::Null)),
            3 => (min..=u32::MAX).prop_map(|n| fine(Value::from(n))),
        ]
        .boxed();
    }
    prop_oneof![
        (i64::MIN..i64::from(min)).prop_map(Value::from),
        (u64::from(u32::MAX) + 1..).prop_map(Value::from),
        prop_oneof![Just(1.0), Just(2.5), Just(-0.0), Just(1e300), any::<f64>()].prop_map(Value::from),
        arb_json().prop_filter("not a number or null", |v| !v.is_number() && !v.is_null()),
    ]
    .prop_map(move |v| (Some(v), Verdict::Wrong(wrong)))
    .boxed()
}

/// One entry of the `modelfleet` object that `Requirements` accepts.
fn arb_requirement() -> BoxedStrategy<(String, Value)> {
    let entry = |key: &str, value: BoxedStrategy<Value>| {
        let key = key.to_owned();
        value.prop_map(move |v| (key.clone(), v)).boxed()
    };
    let names = |names: &[&'static str]| select(names.to_vec()).prop_map(Value::from).boxed();
    let money = prop_oneof![
        "[0-9]{1,4}(\\.[0-9]{1,9})?".prop_map(Value::from),
        (0..1_000_u32).prop_map(Value::from),
        (0.0..1_000.0_f64).prop_map(Value::from),
    ];
    let u32s = || any::<u32>().prop_map(Value::from).boxed();
    let strings = || vec("[a-z]{0,8}", 0..3).prop_map(Value::from).boxed();
    prop_oneof![
        entry(
            "category",
            names(&["general", "translation", "vocabulary", "grammar", "conversation", "code", "reasoning"])
        ),
        entry("language", "[a-z]{2}".prop_map(Value::from).boxed()),
        entry("prompt_tokens", u32s()),
        entry("max_output_tokens", u32s()),
        entry("n", u32s()),
        entry(
            "capabilities",
            vec(select(vec!["streaming", "tools", "json_mode", "vision"]), 0..4).prop_map(Value::from).boxed()
        ),
        entry("max_cost", money.boxed()),
        entry("min_quality", (0.0..=1.0_f64).prop_map(Value::from).boxed()),
        entry("max_latency_ms", u32s()),
        entry("providers", strings()),
        entry("exclude_providers", strings()),
        entry("locality", names(&["any", "local_only", "cloud_only"])),
        entry("prefer_free", any::<bool>().prop_map(Value::from).boxed()),
        entry("prefer_local", any::<bool>().prop_map(Value::from).boxed()),
        entry("available_memory_mb", any::<u64>().prop_map(Value::from).boxed()),
    ]
    .boxed()
}

/// One entry of the `modelfleet` object that must be refused.
fn arb_bad_requirement() -> BoxedStrategy<(String, Value)> {
    let bad = [
        ("categry", json!("code")),
        ("model", json!("auto")),
        ("category", json!("poetry")),
        ("category", json!(3)),
        ("prompt_tokens", json!(-1)),
        ("prompt_tokens", json!(1_u64 << 33)),
        ("prompt_tokens", json!(1.5)),
        ("prompt_tokens", json!("5")),
        ("capabilities", json!(["teleport"])),
        ("capabilities", json!("tools")),
        ("max_cost", json!("-0.5")),
        ("max_cost", json!("abc")),
        ("max_cost", json!("0.0000000001")),
        ("max_cost", json!(-1)),
        ("max_cost", json!(1e300)),
        ("min_quality", json!(1.5)),
        ("min_quality", json!(-0.1)),
        ("min_quality", json!("high")),
        ("prefer_free", json!("yes")),
        ("locality", json!("moon")),
        ("providers", json!("openai")),
        ("available_memory_mb", json!(-1)),
    ];
    select(bad.map(|(k, v)| (k.to_owned(), v)).to_vec()).boxed()
}

/// `modelfleet`: absent, null or an object of good requirements, or
/// (spoiled) one bad requirement among good ones, or not an object.
fn arb_extension(spoil: bool) -> BoxedStrategy<Field> {
    let good = || vec(arb_requirement(), 0..6);
    if !spoil {
        return prop_oneof![
            1 => Just((None, Verdict::Fine)),
            1 => Just(fine(Value::Null)),
            4 => good().prop_map(|entries| fine(Value::Object(entries.into_iter().collect()))),
        ]
        .boxed();
    }
    let wrong = Verdict::Wrong("modelfleet:");
    prop_oneof![
        4 => (good(), arb_bad_requirement()).prop_map(move |(mut entries, bad)| {
            // Last, so no good entry of the same name replaces it.
            entries.retain(|(k, _)| *k != bad.0);
            entries.push(bad);
            (Some(Value::Object(entries.into_iter().collect())), wrong)
        }),
        1 => arb_json().prop_filter("not an object or null", |v| !v.is_object() && !v.is_null())
            .prop_map(move |v| (Some(v), wrong)),
    ]
    .boxed()
}

/// `value` inside `depth` arrays and objects.
fn nest(depth: usize, value: Value) -> Value {
    // Not `json!`: it copies an expression it is given through `to_value`.
    (0..depth).fold(value, |inner, i| {
        if i % 2 == 0 { Value::Array(vec![inner]) } else { Value::Object(Map::from_iter([("x".to_owned(), inner)])) }
    })
}

/// `metadata`, passed on, nested up to 100 deep, or (spoiled) up to 300:
/// `serde_json` refuses more than 128 levels, which is a JSON error, not a
/// panic or a stack overflow.
fn arb_deep(spoil: bool) -> BoxedStrategy<Field> {
    let depth = if spoil { (101..300_usize).boxed() } else { prop_oneof![3 => 0..8_usize, 1 => 0..=100_usize].boxed() };
    (depth, arb_json())
        .prop_map(|(depth, leaf)| {
            // The body itself and `arb_json`'s own levels come on top.
            let verdict = match depth {
                0..=100 => Verdict::Fine,
                101..=140 => Verdict::Maybe("the request body is not valid JSON"),
                _ => Verdict::Wrong("the request body is not valid JSON"),
            };
            (Some(nest(depth, leaf)), verdict)
        })
        .boxed()
}

/// Fields the gateway passes on without checking them.
fn arb_passed_on() -> BoxedStrategy<Vec<(&'static str, Value)>> {
    vec(
        prop_oneof![
            arb_text().prop_map(|t| ("user", Value::from(t))),
            arb_json().prop_map(|v| ("temperature", v)),
            arb_json().prop_map(|v| ("stream_options", v)),
            arb_json().prop_map(|v| ("tools", v)),
            Just(("response_format", json!({"type": "json_object"}))),
        ],
        0..3,
    )
    .boxed()
}

/// The fields of a request `parse_chat` checks, by name.
const CHECKED: [&str; 8] =
    ["model", "messages", "stream", "n", "max_tokens", "max_completion_tokens", "modelfleet", "metadata"];

/// A request body with up to two of its checked fields spoiled, and every
/// field's verdict.
fn arb_request() -> impl Strategy<Value = (Value, Vec<Verdict>)> {
    let spoiled = prop_oneof![
        1 => Just(Vec::new()),
        2 => proptest::sample::subsequence((0..CHECKED.len()).collect::<Vec<_>>(), 1..=2),
    ];
    spoiled
        .prop_flat_map(|spoiled| {
            let spoil = |i: usize| spoiled.contains(&i);
            let fields = vec![
                arb_model(spoil(0)),
                arb_messages(spoil(1)),
                arb_stream(spoil(2)),
                arb_count(1, spoil(3), "n:"),
                arb_count(0, spoil(4), "max_tokens:"),
                arb_count(0, spoil(5), "max_completion_tokens:"),
                arb_extension(spoil(6)),
                arb_deep(spoil(7)),
            ];
            (fields, arb_passed_on())
        })
        .prop_map(|(fields, passed_on)| {
            let mut body: Map<String, Value> = passed_on.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            let mut verdicts = Vec::new();
            for (key, (value, verdict)) in CHECKED.into_iter().zip(fields) {
                match value {
                    Some(value) => body.insert(key.to_owned(), value),
                    None => body.remove(key),
                };
                verdicts.push(verdict);
            }
            (Value::Object(body), verdicts)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_are_parsed_or_refused_with_a_400_that_says_why(bytes in arb_body_bytes()) {
        match parse_chat(&bytes) {
            Ok(chat) => check_accepted(&chat)?,
            Err(err) => check_refusal(&err)?,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_request_is_accepted_unless_a_field_is_wrong_and_a_refusal_names_it(
        (body, verdicts) in arb_request(),
    ) {
        let bytes = serde_json::to_vec(&body).expect("a Value serializes");
        let must_fail: Vec<&str> =
            verdicts.iter().filter_map(|v| if let Verdict::Wrong(p) = v { Some(*p) } else { None }).collect();
        match parse_chat(&bytes) {
            Ok(chat) => {
                prop_assert!(must_fail.is_empty(), "accepted although {:?} is wrong", must_fail);
                check_accepted(&chat)?;
                prop_assert_eq!(Some(&Value::from(chat.model.clone())), body.get("model"));
                prop_assert_eq!(chat.stream, body.get("stream") == Some(&Value::Bool(true)));
            }
            Err(err) => {
                check_refusal(&err)?;
                let blamable: Vec<&str> = verdicts
                    .iter()
                    .filter_map(|v| match v {
                        Verdict::Fine => None,
                        Verdict::Wrong(p) | Verdict::Maybe(p) => Some(*p),
                    })
                    .collect();
                prop_assert!(
                    blamable.iter().any(|p| err.message.starts_with(p)),
                    "{:?} blames none of the wrong fields {:?}",
                    err.message,
                    blamable
                );
            }
        }
    }
}

// --- SSE ---------------------------------------------------------------------

/// Bytes made of SSE's own pieces (field names, every line ending, blank
/// lines) and arbitrary bytes, invalid UTF-8 included.
fn arb_sse_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        3 => select(vec![
            &b"data: "[..], b"data:", b"\n", b"\r", b"\r\n", b"\n\n", b": ping", b"event: x", b"id: 1",
            b"{\"a\":1}", b"[DONE]", "é".as_bytes(), b"\xff",
        ])
        .prop_map(<[u8]>::to_vec),
        1 => vec(any::<u8>(), 0..8),
    ];
    vec(piece, 0..64).prop_map(|pieces| pieces.concat())
}

/// Cut points into a stream of `len` bytes, sorted.
fn cuts(len: usize, at: &[Index]) -> Vec<usize> {
    let mut cuts: Vec<usize> = at.iter().map(|i| i.index(len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

/// `bytes` in the pieces between `cuts`.
fn split<'b>(bytes: &'b [u8], cuts: &[usize]) -> Vec<&'b [u8]> {
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for &cut in cuts {
        pieces.push(&bytes[from..cut]);
        from = cut;
    }
    pieces.push(&bytes[from..]);
    pieces
}

/// Every event of `pieces` pushed in order, and what is left pending.
fn feed<'b>(pieces: impl IntoIterator<Item = &'b [u8]>) -> (Vec<String>, usize) {
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    for piece in pieces {
        parser.push(piece);
        while let Some(event) = parser.next_event() {
            events.push(event);
        }
    }
    (events, parser.pending())
}

/// One line of a generated SSE event.
#[derive(Debug, Clone)]
enum Line {
    /// `data: …`, or `data:…` when `tight` (and the text has no leading space).
    Data { text: String, tight: bool },
    /// A comment, `: …`.
    Comment(String),
    /// Another field: `event`, `id` or `retry`.
    Other(&'static str, String),
}

/// A generated event: its lines, each with its line ending, and the
/// ending of the blank line closing it.
type Event = (Vec<(Line, &'static str)>, &'static str);

fn arb_event() -> impl Strategy<Value = Event> {
    let text = "[^\r\n]{0,24}";
    let line = prop_oneof![
        4 => (text, any::<bool>()).prop_map(|(text, tight)| Line::Data { text, tight }),
        1 => text.prop_map(Line::Comment),
        1 => (select(vec!["event", "id", "retry"]), text).prop_map(|(name, value)| Line::Other(name, value)),
    ];
    // A lone CR ends a line too, but "x\r" then "\n" is one CRLF: CR is
    // left out here so that every generated stream means what it says.
    let ending = || select(vec!["\n", "\r\n"]);
    (vec((line, ending()), 0..4), ending())
}

/// The event as sent, and its data as a reader must give it (none for an
/// event without `data` lines).
fn render((lines, end): &Event) -> (String, Option<String>) {
    let mut wire = String::new();
    let mut data: Option<String> = None;
    for (line, ending) in lines {
        match line {
            Line::Data { text, tight } => {
                wire.push_str(if *tight && !text.starts_with(' ') { "data:" } else { "data: " });
                wire.push_str(text);
                data = Some(match data {
                    Some(before) => format!("{before}\n{text}"),
                    None => text.clone(),
                });
            }
            Line::Comment(text) => {
                wire.push(':');
                wire.push_str(text);
            }
            Line::Other(name, value) => {
                wire.push_str(name);
                wire.push_str(": ");
                wire.push_str(value);
            }
        }
        wire.push_str(ending);
    }
    wire.push_str(end);
    (wire, data)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn sse_events_do_not_depend_on_how_the_bytes_were_split(
        bytes in arb_sse_bytes(),
        at in vec(any::<Index>(), 0..8),
    ) {
        let whole = feed([&bytes[..]]);
        prop_assert_eq!(&feed(split(&bytes, &cuts(bytes.len(), &at))), &whole);
        prop_assert_eq!(&feed(bytes.chunks(1)), &whole, "a byte at a time");
        prop_assert!(whole.1 <= bytes.len());
        for event in &whole.0 {
            // What the stream relay asks of every event.
            let _ = error_event(event);
            let _ = serde_json::from_str::<Value>(event).map(|v| usage_of(&v));
        }
    }

    #[test]
    fn generated_sse_events_round_trip_whatever_the_split(
        events in vec(arb_event(), 0..6),
        at in vec(any::<Index>(), 0..8),
    ) {
        let events_end_with_lines = events.last().is_none_or(|(lines, _)| !lines.is_empty());
        let (wire, expected): (String, Vec<Option<String>>) =
            events.iter().map(render).fold((String::new(), Vec::new()), |(mut wire, mut data), (w, d)| {
                wire.push_str(&w);
                data.push(d);
                (wire, data)
            });
        let expected: Vec<String> = expected.into_iter().flatten().collect();
        let bytes = wire.as_bytes();
        let (events, pending) = feed(split(bytes, &cuts(bytes.len(), &at)));
        prop_assert_eq!(&events, &expected, "{:?}", wire);
        prop_assert_eq!(feed(bytes.chunks(1)), (events, pending), "a byte at a time: {:?}", wire);
        // A blank line with nothing before it may wait for the next event;
        // after an event with lines, nothing is left.
        if events_end_with_lines {
            prop_assert_eq!(pending, 0, "{:?}", wire);
        }
    }
}

/// Reads every event of `pieces` through [`Events`], the upstream stream
/// reader: the events before the first failure, the failure's message, and
/// how many bytes were taken from the body.
fn read_events(pieces: Vec<Bytes>) -> (Vec<String>, Option<String>, usize) {
    let taken = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&taken);
    let body = futures_util::stream::iter(pieces).map(move |piece| {
        counter.fetch_add(piece.len(), Ordering::Relaxed);
        Ok(piece)
    });
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    let (events, failure) = runtime.block_on(async {
        let mut events = Vec::new();
        let mut reader = match Events::open(Box::pin(body), None, None).await {
            Ok(reader) => reader,
            Err(failure) => return (events, Some(failure.message().to_owned())),
        };
        loop {
            match reader.next().await {
                Ok(Some(event)) => events.push(event),
                Ok(None) => return (events, None),
                Err(failure) => return (events, Some(failure.message().to_owned())),
            }
        }
    });
    (events, failure, taken.load(Ordering::Relaxed))
}

proptest! {
    // Each case streams over a MiB through the reader: a few cases suffice
    // for the split positions, and keep the suite quick.
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn an_event_over_the_limit_fails_the_stream_without_buffering_more(
        before in vec("[a-z]{1,8}", 0..3),
        over in 1..4_096_usize,
        sizes in vec(1..=65_536_usize, 1..8),
    ) {
        let mut wire: Vec<u8> = before.iter().flat_map(|d| format!("data: {d}\n\n").into_bytes()).collect();
        let prefix = wire.len();
        // One event whose data is past the limit, in pieces of any size;
        // then the blank line that would end it: a reader that kept
        // buffering returns it. (The limit is on the data: with the
        // `data: ` prefix counted, an `over` under 7 was within it.)
        wire.extend_from_slice(b"data: ");
        wire.resize(prefix + b"data: ".len() + MAX_EVENT_BYTES + over, b'x');
        let wire = Bytes::from(wire);
        let mut pieces = Vec::new();
        let mut from = 0;
        for size in sizes.iter().cycle() {
            if from == wire.len() {
                break;
            }
            let to = (from + size).min(wire.len());
            pieces.push(wire.slice(from..to));
            from = to;
        }
        let largest = pieces.iter().map(Bytes::len).max().unwrap_or(0);
        pieces.push(Bytes::from_static(b"\n\n"));
        let (events, failure, taken) = read_events(pieces);
        prop_assert_eq!(events.clone(), before.clone());
        let failure = failure.expect("the stream fails");
        prop_assert!(failure.contains(&format!("over {MAX_EVENT_BYTES} bytes")), "{}", failure);
        prop_assert!(taken <= prefix + b"data: ".len() + MAX_EVENT_BYTES + largest, "read {} bytes", taken);
        // The same event ended inside the piece that took it past the
        // limit: it fails all the same, whichever way the bytes were split.
        let mut whole = wire.to_vec();
        whole.extend_from_slice(b"\n\n");
        let (events, failure, _) = read_events(vec![Bytes::from(whole)]);
        prop_assert_eq!(events, before);
        let over_limit = format!("over {MAX_EVENT_BYTES} bytes");
        prop_assert!(failure.is_some_and(|f| f.contains(&over_limit)), "an over-limit event ending in its piece passed");
    }
}

// --- Completion bodies -------------------------------------------------------

/// A completion body: any JSON value (usage fields of every type included)
/// and non-JSON bytes.
fn arb_completion() -> impl Strategy<Value = Vec<u8>> {
    let usage = prop_oneof![
        arb_json(),
        (arb_json(), arb_json(), arb_json()).prop_map(|(p, c, cached)| json!({
            "prompt_tokens": p, "completion_tokens": c, "prompt_tokens_details": {"cached_tokens": cached},
        })),
        (any::<u64>(), any::<u64>()).prop_map(|(p, c)| json!({"prompt_tokens": p, "completion_tokens": c})),
    ];
    prop_oneof![
        arb_body_bytes(),
        (usage, arb_json()).prop_map(|(usage, choices)| {
            serde_json::to_vec(&json!({"id": "x", "choices": choices, "usage": usage})).expect("a Value serializes")
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Found by this property, and fixed: `[]`, `{"usage":[7,3]}` and
    /// `{"x":"\xff"}` were read as completions, and a usage field of another
    /// type failed the whole body where a stream reads no usage.
    #[test]
    fn a_completion_body_that_is_not_json_is_an_error_and_usage_reads_as_in_a_stream(bytes in arb_completion()) {
        let usage = completion_usage(&bytes);
        let parsed = std::str::from_utf8(&bytes).ok().and_then(|text| serde_json::from_str::<Value>(text).ok());
        match parsed {
            None => {
                let err = usage.expect_err("not JSON");
                prop_assert!(!err.trim().is_empty());
            }
            // Anything but an object is no completion.
            Some(value) if !value.is_object() => {
                prop_assert!(usage.is_err(), "{:?} read as {:?}", value, usage);
            }
            // An object: read exactly as the stream reads a chunk.
            Some(value) => prop_assert_eq!(usage.expect("an object is read"), usage_of(&value)),
        }
    }
}
