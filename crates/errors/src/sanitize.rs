//! Removes secrets and file paths from messages before they leave the process.

use std::{
    borrow::Cow,
    sync::{LazyLock, PoisonError, RwLock},
};

use regex::Regex;

/// What a redacted secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";
/// What a redacted file path is replaced with.
pub const PATH: &str = "[PATH]";

struct Rule {
    pattern: Regex,
    replacement: &'static str,
}

// Each replacement is a fixed point of every rule (none of them matches
// `[REDACTED]` or `[PATH]` into something else), which makes `sanitize`
// idempotent. Order matters: a whole `Authorization:` header goes before the
// bearer token inside it, secrets before paths (a token may contain `/`).
static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    let rule = |pattern: &str, replacement: &'static str| Rule { pattern: compile(pattern), replacement };
    vec![
        // `Authorization: Bearer abc`, `authorization=Basic xyz`, `"Authorization": "…"`.
        rule(r#"(?i)(authorization"?\s*[:=]\s*"?)(?:(?:bearer|basic|token)\s+)?[^\s",;]+"#, "${1}[REDACTED]"),
        // A bearer token anywhere else.
        rule(r"(?i)(bearer\s+)[A-Za-z0-9\-._~+/]+=*", "${1}[REDACTED]"),
        // OpenAI / Anthropic style keys: sk-…, sk-ant-…, sk-proj-….
        rule(r"sk-[A-Za-z0-9_\-]{6,}", REDACTED),
        // `api_key=…`, `token=…` in query strings, env dumps and key=value logs.
        rule(
            r"(?i)\b((?:api[_-]?key|access[_-]?token|refresh[_-]?token|token|secret|password|passwd|key)\s*=\s*)[^&\s,;]+",
            "${1}[REDACTED]",
        ),
        // Windows paths: `C:\Users\me\x`, `C:/Users/me`, UNC `\\server\share`.
        rule(r#"(?:\b[A-Za-z]:[\\/]|\\\\[A-Za-z0-9._$-]+\\)[^\s"'<>|]*"#, PATH),
        // Home-relative and absolute Unix paths that start a word (not a URL's
        // path, which follows a host name).
        rule(r#"(^|[\s"'(=\[,;<>])~?/[A-Za-z0-9._\-~+@%][^\s"'<>()\[\]?]*"#, "${1}[PATH]"),
    ]
});

/// Exact secret values the process holds (provider keys, gateway keys),
/// redacted wherever they appear, whatever their shape: a key no pattern
/// knows (`AIza…`, `gsk_…`, raw hex) echoed by an upstream is caught too.
static SECRETS: RwLock<Vec<Box<str>>> = RwLock::new(Vec::new());

/// The shortest value [`redact_everywhere`] takes: shorter ones would cut
/// ordinary words out of messages.
pub const MIN_SECRET_CHARS: usize = 8;

/// Makes [`sanitize`] replace `secret` with `[REDACTED]` wherever it appears,
/// for the rest of the process. Call it with every key read at startup.
/// Returns whether it was taken: a value under [`MIN_SECRET_CHARS`]
/// characters, one with a bracket, or one inside the marker is not
/// (redacting it would mangle every message, or break idempotence).
pub fn redact_everywhere(secret: &str) -> bool {
    let secret = secret.trim();
    // A bracket could straddle an inserted marker and match again on a
    // second pass: such a value is refused, so sanitize stays idempotent.
    if secret.chars().count() < MIN_SECRET_CHARS || secret.contains(['[', ']']) || REDACTED.contains(secret) {
        return false;
    }
    let mut secrets = SECRETS.write().unwrap_or_else(PoisonError::into_inner);
    if !secrets.iter().any(|s| &**s == secret) {
        secrets.push(secret.into());
        // Longest first, so a secret containing another is redacted whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
    true
}

/// `message` with every registered secret replaced, when it holds one.
fn without_secrets(message: &str) -> Cow<'_, str> {
    let secrets = SECRETS.read().unwrap_or_else(PoisonError::into_inner);
    let mut out = Cow::Borrowed(message);
    for secret in secrets.iter() {
        if out.contains(&**secret) {
            out = Cow::Owned(out.replace(&**secret, REDACTED));
        }
    }
    out
}

/// The patterns are constants checked by the tests; a typo is a bug caught on
/// the first test run, never something user input can cause.
fn compile(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|err| panic!("invalid sanitizer pattern {pattern}: {err}"))
}

/// Returns `message` without the secrets given to [`redact_everywhere`],
/// API keys, bearer tokens, `Authorization` headers, secret query values
/// (`api_key=`, `token=`, …) and absolute file paths (Unix, home-relative
/// and Windows).
///
/// Idempotent, never panics, and borrows when there is nothing to remove (the
/// common case costs no allocation). Paths containing spaces are cut at the
/// first space: the part after it is kept.
///
/// ```
/// use modelfleet_errors::sanitize;
///
/// let raw = "401 from https://api.example.com/v1 with key sk-abcdefghijklmnop in /home/me/app/config.toml";
/// assert_eq!(
///     sanitize(raw),
///     "401 from https://api.example.com/v1 with key [REDACTED] in [PATH]"
/// );
/// assert_eq!(sanitize(""), "");
/// ```
#[must_use]
pub fn sanitize(message: &str) -> Cow<'_, str> {
    let message = without_secrets(message);
    if !may_need_sanitizing(&message) {
        return message;
    }
    match message {
        Cow::Borrowed(message) => apply_rules(message),
        Cow::Owned(message) => Cow::Owned(apply_rules(&message).into_owned()),
    }
}

/// False only when no rule can match: every rule needs one of `/ \ : =`, the
/// text `sk-`, or the word `bearer`. A byte scan, far cheaper than the regexes.
fn may_need_sanitizing(message: &str) -> bool {
    let bytes = message.as_bytes();
    bytes.iter().enumerate().any(|(i, b)| match b {
        b'/' | b'\\' | b':' | b'=' => true,
        b's' => bytes[i..].starts_with(b"sk-"),
        b'b' | b'B' => bytes.get(i..i + 6).is_some_and(|w| w.eq_ignore_ascii_case(b"bearer")),
        _ => false,
    })
}

fn apply_rules(message: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(message);
    for rule in RULES.iter() {
        if let Cow::Owned(replaced) = rule.pattern.replace_all(&out, rule.replacement) {
            out = Cow::Owned(replaced);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[track_caller]
    fn check(input: &str, expect: &str) {
        assert_eq!(sanitize(input), expect, "input: {input:?}");
    }

    #[test]
    fn registered_secrets_are_redacted_whatever_their_shape() {
        // Shapes no pattern knows: a Google key, a Groq key, raw hex.
        let keys = ["AIzaSyD-example-google-key-0000", "gsk_example0groq0key0000", "9f86d081884c7d659a2feaa0c55ad015"];
        for key in keys {
            assert!(redact_everywhere(key), "{key}");
        }
        let raw = format!("Incorrect API key provided: {}. Also {} and {}", keys[0], keys[1], keys[2]);
        let clean = sanitize(&raw);
        assert_eq!(clean, "Incorrect API key provided: [REDACTED]. Also [REDACTED] and [REDACTED]");
        assert_eq!(sanitize(&clean), clean, "idempotent");
        // Too short, or inside a marker: refused, and messages stay whole.
        assert!(!redact_everywhere("k1"));
        assert!(!redact_everywhere("REDACTED"));
        assert!(!redact_everywhere("abc]defghij"), "a bracket could straddle a marker");
        assert_eq!(sanitize("the k1 value"), "the k1 value");
        assert!(matches!(sanitize("nothing secret here"), Cow::Borrowed(_)), "no allocation when clean");
    }

    #[test]
    fn examples() {
        check("", "");
        check("plain message, nothing to hide", "plain message, nothing to hide");
        check("Authorization: Bearer abc.def-ghi", "Authorization: [REDACTED]");
        check(r#"{"Authorization": "Bearer abc"}"#, r#"{"Authorization": "[REDACTED]"}"#);
        check("authorization=Basic dXNlcjpwYXNz", "authorization=[REDACTED]");
        check("sent bearer eyJhbGciOi.J9x/y+z== upstream", "sent bearer [REDACTED] upstream");
        check("key sk-ant-api03-AbCdEf_123456 refused", "key [REDACTED] refused");
        check("key sk-proj-abcdefghijkl refused", "key [REDACTED] refused");
        check("GET /v1/models?api_key=abc123&x=1", "GET [PATH]?api_key=[REDACTED]&x=1");
        check("https://h.example/v1/models?api_key=abc123&x=1", "https://h.example/v1/models?api_key=[REDACTED]&x=1");
        check("token=abc, secret = hunter2; ok", "token=[REDACTED], secret = [REDACTED]; ok");
        check("open /home/alice/.cache/modelfleet/data.json failed", "open [PATH] failed");
        check("open ~/.config/modelfleet.toml failed", "open [PATH] failed");
        check(r"open C:\Users\alice\cache.db failed", "open [PATH] failed");
        check("open C:/Users/alice/cache.db failed", "open [PATH] failed");
        check(r"share \\fileserver\models\x.bin gone", "share [PATH] gone");
        check("(at /srv/app.rs:10)", "(at [PATH])");
        check(
            "url https://api.openai.com/v1/chat/completions kept",
            "url https://api.openai.com/v1/chat/completions kept",
        );
        check("ratio 1/2 and HTTP/1.1 kept", "ratio 1/2 and HTTP/1.1 kept");
        check("a task-force is not a key", "a task-force is not a key");
    }

    #[test]
    fn nothing_to_remove_borrows() {
        assert!(matches!(sanitize("upstream returned 503"), Cow::Borrowed(_)));
    }

    fn secret() -> impl Strategy<Value = String> {
        prop_oneof![
            "sk-[A-Za-z0-9]{20,40}",
            "sk-ant-[A-Za-z0-9_-]{20,40}",
            "[A-Za-z0-9]{16,32}".prop_map(|t| format!("Bearer {t}")),
            "[A-Za-z0-9]{16,32}".prop_map(|t| format!("Authorization: Bearer {t}")),
            "[A-Za-z0-9]{8,24}".prop_map(|t| format!("api_key={t}")),
            "[A-Za-z0-9]{8,24}".prop_map(|t| format!("?token={t}")),
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::collection::vec("[A-Za-z0-9_.-]{1,12}", 1..5).prop_map(|segs| format!("/{}", segs.join("/"))),
            proptest::collection::vec("[A-Za-z0-9_.-]{1,12}", 1..5).prop_map(|segs| format!("~/{}", segs.join("/"))),
            proptest::collection::vec("[A-Za-z0-9_.-]{1,12}", 1..5).prop_map(|segs| format!("C:\\{}", segs.join("\\"))),
        ]
    }

    /// The part of a generated secret that must never survive.
    fn secret_core(secret: &str) -> &str {
        secret.rsplit([' ', '=']).next().unwrap_or(secret)
    }

    proptest! {
        #[test]
        fn idempotent(input in any::<String>()) {
            let once = sanitize(&input).into_owned();
            prop_assert_eq!(sanitize(&once), once.as_str());
        }

        #[test]
        fn idempotent_on_messages_with_secrets(before in ".{0,20}", s in secret(), p in path(), after in ".{0,20}") {
            let input = format!("{before} {s} at {p} {after}");
            let once = sanitize(&input).into_owned();
            prop_assert_eq!(sanitize(&once), once.as_str());
        }

        #[test]
        fn secrets_never_survive(before in "[ -~]{0,30}", s in secret(), after in "[ -~]{0,30}") {
            let out = sanitize(&format!("{before} {s} {after}")).into_owned();
            prop_assert!(!out.contains(secret_core(&s)), "{} leaked in {}", s, out);
        }

        #[test]
        fn paths_never_survive(before in "[ -~]{0,30}", p in path(), after in "[ -~]{0,30}") {
            // Free text that already holds the path's text (`0/I` holds `/I`)
            // is not a path itself: the check needs it only in one place.
            prop_assume!(!before.contains(&p) && !after.contains(&p));
            let out = sanitize(&format!("{before} {p} {after}")).into_owned();
            prop_assert!(!out.contains(&p), "{} leaked in {}", p, out);
        }

        #[test]
        fn the_byte_scan_never_skips_a_message_a_rule_would_change(
            before in "[ -~]{0,30}", s in secret(), p in path(), pick in 0..4u8, after in "[ -~]{0,30}"
        ) {
            let input = match pick {
                0 => format!("{before}{after}"),
                1 => format!("{before} {s} {after}"),
                2 => format!("{before} {p} {after}"),
                _ => format!("{before}{s}{p}{after}"),
            };
            prop_assert_eq!(sanitize(&input), apply_rules(&input));
        }

        #[test]
        fn never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = sanitize(&text);
        }
    }
}
