//! How an answer's bytes leave the mock, whichever provider formatted
//! them: a streamed [`Script`] played to its end, cut, broken by an error
//! event or dripped forever; a JSON body whole or a byte at a time; a
//! connection reset. One implementation of each transport-level fault.

use std::{
    fmt::Display,
    io,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::StreamExt;
use serde_json::Value;

/// Counts one body being sent while it lives: it is moved into the body's
/// stream, so a body hyper drops (its client gone) is no longer counted.
#[derive(Debug)]
pub(crate) struct Sending(Arc<AtomicU64>);

impl Sending {
    pub(crate) fn new(count: &Arc<AtomicU64>) -> Sending {
        count.fetch_add(1, Ordering::Relaxed);
        Sending(Arc::clone(count))
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream as a provider writes it, each event already framed: the
/// events before the content, one per content piece, the events after it,
/// the event an endless stream repeats, and the error event a broken
/// stream ends with (given how many content events were sent).
pub(crate) struct Script {
    /// `text/event-stream`, or `application/json` for Gemini's JSON array.
    pub(crate) content_type: &'static str,
    /// Before the content: a role chunk, `message_start`, `response.created`…
    pub(crate) head: Vec<Bytes>,
    /// One event per piece of content (text or tool-call arguments).
    pub(crate) content: Vec<Bytes>,
    /// After the content: the finish, usage, `[DONE]`, `message_stop`…
    pub(crate) tail: Vec<Bytes>,
    /// What an endless stream sends after its head, again and again.
    pub(crate) filler: Bytes,
    /// The error event after `n` content events.
    pub(crate) error: Box<dyn Fn(usize) -> Bytes + Send + Sync>,
}

/// How a stream ends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum End {
    /// All of it.
    Done,
    /// Only its content (a huge first event): no head, no tail.
    ContentOnly,
    /// The connection drops after this many content events.
    Cut(u32),
    /// An error event after this many content events, then a clean end.
    Error(u32),
    /// The head, then the filler every interval, until the client leaves.
    Endless(Duration),
}

/// One server-sent event: `event: NAME` (when named) and `data: DATA`.
pub(crate) fn sse(event: Option<&str>, data: &impl Display) -> Bytes {
    Bytes::from(match event {
        Some(name) => format!("event: {name}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    })
}

/// A 200 JSON body.
pub(crate) fn json(body: &Value) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// A connection dropped mid-answer: the body fails before its first byte.
pub(crate) fn reset() -> Response {
    let failing = futures_util::stream::once(async { Err::<Bytes, io::Error>(io::Error::other("reset by mock")) });
    Response::new(Body::from_stream(failing))
}

fn streamed(content_type: &'static str, body: Body) -> Response {
    let mut response = Response::new(body);
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

/// Plays `script` to `end`, waiting `interval` before every event but the
/// first.
pub(crate) fn play(script: Script, end: End, interval: Duration, sending: Sending) -> Response {
    let Script { content_type, head, content, tail, filler, error } = script;
    if let End::Endless(every) = end {
        return endless(content_type, head, filler, every, sending);
    }
    let stop = match end {
        End::Cut(n) | End::Error(n) => usize::try_from(n).unwrap_or(usize::MAX),
        End::Done | End::ContentOnly | End::Endless(_) => usize::MAX,
    };
    let sent = content.len().min(stop);
    let mut events: Vec<Result<Bytes, io::Error>> = Vec::new();
    if !matches!(end, End::ContentOnly) {
        events.extend(head.into_iter().map(Ok));
    }
    events.extend(content.into_iter().take(stop).map(Ok));
    match end {
        End::Cut(_) => events.push(Err(io::Error::other("stream cut by mock"))),
        End::Error(_) => events.push(Ok(error(sent))),
        End::Done => events.extend(tail.into_iter().map(Ok)),
        End::ContentOnly | End::Endless(_) => {}
    }
    let body = futures_util::stream::iter(events.into_iter().enumerate()).then(move |(i, event)| async move {
        if i > 0 && !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        if event.is_err() {
            // Let the events before the cut reach the client first.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        event
    });
    streamed(content_type, Body::from_stream(guarded(body, sending)))
}

/// `stream`, holding `sending` until it ends or is dropped (hyper drops a
/// body when its client goes away).
fn guarded<S>(stream: S, sending: Sending) -> impl futures_util::Stream<Item = S::Item> + Send + 'static
where
    S: futures_util::Stream + Send + 'static,
{
    futures_util::stream::unfold((Box::pin(stream), sending), |(mut stream, sending)| async move {
        let item = stream.next().await?;
        Some((item, (stream, sending)))
    })
}

/// [`crate::Fault::SlowDrip`] streaming: the head at once, then `filler`
/// every `interval`, forever: only the client's disconnect (hyper then
/// drops the body) ends it.
fn endless(
    content_type: &'static str,
    head: Vec<Bytes>,
    filler: Bytes,
    interval: Duration,
    sending: Sending,
) -> Response {
    let head = futures_util::stream::iter(head.into_iter().map(Ok::<Bytes, io::Error>));
    let rest = futures_util::stream::unfold((), move |()| {
        let event = filler.clone();
        async move {
            tokio::time::sleep(interval).await;
            Some((Ok::<Bytes, io::Error>(event), ()))
        }
    });
    streamed(content_type, Body::from_stream(guarded(head.chain(rest), sending)))
}

/// [`crate::Fault::SlowDrip`] without streaming: `body`, one byte every
/// `interval`.
pub(crate) fn drip(body: Vec<u8>, interval: Duration, sending: Sending) -> Response {
    let bytes = futures_util::stream::unfold((body, 0_usize, sending), move |(body, at, sending)| async move {
        let byte = *body.get(at)?;
        tokio::time::sleep(interval).await;
        Some((Ok::<Bytes, io::Error>(Bytes::copy_from_slice(&[byte])), (body, at + 1, sending)))
    });
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], Body::from_stream(bytes)).into_response()
}
