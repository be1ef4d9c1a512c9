"""The gateway driven by the official Python SDKs, `openai` and `anthropic`.

Usage: python smoke.py BASE_URL   (e.g. http://127.0.0.1:8080)

Run by `cargo xtask python-sdk` (a step of `cargo xtask ci`) against
`modelfleet serve` without a config: the default catalog on simulated
providers, keyless, on 127.0.0.1. It uses the SDKs as their users do, a
client built with `base_url` and a placeholder key, and checks that they
parse what the gateway sends: chat completions (plain and streamed, with the
usage chunk), Anthropic's Messages (plain and streamed), the Responses API
(plain and streamed), 404s raised as each SDK's `NotFoundError`,
embeddings, and legacy completions (plain and streamed).

Every check runs, each prints one line (`ok` or `FAIL` with the request, the
status, the body and the traceback); the exit status is 1 when any failed.
The versions are pinned in requirements.txt beside this file.
"""

import json
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

import anthropic
import openai

# The whole answer of any one call; the xtask step bounds the whole script.
TIMEOUT_S = 30
PROMPT = [{"role": "user", "content": "Say hi"}]
UNKNOWN_MODEL = "no-such-model-python-sdk-smoke"

# Plain HTTP for the probes the SDKs have no call for; never through a proxy
# (the gateway is on loopback).
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method, url):
    """(status, body) of a bare request, an HTTP error status included;
    status 0 when there was no answer (the checks then fail and say why)."""
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with _http.open(request, timeout=TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError as err:  # URLError, a timeout, a reset
        return 0, str(err).encode()


def get_json(url):
    """The JSON body of a GET answered 200, else None."""
    status, body = http("GET", url)
    if status != 200:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def has_embeddings(spec):
    """Whether a model's JSON says it has the embeddings capability
    (`capabilities` as an object of flags or as a list of names)."""
    capabilities = spec.get("capabilities") if isinstance(spec, dict) else None
    if isinstance(capabilities, dict):
        return capabilities.get("embeddings") is True
    if isinstance(capabilities, list):
        return "embeddings" in capabilities
    return False


def embedding_models(base, ids):
    """The ids (in listing order) whose spec has the embeddings capability,
    from `GET /v1/models/{id}` when it carries capabilities, else from the
    admin listing (open without keys, as the gateway runs here)."""
    found = set()
    admin = get_json(f"{base}/v1/admin/models")
    if isinstance(admin, dict):
        found.update(m.get("id") for m in admin.get("models", []) if has_embeddings(m))
    for model in ids:
        if has_embeddings(get_json(f"{base}/v1/models/{urllib.parse.quote(model, safe='')}")):
            found.add(model)
    return [model for model in ids if model in found]


# ---------------------------------------------------------------------------
# The checks: each takes what it needs and returns a one-line detail.


def chat(client, model):
    answer = client.chat.completions.create(model=model, messages=PROMPT)
    content = answer.choices[0].message.content
    assert isinstance(content, str) and content, f"empty content: {answer!r}"
    assert answer.usage is not None, f"no usage: {answer!r}"
    assert answer.usage.prompt_tokens > 0, f"prompt_tokens {answer.usage.prompt_tokens}: {answer!r}"
    return f"{content!r}, prompt_tokens={answer.usage.prompt_tokens}"


def chat_stream(client, model):
    chunks = list(
        client.chat.completions.create(
            model=model, messages=PROMPT, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks, "no chunks"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text, f"the chunks carry no text: {chunks!r}"
    last = chunks[-1]
    assert last.usage is not None, f"the last chunk has no usage (include_usage was asked): {last!r}"
    assert last.choices == [], f"the usage chunk has choices: {last!r}"
    assert last.usage.prompt_tokens > 0, f"prompt_tokens {last.usage.prompt_tokens}: {last!r}"
    early = [c for c in chunks[:-1] if c.usage is not None]
    assert not early, f"usage before the last chunk: {early!r}"
    return f"{len(chunks)} chunks, {text!r}, prompt_tokens={last.usage.prompt_tokens}"


def messages(client, model):
    message = client.messages.create(model=model, max_tokens=64, messages=PROMPT)
    assert message.content, f"no content blocks: {message!r}"
    block = message.content[0]
    assert block.type == "text", f"first block is {block.type!r}: {message!r}"
    assert block.text, f"empty text: {message!r}"
    assert message.usage.input_tokens > 0, f"input_tokens {message.usage.input_tokens}: {message!r}"
    assert message.stop_reason, f"no stop_reason: {message!r}"
    return f"{block.text!r}, input_tokens={message.usage.input_tokens}, stop_reason={message.stop_reason}"


def messages_stream(client, model):
    with client.messages.stream(model=model, max_tokens=64, messages=PROMPT) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    streamed = "".join(pieces)
    assert streamed, f"text_stream yielded no text: {pieces!r}"
    text = "".join(b.text for b in final.content if b.type == "text")
    assert text, f"the final message has no text: {final!r}"
    assert text == streamed, f"final text {text!r} is not the streamed {streamed!r}"
    assert final.stop_reason, f"no stop_reason: {final!r}"
    return f"{len(pieces)} text pieces, {text!r}, stop_reason={final.stop_reason}"


def responses(client, model):
    response = client.responses.create(model=model, input="Say hi")
    assert response.output_text, f"empty output_text: {response!r}"
    return f"{response.output_text!r}, status={response.status}"


def responses_stream(client, model):
    events = list(client.responses.create(model=model, input="Say hi", stream=True))
    assert events, "no events"
    types = [e.type for e in events]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas, f"no response.output_text.delta among {types}"
    assert "".join(deltas), f"the deltas carry no text: {deltas!r}"
    last = events[-1]
    assert last.type == "response.completed", f"the last event is {last.type!r}, not response.completed: {types}"
    final = last.response.output_text
    assert final == "".join(deltas), f"completed output_text {final!r} is not the deltas' {''.join(deltas)!r}"
    return f"{len(events)} events ({len(deltas)} deltas), ends with response.completed, {final!r}"


def openai_not_found(client):
    for stream in (False, True):
        try:
            client.chat.completions.create(model=UNKNOWN_MODEL, messages=PROMPT, stream=stream)
        except openai.NotFoundError as err:
            assert err.status_code == 404, f"status {err.status_code}"
            assert err.code == "model_not_found", f"code {err.code!r} parsed from {err.body!r}"
        else:
            raise AssertionError(f"an unknown model (stream={stream}) raised nothing")
    return "chat (plain and stream=True) raise openai.NotFoundError, 404, code=model_not_found"


def anthropic_not_found(client):
    try:
        client.messages.create(model=UNKNOWN_MODEL, max_tokens=64, messages=PROMPT)
    except anthropic.NotFoundError as err:
        assert err.status_code == 404, f"status {err.status_code}"
        kind = err.body.get("error", {}).get("type") if isinstance(err.body, dict) else None
        assert kind == "not_found_error", f"error type {kind!r} parsed from {err.body!r}"
    else:
        raise AssertionError("an unknown model raised nothing")
    return "messages.create raises anthropic.NotFoundError, 404, type=not_found_error"


def embeddings(client, model):
    result = client.embeddings.create(model=model, input=["a", "b"])
    vectors = [item.embedding for item in result.data]
    assert len(vectors) == 2, f"{len(vectors)} vectors for 2 inputs: {result!r}"
    lengths = {len(v) for v in vectors}
    assert len(lengths) == 1 and 0 not in lengths, f"vector lengths {[len(v) for v in vectors]}"
    assert result.usage.prompt_tokens > 0, f"prompt_tokens {result.usage.prompt_tokens}: {result!r}"
    return f"2 vectors of {lengths.pop()} floats, prompt_tokens={result.usage.prompt_tokens}"


def completions(client, model):
    answer = client.completions.create(model=model, prompt="Say hi", max_tokens=16)
    assert answer.choices, f"no choices: {answer!r}"
    text = answer.choices[0].text
    assert isinstance(text, str), f"text is {type(text).__name__}: {answer!r}"
    assert answer.usage is not None, f"no usage: {answer!r}"
    assert answer.usage.prompt_tokens > 0, f"prompt_tokens {answer.usage.prompt_tokens}: {answer!r}"
    return f"{text!r}, prompt_tokens={answer.usage.prompt_tokens}"


def completions_stream(client, model):
    chunks = list(
        client.completions.create(
            model=model, prompt="Say hi", max_tokens=16, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks, "no chunks"
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text, f"the chunks carry no text: {chunks!r}"
    last = chunks[-1]
    assert last.usage is not None, f"the last chunk has no usage (include_usage was asked): {last!r}"
    assert last.usage.prompt_tokens > 0, f"prompt_tokens {last.usage.prompt_tokens}: {last!r}"
    return f"{len(chunks)} chunks, {text!r}, prompt_tokens={last.usage.prompt_tokens}"


# ---------------------------------------------------------------------------


def describe(err):
    """What failed, for the report: the request and the answer when the SDK
    got one, then the traceback."""
    lines = []
    request = getattr(err, "request", None)
    if request is not None:
        lines.append(f"request: {request.method} {request.url}")
        if request.content:
            lines.append(f"request body: {request.content.decode(errors='replace')[:2000]}")
    response = getattr(err, "response", None)
    if response is not None:
        lines.append(f"response: {response.status_code} {dict(response.headers)}")
        try:
            lines.append(f"response body: {response.text[:2000]}")
        except Exception:  # a streamed body not read: the traceback says enough
            pass
    lines.append(traceback.format_exc().rstrip())
    return "\n".join("    " + line for text in lines for line in text.splitlines())


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: smoke.py BASE_URL   (e.g. http://127.0.0.1:8080)")
    base = sys.argv[1].rstrip("/")
    print(f"python-sdk: openai {openai.__version__}, anthropic {anthropic.__version__}, against {base}", flush=True)
    # No retries: a failure a retry would hide is still a failure here.
    oai = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT_S)
    claude = anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0, timeout=TIMEOUT_S)

    failed = []

    def check(name, function, *args):
        started = time.monotonic()
        try:
            detail = function(*args)
        except Exception as err:  # every check runs; each failure is reported
            failed.append(name)
            print(f"FAIL {name} ({time.monotonic() - started:.1f} s)\n{describe(err)}", flush=True)
        else:
            print(f"ok   {name} ({time.monotonic() - started:.1f} s): {detail}", flush=True)

    ids = []

    def list_models():
        ids.extend(m.id for m in oai.models.list())
        assert ids, "GET /v1/models lists no model"
        return f"{len(ids)} ids: {', '.join(ids)}"

    check("models.list", list_models)
    embedders = embedding_models(base, ids)
    # The first catalog model that chats (not `auto`: a named model also
    # checks that the answer's `model` field parses); `auto` if none is.
    model = next((m for m in ids if m != "auto" and m not in embedders), "auto")
    print(f"python-sdk: chat model {model}", flush=True)

    check(f"chat.completions.create ({model})", chat, oai, model)
    check(f"chat.completions.create stream ({model})", chat_stream, oai, model)
    check(f"messages.create ({model})", messages, claude, model)
    check(f"messages.stream ({model})", messages_stream, claude, model)
    check(f"responses.create ({model})", responses, oai, model)
    check(f"responses.create stream ({model})", responses_stream, oai, model)
    check("unknown model (openai)", openai_not_found, oai)
    check("unknown model (anthropic)", anthropic_not_found, claude)

    if embedders:
        check(f"embeddings.create ({embedders[0]})", embeddings, oai, embedders[0])
    else:
        print("FAIL embeddings.create: no listed model has the embeddings capability", flush=True)
        failed.append("embeddings.create")
    check(f"completions.create ({model})", completions, oai, model)
    check(f"completions.create stream ({model})", completions_stream, oai, model)

    if failed:
        print(f"python-sdk: {len(failed)} check(s) FAILED: {', '.join(failed)}", flush=True)
        sys.exit(1)
    print("python-sdk: all checks passed", flush=True)


if __name__ == "__main__":
    main()
