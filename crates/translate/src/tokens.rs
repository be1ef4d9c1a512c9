//! A fast, conservative estimate of how many tokens a text or a JSON body
//! costs, for budget holds and context-window checks before any provider
//! has counted.
//!
//! The gateway serialises what a provider reads as prompt (messages, tools,
//! response format) into a [`TokenCounter`] and holds budget for, or checks
//! the context window against, [`TokenCounter::tokens`]. The estimate is
//! meant to be *over* the real count: a hold that is too small lets a
//! request past a hard budget, one that is too big is released when the
//! provider reports usage. (A quarter of the JSON bytes, the gateway's
//! first rule, is 1.2–1.5 times the real count for English, but under half
//! of it for Chinese, Hindi, numbers or base64.)
//!
//! # The rule
//!
//! Every byte costs a whole number of sixteenths of a token, looked up by
//! the byte and the byte before it (one table load per byte, no branch, no
//! allocation); a second space after a non-space adds a token; the sum is
//! rounded up once, at the end. Bytes are classed as ASCII lower- or
//! upper-case letter, digit, space, tab, newline, punctuation, control; a
//! UTF-8 continuation byte; or a lead byte, by the block of the character
//! it starts (which is its script). In tokens:
//!
//! | byte | after | costs |
//! |---|---|---|
//! | letter | space, tab, newline | 1: a word, with the space before it |
//! | letter | punctuation | ½: `.get`, `"Hello`, the mark often joins the word |
//! | letter | digit | 2.4: mostly hashes and base64 |
//! | letter | anything else (non-ASCII, start of text) | 1.5 |
//! | lower-case letter | letter | ⅛ (5/16 after an upper-case one): long words split |
//! | upper-case letter | lower-case / upper-case letter | ½ (`camelCase` splits) / ⅛ |
//! | digit | digit | ⅜: tiktoken splits numbers into groups of up to 3 digits |
//! | digit | space, letter | 2: the space before a number is a token of its own |
//! | digit | anything else | 1 |
//! | punctuation | punctuation / anything else | 5/16 / 1 |
//! | space | anything | 0: it joins what follows; but the second space of a run is a token (a run of spaces is one token however long), and so is a trailing space |
//! | tab | tab / anything else | 0 / 1 |
//! | newline | punctuation / newline / anything else | ¼ (`;\n` is one token) / ⅛ / 1 |
//! | control byte, byte never in UTF-8, continuation byte with no lead | | 1 |
//!
//! A non-ASCII character costs at its lead byte, by script, at the start
//! of a word (after an ASCII byte) and inside one:
//!
//! | characters | start | inside |
//! |---|---|---|
//! | Latin-1, Latin extended, IPA, combining marks, Hebrew, U+2000–2FFF (curly quotes, dashes, arrows, symbols) | 2 | 2 |
//! | Greek | 1.25 | 1.25 |
//! | Cyrillic, Armenian | 1.06 | 0.5 |
//! | Arabic, Syriac, Thaana | 2 | 0.69 |
//! | Indic scripts, Thai, Tibetan (U+0800–0FFF) | 2.8 | 1 |
//! | CJK punctuation, kana | 1.06 | 1.06 |
//! | CJK ideographs | 1.8 | 1.8 |
//! | Hangul | 2.75 | 1 |
//! | U+F000–FFFF (fullwidth forms, compatibility ideographs) | 1.5 | 1.5 |
//! | emoji (U+1F000–1FFFF) | 3 | 3 |
//! | U+1000–1FFF (Myanmar, Georgian, Ethiopic, Vietnamese letters, …), private use | 3 | 3 |
//! | other astral characters (historic scripts, rare ideographs, math letters) | 4 | 4 |
//!
//! The last two rows are the worst case, a token per byte, for what the
//! corpus does not cover. The rest was fitted: a linear program over the
//! corpus (below) chose the weights that make the largest ratio for prose
//! and code smallest, subject to every sample, as text and as chat JSON,
//! being at least 1.06 times its real count (1.15 for non-Latin scripts,
//! whose samples are fewer), and to lower bounds from tiktoken's
//! pre-tokenizer (a word, a digit group, a punctuation run, a newline and a
//! run of spaces each start at least one token, as they do in `cl100k_base`
//! and `o200k_base`); the weights were then rounded up.
//!
//! # What it was checked against
//!
//! OpenAI's `cl100k_base` (GPT-4, GPT-3.5) and `o200k_base` (GPT-4o, GPT-4.1,
//! GPT-5, the o-series), from `tiktoken-rs`, in this crate's tests, on 40
//! samples (`tests/corpus/`, 56 KB): English prose of seven registers, code
//! (Rust, Python, Java, TypeScript, shell, YAML, JSON, minified JavaScript
//! and CSS), Chinese, Japanese and Korean (modern, technical, classical, a
//! list of rare names), mixed text (English with CJK, emoji, Cyrillic,
//! Greek, Arabic with Hebrew, Hindi with Thai, French, German, several
//! European languages), numbers (a table, CSV and logs), links, base64 and
//! hashes, and whitespace-aligned text. Each sample is estimated as text
//! and as the chat messages the gateway sees (a system message and the
//! sample as the user's, in JSON), against the larger of the two
//! encodings' counts (and, for the JSON, of the billed count: the values'
//! tokens plus 3 per message plus 3). The estimate is never under; the
//! ratio estimate / real count, over both forms of each class's samples:
//!
//! | class | samples | min | median | max |
//! |---|---|---|---|---|
//! | English prose | 7 | 1.12 | 1.33 | 1.50 |
//! | code | 8 | 1.11 | 1.27 | 1.43 |
//! | CJK | 9 | 1.05 | 1.19 | 1.70 |
//! | mixed scripts | 10 | 1.12 | 1.20 | 1.45 |
//! | numbers and tables | 2 | 1.18 | 1.21 | 1.25 |
//! | links, base64, hashes | 3 | 1.08 | 1.26 | 1.46 |
//! | whitespace-aligned | 1 | 1.22 | 1.28 | 1.28 |
//!
//! On texts outside the corpus (a README, Go code, Spanish, a chat with a
//! tool call) it read 1.23–1.35. What it does not cover, measured on
//! generated strings: random lower-case letters (0.43 of the real count),
//! random Hangul syllables (0.38) and random CJK ideographs (0.78) — rare
//! syllables and ideographs cost two or three tokens each where common ones
//! cost one, and gibberish has no long tokens at all.
//!
//! Other providers count with their own tokenizers, which are not public
//! and may count more. A third-party comparison (venturebeat.com, May 2025)
//! found Claude 3.5 Sonnet's tokenizer making about 16% more tokens than
//! GPT-4o's for English articles, 21% more for mathematics and 30% more
//! for Python code. Anthropic's release notes for Claude Opus 4.7 say its
//! new tokenizer makes "roughly 1× to 1.35×" as many tokens as previous
//! models', and independent measurements with Anthropic's `count_tokens`
//! found 1.45× for English prose and 1.15–1.33× for code. Compounded (our
//! arithmetic, not a published figure), Opus 4.7 may count English prose
//! about 1.7 times as many tokens as `o200k_base`: more than this estimate
//! allows (1.12–1.5 there). A hold for Claude that must never be short
//! should scale this estimate by those factors. Google documents about 4
//! characters per Gemini token (100 tokens for 60–80 English words),
//! OpenAI's own rule of thumb; we found no published comparison of
//! Gemini's counts with OpenAI's.
//!
//! # Speed
//!
//! The counter spends about 0.5 ns a byte (a table load and an add, plus
//! the vectorised space-run count) and allocates nothing. The gateway
//! walks a request's parsed JSON ([`estimate_json`]: strings unescaped,
//! media payloads left to their own rule), so nothing is serialised again
//! for it. The criterion bench `tokens/estimate_1k_tokens_prompt`
//! (`benches/benches/tokens.rs`) measures that production path on a 4.8 KB
//! chat prompt of 956 real tokens; `tokens/estimate_1k_tokens_serialized`
//! is the same prompt serialised by `serde_json` into a counter, for
//! comparison. The closing notes give the figures.
//! The test that compares with
//! `tiktoken` prints its table with `cargo test -p modelfleet-translate
//! tokens -- --nocapture`.

use std::{fmt, io};

/// Counts the tokens of bytes written into it: a JSON body through
/// [`std::io::Write`] (`serde_json::to_writer(&mut counter, &body)`, which
/// allocates nothing), text through [`std::fmt::Write`], or a whole string
/// with [`estimate_tokens`].
///
/// The count does not depend on how the bytes are split between writes:
/// the counter keeps the last two bytes it saw, so a write may end in the
/// middle of a word, of a run of spaces or of a UTF-8 character.
///
/// ```
/// use modelfleet_translate::{TokenCounter, estimate_tokens};
///
/// let body = serde_json::json!([{"role": "user", "content": "Hello, world!"}]);
/// let mut counter = TokenCounter::new();
/// serde_json::to_writer(&mut counter, &body)?;
/// assert!(counter.tokens() >= estimate_tokens("Hello, world!"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenCounter {
    /// Sixteenths of a token so far, before the last byte's tail
    /// ([`TAIL_SPACE`]); saturates instead of wrapping.
    sixteenths: u64,
    /// The byte before `last`; [`START`] until two bytes were written.
    before_last: u8,
    /// The last byte written; [`START`] until a byte was written.
    last: u8,
}

impl TokenCounter {
    /// A counter that has counted nothing.
    #[must_use]
    pub const fn new() -> TokenCounter {
        TokenCounter { sixteenths: 0, before_last: START, last: START }
    }

    /// The estimate of everything written so far, in whole tokens (rounded
    /// up): 0 for nothing, at least 1 for any text.
    #[must_use]
    pub const fn tokens(&self) -> u64 {
        let tail = if self.last == b' ' { TAIL_SPACE } else { 0 };
        self.sixteenths.saturating_add(tail).div_ceil(16)
    }

    /// Counts `bytes`, which follow whatever was written before.
    fn count(&mut self, bytes: &[u8]) {
        let (mut before, mut previous) = (self.before_last, self.last);
        for chunk in bytes.chunks(CHUNK) {
            self.add(u64::from(pair_costs(previous, chunk)) + u64::from(run_costs(before, previous, chunk)));
            (before, previous) = match *chunk {
                [.., b, c] => (b, c),
                [c] => (previous, c),
                [] => (before, previous),
            };
        }
        self.before_last = before;
        self.last = previous;
    }

    fn add(&mut self, sixteenths: u64) {
        self.sixteenths = self.sixteenths.saturating_add(sixteenths);
    }
}

impl Default for TokenCounter {
    fn default() -> TokenCounter {
        TokenCounter::new()
    }
}

impl io::Write for TokenCounter {
    /// Counts all of `buf`; never fails.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.count(buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.count(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl fmt::Write for TokenCounter {
    /// Counts all of `s`; never fails.
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.count(s.as_bytes());
        Ok(())
    }
}

/// The estimate of `text` alone, in tokens: what a [`TokenCounter`] that
/// was written `text` says.
///
/// ```
/// use modelfleet_translate::estimate_tokens;
///
/// assert_eq!(estimate_tokens(""), 0);
/// assert!(estimate_tokens("a") >= 1);
/// // English prose: about a token per word, rounded up generously.
/// let words = estimate_tokens("The quick brown fox jumps over the lazy dog.");
/// assert!((10..=15).contains(&words), "{words}");
/// ```
#[must_use]
pub fn estimate_tokens(text: &str) -> u64 {
    let mut counter = TokenCounter::new();
    counter.count(text.as_bytes());
    counter.tokens()
}

/// The prompt estimate a budget hold rests on, over a request's parsed JSON
/// (a chat body, or any part of one): every string's text as the provider
/// reads it (unescaped: `\u6a21` is one character, not six) and every key,
/// at [`estimate_tokens`]'s rule or a quarter of their bytes when that is
/// more (which bounds tokenizers that cut English finer than OpenAI's do),
/// plus a token for each value for the structure around it. Media payloads
/// are left out — a base64 `data:` URL where a part puts its media (`url`,
/// `image_url`, `file_data`), and the `data` or `file_data` inside an audio
/// or file part (an object whose `type` is `input_audio`, `audio`, `file`
/// or `input_file`) — for the caller counts each media part by a rule of
/// its own (a 300 KB screenshot is not 300,000 tokens of text). Text that
/// merely starts with `data:` elsewhere (a prompt, a message) is text.
///
/// ```
/// use modelfleet_translate::{estimate_json, estimate_tokens};
///
/// let text = serde_json::json!([{"role": "user", "content": "模型选择"}]);
/// let escaped: serde_json::Value = serde_json::from_str(r#"[{"role": "user", "content": "\u6a21\u578b\u9009\u62e9"}]"#)?;
/// assert_eq!(estimate_json(&text), estimate_json(&escaped), "the text, not its escapes");
/// let image = serde_json::json!([{"role": "user", "content": [
///     {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", "iVBORw0K".repeat(40_000))}}]}]);
/// assert!(estimate_json(&image) < 100, "the payload is the media rule's");
/// let text = serde_json::json!({"prompt": format!("data: {}", "an event line ".repeat(1_000))});
/// assert!(estimate_json(&text) > 2_000, "text is text");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use]
pub fn estimate_json(value: &serde_json::Value) -> u64 {
    let mut walk = Walk { counter: TokenCounter::new(), bytes: 0, values: 0 };
    walk.value(value, None, false);
    walk.counter.tokens().max(walk.bytes.div_ceil(4)).saturating_add(walk.values)
}

/// [`estimate_json`]'s walk over a value.
struct Walk {
    counter: TokenCounter,
    /// Bytes of the strings and keys counted.
    bytes: u64,
    /// Values seen: a token each for the structure around them.
    values: u64,
}

impl Walk {
    fn text(&mut self, text: &str) {
        // A separator, so two strings never count as one word.
        self.counter.count(b" ");
        self.counter.count(text.as_bytes());
        self.bytes += text.len() as u64;
    }

    /// `value`, under `key` in its object (if any), inside an audio or
    /// file part (`in_media`) or not.
    fn value(&mut self, value: &serde_json::Value, key: Option<&str>, in_media: bool) {
        use serde_json::Value;
        self.values += 1;
        match value {
            Value::String(text) => {
                let media = match key {
                    Some("url" | "image_url" | "file_data") if is_base64_data_url(text) => true,
                    Some("data" | "file_data") => in_media,
                    _ => false,
                };
                if !media {
                    self.text(text);
                }
            }
            Value::Array(items) => items.iter().for_each(|item| self.value(item, None, in_media)),
            Value::Object(fields) => {
                let media_part = matches!(
                    fields.get("type").and_then(Value::as_str),
                    Some("input_audio" | "audio" | "file" | "input_file")
                );
                for (name, field) in fields {
                    self.text(name);
                    self.value(field, Some(name), in_media || media_part);
                }
            }
            Value::Number(_) | Value::Bool(_) | Value::Null => {}
        }
    }
}

/// `data:<media type>;base64,…`: the `;base64` flag before the first comma.
fn is_base64_data_url(text: &str) -> bool {
    text.strip_prefix("data:")
        .and_then(|rest| rest.split_once(','))
        .is_some_and(|(header, _)| header.len() <= 256 && header.ends_with(";base64"))
}

/// The byte "before" the first one: a control character, so the first
/// byte is counted as the start of a word, a number or a line.
const START: u8 = 0;

/// What a space costs when it is the last byte: a space is free while it
/// may join the word after it, and a trailing space is a token of its own.
const TAIL_SPACE: u64 = 16;

/// The most one byte can cost, in sixteenths: a pair cost (at most 64, a
/// four-byte character at a token per byte) plus a run's.
const MAX_COST: u32 = 64 + RUN;

/// What starting a run costs (see [`run_cost`]): a token.
const RUN: u32 = 16;

/// Bytes summed in one `u32` at most: [`MAX_COST`] sixteenths each cannot
/// overflow it.
const CHUNK: usize = 1 << 24;
const _: () = assert!(CHUNK as u64 * MAX_COST as u64 <= u32::MAX as u64);

/// The three-byte part of the rule: 1 where a second space follows a
/// space after anything but a space. A single space joins the word after
/// it and is free; a run of two or more is a token of its own, however
/// long it is (indentation, aligned columns).
#[inline]
fn run_cost(a: u8, b: u8, c: u8) -> u8 {
    u8::from(a != b' ') & u8::from(b == b' ') & u8::from(c == b' ')
}

/// Sum of [`pair_cost`] over `bytes`, the first one after `previous`: one
/// table load per byte.
fn pair_costs(mut previous: u8, bytes: &[u8]) -> u32 {
    let mut sum = 0;
    for &byte in bytes {
        sum += u32::from(PAIR_COST[(usize::from(previous) << 8) | usize::from(byte)]);
        previous = byte;
    }
    sum
}

/// Sum of `RUN` times [`run_cost`] over `bytes`, the first one after
/// `before` and `previous`. Branch-free over three shifted slices, counted
/// in `u8` lanes 255 bytes at a time, so it vectorises.
fn run_costs(before: u8, previous: u8, bytes: &[u8]) -> u32 {
    let [b, c, ..] = *bytes else {
        return bytes.first().map_or(0, |&c| RUN * u32::from(run_cost(before, previous, c)));
    };
    let mut runs = u32::from(run_cost(before, previous, b)) + u32::from(run_cost(previous, b, c));
    let (a, b, c) = (&bytes[..bytes.len() - 2], &bytes[1..bytes.len() - 1], &bytes[2..]);
    for start in (0..a.len()).step_by(255) {
        let end = (start + 255).min(a.len());
        let (a, b, c) = (&a[start..end], &b[start..end], &c[start..end]);
        let mut block: u8 = 0;
        for i in 0..a.len() {
            block += run_cost(a[i], b[i], c[i]);
        }
        runs += u32::from(block);
    }
    RUN * runs
}

/// [`pair_cost`] for every pair of bytes, indexed by `previous << 8 |
/// byte`: one load per byte in the hot loop. 64 KiB, of which ASCII text
/// touches a few lines.
static PAIR_COST: [u8; 1 << 16] = {
    let mut table = [0; 1 << 16];
    let mut i = 0;
    while i < table.len() {
        #[expect(clippy::cast_possible_truncation, reason = "i < 2^16: its high and low bytes")]
        let (previous, byte) = ((i >> 8) as u8, i as u8);
        table[i] = pair_cost(previous, byte);
        i += 1;
    }
    table
};

/// What kind of byte a byte is. Bytes from 0x80 up are classed by the
/// UTF-8 lead byte's range, which is the script of the character.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Lower,
    Upper,
    Digit,
    Space,
    Tab,
    Newline,
    Punctuation,
    /// Other ASCII control bytes.
    Control,
    /// 0x80–0xBF: the second to fourth byte of a character.
    Continuation,
    /// 0xC0, 0xC1, 0xF5–0xFF: never in UTF-8.
    Invalid,
    /// Lead bytes, by the range of the characters they start.
    Script(Script),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Script {
    /// U+0080–U+02FF (C2–CB): Latin-1 symbols, accented Latin, IPA.
    Latin,
    /// U+0300–U+036F (CC–CD): combining marks.
    Combining,
    /// U+0370–U+03FF (CE–CF).
    Greek,
    /// U+0400–U+057F (D0–D5): Cyrillic, Armenian.
    Cyrillic,
    /// U+0580–U+05FF (D6–D7): Armenian, Hebrew.
    Hebrew,
    /// U+0600–U+07FF (D8–DF): Arabic, Syriac, Thaana, N'Ko.
    Arabic,
    /// U+0800–U+0FFF (E0): Indic scripts, Thai, Lao, Tibetan.
    Indic,
    /// U+1000–U+1FFF (E1): Myanmar, Georgian, Hangul jamo, Ethiopic,
    /// Khmer, Vietnamese letters, Greek extended.
    Misc,
    /// U+2000–U+2FFF (E2): punctuation (dashes, curly quotes), symbols,
    /// arrows, box drawing.
    Symbols,
    /// U+3000–U+3FFF (E3): CJK punctuation, kana.
    Kana,
    /// U+4000–U+9FFF (E4–E9): CJK ideographs.
    Han,
    /// U+A000–U+DFFF (EA–ED): Yi, Hangul syllables.
    Hangul,
    /// U+E000–U+EFFF (EE): private use.
    Private,
    /// U+F000–U+FFFF (EF): compatibility ideographs, fullwidth forms,
    /// variation selectors.
    Fullwidth,
    /// U+10000 and up (F0–F4): emoji, historic scripts, rare ideographs.
    Astral,
}

const fn class(byte: u8) -> Class {
    match byte {
        b'a'..=b'z' => Class::Lower,
        b'A'..=b'Z' => Class::Upper,
        b'0'..=b'9' => Class::Digit,
        b' ' => Class::Space,
        b'\t' => Class::Tab,
        b'\n' | b'\r' => Class::Newline,
        b'!'..=b'~' => Class::Punctuation,
        0..=0x7F => Class::Control,
        0x80..=0xBF => Class::Continuation,
        0xC2..=0xCB => Class::Script(Script::Latin),
        0xCC..=0xCD => Class::Script(Script::Combining),
        0xCE..=0xCF => Class::Script(Script::Greek),
        0xD0..=0xD5 => Class::Script(Script::Cyrillic),
        0xD6..=0xD7 => Class::Script(Script::Hebrew),
        0xD8..=0xDF => Class::Script(Script::Arabic),
        0xE0 => Class::Script(Script::Indic),
        0xE1 => Class::Script(Script::Misc),
        0xE2 => Class::Script(Script::Symbols),
        0xE3 => Class::Script(Script::Kana),
        0xE4..=0xE9 => Class::Script(Script::Han),
        0xEA..=0xED => Class::Script(Script::Hangul),
        0xEE => Class::Script(Script::Private),
        0xEF => Class::Script(Script::Fullwidth),
        0xF0..=0xF4 => Class::Script(Script::Astral),
        0xC0 | 0xC1 | 0xF5..=0xFF => Class::Invalid,
    }
}

/// The cost, in sixteenths of a token, of `byte` after `previous`: the
/// two-byte part of the rule (see the module documentation for the
/// table and where the numbers come from).
#[expect(clippy::match_same_arms, reason = "a table of weights: arms with equal weights are separate rules")]
const fn pair_cost(previous: u8, byte: u8) -> u8 {
    use Class::{
        Continuation, Control, Digit, Invalid, Lower, Newline, Punctuation, Script as Lead, Space, Tab, Upper,
    };
    let after = class(previous);
    let in_word = matches!(after, Continuation | Lead(_));
    match class(byte) {
        Lower | Upper => match (after, class(byte)) {
            (Lower, Lower) => 2,
            (Lower, Upper) => 8,
            (Upper, Lower) => 5,
            (Upper, Upper) => 2,
            (Space | Newline | Tab, _) => 16,
            (Punctuation, _) => 8,
            (Digit, _) => 39,
            _ => 24,
        },
        Digit => match after {
            Digit => 6,
            Space | Lower | Upper => 32,
            _ => 16,
        },
        Space => 0,
        Tab => match after {
            Tab => 0,
            _ => 16,
        },
        Newline => match after {
            Punctuation => 4,
            Newline => 2,
            _ => 16,
        },
        Punctuation => match after {
            Punctuation => 5,
            _ => 16,
        },
        Control | Invalid => 16,
        Continuation => match after {
            // The second byte of a character beyond the emoji block: up to
            // a token per byte.
            Lead(Script::Astral) if previous != 0xF0 || byte != 0x9F => 16,
            Continuation | Lead(_) => 0,
            // A continuation byte with no lead byte: not UTF-8.
            _ => 16,
        },
        Lead(script) => match (script, in_word) {
            (Script::Latin | Script::Combining | Script::Hebrew | Script::Symbols, _) => 32,
            (Script::Greek, _) => 20,
            (Script::Cyrillic, false) => 17,
            (Script::Cyrillic, true) => 8,
            (Script::Arabic, false) => 32,
            (Script::Arabic, true) => 11,
            (Script::Indic, false) => 45,
            (Script::Indic, true) => 16,
            (Script::Misc | Script::Private, _) => 48,
            (Script::Kana, _) => 17,
            (Script::Han, _) => 29,
            (Script::Hangul, false) => 44,
            (Script::Hangul, true) => 16,
            (Script::Fullwidth, _) => 24,
            (Script::Astral, _) => 48,
        },
    }
}

#[cfg(test)]
#[path = "tokens_tests.rs"]
mod tests;
