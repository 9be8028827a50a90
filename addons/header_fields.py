"""mitmproxy `Headers` read in one pass over their raw fields.

`Headers` is a case-insensitive multidict over a tuple of (bytes, bytes) fields: each `get`,
`in` or `items()` step scans and decodes every field again, so a dict of a 20-header request
made through `items()` costs ~400 field scans. Each function here does one pass over
`headers.fields` and gives what the mapping interface would have given.
"""

from addons.scrubber import CREDENTIAL_HEADERS

CREDENTIAL_NAMES = frozenset(name.encode() for name in CREDENTIAL_HEADERS)
REDACTED = b"[redacted]"
_CONTROL = (b"\r", b"\n", b"\0")


def _native(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")  # as mitmproxy decodes header bytes


def lowered(headers) -> dict[str, str]:
    """`{name.lower(): value for name, value in headers.items()}`: one entry per name (lower
    case), several fields of one name folded with ", ", in the order names first appear."""
    # one entry per name as mitmproxy compares them (bytes, ASCII case): [lower name, value]
    entries: dict[bytes, list[str]] = {}
    for name, value in headers.fields:
        key = name.lower()
        text = value.decode("utf-8", "surrogateescape")  # _native, inlined: per field
        entry = entries.get(key)
        if entry is None:
            entries[key] = [name.decode("utf-8", "surrogateescape").lower(), text]
        else:
            entry[1] += ", " + text
    return {name: value for name, value in entries.values()}


def credentials_held(headers) -> dict[str, list[str]]:
    """The credential headers present, name -> every value (as `get_all` gives them), in
    CREDENTIAL_HEADERS' order."""
    found: dict[bytes, list[str]] = {}
    for name, value in headers.fields:
        key = name.lower()
        if key in CREDENTIAL_NAMES:
            found.setdefault(key, []).append(_native(value))
    if not found:
        return {}
    return {name: found[key] for name in CREDENTIAL_HEADERS
            if (key := name.encode()) in found}


def unredacted_credentials(headers) -> list[str]:
    """The credential header names (lower case, CREDENTIAL_HEADERS' order) whose value is not
    already a redaction stub: a folded value ends as its last field does."""
    last: dict[bytes, bytes] = {}
    for name, value in headers.fields:
        key = name.lower()
        if key in CREDENTIAL_NAMES:
            last[key] = value
    if not last:
        return []
    return [name for name in CREDENTIAL_HEADERS
            if (value := last.get(name.encode())) is not None and not value.endswith(REDACTED)]


def unsafe_name(headers) -> str | None:
    """The name of the first header whose name or value holds a CR, LF or NUL, if any."""
    fields = headers.fields
    joined = b"".join(b"".join(field) for field in fields)
    if not any(b in joined for b in _CONTROL):
        return None
    for name, value in fields:
        if any(b in name or b in value for b in _CONTROL):
            return name.decode("latin-1", "replace")
    return None
