"""SecretScrubber: every known secret, whole or in part, out of provider text; detour's own
words left alone."""

import json
import secrets

import httpx
import pytest
from hypothesis import assume, given, strategies as st

from addons.scrubber import MASK, SecretScrubber, credentials_of, scrubber_for
from addons.config import parse_config
from addons.forwarding import Failure
from addons.routing import build_providers
from tests.addons.test_forwarding import Upstreams, setup

# invented, plainly not a vendor's key, with a digit in every 8 characters (a window that reads
# as a plain lower-case word is not taken for a fragment: see
# test_words_of_a_made_up_key_do_not_mask_detours_messages)
KEY = "tk1-fake2-not3-real4-" + "".join(f"k{i % 10}x" for i in range(24))
OTHER = "sk-" + secrets.token_hex(16)


def test_a_whole_key_is_one_mask():
    s = SecretScrubber([KEY, OTHER])
    assert s.scrub(f"Incorrect API key provided: Bearer {KEY}.") == \
        f"Incorrect API key provided: Bearer {MASK}."
    assert s.scrub(f"{OTHER}{KEY}") == MASK  # adjacent secrets merge


def test_fragments_of_eight_or_more_characters_are_scrubbed():
    s = SecretScrubber([KEY])
    for fragment in (KEY[:8], KEY[-8:], KEY[10:30], KEY[:20] + "...", "..." + KEY[-12:]):
        out = s.scrub(f"key {fragment} refused")
        assert fragment.strip(".") not in out and MASK in out, fragment


def test_short_masks_and_short_secrets_are_left():
    s = SecretScrubber([KEY, "k", "x1"])
    masked = f"{KEY[:6]}...{KEY[-4:]}"  # as the vendors print a key themselves
    assert s.scrub(f"key {masked} refused") == f"key {masked} refused"
    assert s.scrub("x1 k kx1") == "x1 k kx1"


def test_words_of_a_made_up_key_do_not_mask_detours_messages():
    s = SecretScrubber(["sk-fake-provider-key"])
    text = "detour: no provider answered 'm': fake/key1:abcd1234 (m): HTTP 401"
    assert s.scrub(text) == text
    assert s.scrub("echo: fake-provider-key") == f"echo: {MASK}"
    assert s.scrub("echo: sk-fake-provider-key!") == f"echo: {MASK}!"


@given(st.text(max_size=80), st.integers(0, 60), st.integers(8, 40), st.text(max_size=80))
def test_any_long_enough_fragment_anywhere_is_gone(before, start, length, after):
    fragment = KEY[start:start + length]
    assume(len(fragment) >= 8 and fragment not in before and fragment not in after)
    assert fragment not in SecretScrubber([KEY]).scrub(before + fragment + after)


def test_bytes_split_inside_a_utf8_character_come_back_as_they_were():
    s = SecretScrubber([KEY])
    data = "é".encode() + KEY.encode() + "ü".encode()
    assert s.scrub_bytes(data[1:-1]) == data[1:2] + MASK.encode() + data[-2:-1]
    assert s.scrub_bytes(b"\xff\xfe plain") == b"\xff\xfe plain"


def test_adding_a_clients_credentials_is_built_once():
    base = SecretScrubber([KEY])
    headers = {"authorization": f"Bearer {OTHER}", "cookie": "a=1"}
    one = base.adding(credentials_of(headers))
    assert one is base.adding(credentials_of(dict(headers))) and one is not base
    assert base.adding(["short"]) is base
    assert one.scrub(OTHER) == MASK and base.scrub(OTHER) == OTHER


def test_credentials_of_request_headers():
    found = credentials_of({"x-api-key": KEY, "cookie": f"session={OTHER}; theme=dark",
                            "authorization": "Bearer tok-123456789"})
    assert KEY in found and OTHER in found and "tok-123456789" in found


def test_scrubber_for_a_configuration(monkeypatch):
    monkeypatch.setenv("DETOUR_TEST_SCRUB", OTHER)
    config = parse_config(f'providers: {{p: {{kind: openai, base_url: "http://p.test", '
                          f'api_keys: [{KEY}, "env:DETOUR_TEST_SCRUB"]}}}}\n')
    s = scrubber_for(build_providers(config), "proxyuser:proxy-password-1")
    assert s.scrub(f"{KEY} {OTHER} proxy-password-1") == f"{MASK} {MASK} {MASK}"
    assert "secrets" in repr(s) and KEY not in repr(s)


async def test_a_same_format_stream_error_echoing_the_key_is_scrubbed_in_the_passed_bytes():
    events = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":'
              b'"message","role":"assistant","model":"x","content":[],"stop_reason":null,'
              b'"usage":{"input_tokens":1,"output_tokens":1}}}\n\n'
              b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
              b'"content_block":{"type":"text","text":""}}\n\n'
              b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
              b'"delta":{"type":"text_delta","text":"Hi"}}\n\n'
              b'event: error\ndata: {"type":"error","error":{"type":"authentication_error",'
              b'"message":"invalid x-api-key key-ant-' + b'0123456789abcdef"}}\n\n')
    up = Upstreams(**{"ant.test": [httpx.Response(
        200, content=events, headers={"content-type": "text/event-stream"})]})
    fwd, job = setup(up, "same-format", stream=True)
    fwd.scrubber = SecretScrubber(["key-ant-0123456789abcdef"])
    opened = await fwd.open(job)
    out = b"".join([c async for c in fwd.stream(job, opened)])
    assert b"0123456789abcdef" not in out and b"invalid x-api-key [redacted]" in out
    assert job.row.error.endswith("invalid x-api-key [redacted]")
    await fwd.aclose()


async def test_an_error_event_before_content_echoing_the_key_is_scrubbed_from_the_failure():
    events = (b'event: error\ndata: {"type":"error","error":{"type":"authentication_error",'
              b'"message":"invalid x-api-key key-ant-' + b'0123456789abcdef"}}\n\n')
    up = Upstreams(**{"ant.test": [httpx.Response(
        200, content=events, headers={"content-type": "text/event-stream"})]})
    fwd, job = setup(up, "same-format", stream=True)
    fwd.scrubber = SecretScrubber(["key-ant-0123456789abcdef"])
    with pytest.raises(Failure) as failed:
        await fwd.open(job)
    assert "0123456789abcdef" not in failed.value.message
    assert "0123456789abcdef" not in json.dumps(job.row.route)
    await fwd.aclose()


def test_a_providers_outbound_proxy_credentials_are_scrubbed():
    from addons.config import Provider
    from addons.routing import ProviderRuntime
    from addons.scrubber import scrubber_for
    spec = Provider(kind="openai", base_url="https://p.example/v1",
                    proxy="http://corp-user:S3cr%40tProxyPass@127.0.0.1:3128")
    scrub = scrubber_for({"p": ProviderRuntime("p", spec, ())})
    text = "proxy said: 407 for corp-user:S3cr@tProxyPass and S3cr%40tProxyPass"
    out = scrub.scrub(text)
    assert "S3cr@tProxyPass" not in out and "S3cr%40tProxyPass" not in out
