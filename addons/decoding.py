"""Bodies decoded (`content-encoding`) in bounded steps: a compressed body may not grow past a
limit, whoever sent it. A 1 MB gzip bomb decoded whole is gigabytes; here each step yields at
most STEP bytes and the decoder stops (`TooLarge`) once the limit is passed."""

import zlib

import brotli

try:
    from compression import zstd  # Python 3.14
except ImportError:  # pragma: no cover - mitmproxy depends on the backport before 3.14
    from backports import zstd

STEP = 1 << 20  # bytes out per decompression step


class TooLarge(ValueError):
    """A body past its limit (as sent, or once decoded)."""

    def __init__(self, what: str, limit: int):
        super().__init__(f"{what} is larger than {limit} bytes")
        self.limit = limit


class BoundedDecoder:
    """Decodes one body as it comes: `feed(data)` and `flush()` return the decoded pieces (each
    at most STEP bytes); TooLarge once more than `limit` bytes came out, ValueError for an
    encoding that is unknown or data that does not decode."""

    __slots__ = ("encoding", "limit", "total", "_z", "_br", "_zstd", "what")

    def __init__(self, encoding: str, limit: int, what: str = "the decoded body"):
        self.encoding = encoding.strip().lower()
        self.limit = limit
        self.total = 0
        self.what = what
        self._z = self._br = self._zstd = None
        if self.encoding in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self.encoding == "br":
            self._br = brotli.Decompressor()
        elif self.encoding == "zstd":
            self._zstd = zstd.ZstdDecompressor()
        elif self.encoding not in ("", "identity", "deflate"):
            raise ValueError(f"unsupported content-encoding {encoding!r}")

    @property
    def identity(self) -> bool:
        return self.encoding in ("", "identity")

    def _count(self, piece: bytes, out: list[bytes]) -> None:
        if piece:
            self.total += len(piece)
            if self.total > self.limit:
                raise TooLarge(self.what, self.limit)
            out.append(piece)

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        if not data:
            return out
        try:
            if self.identity:
                self._count(bytes(data), out)
            elif self.encoding == "deflate" or self._z is not None:
                if self._z is None:
                    # "deflate" is zlib-wrapped by the RFC, raw in some servers' hands
                    zlib_header = len(data) > 1 and data[0] & 0x0F == 8 and \
                        (data[0] << 8 | data[1]) % 31 == 0
                    self._z = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
                z = self._z
                self._count(z.decompress(data, STEP), out)
                while z.unconsumed_tail:
                    self._count(z.decompress(z.unconsumed_tail, STEP), out)
            elif self._br is not None:
                br = self._br
                self._count(br.process(data, output_buffer_limit=STEP), out)
                while not br.can_accept_more_data():
                    self._count(br.process(b"", output_buffer_limit=STEP), out)
            else:
                while data:
                    d = self._zstd
                    self._count(d.decompress(data, STEP), out)
                    while not d.needs_input and not d.eof:
                        self._count(d.decompress(b"", STEP), out)
                    data = d.unused_data if d.eof else b""
                    if d.eof:
                        self._zstd = zstd.ZstdDecompressor()  # another frame may follow
        except TooLarge:
            raise
        except (zlib.error, brotli.error, zstd.ZstdError, EOFError) as e:
            raise ValueError(f"cannot decode {self.encoding} content: {e}") from None
        return out

    def flush(self) -> list[bytes]:
        out: list[bytes] = []
        if self._z is not None:
            try:
                self._count(self._z.flush(STEP), out)
            except zlib.error as e:
                raise ValueError(f"cannot decode {self.encoding} content: {e}") from None
        return out


def decode_whole(raw: bytes, encoding: str, limit: int, what: str = "the decoded body") -> bytes:
    """A whole body decoded, never past `limit` bytes (TooLarge), in bounded steps."""
    dec = BoundedDecoder(encoding, limit, what)
    if dec.identity:
        if len(raw) > limit:
            raise TooLarge(what, limit)
        return raw
    return b"".join(dec.feed(raw) + dec.flush())
