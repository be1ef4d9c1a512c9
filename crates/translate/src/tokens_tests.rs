//! Tests of the token estimate: against OpenAI's real tokenizers
//! (`cl100k_base` and `o200k_base`, from `tiktoken-rs`) on the corpus in
//! `tests/corpus/`, split invariance (a property: any split of any string
//! counts the same as the whole), the bulk path against the byte-by-byte
//! reference rule, and edge cases.
//!
//! The corpus: one file per sample, named `<class>-<name>.txt`, written for
//! this test, except `cjk-chinese-classical.txt`, which adapts lines of
//! public-domain classical Chinese prose (Tao Yuanming's and Li Bai's), and
//! `urls-base64.txt`, generated (seeded random bytes, hashes, a JWT-shaped
//! token).

use std::{collections::BTreeMap, fmt::Write as _, fs, io::Write as _, path::Path, sync::OnceLock};

use proptest::prelude::*;
use serde_json::{Value, json};
use tiktoken_rs::CoreBPE;

use super::*;

/// The estimate may be under the real count by at most this much, on every
/// sample: `estimate >= FLOOR * real`.
const FLOOR: f64 = 0.95;

fn cl100k() -> &'static CoreBPE {
    static ENCODING: OnceLock<CoreBPE> = OnceLock::new();
    ENCODING.get_or_init(|| tiktoken_rs::cl100k_base().expect("cl100k_base loads"))
}

fn o200k() -> &'static CoreBPE {
    static ENCODING: OnceLock<CoreBPE> = OnceLock::new();
    ENCODING.get_or_init(|| tiktoken_rs::o200k_base().expect("o200k_base loads"))
}

fn real(encoding: &CoreBPE, text: &str) -> u64 {
    encoding.encode_ordinary(text).len() as u64
}

/// The largest real count of `text`: `cl100k_base`'s or `o200k_base`'s.
fn worst(text: &str) -> u64 {
    real(cl100k(), text).max(real(o200k(), text))
}

/// The chat messages a sample is sent as.
fn messages(sample: &str) -> Value {
    json!([
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": sample},
    ])
}

/// The prompt tokens OpenAI bills for `messages` (3 per message, 3 to
/// prime the reply, and the tokens of every value), by one encoding.
fn billed(encoding: &CoreBPE, messages: &Value) -> u64 {
    let values: u64 = messages
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|message| message.values())
        .filter_map(Value::as_str)
        .map(|text| real(encoding, text))
        .sum();
    let count = messages.as_array().map_or(0, Vec::len) as u64;
    values + 3 * count + 3
}

/// What the gateway computes: the messages serialised into a counter.
fn estimate_json(value: &Value) -> u64 {
    let mut counter = TokenCounter::new();
    serde_json::to_writer(&mut counter, value).expect("a counter never fails");
    counter.tokens()
}

fn corpus() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut samples: Vec<(String, String)> = fs::read_dir(&dir)
        .expect("tests/corpus is readable")
        .map(|entry| {
            let path = entry.expect("a corpus entry").path();
            let name = path.file_stem().expect("a file name").to_string_lossy().into_owned();
            (name, fs::read_to_string(&path).expect("corpus files are UTF-8"))
        })
        .collect();
    samples.sort();
    samples
}

struct Row {
    name: String,
    bytes: usize,
    cl100k: u64,
    o200k: u64,
    estimate: u64,
    /// Estimate over the larger real count, of the text alone.
    text: f64,
    /// Of the messages as JSON: over the larger of the JSON text's real
    /// count and the billed count.
    json: f64,
}

#[test]
fn never_under_the_real_count_by_more_than_five_percent() {
    let samples = corpus();
    assert!(samples.len() >= 30, "the corpus went missing: {} samples", samples.len());
    let rows: Vec<Row> = samples
        .iter()
        .map(|(name, text)| {
            let estimate = estimate_tokens(text);
            let body = messages(text);
            let json_text = serde_json::to_string(&body).expect("serialises");
            let json_real = worst(&json_text).max(billed(cl100k(), &body)).max(billed(o200k(), &body));
            Row {
                name: name.clone(),
                bytes: text.len(),
                cl100k: real(cl100k(), text),
                o200k: real(o200k(), text),
                estimate,
                text: estimate as f64 / worst(text) as f64,
                json: estimate_json(&body) as f64 / json_real as f64,
            }
        })
        .collect();

    let mut table =
        String::from("sample                     bytes  cl100k  o200k  estimate  text ratio  chat JSON ratio\n");
    for row in &rows {
        writeln!(
            table,
            "{:<25} {:>6} {:>7} {:>6} {:>9} {:>11.2} {:>16.2}",
            row.name, row.bytes, row.cl100k, row.o200k, row.estimate, row.text, row.json
        )
        .expect("writes to a String");
    }
    let mut classes: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for row in &rows {
        let class = row.name.split('-').next().unwrap_or(&row.name);
        classes.entry(class).or_default().extend([row.text, row.json]);
    }
    table.push_str("\nclass        min  median   max  (text and chat JSON ratios)\n");
    for (class, ratios) in &mut classes {
        ratios.sort_by(f64::total_cmp);
        let (min, median, max) = (ratios[0], ratios[ratios.len() / 2], ratios[ratios.len() - 1]);
        writeln!(table, "{class:<10} {min:>5.2} {median:>7.2} {max:>5.2}").expect("writes to a String");
    }
    println!("{table}");

    let under: Vec<&str> =
        rows.iter().filter(|row| row.text < FLOOR || row.json < FLOOR).map(|row| row.name.as_str()).collect();
    assert!(under.is_empty(), "under the real count by more than 5%: {under:?}\n{table}");
}

/// The estimate of `text` is within `expect` (inclusive).
fn check(text: &str, expect: std::ops::RangeInclusive<u64>) {
    let estimate = estimate_tokens(text);
    assert!(expect.contains(&estimate), "{text:?}: {estimate} not in {expect:?}");
}

#[test]
fn small_texts() {
    check("", 0..=0);
    check(" ", 1..=1);
    check("a", 1..=2);
    check("\n", 1..=1);
    check("Hello, world!", 4..=6);
    check("The quick brown fox jumps over the lazy dog.", 10..=15);
    // Three digits a token, and the space before a number is a token.
    check("1234567", 3..=4);
    check("a 1", 3..=4);
    // A run of spaces is one token, however long.
    check("a        b", 3..=4);
    check("日本語のテキスト", 8..=13);
    // An emoji: three tokens; another astral character: a token per byte.
    check("😀", 3..=3);
    check("𝐀", 4..=4);
}

#[test]
fn any_single_character_is_at_least_a_token() {
    let characters = (0..=0x7F_u32)
        .chain([0xA0, 0xE9, 0x101, 0x301, 0x3B1, 0x436, 0x5D0, 0x628, 0x915, 0x1EA1, 0x2019, 0x3042, 0x4E2D])
        .chain([0xAC00, 0xE000, 0xFF01, 0x1_F600, 0x2_0000, 0x10_FFFF])
        .filter_map(char::from_u32);
    for c in characters {
        let tokens = estimate_tokens(c.encode_utf8(&mut [0; 4]));
        assert!(tokens >= 1, "{c:?}: {tokens}");
    }
}

#[test]
fn a_stray_continuation_byte_still_counts() {
    let mut counter = TokenCounter::new();
    counter.write_all(&[0x80]).expect("never fails");
    assert_eq!(counter.tokens(), 1);
}

#[test]
fn huge_inputs_saturate_instead_of_overflowing() {
    let mut counter = TokenCounter { sixteenths: u64::MAX - 10, ..TokenCounter::new() };
    counter.write_all("a long word, and then some more".as_bytes()).expect("never fails");
    assert_eq!(counter.tokens(), u64::MAX.div_ceil(16));
    counter.write_all(b" ").expect("never fails");
    assert_eq!(counter.tokens(), u64::MAX.div_ceil(16));

    // More than one chunk in one write: the sum is split, not truncated.
    let big = "ab 12 ".repeat(CHUNK / 6 + 1_000);
    let estimate = estimate_tokens(&big);
    let by_parts: u64 = {
        let mut counter = TokenCounter::new();
        for part in big.as_bytes().chunks(CHUNK / 3 + 7) {
            counter.write_all(part).expect("never fails");
        }
        counter.tokens()
    };
    assert_eq!(estimate, by_parts);
    assert!(estimate > (big.len() / 3) as u64, "{estimate}");
}

#[test]
fn both_writers_and_serde_json_agree() {
    let body = messages("Hello there,\n  how are you? 你好 👋");
    let mut through_fmt = TokenCounter::new();
    std::fmt::Write::write_fmt(&mut through_fmt, format_args!("{}", serde_json::to_string(&body).expect("serialises")))
        .expect("never fails");
    let text = serde_json::to_string(&body).expect("serialises");
    assert_eq!(estimate_json(&body), estimate_tokens(&text));
    assert_eq!(through_fmt.tokens(), estimate_tokens(&text));
    assert_eq!(TokenCounter::default(), TokenCounter::new());
}

#[test]
fn the_table_is_the_rule() {
    for previous in 0..=u8::MAX {
        for byte in 0..=u8::MAX {
            let cost = pair_cost(previous, byte);
            assert_eq!(PAIR_COST[(usize::from(previous) << 8) | usize::from(byte)], cost);
            assert!(u32::from(cost) + RUN <= MAX_COST, "{previous:#x} {byte:#x}: {cost}");
        }
    }
}

/// The cost, in sixteenths of a token, of byte `c` after `b` and `a`, by
/// the rule itself (not the table).
fn cost(a: u8, b: u8, c: u8) -> u32 {
    u32::from(pair_cost(b, c)) + RUN * u32::from(run_cost(a, b, c))
}

/// The reference: [`cost`] byte by byte, plus the tail.
fn reference(bytes: &[u8]) -> u64 {
    let (mut a, mut b) = (START, START);
    let mut sum: u64 = 0;
    for &c in bytes {
        sum += u64::from(cost(a, b, c));
        (a, b) = (b, c);
    }
    let tail = if b == b' ' { TAIL_SPACE } else { 0 };
    (sum + tail).div_ceil(16)
}

fn split_at_all(bytes: &[u8], cuts: &[usize]) -> u64 {
    let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut counter = TokenCounter::new();
    let mut start = 0;
    for cut in cuts.into_iter().chain([bytes.len()]) {
        counter.write_all(&bytes[start..cut]).expect("never fails");
        start = cut;
    }
    counter.tokens()
}

/// Any string, or one of ASCII text, spaces and tabs (which
/// `any::<String>()` rarely makes).
fn texts() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[ -~\t\n]{0,40}", "[ a\t.1é]{0,12}"]
}

proptest! {
    #[test]
    fn any_split_counts_the_same(text in texts(), cuts in prop::collection::vec(any::<usize>(), 0..12)) {
        let whole = estimate_tokens(&text);
        prop_assert_eq!(split_at_all(text.as_bytes(), &cuts), whole);
        prop_assert_eq!(reference(text.as_bytes()), whole);
    }

    #[test]
    fn byte_by_byte_counts_the_same(text in "[a-zA-Z0-9 \t\n.,:;(){}\"'é中한😀-]{0,64}") {
        let mut counter = TokenCounter::new();
        for byte in text.as_bytes() {
            counter.write_all(std::slice::from_ref(byte)).expect("never fails");
        }
        prop_assert_eq!(counter.tokens(), estimate_tokens(&text));
    }

    #[test]
    fn any_text_is_at_least_a_token_and_more_text_never_counts_less(text in texts(), more in texts()) {
        let tokens = estimate_tokens(&text);
        prop_assert!(text.is_empty() || tokens >= 1, "{text:?}: {tokens}");
        prop_assert!(estimate_tokens(&(text.clone() + &more)) >= tokens);
    }

    #[test]
    fn any_bytes_split_anywhere_count_the_same(bytes in prop::collection::vec(any::<u8>(), 0..200), cuts in prop::collection::vec(any::<usize>(), 0..12)) {
        prop_assert_eq!(split_at_all(&bytes, &cuts), reference(&bytes));
    }
}
