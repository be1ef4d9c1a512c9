//! A language hint from the text of a chat request: which language (an ISO
//! 639-1 code) the text is most likely written in, or `None`.
//!
//! Two steps, both over no more than the first [`MAX_BYTES`] of the text:
//!
//! 1. **Script.** Letters are counted by script, and the script with the
//!    most letters wins (a tie decides nothing). Most scripts name one
//!    language: Cyrillic is `ru`, or `uk` when the Ukrainian-only letters
//!    (і ї є ґ) outnumber the Russian-only ones (ы э ъ ё); Han and kana are
//!    counted together and are `ja` when any kana is present, else `zh`;
//!    Hangul `ko`, Arabic `ar`, Hebrew `he`, Devanagari `hi`, Greek `el`,
//!    Thai `th`. Letters of other scripts count too, and when they win there
//!    is no answer.
//! 2. **Latin words.** When Latin letters win, the words are matched against
//!    a short list of very common function words of `en`, `es`, `fr`, `de`,
//!    `pt`, `it` and `nl` (a word may belong to several). The language with
//!    the most hits wins if it has at least two and strictly more than the
//!    runner-up.
//!
//! Code, numbers and punctuation give no answer: digits and punctuation are
//! not letters, tokens that hold a digit or `_` (`i32`, `is_empty`) are
//! identifiers, not words, and one-letter ASCII words (`i`, `a`, `x`, also
//! Spanish *y*) are skipped; the word list leaves out words that are
//! keywords in common languages (`for`, `in`, `if`, `and`, `this`, …).
//!
//! It is a hint: a false `None` costs nothing, a wrong answer more, so short
//! or unclear text gives `None`. It allocates nothing and does a bounded
//! amount of work per request, whatever the size of the text.

/// How much of the text is looked at: its first 4 KiB, cut back to a char
/// boundary.
const MAX_BYTES: usize = 4096;

/// The language (ISO 639-1 code) the text is most likely written in, from
/// its script and, for Latin-script text, from common function words.
///
/// `None` when the text is too short (fewer than 3 letters, 2 for Han, kana
/// and Hangul; fewer than 2 function words for Latin) or nothing is clear.
/// Looks at no more than the first 4 KiB of the text (at a char boundary), so
/// its cost per request is bounded.
#[must_use]
pub(crate) fn detect(text: &str) -> Option<&'static str> {
    let text = &text[..text.floor_char_boundary(MAX_BYTES)];
    let tally = Tally::of(text);
    let script = tally.winner()?;
    match script {
        Script::Latin => latin(text),
        Script::Cyrillic => Some(if tally.ukrainian > tally.russian { "uk" } else { "ru" }),
        Script::Cjk => Some(if tally.kana > 0 { "ja" } else { "zh" }),
        Script::Hangul => Some("ko"),
        Script::Arabic => Some("ar"),
        Script::Hebrew => Some("he"),
        Script::Devanagari => Some("hi"),
        Script::Greek => Some("el"),
        Script::Thai => Some("th"),
        Script::Other => None,
    }
}

/// The scripts letters are counted in. Han and kana are one script here
/// (Japanese mixes them), told apart by [`Tally::kana`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    Latin,
    Cyrillic,
    Greek,
    Hebrew,
    Arabic,
    Devanagari,
    Thai,
    Hangul,
    Cjk,
    Other,
}

impl Script {
    /// Every script, in the order of [`Tally::letters`].
    const ALL: [Script; 10] = [
        Script::Latin,
        Script::Cyrillic,
        Script::Greek,
        Script::Hebrew,
        Script::Arabic,
        Script::Devanagari,
        Script::Thai,
        Script::Hangul,
        Script::Cjk,
        Script::Other,
    ];

    /// The script of a letter (a char that is alphabetic).
    fn of(c: char) -> Script {
        match c {
            'a'..='z' | 'A'..='Z' | '\u{C0}'..='\u{24F}' | '\u{1E00}'..='\u{1EFF}' => Script::Latin,
            '\u{370}'..='\u{3FF}' | '\u{1F00}'..='\u{1FFF}' => Script::Greek,
            '\u{400}'..='\u{52F}' => Script::Cyrillic,
            '\u{590}'..='\u{5FF}' | '\u{FB1D}'..='\u{FB4F}' => Script::Hebrew,
            '\u{600}'..='\u{6FF}'
            | '\u{750}'..='\u{77F}'
            | '\u{8A0}'..='\u{8FF}'
            | '\u{FB50}'..='\u{FDFF}'
            | '\u{FE70}'..='\u{FEFF}' => Script::Arabic,
            '\u{900}'..='\u{97F}' => Script::Devanagari,
            '\u{E00}'..='\u{E7F}' => Script::Thai,
            '\u{1100}'..='\u{11FF}' | '\u{3130}'..='\u{318F}' | '\u{A960}'..='\u{A97F}' | '\u{AC00}'..='\u{D7FF}' => {
                Script::Hangul
            }
            _ if is_kana(c) => Script::Cjk,
            '\u{3005}'..='\u{3007}'
            | '\u{3400}'..='\u{4DBF}'
            | '\u{4E00}'..='\u{9FFF}'
            | '\u{F900}'..='\u{FAFF}'
            | '\u{20000}'..='\u{3FFFF}' => Script::Cjk,
            _ => Script::Other,
        }
    }

    /// The fewest letters that say anything: a Han, kana or Hangul char is a
    /// syllable or a word, an alphabet's letter much less.
    fn min_letters(self) -> u32 {
        match self {
            Script::Cjk | Script::Hangul => 2,
            _ => 3,
        }
    }
}

/// Hiragana, katakana (and its phonetic extensions and half-width forms).
fn is_kana(c: char) -> bool {
    matches!(c, '\u{3040}'..='\u{30FF}' | '\u{31F0}'..='\u{31FF}' | '\u{FF66}'..='\u{FF9F}')
}

/// Letters counted by script.
#[derive(Debug, Default)]
struct Tally {
    /// Per script, in the order of [`Script::ALL`].
    letters: [u32; Script::ALL.len()],
    /// Kana among the [`Script::Cjk`] letters.
    kana: u32,
    /// Cyrillic letters only Ukrainian uses: і ї є ґ.
    ukrainian: u32,
    /// Cyrillic letters Ukrainian does not use: ы э ъ ё.
    russian: u32,
}

impl Tally {
    fn of(text: &str) -> Tally {
        let mut tally = Tally::default();
        for c in text.chars().filter(|c| c.is_alphabetic()) {
            let script = Script::of(c);
            if let Some(slot) = Script::ALL.iter().position(|s| *s == script) {
                tally.letters[slot] += 1;
            }
            match c {
                _ if is_kana(c) => tally.kana += 1,
                'і' | 'ї' | 'є' | 'ґ' | 'І' | 'Ї' | 'Є' | 'Ґ' => tally.ukrainian += 1,
                'ы' | 'э' | 'ъ' | 'ё' | 'Ы' | 'Э' | 'Ъ' | 'Ё' => tally.russian += 1,
                _ => {}
            }
        }
        tally
    }

    /// The script with strictly the most letters, when it has enough.
    fn winner(&self) -> Option<Script> {
        let (best, &count) = self.letters.iter().enumerate().max_by_key(|&(_, count)| count)?;
        let tied = self.letters.iter().filter(|&&other| other == count).count() > 1;
        let script = Script::ALL[best];
        (!tied && count >= script.min_letters()).then_some(script)
    }
}

/// The languages told apart in Latin script, in the order of their bits in
/// [`function_word`].
const LATIN: [&str; 7] = ["en", "es", "fr", "de", "pt", "it", "nl"];

const EN: u8 = 1 << 0;
const ES: u8 = 1 << 1;
const FR: u8 = 1 << 2;
const DE: u8 = 1 << 3;
const PT: u8 = 1 << 4;
const IT: u8 = 1 << 5;
const NL: u8 = 1 << 6;

/// The languages (bits of [`LATIN`]) a lowercase word is a very common
/// function word of; 0 for any other word.
///
/// Left out on purpose: one-letter words (skipped before this), and words
/// that are keywords in common programming languages (`for`, `in`, `if`,
/// `and`, `or`, `not`, `as`, `with`, `this`, `from`, `do`, `new`), so that
/// code does not read as English or Portuguese.
fn function_word(word: &str) -> u8 {
    match word {
        // Shared by several languages.
        "de" => ES | FR | PT | NL,
        "la" | "un" | "si" => ES | FR | IT,
        "en" => ES | FR | NL,
        "que" => ES | FR | PT,
        "se" => ES | PT | IT,
        "una" | "del" | "al" | "lo" | "con" => ES | IT,
        "no" | "por" | "para" | "está" | "como" | "este" | "esta" | "sobre" => ES | PT,
        "es" => ES | DE,
        "le" | "il" | "qui" | "ne" => FR | IT,
        "mais" | "ou" | "à" => FR | PT,
        "je" => FR | NL,
        "du" => FR | DE,
        "on" => EN | FR,
        "an" | "was" | "will" => EN | DE,
        "is" => EN | NL,
        "die" | "bei" => DE | NL,
        "da" => PT | IT,
        "na" => PT | NL,
        // English.
        "the" | "of" | "to" | "are" | "be" | "been" | "were" | "have" | "has" | "can" | "you" | "your" | "what"
        | "how" | "why" | "who" | "when" | "where" | "which" | "that" | "it" | "my" | "we" | "they" | "there"
        | "would" | "should" | "could" | "please" | "at" | "about" | "does" | "did" | "some" | "any" | "into" => EN,
        // Spanish.
        "el" | "los" | "las" | "más" | "pero" | "muy" | "hay" | "qué" | "cómo" | "porque" | "también" | "yo"
        | "usted" => ES,
        // French.
        "les" | "des" | "et" | "est" | "dans" | "pour" | "pas" | "vous" | "nous" | "elle" | "ce" | "cette" | "sur"
        | "avec" | "au" | "aux" | "sont" | "une" | "pourquoi" | "très" | "ça" => FR,
        // German.
        "der" | "das" | "und" | "ist" | "nicht" | "ein" | "eine" | "einen" | "zu" | "den" | "dem" | "mit" | "von"
        | "sich" | "auf" | "für" | "ich" | "sie" | "wir" | "auch" | "wie" | "sind" | "bitte" | "im" | "dass"
        | "oder" | "aber" | "kann" | "wird" | "mir" | "mich" | "nach" | "ihr" | "kein" | "über" => DE,
        // Portuguese.
        "os" | "do" | "dos" | "em" | "um" | "uma" | "não" | "você" | "isso" | "são" | "ao" | "meu" | "minha"
        | "com" | "mas" | "eu" | "ele" | "ela" | "muito" | "também" | "pelo" | "pela" | "é" => PT,
        // Italian.
        "gli" | "di" | "che" | "della" | "dei" | "nel" | "nella" | "alla" | "sono" | "questo" | "questa" | "come"
        | "più" | "anche" | "ho" | "ha" | "perché" | "mi" | "ti" | "ci" | "per" | "non" | "ma" | "io" | "è" | "sul"
        | "sulla" => IT,
        // Dutch.
        "het" | "een" | "van" | "niet" | "op" | "zijn" | "ik" | "dit" | "maar" | "ook" | "wordt" | "naar" | "deze"
        | "hebben" | "wat" | "hoe" | "voor" | "met" | "te" | "er" | "dat" | "om" | "aan" | "kan" | "mijn" | "mij"
        | "jij" => NL,
        _ => 0,
    }
}

/// The longest function word, in bytes, with room to spare; longer words
/// are not looked up.
const MAX_WORD: usize = 16;

/// The Latin-script language of `text` from its function words.
fn latin(text: &str) -> Option<&'static str> {
    let mut hits = [0_u32; LATIN.len()];
    for token in text.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
        let mut buf = [0_u8; MAX_WORD];
        let Some(word) = lowercase_word(token, &mut buf) else { continue };
        let langs = function_word(word);
        for (bit, hit) in hits.iter_mut().enumerate() {
            if langs & (1 << bit) != 0 {
                *hit += 1;
            }
        }
    }
    let (best, &count) = hits.iter().enumerate().max_by_key(|&(_, count)| count)?;
    let runner_up = hits.iter().enumerate().filter(|&(lang, _)| lang != best).map(|(_, &n)| n).max().unwrap_or(0);
    (count >= 2 && count > runner_up).then_some(LATIN[best])
}

/// `token` in lowercase, written into `buf`, when it is a word that may be a
/// function word: Latin letters only, not one ASCII letter, and short.
fn lowercase_word<'b>(token: &str, buf: &'b mut [u8; MAX_WORD]) -> Option<&'b str> {
    if token.len() > MAX_WORD || token.len() == 1 {
        return None;
    }
    let mut len = 0;
    for c in token.chars() {
        if !(c.is_alphabetic() && Script::of(c) == Script::Latin) {
            return None;
        }
        for lower in c.to_lowercase() {
            let end = len + lower.len_utf8();
            let slot = buf.get_mut(len..end)?;
            lower.encode_utf8(slot);
            len = end;
        }
    }
    std::str::from_utf8(&buf[..len]).ok()
}

/// The language of a chat request: [`detect`] over the text of its last
/// user message (its string content, or its text parts).
#[must_use]
pub(crate) fn of_chat(body: &serde_json::Map<String, serde_json::Value>) -> Option<&'static str> {
    use serde_json::Value;
    let messages = body.get("messages")?.as_array()?;
    let last = messages.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
    match last.get("content")? {
        Value::String(text) => detect(text),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                if let Some(t) = part.get("text").and_then(Value::as_str) {
                    if text.len() >= MAX_BYTES {
                        break;
                    }
                    text.push_str(t);
                    text.push(' ');
                }
            }
            detect(&text)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(text: &str, expect: Option<&str>) {
        assert_eq!(detect(text), expect, "{text:?}");
    }

    #[test]
    fn one_sentence_per_language() {
        let cases = [
            ("Can you explain how the internet works?", "en"),
            ("¿Puedes explicarme cómo funciona el internet en términos sencillos?", "es"),
            ("Pouvez-vous m'expliquer comment fonctionne le réseau dans les grandes villes ?", "fr"),
            ("Kannst du mir erklären, wie das Internet funktioniert und was es kostet?", "de"),
            ("Você pode me explicar como funciona a internet em termos simples?", "pt"),
            ("Mi puoi spiegare come funziona il motore della macchina, per favore?", "it"),
            ("Kun je mij uitleggen hoe het internet werkt en wat het kost?", "nl"),
            ("Привет! Объясни, пожалуйста, как работает интернет.", "ru"),
            ("Привіт! Поясни, будь ласка, як працює інтернет і що це є.", "uk"),
            ("请解释一下互联网是如何工作的。", "zh"),
            ("インターネットの仕組みを説明してください。", "ja"),
            ("인터넷이 어떻게 작동하는지 설명해 주세요.", "ko"),
            ("هل يمكنك أن تشرح كيف يعمل الإنترنت؟", "ar"),
            ("תוכל להסביר איך האינטרנט עובד?", "he"),
            ("कृपया समझाइए कि इंटरनेट कैसे काम करता है।", "hi"),
            ("Μπορείς να εξηγήσεις πώς λειτουργεί το διαδίκτυο;", "el"),
            ("ช่วยอธิบายว่าอินเทอร์เน็ตทำงานอย่างไร", "th"),
        ];
        for (text, lang) in cases {
            check(text, Some(lang));
        }
    }

    #[test]
    fn mixed_text_goes_to_the_majority_script() {
        check("Как использовать функцию map в Python, если список пустой?", Some("ru"));
        check("What does the word привет mean, and how do you say it?", Some("en"));
        // Japanese with more kanji than kana is still Japanese.
        check("日本語の文章", Some("ja"));
        // Chinese naming one Latin brand.
        check("我想用 Python 写一个网页爬虫程序", Some("zh"));
    }

    #[test]
    fn too_short_or_unclear_is_none() {
        check("", None);
        check("   \n\t", None);
        check("Hi", None);
        check("ok thanks", None);
        check("Hello world", None);
        check("да", None);
        check("你", None);
        // Equal evidence for two languages.
        check("de la", None);
        // A script with no language of its own here (Armenian).
        check("Բարև ձեզ, ինչպես եք", None);
    }

    #[test]
    fn code_numbers_and_punctuation_are_none() {
        check("fn main() { let v: Vec<i32> = (0..10).collect(); for x in &v { println!(\"{x}\"); } }", None);
        check("for (int i = 0; i < n; i++) { if (a[i] > max) { max = a[i]; } }", None);
        check("def add(a, b):\n    return a + b\n\nprint(add(1, 2))", None);
        check("if x is not None and y: return x.is_empty()", None);
        check("SELECT id, name FROM users WHERE age > 30 ORDER BY name;", None);
        check("3.14159 2.71828 1.41421 42 1e10", None);
        check("?!... --- ::: ;;; ()[]{}", None);
        check("😀😀😀 👍", None);
    }

    #[test]
    fn ukrainian_only_when_its_letters_outnumber_russian_ones() {
        // A Russian sentence quoting one Ukrainian word.
        check("Это слово «її» по-украински, вы можете объяснить его значение?", Some("ru"));
        check("Це дуже гарний день, і я щасливий.", Some("uk"));
    }

    #[test]
    fn a_long_text_is_cut_at_a_char_boundary() {
        // 3-byte chars: 4096 is not a boundary.
        let text = "日本".repeat(200_000);
        assert!(!text.is_char_boundary(MAX_BYTES));
        check(&text, Some("zh"));
        // Only the first 4 KiB count: Russian after a long English prefix is not seen.
        let text = format!("{}{}", "The cat is on the mat. ".repeat(200), "Привет мир ".repeat(100_000));
        assert!(text.len() > 1_000_000);
        check(&text, Some("en"));
        // 2-byte chars, odd prefix: the cut falls inside a char.
        let text = format!("a{}", "щ".repeat(600_000));
        assert!(!text.is_char_boundary(MAX_BYTES));
        check(&text, Some("ru"));
    }

    #[test]
    fn uppercase_words_count() {
        check("WHAT IS THE CAPITAL OF FRANCE?", Some("en"));
        check("DAS IST NICHT GUT", Some("de"));
    }

    #[test]
    fn words_are_lowercased_into_the_buffer() {
        // The longest function words fit the buffer (a word that did not
        // would never match).
        let mut buf = [0_u8; MAX_WORD];
        for word in ["pourquoi", "também", "perché", "hebben", "questa"] {
            assert_eq!(lowercase_word(word, &mut buf), Some(word));
            assert_ne!(function_word(word), 0, "{word}");
        }
        assert_eq!(lowercase_word("x", &mut buf), None, "one ASCII letter");
        assert_eq!(lowercase_word("é", &mut buf), Some("é"), "one accented letter is a word");
        assert_eq!(lowercase_word("i32", &mut buf), None, "identifier");
        assert_eq!(lowercase_word("İstanbul", &mut buf), Some("i\u{307}stanbul"));
    }
}
