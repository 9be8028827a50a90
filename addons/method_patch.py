"""A method of mitmproxy's replaced by detour's while detour runs, only over the source it was
written against.

detour changes two of mitmproxy's methods (read_loop.py: the connection read loop;
error_reply.py: how a failed answer is told to the client). Each replacement is a copy of
mitmproxy's method with one change, so it is right only over the method it was copied from:
`MethodPatch.load` compares the sha256 of the current method's source with the one recorded
when it was written, and replaces it only if they match (else logs once and leaves mitmproxy's
own). `done` puts the original back. Each patch's test compares the locked mitmproxy's method
with its record, so whoever updates mitmproxy reads the method again.
"""

import hashlib
import inspect
import logging

log = logging.getLogger(__name__)


def fingerprint(func) -> str | None:
    """sha256 of a function's source, or None where it has none to compare."""
    try:
        return hashlib.sha256(inspect.getsource(func).encode()).hexdigest()
    except (OSError, TypeError):  # no source to compare: not ours to replace
        return None


class MethodPatch:
    """The addon side of a patch: `owner.name` is `replacement` while loaded. Subclass it per
    patch (mitmproxy names an addon by its class)."""

    def __init__(self, owner: type, name: str, replacement, written_against: str,
                 otherwise: str):
        self.owner = owner
        self.name = name
        self.replacement = replacement
        self.written_against = written_against
        self.otherwise = otherwise  # logged when mitmproxy's method is another one
        self.original = None

    def installed(self) -> bool:
        return getattr(self.owner, self.name) is self.replacement

    def load(self, loader):
        current = getattr(self.owner, self.name)
        if current is self.replacement or self.original is not None:
            return  # already in place (a script reloaded)
        if fingerprint(current) != self.written_against:
            log.info("mitmproxy's %s.%s is not the one detour's was written against: %s",
                     self.owner.__name__, self.name, self.otherwise)
            return
        self.original = current
        setattr(self.owner, self.name, self.replacement)

    def done(self):
        if self.original is not None and self.installed():
            setattr(self.owner, self.name, self.original)
        self.original = None
