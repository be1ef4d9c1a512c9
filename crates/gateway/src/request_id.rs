//! Request ids: every request has one, echoed in the `x-request-id` header
//! of its response, logged, and written to the performance log with each of
//! its attempts.
//!
//! The client's own `x-request-id` is kept when it is 1 to 128 printable
//! ASCII characters (0x20..=0x7E: spaces inside, but not at either end), so
//! a caller can follow its request through the gateway's logs. Anything
//! else (empty, too long, control characters, non-ASCII bytes, surrounding
//! spaces) is replaced, not repaired: the gateway then makes a new UUID v7
//! (RFC 9562), which is unique and sorts by creation time.
//!
//! The random bits of a UUID v7 come from std's `RandomState`, whose keys are
//! drawn from the operating system's entropy: ids need to be unique, not
//! secret, and the gateway then needs no random-number crate.

use std::hash::{BuildHasher, RandomState};

use axum::http::HeaderMap;

/// The header a request id is read from and echoed in.
pub(crate) const HEADER: &str = "x-request-id";

/// The longest client id kept, in bytes.
const MAX_LEN: usize = 128;

/// The client's id when acceptable: 1..=128 bytes, each printable ASCII
/// (0x20..=0x7E), neither the first nor the last a space.
#[must_use]
pub(crate) fn accept(value: &[u8]) -> Option<&str> {
    // The length first: a long header is refused without reading it.
    if !(1..=MAX_LEN).contains(&value.len()) || value.first() == Some(&b' ') || value.last() == Some(&b' ') {
        return None;
    }
    if !value.iter().all(|b| (0x20..=0x7E).contains(b)) {
        return None;
    }
    std::str::from_utf8(value).ok()
}

/// A new UUID v7 (RFC 9562) for a request at `now_ms` (Unix time in
/// milliseconds): 48-bit timestamp, version 7, 12 random bits, variant `10`,
/// 62 random bits; lowercase hyphenated text, 36 chars.
///
/// Ids made in different milliseconds sort by time as text; two made in the
/// same millisecond are in random order. The timestamp keeps the low 48 bits
/// of `now_ms` (enough until the year 10889).
#[must_use]
pub(crate) fn generate(now_ms: u64) -> String {
    // Fresh random keys on every call; hashing two different values under
    // them gives 128 independent-looking bits.
    let keys = RandomState::new();
    let random = u128::from(keys.hash_one(0_u8)) << 64 | u128::from(keys.hash_one(1_u8));
    uuid_v7(now_ms, random)
}

/// The request's id: the client's `x-request-id` when present and
/// acceptable, else a new UUID v7 for `now_ms`.
#[must_use]
pub(crate) fn of(headers: &HeaderMap, now_ms: u64) -> String {
    headers.get(HEADER).and_then(|value| accept(value.as_bytes())).map_or_else(|| generate(now_ms), str::to_owned)
}

/// The UUID v7 of `now_ms` with its random fields taken from `random` (its
/// low 74 bits are used).
fn uuid_v7(now_ms: u64, random: u128) -> String {
    const TIMESTAMP: u128 = (1 << 48) - 1;
    const RAND_A: u128 = (1 << 12) - 1;
    const RAND_B: u128 = (1 << 62) - 1;
    let uuid = (u128::from(now_ms) & TIMESTAMP) << 80
        | 0x7 << 76
        | (random >> 62 & RAND_A) << 64
        | 0b10 << 62
        | random & RAND_B;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        uuid >> 96,
        uuid >> 80 & 0xFFFF,
        uuid >> 64 & 0xFFFF,
        uuid >> 48 & 0xFFFF,
        uuid & 0xFFFF_FFFF_FFFF,
    )
}

/// Gives `request` its id, replacing its `x-request-id` header (so
/// handlers read it from there, see [`of_request`]); returns the id and
/// the header value to echo on the response. Called by the front-door
/// middleware (`guard::check`), so refusals carry it too, at the cost of
/// no middleware layer of its own.
pub(crate) fn assign(request: &mut axum::extract::Request) -> (String, Option<axum::http::HeaderValue>) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let id = of(request.headers(), now_ms);
    let value = axum::http::HeaderValue::try_from(id.as_str()).ok();
    if let Some(value) = &value {
        request.headers_mut().insert(HEADER, value.clone());
    }
    (id, value)
}

/// The span that names the request's logs, when info logs are on (else
/// none: nothing is built per request).
pub(crate) fn span(id: &str, request: &axum::extract::Request) -> tracing::Span {
    if tracing::enabled!(tracing::Level::INFO) {
        tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path())
    } else {
        tracing::Span::none()
    }
}

/// Echoes the id [`assign`] gave on `response`.
pub(crate) fn echo(response: &mut axum::response::Response, value: Option<axum::http::HeaderValue>) {
    if let Some(value) = value {
        response.headers_mut().insert(HEADER, value);
    }
}

/// The id [`assign`] gave the request whose headers these are.
#[must_use]
pub(crate) fn of_request(headers: &HeaderMap) -> Option<String> {
    headers.get(HEADER).and_then(|v| accept(v.as_bytes())).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use axum::http::HeaderValue;

    use super::*;

    #[track_caller]
    fn check_accept(value: &[u8], expect: bool) {
        let accepted = accept(value);
        assert_eq!(accepted.is_some(), expect, "{:?}", String::from_utf8_lossy(value));
        if let Some(id) = accepted {
            assert_eq!(id.as_bytes(), value, "kept as sent");
        }
    }

    #[test]
    fn accept_boundaries() {
        check_accept(b"a", true);
        check_accept(b"req-1", true);
        check_accept(b"!~", true);
        check_accept(b"trace 42 / span 7", true);
        check_accept(&[b'x'; 128], true);
        check_accept(&[b'x'; 129], false);
        check_accept(b"", false);
        check_accept(b" req", false);
        check_accept(b"req ", false);
        check_accept(b" ", false);
        check_accept(b"req\t1", false);
        check_accept(b"req\n1", false);
        check_accept(b"req\x7F", false);
        check_accept(b"\x00", false);
        check_accept("réq".as_bytes(), false);
        check_accept(b"req\xFF", false);
    }

    /// The UUID's 128 bits, from its text.
    fn bits(id: &str) -> u128 {
        let hex: String = id.chars().filter(|&c| c != '-').collect();
        u128::from_str_radix(&hex, 16).unwrap()
    }

    #[track_caller]
    fn check_layout(id: &str, now_ms: u64) {
        assert_eq!(id.len(), 36, "{id}");
        let dashes: Vec<usize> = id.match_indices('-').map(|(at, _)| at).collect();
        assert_eq!(dashes, [8, 13, 18, 23], "{id}");
        assert!(id.chars().all(|c| c == '-' || matches!(c, '0'..='9' | 'a'..='f')), "lowercase hex: {id}");
        let uuid = bits(id);
        assert_eq!(uuid >> 76 & 0xF, 7, "version: {id}");
        assert_eq!(id.as_bytes()[14], b'7', "version nibble: {id}");
        assert_eq!(uuid >> 62 & 0b11, 0b10, "variant: {id}");
        assert!(matches!(id.as_bytes()[19], b'8' | b'9' | b'a' | b'b'), "variant nibble: {id}");
        assert_eq!(uuid >> 80, u128::from(now_ms), "timestamp: {id}");
    }

    #[test]
    fn generate_lays_out_a_uuid_v7() {
        for now_ms in [0, 1, 1_700_000_000_000, 1_767_225_600_123, (1 << 48) - 1] {
            check_layout(&generate(now_ms), now_ms);
        }
    }

    #[test]
    fn random_fields_are_placed_exactly() {
        let now_ms = 0x0190_1234_5678;
        assert_eq!(uuid_v7(now_ms, 0), "01901234-5678-7000-8000-000000000000");
        assert_eq!(uuid_v7(now_ms, u128::MAX), "01901234-5678-7fff-bfff-ffffffffffff");
        check_layout(&uuid_v7(now_ms, u128::MAX), now_ms);
        // Only the low 74 random bits are used.
        assert_eq!(uuid_v7(now_ms, u128::MAX << 74), uuid_v7(now_ms, 0));
        // A timestamp past 48 bits keeps its low 48.
        assert_eq!(uuid_v7(1 << 48 | now_ms, 0), uuid_v7(now_ms, 0));
    }

    #[test]
    fn ids_are_unique_and_sort_by_time() {
        let start = 1_767_225_600_000;
        let mut seen = HashSet::new();
        let mut ids = Vec::new();
        for step in 0..2_000 {
            let now_ms = start + step / 4;
            let id = generate(now_ms);
            check_layout(&id, now_ms);
            assert!(seen.insert(id.clone()), "duplicate {id}");
            ids.push((now_ms, id));
        }
        // Across milliseconds, text order is time order.
        for pair in ids.windows(2) {
            let [(earlier_ms, earlier), (later_ms, later)] = pair else { unreachable!() };
            if earlier_ms < later_ms {
                assert!(earlier < later, "{earlier} then {later}");
            }
        }
    }

    #[test]
    fn of_uses_the_clients_id_or_makes_one() {
        let now_ms = 1_767_225_600_000;
        let mut headers = HeaderMap::new();
        check_layout(&of(&headers, now_ms), now_ms);

        headers.insert(HEADER, HeaderValue::from_static("client-trace-7"));
        assert_eq!(of(&headers, now_ms), "client-trace-7");

        headers.insert(HEADER, HeaderValue::from_bytes(b"caf\xC3\xA9").unwrap());
        check_layout(&of(&headers, now_ms), now_ms);

        headers.insert(HEADER, HeaderValue::from_str(&"x".repeat(129)).unwrap());
        check_layout(&of(&headers, now_ms), now_ms);

        headers.insert(HEADER, HeaderValue::from_static(""));
        check_layout(&of(&headers, now_ms), now_ms);
    }
}
