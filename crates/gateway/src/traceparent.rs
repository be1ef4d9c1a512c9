//! W3C Trace Context: a client's `traceparent` (and its `tracestate`) goes
//! on to the upstream with each attempt, so a trace that starts in the
//! client's code continues at the provider.
//!
//! Only a well-formed `traceparent` is forwarded (version `00`: 55
//! characters, lowercase hex, trace id and parent id not all zeros, as the
//! recommendation requires of a receiver); anything else is dropped, never
//! repaired. `tracestate` goes only with a forwarded `traceparent`, and
//! only when it is at most 512 printable ASCII characters (the
//! recommendation's limit for a propagated list).

use axum::http::{HeaderMap, HeaderValue};

/// The header names.
pub(crate) const TRACEPARENT: &str = "traceparent";
pub(crate) const TRACESTATE: &str = "tracestate";

/// What goes upstream: the `traceparent`, and the `tracestate` with it.
pub(crate) type Trace = (HeaderValue, Option<HeaderValue>);

/// The trace context of `headers` worth forwarding, if any.
#[must_use]
pub(crate) fn of(headers: &HeaderMap) -> Option<Trace> {
    let parent = headers.get(TRACEPARENT).filter(|v| valid_parent(v.as_bytes()))?.clone();
    let state = headers
        .get(TRACESTATE)
        .filter(|v| v.len() <= 512 && v.as_bytes().iter().all(|b| (0x20..=0x7e).contains(b)))
        .cloned();
    Some((parent, state))
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lowercase, ids
/// not all zeros.
fn valid_parent(value: &[u8]) -> bool {
    let hex = |part: &[u8]| !part.is_empty() && part.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    let zeros = |part: &[u8]| part.iter().all(|&b| b == b'0');
    let parts: Vec<&[u8]> = value.split(|&b| b == b'-').collect();
    match parts.as_slice() {
        [version, trace, parent, flags] => {
            *version == b"00"
                && trace.len() == 32
                && parent.len() == 16
                && flags.len() == 2
                && [trace, parent, flags].iter().all(|p| hex(p))
                && !zeros(trace)
                && !zeros(parent)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn a_well_formed_traceparent_goes_on_with_its_tracestate() {
        let (parent, state) = of(&headers(&[(TRACEPARENT, GOOD), (TRACESTATE, "vendor=abc,other=1")])).unwrap();
        assert_eq!((parent.to_str().unwrap(), state.unwrap().to_str().unwrap()), (GOOD, "vendor=abc,other=1"));
        assert_eq!(of(&headers(&[(TRACEPARENT, GOOD)])).unwrap().1, None);
    }

    #[test]
    fn anything_else_is_dropped_and_a_tracestate_never_goes_alone() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert_eq!(of(&headers(&[(TRACEPARENT, bad)])), None, "{bad:?}");
        }
        assert_eq!(of(&headers(&[(TRACESTATE, "vendor=abc")])), None);
        let long = "k=".to_owned() + &"v".repeat(600);
        assert_eq!(of(&headers(&[(TRACEPARENT, GOOD), (TRACESTATE, &long)])).unwrap().1, None, "over 512: dropped");
    }
}
