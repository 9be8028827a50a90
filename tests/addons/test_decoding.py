"""Bounded decoding: a compressed bomb stops at the limit, step by step, in every encoding."""

import gzip
import zlib

import brotli
import pytest

from addons.decoding import STEP, BoundedDecoder, TooLarge, decode_whole

try:
    from compression import zstd
except ImportError:
    from backports import zstd

BOMB = b"\0" * (64 * STEP)  # 64 MiB of zeros: ~64 KB gzipped
ENCODERS = {"gzip": gzip.compress, "deflate": zlib.compress,
            "br": brotli.compress, "zstd": zstd.compress,
            "raw-deflate": lambda d: zlib.compress(d)[2:-4]}


@pytest.mark.parametrize("name", ENCODERS)
def test_a_bomb_stops_at_the_limit_in_bounded_steps(name):
    encoding = "deflate" if name == "raw-deflate" else name
    packed = ENCODERS[name](BOMB)
    assert len(packed) < len(BOMB) // 100
    dec = BoundedDecoder(encoding, 4 * STEP)
    with pytest.raises(TooLarge, match=f"larger than {4 * STEP} bytes"):
        for i in range(0, len(packed), 4096):
            for piece in dec.feed(packed[i:i + 4096]):
                assert len(piece) <= 2 * STEP  # brotli's output limit is a soft one
    assert dec.total <= 6 * STEP


@pytest.mark.parametrize("name", ENCODERS)
def test_a_body_under_the_limit_decodes_whole(name):
    encoding = "deflate" if name == "raw-deflate" else name
    body = b'{"model": "m"}' * 1000
    assert decode_whole(ENCODERS[name](body), encoding, len(body)) == body
    with pytest.raises(TooLarge):
        decode_whole(ENCODERS[name](body), encoding, len(body) - 1)


def test_identity_is_bounded_by_its_length_and_bad_data_is_a_value_error():
    assert decode_whole(b"abc", "", 3) == b"abc"
    with pytest.raises(TooLarge):
        decode_whole(b"abcd", "identity", 3)
    with pytest.raises(ValueError, match="cannot decode gzip"):
        decode_whole(b"not gzip", "gzip", 100)
    with pytest.raises(ValueError, match="unsupported content-encoding"):
        BoundedDecoder("compress", 100)
