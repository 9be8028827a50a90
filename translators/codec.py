"""The codec contract: what every wire-format module in translators/ provides.

A codec is a module (`anthropic`, `openai_chat`, later `openai_responses`, `gemini`, ...) that
converts its own wire format to and from the canonical model (hub and spoke: N formats need 2N
converters). The proxy only ever reaches a format through these names, so adding a format is one
module that satisfies `Codec` plus its rows in addons/formats.py. `missing(module)` names what a
module lacks (tests/translators/test_codec.py checks every codec with it).

Pure: bytes and dicts in, canonical objects out. No I/O, no addons.
"""

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from translators import canonical as c


@runtime_checkable
class StreamDecoder(Protocol):
    """Provider-format SSE bytes -> canonical events, whatever the chunk boundaries."""

    @property
    def usage(self) -> c.Usage: ...

    def feed(self, chunk: bytes) -> list[c.Event]: ...

    def close(self) -> list[c.Event]: ...


@runtime_checkable
class StreamEncoder(Protocol):
    """Canonical events -> client-format SSE bytes, checked against the stream grammar."""

    def encode(self, event: c.Event) -> bytes: ...

    def encode_all(self, events) -> bytes: ...


class Codec(Protocol):
    """One wire format, as a module provides it (functions take no `self`)."""

    NAME: str  # the format's name in addons/formats.py ("anthropic", "openai-chat")
    STREAM_CONTENT_TYPE: str
    JSON_CONTENT_TYPE: str
    EXTRAS_PREFIX: str  # its keys in canonical Request.extras ("anthropic:")
    MESSAGE_ID_PREFIX: str  # what its message ids start with ("msg_")
    USER_FIELD: str  # where its requests carry the end user's id ("metadata.user_id")
    StreamDecoder: Callable[[], StreamDecoder]

    def sniff_request(self, body: object) -> bool:
        """Whether a decoded JSON body could be a request of this format (its top-level marks;
        a minimal body may pass for more than one format)."""

    def sniff_stream(self, head: bytes) -> bool:
        """Whether the first bytes of an answer are this format's event stream."""

    def decode_request(self, body: dict) -> c.Request: ...

    def encode_request(self, req: c.Request) -> dict: ...

    def decode_response(self, body: dict) -> c.Response: ...

    def encode_response(self, resp: c.Response) -> dict: ...

    def StreamEncoder(self) -> StreamEncoder: ...

    def client_stream_encoder(self, body: dict) -> StreamEncoder:
        """The stream encoder as this client's request asked for it (e.g. Chat's usage chunk
        only with stream_options.include_usage)."""

    def error_body(self, status: int, message: str, kind: str | None = None) -> bytes: ...

    def is_error_event(self, name: str, data: str) -> bool:
        """An in-stream error event of this format (same-format streams pass it on)."""

    def may_follow_stop(self, name: str, data: str) -> bool:
        """An event that may still come after the final one ([DONE], a usage chunk)."""

    def rewrite_request(self, body: dict, *, model: str | None = None,
                        max_tokens: int | None = None) -> dict:
        """Same format in and out: the client's body with only these changed (the model, the
        output cap where it is lower than asked), every other field as sent; `body` itself
        when nothing changes."""


def members() -> tuple[str, ...]:
    """Every name a codec module must define."""
    names = set(Codec.__annotations__)
    names.update(n for n, v in vars(Codec).items() if callable(v) and not n.startswith("_"))
    return tuple(sorted(names))


def missing(module) -> list[str]:
    """The contract's names a module lacks (or holds as the wrong kind of thing)."""
    out = []
    for name in members():
        value = getattr(module, name, None)
        if value is None:
            out.append(name)
        elif Codec.__annotations__.get(name) is str and not isinstance(value, str):
            out.append(name)
        elif name not in Codec.__annotations__ or name == "StreamDecoder":
            if not callable(value):
                out.append(name)
    return out
