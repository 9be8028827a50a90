"""Real requests and answers of the CLIs, recorded through a proxy (tests/data/captures: each
`.request.json`, `.response.txt` and `.meta.json`); kept in the repository as fixtures. A missing file is a
failure, never a skip."""

from pathlib import Path

CAPTURES = Path(__file__).resolve().parent / "data" / "captures"


def anthropic_events(data: bytes) -> list:
    """Decode an Anthropic SSE body (as a client got it) into canonical events, checking them
    against the event grammar on the way."""
    from translators import anthropic

    return checked_events(anthropic, data)


def checked_events(codec, data: bytes) -> list:
    """Decode a stream body in `codec`'s format into canonical events, checked against the
    event grammar on the way."""
    from translators import canonical

    dec = codec.StreamDecoder()
    events = dec.feed(data) + dec.close()
    grammar = canonical.StreamGrammar()
    for ev in events:
        grammar.check(ev)
    return events
