"""Every codec (addons/formats.CODECS) given the values that broke the proxy (integers beyond 64
bits, inf, NaN, 1e999, lone surrogates, nesting 255-1023 deep) anywhere in a real client's
request, a provider's whole answer or one event of its stream (tests/data/captures): decoding,
re-encoding into every codec and writing the result as the forwarder does gives JSON or a
TranslationError, nothing else. Hypothesis puts one hostile value at a drawn place; CI runs it
derandomized (tests/conftest.py)."""

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from addons.formats import CODECS
from addons.forwarding import dump_json
from tests.captures import CAPTURES
from translators import canonical as c

CLIENTS = {"anthropic": "claude-code.messages", "openai-chat": "qwen-code.chat-completions",
           "openai-responses": "codex.responses", "gemini": "gemini-cli.streamGenerateContent"}
MODULES = sorted(CODECS.values(), key=lambda m: m.NAME)


def code_assist(codec, body: dict) -> dict:
    """Code Assist carries a Gemini request (and answer) inside an envelope."""
    return {"model": "m", "project": "p", "request": body} if codec.NAME == "gemini-code-assist" \
        else body


# formats no captured client speaks (Ollama's): seeds translated from Claude Code's captures
TRANSLATED = ("ollama", "ollama-generate")


def translated_requests(codec) -> list[dict]:
    from translators import anthropic
    files = sorted(CAPTURES.glob(f"{CLIENTS['anthropic']}.*.request.json"))
    return [codec.encode_request(anthropic.decode_request(json.loads(p.read_text())))
            for p in files]


def translated_streams(codec) -> list[bytes]:
    """Claude Code's captured streams, in the codec's own framing (NDJSON for Ollama)."""
    from tests.captures import anthropic_events
    out = []
    for p in sorted(CAPTURES.glob(f"{CLIENTS['anthropic']}.*.response.txt")):
        encoder = codec.StreamEncoder()
        out.append(b"".join(encoder.encode(ev) for ev in anthropic_events(p.read_bytes())))
    return out


def seed_requests(codec) -> list[dict]:
    if codec.NAME in TRANSLATED:
        return translated_requests(codec)
    prefix = CLIENTS.get(codec.NAME, CLIENTS["gemini"])
    files = sorted(CAPTURES.glob(f"{prefix}.*.request.json"))
    assert files, codec.NAME
    return [code_assist(codec, json.loads(p.read_text())) for p in files]


def seed_streams(codec) -> list[bytes]:
    """The captured streams of the codec's own format."""
    if codec.NAME in TRANSLATED:
        return translated_streams(codec)
    prefix = CLIENTS.get(codec.NAME, CLIENTS["gemini"])
    streams = [p.read_bytes() for p in sorted(CAPTURES.glob(f"{prefix}.*.response.txt"))]
    if codec.NAME != "gemini-code-assist":
        return streams
    return [b"\n".join(b"data: " + json.dumps({"response": json.loads(line[6:])}).encode()
                       if line.startswith(b"data: ") else line for line in data.split(b"\n"))
            for data in streams]


SEED_REQUESTS = {m.NAME: seed_requests(m) for m in MODULES}
SEED_STREAMS = {m.NAME: seed_streams(m) for m in MODULES}


def nested_text(depth: int, kind: str) -> str:
    return ("[" * depth + "1" + "]" * depth) if kind == "list" else (
        '{"k":' * depth + "1" + "}" * depth)


# hostile values as JSON text (what a peer sends): json.dumps writes neither 1e999 nor a
# lone surrogate's escape as given, and nesting 1,000 deep is past its recursion limit
hostile_text = st.one_of(
    st.integers(min_value=2**64, max_value=2**200).map(str),
    st.integers(min_value=2**63, max_value=2**200).map(lambda n: str(-n)),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1.5e308"]),
    st.sampled_from(['"\\ud800"', '"a\\udfffb"', '"\\udbff\\u0041"', '"\\udc00"']),
    st.builds(nested_text, st.integers(min_value=255, max_value=1023),
              st.sampled_from(["list", "dict"])),
)
PLACEHOLDER = "\x00hostile\x00"


def paths(value, here=()) -> list[tuple]:
    """Every place in a JSON value (the root left out)."""
    out = []
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return out
    for key, child in items:
        out.append(here + (key,))
        out.extend(paths(child, here + (key,)))
    return out


def with_hostile(value, path: tuple, text: str) -> str:
    """`value` as JSON text with the value at `path` replaced by `text`."""
    copy = json.loads(json.dumps(value))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = PLACEHOLDER
    return json.dumps(copy).replace(json.dumps(PLACEHOLDER), text)


def parsed(text: str):
    """As the proxy reads a peer's JSON (None: refused as not JSON, which is typed too)."""
    try:
        return c.loads_json(text)
    except (ValueError, RecursionError):
        return None


def hostile_json(draw, value) -> str:
    places = paths(value)
    path = draw(st.sampled_from(places))
    return with_hostile(value, path, draw(hostile_text))


def written(obj) -> None:
    """What the forwarder sends, read back as JSON: never inf or NaN."""
    try:
        data = dump_json(obj)
    except c.TranslationError:
        return
    json.loads(data, parse_constant=lambda name: pytest.fail(f"{name} written as JSON"))


def encoded_everywhere(req: c.Request) -> None:
    for target in MODULES:
        try:
            written(target.encode_request(req))
        except c.TranslationError:
            pass


def events_everywhere(events: list) -> None:
    """The events encoded for every client format, each checked against the stream grammar."""
    for target in MODULES:
        encoder = target.StreamEncoder()
        try:
            for ev in events:
                encoder.encode(ev)
        except c.TranslationError:
            pass


FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("codec", MODULES, ids=lambda m: m.NAME)
@FUZZ
@given(data=st.data())
def test_a_hostile_value_anywhere_in_a_request(codec, data):
    seed = data.draw(st.sampled_from(SEED_REQUESTS[codec.NAME]))
    body = parsed(hostile_json(data.draw, seed))
    if not isinstance(body, dict):
        return
    try:  # the same-format path: the client's body rewritten, not re-encoded
        written(codec.rewrite_request(body, model="m", max_tokens=16))
    except c.TranslationError:
        pass
    try:
        req = codec.decode_request(body)
    except c.TranslationError:
        return
    encoded_everywhere(req)


@pytest.mark.parametrize("codec", MODULES, ids=lambda m: m.NAME)
@FUZZ
@given(data=st.data())
def test_a_hostile_value_anywhere_in_a_whole_answer(codec, data):
    dec = codec.StreamDecoder()
    stream = data.draw(st.sampled_from(SEED_STREAMS[codec.NAME]))
    answer = codec.encode_response(c.collect_response(dec.feed(stream) + dec.close()))
    body = parsed(hostile_json(data.draw, answer))
    if not isinstance(body, dict):
        return
    try:
        resp = codec.decode_response(body)
    except c.TranslationError:
        return
    shape = c.AnswerShape("m", None, "id-")
    for target in MODULES:
        try:
            written(target.encode_response(shape.response(resp)))
        except c.TranslationError:
            pass
    events_everywhere(c.response_to_events(resp))


def stream_events(stream: bytes) -> list[tuple[int, dict]]:
    """(index of the data line, its JSON object) for each event's data: an SSE data line, or
    an NDJSON line."""
    lines = stream.split(b"\n")
    out = []
    for i, line in enumerate(lines):
        if line.startswith(b"data: ") and line[6:].strip().startswith(b"{"):
            out.append((i, json.loads(line[6:])))
        elif line.startswith(b"{"):
            out.append((i, json.loads(line)))
    return out


@pytest.mark.parametrize("codec", MODULES, ids=lambda m: m.NAME)
@FUZZ
@given(data=st.data())
def test_a_hostile_value_anywhere_in_a_stream_event(codec, data):
    stream = data.draw(st.sampled_from(SEED_STREAMS[codec.NAME]))
    index, event = data.draw(st.sampled_from(stream_events(stream)))
    lines = stream.split(b"\n")
    prefix = b"data: " if lines[index].startswith(b"data: ") else b""
    lines[index] = prefix + hostile_json(data.draw, event).encode("utf-8", "surrogatepass")
    hostile = b"\n".join(lines)
    cut = data.draw(st.integers(min_value=0, max_value=len(hostile)))
    dec = codec.StreamDecoder()
    events = []
    try:
        for piece in (hostile[:cut], hostile[cut:]):
            events += dec.feed(piece)
        events += dec.close()
    except c.TranslationError:
        pass  # what came before the break is still sent on
    events_everywhere(events)
    assert isinstance(dec.usage, c.Usage)


def test_the_seeds_are_real_and_every_codec_is_fuzzed():
    assert {m.NAME for m in MODULES} == set(CODECS)
    for m in MODULES:
        assert len(SEED_REQUESTS[m.NAME]) >= 3 and len(SEED_STREAMS[m.NAME]) >= 3
        assert all(stream_events(stream) for stream in SEED_STREAMS[m.NAME])


# what the fuzzing above found, kept as plain cases: each raised a TypeError before
@pytest.mark.parametrize("key,text", [
    ("required", nested_text(255, "list")),  # a list in `required`: unhashable
    ("properties", str(2**64)),  # a number as `properties`: not iterable
    ("format", "[[1]]"),  # a list as `format`: unhashable
])
def test_a_tool_schema_of_the_wrong_shape_is_encoded_for_gemini(key, text):
    seed = SEED_REQUESTS["anthropic"][0]
    tool = next(i for i, t in enumerate(seed["tools"]) if t["input_schema"].get("properties"))
    body = parsed(with_hostile(seed, ("tools", tool, "input_schema", key), text))
    req = CODECS["anthropic"].decode_request(body)
    written(CODECS["gemini"].encode_request(req))


def test_a_gemini_finish_reason_that_is_not_a_string_ends_the_turn():
    """In a stream event and in a whole answer (unhashable: a TypeError before)."""
    codec = CODECS["gemini"]
    for stream in SEED_STREAMS["gemini"]:
        index, event = next((i, e) for i, e in stream_events(stream)
                            if "finishReason" in e["candidates"][0])
        lines = stream.split(b"\n")
        lines[index] = b"data: " + with_hostile(event, ("candidates", 0, "finishReason"),
                                                "[[1]]").encode()
        dec = codec.StreamDecoder()
        events = dec.feed(b"\n".join(lines)) + dec.close()
        stops = [e.stop_reason for e in events if type(e) is c.MessageDelta]
        assert stops and set(stops) <= {"end_turn", "tool_use"}, stops
        answer = codec.encode_response(c.collect_response(events))
        resp = codec.decode_response(parsed(with_hostile(
            answer, ("candidates", 0, "finishReason"), "[[1]]")))
        assert resp.stop_reason in ("end_turn", "tool_use")
